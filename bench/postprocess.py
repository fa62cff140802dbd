"""What post-processing the forest call buys on unseen scenes (a script, not a test; bench/QUALITY.md, Round 14).

Each CV fold's model of the `cpu` recipe (or `--recipe`, `-S`; kept in `--keep DIR` and reused, as
bench/errors.py keeps them) scores its test scenes as the recipe scores them (the model file's
threshold and batch-norm adaptation), and each test tile's output is then
  - smoothed: its logits blurred by a Gaussian of sigma 2-16 px before the cut;
  - sieved: regions of either class smaller than N px take the class around them (GDAL's sieve
    filter through rasterio, a map's minimum mapping unit), N from 16 to 4096 px;
  - snapped: a tile called forest on more than `hi` of its pixels becomes all forest, on less than
    `lo` all non-forest (the masks call many tiles whole).
Forest IoU and mIoU per fold (the fold's pixels pooled), their mean ± std over folds and the change
against the plain call, fold by fold, go to bench/results/<name>.md.

    python bench/postprocess.py [--only 0,1,2,3,4] [--keep DIR] [-S section.key=value] [--name postprocess_cpu]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rasterio.features import sieve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality as q  # noqa: E402
from forestseg.evaluate import _counts  # noqa: E402
from forestseg.io import write_text  # noqa: E402
from forestseg.loader import gaussian_blur  # noqa: E402
from forestseg.metrics import scores  # noqa: E402

Call = Callable[[np.ndarray, float], np.ndarray]  # (N, t, t) logits, the cut -> (N, t, t) forest


def blurred(sigma: float) -> Call:
    """The call on logits blurred by a Gaussian of `sigma` px (reflected at the tile's edge), as
    bench/adabn.py --smooth blurs them."""

    def call(logits: np.ndarray, cut: float) -> np.ndarray:
        x = torch.from_numpy(logits.astype(np.float32))[:, None]
        return gaussian_blur(x, sigma)[:, 0].numpy() > cut

    return call


def sieved(size: int) -> Call:
    """The call with regions (8-connected) of fewer than `size` px merged into their surroundings."""
    return lambda logits, cut: np.stack([sieve((x > cut).astype(np.uint8), size, connectivity=8) for x in logits]) > 0


def snapped(lo: float, hi: float) -> Call:
    """The call, with a tile forest on more than `hi` of its pixels all forest and under `lo` none."""

    def call(logits: np.ndarray, cut: float) -> np.ndarray:
        pred = logits > cut
        share = pred.mean(axis=(1, 2))
        pred[share > hi], pred[share < lo] = True, False
        return pred

    return call


CALLS: dict[str, Call] = {
    "plain": lambda logits, cut: logits > cut,
    **{f"blur sigma {s} px": blurred(s) for s in (2, 4, 8, 16)},
    **{f"sieve {n} px": sieved(n) for n in (16, 64, 256, 1024, 4096)},
    **{f"snap below {lo} / above {hi}": snapped(lo, hi) for lo, hi in ((0.1, 0.9), (0.2, 0.8), (0.3, 0.7))},
}


def fold_scores(logits: np.ndarray, truth: np.ndarray, cut: float) -> dict[str, dict[str, float]]:
    """Each call of CALLS on one fold's (N, t, t) logits against its masks: pooled forest IoU and mIoU."""
    out = {}
    for name, call in CALLS.items():
        pred = call(logits, cut)
        s = scores(np.sum([_counts(p, t) for p, t in zip(pred, truth)], axis=0))
        out[name] = {"iou": s["iou"], "miou": s["miou"]}
    return out


def report(per_fold: dict[int, dict[str, dict[str, float]]]) -> str:
    """Markdown: each call's mean ± std over folds and its paired change against the plain call."""
    lines = [
        "| call | forest IoU | mIoU | Δ forest IoU vs plain | Δ mIoU vs plain | forest IoU per fold |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    folds = sorted(per_fold)
    for name in CALLS:
        cell = {m: [per_fold[f][name][m] for f in folds] for m in ("iou", "miou")}
        delta = {m: [per_fold[f][name][m] - per_fold[f]["plain"][m] for f in folds] for m in ("iou", "miou")}
        lines.append(
            f"| {name} | {q.mean_std(cell['iou'])} | {q.mean_std(cell['miou'])} | "
            f"{np.mean(delta['iou']):+.4f} ± {np.std(delta['iou']):.4f} | "
            f"{np.mean(delta['miou']):+.4f} ± {np.std(delta['miou']):.4f} | "
            + " / ".join(f"{v:.3f}" for v in cell["iou"])
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = q.kept_fold_options(__doc__, "postprocess_cpu")
    sample = q.load_sample()
    truths = np.load(sample.layout.masks, mmap_mode="r")
    folds = q.folds(sample, 5)
    per_fold: dict[int, dict[str, dict[str, float]]] = {}
    t0 = time.perf_counter()
    for f, p in q.kept_fold_predictors(args, sample):
        logits: dict[int, np.ndarray] = {}
        q.score_rows([p], sample, q.rows_of(sample, folds[f]), on_tile=logits.__setitem__)
        rows = sorted(logits)
        per_fold[f] = fold_scores(np.stack([logits[r] for r in rows]), np.stack([truths[r] > 0 for r in rows]), p.cut)
        print(f"fold {f} scored ({time.perf_counter() - t0:.0f} s)", flush=True)
    text = report(per_fold)
    print(text)
    write_text(q.RESULTS / f"{args.name}.md", q.kept_fold_header("postprocess.py", args) + text)
    print(f"wrote {q.RESULTS / args.name}.md")


if __name__ == "__main__":
    main()
