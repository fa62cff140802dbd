"""Named recipes: param sets kept as files in recipes/, run as one DVC experiment.

    python recipes/run.py study -S data.source=data/raw/kaggle [-S split.by=scene] [--queue]
    python recipes/run.py demo
    python recipes/run.py study --print      # the `dvc exp run` command, without running it

A recipe is a partial params.yaml (recipes/<name>.yaml); the experiment is params.yaml with the
recipe's keys set, then any -S given here. Everything is validated before DVC starts.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from forestseg.config import SECTIONS, ForestsegError, load_sections  # noqa: E402


def names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def load(name: str) -> dict:
    """The recipe's overrides, {section: {key: value}}."""
    path = ROOT / "recipes" / f"{name}.yaml"
    if not path.is_file():
        raise ForestsegError(f"recipe {name!r}: no {path.relative_to(ROOT)}; recipes: {', '.join(names())}")
    recipe = yaml.safe_load(path.read_text()) or {}
    for section, values in recipe.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ForestsegError(f"{path.relative_to(ROOT)}: {section}: not a params section with keys")
    return recipe


def merged(name: str, base: dict | None = None) -> dict:
    """params.yaml (or `base`) with the recipe applied, validated as a whole."""
    params = copy.deepcopy(base if base is not None else yaml.safe_load((ROOT / "params.yaml").read_text()))
    for section, values in load(name).items():
        params[section].update(values)
    load_sections(params, *SECTIONS)
    return params


def with_sets(name: str, sets: list[str]) -> dict:
    """The recipe merged over params.yaml, then `-S section.key=value` items (YAML values), validated."""
    params = merged(name)
    for item in sets:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if section not in params:
            raise ForestsegError(f"-S {section}...: unknown params section; valid: {', '.join(SECTIONS)}")
        params[section][field] = yaml.safe_load(value)
    load_sections(params, *SECTIONS)
    return params


def hydra(value) -> str:
    """A YAML value in the override grammar of `dvc exp run -S` (Hydra's): bare keys, quoted odd strings."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and not re.fullmatch(r"[\w./-]+", value):
        return "'" + value.replace("'", "\\'") + "'"
    return str(value)


def set_args(recipe: dict) -> list[str]:
    """`dvc exp run -S` arguments for a recipe's keys (mappings replaced whole with hydra's ++)."""
    return [
        a
        for section, values in recipe.items()
        for key, value in values.items()
        for a in ("-S", f"{'++' if isinstance(value, dict) else ''}{section}.{key}={hydra(value)}")
    ]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="run a named recipe as one DVC experiment")
    ap.add_argument("recipe", help=f"one of: {', '.join(names())}")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE", help="as dvc exp run -S")
    ap.add_argument("--queue", action="store_true", help="queue the experiment instead of running it")
    ap.add_argument("--print", action="store_true", help="print the dvc command instead of running it")
    args = ap.parse_args(argv)
    recipe = load(args.recipe)
    with_sets(args.recipe, args.set_param)  # the recipe plus the -S values, validated before DVC starts anything
    cmd = [
        "dvc",
        "exp",
        "run",
        "-n",
        args.recipe,
        *(["--queue"] if args.queue else []),
        *set_args(recipe),
        *(a for item in args.set_param for a in ("-S", item)),
    ]
    if args.print:
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ForestsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
