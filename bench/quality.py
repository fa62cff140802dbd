"""Quality bench (a script, not a test): recipes scored on scenes they never saw, by scene k-fold CV.

On the real sample (../shared/forest-sample or FORESTSEG_SAMPLE, 38 scenes):
  - 8 scenes are set aside (bench/holdout_scenes.txt). No screening ever trains or scores on them;
    only `final` does (and bench/adabn.py --final), for a chosen recipe's numbers. Over the rounds 8
    recipe versions were scored there (README), so they are no longer untouched.
  - `cv`: the other 30 scenes go into k folds balanced by tile count; each fold's scenes are
    scored by a model trained on the others (with the recipe's split.val_fraction > 0, that share
    of the training scenes is held out as validation scenes: the threshold is chosen on them).
    Reports forest IoU, mIoU, Dice, precision, recall as mean +- std over folds (each fold's
    scores from TP/FP/FN/TN summed over its tiles), the per-scene forest IoU spread (median,
    10th percentile, worst scene: each scene counts once, whatever its tiles, 1-61 on the sample;
    the percentile interpolates, so for 30 scenes it lies between the 3rd and 4th worst, 0.9 of the
    way to the 4th, and for 18 between the 2nd and 3rd), the all-forest baseline and
    the wall time. After each fold the
    result so far is saved, marked unfinished: a bench killed later (a session's end) and rerun
    with the same command trains only the folds left.
    With `--split tile` the folds are of tiles drawn at random from the 30 scenes instead, as public
    notebooks on this set split it: tiles of every test scene are trained on. A diagnostic of how
    much of the error is scenes never seen, never a headline number.
  - `final`: trains on all 30 scenes and scores the 8 set-aside ones.
  - `curve`: the learning curve: scores vs number of training scenes, on the CV folds, at equal
    compute (a smaller set trains for more epochs: as many tiles trained on as the recipe over all;
    validation scenes do not count, as they are not trained on).
  - `merge`: one result of the folds of several runs of a recipe (`--parts a,b --name c`).
  - `table`: one Markdown table of every saved result (recipes x metrics), for the README; with
    `--ref NAME`, also each one's change against that result on the same folds (paired).
A recipe is recipes/<name>.yaml (the member trained is its grid's first loss, optimizer and seed;
with --ensemble, one per seed of its grid, scored as the mean of their raw outputs and each alone);
-S section.key=value changes one of its params, as `dvc exp run -S` does. Every result is saved as
JSON and Markdown under bench/results/ (the name: --name, else the recipe and its -S values).

    python bench/quality.py cv cpu --only 0,1,2 -S train.epochs=6   # screening: 3 of the 5 folds
    python bench/quality.py cv cpu --folds 5                          # a finalist, full budget
    python bench/quality.py final cpu
    python bench/quality.py curve cpu --scenes 4,8,16 --only 0,1,2
    python bench/quality.py table
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.speed import SAMPLE  # noqa: E402
from forestseg.config import ForestsegError, Run, SplitConfig, load_sections  # noqa: E402
from forestseg.cores import QUIET, cpu_clock, others_busy  # noqa: E402
from forestseg.dataset import build_index, share_of  # noqa: E402
from forestseg.device import keep_freed_memory, pick_device, use_bf16  # noqa: E402
from forestseg.errors import Terminated, stopped, terminate  # noqa: E402
from forestseg.evaluate import _counts  # noqa: E402
from forestseg.io import remove_stale_temps, temp_prefix, write_json, write_text, write_with  # noqa: E402
from forestseg.layout import DataLayout  # noqa: E402
from forestseg.loader import load_tiles  # noqa: E402
from forestseg.metrics import scores  # noqa: E402
from forestseg.predict import Predictor  # noqa: E402
from forestseg.train import train_run  # noqa: E402
from forestseg.windows import scene_windows  # noqa: E402
from recipes import run as recipes  # noqa: E402

HOLDOUT = ROOT / "bench" / "holdout_scenes.txt"
RESULTS = ROOT / "bench" / "results"
# the sample decoded once per content (a folder per digest: another sample never replaces one in use)
CACHE = Path(tempfile.gettempdir()) / "forestseg-quality-cache"
FOLD_SEED = 0  # the fold assignment: fixed, so every recipe is scored on the same folds
SHOWN = ("iou", "miou", "dice", "precision", "recall")
CUTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # forest probability cuts of the precision/recall trade-off


@dataclasses.dataclass(frozen=True)
class Sample:
    layout: DataLayout
    scene: np.ndarray  # scene id of each packed row
    forest: np.ndarray  # forest pixels of each row
    pixels: np.ndarray
    digest: str = ""  # sample_digest: of meta_data.csv and the image and mask files, what was decoded


def sample_digest(folder: Path) -> str:
    """meta_data.csv and every image and mask file, name and bytes: a changed, added or removed file
    (an inverted mask with the same meta_data.csv) is another digest, a byte-identical copy the same."""
    h = hashlib.sha256((folder / "meta_data.csv").read_bytes())
    for sub in ("images", "masks"):
        for f in sorted((folder / sub).iterdir()) if (folder / sub).is_dir() else []:
            h.update(f"{sub}/{f.name}\0".encode() + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


# the code that decodes the sample into the cache: another decoder is another cache folder
DECODE_CODE = [f"forestseg/{m}.py" for m in ("dataset", "images", "io", "layout", "masks")]


def load_sample() -> Sample:
    """The sample, decoded once into CACHE/<digest>-<decoder> (a new folder when any of its files or
    the decoding code changes, written under a temp name and renamed, so runs on other samples, of
    other code or at the same time never mix)."""
    if not (SAMPLE / "meta_data.csv").is_file():
        script = Path(sys.argv[0]).name if Path(sys.argv[0]).parent.name == "bench" else "quality.py"  # the one run
        sys.exit(f"bench/{script} needs the real sample: not found at {SAMPLE} (set FORESTSEG_SAMPLE)")
    digest = sample_digest(SAMPLE)
    decoder = hashlib.sha256(b"".join(name.encode() + b"\0" + (ROOT / name).read_bytes() for name in DECODE_CODE))
    folder = CACHE / f"{digest}-{decoder.hexdigest()[:16]}"
    if not (folder / "index.csv").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(CACHE)  # a killed decode's folder (SIGKILL runs no except), by its dead pid
        tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=temp_prefix(folder.name)))
        layout = DataLayout(tmp)
        try:
            index, report = build_index(SAMPLE, layout.images, layout.masks)
            index.to_csv(layout.index_csv, index=False)
        except ForestsegError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit(f"error: {e}")
        except BaseException:  # Ctrl-C, a kill's SIGTERM, a full disk: no half-decoded folder of ~270 MB left
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(folder)
            print(f"sample decoded into {folder}: {report['valid']} pairs, {report['skipped']} skipped")
        except OSError:  # another run decoded the same sample meanwhile: use its folder
            shutil.rmtree(tmp, ignore_errors=True)
    import pandas as pd

    layout = DataLayout(folder)
    index = pd.read_csv(layout.index_csv, dtype={"scene": str})
    return Sample(
        layout, index["scene"].to_numpy(), index["forest_pixels"].to_numpy(), index["pixels"].to_numpy(), digest
    )


# Set by a bench script that changes training beyond params (bench/dropout.py): kept in the result, and a
# result without it (or with another) is not resumed or merged with one that has it.
SCREEN: str | None = None

# The code a result depends on: decoding, training, predicting and scoring (not the CLI, report or figures).
RESULT_CODE = [
    *(f"forestseg/{m}.py" for m in ("checkpoint", "config", "dataset", "device", "evaluate", "images", "layout")),
    *(f"forestseg/{m}.py" for m in ("loader", "losses", "masks", "metrics", "model", "optim", "predict", "train")),
    "forestseg/windows.py",
    "bench/quality.py",
]


def code_digest() -> str:
    """The RESULT_CODE files' bytes: a change there can change what a training or a score gives."""
    h = hashlib.sha256()
    for name in RESULT_CODE:
        h.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return h.hexdigest()[:16]


def holdout_scenes(sample: Sample) -> list[str]:
    """The set-aside scenes: chosen once (seed 2026) and kept in bench/holdout_scenes.txt."""
    if not HOLDOUT.is_file():
        scenes = sorted(set(sample.scene))
        chosen = sorted(np.random.default_rng(2026).choice(scenes, 8, replace=False).tolist())
        write_text(HOLDOUT, "".join(f"{s}\n" for s in chosen))
    chosen = HOLDOUT.read_text().split()
    missing = sorted(set(chosen) - set(sample.scene))
    if missing:
        sys.exit(f"{HOLDOUT}: scenes {missing} are not in the sample at {SAMPLE}")
    return chosen


def folds(sample: Sample, k: int) -> list[list[str]]:
    """The non-held-out scenes in k folds of about equal tile count (seeded order, greedy fill)."""
    held = set(holdout_scenes(sample))
    scenes, tiles = np.unique(sample.scene, return_counts=True)
    keep = [i for i, s in enumerate(scenes) if s not in held]
    order = np.random.default_rng(FOLD_SEED).permutation(keep)
    order = sorted(order, key=lambda i: -tiles[i])  # largest first, ties in seeded order (stable sort)
    out: list[list[str]] = [[] for _ in range(k)]
    load = np.zeros(k)
    for i in order:
        f = int(np.argmin(load))
        out[f].append(str(scenes[i]))
        load[f] += tiles[i]
    return [sorted(f) for f in out]


def curve_epochs(params: dict, sample: Sample, train: list[str], pool: list[str]) -> int:
    """The epochs that train on `train` see as many tiles as the recipe's epochs on all of `pool`: the same
    compute at every learning-curve size. Tiles of validation scenes are never trained on, so only each
    set's trained scenes count (a 4-scene set that loses one to validation trains 4/3 as long)."""
    (split_cfg,) = load_sections(params, "split")
    tiles = [len(rows_of(sample, hold_out_val(scenes, split_cfg)[0])) for scenes in (pool, train)]
    return max(1, round(params["train"]["epochs"] * tiles[0] / tiles[1]))


def rows_of(sample: Sample, scenes: list[str]) -> np.ndarray:
    return np.flatnonzero(np.isin(sample.scene, scenes))


def tile_folds(sample: Sample, k: int) -> list[np.ndarray]:
    """The non-held-out scenes' tiles in k folds at random (seeded): the leaky split, a diagnostic."""
    rows = np.random.default_rng(FOLD_SEED).permutation(rows_of(sample, [s for f in folds(sample, k) for s in f]))
    return [np.sort(f) for f in np.array_split(rows, k)]


def hold_out_val(scenes: list[str], split_cfg: SplitConfig) -> tuple[list[str], list[str]]:
    """`scenes` as (trained on, validation): split.val_fraction of them (at least one when it is > 0, and
    never all), drawn with split.seed, are validation scenes, on which train.threshold=val chooses the cut."""
    if split_cfg.val_fraction <= 0:
        return list(scenes), []
    if len(scenes) < 2:  # one scene trains: none is left to validate on
        return list(scenes), []
    n_val = min(max(1, share_of(split_cfg.val_fraction, len(scenes))), len(scenes) - 1)  # rounded as the split
    val = sorted(np.random.default_rng(split_cfg.seed).choice(scenes, n_val, replace=False).tolist())
    return [s for s in scenes if s not in val], val


def recipe_params(name: str, sets: list[str]) -> dict:
    """recipes/<name>.yaml over params.yaml, then the -S values, validated (as recipes/run.py takes them)."""
    given = [v for k, _, v in (item.partition("=") for item in sets) if k == "train.init_from"]
    try:  # a -S init_from is refused before the recipe would check the file against its model
        params = recipes.with_sets(name, sets) if not given or given[-1] == "none" else {"train": {}}
    except ForestsegError as e:
        sys.exit(f"error: {e}")
    init = given[-1] if given else params["train"]["init_from"]
    if init != "none":  # the benches train each fold's model from scratch
        sys.exit(
            f"error: train.init_from {init!r}: the benches train every fold from scratch "
            "(a model file may have seen the fold's test scenes); bench/finetune.py measures starting from one"
        )
    return params


def fold_model_sections(recipe: str, sets: list[str]) -> tuple:
    """The model, optimizer, train and grid sections of a recipe whose fold models `kept_predictor`
    trains on every non-test scene: one line for a recipe with validation scenes, which `cv` would
    hold out of training (bench/adabn.py, bench/errors.py, bench/postprocess.py, bench/resampling.py)."""
    params = recipe_params(recipe, sets)
    if params["split"]["val_fraction"] > 0:
        sys.exit(
            f"error: split.val_fraction {params['split']['val_fraction']:g} (recipe {recipe}): this script's fold "
            "models train on every scene but the fold's, not as `cv` holds validation scenes out; "
            "give -S split.val_fraction=0 or use `bench/quality.py cv`"
        )
    return load_sections(params, "model", "optimizer", "train", "grid")


def score_rows(
    predictors: list[Predictor],
    sample: Sample,
    rows: np.ndarray,
    trade_off: dict | None = None,
    alone: list | None = None,
    on_tile: Callable[[int, np.ndarray], None] | None = None,
) -> dict[str, np.ndarray]:
    """[tp, fp, fn, tn] per scene of the sample's `rows` (whole tiles: one window each, as `forestseg
    predict` runs them), forest above the model file's threshold; with several model files (a seed
    ensemble, all with the same threshold) the mean of their raw outputs. A predictor with `adapt_bn`
    (the model file's, or set) scores each scene adapted to windows of that scene's tiles, as
    `forestseg evaluate` does. With a `trade_off` dict, also the counts over all rows at each forest
    probability cut of CUTS, added into it; with an `alone` list, each model's own counts per scene,
    appended to it (from the same forward passes); with `on_tile`, each row and its (t, t) logits
    (the models' mean, forest above the model file's threshold) are passed to it."""
    images = np.load(sample.layout.images, mmap_mode="r")
    truths = np.load(sample.layout.masks, mmap_mode="r")
    first = predictors[0]
    per_scene: dict[str, np.ndarray] = {}
    each_alone: list[dict[str, np.ndarray]] = [{} for _ in predictors] if alone is not None else []
    adapting = any(p.adapt_bn for p in predictors)
    groups = [rows]  # batches as before where nothing adapts: the same forward passes, the same numbers
    if adapting:
        groups = [rows[sample.scene[rows] == s] for s in dict.fromkeys(sample.scene[rows])]
    for group in groups:
        windows = scene_windows(list(images[group]), first.tile) if adapting else None
        scored = [p.adapted(windows, p.adapt_bn) if adapting else p for p in predictors]
        for start in range(0, len(group), 32):
            chunk = group[start : start + 32]
            tiles = np.stack([images[r] for r in chunk])
            each = [p.windows_logits(tiles) for p in scored]
            logits = np.mean(each, axis=0)
            prob = first.probability(logits) if trade_off is not None else None
            for i, r in enumerate(chunk):
                truth, scene = truths[r] > 0, sample.scene[r]
                pred = logits[i] > first.cut
                per_scene[scene] = per_scene.get(scene, 0) + _counts(pred, truth)
                if on_tile is not None:
                    on_tile(int(r), logits[i])
                for own, member in zip(each_alone, each):
                    own[scene] = own.get(scene, 0) + _counts(member[i] > first.cut, truth)
                for cut in CUTS if trade_off is not None else ():
                    trade_off[cut] = trade_off.get(cut, 0) + _counts(prob[i] > cut, truth)
    if alone is not None:
        alone.extend(each_alone)
    return per_scene


def kept_predictor(
    sample: Sample,
    run: Run,
    cfgs: tuple,
    train_scenes: list[str],
    test_scenes: list[str],
    device: torch.device,
    keep: Path | None,
) -> Predictor:
    """The model file of `run` trained by `cfgs` (model, optimizer, train sections) on `train_scenes`
    (`test_scenes` scored per epoch, as training does), loaded; with `keep` (a file path), the model
    file is saved there, and reused when it is already there (bench/adabn.py, bench/errors.py)."""
    model_cfg, opt_cfg, train_cfg = cfgs
    torch.set_num_threads(train_cfg.threads)  # as the recipe trains (the numbers depend on it)
    if keep is not None and keep.is_file():
        return Predictor.load(keep, device, train_cfg.precision)
    train = load_tiles(sample.layout, rows_of(sample, train_scenes), device, sample.scene)
    test = load_tiles(sample.layout, rows_of(sample, test_scenes), device)
    with tempfile.TemporaryDirectory(prefix="forestseg-quality-") as tmp:
        out = Path(tmp)
        train_run(run, model_cfg, opt_cfg, train_cfg, train, test, out, out / "r.pt", "bench", lambda s: None)
        if keep is not None:
            write_with(keep, lambda p: shutil.copyfile(out / "model.pt", p))  # never a truncated model to load
        return Predictor.load(out / "model.pt", device, train_cfg.precision)


def kept_fold_options(doc: str, name: str, name_help: str = "bench/results/<name>.md") -> argparse.Namespace:
    """The command line of the scripts that score each CV fold's model of a recipe, kept in --keep
    (bench/errors.py, bench/postprocess.py)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--only", default="0,1,2,3,4", help="folds of the 5-fold CV")
    ap.add_argument("--recipe", default="cpu", help="recipes/<name>.yaml")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="params over the recipe")
    ap.add_argument("--keep", type=Path, default=None, help="a folder to keep each fold's model in and reuse")
    ap.add_argument("--name", default=name, help=name_help)
    args = ap.parse_args()
    check_five_folds(ap, args.only)
    return args


def check_five_folds(ap: argparse.ArgumentParser, only: str) -> None:
    """--only of the scripts that score the 5-fold CV's folds: one line for anything but folds 0-4."""
    if not all(f in ("0", "1", "2", "3", "4") for f in only.split(",")):
        ap.error(f"--only {only}: folds of the 5-fold CV, comma-separated, from 0,1,2,3,4")


def kept_fold_predictors(args: argparse.Namespace, sample: Sample) -> Iterator[tuple[int, Predictor]]:
    """Each fold of `args.only` with its model of the recipe (`kept_predictor`: trained on the other
    folds unless `args.keep` holds it), in order."""
    model_cfg, opt_cfg, train_cfg, grid = fold_model_sections(args.recipe, args.sets)
    device, all_folds = pick_device(train_cfg.device), folds(sample, 5)
    run = Run(grid.loss[0], grid.optimizer[0], grid.seed[0])
    for f in map(int, args.only.split(",")):
        train_scenes = [s for i, x in enumerate(all_folds) if i != f for s in x]
        kept = (
            args.keep / kept_name(f"fold {f}", run.seed, args.recipe, args.sets, sample, device) if args.keep else None
        )
        yield f, kept_predictor(sample, run, (model_cfg, opt_cfg, train_cfg), train_scenes, all_folds[f], device, kept)


def kept_fold_seed(args: argparse.Namespace) -> int:
    """The seed the fold models of `kept_fold_options` train with: the recipe's first."""
    return recipe_params(args.recipe, args.sets)["grid"]["seed"][0]


def kept_fold_header(script: str, args: argparse.Namespace) -> str:
    """The results file's title and command line, for the scripts of `kept_fold_options`."""
    seed = kept_fold_seed(args)
    return (
        f"# {args.name}\n\n`python bench/{script} --only {args.only} --recipe {args.recipe}"
        + "".join(f" -S {s}" for s in args.sets)
        + f"` (seed {seed}; each fold's test scenes scored by a model trained on the other folds)\n\n"
    )


def kept_name(part: str, seed: int, recipe: str, sets: list[str], sample: Sample, device: torch.device) -> str:
    """The file name a `--keep` folder stores a fold's model under: part, seed, recipe and -S values,
    and a digest of the params they make, the sample, the code, and the device type and precision
    it trains with on `device`, so an edited recipe, another sample (whose folds hold other scenes),
    new code, or a model trained in bf16 or on CUDA is never reused for another setting."""
    tag = "_".join([recipe] + [s.replace("=", "-").replace("/", "") for s in sets])
    params = recipe_params(recipe, sets)
    bf16 = use_bf16(load_sections(params, "train")[0].precision, device)
    stamp = f"{json.dumps(params, sort_keys=True)}\0{sample.digest}\0{code_digest()}\0{device.type}\0{bf16}"
    return f"{part.replace(' ', '')}_s{seed}_{tag}_{hashlib.sha256(stamp.encode()).hexdigest()[:8]}.pt"


def total_scores(per_scene: dict[str, np.ndarray]) -> dict:
    """Scores of the counts of `score_rows` summed over its scenes."""
    return scores(np.sum(list(per_scene.values()), axis=0))


def train_and_score(
    params: dict,
    train_scenes: list[str],
    test_scenes: list[str],
    sample: Sample,
    device: torch.device,
    tta: bool,
    ensemble: bool = False,
    tile_rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Train the recipe's first grid member on `train_scenes` (with `ensemble`, one model per seed of
    its grid, scored as the mean of their raw outputs, and each alone in `members`), score the model
    file on `test_scenes`; with `tile_rows`, on these training and test tiles instead (`--split tile`)."""
    model_cfg, opt_cfg, train_cfg, split_cfg, grid = load_sections(
        params, "model", "optimizer", "train", "split", "grid"
    )
    train_scenes, val_scenes = hold_out_val(train_scenes, split_cfg)
    train_rows, test_rows = tile_rows or (rows_of(sample, train_scenes), rows_of(sample, test_scenes))
    if tile_rows is not None:
        train_scenes = sorted(set(sample.scene[train_rows]))
    train = load_tiles(sample.layout, train_rows, device, sample.scene)
    test = load_tiles(sample.layout, test_rows, device)
    # with its scenes, so the val-chosen cut is chosen on val scenes adapted alike (train.adapt_bn), as in the pipeline
    val = load_tiles(sample.layout, rows_of(sample, val_scenes), device, sample.scene) if val_scenes else None
    predictors, histories, seconds = [], [], 0.0
    clock = cpu_clock()  # the training's minutes are only a cost where nothing else ran beside it
    for seed in grid.seed if ensemble else grid.seed[:1]:
        with tempfile.TemporaryDirectory(prefix="forestseg-quality-") as tmp:
            t0 = time.perf_counter()
            run = Run(grid.loss[0], grid.optimizer[0], seed)
            result = train_run(
                run,
                model_cfg,
                opt_cfg,
                train_cfg,
                train,
                test,
                Path(tmp),
                Path(tmp) / "resume.pt",
                "bench",
                log=print,
                val=val,
            )
            seconds += time.perf_counter() - t0
            predictors.append(Predictor.load(Path(tmp) / "model.pt", device, train_cfg.precision))
            histories.append(
                [{k: h[k] for k in ("epoch", "train_loss", "test_iou", "seconds")} for h in result.history]
            )
    busy = others_busy(clock, cpu_clock())
    plain = unadapted = None
    if tta:  # the same model scored both ways: TTA's own gain, paired
        plain = total_scores(score_rows(predictors, sample, test_rows))
        predictors = [dataclasses.replace(p, tta=True) for p in predictors]
    if predictors[0].adapt_bn:  # the same model (and views) scored both ways: the adaptation's own gain, paired
        unadapted = total_scores(
            score_rows([dataclasses.replace(p, adapt_bn=0.0) for p in predictors], sample, test_rows)
        )
    trade_off: dict[float, np.ndarray] = {}
    # With an ensemble, each member alone on the same tiles (and views): the ensemble's own gain, paired.
    alone: list[dict[str, np.ndarray]] = []
    per_scene = score_rows(predictors, sample, test_rows, trade_off, alone if ensemble else None)
    members = [
        {"seed": seed, "scores": total_scores(own), "history": history}
        for seed, own, history in zip(grid.seed, alone, histories)
    ]
    forest = int(sample.forest[test_rows].sum())
    return {
        "train_scenes": len(train_scenes),
        "val_scenes": len(val_scenes),
        "train_tiles": len(train),
        "test_tiles": len(test_rows),
        "seconds": round(seconds, 1),
        "others_busy": None if busy is None else round(busy, 2),  # cores' worth other processes used meanwhile
        "threshold": predictors[0].cut,
        "scores": total_scores(per_scene),
        "baseline": scores(np.array([forest, int(sample.pixels[test_rows].sum()) - forest, 0, 0])),
        "scenes": {s: scores(c)["iou"] for s, c in sorted(per_scene.items())},
        "history": histories[0],
        "trade_off": {str(c): scores(n) for c, n in trade_off.items()},
        **({"without_tta": plain} if plain else {}),
        **({"without_adapt_bn": unadapted} if unadapted else {}),
        **({"members": members} if members else {}),
    }


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def summarize(parts: list[dict]) -> dict:
    """Mean/std over folds of each score, per-scene IoU spread, baseline and time."""
    scene_iou = np.array([v for p in parts for v in p["scenes"].values()])
    return {
        **{m: [p["scores"][m] for p in parts] for m in SHOWN},
        "baseline_iou": [p["baseline"]["iou"] for p in parts],
        "scene_iou_median": float(np.median(scene_iou)),
        "scene_iou_p10": float(np.percentile(scene_iou, 10)),
        "worst_scene": min(((v, s) for p in parts for s, v in p["scenes"].items()))[::-1],
        "train_minutes": [p["seconds"] / 60 for p in parts],
        # the most any fold's training shared its cores (results from before 2026-12-05 did not measure it)
        "others_busy": max((p["others_busy"] for p in parts if p.get("others_busy") is not None), default=None),
        # the folds' scores at each probability cut (the model's own threshold aside)
        "trade_off": {
            c: {m: [p["trade_off"][c][m] for p in parts] for m in ("iou", "miou", "precision", "recall")}
            for c in parts[0].get("trade_off", {})
        },
    }


def paired(result: dict, ref: dict, metric: str) -> str:
    """The change of `metric` against `ref` on the folds both scored on the same test scenes, mean ± std
    (the fold-to-fold spread of the scores themselves is mostly how hard each fold's scenes are), with how
    many of `result`'s folds that is where `ref` has fewer (a 5-fold result against 3 folds); "-"
    where no fold holds the same scenes in both (another --folds, or another sample), or where one
    split tiles and the other scenes (tile folds of another --folds hold the same scenes, not the same tiles)."""
    tiles = "tile" in (result.get("split"), ref.get("split"))  # results saved before "folds" was recorded lack it
    if tiles and (result.get("split"), result.get("folds")) != (ref.get("split"), ref.get("folds")):
        return "-"
    theirs = {(p.get("fold"), tuple(sorted(p["scenes"]))): p["scores"][metric] for p in ref["parts"]}
    keys = [(p.get("fold"), tuple(sorted(p["scenes"]))) for p in result["parts"]]
    deltas = [p["scores"][metric] - theirs[k] for p, k in zip(result["parts"], keys) if k in theirs]
    if not deltas:
        return "-"
    some = f" ({len(deltas)} of {len(keys)} folds)" if len(deltas) < len(keys) else ""
    return f"{np.mean(deltas):+.3f} ± {np.std(deltas):.3f}{some}"


def shared(others: float | None) -> str:
    """What the minutes cell adds where other processes kept QUIET of a core or more busy in a fold's
    training: its minutes are then not the recipe's cost alone."""
    return f" (shared: {others:.1f} cores busy)" if others is not None and others >= QUIET else ""


def table(results: list[dict], ref: dict | None = None) -> str:
    """Markdown: one row per saved result (with `ref`, also each one's paired change of forest IoU and mIoU)."""
    head = "| result | mode | folds | forest IoU | mIoU | Dice | precision | recall | scene IoU median / p10 | all-forest IoU | train min/fold |"
    head += f" Δ forest IoU vs {ref['name']} | Δ mIoU |" if ref else ""
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        s = r["summary"]
        lines.append(
            f"| {r['name']}{' (unfinished)' if r.get('unfinished') else ''} | {r['mode']}"
            + (" (tile split: leaky)" if r.get("split") == "tile" else "")
            + f" | {len(r['parts'])} | "
            + " | ".join(mean_std(s[m]) for m in SHOWN)
            + (  # a tile fold holds a few tiles of each scene: its "scenes" are fragments of ~5 tiles
                " | - (tile folds)"
                if r.get("split") == "tile"
                else f" | {s['scene_iou_median']:.3f} / {s['scene_iou_p10']:.3f}"
            )
            + f" | {mean_std(s['baseline_iou'])}"
            + f" | {np.mean(s['train_minutes']):.1f}{shared(s.get('others_busy'))} |"
            + (f" {paired(r, ref, 'iou')} | {paired(r, ref, 'miou')} |" if ref else "")
        )
    return "\n".join(lines)


def trade_off_table(result: dict) -> str:
    """Markdown: forest IoU, mIoU, precision and recall (mean over folds) at each probability cut."""
    lines = ["| forest probability cut | forest IoU | mIoU | precision | recall |", "| --- | --- | --- | --- | --- |"]
    for cut, s in result["summary"]["trade_off"].items():
        lines.append(f"| {cut} | " + " | ".join(mean_std(s[m]) for m in ("iou", "miou", "precision", "recall")) + " |")
    return "\n".join(lines)


# What two cv results must share for their folds to be one CV: the training (on which device, in
# which precision: train.precision auto is bf16 on some CPUs), which scenes fold i holds (it depends
# on the fold count and the sample), the code that trained and scored, and how a fold is scored.
ALIKE = ("mode", "params", "folds", "tta", "ensemble", "sample", "code", "split", "device", "dtype", "screen")


def unfinished_folds(result: dict) -> dict[int, dict]:
    """{fold: part} of an unfinished cv run saved under the same name with the same recipe, params, fold
    count (fold i's scenes depend on it) and scoring (nothing when there is none), so rerunning its command
    trains only the folds left."""
    path = RESULTS / f"{result['name']}.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    same = all(saved.get(k) == result.get(k) for k in (*ALIKE, "recipe", "threads"))
    if not (saved.get("unfinished") and same):
        if saved.get("unfinished"):
            print(f"{path.name}: an unfinished run of other params, code or sample: its folds are trained again")
        return {}
    return {p["fold"]: p for p in saved["parts"]}


def save(result: dict, quiet: bool = False) -> None:
    text = (
        table([result])
        + "\n\nPrecision/recall trade-off over the model's probability cut:\n\n"
        + trade_off_table(result)
    )
    for key, what in (("without_tta", "TTA's"), ("without_adapt_bn", "Batch-norm adaptation's (train.adapt_bn)")):
        if key in result["parts"][0]:
            gain = {m: [p["scores"][m] - p[key][m] for p in result["parts"]] for m in SHOWN}
            text += f"\n\n{what} change, paired (the same models scored without it): " + ", ".join(
                f"{m} {np.mean(v):+.4f} ± {np.std(v):.4f}" for m, v in gain.items()
            )
    write_json(RESULTS / f"{result['name']}.json", result)
    write_text(RESULTS / f"{result['name']}.md", text + "\n")
    if not quiet:
        print(text)


def _check_numbers(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The numeric options, checked before anything loads: one line each, not a traceback later."""
    if args.folds < 2 or args.threads < 0:
        ap.error("--folds must be at least 2 and --threads at least 0")
    for option, text, low in (("--only", args.only, 0), ("--scenes", args.scenes, 1)):
        values = text.split(",") if text else []
        if not all(v.isdigit() and low <= int(v) for v in values) or (
            option == "--only" and (any(int(v) >= args.folds for v in values) or len(set(values)) < len(values))
        ):
            ap.error(
                f"{option} {text}: comma-separated whole numbers"
                + (f", folds 0-{args.folds - 1}, each once" if option == "--only" else ", each at least 1")
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("cv", "final", "curve", "table", "merge"))
    ap.add_argument("recipe", nargs="?", help="recipes/<name>.yaml")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", default="", help="run only these folds, e.g. 0,1 (screening)")
    ap.add_argument(
        "--split",
        choices=("scene", "tile"),
        default="scene",
        help="cv: folds of scenes, or of random tiles (the leaky split of public notebooks: a diagnostic)",
    )
    ap.add_argument("--scenes", default="4,8,16", help="curve: training scene counts")
    ap.add_argument(
        "--tta", action="store_true", help="score with the 8 flips/rotations averaged (and without, in without_tta)"
    )
    ap.add_argument(
        "--ensemble",
        action="store_true",
        help="train one model per seed of the recipe's grid and score the mean of their outputs (and each alone)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the recipe's train.threads)")
    ap.add_argument("--name", default="", help="result name (default: recipe and -S values)")
    ap.add_argument("--ref", default="", help="table: also each result's paired change against this result")
    ap.add_argument("--parts", default="", help="merge: results of one recipe on different folds, e.g. a,b")
    args = ap.parse_args()
    _check_numbers(ap, args)
    if args.mode == "table":
        results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
        ref = next((r for r in results if r["name"] == args.ref), None)
        if args.ref and ref is None:
            sys.exit(f"--ref {args.ref}: no bench/results/{args.ref}.json")
        text = table(results, ref)
        write_text(RESULTS / "README.md", "# Quality bench results (bench/quality.py)\n\n" + text + "\n")
        print(text)
        return
    if args.mode == "merge":  # folds run in separate processes (e.g. two 1-thread runs side by side)
        missing = [n for n in args.parts.split(",") if not (RESULTS / f"{n}.json").is_file()]
        if missing:
            sys.exit(f"merge: --parts {args.parts}: no bench/results/{missing[0]}.json")
        parts = [json.loads((RESULTS / f"{n}.json").read_text()) for n in args.parts.split(",")]
        if any(p.get(k) != parts[0].get(k) for p in parts for k in ALIKE) or parts[0]["mode"] != "cv" or not args.name:
            sys.exit(
                "merge: give --name and --parts of cv results with the same params, --folds and --tta, "
                "run on the same device and sample by the same code"
            )
        folds_run = [f for p in parts for f in p["parts"]]
        if len({f["fold"] for f in folds_run}) != len(folds_run):
            sys.exit("merge: the parts share a fold")
        if parts[0].get("split") == "tile":
            pass  # folds of random tiles: no scene list to check
        elif not (SAMPLE / "meta_data.csv").is_file():
            print(
                f"merge: the sample is not at {SAMPLE}: the folds' test scenes are not checked against {HOLDOUT.name}"
            )
        else:  # each fold's test scenes must be that fold's, as folds() makes them
            expected = folds(load_sample(), parts[0]["folds"])
            wrong = [f["fold"] for f in folds_run if sorted(f["scenes"]) != expected[f["fold"]]]
            if wrong:
                sys.exit(
                    f"merge: fold {wrong[0]} of the parts tested other scenes than that fold holds now "
                    f"({HOLDOUT.name} or the sample at {SAMPLE} changed since): run it again"
                )
        # a part killed before its last folds: those stay unfinished unless another part has them
        left = sorted({i for p in parts for i in p.get("unfinished", [])} - {f["fold"] for f in folds_run})
        merged = {k: v for k, v in parts[0].items() if k != "unfinished"}
        merged = {**merged, "name": args.name, "parts": folds_run, "summary": summarize(folds_run)}
        if left:
            print(f"merge: fold(s) {left} of an unfinished part are in no part: the result stays unfinished")
        save({**merged, "unfinished": left} if left else merged)
        return
    if not args.recipe:
        sys.exit(f"give a recipe: one of {', '.join(recipes.names())}")
    params = recipe_params(args.recipe, args.set_param)
    if args.split == "tile" and (args.mode != "cv" or params["split"]["val_fraction"] > 0):
        sys.exit("--split tile: cv mode only, with split.val_fraction 0")
    # torch's threads as training runs them (train.threads), or --threads; the params record what ran
    params["train"]["threads"] = args.threads or params["train"]["threads"]
    torch.set_num_threads(params["train"]["threads"])
    device = pick_device(params["train"]["device"])
    if device.type == "cpu":
        keep_freed_memory()
    sample = load_sample()
    outside = len(set(sample.scene) - set(holdout_scenes(sample)))
    if args.folds > outside:
        sys.exit(f"--folds {args.folds}: the sample has {outside} scenes outside the set-aside ones; give at most that")
    name = args.name or "_".join([args.mode, args.recipe, *(s.replace("/", "-") for s in args.set_param)])
    if not args.name:  # another fold choice or scoring is another result, never an overwrite of this one
        name += f"_k{args.folds}" if args.folds != 5 and args.mode != "final" else ""
        name += f"_only{args.only.replace(',', '-')}" if args.only else ""
        name += "_tta" if args.tta else ""
        name += "_ensemble" if args.ensemble else ""
        name += "_tilesplit" if args.split == "tile" else ""
    if args.ensemble and (len(params["grid"]["seed"]) < 2 or params["train"]["threshold"] != "loss"):
        sys.exit("--ensemble: give grid.seed two or more seeds (e.g. -S grid.seed=[0,1]) and train.threshold loss")
    result = {"name": name, "mode": args.mode, "recipe": args.recipe, "set": args.set_param, "params": params}
    result["device"], result["threads"] = device.type, torch.get_num_threads()
    # the precision trained in, which train.precision auto picks per CPU (absent from results before it)
    result["dtype"] = "bf16" if use_bf16(load_sections(params, "train")[0].precision, device) else "fp32"
    result["folds"], result["tta"] = args.folds, args.tta  # which scenes a fold holds, and how it is scored
    result["ensemble"] = args.ensemble
    if args.split == "tile":  # absent for the scene split, as in every result saved before the option
        result["split"] = "tile"
    if SCREEN:  # a bench script's change to training that params do not hold (bench/dropout.py)
        result["screen"] = SCREEN
    result["sample"], result["code"] = sample.digest, code_digest()  # what was trained on, and by what
    print(f"{name}: device {device}, {torch.get_num_threads()} threads")
    if args.mode == "final":
        held = holdout_scenes(sample)
        rest = [s for f in folds(sample, args.folds) for s in f]
        result["parts"] = [train_and_score(params, rest, held, sample, device, args.tta, args.ensemble)]
    elif args.mode == "cv":
        chosen = [int(i) for i in args.only.split(",")] if args.only else list(range(args.folds))
        done, parts = unfinished_folds(result), []
        all_folds = folds(sample, args.folds)
        by_tile = tile_folds(sample, args.folds) if args.split == "tile" else None
        if by_tile is not None:  # every fold holds tiles of (nearly) every scene
            all_folds = [sorted(set(sample.scene[rows])) for rows in by_tile]
        done = {i: p for i, p in done.items() if sorted(p["scenes"]) == sorted(all_folds[i])}  # of these folds
        # the saved folds that --only leaves out stay in the result (a killed run's folds 0-2, rerun with
        # --only 3,4 under its --name, were overwritten by folds 3 and 4 alone)
        others = [done[i] for i in sorted(done) if i not in chosen]
        # folds neither saved nor chosen: the result stays unfinished, so the plain command trains only them
        never = sorted(set(range(len(all_folds))) - set(chosen) - {p["fold"] for p in others}) if others else []
        if others:
            print(
                f"folds {', '.join(str(p['fold']) for p in others)}: kept from the unfinished run saved in "
                f"bench/results/{name}.json (not in --only)"
            )
        for i in chosen:
            if i in done:
                parts.append(done[i])
                print(f"fold {i}: kept from the unfinished run saved in bench/results/{name}.json")
                continue
            test = all_folds[i]
            train = [s for j, f in enumerate(all_folds) if j != i for s in f]
            rows = None
            if by_tile is not None:
                rows = (np.sort(np.concatenate([f for j, f in enumerate(by_tile) if j != i])), by_tile[i])
            parts.append(
                {"fold": i, **train_and_score(params, train, test, sample, device, args.tta, args.ensemble, rows)}
            )
            print(f"fold {i}: forest IoU {parts[-1]['scores']['iou']:.4f} mIoU {parts[-1]['scores']['miou']:.4f}")
            left = chosen[len(parts) :]
            if left:  # a killed bench (e.g. a session's end) keeps its finished folds; the same command resumes
                so_far = sorted(parts + others, key=lambda p: p["fold"])
                unfinished = sorted(set(left) | set(never))
                save({**result, "parts": so_far, "summary": summarize(so_far), "unfinished": unfinished}, quiet=True)
        result["parts"] = sorted(parts + others, key=lambda p: p["fold"])
        if never:
            result["unfinished"] = never
    else:  # curve
        all_folds = folds(sample, args.folds)
        chosen = [int(i) for i in args.only.split(",")] if args.only else range(args.folds)
        result["curve"] = {}
        for n in [int(x) for x in args.scenes.split(",")]:
            parts = []
            for i in chosen:
                test = all_folds[i]
                pool = sorted(s for j, f in enumerate(all_folds) if j != i for s in f)
                train = sorted(np.random.default_rng(n).choice(pool, min(n, len(pool)), replace=False).tolist())
                epochs = curve_epochs(params, sample, train, pool)
                sized = {**params, "train": {**params["train"], "epochs": epochs}}
                parts.append(
                    {"fold": i, **train_and_score(sized, train, test, sample, device, args.tta, args.ensemble)}
                )
            result["curve"][n] = {"parts": parts, "summary": summarize(parts)}
            print(f"{n} training scenes:", {m: mean_std(result["curve"][n]["summary"][m]) for m in SHOWN})
        result["parts"] = result["curve"][max(result["curve"])]["parts"]
    result["summary"] = summarize(result["parts"])
    save(result)


if __name__ == "__main__":
    # a kill runs the clean-ups (the cache's temp folder), as Ctrl-C does; set here, not in main(), which
    # tests call in their own process
    signal.signal(signal.SIGTERM, terminate)
    try:
        main()
    except ForestsegError as e:
        sys.exit(f"error: {e}")
    except Terminated as e:
        message, status = stopped(e)
        print(f"quality.py: {message}", file=sys.stderr)
        sys.exit(status)
