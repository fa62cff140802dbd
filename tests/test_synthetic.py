"""forestseg.synthetic.generate: a seeded synthetic set written in the exact Kaggle layout."""

from __future__ import annotations

import collections
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, dead_temp_prefix, make_set
from PIL import Image, ImageDraw

import forestseg.synthetic
from forestseg.config import SynthConfig
from forestseg.errors import ForestsegError
from forestseg.synthetic import generate, render_scene, scene_tiles

IMAGE = re.compile(r"^(\d+)_sat_(\d\d)\.jpg$")
MASK = re.compile(r"^(\d+)_mask_(\d\d)\.jpg$")


def meta_rows(root: Path) -> list[tuple[str, str]]:
    header, *rows = (root / "meta_data.csv").read_text().splitlines()
    assert header == "image,mask"
    return [tuple(r.split(",")) for r in rows]


def snapshot(root: Path) -> dict[str, bytes]:
    """meta_data.csv and a few tiles, byte for byte."""
    rows = meta_rows(root)
    files = ["meta_data.csv"] + [f"images/{i}" for i, _ in rows[:3]] + [f"masks/{m}" for _, m in rows[-3:]]
    return {f: (root / f).read_bytes() for f in files}


def test_same_seed_gives_same_bytes(tmp_path):
    a = snapshot(make_set(tmp_path / "a", seed=7))
    b = snapshot(make_set(tmp_path / "b", seed=7))
    assert a == b


def test_other_seed_gives_other_data(tmp_path):
    a = snapshot(make_set(tmp_path / "a", seed=7))
    b = snapshot(make_set(tmp_path / "b", seed=8))
    assert a["meta_data.csv"] != b["meta_data.csv"]
    assert not set(a.values()) & set(b.values())


def test_layout_is_images_masks_and_meta_only(tiny_set):
    assert sorted(p.name for p in tiny_set.iterdir()) == ["images", "masks", "meta_data.csv"]


@pytest.mark.parametrize("scenes, grid", [(1, 1), (3, 2), (2, 10)])
def test_writes_one_row_and_one_pair_per_tile(tmp_path, scenes, grid):
    root = tmp_path / "set"
    n = generate(root, SynthConfig(scenes=scenes, grid=grid, tile_size=16, seed=0))
    rows = meta_rows(root)
    assert n == len(rows) == scenes * grid * grid
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(i for i, _ in rows)
    assert sorted(p.name for p in (root / "masks").iterdir()) == sorted(m for _, m in rows)


def test_names_follow_the_kaggle_pattern(tiny_set):
    for image, mask in meta_rows(tiny_set):
        i, m = IMAGE.match(image), MASK.match(mask)
        assert i and m, (image, mask)
        assert i.groups() == m.groups(), "mask of another scene or tile"


def test_every_tile_position_of_every_scene_is_present(tmp_path):
    root = make_set(tmp_path / "set", scenes=3, grid=3)
    tiles = collections.defaultdict(set)
    for image, _ in meta_rows(root):
        scene, rc = IMAGE.match(image).groups()
        tiles[scene].add(rc)
    assert len(tiles) == 3
    assert all(rcs == {f"{r}{c}" for r in range(3) for c in range(3)} for rcs in tiles.values())


def test_tiles_are_rgb_of_the_configured_size(tmp_path):
    root = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=48)
    for image, mask in meta_rows(root):
        with Image.open(root / "images" / image) as im, Image.open(root / "masks" / mask) as mk:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (48, 48))
            assert (mk.format, mk.size) == ("JPEG", (48, 48))


def test_masks_are_near_0_or_255(tiny_set):
    values = np.concatenate([np.asarray(Image.open(tiny_set / "masks" / m)).ravel() for _, m in meta_rows(tiny_set)])
    assert ((values > 20) & (values < 235)).mean() < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_scene_has_both_forest_and_other_land(tmp_path, seed):
    root = make_set(tmp_path / "set", scenes=4, grid=2, seed=seed)
    fractions = collections.defaultdict(list)
    for image, mask in meta_rows(root):
        forest = np.asarray(Image.open(root / "masks" / mask).convert("L")) >= 128
        fractions[IMAGE.match(image)[1]].append(forest.mean())
    per_scene = {s: float(np.mean(f)) for s, f in fractions.items()}
    assert all(0.05 < f < 0.95 for f in per_scene.values()), per_scene


def test_regenerating_replaces_the_folder(tmp_path):
    root = make_set(tmp_path / "set", scenes=3, grid=3, seed=0)
    (root / "images" / "stale_sat_00.jpg").write_bytes(b"old")
    (root / "notes.txt").write_text("old")
    make_set(root, scenes=2, grid=2, seed=1)

    rows = meta_rows(root)
    assert len(rows) == 2 * 2 * 2
    assert sorted(p.name for p in root.iterdir()) == ["images", "masks", "meta_data.csv"]
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(i for i, _ in rows)
    assert sorted(p.name for p in (root / "masks").iterdir()) == sorted(m for _, m in rows)


def test_regenerating_leaves_no_temp_folders_beside_it(tmp_path):
    make_set(tmp_path / "set", seed=0)
    make_set(tmp_path / "set", seed=1)
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_an_old_set_left_under_this_processs_own_pid_does_not_stop_generate(tmp_path):
    """A killed run's swapped-out set, named by a pid this process now has (pids recur in containers)."""
    from forestseg.io import temp_prefix

    make_set(tmp_path / "set", seed=0)
    left = tmp_path / f"{temp_prefix('set')}old"
    (left / "images").mkdir(parents=True)
    (left / "images" / "a.jpg").write_bytes(b"x")
    make_set(tmp_path / "set", seed=1)  # the set is swapped out to where the leftover is
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


@pytest.mark.parametrize("left", ["tmpabc123", "old"])  # killed while writing, or while swapping the folders
def test_what_a_killed_generate_left_is_git_ignored_and_removed_next_time(tmp_path, left, capsys):
    leftover = tmp_path / f"{dead_temp_prefix('set')}{left}"
    (leftover / "images").mkdir(parents=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", f"data/{leftover.name}"], cwd=REPO)
    assert ignored.returncode == 0  # never shown by git status, never committed by dvc exp run
    make_set(tmp_path / "set", seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    said = f"note: removed 1 temp file(s) or folder(s) that a killed earlier run left in {tmp_path}"
    assert said in capsys.readouterr().out  # said, as the stages say what they removed


def test_the_set_gets_the_usual_folder_mode(tmp_path: Path) -> None:
    """Not mkdtemp's owner-only 0700: other users of a shared machine read the set."""
    import os

    umask = os.umask(0o022)  # the usual one, whatever this process was given: 0755, not 0700
    try:
        generate(tmp_path / "synthetic", SynthConfig(scenes=1, grid=1, tile_size=16))
    finally:
        os.umask(umask)
    assert (tmp_path / "synthetic").stat().st_mode & 0o777 == 0o755


def test_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    """A file where the output's folder goes (or a full disk) is a ForestsegError naming the path."""
    (tmp_path / "data").write_text("a file, not a folder")
    with pytest.raises(
        ForestsegError,
        match=r"data/synthetic: cannot write the synthetic set \(.*data\): a file is where a folder goes; choose another",
    ):
        generate(tmp_path / "data" / "synthetic", SynthConfig(scenes=1, grid=1, tile_size=16))


def test_scene_tiles_are_the_seeded_scenes_cut_in_2x2_tiles_with_their_own_masks():
    images, masks = scene_tiles(5, 2, 32)
    assert images.shape == (8, 32, 32, 3) and masks.shape == (8, 32, 32)
    for s, stream in enumerate(np.random.SeedSequence(5).spawn(2)):
        image, mask = render_scene(np.random.default_rng(stream), 64)
        for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            cut = np.s_[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32]
            assert np.array_equal(images[4 * s + k], image[cut]) and np.array_equal(masks[4 * s + k], mask[cut])
    assert not np.array_equal(scene_tiles(6, 2, 32)[0], images)  # another seed, other scenes


def test_roads_are_never_forest(monkeypatch):
    """Every road drawn across the scene (here: a band along row 32) is cut out of the forest mask."""
    drawn, real_draw = [], ImageDraw.Draw

    def draw(im):
        real = real_draw(im)

        class Road:
            def line(self, xy, fill, width):
                drawn.append(xy)
                real.line([(0, 32), (63, 32)], fill=fill, width=4)

        return Road()

    monkeypatch.setattr(forestseg.synthetic.ImageDraw, "Draw", draw)
    forest_under_road = 0
    for seed in range(8):
        before = len(drawn)
        _, mask = render_scene(np.random.default_rng(seed), 64)
        if len(drawn) > before:
            forest_under_road += 1
            assert not mask[31:34].any(), seed
    assert forest_under_road  # some seed drew a road


def test_masks_are_3_channel_like_the_kaggle_set_s(tmp_path: Path):
    root = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=32)
    for path in (root / "masks").iterdir():
        with Image.open(path) as mk:
            assert (mk.format, mk.mode) == ("JPEG", "RGB")


def test_a_stop_between_the_two_renames_puts_the_old_set_back(tmp_path, monkeypatch):
    """The old set is moved aside, then the new one in: a Ctrl-C or the stage's SIGTERM between the two
    had the `finally` delete the new set, leaving neither at the folder (the old one then went as litter)."""
    root = make_set(tmp_path / "set", scenes=2, grid=2, seed=0)
    before = snapshot(root)
    real, calls = forestseg.synthetic.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new set's rename
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(forestseg.synthetic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        make_set(root, scenes=3, grid=2, seed=1)
    monkeypatch.undo()
    assert snapshot(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_the_synthetic_set_is_these_bytes(tmp_path: Path) -> None:
    """The default pipeline trains on this set: a change to its scenes, noise, rounding, ids, names or JPEG
    quality changes every result, so it is pinned here (numpy and Pillow are pinned in pyproject.toml; a
    deliberate change updates these digests with dvc.lock's)."""
    import hashlib

    generate(tmp_path / "s", SynthConfig(scenes=2, grid=2, tile_size=32, seed=0))
    files = sorted(p for p in (tmp_path / "s").rglob("*") if p.is_file())
    digest = hashlib.sha256(
        b"".join(p.relative_to(tmp_path / "s").as_posix().encode() + b"\0" + p.read_bytes() for p in files)
    )
    assert digest.hexdigest() == "5120e967bab94a362034c15568a9d5214c65691f15b08df8a247cbd13c8b9b67"
    image, mask = render_scene(np.random.default_rng(0), 64)
    assert hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest() == (
        "a56667fac5b5982f9c73f5102a3f32e61af46ad9860c4626ad0d8d43a06a3064"
    )
    # <scene>_sat_<row><col>: tile 01 is the scene's first row, second column
    scene = (tmp_path / "s/meta_data.csv").read_text().splitlines()[1].split("_")[0]
    rendered, _ = render_scene(np.random.default_rng(np.random.SeedSequence(0).spawn(2)[0]), 64)
    with Image.open(tmp_path / f"s/images/{scene}_sat_01.jpg") as im:
        tile = np.asarray(im, np.float32)
    off = {
        (r, c): np.abs(tile - rendered[32 * r : 32 * r + 32, 32 * c : 32 * c + 32]).mean()
        for r in (0, 1)
        for c in (0, 1)
    }
    assert min(off, key=off.get) == (0, 1), off  # JPEG's loss aside, the quarter it was cut from
