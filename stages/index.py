"""Stage index: validate every pair of a Kaggle-layout folder, decode it once into packed arrays."""

from pathlib import Path

from common import args, clear_temps, params, stage

from forestseg.dataset import check_tracked, format_report, index_folder
from forestseg.io import write_json
from forestseg.layout import DataLayout


@stage
def main(argv: list[str]) -> None:
    source, data_dir, report_json = args(argv, "SOURCE", "DATA_DIR", "REPORT_JSON")
    (cfg,) = params("data")
    layout = DataLayout(Path(data_dir))
    clear_temps(data_dir, report_json, layout.packed)  # the arrays' temps of a killed run lie in packed/
    check_tracked(source)
    report = index_folder(source, layout, cfg)
    write_json(report_json, report)
    print(format_report(report))


if __name__ == "__main__":
    main()
