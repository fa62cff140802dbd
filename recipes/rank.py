"""Rank DVC experiments by a headline metric: a Markdown table and a bar chart.

    python recipes/rank.py                          # `dvc exp show --json` of this project, by best_iou, into its sweeps/
    python recipes/rank.py --metric iou_bce-adam -o sweeps/lr
    python recipes/rank.py --json exps.json         # a saved `dvc exp show --json`

Values come from metrics/headline.json of each experiment (README: Experiments at a glance), with
best_miou, the best combination's mIoU, beside them. The table has the rank, the experiment, the
metric, the best combination, its mIoU and each combination's forest IoU,
then the params that differ between the experiments. Experiments that failed, are queued or running,
have no finite value of the metric, or are stale (their commit's dvc.lock says `aggregate` last ran
with other params, or wrote another headline than the one committed: only `train` ran, e.g. a
scale-out slice) are listed last, marked, and left out of the chart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from forestseg.config import combination_of  # noqa: E402
from forestseg.errors import ForestsegError  # noqa: E402
from forestseg.figures import fig_ranking  # noqa: E402
from forestseg.io import load_yaml, write_text  # noqa: E402
from forestseg.markdown import markdown_table  # noqa: E402
from forestseg.report import HEADLINE  # noqa: E402

HEADLINE_FILE = f"metrics/{HEADLINE}"  # as dvc.yaml declares it
TABLE, FIGURE = "ranking.md", "ranking.png"


@dataclass(frozen=True)
class Experiment:
    name: str
    state: str  # "ok", or why it is not ranked: failed, queued, running, no metrics, stale
    params: dict[str, Any]  # flat: "model.width" (params.yaml) or "<file>:<key>" (another params file)
    headline: dict[str, Any]  # empty unless state is ok
    checked: bool = True  # False: its commit is not here, so whether aggregate ran for it is unknown


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys, one per leaf. An empty mapping has no leaves, so it adds no key: an
    experiment without `optimizer.lr_overrides` shows a blank cell under another's
    `optimizer.lr_overrides.mse-adam`, not a `{}` column of its own beside it."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _headline(data: dict) -> dict:
    """metrics/headline.json's values, with `best_miou`: the best combination's mIoU, the pipeline's own
    criterion (a model that calls everything forest scores the all-forest mask's forest IoU, and half
    that mIoU)."""
    headline = ((data.get("metrics") or {}).get(HEADLINE_FILE) or {}).get("data")
    if not isinstance(headline, dict):
        return {}
    best = headline.get("best")
    if isinstance(best, str) and f"miou_{best}" in headline:
        return {**headline, "best_miou": headline[f"miou_{best}"]}
    return headline


def _git_show(rev: str, path: str) -> bytes | None:
    """`path` of the project (ROOT, which may be a subfolder of its git repository) at commit `rev`."""
    done = subprocess.run(["git", "show", f"{rev}:./{path}"], cwd=ROOT, capture_output=True)
    return done.stdout if done.returncode == 0 else None


# Params that change what the train stages train on but that aggregate does not read (dvc.yaml):
# a train-only experiment changing one keeps its baseline's aggregate entry and headline unchanged.
UPSTREAM = ("data.", "split.", "synth.")


def aggregated(rev: str, params: dict[str, Any]) -> bool | None:
    """Whether experiment commit `rev`'s headline is its own: its dvc.lock's `aggregate` entry has the
    experiment's params and the committed headline's md5, and the files it read that other stages write
    (metrics/index.json, split.json) are the ones this lock's index and split stages wrote. None where
    `rev` is not in this repository (a --json from elsewhere) or has no such entry. A `train`-only
    experiment keeps its baseline's entry, and commits whatever headline the workspace held (another
    experiment's, say), so the scores alone cannot tell; one whose data params changed what index or
    split wrote reads other files than aggregate did. Without the commit, `experiments` checks the data
    params against the baseline's."""
    lock, headline = _git_show(rev, "dvc.lock"), _git_show(rev, HEADLINE_FILE)
    if lock is None or headline is None:
        return None
    try:
        stages = load_yaml(lock.decode(), "dvc.lock")["stages"]  # as DVC wrote it: YAML 1.2
        entry = stages["aggregate"]
        listed = entry["params"]["params.yaml"]
        ran_with = _flat(listed)
        written = next(o["md5"] for o in entry["outs"] if o["path"] == HEADLINE_FILE)
        # what the other stages of this lock wrote (index.json, split.json): aggregate read those very files
        made = {o["path"]: o.get("md5") for s in stages.values() for o in s.get("outs") or []}
        read = [(d["path"], d.get("md5")) for d in entry.get("deps") or [] if d["path"] in made]
    except (TypeError, KeyError, StopIteration, UnicodeDecodeError, AttributeError, ForestsegError):
        return None
    # both ways: an empty mapping in the lock has no leaves (`_flat`), so a key the experiment set under
    # it (`+optimizer.lr_overrides.bce-adam=...` over the baseline's {}) is only seen from this side
    under = tuple(listed)
    return (
        all(params.get(k) == v for k, v in ran_with.items())
        and all(k in ran_with for k in params if k in under or k.startswith(tuple(f"{t}." for t in under)))
        and hashlib.md5(headline).hexdigest() == written
        and all(made[path] == md5 for path, md5 in read)
    )


def _params(data: dict) -> dict[str, Any]:
    params = {}
    for file, content in (data.get("params") or {}).items():
        prefix = "" if file == "params.yaml" else f"{file}:"
        params.update(_flat((content or {}).get("data") or {}, prefix))
    return params


def experiments(shown: list) -> list[Experiment]:
    """The experiments of `dvc exp show --json` output (every baseline commit's), in its order."""
    out = []
    for baseline in shown:
        base = baseline.get("data") or {}
        base_params, base_headline = _params(base), _headline(base)
        for exp in baseline.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            state = (exp.get("executor") or {}).get("state")  # None for a plain `dvc exp run`
            # A failed experiment shows the metrics of the commit it started from: never rank those.
            headline = _headline(data)
            params = _params(data)
            own = None  # whether aggregate ran for it, where its commit can tell
            if rev.get("error") or state == "failed":
                status = "failed"
            elif state not in (None, "success"):
                status = state
            elif not headline:
                status = "no metrics"
            else:
                own = aggregated(rev["rev"], params)
                # the data it trained on differs from its baseline's, the headline does not: only train ran
                upstream = any(
                    params.get(k) != base_params.get(k)
                    for k in set(params) | set(base_params)
                    if k.startswith(UPSTREAM) and k != "split.by"
                )
                # where the lock proves the headline its own (upstream outputs included), an equal score is real
                status = "stale" if own is False or (own is None and upstream and headline == base_headline) else "ok"
            name = exp.get("name") or rev.get("name") or rev["rev"][:7]
            out.append(
                Experiment(name, status, params, headline if status == "ok" else {}, status != "ok" or own is not None)
            )
    return out


def _text(value: Any) -> str:
    """A param value as a table cell: numbers in short form, lists and mappings as JSON."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _number(v) and math.isfinite(v)


def _grid(e: Experiment) -> set[str]:
    """The combinations of the experiment's grid (none where its params do not say)."""
    losses, optimizers = e.params.get("grid.loss"), e.params.get("grid.optimizer")
    if not isinstance(losses, list) or not isinstance(optimizers, list):
        return set()
    return {combination_of(str(loss), str(opt)) for loss in losses for opt in optimizers}


def _diverged(e: Experiment, key: str) -> str | None:
    """The mark of a headline value that diverged: "diverged" for a combination's (iou_*, miou_*) every
    seed of which diverged, "all diverged" for `best` and best_* where all did, else None. aggregate
    writes null there, which `dvc exp show` leaves out of its output (it keeps numbers and strings): a
    key missing for a combination of the experiment's grid is one, a key missing beside no
    combination's value the other."""
    if e.state != "ok" or e.headline.get(key) is not None:
        return None
    head, _, combination = key.partition("_")
    if head in ("iou", "miou") and combination:
        return "diverged" if key in e.headline or combination in _grid(e) else None
    if key == "best" or key.startswith("best_"):
        values = [e.headline.get(f"iou_{c}") for c in _grid(e)]
        return "all diverged" if key in e.headline or (values and all(v is None for v in values)) else None
    return None


def _mark(e: Experiment, metric: str) -> str:
    """Why an experiment is not ranked by `metric` ("" where it is)."""
    if e.state != "ok":
        return e.state
    value = e.headline.get(metric)
    if _finite(value):
        return ""
    return "not finite" if _number(value) else _diverged(e, metric) or f"no {metric}"


def _headline_cell(e: Experiment, key: str) -> Any:
    """A headline value as a cell: "diverged" or "all diverged" (`_diverged`); blank stays for a combination
    not in the experiment's grid."""
    return _diverged(e, key) or e.headline.get(key)


def ranking(exps: list[Experiment], metric: str) -> pd.DataFrame:
    """The table: rank, experiment, `metric`, best combination, forest IoU per combination, the params
    that differ between the experiments; ranked best first, ties sharing a rank, unranked ones last."""
    numeric = {k for e in exps for k, v in e.headline.items() if _number(v)}
    # a combination every seed of which diverged is left out of `dvc exp show`: its grid names it
    numeric |= {f"iou_{c}" for e in exps if e.state == "ok" for c in _grid(e)} if numeric else set()
    if not numeric:
        states = sorted(Counter(e.state for e in exps).items())
        raise ForestsegError(
            f"no finished experiment has {HEADLINE_FILE} ({', '.join(f'{n} {s}' for s, n in states)}); "
            "see `dvc queue status` and `dvc queue logs <name>`"
        )
    if metric not in numeric:
        raise ForestsegError(
            f"--metric {metric}: not a numeric headline value; choose one of {', '.join(sorted(numeric))}"
        )
    keys = sorted({k for e in exps for k in e.params})
    differ = [k for k in keys if len({json.dumps(e.params.get(k), sort_keys=True) for e in exps}) > 1]
    # `best` is never numeric; its mIoU beside any other metric, so an all-forest model shows as one
    beside = ["best_miou"] if metric != "best_miou" and "best_miou" in numeric else []
    others = ["best", *beside, *sorted(k for k in numeric if k.startswith("iou_") and k != metric)]
    rows = []
    for e in exps:
        value = e.headline.get(metric)
        mark = _mark(e, metric)
        rows.append(
            {
                "experiment": e.name,
                metric: value if not mark else None,
                "_mark": mark,
                **{k: _headline_cell(e, k) for k in others},
                **{k: _text(e.params[k]) if k in e.params else "" for k in differ},
            }
        )
    table = pd.DataFrame(rows)
    ranked = table[table[metric].notna()].sort_values([metric, "experiment"], ascending=[False, True], kind="stable")
    ranked.insert(0, "rank", ranked[metric].rank(method="min", ascending=False).astype(int).astype(str))
    rest = table[table[metric].isna()].sort_values(["_mark", "experiment"], kind="stable")
    rest.insert(0, "rank", "-")
    rest[metric] = rest["_mark"]
    return pd.concat([ranked, rest], ignore_index=True).drop(columns="_mark")


def exp_show(json_file: Path | None) -> tuple[list, str]:
    """The parsed `dvc exp show --json` (from `json_file`, else run in the project) and where it came from."""
    if json_file is not None:
        try:
            text, source = json_file.read_text(encoding="utf-8"), str(json_file)
        except OSError as e:
            raise ForestsegError(f"--json {json_file}: cannot be read ({e.strerror})") from None
    else:
        try:
            done = subprocess.run(["dvc", "exp", "show", "--json"], cwd=ROOT, capture_output=True, text=True)
        except FileNotFoundError:
            raise ForestsegError(
                "dvc is not on PATH: activate the project's venv, or pass a saved --json FILE"
            ) from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise ForestsegError(f"`dvc exp show --json` failed in {ROOT}: {last}")
        text, source = done.stdout, f"`dvc exp show --json` in {ROOT}"
    try:
        shown = json.loads(text)
    except json.JSONDecodeError as e:
        raise ForestsegError(f"{source}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(shown, list) or not all(isinstance(b, dict) for b in shown):
        raise ForestsegError(f"{source}: not the output of `dvc exp show --json` (a list of commits)")
    return shown, source


def _shown(path: Path) -> Path:
    """`path` relative to the working folder where it lies under it (as a user would type it)."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="rank DVC experiments by a headline metric")
    ap.add_argument("--metric", default="best_iou", help="a key of metrics/headline.json (default best_iou)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="a saved `dvc exp show --json` instead of running it")
    ap.add_argument("-o", "--out", type=Path, help="output folder (default: the project's sweeps/)")
    args = ap.parse_args(argv)
    # the experiments are the project's wherever rank.py is run from, so their table is too
    out = args.out if args.out is not None else _shown(ROOT / "sweeps")
    shown, source = exp_show(args.json)
    try:
        exps = experiments(shown)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ForestsegError(
            f"{source}: not the output of `dvc exp show --json` (an experiment without revs)"
        ) from None
    if not exps:
        raise ForestsegError(f"{source}: no experiments; queue some with `dvc exp run --queue -S ...`")
    if out.exists() and not out.is_dir():
        raise ForestsegError(f"-o {out}: a file; -o takes a folder (it writes {TABLE} and {FIGURE} there)")
    table = ranking(exps, args.metric)
    ranked = table[table["rank"] != "-"]
    if ranked.empty:
        raise ForestsegError(f"no experiment has a finite {args.metric}: nothing to rank")
    unchecked = [e.name for e in exps if not e.checked]
    if unchecked:
        print(
            f"note: the commits of {', '.join(unchecked)} are not in this repository (`dvc exp pull`) or their "
            "dvc.lock holds no readable aggregate entry, so whether their headline is their own (aggregate ran "
            "with their params) was not checked",
            file=sys.stderr,
        )
    text = markdown_table(table)
    write_text(
        out / TABLE,
        f"# Experiments ranked by {args.metric}\n\nFrom {source}: {len(ranked)} ranked, higher is better; "
        "`best` is the best combination of each, `iou_*` the mean forest IoU of each combination (diverged: "
        "every seed of it diverged; blank: not in that experiment's grid), then the "
        "params that differ between the experiments. Failed, queued or running experiments and those without "
        f"a value are listed last.\n\n{text}\n\n![{args.metric} per experiment]({FIGURE})\n",
    )
    fig_ranking(ranked["experiment"].tolist(), ranked[args.metric].astype(float).tolist(), args.metric, out / FIGURE)
    print(text)
    print(f"wrote {out / TABLE} and {out / FIGURE}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ForestsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
