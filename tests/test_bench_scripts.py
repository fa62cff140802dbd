"""The speed scripts of bench/ run (tiny settings), so a library change cannot break them unseen."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_predictor

import forestseg.windows
from bench import adabn, dropout, errors, gpu, repro_stages, speed, wgrad
from bench import postprocess as post
from bench import profile_train as profile
from forestseg.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("values, says", [([3.0, 1.0, 2.0], "2.0 [1.0-3.0]"), ([4.0, 1.0, 2.0, 3.0], "2.5 [1.0-4.0]")])
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
    timed twice: slowing masks alone slows the whole-path rate alone."""
    p = random_predictor()
    monkeypatch.setattr(Predictor, "load", lambda *a, **k: p)
    monkeypatch.setattr(forestseg.windows, "TILE_BATCH", 2)
    calls, inside, launch, forward = [], [], Predictor._launch, Predictor._forward

    def launched(self, tiles, cut=False):
        inside.append(1)
        time.sleep(0.05)
        try:
            return launch(self, tiles, cut)
        finally:
            inside.pop()

    def forwarded(self, x):
        if not inside:
            calls.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(Predictor, "_launch", launched)
    monkeypatch.setattr(Predictor, "_forward", forwarded)
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
    assert "100.0000% of pixels agree in windows of an image, 100.0000% in 4 tiles, 3 to a forward" in out.stdout
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
    assert usage.returncode == 2 and usage.stderr.startswith("usage: bash bench/gpu_session.sh prepare | run")
    bad = subprocess.run(["bash", str(script), "run", "finale"], env=env, capture_output=True, text=True, timeout=60)
    assert (
        bad.returncode == 2
        and bad.stderr
        == "gpu_session: run takes cv or final (the quality step; none: the speed steps alone), and --cpu-check; "
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
