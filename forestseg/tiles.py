"""Cut labelled GeoTIFFs (an orthophoto and its forest truth) into a Kaggle-layout training folder.

A user's own region comes as large rasters, not 256-px tiles: `forestseg tile` reads each image as
`forestseg predict` does (bands, reprojection, resampling to a pixel size), reads its truth on the
same grid (nearest neighbour; 0 = not forest, one other value forest, as `forestseg evaluate`
reads it), and writes whole tiles with data in both as lossless PNGs: images/<scene>_sat_<k>.png,
masks/<scene>_mask_<k>.png (0/255) and meta_data.csv. Each raster is one scene, so a split by scene
never puts tiles of one raster on both sides. Tiles with any pixel without data are skipped and
counted, as is the strip at the right and bottom edge that holds no whole tile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .errors import ForestsegError
from .io import plural, temp_prefix

TILE = 256  # the Kaggle set's tiles


@dataclass(frozen=True)
class TileOptions:
    """How rasters are cut; the CLI's flags."""

    size: int = TILE  # tile side in pixels
    pixel_size_m: float | None = None  # resample to this ground size (None: the raster's own pixels)
    bands: tuple[int, ...] = (1, 2, 3)  # 1-based band numbers read as red, green, blue
    reproject: str | None = None  # a projected CRS to warp to (needed for geographic rasters)
    first_scene: int = 1  # scene id of the first raster; the next ones count up

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ForestsegError(f"--size {self.size}: a tile needs at least 16 pixels a side")
        if self.pixel_size_m is not None and not self.pixel_size_m > 0:
            raise ForestsegError(f"--pixel-size {self.pixel_size_m:g}: must be a positive number of metres")
        if self.first_scene < 0:
            raise ForestsegError(f"--first-scene {self.first_scene}: scene ids are numbers >= 0")


def tile_rasters(
    pairs: list[tuple[Path, Path]], out: Path, opts: TileOptions, log: Callable[[str], None] = print
) -> dict:
    """Cut each (image, truth) pair into tiles under `out`, a new folder written whole or not at all;
    returns per-raster counts. Every pair is checked from its headers before the first is cut."""
    from .evaluate import check_truth
    from .geo import MapOptions, check_raster

    if out.exists():
        raise ForestsegError(f"-o {out}: already exists; give a new folder (tiles are never mixed into another set)")
    map_opts = MapOptions(bands=opts.bands, resample=opts.pixel_size_m is not None, reproject=opts.reproject)
    rasters = []
    for image, truth in pairs:
        raster = check_raster(image, map_opts, opts.pixel_size_m or 1.0)
        if raster is None:
            raise ForestsegError(f"{image}: has no georeference; `forestseg tile` cuts GeoTIFFs with a CRS and grid")
        check_truth(truth)
        rasters.append(raster)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{temp_prefix(out.name)}tmp"
    try:
        for folder in ("images", "masks"):
            (tmp / folder).mkdir(parents=True)
        rows, per_raster, notes = [], [], []
        for i, (raster, (image, truth)) in enumerate(zip(rasters, pairs)):
            scene = opts.first_scene + i
            done = _cut(raster, truth, scene, tmp, opts)
            rows += done.pop("rows")
            note = done.pop("note")
            notes += [note] if note else []
            per_raster.append({"image": str(image), "truth": str(truth), "scene": scene, **done})
            log(
                f"{image.name}: scene {scene}, {plural(done['tiles'], 'tile')} of {opts.size} px at "
                f"{done['pixel_size_m']:.4g} m ({done['forest_share']:.1%} forest); skipped "
                f"{done['skipped_nodata']} with pixels without data; {done['edge_share']:.1%} of the grid "
                "in edge strips narrower than a tile"
            )
        if not rows:
            raise ForestsegError(
                f"no whole {opts.size}-px tile with data in {plural(len(pairs), 'raster')}: the rasters are smaller "
                "than a tile, or their truth and image overlap nowhere with data in both"
            )
        if notes and not any(r["forest_share"] for r in per_raster):
            raise ForestsegError(
                notes[0] + "; tiles holding such pixels were skipped, so none with forest would be written"
            )
        for note in notes:  # one raster of no forest among others with forest can be right (farmland)
            log(f"note: {note}")
        with open(tmp / "meta_data.csv", "w", encoding="utf-8", newline="\n") as f:
            f.write("image,mask\n" + "".join(f"{a},{b}\n" for a, b in rows))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "tiles": len(rows), "rasters": per_raster}


def _cut(raster, truth_path: Path, scene: int, dest: Path, opts: TileOptions) -> dict:
    """Tiles of one raster into dest/images and dest/masks: counts and the meta_data rows."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from .evaluate import TruthValues
    from .geo import SAME_RESOLUTION, CPLE_BaseError, Grid, _one_line, _open, _regrid, _warp

    s = opts.size
    with _open(raster.path) as src, contextlib.ExitStack() as stack:
        reproject = raster.crs != src.crs
        grid = _regrid(src, raster.crs) if reproject else Grid(src.crs, src.transform, src.width, src.height)
        resample = opts.pixel_size_m is not None
        if resample:  # averaging when the target pixels are coarser (no aliasing), bilinear when finer: as predict
            coarser = opts.pixel_size_m > min(grid.pixel_sides(raster.unit_m))
            grid = _regrid(src, raster.crs, opts.pixel_size_m / raster.unit_m)
        else:
            sides = grid.pixel_sides(raster.unit_m)
            if abs(sides[0] / sides[1] - 1) > SAME_RESOLUTION or grid.skew() > SAME_RESOLUTION:
                raise ForestsegError(
                    f"{raster.path}: its pixels are {sides[0]:.4g} x {sides[1]:.4g} m{' and sheared' if grid.skew() > SAME_RESOLUTION else ''}, "
                    "not square as the model's: pass --pixel-size <metres> to resample them"
                )
        pixels = Resampling.average if resample and coarser else Resampling.bilinear
        # the image on the tile grid; where it has data: its nodata, alpha or mask (warped: an added alpha)
        view = stack.enter_context(_warp(src, grid, pixels, alpha=True)) if (resample or reproject) else src
        truth_ds = stack.enter_context(_open(truth_path))
        same = (
            truth_ds.crs == grid.crs
            and truth_ds.transform.almost_equals(grid.transform)
            and (truth_ds.height, truth_ds.width) == (grid.height, grid.width)
        )
        truth = truth_ds if same else stack.enter_context(_warp(truth_ds, grid, Resampling.nearest, alpha=True))
        seen, rows = TruthValues(), []
        tiles = skipped = truth_gaps = forest = 0
        across, down = grid.width // s, grid.height // s
        try:
            for r in range(down):
                for c in range(across):
                    window = Window(c * s, r * s, s, s)
                    truth_valid = truth.dataset_mask(window=window) > 0
                    if not ((view.dataset_mask(window=window) > 0).all() and truth_valid.all()):
                        skipped += 1
                        truth_gaps += int((~truth_valid).sum())
                        continue
                    values = truth.read(1, window=window)
                    seen.add(values.ravel())
                    rgb = np.moveaxis(view.read(indexes=list(opts.bands), window=window), 0, -1)
                    name = f"{scene}_sat_{r * across + c:04d}.png"
                    mask_name = f"{scene}_mask_{r * across + c:04d}.png"
                    Image.fromarray(np.ascontiguousarray(rgb)).save(dest / "images" / name)
                    Image.fromarray(np.where(values != 0, 255, 0).astype(np.uint8)).save(dest / "masks" / mask_name)
                    rows.append((name, mask_name))
                    tiles += 1
                    forest += int((values != 0).sum())
        except (rasterio.errors.RasterioError, CPLE_BaseError, OSError) as e:
            raise ForestsegError(f"{raster.path} or {truth_path}: failed while reading ({_one_line(e)})") from None
        problem = seen.problem(truth_path)
        if problem:
            raise ForestsegError(problem)
        gaps = truth_ds.nodata is not None and truth_gaps and not seen.forest()  # its forest read as nodata?
        side = grid.pixel_sides(raster.unit_m)
        return {
            "tiles": tiles,
            "skipped_nodata": skipped,
            "edge_share": 1 - across * down * s * s / (grid.width * grid.height),
            "pixel_size_m": float(min(side)),
            "forest_share": forest / (tiles * s * s) if tiles else 0.0,
            "grid": [grid.height, grid.width],
            "rows": rows,
            "note": seen.nodata_note(truth_path, truth_ds.nodata, truth_gaps) if gaps else None,
        }
