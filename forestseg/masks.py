"""What a mask's pixel values mean: one registry of mask conventions, each with its facts.

A convention turns a decoded mask into a forest/background map, or says the mask does not fit it
(with the values it found), so a 0/1 mask is never read as all background and a colour-coded mask
never binarised by grey level. `data.masks` names the convention, `data.forest` the class ids or
RGB colours that are forest where the convention needs them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

AMBIGUOUS = (32, 223)  # grey levels that are neither 0- nor 255-ish in a 0/255 mask (JPEG noise stays outside)
AMBIGUOUS_SHARE = 0.01  # share of ambiguous pixels a 0/255 mask may hold (resampled edges)
LOW = (1, 31)  # grey levels that are JPEG noise near 0 in a 0/255 mask, but class ids (forest = 1?) in others
JPEG_BLOCK = 16  # px: JPEG codes 16x16 blocks (8x8 without chroma subsampling); an all-0 block decodes to 0
FAR_LOW_SHARE = 0.01  # share of LOW pixels in blocks without any >= 128 a 0/255 mask may hold (the sample's: 0)
# shares of pixels in flat 3x3 patches of one value 1-31 a 0/255 mask may hold, and a resized one: a
# class's region, e.g. 0/1's 1s beside 255 for "no label" (lossless: JPEG noise breaks such patches
# up). None in the sample, nor saved at JPEG quality 20-95; upsampled 4-8x (JPEG noise smoothed into
# plateaus) up to 0.9 %, 1.2 % in a review's blob masks
FLAT_LOW_SHARE = 0.005
FLAT_LOW_SHARE_RESAMPLED = 0.02
LOW_TO_HIGH = 1.0  # over a set, more LOW pixels than pixels at 224-255: class ids, not 0/255 (the sample: 0.01)
EXACT_COLOURS = 8  # a colour mask's commonest exact colours kept for messages (a class's colour among them)
COLOR_TOLERANCE = 40  # max per-channel distance of a (JPEG) colour-mask pixel to a declared colour
# A JPEG colour mask's forest is within COLOR_TOLERANCE of a declared colour, unless more than this
# share of it (and 1 % of the mask) lies over half the tolerance away inside a region of such pixels
# (all 8 neighbours too), as another class's colour does (CORINE's shrub is 38 off its forest): JPEG
# noise in a flat region stays within a few levels, and blends at class borders are 1-2 px lines
COLOR_FAR_SHARE = 0.1
GREY_SPREAD = 24  # channels closer than this count as grey (JPEG chroma noise)
MAX_CLASSES = 16  # a class-id mask with more distinct values is not class ids (JPEG-compressed?)
NOISE_SHARE = 0.05  # at most this share of a mask at 1-31 and 224-254 beside 0 and 255: JPEG noise, not classes
LEVEL = 4  # grey levels: neighbours within this of a pixel are level with it (JPEG noise included)
# Shares of pixels a resampled mask may hold at mid-grey in flat 3x3 patches, and on 1-2 px lines
# level along and lower (or higher) on both sides across: interpolation ramps through mid-greys
# between 0 and 255, a class fills regions or draws lines at its level. The sample's masks resized
# 189 ways: flat at most 0.003 %, lines at most 0.17 % (a thin forest strip halved); a class line
# of 1-2 px every 32 px scores 5-11 %.
FLAT_MID_SHARE = 0.001
LINE_MID_SHARE = 0.005
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
_LINES = [((0, 1), (1, 0)), ((1, 0), (0, 1)), ((1, 1), (1, -1)), ((1, -1), (1, 1))]  # (along, across)


class MaskMismatch(Exception):
    """A mask that does not fit the declared convention; the message lists the values found."""


def is_grey(mask: np.ndarray) -> bool:
    """(H, W) masks and (H, W, 3) masks whose channels agree (up to JPEG noise) are grey."""
    if mask.ndim == 2:
        return True
    r, g, b = mask[..., 0], mask[..., 1], mask[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):  # the common case, and cheap
        return True
    # elementwise over the channel planes: a reduction over a last axis of 3 is ~50x slower in numpy
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return float((spread > GREY_SPREAD).mean()) <= AMBIGUOUS_SHARE


def grey_of(mask: np.ndarray) -> np.ndarray:
    return mask if mask.ndim == 2 else mask[..., 0]


def _share(x: float) -> str:
    """A share of pixels in whole percent, or finer below 1 % (not '0%' for a value that is there)."""
    return f"{x:.0%}" if x >= 0.01 else (f"{x:.1%}" if x >= 0.001 else "<0.1%")


def _grey_text(counts: np.ndarray, top: int = 4) -> str:
    order = np.argsort(counts)[::-1][:top]
    text = ", ".join(f"{v} ({_share(counts[v] / counts.sum())})" for v in order if counts[v])
    mid = mid_share(counts)
    low = counts[LOW[0] : LOW[1] + 1].sum() / counts.sum()
    return (
        text
        + (f"; {mid:.1%} of pixels in {AMBIGUOUS[0]}-{AMBIGUOUS[1]}" if mid else "")
        + (f"; {low:.1%} in {LOW[0]}-{LOW[1]}" if low >= 0.001 else "")
    )


def _colour_text(counts: np.ndarray, exact: collections.Counter | None = None, top: int = 4) -> str:
    """The `top` colour bins by pixels, each as the exact colour seen most in it (what data.forest
    takes), or as the bin's rounded colour with a '~' where none was kept."""
    order = np.argsort(counts)[::-1][:top]
    return ", ".join(f"{_bin_colour(i, exact or {})} ({_share(counts[i] / counts.sum())})" for i in order if counts[i])


def _bin_colour(i: int, exact: Mapping[int, int]) -> str:
    inside = [(n, c) for c, n in exact.items() if _bin_of(c >> 16, (c >> 8) & 255, c & 255) == i]
    if inside:
        c = max(inside)[1]
        return f"({c >> 16}, {(c >> 8) & 255}, {c & 255})"
    return "~(" + ", ".join(str(255 if c == 7 else c * 32) for c in np.unravel_index(i, (8, 8, 8))) + ")"


def _bin_of(r, g, b):
    """The colour bin (of 8 x 8 x 8) of a colour; arrays of colours alike."""
    r, g, b = (np.minimum((np.asarray(v, np.int32) + 16) // 32, 7) for v in (r, g, b))  # JPEG noise binned
    return r * 64 + g * 8 + b  # the top bin, 208-255, is shown as 255


def summarize(mask: np.ndarray) -> tuple:
    """(grey?, value counts[, exact colours]): 256 grey-level counts; or 512 binned-colour counts and the
    mask's most common exact colours (packed 0xRRGGBB: count), to show colours data.forest can take."""
    if is_grey(mask):
        return True, np.bincount(grey_of(mask).ravel(), minlength=256)
    rgb = mask.reshape(-1, 3).astype(np.int32)
    values, n = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2], return_counts=True)
    top = np.argsort(n)[::-1][:EXACT_COLOURS]
    return (
        False,
        np.bincount(_bin_of(rgb[:, 0], rgb[:, 1], rgb[:, 2]), minlength=512),
        dict(zip(values[top].tolist(), n[top].tolist())),
    )


def is_one_value(summary: tuple) -> bool:
    """Whether the mask `summarize` summed up holds one value: one grey level, or one exact colour."""
    grey, counts, *exact = summary
    return np.count_nonzero(counts) == 1 if grey else len(exact[0]) == 1


def mid_share(counts: np.ndarray) -> float:
    """Share of a mask's pixels (grey-level counts) at mid-grey, neither 0- nor 255-ish."""
    return float(counts[AMBIGUOUS[0] : AMBIGUOUS[1] + 1].sum() / max(1, counts.sum()))


def describe(mask: np.ndarray) -> str:
    """The most common values (grey) or colours (RGB) of a mask with their shares, e.g. '0 (60%), 255 (40%)'."""
    grey, counts, *exact = summarize(mask)
    return _grey_text(counts) if grey else "colours " + _colour_text(counts, collections.Counter(*exact))


@dataclass
class Stats:
    """Pixel values seen over a whole set of masks, for the set-level verdict and the report."""

    grey: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    colour: np.ndarray = field(default_factory=lambda: np.zeros(512, np.int64))
    exact: collections.Counter = field(default_factory=collections.Counter)  # each colour mask's commonest colours
    grey_masks: int = 0
    colour_masks: int = 0
    jpeg_masks: int = 0
    midtone_masks: int = 0  # grey masks with more mid-greys than a 0/255 mask holds
    resampled_masks: int = 0  # masks that did not fit but would as resampled ones
    # masks of one value (all 0, all 255, all white), which fit several conventions: {(value, shape, jpeg):
    # [a 1x1 sample, count]}, so whether another convention reads them is asked of it (refused_by)
    one_value: dict = field(default_factory=dict)

    def add_one_value(self, sample: np.ndarray, jpeg: bool) -> None:
        """A mask of one value, by a 1x1 sample of it that keeps its bands ((1, 1) or (1, 1, 3))."""
        self.one_value.setdefault((sample.tobytes(), sample.shape, jpeg), [sample, 0])[1] += 1

    def refused_by(self, convention: str) -> int:
        """How many of the masks of one value `convention` would not read (an all-1 mask under 0/255, an
        all-255 one under 0/1, a grey one under colors); 0 for a guess that is no convention."""
        if convention not in CONVENTIONS:
            return 0
        refused = 0
        for (_, _, jpeg), (sample, count) in self.one_value.items():
            try:
                forest_of(sample, convention, (), jpeg)
            except MaskMismatch:
                refused += count
        return refused

    def add_summary(self, summary: tuple, jpeg: bool = False, resampled: bool = False) -> None:
        grey, counts, *exact = summary
        self.jpeg_masks += jpeg
        self.resampled_masks += resampled
        if grey:
            self.grey += counts
            self.grey_masks += 1
            self.midtone_masks += mid_share(counts) > AMBIGUOUS_SHARE
        else:
            self.colour += counts
            self.colour_masks += 1
            self.exact.update(*exact)

    def found(self) -> str:
        parts = []
        if self.grey_masks:
            parts.append(f"{self.grey_masks} grey mask(s): {_grey_text(self.grey)}")
        if self.colour_masks:
            parts.append(f"{self.colour_masks} colour mask(s): {_colour_text(self.colour, self.exact)}")
        return "; ".join(parts) or "no mask decoded"

    def low_to_high(self) -> float:
        """Grey pixels at LOW levels per pixel at 224-255: ~0.01 for JPEG 0/255 masks, large for class ids."""
        return float(self.grey[LOW[0] : LOW[1] + 1].sum() / max(1, self.grey[224:].sum()))

    def lossless_low(self) -> bool:
        """Values 1-31 on more than 1 % of the pixels of lossless masks, where a 0/255 mask holds none
        (no JPEG noise): class ids beside a 255, e.g. 0/1 with 255 for "no label"."""
        low = self.grey[LOW[0] : LOW[1] + 1].sum()
        return not self.jpeg_masks and low > 0.01 * max(1, self.grey.sum())

    def guess(self) -> str:
        """The convention these masks look like: one of data.masks' values, "blurred" (none reads them),
        or "lossy ids" (class ids stored as JPEG: none reads them exactly)."""
        values = self.grey.nonzero()[0]
        if self.colour_masks > self.grey_masks:
            guess = "colors"
        elif values.max(initial=0) <= 1:
            guess = "0/1"
        elif len(values) <= MAX_CLASSES and (self.low_to_high() > LOW_TO_HIGH or self.lossless_low()):
            guess = "classes"  # a few low values (0/1 with 255 for "no label", LandCover.ai's 0-4, ...)
        elif mid_share(self.grey) > AMBIGUOUS_SHARE:
            if 2 * self.resampled_masks > self.midtone_masks:
                guess = "resampled"
            elif len(values) <= MAX_CLASSES or 2 * self.jpeg_masks > self.grey_masks + self.colour_masks:
                guess = "classes"  # a few levels, or JPEG noise around a few levels (told to save lossless below)
            else:
                guess = "blurred"
        else:
            guess = "0/255"
        if guess in ("0/1", "classes") and 2 * self.jpeg_masks > self.grey_masks + self.colour_masks:
            return "lossy ids"  # JPEG noise spreads 0/1 over 0-3: no convention reads class values exactly
        return guess

    def suggest(self, current: str, forest: tuple = ()) -> str:
        """Which params would fit these masks (never `current`, the convention they did not fit, whose
        data.forest was `forest`)."""
        values = self.grey.nonzero()[0]
        if not self.colour_masks and values.tolist() == [0]:
            # a 0/1 mask saved as a JPEG can decode to 0 everywhere: its 1s fall below JPEG's quantisation
            lost = (
                "; if they are 0/1 masks saved as JPEG, the compression can round every 1 to 0: save them "
                "lossless (PNG) from their source"
                if 2 * self.jpeg_masks > self.grey_masks
                else ""
            )
            return f"every mask is 0 everywhere (empty): check that masks/ holds this set's forest masks{lost}"
        guess = self.guess()
        if guess == "lossy ids":
            return (
                "they look like class ids (0/1 or a few classes) stored as JPEG, whose lossy compression moves "
                "values: save the masks lossless (PNG), then set data.masks: '0/1' or classes"
            )
        if guess == current:
            return "check data.masks and data.forest against the values found"
        found = [v for v in forest if isinstance(v, int) and 0 <= v < 256 and self.grey[v]]
        if guess in ("0/255", "resampled") and current == "classes" and found and max(found) < 128:
            # forest declared dark, and dark values there: as 0/255 they would read inverted, forest as not forest
            return (
                f"they look like {guess} masks, where forest is >= 128, but data.forest says forest is "
                f"{list(forest)}: if forest is white in them, set data.masks: '{guess}'; if it is black (inverted "
                f"masks), invert them first (255 - value, saved lossless), then set data.masks: '{guess}'"
            )
        return {
            "colors": "if they are colour-coded classes, set data.masks: colors and data.forest: [[r, g, b]] "
            "(DeepGlobe's forest: [[0, 255, 0]])",
            "0/1": "they look like 0/1 masks: set data.masks: '0/1'",
            "classes": "if they are class ids, set data.masks: classes and data.forest: [<forest's value(s)>]"
            + (
                " (the other values, 255 among them, are read as not forest: no value means 'no label')"
                if self.grey[255]
                else ""
            ),
            "0/255": "they look like 0/255 masks: set data.masks: '0/255'",
            "resampled": "their mid-greys ramp along edges, as in 0/255 masks resized with interpolation: "
            "set data.masks: resampled (forest >= 128)",
            "blurred": "their grey levels spread over many values, not only along edges (blurred masks, or "
            "probabilities?): no convention reads them; make them 0/255 first (forest >= 128), saved lossless",
        }[guess]


def _grey(mask: np.ndarray) -> np.ndarray:
    """The grey plane of a grey mask; a colour-coded one fits no grey convention."""
    if not is_grey(mask):
        raise MaskMismatch(f"colour-coded mask, values found: {describe(mask)}")
    return grey_of(mask)


def far_low_share(grey: np.ndarray, block: int = JPEG_BLOCK, high: int = 128, reach: int = 0) -> float:
    """Share of pixels at LOW levels in `block`-px blocks (from the top left, as JPEG's) that hold no
    pixel >= `high`, nor do the blocks within `reach` blocks of them: a 0/255 mask's JPEG noise lies in
    the blocks its edges cross, a 0/1 mask's 1s anywhere."""
    low = (grey >= LOW[0]) & (grey <= LOW[1])
    if not low.any():
        return 0.0
    h, w = grey.shape
    above = np.pad(grey >= high, ((0, -h % block), (0, -w % block)))
    edged = above.reshape(above.shape[0] // block, block, above.shape[1] // block, block).any(axis=(1, 3))
    for _ in range(reach):  # a block next to an edged one counts as edged
        grown = edged.copy()
        grown[1:] |= edged[:-1]
        grown[:-1] |= edged[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        edged = grown
    edged = np.repeat(np.repeat(edged, block, 0), block, 1)[:h, :w]
    return float((low & ~edged).mean())


def flat_low_share(grey: np.ndarray, above: float = 0.0) -> float:
    """Share of the mask's pixels whose whole 3x3 patch holds one value 1-31: a class filling a region
    (forest coded 1), where a 0/255 mask's JPEG noise and a resize's ramps vary or touch 0s. 0.0 without
    looking at patches where no more than `above` of the pixels lie at 1-31 (the flat ones are some of them)."""
    ys, xs = np.nonzero((grey >= LOW[0]) & (grey <= LOW[1]))
    if len(ys) <= above * grey.size or not len(ys):
        return 0.0
    h, w = grey.shape
    centre = grey[ys, xs]
    flat = np.ones(len(ys), bool)
    for dy, dx in _NEIGHBOURS:  # the border repeats its pixels
        flat &= grey[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] == centre
    return float(flat.sum() / grey.size)


def class_like_shares(grey: np.ndarray) -> tuple[float, float]:
    """(flat, line): shares of the mask's pixels at mid-grey in a flat 3x3 patch, and on a 1-2 px line
    (level along it, lower on both sides across it or higher on both). Interpolation only ramps
    through mid-greys between 0 and 255; a class fills regions or draws lines at its level."""
    ys, xs = np.nonzero((grey >= AMBIGUOUS[0]) & (grey <= AMBIGUOUS[1]))  # a few % of pixels: index them
    if not len(ys):
        return 0.0, 0.0
    h, w = grey.shape
    centre = grey[ys, xs].astype(np.int16)

    def diff(dy: int, dx: int) -> np.ndarray:  # neighbour minus centre; the border repeats its pixels
        return grey[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)] - centre

    flat = np.ones(len(ys), bool)
    for dy, dx in _NEIGHBOURS:
        flat &= np.abs(diff(dy, dx)) <= LEVEL
    line = np.zeros(len(ys), bool)
    for (ay, ax), (cy, cx) in _LINES:
        along = (np.abs(diff(ay, ax)) <= LEVEL) & (np.abs(diff(-ay, -ax)) <= LEVEL)
        a, b, a2, b2 = diff(cy, cx), diff(-cy, -cx), diff(2 * cy, 2 * cx), diff(-2 * cy, -2 * cx)

        def bounded(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # both above, or both below, the line
            return ((x > LEVEL) & (y > LEVEL)) | ((x < -LEVEL) & (y < -LEVEL))

        wide = (np.abs(a) <= LEVEL) & bounded(a2, b) | (np.abs(b) <= LEVEL) & bounded(b2, a)  # 2 px wide
        line |= along & (bounded(a, b) | wide)
    return float(flat.sum() / grey.size), float(line.sum() / grey.size)


def resampled_problem(grey: np.ndarray) -> str | None:
    """Why a grey mask is not a 0/255 mask resized with interpolation, or None where it reads as one."""
    flat, line = class_like_shares(grey)
    if flat > FLAT_MID_SHARE:
        return f"mid-greys fill flat regions ({_share(flat)} of pixels): class ids?"
    if line > LINE_MID_SHARE:
        return f"mid-greys draw 1-2 px lines ({_share(line)} of pixels): a thin class?"
    # any pixel >= 32 is an edge here, and a block next to one counts: a ramp's low tail or a
    # resampling filter's ringing can lie a block away from the 255 side
    far = far_low_share(grey, high=AMBIGUOUS[0], reach=1)
    if far > FAR_LOW_SHARE:
        return f"values 1-31 lie away from any edge ({_share(far)} of pixels): 0/1 masks or class ids?"
    flat_low = flat_low_share(grey, above=FLAT_LOW_SHARE_RESAMPLED)  # 1s beside 255s: far_low_share misses them
    if flat_low > FLAT_LOW_SHARE_RESAMPLED:
        return _flat_low_text(flat_low)
    return None


def _flat_low_text(share: float) -> str:
    return f"values 1-31 fill flat regions ({_share(share)} of pixels): class ids, e.g. 0/1 with 255 for no label?"


def looks_resampled(grey: np.ndarray) -> bool:
    return resampled_problem(grey) is None


def misfit_reads_as_resampled(mask: np.ndarray, summary: tuple) -> bool:
    """Whether a mask that did not fit its convention has a resized 0/255 mask's mid-grey edges (advice)."""
    grey, counts, *_ = summary
    return grey and mid_share(counts) > AMBIGUOUS_SHARE and looks_resampled(grey_of(mask))


def _binary255(mask: np.ndarray, forest: tuple, jpeg: bool) -> np.ndarray:
    grey = _grey(mask)
    if not jpeg and grey.max() == 1:  # lossless 0s and 1s: a 0/1 mask, however few its 1s (no noise to excuse)
        raise MaskMismatch(f"not a 0/255 mask (lossless, 0s and 1s only: a 0/1 mask), values found: {describe(mask)}")
    mid = mid_share(np.bincount(grey.ravel(), minlength=256)) > AMBIGUOUS_SHARE
    far = far_low_share(grey) > FAR_LOW_SHARE
    # 0/1 or class ids would read as background; the 1s beside 255s for "no label" too, only flat
    flat_low = 0.0 if (mid or far) else flat_low_share(grey, above=FLAT_LOW_SHARE)
    if mid or far or flat_low > FLAT_LOW_SHARE:
        if flat_low > FLAT_LOW_SHARE:
            hint = f" ({_flat_low_text(flat_low)})"
        elif mid and looks_resampled(grey):
            hint = ", its mid-greys ramp along edges as a resized mask's do (data.masks: resampled)"
        else:
            hint = ""
        raise MaskMismatch(f"not a 0/255 mask{hint}, values found: {describe(mask)}")
    return grey >= 128


def _resampled(mask: np.ndarray, forest: tuple, jpeg: bool) -> np.ndarray:
    grey = _grey(mask)
    problem = resampled_problem(grey)
    if problem:
        raise MaskMismatch(f"not a resampled 0/255 mask ({problem}), values found: {describe(mask)}")
    return grey >= 128


def _binary01(mask: np.ndarray, forest: tuple, jpeg: bool) -> np.ndarray:
    grey = _grey(mask)
    if grey.max() > 1:
        raise MaskMismatch(f"not a 0/1 mask, values found: {describe(mask)}")
    return grey == 1


def _classes(mask: np.ndarray, forest: tuple, jpeg: bool) -> np.ndarray:
    grey = _grey(mask)
    counts = np.bincount(grey.ravel(), minlength=256)  # one pass for both checks below
    if np.count_nonzero(counts) > MAX_CLASSES:
        raise MaskMismatch(
            f"more than {MAX_CLASSES} distinct values, not class ids (class masks must be "
            f"lossless, e.g. PNG, not JPEG); values found: {describe(mask)}"
        )
    near_0, near_255 = counts[LOW[0] : LOW[1] + 1].sum(), counts[224:255].sum()
    if counts[0] and counts[255] and near_0 and near_255 and near_0 + near_255 <= NOISE_SHARE * grey.size:
        # a 0/255 mask once saved as JPEG (the Kaggle set's), then lossless: a forest 251 would read as background
        raise MaskMismatch(
            "0 and 255 with a few pixels just off each (1-31 and 224-254), as JPEG compression leaves in a "
            f"0/255 mask: not class ids; values found: {describe(mask)}"
        )
    return np.isin(grey, np.array(forest, dtype=grey.dtype))


def _colors(mask: np.ndarray, forest: tuple, jpeg: bool) -> np.ndarray:
    if mask.ndim == 2:
        raise MaskMismatch(f"single-band mask, not colour-coded; values found: {describe(mask)}")
    planes = [mask[..., c].astype(np.int32) for c in range(3)]
    if not jpeg:  # lossless: each pixel is its class's colour exactly (CORINE's shrub is 38 off its forest)
        packed = planes[0] << 16 | planes[1] << 8 | planes[2]
        return np.isin(packed, [r << 16 | g << 8 | b for r, g, b in forest])
    # within the tolerance of a declared colour; per channel plane, not a reduction over a last axis of 3
    # (as is_grey; ~50x faster in numpy)
    off = np.full(mask.shape[:2], 256, np.int32)  # per pixel, the max channel distance to the nearest forest colour
    for colour in forest:
        off = np.minimum(off, np.maximum.reduce([np.abs(plane - value) for plane, value in zip(planes, colour)]))
    out = off <= COLOR_TOLERANCE
    far = np.pad(out & (off > COLOR_TOLERANCE // 2), 1)
    h, w = out.shape
    inside = np.logical_and.reduce([far[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    if inside.sum() > COLOR_FAR_SHARE * out.sum() and inside.sum() > 0.01 * out.size:
        r, g, b = (int(np.median(mask[..., c][inside])) for c in range(3))
        raise MaskMismatch(
            f"{inside.sum() / out.sum():.0%} of the pixels within +-{COLOR_TOLERANCE} of a forest colour lie in "
            f"regions over {COLOR_TOLERANCE // 2} off it (around ({r}, {g}, {b})): another class's colour, which "
            "a JPEG mask cannot tell from forest's; save the masks lossless (PNG), where colours match exactly"
        )
    return out


@dataclass(frozen=True)
class Convention:
    """One way of coding forest in a mask."""

    read: Callable[[np.ndarray, tuple, bool], np.ndarray]  # decoded mask, data.forest, JPEG? -> (H, W) bool forest
    needs_forest: str  # what data.forest must list: "" (nothing), "values" or "colors"
    describe: str  # for the index report


CONVENTIONS: dict[str, Convention] = {
    "0/255": Convention(_binary255, "", "grey 0/255, forest >= 128 (JPEG noise tolerated)"),
    "resampled": Convention(_resampled, "", "grey 0/255 resized with interpolation (mid-grey edges), forest >= 128"),
    "0/1": Convention(_binary01, "", "grey 0/1, forest = 1"),
    "classes": Convention(_classes, "values", "grey class ids, forest = {forest}"),
    "colors": Convention(
        _colors, "colors", f"RGB colours, forest = {{forest}} (exactly; +-{COLOR_TOLERANCE} per channel in JPEG masks)"
    ),
}


def forest_of(mask: np.ndarray, convention: str, forest: tuple = (), jpeg: bool = False) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 mask (`jpeg`: decoded from a JPEG file) -> (H, W) uint8 in {0, 1};
    raises MaskMismatch."""
    return CONVENTIONS[convention].read(mask, forest, jpeg).astype(np.uint8)


def describe_convention(convention: str, forest: tuple = ()) -> str:
    return CONVENTIONS[convention].describe.format(forest=[list(f) if isinstance(f, tuple) else f for f in forest])
