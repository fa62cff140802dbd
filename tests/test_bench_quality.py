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
