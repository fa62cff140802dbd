"""Profile training steps (a script, not a test): the top ops by self CPU time, with torch.profiler.

    python bench/profile_train.py [--default-malloc] [--precision auto|bf16|fp32] [--width 16] [--depth 4]
                                  [--batch 16] [--size 256] [--steps 6]

Runs the training step of forestseg's loop (the precision as train.precision picks it, channels_last, foreach
Adam) on synthetic 256-px tiles, after two warm-up steps, and prints the 12 ops with the most self
CPU time and the process's user/system CPU time, so the effect of an allocator or kernel change
shows op by op (run it with and without --default-malloc).
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forestseg.config import ModelConfig, OptimizerConfig  # noqa: E402
from forestseg.device import keep_freed_memory, use_bf16  # noqa: E402
from forestseg.loader import Normalizer, to_input  # noqa: E402
from forestseg.losses import bce  # noqa: E402
from forestseg.model import build_model  # noqa: E402
from forestseg.optim import make_optimizer  # noqa: E402
from forestseg.synthetic import scene_tiles  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default-malloc", action="store_true")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="as train.precision")
    args = ap.parse_args()
    kept = False if args.default_malloc else keep_freed_memory()
    device = torch.device("cpu")
    images, masks = scene_tiles(0, (args.batch + 3) // 4, args.size // 2 * 2)
    x_u8, y = torch.from_numpy(images[: args.batch]), torch.from_numpy(masks[: args.batch])
    model_cfg = ModelConfig(arch="unet", width=args.width, depth=args.depth)  # the bench model: full resolution
    model = build_model(model_cfg).to(memory_format=torch.channels_last)
    opt = make_optimizer("adam", model.parameters(), 1e-3, OptimizerConfig())
    norm, bf16 = Normalizer.fit(x_u8), use_bf16(args.precision, device)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(to_input(x_u8, norm))
        loss = bce(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{args.steps} steps, batch {args.batch} at {args.size} px, UNet w{args.width} d{args.depth}, "
        f"{'bf16' if bf16 else 'fp32'}, malloc {'keeps freed memory' if kept else 'glibc default'}: "
        f"{after.ru_utime - before.ru_utime:.1f} s user, {after.ru_stime - before.ru_stime:.1f} s system CPU"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
