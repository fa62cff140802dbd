"""Where model windows go on an image, and which windows of a scene its batch-norm adapts on
(`model.adapt_batchnorm`, `--adapt-bn`, `train.adapt_bn`). numpy only, so the train stage can use
the same sample as predict without importing it."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

BLOCK = 2048  # panel width of Predictor.stream, in pixels
TILE_BATCH = 32  # tile-sized images per forward pass (Predictor.masks, evaluate)

ADAPT_WINDOWS = 64  # windows of a scene whose statistics adapt the model, at most


def window_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of `tile` px every `stride` px along `size` >= tile px; the last one flush with the end."""
    return sorted({*range(0, size - tile, stride), size - tile})


def sample_windows(
    read: Callable[[int, int, int, int], np.ndarray],
    height: int,
    width: int,
    tile: int,
    n: int = ADAPT_WINDOWS,
    usable: Callable[[int, int], bool] | None = None,
) -> np.ndarray:
    """(k <= n, tile, tile, 3) uint8: a seeded sample of the windows of an image read through `read`,
    on a grid of one tile's stride (the last flush with the edge), keeping those where
    `usable(row, col)` (e.g. no nodata); none for an image smaller than a window."""
    chosen = []
    if height >= tile and width >= tile:
        starts = [(y, x) for y in window_starts(height, tile, tile) for x in window_starts(width, tile, tile)]
        for i in np.random.default_rng(0).permutation(len(starts)):
            y, x = starts[i]
            if len(chosen) < n and (usable is None or usable(y, x)):
                chosen.append(read(y, y + tile, x, x + tile))
    return np.stack(chosen) if chosen else np.zeros((0, tile, tile, 3), np.uint8)


def sample_of(count: int, n: int = ADAPT_WINDOWS) -> list[int]:
    """A seeded sample of up to `n` of `count` items' indices, in their own order."""
    return sorted(np.random.default_rng(0).permutation(count)[:n].tolist())


def share(count: int, n: int = ADAPT_WINDOWS) -> int:
    """Windows taken from each of `count` images of a scene so that they give `n` (the last cut)."""
    return -(-n // max(1, count))


def scene_windows(images: Sequence[np.ndarray | None], tile: int, n: int = ADAPT_WINDOWS) -> np.ndarray:
    """Up to `n` windows of the images of one scene for `Predictor.adapted`: `sample_of` up to n
    of the images, ceil(n / that many) windows of each (`sample_windows`). An item may be None (an
    image that cannot serve) and may be read on access, so a lazy sequence keeps one image in memory
    with the windows; where some sampled ones cannot serve, a second pass over those that can takes
    the larger `share` each then gets."""

    def windows(indices: list[int], each: int) -> tuple[list[int], list[np.ndarray]]:
        kept, out = [], []
        for i in indices:
            image = images[i]
            if image is not None:
                kept.append(i)
                out += list(sample_windows(lambda r0, r1, c0, c1: image[r0:r1, c0:c1], *image.shape[:2], tile, each))
        return kept, out

    sample = sample_of(len(images), n)
    kept, out = windows(sample, share(len(sample), n))
    if kept and len(kept) < len(sample):
        kept, out = windows(kept, share(len(kept), n))
    return np.stack(out[:n]) if out else np.zeros((0, tile, tile, 3), np.uint8)
