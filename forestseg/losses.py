"""Losses: plain functions of (logits, 0/1 target), computed in fp32 whatever the autocast."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error on sigmoid probabilities."""
    return F.mse_loss(torch.sigmoid(logits.float()), target.float())


def mse_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The 2022 study's MSE: raw network outputs against 0/1 targets, no sigmoid."""
    return F.mse_loss(logits.float(), target.float())


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def bce_bootstrap(logits: torch.Tensor, target: torch.Tensor, beta: float = 0.8) -> torch.Tensor:
    """Hard bootstrapping (Reed et al. 2015): BCE against beta x the mask + (1 - beta) x the model's own
    0/1 call, so a region the mask labels against what the model confidently sees (the masks' drawn
    outlines, a scene labelled by another convention) pulls on it with beta of bce's force."""
    own = (logits.detach() > 0).float()
    return F.binary_cross_entropy_with_logits(logits.float(), beta * target.float() + (1 - beta) * own)


def bce_trimmed(logits: torch.Tensor, target: torch.Tensor, keep: float = 0.8) -> torch.Tensor:
    """BCE over the batch's easiest `keep` of tiles (loss truncation, the small-loss trick of
    co-teaching): a tile whose mask is drawn by another convention than its scene's neighbours is
    among the hardest, so it stops pulling on the model; a batch of one tile is plain bce."""
    per_tile = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1).mean(1)
    kept = per_tile.topk(math.ceil(keep * len(per_tile)), largest=False).values.mean()
    # topk ranks NaN largest, so it would drop a diverged tile: 0 x the sum passes a NaN or inf on, adding no gradient
    return kept + 0 * per_tile.sum()


def dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over the whole batch (1 - soft Dice of forest)."""
    p, t = torch.sigmoid(logits.float()), target.float()
    return 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


def bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice: per-pixel calibration and overlap at once."""
    return bce(logits, target) + dice(logits, target)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): BCE weighted by (1 - p_t)^gamma, so easy pixels count less."""
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return ((1 - torch.exp(-per_pixel)) ** gamma * per_pixel).mean()  # exp(-bce) is p_t


def lovasz(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge (Berman et al. 2018): a convex surrogate of 1 - forest IoU, per image, averaged.

    Hinge errors 1 - logit * sign, sorted from worst; each weighs by how much it changes the Jaccard
    loss of the pixels up to it, so the loss targets IoU itself rather than per-pixel accuracy.
    """
    x, t = logits.float().flatten(1), target.float().flatten(1)  # (B, H*W)
    errors, order = (1 - x * (2 * t - 1)).sort(dim=1, descending=True)
    t = t.gather(1, order)
    forest = t.sum(1, keepdim=True)
    jaccard = 1 - (forest - t.cumsum(1)) / (forest + (1 - t).cumsum(1))  # Jaccard loss of the first k errors
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors) * grad).sum(1).mean()


def bce_lovasz(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus the Lovasz hinge: calibrated probabilities and an IoU-shaped objective."""
    return bce(logits, target) + lovasz(logits, target)


@dataclass(frozen=True)
class Loss:
    """A loss of the registry with its per-name facts."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # The raw output above which a pixel is forest: logit 0 (p = 0.5) for losses on logits; 0.5 for
    # the study's MSE on raw outputs, which approximate the 0/1 target directly.
    threshold: float = 0.0
    # One value over the whole batch (soft Dice), not a mean over its pixels or tiles: the test loss
    # takes it tile by tile, so it does not depend on train.test_batch_size.
    per_batch: bool = False
    # Raw outputs that approximate the 0/1 target themselves (the study's MSE on raw outputs): a
    # forest probability is them clipped to [0, 1], not their sigmoid.
    raw_is_probability: bool = False

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, target)


# Every loss a user can name in grid.loss. Adding one: a function above and a line here.
LOSSES: dict[str, Loss] = {
    "mse": Loss(mse),
    "bce": Loss(bce),
    "bce_bootstrap": Loss(bce_bootstrap),
    # Its value depends on the batch's other tiles, so the test loss takes it tile by tile.
    "bce_trimmed": Loss(bce_trimmed, per_batch=True),
    "mse_logits": Loss(mse_logits, threshold=0.5, raw_is_probability=True),
    "dice": Loss(dice, per_batch=True),
    "bce_dice": Loss(bce_dice, per_batch=True),
    "focal": Loss(focal),
    "lovasz": Loss(lovasz),
    "bce_lovasz": Loss(bce_lovasz),
}
