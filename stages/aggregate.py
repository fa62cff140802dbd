"""Stage aggregate: drops run folders of members no longer in the grid, then writes tables (mean/std
over seeds, best seed), headline.json, summary.json, figures and REPORT.md."""
from common import args, params, stage

from forestseg.io import read_json
from forestseg.report import aggregate, remove_stale_runs


@stage
def main(argv: list[str]) -> None:
    runs_dir, index_json, split_json, metrics_dir, plots_dir, report = args(
        argv, "RUNS_DIR", "INDEX_JSON", "SPLIT_JSON", "METRICS_DIR", "PLOTS_DIR", "REPORT_MD")
    split_cfg, model, opt, train, grid = params("split", "model", "optimizer", "train", "grid")
    lrs = f"lr {opt.lr:g}" + "".join(f", {k} {v:g}" for k, v in opt.lr_overrides.items())
    setup = {
        "index": read_json(index_json),
        "split_by": split_cfg.by,
        "params": (f"{model.arch} width {model.width} depth {model.depth}, batch-norm {'on' if model.batch_norm else 'off'}, "
                   f"{model.input} input; {train.epochs} epochs, batch {train.batch_size} (test {train.test_batch_size}), "
                   f"{lrs}, " + (f"x{opt.gamma:g} every {opt.step_epochs} epochs" if opt.schedule == "step" else "cosine decay")
                   + (f" after {opt.warmup_epochs} warmup epochs" if opt.warmup_epochs else "")
                   + f", momentum {opt.momentum:g}, weight decay {opt.weight_decay:g}, "
                   f"flips/rotations {'on' if train.augment else 'off'}, colour jitter {train.color_jitter:g}"),
    }
    removed = remove_stale_runs(grid.runs(), runs_dir)
    if removed:
        print(f"removed {len(removed)} run folder(s) of {runs_dir} not in the grid: {', '.join(removed)}")
    summary = aggregate(grid.runs(), runs_dir, read_json(split_json), metrics_dir, plots_dir, report, setup)
    base = summary["baseline_all_forest"]["test_iou"]
    for combo, s in summary["combinations"].items():
        iou, std = s["test_iou_mean"], s["test_iou_std"]
        iou_txt = "n/a" if iou is None else f"{iou:.4f}" + ("" if std is None else f" ± {std:.4f}")
        print(f"{combo:>12}: test IoU {iou_txt} over {s['seeds'] - s['diverged']}/{s['seeds']} seeds, "
              f"best seed {s['best_seed']}")
    print(f"{'all-forest':>12}: test IoU {base:.4f} (baseline); report in {report}")


if __name__ == "__main__":
    main()
