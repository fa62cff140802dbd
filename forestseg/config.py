"""Typed, validated params: one frozen dataclass per params.yaml section.

Only `stages/` reads params.yaml; it builds these once and passes them down. Every value is
checked when built, so a typo or a bad number stops the stage with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Mapping

from .errors import ForestsegError

SPLITS = ("scene", "tile")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
INPUTS = ("normalized", "per_tile", "raw")
SAMPLINGS = ("tile", "scene", "scene_batch")
THRESHOLDS = ("loss", "val")
PIXEL_SIZE_M = 0.5  # ground size of a pixel of the Kaggle/DeepGlobe tiles (and of the synthetic ones)
# ground sizes within 1 % are one resolution: predict and tile read such pixels as they are, and
# train.init_from takes a model of such pixels
SAME_PIXEL_SIZE = 0.01
INIT_DIR = "init"  # the project folder of model files that train.init_from may name (a dep of the train stage)
MAX_WIDTH = 256  # model.width: w256 d6 is a 16384-channel bottom level, past any memory this targets
# train.threads: torch takes a C int (2**31 up raises) and OpenMP starts that many threads per parallel region
MAX_THREADS = 1024
PLAUSIBLE_PIXEL_M = (1e-3, 1e4)  # pixel sides outside these are a geotransform or CRS gone wrong, not imagery
MAX_BATCH = 65536  # tiles per batch: 12.9 GB of 256-px uint8 tiles, far beyond any machine here
# what dvc.yaml's stages write beside the synth stage's data/synthetic (a test checks it): data.source
# there would be a stage's dependency and another's output, which DVC refuses without naming the param
PIPELINE_OUTPUTS = ("data/index.csv", "data/packed", "data/split.csv", "metrics", "models", "plots", "REPORT.md")


class ConfigError(ForestsegError):
    pass


def _yaml(value: object) -> str:
    """A scalar as params.yaml writes it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fail(key: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"params.yaml: {key}: {msg}")


def _choice(key: str, value: str, choices) -> None:
    if value not in choices:
        _fail(key, f"unknown value {value!r}; valid choices: {', '.join(choices)}")


# Names users pick live in registries beside their code (losses.LOSSES, optim.OPTIMIZERS and
# SCHEDULES, model.ARCHS, masks.CONVENTIONS). They are imported when a section that names one is
# validated, not with this module, so a stage depends only on the registries of the params it reads
# (adding a loss never reruns synth, index or split). loader.SAMPLINGS and loader.INPUTS are checked
# against the name lists above instead (aggregate reads train and model but not the loader; a test
# keeps each list equal to its registry); the other lists above are two-way switches or devices.
def _losses():
    from .losses import LOSSES

    return LOSSES


def _optimizers():
    from .optim import OPTIMIZERS

    return OPTIMIZERS


def threads_range(n: int) -> str | None:
    """What is wrong with `n` torch CPU threads (train.threads, predict's --threads), or None."""
    if not 1 <= n <= MAX_THREADS:
        return f"must be in 1..{MAX_THREADS} (torch's CPU threads: the cores a run should use)"
    return None


def _positive(key: str, value: float) -> None:
    if not value > 0:
        _fail(key, f"must be > 0, got {value!r}")


def known_device(name: str) -> bool:
    """Whether `name` is one of DEVICES or cuda:<index> (train.device, the CLI's --device)."""
    # ASCII digits only: str.isdigit() also takes '٣' or '²', which torch.device refuses with a traceback
    return name in DEVICES or re.fullmatch(r"cuda:[0-9]{1,4}", name) is not None


def _source_outside_outputs(source: str) -> None:
    path = PurePosixPath(os.path.normpath(source.replace(os.sep, "/")))
    if path.is_absolute():  # the project's root is not known here; DVC's own check covers these
        return
    if path.parts[:1] == ("..",):  # found from the workspace, not from a queued or --temp run's copy of it
        _fail(
            "data.source",
            f"{source!r} leads out of the project by a relative path, which each queued or --temp experiment "
            f"resolves inside its own copy of the project, where nothing is; write the full path, e.g. "
            f"{os.path.abspath(source)!r}",
        )
    outs = [PurePosixPath(o) for o in PIPELINE_OUTPUTS]
    inside = next((o for o in outs if path == o or o in path.parents), None)
    if inside is not None or any(path in o.parents for o in outs):
        what = (
            f"{'is' if path == inside else 'lies in'} the pipeline's output {inside}"
            if inside
            else "holds the pipeline's outputs"
        )
        _fail(
            "data.source",
            f"{source!r} {what} (the index stage would read what the pipeline writes after it: DVC refuses "
            "the cycle); give the folder of "
            "the Kaggle layout (images/, masks/, meta_data.csv), e.g. data/raw/kaggle",
        )


@dataclass(frozen=True)
class DataConfig:
    """Where the Kaggle-layout folder is (images/, masks/, meta_data.csv) and how its masks code forest."""

    source: str = "data/synthetic"
    masks: str = "0/255"  # a convention of forestseg.masks.CONVENTIONS
    forest: tuple = ()  # class ids (masks: classes) or RGB colours (masks: colors) that are forest
    # Metres on the ground per pixel of the tiles; stored in checkpoints so predict can resample
    # other imagery to the resolution the model learned.
    pixel_size_m: float = PIXEL_SIZE_M
    # stop when forest is brighter than the rest in most scenes (inverted masks); false for imagery
    # where vegetation is bright (near-infrared false colour)
    check_inverted: bool = True

    def __post_init__(self) -> None:
        from .masks import CONVENTIONS

        if self.source.startswith("~"):  # DVC takes the path as written: it would look for a folder named ~
            _fail(
                "data.source",
                f"{self.source!r}: ~ is not expanded here; write the full path, e.g. {os.path.expanduser(self.source)!r}",
            )
        _source_outside_outputs(self.source)
        _positive("data.pixel_size_m", self.pixel_size_m)
        low, high = PLAUSIBLE_PIXEL_M
        if not low <= self.pixel_size_m <= high:
            _fail("data.pixel_size_m", f"must be from {low:g} to {high:g} m (a pixel side), got {self.pixel_size_m:g}")

        _choice("data.masks", self.masks, tuple(CONVENTIONS))
        needs = CONVENTIONS[self.masks].needs_forest
        if not needs and self.forest:
            _fail(
                "data.forest",
                f"must be [] with data.masks {self.masks!r} (forest is its high value); "
                "list values with data.masks: classes, colours with data.masks: colors",
            )
        if needs and not self.forest:
            _fail(
                "data.forest",
                f"list the {needs} that are forest, e.g. "
                + ("[2]" if needs == "values" else "[[0, 255, 0]] (DeepGlobe)"),
            )
        for f in self.forest:
            ok = (
                (isinstance(f, int) and 0 <= f <= 255)
                if needs == "values"
                else (isinstance(f, tuple) and len(f) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in f))
            )
            if not ok:
                _fail(
                    "data.forest",
                    f"{list(f) if isinstance(f, tuple) else f!r} is not "
                    + ("a value in 0..255" if needs == "values" else "an RGB colour [r, g, b] with each in 0..255"),
                )


@dataclass(frozen=True)
class SynthConfig:
    """The embedded synthetic dataset, generated in the Kaggle layout."""

    scenes: int = 24
    grid: int = 4  # tiles per scene = grid * grid, named <scene>_sat_<row><col>
    tile_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.scenes <= 10000:
            _fail("synth.scenes", f"must be in 1..10000, got {self.scenes}")
        if not 1 <= self.grid <= 10:
            _fail("synth.grid", f"must be in 1..10 (tile names use one digit per row/col), got {self.grid}")
        if self.seed < 0:
            _fail("synth.seed", f"must be >= 0, got {self.seed}")
        if self.tile_size < 16 or self.tile_size % 16:
            _fail("synth.tile_size", f"must be a multiple of 16 and >= 16, got {self.tile_size}")
        # a scene is rendered whole: a peak of ~30 float64 planes of its side squared (3.7 GiB at 4096 px,
        # measured with ru_maxrss on 2026-12-05)
        if self.grid * self.tile_size > 4096:
            _fail(
                "synth.tile_size",
                f"x synth.grid must be <= 4096 px (one scene's side, rendered whole: 3.7 GiB of memory at 4096), "
                f"got {self.grid * self.tile_size}",
            )


@dataclass(frozen=True)
class SplitConfig:
    """params.yaml split: how tiles are divided into train, test and validation."""

    by: str = "scene"
    test_fraction: float = 0.25
    val_fraction: float = 0.0  # carved from the train side, by the same unit (scene or tile)
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("split.by", self.by, SPLITS)
        if self.seed < 0:
            _fail("split.seed", f"must be >= 0, got {self.seed}")
        if not 0 < self.test_fraction < 1:
            _fail("split.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        if not 0 <= self.val_fraction < 1 - self.test_fraction:
            _fail("split.val_fraction", f"must be in [0, 1 - test_fraction), got {self.val_fraction}")


@dataclass(frozen=True)
class ModelConfig:
    """params.yaml model: the architecture (model.ARCHS) and its size."""

    arch: str = "unet_half"
    width: int = 16  # channels of the first level; doubles at each level down
    depth: int = 3  # number of 2x downsamplings
    batch_norm: bool = True
    # "normalized": the train split's channel mean/std; "per_tile": each tile's own (scene colour and
    # brightness shifts removed); "raw": 0-255 floats, as the 2022 study did
    input: str = "normalized"
    # probability per training batch of MixStyle (tiles' shallow feature statistics mixed across the
    # batch, model.MixStyle); 0 = off
    mixstyle: float = 0.0

    def weights(self) -> dict:
        """The params that shape the weights and what they compute in eval: all but MixStyle, which acts
        only while training (a model file fine-tunes with or without it)."""
        return {k: v for k, v in asdict(self).items() if k != "mixstyle"}

    @property
    def has_batch_norm(self) -> bool:
        """Whether the model has batch-norm layers: model.batch_norm, and an arch that builds them (not
        study_unet's fixed layers)."""
        from .model import ARCHS

        return self.batch_norm and "batch_norm" in ARCHS[self.arch].uses

    def __post_init__(self) -> None:
        from .model import ARCHS

        _choice("model.arch", self.arch, ARCHS)
        _choice("model.input", self.input, INPUTS)
        if not 1 <= self.width <= MAX_WIDTH:  # the deepest level has width * 2**depth channels
            _fail("model.width", f"must be in 1..{MAX_WIDTH}, got {self.width}")
        if not 1 <= self.depth <= 6:
            _fail("model.depth", f"must be in 1..6, got {self.depth}")
        if not 0 <= self.mixstyle <= 1:
            _fail("model.mixstyle", f"must be in [0, 1], got {self.mixstyle}")
        if self.mixstyle and "mixstyle" not in ARCHS[self.arch].uses:
            _fail("model.mixstyle", f"{self.arch} has no MixStyle layer (its layers are fixed); set it to 0")
        for key in FIXED_BY_ARCH:  # a value the arch ignores would name an experiment it is not
            default = ModelConfig.__dataclass_fields__[key].default
            if key not in ARCHS[self.arch].uses and getattr(self, key) != default:
                _fail(
                    f"model.{key}",
                    f"{self.arch}'s layers are fixed, so it takes no {key}; leave it at {_yaml(default)} "
                    f"(got {_yaml(getattr(self, key))})",
                )


FIXED_BY_ARCH = ("width", "depth", "batch_norm")  # model params an arch of fixed layers leaves at their defaults


@dataclass(frozen=True)
class OptimizerConfig:
    """params.yaml optimizer: learning rate, its schedule and the optimizers' settings."""

    lr: float = 1e-3
    # Per-run learning rates, keyed "<loss>-<optimizer>" (e.g. "mse-adam": 1e-3); others use lr.
    lr_overrides: dict = field(default_factory=dict)
    # step: lr x gamma every step_epochs epochs; cosine: towards 0 at the run's end, set per epoch
    schedule: str = "step"
    step_epochs: int = 4
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warmup from lr/10, then the schedule
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _positive("optimizer.lr", self.lr)
        from .optim import SCHEDULES

        _choice("optimizer.schedule", self.schedule, SCHEDULES)
        _positive("optimizer.step_epochs", self.step_epochs)
        if self.warmup_epochs < 0:
            _fail("optimizer.warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        if not 0 < self.gamma <= 1:
            _fail("optimizer.gamma", f"must be in (0, 1]: the step schedule multiplies the lr by it, got {self.gamma}")
        if not 0 <= self.momentum < 1:
            _fail("optimizer.momentum", f"must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            _fail("optimizer.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for key, lr in self.lr_overrides.items():
            loss, _, opt = str(key).partition("-")
            if loss not in _losses() or opt not in _optimizers():
                _fail(
                    f"optimizer.lr_overrides.{key}",
                    f"keys are '<loss>-<optimizer>' with loss in {tuple(_losses())} and optimizer in {tuple(_optimizers())}",
                )
            _positive(f"optimizer.lr_overrides.{key}", lr)

    def lr_for(self, loss: str, optimizer: str) -> float:
        """The lr of that combination: its lr_overrides entry, else lr."""
        return self.lr_overrides.get(combination_of(loss, optimizer), self.lr)

    def lr_param(self, loss: str, optimizer: str) -> str:
        """The params key that sets `lr_for(loss, optimizer)`, for advice such as 'lower optimizer.lr'."""
        key = combination_of(loss, optimizer)
        return f"optimizer.lr_overrides.{key}" if key in self.lr_overrides else "optimizer.lr"


@dataclass(frozen=True)
class TrainConfig:
    """params.yaml train: epochs, batches, augmentation, precision, device and what a run keeps."""

    epochs: int = 5
    batch_size: int = 16
    test_batch_size: int = 64
    device: str = "auto"  # auto = cuda when available, else cpu
    precision: str = "auto"  # auto = bf16 autocast where the device multiplies bf16 faster than fp32, else fp32
    augment: bool = True  # a random flip/rotation of each training tile (8 choices), seeded
    color_jitter: float = 0.1  # per-tile brightness drawn from 1 +- this, per-channel gain from 1 +- this / 2; 0 = off
    channels_last: bool = True
    compile: bool = False
    # torch's CPU threads: reductions split by thread, so the numbers depend on it; a param, so that the
    # same params give the same numbers whichever process (repro, queue worker, cluster task) trains
    threads: int = 2
    # A finite loss above this many times the run's first training step loss (at least 0.25) counts as diverged.
    diverge_factor: float = 100.0
    # Label-safe augmentation beyond flips: zoom in by up to 1 + scale, saturation 1 +- saturation,
    # a Gaussian blur with probability blur. 0 = off.
    scale: float = 0.0
    saturation: float = 0.0
    blur: float = 0.0
    # Probability that a training tile gets a box (each side 25-75 % of the tile's) of the batch's next
    # tile pasted in, mask with it: tiles that mix two scenes, labels exact (CutMix). 0 = off.
    cutmix: float = 0.0
    # tile: every tile once per epoch; scene: scenes equally likely; scene_batch: every tile once per
    # epoch, each batch from one scene (batch-norm learns per-scene statistics: predict with --adapt-bn 1)
    sampling: str = "tile"
    ema: float = 0.0  # decay of an exponential moving average of the weights, kept and saved; 0 = off
    threshold: str = "loss"  # loss: the loss's own cut; val: the cut of best val mIoU (needs a val split)
    # Each test scene is scored with the model's batch-norm statistics moved this far (0-1) towards
    # the scene's own; stored in the model file as predict's default --adapt-bn. 0 = off.
    adapt_bn: float = 0.0
    # A forestseg model file whose weights start every run (fine-tuning), or none (random init). It
    # must lie in init/, a dep of the train stage, so a new file there reruns train. The file itself is
    # checked where it is read (checkpoint.read_init): a fresh clone has only its .dvc file until
    # `dvc repro --pull` reaches the train stage, and the stages before it must not need it.
    init_from: str = "none"

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "test_batch_size", "threads"):
            _positive(f"train.{key}", getattr(self, key))
        for key in ("batch_size", "test_batch_size"):
            if getattr(self, key) > MAX_BATCH:  # torch's split and index take a 64-bit size
                _fail(f"train.{key}", f"must be in 1..{MAX_BATCH} tiles, got {getattr(self, key)}")
        if wrong := threads_range(self.threads):
            _fail("train.threads", f"{wrong}, got {self.threads}")
        if not self.diverge_factor > 1:  # a loss above this multiple of the first one is divergence
            _fail("train.diverge_factor", f"must be > 1 (a multiple of the first loss), got {self.diverge_factor}")
        for key in ("scale", "saturation", "ema"):
            if not 0 <= getattr(self, key) < 1 + (key == "scale"):
                _fail(f"train.{key}", f"must be in [0, {2 if key == 'scale' else 1}), got {getattr(self, key)}")
        for key in ("blur", "cutmix"):  # probabilities per tile: 1 = every tile
            if not 0 <= getattr(self, key) <= 1:
                _fail(f"train.{key}", f"must be a probability in [0, 1], got {getattr(self, key)}")
        if self.cutmix and self.batch_size < 2:  # tile i takes its box from tile i + 1 of the batch: itself
            _fail(
                "train.cutmix",
                "pastes a box of the batch's next tile, and train.batch_size 1 has none: it would do nothing; "
                "set it to 0 or raise train.batch_size",
            )
        if not 0 <= self.adapt_bn <= 1:
            _fail("train.adapt_bn", f"must be in [0, 1] (0 = off, 0.25 measured best), got {self.adapt_bn}")
        _choice("train.sampling", self.sampling, SAMPLINGS)
        _choice("train.threshold", self.threshold, THRESHOLDS)
        if self.init_from != "none":
            parts = PurePosixPath(self.init_from).parts
            if self.init_from.startswith("/") or ".." in parts or len(parts) < 2 or parts[0] != INIT_DIR:
                _fail(
                    "train.init_from",
                    f"{self.init_from!r}: give none or the path of a model file inside the project's {INIT_DIR}/ "
                    f"folder, e.g. {INIT_DIR}/source.pt (see {INIT_DIR}/README.md)",
                )
        if not known_device(self.device):
            _fail("train.device", f"unknown value {self.device!r}; valid choices: {', '.join(DEVICES)}, cuda:<index>")
        if not 0 <= self.color_jitter < 1:
            _fail("train.color_jitter", f"must be in [0, 1), got {self.color_jitter}")
        _choice("train.precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class GridConfig:
    """params.yaml grid: the losses x optimizers x seeds trained, one DVC matrix member each."""

    loss: tuple = ("mse", "bce")
    optimizer: tuple = ("sgd", "adam")
    seed: tuple = (0, 1)

    def __post_init__(self) -> None:
        for key in ("loss", "optimizer", "seed"):
            values = getattr(self, key)
            if not values:
                _fail(f"grid.{key}", "must list at least one value")
            if len(set(values)) != len(values):
                _fail(f"grid.{key}", f"has duplicates: {list(values)}")
        for loss in self.loss:
            _choice("grid.loss", loss, _losses())
        for opt in self.optimizer:
            _choice("grid.optimizer", opt, _optimizers())
        for seed in self.seed:
            # numpy's global seed takes < 2**32; torch's generators, seeded with the seed plus a stream
            # offset (train._generators), take up to 2**64
            if not isinstance(seed, int) or not 0 <= seed < 2**32:
                _fail("grid.seed", f"seeds must be integers >= 0 and < 2**32, got {seed!r}")

    def runs(self) -> list["Run"]:
        """Every loss x optimizer x seed combination, in the order of dvc.yaml's matrix."""
        return [Run(loss, o, s) for loss in self.loss for o in self.optimizer for s in self.seed]

    def reads(self, key: str) -> bool:
        """Whether an optimizer of the grid reads optimizer.<key> (its registry entry's `uses`)."""
        return any(key in _optimizers()[o].uses for o in self.optimizer)


@dataclass(frozen=True)
class ReportConfig:
    """Prediction overlays: how many test tiles to show, chosen by this seed."""

    examples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.examples <= 16:
            _fail("report.examples", f"must be in 1..16, got {self.examples}")
        if self.seed < 0:
            _fail("report.seed", f"must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Run:
    """One grid member; its name is the DVC matrix member, folder and checkpoint name."""

    loss: str
    optimizer: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.combination}-{self.seed}"

    @property
    def combination(self) -> str:
        """<loss>-<optimizer>: the runs of every seed, as tables, figures and lr_overrides name them."""
        return combination_of(self.loss, self.optimizer)

    @classmethod
    def of(cls, combination: str, seed: int) -> "Run":
        """The run of `combination` (<loss>-<optimizer>) with `seed`."""
        loss, optimizer = combination.split("-")
        return cls(loss, optimizer, int(seed))


def combination_of(loss: str, optimizer: str) -> str:
    """<loss>-<optimizer>, the name of a grid combination."""
    return f"{loss}-{optimizer}"


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "synth": SynthConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "train": TrainConfig,
    "grid": GridConfig,
    "report": ReportConfig,
}


FLOAT_EXACT = 2**53  # from here on a float is not exact: 2**53 + 1 reads as 2**53


# a number as a quoted string may be written (YAML 1.1 tools quote 1e-3): plain ASCII digits only, no
# spaces, underscores or other scripts' digits, which Python's int() and float() also take
# (inf and nan pass, to be told they are not finite)
_NUMBER_TEXT = re.compile(r"[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)


def forest_values(value: Any) -> tuple:
    """data.forest as a tuple of class ids or colours (tuples), from its YAML or JSON value (a ConfigError
    where it is none: true, 2.5, a dict); ranges and a colour's three numbers are DataConfig's checks."""
    return _coerce("data.forest", value, tuple)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Convert a YAML value to the field's type; a number in quotes is parsed (YAML 1.1 tools write
    1e-3 as the string "1e-3"), anything else of the wrong type refused."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        _fail(key, f"must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            _fail(key, f"must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        number = value
        if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
            try:
                return int(value)
            except ValueError:
                number = float(value)
        if isinstance(number, float) and number.is_integer():
            if abs(number) >= FLOAT_EXACT:  # 1e17 is a float whose neighbours are 16 apart: not the number written
                _fail(
                    key, f"must be an integer written without a decimal point or exponent from 2**53 up, got {value!r}"
                )
            return int(number)
        _fail(key, f"must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            _fail(key, f"must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            try:
                number = float(value)
            except OverflowError:  # an integer of hundreds of digits
                _fail(key, f"must be finite, got an integer of {value.bit_length()} bits, too large for a float")
        elif isinstance(value, str):
            if not _NUMBER_TEXT.fullmatch(value):
                _fail(key, f"must be a number (e.g. 1e-3), got {value!r}")
            number = float(value)
        else:
            _fail(key, f"must be a number, got {value!r}")
        if number != number or number in (float("inf"), float("-inf")):
            _fail(key, f"must be finite, got {value!r}")
        return number
    if kind is str:
        if isinstance(value, str) and value:
            return value
        _fail(key, f"must be a non-empty string, got {value!r}")
    if kind is tuple:  # grid lists: ints for seeds, strings otherwise; forest: ints or [r, g, b]
        if not isinstance(value, list):
            _fail(key, f"must be a list, got {value!r}")
        if key == "data.forest":
            return tuple(
                tuple(_coerce(f"{key}[{i}][{j}]", c, int) for j, c in enumerate(v))
                if isinstance(v, list)
                else _coerce(f"{key}[{i}]", v, int)
                for i, v in enumerate(value)
            )
        if key.endswith(".seed"):  # DVC names the train stages after the values as written: 1.0 or '01' would not match
            for i, v in enumerate(value):
                if not isinstance(v, int) or isinstance(v, bool):
                    _fail(f"{key}[{i}]", f"must be a whole number written as one (e.g. 1, not 1.0 or '01'), got {v!r}")
            return tuple(value)
        return tuple(_coerce(f"{key}[{i}]", v, str) for i, v in enumerate(value))
    if kind is dict:  # lr overrides
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail(key, f"must be a mapping, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", v, float) for k, v in value.items()}
    raise TypeError(f"unsupported field type {kind!r} for {key}")


def build(cls: type, name: str, raw: Any) -> Any:
    """Build section `name` of params as dataclass `cls`; unknown, missing or bad keys fail."""
    if not isinstance(raw, Mapping):
        _fail(name, f"must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names), key=str)  # YAML keys may be numbers or null too
    if unknown:
        _fail(f"{name}.{unknown[0]}", f"unknown key; valid keys of '{name}': {', '.join(names)}")
    missing = [n for n in names if n not in raw]
    if missing:
        _fail(f"{name}.{missing[0]}", "missing key (see the default params.yaml)")
    return cls(**{n: _coerce(f"{name}.{n}", raw[n], hints[n]) for n in names})


def unused_by_grid(opt: "OptimizerConfig", grid: "GridConfig") -> list[str]:
    """Optimizer settings that no run of the grid acts on (a momentum without sgd, an lr override of a
    combination the grid does not train, a step schedule's gamma under cosine), one sentence each.
    Said, not refused: a recipe's settings stay valid when a user narrows its grid (`-S
    'grid.optimizer=[adam]'`) or switches its schedule."""
    from .optim import SCHEDULES

    said = []
    if opt.momentum and not grid.reads("momentum"):
        said.append(f"optimizer.momentum {opt.momentum:g} has no effect: no optimizer of grid.optimizer uses it")
    default = OptimizerConfig()
    for key in sorted(set().union(*(spec.uses for spec in SCHEDULES.values())) - SCHEDULES[opt.schedule].uses):
        if getattr(opt, key) != getattr(default, key):  # the default is there whether anyone set it or not
            said.append(
                f"optimizer.{key} {getattr(opt, key):g} has no effect: optimizer.schedule {opt.schedule} does not use it"
            )
    combos = {run.combination for run in grid.runs()}
    for key in opt.lr_overrides:
        if key not in combos:
            said.append(f"optimizer.lr_overrides.{key} has no effect: the grid trains no {key} run")
    return said


def load_sections(params: Mapping, *names: str) -> tuple:
    """The named sections of a parsed params.yaml, validated, in the order asked."""
    if not isinstance(params, Mapping):
        raise ConfigError("params.yaml: must be a mapping of sections")
    unknown = sorted(set(params) - set(SECTIONS), key=str)
    if unknown:
        _fail(unknown[0], f"unknown section; valid sections: {', '.join(SECTIONS)}")
    out = []
    for name in names:
        if name not in params:
            _fail(name, "missing section (see the default params.yaml)")
        out.append(build(SECTIONS[name], name, params[name]))
    built = dict(zip(names, out))
    if "optimizer" in built and "train" in built:
        check_warmup(built["optimizer"], built["train"])
    if "model" in built and "train" in built:
        check_model_train(built["model"], built["train"])
    if "train" in built and "split" in built:
        check_threshold(built["train"], has_val=built["split"].val_fraction > 0)
    return tuple(out)


def check_warmup(opt: "OptimizerConfig", train: "TrainConfig") -> None:
    """Rules across the optimizer and train sections: the warmup ends before the last epoch."""
    if opt.warmup_epochs and opt.warmup_epochs >= train.epochs:
        _fail(
            f"optimizer.warmup_epochs {opt.warmup_epochs}",
            f"must be below train.epochs {train.epochs}, else the learning rate never reaches optimizer.lr",
        )


def check_model_train(model: "ModelConfig", train: "TrainConfig") -> None:
    """Rules across the model and train sections: a train setting the model would silently not act on."""
    from .model import ARCHS

    if train.adapt_bn and not model.has_batch_norm:
        fixed = "batch_norm" not in ARCHS[model.arch].uses
        why = "its layers are fixed" if fixed else "model.batch_norm: false"
        _fail(
            "train.adapt_bn",
            f"{train.adapt_bn} moves batch-norm statistics, and {model.arch} has no batch-norm layers ({why}): it "
            "would do nothing; set it to 0" + ("" if fixed else " or model.batch_norm: true"),
        )
    if model.mixstyle and train.batch_size < 2:
        _fail(
            "model.mixstyle",
            "mixes each tile's feature statistics with another tile's of the batch, and train.batch_size 1 has "
            "none: it would do nothing; set it to 0 or raise train.batch_size",
        )


def check_threshold(train: "TrainConfig", has_val: bool) -> None:
    """train.threshold: val needs validation scenes (split.val_fraction > 0, and a split that made some)."""
    if train.threshold == "val" and not has_val:
        _fail(
            "train.threshold",
            "val chooses the cut on validation scenes, and this split has none: "
            "set split.val_fraction > 0 (e.g. 0.15) or train.threshold: loss",
        )


def asdict(cfg: Any) -> dict:
    """Plain dict of a config, for checkpoints, fingerprints and params files: tuples as lists at any
    depth (data.forest's colours too), as YAML and JSON write them."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def override_value(value: Any) -> str:
    """A YAML value in the override grammar of `dvc exp run -S` (Hydra's): bare keys, quoted odd strings
    (and strings Hydra would read as another type: 'null', 'TrUe', 'inf', '1e-3', '010')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (
        # Hydra's bare strings are ASCII, and '.5' or '1_0' unquoted would be numbers to it
        not re.fullmatch(r"[A-Za-z_./][\w./-]*", value, re.ASCII)
        or _is_float(value)
        or value.lower() in ("true", "false", "null")
    ):
        # in quotes Hydra reads a backslash as itself, except a run of them before a quote or at the
        # end, which escapes: those runs are doubled (a Windows folder's trailing one left it unterminated)
        return "'" + re.sub(r"(\\*)('|\Z)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"
    return str(value)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
