"""Fine-tuning benchmark (a script, not a test): start from a trained model (train.init_from) or from scratch?

On the real sample (../shared/forest-sample or FORESTSEG_SAMPLE), as a user with a model trained
elsewhere and a few labelled tiles of their own region would have it:
  1. a source model trains on every scene but `--scenes` held-out ones (`--source-epochs`);
  2. of each held-out scene, its first `--tiles` tiles in name order (its top rows: a corner a user
     would label) are the labelled tiles; its other tiles are scored;
  3. scored on them, with the same predictor `forestseg evaluate` uses:
       (a) the source model as it is,
       (b) the source model fine-tuned on the labelled tiles for `--epochs` (its weights and its
           input normaliser, as train.init_from does),
       (c) the same model trained from scratch on the labelled tiles for the same `--epochs`,
     and the all-forest baseline.
Prints forest IoU, mIoU, precision, recall and the training seconds of each. The model, optimizer
and train params are params.yaml's (recipes/demo.yaml), with --width, --depth and --lr to change them.

    python bench/finetune.py [--scenes 4] [--tiles 8] [--epochs 10] [--source-epochs 4] [--source-tiles 0 (all)]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.speed import SAMPLE  # noqa: E402
from forestseg.config import Run, load_sections  # noqa: E402
from forestseg.dataset import build_index  # noqa: E402
from forestseg.device import pick_device  # noqa: E402
from forestseg.layout import DataLayout  # noqa: E402
from forestseg.loader import Tiles, load_tiles  # noqa: E402
from forestseg.metrics import confusion, scores  # noqa: E402
from forestseg.predict import Predictor  # noqa: E402
from forestseg.train import train_run  # noqa: E402
from recipes import run as recipe  # noqa: E402


def score(model_file: Path, tiles: Tiles, device: torch.device, batch: int = 32) -> dict:
    """Scores of a model file on `tiles` from TP/FP/FN/TN summed over every pixel, predicted as
    `forestseg evaluate` predicts them (Predictor, the model file's threshold)."""
    predictor = Predictor.load(model_file, device)
    counts = torch.zeros(4, dtype=torch.int64)
    for start in range(0, len(tiles), batch):
        images = list(tiles.images[start : start + batch].cpu().numpy())
        pred = torch.from_numpy(np.stack(predictor.masks(images)))
        counts += confusion(pred, tiles.masks[start : start + batch].cpu(), 0.5)
    return scores(counts.numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4, help="held-out scenes: the user's region (default 4)")
    ap.add_argument("--tiles", type=int, default=8, help="labelled tiles of each held-out scene (default 8)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of fine-tuning and of training from scratch")
    ap.add_argument("--source-epochs", type=int, default=4, help="epochs of the source model (default 4)")
    ap.add_argument("--source-tiles", type=int, default=0, help="train the source on this many tiles (0 = all)")
    ap.add_argument("--width", type=int, help="model.width (default params.yaml's)")
    ap.add_argument("--depth", type=int, help="model.depth (default params.yaml's)")
    ap.add_argument("--lr", type=float, help="optimizer.lr of (b) and (c) (default params.yaml's)")
    ap.add_argument("--seed", type=int, default=0, help="picks the held-out scenes and seeds the runs")
    args = ap.parse_args()
    if min(args.scenes, args.tiles, args.epochs, args.source_epochs) < 1 or args.source_tiles < 0:
        sys.exit("bench/finetune.py: --scenes, --tiles, --epochs and --source-epochs must be >= 1, --source-tiles >= 0")
    if not (SAMPLE / "meta_data.csv").is_file():
        sys.exit(f"bench/finetune.py needs the real sample: not found at {SAMPLE} (set FORESTSEG_SAMPLE)")
    model, opt, train = load_sections(recipe.merged("demo"), "model", "optimizer", "train")
    model = dataclasses.replace(
        model, **{k: v for k, v in (("width", args.width), ("depth", args.depth)) if v is not None}
    )
    opt = dataclasses.replace(opt, lr_overrides={})
    device = pick_device(train.device)
    run = Run("bce", "adam", args.seed)

    with tempfile.TemporaryDirectory(prefix="forestseg-finetune-") as folder:
        tmp = Path(folder)
        layout = DataLayout(tmp)
        index, _ = build_index(SAMPLE, layout.images, layout.masks)
        scenes = np.array(sorted(index["scene"].unique()))
        if args.scenes >= len(scenes):
            sys.exit(f"bench/finetune.py: --scenes {args.scenes}: the sample has only {len(scenes)} scenes")
        held = set(np.random.default_rng(args.seed).choice(scenes, args.scenes, replace=False))
        source_rows = np.flatnonzero(~index["scene"].isin(held).to_numpy())
        if args.source_tiles:
            source_rows = np.random.default_rng(args.seed).choice(
                source_rows, min(args.source_tiles, len(source_rows)), replace=False
            )
        labelled, scored = [], []
        for scene in sorted(held):
            rows = np.flatnonzero(index["scene"].to_numpy() == scene)
            rows = rows[np.argsort(index["image"].to_numpy()[rows], kind="stable")]  # name order: <scene>_sat_<rc>
            if len(rows) <= args.tiles:
                sys.exit(f"bench/finetune.py: --tiles {args.tiles}: scene {scene} has only {len(rows)} tiles")
            labelled += list(rows[: args.tiles])
            scored += list(rows[args.tiles :])
        tiles = {
            "source": load_tiles(layout, source_rows, device),
            "labelled": load_tiles(layout, np.array(labelled), device),
            "scored": load_tiles(layout, np.array(scored), device),
        }
        print(
            f"sample: {len(index)} tiles of {len(scenes)} scenes; source trains on {len(tiles['source'])} tiles of "
            f"{index['scene'].iloc[source_rows].nunique()} scenes for {args.source_epochs} epochs; held out {len(held)} scenes "
            f"({', '.join(sorted(held))}): {len(tiles['labelled'])} labelled tiles ({args.tiles} per scene), "
            f"{len(tiles['scored'])} scored; unet width {model.width} depth {model.depth}, bce, adam; device {device}"
        )

        def fit(name: str, data: Tiles, epochs: int, lr: float, init: Path | None = None) -> tuple[Path, float]:
            """Train `name` on `data` (tested each epoch on the scored tiles, never selected on them)."""
            t0 = time.perf_counter()
            train_run(
                run,
                model,
                dataclasses.replace(opt, lr=lr),
                dataclasses.replace(train, epochs=epochs),
                data,
                tiles["scored"],
                tmp / name,
                tmp / f"{name}.resume.pt",
                name,
                log=lambda s: None,
                init=init,
            )
            return tmp / name / "model.pt", time.perf_counter() - t0

        source, source_seconds = fit("source", tiles["source"], args.source_epochs, opt.lr)
        print(f"source model trained in {source_seconds:.0f} s")
        lr = args.lr if args.lr is not None else opt.lr
        tuned, tuned_seconds = fit("finetuned", tiles["labelled"], args.epochs, lr, init=source)
        scratch, scratch_seconds = fit("scratch", tiles["labelled"], args.epochs, lr)

        truth = tiles["scored"].masks.cpu()
        forest = int((truth > 0).sum())
        rows = [
            ("(a) source model as is", score(source, tiles["scored"], device), 0.0),
            (f"(b) fine-tuned, {args.epochs} epochs, lr {lr:g}", score(tuned, tiles["scored"], device), tuned_seconds),
            (
                f"(c) from scratch, {args.epochs} epochs, lr {lr:g}",
                score(scratch, tiles["scored"], device),
                scratch_seconds,
            ),
            ("all-forest baseline", scores([forest, truth.numel() - forest, 0, 0]), 0.0),
        ]
    print(f"{'model':<40} {'forest IoU':>10} {'mIoU':>8} {'precision':>9} {'recall':>8} {'seconds':>8}")
    for name, s, seconds in rows:
        print(
            f"{name:<40} {s['iou']:>10.4f} {s['miou']:>8.4f} {s['precision']:>9.4f} {s['recall']:>8.4f} {seconds:>8.1f}"
        )
    print("seconds: training time on the labelled tiles (the source's own training is above)")


if __name__ == "__main__":
    main()
