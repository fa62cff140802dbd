"""Quality comparison (a script, not a test): the 2022 study's recipe vs forestseg's default recipe.

On the real sample (../shared/forest-sample or FORESTSEG_SAMPLE), split by scene, both recipes
train for the same number of epochs on the same tiles and are scored on the same unseen scenes:
  (a) study:     recipes/study.yaml's member mse_logits-sgd (study_unet, raw 0-255 input, SGD lr 1e-4,
                 no augmentation), at params.yaml's batch size and precision
  (b) forestseg: recipes/demo.yaml (params.yaml's defaults) member bce-adam (normalised input,
                 flips/rotations, colour jitter, batch-norm UNet)
and the all-forest baseline. Prints test forest IoU, mIoU and Dice for each.

    python bench/quality.py [--epochs 4] [--train-tiles 0 (all)] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.speed import SAMPLE  # noqa: E402
from forestseg.config import (  # noqa: E402
    Run,  # noqa: E402
    SplitConfig,
    load_sections,
)
from forestseg.dataset import build_index, split_index, split_summary  # noqa: E402
from forestseg.device import pick_device  # noqa: E402
from forestseg.layout import DataLayout  # noqa: E402
from forestseg.loader import load_tiles  # noqa: E402
from forestseg.train import train_run  # noqa: E402
from recipes import run as recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-tiles", type=int, default=0, help="use only this many train tiles (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (SAMPLE / "meta_data.csv").is_file():
        sys.exit(f"bench/quality.py needs the real sample: not found at {SAMPLE} (set FORESTSEG_SAMPLE)")
    study_model, study_opt, study_train = load_sections(recipe.merged("study"), "model", "optimizer", "train")
    model, opt, train = load_sections(recipe.merged("demo"), "model", "optimizer", "train")
    device = pick_device(train.device)
    tmp = Path(tempfile.mkdtemp(prefix="forestseg-quality-"))

    index, _ = build_index(SAMPLE, DataLayout(tmp).images, DataLayout(tmp).masks)
    split = split_index(index, SplitConfig(by="scene", test_fraction=0.25, val_fraction=0.0, seed=args.seed))
    subset = split["subset"].to_numpy()
    train_rows = np.flatnonzero(subset == "train")
    if args.train_tiles:
        train_rows = np.random.default_rng(args.seed).choice(train_rows, args.train_tiles, replace=False)
    tiles = {
        "train": load_tiles(DataLayout(tmp), train_rows, device),
        "test": load_tiles(DataLayout(tmp), np.flatnonzero(subset == "test"), device),
    }
    base = split_summary(index, split)["baseline_all_forest"]
    print(
        f"sample: {len(index)} pairs, {len(tiles['train'])} train tiles, {len(tiles['test'])} test tiles "
        f"from {split[subset == 'test']['scene'].nunique()} unseen scenes; {args.epochs} epochs each; device {device}"
    )

    epochs = dict(epochs=args.epochs)
    recipes = {
        "study (study_unet, raw, mse_logits, sgd 1e-4)": (
            Run("mse_logits", "sgd", args.seed),
            study_model,
            study_opt,
            dataclasses.replace(study_train, batch_size=train.batch_size, precision=train.precision, **epochs),
        ),
        f"forestseg (unet w{model.width} d{model.depth}, normalised, bce, adam {opt.lr:g})": (
            Run("bce", "adam", args.seed),
            model,
            dataclasses.replace(opt, lr_overrides={}),
            dataclasses.replace(train, **epochs),
        ),
    }
    rows = []
    for name, (run, m, o, t) in recipes.items():
        t0 = time.perf_counter()
        result = train_run(
            run,
            m,
            o,
            t,
            tiles["train"],
            tiles["test"],
            tmp / run.name,
            tmp / f"{run.name}.pt",
            name,
            log=lambda s: None,
        )
        r = result.metrics
        rows.append((name, r["test_iou"], r["test_miou"], r["test_dice"], time.perf_counter() - t0))
    rows.append(("all-forest baseline", base["iou"], base["miou"], base["dice"], 0.0))
    print(f"{'recipe':<58} {'forest IoU':>10} {'mIoU':>8} {'Dice':>8} {'seconds':>8}")
    for name, iou, miou, dice, sec in rows:
        print(f"{name:<58} {iou:>10.4f} {miou:>8.4f} {dice:>8.4f} {sec:>8.0f}")
    print(f"mIoU gain of forestseg over the study's recipe: {rows[1][2] - rows[0][2]:+.4f}")


if __name__ == "__main__":
    main()
