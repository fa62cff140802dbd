"""Stage overlays: image | truth | prediction | error map on seeded test tiles, best run per combination."""
from pathlib import Path

import numpy as np
import pandas as pd
from common import args, params, stage

from forestseg.io import read_json
from forestseg.predict import Predictor, example_panel
from forestseg.device import pick_device


@stage
def main(argv: list[str]) -> None:
    models_dir, data_dir, summary_json, out_dir = map(Path, args(argv, "MODELS_DIR", "DATA_DIR", "SUMMARY_JSON", "OUT_DIR"))
    (cfg,) = params("report")
    test = np.flatnonzero(pd.read_csv(data_dir / "split.csv")["subset"].to_numpy() == "test")
    rows = np.sort(np.random.default_rng(cfg.seed).choice(test, min(cfg.examples, len(test)), replace=False))
    images = np.load(data_dir / "packed/images.npy", mmap_mode="r")[rows]
    masks = np.load(data_dir / "packed/masks.npy", mmap_mode="r")[rows]
    device = pick_device("auto")
    for combo, s in read_json(summary_json)["combinations"].items():
        if s["best_seed"] is None:
            print(f"overlays: {combo}: every seed diverged, nothing to show")
            continue
        run = f"{combo}-{s['best_seed']}"
        predictor = Predictor.load(models_dir / run / "model.pt", device)
        example_panel(predictor, images, masks, f"{run}: test tiles (seed {cfg.seed})", out_dir / f"{combo}.png")
    print(f"overlays: wrote {out_dir}/<combination>.png for {len(rows)} test tiles")


if __name__ == "__main__":
    main()
