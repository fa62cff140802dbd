"""The training loop: epochs of seeded batches, evaluation on summed confusion counts, an atomic
checkpoint after every epoch, and resume from it. It takes params as dataclasses and never reads
params.yaml or runs DVC (its messages name the params and commands a user would change or run)."""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import (
    FILE_SHA256,
    INIT_FIX,
    fingerprint,
    load_weights,
    model_meta,
    read_init,
    read_resume,
    write_model,
    write_resume,
)
from .config import (
    PIXEL_SIZE_M,
    ForestsegError,
    ModelConfig,
    OptimizerConfig,
    Run,
    TrainConfig,
    asdict,
    check_model_train,
    check_threshold,
    check_warmup,
)
from .device import (
    apply_precision,
    cpu_kernels,
    cpu_threads,
    emulated_bf16_note,
    keep_freed_memory,
    pick_device,
    use_bf16,
)
from .errors import out_of_memory
from .layout import DataLayout
from .loader import INPUTS, Normalizer, Tiles, batches, cutmix, load_split, to_input, zoom
from .losses import LOSSES
from .metrics import METRICS, confusion, scores
from .model import ARCHS, adapt_batchnorm, build_model
from .optim import Optimizer, lr_factor, make_optimizer
from .windows import scene_windows

# scenes.csv of a run: the written model's confusion counts on each test scene (forest positive)
SCENE_COLUMNS = ["scene", "tiles", "tp", "fp", "fn", "tn"]
EPOCH_METRICS = [name for name, m in METRICS.items() if m.per_epoch]
# One row per epoch of history.csv (with a val split, val_miou comes after lr).
HISTORY_COLUMNS = ["epoch", "train_loss", "test_loss", *(f"test_{m}" for m in EPOCH_METRICS), "lr"]
# Each history row also holds its wall-clock seconds (the benches read them, metrics.json totals them),
# left out of history.csv: DVC's per-run plot then has the same bytes wherever the run's numbers are
# the same (same params and seed, on CPUs of one precision), so `dvc plots diff` finds a revision's
# curves after a `dvc repro` of it.
TIMING_COLUMNS = ("seconds", "train_seconds")


class Diverged(ForestsegError):
    """A non-finite or exploding loss; carries the history of the completed epochs."""

    def __init__(self, message: str, history: list[dict]):
        super().__init__(message)
        self.history = history


@dataclass
class Result:
    """What a finished run hands its stage: per-epoch history, metrics.json and per-scene counts."""

    history: list[dict]
    metrics: dict
    scenes: dict = field(default_factory=dict)  # {test scene: [tp, fp, fn, tn]} of the written model


def _rng_state(gens: dict[str, torch.Generator]) -> dict:
    return {
        "python": random.getstate(),
        # as plain numbers: resume files load with weights_only, which refuses numpy arrays
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "torch": torch.get_rng_state(),
        **{name: g.get_state() for name, g in gens.items()},
    }


def _set_rng_state(state: dict, gens: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    for name, g in gens.items():
        g.set_state(state[name])


@torch.no_grad()
def outputs(
    model: torch.nn.Module, tiles: Tiles, batch_size: int, norm: Normalizer, channels_last: bool, bf16: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(fp32 raw outputs (B, H, W), masks (B, H, W)) of `tiles` in stored order, in eval mode."""
    model.eval()
    for images, masks in batches(tiles, batch_size):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(to_input(images, norm, channels_last))
        yield out.float(), masks


def scored_parts(
    model: torch.nn.Module, tiles: Tiles, norm: Normalizer, adapt_bn: float
) -> Iterator[tuple[torch.nn.Module, Tiles]]:
    """(model, tiles) pairs that score `tiles`: all of them by `model`, or with `adapt_bn` (tiles with
    scenes) each scene's tiles, in stored order, by the model adapted to windows of them, as
    `forestseg evaluate --adapt-bn` takes them (`model.adapt_batchnorm`, `windows.scene_windows`)."""
    if not (adapt_bn and tiles.scenes is not None):
        yield model, tiles
        return
    for k in range(len(tiles.scene_names)):
        idx = torch.nonzero(tiles.scenes == k).flatten()
        if len(idx):
            i = idx.to(tiles.images.device)
            part = Tiles(tiles.images[i], tiles.masks[i], tiles.scenes[idx], tiles.scene_names)
            windows = scene_windows(list(part.images.cpu().numpy()), min(part.images.shape[1:3]))
            x = to_input(torch.from_numpy(windows).to(tiles.images.device), norm)
            yield adapt_batchnorm(model, x, adapt_bn), part


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tiles: Tiles,
    loss: str,
    batch_size: int,
    norm: Normalizer,
    channels_last: bool,
    bf16: bool,
    cut: float | None = None,
    per_scene: bool = False,
    adapt_bn: float = 0.0,
) -> dict:
    """Mean loss per tile and scores from confusion counts summed over all of `tiles`, forest
    where the output exceeds `cut` (default: the loss's threshold). With `per_scene` (tiles with
    scenes), also "scenes": {scene: [tp, fp, fn, tn]}. With `adapt_bn` (tiles with scenes), each
    scene is scored by the model adapted to it (`scored_parts`)."""
    loss_fn, cut = LOSSES[loss], LOSSES[loss].threshold if cut is None else cut
    counts_by_scene = torch.zeros(len(tiles.scene_names), 4, dtype=torch.int64) if per_scene else None
    device = tiles.images.device
    total, counts = (
        torch.zeros((), dtype=torch.float64, device=device),
        torch.zeros(4, dtype=torch.int64, device=device),
    )
    for part_model, part in scored_parts(model, tiles, norm, adapt_bn):
        start = 0
        for out, masks in outputs(part_model, part, batch_size, norm, channels_last, bf16):
            if loss_fn.per_batch:  # the mean over tiles of each tile's own loss
                total += sum(loss_fn(out[i : i + 1], masks[i : i + 1]) for i in range(len(out)))
            else:
                total += loss_fn(out, masks) * len(out)
            if counts_by_scene is None:
                counts += confusion(out, masks, cut)
            else:
                tile_counts = confusion(out, masks, cut, per_item=True)
                counts += tile_counts.sum(0)
                counts_by_scene.index_add_(0, part.scenes[start : start + len(out)], tile_counts.cpu())
                start += len(out)
    result = {"loss": float(total) / len(tiles), **scores(counts.cpu().numpy())}
    if counts_by_scene is not None:
        result["scenes"] = {name: c.tolist() for name, c in zip(tiles.scene_names, counts_by_scene)}
    return result


def choose_threshold(
    model: torch.nn.Module,
    val: Tiles,
    batch_size: int,
    norm: Normalizer,
    channels_last: bool,
    bf16: bool,
    default: float,
    adapt_bn: float = 0.0,
) -> float:
    """The output cut of highest mIoU on the validation tiles, among the loss's own cut and the
    1st..99th percentiles of the outputs (never chosen on test); with `adapt_bn`, of the outputs
    of each val scene by the model adapted to it, as test is scored. Counts for every candidate
    come from one sort of the outputs of each class."""
    out, truth = zip(
        *(
            (o.flatten().cpu(), (m > 0).flatten().cpu())
            for part_model, part in scored_parts(model, val, norm, adapt_bn)
            for o, m in outputs(part_model, part, batch_size, norm, channels_last, bf16)
        )
    )
    out, truth = torch.cat(out), torch.cat(truth)
    probe = out[:: max(1, len(out) // 1_000_000)]  # quantile() has an input size limit
    cands = torch.cat([torch.tensor([default]), torch.quantile(probe, torch.linspace(0.01, 0.99, 99))])
    pos, neg = out[truth].sort().values, out[~truth].sort().values
    tp = len(pos) - torch.searchsorted(pos, cands, right=True)  # forest above the cut
    fp = len(neg) - torch.searchsorted(neg, cands, right=True)
    fn, tn = len(pos) - tp, len(neg) - fp
    miou = [METRICS["miou"].fn(*map(float, c)) for c in zip(tp, fp, fn, tn)]
    return float(cands[int(np.argmax(miou))])  # ties: the first, the loss's own cut


@dataclass
class RunState:
    """What changes while a run trains; saved whole in the resume file after every epoch."""

    model: torch.nn.Module
    opt: Optimizer  # its lr is set at the start of every epoch, from the epoch alone
    gens: dict[str, torch.Generator]  # seeded streams: shuffle, augment, jitter
    epoch: int = 0  # epochs done
    history: list[dict] = field(default_factory=list)
    first_loss: float | None = None  # the divergence yardstick (divergence_reference of the first batch)
    best: dict = field(default_factory=dict)  # epoch, val_miou, test_scores and weights of the best val epoch
    test_scores: dict = field(default_factory=dict)  # of the last epoch
    ema: torch.nn.Module | None = None  # the weights' moving average: what is evaluated and saved
    ema_steps: int = 0

    @property
    def evaluated(self) -> torch.nn.Module:
        """The model that is scored and written: the moving average where there is one."""
        return self.model if self.ema is None else self.ema

    def update_ema(self, decay: float) -> None:
        """ema <- d ema + (1 - d) model over every float tensor (weights and batch-norm statistics);
        d ramps up from 0.1 so the average does not remember the random init."""
        d = min(decay, (1 + self.ema_steps) / (10 + self.ema_steps))
        pairs = [(e, m) for e, m in zip(self.ema.state_dict().values(), self.model.state_dict().values())]
        with torch.no_grad():
            floats = [(e, m) for e, m in pairs if e.is_floating_point()]
            torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], 1 - d)
            for e, m in pairs:
                if not e.is_floating_point():
                    e.copy_(m)
        self.ema_steps += 1

    def to_resume(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": _rng_state(self.gens),
            "epoch": self.epoch,
            "history": self.history,
            "first_loss": self.first_loss,
            "best": self.best,
            "test_scores": self.test_scores,
            "ema": None if self.ema is None else self.ema.state_dict(),
            "ema_steps": self.ema_steps,
        }

    def load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        _set_rng_state(saved["rng"], self.gens)
        self.epoch, self.history, self.first_loss = saved["epoch"], saved["history"], saved["first_loss"]
        self.best, self.test_scores = saved["best"], saved["test_scores"]
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
            self.ema_steps = saved["ema_steps"]


def divergence_reference(loss_fn: Callable, out: torch.Tensor, masks: torch.Tensor, first: float) -> float:
    """The loss later batches are held against (train.diverge_factor x it): the first batch's loss
    `first`, or that of an output at the loss's cut everywhere (no answer either way) where higher.
    A model fine-tuned from init_from can score near 0 on its first batch, and a harder batch after
    it would read as a blow-up. (An all-zero output is no yardstick for mse_logits: it is the right
    answer on a batch without forest.)"""
    cut = getattr(loss_fn, "threshold", 0.0)
    with torch.no_grad():
        chance = loss_fn(torch.full_like(out, cut, dtype=torch.float32), masks).item()
    return max(first, chance) if math.isfinite(first) else first


def queued(loss: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A 0-dim loss as a host tensor to read later, and on CUDA the event after which it holds the value:
    copied into pinned memory without waiting (`train_epoch` reads it a step later). On the CPU, itself."""
    if loss.device.type != "cuda":
        return loss, None
    host = torch.empty((), dtype=loss.dtype, pin_memory=True)
    host.copy_(loss, non_blocking=True)
    return host, torch.cuda.current_stream(loss.device).record_event()


def train_epoch(
    s: RunState,
    step_model: torch.nn.Module,
    loss_fn: Callable,
    tiles: Tiles,
    cfg: TrainConfig,
    norm: Normalizer,
    bf16: bool,
    where: str,
    lr_param: str = "optimizer.lr",
) -> float:
    """One pass over `tiles`; returns the mean loss per tile. Raises Diverged with the run's history,
    advising to lower `lr_param`."""
    step_model.train()
    total, seen, pending = 0.0, 0, None
    lr = s.opt.lr

    def add(step: int, loss: torch.Tensor, done: torch.cuda.Event | None, n: int) -> None:
        """A step's loss (from `queued`) into the epoch's mean; Diverged at a non-finite one or a blow-up."""
        nonlocal total, seen
        if done is not None:
            done.synchronize()  # that step's kernels alone, not the next step's queued behind them
        value = loss.item()
        if not math.isfinite(value) or value > cfg.diverge_factor * max(s.first_loss, 1e-8):
            # a loss just over the bound (not a blow-up by orders) can be a bound too tight for this loss's swings
            near = math.isfinite(value) and value < 10 * cfg.diverge_factor * max(s.first_loss, 1e-8)
            tight = f", or raise train.diverge_factor ({cfg.diverge_factor:g})" if near else ""
            raise Diverged(
                f"{where} diverged at step {step}: loss {value:.4g} (reference {s.first_loss:.4g}: the first "
                f"batch's loss, or an output's at the loss's cut where higher; lr {lr:g}); lower {lr_param}{tight}",
                s.history,
            )
        total, seen = total + value * n, seen + n

    bar = tqdm(
        batches(tiles, cfg.batch_size, s.gens["shuffle"], s.gens.get("augment"), sampling=cfg.sampling),
        total=math.ceil(len(tiles) / cfg.batch_size) if cfg.sampling != "scene_batch" else None,
        desc=where,
        leave=False,
        mininterval=1.0,
        disable=None,
    )  # a bar on a terminal, no log noise elsewhere
    for step, (images, masks) in enumerate(bar, 1):
        x = to_input(
            images,
            norm,
            cfg.channels_last,
            cfg.color_jitter,
            s.gens.get("jitter"),
            cfg.saturation,
            cfg.blur,
            (s.gens.get("saturation"), s.gens.get("blur")),
        )
        if cfg.scale > 0:
            x, masks = zoom(x, masks, cfg.scale, s.gens["zoom"])
        if cfg.cutmix > 0:
            x, masks = cutmix(x, masks, cfg.cutmix, s.gens["cutmix"])
        # zoom and cutmix may return another layout; a no-op where x already has the one asked for
        x = x.contiguous(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = step_model(x)
        loss = loss_fn(out.float(), masks)  # the loss itself always in fp32
        s.opt.zero_grad()
        loss.backward()
        s.opt.step()
        if s.ema is not None:
            s.update_ema(cfg.ema)
        if s.first_loss is None:
            s.first_loss = divergence_reference(loss_fn, out, masks, loss.item())
        # the previous step's loss is read once this step is queued, so the device is never idle while the
        # host assembles a batch (on CUDA through pinned memory and an event: .item() on the device tensor
        # would wait for every kernel queued, this step's too)
        if pending is not None:
            add(*pending)
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        pending = (step, *queued(loss.detach()), len(images))
    if pending is not None:
        add(*pending)
    return total / seen


def _generators(seed: int, cfg: TrainConfig) -> dict[str, torch.Generator]:
    """Seeded, independent random streams, so turning augmentation on does not change the shuffle."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    gens = {"shuffle": torch.Generator().manual_seed(seed)}
    if cfg.augment:
        gens["augment"] = torch.Generator().manual_seed(seed + 1_000_003)
    if cfg.color_jitter > 0:
        gens["jitter"] = torch.Generator().manual_seed(seed + 2_000_003)
    if cfg.saturation > 0:
        gens["saturation"] = torch.Generator().manual_seed(seed + 3_000_017)
    if cfg.blur > 0:
        gens["blur"] = torch.Generator().manual_seed(seed + 6_000_011)
    if cfg.scale > 0:
        gens["zoom"] = torch.Generator().manual_seed(seed + 4_000_037)
    if cfg.cutmix > 0:
        gens["cutmix"] = torch.Generator().manual_seed(seed + 5_000_011)
    return gens


def train_run(
    run: Run,
    model_cfg: ModelConfig,
    opt_cfg: OptimizerConfig,
    train_cfg: TrainConfig,
    train: Tiles,
    test: Tiles,
    model_dir: Path,
    resume: Path,
    fingerprint: str,
    log: Callable[[str], None] = print,
    val: Tiles | None = None,
    pixel_size_m: float = PIXEL_SIZE_M,
    init: Path | None = None,
) -> Result:
    """Train one run to train_cfg.epochs, resuming from the `resume` file when its fingerprint matches
    (it is rewritten after every epoch); writes the model file model_dir/model.pt at the end.

    With `val`, the model of the epoch with the best validation mIoU is also kept, as
    model_dir/best.pt; the model is never chosen on test. Raises Diverged (carrying the history
    so far) on a non-finite or exploding loss. `pixel_size_m`, the ground size of a tile's pixel,
    is stored for predict, which resamples other imagery to it. `init`, a model file of the same
    model params, gives the starting weights and the input normaliser (fine-tuning).
    """
    device = train.images.device
    tile = min(train.images.shape[1:3])
    _check_tile(model_cfg, tile)
    check_warmup(opt_cfg, train_cfg)
    check_model_train(model_cfg, train_cfg)
    check_threshold(train_cfg, has_val=val is not None)
    bf16 = apply_precision(train_cfg.precision, device)
    if note := emulated_bf16_note(bf16, device):
        log(f"note: train.precision {train_cfg.precision}: {note}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed tile size: pick the fastest conv kernels once
    gens = _generators(run.seed, train_cfg)
    source = read_init(init, model_cfg.weights(), pixel_size_m) if init is not None else None
    if source is not None:  # the source model's normaliser: its weights expect inputs scaled as it learned them
        norm = Normalizer.of(source["normalizer"])
    else:
        norm = INPUTS[model_cfg.input](train.images)
    # what predict needs beside the weights; the same in model.pt and best.pt
    portable = model_meta(
        run.name,
        run.loss,
        LOSSES[run.loss].threshold,
        adapt_bn=train_cfg.adapt_bn,
        model=asdict(model_cfg),
        normalizer=asdict(norm),
        tile_shape=tuple(train.images.shape[1:3]),
        bf16=bf16,
        pixel_size_m=pixel_size_m,
        # the scenes this model has seen (trained on, chose its epoch or cut on, or its init_from did)
        seen=[
            *train.scene_names,
            *(val.scene_names if val is not None else ()),
            *(source["train_scenes"] if source else ()),
        ],
        init_from={"path": str(init), "sha256": source[FILE_SHA256]} if source is not None else None,
    )

    model = build_model(model_cfg).to(device)
    if source is not None:  # before the optimizer is built; a resume file below still takes precedence
        try:
            load_weights(model, source, init, fix=INIT_FIX)
        except ForestsegError as e:  # model params that match and weights that do not: edited or foreign
            raise ForestsegError(f"params.yaml: train.init_from: {e}") from None
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr, lr_param = opt_cfg.lr_for(run.loss, run.optimizer), opt_cfg.lr_param(run.loss, run.optimizer)
    opt = make_optimizer(run.optimizer, model.parameters(), lr, opt_cfg)
    s = RunState(model, opt, gens, ema=copy.deepcopy(model) if train_cfg.ema > 0 else None)
    step_model = torch.compile(model) if train_cfg.compile else model
    loss_fn = LOSSES[run.loss]
    eval_args = (run.loss, train_cfg.test_batch_size, norm, train_cfg.channels_last, bf16)
    params = {"model": asdict(model_cfg), "optimizer": asdict(opt_cfg), "train": asdict(train_cfg)}

    # the final test scores are scored as predict scores them; with the loss's own cut and no
    # adaptation that is the last epoch's evaluation, which then also counts per scene (no extra pass)
    rescore = train_cfg.threshold == "val" or bool(train_cfg.adapt_bn and test.scene_names)
    scenes: dict | None = None

    saved = read_resume(resume, log)
    if saved is not None and saved.get("fingerprint") == fingerprint:
        s.load(saved)
        log(f"{run.name}: resuming after epoch {s.epoch} from {resume}")
    elif saved is not None:
        log(f"{run.name}: {resume} was made with other params, code, data or device; starting afresh")

    while s.epoch < train_cfg.epochs:
        t0 = time.perf_counter()
        opt.lr = lr * lr_factor(s.epoch, opt_cfg, train_cfg.epochs)
        epoch, epoch_lr = s.epoch + 1, opt.lr
        train_loss = train_epoch(
            s,
            step_model,
            loss_fn,
            train,
            train_cfg,
            norm,
            bf16,
            f"run {run.name} epoch {epoch}/{train_cfg.epochs}",
            lr_param,
        )
        train_seconds = time.perf_counter() - t0
        last = epoch == train_cfg.epochs and not rescore and bool(test.scene_names)
        s.test_scores = evaluate(s.evaluated, test, *eval_args, per_scene=last)
        if last:
            scenes = s.test_scores.pop("scenes")
        if not (math.isfinite(s.test_scores["loss"]) and all(p.isfinite().all() for p in s.evaluated.parameters())):
            # the epoch's last steps can blow up after their loss was checked
            raise Diverged(
                f"run {run.name} epoch {epoch}/{train_cfg.epochs} diverged: test loss {s.test_scores['loss']:.4g} "
                f"after the epoch's last step (lr {epoch_lr:g}); lower {lr_param}",
                s.history,
            )
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "test_loss": s.test_scores["loss"],
            **{f"test_{m}": s.test_scores[m] for m in EPOCH_METRICS},
            "lr": epoch_lr,
        }
        if val is not None:
            row["val_miou"] = evaluate(s.evaluated, val, *eval_args)["miou"]
            if row["val_miou"] > s.best.get("val_miou", -1.0):  # weights kept in the resume file until the end
                s.best = {
                    "epoch": epoch,
                    "val_miou": row["val_miou"],
                    "test_scores": s.test_scores,
                    "weights": {k: v.detach().clone() for k, v in s.evaluated.state_dict().items()},
                }
        # to 0.1 ms: a GPU epoch of ~1 s timed to the ms would step bench/speed.py's rates by 0.1 %
        row.update(seconds=round(time.perf_counter() - t0, 4), train_seconds=round(train_seconds, 4))
        s.history.append(row)
        s.epoch = epoch
        write_resume(resume, {**s.to_resume(), "fingerprint": fingerprint, "params": params})  # before the log line:
        log(
            f"{run.name} epoch {epoch}/{train_cfg.epochs}: train_loss {train_loss:.4f} "  # a logged epoch resumes
            f"test_loss {s.test_scores['loss']:.4f} test_iou {s.test_scores['iou']:.4f}"
            + (f" val_miou {row['val_miou']:.4f}" if val is not None else "")
            + f" ({row['seconds']:.1f} s)"
        )

    final = s.evaluated
    if train_cfg.threshold == "val":  # chosen for each written model, on val
        portable["threshold"] = choose_threshold(
            final, val, *eval_args[1:], portable["threshold"], adapt_bn=train_cfg.adapt_bn
        )
    if rescore or (test.scene_names and scenes is None):  # test (re)scored as predict scores it, once
        s.test_scores = evaluate(
            final,
            test,
            *eval_args,
            cut=portable["threshold"],
            per_scene=bool(test.scene_names),
            adapt_bn=train_cfg.adapt_bn,
        )
        scenes = s.test_scores.pop("scenes", {})
    scenes = scenes or {}
    _write_models(s, final, run, portable, model_dir, train_cfg, val, test, eval_args)
    metrics = _run_metrics(s, lr, len(train), device, bf16, portable["threshold"])
    return Result(s.history, metrics, scenes)


def _check_tile(model_cfg: ModelConfig, tile: int) -> None:
    """The data's tiles are large enough for the model (its fixed layers, or its depth's poolings)."""
    arch = ARCHS[model_cfg.arch]
    smallest = arch.smallest_tile(model_cfg)
    larger = "give larger tiles (synth.tile_size for the synthetic set)"
    if tile < smallest and "depth" not in arch.uses:
        raise ForestsegError(
            f"params.yaml: model: {model_cfg.arch} needs tiles of at least {smallest} px (its layers are fixed), "
            f"the data's are {tile} px; {larger} or another model.arch"
        )
    if tile < smallest:
        raise ForestsegError(
            f"params.yaml: model: {model_cfg.arch} with depth {model_cfg.depth} needs tiles of at least {smallest} px"
            + (" (batch norm needs 2x2 px at the deepest level)" if model_cfg.batch_norm else "")
            + f", the data's are {tile} px; "
            + ("lower model.depth" if arch.smallest_tile(replace(model_cfg, depth=1)) <= tile else larger)
        )


def _write_models(
    s: RunState,
    final: torch.nn.Module,
    run: Run,
    portable: dict,
    model_dir: Path,
    train_cfg: TrainConfig,
    val: Tiles | None,
    test: Tiles,
    eval_args: tuple,
) -> None:
    """model.pt of the final weights and, with validation, best.pt of the best val epoch's: its cut
    chosen and its test scores taken as predict takes them (into s.best["test_scores"], for the run's
    metrics)."""
    write_model(model_dir / "model.pt", final.state_dict(), portable, epoch=s.epoch)
    if s.best:
        best = {**portable}
        if train_cfg.threshold == "val" or train_cfg.adapt_bn:
            chosen = copy.deepcopy(final)
            chosen.load_state_dict(s.best["weights"])
            if train_cfg.threshold == "val":
                best["threshold"] = choose_threshold(
                    chosen, val, *eval_args[1:], LOSSES[run.loss].threshold, adapt_bn=train_cfg.adapt_bn
                )
            s.best["test_scores"] = evaluate(
                chosen, test, *eval_args, cut=best["threshold"], adapt_bn=train_cfg.adapt_bn
            )
        s.best["threshold"] = best["threshold"]  # its own cut where chosen on val: metrics.json says it
        write_model(model_dir / "best.pt", s.best["weights"], best, epoch=s.best["epoch"], val_miou=s.best["val_miou"])


def _run_metrics(s: RunState, lr: float, tiles: int, device: torch.device, bf16: bool, threshold: float) -> dict:
    """metrics.json of a finished run: the last epoch's evaluation (and the best val epoch's)."""
    train_seconds = sum(h["train_seconds"] for h in s.history)
    metrics = {
        "status": "ok",
        "train_loss": s.history[-1]["train_loss"],
        **{f"test_{k}": v for k, v in s.test_scores.items()},
        "epochs": len(s.history),
        "lr": lr,
        "seconds": round(sum(h["seconds"] for h in s.history), 2),
        "train_images_per_second": round(tiles * len(s.history) / max(train_seconds, 1e-9), 1),
        "device": device.type,
        "precision": "bf16" if bf16 else "fp32",
        "threshold": threshold,
    }
    if s.best:
        metrics.update(
            {
                "best_epoch": s.best["epoch"],
                "best_val_miou": s.best["val_miou"],
                "best_threshold": s.best["threshold"],  # best_test_* are scored at it
                **{f"best_test_{k}": v for k, v in s.best["test_scores"].items()},
            }
        )
    return metrics


@contextlib.contextmanager
def out_of_memory_as_one_line(what: str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Iterator[None]:
    """CUDA's out-of-memory error, and the CPU allocator's (a RuntimeError), as one line saying what to lower."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        where = out_of_memory(e)
        if where is None:
            raise  # another RuntimeError: not a memory error
        raise ForestsegError(
            f"{what}: out of memory {where} with train.batch_size {train_cfg.batch_size} (test_batch_size "
            f"{train_cfg.test_batch_size}) and {model_cfg.arch} of width {model_cfg.width}, depth {model_cfg.depth}; "
            "lower train.batch_size or train.test_batch_size (or model.width), or free the device"
        ) from None


def train_member(
    run: Run,
    model_cfg: ModelConfig,
    opt_cfg: OptimizerConfig,
    train_cfg: TrainConfig,
    layout: DataLayout,
    model_dir: Path,
    resume: Path,
    code: list[Path],
) -> tuple[list[dict], dict, list[list]]:
    """Train grid member `run` on the split data of `layout` (the train stage): (history, metrics,
    per-scene confusion counts of the written model on the test scenes: rows of SCENE_COLUMNS).

    The resume fingerprint covers the run, its params and precision, the bytes of `code` and the
    data's content. A run that diverges is recorded, not raised, so the rest of the grid goes on:
    its metrics say `"status": "diverged"` and its model file holds no weights. torch runs on
    train_cfg.threads CPU threads, restored after.
    """
    with cpu_threads(train_cfg.threads):
        device = pick_device(train_cfg.device)
        if device.type == "cpu":
            keep_freed_memory()  # no allocator churn between steps (see bench/speed.py --default-malloc)
        try:  # every tile lives on the device (GPU: the uint8 arrays, ~1.3 GB for the full Kaggle set)
            tiles = load_split(layout, device)
        except torch.OutOfMemoryError:
            raise ForestsegError(
                f"run {run.name}: the split's tiles do not fit in the memory of {device} (they are kept there "
                "as uint8 for the whole run); free the device, or set train.device: cpu"
            ) from None
        if train_cfg.batch_size > len(tiles["train"]):
            raise ForestsegError(
                f"params.yaml: train.batch_size: {train_cfg.batch_size} is larger than "
                f"the {len(tiles['train'])} training tiles; lower it"
            )
        # the device kind and torch's version too: a run killed on the CPU never resumes on a GPU or under
        # another torch, nor on a CPU of other instruction sets (other kernels: other last bits)
        cfgs = [asdict(c) for c in (model_cfg, opt_cfg, train_cfg)] + [
            {"device": device.type, "torch": torch.__version__}
            | ({"cpu": cpu_kernels()} if device.type == "cpu" else {})
        ]
        init = None if train_cfg.init_from == "none" else Path(train_cfg.init_from)
        if init is not None:
            print(f"{run.name}: fine-tuning from {init} (its weights and input normaliser)")
        data = layout.content() + ([init] if init is not None else [])  # a new init file never resumes an old run
        fp = fingerprint(run.name, cfgs, use_bf16(train_cfg.precision, device), code, data)
        try:
            with out_of_memory_as_one_line(f"run {run.name}", model_cfg, train_cfg):
                result = train_run(
                    run,
                    model_cfg,
                    opt_cfg,
                    train_cfg,
                    tiles["train"],
                    tiles["test"],
                    model_dir,
                    resume,
                    fp,
                    val=tiles.get("val"),
                    pixel_size_m=layout.pixel_size_m(),
                    init=init,
                )
        except Diverged as e:
            print(f"warning: {e}")
            write_model(model_dir / "model.pt", None, {"run": run.name, "message": str(e)})  # a declared output
            return e.history, {"status": "diverged", "message": str(e), "epochs": len(e.history)}, []
        test = tiles["test"]
        per_tile = torch.bincount(test.scenes, minlength=len(test.scene_names)).tolist()
        scenes = [[name, n, *result.scenes[name]] for name, n in zip(test.scene_names, per_tile)]
        return result.history, result.metrics, scenes
