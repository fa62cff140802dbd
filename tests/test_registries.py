"""Each registry owns its names; touching one reruns exactly the stages that use it (real `dvc status`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import set_params, sh

pytestmark = pytest.mark.slow
TRAIN = {"train@mse-adam-0", "train@bce-adam-0"}
# registry file -> the stages whose code it is (directly or through config validation)
# (check validates every section, so every registry a section names)
USERS = {
    "forestseg/losses.py": TRAIN | {"aggregate", "overlays", "check"},  # overlays: checkpoint checks the loss
    "forestseg/optim.py": TRAIN | {"aggregate", "overlays", "check"},  # overlays: the grid names the models it keeps
    "forestseg/model.py": TRAIN | {"aggregate", "overlays", "check"},
    "forestseg/metrics.py": TRAIN | {"index", "split", "aggregate"},
    "forestseg/masks.py": {"index", "split", "check"},
}


def test_touching_a_registry_reruns_only_the_stages_that_use_it(repo: Path) -> None:
    set_params(repo, {"train": {"epochs": 1}, "model": {"depth": 1}})
    sh(repo, "dvc", "repro")
    for registry, users in USERS.items():
        path = repo / registry
        before = path.read_text()
        path.write_text(before + "\n# a new entry would go here\n")
        stale = set(json.loads(sh(repo, "dvc", "status", "--json").stdout))
        path.write_text(before)
        assert {s.split(":")[-1] for s in stale} == users, registry
        assert not {"synth"} & stale
    assert json.loads(sh(repo, "dvc", "status", "--json").stdout) == {}
