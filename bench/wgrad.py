"""Time a 3x3 convolution's weight gradient computed five ways (a script, not a test).

    python bench/wgrad.py [--batch 16] [--threads 2] [--reps 5]

`bench/profile_train.py --kernels` shows that on AVX2 CPUs the one slow kernel of a training step is
oneDNN's weight gradient of the small-channel layers (29-54 % of the fp32 peak). This asks whether
torch's own ops compute it faster, layer shape by layer shape of the bench model (UNet w16 d4 at
256 px), fp32, best of `--reps`: oneDNN in channels_last and in NCHW (`aten.convolution_backward`
with the weight output only), torch's native kernel (oneDNN disabled: im2col + GEMM per image), nine
GEMMs over the shifted windows of the channels_last input, and `F.unfold` + one GEMM per 2 images,
with glibc keeping freed memory as the train stage has it.
Each way's result is checked against oneDNN's (largest difference over the largest value).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forestseg.device import keep_freed_memory  # noqa: E402

# (input channels, output channels, size) of the bench model's 3x3 convolutions, one per kind
SHAPES = [(16, 16, 256), (32, 16, 256), (32, 32, 128), (64, 32, 128), (64, 64, 64), (128, 128, 32), (256, 256, 16)]


def best_of(fn: Callable[[], torch.Tensor], reps: int) -> float:
    fn()  # warm-up: oneDNN builds its primitive on the first call
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def onednn(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mask = [False, True, False]  # the weight gradient only
    return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)[1]


def native(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    before = torch.backends.mkldnn.enabled  # not mkldnn.flags(): it warns about Intel GPUs' TF32
    torch.backends.mkldnn.enabled = False
    try:
        return onednn(x, g, w)
    finally:
        torch.backends.mkldnn.enabled = before


def shifted(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """dW[:, :, ky, kx] = gO^T @ (the input shifted by (ky, kx)), channels_last: 9 GEMMs of depth N*H*W."""
    o, i, h, wd = g.shape[1], x.shape[1], x.shape[2], x.shape[3]
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (N, H+2, W+2, I)
    grad = g.permute(0, 2, 3, 1).reshape(-1, o)  # (N*H*W, O)
    out = torch.empty(o, i, 3, 3)
    for ky in range(3):
        for kx in range(3):
            out[:, :, ky, kx] = grad.T @ padded[:, ky : ky + h, kx : kx + wd, :].reshape(-1, i)
    return out


def unfolded(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, chunk: int = 2) -> torch.Tensor:
    """im2col of `chunk` images at a time (F.unfold), then one batched GEMM each."""
    out = torch.zeros(g.shape[1], x.shape[1] * 9)
    for n in range(0, len(x), chunk):
        cols = F.unfold(x[n : n + chunk], 3, padding=1)  # (chunk, 9 I, H*W)
        out += (g[n : n + chunk].flatten(2) @ cols.transpose(1, 2)).sum(0)
    return out.view_as(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-size", type=int, default=256, help="skip layers larger than this many px")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the train stage does: no fresh mmap per large buffer
    torch.manual_seed(0)
    cl, nchw = torch.channels_last, torch.contiguous_format
    ways = {  # name: (function, the inputs' layout; converted before timing, as the step has them so)
        "oneDNN channels_last": (onednn, cl),
        "oneDNN NCHW": (onednn, nchw),
        "native (im2col + GEMM)": (native, nchw),
        "9 shifted GEMMs": (shifted, cl),
        "unfold + GEMM": (unfolded, nchw),
    }
    print(f"fp32, batch {args.batch}, {args.threads} threads; GFLOP/s (best of {args.reps}), max relative difference")
    for i, o, size in SHAPES:
        if size > args.max_size:
            continue
        x, g, w = (
            torch.randn(args.batch, i, size, size),
            torch.randn(args.batch, o, size, size),
            torch.randn(o, i, 3, 3),
        )
        flop = 2 * args.batch * size * size * o * i * 9
        ref = onednn(x, g, w).double()
        cells = []
        for name, (way, layout) in ways.items():
            xs, gs = x.contiguous(memory_format=layout), g.contiguous(memory_format=layout)
            seconds = best_of(lambda: way(xs, gs, w), args.reps)
            diff = (way(xs, gs, w).double() - ref).abs().max().item() / ref.abs().max().item()
            cells.append(f"{name} {flop / seconds / 1e9:.0f} ({diff:.0e})")
        print(f"{i:>3} -> {o:>3} ch, {size:>3} px ({flop / 1e9:.2f} GFLOP): " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
