"""Segmentation metrics from confusion counts summed over a whole set, never averaged per batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are scored, not by the stages that only use scores()
    import torch


def confusion(
    output: torch.Tensor, target: torch.Tensor, threshold: float = 0.0, per_item: bool = False
) -> torch.Tensor:
    """Counts [tp, fp, fn, tn] (int64) of forest predictions (output > threshold) against 0/1 targets;
    with `per_item`, one row of counts per item of the first dimension (B, 4)."""
    import torch

    pred = output.detach() > threshold
    truth = target.detach() > 0.5
    dims = tuple(range(1, pred.dim())) if per_item else tuple(range(pred.dim()))
    tp = (pred & truth).sum(dims)
    fp = (pred & ~truth).sum(dims)
    fn = (~pred & truth).sum(dims)
    tn = (pred[0].numel() if per_item else pred.numel()) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], -1).to(torch.int64)


def _ratio(num: float, den: float) -> float:
    # An empty denominator means there was nothing to get wrong: score it 1 (e.g. no forest, none predicted).
    return float(num / den) if den > 0 else 1.0


@dataclass(frozen=True)
class Metric:
    """A score of the registry: a function of the confusion counts (tp, fp, fn, tn) of a whole set."""

    fn: Callable[[float, float, float, float], float]
    label: str  # as tables and figures name it
    per_epoch: bool = False  # also in every epoch's history row (the study's curves and tables)


# Every score. Adding one: a line here; per-run metrics, tables, summary and REPORT.md's table pick it up.
METRICS: dict[str, Metric] = {
    "iou": Metric(lambda tp, fp, fn, tn: _ratio(tp, tp + fp + fn), "forest IoU", per_epoch=True),
    # mean of forest and background IoU
    "miou": Metric(lambda tp, fp, fn, tn: (_ratio(tp, tp + fp + fn) + _ratio(tn, tn + fn + fp)) / 2, "mIoU"),
    "dice": Metric(lambda tp, fp, fn, tn: _ratio(2 * tp, 2 * tp + fp + fn), "Dice", per_epoch=True),
    "accuracy": Metric(lambda tp, fp, fn, tn: _ratio(tp + tn, tp + fp + fn + tn), "accuracy"),
    # nothing predicted as forest: perfect only if there was no forest to find
    "precision": Metric(lambda tp, fp, fn, tn: _ratio(tp, tp + fp) if tp + fp > 0 else float(fn == 0), "precision"),
    "recall": Metric(lambda tp, fp, fn, tn: _ratio(tp, tp + fn), "recall"),
}


def scores(counts: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Every metric of METRICS from confusion counts [tp, fp, fn, tn]."""
    tp, fp, fn, tn = (float(c) for c in np.asarray(counts, dtype=np.float64))
    return {name: metric.fn(tp, fp, fn, tn) for name, metric in METRICS.items()}
