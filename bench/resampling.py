"""Forest maps of resampled rasters (a script, not a test): does predicting through GDAL's warper at
the model's pixel size cost quality on real imagery?

Tiles of one CV fold's unseen scenes are written as GeoTIFFs (EPSG:32633, north-up) that state each
of --sizes as their pixel size; `forestseg predict` maps them with that fold's model of the recipe
(kept in --keep and reused, as bench/errors.py keeps them; trained there otherwise), resampling
every size more than 1 % from the model's 0.5 m, and each output mask is scored on its raster's own
grid against the tile's mask: forest IoU, mIoU and the forest share called, per size. Each size is
mapped twice: as the model file says (its batch-norm adapted to each raster, as predict does) and
with --adapt-bn 0 (as trained). The first is not comparable across sizes: a tile resampled below the
model's window (0.45 m makes ~230 px of 256) holds no whole window to adapt to and is mapped as
trained, and the line says how many tiles were; the second is.

    python bench/resampling.py --keep DIR [--fold 0] [--tiles 60] [--sizes 0.5,0.506,0.55,0.45,0.7]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import torch
from rasterio.transform import Affine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import quality as q  # noqa: E402
from forestseg.config import Run  # noqa: E402
from forestseg.evaluate import _counts  # noqa: E402
from forestseg.metrics import scores  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, required=True, help="a folder to keep the fold's model in and reuse")
    ap.add_argument("--fold", type=int, default=0, choices=range(5), help="the fold of the 5-fold CV")
    ap.add_argument("--tiles", type=int, default=60, help="test tiles drawn (seed 0) from the fold's scenes")
    ap.add_argument("--sizes", default="0.5,0.506,0.55,0.45,0.7", help="pixel sizes the rasters state, m")
    ap.add_argument("--recipe", default="cpu")
    args = ap.parse_args()
    sample, device = q.load_sample(), torch.device("cpu")
    model_cfg, opt_cfg, train_cfg, grid = q.fold_model_sections(args.recipe, [])
    folds = q.folds(sample, 5)
    run = Run(grid.loss[0], grid.optimizer[0], grid.seed[0])
    model = args.keep / q.kept_name(f"fold {args.fold}", run.seed, args.recipe, [], sample, device)
    train_scenes = [s for i, f in enumerate(folds) if i != args.fold for s in f]
    q.kept_predictor(  # trains the model file into --keep unless it is there
        sample, run, (model_cfg, opt_cfg, train_cfg), train_scenes, folds[args.fold], device, model
    )
    rows = q.rows_of(sample, folds[args.fold])
    rows = np.sort(np.random.default_rng(0).choice(rows, min(args.tiles, len(rows)), replace=False))
    images, masks = (np.load(p, mmap_mode="r") for p in (sample.layout.images, sample.layout.masks))
    print(f"{len(rows)} tiles of fold {args.fold}'s scenes, model {model.name}")
    for size in map(float, args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="forestseg-resampling-") as tmp:
            src = Path(tmp) / "in"
            src.mkdir()
            for r in rows:
                h, w = images.shape[1:3]
                profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8"}
                transform = Affine(size, 0, 500000 + 300 * int(r), 0, -size, 5000000)
                with rasterio.open(src / f"t{r}.tif", "w", crs="EPSG:32633", transform=transform, **profile) as ds:
                    ds.write(np.moveaxis(np.asarray(images[r]), -1, 0))
            for how, flags in (("as the model file says", []), ("--adapt-bn 0", ["--adapt-bn", "0"])):
                out = Path(tmp) / f"out{len(flags)}"
                cmd = [sys.executable, "-m", "forestseg.cli", "predict", str(model), str(src), "-o", str(out), *flags]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"resampling: forestseg predict failed at {size} m: {done.stderr.strip()}")
                # predict's note (on stdout) for a raster with no whole window to adapt batch-norm to
                unadapted = done.stdout.count("mapped as trained")
                counts = np.zeros(4, np.int64)
                for r in rows:
                    with rasterio.open(out / f"t{r}_mask.tif") as ds:
                        pred = ds.read(1) == 1
                    counts += _counts(pred, np.asarray(masks[r]) > 0)
                resampled = pd.read_csv(out / "forest_area.csv")["resampled"].all()
                s = scores(counts)
                print(
                    f"pixel {size:g} m ({'resampled' if resampled else 'as it is'}), {how}: forest IoU {s['iou']:.4f}, "
                    f"mIoU {s['miou']:.4f}, forest share called {(counts[0] + counts[1]) / counts.sum():.4f} "
                    f"(true {(counts[0] + counts[2]) / counts.sum():.4f})"
                    + (
                        f"; {unadapted} of {len(rows)} tiles not adapted (no whole window)"
                        if unadapted and not flags
                        else ""
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
