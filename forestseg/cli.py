"""`forestseg predict`: checkpoint + images or folders -> 0/255 PNG masks (and overlays), or for
GeoTIFFs georeferenced forest masks and forest_area.csv; `forestseg evaluate`: scores and area bias
on labelled data; `forestseg tile`: large labelled scenes (GeoTIFFs or pictures) cut into a
Kaggle-layout training folder."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from .config import PIXEL_SIZE_M, PRECISIONS, ConfigError, DataConfig, ForestsegError, forest_values, threads_range
from .cores import cpu_clock, thread_notes
from .errors import BROKEN_PIPE, Terminated, one_line, out_of_memory, quiet_stdout, stopped, terminate
from .images import IMAGE_SUFFIXES, SIDECAR_SUFFIXES, visible_files
from .io import (
    WRITE_ERRNOS,
    clear_stale_temps,
    mask_png,
    need_folder,
    plural,
    read_columns,
    read_json,
    temp_prefix,
    write_error,
    write_json,
    write_rows,
    write_with,
)
from .metrics import METRICS
from .windows import BLOCK, scene_windows

if TYPE_CHECKING:  # torch is imported by the commands that run a model, not by `tile` or --help (~2 s)
    from .geo import MapOptions
    from .predict import Predictor

AREA_COLUMNS = [
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
    "model_sha256",  # the model file that mapped it: one folder's total from one model
]


def _inputs(paths: list[Path]) -> list[Path]:
    """The images to predict: files named, and a folder's files of IMAGE_SUFFIXES; a folder's other
    files and its subfolders (but hidden ones and sidecars) are listed as skipped, so no image
    vanishes unreported."""
    files, skipped, folders = [], [], []
    for p in paths:
        if p.is_dir():
            for f in visible_files(p):
                suffix = f.suffix.lower()
                if f.is_dir():
                    folders.append(f)
                elif suffix in IMAGE_SUFFIXES:
                    if f.exists() and not f.is_file():  # a pipe named x.png: opening it waits for a writer
                        raise ForestsegError(f"{f}: not a regular file (a pipe or a device); move it out of {p}")
                    files.append(f)
                elif f.is_file() and suffix not in SIDECAR_SUFFIXES:
                    skipped.append(f)
        elif p.is_file():
            files.append(p)
        elif p.exists():  # read once by the probes before the decoder: it would look empty there
            raise ForestsegError(f"{p}: not a regular file (a pipe or a device); save it to a file first")
        else:
            raise ForestsegError(f"{p}: no such file or folder")
    if skipped:
        print(
            f"predict: skipped {len(skipped)} file(s) of other types in the input folder(s): "
            f"{', '.join(f.name for f in skipped[:5])}{', ...' if len(skipped) > 5 else ''} (a folder takes "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}; name another image on the command line to try it)",
            file=sys.stderr,
        )
    if folders:
        print(
            f"predict: did not look into {len(folders)} subfolder(s) of the input folder(s): "
            f"{', '.join(f.name for f in folders[:5])}{', ...' if len(folders) > 5 else ''} (name a subfolder "
            "on the command line to predict its images)",
            file=sys.stderr,
        )
    if not files:
        raise ForestsegError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}")
    return files


def _bands(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        raise ForestsegError(
            f"--bands {text}: give three band numbers for red, green and blue, e.g. 1,2,3 (or 3,2,1 for BGR)"
        )
    return bands


def _area_error(text: str | None, checkpoint: Path, predictor: Predictor, opts: MapOptions) -> float | None:
    """--area-error: a percentage, or the JSON written by `forestseg evaluate -o` (its area_bias_pct) of
    this very model file; its reading settings other than this run's are noted."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            scored = read_json(text)
            value = scored["area_bias_pct"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ForestsegError(
                f"--area-error {text}: neither a percentage nor an evaluate JSON with area_bias_pct "
                f"({type(e).__name__}: {e})"
            ) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # before any note on the file
            raise ForestsegError(f"--area-error {text}: its area_bias_pct is {value!r}, not a number")
        _scored_by(text, scored, checkpoint, predictor, opts)
        if scored.get("seen_scenes"):
            print(
                f"note: --area-error {text}: {scored['seen_scenes']} of its scored scenes have the ids of scenes "
                "the model trained on, so its area bias may not be one of unseen data"
            )
        # where the model file lists its scenes and none of them was scored: unseen data, no note
        elif not scored.get("model_train_scenes"):
            if "split" in scored and scored["split"] is None:  # tiles scored without --split
                print(
                    f"note: --area-error {text}: scored on every tile of {scored.get('data')} (no --split), and "
                    "the model file does not list the scenes it trained on, so its area bias may not be one of "
                    "unseen data"
                )
            elif scored.get("subset", "test") != "test":  # a split's other rows (rasters record no subset)
                print(
                    f"note: --area-error {text}: scored on the {scored['subset']!r} rows of {scored.get('split')}, "
                    "not its test rows, so its area bias is not one of unseen data"
                )
    if not math.isfinite(value):
        raise ForestsegError(f"--area-error {text}: must be a finite percentage")
    return float(value)


def _scored_by(text: str, scored: dict, checkpoint: Path, predictor: Predictor, opts: MapOptions) -> None:
    """Refuse an evaluate JSON of another model file; note the ways its reading differs from this run's."""
    digest = scored.get("model_sha256")
    if digest is None:
        print(
            f"note: --area-error {text}: records no model digest (written before evaluate recorded one), so "
            f"it cannot be checked to be of {checkpoint}; evaluate this model again to be sure"
        )
    elif digest != predictor.sha256:
        raise ForestsegError(
            f"--area-error {text}: is the area bias of another model file ({scored.get('checkpoint')}), not of "
            f"{checkpoint}; evaluate this one: forestseg evaluate {shlex.quote(str(checkpoint))} DATA -o <json>"
        )
    from .evaluate import raster_reading

    ours = {**_reading(predictor, opts), **raster_reading(predictor, opts)}
    differ = [
        f"{key} {scored[key]!r} (here {value!r})"
        for key, value in ours.items()
        if key in scored and scored[key] != value
    ]
    if differ:
        print(
            f"note: --area-error {text}: scored with {', '.join(differ)}: its area bias is that of another "
            "reading of the images; evaluate with this run's options for this run's bias"
        )
    units = scored.get("scenes", scored.get("rasters"))
    adapted = scored.get("adapted_scenes")
    if scored.get("adapt_bn") and isinstance(units, int) and isinstance(adapted, int) and adapted < units:
        print(
            f"note: --area-error {text}: {units - adapted} of its {units} scored scene(s) held no whole window "
            "to adapt batch-norm to and were scored as trained, so its area bias is partly that of the "
            "unadapted model"
        )


def _reading(predictor: Predictor, opts: MapOptions) -> dict:
    """How a run reads images, as evaluate's JSON records it (with evaluate.raster_reading for rasters)."""
    return {
        "dtype": "bf16" if predictor.bf16 else "fp32",  # "precision" is a score there
        "tta": predictor.tta,
        "adapt_bn": opts.adapt_bn,
        "overlap": opts.overlap,  # null: the default, a quarter of the tile
    }


def _pictures_note(n: int, what: str, pixel_size_m: float) -> None:
    """A note where images that carry no pixel size are read at a model's other than the Kaggle tiles'."""
    if pixel_size_m != PIXEL_SIZE_M:
        px = f"{pixel_size_m:g} m"
        print(
            f"note: the {n} {what} carry no pixel size and are read as if at the model's {px} pixels "
            f"(Kaggle/DeepGlobe tiles are {PIXEL_SIZE_M:g} m); resample {what} of another resolution to {px} "
            f"first, or give GeoTIFFs (resampled to {px} as they are read)"
        )


def _map_options(args: argparse.Namespace, predictor: Predictor) -> MapOptions:
    from .geo import MapOptions, parse_crs
    from .model import has_batchnorm

    if args.overlap is not None and not 0 <= args.overlap < predictor.tile:
        raise ForestsegError(
            f"--overlap {args.overlap}: must be in 0..{predictor.tile - 1} (the model's tile is {predictor.tile} px)"
        )
    if args.block < 1:
        raise ForestsegError(f"--block {args.block}: must be a positive number of pixels")
    if args.reproject:
        parse_crs(args.reproject)
    if not 0 <= getattr(args, "min_area_m2", 0) < math.inf:  # nan too
        raise ForestsegError(f"--min-area-m2 {args.min_area_m2}: must be a finite number >= 0")
    adapt_bn = predictor.adapt_bn if args.adapt_bn is None else args.adapt_bn  # default: the model file's
    if not 0 <= adapt_bn <= 1:  # a model file's own is checked when it is read
        raise ForestsegError(f"--adapt-bn {adapt_bn}: must be in 0..1 (0.25 measured best, 0 = off)")
    if adapt_bn and not has_batchnorm(predictor.model):  # it would do nothing
        if args.adapt_bn:
            raise ForestsegError(
                f"--adapt-bn {args.adapt_bn:g}: this model has no batch-norm layers to adapt (study_unet, or "
                "trained with model.batch_norm: false); leave it out"
            )
        adapt_bn = 0.0  # a model file written before train.adapt_bn was refused for such models
    return MapOptions(
        bands=_bands(args.bands),
        resample=not args.no_resample,
        reproject=args.reproject,
        probability=getattr(args, "probability", None),
        polygons=getattr(args, "polygons", False),
        min_area_m2=getattr(args, "min_area_m2", 0.0),
        overlap=args.overlap,
        block=args.block,
        adapt_bn=adapt_bn,
    )


def _pixel_note(checkpoint: Path, predictor: Predictor) -> None:
    if not predictor.pixel_size_recorded:
        print(
            f"note: {checkpoint} does not record the pixel size it was trained at; assuming "
            f"{predictor.pixel_size_m:g} m (the Kaggle/DeepGlobe tiles)"
        )


def _predictor(args: argparse.Namespace) -> Predictor:
    """The model of predict and evaluate (--device, --precision, --tta), with a note where other processes
    kept busy, since the command started, the cores a CPU run's threads need."""
    import torch

    from .device import emulated_bf16_note, pick_device
    from .predict import Predictor

    predictor = Predictor.load(args.checkpoint, pick_device(args.device, "--device"), args.precision, args.tta)
    if args.precision == "trained" and not predictor.precision_recorded:
        print(
            f"note: --precision trained: {args.checkpoint} records no precision (a model file older than that "
            f"record), so it runs as auto picks here: {'bf16' if predictor.bf16 else 'fp32'}"
        )
    if note := emulated_bf16_note(predictor.bf16, predictor.device):
        print(f"note: --precision {args.precision}: {note}")
    if predictor.device.type == "cpu":
        for note in thread_notes(args.started, torch.get_num_threads()):
            print(f"note: {note}")
    return predictor


def _on_threads(n: int | None) -> contextlib.AbstractContextManager[None]:
    """torch's CPU threads for a command that runs a model: --threads, restored after (tests run many
    commands in one process)."""
    from .device import cpu_threads

    if n is not None and (wrong := threads_range(n)):
        raise ForestsegError(f"--threads {n}: {wrong}")
    return cpu_threads(n)


def predict(args: argparse.Namespace) -> int:
    from .geo import PictureError, check_raster, has_world_file, is_map

    predictor = _predictor(args)
    opts = _map_options(args, predictor)
    area_error = _area_error(args.area_error, args.checkpoint, predictor, opts)
    files = _predict_inputs(args.inputs, args.out)
    # GeoTIFFs are checked before anything runs: a bad one stops the run (exit 2) rather than
    # leaving a forest-area table with an orthophoto silently missing; a TIFF without georeference is a
    # picture, listed as failed with the others (exit 1)
    rasters, pictures, unplaced, refused = [], [], [], []
    for f in files:
        mapped = is_map(f)
        try:
            raster = check_raster(f, opts, predictor.pixel_size_m) if mapped else None
        except PictureError as e:  # no georeference: a picture, which fails alone
            refused.append((f, str(e)))
            continue
        (rasters if raster else pictures).append(raster or f)
        if not mapped and has_world_file(f):
            unplaced.append(f)
    if rasters:
        _utf8_out(args.out, "GDAL needs to write the GeoTIFFs' maps")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ForestsegError(
            f"-o {args.out}: cannot create the folder ({_in_the_way(args.out) or e.strerror or e})"
        ) from None
    _check_name_lengths(args.out, pictures, rasters)
    if rasters:
        _readable_table(args.out / "forest_area.csv")
    clear_stale_temps(args.out)
    _say_dropped(args.out, [old for f, _ in refused for old in _drop_outputs(args.out, f)])
    _input_notes(args, predictor, opts, rasters, pictures, unplaced, area_error)
    # the pictures of one call are one scene; each GeoTIFF is its own (map_forest adapts the plain model).
    # Sampled in the order of their paths, not as named: `predict m b.jpg a.jpg` is `predict m a.jpg b.jpg`
    adapt = pictures and opts.adapt_bn  # decoding the sample costs time: only when asked for
    scene = predictor
    if adapt:
        ordered = sorted(pictures, key=lambda p: str(p.resolve()))
        scene = predictor.adapted(scene_windows(_Opaque(ordered), predictor.tile), opts.adapt_bn)
    if adapt and scene is predictor:
        print(f"note: no picture holds a whole {predictor.tile}-px window to adapt batch-norm to; predicted as trained")
    failed, transparent = _predict_pictures(scene, pictures, args)
    written, failed = len(pictures) - len(failed), [message for _, message in refused] + failed
    if pictures or refused:
        print(
            f"predict: wrote {written} mask(s) to {args.out}; {len(failed)} image(s) failed"
            + (f"; {transparent} image(s) had an alpha band: transparent pixels are not forest" if transparent else "")
        )
    for message in failed:  # before the rasters: a raster that fails stops the run
        print(f"error: {one_line(message)}", file=sys.stderr)
    if rasters:
        _map_rasters(predictor, rasters, args.out, opts, area_error)
    return 1 if failed else 0


def _folders_of(f: Path) -> set[Path]:
    """The folder a file is named in and the one it is in, through its links."""
    return {f.parent.resolve(), f.resolve().parent}


def _predict_inputs(inputs: list[Path], out: Path) -> list[Path]:
    """The input files, each once, where it first came; refused where two would write one output name or
    `out` is no folder for the outputs (a file, a dangling link, a folder of the inputs)."""
    unique: dict[Path, Path] = {}
    for f in _inputs(inputs):  # a file named twice is predicted once, where it first came
        first = unique.setdefault(f.resolve(), f)
        if first.stem != f.stem:  # a link under another name: its mask would have had that name
            print(f"note: {f} is the same file as {first}: predicted once, as {first.stem}_mask")
    files = list(unique.values())
    stems = [f.stem for f in files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ForestsegError(
            f"several inputs would write the same <name>_mask output: {twice[:5]}; predict them separately, "
            "each into its own -o folder (into one, the later run's mask replaces the earlier's)"
        )
    _no_dangling_link(out, "create that folder, or give another -o")
    if out.exists() and not out.is_dir():
        raise ForestsegError(f"-o {out}: is a file; give a folder for the masks")
    # a linked input's own folder too: there its mask would replace the file itself, or land beside it
    input_dirs = {p.resolve() for p in inputs if p.is_dir()} | {d for f in files for d in _folders_of(f)}
    if out.resolve() in input_dirs:
        raise ForestsegError(
            f"-o {out}: is a folder of input images; the masks would land among them "
            "(and be read as inputs next time): choose another output folder"
        )
    return files


def _input_notes(
    args: argparse.Namespace,
    predictor: Predictor,
    opts: MapOptions,
    rasters: list,
    pictures: list[Path],
    unplaced: list[Path],
    area_error: float | None,
) -> None:
    """What predict says before it runs: the GeoTIFFs' notes, options that do not apply to the inputs
    given, pictures with a world file but no CRS, and what batch-norm is adapted to."""
    if rasters:
        _pixel_note(args.checkpoint, predictor)
        for note in (n for r in rasters for n in r.notes):
            print(f"note: {note}")
        if args.overlay:
            print("note: --overlay: GeoTIFF inputs get no overlay PNG; open <name>_mask.tif over the image in QGIS")
    elif opts.polygons or opts.probability or area_error is not None:
        print("note: --polygons, --probability and --area-error apply to GeoTIFF inputs only; there are none")
    if rasters and opts.min_area_m2 and not opts.polygons:
        print(
            f"note: --min-area-m2 {opts.min_area_m2:g} drops small polygons of --polygons only, which is not given; "
            "forest_area.csv counts every forest pixel either way"
        )
    if unplaced:
        print(
            f"note: {unplaced[0].name}{f' and {len(unplaced) - 1} other(s)' if len(unplaced) > 1 else ''}: a world "
            "file gives the pixel grid but no CRS (GDAL reads one from <name>.aux.xml, not from a .prj beside a "
            "picture), so it is predicted as a plain picture, without area; to map it: gdal_translate -a_srs "
            f"EPSG:<code> {shlex.quote(str(unplaced[0]))} {shlex.quote(str(unplaced[0].with_suffix('.tif')))}"
        )
    if pictures:
        _pictures_note(len(pictures), "picture(s)", predictor.pixel_size_m)
    unused = opts.raster_flags()
    if pictures and unused:
        print(
            f"note: {' and '.join(unused)} appl{'ies' if len(unused) == 1 else 'y'} to georeferenced inputs only; "
            f"the {len(pictures)} picture(s) are read as they are (red, green, blue, at their own pixel size)"
        )
    if opts.adapt_bn and args.adapt_bn is None:
        to = []
        if pictures:
            to.append(
                f"the {len(pictures)} picture(s) to all of them, as one scene (give each scene a call of its own)"
            )
        if rasters:
            to.append("each GeoTIFF to itself")
        print(
            f"note: batch-norm adapted by {opts.adapt_bn:g}, the model file's: {' and '.join(to)} (--adapt-bn 0: off)"
        )


def _check_name_lengths(out: Path, pictures: list[Path], rasters: list) -> None:
    """Refuse, before any prediction, an input whose longest output name the file system of `out`
    would refuse (255 bytes on most): it failed after the whole prediction, with a traceback."""
    try:
        limit = os.pathconf(out, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    from .geo import every_output

    outputs = [(p, _picture_outputs(out, p)) for p in pictures] + [(r.path, every_output(r.path, out)) for r in rasters]
    longest = [(p, max((o.name for o in named.values()), key=lambda n: len(os.fsencode(n)))) for p, named in outputs]
    long = [(p, name) for p, name in longest if len(os.fsencode(name)) > limit]
    if long:
        path, name = long[0]
        raise ForestsegError(
            f"{path}: its outputs' names would pass the {limit} bytes a file name may have in {out} "
            f"({name}: {len(os.fsencode(name))} bytes)"
            + (f", and {len(long) - 1} other input(s)" if len(long) > 1 else "")
            + "; rename it shorter"
        )


class _Opaque(Sequence):
    """Pictures decoded on access, one at a time (64 drone photos held at once were GBs): a picture
    that cannot be read (left to predict, which reports it) or has a transparent pixel (no photo
    there) is None."""

    def __init__(self, pictures: list[Path]) -> None:
        self.pictures = pictures

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, i: int) -> np.ndarray | None:
        from .predict import read_rgb

        try:
            image, opaque = read_rgb(self.pictures[i])
        except ForestsegError:
            return None
        return image if opaque is None or opaque.all() else None


CHUNK_PIXELS = 32 * 1024 * 1024  # pixels of the pictures decoded in one step (two steps are held: read-ahead)


def _groups(pictures: list[Path], chunk: int, budget: int = CHUNK_PIXELS) -> list[list[Path]]:
    """The pictures in steps of at most `chunk` images and `budget` pixels (one image at least), sized
    from their headers: 32 Kaggle tiles share a step, but 32 drone photos of 8000x8000 px would hold
    12 GB decoded with the next step read ahead."""
    groups: list[list[Path]] = []
    group: list[Path] = []
    pixels = 0
    for path in pictures:
        try:
            with Image.open(path) as im:
                n = im.width * im.height
        except Exception:  # unreadable: the decode reports it
            n = 0
        if group and (len(group) == chunk or pixels + n > budget):
            groups.append(group)
            group, pixels = [], 0
        group.append(path)
        pixels += n
    return groups + [group] if group else groups


def _predict_pictures(
    predictor: Predictor, pictures: list[Path], args: argparse.Namespace, chunk: int = 32
) -> tuple[list[str], int]:
    """PNG masks (and overlays) of JPEG/PNG inputs, `chunk` images per step: the next chunk decodes and
    the last one's files are written in threads while the model runs, and tile-sized images of a
    chunk share forward passes. Returns (error messages, images that had an alpha band)."""
    from .device import keep_freed_memory
    from .predict import overlay, read_rgb

    failed, transparent, removed, of_failed = [], 0, [], []
    if predictor.device.type == "cpu":
        keep_freed_memory()  # ~1.9x images/s here (bench/speed.py); rasters keep glibc's default (bounded RSS)

    def read(path: Path):
        try:
            return read_rgb(path)
        except ForestsegError as e:
            return str(e)

    def write(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
        data = mask_png(mask)
        named = _picture_outputs(args.out, path)
        write_with(named["mask"], lambda p: p.write_bytes(data))
        overlay_png = named["overlay"]
        if args.overlay:
            write_with(overlay_png, lambda p: Image.fromarray(overlay(image, mask)).save(p))
        elif overlay_png.exists():  # an earlier run's, of another mask: never left beside this one
            overlay_png.unlink(missing_ok=True)
            removed.append(overlay_png)

    groups = _groups(pictures, chunk)
    with (
        ThreadPoolExecutor(2) as pool,
        tqdm(total=len(pictures), desc="predict", unit="image", disable=None if pictures else True) as bar,
    ):
        ahead = pool.map(read, groups[0]) if groups else None
        pending = []  # the previous chunk's writes, done while this chunk runs
        for k, group in enumerate(groups):
            decoded = list(ahead)
            ahead = pool.map(read, groups[k + 1]) if k + 1 < len(groups) else None
            ok = [(path, d) for path, d in zip(group, decoded) if not isinstance(d, str)]
            for path, message in ((path, d) for path, d in zip(group, decoded) if isinstance(d, str)):
                failed.append(message)
                of_failed += _drop_outputs(args.out, path)
            writes = []
            for (path, (image, opaque)), mask in zip(ok, predictor.masks([d[0] for _, d in ok], args.overlap)):
                if opaque is not None:  # transparent pixels are no photo: never forest
                    mask &= opaque
                    transparent += 1
                writes.append(pool.submit(write, path, image, mask))
            for w in pending:
                w.result()
            pending = writes
            bar.update(len(group))
        for w in pending:
            w.result()
    if removed:
        print(
            f"note: removed {plural(len(removed), 'overlay')} of an earlier run from {args.out} (this one has no --overlay)"
        )
    _say_dropped(args.out, of_failed)
    return failed, transparent


def _picture_outputs(out: Path, path: Path) -> dict[str, Path]:
    """What predict writes in `out` for a picture: its mask and, with --overlay, its overlay."""
    return {"mask": out / f"{path.stem}_mask.png", "overlay": out / f"{path.stem}_overlay.png"}


def _drop_outputs(out: Path, path: Path) -> list[Path]:
    """Remove an earlier run's outputs in `out` of `path`, an input that failed now: never left beside
    this run's (nor its forest_area.csv row, which goes with its mask); the files removed. Any of them:
    a picture's mask and overlay, a raster's as map_forest names them with every option on."""
    from .geo import every_output

    every = [*_picture_outputs(out, path).values(), *every_output(path, out).values()]
    gone = [old for old in every if old.is_file()]
    for old in gone:
        old.unlink(missing_ok=True)
    return gone


def _say_dropped(out: Path, gone: list[Path]) -> None:
    if gone:
        print(
            f"note: removed {plural(len(gone), 'output')} of an earlier run from {out} whose images now "
            f"fail to read: {', '.join(p.name for p in gone[:5])}{' ...' if len(gone) > 5 else ''}"
        )


def _map_rasters(predictor: Predictor, rasters: list, out: Path, opts, area_error: float | None) -> None:
    """Map every raster; forest_area.csv is rewritten after each, keeping the earlier runs' rows of the
    rasters not mapped yet, so a failure leaves the finished rows and those of the raster that failed and
    of those not reached: a map's outputs change together or not at all, and the table counts every mask
    in the folder."""
    from .geo import map_forest, output_paths

    csv_path = out / "forest_area.csv"
    masks = {r.path: _resolved(output_paths(r.path, out, opts)["mask"]) for r in rasters}
    inputs = {_resolved(r.path) for r in rasters}

    def earlier_rows(say: bool) -> list[tuple[str, str, dict]]:  # (its mask, its input, the row), resolved once
        return [(m, _resolved(r["file"]), r) for m, r in _earlier_rows(csv_path, inputs, set(masks.values()), say=say)]

    seen = _stat_of(csv_path)  # the table as this call last read or wrote it (before reading: never newer)
    earlier = earlier_rows(say=True)
    files_done: set[str] = set()  # mapped by this call: their earlier rows are replaced
    masks_done: set[str] = set()  # masks this call wrote (also another raster's of the same name)
    rows: list[dict] = []

    def kept() -> list[dict]:
        return [r for m, f, r in earlier if f not in files_done and m not in masks_done]

    def write() -> None:
        nonlocal earlier, seen
        # another predict into this folder (a shell loop's `&`, xargs -P) rewrites the table too: read
        # again under a lock where it changed since, or the later writer drops the other's rows
        with _folder_locked(out):
            if _stat_of(csv_path) != seen:
                earlier = earlier_rows(say=False)
            write_rows(csv_path, AREA_COLUMNS, ([row[c] for c in AREA_COLUMNS] for row in kept() + rows))
            seen = _stat_of(csv_path)

    for raster in rasters:
        try:
            a = map_forest(predictor, raster, out, opts)
        except ForestsegError:
            if any(m == masks[raster.path] for m, _, _ in earlier):  # the table as last written still holds it
                print(f"note: {raster.path.name}: the map of an earlier run stays in {out}, with its row")
            raise
        files_done.add(_resolved(raster.path))
        masks_done.add(masks[raster.path])
        rows.append(
            {
                "file": os.path.abspath(a.file),  # absolute (links kept): a later run from elsewhere finds it
                "crs": a.crs,
                "pixel_size_m": a.pixel_size_m,
                "model_pixel_size_m": a.model_pixel_size_m,
                "resampled": a.resampled,
                "valid_ha": round(a.valid_ha, 4),
                "forest_ha": round(a.forest_ha, 4),
                "forest_share": None if a.forest_share is None else round(a.forest_share, 6),
                "area_bias_pct": area_error,
                "mask": os.path.abspath(a.mask),
                "model_sha256": predictor.sha256,
            }
        )
        write()
        share = (
            "no valid pixels" if a.forest_share is None else f"{a.forest_share:.1%} of {a.valid_ha:.2f} ha with data"
        )
        own = "the reprojected" if a.reprojected else "the input's"  # a reprojected raster has a new grid
        grid = (
            f"predicted at {a.model_pixel_size_m:g} m, mask on {own} {a.pixel_size_m:g} m grid"
            if a.resampled
            else f"predicted at {own} {a.pixel_size_m:g} m"
        )
        print(
            f"{raster.path.name}: forest {a.forest_ha:.2f} ha ({share}; {a.crs}, {grid}) -> {a.mask}"
            + (f"; {a.polygons} forest polygon(s)" if a.polygons is not None else "")
        )
    older = kept()
    print(
        f"predict: mapped {len(rows)} GeoTIFF(s); areas in {csv_path}"
        + (f" (area bias from --area-error: {area_error:+.1f}%)" if area_error is not None else "")
        + (f", with {plural(len(older), 'row')} of earlier runs whose masks are still there" if older else "")
    )
    others = [r["file"] for r in older if r["model_sha256"] != predictor.sha256]
    if others:
        print(
            f"note: {csv_path}: {plural(len(others), 'row')} of earlier runs mapped by another model file (or by "
            f"a forestseg that did not record it), so its total mixes models: {', '.join(others[:3])}"
            f"{' ...' if len(others) > 3 else ''}; map them again with this model, or map into a new folder"
        )


def _resolved(path: str | Path) -> str:
    return str(Path(path).resolve())  # for comparing: a row of an older version holds the path as typed


def _readable_table(csv_path: Path) -> None:
    """A forest_area.csv that cannot be opened (its permissions) stops the call before anything is written:
    it is no other program's table to replace, and replacing it would drop the rows of masks still there."""
    try:
        if csv_path.is_file():
            open(csv_path, "rb").close()
    except OSError as e:
        raise ForestsegError(
            f"{csv_path}: cannot be read ({e.strerror}); make it readable, or move it away to start a new table"
        ) from None


def _stat_of(path: Path) -> tuple[int, int, int] | None:
    """What tells a file's versions apart (inode, mtime, size: a rewrite renames a new inode in), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@contextlib.contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `folder` itself, so no lock file is left in it; where it
    cannot be opened or its file system refuses one (some network mounts), none."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that may be written, not read (mode 0333): unlocked, as before
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and the lock with it


def _earlier_rows(csv_path: Path, mapped_now: set[str], masks_now: set[str], say: bool) -> list[tuple[str, dict]]:
    """forest_area.csv's rows whose masks are still there, each with its mask's resolved path: one call
    per file in a shell loop sums to the folder's whole area, each mask counted once. A row's mask is
    the file of its name in the CSV's folder, however its path was written (relative to where an older
    version ran). Rows of masks gone are dropped, and said (`say`) where this run maps neither their
    input (`mapped_now`, resolved paths) nor their mask (`masks_now`)."""
    if not csv_path.is_file():
        return []
    try:
        try:
            columns = read_columns(csv_path, *AREA_COLUMNS)
        except ForestsegError:  # a table of a forestseg before model_sha256, if not another program's
            columns = read_columns(csv_path, *AREA_COLUMNS[:-1])
            columns["model_sha256"] = [""] * len(columns["file"])
    except ForestsegError as e:  # another program's file, or an older layout: replaced, and said
        if say:
            print(f"note: {e}; it is replaced by this run's rows", file=sys.stderr)
        return []
    rows = [dict(zip(AREA_COLUMNS, values)) for values in zip(*(columns[c] for c in AREA_COLUMNS))]
    by_mask = {_resolved(csv_path.parent / Path(r["mask"]).name): r for r in rows}  # one row per mask: the last
    there = [(m, r) for m, r in by_mask.items() if Path(m).is_file()]
    gone = [
        r["file"]
        for m, r in by_mask.items()
        if not Path(m).is_file() and _resolved(r["file"]) not in mapped_now and m not in masks_now
    ]
    if gone and say:
        print(
            f"note: {csv_path}: {plural(len(gone), 'row')} dropped, their masks no longer there: "
            f"{', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''}",
            file=sys.stderr,
        )
    return there


def evaluate(args: argparse.Namespace) -> int:
    from .dataset import DataError  # with pandas (~0.5 s): evaluate's alone, not predict's
    from .evaluate import evaluate as score

    predictor = _predictor(args)
    opts = _map_options(args, predictor)
    forest = _forest(args.forest)
    try:
        DataConfig(masks=args.masks, forest=forest)
    except ConfigError as e:  # the params.yaml checks, named by the flags here
        raise ForestsegError(_as_flags(str(e))) from None
    need_folder(args.data, "give the data folder (images/, masks/ and meta_data.csv, or of GeoTIFFs)")
    if args.subset is not None and args.split is None:
        raise ForestsegError(f"--subset {args.subset}: picks rows of a --split file; give one (e.g. data/split.csv)")
    if args.split is not None and not args.split.is_file():  # before the index, which may take minutes
        raise ForestsegError(f"--split {args.split}: no such file; give a split.csv (e.g. data/split.csv)")
    if args.output is not None:  # checked before the scoring, which may take long, not after
        _check_output_file(args.output, inputs=[args.checkpoint, args.data, *([args.split] if args.split else [])])
        if args.output.parent.is_dir():
            clear_stale_temps(args.output.parent)
    _pixel_note(args.checkpoint, predictor)
    try:
        result = score(
            predictor,
            args.data,
            opts,
            masks=args.masks,
            forest=forest,
            split=args.split,
            subset=args.subset or "test",
            allow_no_forest=args.allow_no_forest,
            check_inverted=not args.forest_brighter,
            log=lambda line: print(_as_flags(line)),  # its notes on skipped pairs quote the index's reasons
        )
    except DataError as e:  # the index's advice names params.yaml's keys; here they are flags
        raise ForestsegError(_as_flags(str(e))) from None
    result = {
        "checkpoint": str(args.checkpoint),
        "model_sha256": predictor.sha256,  # predict --area-error takes only this model's bias
        "model_train_scenes": len(predictor.train_scenes),  # 0: the model file does not list them
        **_reading(predictor, opts),
        **result,
    }
    unsaved = None
    if args.output:  # before the summary: a reader that stops early (`| head`) still gets the file
        made = _missing_folders(args.output)
        try:
            write_json(args.output, result)
        except ForestsegError as e:  # a disk that filled while scoring: the scores still shown, then the reason
            unsaved = e
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
    kind = "scene" if "scenes" in result else "raster"
    if kind == "scene":  # their hectares are counted at the model's pixel size
        _pictures_note(result["tiles"], "tiles", predictor.pixel_size_m)
    what = (
        f"{result['tiles']} tiles of {result['scenes']} scenes" if kind == "scene" else f"{result['rasters']} rasters"
    )
    print(
        f"evaluate: {what} ({result['subset'] if kind == 'scene' else 'all'}) of {args.data}"
        + (" with test-time augmentation (mean of 8 flips/rotations)" if args.tta else "")
    )
    print("  " + "  ".join(f"{metric.label} {result[name]:.4f}" for name, metric in METRICS.items()))
    bias = result["area_bias_pct"]
    # tiles carry no pixel size: their hectares are the model's pixels counted (a ratio like the bias is not)
    assumed = "" if predictor.pixel_size_recorded else "assumed "  # a model file older than that record
    at = f" at the model's {assumed}{result['pixel_size_m']:g} m pixels" if kind == "scene" else ""
    print(
        f"  forest area{at}: predicted {result['predicted_forest_ha']:.2f} ha, true {result['true_forest_ha']:.2f} ha, "
        + (f"area bias {bias:+.2f}%" if bias is not None else "no true forest: area bias undefined")
    )
    share = result[f"{kind}_share_error_pp"]
    print(
        f"  per {kind}: forest share off by {share['mean_abs']:.2f} percentage points on average "
        f"(at most {share['max_abs']:.2f})"
    )
    if unsaved is not None:
        raise ForestsegError(f"{unsaved} (the scores above were not saved)")
    if args.output:
        print(f"evaluate: wrote {args.output} (pass it to `forestseg predict --area-error`)")
    return 0


def _as_flags(text: str) -> str:
    """A message of the params checks or the index, naming evaluate's DATA, --masks and --forest instead of
    params.yaml's data.source, data.masks and data.forest, without the index's advice on getting a data set."""
    from .dataset import GET_DATA

    text = text.replace(f" {GET_DATA}", "").replace("data.source", "DATA")
    text = text.replace("set data.check_inverted: false", "pass --forest-brighter")
    for key, flag in (("data.masks", "--masks"), ("data.forest", "--forest")):
        # "set data.masks: '0/1'" (a params.yaml line) becomes "pass --masks '0/1'" (a command line), and
        # "read with data.masks: classes" "read with --masks classes"
        text = re.sub(rf"\bset {re.escape(key)}: ", f"pass {flag} ", text)
        text = text.replace(f"params.yaml: {key}", flag)
        text = text.replace(f"{key}: ", f"{flag} ").replace(key, flag)
    return text


def tile(args: argparse.Namespace) -> int:
    from .dataset import set_source
    from .tiles import TileOptions, find_pairs, tile_pairs

    opts = TileOptions(
        size=args.size,
        pixel_size_m=args.pixel_size,
        bands=_bands(args.bands),
        reproject=args.reproject,
        first_scene=args.first_scene,
    )
    _no_dangling_link(args.out, "remove the link, or give another -o (tile makes a new folder)")
    _utf8_out(args.out, "params.yaml needs for data.source (and GDAL for GeoTIFFs)")
    if args.out.parent.is_dir():  # a killed run's temp folder, whether or not this run gets further
        clear_stale_temps(args.out.parent)
    kind, pairs = find_pairs(args.data)
    done = tile_pairs(kind, pairs, args.out, opts)
    ids = [r["scene"] for r in done["scenes"]]
    px = {round(r["pixel_size_m"], 4) for r in done["scenes"] if r["tiles"] and r["pixel_size_m"] is not None}
    if kind == "raster":
        then = f" -S data.pixel_size_m={next(iter(px)):g}" if len(px) == 1 else ""
        masks = "masks 0/255: data.masks' default"
    elif not (args.data / "images").is_dir() and all(r["colour_mask"] for r in done["scenes"] if r["tiles"]):
        # DeepGlobe's flat layout with its masks in colour: its land-cover colours (grey ones are no guess)
        then = " -S data.masks=colors -S 'data.forest=[[0, 255, 0]]'"
        masks = "masks kept as they are, read as DeepGlobe's colours with forest (0, 255, 0): README: Masks"
    else:
        then = ""
        masks = "masks kept as they are: add -S data.masks=<their convention> unless 0/255; README: Masks"
    here = Path.cwd().resolve()
    # the project to train in: the one run from, else (run from outside any) the one the tiles went into
    root = _project_of(here) or _project_of(args.out.resolve().parent)
    inside = root is not None and args.out.resolve().is_relative_to(root)
    # data.source is read from the project root, where DVC runs the stages: named from there inside it;
    # outside it by a full path, as config refuses a relative one (a queued experiment's copy resolves it in itself)
    if inside:
        out = args.out.resolve().relative_to(root)
    else:
        out = args.out if args.out.is_absolute() else args.out.resolve()
    go = ""
    if root is not None and root != here:  # the shell's cd goes up from the path typed: absolute under a symlink
        typed = os.environ.get("PWD", "")
        logical = typed and Path(typed).resolve() == here and Path(typed) != here
        go = f"cd {shlex.quote(str(root) if logical else os.path.relpath(root, here))} && "
    add = f"dvc add {shlex.quote(str(out))} && " if inside else ""
    source = set_source(out)  # quoted for the shell and for DVC's -S grammar
    print(
        f"wrote {plural(done['tiles'], 'tile')} of {plural(len(pairs), 'scene')} to {args.out} (scene ids {ids[0]}"
        f"{'' if len(ids) == 1 else f'-{ids[-1]}' if ids == list(range(ids[0], ids[-1] + 1)) else f' ... {ids[-1]}'}; "
        f"{masks}{'' if inside else '; outside the DVC project: used in place, on machines that have it there'})"
    )
    if len(px) > 1:
        print("note: the rasters' pixel sizes differ; pass --pixel-size to cut them all at the model's")
    if done["tiles"] < 2:  # no split of any kind: one tile cannot be both trained on and tested
        print("note: one tile: a split needs 2 at least; cut more (a smaller --size, or more scenes)")
    elif sum(1 for r in done["scenes"] if r["tiles"]) == 1:  # the default split.by: scene stops at the split stage
        then += " -S split.by=tile"
        print(
            "note: one scene: a split by scene (the default) needs 2, so the command splits its tiles (their test "
            "tiles lie beside training tiles of the same scene, so the scores flatter); cut more scenes to test on unseen ones"
        )
    print(f"train on them: {go}{add}dvc exp run {source}{then}")
    return 0


def _project_of(folder: Path) -> Path | None:
    """The DVC project folder holds, if any: the nearest folder up from it with a .dvc folder."""
    return next((d for d in (folder, *folder.parents) if (d / ".dvc").is_dir()), None)


def _in_the_way(out: Path) -> str | None:
    """What stops a folder being made at `out` (or a file in it): a link to nothing or a file at it or
    above it (mkdir says only "File exists" or "Not a directory")."""
    for p in (out, *out.parents):
        if p.is_symlink() and not p.exists():
            return f"{p} is a link to {os.readlink(p)}, which does not exist"
        if p.exists():
            return None if p.is_dir() else f"{p} is a file, where a folder goes"
    return None


def _utf8_out(out: Path, needs: str) -> None:
    """-o whose name holds bytes that are no UTF-8 (a Latin-1 é), refused before any work: GDAL named an
    internal temp file of it after the work, and a tile folder's path cannot go into params.yaml."""
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        raise ForestsegError(
            f"-o {str(out)!r}: its name is not UTF-8 text, which {needs}; choose another folder"
        ) from None


def _no_dangling_link(out: Path, fix: str) -> None:
    """-o a symbolic link to nothing: said as that, with `fix`, before any work (mkdir read it as "File
    exists", and tile's rename as "a file is where a folder goes", after the cutting)."""
    if out.is_symlink() and not out.exists():
        raise ForestsegError(f"-o {out}: is a link to {os.readlink(out)}, which does not exist; {fix}")


def _missing_folders(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first (the order to remove them in)."""
    return [p for p in (path.parent, *path.parent.parents) if not p.exists()]


def _check_output_file(path: Path, inputs: list[Path] = ()) -> None:
    """-o must be a file path that can be written: not a folder, no file where a folder should be, and
    none of the `inputs` (files, or folders it would land in)."""
    for given in inputs:
        if path.resolve() == given.resolve() or (given.is_dir() and path.resolve().is_relative_to(given.resolve())):
            raise ForestsegError(f"-o {path}: would overwrite an input ({given}); choose another path")
    if path.is_dir():
        raise ForestsegError(f"-o {path}: is a folder; give a file name, e.g. {path / 'eval.json'}")
    blocking = _in_the_way(path.parent)
    if blocking is not None:
        raise ForestsegError(f"-o {path}: {blocking}; choose another path")
    # a file written there now, not after minutes of scoring: its folders made, a temp file, both removed
    made: list[Path] = []
    try:
        for folder in reversed(_missing_folders(path)):
            folder.mkdir()
            made.append(folder)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix("forestseg-probe"))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise write_error(path, e, name=f"-o {path}", temp=path.parent / temp_prefix("forestseg-probe")) from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _forest(text: str | None) -> tuple:
    """--forest as params.yaml's data.forest: class ids [2, 3] or colours [[0, 255, 0]]."""
    if text is None:
        return ()
    try:
        return forest_values(json.loads(text))  # read as params.yaml's value is
    except (ValueError, ConfigError):  # not JSON, or not a list of ids or colours
        raise ForestsegError(
            f"--forest {text}: give a JSON list of class ids, e.g. [2], or of colours, e.g. [[0,255,0]]"
        ) from None


def _model_flags(p: argparse.ArgumentParser) -> None:
    """How the model runs, the same for predict and evaluate (evaluate scores what predict makes)."""
    p.add_argument("--overlap", type=int, default=None, help="pixels shared by neighbouring windows (default tile/4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<index>")
    p.add_argument(
        "--threads",
        type=int,
        help="torch's CPU threads (default: torch's, one per core); beside a training or another predict on "
        "the same cores, so few that all torch threads together fit the cores (sharing cores slows each several-fold)",
    )
    p.add_argument(
        "--precision",
        choices=(*PRECISIONS, "trained"),
        default="auto",
        help="auto: bf16 where the device multiplies it faster than fp32, as training picks it (CUDA from "
        "Ampere, CPUs with AMX or AMD's AVX512-BF16); fp32 for outputs that do not depend on the CPU; "
        "trained: the precision the run scored its test tiles in (its model file's), to reproduce its scores",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average each window's outputs over its 8 flips/rotations "
        "(costs 8x the compute; off by default)",
    )
    p.add_argument(
        "--adapt-bn",
        type=float,
        default=None,
        metavar="MIX",
        help="move the model's batch-norm statistics this far (0-1) towards those of the imagery: of all "
        "JPEG/PNG inputs together, of each GeoTIFF, of each scene of evaluated tiles (0.25 measured best; "
        "0: off; default: the model file's, train.adapt_bn)",
    )


def _reading_flags(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How a raster's pixels are read: predict's and evaluate's GeoTIFFs, and tile's."""
    g.add_argument(
        "--bands", default="1,2,3", help="band numbers read as red,green,blue (default 1,2,3; 3,2,1 for BGR)"
    )
    g.add_argument(
        "--reproject", metavar="EPSG:CODE", help="warp to this projected CRS first (needed for geographic rasters)"
    )


def _raster_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GeoTIFF inputs")
    _reading_flags(g)
    g.add_argument(
        "--no-resample",
        action="store_true",
        help="predict at the raster's own pixel size instead of the model's (the checkpoint's pixel_size_m)",
    )
    g.add_argument(
        "--block",
        type=int,
        default=BLOCK,
        help=f"width in pixels of the panels read at a time (default {BLOCK}); memory grows with it",
    )


def _bundled_proj_data() -> None:
    """Name rasterio's bundled PROJ data in PROJ_DATA before rasterio loads: rasterio points GDAL at
    it, but not the PROJ context that looks up a CRS's unit, which printed 'internal_proj_uom_get_info_
    from_database: Cannot find proj.db' on stderr for a CRS in kilometres (the area was right)."""
    if "rasterio" in sys.modules or "PROJ_DATA" in os.environ or "PROJ_LIB" in os.environ:
        return
    spec = importlib.util.find_spec("rasterio")
    folder = Path(spec.origin).parent / "proj_data" if spec and spec.origin else None
    if folder and (folder / "proj.db").is_file():
        os.environ["PROJ_DATA"] = str(folder)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="forestseg")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="segment images with a trained checkpoint")
    p.add_argument("checkpoint", type=Path, help="e.g. models/bce-adam-0/model.pt")
    p.add_argument("inputs", type=Path, nargs="+", help="image files or folders of images")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for <name>_mask.png (0/255)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    _model_flags(p)
    _raster_flags(p)
    g = p.add_argument_group("GeoTIFF outputs")
    g.add_argument(
        "--probability",
        nargs="?",
        const="uint8",
        choices=["uint8", "float32"],
        help="also write <name>_probability.tif: uint8 0-255 (default) or float32 0-1",
    )
    g.add_argument("--polygons", action="store_true", help="also write forest polygons as <name>_forest.geojson")
    g.add_argument("--min-area-m2", type=float, default=0.0, help="drop forest polygons smaller than this (m2)")
    g.add_argument(
        "--area-error",
        metavar="PCT|JSON",
        help="the model's area bias in %%, or the JSON of `forestseg evaluate -o`; goes into forest_area.csv",
    )

    e = sub.add_parser(
        "evaluate", help="score a checkpoint on labelled tiles or rasters: IoU, precision, recall, area bias"
    )
    e.add_argument("checkpoint", type=Path)
    e.add_argument(
        "data",
        type=Path,
        metavar="DATA",  # the index's messages name it (_as_flags)
        help="a Kaggle-layout folder (meta_data.csv, images/, masks/) or a folder "
        "with images/<name>.tif and masks/<name>.tif",
    )
    e.add_argument(
        "--split",
        type=Path,
        help="a split.csv (image, subset columns, e.g. data/split.csv): score only its --subset rows",
    )
    e.add_argument("--subset", help="rows of --split to score (default test)")
    e.add_argument(
        "--masks", default=DataConfig.masks, help="mask convention of the tiles, as params.yaml's data.masks"
    )
    e.add_argument("--forest", help="forest class ids or colours, as params.yaml's data.forest (JSON)")
    e.add_argument("-o", "--output", type=Path, help="write the scores as JSON here")
    e.add_argument(
        "--allow-no-forest",
        action="store_true",
        help="score truths that hold no forest at all: tiles whose masks are all background, or truth rasters "
        "though a nodata value covers some of their pixels (stopped by default: masks of another convention, "
        "inverted ones, or 0/255 masks tagged nodata 255, read so)",
    )
    e.add_argument(
        "--forest-brighter",
        action="store_true",
        help="tiles whose forest is brighter than the rest (near-infrared false colour): do not stop them "
        "as inverted masks, as params.yaml's data.check_inverted: false",
    )
    _model_flags(e)
    _raster_flags(e)

    t = sub.add_parser(
        "tile", help="cut large labelled scenes (GeoTIFFs or pictures) into a Kaggle-layout training folder"
    )
    t.add_argument(
        "data",
        type=Path,
        help="a folder with images/<name>.tif and masks/<name>.tif (0 = not forest, one other value forest), "
        "with images/<name>.<jpg|png> and masks/<name>.<...> (any mask convention), or with DeepGlobe's "
        "<id>_sat.jpg and <id>_mask.png",
    )
    t.add_argument(
        "-o", "--out", type=Path, required=True, help="the new training folder (images/, masks/, meta_data.csv)"
    )
    t.add_argument("--size", type=int, default=256, help="tile side in pixels (default 256, the Kaggle set's)")
    t.add_argument(
        "--pixel-size",
        type=float,
        metavar="METRES",
        help="resample to this pixel size: a model's data.pixel_size_m, to fine-tune it (default: the rasters' own)",
    )
    t.add_argument(
        "--first-scene",
        type=int,
        help="scene id of the first scene, one id per scene (default: each image's own number where all are "
        "named by one, as DeepGlobe's, else 1, 2, ...)",
    )
    _reading_flags(t)
    args = ap.parse_args(argv)
    args.started = cpu_clock()  # before torch loads: the seconds that measure what else keeps the cores busy
    _bundled_proj_data()
    # the command's libraries, seconds on a slow CPU (torch), while console.py's start-up handler
    # answers Ctrl-C; from here on the command handles it
    importlib.import_module(".tiles" if args.command == "tile" else ".predict", __package__)
    from .console import while_starting

    if signal.getsignal(signal.SIGINT) is while_starting:  # not put back: a Ctrl-C at exit is not "while starting"
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # a timeout, `kill`, Slurm or docker stop (SIGTERM) unwinds as Ctrl-C does, so the temp folder
    # of the raster being mapped goes with it
    before = signal.signal(signal.SIGTERM, terminate)
    try:
        command = {"predict": predict, "evaluate": evaluate, "tile": tile}[args.command]
        with contextlib.nullcontext() if args.command == "tile" else _on_threads(args.threads):
            sys.exit(command(args))
    except ForestsegError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Terminated) as e:  # outputs are written atomically: the finished ones stand
        how, code = stopped(e)
        stand = "outputs written before it stand"
        if args.command == "tile":  # its folder appears whole, at once, or not at all
            stand = f"{args.out} was written whole" if args.out.exists() else "nothing was written"
        print(f"forestseg {args.command}: {how}; {stand}", file=sys.stderr)
        sys.exit(code)
    except BrokenPipeError:  # its output piped into a reader that stopped (`| head`): nothing to say
        quiet_stdout()
        sys.exit(BROKEN_PIPE)
    except UnicodeEncodeError as e:  # a path of bytes that are no UTF-8 (surrogates), given to GDAL (an -o folder)
        if not (e.encoding == "utf-8" and re.search("[\udc80-\udcff]", str(e.object))):
            raise  # another encoding error (a print to an ASCII console, a bug): its traceback says where
        print(
            f"error: forestseg {args.command}: {e.object!r} is not UTF-8 text, which GDAL needs; rename it",
            file=sys.stderr,
        )
        sys.exit(2)
    except OSError as e:  # what the file system refused that no check foresaw (a name too long, a full disk)
        if not (e.filename and (e.errno == errno.ENAMETOOLONG or e.errno in WRITE_ERRNOS)):
            raise  # not the user's to fix: its traceback says where it came from
        print(f"error: forestseg {args.command}: {one_line(f'{e.filename}: {e.strerror or e}')}", file=sys.stderr)
        sys.exit(2)
    except (MemoryError, RuntimeError) as e:  # CUDA's out of memory is a RuntimeError: torch.OutOfMemoryError
        where = out_of_memory(e)
        if where is None:
            raise
        from .windows import TILE_BATCH

        if args.command == "tile":
            fix = "it holds one scene at a time; free memory, or cut the largest scene into parts first"
        elif where == "on the GPU":
            fix = f"the model runs {TILE_BATCH} windows at a time; free the device, or run on another with --device (e.g. --device cpu)"
        else:  # on the CPU already: another device is no advice
            fix = (
                f"the model runs {TILE_BATCH} windows at a time; free memory, or give a large GeoTIFF a smaller --block"
            )
        print(f"error: forestseg {args.command}: out of memory {where} ({fix})", file=sys.stderr)
        sys.exit(2)
    finally:
        signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    main()
