"""aggregate(): mean/std over seeds, best seed, headline, tables, figures, diverged, missing and stale runs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from forestseg.config import ForestsegError
from forestseg.io import remove_stale_runs
from forestseg.markdown import markdown_table, scene_section
from forestseg.report import FIGURES, SCORES, aggregate, headline, summarize
from forestseg.train import Run

RUNS = [Run("mse", "adam", 0), Run("mse", "adam", 1), Run("bce", "sgd", 0), Run("bce", "sgd", 1)]
SPLIT = {
    "train": {"tiles": 10, "scenes": 2},
    "test": {"tiles": 4, "scenes": 1},
    "baseline_all_forest": {"iou": 0.6, "miou": 0.3, "dice": 0.75, "accuracy": 0.6, "precision": 0.6, "recall": 1.0},
}

# Dyadic values (k / 2**n) keep every sum and mean exact, so the expected numbers below are exact
# too; the std of two values is |a - b| / sqrt(2), a correctly rounded sqrt of an exact number.
METRICS = {
    "mse-adam-0": dict(
        train_loss=0.125,
        test_loss=0.25,
        test_iou=0.5,
        test_miou=0.625,
        test_dice=0.75,
        test_accuracy=0.8125,
        test_precision=0.875,
        test_recall=0.5625,
    ),
    "mse-adam-1": dict(
        train_loss=0.0625,
        test_loss=0.1875,
        test_iou=0.75,
        test_miou=0.8125,
        test_dice=0.875,
        test_accuracy=0.9375,
        test_precision=0.9375,
        test_recall=0.8125,
    ),
    "bce-sgd-0": dict(
        train_loss=0.5,
        test_loss=0.625,
        test_iou=0.375,
        test_miou=0.5625,
        test_dice=0.5,
        test_accuracy=0.75,
        test_precision=0.625,
        test_recall=0.4375,
    ),
    "bce-sgd-1": dict(
        train_loss=0.75,
        test_loss=0.875,
        test_iou=0.25,
        test_miou=0.5,
        test_dice=0.375,
        test_accuracy=0.6875,
        test_precision=0.5,
        test_recall=0.25,
    ),
}


def history(seed_offset: float, rows: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "epoch": list(range(1, rows + 1)),
            "train_loss": [0.9 - 0.2 * i + seed_offset for i in range(rows)],
            "test_loss": [1.0 - 0.2 * i + seed_offset for i in range(rows)],
            "test_iou": [0.3 + 0.1 * i for i in range(rows)],
            "test_dice": [0.4 + 0.1 * i for i in range(rows)],
            "lr": [1e-2, 1e-2, 1e-3][:rows],
            "seconds": [1.5] * rows,
            "train_seconds": [1.25] * rows,
        }
    )


# scenes.csv of a run as train writes it: confusion counts of the run's model per test scene. Scene
# "007" keeps its leading zero; every seed sees the same truth (tp + fn and the pixels agree).
SCENE_COUNTS = {
    "mse-adam-0": [("007", 2, 10, 2, 4, 16), ("12", 1, 0, 4, 12, 0), ("3", 1, 8, 0, 0, 8)],
    "mse-adam-1": [("007", 2, 12, 6, 2, 12), ("12", 1, 4, 0, 8, 4), ("3", 1, 6, 2, 2, 6)],
    "bce-sgd-0": [("007", 2, 14, 0, 0, 18), ("12", 1, 12, 0, 0, 4), ("3", 1, 8, 0, 0, 8)],
    "bce-sgd-1": [("007", 2, 14, 0, 0, 18), ("12", 1, 12, 0, 0, 4), ("3", 1, 8, 0, 0, 8)],
}


def write_tree(
    root: Path,
    diverged: tuple[str, ...] = (),
    missing: tuple[str, ...] = (),
    scenes: tuple[str, ...] = (),
    diverged_epochs: int = 1,
) -> Path:
    """Run folders of RUNS (those in `scenes` with a scenes.csv; those `diverged` after
    `diverged_epochs` finished epochs) under root/metrics/runs."""
    runs_dir = root / "metrics" / "runs"
    for i, run in enumerate(RUNS):
        if run.name in missing:
            continue
        folder = runs_dir / run.name
        folder.mkdir(parents=True)
        if run.name in diverged:
            metrics = {
                "status": "diverged",
                "message": f"run {run.name} epoch {diverged_epochs + 1}/3 diverged at step 1: loss nan",
                "epochs": diverged_epochs,
            }
            history(0.01 * i, rows=diverged_epochs).to_csv(folder / "history.csv", index=False)
        else:
            metrics = {"status": "ok", **METRICS[run.name], "epochs": 3, "lr": 1e-2}
            history(0.01 * i).to_csv(folder / "history.csv", index=False)
        (folder / "metrics.json").write_text(json.dumps(metrics))
        if run.name in scenes:
            rows = pd.DataFrame(SCENE_COUNTS[run.name], columns=["scene", "tiles", "tp", "fp", "fn", "tn"])
            rows.to_csv(folder / "scenes.csv", index=False)
    return runs_dir


def run_aggregate(tmp_path: Path, **kw) -> tuple[dict, Path, Path]:
    runs_dir = write_tree(tmp_path, **kw)
    metrics_dir, plots_dir = tmp_path / "metrics", tmp_path / "plots"
    out = aggregate(RUNS, runs_dir, SPLIT, metrics_dir, plots_dir)
    return out, metrics_dir, plots_dir


def mean(a: float, b: float) -> float:
    return (a + b) / 2


def std(a: float, b: float) -> float:  # ddof=1 over two values
    m = (a + b) / 2
    return math.sqrt(((a - m) ** 2 + (b - m) ** 2) / (2 - 1))


def check_figures(plots_dir: Path) -> None:
    for name in FIGURES:
        path = plots_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
        with Image.open(path) as im:
            assert im.format == "PNG"
            im.load()
            assert im.width > 100 and im.height > 100


def drawn_figures(monkeypatch) -> dict:
    """The figures forestseg.figures draws, by file name, kept open instead of written."""
    import forestseg.figures as figures

    drawn = {}
    monkeypatch.setattr(figures, "write_figure", lambda path, fig: drawn.update({Path(path).name: fig}))
    monkeypatch.setattr(figures.plt, "close", lambda fig: None)
    return drawn


def test_summary_means_stds_and_best_seed(tmp_path: Path) -> None:
    out, metrics_dir, plots_dir = run_aggregate(tmp_path)
    saved = json.loads((metrics_dir / "summary.json").read_text())
    assert saved == json.loads(json.dumps(out))  # the returned dict is what was written
    assert saved["split"] == {"train": {"tiles": 10, "scenes": 2}, "test": {"tiles": 4, "scenes": 1}}
    assert saved["baseline_all_forest"] == {f"test_{k}": v for k, v in SPLIT["baseline_all_forest"].items()}
    assert list(saved["combinations"]) == ["mse-adam", "bce-sgd"]
    for combo, best in (("mse-adam", 1), ("bce-sgd", 0)):
        c = saved["combinations"][combo]
        a, b = METRICS[f"{combo}-0"], METRICS[f"{combo}-1"]
        for k in SCORES:
            assert c[f"{k}_mean"] == mean(a[k], b[k]), (combo, k)
            assert c[f"{k}_std"] == std(a[k], b[k]), (combo, k)
        assert c["best_seed"] == best and isinstance(c["best_seed"], int)
        assert c["seeds"] == 2 and c["diverged"] == 0
    # Some hand values, written out: mse-adam test IoU 0.5 and 0.75.
    assert saved["combinations"]["mse-adam"]["test_iou_mean"] == 0.625
    assert saved["combinations"]["mse-adam"]["test_iou_std"] == pytest.approx(0.1767766952966369, abs=1e-15)
    assert saved["best_combination"] == "mse-adam"  # mean test mIoU 0.71875 vs 0.53125


def test_tables_and_summary_csv(tmp_path: Path) -> None:
    out, metrics_dir, _ = run_aggregate(tmp_path)
    for combo in ("mse-adam", "bce-sgd"):
        table = pd.read_csv(metrics_dir / "tables" / f"{combo}.csv")
        assert table["run"].tolist() == [f"{combo}-0", f"{combo}-1", "mean", "std"]
        stats = table.set_index("run")
        for k in SCORES:
            a, b = METRICS[f"{combo}-0"][k], METRICS[f"{combo}-1"][k]
            assert stats.loc[f"{combo}-0", k] == a and stats.loc[f"{combo}-1", k] == b
            assert stats.loc["mean", k] == pytest.approx(mean(a, b), abs=1e-12)
            assert stats.loc["std", k] == pytest.approx(std(a, b), abs=1e-12)
        best = out["combinations"][combo]["best_seed"]
        assert table.loc[table["best"] == True, "seed"].tolist() == [best]  # noqa: E712
        epochs = pd.read_csv(metrics_dir / "tables" / f"{combo}_epochs.csv")
        assert epochs["epoch"].tolist() == [1, 2, 3]
        assert {"train_loss seed 0", "test_loss seed 0", "train_loss seed 1", "test_loss seed 1"} <= set(epochs.columns)
        for seed in (0, 1):  # each column is its run's history.csv column
            h = pd.read_csv(metrics_dir / "runs" / f"{combo}-{seed}" / "history.csv")
            for k in ("train_loss", "test_loss"):
                assert epochs[f"{k} seed {seed}"].tolist() == h[k].tolist(), (combo, seed, k)

    summary = pd.read_csv(metrics_dir / "summary.csv")
    assert summary["combination"].tolist() == ["mse-adam", "bce-sgd", "all-forest baseline"]
    base = summary.set_index("combination").loc["all-forest baseline"]
    for k, v in SPLIT["baseline_all_forest"].items():
        assert base[f"test_{k}_mean"] == v
    assert base["seeds"] == 0
    assert summary.set_index("combination").loc["bce-sgd", "test_miou_mean"] == 0.53125


def test_figures_are_png(tmp_path: Path) -> None:
    _, _, plots_dir = run_aggregate(tmp_path)
    check_figures(plots_dir)


def test_a_diverged_run_is_counted_not_averaged(tmp_path: Path) -> None:
    out, metrics_dir, plots_dir = run_aggregate(tmp_path, diverged=("bce-sgd-1",))
    c = json.loads((metrics_dir / "summary.json").read_text())["combinations"]["bce-sgd"]
    assert c["seeds"] == 2 and c["diverged"] == 1
    for k in SCORES:
        assert c[f"{k}_mean"] == METRICS["bce-sgd-0"][k]
        assert c[f"{k}_std"] is None  # one finished seed: no std (NaN written as null)
    assert c["best_seed"] == 0
    other = json.loads((metrics_dir / "summary.json").read_text())["combinations"]["mse-adam"]
    assert other["diverged"] == 0 and other["test_iou_mean"] == 0.625
    table = pd.read_csv(metrics_dir / "tables" / "bce-sgd.csv").set_index("run")
    assert table.loc["bce-sgd-1", "status"] == "diverged"
    assert table.loc["mean", "test_iou"] == METRICS["bce-sgd-0"]["test_iou"]
    epochs = pd.read_csv(metrics_dir / "tables" / "bce-sgd_epochs.csv")  # blank cells alone read as epochs never run
    assert list(epochs.columns) == [
        "epoch",
        "train_loss seed 0",
        "test_loss seed 0",
        "train_loss seed 1 (diverged)",
        "test_loss seed 1 (diverged)",
    ]
    curves = pd.read_csv(metrics_dir / "curves.csv")  # dvc plots' runs: the diverged one named so
    assert sorted(set(curves["run"])) == ["bce-sgd-0", "bce-sgd-1 (diverged)", "mse-adam-0", "mse-adam-1"]
    # coloured by combination (seeds share its colour), one line per run
    assert (curves["combination"] == curves["run"].str.split("-").str[:2].str.join("-")).all()
    check_figures(plots_dir)


def test_every_seed_diverged(tmp_path: Path) -> None:
    out, metrics_dir, plots_dir = run_aggregate(tmp_path, diverged=("bce-sgd-0", "bce-sgd-1"))
    saved = json.loads((metrics_dir / "summary.json").read_text())
    c = saved["combinations"]["bce-sgd"]
    assert c["diverged"] == 2 and c["best_seed"] is None
    assert all(c[f"{k}_mean"] is None and c[f"{k}_std"] is None for k in SCORES)
    assert saved["best_combination"] == "mse-adam"
    assert saved["combinations"]["mse-adam"]["test_iou_mean"] == 0.625
    check_figures(plots_dir)


def test_best_seed_stays_an_integer_when_another_combination_fully_diverged(tmp_path: Path) -> None:
    out, metrics_dir, _ = run_aggregate(tmp_path, diverged=("bce-sgd-0", "bce-sgd-1"))
    best = json.loads((metrics_dir / "summary.json").read_text())["combinations"]["mse-adam"]["best_seed"]
    assert best == 1 and isinstance(best, int)


@pytest.mark.parametrize("damage", ["empty metrics.json", "no history.csv", "empty history.csv"])
def test_a_damaged_run_file_is_named_with_one_line(tmp_path: Path, damage: str) -> None:
    runs_dir = write_tree(tmp_path)
    folder = runs_dir / "bce-sgd-1"
    if damage == "empty metrics.json":
        (folder / "metrics.json").write_text("")
    elif damage == "no history.csv":
        (folder / "history.csv").unlink()
    else:
        (folder / "history.csv").write_text("")
    with pytest.raises(
        ForestsegError,
        match=r"bce-sgd-1: its metrics.json or history.csv cannot be read .*dvc repro --force train@bce-sgd-1",
    ):
        aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots")


def test_the_report_links_no_overlay_of_a_combination_whose_every_seed_diverged(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-0", "bce-sgd-1"))
    report = tmp_path / "REPORT.md"
    setup = {
        "index": {"valid": 14, "scenes": 3, "source": "s", "skipped": 0, "forest_fraction": 0.5},
        "split_by": "scene",
        "train_steps": "weights still moving",
        "params": "p",
    }
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    text = report.read_text()
    assert "overlays/bce-sgd.png" not in text and "bce-sgd: every seed diverged, no predictions." in text
    assert "overlays/mse-adam.png" in text


def test_a_combination_diverged_in_its_first_epoch_says_so_instead_of_an_empty_table(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-0", "bce-sgd-1"), diverged_epochs=0)
    report = tmp_path / "REPORT.md"
    index = {"valid": 14, "scenes": 3, "source": "s", "skipped": 0, "forest_fraction": 0.5}
    setup = {"index": index, "split_by": "scene", "train_steps": "weights still moving", "params": "p"}
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    section = report.read_text().split("### bce-sgd\n")[1].split("###")[0]
    assert section.strip() == "Every seed diverged before finishing an epoch: no losses."
    assert "### mse-adam\n\n| epoch |" in report.read_text()


def test_a_missing_run_is_named(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, missing=("bce-sgd-1",))
    with pytest.raises(ForestsegError, match="bce-sgd-1"):
        aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots")
    assert not (tmp_path / "metrics" / "summary.json").exists()


def test_report_markdown(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-1",))
    setup = {
        "index": {"valid": 14, "scenes": 3, "source": "data/synthetic", "skipped": 0, "forest_fraction": 0.5},
        "split_by": "scene",
        "train_steps": "weights still moving",
        "params": "width 4, depth 2",
    }
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    text = report.read_text()
    assert "**mse-adam** has the highest mean test mIoU, 0.7188 ± 0.1326" in text
    assert re.search(r"so mse-adam is 0\.\d{4} forest IoU (above|below) it\.", text)  # no "-0.05 above"
    assert "(4 runs)." in text
    assert "Diverged runs (excluded from the means): bce-sgd-1." in text
    assert "(plots/loss_best.png)" in text
    assert "| all-forest baseline |" in text
    assert "(0 skipped, see `metrics/index.json`)" in text


def test_the_setup_counts_files_without_a_row_of_meta_data_csv(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path)
    index = {"valid": 14, "scenes": 3, "source": "s", "skipped": 2, "forest_fraction": 0.5, "unlisted_images": 5}
    report = tmp_path / "REPORT.md"
    setup = {"index": index, "split_by": "scene", "train_steps": "weights still moving", "params": "width 4"}
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    assert "(2 skipped, 5 image(s) without a row in meta_data.csv, see `metrics/index.json`)" in report.read_text()


@pytest.mark.parametrize("diverged", [False, True])
def test_an_exact_tie_is_called_a_tie_not_a_lead_of_zero(tmp_path: Path, diverged: bool) -> None:
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-1",) if diverged else ())
    # bce-sgd scores as mse-adam (both seeds, or its one seed that did not diverge as mse-adam's mean)
    same = {0: METRICS["mse-adam-0"], 1: METRICS["mse-adam-1"]}
    if diverged:
        same = {0: {k: (METRICS["mse-adam-0"][k] + METRICS["mse-adam-1"][k]) / 2 for k in METRICS["mse-adam-0"]}}
    for seed, metrics in same.items():
        (runs_dir / f"bce-sgd-{seed}/metrics.json").write_text(
            json.dumps({"status": "ok", **metrics, "epochs": 3, "lr": 1e-2})
        )
    index = {"valid": 14, "scenes": 3, "source": "s", "skipped": 0, "forest_fraction": 0.5}
    setup = {"index": index, "split_by": "scene", "train_steps": "weights still moving", "params": "p"}
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    text = report.read_text()
    assert "+0.0000" not in text and "± is the sample standard deviation over seeds (n - 1)" in text
    if diverged:
        assert "**mse-adam** has the highest mean test mIoU, 0.7188 ± 0.1326" in text
        assert ", as high as bce-sgd over its seeds that did not diverge (1 of 2 seeds diverged: ranked after)" in text
    else:
        assert "**mse-adam** (first in the grid's order) ties for the highest mean test mIoU, 0.7188 ± 0.1326" in text
        assert ", with bce-sgd; the all-forest baseline" in text


def test_aggregate_scores_the_grid_after_its_stale_run_folders_are_removed(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path)
    current = [r for r in RUNS if r.loss == "mse"]  # the grid shrank to one loss
    assert remove_stale_runs((r.name for r in current), runs_dir) == ["bce-sgd-0", "bce-sgd-1"]
    out = aggregate(current, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots")
    assert list(out["combinations"]) == ["mse-adam"]


def test_the_report_says_its_ranking_is_chosen_on_test_and_a_single_seed_has_no_spread(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path)
    setup = {
        "index": {"valid": 14, "scenes": 3, "source": "s", "skipped": 0, "forest_fraction": 0.5},
        "split_by": "scene",
        "train_steps": "weights still moving",
        "params": "p",
    }
    one_seed = [r for r in RUNS if r.seed == 0]
    report = tmp_path / "REPORT.md"
    aggregate(one_seed, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    text = report.read_text()
    assert "x seed 0 (2 runs)." in text
    assert "(one finished seed: no spread over seeds to weigh the gap against)" in text
    assert "chosen on these test scores" in text and "the top score is optimistic" in text
    assert "the winner" not in text
    # the results table has a column per metric of the registry, precision and recall among them
    header = next(line for line in text.splitlines() if line.startswith("| combination |"))
    assert header == (
        "| combination | seeds ok | train loss | test loss | forest IoU | mIoU | Dice | accuracy | precision | recall "
        "| best seed |"
    )
    baseline = next(line for line in text.splitlines() if line.startswith("| all-forest baseline |"))
    assert baseline.endswith("| 1.0000 |  |")  # the all-forest mask finds every forest pixel: recall 1


def test_the_optimizers_figure_keeps_each_optimizers_colour_in_every_panel(tmp_path: Path, monkeypatch) -> None:
    import forestseg.figures as figures

    drawn = drawn_figures(monkeypatch)
    runs = pd.DataFrame(
        [
            {
                "run": f"{loss}-{opt}-0",
                "loss": loss,
                "optimizer": opt,
                "status": "diverged" if (loss, opt) == ("bce", "sgd") else "ok",
            }
            for loss in ("mse", "bce")
            for opt in ("sgd", "adam")
        ]
    )
    histories = {r: history(0.0) for r in runs["run"]}
    figures.fig_optimizers(runs, histories, tmp_path / "f.png")
    colours = {}
    for ax in drawn["f.png"].axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label().split()[0], set()).add(line.get_color())
    assert colours.keys() == {"sgd", "adam"} and all(len(c) == 1 for c in colours.values()), colours
    assert "mean of 1 seed)" in " ".join(line.get_label() for ax in drawn["f.png"].axes for line in ax.get_lines())


def test_the_optimizers_figure_says_how_many_seeds_its_mean_left_out(tmp_path: Path, monkeypatch) -> None:
    import forestseg.figures as figures

    drawn = drawn_figures(monkeypatch)
    runs = pd.DataFrame(
        [
            {"run": f"bce-{opt}-{seed}", "loss": "bce", "optimizer": opt, "status": status}
            for opt, seed, status in [("adam", 0, "ok"), ("adam", 1, "diverged"), ("sgd", 0, "ok"), ("sgd", 1, "ok")]
        ]
    )
    figures.fig_optimizers(runs, {r: history(0.0) for r in runs["run"]}, tmp_path / "f.png")
    labels = {line.get_label() for ax in drawn["f.png"].axes for line in ax.get_lines()}
    assert {"adam (mean of 1 seed; 1 of 2 diverged)", "sgd (mean of 2 seeds)"} <= labels, labels


def test_a_grid_whose_every_run_diverged_stops_naming_the_runs(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, diverged=tuple(r.name for r in RUNS))
    with pytest.raises(ForestsegError, match=r"every run of the grid diverged \(.*bce-sgd-1.*\): lower optimizer\.lr"):
        aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots")
    assert not (tmp_path / "metrics" / "summary.json").exists()


HEADLINE_KEYS = ["best", "best_iou", "iou_mse-adam", "iou_bce-sgd", "miou_mse-adam", "miou_bce-sgd"]


def test_headline_is_flat_rounded_and_written(tmp_path: Path) -> None:
    _, metrics_dir, _ = run_aggregate(tmp_path)
    saved = json.loads((metrics_dir / "headline.json").read_text())
    # mse-adam: IoU 0.5, 0.75 and mIoU 0.625, 0.8125; bce-sgd: IoU 0.375, 0.25 and mIoU 0.5625, 0.5.
    # The means 0.71875 and 0.53125 round half to even at 4 decimals.
    assert saved == {
        "best": "mse-adam",
        "best_iou": 0.625,
        "iou_mse-adam": 0.625,
        "iou_bce-sgd": 0.3125,
        "miou_mse-adam": 0.7188,
        "miou_bce-sgd": 0.5312,
    }
    assert list(saved) == HEADLINE_KEYS  # best first, then IoU of each combination, then mIoU
    assert not any(isinstance(v, (dict, list)) for v in saved.values())  # flat: one column per key


def test_headline_best_is_by_miou_and_nulls_a_fully_diverged_combination(tmp_path: Path) -> None:
    table = pd.DataFrame(
        [
            {
                "run": "a-adam-0",
                "combination": "a-adam",
                "seed": 0,
                "status": "ok",
                **{k: 0.5 for k in SCORES},
                "test_iou": 0.9,
                "test_miou": 0.6,
            },
            {
                "run": "b-adam-0",
                "combination": "b-adam",
                "seed": 0,
                "status": "ok",
                **{k: 0.5 for k in SCORES},
                "test_iou": 0.8,
                "test_miou": 0.7,
            },
            {"run": "c-adam-0", "combination": "c-adam", "seed": 0, "status": "diverged", **{k: None for k in SCORES}},
        ]
    )
    out = headline(summarize(table))
    # b-adam has the higher mIoU (as REPORT.md ranks), though a-adam has the higher forest IoU
    assert out["best"] == "b-adam" and out["best_iou"] == 0.8
    assert out["iou_a-adam"] == 0.9 and out["iou_c-adam"] is None and out["miou_c-adam"] is None
    every = headline(summarize(table[table["combination"] == "c-adam"]))
    assert every == {"best": None, "best_iou": None, "iou_c-adam": None, "miou_c-adam": None}


def read_scenes(metrics_dir: Path) -> pd.DataFrame:
    return pd.read_csv(metrics_dir / "scenes.csv", dtype={"scene": str})


def test_per_scene_scores_sum_the_best_combinations_counts_over_seeds_worst_first(tmp_path: Path) -> None:
    _, metrics_dir, _ = run_aggregate(tmp_path, scenes=tuple(SCENE_COUNTS))
    scenes = read_scenes(metrics_dir)
    assert list(scenes.columns) == ["scene", "tiles", "forest_share", "iou", "precision", "recall"]
    assert scenes["scene"].tolist() == ["12", "007", "3"]  # worst forest IoU first
    assert scenes["tiles"].tolist() == [1, 2, 1]  # a scene's tiles, not summed over seeds
    # mse-adam (the best combination; bce-sgd's perfect counts are not read), seeds 0 and 1 summed:
    # 12: tp 4, fp 4, fn 20, tn 4; 007: tp 22, fp 8, fn 6, tn 28; 3: tp 14, fp 2, fn 2, tn 14.
    expected = {
        "12": (24 / 32, 4 / 28, 4 / 8, 4 / 24),
        "007": (28 / 64, 22 / 36, 22 / 30, 22 / 28),  # a mean of the seeds' IoUs would be 0.6125
        "3": (16 / 32, 14 / 18, 14 / 16, 14 / 16),
    }
    for row in scenes.itertuples():
        assert (row.forest_share, row.iou, row.precision, row.recall) == pytest.approx(expected[row.scene], abs=1e-12)


def test_per_scene_scores_leave_out_diverged_seeds(tmp_path: Path) -> None:
    # a seed of each combination diverged, so mse-adam stays the best (report.rank puts combinations
    # with a diverged seed after those without)
    diverged = ("mse-adam-1", "bce-sgd-1")
    out, metrics_dir, _ = run_aggregate(tmp_path, diverged=diverged, scenes=tuple(SCENE_COUNTS))
    assert out["best_combination"] == "mse-adam"
    scenes = read_scenes(metrics_dir).set_index("scene")
    assert scenes.index.tolist() == ["12", "007", "3"]
    assert scenes.loc["12", "iou"] == 0 and scenes.loc["3", "iou"] == 1  # seed 0's counts alone
    assert scenes.loc["007", "iou"] == pytest.approx(10 / 16, abs=1e-12)


def setup_dict() -> dict:
    return {
        "index": {"valid": 14, "scenes": 3, "source": "data/synthetic", "skipped": 0, "forest_fraction": 0.5},
        "split_by": "scene",
        "train_steps": "weights still moving",
        "params": "width 4, depth 2",
    }


def test_report_per_scene_section(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, scenes=tuple(SCENE_COUNTS))
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup_dict())
    text = report.read_text()
    section = text[text.index("## Per-scene results") : text.index("## Per-epoch losses")]
    assert "**mse-adam** on each test scene, from the confusion counts of seeds 0, 1 summed per scene" in section
    # IoUs 4/28, 22/36, 14/18: median 0.6111; the 10th percentile of 3 scenes is the worst one
    assert "- 3 test scenes; forest IoU per scene: median 0.6111, 10th percentile 0.1429" in section
    assert "worst 0.1429 (scene 12)" in section
    assert "Every scene, worst first:" in section
    assert "| 12 | 1 | 75.0% | 0.1429 | 0.5000 | 0.1667 |" in section
    assert section.index("| 12 |") < section.index("| 007 |") < section.index("| 3 |")
    assert "(plots/overlays/worst_scenes.png)" in section
    assert "absent" not in section and "are no unseen scenes" not in section
    # the setup says which model the scores are of, and how its two losses differ
    assert "Scores are those of each run's final model" in text and "mean over an epoch's training steps" in text


def test_a_tile_split_s_report_says_its_test_scenes_also_trained(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, scenes=tuple(SCENE_COUNTS))
    report = tmp_path / "REPORT.md"
    setup = {**setup_dict(), "split_by": "tile"}
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    text = report.read_text()
    assert "are no unseen scenes" in text[text.index("## Per-scene results") :]


def test_missing_scene_counts_are_named_and_left_out(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, scenes=("mse-adam-0",))
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup_dict())
    assert read_scenes(tmp_path / "metrics").set_index("scene").loc["007", "iou"] == pytest.approx(10 / 16)
    text = report.read_text()
    assert "Per-scene results are absent for mse-adam-1: no `scenes.csv` in its `metrics/runs/<run>/` folder" in text
    assert "confusion counts of seed 0 summed per scene" in text


def test_no_scene_counts_at_all_give_an_empty_table_and_a_line(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path)
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup_dict())
    scenes = read_scenes(tmp_path / "metrics")
    assert scenes.empty and list(scenes.columns) == ["scene", "tiles", "forest_share", "iou", "precision", "recall"]
    text = report.read_text()
    assert "Per-scene results are absent for mse-adam-0, mse-adam-1: no `scenes.csv` in their" in text
    assert "worst_scenes.png" not in text


def test_a_scenes_csv_without_the_counts_is_named(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path, scenes=tuple(SCENE_COUNTS))
    (runs_dir / "mse-adam-1" / "scenes.csv").write_text("scene,tiles,tp\n1,1,1\n")
    with pytest.raises(
        ForestsegError, match=r"mse-adam-1/scenes\.csv: no column fp, fn, tn .*dvc repro --force train@mse-adam-1"
    ):
        aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots")
    assert not (tmp_path / "metrics" / "summary.json").exists()  # checked before anything is written


def test_a_combination_with_a_diverged_seed_ranks_after_those_without(tmp_path: Path) -> None:
    """bce-sgd's surviving seed scores above mse-adam's mean, but half its seeds diverged: a mean over
    the survivors must not make it the winner, and the report says what it is a mean of."""
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-1",))
    good = json.loads((runs_dir / "bce-sgd-0" / "metrics.json").read_text())
    (runs_dir / "bce-sgd-0" / "metrics.json").write_text(json.dumps({**good, "test_miou": 0.9375}))
    out = aggregate(
        RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", tmp_path / "REPORT.md", setup_dict()
    )
    assert out["best_combination"] == "mse-adam"
    assert json.loads((tmp_path / "metrics" / "headline.json").read_text())["best"] == "mse-adam"
    text = (tmp_path / "REPORT.md").read_text()
    assert "**mse-adam** ranks first, with test mIoU" in text and "no seed of it diverged, while bce-sgd" in text
    assert "mIoU over bce-sgd" not in text  # no negative 'lead' over the one it was placed above
    # every combination with a diverged seed: the winner's line says over how many seeds
    (runs_dir / "mse-adam-1" / "metrics.json").write_text(json.dumps({"status": "diverged", "epochs": 1}))
    out = aggregate(
        RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", tmp_path / "REPORT.md", setup_dict()
    )
    assert out["best_combination"] == "bce-sgd"
    assert "over the 1 seed of 2 that did not diverge)" in (tmp_path / "REPORT.md").read_text()


@pytest.mark.parametrize(
    "file, content, says",
    [
        ("metrics.json", '["oops"]', "metrics.json: holds a list, not a run's metrics"),
        ("metrics.json", "null", "metrics.json: holds a NoneType, not a run's metrics"),
        ("metrics.json", "drop test_dice", "metrics.json: no finite test_dice in a finished run"),
        ("metrics.json", "nan test_miou", "metrics.json: no finite test_miou in a finished run"),
        ("history.csv", "step,train_loss\n1,0.5\n", "history.csv: no column epoch, test_loss"),
        ("scenes.csv", "", "scenes.csv: cannot be read"),
        ("scenes.csv", "scene,tiles,tp,fp,fn,tn\n1,1,x,1,1,1\n", "scenes.csv: counts that are not whole numbers"),
        ("scenes.csv", "scene,tiles,tp,fp,fn,tn\n1,1,3.5,1,1,1\n", "not whole numbers >= 0 (row 1, tp: 3.5)"),
        ("scenes.csv", "scene,tiles,tp,fp,fn,tn\n1,1,3,-4,1,1\n", "not whole numbers >= 0 (row 1, fp: -4)"),
    ],
)
def test_a_malformed_run_file_is_one_line_and_writes_nothing(
    tmp_path: Path, file: str, content: str, says: str
) -> None:
    runs_dir = write_tree(tmp_path, scenes=tuple(SCENE_COUNTS))
    path = runs_dir / "mse-adam-1" / file
    if content.startswith(("drop ", "nan ")):
        metrics = json.loads(path.read_text())
        key = content.split()[1]
        metrics.pop(key) if content.startswith("drop") else metrics.update({key: float("nan")})
        content = json.dumps(metrics)
    path.write_text(content)
    with pytest.raises(ForestsegError, match=re.escape(says)) as error:
        aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots")
    assert "\n" not in str(error.value) and "mse-adam-1" in str(error.value)
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["runs"]  # nothing written


def test_the_report_shows_the_ten_worst_of_more_scenes() -> None:
    scenes = pd.DataFrame(
        {
            "scene": [str(i) for i in range(12)],
            "tiles": 4,
            "forest_share": 0.5,
            "iou": [i / 16 for i in range(12)],
            "precision": 1.0,
            "recall": 1.0,
        }
    )
    section = scene_section({"combination": "a-b", "runs": ["a-b-0"], "missing": [], "scenes": scenes}, "plots")
    lines = "\n".join(section).splitlines()
    assert "The 10 worst scenes:" in lines
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| scene")]
    assert [r.split(" | ")[0] for r in rows] == [f"| {i}" for i in range(10)]
    # 12 scenes: the lower 10th percentile is the 2nd worst (index floor(0.1 * 11) = 1)
    assert any("median 0.3438, 10th percentile 0.0625" in line for line in lines)


@pytest.mark.parametrize("n, noun, text", [(1, "run", "1 run"), (8, "run", "8 runs"), (0, "epoch", "0 epochs")])
def test_counts_read_as_english(n: int, noun: str, text: str) -> None:
    from forestseg.io import plural

    assert plural(n, noun) == text


def test_a_pipe_in_a_cell_or_header_stays_in_its_cell() -> None:
    text = markdown_table(pd.DataFrame({"experiment": ["q|x", "plain"], "a|b": [0.5, float("nan")]}))
    assert text.splitlines() == [
        "| experiment | a\\|b |",
        "|---|---|",
        "| q\\|x | 0.5000 |",
        "| plain |  |",
    ]


@pytest.mark.parametrize("threshold, says", [("val", True), ("loss", False)])
def test_the_setup_says_when_the_final_cut_is_not_the_curves(threshold: str, says: bool) -> None:
    from forestseg.config import GridConfig, ModelConfig, OptimizerConfig, SplitConfig, TrainConfig
    from forestseg.report import describe_setup

    setup = describe_setup(
        {}, SplitConfig(), ModelConfig(), OptimizerConfig(), TrainConfig(threshold=threshold), GridConfig()
    )
    assert ("chosen on the validation scenes (train.threshold: val" in setup["params"]) == says


@pytest.mark.parametrize(
    "arch, says",
    [("unet_half", "unet_half width 16 depth 3, batch-norm on"), ("study_unet", "study_unet (fixed layers)")],
)
def test_the_setup_names_only_the_model_params_the_arch_reads(arch: str, says: str) -> None:
    """study_unet's layers are fixed: REPORT.md must not credit it with params.yaml's width and depth."""
    from forestseg.config import GridConfig, ModelConfig, OptimizerConfig, SplitConfig, TrainConfig
    from forestseg.report import describe_setup

    setup = describe_setup({}, SplitConfig(), ModelConfig(arch=arch), OptimizerConfig(), TrainConfig(), GridConfig())
    assert setup["params"].startswith(f"{says}, normalized input;")


@pytest.mark.parametrize("like", ["mse-adam", "bce-sgd"])
def test_every_combination_tied_at_the_top_or_for_second_is_named(tmp_path: Path, like: str) -> None:
    """A third combination scoring as the top one is named among the tied; scoring as the runner-up,
    among those the lead is over."""
    runs_dir = write_tree(tmp_path)
    for seed in (0, 1):
        if like == "mse-adam":  # bce-sgd too: a three-way tie
            metrics = {"status": "ok", **METRICS[f"mse-adam-{seed}"], "epochs": 3}
            (runs_dir / f"bce-sgd-{seed}/metrics.json").write_text(json.dumps(metrics))
        folder = runs_dir / f"mse-sgd-{seed}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"status": "ok", **METRICS[f"{like}-{seed}"], "epochs": 3}))
        history(0.05).to_csv(folder / "history.csv", index=False)
    runs = [*RUNS, Run("mse", "sgd", 0), Run("mse", "sgd", 1)]
    index = {"valid": 14, "scenes": 3, "source": "s", "skipped": 0, "forest_fraction": 0.5}
    setup = {"index": index, "split_by": "scene", "train_steps": "weights still moving", "params": "p"}
    report = tmp_path / "REPORT.md"
    aggregate(runs, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    text = report.read_text()
    if like == "mse-adam":
        assert "**mse-adam** (first in the grid's order) ties for the highest mean test mIoU" in text
        assert ", with bce-sgd and mse-sgd; the all-forest" in text
    else:
        assert "**mse-adam** has the highest mean test mIoU" in text
        assert " mIoU over bce-sgd and mse-sgd" in text


INDEX = {"valid": 14, "scenes": 3, "source": "s", "skipped": 0, "forest_fraction": 0.5}


def test_a_top_ranked_before_a_higher_mean_is_still_weighed_against_the_next(tmp_path: Path) -> None:
    """bce-sgd, one seed diverged, has a higher mean than the top-ranked mse-adam; mse-sgd, all seeds
    finished, scores just below it: that gap is still given and weighed against the seeds' spread."""
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-1",))
    (runs_dir / "bce-sgd-0/metrics.json").write_text(
        json.dumps({"status": "ok", **{**METRICS["mse-adam-0"], "test_miou": 0.99}, "epochs": 3})
    )
    for seed in (0, 1):
        folder = runs_dir / f"mse-sgd-{seed}"
        folder.mkdir()
        below = {**METRICS[f"mse-adam-{seed}"], "test_miou": METRICS[f"mse-adam-{seed}"]["test_miou"] - 0.001}
        (folder / "metrics.json").write_text(json.dumps({"status": "ok", **below, "epochs": 3}))
        history(0.05).to_csv(folder / "history.csv", index=False)
    runs = [*RUNS, Run("mse", "sgd", 0), Run("mse", "sgd", 1)]
    setup = {"index": INDEX, "split_by": "scene", "train_steps": "weights still moving", "params": "p"}
    report = tmp_path / "REPORT.md"
    aggregate(runs, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    text = report.read_text()
    assert (
        "while bce-sgd (1 of 2 seeds diverged) has a higher mean over the rest, 0.9900; mse-adam scores +0.0010 "
        in text
    )
    assert "mIoU over mse-sgd (within the spread over seeds: no clear winner); the all-forest" in text


def test_a_same_mean_over_fewer_seeds_after_a_higher_mean_is_said_of_the_top(tmp_path: Path) -> None:
    """mse-sgd, one seed diverged, scores mse-adam's mean with the other: the clause names mse-adam
    again, not the bce-sgd of the sentence on higher means before it."""
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-1",))
    (runs_dir / "bce-sgd-0/metrics.json").write_text(
        json.dumps({"status": "ok", **{**METRICS["mse-adam-0"], "test_miou": 0.99}, "epochs": 3})
    )
    mean = {k: (METRICS["mse-adam-0"][k] + METRICS["mse-adam-1"][k]) / 2 for k in METRICS["mse-adam-0"]}
    for seed, metrics in ((0, {"status": "ok", **mean, "epochs": 3}), (1, {"status": "diverged", "epochs": 1})):
        folder = runs_dir / f"mse-sgd-{seed}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({**metrics, "message": "x"} if seed else metrics))
        history(0.05, rows=3 if seed == 0 else 1).to_csv(folder / "history.csv", index=False)
    runs = [*RUNS, Run("mse", "sgd", 0), Run("mse", "sgd", 1)]
    report = tmp_path / "REPORT.md"
    setup = {"index": INDEX, "split_by": "scene", "train_steps": "weights still moving", "params": "p"}
    aggregate(runs, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    assert (
        "has a higher mean over the rest, 0.9900; mse-adam scores as high as mse-sgd over its seeds that did not "
        "diverge (1 of 2 seeds diverged: ranked after); the all-forest"
    ) in report.read_text()


def test_best_seeds_that_tie_are_named(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path)
    tied = {**METRICS["mse-adam-1"], "test_miou": METRICS["mse-adam-0"]["test_miou"]}
    (runs_dir / "mse-adam-1/metrics.json").write_text(json.dumps({"status": "ok", **tied, "epochs": 3}))
    setup = {"index": INDEX, "split_by": "scene", "train_steps": "weights still moving", "params": "p"}
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup)
    assert "Best seeds that tie, the first in the grid's order shown: mse-adam (seeds 0, 1)." in report.read_text()


@pytest.mark.parametrize(
    "opt, train, says, not_says",
    [
        ({"gamma": 1.0}, {}, "constant (optimizer.gamma 1)", "x1 every"),
        ({"step_epochs": 4}, {"epochs": 2}, "x0.1 every 4 epochs (no step within 2 epochs)", None),
        ({"step_epochs": 4, "warmup_epochs": 1}, {"epochs": 5}, "(no step within 5 epochs)", None),
        ({"step_epochs": 4}, {"epochs": 5}, "x0.1 every 4 epochs,", "no step"),
        ({"schedule": "cosine"}, {}, "cosine decay, set per epoch", None),
        (
            {},
            {"sampling": "scene_batch", "ema": 0.99, "cutmix": 0.5},
            "sampling scene_batch, weight EMA 0.99, CutMix 0.5",
            None,
        ),
        ({}, {}, "colour jitter 0.1", "sampling"),
        ({"lr_overrides": {"mse-sgd": 0.5, "bce-adam": 0.2}}, {}, "lr 0.001, bce-adam 0.2,", "mse-sgd"),
        ({"momentum": 0.9}, {}, "every 4 epochs, weight decay 0,", "momentum"),
    ],
)
def test_the_setup_says_what_the_params_do_within_the_run(opt: dict, train: dict, says: str, not_says) -> None:
    """A schedule that never steps, knobs that are on, and only the lr overrides and momentum a grid run uses."""
    from forestseg.config import GridConfig, ModelConfig, OptimizerConfig, SplitConfig, TrainConfig
    from forestseg.report import describe_setup

    grid = GridConfig(loss=("bce",), optimizer=("adam",), seed=(0,))
    text = describe_setup({}, SplitConfig(), ModelConfig(), OptimizerConfig(**opt), TrainConfig(**train), grid)[
        "params"
    ]
    assert says in text and (not_says is None or not_says not in text), text


def test_figures_name_an_optimizer_whose_every_seed_diverged_and_tick_a_single_epoch(monkeypatch, tmp_path) -> None:
    """A missing line would read as an optimizer never run; one epoch gets a whole tick, not 0.95..1.05."""
    from forestseg import figures

    drawn = drawn_figures(monkeypatch)
    one = pd.DataFrame({"epoch": [1], "train_loss": [0.5], "test_loss": [0.6], "lr": [1e-3]})
    runs = pd.DataFrame(
        [
            {"run": "bce-adam-0", "combination": "bce-adam", "loss": "bce", "optimizer": "adam", "status": "ok"},
            {"run": "bce-sgd-0", "combination": "bce-sgd", "loss": "bce", "optimizer": "sgd", "status": "diverged"},
        ]
    )
    figures.fig_optimizers(runs, {"bce-adam-0": one}, tmp_path / "opt.png")
    ax = drawn["opt.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["adam (mean of 1 seed)", "sgd (every seed diverged)"]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert 1 in ticks and all(float(t).is_integer() for t in ticks)


def test_the_same_seed_scores_in_another_order_are_a_tie(tmp_path: Path) -> None:
    """0.3 + 0.2 + 0.1 and 0.1 + 0.2 + 0.3 differ in the last bit as running sums: the first combination in
    the grid's order must win the tie, as the README says, not the one whose sum rounded up."""
    runs = [Run(loss, "adam", seed) for loss in ("mse", "bce") for seed in range(3)]
    scores = {"mse": (0.3, 0.2, 0.1), "bce": (0.1, 0.2, 0.3)}
    for run in runs:
        folder = tmp_path / "runs" / run.name
        folder.mkdir(parents=True)
        value = scores[run.loss][run.seed]
        metrics = {**METRICS["mse-adam-0"], "test_miou": value, "test_iou": value}
        (folder / "metrics.json").write_text(json.dumps({"status": "ok", **metrics, "epochs": 3}))
        history(0.0).to_csv(folder / "history.csv", index=False)
    report = tmp_path / "REPORT.md"
    aggregate(runs, tmp_path / "runs", SPLIT, tmp_path / "metrics", tmp_path / "plots", report, setup_dict())
    assert json.loads((tmp_path / "metrics/headline.json").read_text())["best"] == "mse-adam"
    assert "**mse-adam** (first in the grid's order) ties for the highest mean test mIoU" in report.read_text()


def test_two_combinations_each_with_a_diverged_seed_and_the_same_mean_tie(tmp_path: Path) -> None:
    """Both rank after any combination without a diverged seed, so between them it is a tie, not
    'ranked after' for the second (which has diverged exactly as often as the first)."""
    runs_dir = write_tree(tmp_path, diverged=("mse-adam-1", "bce-sgd-1"))
    (runs_dir / "bce-sgd-0/metrics.json").write_text((runs_dir / "mse-adam-0/metrics.json").read_text())
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", tmp_path / "REPORT.md", setup_dict())
    text = (tmp_path / "REPORT.md").read_text()
    assert "**mse-adam** (first in the grid's order) ties for the highest mean test mIoU" in text
    assert ", with bce-sgd; the all-forest" in text and "ranked after" not in text


def test_the_lead_is_over_the_next_highest_mean_even_one_ranked_after(tmp_path: Path) -> None:
    """bce-sgd's surviving seed scores just below mse-adam, and mse-sgd far below: the lead is the small
    one over bce-sgd (said to be ranked after), not the large one over mse-sgd, the next in rank."""
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-1",))
    good = json.loads((runs_dir / "bce-sgd-0/metrics.json").read_text())
    (runs_dir / "bce-sgd-0/metrics.json").write_text(json.dumps({**good, "test_miou": 0.6875}))
    for seed in (0, 1):
        folder = runs_dir / f"mse-sgd-{seed}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"status": "ok", **METRICS[f"bce-sgd-{seed}"], "epochs": 3}))
        history(0.05).to_csv(folder / "history.csv", index=False)
    runs = [*RUNS, Run("mse", "sgd", 0), Run("mse", "sgd", 1)]
    aggregate(runs, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", tmp_path / "REPORT.md", setup_dict())
    text = (tmp_path / "REPORT.md").read_text()
    assert "**mse-adam** has the highest mean test mIoU, 0.7188 ± 0.1326" in text
    assert ", +0.0312 mIoU over bce-sgd (1 of 2 seeds diverged: ranked after)" in text and "over mse-sgd" not in text


def test_a_scene_without_forest_ranks_by_its_false_forest_share_not_its_iou_of_0() -> None:
    from forestseg.report import scene_scores

    counts = pd.DataFrame(
        [  # scene, tiles, tp, fp, fn, tn
            ("fields", 2, 0, 10, 0, 990),  # no forest; 1 % of its pixels called forest: IoU 0
            ("patchy", 2, 50, 25, 25, 900),  # IoU 0.5
            ("bare", 2, 0, 600, 0, 400),  # no forest; 60 % called forest
            ("woods", 2, 900, 10, 0, 90),  # IoU 0.989
        ],
        columns=["scene", "tiles", "tp", "fp", "fn", "tn"],
    )
    scenes = scene_scores(counts)
    # ranked by 0.4 (bare: 1 - 0.6), 0.5, 0.989, 0.99 (fields: 1 - 0.01)
    assert scenes["scene"].tolist() == ["bare", "patchy", "woods", "fields"]
    assert scenes.set_index("scene").loc[["bare", "fields"], "iou"].tolist() == [0.0, 0.0]  # the IoU as it is
    section = "\n".join(scene_section({"combination": "a-b", "runs": ["a-b-0"], "missing": [], "scenes": scenes}, "p"))
    # the spread is over the scenes with forest; the others are named with the rule
    assert "- 4 test scenes; forest IoU per scene with forest: median 0.7445, 10th percentile 0.5000" in section
    assert "worst 0.5000 (scene patchy)." in section
    assert "- 2 scenes hold no forest (bare, fields): forest IoU is 0 there as soon as one pixel" in section


def test_the_test_iou_figure_names_the_optimizer_of_each_dot_colour(monkeypatch, tmp_path) -> None:
    from forestseg import figures

    drawn = drawn_figures(monkeypatch)
    runs = pd.DataFrame(
        [
            {"combination": f"bce-{opt}", "optimizer": opt, "status": "ok", "test_iou": 0.7, "seed": 0}
            for opt in ("sgd", "adam")
        ]
    )
    figures.fig_test_iou(runs, 0.6, tmp_path / "iou.png")
    legend = drawn["iou.png"].axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["sgd", "adam", "all-forest baseline 0.600"]
    from matplotlib.colors import to_hex

    named = [to_hex(h.get_color()) for h in legend.legend_handles[:2]]
    from matplotlib.collections import PathCollection

    dots = [to_hex(c.get_facecolor()[0]) for c in drawn["iou.png"].axes[0].collections if isinstance(c, PathCollection)]
    assert named == dots[:2] and named[0] != named[1]  # the dots of bce-sgd, then bce-adam


@pytest.mark.parametrize("split_by", ["scene", "tile"])
def test_per_scene_results_of_a_tile_split_say_the_scenes_also_trained(split_by: str) -> None:
    scenes = pd.DataFrame(
        {"scene": ["1"], "tiles": [4], "forest_share": [0.5], "iou": [0.7], "precision": [0.8], "recall": [0.9]}
    )
    per_scene = {"combination": "a-b", "runs": ["a-b-0"], "missing": [], "scenes": scenes}
    text = "\n".join(scene_section(per_scene, "plots", split_by))
    assert ("are no unseen scenes" in text) == (split_by == "tile")


def test_the_report_table_counts_finished_seeds_shows_each_spread_and_links_a_partly_diverged_overlay(
    tmp_path: Path,
) -> None:
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-1",))
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup_dict())
    text = report.read_text()
    rows = {line.split(" | ")[0]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["| mse-adam"][1] == "2/2" and rows["| bce-sgd"][1] == "1/2"
    iou = f"{mean(0.5, 0.75):.4f} ± {std(0.5, 0.75):.4f}"
    assert iou in rows["| mse-adam"], rows["| mse-adam"]
    train, test = (f"{mean(a, b):.4f} ± {std(a, b):.4f}" for a, b in ((0.125, 0.0625), (0.25, 0.1875)))
    assert rows["| mse-adam"][2:4] == [train, test]
    assert "overlays/bce-sgd.png" in text and "bce-sgd: every seed diverged" not in text


def test_a_winner_below_the_all_forest_baseline_is_said_to_be_below_it_by_a_positive_gap(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path)
    split = {**SPLIT, "baseline_all_forest": {**SPLIT["baseline_all_forest"], "iou": 0.75}}
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, split, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup_dict())
    assert "so mse-adam is 0.1250 forest IoU below it." in report.read_text()


def test_a_gap_within_the_larger_spread_is_no_clear_winner(tmp_path: Path) -> None:
    runs_dir = write_tree(tmp_path)
    for name, miou in (("bce-sgd-0", 0.625), ("bce-sgd-1", 0.6875)):
        m = json.loads((runs_dir / name / "metrics.json").read_text())
        (runs_dir / name / "metrics.json").write_text(json.dumps({**m, "test_miou": miou}))
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup_dict())
    assert "+0.0625 mIoU over bce-sgd (within the spread over seeds: no clear winner)" in report.read_text()


def test_the_lead_over_a_runner_up_that_also_lost_a_seed_does_not_call_it_ranked_after_for_that(
    tmp_path: Path,
) -> None:
    runs_dir = write_tree(tmp_path, diverged=("mse-adam-1", "bce-sgd-1"))
    report = tmp_path / "REPORT.md"
    aggregate(RUNS, runs_dir, SPLIT, tmp_path / "metrics", tmp_path / "plots", report=report, setup=setup_dict())
    text = report.read_text()
    assert "+0.0625 mIoU over bce-sgd (one finished seed" in text and "diverged: ranked after" not in text


def test_the_ranking_figure_draws_the_first_experiment_at_the_top(tmp_path: Path, monkeypatch) -> None:
    import forestseg.figures as figures

    drawn = drawn_figures(monkeypatch)
    figures.fig_ranking(["best", "second"], [0.7, 0.5], "best_iou", tmp_path / "ranking.png")
    ax = drawn["ranking.png"].axes[0]
    assert ax.yaxis_inverted() and [t.get_text() for t in ax.get_yticklabels()] == ["best", "second"]


def test_the_stage_summary_counts_the_seeds_that_finished(tmp_path: Path) -> None:
    from forestseg.report import format_summary

    out, _, _ = run_aggregate(tmp_path, diverged=("bce-sgd-1",))
    lines = format_summary(out).splitlines()
    assert lines[1] == "     bce-sgd: test IoU 0.3750 over 1/2 seeds, best seed 0"
    assert lines[0].startswith("    mse-adam: test IoU 0.6250 ± 0.1768 over 2/2 seeds")


def test_the_loss_figure_draws_the_best_seed_of_each_combination(tmp_path: Path, monkeypatch) -> None:
    drawn = drawn_figures(monkeypatch)
    run_aggregate(tmp_path)
    ax = drawn[FIGURES[0]].axes[0]  # mse-adam: best seed 1
    assert ax.get_title() == "mse-adam, seed 1"
    assert list(ax.get_lines()[0].get_ydata()) == list(history(0.01 * 1)["train_loss"])


def test_the_loss_figure_draws_test_loss_and_learning_rate_of_the_best_seed_and_names_the_rule(
    tmp_path: Path, monkeypatch
) -> None:
    """Each panel: the best seed's train and test loss on the loss's own axis, its learning rate on a log
    axis named in the legend; a combination whose every seed diverged is a titled frame without ticks;
    a panel left over is hidden; the title says by which test score the best seed was picked."""
    drawn = drawn_figures(monkeypatch)
    runs_dir = write_tree(tmp_path, diverged=("bce-sgd-0", "bce-sgd-1"))
    for seed in (0, 1):  # a third combination: two rows of panels, the fourth one unused
        folder = runs_dir / f"mse-sgd-{seed}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"status": "ok", **METRICS[f"mse-adam-{seed}"], "epochs": 3}))
        history(0.5 + seed).to_csv(folder / "history.csv", index=False)
    aggregate([*RUNS, Run("mse", "sgd", 0), Run("mse", "sgd", 1)], runs_dir, SPLIT, tmp_path / "m", tmp_path / "p")
    fig = drawn[FIGURES[0]]
    mse_adam, bce_sgd, mse_sgd, unused = fig.axes[:4]
    best = history(0.01 * 1)  # mse-adam's best seed: 1
    train, test = mse_adam.get_lines()
    assert list(test.get_ydata()) == list(best["test_loss"]) and list(train.get_ydata()) == list(best["train_loss"])
    assert mse_adam.get_ylabel() == "mse loss"
    lr_ax = next(ax for ax in fig.axes[4:] if ax.get_shared_x_axes().joined(ax, mse_adam))
    (lr,) = lr_ax.get_lines()
    assert lr_ax.get_yscale() == "log" and list(lr.get_ydata()) == list(best["lr"])
    assert lr.get_drawstyle() == "steps-pre"  # epoch k's lr spans k-1..k, where it trained
    labels = [t.get_text() for t in mse_adam.get_legend().get_texts()]
    assert labels[-1] == "learning rate" and len(labels) == 3
    assert bce_sgd.get_title() == "bce-sgd: every seed diverged" and list(bce_sgd.get_xticks()) == []
    assert mse_sgd.get_title() == "mse-sgd, seed 1" and mse_sgd.axison and not unused.axison
    assert fig.get_suptitle().endswith("(by test mIoU)")


def test_the_test_iou_figure_draws_each_finished_seed_named_the_mean_and_the_baseline(
    tmp_path: Path, monkeypatch
) -> None:
    """One dot per finished seed, labelled with its own seed (not a diverged one's), a bar at their mean,
    a note of how many seeds diverged where a dot is missing, and the all-forest baseline at its value."""
    from forestseg import figures

    drawn = drawn_figures(monkeypatch)
    runs = pd.DataFrame(
        [
            {"combination": "bce-adam", "optimizer": "adam", "status": status, "test_iou": iou, "seed": seed}
            for seed, status, iou in [(0, "diverged", None), (1, "ok", 0.25), (2, "ok", 0.5), (3, "ok", 1.0)]
        ]
        + [{"combination": "bce-sgd", "optimizer": "sgd", "status": "diverged", "test_iou": None, "seed": 0}]
    )
    figures.fig_test_iou(runs, 0.625, tmp_path / "iou.png")
    ax = drawn["iou.png"].axes[0]
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3", "1 of 4\nseeds diverged", "every seed\ndiverged"]
    assert [t.xy[1] for t in ax.texts[:3]] == [0.25, 0.5, 1.0]
    (bar,) = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    assert list(bar.get_segments()[0][:, 1]) == pytest.approx([1.75 / 3] * 2)  # the mean (not the median) of the dots
    baseline = next(line for line in ax.get_lines() if line.get_label().startswith("all-forest"))
    assert list(baseline.get_ydata()) == [0.625, 0.625]


def test_the_optimizers_figure_draws_the_mean_over_seeds_in_a_min_to_max_band(tmp_path: Path, monkeypatch) -> None:
    """The line is the mean test loss over the finished seeds, the band (in the line's colour) spans their
    min and max."""
    import numpy as np
    from matplotlib.colors import to_hex

    from forestseg import figures

    drawn = drawn_figures(monkeypatch)
    runs = pd.DataFrame(
        [{"run": f"bce-adam-{s}", "loss": "bce", "optimizer": "adam", "status": "ok"} for s in range(3)]
        + [{"run": "bce-sgd-0", "loss": "bce", "optimizer": "sgd", "status": "ok"}]
    )
    histories = {f"bce-adam-{s}": history(offset) for s, offset in enumerate((0.0, 0.125, 0.5))}
    losses = np.array([list(h["test_loss"]) for h in histories.values()])
    histories["bce-sgd-0"] = history(0.25)
    figures.fig_optimizers(runs, histories, tmp_path / "opt.png")
    ax = drawn["opt.png"].axes[0]
    lines, bands = ax.get_lines(), ax.collections
    assert list(lines[0].get_ydata()) == pytest.approx(losses.mean(axis=0))
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(losses.min()) and max(ys) == pytest.approx(losses.max())
    assert [to_hex(b.get_facecolor()[0]) for b in bands] == [to_hex(line.get_color()) for line in lines]


def test_the_test_iou_figure_colours_each_optimizer_as_the_optimizers_figure_does(tmp_path: Path, monkeypatch) -> None:
    """The two figures sit side by side in REPORT.md: an optimizer's dots and its curves share one colour,
    given by the grid's order (sgd first here), not by name."""
    from matplotlib.colors import to_hex

    from forestseg import figures

    drawn = drawn_figures(monkeypatch)
    runs = pd.DataFrame(
        [
            {"run": f"bce-{opt}-0", "combination": f"bce-{opt}", "loss": "bce", "optimizer": opt}
            | {"status": "ok", "test_iou": 0.5, "seed": 0}
            for opt in ("sgd", "adam")
        ]
    )
    figures.fig_optimizers(runs, {r: history(0.0) for r in runs["run"]}, tmp_path / "opt.png")
    figures.fig_test_iou(runs, 0.6, tmp_path / "iou.png")
    curves = {line.get_label().split()[0]: to_hex(line.get_color()) for line in drawn["opt.png"].axes[0].get_lines()}
    legend = drawn["iou.png"].axes[0].get_legend()
    dots = {t.get_text(): to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles[:2])}
    assert curves == dots and curves["sgd"] == to_hex("C0")


def test_the_ranking_figure_labels_each_bar_with_its_score_on_a_0_to_1_axis(tmp_path: Path, monkeypatch) -> None:
    """Scores to 4 decimals as REPORT.md gives them, on an axis from 0 to 1 at least (IoUs), so that
    rankings of two recipes' experiments compare by eye."""
    from forestseg import figures

    drawn = drawn_figures(monkeypatch)
    figures.fig_ranking(["best", "second"], [0.7, 0.5], "best_iou", tmp_path / "ranking.png")
    ax = drawn["ranking.png"].axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.7000", "0.5000"]
    assert ax.get_xlim() == (0, 1.0)


def test_three_seeds_are_averaged_and_the_first_of_tied_best_seeds_is_shown() -> None:
    """The mean over seeds (not the median, which equals it for 2 seeds), and of seeds tied on test
    mIoU the first in the grid's order, as REPORT.md says."""
    rows = []
    for combo, mious in (("bce-adam", (0.5, 0.6, 0.9)), ("mse-sgd", (0.7, 0.7, 0.5))):
        for seed, miou in enumerate(mious):
            rows.append(
                {
                    "run": f"{combo}-{seed}",
                    "combination": combo,
                    "seed": seed,
                    "status": "ok",
                    **dict.fromkeys(SCORES, 0.5),
                }
                | {"test_miou": miou, "test_iou": miou}
            )
    summary = summarize(pd.DataFrame(rows)).set_index("combination")
    assert summary.loc["bce-adam", "test_miou_mean"] == pytest.approx(2.0 / 3, abs=1e-15)
    assert summary.loc["mse-sgd", "test_miou_mean"] == pytest.approx(1.9 / 3, abs=1e-15)
    assert headline(summarize(pd.DataFrame(rows)))["best"] == "bce-adam"
    assert summary.loc["mse-sgd", "best_seed"] == 0  # seeds 0 and 1 tie at 0.7


def test_the_printed_summary_ends_with_the_baselines_forest_iou(tmp_path: Path) -> None:
    from forestseg.report import format_summary

    out, _, _ = run_aggregate(tmp_path)
    assert format_summary(out).splitlines()[-1] == "  all-forest: test IoU 0.6000 (baseline)"  # not its mIoU 0.3


def test_a_tie_among_the_worst_seeds_is_no_best_seed_tie() -> None:
    from forestseg.markdown import _seed_ties

    table = pd.DataFrame(
        {"combination": ["bce-adam"] * 3, "seed": [0, 1, 2], "status": ["ok"] * 3, "test_miou": [0.5, 0.5, 0.8]}
    )
    assert _seed_ties(table) == ""
    table.loc[2, "test_miou"] = 0.5
    assert _seed_ties(table).endswith("bce-adam (seeds 0, 1, 2).")


def test_the_test_iou_figure_draws_the_baselines_forest_iou(tmp_path: Path, monkeypatch) -> None:
    """aggregate passes the all-forest baseline's forest IoU (0.6), not its mIoU (0.3), to test_iou.png."""
    drawn = drawn_figures(monkeypatch)
    run_aggregate(tmp_path)
    [line] = [ln for ln in drawn["test_iou.png"].axes[0].get_lines() if ln.get_label().startswith("all-forest")]
    assert list(line.get_ydata()) == [0.6, 0.6] and line.get_label() == "all-forest baseline 0.600"


def result_rows(*rows: tuple) -> pd.DataFrame:
    """report.rank's rows for markdown._result_text: (combination, mIoU mean, its std, forest IoU mean)."""
    return pd.DataFrame(
        [
            {"combination": c, "test_miou_mean": m, "test_miou_std": s, "test_iou_mean": i, "test_iou_std": 0.01}
            | {"diverged": 0, "seeds": 2}
            for c, m, s, i in rows
        ]
    )


def test_the_result_sentence_at_its_boundaries() -> None:
    """A gap equal to the spread is within it; a lead of 0 over the baseline reads 'above'; three tied
    runners-up are listed 'a, b and c'."""
    from forestseg.markdown import _result_text

    base = {"test_iou": 0.5, "test_miou": 0.3}
    text = _result_text(result_rows(("bce-adam", 0.75, 0.25, 0.5), ("mse-adam", 0.5, 0.25, 0.4)), base)
    assert "+0.2500 mIoU over mse-adam (within the spread over seeds: no clear winner)" in text, text
    assert text.endswith("so bce-adam is 0.0000 forest IoU above it."), text
    three = result_rows(("a-adam", 0.7, 0.01, 0.6), *((f"{c}-adam", 0.6, 0.01, 0.5) for c in "bcd"))
    assert "+0.1000 mIoU over b-adam, c-adam and d-adam;" in _result_text(three, base)


def test_a_mean_of_one_seed_shows_no_spread() -> None:
    from forestseg.markdown import _pm

    assert (_pm(0.5, float("nan")), _pm(0.5, None), _pm(0.5, 0.01), _pm(float("nan"), 0.1)) == (
        "0.5000",
        "0.5000",
        "0.5000 ± 0.0100",
        "n/a",
    )


def test_a_scene_with_a_trace_of_forest_is_no_scene_without_forest() -> None:
    """Only a forest share of exactly 0 sets a scene apart; six such scenes are named five and '...'."""
    scenes = pd.DataFrame(
        {"scene": ["s0", "s1"], "tiles": [2, 2], "forest_share": [0.0005, 0.3]}
        | {"iou": [0.0, 0.8], "precision": [0.0, 0.9], "recall": [0.0, 0.9]}
    )
    section = "\n".join(scene_section({"combination": "a-b", "runs": ["a-b-0"], "missing": [], "scenes": scenes}, "p"))
    assert "- 2 test scenes; forest IoU per scene: median 0.4000" in section and "worst 0.0000 (scene s0)" in section
    bare = pd.DataFrame(
        {"scene": [f"b{i}" for i in range(6)] + ["w"], "tiles": [2] * 7, "forest_share": [0.0] * 6 + [0.5]}
        | {"iou": [0.0] * 6 + [0.7], "precision": [0.0] * 7, "recall": [0.0] * 7}
    )
    section = "\n".join(scene_section({"combination": "a-b", "runs": ["a-b-0"], "missing": [], "scenes": bare}, "p"))
    assert "- 6 scenes hold no forest (b0, b1, b2, b3, b4, ...): forest IoU is 0" in section


@pytest.mark.parametrize(
    "model, train, steps",
    [
        ({}, {}, "augmented tiles, batch-norm in training mode, weights still moving"),  # the demo's
        ({"arch": "study_unet"}, {"augment": False, "color_jitter": 0.0}, "weights still moving"),  # the study's
        (
            {"batch_norm": False},
            {"augment": False, "color_jitter": 0.0, "blur": 0.5},
            "augmented tiles, weights still moving",
        ),
        (
            {"mixstyle": 0.5},
            {"augment": False, "color_jitter": 0.0},
            "MixStyle, batch-norm in training mode, weights still moving",
        ),
    ],
)
def test_report_says_what_a_training_step_differs_in(model: dict, train: dict, steps: str) -> None:
    """REPORT.md said 'augmented tiles, batch-norm in training mode' of the study's runs, which have neither."""
    from forestseg.config import GridConfig, ModelConfig, OptimizerConfig, SplitConfig, TrainConfig
    from forestseg.report import describe_setup

    setup = describe_setup(
        INDEX, SplitConfig(), ModelConfig(**model), OptimizerConfig(), TrainConfig(**train), GridConfig()
    )
    assert setup["train_steps"] == steps
