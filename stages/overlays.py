"""Stage overlays: drops model folders of members no longer in the grid (its `models` dependency then
holds the grid's alone, as in any clone), then draws image | truth | prediction | error map on seeded
test tiles, best run per combination, and on tiles of the worst test scenes (metrics/scenes.csv) by
the best run."""

from pathlib import Path

from common import args, clear_temps, drop_runs_not_in, params, stage

from forestseg.device import here_or_auto, pick_device
from forestseg.io import read_json
from forestseg.layout import DataLayout
from forestseg.predict import write_overlays, write_worst_scenes


@stage
def main(argv: list[str]) -> None:
    models_dir, data_dir, summary_json, scenes_csv, out_dir = map(
        Path, args(argv, "MODELS_DIR", "DATA_DIR", "SUMMARY_JSON", "SCENES_CSV", "OUT_DIR")
    )
    cfg, grid, train = params("report", "grid", "train")
    drop_runs_not_in(grid, models_dir, "model")
    # and each model's folder: a train stage killed while writing a model file, then restored by DVC
    # from its run-cache, never runs again to clear its temp file
    clear_temps(out_dir, *(p for p in models_dir.glob("*") if p.is_dir()))
    # the device the runs trained and scored their test tiles on, so the overlays show what was scored;
    # a coordinator without the grid's GPUs (or with fewer) draws them where it can (calls within rounding
    # of the cut may differ)
    summary, layout, device = read_json(summary_json), DataLayout(data_dir), pick_device(here_or_auto(train.device))
    n = write_overlays(models_dir, layout, summary["combinations"], cfg, out_dir, device)
    print(f"overlays: wrote {out_dir}/<combination>.png for {n} test tiles")
    worst = write_worst_scenes(models_dir, layout, summary, scenes_csv, cfg, out_dir / "worst_scenes.png", device)
    if worst:
        print(f"overlays: wrote {out_dir}/worst_scenes.png for scenes {', '.join(worst)}")
    else:
        print(f"overlays: {scenes_csv} has no scene (no per-scene counts of the best runs): no worst_scenes.png")


if __name__ == "__main__":
    main()
