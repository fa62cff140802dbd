"""The speed scripts of bench/ run (tiny settings), so a library change cannot break them unseen."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import random_predictor

import forestseg.windows
from bench import adabn, contention, context, dropout, errors, finetune, geo, gpu, repro_stages, speed, wgrad
from bench import postprocess as post
from bench import profile_train as profile
from forestseg.loader import to_input
from forestseg.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_the_datasheet_peak_is_the_longest_table_name_in_the_devices(name: str, peak: float | None) -> None:
    """A table name inside a longer one ("H100" in "H100 PCIe", "L40" in "L40S") must not give the
    longer one's device its peak: MFU against the wrong datasheet would be off by a third."""
    assert speed.datasheet_peak(name) == peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_peak_is_the_best_product_measured(dtype: torch.dtype) -> None:
    # emulated_below 0: the sizes asked for whatever the load on the machine (the probe decides nothing)
    rate, what = speed.dense_peak(torch.device("cpu"), dtype, sizes=(64, 128), emulated_below=0.0)
    assert what in ("64x64 matmul", "128x128 matmul", "8-channel 1x1 convolution", "16-channel 1x1 convolution")
    assert 1e6 < rate < 1e15  # FLOP/s: positive and finite


def test_dense_peak_times_an_emulated_dtype_at_512_only() -> None:
    # a threshold no device reaches: the probe calls the dtype emulated, so only a 512 matmul is timed
    rate, what = speed.dense_peak(torch.device("cpu"), torch.float32, sizes=(64, 128), emulated_below=1e18)
    assert what == "512x512 matmul" and rate > 0


@pytest.mark.parametrize(
    "channels_last, dtype", [(True, torch.float32), (False, torch.float32), (True, torch.bfloat16)]
)
def test_conv_kernels_count_the_flops_of_the_models_convolutions(
    channels_last: bool, dtype: torch.dtype, capsys
) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from forestseg.config import ModelConfig
    from forestseg.model import build_model

    model = build_model(ModelConfig(arch="unet", width=4, depth=2))
    x = torch.randn(2, 3, 32, 32)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    flop, *seconds = profile.conv_kernels(model, x, peak=1e15, dtype=dtype)
    assert flop == counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    assert all(t > 0 for t in seconds)
    out = capsys.readouterr().out
    assert "backward to the weights" in out
    # the first layer's input (the image) needs no gradient: training never runs that kernel, nor times it
    [first] = [line for line in out.splitlines() if "not run" in line]
    assert first.startswith("3x32x32 -> ")


def script(*args: str) -> subprocess.CompletedProcess:
    """python <args> in the project root, as a user runs a bench script."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_profile_train_prints_the_top_ops() -> None:
    out = script(*"bench/profile_train.py --width 4 --depth 1 --size 32 --batch 2 --steps 1 --precision fp32".split())
    assert out.returncode == 0, out.stderr
    assert "UNet w4 d1, fp32" in out.stdout
    assert "aten::convolution_backward" in out.stdout


def test_smoothed_logits_keep_a_constant_and_blur_an_edge() -> None:

    class Edge(torch.nn.Module):  # logits -4 on the left half, +4 on the right
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.full(x.shape[:1] + x.shape[-2:], 4.0)
            z[..., : x.shape[-1] // 2] = -4.0
            return z

    z = adabn.Smoothed(Edge(), 2.0)(torch.zeros(1, 3, 32, 32))
    assert z.shape == (1, 32, 32)
    torch.testing.assert_close(z[..., :4], torch.full((1, 32, 4), -4.0))  # far from the edge: as it was
    assert -4.0 < z[0, 0, 15] < 0.0 < z[0, 0, 16] < 4.0  # at the edge: blurred, the cut in the same place


@pytest.mark.parametrize("sigma", [2.0, 4.0])
def test_smoothed_logits_are_blurred_by_a_gaussian_of_sigma_px(sigma: float) -> None:
    """A single logit of 1 in zeros comes out at the centre as a 2-D Gaussian's peak, 1 / (2 pi sigma^2)."""

    class Dot(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.zeros(x.shape[:1] + x.shape[-2:])
            z[:, 32, 32] = 1.0
            return z

    z = adabn.Smoothed(Dot(), sigma)(torch.zeros(1, 3, 64, 64))
    assert float(z[0, 32, 32]) == pytest.approx(1 / (2 * np.pi * sigma**2), rel=0.02)
    assert float(z.sum()) == pytest.approx(1.0, rel=1e-4)


def test_error_bands_are_the_pixels_within_d_px_of_the_mask_edge() -> None:
    import numpy as np

    truth = np.zeros((40, 40), bool)
    truth[10:25, 5:20] = True
    edge, within3 = errors.near_edge(truth, (0, 3))
    ys, xs = np.nonzero(edge)
    for y in range(40):
        for x in range(40):
            window = truth[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
            assert edge[y, x] == (window.any() and not window.all())  # where forest meets non-forest
            assert within3[y, x] == bool(np.any((abs(ys - y) <= 3) & (abs(xs - x) <= 3)))
    assert not errors.near_edge(np.ones((8, 8), bool), (2,))[0].any()  # one class: no edge
    pred = np.zeros_like(truth)
    pred[10:25, 7:22] = True  # the outline shifted by 2 px: every error within 4 px of the edge
    counts = errors.anatomy(truth, pred)
    tp, fp, fn, tn = counts[:4]
    assert (tp, fp, fn, tn) == (15 * 13, 15 * 2, 15 * 2, 40 * 40 - 15 * 17)
    assert counts[4:6].tolist() == [fp, fn]  # within 4 px: all of them


def test_post_processing_calls_blur_sieve_and_snap_as_documented() -> None:
    import numpy as np

    logits = np.full((3, 64, 64), -2.0, np.float32)
    logits[0, 10:40, 10:40] = 2.0  # a 900 px forest block
    logits[0, 50, 50] = 2.0  # a 1 px speck: below any sieve size
    logits[1] = 2.0
    logits[1, 20:23, 20:23] = -2.0  # a 9 px clearing in forest
    logits[2, :, :4] = 2.0  # forest on 1/16 of the tile
    plain = post.CALLS["plain"](logits, 0.0)
    assert plain.sum() == 900 + 1 + (64 * 64 - 9) + 64 * 4
    sieved = post.sieved(16)(logits, 0.0)
    assert not sieved[0, 50, 50] and sieved[0, 10:40, 10:40].all() and sieved[1].all()  # both classes sieved
    assert (sieved[2] == plain[2]).all()  # 256 px: kept
    assert (post.sieved(1024)(logits, 0.0)[0] == 0).all()  # 901 px of forest in all: under 1024, merged away
    snap = post.snapped(0.1, 0.9)(logits, 0.0)
    assert snap[1].all() and not snap[2].any() and (snap[0] == plain[0]).all()  # 22 % forest: left as called
    blur = post.blurred(2.0)(logits, 0.0)
    assert not blur[0, 50, 50] and blur[0, 25, 25] and blur[1, 21, 21]  # a speck and a 3 px clearing smoothed over
    assert (post.blurred(0.5)(np.zeros((1, 8, 8), np.float32) + 1.0, 0.0)).all()  # flat logits stay flat


def test_fused_bnrelu_checks_its_kernel_and_times_both_steps() -> None:
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler (cc or gcc) to build bench/fused_bnrelu.py's kernel")
    tiny = ["--width", "16", "--depth", "1", "--batch", "2", "--size", "32", "--steps", "1", "--repeats", "1"]
    for precision, pool in (("bf16", "omp"), ("fp32", "pthreads")):
        out = subprocess.run(
            [sys.executable, "bench/fused_bnrelu.py", "--precision", precision, "--pool", pool, *tiny],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert "training fused:" in out.stdout and "fused / torch:" in out.stdout
        if pool == "omp":  # the kernel runs in torch's own OpenMP runtime, not a second one
            runtimes = out.stdout.split("OpenMP runtimes in this process: ")[1].splitlines()[0]
            assert runtimes.count("libgomp") == 1, runtimes


def test_device_peaks_probe_both_precisions_in_a_child_process() -> None:
    peaks = speed.device_peaks(torch.device("cpu"), sizes=(256,))  # the bench's 2048 and 4096 take ~30 s here
    assert set(peaks) == {torch.bfloat16, torch.float32}
    assert all(1e6 < rate < 1e15 and ("matmul" in what or "convolution" in what) for rate, what in peaks.values())


def test_a_peak_probe_that_fails_says_why_in_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the probe would run")
    with pytest.raises(SystemExit) as stopped:
        speed.device_peaks(torch.device("cuda"))
    said = str(stopped.value)
    assert said.startswith("error: the device's peak could not be probed on cuda: ") and "\n" not in said


def test_speed_prints_every_figure_from_one_run(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    """The whole bench at tiny settings, on synthetic tiles (the sample hidden), its peak probed on small
    products: every rate, utilisation and ratio it promises, and its spreads over the repeats."""
    monkeypatch.setattr(speed, "SAMPLE", tmp_path / "absent")
    monkeypatch.setattr(speed, "device_peaks", functools.partial(speed.device_peaks, sizes=(256,)))
    argv = ["speed.py", "--width", "4", "--depth", "1", "--batch", "4", "--steps", "2", "--repeats", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--default-malloc", "--auto-only"])
    got, predict_speeds, checked = {}, speed.predict_speeds, []
    monkeypatch.setattr(speed, "predict_speeds", lambda *a, **k: got.setdefault("rates", predict_speeds(*a, **k)))
    import forestseg.cli

    cli, calls = forestseg.cli.main, []
    monkeypatch.setattr(forestseg.cli, "main", lambda argv: calls.append(argv) or cli(argv))
    monkeypatch.setattr(speed, "warn_if_busy", lambda rates: checked.append(rates) or print("<busy check>"))
    speed.main()
    out = capsys.readouterr().out
    # the predict rates checked for a busy machine before the study-style loop, which a GPU call can cut
    lines = out.splitlines()
    assert lines.index("<busy check>") < next(i for i, line in enumerate(lines) if line.startswith("study-style"))
    assert all(any(r is x for r in checked[0]) for x in got["rates"][:3]), checked
    said = {line.split(":")[0] for line in out.splitlines()}
    for what in ("data", "pack", "model", "forestseg train", "forestseg predict", "study-style", "speed-up"):
        assert what in said, out
    rate = r"\d+\.\d \[\d+\.\d-\d+\.\d\]"  # median [min-max]
    assert re.search(rf"forestseg train: {rate} images/s \((bf16|fp32)\)", out), out
    assert re.search(
        rf"forestseg predict: {rate} images/s .*one chunk at a time, cut on the host .*: {rate}; its forward passes alone .*: {rate}",
        out,
    ), out
    assert re.search(rf"forestseg train: MFU {rate} % of the (bf16|fp32) peak", out), out
    assert re.search(rf"study-style: {rate} images/s \(fp32, NCHW", out), out
    assert re.search(r"x the training images/s at precision auto \(goal >= 3x\); its forward passes alone: MFU", out)
    assert re.search(
        rf"forestseg predict on files \(the command on a folder of \d+ JPEG tiles, PNG masks written\): {rate} "
        r"images/s, \d+\.\d\dx the training images/s",
        out,
    ), out
    assert calls and all(argv[-2:] == ["--device", "cpu"] for argv in calls), calls  # the bench's device, not auto


def test_speed_refuses_an_unknown_device_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["speed.py", "--device", "gpu"])
    with pytest.raises(SystemExit) as stopped:
        speed.main()
    assert stopped.value.code == 2
    assert "--device: unknown value 'gpu'" in capsys.readouterr().err


def test_gpu_acceptance_times_speed_on_its_own_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench/gpu.py --device cpu` on a machine with a GPU measured the speed bench on the GPU (auto)."""
    ran = []
    monkeypatch.setattr(gpu, "check_train_predict", lambda device, tiny: None)
    monkeypatch.setattr(
        gpu.subprocess, "run", lambda argv, **k: ran.append(argv) or subprocess.CompletedProcess(argv, 0)
    )
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--device", "cpu", "--tiny", "--skip-grid"])
    gpu.main()
    assert len(ran) == 1 and ran[0][1].endswith("bench/speed.py") and ran[0][2:4] == ["--device", "cpu"], ran


@pytest.mark.parametrize(
    "values, says",
    [
        ([3.0, 1.0, 2.0], "2.0 [1.0-3.0]"),
        ([4.0, 1.0, 2.0, 3.0], "2.5 [1.0-4.0]"),
        ([9.0, 1.0, 2.0], "2.0 [1.0-9.0]"),  # the median, not the mean (4.0)
        ([9.0, 1.0, 2.0, 3.0], "2.5 [1.0-9.0]"),  # the middle two's mean, not the upper middle (3.0)
    ],
)
def test_spread_is_the_median_and_the_range(values: list[float], says: str) -> None:
    assert speed.spread(values) == says  # an even count: the mean of the middle two, as the ratios use


@pytest.mark.parametrize(
    "rates, busy",
    [
        ([[10.0, 12.9], [5.0, 5.0]], False),
        ([[10.0, 10.0], [5.0, 6.6]], True),
        ([[10.0, 13.0]], False),
        ([[10.0, 13.1]], True),
    ],
)
def test_a_rate_whose_repeats_differ_by_over_30_percent_is_flagged(rates, busy: bool, capsys) -> None:
    speed.warn_if_busy(rates)
    assert ("differ by more than 30 %" in capsys.readouterr().out) == busy


def test_predict_speeds_times_the_chunks_one_at_a_time_on_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sequential rate is its own work (every chunk's forward outside masks' _launch), not masks'
    timed twice: slowing masks alone slows the whole-path rate alone. On a clock of the test's own, so
    a busy machine cannot reorder the rates: a launch takes 1 s of it, a forward 1 ms."""
    p = random_predictor()
    monkeypatch.setattr(Predictor, "load", lambda *a, **k: p)
    monkeypatch.setattr(forestseg.windows, "TILE_BATCH", 2)
    calls, inside, launch, forward, now = [], [], Predictor._launch, Predictor._forward, [0.0]

    def launched(self, tiles, cut=False):
        inside.append(1)
        now[0] += 1.0
        try:
            return launch(self, tiles, cut)
        finally:
            inside.pop()

    def forwarded(self, x):
        if not inside:
            calls.append(len(x))
        now[0] += 0.001
        return forward(self, x)

    monkeypatch.setattr(Predictor, "_launch", launched)
    monkeypatch.setattr(Predictor, "_forward", forwarded)
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    whole, sequential, forward_rates, bf16 = speed.predict_speeds(Path("unused"), images, torch.device("cpu"), 2)
    # the warm-up's sequential pass, then each repeat's sequential pass and forward-alone pass
    assert calls == [2, 2, 1] * 5 and len(whole) == len(sequential) == len(forward_rates) == 2 and not bf16
    assert max(whole) < min(sequential) and max(whole) < min(forward_rates)


@pytest.mark.parametrize("arch", ["unet", "unet_half"])
def test_dropout_screen_drops_channels_at_the_bottom_in_training_only(arch: str) -> None:
    from forestseg.config import ModelConfig
    from forestseg.model import build_model

    cfg = ModelConfig(arch=arch, width=4, depth=2)
    torch.manual_seed(0)
    plain = build_model(cfg)
    torch.manual_seed(0)
    dropped = dropout.with_dropout(build_model, 0.5)(cfg)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # no weights: the same model files
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x), dropped(x))  # scoring as the recipe's model
    dropped.train(), plain.train()
    assert not torch.equal(plain(x), dropped(x))
    with pytest.raises(SystemExit, match="no empty bottom layer"):
        dropout.with_dropout(build_model, 0.5)(ModelConfig(arch="unet_context", width=4, depth=2))


def test_repro_stages_times_skipped_and_restored_stages_on_their_own_rows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A stage DVC skips or restores ends the previous stage's row; its time was charged to that one."""
    lines = [
        "Running stage 'synth':\n",
        "Stage 'index' didn't change, skipping\n",
        "Stage 'train@a' is cached - skipping run, checking out outputs\n",
        "Running stage 'aggregate':\n",
    ]

    class FakeDvc:
        def __init__(self, cmd: list[str], env: dict, **kwargs: object) -> None:
            assert cmd == ["dvc", "repro", "--force"]
            # dvc, and the `python` of the stages' commands, of this interpreter's environment
            assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
            self.stdout = iter(lines)

        def wait(self) -> int:
            return 0

    clock = iter([0.0, 0.5, 1.5, 4.0, 6.5, 7.0])  # the start, each line as it arrives, the end
    monkeypatch.setattr(repro_stages.subprocess, "Popen", FakeDvc)
    monkeypatch.setattr(repro_stages.time, "perf_counter", lambda: next(clock))
    assert repro_stages.main(["--", "--force"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.rsplit(maxsplit=1)[0].strip(): float(line.rsplit(maxsplit=1)[1]) for line in out[1:6]}
    assert rows == {
        "synth": 1.0,
        "index (unchanged)": 2.5,
        "train@a (restored)": 2.5,
        "aggregate": 0.5,
        "before the first stage": 0.5,
    }, out


@pytest.mark.parametrize("way", ["native", "shifted", "unfolded"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_each_weight_gradient_way_equals_onednns(way: str, layout: torch.memory_format) -> None:
    torch.manual_seed(0)
    x, g, w = torch.randn(3, 4, 9, 7), torch.randn(3, 5, 9, 7), torch.randn(5, 4, 3, 3)
    x, g = x.contiguous(memory_format=layout), g.contiguous(memory_format=layout)
    expected = torch.nn.grad.conv2d_weight(x.double(), w.shape, g.double(), padding=1)
    assert torch.allclose(getattr(wgrad, way)(x, g, w).double(), expected, atol=1e-4)
    assert torch.allclose(wgrad.onednn(x, g, w).double(), expected, atol=1e-4)


def test_wgrad_prints_every_way_per_layer() -> None:
    out = subprocess.run(
        [sys.executable, "bench/wgrad.py", "--batch", "1", "--reps", "1", "--max-size", "16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    [line] = [ln for ln in out.stdout.splitlines() if "256 ch,  16 px" in ln]
    ways = ["oneDNN channels_last", "oneDNN NCHW", "native (im2col + GEMM)", "9 shifted GEMMs", "unfold + GEMM"]
    assert all(f"{way} " in line for way in ways) and line.count("e-0") + line.count("0e+00") == 5


def test_gpu_acceptance_checks_train_resume_and_predict_without_the_grid() -> None:
    out = script("bench/gpu.py", "--device", "cpu", "--tiny", "--skip-speed", "--skip-grid")
    assert out.returncode == 0, out.stderr
    assert "resumed run: test losses within 0.0e+00 relative (bit-identical" in out.stdout
    assert (
        "100.0000% of pixels agree in windows of an image, 100.0000% in 4 tiles, 3 to a forward, 100.0000% with TTA, "
        "100.0000% with batch-norm adapted by 0.25" in out.stdout
    )
    assert "MixStyle 0.5 on cpu: 1 epoch, train loss " in out.stdout
    assert "study grid: skipped (--skip-grid)" in out.stdout and "dvc" not in out.stdout


def test_gpu_session_says_what_to_prepare_before_a_call(tmp_path: Path) -> None:
    """A device call without the carried sample stops at once with the command that prepares it."""
    (tmp_path / "bench").mkdir()
    script = tmp_path / "bench" / "gpu_session.sh"
    script.write_bytes((ROOT / "bench" / "gpu_session.sh").read_bytes())
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}
    run = subprocess.run(["bash", str(script), "run"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "run 'bash bench/gpu_session.sh prepare' here first and carry .gpu" in run.stdout
    assert (tmp_path / "out" / "session.log").read_text() == run.stdout  # what a call brings back
    env["FORESTSEG_SAMPLE"] = str(tmp_path / "nowhere")
    prepare = subprocess.run(["bash", str(script), "prepare"], env=env, capture_output=True, text=True, timeout=60)
    assert prepare.returncode == 1 and prepare.stderr.startswith("gpu_session: no sample at")
    usage = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and usage.stderr.startswith(
        "usage: bash bench/gpu_session.sh prepare | run [cv|final|compile]"
    )
    bad = subprocess.run(["bash", str(script), "run", "finale"], env=env, capture_output=True, text=True, timeout=60)
    assert (
        bad.returncode == 2
        and bad.stderr
        == "gpu_session: run takes cv or final (the quality step; none: the checks alone) or compile (the second call), "
        "and --cpu-check; "
        "not 'finale'\n"
    )


def test_the_peak_probe_times_3x3_convolutions_too(monkeypatch) -> None:
    """oneDNN's 3x3 kernels outran its 1x1 ones (108 % on a Zen 5): a peak without them flatters MFU."""
    kernels = []
    conv2d = speed.F.conv2d
    monkeypatch.setattr(speed.F, "conv2d", lambda x, w, **k: kernels.append(w.shape[-1]) or conv2d(x, w, **k))
    speed.dense_peak(torch.device("cpu"), torch.float32, sizes=(256,))
    assert {1, 3} <= set(kernels)


def test_predict_on_files_stops_when_the_command_fails(tmp_path: Path) -> None:
    images = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(RuntimeError, match="forestseg predict exited 2"):
        speed.files_speeds(
            tmp_path / "no_model.pt",
            images,
            tmp_path / "files",
            repeats=1,
            precision="fp32",
            device=torch.device("cpu"),
        )


def ticking(step: Callable[[], float] = lambda: 1.0) -> SimpleNamespace:
    """A stand-in for the `time` module: each perf_counter call moves the clock on by `step()` seconds, so
    a timed span is `step()` at its end, whatever the work inside took."""
    now = [0.0]

    def perf_counter() -> float:
        now[0] += step()
        return now[0]

    return SimpleNamespace(perf_counter=perf_counter)


def test_flops_are_of_one_image_and_training_adds_the_backward() -> None:
    """speed.flops counts a batch of 2 and halves it: one image's FLOPs, as FlopCounterMode counts a batch
    of 1; training adds the backward's two products per convolution (not the image's own gradient), so
    between 2x and 3x the forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from forestseg.config import ModelConfig
    from forestseg.model import build_model

    cfg = ModelConfig(arch="unet", width=4, depth=2)
    with FlopCounterMode(display=False) as counter:
        build_model(cfg)(torch.randn(1, 3, 32, 32))
    forward = speed.flops(cfg, 32, torch.device("cpu"), backward=False)
    assert forward == counter.get_total_flops()
    assert 2 * forward < speed.flops(cfg, 32, torch.device("cpu"), backward=True) < 3 * forward


def test_the_peak_of_an_emulated_dtype_is_a_512_matmuls_flops_over_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every timed call 1 s: the rate is the FLOPs of one 512 x 512 matmul, 2 x 512^3 (a multiply and an add)."""
    monkeypatch.setattr(speed, "time", ticking())
    assert speed.dense_peak(torch.device("cpu"), torch.float32, sizes=(64,), emulated_below=1e18) == (
        2 * 512**3,
        "512x512 matmul",
    )


def test_one_slow_probe_of_three_does_not_make_a_dtype_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulation probe takes the fastest of its three 512 matmuls: 1 ms then two slowed to 100 s is a
    fast dtype (every product timed), not an emulated one (a 512 matmul alone)."""
    spans = iter([1.0, 1e-3, 1.0, 100.0, 1.0, 100.0])  # (start, span) per call: the probe's three spans
    monkeypatch.setattr(speed, "time", ticking(lambda: next(spans, 1.0)))
    _, what = speed.dense_peak(torch.device("cpu"), torch.float32, sizes=(64,), emulated_below=1e10)
    assert what != "512x512 matmul"


@pytest.mark.parametrize(
    "slow, best",
    [
        (3, (2 * 16 * 64 * 64 * 8 * 8, "8-channel 1x1 convolution")),
        (1, (2 * 16 * 64 * 64 * 2 * 2 * 9, "2-channel 3x3 convolution")),
    ],
)
def test_a_convolutions_flops_are_its_multiply_adds_over_every_output_pixel(
    monkeypatch: pytest.MonkeyPatch, slow: int, best: tuple[float, str]
) -> None:
    """Each product timed at 1 s but the convolutions of one kernel size at 100 s: the peak is the other
    size's FLOPs, 2 x 16 images x 64 x 64 px x channels in x out x k x k (size 64: 8 channels 1x1, 2 channels
    3x3; the 64 x 64 matmul's 2 x 64^3 is less than either)."""
    last = [0]
    conv2d = speed.F.conv2d
    monkeypatch.setattr(speed.F, "conv2d", lambda x, w, **k: last.__setitem__(0, w.shape[-1]) or conv2d(x, w, **k))
    monkeypatch.setattr(speed, "time", ticking(lambda: 100.0 if last[0] == slow else 1.0))
    assert speed.dense_peak(torch.device("cpu"), torch.float32, sizes=(64,), emulated_below=0.0) == best


def test_predict_rates_are_images_over_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass over 5 images (3 batches of 2) timed at 1 s: every rate, the forward passes' too, is 5 images/s."""
    monkeypatch.setattr(Predictor, "load", lambda *a, **k: random_predictor())
    monkeypatch.setattr(forestseg.windows, "TILE_BATCH", 2)
    monkeypatch.setattr(speed, "time", ticking())
    images = np.zeros((5, 32, 32, 3), np.uint8)
    whole, sequential, forward, _ = speed.predict_speeds(Path("unused"), images, torch.device("cpu"), 2)
    assert whole == sequential == forward == [5.0, 5.0]


def test_predict_on_files_counts_every_copy_and_leaves_the_warm_up_call_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 images written 4 times: each call, 1 s, predicts 12 tiles; the first call warms up, untimed."""
    import forestseg.cli

    calls = []
    monkeypatch.setattr(forestseg.cli, "main", calls.append)
    monkeypatch.setattr(speed, "time", ticking())
    images = np.zeros((3, 32, 32, 3), np.uint8)
    rates = speed.files_speeds(tmp_path / "m.pt", images, tmp_path / "files", 2, "fp32", torch.device("cpu"))
    assert rates == [12.0, 12.0] and len(calls) == 3 and len(list((tmp_path / "files/jpeg").iterdir())) == 12


def test_the_study_loop_rate_is_images_of_its_steps_over_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 steps of batch 2 in 1 s: 4 images/s each round; assembly: 1 s over 3 batches, 1/3 s a batch."""
    from PIL import Image

    from forestseg.config import ModelConfig
    from forestseg.loader import Normalizer, Tiles

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images/a.jpg")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "masks/a.png")
    monkeypatch.setattr(speed, "time", ticking())
    cfg = ModelConfig(arch="unet", width=4, depth=1)
    assert speed.study_style_steps(tmp_path, [("a.jpg", "a.png")], cfg, 2, 2, torch.device("cpu"), 2) == [4.0, 4.0]
    tiles = Tiles(torch.zeros(8, 32, 32, 3, dtype=torch.uint8), torch.zeros(8, 32, 32, dtype=torch.uint8))
    assert speed.assembly_seconds(tiles, 2, 3, Normalizer()) == pytest.approx(1 / 3)


def stubbed_speed(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    probes: list[dict],
    predicted: list[float],
    forwards: list[float],
    on_files: list[float],
) -> tuple[str, dict]:
    """bench/speed.py's main with every timing stubbed: 8 tiles an epoch (the warm-up epoch's 9 s left
    out), training 32 [8-64] images/s in bf16 and 16 [4-32] in fp32 (auto), the study loop 4 (the median
    of 3, 4, 8); 1e11 FLOPs a training image, 2.5e8 a predicted one; `probes` the two peak probes, the
    predict rates as given. Returns what it printed and the model file and precision each predict timing ran."""
    from forestseg.config import SynthConfig

    monkeypatch.setattr(speed, "SAMPLE", tmp_path / "absent")
    generate = speed.generate
    monkeypatch.setattr(speed, "generate", lambda root, _: generate(root, SynthConfig(scenes=2, grid=2, tile_size=32)))
    monkeypatch.setattr(speed, "flops", lambda cfg, size, device, backward: 1e11 if backward else 2.5e8)
    probed = iter(probes)
    monkeypatch.setattr(speed, "device_peaks", lambda device: next(probed))
    monkeypatch.setattr(speed, "use_bf16", lambda precision, device: False)  # auto: fp32
    seconds = {"bf16": [9.0, 0.25, 0.125, 1.0], "fp32": [9.0, 0.5, 0.25, 2.0]}
    monkeypatch.setattr(
        speed,
        "train_run",
        lambda run, m, o, cfg, *a, **k: SimpleNamespace(history=[{"train_seconds": s} for s in seconds[cfg.precision]]),
    )
    asked = {}  # the model file and precision each predict timing ran: auto's, as `forestseg predict` would
    monkeypatch.setattr(
        speed,
        "predict_speeds",
        lambda *a, **k: (
            asked.setdefault("memory", (a[0].parent.name, a[4])) and (predicted, [24.0] * 3, forwards, False)
        ),
    )
    monkeypatch.setattr(
        speed,
        "files_speeds",
        lambda *a, **k: asked.setdefault("files", (a[0].parent.name, a[4])) and (print("(files timed)") or on_files),
    )
    monkeypatch.setattr(speed, "study_style_steps", lambda *a, **k: [3.0, 4.0, 8.0])
    monkeypatch.setattr(speed, "assembly_seconds", lambda *a, **k: 0.0125)
    argv = ["speed.py", "--width", "4", "--depth", "1", "--batch", "4", "--steps", "2", "--repeats", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--default-malloc", "--device", "cpu"])
    speed.main()
    return "", asked


def test_speed_reports_the_utilisations_and_ratios_of_the_rates_it_measured(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    """Peaks the faster of two probes (bf16 1e12 then 2e12, fp32 5e11 then 5e10); predict 48 (the median
    of 48, 64, 40: their mean is 50.7), on files 8 (of 8, 8, 11). MFU = rate x FLOPs / peak, ratios of medians."""
    bf16, fp32 = torch.bfloat16, torch.float32
    probes = [{bf16: (1e12, "a"), fp32: (5e11, "b")}, {bf16: (2e12, "c"), fp32: (5e10, "d")}]
    _, asked = stubbed_speed(monkeypatch, tmp_path, probes, [48.0, 64.0, 40.0], [80.0] * 3, [8.0, 8.0, 11.0])
    out = capsys.readouterr().out
    # auto (fp32 here) trained its model; predict timed it in precision auto, in memory and on files alike
    assert asked == {"memory": ("fp32FalseTrue", "auto"), "files": ("fp32FalseTrue", "auto")}
    for line in [
        "model: UNet width 4 depth 1, batch 4, 0.00 M params, 8 tiles per epoch; 100.0 GFLOP per training image "
        "(forward + backward), 0.2 GFLOP per predicted image (counted)",
        "forestseg train: 32.0 [8.0-64.0] images/s (bf16)",
        "forestseg train: 16.0 [4.0-32.0] images/s (fp32)",
        "device limit: 2000 GFLOP/s bfloat16 (the faster of two probes, before training and after predict: "
        "1000 / 2000; c), 500 GFLOP/s float32 (the faster of two probes, before training and after predict: "
        "500 / 50; b)",
        "forestseg train: MFU 160.0 [40.0-320.0] % of the bf16 peak, 160.0 [40.0-320.0] % of the device's best "
        "peak (bf16)",
        "forestseg train: MFU 320.0 [80.0-640.0] % of the fp32 peak, 80.0 [20.0-160.0] % of the device's best "
        "peak (fp32)",
        "forestseg predict: MFU 2.4 [2.0-3.2] % of the fp32 peak, 0.6 [0.5-0.8] % of the best; 3.00x the training "
        "images/s at precision auto (goal >= 3x); its forward passes alone: MFU 4.0 [4.0-4.0] %",
        "forestseg predict on files (the command on a folder of 32 JPEG tiles, PNG masks written): "
        "8.0 [8.0-11.0] images/s, 0.50x the training images/s",
        "speed-up:    8.00x (bf16, forestseg's fastest setting, over the study-style loop)",
        "speed-up:    4.00x (fp32, forestseg's, at the study loop's precision)",
        "batch assembly (gather, cast, normalise): 10.0% of a training step of bf16",
    ]:
        assert line in out.splitlines(), f"{line}\n{out}"
    pack = next(s for s in out.splitlines() if s.startswith("pack: "))
    rate, extrapolated = map(
        float, re.match(r"pack: [\d.]+ s for 8 pairs \((\d+) pairs/s\) -> ([\d.]+) s", pack).groups()
    )
    assert rate * extrapolated == pytest.approx(5108, rel=0.02), pack  # pairs/s x the seconds of 5108 pairs
    assert "warning: an MFU above 100 %" in out  # the training's, though predict's are below
    # the files' thousands of JPEGs after every MFU line and the warning that voids them: a GPU call's
    # time limit cut them off before
    lines = out.splitlines()
    mfu = [i for i, s in enumerate(lines) if re.match(r"forestseg (train|predict): MFU|warning: an MFU above", s)]
    assert len(mfu) == 4 and max(mfu) < lines.index("(files timed)")


def test_speed_warns_of_a_forward_mfu_above_100_and_times_bf16_at_a_third_of_fp32(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    """Peaks of 3e13 (bf16) and 1e14 put training at 3-21 % and predict at 0.01 %, but its forward passes alone at 125 %:
    a peak read low, warned of. bf16 at 0.3 of fp32's peak is slow, not emulated (under a quarter): timed."""
    bf16, fp32 = torch.bfloat16, torch.float32
    probes = [{bf16: (3e13, "a"), fp32: (1e14, "b")}, {bf16: (3e13, "c"), fp32: (1e14, "d")}]
    stubbed_speed(monkeypatch, tmp_path, probes, [48.0] * 3, [5e5] * 3, [8.0] * 3)
    out = capsys.readouterr().out
    assert "warning: an MFU above 100 %" in out and "bf16 is emulated" not in out
    assert "forestseg train: 32.0 [8.0-64.0] images/s (bf16)" in out.splitlines()


def test_device_peaks_reads_each_dtypes_own_peak_from_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child prints both dtypes' peaks on its last line: each dtype gets its own rate and product."""
    found = '{"torch.bfloat16": [2e12, "4096x4096 matmul"], "torch.float32": [5e11, "512-channel 1x1 convolution"]}'
    ran = []
    monkeypatch.setattr(
        speed.subprocess,
        "run",
        lambda argv, **k: ran.append(argv) or subprocess.CompletedProcess(argv, 0, f"x\n{found}\n", ""),
    )
    peaks = speed.device_peaks(torch.device("cpu"), sizes=(256, 512))
    assert peaks == {torch.bfloat16: (2e12, "4096x4096 matmul"), torch.float32: (5e11, "512-channel 1x1 convolution")}
    assert ran[0][-3:] == ["cpu", str(torch.get_num_threads()), "256,512"]


@dataclasses.dataclass(frozen=True)
class Masks:
    """A stand-in Predictor whose masks are all background but for `off` pixels of the first one (and
    `tta_off` more with TTA, `adapted_off` more once adapted)."""

    off: int
    tta_off: int = 0
    adapted_off: int = 0
    tta: bool = False

    def mask(self, image: np.ndarray) -> np.ndarray:
        return self.masks([image])[0]

    def masks(self, images: list[np.ndarray], batch: int = 0) -> list[np.ndarray]:
        out = [np.zeros(image.shape[:2], bool) for image in images]
        out[0].flat[: self.off + (self.tta_off if self.tta else 0)] = True
        return out

    def adapted(self, tiles: np.ndarray, mix: float) -> "Masks":
        return dataclasses.replace(self, off=self.off + self.adapted_off)


@pytest.mark.parametrize(
    "drift, off, says",
    [
        (0.0, 1, "99.9023% of pixels agree in windows of an image, 99.9756% in 4 tiles"),  # 1 of 1024, 1 of 4096
        (0.0, 2, "99.8047% of pixels agree in windows of an image, 99.9512% in 4 tiles"),  # the image under 99.9 %
        (1e-6, 0, "100.0000% of pixels agree in windows of an image, 100.0000% in 4 tiles"),  # a CPU resume off
        (0.0, (0, 5, 0), "4 tiles, 3 to a forward, 99.8779% with TTA, 100.0000% with batch-norm adapted"),  # TTA's own
        (0.0, (0, 0, 5), "3 to a forward, 100.0000% with TTA, 99.8779% with batch-norm adapted by 0.25"),  # adapted's
    ],
)
def test_gpu_acceptance_fails_below_999_per_mille_of_pixels_or_a_cpu_resume_off_at_all(
    monkeypatch: pytest.MonkeyPatch, capsys, drift: float, off: int, says: str
) -> None:
    """Training stubbed; the model on the device differs from the CPU's in `off` pixels of the first tile:
    the share of agreeing pixels over every pixel (not of whole tiles), both ways at least 99.9 %, and
    both loaded in fp32; on the CPU a resumed run's test losses must be bit-identical."""
    losses = [[0.5, 0.4, 0.3], [0.5, 0.4], [0.5, 0.4, 0.3 * (1 + drift)], [0.6]]  # straight, stopped, resumed, MixStyle
    monkeypatch.setattr(
        gpu,
        "train_run",
        lambda *a, **k: SimpleNamespace(
            history=[{"test_loss": v, "train_loss": v} for v in losses.pop(0)],
            metrics={"test_iou": 0.5, "precision": "fp32"},
        ),
    )
    loaded = []
    off, tta_off, adapted_off = off if isinstance(off, tuple) else (off, 0, 0)
    monkeypatch.setattr(
        gpu.Predictor,
        "load",
        lambda path, d, precision: (
            loaded.append(precision) or (Masks(off, tta_off, adapted_off) if not loaded[1:] else Masks(0))
        ),
    )
    fails = off > 1 or drift > 0 or tta_off or adapted_off
    with pytest.raises(SystemExit, match="FAILED") if fails else contextlib.nullcontext():
        gpu.check_train_predict(torch.device("cpu"), tiny=True)
    assert says in capsys.readouterr().out and loaded == ["fp32", "fp32"]


class TorchOnCuda:
    """torch as dense_peak sees it on a CUDA device, run on the CPU: 2-wide tensors whatever size it asks
    for (the FLOPs it counts come from the sizes, not the tensors), and nothing to synchronise."""

    cuda = SimpleNamespace(synchronize=lambda device: None)

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)

    @staticmethod
    def randn(*shape: int, device: object = None) -> torch.Tensor:
        return torch.randn(*(min(n, 2) for n in shape))


def test_a_cuda_peak_is_20_calls_flops_over_their_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA each timing spans 20 calls and an 8192 matmul joins the sizes: at 1 s a span, the peak is
    20 x 2 x 8192^3 FLOP/s (counting one call's FLOPs over 20 calls' time read the peak 20x low)."""
    monkeypatch.setattr(speed, "torch", TorchOnCuda())
    monkeypatch.setattr(speed, "time", ticking())
    cuda = SimpleNamespace(type="cuda")
    assert speed.dense_peak(cuda, torch.float32, sizes=(64,), emulated_below=0.0) == (
        20 * 2 * 8192**3,
        "8192x8192 matmul",
    )


def test_error_anatomy_counts_false_and_missed_forest_each_in_its_own_bands() -> None:
    """A 2-px strip of forest missed at the mask's edge (30 px, within 4 px of it) and a 3x3 false-forest
    blob 5-7 px from it: missed and false forest are told apart, each in the bands it lies in."""
    truth = np.zeros((40, 40), bool)
    truth[10:25, 5:20] = True
    pred = truth.copy()
    pred[10:25, 5:7] = False
    pred[30:33, 22:25] = True
    assert errors.anatomy(truth, pred).tolist() == [195, 9, 30, 1600 - 195 - 9 - 30, 0, 30, 9, 30, 9, 30, 9, 30]


def test_errors_report_splits_the_wrong_pixels_by_edge_distance_and_by_tile() -> None:
    """Four 100-px tiles of hand-made counts ([tp, fp, fn, tn, then fp and fn within 4, 8, 16, 32 px]):
    fold 0 = scenes a (28 % wrong) and b (30 % wrong: not more than 30 %), fold 1 = scene c, a tile 50 %
    wrong and a right one. Each share is of the group's wrong pixels, each IoU if forgiven leaves those
    out of the union; the tiles more than 30 % wrong are counted over the group's tiles, their share over
    its wrong pixels; the scenes worst first, their rates over their pixels."""
    counts = [
        [32, 8, 20, 40, 2, 4, 4, 8, 6, 12, 8, 20],
        [10, 20, 10, 60, 5, 0, 10, 5, 15, 5, 20, 10],
        [0, 0, 50, 50, 0, 10, 0, 20, 0, 30, 0, 40],
        [10, 0, 0, 90, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
    per_tile = {r: np.array(c, np.int64) for r, c in enumerate(counts)}
    sample = SimpleNamespace(scene=np.array(["a", "b", "c", "c"]))
    lines = errors.report(per_tile, sample, {0: 0, 1: 0, 2: 1, 3: 1}).splitlines()
    assert lines[2:5] == [
        # fold 0: 58 wrong; within 4 px 2 + 4 + 5 + 0 = 11 of them: 19.0 %, IoU 42 / (100 - 11)
        "| fold 0 | 0.420 | 28 / 30 | 19.0% (0.472) | 46.6% (0.575) | 65.5% (0.677) | 100.0% (1.000) | 0.0% (0.0%) |",
        "| fold 1 | 0.167 | 0 / 50 | 20.0% (0.200) | 40.0% (0.250) | 60.0% (0.333) | 80.0% (0.500) | 50.0% (100.0%) |",
        "| all (pooled) | 0.325 | 28 / 80 | 19.4% (0.374) | 43.5% (0.460) | 63.0% (0.565) | 90.7% (0.839) "
        "| 25.0% (46.3%) |",
    ]
    assert lines[-3:] == [
        "| c | 1 | 2 | 0.167 | 0.300 | 0.0% | 25.0% |",  # 10 / 60; 60 of 200 px forest; 50 missed
        "| b | 0 | 1 | 0.250 | 0.200 | 20.0% | 10.0% |",
        "| a | 0 | 1 | 0.533 | 0.520 | 8.0% | 20.0% |",
    ]


def test_geo_leaves_no_raster_when_its_write_is_stopped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The raster is reused when it exists: one stopped halfway, its unwritten blocks nodata, was timed
    as if whole on the next run."""

    def write_raster(path: Path, size: int, pixel: float) -> None:
        Path(path).write_bytes(b"II*\x00 half a raster")
        raise KeyboardInterrupt

    monkeypatch.setattr(geo, "write_raster", write_raster)
    monkeypatch.setattr(sys, "argv", ["geo.py", "--size", "1000", "--work", str(tmp_path / "w")])
    with pytest.raises(KeyboardInterrupt):
        geo.main()
    assert list((tmp_path / "w").iterdir()) == []


@pytest.mark.parametrize("gnu_time", [True, False])
def test_geo_reports_the_predict_commands_wall_time_peak_rss_and_in_memory_size(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path, gnu_time: bool
) -> None:
    """The raster, the training and both child processes stubbed on a clock that only they move: the
    raster 12 s (30 MiB on disk), the training 5 s, predict 40.3 s at a peak of 3 GiB, the idle
    interpreter 7 s at 512 MiB. A 10000-px raster at 2 m is predicted at 0.5 m: 40000^2 px, 18 bytes each
    in memory, 1600 Mpx in 40.3 s. Without GNU time the peak is getrusage's of the children (KiB), and the
    idle interpreter's is not measured."""
    clock = [100.0]
    monkeypatch.setattr(geo, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def write_raster(path: Path, size: int, pixel: float) -> None:
        clock[0] += 12.0
        with open(path, "wb") as f:
            f.truncate(30 * 2**20)

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        predict = "predict" in argv
        if predict:
            assert ("--polygons" in argv) == gnu_time
            out = Path(argv[argv.index("-o") + 1])
            out.mkdir()
            (out / "forest_area.csv").write_text("file,forest_ha\northo.tif,12.5\n")
        clock[0] += 40.3 if predict else 7.0
        kib = 3 * 2**20 if predict else 2**19
        return subprocess.CompletedProcess(argv, 0, "", f"\tMaximum resident set size (kbytes): {kib}\n")

    children = SimpleNamespace(ru_maxrss=3 * 2**20)
    monkeypatch.setattr(geo, "write_raster", write_raster)
    monkeypatch.setattr(geo, "train_model", lambda path, width, epochs: clock.__setitem__(0, clock[0] + 5.0))
    monkeypatch.setattr(geo, "subprocess", SimpleNamespace(run=run))
    monkeypatch.setattr(
        geo,
        "resource",
        SimpleNamespace(
            RUSAGE_CHILDREN=-1, getrusage=lambda who: children if who == -1 else SimpleNamespace(ru_maxrss=1)
        ),
    )
    timer = tmp_path / "time"
    if gnu_time:
        timer.touch()
    monkeypatch.setattr(geo, "TIMER", str(timer))
    polygons = ["--polygons"] if gnu_time else []  # either way, in one run or the other
    monkeypatch.setattr(
        sys, "argv", ["geo.py", "--size", "10000", "--pixel", "2", "--work", str(tmp_path / "w"), *polygons]
    )
    clocks = []  # the predict's: read right before and after it
    monkeypatch.setattr(geo, "cpu_clock", lambda: clocks.append(clock[0]) or len(clocks))
    monkeypatch.setattr(geo, "others_busy", lambda since, now: 0.6 if (since, now) == (1, 2) else None)
    geo.main()
    assert clocks == [117.0, 157.3]
    out = capsys.readouterr().out
    assert out.endswith(
        "warning: other processes kept 0.60 cores busy during the predict: rerun on a quiet machine before quoting\n"
    )
    assert "(10000x10000 at 2 m, 30 MiB on disk) in 12 s" in out
    assert "UNet width 4, depth 3, 256-px tiles, 8 epochs in 5 s" in out
    result = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert result == {
        "size": 10000,
        "pixel_m": 2.0,
        "block": 2048,
        "width": 4,
        "device": "auto",
        "polygons": gnu_time,
        "wall_s": 40.3,
        "peak_rss_mib": 3072,
        "idle_rss_mib": 512 if gnu_time else None,  # without GNU time: not measured, none said
        "in_memory_estimate_mib": round(40000**2 * 18 / 2**20),  # 27466
        "model_megapixels_per_s": 39.7,  # 1600 / 40.3
        "others_busy_cores": 0.6,
        "forest_area_csv": ["file,forest_ha", "ortho.tif,12.5"],
    }
    assert not (tmp_path / "w").exists()  # made by the script, removed with what it wrote


@pytest.mark.parametrize("stage_lines", [True, False])
def test_repro_stages_times_from_the_scripts_start_not_the_clocks_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, stage_lines: bool
) -> None:
    """perf_counter starts anywhere (1000 s here): every row is a difference of two readings, the total
    the whole run's; a run that reached no stage (DVC failed first: its output shown) spent all of it
    before the first stage."""
    lines = ["Running stage 'synth':\n", "Running stage 'train':\n"] if stage_lines else ["ERROR: bad dvc.yaml\n"]

    class FakeDvc:
        def __init__(self, cmd: list[str], **kwargs: object) -> None:
            self.stdout = iter(lines)

        def wait(self) -> int:
            return 0 if stage_lines else 1

    clock = iter([1000.0, 1000.5, 1002.0, 1009.25] if stage_lines else [1000.0, 1003.0, 1004.0])
    monkeypatch.setattr(repro_stages.subprocess, "Popen", FakeDvc)
    monkeypatch.setattr(repro_stages.time, "perf_counter", lambda: next(clock))
    assert repro_stages.main([]) == (0 if stage_lines else 1)
    out = capsys.readouterr().out.splitlines()
    if stage_lines:
        assert out[-5:] == [
            "stage                     seconds",
            "synth                         1.5",
            "train                         7.2",  # 7.25 s
            "before the first stage        0.5",
            "total (dvc repro)             9.2  exit 0",  # 9.25 s
        ]
    else:
        assert out == [
            "ERROR: bad dvc.yaml",
            "stage                     seconds",
            "before the first stage        4.0",
            "total (dvc repro)             4.0  exit 1",
        ]


def test_conv_kernels_rates_and_shares_are_each_kernels_flops_over_its_own_seconds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Every forward timed at 1 us, backward to the input 2 us, to the weights 4 us; three 3x3 convolutions
    of 8x8 px: 3 -> 4 channels (13824 FLOPs, the image's: no backward to the input) and twice 4 -> 4 (18432
    each, one row counted twice). Each cell is its FLOPs over its seconds, against a 15 GFLOP/s peak; the
    totals weigh each row by its count and the backward to the input by the rows that run it."""

    def seconds(fn: Callable[[], object], repeats: int = 3, device: object = None) -> float:
        out = fn()
        return 1e-6 if isinstance(out, torch.Tensor) else 2e-6 if out[0] is not None else 4e-6

    monkeypatch.setattr(profile, "best_seconds", seconds)
    model = torch.nn.Sequential(*(torch.nn.Conv2d(i, 4, 3, padding=1) for i in (3, 4, 4)))
    got = profile.conv_kernels(model, torch.randn(1, 3, 8, 8), peak=15e9)
    assert got == pytest.approx((13824 + 2 * 18432, 3e-6, 4e-6, 12e-6))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(", 3x3")[1].replace("(", " ").replace(")", " ").split() for line in lines[1:3]] == [
        ["1", "13.8", "92%", "not", "run", "3.5", "23%"],  # count, then GFLOP/s and % of the peak of each kernel
        ["2", "18.4", "123%", "9.2", "61%", "4.6", "31%"],
    ]
    assert lines[3] == "warning: a convolution ran at 123% of the measured peak: the peak probe was slowed; rerun"
    assert lines[4] == (
        # forward 50688 FLOPs in 3 us; backward to the input 36864 in 4 us; to the weights 50688 in 12 us
        "every convolution of a step, GFLOP/s (% of the float32 peak): forward 16.9 (113%), backward to the input "
        "9.2 (61%), backward to the weights 4.2 (28%); the three together 7.3 (49%), 0.00 s per step (forward 16%, "
        "backward to the input 21%, to the weights 63%)"
    )


def test_profile_train_reports_a_steps_milliseconds_and_cpu_seconds_of_the_profiled_steps_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """2 warm-up steps, then 4 profiled ones in 1 s (the clock stubbed): 250 ms a step; the CPU seconds
    are the profiled steps' (after minus before), user 12.5 - 10 and system 3.5 - 3."""
    usage = iter([SimpleNamespace(ru_utime=10.0, ru_stime=3.0), SimpleNamespace(ru_utime=12.5, ru_stime=3.5)])
    monkeypatch.setattr(profile, "resource", SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: next(usage)))
    monkeypatch.setattr(profile, "time", ticking())
    losses = []
    bce = profile.bce
    monkeypatch.setattr(profile, "bce", lambda *a: losses.append(1) or bce(*a))
    argv = "--width 4 --depth 1 --size 32 --batch 2 --steps 4 --precision fp32 --default-malloc --device cpu"
    monkeypatch.setattr(sys, "argv", ["profile_train.py", *argv.split()])
    profile.main()
    out = capsys.readouterr().out
    assert ": 250.0 ms a step under the profiler, 2.5 s user, 0.5 s system CPU" in out
    assert len(losses) == 2 + 4


def test_the_device_s_busy_time_sums_kernels_and_copies_once() -> None:
    """The CUDA rows' own times (kernels, copies): a CPU op's row and a user annotation spanning the step
    would count the same time again. 0.3 + 0.2 s."""
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [
        SimpleNamespace(device_type=cuda, is_user_annotation=False, self_device_time_total=3e5),
        SimpleNamespace(device_type=cuda, is_user_annotation=False, self_device_time_total=2e5),
        SimpleNamespace(device_type=cuda, is_user_annotation=True, self_device_time_total=7e5),
        SimpleNamespace(device_type=cpu, is_user_annotation=False, self_device_time_total=9e5),
    ]
    assert profile.device_busy_seconds(events) == pytest.approx(0.5)


def test_snapping_leaves_a_tile_at_exactly_either_share_as_called() -> None:
    """Snap below 10 % / above 90 %: 90 and 10 of 100 px stay as called, 91 becomes all forest, 9 none."""
    logits = np.full((4, 10, 10), -1.0, np.float32)
    for tile, forest in enumerate((90, 10, 91, 9)):
        logits[tile].flat[:forest] = 1.0
    snap = post.snapped(0.1, 0.9)(logits, 0.0)
    assert snap.sum(axis=(1, 2)).tolist() == [90, 10, 100, 0]


def test_sieving_merges_8_connected_regions_of_fewer_than_n_pixels() -> None:
    """Two diagonal pixels are one 2-px region (8-connected); a 2x2 block 4 px: each kept at its size, merged
    into the background at one more."""
    logits = np.full((1, 6, 6), -1.0, np.float32)
    logits[0, 1, 1] = logits[0, 2, 2] = 1.0
    logits[0, 4:, 4:] = 1.0
    assert [post.sieved(n)(logits, 0.0).sum() for n in (2, 3, 4, 5)] == [6, 4, 4, 0]


def test_a_blurred_call_cuts_at_the_models_threshold() -> None:
    flat = np.full((1, 8, 8), 0.5, np.float32)
    assert not post.blurred(2.0)(flat, 1.0).any() and post.blurred(2.0)(flat, 0.25).all()


def test_post_processing_fold_scores_pool_each_tiles_counts_against_its_own_mask() -> None:
    """Cut at 0.5, 64-px tiles: tile 0 forest on its left 32 columns (logits 1; 0.25, not forest, elsewhere)
    of a mask forest on its left 48; tile 1 one false-forest pixel on an empty mask. Pooled: tp 2048, fp 1,
    fn 1024, tn 5119; snapping removes tile 1's 1/4096 (fp 0, tn 5120)."""
    logits = np.full((2, 64, 64), 0.25, np.float32)
    logits[0, :, :32] = 1.0
    logits[1] = -1.0
    logits[1, 0, 0] = 1.0
    truth = np.zeros((2, 64, 64), bool)
    truth[0, :, :48] = True
    got = post.fold_scores(logits, truth, 0.5)
    assert got["plain"] == pytest.approx({"iou": 2048 / 3073, "miou": (2048 / 3073 + 5119 / 6144) / 2})
    snap = {"iou": 2048 / 3072, "miou": (2048 / 3072 + 5120 / 6144) / 2}
    assert got["snap below 0.1 / above 0.9"] == pytest.approx(snap)
    assert set(got) == set(post.CALLS)


def test_post_processing_report_gives_each_calls_mean_and_its_paired_change_against_plain() -> None:
    """Three folds; every call scores as plain (IoU 0.5, 0.6, 0.7; mIoU 0.6, 0.7, 0.8) but sieve 16 (IoU 0.5,
    0.6, 1.0; mIoU 0.6, 0.8, 0.8): its changes 0, 0, +0.3 (mean +0.1, not the median 0; population std
    0.1414) and 0, +0.1, 0."""
    per_fold: dict[int, dict[str, dict[str, float]]] = {}
    for f, (iou, miou, sieved_iou, sieved_miou) in enumerate(
        [(0.5, 0.6, 0.5, 0.6), (0.6, 0.7, 0.6, 0.8), (0.7, 0.8, 1.0, 0.8)]
    ):
        per_fold[f] = {name: {"iou": iou, "miou": miou} for name in post.CALLS}
        per_fold[f]["sieve 16 px"] = {"iou": sieved_iou, "miou": sieved_miou}
    lines = post.report(per_fold).splitlines()
    assert (
        lines[2]
        == "| plain | 0.600 ± 0.082 | 0.700 ± 0.082 | +0.0000 ± 0.0000 | +0.0000 ± 0.0000 | 0.500 / 0.600 / 0.700 |"
    )
    assert (
        "| sieve 16 px | 0.700 ± 0.216 | 0.733 ± 0.094 | +0.1000 ± 0.1414 | +0.0333 ± 0.0471 | 0.500 / 0.600 / 1.000 |"
        in lines
    )


@dataclasses.dataclass
class Scorer:
    """A stand-in Predictor: its logits are the windows themselves; `mix` what it was adapted with."""

    cut: float = 0.0
    mix: float = 0.0
    model: object = None

    def adapted(self, windows: np.ndarray, mix: float) -> Scorer:
        return dataclasses.replace(self, mix=mix)

    def windows_logits(self, windows: np.ndarray) -> np.ndarray:
        return np.asarray(windows, np.float64)


@pytest.mark.parametrize(
    "values, cut",
    [
        # 64 bins over -0.6..0.6 (1.2/64 wide): split after -0.6 (30 | 20 at mean 0.3: 30 x 20 x 0.9^2 = 486)
        # beats after 0.0 (40 at mean -0.45 | 10: 40 x 10 x 1.05^2 = 441): the first bin's centre
        ([-0.6] * 30 + [0.0] * 10 + [0.6] * 10, -0.6 + 1.2 / 128),
        ([-0.6] * 10 + [0.0] * 10 + [0.6] * 30, 1.2 / 128),  # mirrored: after 0.0 (its bin 32's centre)
        ([-6.0] * 10 + [4.0] * 10, -1.0),  # a cut below -1 (the first bin's centre): clipped to -1
        ([-4.0] * 10 + [6.0] * 10, -1.0),
        # -10 clipped to -8: bins over -8..7 (15/64 wide); after 0.3's bin 35 (50 at mean -1.36 | 30 at 7:
        # 50 x 30 x 8.36^2) beats after the -8 bin (10 | 70 at mean 3.17: 10 x 70 x 11.17^2)
        ([-10.0] * 10 + [0.3] * 40 + [7.0] * 30, -8 + 35.5 * 15 / 64),
    ],
)
def test_otsu_cut_is_the_centre_of_the_bin_with_the_largest_between_class_variance(
    values: list[float], cut: float
) -> None:
    assert adabn.otsu_cut(Scorer(), np.array(values)) == pytest.approx(cut)


def test_adabn_methods_adapt_on_top_of_the_first_mix(monkeypatch) -> None:
    """Every mix scored, mix 0 (the model as trained) first; tent, otsu and smooth adapt with the first mix."""
    tented = []
    monkeypatch.setattr(adabn, "tent", lambda p, w, n: tented.append((p.mix, n)) or p)
    got = adabn.methods([0.25, 1.0], [3], True, (2.0,))
    assert list(got) == ["mix 0", "mix 0.25", "mix 1", "mix 0.25 + tent 3", "mix 0.25 + otsu", "mix 0.25 + smooth 2"]
    windows = np.array([-0.6] * 30 + [0.0] * 10 + [0.6] * 10)
    assert [got[name](Scorer(), windows).mix for name in ("mix 0", "mix 0.25", "mix 1")] == [0.0, 0.25, 1.0]
    otsu = got["mix 0.25 + otsu"](Scorer(), windows)
    assert otsu.mix == 0.25 and otsu.cut == pytest.approx(-0.6 + 1.2 / 128)
    smooth = got["mix 0.25 + smooth 2"](Scorer(), windows)
    assert smooth.mix == 0.25 and smooth.model.sigma == 2.0
    assert got["mix 0.25 + tent 3"](Scorer(), windows).mix == 0.25 and tented == [(0.25, 3)]


def test_tent_steps_the_batch_norm_scale_and_shift_down_the_entropy() -> None:
    """One Adam step: every batch-norm weight and bias moves, nothing else, and the outputs' mean binary
    entropy falls; the predictor passed in is left as it was."""
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    p = random_predictor(0, depth=1, centre_on=images)
    before = {k: v.clone() for k, v in p.model.state_dict().items()}

    def entropy(model: torch.nn.Module) -> float:
        with torch.no_grad():
            q = torch.sigmoid(model(to_input(torch.from_numpy(images), p.norm)))
        return float(-(q * q.clamp_min(1e-12).log() + (1 - q) * (1 - q).clamp_min(1e-12).log()).mean())

    tuned = adabn.tent(p, images, 1)
    after = tuned.model.state_dict()
    bn = {
        f"{name}.{x}"
        for name, m in p.model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for x in ("weight", "bias")
    }
    assert bn and {k for k in before if not torch.equal(before[k], after[k])} == bn
    assert all(torch.equal(v, p.model.state_dict()[k]) for k, v in before.items())
    assert entropy(tuned.model) < entropy(p.model)


def test_adabn_summary_is_the_mean_paired_change_against_the_plain_model() -> None:
    """Three folds: mix 1 changes forest IoU by +0.1, -0.3 and +0.05 (mean -0.05, not the median +0.05) and
    mIoU by 0, +0.1 and 0; each change is against the same fold's plain model (mix 0)."""
    folds = [
        {"mix 0": {"iou": 0.5, "miou": 0.6}, "mix 1": {"iou": 0.6, "miou": 0.6}},
        {"mix 0": {"iou": 0.7, "miou": 0.7}, "mix 1": {"iou": 0.4, "miou": 0.8}},
        {"mix 0": {"iou": 0.5, "miou": 0.5}, "mix 1": {"iou": 0.55, "miou": 0.5}},
    ]
    changes = [adabn.paired(got) for got in folds]
    assert [list(c) for c in changes] == [["mix 1"]] * 3
    assert [c["mix 1"] for c in changes] == [pytest.approx(x) for x in ((0.1, 0.0), (-0.3, 0.1), (0.05, 0.0))]
    summary = adabn.summary({"mix 1": [c["mix 1"] for c in changes]})
    assert summary == "mix 1: forest IoU -0.0500 (per fold +0.100, -0.300, +0.050), mIoU +0.0333"


def test_wgrad_rates_are_the_layers_flops_over_each_ways_best_time_and_differences_relative(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The 256 -> 256-channel layer at 16 px, batch 2: 2 x 2 x 16^2 px x 256 x 256 x 9 = 0.604 GFLOP; the five
    ways timed at 1, 2, 4, 8 and 16 ms give 604, 302, 151, 75 and 38 GFLOP/s. The shifted GEMMs made 0.1 %
    high: their difference is 1e-03 of the largest value, not of 1."""
    times = iter([1e-3, 2e-3, 4e-3, 8e-3, 16e-3])
    monkeypatch.setattr(wgrad, "best_of", lambda fn, reps: next(times))
    monkeypatch.setattr(wgrad, "shifted", lambda x, g, w: wgrad.onednn(x, g, w) * 1.001)
    monkeypatch.setattr(wgrad, "keep_freed_memory", lambda: None)
    threads = str(torch.get_num_threads())  # as it is: the script sets it for the process
    monkeypatch.setattr(
        sys, "argv", ["wgrad.py", "--batch", "2", "--reps", "1", "--max-size", "16", "--threads", threads]
    )
    wgrad.main()
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if "256 ch,  16 px" in ln]
    assert line.startswith("256 -> 256 ch,  16 px (0.60 GFLOP): oneDNN channels_last 604 (")
    for cell in (
        "; oneDNN NCHW 302 (",
        "; native (im2col + GEMM) 151 (",
        "; 9 shifted GEMMs 75 (1e-03);",
        "; unfold + GEMM 38 (",
    ):
        assert cell in line, line


@pytest.mark.parametrize("module", [wgrad, profile])
def test_a_kernels_time_is_its_fastest_repeat(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    """Repeats of 3 s, 1 s and 2 s (the untimed warm-up call aside): 1 s."""
    spans = iter([0.0, 3.0, 0.0, 1.0, 0.0, 2.0])  # each repeat: its start, then its end
    monkeypatch.setattr(module, "time", ticking(lambda: next(spans)))
    calls = []
    if module is wgrad:
        assert wgrad.best_of(lambda: calls.append(1), 3) == 1.0
    else:
        assert profile.best_seconds(lambda: calls.append(1), 3) == 1.0
    assert len(calls) == 4


def test_dropout_screen_drops_whole_channels_with_the_probability_asked() -> None:
    from forestseg.config import ModelConfig
    from forestseg.model import build_model

    model = dropout.with_dropout(build_model, 0.25)(ModelConfig(arch="unet", width=4, depth=2))
    assert type(model.context) is torch.nn.Dropout2d and model.context.p == 0.25


@pytest.mark.parametrize("p", ["0", "1"])
def test_dropout_refuses_a_probability_of_0_or_1(monkeypatch: pytest.MonkeyPatch, p: str) -> None:
    """Refused before anything runs: were it not, the stand-in bench would fail the test, not run for hours."""
    import forestseg.train

    monkeypatch.setattr(forestseg.train, "build_model", forestseg.train.build_model)  # put back whatever main does
    monkeypatch.setattr(dropout.quality, "SCREEN", dropout.quality.SCREEN)
    monkeypatch.setattr(dropout.quality, "main", lambda: pytest.fail("the bench ran with P " + p))
    monkeypatch.setattr(sys, "argv", ["dropout.py", p, "cv", "cpu"])
    with pytest.raises(SystemExit, match=r"P must be in \(0, 1\)"):
        dropout.main()


def test_finetune_labels_each_region_scenes_first_tiles_by_name_and_scores_the_rest(tmp_path: Path) -> None:
    """Region scenes a and b, one labelled tile each: a's a_sat_11 (row 3) and b's b_sat_11 (row 2), whatever
    the rows' order; their other tiles are scored, and scene c is neither."""
    from bench.quality import Sample
    from forestseg.dataset import DataLayout

    sample = Sample(
        DataLayout(tmp_path),
        np.array(["b", "a", "b", "a", "b", "c"]),
        np.array([10, 20, 30, 40, 50, 60]),
        np.full(6, 100),
    )
    names = np.array(["b_sat_21", "a_sat_12", "b_sat_11", "a_sat_11", "b_sat_13", "c_sat_11"])
    labelled, scored = finetune.split_region(sample, names, ["a", "b"], 1)
    assert labelled == [3, 2] and scored.tolist() == [0, 1, 4]
    with pytest.raises(SystemExit, match="--tiles 2: scene a has only 2 tiles"):
        finetune.split_region(sample, names, ["a", "b"], 2)
    # all forest on rows 0, 1, 4: 80 of 300 px forest, 220 false forest, nothing missed, no true background
    base = finetune.all_forest(sample, scored)
    assert base["iou"] == pytest.approx(80 / 300) and base["precision"] == pytest.approx(80 / 300)
    assert base["recall"] == 1.0 and base["miou"] == pytest.approx(80 / 300 / 2)


def test_context_scores_count_every_tile_and_the_inner_ones_alone_and_in_the_mosaic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model that calls forest where red > 128; scene s a 4 x 5 grid of 32-px tiles without its (0, 2)
    and (3, 0) tiles, scene t one tile at (0, 2) (another scene's: no neighbour of s's tiles). Every tile
    is counted in both scores (a per-pixel model: the mosaic's cut equals the tile's where each tile sits
    in it), and in the inner ones the tiles with all 8 neighbours: (2, 2) and (2, 3), not (1, 2) (its
    diagonal ones all there) nor (2, 1) (its own and right-hand columns all there)."""
    from forestseg.loader import Normalizer
    from forestseg.metrics import scores

    grid = [(r, c) for r in range(4) for c in range(5) if (r, c) not in ((0, 2), (3, 0))]
    rng = np.random.default_rng(0)
    n = len(grid) + 1
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    truths = rng.integers(0, 2, (n, 32, 32), dtype=np.uint8)
    monkeypatch.setattr(context, "T", 32)
    monkeypatch.setattr(context, "SAMPLE", SimpleNamespace(scene=np.array(["s"] * len(grid) + ["t"])), raising=False)
    monkeypatch.setattr(context, "IMAGES", images, raising=False)
    monkeypatch.setattr(context, "TRUTHS", truths, raising=False)
    monkeypatch.setattr(context, "R", np.array([r for r, _ in grid] + [0]), raising=False)
    monkeypatch.setattr(context, "C", np.array([c for _, c in grid] + [2]), raising=False)

    class Red(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0]

    got = context.score(Red(), Normalizer((128.0, 128.0, 128.0), (1.0, 1.0, 1.0)), ["s", "t"])

    def counts(rows: list[int]) -> dict:
        pred, truth = images[rows, ..., 0] > 128, truths[rows] > 0
        return scores([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum(), (~pred & ~truth).sum()])

    every, inner = counts(list(range(n))), counts([grid.index((2, 2)), grid.index((2, 3))])
    assert got == {"tile": every, "mosaic": every, "tile inner": inner, "mosaic inner": inner}


def context_fold(iou: float, inner: bool) -> dict:
    """A fold's context scores: forest IoU `iou` scored alone, half that in its mosaic; the inner tiles'
    scored alone only where `inner`."""
    s = {"iou": iou, "miou": iou + 0.1}
    return {"tile": s, "mosaic": {"iou": iou / 2, "miou": 0.5}, "tile inner": s if inner else None, "mosaic inner": s}


def test_context_lines_give_a_folds_scores_alone_and_in_the_mosaic() -> None:
    """Each score in its place; the inner tiles' scores where the fold has some."""

    outs = [context_fold(0.5, True), context_fold(0.6, True), context_fold(1.0, False)]
    assert context.line(outs[0]) == (
        "scored alone: forest IoU 0.5000 mIoU 0.6000 (with 8 neighbours: 0.5000 / 0.6000); "
        "scored in its mosaic: forest IoU 0.2500 mIoU 0.5000 (with 8 neighbours: 0.5000 / 0.6000)"
    )
    assert context.line(outs[2]).startswith("scored alone: forest IoU 1.0000 mIoU 1.1000; scored in its mosaic")


def test_context_summary_prints_the_mean_over_folds(capsys: pytest.CaptureFixture) -> None:
    """Three folds, forest IoU 0.5, 0.6 and 1.0 scored alone: the mean 0.7, not the median 0.6; the inner
    tiles' line only where every fold has some (scored alone, the first fold alone has)."""

    context.summary([context_fold(0.5, True), context_fold(0.6, False), context_fold(1.0, False)], "x")
    assert capsys.readouterr().out.splitlines() == [
        "mean over x, scored alone, all tiles: forest IoU 0.7000 mIoU 0.8000",
        "mean over x, scored in its mosaic, all tiles: forest IoU 0.3500 mIoU 0.5000",
        "mean over x, scored in its mosaic, tiles with 8 neighbours: forest IoU 0.7000 mIoU 0.8000",
    ]


def test_contention_table_compares_each_row_with_its_command_alone() -> None:
    """Evaluate on 1 thread against its own time alone on 1 thread (it was divided by the 2-thread time)."""
    two, one = {"cmd": "evaluate"}, {"cmd": "evaluate --threads 1"}
    rows = [
        ("repro alone", {"repro": 30.0, "repro_note": False, "cmd": None}),
        ("evaluate alone", {"evaluate": 15.0, "stopped": False, "note": False, **two}),
        ("evaluate alone, 1 thread", {"evaluate": 18.0, "stopped": False, "note": False, **one}),
        ("side by side", {"repro": 480.0, "evaluate": 121.0, "stopped": True, "note": True, "repro_note": True, **two}),
        (
            "side by side, 1 thread",
            {"repro": 45.0, "evaluate": 27.0, "stopped": False, "note": False, "repro_note": False, **one},
        ),
    ]
    lines = contention.table(rows, cap=120).splitlines()
    assert lines[0].split()[:10] == ["what", "repro", "s", "x", "alone", "evaluate", "s", "x", "alone", "notes"]
    assert lines[1].split()[-5:] == ["30.0", "1.0", "-", "-", "-/no"]
    assert lines[2].split()[-5:] == ["-", "-", "15.0", "1.0", "no/-"]
    assert lines[3].split()[-5:] == ["-", "-", "18.0", "1.0", "no/-"]
    assert lines[4].split()[-8:] == ["480.0", "16.0", ">", "120", "(stopped)", ">", "8.0", "yes/yes"]
    assert lines[5].split()[-5:] == ["45.0", "1.5", "27.0", "1.5", "no/no"]


def _fake_commands(monkeypatch: pytest.MonkeyPatch, repro_s: float, evaluate: str) -> list[subprocess.Popen]:
    """contention.start running a sleep of repro_s for the repro and `evaluate` (python code) for evaluate."""
    started = []

    def start(cmd, cwd):
        code = f"import time; time.sleep({repro_s})" if cmd[0] == "dvc" else evaluate
        started.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
        return started[-1]

    monkeypatch.setattr(contention, "start", start)
    return started


def test_contention_stops_evaluate_at_the_cap_and_times_both(monkeypatch, tmp_path) -> None:
    started = _fake_commands(monkeypatch, 3.0, f"import time; print({contention.NOTE!r}, flush=True); time.sleep(30)")
    row = contention.timed(tmp_path, True, ["evaluate"], delay=0.3, cap=2.0)
    assert row["stopped"] and row["note"] and 2.0 <= row["evaluate"] < 10  # stopped at the cap, not after 30 s
    assert row["repro_note"] is False
    assert 3.0 <= row["repro"] < 10 and started[1].returncode == -15  # SIGTERM, as a user's Ctrl-C ends it
    started = _fake_commands(monkeypatch, 30, "print('done')")
    t0 = time.perf_counter()
    row = contention.timed(tmp_path, False, ["evaluate"], delay=10.0, cap=60)  # alone: no repro, no delay
    assert len(started) == 1 and set(row) == {"evaluate", "stopped", "note"} and not row["stopped"] | row["note"]
    assert time.perf_counter() - t0 < 5


def test_contention_stops_when_evaluate_fails_and_leaves_no_repro_running(monkeypatch, tmp_path) -> None:
    started = _fake_commands(monkeypatch, 30, "raise SystemExit(3)")
    with pytest.raises(SystemExit, match=r"failed \(exit 3\)"):
        contention.timed(tmp_path, True, ["evaluate"], delay=0.0, cap=60)
    assert started[0].poll() is not None  # the repro ended with the bench


@pytest.mark.parametrize(("others", "warned"), [(None, False), (0.0, False), (0.09, False), (0.1, True), (1.3, True)])
def test_speed_says_how_busy_other_processes_kept_the_cores(others, warned, monkeypatch) -> None:
    monkeypatch.setattr(speed, "others_busy", lambda since, now: others)
    line = speed.others_line(speed.CpuClock(0.0, {0: 0.0, 1: 0.0}, 0.0))
    if others is None:
        assert line == "other processes: not measured (no /proc/stat)"
        return
    first, *rest = line.split("\n")
    assert first == f"other processes: {others:.2f} of the 2 cores busy on average over the bench"
    assert rest == (
        ["warning: other processes kept the bench's cores busy (above): rerun on a quiet machine before quoting"]
        if warned
        else []
    )


@pytest.mark.parametrize("below, emulated", [(2e8, False), (3e8, True)])
def test_the_emulation_probe_counts_a_512_matmuls_multiply_adds(
    monkeypatch: pytest.MonkeyPatch, below: float, emulated: bool
) -> None:
    """Every timed call 1 s: the probe runs at 2 x 512^3 = 2.7e8 FLOP/s, fast above a bound of 2e8 (every
    product timed: the 8-channel 1x1 convolution's FLOPs the best), emulated under one of 3e8."""
    monkeypatch.setattr(speed, "time", ticking())
    best = speed.dense_peak(torch.device("cpu"), torch.float32, sizes=(64,), emulated_below=below)
    assert best == (
        (2 * 512**3, "512x512 matmul") if emulated else (2 * 16 * 64 * 64 * 8 * 8, "8-channel 1x1 convolution")
    )
