"""The report's figures: loss curves of the best runs, optimizers compared, test IoU per seed."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .config import Run  # noqa: E402
from .io import plural, write_figure  # noqa: E402
from .metrics import METRICS  # noqa: E402

FIGURES = ("loss_best.png", "loss_optimizers.png", "test_iou.png")


def _best_history(summary_row, histories: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    seed = summary_row["best_seed"]
    return None if pd.isna(seed) else histories[Run.of(summary_row["combination"], seed).name]


def _whole_epochs(ax, epochs) -> None:
    """Ticks at whole epochs only; a single epoch gets its own tick, not a fractional range around it."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    first, last = min(epochs), max(epochs)
    if first == last:
        ax.set_xlim(first - 1, last + 1)


def _runs_epochs(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], loss: str) -> list[int]:
    """Every epoch of the finished runs of `loss` (at least epoch 1: an axis needs a range)."""
    ok = runs[(runs["loss"] == loss) & (runs["status"] == "ok")]["run"]
    return [e for r in ok for e in histories[r]["epoch"]] or [1]


def fig_best_runs(summary: pd.DataFrame, histories: dict[str, pd.DataFrame], best_by: str, path: Path) -> None:
    """Train vs test loss of the best seed (by `best_by`) of each combination, with its learning rate."""
    cols = min(len(summary), 2)
    rows = math.ceil(len(summary) / cols)
    # 8 inches at least: the suptitle is wider than one 6-inch panel
    fig, axes = plt.subplots(rows, cols, figsize=(max(8, 6 * cols), 3.8 * rows), squeeze=False, layout="constrained")
    for ax, (_, s) in zip(axes.flat, summary.iterrows()):
        h = _best_history(s, histories)
        if h is None:
            ax.set_title(f"{s['combination']}: every seed diverged")
            ax.set_xticks([]), ax.set_yticks([])  # a titled empty frame, not a 0..1 plot of nothing
            continue
        # train: the mean over the epoch's steps (augmented tiles, weights still moving); test: the epoch's end
        ax.plot(h["epoch"], h["train_loss"], "o-", label="train loss (mean over the epoch's steps)")
        ax.plot(h["epoch"], h["test_loss"], "s--", label="test loss (the model at the epoch's end)")
        ax.set(
            title=f"{s['combination']}, seed {int(s['best_seed'])}",
            xlabel="epoch",
            ylabel=f"{s['combination'].split('-')[0]} loss",
        )
        ax.grid(alpha=0.3)
        _whole_epochs(ax, h["epoch"])
        lr_ax = ax.twinx()  # the step decay, on its own log axis; epoch k's lr spans k-1..k, where it trained
        # a marker too: one epoch's step line has no length
        lr_ax.step(h["epoch"], h["lr"], where="pre", color="grey", alpha=0.6, label="learning rate", marker=".")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate", color="grey")
        lines = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        ax.legend(lines, [line.get_label() for line in lines], fontsize=8)
    for ax in list(axes.flat)[len(summary) :]:
        ax.axis("off")
    metric = METRICS.get(best_by.removeprefix("test_"))
    by = f"test {metric.label}" if metric is not None and best_by.startswith("test_") else best_by
    fig.suptitle(f"Train and test loss per epoch: best seed of each combination (by {by})")
    write_figure(path, fig)
    plt.close(fig)


def fig_optimizers(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Per loss: test loss per epoch of each optimizer, mean over seeds with a min-max band."""
    losses = list(dict.fromkeys(runs["loss"]))
    optimizers = list(dict.fromkeys(runs["optimizer"]))
    colour = {opt: f"C{i}" for i, opt in enumerate(optimizers)}  # the same in every panel
    fig, axes = plt.subplots(1, len(losses), figsize=(6 * len(losses), 3.8), squeeze=False, layout="constrained")
    for ax, loss in zip(axes.flat, losses):
        for opt, part in runs[(runs["loss"] == loss) & (runs["status"] == "ok")].groupby("optimizer", sort=False):
            curves = pd.concat([histories[r].set_index("epoch")["test_loss"] for r in part["run"]], axis=1)
            seeds = plural(curves.shape[1], "seed")
            ran = ((runs["loss"] == loss) & (runs["optimizer"] == opt)).sum()
            # as test_iou.png says it: a mean of fewer seeds than ran would read as a smaller grid
            diverged = f"; {ran - curves.shape[1]} of {ran} diverged" if ran > curves.shape[1] else ""
            label = f"{opt} (mean of {seeds}{diverged})"
            ax.plot(curves.index, curves.mean(axis=1), "o-", color=colour[opt], label=label)
            ax.fill_between(curves.index, curves.min(axis=1), curves.max(axis=1), color=colour[opt], alpha=0.25)
        for opt in optimizers:  # a line that is not there would read as an optimizer never run
            part = runs[(runs["loss"] == loss) & (runs["optimizer"] == opt)]
            if len(part) and not (part["status"] == "ok").any():
                ax.plot([], [], " ", color=colour[opt], label=f"{opt} (every seed diverged)")
        what = "optimizers compared" if len(optimizers) > 1 else optimizers[0]
        ax.set(title=f"{loss}: {what}", xlabel="epoch", ylabel=f"test {loss} loss")
        _whole_epochs(ax, _runs_epochs(runs, histories, loss))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing to label when every run of this loss diverged
            ax.legend(fontsize=8)
    fig.suptitle("Test loss per epoch, mean over seeds, band = min..max over seeds")
    write_figure(path, fig)
    plt.close(fig)


def fig_test_iou(runs: pd.DataFrame, baseline_iou: float, path: Path) -> None:
    """Final test forest IoU of every seed, per combination, against the all-forest baseline."""
    combos = list(dict.fromkeys(runs["combination"]))
    # coloured by optimizer as loss_optimizers.png colours it, each dot named by its seed
    colour = {opt: f"C{i}" for i, opt in enumerate(dict.fromkeys(runs["optimizer"]))}
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(combos) + 3), 3.8), layout="constrained")
    for i, combo in enumerate(combos):
        part = runs[runs["combination"] == combo]
        ok = part[part["status"] == "ok"]
        values = ok["test_iou"].astype(float)
        jitter = (pd.Series(range(len(values))) - (len(values) - 1) / 2) * 0.06
        ax.scatter(i + jitter.to_numpy(), values, color=colour[part["optimizer"].iloc[0]], zorder=3)
        for x, y, seed in zip(i + jitter.to_numpy(), values, ok["seed"]):
            ax.annotate(str(seed), (x, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        if len(values):
            ax.hlines(values.mean(), i - 0.3, i + 0.3, color="black", lw=2)
        diverged = len(part) - len(values)
        if diverged:  # a missing dot would read as a seed that was never run
            label = "every seed\ndiverged" if not len(values) else f"{diverged} of {len(part)}\nseeds diverged"
            # at the foot of the axes (x in data, y in axes units): the baseline may be at the top
            ax.text(i, 0.03, label, ha="center", va="bottom", fontsize=8, transform=ax.get_xaxis_transform())
    for opt, c in colour.items():  # the dots' colours, named
        ax.plot([], [], "o", color=c, label=opt)
    ax.axhline(baseline_iou, color="red", ls="--", label=f"all-forest baseline {baseline_iou:.3f}")
    ax.set_xticks(range(len(combos)), combos)
    ax.set_xlim(-0.7, len(combos) - 0.3)  # room beside the bars (+-0.3) for the legend
    ax.margins(y=0.15)
    ax.set(ylabel="test forest IoU", title="Final test forest IoU, one dot per seed (named), bar = mean")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    write_figure(path, fig)
    plt.close(fig)


def fig_ranking(names: list[str], values: list[float], metric: str, path: Path) -> None:
    """Horizontal bars of `metric` per experiment, in the order given (best first, drawn on top)."""
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.4), layout="constrained")
    bars = ax.barh(range(len(names)), values, color="tab:green")
    ax.bar_label(bars, labels=[f"{v:.4f}" for v in values], padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()  # rank 1 at the top
    ax.set_xlim(0, max(1.0, max(values) * 1.12))  # headline scores are IoUs in 0..1; room for the labels
    ax.set(xlabel=metric, title=f"Experiments ranked by {metric}")
    ax.grid(alpha=0.3, axis="x")
    write_figure(path, fig)
    plt.close(fig)
