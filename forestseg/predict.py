"""Segment images with a trained checkpoint; images larger than a training tile are cut into
overlapping windows whose probabilities are blended with a smooth weight, so no seams show."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from .checkpoint import read_model
from .config import ConfigError, ForestsegError, ModelConfig, ReportConfig
from .images import ImageError, decode
from .layout import DataLayout
from .loader import Normalizer, to_input
from .model import build_model

# Error map colours: true positive, false positive, false negative (true negative stays black).
TP, FP, FN = (34, 139, 34), (230, 159, 0), (204, 0, 204)


@dataclass(frozen=True)
class Predictor:
    model: torch.nn.Module
    norm: Normalizer
    tile: int
    cut: float  # the raw output above which a pixel is forest
    device: torch.device

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> "Predictor":
        """A model, its input normalisation, tile size and threshold from a model file written by training."""
        state = read_model(path)
        try:
            model = build_model(ModelConfig(**state["model"]))
            model.load_state_dict(state["weights"])
        except (ConfigError, TypeError, RuntimeError) as e:
            raise ForestsegError(f"{path}: the weights do not match the model its params describe ({e})") from None
        norm = Normalizer(tuple(state["normalizer"]["mean"]), tuple(state["normalizer"]["std"]))
        return cls(model.to(device).eval(), norm, int(state["tile_size"]), float(state["threshold"]), device)

    @torch.no_grad()
    def logits(self, image: np.ndarray, overlap: int | None = None, batch: int = 8) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) float32 raw outputs, tiled with overlapping windows."""
        t = self.tile
        overlap = t // 4 if overlap is None else overlap
        h, w = image.shape[:2]
        H, W = max(h, t), max(w, t)
        # Reflect-pad small images up to one tile: the model saw whole tiles in training.
        padded = np.pad(image, ((0, H - h), (0, W - w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        stride = max(1, t - overlap)
        ys = sorted({*range(0, H - t, stride), H - t})
        xs = sorted({*range(0, W - t, stride), W - t})
        ramp = np.minimum(np.arange(t) + 1, np.arange(t)[::-1] + 1).astype(np.float32)
        weight = np.minimum(ramp[:, None], ramp[None, :])  # highest in a window's centre, low at its edges
        total = np.zeros((H, W), np.float32)
        norm = np.zeros((H, W), np.float32)
        windows = [(y, x) for y in ys for x in xs]
        for i in range(0, len(windows), batch):
            chunk = windows[i:i + batch]
            x = torch.from_numpy(np.stack([padded[y:y + t, x0:x0 + t] for y, x0 in chunk])).to(self.device)
            out = self.model(to_input(x, self.norm)).float().cpu().numpy()
            for (y, x0), o in zip(chunk, out):
                total[y:y + t, x0:x0 + t] += o * weight
                norm[y:y + t, x0:x0 + t] += weight
        return (total / norm)[:h, :w]

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
    except ImageError as e:
        raise ForestsegError(f"{path}: {e}") from None
    except OSError as e:
        raise ForestsegError(f"{path}: cannot be read ({e.strerror or e})") from None
    if picture.pixels.ndim != 3:
        raise ForestsegError(f"{path}: is a {picture.kind} with one band; forestseg needs RGB images")
    return picture.pixels, None if picture.alpha is None else picture.alpha > 0


def example_panel(predictor: Predictor, images: np.ndarray, masks: np.ndarray, title: str, path: Path) -> None:
    """A figure with one row per tile: image | ground truth | prediction | error map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .io import write_figure

    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
    for row, (image, truth) in enumerate(zip(images, masks.astype(bool))):
        pred = predictor.mask(image)
        inter, union = (pred & truth).sum(), (pred | truth).sum()
        panels = [image, truth, pred, error_map(truth, pred)]
        names = ["image", "ground truth (forest white)", f"prediction (IoU {inter / union if union else 1:.2f})", "errors"]
        for ax, panel, name in zip(axes[row], panels, names):
            ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.axis("off")
    fig.legend(handles=[Patch(color=np.array(c) / 255, label=l) for c, l in
                        ((TP, "forest found"), (FP, "false forest"), (FN, "missed forest"))],
               loc="lower center", ncol=3, fontsize=9)
    fig.suptitle(title)
    write_figure(path, fig)
    plt.close(fig)


def write_overlays(models_dir: Path, layout: DataLayout, combinations: dict, cfg: ReportConfig, out_dir: Path,
                   device: torch.device) -> int:
    """plots/overlays/<combination>.png for the best seed of each combination (`combinations` as in
    summary.json) on the same `cfg.examples` test tiles drawn with `cfg.seed`; returns the tile count."""
    test = np.flatnonzero(pd.read_csv(layout.split_csv)["subset"].to_numpy() == "test")
    rows = np.sort(np.random.default_rng(cfg.seed).choice(test, min(cfg.examples, len(test)), replace=False))
    images = np.load(layout.images, mmap_mode="r")[rows]
    masks = np.load(layout.masks, mmap_mode="r")[rows]
    for combo, s in combinations.items():
        if s["best_seed"] is None:
            print(f"overlays: {combo}: every seed diverged, nothing to show")
            continue
        run = f"{combo}-{s['best_seed']}"
        predictor = Predictor.load(models_dir / run / "model.pt", device)
        example_panel(predictor, images, masks, f"{run}: test tiles (seed {cfg.seed})", out_dir / f"{combo}.png")
    return len(rows)
