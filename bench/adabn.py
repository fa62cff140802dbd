"""Test-time batch-norm adaptation on unseen scenes (README "Round 8"): each CV fold's model of the
`cpu` recipe is scored as trained and with its batch-norm statistics moved towards those of each
test scene's own tiles (no label is used), all from the same trained model, so the change is paired.

    python bench/adabn.py [--only 0,1,2,3,4] [-S grid.seed=[1]] [--mix 0.25,0.5,1]
    python bench/adabn.py --final --mix 0.25     # the 8 set-aside scenes, trained on the other 30: once

Each batch-norm layer's mean and variance become (1 - mix) x the training statistics + mix x the
scene's (mix 1: AdaBN, the scene's alone): `Predictor.adapted`, what `forestseg predict --adapt-bn`
does. Prints forest IoU and mIoU per fold and mix, then the
mean paired change per mix.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality as q  # noqa: E402
from forestseg.config import Run, load_sections  # noqa: E402
from forestseg.loader import load_tiles  # noqa: E402
from forestseg.predict import Predictor, scene_windows  # noqa: E402
from forestseg.train import train_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="0,1,2,3,4", help="folds of the 5-fold CV")
    ap.add_argument("--mix", default="0.25,0.5,1", help="weights of the scene's statistics")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="params over the cpu recipe")
    ap.add_argument("--final", action="store_true", help="the set-aside scenes instead of the CV folds")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sample, device = q.load_sample(), torch.device("cpu")
    model_cfg, opt_cfg, train_cfg, grid = load_sections(
        q.recipe_params("cpu", args.sets), "model", "optimizer", "train", "grid"
    )
    folds, mixes = q.folds(sample, 5), [0.0] + [float(m) for m in args.mix.split(",")]
    images = np.load(sample.layout.images, mmap_mode="r")
    deltas: dict[float, list[tuple[float, float]]] = {m: [] for m in mixes[1:]}
    parts = [
        (f"fold {f}", [s for i, x in enumerate(folds) if i != f for s in x], folds[f])
        for f in map(int, args.only.split(","))
    ]
    if args.final:
        parts = [("set-aside", [s for x in folds for s in x], q.holdout_scenes(sample))]
    for part, train_scenes, test_scenes in parts:
        train = load_tiles(sample.layout, q.rows_of(sample, train_scenes), device, sample.scene)
        test = load_tiles(sample.layout, q.rows_of(sample, test_scenes), device)
        with tempfile.TemporaryDirectory(prefix="forestseg-quality-") as tmp:
            t0, run = time.perf_counter(), Run(grid.loss[0], grid.optimizer[0], grid.seed[0])
            train_run(
                run, model_cfg, opt_cfg, train_cfg, train, test, Path(tmp), Path(tmp) / "r.pt", "bench", lambda s: None
            )
            p = Predictor.load(Path(tmp) / "model.pt", device, train_cfg.precision)
        counts: dict[float, dict] = {m: {} for m in mixes}
        for scene in test_scenes:
            rows = q.rows_of(sample, [scene])
            windows = scene_windows(list(images[rows]), p.tile)  # as `forestseg evaluate --adapt-bn` takes them
            for m in mixes:
                counts[m].update(q.score_rows([p.adapted(windows, m)], sample, rows))
        got = {m: q.total_scores(c) for m, c in counts.items()}
        print(
            f"{part}, seed {run.seed} ({time.perf_counter() - t0:.0f} s): "
            + "; ".join(
                f"mix {m:g}: IoU {s['iou']:.4f} mIoU {s['miou']:.4f} precision {s['precision']:.4f} recall {s['recall']:.4f}"
                for m, s in got.items()
            ),
            flush=True,
        )
        for m in mixes[1:]:
            deltas[m].append((got[m]["iou"] - got[0.0]["iou"], got[m]["miou"] - got[0.0]["miou"]))
    for m, d in deltas.items():
        iou, miou = np.array(d).T
        print(
            f"mix {m:g}: forest IoU {iou.mean():+.4f} (per fold {', '.join(f'{x:+.3f}' for x in iou)}), mIoU {miou.mean():+.4f}"
        )


if __name__ == "__main__":
    main()
