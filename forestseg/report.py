"""Aggregate per-run metrics into tables (mean/std over seeds, best seed), a headline and loss-curve figures."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from .config import ForestsegError, GridConfig, ModelConfig, OptimizerConfig, Run, SplitConfig, TrainConfig
from .figures import FIGURES, fig_best_runs, fig_optimizers, fig_test_iou
from .io import plural, read_json, write_csv, write_json
from .markdown import write_report
from .metrics import METRICS, scores

SCORES = ["train_loss", "test_loss", *(f"test_{m}" for m in METRICS)]  # per run, mean/std per combination
CURVES = ["train_loss", "test_loss", *(f"test_{m}" for m, metric in METRICS.items() if metric.per_epoch), "lr"]
BEST_BY = "test_miou"  # ranks the combinations and picks the seed shown, on test as a study's table does;
# no model file is chosen on it (best.pt is chosen on val), and REPORT.md says the ranking is optimistic
HEADLINE = "headline.json"  # the only file dvc.yaml declares as metrics: what `dvc exp show` shows
HEADLINE_DIGITS = 4
SCENES = "scenes.csv"  # per run (train: confusion counts per test scene) and per grid (aggregate: scores)
SCENE_COUNTS = ["tp", "fp", "fn", "tn"]
SCENE_TABLE = ["scene", "tiles", "forest_share", "iou", "precision", "recall"]  # metrics/scenes.csv


def load_runs(runs: list[Run], runs_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(one row per run of final metrics, run name -> history) for the runs of the grid."""
    rows, histories = [], {}
    for run in runs:
        folder = runs_dir / run.name
        if not (folder / "metrics.json").is_file():
            raise ForestsegError(f"{folder}/metrics.json is missing: run `dvc repro train@{run.name}` first")
        redo = f"run `dvc repro --force train@{run.name}`"
        try:
            m = read_json(folder / "metrics.json")
            history = pd.read_csv(folder / "history.csv")
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:  # JSON errors too
            raise ForestsegError(
                f"{folder}: its metrics.json or history.csv cannot be read ({' '.join(str(e).split())}); {redo}"
            ) from None
        if not isinstance(m, dict):
            raise ForestsegError(f"{folder}/metrics.json: holds a {type(m).__name__}, not a run's metrics; {redo}")
        lacking = [c for c in ("epoch", *CURVES) if c not in history.columns]
        if lacking:
            raise ForestsegError(f"{folder}/history.csv: no column {', '.join(lacking)}; {redo}")
        if m.get("status", "ok") == "ok":  # a finished run has every score: a mean must not quietly skip one
            bad = [k for k in SCORES if not (isinstance(m.get(k), (int, float)) and math.isfinite(m[k]))]
            if bad:
                raise ForestsegError(f"{folder}/metrics.json: no finite {', '.join(bad)} in a finished run; {redo}")
        rows.append(
            {
                "run": run.name,
                "combination": run.combination,
                "loss": run.loss,
                "optimizer": run.optimizer,
                "seed": run.seed,
                "status": m.get("status", "ok"),
                "device": m.get("device"),
                "precision": m.get("precision"),
                **{k: m.get(k) for k in SCORES},
            }
        )
        histories[run.name] = history
    return pd.DataFrame(rows), histories


def load_scene_counts(run_names: list[str], runs_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """(the rows of each named run's scenes.csv, with a `run` column; the names of the runs that have
    none). Scene ids stay strings, as the split reads them."""
    parts, missing = [], []
    for name in run_names:
        path = runs_dir / name / SCENES
        if not path.is_file():
            missing.append(name)
            continue
        redo = f"run `dvc repro --force train@{name}` to rewrite it"
        try:
            part = pd.read_csv(path, dtype={"scene": str})
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ForestsegError(f"{path}: cannot be read ({' '.join(str(e).split())}); {redo}") from None
        lacking = [c for c in ["scene", "tiles", *SCENE_COUNTS] if c not in part.columns]
        if lacking:
            raise ForestsegError(
                f"{path}: no column {', '.join(lacking)} (expected scene,tiles,{','.join(SCENE_COUNTS)}); {redo}"
            )
        counts = part[["tiles", *SCENE_COUNTS]].apply(pd.to_numeric, errors="coerce")
        whole = (counts.notna() & (counts % 1 == 0) & (counts >= 0)).to_numpy()
        if not whole.all():  # pixel counts, summed over seeds: a cast would round 3.5 to 3
            row, column = (int(i[0]) for i in (~whole).nonzero())
            name_ = counts.columns[column]
            raise ForestsegError(
                f"{path}: counts that are not whole numbers >= 0 (row {row + 1}, {name_}: "
                f"{part[name_].iloc[row]}); {redo}"
            )
        part[["tiles", *SCENE_COUNTS]] = counts.astype("int64")
        parts.append(part.assign(run=name))
    columns = ["run", "scene", "tiles", *SCENE_COUNTS]
    return (pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)), missing


def scene_scores(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per scene of `counts` (load_scene_counts' rows of one combination's seeds): its tiles,
    forest share and forest IoU, precision, recall from the confusion counts summed over the seeds
    (never a mean of per-seed ratios); worst first: by forest IoU, except that a scene without forest,
    whose forest IoU is 0 as soon as one pixel is called forest, ranks by the share of its pixels
    called forest (as 1 - that share, its background IoU)."""
    if counts.empty:
        return pd.DataFrame(columns=SCENE_TABLE)
    rows, keys = [], []
    for scene, part in counts.groupby("scene", sort=True):
        summed = part[SCENE_COUNTS].to_numpy(dtype="int64").sum(axis=0)
        s = scores(summed)
        forest_share = (summed[0] + summed[2]) / summed.sum()  # (tp + fn) / pixels
        rows.append(
            {
                "scene": scene,
                "tiles": int(part["tiles"].iloc[0]),  # every seed is scored on the same test tiles
                "forest_share": forest_share,
                **{k: s[k] for k in ("iou", "precision", "recall")},
            }
        )
        keys.append(s["iou"] if forest_share else 1 - summed[1] / summed.sum())  # 1 - fp / pixels
    table = pd.DataFrame(rows).assign(_key=keys)
    return table.sort_values(["_key", "scene"], kind="stable", ignore_index=True).drop(columns="_key")


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
            # math.fsum rounds the sum once: the same seeds' scores in any order give the same mean, so an
            # exact tie stays a tie (pandas' running sum can differ in the last bit)
            row[f"{k}_mean"] = math.fsum(values) / len(values) if len(values) else float("nan")
            row[f"{k}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        row["best_seed"] = int(ok.loc[ok[BEST_BY].idxmax(), "seed"]) if len(ok) else None
        out.append(row)
    frame = pd.DataFrame(out)
    frame["best_seed"] = pd.array(frame["best_seed"], dtype="Int64")  # seeds stay integers beside a missing one
    return frame


def rank(summary: pd.DataFrame) -> pd.DataFrame:
    """The combinations with a finished seed, best first (the one place a winner is chosen): those
    with no diverged seed before those with one (a mean over the surviving seeds flatters a
    combination that fails), then by mean BEST_BY."""
    finished = summary.dropna(subset=[f"{BEST_BY}_mean"])
    order = finished.assign(_failed=finished["diverged"] > 0).sort_values(
        ["_failed", f"{BEST_BY}_mean"], ascending=[True, False], kind="stable"
    )
    return finished.loc[order.index]


def best_combination(summary: pd.DataFrame) -> pd.Series | None:
    """The first row of `rank`: combinations with no diverged seed first, then the highest mean BEST_BY
    over finished seeds; None when every combination diverged."""
    ranked = rank(summary)
    return ranked.iloc[0] if len(ranked) else None


def _rounded(x) -> float | None:
    x = _clean(x)
    return None if x is None else round(float(x), HEADLINE_DIGITS)


def headline(summary: pd.DataFrame) -> dict[str, str | float | None]:
    """A flat dict of the few numbers to read at a glance: `best` (`best_combination`: highest mean
    mIoU, those with a diverged seed ranked after the others, as in REPORT.md) and `best_iou` (its
    mean forest IoU), then `iou_<combination>` and `miou_<combination>` (means over finished seeds),
    rounded; null where every seed diverged.
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


def epoch_table(part: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The study's table: one row per epoch, train and test loss of each seed as columns; a seed that
    diverged says so in its columns' names (its blank cells alone would read as epochs never run)."""
    cols = {}
    for _, r in part.iterrows():
        h = histories[r["run"]].set_index("epoch")
        tag = "" if r["status"] == "ok" else " (diverged)"
        cols[f"train_loss seed {r['seed']}{tag}"] = h["train_loss"]
        cols[f"test_loss seed {r['seed']}{tag}"] = h["test_loss"]
    return pd.DataFrame(cols).reset_index()


def aggregate(
    runs: list[Run],
    runs_dir: str | Path,
    split: dict,
    metrics_dir: str | Path,
    plots_dir: str | Path,
    report: str | Path | None = None,
    setup: dict | None = None,
) -> dict:
    """Write metrics/headline.json, metrics/summary.json, metrics/summary.csv,
    metrics/tables/<combination>[_epochs].csv, the figures and (given `report` and `setup`) REPORT.md;
    returns the summary dict."""
    runs_dir, metrics_dir, plots_dir = Path(runs_dir), Path(metrics_dir), Path(plots_dir)
    table, histories = load_runs(runs, runs_dir)
    if (table["status"] != "ok").all():
        raise ForestsegError(
            f"every run of the grid diverged ({', '.join(table['run'])}; each one's "
            f"{runs_dir}/<run>/metrics.json says at which epoch and step): lower optimizer.lr and rerun"
        )
    summary = summarize(table)
    best = best_combination(summary)
    # Per scene: the best combination's finished seeds, counts summed (as the headline's best_iou is its
    # mean); read before anything is written, so a malformed file leaves the old outputs whole
    best_name = None if best is None else best["combination"]
    best_runs = table[(table["status"] == "ok") & (table["combination"] == best_name)]["run"].tolist()
    counts, no_scenes = load_scene_counts(best_runs, runs_dir)
    scenes = scene_scores(counts)
    for combo, part in table.groupby("combination", sort=False):
        s = summary[summary["combination"] == combo].iloc[0]
        stats = pd.DataFrame(
            [
                {"run": label, "seed": None, "status": None, **{k: s[f"{k}_{label}"] for k in SCORES}}
                for label in ("mean", "std")
            ]
        )
        best = part["seed"] == s["best_seed"] if not pd.isna(s["best_seed"]) else False
        per_seed = part[["run", "seed", "status", *SCORES]].assign(best=best)
        write_csv(metrics_dir / "tables" / f"{combo}.csv", pd.concat([per_seed, stats], ignore_index=True))
    baseline = split["baseline_all_forest"]
    base_row = {
        "combination": "all-forest baseline",
        "seeds": 0,
        "diverged": 0,
        **{f"test_{k}_mean": v for k, v in baseline.items()},
    }
    write_csv(metrics_dir / "summary.csv", pd.concat([summary, pd.DataFrame([base_row])], ignore_index=True))
    out = {
        "split": {k: v for k, v in split.items() if k != "baseline_all_forest"},
        "baseline_all_forest": {f"test_{k}": v for k, v in baseline.items()},
        "best_combination": best_name,
        "combinations": {
            r["combination"]: {k: _clean(v) for k, v in r.items() if k != "combination"}
            for r in summary.to_dict("records")
        },
    }
    write_json(metrics_dir / "summary.json", out)
    write_csv(metrics_dir / SCENES, scenes)
    write_json(metrics_dir / HEADLINE, headline(summary))
    fig_best_runs(summary, histories, BEST_BY, plots_dir / FIGURES[0])
    fig_optimizers(table, histories, plots_dir / FIGURES[1])
    fig_test_iou(table, baseline["iou"], plots_dir / FIGURES[2])
    epoch_tables = {combo: epoch_table(part, histories) for combo, part in table.groupby("combination", sort=False)}
    for combo, epochs in epoch_tables.items():
        write_csv(metrics_dir / "tables" / f"{combo}_epochs.csv", epochs)
    # One long table of every run's epochs: dvc plots draws it with one line per run, coloured by
    # combination (.dvc/plots/runs.json: a grid of 12 or 24 runs outruns any palette, its 2-4
    # combinations do not); a diverged run's epochs before it diverged are named so, not drawn as a
    # run that ended early
    label = {r: r if status == "ok" else f"{r} (diverged)" for r, status in zip(table["run"], table["status"])}
    write_csv(
        metrics_dir / "curves.csv",
        pd.concat(
            [histories[r].assign(run=label[r], combination=c) for r, c in zip(table["run"], table["combination"])],
            ignore_index=True,
        )[["run", "combination", "epoch", *CURVES]],
    )
    if report is not None:
        report = Path(report)
        rel = Path(os.path.relpath(plots_dir.resolve(), report.resolve().parent)).as_posix()
        per_scene = {
            "combination": out["best_combination"],
            "runs": [r for r in best_runs if r not in no_scenes],
            "missing": no_scenes,
            "scenes": scenes,
        }
        write_report(report, out, summary, rank(summary), table, epoch_tables, setup or {}, rel, per_scene)
    return out


def _model_text(model: ModelConfig) -> str:
    """The model params the arch reads: a fixed-layer model's width and depth would be fiction."""
    from .model import ARCHS

    if "width" not in ARCHS[model.arch].uses:
        return f"{model.arch} (fixed layers)"
    return f"{model.arch} width {model.width} depth {model.depth}, batch-norm {'on' if model.batch_norm else 'off'}"


def _schedule_text(opt: OptimizerConfig, epochs: int) -> str:
    """The lr schedule as it acts within `epochs`: a step that never comes, or a factor of 1, is no decay."""
    if opt.schedule != "step":
        return f"{opt.schedule} decay, set per epoch"
    if opt.gamma == 1:
        return "constant (optimizer.gamma 1)"
    every = f"x{opt.gamma:g} every {plural(opt.step_epochs, 'epoch')}"
    steps_from = opt.warmup_epochs + opt.step_epochs  # the first epoch at a lowered lr is the one after this
    return every if steps_from < epochs else f"{every} (no step within {plural(epochs, 'epoch')})"


def _extras_text(model: ModelConfig, train: TrainConfig) -> str:
    """Training knobs that change what a run learns, named only where they are on."""
    on = [
        f"sampling {train.sampling}" if train.sampling != "tile" else "",
        f"weight EMA {train.ema:g}" if train.ema else "",
        f"zoom up to {1 + train.scale:g}x" if train.scale else "",
        f"saturation +-{train.saturation:g}" if train.saturation else "",
        f"blur probability {train.blur:g}" if train.blur else "",
        f"CutMix {train.cutmix:g}" if train.cutmix else "",
        f"MixStyle {model.mixstyle:g}" if model.mixstyle else "",
    ]
    return "".join(f", {x}" for x in on if x)


def _train_steps_text(model: ModelConfig, train: TrainConfig) -> str:
    """How a training step differs from scoring the test tiles: what makes the train loss another measure."""
    augmented = train.augment or any((train.color_jitter, train.scale, train.saturation, train.blur, train.cutmix))
    on = [
        "augmented tiles" if augmented else "",
        "MixStyle" if model.mixstyle else "",
        "batch-norm in training mode" if model.has_batch_norm else "",
        "weights still moving",
    ]
    return ", ".join(x for x in on if x)


def describe_setup(
    index: dict,
    split: SplitConfig,
    model: ModelConfig,
    opt: OptimizerConfig,
    train: TrainConfig,
    grid: GridConfig,
) -> dict:
    """The setup REPORT.md states: the index report, the split unit and the params in one sentence
    (lr overrides only of combinations in `grid`, and momentum only where an optimizer of it uses it:
    the others act on no run)."""
    combos = {run.combination for run in grid.runs()}
    momentum = grid.reads("momentum")
    overrides = {k: v for k, v in opt.lr_overrides.items() if k in combos}
    lrs = f"lr {opt.lr:g}" + "".join(f", {k} {v:g}" for k, v in overrides.items())
    schedule = _schedule_text(opt, train.epochs)
    return {
        "index": index,
        "split_by": split.by,
        "train_steps": _train_steps_text(model, train),
        "params": (
            f"{_model_text(model)}, "
            f"{model.input} input; {plural(train.epochs, 'epoch')}, batch {train.batch_size} (test {train.test_batch_size}), "
            f"{lrs}, {schedule}"
            + (f" after {plural(opt.warmup_epochs, 'warmup epoch')}" if opt.warmup_epochs else "")
            + (f", momentum {opt.momentum:g}" if momentum else "")
            + f", weight decay {opt.weight_decay:g}, "
            f"flips/rotations {'on' if train.augment else 'off'}, colour jitter {train.color_jitter:g}"
            + _extras_text(model, train)
            + (f"; fine-tuned from {train.init_from}" if train.init_from != "none" else "")
            + (
                f"; each test scene scored with batch-norm statistics moved {train.adapt_bn:g} towards its own "
                "(train.adapt_bn; the per-epoch curves without)"
                if train.adapt_bn
                else ""
            )
            + (
                f"; the final scores use the cut chosen on the validation {split.by}s (train.threshold: val; a cut on the "
                "model's raw output, a logit for the logit losses: each run's `threshold` in its metrics.json; "
                "the per-epoch curves use the loss's own cut, so their last point can differ from the tables)"
                if train.threshold == "val"
                else ""
            )
        ),
    }


def format_summary(summary: dict) -> str:
    """The aggregate's result as a few human lines: each combination's test IoU, and the baseline."""
    lines = []
    for combo, s in summary["combinations"].items():
        iou, std = s["test_iou_mean"], s["test_iou_std"]
        iou_txt = "n/a" if iou is None else f"{iou:.4f}" + ("" if std is None else f" ± {std:.4f}")
        lines.append(
            f"{combo:>12}: test IoU {iou_txt} over {s['seeds'] - s['diverged']}/{plural(s['seeds'], 'seed')}, "
            f"best seed {'n/a' if s['best_seed'] is None else s['best_seed']}"
        )
    lines.append(f"{'all-forest':>12}: test IoU {summary['baseline_all_forest']['test_iou']:.4f} (baseline)")
    return "\n".join(lines)
