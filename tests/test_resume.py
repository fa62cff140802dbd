"""Fault injection: SIGKILL the train stage at several points, rerun it, and get the same numbers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, flip_a_bit_in_the_largest_tensor

from forestseg.io import write_json

EPOCHS = 10  # a kill after "epoch 3/" lands while it trains, however late a loaded machine sends it
TINY = {
    "synth": {"scenes": 4, "grid": 2, "tile_size": 32},
    "model": {"width": 4, "depth": 2},
    "train": {"epochs": EPOCHS, "batch_size": 4, "test_batch_size": 8},
}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
TRAIN = ["bce", "adam", "0", "data", "metrics/runs", "models"]


def stage(
    cwd: Path, name: str, *argv: str, code: Path = REPO, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Stage `name` of the project at `code` (its stages/ and forestseg/) run in `cwd`, with `env` added."""
    return subprocess.run(
        [sys.executable, str(code / "stages" / f"{name}.py"), *argv],
        cwd=cwd,
        env={**ENV, "PYTHONPATH": str(code), **(env or {})},
        capture_output=True,
        text=True,
        check=check,
    )


def start(work: Path, code: Path = REPO, env: dict | None = None, launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    """The train stage started in `work` (through `launcher`, a program that runs its arguments), its
    output piped."""
    return subprocess.Popen(
        [*launcher, sys.executable, str(code / "stages/train.py"), *TRAIN],
        cwd=work,
        env={**ENV, "PYTHONPATH": str(code), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with tiny params, indexed and split data, as dvc would leave it."""
    root = tmp_path_factory.mktemp("project")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stage(root, "synth", "data/synthetic")
    stage(root, "index", "data/synthetic", "data", "metrics/index.json")
    stage(root, "split", "data", "metrics/split.json")
    return root


def outputs(root: Path) -> tuple[dict, list[dict]]:
    """Final metrics and history without the wall-clock fields, which differ run to run."""
    metrics = json.loads((root / "metrics/runs/bce-adam-0/metrics.json").read_text())
    for key in ("seconds", "train_images_per_second"):
        metrics.pop(key)
    import pandas as pd

    history = pd.read_csv(root / "metrics/runs/bce-adam-0/history.csv")
    return metrics, history.to_dict("records")


def fresh(project: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(project, work)
    return work


@pytest.fixture(scope="module")
def uninterrupted(project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    work = fresh(project, tmp_path_factory.mktemp("straight"))
    stage(work, "train", *TRAIN)
    return outputs(work)


@pytest.mark.parametrize("kill_after_line", ["epoch 1/", "epoch 3/", "resuming"])
def test_sigkill_then_resume_gives_identical_results(
    project: Path, tmp_path: Path, uninterrupted, kill_after_line: str
) -> None:
    work = fresh(project, tmp_path)
    if kill_after_line == "resuming":  # a second kill, during an already resumed run
        kill(work, "epoch 1/")
    assert kill(work, kill_after_line).returncode == -signal.SIGKILL
    assert not (work / "metrics/runs/bce-adam-0/metrics.json").exists()
    resume = work / ".resume/bce-adam-0.pt"
    if resume.exists():  # written atomically: whole, whenever the kill came
        import torch

        assert torch.load(resume, weights_only=False)["epoch"] >= 1
    out = stage(work, "train", *TRAIN)
    assert "resuming after epoch" in out.stdout
    assert outputs(work) == uninterrupted
    assert not resume.exists() and (work / "models/bce-adam-0/model.pt").is_file()  # scratch gone once done


def kill(work: Path, marker: str, code: Path = REPO, sig: int = signal.SIGKILL) -> subprocess.CompletedProcess:
    """Start the train stage (of the project at `code`) and send it `sig` right after it prints a line
    containing `marker`; its exit status and what it wrote to stderr."""
    proc = start(work, code)
    for line in proc.stdout:
        if marker in line:
            proc.send_signal(sig)
            break
    _, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, None, err)


def test_changed_params_do_not_resume_a_stale_checkpoint(project: Path, tmp_path: Path) -> None:
    work = fresh(project, tmp_path)
    kill(work, "epoch 2/")  # leaves a resume file of lr 1e-3
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["optimizer"]["lr"] = 0.01
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    out = stage(work, "train", *TRAIN)
    assert "starting afresh" in out.stdout and "resuming" not in out.stdout
    assert json.loads((work / "metrics/runs/bce-adam-0/metrics.json").read_text())["lr"] == 0.01


def test_changed_data_does_not_resume_a_stale_checkpoint(project: Path, tmp_path: Path) -> None:
    """The train stage's fingerprint pins the data it trains on (index, split, arrays' digest): a run
    killed on one split never resumes on another."""
    work = fresh(project, tmp_path)
    kill(work, "epoch 2/")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["split"]["seed"] += 1
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    before = (work / "data/split.csv").read_text()
    stage(work, "split", "data", "metrics/split.json")
    assert (work / "data/split.csv").read_text() != before
    out = stage(work, "train", *TRAIN)
    assert "starting afresh" in out.stdout and "resuming" not in out.stdout


@pytest.mark.parametrize(
    "sig, code, how", [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")]
)
def test_sigterm_ends_the_stage_with_one_line_and_resumes(project: Path, tmp_path: Path, sig, code, how) -> None:
    """A timeout, `kill` or Slurm's time limit: as Ctrl-C, one line, exit 143, and a resumable run
    (tests/test_stages.py: a SIGTERM mid-write leaves no temp file); past start-up, Ctrl-C says so too."""
    work = fresh(project, tmp_path)
    done = kill(work, "epoch 2/", sig=sig)
    assert done.returncode == code and done.stderr.strip().splitlines() == [
        f"train.py: {how}; no output is half-written (each is written atomically): rerun to go on "
        "(a train run resumes after its last finished epoch)"
    ], done.stderr
    assert "resuming after epoch" in stage(work, "train", *TRAIN).stdout


def test_a_stage_run_by_dvc_ends_when_dvc_is_killed(project: Path, tmp_path: Path) -> None:
    """DVC passes no signal on: a stage left running would write a killed run's outputs into the next
    experiment's workspace. Under DVC (DVC_STAGE set) it gets SIGTERM when its parent ends."""
    import time

    work = fresh(project, tmp_path)
    launcher = (sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])")  # dvc's part
    proc = start(work, env={"DVC_STAGE": "train@bce-adam-0"}, launcher=launcher)
    for line in proc.stdout:
        if "epoch 2/" in line:
            proc.kill()  # the parent alone, as `kill -9 <dvc>` does
            break
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)  # the pipes close when the stage, which holds them too, ends
    assert "train.py: terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert not (work / "metrics/runs/bce-adam-0/metrics.json").exists() and time.monotonic() - t0 < 30
    assert "resuming after epoch" in stage(work, "train", *TRAIN).stdout


def test_a_ctrl_c_its_caller_ignores_leaves_the_stage_running(project: Path, tmp_path: Path) -> None:
    """`trap '' INT` before `dvc repro`, or a script's `dvc repro &`: DVC ignores the Ctrl-C, and so does the stage."""
    work = fresh(project, tmp_path)
    proc = start(work, launcher=("bash", "-c", "trap '' INT; exec \"$@\"", "bash"))
    for line in proc.stdout:
        if "epoch 2/" in line:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and (work / "metrics/runs/bce-adam-0/metrics.json").is_file(), err


def test_importing_the_stage_helpers_leaves_the_signal_handlers_alone(tmp_path: Path) -> None:
    """Only a stage script run as a program takes over Ctrl-C and SIGTERM at start-up (a test or a
    notebook importing stages/common.py keeps its own)."""
    code = "import signal, common; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
    code += "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**ENV, "PYTHONPATH": f"{REPO / 'stages'}:{REPO}"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["True", "True"]


def test_a_stage_called_in_process_gives_back_its_callers_handlers(project: Path, tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(REPO / "stages"))
    try:
        import common
    finally:
        sys.path.remove(str(REPO / "stages"))

    def caller(signum, frame) -> None:  # a handler of the code that calls the stage
        pass

    before = (signal.signal(signal.SIGINT, caller), signal.signal(signal.SIGTERM, caller))
    try:
        monkeypatch.setattr(sys, "argv", ["x.py"])
        common.stage(lambda argv: None)()
        assert signal.getsignal(signal.SIGINT) is caller and signal.getsignal(signal.SIGTERM) is caller
    finally:
        signal.signal(signal.SIGINT, before[0]), signal.signal(signal.SIGTERM, before[1])


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stage_stopped_while_it_loads_torch_says_one_line(project: Path, tmp_path: Path, sig, code) -> None:
    import time

    proc = start(fresh(project, tmp_path))
    time.sleep(0.5)  # inside `import torch` (~1-2 s): before the stage's own handling
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("train.py: ")


def test_a_run_killed_on_one_cpu_kernel_set_does_not_resume_on_another(project: Path, tmp_path: Path) -> None:
    """Another instruction set (here capped by oneDNN's variable, as an AVX2-only CPU would run) sums in
    another order: resumed there, the run would match neither machine's uninterrupted numbers."""
    work = fresh(project, tmp_path)
    assert kill(work, "epoch 2/").returncode == -signal.SIGKILL
    out = stage(work, "train", *TRAIN, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert "was made with other params, code, data or device; starting afresh" in out.stdout, out.stdout


def test_changed_arrays_do_not_resume_a_stale_checkpoint(project: Path, tmp_path: Path) -> None:
    """Other pixels under the same file names (a re-export of the set, then `dvc repro index`) change the
    arrays' digest alone: the run killed on the old ones starts afresh."""
    work = fresh(project, tmp_path)
    assert kill(work, "epoch 2/").returncode == -signal.SIGKILL
    digest = work / "data/packed/sha256.json"
    content = json.loads(digest.read_text())
    write_json(digest, {**content, "images.npy": "0" * 64})  # as the index writes it, one value changed
    out = stage(work, "train", *TRAIN)
    assert "starting afresh" in out.stdout and "resuming" not in out.stdout


def test_a_library_edit_does_not_resume_a_stale_checkpoint(project: Path, tmp_path: Path) -> None:
    """The train stage fingerprints the whole library: a run killed before an edit of any forestseg
    module starts afresh after it."""
    code = tmp_path / "code"
    for folder in ("stages", "forestseg"):
        shutil.copytree(REPO / folder, code / folder, ignore=shutil.ignore_patterns("__pycache__"))
    work = fresh(project, tmp_path)
    assert kill(work, "epoch 2/", code).returncode == -signal.SIGKILL
    assert "resuming after epoch" in stage(work, "train", *TRAIN, code=code).stdout  # unedited: it resumes
    work = fresh(project, tmp_path / "again")
    assert kill(work, "epoch 2/", code).returncode == -signal.SIGKILL
    with open(code / "forestseg/metrics.py", "a") as f:
        f.write("\n# an edit\n")
    out = stage(work, "train", *TRAIN, code=code)
    assert "starting afresh" in out.stdout and "resuming" not in out.stdout


def train_with(work: Path, loss: str, optimizer: str, changes: dict) -> subprocess.CompletedProcess:
    """The train stage of member <loss>-<optimizer>-0 after `changes` ({section: {key: value}}) to
    the params; not checked."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    argv = [sys.executable, str(REPO / "stages/train.py"), loss, optimizer, "0", "data", "metrics/runs", "models"]
    return subprocess.run(argv, cwd=work, env=ENV, capture_output=True, text=True)


def test_a_diverging_run_is_recorded_not_fatal(project: Path, tmp_path: Path) -> None:
    work = fresh(project, tmp_path)
    out = train_with(work, "bce", "sgd", {"optimizer": {"lr": 1e9}})
    assert out.returncode == 0  # the rest of the grid goes on
    metrics = json.loads((work / "metrics/runs/bce-sgd-0/metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert "run bce-sgd-0 epoch 1/" in metrics["message"] and "diverged at step" in metrics["message"]
    assert "warning: run bce-sgd-0" in out.stdout
    assert (work / "models/bce-sgd-0/model.pt").is_file()  # dvc requires every declared output


def test_a_blow_up_after_the_last_checked_step_is_a_divergence(project: Path, tmp_path: Path) -> None:
    """One step per epoch at a huge lr: the step's loss is checked before the update that blows the
    weights up, so only the test loss tells; the run is diverged, its model file holds no weights."""
    import pandas as pd

    work = fresh(project, tmp_path)
    train_tiles = int((pd.read_csv(work / "data/split.csv")["subset"] == "train").sum())
    one_step = {"optimizer": {"lr": 1e6}, "train": {"epochs": 1, "batch_size": train_tiles}}
    out = train_with(work, "mse_logits", "sgd", one_step)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((work / "metrics/runs/mse_logits-sgd-0/metrics.json").read_text())  # strict JSON
    assert metrics["status"] == "diverged" and "after the epoch's last step" in metrics["message"], metrics
    predict = subprocess.run(
        [sys.executable, "-m", "forestseg.cli", "predict", "models/mse_logits-sgd-0/model.pt", "data", "-o", "p"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert predict.returncode == 2 and "run mse_logits-sgd-0 diverged and has no model" in predict.stderr


def test_the_numbers_follow_train_threads_whatever_the_environment_says(
    project: Path, tmp_path: Path, uninterrupted
) -> None:
    """train.threads, not OMP_NUM_THREADS, sets torch's threads: a queue worker started with one thread
    gives the numbers of a plain run; and a resume file made at other threads starts afresh."""
    results = []
    for threads in ("1", "3"):  # one of them differs from the params' 2 whatever the environment says
        work = fresh(project, tmp_path / threads)
        env = {**ENV, "OMP_NUM_THREADS": threads}
        subprocess.run([sys.executable, str(REPO / "stages/train.py"), *TRAIN], cwd=work, env=env, check=True)
        results.append(outputs(work))
    assert results[0] == results[1] == uninterrupted
    kill(work, "epoch 2/")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["threads"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert "starting afresh" in stage(work, "train", *TRAIN).stdout


def test_a_killed_runs_temp_files_are_removed_by_the_next_run(project: Path, tmp_path: Path) -> None:
    from conftest import dead_temp_prefix

    work = fresh(project, tmp_path)
    litter = [
        work / "metrics/runs/bce-adam-0" / (dead_temp_prefix("metrics") + "x.tmp.json"),
        work / "models/bce-adam-0" / (dead_temp_prefix("model") + "x.tmp.pt"),
        work / ".resume" / (dead_temp_prefix("bce-adam-0") + "x.tmp.pt"),
    ]
    for path in litter:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    stage(work, "train", *TRAIN)
    assert not any(path.exists() for path in litter)


def test_the_fingerprint_covers_code_params_and_data(project: Path, tmp_path: Path) -> None:
    """A resume file is reused only if nothing DVC would rerun the stage for has changed, and a copy
    of the project elsewhere (another path, new mtimes) fingerprints the same."""
    from forestseg.checkpoint import fingerprint
    from forestseg.config import asdict, load_sections

    cfgs = [
        asdict(c)
        for c in load_sections(yaml.safe_load((project / "params.yaml").read_text()), "model", "optimizer", "train")
    ]
    library = shutil.copytree(REPO / "forestseg", tmp_path / "forestseg")  # edited below, not the checkout
    code = sorted(library.glob("*.py"))

    def data(root: Path) -> list[Path]:
        return [root / "data/index.csv", root / "data/split.csv", root / "data/packed/sha256.json"]

    base = fingerprint("bce-adam-0", cfgs, False, code, data(project))
    assert base == fingerprint("bce-adam-0", cfgs, False, code, data(project))
    copy = shutil.copytree(project, tmp_path / "elsewhere" / "copy", copy_function=shutil.copy)  # new mtimes
    assert base == fingerprint("bce-adam-0", cfgs, False, code, data(copy))
    assert base != fingerprint("bce-adam-1", cfgs, False, code, data(project))
    assert base != fingerprint("bce-adam-0", cfgs, True, code, data(project))
    other = [cfgs[0], {**cfgs[1], "lr": 0.5}, cfgs[2]]
    assert base != fingerprint("bce-adam-0", other, False, code, data(project))
    (copy / "data/packed/sha256.json").write_text('{"images.npy": "another set"}')
    assert base != fingerprint("bce-adam-0", cfgs, False, code, data(copy))
    with open(library / "train.py", "a") as f:
        f.write("\n# any edit of the library is a code change\n")
    assert base != fingerprint("bce-adam-0", cfgs, False, code, data(project))


def test_a_copy_of_the_project_resumes_its_own_run(project: Path, tmp_path: Path) -> None:
    """Killed in one folder, the project is moved (as a queued experiment's temp copy or another
    machine would have it): the run resumes there instead of starting afresh."""
    work = fresh(project, tmp_path)
    kill(work, "epoch 2/")
    moved = shutil.copytree(work, tmp_path / "moved", copy_function=shutil.copy)  # other path, new mtimes
    out = stage(moved, "train", *TRAIN)
    assert "resuming after epoch" in out.stdout


def test_a_batch_larger_than_the_training_set_stops_with_one_line(project: Path, tmp_path: Path) -> None:
    work = fresh(project, tmp_path)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["batch_size"] = 10_000
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py"), *TRAIN], cwd=work, env=ENV, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: params.yaml: train.batch_size: 10000 is larger than the 12 training tiles")
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (["l1", "adam", "0"], "grid.loss: unknown value 'l1'; valid choices"),
        (["bce", "rmsprop", "0"], "grid.optimizer: unknown value 'rmsprop'"),
        (["bce", "adam", "-1"], "grid.seed: seeds must be integers >= 0"),
        (["bce", "adam", "01"], "grid.seed[0]: must be a whole number written as one (e.g. 1, not 1.0 or '01')"),
    ],
)
def test_a_bad_grid_member_stops_with_one_line(project: Path, member: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py"), *member, "data", "metrics/runs", "models"],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_an_unreadable_checkpoint_is_retrained_not_fatal(project: Path, tmp_path: Path) -> None:
    work = fresh(project, tmp_path)
    (work / ".resume").mkdir(parents=True)
    (work / ".resume/bce-adam-0.pt").write_bytes(b"half a checkpoint")
    out = stage(work, "train", *TRAIN)
    assert "cannot be read" in out.stdout and "starting afresh" in out.stdout
    assert json.loads((work / "metrics/runs/bce-adam-0/metrics.json").read_text())["epochs"] == EPOCHS


def test_a_fine_tuning_run_resumes_only_with_the_same_init_file(project: Path, tmp_path: Path) -> None:
    """train.init_from's bytes are in the fingerprint: a replaced model file starts the run afresh."""
    import torch

    work = fresh(project, tmp_path)
    stage(work, "train", *TRAIN)  # a model of these params to start from
    (work / "init").mkdir()
    shutil.copy(work / "models/bce-adam-0/model.pt", work / "init/source.pt")
    (work / "init/source.pt.dvc").write_text("outs:\n- path: source.pt\n")  # as `dvc add` leaves it
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["init_from"] = "init/source.pt"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    kill(work, "epoch 1/")
    state = torch.load(work / "init/source.pt", weights_only=False)
    torch.save({**state, "note": "the same weights, other bytes"}, work / "init/source.pt")
    out = stage(work, "train", *TRAIN)
    assert "bce-adam-0: fine-tuning from init/source.pt" in out.stdout
    assert "starting afresh" in out.stdout and "resuming" not in out.stdout
    kill(work, "epoch 1/")
    assert "resuming after epoch 1" in stage(work, "train", *TRAIN).stdout  # the same file: resumed


def test_a_resume_file_with_a_flipped_bit_starts_afresh(tmp_path: Path) -> None:
    """torch's reader skips the zip checksums: without the check, the run would resume from other weights."""
    import torch

    from forestseg.checkpoint import read_resume, write_resume

    state = {"model": {"w": torch.arange(4096, dtype=torch.float32)}}
    path = tmp_path / "run.pt"
    write_resume(path, state)
    assert torch.equal(read_resume(path)["model"]["w"], state["model"]["w"])
    flip_a_bit_in_the_largest_tensor(path)
    said: list[str] = []
    assert read_resume(path, log=said.append) is None
    assert "fails its checksum" in said[0] and said[0].endswith("starting afresh")


@pytest.mark.parametrize("content", [{"format": "forestseg-resume/2", "epoch": 3}, [1, 2]])
def test_a_resume_file_of_another_format_starts_afresh(tmp_path: Path, content) -> None:
    """An older version's resume file, or a torch file that is no mapping: read as none, with a line."""
    import torch

    from forestseg.checkpoint import RESUME_FORMAT, read_resume

    torch.save(content, tmp_path / "run.pt")
    said: list[str] = []
    assert read_resume(tmp_path / "run.pt", log=said.append) is None
    assert said == [f"{tmp_path / 'run.pt'} is not a {RESUME_FORMAT} file; starting afresh"]


def test_a_file_where_the_resume_folder_goes_stops_before_training(project: Path, tmp_path: Path) -> None:
    work = fresh(project, tmp_path)
    (work / ".resume").write_text("")
    out = stage(work, "train", *TRAIN, check=False)
    assert out.returncode == 2 and "epoch" not in out.stdout
    assert out.stderr == "error: .resume: is a file where the train stage keeps its resume files; remove it\n"


def test_a_resume_file_of_the_pickled_format_before_3_is_one_line(tmp_path: Path) -> None:
    """Format 2 kept numpy's RNG state as arrays, which torch's weights-only loader refuses with a page of
    advice to load unsafely: one line instead, and the run starts afresh."""
    import numpy as np
    import torch

    from forestseg.checkpoint import read_resume

    torch.save({"format": "forestseg-resume/2", "rng": np.random.default_rng(0).random(3)}, tmp_path / "run.pt")
    said: list[str] = []
    assert read_resume(tmp_path / "run.pt", log=said.append) is None
    assert said == [
        f"{tmp_path / 'run.pt'} holds objects beyond a forestseg-resume/3 file (an older forestseg's resume file?); "
        "starting afresh"
    ]


def test_a_folder_where_the_resume_file_goes_is_one_line(tmp_path: Path) -> None:
    from forestseg.checkpoint import read_resume
    from forestseg.config import ForestsegError

    (tmp_path / "run.pt").mkdir()
    with pytest.raises(ForestsegError, match="is a folder where this run's resume file goes; remove it and rerun"):
        read_resume(tmp_path / "run.pt")


def test_a_weight_gone_non_finite_after_the_last_step_is_a_divergence_though_the_test_loss_is_finite(
    tmp_path: Path, monkeypatch
) -> None:
    """The weights are checked too, not the test loss only: a -inf bias before a ReLU (what a blow-up
    can leave) gives finite outputs and a finite test loss, and the model file would hold -inf."""
    import math

    import torch

    import forestseg.train as train_module
    from forestseg import synthetic
    from forestseg.config import ModelConfig, OptimizerConfig, TrainConfig
    from forestseg.loader import Tiles
    from forestseg.train import Diverged, Run, train_run

    images, masks = synthetic.scene_tiles(0, 2, 32)
    tiles = Tiles(torch.from_numpy(images), torch.from_numpy(masks))
    real = train_module.train_epoch

    def blown_up_after_its_last_step(s, *args, **kwargs):
        loss = real(s, *args, **kwargs)
        with torch.no_grad():
            s.model.stem[0].bias.fill_(-math.inf)  # after every step the epoch checked
        return loss

    monkeypatch.setattr(train_module, "train_epoch", blown_up_after_its_last_step)
    model = ModelConfig(arch="unet", width=4, depth=1, batch_norm=False)
    train = TrainConfig(epochs=1, batch_size=4, test_batch_size=8, device="cpu", precision="fp32")
    with pytest.raises(Diverged, match=r"diverged: test loss \d[^ ]* after the epoch's last step"):
        train_run(
            Run("bce", "adam", 0),
            model,
            OptimizerConfig(),
            train,
            tiles,
            tiles,
            tmp_path / "m",
            tmp_path / "r.pt",
            "fp",
            log=lambda s: None,
        )
