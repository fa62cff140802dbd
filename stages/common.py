"""What every stage shares: reading params.yaml into validated sections, one-line errors."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from forestseg.config import ConfigError, ForestsegError, load_sections  # noqa: E402
from forestseg.io import load_yaml, remove_stale_runs  # noqa: E402

# per params file this stage read: its text then, and the sections it read, as parsed (checked at its end)
_READ: dict[str, tuple[str, dict[str, Any]]] = {}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror}); run from the project root") from None


def params(*sections: str, path: str = "params.yaml") -> tuple:
    """The named sections of params.yaml as validated, frozen dataclasses."""
    text = _read(path)
    raw = load_yaml(text, path)
    out = load_sections(raw, *sections)
    _READ.setdefault(path, (text, {}))[1].update({s: raw[s] for s in sections})
    return out


def drop_runs_not_in(grid: Any, folder: str | Path, what: str) -> None:
    """Remove the run folders under `folder` of members no longer in `grid` (io.remove_stale_runs), saying which."""
    removed = remove_stale_runs((run.name for run in grid.runs()), folder)
    if removed:
        print(f"removed {len(removed)} {what} folder(s) of {folder} not in the grid: {', '.join(removed)}")


def _check_params_unchanged() -> None:
    """DVC records params.yaml as it is when a stage ends: if it changed while the stage ran (two
    `dvc exp run` at once in one checkout), the outputs were made with other values than DVC would
    record, so fail instead of letting a wrong result into dvc.lock and the cache."""
    for path, (text, sections) in _READ.items():
        now_text = _read(path)
        if now_text == text:  # the common case, without parsing again (ruamel's pure loader: ~70 ms a read)
            continue
        now_all = load_yaml(now_text, path) or {}
        for section, before in sections.items():
            now = now_all.get(section)
            if now == before:
                continue
            old, new = before or {}, now or {}
            keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k)) if isinstance(now, dict) else []
            raise ForestsegError(
                f"{path} changed while this stage ran ({', '.join(f'{section}.{k}' for k in keys) or section}); "
                "its outputs were made with the old values and are not recorded. Run one `dvc exp run` at a "
                "time in a checkout (queue the others with `dvc exp run --queue`), then rerun"
            )


def _end_process(code: int) -> NoReturn:
    """Exit without Python's finalization. With torch loaded, tearing the interpreter and torch's
    libraries down takes about a second (`import torch` then exit: 3.46 s; with os._exit: 2.48 s, best
    of 5 on an AVX2 EPYC), paid by every train, aggregate and overlays stage of every run. Nothing is
    lost: a stage's outputs are complete when fn returns (io writes them atomically, files closed),
    and no forestseg code registers exit handlers; only the stdio buffers are left to flush."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


def stage(fn: Callable[[list[str]], None]) -> Callable[[], None]:
    """Run fn(argv); a ForestsegError becomes one clear line on stderr and exit status 2. When fn is
    the script this process runs (its __main__), the process then ends at once (_end_process), unless
    a profiler or tracer (`python -m cProfile`, coverage) needs its exit handlers."""

    @functools.wraps(fn)
    def main() -> None:
        code = 0
        try:
            fn(sys.argv[1:])
            _check_params_unchanged()
        except ForestsegError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
        # the script this process runs, and no profiler, coverage or debugger waiting to write at exit
        if fn.__module__ == "__main__" and sys.getprofile() is None and sys.gettrace() is None:
            _end_process(code)
        if code:
            sys.exit(code)

    return main


def args(argv: list[str], *names: str) -> list[str]:
    if len(argv) != len(names):
        raise ForestsegError(f"usage: {Path(sys.argv[0]).name} {' '.join(names)} (got {len(argv)} arguments)")
    return argv
