"""Optimizers and learning-rate schedules users name in params, each one line of a registry.

The optimizers are this module's own, not torch.optim's: in torch 2.13 every torch.optim optimizer
imports torch._dynamo when it is built (~1 s per process), which a grid of short train stages pays
once per member. The updates are torch's multi-tensor (foreach) ones, op for op, so a run's numbers
equal torch.optim's (tests/test_optim.py checks it bit for bit); foreach ops run on CPU and CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import torch

if TYPE_CHECKING:
    from .config import OptimizerConfig


class Optimizer:
    """Updates `params` from their gradients at `self.lr` (the train loop sets it every epoch)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay = lr, weight_decay
        self.steps = 0
        self.buffers: dict[str, list[torch.Tensor]] = {}  # per-parameter state, made on the first step

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if any(p.grad is None for p in self.params):  # every parameter of these models gets one
            raise RuntimeError("a parameter has no gradient: call backward() before step()")
        self.steps += 1
        self._update(self.params, [p.grad for p in self.params])

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def _buffer(self, name: str, like: list[torch.Tensor]) -> list[torch.Tensor]:
        if name not in self.buffers:
            self.buffers[name] = [torch.zeros_like(t, memory_format=torch.preserve_format) for t in like]
        return self.buffers[name]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "buffers": self.buffers}  # no lr: the train loop derives it from the epoch

    def load_state_dict(self, saved: dict) -> None:
        self.steps = saved["steps"]
        self.buffers = {
            name: [b.to(p.device) for b, p in zip(bufs, self.params, strict=True)]
            for name, bufs in saved["buffers"].items()
        }


class SGD(Optimizer):
    """torch.optim.SGD with momentum (no dampening, not Nesterov) and L2 weight decay."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self.momentum:
            if "momentum" in self.buffers:
                torch._foreach_mul_(self.buffers["momentum"], self.momentum)
                torch._foreach_add_(self.buffers["momentum"], grads, alpha=1.0)
            else:  # the first step's buffer is the gradient itself, as torch's
                self.buffers["momentum"] = [g.detach().clone() for g in grads]
            grads = self.buffers["momentum"]
        torch._foreach_add_(params, grads, alpha=-self.lr)


class Adam(Optimizer):
    """torch.optim.Adam (betas 0.9/0.999, eps 1e-8); `decoupled` makes it AdamW (weight decay applied
    to the weights, not added to the gradient)."""

    betas, eps = (0.9, 0.999), 1e-8

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0, decoupled: bool = False) -> None:
        super().__init__(params, lr, weight_decay)
        self.decoupled = decoupled

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        (beta1, beta2), lr = self.betas, self.lr
        if self.weight_decay and self.decoupled:
            torch._foreach_mul_(params, 1 - lr * self.weight_decay)
        elif self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        avg, avg_sq = self._buffer("exp_avg", params), self._buffer("exp_avg_sq", params)
        torch._foreach_lerp_(avg, grads, 1 - beta1)
        torch._foreach_mul_(avg_sq, beta2)
        torch._foreach_addcmul_(avg_sq, grads, grads, 1 - beta2)
        step = float(self.steps)  # torch keeps it as a float tensor
        denom = torch._foreach_sqrt(avg_sq)
        torch._foreach_div_(denom, (1 - beta2**step) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, avg, denom, (lr / (1 - beta1**step)) * -1)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer of the registry: how to build it, and the optimizer-section keys it reads besides
    lr and the schedule (a setting no optimizer of the grid reads is reported, not silently dropped)."""

    build: Callable[[Iterable, float, "OptimizerConfig"], Optimizer]  # (params, lr, optimizer section)
    uses: frozenset[str] = frozenset({"weight_decay"})


# Every optimizer a user can name in grid.optimizer.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(
        lambda p, lr, cfg: SGD(p, lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
        uses=frozenset({"momentum", "weight_decay"}),
    ),
    "adam": OptimizerSpec(lambda p, lr, cfg: Adam(p, lr, weight_decay=cfg.weight_decay)),
    "adamw": OptimizerSpec(lambda p, lr, cfg: Adam(p, lr, weight_decay=cfg.weight_decay, decoupled=True)),
}


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule of the registry: (0-based epoch after warmup, optimizer section, epochs after warmup)
    -> multiplier of the base lr, and the optimizer-section keys it reads (others are said unused)."""

    factor: Callable[[int, "OptimizerConfig", int], float]
    uses: frozenset[str] = frozenset()


# Every schedule of optimizer.schedule.
SCHEDULES: dict[str, ScheduleSpec] = {
    "step": ScheduleSpec(lambda e, cfg, span: cfg.gamma ** (e // cfg.step_epochs), frozenset({"gamma", "step_epochs"})),
    "cosine": ScheduleSpec(lambda e, cfg, span: 0.5 * (1 + math.cos(math.pi * e / max(1, span)))),
}


def make_optimizer(name: str, params: Iterable, lr: float, cfg: "OptimizerConfig") -> Optimizer:
    """The optimizer `name` of the registry over `params`, at `lr`, with the section's settings."""
    return OPTIMIZERS[name].build(params, lr, cfg)


def lr_factor(epoch: int, cfg: "OptimizerConfig", epochs: int) -> float:
    """Multiplier of the base lr in 0-based `epoch`: optional linear warmup from lr/10, then the schedule."""
    if epoch < cfg.warmup_epochs:
        return 0.1 + 0.9 * epoch / cfg.warmup_epochs
    return SCHEDULES[cfg.schedule].factor(epoch - cfg.warmup_epochs, cfg, epochs - cfg.warmup_epochs)
