"""End to end: the real `dvc repro` / `dvc exp run` on a tiny synthetic set, in a temp copy of the repo."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from conftest import TINY, ran, set_params, sh, start_dvc, train_small_model

from forestseg.checkpoint import read_model

pytestmark = pytest.mark.slow


def test_repro_then_cached_reruns(repo: Path) -> None:
    first = sh(repo, "dvc", "repro")
    assert ran(first) == {
        "check",
        "synth",
        "index",
        "split",
        "train@mse-adam-0",
        "train@bce-adam-0",
        "aggregate",
        "overlays",
    }
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert set(summary["combinations"]) == {"mse-adam", "bce-adam"}
    assert 0 < summary["baseline_all_forest"]["test_iou"] < 1
    for run in ("mse-adam-0", "bce-adam-0"):
        history = (repo / "metrics/runs" / run / "history.csv").read_text().splitlines()
        assert history[0] == "epoch,train_loss,test_loss,test_iou,test_dice,lr"  # no timings: same numbers, same bytes
        assert len(history) == 1 + TINY["train"]["epochs"]
        assert (repo / "models" / run / "model.pt").stat().st_size > 0
    assert (repo / "plots/loss_best.png").stat().st_size > 0
    report = (repo / "REPORT.md").read_text()
    assert "all-forest baseline" in report and "](plots/loss_best.png)" in report
    scenes = (repo / "metrics/scenes.csv").read_text().splitlines()
    assert scenes[0] == "scene,tiles,forest_share,iou,precision,recall" and "## Per-scene results" in report
    assert (repo / "metrics/runs/bce-adam-0/scenes.csv").is_file()  # train writes per-scene counts (issue 12)
    assert len(scenes) == 1 + summary["split"]["test"]["scenes"]
    assert (repo / "plots/overlays/worst_scenes.png").stat().st_size > 0
    plots = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)
    assert not plots.get("errors")
    assert {
        "plots/loss_best.png",
        "plots/loss_optimizers.png",
        "plots/test_iou.png",
        "test_iou_per_epoch",
        "plots/overlays/bce-adam.png",
        "metrics/runs/bce-adam-0/history.csv",
    } <= set(plots["data"])
    runs = plots["data"]["test_iou_per_epoch"][0]["content"]  # .dvc/plots/runs.json: every field it draws is there
    assert all(e["field"] in runs["data"]["values"][0] for e in runs["encoding"].values()), runs["encoding"]
    # a revision's curves.csv from before the combination column gets it from the run's name (<loss>-<optimizer>-<seed>)
    assert [t["as"] for t in runs["transform"]] == ["combination"]

    assert ran(sh(repo, "dvc", "repro")) == set()  # nothing changed, nothing reruns
    # an edit that no stage but check reads (a misspelt section) stops the pipeline, not "up to date"
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params + "trian:\n  epochs: 3\n")
    misspelt = sh(repo, "dvc", "repro", check=False)
    assert misspelt.returncode != 0 and ran(misspelt) == {"check"}
    assert "error: params.yaml: trian: unknown section; valid sections: data, synth," in misspelt.stderr
    # a value DVC compares as equal to the old one (1 == True): the file's bytes changed, so check runs
    (repo / "params.yaml").write_text(params.replace("augment: true", "augment: 1", 1))
    assert "augment: 1" in (repo / "params.yaml").read_text()
    one = sh(repo, "dvc", "repro", check=False)
    assert one.returncode != 0 and ran(one) == {"check"}
    assert "error: params.yaml: train.augment: must be true or false, got 1" in one.stderr
    (repo / "params.yaml").write_text(params)
    assert ran(sh(repo, "dvc", "repro")) == set()  # check's lock entry still holds the file as it is again
    # a write that a kill interrupted leaves a temp file in an output folder: not part of its hash, nor of git
    from conftest import dead_temp_prefix

    litter = repo / "metrics/runs/bce-adam-0" / (dead_temp_prefix("metrics") + "abc.tmp.json")
    litter.write_text("{")
    assert "up to date" in sh(repo, "dvc", "status").stdout
    assert litter.name not in sh(repo, "git", "status", "--porcelain", "--ignored=no").stdout
    # the train stage it came from may never run again (DVC restores a run from its run-cache): aggregate clears it
    assert ran(sh(repo, "dvc", "repro", "-f", "-s", "aggregate")) == {"aggregate"} and not litter.exists()
    # the .gitignore DVC writes beside a run's outputs is its bookkeeping, not aggregate's input: a
    # `dvc checkout` that restores the outputs without it (or rewrites it in another order) reran aggregate
    ignore = repo / "metrics/runs/bce-adam-0/.gitignore"
    lines = ignore.read_text()
    ignore.unlink()
    assert "up to date" in sh(repo, "dvc", "status").stdout
    ignore.write_text("".join(reversed(lines.splitlines(keepends=True))))
    assert "up to date" in sh(repo, "dvc", "status").stdout
    ignore.write_text(lines)

    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline run")
    exp = sh(repo, "dvc", "exp", "run", "-n", "lr0.01", "-S", "optimizer.lr=1e-2", "-S", "train.adapt_bn=0.5")
    assert ran(exp) == {"check", "train@mse-adam-0", "train@bce-adam-0", "aggregate", "overlays"}
    assert json.loads((repo / "metrics/runs/bce-adam-0/metrics.json").read_text())["lr"] == 1e-2
    assert read_model(repo / "models/bce-adam-0/model.pt")["adapt_bn"] == 0.5  # predict's default from now on
    assert "batch-norm statistics moved 0.5 towards its own" in (repo / "REPORT.md").read_text()
    assert_exp_show_and_metrics_diff_show_the_headline(repo, "lr0.01")

    set_params(repo, {"grid": {"loss": ["bce"], "seed": [0, 1]}})  # a new seed, one loss dropped
    more = sh(repo, "dvc", "repro")
    assert ran(more) == {"check", "train@bce-adam-1", "aggregate", "overlays"}
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert summary["combinations"]["bce-adam"]["seeds"] == 2


def test_repro_on_a_kaggle_folder_outside_the_repo(repo: Path, tmp_path: Path) -> None:
    """data.source may point anywhere; a bad pair there is skipped and reported, not fatal."""
    from conftest import make_set

    source = make_set(tmp_path / "Forest Segmented", scenes=3)
    bad = next((source / "images").glob("*.jpg"))
    bad.write_bytes(b"not a jpeg")
    set_params(repo, {"data": {"source": str(source)}, "grid": {"loss": ["bce"]}})
    out = sh(repo, "dvc", "repro", "aggregate")
    assert "synth" not in ran(out)  # with a real source, nothing upstream needs the synthetic set
    report = json.loads((repo / "metrics/index.json").read_text())
    assert report["rows"] == 12 and report["valid"] == 11 and report["skipped"] == 1
    assert "1 skipped" in out.stdout


def test_bad_source_fails_with_a_clear_message(repo: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    set_params(repo, {"data": {"source": str(empty)}})
    out = sh(repo, "dvc", "repro", "index", check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "meta_data.csv: missing" in text and "kaggle datasets download" in text
    assert "Traceback" not in text


def test_study_command_sets_the_study_protocol(repo: Path) -> None:
    """The study recipe, queued instead of run, records the 2022 protocol's params as an experiment;
    its lr_overrides replace (not merge into) the ones params.yaml holds."""
    set_params(repo, {"optimizer": {"lr_overrides": {"bce-adam": 0.01}}})
    (repo / "data/raw/Forest Segmented").mkdir(parents=True)  # run.py checks it is there; queued, none reads it
    sh(
        repo,
        sys.executable,
        "recipes/run.py",
        "study",
        "--queue",
        "-S",
        "data.source=data/raw/Forest Segmented",
        "-S",
        "split.by=scene",
    )
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    queued = [r for e in shown for x in (e.get("experiments") or []) for r in x["revs"]]
    params = queued[0]["data"]["params"]["params.yaml"]["data"]
    assert params["data"]["source"] == "data/raw/Forest Segmented"
    assert params["model"]["arch"] == "study_unet" and params["model"]["input"] == "raw"
    assert params["optimizer"]["lr"] == 1e-4 and params["optimizer"]["lr_overrides"] == {"mse_logits-adam": 1e-3}
    assert params["train"]["batch_size"] == 160 and params["train"]["epochs"] == 15
    assert params["grid"]["seed"] == [0, 1, 2, 3, 4, 5] and params["split"]["by"] == "scene"
    assert [x["name"] for e in shown for x in (e.get("experiments") or [])][0].startswith("study-")
    from forestseg.config import load_sections

    load_sections(params, "data", "split", "model", "optimizer", "train", "grid")  # valid as a whole


HEADLINE = {"best", "best_iou", "iou_mse-adam", "iou_bce-adam", "miou_mse-adam", "miou_bce-adam"}


def commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def flat(tree: dict) -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, as dvc exp show makes columns of metrics."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat(value).items()})
        else:
            out[key] = value
    return out


def assert_exp_show_and_metrics_diff_show_the_headline(repo: Path, name: str) -> None:
    """Only metrics/headline.json is a metric: a few columns per experiment, no timings, and
    `dvc metrics diff` starts with the best combination (`name`: the one experiment, just run)."""
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    exps = {x["name"]: x["revs"][0]["data"] for e in shown for x in (e.get("experiments") or [])}
    assert set(exps) == {name}
    for exp, data in exps.items():
        assert list(data["metrics"]) == ["metrics/headline.json"], exp
        values = flat(data["metrics"]["metrics/headline.json"]["data"])
        assert set(values) == HEADLINE and len(values) < 40, exp
        assert isinstance(values["best"], str) and 0 <= values["iou_bce-adam"] <= 1
        assert not any("second" in k or "time" in k for k in values)
    table = sh(repo, "dvc", "exp", "show", "--no-pager", "--only-changed", "--md").stdout
    assert "iou_bce-adam" in table and "optimizer.lr" in table

    out = sh(repo, "dvc", "metrics", "diff", "--all").stdout.splitlines()
    assert out[0].split() == ["Path", "Metric", "HEAD", "workspace", "Change"]
    assert [line.split()[:2] for line in out[1:3]] == [
        ["metrics/headline.json", "best"],
        ["metrics/headline.json", "best_iou"],
    ]
    assert len(out) == 1 + len(HEADLINE) and all(line.startswith("metrics/headline.json") for line in out[1:])


def test_a_shrunk_grid_removes_stale_run_folders(repo: Path, tmp_path: Path) -> None:
    set_params(repo, {"grid": {"loss": ["bce"], "seed": [0, 1]}})
    sh(repo, "dvc", "repro")
    commit(repo, "two seeds")  # the run folders are committed, as the demo's are
    runs, models = repo / "metrics/runs", repo / "models"
    assert sorted(p.name for p in runs.iterdir()) == ["bce-adam-0", "bce-adam-1"]

    set_params(repo, {"grid": {"seed": [0]}})
    out = sh(repo, "dvc", "repro")
    assert ran(out) == {"check", "aggregate", "overlays"}  # nothing retrains
    assert "run folder(s) of metrics/runs not in the grid: bce-adam-1" in out.stdout
    assert "model folder(s) of models not in the grid: bce-adam-1" in out.stdout
    assert holding_outputs(runs) == ["bce-adam-0"] and holding_outputs(models) == ["bce-adam-0"]
    assert [p.name for p in (runs / "bce-adam-1").iterdir()] == [".gitignore"]  # DVC's, which git tracks
    assert json.loads((repo / "metrics/summary.json").read_text())["combinations"]["bce-adam"]["seeds"] == 1
    assert ran(sh(repo, "dvc", "repro")) == set()  # removing them left every stage up to date
    assert "up to date" in sh(repo, "dvc", "status").stdout
    commit(repo, "one seed")
    # a clone has only the grid's models: overlays' `models` dependency in dvc.lock must be that
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "cache", "dir", str(repo / ".dvc/cache"))
    sh(clone, "dvc", "checkout")
    assert "up to date" in sh(clone, "dvc", "status").stdout

    # the same through an experiment: its commit holds only the current grid's run folders
    sh(repo, "dvc", "exp", "run", "-n", "seed1", "-S", "grid.seed=[1]")
    assert holding_outputs(runs) == ["bce-adam-1"]
    assert ran(sh(repo, "dvc", "repro")) == set()
    assert "up to date" in sh(repo, "dvc", "status").stdout
    rev = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    rev = next(x["revs"][0]["rev"] for e in rev for x in (e.get("experiments") or []) if x["name"] == "seed1")
    tree = sh(repo, "git", "ls-tree", "-r", "--name-only", f"{rev}:metrics/runs").stdout.split()
    assert tree == ["bce-adam-0/.gitignore", "bce-adam-1/.gitignore"]  # outputs in DVC's cache, not git
    headline = json.loads(sh(repo, "git", "show", f"{rev}:metrics/headline.json").stdout)
    assert set(headline) == {"best", "best_iou", "iou_bce-adam", "miou_bce-adam"}
    # grown back through an experiment: its outputs come from the cache, and stay out of git
    sh(repo, "dvc", "exp", "run", "-n", "both", "-S", "grid.seed=[0,1]")
    assert holding_outputs(runs) == ["bce-adam-0", "bce-adam-1"]
    assert sh(repo, "git", "status", "--porcelain", "--untracked-files=all", "metrics/runs", "models").stdout == ""
    rev = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    rev = next(x["revs"][0]["rev"] for e in rev for x in (e.get("experiments") or []) if x["name"] == "both")
    tree = sh(repo, "git", "ls-tree", "-r", "--name-only", f"{rev}:metrics/runs").stdout.split()
    assert tree == ["bce-adam-0/.gitignore", "bce-adam-1/.gitignore"]


def holding_outputs(folder: Path) -> list[str]:
    """The run folders of `folder` that hold more than DVC's .gitignore."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and any(q.name != ".gitignore" for q in p.iterdir()))


def test_a_killed_dvc_repro_resumes_its_run(repo: Path) -> None:
    """SIGKILL the whole `dvc repro` mid-training; the next `dvc repro` resumes the run, not restarts it."""
    import signal

    set_params(repo, {"grid": {"loss": ["bce"]}, "train": {"epochs": 30}})
    proc = start_dvc(repo, "repro")
    for line in proc.stdout:
        if "epoch 3/30" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.stdout.close()
    assert proc.wait() == -signal.SIGKILL
    again = sh(repo, "dvc", "repro")
    assert re.search(r"resuming after epoch ([3-9]|\d\d) ", again.stdout)
    assert "train@bce-adam-0" in ran(again) and "index" not in ran(again)
    history = (repo / "metrics/runs/bce-adam-0/history.csv").read_text().splitlines()
    assert len(history) == 31 and history[1].startswith("1,")  # the epochs before the kill are kept


def test_train_from_an_init_file_tracked_by_dvc_reruns_when_it_changes(repo: Path, tmp_path: Path) -> None:
    """train.init_from names a model file in init/, a dep folder of train whose file has its own .dvc file."""
    import shutil

    source = train_small_model(tmp_path / "source", tile=32, width=TINY["model"]["width"])  # TINY's model params
    shutil.copy(source, repo / "init/source.pt")
    set_params(repo, {"grid": {"loss": ["bce"]}})  # one member shows it (CI's time)
    set_params(repo, {"train": {"init_from": "init/README.md"}})  # git-tracked, and no model file
    readme = sh(repo, "dvc", "repro", check=False)
    assert "error: params.yaml: train.init_from: init/README.md: cannot be read as a forestseg model file" in (
        readme.stderr
    )
    # what to put there (a run's model file), never to `dvc add` the README itself
    assert "copy a finished run's model file (models/<run>/model.pt) into init/" in readme.stderr
    assert "dvc add init/README.md" not in readme.stderr
    set_params(repo, {"train": {"init_from": "init/source.pt"}})
    untracked = sh(repo, "dvc", "repro", check=False)  # git would commit the model file: refused
    assert untracked.returncode != 0
    assert "error: params.yaml: train.init_from: init/source.pt is not tracked by DVC" in untracked.stderr
    assert "Traceback" not in untracked.stderr
    (repo / "init/.gitignore").write_text("/source.pt\n")  # ignored by git, still not DVC's: refused too
    ignored = sh(repo, "dvc", "repro", check=False)
    assert "error: params.yaml: train.init_from: init/source.pt is not tracked by DVC" in ignored.stderr

    sh(repo, "dvc", "add", "init/source.pt")
    first = sh(repo, "dvc", "repro")
    assert {"train@bce-adam-0", "aggregate", "overlays"} <= ran(first)
    assert "bce-adam-0: fine-tuning from init/source.pt" in first.stdout
    assert "fine-tuned from init/source.pt" in (repo / "REPORT.md").read_text()
    assert ran(sh(repo, "dvc", "repro")) == set()
    assert "up to date" in sh(repo, "dvc", "status").stdout

    shutil.copy(repo / "models/bce-adam-0/model.pt", repo / "init/source.pt")  # another model file, same name
    sh(repo, "dvc", "add", "init/source.pt")
    assert ran(sh(repo, "dvc", "repro")) == {"train@bce-adam-0", "aggregate", "overlays"}
    assert "up to date" in sh(repo, "dvc", "status").stdout

    # a collaborator's fresh clone has init/source.pt.dvc only; a params change reruns the check stage,
    # which must not need the file that `dvc repro --pull` brings only for the train stage
    sh(repo, "dvc", "remote", "add", "-d", "store", str(tmp_path / "store"))
    sh(repo, "dvc", "push", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "fine-tuning, pushed")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "init/source.pt").exists() and (clone / "init/source.pt.dvc").is_file()
    set_params(clone, {"train": {"epochs": TINY["train"]["epochs"] + 1}})
    pulled = sh(clone, "dvc", "repro", "--pull", check=False)
    assert pulled.returncode == 0, pulled.stderr
    assert {"check", "train@bce-adam-0"} <= ran(pulled) and "bce-adam-0: fine-tuning from init/source.pt" in (
        pulled.stdout
    )
