"""Optimizers and learning-rate schedules users name in params, each one line of a registry."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable

import torch

if TYPE_CHECKING:
    from .config import OptimizerConfig


def _fast(device: torch.device) -> dict:
    # fused kernels on CUDA, foreach (multi-tensor) on CPU: fewer launches per step
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


Factory = Callable[[Iterable, float, "OptimizerConfig", torch.device], torch.optim.Optimizer]

# Every optimizer a user can name in grid.optimizer: (params, lr, optimizer section, device) -> optimizer.
OPTIMIZERS: dict[str, Factory] = {
    "sgd": lambda p, lr, cfg, dev: torch.optim.SGD(
        p, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **_fast(dev)
    ),
    "adam": lambda p, lr, cfg, dev: torch.optim.Adam(p, lr=lr, weight_decay=cfg.weight_decay, **_fast(dev)),
    "adamw": lambda p, lr, cfg, dev: torch.optim.AdamW(p, lr=lr, weight_decay=cfg.weight_decay, **_fast(dev)),
}

# Every schedule of optimizer.schedule: (0-based epoch after warmup, optimizer section, epochs after
# warmup) -> multiplier of the base lr.
SCHEDULES: dict[str, Callable[[int, "OptimizerConfig", int], float]] = {
    "step": lambda e, cfg, span: cfg.gamma ** (e // cfg.step_epochs),
    "cosine": lambda e, cfg, span: 0.5 * (1 + math.cos(math.pi * e / max(1, span))),
}


def make_optimizer(
    name: str, params: Iterable, lr: float, cfg: "OptimizerConfig", device: torch.device
) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](params, lr, cfg, device)


def lr_factor(epoch: int, cfg: "OptimizerConfig", epochs: int) -> float:
    """Multiplier of the base lr in 0-based `epoch`: optional linear warmup from lr/10, then the schedule."""
    if epoch < cfg.warmup_epochs:
        return 0.1 + 0.9 * epoch / cfg.warmup_epochs
    return SCHEDULES[cfg.schedule](epoch - cfg.warmup_epochs, cfg, epochs - cfg.warmup_epochs)
