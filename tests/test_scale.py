"""Scale-out with DVC's run-cache: members trained anywhere are restored, never trained twice."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, TINY, failed_logs, ran, set_params, sh, wait_for_queue

pytestmark = pytest.mark.slow
GRID = {
    **TINY,
    "model": {"width": 4, "depth": 1},
    "train": {"epochs": 1, "batch_size": 4, "test_batch_size": 8},
    "grid": {"loss": ["bce"], "optimizer": ["adam"], "seed": [0, 1]},
}
MEMBERS = {"train@bce-adam-0", "train@bce-adam-1"}


def restored(out: subprocess.CompletedProcess) -> set[str]:
    """Stages a dvc command restored from the run-cache instead of running."""
    return set(re.findall(r"Stage '([^']+)' is cached - skipping run", out.stdout + out.stderr))


def commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", message)


def seeds_in_summary(repo: Path) -> int:
    return json.loads((repo / "metrics/summary.json").read_text())["combinations"]["bce-adam"]["seeds"]


def test_setting_a_param_back_restores_every_train_stage_from_the_run_cache(repo: Path) -> None:
    set_params(repo, GRID)
    sh(repo, "dvc", "repro")
    set_params(repo, {"optimizer": {"lr": 0.01}})
    assert MEMBERS <= ran(sh(repo, "dvc", "repro"))
    set_params(repo, {"optimizer": {"lr": 0.001}})
    back = sh(repo, "dvc", "repro")
    assert not MEMBERS & ran(back), back.stdout
    assert restored(back) >= MEMBERS
    assert not (repo / ".resume").exists() or not any((repo / ".resume").iterdir())  # no scratch left


@pytest.mark.parametrize("lock", ["none", "committed"])
def test_queued_slices_then_one_grid_run_trains_nothing_twice(repo: Path, tmp_path: Path, lock: str) -> None:
    """README Scale-out: the data stages once, one queued experiment per seed that trains only, two
    workers; then the whole grid in one `dvc exp run` restores both members from the run-cache and
    only aggregates: one report with every seed. Without the first `dvc repro split`, both workers
    write the same index outputs into the shared cache at once, and DVC failed one of them in CI and in
    1 run of 4 here ("unable to remove 'data/index.csv' without a confirmation"). With a committed
    dvc.lock that covers the grid (main's), in a fresh clone: cluster/unlock.sh sets its members aside,
    or DVC would train them again in the last run, never looking in the run-cache."""
    set_params(repo, GRID)
    if lock == "committed":
        sh(repo, "dvc", "repro")
        commit(repo, "tiny grid and its dvc.lock")
        sh(tmp_path, "git", "clone", "-q", str(repo), str(tmp_path / "clone"))
        repo = tmp_path / "clone"
        assert "2 train member(s) of dvc.lock set aside" in sh(repo, "bash", "cluster/unlock.sh").stdout
    else:
        commit(repo, "tiny grid")
    sh(repo, "dvc", "repro", "split")
    for seed in (0, 1):
        sh(repo, "dvc", "exp", "run", "--queue", "-n", f"seed{seed}", "-S", f"grid.seed=[{seed}]", "train")
    sh(repo, "dvc", "queue", "start", "-j", "2")
    status = wait_for_queue(repo)
    assert status.count("Success") == 2, failed_logs(repo, status)
    full = sh(repo, "dvc", "exp", "run", "-n", "all-seeds")
    assert not MEMBERS & ran(full), full.stdout
    assert restored(full) >= MEMBERS
    # overlays draws the members' models and scenes, byte for byte the lock's own in a clone: it may stay
    assert {"aggregate", "overlays"} <= ran(full) or (lock == "committed" and "aggregate" in ran(full)), full.stdout
    assert seeds_in_summary(repo) == 2


def test_three_clones_share_one_grid_through_a_dvc_remote(repo: Path, tmp_path: Path) -> None:
    """Machine B trains one member (cluster/worker.sh) and pushes it; A's coordinator restores it,
    trains the other and pushes that too; C's worker task is then restored from A's push, and D's
    coordinator trains nothing and writes the report over both seeds. The commit's dvc.lock covers
    both members (the repo's own `dvc repro`, never pushed), as main's does: DVC would pull the lock's
    outputs, fail and train, never looking in the run-cache, but for forget_locked_members."""
    set_params(repo, GRID)
    (tmp_path / "remote").mkdir()  # a shared folder is there before the first push (require_remote)
    sh(repo, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    sh(repo, "dvc", "repro")
    commit(repo, "tiny grid with a shared remote, and its dvc.lock")
    assert MEMBERS <= set(re.findall(r"^\s+(train@\S+):$", (repo / "dvc.lock").read_text(), re.M))
    a, b, c, d = (tmp_path / name for name in "abcd")
    for clone in (a, b, c, d):
        sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert "worker: bce-adam-0 trained (or restored" in sh(b, "bash", "cluster/worker.sh", "bce-adam-0").stdout
    out = sh(a, "bash", "cluster/coordinator.sh")
    # B's bce-adam-0 comes from the run-cache, or, where B's outputs are byte for byte the repo's own run's
    # (its seconds rounded alike: CI saw it once), by pulling them as the commit's dvc.lock names them
    assert ran(out) & MEMBERS == {"train@bce-adam-1"}, out.stdout
    assert "Unable to pull" not in out.stdout + out.stderr
    assert re.search(
        r"coordinator: commit [0-9a-f]{40}: the report covers the grid's 2 member\(s\): (1 restored from the "
        r"run-cache, 0|0 restored from the run-cache, 1) pulled as dvc.lock names them, 0 already in this checkout, "
        r"1 trained here; 1 pushed",
        out.stdout,
    ), out.stdout
    task = sh(c, "bash", "cluster/worker.sh", "--task", "1", "2")
    # the same two ways: A's bce-adam-1 may round its seconds as the repo's own run did (then its lock
    # entry's outputs are on the remote, and DVC pulls them)
    pulled = "Pulling data for stage: 'train@bce-adam-1'" in task.stdout
    assert ("train@bce-adam-1" in restored(task) or pulled) and not MEMBERS & ran(task), task.stdout
    out = sh(d, "bash", "cluster/coordinator.sh")
    assert not MEMBERS & ran(out), out.stdout
    counts = re.search(
        r"coordinator: commit [0-9a-f]{40}: the report covers the grid's 2 member\(s\): (\d) restored from the "
        r"run-cache, (\d) pulled as dvc.lock names them, 0 already in this checkout, 0 trained here; 0 pushed$",
        out.stdout,
        re.M,
    )
    assert counts and int(counts[1]) + int(counts[2]) == 2, out.stdout
    # where both members' outputs are the lock's own, so are aggregate's: then it is pulled, not run
    assert ("aggregate" in ran(out) or counts[2] == "2") and seeds_in_summary(d) == 2, out.stdout
    assert (d / "models/bce-adam-1/model.pt").is_file()  # outputs checked out from the remote


def test_a_coordinator_restores_members_whose_lock_outputs_were_pushed(repo: Path, tmp_path: Path) -> None:
    """`dvc repro`, a plain `dvc push` (README: Real data) and a commit: the lock's own outputs are on the
    remote, with no run-cache entries; the coordinator restores them from there and trains nothing."""
    set_params(repo, GRID)
    (tmp_path / "remote").mkdir()
    sh(repo, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    sh(repo, "dvc", "repro")
    sh(repo, "dvc", "push")
    commit(repo, "tiny grid, its dvc.lock and its outputs pushed")
    sh(tmp_path, "git", "clone", "-q", str(repo), str(tmp_path / "a"))
    out = sh(tmp_path / "a", "bash", "cluster/coordinator.sh")
    assert not MEMBERS & ran(out) and "Unable to pull" not in out.stdout + out.stderr, out.stdout
    assert re.search(
        r"coordinator: commit [0-9a-f]{40}: the report covers the grid's 2 member\(s\): 0 restored from the "
        r"run-cache, 2 pulled as dvc.lock names them, 0 already in this checkout, 0 trained here; 0 pushed$",
        out.stdout,
        re.M,
    ), out.stdout
    assert seeds_in_summary(tmp_path / "a") == 2
    again = sh(tmp_path / "a", "bash", "cluster/coordinator.sh")  # it says the report covers the grid, not "0 restored"
    assert re.search(
        r"the report covers the grid's 2 member\(s\): 0 restored from the run-cache, 0 pulled as dvc.lock names "
        r"them, 2 already in this checkout, 0 trained here; 2 pushed$",
        again.stdout,
        re.M,
    ), again.stdout


FAKE_DVC = """#!/bin/bash
case "$1" in
  remote) echo store ;;
  config) echo "$REMOTE" ;;
  repro) echo "Stage 'train@bce-adam-2' didn't change, skipping"
         echo "Running stage 'train@bce-adam-0':"; echo "Running stage 'train@bce-adam-1':"
         echo "ERROR: failed to reproduce 'train@bce-adam-1'"; exit 1 ;;
  status) echo "$*" >> "$PUSHED"; echo '{"train@bce-adam-1": [{"changed outs": {"models/bce-adam-1": "deleted"}}]}' ;;
  push) echo "push ${@: -1}" >> "$PUSHED"; [ "${@: -1}" = train@bce-adam-0 ] || exit 1 ;;
esac
"""


def test_a_coordinator_whose_repro_fails_still_pushes_what_it_trained(tmp_path: Path) -> None:
    """A member trained before a later failure (another member, aggregate) is pushed, as a worker pushes
    each member when done, and so is one already in the checkout (an earlier coordinator stopped before
    its pushes may have trained it); the unfinished one is not (real DVC would push it without outputs
    and exit 0); a failed push is named, and the script ends with repro's status."""
    from conftest import BIN, REPO

    project = tmp_path / "p"
    (project / "cluster").mkdir(parents=True)
    for name in ("coordinator.sh", "committed.sh"):
        (project / "cluster" / name).write_text((REPO / "cluster" / name).read_text())
    sh(project, "git", "init", "-q")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/dvc").write_text(FAKE_DVC)
    (tmp_path / "bin/dvc").chmod(0o755)
    (tmp_path / "remote").mkdir()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{BIN}:{os.environ['PATH']}", "REMOTE": str(tmp_path / "remote")}
    env["PUSHED"] = str(tmp_path / "pushed.txt")
    env.pop("FORESTSEG_REV", None)
    out = subprocess.run(["bash", "cluster/coordinator.sh"], cwd=project, env=env, capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert (tmp_path / "pushed.txt").read_text().splitlines() == [
        "status --json train@bce-adam-0 train@bce-adam-1 train@bce-adam-2",
        "push train@bce-adam-0",
        "push train@bce-adam-2",
    ]
    assert "warning: coordinator: not pushed (dvc push failed above): train@bce-adam-2;" in out.stderr
    assert out.stderr.strip().endswith(
        "error: coordinator: dvc repro failed (its error is above); 2 member(s) ran here, 1 of them unfinished; "
        "1 member(s) pushed"
    )


@pytest.mark.parametrize(
    "task, rc, says",
    [
        (["2", "2"], 2, "error: usage: members.py --task K N (0 <= K < N)"),  # the error, not "nothing to train"
        (["3", "4"], 0, "worker: task 3 of 4 has no member of the grid; nothing to train"),  # 2 members, 4 tasks
        (["0", "²"], 2, "error: usage: members.py --task K N (0 <= K < N)"),  # a digit to isdigit(), not to int()
        (["١", "2"], 2, "error: usage: members.py --task K N (0 <= K < N)"),  # an Arabic-Indic 1, taken as task 1
    ],
)
def test_a_worker_task_says_what_it_trains_or_why_not(repo: Path, task: list[str], rc: int, says: str) -> None:
    set_params(repo, GRID)
    commit(repo, "tiny grid")
    out = sh(repo, "bash", "cluster/worker.sh", "--task", *task, check=False)
    assert out.returncode == rc and says in out.stdout + out.stderr, out.stdout + out.stderr
    if rc:
        assert "nothing to train" not in out.stdout


def test_a_worker_checks_every_member_name_before_training(repo: Path) -> None:
    set_params(repo, GRID)
    commit(repo, "tiny grid")
    out = sh(repo, "bash", "cluster/worker.sh", "bce-adam-0", "bce-adam-2", check=False)
    assert out.returncode == 2 and not ran(out), out.stdout
    assert out.stderr == (
        "error: worker: bce-adam-2 is not a member of the grid in params.yaml; `python cluster/members.py` lists them\n"
    )


@pytest.mark.parametrize("script", ["worker.sh bce-adam-0", "coordinator.sh"])
def test_worker_and_coordinator_refuse_params_the_commit_does_not_have(repo: Path, script: str) -> None:
    """The other machines train the commit: uncommitted params would match none of their members."""
    set_params(repo, GRID)
    commit(repo, "tiny grid")
    set_params(repo, {"model": {"width": 8}})
    out = sh(repo, "bash", *f"cluster/{script}".split(), check=False)
    who = script.split(".")[0]
    assert out.returncode == 2 and not ran(out), out.stdout
    assert out.stderr.startswith(f"error: {who}: params.yaml differ from the last commit, which the workers train")


def test_the_coordinator_refuses_another_revision_than_the_workers_cloned(repo: Path, monkeypatch) -> None:
    set_params(repo, GRID)
    commit(repo, "tiny grid")
    first = sh(repo, "git", "rev-parse", "HEAD").stdout.strip()
    (repo / "notes.txt").write_text("later")
    commit(repo, "a later commit")
    monkeypatch.setenv("FORESTSEG_REV", first)
    out = sh(repo, "bash", "cluster/coordinator.sh", check=False)
    assert out.returncode == 2 and out.stderr.startswith(
        f"error: coordinator: the workers trained FORESTSEG_REV={first}, not this checkout's HEAD"
    ), out.stderr
    monkeypatch.setenv("FORESTSEG_REV", "origin/never-fetched")
    out = sh(repo, "bash", "cluster/coordinator.sh", check=False)
    assert out.returncode == 2 and out.stderr == (
        "error: coordinator: FORESTSEG_REV=origin/never-fetched is no commit of this checkout; "
        "git fetch it (or fix the name)\n"
    )


@pytest.mark.parametrize("script", ["worker.sh bce-adam-0", "coordinator.sh"])
def test_a_remote_folder_that_is_not_there_stops_before_anything_trains(
    repo: Path, tmp_path: Path, script: str
) -> None:
    """DVC reads a missing local remote as empty (the coordinator would retrain the grid) and creates it on
    a push (the worker's members would land where nobody looks): a shared folder not mounted here."""
    set_params(repo, GRID)
    sh(repo, "dvc", "remote", "add", "-d", "store", str(tmp_path / "not-mounted/remote"))
    commit(repo, "a remote on a shared folder")
    out = sh(repo, "bash", *f"cluster/{script}".split(), check=False)
    who = script.split(".")[0]
    assert out.returncode == 2 and not ran(out), out.stdout
    assert out.stderr == (
        f"error: {who}: DVC remote 'store' is the folder {tmp_path}/not-mounted/remote, which is not there on this "
        "machine (not mounted?); DVC would read it as empty\n"
    )
    assert not (tmp_path / "not-mounted").exists()


def test_no_default_remote_or_no_dvc_stops_before_anything_trains(repo: Path) -> None:
    """DVC 3.67 says "No default remote set" on stdout and exits 1, which read as a remote's name; a
    Slurm job run without the venv has no dvc at all, which read as "no default remote"."""
    set_params(repo, GRID)
    commit(repo, "tiny grid")
    out = sh(repo, "bash", "cluster/worker.sh", "bce-adam-0", check=False)
    assert out.returncode == 2 and not ran(out), out.stdout
    assert out.stderr.startswith("error: worker: no default DVC remote: `dvc remote add -d store <url>`"), out.stderr
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # git, and no dvc (the repo has no .venv)
    for script, who in (["coordinator.sh"], "coordinator"), (["worker.sh", "bce-adam-0"], "worker"):
        out = subprocess.run(
            ["bash", f"cluster/{script[0]}", *script[1:]], cwd=repo, env=env, capture_output=True, text=True
        )
        assert out.returncode == 2, out.stdout + out.stderr
        assert (
            out.stderr == f"error: {who}: no `dvc` on PATH: activate the project's environment (. .venv/bin/activate)\n"
        )
    (repo.parent / "pipx").mkdir()  # a dvc of its own, and a python without the project's packages
    (repo.parent / "pipx" / "dvc").symlink_to(BIN / "dvc")
    (repo.parent / "pipx" / "python").symlink_to(Path(sys.base_prefix) / "bin" / "python3")  # the venv's base
    env["PATH"] = f"{repo.parent / 'pipx'}:/usr/bin:/bin"
    out = subprocess.run(["bash", "cluster/worker.sh", "bce-adam-0"], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: worker: no `python` on PATH that imports forestseg"), (
        out.stderr
    )


def test_members_checks_every_section_but_the_init_from_file_a_fresh_clone_pulls_later(repo: Path) -> None:
    """In a fresh clone a fine-tuning grid's init/ model is a .dvc file only, until `dvc repro --pull`."""
    set_params(repo, {**GRID, "train": {**GRID["train"], "init_from": "init/source.pt"}})
    out = sh(repo, "python", "cluster/members.py", check=False)
    assert out.returncode == 0 and out.stdout.split() == ["bce-adam-0", "bce-adam-1"], out.stderr


def test_the_tasks_of_an_array_share_the_grid_member_k_then_every_nth(tmp_path: Path, monkeypatch, capsys) -> None:
    """members.py --task K N: task K of N trains members K, K + N, ...: together the grid, each member once."""
    import importlib.util
    import shutil

    from conftest import REPO

    shutil.copy(REPO / "params.yaml", tmp_path)
    set_params(tmp_path, {"grid": {"loss": ["mse", "bce"], "optimizer": ["sgd", "adam"], "seed": [0, 1]}})
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("members", REPO / "cluster/members.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # in this process: a subprocess per call imports torch (~3 s each)
    monkeypatch.setattr(sys.modules["common"], "_READ", {})  # another test's params.yaml reads

    def members(*argv: str) -> list[str]:
        module.main(list(argv))
        return capsys.readouterr().out.split()

    every = members()
    assert len(every) == len(set(every)) == 8
    assert [members("--task", str(k), "3") for k in range(3)] == [every[0::3], every[1::3], every[2::3]]


def test_a_worker_refuses_a_bad_value_in_any_section_before_anything_runs(repo: Path) -> None:
    set_params(repo, {**GRID, "train": {**GRID["train"], "batch_size": 0}})
    commit(repo, "a bad batch size")
    out = sh(repo, "bash", "cluster/worker.sh", "--task", "0", "1", check=False)
    assert out.returncode == 2 and not ran(out) and "Running stage" not in out.stdout, out.stdout
    assert "error: params.yaml: train.batch_size: must be > 0, got 0" in out.stderr, out.stderr


@pytest.mark.parametrize(
    "slurm, tasks",
    [
        (("4", "1", "4", "1", "4"), None),  # --array=1-4: its 4th task, task 3 of 4
        (("6", "0", "6", "2", "4"), None),  # --array=0-6:2: its 4th task, task 3 of 4 (not 6)
        (("3", "1", "3", "1", "2"), "4"),  # FORESTSEG_TASKS=4 sbatch --array=1,3: the rerun of task 3 of 4
    ],
)
def test_a_slurm_task_trains_its_place_of_the_array(
    repo: Path, tmp_path: Path, slurm: tuple[str, ...], tasks: str | None
) -> None:
    """A grid of 2 members: task 3 of 4 has nothing to train, which the worker says before any remote check."""
    set_params(repo, GRID)
    commit(repo, "tiny grid")
    task_id, first, last, step, count = slurm
    env = {
        **os.environ,
        **dict(zip(["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX"], slurm[:3])),
        "SLURM_ARRAY_TASK_STEP": step,
        "SLURM_ARRAY_TASK_COUNT": count,
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_SUBMIT_DIR": str(repo),
        "TMPDIR": str(tmp_path),
        "FORESTSEG_REV": sh(repo, "git", "rev-parse", "HEAD").stdout.strip(),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the worker's python and dvc
    }
    env.pop("FORESTSEG_TASKS", None)
    if tasks:
        env["FORESTSEG_TASKS"] = tasks
    (tmp_path / f"forestseg-7-{task_id}").mkdir()  # its clone of a run killed by SIGKILL, then requeued
    (tmp_path / f"forestseg-7-{task_id}" / "params.yaml").write_text("half a clone")
    out = subprocess.run(["bash", "cluster/slurm.sbatch"], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "worker: task 3 of 4 has no member of the grid; nothing to train" in out.stdout
    assert not list(tmp_path.glob("forestseg-7-*"))
    # a rerun says so in the job's output, where a leftover export would otherwise go unseen
    rerun = "note: FORESTSEG_TASKS=4: task 3 reruns its share of an earlier --array=0-3; for a new grid, unset"
    assert (rerun in out.stdout) == bool(tasks)


@pytest.mark.parametrize("repo_env, says", [("/nonexistent", "fatal: repository '/nonexistent' does not exist")])
def test_a_slurm_task_that_cannot_clone_says_why_in_one_line(repo: Path, tmp_path: Path, repo_env, says) -> None:
    env = {
        **os.environ,
        **{
            f"SLURM_ARRAY_TASK_{k}": v
            for k, v in (("COUNT", "2"), ("ID", "0"), ("MIN", "0"), ("MAX", "1"), ("STEP", "1"))
        },
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_SUBMIT_DIR": str(repo),
        "TMPDIR": str(tmp_path),
        "FORESTSEG_REPO": repo_env,
        "FORESTSEG_REV": sh(repo, "git", "rev-parse", "HEAD").stdout.strip(),
    }
    env.pop("FORESTSEG_TASKS", None)
    out = subprocess.run(["bash", "cluster/slurm.sbatch"], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith(f"error: git clone of FORESTSEG_REPO={repo_env} into "), out
    assert says in out.stderr and "\n" not in out.stderr.strip(), out.stderr


@pytest.mark.parametrize("change", ["a file added to init/", "a new .dvc file", ".dvc/config edited"])
def test_a_worker_refuses_an_init_file_or_dvc_config_the_commit_does_not_have(repo: Path, change: str) -> None:
    set_params(repo, GRID)
    commit(repo, "tiny grid")
    if change == "a file added to init/":
        (repo / "init/notes.txt").write_text("mine")  # init/ is a dep of train: every member would differ
        named = "init/notes.txt"
    elif change == "a new .dvc file":  # `dvc add data/region`, not committed: the clones lack that data
        (repo / "data").mkdir(exist_ok=True)
        (repo / "data/region.dvc").write_text("outs:\n- path: region\n")
        named = "data/region.dvc"
    else:
        sh(repo, "dvc", "remote", "add", "-d", "other", "/elsewhere")
        named = ".dvc/config"
    out = sh(repo, "bash", "cluster/worker.sh", "bce-adam-0", check=False)
    assert out.returncode == 2 and not ran(out), out.stdout
    assert out.stderr.startswith(f"error: worker: {named} differ from the last commit"), out.stderr


@pytest.mark.parametrize(
    "rev, task, says",
    [
        (None, ("0", "0", "3", "1", "4"), "error: FORESTSEG_REV=: export the commit's full hash before sbatch"),
        ("main", ("0", "0", "3", "1", "4"), "error: FORESTSEG_REV=main: export the commit's full hash before sbatch"),
        # a commit never pushed to FORESTSEG_REPO: one line, not git's "reference is not a tree"
        ("0123456789abcdef0123456789abcdef01234567", ("0", "0", "3", "1", "4"), "error: FORESTSEG_REV=0123456789"),
        ("HEAD", ("3", "0", "6", "2", "4"), "error: task 3: the array (ids 0..6, step 2, 4 task(s)) is a list"),
        # --array=1,3 (Slurm: step 1) and --array=2, both reruns of tasks of an earlier array
        ("HEAD", ("3", "1", "3", "1", "2"), "error: task 3: the array (ids 1..3, step 1, 2 task(s)) is a list"),
        ("HEAD", ("2", "2", "2", "1", "1"), "error: task 2: the array (ids 2..2, step 1, 1 task(s)) is a list"),
        ("HEAD", ("5", "1", "5", "4", "2", "4"), "error: FORESTSEG_TASKS=4: the task count N of the earlier"),
    ],
)
def test_a_slurm_task_needs_one_commit_and_its_place_on_the_array(
    repo: Path, tmp_path: Path, rev: str | None, task: tuple[str, ...], says: str
) -> None:
    """Run as Slurm runs it (its variables set by hand): a branch name would resolve when each task starts,
    and a list of ids (a rerun of some tasks) would give each task another's share."""
    import os

    task_id, first, last, step, count, *tasks = task
    env = {
        **os.environ,
        "SLURM_ARRAY_TASK_COUNT": count,
        "SLURM_ARRAY_TASK_ID": task_id,
        "SLURM_ARRAY_TASK_MIN": first,
        "SLURM_ARRAY_TASK_MAX": last,
        "SLURM_ARRAY_TASK_STEP": step,
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_SUBMIT_DIR": str(repo),
        "TMPDIR": str(tmp_path),
    }
    env.pop("FORESTSEG_REV", None)
    env.pop("FORESTSEG_TASKS", None)
    if tasks:
        env["FORESTSEG_TASKS"] = tasks[0]
    if rev is not None:
        env["FORESTSEG_REV"] = sh(repo, "git", "rev-parse", "HEAD").stdout.strip() if rev == "HEAD" else rev
    out = subprocess.run(["bash", "cluster/slurm.sbatch"], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith(says), out.stderr
    assert "\n" not in out.stderr.strip(), out.stderr  # one line
    assert not list(tmp_path.glob("forestseg-7-*"))  # the task's clone is removed, failed or not


@pytest.mark.parametrize("name", ["bce-adam", "adam-0", "e-adam-"])
def test_a_worker_refuses_part_of_a_member_name(repo: Path, name: str) -> None:
    set_params(repo, GRID)
    commit(repo, "tiny grid")
    out = sh(repo, "bash", "cluster/worker.sh", name, check=False)
    assert out.returncode == 2 and not ran(out), out.stdout
    assert out.stderr.startswith(f"error: worker: {name} is not a member of the grid in params.yaml"), out.stderr
