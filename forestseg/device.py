"""Which device and precision a run uses; no other module decides it."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from .config import DEVICES, known_device
from .errors import ForestsegError

_CLAIMS: list = []  # open, flock-ed slot files: a claim lasts as long as this process


def claim_gpu(count: int, lock_dir: Path | None = None, index: int | None = None) -> int:
    """The index of the visible GPU that the fewest forestseg processes on this machine use now, claimed
    for this process (a flock on a slot file, released when the process ends, even by SIGKILL), so
    parallel queue workers spread over the GPUs instead of all landing on cuda:0. With `index` (a
    run that named cuda:<i>), that GPU is claimed and returned, so the others count it."""
    default = Path(tempfile.gettempdir()) / f"forestseg-gpus-{os.getuid()}"  # per user: no shared, unwritable files
    # an empty value is unset (it was the working directory: lock files in the repository)
    lock_dir = lock_dir or Path(os.environ.get("FORESTSEG_GPU_LOCKS") or default)
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        with _lock_file(lock_dir / ".choose") as choosing:
            fcntl.flock(choosing, fcntl.LOCK_EX)  # count and claim as one step: two workers never pick the same GPU
            return _claim(lock_dir, count, index)
    except OSError as e:
        fallback = 0 if index is None else index
        print(f"warning: cannot coordinate GPUs through {lock_dir} ({e.strerror or e}); using cuda:{fallback}")
        return fallback


def _physical(count: int) -> list[str]:
    """What each visible GPU index is on the machine: CUDA_VISIBLE_DEVICES' entries (an index, a GPU-
    or MIG- UUID) in order, else the index itself, so that processes seeing the same GPU under other
    indices ('0,1' and '1,0') share its slots. One process naming a GPU by index and another by UUID
    are not matched."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in visible.split(",")] if visible is not None else []
    return [entries[i] if i < len(entries) and entries[i] else str(i) for i in range(count)]


def _claim(lock_dir: Path, count: int, index: int | None = None) -> int:
    names = [re.sub(r"[^A-Za-z0-9_-]", "_", name) for name in _physical(count)]

    def busy(i: int) -> int:
        n = 0
        for slot in lock_dir.glob(f"gpu-{names[i]}.*"):
            with _lock_file(slot) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except BlockingIOError:
                    n += 1
        return n

    # this process's own slot files say which GPUs it holds: asked again (a run naming its GPU, or
    # `auto` once more, as a notebook calling the CLI twice does), it keeps one slot on one GPU, where
    # `auto` counted its own slot as another worker's and hopped to the next GPU, holding a slot on each
    held = [
        names.index(Path(f.name).stem[len("gpu-") :])
        for f in _CLAIMS
        if Path(f.name).parent == lock_dir and Path(f.name).stem[len("gpu-") :] in names
    ]
    if (index is None and held) or index in held:
        return held[0] if index is None else index
    gpu = min(range(count), key=lambda i: (busy(i), i)) if index is None else index
    for slot in range(1024):
        f = _lock_file(lock_dir / f"gpu-{names[gpu]}.{slot}")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _CLAIMS.append(f)
        return gpu
    return gpu


def _lock_file(path: Path) -> BinaryIO:
    """`path` opened to flock, made where missing: read-only, since a flock needs no write access, so
    workers of other users share a folder of FORESTSEG_GPU_LOCKS (opened to append, another user's 0644
    file failed, and the worker fell back to cuda:0, busy or not). Not opened with O_CREAT where it
    exists: Linux's protected_regular refuses that for another user's file in a sticky folder."""
    for _ in range(2):
        try:
            return open(path, "rb")
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # another worker made it first
                os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return open(path, "rb")


def pick_device(pref: str, key: str = "params.yaml: train.device") -> torch.device:
    """auto: CUDA when torch sees it (of several visible GPUs the least used, see claim_gpu), else CPU;
    cuda or cuda:<i> fail clearly where there is none. CUDA_VISIBLE_DEVICES limits what is visible.
    `key` names the setting in messages (the CLI passes --device)."""
    if not known_device(pref):
        raise ForestsegError(f"{key}: unknown value {pref!r}; valid choices: {', '.join(DEVICES)}, cuda:<index>")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ForestsegError(f"{key}: {pref} asked for, but torch sees no CUDA device; use auto or cpu")
    if pref == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        count = torch.cuda.device_count()
        return torch.device("cuda", claim_gpu(count) if count > 1 else 0)
    device = torch.device(pref)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ForestsegError(
            f"{key}: {pref}, but torch sees {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:<count-1> or auto"
        )
    if device.type == "cuda" and torch.cuda.device_count() > 1:  # counted by the workers that pick with auto
        claim_gpu(torch.cuda.device_count(), index=device.index or 0)
    return device


def on_cpu(pref: str) -> bool:
    """Whether a run of device `pref` (train.device, --device) runs on the CPU: cpu, or auto where torch
    sees no CUDA device. Nothing is claimed (pick_device claims a GPU)."""
    return pref == "cpu" or (pref == "auto" and not torch.cuda.is_available())


def here_or_auto(pref: str) -> str:
    """`pref` where this machine has that device, else auto: for work that follows a run trained
    elsewhere (a scale-out coordinator without the grid's GPUs, or with fewer of them)."""
    if not known_device(pref) or not pref.startswith("cuda"):  # a bad value: pick_device names it
        return pref
    if torch.cuda.is_available() and (torch.device(pref).index or 0) < torch.cuda.device_count():
        return pref
    return "auto"


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to n (None: left as they are) for the block, restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def use_bf16(precision: str, device: torch.device) -> bool:
    """auto: bf16 autocast on CUDA from Ampere on and on CPUs whose bf16 products outrun fp32 ones
    (cpu_has_fast_bf16), else fp32."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":  # native bf16 tensor cores from Ampere (8.x) on; older GPUs only emulate it
        return torch.cuda.get_device_capability(device)[0] >= 8
    return cpu_has_fast_bf16() and torch.backends.mkldnn.is_available()


def cpu_bf16_kernels() -> bool:
    """Whether oneDNN runs bf16 convolutions on this CPU in bf16 instructions: torch refuses its bf16
    kernels without AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, and bf16 falls back to a slow convolution."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the check
        return False


def emulated_bf16_note(bf16: bool, device: torch.device) -> str | None:
    """A note where bf16 was asked for (train.precision, --precision, a bf16 run's `trained`) on a CPU
    without oneDNN's bf16 kernels, or None."""
    if not bf16 or device.type != "cpu" or cpu_bf16_kernels():
        return None
    return (
        "bf16 on a CPU without oneDNN's bf16 kernels (no AVX-512 or AVX-NE-CONVERT): emulated, many times "
        "slower than fp32, and rounded otherwise than on a CPU with them, so a run's bf16 scores from such a "
        "CPU repeat here only to about the 3rd decimal; fp32 is faster here"
    )


def apply_precision(precision: str, device: torch.device) -> bool:
    """use_bf16, for a run or prediction about to start: where it is fp32, also exact_fp32."""
    bf16 = use_bf16(precision, device)
    if not bf16:
        exact_fp32(device)
    return bf16


def exact_fp32(device: torch.device) -> None:
    """fp32 convolutions and matmuls in full fp32 on CUDA, for a run or prediction recorded as fp32:
    cuDNN's default from Ampere on is TF32 (10 mantissa bits). The legacy flag is set too and cuDNN's
    as a whole (conv and rnn): with conv's alone set, torch refused to read `cudnn.allow_tf32`, which
    its own `torch.backends.cudnn.flags()` reads. No effect on the CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 faster than fp32: AMX bf16 tiles, or AVX512_BF16 on an AMD CPU.

    AVX512_BF16 alone is not enough on Intel: its bf16 dot products issue on one port where fp32
    FMAs issue on two, and oneDNN ran bf16 slower than fp32 there (a 2-core Xeon with avx512_bf16
    and no AMX: matmul 173 vs 330 GFLOP/s, UNet training 7.7 vs 10.9 img/s). AMD's cores (Zen 4 on)
    run them at full width: on a 2-core EPYC of Zen 5 (family 26), bf16 1x1 convolutions 1021 vs
    fp32 526 GFLOP/s, UNet training 30.8 vs 18.2 img/s. With AMX bf16 runs ~6x fp32's peak."""
    words = _cpuinfo_words(cpuinfo)  # the flags, and the vendor_id's value among them
    cap = next((os.environ[k].strip().upper() for k in ONEDNN_CAPS if os.environ.get(k, "").strip()), "ALL")
    uncapped = cap in ("ALL", "DEFAULT")
    if "amx_bf16" in words and (uncapped or "AMX" in cap):
        return True
    return "avx512_bf16" in words and "AuthenticAMD" in words and (uncapped or "AMX" in cap or cap in BF16_ISAS)


def _cpuinfo_words(cpuinfo: Path) -> set[str]:
    """The words of /proc/cpuinfo (its flags among them); none where it cannot be read (not Linux)."""
    try:
        return set(cpuinfo.read_text(encoding="utf-8").split())
    except OSError:
        return set()


# oneDNN's variables that cap its kernels' instruction set (the first set counts), and the caps under
# which its bf16 kernels keep their bf16 dot products (AMX's names hold "AMX"): capped lower (a user's
# ONEDNN_MAX_CPU_ISA=AVX2, say, for numbers comparable across CPUs), bf16 convolutions ran 5.8-9.7x slower
# than fp32 ones on the Zen 5, so `auto` picks fp32 there
ONEDNN_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
BF16_ISAS = frozenset({"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX10_2_512"})

# the instruction sets that pick oneDNN's and ATen's CPU kernels, and the variables that cap them
KERNEL_FLAGS = ("fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16")
KERNEL_FLAGS += ("avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
KERNEL_CAPS = (*ONEDNN_CAPS, "ATEN_CPU_CAPABILITY")


def cpu_kernels(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What picks this CPU's kernels: ATen's capability, the KERNEL_FLAGS it has and any KERNEL_CAPS
    set. Kernels of another instruction set sum in another order, so a run's numbers differ in their
    last bits from one epoch on: a run killed on one CPU resumes only on a CPU of the same sets."""
    words = _cpuinfo_words(cpuinfo)
    caps = [f"{k}={os.environ[k]}" for k in KERNEL_CAPS if k in os.environ]
    return " ".join([torch.backends.cpu.get_cpu_capability(), *(f for f in KERNEL_FLAGS if f in words), *caps])


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in the process instead of returning it to the kernel.

    A training step frees and reallocates the same activation buffers every step; by default glibc
    serves buffers above 32 MiB with mmap/munmap and trims the heap, so every step pays page faults
    and zeroing in the kernel. Serving everything from the heap and never trimming removes that
    churn (the process keeps its peak, which a training process reaches anyway). Returns False
    where the C library is not glibc (nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
