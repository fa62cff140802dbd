"""recipes/rank.py: experiments of `dvc exp show --json` ranked by a headline value, table and figure.

tests/fixtures/exp_show.json is the output of `dvc exp show --json` (DVC 3.67.1; only the deps and
outs entries dropped) in a copy of this repo with the TINY params and one grid member (bce-adam-0):
`dvc repro`, a commit, `dvc exp run --queue -S 'model.width=4,8' -S 'optimizer.lr=0.001,0.01'`,
`dvc exp run --queue -n diverged -S optimizer.lr=1e9` (every run diverges, so aggregate fails),
`dvc queue start -j 1` until done, then `dvc exp run --queue -n waiting -S model.width=6` left queued.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, TINY, failed_logs, set_params, sh, wait_for_queue
from PIL import Image

from forestseg.config import ForestsegError

spec = importlib.util.spec_from_file_location("recipes_rank", REPO / "recipes" / "rank.py")
rank = sys.modules["recipes_rank"] = importlib.util.module_from_spec(spec)  # a script, not a package module
spec.loader.exec_module(rank)

SHOWN = json.loads((REPO / "tests" / "fixtures" / "exp_show.json").read_text())


def shown_with(name: str) -> tuple[list, dict]:
    """A copy of the fixture's `dvc exp show --json` and, in it, the experiment `name` to edit."""
    shown = copy.deepcopy(SHOWN)
    return shown, next(x for x in shown[1]["experiments"] if x["name"] == name)


def headline_of(exp: dict) -> dict:
    return exp["revs"][0]["data"]["metrics"]["metrics/headline.json"]["data"]


def test_experiments_are_ranked_best_first_with_the_params_that_differ() -> None:
    table = rank.ranking(rank.experiments(SHOWN), "best_iou")
    assert list(table.columns) == [
        "rank",
        "experiment",
        "best_iou",
        "best",
        "best_miou",
        "iou_bce-adam",
        "model.width",
        "optimizer.lr",
    ]
    assert table["experiment"].tolist() == [
        "lucky-knap",
        "dried-sink",
        "loony-grub",
        "rummy-ruin",
        "diverged",
        "waiting",
    ]
    assert table["rank"].tolist() == ["1", "2", "3", "4", "-", "-"]
    assert table["best_iou"].tolist()[:4] == [0.6523, 0.5402, 0.4385, 0.4351]
    assert table["best_miou"].tolist()[:4] == [0.6482, 0.4517, 0.2262, 0.2175]  # the best combination's mIoU
    by_miou = rank.ranking(rank.experiments(SHOWN), "best_miou")  # the pipeline's own criterion
    assert list(by_miou.columns)[2:5] == ["best_miou", "best", "iou_bce-adam"]
    assert by_miou["experiment"].tolist()[:4] == ["lucky-knap", "dried-sink", "loony-grub", "rummy-ruin"]
    assert table.set_index("experiment").loc["lucky-knap", ["model.width", "optimizer.lr"]].tolist() == ["8", "0.01"]


def test_failed_and_queued_experiments_are_last_and_marked() -> None:
    exps = {e.name: e for e in rank.experiments(SHOWN)}
    assert (exps["diverged"].state, exps["waiting"].state) == ("failed", "queued")
    # DVC shows the failed experiment with its baseline's headline: it must not be ranked by it
    failed = next(x for b in SHOWN for x in b["experiments"] or [] if x["name"] == "diverged")
    assert failed["revs"][0]["data"]["metrics"]["metrics/headline.json"]["data"]["best_iou"] == 0.4351
    assert exps["diverged"].headline == {}
    rows = rank.ranking(list(exps.values()), "best_iou").set_index("experiment")
    assert rows.loc["diverged", "best_iou"] == "failed" and rows.loc["waiting", "best_iou"] == "queued"
    assert rows.loc["diverged", "optimizer.lr"] == "1e+09" and rows.loc["waiting", "model.width"] == "6"
    # a plain `dvc exp run` has no executor: the rev's error alone marks it failed
    shown = copy.deepcopy(SHOWN)
    next(x for x in shown[1]["experiments"] if x["name"] == "diverged").pop("executor")
    assert {e.name: e.state for e in rank.experiments(shown)}["diverged"] == "failed"


@pytest.mark.parametrize("own, state", [(True, "ok"), (None, "stale"), (False, "stale")])
def test_a_data_change_that_leaves_the_scores_equal_is_ranked_where_the_lock_proves_them_its_own(
    monkeypatch, own, state
) -> None:
    """data.check_inverted: false, say: index reran, wrote the same files, and the headline is the
    baseline's to the digit. Its dvc.lock says so (own); without the commit the equal headline looks like
    a train-only slice's."""
    shown = copy.deepcopy(SHOWN)
    base = shown[1]["data"]
    exp = next(x for x in shown[1]["experiments"] if x["name"] == "lucky-knap")
    data = exp["revs"][0]["data"]
    data["metrics"]["metrics/headline.json"]["data"] = copy.deepcopy(base["metrics"]["metrics/headline.json"]["data"])
    data["params"]["params.yaml"]["data"].setdefault("data", {})["check_inverted"] = False
    monkeypatch.setattr(rank, "aggregated", lambda rev, params: own)
    assert {e.name: e.state for e in rank.experiments(shown)}["lucky-knap"] == state


HEADLINE = b'{"best_iou": 0.5}'


def serve_lock(monkeypatch, stages: str) -> None:
    """rank._git_show answering with a commit's dvc.lock, the YAML entries `stages` (aggregate's last,
    completed here with its headline output), and HEADLINE as its headline.json."""
    lock = (
        f"schema: '2.0'\nstages:\n{stages}    outs:\n    - path: metrics/headline.json\n"
        f"      md5: {hashlib.md5(HEADLINE).hexdigest()}\n"
    )
    files = {"dvc.lock": lock.encode(), "metrics/headline.json": HEADLINE}
    monkeypatch.setattr(rank, "_git_show", lambda rev, path: files.get(path))


@pytest.mark.parametrize("index_md5, own", [("aaa", True), ("bbb", False)])
def test_aggregated_needs_the_files_it_read_to_be_the_ones_this_lock_wrote(monkeypatch, index_md5, own) -> None:
    """A train-only slice whose data params changed what index wrote: aggregate's entry read another file."""
    stages = f"""  index:
    outs:
    - path: metrics/index.json
      md5: {index_md5}
  aggregate:
    deps:
    - path: metrics/index.json
      md5: aaa
    - path: metrics/runs
      md5: ccc.dir
    params:
      params.yaml:
        grid.seed: [0]
"""
    serve_lock(monkeypatch, stages)
    assert rank.aggregated("abc", {"grid.seed": [0]}) is own


def test_ties_share_a_rank() -> None:
    shown = copy.deepcopy(SHOWN)
    for x in shown[1]["experiments"]:
        if x["name"] == "dried-sink":  # the same value as loony-grub
            x["revs"][0]["data"]["metrics"]["metrics/headline.json"]["data"]["best_iou"] = 0.4385
    table = rank.ranking(rank.experiments(shown), "best_iou")
    assert table["experiment"].tolist()[:4] == ["lucky-knap", "dried-sink", "loony-grub", "rummy-ruin"]
    assert table["rank"].tolist()[:4] == ["1", "2", "2", "4"]


def test_bad_metric_names_the_valid_ones() -> None:
    exps = rank.experiments(SHOWN)
    with pytest.raises(ForestsegError, match=r"--metric best: not a numeric headline value; choose one of best_iou, "):
        rank.ranking(exps, "best")
    with pytest.raises(
        ForestsegError, match=r"--metric iou_mse-adam: .* best_iou, best_miou, iou_bce-adam, miou_bce-adam$"
    ):
        rank.ranking(exps, "iou_mse-adam")
    unfinished = [e for e in exps if e.state != "ok"]
    with pytest.raises(
        ForestsegError, match=r"no finished experiment has metrics/headline.json \(1 failed, 1 queued\)"
    ):
        rank.ranking(unfinished, "best_iou")


def test_main_writes_the_table_and_figure_and_prints_the_table(tmp_path: Path, capsys) -> None:
    assert rank.main(["--json", str(REPO / "tests/fixtures/exp_show.json"), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[2] == "| 1 | lucky-knap | 0.6523 | bce-adam | 0.6482 | 0.6523 | 8 | 0.01 |"
    assert "| - | diverged | failed |  |  |  | 4 | 1e+09 |" in printed
    text = (tmp_path / "out/ranking.md").read_text()
    assert text.startswith("# Experiments ranked by best_iou") and "(ranking.png)" in text
    assert "| 4 | rummy-ruin | 0.4351 |" in text
    with Image.open(tmp_path / "out/ranking.png") as im:
        assert im.format == "PNG" and im.width > 300


@pytest.mark.parametrize(
    "args, message",
    [
        (["--json", "nowhere.json"], "error: --json nowhere.json: cannot be read (No such file or directory)"),
        (["--json", "README.md"], f"error: {REPO}/README.md: not JSON (Expecting value at line 1)"),
        (["--json", "dvc.yaml", "--metric", "x"], f"error: {REPO}/dvc.yaml: not JSON"),
        (
            ["--json", "bad.json"],
            "error: bad.json: not the output of `dvc exp show --json` (an experiment without revs)",
        ),
        (["--json", "list.json"], "error: list.json: not the output of `dvc exp show --json` (a list of commits)"),
        (["--json", "tests/fixtures/exp_show.json", "--metric", "best"], "error: --metric best: not a numeric"),
        (
            ["--json", "tests/fixtures/exp_show.json", "-o", "a-file.md"],
            "error: -o a-file.md: a file; -o takes a folder",
        ),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('[{"rev": "workspace", "experiments": [{"revs": []}]}]')
    (tmp_path / "a-file.md").write_text("mine\n")
    (tmp_path / "list.json").write_text("[1]")
    args = [str(REPO / a) if (REPO / a).is_file() else a for a in args]
    out = subprocess.run(
        [sys.executable, str(REPO / "recipes/rank.py"), *(args if "-o" in args else [*args, "-o", "out"])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.slow
def test_a_queued_sweep_runs_two_at_a_time_without_clobbering_and_is_ranked(repo: Path) -> None:
    """README Sweeps and Scale-out: a two-value sweep queued, run by two workers at once (each keeps its
    own outputs), ranked."""
    set_params(repo, {"grid": {**TINY["grid"], "loss": ["bce"]}})
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline run")
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "optimizer.lr=0.01,0.003")
    sh(repo, "dvc", "queue", "start", "-j", "2")
    status = wait_for_queue(repo)
    assert status.count("Success") == 2, failed_logs(repo, status)
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    exps = {x["name"]: x["revs"][0]["data"] for e in shown for x in (e.get("experiments") or [])}
    lrs = {name: data["params"]["params.yaml"]["data"]["optimizer"]["lr"] for name, data in exps.items()}
    assert sorted(lrs.values()) == [0.003, 0.01]
    for name, lr in lrs.items():
        assert "iou_bce-adam" in exps[name]["metrics"]["metrics/headline.json"]["data"]
        # per-run metrics are cached DVC outputs: check the experiment's out of the cache
        sh(repo, "dvc", "exp", "apply", name)
        run = json.loads((repo / "metrics/runs/bce-adam-0/metrics.json").read_text())
        assert run["lr"] == lr and run["status"] == "ok"  # each experiment kept its own outputs
    out = sh(repo, sys.executable, "recipes/rank.py").stdout.splitlines()
    assert out[0] == "| rank | experiment | best_iou | best | best_miou | iou_bce-adam | optimizer.lr |"
    rows = [line.split(" | ") for line in out[2:4]]
    assert [r[0] for r in rows] == ["| 1", "| 2"] or [r[0] for r in rows] == ["| 1", "| 1"]
    assert float(rows[0][2]) >= float(rows[1][2]) and {r[6] for r in rows} == {"0.01 |", "0.003 |"}
    assert out[4] == "wrote sweeps/ranking.md and sweeps/ranking.png"
    assert (repo / "sweeps/ranking.png").stat().st_size > 0
    # A train-only slice (scale-out) commits whatever headline the workspace holds: stale, by its dvc.lock.
    sh(repo, "dvc", "exp", "run", "-n", "slice", "-S", "model.width=8", "train")
    out = sh(repo, sys.executable, "recipes/rank.py")
    rows = {r.split(" | ")[1]: r.split(" | ") for r in out.stdout.splitlines()[2:5]}
    assert rows["slice"][:3] == ["| -", "slice", "stale"], out.stdout
    assert "note:" not in out.stderr and sum(r[0] != "| -" for r in rows.values()) == 2


@pytest.mark.parametrize(
    "value, mark",
    [(float("nan"), "not finite"), (float("inf"), "not finite"), ("high", "no best_iou"), (True, "no best_iou")],
)
def test_a_value_that_is_not_a_finite_number_is_not_ranked(value, mark, tmp_path: Path) -> None:
    shown, exp = shown_with("lucky-knap")
    headline_of(exp)["best_iou"] = value
    rows = rank.ranking(rank.experiments(shown), "best_iou").set_index("experiment")
    assert rows.loc["lucky-knap", "best_iou"] == mark and rows.loc["lucky-knap", "rank"] == "-"
    assert rows.loc["dried-sink", "rank"] == "1"
    # the only experiment with a value, and it is NaN: one line, no table or figure written
    only = copy.deepcopy(shown)
    only[1]["experiments"] = [exp]
    (tmp_path / "nan.json").write_text(json.dumps(only))
    out = subprocess.run(
        [sys.executable, str(REPO / "recipes/rank.py"), "--json", "nan.json", "-o", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    if isinstance(value, float):
        assert out.returncode == 2 and out.stderr == "error: no experiment has a finite best_iou: nothing to rank\n"
    else:
        assert out.returncode == 2 and out.stderr.startswith("error: --metric best_iou: not a numeric headline value")
    assert not (tmp_path / "out").exists()


def test_the_table_goes_to_the_projects_sweeps_wherever_rank_is_run_from(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "rank.py").write_bytes((REPO / "recipes" / "rank.py").read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exps = REPO / "tests" / "fixtures" / "exp_show.json"
    for cwd, shown in [(elsewhere, f"{project}/sweeps"), (project, "sweeps")]:
        out = subprocess.run(
            [sys.executable, str(project / "recipes" / "rank.py"), "--json", str(exps)],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1] == f"wrote {shown}/ranking.md and {shown}/ranking.png"
    assert not any(elsewhere.iterdir())
    assert (project / "sweeps" / "ranking.md").read_text().startswith("# Experiments ranked by best_iou")


def test_a_headline_that_is_not_a_mapping_counts_as_no_metrics() -> None:
    shown, exp = shown_with("lucky-knap")
    exp["revs"][0]["data"]["metrics"]["metrics/headline.json"]["data"] = [0.9]
    assert {e.name: e.state for e in rank.experiments(shown)}["lucky-knap"] == "no metrics"


def test_experiments_from_elsewhere_are_ranked_with_a_note(capsys, tmp_path: Path) -> None:
    """The fixture's experiment commits are not in this repository: their dvc.lock cannot say whether
    aggregate ran for them, so they are ranked as shown, and the output says which were not checked."""
    exps = {e.name: e for e in rank.experiments(SHOWN)}
    assert exps["lucky-knap"].state == "ok" and not exps["lucky-knap"].checked
    assert exps["diverged"].checked  # failed: nothing to check
    assert rank.main(["--json", str(REPO / "tests/fixtures/exp_show.json"), "-o", str(tmp_path)]) == 0
    assert (
        "note: the commits of lucky-knap, loony-grub, dried-sink, rummy-ruin are not in this" in capsys.readouterr().err
    )


@pytest.mark.parametrize("section", ["split", "synth"])
def test_a_train_only_slice_of_other_data_showing_its_baselines_headline_is_stale(section: str) -> None:
    """`dvc exp run -S split.seed=1 train` (or synth.seed): aggregate does not read it, so its entry and the
    headline stay the baseline's; the headline unchanged beside other training data gives it away."""
    shown = copy.deepcopy(SHOWN)
    base = shown[1]["data"]
    exp = next(x for x in shown[1]["experiments"] if x["name"] == "rummy-ruin")  # the baseline's own params
    data = exp["revs"][0]["data"]
    data["metrics"]["metrics/headline.json"]["data"] = dict(base["metrics"]["metrics/headline.json"]["data"])
    assert {e.name: e.state for e in rank.experiments(shown)}["rummy-ruin"] == "ok"
    data["params"]["params.yaml"]["data"][section]["seed"] += 1
    assert {e.name: e.state for e in rank.experiments(shown)}["rummy-ruin"] == "stale"
    # its own headline beside the other data: aggregate ran for it
    data["metrics"]["metrics/headline.json"]["data"]["best_iou"] = 0.5
    assert {e.name: e.state for e in rank.experiments(shown)}["rummy-ruin"] == "ok"
    # split.by is aggregate's own param (its dvc.lock entry tells): the baseline's headline is no sign there
    data["metrics"]["metrics/headline.json"]["data"] = dict(base["metrics"]["metrics/headline.json"]["data"])
    data["params"]["params.yaml"]["data"][section]["seed"] -= 1
    data["params"]["params.yaml"]["data"]["split"]["by"] = "tile"
    assert {e.name: e.state for e in rank.experiments(shown)}["rummy-ruin"] == "ok"


def test_an_experiment_whose_lock_says_aggregate_did_not_write_its_headline_is_stale(monkeypatch) -> None:
    """Where the experiment's commit is here, its dvc.lock decides (`aggregated`): False is stale, not ranked."""
    revs = {x["name"]: x["revs"][0]["rev"] for x in SHOWN[1]["experiments"]}
    seen = {}

    def aggregated(rev, params):
        seen[rev] = params
        return rev != revs["lucky-knap"]

    monkeypatch.setattr(rank, "aggregated", aggregated)
    exps = {e.name: e for e in rank.experiments(SHOWN)}
    assert exps["lucky-knap"].state == "stale" and exps["lucky-knap"].headline == {}
    assert exps["dried-sink"].state == "ok" and exps["dried-sink"].checked
    assert seen[revs["lucky-knap"]]["model.width"] == 8
    rows = rank.ranking(list(exps.values()), "best_iou").set_index("experiment")
    assert rows.loc["lucky-knap", ["rank", "best_iou"]].tolist() == ["-", "stale"]
    assert rows.loc["dried-sink", "rank"] == "1"


@pytest.mark.parametrize(
    "params, own",
    [
        ({"optimizer.lr": 0.001, "split.by": "scene"}, True),
        # a train-only slice that set a key under the lock's empty mapping: not the run aggregate saw
        ({"optimizer.lr": 0.001, "optimizer.lr_overrides.bce-adam": 10, "split.by": "scene"}, False),
        ({"optimizer.lr": 0.001, "split.by": "scene", "split.seed": 3, "data.source": "x"}, True),  # not aggregate's
    ],
)
def test_aggregated_compares_params_both_ways(monkeypatch, params, own) -> None:
    stages = """  aggregate:
    params:
      params.yaml:
        optimizer:
          lr: 0.001
          lr_overrides: {}
        split.by: scene
"""
    serve_lock(monkeypatch, stages)
    assert rank.aggregated("abc", params) is own


def test_the_lock_is_read_as_dvc_writes_it_in_a_project_below_the_git_root(tmp_path: Path, monkeypatch) -> None:
    """dvc.lock is YAML 1.2 (`lr: 1e-05` a float, PyYAML's string); the project may be a subfolder."""
    project = tmp_path / "repo" / "project"
    (project / "metrics").mkdir(parents=True)
    (project / "metrics/headline.json").write_text('{"best_iou": 0.5}\n')
    md5 = hashlib.md5((project / "metrics/headline.json").read_bytes()).hexdigest()
    (project / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  aggregate:\n    params:\n      params.yaml:\n        optimizer:\n"
        f"          lr: 1e-05\n    outs:\n    - path: metrics/headline.json\n      md5: {md5}\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    subprocess.run([*git, "-C", str(tmp_path / "repo"), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(tmp_path / "repo"), "commit", "-qm", "x"], check=True)
    monkeypatch.setattr(rank, "ROOT", project)
    assert rank.aggregated("HEAD", {"optimizer.lr": 1e-05}) is True
    assert rank.aggregated("HEAD", {"optimizer.lr": 1e-04}) is False
    # the params agree, but the committed headline is not the one aggregate wrote (a train-only slice
    # commits whatever the workspace held)
    (project / "metrics/headline.json").write_text('{"best_iou": 0.7}\n')
    subprocess.run([*git, "-C", str(tmp_path / "repo"), "commit", "-qam", "another headline"], check=True)
    assert rank.aggregated("HEAD", {"optimizer.lr": 1e-05}) is False


def test_a_combination_every_seed_of_which_diverged_is_told_from_one_not_in_the_grid() -> None:
    shown = copy.deepcopy(SHOWN)
    exps = {x["name"]: x for x in shown[1]["experiments"]}
    headline = {
        n: exps[n]["revs"][0]["data"]["metrics"]["metrics/headline.json"]["data"] for n in ("lucky-knap", "dried-sink")
    }
    headline["lucky-knap"]["iou_bce-adam"] = None  # aggregate's null: every seed diverged
    headline["dried-sink"]["iou_mse-sgd"] = 0.5  # a combination only this experiment's grid has
    rows = rank.ranking(rank.experiments(shown), "best_iou").set_index("experiment")
    assert rows.loc["lucky-knap", "iou_bce-adam"] == "diverged" and rows.loc["dried-sink", "iou_mse-sgd"] == 0.5
    assert pd.isna(rows.loc["lucky-knap", "iou_mse-sgd"])  # not in its grid: blank in the table


def test_an_empty_mapping_adds_no_column_beside_its_keys() -> None:
    """lr_overrides {} in one experiment and {mse-adam: 0.001} in another: one column, blank for the first."""
    shown = copy.deepcopy(SHOWN)
    exps = [e for e in rank.experiments(shown) if e.state == "ok"][:2]
    exps[0].params["optimizer.lr_overrides.mse-adam"] = 0.001
    table = rank.ranking(exps, "best_iou").set_index("experiment")
    assert [c for c in table.columns if "lr_overrides" in c] == ["optimizer.lr_overrides.mse-adam"]
    assert table["optimizer.lr_overrides.mse-adam"].tolist() == ["0.001", ""]
    assert rank._flat({"optimizer": {"lr": 0.1, "lr_overrides": {}}}, "") == {"optimizer.lr": 0.1}


@pytest.mark.parametrize(
    "key, value, metric, mark",
    [("miou_bce-adam", "high", "best_miou", "no best_miou"), ("iou_bce-adam", None, "iou_bce-adam", "diverged")],
    ids=["best_miou-from-a-non-number", "a-combination-every-seed-of-which-diverged"],
)
def test_an_experiment_without_the_metric_ranked_by_is_marked(key: str, value, metric: str, mark: str) -> None:
    """best_miou is read from the headline's miou_<combination> cells; a null cell is aggregate's
    mark of a combination whose every seed diverged. Either way one column, marked, not a crashed sort."""
    shown, exp = shown_with("lucky-knap")
    headline_of(exp)[key] = value
    rows = rank.ranking(rank.experiments(shown), metric).set_index("experiment")
    assert list(rows.columns).count(metric) == 1
    assert rows.loc["lucky-knap", ["rank", metric]].tolist() == ["-", mark]
    assert rows.loc["dried-sink", "rank"] == "1"


def test_a_running_experiment_is_not_ranked_by_the_metrics_it_shows() -> None:
    shown, exp = shown_with("lucky-knap")
    exp["executor"] = {**(exp.get("executor") or {}), "state": "running"}
    exps = {e.name: e for e in rank.experiments(shown)}
    assert exps["lucky-knap"].state == "running" and exps["lucky-knap"].headline == {}
    rows = rank.ranking(list(exps.values()), "best_iou").set_index("experiment")
    assert rows.loc["lucky-knap", ["rank", "best_iou"]].tolist() == ["-", "running"]


def test_unranked_experiments_are_grouped_by_why_then_named() -> None:
    shown = copy.deepcopy(SHOWN)
    next(x for x in shown[1]["experiments"] if x["name"] == "waiting")["name"] = "a-waiting"
    table = rank.ranking(rank.experiments(shown), "best_iou")
    assert table["experiment"].tolist()[4:] == ["diverged", "a-waiting"]  # failed before queued


def test_the_table_file_counts_only_the_ranked_experiments(tmp_path: Path) -> None:
    assert rank.main(["--json", str(REPO / "tests/fixtures/exp_show.json"), "-o", str(tmp_path)]) == 0
    assert ": 4 ranked, higher is better" in (tmp_path / "ranking.md").read_text()


def test_params_of_another_params_file_are_named_after_it() -> None:
    shown, exp = shown_with("lucky-knap")
    exp["revs"][0]["data"]["params"]["extra.yaml"] = {"data": {"model": {"width": 99}}}
    exps = {e.name: e for e in rank.experiments(shown)}
    assert exps["lucky-knap"].params["model.width"] == 8 and exps["lucky-knap"].params["extra.yaml:model.width"] == 99
    table = rank.ranking(list(exps.values()), "best_iou").set_index("experiment")
    assert table.loc["lucky-knap", ["model.width", "extra.yaml:model.width"]].tolist() == ["8", "99"]


def test_a_null_best_reads_all_diverged() -> None:
    shown, exp = shown_with("lucky-knap")
    headline_of(exp)["best"] = None
    rows = rank.ranking(rank.experiments(shown), "best_iou").set_index("experiment")
    assert rows.loc["lucky-knap", "best"] == "all diverged"


@pytest.mark.parametrize("alone", [False, True])
def test_a_diverged_combination_reads_so_as_dvc_exp_show_gives_it(alone: bool) -> None:
    """aggregate's nulls are left out of `dvc exp show --json` (it keeps numbers and strings), so a
    combination every seed of which diverged has no key at all: one of the experiment's grid reads
    "diverged", not blank as one outside it, and keeps its column where no other experiment has a value
    there. (Where all diverge aggregate fails: a failed experiment.)"""
    shown, exp = shown_with("lucky-knap")
    exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["grid"]["loss"] = ["bce", "mse"]
    headline = headline_of(exp)
    headline.update({"iou_mse-adam": 0.61, "miou_mse-adam": 0.55, "best": "mse-adam", "best_iou": 0.61})
    del headline["iou_bce-adam"], headline["miou_bce-adam"]
    if alone:
        shown[1]["experiments"] = [exp]
    rows = rank.ranking(rank.experiments(shown), "best_iou").set_index("experiment")
    assert rows.loc["lucky-knap", ["best_iou", "iou_bce-adam", "iou_mse-adam"]].tolist() == [0.61, "diverged", 0.61]
    assert rows.loc["lucky-knap", "rank"] != "-"  # ranked by its best combination, as before
    by_combination = rank.ranking(rank.experiments(shown), "iou_bce-adam").set_index("experiment")
    assert by_combination.loc["lucky-knap", ["rank", "iou_bce-adam"]].tolist() == ["-", "diverged"]
    if not alone:  # another experiment's grid lacks mse-adam: blank there
        assert pd.isna(rows.loc["dried-sink", "iou_mse-adam"])


def test_an_explicit_null_reads_diverged_without_a_grid_to_tell() -> None:
    """A `dvc exp show --json` that keeps aggregate's nulls (or an experiment without grid params): the
    null itself says diverged, for a combination and for best; a missing best beside no grid is blank."""
    shown, exp = shown_with("lucky-knap")
    del exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["grid"]
    headline_of(exp)["iou_mse-sgd"] = None
    del headline_of(exp)["best"]
    headline_of(next(x for x in shown[1]["experiments"] if x["name"] == "dried-sink"))["iou_mse-sgd"] = 0.5
    rows = rank.ranking(rank.experiments(shown), "best_iou").set_index("experiment")
    assert rows.loc["lucky-knap", "iou_mse-sgd"] == "diverged" and pd.isna(rows.loc["lucky-knap", "best"])


def test_a_headline_of_no_number_says_none_finished_with_metrics() -> None:
    shown = copy.deepcopy(SHOWN)
    for b in shown:
        for x in b["experiments"] or []:
            for rev in x["revs"]:
                metrics = (rev.get("data") or {}).get("metrics") or {}
                if "metrics/headline.json" in metrics:
                    metrics["metrics/headline.json"]["data"] = {"best": "bce-adam"}
    with pytest.raises(ForestsegError, match=r"^no finished experiment has metrics/headline.json \("):
        rank.ranking(rank.experiments(shown), "best_iou")


def test_best_miou_is_left_out_where_the_best_combination_has_no_miou() -> None:
    shown, exp = shown_with("lucky-knap")
    del headline_of(exp)["miou_bce-adam"]
    table = rank.ranking(rank.experiments(shown), "best_iou")
    assert table["experiment"].tolist()[:4] == ["lucky-knap", "dried-sink", "loony-grub", "rummy-ruin"]
    assert pd.isna(table.set_index("experiment").loc["lucky-knap", "best_miou"])
