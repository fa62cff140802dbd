"""Batches from the packed uint8 arrays: a seeded shuffle and a gather, no JPEG decoding.

The tiles of a subset are held as uint8 tensors on the training device (on CUDA the whole set
fits: ~1.3 GB for the full Kaggle set), so a batch is one index_select plus a cast; the images
are stored NHWC, so the permuted batch is already channels_last in memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import ForestsegError
from .io import read_columns
from .layout import DataLayout


@dataclass(frozen=True)
class Tiles:
    """A subset of the packed set: images (N, H, W, 3) and masks (N, H, W), uint8; `scenes`, where
    known, the scene number of each tile (for scene-balanced sampling and per-scene scores)."""

    images: torch.Tensor
    masks: torch.Tensor
    scenes: torch.Tensor | None = None  # (N,) int64 on the CPU: the tile's index into scene_names
    scene_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.images.shape[0]


def load_tiles(layout: DataLayout, rows: np.ndarray, device: torch.device, scenes: np.ndarray | None = None) -> Tiles:
    """Rows `rows` of the packed arrays, copied once onto `device`; `scenes` (one label per packed row)
    gives each tile its scene."""
    images = np.load(layout.images, mmap_mode="r")
    masks = np.load(layout.masks, mmap_mode="r")
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted rows read the memmap sequentially
    names, ids = np.unique(np.asarray(scenes)[rows], return_inverse=True) if scenes is not None else ((), None)
    return Tiles(
        torch.from_numpy(images[rows]).to(device),
        torch.from_numpy(masks[rows]).to(device),
        None if ids is None else torch.from_numpy(ids.astype(np.int64)),
        tuple(str(n) for n in names),
    )


@dataclass(frozen=True)
class Normalizer:
    """Per-channel mean/std on the 0-255 scale; stored in checkpoints so predict uses the same.
    With `per_tile`, each tile is standardised by its own channels' mean and std instead."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    per_tile: bool = False

    @classmethod
    def of(cls, saved: dict) -> "Normalizer":
        """The normaliser stored in a model file: {"mean": [r, g, b], "std": [r, g, b], "per_tile": bool}
        (files written before per_tile have no such key: fitted or identity statistics)."""
        return cls(tuple(saved["mean"]), tuple(saved["std"]), bool(saved.get("per_tile", False)))

    @classmethod
    def fit(cls, images: torch.Tensor, chunk: int | None = None) -> "Normalizer":
        """Mean and std of each channel over every pixel of (N, H, W, 3) uint8 images, `chunk` images
        at a time (default: ~4 M pixels, ~100 MB of int32 copies and squares, whatever the tile size)."""
        chunk = chunk or max(1, (1 << 22) // max(1, images.shape[1] * images.shape[2]))
        # exact integer sums (the float64 sums of before gave the same values, at 16 bytes a subpixel)
        total = torch.zeros(3, dtype=torch.int64)
        squares = torch.zeros(3, dtype=torch.int64)
        for start in range(0, len(images), chunk):
            x = images[start : start + chunk].reshape(-1, 3)
            total += x.sum(0, dtype=torch.int64).cpu()
            squares += (x.int() ** 2).sum(0, dtype=torch.int64).cpu()
        n = images.shape[0] * images.shape[1] * images.shape[2]
        total, squares = total.double(), squares.double()
        mean = total / n
        std = (squares / n - mean * mean).clamp_min(1e-6).sqrt()
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float on the 0-255 scale -> normalised, same memory format."""
        if self.per_tile:
            mean = x.mean((2, 3), keepdim=True)
            # a floor of 1 grey level: a flat tile (all water, all nodata) is not blown up into noise
            std = x.std((2, 3), keepdim=True).clamp_min(1.0)
        else:
            mean, std = _channels(self.mean, x.dtype, x.device), _channels(self.std, x.dtype, x.device)
        return (x - mean) / std


@functools.lru_cache(maxsize=16)
def _channels(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a (1, 3, 1, 1) tensor on `device`, made once: on CUDA a copy per forward pass from
    pageable host memory would wait for the host's staging of it."""
    with torch.inference_mode(False):  # made under predict's inference mode, it may serve training later
        return torch.tensor(values, dtype=dtype).view(1, 3, 1, 1).to(device)


def to_input(
    images: torch.Tensor,
    norm: Normalizer,
    channels_last: bool = True,
    jitter: float = 0.0,
    generator: torch.Generator | None = None,
    saturation: float = 0.0,
    blur: float = 0.0,
    photo: tuple[torch.Generator | None, torch.Generator | None] = (None, None),
) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 normalised model input.

    With jitter > 0 and a generator, each tile's brightness is scaled by a factor drawn from 1 +- jitter
    and each channel's gain by one from 1 +- jitter / 2 (mild colour jitter, seeded); `photo`'s
    generators (saturation's, blur's) drive `photometric`'s changes of saturation and focus.
    """
    x = images.permute(0, 3, 1, 2).float()  # NHWC storage: already channels_last
    if not channels_last:
        x = x.contiguous()
    if jitter > 0 and generator is not None:
        gain = _uniform(x.shape[0], jitter, generator, 1, 1, 1) * _uniform(x.shape[0], jitter / 2, generator, 3, 1, 1)
        x = (x * gain.to(x.device, non_blocking=True)).clamp_(0, 255)
    if any(g is not None for g in photo):
        x = photometric(x, saturation, blur, *photo)
    return norm(x)


def _uniform(n: int, spread: float, generator: torch.Generator, *shape: int) -> torch.Tensor:
    """n draws from 1 +- spread (CPU generator, so a seed gives the same draws on every device)."""
    return 1 + spread * (2 * torch.rand(n, *shape, generator=generator) - 1)


def gaussian_blur(x: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """(B, C, H, W) blurred channel by channel by a Gaussian of `sigma` px cut at `radius` px (default
    3 sigma, rounded: a shorter cut would blur less than `sigma` says), reflected at the edges;
    separable (a row pass, then a column pass)."""
    radius = int(3 * sigma + 0.5) if radius is None else radius
    r = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k, c, n = k / k.sum(), x.shape[1], 2 * radius + 1
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, n).expand(c, 1, 1, n), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, n, 1).expand(c, 1, n, 1), groups=c)


def photometric(
    x: torch.Tensor,
    saturation: float,
    blur: float,
    saturation_gen: torch.Generator | None,
    blur_gen: torch.Generator | None,
) -> torch.Tensor:
    """Label-safe colour and focus changes of (B, 3, H, W) 0-255 input: saturation scaled by
    1 +- `saturation` per tile, and with probability `blur` a Gaussian blur (sigma 0.5-1.5 px). Each
    draws from its own generator, so turning one on does not change what the other does."""
    b = x.shape[0]
    if saturation > 0 and saturation_gen is not None:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1).to(x.device, non_blocking=True)
        grey = (x * luma).sum(1, keepdim=True)
        x = (
            grey + (x - grey) * _uniform(b, saturation, saturation_gen, 1, 1, 1).to(x.device, non_blocking=True)
        ).clamp_(0, 255)
    if blur > 0 and blur_gen is not None:
        chosen = torch.rand(b, generator=blur_gen) < blur
        sigma = 0.5 + torch.rand((), generator=blur_gen).item()  # one sigma per batch: one conv
        if chosen.any():
            idx = torch.nonzero(chosen)[:, 0].to(x.device, non_blocking=True)
            x = x.index_copy(0, idx, gaussian_blur(x[idx], sigma))
    return x


def zoom(
    x: torch.Tensor, masks: torch.Tensor, scale: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom each tile in by a factor in [1, 1 + scale] about a random centre that keeps the view
    inside the tile; image bilinear, mask bilinear then cut at 0.5 (so it stays 0/1 and aligned). The
    edge samples may fall up to half a pixel outside the tile's pixel centres: they take the edge
    pixel's value, never zero."""
    b = x.shape[0]
    factor = 1 + scale * torch.rand(b, generator=generator)
    room = 1 - 1 / factor  # how far the centre may move, in [-1, 1] coordinates
    shift = room[:, None] * (2 * torch.rand(b, 2, generator=generator) - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / factor
    theta[:, :, 2] = shift
    grid = torch.nn.functional.affine_grid(theta.to(x.device, non_blocking=True), list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    m = torch.nn.functional.grid_sample(
        masks[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return x, (m[:, 0] > 0.5).to(masks.dtype)


def cutmix(
    x: torch.Tensor, masks: torch.Tensor, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability `p` per tile, paste a box (each side 25-75 % of the tile's, anywhere inside it)
    of the batch's next tile into it, image (B, C, H, W) and mask (B, H, W) alike: tiles that mix two
    scenes' look, with exact labels. Draws the same random numbers whatever `p`."""
    b, _, h, w = x.shape
    chosen = torch.rand(b, generator=generator) < p
    size = (0.25 + 0.5 * torch.rand(b, 2, generator=generator)) * torch.tensor([h, w])
    corner = torch.rand(b, 2, generator=generator) * (torch.tensor([h, w]) - size)
    lo, hi = corner.long(), (corner + size).long()
    rows, cols = torch.arange(h), torch.arange(w)
    inside_rows = (rows >= lo[:, :1]) & (rows < hi[:, :1])  # (B, H)
    inside_cols = (cols >= lo[:, 1:]) & (cols < hi[:, 1:])  # (B, W)
    box = inside_rows[:, :, None] & inside_cols[:, None, :] & chosen[:, None, None]  # (B, H, W)
    box = box.to(x.device, non_blocking=True)
    partner = torch.roll(torch.arange(b, device=x.device), -1)  # tile i takes from tile i + 1
    return torch.where(box[:, None], x[partner], x), torch.where(box, masks[partner], masks)


def flip_turn(x: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """Batch `x` (B, H, W[, C]) mirrored left-right if `mirror`, then turned k quarter turns: one of the 8
    flips/rotations of a square tile (training's augmentation, predict's test-time augmentation)."""
    return torch.rot90(x.flip(2) if mirror else x, k, (1, 2))


def unflip_turn(y: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """The inverse of `flip_turn`: an output (B, H, W) of a flipped/turned batch back on its own pixels."""
    y = torch.rot90(y, -k, (1, 2))
    return y.flip(2) if mirror else y


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of the 8 flips/rotations of a square tile to each sample (aerial photos have no 'up');
    a non-square tile gets one of the 4 that keep its shape (no quarter turns)."""
    square = images.shape[1] == images.shape[2]
    choice = torch.randint(0, 8 if square else 4, (images.shape[0],), generator=generator)
    choice = (choice if square else 2 * choice).tolist()  # 0, 2, 4, 6: identity, half turn, flip, flip + half turn
    out_i, out_m = images.clone(), masks.clone()
    for k in range(1, 8):
        sel = [i for i, c in enumerate(choice) if c == k]
        if not sel:
            continue
        idx = torch.tensor(sel).to(images.device, non_blocking=True)
        im, ma = images[idx], masks[idx]  # (b, H, W, 3), (b, H, W)
        out_i[idx], out_m[idx] = flip_turn(im, k % 4, k >= 4), flip_turn(ma, k % 4, k >= 4)
    return out_i, out_m


def scene_balanced(scenes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """len(scenes) tile indices drawn with replacement so that every scene is equally likely (a
    scene of 5 tiles weighs as much as one of 60), tiles uniform within their scene."""
    weight = 1.0 / torch.bincount(scenes).double()[scenes]
    return torch.multinomial(weight, len(scenes), replacement=True, generator=generator)


def scene_batches(scenes: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Every tile once, in batches that each hold tiles of one scene only (a scene's tiles shuffled,
    cut into batches of at most batch_size, the batches shuffled): batch-norm then normalises with
    one scene's statistics, as `--adapt-bn 1` does on an unseen scene."""
    order = torch.randperm(len(scenes), generator=generator)
    order = order[torch.sort(scenes[order], stable=True).indices]  # grouped by scene, shuffled within
    cuts = [c for part in torch.split(order, torch.bincount(scenes).tolist()) for c in part.split(batch_size)]
    return [cuts[i] for i in torch.randperm(len(cuts), generator=generator).tolist() if len(cuts[i])]


def _tile_order(scenes: torch.Tensor | None, n: int, batch_size: int, generator: torch.Generator) -> list:
    return list(torch.randperm(n, generator=generator).split(batch_size))


def _scene_order(scenes: torch.Tensor, n: int, batch_size: int, generator: torch.Generator) -> list:
    return list(scene_balanced(scenes, generator).split(batch_size))


def _scene_batch_order(scenes: torch.Tensor, n: int, batch_size: int, generator: torch.Generator) -> list:
    return scene_batches(scenes, batch_size, generator)


# train.sampling: name -> one epoch's batches of tile indices, from (scenes, n tiles, batch size, generator);
# config.SAMPLINGS lists the names it validates (a test keeps the two equal)
SAMPLINGS: dict[str, Callable[..., list[torch.Tensor]]] = {
    "tile": _tile_order,  # a fresh seeded permutation
    "scene": _scene_order,  # as many tiles, drawn so that every scene is equally likely
    "scene_batch": _scene_batch_order,  # every tile once, each batch one scene's
}
# model.input: name -> the input normaliser of a run trained from scratch, from its training images;
# config.INPUTS lists the names it validates (a test keeps the two equal)
INPUTS: dict[str, Callable[[torch.Tensor], Normalizer]] = {
    "normalized": Normalizer.fit,  # the training set's channel mean and std
    "per_tile": lambda images: Normalizer(per_tile=True),  # each tile by its own
    "raw": lambda images: Normalizer(),  # 0-255 as it is (the 2022 study's)
}


def batches(
    tiles: Tiles,
    batch_size: int,
    generator: torch.Generator | None = None,
    augment_with: torch.Generator | None = None,
    sampling: str = "tile",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images uint8 (B, H, W, 3), masks uint8 (B, H, W)) on the tiles' device.

    With a generator the order is a fresh seeded permutation each call (one call per epoch), or
    by `sampling` (config.SAMPLINGS) a scene-balanced draw of as many tiles (scene) or batches of
    one scene each (scene_batch); without one it is the stored order (evaluation).
    """
    n = len(tiles)
    if sampling != "tile" and generator is not None and tiles.scenes is None:
        raise ForestsegError(f"train.sampling: {sampling} needs the scene of each tile (tiles loaded without scenes)")
    if generator is None:
        cuts = list(torch.arange(n).split(batch_size))
    else:
        cuts = SAMPLINGS[sampling](tiles.scenes, n, batch_size, generator)
    for idx in cuts:
        idx = idx.to(tiles.images.device, non_blocking=True)
        images, masks = tiles.images.index_select(0, idx), tiles.masks.index_select(0, idx)
        if augment_with is not None:
            images, masks = augment(images, masks, augment_with)
        yield images, masks


def load_split(layout: DataLayout, device: torch.device) -> dict[str, Tiles]:
    """The tiles of each subset of the split (train, test, maybe val) from the packed arrays, on `device`."""
    split = layout.split()
    if split.image.tolist() != read_columns(layout.index_csv, "image")["image"]:
        raise ForestsegError(
            f"{layout.split_csv} does not match {layout.index_csv} row for row: rerun `dvc repro split`"
        )
    for path in (layout.images, layout.masks, layout.digest):  # row i of each is tile i: all of one index run
        try:
            rows = np.load(path, mmap_mode="r").shape[0] if path.suffix == ".npy" else path.stat().st_size
        except (OSError, ValueError) as e:
            raise ForestsegError(
                f"{path}: cannot be read ({type(e).__name__}: {' '.join(str(e).split())}); rerun `dvc repro index`"
            ) from None
        if path.suffix == ".npy" and rows != len(split.image):
            raise ForestsegError(
                f"{path}: holds {rows} tiles where {layout.index_csv} lists {len(split.image)} (an index run "
                "stopped midway, or files of two runs): rerun `dvc repro index`"
            )
    return {
        s: load_tiles(layout, np.flatnonzero(split.subset == s), device, split.scene)
        for s in dict.fromkeys(split.subset)
    }
