"""Cut large labelled scenes into a Kaggle-layout training folder (`forestseg tile`).

A user's own region comes as large scenes, not 256-px tiles, in one of two forms:
- GeoTIFFs (images/<name>.tif with masks/<name>.tif): each image is read as `forestseg predict`
  reads it (bands, reprojection, resampling to a pixel size) and its truth on the same grid
  (nearest neighbour; 0 = not forest, one other value forest, as `forestseg evaluate` reads it);
  masks are written 0/255.
- pictures (images/<name>.<jpg|png> with masks/<name>.<any picture suffix>, or DeepGlobe's flat
  <id>_sat.jpg with <id>_mask.png): image and mask are cut alike and the mask's values kept as
  they are (a JPEG mask's tiles as JPEGs of the highest quality), so `index` reads them in the
  convention data.masks names, with all its checks.
Tiles are images/<scene>_sat_<k>.png and masks/<scene>_mask_<k>.<png|jpg>, k counting row by row,
listed in meta_data.csv. Each scene is one scene id (its own, where every name is a number), so a
split by scene never puts tiles of one scene on both sides. Tiles with any pixel without data
(nodata, transparent) are skipped and counted, as are the strips at the right and bottom edge that
hold no whole tile. The folder is written whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from PIL import Image

from .config import PLAUSIBLE_PIXEL_M, SAME_PIXEL_SIZE
from .errors import ForestsegError
from .images import (
    MAP_SUFFIXES,
    PICTURE_SUFFIXES,
    RASTER_SUFFIXES,
    SIDECAR_SUFFIXES,
    ImageError,
    Picture,
    decode,
    drawn_as_shown,
    visible_files,
)
from .io import fsync_dir, fsync_tree, need_folder, plural, temp_prefix, write_error

if TYPE_CHECKING:  # geo imports rasterio, which picture tiles do not need
    from .geo import Raster

TILE = 256  # the Kaggle set's tiles
CHUNK = 16  # tiles read at once along a row: 4096 px of 256-px tiles, a few MB (--size 2048: ~200 MB)


_PIXEL_LIMIT = threading.Lock()
CUT_SUFFIXES = RASTER_SUFFIXES | PICTURE_SUFFIXES  # images and masks tile reads: GeoTIFFs and pictures
DEEPGLOBE = re.compile(r"^(?P<id>\d+)_(?P<part>sat|mask)$", re.ASCII)  # <id>_sat.jpg, <id>_mask.png


@dataclass(frozen=True)
class TileOptions:
    """How scenes are cut; the CLI's flags."""

    size: int = TILE  # tile side in pixels
    pixel_size_m: float | None = None  # GeoTIFFs: resample to this ground size (None: the raster's own pixels)
    bands: tuple[int, ...] = (1, 2, 3)  # GeoTIFFs: 1-based band numbers read as red, green, blue
    reproject: str | None = None  # GeoTIFFs: a projected CRS to warp to (needed for geographic rasters)
    first_scene: int | None = None  # scene id of the first scene, the next ones counting up (None: see scene_ids)

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ForestsegError(f"--size {self.size}: a tile needs at least 16 pixels a side")
        low, high = PLAUSIBLE_PIXEL_M
        if self.pixel_size_m is not None and not low <= self.pixel_size_m <= high:  # 1e-9 m: a gigapixel warp
            raise ForestsegError(f"--pixel-size {self.pixel_size_m:g}: must be a number of metres in {low:g}..{high:g}")
        if self.first_scene is not None and self.first_scene < 0:
            raise ForestsegError(f"--first-scene {self.first_scene}: scene ids are numbers >= 0")


def _one_each(found: dict[str, list[Path]], where: str, what: str) -> dict[str, Path]:
    """`found` (files by key) with one file per key; two of one key stop: which one is meant is unknown
    (two images of one photo would become two scenes, which the split can put on both sides)."""
    two = next((files for files in found.values() if len(files) > 1), None)
    if two:
        raise ForestsegError(f"{where}: {' and '.join(f.name for f in two)} are each {what}; keep one of them")
    return {key: files[0] for key, files in found.items()}


def stem_pairs(data: Path, images: set[str]) -> list[tuple[Path, Path]]:
    """(images/<stem>.<one of `images`>, masks/<stem>.<raster or picture>) pairs in name order; files of
    other suffixes (a.tfw, a.qml or a.aux beside a.tif) are neither. Shared with `forestseg evaluate`."""
    listed: dict[str, dict[str, list[Path]]] = {"images": {}, "masks": {}}
    for folder, suffixes in (("images", images), ("masks", CUT_SUFFIXES)):
        for path in visible_files(data / folder):
            if path.suffix.lower() in suffixes:
                listed[folder].setdefault(path.stem, []).append(path)
    found = _one_each(listed["images"], f"{data}/images", "an image of that name")
    masks = _one_each(listed["masks"], f"{data}/masks", "a mask of that name")
    return _paired([(image, masks.get(stem)) for stem, image in sorted(found.items())], f"{data}/masks")


def masks_alone(data: Path, pairs: list[tuple[Path, Path]]) -> list[Path]:
    """The masks/ files of a mask's suffix that no pair of stem_pairs took: masks without an image."""
    used = {mask for _, mask in pairs}
    return [m for m in visible_files(data / "masks") if m.suffix.lower() in CUT_SUFFIXES and m not in used]


UNREAD = "`forestseg tile` cuts GeoTIFFs (.tif) and pictures (.jpg, .png, .bmp); convert it (gdal_translate -of GTiff)"


def _left_out(images: list[Path], alone: list[Path]) -> None:
    """Stop where a scene would be left out without a word: among the files where images lie, one of a
    format `tile` does not read (GDAL's .jp2 or .vrt, which predict maps), or a mask (`alone`) without
    an image that tile reads, named with the file of its name that tile cannot read, if any."""
    unread = [f for f in images if f.suffix.lower() in MAP_SUFFIXES - RASTER_SUFFIXES]
    if unread:
        more = f" and {len(unread) - 1} more" if len(unread) > 1 else ""
        raise ForestsegError(f"{unread[0]}{more}: {UNREAD}")
    readable = CUT_SUFFIXES | SIDECAR_SUFFIXES  # read, or not images at all
    for mask in alone:
        stem = DEEPGLOBE.sub(r"\g<id>_sat", mask.stem)  # DeepGlobe's <id>_mask: its photo is <id>_sat
        theirs = [f for f in images if f.stem == stem and f.suffix.lower() not in readable]
        if theirs:
            raise ForestsegError(
                f"{theirs[0]}: the image of {mask.name}: {UNREAD.replace('it (', 'it, as .tif or .png (')}"
            )
    if alone:
        more = f" and {len(alone) - 1} more mask(s)" if len(alone) > 1 else ""
        raise ForestsegError(f"{alone[0]}{more}: no image of its name; give each mask its image (or move the mask out)")


def _paired(pairs: list, where: str) -> list[tuple[Path, Path]]:
    alone = [image.name for image, mask in pairs if mask is None]
    if alone:
        raise ForestsegError(
            f"{where}: no mask for {', '.join(alone[:3])}" + (f" and {len(alone) - 3} more" if len(alone) > 3 else "")
        )
    return pairs


def find_pairs(data: Path) -> tuple[str, list[tuple[Path, Path]]]:
    """("raster" or "picture", (image, mask) pairs in name order) of a folder: images/ and masks/
    holding files of the same stem (stem_pairs), or DeepGlobe's flat <id>_sat.* and <id>_mask.*."""
    need_folder(data, "give a folder with images/ and masks/ (README: Real data)")
    if (data / "images").is_dir():
        try:
            pairs = stem_pairs(data, CUT_SUFFIXES)
        except ForestsegError:
            if (data / "meta_data.csv").is_file():  # Kaggle's <scene>_sat_<n>.jpg beside <scene>_mask_<n>.jpg
                raise ForestsegError(
                    f"{data}: already tiles in the Kaggle layout (meta_data.csv, images/, masks/): set data.source "
                    "to this folder, no cutting needed (`forestseg tile` cuts large scenes into such a folder)"
                ) from None
            raise
        _left_out(visible_files(data / "images"), masks_alone(data, pairs))
    else:  # DeepGlobe's layout
        parts: dict[str, dict[str, list[Path]]] = {"sat": {}, "mask": {}}
        photos = []  # every <id>_sat file, of any suffix
        for path in visible_files(data):
            m = DEEPGLOBE.match(path.stem)
            photos += [path] if m and m["part"] == "sat" else []
            if m and path.suffix.lower() in CUT_SUFFIXES:
                parts[m["part"]].setdefault(m["id"], []).append(path)
        sats = _one_each(parts["sat"], str(data), "the photo of that id")
        masks = _one_each(parts["mask"], str(data), "the mask of that id")
        pairs = _paired([(sats[i], masks.get(i)) for i in sorted(sats, key=int)], str(data))
        _left_out(photos, [masks[i] for i in sorted(masks, key=int) if i not in sats])
    if not pairs:
        # an unzipped download's top folder (DeepGlobe's train/, valid/, test/): the folders below that hold scenes
        below = sorted(
            f"{sub.name}/"
            for sub in data.iterdir()
            if sub.is_dir()
            and ((sub / "images").is_dir() or any(DEEPGLOBE.match(f.stem) for f in sub.glob("*_mask.*")))
        )
        raise ForestsegError(
            f"{data}: no scene to cut; give a folder with images/<name>.<tif|jpg|png> and masks/<name>.<...>, "
            "or DeepGlobe's <id>_sat.jpg and <id>_mask.png"
            + (
                f" ({', '.join(below)} below it {'holds' if len(below) == 1 else 'hold'} scenes: give that folder)"
                if below
                else ""
            )
        )
    kinds = {"raster" if image.suffix.lower() in RASTER_SUFFIXES else "picture" for image, _ in pairs}
    if len(kinds) > 1:
        raise ForestsegError(
            f"{data}: holds both GeoTIFFs and pictures; cut each kind from a folder of its own, into one output "
            "each (--first-scene keeps their scene ids apart)"
        )
    return kinds.pop(), pairs


def scene_ids(pairs: list[tuple[Path, Path]], first: int | None) -> list[int]:
    """A scene id per pair: `first`, `first` + 1, ... if given; else each image's own number where
    every image is named by one (a DeepGlobe id, `10452.tif`), else 1, 2, ..."""
    if first is not None:
        return [first + i for i in range(len(pairs))]
    own = [DEEPGLOBE.match(image.stem)["id"] if DEEPGLOBE.match(image.stem) else image.stem for image, _ in pairs]
    if all(o.isascii() and o.isdigit() for o in own) and len({int(o) for o in own}) == len(own):
        return [int(o) for o in own]
    return list(range(1, len(pairs) + 1))


def tile_pairs(
    kind: str, pairs: list[tuple[Path, Path]], out: Path, opts: TileOptions, log: Callable[[str], None] = print
) -> dict:
    """Cut each (image, mask) pair of `kind` (find_pairs) into tiles under `out`, a new folder written
    whole or not at all; returns per-scene counts. Every GeoTIFF pair is checked from its headers
    before the first is cut."""
    if out.exists():
        raise ForestsegError(f"-o {out}: already exists; give a new folder (tiles are never mixed into another set)")
    if kind == "picture":
        given = [f for f, v in (("--pixel-size", opts.pixel_size_m), ("--reproject", opts.reproject)) if v]
        given += ["--bands"] if opts.bands != (1, 2, 3) else []
        if given:
            raise ForestsegError(f"{' and '.join(given)}: for GeoTIFFs; pictures are cut as they are")
        cut = _cut_picture
    else:
        from .evaluate import check_truth
        from .geo import MapOptions, check_raster

        map_opts = MapOptions(bands=opts.bands, resample=opts.pixel_size_m is not None, reproject=opts.reproject)
        rasters = {}
        for image, truth in pairs:
            raster = check_raster(image, map_opts, opts.pixel_size_m or 1.0, pictures=False)
            if raster is None:
                raise ForestsegError(
                    f"{image}: has no georeference; give it its CRS and grid, or save it as a .png to cut it as a picture"
                )
            check_truth(truth)
            _check_square(raster, opts)
            rasters[image] = raster
        for note in (n for r in rasters.values() for n in r.notes):  # as predict says them: BGR tags, an alpha NIR
            log(f"note: {note}")

        def cut(image: Path, mask: Path, scene: int, dest: Path, opts: TileOptions) -> dict:
            return _cut_raster(rasters[image], mask, scene, dest, opts)

    tmp = out.parent / f"{temp_prefix(out.name)}tmp"
    made = [p for p in out.parents if not p.exists()]  # folders above -o this run creates: gone again if it fails
    try:
        with _writing(out, tmp):
            out.parent.mkdir(parents=True, exist_ok=True)
            for folder in ("images", "masks"):
                (tmp / folder).mkdir(parents=True)
        rows, per_scene, notes = [], [], []
        for scene, (image, mask) in zip(scene_ids(pairs, opts.first_scene), pairs):
            with _writing(out, tmp):  # reading errors are ForestsegErrors by now: an OSError is the output's
                done = cut(image, mask, scene, tmp, opts)
            rows += done.pop("rows")
            note = done.pop("note", None)
            notes += [note] if note else []
            per_scene.append({"image": str(image), "mask": str(mask), "scene": scene, **done})
            share = f" ({done['forest_share']:.1%} forest)" if done["tiles"] and kind == "raster" else ""
            where = f" at {done['pixel_size_m']:.4g} m{share}" if kind == "raster" else ""
            log(
                f"{image.name}: scene {scene}, {plural(done['tiles'], 'tile')} of {opts.size} px{where}; skipped "
                f"{done['skipped_nodata']} with pixels without data; {done['edge_share']:.1%} of the scene "
                "in edge strips narrower than a tile"
            )
        if not rows:  # a truth's nodata hiding its forest is the likelier cause where one was noted
            raise ForestsegError(
                notes[0] + "; tiles holding such pixels were skipped, so none was written"
                if notes
                else f"no whole {opts.size}-px tile with data in {plural(len(pairs), 'scene')}: the scenes are "
                "smaller than a tile, or their mask and image overlap nowhere with data in both"
            )
        if notes and not any(r["forest_share"] for r in per_scene):
            raise ForestsegError(
                notes[0] + "; tiles holding such pixels were skipped, so none with forest would be written"
            )
        for note in notes:  # one raster of no forest among others with forest can be right (farmland)
            log(f"note: {note}")
        with _writing(out, tmp):
            with open(tmp / "meta_data.csv", "w", encoding="utf-8", newline="\n") as f:
                f.write("image,mask\n" + "".join(f"{a},{b}\n" for a, b in rows))
            fsync_tree(tmp)  # the tiles on disk before the folder gets its name: a power cut leaves no empty tile
            os.replace(tmp, out)
            fsync_dir(out.parent)
    except BaseException:  # Ctrl-C and SIGTERM too
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return {"out": str(out), "kind": kind, "tiles": len(rows), "scenes": per_scene}


@contextlib.contextmanager
def _writing(out: Path, tmp: Path) -> Iterator[None]:
    """OSErrors while writing the output (disk full, no permission, a file where a folder goes) as one
    line naming -o (`io.write_error`)."""
    try:
        yield
    except OSError as e:
        raise write_error(out, e, name=f"-o {out}", temp=tmp) from None


def _names(scene: int, k: int, mask_suffix: str = ".png") -> tuple[str, str]:
    """The k-th tile's image and mask names (k counts row by row), as the index parses them."""
    return f"{scene}_sat_{k:04d}.png", f"{scene}_mask_{k:04d}{mask_suffix}"


def _cut_picture(image: Path, mask: Path, scene: int, dest: Path, opts: TileOptions) -> dict:
    """Tiles of one picture pair into dest/images and dest/masks, the mask's values as they are."""
    img, msk = _decoded(image), _decoded(mask)
    if img.pixels.ndim != 3:
        raise ForestsegError(f"{image}: is a {img.kind}; convert it to RGB")
    if msk.alpha is not None and (msk.alpha < 255).any():
        raise ForestsegError(
            f"{mask}: has transparent pixels ({msk.kind}); forest must be in a mask's values, not its "
            "transparency: flatten it onto the background colour"
        )
    if img.orientation != msk.orientation and not drawn_as_shown(img, msk):  # the index's rule: the shape decides
        raise ForestsegError(
            f"{image} and {mask}: EXIF orientations differ ({img.orientation} and {msk.orientation}), so they may "
            "lie on different pixel grids; turn the tagged file's pixels by its tag (`magick FILE -auto-orient FILE`)"
        )
    (h, w), (mh, mw) = img.pixels.shape[:2], msk.pixels.shape[:2]
    if (h, w) != (mh, mw):
        raise ForestsegError(f"{mask}: is {mw}x{mh} px, its image {image.name} {w}x{h} px; a mask covers its image")
    valid = np.ones((h, w), bool) if img.alpha is None else img.alpha == 255
    # a JPEG mask's tiles stay JPEGs (the index reads their values with JPEG's noise in mind), at the
    # highest quality and without chroma subsampling, so cutting adds as little noise as it can
    jpeg = "JPEG" in msk.kind
    s, rows, skipped = opts.size, [], 0
    across, down = w // s, h // s
    for r in range(down):
        for c in range(across):
            window = (slice(r * s, r * s + s), slice(c * s, c * s + s))
            if not valid[window].all():
                skipped += 1
                continue
            name, mask_name = _names(scene, r * across + c, ".jpg" if jpeg else ".png")
            Image.fromarray(np.ascontiguousarray(img.pixels[window])).save(dest / "images" / name)
            tile = Image.fromarray(np.ascontiguousarray(msk.pixels[window]))
            tile.save(dest / "masks" / mask_name, **({"quality": 100, "subsampling": 0} if jpeg else {}))
            rows.append((name, mask_name))
    return {
        "tiles": len(rows),
        "skipped_nodata": skipped,
        "edge_share": 1 - across * down * s * s / (w * h),
        "pixel_size_m": None,
        "forest_share": None,  # the mask's convention is the index's to read
        "colour_mask": msk.pixels.ndim == 3,  # stored in colour (DeepGlobe's land-cover classes), not grey
        "grid": [h, w],
        "rows": rows,
    }


def _decoded(path: Path) -> Picture:
    """A picture of the user's own scene, read whole to be cut: Pillow's pixel limit (~179 Mpx, a
    13400 px square orthophoto) guards against decompression bombs from elsewhere, and is lifted here."""
    with _PIXEL_LIMIT:  # Pillow's limit is a global: two threads' swaps must not interleave
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return decode(path.read_bytes())
        except OSError as e:
            raise ForestsegError(f"{path}: cannot be read ({e.strerror or e})") from None
        except ImageError as e:
            raise ForestsegError(f"{path}: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _check_square(raster: "Raster", opts: TileOptions) -> None:
    """A raster cut at its own pixels must have square, unsheared ones, as the model's (from its header
    alone, so every pair is checked before the first is cut)."""
    from .geo import _open, grids

    if opts.pixel_size_m is not None:
        return
    with _open(raster.path) as src:
        own = grids(src, raster, None)[0]
    sides, sheared = own.pixel_sides(raster.unit_m), own.skew() > SAME_PIXEL_SIZE
    if abs(sides[0] / sides[1] - 1) > SAME_PIXEL_SIZE or sheared:
        raise ForestsegError(
            f"{raster.path}: its pixels are {sides[0]:.4g} x {sides[1]:.4g} m{' and sheared' if sheared else ''}, "
            "not square as the model's: pass --pixel-size <metres> to resample them"
        )


def _cut_raster(raster: "Raster", truth_path: Path, scene: int, dest: Path, opts: TileOptions) -> dict:
    """Tiles of one raster into dest/images and dest/masks: counts and the meta_data rows."""
    import rasterio
    from rasterio.windows import Window

    from .evaluate import TruthValues
    from .geo import CPLE_BaseError, _one_line, _open, _warp, grids, has_data, truth_on

    s = opts.size
    with _open(raster.path) as src, contextlib.ExitStack() as stack:
        reproject = raster.crs != src.crs
        _, grid, resample, pixels = grids(src, raster, opts.pixel_size_m)  # as predict reads it
        # the image on the tile grid; where it has data: its nodata, alpha or mask (warped: an added alpha)
        view = stack.enter_context(_warp(src, grid, pixels, alpha=True)) if (resample or reproject) else src
        truth_ds = stack.enter_context(_open(truth_path))
        truth = stack.enter_context(truth_on(truth_ds, grid))
        seen, rows = TruthValues(), []
        tiles = skipped = truth_gaps = forest = 0
        truth_anywhere = False
        across, down = grid.width // s, grid.height // s
        for r in range(down):
            for c0 in range(0, across, CHUNK):
                n = min(CHUNK, across - c0)
                # one read per strip of tiles: a warped view read tile by tile warped each tile on its own
                strip = Window(c0 * s, r * s, n * s, s)
                try:
                    truth_valid, image_valid = has_data(truth, strip), has_data(view, strip)
                    whole = [
                        image_valid[:, k * s : k * s + s].all() and truth_valid[:, k * s : k * s + s].all()
                        for k in range(n)
                    ]
                    if any(whole):
                        values_strip = truth.read(1, window=strip)
                        rgb_strip = np.moveaxis(view.read(indexes=list(opts.bands), window=strip), 0, -1)
                except (rasterio.errors.RasterioError, CPLE_BaseError, OSError) as e:
                    raise ForestsegError(
                        f"{raster.path} or {truth_path}: failed while reading ({_one_line(e)})"
                    ) from None
                truth_anywhere = truth_anywhere or bool(truth_valid.any())
                for k in range(n):
                    cols = slice(k * s, k * s + s)
                    if not whole[k]:
                        skipped += 1
                        truth_gaps += int((~truth_valid[:, cols]).sum())
                        continue
                    values, rgb = values_strip[:, cols], rgb_strip[:, cols]
                    seen.add(values.ravel())
                    name, mask_name = _names(scene, r * across + c0 + k)
                    Image.fromarray(np.ascontiguousarray(rgb)).save(dest / "images" / name)
                    Image.fromarray(np.where(values != 0, 255, 0).astype(np.uint8)).save(dest / "masks" / mask_name)
                    rows.append((name, mask_name))
                    tiles += 1
                    forest += int((values != 0).sum())
        if across * down and not truth_anywhere:
            raise ForestsegError(
                f"{truth_path}: no pixel of it with data lies on a whole tile of {raster.path.name}; is it the mask "
                "of that image (same place, CRS set right)?"
            )
        problem = seen.problem(truth_path)
        if problem:
            raise ForestsegError(problem)
        note = None
        if truth_ds.nodata is not None and truth_gaps and not seen.forest():  # its forest read as nodata?
            note = seen.nodata_note(truth_path, truth_ds.nodata, truth_gaps)
        elif truth_ds.nodata is not None and truth_gaps and seen.forest_only():  # its non-forest as nodata?
            note = seen.forest_only_note(truth_path, truth_gaps, "every tile written is all forest")
        # within 1 % of --pixel-size the raster's own pixels are read as that size (as predict reads them)
        px = opts.pixel_size_m if opts.pixel_size_m is not None else min(grid.pixel_sides(raster.unit_m))
        return {
            "tiles": tiles,
            "skipped_nodata": skipped,
            "edge_share": 1 - across * down * s * s / (grid.width * grid.height),
            "pixel_size_m": float(px),
            "forest_share": forest / (tiles * s * s) if tiles else 0.0,
            "grid": [grid.height, grid.width],
            "rows": rows,
            "note": note,
        }
