"""Speed benchmark (a script, not a test): forestseg's training path vs a study-style loop.

Prints, for one model on this machine:
  - pack time of the real sample (decode every JPEG once), extrapolated to the 5108-pair Kaggle set;
  - training images/s of forestseg (packed uint8 tiles, channels_last, foreach/fused optimizer) in
    bf16 autocast and in fp32, and which of the two precision auto picks on this device;
  - the same against the study-style loop written below (PIL decode of each batch's JPEGs every
    step, raw 0-255 fp32 NCHW), and their ratio;
  - batch assembly (gather + cast + normalise) as a share of a training step;
  - the device's own limit, measured in the same run: the best bf16 and fp32 FLOP/s of a large
    matmul or a 1x1 or 3x3 convolution (dense_peak), and model FLOPs utilisation (FLOPs counted by torch's
    FlopCounterMode, not estimated)
    of training and of predict (forward only, batched windows), against the peak of the precision
    used and against the device's best peak, each over several repeats with their spread
    (median [min-max]);
  - predict images/s against training images/s of the same model, and of `forestseg predict` as a
    user calls it on a folder of JPEG tiles (decoding and PNG writing included);
  - peak RSS of the process.
Uses ../shared/forest-sample (or FORESTSEG_SAMPLE) when present, synthetic tiles otherwise.

    python bench/speed.py [--width 16] [--depth 4] [--batch 16] [--steps 12] [--repeats 3]
    python bench/speed.py --study --batch 160      # the study's UNet (on CUDA: the goal's setting)
    python bench/speed.py --nchw                   # also training without channels_last
    python bench/speed.py --auto-only              # training timed in auto's precision alone
    python bench/speed.py --compile-only           # training timed with torch.compile alone
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forestseg.config import (  # noqa: E402
    ModelConfig,
    OptimizerConfig,
    Run,  # noqa: E402
    SynthConfig,
    TrainConfig,
)
from forestseg.cores import QUIET, CpuClock, cpu_clock, others_busy  # noqa: E402
from forestseg.dataset import build_index  # noqa: E402
from forestseg.device import exact_fp32, keep_freed_memory, pick_device, use_bf16  # noqa: E402
from forestseg.errors import ForestsegError  # noqa: E402
from forestseg.layout import DataLayout  # noqa: E402
from forestseg.loader import Normalizer, Tiles, batches, load_tiles, to_input  # noqa: E402
from forestseg.losses import bce  # noqa: E402
from forestseg.model import build_model  # noqa: E402
from forestseg.synthetic import generate  # noqa: E402
from forestseg.train import train_run  # noqa: E402

SAMPLE = Path(os.environ.get("FORESTSEG_SAMPLE", Path(__file__).resolve().parents[2] / "shared" / "forest-sample"))
# dense (not 2:4 sparse) bf16 tensor-core FLOP/s from NVIDIA's datasheets (datasheet_peak)
PEAK_BF16 = {
    "H100": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "H200 NVL": 835e12,
    "A100": 312e12,
    "A40": 150e12,
    "L40": 181e12,
    "L40S": 362e12,
}


def datasheet_peak(name: str) -> float | None:
    """PEAK_BF16 of the longest table name inside the device's `name` (the SXM "H100" only where no
    longer name such as "H100 PCIe" is in it); None for a device not in the table."""
    return next((PEAK_BF16[k] for k in sorted(PEAK_BF16, key=len, reverse=True) if k in name), None)


def study_style_steps(
    root: Path,
    names: list[tuple[str, str]],
    model_cfg: ModelConfig,
    batch: int,
    steps: int,
    device: torch.device,
    repeats: int,
) -> list[float]:
    """The 2022 study's loop: decode each batch's JPEGs with PIL every step, fp32, NCHW, raw 0-255.
    Images/s of each of `repeats` rounds of `steps` steps, after one warm-up step."""
    exact_fp32(device)  # full fp32 on CUDA as labelled, not TF32, whether or not an fp32 setting ran before
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(k: int) -> None:
        chunk = [names[(k * batch + i) % len(names)] for i in range(batch)]
        x = (
            torch.stack(
                [
                    torch.from_numpy(np.array(Image.open(root / "images" / a).convert("RGB"))).permute(2, 0, 1)
                    for a, _ in chunk
                ]
            )
            .float()
            .to(device)
        )
        y = (
            torch.stack(
                [torch.from_numpy(np.array(Image.open(root / "masks" / b).convert("L")) >= 128) for _, b in chunk]
            )
            .float()
            .to(device)
        )
        loss = bce(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)  # warm-up
    rates = []
    for r in range(repeats):
        sync(device)  # the queued GPU work before is not this round's
        t0 = time.perf_counter()
        for k in range(steps):
            step(1 + r * steps + k)
        sync(device)
        rates.append(steps * batch / (time.perf_counter() - t0))
    return rates


def assembly_seconds(tiles: Tiles, batch: int, steps: int, norm: Normalizer) -> float:
    """Seconds per batch to gather, cast and normalise (what the loader costs a step)."""
    gen = torch.Generator().manual_seed(0)
    t0, n = time.perf_counter(), 0
    while n < steps:
        for images, masks in batches(tiles, batch, gen, torch.Generator().manual_seed(1)):
            to_input(images, norm)
            _ = masks.float()
            n += 1
            if n == steps:
                break
    sync(tiles.images.device)
    return (time.perf_counter() - t0) / steps


def flops(model_cfg: ModelConfig, size: int, device: torch.device, backward: bool) -> float:
    """FLOPs of one image, forward (+ backward), counted by torch's FlopCounterMode on a real pass: its
    convolutions and matmuls only. Batch-norm, ReLU, pooling, the loss and the optimizer step are not
    counted (Adam's update: ~0.01 % of a w16 d4 training step), so MFU leaves out their (memory-bound) work."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_cfg).to(device)
    x = torch.randn(2, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            out.sum().backward()
    return counter.get_total_flops() / 2


def sync(device: torch.device) -> None:
    """Wait for `device`'s queued work (the GPU the run uses, not the current one: cuda:1 on a 2-GPU box)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_peak(
    device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (2048, 4096), emulated_below: float = 10e9
) -> tuple[float, str]:
    """The best FLOP/s of a dense product in `dtype` (the practical peak of this device) and what gave
    it: an n x n matmul over `sizes` (BLAS: MKL on x86 CPUs, cuBLAS), the same kind of product as 1x1
    convolutions of n / 8 channels (256 and 512) over 16 x 64 x 64 pixels (oneDNN on CPUs, cuDNN),
    and 3x3 convolutions of n / 32 channels (64 and 128) there: oneDNN's 3x3 kernels ran at 108 % of
    the 1x1 peak on a Zen 5, which read MFU high. The best of all counts: MKL's fp32 matmul takes its
    AVX2 path on AMD CPUs, at half the rate oneDNN's AVX-512 kernels reach there, and taking the best
    keeps MFU from being flattered. A dtype the device only emulates (a warm 512 matmul slower than
    `emulated_below` FLOP/s: bf16 on a CPU without AVX512-BF16 or AMX runs at ~1 GFLOP/s) is timed at
    n = 512 only, so that it takes seconds, not hours. On CUDA each timing spans 20 calls, and n = 8192
    joins the sizes (so do 1024- and 256-channel convolutions): one 4096 bf16 matmul takes ~0.2 ms on
    an H200, where launch and sync would read the peak low (and flatter MFU)."""
    reps = 20 if device.type == "cuda" else 1
    if device.type == "cuda":
        sizes = (*sizes, 8192)
    probe = torch.randn(512, 512, device=device).to(dtype)
    probe @ probe  # the first call pays for the library's start-up, not the dtype's speed
    fastest = float("inf")
    for _ in range(3):  # the best of three: one call slowed by another process is no emulation
        sync(device)
        t0 = time.perf_counter()
        probe @ probe
        sync(device)
        fastest = min(fastest, time.perf_counter() - t0)
    emulated = 2 * 512**3 / fastest < emulated_below
    products: list[tuple[str, Callable[[], object], float]] = []
    for n in (512,) if emulated else sizes:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        products.append((f"{n}x{n} matmul", lambda a=a, b=b: a @ b, 2 * n**3))
    for c, k in () if emulated else (*((s // 8, 1) for s in sizes), *((s // 32, 3) for s in sizes)):
        x = torch.randn(16, c, 64, 64, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, c, k, k, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        flop = 2 * 16 * 64 * 64 * c * c * k * k
        products.append(
            (f"{c}-channel {k}x{k} convolution", lambda x=x, w=w, k=k: F.conv2d(x, w, padding=k // 2), flop)
        )
    best, best_what = 0.0, products[0][0]
    for what, fn, flop in products:
        for _ in range(2):  # warm-up: kernel choice, thread pool, caches
            fn()
        for _ in range(5):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
            best, best_what = max((best, best_what), (reps * flop / (time.perf_counter() - t0), what))
    return best, best_what


_PEAKS_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from bench.speed import dense_peak
from forestseg.device import exact_fp32, keep_freed_memory
keep_freed_memory()
torch.set_num_threads(int(sys.argv[3]))
device = torch.device(sys.argv[2])
exact_fp32(device)
sizes = tuple(int(n) for n in sys.argv[4].split(","))
print(json.dumps({str(d): dense_peak(device, d, sizes) for d in (torch.bfloat16, torch.float32)}))
"""


def device_peaks(device: torch.device, sizes: tuple[int, ...] = (2048, 4096)) -> dict[torch.dtype, tuple[float, str]]:
    """dense_peak (over `sizes`) in bf16 and fp32 on this process's threads, measured in a child process where glibc
    keeps freed memory and fp32 is full fp32 on CUDA (not TF32): the device's limit, whatever this
    process's allocator (with glibc's default malloc every 32-64 MiB output of the probe is a fresh mmap,
    and the fp32 peak read 35 % low) or its TF32 flags."""
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAKS_CHILD,
            root,
            str(device),
            str(torch.get_num_threads()),
            ",".join(map(str, sizes)),
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:  # e.g. CUDA out of memory: the child's own last line, not a traceback of this one
        reason = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        sys.exit(f"error: the device's peak could not be probed on {device}: {reason}")
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {d: (found[str(d)][0], found[str(d)][1]) for d in (torch.bfloat16, torch.float32)}


def warn_if_busy(rates: list[list[float]]) -> None:
    """Say so where any rate's repeats differ by more than 30 %: a busy machine, not a speed to quote."""
    if any(max(v) > 1.3 * min(v) for v in rates):
        print(
            "warning: a rate's repeats differ by more than 30 % (the spreads above): the machine was busy; "
            "rerun on a quiet machine before quoting these numbers"
        )


def others_line(started: CpuClock | None) -> str:
    """How busy other processes kept the bench's cores on average since `started` (this process's and
    its children's CPU time left out), with a warning from QUIET on: a quiet machine measured 0.003
    over 10 s, and a test run or a second bench beside it is worth a core."""
    others = others_busy(started, cpu_clock())
    if others is None:
        return "other processes: not measured (no /proc/stat)"
    line = f"other processes: {others:.2f} of the {len(started.busy)} cores busy on average over the bench"
    if others >= QUIET:
        line += (
            "\nwarning: other processes kept the bench's cores busy (above): rerun on a quiet machine before quoting"
        )
    return line


def spread(values: list[float]) -> str:
    """median [min-max]; the median of an even count is the mean of the middle two, as np.median."""
    v = sorted(values)
    return f"{float(np.median(v)):.1f} [{v[0]:.1f}-{v[-1]:.1f}]"


def predict_speeds(
    model_path: Path, images: np.ndarray, device: torch.device, repeats: int, precision: str = "auto"
) -> tuple[list[float], list[float], list[float], bool]:
    """Images/s of forestseg's predict path (windows of several images batched, from host images to
    host masks) over `repeats` passes; of the same work as `Predictor.masks` did it before 5a61907
    (each chunk's logits brought back and waited for, then cut on the host, before the next is
    stacked: the A/B of its overlap and its cutting on the device, in one process); of its forward
    passes alone on the same batches already on the device (on a GPU the host's copies and blending
    are of the order of a forward); and whether it ran in bf16 (`precision` as Predictor.load takes
    it: auto picks for this device)."""
    from forestseg.predict import Predictor, _window_weight
    from forestseg.windows import TILE_BATCH

    predictor = Predictor.load(model_path, device, precision)
    weight = _window_weight(predictor.tile)  # the blend's arithmetic, as masks did it

    @torch.inference_mode()
    def one_at_a_time() -> None:  # masks before 5a61907, line for line: plain copies, the cut on the host
        for k in range(0, len(images), TILE_BATCH):
            x = torch.from_numpy(np.stack(list(images[k : k + TILE_BATCH]))).to(device)
            logits = predictor._forward(x).cpu().numpy()
            _ = [(o * weight) / weight > predictor.cut for o in logits]  # the masks, made and dropped

    def whole_path() -> None:
        predictor.masks(list(images))

    whole_path(), one_at_a_time()  # warm-up of both at the timed batch sizes (cuDNN tunes per shape)
    resident = [torch.from_numpy(images[k : k + TILE_BATCH]).to(device) for k in range(0, len(images), TILE_BATCH)]
    whole, sequential, forward = [], [], []
    for r in range(repeats):  # in turn, each first in every other repeat: a slow moment favours neither
        pair = ((whole, whole_path), (sequential, one_at_a_time))
        for rates, work in pair if r % 2 == 0 else pair[::-1]:
            sync(device)
            t0 = time.perf_counter()
            work()
            sync(device)
            rates.append(len(images) / (time.perf_counter() - t0))
        with torch.inference_mode():  # as windows_logits runs them
            t0 = time.perf_counter()
            for x in resident:
                predictor._forward(x)
            sync(device)
        forward.append(len(images) / (time.perf_counter() - t0))
    return whole, sequential, forward, predictor.bf16


def files_speeds(
    model_path: Path,
    images: np.ndarray,
    folder: Path,
    repeats: int,
    precision: str,
    device: torch.device,
    copies: int = 4,
) -> list[float]:
    """Images/s of `forestseg predict` as a user calls it on a folder of JPEG tiles (`copies` x the
    images, quality 95), in this process: decoding, the batched forward passes, the PNG masks written,
    the call's own model load and listing; over `repeats` calls."""
    from forestseg.cli import main as cli

    inputs = folder / "jpeg"
    inputs.mkdir(parents=True)
    for k in range(copies):
        for i, image in enumerate(images):
            Image.fromarray(image).save(inputs / f"{k}_{i:04d}.jpg", quality=95)
    n = copies * len(images)
    argv = ["predict", str(model_path), str(inputs), "-o", str(folder / "masks"), "--precision", precision]
    argv += ["--device", str(device)]  # the device the rest of the bench measures, not the CLI's own pick
    rates = []
    for r in range(repeats + 1):  # the first call warms up (allocator, kernel choice), untimed
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cli(argv)
        except SystemExit as e:  # the CLI's exit status
            if e.code:
                raise RuntimeError(f"forestseg predict exited {e.code}") from None
        if r:
            rates.append(n / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12, help="training steps per epoch (and study-style steps)")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs (after one warm-up epoch) and predict passes")
    ap.add_argument("--study", action="store_true", help="the study's UNet instead of UNet width/depth")
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (the train stage keeps freed memory: device.keep_freed_memory)",
    )
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument(
        "--compile-only", action="store_true", help="time training with torch.compile alone (no eager run before it)"
    )
    ap.add_argument(
        "--nchw", action="store_true", help="also time training without channels_last (train.channels_last)"
    )
    ap.add_argument(
        "--auto-only",
        action="store_true",
        help="time training only in the precision auto picks (exact fp32 of the study's UNet takes minutes on a GPU)",
    )
    ap.add_argument("--device", default="auto", help="auto (a GPU where torch sees one), cpu, cuda or cuda:<index>")
    args = ap.parse_args()
    if min(args.width, args.depth, args.batch, args.steps, args.repeats) < 1:
        ap.error("--width, --depth, --batch, --steps and --repeats must be at least 1")
    kept = False if args.default_malloc else keep_freed_memory()
    try:
        device = pick_device(args.device, key="--device")
    except ForestsegError as e:
        ap.error(str(e))
    tmp = Path(tempfile.mkdtemp(prefix="forestseg-bench-"))
    started = cpu_clock()
    try:
        measure(args, device, kept, tmp)
    finally:  # the packed sample and the model files: ~300 MiB a run
        shutil.rmtree(tmp, ignore_errors=True)
    print(others_line(started))


def measure(args: argparse.Namespace, device: torch.device, kept: bool, tmp: Path) -> None:
    """Every measurement of the bench, its files in `tmp`."""
    if (SAMPLE / "meta_data.csv").is_file():
        root, what = SAMPLE, f"real sample {SAMPLE}"
    else:
        root, what = tmp / "synthetic", "synthetic tiles"
        generate(root, SynthConfig(scenes=16, grid=4, tile_size=256, seed=0))
    t0 = time.perf_counter()
    index, report = build_index(root, DataLayout(tmp).images, DataLayout(tmp).masks)
    pack = time.perf_counter() - t0
    n = report["valid"]
    print(
        f"data: {what}, {n} pairs of {report['tile_size'][0]}x{report['tile_size'][1]}, device {device}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"pack: {pack:.2f} s for {n} pairs ({n / pack:.0f} pairs/s) -> {5108 * pack / n:.1f} s extrapolated to 5108 pairs; "
        f"packed size {DataLayout(tmp).images.stat().st_size / 2**20 + DataLayout(tmp).masks.stat().st_size / 2**20:.0f} MiB"
    )

    # the study's UNet has fixed layers: width, depth and batch-norm are the unet's alone
    model_cfg = (
        ModelConfig(arch="study_unet", input="normalized")
        if args.study
        else ModelConfig(arch="unet", width=args.width, depth=args.depth, batch_norm=True, input="normalized")
    )
    # batch x steps rows, the set cycled where it is smaller (the sample's 1035 pairs at the study's
    # batch 160 and 12 steps): every timed step a full batch, as --steps says
    rows = np.arange(args.batch * args.steps) % n
    if len(rows) > n:
        print(f"note: {n} pairs < batch {args.batch} x {args.steps} steps: an epoch repeats tiles")
    tiles = load_tiles(DataLayout(tmp), rows, device)
    test = Tiles(tiles.images[: args.batch], tiles.masks[: args.batch])
    opt_cfg = OptimizerConfig(lr=1e-4, lr_overrides={}, step_epochs=100, gamma=0.1, momentum=0.0, weight_decay=0.0)
    size = report["tile_size"][0]
    train_flops, fwd_flops = (
        flops(model_cfg, size, device, backward=True),
        flops(model_cfg, size, device, backward=False),
    )
    name = "the study's UNet" if args.study else f"UNet width {args.width} depth {args.depth}"
    print(
        f"model: {name}, batch {args.batch}, {sum(p.numel() for p in build_model(model_cfg).parameters()) / 1e6:.2f} M "
        f"params, {len(tiles)} tiles per epoch; {train_flops / 1e9:.1f} GFLOP per training image (forward + backward), "
        f"{fwd_flops / 1e9:.1f} GFLOP per predicted image (counted)"
    )
    # the device's limit, probed before training and again after predict (a probe of ~1 s can hit a
    # slow moment that minutes of training average out): the faster of the two counts
    first = device_peaks(device)
    peaks = {dtype: flops for dtype, (flops, _) in first.items()}
    print(
        "device limit (first probe): "
        + ", ".join(f"{f / 1e9:.0f} GFLOP/s {str(d)[6:]} ({what})" for d, (f, what) in first.items())
    )
    auto = "bf16" if use_bf16("auto", device) else "fp32"
    print(f"precision auto on this device: {auto}")
    precisions = [auto] if args.auto_only else ["bf16", "fp32"]
    if peaks[torch.bfloat16] < peaks[torch.float32] / 4 and not args.auto_only:  # emulated: hours per epoch
        precisions = ["fp32"]
        print("bf16 is emulated on this device (no native bf16 matmul): training timed in fp32 only")
    speeds, models, trained_rates = {}, {}, {}
    settings = [] if args.compile_only else [(p, False, True) for p in precisions]
    settings += [(auto, True, True)] if args.compile or args.compile_only else []
    settings += [(auto, False, False)] if args.nchw else []
    for precision, compile_, channels_last in settings:
        train_cfg = TrainConfig(
            epochs=1 + args.repeats,
            batch_size=args.batch,
            test_batch_size=args.batch,
            device=device.type,
            precision=precision,
            augment=True,
            channels_last=channels_last,
            compile=compile_,
            diverge_factor=1e9,
        )
        folder = tmp / f"{precision}{compile_}{channels_last}"
        result = train_run(
            Run("bce", "adam", 0),
            model_cfg,
            opt_cfg,
            train_cfg,
            tiles,
            test,
            folder,
            folder / "resume.pt",
            "bench",
            log=lambda s: None,
        )
        # epoch 1 includes one-off warm-up (kernel selection, allocator, compilation): time the others
        per_epoch = [len(tiles) / h["train_seconds"] for h in result.history[1:]]
        label = precision + (", torch.compile" if compile_ else "") + ("" if channels_last else ", NCHW")
        speeds[label] = float(np.median(per_epoch))
        trained_rates[label] = (precision, per_epoch)
        models.setdefault(precision, folder / "model.pt")
        print(f"forestseg train: {spread(per_epoch)} images/s ({label})")
    fastest = max(speeds, key=speeds.get)
    ours = speeds[fastest]

    images = tiles.images[: min(len(tiles), 4 * args.batch)].cpu().numpy()
    # predict's precision: as Predictor.load picks it for this device (what `forestseg predict` runs)
    # (auto's model; where bf16 proved emulated and was not timed, fp32's, predicting in fp32 as it trained)
    model_file, predict_precision = (models[auto], "auto") if auto in models else (models["fp32"], "fp32")
    predicted, sequential, forwards, bf16_predict = predict_speeds(
        model_file, images, device, args.repeats, predict_precision
    )
    print(
        f"forestseg predict: {spread(predicted)} images/s ({'bf16' if bf16_predict else 'fp32'}, {len(images)} images); "
        f"one chunk at a time, cut on the host (as before 5a61907): {spread(sequential)}; "
        f"its forward passes alone (batches already on the device): {spread(forwards)}"
    )
    second = device_peaks(device)
    peaks = {d: max(peaks[d], second[d][0]) for d in peaks}
    print(
        "device limit: "
        + ", ".join(
            f"{peaks[d] / 1e9:.0f} GFLOP/s {str(d)[6:]} (the faster of two probes, before training and after "
            f"predict: {first[d][0] / 1e9:.0f} / {second[d][0] / 1e9:.0f}; {max(first[d], second[d])[1]})"
            for d in peaks
        )
    )
    best_peak = max(peaks.values())
    utilisations = []
    for label, (precision, per_epoch) in trained_rates.items():
        peak = peaks[torch.bfloat16 if precision == "bf16" else torch.float32]
        mfu = [100 * v * train_flops / peak for v in per_epoch]
        utilisations += mfu
        print(
            f"forestseg train: MFU {spread(mfu)} % of the {precision} peak, "
            f"{spread([100 * v * train_flops / best_peak for v in per_epoch])} % of the device's best peak ({label})"
        )
    peak = peaks[torch.bfloat16 if bf16_predict else torch.float32]
    mfu = [100 * v * fwd_flops / peak for v in predicted]
    forward_mfu = [100 * v * fwd_flops / peak for v in forwards]
    utilisations += mfu + forward_mfu
    trained = speeds.get(auto, ours)  # with --compile-only, the compiled rate
    print(
        f"forestseg predict: MFU {spread(mfu)} % of the {'bf16' if bf16_predict else 'fp32'} peak, "
        f"{spread([100 * v * fwd_flops / best_peak for v in predicted])} % of the best; "
        f"{np.median(predicted) / trained:.2f}x the training images/s at precision auto (goal >= 3x); "
        f"its forward passes alone: MFU {spread(forward_mfu)} %"
    )
    # here, not only at the end: on a GPU the files and the study-style loop can outlast the time a call
    # gives the bench, and these warnings void the lines above
    warn_if_busy([*(per_epoch for _, per_epoch in trained_rates.values()), predicted, sequential, forwards])
    if max(utilisations) > 100:
        print(
            "warning: an MFU above 100 % means both probes of the peak ran slower than the device can: "
            "the machine was busy; these utilisations do not count, rerun on a quiet machine"
        )
    # after the MFU lines: on a GPU call's time limit, the files' thousands of JPEGs and PNGs come last
    on_files = files_speeds(model_file, images, tmp / "files", args.repeats, predict_precision, device)
    print(
        f"forestseg predict on files (the command on a folder of {4 * len(images)} JPEG tiles, PNG masks written): "
        f"{spread(on_files)} images/s, {np.median(on_files) / trained:.2f}x the training images/s"
    )
    warn_if_busy([on_files])

    names = list(zip(index["image"], index["mask"]))
    study = study_style_steps(root, names, model_cfg, args.batch, args.steps, device, args.repeats)
    theirs = float(np.median(study))
    exact = " with TF32 off" if device.type == "cuda" else ""
    print(f"study-style: {spread(study)} images/s (fp32{exact}, NCHW, PIL decode every batch)")
    print(f"speed-up:    {ours / theirs:.2f}x ({fastest}, forestseg's fastest setting, over the study-style loop)")
    if "fp32" in speeds and fastest != "fp32":  # the same arithmetic on both sides: what the loop itself buys
        print(f"speed-up:    {speeds['fp32'] / theirs:.2f}x (fp32{exact}, forestseg's, at the study loop's precision)")
    warn_if_busy([study])

    norm = Normalizer.fit(tiles.images)
    share = assembly_seconds(tiles, args.batch, args.steps, norm) / (args.batch / ours)
    print(f"batch assembly (gather, cast, normalise): {share:.1%} of a training step of {fastest}")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = datasheet_peak(name)
        print(
            f"{name}: datasheet bf16 dense peak {table / 1e12:.0f} TFLOP/s" if table else f"{name}: no datasheet peak"
        )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"peak RSS: {usage.ru_maxrss / 2**10:.0f} MiB; CPU time {usage.ru_utime:.1f} s user, {usage.ru_stime:.1f} s "
        f"system; malloc {'keeps freed memory' if kept else 'glibc default'}"
    )


if __name__ == "__main__":
    main()
