"""Test-time batch-norm adaptation on unseen scenes (README "Round 8"): each CV fold's model of the
`cpu` recipe is scored as trained and with its batch-norm statistics moved towards those of each
test scene's own tiles (no label is used), all from the same trained model, so the change is paired.

    python bench/adabn.py [--only 0,1,2,3,4] [-S grid.seed=[1]] [--mix 0.25,0.5,1]

Each batch-norm layer's mean and variance become (1 - mix) x the training statistics + mix x the
scene's (mix 1: AdaBN, the scene's alone). Prints forest IoU and mIoU per fold and mix, then the
mean paired change per mix.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality as q  # noqa: E402
from forestseg.config import Run, load_sections  # noqa: E402
from forestseg.loader import load_tiles, to_input  # noqa: E402
from forestseg.predict import Predictor  # noqa: E402
from forestseg.train import train_run  # noqa: E402


def adapted(p: Predictor, tiles: np.ndarray, mix: float) -> Predictor:
    """A copy of `p` whose batch-norm statistics are (1 - mix) x its own + mix x those of `tiles`
    (one batch, uint8 (B, t, t, 3)); the weights are unchanged."""
    model = copy.deepcopy(p.model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = mix  # one training-mode forward: running = (1 - mix) x running + mix x the batch's
    with torch.no_grad():
        model.train()(to_input(torch.from_numpy(np.ascontiguousarray(tiles)).to(p.device), p.norm))
    return dataclasses.replace(p, model=model.eval())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="0,1,2,3,4", help="folds of the 5-fold CV")
    ap.add_argument("--mix", default="0.25,0.5,1", help="weights of the scene's statistics")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="params over the cpu recipe")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sample, device = q.load_sample(), torch.device("cpu")
    model_cfg, opt_cfg, train_cfg, grid = load_sections(
        q.recipe_params("cpu", args.sets), "model", "optimizer", "train", "grid"
    )
    folds, mixes = q.folds(sample, 5), [0.0] + [float(m) for m in args.mix.split(",")]
    images = np.load(sample.layout.images, mmap_mode="r")
    deltas: dict[float, list[tuple[float, float]]] = {m: [] for m in mixes[1:]}
    for f in [int(x) for x in args.only.split(",")]:
        train_scenes = [s for i, scenes in enumerate(folds) if i != f for s in scenes]
        train = load_tiles(sample.layout, q.rows_of(sample, train_scenes), device, sample.scene)
        test = load_tiles(sample.layout, q.rows_of(sample, folds[f]), device)
        with tempfile.TemporaryDirectory(prefix="forestseg-quality-") as tmp:
            t0, run = time.perf_counter(), Run(grid.loss[0], grid.optimizer[0], grid.seed[0])
            train_run(
                run, model_cfg, opt_cfg, train_cfg, train, test, Path(tmp), Path(tmp) / "r.pt", "bench", lambda s: None
            )
            p = Predictor.load(Path(tmp) / "model.pt", device, train_cfg.precision)
        counts: dict[float, dict] = {m: {} for m in mixes}
        for scene in folds[f]:
            rows = q.rows_of(sample, [scene])
            for m in mixes:
                counts[m].update(q.score_rows([adapted(p, images[rows], m) if m else p], sample, rows))
        got = {m: q.total_scores(c) for m, c in counts.items()}
        print(
            f"fold {f}, seed {run.seed} ({time.perf_counter() - t0:.0f} s): "
            + "; ".join(f"mix {m:g}: IoU {s['iou']:.4f} mIoU {s['miou']:.4f}" for m, s in got.items()),
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
