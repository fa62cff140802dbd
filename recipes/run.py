"""Named recipes: param sets kept as files in recipes/, run as one DVC experiment.

    python recipes/run.py study -S data.source=data/raw/kaggle [-S split.by=scene] [--queue]
    python recipes/run.py demo
    python recipes/run.py study --print      # the `dvc exp run` command, without running it

A recipe is a partial params.yaml (recipes/<name>.yaml); the experiment is params.yaml with the
recipe's keys set, then any -S given here. Everything is validated before DVC starts. The
experiment is named after the recipe, plus a short hash of the -S items when there are any (so the
same recipe with other -S values is another experiment), or --name.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from forestseg.checkpoint import read_init  # noqa: E402
from forestseg.config import (  # noqa: E402
    SECTIONS,
    ConfigError,
    DataConfig,
    ForestsegError,
    asdict,
    build,
    load_sections,
    override_value,
    unused_by_grid,
)
from forestseg.io import load_yaml, read_utf8  # noqa: E402


def names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def load(name: str) -> dict:
    """The recipe's overrides, {section: {key: value}}, completed with the defaults (config.py's, which
    the committed params.yaml equals) for every key another recipe sets: running one recipe after
    another (`dvc exp run` leaves its values in params.yaml) never keeps the first one's values."""
    recipe = _read(name)
    for other in names():
        try:
            theirs = _read(other)
        except ForestsegError as e:  # another recipe's file: say why this one reads it
            raise ForestsegError(
                f"{e} (read for recipe {name!r} too: a recipe resets to their defaults the keys every other recipe "
                f"sets; fix recipes/{other}.yaml or move it out of recipes/)"
            ) from None
        for section, values in theirs.items():
            defaults = asdict(SECTIONS[section]())
            for key in values:
                recipe.setdefault(section, {}).setdefault(key, defaults[key])
    return recipe


def _read(name: str) -> dict:
    """The recipe file's own overrides, {section: {key: value}}."""
    path = ROOT / "recipes" / f"{name}.yaml"
    if name not in names():  # not a path: '../params' would read params.yaml as a recipe
        what = (
            "not a recipe name" if Path(name).name != name or name.startswith(".") else f"no {path.relative_to(ROOT)}"
        )
        if name.endswith(".yaml") and name[: -len(".yaml")] in names():
            what = f"give the recipe's name, {name[: -len('.yaml')]}"
        raise ForestsegError(f"recipe {name!r}: {what}; recipes: {', '.join(names())}")
    try:  # a dangling link, a folder of that name, no permission
        text = read_utf8(path, str(path.relative_to(ROOT)))
    except OSError as e:
        raise ForestsegError(
            f"{path.relative_to(ROOT)}: cannot be read ({e.strerror or e}); fix it or move it out of recipes/"
        ) from None
    recipe = load_yaml(text, str(path.relative_to(ROOT)))
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise ForestsegError(f"{path.relative_to(ROOT)}: not a mapping of params sections (as params.yaml)")
    for section, values in recipe.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ForestsegError(
                f"{path.relative_to(ROOT)}: {section}: not a params section with keys; sections: {', '.join(SECTIONS)}"
            )
        try:  # its keys and values as the stages check them, each over the section's defaults
            build(SECTIONS[section], section, {**asdict(SECTIONS[section]()), **values})
        except ConfigError as e:
            raise ForestsegError(str(e).replace("params.yaml: ", f"{path.relative_to(ROOT)}: ", 1)) from None
    return recipe


def _validated(params: dict, what: str, init: bool = False) -> dict:
    """`params` checked as the stages check params.yaml, errors named after `what` made them; with
    `init`, the train.init_from model file against the model params and data.pixel_size_m too (the
    final params only: an -S may change either)."""
    try:
        built = dict(zip(SECTIONS, load_sections(params, *SECTIONS)))
        if init and built["train"].init_from != "none":  # the file against this model, before DVC indexes the data
            read_init(built["train"].init_from, built["model"].weights(), built["data"].pixel_size_m)
    except ForestsegError as e:  # ConfigError among them
        raise ForestsegError(str(e).replace("params.yaml: ", f"{what}: ", 1)) from None
    return params


def _workspace() -> dict:
    """The project's params.yaml, parsed; one line where there is none."""
    try:
        text = read_utf8(ROOT / "params.yaml", "params.yaml")
    except OSError as e:
        raise ForestsegError(
            f"{ROOT / 'params.yaml'}: cannot be read ({e.strerror}); restore it: git checkout params.yaml"
        )
    return load_yaml(text, "params.yaml")


def _check_sections(params: object) -> None:
    """params.yaml's shape, before a recipe goes over it: a mapping of the known sections, each a
    mapping (a missing or misspelt one was a KeyError)."""
    load_sections(params)  # no section named: the mapping and unknown-section checks alone, no values
    for section in SECTIONS:
        if not isinstance(params.get(section), dict):
            what = "missing section (see the default params.yaml)" if section not in params else "must be a mapping"
            raise ForestsegError(f"params.yaml: {section}: {what}")


def merged(name: str, base: dict | None = None) -> dict:
    """params.yaml (or `base`) with the recipe applied (a key's value replaced whole), validated."""
    params = copy.deepcopy(base if base is not None else _workspace())
    _check_sections(params)  # its values are checked after: the recipe may replace a bad one
    for section, values in load(name).items():
        params[section].update(values)
    return _validated(params, f"recipes/{name}.yaml over params.yaml")


def with_sets(name: str, sets: list[str]) -> dict:
    """The recipe merged over params.yaml, then `-S section.key=value` items (YAML values), validated."""
    params = merged(name)
    for item in sets:
        section, field, value = _item(item)
        if section not in params:
            raise ForestsegError(f"-S {section}...: unknown params section; valid: {', '.join(SECTIONS)}")
        params[section][field] = value
    what = f"recipes/{name}.yaml " + ("with the -S values" if sets else "over params.yaml")
    return _validated(params, what, init=True)


def _item(item: str) -> tuple[str, str, object]:
    key, eq, value = item.partition("=")
    if not eq:
        raise ForestsegError(f"-S {item}: give KEY=VALUE, e.g. -S model.width=16")
    section, _, field = key.partition(".")
    if not field and not key.startswith(("+", "~")):
        raise ForestsegError(f"-S {item}: give SECTION.KEY=VALUE, one key at a time, e.g. -S model.width=16")
    if key.startswith(("+", "~")) and field and "." not in field:  # DVC's add or delete of a key: +train.epochs=3
        raise ForestsegError(
            f"-S {item}: recipes/run.py sets keys that params.yaml has; drop the {key[0]!r} "
            f"(-S {key.lstrip('+~')}{eq}{value})"
        )
    if key.startswith(("+", "~")) or "." in field:  # DVC's grammar for one entry of a mapping (optimizer.lr_overrides)
        raise ForestsegError(
            f"-S {item}: recipes/run.py sets a params key whole (a mapping replaces the one params.yaml "
            f"holds); give all of it, e.g. -S 'optimizer.lr_overrides={{bce-adam: 0.01}}'"
        )
    if "," in value and value.strip()[:1] not in "[{'\"":  # DVC's sweep syntax: many experiments, not one
        raise ForestsegError(
            f"-S {item}: recipes/run.py runs one experiment; a sweep over values is "
            f"`dvc exp run --queue -S {item}` (README: Sweeps)"
        )
    return section, field, dvc_value(item, value)


def dvc_value(item: str, value: str) -> object:
    """The value `dvc exp run -S item` writes into params.yaml, `value` being the item's text after
    '=': DVC reads -S with Hydra's override grammar, not YAML, and the two differ (`0x10` and `[010]`
    are 16 and [10] to YAML, strings to Hydra, which the stages then refuse; `TrUe` a string to YAML,
    true to Hydra; `@x` an error to YAML, a string to Hydra). YAML reads it only where Hydra's parser
    is not there (DVC always brings it)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
    except ImportError:
        return load_yaml(value, f"-S {item}")
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(item)
    except HydraException as e:
        raise ForestsegError(f"-S {item}: DVC cannot read it ({' '.join(str(e).split())[:200]})") from None
    if override.is_sweep_override():  # choice(a), glob(*): many experiments to DVC, as a comma is
        raise ForestsegError(
            f"-S {item}: recipes/run.py runs one experiment; a sweep over values is "
            f"`dvc exp run --queue -S {item}` (README: Sweeps)"
        )
    if isinstance(override.value(), dict):  # Hydra keeps the last of a key given twice, params.yaml refuses it
        try:
            load_yaml(value, f"-S {item}")
        except ForestsegError as e:
            if "duplicate key" in str(e):
                raise
    return override.value()


def set_args(recipe: dict, held: set[str]) -> list[str]:
    """`dvc exp run -S` arguments for a recipe's keys. DVC merges a mapping into the one params.yaml
    holds (`key={...}` and `++key={...}` alike), so a mapping is deleted first (`~key`, where `held`,
    the keys present, has it) and added anew (`+key=`): the experiment gets the recipe's mapping,
    not a mix with what params.yaml held."""
    out = []
    for section, values in recipe.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if isinstance(value, dict):
                out += [*(["-S", f"~{name}"] if name in held else []), "-S", f"+{name}={override_value(value)}"]
                held.add(name)
            else:  # a key params.yaml lacks is added (+), which DVC asks for: a plain override of it fails
                out += ["-S", f"{'' if name in held else '+'}{name}={override_value(value)}"]
                held.add(name)
    return out


def _note_edits(workspace: dict, set_here: set[str]) -> None:
    """Say which params.yaml values differ from the last commit's where neither the recipe nor -S
    sets them (`set_here`): the experiment keeps them (a `dvc exp run` leaves its values in the workspace)."""
    try:  # ./: params.yaml of ROOT, also where the DVC project is a subfolder of its git repository
        shown = subprocess.run(["git", "show", "HEAD:./params.yaml"], cwd=ROOT, capture_output=True, text=True)
    except FileNotFoundError:  # no git: nothing to compare with
        return
    if shown.returncode != 0:
        return
    committed = load_yaml(shown.stdout, "params.yaml of the last commit") or {}
    edits = [
        f"{section}.{key}"
        for section in sorted(set(workspace) | set(committed))
        for key in sorted(set(workspace.get(section) or {}) | set(committed.get(section) or {}))
        if (workspace.get(section) or {}).get(key) != (committed.get(section) or {}).get(key)
        and f"{section}.{key}" not in set_here
    ]
    if edits:
        print(
            f"note: params.yaml differs from the last commit in {', '.join(edits)}, which this recipe does not "
            "set: the experiment keeps the workspace's values (`git checkout params.yaml` for the committed ones)",
            file=sys.stderr,
        )


def taken(name: str, root: Path = ROOT) -> bool:
    """Whether the commit checked out in `root` has an experiment `name` already (DVC keeps it as
    refs/exps/<commit's first 2 hex digits>/<the other 38>/<name>, and refuses another of that name)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    except FileNotFoundError:  # no git: DVC says what it needs
        return False
    sha = head.stdout.strip()
    if head.returncode != 0 or len(sha) < 3:
        return False
    ref = f"refs/exps/{sha[:2]}/{sha[2:]}/{name}"
    return subprocess.run(["git", "show-ref", "--verify", "--quiet", ref], cwd=root).returncode == 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="run a named recipe as one DVC experiment")
    ap.add_argument("recipe", help=f"one of: {', '.join(names())}")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE", help="as dvc exp run -S")
    ap.add_argument("--queue", action="store_true", help="queue the experiment instead of running it")
    ap.add_argument("--print", action="store_true", help="print the dvc command instead of running it")
    ap.add_argument("-n", "--name", help="the experiment's name (default: the recipe's, + a hash of the -S items)")
    ap.add_argument(
        "-f", "--force", action="store_true", help="replace an experiment of the same name (dvc exp run -f)"
    )
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # params name paths from the project root (train.init_from), where DVC runs the stages
    recipe = load(args.recipe)
    params = with_sets(args.recipe, args.set_param)  # the recipe plus the -S values, validated before DVC starts
    opt, grid = load_sections(params, "optimizer", "grid")
    for line in unused_by_grid(opt, grid):  # stderr: --print's stdout is the command alone
        print(f"note: {line}", file=sys.stderr)
    source = params["data"]["source"]
    if source != DataConfig().source and not (ROOT / source).exists():  # the default is the synth stage's output
        # else DVC fails the index stage (in a queued experiment, naming only its own temp copy of the path)
        raise ForestsegError(
            f"data.source {source}: no such folder (a path from the project root, {ROOT}); fix it, or "
            "`dvc pull` it if DVC tracks it"
        )
    workspace = _workspace()
    name = args.name or args.recipe
    if args.set_param and not args.name:
        name += "-" + hashlib.sha1("\n".join(args.set_param).encode()).hexdigest()[:6]
    set_here = {f"{section}.{key}" for section, values in recipe.items() for key in values}
    _note_edits(workspace, set_here | {".".join(_item(item)[:2]) for item in args.set_param})
    held = {f"{section}.{key}" for section, values in workspace.items() for key in values or {}}
    cmd = ["dvc", "exp", "run", "-n", name, *(["--queue"] if args.queue else []), *(["-f"] if args.force else [])]
    cmd += set_args(recipe, held)
    for item in args.set_param:  # as given, but a mapping replaced whole, as the recipe's
        section, field, value = _item(item)
        cmd += set_args({section: {field: value}}, held) if isinstance(value, dict) else ["-S", item]
    if args.print:
        print(shlex.join(cmd))
        return 0
    if not args.force and taken(name):  # DVC's own refusal names `dvc exp run -f`
        raise ForestsegError(
            f"experiment {name} exists on this commit (this recipe ran with these values before): "
            "add -f to replace it, or -n NAME to keep both"
        )
    try:
        return subprocess.call(cmd, cwd=ROOT)
    except FileNotFoundError:  # the venv not activated
        raise ForestsegError("dvc is not on PATH: activate the project's venv (. .venv/bin/activate)") from None


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ForestsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
