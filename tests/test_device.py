"""forestseg.device: parallel workers on a multi-GPU machine spread over the GPUs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forestseg import device
from forestseg.config import ForestsegError


def another_worker(kept: list) -> None:
    """What follows claims as another process would: this one's slot files are set aside, still locked."""
    kept += device._CLAIMS
    device._CLAIMS.clear()


def test_claims_spread_over_the_gpus_and_end_with_the_process(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(device, "_CLAIMS", [])
    kept: list = []
    picks = []
    for _ in range(4):  # four workers, three GPUs
        picks.append(device.claim_gpu(3, tmp_path))
        another_worker(kept)
    assert picks == [0, 1, 2, 0]
    for f in kept:  # the workers end
        f.close()
    assert device.claim_gpu(3, tmp_path) == 0  # every GPU is free again


def test_one_process_asking_again_keeps_its_gpu_and_one_slot(tmp_path: Path, monkeypatch) -> None:
    """`auto` twice in one process (a notebook or bench calling the CLI again) stays on its GPU."""
    monkeypatch.setattr(device, "_CLAIMS", [])
    assert [device.claim_gpu(3, tmp_path) for _ in range(3)] == [0, 0, 0]
    assert len(device._CLAIMS) == 1
    assert device.claim_gpu(3, tmp_path, index=2) == 2  # naming another GPU claims it too
    assert device.claim_gpu(3, tmp_path) == 0 and len(device._CLAIMS) == 2


def test_a_killed_worker_frees_its_gpu(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(device, "_CLAIMS", [])
    code = f"from forestseg.device import claim_gpu; from pathlib import Path; print(claim_gpu(2, Path({str(tmp_path)!r})))"
    other = subprocess.Popen(
        [sys.executable, "-c", code + "; import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True
    )
    assert other.stdout.readline().strip() == "0"
    assert device.claim_gpu(2, tmp_path) == 1  # GPU 0 is taken by the other worker
    other.kill()
    other.wait()
    kept: list = []
    another_worker(kept)  # a third worker: GPU 1 is still ours
    assert device.claim_gpu(2, tmp_path) == 0  # freed by the kill


@pytest.fixture
def two_gpus(tmp_path: Path, monkeypatch) -> Path:
    """torch sees two CUDA devices; this process has claimed none; GPU slots are locked in tmp_path."""
    monkeypatch.setattr(device, "_CLAIMS", [])
    monkeypatch.setenv("FORESTSEG_GPU_LOCKS", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    return tmp_path


def test_auto_uses_the_claimed_gpu(two_gpus: Path, monkeypatch) -> None:
    kept: list = []
    first = device.pick_device("auto")
    another_worker(kept)
    assert [first, device.pick_device("auto")] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # e.g. CUDA_VISIBLE_DEVICES=3 under Slurm
    assert device.pick_device("auto") == torch.device("cuda", 0)


def test_a_gpu_visible_under_another_index_is_counted(tmp_path: Path, monkeypatch) -> None:
    """CUDA_VISIBLE_DEVICES '0,1' and '1,0' show the same two GPUs: a claim through either counts for both."""
    monkeypatch.setattr(device, "_CLAIMS", [])
    kept: list = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert device.claim_gpu(2, tmp_path) == 0  # physical GPU 0
    another_worker(kept)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert device.claim_gpu(2, tmp_path) == 0  # its cuda:0 is physical GPU 1, free
    another_worker(kept)
    assert device.claim_gpu(2, tmp_path) == 0  # both have one worker: the lowest index
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3f2a,GPU-77b0")
    assert device._physical(2) == ["GPU-3f2a", "GPU-77b0"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device._physical(3) == ["0", "1", "2"]


def test_a_gpu_named_in_params_is_counted_by_the_workers_that_pick(two_gpus: Path) -> None:
    assert device.pick_device("cuda:0") == torch.device("cuda", 0)
    assert device.pick_device("cuda:0") == torch.device("cuda", 0)  # asked again: still one slot
    assert len(device._CLAIMS) == 1
    kept: list = []
    another_worker(kept)
    assert device.pick_device("auto") == torch.device("cuda", 1)  # cuda:0 is in use by the run that named it


def test_concurrent_workers_never_pick_the_same_gpu(tmp_path: Path) -> None:
    """Two processes claim at the same moment: counting and claiming is one locked step."""
    code = (
        f"from forestseg.device import claim_gpu; from pathlib import Path; import time; "
        f"print(claim_gpu(2, Path({str(tmp_path)!r})), flush=True); time.sleep(30)"
    )
    workers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert sorted(int(w.stdout.readline()) for w in workers) == [0, 1]
    finally:
        for w in workers:
            w.kill()
            w.wait()


def test_a_bad_device_name_is_one_line(monkeypatch) -> None:
    import pytest

    from forestseg.errors import ForestsegError

    with pytest.raises(ForestsegError, match=r"^--device: unknown value 'gpu'; valid choices: auto, cpu, cuda"):
        device.pick_device("gpu", "--device")
    with pytest.raises(ForestsegError, match=r"^params.yaml: train.device: unknown value 'cuda:x'"):
        device.pick_device("cuda:x")


@pytest.mark.parametrize(
    "vendor, flags, fast",
    [
        ("GenuineIntel", "fpu avx2 avx512f avx512_bf16 avx512_vnni", False),  # bf16 dot products on one port
        ("GenuineIntel", "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", True),
        ("GenuineIntel", "fpu avx2", False),
        ("AuthenticAMD", "fpu avx2 avx512f avx512_bf16 avx512_vnni", True),  # full-width bf16 dot products
        ("AuthenticAMD", "fpu avx2 fma", False),
    ],
)
def test_cpu_bf16_needs_matrix_units_or_full_width_dot_products(
    tmp_path: Path, monkeypatch, vendor: str, flags: str, fast: bool
) -> None:
    for cap in device.ONEDNN_CAPS:
        monkeypatch.delenv(cap, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n")
    assert device.cpu_has_fast_bf16(info) is fast


@pytest.mark.parametrize(
    "vendor, flags, caps, fast",
    [
        ("AuthenticAMD", "avx512f avx512_bf16", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),  # bf16 5.8-9.7x slower
        ("AuthenticAMD", "avx512f avx512_bf16", {"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}, False),
        ("AuthenticAMD", "avx512f avx512_bf16", {"DNNL_MAX_CPU_ISA": "AVX2"}, False),  # the older name
        ("AuthenticAMD", "avx512f avx512_bf16", {"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}, True),
        ("AuthenticAMD", "avx512f avx512_bf16", {"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX"}, True),  # a cap above
        ("AuthenticAMD", "avx512f avx512_bf16", {"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
        ("AuthenticAMD", "avx512f avx512_bf16", {"ONEDNN_MAX_CPU_ISA": ""}, True),  # empty: not set
        # the newer name counts first, as oneDNN reads it first
        (
            "AuthenticAMD",
            "avx512f avx512_bf16",
            {"ONEDNN_MAX_CPU_ISA": "AVX10_1_512", "DNNL_MAX_CPU_ISA": "AVX2"},
            True,
        ),
        ("GenuineIntel", "avx512_bf16 amx_bf16 amx_tile", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, False),  # no AMX
        ("GenuineIntel", "avx512_bf16 amx_bf16 amx_tile", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
    ],
)
def test_a_onednn_cap_below_its_bf16_kernels_means_fp32(
    tmp_path: Path, monkeypatch, vendor: str, flags: str, caps: dict, fast: bool
) -> None:
    """ONEDNN_MAX_CPU_ISA set by a user (numbers comparable across CPUs): under AVX2, bf16 convolutions
    ran 5.8-9.7x slower than fp32 ones on the Zen 5 (3x3, 32 channels, 8 x 128 px: 185.6 against 32.0 ms)."""
    for cap in device.ONEDNN_CAPS:
        monkeypatch.delenv(cap, raising=False)
    for cap, value in caps.items():
        monkeypatch.setenv(cap, value)
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n")
    assert device.cpu_has_fast_bf16(info) is fast


def test_an_empty_lock_folder_variable_is_unset(tmp_path: Path, monkeypatch) -> None:
    """FORESTSEG_GPU_LOCKS= put the lock files in the working directory (the repository, in a stage)."""
    monkeypatch.setattr(device, "_CLAIMS", [])
    monkeypatch.setenv("FORESTSEG_GPU_LOCKS", "")
    monkeypatch.setattr(device.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path)
    assert device.claim_gpu(2) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == [f"forestseg-gpus-{os.getuid()}"]


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root, to run a worker as another user")
def test_workers_of_two_users_share_a_lock_folder(monkeypatch) -> None:
    """A folder for all users (FORESTSEG_GPU_LOCKS, mode 1777): the other user's worker opened the first
    one's 0644 lock files to append, was refused, and fell back to cuda:0, busy as it was."""
    import shutil
    import tempfile

    monkeypatch.setattr(device, "_CLAIMS", [])
    shared = Path(tempfile.mkdtemp(prefix="forestseg-gpus-shared-"))  # outside pytest's owner-only folders
    try:
        shared.chmod(0o1777)
        old = os.umask(0o022)
        try:
            assert device.claim_gpu(2, shared) == 0  # this user's files, 0644
        finally:
            os.umask(old)
        read, write = os.pipe()
        pid = os.fork()  # no new interpreter: the other user may not read this one's files
        if pid == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                device._CLAIMS = []  # the parent's claim is another process's now
                with contextlib.redirect_stdout(io.StringIO()) as said:
                    picked = device.claim_gpu(2, shared)
                os.write(write, f"{picked} {said.getvalue()!r}".encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            answer = f.read()
        os.waitpid(pid, 0)
        assert answer == "1 ''", answer  # GPU 0 is this user's, and nothing to warn of
    finally:
        for f in device._CLAIMS:
            f.close()
        shutil.rmtree(shared)


def test_no_cpuinfo_means_fp32(tmp_path: Path) -> None:
    assert device.cpu_has_fast_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize("precision, bf16", [("fp32", False), ("bf16", True)])
def test_an_explicit_precision_is_used_as_is(precision: str, bf16: bool) -> None:
    assert device.use_bf16(precision, torch.device("cpu")) is bf16


@pytest.mark.parametrize(
    "bf16, kind, kernels, noted",
    [
        (True, "cpu", False, True),
        (True, "cpu", True, False),
        (False, "cpu", False, False),
        (True, "cuda", False, False),
    ],
)
def test_bf16_without_onednn_bf16_kernels_is_noted(monkeypatch, bf16, kind, kernels, noted) -> None:
    """An AVX2 CPU given bf16: emulated, and not the rounding of a CPU with those kernels."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: kernels)
    assert device.cpu_bf16_kernels() is (kernels and torch.backends.mkldnn.is_available())
    note = device.emulated_bf16_note(bf16, torch.device(kind))
    assert (note is not None and "emulated" in note and "fp32 is faster here" in note) is (
        noted or (bf16 and kind == "cpu" and not torch.backends.mkldnn.is_available())
    )


def test_auto_on_cpu_follows_the_bf16_speed(monkeypatch) -> None:
    for fast in (False, True):
        monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert device.use_bf16("auto", torch.device("cpu")) is (fast and torch.backends.mkldnn.is_available())


@pytest.mark.parametrize("kind, expected", [("cuda", "ieee"), ("cpu", None)])
def test_exact_fp32_turns_tf32_off_on_cuda_only(kind: str, expected: str | None) -> None:
    """A run or prediction recorded as fp32 must not run cuDNN's TF32 default (set without a GPU here:
    the flags are torch's, read back through the same per-backend API)."""
    from forestseg.device import exact_fp32

    flags = (torch.backends.cudnn, torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)
    before, legacy = [f.fp32_precision for f in flags], torch.backends.cudnn.allow_tf32
    try:
        exact_fp32(torch.device(kind))
        assert [f.fp32_precision for f in flags] == ([expected] * 4 if expected else before)
        assert torch.backends.cudnn.allow_tf32 is (False if expected else legacy)  # readable (it raised), and off
        with torch.backends.cudnn.flags(enabled=True):  # torch's own context manager reads it
            pass
    finally:
        torch.backends.cudnn.allow_tf32 = legacy
        for f, value in zip(flags, before):
            f.fp32_precision = value


@pytest.mark.parametrize("precision, exact", [("fp32", True), ("bf16", False)])
def test_apply_precision_makes_fp32_exact_only_where_it_is_fp32(monkeypatch, precision: str, exact: bool) -> None:
    calls = []
    monkeypatch.setattr(device, "exact_fp32", calls.append)
    assert device.apply_precision(precision, torch.device("cuda")) is (precision == "bf16")
    assert calls == ([torch.device("cuda")] if exact else [])


@pytest.mark.parametrize(
    "pref, gpus, drawn_with",
    [
        ("cuda:abc", 0, "cuda:abc"),  # a bad value stays, for pick_device to name
        ("cpu", 0, "cpu"),
        ("auto", 0, "auto"),
        ("cuda", 0, "auto"),
        ("cuda:1", 0, "auto"),
        ("cuda", 1, "cuda"),
        ("cuda:0", 1, "cuda:0"),
        ("cuda:1", 1, "auto"),
        ("cuda:1", 2, "cuda:1"),
    ],
)
def test_work_after_a_run_uses_its_device_where_this_machine_has_it(pref, gpus, drawn_with, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert device.here_or_auto(pref) == drawn_with


def test_the_cpu_kernel_identity_names_the_instruction_sets_and_their_caps(tmp_path: Path, monkeypatch) -> None:
    """A resume must not cross CPUs whose kernels differ (tests/test_resume.py): the flags that pick them count."""
    from forestseg import device

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse2 avx2 fma avx512f hypervisor\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = device.cpu_kernels(info)
    assert plain.split()[1:] == ["fma", "avx2", "avx512f"]  # not fpu, sse2 or hypervisor
    info.write_text("flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 hypervisor\n")
    assert device.cpu_kernels(info) != plain
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert device.cpu_kernels(info).endswith("ONEDNN_MAX_CPU_ISA=AVX2")


def test_a_gpu_named_by_a_nonzero_index_is_the_one_counted(two_gpus: Path) -> None:
    """A run on cuda:1 claims cuda:1's slot: an `auto` worker beside it takes cuda:0, not cuda:1."""
    assert device.pick_device("cuda:1") == torch.device("cuda", 1)
    kept: list = []  # its slot file stays open, locked
    another_worker(kept)
    assert device.pick_device("auto") == torch.device("cuda", 0)


def test_a_gpu_index_one_past_the_last_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ForestsegError, match=r"^params.yaml: train.device: cuda:2, but torch sees 2 CUDA device\(s\)"):
        device.pick_device("cuda:2")


def test_cuda_asked_for_where_torch_sees_none_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for pref in ("cuda", "cuda:0"):
        with pytest.raises(
            ForestsegError, match=rf"^params.yaml: train.device: {pref} asked for, but torch sees no CUDA"
        ):
            device.pick_device(pref)


@pytest.mark.parametrize("capability, bf16", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_auto_on_cuda_is_bf16_from_ampere_on(monkeypatch, capability, bf16) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    assert device.use_bf16("auto", torch.device("cuda", 0)) is bf16


def test_a_named_gpu_is_kept_where_the_lock_folder_cannot_be_made(tmp_path: Path, capsys) -> None:
    (tmp_path / "locks").write_text("a file where the folder should be")
    assert device.claim_gpu(2, tmp_path / "locks", index=1) == 1
    assert "using cuda:1" in capsys.readouterr().out
    assert device.claim_gpu(2, tmp_path / "locks") == 0


@pytest.mark.parametrize(
    ("pref", "cuda", "expected"),
    [("cpu", True, True), ("auto", False, True), ("auto", True, False), ("cuda", True, False), ("cuda:1", True, False)],
)
def test_on_cpu_is_the_cpu_or_auto_without_cuda(pref, cuda, expected, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert device.on_cpu(pref) is expected


def test_auto_on_one_visible_gpu_claims_no_slot(tmp_path: Path, monkeypatch, capsys) -> None:
    """One GPU (a Slurm job's CUDA_VISIBLE_DEVICES=3): nothing to spread over, so no lock files and no
    warning where the lock folder cannot be made."""
    monkeypatch.setattr(device, "_CLAIMS", [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("FORESTSEG_GPU_LOCKS", str(tmp_path / "locks"))
    assert device.pick_device("auto") == torch.device("cuda", 0)
    (tmp_path / "locks").write_text("a file where the lock folder goes")
    assert device.pick_device("auto") == torch.device("cuda", 0)
    assert device._CLAIMS == [] and capsys.readouterr().out == ""
