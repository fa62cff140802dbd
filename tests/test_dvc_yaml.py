"""dvc.yaml lists exactly the library files each stage imports, so DVC reruns exactly what changed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
IMPORTED = """
import json, runpy, sys
sys.path.insert(0, "stages")
runpy.run_path(sys.argv[1], run_name="not_main")
# Registries are imported when a section naming one is validated: validate what the stage reads.
from common import params
params(*json.loads(sys.argv[2]))
print(json.dumps(sorted("forestseg/" + n.split(".")[1] + ".py" for n in sys.modules if n.startswith("forestseg."))))
"""


WHOLE_FILE = {"params.yaml": None}  # `- params.yaml:` in a stage's params: every key of the file


def listed_sections(stage: dict) -> set[str]:
    """The params sections a stage lists in dvc.yaml; every section where it tracks the whole file."""
    from forestseg.config import SECTIONS

    entries = stage.get("params", [])
    return set(SECTIONS) if WHOLE_FILE in entries else {p.split(".")[0] for p in entries}


def sections(stage: dict) -> list[str]:
    """The params sections a stage reads: those it lists, and grid for a matrix stage (its member)."""
    return sorted(listed_sections(stage) | ({"grid"} if "matrix" in stage else set()))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_exactly_the_modules_it_imports(name: str) -> None:
    stage = STAGES[name]
    script = stage["cmd"].split()[1]
    out = subprocess.run(
        [sys.executable, "-c", IMPORTED, script, json.dumps(sections(stage))],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = set(json.loads(out.stdout))
    listed = {d for d in stage["deps"] if d.startswith("forestseg/")}
    assert listed == imported, f"{name}: missing {sorted(imported - listed)}, not imported {sorted(listed - imported)}"
    assert {script, "stages/common.py"} <= set(stage["deps"])


def _sections_read(script: str) -> set[str]:
    """The params sections a stage script reads: the string arguments of its `params(...)` calls, or,
    where it makes none and calls `check_all()`, every section (train also calls check_all, to refuse
    a bad value early, but reads only its own sections)."""
    import ast

    from forestseg.config import SECTIONS

    tree = ast.parse((REPO / script).read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    read = {
        arg.value
        for node in calls
        if getattr(node.func, "id", None) == "params"
        for arg in node.args
        if isinstance(arg, ast.Constant)
    }
    if not read and any(getattr(node.func, "id", None) == "check_all" for node in calls):
        return set(SECTIONS)
    return read


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_are_exactly_the_sections_it_reads(name: str) -> None:
    """A section the stage reads but dvc.yaml does not list would not rerun it when changed; one listed
    but not read would rerun it for nothing. A matrix stage's grid is its member (`${item}`), not a param."""
    stage = STAGES[name]
    read = _sections_read(stage["cmd"].split()[1])
    listed = listed_sections(stage)
    assert read and listed == read, f"{name}: reads {sorted(read)}, dvc.yaml lists {sorted(listed)}"


def test_one_stage_checks_the_whole_params_file() -> None:
    """An edit that no other stage reads (a misspelt section) must still rerun something, which refuses it."""
    whole = [name for name, stage in STAGES.items() if WHOLE_FILE in stage.get("params", [])]
    assert whole == ["check"] and _sections_read(STAGES["check"]["cmd"].split()[1]) == listed_sections(STAGES["check"])


def test_the_committed_lock_records_every_code_file_as_it_is() -> None:
    """A `dvc repro` while a library file was being edited locked its first stages with the old file's
    hash and the rest with the new one: a clone's `dvc status` was not clean and reran 5 stages.
    Every stage's lock entry for a source file holds that file's md5 now (DVC 3: of its bytes)."""
    import hashlib

    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    stale = sorted(
        f"{stage}: {dep['path']}"
        for stage, entry in lock["stages"].items()
        for dep in entry.get("deps", [])
        if dep["path"].endswith(".py") and dep.get("md5") != hashlib.md5((REPO / dep["path"]).read_bytes()).hexdigest()
    )
    assert not stale, f"dvc.lock is not the code's (run `dvc repro` and commit dvc.lock): {stale}"


def test_pipeline_outputs_lists_every_stage_output_data_source_may_not_name() -> None:
    """config.PIPELINE_OUTPUTS holds every stage output but the synth stage's data/synthetic (the default source):
    data.source is refused there (tests/test_config.py, source-an-output)."""
    from forestseg.config import PIPELINE_OUTPUTS

    outs = {next(iter(o)) if isinstance(o, dict) else o for s in STAGES.values() for o in s.get("outs", [])}
    outs |= {next(iter(m)) for s in STAGES.values() for m in s.get("metrics", [])}
    for out in outs - {"data/synthetic"}:
        assert any(out == o or out.startswith(f"{o}/") for o in PIPELINE_OUTPUTS), out
