"""Forest maps of georeferenced rasters: a GeoTIFF in, a georeferenced forest mask and its area out.

A raster is read and written by windows, so memory depends on the model's tile and the block
size, never on the raster's size. The model runs at the ground resolution it was trained at
(the checkpoint's `pixel_size_m`): a raster of another resolution is resampled to it on the fly
(a GDAL warped VRT) and the logits are resampled back onto the raster's own grid before they
are thresholded. Nodata and alpha areas of the input stay nodata in the mask, which is written
with the input's CRS and transform as a Cloud-Optimised GeoTIFF (0 = not forest, 1 = forest,
255 = nodata). Areas come from the CRS's linear unit and the pixel size; geographic CRSs
(degrees) are refused unless a projected CRS to warp to is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
from affine import Affine
from rasterio._err import CPLE_BaseError  # GDAL errors rasterio raises as they are (e.g. a failed transform)
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_geom
from rasterio.warp import transform as transform_points
from rasterio.windows import Window
from tqdm import tqdm

from .config import PLAUSIBLE_PIXEL_M, SAME_PIXEL_SIZE
from .errors import ForestsegError
from .images import MAP_SUFFIXES, PICTURE_SUFFIXES, WORLD_FILE_SUFFIXES
from .io import WRITE_ERRNOS, atomic_path, out_of_room, replace_together, temp_prefix, write_error
from .windows import BLOCK, sample_windows

if TYPE_CHECKING:  # `forestseg tile` reads rasters without torch
    from .predict import Predictor

# files beside a picture that can georeference it for GDAL: a world file or GDAL's .aux.xml
PICTURE_SIDECARS = (*WORLD_FILE_SUFFIXES, ".aux.xml")
FOREST, NODATA = 1, 255  # the values of a forest mask besides 0, not forest
TIFF_BLOCK = 256  # block of the intermediate GTiffs; panels are whole multiples of it, so writes fill whole blocks
COARSE = 4  # a raster this many times coarser than the model's pixels gets a note: little detail to predict from
AREA_SCALE = 0.01  # a CRS whose map areas differ from the ground's by more than 1% on the raster is refused
WGS84_A, WGS84_E2 = 6378137.0, (2 - 1 / 298.257223563) / 298.257223563  # semi-major axis, eccentricity squared
LOGIT_SCALE = 256  # resampled logits are stored as int16 (logit - cut) * 256: 1/256 steps, half the disk of float32
LOGIT_NODATA = -32768  # where the model's grid has no data; stored logits stay within +-127 * 256
EDGE = 1e-6  # of a raster pixel: a grid edge or centre this close to a raster pixel's edge lies on it
# GDAL keeps written blocks in its cache (5% of RAM by default) until the file closes: bound it, or
# a large mask would sit in memory. In bytes: rasterio hands an int to GDALSetCacheMax64, so 128 meant
# 128 bytes, no block cached, and every read of a tiled, compressed raster decoded its blocks again
# (polygons of a 2048-px mask: 10 s against 0.05 s)
# GDAL_VRT_WARP_USE_DATASET_RASTERIO: a multi-band read of a warped view (the model's bands) took GDAL's
# direct-warp shortcut (GDAL 3.9), which rounds pixel centres on a source pixel's edge otherwise than the
# block-by-block warp of the alpha band saying where there is data: black nodata read as data there, and
# its logits turned pixels with data beside them to ground (18 of 125935 on a 45-degree 0.7 m raster,
# 84 of 45433 reprojected to EPSG:3035). Block by block, both warps agree.
GDAL_ENV = {"GDAL_CACHEMAX": 128 * 2**20, "GDAL_TIFF_INTERNAL_MASK": True, "GDAL_VRT_WARP_USE_DATASET_RASTERIO": False}


@dataclass(frozen=True)
class MapOptions:
    """How rasters are mapped; the CLI's flags."""

    bands: tuple[int, ...] = (1, 2, 3)  # 1-based band numbers read as red, green, blue
    resample: bool = True  # resample to the model's pixel size (False: predict at the raster's own)
    reproject: str | None = None  # a projected CRS to warp to (needed for geographic rasters)
    probability: str | None = None  # also write the forest probability: "uint8" (0-255) or "float32" (0-1)
    polygons: bool = False  # also write forest polygons as GeoJSON
    min_area_m2: float = 0.0  # polygons smaller than this are dropped
    overlap: int | None = None  # pixels shared by neighbouring model windows (default tile/4)
    block: int = BLOCK  # panel width in pixels: memory grows with it
    batch: int = 8
    progress: bool = True
    adapt_bn: float = 0.0  # batch-norm statistics moved this far towards the raster's own (Predictor.adapted)

    def raster_flags(self) -> list[str]:
        """The flags of options for reading rasters set other than at their defaults: pictures and
        tiles are read as they are, so these do nothing for them."""
        flags = {"bands": "--bands", "resample": "--no-resample", "reproject": "--reproject", "block": "--block"}
        return [flag for key, flag in flags.items() if getattr(self, key) != getattr(MapOptions, key)]


@dataclass(frozen=True)
class Raster:
    """A georeferenced raster checked by `check_raster`: it can be mapped in `crs`."""

    path: Path
    crs: CRS  # the CRS of the map: the raster's own, or the one to warp to
    unit_m: float  # metres per unit of `crs`
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForestArea:
    """One row of forest_area.csv."""

    file: str
    crs: str
    pixel_size_m: float  # side of a pixel of the mask (the input's grid), in metres
    model_pixel_size_m: float  # the ground resolution the model ran at
    resampled: bool
    valid_ha: float  # area with data (not nodata / transparent)
    forest_ha: float
    forest_share: float | None  # forest_ha / valid_ha; None when nothing is valid
    mask: str
    polygons: int | None = None  # forest polygons written (with --polygons)
    reprojected: bool = False  # the mask is on a grid warped to another CRS (--reproject to another one)
    adapted: bool = False  # batch-norm adapted to it (--adapt-bn and a whole window with data)


def parse_crs(text: str) -> CRS:
    """A projected CRS from user input such as 'EPSG:32633'; refuses unknown and geographic ones."""
    try:
        with rasterio.Env(CPL_LOG=os.devnull):  # PROJ's own 'ERROR 1:' line besides the exception's
            crs = CRS.from_user_input(text)
    except CRSError as e:
        raise ForestsegError(f"--reproject {text}: not a CRS GDAL knows ({e}); give e.g. EPSG:32633") from None
    if not crs.is_projected:
        raise ForestsegError(
            f"--reproject {text}: is not a projected CRS (areas need metres or feet); "
            "give a projected one, e.g. the UTM zone of the area (EPSG:326<zone> north, 327<zone> south)"
        )
    return crs


def utm_suggestion(lon: float, lat: float) -> str:
    """The EPSG code of the WGS 84 UTM zone at (lon, lat), e.g. 'EPSG:32633'."""
    zone = min(60, max(1, int(((lon + 180) % 360) // 6) + 1))  # 0-360 longitudes too
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def _one_line(e: BaseException) -> str:
    """GDAL's reason on one line: rasterio's own message often only says 'see previous exception',
    so the first message of the chain that names the failure is used."""
    chain = []
    while e is not None and len(chain) < 5:
        chain.append(" ".join(str(e).split()) or type(e).__name__)
        e = e.__cause__ or e.__context__
    useful = [m for m in chain if "previous exception" not in m]
    return useful[0] if useful else chain[0]


@contextlib.contextmanager
def _open(path: Path) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster with the bounded GDAL cache; unreadable files become one ForestsegError line."""
    with rasterio.Env(**GDAL_ENV):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain TIFFs are told apart below
                src = rasterio.open(path)
        except (RasterioError, OSError) as e:
            raise ForestsegError(f"{path}: cannot be read as a GeoTIFF ({_one_line(e)})") from None
        except UnicodeEncodeError:  # bytes that are no UTF-8 in its name (a Latin-1 é): GDAL takes UTF-8 only
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")  # printable, the odd byte as \xe9
            raise ForestsegError(f"{shown}: its name is not UTF-8 text, which GDAL needs; rename it") from None
        with src:
            yield src


class PictureError(ForestsegError):
    """A TIFF without georeference (a plain picture) that the picture reader cannot use: it fails
    alone, as a picture does, where a raster that cannot be mapped stops the run."""


def check_raster(path: Path, opts: MapOptions, model_px: float, pictures: bool = True) -> Raster | None:
    """Check, from its header, that `path` can be mapped with `opts` by a model of `model_px` m pixels;
    raises ForestsegError (one line) naming the file and the fix, PictureError where it has no
    georeference and the picture reader would misread it. Returns None for a TIFF with no georeference
    at all, which predict reads as a plain picture like a PNG (`pictures`; tile and evaluate, which
    take GeoTIFFs only, say so themselves)."""
    target = parse_crs(opts.reproject) if opts.reproject else None
    with _open(path) as src:
        gcps, _ = src.gcps
        if src.transform.is_identity and src.crs is None and not gcps and src.rpcs is None:
            if pictures:
                _check_picture(path, src)
            return None
        _check_georeference(path, src, gcps)
        _check_bands(path, src, opts.bands)
        xs, ys = _check_bounds(path, src)
        crs = target or src.crs
        notes = []
        if crs.is_geographic:
            lon, lat = sum(xs) / 2, sum(ys) / 2
            raise ForestsegError(
                f"{path}: its CRS ({_crs_name(src.crs)}) is geographic (degrees), so pixels have no "
                f"fixed area; rerun with --reproject {utm_suggestion(lon, lat)} (the UTM zone there) "
                "or another projected CRS"
            )
        try:
            _, unit_m = crs.linear_units_factor
        except CRSError:  # an engineering (local) CRS has no projection, but has its unit
            unit_m = _local_unit(crs)
            if opts.polygons and unit_m is not None:
                notes.append(
                    f"{path.name}: its CRS is a local grid ({_crs_name(crs)}), which no transformation links to "
                    "longitude and latitude: its forest polygons are written in the grid's own coordinates, and "
                    "the GeoJSON names no CRS"
                )
        if unit_m is None:
            raise ForestsegError(
                f"{path}: the linear unit of its CRS ({_crs_name(crs)}) is unknown, so areas cannot be "
                "computed; reproject it with --reproject EPSG:<code>"
            ) from None
        t = src.transform
        if t.a * t.e - t.b * t.d == 0:
            raise ForestsegError(
                f"{path}: its geotransform {tuple(t)[:6]} is degenerate (pixels of no area); fix it "
                f"(gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> {path.name})"
            )
        try:  # the one check that reads pixels (the edges, a decimated alpha band)
            notes += _band_notes(path, src, opts.bands)
        except (RasterioError, CPLE_BaseError) as e:
            raise ForestsegError(
                f"{path}: cannot be read as a GeoTIFF ({_one_line(e)}); damaged or cut short?"
            ) from None
        _check_scale(path, src, crs, float(unit_m))
        _check_pixels(path, src, crs, float(unit_m), model_px if opts.resample else None)
        return Raster(path, crs, float(unit_m), tuple(notes))


def _compression(src: rasterio.io.DatasetReader) -> str | None:
    """The TIFF's compression in lower case ('jpeg', 'lzw', ...), or None. GDAL calls JPEG of YCbCr pixels
    (orthophotos' usual `-co PHOTOMETRIC=YCBCR`) 'YCbCr JPEG', which rasterio gives as text, not as a
    Compression: JPEG all the same."""
    found = src.compression
    if found is None:
        return None
    name = found.name if isinstance(found, rasterio.enums.Compression) else str(found).lower()
    return "jpeg" if name == "ycbcr jpeg" else name


def _check_picture(path: Path, src: rasterio.io.DatasetReader) -> None:
    """A TIFF without any georeference is read as a plain picture: refuse what the picture reader cannot
    decode or would read wrongly (PictureError)."""
    compression = _compression(src)
    if src.driver == "VRT" or compression in PICTURE_READER_LACKS:  # GDAL reads it, Pillow cannot
        what = "a VRT" if src.driver == "VRT" else f"a {compression.upper()}-compressed TIFF"
        raise PictureError(
            f"{path}: {what} without a georeference, so it would be read as a plain picture, and the "
            f"picture reader cannot decode it; give it its CRS and pixel grid to map it as a raster "
            f"(gdal_edit.py -a_srs EPSG:<code> -a_ullr <ulx> <uly> <lrx> <lry> {path.name}), or convert "
            f"it to a picture (gdal_translate -of PNG {path.name} out.png)"
        )
    bands = sorted(set(src.dtypes))
    if src.count < 3 and not (src.count == 1 and _has_colormap(src)):  # said first: 8 bits would not help
        raise PictureError(
            f"{path}: is a {'/'.join(bands)} TIFF of {src.count} band(s) without colour; forestseg needs RGB images"
        )
    if bands != ["uint8"]:  # Pillow would only say it cannot decode it
        raise PictureError(f"{path}: its bands are {'/'.join(bands)}; {_eight_bit(path)}")
    if src.count >= 3 and src.colorinterp[0] == ColorInterp.gray:  # Pillow reads no 3-band grey TIFF
        raise PictureError(
            f"{path}: its {src.count} bands are tagged grey (TIFF photometric MINISBLACK), which the "
            f"picture reader cannot read as colour; tag them RGB: gdal_translate -co PHOTOMETRIC=RGB "
            f"{path.name} out.tif"
        )
    tagged = _tagged_rgb(src)
    if tagged not in (None, "1,2,3"):  # the picture reader takes bands 1, 2, 3 as red, green, blue
        b = tagged.split(",")
        raise PictureError(
            f"{path}: its bands {tagged} are tagged red, green, blue, but without a georeference it is read as a "
            f"plain picture, bands 1,2,3 as red, green, blue; reorder them (gdal_translate -b {b[0]} -b {b[1]} "
            f"-b {b[2]} {path.name} out.tif), or give it its CRS and pixel grid and map it with --bands {tagged}"
        )  # tags only: its pixels are the picture reader's to decode (a damaged one fails there, alone)
    flags = src.mask_flag_enums[0]
    if src.nodata is not None or (MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags):
        # the picture reader honours an alpha band, not GDAL's nodata value or internal mask
        what = "a mask of invalid pixels" if src.nodata is None else f"nodata value {src.nodata:g}"
        raise PictureError(
            f"{path}: has {what} but no georeference, so as a plain picture its invalid pixels would "
            "be predicted as ground; give it its CRS and pixel grid to map it as a raster "
            f"(gdal_edit.py -a_srs EPSG:<code> -a_ullr <ulx> <uly> <lrx> <lry> {path.name})"
        )


def _check_georeference(path: Path, src: rasterio.io.DatasetReader, gcps: list) -> None:
    """A georeference forestseg can map: a pixel grid (not RPCs or ground control points only) and a CRS."""
    if src.transform.is_identity and src.rpcs is not None and not gcps:
        raise ForestsegError(
            f"{path}: is georeferenced by RPCs (a raw satellite scene), not by a grid; orthorectify it "
            f"first (gdalwarp -rpc -t_srs EPSG:<code> {path.name} out.tif)"
        )
    if src.transform.is_identity and not gcps:
        raise ForestsegError(
            f"{path}: has a CRS but no pixel grid (geotransform); set one "
            f"(gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> {path.name})"
        )
    if src.transform.is_identity:
        raise ForestsegError(
            f"{path}: is georeferenced by ground control points only, not by a grid; warp it "
            f"onto one first (gdalwarp -t_srs EPSG:<code> {path.name} out.tif)"
        )
    if src.crs is None:
        raise ForestsegError(
            f"{path}: has a pixel grid but no CRS, so its pixels have no size on the ground; "
            f"assign the CRS it was made in (gdal_edit.py -a_srs EPSG:<code> {path.name})"
        )


def _check_bands(path: Path, src: rasterio.io.DatasetReader, chosen: tuple[int, ...]) -> None:
    """The raster has 3 bands or more, and the `--bands` exist, are no alpha band and are 8-bit."""
    if src.count < 3:
        palette = (
            " (a palette image: expand it with gdal_translate -expand rgb)"
            if src.count == 1 and _has_colormap(src)
            else ""
        )
        raise ForestsegError(
            f"{path}: has {src.count} band(s){palette}; forest maps need 3 colour bands (red, green, blue)"
        )
    bands = ",".join(map(str, chosen))
    outside = [b for b in chosen if not 1 <= b <= src.count]
    if outside:
        raise ForestsegError(f"--bands {bands}: {path} has {src.count} bands (1..{src.count}), no band {outside[0]}")
    alpha = [b for b in chosen if src.colorinterp[b - 1] == ColorInterp.alpha]
    if alpha:
        raise ForestsegError(
            f"--bands {bands}: band {alpha[0]} of {path} is its alpha (transparency) band, not a colour; if it "
            f"is a colour or near-infrared band, untag it: gdal_edit.py -colorinterp_{alpha[0]} undefined {path.name}"
        )
    dtypes = {src.dtypes[b - 1] for b in chosen}
    if dtypes != {"uint8"}:
        raise ForestsegError(f"{path}: bands {bands} are {'/'.join(sorted(dtypes))}; {_eight_bit(path)}")


def _check_bounds(path: Path, src: rasterio.io.DatasetReader) -> tuple[list[float], list[float]]:
    """A geotransform of numbers whose bounds a warp can place; returns the bounds' sorted x and y."""
    t = src.transform
    if not all(math.isfinite(v) for v in tuple(t)[:6]):
        raise ForestsegError(
            f"{path}: its geotransform {tuple(t)[:6]} is not numbers throughout; fix it "
            f"(gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> {path.name})"
        )
    bounds = src.bounds  # bottom > top where rows run south to north (a positive y step)
    xs, ys = sorted((bounds.left, bounds.right)), sorted((bounds.bottom, bounds.top))
    if src.crs.is_geographic and not (-361 <= xs[0] and xs[1] <= 361 and -91 <= ys[0] and ys[1] <= 91):
        # metres tagged EPSG:4326, a common slip: no UTM zone or --reproject can place them
        raise ForestsegError(
            f"{path}: its CRS ({_crs_name(src.crs)}) is geographic (degrees), but its bounds "
            f"({xs[0]:.6g}, {ys[0]:.6g}, {xs[1]:.6g}, {ys[1]:.6g}) are no longitudes and latitudes: "
            f"the CRS tag is wrong; assign the CRS its coordinates are in (gdal_edit.py -a_srs EPSG:<code> "
            f"{path.name})"
        )
    if src.crs.is_geographic and not (-180 - 1e-9 <= xs[0] and xs[1] <= 180 + 1e-9):
        # GDAL's warp places only the part within -180..180: the rest would map as nodata
        raise ForestsegError(
            f"{path}: its longitudes run from {xs[0]:.7g} to {xs[1]:.7g}, past ±180 (0-360 degrees, or "
            "across the antimeridian), which the warp cannot place whole; warp it to its UTM zone first "
            f"(gdalwarp -t_srs {utm_suggestion(sum(xs) / 2, sum(ys) / 2)} {path.name} utm.tif) and map that"
        )
    return xs, ys


def _band_notes(path: Path, src: rasterio.io.DatasetReader, chosen: tuple[int, ...]) -> list[str]:
    """Notes on bands that are likely mistagged (an alpha of other values) or read as colours they are not
    tagged as (blue-green-red, near-infrared-red-green-blue), and on invalid pixels."""
    notes, bands = [], ",".join(map(str, chosen))
    for b in range(1, src.count + 1):
        if b not in chosen and src.colorinterp[b - 1] == ColorInterp.alpha and _not_an_alpha(src, b):
            notes.append(
                f"{path.name}: band {b} is tagged alpha (transparency) but holds values other than 0 and 255; "
                f"if it is a near-infrared band, its 0 pixels were left out as nodata: untag it with "
                f"gdal_edit.py -colorinterp_{b} undefined {path.name}"
            )
    # the bands tagged red, green and blue (one each) are others than those read as them: BGR, or NRGB
    # read as 1,2,3 (near-infrared as red, without a word)
    order = _tagged_rgb(src) or bands
    if order != bands:
        names = ", ".join(src.colorinterp[b - 1].name for b in chosen)
        notes.append(
            f"{path.name}: bands {bands} are tagged {names}, and bands {order} red, green, blue; if so, "
            f"pass --bands {order}"
        )
    return notes + _invalid_pixel_notes(path, src, chosen)


def _tagged_rgb(src: Any) -> str | None:
    """The bands tagged red, green and blue, as --bands takes them ("3,2,1"), where one band each is."""
    tagged = [[b for b in range(1, src.count + 1) if src.colorinterp[b - 1] == c] for c in RGB_TAGS]
    return ",".join(str(b[0]) for b in tagged) if all(len(b) == 1 for b in tagged) else None


RGB_TAGS = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)


# TIFF compressions GDAL reads and Pillow's libtiff, as its wheels are built, does not
PICTURE_READER_LACKS = frozenset({"lerc", "lerc_deflate", "lerc_zstd", "webp"})  # measured: lzma and zstd read
COLLAR_SHARE = 0.1  # of a raster's edge pixels exactly 0 (or 255) in every band, with nothing declared invalid


def _invalid_pixel_notes(path: Path, src: Any, bands: tuple[int, ...]) -> list[str]:
    """Where invalid pixels would be mapped as ground, without a word: a frame of pixels 0 (or 255) in
    every band that no nodata value, alpha band or mask declares (a gdalwarp without -dstnodata; read
    along the four edges only, a few blocks), or a nodata value under lossy JPEG compression, which
    moves the pixels along the invalid area's edge off that value."""
    notes = []
    if MaskFlags.all_valid in src.mask_flag_enums[bands[0] - 1]:
        edges = [
            src.read(list(bands), window=w)
            for w in (
                rasterio.windows.Window(0, 0, src.width, 1),
                rasterio.windows.Window(0, src.height - 1, src.width, 1),
                rasterio.windows.Window(0, 0, 1, src.height),
                rasterio.windows.Window(src.width - 1, 0, 1, src.height),
            )
        ]
        for value in (0, 255):
            share = sum(int((e == value).all(axis=0).sum()) for e in edges) / sum(e[0].size for e in edges)
            if share > COLLAR_SHARE:
                notes.append(
                    f"{path.name}: {share:.0%} of its edge pixels are {value} in every band and it declares no "
                    f"nodata: a collar left by a warp? it is mapped as ground, forest areas included; to leave it "
                    f"out, declare it: gdal_edit.py -a_nodata {value} {path.name}"
                )
    jpeg = _compression(src) == "jpeg"
    kind = "JPEG" if jpeg else {"JP2OpenJPEG": "JPEG 2000", "JPEG": "JPEG"}.get(src.driver)
    if kind and src.nodata is not None:
        notes.append(
            f"{path.name}: nodata value {src.nodata:g} under {kind} compression, lossy as a rule: pixels along the invalid "
            "area's edge decode to other values and are mapped as ground; an internal mask keeps them out "
            f"(nearblack -setmask -o masked.tif {path.name}, or from a lossless source: gdal_translate -mask auto "
            "-co COMPRESS=JPEG --config GDAL_TIFF_INTERNAL_MASK YES)"
        )
    return notes


def _check_pixels(path: Path, src: Any, crs: CRS, unit_m: float, model_px: float | None) -> None:
    """Refuse pixels no aerial or satellite image has (a geotransform in degrees under a metre CRS gives
    micrometres), and, with `model_px` (resampling on), a raster smaller than one model pixel: no whole
    pixel of the grid it would be read at, nothing to predict from."""
    out = own_grid(src, crs)
    sides = out.pixel_sides(unit_m)
    if not (PLAUSIBLE_PIXEL_M[0] <= min(sides) and max(sides) <= PLAUSIBLE_PIXEL_M[1]):
        raise ForestsegError(
            f"{path}: its pixels are {sides[0]:.3g} x {sides[1]:.3g} m under {_crs_name(crs)}, no aerial or "
            "satellite image's; check its CRS and geotransform (degrees under a metre CRS?) and fix them with "
            "gdal_edit.py -a_srs / -a_ullr"
        )
    extent = (out.width * sides[0], out.height * sides[1])
    if model_px is not None and min(extent) < model_px:
        raise ForestsegError(
            f"{path}: covers {extent[0]:.3g} x {extent[1]:.3g} m, less than one {model_px:g} m pixel of the grid "
            "it is read at: nothing to read at that resolution; check its geotransform, or take its pixels as they "
            "are (predict and evaluate: --no-resample; tile: without --pixel-size)"
        )


def _eight_bit(path: Path) -> str:
    """What to do with a raster of wider bands than 8 bits."""
    return f"the model learned 8-bit colour: convert with gdal_translate -ot Byte -scale <min> <max> 0 255 {path.name} out.tif"


def _local_unit(crs: Any) -> float | None:
    """The unit of an engineering (LOCAL_CS) CRS in metres, or None where it has none."""
    try:
        _, factor = crs.units_factor
    except CRSError:
        return None
    return float(factor) if factor else None


def _not_an_alpha(src: Any, band: int, side: int = 256) -> bool:
    """Whether an alpha-tagged band holds values other than 0 and 255 (read decimated): a 4th colour
    band, such as near-infrared, that GDAL tags alpha by default would, and a real alpha rarely does."""
    values = src.read(band, out_shape=(min(side, src.height), min(side, src.width)))
    return bool(((values != 0) & (values != 255)).mean() > 0.01)


@functools.lru_cache(maxsize=16)
def _listing(folder: Path, mtime_ns: int) -> frozenset[str]:
    """The lower-cased names in a folder: listed once per folder and version of it (its mtime)."""
    return frozenset(f.name.lower() for f in folder.iterdir())


def has_world_file(path: Path) -> bool:
    """Whether a world file lies beside a picture (JPEG, PNG, BMP) at `path` (any letter case)."""
    return path.suffix.lower() in PICTURE_SUFFIXES and _has_sidecar(path, WORLD_FILE_SUFFIXES)


def _has_sidecar(path: Path, suffixes: tuple[str, ...] = PICTURE_SIDECARS) -> bool:
    """Whether a world file or GDAL's .aux.xml (or one of `suffixes`) lies beside `path` (any letter case)."""
    stem, name = path.stem.lower(), path.name.lower()
    wanted = [n for s in suffixes for n in (stem + s, name + s)]
    try:
        folder = path.parent.resolve()
        names = _listing(folder, folder.stat().st_mtime_ns)
    except OSError:  # a folder that cannot be listed: look for each name as written and in upper case
        return any(_exists(path.parent / n) or _exists(path.parent / n.upper()) for n in wanted)
    return any(n in names for n in wanted)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def is_map(path: Path) -> bool:
    """Whether `path` is mapped as a raster rather than predicted as a picture: a GeoTIFF, JPEG 2000 or
    VRT always (`check_raster` reads it with GDAL and says why it cannot, or returns None when it has
    no georeference at all); a JPEG, PNG or BMP only when its sidecars give GDAL both a CRS and a
    pixel grid (a world file alone gives no CRS, so no area); a file of another type named on the
    command line when GDAL finds a CRS and a grid in it (else Pillow reads it, or says why not)."""
    suffix = path.suffix.lower()
    if suffix in MAP_SUFFIXES:
        return True
    if suffix in PICTURE_SUFFIXES and not _has_sidecar(path):
        return False  # no GDAL open per picture of a plain folder of photos
    try:
        with _open(path) as src:
            return not src.transform.is_identity and src.crs is not None
    except ForestsegError:
        return False  # left to the picture reader, which says why it cannot decode it


def _check_scale(path: Path, src: rasterio.io.DatasetReader, crs: CRS, unit_m: float) -> None:
    """Refuse a map CRS that `crs` and `unit_m` would give wrong areas on the raster: its footprint must
    transform into `crs`, and a ground square's area there must be within AREA_SCALE of its map
    area at the footprint's corners and centre (Web Mercator away from the equator, the wrong UTM
    zone). A CRS that GDAL cannot transform to longitude and latitude is taken at its unit."""
    left, bottom, right, top = _footprint(src)
    xs, ys = [left, right, left, right, (left + right) / 2], [bottom, bottom, top, top, (bottom + top) / 2]
    if crs != src.crs:
        try:
            xs, ys = transform_points(src.crs, crs, xs, ys)
            calculate_default_transform(src.crs, crs, src.width, src.height, left, bottom, right, top)
        except (CPLE_BaseError, RasterioError, ValueError) as e:
            raise ForestsegError(
                f"--reproject {_crs_name(crs)}: {path} cannot be transformed into it ({_one_line(e)})"
            ) from None
        if not np.isfinite(np.r_[xs, ys]).all():
            raise ForestsegError(f"--reproject {_crs_name(crs)}: {path} lies outside the part of the earth it covers")
    step = 10 / unit_m  # a 10 m square in CRS units
    try:
        lon, lat = transform_points(
            crs, "EPSG:4326", [x + dx for x in xs for dx in (0, step, 0)], [y + dy for y in ys for dy in (0, 0, step)]
        )
    except (CPLE_BaseError, RasterioError, ValueError):
        return
    ratios = []  # map area / ground area of the square at each point
    for i in range(0, len(lon), 3):
        if not np.isfinite(lon[i : i + 3] + lat[i : i + 3]).all():
            return
        if abs(lat[i]) > 89.9:  # longitude degenerates at a pole
            continue
        phi = math.radians(lat[i])
        w = 1 - WGS84_E2 * math.sin(phi) ** 2
        east = math.radians(1) * WGS84_A * math.cos(phi) / math.sqrt(w)  # metres per degree of longitude
        north = math.radians(1) * WGS84_A * (1 - WGS84_E2) / w**1.5  # per degree of latitude
        (ax, ay), (bx, by) = (
            (((lon[j] - lon[i] + 180) % 360 - 180) * east, (lat[j] - lat[i]) * north) for j in (i + 1, i + 2)
        )
        ratios.append(100 / abs(ax * by - ay * bx))
    worst = max(ratios, key=lambda r: abs(r - 1), default=1.0)
    if abs(worst - 1) > AREA_SCALE:
        centre = len(lon) - 3  # the footprint's centre is the last point
        raise ForestsegError(
            f"{path}: its map CRS ({_crs_name(crs)}) makes areas {worst:.3g}x the ground's there (1% allowed); "
            f"rerun with --reproject {utm_suggestion(lon[centre], lat[centre])} (the UTM zone there) or "
            "another projected CRS made for the area"
        )


def _has_colormap(src: rasterio.io.DatasetReader) -> bool:
    try:
        src.colormap(1)
        return True
    except ValueError:
        return False


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else (crs.to_proj4().replace("=True", "") or crs.to_wkt() or "a custom CRS")


@dataclass(frozen=True)
class Grid:
    """A north-up or rotated raster grid: CRS, transform and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    def pixel_sides(self, unit_m: float) -> tuple[float, float]:
        """(x, y) side of a pixel in metres."""
        t = self.transform
        return math.hypot(t.a, t.d) * unit_m, math.hypot(t.b, t.e) * unit_m

    def skew(self) -> float:
        """|cos| of the angle between the pixel's sides: 0 for square (or rotated) pixels, > 0 for sheared ones."""
        t = self.transform
        return abs(t.a * t.b + t.d * t.e) / (math.hypot(t.a, t.d) * math.hypot(t.b, t.e))

    def pixel_area_m2(self, unit_m: float) -> float:
        t = self.transform
        return abs(t.a * t.e - t.b * t.d) * unit_m**2


def _footprint(src: rasterio.io.DatasetReader) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of the raster's corners (right for rotated grids too)."""
    t = src.transform
    xs, ys = zip(*(t @ (c, r) for c in (0, src.width) for r in (0, src.height)))
    return min(xs), min(ys), max(xs), max(ys)


def own_grid(src: rasterio.io.DatasetReader, crs: CRS) -> Grid:
    """`src`'s own pixels under `crs`: its grid, or that grid warped to `crs` where it has another CRS."""
    return _regrid(src, crs) if crs != src.crs else Grid(src.crs, src.transform, src.width, src.height)


def _regrid(src: rasterio.io.DatasetReader, crs: CRS, resolution: float | None = None) -> Grid:
    """A north-up grid in `crs` covering the raster: at `resolution` (CRS units), or at GDAL's choice
    (about the raster's own) when None."""
    extra = {"resolution": resolution} if resolution else {}
    transform, width, height = calculate_default_transform(
        src.crs, crs, src.width, src.height, *_footprint(src), **extra
    )
    return Grid(crs, transform, int(width), int(height))


def _warp(src: Any, grid: Grid, resampling: Resampling, alpha: bool = False) -> WarpedVRT:
    """`src` seen on `grid`, warped on the fly. With alpha, areas without data (nodata, the
    source's alpha or mask, or outside its footprint) read as invalid in dataset_mask()."""
    extra = {"add_alpha": True} if alpha and ColorInterp.alpha not in src.colorinterp else {}
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=resampling,
        **extra,
    )


@contextlib.contextmanager
def truth_on(truth: Any, grid: Grid) -> Iterator[Any]:
    """A truth raster read on `grid`: itself where it lies on that grid, else warped by nearest
    neighbour (class values stay classes), with an alpha band where it has no data (`has_data`)."""
    if (
        truth.crs == grid.crs
        and truth.transform.almost_equals(grid.transform)
        and (truth.height, truth.width) == (grid.height, grid.width)
    ):
        yield truth
    else:
        with _warp(truth, grid, Resampling.nearest, alpha=True) as view:
            yield view


def has_data(ds: Any, window: Window) -> np.ndarray:
    """Where `ds` (a raster or a `_warp` view) has data in `window`. An alpha band decides where there is
    one: GDAL's dataset mask follows an alpha band of Byte or UInt16 bands only, so a warped Float32 or
    Int16 truth (QGIS's Rasterize writes Float32) read all valid, its nodata and the land outside it
    scored as no forest. Else the dataset mask: nodata, an internal mask."""
    if ColorInterp.alpha in ds.colorinterp:
        return ds.read(ds.colorinterp.index(ColorInterp.alpha) + 1, window=window) > 0
    return ds.dataset_mask(window=window) > 0


def grids(src: Any, raster: Raster, pixel_size_m: float | None) -> tuple[Grid, Grid, bool, Resampling]:
    """How `raster` (open as `src`) is read at `pixel_size_m` (None: at its own pixels): (its grid, or
    the grid warped to raster.crs; the grid read, that one at `pixel_size_m` unless its pixels are within
    1 % of it and not sheared; whether that resamples; the resampling: averaging to coarser pixels, no
    aliasing, bilinear to finer ones). Shared by forest maps and `forestseg tile`."""
    out = own_grid(src, raster.crs)
    sides = out.pixel_sides(raster.unit_m)
    # sheared pixels are not the model's squares even where their sides are its size
    resample = pixel_size_m is not None and (
        any(abs(s / pixel_size_m - 1) > SAME_PIXEL_SIZE for s in sides) or out.skew() > SAME_PIXEL_SIZE
    )
    pixels = Resampling.average if resample and pixel_size_m > min(sides) else Resampling.bilinear
    read = _regrid(src, raster.crs, pixel_size_m / raster.unit_m) if resample else out
    return out, read, resample, pixels


def _reader(ds: Any, bands: tuple[int, ...]) -> Callable[[int, int, int, int], np.ndarray]:
    """Predictor.stream's reader over bands of a dataset: (row0, row1, col0, col1) -> (h, w, 3) uint8."""

    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        pixels = ds.read(indexes=list(bands), window=Window(c0, r0, c1 - c0, r1 - r0))
        return np.ascontiguousarray(np.moveaxis(pixels, 0, -1))

    return read


def _profile(grid: Grid, dtype: str, nodata: float | None) -> dict:
    return {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": TIFF_BLOCK,
        "blockysize": TIFF_BLOCK,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }


class _Strips:
    """Writes the strips Predictor.stream hands out (panel after panel, each top to bottom) into a
    tiled GTiff in whole blocks: rows are held until a block row is complete, so GDAL never writes
    a block twice (which would leave dead, compressed copies in the file)."""

    def __init__(self, ds: Any, with_mask: bool = False):
        self.ds, self.with_mask = ds, with_mask
        self.c0: int | None = None
        self.r0 = 0
        self.parts: list[tuple[np.ndarray, np.ndarray | None]] = []

    def put(self, r0: int, c0: int, data: np.ndarray, mask: np.ndarray | None = None) -> None:
        if c0 != self.c0:
            self.flush()
            self.c0, self.r0 = c0, r0
        self.parts.append((data, mask))
        end = r0 + data.shape[0]
        whole = end if end == self.ds.height else end // TIFF_BLOCK * TIFF_BLOCK
        if whole > self.r0:
            self._write(whole)

    def _write(self, upto: int) -> None:
        data = np.concatenate([d for d, _ in self.parts]) if len(self.parts) > 1 else self.parts[0][0]
        mask = (
            (np.concatenate([m for _, m in self.parts]) if len(self.parts) > 1 else self.parts[0][1])
            if self.with_mask
            else None
        )
        n = upto - self.r0
        window = Window(self.c0, self.r0, data.shape[1], n)
        self.ds.write(data[:n], 1, window=window)
        if mask is not None:
            self.ds.write_mask(mask[:n], window=window)
        self.parts = [(data[n:], mask[n:] if mask is not None else None)] if n < len(data) else []
        self.r0 = upto

    def flush(self) -> None:
        if self.parts and sum(len(d) for d, _ in self.parts):
            self._write(self.r0 + sum(len(d) for d, _ in self.parts))
        self.parts = []


class _MapWriter:
    """Thresholds finished logits into the mask (and probability) GTiffs, counting valid and forest pixels."""

    def __init__(self, predictor: Predictor, grid: Grid, folder: Path, probability: str | None):
        self.predictor, self.probability = predictor, probability
        self.valid = self.forest = 0
        self.files = {"mask": folder / "mask.tif"}
        self.mask = _Strips(rasterio.open(self.files["mask"], "w", **_profile(grid, "uint8", NODATA)))
        self.prob: _Strips | None = None
        if probability:
            self.files["probability"] = folder / "probability.tif"
            # uint8 uses all 256 values for probabilities, so its nodata is an internal mask band
            nodata = None if probability == "uint8" else float("nan")
            try:
                self.prob = _Strips(
                    rasterio.open(self.files["probability"], "w", **_profile(grid, probability, nodata)),
                    with_mask=probability == "uint8",
                )
            except BaseException:  # the caller's `finally` has no writer to close yet: the mask's file is ours
                self.mask.ds.close()
                raise

    def put(self, r0: int, c0: int, logits: np.ndarray, valid: np.ndarray) -> None:
        forest = (logits > self.predictor.cut) & valid
        self.valid += int(np.count_nonzero(valid))
        self.forest += int(np.count_nonzero(forest))
        self.mask.put(r0, c0, np.where(valid, forest.astype(np.uint8), np.uint8(NODATA)))
        if self.prob is not None:
            p = self.predictor.probability(logits)
            if self.probability == "uint8":
                self.prob.put(r0, c0, np.rint(p * 255).astype(np.uint8), valid.astype(np.uint8) * 255)
            else:
                self.prob.put(r0, c0, np.where(valid, p, np.float32(np.nan)))

    def close(self) -> None:
        for strips in (self.mask, self.prob):
            if strips is not None:
                strips.flush()
                strips.ds.close()


def _cog(tmp: Path, out: Path, resampling: str) -> None:
    """Copy a tiled GTiff to `out` (in the temp folder: map_forest moves the finished set into place)
    as a Cloud-Optimised GeoTIFF with overviews; where GDAL lacks the COG driver, as a tiled GTiff with
    overviews copied in front."""
    with rasterio.Env(**GDAL_ENV) as env:
        if "COG" in env.drivers():
            rasterio.shutil.copy(
                tmp,
                out,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=512,
                OVERVIEW_RESAMPLING=resampling,
                BIGTIFF="IF_SAFER",
            )
            return
        with rasterio.open(tmp, "r+") as ds:
            factors = [f for f in (2, 4, 8, 16, 32, 64) if min(ds.width, ds.height) // f >= 256]
            if factors:
                ds.build_overviews(factors, Resampling[resampling.lower()])
        rasterio.shutil.copy(
            tmp,
            out,
            driver="GTiff",
            TILED=True,
            BLOCKXSIZE=512,
            BLOCKYSIZE=512,
            COMPRESS="DEFLATE",
            COPY_SRC_OVERVIEWS=True,
            BIGTIFF="IF_SAFER",
        )


def _blocks(grid: Grid, block: int) -> Iterator[Window]:
    """Windows covering a grid, `block` wide and TIFF_BLOCK * 4 high, aligned to the intermediate GTiffs' blocks."""
    for c0 in range(0, grid.width, block):
        for r0 in range(0, grid.height, 4 * TIFF_BLOCK):
            yield Window(c0, r0, min(block, grid.width - c0), min(4 * TIFF_BLOCK, grid.height - r0))


def output_paths(path: Path, out_dir: Path, opts: MapOptions) -> dict[str, Path]:
    """What map_forest writes for `path`."""
    paths = {"mask": out_dir / f"{path.stem}_mask.tif"}
    if opts.probability:
        paths["probability"] = out_dir / f"{path.stem}_probability.tif"
    if opts.polygons:
        paths["polygons"] = out_dir / f"{path.stem}_forest.geojson"
    return paths


def every_output(path: Path, out_dir: Path) -> dict[str, Path]:
    """Every file map_forest may write for `path`, whatever the options (an earlier run's may be there)."""
    return output_paths(path, out_dir, MapOptions(probability="uint8", polygons=True))


def map_forest(
    predictor: Predictor, raster: Raster, out_dir: Path, opts: MapOptions, log: Callable[[str], None] = print
) -> ForestArea:
    """Predict forest on a raster checked by `check_raster`, window by window; write the mask (and the
    probability, the polygons) into out_dir and return its areas."""
    path, plain = raster.path, predictor
    try:
        with _open(path) as src, contextlib.ExitStack() as stack:
            reproject = raster.crs != src.crs
            model_px = predictor.pixel_size_m
            out, model, resample, pixels = grids(src, raster, model_px if opts.resample else None)
            # where the output has data: the input's nodata, alpha or mask on its own grid (or warped)
            valid_view = stack.enter_context(_warp(src, out, Resampling.nearest, alpha=True)) if reproject else src
            sides = out.pixel_sides(raster.unit_m)
            if resample and min(sides) > COARSE * model_px:
                log(
                    f"note: {path.name}: its {min(sides):g} m pixels are {min(sides) / model_px:.0f}x the model's "
                    f"{model_px:g} m: each is predicted as {model.width * model.height / (out.width * out.height):.0f} "
                    "model pixels, from detail the photo does not have; expect coarse, uncertain forest edges"
                )
            view = stack.enter_context(_warp(src, model, pixels)) if (resample or reproject) else src
            # where the model's grid has data: where it is the output's, the validity view; on a grid
            # aligned with the raster's, the raster's own mask under each pixel as the warper reads it;
            # else what the warper writes, as an alpha band (a warped view's own mask misses internal masks)
            if not resample:
                has_data = valid_view
            elif not reproject and src.transform.b == src.transform.d == 0:
                has_data = _AlignedMask(src, model, spans=pixels == Resampling.average)
            else:
                has_data = stack.enter_context(_warp(src, model, pixels, alpha=True))
            if opts.adapt_bn:
                predictor = _adapted(predictor, view, has_data, model, opts, path.name, log)
            # panels of whole intermediate blocks, so every write fills whole blocks
            opts = dataclasses.replace(opts, block=-(-max(opts.block, 1) // TIFF_BLOCK) * TIFF_BLOCK)
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out_dir, prefix=temp_prefix(path.stem))))
            bar = stack.enter_context(
                tqdm(
                    total=predictor.windows(model.height, model.width, opts.overlap, opts.block),
                    desc=path.name,
                    unit="window",
                    disable=None if opts.progress else True,
                    leave=False,
                    mininterval=1.0,
                )
            )
            writer = _MapWriter(predictor, out, folder, opts.probability)
            try:
                if not resample:
                    _direct(predictor, view, model, valid_view, writer, opts, bar.update)
                else:
                    _resampled(predictor, view, has_data, model, out, valid_view, writer, folder, opts, bar.update)
            finally:
                writer.close()
            bar.close()
            paths, polygons = _publish(writer, folder, out_dir, raster, opts, log)
    except (RasterioError, CPLE_BaseError, OSError, OverflowError) as e:
        # a full disk or read-only folder, which GDAL reports as its own failure ("Failed to create mask."):
        # said as such, of the output, not of the input
        room = e if isinstance(e, OSError) and e.errno in WRITE_ERRNOS else out_of_room(out_dir)
        if room is not None:
            temp = out_dir / temp_prefix(path.stem)  # its temp folder's files: gone when this is read
            mask = output_paths(path, out_dir, opts)["mask"]
            raise write_error(mask, room, f"the map of {path.name}", temp=temp) from None
        # a corrupt block, a failed transform: GDAL's reason on one line, never a traceback
        raise ForestsegError(f"{path}: failed while mapping ({_one_line(e)})") from None
    pixel_m2 = out.pixel_area_m2(raster.unit_m)
    return ForestArea(
        file=str(path),
        crs=_crs_name(raster.crs),
        pixel_size_m=round(math.sqrt(pixel_m2), 6),
        model_pixel_size_m=model_px if resample else round(math.sqrt(pixel_m2), 6),
        resampled=resample,
        valid_ha=writer.valid * pixel_m2 / 1e4,
        forest_ha=writer.forest * pixel_m2 / 1e4,
        forest_share=writer.forest / writer.valid if writer.valid else None,
        mask=str(paths["mask"]),
        polygons=polygons,
        reprojected=reproject,
        adapted=predictor is not plain,
    )


def _adapted(
    predictor: Predictor, view: Any, has_data: Any, model: Grid, opts: MapOptions, name: str, log: Callable
) -> Predictor:
    """The predictor adapted by opts.adapt_bn to the raster, one scene: to windows with data only, on
    the model's grid (a raster with no whole window of data is mapped as trained, with a note)."""
    t = predictor.tile

    def full(y: int, x: int) -> bool:
        return bool((has_data.dataset_mask(window=Window(x, y, t, t)) > 0).all())

    windows = sample_windows(_reader(view, opts.bands), model.height, model.width, t, usable=full)
    if not len(windows):
        log(f"note: {name}: no whole {t}-px window with data to adapt batch-norm to; mapped as trained")
    return predictor.adapted(windows, opts.adapt_bn)


def _direct(
    predictor: Predictor,
    view: Any,
    model: Grid,
    valid_view: Any,
    writer: _MapWriter,
    opts: MapOptions,
    progress: Callable[[int], None],
) -> None:
    """Predict on the output's own grid (the model's), each window's mask valid where the input is."""

    def sink(r0: int, c0: int, logits: np.ndarray) -> None:
        window = Window(c0, r0, logits.shape[1], logits.shape[0])
        writer.put(r0, c0, logits, valid_view.dataset_mask(window=window) > 0)

    predictor.stream(
        _reader(view, opts.bands), model.height, model.width, sink, opts.overlap, opts.block, opts.batch, progress
    )


def _publish(
    writer: _MapWriter, folder: Path, out_dir: Path, raster: Raster, opts: MapOptions, log: Callable
) -> tuple[dict[str, Path], int | None]:
    """Finish the written map's outputs in the temp `folder` (COGs, polygons), remove an earlier run's
    outputs this run does not write, and move them all into out_dir; returns their paths and the
    polygons written.
    Everything is finished first and then moved in one right after another (replace_together): a new
    mask beside an old probability or polygons only for a kill within the milliseconds of the renames,
    never for the seconds the probability's COG takes."""
    paths = output_paths(raster.path, out_dir, opts)
    built = {name: folder / f"{name}.out{paths[name].suffix}" for name in paths}
    _cog(writer.files["mask"], built["mask"], "MODE")
    if opts.probability:
        _cog(writer.files["probability"], built["probability"], "AVERAGE")
    polygons = None
    if opts.polygons:
        polygons = write_polygons(
            built["mask"], built["polygons"], opts.min_area_m2, raster.unit_m, paths["polygons"].stem
        )
    # an earlier run's output of another mask: never left beside this one
    for name, old in every_output(raster.path, out_dir).items():
        if name not in paths and old.exists():
            old.unlink()
            log(f"note: removed {old}: an earlier run's {name}, which this run does not write")
    replace_together({built[name]: paths[name] for name in paths})
    return paths, polygons


class _AlignedMask:
    """dataset_mask() of a north-up grid over a raster whose grid is aligned with it (no rotation, same
    CRS), as a view warped with an alpha band gives it (without warping the bands a second time, which
    took 70% longer for a 1 m raster mapped at 0.5 m: bench/geo.py --pixel 1.0): 255 where the grid's
    pixel has data (the raster's nodata, alpha or mask) under its centre, or with `spans` (GDAL's
    average resampling, to coarser pixels) anywhere under it, else 0. Never 255 where the warper may
    have written no data: a centre on a raster pixel's edge needs data on both sides (floor() took one
    side, GDAL's rounding the other, and logits of black spread into a south-up raster's pixels with
    data), and a span that only touches a pixel is not over it. With centres only, a 0.25 m raster with
    data in every fourth column had no 0.5 m pixel with data: mapped as no valid pixels at all."""

    ROWS = 1024  # raster rows read at a time: a 0.1 m raster's 2048-px block is 10240 of them

    def __init__(self, src: rasterio.io.DatasetReader, grid: Grid, spans: bool):
        self.src, self.grid, self.spans = src, grid, spans
        # no nodata, alpha or mask: every raster pixel has data, and only the footprint counts
        self.all_valid = all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)

    def _under(self, edges: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The first and last raster pixel under each grid pixel between `edges` (in raster pixels);
        first > last where none is. A centre within rounding of a raster pixel's edge has both pixels
        beside the edge (the warper's rounding may have taken either), and none where one is outside."""
        lo, hi = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
        if self.spans:  # a pixel only touching a grid pixel's edge is not under it
            first, last = np.maximum(np.floor(lo + EDGE), 0), np.minimum(np.ceil(hi - EDGE) - 1, size - 1)
        else:
            centre = (lo + hi) / 2
            first, last = np.floor(centre - EDGE), np.floor(centre + EDGE)
            first = np.where((first < 0) | (last > size - 1), last + 1, first)
        return first.astype(np.int64), last.astype(np.int64)

    def _has(self, with_data: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Whether a grid pixel has data, from how many of the `pixels` under it have (uint16)."""
        return with_data > 0 if self.spans else with_data == pixels.astype(np.uint16)

    def dataset_mask(self, window: Window) -> np.ndarray:
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        g, t = self.grid.transform, self.src.transform
        # the grid pixels' edges, in raster pixels (an east-to-west or south-up raster counts backwards)
        cols = self._under((g.c + g.a * np.arange(c0, c0 + w + 1) - t.c) / t.a, self.src.width)
        rows = self._under((g.f + g.e * np.arange(r0, r0 + h + 1) - t.f) / t.e, self.src.height)
        inside_c, inside_r = cols[0] <= cols[1], rows[0] <= rows[1]
        out = np.zeros((h, w), np.uint8)
        if not (inside_c.any() and inside_r.any()):
            return out
        if self.all_valid:
            out[np.ix_(inside_r, inside_c)] = 255
            return out
        c_first, c_last = int(cols[0][inside_c].min()), int(cols[1][inside_c].max())
        first, last = cols[0][inside_c] - c_first, cols[1][inside_c] - c_first + 1
        at = np.flatnonzero(inside_r)
        step = max(1, self.ROWS // max(1, int((rows[1] - rows[0])[at].max()) + 1))
        for k in range(0, len(at), step):  # bounded memory: a strip of grid rows at a time
            chunk = at[k : k + step]
            r_first, r_last = int(rows[0][chunk].min()), int(rows[1][chunk].max())
            box = Window(c_first, r_first, c_last - c_first + 1, r_last - r_first + 1)
            data = self.src.dataset_mask(window=box) > 0
            # running counts of pixels with data, columns then rows (uint16 wraps, but no grid pixel spans
            # 65536 raster pixels, so a count across one stays exact): any pixel under a grid pixel has data
            # (spans), or every one (centres: never data where the warper may have written none)
            counts = np.pad(np.cumsum(data, axis=1, dtype=np.uint16), ((0, 0), (1, 0)))
            across = self._has(counts[:, last] - counts[:, first], last - first)
            counts = np.pad(np.cumsum(across, axis=0, dtype=np.uint16), ((1, 0), (0, 0)))
            lo, hi = rows[0][chunk] - r_first, rows[1][chunk] - r_first + 1
            under = self._has(counts[hi] - counts[lo], (hi - lo)[:, None])
            out[np.ix_(chunk, np.flatnonzero(inside_c))] = np.where(under, 255, 0)
        return out


def _resampled(
    predictor: Predictor,
    view: Any,
    has_data: Any,
    model: Grid,
    out: Grid,
    valid_view: Any,
    writer: _MapWriter,
    folder: Path,
    opts: MapOptions,
    progress: Callable[[int], None],
) -> None:
    """Predict on the model's grid into a temporary logits raster, then read it warped onto the
    output grid (bilinear, or average where the output's pixels are coarser) and threshold there,
    so the mask lies on the input's grid with the input's own nodata. The model's grid reaches up
    to a pixel past the raster, and the input may have nodata inside: logits there (of black input)
    are stored as nodata, so the warp back leaves them out of the pixels beside them."""
    logits_path = folder / "logits.tif"
    with rasterio.open(logits_path, "w", **_profile(model, "int16", LOGIT_NODATA)) as ds:
        strips = _Strips(ds)

        def keep(r0: int, c0: int, logits: np.ndarray) -> None:
            margin = np.rint(np.clip(logits - predictor.cut, -127, 127) * LOGIT_SCALE).astype(np.int16)
            window = Window(c0, r0, logits.shape[1], logits.shape[0])
            strips.put(r0, c0, np.where(has_data.dataset_mask(window=window) > 0, margin, np.int16(LOGIT_NODATA)))

        predictor.stream(
            _reader(view, opts.bands), model.height, model.width, keep, opts.overlap, opts.block, opts.batch, progress
        )
        strips.flush()
    coarser = out.pixel_area_m2(1.0) > model.pixel_area_m2(1.0)
    reach = _reach(model, out)
    with (
        rasterio.open(logits_path) as ds,
        _warp(ds, out, Resampling.average if coarser else Resampling.bilinear) as back,
    ):
        for window in _blocks(out, opts.block):
            r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
            top = left = 0
            margin = back.read(1, window=window, masked=True)
            known = ~np.ma.getmaskarray(margin)
            if _spreads_across(known, window, out, reach):
                # read `reach` pixels around the block: values spread across its edges as they would
                # with no blocks, so the map does not depend on --block
                top, left = min(reach, r0), min(reach, c0)
                bottom, right = min(reach, out.height - r0 - h), min(reach, out.width - c0 - w)
                around = Window(c0 - left, r0 - top, left + w + right, top + h + bottom)
                margin = back.read(1, window=around, masked=True)
                known = ~np.ma.getmaskarray(margin)
            # at a rotated or sheared footprint's edge the warper may give a pixel with data no value
            # (the model pixels under it lie mostly outside): it takes its neighbours' margin. Values
            # spread through nodata pixels too, or a column of data between nodata ones is never reached
            values, known = _grow(margin.filled(0).astype(np.float32), known, reach)
            values, known = values[top : top + h, left : left + w], known[top : top + h, left : left + w]
            logits = values / LOGIT_SCALE + np.float32(predictor.cut)
            # a pixel with data that no model pixel with data reaches has no prediction: nodata
            writer.put(r0, c0, logits, (valid_view.dataset_mask(window=window) > 0) & known)


def _spreads_across(known: np.ndarray, window: Window, grid: Grid, reach: int) -> bool:
    """Whether `_grow` could take values across an edge `window` shares with another block of `grid`: a
    pixel without a value within `reach` of it (else every pixel's rings lie inside the block)."""
    r0, c0, (h, w) = int(window.row_off), int(window.col_off), known.shape
    near = np.zeros_like(known)
    if r0 > 0:
        near[:reach] = True
    if r0 + h < grid.height:
        near[max(h - reach, 0) :] = True
    if c0 > 0:
        near[:, :reach] = True
    if c0 + w < grid.width:
        near[:, max(w - reach, 0) :] = True
    return bool((near & ~known).any())


def _reach(model: Grid, out: Grid) -> int:
    """How many rings of output pixels a warped-back value may need to spread: the output rows or columns a
    model pixel spans, plus one (on a 45-degree raster its side times 1.4: counted by its side, sparse
    pixels with data were left without a value, as nodata)."""
    inv, m = ~out.transform, model.transform
    across = abs(inv.a * m.a + inv.b * m.d) + abs(inv.a * m.b + inv.b * m.e)
    down = abs(inv.d * m.a + inv.e * m.d) + abs(inv.d * m.b + inv.e * m.e)
    return math.ceil(max(across, down) - 1e-9) + 1


def _grow(values: np.ndarray, known: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels without a value take the mean of their 8 neighbours that have one, a ring at a time for
    up to `steps` rings; those still out of reach stay unknown."""
    h, w = known.shape
    shifts = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    for _ in range(steps):
        todo = ~known
        if not todo.any():
            break
        v, k = np.pad(np.where(known, values, 0), 1), np.pad(known, 1).astype(np.float32)
        total = sum(v[dy : dy + h, dx : dx + w] for dy, dx in shifts)
        count = sum(k[dy : dy + h, dx : dx + w] for dy, dx in shifts)
        take = todo & (count > 0)
        values = np.where(take, total / np.maximum(count, 1), values)
        known = known | take
    return values, known


def _signed_area(ring: list) -> float:
    """Shoelace area of a closed ring of (x, y) points: positive when it runs counterclockwise."""
    # from the first vertex: products of absolute coordinates (a UTM northing of 9.9e6) lose the area's
    # last digits, 0.2 % of a 0.25 m2 patch
    xs = np.array([p[0] for p in ring], np.float64) - ring[0][0]
    ys = np.array([p[1] for p in ring], np.float64) - ring[0][1]
    return float(np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1])) / 2


def _ring_area(ring: list) -> float:
    return abs(_signed_area(ring))


def _right_hand(coordinates: list) -> list:
    """A polygon's rings as RFC 7946 orders them: the outer ring counterclockwise, holes clockwise
    (GDAL traces a south-up raster's rings the other way round)."""
    return [list(r) if (_signed_area(r) > 0) == (i == 0) else list(r)[::-1] for i, r in enumerate(coordinates)]


def polygon_area(coordinates: list) -> float:
    """Area of a GeoJSON polygon's coordinates (outer ring minus holes), in squared CRS units."""
    return _ring_area(coordinates[0]) - sum(_ring_area(r) for r in coordinates[1:])


def _rounded(coordinates: Any, digits: int) -> Any:
    if isinstance(coordinates, (list, tuple)) and coordinates and isinstance(coordinates[0], (int, float)):
        return [round(c, digits) for c in coordinates]
    return [_rounded(c, digits) for c in coordinates]


def write_polygons(mask_path: Path, out: Path, min_area_m2: float, unit_m: float, name: str = "") -> int:
    """Forest polygons of a mask as GeoJSON, each with its area_m2; those under min_area_m2 dropped.

    GDAL polygonizes the mask file band by scanlines (rasterio.features.shapes on a Band), so the
    mask is never held in memory. Coordinates stay in the mask's CRS (named by a 'crs' member, as
    QGIS and GDAL read it); a CRS without an EPSG code is written as WGS 84 lon/lat instead, but a
    local (engineering) grid, which no transformation links to lon/lat, in its own coordinates with
    no CRS named. Returns the number of polygons written.
    """
    written = 0
    with (
        rasterio.Env(**GDAL_ENV),
        rasterio.open(mask_path) as ds,
        atomic_path(out) as tmp,
        open(tmp, "w", encoding="utf-8") as f,
    ):
        epsg = ds.crs.to_epsg()
        header: dict = {"type": "FeatureCollection", "name": name or out.stem}
        if epsg:
            header["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
        f.write(json.dumps(header)[:-1] + ', "features": [\n')
        band = rasterio.band(ds, 1)
        # mask=band: only non-zero pixels (forest 1, nodata 255) are traced; nodata shapes are skipped below
        for geometry, value in rasterio.features.shapes(band, mask=band, transform=ds.transform):
            if value != FOREST:
                continue
            area = polygon_area(geometry["coordinates"]) * unit_m**2
            if area < min_area_m2 * (1 - 1e-9):  # the coordinates' sum can fall a hair short of a patch's exact area
                continue
            if epsg or not (ds.crs.is_projected or ds.crs.is_geographic):
                geometry = {"type": "Polygon", "coordinates": _rounded(_right_hand(geometry["coordinates"]), 3)}
            else:
                geometry = transform_geom(ds.crs, "EPSG:4326", geometry)
                geometry = {"type": "Polygon", "coordinates": _rounded(_right_hand(geometry["coordinates"]), 8)}
            # 10 significant digits: pixels of 5 cm hold 0.0025 m2, which two decimals read as 0
            feature = {"type": "Feature", "properties": {"area_m2": float(f"{area:.10g}")}, "geometry": geometry}
            f.write((",\n" if written else "") + json.dumps(feature))
            written += 1
        f.write("\n]}\n")
    return written
