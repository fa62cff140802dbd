"""bench/quality.py: an unfinished cv run resumes from the folds it saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

quality = pytest.importorskip("bench.quality")


def part(fold: int) -> dict:
    scores = {"iou": 0.7, "miou": 0.6, "dice": 0.8, "precision": 0.8, "recall": 0.9}
    return {
        "fold": fold,
        "scores": scores,
        "baseline": {"iou": 0.6},
        "scenes": {f"s{fold}": 0.7},
        "seconds": 60.0,
        "trade_off": {"0.5": scores},
    }


def result(name: str = "r", **changes) -> dict:
    base = {"name": name, "mode": "cv", "recipe": "cpu", "set": [], "params": {"train": {"epochs": 3}}}
    return {**base, "device": "cpu", "threads": 1, "folds": 5, "tta": False, **changes}


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    return tmp_path


def test_a_saved_unfinished_run_gives_back_its_folds(results_dir: Path) -> None:
    parts = [part(0), part(2)]
    quality.save({**result(), "parts": parts, "summary": quality.summarize(parts), "unfinished": [3]}, quiet=True)
    assert quality.unfinished_folds(result()) == {0: parts[0], 2: parts[1]}
    assert "r (unfinished)" in (results_dir / "r.md").read_text()


@pytest.mark.parametrize(
    "saved",
    [
        result(unfinished=[]),  # finished: a rerun starts afresh
        result(params={"train": {"epochs": 4}}, unfinished=[1]),  # other params
        result(threads=2, unfinished=[1]),
        result(recipe="gpu", unfinished=[1]),
        result(folds=3, unfinished=[1]),  # other folds: fold 0 held other scenes
        result(tta=True, unfinished=[1]),  # scored otherwise
    ],
)
def test_other_runs_are_not_resumed(results_dir: Path, saved: dict) -> None:
    (results_dir / "r.json").write_text(json.dumps({**saved, "parts": [part(0)]}))
    assert quality.unfinished_folds(result()) == {}


def test_nothing_saved_nothing_resumed(results_dir: Path) -> None:
    assert quality.unfinished_folds(result()) == {}


@pytest.mark.parametrize(
    "other, merged",
    [
        ({}, True),
        ({"threads": 2}, True),  # threads change the minutes, not the folds
        ({"folds": 3}, False),  # fold 1 of 3 holds other scenes than fold 1 of 5
        ({"tta": True}, False),
        ({"params": {"train": {"epochs": 4}}}, False),
    ],
)
def test_merge_joins_only_folds_of_one_cv(results_dir: Path, monkeypatch, other: dict, merged: bool) -> None:
    quality.save({**result("a"), "parts": [part(0)], "summary": quality.summarize([part(0)])}, quiet=True)
    quality.save({**result("b", **other), "parts": [part(1)], "summary": quality.summarize([part(1)])}, quiet=True)
    monkeypatch.setattr("sys.argv", ["quality.py", "merge", "--name", "ab", "--parts", "a,b"])
    if merged:
        quality.main()
        assert [p["fold"] for p in json.loads((results_dir / "ab.json").read_text())["parts"]] == [0, 1]
    else:
        with pytest.raises(SystemExit, match="same params, --folds and --tta"):
            quality.main()
        assert not (results_dir / "ab.json").exists()
