"""bench/quality.py: an unfinished cv run resumes from the folds it saved; a seed ensemble is scored as
the mean of its members' raw outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import dead_temp_prefix, random_predictor

from bench import quality
from forestseg.evaluate import _counts
from forestseg.layout import DataLayout


def part(fold: int) -> dict:
    scores = {"iou": 0.7, "miou": 0.6, "dice": 0.8, "precision": 0.8, "recall": 0.9}
    return {
        "fold": fold,
        "scores": scores,
        "baseline": {"iou": 0.6},
        "scenes": {f"s{fold}": 0.7},
        "seconds": 60.0,
        "trade_off": {"0.5": scores},
    }


def result(name: str = "r", **changes) -> dict:
    base = {"name": name, "mode": "cv", "recipe": "cpu", "set": [], "params": {"train": {"epochs": 3}}}
    base |= {"sample": "s", "code": "c"}
    return {**base, "device": "cpu", "threads": 1, "folds": 5, "tta": False, "ensemble": False, **changes}


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    return tmp_path


def test_a_saved_unfinished_run_gives_back_its_folds(results_dir: Path) -> None:
    parts = [part(0), part(2)]
    quality.save({**result(), "parts": parts, "summary": quality.summarize(parts), "unfinished": [3]}, quiet=True)
    assert quality.unfinished_folds(result()) == {0: parts[0], 2: parts[1]}
    assert "r (unfinished)" in (results_dir / "r.md").read_text()


@pytest.mark.parametrize(
    "saved",
    [
        result(unfinished=[]),  # finished: a rerun starts afresh
        result(params={"train": {"epochs": 4}}, unfinished=[1]),  # other params
        result(threads=2, unfinished=[1]),
        result(recipe="gpu", unfinished=[1]),
        result(folds=3, unfinished=[1]),  # other folds: fold 0 held other scenes
        result(tta=True, unfinished=[1]),  # scored otherwise
        result(ensemble=True, unfinished=[1]),
        result(sample="another", unfinished=[1]),  # folds of another sample hold other scenes
        result(code="older", unfinished=[1]),  # trained by other code
        result(split="tile", unfinished=[1]),  # folds of random tiles, not of scenes
        result(dtype="bf16", unfinished=[1]),  # train.precision auto on another CPU: other numbers
        result(screen="dropout 0.5", unfinished=[1]),  # trained with a bench script's change (bench/dropout.py)
    ],
)
def test_other_runs_are_not_resumed(results_dir: Path, saved: dict) -> None:
    (results_dir / "r.json").write_text(json.dumps({**saved, "parts": [part(0)]}))
    assert quality.unfinished_folds(result()) == {}


def test_the_tile_split_covers_the_cv_scenes_tiles_once_with_every_scene_on_both_sides(monkeypatch) -> None:
    scene = np.repeat([f"s{i}" for i in range(8)], 10)  # 8 scenes of 10 tiles; s0 and s1 set aside
    sample = quality.Sample(DataLayout(Path("unused")), scene, np.zeros(80), np.ones(80))
    monkeypatch.setattr(quality, "holdout_scenes", lambda _: ["s0", "s1"])
    folds = quality.tile_folds(sample, 3)
    rows = np.concatenate(folds)
    assert sorted(rows) == list(range(20, 80))  # every tile outside the set-aside scenes, once
    assert all(len(set(scene[f])) >= 4 for f in folds)  # test tiles of most scenes: what the scene split avoids
    assert [f.tolist() for f in quality.tile_folds(sample, 3)] == [f.tolist() for f in folds]  # seeded


def scenes_of(tiles: list[int]) -> quality.Sample:
    scene = np.repeat([f"s{i:02d}" for i in range(len(tiles))], tiles)
    return quality.Sample(DataLayout(Path("unused")), scene, np.zeros(len(scene)), np.ones(len(scene)))


@pytest.mark.parametrize("k", [3, 5])
def test_scene_folds_hold_every_cv_scene_once_and_no_set_aside_scene(monkeypatch, k: int) -> None:
    tiles = [61, 40, 33, 20, 18, 12, 9, 7, 5, 5, 3, 2, 1, 1]
    sample = scenes_of(tiles)
    monkeypatch.setattr(quality, "holdout_scenes", lambda _: ["s01", "s10"])
    folds = quality.folds(sample, k)
    scenes = [s for f in folds for s in f]
    assert sorted(scenes) == sorted(set(sample.scene) - {"s01", "s10"}) and len(scenes) == len(set(scenes))
    load = [len(quality.rows_of(sample, f)) for f in folds]
    assert max(load) - min(load) <= max(tiles)  # balanced by tile count, as far as whole scenes allow
    assert quality.folds(sample, k) == folds  # seeded: every recipe is scored on the same folds


@pytest.mark.parametrize(
    "fraction, scenes, n_val",
    # rounded half to even on the decimal, as the split rounds (45 x 0.7 is 31.4999... in binary floats)
    [(0.0, 10, 0), (0.1, 10, 1), (0.15, 10, 2), (0.25, 10, 2), (0.5, 10, 5), (0.7, 45, 32), (0.55, 110, 60)],
)
def test_validation_scenes_are_drawn_from_the_training_scenes_only(fraction: float, scenes: int, n_val: int) -> None:
    train = [f"s{i}" for i in range(scenes)]
    split_cfg = quality.SplitConfig(val_fraction=fraction, seed=3)
    fit, val = quality.hold_out_val(train, split_cfg)
    assert len(val) == n_val and not set(fit) & set(val) and sorted(fit + val) == sorted(train)
    assert quality.hold_out_val(train, split_cfg) == (fit, val)


def test_the_learning_curve_trains_as_many_tiles_at_every_size_validation_scenes_left_out() -> None:
    """10 scenes of 10 tiles, a quarter held out for validation: the pool trains on 8 scenes (80 tiles a
    epoch), a 4-scene set on 3 (30), so 6 epochs of the pool are 16 of the set (not 6 x 100 / 40 = 15)."""
    sample = scenes_of([10] * 10)
    pool, train = [f"s{i:02d}" for i in range(10)], ["s00", "s01", "s02", "s03"]
    split = {"by": "scene", "test_fraction": 0.25, "seed": 0}
    params = {"split": {**split, "val_fraction": 0.25}, "train": {"epochs": 6}}
    assert quality.curve_epochs(params, sample, train, pool) == 16
    assert quality.curve_epochs({**params, "split": {**split, "val_fraction": 0.0}}, sample, train, pool) == 15
    # 5 epochs of 100 tiles are 16.7 of a 3-scene set's 30: rounded, 17
    three = {**params, "split": {**split, "val_fraction": 0.0}, "train": {"epochs": 5}}
    assert quality.curve_epochs(three, sample, ["s00", "s01", "s02"], pool) == 17


def test_nothing_saved_nothing_resumed(results_dir: Path) -> None:
    assert quality.unfinished_folds(result()) == {}


def fake_sample(monkeypatch, folder: Path) -> None:
    """A sample on disk whose fold i holds scene s<i>."""
    (folder / "sample").mkdir(exist_ok=True)
    (folder / "sample/meta_data.csv").write_text("image,mask\n")
    monkeypatch.setattr(quality, "SAMPLE", folder / "sample")
    monkeypatch.setattr(quality, "load_sample", lambda: None)
    monkeypatch.setattr(quality, "folds", lambda sample, k: [[f"s{i}"] for i in range(k)])


def test_merge_without_the_sample_says_the_scenes_go_unchecked(results_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(quality, "SAMPLE", results_dir / "absent")
    for name, fold in (("a", 0), ("b", 1)):
        quality.save({**result(name), "parts": [part(fold)], "summary": quality.summarize([part(fold)])}, quiet=True)
    monkeypatch.setattr("sys.argv", ["quality.py", "merge", "--name", "ab", "--parts", "a,b"])
    quality.main()
    assert "the folds' test scenes are not checked against holdout_scenes.txt" in capsys.readouterr().out
    assert [p["fold"] for p in json.loads((results_dir / "ab.json").read_text())["parts"]] == [0, 1]


@pytest.mark.parametrize(
    "other, merged",
    [
        ({}, True),
        ({"threads": 2}, True),  # threads change the minutes, not the folds
        ({"folds": 3}, False),  # fold 1 of 3 holds other scenes than fold 1 of 5
        ({"tta": True}, False),
        ({"ensemble": True}, False),
        ({"params": {"train": {"epochs": 4}}}, False),
        ({"sample": "another"}, False),
        ({"code": "older"}, False),
        ({"split": "tile"}, False),  # fold 1 of random tiles is no fold of scenes
        ({"device": "cuda"}, False),  # another device trains other numbers from the same params
        ({"dtype": "bf16"}, False),  # and so does another precision
        ({"unfinished": [2]}, True),  # part b's fold 2 ran nowhere: the merged result stays unfinished
    ],
)
def test_merge_joins_only_folds_of_one_cv(results_dir: Path, monkeypatch, other: dict, merged: bool) -> None:
    fake_sample(monkeypatch, results_dir)
    a_left = {"unfinished": [1]} if "unfinished" in other else {}  # a killed run's fold 1 ran as part b
    quality.save({**result("a", **a_left), "parts": [part(0)], "summary": quality.summarize([part(0)])}, quiet=True)
    quality.save({**result("b", **other), "parts": [part(1)], "summary": quality.summarize([part(1)])}, quiet=True)
    monkeypatch.setattr("sys.argv", ["quality.py", "merge", "--name", "ab", "--parts", "a,b"])
    if merged:
        quality.main()
        saved = json.loads((results_dir / "ab.json").read_text())
        assert [p["fold"] for p in saved["parts"]] == [0, 1]
        assert saved.get("unfinished") == other.get("unfinished")
        assert ("(unfinished)" in (results_dir / "ab.md").read_text()) == ("unfinished" in other)
    else:
        with pytest.raises(SystemExit, match="same params, --folds and --tta, run on the same device and sample"):
            quality.main()
        assert not (results_dir / "ab.json").exists()


def test_merge_refuses_a_fold_that_tested_other_scenes_than_the_fold_holds(results_dir: Path, monkeypatch) -> None:
    fake_sample(monkeypatch, results_dir)
    quality.save({**result("a"), "parts": [part(0)], "summary": quality.summarize([part(0)])}, quiet=True)
    relabelled = {**part(0), "fold": 3}  # fold 0's scenes under another fold's number
    quality.save({**result("b"), "parts": [relabelled], "summary": quality.summarize([relabelled])}, quiet=True)
    monkeypatch.setattr("sys.argv", ["quality.py", "merge", "--name", "ab", "--parts", "a,b"])
    with pytest.raises(SystemExit, match="fold 3 of the parts tested other scenes than that fold holds now"):
        quality.main()
    assert not (results_dir / "ab.json").exists()


def test_the_decoded_sample_is_cached_per_decoding_code(tmp_path: Path, monkeypatch) -> None:
    """A change to the code that decodes the sample decodes it again (the results record that code's digest)."""
    import pandas as pd

    monkeypatch.setattr(quality, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(quality, "SAMPLE", tmp_path / "sample")
    monkeypatch.setattr(quality, "ROOT", tmp_path / "root")
    monkeypatch.setattr(quality, "DECODE_CODE", ["forestseg/masks.py"])
    monkeypatch.setattr(quality, "sample_digest", lambda folder: "d")
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample/meta_data.csv").write_text("image,mask\n")
    (tmp_path / "root/forestseg").mkdir(parents=True)
    (tmp_path / "root/forestseg/masks.py").write_text("FOREST = 128\n")
    decoded = []

    def build_index(root, images, masks):
        decoded.append(images)
        return pd.DataFrame({"scene": ["1"], "forest_pixels": [1], "pixels": [4]}), {"valid": 1, "skipped": 0}

    monkeypatch.setattr(quality, "build_index", build_index)
    first = quality.load_sample().layout.root
    assert quality.load_sample().layout.root == first and len(decoded) == 1  # decoded once
    (tmp_path / "root/forestseg/masks.py").write_text("FOREST = 250\n")
    assert quality.load_sample().layout.root != first and len(decoded) == 2


@pytest.mark.parametrize("argv", [["table"], ["cv", "demo"]])
def test_main_sets_no_signal_handler(monkeypatch, tmp_path, argv) -> None:
    """Tests and other scripts call main() in their own process: a handler it left there turned a kill
    of pytest into one failed test. Only the script's __main__ sets one: main() sets none on its way to
    writing the table, or to the sample for a recipe (where this test stops it)."""
    import signal

    class Reached(Exception):
        pass

    def load_sample():
        raise Reached

    handlers = []
    monkeypatch.setattr(signal, "signal", lambda *a: handlers.append(a))
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    monkeypatch.setattr(quality, "load_sample", load_sample)
    monkeypatch.setattr("sys.argv", ["quality.py", *argv])
    threads = torch.get_num_threads()
    try:
        if argv == ["table"]:
            quality.main()
            assert (tmp_path / "README.md").is_file()  # the table was written: main ran to its end
        else:
            with pytest.raises(Reached):
                quality.main()
    finally:
        torch.set_num_threads(threads)  # main sets the recipe's
    assert handlers == []


def test_the_script_ends_on_sigterm_with_one_line_and_143(tmp_path: Path) -> None:
    """Run as a script, a kill runs the clean-ups and says so, with the shell's status for SIGTERM."""
    import signal
    import subprocess
    import sys

    from conftest import REPO

    # the script as it is, its main() a kill from outside as soon as it starts
    code = (
        "from pathlib import Path; path = Path('bench/quality.py').resolve(); source = path.read_text().replace("
        "'def main() -> None:\\n', 'def main() -> None:\\n    signal.raise_signal(signal.SIGTERM)\\n', 1);"
        "exec(compile(source, str(path), 'exec'), {'__name__': '__main__', '__file__': str(path)})"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (128 + signal.SIGTERM, "quality.py: terminated (SIGTERM)\n")


def test_a_killed_decode_s_folder_is_removed_by_the_next_decode(tmp_path: Path, monkeypatch) -> None:
    """A SIGKILL runs no `except`: its ~270 MB half-decoded folder, named as no clean-up knew, stayed."""
    import pandas as pd

    monkeypatch.setattr(quality, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(quality, "SAMPLE", tmp_path / "sample")
    monkeypatch.setattr(quality, "sample_digest", lambda folder: "d")
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample/meta_data.csv").write_text("image,mask\n")
    killed = tmp_path / "cache" / f"{dead_temp_prefix('d-x')}abc"
    (killed / "data").mkdir(parents=True)
    index = pd.DataFrame({"scene": ["1"], "forest_pixels": [1], "pixels": [4]})
    monkeypatch.setattr(quality, "build_index", lambda root, images, masks: (index, {"valid": 1, "skipped": 0}))
    folder = quality.load_sample().layout.root
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]


def test_paired_deltas_pair_only_folds_that_hold_the_same_scenes() -> None:
    ref = {**result("ref"), "parts": [part(0), part(1)]}
    same = {**result("same"), "parts": [{**part(0), "scores": {**part(0)["scores"], "iou": 0.75}}]}
    assert quality.paired(same, ref, "iou") == "+0.050 ± 0.000"
    five = {**result("five"), "parts": [part(0), part(1), part(2)]}  # the reference scored 2 of its folds
    assert quality.paired(five, ref, "iou") == "+0.000 ± 0.000 (2 of 3 folds)"
    other = {**result("other"), "parts": [{**part(0), "scenes": {"s0": 0.7, "s9": 0.6}}]}  # fold 0 of another k
    assert quality.paired(other, ref, "iou") == "-"


def test_tile_split_folds_pair_only_with_tile_folds_of_the_same_k() -> None:
    """Tile folds hold nearly every scene, so fold 1 of 4 and of 5 have the same scenes and other tiles."""
    tiles = [{**part(i), "scenes": {"s0": 0.7, "s1": 0.7}} for i in range(2)]
    ref = {**result("ref", split="tile"), "parts": tiles}
    assert quality.paired({**result("same", split="tile"), "parts": tiles}, ref, "iou") == "+0.000 ± 0.000"
    assert quality.paired({**result("k4", split="tile", folds=4), "parts": tiles}, ref, "iou") == "-"
    assert quality.paired({**result("scenes"), "parts": tiles}, ref, "iou") == "-"


def test_scene_folds_saved_before_folds_was_recorded_still_pair() -> None:
    """Results saved before "folds" was recorded lack the key: their scene folds pair by their scenes."""
    ref = {**result("ref"), "parts": [part(0)]}
    old = {k: v for k, v in result("old").items() if k != "folds"}
    better = {**old, "parts": [{**part(0), "scores": {**part(0)["scores"], "iou": 0.75}}]}
    assert quality.paired(better, ref, "iou") == "+0.050 ± 0.000"
    assert quality.paired(ref, better, "iou") == "-0.050 ± 0.000"


def test_the_table_marks_a_tile_split_result_as_leaky() -> None:
    """A --name replaces the _tilesplit suffix, so the row itself says which split made it."""
    rows = [
        {**result(n, **x), "parts": [part(0)], "summary": quality.summarize([part(0)])}
        for n, x in (("scene", {}), ("mine", {"split": "tile"}))
    ]
    lines = quality.table(rows).splitlines()
    assert "| scene | cv | 1 |" in lines[2] and "| mine | cv (tile split: leaky) | 1 |" in lines[3]
    # a tile fold's "scenes" are a few tiles of each: no per-scene spread beside the scene folds' one
    assert "| 0.700 / 0.700 |" in lines[2] and "| - (tile folds) |" in lines[3]


def test_train_init_from_is_refused_by_the_benches(tmp_path: Path, monkeypatch) -> None:
    """The benches train each fold from scratch and never passed the model file on: it was recorded in the
    result's params and ignored, and a model that saw the fold's test scenes would leak if it were not."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "init").mkdir()
    (tmp_path / "init/m.pt").write_bytes(b"x")
    with pytest.raises(SystemExit, match=r"train.init_from 'init/m.pt': the benches train every fold from scratch"):
        quality.recipe_params("cpu", ["train.init_from=init/m.pt"])


def test_fold_model_scripts_refuse_a_recipe_with_validation_scenes() -> None:
    """bench/adabn.py, errors.py, postprocess.py and resampling.py train each fold's model on every scene
    but the fold's: with validation scenes the recipe's `cv` would hold them out, so these scripts would
    score another model than the one `cv` scores (and stop mid-run with `threshold: val`)."""
    with pytest.raises(SystemExit, match=r"split.val_fraction 0.2 \(recipe cpu\): this script's fold models"):
        quality.fold_model_sections("cpu", ["split.val_fraction=0.2"])
    model, _, train, grid = quality.fold_model_sections("cpu", [])
    assert (model.arch, train.adapt_bn, grid.loss) == ("unet_half", 0.25, ("bce",))


def test_a_kept_model_is_named_by_what_trained_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--keep reuses a fold model only for the same params, sample, code, device type and precision:
    an edited recipe (another -S here), another sample or a bf16 model gets another file name."""
    sample = quality.Sample(DataLayout(tmp_path), np.array(["a"]), np.array([1]), np.array([4]), "d1")
    cpu = torch.device("cpu")
    name = quality.kept_name("fold 0", 0, "cpu", [], sample, cpu)
    assert name.startswith("fold0_s0_cpu_") and name.endswith(".pt")
    assert name == quality.kept_name("fold 0", 0, "cpu", [], sample, cpu)
    assert name != quality.kept_name("fold 0", 0, "cpu", ["optimizer.lr=0.01"], sample, cpu)
    assert name != quality.kept_name("fold 0", 0, "cpu", [], dataclasses.replace(sample, digest="d2"), cpu)
    # `auto` on a CPU with fast bf16 (the Zen 5's) trains in bf16: another model than this CPU's fp32
    here = quality.use_bf16(quality.fold_model_sections("cpu", [])[2].precision, cpu)
    monkeypatch.setattr(quality, "use_bf16", lambda precision, device: not here)
    assert name != quality.kept_name("fold 0", 0, "cpu", [], sample, cpu)
    # and a model trained on CUDA, in the same precision, is another model too
    monkeypatch.setattr(quality, "use_bf16", lambda precision, device: here)
    assert name == quality.kept_name("fold 0", 0, "cpu", [], sample, cpu)
    assert name != quality.kept_name("fold 0", 0, "cpu", [], sample, torch.device("cuda"))


def test_a_kept_model_is_never_left_half_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--keep reuses the file it finds: a copy stopped halfway left a truncated model there to load."""

    def train_run(*args: object) -> None:
        out = args[6]
        (out / "model.pt").write_bytes(b"a whole model file")

    def copyfile(src: Path, dst: Path, **kwargs: object) -> None:
        Path(dst).write_bytes(b"a whole")
        raise KeyboardInterrupt

    monkeypatch.setattr(quality, "load_tiles", lambda *args: None)
    monkeypatch.setattr(quality, "rows_of", lambda *args: None)
    monkeypatch.setattr(quality, "train_run", train_run)
    monkeypatch.setattr(quality.shutil, "copyfile", copyfile)
    sample = SimpleNamespace(layout=None, scene=None)
    keep = tmp_path / "kept/fold0.pt"
    train = SimpleNamespace(threads=torch.get_num_threads(), precision="fp32")  # left as it is
    with pytest.raises(KeyboardInterrupt):
        quality.kept_predictor(sample, None, (None, None, train), [], [], torch.device("cpu"), keep)
    assert list(keep.parent.iterdir()) == []


def test_the_sample_digest_follows_its_files_not_only_meta_data(tmp_path: Path) -> None:
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "1_x.png").write_bytes(b"12345")
    (tmp_path / "meta_data.csv").write_text("image,mask\n1_x.png,1_x.png\n")
    before = quality.sample_digest(tmp_path)
    (tmp_path / "masks/1_x.png").write_bytes(b"inverted")  # the same meta_data.csv, another mask
    assert quality.sample_digest(tmp_path) != before


@pytest.mark.parametrize("seeds", [(0, 1), (0, 1, 2)])  # of three members, the mean is no median
def test_an_ensemble_is_scored_on_the_mean_of_its_members_outputs(tmp_path: Path, seeds: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    layout = DataLayout(tmp_path)
    layout.packed.mkdir()
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (5, 32, 32), dtype=np.uint8)
    np.save(layout.images, images)
    np.save(layout.masks, masks)
    scene = np.array(["a", "a", "b", "b", "b"])
    sample = quality.Sample(layout, scene, masks.sum(axis=(1, 2)), np.full(5, 32 * 32))
    members = [random_predictor(seed, depth=1, centre_on=images) for seed in seeds]
    mean = np.mean([p.windows_logits(images) for p in members], axis=0)
    expected = {s: sum(_counts(mean[i] > 0, masks[i] > 0) for i in np.flatnonzero(scene == s)) for s in "ab"}
    trade_off: dict = {}
    alone: list = []
    got = quality.score_rows(members, sample, np.arange(5), trade_off, alone)
    assert {s: c.tolist() for s, c in got.items()} == {s: c.tolist() for s, c in expected.items()}
    assert trade_off[0.5].tolist() == sum(expected.values()).tolist()  # p 0.5 is the cut at logit 0
    # Each member alone, counted from the same forward pass, as if it were scored by itself.
    assert len(alone) == len(seeds)
    for member, counts in zip(members, alone):
        by_itself = quality.score_rows([member], sample, np.arange(5))
        assert {s: c.tolist() for s, c in counts.items()} == {s: c.tolist() for s, c in by_itself.items()}
    assert (
        alone[0]["a"].tolist() != got["a"].tolist() or alone[0]["b"].tolist() != got["b"].tolist()
    )  # the mean differs


def test_a_predictor_with_adapt_bn_scores_each_scene_adapted_to_its_own_tiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    layout = DataLayout(tmp_path)
    layout.packed.mkdir()
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    images[2:] //= 3  # scene b darker: something to adapt to
    masks = rng.integers(0, 2, (5, 32, 32), dtype=np.uint8)
    np.save(layout.images, images)
    np.save(layout.masks, masks)
    scene = np.array(["a", "a", "b", "b", "b"])
    sample = quality.Sample(layout, scene, masks.sum(axis=(1, 2)), np.full(5, 32 * 32))
    plain = random_predictor(0, depth=1, centre_on=images)
    mixed = dataclasses.replace(plain, adapt_bn=0.5)
    expected = {}
    for s in "ab":
        rows = np.flatnonzero(scene == s)
        logits = plain.adapted(images[rows], 0.5).windows_logits(images[rows])  # one window per 32-px tile
        expected[s] = sum(_counts(logits[i] > 0, masks[r] > 0) for i, r in enumerate(rows)).tolist()
    calls: dict[int, np.ndarray] = {}
    got = quality.score_rows([mixed], sample, np.arange(5), on_tile=lambda r, logits: calls.setdefault(r, logits > 0))
    assert {s: c.tolist() for s, c in got.items()} == expected
    assert sorted(calls) == [0, 1, 2, 3, 4]  # every row's logits, once, as counted (bench/errors.py)
    for s in "ab":
        assert sum(_counts(calls[r], masks[r] > 0) for r in np.flatnonzero(scene == s)).tolist() == expected[s]
    alone = quality.score_rows([mixed], sample, np.arange(2, 5))  # rows of one scene: adapted all the same
    assert {s: c.tolist() for s, c in alone.items()} == {"b": expected["b"]}
    assert {s: c.tolist() for s, c in quality.score_rows([plain], sample, np.arange(5)).items()} != expected


def test_scene_folds_balance_tile_counts_not_scene_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """One 10-tile scene and ten 1-tile ones in 2 folds: largest scene first, each to the lighter fold,
    gives 10 and 10 tiles; counting scenes, or filling smallest first, gives 15 and 5. Each fold's scenes
    sorted, as merge compares them."""
    sample = scenes_of([10] + [1] * 10)
    monkeypatch.setattr(quality, "holdout_scenes", lambda _: [])
    folds = quality.folds(sample, 2)
    assert sorted(len(quality.rows_of(sample, f)) for f in folds) == [10, 10]
    assert all(f == sorted(f) for f in folds)


@pytest.mark.parametrize("mode", ["cv", "curve", "final"])
def test_no_mode_trains_on_its_test_scenes_or_scores_the_set_aside_ones_in_cv(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """What each mode trains and scores, its training stubbed: cv tests every other scene once, each by a
    model that never saw it; curve trains on a subset of the other folds; final trains on every cv
    scene and tests the set-aside ones only."""
    sample = scenes_of([5, 4, 3, 3, 2, 2, 1, 1])
    held = ["s01", "s05"]
    cv_scenes = sorted(set(sample.scene) - set(held))
    monkeypatch.setattr(quality, "load_sample", lambda: sample)
    monkeypatch.setattr(quality, "holdout_scenes", lambda _: held)
    monkeypatch.setattr(quality, "keep_freed_memory", lambda: None)
    monkeypatch.setattr(quality.torch, "set_num_threads", lambda n: None)
    calls: list[tuple[list[str], list[str]]] = []

    def train_and_score(params: dict, train: list[str], test: list[str], *args: object) -> dict:
        calls.append((list(train), list(test)))
        scores = {**part(0)["scores"], "iou": len(train) / 10}  # more scenes, more IoU: which size is which shows
        return {**part(0), "scores": scores, "scenes": {s: 0.5 for s in test}, "trade_off": {}}

    monkeypatch.setattr(quality, "train_and_score", train_and_score)
    # curve: 6 training scenes are more than the other folds hold, so each trains on all of them
    monkeypatch.setattr("sys.argv", ["quality.py", mode, "cpu", "--folds", "3", "--scenes", "2,6", "--name", "t"])
    quality.main()
    folds = quality.folds(sample, 3)
    for train, test in calls:
        assert not set(train) & set(test) and not set(held) & set(train), (train, test)
        assert set(train) <= set(cv_scenes)
    if mode == "final":
        assert [(sorted(train), test) for train, test in calls] == [(cv_scenes, held)]
        return
    assert [test for _, test in calls] == folds * (2 if mode == "curve" else 1)
    if mode == "cv":  # every cv scene tested once, trained on in the other folds
        assert sorted(s for _, test in calls for s in test) == cv_scenes
        assert all(sorted(train + test) == cv_scenes for train, test in calls)
    else:
        assert all(sorted(train + test) == cv_scenes for train, test in calls[3:])
        # the result's summary (its table row) is the largest size's, every scene of the other folds
        saved = json.loads((results_dir / "t.json").read_text())
        assert (
            saved["summary"]["iou"]
            == [len(train) / 10 for train, _ in calls[3:]]
            != saved["curve"]["2"]["summary"]["iou"]
        )


def test_a_rerun_with_only_the_folds_left_keeps_the_saved_ones(results_dir: Path, monkeypatch) -> None:
    """A killed `cv --name X` saved folds 0-1; `--name X --only 2` wrote fold 2 alone over them."""
    sample = scenes_of([3, 2, 2, 1, 1, 1])
    monkeypatch.setattr(quality, "load_sample", lambda: sample)
    monkeypatch.setattr(quality, "holdout_scenes", lambda _: [])
    monkeypatch.setattr(quality, "keep_freed_memory", lambda: None)
    monkeypatch.setattr(quality.torch, "set_num_threads", lambda n: None)
    trained: list[list[str]] = []

    def train_and_score(params: dict, train: list[str], test: list[str], *args: object) -> dict:
        trained.append(list(test))
        scored = {k: v for k, v in part(0).items() if k != "fold"}  # main numbers the fold
        return {**scored, "scenes": {s: 0.5 for s in test}, "trade_off": {}}

    monkeypatch.setattr(quality, "train_and_score", train_and_score)
    monkeypatch.setattr(quality, "code_digest", lambda: "c")
    argv = ["quality.py", "cv", "cpu", "--folds", "3", "--name", "x"]
    monkeypatch.setattr("sys.argv", argv)
    quality.main()
    whole = json.loads((results_dir / "x.json").read_text())
    folds = quality.folds(sample, 3)
    for kept, left in (([0, 1], None), ([0], [1])):  # killed in fold 2; in fold 1 (then --only 2 leaves fold 1)
        killed = {**whole, "parts": whole["parts"][: len(kept)], "unfinished": [2] if len(kept) == 2 else [1, 2]}
        (results_dir / "x.json").write_text(json.dumps(killed))
        trained.clear()
        monkeypatch.setattr("sys.argv", [*argv, "--only", "2"])
        quality.main()
        saved = json.loads((results_dir / "x.json").read_text())
        assert trained == [folds[2]]  # fold 2 alone trained
        assert [p["fold"] for p in saved["parts"]] == sorted(kept + [2]) and saved.get("unfinished") == left
    trained.clear()  # the plain command then trains only the fold still missing
    monkeypatch.setattr("sys.argv", argv)
    quality.main()
    saved = json.loads((results_dir / "x.json").read_text())
    assert trained == [folds[1]] and [p["fold"] for p in saved["parts"]] == [0, 1, 2] and "unfinished" not in saved


@pytest.mark.parametrize("adapt_bn", [0.0, 0.25])
def test_train_and_score_reports_each_scenes_iou_and_the_all_forest_baseline_of_its_test_tiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapt_bn: float
) -> None:
    """Training stubbed (a fixed model): the fold's scores are of the counts summed over the test scenes,
    each scene's IoU of its own counts, and the baseline calls every test pixel forest. A model adapting
    batch-norm: its paired 'without' scores are the same model's unadapted ones."""
    rng = np.random.default_rng(2)
    layout = DataLayout(tmp_path)
    layout.packed.mkdir()
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((6, 32, 32), np.uint8)
    for i, rows in enumerate((4, 8, 16, 20, 2, 30)):  # another forest share in every tile
        masks[i, :rows] = 1
    np.save(layout.images, images)
    np.save(layout.masks, masks)
    scene = np.array(["a", "a", "b", "b", "c", "c"])
    sample = quality.Sample(layout, scene, masks.sum(axis=(1, 2)), np.full(6, 32 * 32))
    model = random_predictor(0, depth=1, centre_on=images)
    logits = model.windows_logits(images)
    counts = {s: sum(_counts(logits[i] > 0, masks[i] > 0) for i in np.flatnonzero(scene == s)) for s in "bc"}
    history = [{"epoch": 1, "train_loss": 0.5, "test_iou": 0.1, "seconds": 1.0}]
    monkeypatch.setattr(quality, "train_run", lambda *a, **k: SimpleNamespace(history=history))
    monkeypatch.setattr(quality.Predictor, "load", lambda *a, **k: dataclasses.replace(model, adapt_bn=adapt_bn))
    clocks = []
    monkeypatch.setattr(quality, "cpu_clock", lambda: clocks.append(len(clocks)) or clocks[-1])
    monkeypatch.setattr(quality, "others_busy", lambda since, now: 0.123 if (since, now) == (0, 1) else None)
    params = quality.recipe_params("cpu", [])
    got = quality.train_and_score(params, ["a"], ["b", "c"], sample, torch.device("cpu"), tta=False)
    if adapt_bn:
        assert got["without_adapt_bn"] == quality.scores(counts["b"] + counts["c"]) != got["scores"]
        return
    assert "without_adapt_bn" not in got
    assert got["others_busy"] == 0.12  # over the training: the clocks before it and after it
    assert got["scenes"] == {s: quality.scores(c)["iou"] for s, c in counts.items()}
    assert got["scores"] == quality.scores(counts["b"] + counts["c"])
    forest = (16 + 20 + 2 + 30) * 32
    assert got["baseline"]["iou"] == pytest.approx(forest / (4 * 32 * 32))
    assert got["baseline"]["precision"] == pytest.approx(forest / (4 * 32 * 32)) and got["baseline"]["recall"] == 1.0
    assert (got["train_scenes"], got["train_tiles"], got["test_tiles"]) == (1, 2, 4)


def test_the_summary_spread_counts_each_scene_once_over_all_folds() -> None:
    """Ten scenes of IoU 0.1-0.8 (0.6 and 0.7 twice) in folds of 3 and 7: median 0.55 (mean 0.49), 10th
    percentile 0.19 of the ten (not of the folds' means), the worst scene by name; minutes from seconds;
    the baseline its own."""
    parts = [
        {**part(0), "scenes": {f"s{i}": i / 10 for i in (3, 1, 2)}, "seconds": 90.0, "baseline": {"iou": 0.3}},
        {
            **part(1),
            "scenes": {f"s{i}": min(i, 16 - i) / 10 for i in range(4, 11)},
            "seconds": 30.0,
            "baseline": {"iou": 0.4},
        },
    ]
    s = quality.summarize(parts)
    assert s["scene_iou_median"] == pytest.approx(0.55) and s["scene_iou_p10"] == pytest.approx(0.19)
    assert s["worst_scene"] == ("s1", 0.1)
    assert s["train_minutes"] == [1.5, 0.5] and s["baseline_iou"] == [0.3, 0.4]


def test_mean_std_is_the_mean_and_the_population_std() -> None:
    """Over folds: 0.1, 0.2, 0.6 are 0.300 +- 0.216 (numpy's std, ddof 0), not the median 0.2."""
    assert quality.mean_std([0.1, 0.2, 0.6]) == "0.300 ± 0.216"
    assert quality.mean_std([0.7]) == "0.700"


def scored(fold: int, iou: float, miou: float, dice: float, precision: float, recall: float) -> dict:
    return {**part(fold), "scores": {"iou": iou, "miou": miou, "dice": dice, "precision": precision, "recall": recall}}


def test_the_table_row_puts_each_number_in_its_column() -> None:
    """Every column a different value, so a swapped or wrongly averaged column shows (the minutes 1.5, 0.5
    and 0.4: their mean 0.8, not the median 0.5); the paired change
    against a reference: the mean of the per-fold deltas (+0.1, 0, +0.5) and their std."""
    parts = [
        {**scored(0, 0.6, 0.5, 0.9, 0.85, 0.3), "scenes": {"s0": 0.2}, "seconds": 90.0, "baseline": {"iou": 0.3}},
        {**scored(1, 0.8, 0.5, 0.7, 0.95, 0.5), "scenes": {"s1": 0.6}, "seconds": 30.0, "baseline": {"iou": 0.4}},
        {**scored(2, 0.7, 0.5, 0.8, 0.9, 0.4), "scenes": {"s2": 0.3}, "seconds": 24.0, "baseline": {"iou": 0.35}},
    ]
    r = {**result("t"), "parts": parts, "summary": quality.summarize(parts)}
    ref_parts = [{**p, "scores": {**p["scores"], "iou": p["scores"]["iou"] - d}} for p, d in zip(parts, (0.1, 0, 0.5))]
    ref = {**result("ref"), "parts": ref_parts}
    row = quality.table([r], ref).splitlines()[2]
    assert row == (
        "| t | cv | 3 | 0.700 ± 0.082 | 0.500 ± 0.000 | 0.800 ± 0.082 | 0.900 ± 0.041 | 0.400 ± 0.082 "
        "| 0.300 / 0.220 | 0.350 ± 0.041 | 0.8 | +0.200 ± 0.216 | +0.000 ± 0.000 |"
    )


def test_the_trade_off_table_puts_each_metric_under_its_header() -> None:
    """The trade-off row in its header's order: forest IoU, mIoU, precision, recall."""
    cut = {"iou": 0.1, "miou": 0.2, "precision": 0.3, "recall": 0.4}
    parts = [{**part(0), "trade_off": {"0.5": cut}}]
    r = {**result("t"), "parts": parts, "summary": quality.summarize(parts)}
    assert quality.trade_off_table(r).splitlines()[2] == "| 0.5 | 0.100 | 0.200 | 0.300 | 0.400 |"


def test_save_reports_tta_gain_as_with_minus_without(results_dir: Path) -> None:
    """TTA's paired change is the scores with it minus those without: +0.100 where TTA raised IoU 0.6 to 0.7."""
    parts = [{**part(0), "without_tta": {**part(0)["scores"], "iou": 0.6}}]
    quality.save({**result("t"), "parts": parts, "summary": quality.summarize(parts)}, quiet=True)
    assert "iou +0.1000 ± 0.0000, miou +0.0000" in (results_dir / "t.md").read_text()
    # over folds: gains 0, 0.01 and 0.05 are their mean and population std, +0.0200 ± 0.0216
    parts = [{**part(f), "without_tta": {**part(f)["scores"], "iou": 0.7 - g}} for f, g in enumerate((0, 0.01, 0.05))]
    quality.save({**result("t3"), "parts": parts, "summary": quality.summarize(parts)}, quiet=True)
    assert "iou +0.0200 ± 0.0216, miou +0.0000" in (results_dir / "t3.md").read_text()


def test_merge_summarises_every_fold_of_every_part_and_refuses_a_fold_twice(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a (folds 0 and 2) and b (fold 1) merged: the three folds, and the summary of all three; two parts
    with the same fold would count it twice in the mean, and are refused."""
    fake_sample(monkeypatch, results_dir)
    a = [scored(0, 0.6, 0.5, 0.9, 0.85, 0.3), scored(2, 0.7, 0.5, 0.8, 0.9, 0.4)]
    b = [scored(1, 0.8, 0.5, 0.7, 0.95, 0.5)]
    for name, parts in (("a", a), ("b", b), ("c", [part(0)])):
        quality.save({**result(name), "parts": parts, "summary": quality.summarize(parts)}, quiet=True)
    monkeypatch.setattr("sys.argv", ["quality.py", "merge", "--name", "ab", "--parts", "a,b"])
    quality.main()
    saved = json.loads((results_dir / "ab.json").read_text())
    assert [p["fold"] for p in saved["parts"]] == [0, 2, 1] and saved["summary"]["iou"] == [0.6, 0.7, 0.8]
    monkeypatch.setattr("sys.argv", ["quality.py", "merge", "--name", "ac", "--parts", "a,c"])
    with pytest.raises(SystemExit, match="merge: the parts share a fold"):
        quality.main()


def test_the_table_command_lists_every_saved_result(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        quality.save({**result(name), "parts": [part(0)], "summary": quality.summarize([part(0)])}, quiet=True)
    monkeypatch.setattr("sys.argv", ["quality.py", "table"])
    quality.main()
    rows = (results_dir / "README.md").read_text().splitlines()[4:]
    assert [row.split(" | ")[0] for row in rows] == ["| a", "| b"]


def test_the_minutes_say_where_other_processes_shared_a_folds_training() -> None:
    """The most busy fold counts (a tenth of a core on); results saved before it was measured show plain minutes."""
    parts = [{**part(0), "others_busy": 0.05}, {**part(1), "others_busy": 0.84}, {**part(2), "others_busy": None}]
    r = {**result("t"), "parts": parts, "summary": quality.summarize(parts)}
    assert r["summary"]["others_busy"] == 0.84
    assert quality.table([r]).splitlines()[2].endswith("| 1.0 (shared: 0.8 cores busy) |")
    tenth = [{**part(0), "others_busy": 0.1}]  # a tenth of a core (saved to two decimals): shared
    assert (
        quality.table([{**result("t"), "parts": tenth, "summary": quality.summarize(tenth)}])
        .splitlines()[2]
        .endswith("| 1.0 (shared: 0.1 cores busy) |")
    )
    quiet = [{**part(0), "others_busy": 0.09}, part(1)]  # part(1): an older result without the field
    r = {**result("t"), "parts": quiet, "summary": quality.summarize(quiet)}
    assert r["summary"]["others_busy"] == 0.09 and quality.table([r]).splitlines()[2].endswith("| 1.0 |")


def test_the_folds_of_a_sample_are_pinned_by_their_seed(monkeypatch) -> None:
    """Which scene tests in which fold decides every cross-validated number: a change to the draw, the
    tie order or the fold seed would move scenes between folds under the same recipe unseen."""
    monkeypatch.setattr(quality, "holdout_scenes", lambda _: [])
    sample = scenes_of([6, 3, 3, 3, 3, 2, 2])
    assert quality.folds(sample, 2) == [["s00", "s03", "s06"], ["s01", "s02", "s04", "s05"]]
    assert [f.tolist() for f in quality.tile_folds(scenes_of([2, 2, 2]), 2)] == [[2, 3, 5], [0, 1, 4]]
