"""What every stage shares: reading params.yaml into validated sections, one-line errors."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn


def _while_starting(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while a stage script loads torch (~1 s, every stage of every run): one line
    and the shell's exit status, not a traceback from inside an import; nothing is written yet."""
    print(f"{Path(sys.argv[0]).name}: stopped while starting; nothing was written", file=sys.stderr)
    os._exit(130 if signum == signal.SIGINT else 143)


def _end_with_dvc() -> None:
    """Under DVC (which sets DVC_STAGE), ask Linux to send this stage SIGTERM when its parent, the dvc
    process, ends: DVC passes no SIGTERM (or SIGKILL) on, and a stage left running would go on writing
    a run's outputs into the workspace under the next experiment. The stage then stops as on any
    SIGTERM (one line, exit 143, no temp file left)."""
    if "DVC_STAGE" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # linux/prctl.h
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # dvc ended before the request was made: init adopted this stage
        os.kill(os.getpid(), signal.SIGTERM)


# a Ctrl-C that the caller set to be ignored (`trap '' INT`, a script's `dvc repro &`) stays ignored
_INTERRUPTS = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


# only for a stage script run as a program: a test importing this module keeps its own handlers
if Path(getattr(sys.modules["__main__"], "__file__", None) or "").resolve().parent == Path(__file__).resolve().parent:
    if _INTERRUPTS:
        signal.signal(signal.SIGINT, _while_starting)
    signal.signal(signal.SIGTERM, _while_starting)
    _end_with_dvc()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from forestseg.config import SECTIONS, ConfigError, ForestsegError, GridConfig, load_sections  # noqa: E402
from forestseg.errors import BROKEN_PIPE, Terminated, one_line, quiet_stdout, stopped, terminate  # noqa: E402
from forestseg.io import clear_stale_temps, load_yaml, read_utf8, remove_stale_runs  # noqa: E402

RESUME_DIR = Path(".resume")  # train's scratch: git- and dvc-ignored, never a DVC output

# per params file this stage read: its text then, and the sections it read, as parsed (checked at its end)
_READ: dict[str, tuple[str, dict[str, Any]]] = {}
_PARSED: dict[str, tuple[str, Any]] = {}  # per params file, its last text and that text parsed


def _parse(path: str, text: str) -> Any:
    """`text` (of `path`) parsed, once per text: ruamel's pure loader takes ~70 ms a read."""
    if path not in _PARSED or _PARSED[path][0] != text:
        _PARSED[path] = (text, load_yaml(text, path))
    return _PARSED[path][1]


def _read(path: str) -> str:
    try:
        return read_utf8(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror}); run from the project root") from None


def params(*sections: str, path: str = "params.yaml") -> tuple:
    """The named sections of params.yaml as validated, frozen dataclasses."""
    text = _read(path)
    if path in _READ:  # read before in this stage: what it read then must not have changed since
        _check_unchanged(path, text)
    raw = _parse(path, text)
    out = load_sections(raw, *sections)
    earlier = _READ[path][1] if path in _READ else {}
    _READ[path] = (text, {**earlier, **{s: raw[s] for s in sections}})
    return out


def check_all(path: str = "params.yaml") -> dict[str, Any]:
    """Every section of params.yaml, validated, by name: for a stage about to train, so that a bad value
    in a section it does not depend on (report, grid) stops it now, not after the grid trained, when
    that section's own stage would refuse it. Checked, not read: changing them reruns nothing here."""
    raw = _parse(path, _read(path))
    return dict(zip(SECTIONS, load_sections(raw, *SECTIONS)))


def drop_runs_not_in(grid: GridConfig, folder: str | Path, what: str) -> None:
    """Remove the run folders under `folder` of members no longer in `grid` (io.remove_stale_runs), saying which."""
    removed = remove_stale_runs((run.name for run in grid.runs()), folder)
    if removed:
        print(f"removed {len(removed)} {what} folder(s) of {folder} not in the grid: {', '.join(removed)}")


def clear_temps(*paths: str | Path) -> None:
    """Remove the temp files that killed runs left beside each output path (its atomic writes' temps)
    and, for a folder, in it: hidden and git-ignored, they would stay for good otherwise."""
    for path in map(Path, paths):
        for folder in (path.parent, path):
            if folder.is_dir():
                clear_stale_temps(folder)


def drop_resume_files(grid: GridConfig, runs_dir: str | Path) -> None:
    """Remove RESUME_DIR's files of the grid's runs that are done (their metrics.json is there). The train
    stage removes its own when it ends; this catches a run killed and later restored by DVC from its
    cache (the stage does not run, so a half-run's file would stay, and a later `--force` would resume
    from it). A run in training has no metrics.json: DVC removed its outputs. Runs not in the grid keep
    theirs: an experiment on fewer seeds must not throw away a killed run's epochs."""
    removed = []
    for run in grid.runs():
        path = RESUME_DIR / f"{run.name}.pt"
        if path.is_file() and (Path(runs_dir) / run.name / "metrics.json").is_file():
            path.unlink()
            removed.append(run.name)
    if removed:
        print(f"removed the resume files of {len(removed)} finished run(s) in {RESUME_DIR}: {', '.join(removed)}")


def _check_unchanged(path: str, now_text: str) -> None:
    """Fail if a section this stage read from `path` differs in `now_text`, the file's text now."""
    text, sections = _READ[path]
    if now_text == text:  # the common case, without parsing again (ruamel's pure loader: ~70 ms a read)
        return
    now_all = _parse(path, now_text) or {}
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


def _check_params_unchanged() -> None:
    """DVC records params.yaml as it is when a stage ends: if it changed while the stage ran (two
    `dvc exp run` at once in one checkout), the outputs were made with other values than DVC would
    record, so fail instead of letting a wrong result into dvc.lock and the cache."""
    for path in _READ:
        _check_unchanged(path, _read(path))


def _watched() -> bool:
    """A profiler, coverage or a debugger watches this process (and writes at exit): sys.setprofile or
    sys.settrace, or from Python 3.12 sys.monitoring, which cProfile and coverage use there."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(i) is not None for i in range(6))


def _end_process(code: int) -> NoReturn:
    """Exit without Python's finalization. With torch loaded, tearing the interpreter and torch's
    libraries down takes about a second (`import torch` then exit: 3.46 s; with os._exit: 2.48 s, best
    of 5 on an AVX2 EPYC), paid by every train, aggregate and overlays stage of every run. Nothing is
    lost: a stage's outputs are complete when fn returns (io writes them atomically, files closed),
    and no forestseg code registers exit handlers; only the stdio buffers are left to flush."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # a reader that stopped (`| head`), met here when the output was small
            code = code or BROKEN_PIPE
        except (OSError, ValueError):  # output lost (a full disk): as Python says it, 120
            code = code or 120
    os._exit(code)


def stage(fn: Callable[[list[str]], None]) -> Callable[[], None]:
    """Run fn(argv); a ForestsegError becomes one clear line on stderr and exit status 2. When fn is
    the script this process runs (its __main__), the process then ends at once (_end_process), unless
    a profiler or tracer (`python -m cProfile`, coverage) needs its exit handlers."""

    @functools.wraps(fn)
    def main() -> None:
        code = 0
        # a timeout, `kill` or Slurm's time limit (SIGTERM) unwinds as Ctrl-C does: temp files go with it
        before = signal.signal(signal.SIGTERM, terminate)
        # past start-up a Ctrl-C unwinds as KeyboardInterrupt (temp files go with it), unless it is ignored
        interrupt = signal.signal(signal.SIGINT, signal.default_int_handler if _INTERRUPTS else signal.SIG_IGN)
        try:
            fn(sys.argv[1:])
            _check_params_unchanged()
        except ForestsegError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            code = 2
        except (KeyboardInterrupt, Terminated) as e:  # a traceback from inside torch says nothing useful
            how, code = stopped(e)
            print(
                f"{Path(sys.argv[0]).name}: {how}; no output is half-written (each is written atomically): "
                "rerun to go on (a train run resumes after its last finished epoch)",
                file=sys.stderr,
            )
        except BrokenPipeError:  # its output piped into a reader that stopped (`| head`): nothing to say
            quiet_stdout()
            code = BROKEN_PIPE
        finally:
            signal.signal(signal.SIGTERM, before)  # a stage called in-process leaves its caller's handlers
            signal.signal(signal.SIGINT, interrupt)
        if fn.__module__ == "__main__" and not _watched():  # the script this process runs
            _end_process(code)
        if code:
            sys.exit(code)

    return main


def args(argv: list[str], *names: str) -> list[str]:
    if len(argv) != len(names):
        raise ForestsegError(f"usage: {Path(sys.argv[0]).name} {' '.join(names)} (got {len(argv)} arguments)")
    return argv
