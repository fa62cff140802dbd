"""train_run on CPU: determinism, resume, divergence, bf16, learning rates, checkpoint contents."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from forestseg import losses, metrics, synthetic
from forestseg.checkpoint import read_model
from forestseg.config import ModelConfig, OptimizerConfig, TrainConfig
from forestseg.device import cpu_bf16_kernels
from forestseg.errors import ForestsegError
from forestseg.io import sha256_of
from forestseg.loader import Normalizer, Tiles, to_input
from forestseg.model import adapt_batchnorm, build_model
from forestseg.predict import Predictor
from forestseg.train import (
    Diverged,
    Run,
    _generators,
    choose_threshold,
    divergence_reference,
    evaluate,
    out_of_memory_as_one_line,
    train_run,
)
from forestseg.windows import scene_windows

MODEL = ModelConfig(arch="unet", width=4, depth=2, batch_norm=True, input="normalized")
OPT = OptimizerConfig(lr=1e-2, lr_overrides={}, step_epochs=2, gamma=0.1, momentum=0.0, weight_decay=0.0)
TRAIN = TrainConfig(
    epochs=3,
    batch_size=4,
    test_batch_size=8,
    device="cpu",
    precision="fp32",
    augment=True,
    channels_last=True,
    compile=False,
    diverge_factor=100.0,
)
RUN = Run("bce", "adam", 0)
FP = "fingerprint-a"
TIMINGS_H = ("seconds", "train_seconds")
TIMINGS_M = ("seconds", "train_images_per_second")


def scene_tiles(seed: int, scenes: int, size: int = 32) -> Tiles:
    """2x2 tiles of `size` pixels cut from each synthetic scene."""
    images, masks = synthetic.scene_tiles(seed, scenes, size)
    return Tiles(images=torch.from_numpy(images), masks=torch.from_numpy(masks))


def named_scenes(seed: int, *names: str) -> Tiles:
    """scene_tiles of one synthetic scene per name, 4 tiles each, with their scene ids and names."""
    tiles = scene_tiles(seed, len(names))
    return Tiles(tiles.images, tiles.masks, torch.arange(len(names)).repeat_interleave(4), names)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and with another CPU-bound process on a 2-core
    machine OpenMP's spinning barriers made each epoch ~100x slower (3 s instead of 0.01 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[Tiles, Tiles]:
    return scene_tiles(0, 2), scene_tiles(1, 1)  # 8 train tiles, 4 test tiles of 32x32


def strip(result) -> tuple[list[dict], dict]:
    """History and metrics without wall-clock fields, which differ run to run."""
    history = [{k: v for k, v in row.items() if k not in TIMINGS_H} for row in result.history]
    metrics = {k: v for k, v in result.metrics.items() if k not in TIMINGS_M}
    return history, metrics


def go(
    data,
    checkpoint: Path,
    run: Run = RUN,
    opt: OptimizerConfig = OPT,
    train: TrainConfig = TRAIN,
    fingerprint: str = FP,
    log=None,
    val: Tiles | None = None,
    init: Path | None = None,
    model: ModelConfig = MODEL,
    pixel_size_m: float = 0.5,
):
    lines: list[str] = []
    # `checkpoint` is the resume file; the model file goes to a folder named after it
    result = train_run(
        run,
        model,
        opt,
        train,
        data[0],
        data[1],
        checkpoint.parent / checkpoint.stem,
        checkpoint,
        fingerprint,
        log=log or lines.append,
        val=val,
        init=init,
        pixel_size_m=pixel_size_m,
    )
    return result, lines


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory: pytest.TempPathFactory):
    result, lines = go(data, tmp_path_factory.mktemp("straight") / "last.pt")
    return result, lines


def test_a_run_trains_and_reports(uninterrupted) -> None:
    result, lines = uninterrupted
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert all(math.isfinite(row[k]) for row in result.history for k in ("train_loss", "test_loss", "test_iou"))
    m = result.metrics
    assert m["status"] == "ok" and m["epochs"] == 3 and m["device"] == "cpu" and m["precision"] == "fp32"
    assert m["train_loss"] == result.history[-1]["train_loss"]
    assert m["test_loss"] == result.history[-1]["test_loss"] and m["test_iou"] == result.history[-1]["test_iou"]
    assert {"test_miou", "test_dice", "test_accuracy", "test_precision", "test_recall"} <= set(m)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]  # it learns something
    assert len(lines) == 3 and all("bce-adam-0 epoch" in line for line in lines)


def test_same_seed_gives_identical_results_other_seed_differs(data, tmp_path: Path, uninterrupted) -> None:
    again, _ = go(data, tmp_path / "a" / "last.pt")
    assert strip(again) == strip(uninterrupted[0])
    other, _ = go(data, tmp_path / "b" / "last.pt", run=Run("bce", "adam", 1))
    h_other, h_ref = strip(other)[0], strip(uninterrupted[0])[0]
    assert [r["train_loss"] for r in h_other] != [r["train_loss"] for r in h_ref]


class Killed(Exception):
    pass


def kill_at(marker: str, lines: list[str]):
    """A log that records its lines and raises right after one containing `marker` (a kill there)."""

    def log(line: str) -> None:
        lines.append(line)
        if marker in line:
            raise Killed(line)

    return log


@pytest.mark.parametrize("killed_after", [1, 2])
def test_resume_after_a_kill_gives_identical_results(data, tmp_path: Path, uninterrupted, killed_after: int) -> None:
    checkpoint = tmp_path / "last.pt"
    first: list[str] = []
    with pytest.raises(Killed):
        go(data, checkpoint, log=kill_at(f"epoch {killed_after}/3", first))
    # The checkpoint is written before the epoch's log line, so the logged epoch is saved.
    assert torch.load(checkpoint, weights_only=False)["epoch"] == killed_after
    resumed, lines = go(data, checkpoint)
    assert any(f"resuming after epoch {killed_after}" in line for line in lines)
    assert not any("afresh" in line for line in lines)
    assert len([line for line in lines if " epoch " in line and "/3:" in line]) == 3 - killed_after
    assert strip(resumed) == strip(uninterrupted[0])  # bit-identical on CPU


def test_resume_twice(data, tmp_path: Path, uninterrupted) -> None:
    checkpoint = tmp_path / "last.pt"
    with pytest.raises(Killed):
        go(data, checkpoint, log=kill_at("epoch 1/3", []))
    lines: list[str] = []
    with pytest.raises(Killed):
        go(data, checkpoint, log=kill_at("epoch 2/3", lines))
    assert "resuming after epoch 1" in lines[0]
    resumed, lines = go(data, checkpoint)
    assert "resuming after epoch 2" in lines[0]
    assert strip(resumed) == strip(uninterrupted[0])


def test_a_finished_checkpoint_returns_its_results_without_training(data, tmp_path: Path, uninterrupted) -> None:
    checkpoint = tmp_path / "last.pt"
    done, _ = go(data, checkpoint)
    again, lines = go(data, checkpoint)
    assert lines == [f"bce-adam-0: resuming after epoch 3 from {checkpoint}"]
    assert again.history == done.history  # timings included: nothing was rerun
    assert strip(again) == strip(uninterrupted[0])


def test_more_epochs_with_the_same_fingerprint_continue_the_run(data, tmp_path: Path, uninterrupted) -> None:
    """The fingerprint is opaque: the caller decides what invalidates a checkpoint. With the step
    schedule the epoch count does not change the lr, so 1 epoch then 2 more equals 3 at once."""
    checkpoint = tmp_path / "last.pt"
    short, _ = go(data, checkpoint, train=dataclasses.replace(TRAIN, epochs=1))
    assert len(short.history) == 1
    longer, lines = go(data, checkpoint)
    assert "resuming after epoch 1" in lines[0]
    assert strip(longer) == strip(uninterrupted[0])


def test_another_fingerprint_starts_afresh(data, tmp_path: Path, uninterrupted) -> None:
    checkpoint = tmp_path / "last.pt"
    with pytest.raises(Killed):
        go(data, checkpoint, fingerprint="other params", log=kill_at("epoch 2/3", []))
    assert torch.load(checkpoint, weights_only=False)["fingerprint"] == "other params"
    result, lines = go(data, checkpoint)
    assert "starting afresh" in lines[0] and not any("resuming" in line for line in lines)
    assert len(result.history) == 3
    assert strip(result) == strip(uninterrupted[0])
    assert torch.load(checkpoint, weights_only=False)["fingerprint"] == FP


def test_checkpoint_contents(data, tmp_path: Path, uninterrupted) -> None:
    from forestseg.checkpoint import MODEL_FORMAT, RESUME_FORMAT, read_model

    checkpoint = tmp_path / "last.pt"
    result, _ = go(data, checkpoint)
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["format"] == RESUME_FORMAT
    assert {"model", "optimizer", "epoch", "params", "rng", "history", "fingerprint"} <= set(saved)
    assert saved["epoch"] == 3 and saved["history"] == result.history
    assert saved["params"]["model"]["width"] == 4 and saved["params"]["train"]["epochs"] == 3
    assert saved["params"]["optimizer"]["lr"] == OPT.lr
    assert {"python", "numpy", "torch", "shuffle", "augment"} <= set(saved["rng"])
    model = read_model(tmp_path / "last" / "model.pt")  # what predict needs, and nothing to resume with
    assert model["format"] == MODEL_FORMAT and model["run"] == "bce-adam-0" and model["epoch"] == 3
    assert model["loss"] == "bce" and model["threshold"] == 0.0 and model["model"]["width"] == 4
    assert set(model["normalizer"]) == {"mean", "std", "per_tile"} and len(model["normalizer"]["mean"]) == 3
    assert model["normalizer"]["per_tile"] is False
    assert model["tile_size"] == 32 and set(model["weights"]) == set(saved["model"])
    assert "optimizer" not in model and "rng" not in model
    assert model["train_scenes"] == []  # these tiles carry no scene names
    assert not list(tmp_path.rglob(".*tmp*"))  # the atomic writes left no temp file


def test_the_model_file_lists_the_scenes_it_trained_and_chose_on(tmp_path: Path) -> None:
    """Train and val scenes, and those of an init_from model: evaluate notes them as not unseen."""

    def named(tiles: Tiles, names: tuple[str, ...]) -> Tiles:
        ids = torch.arange(len(tiles)) % len(names)
        return dataclasses.replace(tiles, scenes=ids, scene_names=names)

    train, test, val = (
        named(scene_tiles(0, 2), ("11", "12")),
        named(scene_tiles(1, 1), ("20",)),
        named(scene_tiles(2, 1), ("30",)),
    )
    go((train, test), tmp_path / "a.pt", val=val)
    assert read_model(tmp_path / "a" / "model.pt")["train_scenes"] == ["11", "12", "30"]
    go((named(scene_tiles(3, 1), ("40",)), test), tmp_path / "b.pt", init=tmp_path / "a" / "model.pt")
    assert read_model(tmp_path / "b" / "model.pt")["train_scenes"] == ["11", "12", "30", "40"]


def _val_miou(model_file: Path, tiles: Tiles) -> float:
    """mIoU of a model file on `tiles`, scored as training scores val (TRAIN: fp32, channels_last)."""
    p = Predictor.load(model_file, torch.device("cpu"), "fp32")
    return evaluate(p.model, tiles, "bce", TRAIN.test_batch_size, p.norm, True, False)["miou"]


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_validation_keeps_the_best_model(data, tmp_path: Path, ema: float) -> None:
    """Scored on the val tiles, never on test: val here is a scene of its own, so the two differ. With
    train.ema, best.pt holds the averaged weights that were scored, not the last step's."""
    val = scene_tiles(2, 1)
    result, lines = go(data, tmp_path / "last.pt", val=val, train=dataclasses.replace(TRAIN, ema=ema))
    assert all("val_miou" in row for row in result.history)
    best = max(result.history, key=lambda r: r["val_miou"])
    assert result.metrics["best_epoch"] == best["epoch"]
    assert result.metrics["best_val_miou"] == best["val_miou"]
    saved = torch.load(tmp_path / "last" / "best.pt", weights_only=False)
    assert saved["epoch"] == best["epoch"] and saved["run"] == "bce-adam-0" and saved["val_miou"] == best["val_miou"]
    assert _val_miou(tmp_path / "last" / "best.pt", val) == pytest.approx(best["val_miou"], abs=1e-6)
    assert _val_miou(tmp_path / "last" / "model.pt", val) == pytest.approx(result.history[-1]["val_miou"], abs=1e-6)
    assert _val_miou(tmp_path / "last" / "model.pt", data[1]) != pytest.approx(result.history[-1]["val_miou"], abs=1e-3)


@pytest.mark.parametrize("miou", [0.5, 0.0])  # 0: every val scene scored 0 (all called forest, none there)
def test_a_tie_in_val_miou_keeps_the_earlier_epoch(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, miou: float
) -> None:
    """best.pt changes only for a better score: equal later epochs do not replace it; an mIoU of 0 is
    a score too, so its first epoch is best (and best.pt, its best_* metrics, are written)."""
    import forestseg.train

    real = forestseg.train.evaluate

    def level(*args, **kwargs) -> dict:
        return {**real(*args, **kwargs), "miou": miou}

    monkeypatch.setattr(forestseg.train, "evaluate", level)
    result, _ = go(data, tmp_path / "last.pt", val=scene_tiles(2, 1))
    assert [row["val_miou"] for row in result.history] == [miou] * len(result.history) and len(result.history) > 1
    assert result.metrics["best_epoch"] == 1 and "best_val_miou" in result.metrics


@pytest.mark.parametrize("lr, override", [(1e6, False), (1e8, False), (1e6, True)])
def test_a_huge_learning_rate_diverges(data, tmp_path: Path, lr: float, override: bool) -> None:
    """The advice names the param that set the run's lr: optimizer.lr, or its override."""
    run = Run("bce", "sgd", 0)
    opt = dataclasses.replace(OPT, lr_overrides={"bce-sgd": lr}) if override else dataclasses.replace(OPT, lr=lr)
    with pytest.raises(Diverged) as err:
        go(data, tmp_path / "last.pt", run=run, opt=opt)
    message = str(err.value)
    assert run.name in message and "epoch" in message and "step" in message
    advice = "lower optimizer.lr_overrides.bce-sgd" if override else "lower optimizer.lr"
    assert message.endswith(advice), message
    done = [row["epoch"] for row in err.value.history]  # the epochs finished before the one that diverged
    assert done == list(range(1, len(done) + 1)) and f"epoch {len(done) + 1}/" in message


def test_the_study_recipe_trains_through_the_spike_its_mse_with_adam_makes(tmp_path: Path) -> None:
    """The study had no divergence guard: its MSE on raw outputs with Adam jumps to ~120x its first loss
    on this seed's second step and recovers, which the default factor of 100 called a divergence."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from forestseg.config import load_sections
    from recipes import run as recipes

    model, opt, train = load_sections(recipes.merged("study"), "model", "optimizer", "train")
    train = dataclasses.replace(train, epochs=1, batch_size=4, test_batch_size=8, device="cpu")
    tiles, test = scene_tiles(0, 4, size=48), scene_tiles(1, 1, size=48)

    def go(cfg: TrainConfig, out: Path):
        return train_run(Run("mse_logits", "adam", 5), model, opt, cfg, tiles, test, out, out / "r.pt", "t")

    with pytest.raises(Diverged, match=r"diverged at step 2: loss 8\d\.\d+ \(reference 0\.7") as e:
        go(dataclasses.replace(train, diverge_factor=100.0), tmp_path / "guarded")
    assert str(e.value).endswith(", or raise train.diverge_factor (100)")  # a loss just over the bound
    with pytest.raises(Diverged, match=r"diverged at step 2: loss 8\d\.\d+ ") as e:
        go(dataclasses.replace(train, diverge_factor=2.0), tmp_path / "tight")
    assert "diverge_factor" not in str(e.value)  # ~60x over the bound: a blow-up, not a bound too tight
    history = go(train, tmp_path / "study").history
    assert len(history) == 1 and math.isfinite(history[0]["test_loss"])


@pytest.mark.parametrize("loss", ["bce", "mse", "mse_logits", "dice", "lovasz"])
def test_the_divergence_reference_is_at_least_chance_level(loss: str) -> None:
    """A fine-tuned model can score near 0 on its first batch; a harder batch after it must not read
    as a blow-up, so the yardstick is at least the loss of an output at the loss's cut."""
    torch.manual_seed(0)
    masks = (torch.rand(2, 16, 16) > 0.5).float()
    loss_fn = losses.LOSSES[loss]
    perfect = (masks * 2 - 1) * 20 if loss != "mse_logits" else masks.clone()  # logits, or mse_logits' raw 0/1
    first = loss_fn(perfect, masks).item()
    chance = loss_fn(torch.full_like(perfect, loss_fn.threshold), masks).item()  # no answer either way
    assert first < chance / 10
    assert divergence_reference(loss_fn, perfect, masks, first) == chance
    assert divergence_reference(loss_fn, perfect, masks, 10 * chance) == 10 * chance  # a high first loss stays
    # a first batch without forest: an all-zero output is mse_logits' right answer, no yardstick
    empty = torch.zeros_like(masks)
    assert divergence_reference(loss_fn, torch.zeros_like(perfect) - 20 * (loss != "mse_logits"), empty, 0.0) > 0.1


def test_diverged_carries_the_completed_epochs(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loss that turns NaN at the first training step of epoch 2 (2 steps per epoch)."""
    calls = {"train": 0}
    real = losses.LOSSES["bce"]

    def flaky(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = real(out, target)
        if out.requires_grad:  # training, not evaluation
            calls["train"] += 1
            if calls["train"] == 3:
                return value * float("nan")
        return value

    monkeypatch.setitem(losses.LOSSES, "bce", losses.Loss(flaky))
    with pytest.raises(Diverged) as err:
        go(data, tmp_path / "last.pt", train=dataclasses.replace(TRAIN, batch_size=4))
    message = str(err.value)
    assert "bce-adam-0" in message and "epoch 2/3" in message and "step 1" in message
    assert [row["epoch"] for row in err.value.history] == [1]
    assert math.isfinite(err.value.history[0]["train_loss"])


def test_bf16_and_fp32_first_step_losses_agree(data, tmp_path: Path) -> None:
    # One batch holding every tile, one epoch: the train loss is the loss of the first forward
    # pass, before any update, from the same initial weights. bf16 keeps 8 significant bits
    # (relative rounding ~4e-3 per op); through ~10 conv/BN layers and a mean over 8192 pixels the
    # loss moves by well under 1%, so rel 5e-2 is a loose bound that still catches a wrong cast
    # (e.g. a loss computed on garbage or a different model).
    one_step = dataclasses.replace(TRAIN, epochs=1, batch_size=len(data[0]), augment=False)
    fp32, fp32_log = go(data, tmp_path / "fp32.pt", train=one_step)
    bf16, bf16_log = go(data, tmp_path / "bf16.pt", train=dataclasses.replace(one_step, precision="bf16"))
    assert fp32.metrics["precision"] == "fp32" and bf16.metrics["precision"] == "bf16"
    # said where bf16 runs emulated (an AVX2 CPU), and only there
    noted = [
        [line for line in log if "bf16 on a CPU without oneDNN's bf16 kernels" in line] for log in (fp32_log, bf16_log)
    ]
    assert noted[0] == [] and len(noted[1]) == (0 if cpu_bf16_kernels() else 1)
    a, b = fp32.history[0]["train_loss"], bf16.history[0]["train_loss"]
    assert b == pytest.approx(a, rel=5e-2)
    assert a != b  # autocast really ran in bf16
    assert isinstance(b, float) and math.isfinite(b)


def test_lr_override_and_step_decay(data, tmp_path: Path) -> None:
    opt = OptimizerConfig(
        lr=1e-3, lr_overrides={"bce-adam": 1e-2}, step_epochs=1, gamma=0.1, momentum=0.0, weight_decay=0.0
    )
    adam, _ = go(data, tmp_path / "adam.pt", run=Run("bce", "adam", 0), opt=opt)
    sgd, _ = go(data, tmp_path / "sgd.pt", run=Run("bce", "sgd", 0), opt=opt)
    assert adam.metrics["lr"] == 1e-2
    assert sgd.metrics["lr"] == 1e-3
    assert [r["lr"] for r in adam.history] == pytest.approx([1e-2, 1e-3, 1e-4], rel=1e-9)
    assert [r["lr"] for r in sgd.history] == pytest.approx([1e-3, 1e-4, 1e-5], rel=1e-9)


def test_step_decay_every_step_epochs(data, tmp_path: Path, uninterrupted) -> None:
    # OPT: lr 1e-2, x 0.1 every 2 epochs.
    assert [r["lr"] for r in uninterrupted[0].history] == pytest.approx([1e-2, 1e-2, 1e-3], rel=1e-9)
    assert uninterrupted[0].metrics["lr"] == 1e-2


@pytest.mark.parametrize("height, width", [(32, 48), (27, 33)])
def test_non_square_and_odd_tiles_train_with_augmentation(tmp_path: Path, height: int, width: int) -> None:
    """Quarter turns would change a non-square tile's shape: only the 4 shape-keeping flips are used."""
    tiles = scene_tiles(0, 4, size=48)
    crop = Tiles(tiles.images[:, :height, :width].contiguous(), tiles.masks[:, :height, :width].contiguous())
    result, _ = go((crop, crop), tmp_path / "last.pt")
    assert result.metrics["status"] == "ok" and 0 <= result.metrics["test_iou"] <= 1
    # predict's windows (and their batch-norm adaptation) are squares of the shorter side, as here
    state = read_model(tmp_path / "last" / "model.pt")
    assert (state["tile_size"], state["tile_shape"]) == (min(height, width), [height, width])
    # but a tile of the training tiles' shape runs whole, as training scored it, so predict and evaluate
    # give the run's own test score (the old code cut it in square windows and scored IoU 0.757185 against
    # the run's 0.757381, and 0.698614 against 0.698568)
    predictor = Predictor.load(tmp_path / "last" / "model.pt", torch.device("cpu"), "trained")
    predicted = torch.from_numpy(np.stack(predictor.masks(list(crop.images.numpy()))))
    truth = crop.masks > 0
    tp, fp, fn = (int((a & b).sum()) for a, b in ((predicted, truth), (predicted, ~truth), (~predicted, truth)))
    assert result.metrics["test_iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-9)
    assert predictor.windows(height, width) == 1 and predictor.windows(width, height) > 1  # turned: tiled


# Every knob of the quality work at once: EMA, scene-balanced sampling, zoom, saturation, blur, CutMix.
KNOBS = dataclasses.replace(TRAIN, ema=0.9, sampling="scene", scale=0.3, saturation=0.3, blur=0.5, cutmix=0.5)


def with_scenes(tiles: Tiles) -> Tiles:
    return Tiles(tiles.images, tiles.masks, torch.arange(len(tiles)) // 4)  # 4 tiles per scene


def test_every_knob_resumes_bit_identically(data, tmp_path: Path) -> None:
    knob_data = (with_scenes(data[0]), data[1])
    straight, _ = go(knob_data, tmp_path / "a.pt", train=KNOBS)
    with pytest.raises(Killed):
        go(knob_data, tmp_path / "b.pt", train=KNOBS, log=kill_at("epoch 2/3", []))
    resumed, _ = go(knob_data, tmp_path / "b.pt", train=KNOBS)
    assert strip(resumed) == strip(straight)
    plain, _ = go(knob_data, tmp_path / "c.pt")
    assert strip(plain) != strip(straight)


def test_ema_weights_are_evaluated_and_saved(data, tmp_path: Path) -> None:
    go(data, tmp_path / "last.pt", train=dataclasses.replace(TRAIN, ema=0.5))
    saved = torch.load(tmp_path / "last" / "model.pt", weights_only=False)["weights"]
    state = torch.load(tmp_path / "last.pt", weights_only=False)  # the resume file of the last epoch
    live = state["model"]
    assert saved.keys() == live.keys()
    assert any(not torch.equal(saved[k], live[k]) for k in saved)  # the average, not the last step
    assert all(torch.equal(saved[k], v) for k, v in state["ema"].items())


def test_adapt_bn_scores_each_test_scene_as_predict_does_and_is_stored(data, tmp_path: Path) -> None:
    test = named_scenes(1, "s1", "s2")
    plain, _ = go((data[0], test), tmp_path / "plain.pt")
    adapted, _ = go((data[0], test), tmp_path / "adapted.pt", train=dataclasses.replace(TRAIN, adapt_bn=0.5))
    assert strip(plain)[0] == strip(adapted)[0]  # the same training; only the written model's scoring differs
    assert read_model(tmp_path / "adapted" / "model.pt")["adapt_bn"] == 0.5
    assert read_model(tmp_path / "plain" / "model.pt")["adapt_bn"] == 0.0
    p = Predictor.load(tmp_path / "adapted" / "model.pt", torch.device("cpu"), precision="fp32")  # as trained
    for name, rows in (("s1", slice(0, 4)), ("s2", slice(4, 8))):
        images, truth = test.images[rows].numpy(), test.masks[rows].numpy() > 0
        pred = p.adapted(scene_windows(list(images), 32), 0.5).windows_logits(images) > p.cut
        want = [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum(), (~pred & ~truth).sum()]
        assert adapted.scenes[name] == [int(c) for c in want], name  # as forestseg evaluate --adapt-bn 0.5
    total = torch.tensor([adapted.scenes["s1"], adapted.scenes["s2"]]).sum(0).numpy()
    assert adapted.metrics["test_iou"] == metrics.scores(total)["iou"]
    assert adapted.scenes != plain.scenes


def test_threshold_val_is_chosen_on_val_and_stored(data, tmp_path: Path) -> None:
    """The cut stored is the one choose_threshold finds on the val tiles (a scene of their own), not
    the loss's default nor one chosen on test."""
    val = scene_tiles(2, 1)
    result, _ = go(data, tmp_path / "last.pt", train=dataclasses.replace(TRAIN, threshold="val"), val=val)
    saved = torch.load(tmp_path / "last" / "model.pt", weights_only=False)
    assert saved["threshold"] == result.metrics["threshold"]
    assert math.isfinite(saved["threshold"])
    for name in ("model.pt", "best.pt"):
        p = Predictor.load(tmp_path / "last" / name, torch.device("cpu"), "fp32")
        args = (TRAIN.test_batch_size, p.norm, True, False, losses.LOSSES["bce"].threshold)
        on_val, on_test = choose_threshold(p.model, val, *args), choose_threshold(p.model, data[1], *args)
        stored = torch.load(tmp_path / "last" / name, weights_only=False)["threshold"]
        assert stored == pytest.approx(on_val, abs=1e-6) and on_val != on_test, (name, stored, on_val, on_test)
    assert saved["threshold"] != losses.LOSSES["bce"].threshold


def test_threshold_val_without_val_stops_with_one_line(data, tmp_path: Path) -> None:
    with pytest.raises(ForestsegError, match="train.threshold: val .*split.val_fraction"):
        go(data, tmp_path / "last.pt", train=dataclasses.replace(TRAIN, threshold="val"))


@pytest.mark.parametrize("warmup, fails", [(2, False), (3, True), (5, True)])
def test_warmup_must_end_before_the_last_epoch(data, tmp_path: Path, warmup: int, fails: bool) -> None:
    opt = dataclasses.replace(OPT, schedule="cosine", warmup_epochs=warmup)  # TRAIN: 3 epochs
    if fails:
        with pytest.raises(ForestsegError, match=rf"optimizer\.warmup_epochs {warmup}: must be below train\.epochs 3"):
            go(data, tmp_path / "last.pt", opt=opt)
    else:
        assert go(data, tmp_path / "last.pt", opt=opt)[0].metrics["status"] == "ok"


class ChannelModel(torch.nn.Module):
    """Outputs the first input channel: a model whose scores a test can predict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def test_choose_threshold_finds_the_cut_that_separates_the_classes() -> None:
    values = torch.tensor([50, 100, 200], dtype=torch.uint8)
    images = values[torch.randint(0, 3, (6, 8, 8), generator=torch.Generator().manual_seed(0))]
    images = images[..., None].repeat(1, 1, 1, 3)
    masks = (images[..., 0] == 200).to(torch.uint8)  # forest: value 200 only
    cut = choose_threshold(ChannelModel(), Tiles(images, masks), 4, Normalizer(), True, False, 0.0)
    assert 100 <= cut < 200  # the loss's own cut (0) would call everything forest


def test_choose_threshold_with_adapt_bn_cuts_the_outputs_of_the_adapted_model() -> None:
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    val = scene_tiles(2, 1)  # one scene of 4 tiles
    val = Tiles(val.images // 3, val.masks, torch.zeros(4, dtype=torch.int64), ("s",))  # darker than the norm
    norm = Normalizer((110.0, 120.0, 100.0), (50.0, 45.0, 40.0))
    windows = to_input(torch.from_numpy(scene_windows(list(val.images.numpy()), 32)), norm)
    adapted = adapt_batchnorm(model, windows, 0.5)
    got = choose_threshold(model, val, 4, norm, True, False, 0.0, adapt_bn=0.5)
    assert got == choose_threshold(adapted, val, 4, norm, True, False, 0.0)
    assert got != choose_threshold(model, val, 4, norm, True, False, 0.0)


def test_per_scene_counts_add_up_to_the_test_scores(data, tmp_path: Path) -> None:
    test = Tiles(data[1].images, data[1].masks, torch.tensor([0, 1, 1, 0]), ("a", "b"))
    result, _ = go((data[0], test), tmp_path / "last.pt")
    assert set(result.scenes) == {"a", "b"}
    total = torch.tensor(list(result.scenes.values())).sum(0)
    assert int(total.sum()) == test.masks.numel()
    assert metrics.scores(total.numpy())["iou"] == pytest.approx(result.metrics["test_iou"])


@pytest.mark.parametrize("adapt_bn, passes", [(0.0, 3), (0.5, 4)])
def test_the_last_epoch_s_evaluation_also_counts_per_scene(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapt_bn: float, passes: int
) -> None:
    """With the loss's own cut and no adaptation the final scores are the last epoch's: one pass over
    test per epoch, no extra one; with adaptation test is scored again, adapted per scene. A run
    resumed after its last epoch scores the scenes itself, to the same counts."""
    import forestseg.train as train_module

    test = Tiles(data[1].images, data[1].masks, torch.tensor([0, 1, 1, 0]), ("a", "b"))
    calls: list[dict] = []

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", counted)
    train = dataclasses.replace(TRAIN, adapt_bn=adapt_bn)
    result, _ = go((data[0], test), tmp_path / "last.pt", train=train)
    assert len(calls) == passes  # TRAIN trains 3 epochs
    total = torch.tensor(list(result.scenes.values())).sum(0)
    assert metrics.scores(total.numpy())["iou"] == pytest.approx(result.metrics["test_iou"])
    calls.clear()
    again, lines = go((data[0], test), tmp_path / "last.pt", train=train)
    assert lines == [f"bce-adam-0: resuming after epoch 3 from {tmp_path / 'last.pt'}"] and len(calls) == 1
    assert again.scenes == result.scenes and strip(again) == strip(result)


# --- starting from a model file (train.init_from) -------------------------------------------------


@pytest.fixture(scope="module")
def source(data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model file of a 3-epoch run on data[0]: the model to fine-tune."""
    folder = tmp_path_factory.mktemp("source")
    go(data, folder / "last.pt")
    return folder / "last" / "model.pt"


def weights(state: dict) -> dict:
    """The learned parameters of a state dict (batch-norm running statistics move without any step)."""
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_fine_tuning_starts_from_the_file_s_weights_and_normaliser(data, source, tmp_path: Path) -> None:
    # Other tiles than the source saw (their fitted normaliser would differ) and an lr so small that
    # two Adam steps move no weight by more than 1e-8: what is saved is where training started.
    still = dataclasses.replace(OPT, lr=1e-9)
    one = dataclasses.replace(TRAIN, epochs=1)
    go((data[1], data[1]), tmp_path / "ft.pt", opt=still, train=one, init=source)
    go((data[1], data[1]), tmp_path / "scratch.pt", opt=still, train=one)
    src, ft, scratch = (
        read_model(source),
        read_model(tmp_path / "ft/model.pt"),
        read_model(tmp_path / "scratch/model.pt"),
    )
    for k, v in weights(src["weights"]).items():
        assert torch.allclose(ft["weights"][k], v, atol=1e-6), k
    assert any(not torch.allclose(scratch["weights"][k], v, atol=1e-3) for k, v in weights(src["weights"]).items())
    assert ft["normalizer"] == src["normalizer"] != scratch["normalizer"]
    # the file names where its weights came from; one trained from scratch names none
    assert ft["init_from"] == {"path": str(source), "sha256": sha256_of(source)}
    assert scratch["init_from"] is None and src["init_from"] is None


def test_fine_tuning_starts_with_a_far_lower_loss_than_scratch(data, source, tmp_path: Path) -> None:
    one = dataclasses.replace(TRAIN, epochs=1)
    ft, _ = go(data, tmp_path / "ft.pt", train=one, init=source)
    scratch, _ = go(data, tmp_path / "scratch.pt", train=one)
    # measured: 0.52 from the 3-epoch source (whose last epoch was 0.53) against 0.67 from scratch
    assert ft.history[0]["train_loss"] < 0.85 * scratch.history[0]["train_loss"]


def test_a_killed_fine_tuning_run_resumes_from_its_resume_file(data, source, tmp_path: Path) -> None:
    """The resume file takes precedence over the init file: the resumed run ends as an uninterrupted one."""
    straight, _ = go(data, tmp_path / "a" / "last.pt", init=source)
    checkpoint = tmp_path / "b" / "last.pt"
    with pytest.raises(Killed):
        go(data, checkpoint, init=source, log=kill_at("epoch 2/3", []))
    resumed, lines = go(data, checkpoint, init=source)
    assert "resuming after epoch 2" in lines[0]
    assert strip(resumed) == strip(straight)


def test_a_model_file_of_other_model_params_is_refused_in_one_line(data, source, tmp_path: Path) -> None:
    with pytest.raises(ForestsegError) as err:
        go(data, tmp_path / "last.pt", init=source, model=dataclasses.replace(MODEL, width=8, batch_norm=False))
    message = str(err.value)
    assert message == (
        f"params.yaml: train.init_from: {source} holds a model with width 4, batch_norm True; this run's params "
        "say model.width 8, model.batch_norm False: set those model params to the file's, or start from a model "
        "file trained with these"
    )
    resume = source.parent.parent / "last.pt"  # the source run's resume file: not a model file
    with pytest.raises(
        ForestsegError, match=r"^params\.yaml: train\.init_from: .*last\.pt: a resume file of a training"
    ):
        go(data, tmp_path / "other.pt", init=resume)


def test_a_model_of_other_pixels_is_refused_and_one_within_a_percent_fine_tunes(data, source, tmp_path: Path) -> None:
    with pytest.raises(ForestsegError) as err:  # the source learned 0.5 m pixels (go's default)
        go(data, tmp_path / "a.pt", init=source, pixel_size_m=0.3)
    assert str(err.value) == (
        f"params.yaml: train.init_from: {source} learned from 0.5 m pixels, and data.pixel_size_m says the tiles' "
        "are 0.3 m: cut them at the model's (forestseg tile --pixel-size 0.5) and set data.pixel_size_m to it, "
        "or start from a model of the data's pixel size"
    )
    one = dataclasses.replace(TRAIN, epochs=1)
    ft, _ = go(data, tmp_path / "b.pt", init=source, pixel_size_m=0.504, train=one)
    assert read_model(tmp_path / "b" / "model.pt")["pixel_size_m"] == 0.504


def test_a_bad_init_file_says_how_to_make_one_not_to_pass_another_path(data, source, tmp_path: Path) -> None:
    """predict's advice (`pass models/<run>/model.pt`) is a path train.init_from refuses (outside init/)."""
    from forestseg.checkpoint import INIT_FIX

    text, resume = tmp_path / "notes.pt", source.parent.parent / "last.pt"
    text.write_text("not a model\n")
    bad_weights = tmp_path / "foreign.pt"  # its model params are the run's; its weights lack a layer
    state = read_model(source)
    torch.save({**state, "weights": dict(list(state["weights"].items())[1:])}, bad_weights)
    for init in (text, resume, tmp_path, bad_weights):
        with pytest.raises(ForestsegError) as err:
            go(data, tmp_path / "other.pt", init=init)
        message = str(err.value)
        assert message.startswith(f"params.yaml: train.init_from: {init}: ") and message.endswith(f"; {INIT_FIX}")
        assert "pass models" not in message and "dvc repro" not in message and "\n" not in message


def test_a_model_file_fine_tunes_with_mixstyle_which_only_acts_while_training(data, source, tmp_path: Path) -> None:
    ft, _ = go(data, tmp_path / "last.pt", init=source, model=dataclasses.replace(MODEL, mixstyle=0.5))
    assert ft.history  # trained: mixstyle changes neither the weights nor what they compute in eval


@pytest.mark.parametrize("input", ["normalized", "per_tile", "raw"])
def test_the_model_file_keeps_the_input_normalisation_that_predict_applies(data, tmp_path: Path, input) -> None:
    from forestseg.predict import Predictor

    go(data, tmp_path / "last.pt", model=dataclasses.replace(MODEL, input=input))
    norm = Predictor.load(tmp_path / "last" / "model.pt", torch.device("cpu")).norm
    # the train split's channel statistics; per_tile's come from each tile as it is predicted
    expected = Normalizer.fit(data[0].images) if input == "normalized" else Normalizer(per_tile=input == "per_tile")
    assert norm == expected


@pytest.mark.parametrize("loss", ["dice", "bce_dice", "bce", "lovasz"])
def test_the_test_loss_does_not_depend_on_the_test_batch_size(data, loss: str) -> None:
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    norm = Normalizer.fit(data[0].images)
    tiles = Tiles(torch.cat([data[0].images, data[1].images]), torch.cat([data[0].masks, data[1].masks]))
    got = [evaluate(model, tiles, loss, b, norm, True, False) for b in (12, 5, 1)]  # 12 tiles
    assert [g["loss"] for g in got] == pytest.approx([got[0]["loss"]] * 3, rel=1e-6)
    # the scores come from counts summed over every batch, not a mean of per-batch scores
    for key in ("iou", "miou", "dice", "precision", "recall", "accuracy"):
        assert [g[key] for g in got] == pytest.approx([got[0][key]] * 3, rel=1e-6), key


@pytest.mark.parametrize("depth, fails", [(4, False), (5, True)])
def test_a_tile_whose_deepest_level_is_1_px_stops_with_one_line(data, tmp_path: Path, depth: int, fails: bool):
    model = dataclasses.replace(MODEL, depth=depth)  # 32-px tiles: 2x2 at depth 4, 1x1 at depth 5
    if fails:
        with pytest.raises(ForestsegError, match=r"depth 5 needs tiles of at least 64 px \(batch norm needs 2x2"):
            go(data, tmp_path / "last.pt", model=model)
    else:
        assert go(data, tmp_path / "last.pt", model=model)[0].metrics["status"] == "ok"


def test_the_study_model_on_small_tiles_is_not_told_to_lower_a_depth_it_ignores(data, tmp_path: Path) -> None:
    model = ModelConfig(arch="study_unet")  # 32-px tiles; its valid convs need 48, whatever model.depth says
    with pytest.raises(ForestsegError) as refused:
        go(data, tmp_path / "last.pt", model=model)
    assert str(refused.value) == (
        "params.yaml: model: study_unet needs tiles of at least 48 px (its layers are fixed), the data's are 32 px; "
        "give larger tiles (synth.tile_size for the synthetic set) or another model.arch"
    )


@pytest.mark.parametrize("arch, depth", [("unet", 1), ("unet_quarter", 3)])  # quarter: 13 px even at depth 1
def test_too_small_tiles_that_no_depth_fits_are_told_to_give_larger_tiles(data, tmp_path: Path, arch, depth) -> None:
    model = dataclasses.replace(MODEL, arch=arch, depth=depth)
    tiny = tuple(Tiles(t.images[:, :2, :2], t.masks[:, :2, :2], t.scenes, t.scene_names) for t in data)
    with pytest.raises(ForestsegError, match=r"the data's are 2 px; give larger tiles \(synth.tile_size"):
        go(tiny, tmp_path / "last.pt", model=model)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_model_file_loads_in_the_precision_it_was_scored_in(data, tmp_path: Path, precision: str) -> None:
    go(data, tmp_path / "last.pt", train=dataclasses.replace(TRAIN, epochs=1, precision=precision))
    path = tmp_path / "last" / "model.pt"
    assert read_model(path)["precision"] == precision
    assert Predictor.load(path, torch.device("cpu"), "trained").bf16 == (precision == "bf16")


@pytest.mark.parametrize(
    "error, where",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "on the GPU"),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried"),
            "in host memory",
        ),
        (MemoryError(), "in host memory"),
    ],
)
def test_out_of_memory_is_one_line_saying_what_to_lower(error: Exception, where: str) -> None:
    with pytest.raises(ForestsegError) as raised:
        with out_of_memory_as_one_line("run bce-adam-0", MODEL, TRAIN):
            raise error
    assert str(raised.value) == (
        f"run bce-adam-0: out of memory {where} with train.batch_size {TRAIN.batch_size} (test_batch_size "
        f"{TRAIN.test_batch_size}) and unet of width 4, depth 2; lower train.batch_size or train.test_batch_size "
        "(or model.width), or free the device"
    )


def test_other_runtime_errors_pass_through() -> None:
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        with out_of_memory_as_one_line("run bce-adam-0", MODEL, TRAIN):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_every_random_stream_follows_the_seed() -> None:
    """Shuffle and each augmentation draw from their own generator seeded by the run's seed: another
    seed is another order and other augmentations, not only other initial weights."""
    cfg = dataclasses.replace(TRAIN, augment=True, color_jitter=0.1, saturation=0.1, blur=0.5, scale=0.5, cutmix=0.5)

    def draws(seed: int) -> dict[str, list[int]]:
        return {name: torch.randperm(50, generator=g).tolist() for name, g in _generators(seed, cfg).items()}

    zero, one = draws(0), draws(1)
    assert set(zero) == {"shuffle", "augment", "jitter", "saturation", "blur", "zoom", "cutmix"}
    assert zero == draws(0)  # same seed, same streams
    assert all(zero[k] != one[k] for k in zero)  # another seed moves every stream
    assert len({tuple(v) for v in zero.values()}) == len(zero)  # and the streams are independent


# --- scores, cuts and run state with outputs set by hand -------------------------------------------


class RedChannel(torch.nn.Module):
    """The raw output is the normalised red input: outputs set pixel by pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].clone()


def red_tiles(values: list[int], truth: list[int], scenes: bool = False) -> Tiles:
    images = torch.zeros(1, 1, len(values), 3, dtype=torch.uint8)
    images[0, 0, :, 0] = torch.tensor(values, dtype=torch.uint8)
    masks = torch.tensor(truth, dtype=torch.uint8).view(1, 1, -1)
    return Tiles(images, masks, torch.zeros(1, dtype=torch.int64), ("a",)) if scenes else Tiles(images, masks)


@pytest.mark.parametrize(
    "background, forest, default, chosen",
    [
        ([10] * 51, [20] * 50, 0.0, 10.0),  # 10 separates them; 20 would leave no forest
        ([10] * 51, [20] * 50, 15.0, 15.0),  # ties go to the loss's own cut
        ([10], [20] * 100, 0.0, 0.0),  # every percentile is 20, where no forest is left: the own cut is best
    ],
)
def test_choose_threshold_picks_the_cut_that_scores_best_as_forest_is_scored(
    background: list, forest: list, default: float, chosen: float
) -> None:
    """101 outputs, so the 1st..99th percentiles are outputs themselves, none between: the candidates'
    counts must be those of forest = output > cut, as the run is scored."""
    val = red_tiles(background + forest, [0] * len(background) + [1] * len(forest))
    cut = choose_threshold(RedChannel(), val, 8, Normalizer(), False, False, default)
    assert cut == chosen

    def miou(c: float) -> float:
        return evaluate(RedChannel(), val, "bce", 8, Normalizer(), False, False, cut=c)["miou"]

    candidates = {default, *sorted(background + forest)[1:100]}  # the loss's own cut, the 1st..99th percentiles
    assert miou(cut) == max(miou(float(c)) for c in candidates)


@pytest.mark.parametrize("per_scene", [False, True])
@pytest.mark.parametrize("loss, cut, iou", [("bce", None, 2 / 3), ("mse_logits", None, 1 / 3), ("bce", 1.0, 1 / 2)])
def test_evaluate_scores_at_the_cut_asked_for_or_the_losss_own(per_scene: bool, loss: str, cut, iou: float) -> None:
    """Outputs 0, 0.3, 0.8, 2.0 against truth 0, 1, 0, 1: cut 0 (bce) finds 2 of 2 with 1 false, 0.5
    (mse_logits) 1 with 1 false, 1.0 one alone."""
    tiles = red_tiles([0, 3, 8, 20], [0, 1, 0, 1], scenes=per_scene)
    norm = Normalizer((0.0, 0.0, 0.0), (10.0, 1.0, 1.0))
    out = evaluate(RedChannel(), tiles, loss, 8, norm, False, False, cut=cut, per_scene=per_scene)
    assert out["iou"] == pytest.approx(iou)
    if per_scene:
        tp, fp, fn, _ = out["scenes"]["a"]
        assert tp / (tp + fp + fn) == pytest.approx(iou)


def test_the_weights_moving_average_ramps_its_decay_up_from_a_tenth() -> None:
    """ema <- d ema + (1 - d) model, d = min(decay, (1 + steps) / (10 + steps)): the random init fades fast."""
    import copy

    from forestseg.train import RunState

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    s = RunState(model, None, {}, ema=copy.deepcopy(model))
    for step, d in [(0, 0.1), (1, 2 / 11), (1000, 0.99)]:
        s.ema_steps = step
        before = s.ema.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        s.update_ema(0.99)
        assert torch.allclose(s.ema.weight, d * before + (1 - d) * model.weight, atol=1e-6), step
        assert s.ema_steps == step + 1


def test_the_ema_copies_integer_buffers_from_the_model() -> None:
    """Batch-norm's num_batches_tracked is a count, not averaged: the saved EMA model carries the model's."""
    import copy

    from forestseg.train import RunState

    model = torch.nn.BatchNorm2d(2)
    s = RunState(model, None, {}, ema=copy.deepcopy(model))
    model(torch.randn(4, 2, 3, 3))  # one training batch: the count goes to 1
    s.update_ema(0.99)
    assert s.ema.num_batches_tracked.item() == model.num_batches_tracked.item() == 1


def test_a_run_state_loads_every_field_it_saved() -> None:
    """The resume file carries what the next epochs depend on, the divergence yardstick included."""
    import copy

    from forestseg.optim import make_optimizer
    from forestseg.train import RunState

    def state(seed: int) -> RunState:
        torch.manual_seed(seed)
        model = torch.nn.Linear(3, 2)
        opt = make_optimizer("adam", model.parameters(), 1e-3, OPT)
        return RunState(model, opt, {"shuffle": torch.Generator().manual_seed(seed)}, ema=copy.deepcopy(model))

    s = state(0)
    s.epoch, s.history, s.first_loss, s.ema_steps = 2, [{"epoch": 1}, {"epoch": 2}], 0.7, 7
    s.best, s.test_scores = {"epoch": 1, "val_miou": 0.5}, {"iou": 0.25}
    t = state(1)
    t.load(s.to_resume())
    fields = ("epoch", "history", "first_loss", "ema_steps", "best", "test_scores")
    assert [getattr(t, f) for f in fields] == [getattr(s, f) for f in fields]
    assert torch.equal(t.model.weight, s.model.weight) and torch.equal(t.ema.weight, s.ema.weight)


def test_the_train_loss_is_a_mean_per_tile(tmp_path: Path) -> None:
    """With a learning rate of ~0 and no batch norm or augmentation, the epoch's train loss over batches of
    4 and 2 tiles is the test loss of the same tiles."""
    g = torch.Generator().manual_seed(0)
    tiles = Tiles(
        torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=g),
        torch.randint(0, 2, (6, 32, 32), dtype=torch.uint8, generator=g),
    )
    result = train_run(
        RUN,
        dataclasses.replace(MODEL, batch_norm=False),
        dataclasses.replace(OPT, lr=1e-30),
        dataclasses.replace(TRAIN, epochs=1, augment=False),
        tiles,
        tiles,
        tmp_path,
        tmp_path / "resume.pt",
        FP,
        log=lambda s: None,
    )
    [row] = result.history
    assert row["train_loss"] == pytest.approx(row["test_loss"], rel=1e-5)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_a_queued_loss_reads_as_the_loss(device: str) -> None:
    """train_epoch reads each step's loss a step later: on CUDA from pinned memory once its event has passed."""
    from forestseg.train import queued

    loss = (torch.arange(4.0, device=device) / 3).sum()
    held, done = queued(loss)
    assert (done is None) == (device == "cpu") and held.device.type == "cpu"
    if done is not None:
        done.synchronize()
        assert held.is_pinned()
    assert held.item() == loss.item()


@pytest.mark.parametrize("imports", ["import forestseg, torch", "import torch, forestseg"])
def test_omp_dynamic_in_the_environment_does_not_hang_training(tmp_path: Path, imports: str) -> None:
    """OMP_DYNAMIC=true hung oneDNN's bf16 1x1 convolution backward forever (a stage deaf to SIGTERM):
    forestseg turns it off, before torch loads or in the OpenMP of a torch imported first."""
    code = (
        f"{imports}\n"
        "torch.set_num_threads(2)\n"
        "m = torch.nn.Conv2d(4, 4, 1).to(memory_format=torch.channels_last)\n"
        "x = torch.randn(8, 4, 16, 16).contiguous(memory_format=torch.channels_last)\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    for _ in range(5):\n"
        "        m(x).float().sum().backward()\n"
        "print('done')\n"
    )
    env = {**os.environ, "OMP_DYNAMIC": "TRUE"}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a training step hung with OMP_DYNAMIC=TRUE in the environment")
    assert out.stdout.strip() == "done", out.stderr


def test_a_mixstyle_run_resumes_bit_identically(data, tmp_path: Path) -> None:
    """MixStyle draws from torch's global generator: its state is in the resume file."""
    model = dataclasses.replace(MODEL, mixstyle=1.0)
    straight, _ = go(data, tmp_path / "a.pt", model=model)
    with pytest.raises(Killed):
        go(data, tmp_path / "b.pt", model=model, log=kill_at("epoch 1/3", []))
    resumed, _ = go(data, tmp_path / "b.pt", model=model)
    assert strip(resumed) == strip(straight)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_per_scene_counts_do_not_depend_on_the_test_batch_size(batch_size: int) -> None:
    values = torch.tensor([[0, 20], [20, 20], [0, 0], [20, 0], [20, 20], [0, 20]], dtype=torch.uint8)
    images = torch.zeros(6, 1, 2, 3, dtype=torch.uint8)
    images[:, 0, :, 0] = values
    masks = torch.tensor([[0, 1], [1, 1], [1, 0], [1, 0], [0, 0], [0, 1]], dtype=torch.uint8).view(6, 1, 2)
    tiles = Tiles(images, masks, torch.tensor([0, 0, 1, 1, 2, 2]), ("a", "b", "c"))
    out = evaluate(RedChannel(), tiles, "bce", batch_size, Normalizer(), False, False, per_scene=True)
    assert out["scenes"] == {"a": [3, 0, 0, 1], "b": [1, 0, 1, 2], "c": [1, 2, 0, 1]}


def test_an_earlier_best_epoch_is_scored_and_cut_with_its_own_weights(data, tmp_path: Path, monkeypatch) -> None:
    """best.pt's cut is chosen, and its test scores taken, with the best epoch's weights, not the last's."""
    import forestseg.train

    real = forestseg.train.evaluate
    # every epoch ties on val mIoU: the best is the first
    monkeypatch.setattr(forestseg.train, "evaluate", lambda *a, **k: {**real(*a, **k), "miou": 0.5})
    val = scene_tiles(2, 1)
    result, _ = go(data, tmp_path / "last.pt", train=dataclasses.replace(TRAIN, threshold="val"), val=val)
    assert result.metrics["best_epoch"] == 1 and len(result.history) == 3
    p = Predictor.load(tmp_path / "last" / "best.pt", torch.device("cpu"), "fp32")
    cut = choose_threshold(p.model, val, TRAIN.test_batch_size, p.norm, True, False, losses.LOSSES["bce"].threshold)
    assert p.cut == pytest.approx(cut, abs=1e-6)
    assert result.metrics["best_threshold"] == p.cut  # the cut best_test_* are scored at, beside model.pt's
    want = real(p.model, data[1], "bce", TRAIN.test_batch_size, p.norm, True, False, cut=p.cut)
    assert result.metrics["best_test_iou"] == pytest.approx(want["iou"], abs=1e-9)
    assert result.metrics["best_test_iou"] != pytest.approx(result.metrics["test_iou"], abs=1e-9)
    assert read_model(tmp_path / "last" / "best.pt")["epoch"] == 1  # the weights' epoch, not the last


def test_the_moving_average_takes_in_each_step_s_updated_weights(data, tmp_path: Path) -> None:
    train = dataclasses.replace(TRAIN, epochs=1, batch_size=8, ema=0.5, augment=False)  # one step
    go(data, tmp_path / "last.pt", train=train)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    torch.manual_seed(RUN.seed)  # as train_run seeds before it builds the model
    init = build_model(MODEL).state_dict()
    # the first step's decay is the warm-up's, min(ema, (1 + 0) / (10 + 0)) = 0.1, not ema itself
    for name in ("stem.0.weight", "head.weight", "head.bias"):
        torch.testing.assert_close(state["ema"][name], 0.1 * init[name] + 0.9 * state["model"][name])


def test_choose_threshold_takes_the_percentiles_of_every_output() -> None:
    """2101 outputs: the candidates are percentiles of all of them (only past a million are they thinned,
    for quantile's size limit); here the 1st, 2, is the one cut that separates the classes, and no
    percentile of every other output falls in [2, 3)."""
    values = torch.randint(0, 256, (2101,), generator=torch.Generator().manual_seed(0))
    assert torch.quantile(values.float(), 0.01) == 2
    val = red_tiles(values.tolist(), (values > 2).tolist())
    assert choose_threshold(RedChannel(), val, 8, Normalizer(), False, False, 0.0) == 2


@pytest.mark.parametrize(
    "knobs", [{"threshold": "val", "adapt_bn": 0.5}, {"adapt_bn": 0.5}, {"ema": 0.9}], ids=["val+adapt", "adapt", "ema"]
)
def test_every_reported_score_is_its_model_files_as_evaluate_scores_it(data, tmp_path: Path, knobs: dict) -> None:
    """test_* and best_test_* are model.pt's and best.pt's scores at their stored cuts, each test scene by
    the model adapted to it as `forestseg evaluate --adapt-bn` adapts; the cuts are chosen on val likewise;
    the per-epoch val mIoU is the evaluated (EMA) weights' without adaptation, as the per-epoch test curve."""
    test, val = named_scenes(1, "s1", "s2"), named_scenes(2, "v1", "v2")
    train = dataclasses.replace(TRAIN, epochs=2, **knobs)
    result, _ = go((data[0], test), tmp_path / "last.pt", train=train, val=val)
    adapt = knobs.get("adapt_bn", 0.0)
    for name, prefix in (("model.pt", "test_"), ("best.pt", "best_test_")):
        p = Predictor.load(tmp_path / "last" / name, torch.device("cpu"), "fp32")
        args = (TRAIN.test_batch_size, p.norm, True, False)
        if knobs.get("threshold") == "val":
            assert p.cut == choose_threshold(p.model, val, *args, losses.LOSSES["bce"].threshold, adapt_bn=adapt)
        want = evaluate(p.model, test, "bce", *args, cut=p.cut, adapt_bn=adapt)
        assert result.metrics[f"{prefix}iou"] == pytest.approx(want["iou"], abs=1e-9), name
        assert result.metrics[f"{prefix}miou"] == pytest.approx(want["miou"], abs=1e-9), name
    final = Predictor.load(tmp_path / "last" / "model.pt", torch.device("cpu"), "fp32")
    unadapted = evaluate(final.model, val, "bce", TRAIN.test_batch_size, final.norm, True, False)["miou"]
    assert result.history[-1]["val_miou"] == pytest.approx(unadapted, abs=1e-9)


def test_bf16_runs_choose_their_cut_on_val(data, tmp_path: Path) -> None:
    """Evaluation's outputs leave autocast as fp32: quantile() takes no bf16."""
    train = dataclasses.replace(TRAIN, epochs=1, precision="bf16", threshold="val")
    result, _ = go(data, tmp_path / "last.pt", train=train, val=scene_tiles(2, 1))
    assert math.isfinite(result.metrics["threshold"]) and result.metrics["threshold"] != 0.0


def test_a_bf16_runs_evaluation_runs_in_bf16_as_predict_does() -> None:
    """The scores of a bf16 run are of bf16 outputs, as its model file predicts (precision stored), not fp32."""
    from forestseg.train import outputs

    tiles = scene_tiles(1, 1)
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    norm = Normalizer()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(to_input(tiles.images, norm, False)).float()
    got = torch.cat([o for o, _ in outputs(model, tiles, 8, norm, False, bf16=True)])
    fp32 = torch.cat([o for o, _ in outputs(model, tiles, 8, norm, False, bf16=False)])
    assert torch.equal(got, want) and not torch.equal(fp32, want)
