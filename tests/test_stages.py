"""stages/common.py: params read once per stage, and a params.yaml changed mid-stage is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import REPO

sys.path.insert(0, str(REPO / "stages"))
import common  # noqa: E402

from forestseg.config import ForestsegError  # noqa: E402


@pytest.fixture
def params_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "_READ", {})
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path / "params.yaml"


def edit(path, section: str, key: str, value) -> None:
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params))


def run_stage(fn) -> None:
    argv = sys.argv
    sys.argv = ["stage.py"]
    try:
        common.stage(fn)()
    finally:
        sys.argv = argv


def test_params_changed_while_a_stage_runs_fail_it(params_file, capsys) -> None:
    def body(argv):
        common.params("optimizer", "train")
        edit(params_file, "optimizer", "lr", 0.5)  # another `dvc exp run` writes params.yaml meanwhile

    with pytest.raises(SystemExit) as done:
        run_stage(body)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: params.yaml changed while this stage ran (optimizer.lr); its outputs were made "
        "with the old values and are not recorded"
    )
    assert err.count("\n") == 1


def test_a_params_file_changed_and_changed_back_between_two_reads_fails(params_file, capsys) -> None:
    """The second read saw other values than the file holds at the end, though its text is as at first."""
    original = params_file.read_text()

    def body(argv):
        common.params("train")
        edit(params_file, "optimizer", "lr", 0.5)
        common.params("optimizer")  # reads lr 0.5
        params_file.write_text(original)  # lr back, byte for byte

    with pytest.raises(SystemExit) as done:
        run_stage(body)
    assert done.value.code == 2
    assert "params.yaml changed while this stage ran (optimizer.lr)" in capsys.readouterr().err


@pytest.mark.parametrize("when", ["before the second read", "after the second read"])
def test_a_section_read_first_is_still_checked_after_a_read_of_another(params_file, capsys, when) -> None:
    """Each read adds its sections to those checked: a change to the first read's section fails the
    stage whether the second read saw it (the file's text then is what the end compares with) or not."""

    def body(argv):
        common.params("train")
        if when == "before the second read":
            edit(params_file, "train", "epochs", 99)
        common.params("optimizer")
        if when == "after the second read":
            edit(params_file, "train", "epochs", 99)

    with pytest.raises(SystemExit) as done:
        run_stage(body)
    assert done.value.code == 2
    assert "params.yaml changed while this stage ran (train.epochs)" in capsys.readouterr().err


def test_a_change_to_a_section_the_stage_did_not_read_is_fine(params_file) -> None:
    def body(argv):
        common.params("train")
        edit(params_file, "optimizer", "lr", 0.5)

    run_stage(body)  # no SystemExit


SCRIPT = """
import atexit, os, signal, sys
from pathlib import Path
sys.path.insert(0, {stages!r})
from common import stage
from forestseg.errors import ForestsegError
from forestseg.io import write_with


def killed_mid_write(tmp):
    tmp.write_text("half")
    os.kill(os.getpid(), signal.SIGTERM)  # a timeout or Slurm's time limit, while the file is written


@stage
def main(argv):
    atexit.register(print, "finalized")
    print("wrote", argv[0])  # block-buffered on a pipe: must still arrive
    if argv[0] == "bad":
        raise ForestsegError("bad input")
    if argv[0] == "bad\\nname":  # a file name with a newline, as the stage names it
        raise ForestsegError("data/bad\\nname.jpg: cannot be decoded")
    if argv[0] == "ctrl-c":
        raise KeyboardInterrupt  # what SIGINT raises in the main thread
    if argv[0] == "sigterm":
        write_with(Path(argv[1]) / "out.txt", killed_mid_write)
    if argv[0] == "pipe-big":
        print("x" * 1_000_000)  # past the pipe's buffer: the closed pipe is met inside the stage


if __name__ == "__main__":
    main()
"""


INTERRUPTED = (
    "stage.py: interrupted; no output is half-written (each is written atomically): rerun to go on "
    "(a train run resumes after its last finished epoch)\n"
)


@pytest.mark.parametrize(
    ("arg", "rc", "err"),
    [
        ("out.csv", 0, ""),
        ("bad", 2, "error: bad input\n"),
        ("bad\nname", 2, "error: data/bad\\nname.jpg: cannot be decoded\n"),  # still one line
        ("ctrl-c", 130, INTERRUPTED),
    ],
)
def test_a_stage_process_ends_without_finalization_and_loses_no_output(tmp_path, arg, rc, err) -> None:
    """Python's finalization (about 1 s with torch loaded) is skipped; stdout on a pipe still arrives."""
    import os

    script = tmp_path / "stage.py"
    script.write_text(SCRIPT.format(stages=str(REPO / "stages")))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = subprocess.run([sys.executable, str(script), arg], capture_output=True, text=True, env=env, cwd=REPO)
    assert (out.returncode, out.stdout, out.stderr) == (rc, f"wrote {arg}\n", err)


def test_a_sigterm_mid_write_ends_a_stage_with_one_line_and_no_temp_file(tmp_path) -> None:
    script, out = tmp_path / "stage.py", tmp_path / "out"
    script.write_text(SCRIPT.format(stages=str(REPO / "stages")))
    out.mkdir()
    done = subprocess.run([sys.executable, str(script), "sigterm", str(out)], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (143, INTERRUPTED.replace("interrupted", "terminated (SIGTERM)"))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("arg", ["pipe-small", "pipe-big"])
def test_a_stage_piped_into_a_reader_that_stopped_exits_141_quietly(tmp_path, arg) -> None:
    """`python stages/x.py ... | head`: as a shell reports SIGPIPE, whether the closed pipe is met at
    the end (a small output, flushed on exit) or while the stage prints."""
    import os

    script = tmp_path / "stage.py"
    script.write_text(SCRIPT.format(stages=str(REPO / "stages")))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, str(script), arg], stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_stage_called_in_process_leaves_the_callers_sigterm_handler(tmp_path) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    run_stage(lambda argv: None)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stage_under_a_profiler_exits_normally_so_the_profile_is_written(tmp_path) -> None:
    script, profile = tmp_path / "stage.py", tmp_path / "stage.prof"
    script.write_text(SCRIPT.format(stages=str(REPO / "stages")))
    cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), str(script), "out.csv"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert (out.returncode, out.stdout) == (0, "wrote out.csv\nfinalized\n")
    assert profile.stat().st_size > 0


@pytest.mark.parametrize("module", ["train", "overlays", "forestseg.cli"])
def test_the_train_and_overlays_stages_and_the_cli_do_not_import_pandas(module: str) -> None:
    """Importing pandas takes ~0.5 s: each of the grid's train stages would pay it for two small tables,
    and `forestseg predict` for forest_area.csv (evaluate imports it, to index a folder)."""
    code = f"import sys; sys.path.insert(0, 'stages'); import {module}; print('pandas' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_aggregate_removes_the_resume_files_of_finished_runs(tmp_path, monkeypatch, capsys) -> None:
    """A run killed, then restored by DVC from its cache, never reaches the train stage's own removal.
    Runs not in the grid keep theirs (an experiment on fewer seeds, then the grid back: they resume)."""
    from forestseg.config import GridConfig

    monkeypatch.chdir(tmp_path)
    for run in ("bce-adam-0", "bce-adam-1", "mse-sgd-0", "mse-adam-0"):
        (tmp_path / ".resume").mkdir(exist_ok=True)
        (tmp_path / ".resume" / f"{run}.pt").write_bytes(b"resume")
    (tmp_path / ".resume" / "notes.pt").write_bytes(b"not a run's")
    (tmp_path / "runs/bce-adam-0").mkdir(parents=True)
    (tmp_path / "runs/bce-adam-0/metrics.json").write_text("{}")  # done; bce-adam-1 is still training
    grid = GridConfig(loss=("bce",), optimizer=("adam",), seed=(0, 1))
    common.drop_resume_files(grid, "runs")
    left = ["bce-adam-1.pt", "mse-adam-0.pt", "mse-sgd-0.pt", "notes.pt"]
    assert sorted(p.name for p in (tmp_path / ".resume").iterdir()) == left
    assert capsys.readouterr().out == "removed the resume files of 1 finished run(s) in .resume: bce-adam-0\n"


def test_clear_temps_removes_killed_writes_beside_and_in_the_outputs(tmp_path) -> None:
    """A killed aggregate leaves hidden temps of REPORT.md, metrics/*.json and plots/*.png; the next
    stage run removes them (its own live ones, and other files, stay)."""
    from conftest import dead_temp_prefix

    from forestseg.io import temp_prefix

    (tmp_path / "metrics").mkdir()
    (tmp_path / "plots" / "overlays").mkdir(parents=True)
    dead = [
        tmp_path / (dead_temp_prefix("REPORT") + "x1.tmp.md"),
        tmp_path / "metrics" / (dead_temp_prefix("headline") + "x2.tmp.json"),
        tmp_path / "plots" / (dead_temp_prefix("test_iou") + "x3.tmp.png"),
    ]
    kept = [
        tmp_path / "plots" / "overlays" / (dead_temp_prefix("a") + "x4.tmp.png"),  # not a folder this stage writes
        tmp_path / "metrics" / (temp_prefix("summary") + "x5.tmp.json"),  # this process's: being written
        tmp_path / "metrics" / ".hidden",
    ]
    for path in dead + kept:
        path.write_text("?")
    common.clear_temps(tmp_path / "metrics", tmp_path / "plots", tmp_path / "REPORT.md")
    assert [p.exists() for p in dead] == [False] * 3 and all(p.exists() for p in kept)


@pytest.mark.parametrize(
    "section, key, value, says",
    [
        ("report", "exampels", 8, "report.exampels: unknown key"),
        ("grid", "seed", [0, 0], "grid.seed"),
    ],
)
def test_a_training_stage_checks_the_sections_later_stages_read(params_file, section, key, value, says) -> None:
    """train checks report and grid before it trains: their own stages would refuse them after the grid."""
    assert set(common.check_all()) == {"data", "synth", "split", "model", "optimizer", "train", "grid", "report"}
    edit(params_file, section, key, value)
    with pytest.raises(common.ConfigError, match=says):
        common.check_all()
    assert common._READ == {}  # checked, not read: no params of the stage


def test_a_params_file_not_in_utf8_is_one_line(params_file, capsys) -> None:
    """An editor's Latin-1 byte (a comment's 'é'): one line naming the file, its line and the byte."""
    params_file.write_bytes(b"# caf\xe9\n" + params_file.read_bytes())
    with pytest.raises(SystemExit) as done:
        run_stage(lambda argv: common.params("train"))
    assert done.value.code == 2
    assert capsys.readouterr().err == "error: params.yaml: not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8\n"


def test_the_aggregate_stage_clears_what_killed_or_shrunk_runs_left_before_it_aggregates(
    params_file, monkeypatch, capsys
) -> None:
    """Run folders of members that left the grid, resume files of finished runs and killed writes' temps
    are gone before the runs are aggregated."""
    import aggregate as stage_module

    tmp = params_file.parent
    edit(params_file, "grid", "seed", [0])
    (tmp / "runs/bce-adam-0").mkdir(parents=True)
    (tmp / "runs/bce-adam-0/metrics.json").write_text("{}")
    (tmp / "runs/gone-adam-0").mkdir()  # a member no longer in the grid
    (tmp / ".resume").mkdir()
    (tmp / ".resume/bce-adam-0.pt").write_bytes(b"resume")
    cleared = []
    monkeypatch.setattr(stage_module, "clear_temps", lambda *paths: cleared.extend(map(str, paths)))
    monkeypatch.setattr(stage_module, "read_json", lambda path: {})
    monkeypatch.setattr(stage_module, "describe_setup", lambda *a: {})
    seen = {}

    def aggregate(runs, runs_dir, *rest):
        seen["runs"] = sorted(p.name for p in (tmp / runs_dir).iterdir())
        seen["resume"] = sorted(p.name for p in (tmp / ".resume").iterdir())
        return {}

    monkeypatch.setattr(stage_module, "aggregate", aggregate)
    monkeypatch.setattr(stage_module, "format_summary", lambda summary: "done")
    monkeypatch.setattr(sys, "argv", ["aggregate.py", "runs", "index.json", "split.json", "metrics", "plots", "R.md"])
    stage_module.main()
    assert seen == {"runs": ["bce-adam-0"], "resume": []}
    assert cleared[:3] == ["metrics", "plots", "R.md"] and "runs/bce-adam-0" in cleared


def test_a_stage_given_too_many_arguments_says_its_usage() -> None:
    assert common.args(["a", "b"], "IN", "OUT") == ["a", "b"]
    for argv in (["a"], ["a", "b", "c"]):
        with pytest.raises(ForestsegError, match=rf"^usage: .* IN OUT \(got {len(argv)} arguments\)$"):
            common.args(argv, "IN", "OUT")
