"""Pictures decoded as a viewer shows them, or refused with the reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from forestseg.images import EXIF_ORIENTATION, ImageError, decode


def picture() -> np.ndarray:
    """A 24x40 RGB picture with no symmetry: every orientation of it looks different."""
    y, x = np.mgrid[0:24, 0:40]
    return np.stack([x * 6, y * 10, (x * y) % 256], -1).astype(np.uint8)


def jpeg(pixels: np.ndarray, orientation=None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=100, exif=exif)
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_shown_as_pillow_shows_it(orientation: int) -> None:
    data = jpeg(picture(), orientation)
    with Image.open(io.BytesIO(data)) as im:
        viewer = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    ours = decode(data).pixels.astype(int)
    assert ours.shape == viewer.shape and np.abs(ours - viewer).mean() < 2


@pytest.mark.parametrize("where", ["after-other-segments", "xmp-only"])
def test_an_orientation_pillow_finds_is_found_wherever_it_is(where: str) -> None:
    """Past 64 KiB of other header segments, or only in XMP: Pillow (and so the index's tile size) applies it."""
    if where == "xmp-only":
        xmp = (
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
        )
        out = io.BytesIO()
        Image.fromarray(picture()).save(out, format="JPEG", quality=100, xmp=xmp)
        data = out.getvalue()
    else:
        app2 = b"\xff\xe2" + (65533).to_bytes(2, "big") + bytes(65531)  # e.g. an ICC profile's segments
        data = jpeg(picture(), 6)
        data = data[:2] + app2 * 2 + data[2:]
    with Image.open(io.BytesIO(data)) as im:
        viewer = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    ours = decode(data).pixels.astype(int)
    assert ours.shape == viewer.shape == (40, 24, 3) and np.abs(ours - viewer).mean() < 2


def ascii_orientation_exif(text: bytes) -> bytes:
    """An EXIF block whose orientation tag is ASCII text (type 2), as a broken camera writes it."""
    entry = (0x0112).to_bytes(2, "little") + (2).to_bytes(2, "little") + len(text).to_bytes(4, "little") + text
    return b"Exif\x00\x00" + b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little") + entry + bytes(4)


@pytest.mark.parametrize("orientation", [0, 9, "ascii"])
def test_a_malformed_orientation_is_ignored_as_viewers_ignore_it(orientation) -> None:
    if orientation == "ascii":
        out = io.BytesIO()
        Image.fromarray(picture()).save(out, format="JPEG", quality=100, exif=ascii_orientation_exif(b"abc\x00"))
        data = out.getvalue()
    else:
        data = jpeg(picture(), orientation)
    plain = decode(jpeg(picture())).pixels
    decoded = decode(data)
    # read as no turn (1): mask checks compare a picture with its mask as shown by its orientation
    assert decoded.orientation == 1 and np.array_equal(decoded.pixels, plain)


def test_a_16_bit_colour_png_is_refused_not_read_by_its_high_bytes() -> None:
    import zlib

    h, w = 4, 5
    rows = b"".join(b"\x00" + np.full((w, 3), 200, ">u2").tobytes() for _ in range(h))  # values that fit 8 bits

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    assert Image.open(io.BytesIO(png)).mode == "RGB"  # what Pillow makes of it: 8 bits, the high bytes (0)
    with pytest.raises(ImageError, match="is a 16-bit colour PNG; save it with 8 bits per channel"):
        decode(png)


@pytest.mark.parametrize("bands", [3, 4])
def test_a_16_bit_colour_tiff_is_refused_not_read_by_its_high_bytes(tmp_path, bands: int) -> None:
    """Pillow reads a 16-bit RGB(A) TIFF as 8-bit RGB of the high bytes: 12-bit camera data near black."""
    import rasterio

    values = np.repeat(picture().astype(np.uint16)[..., :1] * 16, bands, axis=-1)
    path = tmp_path / "t.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=40, height=24, count=bands, dtype="uint16", photometric="RGB"
    ) as ds:
        ds.write(values.transpose(2, 0, 1))
    assert Image.open(path).mode == "RGB"  # what Pillow makes of it
    with pytest.raises(ImageError, match="is a 16-bit colour TIFF; save it with 8 bits per channel"):
        decode(path.read_bytes())
    eight = io.BytesIO()
    Image.fromarray(picture()).save(eight, format="TIFF")
    assert np.array_equal(decode(eight.getvalue()).pixels, picture())


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "I;16"])
def test_a_colour_key_is_transparency_as_viewers_show_it(mode: str) -> None:
    """A PNG tRNS colour key (GDAL writes one for nodata): its pixels are alpha 0, never photo."""
    grey = picture()[..., 0]
    if mode == "I;16":  # 16-bit grey whose values fit 8 bits (accepted)
        image = Image.fromarray(grey.astype(np.uint16))
    elif mode == "1":
        image = Image.fromarray(grey > 100)
    else:
        image = Image.fromarray(picture()).convert(mode)
    key = image.getpixel((0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=key)
    decoded = decode(out.getvalue())
    assert decoded.alpha is not None and decoded.pixels.shape == np.asarray(image).shape
    values = np.asarray(image.convert("L") if mode == "1" else image)  # 1-bit: getpixel gives 0 / 255
    keyed = (values == key).all(-1) if mode == "RGB" else values == key
    assert keyed.any() and not keyed.all() and np.array_equal(decoded.alpha == 0, keyed)
    assert decoded.colour_key == key and f"with colour key {key}" in decoded.kind  # the index names it so


def test_a_float_image_is_refused_with_8_bit_advice() -> None:
    out = io.BytesIO()
    Image.fromarray(np.ones((4, 5), np.float32)).save(out, format="TIFF")
    with pytest.raises(ImageError, match=r"^is a 32-bit float TIFF; save it with 8-bit integers \(a mask as 0/255"):
        decode(out.getvalue())


def test_a_cmyk_jpeg_is_refused_with_its_own_reason() -> None:
    out = io.BytesIO()
    Image.fromarray(picture()).convert("CMYK").save(out, format="JPEG")
    with pytest.raises(ImageError) as refused:
        decode(out.getvalue())
    assert str(refused.value) == "is a CMYK JPEG; convert it to RGB"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_picture_over_pillows_pixel_limit_is_refused_in_every_format(fmt: str, monkeypatch) -> None:
    """Pillow refuses a PNG over 2 x MAX_IMAGE_PIXELS; a JPEG, decoded by simplejpeg, is held to the same."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 90, 20)).save(buf, format=fmt)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1200 px > 2 x 500
    with pytest.raises(ImageError, match="is too large to read whole"):
        decode(buf.getvalue())


@pytest.mark.parametrize("colour_type, bands, kind", [(2, 3, "colour"), (6, 4, "colour"), (4, 2, "grey\\+alpha")])
def test_16_bit_colour_pngs_with_or_without_alpha_are_refused(colour_type: int, bands: int, kind: str) -> None:
    """RGB, RGBA and grey+alpha alike: Pillow keeps each 16-bit value's high byte (0 here) without a word."""
    import zlib

    h, w = 4, 5
    rows = b"".join(b"\x00" + np.full((w, bands), 200, ">u2").tobytes() for _ in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, colour_type, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match=f"is a 16-bit {kind} PNG; save it with 8 bits per channel"):
        decode(png)


def test_a_1_bit_image_decodes_to_0_and_255() -> None:
    """A 1-bit mask (Pillow's mode '1', read as bools) shows black and white: 0 and 255, not 0 and 1."""
    bits = picture()[..., 0] > 100
    out = io.BytesIO()
    Image.fromarray(bits).convert("1").save(out, format="PNG")
    got = decode(out.getvalue())
    assert got.pixels.dtype == np.uint8 and got.alpha is None
    assert np.array_equal(got.pixels, np.where(bits, 255, 0).astype(np.uint8))


@pytest.mark.parametrize("values, says", [((-1, 0), "from -1 to 0"), ((-5, 300), "from -5 to 300"), ((0, 3), None)])
def test_32_bit_grey_with_negative_values_is_refused_not_wrapped(values: tuple, says: str | None) -> None:
    """-1 as uint8 is 255: a mask of 0 and -1 (nodata) would read -1 as forest under 0/255."""
    array = np.zeros((6, 7), np.int32)
    array[:3] = values[0]
    array[3:] = values[1]
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="TIFF")
    if says:
        with pytest.raises(ImageError, match=f"^is a 32-bit grey image with values {says}; save it with 8 bits"):
            decode(out.getvalue())
    else:
        assert np.array_equal(decode(out.getvalue()).pixels, array.astype(np.uint8))


@pytest.mark.parametrize("top, refused", [(255, False), (256, True), (1000, True)])
def test_16_bit_grey_is_accepted_only_where_its_values_fit_8_bits(top: int, refused: bool) -> None:
    """256 would wrap to 0 as uint8: the first value that does not fit is refused, not read as another."""
    values = np.zeros((6, 7), np.uint16)
    values[2, 3] = top
    out = io.BytesIO()
    Image.fromarray(values).save(out, format="PNG")
    if refused:
        with pytest.raises(ImageError, match=f"is a 16-bit grey image with values up to {top}; save it with 8 bits"):
            decode(out.getvalue())
    else:
        got = decode(out.getvalue()).pixels
        assert got.dtype == np.uint8 and np.array_equal(got, values.astype(np.uint8))


@pytest.mark.parametrize(
    "data, says",
    [
        (b"", r"^is empty \(0 bytes\): copy or download it again$"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 12345\n",
            r"^is a Git LFS pointer, not the image: fetch the files with `git lfs pull`$",
        ),
    ],
)
def test_an_empty_file_and_a_git_lfs_pointer_say_what_they_are(data: bytes, says: str) -> None:
    with pytest.raises(ImageError, match=says):
        decode(data)


def test_a_picture_past_pillows_pixel_limit_is_read_without_its_two_line_warning(tmp_path) -> None:
    """Between Pillow's limit and twice it, a large aerial photo: no "decompression bomb" lines."""
    import subprocess
    import sys

    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (9500, 9500)).save(path)  # 90 Mpx: over the limit (89.5), under twice it
    code = f"from forestseg.images import decode; print(decode(open({str(path)!r}, 'rb').read()).pixels.shape)"
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "(9500, 9500, 3)", out.stderr
    assert "DecompressionBomb" not in out.stderr, out.stderr


@pytest.mark.parametrize("cut", [0, 2, 3, 40])
def test_a_jpeg_without_its_end_marker_decodes_but_one_missing_data_is_refused(cut: int) -> None:
    data = jpeg(picture())
    assert data.endswith(b"\xff\xd9")
    if cut <= 2:  # whole, or only the end marker dropped: the same pixels
        assert np.array_equal(decode(data[: len(data) - cut]).pixels, decode(data).pixels)
    else:
        with pytest.raises(ImageError, match="cannot be decoded"):
            decode(data[: len(data) - cut])


def test_a_jpeg_padded_after_its_end_marker_still_decodes() -> None:
    data = jpeg(picture())
    assert np.array_equal(decode(data + b"\0" * 16).pixels, decode(data).pixels)


def test_a_progressive_jpeg_cut_between_two_scans_is_refused_not_decoded_from_the_scans_it_has() -> None:
    out = io.BytesIO()
    Image.fromarray(picture()).save(out, format="JPEG", quality=90, progressive=True)
    data = out.getvalue()
    scans = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    assert len(scans) > 2
    for cut in scans[1:]:  # libjpeg decodes the scans before the cut without a warning
        with pytest.raises(ImageError, match="cannot be decoded"):
            decode(data[:cut])


def test_a_camera_jpeg_without_jfif_keeps_its_orientation() -> None:
    """Cameras write Exif (APP1) and no JFIF (APP0): the orientation is found there too."""
    data = jpeg(picture(), 6)
    assert data[2:4] == b"\xff\xe0"  # Pillow writes JFIF first: cut it, as a camera's file lacks it
    camera = data[:2] + data[4 + int.from_bytes(data[4:6], "big") :]
    decoded = decode(camera)
    assert decoded.orientation == 6 and decoded.pixels.shape == (40, 24, 3)


@pytest.mark.parametrize("orientation", [0, 9])
def test_an_out_of_range_orientation_of_a_png_reads_as_none(orientation: int) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    out = io.BytesIO()
    Image.fromarray(picture()).save(out, format="PNG", exif=exif)
    decoded = decode(out.getvalue())
    assert decoded.orientation == 1 and np.array_equal(decoded.pixels, picture())


def palette_with_holes(mode: str) -> Image.Image:
    """An 8x8 palette picture whose first two rows are index 0, transparent (16 pixels)."""
    index = np.ones((8, 8), np.uint8)
    index[:2] = 0
    im = Image.fromarray(index, "P")
    im.putpalette([0, 0, 0, 20, 120, 40] + [0] * 762)
    if mode == "PA":
        im = im.convert("PA")
        im.putalpha(Image.fromarray(np.where(index == 0, 0, 255).astype(np.uint8)))
    return im


@pytest.mark.parametrize("mode, fmt", [("P", "PNG"), ("PA", "TIFF")])
def test_a_palette_pictures_transparency_is_kept(mode: str, fmt: str) -> None:
    """A transparent palette index (PNG tRNS) or a palette+alpha TIFF: its holes stay holes, never RGB."""
    out = io.BytesIO()
    im = palette_with_holes(mode)
    im.save(out, format=fmt, **({"transparency": 0} if mode == "P" else {}))
    decoded = decode(out.getvalue())
    assert decoded.alpha is not None and int((decoded.alpha < 255).sum()) == 16
    assert decoded.pixels.shape == (8, 8, 3) and tuple(decoded.pixels[7, 7]) == (20, 120, 40)


def test_a_cmyk_tiff_is_refused_with_its_own_reason() -> None:
    out = io.BytesIO()
    Image.new("CMYK", (8, 8), (200, 0, 0, 255)).save(out, format="TIFF")
    with pytest.raises(ImageError, match="is a CMYK TIFF; convert it to RGB"):
        decode(out.getvalue())


@pytest.mark.parametrize("orientation, drawn", [(3, False), (2, False), (6, True), (8, True)])
def test_only_a_quarter_turn_of_an_oblong_tile_tells_which_grid_a_mask_was_drawn_on(orientation, drawn) -> None:
    """Turned 180° or mirrored, a 32x48 picture keeps its shape: an untagged mask fits both grids."""
    from forestseg.images import Picture, drawn_as_shown

    shown = (48, 32) if orientation >= 5 else (32, 48)
    tagged = Picture(np.zeros((*shown, 3), np.uint8), None, "RGB JPEG", orientation)
    plain = Picture(np.zeros(shown, np.uint8), None, "L PNG", 1)
    assert drawn_as_shown(tagged, plain) is drawn
    # both tagged (another turn each): neither is a plain file drawn on the other's grid as shown; the
    # index refuses such a pair for its differing orientations
    other = Picture(np.zeros(shown, np.uint8), None, "L JPEG", 3 if orientation >= 5 else 6)
    assert drawn_as_shown(tagged, other) is False and drawn_as_shown(other, tagged) is False


def test_a_16_bit_rgba_tiff_with_its_alpha_band_is_refused(tmp_path) -> None:
    """With ExtraSamples marking band 4 as alpha, Pillow opens a 16-bit TIFF as RGBA of the high bytes."""
    import rasterio

    values = np.repeat(picture().astype(np.uint16)[..., :1] * 16, 4, axis=-1)
    path = tmp_path / "t.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=40, height=24, count=4, dtype="uint16", photometric="RGB", alpha="YES"
    ) as ds:
        ds.write(values.transpose(2, 0, 1))
    assert Image.open(path).mode == "RGBA"  # what Pillow makes of it
    with pytest.raises(ImageError, match="is a 16-bit colour TIFF; save it with 8 bits per channel"):
        decode(path.read_bytes())


def test_a_grey_and_alpha_png_decodes_its_grey_band_and_its_alpha_apart() -> None:
    grey = np.where(np.arange(40)[None, :] < 20, 255, 0).repeat(24, 0).astype(np.uint8)  # a 0/255 mask
    alpha = np.full((24, 40), 255, np.uint8)
    alpha[:4] = 0
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(buffer, format="PNG")
    got = decode(buffer.getvalue())
    assert np.array_equal(got.pixels, grey) and np.array_equal(got.alpha, alpha)
