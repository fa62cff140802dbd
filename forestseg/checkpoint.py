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
import json
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ForestsegError
from .io import write_torch

MODEL_FORMAT = "forestseg-model/1"
RESUME_FORMAT = "forestseg-resume/2"  # 2: forestseg.optim's optimizer state, no scheduler state


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)  # RNG states must stay on the CPU


def write_model(path: str | Path, weights: dict | None, meta: dict, **extra: Any) -> None:
    """The model file: `meta` = run, loss, threshold, adapt_bn, model params, normalizer, tile_size (see train);
    `weights` None for a run that diverged (predict refuses it, naming the run). Weights are written
    from the CPU, so a run's file has the same bytes (and DVC hash) whichever device trained it last."""
    if weights is not None:
        weights = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in weights.items()}
    write_torch(path, {"format": MODEL_FORMAT, "weights": weights, **meta, **extra})


def read_model(path: str | Path) -> dict:
    """The model file at `path`, checked; one-line ForestsegError for anything else."""
    path = Path(path)
    try:
        state = _load(path)
    except Exception as e:
        raise ForestsegError(
            f"{path}: cannot be read as a forestseg model file ({type(e).__name__}: {' '.join(str(e).split())}): "
            "damaged, cut short, or not a model file; copy it again, or pass models/<run>/model.pt"
        ) from None
    if isinstance(state, dict) and state.get("format") == RESUME_FORMAT:
        raise ForestsegError(
            f"{path}: a resume file of a training run ({RESUME_FORMAT}), not a model file; "
            "pass the run's model file, models/<run>/model.pt"
        )
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        found = state.get("format", "no format tag") if isinstance(state, dict) else type(state).__name__
        raise ForestsegError(
            f"{path}: not a {MODEL_FORMAT} model file ({found}); retrain it with this version "
            "(`dvc repro`), or pass models/<run>/model.pt"
        )
    if "weights" in state and state["weights"] is None and "message" in state:  # what train_member writes
        raise ForestsegError(
            f"{path}: run {state.get('run')} diverged and has no model ({state['message']}); "
            "lower optimizer.lr and retrain"
        )
    missing = [k for k in ("weights", "model", "normalizer", "tile_size", "threshold", "loss") if k not in state]
    if missing or state["weights"] is None:
        raise ForestsegError(
            f"{path}: a {MODEL_FORMAT} file without {', '.join(missing or ['weights'])}; it was not written by "
            "forestseg's training: pass models/<run>/model.pt, or retrain (`dvc repro`)"
        )
    return state


def load_weights(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """The weights of model file `state` (read from `path`) into `model`, built from its model params;
    one line if they do not fit."""
    try:
        model.load_state_dict(state["weights"])
    except (RuntimeError, TypeError, KeyError, AttributeError) as e:
        # torch lists every layer that does not fit, one per line: the first and how many more
        problems = [" ".join(line.split()) for line in str(e).split("\n\t")[1:]] or [" ".join(str(e).split())]
        more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise ForestsegError(
            f"{path}: the weights do not match the model its params describe ({problems[0][:300]}{more})"
        ) from None


def read_init(path: str | Path, model: dict) -> dict:
    """train.init_from: the model file at `path`, whose model params must equal `model` (the run's
    `ModelConfig.weights()`: arch, width, depth, batch_norm, input), since its weights start the run."""
    try:
        state = read_model(path)
    except ForestsegError as e:
        raise ForestsegError(f"params.yaml: train.init_from: {e}") from None
    theirs = state.get("model") if isinstance(state.get("model"), dict) else {}
    differ = [k for k in model if theirs.get(k) != model[k]]
    if differ:
        raise ForestsegError(
            f"params.yaml: train.init_from: {path} holds a model with "
            + ", ".join(f"{k} {theirs.get(k, 'unset')}" for k in differ)
            + "; this run's params say "
            + ", ".join(f"model.{k} {model[k]}" for k in differ)
            + ": set those model params to the file's, or start from a model file trained with these"
        )
    return state


def write_resume(path: str | Path, state: dict) -> None:
    write_torch(path, {"format": RESUME_FORMAT, **state})


def read_resume(path: str | Path, log: Callable[[str], None] = print) -> dict | None:
    """The resume file, or None if absent, unreadable or of another format (the run starts afresh)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = _load(path)
    except Exception as e:  # truncated by a full disk, or not ours: start afresh rather than fail forever
        log(f"{path} cannot be read ({type(e).__name__}: {e}); starting afresh")
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
