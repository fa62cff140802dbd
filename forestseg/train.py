"""The training loop: epochs of seeded batches, evaluation on summed confusion counts, an atomic
checkpoint after every epoch, and resume from it. It knows nothing of params.yaml or DVC."""
from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .config import PIXEL_SIZE_M, ForestsegError, ModelConfig, OptimizerConfig, Run, TrainConfig, asdict
from .device import use_bf16
from .io import write_torch
from .loader import Normalizer, Tiles, batches, to_input
from .losses import LOSSES, threshold
from .metrics import confusion, scores
from .model import build_model


class Diverged(ForestsegError):
    """A non-finite or exploding loss; carries the history of the completed epochs."""

    def __init__(self, message: str, history: list[dict]):
        super().__init__(message)
        self.history = history


@dataclass
class Result:
    history: list[dict]
    metrics: dict
    state: dict = field(repr=False)  # the last checkpoint


def make_optimizer(name: str, params, lr: float, cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    # fused kernels on CUDA, foreach (multi-tensor) on CPU: fewer launches per step
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fast)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, **fast)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, **fast)
    raise ValueError(f"unknown optimizer {name!r}")


def _rng_state(gens: dict[str, torch.Generator]) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            **{name: g.get_state() for name, g in gens.items()}}


def _set_rng_state(state: dict, gens: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for name, g in gens.items():
        g.set_state(state[name])


@torch.no_grad()
def evaluate(model: torch.nn.Module, tiles: Tiles, loss: str, batch_size: int, norm: Normalizer,
             channels_last: bool, bf16: bool) -> dict:
    """Mean loss per tile and scores from confusion counts summed over all of `tiles`."""
    model.eval()
    loss_fn, cut = LOSSES[loss], threshold(loss)
    device = tiles.images.device
    total, counts = torch.zeros((), dtype=torch.float64, device=device), torch.zeros(4, dtype=torch.int64, device=device)
    for images, masks in batches(tiles, batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(to_input(images, norm, channels_last))
        out = out.float()
        total += loss_fn(out, masks) * len(images)
        counts += confusion(out, masks, cut)
    return {"loss": float(total) / len(tiles), **scores(counts.cpu().numpy())}


def read_checkpoint(path: Path, log: Callable[[str], None] = print) -> dict | None:
    """The checkpoint at `path` on the CPU (RNG states must stay there), or None if absent or unreadable."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated by a full disk, or not ours: start afresh rather than fail forever
        log(f"{path} cannot be read ({type(e).__name__}: {e}); starting afresh")
        return None
    return state if isinstance(state, dict) else None


def lr_factor(epoch: int, cfg: OptimizerConfig, epochs: int) -> float:
    """Multiplier of the base lr in 0-based `epoch`: optional linear warmup, then step or cosine."""
    if epoch < cfg.warmup_epochs:
        return 0.1 + 0.9 * epoch / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(1, epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return cfg.gamma ** ((epoch - cfg.warmup_epochs) // cfg.step_epochs)


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable, tiles: Tiles,
                cfg: TrainConfig, norm: Normalizer, bf16: bool, gens: dict[str, torch.Generator],
                where: str, first_loss: float | None) -> tuple[float, float]:
    """One pass over `tiles`; returns (mean loss per tile, first loss of the run). Raises Diverged."""
    model.train()
    total, seen = 0.0, 0
    lr = opt.param_groups[0]["lr"]
    bar = tqdm(batches(tiles, cfg.batch_size, gens["shuffle"], gens.get("augment")),
               total=math.ceil(len(tiles) / cfg.batch_size), desc=where, leave=False, mininterval=1.0,
               disable=None)  # a bar on a terminal, no log noise elsewhere
    for step, (images, masks) in enumerate(bar, 1):
        x = to_input(images, norm, cfg.channels_last, cfg.color_jitter, gens.get("jitter"))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = loss_fn(out.float(), masks)  # the loss itself always in fp32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        first_loss = value if first_loss is None else first_loss
        if not math.isfinite(value) or value > cfg.diverge_factor * max(first_loss, 1e-8):
            raise Diverged(f"{where} diverged at step {step}: loss {value:.4g} (first loss {first_loss:.4g}, "
                           f"lr {lr:g}); lower optimizer.lr", [])
        total += value * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
    return total / seen, first_loss


def train_run(run: Run, model_cfg: ModelConfig, opt_cfg: OptimizerConfig, train_cfg: TrainConfig,
              train: Tiles, test: Tiles, checkpoint: Path, fingerprint: str,
              log: Callable[[str], None] = print, val: Tiles | None = None,
              pixel_size_m: float = PIXEL_SIZE_M) -> Result:
    """Train one run to train_cfg.epochs, resuming from `checkpoint` when its fingerprint matches.

    With `val`, the model of the epoch with the best validation mIoU is also kept, as best.pt
    beside `checkpoint`; the model is never chosen on test. Raises Diverged (carrying the history
    so far) on a non-finite or exploding loss. `pixel_size_m`, the ground size of a tile's pixel,
    is stored for predict, which resamples other imagery to it.
    """
    device = train.images.device
    tile = min(train.images.shape[1:3])
    smallest = 48 if model_cfg.arch == "study_unet" else 2**model_cfg.depth
    if tile < smallest:
        raise ForestsegError(f"params.yaml: model: {model_cfg.arch} with depth {model_cfg.depth} needs tiles of at least "
                             f"{smallest} px, the data's are {tile} px; lower model.depth")
    bf16 = use_bf16(train_cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed tile size: pick the fastest conv kernels once
    torch.manual_seed(run.seed)
    random.seed(run.seed)
    np.random.seed(run.seed)
    gens = {"shuffle": torch.Generator().manual_seed(run.seed)}
    if train_cfg.augment:
        gens["augment"] = torch.Generator().manual_seed(run.seed + 1_000_003)
    if train_cfg.color_jitter > 0:
        gens["jitter"] = torch.Generator().manual_seed(run.seed + 2_000_003)
    norm = Normalizer.fit(train.images) if model_cfg.input == "normalized" else Normalizer()
    # what predict needs beside the weights; the same in last.pt and best.pt
    portable = {"run": run.name, "normalizer": asdict(norm), "tile_size": int(train.images.shape[1]),
                "pixel_size_m": float(pixel_size_m)}

    model = build_model(model_cfg).to(device)
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = opt_cfg.lr_for(run.loss, run.optimizer)
    opt = make_optimizer(run.optimizer, model.parameters(), lr, opt_cfg, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, cfg=opt_cfg, epochs=train_cfg.epochs))
    step_model = torch.compile(model) if train_cfg.compile else model
    loss_fn = LOSSES[run.loss]
    eval_args = (run.loss, train_cfg.test_batch_size, norm, train_cfg.channels_last, bf16)

    history: list[dict] = []
    first_loss: float | None = None
    best: dict = {}
    start, state = 1, {}
    saved = read_checkpoint(checkpoint, log)
    if saved is not None:
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            _set_rng_state(saved["rng"], gens)
            history, first_loss, best, start = saved["history"], saved["first_loss"], saved["best"], saved["epoch"] + 1
            state = saved
            log(f"{run.name}: resuming after epoch {saved['epoch']} from {checkpoint}")
        else:
            log(f"{run.name}: {checkpoint} was made with other params or data; starting afresh")

    for epoch in range(start, train_cfg.epochs + 1):
        t0 = time.perf_counter()
        epoch_lr = opt.param_groups[0]["lr"]
        where = f"run {run.name} epoch {epoch}/{train_cfg.epochs}"
        try:
            train_loss, first_loss = train_epoch(step_model, opt, loss_fn, train, train_cfg, norm, bf16, gens, where, first_loss)
        except Diverged as e:
            raise Diverged(str(e), history) from None
        train_seconds = time.perf_counter() - t0
        sched.step()
        test_scores = evaluate(model, test, *eval_args)
        row = {"epoch": epoch, "train_loss": train_loss, "test_loss": test_scores["loss"],
               "test_iou": test_scores["iou"], "test_dice": test_scores["dice"], "lr": epoch_lr}
        if val is not None:
            val_scores = evaluate(model, val, *eval_args)
            row["val_miou"] = val_scores["miou"]
            if val_scores["miou"] > best.get("val_miou", -1.0):
                best = {"epoch": epoch, "val_miou": val_scores["miou"], "test_scores": test_scores}
                write_torch(checkpoint.with_name("best.pt"), {
                    "model": model.state_dict(), "epoch": epoch, "val_miou": val_scores["miou"], **portable,
                    "params": {"model": asdict(model_cfg)}})
        row.update(seconds=round(time.perf_counter() - t0, 3), train_seconds=round(train_seconds, 3))
        history.append(row)
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "rng": _rng_state(gens), "epoch": epoch, "history": history, "first_loss": first_loss,
                 "best": best, "fingerprint": fingerprint, "test_scores": test_scores, **portable,
                 "params": {"model": asdict(model_cfg), "optimizer": asdict(opt_cfg), "train": asdict(train_cfg)}}
        write_torch(checkpoint, state)  # before the log line: a logged epoch is always resumable
        log(f"{run.name} epoch {epoch}/{train_cfg.epochs}: train_loss {train_loss:.4f} "
            f"test_loss {test_scores['loss']:.4f} test_iou {test_scores['iou']:.4f}"
            + (f" val_miou {row['val_miou']:.4f}" if val is not None else "") + f" ({row['seconds']:.1f} s)")

    train_seconds = sum(h["train_seconds"] for h in history)
    metrics = {
        "status": "ok",
        "train_loss": history[-1]["train_loss"],
        **{f"test_{k}": v for k, v in state["test_scores"].items()},  # the last epoch's evaluation
        "epochs": len(history),
        "lr": lr,
        "seconds": round(sum(h["seconds"] for h in history), 2),
        "train_images_per_second": round(len(train) * len(history) / max(train_seconds, 1e-9), 1),
        "device": device.type,
        "precision": "bf16" if bf16 else "fp32",
    }
    if best:
        metrics.update({"best_epoch": best["epoch"], "best_val_miou": best["val_miou"],
                        **{f"best_test_{k}": v for k, v in best["test_scores"].items()}})
    return Result(history, metrics, state)
