"""Stage split: assign tiles to train/test (and val) by scene or by tile; the all-forest baseline."""

from pathlib import Path

from common import args, clear_temps, params, stage

from forestseg.dataset import format_split, split_folder
from forestseg.io import write_json
from forestseg.layout import DataLayout


@stage
def main(argv: list[str]) -> None:
    data_dir, summary_json = args(argv, "DATA_DIR", "SUMMARY_JSON")
    (cfg,) = params("split")
    clear_temps(data_dir, summary_json)
    summary = split_folder(DataLayout(Path(data_dir)), cfg)
    write_json(summary_json, summary)
    print(format_split(summary, cfg))


if __name__ == "__main__":
    main()
