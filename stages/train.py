"""Stage train@<loss>-<optimizer>-<seed>: train one grid member, write its history and metrics."""
import hashlib
import json
from pathlib import Path

import pandas as pd
from common import args, params, stage

import forestseg
from forestseg.config import PIXEL_SIZE_M, ForestsegError, Run, asdict, load_sections
from forestseg.device import pick_device, use_bf16
from forestseg.io import write_csv, write_json, write_torch
from forestseg.loader import load_split
from forestseg.train import Diverged, train_run


def fingerprint(run: Run, cfgs: tuple, data_dir: Path, bf16: bool = False, pixel_size_m: float = PIXEL_SIZE_M) -> str:
    """What a checkpoint must match to be resumed: the run, its params and precision, the code and the data
    (with its pixel size: a finished checkpoint is not rewritten, so a new pixel size must retrain)."""
    h = hashlib.sha256(json.dumps([run.name, *map(asdict, cfgs), bf16, pixel_size_m], sort_keys=True).encode())
    for source in [Path(__file__), *sorted(Path(forestseg.__file__).parent.glob("*.py"))]:
        h.update(source.read_bytes())  # a code change retrains, never reuses a finished run
    for name in ("index.csv", "split.csv"):
        h.update((data_dir / name).read_bytes())
    for name in ("images.npy", "masks.npy"):
        st = (data_dir / "packed" / name).stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


@stage
def main(argv: list[str]) -> None:
    loss, optimizer, seed, data_dir, runs_dir, models_dir = args(
        argv, "LOSS", "OPTIMIZER", "SEED", "DATA_DIR", "RUNS_DIR", "MODELS_DIR")
    model_cfg, opt_cfg, train_cfg = cfgs = params("model", "optimizer", "train")
    pixel_size_m = params("data")[0].pixel_size_m
    # grid is not a param of this stage (adding a seed must not retrain the others): check the member here
    (grid,) = load_sections({"grid": {"loss": [loss], "optimizer": [optimizer], "seed": [seed]}}, "grid")
    run = grid.runs()[0]
    data_dir, out = Path(data_dir), Path(runs_dir) / run.name
    device = pick_device(train_cfg.device)
    tiles = load_split(data_dir, device)
    if train_cfg.batch_size > len(tiles["train"]):
        raise ForestsegError(f"params.yaml: train.batch_size: {train_cfg.batch_size} is larger than "
                             f"the {len(tiles['train'])} training tiles; lower it")
    checkpoint = Path(models_dir) / run.name / "last.pt"
    try:
        result = train_run(run, model_cfg, opt_cfg, train_cfg, tiles["train"], tiles["test"],
                           checkpoint, fingerprint(run, cfgs, data_dir, use_bf16(train_cfg.precision, device), pixel_size_m),
                           val=tiles.get("val"), pixel_size_m=pixel_size_m)
        history, metrics = result.history, result.metrics
    except Diverged as e:
        # Recorded, not raised: one diverged run must not stop the rest of the grid.
        print(f"warning: {e}")
        history, metrics = e.history, {"status": "diverged", "message": str(e), "epochs": len(e.history)}
        if not e.history:  # no good epoch of these params: never leave an older run's weights as this output
            write_torch(checkpoint, {"status": "diverged", "message": str(e), "fingerprint": None})
    columns = ["epoch", "train_loss", "test_loss", "test_iou", "test_dice", "lr", "seconds", "train_seconds"]
    write_csv(out / "history.csv", pd.DataFrame(history) if history else pd.DataFrame(columns=columns))
    write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    main()
