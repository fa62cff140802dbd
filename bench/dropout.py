"""Dropout at the bottom of the UNet (bench/QUALITY.md, Round 17): does channel dropout on the deepest
features, where the original UNet (Ronneberger et al. 2015) put its dropout, help a model trained on 24
scenes score better on unseen ones? The gpu recipe's CV shows a fold's test loss rising through training
(fold 3: 0.73 at epoch 5, 0.97 at epoch 80, its log) while its training loss falls (0.45 to 0.33).

A screen, not a param: in the models that bench/quality.py trains, the UNet's bottom layer (an identity in
the `unet` archs without global context) becomes `nn.Dropout2d(P)`, which acts in training only and has
no weights, so the model files and their scoring are those of the recipe. Everything after P is
bench/quality.py's command line:

    python bench/dropout.py 0.5 cv cpu --threads 2 --name cv_cpu_drop05
    python bench/dropout.py 0.5 cv cpu --threads 2 -S 'grid.seed=[1]' --name cv_cpu_drop05_s1
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import forestseg.train  # noqa: E402
from bench import quality  # noqa: E402
from forestseg.config import ModelConfig  # noqa: E402
from forestseg.model import LowResolution, UNet  # noqa: E402


def with_dropout(build, p: float):
    """`build` (a ModelConfig -> model function) whose UNet drops whole channels of its deepest
    features with probability `p` in training."""

    def built(cfg: ModelConfig) -> nn.Module:
        model = build(cfg)
        unet = model.inner if isinstance(model, LowResolution) else model
        if not isinstance(unet, UNet) or not isinstance(unet.context, nn.Identity):
            raise SystemExit(f"dropout: model.arch {cfg.arch} has no empty bottom layer to put it in")
        unet.context = nn.Dropout2d(p)
        return model

    return built


def main() -> None:
    try:
        p = float(sys.argv[1])
    except (IndexError, ValueError):
        sys.exit("usage: python bench/dropout.py P QUALITY-ARGS... (P in (0, 1), e.g. 0.5 cv cpu --name cv_cpu_drop05)")
    if not 0 < p < 1:
        sys.exit(f"dropout: P must be in (0, 1), got {p}")
    forestseg.train.build_model = with_dropout(forestseg.train.build_model, p)
    quality.SCREEN = f"dropout {p:g} at the UNet's bottom (bench/dropout.py)"
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    quality.main()


if __name__ == "__main__":
    main()
