"""End to end: real data the way users have it, brought in as DVC data, and faults with a message."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import SAMPLE, TINY, failed_logs, make_set, ran, set_params, sh, start_dvc, wait_for_queue

pytestmark = pytest.mark.slow
TINY_REAL = {
    **TINY,
    "model": {"width": 4, "depth": 1},
    "train": {"epochs": 1, "batch_size": 4, "test_batch_size": 16},
    "grid": {"loss": ["bce"], "optimizer": ["adam"], "seed": [0]},
}


def unzipped_download(dst: Path, scenes: int = 4) -> tuple[Path, int]:
    """A folder laid out as the Kaggle zip unpacks ('Forest Segmented/Forest Segmented/...'), holding
    the pairs of a few scenes of the real sample (a tiny synthetic set where the sample is absent)."""
    inner = dst / "Forest Segmented" / "Forest Segmented"
    if not (SAMPLE / "meta_data.csv").is_file():
        make_set(inner, scenes=scenes)
        return dst, scenes * 4
    meta = pd.read_csv(SAMPLE / "meta_data.csv", dtype=str)
    keep = meta[meta["image"].str.split("_").str[0].isin(sorted(meta["image"].str.split("_").str[0].unique())[:scenes])]
    for folder, column in (("images", "image"), ("masks", "mask")):
        (inner / folder).mkdir(parents=True)
        for name in keep[column]:
            shutil.copy2(SAMPLE / folder / name, inner / folder / name)
    keep.to_csv(inner / "meta_data.csv", index=False)
    return dst, len(keep)


def git_files_ever(repo: Path) -> set[str]:
    """Every file path in every commit reachable from any ref (branches, tags, DVC experiment refs)."""
    revs = sh(repo, "git", "rev-list", "--all").stdout.split()
    files: set[str] = set()
    for rev in revs:
        files |= set(sh(repo, "git", "ls-tree", "-r", "--name-only", rev).stdout.splitlines())
    return files


def test_the_kaggle_download_as_dvc_data_from_unzip_to_queued_experiment(repo: Path) -> None:
    """README 'Real data': unzip into data/raw, `dvc add`, `dvc exp run`; no JPEG ever reaches git, and a
    queued experiment (a temp copy of the repo) trains on the same data."""
    set_params(repo, TINY_REAL)
    sh(repo, "git", "commit", "-qam", "tiny params")
    _, pairs = unzipped_download(repo / "data" / "raw" / "kaggle")
    sh(repo, "dvc", "add", "data/raw/kaggle")
    sh(repo, "git", "add", "data/raw/kaggle.dvc", "data/raw/.gitignore")
    sh(repo, "git", "commit", "-qm", "Kaggle set as DVC data")

    out = sh(repo, "dvc", "exp", "run", "-n", "kaggle", "-S", "data.source=data/raw/kaggle")
    assert "as the Kaggle zip unpacks" in out.stdout
    assert {"index", "split", "train@bce-adam-0", "aggregate"} <= ran(out)
    index = yaml.safe_load((repo / "metrics/index.json").read_text())
    assert index["valid"] == pairs and index["skipped"] == 0
    assert index["masks"] == "grey 0/255, forest >= 128 (JPEG noise tolerated)"

    sh(
        repo,
        "dvc",
        "exp",
        "run",
        "--queue",
        "-n",
        "kaggle-lr",
        "-S",
        "data.source=data/raw/kaggle",
        "-S",
        "optimizer.lr=0.003",
    )
    sh(repo, "dvc", "queue", "start")
    status = wait_for_queue(repo)
    assert "Success" in status, failed_logs(repo, status)

    sh(repo, "dvc", "exp", "apply", "kaggle-lr")
    assert yaml.safe_load((repo / "metrics/index.json").read_text())["valid"] == pairs  # trained on the same pairs
    assert yaml.safe_load((repo / "params.yaml").read_text())["optimizer"]["lr"] == 0.003

    jpegs = {f for f in git_files_ever(repo) if f.lower().endswith((".jpg", ".jpeg"))}
    assert not jpegs, sorted(jpegs)[:5]


def test_untracked_data_inside_the_project_is_refused(repo: Path) -> None:
    unzipped_download(repo / "data" / "raw" / "kaggle", scenes=2)
    set_params(repo, {"data": {"source": "data/raw/kaggle"}})
    out = sh(repo, "dvc", "repro", "index", check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "error: data.source data/raw/kaggle is inside the project but not tracked by DVC" in text
    assert "run `dvc add data/raw/kaggle`" in text and "Traceback" not in text


def test_params_changed_during_a_run_are_never_recorded(repo: Path) -> None:
    """Two `dvc exp run` at once in one checkout: the second rewrites params.yaml while the first trains.
    The first fails with one line instead of recording outputs under params that did not make them."""
    set_params(repo, {"grid": {"loss": ["bce"]}, "train": {"epochs": 20}})
    proc = start_dvc(repo, "repro")
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1/20" in line:  # 19 epochs left: ample time to change params
            set_params(repo, {"optimizer": {"lr": 0.05}})
            break
    lines += proc.stdout.readlines()
    proc.stdout.close()
    code = proc.wait()
    text = "".join(lines)
    if code == -signal.SIGKILL:
        pytest.fail(text)
    assert code != 0, text
    assert "error: params.yaml changed while this stage ran (optimizer.lr)" in text
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert "train@bce-adam-0" not in lock["stages"]  # nothing recorded for the run
    assert {"synth", "index", "split"} <= set(lock["stages"])  # stages that finished before the change are


def test_large_rasters_cut_by_forestseg_tile_train_split_by_their_scenes(repo: Path, tmp_path: Path) -> None:
    """README 'Large scenes': GeoTIFFs -> `forestseg tile` -> `dvc add` -> `dvc exp run`; each raster is a
    scene of its own id, so the split keeps each raster on one side and the report names them."""
    import subprocess
    import sys

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from forestseg.synthetic import render_scene

    rasters = tmp_path / "rasters"
    for k, scene in enumerate((11, 12, 13, 14)):
        image, mask = render_scene(np.random.default_rng(k), 100)
        for folder, pixels in (("images", image), ("masks", mask[..., None].astype(np.uint8))):
            (rasters / folder).mkdir(parents=True, exist_ok=True)
            bands = np.moveaxis(pixels, -1, 0)
            profile = {"driver": "GTiff", "width": 100, "height": 100, "count": len(bands), "dtype": "uint8"}
            origin = from_origin(500000 + 1000 * k, 5000000, 0.5, 0.5)
            with rasterio.open(
                rasters / folder / f"{scene}.tif", "w", crs="EPSG:32633", transform=origin, **profile
            ) as ds:
                ds.write(bands)
    set_params(repo, TINY_REAL)
    sh(repo, "git", "commit", "-qam", "tiny params")
    cut = subprocess.run(
        [sys.executable, "-m", "forestseg.cli", "tile", str(rasters), "-o", "data/raw/region", "--size", "32"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert cut.returncode == 0, cut.stderr
    assert "wrote 36 tiles of 4 scenes to data/raw/region (scene ids 11-14; " in cut.stdout  # 3 x 3 a raster
    *_, last = cut.stdout.splitlines()
    train = "dvc add data/raw/region && dvc exp run -S data.source=data/raw/region -S data.pixel_size_m=0.5"
    assert last == f"train on them: {train}"
    sh(repo, "bash", "-c", train)  # as a user pastes it
    index = yaml.safe_load((repo / "metrics/index.json").read_text())
    assert index["valid"] == 36 and index["skipped"] == 0 and index["scenes"] == 4
    split = pd.read_csv(repo / "data/split.csv", dtype=str)
    sides = split.assign(scene=split["image"].str.split("_").str[0]).groupby("scene")["subset"].nunique()
    assert sorted(sides.index) == ["11", "12", "13", "14"] and (sides == 1).all()  # no raster on both sides
    scenes = pd.read_csv(repo / "metrics/scenes.csv", dtype={"scene": str})
    assert set(scenes["scene"]) <= {"11", "12", "13", "14"} and len(scenes) == 1  # the one test scene
