"""Stage train@<loss>-<optimizer>-<seed>: train one grid member, write its model, history and metrics."""

import re
from pathlib import Path

from common import RESUME_DIR, ForestsegError, args, check_all, clear_temps, params, stage

from forestseg.cores import cpu_clock, thread_notes

STARTED = cpu_clock()  # before torch loads: the seconds that measure what else keeps the cores busy

import forestseg  # noqa: E402
from forestseg.checkpoint import check_init  # noqa: E402
from forestseg.config import load_sections, unused_by_grid  # noqa: E402
from forestseg.device import on_cpu  # noqa: E402
from forestseg.io import write_json, write_rows  # noqa: E402
from forestseg.layout import DataLayout  # noqa: E402
from forestseg.train import HISTORY_COLUMNS, SCENE_COLUMNS, TIMING_COLUMNS, train_member  # noqa: E402


@stage
def main(argv: list[str]) -> None:
    loss, optimizer, seed, data_dir, runs_dir, models_dir = args(
        argv, "LOSS", "OPTIMIZER", "SEED", "DATA_DIR", "RUNS_DIR", "MODELS_DIR"
    )
    model_cfg, opt_cfg, train_cfg = params("model", "optimizer", "train")
    every = check_all()  # the sections later stages read, before the training they would come after
    # grid is not a param of this stage (adding a seed must not retrain the others): check the member here
    # the seed as params.yaml wrote it (DVC's ${item.seed}): a whole number is an int, anything else refused there
    member = {
        "loss": [loss],
        "optimizer": [optimizer],
        "seed": [int(seed) if re.fullmatch(r"-?(0|[1-9]\d*)", seed) else seed],
    }
    (grid,) = load_sections({"grid": member}, "grid")
    run = grid.runs()[0]
    if run == every["grid"].runs()[0]:  # said once per grid, before it trains (aggregate says it again)
        for line in unused_by_grid(opt_cfg, every["grid"]):
            print(f"note: {line}")
    if train_cfg.init_from != "none":
        check_init(train_cfg.init_from, model_cfg.weights())
    code = [
        Path(__file__),
        *sorted(Path(forestseg.__file__).parent.glob("*.py")),
    ]  # a code change discards a half-done run's resume file (dvc.yaml's deps decide what retrains)
    resume = RESUME_DIR / f"{run.name}.pt"
    if RESUME_DIR.exists() and not RESUME_DIR.is_dir():  # said before training, not after its first epoch
        raise ForestsegError(f"{RESUME_DIR}: is a file where the train stage keeps its resume files; remove it")
    out, model_dir = Path(runs_dir) / run.name, Path(models_dir) / run.name
    clear_temps(out, model_dir, RESUME_DIR)
    fix = "set train.threads: {} for runs beside them"
    if on_cpu(train_cfg.device):  # log lines: the numbers do not depend on them
        for note in thread_notes(STARTED, train_cfg.threads, fix, "set train.threads: {}"):
            print(f"note: {note}")
    layout = DataLayout(Path(data_dir))
    history, metrics, scenes = train_member(run, model_cfg, opt_cfg, train_cfg, layout, model_dir, resume, code)
    if history:
        columns = [c for c in history[0] if c not in TIMING_COLUMNS]  # val_miou too, with a val split
    else:  # diverged in its first epoch: the header its epochs would have had
        columns = HISTORY_COLUMNS + (["val_miou"] if "val" in set(layout.split().subset) else [])
    write_rows(out / "history.csv", columns, ([row[c] for c in columns] for row in history))
    write_json(out / "metrics.json", metrics)
    write_rows(out / "scenes.csv", SCENE_COLUMNS, scenes)
    resume.unlink(missing_ok=True)  # the outputs exist: nothing left to resume


if __name__ == "__main__":
    main()
