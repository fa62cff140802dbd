"""The two checkpoint files, written and read only here.

- the **model file** (`models/<run>/model.pt`, and `best.pt` with a val split): what predict needs,
  weights, model params, the loss and the threshold that makes a mask, how far to adapt batch-norm
  to each scene (`adapt_bn`), the input normaliser and the tile size. It is a cached DVC output, so the run-cache can restore it anywhere.
- a model file named by `train.init_from` (in init/) is read here too: its weights and normaliser
  start a fine-tuning run.
- the **resume file** (`.resume/<run>.pt`): everything to continue a killed run bit-identically
  (model, optimizer state, RNG states, history) and the fingerprint of what made it. A
  scratch file that DVC does not own; the train stage removes it once the run's outputs exist.

Each carries a format tag, so an older or foreign file is refused with one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .config import INIT_DIR, PLAUSIBLE_PIXEL_M, PRECISIONS, SAME_PIXEL_SIZE
from .errors import ForestsegError
from .io import untracked_in_project, write_torch
from .losses import LOSSES
from .model import ARCHS

MODEL_FORMAT = "forestseg-model/1"
FILE_SHA256 = "file_sha256"  # read_model's digest of the bytes it read: not a field of the file
# What a model file written before a field existed means by its absence (read_model fills them in):
# the precision picked on the device, no batch-norm adaptation, unknown seen scenes, an unrecorded pixel size
OLDER_FILES = {"precision": "auto", "adapt_bn": 0.0, "train_scenes": (), "pixel_size_m": None, "init_from": None}
RESUME_FORMAT = "forestseg-resume/3"  # 3: numpy's RNG state as numbers (weights_only); 2: forestseg.optim's state


def _load(path: Path) -> tuple[Any, str]:
    """torch.load of a file of ours, intact and safe, and the SHA-256 of the bytes it was read from:
    read once, so a file replaced meanwhile (`dvc repro` retraining it, a copy over it) cannot pair one
    model's weights with another's digest. torch's reader skips the zip's checksums (a flipped bit would
    load as other weights), so they are checked first; weights_only, since a model file may come from
    anyone and a full pickle runs code when it is opened (ours hold only tensors, containers, numbers
    and strings). On the CPU: RNG states must stay there."""
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"its part {bad} fails its checksum")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), hashlib.sha256(data).hexdigest()


def model_meta(
    run: str,
    loss: str,
    threshold: float,
    *,
    adapt_bn: float,
    model: dict,
    normalizer: dict,
    tile_shape: tuple[int, int],
    bf16: bool,
    pixel_size_m: float,
    seen: Iterable[str],
    init_from: dict | None = None,
) -> dict:
    """A model file's fields beside its weights, what predict needs (read_model checks them):
    `threshold` the raw output above which a pixel is forest, `adapt_bn` predict's default
    --adapt-bn, `tile_shape` the training tiles' (height, width): predict runs an image of that shape
    whole, as training scored its tiles, and others in square windows of its shorter side (`tile_size`),
    the precision the run scored in
    (the overlays draw its calls), the scenes the model has seen (evaluate notes any it is asked
    to score as unseen), and `init_from`, the model file it was fine-tuned from (its path as params
    named it and its SHA-256; None: trained from scratch)."""
    return {
        "run": run,
        "loss": loss,
        "threshold": threshold,
        "adapt_bn": adapt_bn,
        "model": model,
        "normalizer": normalizer,
        "tile_size": int(min(tile_shape)),
        "tile_shape": [int(tile_shape[0]), int(tile_shape[1])],
        "precision": "bf16" if bf16 else "fp32",
        "pixel_size_m": float(pixel_size_m),
        "train_scenes": sorted(set(seen)),
        "init_from": init_from,
    }


def write_model(path: str | Path, weights: dict | None, meta: dict, **extra: Any) -> None:
    """The model file: `meta` from model_meta (a diverged run's: its run and message only);
    `weights` None for a run that diverged (predict refuses it, naming the run). Weights are written
    from the CPU, so a run's file has the same bytes (and DVC hash) whichever device trained it last."""
    if weights is not None:
        weights = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in weights.items()}
    write_torch(path, {"format": MODEL_FORMAT, "weights": weights, **meta, **extra})


def read_model(path: str | Path, fix: str | None = None) -> dict:
    """The model file at `path`, checked, with the fields older files lack filled in (OLDER_FILES);
    one-line ForestsegError for anything else, ending in what to do: `fix` where given (the caller
    knows better where a model file should come from), else advice for predict and evaluate."""
    path = Path(path)

    def fail(problem: str, advice: str, own: bool = False) -> ForestsegError:
        """`own`: advice that holds whoever asks (another version's file), not replaced by `fix`."""
        return ForestsegError(f"{path}: {problem}; {advice if own else fix or advice}")

    if not path.is_file():
        # a pipeline's model, not made yet (a fresh clone): `dvc repro` makes it, the cache or remote has it
        made = not path.exists() and path.parts[-3:-2] == ("models",)
        advice = (
            "run `dvc repro` in the project to train it (or `dvc checkout` / `dvc pull` where a cache or remote has it)"
            if made
            else "pass a model file, models/<run>/model.pt"
        )
        raise fail("is a folder" if path.is_dir() else "no such file", advice)
    try:
        state, digest = _load(path)
    except pickle.UnpicklingError:  # torch's own text is a page of advice on unsafe loading, in ANSI bold
        raise fail(
            "holds pickled Python objects beyond weights (a whole model saved with torch.save(model)?), "
            "not a forestseg model file; it is not opened, as unpickling runs code",
            "pass models/<run>/model.pt",
        ) from None
    except PermissionError as e:  # the file's mode, not its bytes: no copy would mend it
        raise fail(f"cannot be read ({e.strerror})", "check its permissions (chmod a+r)", own=True) from None
    except Exception as e:
        raise fail(
            f"cannot be read as a forestseg model file ({type(e).__name__}: {' '.join(str(e).split())}): "
            "damaged, cut short, or not a model file",
            "copy it again, or pass models/<run>/model.pt",
        ) from None
    if isinstance(state, dict) and state.get("format") == RESUME_FORMAT:
        raise fail(
            f"a resume file of a training run ({RESUME_FORMAT}), not a model file",
            "pass the run's model file, models/<run>/model.pt",
        )
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        found = state.get("format", "no format tag") if isinstance(state, dict) else type(state).__name__
        other_version = isinstance(found, str) and found.startswith("forestseg-model/") and found != MODEL_FORMAT
        raise fail(
            f"not a {MODEL_FORMAT} model file ({found})",
            "it was written by another forestseg version: read it with that version, or retrain it with this one "
            "(`dvc repro`)"
            if other_version
            else "retrain it with this version (`dvc repro`), or pass models/<run>/model.pt",
            own=other_version,
        )
    if "weights" in state and state["weights"] is None and "message" in state:  # what train_member writes
        raise fail(
            f"run {state.get('run')} diverged and has no model ({state['message']})",
            "retrain it with the lr lowered as that says",
        )
    missing = [k for k in ("weights", "model", "normalizer", "tile_size", "threshold", "loss") if k not in state]
    if missing or state["weights"] is None:
        raise fail(
            f"a {MODEL_FORMAT} file without {', '.join(missing or ['weights'])}; it was not written by "
            "forestseg's training",
            "pass models/<run>/model.pt, or retrain (`dvc repro`)",
        )
    # files older than a field: what its absence meant (tile_shape: square tiles of tile_size)
    state = {**OLDER_FILES, "tile_shape": [state["tile_size"]] * 2, **state}
    problem = _field_problem(state)
    if problem:
        raise fail(f"{problem}; damaged or edited", "copy it again, or retrain (`dvc repro`)")
    return {**state, FILE_SHA256: digest}


MAX_TILE = 8192  # a model window's side: one such window's input is 0.8 GB in fp32
MIN_STD = 1e-4  # below the smallest channel std Normalizer.fit gives, 1e-3 (a one-colour training set)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _field_problem(state: dict) -> str | None:
    """What makes a tagged model file's contents unusable (hand-edited, damaged or foreign), or None."""
    weights = state["weights"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "its weights are not a mapping of tensors"
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        return f"{len(bad)} weight tensor(s) hold NaN or inf ({bad[0]})"
    if not (isinstance(state["loss"], str) and state["loss"] in LOSSES):
        return f"loss {state['loss']!r} is none of {', '.join(LOSSES)}"
    if not _number(state["threshold"]):
        return f"threshold {state['threshold']!r} is not a finite number"
    if not (_number(state["adapt_bn"]) and 0 <= state["adapt_bn"] <= 1):
        return f"adapt_bn {state['adapt_bn']!r} is not a number from 0 to 1"
    if state["precision"] not in PRECISIONS:
        return f"precision {state['precision']!r} is none of {', '.join(PRECISIONS)}"
    pixel = state["pixel_size_m"]
    low, high = PLAUSIBLE_PIXEL_M
    if pixel is not None and not (_number(pixel) and low <= pixel <= high):
        return f"pixel_size_m {pixel!r} is not a pixel side from {low:g} to {high:g} m"
    if not (
        isinstance(state["train_scenes"], (list, tuple)) and all(isinstance(x, str) for x in state["train_scenes"])
    ):
        return f"train_scenes {state['train_scenes']!r} is not a list of scene names"
    if not (isinstance(state["tile_size"], int) and 0 < state["tile_size"] <= MAX_TILE):
        return f"tile_size {state['tile_size']!r} is not a whole number of pixels from 1 to {MAX_TILE}"
    source = state["init_from"]
    if source is not None and not (
        isinstance(source, dict)
        and isinstance(source.get("path"), str)
        and isinstance(source.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", source["sha256"])
    ):
        return f"init_from {source!r} is not the path and SHA-256 of a model file"
    shape = state["tile_shape"]
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 2
        and all(isinstance(v, int) and 0 < v <= MAX_TILE for v in shape)
        and min(shape) == state["tile_size"]
    ):
        return f"tile_shape {shape!r} is not a tile's height and width in pixels, the shorter tile_size"
    norm = state["normalizer"]
    stats = [norm.get(k) for k in ("mean", "std")] if isinstance(norm, dict) else [None]
    if not all(isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_number, v)) for v in stats):
        return f"normalizer {norm!r} is not a mean and std of 3 finite numbers each"
    if not all(v >= MIN_STD for v in norm["std"]):
        return f"normalizer std holds a value below {MIN_STD:g}"
    if not isinstance(norm.get("per_tile", False), bool):
        return f"normalizer per_tile {norm['per_tile']!r} is not true or false"
    return None


def load_weights(model: torch.nn.Module, state: dict, path: str | Path, fix: str | None = None) -> None:
    """The weights of model file `state` (read from `path`) into `model`, built from its model params;
    one line if they do not fit, ending in `fix` (else: copy it again, or retrain), or for weights saved
    from a wrapped model in removing the wrappers' prefix."""
    try:
        model.load_state_dict(state["weights"])
    except (RuntimeError, TypeError, KeyError, AttributeError) as e:
        # torch lists every layer that does not fit, one per line: the first and how many more
        problems = [" ".join(line.split()) for line in str(e).split("\n\t")[1:]] or [" ".join(str(e).split())]
        more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
        # a prefix that torch.compile or DataParallel put on every name: said first, or it is cut off below
        names = [str(k) for k in state["weights"]] if isinstance(state.get("weights"), dict) else []
        wrapped = sorted({p for p in map(_wrapper_prefix, names) if p})  # "_orig_mod.module." for both
        why = (
            f"its weights' names start {wrapped[0]!r}: saved from a torch.compile'd or DataParallel model"
            if wrapped  # the cause, which the list below would cut off
            else f"{problems[0][:300]}{more}"
        )
        if wrapped:  # not damaged: the names of another program's save
            fix = f"remove {wrapped[0]!r} from the start of its weights' names (forestseg writes none)"
        raise ForestsegError(
            f"{path}: the weights do not match the model its params describe ({why}); "
            f"{fix or 'damaged or edited: copy it again, or retrain (`dvc repro`)'}"
        ) from None


WRAPPER_PREFIXES = ("_orig_mod", "module")  # torch.compile's and DataParallel's


def _wrapper_prefix(name: str) -> str:
    """The wrappers' prefix of a weight's name ("_orig_mod.module." of a compiled DataParallel model), or ""."""
    parts = name.split(".")
    k = 0
    while k < len(parts) - 1 and parts[k] in WRAPPER_PREFIXES:
        k += 1
    return "".join(f"{p}." for p in parts[:k])


def init_dvc_files(path: str | Path) -> list[Path]:
    """The .dvc files that would track `path` in init/ (`dvc add`): its own, or a folder's above it."""
    init = Path(path)
    return [p.with_name(p.name + ".dvc") for p in (init, *init.parents) if p.is_relative_to(INIT_DIR)]


# what a train.init_from that is no usable model file needs (init/README.md)
INIT_FIX = f"copy a finished run's model file (models/<run>/model.pt) into {INIT_DIR}/ and `dvc add` it"


def read_init(path: str | Path, model: dict, pixel_size_m: float | None = None) -> dict:
    """train.init_from: the model file at `path`, whose model params must equal `model` (the run's
    `ModelConfig.weights()`: arch, width, depth, batch_norm, input), since its weights start the run,
    and whose pixel size (where it records one) must be the data's `pixel_size_m` (where given):
    its filters learned trees at that size."""
    init = Path(path)  # relative to the project root, where stages run
    if not init.exists():
        tracked = next((f for f in init_dvc_files(init) if f.is_file()), None)  # tracked, not here: a fresh clone
        raise ForestsegError(
            f"params.yaml: train.init_from: {init}: no such file; "
            + (
                f"{tracked} tracks it: `dvc pull {init}` (or `dvc checkout` where the cache has it)"
                if tracked
                else f"copy a model file (models/<run>/model.pt) there and `dvc add {init}`"
            )
            + f" (see {INIT_DIR}/README.md)"
        )
    try:
        state = read_model(path, fix=INIT_FIX)
    except ForestsegError as e:
        raise ForestsegError(f"params.yaml: train.init_from: {e}") from None
    theirs_px = state["pixel_size_m"]
    if pixel_size_m is not None and theirs_px is not None and abs(theirs_px / pixel_size_m - 1) > SAME_PIXEL_SIZE:
        raise ForestsegError(
            f"params.yaml: train.init_from: {path} learned from {theirs_px:g} m pixels, and data.pixel_size_m says "
            f"the tiles' are {pixel_size_m:g} m: cut them at the model's (forestseg tile --pixel-size {theirs_px:g}) "
            "and set data.pixel_size_m to it, or start from a model of the data's pixel size"
        )
    theirs = state.get("model") if isinstance(state.get("model"), dict) else {}
    # the keys that shape the weights of this arch: study_unet's fixed layers read no width or depth
    arch = ARCHS.get(model.get("arch"))
    shaping = {"arch", "input"} | (arch.uses if arch else set(model))
    differ = [k for k in model if k in shaping and theirs.get(k) != model[k]]
    if differ:
        raise ForestsegError(
            f"params.yaml: train.init_from: {path} holds a model with "
            + ", ".join(f"{k} {theirs.get(k, 'unset')}" for k in differ)
            + "; this run's params say "
            + ", ".join(f"model.{k} {model[k]}" for k in differ)
            + ": set those model params to the file's, or start from a model file trained with these"
        )
    return state


def check_init(path: str | Path, model: dict) -> None:
    """train.init_from as a pipeline run may start from it: a model file of `model`'s params (read_init)
    that DVC tracks in init/, so every `dvc exp run`, queued experiment and machine sees the same file."""
    read_init(path, model)  # a model file first: `dvc add` is no advice for a README
    init = Path(path)
    # tracked: a .dvc file for it or a folder above it in init/; git-ignored is not enough
    if untracked_in_project(init) is not None or not any(f.is_file() for f in init_dvc_files(init)):
        raise ForestsegError(
            f"params.yaml: train.init_from: {init} is not tracked by DVC (no {init}.dvc): every `dvc exp run` "
            f"would commit the model file to git or leave it out, and queued experiments and other machines "
            f"cannot see it; run `dvc add {init}` and commit {init}.dvc ({INIT_DIR}/README.md)"
        )


def write_resume(path: str | Path, state: dict) -> None:
    write_torch(path, {"format": RESUME_FORMAT, **state})


def read_resume(path: str | Path, log: Callable[[str], None] = print) -> dict | None:
    """The resume file, or None if absent, unreadable or of another format (the run starts afresh)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():  # the run could never write its resume file there
        raise ForestsegError(f"{path}: is a folder where this run's resume file goes; remove it and rerun")
    try:
        state, _ = _load(path)
    except pickle.UnpicklingError:  # torch's text is a page of unsafe-loading advice: not for a scratch file
        log(f"{path} holds objects beyond a {RESUME_FORMAT} file (an older forestseg's resume file?); starting afresh")
        return None
    except Exception as e:  # truncated by a full disk, or not ours: start afresh rather than fail forever
        log(f"{path} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]}); starting afresh")
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        log(f"{path} is not a {RESUME_FORMAT} file; starting afresh")
        return None
    return state


def fingerprint(run_name: str, configs: list[dict], bf16: bool, code: list[Path], data: list[Path]) -> str:
    """What a resume file must match to be resumed: the run, its params and precision, the bytes of the
    code and of the data files. Content only (no paths or mtimes), so a copy of the project on
    another path or machine resumes its own runs and never someone else's."""
    h = hashlib.sha256(json.dumps([run_name, *configs, bf16], sort_keys=True).encode())
    for path in [*code, *data]:
        h.update(path.read_bytes())
    return h.hexdigest()
