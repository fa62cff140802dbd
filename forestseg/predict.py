"""Segment images with a trained checkpoint; images larger than a training tile are cut into
overlapping windows whose probabilities are blended with a smooth weight, so no seams show.

With test-time augmentation (`tta`), every window's raw output is the mean over the 8
flips/rotations of the window, each mapped back: 8 forward passes per window instead of one.

One piece of code, `Predictor.stream`, does the tiling for in-memory arrays and for rasters read
window by window: it walks the image in vertical panels `block` pixels wide and, inside a panel,
in groups of window rows, and hands each finished strip of logits to a sink. Its memory depends
on the tile, the batch and the block, never on the image size.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import FILE_SHA256, OLDER_FILES, load_weights, read_model
from .config import FIXED_BY_ARCH, PIXEL_SIZE_M, ConfigError, ForestsegError, ModelConfig, ReportConfig, Run, build
from .device import apply_precision
from .images import ImageError, WideGreyError, decode
from .io import read_columns
from .layout import DataLayout
from .loader import Normalizer, flip_turn, to_input, unflip_turn
from .losses import LOSSES
from .model import ARCHS, adapt_batchnorm, build_model
from .windows import BLOCK, TILE_BATCH, scene_windows, window_starts

# Error map colours: true positive, false positive, false negative (true negative stays black).
TP, FP, FN = (34, 139, 34), (230, 159, 0), (204, 0, 204)
WORST_SCENES, SCENE_TILES = 3, 3  # plots/overlays/worst_scenes.png: this many scenes, tiles of each

# The 8 flips/rotations of a square window (the dihedral group) as (quarter turns, mirrored first).
# Aerial photos have no "up" and training sees all 8 (train.augment), so each is a fair view.
VIEWS = [(k, mirror) for mirror in (False, True) for k in range(4)]

# (row0, row1, col0, col1) -> (row1 - row0, col1 - col0, 3) uint8 pixels of the image
Reader = Callable[[int, int, int, int], np.ndarray]
# (row0, col0, logits): a finished (h, w) float32 strip of raw outputs whose top-left pixel is (row0, col0)
Sink = Callable[[int, int, np.ndarray], None]


def _window_weight(t: int, w: int | None = None) -> np.ndarray:
    """(t, t) (or (t, w)) blending weight of a window: highest in its centre, low at its edges."""
    rows, cols = (np.minimum(np.arange(n) + 1, np.arange(n)[::-1] + 1).astype(np.float32) for n in (t, w or t))
    return np.minimum(rows[:, None], cols[None, :])


@functools.lru_cache(maxsize=8)
def _weight_on(shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """`_window_weight` of a window's (height, width) on `device`, sent once per shape and device."""
    return torch.from_numpy(_window_weight(*shape)).to(device)


@dataclass(frozen=True)
class Predictor:
    """A trained model as predict uses it: read from its model file (`load`), it turns uint8 RGB
    images of any size into raw outputs and forest masks, window by window."""

    model: torch.nn.Module
    norm: Normalizer
    tile: int
    cut: float  # the raw output above which a pixel is forest
    device: torch.device
    loss: str = "bce"
    # ground size of a training pixel; model files older than that record are assumed at the Kaggle 0.5 m
    pixel_size_m: float = PIXEL_SIZE_M
    pixel_size_recorded: bool = True  # False: an older checkpoint, pixel_size_m is the default
    bf16: bool = False  # autocast the forward pass to bf16 (calls near the cut can flip: README, --precision)
    tta: bool = False  # test-time augmentation: mean raw output over the 8 flips/rotations (8x the compute)
    adapt_bn: float = 0.0  # the model file's batch-norm adaptation to each scene (train.adapt_bn), the CLI's default
    train_scenes: frozenset[str] = frozenset()  # scenes the model saw in training (older model files: unknown)
    # the training tiles' (height, width) where they are not square: an image of that shape runs whole,
    # as training scored its tiles, not in tile x tile windows (None: square tiles)
    oblong: tuple[int, int] | None = None
    precision_recorded: bool = True  # False: an older model file, whose precision `trained` takes as auto
    sha256: str = ""  # of the model file's bytes its weights were read from (evaluate and forest_area.csv record it)

    @classmethod
    def load(cls, path: str | Path, device: torch.device, precision: str = "auto", tta: bool = False) -> "Predictor":
        """A model, its input normalisation, tile size, threshold and pixel size from a model file written by
        training; `precision` auto = bf16 where it outruns fp32 on the device, else fp32 (as training),
        or "trained": the precision the run itself scored in; `tta` averages each window's outputs over
        its 8 flips/rotations."""
        state = read_model(path)
        if precision == "trained":
            precision = state["precision"]
        try:
            # MixStyle has no weights and acts only in training: a file that recorded one for an arch
            # without the layer (allowed before config refused it) predicts as any other; so does one
            # that recorded a width, depth or batch-norm an arch of fixed layers ignored
            defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
            recorded = {**defaults, **state["model"], "mixstyle": 0.0}
            if recorded["arch"] in ARCHS:
                recorded.update({k: defaults[k] for k in FIXED_BY_ARCH if k not in ARCHS[recorded["arch"]].uses})
            # as params.yaml's model section is read: `batch_norm: "no"` is refused, not taken as true
            cfg = build(ModelConfig, "model", recorded)
            model = build_model(cfg)
        except (ConfigError, TypeError) as e:  # its own model params, not params.yaml's
            reason = str(e).replace("params.yaml: ", "", 1)
            raise ForestsegError(
                f"{path}: its model params are not a model of this version ({reason}); a file of another "
                "forestseg version, or edited: predict with the version that trained it, or retrain (`dvc repro`)"
            ) from None
        smallest = ARCHS[cfg.arch].smallest_tile(cfg)  # a forward pass on less fails deep inside torch
        if state["tile_size"] < smallest:
            raise ForestsegError(
                f"{path}: tile_size {state['tile_size']} is below its {cfg.arch}'s smallest, {smallest} px; "
                "damaged or edited; copy it again, or retrain (`dvc repro`)"
            )
        load_weights(model, state, path)
        norm = Normalizer.of(state["normalizer"])
        pixel = state["pixel_size_m"]  # None: a file older than that record
        model = model.to(device, memory_format=torch.channels_last).eval()
        bf16 = apply_precision(precision, device)
        return cls(
            model,
            norm,
            int(state["tile_size"]),
            float(state["threshold"]),
            device,
            state["loss"],
            float(pixel) if pixel is not None else PIXEL_SIZE_M,
            pixel is not None,
            bf16,
            tta,
            float(state["adapt_bn"]),
            frozenset(state["train_scenes"]),
            tuple(state["tile_shape"]) if state["tile_shape"][0] != state["tile_shape"][1] else None,
            state["precision"] != OLDER_FILES["precision"],
            state[FILE_SHA256],
        )

    def adapted(self, tiles: np.ndarray, mix: float) -> "Predictor":
        """A copy whose batch-norm statistics move `mix` of the way towards those of `tiles`,
        (B, t, t, 3) uint8 windows of one scene to predict (`model.adapt_batchnorm`); `mix` 0 or no
        tiles give this predictor. Memory: one forward pass of B windows at once."""
        if not (mix and len(tiles)):
            return self
        x = to_input(torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device), self.norm)
        return dataclasses.replace(self, model=adapt_batchnorm(self.model, x, mix))

    def for_scene(self, images: list[np.ndarray], mix: float) -> "Predictor":
        """`adapted` by `mix` to the `scene_windows` of `images`, the images of one scene."""
        return self.adapted(scene_windows(images, self.tile), mix)

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Forest probability in [0, 1] of raw outputs: their sigmoid, or for a loss whose raw outputs
        approximate 0/1 themselves (the study's MSE), them clipped."""
        if LOSSES[self.loss].raw_is_probability:
            return np.clip(logits, 0.0, 1.0).astype(np.float32)
        return (1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32)

    def windows(self, height: int, width: int, overlap: int | None = None, block: int = BLOCK) -> int:
        """How many model windows `stream` runs on an image of this size (for progress bars)."""
        if (height, width) == self.oblong:
            return 1
        t = self.tile
        if height < t or width < t:
            return self.windows(max(height, t), max(width, t), overlap, block)
        stride = max(1, t - (t // 4 if overlap is None else overlap))
        xs = window_starts(width, t, stride)
        per_row = sum(sum(1 for x in xs if x < min(width, c0 + block) and x + t > c0) for c0 in range(0, width, block))
        return per_row * len(window_starts(height, t, stride))

    def windows_logits(self, tiles: np.ndarray) -> np.ndarray:
        """(B, t, t, 3) uint8 -> (B, t, t) float32 raw outputs (bf16 autocast where the device has it
        natively); with `tta` the mean of the outputs of the 8 views, each mapped back."""
        return self._launch(tiles)()

    @torch.inference_mode()
    def _launch(self, tiles: np.ndarray, cut: bool = False) -> Callable[[], np.ndarray]:
        """`windows_logits` queued on the device: the call it returns waits for them. With `cut`,
        each window's (t, t) bool forest mask instead, blended as `stream` blends one window and cut
        where the outputs are (on a GPU: a quarter of the bytes back, no work left to the host). On
        a GPU the host stacks the next windows meanwhile; on the CPU the work is done before it returns."""
        x = torch.from_numpy(tiles)
        if self.device.type == "cuda":  # a copy from pageable memory could wait for the queued work
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        if not self.tta:
            y = self._forward(x)
        else:
            y = torch.zeros(x.shape[:3], dtype=torch.float32, device=self.device)
            for k, mirror in VIEWS:  # one view at a time: the memory of a plain forward, 8 forwards
                y += unflip_turn(self._forward(flip_turn(x, k, mirror).contiguous()), k, mirror)
            y /= len(VIEWS)
        if cut:
            weight = _weight_on(tuple(x.shape[1:3]), self.device)
            y = (y * weight) / weight > self.cut  # float32 throughout, as numpy computes it in `stream`
        if self.device.type != "cuda":
            out = y.cpu().numpy()
            return lambda: out
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        host.copy_(y, non_blocking=True)
        done = torch.cuda.current_stream(self.device).record_event()  # the stream of this GPU, not of GPU 0

        def wait() -> np.ndarray:
            done.synchronize()
            return host.numpy()

        return wait

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, t, t, 3) uint8 contiguous NHWC on the device -> (B, t, t) float32 raw outputs."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(to_input(x, self.norm))  # NHWC uint8 -> channels_last float input
        return out.float()

    def masks(self, images: list[np.ndarray], overlap: int | None = None, batch: int = TILE_BATCH) -> list[np.ndarray]:
        """(H, W) bool forest masks of several images. Images of exactly one training tile run `batch`
        at a time in one forward pass (the Kaggle case: a window per image); others are tiled one by
        one. Each mask equals `mask(image)` (to the last bit of the forward pass, which on some devices
        moves with the batch's size)."""
        shape = self.oblong or (self.tile, self.tile)
        out: list[np.ndarray | None] = [None] * len(images)
        whole = [i for i, im in enumerate(images) if im.shape[:2] == shape]

        def collect(chunk: list[int], made: Callable[[], np.ndarray]) -> None:
            for i, m in zip(chunk, made()):
                out[i] = m.copy()  # its own array: a kept mask holds neither its chunk nor pinned memory

        pending = None
        for k in range(0, len(whole), batch):
            chunk = whole[k : k + batch]
            queued = chunk, self._launch(np.stack([images[i] for i in chunk]), cut=True)
            if pending is not None:  # collected after the next chunk is queued: on a GPU the host stacks it meanwhile
                collect(*pending)
            pending = queued
        if pending is not None:
            collect(*pending)
        for i, image in enumerate(images):
            if out[i] is None:
                out[i] = self.mask(image, overlap)
        return out

    def stream(
        self,
        read: Reader,
        height: int,
        width: int,
        sink: Sink,
        overlap: int | None = None,
        block: int = BLOCK,
        batch: int = 8,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Predict an image of (height, width) read through `read`, handing finished logits to `sink`.

        Windows of one tile every tile - overlap px are blended with weights that fall towards each
        window's edge. The image is walked in panels `block` px wide (windows crossing a panel's
        edge run for both panels), each panel top to bottom in groups of `batch` window rows; the
        sink gets each panel's rows in order, panel after panel. A model batch is always the
        windows of one column of one group, and every pixel sums its windows in the same order
        (group by group, column by column, row by row), so the result is the same, bit for bit,
        whatever `block` is: reading a raster by windows gives exactly the in-memory prediction.
        Memory: two float32 buffers of ((batch - 1) * stride + tile) x (block + 2 * tile) pixels.
        An image of the training tiles' shape where they are not square (`oblong`) is one window.
        """
        if (height, width) == self.oblong:
            weight = _window_weight(height, width)
            sink(0, 0, (self.windows_logits(read(0, height, 0, width)[None])[0] * weight) / weight)  # as one window
            if progress is not None:
                progress(1)
            return
        t = self.tile
        overlap = t // 4 if overlap is None else overlap
        if height < t or width < t:
            # Reflect-pad small images up to one tile: the model saw whole tiles in training.
            image = read(0, height, 0, width)
            H, W = max(height, t), max(width, t)
            padded = np.pad(
                image, ((0, H - height), (0, W - width), (0, 0)), mode="reflect" if min(height, width) > 1 else "edge"
            )
            full = np.empty((H, W), np.float32)

            def keep(r0: int, c0: int, logits: np.ndarray) -> None:
                full[r0 : r0 + logits.shape[0], c0 : c0 + logits.shape[1]] = logits

            self.stream(lambda r0, r1, c0, c1: padded[r0:r1, c0:c1], H, W, keep, overlap, block, batch, progress)
            sink(0, 0, full[:height, :width])
            return
        stride = max(1, t - overlap)
        ys, xs = window_starts(height, t, stride), window_starts(width, t, stride)
        weight = _window_weight(t)
        span = min(height, (batch - 1) * stride + t)  # the most rows one group of window rows covers
        for c0 in range(0, width, block):
            c1 = min(width, c0 + block)
            cols = [x for x in xs if x < c1 and x + t > c0]  # every window that reaches into the panel
            x_lo, x_hi = cols[0], cols[-1] + t
            # Partial sums of rows top .. top + span; rows above `top` are finished and handed out.
            total = np.zeros((span, x_hi - x_lo), np.float32)
            norm = np.zeros_like(total)
            top = 0
            for i in range(0, len(ys), batch):
                rows = ys[i : i + batch]  # rows[0] == top
                y_hi = rows[-1] + t
                pixels = read(top, y_hi, x_lo, x_hi)
                for x in cols:  # one model batch: this column's windows of the group, top to bottom
                    out = self.windows_logits(
                        np.stack([pixels[y - top : y - top + t, x - x_lo : x - x_lo + t] for y in rows])
                    )
                    for y, o in zip(rows, out):
                        total[y - top : y - top + t, x - x_lo : x - x_lo + t] += o * weight
                        norm[y - top : y - top + t, x - x_lo : x - x_lo + t] += weight
                    if progress is not None:
                        progress(len(rows))
                done = ys[i + batch] if i + batch < len(ys) else height  # no later window reaches above this row
                sink(top, c0, total[: done - top, c0 - x_lo : c1 - x_lo] / norm[: done - top, c0 - x_lo : c1 - x_lo])
                carry = y_hi - done  # rows the next group adds to: move them to the buffer's top
                total[:carry], norm[:carry] = total[done - top : y_hi - top], norm[done - top : y_hi - top]
                total[carry:], norm[carry:] = 0, 0
                top = done

    def logits(self, image: np.ndarray, overlap: int | None = None, batch: int = 8, block: int = BLOCK) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) float32 raw outputs, tiled with overlapping windows."""
        h, w = image.shape[:2]
        out = np.empty((h, w), np.float32)

        def keep(r0: int, c0: int, logits: np.ndarray) -> None:
            out[r0 : r0 + logits.shape[0], c0 : c0 + logits.shape[1]] = logits

        self.stream(lambda r0, r1, c0, c1: image[r0:r1, c0:c1], h, w, keep, overlap, block, batch)
        return out

    def mask(self, image: np.ndarray, overlap: int | None = None) -> np.ndarray:
        """(H, W) bool forest mask."""
        return self.logits(image, overlap) > self.cut


def error_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: true positives, false positives and false negatives in distinct colours."""
    out = np.zeros((*truth.shape, 3), np.uint8)
    out[truth & pred] = TP
    out[~truth & pred] = FP
    out[truth & ~pred] = FN
    return out


def overlay(image: np.ndarray, pred: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with predicted forest tinted green."""
    out = image.astype(np.float32)
    out[pred] = (1 - alpha) * out[pred] + alpha * np.array([0, 255, 0], np.float32)
    return out.astype(np.uint8)


def read_rgb(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 RGB as a viewer shows the file, and where it is opaque (None: everywhere).

    Read by the same decoder as the index (EXIF orientation applied, palettes expanded); grey,
    CMYK and >8-bit files are refused with the reason.
    """
    try:
        picture = decode(path.read_bytes())
    except WideGreyError as e:  # 8 bits would not make it a photo: say what it lacks first
        raise ForestsegError(f"{path}: is {e.what}, one colour band; forestseg needs RGB images") from None
    except ImageError as e:
        raise ForestsegError(f"{path}: {e}") from None
    except OSError as e:
        raise ForestsegError(f"{path}: cannot be read ({e.strerror or e})") from None
    if picture.pixels.ndim != 3:
        raise ForestsegError(f"{path}: is a {picture.kind} with one colour band; forestseg needs RGB images")
    return picture.pixels, None if picture.alpha is None else picture.alpha > 0


def panel_picture(
    images: np.ndarray, masks: np.ndarray, preds: list[np.ndarray], labels: list[str] | None = None
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """(picture, titles): one RGB picture with a row per tile of image | ground truth | prediction |
    error map, each panel in a grey frame (an all-forest mask is white and would vanish into the
    white figure), and each panel's title with the picture coordinates of its bottom centre."""
    n, (h, w) = len(images), masks.shape[1:3]
    gap_x, gap_y = max(4, w // 10), max(8, h // 8)  # white between panels; above each, room for its title
    picture = np.full((n * (h + gap_y) + 1, 4 * w + 3 * gap_x + 2, 3), 255, np.uint8)
    titles = []
    for row, (image, truth, pred) in enumerate(zip(images, masks.astype(bool), preds)):
        inter, union = (pred & truth).sum(), (pred | truth).sum()
        grey = [np.repeat(m[..., None] * np.uint8(255), 3, axis=2) for m in (truth, pred)]
        names = [
            "image" if labels is None else f"{labels[row]}: image",
            "ground truth (forest white)",
            f"prediction (IoU {inter / union if union else 1:.2f})",
            "errors",
        ]
        y = row * (h + gap_y) + gap_y
        for col, (panel, name) in enumerate(zip([image, *grey, error_map(truth, pred)], names)):
            x = 1 + col * (w + gap_x)
            picture[y - 1 : y + h + 1, x - 1 : x + w + 1] = 128
            picture[y : y + h, x : x + w] = panel
            titles.append((x + w / 2, y - 1.5, name))
    return picture, titles


def example_panel(
    images: np.ndarray,
    masks: np.ndarray,
    preds: list[np.ndarray],
    title: str,
    path: Path,
    labels: list[str] | None = None,
) -> None:
    """A figure with one row per tile: image | ground truth | prediction (`preds`) | error map;
    `labels` name each row's tile (e.g. its scene) above its image.

    The panels are one picture in one axes: matplotlib spends ~40 ms laying out and drawing each
    axes, and 4 axes per row cost seconds per figure in every `dvc repro`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .io import write_figure

    picture, titles = panel_picture(images, masks, preds, labels)
    # inches: the picture fills the width; fixed bands above it for the title, below for the legend
    width, top, bottom = 10.0, 0.32, 0.4
    height = width * picture.shape[0] / picture.shape[1] + top + bottom
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.0, bottom / height, 1.0, 1 - (top + bottom) / height))
    ax.imshow(picture, interpolation="nearest")
    for x, y, name in titles:
        ax.text(x, y, name, ha="center", va="bottom", fontsize=9)
    ax.set_axis_off()
    fig.legend(
        handles=[
            Patch(color=np.array(c) / 255, label=name)
            for c, name in ((TP, "forest found"), (FP, "false forest"), (FN, "missed forest"))
        ],
        loc="lower center",
        ncol=3,
        fontsize=9,
    )
    fig.suptitle(title, y=1 - 0.06 / height, va="top")
    write_figure(path, fig)
    plt.close(fig)


def _tiles(layout: DataLayout, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks of the packed tiles at `rows` (row i of split.csv is tile i)."""
    return np.load(layout.images, mmap_mode="r")[rows], np.load(layout.masks, mmap_mode="r")[rows]


def scored_masks(predictor: Predictor, layout: DataLayout, rows: np.ndarray) -> list[np.ndarray]:
    """Masks of the test tiles at `rows` as the run scored them: with the model file's `adapt_bn`,
    each by the model adapted to windows of its scene's test tiles (as train.evaluate adapts), else
    all by the model itself (tile-sized images share forward passes)."""
    images = np.load(layout.images, mmap_mode="r")
    if not predictor.adapt_bn:
        return predictor.masks([images[r] for r in rows])
    split = layout.split()
    scenes, test = split.scene, split.subset == "test"
    out: dict[int, np.ndarray] = {}
    for scene in dict.fromkeys(scenes[rows]):
        own = [images[r] for r in np.flatnonzero(test & (scenes == scene))]
        adapted = predictor.for_scene(own, predictor.adapt_bn)
        shown = rows[scenes[rows] == scene]
        out.update(zip(shown, adapted.masks([images[r] for r in shown])))
    return [out[r] for r in rows]


def write_overlays(
    models_dir: Path, layout: DataLayout, combinations: dict, cfg: ReportConfig, out_dir: Path, device: torch.device
) -> int:
    """plots/overlays/<combination>.png for the best seed of each combination (`combinations` as in
    summary.json) on the same `cfg.examples` test tiles drawn with `cfg.seed`; returns the tile count."""
    test = np.flatnonzero(layout.split().subset == "test")
    rows = np.sort(np.random.default_rng(cfg.seed).choice(test, min(cfg.examples, len(test)), replace=False))
    images, masks = _tiles(layout, rows)
    for combo, s in combinations.items():
        if s["best_seed"] is None:
            print(f"overlays: {combo}: every seed diverged, nothing to show")
            continue
        run = Run.of(combo, s["best_seed"]).name
        predictor = Predictor.load(models_dir / run / "model.pt", device, "trained")
        preds = scored_masks(predictor, layout, rows)
        example_panel(images, masks, preds, f"{run}: test tiles drawn with seed {cfg.seed}", out_dir / f"{combo}.png")
    return len(rows)


def write_worst_scenes(
    models_dir: Path,
    layout: DataLayout,
    summary: dict,
    scenes_csv: Path,
    cfg: ReportConfig,
    path: Path,
    device: torch.device,
) -> list[str]:
    """`path`: image | truth | prediction | errors of SCENE_TILES test tiles (drawn with cfg.seed) of
    each of the WORST_SCENES first scenes of `scenes_csv` (metrics/scenes.csv, worst first: report.scene_scores),
    by the best seed of the best combination (`summary` as summary.json); returns those scenes, none
    (and no file) when scenes_csv has no row."""
    try:
        worst = read_columns(scenes_csv, "scene")["scene"][:WORST_SCENES]
    except ForestsegError:
        raise ForestsegError(f"{scenes_csv}: missing or not a per-scene table; run `dvc repro aggregate`") from None
    combo = summary["best_combination"]
    if not worst or combo is None:
        return []
    split = layout.split()
    rng = np.random.default_rng(cfg.seed)
    rows, labels = [], []
    for scene in worst:
        test = np.flatnonzero((split.subset == "test") & (split.scene == scene))
        if not len(test):
            raise ForestsegError(
                f"{scenes_csv}: scene {scene} has no test tile in {layout.split_csv}; run `dvc repro aggregate`"
            )
        picked = np.sort(rng.choice(test, min(SCENE_TILES, len(test)), replace=False))
        rows += picked.tolist()
        labels += [f"scene {scene}"] * len(picked)
    images, masks = _tiles(layout, np.array(rows))
    run = Run.of(combo, summary["combinations"][combo]["best_seed"]).name
    worst_txt = f"{len(worst)} worst scenes" if len(worst) > 1 else "worst scene"
    title = f"{run}: test tiles of the {worst_txt} by forest IoU (tiles drawn with seed {cfg.seed})"
    preds = scored_masks(Predictor.load(models_dir / run / "model.pt", device, "trained"), layout, np.array(rows))
    example_panel(images, masks, preds, title, path, labels)
    return worst
