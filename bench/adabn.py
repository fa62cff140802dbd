"""Test-time adaptation on unseen scenes (bench/QUALITY.md, "Round 8", "Round 9"): each CV fold's model of the
`cpu` recipe (or `--recipe`) is scored as trained and adapted to each test scene's own tiles (no
label is used), all from the same trained model, so every change is paired.

    python bench/adabn.py [--only 0,1,2,3,4] [-S grid.seed=[1]] [--mix 0.25,0.5,1]
    python bench/adabn.py --final --mix 0.25     # the 8 set-aside scenes, trained on the other 30: once
    python bench/adabn.py --mix 0.25 --tent 3,10 --otsu --keep /tmp/models   # Round 9; models kept for reruns
    python bench/adabn.py --mix 0.25 --smooth 2,4,8 --keep /tmp/models       # Round 10: the logits blurred

- mix m: each batch-norm layer's mean and variance become (1 - m) x the training statistics + m x
  the scene's (m 1: AdaBN, the scene's alone): `Predictor.adapted`, what `forestseg predict
  --adapt-bn` and the recipe's `train.adapt_bn` do.
- tent n (on top of the first mix): n Adam steps (lr 1e-3) on the batch-norm layers' scale and shift
  that lower the mean binary entropy of the model's outputs on the scene's windows (TENT, Wang et
  al. 2021), statistics frozen at the adapted ones.
- otsu (on top of the first mix): the scene's own cut, Otsu's between-class split of the logits of
  its windows, clipped to logits -1..1.
- smooth s (on top of the first mix): the logits blurred by a Gaussian of s px before the cut (the
  Kaggle masks are drawn coarser than the photos).

Prints forest IoU and mIoU per fold and method, then the mean paired change per method. With
`--keep DIR`, each fold's model is saved there (named by fold, seed and -S) and reused next time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality as q  # noqa: E402
from forestseg.config import Run  # noqa: E402
from forestseg.device import pick_device  # noqa: E402
from forestseg.loader import gaussian_blur, to_input  # noqa: E402
from forestseg.predict import Predictor  # noqa: E402
from forestseg.windows import scene_windows  # noqa: E402


def tent(p: Predictor, windows: np.ndarray, steps: int, lr: float = 1e-3) -> Predictor:
    """`p` with its batch-norm scale and shift moved by `steps` Adam steps down the mean binary
    entropy of its outputs on `windows` (one batch); statistics as they are (eval mode)."""
    model = copy.deepcopy(p.model).eval()
    params = [x for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for x in (m.weight, m.bias)]
    opt = torch.optim.Adam(params, lr=lr)
    x = to_input(torch.from_numpy(np.ascontiguousarray(windows)).to(p.device), p.norm)
    for _ in range(steps):
        z = model(x)
        entropy = -(torch.sigmoid(z) * F.logsigmoid(z) + torch.sigmoid(-z) * F.logsigmoid(-z)).mean()
        opt.zero_grad()
        entropy.backward()
        opt.step()
    return dataclasses.replace(p, model=model.eval())


def otsu_cut(p: Predictor, windows: np.ndarray) -> float:
    """Otsu's cut of the logits of `windows` (64 bins over their range, logits clipped to -8..8), clipped to -1..1."""
    z = np.clip(p.windows_logits(np.ascontiguousarray(windows)).ravel(), -8, 8)
    hist, edges = np.histogram(z, 64)
    centre = (edges[:-1] + edges[1:]) / 2
    below, total = np.cumsum(hist), hist.sum()
    mean_below = np.cumsum(hist * centre) / np.maximum(below, 1)
    mean_above = ((hist * centre).sum() - np.cumsum(hist * centre)) / np.maximum(total - below, 1)
    return float(np.clip(centre[np.argmax(below * (total - below) * (mean_below - mean_above) ** 2)], -1.0, 1.0))


class Smoothed(torch.nn.Module):
    """`model` with its logits blurred by a Gaussian of `sigma` px (reflected at the window's edges)."""

    def __init__(self, model: torch.nn.Module, sigma: float):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)[:, None].float()  # (B, 1, H, W)
        return gaussian_blur(z, self.sigma)[:, 0]


def methods(
    mixes: list[float], tents: list[int], otsu: bool, sigmas: tuple[float, ...] = ()
) -> dict[str, Callable[[Predictor, np.ndarray], Predictor]]:
    """name -> (plain predictor, the scene's windows) -> the predictor that scores the scene."""
    out: dict[str, Callable[[Predictor, np.ndarray], Predictor]] = {
        f"mix {m:g}": lambda p, w, m=m: p.adapted(w, m) for m in [0.0, *mixes]
    }
    base = mixes[0] if mixes else 0.0
    for n in tents:
        out[f"mix {base:g} + tent {n}"] = lambda p, w, n=n: tent(p.adapted(w, base), w, n)
    if otsu:
        out[f"mix {base:g} + otsu"] = lambda p, w: (lambda a: dataclasses.replace(a, cut=otsu_cut(a, w)))(
            p.adapted(w, base)
        )
    for sigma in sigmas:
        out[f"mix {base:g} + smooth {sigma:g}"] = lambda p, w, sigma=sigma: (
            lambda a: dataclasses.replace(a, model=Smoothed(a.model, sigma).eval())
        )(p.adapted(w, base))
    return out


def paired(got: dict[str, dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Each method's change of forest IoU and mIoU against the plain model's ("mix 0") on the same part."""
    return {
        name: (s["iou"] - got["mix 0"]["iou"], s["miou"] - got["mix 0"]["miou"])
        for name, s in got.items()
        if name != "mix 0"
    }


def summary(deltas: dict[str, list[tuple[float, float]]]) -> str:
    """One line per method: the mean paired change of forest IoU (and each part's), and of mIoU."""
    lines = []
    for name, d in deltas.items():
        iou, miou = np.array(d).T
        lines.append(
            f"{name}: forest IoU {iou.mean():+.4f} (per fold {', '.join(f'{x:+.3f}' for x in iou)}), mIoU {miou.mean():+.4f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="0,1,2,3,4", help="folds of the 5-fold CV")
    ap.add_argument("--mix", default="0.25,0.5,1", help="weights of the scene's statistics")
    ap.add_argument("--tent", default="", help="TENT step counts on top of the first mix, e.g. 3,10")
    ap.add_argument("--otsu", action="store_true", help="also the scene's own Otsu cut on top of the first mix")
    ap.add_argument("--smooth", default="", help="Gaussian blur sigmas (px) of the logits on top of the first mix")
    ap.add_argument("--recipe", default="cpu", help="recipes/<name>.yaml (cpu; gpu where there is one)")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="params over the recipe")
    ap.add_argument("--final", action="store_true", help="the set-aside scenes instead of the CV folds")
    ap.add_argument("--keep", type=Path, default=None, help="a folder to keep each fold's model in and reuse")
    args = ap.parse_args()
    try:  # the lists, checked before anything loads
        mixes = [float(m) for m in args.mix.split(",") if m]
        sigmas = tuple(float(x) for x in args.smooth.split(",") if x)
        tents = [int(n) for n in args.tent.split(",") if n]
    except ValueError as e:
        ap.error(f"--mix, --smooth and --tent take comma-separated numbers ({e})")
    if not mixes or not all(0 <= m <= 1 for m in mixes) or any(x <= 0 for x in sigmas) or any(n < 1 for n in tents):
        ap.error("--mix: numbers in 0..1; --smooth: sigmas > 0; --tent: step counts >= 1")
    q.check_five_folds(ap, args.only)
    model_cfg, opt_cfg, train_cfg, grid = q.fold_model_sections(args.recipe, args.sets)
    torch.set_num_threads(train_cfg.threads)  # as the recipe trains (the numbers depend on it)
    sample, device = q.load_sample(), pick_device(train_cfg.device)
    scorers = methods(mixes, tents, args.otsu, sigmas)
    images = np.load(sample.layout.images, mmap_mode="r")
    folds = q.folds(sample, 5)
    deltas: dict[str, list[tuple[float, float]]] = {name: [] for name in list(scorers)[1:]}
    parts = [
        (f"fold {f}", [s for i, x in enumerate(folds) if i != f for s in x], folds[f])
        for f in map(int, args.only.split(","))
    ]
    if args.final:
        parts = [("set-aside", [s for x in folds for s in x], q.holdout_scenes(sample))]
    for part, train_scenes, test_scenes in parts:
        t0, run = time.perf_counter(), Run(grid.loss[0], grid.optimizer[0], grid.seed[0])
        kept = args.keep / q.kept_name(part, run.seed, args.recipe, args.sets, sample, device) if args.keep else None
        cfgs = (model_cfg, opt_cfg, train_cfg)
        p = q.kept_predictor(sample, run, cfgs, train_scenes, test_scenes, device, kept)
        p = dataclasses.replace(p, adapt_bn=0.0)  # the methods adapt; score_rows scores as given
        counts: dict[str, dict] = {name: {} for name in scorers}
        for scene in test_scenes:
            rows = q.rows_of(sample, [scene])
            windows = scene_windows(list(images[rows]), p.tile)  # as `forestseg evaluate --adapt-bn` takes them
            for name, scorer in scorers.items():
                counts[name].update(q.score_rows([scorer(p, windows)], sample, rows))
        got = {name: q.total_scores(c) for name, c in counts.items()}
        print(
            f"{part}, seed {run.seed} ({time.perf_counter() - t0:.0f} s): "
            + "; ".join(
                f"{name}: IoU {s['iou']:.4f} mIoU {s['miou']:.4f} precision {s['precision']:.4f} recall {s['recall']:.4f}"
                for name, s in got.items()
            ),
            flush=True,
        )
        for name, change in paired(got).items():
            deltas[name].append(change)
    print(summary(deltas))


if __name__ == "__main__":
    main()
