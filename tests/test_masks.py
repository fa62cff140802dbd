"""forestseg.masks and the index on masks of every convention: read right, or refused clearly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_set
from PIL import Image

from forestseg.dataset import DataError, build_index
from forestseg.masks import MaskMismatch, Stats, describe, far_low_share, flat_low_share, forest_of, is_grey

# DeepGlobe land-cover colours; forest is green
DEEPGLOBE = {
    "forest": (0, 255, 0),
    "agriculture": (255, 255, 0),
    "urban": (0, 255, 255),
    "rangeland": (255, 0, 255),
    "water": (0, 0, 255),
    "barren": (255, 255, 255),
}


def truths(root: Path) -> dict[str, np.ndarray]:
    """mask file name -> the forest truth (bool) of the synthetic 0/255 masks."""
    out = {}
    for path in sorted((root / "masks").iterdir()):
        with Image.open(path) as im:
            out[path.name] = np.asarray(im.convert("L")) >= 128
    return out


def rewrite(root: Path, encode) -> dict[str, np.ndarray]:
    """Re-save every mask as encode(truth) in a lossless PNG (under the same name); returns the truths."""
    t = truths(root)
    for name, truth in t.items():
        Image.fromarray(encode(truth)).save(root / "masks" / name, format="PNG")
    return t


def other_classes(truth: np.ndarray) -> np.ndarray:
    """A class id per non-forest pixel, in stripes: 1..5 for agriculture..barren."""
    cols = np.arange(truth.shape[1])[None, :].repeat(truth.shape[0], 0)
    return 1 + cols * 5 // truth.shape[1]


def as_01(truth):
    return truth.astype(np.uint8)


def as_deepglobe(truth):
    palette = np.array(list(DEEPGLOBE.values()), np.uint8)
    return palette[np.where(truth, 0, other_classes(truth))]


def as_resampled(truth):
    """0/255 masks as a bilinear resize leaves them: each pixel the mean of its 2x2 neighbourhood, so
    edges ramp through 64, 128 and 191."""
    t = np.pad(truth.astype(np.float64) * 255, ((0, 1), (0, 1)), mode="edge")
    return np.round((t[:-1, :-1] + t[1:, :-1] + t[:-1, 1:] + t[1:, 1:]) / 4).astype(np.uint8)


def as_three_levels(truth):
    """0/128/255 classes: forest 255, a middle class 128, the rest 0."""
    return np.where(truth, 255, np.where(other_classes(truth) % 2 == 0, 128, 0)).astype(np.uint8)


def index(root: Path, tmp_path: Path, masks: str = "0/255", forest: tuple = ()):
    out = tmp_path / "packed"
    idx, report = build_index(root, out / "images.npy", out / "masks.npy", masks, forest, workers=2)
    return idx, report, np.load(out / "masks.npy")


def assert_packed_is_truth(idx, packed, t):
    for row, name in enumerate(idx["mask"]):
        assert np.array_equal(packed[row], t[name].astype(np.uint8)), name


# --- forest_of on single masks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "convention, forest, mask, expected",
    [
        ("0/255", (), np.array([[0, 12, 250, 255]], np.uint8), [[0, 0, 1, 1]]),
        ("resampled", (), np.array([[0, 3, 64, 127, 128, 191, 250, 255]], np.uint8), [[0, 0, 0, 0, 1, 1, 1, 1]]),
        ("resampled", (), np.array([[0, 12, 250, 255]], np.uint8), [[0, 0, 1, 1]]),  # a 0/255 mask fits it too
        ("0/1", (), np.array([[0, 1, 1, 0]], np.uint8), [[0, 1, 1, 0]]),
        ("classes", (3,), np.array([[0, 3, 2, 3]], np.uint8), [[0, 1, 0, 1]]),
        ("classes", (2, 3), np.array([[0, 3, 2, 1]], np.uint8), [[0, 1, 1, 0]]),
        (
            "colors",
            ((0, 255, 0),),
            np.array([[[0, 255, 0], [255, 255, 0], [10, 240, 20], [255, 255, 255]]], np.uint8),
            [[1, 0, 0, 0]],  # 4 colours: lossless, so only the exact colour (JPEG's tolerance: below)
        ),
    ],
)
def test_forest_of_reads_each_convention(convention, forest, mask, expected):
    assert forest_of(mask, convention, forest).tolist() == expected


@pytest.mark.parametrize(
    "convention, forest, mask, found",
    [
        ("0/255", (), np.resize(np.array([0, 128, 255], np.uint8), (8, 8)), r"not a 0/255 mask.*128"),
        ("0/1", (), np.resize(np.array([0, 255], np.uint8), (8, 8)), r"not a 0/1 mask, values found: .*255"),
        (
            "resampled",
            (),
            np.repeat([[0, 0, 128, 128, 128, 255, 255, 255]], 8, 0).astype(np.uint8),
            r"not a resampled.*128",
        ),
        ("resampled", (), np.resize(np.array([0, 1], np.uint8), (8, 8)), r"not a resampled.*1 \(50%\)"),
        ("0/255", (), np.resize(np.array([0, 1], np.uint8), (8, 8)), r"not a 0/255 mask.*1 \(50%\); 50\.0% in 1-31"),
        ("0/255", (), np.resize(np.array([[0, 255, 0], [255, 255, 0]], np.uint8), (8, 8, 3)), r"colour-coded mask"),
        ("classes", (1,), np.arange(64, dtype=np.uint8).reshape(8, 8), r"more than 16 distinct values"),
        ("colors", ((0, 255, 0),), np.zeros((8, 8), np.uint8), r"single-band mask"),
    ],
)
def test_a_mask_that_fits_no_declared_convention_names_its_values(convention, forest, mask, found):
    with pytest.raises(MaskMismatch, match=found):
        forest_of(mask, convention, forest)


@pytest.mark.parametrize("grey, refused", [(31, False), (32, True), (223, True), (224, False)])
def test_mid_grey_is_32_to_223_inclusive(grey: int, refused: bool) -> None:
    """A 0/255 mask with 2 % of its pixels at one grey level: mid-grey (AMBIGUOUS, both ends in) is
    refused beyond 1 %; 224 and up is 255-ish JPEG noise (forest), 31 and below 0-ish."""
    mask = np.zeros((50, 50), np.uint8)
    mask[:25] = 255
    mask[25, :50] = grey  # 50 of 2500 pixels: 2 %
    if refused:
        with pytest.raises(MaskMismatch, match=r"not a 0/255 mask"):
            forest_of(mask, "0/255", ())
    else:
        assert forest_of(mask, "0/255", ())[25].all() == (grey >= 128)


# --- whole sets ----------------------------------------------------------------------------------


@pytest.fixture
def kaggle_like(tmp_path: Path) -> Path:
    return make_set(tmp_path / "set", scenes=4, grid=2, tile_size=32)


def test_inverted_masks_that_fit_their_convention_stop(kaggle_like, tmp_path):
    """Lossless 0/255 masks with forest 0 fit '0/255' as well: every scene's "forest" (the fields and
    roads) was brighter than the rest, and the set trained on the background, exit 0."""
    # lossless masks as they are, with data.forest naming their background: not "invert them", nor a
    # circle back to the setting given
    rewrite(kaggle_like, lambda truth: np.where(truth, 255, 0).astype(np.uint8))
    with pytest.raises(DataError, match=r"does data\.forest \(\[0\]\) name the background\? set it to the forest"):
        index(kaggle_like, tmp_path / "x", "classes", (0,))
    t = rewrite(kaggle_like, lambda truth: np.where(truth, 0, 255).astype(np.uint8))
    with pytest.raises(
        DataError,
        match=r"masks: forest \(read with data\.masks '0/255'\) is brighter than the rest "
        r"in 4 of 4 scenes \(mean grey \d+ against \d+\).*are the masks inverted\?",
    ):
        index(kaggle_like, tmp_path / "a")
    idx, _, packed = index(kaggle_like, tmp_path / "b", "classes", (0,))  # what the message offers
    assert_packed_is_truth(idx, packed, t)
    out = tmp_path / "c"  # imagery where forest is bright (near-infrared): the check is off
    _, report = build_index(kaggle_like, out / "i.npy", out / "m.npy", check_inverted=False)
    assert report["valid"] == 16


@pytest.mark.parametrize(
    "scenes, inverted, stops",
    [(3, 2, False), (7, 2, False), (4, 3, True), (5, 3, False), (6, 4, True)],  # at least 3 scenes, 2 in 3 of them
)
def test_some_scenes_inverted_stop_only_past_the_share(tmp_path, scenes, inverted, stops):
    """A few scenes brighter under forest (bright crowns, dark fields) are imagery, not inverted masks."""
    root = make_set(tmp_path / "set", scenes=scenes, grid=2, tile_size=32)
    t = truths(root)
    flipped = sorted({name.split("_")[0] for name in t})[:inverted]
    for name, truth in t.items():
        inverted_here = name.split("_")[0] in flipped
        Image.fromarray(np.where(truth != inverted_here, 255, 0).astype(np.uint8)).save(root / "masks" / name, "PNG")
    if stops:
        with pytest.raises(DataError, match=rf"brighter than the rest in {inverted} of {scenes} scenes"):
            index(root, tmp_path / "a")
    else:  # not silently: the scenes are named
        report = index(root, tmp_path / "a")[1]
        assert report["valid"] == 4 * scenes
        assert any(
            n.startswith(
                f"forest (read with data.masks '0/255') is brighter than the rest in {inverted} of {scenes} "
                f"scenes ({', '.join(flipped)}), where"
            )
            for n in report["notes"]
        ), report["notes"]


@pytest.mark.parametrize("brighter, stops", [(2, False), (12, True)])
def test_forest_a_few_grey_levels_brighter_is_no_inverted_set(tmp_path, brighter: int, stops: bool):
    """INVERTED_MARGIN: photos whose forest is 2 levels brighter than the rest in every scene are
    imagery within noise, not masks coding the background as forest; 12 levels in every scene are."""
    root = make_set(tmp_path / "set", scenes=4, grid=2, tile_size=32)
    for name, truth in truths(root).items():
        photo = np.where(truth, 100 + brighter, 100).astype(np.uint8)
        Image.fromarray(np.dstack([photo] * 3)).save(root / "images" / name.replace("_mask_", "_sat_"), "PNG")
    if stops:
        with pytest.raises(DataError, match=r"brighter than the rest in 4 of 4 scenes"):
            index(root, tmp_path / "a")
    else:
        report = index(root, tmp_path / "a")[1]
        assert report["valid"] == 16 and not any("brighter" in n for n in report["notes"]), report["notes"]


def test_0_1_masks_train_the_same_targets_as_0_255(kaggle_like, tmp_path):
    t = truths(kaggle_like)
    idx255, _, packed255 = index(kaggle_like, tmp_path / "a")
    rewrite(kaggle_like, as_01)
    idx01, report, packed01 = index(kaggle_like, tmp_path / "b", "0/1")
    assert report["masks"] == "grey 0/1, forest = 1" and report["skipped"] == 0
    assert np.array_equal(packed01, packed255)
    assert_packed_is_truth(idx01, packed01, t)


def test_0_1_masks_under_the_default_stop_and_say_which_param(kaggle_like, tmp_path):
    rewrite(kaggle_like, as_01)
    with pytest.raises(
        DataError,
        match=r"data\.masks is '0/255', but 16 of 16 masks do not fit it \(e\.g\. .*not a 0/255 mask \(lossless, 0s and 1s only: "
        r"a 0/1 mask\), values found: [01] \(\d+%\), [01] \(\d+%\); .* in 1-31\); they look like 0/1 masks: set data\.masks: '0/1'",
    ):
        index(kaggle_like, tmp_path)


def test_the_misfit_count_says_how_many_pairs_were_skipped_for_other_reasons(kaggle_like, tmp_path):
    rewrite(kaggle_like, as_01)
    meta = kaggle_like / "meta_data.csv"
    lines = meta.read_text().splitlines()
    mask = lines[1].split(",")[1]
    (kaggle_like / "masks" / mask).unlink()  # one pair skipped as missing: not among the 16 counted
    with pytest.raises(DataError, match=r"but 15 of 15 masks do not fit it \(e\.g\. .*; 1 other pair\(s\) skipped for"):
        index(kaggle_like, tmp_path)


def with_unlabelled_corner(truth):
    """0/1 masks with a 255 "no label" corner: forest is 1, not 255."""
    out = truth.astype(np.uint8)
    out[:5, :5] = 255
    return out


def test_0_1_masks_with_255_for_no_label_stop_under_the_default_and_read_as_classes(kaggle_like, tmp_path):
    t = rewrite(kaggle_like, with_unlabelled_corner)
    with pytest.raises(DataError, match=r"masks do not fit it .*set data\.masks: classes and data\.forest"):
        index(kaggle_like, tmp_path / "a")
    idx, _, packed = index(kaggle_like, tmp_path / "b", "classes", (1,))
    for truth in t.values():
        truth[:5, :5] = False  # the unlabelled corner is not forest
    assert_packed_is_truth(idx, packed, t)


def test_sparse_forest_coded_1_beside_a_little_255_stops_under_the_default(kaggle_like, tmp_path):
    """4 % of each mask at 1, scattered, not beside the 255s as a JPEG's noise would be: not 0/255."""
    rng = np.random.default_rng(0)

    def few_low(truth):
        out = np.zeros(truth.shape, np.uint8)
        out.flat[rng.choice(out.size, out.size // 25, replace=False)] = 1  # 4 %: forest, coded 1
        out[0, :4] = 255  # in one 16-px block of the 4
        return out

    rewrite(kaggle_like, few_low)
    with pytest.raises(DataError, match=r"16 of 16 masks do not fit it .*not a 0/255 mask.* in 1-31"):
        index(kaggle_like, tmp_path)


def with_unlabelled_lines(truth):
    """0/1 masks crossed by 255 "no label" lines every 8 px: every JPEG block holds a 255, so the 1s
    lie beside high values as a 0/255 mask's JPEG noise does; forest is 1, the lines no label."""
    out = truth.astype(np.uint8)
    out[::8, :] = 255
    out[:, ::8] = 255
    return out


@pytest.mark.parametrize("masks", ["0/255", "resampled"])
def test_forest_coded_1_in_regions_beside_255_for_no_label_stops(kaggle_like, tmp_path, masks):
    """The 1s fill regions (flat at one level 1-31): class ids, whatever 255s lie near them."""
    t = rewrite(kaggle_like, with_unlabelled_lines)
    with pytest.raises(DataError, match=r"values 1-31 fill flat regions \(\d+% of pixels\): class ids, e\.g\. 0/1"):
        index(kaggle_like, tmp_path / "a", masks)
    idx, _, packed = index(kaggle_like, tmp_path / "b", "classes", (1,))
    for truth in t.values():
        truth[::8, :] = truth[:, ::8] = False  # the unlabelled lines are not forest
    assert_packed_is_truth(idx, packed, t)


def test_flat_low_share_counts_whole_patches_of_one_value_1_31_only():
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 4:8] = 1  # a 4x4 region of class 1: its inner 2x2 have all 8 neighbours at 1
    mask[20, 20:30] = 2  # a 1 px line: no pixel has a flat 3x3 patch
    mask[24:28, 4:8] = 200  # flat, but not at 1-31
    mask[12:20, 12:20] = 2 + np.indices((8, 8)).sum(0) % 2  # a gentle plateau of 2s and 3s: not one value
    assert flat_low_share(mask) == 4 / mask.size


def test_sparse_forest_coded_1_in_regions_beside_255_stops_under_the_default():
    """Forest coded 1 on 2.7 % of a tile crossed by 255 no-label lines: read as 0/255, the lines would be
    forest and the forest background."""
    mask = np.zeros((256, 256), np.uint8)
    mask[::8, :] = mask[:, ::8] = 255
    mask[96:144, 96:144][mask[96:144, 96:144] == 0] = 1  # 36 cells of 7x7: 1.4 % of pixels flat
    with pytest.raises(MaskMismatch, match=r"values 1-31 fill flat regions \(1% of pixels\)"):
        forest_of(mask, "0/255")


@pytest.mark.parametrize("seed", range(6))
def test_a_jpeg_mask_upsampled_4x_reads_as_resampled(seed):
    """Upsampling smooths JPEG noise near 0 into gentle slopes (3-5 % of pixels level within 4, refused
    by a tolerant count): never flat at one value."""
    import io

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    blob = np.zeros((128, 128), bool)
    for _ in range(6):
        cy, cx, r = rng.integers(0, 128, 3)
        blob |= (yy - cy) ** 2 + (xx - cx) ** 2 < (r // 3 + 8) ** 2
    buffer = io.BytesIO()
    Image.fromarray((blob * 255).astype(np.uint8)).save(buffer, "JPEG", quality=75)
    with Image.open(buffer) as im:
        up = np.asarray(im.resize((512, 512), Image.BILINEAR))
    assert forest_of(up, "resampled").mean() == pytest.approx(blob.mean(), abs=0.01)


def test_a_lossless_0_1_mask_with_few_1s_is_no_0_255_mask():
    """Its 1s fall within 0/255's tolerance for JPEG noise near 0 (under 1 % away from any 255): read as
    all background, a mixed set's sparse 0/1 mask lost its forest without being counted."""
    mask = np.zeros((64, 64), np.uint8)
    mask[:5, :5] = 1  # 0.6 % forest
    with pytest.raises(MaskMismatch, match=r"not a 0/255 mask \(lossless, 0s and 1s only: a 0/1 mask\)"):
        forest_of(mask, "0/255")
    assert forest_of(mask, "0/1").sum() == 25
    assert not forest_of(np.zeros((64, 64), np.uint8), "0/255").any()  # all background: either convention


def test_far_low_share_counts_low_values_away_from_any_high_one():
    mask = np.zeros((64, 64), np.uint8)
    mask[:8, :8] = 255
    mask[8:12, :8] = 3  # JPEG-like noise in the block the edge crosses: not counted
    mask[60:, 60:] = 1  # 16 px of 1 in a block without 255
    mask[16, 16] = 2  # the next block
    assert far_low_share(mask) == 17 / 64**2
    assert far_low_share(np.zeros((5, 7), np.uint8)) == 0.0 and far_low_share(np.ones((5, 7), np.uint8)) == 1.0


@pytest.mark.parametrize(
    "values, current, advice",
    [
        ({0: 900, 255: 100, 3: 5}, "0/255", "check data.masks and data.forest"),  # never the convention they misfit
        ({0: 900, 255: 100}, "0/1", "set data.masks: '0/255'"),
        ({0: 500, 1: 500}, "0/255", "set data.masks: '0/1'"),
        ({0: 250, 1: 250, 2: 250, 4: 250}, "0/255", "set data.masks: classes"),  # LandCover.ai's ids, not 0/255
        ({0: 500, 128: 300, 255: 200}, "0/255", "set data.masks: classes"),
        ({0: 500, 128: 300, 255: 200}, "resampled", "set data.masks: classes"),
        # 0/1 with 255 for "no label", lossless: not '0/255', which they misfit too (the advice went in a circle)
        (
            {0: 550, 1: 200, 255: 250},
            "0/1",
            "set data.masks: classes and data.forest: [<forest's value(s)>] (the other "
            "values, 255 among them, are read as not forest: no value means 'no label')",
        ),
        # 0/255 masks declared as classes with dark forest: as 0/255 they would read inverted
        (
            {0: 600, 255: 400},
            ("classes", (0,)),
            "if forest is white in them, set data.masks: '0/255'; if it is black (inverted masks), invert them "
            "first (255 - value, saved lossless), then set data.masks: '0/255'",
        ),
        ({0: 600, 255: 400}, ("classes", (255,)), "they look like 0/255 masks: set data.masks: '0/255'"),
        # forest declared 1, a value these masks do not hold: not inverted, only another convention
        ({0: 600, 255: 400}, ("classes", (1,)), "they look like 0/255 masks: set data.masks: '0/255'"),
    ],
)
def test_the_advice_names_a_convention_the_values_fit(values, current, advice):
    stats = Stats()
    counts = np.zeros(256, np.int64)
    counts[list(values)] = list(values.values())
    stats.add_summary((True, counts))
    current, forest = current if isinstance(current, tuple) else (current, ())
    assert advice in stats.suggest(current, forest)


def test_resampled_masks_stop_under_the_default_and_train_as_resampled(kaggle_like, tmp_path):
    t = truths(kaggle_like)
    rewrite(kaggle_like, as_resampled)
    with pytest.raises(
        DataError,
        match=r"masks do not fit it \(e\.g\. .*its mid-greys ramp along edges.*\); their mid-greys ramp along "
        r"edges, as in 0/255 masks resized with interpolation: set data\.masks: resampled",
    ):
        index(kaggle_like, tmp_path / "a")
    idx, report, packed = index(kaggle_like, tmp_path / "b", "resampled")
    assert report["skipped"] == 0 and report["masks"].startswith("grey 0/255 resized with interpolation")
    assert_packed_is_truth(idx, packed, {name: as_resampled(truth) >= 128 for name, truth in t.items()})


@pytest.mark.parametrize("resized", [1, 4])
def test_resampled_masks_among_0_255_ones_are_skipped_or_stop_the_set(kaggle_like, tmp_path, resized: int):
    """One resized mask in 16 is skipped and the report says which param keeps it; 4 in 16 (a quarter,
    the edge-rich part of the set) stop the set with that param named, rather than train without them."""
    from forestseg.dataset import format_report

    names = sorted(truths(kaggle_like))[:resized]
    for name, truth in truths(kaggle_like).items():
        if name in names:
            Image.fromarray(as_resampled(truth)).save(kaggle_like / "masks" / name, format="PNG")
    if resized > 1:
        with pytest.raises(DataError, match=rf"but {resized} of 16 masks do not fit it .*set data\.masks: resampled"):
            index(kaggle_like, tmp_path)
        return
    _, report, _ = index(kaggle_like, tmp_path)
    assert report["misfits"] == report["skipped"] == 1
    assert "set data.masks: resampled" in report["misfit_advice"]
    assert "1 mask(s) did not fit the masks' convention" in format_report(report)


def test_three_level_masks_are_not_resampled_ones(kaggle_like, tmp_path):
    """Mid-grey regions are a class, not interpolated edges: refused, and the advice stays classes."""
    rewrite(kaggle_like, as_three_levels)
    with pytest.raises(
        DataError, match=r"not a resampled 0/255 mask \(mid-greys fill flat regions.*set data\.masks: classes"
    ):
        index(kaggle_like, tmp_path, "resampled")


SOFT = {0: 600, 255: 300, **{v: 2 for v in range(1, 255)}}  # 0/255 with a 1% spread over every other level


@pytest.mark.parametrize(
    "resampled, jpeg, advice",
    [
        (True, False, "set data.masks: resampled"),  # the mid-greys are resized edges
        (False, False, "no convention reads them"),  # many levels, not edges: blurred, or probabilities
        (False, True, "save the masks lossless (PNG), then set data.masks: '0/1' or classes"),  # noise around classes
    ],
)
def test_the_advice_for_mid_greys_says_what_made_them(resampled, jpeg, advice):
    stats = Stats()
    counts = np.zeros(256, np.int64)
    counts[list(SOFT)] = list(SOFT.values())
    for _ in range(4):
        stats.add_summary((True, counts), jpeg=jpeg, resampled=resampled)
    assert advice in stats.suggest("0/255")


def thin_class(width: int, level: int = 128) -> np.ndarray:
    """A 0/255 mask with a class drawn as lines `width` px wide at `level` every 16 px (roads, say)."""
    yy, xx = np.mgrid[:64, :64]
    mask = np.where((xx // 8 + yy // 12) % 2 == 0, 255, 0).astype(np.uint8)
    mask[(yy % 16 >= 5) & (yy % 16 < 5 + width)] = level
    return mask


@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("level", [64, 128, 200])
def test_a_thin_class_is_not_read_as_resized_edges(width, level):
    with pytest.raises(MaskMismatch, match=r"not a resampled 0/255 mask \(mid-greys draw 1-2 px lines"):
        forest_of(thin_class(width, level), "resampled")
    with pytest.raises(MaskMismatch) as refused:
        forest_of(thin_class(width, level), "0/255")
    assert "data.masks: resampled" not in str(refused.value)  # no hint towards a convention that misreads it


@pytest.mark.parametrize("side, fits", [(4, True), (6, False)])
def test_a_few_flat_mid_grey_pixels_pass_and_more_do_not(side, fits):
    """Flat 3x3 patches at mid-grey: 4 pixels of 10000 (0.04 %) pass as resampling's, 16 (0.16 %) are a class."""
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 50:] = 255
    mask[:, 49] = 128  # a resized edge
    mask[20 : 20 + side, 10 : 10 + side] = 128  # a patch at a class level: (side - 2)^2 flat pixels
    if fits:
        assert forest_of(mask, "resampled").sum() == 100 * 50 + side * side + 100
    else:
        with pytest.raises(MaskMismatch, match=r"mid-greys fill flat regions \(0\.2% of pixels\)"):
            forest_of(mask, "resampled")


def test_a_ramps_low_tail_in_the_next_jpeg_block_is_not_a_0_1_value():
    """Ringing or a ramp's tail just across a 16-px block border from the edge is resampling's, not 0/1's."""
    mask = np.zeros((32, 32), np.uint8)
    mask[:15] = 255
    mask[15] = 128
    mask[16:18] = 10  # in the next block row, which holds nothing >= 32
    assert forest_of(mask, "resampled").sum() == 16 * 32
    wide = np.zeros((64, 64), np.uint8)
    wide[:32, :32] = mask
    wide[48:, :] = 1  # 1s two blocks from any edge: a 0/1 mask's
    with pytest.raises(MaskMismatch, match=r"values 1-31 lie away from any edge"):
        forest_of(wide, "resampled")


def test_deepglobe_colour_masks_train_with_forest_named_by_colour(kaggle_like, tmp_path):
    t = rewrite(kaggle_like, as_deepglobe)
    idx, report, packed = index(kaggle_like, tmp_path, "colors", ((0, 255, 0),))
    assert report["masks"].startswith("RGB colours, forest = [[0, 255, 0]]")
    assert_packed_is_truth(idx, packed, t)  # agriculture, urban, barren (bright grey!) are not forest


def test_colour_masks_in_jpeg_compressed_tiffs_are_read_as_jpegs(kaggle_like, tmp_path):
    """A TIFF with JPEG compression (GDAL's COMPRESS=JPEG) carries JPEG noise: read exactly, as a lossless
    TIFF is, its forest fell from 16 % to 7 % in a review's masks; the tolerance reads it."""
    t = truths(kaggle_like)
    for name, truth in t.items():
        image = Image.fromarray(as_deepglobe(truth))
        image.save(kaggle_like / "masks" / name, format="TIFF", compression="jpeg", quality=75)
    idx, report, packed = index(kaggle_like, tmp_path, "colors", ((0, 255, 0),))
    wrong = np.mean([np.mean(packed[row] != t[name]) for row, name in enumerate(idx["mask"])])
    assert wrong < 0.03, wrong


def test_colour_masks_under_the_default_stop(kaggle_like, tmp_path):
    rewrite(kaggle_like, as_deepglobe)
    with pytest.raises(
        DataError,
        match=r"16 of 16 masks do not fit it \(e\.g\. \d+_mask_\d+\.jpg: mask does not fit data\.masks "
        r"'0/255': colour-coded mask.*set data\.masks: colors and data\.forest",
    ):
        index(kaggle_like, tmp_path)


@pytest.mark.parametrize(
    "masks, forest, encode, says",
    [
        ("0/1", (), lambda t: np.where(t, 0, 1).astype(np.uint8), r"invert them \(1 - value; lossless ones"),
        ("resampled", (), lambda t: as_resampled(~t), r"invert them \(255 - value, saved lossless\); if forest"),
        (
            "colors",
            ((250, 250, 20),),
            lambda t: np.where(t[..., None], [34, 139, 34], [250, 250, 20]).astype(np.uint8),
            r"does data\.forest \(\[\[250, 250, 20\]\]\) name the background\? set it to the forest",
        ),
    ],
)
def test_an_inverted_set_is_told_the_fix_its_convention_takes(kaggle_like, tmp_path, masks, forest, encode, says):
    rewrite(kaggle_like, encode)
    with pytest.raises(DataError, match=says):
        index(kaggle_like, tmp_path, masks, forest)


def test_the_colour_named_is_the_commonest_exact_one_of_its_bin_rounded_to_the_nearest_bin():
    mask = np.zeros((10, 10, 3), np.uint8)
    mask[:6] = (34, 139, 34)
    mask[6:7] = (35, 139, 34)  # the same bin, fewer pixels
    mask[7:] = (250, 250, 20)
    assert describe(mask) == "colours (34, 139, 34) (70%), (250, 250, 20) (30%)"
    half = np.zeros((4, 4, 3), np.uint8)
    half[:2], half[2:] = (30, 0, 0), (34, 0, 0)  # 30 and 34 round to one bin (32), not two
    assert describe(half) == "colours (34, 0, 0) (100%)"  # a tie: the larger colour


def test_a_jpeg_mask_of_scattered_1s_under_0_255_is_noise_near_0():
    """JPEG noise excuses values near 0 that a lossless mask cannot hold."""
    mask = np.zeros((64, 64), np.uint8)
    mask[::16, ::16] = 1
    assert not forest_of(mask, "0/255", jpeg=True).any()


def test_colours_are_named_as_the_masks_hold_them_so_data_forest_can_take_them(kaggle_like, tmp_path):
    """Forest (34, 139, 34), off the 32-level bins the set is summarised in: the messages name it exactly
    (they named the bin's (32, 128, 32), which data.forest then found nowhere)."""
    t = rewrite(kaggle_like, lambda truth: np.where(truth[..., None], [34, 139, 34], [250, 250, 20]).astype(np.uint8))
    with pytest.raises(DataError, match=r"colours \(34, 139, 34\) \(\d+%\)") as e:
        index(kaggle_like, tmp_path / "a")
    assert "(250, 250, 20)" in str(e.value) and "(32, 128, 32)" not in str(e.value)
    idx, report, packed = index(kaggle_like, tmp_path / "b", "colors", ((34, 139, 34),))
    assert_packed_is_truth(idx, packed, t)
    assert "(34, 139, 34)" in report["mask_values"] and "(250, 250, 20)" in report["mask_values"]


def test_grey_masks_declared_as_colours_stop(kaggle_like, tmp_path):
    with pytest.raises(
        DataError,
        match=r"data\.masks is 'colors' with data\.forest \[\[0, 255, 0\]\], but every "
        r"mask is grey .*set data\.masks: '0/255'",
    ):
        index(kaggle_like, tmp_path, "colors", ((0, 255, 0),))


def test_three_level_masks_stop_instead_of_counting_the_middle_class_as_forest(kaggle_like, tmp_path):
    rewrite(kaggle_like, as_three_levels)
    with pytest.raises(DataError, match=r"masks do not fit it .*128.*set data\.masks: classes and data\.forest"):
        index(kaggle_like, tmp_path)


def test_three_level_masks_as_classes(kaggle_like, tmp_path):
    t = rewrite(kaggle_like, as_three_levels)
    idx, report, packed = index(kaggle_like, tmp_path, "classes", (255,))
    assert report["masks"] == "grey class ids, forest = [255]"
    assert_packed_is_truth(idx, packed, t)


def test_one_odd_mask_is_skipped_with_its_values_not_the_set(kaggle_like, tmp_path):
    name = sorted((kaggle_like / "masks").iterdir())[3].name
    Image.fromarray(as_three_levels(truths(kaggle_like)[name])).save(kaggle_like / "masks" / name, format="PNG")
    idx, report, _ = index(kaggle_like, tmp_path)
    assert report["valid"] == 15 and report["skipped"] == 1
    [skipped] = report["skipped_pairs"]
    assert skipped["mask"] == name
    assert skipped["reason"].startswith("mask does not fit data.masks '0/255': not a 0/255 mask, values found: ")
    assert "128" in skipped["reason"]
    # its kind keeps the convention's name: the numbers of a quoted name are not sizes or values
    assert report["skipped_by_reason"] == {"mask does not fit data.masks '0/255'": 1}
    # the values found count every mask read, the skipped one too: what the set holds, not what fits
    assert report["mask_values"].startswith("16 grey mask(s): ")


def test_report_states_convention_and_values(kaggle_like, tmp_path):
    _, report, _ = index(kaggle_like, tmp_path)
    assert report["masks"] == "grey 0/255, forest >= 128 (JPEG noise tolerated)"
    assert report["mask_values"].startswith("16 grey mask(s): ")


def test_sample_masks_fit_the_default_convention(sample_dir, tmp_path):
    """Every real Kaggle mask is a 0/255 JPEG: none skipped, none misread."""
    _, report, packed = index(sample_dir, tmp_path)
    assert report["valid"] == 1035 and report["skipped"] == 0
    assert set(np.unique(packed)) == {0, 1}


def test_the_sample_resized_to_128_px_reads_as_resampled(sample_dir, tmp_path):
    """The real masks resized as a user would (bilinear, saved as JPEG; every 8th pair): under the
    default about a third do not fit, and the set stops with the advice; as resampled none are skipped."""
    rows = (sample_dir / "meta_data.csv").read_text().splitlines()
    rows = rows[:1] + rows[1::8]
    root = tmp_path / "small"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for row in rows[1:]:
        for folder, name in zip(("images", "masks"), row.split(",")[:2]):
            with Image.open(sample_dir / folder / name) as im:
                im.resize((128, 128), Image.BILINEAR).save(root / folder / name, format="JPEG", quality=95)
    (root / "meta_data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"masks do not fit it .*set data\.masks: resampled") as stop:
        index(root, tmp_path / "a")
    misfits, total = map(int, re.search(r"but (\d+) of (\d+) masks", str(stop.value)).groups())
    assert total == len(rows) - 1 and 0.2 < misfits / total < 0.5
    _, report, packed = index(root, tmp_path / "b", "resampled")
    assert report["valid"] == len(rows) - 1 and report["skipped"] == 0 and set(np.unique(packed)) == {0, 1}


def test_small_shares_of_mask_values_are_not_shown_as_zero_percent():
    from forestseg.masks import _grey_text

    counts = np.zeros(256)
    counts[[255, 0, 254, 1]] = [6100, 3700, 33, 2]
    text = _grey_text(counts)
    assert text.startswith("255 (62%), 0 (38%), 254 (0.3%), 1 (<0.1%)") and "(0%)" not in text


@pytest.mark.parametrize("off, forest", [(0, True), (40, True), (41, False), (-40, True), (-41, False)])
@pytest.mark.parametrize("channel", [0, 1, 2])
def test_a_colour_mask_pixel_is_forest_within_40_of_the_colour_in_every_channel(off, forest, channel) -> None:
    """COLOR_TOLERANCE is inclusive (+-40 as the index report says) and holds in each channel, in a JPEG
    mask (here with noise of up to 3 levels)."""
    mask = np.zeros((16, 16, 3), np.int16)
    mask[:] = (100, 150, 200)
    mask += np.random.default_rng(0).integers(-3, 4, mask.shape)  # JPEG noise
    mask[0, 0] = (100, 150, 200)
    mask[0, 0, channel] += off
    got = forest_of(mask.astype(np.uint8), "colors", ((100, 150, 200),), jpeg=True)
    assert got[0, 0] == forest and got.sum() == 255 + forest


def test_a_lossless_colour_mask_matches_its_colours_exactly() -> None:
    """CORINE's transitional woodland-shrub (166, 242, 0) lies within 40 of its forest (128, 255, 0): in a
    lossless mask only the exact colour is forest; it read 72 % forest where 41 % was."""
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[:] = (230, 230, 77)
    mask[:4] = (128, 255, 0)
    mask[4:6] = (166, 242, 0)
    got = forest_of(mask, "colors", ((128, 255, 0),))
    assert got[:4].all() and not got[4:].any()


def test_a_jpeg_colour_mask_with_another_class_within_the_tolerance_is_refused() -> None:
    """In a JPEG the shrub's colour cannot be told from forest's by the tolerance: the mask is refused."""
    mask = np.zeros((32, 32, 3), np.int16)
    mask[:] = (230, 230, 77)
    mask[:16] = (128, 255, 0)
    mask[16:24] = (160, 245, 0)  # 32 off forest: within the tolerance, noise or not
    mask = np.clip(mask + np.random.default_rng(0).integers(-3, 4, mask.shape), 0, 255).astype(np.uint8)
    with pytest.raises(
        MaskMismatch, match=r"^23% of the pixels within \+-40 of a forest colour lie in regions over 20 off it"
    ):
        forest_of(mask, "colors", ((128, 255, 0),), jpeg=True)
    clean = mask.copy()
    clean[16:24] = mask[24:]  # without the shrub: noise within a few levels is forest or not, as before
    assert forest_of(clean, "colors", ((128, 255, 0),), jpeg=True).sum() == 16 * 32


def test_a_jpeg_colour_mask_with_a_small_patch_off_its_colour_is_read_not_refused() -> None:
    """A patch 25-40 levels off forest's colour under 1 % of the mask (a tiny blended area) is forest,
    not taken for another class: the refusal needs over 1 % of the pixels as well as a share of the forest."""
    mask = np.zeros((256, 256, 3), np.int16)
    mask[:] = (230, 230, 77)
    mask[:4, :16] = (128, 255, 0)  # 64 px of forest
    mask[100:105, 100:105] = (158, 255, 0)  # 25 px, 30 off it: 0.04 % of the mask, 28 % of its forest
    got = forest_of(mask.astype(np.uint8), "colors", ((128, 255, 0),), jpeg=True)
    assert got[100:105, 100:105].all() and got.sum() == 64 + 25


@pytest.mark.parametrize("quality", [75, 95])
@pytest.mark.parametrize("layout", ["all forest", "halves", "squares"])
def test_jpeg_colour_masks_read_their_forest_whatever_their_colour_count(quality: int, layout: str) -> None:
    """A one-class JPEG tile decodes to one or a few colours, (0, 255, 1) for (0, 255, 0): counting
    colours took it for lossless and read no forest; 12-px squares' blended borders are no other class."""
    import io

    truth = np.zeros((96, 96), bool)
    if layout == "all forest":
        truth[:] = True
    elif layout == "halves":
        truth[:, :48] = True
    else:
        for y in range(0, 96, 24):
            for x in range(0, 96, 24):
                truth[y : y + 12, x : x + 12] = True
    rgb = np.where(truth[..., None], np.uint8([0, 255, 0]), np.uint8([255, 255, 255]))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    got = forest_of(decoded, "colors", ((0, 255, 0),), jpeg=True).astype(bool)
    assert (got != truth).mean() < 0.06  # JPEG's chroma blurs 1-2 px at borders (5 % of 12-px squares at quality 75)


@pytest.mark.parametrize("values, refused", [(16, False), (17, True)])
def test_class_masks_hold_at_most_16_values(values: int, refused: bool) -> None:
    mask = np.arange(values, dtype=np.uint8).repeat(2).reshape(2, values)
    if refused:
        with pytest.raises(MaskMismatch, match="more than 16 distinct values"):
            forest_of(mask, "classes", (3,))
    else:
        assert np.array_equal(forest_of(mask, "classes", (3,)), (mask == 3).astype(np.uint8))


def grey_mask(shares: dict[int, float], side: int = 100) -> np.ndarray:
    """A side x side grey mask holding each value on its share of the pixels (0 on the rest)."""
    flat = np.zeros(side * side, np.uint8)
    start = 0
    for value, share in shares.items():
        n = round(share * side * side)
        flat[start : start + n] = value
        start += n
    return flat.reshape(side, side)


@pytest.mark.parametrize(
    "shares, refused",
    [
        ({255: 0.5, 2: 0.005, 250: 0.005}, True),  # a 0/255 mask with JPEG's noise, saved lossless
        ({255: 0.5, 1: 0.03}, False),  # 0/1 with 255 for "no label": class ids, a few 1s
        ({255: 0.4, 3: 0.1, 240: 0.1}, False),  # classes at 3 and 240 on a fifth of the pixels: no noise
        ({1: 0.5, 2: 0.2, 230: 0.1}, False),  # no 0 and 255 at all
        ({255: 0.5, 250: 0.01}, False),  # noise on one side only
        ({100: 0.5, 255: 0.4998, 5: 0.0001, 250: 0.0001}, False),  # no 0: classes 100 and 255, two odd pixels
        ({100: 0.5, 5: 0.0001, 250: 0.0001}, False),  # no 255: classes 0 and 100
    ],
)
def test_classes_refuse_only_the_noise_a_jpeg_left_beside_0_and_255(shares: dict, refused: bool) -> None:
    mask = grey_mask(shares)
    if refused:
        with pytest.raises(MaskMismatch, match="as JPEG compression leaves in a 0/255 mask: not class ids"):
            forest_of(mask, "classes", (1,), False)
    else:
        assert forest_of(mask, "classes", (1,), False).sum() == (mask == 1).sum()


@pytest.mark.parametrize("width", [1, 2])
def test_a_thin_class_every_64_px_is_not_read_as_resized_edges(width):
    """Roads 1-2 px wide every 64 px put 1.6-3 % of pixels on class lines: far above a resize's 0.17 %,
    so refused as resampled (read as one, a road at 128 would turn forest)."""
    yy, xx = np.mgrid[:128, :128]
    mask = np.where((xx // 8 + yy // 12) % 2 == 0, 255, 0).astype(np.uint8)
    mask[(yy % 64 >= 5) & (yy % 64 < 5 + width)] = 128
    with pytest.raises(MaskMismatch, match=r"mid-greys draw 1-2 px lines \([23]% of pixels\)"):
        forest_of(mask, "resampled")


def test_a_mask_with_a_few_percent_of_coloured_pixels_is_colour_coded_not_grey():
    """5 % of pixels pure green among black and white: a colour-coded mask (its red plane would read the
    green forest as background), not a grey one with chroma noise."""
    mask = np.zeros((100, 100, 3), np.uint8)
    mask[:, 50:] = 255
    mask[:10, :50] = (0, 255, 0)  # 5 % of pixels
    with pytest.raises(MaskMismatch, match="colour-coded mask"):
        forest_of(mask, "0/255")
    with pytest.raises(MaskMismatch, match="colour-coded mask"):
        forest_of(mask, "resampled")


def test_forest_coded_1_on_3_percent_flat_beside_255_lines_is_no_resampled_mask():
    """1s filling 81 cells of 7x7 between 255 no-label lines: 3 % of pixels flat at 1, above the 2 % a
    resize's plateaus reach; read as resampled the forest would be background."""
    mask = np.zeros((256, 256), np.uint8)
    mask[::8, :] = mask[:, ::8] = 255
    region = mask[96:168, 96:168]
    region[region == 0] = 1
    with pytest.raises(MaskMismatch, match=r"values 1-31 fill flat regions \(3% of pixels\)"):
        forest_of(mask, "resampled")


def test_lossless_0_1_masks_with_255_and_5_percent_1s_are_advised_as_classes():
    stats = Stats()
    counts = np.zeros(256, np.int64)
    counts[[0, 1, 255]] = [800, 50, 150]
    stats.add_summary((True, counts))
    assert "set data.masks: classes" in stats.suggest("0/1")


def test_a_mask_with_a_third_class_2_is_no_0_1_mask():
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 10:20] = 1
    mask[:, 20:] = 2  # a third class: read as 0/1 it would be background without a word
    with pytest.raises(MaskMismatch, match=r"not a 0/1 mask, values found: 2 \("):
        forest_of(mask, "0/1")


@pytest.mark.parametrize("diagonal", [False, True])
def test_a_bright_thin_class_on_background_is_not_read_as_resized_edges(diagonal):
    """Roads at 128, 1 px wide every 16 px (straight or at 45 degrees) over background 0 beside a forest
    block of 255: lines brighter than both sides; read as resampled the roads would turn forest."""
    yy, xx = np.mgrid[:128, :128]
    mask = np.zeros((128, 128), np.uint8)
    on = ((xx + yy) % 16 == 5) if diagonal else (yy % 16 == 5)
    mask[on & (xx < 96)] = 128
    mask[:, 100:] = 255
    with pytest.raises(MaskMismatch, match=r"mid-greys draw 1-2 px lines"):
        forest_of(mask, "resampled")


def test_a_thin_forest_strip_shrunk_below_128_keeps_its_low_tails_as_resampling_s():
    """A resize leaves a 1 px forest strip as a ramp peaking at 100: its tails at 5-20 (2 % of pixels) lie
    beside mid-greys, not beside any >= 128, and are still a resize's, not 0/1 values."""
    mask = np.zeros((128, 128), np.uint8)
    mask[:, 96:] = 255
    mask[:, 95] = 128
    profile = [5, 10, 20, 40, 80, 100, 80, 40, 20, 10, 5]
    mask[20 : 20 + len(profile), :64] = np.array(profile, np.uint8)[:, None]
    assert np.array_equal(forest_of(mask, "resampled"), (mask >= 128).astype(np.uint8))


def _stats(*summaries) -> Stats:
    stats = Stats()
    for values, jpeg in summaries:
        counts = np.zeros(256, np.int64)
        counts[list(values)] = list(values.values())
        stats.add_summary((True, counts), jpeg=jpeg)
    return stats


LOSSY = "they look like class ids (0/1 or a few classes) stored as JPEG"


@pytest.mark.parametrize("jpegs, lossy", [(2, False), (3, True)])
def test_0_1_masks_are_told_to_be_saved_lossless_where_most_are_jpegs(jpegs, lossy):
    ids = {0: 500, 1: 400, 2: 60, 3: 40}  # 0/1 as JPEG noise spreads it
    stats = _stats(*[(ids, True)] * jpegs, *[({0: 500, 1: 500}, False)] * (5 - jpegs))
    assert (LOSSY in stats.suggest("0/255")) == lossy


def test_jpeg_class_ids_with_more_low_values_than_white_are_ids_not_0_255():
    """Ids 0-2 beside 255 for no label, 1.5 pixels at 1-31 per pixel at 224-255 (a JPEG 0/255 mask: 0.01)."""
    stats = _stats(*[({0: 500, 1: 200, 2: 100, 255: 200}, True)] * 4)
    assert LOSSY in stats.suggest("0/255")


def test_class_ids_with_a_large_class_at_250_are_read_not_taken_for_jpeg_noise():
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 40:42] = 3  # 2 %
    mask[:, 42:70] = 250  # 28 %: a class, far more than JPEG noise
    mask[:, 70:] = 255
    assert forest_of(mask, "classes", (250,)).sum() == 100 * 28


def test_a_jpeg_colour_mask_with_another_class_on_7_percent_of_it_is_refused():
    """Shrub 38 off forest's green on a 16x50 block (8 % of the mask, 7 % inside the block's rim): read
    within the tolerance, it would be forest."""
    mask = np.zeros((100, 100, 3), np.uint8)
    mask[:] = (255, 255, 0)
    mask[:20] = (0, 255, 0)  # forest, 20 %
    mask[40:56, 20:70] = (0, 217, 0)  # shrub
    with pytest.raises(MaskMismatch, match=r"over 20 off it \(around \(0, 217, 0\)\)"):
        forest_of(mask, "colors", ((0, 255, 0),), jpeg=True)


def test_a_quarter_of_the_masks_resized_among_clean_0_255_ones_is_advised_as_resampled():
    soft = {0: 600, 255: 300, **{v: 2 for v in range(1, 255)}}
    stats = Stats()
    for values, resampled in [(soft, True)] * 4 + [({0: 600, 255: 400}, False)] * 12:
        counts = np.zeros(256, np.int64)
        counts[list(values)] = list(values.values())
        stats.add_summary((True, counts), resampled=resampled)
    assert "set data.masks: resampled" in stats.suggest("0/255")


@pytest.mark.parametrize("jpeg", [False, True])
def test_a_colour_mask_counts_every_forest_colour_declared(jpeg: bool) -> None:
    """Two forest classes (e.g. broadleaf and conifer colours): a pixel near either is forest."""
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:, :16] = (0, 255, 0)
    mask[:, 16:24] = (255, 255, 0)
    assert forest_of(mask, "colors", ((0, 255, 0), (255, 255, 0)), jpeg=jpeg).sum() == 32 * 24


def test_channels_that_agree_in_two_bands_only_are_colour_not_grey() -> None:
    """DeepGlobe's agriculture (255, 255, 0) beside barren (255, 255, 255): R and G agree everywhere, B
    does not; read as grey, a 0/255 convention would call it all forest."""
    mask = np.full((8, 8, 3), 255, np.uint8)
    mask[:, :4] = (255, 255, 0)
    assert not is_grey(mask)
    with pytest.raises(MaskMismatch, match="^colour-coded mask"):
        forest_of(mask, "0/255")


def test_a_grey_rgb_mask_with_a_jpegs_small_chroma_noise_stays_grey() -> None:
    """Channels within GREY_SPREAD of each other on 6 % of the pixels (JPEG's chroma noise) are grey."""
    mask = np.zeros((50, 50, 3), np.int16)
    mask[:, :25] = 255
    mask[::4, ::4, 2] += np.where(mask[::4, ::4, 2] == 255, -3, 3)  # 169 of 2500 px, 3 off in blue
    mask = mask.astype(np.uint8)
    assert is_grey(mask) and forest_of(mask, "0/255").sum() == 50 * 25


def test_low_values_right_of_an_edged_block_are_within_reach() -> None:
    """far_low_share(reach=1) grows the edged blocks one block each way: here to the right."""
    grey = np.zeros((16, 48), np.uint8)
    grey[:, :16] = 255  # block (0, 0) holds an edge
    grey[:, 16:32] = 3  # block (0, 1), right of it: JPEG noise of that edge
    assert far_low_share(grey, block=16, reach=1) == 0.0 and far_low_share(grey, block=16) == 256 / grey.size


def test_a_jpeg_colour_patch_over_1_percent_of_the_mask_but_a_small_share_of_its_forest_is_read() -> None:
    """A 10x10 patch 30 off the forest colour on 2.4 % of a forest mask: both conditions of the refusal
    must hold (over 1 % of the pixels, and over COLOR_FAR_SHARE of the forest), the second does not."""
    mask = np.zeros((64, 64, 3), np.int16)
    mask[:] = (128, 255, 0)
    mask[20:30, 20:30] = (158, 255, 0)
    assert forest_of(mask.astype(np.uint8), "colors", ((128, 255, 0),), jpeg=True).all()


def light(*scenes: tuple[float, int, float, int]) -> dict:
    """_check_not_inverted's sums per scene "1", "2", ...: (forest grey mean, forest px, other mean, other px)."""
    return {str(i): np.array([f * nf, nf, o * no, no], float) for i, (f, nf, o, no) in enumerate(scenes, 1)}


@pytest.mark.parametrize(
    "scenes, says",
    [
        # 5 % forest is cover enough to count; two of four brighter: a note naming both
        (
            [(200, 20, 50, 380), (200, 200, 50, 200), (50, 200, 200, 200), (50, 200, 200, 200)],
            "in 2 of 4 scenes (1, 2)",
        ),
        # forest 7 grey levels brighter is brighter (more than 5)
        ([(107, 200, 100, 200), (50, 200, 200, 200), (50, 200, 200, 200)], "in 1 of 3 scenes (1),"),
        # six of ten: a note naming five
        ([(200, 200, 50, 200)] * 6 + [(50, 200, 200, 200)] * 4, "in 6 of 10 scenes (1, 2, 3, 4, 5 ...)"),
        # three brighter of the three with forest (two have none): the share is of the scenes with cover, a stop
        ([(200, 200, 50, 200)] * 3 + [(0, 0, 100, 400)] * 2, None),
    ],
)
def test_the_inverted_check_counts_scenes_with_cover_and_a_margin(scenes: list, says: str | None) -> None:
    from forestseg.dataset import _check_not_inverted

    if says is None:
        with pytest.raises(DataError, match=r"brighter than the rest in 3 of 3 scenes"):
            _check_not_inverted(Path("."), "0/255", (), light(*scenes))
        return
    (note,) = _check_not_inverted(Path("."), "0/255", (), light(*scenes))
    assert f"is brighter than the rest {says}" in note, note
