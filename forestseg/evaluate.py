"""How far to trust a forest area: score a model on labelled data it has not seen.

Labelled tiles (a Kaggle-layout folder) are read by the index's own reader and mask conventions;
labelled rasters (images/<name>.tif with masks/<name>.tif) go through the same windowed GeoTIFF
path as `forestseg predict`. IoU, precision and recall come from TP/FP/FN/TN summed over every
pixel (weighted by its ground area), and the forest area predicted is set against the true one:
the area bias in percent, pooled and per scene (or raster).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from .config import DataConfig
from .dataset import DataError, NoDataSet, build_index, find_source, kaggle_folders_below
from .errors import ForestsegError
from .io import clear_stale_temps, temp_prefix
from .metrics import scores
from .windows import TILE_BATCH

if TYPE_CHECKING:  # geo imports rasterio, which tiles do not need; predict torch
    from .geo import Grid, MapOptions
    from .predict import Predictor


def _counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[tp, fp, fn, tn] of bool maps, as int64: metrics.confusion's counts for the numpy maps of raster
    blocks, where numpy's count_nonzero takes 0.7 ms a 2048x2048 block and confusion's torch sums ~100."""
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return np.array([tp, fp, fn, pred.size - tp - fp - fn], np.int64)


def summarize(units: dict[str, tuple[np.ndarray, float]], kind: str) -> dict:
    """Scores and areas of units {name: ([tp, fp, fn, tn] pixels, pixel area in m2)}.

    The counts are weighted by pixel area before summing, so rasters of other resolutions weigh by
    ground area; with one pixel size this is the plain pixel count.
    """
    area = {name: counts.astype(np.float64) * m2 for name, (counts, m2) in units.items()}
    total = np.sum(list(area.values()), axis=0)
    tp, fp, fn, tn = total
    true_m2, pred_m2 = tp + fn, tp + fp
    rows = []
    for name, (counts, _) in units.items():
        a = area[name]
        whole = a.sum()
        t, p = a[0] + a[2], a[0] + a[1]
        rows.append(
            {
                kind: name,
                "true_forest_ha": t / 1e4,
                "predicted_forest_ha": p / 1e4,
                "true_share": t / whole,
                "predicted_share": p / whole,
                "share_error_pp": 100 * (p - t) / whole,
                "area_bias_pct": 100 * (p - t) / t if t > 0 else None,
                "iou": scores(counts)["iou"],
            }
        )
    share_errors = np.abs([r["share_error_pp"] for r in rows])
    biases = np.abs([r["area_bias_pct"] for r in rows if r["area_bias_pct"] is not None])
    return {
        **{k: round(v, 6) for k, v in scores(total).items()},
        "true_forest_ha": round(true_m2 / 1e4, 4),
        "predicted_forest_ha": round(pred_m2 / 1e4, 4),
        "valid_ha": round(total.sum() / 1e4, 4),
        # > 0: the model reports more forest than there is
        "area_bias_pct": round(100 * (pred_m2 - true_m2) / true_m2, 3) if true_m2 > 0 else None,
        f"{kind}s": len(rows),
        f"{kind}_share_error_pp": {
            "mean_abs": round(float(share_errors.mean()), 3),
            "max_abs": round(float(share_errors.max()), 3),
        },
        f"{kind}_area_bias_pct": {
            "median_abs": round(float(np.median(biases)), 3) if len(biases) else None,
            "max_abs": round(float(biases.max()), 3) if len(biases) else None,
        },
        f"per_{kind}": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }


def evaluate_tiles(
    predictor: Predictor,
    data: Path,
    masks: str = DataConfig.masks,
    forest: tuple = (),
    split: Path | None = None,
    subset: str = "test",
    overlap: int | None = None,
    log: Callable[[str], None] = print,
    adapt_bn: float = 0.0,
    check_inverted: bool = True,
    allow_no_forest: bool = False,
) -> dict:
    """Score on the tiles of a Kaggle-layout folder (all, or the `subset` rows of a split.csv),
    read as the index reads them; tiles are taken at the model's pixel size. With `adapt_bn`,
    each scene is scored by the model adapted to its own tiles (`Predictor.adapted`); with
    `allow_no_forest`, also tiles whose masks hold no forest at all."""
    with tempfile.TemporaryDirectory(prefix=temp_prefix("forestseg-evaluate")) as tmp:
        index, report = build_index(
            data,
            Path(tmp) / "images.npy",
            Path(tmp) / "masks.npy",
            masks,
            forest,
            training=False,
            check_inverted=check_inverted,
            allow_no_forest=allow_no_forest,
        )
        _say_skipped(report, data, log)
        rows, missing = np.arange(len(index)), 0
        if split is not None:
            rows, missing = _split_rows(split, subset, index, data, log)
        scenes = index["scene"].astype(str).to_numpy()
        scored = sorted(set(scenes[rows]))
        seen = [s for s in scored if s in predictor.train_scenes]
        if seen:
            log(
                f"note: {len(seen)} of the {len(scored)} scored scene(s) ({', '.join(seen[:5])}"
                f"{', ...' if len(seen) > 5 else ''}) have the ids of scenes this model trained on (its model "
                "file's train_scenes): if they are those scenes, their scores are not of unseen data (ids are "
                "per data set: `forestseg tile --first-scene` keeps another region's apart)"
            )
        images = np.load(Path(tmp) / "images.npy", mmap_mode="r")
        truths = np.load(Path(tmp) / "masks.npy", mmap_mode="r")
        per_scene: dict[str, np.ndarray] = {}
        unadapted = []
        with tqdm(total=len(rows), desc="evaluate", unit="tile", disable=None, leave=False) as bar:
            for scene in dict.fromkeys(scenes[rows]):
                own = rows[scenes[rows] == scene]
                model = predictor  # or a copy adapted to the scene's own statistics: one copy held at a time
                if adapt_bn:
                    model = predictor.for_scene([images[j] for j in own], adapt_bn)
                    if model is predictor:  # no whole window to adapt to
                        unadapted.append(scene)
                for k in range(0, len(own), TILE_BATCH):  # tile-sized tiles of one scene share forward passes
                    chunk = own[k : k + TILE_BATCH]
                    preds = model.masks([images[i] for i in chunk], overlap)  # masks() copies them out
                    for i, pred in zip(chunk, preds):
                        per_scene[scene] = per_scene.get(scene, 0) + _counts(pred, truths[i] > 0)
                    bar.update(len(chunk))
        if unadapted:
            log(
                f"note: --adapt-bn {adapt_bn:g}: {len(unadapted)} of {len(per_scene)} scene(s) hold no whole "
                f"{predictor.tile}-px window to adapt batch-norm to, and are scored as trained"
            )
    m2 = predictor.pixel_size_m**2
    out = summarize({s: (c, m2) for s, c in sorted(per_scene.items())}, "scene")
    return {
        "data": str(data),
        "split": str(split) if split else None,
        "subset": subset if split else "all",
        "tiles": int(len(rows)),
        # pairs the index skipped (by reason) and split rows that are no valid pair: not in the scores
        "skipped": {
            "pairs": report["skipped"],
            "by_reason": report["skipped_by_reason"],
            "split_rows": missing,
            "unlisted_images": report["unlisted_images"],  # files without a row of meta_data.csv
            "unlisted_masks": report["unlisted_masks"],
            "skipped_pairs": report["skipped_pairs"],  # each with its image, mask and reason
        },
        "adapted_scenes": len(per_scene) - len(unadapted) if adapt_bn else 0,
        "seen_scenes": len(seen),  # scored scenes the model trained on
        "pixel_size_m": predictor.pixel_size_m,
        **out,
    }


def _say_skipped(report: dict, data: Path, log: Callable[[str], None]) -> None:
    """What the index left out of `data` (skipped pairs by reason, unlisted files), and its notes."""
    for note in report["notes"]:  # as the index says them: meta_data.csv found below `data`, extra columns
        log(f"note: {note}")
    if report["skipped"]:
        first = report["skipped_pairs"][0]
        log(
            f"evaluate: {report['skipped']} pair(s) of {data} skipped as the index skips them "
            f"({', '.join(f'{k}: {v}' for k, v in report['skipped_by_reason'].items())}; "
            f"e.g. {first['image']}: {first['reason']})"
        )
    for kind in ("image", "mask"):
        if report[f"unlisted_{kind}s"]:
            log(
                f"note: {report[f'unlisted_{kind}s']} {kind}(s) in {kind}s/ have no row in meta_data.csv and are "
                f"not scored, e.g. {', '.join(report[f'unlisted_{kind}_names'][:3])}"
            )


def _split_rows(
    split: Path, subset: str, index: pd.DataFrame, data: Path, log: Callable[[str], None]
) -> tuple[np.ndarray, int]:
    """The index rows of `subset` in a split.csv, and how many of its rows are no valid pair of `data`."""
    try:
        table = pd.read_csv(split, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ForestsegError(
            f"--split {split}: cannot be read as a UTF-8 CSV ({' '.join(str(e).split())}); "
            "give the pipeline's data/split.csv"
        ) from None
    if not {"image", "subset"} <= set(table.columns):
        raise ForestsegError(f"--split {split}: needs columns image,subset (data/split.csv of the pipeline)")
    chosen = set(table.loc[table["subset"] == subset, "image"])
    if not chosen:
        raise ForestsegError(
            f"--split {split}: no rows with subset {subset!r} (subsets: {', '.join(sorted(set(table['subset'])))})"
        )
    rows = np.flatnonzero(index["image"].isin(chosen).to_numpy())
    missing = len(chosen) - len(rows)
    if not len(rows):
        raise ForestsegError(
            f"--split {split}: none of its {subset} images are valid pairs of {data}; is it the split of this data set?"
        )
    if missing:
        log(
            f"evaluate: {missing} {subset} image(s) of {split} are not valid pairs of {data}; scored the other {len(rows)}"
        )
    return rows, missing


def raster_pairs(data: Path) -> list[tuple[Path, Path]]:
    """(image, truth) GeoTIFF pairs of a folder with images/<name>.tif and masks/<name>.tif, paired as
    `forestseg tile` pairs them (tiles.stem_pairs)."""
    from .images import RASTER_SUFFIXES
    from .tiles import stem_pairs

    return stem_pairs(data, RASTER_SUFFIXES)


def check_truth(truth_path: Path) -> None:
    """Refuse, from its header, a truth raster that would be scored wrong."""
    from rasterio.enums import ColorInterp

    from .geo import _open

    with _open(truth_path) as truth:
        classes = [b for b, c in enumerate(truth.colorinterp, 1) if c != ColorInterp.alpha]  # alpha: nodata
        if classes != [1]:
            alpha = f" (and {truth.count - len(classes)} alpha)" if truth.count > len(classes) else ""
            raise ForestsegError(
                f"{truth_path}: has {len(classes)} class band(s), band(s) {', '.join(map(str, classes)) or 'none'}"
                f"{alpha}; a truth is band 1 (0 = not forest, one other value forest): write the forest class as "
                "one band (gdal_calc.py or QGIS's raster calculator)"
            )
        if truth.nodata in (0, 1):  # a class value: its pixels would silently leave the score
            raise ForestsegError(
                f"{truth_path}: declares nodata {truth.nodata:g}, a class value of the truth "
                "(0 = not forest, one other value forest), so those pixels would not be scored; "
                f"set another nodata (e.g. 255) or none: gdal_edit.py -unsetnodata {truth_path}"
            )
        if truth.crs is None:
            raise ForestsegError(
                f"{truth_path}: has no CRS; the truth must be georeferenced like its image: give it the image's "
                f"(gdal_edit.py -a_srs EPSG:<code> -a_ullr <ulx> <uly> <lrx> <lry> {truth_path.name}; GDAL reads no "
                "CRS from a .prj beside it); to cut pictures of one "
                "grid for training, `forestseg tile` takes both as .png"
            )


def evaluate_rasters(
    predictor: Predictor,
    pairs: list[tuple[Path, Path]],
    opts: MapOptions,
    log: Callable[[str], None] = print,
    allow_no_forest: bool = False,
) -> dict:
    """Score on labelled rasters: each image is mapped as `forestseg predict` maps it, and its mask
    compared with the truth raster (0 = not forest, one other value = forest; the truth's nodata and
    the image's nodata are left out), read on the mask's grid (nearest neighbour if it differs).
    Every pair is checked from its headers before the first is mapped."""
    from .geo import check_raster, map_forest

    rasters = []
    for image, truth_path in pairs:
        raster = check_raster(image, opts, predictor.pixel_size_m, pictures=False)
        if raster is None:
            raise ForestsegError(f"{image}: has no georeference; labelled rasters must be GeoTIFFs")
        check_truth(truth_path)
        rasters.append(raster)
    for note in (n for r in rasters for n in r.notes):  # as predict says them: BGR tags, an alpha that is NIR
        log(f"note: {note}")
    units: dict[str, tuple[np.ndarray, float]] = {}
    notes: list[str] = []
    adapted = 0  # rasters whose batch-norm was adapted (one with no whole window with data is not)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("forestseg-evaluate")) as tmp:
        for raster, (image, truth_path) in zip(rasters, pairs):
            area = map_forest(predictor, raster, Path(tmp), opts, log)
            adapted += area.adapted
            if not area.valid_ha:  # said of the image, not of its truth
                raise ForestsegError(
                    f"{image}: has no pixel with data (its nodata value, alpha band or mask covers it all); "
                    "nothing to score: leave it out"
                )
            counts, seen, nodata_px, truth_nodata, grid = _compare(Path(area.mask), truth_path)
            if not counts.sum():
                raise ForestsegError(
                    f"{truth_path}: no pixel of it with data lies on a pixel of {image.name} with data; "
                    "is it the mask of that image (same place, CRS set right)?"
                )
            problem = seen.problem(truth_path)
            if problem:
                raise ForestsegError(problem)
            if truth_nodata is not None and nodata_px and not seen.forest():
                notes.append(seen.nodata_note(truth_path, truth_nodata, nodata_px))
            elif truth_nodata is not None and nodata_px and seen.forest_only():
                log(
                    f"note: {seen.forest_only_note(truth_path, nodata_px, 'false forest is not counted (precision reads 1)')}"
                )
            units[image.name] = (counts, grid.pixel_area_m2(raster.unit_m))
            Path(area.mask).unlink()
    if notes and not allow_no_forest and not sum(int(c[0] + c[2]) for c, _ in units.values()):  # tp + fn: none
        raise ForestsegError(
            notes[0]
            + (f" ({len(notes) - 1} more truth raster(s) alike)" if len(notes) > 1 else "")
            + "; if they hold no forest indeed (false forest on farmland, say), pass --allow-no-forest"
        )
    for note in notes:  # a raster of no forest among others with forest can be right (an open field)
        log(f"note: {note}")
    read = raster_reading(predictor, opts)
    return {"data": str(pairs[0][0].parent.parent), **read, **summarize(units, "raster"), "adapted_scenes": adapted}


def _compare(mask: Path, truth_path: Path) -> tuple[np.ndarray, TruthValues, int, float | None, Grid]:
    """A map's mask against its truth raster read on the mask's grid: the summed TP/FP/FN/TN of the
    pixels with data in both, the truth's values seen, its nodata pixels and nodata value, the grid."""
    import rasterio

    from .geo import FOREST, GDAL_ENV, NODATA, CPLE_BaseError, Grid, _blocks, _one_line, truth_on
    from .geo import has_data as data_in

    counts, seen, nodata_px, truth_nodata = np.zeros(4, np.int64), TruthValues(), 0, None
    with rasterio.Env(**GDAL_ENV), rasterio.open(mask) as pred_ds:
        grid = Grid(pred_ds.crs, pred_ds.transform, pred_ds.width, pred_ds.height)
        try:
            with rasterio.open(truth_path) as truth_ds, truth_on(truth_ds, grid) as view:
                truth_nodata = truth_ds.nodata
                for window in _blocks(grid, 2048):
                    pred = pred_ds.read(1, window=window)
                    has_data = data_in(view, window)
                    values = view.read(1, window=window)
                    seen.add(values[has_data])
                    valid = (pred != NODATA) & has_data
                    # any non-zero value is forest, as tile reads it
                    counts += _counts((pred == FOREST)[valid], values[valid] != 0)
                    nodata_px += int((~has_data).sum()) if truth_nodata is not None else 0
        except (rasterio.errors.RasterioError, CPLE_BaseError, OSError) as e:
            raise ForestsegError(f"{truth_path}: failed while reading ({_one_line(e)})") from None
    return counts, seen, nodata_px, truth_nodata, grid


def raster_reading(predictor: Predictor, opts: MapOptions) -> dict:
    """How rasters are read, as the JSON of their scores records it: two JSONs scored otherwise must not
    look alike (predict --area-error compares them with its own reading)."""
    return {"resampled_to_m": predictor.pixel_size_m if opts.resample else None, "reproject": opts.reproject}


_NAN = float("nan")  # the key of NaN pixels in TruthValues.counts


class TruthValues:
    """Value counts of a truth raster's pixels with data, window by window (a few distinct values)."""

    KEEP = 64  # distinct values kept; a float truth (probabilities?) has millions, and is refused anyway

    def __init__(self) -> None:
        self.counts: dict = {}
        self.others = 0  # pixels of values past the first KEEP

    def add(self, values: np.ndarray) -> None:
        if values.dtype == np.uint8:  # the usual truth: counted without np.unique's sort (6x its speed a window)
            counts = np.bincount(values, minlength=256)
            found = np.flatnonzero(counts)
            pairs = zip(found, counts[found])
        else:
            pairs = zip(*np.unique(values, return_counts=True))
        for v, n in pairs:
            key = v.item() if v == v else _NAN  # one key for NaN: each nan object is a key of its own
            if key in self.counts or len(self.counts) < self.KEEP:
                self.counts[key] = self.counts.get(key, 0) + int(n)
            else:
                self.others += int(n)

    def forest(self) -> list:
        """The values besides 0 seen so far: a truth raster has one, its forest."""
        return [v for v in self.counts if v != 0]

    def problem(self, truth_path: Path) -> str | None:
        """Why the values seen cannot be read as 0 = not forest, one other value forest; None if they can."""
        if _NAN in self.counts:  # a float truth whose NaN (outside its area) is not declared nodata
            return (
                f"{truth_path}: holds NaN pixels ({self.text()}) that are not its nodata; declare them nodata: "
                f"gdal_edit.py -a_nodata nan {truth_path}"
            )
        if len(self.forest()) > 1:  # JPEG noise around 0/255, or class ids: "other values = forest" misreads both
            return (
                f"{truth_path}: holds {len(self.forest())} values besides 0 ({self.text()}); a truth raster is "
                "0 = not forest and one forest value: binarise it first (gdal_calc.py -A truth.tif "
                "--outfile=out.tif --calc='A>=128' for a 0/255 mask with JPEG noise, 'A==<forest id>' for classes)"
            )
        return None

    def nodata_note(self, truth_path: Path, nodata: float, pixels: int) -> str:
        """A truth with no forest seen whose nodata value covered `pixels`: 0/255 masks tagged nodata 255."""
        return (
            f"{truth_path}: no forest pixel with data (values {self.text()}), but its nodata value "
            f"{nodata:g} covers {pixels} pixel(s): if {nodata:g} is its forest, unset the "
            f"nodata (gdal_edit.py -unsetnodata {truth_path})"
        )

    def forest_only(self) -> bool:
        """Forest polygons burnt on a nodata background: no pixel with data is not forest."""
        return bool(self.forest()) and 0 not in self.counts

    def forest_only_note(self, truth_path: Path, pixels: int, so: str) -> str:
        """A truth whose every pixel with data is forest while nodata covers `pixels`; `so`: what follows."""
        return (
            f"{truth_path}: every pixel with data is forest ({self.text()}) and its nodata covers {pixels} "
            f"pixel(s): the land without forest is nodata there, so {so}; burn it as 0 (gdal_rasterize -init 0) "
            f"or unset the nodata (gdal_edit.py -unsetnodata {truth_path})"
        )

    def text(self, top: int = 4) -> str:
        total = sum(self.counts.values()) + self.others or 1
        shown = sorted(self.counts.items(), key=lambda kv: -kv[1])[:top]
        more = len(self.counts) - len(shown)
        return ", ".join(f"{v:g} ({n / total:.1%})" for v, n in shown) + (
            f" and {more}{'+' if self.others else ''} more" if more else ""
        )


def evaluate(
    predictor: Predictor,
    data: Path,
    opts: MapOptions | None = None,
    log: Callable[[str], None] = print,
    allow_no_forest: bool = False,
    **tile_args,
) -> dict:
    """Score on `data`: a Kaggle-layout folder of tiles, or a folder of labelled GeoTIFFs (with
    `allow_no_forest`, also tiles or truths that hold no forest at all: false forest on farmland).
    `opts` reads both (window overlap and batch-norm adaptation come from it alone); `tile_args` are
    `evaluate_tiles`'s reading of tiles (masks, forest, split, subset, check_inverted)."""
    clear_stale_temps(Path(tempfile.gettempdir()), log)  # what killed evaluations left there
    why = None  # what find_source said, where it says more than "no data set here"
    try:
        source, _ = find_source(data)
    except NoDataSet:
        source = None
    except DataError as e:  # Meta_Data.csv, a link to no file, pictures to cut into tiles, ...
        source, why = None, e
    if source != data:  # no meta_data.csv in `data` itself: labelled GeoTIFFs, or tiles found below it
        if (data / "images").is_dir() and (data / "masks").is_dir():
            pairs = raster_pairs(data)
            below = [source] if source is not None else kaggle_folders_below(data)  # two: find_source refused
            if pairs and below:  # `forestseg tile data -o data/tiles`: which one is meant?
                where = ", ".join(str(b) for b in below[:3]) + (" ..." if len(below) > 3 else "")
                raise ForestsegError(
                    f"{data}: labelled GeoTIFFs (images/, masks/) and, below them, Kaggle-layout tiles in {where}: "
                    f"give {below[0]} to score the tiles, or move the tiles out of {data} to score the GeoTIFFs"
                )
            if pairs:
                from .geo import MapOptions

                ignored = [
                    "--" + k
                    for k in ("masks", "forest", "split")
                    if tile_args.get(k) not in (None, (), DataConfig.masks)
                ] + (["--forest-brighter"] if tile_args.get("check_inverted") is False else [])
                if ignored:  # options of tile sets: say so rather than score as if they applied
                    raise ForestsegError(
                        f"{data}: labelled GeoTIFFs (0 = not forest, one other value forest, no split); "
                        f"{', '.join(ignored)} apply to Kaggle-layout tiles only: leave them out"
                    )

                from .images import IMAGE_SUFFIXES, RASTER_SUFFIXES, visible_files
                from .tiles import masks_alone

                unscored = IMAGE_SUFFIXES - RASTER_SUFFIXES
                listed = visible_files(data / "images")  # as the pairs are found: macOS's ._a.jp2 is no image
                others = sorted(f.name for f in listed if f.suffix.lower() in unscored)
                if others:  # beside GeoTIFFs they are not scored: said, not silently left out
                    log(
                        f"note: {data / 'images'}: {len(others)} image(s) not GeoTIFF left unscored "
                        f"({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}); to score them, convert "
                        "a .jp2 or .vrt to GeoTIFF (gdal_translate), or `forestseg tile` pictures into a tile folder"
                    )
                named = {f.stem for f in listed if f.suffix.lower() in IMAGE_SUFFIXES}
                alone = [m.name for m in masks_alone(data, pairs) if m.stem not in named]  # others: noted above
                if alone:  # a truth without an image is not scored: said, not silently left out
                    log(
                        f"note: {data / 'masks'}: {len(alone)} truth(s) without an image of their name left unscored "
                        f"({', '.join(alone[:3])}{' ...' if len(alone) > 3 else ''})"
                    )
                return evaluate_rasters(predictor, pairs, opts or MapOptions(), log, allow_no_forest)
    if source is None and (data.parent / "meta_data.csv").exists():  # after the rasters: they may lie there
        raise ForestsegError(f"{data}: a folder inside the Kaggle-layout folder {data.parent}; give that one")
    if why is not None:
        raise why
    if source is None:
        raise ForestsegError(
            f"{data}: neither a Kaggle-layout folder (meta_data.csv, images/, masks/) nor a folder "
            "of labelled GeoTIFFs (images/<name>.tif with masks/<name>.tif)"
        )
    from .geo import MapOptions

    opts = opts or MapOptions()
    ignored = opts.raster_flags()
    if ignored:
        raise ForestsegError(
            f"{data}: Kaggle-layout tiles (taken at the model's pixel size); {', '.join(ignored)} apply to "
            "labelled GeoTIFFs only: leave them out"
        )
    # tiles are scored with the maps' window overlap and batch-norm adaptation
    return evaluate_tiles(
        predictor,
        data,
        overlap=opts.overlap,
        adapt_bn=opts.adapt_bn,
        log=log,
        allow_no_forest=allow_no_forest,
        **tile_args,
    )
