"""Stage overlays: image | truth | prediction | error map on seeded test tiles, best run per combination."""

from pathlib import Path

from common import args, params, stage

from forestseg.device import pick_device
from forestseg.io import read_json
from forestseg.layout import DataLayout
from forestseg.predict import write_overlays


@stage
def main(argv: list[str]) -> None:
    models_dir, data_dir, summary_json, out_dir = map(
        Path, args(argv, "MODELS_DIR", "DATA_DIR", "SUMMARY_JSON", "OUT_DIR")
    )
    (cfg,) = params("report")
    combinations = read_json(summary_json)["combinations"]
    n = write_overlays(models_dir, DataLayout(data_dir), combinations, cfg, out_dir, pick_device("auto"))
    print(f"overlays: wrote {out_dir}/<combination>.png for {n} test tiles")


if __name__ == "__main__":
    main()
