"""Where a recipe is wrong on unseen scenes (a script, not a test; bench/QUALITY.md, "Where the errors are").

Each CV fold's model of the `cpu` recipe (or `--recipe`, `-S`) scores its test scenes as the recipe
scores them (the model file's threshold and batch-norm adaptation), and its wrong pixels are split
two ways:
  - by distance to the nearest edge of the ground-truth mask (within 4, 8, 16, 32 px): what a
    coarser or shifted outline explains, with the forest IoU if those pixels were forgiven (left out
    of the union, a missed one not counted as a hit: the lower reading of forgiving them);
  - by tile: tiles more than 30 % wrong (a whole region called the other class) and their share of
    all wrong pixels.
Per scene: forest IoU, false-forest and missed-forest pixels, worst scene first. The tables go to
bench/results/<name>.md; the worst tiles (image | mask | prediction | errors) are drawn into
<name>.png beside the decoded sample (bench/quality.py's CACHE, outside the repository: the
figure shows the sample's photos, which are never committed).

    python bench/errors.py [--only 0,1,2,3,4] [--keep DIR] [-S section.key=value] [--name errors_cpu]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality as q  # noqa: E402
from forestseg.evaluate import _counts  # noqa: E402
from forestseg.io import write_text  # noqa: E402
from forestseg.metrics import scores  # noqa: E402
from forestseg.predict import example_panel  # noqa: E402

BANDS = (4, 8, 16, 32)  # px from the mask's nearest edge
WHOLE = 0.3  # a tile with more than this share of its pixels wrong: a region called the other class
WORST = 8  # tiles drawn


def near_edge(truth: np.ndarray, bands: tuple[int, ...] = BANDS) -> list[np.ndarray]:
    """(H, W) bool mask -> for each band d, the pixels within d px (Chebyshev) of a pixel on the
    mask's edge, where forest meets non-forest; all False where the mask is one class."""
    t = torch.from_numpy(truth.astype(np.float32))[None, None]
    edge = F.max_pool2d(t, 3, 1, 1) + F.max_pool2d(-t, 3, 1, 1) > 0  # dilation minus erosion
    edge = edge.float()
    # a square's max is a row's max of column maxes: two 1-D passes instead of one (2d+1)^2 window
    return [
        F.max_pool2d(F.max_pool2d(edge, (2 * d + 1, 1), 1, (d, 0)), (1, 2 * d + 1), 1, (0, d))[0, 0].numpy() > 0
        for d in bands
    ]


def anatomy(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One tile's counts: [tp, fp, fn, tn, then fp and fn within each band of BANDS]."""
    fp, fn = pred & ~truth, truth & ~pred
    bands = [n for m in near_edge(truth) for n in (int((fp & m).sum()), int((fn & m).sum()))]
    return np.array([*_counts(pred, truth), *bands], np.int64)


def report(per_tile: dict[int, np.ndarray], sample: q.Sample, folds_of: dict[int, int]) -> str:
    """Markdown: the error split by edge distance and by tile, per fold and over all; scenes worst first."""
    lines = [
        "| folds | forest IoU | false forest / missed forest (pixels) | "
        + " | ".join(f"wrong within {d} px of a mask edge (IoU if forgiven)" for d in BANDS)
        + f" | tiles > {WHOLE:.0%} wrong (their share of wrong pixels) |",
        "| --- " * (4 + len(BANDS)) + "|",
    ]
    groups = {f"fold {f}": [r for r, g in folds_of.items() if g == f] for f in sorted(set(folds_of.values()))}
    groups["all (pooled)"] = list(per_tile)
    for name, rows in groups.items():
        c = np.sum([per_tile[r] for r in rows], axis=0)
        tp, fp, fn = c[0], c[1], c[2]
        cells = []
        for i in range(len(BANDS)):
            near = c[4 + 2 * i] + c[5 + 2 * i]
            cells.append(f"{near / (fp + fn):.1%} ({tp / (tp + fp + fn - near):.3f})")
        wrong = np.array([per_tile[r][1] + per_tile[r][2] for r in rows], np.float64)
        size = np.array([per_tile[r][:4].sum() for r in rows], np.float64)
        whole = wrong / size > WHOLE
        lines.append(
            f"| {name} | {tp / (tp + fp + fn):.3f} | {fp} / {fn} | "
            + " | ".join(cells)
            + f" | {whole.mean():.1%} ({wrong[whole].sum() / wrong.sum():.1%}) |"
        )
    scenes: dict[str, np.ndarray] = {}
    for r, c in per_tile.items():
        scenes[sample.scene[r]] = scenes.get(sample.scene[r], 0) + c[:4]
    lines += [
        "",
        "| scene | fold | tiles | forest IoU | all-forest IoU | false forest | missed forest |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scene, c in sorted(scenes.items(), key=lambda kv: scores(kv[1])["iou"]):
        rows = [r for r in per_tile if sample.scene[r] == scene]
        forest, total = c[0] + c[2], c.sum()
        lines.append(
            f"| {scene} | {folds_of[rows[0]]} | {len(rows)} | {scores(c)['iou']:.3f} | {forest / total:.3f} | "
            f"{c[1] / total:.1%} | {c[2] / total:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = q.kept_fold_options(
        __doc__, "errors_cpu", "bench/results/<name>.md, and <name>.png beside the decoded sample"
    )
    sample = q.load_sample()
    images = np.load(sample.layout.images, mmap_mode="r")
    truths = np.load(sample.layout.masks, mmap_mode="r")
    folds = q.folds(sample, 5)
    per_tile: dict[int, np.ndarray] = {}
    folds_of: dict[int, int] = {}
    preds: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    for f, p in q.kept_fold_predictors(args, sample):

        def keep(r: int, logits: np.ndarray, f: int = f, cut: float = p.cut) -> None:
            pred = logits > cut
            preds[r], per_tile[r], folds_of[r] = pred, anatomy(truths[r] > 0, pred), f

        # as `forestseg evaluate` scores each scene: the model adapted to it, whole tiles
        q.score_rows([p], sample, q.rows_of(sample, folds[f]), on_tile=keep)
        print(f"fold {f} scored ({time.perf_counter() - t0:.0f} s)", flush=True)
    text = report(per_tile, sample, folds_of)
    print(text)
    write_text(q.RESULTS / f"{args.name}.md", q.kept_fold_header("errors.py", args) + text)
    worst = sorted(per_tile, key=lambda r: -(per_tile[r][1] + per_tile[r][2]))[:WORST]
    labels = [f"fold {folds_of[r]}, scene {sample.scene[r]}" for r in worst]
    example_panel(
        np.stack([images[r] for r in worst]),
        np.stack([truths[r] > 0 for r in worst]),
        [preds[r] for r in worst],
        f"{args.recipe} recipe, seed {q.kept_fold_seed(args)}: the {WORST} most wrong test tiles of the CV folds",
        q.CACHE / f"{args.name}.png",
        labels,
    )
    print(f"wrote {q.RESULTS / args.name}.md and {q.CACHE / args.name}.png")


if __name__ == "__main__":
    main()
