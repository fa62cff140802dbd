"""Profile training steps (a script, not a test): the top ops by self CPU time (on CUDA by self device
time), with torch.profiler.

    python bench/profile_train.py [--default-malloc] [--precision auto|bf16|fp32] [--width 16] [--depth 4]
                                  [--batch 16] [--size 256] [--steps 6] [--kernels] [--nchw]
                                  [--study] [--device auto|cpu|cuda] [--cudnn-limit N]
    python bench/profile_train.py --study --batch 160 --kernels   # on a GPU: issue 14's setting

Runs the training step of forestseg's loop (the precision as train.precision picks it, channels_last, foreach
Adam) on synthetic 256-px tiles, after two warm-up steps, and prints the 12 ops with the most self
time and the process's user/system CPU time, so the effect of an allocator or kernel change
shows op by op (run it with and without --default-malloc). On CUDA it also prints the step's time
and the share of it the device spends in the listed ops.

With --kernels it also times each of the model's convolutions alone in its three kernels (forward,
backward to the input, backward to the weights: `aten.convolution_backward` with one output each),
in the step's precision (bf16 where autocast runs them in bf16) and the model's layout (--nchw: without
channels_last), and prints their GFLOP/s against that precision's dense peak measured in the same run
(`bench.speed.dense_peak`): which kernels hold the training MFU down.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.speed import device_peaks, sync  # noqa: E402
from forestseg.config import ForestsegError, ModelConfig, OptimizerConfig  # noqa: E402
from forestseg.device import apply_precision, keep_freed_memory, pick_device  # noqa: E402
from forestseg.loader import Normalizer, to_input  # noqa: E402
from forestseg.losses import bce  # noqa: E402
from forestseg.model import build_model  # noqa: E402
from forestseg.optim import make_optimizer  # noqa: E402
from forestseg.synthetic import scene_tiles  # noqa: E402


def best_seconds(fn: Callable[[], object], repeats: int = 3, device: torch.device = torch.device("cpu")) -> float:
    """The fastest of `repeats` timed calls of `fn` (with its work on `device` done), after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


class _RecordConvolutions(TorchDispatchMode):
    """Count each distinct aten.convolution a forward runs (modules and functional calls alike: Up
    runs its transposed conv as a 1x1 conv): input, output and weight shapes, stride, padding, transposed,
    and whether its input needs a gradient (not the first layer's: training never runs that kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            x, w, _, stride, pad, _, transposed = args[:7]
            key = (tuple(x.shape), tuple(out.shape), tuple(w.shape), tuple(stride), tuple(pad), transposed)
            key += (x.requires_grad,)
            self.seen[key] = self.seen.get(key, 0) + 1
        return out


def _convolutions(model: torch.nn.Module, x: torch.Tensor) -> dict[tuple, int]:
    with _RecordConvolutions() as record, torch.enable_grad():  # with grad: which inputs need one
        model(x)
    return record.seen


def conv_kernels(
    model: torch.nn.Module, x: torch.Tensor, peak: float, dtype: torch.dtype = torch.float32
) -> tuple[float, float, float, float]:
    """Print each distinct convolution of `model` (met on a forward pass of `x`) timed alone in `dtype`:
    forward, backward to the input, backward to the weights, GFLOP/s and % of `peak` FLOP/s, and
    the totals over every convolution of one training step; returns those totals: the forward
    FLOPs (each backward kernel does as many) and the seconds of the three kernels (the backward to
    the input summed over the convolutions whose input needs a gradient, as training runs them)."""
    seen = _convolutions(model, x)  # each distinct convolution: how many times a forward runs it
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    # FLOPs, forward s, backward-input s, backward-weight s; and the FLOPs of the backward to the input
    totals, in_flop, top = [0.0, 0.0, 0.0, 0.0], 0.0, 0.0
    print(
        f"{'convolution (input -> output, kernel)':48} {'count':>5} {'forward':>16} {'back, input':>16} {'back, weights':>16}"
    )
    dev = x.device
    for (i, o, wshape, stride, pad, transposed, input_grad), count in seen.items():
        xin = torch.randn(i, device=dev).to(dtype).contiguous(memory_format=layout)
        w = (torch.randn(wshape, device=dev) * 0.1).to(dtype).contiguous(memory_format=layout)
        g = torch.randn(o, device=dev).to(dtype).contiguous(memory_format=layout)
        args = (list(stride), list(pad), [1, 1], transposed, [0, 0], 1)
        fwd = best_seconds(lambda: torch.ops.aten.convolution(xin, w, None, *args), device=dev)
        bin_ = (
            best_seconds(
                lambda: torch.ops.aten.convolution_backward(g, xin, w, None, *args, [True, False, False]), device=dev
            )
            if input_grad
            else 0.0  # the model's input (the first layer's) needs no gradient: autograd skips this kernel
        )
        bw = best_seconds(
            lambda: torch.ops.aten.convolution_backward(g, xin, w, None, *args, [False, True, False]), device=dev
        )
        # as FlopCounterMode counts the forward; each backward kernel does as many
        flop = conv_flop_count(list(i), list(wshape), list(o), transposed)
        cells = " ".join(
            f"{flop / t / 1e9:7.1f} ({flop / t / peak:4.0%})" if t else f"{'not run':>16}" for t in (fwd, bin_, bw)
        )
        name = f"{i[1]}x{i[2]}x{i[3]} -> {o[1]}x{o[2]}x{o[3]}, {wshape[2]}x{wshape[3]}{' transposed' if transposed else ''}"
        print(f"{name:48} {count:>5} {cells}")
        for j, t in enumerate((flop, fwd, bin_, bw)):
            totals[j] += count * t
        in_flop += count * flop * input_grad
        top = max(top, *(flop / t / peak for t in (fwd, bin_, bw) if t))
    if top > 1:  # a probe slowed by another process reads the peak low, and every share high
        print(f"warning: a convolution ran at {top:.0%} of the measured peak: the peak probe was slowed; rerun")
    flop, fwd, bin_, bw = totals
    step = 2 * flop + in_flop  # forward, backward to the weights, and to the inputs that need it
    print(
        f"every convolution of a step, GFLOP/s (% of the {str(dtype)[6:]} peak): forward {flop / fwd / 1e9:.1f} "
        f"({flop / fwd / peak:.0%}), backward to the input {in_flop / bin_ / 1e9:.1f} ({in_flop / bin_ / peak:.0%}), "
        f"backward to the weights {flop / bw / 1e9:.1f} ({flop / bw / peak:.0%}); the three together "
        f"{step / (fwd + bin_ + bw) / 1e9:.1f} ({step / (fwd + bin_ + bw) / peak:.0%}), "
        f"{fwd + bin_ + bw:.2f} s per step (forward {fwd / (fwd + bin_ + bw):.0%}, backward to the input "
        f"{bin_ / (fwd + bin_ + bw):.0%}, to the weights {bw / (fwd + bin_ + bw):.0%})"
    )
    return flop, fwd, bin_, bw


def device_busy_seconds(events: Any) -> float:
    """Seconds the device ran the profiled kernels and copies: their own rows only (an op's row repeats
    its kernels' time, and a user annotation spans others)."""
    return (
        sum(
            e.self_device_time_total
            for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation
        )
        / 1e6
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default-malloc", action="store_true")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="as train.precision")
    ap.add_argument("--kernels", action="store_true", help="also each convolution's three kernels timed alone")
    ap.add_argument("--nchw", action="store_true", help="without channels_last (train.channels_last: false)")
    ap.add_argument("--study", action="store_true", help="the study's UNet instead of UNet width/depth")
    ap.add_argument("--device", default="auto", help="auto (CUDA where there is one), cpu, cuda or cuda:<i>")
    ap.add_argument(
        "--cudnn-limit",
        type=int,
        default=None,
        help="cuDNN algorithms tried per convolution (torch.backends.cudnn.benchmark_limit: torch's default 10; 0 = all)",
    )
    args = ap.parse_args()
    if min(args.width, args.depth, args.batch, args.steps) < 1 or args.size < 2**args.depth * 2:
        ap.error("--width, --depth, --batch and --steps must be at least 1, --size at least 2 * 2**depth")
    kept = False if args.default_malloc else keep_freed_memory()
    device = pick_device(args.device, key="--device")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train_run sets it
        if args.cudnn_limit is not None:
            torch.backends.cudnn.benchmark_limit = args.cudnn_limit
    images, masks = scene_tiles(0, (args.batch + 3) // 4, args.size // 2 * 2)
    x_u8, y = torch.from_numpy(images[: args.batch]).to(device), torch.from_numpy(masks[: args.batch]).to(device)
    # the bench model (full resolution), or the study's
    model_cfg = (  # the study's UNet has fixed layers: width and depth are the unet's alone
        ModelConfig(arch="study_unet") if args.study else ModelConfig(arch="unet", width=args.width, depth=args.depth)
    )
    layout = torch.contiguous_format if args.nchw else torch.channels_last
    model = build_model(model_cfg).to(device, memory_format=layout)
    opt = make_optimizer("adam", model.parameters(), 1e-3, OptimizerConfig())
    norm, bf16 = Normalizer.fit(x_u8), apply_precision(args.precision, device)  # fp32 is exact fp32, as in training

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(to_input(x_u8, norm, channels_last=not args.nchw))
        loss = bce(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        sync(device)  # the clock inside the profiler: its start-up (~1 s the first time) is not a step's
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        after, seconds = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    name = "the study's UNet" if args.study else f"UNet w{args.width} d{args.depth}"
    print(
        f"{args.steps} steps, batch {args.batch} at {args.size} px, {name}, {'bf16' if bf16 else 'fp32'}, "
        f"{'NCHW' if args.nchw else 'channels_last'}, on {device}"
        f"{f' (cuDNN benchmark_limit {torch.backends.cudnn.benchmark_limit})' if cuda else ''}, malloc "
        f"{'keeps freed memory' if kept else 'glibc default'}: {seconds / args.steps * 1e3:.1f} ms a step under the "
        f"profiler, {after.ru_utime - before.ru_utime:.1f} s user, {after.ru_stime - before.ru_stime:.1f} s system CPU"
    )
    events = prof.key_averages()
    if cuda:  # what the device spends its time on, and how much of the step it is busy at all
        busy = device_busy_seconds(events)
        print(f"device busy {busy / seconds:.0%} of the profiled steps' wall time (kernels and copies, summed)")
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=12, max_name_column_width=40))
    if args.kernels:
        dtype = torch.bfloat16 if bf16 else torch.float32
        peak, what = device_peaks(device)[dtype]  # whatever this process's malloc setting
        print(f"{str(dtype)[6:]} dense peak {peak / 1e9:.0f} GFLOP/s ({what}), measured now")
        conv_kernels(model, to_input(x_u8, norm, channels_last=not args.nchw), peak, dtype)


if __name__ == "__main__":
    try:
        main()
    except ForestsegError as e:  # a model the registry refuses (--width 300)
        sys.exit(f"profile_train.py: error: {e}".replace("params.yaml: model.", "--"))
