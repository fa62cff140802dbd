"""Forest map of a large GeoTIFF (a script, not a test): wall time and peak memory of `forestseg predict`.

Writes a synthetic RGB orthophoto of SIZE x SIZE pixels at 0.5 m in EPSG:32633 block by block
(procedural scenes with a nodata collar), trains a small UNet (width 4) for a few seconds on
synthetic 256-px tiles, then runs `forestseg predict` on the raster in a child process under
/usr/bin/time -v (or getrusage where that is missing) and prints the wall time, the child's
peak RSS, what an in-memory prediction of the same raster would have to hold, and the area row.

    python bench/geo.py [--size 20000] [--pixel 0.5] [--block 2048] [--device cpu] [--work /tmp/forestseg-bench-geo]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forestseg.config import ModelConfig, OptimizerConfig, Run, TrainConfig  # noqa: E402
from forestseg.cores import QUIET, cpu_clock, others_busy  # noqa: E402
from forestseg.io import write_with  # noqa: E402
from forestseg.loader import Tiles  # noqa: E402
from forestseg.synthetic import render_scene  # noqa: E402
from forestseg.train import train_run  # noqa: E402

SCENE = 1024  # the raster is filled with flipped/turned copies of a few scenes this size
TIMER = "/usr/bin/time"  # GNU time: its -v prints the child's peak RSS (else getrusage)


def write_raster(path: Path, size: int, pixel: float = 0.5, seed: int = 0) -> None:
    """A size x size RGB GeoTIFF written one SCENE-sized window at a time; a triangle of the
    top-left corner is nodata (0), as the collar of a real orthophoto mosaic."""
    rng = np.random.default_rng(seed)
    pool = [render_scene(rng, SCENE)[0] for _ in range(6)]
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5_100_000, pixel, pixel),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "YES",
    }
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, SCENE):
            for c0 in range(0, size, SCENE):
                h, w = min(SCENE, size - r0), min(SCENE, size - c0)
                block = np.rot90(pool[int(rng.integers(len(pool)))], int(rng.integers(4)))[:h, :w].copy()
                rows, cols = np.mgrid[r0 : r0 + h, c0 : c0 + w]
                block[rows + cols < size // 8] = 0  # the collar
                ds.write(np.moveaxis(block, -1, 0), window=Window(c0, r0, w, h))


def train_model(path: Path, width: int, epochs: int) -> None:
    images, masks = [], []
    for seed in range(4):
        image, mask = render_scene(np.random.default_rng(100 + seed), 512)
        for y in (0, 256):
            for x in (0, 256):
                images.append(image[y : y + 256, x : x + 256])
                masks.append(mask[y : y + 256, x : x + 256])
    tiles = Tiles(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks).astype(np.uint8)))
    train_run(
        Run("bce", "adam", 0),
        ModelConfig(width=width, depth=3),
        OptimizerConfig(lr=3e-3),
        TrainConfig(epochs=epochs, batch_size=4, test_batch_size=8, device="cpu", precision="fp32"),
        tiles,
        tiles,
        path.parent,
        path.with_suffix(".resume.pt"),
        "bench",
        log=lambda s: None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000, help="raster side in pixels")
    ap.add_argument(
        "--pixel",
        type=float,
        default=0.5,
        help="the raster's pixel size in metres; not 0.5 makes predict resample to the model's 0.5 m and back",
    )
    ap.add_argument("--block", type=int, default=2048, help="forestseg predict --block")
    ap.add_argument("--width", type=int, default=4, help="UNet width")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/forestseg-bench-geo"), help="a folder for the raster, model and maps"
    )
    ap.add_argument("--keep", action="store_true", help="keep the raster and outputs (else only they are removed)")
    ap.add_argument(
        "--polygons", action="store_true", help="forestseg predict --polygons: the forest traced as GeoJSON too"
    )
    args = ap.parse_args()
    if args.size < 256 or args.block < 1 or args.width < 1 or args.epochs < 1 or not args.pixel > 0:
        ap.error("--size must be at least 256 (one model tile), --block, --width and --epochs at least 1, --pixel > 0")
    if args.work.exists() and not args.work.is_dir():
        ap.error(f"--work {args.work}: is a file; give a folder")
    made = not args.work.exists()
    try:
        args.work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--work {args.work}: cannot be made ({e.strerror})")
    raster, model, out = args.work / f"ortho_{args.size}_{args.pixel:g}m.tif", args.work / "model.pt", args.work / "out"
    t0 = time.perf_counter()
    if not raster.exists():
        write_with(raster, lambda p: write_raster(p, args.size, args.pixel))  # a killed write leaves no raster to reuse
    print(
        f"raster: {raster} ({args.size}x{args.size} at {args.pixel:g} m, {raster.stat().st_size / 2**20:.0f} MiB on disk) "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    t0 = time.perf_counter()
    train_model(model, args.width, args.epochs)
    print(
        f"model: UNet width {args.width}, depth 3, 256-px tiles, {args.epochs} epochs in {time.perf_counter() - t0:.0f} s"
    )
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "forestseg.cli",
        "predict",
        str(model),
        str(raster),
        "-o",
        str(out),
        "--block",
        str(args.block),
        "--device",
        args.device,
    ] + (["--polygons"] if args.polygons else [])
    timer = [TIMER, "-v"] if Path(TIMER).exists() else []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t0, started = time.perf_counter(), cpu_clock()
    done = subprocess.run(timer + cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    others = others_busy(started, cpu_clock())  # the predict is a waited-for child: its CPU time is ours
    if done.returncode != 0:
        sys.exit(f"forestseg predict failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    if timer:
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # the same interpreter with torch and forestseg imported, doing nothing: the fixed part of the peak,
    # measured by GNU time only (getrusage keeps the largest child's peak, the predict's: none is said)
    idle_kib = None
    if timer:
        idle = subprocess.run(
            timer + [sys.executable, "-c", "import forestseg.cli, forestseg.geo"],
            capture_output=True,
            text=True,
            env=env,
        )
        idle_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", idle.stderr).group(1))
    model_pixels = round(args.size * args.pixel / 0.5) ** 2  # predicted at the model's 0.5 m
    # what the in-memory path holds at the model's resolution: the image, its padded copy, then
    # total, weight sum and result in float32
    in_memory = model_pixels * (3 + 3 + 4 + 4 + 4)
    area = (out / "forest_area.csv").read_text().splitlines()
    result = {
        "size": args.size,
        "pixel_m": args.pixel,
        "block": args.block,
        "width": args.width,
        "device": args.device,
        "polygons": args.polygons,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak_kib / 1024),
        "idle_rss_mib": None if idle_kib is None else round(idle_kib / 1024),
        "in_memory_estimate_mib": round(in_memory / 2**20),
        "model_megapixels_per_s": round(model_pixels / 1e6 / wall, 2),
        "others_busy_cores": None if others is None else round(others, 2),  # other processes, during the predict
        "forest_area_csv": area,
    }
    print(done.stdout.strip())
    print(json.dumps(result, indent=2))
    if others is not None and others >= QUIET:
        print(
            f"warning: other processes kept {others:.2f} cores busy during the predict: rerun on a quiet machine before quoting"
        )
    if not args.keep:  # only what this script wrote: --work may be a folder of the user's
        raster.unlink(missing_ok=True)
        model.unlink(missing_ok=True)
        model.with_suffix(".resume.pt").unlink(missing_ok=True)  # train_run's, beside the model file
        shutil.rmtree(out, ignore_errors=True)
        if made:
            args.work.rmdir()


if __name__ == "__main__":
    main()
