"""REPORT.md: the setup, the winner and by how much, tables and figures, for a reader who opens no CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from .figures import FIGURES
from .io import plural, write_text
from .metrics import METRICS


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(v) -> str:
        if v is None or v is pd.NA:
            return ""
        if isinstance(v, float):
            return "" if not math.isfinite(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")  # a name with a pipe (DVC allows it) stays one cell

    lines = ["| " + " | ".join(map(cell, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _pm(mean, std) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4f}" if std is None or not math.isfinite(std) else f"{mean:.4f} ± {std:.4f}"


WORST_SCENES_SHOWN = 10  # rows of the per-scene table in REPORT.md (metrics/scenes.csv has every scene)


def scene_section(per_scene: dict, plots_rel: str, split_by: str = "scene") -> list[str]:
    """REPORT.md's "Per-scene results": forest IoU over the test scenes, the worst ones, their overlays."""
    scenes, runs, missing = per_scene["scenes"], per_scene["runs"], per_scene["missing"]
    lines = ["## Per-scene results", ""]
    if split_by == "tile":
        lines += [
            "Split by tile (`split.by: tile`, the 2022 study's): other tiles of every test scene trained, so these "
            "are no unseen scenes and score higher than new ones would (`split.by: scene` holds whole scenes out).",
            "",
        ]
    if missing:
        lines += [
            f"Per-scene results are absent for {', '.join(missing)}: no `scenes.csv` in "
            f"{'its' if len(missing) == 1 else 'their'} `metrics/runs/<run>/` folder"
            + (" (the counts below leave them out)." if len(scenes) else "."),
            "",
        ]
    if not len(scenes):
        return lines
    bare = scenes[scenes["forest_share"].astype(float) == 0]  # no forest: IoU 0 or 1, ranked apart
    forested = scenes.drop(bare.index)
    iou = forested["iou"].astype(float)
    seeds = ", ".join(r.rsplit("-", 1)[1] for r in runs)
    shown = scenes.head(WORST_SCENES_SHOWN)
    lines += [
        f"Forest IoU, precision and recall of **{per_scene['combination']}** on each test scene, from the "
        f"confusion counts of seed{'s' if len(runs) > 1 else ''} {seeds} summed per scene; forest share is "
        "the share of the scene's test pixels that are forest. Every scene is in `metrics/scenes.csv`.",
        "",
        f"- {len(scenes)} test scene{'s' if len(scenes) > 1 else ''}; "
        + (
            f"forest IoU per scene{' with forest' if len(bare) else ''}: median {iou.median():.4f}, 10th percentile "
            f"{iou.quantile(0.1, interpolation='lower'):.4f} (the worst tenth of the scenes score at most this), "
            f"worst {iou.min():.4f} (scene {forested.loc[iou.idxmin(), 'scene']})."
            if len(forested)
            else "none holds forest."
        ),
        *(
            [
                f"- {len(bare)} scene{'s hold' if len(bare) > 1 else ' holds'} no forest ({', '.join(bare['scene'].head(5))}"
                f"{', ...' if len(bare) > 5 else ''}): forest IoU is 0 there as soon as one pixel is called forest, "
                "so such a scene ranks by the share of its pixels called forest, as if it were 1 - IoU."
            ]
            if len(bare)
            else []
        ),
        "",
        ("Every scene, worst first:" if len(shown) == len(scenes) else f"The {len(shown)} worst scenes:"),
        "",
        markdown_table(
            pd.DataFrame(
                {
                    "scene": shown["scene"],
                    "tiles": shown["tiles"],
                    "forest share": [f"{v:.1%}" for v in shown["forest_share"]],
                    "forest IoU": shown["iou"].astype(float),
                    "precision": shown["precision"].astype(float),
                    "recall": shown["recall"].astype(float),
                }
            )
        ),
        "",
        f"Test tiles of the worst scenes, predicted by the best seed of {per_scene['combination']} (the "
        "`overlays` stage; colours as above):",
        "",
        f"![test tiles of the worst scenes]({plots_rel}/overlays/worst_scenes.png)",
    ]
    return lines


def _names(names: Iterable[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _seed_ties(table: pd.DataFrame) -> str:
    """A sentence naming the combinations whose best seed ties with another (the first is shown)."""
    from .report import BEST_BY  # report imports this module

    ok = table[table["status"] == "ok"]
    ties = [
        f"{combo} (seeds {', '.join(str(s) for s in top['seed'])})"
        for combo, part in ok.groupby("combination", sort=False)
        if len(top := part[part[BEST_BY] == part[BEST_BY].max()]) > 1
    ]
    return f" Best seeds that tie, the first in the grid's order shown: {'; '.join(ties)}." if ties else ""


def _setup_lines(out: dict, table: pd.DataFrame, setup: dict) -> list[str]:
    """REPORT.md's title and Setup section: the data, split, model, grid, device and how scores are read."""
    from .losses import LOSSES  # here, not at the top: `recipes/rank.py` tables need no torch (2 s to import)

    idx, split = setup["index"], out["split"]
    per_batch = [x for x in dict.fromkeys(table["loss"]) if x in LOSSES and LOSSES[x].per_batch]
    lines = [
        "# forestseg report",
        "",
        "Generated by the `aggregate` stage from `metrics/` (do not edit by hand; `dvc repro` rewrites it).",
        "",
        "## Setup",
        "",
        f"- Data: {idx['valid']} image/mask pairs from {idx['scenes']} scenes in `{idx['source']}` "
        f"({idx['skipped']} skipped"
        + "".join(
            f", {idx[f'unlisted_{kind}s']} {kind}(s) without a row in meta_data.csv"
            for kind in ("image", "mask")
            if idx.get(f"unlisted_{kind}s")
        )
        + f", see `metrics/index.json`); forest is {idx['forest_fraction']:.1%} of pixels"
        + (f"; masks read as {idx['masks']}." if "masks" in idx else "."),
        f"- Split by {setup['split_by']}: "
        + ", ".join(
            f"{k} {plural(v['tiles'], 'tile')} / {plural(v['scenes'], 'scene')}"
            + (f" ({v['forest_fraction']:.1%} forest)" if "forest_fraction" in v else "")
            for k, v in split.items()
        )
        + ".",
        f"- Model and training: {setup['params']}.",
        f"- Grid: {', '.join(dict.fromkeys(table['loss']))} x {', '.join(dict.fromkeys(table['optimizer']))} "
        f"x {'seed' if table['seed'].nunique() == 1 else 'seeds'} {', '.join(map(str, dict.fromkeys(table['seed'])))} "
        f"({plural(len(table), 'run')}).",
        f"- Trained on {', '.join(sorted(set(table['device'].dropna())))} in "
        f"{', '.join(sorted(set(table['precision'].dropna())))}.",
        "- Metrics come from confusion counts summed over the whole test set; mIoU averages forest and "
        "background IoU; ± is the sample standard deviation over seeds (n - 1). Scores are those of each run's "
        "final model (`models/<run>/model.pt`, its last epoch). The train loss is the mean over an epoch's "
        f"training steps ({setup['train_steps']}), the test loss "
        "that of the model at the epoch's end, so the train loss can sit above the test loss. Both are each "
        "run's own loss, so compare them only between runs of the same loss"
        + (
            f"; for {', '.join(per_batch)} (a loss of the whole batch) the train loss is a mean of the batches' losses, each weighted by its tiles, and "
            "the test loss a mean over tiles, so the two are not the same measure either."
            if per_batch
            else "."
        ),
        "",
    ]
    return lines


def _result_text(ranked: pd.DataFrame, base: dict) -> str:
    """The Result sentence: the top combination (`ranked`: best first, as report.rank gives them), how it
    ranks against higher means of diverged ones, ties, the gap to the next and to the all-forest baseline."""
    top = ranked.iloc[0]
    failed = (
        ""
        if not top["diverged"]
        else f", over the {plural(top['seeds'] - top['diverged'], 'seed')} of {top['seeds']} that did not diverge"
    )
    scores = (
        f"{_pm(top['test_miou_mean'], top['test_miou_std'])} "
        f"(forest IoU {_pm(top['test_iou_mean'], top['test_iou_std'])}{failed})"
    )
    # report.rank puts combinations with a diverged seed last: the top one may not have the highest mean
    higher = ranked[(ranked["diverged"] > 0) & (ranked["test_miou_mean"] > top["test_miou_mean"])]
    rest = ranked.iloc[1:]
    same = rest[rest["test_miou_mean"] == top["test_miou_mean"]]  # every combination tied with the top
    # a tie under report.rank: the same mean and, like the top, a diverged seed or none
    tied = same[(same["diverged"] > 0) == (top["diverged"] > 0)]
    if len(higher):
        text = (
            f"**{top['combination']}** ranks first, with test mIoU {scores}: no seed of it diverged, while "
            + ", ".join(
                f"{r['combination']} ({r['diverged']} of {plural(r['seeds'], 'seed')} diverged) has a higher mean "
                f"over the rest, {r['test_miou_mean']:.4f}"
                for _, r in higher.iterrows()
            )
        )
    elif len(tied):
        text = f"**{top['combination']}** (first in the grid's order) ties for the highest mean test mIoU, {scores}"
    else:
        text = f"**{top['combination']}** has the highest mean test mIoU, {scores}"
    others = rest.drop(higher.index)  # those scoring at most the top's mean: the gap to weigh
    # after the sentence on higher means, the comparison names the top again
    then = f"; {top['combination']} " if len(higher) else ", "
    if len(others):
        if len(same):
            clauses = [f"{'ties ' if len(higher) else ''}with {_names(tied['combination'])}"] if len(tied) else []
            clauses += [  # the same mean over fewer seeds: ranked after (report.rank)
                f"{'scores ' if len(higher) and not clauses else ''}as high as {r['combination']} over its "
                f"seeds that did not diverge ({r['diverged']} of {plural(r['seeds'], 'seed')} diverged: ranked after)"
                for _, r in same.drop(tied.index).iterrows()
            ]
            text += then + ", ".join(clauses)
        else:
            # the next-highest mean, not the next in rank: one with a diverged seed may score between
            runners = others[others["test_miou_mean"] == others["test_miou_mean"].max()]  # tied for second
            gap = top["test_miou_mean"] - runners.iloc[0]["test_miou_mean"]
            text += f"{then}{'scores ' if len(higher) else ''}{gap:+.4f} mIoU over " + _names(
                r["combination"]
                + (
                    f" ({r['diverged']} of {plural(r['seeds'], 'seed')} diverged: ranked after)"
                    if r["diverged"] and not top["diverged"]
                    else ""
                )
                for _, r in runners.iterrows()
            )
            stds = [top["test_miou_std"], *runners["test_miou_std"]]
            if any(pd.isna(x) for x in stds):
                text += " (one finished seed: no spread over seeds to weigh the gap against)"
            elif gap <= max(stds):
                text += " (within the spread over seeds: no clear winner)"
    lead = top["test_iou_mean"] - base["test_iou"]
    text += (
        f"; the all-forest baseline scores forest IoU {base['test_iou']:.4f} and mIoU {base['test_miou']:.4f}, "
        f"so {top['combination']} is {abs(lead):.4f} forest IoU {'above' if lead >= 0 else 'below'} it."
    )
    return text


def _summary_rows(summary: pd.DataFrame, base: dict) -> list[dict]:
    """The Result table's rows: each combination's mean ± std over seeds, then the all-forest baseline."""
    rows = [
        {
            "combination": r["combination"],
            "seeds ok": f"{r['seeds'] - r['diverged']}/{r['seeds']}",
            **{
                name: _pm(r[f"{k}_mean"], r[f"{k}_std"])
                for name, k in (("train loss", "train_loss"), ("test loss", "test_loss"))
            },
            **{m.label: _pm(r[f"test_{key}_mean"], r[f"test_{key}_std"]) for key, m in METRICS.items()},
            "best seed": r["best_seed"],
        }
        for _, r in summary.iterrows()
    ]
    rows.append(
        {
            "combination": "all-forest baseline",
            "seeds ok": "",
            "train loss": "",
            "test loss": "",
            **{m.label: f"{base[f'test_{key}']:.4f}" for key, m in METRICS.items()},
            "best seed": "",
        }
    )
    return rows


def write_report(
    path: Path,
    out: dict,
    summary: pd.DataFrame,
    ranked: pd.DataFrame,
    table: pd.DataFrame,
    epoch_tables: dict[str, pd.DataFrame],
    setup: dict,
    plots_rel: str,
    per_scene: dict | None = None,
) -> None:
    """REPORT.md: setup, the winner and by how much (`ranked`: the combinations best first, as
    report.rank gives them), tables and figures, for a reader who opens no CSV. `per_scene`: the
    best combination's scores per test scene, as report.aggregate passes them."""
    base = out["baseline_all_forest"]
    lines = _setup_lines(out, table, setup) + ["## Result", ""]
    if len(ranked):
        lines += [
            _result_text(ranked, base),
            "",
            "The ranking, each combination's best seed and the predictions shown below are chosen on these "
            "test scores, as the study's tables rank them: the top score is optimistic. To choose a model, use "
            "validation scenes (`split.val_fraction`: `models/<run>/best.pt` is the epoch of best val mIoU); no "
            "file of this pipeline is chosen on test." + _seed_ties(table),
            "",
        ]
    diverged = table[table["status"] != "ok"]["run"].tolist()
    if diverged:
        lines += [f"Diverged runs (excluded from the means): {', '.join(diverged)}.", ""]
    lines += [
        markdown_table(pd.DataFrame(_summary_rows(summary, base))),
        "",
        f"![train and test loss of the best seed per combination]({plots_rel}/{FIGURES[0]})",
        "",
        f"![optimizers compared per loss]({plots_rel}/{FIGURES[1]})",
        "",
        f"![final test IoU per seed]({plots_rel}/{FIGURES[2]})",
        "",
        "## Predictions on test tiles",
        "",
        "Best seed of each combination on the same seeded test tiles (the `overlays` stage): image, "
        "ground truth, prediction, and errors (green: forest found, orange: false forest, magenta: "
        "missed forest).",
        "",
    ]
    for c, seeds, diverged in zip(summary["combination"], summary["seeds"], summary["diverged"]):
        # the overlays stage draws no figure for a combination with no finished seed
        lines.append(
            f"{c}: every seed diverged, no predictions."
            if diverged == seeds
            else f"![{c} predictions]({plots_rel}/overlays/{c}.png)"
        )
    if per_scene is not None:
        lines += ["", *scene_section(per_scene, plots_rel, setup["split_by"])]
    lines += ["", "## Per-epoch losses of every seed (the study's tables)", ""]
    for combo, epochs in epoch_tables.items():
        # seeds that all diverged within the first epoch leave a header with no rows
        body = markdown_table(epochs) if len(epochs) else "Every seed diverged before finishing an epoch: no losses."
        lines += [f"### {combo}", "", body, ""]
    write_text(path, "\n".join(lines))
