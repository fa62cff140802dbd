"""Batches, model input, augmentation and loading a packed split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from forestseg.config import ForestsegError
from forestseg.layout import DataLayout
from forestseg.loader import (
    Normalizer,
    Tiles,
    augment,
    batches,
    cutmix,
    flip_turn,
    gaussian_blur,
    load_split,
    load_tiles,
    photometric,
    to_input,
    unflip_turn,
    zoom,
)

CPU = torch.device("cpu")


def make_tiles(n: int = 10, size: int = 8, seed: int = 0) -> Tiles:
    """Tiles whose image value at [0, 0, 0] is the tile's index, to trace the order."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    masks = torch.randint(0, 2, (n, size, size), generator=g, dtype=torch.uint8)
    return Tiles(images=images, masks=masks)


def order(tiles: Tiles, batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
    return [imgs[:, 0, 0, 0].tolist() for imgs, _ in batches(tiles, batch_size, generator)]


def test_tiles_length() -> None:
    assert len(make_tiles(7)) == 7


def test_same_seed_same_order_other_seed_other_order() -> None:
    tiles = make_tiles(20)
    a = order(tiles, 4, torch.Generator().manual_seed(3))
    b = order(tiles, 4, torch.Generator().manual_seed(3))
    c = order(tiles, 4, torch.Generator().manual_seed(4))
    assert a == b
    assert a != c


def test_each_epoch_covers_every_tile_once_in_a_fresh_order() -> None:
    tiles = make_tiles(20)
    g = torch.Generator().manual_seed(0)
    epochs = [sum(order(tiles, 6, g), []) for _ in range(3)]
    for flat in epochs:
        assert sorted(flat) == list(range(20))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
    assert epochs[0] != list(range(20))


def test_without_a_generator_the_stored_order() -> None:
    assert order(make_tiles(10), 3, None) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"), [(10, 4, [4, 4, 2]), (8, 4, [4, 4]), (3, 8, [3]), (5, 1, [1] * 5)]
)
def test_batch_sizes_and_last_partial_batch(n: int, batch_size: int, sizes: list[int]) -> None:
    tiles = make_tiles(n)
    got = list(batches(tiles, batch_size, torch.Generator().manual_seed(1)))
    assert [len(i) for i, _ in got] == sizes
    assert [len(m) for _, m in got] == sizes


def test_batches_keep_images_and_masks_paired() -> None:
    tiles = make_tiles(12)
    for imgs, masks in batches(tiles, 5, torch.Generator().manual_seed(2)):
        assert imgs.dtype == masks.dtype == torch.uint8
        for img, mask in zip(imgs, masks):
            i = int(img[0, 0, 0])
            assert torch.equal(img, tiles.images[i]) and torch.equal(mask, tiles.masks[i])


@pytest.mark.parametrize("channels_last", [True, False])
def test_to_input_shape_dtype_and_memory_format(channels_last: bool) -> None:
    tiles = make_tiles(4, size=8)
    x = to_input(tiles.images, Normalizer(), channels_last)
    assert x.dtype == torch.float32
    assert x.shape == (4, 3, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    if not channels_last:
        assert x.is_contiguous()
    # The identity normaliser keeps the 0-255 values, channel c of x = image[..., c].
    torch.testing.assert_close(x, tiles.images.permute(0, 3, 1, 2).float())


def test_normalizer_fit_gives_zero_mean_unit_std() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.stack(
        [
            torch.randint(0, 100, (6, 16, 16), generator=g),
            torch.randint(50, 250, (6, 16, 16), generator=g),
            torch.randint(0, 256, (6, 16, 16), generator=g),
        ],
        dim=-1,
    ).to(torch.uint8)
    norm = Normalizer.fit(images, chunk=4)  # a chunk that does not divide the set
    ref = images.double().reshape(-1, 3)
    assert norm.mean == pytest.approx(tuple(ref.mean(0).tolist()))
    assert norm.std == pytest.approx(tuple(ref.std(0, unbiased=False).tolist()))
    x = to_input(images, norm)
    assert x.is_contiguous(memory_format=torch.channels_last)
    per_channel = x.permute(1, 0, 2, 3).reshape(3, -1).double()
    assert per_channel.mean(1).tolist() == pytest.approx([0, 0, 0], abs=1e-5)
    assert per_channel.std(1, unbiased=False).tolist() == pytest.approx([1, 1, 1], abs=1e-5)


def test_normalizer_first_used_in_inference_mode_serves_training_after() -> None:
    """Its per-channel tensors are made once per device and dtype: one made under predict's inference
    mode could not be saved for a backward pass later in the same process."""
    norm = Normalizer((1.0, 2.0, 3.0), (2.0, 4.0, 8.0))
    with torch.inference_mode():
        norm(torch.zeros(1, 3, 2, 2))
    x = torch.zeros(1, 3, 2, 2, requires_grad=True)
    out = norm(x)
    out.sum().backward()
    assert out[0, :, 0, 0].tolist() == [-0.5, -0.5, -0.375]
    assert x.grad[0, :, 0, 0].tolist() == [0.5, 0.25, 0.125]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_normalizer_keeps_the_inputs_dtype_and_device(dtype) -> None:
    """Its cached statistics follow each input ("meta" stands in for a GPU: a tensor on another device fails)."""
    norm = Normalizer((1.0, 2.0, 3.0), (2.0, 4.0, 8.0))
    assert norm(torch.zeros(1, 3, 2, 2, dtype=dtype)).dtype == dtype
    assert norm(torch.zeros(1, 3, 2, 2, dtype=dtype, device="meta")).device.type == "meta"


def test_normalizer_of_a_constant_channel_is_finite() -> None:
    images = torch.full((2, 4, 4, 3), 7, dtype=torch.uint8)
    norm = Normalizer.fit(images)
    assert norm.mean == pytest.approx((7, 7, 7))
    assert all(s > 0 for s in norm.std)
    assert torch.isfinite(to_input(images, norm)).all()


def test_per_tile_input_standardises_each_tile_and_ignores_a_colour_cast() -> None:
    norm = Normalizer(per_tile=True)
    x = to_input(make_tiles(4, size=16).images, norm).double()
    assert x.mean((2, 3)).abs().max() < 1e-5 and (x.std((2, 3)) - 1).abs().max() < 1e-5  # each tile, each channel
    images = make_tiles(4, size=16).images.permute(0, 3, 1, 2).float() * 0.7 + 20  # 20-199: no clipping below
    cast = images * torch.tensor([0.8, 1.1, 1.2]).view(1, 3, 1, 1) + torch.tensor([15.0, -5.0, 30.0]).view(1, 3, 1, 1)
    assert torch.allclose(norm(cast), norm(images), atol=1e-4)  # a scene's brightness or tint: the same input
    assert not torch.allclose(Normalizer()(cast), Normalizer()(images))
    flat = to_input(torch.full((1, 8, 8, 3), 90, dtype=torch.uint8), norm)
    assert torch.equal(flat, torch.zeros_like(flat))  # no noise blown up from a flat tile
    assert Normalizer.of({"per_tile": True, "mean": [0] * 3, "std": [1] * 3}) == norm
    assert not Normalizer.of({"mean": [1, 2, 3], "std": [4, 5, 6]}).per_tile  # a model file from before


def test_jitter_is_seeded_and_bounded() -> None:
    tiles = make_tiles(4)
    plain = to_input(tiles.images, Normalizer())
    a = to_input(tiles.images, Normalizer(), jitter=0.1, generator=torch.Generator().manual_seed(0))
    b = to_input(tiles.images, Normalizer(), jitter=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, plain)
    assert a.min() >= 0 and a.max() <= 255
    assert torch.equal(to_input(tiles.images, Normalizer(), jitter=0.1), plain)  # no generator: off


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square, on the two spatial dims (1, 2) of x."""
    if k >= 4:
        x = x.flip(2)
    return torch.rot90(x, k % 4, (1, 2))


def test_augment_applies_one_dihedral_transform_to_each_pair() -> None:
    n, size = 64, 8
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 2, (n, size, size), generator=g, dtype=torch.uint8)
    images = torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)
    images[..., 0] = masks * 255  # channel 0 is the mask: alignment is visible in the image itself
    before_i, before_m = images.clone(), masks.clone()
    out_i, out_m = augment(images, masks, torch.Generator().manual_seed(5))
    assert torch.equal(images, before_i) and torch.equal(masks, before_m)  # inputs untouched
    assert out_i.shape == images.shape and out_m.shape == masks.shape
    assert out_i.dtype == torch.uint8 and out_m.dtype == torch.uint8
    assert torch.equal(out_i[..., 0], out_m * 255)  # mask still aligned with its image
    used = set()
    for i in range(n):
        matches = [
            k
            for k in range(8)
            if torch.equal(out_i[i], dihedral(images[i : i + 1], k)[0])
            and torch.equal(out_m[i], dihedral(masks[i : i + 1], k)[0])
        ]
        assert len(matches) == 1, (i, matches)  # random 8x8 tiles have no symmetry of their own
        used.add(matches[0])
    assert used == set(range(8))  # 64 draws: every transform appears


def test_augment_is_seeded() -> None:
    tiles = make_tiles(16)
    a = augment(tiles.images, tiles.masks, torch.Generator().manual_seed(1))
    b = augment(tiles.images, tiles.masks, torch.Generator().manual_seed(1))
    c = augment(tiles.images, tiles.masks, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_batches_augment_when_asked() -> None:
    tiles = make_tiles(16)
    tiles.images[..., 1] = tiles.masks * 255
    plain = list(batches(tiles, 16, torch.Generator().manual_seed(0)))
    aug = list(batches(tiles, 16, torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)))
    assert not torch.equal(plain[0][0], aug[0][0])
    assert torch.equal(aug[0][0][..., 1], aug[0][1] * 255)


def write_packed(root: Path, subsets: list[str]) -> tuple[np.ndarray, np.ndarray]:
    n = len(subsets)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    masks = rng.integers(0, 2, (n, 4, 4), dtype=np.uint8)
    (root / "packed").mkdir(parents=True)
    np.save(root / "packed" / "images.npy", images)
    np.save(root / "packed" / "masks.npy", masks)
    (root / "packed" / "sha256.json").write_text('{"pixel_size_m": 0.5}')
    names = [f"{100 + i}_sat_{i % 2}{i // 2}.jpg" for i in range(n)]
    pd.DataFrame({"image": names, "mask": [s.replace("sat", "mask") for s in names]}).to_csv(
        root / "index.csv", index=False
    )
    pd.DataFrame({"image": names, "scene": [100 + i for i in range(n)], "subset": subsets}).to_csv(
        root / "split.csv", index=False
    )
    return images, masks


SUBSETS = ["train", "test", "train", "val", "train", "test", "train"]


def test_load_split_returns_the_rows_of_each_subset(tmp_path: Path) -> None:
    images, masks = write_packed(tmp_path, SUBSETS)
    out = load_split(DataLayout(tmp_path), CPU)
    assert set(out) == {"train", "test", "val"}
    for subset in out:
        rows = [i for i, s in enumerate(SUBSETS) if s == subset]
        assert out[subset].images[:, 0, 0, 0].tolist() == rows
        assert np.array_equal(out[subset].images.numpy(), images[rows])
        assert np.array_equal(out[subset].masks.numpy(), masks[rows])
        assert out[subset].images.dtype == torch.uint8 and out[subset].images.device == CPU


def test_load_tiles_sorts_rows(tmp_path: Path) -> None:
    images, _ = write_packed(tmp_path, SUBSETS)
    tiles = load_tiles(DataLayout(tmp_path), np.array([5, 1, 3]), CPU)
    assert tiles.images[:, 0, 0, 0].tolist() == [1, 3, 5]


@pytest.mark.parametrize("change", ["reordered", "renamed", "shorter"])
def test_load_split_rejects_a_split_that_disagrees_with_the_index(tmp_path: Path, change: str) -> None:
    write_packed(tmp_path, SUBSETS)
    split = pd.read_csv(tmp_path / "split.csv")
    if change == "reordered":
        split = split.iloc[::-1]
    elif change == "renamed":
        split.loc[2, "image"] = "999_sat_00.jpg"
    else:
        split = split.iloc[:-1]
    split.to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(ForestsegError, match="does not match"):
        load_split(DataLayout(tmp_path), CPU)


@pytest.mark.parametrize("damage", ["other set's arrays", "masks missing", "images cut short", "digest missing"])
def test_load_split_refuses_arrays_that_are_not_the_index_s(tmp_path: Path, damage: str) -> None:
    """An index run killed between putting its arrays in place and writing index.csv leaves one set's
    arrays beside another's index and split: row i would be another tile, with no error."""
    write_packed(tmp_path, SUBSETS)
    images = tmp_path / "packed/images.npy"
    if damage == "other set's arrays":
        np.save(images, np.zeros((len(SUBSETS) + 3, 4, 4, 3), np.uint8))
        says = f"images.npy: holds {len(SUBSETS) + 3} tiles where .*index.csv lists {len(SUBSETS)}"
    elif damage == "masks missing":
        (tmp_path / "packed/masks.npy").unlink()
        says = "masks.npy: cannot be read .*; rerun `dvc repro index`"
    elif damage == "images cut short":
        images.write_bytes(images.read_bytes()[:200])
        says = "images.npy: cannot be read .*; rerun `dvc repro index`"
    else:
        (tmp_path / "packed/sha256.json").unlink()
        says = "sha256.json: cannot be read .*; rerun `dvc repro index`"
    with pytest.raises(ForestsegError, match=says):
        load_split(DataLayout(tmp_path), CPU)


@pytest.mark.parametrize(
    "text, says", [('{"images.npy": "ab', "JSONDecodeError"), ('{"images.npy": "ab"}', "KeyError"), ("[]", "TypeError")]
)
def test_a_damaged_digest_is_one_line_naming_it(tmp_path: Path, text: str, says: str) -> None:
    """A hand-edited or half-copied sha256.json was a traceback where the train stage reads the pixel size."""
    write_packed(tmp_path, SUBSETS)
    assert DataLayout(tmp_path).pixel_size_m() == 0.5
    (tmp_path / "packed/sha256.json").write_text(text)
    with pytest.raises(ForestsegError, match=f"sha256.json: cannot be read \\({says}: .*; rerun `dvc repro index`"):
        DataLayout(tmp_path).pixel_size_m()


def test_augment_keeps_the_shape_of_non_square_tiles() -> None:
    n, h, w = 64, 6, 10
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 2, (n, h, w), generator=g, dtype=torch.uint8)
    images = torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)
    images[..., 0] = masks * 255
    out_i, out_m = augment(images, masks, torch.Generator().manual_seed(5))
    assert out_i.shape == images.shape and out_m.shape == masks.shape
    assert torch.equal(out_i[..., 0], out_m * 255)  # still aligned
    used = set()
    for i in range(n):
        matches = [
            k
            for k in (0, 2, 4, 6)
            if torch.equal(out_m[i], dihedral(masks[i : i + 1], k)[0])
            and torch.equal(out_i[i], dihedral(images[i : i + 1], k)[0])
        ]
        assert len(matches) == 1, (i, matches)
        used.add(matches[0])
    assert used == {0, 2, 4, 6}  # identity, half turn, flip, flip + half turn


def test_scene_balanced_sampling_weighs_every_scene_alike() -> None:
    # scene 0 has 90 tiles, scene 1 has 10: a uniform draw would give scene 1 a tenth
    tiles = make_tiles(100)
    tiles = Tiles(tiles.images, tiles.masks, torch.tensor([0] * 90 + [1] * 10))
    drawn = torch.cat(
        [
            imgs[:, 0, 0, 0]
            for _ in range(20)
            for imgs, _ in batches(tiles, 25, torch.Generator().manual_seed(_), sampling="scene")
        ]
    )
    share = (drawn >= 90).double().mean().item()
    assert 0.45 < share < 0.55
    again = [imgs[:, 0, 0, 0] for imgs, _ in batches(tiles, 25, torch.Generator().manual_seed(3), sampling="scene")]
    assert torch.equal(
        torch.cat(again),
        torch.cat([i[:, 0, 0, 0] for i, _ in batches(tiles, 25, torch.Generator().manual_seed(3), sampling="scene")]),
    )


@pytest.mark.parametrize("sampling", ["scene", "scene_batch"])
def test_scene_sampling_needs_scenes(sampling: str) -> None:
    with pytest.raises(ForestsegError, match=f"train.sampling: {sampling} needs"):
        next(batches(make_tiles(), 4, torch.Generator(), sampling=sampling))


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_scene_batches_hold_one_scene_each_and_every_tile_once(batch_size: int) -> None:
    scenes = torch.tensor([3, 0, 0, 1, 3, 3, 0, 3, 3, 3, 1, 0, 3, 3, 0, 0, 3, 3, 3, 1])  # no scene 2
    tiles = make_tiles(len(scenes))
    tiles = Tiles(tiles.images, tiles.masks, scenes)
    got = [
        imgs[:, 0, 0, 0].long()
        for imgs, _ in batches(tiles, batch_size, torch.Generator().manual_seed(5), sampling="scene_batch")
    ]
    assert sorted(torch.cat(got).tolist()) == list(range(len(scenes)))
    assert all(0 < len(b) <= batch_size and len(set(scenes[b].tolist())) == 1 for b in got)
    # a scene of n tiles fills ceil(n / batch_size) batches, no more
    assert len(got) == sum(-(-int(n) // batch_size) for n in torch.bincount(scenes) if n)
    again = [
        i[:, 0, 0, 0].long()
        for i, _ in batches(tiles, batch_size, torch.Generator().manual_seed(5), sampling="scene_batch")
    ]
    assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True))
    other = [
        i[:, 0, 0, 0].long()
        for i, _ in batches(tiles, batch_size, torch.Generator().manual_seed(6), sampling="scene_batch")
    ]
    assert [b.tolist() for b in got] != [b.tolist() for b in other]  # the order is the seed's


def test_load_split_gives_tiles_their_scenes(tmp_path: Path) -> None:
    write_packed(tmp_path, SUBSETS)
    split = pd.read_csv(tmp_path / "split.csv")
    split["scene"] = ["07", "07", "8", "8", "9", "9", "9"]  # train rows 0, 2, 4, 6: scenes 07, 8, 9, 9
    split.to_csv(tmp_path / "split.csv", index=False)
    tiles = load_split(DataLayout(tmp_path), CPU)
    assert tiles["train"].scenes.tolist() == [0, 1, 2, 2] and tiles["test"].scenes.tolist() == [0, 1]
    assert tiles["test"].scene_names == ("07", "9")  # ids as written, leading zero kept (the report's names)


def test_zoom_keeps_the_mask_on_the_image_and_0_1() -> None:
    blocks = (torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8)
    masks = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 32x32 masks of 4x4 blocks
    x = masks[:, None].float().repeat(1, 3, 1, 1) * 255  # the image shows the mask
    zx, zm = zoom(x, masks, 0.5, torch.Generator().manual_seed(1))
    assert zm.dtype == torch.uint8 and set(zm.unique().tolist()) <= {0, 1}
    agree = ((zx[:, 0] > 127.5) == zm.bool()).double().mean().item()
    assert agree > 0.99
    assert not torch.equal(zm, masks)  # it did zoom


def test_zoom_never_pulls_zeros_in_at_the_tile_edges() -> None:
    x = torch.full((64, 3, 16, 16), 100.0)  # a constant tile: any view of it is 100 everywhere
    masks = torch.ones(64, 16, 16, dtype=torch.uint8)
    zx, zm = zoom(x, masks, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(zx, x) and torch.equal(zm, masks)


def test_zoom_by_one_is_the_identity() -> None:
    x = torch.rand(2, 3, 16, 16) * 255
    masks = (torch.rand(2, 16, 16) > 0.5).to(torch.uint8)
    zx, zm = zoom(x, masks, 0.0, torch.Generator())
    assert torch.allclose(zx, x, atol=1e-3) and torch.equal(zm, masks)


def test_photometric_is_label_safe_and_seeded() -> None:
    grey = torch.full((4, 3, 16, 16), 90.0)
    out = photometric(grey.clone(), 0.5, 1.0, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert torch.allclose(out, grey, atol=1e-3)  # no saturation to change, nothing to blur
    x = torch.rand(4, 3, 16, 16) * 255
    a = photometric(x.clone(), 0.5, 0.5, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    b = photometric(x.clone(), 0.5, 0.5, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.min() >= 0 and a.max() <= 255


def test_saturation_and_blur_draw_from_their_own_streams() -> None:
    """Turning saturation on leaves which tiles are blurred, and how much, as they were (and back)."""
    x = 80 + torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 80

    def gens() -> tuple[torch.Generator, torch.Generator]:
        return torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    blurred = photometric(x.clone(), 0.0, 0.5, *gens())
    both = photometric(x.clone(), 0.3, 0.5, *gens())
    changed = (blurred != x).flatten(1).any(1)
    assert 0 < changed.sum() < 8  # some tiles blurred, not all
    assert torch.equal(both.sub(x).abs().flatten(1).amax(1) > 0, torch.ones(8, dtype=torch.bool))
    saturated = photometric(x.clone(), 0.3, 0.0, *gens())
    assert torch.allclose(photometric(saturated, 0.0, 0.5, *gens()), both, atol=1e-4)  # blur as without saturation


@pytest.mark.parametrize("sigma", [1.0, 1.5])  # (at 0.5 px, sampling the Gaussian on pixels narrows it itself)
def test_the_blur_spreads_a_line_by_the_sigma_it_draws(sigma: float) -> None:
    """A 1-px line blurred spreads as a Gaussian of `sigma` px: a kernel cut at 2 px blurred at most 1.2 px."""
    x = torch.zeros(1, 1, 1, 41)
    x[..., 20] = 1.0
    profile = gaussian_blur(x.expand(1, 1, 41, 41).contiguous(), sigma)[0, 0, 20]
    offsets = torch.arange(41, dtype=torch.float32) - 20
    spread = float((profile * offsets**2).sum() / profile.sum()) ** 0.5
    assert spread == pytest.approx(sigma, rel=0.03)


def test_saturation_scales_colour_about_each_pixels_luma() -> None:
    """The grey a pixel keeps is its luma (ITU-R 601 weights), so brightness is left as it was; each
    tile's colour is scaled by one factor in 1 +- saturation."""
    x = 80 + torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 80  # far from 0 and 255
    out = photometric(x.clone(), 0.5, 0.0, torch.Generator().manual_seed(1), None)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    luma = (x * weights).sum(1, keepdim=True)
    assert torch.allclose((out * weights).sum(1, keepdim=True), luma, atol=1e-3)
    factor = ((out - luma) / (x - luma)).flatten(1)  # one factor per tile
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-2)
    assert 0.5 <= factor.min() and factor.max() <= 1.5 and factor.max() - factor.min() > 0.5


def test_cutmix_box_sides_span_a_quarter_to_three_quarters_of_the_tiles() -> None:
    n, h, w = 400, 40, 60
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).clone()
    mx, _ = cutmix(x, torch.zeros(n, h, w, dtype=torch.uint8), 1.0, torch.Generator().manual_seed(0))
    pasted = mx[:, 0] != x[:, 0]
    rows, cols = pasted.any(2).sum(1) / h, pasted.any(1).sum(1) / w  # each box's sides, as tile shares
    for side in (rows, cols):
        assert side.min() >= 0.25 - 1 / 40 and side.max() <= 0.75, (side.min(), side.max())
        assert side.min() < 0.3 and side.max() > 0.7  # the whole range is drawn


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_cutmix_pastes_a_box_of_the_next_tile_with_its_mask(p: float) -> None:
    n, size = 8, 32
    masks = (torch.rand(n, size, size, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8)
    # Each tile's image tells its index and its mask: channel 0 = 10 x index, channel 1 = 100 x mask.
    x = torch.stack([torch.full((size, size), 10.0 * i) for i in range(n)])[:, None].repeat(1, 3, 1, 1)
    x[:, 1] = 100.0 * masks
    mx, mm = cutmix(x, masks, p, torch.Generator().manual_seed(1))
    source = (mx[:, 0] / 10).round().long()  # which tile each pixel now comes from
    own = torch.arange(n)[:, None, None]
    assert ((source == own) | (source == (own + 1) % n)).all()  # itself or the next tile, nothing else
    assert torch.equal(mm, (mx[:, 1] > 50).to(torch.uint8))  # the mask travelled with its pixels
    pasted = (source != own).flatten(1)
    if p == 0.0:
        assert torch.equal(mx, x) and torch.equal(mm, masks)
    elif p == 1.0:
        share = pasted.double().mean(1)
        assert ((share >= 0.25**2 - 0.01) & (share <= 0.75**2 + 0.01)).all()  # a box of 25-75 % sides
        for i in range(n):  # a box: the pasted pixels fill their bounding rectangle
            rows, cols = torch.nonzero(source[i] != i, as_tuple=True)
            assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    else:
        assert 0 < pasted.any(1).sum() < n
    # Seeded: the same generator state gives the same result.
    again = cutmix(x, masks, p, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], mx) and torch.equal(again[1], mm)


@pytest.mark.parametrize("shape, chunk", [((5, 6, 10, 3), 2), ((3, 2048, 2100, 3), None)])  # None: one tile a step
def test_normalizer_fit_of_non_square_tiles_is_the_mean_and_std_of_every_pixel(shape, chunk) -> None:
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalizer.fit(images, chunk=chunk)
    x = images.reshape(-1, 3).double()
    assert norm.mean == pytest.approx(x.mean(0).tolist()) and norm.std == pytest.approx(
        x.std(0, unbiased=False).tolist()
    )


def test_a_nearly_flat_tile_is_not_blown_up_by_per_tile_normalisation() -> None:
    """Per-tile std has a floor of 1 grey level: values 100/101 stay within +-0.5, not +-1."""
    x = torch.full((1, 3, 8, 8), 100.0)
    x[..., ::2, :] = 101.0
    out = Normalizer(per_tile=True)(x)
    assert out.abs().max().item() == pytest.approx(0.5)


def test_jitter_gains_stay_in_their_documented_ranges() -> None:
    j = 0.4
    grey = torch.full((400, 4, 4, 3), 100, dtype=torch.uint8)
    x = to_input(grey, Normalizer(), jitter=j, generator=torch.Generator().manual_seed(0))[:, :, 0, 0]
    ratio = x.amax(1) / x.amin(1)  # the channels' gains: within 1 +- j/2 of each other
    assert ratio.max() <= (1 + j / 2) / (1 - j / 2) + 1e-4
    assert ratio.max() > 1 + j / 2
    assert x.min() >= 100 * (1 - j) * (1 - j / 2) - 1e-3 and x.max() <= 100 * (1 + j) * (1 + j / 2) + 1e-3


@pytest.mark.parametrize("p", [0.2, 0.8])
def test_blur_blurs_a_share_of_the_tiles_near_its_probability(p: float) -> None:
    x = torch.rand(400, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255
    out = photometric(x.clone(), 0.0, p, None, torch.Generator().manual_seed(1))
    assert (out != x).flatten(1).any(1).double().mean().item() == pytest.approx(p, abs=0.07)


def test_zoom_moves_its_centre_about_the_tile() -> None:
    ramp = torch.arange(32.0).expand(64, 3, 32, 32).contiguous()
    zx, _ = zoom(ramp, torch.zeros(64, 32, 32, dtype=torch.uint8), 1.0, torch.Generator().manual_seed(0))
    moved = zx.mean((1, 2, 3)) - ramp.mean()
    assert moved.min() < -1 and moved.max() > 1


def test_scene_batches_come_in_a_shuffled_order_of_scenes() -> None:
    scenes = torch.arange(6).repeat_interleave(4)
    tiles = make_tiles(len(scenes))
    tiles = Tiles(tiles.images, tiles.masks, scenes)
    g = torch.Generator().manual_seed(0)
    orders = [
        [int(scenes[imgs[0, 0, 0, 0].long()]) for imgs, _ in batches(tiles, 2, g, sampling="scene_batch")]
        for _ in range(3)
    ]
    assert all(o != sorted(o) for o in orders)
    assert len({o[-1] for o in orders}) > 1  # not the same scene last every epoch


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("mirror", [False, True])
def test_unflip_turn_undoes_flip_turn(k: int, mirror: bool) -> None:
    x = torch.arange(2 * 5 * 5.0).view(2, 5, 5)
    assert torch.equal(unflip_turn(flip_turn(x, k, mirror), k, mirror), x)
    assert torch.equal(flip_turn(x, k, mirror), dihedral(x, k + 4 * mirror))


def test_zoom_keeps_a_full_mask_full_at_the_largest_scale() -> None:
    x = torch.full((4096, 3, 2, 2), 100.0)  # 2x2 tiles: every sample is near a corner
    masks = torch.ones(4096, 2, 2, dtype=torch.uint8)
    zx, zm = zoom(x, masks, 1.99, torch.Generator().manual_seed(0))
    assert torch.allclose(zx, x) and torch.equal(zm, masks)


def test_cutmix_boxes_reach_the_far_corner_of_the_tile() -> None:
    """A box lies anywhere inside the tile: over many draws the bottom-right quarter is mixed often."""
    from forestseg.loader import cutmix

    b, h = 2000, 32
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, h, h).contiguous()  # each tile its index
    masks = torch.zeros(b, h, h, dtype=torch.uint8)
    mixed, _ = cutmix(x, masks, 1.0, torch.Generator().manual_seed(0))
    pasted = mixed[:, 0] != x[:, 0]
    assert pasted[:, h - 9, h - 9].float().mean() > 0.15 and pasted[:, 8, 8].float().mean() > 0.15


def test_blur_draws_its_sigma_from_half_to_one_and_a_half_pixels(monkeypatch) -> None:
    import forestseg.loader as loader

    sigmas = []
    real = loader.gaussian_blur
    monkeypatch.setattr(loader, "gaussian_blur", lambda x, sigma: sigmas.append(sigma) or real(x, sigma))
    x = torch.zeros(2, 3, 8, 8)
    for seed in range(40):
        loader.photometric(x, 0.0, 1.0, None, torch.Generator().manual_seed(seed))
    assert len(sigmas) == 40 and 0.5 <= min(sigmas) < 0.6 and 1.4 < max(sigmas) <= 1.5


def test_zoomed_views_reach_the_far_side_of_the_tile() -> None:
    """The centre moves as far as the view stays inside: at factors up to 2 a view's left edge reaches
    nearly half the tile's width (W (1 - 1 / factor))."""
    from forestseg.loader import zoom

    b, w = 2000, 16
    x = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(b, 1, w, w).contiguous()  # value = column
    out, _ = zoom(x, torch.zeros(b, w, w, dtype=torch.uint8), 1.0, torch.Generator().manual_seed(0))
    left = out[:, 0, 0, 0]
    assert left.max() > 7.0 and left.min() == 0.0


@pytest.mark.parametrize("sigma, reach", [(0.5, 2), (1.0, 3), (1.5, 5)])
def test_the_blur_kernel_reaches_three_sigma_rounded(sigma: float, reach: int) -> None:
    """Cut at 3 sigma rounded, not truncated (0.5 px: 2 px, not 1; 1.5 px: 5, not 4)."""
    x = torch.zeros(1, 1, 1, 21)
    x[..., 10] = 1.0
    profile = gaussian_blur(x.expand(1, 1, 21, 21).contiguous(), sigma)[0, 0, 10]
    assert profile[10 + reach] > 0 and profile[10 - reach] > 0
    assert profile[10 + reach + 1] == 0 and profile[10 - reach - 1] == 0


def test_a_zoomed_mask_sampled_half_way_is_not_forest() -> None:
    """The cut is 'above 0.5': a mask and its complement, zoomed alike, never both call a pixel forest."""
    masks = (torch.arange(256) % 2).to(torch.uint8).expand(1, 2, 256).contiguous()  # forest every other column
    _, forest = zoom(masks[:, None].float(), masks, 0.3, torch.Generator().manual_seed(248))
    _, other = zoom(masks[:, None].float(), 1 - masks, 0.3, torch.Generator().manual_seed(248))
    assert (forest & other).sum() == 0
    assert (forest | other).sum() < forest.numel()  # this draw samples some pixels at exactly 0.5


def test_scene_batches_keep_each_scenes_tiles_in_the_epochs_shuffled_order() -> None:
    """Grouped by a stable sort of the shuffled tiles: each scene's batches are its tiles in the shuffle's
    order, cut every batch_size (an unstable sort reordered them on sets of thousands of tiles)."""
    from forestseg.loader import scene_batches

    scenes = torch.randint(0, 3, (5000,), generator=torch.Generator().manual_seed(1))
    got = scene_batches(scenes, 16, torch.Generator().manual_seed(0))
    shuffled = torch.randperm(len(scenes), generator=torch.Generator().manual_seed(0))  # the first draw
    expected = [tuple(c.tolist()) for s in range(3) for c in shuffled[scenes[shuffled] == s].split(16)]
    assert sorted(tuple(b.tolist()) for b in got) == sorted(expected)
