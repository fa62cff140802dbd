"""The speed scripts of bench/ run (tiny settings), so a library change cannot break them unseen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
speed = pytest.importorskip("bench.speed")


def test_matmul_peak_is_the_best_size_measured() -> None:
    rate, n = speed.matmul_peak(torch.device("cpu"), torch.float32, sizes=(64, 128))
    assert n in (64, 128)
    assert 1e6 < rate < 1e15  # FLOP/s: positive and finite


def test_profile_train_prints_the_top_ops() -> None:
    out = subprocess.run(
        [sys.executable, "bench/profile_train.py", "--width", "4", "--depth", "1", "--size", "32", "--batch", "2"]
        + ["--steps", "1", "--precision", "fp32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "UNet w4 d1, fp32" in out.stdout
    assert "aten::convolution_backward" in out.stdout
