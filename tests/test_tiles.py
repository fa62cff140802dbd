"""`forestseg tile`: large labelled scenes (GeoTIFFs, pictures) cut into a Kaggle-layout folder that the index reads."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from test_geo import cli, random_checkpoint, with_nodata_corner, write_raster

from forestseg.config import DataConfig
from forestseg.dataset import build_index, scene_of
from forestseg.errors import ForestsegError
from forestseg.layout import DataLayout
from forestseg.tiles import TileOptions, find_pairs, scene_ids, tile_pairs

H, W = 520, 600  # 2 x 2 whole 256-px tiles and edge strips


@pytest.fixture
def photo() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 256, (H, W, 3), dtype=np.uint8)  # 0 is the nodata value


@pytest.fixture
def truth() -> np.ndarray:
    values = np.zeros((H, W, 1), np.uint8)
    values[100:400, 50:500] = 3  # the forest class id
    return values


def pairs(root: Path, photo: np.ndarray, truth: np.ndarray, **truth_kw) -> list[tuple[Path, Path]]:
    image = write_raster(root / "images" / "a.tif", photo)
    mask = write_raster(root / "masks" / "a.tif", truth, **{"nodata": None, **truth_kw})
    return [(image, mask)]


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_tiles_hold_the_rasters_pixels_and_truth_and_skip_nodata(photo, truth, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    done = tile_pairs(
        "raster", pairs(tmp_path, with_nodata_corner(photo), truth), out, TileOptions(), log=lambda s: None
    )
    meta = pd.read_csv(out / "meta_data.csv")
    # the top-left tile holds the nodata corner: skipped; the others in row-major order
    assert list(meta["image"]) == ["1_sat_0001.png", "1_sat_0002.png", "1_sat_0003.png"]
    assert list(meta["mask"]) == ["1_mask_0001.png", "1_mask_0002.png", "1_mask_0003.png"]
    for k, (r, c) in zip((1, 2, 3), ((0, 1), (1, 0), (1, 1))):
        rows, cols = slice(r * 256, r * 256 + 256), slice(c * 256, c * 256 + 256)
        assert np.array_equal(png(out / "images" / f"1_sat_{k:04d}.png"), photo[rows, cols])
        assert np.array_equal(png(out / "masks" / f"1_mask_{k:04d}.png"), np.where(truth[rows, cols, 0], 255, 0))
    (r,) = done["scenes"]
    assert (r["tiles"], r["skipped_nodata"], r["scene"]) == (3, 1, 1)
    written = [truth[r0 : r0 + 256, c0 : c0 + 256, 0] for r0, c0 in ((0, 256), (256, 0), (256, 256))]
    assert r["forest_share"] == pytest.approx(sum(int((t != 0).sum()) for t in written) / (3 * 256**2))
    assert r["edge_share"] == pytest.approx(1 - 4 * 256**2 / (H * W))
    assert r["pixel_size_m"] == pytest.approx(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks", "tiles"]  # no temp folder left


def test_the_index_reads_the_tiles_as_one_scene(photo, truth, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    tile_pairs("raster", pairs(tmp_path, photo, truth), out, TileOptions(first_scene=900), log=lambda s: None)
    layout = DataLayout(tmp_path / "packed")
    index, report = build_index(out, layout.images, layout.masks)
    assert report["valid"] == 4 and not report["skipped_pairs"]
    assert {scene_of(name) for name in index["image"]} == {"900"}
    masks = np.load(layout.masks, mmap_mode="r")
    assert masks.shape == (4, 256, 256) and masks[0].sum() == (truth[:256, :256, 0] > 0).sum()


def test_resampled_to_a_pixel_size_by_averaging_and_truth_by_nearest(photo, truth, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    done = tile_pairs("raster", pairs(tmp_path, photo, truth), out, TileOptions(pixel_size_m=1.0), log=lambda s: None)
    assert done["tiles"] == 1 and done["scenes"][0]["grid"] == [H // 2, W // 2]
    image = png(out / "images" / "1_sat_0000.png").astype(float)
    means = photo[:512, :512].reshape(256, 2, 256, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(image - means).max() <= 1  # GDAL's average, rounded
    assert np.array_equal(png(out / "masks" / "1_mask_0000.png"), np.where(truth[:512:2, :512:2, 0], 255, 0))


def test_pixels_within_a_percent_of_the_pixel_size_are_kept_as_they_are(photo, truth, tmp_path: Path) -> None:
    """As predict reads them: a resampling by a fraction of a pixel would only blur the photo."""
    found = pairs(tmp_path, photo, truth, pixel=0.502)
    write_raster(found[0][0], photo, pixel=0.502)
    done = tile_pairs("raster", found, tmp_path / "tiles", TileOptions(pixel_size_m=0.5), log=lambda s: None)
    assert done["scenes"][0]["grid"] == [H, W] and done["scenes"][0]["pixel_size_m"] == 0.5
    assert np.array_equal(png(tmp_path / "tiles" / "images" / "1_sat_0003.png"), photo[256:512, 256:512])


def test_a_truth_on_a_coarser_grid_is_read_on_the_images(photo, tmp_path: Path) -> None:
    coarse = np.zeros((H // 2, W // 2, 1), np.uint8)
    coarse[40:200, 30:250] = 1
    out = tmp_path / "tiles"
    tile_pairs("raster", pairs(tmp_path, photo, coarse, pixel=1.0), out, TileOptions(), log=lambda s: None)
    fine = np.repeat(np.repeat(coarse[..., 0], 2, 0), 2, 1)
    assert np.array_equal(png(out / "masks" / "1_mask_0003.png"), np.where(fine[256:512, 256:512], 255, 0))


def test_a_truth_of_forest_on_nodata_is_noted_as_giving_all_forest_tiles(photo, tmp_path: Path) -> None:
    mask = np.full((H, W, 1), 255, np.uint8)
    mask[:, :300] = 1  # forest polygons burnt on a nodata background (255): no pixel with data is not forest
    said = []
    tile_pairs("raster", pairs(tmp_path, photo, mask, nodata=255), tmp_path / "tiles", TileOptions(), log=said.append)
    assert any("every pixel with data is forest" in s and "every tile written is all forest" in s for s in said), said


@pytest.mark.parametrize("forest_in_every_tile", [False, True])
def test_a_no_forest_raster_whose_nodata_hides_its_forest_stops(photo, tmp_path: Path, forest_in_every_tile) -> None:
    mask = np.zeros((H, W, 1), np.uint8)
    mask[:, 300:] = 255  # a 0/255 mask tagged nodata 255: its forest reads as no data
    if forest_in_every_tile:  # every tile skipped: the nodata is still the reason given, not the tiles' size
        mask[::200, ::200] = 255
    with pytest.raises(ForestsegError, match=r"masks/a.tif: no forest pixel with data .* unset the nodata"):
        tile_pairs(
            "raster", pairs(tmp_path, photo, mask, nodata=255), tmp_path / "tiles", TileOptions(), log=lambda s: None
        )
    assert not (tmp_path / "tiles").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("classes", r"masks/a.tif: holds 2 values besides 0"),
        ("exists", r"-o .*tiles: already exists"),
        ("no crs", r"images/a.tif: has no georeference; give it its CRS and grid, or save it as a .png"),
        # said the same whatever the picture reader would make of it: tile never reads a TIFF as a picture
        ("no crs, tagged bgr", r"images/a.tif: has no georeference; give it its CRS and grid, or save it as a .png"),
        ("oblong", r"pixels are 0.5 x 0.6 m, not square .* --pixel-size"),
        ("small", r"no whole 256-px tile with data in 1 scene"),
        ("size", r"--size 8: a tile needs at least 16 pixels"),
    ],
)
def test_bad_input_stops_with_one_line_and_writes_nothing(
    case: str, message: str, photo, truth, tmp_path: Path
) -> None:
    out = tmp_path / "tiles"
    if case == "classes":
        truth[0:300, 0:300] = 5
    if case == "exists":
        out.mkdir()
    if case == "small":
        photo, truth = photo[:200, :200], truth[:200, :200]
    found = pairs(tmp_path, photo, truth)
    if case.startswith("no crs"):
        Image.fromarray(photo).save(found[0][0])  # a TIFF with no georeference
    if case == "no crs, tagged bgr":
        with rasterio.open(found[0][0], "r+") as ds:
            ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    if case == "oblong":
        for path in found[0]:
            with rasterio.open(path, "r+") as ds:
                ds.transform = from_origin(500000, 5000000, 0.5, 0.6)
    with pytest.raises(ForestsegError, match=message):
        tile_pairs("raster", found, out, TileOptions(size=8 if case == "size" else 256), log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks"] + (["tiles"] if case == "exists" else [])


def test_cli_names_a_link_to_nothing_as_its_output_before_cutting(photo, tmp_path: Path, capsys) -> None:
    Image.fromarray(photo).save(tmp_path / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "7_mask.png")
    (tmp_path / "tiles").symlink_to(tmp_path / "gone/tiles")
    assert cli("tile", str(tmp_path), "-o", str(tmp_path / "tiles")) == 2
    out, err = capsys.readouterr()
    assert err == (
        f"error: -o {tmp_path / 'tiles'}: is a link to {tmp_path / 'gone/tiles'}, which does not exist; "
        "remove the link, or give another -o (tile makes a new folder)\n"
    )
    assert out == "" and not (tmp_path / "gone").exists()  # nothing cut


@pytest.mark.parametrize("command", ["tile", "evaluate"])
def test_a_file_given_as_the_data_folder_is_said_as_a_file(tmp_path: Path, capsys, command: str) -> None:
    """It was "no such folder", of a file that is there."""
    (tmp_path / "meta_data.csv").write_text("image,mask\n")
    argv = ["tile", str(tmp_path / "meta_data.csv"), "-o", str(tmp_path / "t")]
    if command == "evaluate":
        argv = ["evaluate", str(tmp_path / "model.pt"), str(tmp_path / "meta_data.csv")]
        random_checkpoint(tmp_path / "model.pt")
    assert cli(*argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'meta_data.csv'}: is a file, not a folder; give ")


def test_cli_refuses_an_output_name_that_is_not_utf8_before_cutting(photo, tmp_path: Path, capsys) -> None:
    """Its path goes into params.yaml as data.source, which must be UTF-8: it was cut, then the printed
    `dvc exp run -S data.source=...` could not be run."""
    Image.fromarray(photo).save(tmp_path / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "7_mask.png")
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/tiles\xe9"))
    assert cli("tile", str(tmp_path), "-o", str(out)) == 2
    printed, err = capsys.readouterr()
    assert err == (
        f"error: -o {str(out)!r}: its name is not UTF-8 text, which params.yaml needs for data.source (and GDAL "
        "for GeoTIFFs); choose another folder\n"
    )
    assert printed == "" and not out.exists()


def test_cli_says_how_to_train_on_deepglobe_tiles_and_quotes_an_odd_path_for_dvc(
    photo, tmp_path: Path, capsys, monkeypatch
) -> None:
    Image.fromarray(photo).save(tmp_path / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "7_mask.png")
    (tmp_path / ".dvc").mkdir()  # a DVC project: the last line adds the folder to it
    monkeypatch.chdir(tmp_path)
    assert cli("tile", ".", "-o", "data/my é tiles") == 0
    *_, last = capsys.readouterr().out.splitlines()
    assert last == (
        "train on them: dvc add 'data/my é tiles' && dvc exp run -S \"data.source='data/my é tiles'\" "
        "-S data.masks=colors -S 'data.forest=[[0, 255, 0]]' -S split.by=tile"  # one scene: see the test below
    )


def test_deepglobe_named_tiles_of_grey_masks_are_not_told_deepglobe_s_colours(photo, tmp_path: Path, capsys) -> None:
    """DeepGlobe's file names with grey 0/255 masks: the last line adds no data.masks=colors (the index
    would have refused the grey masks read as colours), and says the masks are kept as they are."""
    Image.fromarray(photo).save(tmp_path / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "7_mask.png")
    assert cli("tile", str(tmp_path), "-o", str(tmp_path / "tiles")) == 0
    out = capsys.readouterr().out
    assert "data.masks=colors" not in out and "masks kept as they are: add -S data.masks=" in out, out


def test_one_scene_is_trained_on_with_a_split_of_its_tiles_and_a_note(photo, tmp_path: Path, capsys) -> None:
    """The printed command stopped at the split stage: split.by scene needs 2 scenes. Two get no note."""
    for scenes in (1, 2):
        raw = tmp_path / f"raw{scenes}"
        raw.mkdir()
        for s in range(scenes):
            Image.fromarray(photo).save(raw / f"{s + 7}_sat.jpg")
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(raw / f"{s + 7}_mask.png")
        assert cli("tile", str(raw), "-o", str(tmp_path / f"tiles{scenes}")) == 0
        out = capsys.readouterr().out
        assert ("note: one scene: a split by scene (the default) needs 2" in out) == (scenes == 1)
        assert out.splitlines()[-1].endswith(" -S split.by=tile") == (scenes == 1)
    # a single tile cannot be split at all: no split.by=tile, said instead
    (tmp_path / "one").mkdir()
    Image.fromarray(photo[:256, :256]).save(tmp_path / "one/7_sat.jpg")
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(tmp_path / "one/7_mask.png")
    assert cli("tile", str(tmp_path / "one"), "-o", str(tmp_path / "tiles_one")) == 0
    out = capsys.readouterr().out
    assert "note: one tile: a split needs 2 at least" in out and "split.by=tile" not in out


@pytest.mark.parametrize(
    "out, train",
    [
        ("tiles", "cd .. && dvc add raw/tiles && dvc exp run -S data.source=raw/tiles"),
        ("../data/tiles", "cd .. && dvc add data/tiles && dvc exp run -S data.source=data/tiles"),
        ("../../elsewhere", "cd .. && dvc exp run -S data.source={tmp}/elsewhere"),
    ],
)
def test_tile_run_from_a_subfolder_names_the_output_from_the_project_root(
    out: str, train: str, photo, tmp_path: Path, capsys, monkeypatch
) -> None:
    """DVC runs the index stage from the project root, so data.source must be named from there."""
    project = tmp_path / "project"
    Image.fromarray(photo).save((project / "raw").mkdir(parents=True) or project / "raw" / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(project / "raw" / "7_mask.png")
    (project / ".dvc").mkdir()
    monkeypatch.chdir(project / "raw")
    assert cli("tile", ".", "-o", out) == 0
    *_, last = capsys.readouterr().out.splitlines()
    deepglobe = " -S data.masks=colors -S 'data.forest=[[0, 255, 0]]' -S split.by=tile"  # one scene
    assert last == "train on them: " + train.format(tmp=tmp_path.resolve()) + deepglobe


def test_tile_run_from_outside_any_project_into_one_names_it_from_that_root(
    photo, tmp_path: Path, capsys, monkeypatch
) -> None:
    (tmp_path / "project" / ".dvc").mkdir(parents=True)
    Image.fromarray(photo).save((tmp_path / "raw").mkdir() or tmp_path / "raw" / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "raw" / "7_mask.png")
    monkeypatch.chdir(tmp_path / "raw")
    assert cli("tile", ".", "-o", "../project/data/tiles") == 0
    *_, last = capsys.readouterr().out.splitlines()
    assert last.startswith(
        "train on them: cd ../project && dvc add data/tiles && dvc exp run -S data.source=data/tiles"
    )


@pytest.mark.parametrize("project", [False, True])
def test_tile_output_outside_the_project_is_named_by_its_absolute_path(
    project: bool, photo, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The printed command is pasted in some project: a path relative to here would mean nothing there,
    and run from a project's root, a relative '../' data.source is refused (config: a queued experiment's
    copy would resolve it inside itself)."""
    Image.fromarray(photo).save((tmp_path / "raw").mkdir() or tmp_path / "raw" / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "raw" / "7_mask.png")
    if project:
        (tmp_path / "raw" / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path / "raw")
    assert cli("tile", ".", "-o", "../tiles" if project else "tiles") == 0
    *_, last = capsys.readouterr().out.splitlines()
    out = (tmp_path / ("tiles" if project else "raw/tiles")).resolve()
    assert last.startswith(f"train on them: dvc exp run -S data.source={out}")
    source = last.split("data.source=")[1].split()[0]
    assert DataConfig(source=source).source == source  # what check and index accept


def test_cli_tiles_a_folder_and_says_how_to_train(photo, truth, tmp_path: Path, capsys) -> None:
    pairs(tmp_path / "region", photo, truth)
    assert cli("tile", str(tmp_path / "region"), "-o", str(tmp_path / "tiles"), "--pixel-size", "0.5") == 0
    said = capsys.readouterr().out
    assert "wrote 4 tiles of 1 scene to" in said and "-S data.pixel_size_m=0.5" in said
    assert cli("tile", str(tmp_path / "region"), "-o", str(tmp_path / "other"), "--bands", "1,2") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --bands 1,2: give three band numbers") and "\n" not in err
    (tmp_path / "empty" / "images").mkdir(parents=True)
    assert cli("tile", str(tmp_path / "empty"), "-o", str(tmp_path / "other")) == 2
    assert "empty: no scene to cut" in capsys.readouterr().err


def test_tile_and_help_run_without_importing_torch(photo, truth, tmp_path: Path) -> None:
    """Cutting tiles needs no model: importing torch would add ~2 s to every `forestseg tile` and --help."""
    pairs(tmp_path / "region", photo, truth)
    code = (
        "import sys\n"
        "from forestseg.cli import main\n"
        "try:\n"
        f"    main(['tile', {str(tmp_path / 'region')!r}, '-o', {str(tmp_path / 'tiles')!r}, '--pixel-size', '0.5'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().endswith("no torch") and len(list((tmp_path / "tiles" / "images").iterdir())) == 4
    code = "import sys\nfrom forestseg.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "print('torch imported' if 'torch' in sys.modules else 'no torch')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().endswith("no torch")


def test_the_rasters_header_notes_are_said_as_predict_says_them(photo, truth, tmp_path: Path) -> None:
    found = pairs(tmp_path, photo, truth)
    with rasterio.open(found[0][0], "r+") as ds:  # a BGR orthophoto: cut as tagged, its colours would swap
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    said: list[str] = []
    tile_pairs("raster", found, tmp_path / "tiles", TileOptions(), log=said.append)
    assert (
        "note: a.tif: bands 1,2,3 are tagged blue, green, red, and bands 3,2,1 red, green, blue; if so, pass --bands 3,2,1"
        in said
    )


def test_tiles_are_checked_before_any_is_cut(photo, truth, tmp_path: Path) -> None:
    good = pairs(tmp_path / "a", photo, truth)
    bad = write_raster(tmp_path / "b" / "images" / "b.tif", photo, crs=None)
    with pytest.raises(ForestsegError, match="b.tif"):
        tile_pairs("raster", good + [(bad, good[0][1])], tmp_path / "tiles", TileOptions(), log=lambda s: None)
    assert not (tmp_path / "tiles").exists()


def test_a_raster_of_square_but_sheared_pixels_is_refused(photo, truth, tmp_path: Path) -> None:
    """0.5 m sides but sheared 30°: not the model's squares, so not cut at its own pixels."""
    from affine import Affine

    found = pairs(tmp_path, photo, truth)
    write_raster(found[0][0], photo, transform=Affine(0.5, 0.25, 500000, 0, -0.433, 5000000))
    with pytest.raises(ForestsegError, match=r"a.tif: its pixels are 0.5 x 0.5 m and sheared"):
        tile_pairs("raster", found, tmp_path / "tiles", TileOptions(), log=lambda s: None)


def test_a_reprojected_raster_keeps_its_truth_on_its_pixels(tmp_path: Path) -> None:
    """--reproject without --pixel-size: image and truth warped alike, so each tile's mask lies on its
    photo (the image read unwarped on the new grid was off by up to a pixel in 4302 of 65536)."""
    h, w = 600, 700
    cols = np.broadcast_to(np.arange(w) % 250 + 1, (h, w)).astype(np.uint8)
    image = np.dstack([cols, cols, cols])
    truth = (cols[..., None] > 125).astype(np.uint8)  # forest where the photo's value is above 125
    opts = TileOptions(reproject="EPSG:32634")
    tile_pairs("raster", pairs(tmp_path, image, truth), tmp_path / "tiles", opts, log=lambda s: None)
    meta = pd.read_csv(tmp_path / "tiles/meta_data.csv")
    assert len(meta)
    for name, mask in zip(meta["image"], meta["mask"]):
        photo_, forest = png(tmp_path / "tiles/images" / name)[..., 0], png(tmp_path / "tiles/masks" / mask) > 0
        assert np.array_equal(forest, photo_ > 125), name


@pytest.mark.parametrize("high", [0.6, 0.515])  # 20 % and 3 % oblong (within 1 % is square)
def test_a_rasters_pixels_are_checked_square_before_any_is_cut(photo, truth, tmp_path: Path, high: float) -> None:
    good = pairs(tmp_path / "a", photo, truth)
    image = write_raster(tmp_path / "b" / "images" / "b.tif", photo, transform=from_origin(500000, 5000000, 0.5, high))
    said: list[str] = []
    with pytest.raises(ForestsegError, match=rf"b.tif: its pixels are 0.5 x {high:g} m"):
        tile_pairs("raster", good + [(image, good[0][1])], tmp_path / "tiles", TileOptions(), log=said.append)
    assert said == [] and not (tmp_path / "tiles").exists()  # the first scene was not cut before the stop


@pytest.mark.parametrize(
    "files, message",
    [
        (
            ["images/a.png", "masks/a.png", "images/b.jp2", "masks/b.tif"],
            r"images/b.jp2: `forestseg tile` cuts GeoTIFFs",
        ),
        (["images/a.png", "masks/a.png", "images/b.jp2"], r"images/b.jp2: `forestseg tile` cuts GeoTIFFs"),
        (["images/a.png", "masks/a.png", "masks/b.png"], r"masks/b.png: no image of its name; "),
        (["images/a.png", "masks/a.png", "images/b.webp", "masks/b.png"], r"images/b.webp: the image of b.png: "),
        (["1_sat.png", "1_mask.png", "10_mask.png", "2_mask.png"], r"/2_mask.png and 1 more mask\(s\): no image of"),
        (["1_sat.png", "1_mask.png", "2_sat.jp2", "2_mask.png"], r"/2_sat.jp2: `forestseg tile` cuts GeoTIFFs"),
    ],
)
def test_a_scene_that_would_be_left_out_stops(files: list[str], message: str, tmp_path: Path) -> None:
    for name in files:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32)).save(tmp_path / name, format="PNG")  # a .jp2's bytes do not matter here
    with pytest.raises(ForestsegError, match=message):
        find_pairs(tmp_path)


@pytest.mark.parametrize("relative", [False, True])
def test_a_failed_cut_removes_the_folders_it_made_above_its_output(
    truth, tmp_path: Path, monkeypatch, relative: bool
) -> None:
    image = write_raster(tmp_path / "region" / "images" / "a.tif", np.zeros((H, W, 3), np.uint8))  # nodata only
    mask = write_raster(tmp_path / "region" / "masks" / "a.tif", truth, nodata=None)
    monkeypatch.chdir(tmp_path)
    out = Path("new/sub/tiles") if relative else tmp_path / "new" / "sub" / "tiles"
    with pytest.raises(ForestsegError, match="no whole 256-px tile with data"):  # found after the folders were made
        tile_pairs("raster", [(image, mask)], out, TileOptions(), log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["region"]


def test_hidden_files_are_neither_images_nor_masks(tmp_path: Path) -> None:
    for name in ("images/a.png", "masks/a.png", "masks/._a.png", "images/.b.png", ".DS_Store"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32)).save(tmp_path / name, format="PNG")
    assert [(i.name, m.name) for i, m in find_pairs(tmp_path)[1]] == [("a.png", "a.png")]


# --- pictures: cut as they are, the mask's values kept for the index to read -----------------------


def test_a_picture_over_pillows_pixel_limit_is_cut_and_the_limit_kept(photo, truth, tmp_path: Path, monkeypatch):
    """Pillow's guard against decompression bombs (~179 Mpx) would stop an ordinary orthophoto of
    one's own: `tile` reads the user's scenes whole whatever their size (here the limit made tiny)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for folder, pixels in (("images", photo), ("masks", np.where(truth[..., 0], 255, 0).astype(np.uint8))):
        (tmp_path / folder).mkdir()
        Image.fromarray(pixels).save(tmp_path / folder / "scene.png")
    done = tile_pairs(*find_pairs(tmp_path), tmp_path / "tiles", TileOptions(), log=lambda s: None)
    assert done["tiles"] == 4 and Image.MAX_IMAGE_PIXELS == 1000


def test_deepglobe_pictures_keep_their_ids_and_colour_masks_exactly(photo, tmp_path: Path) -> None:
    colours = np.zeros((H, W, 3), np.uint8)
    colours[...] = (255, 255, 0)  # agriculture
    colours[100:400, 50:500] = (0, 255, 0)  # forest
    for i in (119, 7):
        Image.fromarray(photo).save(tmp_path / f"{i}_sat.png")
        Image.fromarray(colours).save(tmp_path / f"{i}_mask.png")
    kind, found = find_pairs(tmp_path)
    assert kind == "picture" and [image.name for image, _ in found] == ["7_sat.png", "119_sat.png"]
    out = tmp_path / "tiles"
    done = tile_pairs(kind, found, out, TileOptions(), log=lambda s: None)
    assert [r["scene"] for r in done["scenes"]] == [7, 119] and done["tiles"] == 8
    assert np.array_equal(png(out / "images" / "119_sat_0003.png"), photo[256:512, 256:512])
    assert np.array_equal(png(out / "masks" / "119_mask_0003.png"), colours[256:512, 256:512])
    layout = DataLayout(tmp_path / "packed")
    index, report = build_index(out, layout.images, layout.masks, masks="colors", forest=((0, 255, 0),))
    assert report["valid"] == 8 and set(index["scene"]) == {"7", "119"}
    forest = np.load(layout.masks, mmap_mode="r")[list(index["image"]).index("119_sat_0003.png")]
    assert np.array_equal(forest, np.all(colours[256:512, 256:512] == (0, 255, 0), axis=-1))


def test_a_jpeg_mask_is_cut_into_jpegs_that_the_index_reads_as_the_source(photo, truth, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(photo).save(tmp_path / "images" / "scene.jpg", quality=90)
    Image.fromarray(np.where(truth[..., 0], 255, 0).astype(np.uint8)).save(tmp_path / "masks" / "scene.jpg", quality=75)
    out = tmp_path / "tiles"
    tile_pairs(*find_pairs(tmp_path), out, TileOptions(first_scene=40), log=lambda s: None)
    assert pd.read_csv(out / "meta_data.csv")["mask"].tolist() == [f"40_mask_{k:04d}.jpg" for k in range(4)]
    layout = DataLayout(tmp_path / "packed")
    index, report = build_index(out, layout.images, layout.masks)  # data.masks' default, 0/255 with JPEG noise
    assert report["valid"] == 4
    forest = np.load(layout.masks, mmap_mode="r")
    source = np.asarray(Image.open(tmp_path / "masks" / "scene.jpg")) >= 128
    assert (forest[3] != source[256:512, 256:512]).mean() < 0.001  # q100 re-encoding moves almost no pixel


@pytest.mark.parametrize("alpha", [0, 128])  # half-transparent is no whole photo either
def test_transparent_pixels_of_a_picture_skip_their_tiles(photo, tmp_path: Path, alpha: int) -> None:
    rgba = np.dstack([photo, np.full((H, W), 255, np.uint8)])
    rgba[300:310, 500:510, 3] = alpha  # in the bottom-right tile
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(rgba).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "masks" / "a.png")
    done = tile_pairs(*find_pairs(tmp_path), tmp_path / "tiles", TileOptions(), log=lambda s: None)
    assert (done["tiles"], done["scenes"][0]["skipped_nodata"]) == (3, 1)
    assert not (tmp_path / "tiles" / "images" / "1_sat_0003.png").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("mask size", r"masks/a.png: is 600x500 px, its image a.png 600x520 px"),
        ("mask width", r"masks/a.png: is 500x520 px, its image a.png 600x520 px"),  # the height alone agrees
        ("transparent mask", r"masks/a.png: has transparent pixels"),
        ("pixel size", r"--pixel-size: for GeoTIFFs; pictures are cut as they are"),
        ("no mask", r"/masks: no mask for a.png"),
        ("mixed", r"holds both GeoTIFFs and pictures"),
        ("grey photo", r"images/a.png: is a .*; convert it to RGB"),
    ],
)
def test_bad_pictures_stop_with_one_line(case: str, message: str, photo, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(photo[..., 0] if case == "grey photo" else photo).save(tmp_path / "images" / "a.png")
    mask = np.zeros((500 if case == "mask size" else H, 500 if case == "mask width" else W), np.uint8)
    if case == "transparent mask":
        mask = np.dstack([mask, mask, mask, np.zeros_like(mask)])
    if case != "no mask":
        Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    if case == "mixed":
        write_raster(tmp_path / "images" / "b.tif", photo)
        write_raster(tmp_path / "masks" / "b.tif", np.zeros((H, W, 1), np.uint8), nodata=None)
    with pytest.raises(ForestsegError, match=message):
        kind, found = find_pairs(tmp_path)
        tile_pairs(kind, found, tmp_path / "tiles", TileOptions(pixel_size_m=0.5 if case == "pixel size" else None))
    assert not (tmp_path / "tiles").exists()


@pytest.mark.parametrize(
    "names, first, ids",
    [
        (["10452.tif", "855.tif"], None, [10452, 855]),
        (["119_sat.jpg", "7_sat.jpg"], None, [119, 7]),
        (["north.tif", "855.tif"], None, [1, 2]),  # not every one a number
        (["010.tif", "10.tif"], None, [1, 2]),  # one number twice
        (["10452.tif", "855.tif"], 900, [900, 901]),
        (["１２.png", "3.png"], None, [1, 2]),  # full-width digits are no ASCII id: numbered in order
    ],
)
def test_scene_ids(names: list[str], first: int | None, ids: list[int]) -> None:
    assert scene_ids([(Path(n), Path(n)) for n in names], first) == ids


def test_tiles_across_read_strips_hold_the_rasters_pixels(photo, truth, tmp_path: Path) -> None:
    # 16-px tiles: 37 across, read in strips of CHUNK tiles; each tile is still its own pixels and truth
    out = tmp_path / "tiles"
    for opts in (TileOptions(size=16), TileOptions(size=16, pixel_size_m=0.5, reproject="EPSG:32633")):
        done = tile_pairs("raster", pairs(tmp_path, with_nodata_corner(photo), truth), out, opts, log=lambda s: None)
        across = W // 16
        assert done["tiles"] == (H // 16) * across - 3 * 5  # the 40x70 nodata corner touches 3 x 5 tiles
        for name in pd.read_csv(out / "meta_data.csv")["image"]:
            k = int(name.split("_")[2][:4])
            rows, cols = slice(k // across * 16, k // across * 16 + 16), slice(k % across * 16, k % across * 16 + 16)
            assert np.array_equal(png(out / "images" / name), photo[rows, cols]), name
            mask = png(out / "masks" / name.replace("sat", "mask"))
            assert np.array_equal(mask, np.where(truth[rows, cols, 0], 255, 0)), name
        shutil.rmtree(out)


def test_sidecars_beside_a_mask_are_not_taken_for_it(photo, truth, tmp_path: Path) -> None:
    pairs(tmp_path, photo, truth)
    for sidecar in ("a.tfw", "a.qml", "a.aux", "a.prj"):  # world file, QGIS style, ESRI aux, projection
        (tmp_path / "masks" / sidecar).write_text("x\n")
    assert find_pairs(tmp_path) == ("raster", [(tmp_path / "images" / "a.tif", tmp_path / "masks" / "a.tif")])
    write_raster(tmp_path / "masks" / "a.png", truth, nodata=None)
    with pytest.raises(ForestsegError, match=r"masks: a.png and a.tif are each a mask of that name; keep one"):
        find_pairs(tmp_path)


@pytest.mark.parametrize(
    "files, message",
    [
        # one photo twice would be two scenes, which the split can put on both sides
        (["images/a.jpg", "images/a.png", "masks/a.png"], r"images: a.jpg and a.png are each an image of that name"),
        (["5_sat.jpg", "5_sat.png", "5_mask.png"], r": 5_sat.jpg and 5_sat.png are each the photo of that id"),
        (["5_sat.jpg", "5_mask.jpg", "5_mask.png"], r": 5_mask.jpg and 5_mask.png are each the mask of that id"),
    ],
)
def test_two_files_for_one_scene_stop(files: list[str], message: str, tmp_path: Path) -> None:
    for name in files:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    with pytest.raises(ForestsegError, match=message):
        find_pairs(tmp_path)


def test_a_truth_that_lies_elsewhere_stops_naming_it(photo, truth, tmp_path: Path) -> None:
    good = pairs(tmp_path / "a", photo, truth)
    image = write_raster(tmp_path / "b" / "images" / "b.tif", photo)
    elsewhere = write_raster(tmp_path / "b" / "masks" / "b.tif", truth, crs="EPSG:32634", nodata=None)  # wrong CRS tag
    with pytest.raises(ForestsegError, match=r"masks/b.tif: no pixel of it with data lies on a whole tile of b.tif"):
        tile_pairs("raster", good + [(image, elsewhere)], tmp_path / "tiles", TileOptions(), log=lambda s: None)
    assert not (tmp_path / "tiles").exists()


def test_output_that_cannot_be_written_stops_with_one_line(photo, truth, tmp_path: Path, capsys, monkeypatch) -> None:
    pairs(tmp_path / "region", photo, truth)
    (tmp_path / "afile").write_text("")
    assert cli("tile", str(tmp_path / "region"), "-o", str(tmp_path / "afile" / "tiles")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: -o {tmp_path / 'afile' / 'tiles'}: cannot write it ({tmp_path / 'afile'}): a file is where a folder "
        "goes; choose another path"
    )

    def full(self, fp, *args, **kwargs):  # as a real full disk: naming the file being written, in the temp folder
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))

    monkeypatch.setattr(Image.Image, "save", full)  # a disk that fills up: not a failure 'while reading'
    assert cli("tile", str(tmp_path / "region"), "-o", str(tmp_path / "tiles")) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        rf"error: -o {re.escape(str(tmp_path / 'tiles'))}: cannot write it: no space left on the device "
        r"\(\d+ MiB free\); free some space and rerun",
        err,
    ), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "region"]


@pytest.mark.parametrize("size", [float("inf"), float("nan"), 1e-9, 0.0, -1.0, 2e4])
def test_pixel_size_must_be_a_plausible_number_of_metres(size: float) -> None:
    """1e-9 m was an OverflowError in the warp, 1e-5 m a gigapixel grid that ran for minutes."""
    with pytest.raises(ForestsegError, match=r"--pixel-size .*: must be a number of metres in 0\.001\.\.10000"):
        TileOptions(pixel_size_m=size)


def test_a_float_truth_with_undeclared_nan_says_to_declare_it_nodata(photo, tmp_path: Path) -> None:
    values = np.zeros((H, W, 1), np.float32)
    values[100:400, 50:500] = 1
    values[:, 400:] = np.nan  # outside the surveyed area, not tagged nodata
    with pytest.raises(
        ForestsegError, match=r"holds NaN pixels \(.*nan \(\d.*\) that are not its nodata; .* -a_nodata nan"
    ):
        tile_pairs("raster", pairs(tmp_path, photo, values), tmp_path / "tiles", TileOptions(), log=lambda s: None)
    tile_pairs(
        "raster",
        pairs(tmp_path, photo, values, nodata=float("nan")),
        tmp_path / "ok",
        TileOptions(),
        log=lambda s: None,
    )


def test_tile_run_through_a_symlink_cds_to_the_root_by_its_absolute_path(photo, tmp_path: Path, capsys, monkeypatch):
    """The shell's `cd ..` goes up from the path typed (a symlink), not the physical folder."""
    project = tmp_path / "project"
    (project / "raw").mkdir(parents=True)
    (project / ".dvc").mkdir()
    Image.fromarray(photo).save(project / "raw" / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(project / "raw" / "7_mask.png")
    (tmp_path / "link").symlink_to(project / "raw")
    monkeypatch.chdir(tmp_path / "link")
    monkeypatch.setenv("PWD", str(tmp_path / "link"))
    assert cli("tile", ".", "-o", "tiles") == 0
    *_, last = capsys.readouterr().out.splitlines()
    assert last.startswith(f"train on them: cd {project.resolve()} && dvc add raw/tiles && dvc exp run")


def test_the_cli_leaves_a_callers_ctrl_c_handler_as_it_was(tmp_path: Path) -> None:
    """Only console.py's start-up handler is replaced; a program calling cli.main keeps its own."""
    import signal

    from forestseg.cli import main

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(SystemExit):
            main(["tile", str(tmp_path / "none"), "-o", str(tmp_path / "out")])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("when", ["while tiling", "after the folder is in place"])
def test_tile_interrupted_says_whether_its_folder_was_written(when, photo, tmp_path: Path, capsys, monkeypatch) -> None:
    import forestseg.cli
    import forestseg.tiles

    Image.fromarray(photo).save((tmp_path / "raw").mkdir() or tmp_path / "raw" / "7_sat.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "raw" / "7_mask.png")
    real = forestseg.tiles.tile_pairs

    def interrupted(kind, pairs, out, opts):
        if when == "after the folder is in place":
            real(kind, pairs, out, opts)
        raise KeyboardInterrupt

    monkeypatch.setattr(forestseg.tiles, "tile_pairs", interrupted)
    with pytest.raises(SystemExit) as done:
        forestseg.cli.main(["tile", str(tmp_path / "raw"), "-o", str(tmp_path / "tiles")])
    assert done.value.code == 130
    said = "nothing was written" if when == "while tiling" else f"{tmp_path / 'tiles'} was written whole"
    assert capsys.readouterr().err == f"forestseg tile: interrupted; {said}\n"
    assert (tmp_path / "tiles").exists() == (when != "while tiling")


def test_a_kaggle_tile_folder_is_named_as_one_and_not_cut(tmp_path: Path) -> None:
    """Kaggle's own layout pairs <scene>_sat_<n>.jpg with <scene>_mask_<n>.jpg: already tiles for data.source."""
    data = tmp_path / "Forest Segmented"
    for folder, name in (("images", "10452_sat_08.jpg"), ("masks", "10452_mask_08.jpg")):
        (data / folder).mkdir(parents=True)
        Image.new("RGB" if folder == "images" else "L", (8, 8)).save(data / folder / name)
    (data / "meta_data.csv").write_text("image,mask\n10452_sat_08.jpg,10452_mask_08.jpg\n")
    with pytest.raises(ForestsegError, match=r"already tiles in the Kaggle layout .*set data\.source to this folder"):
        find_pairs(data)


def test_an_unzipped_top_folder_names_the_folder_below_that_holds_scenes(tmp_path: Path) -> None:
    """DeepGlobe unzips to train/ (scenes with masks), valid/ and test/ (photos only) beside metadata.csv."""
    top = tmp_path / "deepglobe"
    for sub, names in (("train", ("1_sat.jpg", "1_mask.png")), ("valid", ("2_sat.jpg",))):
        (top / sub).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (8, 8)).save(top / sub / name)
    (top / "metadata.csv").write_text("image_id\n1\n")
    with pytest.raises(
        ForestsegError, match=r"no scene to cut; .* \(train/ below it holds scenes: give that folder\)$"
    ):
        find_pairs(top)


def test_a_turned_picture_with_an_untagged_mask_of_its_shown_shape_is_cut_as_the_index_reads_it(
    tmp_path: Path, capsys
) -> None:
    """A photo stored turned and tagged EXIF 6 with an untagged mask drawn on it as shown: the mask can only lie
    on the photo as shown (the shapes say so), which is how the index reads such a pair."""
    rng = np.random.default_rng(0)
    shown = rng.integers(0, 255, (256, 512, 3), dtype=np.uint8)
    truth = np.zeros((256, 512), np.uint8)
    truth[:, :256] = 255  # forest on the left half as shown
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer turns the stored pixels 90° clockwise
    (tmp_path / "in").mkdir()
    Image.fromarray(np.rot90(shown, 1)).save(tmp_path / "in/7_sat.jpg", quality=100, exif=exif)
    Image.fromarray(truth).save(tmp_path / "in/7_mask.png")
    assert cli("tile", str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0, capsys.readouterr().err
    masks = sorted((tmp_path / "out/masks").iterdir())
    assert len(masks) == 2 and [np.asarray(Image.open(m)).mean() > 127 for m in masks] == [True, False]


def test_cli_removes_the_temp_folder_a_killed_tile_run_left_beside_its_output(
    photo, truth, tmp_path: Path, capsys
) -> None:
    """Removed with a note, as predict and the stages say what they removed."""
    from conftest import dead_temp_prefix

    pairs(tmp_path / "region", photo, truth)
    (tmp_path / "data").mkdir()
    dead = tmp_path / "data" / f"{dead_temp_prefix('tiles')}tmp"  # as tile_pairs names its temp folder
    (dead / "images").mkdir(parents=True)
    assert cli("tile", str(tmp_path / "region"), "-o", str(tmp_path / "data/tiles")) == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tiles"]
    said = f"note: removed 1 temp file(s) or folder(s) that a killed earlier run left in {tmp_path / 'data'}"
    assert said in capsys.readouterr().out


def test_cli_advises_the_pixel_size_only_where_the_rasters_share_one(photo, truth, tmp_path: Path, capsys) -> None:
    """One pixel size: -S data.pixel_size_m=it, no note; two: no -S (neither is every tile's), and a note."""
    pairs(tmp_path / "one", photo, truth)
    assert cli("tile", str(tmp_path / "one"), "-o", str(tmp_path / "t1")) == 0
    said = capsys.readouterr().out
    assert "-S data.pixel_size_m=0.5" in said and "pixel sizes differ" not in said, said
    write_raster(tmp_path / "two/images/a.tif", photo)
    write_raster(tmp_path / "two/masks/a.tif", truth, nodata=None)
    write_raster(tmp_path / "two/images/b.tif", photo, pixel=1.0)
    write_raster(tmp_path / "two/masks/b.tif", truth, pixel=1.0, nodata=None)
    assert cli("tile", str(tmp_path / "two"), "-o", str(tmp_path / "t2")) == 0
    said = capsys.readouterr().out
    assert "data.pixel_size_m" not in said and "note: the rasters' pixel sizes differ" in said, said


def test_cli_passes_each_of_its_flags_to_the_cutting(photo, truth, tmp_path: Path, monkeypatch, capsys) -> None:
    """--size, --pixel-size, --bands, --reproject and --first-scene reach tile_pairs; the tiles show two of them."""
    import forestseg.tiles

    seen, real = [], forestseg.tiles.tile_pairs
    monkeypatch.setattr(forestseg.tiles, "tile_pairs", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    pairs(tmp_path / "region", photo, truth)
    flags = "--size 128 --pixel-size 1 --bands 3,2,1 --reproject EPSG:32632 --first-scene 900".split()
    assert cli("tile", str(tmp_path / "region"), "-o", str(tmp_path / "tiles"), *flags) == 0
    assert seen == [TileOptions(size=128, pixel_size_m=1.0, bands=(3, 2, 1), reproject="EPSG:32632", first_scene=900)]
    meta = pd.read_csv(tmp_path / "tiles/meta_data.csv")
    assert meta["image"].str.startswith("900_sat_").all()
    assert png(tmp_path / "tiles/images" / meta["image"][0]).shape == (128, 128, 3)
    assert "(scene ids 900;" in capsys.readouterr().out


def test_an_oblong_picture_is_cut_row_by_row_into_tiles_of_their_own(tmp_path: Path) -> None:
    """3 tiles across and 2 down: tile k is row k // 3, column k % 3, each its own file (numbered with the
    rows' count instead, two tiles shared a name and one overwrote the other)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    picture = np.random.default_rng(1).integers(1, 256, (32, 48, 3), dtype=np.uint8)
    mask = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) % 251  # every pixel of its own value
    Image.fromarray(picture).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    out = tmp_path / "tiles"
    done = tile_pairs(*find_pairs(tmp_path), out, TileOptions(size=16), log=lambda s: None)
    assert done["tiles"] == 6 and len(list((out / "images").iterdir())) == 6
    for k in range(6):
        r, c = divmod(k, 3)
        window = np.s_[16 * r : 16 * r + 16, 16 * c : 16 * c + 16]
        assert np.array_equal(png(out / "images" / f"1_sat_{k:04d}.png"), picture[window])
        assert np.array_equal(png(out / "masks" / f"1_mask_{k:04d}.png"), mask[window].astype(np.uint8))


def test_picture_pairs_with_other_exif_turns_stop_before_cutting(tmp_path: Path) -> None:
    """A photo tagged 180° beside an untagged mask: which grid the mask was drawn on is unknown."""
    from forestseg.images import EXIF_ORIENTATION

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 3
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(tmp_path / "images" / "a.jpg", exif=exif)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ForestsegError, match=r"a\.jpg and .*a\.png: EXIF orientations differ \(3 and 1\)"):
        tile_pairs(*find_pairs(tmp_path), tmp_path / "tiles", TileOptions(size=16), log=lambda s: None)
    assert not (tmp_path / "tiles").exists()


def test_upper_case_suffixes_pair_as_lower_case_ones(tmp_path: Path) -> None:
    """A camera's 7.JPG and a mask saved as 7.PNG are one pair."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / "7.JPG", format="JPEG")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "masks" / "7.PNG", format="PNG")
    assert find_pairs(tmp_path) == ("picture", [(tmp_path / "images" / "7.JPG", tmp_path / "masks" / "7.PNG")])


@pytest.mark.parametrize("first", [-1, -100])
def test_a_negative_first_scene_is_refused(first: int) -> None:
    with pytest.raises(ForestsegError, match=rf"^--first-scene {first}: scene ids are numbers >= 0$"):
        TileOptions(first_scene=first)


def colour_mask() -> np.ndarray:
    """DeepGlobe-like: one class's colour on the left half, single-pixel dots of another every 8 px."""
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:, :32] = (0, 255, 0)
    mask[::8, ::8] = (255, 0, 255)
    return mask


@pytest.mark.parametrize(
    "mask, saved, size, most",
    [
        (np.random.default_rng(0).integers(0, 256, (32, 48), dtype=np.uint8), {"quality": 95}, 16, 1),
        (colour_mask(), {"quality": 100, "subsampling": 0}, 32, 3),
    ],
    ids=["grey", "colour"],
)
def test_a_jpeg_masks_tiles_keep_its_values_within_a_level(tmp_path: Path, mask, saved, size: int, most: int) -> None:
    """Cut at quality 100 without chroma subsampling: a tile's values are the source's to +-1 (the
    rounding of one more encoding), where quality 75 moved them by tens of levels; a colour-coded mask
    keeps its class colours to a few levels, where subsampling bled one class's colour into its neighbour's."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((*mask.shape[:2], 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.jpg", **saved)
    out = tmp_path / "tiles"
    tile_pairs(*find_pairs(tmp_path), out, TileOptions(size=size), log=lambda s: None)
    source = png(tmp_path / "masks" / "a.jpg").astype(int)
    across = mask.shape[1] // size
    for k in range(across * (mask.shape[0] // size)):
        r, c = divmod(k, across)
        cut = png(out / "masks" / f"1_mask_{k:04d}.jpg").astype(int)
        assert np.abs(cut - source[size * r : size * r + size, size * c : size * c + size]).max() <= most, k


def test_bands_are_written_in_the_order_given(truth, tmp_path: Path) -> None:
    """--bands 3,2,1 of a BGR orthophoto: band 3 is the tiles' red."""
    bgr = np.empty((H, W, 3), np.uint8)
    bgr[...] = (10, 100, 200)
    out = tmp_path / "tiles"
    tile_pairs("raster", pairs(tmp_path, bgr, truth), out, TileOptions(bands=(3, 2, 1)), log=lambda s: None)
    assert tuple(png(out / "images" / "1_sat_0000.png")[0, 0]) == (200, 100, 10)


def test_an_internal_mask_skips_its_tiles_when_resampled_too(photo, truth, tmp_path: Path) -> None:
    """A raster whose nodata is an internal mask (no nodata value), cut at --pixel-size 1.0: the masked
    half's tiles are skipped as at its own pixels, not cut from the black under the mask."""
    [(image, mask)] = pairs(tmp_path, photo, truth)
    with rasterio.open(image, "r+") as ds:
        ds.nodata = None
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(image, "r+") as ds:
        valid = np.full((H, W), 255, np.uint8)
        valid[:, :256] = 0  # the first column of 256-px tiles
        ds.write_mask(valid)
    for opts, tiles in ((TileOptions(), 2), (TileOptions(pixel_size_m=0.25), 8)):  # of 2 x 2, of 4 x 4
        out = tmp_path / f"tiles{tiles}"
        done = tile_pairs("raster", [(image, mask)], out, opts, log=lambda s: None)
        assert (done["tiles"], done["scenes"][0]["skipped_nodata"]) == (tiles, tiles), opts


def test_a_signed_truth_marking_forest_with_a_negative_value_gives_forest_tiles(photo, tmp_path: Path) -> None:
    """Forest is any value but 0 in a truth, -1 too."""
    values = np.zeros((H, W, 1), np.int16)
    values[:256, :256] = -1
    out = tmp_path / "tiles"
    done = tile_pairs("raster", pairs(tmp_path, photo, values), out, TileOptions(), log=lambda s: None)
    assert (png(out / "masks" / "1_mask_0000.png") == 255).all() and not png(out / "masks" / "1_mask_0001.png").any()
    assert done["scenes"][0]["forest_share"] == pytest.approx(0.25)


def test_an_oblong_pictures_edge_strips_are_a_share_of_its_area(tmp_path: Path) -> None:
    """300 wide, 600 high, 256 px tiles: 1 x 2 tiles cut, 1 - 2 x 256^2 / (300 x 600) of it in edge strips."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((600, 300, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((600, 300), np.uint8)).save(tmp_path / "masks" / "a.png")
    done = tile_pairs(*find_pairs(tmp_path), tmp_path / "tiles", TileOptions(size=256), log=lambda s: None)
    assert done["scenes"][0]["edge_share"] == pytest.approx(1 - 2 * 256**2 / (300 * 600))


def test_a_raster_too_small_for_a_tile_counts_for_neither_pixel_size_nor_scenes(photo, tmp_path: Path, capsys) -> None:
    """a.tif cuts 4 tiles at 0.5 m, b.tif (100 px at 1 m) none: one scene of one pixel size, so the advice
    sets data.pixel_size_m and split.by=tile, with no note of pixel sizes that differ."""
    raw = tmp_path / "raw"
    write_raster(raw / "images" / "a.tif", photo)
    write_raster(raw / "masks" / "a.tif", np.zeros((H, W), np.uint8), nodata=None)
    write_raster(raw / "images" / "b.tif", photo[:100, :100], pixel=1.0)
    write_raster(raw / "masks" / "b.tif", np.zeros((100, 100), np.uint8), nodata=None, pixel=1.0)
    assert cli("tile", str(raw), "-o", str(tmp_path / "tiles")) == 0
    out = capsys.readouterr().out
    assert "pixel sizes differ" not in out and "note: one scene: a split by scene (the default) needs 2" in out
    assert out.splitlines()[-1].endswith(" -S data.pixel_size_m=0.5 -S split.by=tile"), out
