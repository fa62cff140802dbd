"""stages/common.py: params read once per stage, and a params.yaml changed mid-stage is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import yaml
from conftest import REPO

sys.path.insert(0, str(REPO / "stages"))
import common  # noqa: E402

from forestseg.config import ForestsegError, Run  # noqa: E402


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


def with_argv(call: Callable[[], None], *argv: str) -> None:
    """`call()` with sys.argv set to `argv` (as a stage script sees its command line), restored after."""
    old = sys.argv
    sys.argv = list(argv)
    try:
        call()
    finally:
        sys.argv = old


def run_stage(fn) -> None:
    with_argv(common.stage(fn), "stage.py")


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


def test_clear_temps_removes_killed_writes_beside_and_in_the_outputs(tmp_path, capsys) -> None:
    """A killed aggregate leaves hidden temps of REPORT.md, metrics/*.json and plots/*.png; the next
    stage run removes them, and says so (its own live ones, and other files, stay)."""
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
    said = capsys.readouterr().out.splitlines()
    assert sorted(said) == sorted(
        f"note: removed 1 temp file(s) or folder(s) that a killed earlier run left in {folder}"
        for folder in (tmp_path, tmp_path / "metrics", tmp_path / "plots")
    )


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
    edit(params_file, "grid", "optimizer", ["adam"])
    edit(params_file, "optimizer", "momentum", 0.9)  # said, not refused: no optimizer of the grid uses it
    (tmp / "runs/bce-adam-0").mkdir(parents=True)
    (tmp / "runs/bce-adam-0/metrics.json").write_text("{}")
    (tmp / "runs/gone-adam-0").mkdir()  # a member no longer in the grid
    (tmp / ".resume").mkdir()
    (tmp / ".resume/bce-adam-0.pt").write_bytes(b"resume")
    cleared = []
    monkeypatch.setattr(stage_module, "clear_temps", lambda *paths: cleared.extend(map(str, paths)))
    monkeypatch.setattr(stage_module, "read_json", lambda path: {})
    setups = []
    monkeypatch.setattr(stage_module, "describe_setup", lambda *a: setups.append(a) or {})
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
    # REPORT.md's setup names only what the grid's runs used (its momentum is left out here)
    assert [a[-1].runs() for a in setups] == [[Run("mse", "adam", 0), Run("bce", "adam", 0)]]
    assert cleared[:3] == ["metrics", "plots", "R.md"] and "runs/bce-adam-0" in cleared
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "note: optimizer.momentum 0.9 has no effect: no optimizer of grid.optimizer uses it"
    assert out[-1] == "done; report in R.md"  # the stage's summary, then where the report is


def test_a_stage_given_too_many_arguments_says_its_usage() -> None:
    assert common.args(["a", "b"], "IN", "OUT") == ["a", "b"]
    for argv in (["a"], ["a", "b", "c"]):
        with pytest.raises(ForestsegError, match=rf"^usage: .* IN OUT \(got {len(argv)} arguments\)$"):
            common.args(argv, "IN", "OUT")


TINY_SYNTH = {"scenes": 4, "grid": 2, "tile_size": 32}  # 16 pairs of 32 px tiles: a second to index


def run_script(module: ModuleType, *argv: str) -> None:
    """Stage `module`'s main run in-process, as `python stages/<name>.py ARGV...` would run it."""
    with_argv(module.main, f"{module.__name__}.py", *argv)


def litter(*folders: Path) -> list[Path]:
    """A killed write's temp file in each folder (a process of this machine that has ended made it)."""
    from conftest import dead_temp_prefix

    paths = []
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / (dead_temp_prefix("out") + f"x{i}.tmp.json"))
        paths[-1].write_text("{")
    return paths


@pytest.fixture
def synthetic(params_file: Path, capsys: pytest.CaptureFixture) -> Path:
    """params.yaml with a tiny synthetic set, which the synth stage has written to data/synthetic."""
    import synth

    for key, value in TINY_SYNTH.items():
        edit(params_file, "synth", key, value)
    run_script(synth, "data/synthetic")
    return params_file.parent


def test_the_synth_stage_says_how_many_pairs_it_wrote(synthetic, capsys) -> None:
    """The count is the pairs written (scenes x grid x grid), not the scenes."""
    assert capsys.readouterr().out == "synth: wrote 16 pairs from 4 scenes to data/synthetic\n"
    assert len(list((synthetic / "data/synthetic/images").iterdir())) == 16


def test_the_index_and_split_stages_write_their_reports_and_clear_killed_writes(synthetic, capsys) -> None:
    """Each stage removes what a killed run of it left beside and in its outputs (index: data/, its packed/
    and metrics/; split: data/ and metrics/), writes its report json and says what it found."""
    import index
    import split

    from forestseg.dataset import format_report, format_split

    tmp = synthetic
    capsys.readouterr()
    dead = litter(tmp / "data", tmp / "data/packed", tmp / "metrics")
    run_script(index, "data/synthetic", "data", "metrics/index.json")
    report = json.loads((tmp / "metrics/index.json").read_text())
    assert report["valid"] == 16 and (tmp / "data/packed/images.npy").is_file()
    noted = "note: removed 1 temp file(s) or folder(s) that a killed earlier run left in {}\n".format
    said = capsys.readouterr().out
    assert said.endswith(format_report(report) + "\n")
    assert sorted(said.splitlines(keepends=True)[:-1]) == sorted(map(noted, ("data", "data/packed", "metrics")))
    assert [p.exists() for p in dead] == [False] * 3

    dead = litter(tmp / "data", tmp / "metrics")
    run_script(split, "data", "metrics/split.json")
    summary = json.loads((tmp / "metrics/split.json").read_text())
    assert summary["train"]["tiles"] + summary["test"]["tiles"] + summary.get("val", {}).get("tiles", 0) == 16
    (cfg,) = common.params("split")
    assert capsys.readouterr().out == "".join(map(noted, ("data", "metrics"))) + format_split(summary, cfg) + "\n"
    assert [p.exists() for p in dead] == [False] * 2


def test_the_index_stage_refuses_untracked_data_before_it_writes_anything(synthetic, monkeypatch, capsys) -> None:
    """data.source inside the project and not tracked by DVC is refused with one line, and the stage
    writes nothing first (no packed arrays, no index.json for DVC to take as a result)."""
    import index

    from forestseg.dataset import DataError

    def refuse(source) -> None:
        raise DataError(f"data.source {source} is inside the project but not tracked by DVC")

    monkeypatch.setattr(index, "check_tracked", refuse)
    with pytest.raises(SystemExit) as done:
        run_script(index, "data/synthetic", "data", "metrics/index.json")
    assert done.value.code == 2
    assert capsys.readouterr().err == "error: data.source data/synthetic is inside the project but not tracked by DVC\n"
    assert not (synthetic / "metrics/index.json").exists() and not (synthetic / "data/packed").exists()


def test_the_check_stage_refuses_a_section_no_other_stage_reads(params_file, capsys) -> None:
    """check is the only stage that reads all of params.yaml: a misspelt section must fail it (else
    `dvc repro` says "up to date" with the edit ignored)."""
    import check

    run_script(check)
    assert capsys.readouterr().out == (
        "check: every section of params.yaml is valid (data, synth, split, model, optimizer, train, grid, report)\n"
    )
    params_file.write_text(params_file.read_text() + "trian:\n  epochs: 3\n")
    with pytest.raises(SystemExit) as done:
        run_script(check)
    assert done.value.code == 2
    assert capsys.readouterr().err.startswith("error: params.yaml: trian: unknown section; valid sections: data,")


@pytest.mark.parametrize(
    ("name", "usage"),
    [
        ("check", ""),
        ("synth", "OUT_DIR"),
        ("index", "SOURCE DATA_DIR REPORT_JSON"),
        ("split", "DATA_DIR SUMMARY_JSON"),
        ("train", "LOSS OPTIMIZER SEED DATA_DIR RUNS_DIR MODELS_DIR"),
        ("aggregate", "RUNS_DIR INDEX_JSON SPLIT_JSON METRICS_DIR PLOTS_DIR REPORT_MD"),
        ("overlays", "MODELS_DIR DATA_DIR SUMMARY_JSON SCENES_CSV OUT_DIR"),
    ],
)
def test_every_stage_given_an_argument_too_many_says_its_usage_and_writes_nothing(
    params_file, capsys, name: str, usage: str
) -> None:
    """A stage run by hand (`python stages/<name>.py ...`) with the wrong arguments says its usage in one
    line before it reads or writes anything, not a traceback or a run on the first few of them."""
    import importlib

    argv = [*usage.split(), "extra"]
    with pytest.raises(SystemExit) as done:
        run_script(importlib.import_module(name), *argv)
    assert done.value.code == 2
    assert capsys.readouterr().err == f"error: usage: {name}.py {usage} (got {len(argv)} arguments)\n"
    assert [p.name for p in params_file.parent.iterdir()] == ["params.yaml"]


@pytest.mark.parametrize("worst", [["12", "7"], []])
def test_the_overlays_stage_drops_models_not_in_the_grid_and_draws_on_the_runs_device(
    params_file, monkeypatch, capsys, worst: list[str]
) -> None:
    """Model folders of members that left the grid are gone before it draws (its `models` dependency then
    holds the grid's alone, as in a clone); killed writes' temps of the output folder and of each model
    folder are cleared; both figures are drawn with the device the runs trained on; it says what it drew."""
    import overlays

    tmp = params_file.parent
    edit(params_file, "grid", "seed", [0])
    edit(params_file, "train", "device", "cpu")  # not the default auto, which a stage ignoring it would pick
    (tmp / "models/bce-adam-0").mkdir(parents=True)
    (tmp / "models/gone-adam-0").mkdir()
    (tmp / "models/gone-adam-0/model.pt").write_bytes(b"model")
    cleared = []
    monkeypatch.setattr(overlays, "clear_temps", lambda *paths: cleared.extend(map(str, paths)))
    monkeypatch.setattr(overlays, "read_json", lambda path: {"combinations": {"bce-adam": {}}})
    monkeypatch.setattr(overlays, "pick_device", lambda pref: f"device {pref}")
    seen = {}

    def write_overlays(models_dir: Path, layout, combinations: dict, cfg, out_dir: Path, device) -> int:
        seen["models"] = sorted(p.name for p in models_dir.iterdir())
        seen["overlays"] = (combinations, str(out_dir), device)
        return 3

    def write_worst_scenes(models_dir: Path, layout, summary: dict, scenes_csv: Path, cfg, path: Path, device):
        seen["worst"] = (str(scenes_csv), str(path), device)
        return worst

    monkeypatch.setattr(overlays, "write_overlays", write_overlays)
    monkeypatch.setattr(overlays, "write_worst_scenes", write_worst_scenes)
    run_script(overlays, "models", "data", "metrics/summary.json", "metrics/scenes.csv", "plots/overlays")
    device = "device cpu"
    assert seen == {
        "models": ["bce-adam-0"],
        "overlays": ({"bce-adam": {}}, "plots/overlays", device),
        "worst": ("metrics/scenes.csv", "plots/overlays/worst_scenes.png", device),
    }
    assert cleared == ["plots/overlays", "models/bce-adam-0"]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "removed 1 model folder(s) of models not in the grid: gone-adam-0"
    assert out[1] == "overlays: wrote plots/overlays/<combination>.png for 3 test tiles"
    assert out[2] == (
        "overlays: wrote plots/overlays/worst_scenes.png for scenes 12, 7"
        if worst
        else "overlays: metrics/scenes.csv has no scene (no per-scene counts of the best runs): no worst_scenes.png"
    )


@pytest.mark.parametrize(
    ("member", "first", "epochs"),
    [(["mse", "adam", "0"], True, 2), (["bce", "adam", "1"], False, 0)],  # 0: diverged in its first epoch
)
def test_the_train_stage_writes_its_runs_outputs_then_drops_its_resume_file(
    params_file, monkeypatch, capsys, member: list[str], first: bool, epochs: int
) -> None:
    """history.csv without the wall-clock columns (the same numbers give the same bytes), metrics.json and
    scenes.csv in the member's own run folder, the model in its own model folder, the stage's own code in
    the resume fingerprint, killed writes' temps cleared, the init file checked, the resume file gone once
    the outputs exist; the grid's notes said once, by its first member."""
    import train

    from forestseg.train import HISTORY_COLUMNS, SCENE_COLUMNS, TIMING_COLUMNS

    tmp = params_file.parent
    edit(params_file, "grid", "optimizer", ["adam"])
    edit(params_file, "optimizer", "momentum", 0.9)  # no optimizer of the grid uses it: a note
    edit(params_file, "train", "init_from", "init/start.pt")
    name = "-".join(member)
    (tmp / ".resume").mkdir()
    (tmp / f".resume/{name}.pt").write_bytes(b"resume")
    checked, cleared, seen = [], [], {}
    monkeypatch.setattr(train, "check_init", lambda path, model: checked.append(path))
    monkeypatch.setattr(train, "clear_temps", lambda *paths: cleared.extend(map(str, paths)))
    row = {c: i / 8 for i, c in enumerate(HISTORY_COLUMNS)} | {c: 1.5 for c in TIMING_COLUMNS}
    scenes = [["007", 2, 10, 2, 4, 16]]

    def train_member(run, model_cfg, opt_cfg, train_cfg, layout, model_dir: Path, resume: Path, code: list[Path]):
        seen.update(run=run.name, model_dir=str(model_dir), resume=str(resume), code=code)
        return [row] * epochs, {"status": "ok", "test_iou": 0.5}, scenes

    monkeypatch.setattr(train, "train_member", train_member)
    (tmp / "data").mkdir()  # a split with val scenes: a run diverged in its first epoch writes val_miou's header too
    (tmp / "data/split.csv").write_text("image,scene,subset\na.jpg,1,train\nb.jpg,2,val\nc.jpg,3,test\n")
    run_script(train, *member, "data", "runs", "models")
    assert seen["run"] == name and seen["model_dir"] == f"models/{name}" and seen["resume"] == f".resume/{name}.pt"
    assert Path(train.__file__) in seen["code"]
    assert cleared == [f"runs/{name}", f"models/{name}", ".resume"] and checked == ["init/start.pt"]
    out = tmp / "runs" / name
    history = (out / "history.csv").read_text().splitlines()
    header = HISTORY_COLUMNS + ([] if epochs else ["val_miou"])  # rows name their own columns
    assert history[0] == ",".join(header) and len(history) == 1 + epochs
    assert json.loads((out / "metrics.json").read_text()) == {"status": "ok", "test_iou": 0.5}
    assert (out / "scenes.csv").read_text().splitlines() == [",".join(SCENE_COLUMNS), "007,2,10,2,4,16"]
    assert list((tmp / ".resume").iterdir()) == []
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == (
        ["note: optimizer.momentum 0.9 has no effect: no optimizer of grid.optimizer uses it"] if first else []
    )


@pytest.mark.parametrize("on", ["cpu", "cuda"])
def test_the_train_stage_tells_of_cores_other_processes_keep_busy_before_it_trains(
    on, params_file, monkeypatch, capsys
):
    """Measured from the stage's start (before torch loads) with train.threads, told as a note before the
    first epoch, naming the param to set (the numbers depend on it: no flag changes it for one run); not
    for a run on a GPU, whose threads only feed it."""
    import train

    edit(params_file, "train", "threads", 1)
    edit(params_file, "train", "device", on)
    told = []

    def busy_note(since, threads, fix):
        told.append((since, threads, fix.format(1)))
        return "other processes kept 1.9 of this process's 2 cores busy"

    monkeypatch.setattr("forestseg.cores.busy_note", busy_note)
    monkeypatch.setattr("forestseg.cores.cpu_quota", lambda: 0.5)  # half a CPU: 1 thread is within it, no note
    monkeypatch.setattr(train, "on_cpu", lambda pref: pref == "cpu")  # this machine may have no GPU
    row = dict.fromkeys(train.HISTORY_COLUMNS, 0.5)  # one epoch
    monkeypatch.setattr(train, "train_member", lambda *a: print("training") or ([row], {"status": "ok"}, []))
    run_script(train, "mse", "adam", "0", "data", "runs", "models")
    out = capsys.readouterr().out
    if on == "cuda":
        assert told == [] and "note: other" not in out
        return
    assert told == [(train.STARTED, 1, "set train.threads: 1 for runs beside them")]
    assert out.index("note: other processes kept 1.9 of this process's 2 cores busy\n") < out.index("training")
    assert "cgroup" not in out  # one thread is no more than a quota of half a CPU rounded up


def test_the_train_stage_tells_of_threads_beyond_its_cpu_quota(params_file, monkeypatch, capsys):
    """A container limited to 1 CPU (docker --cpus 1) running train.threads 2: said before training."""
    import train

    edit(params_file, "train", "threads", 2)
    edit(params_file, "train", "device", "cpu")
    monkeypatch.setattr("forestseg.cores.cpu_quota", lambda: 1.0)
    row = dict.fromkeys(train.HISTORY_COLUMNS, 0.5)
    monkeypatch.setattr(train, "train_member", lambda *a: print("training") or ([row], {"status": "ok"}, []))
    run_script(train, "mse", "adam", "0", "data", "runs", "models")
    out = capsys.readouterr().out
    note = (
        "note: this process's cgroup allows 1 CPUs' worth of time (a CPU quota: docker --cpus, a Kubernetes limit) "
        "and it runs 2 torch threads, which the quota throttles in turn; set train.threads: 1\n"
    )
    assert note in out and out.index(note) < out.index("training")
