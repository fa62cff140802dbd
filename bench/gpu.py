"""GPU acceptance (a script, not a test): on a CUDA machine, in under 10 minutes,

1. train/predict on CUDA: a short run trains on the GPU, resumes there after a kill-like stop to the
   same test losses (within 1e-3 relative: CUDA kernels are not bit-reproducible; on the CPU exactly),
   and its fp32 predictions agree with the same model's on the CPU (>= 99.9% of pixels);
2. the speed bench's utilisation figures (`bench/speed.py`, with its MFU line on CUDA);
3. a short study-scale grid on Kaggle-scale synthetic data (synth 63 scenes x 9x9 tiles of 256 px
   = 5103 tiles, the study's UNet, batch 160) run as parallel `dvc queue` workers sharing the GPU
   (one slice per seed), then one `dvc exp run` that restores every member from the run-cache and
   aggregates; wall times printed.

On a machine without CUDA it says so and exits 0. `--device cpu --tiny` runs the same steps at a
tiny scale on the CPU, to check the script itself.

    python bench/gpu.py [--epochs 3] [--seeds 6] [--workers N] [--skip-speed] [--skip-grid]
    (N: as many as GPU memory holds, <= 6; the grid needs dvc, which a borrowed GPU machine lacks:
    bench/gpu_session.sh runs this with --skip-grid)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import forestseg.train  # noqa: E402
from bench.repro_stages import env as repro_env  # noqa: E402
from forestseg.config import ModelConfig, OptimizerConfig, Run, TrainConfig  # noqa: E402
from forestseg.loader import Tiles  # noqa: E402
from forestseg.predict import Predictor  # noqa: E402
from forestseg.synthetic import scene_tiles  # noqa: E402
from forestseg.train import train_run  # noqa: E402

RESUME_TOLERANCE = 1e-3  # relative test-loss drift allowed a resumed CUDA run (rounding, not lost state)
STUDY_GIB = 20  # GPU memory of one study_unet worker at batch 160, 256 px, bf16: ~12.6 GiB saved activations + slack


def tiles(seed: int, scenes: int, size: int, device: torch.device) -> Tiles:
    images, masks = scene_tiles(seed, scenes, size)
    return Tiles(torch.from_numpy(images).to(device), torch.from_numpy(masks).to(device))


@contextlib.contextmanager
def counted_syncs(device: torch.device) -> Iterator[dict[str, int]]:
    """Count the synchronising CUDA calls (torch's sync debug mode) inside forestseg's training epochs,
    not its evaluations; on the CPU a count of 0."""
    found = {"count": 0}
    if device.type != "cuda":
        yield found
        return
    plain = forestseg.train.train_epoch

    def epoch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return plain(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                found["count"] += sum("synchroniz" in str(w.message) for w in seen)

    forestseg.train.train_epoch = epoch
    try:
        yield found
    finally:
        forestseg.train.train_epoch = plain


def check_train_predict(device: torch.device, tiny: bool) -> None:
    size, scenes = (32, 2) if tiny else (128, 8)
    train, test = tiles(0, scenes, size, device), tiles(1, max(1, scenes // 4), size, device)
    model = ModelConfig(width=4 if tiny else 16, depth=2 if tiny else 3)
    cfg = TrainConfig(epochs=3, batch_size=4 if tiny else 16, test_batch_size=16, device=str(device))
    run = Run("bce", "adam", 0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        with counted_syncs(device) as syncs:
            straight = train_run(
                run, model, OptimizerConfig(), cfg, train, test, tmp / "a", tmp / "a.pt", "fp", log=lambda s: None
            )
        seconds = time.perf_counter() - t0
        if device.type == "cuda":
            steps = cfg.epochs * -(-len(train) // cfg.batch_size)
            print(
                f"host-device synchronisations in the training epochs: {syncs['count']} in {steps} steps "
                "(torch.cuda.set_sync_debug_mode: calls that wait for the whole queue; the first step reads its loss "
                "twice for the divergence reference and copies the normaliser's mean and std to the device once, "
                "the others read theirs a step later behind an event)"
            )
        # stop after 2 epochs (as a kill would), then resume to 3 from the resume file
        train_run(
            run,
            model,
            OptimizerConfig(),
            dataclasses.replace(cfg, epochs=2),
            train,
            test,
            tmp / "b",
            tmp / "b.pt",
            "fp",
            log=lambda s: None,
        )
        resumed = train_run(
            run, model, OptimizerConfig(), cfg, train, test, tmp / "b", tmp / "b.pt", "fp", log=lambda s: None
        )
        a, b = [r["test_loss"] for r in straight.history], [r["test_loss"] for r in resumed.history]
        # bit-identical on the CPU; on CUDA cuDNN's chosen kernels and the bilinear upsampling's backward
        # (atomic adds) vary in the last bits, so a resume that restored its state is within rounding and
        # one that lost its optimizer state or RNG is not
        drift = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
        same = drift == 0 if device.type == "cpu" else drift < RESUME_TOLERANCE
        print(
            f"train on {device}: 3 epochs in {seconds:.1f} s, test IoU {straight.metrics['test_iou']:.4f}, "
            f"precision {straight.metrics['precision']}; resumed run: test losses within {drift:.1e} relative "
            f"({'bit-identical' if drift == 0 else 'not bit-identical'}; goal "
            f"{'0 on the CPU' if device.type == 'cpu' else f'< {RESUME_TOLERANCE:g} on CUDA'})"
        )
        image = test.images[0].cpu().numpy()
        # both in full fp32: bf16 on one side and not the other differs by more than the device does
        on_device, on_cpu = (Predictor.load(tmp / "a/model.pt", d, "fp32") for d in (device, torch.device("cpu")))
        agree = float((on_device.mask(image) == on_cpu.mask(image)).mean())
        # several tiles, 3 to a forward: on a GPU the next forward runs while the host blends the last
        several = list(test.images[:8].cpu().numpy())
        agree_tiles = float(np.mean([a == b for a, b in zip(on_device.masks(several, batch=3), on_cpu.masks(several))]))
        # the branches no other step of a GPU session runs: test-time augmentation (8 views, cut on the
        # device) and batch-norm adapted to a scene (its statistics pass)
        tta = [dataclasses.replace(p, tta=True) for p in (on_device, on_cpu)]
        agree_tta = float(np.mean([a == b for a, b in zip(tta[0].masks(several, batch=3), tta[1].masks(several))]))
        adapted = [p.adapted(np.stack(several), 0.25) for p in (on_device, on_cpu)]
        agree_adapted = float(
            np.mean([a == b for a, b in zip(adapted[0].masks(several, batch=3), adapted[1].masks(several))])
        )
        print(
            f"predict in fp32 on {device} vs cpu: {agree:.4%} of pixels agree in windows of an image, "
            f"{agree_tiles:.4%} in {len(several)} tiles, 3 to a forward, {agree_tta:.4%} with TTA, "
            f"{agree_adapted:.4%} with batch-norm adapted by 0.25 (goal >= 99.9%)"
        )
        mixed = train_run(
            run,
            dataclasses.replace(model, mixstyle=0.5),
            OptimizerConfig(),
            dataclasses.replace(cfg, epochs=1),
            train,
            test,
            tmp / "c",
            tmp / "c.pt",
            "fp",
            log=lambda s: None,
        )
        print(f"MixStyle 0.5 on {device}: 1 epoch, train loss {mixed.history[-1]['train_loss']:.4f}")
        if not same or min(agree, agree_tiles, agree_tta, agree_adapted) < 0.999:
            raise SystemExit("gpu acceptance: FAILED")


def sh(cwd: Path, *cmd: str) -> str:
    env = {
        **repro_env(),
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@forestseg",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@forestseg",
    }
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def study_grid(args: argparse.Namespace) -> None:
    """The study's grid (2 losses x 2 optimizers x seeds) on Kaggle-scale synthetic tiles, one queued
    experiment per seed, `args.workers` queue workers, then one run of the whole grid."""
    scenes, grid, tile = (4, 2, 64) if args.tiny else (63, 9, 256)
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        sh(Path(tmp), "git", "clone", "-q", str(REPO), str(work))
        params = yaml.safe_load((work / "params.yaml").read_text())
        for key, value in {
            "synth.scenes": scenes,
            "synth.grid": grid,
            "synth.tile_size": tile,
            "model.arch": "unet" if args.tiny else "study_unet",
            "model.input": "raw",
            "optimizer.lr": 1e-4,
            "optimizer.lr_overrides": {"mse_logits-adam": 1e-3},
            "optimizer.step_epochs": 5,
            "train.epochs": args.epochs,
            "train.device": args.device,
            "train.augment": False,
            "train.color_jitter": 0.0,
            "train.batch_size": 8 if args.tiny else 160,
            "train.test_batch_size": 16 if args.tiny else 100,
            "grid.loss": ["mse_logits", "bce"],
            "grid.optimizer": ["sgd", "adam"],
            "grid.seed": seeds,
        }.items():
            section, name = key.split(".")
            params[section][name] = value
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh(work, "git", "commit", "-qam", "study-scale grid")
        t0 = time.perf_counter()
        sh(work, "dvc", "repro", "split")  # data once, shared by every worker through the cache
        print(f"study grid: data ({scenes * grid * grid} tiles of {tile} px) in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        for s in seeds:
            sh(work, "dvc", "exp", "run", "--queue", "-n", f"seed{s}", "-S", f"grid.seed=[{s}]", "train")
        sh(work, "dvc", "queue", "start", "-j", str(args.workers))
        while True:
            status = sh(work, "dvc", "queue", "status")
            if "Running" not in status and "Queued" not in status:
                break
            time.sleep(5)
        sh(work, "dvc", "queue", "stop")
        print(
            f"study grid: {4 * len(seeds)} runs x {args.epochs} epochs on {args.workers} queue workers in "
            f"{time.perf_counter() - t0:.0f} s ({status.count('Success')}/{len(seeds)} slices succeeded)"
        )
        t0 = time.perf_counter()
        out = sh(work, "dvc", "exp", "run", "-n", "all-seeds")
        trained = out.count("Running stage 'train@")
        print(
            f"study grid: whole grid restored and aggregated in {time.perf_counter() - t0:.0f} s, "
            f"{trained} member(s) trained again (goal 0)"
        )
        print("\n".join(line for line in out.splitlines() if "test IoU" in line))


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # a device call killed at its limit keeps what was printed
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, to check the script on a CPU")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=None, help="seeds of the study grid (6; 1 with --tiny)")
    ap.add_argument(
        "--workers", type=int, default=None, help="queue workers (as many as GPU memory holds, <= 6; 1 with --tiny)"
    )
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-grid", action="store_true", help="no queued study grid (it needs dvc on the machine)")
    args = ap.parse_args()
    args.seeds = args.seeds or (1 if args.tiny else 6)
    cuda_grid = not args.skip_grid and not args.tiny and args.device.startswith("cuda")
    if args.workers is None and cuda_grid and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(args.device))
        # six workers of ~20 GiB each fit an H200 (139 GiB), not an 80 GB card: as many as fit, at most 6
        args.workers = max(1, min(6, args.seeds or 6, int(free / 2**30 // STUDY_GIB)))
        print(
            f"study grid: {args.workers} queue worker(s), as many as {free / 2**30:.0f} GiB free hold at ~{STUDY_GIB} GiB"
        )
    args.workers = args.workers or (1 if args.tiny else 6)
    if min(args.seeds, args.workers, args.epochs) < 1:
        ap.error("--seeds, --workers and --epochs must be at least 1")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"--device {args.device}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu acceptance: torch sees no CUDA device on this machine; nothing to check here")
        return
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    t0 = time.perf_counter()
    check_train_predict(device, args.tiny)
    if not args.skip_speed:
        tiny = ["--width", "4", "--depth", "2", "--batch", "4", "--steps", "2", "--repeats", "1"] if args.tiny else []
        # on CUDA the goal's setting, the study's UNet at batch 160 (README: Benchmarks), in bf16 alone (its
        # exact fp32 did not finish 4 epochs in what was left of a 200 s step on an H200), and also without
        # channels_last (--nchw): which memory format the GPU prefers is measured, not assumed
        setting = ["--study", "--batch", "160", "--auto-only", "--nchw"] if device.type == "cuda" else ["--batch", "16"]
        batch = [] if args.tiny else setting
        # its lines as they come (not captured): a device call stopped at its time limit keeps what was measured
        speed = subprocess.run(
            [sys.executable, str(REPO / "bench/speed.py"), "--device", str(device), *batch, *tiny], cwd=REPO
        )
        if speed.returncode:
            raise SystemExit(f"bench/speed.py failed (exit status {speed.returncode}): its error is above")
    if args.skip_grid:
        print("study grid: skipped (--skip-grid)")
    else:
        study_grid(args)
    print(f"gpu acceptance: done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
