"""Stage aggregate: drops run folders of members no longer in the grid, then writes tables (mean/std
over seeds, best seed), headline.json, summary.json, figures and REPORT.md."""

from pathlib import Path

from common import args, clear_temps, drop_resume_files, drop_runs_not_in, params, stage

from forestseg.config import unused_by_grid
from forestseg.io import read_json
from forestseg.report import aggregate, describe_setup, format_summary


@stage
def main(argv: list[str]) -> None:
    runs_dir, index_json, split_json, metrics_dir, plots_dir, report = args(
        argv, "RUNS_DIR", "INDEX_JSON", "SPLIT_JSON", "METRICS_DIR", "PLOTS_DIR", "REPORT_MD"
    )
    split_cfg, model, opt, train, grid = params("split", "model", "optimizer", "train", "grid")
    for line in unused_by_grid(opt, grid):
        print(f"note: {line}")
    drop_runs_not_in(grid, runs_dir, "run")
    # and each run's folder: a train stage killed at a write, then restored by DVC from its run-cache,
    # never runs again to clear it
    clear_temps(metrics_dir, plots_dir, report, *(p for p in Path(runs_dir).glob("*") if p.is_dir()))
    drop_resume_files(grid, runs_dir)
    setup = describe_setup(read_json(index_json), split_cfg, model, opt, train, grid)
    summary = aggregate(grid.runs(), runs_dir, read_json(split_json), metrics_dir, plots_dir, report, setup)
    print(format_summary(summary) + f"; report in {report}")


if __name__ == "__main__":
    main()
