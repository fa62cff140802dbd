"""Aggregate per-run metrics into tables (mean/std over seeds, best seed), a headline and loss-curve figures."""
from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .config import ForestsegError, Run  # noqa: E402
from .metrics import METRICS  # noqa: E402
from .io import REMOVING, read_json, remove_tree, write_csv, write_figure, write_json, write_text  # noqa: E402

SCORES = ["train_loss", "test_loss", *(f"test_{m}" for m in METRICS)]  # per run, mean/std per combination
CURVES = ["train_loss", "test_loss", *(f"test_{m}" for m, metric in METRICS.items() if metric.per_epoch), "lr"]
BEST_BY = "test_miou"  # descriptive only: which seed's curves to show, never used to pick a model
HEADLINE = "headline.json"  # the only file dvc.yaml declares as metrics: what `dvc exp show` shows
HEADLINE_DIGITS = 4
RUN_FOLDER = re.compile(r"[A-Za-z0-9_]+-[A-Za-z0-9_]+-[0-9]+")  # <loss>-<optimizer>-<seed>, as Run.name


def remove_stale_runs(runs: list[Run], runs_dir: str | Path) -> list[str]:
    """Delete the run folders under runs_dir of members not in `runs` (left by a grid that has since
    shrunk, or by git), so no old run passes for a current one; returns their names, sorted.
    Entries that are not named like a run are left alone."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    members = {run.name for run in runs}
    removed = []
    for entry in sorted(runs_dir.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name.startswith(".") and entry.name.endswith(REMOVING):  # a removal a kill interrupted
            shutil.rmtree(entry)
        elif RUN_FOLDER.fullmatch(entry.name) and entry.name not in members:
            remove_tree(entry)
            removed.append(entry.name)
    return removed


def load_runs(runs: list[Run], runs_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(one row per run of final metrics, run name -> history) for the runs of the grid."""
    rows, histories = [], {}
    for run in runs:
        folder = runs_dir / run.name
        if not (folder / "metrics.json").is_file():
            raise ForestsegError(f"{folder}/metrics.json is missing: run `dvc repro train@{run.name}` first")
        m = read_json(folder / "metrics.json")
        rows.append({"run": run.name, "combination": f"{run.loss}-{run.optimizer}", "loss": run.loss,
                     "optimizer": run.optimizer, "seed": run.seed, "status": m.get("status", "ok"),
                     "device": m.get("device"), "precision": m.get("precision"),
                     **{k: m.get(k) for k in SCORES}})
        histories[run.name] = pd.read_csv(folder / "history.csv")
    return pd.DataFrame(rows), histories


def _clean(x):
    """JSON-safe values: numpy scalars become Python ones; NaN/NA (std of one seed, no finished seed) null."""
    if x is None or x is pd.NA:
        return None
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per combination: mean and std over its finished seeds, best seed, diverged count."""
    out = []
    for combo, part in runs.groupby("combination", sort=False):
        ok = part[part["status"] == "ok"]
        row = {"combination": combo, "seeds": len(part), "diverged": int((part["status"] != "ok").sum())}
        for k in SCORES:
            values = ok[k].astype(float)
            row[f"{k}_mean"] = values.mean() if len(values) else float("nan")
            row[f"{k}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        row["best_seed"] = int(ok.loc[ok[BEST_BY].idxmax(), "seed"]) if len(ok) else None
        out.append(row)
    frame = pd.DataFrame(out)
    frame["best_seed"] = pd.array(frame["best_seed"], dtype="Int64")  # seeds stay integers beside a missing one
    return frame


def best_combination(summary: pd.DataFrame) -> pd.Series | None:
    """The summary row of highest mean BEST_BY over finished seeds; None when every combination diverged."""
    ok = summary.dropna(subset=[f"{BEST_BY}_mean"])
    return ok.loc[ok[f"{BEST_BY}_mean"].idxmax()] if len(ok) else None


def _rounded(x) -> float | None:
    x = _clean(x)
    return None if x is None else round(float(x), HEADLINE_DIGITS)


def headline(summary: pd.DataFrame) -> dict[str, str | float | None]:
    """A flat dict of the few numbers to read at a glance: `best` (the combination of highest mean
    mIoU, as in REPORT.md) and `best_iou` (its mean forest IoU), then `iou_<combination>` and
    `miou_<combination>` (means over finished seeds), rounded; null where every seed diverged.
    Keys sort with `best` first, as `dvc metrics diff` lists them."""
    best = best_combination(summary)
    out: dict[str, str | float | None] = {
        "best": None if best is None else best["combination"],
        "best_iou": None if best is None else _rounded(best["test_iou_mean"]),
    }
    for name, score in (("iou", "test_iou"), ("miou", "test_miou")):
        for _, row in summary.iterrows():
            out[f"{name}_{row['combination']}"] = _rounded(row[f"{score}_mean"])
    return out


def _best_history(summary_row, histories: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    seed = summary_row["best_seed"]
    return None if pd.isna(seed) else histories[f"{summary_row['combination']}-{int(seed)}"]


def fig_best_runs(summary: pd.DataFrame, histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Train vs test loss of the best seed of each combination, with its learning rate."""
    cols = min(len(summary), 2)
    rows = math.ceil(len(summary) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.8 * rows), squeeze=False)
    for ax, (_, s) in zip(axes.flat, summary.iterrows()):
        h = _best_history(s, histories)
        if h is None:
            ax.set_title(f"{s['combination']}: every seed diverged")
            continue
        ax.plot(h["epoch"], h["train_loss"], "o-", label="train loss")
        ax.plot(h["epoch"], h["test_loss"], "s--", label="test loss")
        ax.set(title=f"{s['combination']}, seed {int(s['best_seed'])}", xlabel="epoch",
               ylabel=f"{s['combination'].split('-')[0]} loss (per pixel)")
        ax.grid(alpha=0.3)
        lr_ax = ax.twinx()  # the step decay, on its own log axis
        lr_ax.step(h["epoch"], h["lr"], where="post", color="grey", alpha=0.6, label="learning rate")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate", color="grey")
        lines = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        ax.legend(lines, [l.get_label() for l in lines], fontsize=8)
    for ax in list(axes.flat)[len(summary):]:
        ax.axis("off")
    fig.suptitle(f"Train and test loss per epoch: best seed of each combination (by {BEST_BY})")
    fig.tight_layout()
    write_figure(path, fig)
    plt.close(fig)


def fig_optimizers(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Per loss: test loss per epoch of each optimizer, mean over seeds with a min-max band."""
    losses = list(dict.fromkeys(runs["loss"]))
    fig, axes = plt.subplots(1, len(losses), figsize=(6 * len(losses), 3.8), squeeze=False)
    for ax, loss in zip(axes.flat, losses):
        for opt, part in runs[(runs["loss"] == loss) & (runs["status"] == "ok")].groupby("optimizer", sort=False):
            curves = pd.concat([histories[r].set_index("epoch")["test_loss"] for r in part["run"]], axis=1)
            ax.plot(curves.index, curves.mean(axis=1), "o-", label=f"{opt} (mean of {curves.shape[1]} seeds)")
            ax.fill_between(curves.index, curves.min(axis=1), curves.max(axis=1), alpha=0.25)
        ax.set(title=f"{loss}: optimizers compared", xlabel="epoch", ylabel=f"test {loss} loss (per pixel)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing to label when every run of this loss diverged
            ax.legend(fontsize=8)
    fig.suptitle("Test loss per epoch, mean over seeds, band = min..max over seeds")
    fig.tight_layout()
    write_figure(path, fig)
    plt.close(fig)


def fig_test_iou(runs: pd.DataFrame, baseline_iou: float, path: Path) -> None:
    """Final test forest IoU of every seed, per combination, against the all-forest baseline."""
    combos = list(dict.fromkeys(runs["combination"]))
    fig, ax = plt.subplots(figsize=(1.6 * len(combos) + 3, 3.8))
    for i, combo in enumerate(combos):
        values = runs[(runs["combination"] == combo) & (runs["status"] == "ok")]["test_iou"].astype(float)
        jitter = (pd.Series(range(len(values))) - (len(values) - 1) / 2) * 0.06
        ax.scatter(i + jitter.to_numpy(), values, zorder=3)
        if len(values):
            ax.hlines(values.mean(), i - 0.3, i + 0.3, color="black", lw=2)
    ax.axhline(baseline_iou, color="red", ls="--", label=f"all-forest baseline {baseline_iou:.3f}")
    ax.set_xticks(range(len(combos)), combos)
    ax.set(ylabel="test forest IoU", title="Final test forest IoU, one dot per seed, bar = mean")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    write_figure(path, fig)
    plt.close(fig)


def epoch_table(part: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The study's table: one row per epoch, train and test loss of each seed as columns."""
    cols = {}
    for _, r in part.iterrows():
        h = histories[r["run"]].set_index("epoch")
        cols[f"train_loss seed {r['seed']}"] = h["train_loss"]
        cols[f"test_loss seed {r['seed']}"] = h["test_loss"]
    return pd.DataFrame(cols).reset_index()


FIGURES = ("loss_best.png", "loss_optimizers.png", "test_iou.png")


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(v) -> str:
        if v is None or v is pd.NA:
            return ""
        if isinstance(v, float):
            return "" if not math.isfinite(v) else f"{v:.{digits}f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _pm(mean, std) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4f}" if std is None or not math.isfinite(std) else f"{mean:.4f} ± {std:.4f}"


def write_report(path: Path, out: dict, summary: pd.DataFrame, table: pd.DataFrame,
                 histories: dict[str, pd.DataFrame], setup: dict, plots_rel: str) -> None:
    """REPORT.md: setup, the winner and by how much, tables and figures, for a reader who opens no CSV."""
    idx, split, base = setup["index"], out["split"], out["baseline_all_forest"]
    lines = ["# forestseg report", "",
             "Generated by the `aggregate` stage from `metrics/` (do not edit by hand; `dvc repro` rewrites it).", "",
             "## Setup", "",
             f"- Data: {idx['valid']} image/mask pairs from {idx['scenes']} scenes in `{idx['source']}` "
             f"({idx['skipped']} skipped, see `metrics/index.json`); forest is {idx['forest_fraction']:.1%} of pixels"
             + (f"; masks read as {idx['masks']}." if "masks" in idx else "."),
             f"- Split by {setup['split_by']}: " + ", ".join(
                 f"{k} {v['tiles']} tiles / {v['scenes']} scenes"
                 + (f" ({v['forest_fraction']:.1%} forest)" if "forest_fraction" in v else "") for k, v in split.items()) + ".",
             f"- Model and training: {setup['params']}.",
             f"- Grid: {', '.join(dict.fromkeys(table['loss']))} x {', '.join(dict.fromkeys(table['optimizer']))} "
             f"x seeds {', '.join(map(str, dict.fromkeys(table['seed'])))} ({len(table)} runs).",
             f"- Trained on {', '.join(sorted(set(table['device'].dropna())))} in "
             f"{', '.join(sorted(set(table['precision'].dropna())))}.",
             "- Metrics come from confusion counts summed over the whole test set; mIoU averages forest and "
             "background IoU; ± is the standard deviation over seeds. Train and test losses are each run's own "
             "loss, so compare them only between runs of the same loss.", "", "## Result", ""]
    ranked = summary.dropna(subset=["test_miou_mean"]).sort_values("test_miou_mean", ascending=False)
    if len(ranked):
        top = ranked.iloc[0]
        text = (f"**{top['combination']}** has the highest mean test mIoU, {_pm(top['test_miou_mean'], top['test_miou_std'])} "
                f"(forest IoU {_pm(top['test_iou_mean'], top['test_iou_std'])})")
        if len(ranked) > 1:
            runner = ranked.iloc[1]
            gap = top["test_miou_mean"] - runner["test_miou_mean"]
            spread = max(v for v in (top["test_miou_std"], runner["test_miou_std"], 0.0) if pd.notna(v))
            text += f", {gap:+.4f} mIoU over {runner['combination']}"
            if gap <= spread:
                text += " (within the spread over seeds: no clear winner between these two)"
        text += (f"; the all-forest baseline scores forest IoU {base['test_iou']:.4f} and mIoU {base['test_miou']:.4f}, "
                 f"so the winner is {top['test_iou_mean'] - base['test_iou']:+.4f} forest IoU above it.")
        lines += [text, ""]
    diverged = table[table["status"] != "ok"]["run"].tolist()
    if diverged:
        lines += [f"Diverged runs (excluded from the means): {', '.join(diverged)}.", ""]
    rows = [{"combination": r["combination"], "seeds ok": f"{r['seeds'] - r['diverged']}/{r['seeds']}",
             **{name: _pm(r[f"{k}_mean"], r[f"{k}_std"]) for name, k in (
                 ("train loss", "train_loss"), ("test loss", "test_loss"), ("forest IoU", "test_iou"),
                 ("mIoU", "test_miou"), ("Dice", "test_dice"), ("accuracy", "test_accuracy"))},
             "best seed": r["best_seed"]} for _, r in summary.iterrows()]
    rows.append({"combination": "all-forest baseline", "seeds ok": "", "train loss": "", "test loss": "",
                 "forest IoU": f"{base['test_iou']:.4f}", "mIoU": f"{base['test_miou']:.4f}",
                 "Dice": f"{base['test_dice']:.4f}", "accuracy": f"{base['test_accuracy']:.4f}", "best seed": ""})
    lines += [markdown_table(pd.DataFrame(rows)), "",
              f"![train and test loss of the best seed per combination]({plots_rel}/{FIGURES[0]})", "",
              f"![optimizers compared per loss]({plots_rel}/{FIGURES[1]})", "",
              f"![final test IoU per seed]({plots_rel}/{FIGURES[2]})", "",
              "## Predictions on test tiles", "",
              "Best seed of each combination on the same seeded test tiles (the `overlays` stage): image, "
              "ground truth, prediction, and errors (green: forest found, orange: false forest, magenta: "
              "missed forest).", ""]
    lines += [f"![{c} predictions]({plots_rel}/overlays/{c}.png)" for c in summary["combination"]]
    lines += ["", "## Per-epoch losses of every seed (the study's tables)", ""]
    for combo, part in table.groupby("combination", sort=False):
        lines += [f"### {combo}", "", markdown_table(epoch_table(part, histories)), ""]
    write_text(path, "\n".join(lines))


def aggregate(runs: list[Run], runs_dir: str | Path, split: dict, metrics_dir: str | Path,
              plots_dir: str | Path, report: str | Path | None = None, setup: dict | None = None) -> dict:
    """Write metrics/headline.json, metrics/summary.json, metrics/summary.csv,
    metrics/tables/<combination>[_epochs].csv, the figures and (given `report` and `setup`) REPORT.md;
    returns the summary dict."""
    runs_dir, metrics_dir, plots_dir = Path(runs_dir), Path(metrics_dir), Path(plots_dir)
    table, histories = load_runs(runs, runs_dir)
    if (table["status"] != "ok").all():
        raise ForestsegError(f"every run of the grid diverged ({', '.join(table['run'])}; each one's "
                             f"{runs_dir}/<run>/metrics.json says at which epoch and step): lower optimizer.lr and rerun")
    summary = summarize(table)
    for combo, part in table.groupby("combination", sort=False):
        s = summary[summary["combination"] == combo].iloc[0]
        stats = pd.DataFrame([{"run": label, "seed": None, "status": None,
                               **{k: s[f"{k}_{label}"] for k in SCORES}} for label in ("mean", "std")])
        best = part["seed"] == s["best_seed"] if not pd.isna(s["best_seed"]) else False
        per_seed = part[["run", "seed", "status", *SCORES]].assign(best=best)
        write_csv(metrics_dir / "tables" / f"{combo}.csv", pd.concat([per_seed, stats], ignore_index=True))
    baseline = split["baseline_all_forest"]
    base_row = {"combination": "all-forest baseline", "seeds": 0, "diverged": 0,
                **{f"test_{k}_mean": v for k, v in baseline.items()}}
    write_csv(metrics_dir / "summary.csv", pd.concat([summary, pd.DataFrame([base_row])], ignore_index=True))
    best = best_combination(summary)
    out = {
        "split": {k: v for k, v in split.items() if k != "baseline_all_forest"},
        "baseline_all_forest": {f"test_{k}": v for k, v in baseline.items()},
        "best_combination": None if best is None else best["combination"],
        "combinations": {r["combination"]: {k: _clean(v) for k, v in r.items() if k != "combination"}
                         for r in summary.to_dict("records")},
    }
    write_json(metrics_dir / "summary.json", out)
    write_json(metrics_dir / HEADLINE, headline(summary))
    fig_best_runs(summary, histories, plots_dir / FIGURES[0])
    fig_optimizers(table, histories, plots_dir / FIGURES[1])
    fig_test_iou(table, baseline["iou"], plots_dir / FIGURES[2])
    for combo, part in table.groupby("combination", sort=False):
        write_csv(metrics_dir / "tables" / f"{combo}_epochs.csv", epoch_table(part, histories))
    # One long table of every run's epochs: dvc plots draws it with one line per run (.dvc/plots/runs.json).
    write_csv(metrics_dir / "curves.csv", pd.concat(
        [histories[r].assign(run=r) for r in table["run"]], ignore_index=True)[
        ["run", "epoch", *CURVES]])
    if report is not None:
        report = Path(report)
        rel = Path(os.path.relpath(plots_dir.resolve(), report.resolve().parent)).as_posix()
        write_report(report, out, summary, table, histories, setup or {}, rel)
    return out
