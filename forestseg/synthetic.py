"""Procedural aerial scenes in the Kaggle layout, so the pipeline runs with no download.

Each scene is a square of land cover (forest, crop parcels, meadows, water, roads) lit by its own
sun, cut into a grid of tiles named like the Kaggle set: images/<scene>_sat_<row><col>.jpg and
masks/<scene>_mask_<row><col>.jpg (3-channel JPEG, 255 = forest) plus meta_data.csv. Some crop
parcels share the forest's mean colour, so colour alone cannot separate them: a model must use
the canopy's texture (crowns and shadow gaps) as well.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .config import SynthConfig
from .io import clear_stale_temps, new_temp, temp_prefix, write_error

# Parcel colours (RGB, 0-1): soil, ripe crop, pale grass, green crop (forest-like mean colour).
_PARCELS = np.array(
    [
        [0.45, 0.36, 0.25],
        [0.70, 0.62, 0.36],
        [0.55, 0.62, 0.38],
        [0.20, 0.33, 0.16],
        [0.30, 0.42, 0.20],
    ]
)


def _noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with features about `cell` pixels wide."""
    n = max(2, int(round(size / cell)) + 2)
    grid = Image.fromarray(rng.random((n, n), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((size, size), Image.BICUBIC), dtype=np.float32).clip(0, 1)


def _fractal(rng: np.random.Generator, size: int, cell: float, octaves: int = 3) -> np.ndarray:
    out = sum(0.5**o * _noise(rng, size, cell / 2**o) for o in range(octaves))
    return (out - out.min()) / (out.max() - out.min() + 1e-9)


def _top(values: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask of the `share` highest values."""
    return values > np.quantile(values, 1.0 - share)


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (size, size, 3) uint8 image and (size, size) bool forest mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    forest = _top(_fractal(rng, size, size / 3), rng.uniform(0.35, 0.8))
    water = _top(_fractal(rng, size, size / 4), rng.uniform(0.0, 0.12)) & ~forest

    roads = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(roads)
    for _ in range(rng.integers(0, 3)):
        p, q = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        draw.line([tuple(p), tuple(q)], fill=255, width=int(rng.integers(2, 5)))
    road = np.asarray(roads) > 0

    # Parcels: a Voronoi tessellation, each cell its own colour and furrow direction.
    k = int(rng.integers(8, 24))
    centres = rng.uniform(0, size, (k, 2)).astype(np.float32)
    d2 = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    parcel = d2.argmin(-1)
    colour = _PARCELS[rng.integers(0, len(_PARCELS), k)] * rng.uniform(0.85, 1.15, (k, 1))
    angle, period = rng.uniform(0, np.pi, k), rng.uniform(3, 8, k)
    phase = (xx * np.cos(angle[parcel]) + yy * np.sin(angle[parcel])) / period[parcel]
    fields = colour[parcel] * (1 + 0.06 * np.sin(2 * np.pi * phase))[..., None]
    fields *= (0.92 + 0.16 * _noise(rng, size, size / 6))[..., None]

    # Canopy: crowns a few pixels wide, bright tops and dark gaps, on a varying green.
    crowns = _noise(rng, size, rng.uniform(2.0, 4.0))
    green = np.array([0.16, 0.30, 0.13]) * rng.uniform(0.8, 1.2, 3)
    canopy = green * (0.55 + 0.9 * crowns)[..., None] * (0.85 + 0.3 * _noise(rng, size, size / 5))[..., None]

    lake = np.array([0.10, 0.16, 0.20]) * (0.9 + 0.2 * _noise(rng, size, size / 8))[..., None]
    image = np.where(forest[..., None], canopy, fields)
    image = np.where(water[..., None], lake, image)
    image = np.where(road[..., None], np.array([0.55, 0.53, 0.50]), image)

    # Trees cast shadows away from the sun onto whatever is beside them.
    dy, dx = rng.integers(-3, 4, 2)
    shadow = np.roll(forest, (int(dy), int(dx)), axis=(0, 1)) & ~forest
    image = np.where(shadow[..., None], image * 0.6, image)

    # Scene light: brightness, colour cast, haze, sensor noise.
    image = image * rng.uniform(0.75, 1.3) * rng.uniform(0.9, 1.1, 3)
    haze = rng.uniform(0.0, 0.25)
    image = (1 - haze) * image + haze * 0.6 + rng.normal(0, 0.015, image.shape)
    mask = forest & ~road & ~water
    return (image.clip(0, 1) * 255 + 0.5).astype(np.uint8), mask


def generate(out_dir: str | Path, cfg: SynthConfig) -> int:
    """Write the synthetic set to `out_dir` (replaced atomically as a whole); returns #pairs."""
    out_dir = Path(out_dir)
    try:
        return _generate(out_dir, cfg)
    except OSError as e:  # disk full, no permission, a file where a folder goes: one line, not a traceback
        raise write_error(out_dir, e, "the synthetic set") from None


def _generate(out_dir: Path, cfg: SynthConfig) -> int:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(out_dir.parent)  # what a killed generate left (named by host and pid, git-ignored)
    tmp = new_temp(out_dir.parent, temp_prefix(out_dir.name), folder=True)  # not mkdtemp's 0700: others read the set
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        ids = np.random.default_rng(cfg.seed).choice(np.arange(1000, 999999), cfg.scenes, replace=False)
        rows = ["image,mask"]
        streams = np.random.SeedSequence(cfg.seed).spawn(cfg.scenes)
        t = cfg.tile_size
        for scene, stream in zip(ids, streams):
            image, mask = render_scene(np.random.default_rng(stream), cfg.grid * t)
            for r in range(cfg.grid):
                for c in range(cfg.grid):
                    img_name, mask_name = f"{scene}_sat_{r}{c}.jpg", f"{scene}_mask_{r}{c}.jpg"
                    tile = np.s_[r * t : (r + 1) * t, c * t : (c + 1) * t]
                    Image.fromarray(image[tile]).save(tmp / "images" / img_name, quality=90)
                    m = np.repeat(mask[tile][..., None].astype(np.uint8) * 255, 3, axis=2)
                    Image.fromarray(m).save(tmp / "masks" / mask_name, quality=90)
                    rows.append(f"{img_name},{mask_name}")
        (tmp / "meta_data.csv").write_text("\n".join(rows) + "\n")
        old = out_dir.with_name(f"{temp_prefix(out_dir.name)}old")
        shutil.rmtree(old, ignore_errors=True)  # a killed run's of the same pid (reused in a container)
        try:
            if out_dir.exists():
                os.replace(out_dir, old)
            os.replace(tmp, out_dir)
        except BaseException:  # a stop between the two renames: the old set goes back, never neither set
            if old.exists() and not out_dir.exists():
                os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(rows) - 1


def scene_tiles(seed: int, scenes: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """2x2 tiles of `size` px cut from each of `scenes` seeded scenes: images (N, size, size, 3) uint8
    and forest masks (N, size, size) in {0, 1}, for tests and benchmarks that need tiles in memory."""
    images, masks = [], []
    for stream in np.random.SeedSequence(seed).spawn(scenes):
        image, mask = render_scene(np.random.default_rng(stream), 2 * size)
        for r in range(2):
            for c in range(2):
                images.append(image[r * size : (r + 1) * size, c * size : (c + 1) * size])
                masks.append(mask[r * size : (r + 1) * size, c * size : (c + 1) * size])
    return np.stack(images), np.stack(masks).astype(np.uint8)
