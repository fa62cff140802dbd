"""forestseg.dataset: index a Kaggle-layout folder (validate, decode, pack) and split it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_set
from PIL import Image

from forestseg.config import SplitConfig
from forestseg.dataset import DUPLICATE, DataError, build_index, format_report, split_index, split_summary

ROWS = 16  # tiny_set: 4 scenes x 2x2 tiles of 32x32
BAD_ROW = 5  # the pair a bad-input test damages: mid-list, so later rows must shift up in the arrays


def build(root: Path, out: Path):
    return build_index(root, out / "images.npy", out / "masks.npy", workers=2)


def rows_of(root: Path) -> list[tuple[str, str]]:
    return list(pd.read_csv(root / "meta_data.csv", dtype=str).itertuples(index=False, name=None))


def decode_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def decode_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return (np.asarray(im.convert("L")) >= 128).astype(np.uint8)


def save_jpeg(path: Path, mode: str, size: int, fill) -> None:
    Image.new(mode, (size, size), fill).save(path, format="JPEG")


def assert_accounted(report: dict, index: pd.DataFrame) -> None:
    """Nothing silently dropped: every row of meta_data.csv is either valid or skipped."""
    assert report["valid"] + report["skipped"] == report["rows"]
    assert report["skipped"] == len(report["skipped_pairs"])
    assert len(index) == report["valid"]


def assert_packed_match_files(root: Path, index: pd.DataFrame, out: Path) -> None:
    images, masks = np.load(out / "images.npy"), np.load(out / "masks.npy")
    assert len(images) == len(masks) == len(index)
    for i, (image, mask) in enumerate(zip(index["image"], index["mask"])):
        assert np.array_equal(images[i], decode_image(root / "images" / image)), f"row {i} image"
        assert np.array_equal(masks[i], decode_mask(root / "masks" / mask)), f"row {i} mask"


# --- a good folder -------------------------------------------------------------------------------


@pytest.fixture
def built(tiny_set, tmp_path):
    out = tmp_path / "out"
    index, report = build(tiny_set, out)
    return tiny_set, out, index, report


def test_packed_arrays_have_the_right_shape_and_dtype(built):
    _, out, index, _ = built
    images, masks = np.load(out / "images.npy"), np.load(out / "masks.npy")
    assert (images.dtype, images.shape) == (np.uint8, (ROWS, 32, 32, 3))
    assert (masks.dtype, masks.shape) == (np.uint8, (ROWS, 32, 32))


def test_masks_are_binary(built):
    _, out, _, _ = built
    assert set(np.unique(np.load(out / "masks.npy"))) <= {0, 1}


def test_packed_rows_are_the_index_rows(built):
    root, out, index, _ = built
    assert_packed_match_files(root, index, out)


def test_index_lists_every_row_in_csv_order(built):
    root, _, index, report = built
    assert list(zip(index["image"], index["mask"])) == rows_of(root)
    assert (report["rows"], report["valid"], report["skipped"], report["unlisted_images"]) == (ROWS, ROWS, 0, 0)
    assert report["tile_size"] == [32, 32]


def test_forest_columns_match_the_masks(built):
    _, out, index, _ = built
    masks = np.load(out / "masks.npy")
    assert index["forest_pixels"].tolist() == masks.sum(axis=(1, 2)).tolist()
    assert (index["pixels"] == 32 * 32).all()
    np.testing.assert_allclose(index["forest_fraction"], masks.mean(axis=(1, 2)), atol=1e-6)


def test_report_forest_fraction_is_pixel_weighted(built):
    _, out, _, report = built
    assert report["forest_fraction"] == pytest.approx(np.load(out / "masks.npy").mean(), abs=1e-6)


def test_scene_is_the_number_before_sat(built):
    _, _, index, report = built
    assert index["scene"].tolist() == [name.split("_sat_")[0] for name in index["image"]]
    assert report["scenes"] == index["scene"].nunique() == 4


# --- bad pairs: skipped with a reason, never silently dropped ------------------------------------


def missing(path: Path) -> None:
    path.unlink()


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00 this is not a JPEG \xff" * 20)


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def image_48px(path: Path) -> None:
    save_jpeg(path, "RGB", 48, (30, 80, 30))


def mask_16px(path: Path) -> None:
    save_jpeg(path, "RGB", 16, (255, 255, 255))


def grayscale(path: Path) -> None:
    save_jpeg(path, "L", 32, 90)


def cmyk(path: Path) -> None:
    save_jpeg(path, "CMYK", 32, (60, 0, 60, 100))


def rgba_png(path: Path) -> None:
    rgba = np.full((32, 32, 4), (30, 80, 30, 255), np.uint8)
    rgba[0, 0, 3] = 0  # one transparent pixel: not a whole photo
    Image.fromarray(rgba).save(path, format="PNG")  # keeps the .jpg name


def transparent_mask(path: Path) -> None:
    """White where forest, transparent elsewhere: the forest is in the alpha band, not in the values."""
    alpha = np.zeros((32, 32), np.uint8)
    alpha[:, :16] = 255
    Image.fromarray(np.dstack([np.full((32, 32, 3), 255, np.uint8), alpha])).save(path, format="PNG")


def nodata_keyed_mask(path: Path) -> None:
    """0/255 grey with 0 as its PNG colour key, as GDAL writes a mask whose nodata is 0."""
    Image.fromarray(decode_mask(path) * 255).save(path, format="PNG", transparency=0)


BAD_PAIRS = [
    ("missing-mask", "masks", missing, r"^missing file masks/\d+_mask_\d\d\.jpg$"),
    ("missing-image", "images", missing, r"^missing file images/\d+_sat_\d\d\.jpg$"),
    ("garbage-image", "images", garbage, r"cannot be decoded"),
    ("garbage-mask", "masks", garbage, r"cannot be decoded"),
    ("truncated-image", "images", cut_in_half, r"cannot be decoded"),
    ("truncated-mask", "masks", cut_in_half, r"cannot be decoded"),
    ("image-wrong-size", "images", image_48px, r"^image is 48x48, the set's tiles are 32x32$"),
    ("mask-other-size", "masks", mask_16px, r"^mask is 16x16, its image is 32x32$"),
    ("grayscale-image", "images", grayscale, r"is a Gray JPEG; convert it to RGB"),
    ("cmyk-image", "images", cmyk, r"is a CMYK JPEG; convert it to RGB"),
    ("rgba-png-image", "images", rgba_png, r"has transparent pixels \(RGBA PNG\): a training tile is a whole photo"),
    ("transparent-mask", "masks", transparent_mask, r"has transparent pixels \(RGBA PNG\); forest must be in"),
    (
        "nodata-keyed-mask",
        "masks",
        nodata_keyed_mask,
        r"marks pixels transparent by a colour key \(L PNG with colour key 0;",
    ),
]


@pytest.mark.parametrize("folder, damage, reason", [c[1:] for c in BAD_PAIRS], ids=[c[0] for c in BAD_PAIRS])
def test_bad_pair_is_skipped_with_its_reason(tiny_set, tmp_path, folder, damage, reason):
    image, mask = rows_of(tiny_set)[BAD_ROW]
    damage(tiny_set / folder / (image if folder == "images" else mask))

    index, report = build(tiny_set, tmp_path / "out")

    assert report["valid"] == ROWS - 1 and report["skipped"] == 1
    [skipped] = report["skipped_pairs"]
    assert (skipped["image"], skipped["mask"]) == (image, mask)
    assert re.search(reason, skipped["reason"]), skipped["reason"]
    assert image not in set(index["image"])
    assert_accounted(report, index)


def test_arrays_stay_aligned_after_a_skipped_pair(tiny_set, tmp_path):
    image, _ = rows_of(tiny_set)[BAD_ROW]
    garbage(tiny_set / "images" / image)
    out = tmp_path / "out"
    index, _ = build(tiny_set, out)
    assert_packed_match_files(tiny_set, index, out)


def test_png_mask_under_jpg_name_is_accepted(tiny_set, tmp_path):
    """Masks are decoded by content, not by name: a PNG with a .jpg name is a fine mask."""
    image, mask = rows_of(tiny_set)[BAD_ROW]
    truth = decode_mask(tiny_set / "masks" / mask)
    Image.fromarray(truth * 255).save(tiny_set / "masks" / mask, format="PNG")
    out = tmp_path / "out"

    index, report = build(tiny_set, out)

    assert report["valid"] == ROWS and report["skipped"] == 0
    row = index["image"].tolist().index(image)
    assert np.array_equal(np.load(out / "masks.npy")[row], truth)


def test_mask_is_thresholded_at_128(tiny_set, tmp_path):
    """JPEG noise near 0 and 255 and a few resampled edge pixels (< 1%) are read by threshold."""
    _, mask = rows_of(tiny_set)[0]
    levels = np.resize(np.array([0, 20, 235, 255], dtype=np.uint8), (32, 32))
    levels[0, :5], levels[1, :5] = 127, 128
    Image.fromarray(levels).save(tiny_set / "masks" / mask, format="PNG")  # lossless
    out = tmp_path / "out"
    build(tiny_set, out)
    assert np.array_equal(np.load(out / "masks.npy")[0], (levels >= 128).astype(np.uint8))


def test_grayscale_jpeg_mask_is_accepted(tiny_set, tmp_path):
    _, mask = rows_of(tiny_set)[BAD_ROW]
    truth = decode_mask(tiny_set / "masks" / mask)
    Image.fromarray(truth * 255).save(tiny_set / "masks" / mask, format="JPEG", quality=95)
    _, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS


def edit_meta(root: Path, edit) -> None:
    path = root / "meta_data.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_duplicate_row_is_skipped_once(tiny_set, tmp_path):
    edit_meta(tiny_set, lambda lines: lines + [lines[1 + BAD_ROW]])
    index, report = build(tiny_set, tmp_path / "out")
    assert (report["rows"], report["valid"], report["skipped"]) == (ROWS + 1, ROWS, 1)
    assert report["skipped_pairs"][0]["reason"].startswith("duplicate row of meta_data.csv")
    assert index["image"].is_unique
    assert_accounted(report, index)


@pytest.mark.parametrize("other", ["png", "zero-padded", "tile-unpadded"])
def test_a_tile_listed_again_under_another_name_is_skipped_once(tiny_set, tmp_path, other: str) -> None:
    """10452_sat_18.png beside 10452_sat_18.jpg, or 010452_sat_18.jpg, or 10452_sat_0.jpg beside
    10452_sat_00.jpg: the same tile, which weighed twice and, as scene 010452, could land on the other
    side of the scene split than scene 10452."""
    import shutil

    image, mask = next((i, m) for i, m in rows_of(tiny_set) if i.endswith("_00.jpg"))  # tile 0: 00 or 0
    if other == "png":
        again = (image.replace(".jpg", ".png"), mask.replace(".jpg", ".png"))
    elif other == "zero-padded":
        again = (f"0{image}", f"0{mask}")
    else:
        again = (image.replace("_00.jpg", "_0.jpg"), mask.replace("_00.jpg", "_0.jpg"))
    for folder, old, new in (("images", image, again[0]), ("masks", mask, again[1])):
        shutil.copy(tiny_set / folder / old, tiny_set / folder / new)
    edit_meta(tiny_set, lambda lines: [*lines, ",".join(again)])
    index, report = build(tiny_set, tmp_path / "out")
    assert (report["rows"], report["valid"], report["skipped"]) == (ROWS + 1, ROWS, 1)
    scene = image.split("_sat_")[0]
    reason = report["skipped_pairs"][0]["reason"]
    assert reason.startswith(f"the same tile as the image listed before under another name: {image} (scene {scene},")
    assert again[0] not in set(index["image"])
    assert_accounted(report, index)


def test_a_tile_whose_first_name_fails_is_kept_under_its_next(tiny_set, tmp_path) -> None:
    """As for an image listed with two masks: the first row that loads is kept, not the first listed."""
    image, mask = rows_of(tiny_set)[BAD_ROW]
    png = (image.replace(".jpg", ".png"), mask.replace(".jpg", ".png"))  # listed first, no such files
    edit_meta(tiny_set, lambda lines: [lines[0], ",".join(png), *lines[1:]])
    index, report = build(tiny_set, tmp_path / "out")
    assert (report["valid"], report["skipped"]) == (ROWS, 1) and image in set(index["image"])
    assert report["skipped_pairs"][0]["image"] == png[0] and "missing" in report["skipped_pairs"][0]["reason"]


def test_scene_ids_are_ascii_whole_numbers() -> None:
    from forestseg.dataset import pair_problem, scene_of

    assert scene_of("0114473_sat_71.jpg") == scene_of("114473_sat_60.jpg") == "114473"
    full_width = "\uff11\uff11\uff14\uff14\uff17\uff13_sat_60.jpg"  # 114473 in full-width digits
    assert scene_of(full_width) is None
    assert "so its scene is unknown" in pair_problem(full_width, "114473_mask_60.jpg")


def test_a_trailing_comma_on_every_row_is_read_without_a_warning(tiny_set, tmp_path, recwarn) -> None:
    edit_meta(tiny_set, lambda lines: [lines[0], *(line + "," for line in lines[1:])])
    index, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS and not [w for w in recwarn if "ParserWarning" in str(w.category)]


def test_a_rejected_row_does_not_make_a_later_good_row_a_duplicate(tiny_set, tmp_path):
    image, _ = rows_of(tiny_set)[BAD_ROW]
    edit_meta(tiny_set, lambda lines: [lines[0], f"{image},"] + lines[1:])  # an empty mask cell, then the real row
    index, report = build(tiny_set, tmp_path / "out")
    assert (report["valid"], report["skipped"]) == (ROWS, 1) and image in set(index["image"])
    assert report["skipped_pairs"][0]["reason"] == "empty mask cell (line 2 of meta_data.csv)"


def test_a_row_of_empty_cells_is_named_by_its_line(tiny_set, tmp_path):
    # blank and whitespace-only lines are no rows (pandas skips them), so the line is counted in the file
    edit_meta(tiny_set, lambda lines: ["  ", lines[0], "", "   ", lines[1], ",", "", ","] + lines[2:])
    index, report = build(tiny_set, tmp_path / "out")
    assert (report["valid"], report["skipped"]) == (ROWS, 2)
    assert [s["reason"] for s in report["skipped_pairs"]] == [
        "empty image cell (line 6 of meta_data.csv)",
        "empty image cell (line 8 of meta_data.csv)",  # right after a blank line
    ]
    assert report["skipped_by_reason"] == {"empty image cell": 2}


def test_a_row_that_fails_to_load_does_not_make_a_later_good_row_a_duplicate(tiny_set, tmp_path):
    image, mask = rows_of(tiny_set)[BAD_ROW]
    gone = Path(mask).stem + (".tif" if mask.endswith(".png") else ".png")  # a right name, no such file
    # a row whose mask file is not there, then the real row, then the real row again
    edit_meta(tiny_set, lambda lines: [lines[0], f"{image},{gone}"] + lines[1:] + [f"{image},{mask}"])
    index, report = build(tiny_set, tmp_path / "out")
    assert (report["rows"], report["valid"], report["skipped"]) == (ROWS + 2, ROWS, 2)
    assert index.set_index("image").loc[image, "mask"] == mask
    reasons = {s["mask"]: s["reason"] for s in report["skipped_pairs"]}
    assert "duplicate" not in reasons[gone] and reasons[mask].startswith("duplicate row of meta_data.csv")
    assert_accounted(report, index)


def test_an_empty_mask_is_named_as_the_mask(tiny_set, tmp_path) -> None:
    """'is empty (0 bytes)' must say which file of the pair is: here the mask, not the image."""
    _, mask = rows_of(tiny_set)[BAD_ROW]
    (tiny_set / "masks" / mask).write_bytes(b"")
    index, report = build(tiny_set, tmp_path / "out")
    [skipped] = report["skipped_pairs"]
    assert skipped["reason"].startswith(f"{mask} is empty"), skipped["reason"]


def test_a_tenth_of_the_masks_in_another_convention_is_left_out_not_a_stop(tmp_path) -> None:
    """MISFIT_STOP is 'more than a tenth': 2 misfits of 20 masks are skipped and counted, the rest indexed."""
    root = make_set(tmp_path / "Forest Segmented", scenes=5, grid=2)
    for _, m in rows_of(root)[:2]:
        Image.fromarray(decode_mask(root / "masks" / m)).save(root / "masks" / m, format="PNG")  # 0/1 masks
    index, report = build(root, tmp_path / "out")
    assert (report["rows"], report["valid"], report["misfits"]) == (20, 18, 2)
    _, m = rows_of(root)[2]
    Image.fromarray(decode_mask(root / "masks" / m)).save(root / "masks" / m, format="PNG")
    with pytest.raises(DataError, match=r"but 3 of 20 masks do not fit it"):
        build(root, tmp_path / "out2")


def test_scenes_with_almost_no_forest_have_no_say_on_inversion(tiny_set, tmp_path) -> None:
    """Forest on under 5 % of a scene (here its brightest 2 %) says nothing on whether masks are inverted."""
    scenes = sorted({i.split("_sat_")[0] for i, _ in rows_of(tiny_set)})
    for image, mask in rows_of(tiny_set):
        if image.startswith(scenes[0] + "_"):
            continue
        grey = decode_image(tiny_set / "images" / image).mean(-1)
        forest = grey >= np.quantile(grey, 0.98)
        Image.fromarray((forest * 255).astype(np.uint8)).save(tiny_set / "masks" / mask, format="PNG")
    index, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS and report["notes"] == [], report["notes"]


def test_a_cell_with_a_trailing_space_says_so(tiny_set, tmp_path):
    image, _ = rows_of(tiny_set)[BAD_ROW]
    edit_meta(tiny_set, lambda lines: [line.replace(f"{image},", f"{image} ,") for line in lines])
    index, report = build(tiny_set, tmp_path / "out")
    [skipped] = report["skipped_pairs"]
    assert skipped["reason"] == f"image name '{image} ' has leading or trailing spaces in meta_data.csv; remove them"
    assert_accounted(report, index)


@pytest.mark.parametrize("convention, forest", [("classes", (255,)), ("0/1", ())])
def test_jpeg_masks_are_refused_where_values_are_read_exactly(tiny_set, tmp_path, convention, forest):
    """JPEG noise moves a class id (255 read as 251-254): 0/1 and class masks must be lossless."""
    _, mask = rows_of(tiny_set)[BAD_ROW]
    for _, m in rows_of(tiny_set):  # lossless masks of the convention, but one JPEG
        truth = decode_mask(tiny_set / "masks" / m)
        values = truth * (255 if convention == "classes" else 1)
        Image.fromarray(values.astype(np.uint8)).save(tiny_set / "masks" / m, format="JPEG" if m == mask else "PNG")
    index, report = build_index(tiny_set, tmp_path / "images.npy", tmp_path / "masks.npy", convention, forest)
    [skipped] = report["skipped_pairs"]
    # a JPEG that fits the convention says so; one whose noise breaks it is a misfit that says why
    assert skipped["mask"] == mask and "JPEG" in skipped["reason"], skipped["reason"]
    if convention == "0/1":
        assert "is a JPEG: its lossy compression moves class values" in skipped["reason"]
    assert report["valid"] == ROWS - 1


def test_a_jpeg_mask_counts_as_a_misfit_where_values_are_read_exactly(tiny_set, tmp_path) -> None:
    """Under 0/1 or classes a JPEG mask is a misfit of the convention: counted towards the set's stop
    (half a set of 0/1 masks saved as JPEG was skipped pair by pair, and the run went on)."""
    for k, (_, m) in enumerate(rows_of(tiny_set)):
        Image.fromarray(decode_mask(tiny_set / "masks" / m)).save(
            tiny_set / "masks" / m, format="JPEG" if k % 2 == 0 else "PNG", quality=95
        )
    with pytest.raises(DataError) as err:
        build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy", "classes", (1,))
    message = str(err.value)
    assert f"but {ROWS // 2} of {ROWS} masks do not fit it" in message, message
    assert "is a JPEG: its lossy compression moves class values" in message, message
    lossless = "stored as JPEG, whose lossy compression moves values: save the masks lossless (PNG), then set"
    assert message.endswith(f"{lossless} data.masks: '0/1' or classes"), message  # not called a mix of conventions


@pytest.mark.parametrize("convention, other", [("0/255", "0/1"), ("0/1", "0/255")])
def test_a_set_of_two_mask_conventions_is_said_to_be_mixed(tiny_set, tmp_path, convention, other) -> None:
    """Half 0/1, half 0/255 (lossless): each setting's advice named the other, and back again."""
    for k, (_, m) in enumerate(rows_of(tiny_set)):
        values = decode_mask(tiny_set / "masks" / m) * (1 if k % 2 else 255)
        Image.fromarray(values.astype(np.uint8)).save(tiny_set / "masks" / m, format="PNG")
    with pytest.raises(DataError) as err:
        build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy", convention, ())
    message = str(err.value)
    assert f"they look like {other} masks: set data.masks: '{other}'; but {ROWS // 2} other mask(s) fit " in message
    assert f"fit '{convention}': the set mixes conventions, so no one data.masks reads it" in message, message


@pytest.mark.parametrize(
    "convention, one_value, others, other",
    [
        ("0/1", 1, 255, "0/255"),  # all-forest 0/1 tiles beside 0/255 masks: '0/255' would refuse them
        ("0/255", 255, 1, "0/1"),  # all-forest 0/255 tiles beside 0/1 masks
        ("colors", (0, 255, 0), 255, "0/255"),  # all-forest DeepGlobe tiles beside grey 0/255 masks
    ],
)
def test_masks_of_one_value_the_other_convention_refuses_show_a_mix(
    tiny_set, tmp_path, convention, one_value, others, other
) -> None:
    """Masks of one value are evidence of a mix only where the misfits' convention would not read them (an
    all-white tile reads under colors and 0/255 alike: not called mixed, the test above)."""
    for k, (_, m) in enumerate(rows_of(tiny_set)):
        values = decode_mask(tiny_set / "masks" / m)
        if k < 4:
            shape = values.shape + ((3,) if isinstance(one_value, tuple) else ())
            values = np.broadcast_to(np.array(one_value, np.uint8), shape)
        else:
            values = values * others
        Image.fromarray(np.ascontiguousarray(values, np.uint8)).save(tiny_set / "masks" / m, format="PNG")
    forest = ((0, 255, 0),) if convention == "colors" else ()
    with pytest.raises(DataError) as err:
        build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy", convention, forest)
    message = str(err.value)
    assert f"set data.masks: '{other}'; but 4 other mask(s) fit '{convention}': the set mixes conventions" in message, (
        message
    )


@pytest.mark.parametrize("stray", [None, 128])
def test_0_255_masks_beside_0_1_ones_with_255_for_no_label_are_a_mix(tiny_set, tmp_path, stray) -> None:
    """Exactly 0/255 masks hold only values that 0/1 masks with 255 for 'no label' hold too, but classes [1]
    would read them as no forest: still a mix (a rule that took shared values for one convention hid it);
    so are 0/255 masks with a few stray mid-greys, a value the 0/1 masks do not hold."""
    for k, (_, m) in enumerate(rows_of(tiny_set)):
        values = decode_mask(tiny_set / "masks" / m).astype(np.uint8)
        if k < 4:
            values = values * 255
            if stray:
                values[0, :3] = stray
        else:
            values[:4] = 255  # no label
        Image.fromarray(values).save(tiny_set / "masks" / m, format="PNG")
    with pytest.raises(DataError) as err:
        build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy", "0/255", ())
    message = str(err.value)
    assert "if they are class ids, set data.masks: classes" in message, message
    assert "but 4 other mask(s) fit '0/255': the set mixes conventions" in message, message


def masks_empty_0_255(root: Path) -> None:
    """0/255 masks (PNG), a quarter of them empty: those fit '0/1' as well."""
    for k, (_, m) in enumerate(rows_of(root)):
        values = decode_mask(root / "masks" / m) * (0 if k % 4 == 0 else 255)
        Image.fromarray(values.astype(np.uint8)).save(root / "masks" / m, format="PNG")


def masks_half_resized(root: Path) -> None:
    """0/255 masks, half of them resized down and up with bilinear interpolation (mid-grey edges)."""
    for k, (_, m) in enumerate(rows_of(root)):
        values = Image.fromarray((decode_mask(root / "masks" / m) * 255).astype(np.uint8))
        if k % 2:
            values = values.resize((24, 24), Image.BILINEAR).resize((32, 32), Image.BILINEAR)
        values.save(root / "masks" / m, format="PNG")


def masks_classes_some_0_1(root: Path) -> None:
    """Class ids 0-3 (forest 1), half the tiles holding only 0 and 1."""
    for k, (_, m) in enumerate(rows_of(root)):
        values = decode_mask(root / "masks" / m)
        if k % 2:
            values[:8] = 2
            values[-8:] = 3
        Image.fromarray(values.astype(np.uint8)).save(root / "masks" / m, format="PNG")


def masks_colours_some_white(root: Path) -> None:
    """DeepGlobe-style colour masks (forest green, the rest agriculture yellow), two tiles all white
    (barren land): a white tile reads as an all-forest 0/255 mask, but colors reads it too."""
    for k, (_, m) in enumerate(rows_of(root)):
        forest = decode_mask(root / "masks" / m).astype(bool) & (k >= 2)
        rgb = np.where(forest[..., None], (0, 255, 0), (255, 255, 255) if k < 2 else (255, 255, 0))
        Image.fromarray(rgb.astype(np.uint8)).save(root / "masks" / m, format="PNG")


def masks_two_ids_some_nearly_whole(root: Path) -> None:
    """Class ids 255 (forest) and 128 (other land), lossless; four tiles nearly all forest (three 128 pixels,
    within 0/255's tolerance of mid-greys), so those fit 0/255 too: classes [255] reads them all."""
    for k, (_, m) in enumerate(rows_of(root)):
        values = np.where(decode_mask(root / "masks" / m) > 0, 255, 128).astype(np.uint8)
        if k < 4:
            values[:] = 255
            values[0, :3] = 128
        Image.fromarray(values).save(root / "masks" / m, format="PNG")


@pytest.mark.parametrize(
    "make, convention, advice",
    [
        (masks_empty_0_255, "0/1", "they look like 0/255 masks: set data.masks: '0/255'"),
        (masks_two_ids_some_nearly_whole, "0/255", "if they are class ids, set data.masks: classes and data.forest:"),
        (masks_colours_some_white, "0/255", "if they are colour-coded classes, set data.masks: colors"),
        (masks_half_resized, "0/255", "set data.masks: resampled (forest >= 128)"),
        (masks_classes_some_0_1, "0/1", "if they are class ids, set data.masks: classes and data.forest:"),
    ],
)
def test_a_set_one_setting_reads_whole_is_not_called_mixed(tiny_set, tmp_path, make, convention, advice) -> None:
    """Masks of one value (empty, all white) fit several conventions, resampled reads 0/255 masks, classes
    reads 0/1 ones: none of these sets mixes conventions, and the advice must not say so."""
    make(tiny_set)
    with pytest.raises(DataError) as err:
        build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy", convention, ())
    message = str(err.value)
    assert advice in message and "mixes conventions" not in message, message


def test_a_few_masks_of_another_convention_are_reported_as_a_mixed_set(tiny_set, tmp_path) -> None:
    """Below the stop, the report's advice must not send the whole set to the few masks' convention."""
    _, m = rows_of(tiny_set)[BAD_ROW]
    Image.fromarray(decode_mask(tiny_set / "masks" / m)).save(tiny_set / "masks" / m, format="PNG")  # one 0/1 mask
    index, report = build(tiny_set, tmp_path / "out")
    assert report["misfits"] == 1 and report["valid"] == ROWS - 1
    assert f"but {ROWS - 1} other mask(s) fit '0/255': the set mixes" in format_report(report)


def test_0_255_masks_with_jpeg_noise_saved_lossless_are_not_read_as_classes(tiny_set, tmp_path) -> None:
    """The Kaggle JPEG masks saved as PNG keep their noise: as classes [255] a forest 251 read as
    background (~1 % of the forest), without a word."""
    for _, m in rows_of(tiny_set):
        values = decode_mask(tiny_set / "masks" / m) * 255
        values[0, :4], values[-1, :4] = (2, 5, 250, 253), (1, 30, 224, 254)  # JPEG's noise near 0 and 255
        Image.fromarray(values.astype(np.uint8)).save(tiny_set / "masks" / m, format="PNG")
    with pytest.raises(DataError) as err:
        build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy", "classes", (255,))
    message = str(err.value)
    assert "as JPEG compression leaves in a 0/255 mask: not class ids" in message, message
    assert message.endswith("they look like 0/255 masks: set data.masks: '0/255'"), message
    index, report = build(tiny_set, tmp_path / "out")  # as 0/255 they are read, noise and all
    assert report["valid"] == ROWS


def test_an_all_forest_set_can_be_scored_though_not_trained_on(tiny_set, tmp_path):
    all_masks_forest(tiny_set)
    index, report = build_index(tiny_set, tmp_path / "images.npy", tmp_path / "masks.npy", training=False)
    assert report["valid"] == ROWS and report["forest_fraction"] == 1.0


def test_tif_tiles_are_indexed(tiny_set, tmp_path):
    """The decoder reads TIFF, so tiles named <scene>_sat_<rc>.tif (and .tif masks) are a layout too."""
    image, mask = rows_of(tiny_set)[BAD_ROW]
    tif_image, tif_mask = image.replace(".jpg", ".tif"), mask.replace(".jpg", ".tif")
    Image.open(tiny_set / "images" / image).save(tiny_set / "images" / tif_image)
    Image.open(tiny_set / "masks" / mask).save(tiny_set / "masks" / tif_mask)
    edit_meta(tiny_set, lambda lines: [line.replace(image, tif_image).replace(mask, tif_mask) for line in lines])
    index, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS and tif_image in set(index["image"])


def test_hidden_files_and_subfolders_in_images_are_not_unlisted_images(tiny_set, tmp_path):
    for name in (".DS_Store", "._1_sat_00.jpg", "Thumbs.db", "desktop.ini"):  # macOS's and Windows' own
        (tiny_set / "images" / name).write_bytes(b"\x00\x05\x16\x07")
    (tiny_set / "images" / "thumbnails").mkdir()
    _, report = build(tiny_set, tmp_path / "out")
    assert report["unlisted_images"] == 0


def test_image_name_without_scene_is_skipped(tiny_set, tmp_path):
    image, mask = rows_of(tiny_set)[BAD_ROW]
    (tiny_set / "images" / image).rename(tiny_set / "images" / "forest_tile.jpg")
    edit_meta(tiny_set, lambda lines: [line.replace(image, "forest_tile.jpg") for line in lines])

    index, report = build(tiny_set, tmp_path / "out")

    assert report["skipped_pairs"] == [
        {
            "image": "forest_tile.jpg",
            "mask": mask,
            "reason": "image name 'forest_tile.jpg' is not <scene>_sat_<rc>.<jpg|png|tif> with <scene> and <rc> "
            "whole numbers (e.g. 10452_sat_08.jpg), so its scene is unknown",
        }
    ]
    assert_accounted(report, index)


@pytest.mark.parametrize(
    "kind, folder, name", [("image", "images", "999_sat_00.jpg"), ("mask", "masks", "999_mask_00.jpg")]
)
def test_a_file_without_row_is_counted_as_unlisted(tiny_set, tmp_path, kind, folder, name):
    image, mask = rows_of(tiny_set)[0]
    (tiny_set / folder / name).write_bytes((tiny_set / folder / (image if kind == "image" else mask)).read_bytes())
    index, report = build(tiny_set, tmp_path / "out")
    assert report[f"unlisted_{kind}s"] == 1 and report[f"unlisted_{kind}_names"] == [name]
    assert report[f"unlisted_{'mask' if kind == 'image' else 'image'}s"] == 0
    assert report["valid"] == ROWS and name not in set(index[kind])
    assert f"1 {kind}(s) in {folder}/ have no row in meta_data.csv" in format_report(report)


def test_extra_column_is_accepted_with_a_note(tiny_set, tmp_path):
    edit_meta(tiny_set, lambda lines: [f"{line},{'split' if i == 0 else 'train'}" for i, line in enumerate(lines)])
    index, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS
    assert report["notes"] == ["ignored extra column(s) of meta_data.csv: ['split']"]
    assert "split" not in index.columns


@pytest.mark.parametrize("header, missing_col", [("image,label", "mask"), ("img,mask", "image")])
def test_missing_column_stops_naming_it(tiny_set, tmp_path, header, missing_col):
    edit_meta(tiny_set, lambda lines: [header] + lines[1:])
    with pytest.raises(DataError, match=rf"missing column\(s\) \['{missing_col}'\]"):
        build(tiny_set, tmp_path / "out")


def test_empty_mask_cell_is_skipped_not_a_crash(tiny_set, tmp_path):
    image, _ = rows_of(tiny_set)[BAD_ROW]
    edit_meta(tiny_set, lambda lines: [f"{image}," if line.startswith(image + ",") else line for line in lines])
    index, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS - 1 and report["skipped_pairs"][0]["image"] == image
    assert_accounted(report, index)


# --- folders that cannot be indexed at all -------------------------------------------------------


def no_folder(root: Path) -> None:
    import shutil

    shutil.rmtree(root)


def no_meta(root: Path) -> None:
    (root / "meta_data.csv").unlink()


def meta_spelt_otherwise(root: Path) -> None:
    (root / "meta_data.csv").rename(root / "Meta_Data.csv")


def meta_spelt_without_underscore(root: Path) -> None:
    (root / "meta_data.csv").rename(root / "meta-data.csv")


def header_only(root: Path) -> None:
    (root / "meta_data.csv").write_text("image,mask\n")


def empty_file(root: Path) -> None:
    (root / "meta_data.csv").write_bytes(b"")


def latin1(root: Path) -> None:
    (root / "meta_data.csv").write_bytes(b"image,mask\n\xe9_sat_00.jpg,x.jpg\n")


def ragged_row(root: Path) -> None:
    edit_meta(root, lambda lines: lines + ["1_sat_00.jpg,1_mask_00.jpg,extra"])


def test_a_blank_line_before_the_header_is_skipped_as_pandas_skips_it(tiny_set, tmp_path):
    edit_meta(tiny_set, lambda lines: ["", *lines])
    _, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS


def test_a_meta_data_file_that_cannot_be_opened_says_why_not_which_line(tiny_set, monkeypatch):
    from forestseg import dataset

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dataset, "open", refuse, raising=False)  # root reads any file: refused here
    with pytest.raises(DataError, match=r"meta_data\.csv: cannot be read \(Permission denied\); check its permissions"):
        dataset.read_meta(tiny_set)


def ragged_first_row(root: Path) -> None:  # pandas dropped the extra cell of the first row silently
    edit_meta(root, lambda lines: [lines[0], lines[1] + ",extra", *lines[2:]])


def unclosed_quote(root: Path) -> None:
    edit_meta(root, lambda lines: [lines[0], '"' + lines[1], *lines[2:]])


def all_masks_missing(root: Path) -> None:
    for p in (root / "masks").iterdir():
        p.unlink()


def all_images_garbage(root: Path) -> None:
    for p in (root / "images").iterdir():
        garbage(p)


def masks_all_grey(root: Path) -> None:
    """Every pair decodes into the arrays; the mask convention check after them stops the index."""
    for p in (root / "masks").iterdir():
        with Image.open(p) as im:
            size = im.size
        Image.new("L", size, 128).save(p, format="JPEG")


def images_folder_renamed(root: Path) -> None:
    (root / "images").rename(root / "Images")


def names_upper_case(root: Path) -> None:
    edit_meta(root, lambda lines: [lines[0]] + [line.upper() for line in lines[1:]])


def files_upper_case(root: Path) -> None:
    for p in (root / "images").iterdir():
        p.rename(p.with_name(p.name.upper()))


def all_masks_empty(root: Path) -> None:
    for p in (root / "masks").iterdir():
        Image.new("L", (32, 32), 0).save(p, format="PNG")


def all_masks_forest(root: Path) -> None:
    for p in (root / "masks").iterdir():
        Image.new("L", (32, 32), 255).save(p, format="PNG")


def all_names_bad(root: Path) -> None:
    edit_meta(root, lambda lines: [lines[0]] + [line.replace("_sat_", "_img_") for line in lines[1:]])


FATAL = [
    ("no-folder", no_folder, r"does not exist\. Get the Kaggle set with `kaggle datasets download"),
    ("no-meta", no_meta, r"meta_data\.csv: missing"),
    (
        "meta-spelt-otherwise",
        meta_spelt_otherwise,
        r"meta_data\.csv: missing, but .*/Meta_Data\.csv is there: the index reads meta_data\.csv, spelt so",
    ),
    (
        "meta-spelt-with-a-dash",
        meta_spelt_without_underscore,
        r"meta_data\.csv: missing, but .*/meta-data\.csv is there: the index reads meta_data\.csv, spelt so",
    ),
    ("header-only", header_only, r"lists no usable pair \(0 rows\)"),
    ("empty-file", empty_file, r"meta_data\.csv: is empty\. Get the Kaggle set"),
    ("not-utf8", latin1, r"meta_data\.csv: not UTF-8 text"),
    ("ragged-row", ragged_row, rf"meta_data\.csv: line {ROWS + 2} has 3 cells where the header has 2; remove"),
    ("ragged-first-row", ragged_first_row, r"meta_data\.csv: line 2 has 3 cells where the header has 2; remove"),
    ("unclosed-quote", unclosed_quote, r"meta_data\.csv: cannot be read as CSV \(.*\); fix that line \(a name"),
    ("all-masks-missing", all_masks_missing, rf"0 valid pairs out of {ROWS} rows.*missing file"),
    ("all-images-garbage", all_images_garbage, rf"none of the {ROWS} images listed in meta_data\.csv can be opened"),
    ("all-names-bad", all_names_bad, rf"lists no usable pair \({ROWS} rows; most common reasons: .*scene is unknown"),
    (
        "images-folder-renamed",
        images_folder_renamed,
        r"can be opened \(e\.g\. images/\d+_sat_\d+\.jpg: missing \(no images/ folder; found Images/\)\)",
    ),
    (
        "names-upper-case",
        names_upper_case,
        r"e\.g\. images/\d+_SAT_\d+\.JPG: missing \(images/ has \d+_sat_\d+\.jpg; names are case-sensitive\)",
    ),
    (
        "files-upper-case",
        files_upper_case,
        r"e\.g\. images/\d+_sat_\d+\.jpg: missing \(images/ has \d+_SAT_\d+\.JPG; names are case-sensitive\)",
    ),
    (
        "all-masks-empty",
        all_masks_empty,
        r"no pixel of any mask is forest under it .*every mask is 0 everywhere \(empty\)",
    ),
    (
        "all-masks-forest",
        all_masks_forest,
        rf"every pixel of the {ROWS} kept masks is forest under it .*inverted masks \(forest 0\)\? lossless ones "
        r"read with data.masks: classes and data.forest: \[0\], JPEG ones must be inverted first",
    ),
]


@pytest.mark.parametrize("beside", [True, False])
def test_a_folder_inside_macos_zip_metadata_is_named_as_that(tiny_set, tmp_path, beside: bool) -> None:
    junk = tmp_path / "__MACOSX" / tiny_set.name
    for folder in ("images", "masks"):
        (junk / folder).mkdir(parents=True)
        for p in (tiny_set / folder).iterdir():
            (junk / folder / f"._{p.name}").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble metadata
    if not beside:  # the set itself moved elsewhere: no folder to name
        (tiny_set / "meta_data.csv").unlink()
    with pytest.raises(DataError) as err:
        build(junk, tmp_path / "out")
    assert str(err.value) == (
        f"{junk} is inside __MACOSX, the folder of macOS metadata (AppleDouble ._ files, no photos) that a zip "
        "made on a Mac holds: "
        + (f"set data.source to {tiny_set}" if beside else "set data.source to the set's own folder, beside it")
    )


def test_backslash_paths_in_meta_data_are_one_kind_of_reason(tiny_set, tmp_path) -> None:
    """A CSV written on Windows (images\\<name>): every row skipped for one reason, said once with its count."""
    edit_meta(tiny_set, lambda lines: [lines[0], *(f"images\\{line}" for line in lines[1:] if line)])
    with pytest.raises(
        DataError, match=rf"lists no usable pair \({ROWS} rows; most common reasons: {ROWS} pair\(s\) like"
    ) as stopped:
        build(tiny_set, tmp_path / "out")
    assert "is a path; meta_data.csv must name a file inside images/" in str(stopped.value)


@pytest.mark.parametrize("alpha", [0, 128, 254])
def test_an_image_with_any_pixel_not_fully_opaque_is_skipped(tiny_set, tmp_path, alpha: int):
    """Half-transparent is no whole photo either (a feathered mosaic edge): skipped, named, counted."""
    image, _ = rows_of(tiny_set)[BAD_ROW]
    path = tiny_set / "images" / image
    rgba = np.dstack([np.asarray(Image.open(path).convert("RGB")), np.full((32, 32), 255, np.uint8)])
    rgba[:4, :4, 3] = alpha
    Image.fromarray(rgba).save(path, format="PNG")
    index, report = build(tiny_set, tmp_path / "out")
    assert image not in set(index["image"]) and report["skipped"] == 1
    assert report["skipped_pairs"][0]["reason"].startswith(f"{image} has transparent pixels")


@pytest.mark.parametrize(
    "image, mask", [("10452_sat_08.jpg", "10452_mask_8.png"), ("010452_sat_8.jpg", "10452_mask_08.tif")]
)
def test_a_tile_numbered_with_other_zero_padding_in_its_mask_is_its_pair(image: str, mask: str) -> None:
    from forestseg.dataset import pair_problem

    assert pair_problem(image, mask) is None
    assert pair_problem(image, mask.replace("10452", "10453")).startswith(
        f"mask {mask.replace('10452', '10453')!r} is not"
    )


@pytest.mark.parametrize("opaque", ["rgba", "colour-key"])
def test_an_opaque_image_with_an_alpha_band_or_colour_key_is_indexed(tiny_set, tmp_path, opaque):
    """GDAL writes a colour key (tRNS) for nodata: no pixel of this image has it, so nothing is lost."""
    image, _ = rows_of(tiny_set)[BAD_ROW]
    path = tiny_set / "images" / image
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[rgb.sum(-1) == 0] = 1  # no pixel black: the key below marks nothing
    if opaque == "rgba":
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(path, format="PNG")
    else:
        Image.fromarray(rgb).save(path, format="PNG", transparency=(0, 0, 0))
    index, report = build(tiny_set, tmp_path / "out")
    assert report["skipped"] == 0 and image in set(index["image"])
    assert np.array_equal(np.load(tmp_path / "out/images.npy")[list(index["image"]).index(image)], rgb)


def jpeg_0_1_masks(root: Path, quality: int = 75) -> None:
    for image, mask in rows_of(root):
        path = root / "masks" / mask
        values = (np.asarray(Image.open(path).convert("L")) >= 128).astype(np.uint8)
        Image.fromarray(values).save(path, format="JPEG", quality=quality)


@pytest.mark.parametrize("fmt, hint", [("JPEG", True), ("PNG", False)])
def test_0_1_masks_that_jpeg_rounded_to_0_everywhere_are_named_as_a_possible_cause(tiny_set, tmp_path, fmt, hint):
    """At quality 50, JPEG rounds a 0/1 mask's 1s to 0: every mask reads empty, under any convention."""
    jpeg_0_1_masks(tiny_set, quality=50)
    if fmt == "PNG":
        all_masks_empty(tiny_set)
    with pytest.raises(DataError) as err:
        build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy")
    message = str(err.value)
    assert "every mask is 0 everywhere (empty)" in message
    assert ("0/1 masks saved as JPEG, the compression can round every 1 to 0: save them lossless" in message) == hint


@pytest.mark.parametrize("convention", ["0/255", "0/1"])
def test_0_1_masks_saved_as_jpeg_are_told_to_be_saved_lossless(tiny_set, tmp_path, convention):
    """JPEG noise spreads 0/1 over 0-3: the advice was data.masks classes, which refuses JPEGs next."""
    jpeg_0_1_masks(tiny_set)
    with pytest.raises(
        DataError, match=r"stored as JPEG, whose lossy compression moves values: save the masks lossless"
    ):
        build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy", convention, ())


@pytest.mark.parametrize("damage, match", [c[1:] for c in FATAL], ids=[c[0] for c in FATAL])
def test_unusable_folder_stops_with_data_error(tiny_set, tmp_path, damage, match):
    damage(tiny_set)
    with pytest.raises(DataError, match=match):
        build(tiny_set, tmp_path / "out")


@pytest.mark.parametrize(
    "damage, match",
    [
        (all_masks_missing, "0 valid pairs out of 16 rows"),  # after every pair was tried, arrays open
        (all_images_garbage, "none of the 16 images listed in meta_data.csv can be opened"),  # before they open
        (masks_all_grey, "16 of 16 masks do not fit it"),  # after every pair was decoded into the arrays
    ],
    ids=["masks-missing", "images-garbage", "masks-grey"],
)
def test_failed_index_leaves_no_arrays(tiny_set, tmp_path, damage, match):
    damage(tiny_set)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match):
        build(tiny_set, out)
    assert not out.exists() or list(out.iterdir()) == []


def test_csv_error_is_one_line(tiny_set, tmp_path):
    ragged_row(tiny_set)
    with pytest.raises(DataError) as err:
        build(tiny_set, tmp_path / "out")
    assert "\n" not in str(err.value)


# --- split -------------------------------------------------------------------------------------


@pytest.fixture
def index8(tmp_path) -> pd.DataFrame:
    """An index of 8 scenes x 4 tiles."""
    root = make_set(tmp_path / "set8", scenes=8, grid=2)
    index, _ = build(root, tmp_path / "out8")
    return index


def scenes_of(split: pd.DataFrame, subset: str) -> set[str]:
    return set(split.loc[split["subset"] == subset, "scene"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_scene_split_puts_no_scene_on_both_sides(index8, seed):
    split = split_index(index8, SplitConfig(by="scene", test_fraction=0.25, val_fraction=0.0, seed=seed))
    assert scenes_of(split, "test") and scenes_of(split, "train")
    assert not scenes_of(split, "test") & scenes_of(split, "train")
    assert set(split["subset"]) == {"train", "test"}


def test_split_rows_follow_the_index(index8):
    split = split_index(index8, SplitConfig(by="scene", test_fraction=0.25, seed=0))
    assert split["image"].tolist() == index8["image"].tolist()
    assert split["scene"].tolist() == index8["scene"].tolist()


def test_scene_split_takes_the_test_share_of_scenes(index8):
    split = split_index(index8, SplitConfig(by="scene", test_fraction=0.25, seed=0))
    assert len(scenes_of(split, "test")) == 2


def test_the_split_does_not_depend_on_the_order_of_the_rows(index8):
    """meta_data.csv listed in another order (another export, a merge) assigns every tile as before."""
    cfg = SplitConfig(by="scene", test_fraction=0.25, val_fraction=0.25, seed=3)
    split = split_index(index8, cfg).set_index("image")["subset"]
    reversed_split = split_index(index8.iloc[::-1].reset_index(drop=True), cfg).set_index("image")["subset"]
    pd.testing.assert_series_equal(split.sort_index(), reversed_split.sort_index())


def test_same_seed_gives_same_split(index8):
    cfg = SplitConfig(by="scene", test_fraction=0.25, seed=3)
    pd.testing.assert_frame_equal(split_index(index8, cfg), split_index(index8, cfg))


def test_other_seeds_give_other_splits(index8):
    tests = {frozenset(scenes_of(split_index(index8, SplitConfig(by="scene", seed=s)), "test")) for s in range(5)}
    assert len(tests) > 1


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_tile_split_takes_the_test_share_of_tiles(index8, fraction):
    split = split_index(index8, SplitConfig(by="tile", test_fraction=fraction, seed=0))
    assert abs((split["subset"] == "test").sum() - fraction * len(index8)) <= 1


def test_tile_split_mixes_scenes(index8):
    """By tile (the 2022 study's split), a scene's tiles may land on both sides; by scene they never do."""
    split = split_index(index8, SplitConfig(by="tile", test_fraction=0.25, seed=0))
    assert scenes_of(split, "test") & scenes_of(split, "train")


def test_val_subset_has_its_own_scenes(index8):
    split = split_index(index8, SplitConfig(by="scene", test_fraction=0.25, val_fraction=0.25, seed=0))
    train, val, test = (scenes_of(split, s) for s in ("train", "val", "test"))
    assert val and train and test
    assert not val & train and not val & test and not train & test
    assert len(train | val | test) == 8


@pytest.mark.parametrize("scenes, fails", [(2, True), (3, False)])
def test_three_scenes_give_train_val_and_test_whatever_the_test_share(scenes: int, fails: bool):
    index = pd.DataFrame(
        {"image": [f"{s}_sat_00.jpg" for s in range(scenes)], "scene": [str(s) for s in range(scenes)]}
    )
    cfg = SplitConfig(by="scene", test_fraction=0.5, val_fraction=0.4)  # 2 test scenes of 3 would leave no val
    if fails:
        with pytest.raises(
            DataError,
            match=r"too few scenes \(2\) for train, val and test; set split.val_fraction: 0, or give at least 3 scenes \(or split.by: tile\)$",
        ):
            split_index(index, cfg)
    else:
        assert sorted(split_index(index, cfg)["subset"]) == ["test", "train", "val"]


@pytest.mark.parametrize("scenes", [3, 4, 5, 6])
@pytest.mark.parametrize("test_fraction, val_fraction", [(0.3, 0.5), (0.2, 0.7), (0.5, 0.4), (0.1, 0.1)])
def test_every_subset_of_a_split_by_scene_keeps_a_scene(scenes: int, test_fraction: float, val_fraction: float):
    """Validation takes at most all but one of the scenes test leaves: training never goes empty."""
    index = pd.DataFrame(
        {"image": [f"{s}_sat_00.jpg" for s in range(scenes)], "scene": [str(s) for s in range(scenes)]}
    )
    cfg = SplitConfig(by="scene", test_fraction=test_fraction, val_fraction=val_fraction)
    assert set(split_index(index, cfg)["subset"]) == {"train", "val", "test"}


def test_one_scene_cannot_be_split():
    index = pd.DataFrame({"image": [f"7_sat_0{i}.jpg" for i in range(4)], "scene": ["7"] * 4})
    with pytest.raises(DataError, match="need at least 2 scenes"):
        split_index(index, SplitConfig(by="scene"))


def test_baseline_is_the_test_forest_share(index8):
    split = split_index(index8, SplitConfig(by="scene", test_fraction=0.25, seed=0))
    test = index8[(split["subset"] == "test").to_numpy()]
    summary = split_summary(index8, split)
    assert summary["baseline_all_forest"]["iou"] == pytest.approx(test["forest_pixels"].sum() / test["pixels"].sum())
    assert summary["baseline_all_forest"]["recall"] == 1.0


def test_summary_counts_tiles_and_scenes(index8):
    split = split_index(index8, SplitConfig(by="scene", test_fraction=0.25, seed=0))
    summary = split_summary(index8, split)
    counts = {k: {c: v[c] for c in ("tiles", "scenes")} for k, v in summary.items() if k != "baseline_all_forest"}
    assert counts == {"train": {"tiles": 24, "scenes": 6}, "test": {"tiles": 8, "scenes": 2}}
    test = index8[(split["subset"] == "test").to_numpy()]
    assert summary["test"]["forest_fraction"] == pytest.approx(
        test["forest_pixels"].sum() / test["pixels"].sum(), abs=1e-6
    )


# --- the real sample (skipped where absent) ------------------------------------------------------

_SAMPLE: dict = {}


@pytest.fixture
def sample_index(sample_dir, tmp_path_factory):
    """The sample indexed once per session: (index, report, out folder)."""
    if sample_dir not in _SAMPLE:
        out = tmp_path_factory.mktemp("sample")
        index, report = build_index(sample_dir, out / "images.npy", out / "masks.npy")
        _SAMPLE[sample_dir] = (index, report, out)
    return _SAMPLE[sample_dir]


def test_sample_pairs_are_all_valid(sample_index):
    index, report, _ = sample_index
    assert (report["rows"], report["valid"], report["skipped"], report["unlisted_images"]) == (1035, 1035, 0, 0)
    assert report["tile_size"] == [256, 256]
    assert len(index) == 1035


def test_sample_has_38_scenes_named_by_prefix(sample_index):
    index, report, _ = sample_index
    assert report["scenes"] == index["scene"].nunique() == 38
    assert index["scene"].tolist() == [name.split("_sat_")[0] for name in index["image"]]


def test_sample_masks_are_binary(sample_index):
    index, _, out = sample_index
    masks = np.load(out / "masks.npy", mmap_mode="r")
    assert masks.shape == (1035, 256, 256)
    assert set(np.unique(masks)) == {0, 1}
    np.testing.assert_allclose(index["forest_fraction"], masks.mean(axis=(1, 2)), atol=1e-6)


def test_sample_scene_split_has_no_scene_on_both_sides(sample_index):
    index = sample_index[0]
    split = split_index(index, SplitConfig(by="scene", test_fraction=0.25, seed=0))
    assert not scenes_of(split, "test") & scenes_of(split, "train")
    assert len(scenes_of(split, "test")) == round(0.25 * 38)


def test_image_listed_twice_with_another_mask_is_indexed_once(tiny_set, tmp_path):
    rows = rows_of(tiny_set)
    (tiny_set / "meta_data.csv").write_text(
        "image,mask\n" + "".join(f"{i},{m}\n" for i, m in rows) + f"{rows[0][0]},{rows[1][1]}\n"
    )
    index, report = build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy")
    assert len(index) == len(rows) and index["image"].is_unique
    assert report["skipped"] == 1 and report["skipped_pairs"][0]["image"] == rows[0][0]


def test_image_listed_twice_with_two_masks_of_its_tile_keeps_the_first_and_skips_the_second(tiny_set, tmp_path):
    """Both pairs load (the tile's mask as .png and again as .tif): one row is the tile, the other a
    DUPLICATE; decoding both would weigh the tile twice, and could put it on both sides of a split."""
    rows = rows_of(tiny_set)
    image, mask = rows[0]
    again = Path(mask).with_suffix(".tif").name
    with Image.open(tiny_set / "masks" / mask) as im:
        im.save(tiny_set / "masks" / again)
    (tiny_set / "meta_data.csv").write_text(
        "image,mask\n" + "".join(f"{i},{m}\n" for i, m in rows) + f"{image},{again}\n"
    )
    index, report = build_index(tiny_set, tmp_path / "i.npy", tmp_path / "m.npy")
    assert len(index) == len(rows) and index["image"].is_unique
    assert report["skipped_pairs"] == [{"image": image, "mask": again, "reason": DUPLICATE}]


# --- pairs, strictly -----------------------------------------------------------------------------


def set_mask_cell(root: Path, row: int, value: str) -> tuple[str, str]:
    image, mask = rows_of(root)[row]
    edit_meta(root, lambda lines: [f"{image},{value}" if line.startswith(image + ",") else line for line in lines])
    return image, mask


@pytest.mark.parametrize(
    "cell, reason",
    [
        ("/etc/hostname", r"mask '/etc/hostname' is a path; meta_data.csv must name a file inside masks/"),
        ("../masks/{mask}", r"is a path"),
        ("sub/{mask}", r"is a path"),
        ("{other}", r"mask '\d+_mask_\d+\.jpg' is not this image's mask \(expected \d+_mask_\d+\.<jpg\|png\|tif>\)"),
        ("{scene}_mask_99.jpg", r"is not this image's mask"),
    ],
)
def test_a_mask_cell_that_is_not_this_images_mask_is_skipped(tiny_set, tmp_path, cell, reason):
    image, mask = rows_of(tiny_set)[BAD_ROW]
    other = rows_of(tiny_set)[BAD_ROW + 1][1]
    set_mask_cell(tiny_set, BAD_ROW, cell.format(mask=mask, other=other, scene=image.split("_")[0]))
    index, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS - 1
    [skipped] = report["skipped_pairs"]
    assert skipped["image"] == image and re.search(reason, skipped["reason"]), skipped["reason"]
    assert_accounted(report, index)


def test_a_mask_symlinked_out_of_the_source_is_skipped(tiny_set, tmp_path):
    image, mask = rows_of(tiny_set)[BAD_ROW]
    outside = tmp_path / "elsewhere.jpg"
    (tiny_set / "masks" / mask).rename(outside)
    (tiny_set / "masks" / mask).symlink_to(outside)
    _, report = build(tiny_set, tmp_path / "out")
    [skipped] = report["skipped_pairs"]
    assert skipped["image"] == image and "links outside data.source" in skipped["reason"]


@pytest.mark.parametrize("python", ["3.10-3.12", "3.13"])
@pytest.mark.parametrize("folder", ["images", "masks"])
def test_a_file_linked_to_itself_is_skipped(tiny_set, tmp_path, folder, python, monkeypatch):
    if python == "3.13":  # its resolve() returns a loop's path as it is; reading it then fails (ELOOP)
        monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.realpath(self)))
    image, mask = rows_of(tiny_set)[BAD_ROW]
    name = image if folder == "images" else mask
    (tiny_set / folder / name).unlink()
    (tiny_set / folder / name).symlink_to(name)  # a loop: resolve() raised RuntimeError through the index
    _, report = build(tiny_set, tmp_path / "out")
    [skipped] = report["skipped_pairs"]
    assert skipped["image"] == image and skipped["reason"].startswith(f"{folder}/{name} is a symlink loop")


@pytest.mark.parametrize("target", ["set", "nowhere"])
def test_a_source_linked_to_no_folder_says_so(tmp_path, monkeypatch, target):
    from forestseg.dataset import check_tracked

    (tmp_path / "set").symlink_to(target)  # "set": a loop, which resolve() raised as RuntimeError
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)  # inside a project: never "run dvc add set"
    check_tracked("set")
    with pytest.raises(DataError, match="data.source 'set' is a symlink that leads to no folder; point it at one"):
        build(Path("set"), tmp_path / "out")


def test_files_linked_into_a_dvc_cache_are_read(tiny_set, tmp_path):
    """`dvc add` with cache.type symlink leaves links into <cache>/files/md5/ab/<30 hex>."""
    import hashlib

    for folder in ("images", "masks"):
        for path in sorted((tiny_set / folder).iterdir()):
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            obj = tmp_path / "cache" / "files" / "md5" / digest[:2] / digest[2:]
            obj.parent.mkdir(parents=True, exist_ok=True)
            path.rename(obj)
            path.symlink_to(obj)
    index, report = build(tiny_set, tmp_path / "out")
    assert report["valid"] == ROWS and report["skipped"] == 0


def test_exif_rotated_jpeg_is_read_as_a_viewer_shows_it(tiny_set, tmp_path):
    """A camera-style JPEG pair whose pixels are stored sideways with EXIF orientation 6 (turn 90 degrees
    clockwise), the mask (lossless) too."""
    from PIL import ImageOps

    image, mask = rows_of(tiny_set)[BAD_ROW]
    path = tiny_set / "images" / image
    shown, truth = decode_image(path), decode_mask(tiny_set / "masks" / mask)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(shown, 1)).save(path, format="JPEG", quality=100, exif=exif)  # stored turned back
    Image.fromarray(np.rot90(truth * 255, 1)).save(tiny_set / "masks" / mask, format="PNG", exif=exif)
    with Image.open(path) as im:
        viewer = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = tmp_path / "out"
    index, report = build(tiny_set, out)
    row = index["image"].tolist().index(image)
    assert report["valid"] == ROWS
    assert np.array_equal(np.load(out / "images.npy")[row], viewer)
    assert np.array_equal(np.load(out / "masks.npy")[row], truth)
    assert np.abs(viewer.astype(int) - shown).mean() < 8  # the viewer's picture is the original tile again


@pytest.mark.parametrize("turned", ["image", "mask"])
def test_a_pair_whose_exif_orientations_differ_is_skipped(tiny_set, tmp_path, turned):
    """Turned by one file's tag and not the other's, image and mask would train misaligned, silently."""
    image, mask = rows_of(tiny_set)[BAD_ROW]
    path = tiny_set / ("images" if turned == "image" else "masks") / (image if turned == "image" else mask)
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(path) as im:
        im.save(path, format="JPEG", quality=100, exif=exif)  # the stored pixels as they were, now tagged
    index, report = build(tiny_set, tmp_path / "out")
    [skipped] = report["skipped_pairs"]
    assert (skipped["image"], skipped["mask"]) == (image, mask)
    first, second = ("6 (turned 90° clockwise)", "none") if turned == "image" else ("none", "6 (turned 90° clockwise)")
    assert skipped["reason"].startswith(f"EXIF orientation differs: {image} {first}, {mask} {second}; ")
    assert report["valid"] == ROWS - 1 and image not in set(index["image"])


def test_an_untagged_mask_that_fits_only_the_turned_image_is_read_with_it(tiny_set, tmp_path):
    """Non-square tiles: a camera image stored sideways (tag 6) and a mask drawn on it as shown, untagged
    (as labelling tools export): only the shown grid fits the mask, so the pair is not ambiguous."""
    for image, mask in rows_of(tiny_set):  # every tile 32 high, 16 wide
        for path in (tiny_set / "images" / image, tiny_set / "masks" / mask):
            with Image.open(path) as im:
                im.crop((0, 0, 16, 32)).save(path, format="PNG")
    image, mask = rows_of(tiny_set)[BAD_ROW]
    shown = decode_image(tiny_set / "images" / image)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: stored turned back
    Image.fromarray(np.rot90(shown, 1)).save(tiny_set / "images" / image, format="PNG", exif=exif)
    out = tmp_path / "out"
    index, report = build(tiny_set, out)
    assert report["valid"] == ROWS and report["skipped"] == 0
    row = index["image"].tolist().index(image)
    assert np.array_equal(np.load(out / "images.npy")[row], shown)
    assert np.array_equal(np.load(out / "masks.npy")[row], decode_mask(tiny_set / "masks" / mask))


def test_a_pair_tagged_alike_is_turned_alike(tiny_set, tmp_path):
    image, mask = rows_of(tiny_set)[BAD_ROW]
    exif = Image.Exif()
    exif[0x0112] = 8
    truth = decode_mask(tiny_set / "masks" / mask)
    for path in (tiny_set / "images" / image, tiny_set / "masks" / mask):
        with Image.open(path) as im:
            im.save(path, format="PNG", exif=exif)  # lossless, so the mask is exact
    out = tmp_path / "out"
    index, report = build(tiny_set, out)
    assert report["valid"] == ROWS
    row = index["image"].tolist().index(image)
    assert np.array_equal(np.load(out / "masks.npy")[row], np.rot90(truth, 1))


@pytest.mark.parametrize("misfits", [1, 2, 9])
def test_the_set_stops_when_more_than_a_tenth_of_its_masks_misfit(tiny_set, tmp_path, misfits):
    """One mask in 16 stored 0/1 is skipped and counted, the rest trains; two (an eighth) and the set
    stops and says so: going on would train on a set biased towards the masks that fit."""
    for _, mask in rows_of(tiny_set)[:misfits]:
        path = tiny_set / "masks" / mask
        Image.fromarray(decode_mask(path)).save(path, format="PNG")
    if misfits > ROWS // 10:
        with pytest.raises(DataError, match=f"but {misfits} of {ROWS} masks do not fit it"):
            build(tiny_set, tmp_path / "out")
    else:
        index, report = build(tiny_set, tmp_path / "out")
        assert (report["valid"], report["misfits"], report["skipped"]) == (ROWS - misfits, misfits, misfits)
        assert_accounted(report, index)


def test_a_whole_row_listed_twice_is_decoded_and_counted_once(tiny_set, tmp_path):
    """Each misfit's repeat must not count as a second misfit: that would tip the set-level verdict."""
    rows = rows_of(tiny_set)
    for _, mask in rows[:1]:  # 1 of 16 masks stored 0/1: under a tenth misfit, so the rest trains
        path = tiny_set / "masks" / mask
        Image.fromarray(decode_mask(path)).save(path, format="PNG")
    edit_meta(tiny_set, lambda lines: lines + lines[1:])  # every row twice
    index, report = build(tiny_set, tmp_path / "out")
    assert (report["valid"], report["misfits"], report["skipped"]) == (ROWS - 1, 1, 1 + ROWS)
    assert report["skipped_by_reason"]["duplicate row of meta_data.csv"] == ROWS
    assert_accounted(report, index)


@pytest.mark.parametrize(
    "rename, hint",
    [
        (lambda p: p.with_suffix(".png"), r" \(masks/ has {stem}\.png; meta_data.csv names {stem}\.jpg\)$"),
        (lambda p: p.with_name(p.name.upper()), r" \(masks/ has {upper}; names are case-sensitive\)$"),
    ],
    ids=["other-extension", "other-case"],
)
def test_a_missing_mask_says_what_the_folder_holds_instead(tiny_set, tmp_path, rename, hint):
    image, mask = rows_of(tiny_set)[BAD_ROW]
    path = tiny_set / "masks" / mask
    path.rename(rename(path))
    _, report = build(tiny_set, tmp_path / "out")
    reasons = {s["mask"]: s["reason"] for s in report["skipped_pairs"]}
    pattern = re.escape(f"missing file masks/{mask}") + hint.format(
        stem=re.escape(Path(mask).stem), upper=re.escape(mask.upper())
    )
    assert re.fullmatch(pattern, reasons[mask]), reasons[mask]
    assert report["skipped_by_reason"]["missing file masks/<mask>"] == len(reasons)


def test_a_link_whose_target_is_gone_is_named_so(tiny_set, tmp_path):
    """A DVC cache link after `dvc gc`: the name is listed, its file is not there."""
    image, mask = rows_of(tiny_set)[BAD_ROW]
    (tiny_set / "masks" / mask).unlink()
    (tiny_set / "masks" / mask).symlink_to(tmp_path / "cache/files/md5/ab" / ("c" * 30))  # its object, removed
    _, report = build(tiny_set, tmp_path / "out")
    [skipped] = report["skipped_pairs"]
    assert skipped["reason"] == (
        f"missing file masks/{mask} (a link to a file that is gone: after `dvc gc`, `dvc checkout` restores a tracked one)"
    )


def test_a_masks_folder_in_other_letter_case_is_named(tiny_set, tmp_path):
    (tiny_set / "masks").rename(tiny_set / "Masks")
    with pytest.raises(
        DataError, match=r"16 pair\(s\) like missing file masks/\S+ \(no masks/ folder; found Masks/\)\)"
    ):
        build(tiny_set, tmp_path / "out")


@pytest.mark.parametrize(
    "name, says",
    [
        ("area10452_sat_08.jpg", r"is not <scene>_sat_<rc>.<jpg\|png\|tif> with <scene> and <rc> whole numbers"),
        ("12_sat_3_4.jpg", r"whole numbers \(e.g. 10452_sat_08.jpg\), so its scene is unknown"),
        ("12_sat_34.bmp", r"^image '12_sat_34.bmp' has extension .bmp; images must be .jpg, .png or .tif$"),
    ],
)
def test_an_image_name_that_is_not_the_kaggle_form_says_why(name, says):
    from forestseg.dataset import pair_problem

    assert re.search(says, pair_problem(name, "12_mask_34.png"))


def test_a_mask_with_an_unread_extension_says_so():
    from forestseg.dataset import pair_problem

    assert pair_problem("12_sat_34.jpg", "12_mask_34.bmp") == (
        "mask '12_mask_34.bmp' has extension .bmp; masks must be .jpg, .png or .tif"
    )


@pytest.mark.parametrize("name", ["set", "Forest Segmented"])
def test_a_source_inside_a_kaggle_layout_folder_names_its_parent(tiny_set, tmp_path, name):
    """The advice is a command that pastes, the folder quoted for the shell and DVC where it needs it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    folder = tiny_set.rename(tiny_set.parent / name)
    with pytest.raises(DataError, match="has one: data.source names a folder inside .* set it to that one: ") as e:
        build(folder / "images", tmp_path / "out")
    dvc, exp, run, flag, item = shlex.split(str(e.value).rsplit(": ", 1)[1])
    assert (dvc, exp, run, flag) == ("dvc", "exp", "run", "-S")
    assert OverridesParser.create().parse_override(item).value() == str(folder)


@pytest.mark.parametrize("above", [1, 2])
def test_the_kaggle_zip_layout_is_found_below_the_source(tiny_set, tmp_path, above):
    """The Kaggle zip unpacks to 'Forest Segmented/Forest Segmented/{images,masks,meta_data.csv}'; the
    source may also be the folder the zip was unpacked in."""
    unzipped = tmp_path / "download"
    (unzipped / "Forest Segmented").mkdir(parents=True)
    tiny_set.rename(unzipped / "Forest Segmented" / "Forest Segmented")
    source = unzipped if above == 1 else tmp_path
    index, report = build(source, tmp_path / "out")
    assert report["valid"] == ROWS and report["source"].endswith("Forest Segmented/Forest Segmented")
    assert "as the Kaggle zip unpacks" in report["notes"][0]


def test_a_folder_named_meta_data_csv_is_called_a_folder_not_missing(tiny_set, tmp_path):
    (tiny_set / "meta_data.csv").unlink()
    (tiny_set / "meta_data.csv").mkdir()
    with pytest.raises(DataError, match=r"meta_data.csv: a folder, not a CSV file; a Kaggle-layout folder has"):
        build(tiny_set, tmp_path / "out")


def test_two_candidate_folders_below_the_source_stop(tiny_set, tmp_path):
    import shutil

    parent = tmp_path / "two"
    shutil.copytree(tiny_set, parent / "a")
    shutil.copytree(tiny_set, parent / "b")
    with pytest.raises(DataError, match=r"no meta_data.csv, but 2 folders below it have one .*set data.source"):
        build(parent, tmp_path / "out")


@pytest.mark.parametrize("layout", ["images-and-masks", "deepglobe"])
def test_scenes_to_cut_as_data_source_are_told_to_tile_not_to_download_kaggle(tiny_set, tmp_path, layout):
    """Large scenes (images/ + masks/ without meta_data.csv, or DeepGlobe's flat <id>_sat.jpg) are what
    `forestseg tile` cuts: that is the advice, not the Kaggle download."""
    root = tmp_path / "scenes"
    photo = (tiny_set / "images" / rows_of(tiny_set)[0][0]).read_bytes()
    if layout == "images-and-masks":
        for folder in ("images", "masks"):
            (root / folder).mkdir(parents=True)
            (root / folder / "region_a.jpg").write_bytes(photo)
    else:
        root.mkdir()
        (root / "100_sat.jpg").write_bytes(photo)
    with pytest.raises(DataError) as e:
        build(root, tmp_path / "out")
    assert str(e.value).startswith(f"{root / 'meta_data.csv'}: missing, and {root} holds scenes to cut into tiles")
    assert f"forestseg tile {root} -o <new folder>" in str(e.value) and "kaggle" not in str(e.value).lower()


@pytest.mark.parametrize("case", ["tiles-without-csv", "csv-link-to-nothing", "images-only", "region-named-sat"])
def test_a_missing_meta_data_csv_is_told_what_fits_the_folder(tiny_set, tmp_path, case):
    """Kaggle-named tiles that lost their CSV are no scenes to cut; a symlink left by DVC's cache is restored;
    a folder with neither masks nor DeepGlobe's <id>_sat names gets the download advice."""
    import shutil

    root = tmp_path / "set"
    shutil.copytree(tiny_set, root)
    (root / "meta_data.csv").unlink()
    if case == "csv-link-to-nothing":
        (root / "meta_data.csv").symlink_to(tmp_path / "gone.csv")
    elif case == "images-only":
        shutil.rmtree(root / "masks")
    elif case == "region-named-sat":  # 2020_region_sat.tif: not DeepGlobe's <id>_sat, which tile cuts
        shutil.rmtree(root / "masks")
        shutil.rmtree(root / "images")
        (root / "2020_region_sat.tif").write_bytes(b"II*\x00")
    with pytest.raises(DataError) as e:
        build(root, tmp_path / "out")
    says = {
        "tiles-without-csv": f"{root / 'meta_data.csv'}: missing from a folder of Kaggle-named tiles",
        "csv-link-to-nothing": f"{root / 'meta_data.csv'}: a symlink to no file ({tmp_path / 'gone.csv'}); restore",
        "images-only": f"{root / 'meta_data.csv'}: missing; a Kaggle-layout folder has meta_data.csv",
        "region-named-sat": f"{root / 'meta_data.csv'}: missing; a Kaggle-layout folder has meta_data.csv",
    }[case]
    assert str(e.value).startswith(says), e.value


# --- faults --------------------------------------------------------------------------------------


def test_a_full_disk_during_index_is_one_line_and_leaves_no_temp_files(tiny_set, tmp_path, monkeypatch):
    import errno
    import os

    from forestseg.errors import ForestsegError

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "out"
    with pytest.raises(
        ForestsegError, match=r"images.npy: cannot write it: no space left on the device \(\d+ MiB free\)"
    ):
        build(tiny_set, out)
    assert list(out.iterdir()) == []  # no temp arrays left behind


def test_a_full_disk_during_the_index_stage_names_the_array_not_its_temp(tiny_set, tmp_path, monkeypatch):
    """index_folder writes the arrays to temps that build_index wraps in writes of its own: the line named
    the outer temp (data/packed/.images.~host-pid.x.tmp.npy, hidden and gone), not images.npy (a review)."""
    import errno
    import os

    from forestseg.config import DataConfig
    from forestseg.dataset import index_folder
    from forestseg.errors import ForestsegError
    from forestseg.layout import DataLayout

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    layout = DataLayout(tmp_path / "data")
    with pytest.raises(ForestsegError) as err:
        index_folder(tiny_set, layout, DataConfig())
    assert str(err.value).startswith(f"{layout.images}: cannot write it: no space left on the device"), err.value
    assert not [p for p in layout.root.rglob("*") if p.is_file()]  # no temp arrays left behind


def test_untracked_data_inside_the_project_is_refused(tiny_set, tmp_path):
    import subprocess

    from forestseg.dataset import check_tracked

    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    inside = project / "data" / "raw" / "kaggle"
    tiny_set.rename(inside)
    with pytest.raises(
        DataError,
        match=r"data.source data/raw/kaggle is inside the project but not tracked by DVC: "
        r".*run `dvc add data/raw/kaggle`",
    ):
        check_tracked(inside, project)
    (project / "data" / "raw" / ".gitignore").write_text("/kaggle\n")  # what `dvc add` writes
    check_tracked(inside, project)
    check_tracked(tmp_path / "elsewhere", project)  # outside the project: nothing to commit by mistake


@pytest.mark.parametrize("link", ["data/raw/kaggle", "data/raw"])  # the folder itself, or a folder above it
def test_a_link_inside_the_project_to_data_outside_it_is_refused(tiny_set, tmp_path, link):
    """git sees the link, and `dvc exp run`'s commit took the files it shows: a link to the real sample
    put its 2072 files in an experiment's commit (a review). Ignored, it is fine."""
    import subprocess

    from forestseg.dataset import check_tracked

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    outside = tmp_path / "outside"
    (outside / "kaggle").parent.mkdir()
    tiny_set.rename(outside / "kaggle")
    if link == "data/raw":
        (project / "data" / "raw").symlink_to(outside)
    else:
        (project / "data" / "raw").mkdir()
        (project / link).symlink_to(outside / "kaggle")
    source = project / "data" / "raw" / "kaggle"
    with pytest.raises(DataError) as err:
        check_tracked(source, project)
    assert str(err.value) == (
        f"data.source {source}: {link} is a link inside the project (to {(project / link).resolve()}) that git "
        f"does not ignore: every `dvc exp run` would commit the files it shows to git; set data.source to the "
        f"folder itself (`dvc exp run -S data.source={outside / 'kaggle'}`), or put /{Path(link).name} in "
        f"{Path(link).parent / '.gitignore'}"
    )
    (project / Path(link).parent / ".gitignore").write_text(f"/{Path(link).name}\n")
    check_tracked(source, project)


@pytest.mark.parametrize(
    "name, option", [("kaggle", "-S data.source=data/raw/kaggle"), ("mé data", "-S \"data.source='data/raw/mé data'\"")]
)
def test_the_parent_of_a_tracked_folder_is_told_to_name_the_folder(tmp_path, name, option):
    """`dvc add data/raw` would overlap the tracked data/raw/<name>: the advice must be the folder itself."""
    import subprocess

    from forestseg.dataset import check_tracked

    project = tmp_path / "project"
    (project / "data" / "raw" / name).mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / "data" / "raw" / f"{name}.dvc").write_text("outs:\n- path: x\n")
    (project / "data" / "raw" / ".gitignore").write_text(f"/{name}\n")
    (project / "data" / "raw" / "notes.txt").write_text("not ignored: git would commit the folder\n")
    with pytest.raises(DataError) as e:
        check_tracked(project / "data" / "raw", project)
    assert f"holds DVC-tracked {name}: set data.source to the one with meta_data.csv (`dvc exp run {option}`)" in str(
        e.value
    )
    # the option as a shell passes it is one that DVC's override parser reads as the folder
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(shlex.split(option)[1]).value() == f"data/raw/{name}"


def test_skipped_pairs_are_counted_by_kind_of_reason(tiny_set, tmp_path):
    rows = rows_of(tiny_set)
    for image, _ in rows[:3]:
        (tiny_set / "images" / image).unlink()
    (tiny_set / "masks" / rows[3][1]).write_bytes(b"not a picture")
    _, report = build(tiny_set, tmp_path / "out")
    assert report["skipped"] == 4
    assert report["skipped_by_reason"]["missing file images/<image>"] == 3  # one count for the kind, not one per file
    assert sum(report["skipped_by_reason"].values()) == 4 and len(report["skipped_by_reason"]) == 2


@pytest.mark.parametrize("missing", [20, 21])
def test_the_printed_report_lists_20_skipped_pairs_then_counts_the_rest(tiny_set, tmp_path, missing: int):
    edit_meta(tiny_set, lambda lines: lines + [f"9{k}_sat_0.png,9{k}_mask_0.png" for k in range(missing)])
    _, report = build(tiny_set, tmp_path / "out")
    lines = format_report(report).splitlines()
    assert report["skipped"] == missing and sum(line.startswith("  skipped ") for line in lines) == 20
    assert lines.count("  ... and 1 more (see the index report)") == (missing == 21)


def test_skipped_pairs_of_one_kind_with_other_numbers_count_as_one_kind(tiny_set, tmp_path):
    rows = rows_of(tiny_set)
    for (image, _), side in zip(rows[:2], (48, 40)):  # two sizes, one reason
        save_jpeg(tiny_set / "images" / image, "RGB", side, (30, 80, 30))
    _, report = build(tiny_set, tmp_path / "out")
    assert report["skipped_by_reason"] == {"image is <n>x<n>, the set's tiles are <n>x<n>": 2}


@pytest.mark.parametrize(
    "name, says",
    [("set.zip", "is a file, not a folder; a zip: unzip it"), ("meta_data.csv", "set data.source to its folder")],
)
def test_a_file_as_data_source_says_so(tmp_path, name, says):
    path = tmp_path / name
    path.write_text("x")
    with pytest.raises(DataError, match=says):
        build(path, tmp_path / "out")


@pytest.mark.parametrize("orientation", [None, 5, 6])
def test_non_square_tiles_count_forest_over_height_times_width(tmp_path: Path, orientation) -> None:
    """Tiles 24 high and 40 wide (as shown: a photo stored 40x24 with EXIF orientation 6 turns to it):
    each tile's forest fraction is its forest pixels over 24 x 40, not over a square."""
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image,mask"]
    rng = np.random.default_rng(0)
    for scene in (1, 2, 3):
        name = f"{scene}_sat_0"
        photo = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
        if orientation is None:
            Image.fromarray(photo).save(root / "images" / f"{name}.png")
        else:  # stored turned back, tagged to be shown turned: the shown picture is `photo`
            from forestseg.images import EXIF_ORIENTATION

            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = orientation
            stored = np.swapaxes(photo, 0, 1) if orientation == 5 else np.rot90(photo, 1)  # 5: transpose; 6: turned
            Image.fromarray(np.ascontiguousarray(stored)).save(root / "images" / f"{name}.jpg", exif=exif)
        mask = np.zeros((24, 40), np.uint8)
        mask[:, : 10 * scene] = 255  # 240, 480, 720 forest pixels
        Image.fromarray(mask).save(root / "masks" / f"{scene}_mask_0.png")
        rows.append(f"{name}{'.png' if orientation is None else '.jpg'},{scene}_mask_0.png")
    (root / "meta_data.csv").write_text("\n".join(rows) + "\n")
    index, report = build(root, tmp_path / "out")
    assert report["valid"] == 3 and report["tile_size"] == [24, 40]
    assert index["forest_fraction"].tolist() == [round(10 * s * 24 / (24 * 40), 6) for s in (1, 2, 3)]
    assert index["pixels"].tolist() == [24 * 40] * 3  # the split's and summaries' denominators


@pytest.mark.parametrize(
    "scenes, test, val, counts",
    [
        (10, 0.28, 0.0, {"test": 3, "train": 7}),  # 2.8 scenes rounds to 3, not down to 2
        (10, 0.2, 0.15, {"test": 2, "val": 2, "train": 6}),  # 1.5 val scenes round to 2
        (3, 0.6, 0.3, {"test": 1, "val": 1, "train": 1}),  # each side keeps one
        (4, 0.05, 0.0, {"test": 1, "train": 3}),  # at least one test scene
        (8, 0.25, 0.05, {"test": 2, "val": 1, "train": 5}),  # 0.4 val scenes: a val split asked for keeps one
        (45, 0.7, 0.0, {"test": 32, "train": 13}),  # 31.5 to even; in floats 31.4999... gave 31
        (110, 0.1, 0.55, {"test": 11, "val": 60, "train": 39}),  # 60.5 to even; in floats 60.5000...1 gave 61
    ],
)
def test_the_split_gives_each_subset_its_rounded_share_of_scenes(scenes: int, test: float, val: float, counts) -> None:
    from forestseg.config import SplitConfig

    index = pd.DataFrame({"image": [f"{s}_sat_{k}.jpg" for s in range(scenes) for k in range(2)]})
    index["scene"] = index["image"].str.split("_").str[0]
    split = split_index(index, SplitConfig(by="scene", test_fraction=test, val_fraction=val))
    per_subset = split.groupby("subset")["scene"].nunique().to_dict()
    assert per_subset == counts


@pytest.mark.parametrize(
    "path", ["data/raw/kaggle", "Forest Segmented", "data/mé", "it's", 'say "hi"', "C:\\tiles\\", "a$b!", "2024/x"]
)
def test_the_source_option_reaches_dvc_as_the_path(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from forestseg.dataset import set_source

    flag, item = shlex.split(set_source(path))  # as the shell passes it
    assert flag == "-S" and OverridesParser.create().parse_override(item).value() == path


@pytest.mark.parametrize("index", [None, "", 'image,scene\n"x,1\n'])
def test_split_without_a_readable_index_names_the_stage_that_writes_it(tmp_path, index):
    from forestseg.dataset import split_folder
    from forestseg.layout import DataLayout

    layout = DataLayout(tmp_path)
    if index is not None:
        layout.index_csv.write_text(index)
    with pytest.raises(
        DataError, match=r"index\.csv: cannot be read \(.+\); the index stage writes it: dvc repro index"
    ):
        split_folder(layout, SplitConfig())


GOOD_INDEX = "image,mask,scene,forest_pixels,pixels\n1_sat_0.jpg,1_mask_0.jpg,1,3,4\n2_sat_0.jpg,2_mask_0.jpg,2,1,4\n"


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda t: t.replace(",scene", ",place"), r"no column scene \(has image, mask, place, forest_pixels, pixels\)"),
        (lambda t: t.replace(",pixels", ",px"), r"no column pixels"),
        (lambda t: t.replace(",2,1,4", ",,1,4"), r"data row 2 has an empty image or scene cell"),
        (lambda t: t.replace(",1,3,4", ",1,many,4"), r"data row 1: forest_pixels and pixels must be counts"),
        (lambda t: t.replace(",2,1,4", ",2,1,0"), r"data row 2: forest_pixels and pixels must be counts"),
        (lambda t: t.replace(",2,1,4", ",2,5,4"), r"data row 2: forest_pixels and pixels must be counts"),
        (lambda t: t.replace(",2,1,4", ",2,0,0"), r"data row 2: forest_pixels and pixels must be counts"),  # 0 / 0
        (lambda t: t.replace(",2,1,4", ",2,-1,4"), r"data row 2: forest_pixels and pixels must be counts"),
    ],
)
def test_split_of_a_hand_broken_index_is_one_line(tmp_path, edit, says):
    from forestseg.dataset import split_folder
    from forestseg.layout import DataLayout

    layout = DataLayout(tmp_path)
    layout.index_csv.write_text(GOOD_INDEX)
    assert split_folder(layout, SplitConfig())["test"]["tiles"] == 1  # the file as index writes it
    layout.index_csv.write_text(edit(GOOD_INDEX))
    with pytest.raises(DataError, match=rf"index\.csv: {says}.*; the index stage writes it: dvc repro index"):
        split_folder(layout, SplitConfig())


def test_a_deepglobe_scene_listed_as_a_tile_is_told_to_be_cut(tiny_set, tmp_path):
    edit_meta(tiny_set, lambda lines: lines + ["104_sat.jpg,104_mask.png"])
    index, report = build(tiny_set, tmp_path / "out")
    [skipped] = report["skipped_pairs"]
    assert "named as a DeepGlobe scene (<id>_sat, no tile number)" in skipped["reason"]
    assert "forestseg tile" in skipped["reason"]


def test_an_index_run_stopped_before_its_end_leaves_the_old_data_folder_whole(tmp_path, monkeypatch) -> None:
    """The arrays, their digest and index.csv are put in place together: stopped while it writes index.csv
    (after hashing the new arrays, which takes seconds on a real set), the old four stay, and no temp."""
    import forestseg.dataset as dataset
    from forestseg.config import DataConfig
    from forestseg.layout import DataLayout

    layout = DataLayout(tmp_path / "data")
    dataset.index_folder(make_set(tmp_path / "a", scenes=2, grid=2, tile_size=32), layout, DataConfig())
    files = [layout.images, layout.masks, layout.digest, layout.index_csv]
    before = {p: p.read_bytes() for p in files}

    def stopped(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "write_csv", stopped)
    with pytest.raises(KeyboardInterrupt):
        dataset.index_folder(make_set(tmp_path / "b", scenes=3, grid=2, tile_size=32), layout, DataConfig())
    assert {p: p.read_bytes() for p in files} == before
    assert sorted(p.name for p in layout.root.rglob("*") if p.is_file()) == sorted(p.name for p in files)


def test_an_index_run_stopped_while_its_arrays_are_flushed_leaves_the_old_data_folder_whole(
    tmp_path, monkeypatch
) -> None:
    """Each of the four was fsynced and renamed in turn: index.csv and the digest were already the new
    set's while images.npy was flushed, and a stop there left them over the old arrays. Now all are
    flushed before the first rename."""
    import forestseg.dataset as dataset
    import forestseg.io
    from forestseg.config import DataConfig
    from forestseg.layout import DataLayout

    layout = DataLayout(tmp_path / "data")
    dataset.index_folder(make_set(tmp_path / "a", scenes=2, grid=2, tile_size=32), layout, DataConfig())
    files = [layout.images, layout.masks, layout.digest, layout.index_csv]
    before = {p: p.read_bytes() for p in files}
    real = forestseg.io.os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".images."):  # index_folder's own temp
            raise KeyboardInterrupt
        real(fd)

    monkeypatch.setattr(forestseg.io.os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        dataset.index_folder(make_set(tmp_path / "b", scenes=3, grid=2, tile_size=32), layout, DataConfig())
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in files} == before
    assert sorted(p.name for p in layout.root.rglob("*") if p.is_file()) == sorted(p.name for p in files)


def test_the_all_forest_baseline_is_scored_on_the_test_scenes_alone() -> None:
    """Not on val too: val's forest share is another (here 10 %), and the baseline is the test's."""
    index = pd.DataFrame({"scene": ["1", "2", "3"], "forest_pixels": [50, 10, 60], "pixels": [100, 100, 100]})
    split = pd.DataFrame({"scene": ["1", "2", "3"], "subset": ["train", "val", "test"]})
    summary = split_summary(index, split)
    assert summary["baseline_all_forest"]["iou"] == pytest.approx(0.6)
    assert [summary[k]["forest_fraction"] for k in ("train", "val", "test")] == [0.5, 0.1, 0.6]


@pytest.mark.parametrize("seed, val, test", [(0, ["2", "7"], ["4", "6"]), (7, ["1", "7"], ["0", "8"])])
def test_a_split_seed_puts_the_same_scenes_in_val_and_test_on_every_version(seed: int, val: list, test: list) -> None:
    """Pinned: which scenes split.seed sends where is part of every result's meaning (a change to how the
    split draws would move scenes between train and test under the same params, and DVC's cache would
    hold both as one); change these only with a note that every earlier number is off."""
    index = pd.DataFrame(
        {
            "image": [f"{s}_sat_{t}.jpg" for s in range(10) for t in range(2)],
            "scene": [str(s) for s in range(10) for t in range(2)],
            "forest_pixels": 1,
            "pixels": 4,
        }
    )
    split = split_index(index, SplitConfig(by="scene", test_fraction=0.2, val_fraction=0.2, seed=seed))
    assert sorted(scenes_of(split, "val"), key=int) == val and sorted(scenes_of(split, "test"), key=int) == test


def test_a_row_repeated_under_a_tiles_other_name_is_a_duplicate_row_once(tiny_set, tmp_path) -> None:
    """The first tile listed again twice as 0<name>: the first repeat is the same tile under another name,
    the second an exact duplicate row of it, each counted under its own reason."""
    import shutil

    image, mask = next((i, m) for i, m in rows_of(tiny_set) if i.endswith("_00.jpg"))
    again = (f"0{image}", f"0{mask}")
    for folder, old, new in (("images", image, again[0]), ("masks", mask, again[1])):
        shutil.copy(tiny_set / folder / old, tiny_set / folder / new)
    edit_meta(tiny_set, lambda lines: [*lines, ",".join(again), ",".join(again)])
    index, report = build(tiny_set, tmp_path / "out")
    assert report["skipped_by_reason"] == {
        "duplicate row of meta_data.csv": 1,
        "the same tile as the image listed before under another name": 1,
    }
    assert_accounted(report, index)
