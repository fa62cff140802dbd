"""Context across tile borders (bench/QUALITY.md, "Round 13"): does a model that sees a tile's neighbours score
better on unseen scenes? The Kaggle tiles of a scene lie edge to edge on a 9x9 grid (`<scene>_sat_<rc>`:
row r, column c; a tile's edge pixels match its neighbour's as closely as two columns of one tile), so
each scene's tiles stitch into a mosaic; where a tile is missing, the input is 0 (the training mean
colour once normalised) and there is no loss. One training of the
`cpu` recipe's model (UNet w16 d3 at half resolution, bce, Adam 1e-3, cosine with 1 warmup epoch, 15
epochs, flips/rotations) per fold and arm:

  tile    the tiles alone, 16 per step (as forestseg trains: the arm that checks this loop)
  mosaic  random crops of CROP px from the training scenes' mosaics, each holding a tile drawn as
          `tile` draws them, as many pixels per step as 16 tiles (4 crops of 512)
  centre  each tile with (crop - 256) / 2 px of its scene around it, 16 per step, loss on the tile only

Each model scores every test tile twice, as the recipe scores (batch-norm statistics a quarter of the
way to the scene's, bf16): the tile alone (as `forestseg predict`), and cut from one forward pass over
its whole scene's mosaic; both also over the tiles whose 8 neighbours all exist (no hole within a
tile of them). `kept` scores the recipe's own fold models that way. A scratch loop, not forestseg's:
its `tile` arm must match the recipe's CV.

    python bench/context.py tile 256 0,1,2,3,4 0      # ARM CROP FOLDS SEED
    python bench/context.py mosaic 512 0,1,2,3,4 0
    python bench/context.py centre 384 0,1,2,3,4 0
    python bench/context.py kept DIR                  # score the recipe's fold models kept by bench/errors.py --keep DIR
    python bench/context.py grid                      # the grid facts: border pixel gaps, tiles with 8 neighbours
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality as q  # noqa: E402
from forestseg.config import ModelConfig, OptimizerConfig  # noqa: E402
from forestseg.dataset import NAME  # noqa: E402
from forestseg.evaluate import _counts  # noqa: E402
from forestseg.loader import Normalizer, to_input  # noqa: E402
from forestseg.metrics import scores  # noqa: E402
from forestseg.model import adapt_batchnorm, build_model  # noqa: E402
from forestseg.optim import Adam, lr_factor  # noqa: E402
from forestseg.predict import Predictor  # noqa: E402
from forestseg.windows import scene_windows  # noqa: E402

EPOCHS, T, BATCH, MIX = 15, 256, 16, 0.25  # the cpu recipe's epochs, tile, batch and adapt_bn


def mosaic(s: str, margin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, tuple[int, int]]]:
    """Scene `s` stitched: image (H, W, 3), mask and has-a-tile (H, W) uint8, each row's top-left;
    `margin` px of nothing around it."""
    rows = np.flatnonzero(SAMPLE.scene == s)
    r0, r1, c0, c1 = R[rows].min(), R[rows].max() + 1, C[rows].min(), C[rows].max() + 1
    H, W = (r1 - r0) * T + 2 * margin, (c1 - c0) * T + 2 * margin
    im, ms, va = np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    pos = {}
    for r in rows:
        y, x = (R[r] - r0) * T + margin, (C[r] - c0) * T + margin
        im[y : y + T, x : x + T], ms[y : y + T, x : x + T], va[y : y + T, x : x + T] = IMAGES[r], TRUTHS[r] > 0, 1
        pos[r] = (y, x)
    return im, ms, va, pos


def model_input(u8: torch.Tensor, valid: torch.Tensor, norm: Normalizer) -> torch.Tensor:
    """(B, H, W, 3) uint8 and (B, H, W) has-a-tile -> normalised input, 0 where there is no tile."""
    x = to_input(u8, norm)
    return x * valid[:, None].to(x.dtype)


def flip_rotate(parts: list[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
    """One of the 8 flips/rotations, the same for every (H, W, ...) part."""
    k = int(torch.randint(0, 8, (), generator=g))
    return [torch.rot90(t.flip(1) if k >= 4 else t, k % 4, (0, 1)) for t in parts]


def batch(arm: str, pick: np.ndarray, mos: dict, crop: int, g: torch.Generator) -> tuple:
    """uint8 images, float masks, loss weights and has-a-tile maps of one step."""
    xs, ys, ws, vs = [], [], [], []
    for r in pick:
        if arm == "tile":
            mask = torch.from_numpy((TRUTHS[r] > 0).astype(np.uint8))
            image, mask = flip_rotate([torch.from_numpy(IMAGES[r].copy()), mask], g)
            whole = torch.ones(T, T, dtype=torch.uint8)
            parts = [image, mask, whole, whole]
        else:
            im, ms, va, pos = mos[SAMPLE.scene[r]]
            margin = crop - T
            if arm == "mosaic":  # anywhere that keeps tile r inside the crop
                dy, dx = (int(v) for v in torch.randint(0, margin + 1, (2,), generator=g))
                weight = None
            else:  # centre: tile r in the middle, the loss on it alone
                dy = dx = margin // 2
                weight = np.zeros((crop, crop), np.uint8)
                weight[dy : dy + T, dx : dx + T] = 1
            y, x = pos[r][0] - dy, pos[r][1] - dx
            has = va[y : y + crop, x : x + crop].copy()
            parts = [im[y : y + crop, x : x + crop].copy(), ms[y : y + crop, x : x + crop].copy()]
            parts = flip_rotate([torch.from_numpy(p) for p in parts + [has if weight is None else weight, has]], g)
        xs.append(parts[0]), ys.append(parts[1]), ws.append(parts[2]), vs.append(parts[3])
    return torch.stack(xs), torch.stack(ys).float(), torch.stack(ws).float(), torch.stack(vs)


def run_fold(arm: str, crop: int, f: int, seed: int, folds: list[list[str]]) -> dict:
    train_scenes = [s for i, x in enumerate(folds) if i != f for s in x]
    rows = q.rows_of(SAMPLE, train_scenes)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    norm = Normalizer.fit(torch.from_numpy(IMAGES[np.sort(rows)]))
    model = build_model(ModelConfig(arch="unet_half", width=16, depth=3)).to(memory_format=torch.channels_last)
    ocfg = OptimizerConfig(lr=1e-3, schedule="cosine", warmup_epochs=1)
    opt = Adam(model.parameters(), 1e-3)
    mos = {s: mosaic(s, crop - T) for s in train_scenes} if arm != "tile" else {}
    per = BATCH * T * T // (crop * crop) if arm == "mosaic" else BATCH
    steps = math.ceil(len(rows) / BATCH)  # as many steps as the tile arm: the same pixels per epoch
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        opt.lr = 1e-3 * lr_factor(epoch, ocfg, EPOCHS)
        model.train()
        order = rows[torch.randperm(len(rows), generator=g).numpy()]
        for step in range(steps):
            pick = order[step * per : (step + 1) * per]  # per <= BATCH: no step runs past the tiles
            u8, y, w, has = batch(arm, pick, mos, crop, g)
            x = model_input(u8, has, norm).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            loss = F.binary_cross_entropy_with_logits(out.float(), y, weight=w, reduction="sum") / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    minutes = (time.perf_counter() - t0) / 60
    out = score(model.eval(), norm, folds[f])
    print(f"{arm} crop {crop} seed {seed} fold {f}: trained {minutes:.1f} min; {line(out)}", flush=True)
    return out


def score(model: torch.nn.Module, norm: Normalizer, scenes: list[str], mix: float = MIX) -> dict:
    """Scores of `scenes`' tiles, each scene with batch-norm statistics `mix` of the way to its own:
    each tile alone, and cut from one pass over its scene's mosaic; the same for the tiles whose 8
    neighbours all exist (no hole within a tile of them)."""
    counts = {"tile": 0, "mosaic": 0, "tile inner": 0, "mosaic inner": 0}
    for s in scenes:
        rows = np.flatnonzero(SAMPLE.scene == s)
        adapted = adapt_batchnorm(model, to_input(torch.from_numpy(scene_windows(list(IMAGES[rows]), T)), norm), mix)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            alone = torch.cat(
                [
                    adapted(to_input(torch.from_numpy(IMAGES[rows[i : i + 32]].copy()), norm)).float()
                    for i in range(0, len(rows), 32)
                ]
            ).numpy()
            im, _, va, pos = mosaic(s, 0)
            pad = ((0, -im.shape[0] % 16), (0, -im.shape[1] % 16))  # unet_half d3: sides divisible by 16
            im, va = np.pad(im, pad + ((0, 0),)), np.pad(va, pad)
            x = model_input(torch.from_numpy(im)[None], torch.from_numpy(va)[None], norm)
            whole = adapted(x.contiguous(memory_format=torch.channels_last)).float()[0].numpy()
        have = {(R[r], C[r]) for r in rows}
        for i, r in enumerate(rows):
            truth, (y0, x0) = TRUTHS[r] > 0, pos[r]
            inner = all((R[r] + dr, C[r] + dc) in have for dr in (-1, 0, 1) for dc in (-1, 0, 1))
            for key, logits in (("tile", alone[i]), ("mosaic", whole[y0 : y0 + T, x0 : x0 + T])):
                c = _counts(logits > 0, truth)
                counts[key] = counts[key] + c
                if inner:
                    counts[f"{key} inner"] = counts[f"{key} inner"] + c
    return {k: scores(v) if not isinstance(v, int) else None for k, v in counts.items()}


HOW = {"tile": "alone", "mosaic": "in its mosaic"}


def line(out: dict) -> str:
    """One fold's scores: alone and in the mosaic, over all tiles and over those with all 8 neighbours."""
    parts = []
    for key, how in HOW.items():
        inner = out[f"{key} inner"]
        parts.append(
            f"scored {how}: forest IoU {out[key]['iou']:.4f} mIoU {out[key]['miou']:.4f}"
            + (f" (with 8 neighbours: {inner['iou']:.4f} / {inner['miou']:.4f})" if inner else "")
        )
    return "; ".join(parts)


def grid_facts(folds: list[list[str]]) -> None:
    """Print what the mosaics rest on: the mean absolute difference (0-255, over R, G, B) between the
    touching edge pixels of tiles that are neighbours on the grid, between two adjacent columns
    inside a tile, and between a tile's edge and that of a random other tile of its scene; and how
    many CV tiles have all 8 neighbours."""
    at = {(SAMPLE.scene[r], R[r], C[r]): r for r in range(len(R))}
    rng = np.random.default_rng(0)

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())

    for name, (dr, dc) in (("left-right", (0, 1)), ("top-bottom", (1, 0))):
        pairs = [(r, at[k]) for (s, y, x), r in at.items() if (k := (s, y + dr, x + dc)) in at]
        edge = (lambda t: t[:, -1], lambda t: t[:, 0]) if dc else (lambda t: t[-1], lambda t: t[0])
        touching = np.mean([gap(edge[0](IMAGES[a]), edge[1](IMAGES[b])) for a, b in pairs])
        random = np.mean(
            [
                gap(edge[0](IMAGES[a]), edge[1](IMAGES[rng.choice(np.flatnonzero(SAMPLE.scene == SAMPLE.scene[a]))]))
                for a, _ in pairs
            ]
        )
        print(
            f"{name} neighbours: {len(pairs)} pairs, touching edges differ by {touching:.1f}, "
            f"a random tile of the same scene by {random:.1f}"
        )
    inside = np.mean([gap(IMAGES[r][:, T // 2 - 1], IMAGES[r][:, T // 2]) for r in range(len(R))])
    print(f"two adjacent columns inside a tile differ by {inside:.1f}")
    cv = q.rows_of(SAMPLE, [s for f in folds for s in f])
    whole = sum(
        all((SAMPLE.scene[r], R[r] + dy, C[r] + dx) in at for dy in (-1, 0, 1) for dx in (-1, 0, 1)) for r in cv
    )
    print(f"{whole} of the {len(cv)} CV tiles have all 8 neighbours")


def main() -> None:
    usage = (
        "usage: python bench/context.py ARM CROP FOLDS SEED (ARM tile, mosaic or centre; CROP 256 for tile only),"
        " or: python bench/context.py kept DIR, or: python bench/context.py grid"
    )
    torch.set_num_threads(2)
    folds = q.folds(SAMPLE, 5)
    if sys.argv[1:] == ["grid"]:
        grid_facts(folds)
        return
    if sys.argv[1:2] == ["kept"] and len(sys.argv) == 3:  # the recipe's fold models that bench/errors.py kept
        outs = []
        for f in range(5):
            kept = Path(sys.argv[2]) / q.kept_name(f"fold {f}", 0, "cpu", [], SAMPLE, torch.device("cpu"))
            if not kept.is_file():
                sys.exit(
                    f"{kept}: no such model file; `python bench/errors.py --keep {sys.argv[2]}` trains and keeps them"
                )
            p = Predictor.load(kept, torch.device("cpu"), q.fold_model_sections("cpu", [])[2].precision)
            outs.append(score(p.model, p.norm, folds[f], p.adapt_bn))
            print(f"{kept.name} fold {f}: {line(outs[-1])}", flush=True)
        summary(outs, f"the kept models of {sys.argv[2]}")
        return
    try:
        arm, crop, only, seed = (
            sys.argv[1],
            int(sys.argv[2]),
            [int(f) for f in sys.argv[3].split(",")],
            int(sys.argv[4]),
        )
    except (IndexError, ValueError):
        sys.exit(usage)
    if len(sys.argv) != 5 or arm not in ("tile", "mosaic", "centre") or (arm == "tile") != (crop == T):
        sys.exit(usage)
    outs = [run_fold(arm, crop, f, seed, folds) for f in only]
    summary(outs, f"folds {only}, {arm} crop {crop} seed {seed}")


def summary(outs: list[dict], what: str) -> None:
    for key, how in HOW.items():
        for k, which in ((key, "all tiles"), (f"{key} inner", "tiles with 8 neighbours")):
            if all(o[k] for o in outs):
                iou, miou = (np.mean([o[k][m] for o in outs]) for m in ("iou", "miou"))
                print(f"mean over {what}, scored {how}, {which}: forest IoU {iou:.4f} mIoU {miou:.4f}")


if __name__ == "__main__":
    SAMPLE = q.load_sample()
    IMAGES = np.load(SAMPLE.layout.images, mmap_mode="r")
    TRUTHS = np.load(SAMPLE.layout.masks, mmap_mode="r")
    _rc = [NAME.match(name)["rc"] for name in pd.read_csv(SAMPLE.layout.index_csv)["image"]]
    R, C = np.array([int(rc[0]) for rc in _rc]), np.array([int(rc[1]) for rc in _rc])  # place on the scene's grid
    main()
