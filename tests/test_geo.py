"""Forest maps of GeoTIFFs: georeference kept, areas from the grid, windowed = in-memory, bounded
memory, resampling to the model's pixel size, bad rasters refused, evaluation of the area."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from conftest import in_the_way, make_set, random_predictor, train_small_model
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.transform import from_origin

from forestseg import geo
from forestseg.checkpoint import write_model
from forestseg.cli import main
from forestseg.config import ModelConfig, asdict
from forestseg.errors import ForestsegError
from forestseg.geo import Grid, MapOptions, check_raster, map_forest, polygon_area
from forestseg.io import sha256_of
from forestseg.metrics import METRICS
from forestseg.model import build_model
from forestseg.predict import Predictor
from forestseg.synthetic import render_scene
from forestseg.windows import sample_windows

TILE = 64
UTM = "EPSG:32633"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained for 3 epochs on 64x64 tiles of synthetic scenes, at 0.5 m pixels."""
    return train_small_model(tmp_path_factory.mktemp("model"), TILE)


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.load(checkpoint, torch.device("cpu"))


def random_checkpoint(
    path: Path,
    tile: int = 128,
    pixel_size_m: float | None = 0.5,
    width: int = 4,
    depth: int = 2,
    batch_norm: bool = True,
    **meta_extra,
) -> Path:
    """Random weights: for tests where only shapes, memory or errors matter."""
    torch.manual_seed(0)
    cfg = ModelConfig(width=width, depth=depth, batch_norm=batch_norm)
    meta = {
        "run": "bce-adam-0",
        "loss": "bce",
        "threshold": 0.0,
        "model": asdict(cfg),
        "normalizer": {"mean": [100.0] * 3, "std": [50.0] * 3},
        "tile_size": tile,
    }
    if pixel_size_m is not None:
        meta["pixel_size_m"] = pixel_size_m
    write_model(path, build_model(cfg).state_dict(), {**meta, **meta_extra})
    return path


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    image, mask = render_scene(np.random.default_rng(7), 400)
    return image[:300, :400], mask[:300, :400]  # 400 wide, 300 high


def write_raster(
    path: Path,
    pixels: np.ndarray,
    crs: str | None = UTM,
    pixel: float = 0.5,
    nodata: float | None = 0,
    origin: tuple[float, float] = (500000, 5000000),
    **extra,
) -> Path:
    """(H, W, C) pixels as a GeoTIFF with its top-left corner at `origin` in `crs`."""
    h, w = pixels.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = np.moveaxis(pixels.reshape(h, w, -1), -1, 0)
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": bands.shape[0],
        "dtype": bands.dtype.name,
        "crs": crs,
        "transform": from_origin(*origin, pixel, pixel),
        "nodata": nodata,
        **extra,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(bands)
    return path


def with_nodata_corner(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[:40, :70] = 0  # a black collar: nodata 0 in every band
    return out


def cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return done.value.code


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(1), {
            "crs": ds.crs,
            "transform": ds.transform,
            "nodata": ds.nodata,
            "shape": ds.shape,
            "layout": ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
        }


def test_checkpoint_records_its_pixel_size(checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert torch.load(checkpoint, weights_only=False)["pixel_size_m"] == 0.5
    old = random_checkpoint(tmp_path / "old.pt", pixel_size_m=None)
    p = Predictor.load(old, torch.device("cpu"))
    assert (p.pixel_size_m, p.pixel_size_recorded) == (0.5, False)
    src = write_raster(tmp_path / "in.tif", np.full((64, 64, 3), 90, np.uint8), nodata=None)
    assert cli("predict", str(old), str(src), "-o", str(tmp_path / "out")) == 0
    assert "does not record the pixel size it was trained at; assuming 0.5 m" in capsys.readouterr().out


@pytest.mark.parametrize("pixel_size_m", [0.5, 1.0])
def test_pictures_for_a_model_of_another_pixel_size_are_noted(pixel_size_m, tmp_path: Path, capsys) -> None:
    model = random_checkpoint(tmp_path / "m.pt", pixel_size_m=pixel_size_m)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "a.png")
    assert cli("predict", str(model), str(tmp_path / "a.png"), "-o", str(tmp_path / "out")) == 0
    said = "carry no pixel size and are read as if at the model's 1 m pixels" in capsys.readouterr().out
    assert said == (pixel_size_m != 0.5)  # the Kaggle tiles' 0.5 m: no note on every call


def test_mask_keeps_crs_transform_and_nodata_and_is_a_cog(checkpoint: Path, scene, tmp_path: Path) -> None:
    image = with_nodata_corner(scene[0])
    src = write_raster(tmp_path / "ortho.tif", image)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 0
    mask, meta = read(tmp_path / "out/ortho_mask.tif")
    assert meta["crs"] == rasterio.crs.CRS.from_string(UTM)
    assert meta["transform"] == from_origin(500000, 5000000, 0.5, 0.5) and meta["shape"] == (300, 400)
    assert meta["nodata"] == 255 and meta["layout"] == "COG"
    with rasterio.open(tmp_path / "out/ortho_mask.tif") as ds:  # 512 px blocks, deflated: no overview under 512 px
        assert (ds.block_shapes, ds.compression, ds.overviews(1)) == (
            [(512, 512)],
            rasterio.enums.Compression.deflate,
            [],
        )
    assert set(np.unique(mask)) == {0, 1, 255}
    assert np.array_equal(mask == 255, (image == 0).all(axis=2))  # nodata exactly where the input has none
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left


def test_forest_area_csv_keeps_earlier_runs_rows_while_their_masks_are_there(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    """One call per file (a shell loop) sums to the folder's whole area; a file mapped again has one row,
    its new one; a row whose mask is gone is dropped, and said."""
    for name in ("a", "b"):
        write_raster(tmp_path / f"in/{name}.tif", with_nodata_corner(scene[0]))
    out = tmp_path / "out"
    for name in ("a", "b", "b"):
        assert cli("predict", str(checkpoint), str(tmp_path / f"in/{name}.tif"), "-o", str(out)) == 0
    assert "with 1 row of earlier runs whose masks are still there" in capsys.readouterr().out
    table = pd.read_csv(out / "forest_area.csv")
    assert [Path(f).name for f in table["file"]] == ["a.tif", "b.tif"]
    (out / "a_mask.tif").unlink()
    assert cli("predict", str(checkpoint), str(tmp_path / "in/b.tif"), "-o", str(out)) == 0
    assert f"forest_area.csv: 1 row dropped, their masks no longer there: {tmp_path / 'in/a.tif'}" in (
        capsys.readouterr().err
    )
    assert [Path(f).name for f in pd.read_csv(out / "forest_area.csv")["file"]] == ["b.tif"]


def test_forest_area_csv_names_each_row_s_model_and_says_where_models_mix(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    """A folder's total is one model's: rows of another model (or of a table without the column) are
    said, and each row names its model file's digest."""
    for name in ("a", "b"):
        write_raster(tmp_path / f"in/{name}.tif", scene[0])
    other = random_checkpoint(tmp_path / "other.pt", tile=TILE)
    out, csv = tmp_path / "out", tmp_path / "out/forest_area.csv"
    assert cli("predict", str(checkpoint), str(tmp_path / "in/a.tif"), "-o", str(out)) == 0
    assert "mixes models" not in capsys.readouterr().out
    assert cli("predict", str(other), str(tmp_path / "in/b.tif"), "-o", str(out)) == 0
    said = capsys.readouterr().out
    assert (
        f"1 row of earlier runs mapped by another model file (or by a forestseg that did not record it), so its "
        f"total mixes models: {tmp_path / 'in/a.tif'}; map them again with this model" in said
    ), said
    assert list(pd.read_csv(csv)["model_sha256"]) == [sha256_of(checkpoint), sha256_of(other)]
    assert cli("predict", str(other), str(tmp_path / "in/a.tif"), "-o", str(out)) == 0  # all one model again
    assert "mixes models" not in capsys.readouterr().out
    pd.read_csv(csv).drop(columns="model_sha256").to_csv(csv, index=False)  # as a forestseg before the column wrote it
    assert cli("predict", str(other), str(tmp_path / "in/b.tif"), "-o", str(out)) == 0
    said = capsys.readouterr().out
    assert "with 1 row of earlier runs" in said and "so its total mixes models" in said, said
    assert list(pd.read_csv(csv, keep_default_na=False)["model_sha256"]) == ["", sha256_of(other)]


def test_two_predicts_mapping_into_one_folder_at_once_keep_both_rows(
    checkpoint: Path, scene, tmp_path: Path, monkeypatch
) -> None:
    """A shell loop's `&` (or xargs -P): a call that read the table before another one wrote its row
    rewrote the table without it, while both masks stayed. Here the second call runs, whole, while
    the first maps its raster."""
    import forestseg.geo

    for name in ("a", "b"):
        write_raster(tmp_path / f"in/{name}.tif", scene[0])
    out, mapping, other = tmp_path / "out", forestseg.geo.map_forest, []

    def beside(predictor, raster, *args, **kwargs):
        if raster.path.name == "a.tif" and not other:  # the first call's: the other maps b.tif meanwhile
            other.append(None)
            other[0] = cli("predict", str(checkpoint), str(tmp_path / "in/b.tif"), "-o", str(out))
        return mapping(predictor, raster, *args, **kwargs)

    monkeypatch.setattr(forestseg.geo, "map_forest", beside)
    reads, read = [], forestseg.cli._earlier_rows
    monkeypatch.setattr(forestseg.cli, "_earlier_rows", lambda *a, say: reads.append(say) or read(*a, say=say))
    assert cli("predict", str(checkpoint), str(tmp_path / "in/a.tif"), "-o", str(out)) == 0 and other == [0]
    assert sorted(Path(f).name for f in pd.read_csv(out / "forest_area.csv")["file"]) == ["a.tif", "b.tif"]
    # each call read the table once, and the first once more: the other had rewritten it meanwhile
    assert reads == [True, True, False]
    reads.clear()
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(out)) == 0  # nothing beside it now
    assert reads == [True]  # a table of thousands of rows is not read again after each raster


def test_the_folder_lock_of_forest_area_csv_excludes_another_process(tmp_path: Path) -> None:
    """Two calls' rewrites of the table never overlap: one waits while another process holds the lock."""
    import subprocess
    import sys
    import threading

    from forestseg.cli import _folder_locked

    release = tmp_path / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print(flush=True)\n"
            f"while not os.path.exists({str(release)!r}): time.sleep(0.02)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        holder.stdout.readline()  # it holds the lock
        acquired = threading.Event()

        def lock() -> None:
            with _folder_locked(tmp_path):
                acquired.set()

        waiter = threading.Thread(target=lock, daemon=True)
        waiter.start()
        assert not acquired.wait(0.5)  # blocked while the other process holds it
        release.touch()
        assert acquired.wait(30)
        waiter.join(30)
    finally:
        release.touch()
        holder.wait(30)


def test_an_output_folder_that_cannot_be_read_still_gets_its_table(
    checkpoint: Path, scene, tmp_path: Path, monkeypatch
) -> None:
    """A drop-box folder (mode 0333: written, not listed) cannot be opened to lock: mapped unlocked, as before."""
    out = tmp_path / "out"
    out.mkdir()
    src = write_raster(tmp_path / "in/a.tif", scene[0])
    opened = os.open

    def refused(path, *args, **kwargs):
        if os.fspath(path) == str(out):
            raise PermissionError(13, "Permission denied", str(out))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    assert cli("predict", str(checkpoint), str(src), "-o", str(out)) == 0
    assert [Path(f).name for f in pd.read_csv(out / "forest_area.csv")["file"]] == ["a.tif"]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_model_file_replaced_mid_call_is_recorded_by_the_digest_of_the_one_that_ran(
    command: str, checkpoint: Path, scene, tmp_path: Path, monkeypatch
) -> None:
    """`dvc repro` retraining the run, or a copy over its file, while predict or evaluate works: the
    digest was taken at the end, so one model's scores or areas went under another's (and predict
    --area-error then took that bias for the other model)."""
    import forestseg.evaluate
    import forestseg.geo

    model = tmp_path / "m.pt"
    shutil.copy(checkpoint, model)
    ran = sha256_of(model)
    module, name = (forestseg.evaluate, "evaluate") if command == "evaluate" else (forestseg.geo, "check_raster")
    work = getattr(module, name)

    def replaced(*args, **kwargs):
        shutil.copy(random_checkpoint(tmp_path / "other.pt", tile=TILE), model)
        return work(*args, **kwargs)

    monkeypatch.setattr(module, name, replaced)
    src = write_raster(tmp_path / "in/a.tif", scene[0])
    if command == "evaluate":
        data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
        assert cli("evaluate", str(model), str(data), "-o", str(tmp_path / "e.json")) == 0
        digest = json.loads((tmp_path / "e.json").read_text())["model_sha256"]
    else:
        assert cli("predict", str(model), str(src), "-o", str(tmp_path / "out")) == 0
        (digest,) = pd.read_csv(tmp_path / "out/forest_area.csv")["model_sha256"]
    assert sha256_of(model) != ran and digest == ran


def test_a_raster_that_fails_when_mapped_again_keeps_its_old_map_and_row(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    """A call dropped every row of its rasters before mapping any: one that failed kept its old mask
    without a row, and so did those not reached, so the table no longer counted every mask in the folder."""
    for name in ("a", "b", "c"):
        write_raster(tmp_path / f"in/{name}.tif", scene[0], tiled=True, compress="deflate")
    out, csv = tmp_path / "out", tmp_path / "out/forest_area.csv"
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(out)) == 0
    before = pd.read_csv(csv)
    whole = (tmp_path / "in/b.tif").read_bytes()
    (tmp_path / "in/b.tif").write_bytes(whole[: len(whole) // 2])  # its header is read, its pixels fail
    capsys.readouterr()
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(out)) == 2
    said = capsys.readouterr()
    assert "b.tif: failed while mapping" in said.err, said.err
    assert f"note: b.tif: the map of an earlier run stays in {out}, with its row" in said.out, said.out
    after = pd.read_csv(csv).set_index("file")
    assert sorted(Path(f).name for f in after.index) == ["a.tif", "b.tif", "c.tif"]
    for f in after.index:  # b's and c's rows are the first call's; a's is new, with the same numbers
        assert after.loc[f].equals(before.set_index("file").loc[f])
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.tif", "b_mask.tif", "c_mask.tif", "forest_area.csv"]


def test_gdal_s_block_cache_holds_blocks_while_forestseg_reads() -> None:
    """rasterio hands an int GDAL_CACHEMAX to GDALSetCacheMax64, in bytes: 128, meant as MB, cached no
    block, so each scanline of a tiled, compressed mask decoded its blocks again (`predict --polygons`
    on a 10000-px map: 266 s against 15 s, bench/SPEED.md). A whole row of 512-px blocks of an RGB
    40000-px raster must fit, and the bound must stay far below the machine's memory."""
    from forestseg.geo import GDAL_ENV

    with rasterio.Env(**GDAL_ENV):
        cache = int(rasterio.env.getenv()["GDAL_CACHEMAX"])
    assert 40000 // 512 * 512 * 512 * 3 <= cache <= 512 * 2**20


def test_a_call_that_maps_nothing_leaves_another_program_s_table_as_it_was(
    checkpoint: Path, scene, tmp_path: Path
) -> None:
    """forest_area.csv is rewritten only after a raster is mapped: a first raster that fails left a
    header-only table where another program's file had been."""
    write_raster(tmp_path / "whole.tif", scene[0], tiled=True, compress="deflate")
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in/b.tif").write_bytes(data[: len(data) // 2])  # its header is read, its pixels fail
    (tmp_path / "out").mkdir()
    (tmp_path / "out/forest_area.csv").write_text("id,hectares\nparcel7,12.5\n")
    assert cli("predict", str(checkpoint), str(tmp_path / "in/b.tif"), "-o", str(tmp_path / "out")) == 2
    assert (tmp_path / "out/forest_area.csv").read_text() == "id,hectares\nparcel7,12.5\n"


def test_an_unreadable_forest_area_csv_stops_before_its_rows_are_lost(
    checkpoint: Path, scene, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A table that cannot be opened (its permissions) is no other program's file to replace: its rows
    of masks still in the folder were dropped, so the folder's total fell short. Stopped, nothing mapped."""
    write_raster(tmp_path / "in/a.tif", scene[0])
    write_raster(tmp_path / "in/b.tif", scene[0])
    assert cli("predict", str(checkpoint), str(tmp_path / "in/a.tif"), "-o", str(tmp_path / "out")) == 0
    table = (tmp_path / "out/forest_area.csv").read_bytes()
    capsys.readouterr()
    real = open

    def open_(path, *args, **kwargs):  # root reads a file of mode 000, so the refusal is made here
        if Path(path).name == "forest_area.csv":
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr("forestseg.cli.open", open_, raising=False)
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "in/c.png")  # a picture too: nor is its mask written
    argv = [str(tmp_path / "in/b.tif"), str(tmp_path / "in/c.png")]
    assert cli("predict", str(checkpoint), *argv, "-o", str(tmp_path / "out")) == 2
    csv_path = tmp_path / "out/forest_area.csv"
    assert capsys.readouterr().err == (
        f"error: {csv_path}: cannot be read (Permission denied); make it readable, or move it away to start a new table\n"
    )
    assert csv_path.read_bytes() == table and not (tmp_path / "out/b_mask.tif").exists()
    assert not (tmp_path / "out/c_mask.png").exists()


def test_forest_area_csv_counts_each_mask_once_whatever_the_paths_were_typed(
    checkpoint: Path, scene, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Rows are matched by resolved paths: a raster of the same name from another folder replaces the
    mask, so its row too; one raster typed two ways is one row; a run from another folder keeps the rows."""
    write_raster(tmp_path / "x/g.tif", scene[0])
    write_raster(tmp_path / "y/g.tif", np.ascontiguousarray(scene[0][:200, :200]))
    write_raster(tmp_path / "y/h.tif", scene[0])
    (tmp_path / "link.tif").symlink_to(tmp_path / "y/h.tif")
    monkeypatch.chdir(tmp_path)
    out = "out"
    for path in ("x/g.tif", "y/g.tif", str(tmp_path / "y/g.tif")):
        assert cli("predict", str(checkpoint), path, "-o", out) == 0
        table = pd.read_csv(tmp_path / "out/forest_area.csv")
        # absolute, the raster whose mask is there (after x/g.tif's, y/g.tif's replaces it)
        assert list(table["file"]) == [str(tmp_path / path)], path
    assert list(table["mask"]) == [str(tmp_path / "out/g_mask.tif")]
    monkeypatch.chdir(tmp_path / "y")
    capsys.readouterr()
    assert cli("predict", str(checkpoint), "h.tif", "-o", "../out") == 0
    assert "no longer there" not in capsys.readouterr().err
    assert [Path(f).name for f in pd.read_csv(tmp_path / "out/forest_area.csv")["file"]] == ["g.tif", "h.tif"]
    # rows as an older version wrote them, relative to where it ran: still the masks of this folder
    csv = tmp_path / "out/forest_area.csv"
    table = pd.read_csv(csv)
    table["file"], table["mask"] = ["y/g.tif", "y/h.tif"], ["out/g_mask.tif", "out/h_mask.tif"]
    table.to_csv(csv, index=False)
    monkeypatch.chdir(tmp_path)
    assert cli("predict", str(checkpoint), "link.tif", "-o", "out") == 0
    assert "no longer there" not in capsys.readouterr().err
    table = pd.read_csv(csv)
    # the link is h.tif mapped again (its row goes; counted once) and keeps its own path
    assert list(table["file"]) == ["y/g.tif", str(tmp_path / "link.tif")]


def test_a_geotiff_whose_name_is_not_utf8_is_one_line(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """A Latin-1 'é' in the name: GDAL takes UTF-8 only (a UnicodeEncodeError traceback before)."""
    src = write_raster(tmp_path / "in/g.tif", scene[0])
    latin = Path(os.fsdecode(os.fsencode(tmp_path / "in") + b"/g\xe9.tif"))
    src.rename(latin)
    assert cli("predict", str(checkpoint), str(latin), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its name is not UTF-8 text, which GDAL needs; rename it" in err


@pytest.mark.parametrize("full", [True, False])
def test_gdal_failing_on_a_full_disk_names_the_output_and_the_space(
    checkpoint: Path, scene, tmp_path: Path, monkeypatch, capsys, full: bool
) -> None:
    """GDAL says "Failed to create mask." where the disk is full: told as the output's full disk, not
    as the input failing; with room left, GDAL's own reason of the input stays."""
    import errno

    from rasterio.errors import RasterioError

    import forestseg.geo

    src = write_raster(tmp_path / "in/g.tif", scene[0])

    def cog(*a, **k):
        raise RasterioError("Failed to create mask.")

    monkeypatch.setattr(forestseg.geo, "_cog", cog)
    room = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if full else None
    monkeypatch.setattr(forestseg.geo, "out_of_room", lambda folder: room)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    if full:
        assert err.startswith(f"error: {tmp_path / 'out/g_mask.tif'}: cannot write the map of g.tif: no space left")
    else:
        assert err.startswith(f"error: {src}: failed while mapping (Failed to create mask.)")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("stem", ["g" * 240, "é" * 122])  # 240 + 16 and 244 + 16 bytes: over 255
def test_a_geotiff_whose_outputs_names_would_be_too_long_is_refused_before_mapping(
    checkpoint: Path, scene, tmp_path: Path, capsys, stem: str
) -> None:
    src = write_raster(tmp_path / f"in/{stem}.tif", scene[0])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"_probability.tif: {len(os.fsencode(stem)) + 16} bytes)" in err


def test_area_is_pixel_count_times_pixel_area(checkpoint: Path, scene, tmp_path: Path) -> None:
    image = with_nodata_corner(scene[0])
    write_raster(tmp_path / "in/metres.tif", image, pixel=0.5)
    # New York Long Island in US survey feet: 2 ft pixels, in Manhattan
    write_raster(tmp_path / "in/feet.tif", image, crs="EPSG:2263", pixel=2.0, origin=(988000, 213000))
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-resample") == 0
    table = pd.read_csv(tmp_path / "out/forest_area.csv")
    assert list(table.columns) == [
        "file",
        "crs",
        "pixel_size_m",
        "model_pixel_size_m",
        "resampled",
        "valid_ha",
        "forest_ha",
        "forest_share",
        "area_bias_pct",
        "mask",
        "model_sha256",
    ]
    assert set(table["model_sha256"]) == {sha256_of(checkpoint)}
    table = table.set_index("crs")
    for crs, side_m in (("EPSG:32633", 0.5), ("EPSG:2263", 2.0 * 1200 / 3937)):
        row = table.loc[crs]
        mask, _ = read(Path(row["mask"]))
        assert row["pixel_size_m"] == pytest.approx(side_m, rel=1e-6)
        assert row["forest_ha"] == pytest.approx((mask == 1).sum() * side_m**2 / 1e4, abs=1e-4)
        assert row["valid_ha"] == pytest.approx((mask != 255).sum() * side_m**2 / 1e4, abs=1e-4)
        assert row["forest_share"] == pytest.approx((mask == 1).sum() / (mask != 255).sum(), abs=1e-6)


def test_windowed_prediction_equals_the_in_memory_one(predictor: Predictor, scene, tmp_path: Path) -> None:
    image = scene[0]
    whole = predictor.logits(image)
    for block in (40, 150, 1000):  # panels narrower than a tile, a few, one
        assert np.array_equal(predictor.logits(image, block=block), whole), block
    src = write_raster(tmp_path / "in.tif", image, nodata=None)
    raster = check_raster(src, MapOptions(), 0.5)
    area = map_forest(predictor, raster, tmp_path, MapOptions(block=256, progress=False), log=lambda s: None)
    mask, _ = read(Path(area.mask))
    assert np.array_equal(mask == 1, whole > predictor.cut)
    assert (mask != 255).all()


@pytest.mark.parametrize("kind", ["lerc", "webp", "vrt"])
def test_a_raster_only_gdal_decodes_without_a_georeference_is_told_what_to_do(
    checkpoint: Path, scene, tmp_path: Path, capsys, kind: str
) -> None:
    """Read as a plain picture it failed with Pillow's "cannot be decoded: not ... any image format Pillow reads"."""
    import warnings

    src = tmp_path / f"a.{'vrt' if kind == 'vrt' else 'tif'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        plain = write_raster(
            tmp_path / "plain.tif", scene[0][:64, :64], crs=None, nodata=None, transform=Affine.identity()
        )
        if kind == "vrt":
            rasterio.shutil.copy(plain, src, driver="VRT")
        else:
            write_raster(src, scene[0][:64, :64], crs=None, nodata=None, transform=Affine.identity(), compress=kind)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 1  # a picture: fails alone
    err = capsys.readouterr().err
    what = "a VRT" if kind == "vrt" else f"a {kind.upper()}-compressed TIFF"
    assert err.startswith(f"error: {src}: {what} without a georeference"), err
    assert "gdal_translate -of PNG" in err and "\n" not in err.strip()


@pytest.mark.parametrize(
    "case, says",
    [
        ("collar, no nodata", "37% of its edge pixels are 0 in every band and it declares no nodata"),
        ("white collar, no nodata", "37% of its edge pixels are 255 in every band and it declares no nodata"),
        ("collar, nodata 0", None),
        ("no collar", None),
        ("collar, nodata 0, JPEG", "nodata value 0 under JPEG compression, lossy as a rule"),
        # GDAL names it 'YCbCr JPEG', which rasterio gives as text, not a Compression
        ("collar, nodata 0, YCbCr JPEG", "nodata value 0 under JPEG compression, lossy as a rule"),
    ],
)
def test_invalid_pixels_that_would_map_as_ground_are_noted(scene, tmp_path: Path, case: str, says: str | None) -> None:
    """A gdalwarp without -dstnodata leaves a 0 frame mapped as land; JPEG moves a nodata area's edge."""
    image = scene[0].copy()
    if "collar" in case and case != "no collar":
        image[:60] = 255 if "white" in case else 0  # the top rows: 400 + 2 x 60 of the 1400 edge pixels
    extra = {"compress": "jpeg", "tiled": True} if "JPEG" in case else {}
    extra |= {"photometric": "YCBCR"} if "YCbCr" in case else {}
    src = write_raster(tmp_path / "in.tif", image, nodata=0 if "nodata 0" in case else None, **extra)
    notes = check_raster(src, MapOptions(), 0.5).notes
    assert [n for n in notes if says and says in n] if says else not notes, notes
    if says:
        assert len(notes) == 1 and notes[0].startswith("in.tif: ")


def test_adapt_bn_adapts_to_the_raster_windows_with_data(predictor: Predictor, scene, tmp_path: Path) -> None:
    image = with_nodata_corner(scene[0] // 2)  # darker than training: something to adapt to
    src = write_raster(tmp_path / "in.tif", image)
    raster = check_raster(src, MapOptions(), 0.5)
    opts = MapOptions(progress=False, adapt_bn=0.5)
    area = map_forest(predictor, raster, tmp_path, opts, log=lambda s: None)
    mask, _ = read(Path(area.mask))
    t = predictor.tile
    has_data = lambda y, x: bool(image[y : y + t, x : x + t].any(axis=2).all())  # noqa: E731
    windows = sample_windows(lambda r0, r1, c0, c1: image[r0:r1, c0:c1], 300, 400, t, usable=has_data)
    assert len(windows) == 5 * 7 - 2 and all(w.any(axis=2).all() for w in windows)  # the 2 on the collar left out
    adapted = predictor.adapted(windows, 0.5)
    valid = image.any(axis=2)
    assert np.array_equal(mask[valid] == 1, (adapted.logits(image) > adapted.cut)[valid])
    assert not np.array_equal(mask[valid] == 1, (predictor.logits(image) > predictor.cut)[valid])


@pytest.mark.parametrize("pixel", [0.5, 1.0])  # the model's grid is the raster's, or a warped (resampled) one
def test_adapt_bn_leaves_out_windows_under_an_internal_mask(
    predictor: Predictor, scene, tmp_path: Path, monkeypatch, pixel: float
) -> None:
    image = scene[0].copy()
    image[:, :150] = 0  # masked out below: black, which must not reach the statistics
    keep = np.full(image.shape[:2], 255, np.uint8)
    keep[:, :150] = 0
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(write_raster(tmp_path / "masked.tif", image, nodata=None, pixel=pixel), "r+") as ds,
    ):
        ds.write_mask(keep)
    seen = []
    monkeypatch.setattr(Predictor, "adapted", lambda self, tiles, mix: seen.append(tiles) or self)
    raster = check_raster(tmp_path / "masked.tif", MapOptions(), 0.5)
    map_forest(predictor, raster, tmp_path, MapOptions(progress=False, adapt_bn=0.25), log=lambda s: None)
    assert len(seen) == 1 and len(seen[0]) > 0
    assert all(w.any(axis=2).all() for w in seen[0])  # no window reaches into the masked, black part


def test_pictures_adapted_as_one_scene_map_the_same_in_any_order(checkpoint: Path, tmp_path: Path) -> None:
    """Ten pictures of one flight, brighter one after another: named in reverse they map the same. The
    windows were sampled in the order named (7 each of 64, the last picture's cut to 1), and 5254 of
    the 400000 mask pixels (1.3 %) changed with the order."""
    (tmp_path / "in").mkdir()
    pictures = [str(tmp_path / f"in/{i}.png") for i in range(10)]
    for i, path in enumerate(pictures):
        image = render_scene(np.random.default_rng(100 + i), 200)[0] * (0.6 + 0.08 * i)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    masks = []
    for order, named in (("given", pictures), ("reversed", pictures[::-1])):
        assert cli("predict", str(checkpoint), *named, "-o", str(tmp_path / order), "--adapt-bn", "0.5") == 0
        masks.append([np.asarray(Image.open(tmp_path / order / f"{i}_mask.png")) for i in range(10)])
    assert all(np.array_equal(a, b) for a, b in zip(*masks)), sum(int((a != b).sum()) for a, b in zip(*masks))


def test_adapt_bn_adapts_each_geotiff_on_its_own_beside_pictures(checkpoint: Path, scene, tmp_path: Path) -> None:
    image = scene[0] // 2
    write_raster(tmp_path / "in/ortho.tif", image, nodata=None)
    Image.fromarray(np.ascontiguousarray(scene[0][:TILE, :TILE])).save(tmp_path / "in/photo.png")  # another scene
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--adapt-bn", "0.5") == 0
    alone = Predictor.load(checkpoint, torch.device("cpu"))
    windows = sample_windows(lambda r0, r1, c0, c1: image[r0:r1, c0:c1], 300, 400, alone.tile)
    mask, _ = read(tmp_path / "out/ortho_mask.tif")
    assert np.array_equal(mask == 1, alone.adapted(windows, 0.5).mask(image))  # not also adapted to the photo


def test_small_raster_is_padded_like_a_small_image(predictor: Predictor, scene, tmp_path: Path) -> None:
    src = write_raster(tmp_path / "in.tif", scene[0][:40, :50], nodata=None)
    area = map_forest(predictor, check_raster(src, MapOptions(), 0.5), tmp_path, MapOptions(progress=False))
    mask, _ = read(Path(area.mask))
    assert np.array_equal(mask == 1, predictor.mask(scene[0][:40, :50]))


def test_peak_memory_depends_on_the_block_not_the_raster(tmp_path: Path) -> None:
    """A 4096x2048 raster (24 MiB of pixels, 32 MiB of float logits) mapped with 512-px panels:
    the arrays alive at once (numpy's, traced) stay under half of what its pixels alone take."""
    h, w = 2048, 4096
    rng = np.random.default_rng(0)
    pixels = np.repeat(np.repeat(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8), 16, 0), 16, 1)
    src = write_raster(tmp_path / "big.tif", pixels, nodata=None, tiled=True, compress="deflate")
    del pixels
    # a cheap model: this test is about memory, not forest
    predictor = Predictor.load(random_checkpoint(tmp_path / "r.pt", tile=128, width=2, depth=1), torch.device("cpu"))
    raster = check_raster(src, MapOptions(), 0.5)
    tracemalloc.start()
    try:
        area = map_forest(predictor, raster, tmp_path, MapOptions(block=512, batch=4, progress=False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    in_memory = h * w * 3  # the raster's pixels alone, before any float array
    assert peak < in_memory / 2, f"peak {peak / 2**20:.1f} MiB"
    assert area.valid_ha == pytest.approx(h * w * 0.25 / 1e4)


def test_coarser_raster_is_resampled_and_mapped_on_its_own_grid(
    checkpoint: Path, predictor: Predictor, tmp_path: Path
) -> None:
    """A 1 m raster is predicted at the model's 0.5 m and the mask written on the 1 m grid; it agrees
    with the prediction of the 0.5 m original better than predicting the 1 m pixels as they are."""
    image, _ = render_scene(np.random.default_rng(11), 512)
    coarse = np.asarray(Image.fromarray(image).resize((256, 256), Image.BOX))
    src = write_raster(tmp_path / "in/coarse.tif", coarse, pixel=1.0, nodata=None)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 0
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]
    assert (row["pixel_size_m"], row["model_pixel_size_m"], row["resampled"]) == (1.0, 0.5, True)
    mask, meta = read(tmp_path / "out/coarse_mask.tif")
    assert meta["shape"] == (256, 256) and meta["transform"] == from_origin(500000, 5000000, 1.0, 1.0)
    reference = predictor.mask(image).reshape(256, 2, 256, 2).mean(axis=(1, 3)) > 0.5  # the 0.5 m answer, on 1 m
    resampled = ((mask == 1) == reference).mean()
    as_is = (predictor.mask(coarse) == reference).mean()
    assert resampled > 0.85 and resampled > as_is, (resampled, as_is)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "raw"), "--no-resample") == 0
    row = pd.read_csv(tmp_path / "raw/forest_area.csv").iloc[0]
    assert (row["model_pixel_size_m"], row["resampled"]) == (1.0, False)
    assert np.array_equal(read(tmp_path / "raw/coarse_mask.tif")[0] == 1, predictor.mask(coarse))


@pytest.mark.parametrize(
    "pixel, rotation, shear, nodata",
    [
        (0.7, 0, 0, ""),
        (0.7, 0, 0, "hole"),
        (0.33, 17, 0, ""),
        (0.4, 30, 0, ""),
        (0.5, 30, -30, ""),
        (1.3, 0, 0, "hole"),
        (0.3, 0, 0, "strips"),
        (0.25, 0, 0, "every-fourth-0"),
        (0.2, 0, 0, "every-fourth-0"),
        (0.1, 0, 0, "every-fourth-3"),
        (0.7, 180, 0, ""),
        (0.25, 180, 0, "every-fourth-1"),
        (0.75, 180, 0, "random"),
        (0.75, 180, 0, ""),
    ],
    ids=[
        "0.7m",
        "0.7m-nodata-hole",
        "0.33m-rotated",
        "0.4m-rotated",
        "0.5m-sheared",
        "1.3m-nodata-hole",
        "0.3m-data-in-every-third-column",
        "0.25m-data-in-every-fourth-column",
        "0.2m-data-in-every-fourth-column",
        "0.1m-data-in-the-last-column-of-four",
        "0.7m-east-to-west-and-south-up",
        "0.25m-east-to-west-and-south-up-every-fourth-column",
        "0.75m-east-to-west-and-south-up-data-at-random",
        "0.75m-east-to-west-and-south-up",
    ],
)
def test_resampled_edges_and_nodata_borders_keep_their_prediction(
    tmp_path: Path, monkeypatch, pixel: float, rotation: float, shear: float, nodata: str
) -> None:
    """Resampled to the model's pixels and back, a raster of pixels the model calls forest is forest to
    its last row and column and around a nodata hole: the model's grid reaches past the raster and into
    the hole, and the black it sees there must not be averaged into the pixels beside them. At a rotated
    or sheared footprint's edge the warper gave some pixels no value (142 of 30351 sheared, 3 rotated
    by 30 degrees): they were nodata, and valid_ha too small. Columns of data one pixel wide between
    nodata ones (a 0.3 m raster) have model pixels mostly of nodata: 5200 of 13333 pixels with data
    were nodata when their neighbours' values could only spread through pixels with data. Data in every
    fourth column of a 0.25 m raster lies under no 0.5 m model pixel's centre: counted by centres, as
    GDAL's alpha counts them for bilinear but not for average resampling, the whole raster was mapped
    as no valid pixels (exit 0, forest 0.00 ha); a 0.2 m one lost its first data column, a 0.1 m one
    its last. A south-up 0.75 m raster's model pixel centres lie on raster pixel edges every third row,
    where floor() could take a pixel with data and the warper the black one beside it: logits of black
    pulled 3011 of its 9057 pixels with data below probability 0.99 here (to 0.91), and turned 9722 of
    25222 to ground where the model's logit was 2.75; without nodata, the last model row's centre lies
    on the raster's edge, and the raster's first row took the logits of black (at 2.75, all 131 of a
    97 x 131 raster's first row were ground)."""
    monkeypatch.setattr(Predictor, "windows_logits", lambda self, tiles: (tiles[..., 0] - np.float32(128)) / 8)
    image = np.full((151, 201, 3), 60, np.uint8)
    image[..., 0] = 220  # forest at logit 11.5 everywhere
    if nodata == "hole":
        image[60:90, 80:120] = 0  # nodata 0 in every band
    if nodata == "strips":
        image[:, ::3] = image[:, 1::3] = 0
    if nodata.startswith("every-fourth"):  # data in columns k, k + 4, ...
        image[:, np.arange(image.shape[1]) % 4 != int(nodata[-1])] = 0
    if nodata == "random":  # a third of the pixels have data
        image[np.random.default_rng(7).random(image.shape[:2]) > 0.3] = 0
    transform = (
        Affine.translation(500000, 5000000)
        @ Affine.rotation(rotation)
        @ Affine.shear(shear, 0)
        @ Affine.scale(pixel, -pixel)
    )
    src = write_raster(tmp_path / "in/r.tif", image, nodata=0 if nodata else None, transform=transform)
    ck = random_checkpoint(tmp_path / "m.pt", tile=64, depth=1)
    assert cli("predict", str(ck), str(src), "-o", str(tmp_path / "out"), "--probability", "float32") == 0
    mask, meta = read(tmp_path / "out/r_mask.tif")
    assert meta["transform"].almost_equals(transform) and mask.shape == image.shape[:2]
    has_data = image.any(axis=-1)
    assert (mask[~has_data] == 255).all() and (mask[has_data] == 1).all(), np.argwhere((mask != 1) & has_data)[:5]
    probability, _ = read(tmp_path / "out/r_probability.tif")
    assert probability[has_data].min() > 0.99
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]
    assert row["valid_ha"] == pytest.approx(has_data.sum() * abs(transform.determinant) / 1e4, abs=1e-4)


@pytest.mark.parametrize(
    "pixel, origin, says",
    [
        (6.99e-6, (15.0, 50.0), r"its pixels are 6.99e-06 x 6.99e-06 m under EPSG:32633, no aerial or satellite"),
        (1e7, (500000, 5000000), r"its pixels are 1e\+07 x 1e\+07 m under EPSG:32633, no aerial or satellite"),
        (0.05, (500000, 5000000), r"covers 0.15 x 0.1 m, less than one 0.5 m pixel of the grid"),
    ],
    ids=["degrees-under-utm", "absurdly-coarse", "smaller-than-a-model-pixel"],
)
def test_pixels_no_image_has_are_refused_before_mapping(
    checkpoint: Path, scene, tmp_path: Path, capsys, pixel: float, origin: tuple, says: str
) -> None:
    """A degree geotransform tagged UTM mapped 117,200 pixels with data as nodata (exit 0); 1e7 m pixels
    crashed the warper (OverflowError); a raster under one model pixel mapped as all nodata."""
    size = (2, 3) if pixel == 0.05 else (40, 30)
    write_raster(tmp_path / "in/x.tif", scene[0][: size[0], : size[1]], pixel=pixel, origin=origin)
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(says, err), err
    assert not (tmp_path / "out/x_mask.tif").exists()
    if pixel == 0.05:  # its own pixels can still be predicted
        assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-resample") == 0


@pytest.mark.parametrize(
    "transform",
    [
        rasterio.Affine(0.5, 0.0, 500000, 0.0, 0.0, 5000000),  # every row on one line
        rasterio.Affine(0.5, 0.5, 500000, -0.5, -0.5, 5000000),  # rows and columns along one diagonal
    ],
    ids=["rows-on-a-line", "collinear"],
)
def test_a_degenerate_geotransform_is_refused_before_mapping(
    checkpoint: Path, scene, tmp_path: Path, capsys, transform
) -> None:
    src = write_raster(tmp_path / "in/x.tif", scene[0][:40, :40])
    with rasterio.open(src, "r+") as ds:
        ds.transform = transform
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is degenerate (pixels of no area)" in err, err


def test_a_grid_turned_a_quarter_is_no_degenerate_one(tmp_path: Path) -> None:
    """a = e = 0 (x runs down the rows): its pixels have area, so it is mapped."""
    src = write_raster(tmp_path / "x.tif", np.full((40, 40, 3), 90, np.uint8), nodata=None)
    with rasterio.open(src, "r+") as ds:
        ds.transform = rasterio.Affine(0.0, 0.5, 500000, 0.5, 0.0, 5000000)
    assert check_raster(src, MapOptions(), 0.5) is not None


@pytest.mark.parametrize(
    "transform, says",
    [
        (rasterio.Affine(0.5, 0.0, math.nan, 0.0, -0.5, 5000000), "is not numbers throughout"),  # NaN GeoJSON
        (rasterio.Affine(6e-6, 0.0, 359.0, 0.0, -4.5e-6, 60.0), "run from 359 to 359.0007, past ±180"),  # 0-360
        (rasterio.Affine(6e-6, 0.0, 179.9995, 0.0, -4.5e-6, 60.0), "past ±180"),  # its east part mapped nodata
    ],
    ids=["nan", "0-360", "antimeridian"],
)
def test_a_geotransform_the_warp_cannot_place_is_refused(
    checkpoint: Path, scene, tmp_path: Path, capsys, transform, says: str
) -> None:
    src = write_raster(tmp_path / "in/x.tif", scene[0][:100, :120], crs="EPSG:4326" if transform.a < 1e-3 else UTM)
    with rasterio.open(src, "r+") as ds:
        ds.transform = transform
    out = str(tmp_path / "out")
    assert cli("predict", str(checkpoint), str(src), "-o", out, "--reproject", "EPSG:32630", "--polygons") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    if transform.a < 1e-3:  # the advice: the zone of the longitudes wrapped into -180..180
        assert f"gdalwarp -t_srs {'EPSG:32630' if transform.c > 300 else 'EPSG:32660'} x.tif utm.tif" in err, err


@pytest.mark.parametrize("inputs", [["x.tif"], ["x.tif", "a.png"]])
def test_the_model_files_adapt_bn_note_says_what_each_input_is_adapted_to(
    scene, tmp_path: Path, capsys, inputs: list[str]
) -> None:
    ckpt = random_checkpoint(tmp_path / "m.pt", tile=64, adapt_bn=0.25)
    write_raster(tmp_path / "x.tif", scene[0][:80, :80])
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "a.png")
    assert cli("predict", str(ckpt), *(str(tmp_path / f) for f in inputs), "-o", str(tmp_path / "out")) == 0
    to = "the 1 picture(s) to all of them, as one scene (give each scene a call of its own) and " * (len(inputs) > 1)
    said = f"note: batch-norm adapted by 0.25, the model file's: {to}each GeoTIFF to itself (--adapt-bn 0: off)"
    assert said in capsys.readouterr().out


def test_a_rerun_removes_the_outputs_of_an_earlier_one_that_it_does_not_write(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    src = write_raster(tmp_path / "in/x.tif", scene[0][:80, :80])
    out = tmp_path / "out"
    assert cli("predict", str(checkpoint), str(src), "-o", str(out), "--probability", "uint8", "--polygons") == 0
    assert {p.name for p in out.iterdir()} >= {"x_mask.tif", "x_probability.tif", "x_forest.geojson"}
    capsys.readouterr()
    assert cli("predict", str(checkpoint), str(src), "-o", str(out), "--polygons") == 0  # another model, say
    said = capsys.readouterr().out
    assert not (out / "x_probability.tif").exists() and (out / "x_forest.geojson").exists()
    assert (
        f"note: removed {out / 'x_probability.tif'}: an earlier run's probability, which this run does not write"
        in said
    )


def test_a_much_coarser_raster_gets_a_note(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    src = write_raster(tmp_path / "in/s2.tif", scene[0][:40, :60], pixel=2.5, nodata=None)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "note: s2.tif: its 2.5 m pixels are 5x the model's 0.5 m: each is predicted as 25 model pixels" in out
    assert "mask on the input's 2.5 m grid" in out


def test_alpha_band_and_internal_mask_are_nodata(checkpoint: Path, scene, tmp_path: Path) -> None:
    image = scene[0]
    alpha = np.full(image.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0
    rgba = write_raster(
        tmp_path / "in/rgba.tif", np.dstack([image, alpha]), nodata=None, photometric="RGB", alpha="YES"
    )
    with rasterio.open(rgba) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(write_raster(tmp_path / "in/masked.tif", image, nodata=None), "r+") as ds,
    ):
        ds.write_mask(alpha)
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    plain = Predictor.load(checkpoint, torch.device("cpu")).mask(image)
    for name in ("rgba", "masked"):
        mask, _ = read(tmp_path / f"out/{name}_mask.tif")
        assert (mask[:, :100] == 255).all() and (mask[:, 100:] != 255).all()
        assert np.array_equal(mask[:, 100:] == 1, plain[:, 100:])


def test_band_order_and_extra_bands(checkpoint: Path, scene, tmp_path: Path) -> None:
    image = scene[0]
    nir = np.full(image.shape[:2], 200, np.uint8)
    write_raster(tmp_path / "rgb/x.tif", image, nodata=None)
    write_raster(tmp_path / "bgr/x.tif", image[..., ::-1], nodata=None)
    # MINISBLACK: 4 plain bands (GDAL would tag a 4th band of an RGB TIFF as alpha)
    write_raster(tmp_path / "rgbn/x.tif", np.dstack([image, nir]), nodata=None, photometric="MINISBLACK")
    write_raster(tmp_path / "nrgb/x.tif", np.dstack([nir, image]), nodata=None, photometric="MINISBLACK")
    for folder, bands in (("rgb", "1,2,3"), ("bgr", "3,2,1"), ("rgbn", "1,2,3"), ("nrgb", "2,3,4")):
        assert (
            cli(
                "predict",
                str(checkpoint),
                str(tmp_path / folder),
                "-o",
                str(tmp_path / f"out-{folder}"),
                "--bands",
                bands,
            )
            == 0
        )
    reference = read(tmp_path / "out-rgb/x_mask.tif")[0]
    for folder in ("bgr", "rgbn", "nrgb"):
        assert np.array_equal(read(tmp_path / f"out-{folder}/x_mask.tif")[0], reference), folder


def test_a_near_infrared_band_tagged_alpha_gets_a_note(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """GDAL tags a 4th band of an RGB TIFF as alpha by default: an RGBN file's NIR then hides pixels."""
    image = scene[0]
    nir = np.full(image.shape[:2], 120, np.uint8)
    nir[:50, :50] = 0  # dark water in near-infrared: read as transparent
    write_raster(tmp_path / "in/rgbn.tif", np.dstack([image, nir]), nodata=None)  # band 4 tagged alpha
    with rasterio.open(tmp_path / "in/rgbn.tif") as ds:
        assert ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "rgbn.tif: band 4 is tagged alpha (transparency) but holds values other than 0 and 255" in out
    assert "gdal_edit.py -colorinterp_4 undefined rgbn.tif" in out
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--bands", "2,3,4") == 2
    assert "untag it: gdal_edit.py -colorinterp_4 undefined rgbn.tif" in capsys.readouterr().err


def test_a_sheared_grid_with_the_models_side_is_resampled(checkpoint: Path, scene, tmp_path: Path) -> None:
    """Sides of 0.5 m meeting at 60 degrees are not the model's 0.5 m squares: predicted on a square grid."""
    image = scene[0]
    src = write_raster(tmp_path / "in/sheared.tif", image, nodata=None)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    with rasterio.open(src, "r+") as ds:
        ds.transform = rasterio.Affine(0.5 * c, -0.5 * s, 500000, 0.5 * s, -0.5 * c, 5000000)
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]
    assert row["resampled"] and row["model_pixel_size_m"] == 0.5
    # |det| = 0.125 m2 (not 0.25): every pixel counts, to its edges
    assert row["valid_ha"] == pytest.approx(image.shape[0] * image.shape[1] * 0.125 / 1e4, abs=1e-4)


def test_an_engineering_crs_in_metres_is_mapped_at_its_unit(checkpoint: Path, scene, tmp_path: Path) -> None:
    """A site grid (LOCAL_CS) has no projection, so no lon/lat, but its unit gives the pixels' size."""
    local = (
        'LOCAL_CS["site grid",LOCAL_DATUM["arbitrary",0],UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    )
    image = scene[0]
    write_raster(tmp_path / "in/site.tif", image, crs=rasterio.crs.CRS.from_wkt(local), nodata=None)
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]
    assert row["pixel_size_m"] == 0.5 and not row["resampled"]
    assert row["valid_ha"] == pytest.approx(image.shape[0] * image.shape[1] * 0.25 / 1e4)


def test_a_local_grid_s_polygons_stay_in_its_own_coordinates(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """No transformation links a site grid to lon/lat: the polygons keep the grid's coordinates (it raised)."""
    local = (
        'LOCAL_CS["site grid",LOCAL_DATUM["arbitrary",0],UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    )
    write_raster(
        tmp_path / "in/site.tif", scene[0], crs=rasterio.crs.CRS.from_wkt(local), nodata=None, origin=(1000, 2000)
    )
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--polygons") == 0
    assert "site.tif: its CRS is a local grid (" in capsys.readouterr().out
    collection = json.loads((tmp_path / "out/site_forest.geojson").read_text())
    assert "crs" not in collection and collection["features"]
    xs = [x for f in collection["features"] for x, _ in f["geometry"]["coordinates"][0]]
    ys = [y for f in collection["features"] for _, y in f["geometry"]["coordinates"][0]]
    assert 1000 <= min(xs) <= max(xs) <= 1000 + 400 * 0.5 and 2000 - 300 * 0.5 <= min(ys) <= max(ys) <= 2000
    mask, _ = read(tmp_path / "out/site_mask.tif")
    areas = [f["properties"]["area_m2"] for f in collection["features"]]
    assert sum(areas) == pytest.approx((mask == 1).sum() * 0.25, abs=0.1)


def test_metres_tagged_as_degrees_are_told_the_tag_is_wrong(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    src = write_raster(tmp_path / "in/slip.tif", scene[0][:64, :64], crs="EPSG:4326")  # UTM metres, tagged 4326
    for extra in ([], ["--reproject", UTM]):
        assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "are no longitudes and latitudes: the CRS tag is wrong" in err, err
        assert "gdal_edit.py -a_srs EPSG:<code> slip.tif" in err and "UTM zone" not in err


def test_geographic_raster_is_refused_unless_reprojected(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    image = with_nodata_corner(scene[0])
    src = tmp_path / "wgs84.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=400,
        height=300,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=from_origin(15.0, 50.0, 6e-6, 4e-6),
        nodata=0,
    ) as ds:  # ~0.43 m x 0.44 m at 50 N
        ds.write(np.moveaxis(image, -1, 0))
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "is geographic (degrees)" in err and "--reproject EPSG:32633" in err
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--reproject", "EPSG:32633") == 0
    assert "m, mask on the reprojected 0.4" in capsys.readouterr().out
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]
    mask, meta = read(tmp_path / "out/wgs84_mask.tif")
    assert meta["crs"] == rasterio.crs.CRS.from_epsg(32633) and row["crs"] == "EPSG:32633"
    # the footprint is 400 x 6e-6 deg by 300 x 4e-6 deg: about 172 m x 133 m at 50 N, less the nodata corner
    lon_m, lat_m = 400 * 6e-6 * 111320 * np.cos(np.radians(50)), 300 * 4e-6 * 111200
    data_m2 = lon_m * lat_m * (1 - 40 * 70 / (300 * 400))
    assert row["valid_ha"] == pytest.approx(data_m2 / 1e4, rel=0.03)
    assert row["forest_ha"] == pytest.approx((mask == 1).sum() * row["pixel_size_m"] ** 2 / 1e4, rel=1e-3)
    assert (mask == 255).any()  # outside the warped footprint and the collar


def no_crs(path: Path) -> Path:
    return write_raster(path, np.zeros((64, 64, 3), np.uint8), crs=None)


@pytest.mark.parametrize(
    "case, flags, message",
    [
        ("no crs", [], "has a pixel grid but no CRS"),
        ("one band", [], "has 1 band(s); forest maps need 3 colour bands"),
        ("corrupt", [], "cannot be read as a GeoTIFF"),
        ("truncated", [], "x.tif: "),
        ("cut short", [], "x.tif: cannot be read as a GeoTIFF ("),  # its edges' blocks, read by the checks
        ("band 4 of 3", ["--bands", "1,2,4"], "--bands 1,2,4: "),
        ("two bands given", ["--bands", "1,2"], "--bands 1,2: give three band numbers"),
        ("band 0", ["--bands", "0,1,2"], "--bands 0,1,2: give three band numbers"),  # GDAL counts from 1
        ("alpha as colour", ["--bands", "2,3,4"], "is its alpha (transparency) band"),
        ("16 bit", [], "uint16; the model learned 8-bit colour"),
        ("geographic target", ["--reproject", "EPSG:4326"], "is not a projected CRS"),
        ("unknown target", ["--reproject", "EPSG:999999"], "not a CRS GDAL knows"),
        ("malformed vrt", [], "x.vrt: cannot be read"),
    ],
)
def test_bad_rasters_stop_with_one_line(checkpoint: Path, scene, tmp_path: Path, capfd, case, flags, message) -> None:
    """GDAL's and PROJ's own messages (written by the C libraries) are checked too: capfd, not capsys."""
    src = tmp_path / ("in/x.vrt" if case == "malformed vrt" else "in/x.tif")
    image = scene[0][:96, :128]
    if case == "no crs":
        write_raster(src, image, crs=None)
    elif case == "one band":
        write_raster(src, image[..., 0])
    elif case == "corrupt":
        src.parent.mkdir(parents=True)
        src.write_bytes(b"II*\x00" + b"\x17" * 500)  # a TIFF signature, then junk
    elif case in ("truncated", "cut short"):
        # without nodata the checks read its edges (the collar check), with it only mapping reads pixels
        nodata = 0 if case == "truncated" else None
        write_raster(tmp_path / "whole.tif", scene[0], tiled=True, compress="deflate", nodata=nodata)
        src.parent.mkdir(parents=True)
        data = (tmp_path / "whole.tif").read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif case == "alpha as colour":
        write_raster(
            src,
            np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]),
            nodata=None,
            alpha="YES",
            photometric="RGB",
        )
    elif case == "16 bit":
        write_raster(src, image.astype(np.uint16) * 200)
    elif case == "malformed vrt":
        src.parent.mkdir(parents=True)
        src.write_text('<VRTDataset rasterXSize="64"><VRTRasterBand band="1">')  # cut short
    else:
        write_raster(src, image)
    code = cli("predict", str(checkpoint), str(src.parent), "-o", str(tmp_path / "out"), *flags)
    err = capfd.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out/x_mask.tif").exists()


@pytest.mark.parametrize(
    "crs, origin, flags, says",
    [
        # World Mercator at 60 N: map areas 4x the ground's
        ("EPSG:3395", (1_000_000, 8_362_000), [], r"map CRS \(EPSG:3395\) makes areas (3\.9\d|4\.0\d)x the ground's"),
        ("EPSG:3857", (1_000_000, 8_400_000), [], r"map CRS \(EPSG:3857\) makes areas (3\.9\d|4\.0\d)x the ground's"),
        # Colorado in UTM 13N, warped to zone 33N by a typo: far outside that zone
        (
            "EPSG:32613",
            (500_000, 4_400_000),
            ["--reproject", "EPSG:32633"],
            r"EPSG:32633\) makes areas \d\.\d+x the ground's .* EPSG:32613",
        ),
        # the far side of the earth from an orthographic view's centre
        ("EPSG:32613", (500_000, 4_400_000), ["--reproject", "+proj=ortho +lat_0=60 +lon_0=100"], r"--reproject .*"),
    ],
)
def test_a_crs_whose_areas_are_not_the_grounds_is_refused(
    checkpoint: Path, scene, tmp_path: Path, capsys, crs, origin, flags, says
) -> None:
    write_raster(tmp_path / "in/x.tif", scene[0][:96, :128], crs=crs, origin=origin)
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "in/a.png")  # nothing may be written before the check
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"), *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(says, err), err
    assert not (tmp_path / "out").exists()


def test_utm_in_its_zone_and_a_local_foot_grid_pass_the_area_check(scene, tmp_path: Path) -> None:
    for crs, origin in (("EPSG:32613", (300_000, 4_400_000)), ("EPSG:2263", (988_000, 213_000))):
        path = write_raster(tmp_path / f"{crs[5:]}.tif", scene[0][:64, :64], crs=crs, origin=origin)
        assert check_raster(path, MapOptions(), 0.5) is not None


@pytest.mark.parametrize("case", ["rpc", "crs, no grid"])
def test_headers_without_a_grid_are_refused_for_what_they_are(
    checkpoint: Path, scene, tmp_path: Path, capsys, case
) -> None:
    src = tmp_path / "in/x.tif"
    src.parent.mkdir()
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 3, "dtype": "uint8"}
    if case == "rpc":
        rpcs = rasterio.rpc.RPC(
            height_off=100, height_scale=100, lat_off=40, lat_scale=0.01, line_den_coeff=[1] + [0] * 19,
            line_num_coeff=[0, 0, -1] + [0] * 17, line_off=32, line_scale=32, long_off=-105, long_scale=0.01,
            samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_off=32, samp_scale=32,
        )  # fmt: skip
        profile["rpcs"] = rpcs
    else:
        profile["crs"] = UTM
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(np.moveaxis(scene[0][:64, :64], -1, 0))
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    says = "georeferenced by RPCs (a raw satellite scene)" if case == "rpc" else "has a CRS but no pixel grid"
    assert err.count("\n") == 1 and says in err, err


@pytest.mark.parametrize(
    "driver, suffix", [("VRT", ".vrt"), ("JP2OpenJPEG", ".jp2"), ("JPEG", ".jpg"), ("PNG", ".png")]
)
@pytest.mark.parametrize("given", ["file", "folder"])
def test_georeferenced_files_of_other_formats_are_mapped(
    checkpoint: Path, scene, tmp_path: Path, driver: str, suffix: str, given: str
) -> None:
    """A VRT or JPEG 2000 with a georeference, and a JPEG or PNG whose world file and .aux.xml give it
    a CRS and a grid (as QGIS and gdal_translate -co WORLDFILE=YES export them), are mapped."""
    tif = write_raster(tmp_path / "src/ortho.tif", scene[0][:128, :128])
    other = tmp_path / f"in/ortho{suffix}"
    other.parent.mkdir()
    rasterio.shutil.copy(tif, other, driver=driver, **({"WORLDFILE": "YES"} if driver in ("JPEG", "PNG") else {}))
    assert (
        cli("predict", str(checkpoint), str(other if given == "file" else other.parent), "-o", str(tmp_path / "out"))
        == 0
    )
    mask, meta = read(tmp_path / "out/ortho_mask.tif")
    assert meta["crs"] == rasterio.crs.CRS.from_string(UTM) and mask.shape == (128, 128)


def test_a_picture_of_another_type_named_on_the_command_line_is_predicted(checkpoint: Path, tmp_path: Path) -> None:
    """GDAL cannot read an .ico: it is a picture for Pillow, not a raster that stops the run."""
    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 64), (30, 90, 30)).save(tmp_path / "in/a.ico")
    assert cli("predict", str(checkpoint), str(tmp_path / "in/a.ico"), "-o", str(tmp_path / "out")) == 0
    assert (tmp_path / "out/a_mask.png").is_file()


def test_sidecars_are_found_when_added_later_and_in_a_folder_that_cannot_be_listed(
    scene, tmp_path: Path, monkeypatch
) -> None:
    from forestseg import geo

    tif = write_raster(tmp_path / "src/ortho.tif", scene[0][:64, :64])
    folder = tmp_path / "in"
    folder.mkdir()
    jpg = folder / "ortho.jpg"
    Image.fromarray(scene[0][:64, :64]).save(jpg)
    assert not geo.is_map(jpg)  # no sidecar yet: a plain picture
    rasterio.shutil.copy(tif, tmp_path / "src/ortho.jpg", driver="JPEG", WORLDFILE="YES")
    for name in ("ortho.wld", "ortho.jpg.aux.xml"):
        (folder / name).write_bytes((tmp_path / "src" / name).read_bytes())
    assert geo.is_map(jpg)  # the folder changed: listed again
    monkeypatch.setattr(geo, "_listing", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert geo.is_map(jpg)  # each sidecar looked up by name instead


def test_reproject_to_the_rasters_own_crs_says_the_inputs_grid(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    src = write_raster(tmp_path / "in/o.tif", scene[0][:128, :128])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--reproject", UTM) == 0
    assert "predicted at the input's 0.5 m" in capsys.readouterr().out


def test_a_bmp_with_a_world_file_is_a_picture_as_a_jpeg_is(checkpoint: Path, scene, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "in/a.bmp")
    (tmp_path / "in/a.bpw").write_text("0.5\n0\n0\n-0.5\n500000\n6600000\n")  # a grid, no CRS
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    assert (tmp_path / "out/a_mask.png").is_file()


def test_a_picture_with_a_world_file_but_no_crs_says_why_it_gets_no_area(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "in/a.png")
    (tmp_path / "in/a.pgw").write_text("0.5\n0\n0\n-0.5\n500000\n6600000\n")
    (tmp_path / "in/a.prj").write_text(
        rasterio.crs.CRS.from_epsg(32633).to_wkt(version="WKT1_ESRI")
    )  # GDAL reads no .prj
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "in/b.png")  # no world file: no note about it
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "note: a.png: a world file gives the pixel grid but no CRS" in out and "b.png" not in out
    assert f"gdal_translate -a_srs EPSG:<code> {tmp_path}/in/a.png {tmp_path}/in/a.tif" in out
    assert (tmp_path / "out/a_mask.png").is_file() and not (tmp_path / "out/forest_area.csv").exists()


def test_a_file_named_twice_is_predicted_once_where_it_first_came(
    checkpoint: Path, scene, tmp_path: Path, monkeypatch
) -> None:
    src = write_raster(tmp_path / "in/o.tif", scene[0][:64, :64])
    write_raster(tmp_path / "in/p.tif", scene[0][64:128, :64])
    monkeypatch.chdir(tmp_path)
    argv = [str(src), "in/p.tif", "in/o.tif", "./in/o.tif"]
    assert cli("predict", str(checkpoint), *argv, "-o", str(tmp_path / "out")) == 0
    assert [Path(f).name for f in pd.read_csv(tmp_path / "out/forest_area.csv")["file"]] == ["o.tif", "p.tif"]


def test_geographic_rows_running_south_to_north_are_degrees_too(checkpoint: Path, scene, tmp_path: Path) -> None:
    """A positive y step (xarray, NetCDF exports) puts rasterio's bottom above its top: still degrees."""
    up = Affine(5e-6, 0, 15, 0, 5e-6, 50)
    src = write_raster(tmp_path / "up.tif", scene[0][:128, :128], crs="EPSG:4326", nodata=None, transform=up)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--reproject", UTM) == 0
    assert pd.read_csv(tmp_path / "out/forest_area.csv")["valid_ha"][0] > 0


def test_a_plain_16_bit_tiff_is_refused_with_the_conversion(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    write_raster(tmp_path / "in/scan.tif", scene[0][:64, :64].astype(np.uint16), crs=None, nodata=None, transform=None)
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "in/photo.png")
    # no georeference: a picture, which fails alone (a raster that cannot be mapped stops the run)
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "uint16; the model learned 8-bit colour: convert with gdal_translate" in err, err
    assert "wrote 1 mask(s)" in out and "1 image(s) failed" in out and (tmp_path / "out/photo_mask.png").exists()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_plain_grey_tiff_is_told_it_needs_colour_whatever_its_bits(
    checkpoint: Path, scene, tmp_path: Path, capsys, dtype
) -> None:
    """Told to convert 16 bits to 8 first, a grey TIFF would then be refused as grey: colour is said first."""
    write_raster(tmp_path / "in/scan.tif", scene[0][:64, :64, :1].astype(dtype), crs=None, nodata=None, transform=None)
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "scan.tif: " in err and "forestseg needs RGB images" in err and "8-bit" not in err, err


@pytest.mark.parametrize("before", ["picture", "raster"])
def test_a_tiff_refused_as_a_picture_leaves_no_earlier_output(
    checkpoint: Path, scene, tmp_path: Path, capsys, before: str
) -> None:
    """An earlier run's mask (and forest_area.csv row) of a file that now fails is never left beside this run's."""
    georef = {} if before == "raster" else {"crs": None, "nodata": None, "transform": None}
    write_raster(tmp_path / "in/scan.tif", scene[0][:64, :64], **georef)
    write_raster(tmp_path / "in/other.tif", scene[0][64:128, :64])
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    was = tmp_path / "out" / ("scan_mask.tif" if before == "raster" else "scan_mask.png")
    assert was.is_file()
    write_raster(tmp_path / "in/scan.tif", scene[0][:64, :64].astype(np.uint16), crs=None, nodata=None, transform=None)
    capsys.readouterr()
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 1
    assert f"removed 1 output of an earlier run from {tmp_path / 'out'} whose images now fail to read: {was.name}" in (
        capsys.readouterr().out
    )
    assert not was.exists() and [Path(f).name for f in pd.read_csv(tmp_path / "out/forest_area.csv")["file"]] == [
        "other.tif"
    ]


def test_a_crs_in_kilometres_maps_without_proj_s_stray_lines(checkpoint: Path, scene, tmp_path: Path) -> None:
    """rasterio's wheel left the PROJ context of unit lookups without its proj.db: 'Cannot find proj.db' x4."""
    import subprocess
    import sys

    km = "+proj=tmerc +lat_0=0 +lon_0=15 +k=0.9996 +x_0=500 +y_0=0 +ellps=WGS84 +units=km +no_defs"
    src = write_raster(tmp_path / "in/km.tif", scene[0][:64, :64], crs=km, pixel=0.0005, origin=(500, 5000))
    env = {k: v for k, v in os.environ.items() if k not in ("PROJ_DATA", "PROJ_LIB")}
    out = subprocess.run(
        [sys.executable, "-m", "forestseg.cli", "predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0 and "proj.db" not in out.stderr, out.stderr
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]
    assert row["pixel_size_m"] == pytest.approx(0.5) and row["valid_ha"] == pytest.approx(64 * 64 * 0.25 / 1e4)


def test_a_custom_crs_is_named_in_full(checkpoint: Path, scene, tmp_path: Path) -> None:
    custom = "+proj=tmerc +lat_0=45 +lon_0=15.5 +k=1 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs"
    write_raster(tmp_path / "in/x.tif", scene[0][:64, :64], crs=custom, origin=(0, 0))
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 0
    crs = pd.read_csv(tmp_path / "out/forest_area.csv")["crs"][0]
    assert rasterio.crs.CRS.from_string(crs) == rasterio.crs.CRS.from_string(custom), crs


def test_adapt_bn_with_no_whole_window_says_so(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    write_raster(tmp_path / "in/x.tif", scene[0][:40, :50])
    Image.fromarray(scene[0][:40, :50]).save(tmp_path / "in/a.png")
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--adapt-bn", "1") == 0
    out = capsys.readouterr().out
    assert "x.tif: no whole 64-px window with data to adapt batch-norm to" in out
    assert "no picture holds a whole 64-px window" in out


def test_failed_pictures_are_listed_before_a_raster_that_fails_stops_the_run(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    write_raster(tmp_path / "whole.tif", scene[0], tiled=True, compress="deflate")
    (tmp_path / "in").mkdir()
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "in/x.tif").write_bytes(data[: len(data) // 2])  # its header reads; its blocks do not
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "in/good.jpg")
    (tmp_path / "in/bad.jpg").write_bytes(b"\xff\xd8")
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "x.tif: failed while mapping" in err, err
    assert err.index("bad.jpg") < err.index("x.tif: failed")


def test_tiff_without_any_georeference_is_a_plain_picture(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in/scan.tif"
    src.parent.mkdir()
    Image.fromarray(scene[0]).save(src)
    assert cli("predict", str(checkpoint), str(src.parent), "-o", str(tmp_path / "out")) == 0
    mask = np.asarray(Image.open(tmp_path / "out/scan_mask.png")) > 0
    assert np.array_equal(mask, Predictor.load(checkpoint, torch.device("cpu")).mask(scene[0]))
    assert not (tmp_path / "out/forest_area.csv").exists()


def test_a_ycbcr_jpeg_tiff_without_a_georeference_is_a_plain_picture(checkpoint: Path, scene, tmp_path: Path) -> None:
    """GDAL's `-co COMPRESS=JPEG -co PHOTOMETRIC=YCBCR` of orthophotos: its compression, 'YCbCr JPEG', came
    from rasterio as text, and reading it as a Compression stopped the whole call with a traceback."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        src = write_raster(
            tmp_path / "in/scan.tif",
            scene[0],
            crs=None,
            transform=None,
            nodata=None,
            compress="jpeg",
            photometric="YCBCR",
        )
    from forestseg.images import decode

    assert cli("predict", str(checkpoint), str(src.parent), "-o", str(tmp_path / "out")) == 0
    pixels = decode(src.read_bytes()).pixels
    with rasterio.open(src) as ds:  # GDAL turns YCbCr into RGB
        assert np.abs(pixels.astype(int) - ds.read().transpose(1, 2, 0)).mean() < 1  # chroma upsampled otherwise
    mask = np.asarray(Image.open(tmp_path / "out/scan_mask.png")) > 0
    assert np.array_equal(mask, Predictor.load(checkpoint, torch.device("cpu")).mask(pixels))


@pytest.mark.parametrize(
    "extra, says",
    [
        ({"nodata": 0}, "has nodata value 0 but no georeference, so as a plain picture its invalid pixels"),
        ({"photometric": "MINISBLACK"}, "its 3 bands are tagged grey (TIFF photometric MINISBLACK)"),
    ],
)
def test_a_plain_tiff_that_the_picture_reader_would_misread_is_refused(
    checkpoint: Path, scene, tmp_path: Path, capsys, extra: dict, says: str
) -> None:
    """Pillow reads neither GDAL's nodata value (its nodata area would be predicted as ground) nor a
    3-band grey-tagged TIFF (it would say only that it cannot decode it); an alpha band it honours."""
    write_raster(tmp_path / "in/scan.tif", scene[0][:64, :64], crs=None, transform=None, **{"nodata": None, **extra})
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"scan.tif: {says}" in err, err
    rgba = np.dstack([scene[0][:64, :64], np.full((64, 64), 255, np.uint8)])
    write_raster(tmp_path / "ok/scan.tif", rgba, crs=None, transform=None, nodata=None, photometric="RGB", alpha="YES")
    assert cli("predict", str(checkpoint), str(tmp_path / "ok"), "-o", str(tmp_path / "out")) == 0


@pytest.mark.parametrize(
    "case, says",
    [
        ("bgr", "its bands 3,2,1 are tagged red, green, blue, but without a georeference it is read as a plain"),
        ("nrgb", "its bands 2,3,4 are tagged red, green, blue, but without a georeference"),
        ("rgb", None),
        ("rgba", None),  # a real alpha: 0 and 255
        ("soft alpha", None),  # an antialiased cut-out's edge: the picture reader keeps any alpha above 0
    ],
)
def test_a_plain_tiff_whose_band_tags_the_picture_reader_ignores_is_refused(
    checkpoint: Path, scene, tmp_path: Path, capsys, case: str, says: str | None
) -> None:
    """Without a georeference a TIFF is read as a picture, bands 1, 2, 3 as red, green, blue, whatever
    GDAL's tags say: a BGR one was predicted with blue as red, an NRGB one with near-infrared as red (a
    review). A 4th band tagged alpha is transparency, soft edges included (a near-infrared band tagged
    so was refused once, and so were antialiased cut-outs: not any more)."""
    import warnings

    rgb = scene[0][:64, :64]
    bands = {
        "bgr": rgb,
        "nrgb": np.dstack([rgb[..., 0] // 2 + 1, rgb]),
        "rgb": rgb,
        "rgba": np.dstack([rgb, np.full((64, 64), 255, np.uint8)]),
        "soft alpha": np.dstack([rgb, np.clip(np.arange(64 * 64).reshape(64, 64) // 8, 1, 255).astype(np.uint8)]),
    }[case]
    extra = {"photometric": "RGB", "alpha": "YES"} if "alpha" in case else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        src = write_raster(tmp_path / "in/scan.tif", bands, crs=None, transform=None, nodata=None, **extra)
        tags = {"bgr": [B, G, R], "nrgb": [N, R, G, B]}.get(case)
        if tags:
            with rasterio.open(src, "r+") as ds:
                ds.colorinterp = tags
    code = cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert (code, says is None or f"scan.tif: {says}" in err) == (1 if says else 0, True), err
    assert says is None or err.count("\n") == 1, err


def test_a_damaged_plain_tiff_fails_alone(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """Its header reads, its pixels do not: the picture reader says so for it alone, and the other
    pictures are written (a check that read its alpha band raised GDAL's error for the whole call)."""
    rgba = np.dstack([scene[0][:64, :64], np.full((64, 64), 255, np.uint8)])
    (tmp_path / "in").mkdir()
    Image.fromarray(rgba).save(tmp_path / "in/damaged.tif", compression="tiff_adobe_deflate")
    data = bytearray((tmp_path / "in/damaged.tif").read_bytes())  # the strips first, the header's IFD last
    data[100:300] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    (tmp_path / "in/damaged.tif").write_bytes(bytes(data))
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "in/good.png")
    assert cli("predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'in/damaged.tif'}: ") and err.count("\n") == 1, err
    assert (tmp_path / "out/good_mask.png").is_file()


def test_probability_and_polygons(checkpoint: Path, scene, tmp_path: Path) -> None:
    image = with_nodata_corner(scene[0])
    src = write_raster(tmp_path / "in/o.tif", image)
    for kind in ("uint8", "float32"):
        assert (
            cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / kind), "--probability", kind, "--polygons")
            == 0
        )
    mask, _ = read(tmp_path / "uint8/o_mask.tif")
    with rasterio.open(tmp_path / "uint8/o_probability.tif") as ds:
        p8, valid = ds.read(1), ds.dataset_mask() > 0
        assert ds.nodata is None  # an internal mask: a nodata 0 would hide the pixels of probability 0
    with rasterio.open(tmp_path / "float32/o_probability.tif") as ds:
        p32 = ds.read(1)
    assert np.array_equal(valid, mask != 255) and np.isnan(p32[mask == 255]).all()
    assert np.abs(p8[valid] / 255 - p32[valid]).max() <= 0.5 / 255 + 1e-6
    assert ((p32 > 0.5) == (mask == 1))[valid].mean() > 0.999  # p = 0.5 is the cut of a bce model

    collection = json.loads((tmp_path / "uint8/o_forest.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert collection["name"] == "o_forest"  # the file's, not the temp file's it was written as
    areas = [f["properties"]["area_m2"] for f in collection["features"]]
    assert sum(areas) == pytest.approx((mask == 1).sum() * 0.25, abs=0.1)  # 4-connected polygons tile the forest
    assert all(
        a == pytest.approx(polygon_area(f["geometry"]["coordinates"]), abs=0.01)
        for a, f in zip(areas, collection["features"])
    )
    assert (
        cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "big"), "--polygons", "--min-area-m2", "50") == 0
    )
    kept = [f["properties"]["area_m2"] for f in json.loads((tmp_path / "big/o_forest.geojson").read_text())["features"]]
    assert kept and min(kept) >= 50 and sorted(kept) == sorted(a for a in areas if a >= 50)


@pytest.mark.parametrize("south_up", [False, True])
def test_polygon_rings_follow_the_right_hand_rule(checkpoint: Path, scene, tmp_path: Path, south_up: bool) -> None:
    """RFC 7946: outer rings counterclockwise, holes clockwise, whichever way the raster's rows run."""
    image = scene[0]
    src = tmp_path / "in/o.tif"
    write_raster(src, image, nodata=None)
    if south_up:  # the same pixels with rows running north
        with rasterio.open(src, "r+") as ds:
            ds.transform = rasterio.Affine(0.5, 0, 500000, 0, 0.5, 5000000 - 0.5 * image.shape[0])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--polygons") == 0
    features = json.loads((tmp_path / "out/o_forest.geojson").read_text())["features"]

    def signed(ring: list) -> float:
        xs, ys = np.array(ring).T
        return float(np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1]))

    rings = [(i, signed(r)) for f in features for i, r in enumerate(f["geometry"]["coordinates"])]
    assert rings and any(i for i, _ in rings)  # some holes too
    assert all((area > 0) == (i == 0) for i, area in rings)


def test_polygon_area_subtracts_holes() -> None:
    square = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[2, 2], [2, 4], [4, 4], [4, 2], [2, 2]]
    assert polygon_area([square, hole]) == 96


def test_polygon_area_holds_its_digits_at_large_coordinates() -> None:
    """A UTM northing near 1e7: the shoelace over absolute coordinates gave 0.248 m2 for a 0.5 m square."""
    x, y = 799999.1, 9899999.3
    for side in (0.5, 0.1, 250.0):
        ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        assert polygon_area([ring]) == pytest.approx(side * side, rel=1e-6)


def test_evaluate_tiles_on_a_split_and_its_area_bias_in_the_csv(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    data = make_set(tmp_path / "set", scenes=4, grid=2, tile_size=64)
    index = pd.read_csv(data / "meta_data.csv")
    scenes = index["image"].str.split("_").str[0]
    test = sorted(set(scenes))[:2]
    split = pd.DataFrame({"image": index["image"], "subset": np.where(scenes.isin(test), "test", "train")})
    split.to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(checkpoint), str(data), "--split", str(tmp_path / "split.csv"), "-o", str(out)) == 0
    result = json.loads(out.read_text())
    assert (result["tiles"], result["scenes"], result["subset"]) == (8, 2, "test")
    assert {"iou", "precision", "recall", "true_forest_ha", "predicted_forest_ha", "area_bias_pct"} <= set(result)
    truth = sum(s["true_forest_ha"] for s in result["per_scene"])
    assert result["true_forest_ha"] == pytest.approx(truth, abs=1e-4)
    bias = 100 * (result["predicted_forest_ha"] - result["true_forest_ha"]) / result["true_forest_ha"]
    assert result["area_bias_pct"] == pytest.approx(bias, abs=0.01)
    printed = capsys.readouterr().out
    assert "forest IoU" in printed and "area bias" in printed
    assert "forest area at the model's 0.5 m pixels: predicted" in printed  # tiles carry no pixel size

    src = write_raster(tmp_path / "in/o.tif", scene[0])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--area-error", str(out)) == 0
    assert pd.read_csv(tmp_path / "out/forest_area.csv")["area_bias_pct"].iloc[0] == pytest.approx(
        result["area_bias_pct"]
    )


@pytest.mark.parametrize("adapt_bn", [0.0, 1.0])
def test_evaluate_tiles_scores_the_same_whatever_tiles_share_a_forward_pass(
    predictor: Predictor, tmp_path: Path, monkeypatch, adapt_bn: float
) -> None:
    """Tiles run in batches of a scene's tiles; each scored as one forward pass of its own scores the same."""
    from forestseg import evaluate as module

    data = make_set(tmp_path / "set", scenes=2, grid=3, tile_size=predictor.tile)  # 9 tiles a scene
    results = []
    for batch in (1, 4, 32):  # one by one (as mask() of each tile), chunks across a scene, a scene at once
        monkeypatch.setattr(module, "TILE_BATCH", batch)
        results.append(module.evaluate_tiles(predictor, data, log=lambda s: None, adapt_bn=adapt_bn))
    assert results[0]["tiles"] == 18 and results[0]["scenes"] == 2
    assert results[1] == results[0] and results[2] == results[0]


def test_evaluate_tiles_scores_each_scene_with_the_model_adapted_to_that_scene(
    predictor: Predictor, tmp_path: Path
) -> None:
    """--adapt-bn: each scene's tiles are predicted by the model adapted to that scene's own tiles, as
    `Predictor.for_scene` adapts it (one scene darkened, so the two adaptations differ)."""
    from forestseg import evaluate as module
    from forestseg.images import decode

    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=predictor.tile)
    index = pd.read_csv(data / "meta_data.csv")
    scenes = index["image"].str.split("_").str[0]
    dark = sorted(set(scenes))[0]
    for name in index["image"][scenes == dark]:
        Image.fromarray(decode((data / "images" / name).read_bytes()).pixels // 3).save(
            data / "images" / name, quality=95
        )
    tiles = {
        s: [decode((data / "images" / n).read_bytes()).pixels for n in index["image"][scenes == s]] for s in set(scenes)
    }
    result = module.evaluate_tiles(predictor, data, log=lambda s: None, adapt_bn=1.0)
    assert result["adapted_scenes"] == 2
    m2 = predictor.pixel_size_m**2
    for row in result["per_scene"]:
        own = predictor.for_scene(tiles[row["scene"]], 1.0)
        predicted = sum(int(own.mask(t).sum()) for t in tiles[row["scene"]])
        assert row["predicted_forest_ha"] == pytest.approx(predicted * m2 / 1e4, abs=1e-6), row["scene"]
    other = {s: predictor.for_scene(tiles[next(iter(set(tiles) - {s}))], 1.0) for s in tiles}  # the wrong scene's
    assert any(
        sum(int(other[s].mask(t).sum()) for t in tiles[s]) * m2 / 1e4
        != pytest.approx(r["predicted_forest_ha"], abs=1e-6)
        for r in result["per_scene"]
        for s in [r["scene"]]
    )  # the check above can tell one scene's adaptation from the other's


def test_evaluate_records_what_it_left_out_in_its_json(checkpoint: Path, tmp_path: Path) -> None:
    """Pairs the index skipped and split rows that are no pair are in eval.json, not only on stdout."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    index = pd.read_csv(data / "meta_data.csv")
    (data / "masks" / index["mask"][0]).unlink()
    split = pd.DataFrame({"image": [*index["image"], "9_sat_1.jpg"], "subset": "test"})
    split.to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(checkpoint), str(data), "--split", str(tmp_path / "split.csv"), "-o", str(out)) == 0
    result = json.loads(out.read_text())
    assert result["tiles"] == len(index) - 1
    assert result["skipped"]["pairs"] == 1 and sum(result["skipped"]["by_reason"].values()) == 1
    assert result["skipped"]["split_rows"] == 2  # the pair without its mask, and an image not in the set
    [pair] = result["skipped"]["skipped_pairs"]
    assert pair["mask"] == index["mask"][0] and pair["reason"].startswith("missing file masks/")


@pytest.mark.parametrize("recorded", ["fp32", "bf16", None])
def test_evaluate_runs_in_the_runs_own_precision_when_told(
    checkpoint: Path, tmp_path: Path, capsys, recorded: str | None
) -> None:
    """--precision trained: the precision the run scored its test tiles in, from its model file, so
    evaluate reproduces the run's scores whatever `auto` picks on this machine; a file older than that
    record runs as auto, and says so."""
    from forestseg.device import use_bf16

    state = torch.load(checkpoint, weights_only=True)
    state.pop("precision")
    if recorded is not None:
        state["precision"] = recorded
    model = tmp_path / f"{recorded}.pt"
    torch.save(state, model)
    data = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=64)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(model), str(data), "--precision", "trained", "-o", str(out)) == 0
    auto = "bf16" if use_bf16("auto", torch.device("cpu")) else "fp32"
    assert json.loads(out.read_text())["dtype"] == (recorded or auto)
    noted = f"records no precision (a model file older than that record), so it runs as auto picks here: {auto}"
    assert (noted in capsys.readouterr().out) == (recorded is None)


def test_evaluate_tries_its_output_before_scoring(checkpoint: Path, tmp_path: Path, capsys) -> None:
    """A folder that takes no file (here one under /proc, which refuses root too) is said before any
    tile is scored, and the folders made to try it are removed."""
    data = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=64)
    assert cli("evaluate", str(checkpoint), str(data), "-o", "/proc/self/forestseg-test/eval.json") == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: -o /proc/self/forestseg-test/eval.json: cannot write it"), err
    assert "evaluate:" not in out
    out_file = tmp_path / "new/deeper/eval.json"  # folders that do not exist yet: made, and the probe gone
    assert cli("evaluate", str(checkpoint), str(data), "-o", str(out_file)) == 0
    assert [p.name for p in out_file.parent.iterdir()] == ["eval.json"]


def test_evaluate_shows_its_scores_when_the_disk_fills_before_its_file(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Minutes of scoring are not lost to a disk that filled meanwhile: the scores are printed, then one
    line says the file was not written, and the folders made for it are gone."""
    import forestseg.io

    data = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=64)

    def full(path: Path, text: str) -> None:  # as atomic_path fails there: its folders made first
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        raise forestseg.io.write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)))

    monkeypatch.setattr(forestseg.io, "write_text", full)
    out_file = tmp_path / "new/deeper/eval.json"
    assert cli("evaluate", str(checkpoint), str(data), "-o", str(out_file)) == 2
    out, err = capsys.readouterr()
    assert "forest IoU" in out and "wrote" not in out, out
    assert err.count("\n") == 1 and err.startswith(f"error: {out_file}: cannot write it: "), err
    assert err.rstrip().endswith("(the scores above were not saved)"), err
    assert not (tmp_path / "new").exists()


def test_evaluate_notes_files_without_a_row_of_meta_data(checkpoint: Path, tmp_path: Path, capsys) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    meta = (data / "meta_data.csv").read_text().splitlines()
    (data / "meta_data.csv").write_text("\n".join(meta[:3]) + "\n")  # 2 of the 8 pairs listed
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(checkpoint), str(data), "-o", str(out)) == 0
    assert "note: 6 image(s) in images/ have no row in meta_data.csv and are not scored" in capsys.readouterr().out
    # the Kaggle zip's nesting: found below the folder given, and said, as the index says it
    (tmp_path / "zip").mkdir()
    data.rename(tmp_path / "zip/Forest Segmented")
    assert cli("evaluate", str(checkpoint), str(tmp_path / "zip"), "-o", str(out)) == 0
    said = capsys.readouterr().out
    assert (
        f"note: meta_data.csv found in {tmp_path / 'zip/Forest Segmented'} (below DATA {tmp_path / 'zip'}, as the Kaggle zip unpacks)"
        in said
    ), said
    result = json.loads(out.read_text())
    assert (result["tiles"], result["skipped"]["unlisted_images"], result["skipped"]["unlisted_masks"]) == (2, 6, 6)


def test_labelled_rasters_inside_a_kaggle_folder_are_scored(checkpoint: Path, scene, tmp_path: Path) -> None:
    """A folder of GeoTIFFs below a Kaggle folder's meta_data.csv is no folder inside the tile set."""
    kaggle = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    write_raster(kaggle / "geo/images/a.tif", scene[0])
    write_raster(kaggle / "geo/masks/a.tif", scene[1].astype(np.uint8), nodata=255)
    assert cli("evaluate", str(checkpoint), str(kaggle / "geo"), "-o", str(tmp_path / "e.json")) == 0
    assert json.loads((tmp_path / "e.json").read_text())["rasters"] == 1


def test_evaluate_labelled_rasters(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """Scored against its own mask the model is perfect; against an all-forest truth its recall is
    its forest share and its area bias the share minus 100%."""
    image = with_nodata_corner(scene[0])
    write_raster(tmp_path / "data/images/a.tif", image)
    assert cli("predict", str(checkpoint), str(tmp_path / "data/images/a.tif"), "-o", str(tmp_path / "pred")) == 0
    mask, _ = read(tmp_path / "pred/a_mask.tif")
    write_raster(tmp_path / "data/masks/a.tif", mask, nodata=255)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(tmp_path / "self.json")) == 0
    own = json.loads((tmp_path / "self.json").read_text())
    assert (own["iou"], own["area_bias_pct"], own["rasters"]) == (1.0, 0.0, 1)
    assert (own["resampled_to_m"], own["reproject"]) == (0.5, None)  # how the rasters were read, recorded
    assert (
        cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(tmp_path / "own.json"), "--no-resample") == 0
    )
    assert json.loads((tmp_path / "own.json").read_text())["resampled_to_m"] is None
    summary = capsys.readouterr().out.splitlines()[-4]  # every metric of the registry, as the JSON has it
    assert summary == "  " + "  ".join(f"{m.label} {own[name]:.4f}" for name, m in METRICS.items()), summary
    write_raster(tmp_path / "data/masks/a.tif", np.ones(mask.shape, np.uint8), nodata=None)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(tmp_path / "all.json")) == 0
    forest = json.loads((tmp_path / "all.json").read_text())
    share = (mask == 1).sum() / (mask != 255).sum()
    assert forest["recall"] == pytest.approx(share) and forest["area_bias_pct"] == pytest.approx(
        100 * (share - 1), abs=1e-3
    )
    # a picture beside the GeoTIFFs is not scored, and said so
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data/images/b.png")
    (tmp_path / "data/images/._b.png").write_bytes(b"\x00\x05\x16\x07")  # macOS's resource fork: no image
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data")) == 0
    assert "1 image(s) not GeoTIFF left unscored (b.png)" in capsys.readouterr().out
    (tmp_path / "data/images/b.png").unlink()
    (tmp_path / "data/images/._b.png").unlink()
    write_raster(tmp_path / "data/masks/c.tif", mask, nodata=255)  # a truth without its image: not scored, said so
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data")) == 0
    assert "1 truth(s) without an image of their name left unscored (c.tif)" in capsys.readouterr().out
    (tmp_path / "data/masks/c.tif").unlink()
    # tiles cut from these GeoTIFFs into a folder inside them: not scored in their place without a word
    make_set(tmp_path / "data/tiles", scenes=1, grid=2, tile_size=64)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data")) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {tmp_path / 'data'}: labelled GeoTIFFs (images/, masks/) and, below them, Kaggle-layout tiles in "
        f"{tmp_path / 'data/tiles'}: give {tmp_path / 'data/tiles'} to score the tiles"
    ), err
    make_set(tmp_path / "data/tiles2", scenes=1, grid=2, tile_size=64)  # two: find_source refuses, still not scored
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data")) == 2
    assert f"Kaggle-layout tiles in {tmp_path / 'data/tiles'}, {tmp_path / 'data/tiles2'}:" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "data/tiles")
    shutil.rmtree(tmp_path / "data/tiles2")
    # forest coded by any non-zero value, as `forestseg tile` reads it: -1 in a signed truth too
    write_raster(tmp_path / "data/masks/a.tif", -np.ones(mask.shape, np.int16), nodata=None)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(tmp_path / "neg.json")) == 0
    assert json.loads((tmp_path / "neg.json").read_text())["recall"] == pytest.approx(share)


def test_a_warped_truth_s_nodata_is_no_data_whatever_its_type(checkpoint: Path, scene, tmp_path: Path) -> None:
    """A truth on another grid is warped with an alpha band, which GDAL's dataset mask follows for Byte
    and UInt16 bands only: a Float32 truth (QGIS's Rasterize) or an Int16 one scored its nodata and the
    land outside it as no forest. Every type scores as the uint8 truth; `tile` cuts the same tiles."""
    write_raster(tmp_path / "img.tif", scene[0][:256, :256], nodata=None)
    assert cli("predict", str(checkpoint), str(tmp_path / "img.tif"), "-o", str(tmp_path / "pred")) == 0
    mask, _ = read(tmp_path / "pred/img_mask.tif")
    coarse = (mask[::2, ::2] == 1)[:, :100]  # on a 1 m grid, and 28 m short of the image's right edge
    scores, cut = {}, {}
    for dtype, nodata in (("uint8", 255), ("float32", float("nan")), ("int16", -1)):
        truth = coarse.astype(dtype)
        truth[:, :40] = nodata  # its left part without data
        data = tmp_path / dtype
        (data / "images").mkdir(parents=True)
        shutil.copy(tmp_path / "img.tif", data / "images/a.tif")
        write_raster(data / "masks/a.tif", truth[..., None], pixel=1.0, nodata=nodata)
        assert cli("evaluate", str(checkpoint), str(data), "-o", str(tmp_path / f"{dtype}.json")) == 0
        scores[dtype] = {k: v for k, v in json.loads((tmp_path / f"{dtype}.json").read_text()).items() if k != "data"}
        assert cli("tile", str(data), "-o", str(tmp_path / f"{dtype}_tiles"), "--size", "32") == 0
        cut[dtype] = sorted(p.name for p in (tmp_path / f"{dtype}_tiles/images").iterdir())
    assert scores["uint8"]["iou"] == 1.0  # its own mask, where the truth has data
    assert scores["float32"] == scores["uint8"] == scores["int16"]
    assert cut["float32"] == cut["uint8"] == cut["int16"] and 0 < len(cut["uint8"]) < 64


def test_a_truth_of_forest_on_nodata_is_said_to_count_no_false_forest(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    """Forest polygons rasterized on a nodata background: no pixel with data is not forest, so false
    forest is never counted and precision reads 1."""
    write_raster(tmp_path / "data/images/a.tif", scene[0][:128, :128], nodata=None)
    truth = np.where(scene[1][:128, :128, None] > 0, 1, 255).astype(np.uint8)
    write_raster(tmp_path / "data/masks/a.tif", truth, nodata=255)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data")) == 0
    assert "every pixel with data is forest (1 (100.0%)) and its nodata covers" in capsys.readouterr().out
    # forest and not forest where it has data, and nodata elsewhere: no such note
    truth = np.where(scene[1][:128, :128, None] > 0, 1, 0).astype(np.uint8)
    truth[:16] = 255
    write_raster(tmp_path / "data/masks/a.tif", truth, nodata=255)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data")) == 0
    assert "every pixel with data is forest" not in capsys.readouterr().out


def test_evaluate_counts_hectares_in_a_crs_of_feet(checkpoint: Path, scene, tmp_path: Path) -> None:
    """The same pixels on a 0.5 m grid in UTM and in New York's State Plane (US survey feet): the same
    hectares, a pixel's area taken in metres (in feet it would read 10.76x as much)."""
    feet = 0.5 / 0.3048006096  # a 0.5 m pixel in US survey feet
    for name, crs, pixel, origin in (("m", UTM, 0.5, (500000, 5000000)), ("ft", "EPSG:2263", feet, (1e6, 2e5))):
        write_raster(
            tmp_path / name / "images/a.tif", scene[0][:128, :128], crs=crs, pixel=pixel, origin=origin, nodata=None
        )
        write_raster(
            tmp_path / name / "masks/a.tif",
            np.ones((128, 128, 1), np.uint8),
            crs=crs,
            pixel=pixel,
            origin=origin,
            nodata=None,
        )
        assert cli("evaluate", str(checkpoint), str(tmp_path / name), "-o", str(tmp_path / f"{name}.json")) == 0
    m, ft = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("m", "ft"))
    assert m["true_forest_ha"] == pytest.approx(128 * 128 * 0.25 / 1e4)
    assert ft["true_forest_ha"] == pytest.approx(m["true_forest_ha"], rel=1e-4)


def test_evaluate_says_the_raster_headers_notes_as_predict_does(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    image = write_raster(tmp_path / "data/images/a.tif", scene[0])
    with rasterio.open(image, "r+") as ds:  # a BGR orthophoto: scored as tagged, its colours would swap
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    write_raster(tmp_path / "data/masks/a.tif", scene[1][..., None].astype(np.uint8), nodata=None)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data")) == 0
    assert (
        "note: a.tif: bands 1,2,3 are tagged blue, green, red, and bands 3,2,1 red, green, blue; if so, pass --bands 3,2,1"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "nodata, args, says",
    [
        (0, [], r"masks/a\.tif: declares nodata 0, a class value of the truth .* gdal_edit\.py -unsetnodata"),
        (1, [], r"masks/a\.tif: declares nodata 1, a class value of the truth .* gdal_edit\.py -unsetnodata"),
        (255, ["--masks", "0/1"], r"labelled GeoTIFFs .*; --masks apply to Kaggle-layout tiles only"),
        (255, ["--masks", "classes", "--forest", "[2]"], r"; --masks, --forest apply to Kaggle-layout tiles only"),
    ],
)
def test_evaluate_refuses_what_it_would_score_wrong_on_rasters(
    checkpoint: Path, scene, tmp_path: Path, capsys, nodata, args, says
) -> None:
    write_raster(tmp_path / "data/images/a.tif", scene[0])
    write_raster(tmp_path / "data/masks/a.tif", (scene[1] > 0).astype(np.uint8), nodata=nodata)
    out = tmp_path / "e.json"
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(out), *args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(says, err), err
    assert not out.exists()


@pytest.mark.parametrize("case", ["jpeg noise", "classes", "forest as nodata", "undeclared nan", "negative class"])
def test_evaluate_refuses_a_truth_whose_values_it_would_misread(
    checkpoint: Path, scene, tmp_path: Path, capsys, case
) -> None:
    """'Every non-zero value is forest' counted JPEG noise as forest (area bias -4.8 against -2.7 %), and a
    0/255 truth tagged nodata 255 scored as no forest at all, exit 0."""
    forest = scene[1] > 0
    truth = {
        "jpeg noise": np.where(forest, 255, 0).astype(np.uint8),
        "classes": np.where(forest, 1, 2).astype(np.uint8),  # 2: water, say
        "forest as nodata": np.where(forest, 255, 0).astype(np.uint8),
        "undeclared nan": forest.astype(np.float32),  # NaN outside its area, not declared nodata
        "negative class": forest.astype(np.int16),
    }[case]
    if case == "undeclared nan":
        truth[:, -100:] = np.nan  # scored as forest, NaN being no 0
    elif case == "negative class":
        truth[:, -100:] = -5  # a class below 0 is a value besides 0 too
    if case == "jpeg noise":
        truth[::7, ::5] = np.where(truth[::7, ::5] == 0, 3, 252)  # what a JPEG round trip leaves near 0 and 255
    write_raster(tmp_path / "data/images/a.tif", scene[0])
    write_raster(tmp_path / "data/masks/a.tif", truth, nodata=255 if case == "forest as nodata" else None)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(tmp_path / "e.json")) == 2
    err = capsys.readouterr().err
    says = {
        "jpeg noise": r"masks/a\.tif: holds 3 values besides 0 \(.*\); a truth raster is 0 = not forest and one forest "
        r"value: binarise it first \(gdal_calc\.py",
        "classes": r"masks/a\.tif: holds 2 values besides 0 \(",
        "forest as nodata": r"masks/a\.tif: no forest pixel with data \(values 0 \(100\.0%\)\), but its nodata value 255 "
        r"covers \d+ pixel\(s\): if 255 is its forest, unset the nodata \(gdal_edit\.py -unsetnodata",
        "undeclared nan": r"masks/a\.tif: holds NaN pixels \(.*nan \(25\.0%\).*\) that are not its nodata; declare them "
        r"nodata: gdal_edit\.py -a_nodata nan",
        "negative class": r"masks/a\.tif: holds 2 values besides 0 \(.*-5 \(25\.0%\)",
    }[case]
    assert err.count("\n") == 1 and re.search(says, err), err
    assert not (tmp_path / "e.json").exists()


def test_evaluate_scores_truths_of_no_forest_beside_a_nodata_when_told_to(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    """Farmland labelled all 0 with nodata 255 outside the parcel: stopped by default, scored when asked."""
    truth = np.zeros(scene[1].shape, np.uint8)
    truth[:, :50] = 255  # outside the parcel
    write_raster(tmp_path / "data/images/a.tif", scene[0])
    write_raster(tmp_path / "data/masks/a.tif", truth, nodata=255)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data")) == 2
    err = capsys.readouterr().err
    assert "; if they hold no forest indeed (false forest on farmland, say), pass --allow-no-forest" in err
    assert f"its nodata value 255 covers {(truth == 255).sum()} pixel(s)" in err
    out = tmp_path / "e.json"
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "--allow-no-forest", "-o", str(out)) == 0
    assert "note: " in capsys.readouterr().out
    scored = json.loads(out.read_text())
    assert scored["valid_ha"] == pytest.approx((truth != 255).sum() * 0.25 / 1e4, abs=1e-4)
    assert scored["true_forest_ha"] == 0 and scored["area_bias_pct"] is None


def test_evaluate_scores_a_grey_truth_with_an_alpha_band_leaving_transparent_pixels_out(
    checkpoint: Path, scene, tmp_path: Path
) -> None:
    write_raster(tmp_path / "data/images/a.tif", scene[0])
    assert cli("predict", str(checkpoint), str(tmp_path / "data/images/a.tif"), "-o", str(tmp_path / "pred")) == 0
    mask, _ = read(tmp_path / "pred/a_mask.tif")
    alpha = np.full(mask.shape, 255, np.uint8)
    alpha[:, :100] = 0  # transparent: not scored
    truth = np.where(np.arange(mask.shape[1]) < 100, 1 - mask, mask).astype(np.uint8)  # wrong only there
    write_raster(
        tmp_path / "data/masks/a.tif", np.dstack([truth, alpha]), nodata=None, photometric="MINISBLACK", alpha="YES"
    )
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(tmp_path / "e.json")) == 0
    scored = json.loads((tmp_path / "e.json").read_text())
    assert scored["iou"] == 1.0 and scored["valid_ha"] == pytest.approx((mask[:, 100:] != 255).sum() * 0.25 / 1e4)


@pytest.mark.parametrize(
    "case",
    ["elsewhere", "three bands", "alpha first", "truncated", "second image geographic", "no crs", "image all nodata"],
)
def test_evaluate_refuses_truths_it_cannot_score_with_one_line(
    checkpoint: Path, scene, tmp_path: Path, capsys, monkeypatch, case
) -> None:
    truth = (scene[1] > 0).astype(np.uint8)
    write_raster(tmp_path / "data/images/a.tif", scene[0])
    write_raster(
        tmp_path / "data/masks/a.tif",
        truth,
        nodata=255,
        origin=(600000, 5000000) if case == "elsewhere" else (500000, 5000000),
    )
    if case == "three bands":
        write_raster(tmp_path / "data/masks/a.tif", np.dstack([truth] * 3), nodata=None)
    elif case == "alpha first":  # its class band is band 2, and band 1 is what would be read
        write_raster(tmp_path / "data/masks/a.tif", np.dstack([np.full_like(truth, 255), truth]), nodata=None)
        with rasterio.open(tmp_path / "data/masks/a.tif", "r+") as ds:
            ds.colorinterp = [ColorInterp.alpha, ColorInterp.gray]
    elif case == "truncated":
        write_raster(tmp_path / "whole.tif", truth * 255, nodata=None, tiled=True, compress="deflate")
        data = (tmp_path / "whole.tif").read_bytes()
        (tmp_path / "data/masks/a.tif").write_bytes(data[: len(data) // 2])
    elif case == "image all nodata":  # the truth has data; its image none: said of the image, not the truth
        write_raster(tmp_path / "data/images/a.tif", np.zeros_like(scene[0]))
    elif case == "no crs":  # a world file gives GDAL the grid, and the .prj beside it no CRS
        write_raster(tmp_path / "data/masks/a.tif", truth, crs=None, nodata=255, transform=Affine.identity())
        (tmp_path / "data/masks/a.tfw").write_text("0.5\n0\n0\n-0.5\n500000.25\n4999999.75\n")
        (tmp_path / "data/masks/a.prj").write_text(rasterio.crs.CRS.from_string(UTM).to_wkt(version="WKT1_ESRI"))
    elif case == "second image geographic":
        write_raster(tmp_path / "data/images/b.tif", scene[0], crs="EPSG:4326", pixel=4e-6, origin=(15, 50))
        write_raster(tmp_path / "data/masks/b.tif", truth, crs="EPSG:4326", pixel=4e-6, origin=(15, 50), nodata=255)
    mapped = []
    monkeypatch.setattr("forestseg.geo.map_forest", lambda *a, **k: mapped.append(a) or pytest.fail("mapped"))
    if case in ("elsewhere", "truncated", "image all nodata"):  # their headers are fine: only mapping and reading tell
        monkeypatch.undo()
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(tmp_path / "e.json")) == 2
    err = capsys.readouterr().err
    says = {
        "elsewhere": "masks/a.tif: no pixel of it with data lies on a pixel of a.tif with data",
        "three bands": "masks/a.tif: has 3 class band(s), band(s) 1, 2, 3; a truth is band 1",
        "alpha first": "masks/a.tif: has 1 class band(s), band(s) 2 (and 1 alpha); a truth is band 1",
        "truncated": "masks/a.tif: failed while reading",
        "second image geographic": "images/b.tif: its CRS (EPSG:4326) is geographic",
        "image all nodata": "images/a.tif: has no pixel with data (its nodata value, alpha band or mask covers it "
        "all); nothing to score",
        "no crs": "masks/a.tif: has no CRS; the truth must be georeferenced like its image: give it the image's "
        "(gdal_edit.py -a_srs EPSG:<code> -a_ullr <ulx> <uly> <lrx> <lry> a.tif; GDAL reads no CRS from a .prj",
    }[case]
    assert err.count("\n") == 1 and says in err and "Traceback" not in err, err
    assert not mapped and not (tmp_path / "e.json").exists()


@pytest.mark.parametrize(
    "flag", [["--bands", "3,2,1"], ["--reproject", "EPSG:32633"], ["--no-resample"], ["--block", "512"]]
)
def test_evaluate_on_tiles_refuses_raster_flags(checkpoint: Path, tmp_path: Path, capsys, flag) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    assert cli("evaluate", str(checkpoint), str(data), *flag) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag[0]} apply to labelled GeoTIFFs only" in err, err


@pytest.mark.parametrize(
    "flags",
    [["--bands", "3,2,1"], ["--reproject", "EPSG:32633"], ["--no-resample"], ["--no-resample", "--block", "512"]],
)
def test_predict_notes_raster_flags_its_pictures_leave_unused(checkpoint: Path, tmp_path: Path, capsys, flags) -> None:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert cli("predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *flags) == 0
    named = [f for f in flags if f.startswith("--")]
    verb = "applies" if len(named) == 1 else "apply"
    assert (
        f"note: {' and '.join(named)} {verb} to georeferenced inputs only; the 1 picture(s)" in capsys.readouterr().out
    )
    assert cli("predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "o2")) == 0
    assert "georeferenced inputs only" not in capsys.readouterr().out


def test_evaluate_removes_what_killed_evaluations_left_in_the_temp_folder(
    checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    from conftest import dead_temp_prefix

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    stale = tmp_path / "tmp" / (dead_temp_prefix("forestseg-evaluate") + "abc")
    (stale / "x").mkdir(parents=True)
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    assert cli("evaluate", str(checkpoint), str(data)) == 0
    assert not list((tmp_path / "tmp").iterdir())


def test_evaluate_removes_what_a_killed_evaluation_left_beside_its_output(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """A SIGTERM during `evaluate -o out/eval.json` can leave the JSON's temp file; the next run removes it
    and says so, as predict does in its -o folder (no evaluate ever did: a kill fuzz found one for good)."""
    from conftest import dead_temp_prefix

    stale = tmp_path / "out" / (dead_temp_prefix("eval") + "x1.tmp.json")
    stale.parent.mkdir()
    stale.write_text("{")
    data = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=64)
    assert cli("evaluate", str(checkpoint), str(data), "-o", str(tmp_path / "out/eval.json")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.json"]
    said = f"note: removed 1 temp file(s) or folder(s) that a killed earlier run left in {tmp_path / 'out'}"
    assert said in capsys.readouterr().out


@pytest.mark.parametrize("where", ["a folder", "under a file", "the model file", "the split", "inside the data"])
def test_evaluate_checks_its_output_path_before_scoring(checkpoint: Path, tmp_path: Path, capsys, where) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    split = tmp_path / "split.csv"
    split.write_text("image,scene,subset\n")
    model = tmp_path / "model.pt"
    model.write_bytes(checkpoint.read_bytes())
    out = {"a folder": tmp_path / "out", "the model file": model, "the split": split}.get(where)
    if where == "a folder":
        out.mkdir()
    elif where == "under a file":
        (tmp_path / "out").write_text("x")
        out = tmp_path / "out" / "eval.json"
    elif where == "inside the data":
        out = data / "meta_data.csv"
    before = out.read_bytes() if out.is_file() else None
    argv = [
        "evaluate",
        str(model),
        str(data),
        "-o",
        str(out),
        *(["--split", str(split)] if where == "the split" else []),
    ]
    assert cli(*argv) == 2
    assert before is None or out.read_bytes() == before  # an input is never overwritten
    captured = capsys.readouterr()
    assert "forest IoU" not in captured.out  # refused before the scores were computed, not after
    assert captured.err.startswith(f"error: -o {out}: ") and len(captured.err.strip().splitlines()) == 1


def test_an_area_bias_scored_on_training_tiles_is_named_so(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(checkpoint), str(data), "-o", str(out)) == 0  # every tile: no --split
    capsys.readouterr()
    src = write_raster(tmp_path / "in/o.tif", scene[0])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--area-error", str(out)) == 0
    printed = capsys.readouterr().out
    assert "(no --split), and the model file does not list the scenes it trained on, so its area bias may" in printed
    assert "area bias from --area-error:" in printed


def test_an_area_bias_of_another_model_file_is_refused_and_other_readings_noted(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    """The bias of another model (or of this one read otherwise) is not this run's: refused, or noted."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    other = random_checkpoint(tmp_path / "other.pt", tile=64)
    src = write_raster(tmp_path / "in/o.tif", scene[0])
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(other), str(data), "--overlap", "0", "-o", str(out)) == 0
    scored = json.loads(out.read_text())
    assert scored["overlap"] == 0 and scored["model_train_scenes"] == 0
    capsys.readouterr()
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "o1"), "--area-error", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --area-error {out}: is the area bias of another model file ({other}), not of")
    assert not (tmp_path / "o1" / "forest_area.csv").exists()
    # the same model read otherwise: predicted, with a note naming each difference
    argv = ["predict", str(other), str(src), "-o", str(tmp_path / "o2"), "--area-error", str(out)]
    assert cli(*argv, "--precision", "fp32") == 0
    printed = capsys.readouterr().out
    assert f"note: --area-error {out}: scored with " in printed and "overlap 0 (here None)" in printed
    assert cli(*argv, "--overlap", "0", "--precision", scored["dtype"]) == 0
    assert "scored with" not in capsys.readouterr().out  # tiles record no resampling: nothing else to differ
    # a copy of the model file has its digest: its JSON is this model's
    shutil.copy(other, tmp_path / "copy.pt")
    assert (
        cli("predict", str(tmp_path / "copy.pt"), str(src), "-o", str(tmp_path / "o4"), "--area-error", str(out)) == 0
    )
    assert "another model file" not in capsys.readouterr().err
    # an older JSON without the digest: noted, not refused
    del scored["model_sha256"]
    out.write_text(json.dumps(scored))
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "o3"), "--area-error", str(out)) == 0
    assert "records no model digest" in capsys.readouterr().out


@pytest.mark.parametrize("bias", [None, True])
def test_an_area_bias_that_is_no_number_is_refused_before_any_note(
    checkpoint: Path, scene, tmp_path: Path, capsys, bias
) -> None:
    """null (scored where no pixel is forest) or true: refused in one line, without notes on the file first."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(checkpoint), str(data), "-o", str(out)) == 0
    out.write_text(json.dumps({**json.loads(out.read_text()), "area_bias_pct": bias}))
    capsys.readouterr()
    src = write_raster(tmp_path / "in/o.tif", scene[0])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--area-error", str(out)) == 2
    printed, err = capsys.readouterr()
    assert err == f"error: --area-error {out}: its area_bias_pct is {bias!r}, not a number\n"
    assert "note:" not in printed, printed


@pytest.mark.parametrize(
    "folder, says",
    [
        ("Meta_Data.csv", "meta_data.csv: missing, but {data}/Meta_Data.csv is there: the index reads meta_data.csv"),
        ("pictures", "holds scenes to cut into tiles (images/ with masks/, or DeepGlobe's <id>_sat.jpg): cut them"),
        ("inside", "{data}: a folder inside the Kaggle-layout folder {set}; give that one"),
        ("empty", "{data}: neither a Kaggle-layout folder (meta_data.csv, images/, masks/) nor a folder of labelled"),
    ],
)
def test_evaluate_says_why_a_folder_is_no_data_set(checkpoint: Path, tmp_path: Path, capsys, folder, says) -> None:
    """What the index knows about the folder (a CSV spelt otherwise, scenes to cut) reaches evaluate's user."""
    kaggle = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    data = {"inside": kaggle / "images", "empty": tmp_path / "empty"}.get(folder, kaggle)
    if folder == "Meta_Data.csv":
        (kaggle / "meta_data.csv").rename(kaggle / "Meta_Data.csv")
    elif folder == "pictures":  # large pictures (PNG) in images/ and masks/: for `forestseg tile`
        for sub in ("images", "masks"):
            shutil.rmtree(kaggle / sub)
            (kaggle / sub).mkdir()
            Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(kaggle / sub / "a.png")
        (kaggle / "meta_data.csv").unlink()
    data.mkdir(exist_ok=True)
    assert cli("evaluate", str(checkpoint), str(data)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says.format(data=data, set=kaggle) in err, err
    assert "data.source" not in err and "kaggle datasets download" not in err, err


def test_an_area_bias_of_unseen_scenes_scored_without_split_gets_no_training_note(
    scene, tmp_path: Path, capsys
) -> None:
    """The model file lists the scenes it trained on and none was scored: the bias is of unseen data."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    model = random_checkpoint(tmp_path / "m.pt", tile=64, train_scenes=["elsewhere"])
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(model), str(data), "-o", str(out)) == 0
    capsys.readouterr()
    src = write_raster(tmp_path / "in/o.tif", scene[0])
    assert cli("predict", str(model), str(src), "-o", str(tmp_path / "out"), "--area-error", str(out)) == 0
    assert "unseen data" not in capsys.readouterr().out


def test_evaluate_notes_tiles_read_at_a_models_other_pixel_size(tmp_path: Path, capsys) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    model = random_checkpoint(tmp_path / "m.pt", tile=64, pixel_size_m=2.0)
    assert cli("evaluate", str(model), str(data)) == 0
    assert (
        "note: the 8 tiles carry no pixel size and are read as if at the model's 2 m pixels" in capsys.readouterr().out
    )


def test_an_area_bias_scored_on_a_splits_training_rows_is_named_so(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    split = tmp_path / "split.csv"
    pd.read_csv(data / "meta_data.csv").assign(scene="0", subset="train")[["image", "scene", "subset"]].to_csv(
        split, index=False
    )
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(checkpoint), str(data), "--split", str(split), "--subset", "train", "-o", str(out)) == 0
    capsys.readouterr()
    src = write_raster(tmp_path / "in/o.tif", scene[0])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--area-error", str(out)) == 0
    assert "scored on the 'train' rows of" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, said",
    [
        (b"image,subset\n\xff\xfe\x00junk,test\n", "cannot be read as a UTF-8 CSV"),
        (b"image,part\n1_sat_0000.png,test\n", "needs columns image,subset (data/split.csv of the pipeline)"),
        (b"image,subset\n1_sat_0000.png,train\n", "no rows with subset 'test' (subsets: train)"),
    ],
)
def test_a_split_evaluate_cannot_use_is_one_line(
    content: bytes, said: str, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    split = tmp_path / "split.csv"
    split.write_bytes(content)
    assert cli("evaluate", str(checkpoint), str(data), "--split", str(split)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --split {split}: {said}") and err.count("\n") == 1


def test_evaluate_notes_scenes_the_model_trained_on(tmp_path: Path, capsys) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    scenes = sorted({name.split("_")[0] for name in pd.read_csv(data / "meta_data.csv")["image"]})
    model = random_checkpoint(tmp_path / "m.pt", tile=64)
    state = torch.load(model, weights_only=False)
    write_model(
        model, state.pop("weights"), {**{k: v for k, v in state.items() if k != "format"}, "train_scenes": scenes[:1]}
    )
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(model), str(data), "-o", str(out)) == 0
    assert f"note: 1 of the 2 scored scene(s) ({scenes[0]}) have the ids of scenes this model trained on" in (
        capsys.readouterr().out
    )
    assert json.loads(out.read_text())["seen_scenes"] == 1


def test_evaluate_says_when_adapt_bn_finds_no_window(tmp_path: Path, capsys) -> None:
    """Tiles smaller than the model's window cannot adapt it: a note, and the JSON counts 0 adapted scenes."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    model = random_checkpoint(tmp_path / "m.pt", tile=128)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(model), str(data), "--adapt-bn", "0.5", "-o", str(out)) == 0
    assert "note: --adapt-bn 0.5: 2 of 2 scene(s) hold no whole 128-px window" in capsys.readouterr().out
    assert json.loads(out.read_text())["adapted_scenes"] == 0


@pytest.mark.parametrize("side, adapted", [(40, 0), (150, 1)])
def test_evaluate_counts_the_rasters_adapt_bn_adapted(scene, tmp_path: Path, capsys, side: int, adapted: int) -> None:
    """A raster with no whole window is mapped as trained: its JSON said adapt_bn 0.25 and nothing more, so
    `predict --area-error` took the bias for an adapted reading."""
    truth = (scene[1][:side, :side] > 0).astype(np.uint8)
    write_raster(tmp_path / "r/images/a.tif", np.ascontiguousarray(scene[0][:side, :side]), nodata=None)
    write_raster(tmp_path / "r/masks/a.tif", truth, nodata=255)
    model = random_checkpoint(tmp_path / "m.pt", tile=64)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(model), str(tmp_path / "r"), "--adapt-bn", "0.25", "-o", str(out)) == 0
    assert ("no whole 64-px window with data to adapt batch-norm to" in capsys.readouterr().out) == (not adapted)
    assert json.loads(out.read_text())["adapted_scenes"] == adapted
    argv = ["predict", str(model), str(tmp_path / "r/images/a.tif"), "-o", str(tmp_path / "out")]
    assert cli(*argv, "--adapt-bn", "0.25", "--area-error", str(out)) == 0
    note = f"note: --area-error {out}: 1 of its 1 scored scene(s) held no whole window to adapt batch-norm to"
    assert (note in capsys.readouterr().out) == (not adapted)


def test_evaluate_refuses_subset_without_split(checkpoint: Path, tmp_path: Path, capsys) -> None:
    """--subset picks rows of a --split file; alone it would score every tile, training tiles included."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    assert cli("evaluate", str(checkpoint), str(data), "--subset", "test") == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --subset test: picks rows of a --split file; give one (e.g. data/split.csv)\n"
    assert "forest IoU" not in captured.out


@pytest.mark.parametrize("angle, shear", [(0, 0), (30, 0), (-75, 0), (30, 10)])
def test_a_pixels_area_is_the_transforms_determinant_on_rotated_and_sheared_grids(angle, shear) -> None:
    """|det| of the affine, not a * e: a rotated or sheared 0.5 m grid still has 0.25 m2 pixels (both
    keep the determinant), where a * e would give 0.25 cos(angle)**2."""
    from affine import Affine

    t = Affine.translation(500000, 5000000) @ Affine.rotation(angle) @ Affine.shear(0, shear) @ Affine.scale(0.5, -0.5)
    grid = Grid(rasterio.crs.CRS.from_string(UTM), t, 10, 10)
    assert grid.pixel_area_m2(1.0) == pytest.approx(0.25, rel=1e-9)
    assert grid.pixel_area_m2(0.3048) == pytest.approx(0.25 * 0.3048**2, rel=1e-9)
    if shear == 0:
        assert grid.pixel_sides(1.0) == pytest.approx((0.5, 0.5), rel=1e-9)


def test_a_map_writer_that_cannot_open_its_probability_closes_its_mask(tmp_path: Path, monkeypatch) -> None:
    """Its caller's `finally` has no writer to close yet: the mask's open dataset was left behind."""
    from affine import Affine

    from forestseg.geo import _MapWriter

    opened, real_open = [], rasterio.open

    def open_(path, *args, **kwargs):
        if Path(path).name == "probability.tif":
            raise rasterio.errors.RasterioIOError("probability.tif: No space left on device")
        opened.append(real_open(path, *args, **kwargs))
        return opened[-1]

    monkeypatch.setattr("forestseg.geo.rasterio.open", open_)
    grid = Grid(
        rasterio.crs.CRS.from_string(UTM), Affine.translation(500000, 5000000) @ Affine.scale(0.5, -0.5), 64, 64
    )
    with pytest.raises(rasterio.errors.RasterioIOError):
        _MapWriter(random_predictor(), grid, tmp_path, "float32")
    assert len(opened) == 1 and opened[0].closed


# --- areas and cuts with numbers worked by hand ------------------------------------------------------


def test_evaluate_summary_rows_by_hand() -> None:
    """Two units of 100 m2 pixels: a: 30 true, 40 predicted forest of 100 px; b: 20 true, 10 predicted of 50."""
    from forestseg.evaluate import summarize

    units = {"a": (np.array([25, 15, 5, 55]), 100.0), "b": (np.array([10, 0, 10, 30]), 100.0)}
    out = summarize(units, "raster")
    a, b = out["per_raster"]
    assert (a["true_forest_ha"], a["predicted_forest_ha"]) == (0.3, 0.4)
    assert (a["true_share"], a["predicted_share"]) == (0.3, 0.4)
    assert a["share_error_pp"] == pytest.approx(10.0) and b["share_error_pp"] == pytest.approx(-20.0)
    assert a["area_bias_pct"] == pytest.approx(100 * 10 / 30) and b["area_bias_pct"] == pytest.approx(-50.0)
    assert (a["iou"], b["iou"]) == (round(25 / 45, 6), 0.5)
    assert out["raster_share_error_pp"] == {"mean_abs": 15.0, "max_abs": 20.0}
    biases = [100 * 10 / 30, 50.0, 0.0]  # with a third unit of no error: the median is the middle one
    units["c"] = (np.array([5, 0, 0, 5]), 100.0)
    assert summarize(units, "raster")["raster_area_bias_pct"] == {
        "median_abs": round(float(np.median(biases)), 3),
        "max_abs": 50.0,
    }
    assert (out["true_forest_ha"], out["predicted_forest_ha"], out["valid_ha"]) == (0.5, 0.5, 1.5)
    assert out["area_bias_pct"] == 0.0
    # share errors of 0, 0 and 30 points: "off by 10 on average", their mean (the median would say 0)
    units = {k: (np.array([10, 0, 0, 90]), 1.0) for k in "ab"} | {"c": (np.array([10, 30, 0, 60]), 1.0)}
    assert summarize(units, "scene")["scene_share_error_pp"] == {"mean_abs": 10.0, "max_abs": 30.0}


@pytest.mark.parametrize("pixel_size_m", [0.5, 2.0])
@pytest.mark.parametrize("offset, forest", [(1.0, True), (0.0, False), (-1.0, False)])
def test_evaluate_tiles_areas_at_the_models_pixel_size_and_the_strict_cut(
    tmp_path: Path, pixel_size_m: float, offset: float, forest: bool
) -> None:
    """A model whose output is cut + offset everywhere: all forest above the cut, none at or below it;
    hectares from the model's pixel size (tiles carry no georeference)."""
    from forestseg.evaluate import evaluate
    from forestseg.loader import Normalizer

    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=32)

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], *x.shape[2:]), 0.5 + offset)

    p = Predictor(Constant(), Normalizer(), 32, 0.5, torch.device("cpu"), pixel_size_m=pixel_size_m)
    out = evaluate(p, data, log=lambda s: None)
    pixels = out["tiles"] * 32 * 32
    assert out["valid_ha"] == pytest.approx(pixels * pixel_size_m**2 / 1e4, abs=1e-4)
    assert out["predicted_forest_ha"] == pytest.approx(out["valid_ha"] if forest else 0.0, abs=1e-4)
    masks = [np.asarray(Image.open(p).convert("L")) >= 128 for p in sorted((data / "masks").iterdir())]
    assert out["true_forest_ha"] == pytest.approx(sum(m.sum() for m in masks) * pixel_size_m**2 / 1e4, abs=1e-4)


@pytest.mark.parametrize("pixel", [0.5, 0.7])  # the model's own pixel size, and resampled to it
@pytest.mark.parametrize("offset, forest", [(0.25, True), (0.0, False), (-0.25, False)])
def test_a_raster_maps_forest_above_the_cut_only(tmp_path: Path, pixel: float, offset: float, forest: bool) -> None:
    """cut 0.5 (the study's MSE), output cut + offset everywhere: on the raster's own grid and through the
    resampled logits (stored as margins over the cut), forest is output > cut."""
    from forestseg.loader import Normalizer

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], *x.shape[2:]), 0.5 + offset)

    p = Predictor(Constant(), Normalizer(), 32, 0.5, torch.device("cpu"), loss="mse_logits", pixel_size_m=0.5)
    image = np.full((80, 100, 3), 120, np.uint8)
    path = write_raster(tmp_path / "in/a.tif", image, pixel=pixel, nodata=None)
    opts = MapOptions(progress=False)
    (tmp_path / "out").mkdir()
    area = map_forest(p, check_raster(path, opts, 0.5), tmp_path / "out", opts, log=lambda s: None)
    assert area.resampled == (pixel != 0.5)
    assert area.valid_ha == pytest.approx(80 * 100 * pixel**2 / 1e4)
    assert area.forest_share == (1.0 if forest else 0.0)


@pytest.mark.parametrize("sides", [(0.5, 0.6), (0.6, 0.5)])
def test_pixels_of_the_models_size_on_one_side_only_are_resampled(tmp_path: Path, sides) -> None:
    from forestseg.loader import Normalizer

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], *x.shape[2:]), 1.0)

    p = Predictor(Constant(), Normalizer(), 32, 0.0, torch.device("cpu"), pixel_size_m=0.5)
    path = tmp_path / "in/a.tif"
    write_raster(
        path,
        np.full((60, 70, 3), 120, np.uint8),
        nodata=None,
        transform=Affine(sides[0], 0, 500000, 0, -sides[1], 5000000),
    )
    opts = MapOptions(progress=False)
    (tmp_path / "out").mkdir()
    area = map_forest(p, check_raster(path, opts, 0.5), tmp_path / "out", opts, log=lambda s: None)
    assert area.resampled and area.model_pixel_size_m == 0.5


@pytest.mark.parametrize(
    "lon, lat, epsg",
    [
        (15.0, 45.0, "EPSG:32633"),
        (15.0, 0.0, "EPSG:32633"),
        (15.0, -0.001, "EPSG:32733"),
        (-180.0, 10.0, "EPSG:32601"),
        (179.99, 10.0, "EPSG:32660"),
        (-3.0, 40.0, "EPSG:32630"),
        (0.0, 51.5, "EPSG:32631"),
        (359.0, 60.0, "EPSG:32630"),  # 0-360 degrees: -1
        (181.0, 60.0, "EPSG:32601"),  # past the antimeridian: -179
    ],
)
def test_utm_suggestion_names_the_zone_and_hemisphere(lon: float, lat: float, epsg: str) -> None:
    """Zones 6 degrees wide from 180 W; the equator itself is in the northern zones (326xx)."""
    from forestseg.geo import utm_suggestion

    assert utm_suggestion(lon, lat) == epsg


@pytest.mark.parametrize("unit_m", [1.0, 1200 / 3937])  # metres, US survey feet
@pytest.mark.parametrize("min_area_px, kept", [(0, 2), (3, 2), (4, 1), (9, 1), (10, 0)])
@pytest.mark.parametrize("pixel", [2.0, 0.3, 0.05])
def test_polygons_areas_are_in_square_metres_and_only_smaller_ones_are_dropped(
    tmp_path: Path, unit_m: float, min_area_px: int, kept: int, pixel: float
) -> None:
    """Two forest blobs of 3 and 9 pixels of `pixel` x `pixel` CRS units; --min-area keeps polygons of
    exactly that area (at 0.3 m a 3-pixel patch summed to 0.26999999984 m2 and was dropped at 0.27), and
    areas keep 10 significant digits (two decimals read 5-cm pixels' 0.0075 m2 as 0.01, 0.0025 as 0)."""
    from forestseg.geo import write_polygons

    mask = np.zeros((10, 10), np.uint8)
    mask[1, 1:3] = mask[2, 1] = 1  # an L of 3 pixels
    mask[5:8, 5:8] = 1
    mask[0, 9] = 255  # nodata is never a polygon
    path = write_raster(tmp_path / "mask.tif", mask, crs="EPSG:2263" if unit_m != 1.0 else UTM, pixel=pixel, nodata=255)
    px_m2 = (pixel * unit_m) ** 2
    assert write_polygons(path, tmp_path / "f.geojson", min_area_px * px_m2, unit_m) == kept
    areas = sorted(f["properties"]["area_m2"] for f in json.loads((tmp_path / "f.geojson").read_text())["features"])
    assert areas == pytest.approx([a * px_m2 for a in (3, 9)][2 - kept :], rel=1e-8)


@pytest.mark.parametrize("rows, refused", [(3, True), (6, False)])  # 0.3 m or 0.6 m high at 0.1 m pixels
def test_a_strip_thinner_than_one_model_pixel_is_refused(tmp_path: Path, rows: int, refused: bool) -> None:
    """Its thinnest side decides: 10 m long but 0.3 m high holds no whole 0.5 m model pixel."""
    src = write_raster(tmp_path / "strip.tif", np.full((rows, 100, 3), 90, np.uint8), pixel=0.1, nodata=None)
    if refused:
        with pytest.raises(
            ForestsegError, match=r"strip\.tif: covers 10 x 0\.3 m, less than one 0\.5 m pixel of the grid"
        ):
            check_raster(src, MapOptions(), 0.5)
    else:
        assert check_raster(src, MapOptions(), 0.5).path == src


B, G, R, N, U = ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined, ColorInterp.gray


@pytest.mark.parametrize(
    "tags, bands, says",
    [
        ((B, G, R), "1,2,3", "bands 1,2,3 are tagged blue, green, red, and bands 3,2,1 red, green, blue"),
        ((R, G, B), "1,2,3", None),
        ((R, G, B), "3,2,1", "bands 3,2,1 are tagged blue, green, red, and bands 1,2,3 red, green, blue"),
        # NRGB read as 1,2,3: near-infrared as red, green as blue, without a word (a review)
        ((N, R, G, B), "1,2,3", "bands 1,2,3 are tagged undefined, red, green, and bands 2,3,4 red, green, blue"),
        ((N, R, G, B), "2,3,4", None),
        ((R, G, B, N), "1,2,3", None),  # RGBN: the colours are the first three
        ((U, U, U), "1,2,3", None),  # no colour tags: nothing to go by
        ((N, N, N, N), "1,2,3", None),
    ],
)
def test_bands_read_as_colours_they_are_not_tagged_as_get_the_tagged_ones(
    tmp_path: Path, tags, bands: str, says: str | None
) -> None:
    src = write_raster(tmp_path / "o.tif", np.full((64, 64, len(tags)), 90, np.uint8), nodata=None)
    with rasterio.open(src, "r+") as ds:
        ds.colorinterp = tags
    notes = check_raster(src, MapOptions(bands=tuple(map(int, bands.split(",")))), 0.5).notes
    order = says.split("and bands ")[1].split(" ")[0] if says else None
    assert list(notes) == ([f"o.tif: {says}; if so, pass --bands {order}"] if says else []), notes


@pytest.mark.parametrize("lat, refused", [(10, True), (1, False)])
def test_a_map_crs_whose_areas_are_more_than_1_percent_off_is_refused(tmp_path: Path, lat: int, refused: bool) -> None:
    """Web Mercator (EPSG:3857) inflates areas by about 1 / cos(lat)^2, and by 0.7 % more near the equator
    (a sphere's mercator over the ellipsoid's ground): 3.8 % at 10 degrees latitude is refused, with the UTM
    zone there; 0.7 % at 1 degree is mapped as it is."""
    y = 6378137 * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))
    src = write_raster(tmp_path / "m.tif", np.full((64, 64, 3), 90, np.uint8), crs="EPSG:3857", origin=(0, y))
    if refused:
        with pytest.raises(
            ForestsegError,
            match=r"makes areas 1\.04x the ground's there \(1% allowed\); rerun with --reproject EPSG:32631",
        ):
            check_raster(src, MapOptions(), 0.5)
    else:
        assert check_raster(src, MapOptions(), 0.5).path == src


@pytest.mark.parametrize("pixel, coarser", [(0.125, True), (1.0, False)])
def test_the_model_sees_block_means_where_its_pixels_are_coarser(
    tmp_path: Path, monkeypatch, pixel: float, coarser: bool
) -> None:
    """Downsampled to the model's coarser pixels, each model pixel is the mean of the raster pixels
    under it (no aliasing: a bilinear warp gave 80-91 for stripes whose mean is 85); upsampled, the
    model sees values between its neighbours' (bilinear), never a block mean's steps."""
    seen: list[np.ndarray] = []

    def record(self, tiles: np.ndarray) -> np.ndarray:
        seen.append(np.array(tiles[..., 0], np.float32))
        return np.zeros(tiles.shape[:3], np.float32)

    monkeypatch.setattr(Predictor, "windows_logits", record)
    image = np.full((64, 64, 3), 60, np.uint8)
    image[:, ::3, 0] = 240  # red stripes of period 3: 240, 60, 60
    src = write_raster(tmp_path / "in/r.tif", image, pixel=pixel, nodata=None)
    ck = random_checkpoint(tmp_path / "m.pt", tile=64, depth=1)
    assert cli("predict", str(ck), str(src), "-o", str(tmp_path / "out")) == 0
    red = np.concatenate([t.ravel() for t in seen])
    if coarser:  # 4x4 raster pixels per model pixel: 1 or 2 stripes of 4 columns
        means = image[..., 0].astype(np.float32).reshape(16, 4, 16, 4).mean((1, 3))
        assert set(np.unique(means)) == {105.0, 150.0}
        assert set(np.unique(np.rint(red))) <= {105.0, 150.0}, np.unique(red)
    else:
        assert ((red >= 60) & (red <= 240)).all()
        assert len(np.unique(np.rint(red))) > 2


def test_a_map_s_outputs_change_together_or_not_at_all(checkpoint: Path, scene, tmp_path: Path, monkeypatch) -> None:
    """The mask was moved into place before the probability's COG was written (seconds on a large
    raster): a kill then left a new mask beside the old probability, polygons and area row."""
    src = write_raster(tmp_path / "in/x.tif", scene[0][:100, :150])
    out = tmp_path / "out"
    argv = ["predict", str(checkpoint), str(src), "-o", str(out), "--probability", "--polygons"]
    assert cli(*argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["forest_area.csv", "x_forest.geojson", "x_mask.tif", "x_probability.tif"]
    cog = geo._cog

    def killed_at_the_probability(tmp: Path, dest: Path, resampling: str) -> None:
        if "probability" in dest.name:
            raise RasterioError("killed")  # what stops the run between the two COGs
        cog(tmp, dest, resampling)

    monkeypatch.setattr(geo, "_cog", killed_at_the_probability)
    logits = Predictor.windows_logits
    monkeypatch.setattr(Predictor, "windows_logits", lambda self, tiles: -logits(self, tiles))  # another mask
    assert cli(*argv) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # every old file, and no temp file


SLOW_COG = """
import sys, time
import forestseg.geo as geo
cog = geo._cog
def slow(*args):
    print("writing", flush=True)
    time.sleep(60)  # a large raster's COG, long enough to be stopped in
    cog(*args)
geo._cog = slow
from forestseg.cli import main
main(sys.argv[1:])
"""


def test_sigterm_unwinds_as_ctrl_c_leaving_no_temp_files(checkpoint: Path, scene, tmp_path: Path) -> None:
    """A timeout or Slurm's scancel sends SIGTERM: it left the raster's temp folder (its logits) behind."""
    import signal
    import subprocess
    import sys

    src = write_raster(tmp_path / "in/x.tif", scene[0][:100, :150])
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", SLOW_COG, "predict", str(checkpoint), str(src), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    while line.startswith("note: "):  # under `pytest -n 2` the other worker keeps a core busy: said first
        line = proc.stdout.readline()
    assert line == "writing\n"  # inside map_forest, its temp folder there
    assert any(p.name.startswith(".x.") for p in out.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert (
        proc.returncode == 143 and err == "forestseg predict: terminated (SIGTERM); outputs written before it stand\n"
    )
    assert list(out.iterdir()) == []


def test_output_piped_into_a_reader_that_stops_is_no_traceback(checkpoint: Path, scene, tmp_path: Path) -> None:
    import subprocess
    import sys

    src = write_raster(tmp_path / "in/x.tif", scene[0][:100, :150])
    cmd = [sys.executable, "-m", "forestseg.cli", "predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the first line printed meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_folder_in_the_way_of_one_output_leaves_every_old_output(checkpoint: Path, scene, tmp_path: Path) -> None:
    """An earlier run's outputs stay as they were, not rewritten (their inodes) nor removed; nothing new."""
    src = write_raster(tmp_path / "in/x.tif", scene[0][:100, :150])
    out = tmp_path / "out"
    assert cli("predict", str(checkpoint), str(src), "-o", str(out), "--probability") == 0

    def outputs() -> dict[str, tuple[int, bytes]]:
        return {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir() if p.name != "x_probability.tif"}

    before = outputs()
    assert "x_mask.tif" in before
    (out / "x_probability.tif").unlink()
    (out / "x_probability.tif").mkdir()
    assert cli("predict", str(checkpoint), str(src), "-o", str(out), "--probability") == 2
    assert outputs() == before and (out / "x_probability.tif").is_dir()


def test_adapt_bn_on_a_model_without_batch_norm_is_refused_or_left_out(tmp_path: Path, capsys) -> None:
    """Nothing to adapt: an explicit --adapt-bn stops; a model file's own (written before train.adapt_bn was
    refused for such models) is left out, without the note that says it adapted."""
    ckpt = random_checkpoint(tmp_path / "m.pt", tile=64, batch_norm=False, adapt_bn=0.25)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert cli("predict", str(ckpt), str(tmp_path / "a.png"), "-o", str(tmp_path / "o1"), "--adapt-bn", "0.25") == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --adapt-bn 0.25: this model has no batch-norm layers to adapt (study_unet, or trained with "
        "model.batch_norm: false); leave it out\n"
    )
    assert cli("predict", str(ckpt), str(tmp_path / "a.png"), "-o", str(tmp_path / "o2")) == 0
    assert "batch-norm adapted" not in capsys.readouterr().out
    assert (tmp_path / "o2" / "a_mask.png").is_file()


@pytest.mark.parametrize("pixel, coarse", [(2.0, True), (0.25, False)])
def test_a_mask_is_warped_back_by_block_means_where_its_pixels_are_coarser(
    tmp_path: Path, monkeypatch, pixel: float, coarse: bool
) -> None:
    """Back from the model's 0.5 m grid, a 2 m pixel takes the mean of the 4x4 model pixels it holds
    (a bilinear warp, whose kernel spans the neighbours' blocks, gave logit 0.75 where all 16 say 3);
    a 0.25 m pixel takes values between its model pixels' (an average warp gave each the one model
    pixel under it: two values only)."""
    # a checkerboard of 2 m squares (one pixel at 2 m, 8x8 at 0.25 m); the model calls forest where red
    # is above the middle, so every model pixel inside a square says what the square is (the bilinear
    # input of a 2 m raster keeps each square's side of the middle inside it)
    monkeypatch.setattr(Predictor, "windows_logits", lambda self, t: np.where(t[..., 0] > 130, 3.0, -3.0))
    image = np.full((24, 24, 3), 60, np.uint8)
    squares = np.arange(24) // (1 if coarse else 8)
    image[..., 0] = np.where((squares[:, None] + squares) % 2 == 0, 240, 20)
    src = write_raster(tmp_path / "in/r.tif", image, pixel=pixel, nodata=None)
    ck = random_checkpoint(tmp_path / "m.pt", tile=64, depth=1)
    assert cli("predict", str(ck), str(src), "-o", str(tmp_path / "out"), "--probability", "float32") == 0
    probability, _ = read(tmp_path / "out/r_probability.tif")
    if coarse:  # every pixel's 16 model pixels agree: sigmoid(+-3), to the int16 logits' 1/256
        forest = image[..., 0] == 240
        assert np.allclose(probability[forest], 1 / (1 + np.exp(-3)), atol=1e-3), np.unique(probability)
        assert np.allclose(probability[~forest], 1 / (1 + np.exp(3)), atol=1e-3), np.unique(probability)
    else:  # bilinear: sigmoid(+-3) inside the squares, and values between them at their edges
        assert len(np.unique(np.round(probability, 3))) > 2, np.unique(probability)


ROUND = (500000, 5000000)


@pytest.mark.parametrize(
    "a, e, origin, resampling, exact",
    [
        (0.2, -0.2, ROUND, "average", True),
        (-0.2, 0.2, ROUND, "average", True),  # east to west, south up
        (0.6, -0.6, ROUND, "average", True),
        (0.7, -0.7, ROUND, "bilinear", True),
        (-1.3, 1.3, ROUND, "bilinear", True),
        (0.75, 0.75, ROUND, "bilinear", False),  # south up: every third centre on a raster pixel's edge
        (0.2, -0.2, (512345.6, 5432109.8), "average", False),  # grid edges on raster edges, to rounding
        (0.2, -0.3, (500000.123, 5000000.377), "average", False),
    ],
)
@pytest.mark.parametrize("holes", [True, False])
@pytest.mark.parametrize("rows", [geo._AlignedMask.ROWS, 7])
def test_the_model_grid_has_data_where_gdal_s_warped_alpha_says(
    tmp_path: Path, monkeypatch, a: float, e: float, origin: tuple, resampling: str, exact: bool, rows: int, holes: bool
) -> None:
    """Where a raster aligned with the model's grid has data on that grid is read from its own mask, not
    warped: the pixels of the warper's alpha band, which counts any pixel with data under a model pixel
    for average resampling and the one under its centre for bilinear. Where a centre or an edge lies on
    a raster pixel's edge, the warper's rounding may take either side: there it is never data where the
    warper wrote none (centres counted by floor() read a south-up 0.75 m raster's data on a third of the
    rows where the warper had black, whose logits spread into the pixels with data beside them). Also
    when the raster's rows are read a few at a time and where only its edges bound its data."""
    monkeypatch.setattr(geo._AlignedMask, "ROWS", rows)
    image = np.full((151, 201, 3), 90, np.uint8)
    image[np.random.default_rng(0).random((151, 201)) < 0.3] = 0  # nodata 0 at random pixels
    transform = Affine(a, 0, origin[0], 0, e, origin[1])
    src_path = write_raster(tmp_path / "r.tif", image, nodata=0 if holes else None, transform=transform)
    pixels = Resampling[resampling]
    with rasterio.open(src_path) as src, geo._warp(src, grid := geo._regrid(src, src.crs, 0.5), pixels, True) as view:
        window = rasterio.windows.Window(0, 0, grid.width, grid.height)
        ours = geo._AlignedMask(src, grid, spans=pixels == Resampling.average).dataset_mask(window) > 0
        warped = geo.has_data(view, window)
        assert not (ours & ~warped).any(), (ours & ~warped).sum()
        # where rounding decides, a centre needs data on both sides of the edge: a third of rows and columns here
        assert np.array_equal(ours, warped) if exact else ours.sum() > 0.7 * warped.sum(), (ours != warped).sum()
        assert 0.4 < ours.mean() < 1 if holes else ours.mean() > 0.9  # no mask of nothing or all
        part = rasterio.windows.Window(5, 9, 40, 30)  # a window of the grid: the same pixels
        assert np.array_equal(
            geo._AlignedMask(src, grid, spans=pixels == Resampling.average).dataset_mask(part) > 0, ours[9:39, 5:45]
        )


@pytest.mark.parametrize(
    "out, reach",
    [
        (Affine(0.25, 0, 0, 0, -0.25, 0), 3),  # 2 output pixels a side, exactly
        (Affine(1.0, 0, 0, 0, -1.0, 0), 2),  # coarser: half an output pixel
        (Affine(0.2, 0, 0, 0, -0.3, 0), 4),  # 2.5 columns, 1.67 rows
        (Affine.rotation(45) @ Affine.scale(0.3, -0.3), 4),  # 1.67 a side, 2.36 rows and columns
        (Affine.rotation(180) @ Affine.scale(0.3, -0.3), 3),
    ],
)
def test_warped_back_values_reach_as_far_as_a_model_pixel_spans(out: Affine, reach: int) -> None:
    model = Grid(CRS.from_user_input(UTM), Affine(0.5, 0, 0, 0, -0.5, 0), 10, 10)
    assert geo._reach(model, Grid(model.crs, out, 10, 10)) == reach


def test_sparse_data_on_a_rotated_raster_is_reached_by_the_warped_back_values(tmp_path: Path, monkeypatch) -> None:
    """A 45-degree 0.15 m raster with data in 5 % of its pixels: each gets its model pixels' prediction
    (counted by a model pixel's side, 3.3 output pixels, and not its 4.7 rows and columns at 45
    degrees, 3 pixels with data beyond the last ring were nodata)."""
    monkeypatch.setattr(Predictor, "windows_logits", lambda self, tiles: (tiles[..., 0] - np.float32(128)) / 8)
    image = np.full((60, 70, 3), 60, np.uint8)
    image[..., 0] = 150  # logit 2.75: forest
    image[np.random.default_rng(0).random((60, 70)) > 0.05] = 0
    transform = Affine.translation(500000, 5000000) @ Affine.rotation(45) @ Affine.scale(0.15, -0.15)
    src = write_raster(tmp_path / "in/r.tif", image, nodata=0, transform=transform)
    ck = random_checkpoint(tmp_path / "m.pt", tile=64, depth=1)
    assert cli("predict", str(ck), str(src), "-o", str(tmp_path / "out")) == 0
    mask, _ = read(tmp_path / "out/r_mask.tif")
    has_data = image.any(axis=-1)
    assert (mask[has_data] == 1).all() and (mask[~has_data] == 255).all(), np.argwhere((mask != 1) & has_data)


@pytest.mark.parametrize(
    "shape, transform, share, flags",
    [
        ((600, 700), Affine.translation(500000, 5000000) @ Affine.rotation(45) @ Affine.scale(0.7, -0.7), 0.3, ()),
        ((500, 600), Affine(0.5, 0, 720000, 0, -0.5, 5000000), 0.15, ("--reproject", "EPSG:32634")),
    ],
    ids=["0.7m-rotated-45", "reprojected"],
)
def test_the_model_reads_no_black_where_the_warper_says_there_is_data(
    tmp_path: Path, monkeypatch, shape: tuple, transform: Affine, share: float, flags: tuple
) -> None:
    """The model's bands and the alpha band saying where they have data are two warps of the raster:
    GDAL's direct-warp shortcut for a multi-band read (GDAL 3.9) rounded centres on a raster pixel's
    edge otherwise than the alpha's block-by-block warp, so black nodata was read as data and its logits
    turned pixels with data beside it to ground (18 of 125935 rotated, 5 of 45217 reprojected here)."""
    monkeypatch.setattr(Predictor, "windows_logits", lambda self, tiles: (tiles[..., 0] - np.float32(128)) / 8)
    image = np.full((*shape, 3), 60, np.uint8)
    image[..., 0] = 150  # logit 2.75: forest, and a logit of black (-16) beside it makes it ground
    image[np.random.default_rng(0).random(shape) > share] = 0
    src = write_raster(tmp_path / "in/r.tif", image, nodata=0, transform=transform)
    ck = random_checkpoint(tmp_path / "m.pt", tile=64, depth=1)
    assert cli("predict", str(ck), str(src), "-o", str(tmp_path / "out"), *flags) == 0
    mask, _ = read(tmp_path / "out/r_mask.tif")
    mapped = mask != 255 if flags else image.any(axis=-1)  # reprojected: the mask's pixels with data
    assert mapped.sum() > 0.1 * mask.size and (mask[mapped] == 1).all(), ((mask == 0) & mapped).sum()


@pytest.mark.parametrize("share", [0.05, 1.0], ids=["sparse-data", "noise"])
@pytest.mark.parametrize("shape", [(1100, 300), (300, 1100)], ids=["tall", "wide"])  # blocks: 1024 rows high
def test_a_resampled_map_is_the_same_whatever_the_block(tmp_path: Path, share: float, shape: tuple) -> None:
    """--block only bounds memory: a rotated raster read at other pixels maps the same, bit for bit, at
    --block 256 and 2048. The warper's direct-warp shortcut read a window otherwise than the same pixels
    read whole, and values spread into pixels without one stopped at a block's edge (sparse pixels with
    data near it stayed nodata)."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (*shape, 3), dtype=np.uint8)
    if share < 1:
        image[rng.random(shape) > share] = 0
    transform = Affine.translation(500000, 5000000) @ Affine.rotation(45) @ Affine.scale(0.15, -0.15)
    src = write_raster(tmp_path / "in/r.tif", image, nodata=0 if share < 1 else None, transform=transform)
    ck = random_checkpoint(tmp_path / "m.pt", tile=64, depth=1)
    maps = []
    for block in ("256", "2048"):
        out = tmp_path / f"out{block}"
        assert cli("predict", str(ck), str(src), "-o", str(out), "--block", block, "--probability", "float32") == 0
        maps.append([read(out / f"r_{name}.tif")[0] for name in ("mask", "probability")])
    assert np.array_equal(maps[0][0], maps[1][0]), (maps[0][0] != maps[1][0]).sum()
    assert np.array_equal(maps[0][1], maps[1][1], equal_nan=True)


def test_a_lone_data_pixel_is_mapped_from_the_model_pixel_it_lies_in(tmp_path: Path, monkeypatch) -> None:
    """A lone 0.1 m pixel with data, 7 m from any other and under no model pixel's centre, is predicted
    from the 0.5 m model pixel it lies in (GDAL averages the pixels with data under it): forest in the
    mask. Once it was mapped as valid from nothing; then, counted by model pixels'
    centres, it was nodata."""
    monkeypatch.setattr(Predictor, "windows_logits", lambda self, t: np.full(t.shape[:3], 3.0, np.float32))
    image = np.zeros((200, 200, 3), np.uint8)
    image[:, :100] = 150
    image[100, 180] = 150  # model pixel centres fall on raster columns 2, 7, 12, ...: not on 180
    src = write_raster(tmp_path / "in/r.tif", image, pixel=0.1, nodata=0)
    ck = random_checkpoint(tmp_path / "m.pt", tile=64, depth=1)
    assert cli("predict", str(ck), str(src), "-o", str(tmp_path / "out")) == 0
    mask, _ = read(tmp_path / "out/r_mask.tif")
    assert mask[100, 180] == 1 and (mask[:, :100] == 1).all() and (mask[:, 100:] == 255).sum() == 200 * 100 - 1
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]  # valid_ha to 4 decimals: 1 m2 a unit
    assert row["valid_ha"] == pytest.approx(200 * 100 * 0.01 / 1e4, abs=1e-6)


def test_an_area_bias_scored_on_rasters_gets_no_note_on_rows(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """Rasters record no subset (nor split): their JSON is no split's other rows, whatever the model lists."""
    write_raster(tmp_path / "data/images/a.tif", scene[0])
    write_raster(tmp_path / "data/masks/a.tif", scene[1].astype(np.uint8), nodata=255)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(out)) == 0
    scored = json.loads(out.read_text())
    assert "subset" not in scored and "split" not in scored and scored["model_train_scenes"] == 0
    capsys.readouterr()
    src = write_raster(tmp_path / "in/o.tif", scene[0])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--area-error", str(out)) == 0
    printed = capsys.readouterr().out
    assert "rows of" not in printed and "unseen data" not in printed, printed


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_an_area_bias_that_is_not_finite_is_refused(checkpoint: Path, scene, tmp_path: Path, capsys, value) -> None:
    """forest_area.csv's area_bias_pct is a finite percentage: inf and nan are refused before any mapping."""
    src = write_raster(tmp_path / "in/o.tif", scene[0][:96, :128])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), f"--area-error={value}") == 2
    assert capsys.readouterr().err == f"error: --area-error {value}: must be a finite percentage\n"
    assert not (tmp_path / "out").exists()


def test_an_unknown_reproject_target_is_refused_with_pictures_only(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    """--reproject is checked before any input is read, even where no GeoTIFF would use it (a typo is no note)."""
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "a.png")
    argv = ["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]
    assert cli(*argv, "--reproject", "EPSG:999999") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --reproject EPSG:999999: not a CRS GDAL knows") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_min_area_drops_the_polygons_under_it(checkpoint: Path, scene, tmp_path: Path) -> None:
    """--min-area-m2 reaches the polygon writer: a threshold between the polygons' areas keeps only the larger."""
    src = write_raster(tmp_path / "in/o.tif", with_nodata_corner(scene[0]))
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "all"), "--polygons") == 0
    areas = sorted(
        f["properties"]["area_m2"] for f in json.loads((tmp_path / "all/o_forest.geojson").read_text())["features"]
    )
    assert len(set(areas)) >= 2
    cut = (areas[0] + areas[-1]) / 2
    argv = ["predict", str(checkpoint), str(src), "-o", str(tmp_path / "big"), "--polygons", "--min-area-m2", str(cut)]
    assert cli(*argv) == 0
    kept = sorted(
        f["properties"]["area_m2"] for f in json.loads((tmp_path / "big/o_forest.geojson").read_text())["features"]
    )
    assert kept == [a for a in areas if a >= cut] and 0 < len(kept) < len(areas)


@pytest.mark.parametrize("block", ["0", "-64"])
def test_a_block_of_no_pixels_is_refused(checkpoint: Path, scene, tmp_path: Path, capsys, block: str) -> None:
    src = write_raster(tmp_path / "in/o.tif", scene[0][:96, :128])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), f"--block={block}") == 2
    assert capsys.readouterr().err == f"error: --block {block}: must be a positive number of pixels\n"
    assert not (tmp_path / "out").exists()


def test_adapt_bn_with_geotiffs_only_says_nothing_of_pictures(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """Each GeoTIFF adapts to itself: with no picture given, nothing is said of pictures' windows."""
    src = write_raster(tmp_path / "in/ortho.tif", scene[0], nodata=None)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--adapt-bn", "0.5") == 0
    printed = capsys.readouterr().out
    assert "picture" not in printed, printed


def test_a_jpeg_mapped_through_its_sidecars_gets_no_world_file_note(
    checkpoint: Path, scene, tmp_path: Path, capsys
) -> None:
    """A world file and a CRS in .aux.xml: mapped with its area; the note of a world file without a CRS is
    for pictures predicted as pictures only."""
    tif = write_raster(tmp_path / "src/ortho.tif", scene[0][:128, :128])
    jpg = tmp_path / "in/ortho.jpg"
    jpg.parent.mkdir()
    rasterio.shutil.copy(tif, jpg, driver="JPEG", WORLDFILE="YES")
    assert cli("predict", str(checkpoint), str(jpg), "-o", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "world file" not in printed and "mapped 1 GeoTIFF(s)" in printed, printed


def test_a_run_of_refused_tiffs_only_still_counts_them(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """A TIFF GDAL decodes but cannot place fails as a picture: the summary counts it though no picture ran."""
    import warnings

    src = tmp_path / "in/a.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        write_raster(src, scene[0][:64, :64], crs=None, nodata=None, transform=Affine.identity(), compress="lerc")
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 1
    assert f"predict: wrote 0 mask(s) to {tmp_path / 'out'}; 1 image(s) failed" in capsys.readouterr().out


def test_options_for_the_other_kind_of_input_are_noted(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """--overlay with GeoTIFFs, --min-area-m2 without --polygons, and --area-error with pictures only, do
    nothing: each said in a note."""
    src = write_raster(tmp_path / "in/o.tif", scene[0][:96, :128])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "o1"), "--overlay", "--min-area-m2", "9") == 0
    printed = capsys.readouterr().out
    assert "note: --overlay: GeoTIFF inputs get no overlay PNG" in printed
    assert "note: --min-area-m2 9 drops small polygons of --polygons only, which is not given" in printed
    assert not list((tmp_path / "o1").glob("*overlay*"))
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "a.png")
    assert (
        cli("predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "o2"), "--area-error", "5") == 0
    )
    printed = capsys.readouterr().out
    assert "note: --polygons, --probability and --area-error apply to GeoTIFF inputs only; there are none" in printed
    assert not (tmp_path / "o2/forest_area.csv").exists()


def test_raster_flags_with_geotiffs_only_get_no_pictures_note(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    src = write_raster(tmp_path / "in/o.tif", scene[0][:96, :128])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--bands", "3,2,1") == 0
    printed = capsys.readouterr().out
    assert "georeferenced inputs only" not in printed and "picture" not in printed, printed


def test_probability_without_a_value_is_uint8(checkpoint: Path, scene, tmp_path: Path) -> None:
    """A bare --probability writes the documented default, uint8 0-255."""
    src = write_raster(tmp_path / "in/o.tif", scene[0][:96, :128])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--probability") == 0
    with rasterio.open(tmp_path / "out/o_probability.tif") as ds:
        assert ds.dtypes == ("uint8",)


def test_an_output_folder_whose_name_is_not_utf8_is_one_line(checkpoint: Path, scene, tmp_path: Path, capsys) -> None:
    """GDAL writes UTF-8 paths only: an -o of Latin-1 bytes is exit 2 and one line, not a traceback."""
    src = write_raster(tmp_path / "in/g.tif", scene[0][:96, :128])
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/out\xe9"))
    assert cli("predict", str(checkpoint), str(src), "-o", str(out)) == 2
    err = capsys.readouterr().err
    # the folder named as given, before any work (GDAL named an internal temp file of it, after the map)
    assert (
        err
        == f"error: -o {str(out)!r}: its name is not UTF-8 text, which GDAL needs to write the GeoTIFFs' maps; choose another folder\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "crs, pixel, unit_m, origin",
    [
        ("EPSG:2263", 1.0, 1200 / 3937, (988000, 213000)),  # 1 US survey foot (0.305 m) a pixel
        (UTM, 0.2, 1.0, (500000, 5000000)),
        (UTM, 0.7, 1.0, (500000, 5000000)),
    ],
)
def test_the_grid_read_has_the_models_pixel_in_metres_whatever_the_crs_unit(
    tmp_path: Path, crs: str, pixel: float, unit_m: float, origin: tuple
) -> None:
    """A raster in feet is read on a grid of 0.5 m pixels, i.e. 1.64 ft (0.5 CRS units would be 0.15 m
    pixels: the model at 3.3x its resolution); averaged where the model's pixel is the coarser, so
    nothing aliases, bilinear where it is the finer."""
    from forestseg.geo import grids

    image = np.full((60, 60, 3), 90, np.uint8)
    path = write_raster(tmp_path / "a.tif", image, crs=crs, pixel=pixel, nodata=None, origin=origin)
    raster = check_raster(path, MapOptions(), 0.5)
    with rasterio.open(path) as src:
        _, read, resample, how = grids(src, raster, 0.5)
    assert resample and read.pixel_sides(raster.unit_m) == pytest.approx((0.5, 0.5), rel=1e-3)
    assert raster.unit_m == pytest.approx(unit_m) and how.name == ("average" if pixel * unit_m < 0.5 else "bilinear")


def test_oblong_pixels_coarser_on_one_side_are_averaged(tmp_path: Path) -> None:
    """0.4 x 0.6 m pixels to the model's 0.5 m: the 0.4 m side is finer than the model's pixel and would
    alias under bilinear: averaged, as soon as one side is finer."""
    from forestseg.geo import grids

    path = tmp_path / "a.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=60,
        height=60,
        count=3,
        dtype="uint8",
        crs=UTM,
        transform=from_origin(500000, 5000000, 0.4, 0.6),
    ) as ds:
        ds.write(np.full((3, 60, 60), 90, np.uint8))
    with rasterio.open(path) as src:
        _, _, resample, how = grids(src, check_raster(path, MapOptions(), 0.5), 0.5)
    assert resample and how.name == "average"


def test_a_float_probability_marks_the_inputs_nodata_as_nan(checkpoint: Path, scene, tmp_path: Path) -> None:
    src = write_raster(tmp_path / "in/x.tif", with_nodata_corner(scene[0][:100, :150]))
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--probability", "float32") == 0
    with rasterio.open(tmp_path / "out/x_probability.tif") as ds:
        values, valid = ds.read(1), ds.dataset_mask()
        assert ds.dtypes[0] == "float32" and math.isnan(ds.nodata)
    assert (valid == 0).any() and np.isnan(values[valid == 0]).all() and not np.isnan(values[valid > 0]).any()


@pytest.mark.parametrize("how, kept", [("MODE", True), ("AVERAGE", False)])
def test_mask_overviews_by_mode_keep_a_fine_grained_forest_share(tmp_path: Path, how: str, kept: bool) -> None:
    """GDAL's AVERAGE rounds a 2x2 of two forest pixels up: scattered forest at 45 % reads 61 % in the
    overviews a GIS shows zoomed out; MODE keeps it within a few %."""
    mask = (np.random.default_rng(0).random((1100, 1100)) < 0.45).astype(np.uint8)
    mask[:37, :53] = 255  # nodata
    write_raster(tmp_path / "m.tif", mask, nodata=255)
    geo._cog(tmp_path / "m.tif", tmp_path / "c.tif", how)
    with rasterio.open(tmp_path / "c.tif") as ds:
        f = ds.overviews(1)[0]
        small = ds.read(1, out_shape=(ds.height // f, ds.width // f))
    share = lambda m: (m == 1).sum() / ((m == 0) | (m == 1)).sum()  # noqa: E731
    assert bool(abs(share(small) - share(mask)) < 0.05) == kept


def test_predict_builds_the_masks_overviews_by_mode_and_the_probabilitys_by_average(
    checkpoint: Path, scene, tmp_path: Path, monkeypatch
) -> None:
    made = {}
    cog = geo._cog
    monkeypatch.setattr(geo, "_cog", lambda src, dst, how: made.setdefault(Path(dst).name, how) and cog(src, dst, how))
    src = write_raster(tmp_path / "in/x.tif", scene[0][:100, :150])
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--probability") == 0
    assert sorted(made.values()) == ["AVERAGE", "MODE"]
    assert next(how for name, how in made.items() if "mask" in name) == "MODE"


def test_an_all_nodata_raster_has_no_forest_share(checkpoint: Path, tmp_path: Path) -> None:
    src = write_raster(tmp_path / "in/x.tif", np.zeros((64, 64, 3), np.uint8))  # 0 is its nodata
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 0
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]
    assert row["valid_ha"] == 0 and pd.isna(row["forest_share"])


@pytest.mark.parametrize("above", [0.6, -0.6])  # in steps of the stored logits (1 / LOGIT_SCALE)
def test_a_logit_just_past_the_cut_keeps_its_side_through_the_resampled_map(
    tmp_path: Path, monkeypatch, above: float
) -> None:
    """Logits are stored as int16 steps of 1/LOGIT_SCALE around the cut on the model's grid: rounded, not
    truncated, so a logit 0.6 step above the cut maps forest (truncated to 0 it read as the cut: ground)."""
    cut = 0.0
    monkeypatch.setattr(
        Predictor,
        "windows_logits",
        lambda self, tiles: np.full(tiles.shape[:3], cut + above / geo.LOGIT_SCALE, np.float32),
    )
    src = write_raster(tmp_path / "in/r.tif", np.full((40, 60, 3), 90, np.uint8), pixel=0.7, nodata=None)
    ck = random_checkpoint(tmp_path / "m.pt", tile=32, depth=1)
    assert cli("predict", str(ck), str(src), "-o", str(tmp_path / "out")) == 0
    mask, _ = read(tmp_path / "out/r_mask.tif")
    assert (mask == (1 if above > 0 else 0)).all()


@pytest.mark.parametrize("sides", [(1e-4, 0.5), (0.5, 1e-4), (0.5, 1e7)])
def test_one_implausible_side_of_a_pixel_is_refused(tmp_path: Path, sides: tuple) -> None:
    """Each side of a pixel must be one an aerial or satellite image has, not only the other."""
    transform = Affine(sides[0], 0, 500000, 0, -sides[1], 5000000)
    src = write_raster(tmp_path / "x.tif", np.full((40, 40, 3), 90, np.uint8), nodata=None, transform=transform)
    with pytest.raises(
        ForestsegError, match=re.escape(f"its pixels are {sides[0]:.3g} x {sides[1]:.3g} m under EPSG:32633")
    ):
        check_raster(src, MapOptions(resample=False), 0.5)


@pytest.mark.parametrize("above", ["a file", "a link to nothing"])
def test_evaluate_names_what_is_in_the_way_of_its_output_before_scoring(
    checkpoint: Path, tmp_path: Path, capsys, above: str
) -> None:
    """-o under a file or under a link to nothing: one line naming it, before any tile is scored (a link
    to nothing read as "a file is where a folder goes", from the probe's mkdir)."""
    data = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=64)
    why = in_the_way(tmp_path, above)
    out_file = tmp_path / "up/deeper/eval.json"
    assert cli("evaluate", str(checkpoint), str(data), "-o", str(out_file)) == 2
    out, err = capsys.readouterr()
    assert err == f"error: -o {out_file}: {why}; choose another path\n"
    assert "evaluate:" not in out and not (tmp_path / "gone").exists()


def test_evaluate_without_true_forest_on_one_raster_scores_it_beside_one_with_forest(
    scene, tmp_path: Path, capsys
) -> None:
    """A raster of no forest (an open field beside its nodata) among rasters with forest is scored, with
    a note, even where the model finds no forest anywhere: true forest is tp + fn, not tp alone."""
    none = random_checkpoint(tmp_path / "none.pt", tile=64, threshold=1e6)  # a cut no logit passes: no forest
    field = np.zeros(scene[1].shape, np.uint8)
    field[:, :50] = 255  # outside the parcel
    for name, truth, nodata in (("a", field, 255), ("b", np.ones_like(field), None)):
        write_raster(tmp_path / f"data/images/{name}.tif", scene[0])
        write_raster(tmp_path / f"data/masks/{name}.tif", truth, nodata=nodata)
    out = tmp_path / "e.json"
    assert cli("evaluate", str(none), str(tmp_path / "data"), "-o", str(out)) == 0
    assert "masks/a.tif: no forest pixel with data" in capsys.readouterr().out
    scored = json.loads(out.read_text())
    assert scored["iou"] == 0.0 and scored["true_forest_ha"] == pytest.approx(field.size * 0.25 / 1e4)


@pytest.mark.parametrize("value", [0, 1])
def test_a_declared_nodata_that_covers_no_pixel_changes_nothing(
    checkpoint: Path, scene, tmp_path: Path, capsys, value: int
) -> None:
    """nodata 255 declared, no pixel of 255: a truth of no forest is scored (no --allow-no-forest asked), and
    one of forest only gets no note of forest burnt on nodata."""
    write_raster(tmp_path / "data/images/a.tif", scene[0])
    write_raster(tmp_path / "data/masks/a.tif", np.full(scene[1].shape, value, np.uint8), nodata=255)
    assert cli("evaluate", str(checkpoint), str(tmp_path / "data"), "-o", str(tmp_path / "e.json")) == 0
    assert "note: " not in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["true_forest_ha"] == (0 if value == 0 else pytest.approx(3.0))


def test_evaluate_on_a_split_notes_only_the_scored_scenes_the_model_trained_on(tmp_path: Path, capsys) -> None:
    """The model trained on scene A; A is in the split's train rows, B in its test rows: scoring the test
    subset scores no scene the model saw."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    images = pd.read_csv(data / "meta_data.csv")["image"]
    scenes = sorted({name.split("_")[0] for name in images})
    model = random_checkpoint(tmp_path / "m.pt", tile=64, train_scenes=scenes[:1])
    split = pd.DataFrame({"image": images, "subset": ["train" if i.startswith(scenes[0]) else "test" for i in images]})
    split.to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(model), str(data), "--split", str(tmp_path / "split.csv"), "-o", str(out)) == 0
    assert "trained on" not in capsys.readouterr().out
    assert json.loads(out.read_text())["seen_scenes"] == 0


def test_evaluate_on_tiles_lists_scenes_sorted_and_names_its_subset(tmp_path: Path, capsys) -> None:
    """Per-scene rows by scene id whatever the index's order; without --split the subset scored is 'all';
    a split none of whose rows are this set's is one line."""
    data = make_set(tmp_path / "set", scenes=3, grid=1, tile_size=64)
    meta = (data / "meta_data.csv").read_text().splitlines()
    (data / "meta_data.csv").write_text("\n".join([meta[0], *reversed(meta[1:])]) + "\n")
    model = random_checkpoint(tmp_path / "m.pt", tile=64)
    out = tmp_path / "eval.json"
    assert cli("evaluate", str(model), str(data), "-o", str(out)) == 0
    scored = json.loads(out.read_text())
    ids = [r["scene"] for r in scored["per_scene"]]
    assert ids == sorted(ids) and len(ids) == 3 and scored["subset"] == "all"
    (tmp_path / "split.csv").write_text("image,subset\nnot_in_this_set.jpg,test\n")
    capsys.readouterr()
    assert cli("evaluate", str(model), str(data), "--split", str(tmp_path / "split.csv")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none of its test images are valid pairs of" in err, err


@pytest.mark.parametrize("crs, digits", [(UTM, 3), ("+proj=tmerc +lon_0=15.5 +k=0.9996 +x_0=500000 +datum=WGS84", 8)])
def test_polygon_coordinates_keep_a_millimetre(tmp_path: Path, crs: str, digits: int) -> None:
    """Map units to 3 decimals (mm in metres); lon/lat, for a CRS of no EPSG code, to 8 (about 1 mm):
    a coarser rounding moves polygon edges off the mask's pixel edges."""
    from rasterio.warp import transform

    from forestseg.geo import write_polygons

    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    origin = (500000.123456, 5000000.654321)
    path = write_raster(tmp_path / "mask.tif", mask, crs=crs, pixel=0.5, nodata=255, origin=origin)
    assert write_polygons(path, tmp_path / "f.geojson", 0.0, 1.0) == 1
    collection = json.loads((tmp_path / "f.geojson").read_text())
    ring = collection["features"][0]["geometry"]["coordinates"][0]
    corners = {(origin[0] + 0.5 * i, origin[1] - 0.5 * j) for i in (1, 3) for j in (1, 3)}
    if digits == 8:
        assert "crs" not in collection  # lon/lat, GeoJSON's default
        xs, ys = transform(crs, "EPSG:4326", *zip(*sorted(corners)))
        corners = set(zip(xs, ys))
    assert {(round(x, digits), round(y, digits)) for x, y in corners} == {tuple(p) for p in ring}


def test_forest_pixels_touching_at_a_corner_are_separate_polygons(tmp_path: Path) -> None:
    """4-connected, as the mask's areas are counted: a diagonal pair is two polygons, not one bow tie."""
    from forestseg.geo import write_polygons

    mask = np.zeros((8, 8), np.uint8)
    mask[2, 2] = mask[3, 3] = 1
    mask[2:4, 5] = 1
    path = write_raster(tmp_path / "mask.tif", mask, nodata=255)
    assert write_polygons(path, tmp_path / "f.geojson", 0.0, 1.0) == 3
    areas = sorted(f["properties"]["area_m2"] for f in json.loads((tmp_path / "f.geojson").read_text())["features"])
    assert areas == [0.25, 0.25, 0.5]


@pytest.mark.parametrize(
    "sides, note",
    [
        ((2.0, 2.0), None),
        ((1.0, 2.5), None),
        ((2.5, 3.0), "its 2.5 m pixels are 5x the model's 0.5 m: each is predicted as 30 model pixels"),
    ],
)
def test_the_coarse_note_reads_the_finer_side_and_counts_model_pixels_by_area(
    checkpoint: Path, scene, tmp_path: Path, capsys, sides: tuple, note: str | None
) -> None:
    """Noted above 4x the model's pixel on the finer side (2 m, exactly 4x, is not; 1 x 2.5 m is not);
    the model pixels per raster pixel are the areas' ratio (2.5 x 3 m: 30, not 25)."""
    transform = Affine(sides[0], 0, 500000, 0, -sides[1], 5000000)
    src = write_raster(tmp_path / "in/o.tif", scene[0][:40, :40], nodata=None, transform=transform)
    assert cli("predict", str(checkpoint), str(src), "-o", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert (f"note: o.tif: {note}" in out) if note else ("predicted as" not in out), out
    row = pd.read_csv(tmp_path / "out/forest_area.csv").iloc[0]
    assert row["pixel_size_m"] == pytest.approx(math.sqrt(sides[0] * sides[1]), abs=1e-6)  # the side of its area


def test_evaluates_printed_summary_says_what_its_json_holds(tmp_path: Path, capsys) -> None:
    """The subset scored, the model's assumed pixel size (a file without one), the bias with its sign, the
    per-scene share error's mean and its maximum."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    model = random_checkpoint(tmp_path / "m.pt", tile=64, pixel_size_m=None)
    images = pd.read_csv(data / "meta_data.csv")["image"]
    pd.DataFrame({"image": images, "subset": "train"}).to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "e.json"
    split = ["--split", str(tmp_path / "split.csv"), "--subset", "train"]
    assert cli("evaluate", str(model), str(data), *split, "-o", str(out)) == 0
    printed, r = capsys.readouterr().out, json.loads(out.read_text())
    share = r["scene_share_error_pp"]
    assert r["area_bias_pct"] and share["mean_abs"] != share["max_abs"]  # the input tells them apart
    for line in (
        f"evaluate: 8 tiles of 2 scenes (train) of {data}",
        f"forest area at the model's assumed {r['pixel_size_m']:g} m pixels: ",
        f"area bias {r['area_bias_pct']:+.2f}%",
        f"forest share off by {share['mean_abs']:.2f} percentage points on average (at most {share['max_abs']:.2f})",
    ):
        assert line in printed, (line, printed)


def test_predict_notes_an_area_error_scored_on_scenes_the_model_trained_on(scene, tmp_path: Path, capsys) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    first = sorted({name.split("_")[0] for name in pd.read_csv(data / "meta_data.csv")["image"]})[0]
    model = random_checkpoint(tmp_path / "m.pt", tile=64, train_scenes=[first])
    assert cli("evaluate", str(model), str(data), "-o", str(tmp_path / "e.json")) == 0
    src = write_raster(tmp_path / "in/o.tif", scene[0])
    capsys.readouterr()
    assert (
        cli("predict", str(model), str(src), "-o", str(tmp_path / "out"), "--area-error", str(tmp_path / "e.json")) == 0
    )
    assert (
        f"note: --area-error {tmp_path / 'e.json'}: 1 of its scored scenes have the ids of scenes the model trained "
        "on, so its area bias may not be one of unseen data"
    ) in capsys.readouterr().out
