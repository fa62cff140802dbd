"""Fine-tuning bench (a script, not a test): start from a trained model (train.init_from) or from scratch?

On the real sample (../shared/forest-sample or FORESTSEG_SAMPLE), as a user with a model trained
elsewhere and a few labelled tiles of their own region would have it. The 8 scenes that
bench/quality.py sets aside (bench/holdout_scenes.txt) are neither trained nor scored here. Of the
other scenes:
  1. `--scenes` of them, drawn with `--seed`, are the user's region; a source model trains on the
     rest for `--source-epochs`;
  2. of each region scene, its first `--tiles` tiles in name order (<scene>_sat_<row><col>: its top
     rows, a corner a user would label) are the labelled tiles; the scene's other tiles are scored;
  3. scored on them, each tile predicted as `forestseg predict` does (bench/quality.py's scoring):
       (a) the source model as it is,
       (b) the source model fine-tuned on the labelled tiles for `--epochs` (its weights and its
           input normaliser, as train.init_from does),
       (c) the same model trained from scratch on the labelled tiles for the same `--epochs`,
     and the all-forest baseline.
Prints forest IoU, mIoU, precision, recall and the training seconds of each. Model, optimizer and
train params are the recipe's (recipes/<name>.yaml over params.yaml, -S as bench/quality.py takes
it), with the loss's own threshold (the few labelled tiles leave no validation scenes to choose one).

    python bench/finetune.py [cpu] [-S key=value] [--scenes 4] [--tiles 8] [--epochs 10] [--source-epochs 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.quality import (  # noqa: E402
    Sample,
    holdout_scenes,
    load_sample,
    recipe_params,
    rows_of,
    score_rows,
    total_scores,
)
from forestseg.config import ForestsegError, Run, load_sections  # noqa: E402
from forestseg.device import keep_freed_memory, pick_device  # noqa: E402
from forestseg.loader import load_tiles  # noqa: E402
from forestseg.metrics import scores  # noqa: E402
from forestseg.predict import Predictor  # noqa: E402
from forestseg.train import train_run  # noqa: E402


def split_region(sample: Sample, names: np.ndarray, region: list[str], tiles: int) -> tuple[list[int], np.ndarray]:
    """Of each region scene, its first `tiles` tiles in name order (`names`: each row's image file), the
    labelled ones, and its other tiles, the scored ones (sorted)."""
    labelled, scored = [], []
    for scene in region:
        rows = rows_of(sample, [scene])
        rows = rows[np.argsort(names[rows], kind="stable")]
        if len(rows) <= tiles:
            sys.exit(f"bench/finetune.py: --tiles {tiles}: scene {scene} has only {len(rows)} tiles")
        labelled += rows[:tiles].tolist()
        scored += rows[tiles:].tolist()
    return labelled, np.array(sorted(scored))


def all_forest(sample: Sample, rows: np.ndarray) -> dict:
    """The scores of calling every pixel of `rows` forest."""
    forest = int(sample.forest[rows].sum())
    return scores([forest, int(sample.pixels[rows].sum()) - forest, 0, 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="cpu", help="recipes/<name>.yaml (default cpu)")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--scenes", type=int, default=4, help="scenes of the user's region (default 4)")
    ap.add_argument("--tiles", type=int, default=8, help="labelled tiles of each region scene (default 8)")
    ap.add_argument(
        "--epochs", type=int, default=10, help="epochs of (b) fine-tuning and (c) from scratch (default 10)"
    )
    ap.add_argument("--source-epochs", type=int, help="epochs of the source model (default: the recipe's)")
    ap.add_argument("--lr", type=float, help="optimizer.lr of (b) and (c) (default: the recipe's)")
    ap.add_argument("--tta", action="store_true", help="score with the 8 flips/rotations averaged")
    ap.add_argument("--seed", type=int, default=0, help="draws the region scenes")
    args = ap.parse_args()
    params = recipe_params(args.recipe, args.set_param)
    model_cfg, opt_cfg, train_cfg, grid = load_sections(params, "model", "optimizer", "train", "grid")
    train_cfg = dataclasses.replace(train_cfg, threshold="loss")
    source_epochs = train_cfg.epochs if args.source_epochs is None else args.source_epochs
    lr = opt_cfg.lr_for(grid.loss[0], grid.optimizer[0]) if args.lr is None else args.lr
    if min(args.scenes, args.tiles, args.epochs, source_epochs) < 1 or not 0 < lr < math.inf:
        sys.exit("bench/finetune.py: --scenes, --tiles, --epochs and --source-epochs must be >= 1, --lr > 0")
    for option, epochs in (("--epochs", args.epochs), ("--source-epochs", source_epochs)):
        if opt_cfg.warmup_epochs >= epochs:  # checked now, not after the source model has trained
            sys.exit(
                f"bench/finetune.py: {option} {epochs}: must be above the recipe's optimizer.warmup_epochs "
                f"{opt_cfg.warmup_epochs} (or set -S optimizer.warmup_epochs=0)"
            )
    run = Run(grid.loss[0], grid.optimizer[0], grid.seed[0])
    device = pick_device(train_cfg.device)
    if device.type == "cpu":
        keep_freed_memory()

    sample = load_sample()
    held = set(holdout_scenes(sample))
    pool = sorted(set(sample.scene) - held)
    if args.scenes >= len(pool):
        sys.exit(f"bench/finetune.py: --scenes {args.scenes}: only {len(pool)} scenes outside {sorted(held)}")
    region = sorted(np.random.default_rng(args.seed).choice(pool, args.scenes, replace=False).tolist())
    names = pd.read_csv(sample.layout.index_csv, usecols=["image"])["image"].to_numpy()
    labelled, scored = split_region(sample, names, region, args.tiles)
    source_rows = rows_of(sample, [s for s in pool if s not in region])
    test = load_tiles(sample.layout, scored, device)  # reported each epoch, never used to choose anything
    print(
        f"{args.recipe} {' '.join(args.set_param)}: unet width {model_cfg.width} depth {model_cfg.depth}, "
        f"{run.loss}, {run.optimizer}; device {device}, {torch.get_num_threads()} threads\n"
        f"source: {len(source_rows)} tiles of {len(pool) - len(region)} scenes, {source_epochs} epochs; "
        f"region: scenes {', '.join(region)}, {len(labelled)} labelled tiles ({args.tiles} per scene), "
        f"{len(scored)} scored; {len(held)} set-aside scenes unused"
    )

    def fit(name: str, rows: np.ndarray, epochs: int, lr: float, init: Path | None = None) -> tuple[Path, float]:
        """The model file of a run on the sample's `rows`, and its training seconds."""
        t0 = time.perf_counter()
        train_run(
            run,
            model_cfg,
            dataclasses.replace(opt_cfg, lr=lr, lr_overrides={}),
            dataclasses.replace(train_cfg, epochs=epochs),
            load_tiles(sample.layout, rows, device, sample.scene),
            test,
            folder / name,
            folder / f"{name}.resume.pt",
            name,
            log=lambda s: None,
            init=init,
        )
        return folder / name / "model.pt", time.perf_counter() - t0

    def score(model_file: Path) -> dict:
        predictor = Predictor.load(model_file, device, train_cfg.precision, tta=args.tta)
        return total_scores(score_rows([predictor], sample, scored))

    with tempfile.TemporaryDirectory(prefix="forestseg-finetune-") as tmp:
        folder = Path(tmp)
        source, source_seconds = fit("source", source_rows, source_epochs, opt_cfg.lr_for(run.loss, run.optimizer))
        print(f"source model trained in {source_seconds:.0f} s")
        tuned, tuned_seconds = fit("finetuned", np.array(labelled), args.epochs, lr, init=source)
        scratch, scratch_seconds = fit("scratch", np.array(labelled), args.epochs, lr)
        rows = [
            ("(a) source model as is", score(source), 0.0),
            (f"(b) fine-tuned, {args.epochs} epochs, lr {lr:g}", score(tuned), tuned_seconds),
            (f"(c) from scratch, {args.epochs} epochs, lr {lr:g}", score(scratch), scratch_seconds),
            ("all-forest baseline", all_forest(sample, scored), 0.0),
        ]
    print(
        f"{'model' + (' (scored with TTA)' if args.tta else ''):<40} {'forest IoU':>10} {'mIoU':>8} "
        f"{'precision':>9} {'recall':>8} {'seconds':>8}"
    )
    for name, s, seconds in rows:
        print(
            f"{name:<40} {s['iou']:>10.4f} {s['miou']:>8.4f} {s['precision']:>9.4f} {s['recall']:>8.4f} {seconds:>8.1f}"
        )
    print("seconds: training on the labelled tiles (the source's own training time is above)")


if __name__ == "__main__":
    try:
        main()
    except ForestsegError as e:
        sys.exit(f"error: {e}")
