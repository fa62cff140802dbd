"""Stage train@<loss>-<optimizer>-<seed>: train one grid member, write its model, history and metrics."""
from pathlib import Path

import pandas as pd
from common import args, params, stage

import forestseg
from forestseg.checkpoint import fingerprint, write_model
from forestseg.config import ForestsegError, asdict, load_sections
from forestseg.device import pick_device, use_bf16
from forestseg.io import write_csv, write_json
from forestseg.loader import load_split
from forestseg.train import HISTORY_COLUMNS, Diverged, train_run

RESUME_DIR = Path(".resume")  # scratch: git- and dvc-ignored, never a DVC output


@stage
def main(argv: list[str]) -> None:
    loss, optimizer, seed, data_dir, runs_dir, models_dir = args(
        argv, "LOSS", "OPTIMIZER", "SEED", "DATA_DIR", "RUNS_DIR", "MODELS_DIR")
    model_cfg, opt_cfg, train_cfg = cfgs = params("model", "optimizer", "train")
    # grid is not a param of this stage (adding a seed must not retrain the others): check the member here
    (grid,) = load_sections({"grid": {"loss": [loss], "optimizer": [optimizer], "seed": [seed]}}, "grid")
    run = grid.runs()[0]
    data_dir, out, model_dir = Path(data_dir), Path(runs_dir) / run.name, Path(models_dir) / run.name
    device = pick_device(train_cfg.device)
    tiles = load_split(data_dir, device)
    if train_cfg.batch_size > len(tiles["train"]):
        raise ForestsegError(f"params.yaml: train.batch_size: {train_cfg.batch_size} is larger than "
                             f"the {len(tiles['train'])} training tiles; lower it")
    resume = RESUME_DIR / f"{run.name}.pt"
    code = [Path(__file__), *sorted(Path(forestseg.__file__).parent.glob("*.py"))]  # a code change retrains
    data = [data_dir / "index.csv", data_dir / "split.csv", data_dir / "packed" / "sha256.json"]
    fp = fingerprint(run.name, [asdict(c) for c in cfgs], use_bf16(train_cfg.precision, device), code, data)
    try:
        result = train_run(run, model_cfg, opt_cfg, train_cfg, tiles["train"], tiles["test"], model_dir, resume, fp,
                           val=tiles.get("val"))
        history, metrics = result.history, result.metrics
    except Diverged as e:
        # Recorded, not raised: one diverged run must not stop the rest of the grid.
        print(f"warning: {e}")
        history, metrics = e.history, {"status": "diverged", "message": str(e), "epochs": len(e.history)}
        write_model(model_dir / "model.pt", None, {"run": run.name, "message": str(e)})  # a declared output
    write_csv(out / "history.csv", pd.DataFrame(history) if history else pd.DataFrame(columns=HISTORY_COLUMNS))
    write_json(out / "metrics.json", metrics)
    resume.unlink(missing_ok=True)  # the outputs exist: nothing left to resume


if __name__ == "__main__":
    main()
