"""Decode picture files the way a viewer shows them; index and predict both read through here.

JPEGs decode with simplejpeg (fast, releases the GIL); anything else with Pillow. EXIF orientation
is applied on both paths, palette images become their colours, 16-bit files are accepted only
where their values fit 8 bits, and what cannot be read right is refused with the reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # then IHDR: bit depth at byte 24, colour type at 25


class ImageError(Exception):
    """A file that cannot be read right; the message says why (without the path)."""


class WideGreyError(ImageError):
    """A grey image of more than 8 bits: fine to convert as a mask, never usable as a photo."""

    def __init__(self, what: str) -> None:
        self.what = what  # "a 16-bit grey image with values up to 3000"
        super().__init__(f"is {what}; save it with 8 bits per channel")


@dataclass(frozen=True)
class Picture:
    """Decoded pixels: (H, W) grey or (H, W, 3) RGB uint8, the alpha band if any, the source kind and
    the EXIF orientation that was applied (1: none) and the colour key that made the alpha, if one did."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    kind: str  # e.g. "RGB JPEG", "Gray JPEG", "RGBA PNG", "P PNG"
    orientation: int = 1
    # the value a PNG tRNS chunk marks transparent (GDAL writes nodata so), if any
    colour_key: int | tuple | None = None


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to (H, W[, C]) pixels, as viewers do."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, -1)[::-1],  # transverse: the anti-diagonal mirror
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](pixels)) if orientation in ops else pixels


def _has_app1(data: bytes) -> bool:
    """Whether a JPEG has an APP1 segment (EXIF or XMP, where an orientation lives) before its scan."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no header segment after them
            return False
        if marker == 0xE1:
            return True
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return False


def _jpeg_orientation(data: bytes) -> int:
    """The EXIF (or XMP) orientation (1-8), as Pillow reads it; 1 where there is none or it is not one of them."""
    if not _has_app1(data):  # no EXIF or XMP block: the common case, no second parse
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels decode without it
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _eight_bit(array: np.ndarray, mode: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    low, top = int(array.min(initial=0)), int(array.max(initial=0))
    if low < 0 or top > 255:
        bits = {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit"}.get(mode, mode)
        raise WideGreyError(f"a {bits} grey image with values {f'from {low} to' if low < 0 else 'up to'} {top}")
    return array.astype(np.uint8)  # 16-bit class ids or 0/1 values that fit 8 bits


SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini"}  # what Windows' Explorer leaves among pictures


def hidden(name: str) -> bool:
    """A file that the system or a file manager keeps beside pictures, none of the user's: a hidden one
    (.DS_Store, macOS's ._a.png beside a.png) or Windows' Thumbs.db and desktop.ini."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def visible_files(folder: Path) -> list[Path]:
    """A folder's entries in name order, `hidden` ones left out (none where it is no folder)."""
    return [p for p in sorted(folder.iterdir()) if not hidden(p.name)] if folder.is_dir() else []


RASTER_SUFFIXES = {".tif", ".tiff"}  # GeoTIFFs: forest maps, labelled rasters, `forestseg tile`
MAP_SUFFIXES = RASTER_SUFFIXES | {".jp2", ".vrt"}  # read by GDAL: one it cannot read stops the run
# read as pictures unless their sidecars (world file, .aux.xml) give them a CRS and a grid; any other
# file GDAL reads is a raster when it has a georeference
PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
IMAGE_SUFFIXES = PICTURE_SUFFIXES | MAP_SUFFIXES  # all that predict reads
# world files: a picture's or raster's pixel grid, beside it (GDAL reads them; a CRS comes from .aux.xml or .prj)
WORLD_FILE_SUFFIXES = (
    ".tfw",
    ".tifw",
    ".tiffw",
    ".jgw",
    ".jpgw",
    ".jpegw",
    ".pgw",
    ".pngw",
    ".bpw",
    ".bmpw",
    ".j2w",
    ".wld",
)
# files beside an image that are not one: world files, GDAL's .aux.xml, overviews and external masks
# (a.tif.msk), QGIS styles, projections; never reported as skipped inputs
SIDECAR_SUFFIXES = frozenset({*WORLD_FILE_SUFFIXES, ".xml", ".aux", ".ovr", ".msk", ".qml", ".prj"})


# Pillow warns of a "decompression bomb" in two lines for a picture between its pixel limit and twice
# that: a large aerial photo is none (past twice, decode says in one line what to do)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

LFS_POINTER = b"version https://git-lfs.github.com/spec/"  # what a Git LFS file is before `git lfs pull`


def drawn_as_shown(img: Picture, msk: Picture) -> bool:
    """Whether an untagged file of a pair can only lie on the other's grid as shown: the tagged one turned
    by 90° (orientation 5-8) and not square, so its shape as shown is not its shape as stored."""
    tagged, plain = (img, msk) if msk.orientation == 1 else (msk, img)
    shown = tagged.pixels.shape[:2]
    return (
        plain.orientation == 1 and tagged.orientation >= 5 and shown[0] != shown[1] and plain.pixels.shape[:2] == shown
    )


SOF_BASELINE = (0xC0, 0xC1)  # sequential Huffman frames; progressive ones (0xC2) come in several scans


def _one_scan_jpeg(data: bytes) -> bool:
    """Whether `data` is a sequential JPEG whose first scan holds every colour component: then its scan
    runs to the end of the file, and the strict decoder refuses it if any of it is missing. A
    progressive JPEG (or one scan per component) cut between two scans would decode from the scans it
    has, without a warning: those keep Pillow's refusal as truncated."""
    pos, components = 2, None
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if marker not in SOF_BASELINE:
                return False
            components = data[pos + 9] if pos + 9 < len(data) else None
        elif marker == 0xDA:  # the first scan: its component count
            return components is not None and pos + 4 < len(data) and data[pos + 4] == components
        pos += 2 + length
    return False


def decode(data: bytes) -> Picture:
    """Decode image bytes; raises ImageError for what cannot be read right."""
    if not data:
        raise ImageError("is empty (0 bytes): copy or download it again")
    if data.startswith(LFS_POINTER):
        raise ImageError("is a Git LFS pointer, not the image: fetch the files with `git lfs pull`")
    if data[:3] == b"\xff\xd8\xff" and not data.rstrip(b"\0").endswith(b"\xff\xd9") and _one_scan_jpeg(data):
        # a JPEG without its end marker (some cameras and copy tools drop it): decoded whole or, where
        # any scan data is missing too, refused by the strict decoder below ("premature end of data")
        data += b"\xff\xd9"
    if simplejpeg.is_jpeg(data):
        try:
            height, width, space, _ = simplejpeg.decode_jpeg_header(data)
            if space not in ("YCbCr", "RGB", "Gray"):
                raise ImageError(f"is a {space} JPEG; convert it to RGB")
            limit = Image.MAX_IMAGE_PIXELS  # the limit Pillow puts on every other format (None: lifted)
            if limit is not None and height * width > 2 * limit:
                raise ImageError(
                    f"is too large to read whole ({width}x{height} px, over Pillow's limit of "
                    f"{2 * limit} px); cut it into tiles, or make it a GeoTIFF (gdal_translate) to "
                    "map it window by window"
                )
            pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if space == "Gray" else "RGB")
        except ImageError:
            raise
        except Exception as e:
            raise ImageError(f"cannot be decoded ({type(e).__name__}: {e})") from None
        pixels = pixels[..., 0] if space == "Gray" else pixels  # GRAY decodes to (H, W, 1)
        orientation = _jpeg_orientation(data)
        return Picture(_orient(pixels, orientation), None, f"{space if space == 'Gray' else 'RGB'} JPEG", orientation)
    if data[:8] == PNG_SIGNATURE and len(data) > 25 and data[24] == 16 and data[25] in (2, 4, 6):
        # Pillow reads 16-bit colour and grey+alpha PNGs as 8-bit, keeping each value's high byte: silently wrong
        raise ImageError(
            f"is a 16-bit {'grey+alpha' if data[25] == 4 else 'colour'} PNG; save it with 8 bits per channel"
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "image"
            if fmt == "TIFF" and im.info.get("compression") in ("jpeg", "tiff_jpeg"):  # lossy: JPEG noise as in a .jpg
                fmt = "TIFF (JPEG-compressed)"
            bits = getattr(im, "tag_v2", {}).get(258, 8)  # a TIFF's bits per sample: one value or one per band
            depth = max(bits) if isinstance(bits, tuple) else bits
            if im.mode in ("RGB", "RGBA") and depth > 8:
                # as for PNGs: Pillow keeps each value's high byte (12-bit camera data reads near black)
                raise ImageError(f"is a {depth}-bit colour {fmt}; save it with 8 bits per channel")
            key = None  # a PNG tRNS colour key: GDAL writes a nodata value as one
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode in ("RGB", "L", "1") and "transparency" in im.info:  # a colour key (PNG tRNS): alpha 0 there
                key = im.info["transparency"]
                im = im.convert("RGBA" if mode == "RGB" else "LA")
            elif mode == "F":
                raise ImageError(f"is a 32-bit float {fmt}; save it with 8-bit integers (a mask as 0/255 or 0/1 grey)")
            elif mode not in ("1", "L", "LA", "RGB", "RGBA") and not mode.startswith("I"):
                raise ImageError(f"is a {mode} {fmt}; convert it to RGB")
            array = np.asarray(im)
            if mode.startswith("I") and isinstance(im.info.get("transparency"), int):
                key = im.info["transparency"]  # 16-bit grey: Pillow keeps the key, applied below
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("cannot be decoded: not a JPEG nor any image format Pillow reads") from None
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"is too large to read whole ({' '.join(str(e).split())}); cut it into tiles, or make it a "
            "GeoTIFF (gdal_translate) to map it window by window"
        ) from None
    except Exception as e:  # truncated or corrupt files: refused, never a crash
        raise ImageError(f"cannot be decoded ({type(e).__name__}: {e})") from None
    kind = f"{mode} {fmt}" + (f" with colour key {key}" if key is not None else "")
    if array.ndim == 3 and array.shape[2] in (2, 4):  # LA / RGBA: colour bands plus alpha
        colour = array[..., 0] if array.shape[2] == 2 else array[..., :3]
        return Picture(np.ascontiguousarray(_eight_bit(colour, mode)), array[..., -1].copy(), kind, orientation, key)
    if array.ndim == 3 and array.shape[2] != 3:
        raise ImageError(f"is a {kind} with {array.shape[2]} bands; expected RGB")
    alpha = np.where(array == key, 0, 255).astype(np.uint8) if key is not None else None
    return Picture(_eight_bit(array, mode), alpha, kind, orientation, key)
