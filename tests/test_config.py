"""forestseg.config: params.yaml sections become validated, frozen dataclasses; bad values name their key."""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from forestseg.config import (
    SECTIONS,
    ConfigError,
    ForestsegError,
    GridConfig,
    OptimizerConfig,
    SplitConfig,
    TrainConfig,
    load_sections,
    override_value,
    unused_by_grid,
)
from forestseg.losses import LOSSES


@pytest.fixture(scope="module")
def base() -> dict:
    with open(REPO / "params.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def changed(base: dict, path: str, value=None, *, delete: bool = False, rename: str | None = None) -> dict:
    """A deep copy of `base` with the dotted key `path` set to value, deleted or renamed."""
    raw = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    if rename is not None:
        node[rename] = node.pop(last)
    elif delete:
        del node[last]
    else:
        node[last] = value
    return raw


def test_repo_params_load_every_section(base):
    cfgs = load_sections(base, *SECTIONS)
    assert [type(c) for c in cfgs] == list(SECTIONS.values())


def test_sections_come_back_in_the_order_asked(base):
    train, split = load_sections(base, "train", "split")
    assert isinstance(train, TrainConfig) and isinstance(split, SplitConfig)


def test_sections_are_frozen(base):
    (opt,) = load_sections(base, "optimizer")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.lr = 1.0


def test_grid_lists_become_tuples(base):
    (grid,) = load_sections(base, "grid")
    assert grid == GridConfig(
        loss=tuple(base["grid"]["loss"]), optimizer=tuple(base["grid"]["optimizer"]), seed=tuple(base["grid"]["seed"])
    )


@pytest.mark.parametrize("text", ["1e-3", "0.001", "1.0e-3"])
def test_lr_given_as_string_is_parsed(base, text):
    """PyYAML reads `lr: 1e-3` as the string '1e-3'; it must still mean 0.001."""
    (opt,) = load_sections(changed(base, "optimizer.lr", text), "optimizer")
    assert opt.lr == pytest.approx(0.001) and isinstance(opt.lr, float)


def test_lr_written_1e_3_in_yaml_loads_as_float():
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    assert "\n  lr: 0.001" in text, "params.yaml no longer has lr: 0.001"
    raw = yaml.safe_load(text.replace("\n  lr: 0.001", "\n  lr: 1e-3", 1))
    assert raw["optimizer"]["lr"] == "1e-3"  # the PyYAML quirk the coercion exists for
    (opt,) = load_sections(raw, "optimizer")
    assert opt.lr == pytest.approx(0.001)


def test_lr_override_is_used_for_its_run_only(base):
    raw = changed(base, "optimizer.lr_overrides", {"mse-adam": "1e-2"})
    (opt,) = load_sections(raw, "optimizer")
    assert opt.lr_for("mse", "adam") == pytest.approx(0.01)
    assert opt.lr_for("bce", "adam") == opt.lr == base["optimizer"]["lr"]


def test_null_lr_overrides_means_none(base):
    (opt,) = load_sections(changed(base, "optimizer.lr_overrides", None), "optimizer")
    assert opt.lr_overrides == {}


NAN, INF = float("nan"), float("inf")

# (id, dotted key, how to change it, regex the ConfigError must match)
BAD = [
    ("unknown-loss", "grid.loss", ["mse", "hinge"], r"grid\.loss: unknown value 'hinge'"),
    ("unknown-optimizer", "grid.optimizer", ["sgd", "rmsprop"], r"grid\.optimizer: unknown value 'rmsprop'"),
    ("unknown-split-by", "split.by", "random", r"split\.by: unknown value 'random'; valid choices: scene, tile"),
    ("lr-not-a-number", "optimizer.lr", "abc", r"optimizer\.lr: must be a number"),
    ("lr-zero", "optimizer.lr", 0, r"optimizer\.lr: must be > 0"),
    ("lr-negative", "optimizer.lr", -1e-3, r"optimizer\.lr: must be > 0"),
    ("lr-bool", "optimizer.lr", True, r"optimizer\.lr: must be a number"),
    ("lr-nan", "optimizer.lr", NAN, r"optimizer\.lr: must be finite"),
    ("lr-nan-string", "optimizer.lr", "nan", r"optimizer\.lr: must be finite"),
    ("width-spaces", "model.width", " 16 ", r"model\.width: must be an integer, got ' 16 '"),
    ("width-underscore", "model.width", "1_6", r"model\.width: must be an integer, got '1_6'"),
    ("width-other-digits", "model.width", "\u0661\u0666", r"model\.width: must be an integer"),
    ("lr-underscore", "optimizer.lr", "1_0", r"optimizer\.lr: must be a number \(e\.g\. 1e-3\), got '1_0'"),
    ("pixel-size-absurd", "data.pixel_size_m", 1e9, r"data\.pixel_size_m: must be from 0\.001 to 10000 m"),
    ("gamma-inf", "optimizer.gamma", INF, r"optimizer\.gamma: must be finite"),
    ("lr-minus-inf", "optimizer.lr", -INF, r"optimizer\.lr: must be finite"),
    ("batch-size-negative", "train.batch_size", -4, r"train\.batch_size: must be > 0"),
    ("batch-size-zero", "train.batch_size", 0, r"train\.batch_size: must be > 0"),
    ("width-zero", "model.width", 0, r"model\.width: must be in 1\.\.256, got 0"),
    ("width-huge", "model.width", 100000000, r"model\.width: must be in 1\.\.256, got 100000000"),
    ("gamma-above-1", "optimizer.gamma", 5, r"optimizer\.gamma: must be in \(0, 1\]"),
    ("diverge-factor-1", "train.diverge_factor", 1, r"train\.diverge_factor: must be > 1"),
    ("diverge-factor-half", "train.diverge_factor", 0.5, r"train\.diverge_factor: must be > 1"),
    ("depth-too-deep", "model.depth", 7, r"model\.depth: must be in 1\.\.6"),
    ("mixstyle-prob", "model.mixstyle", 1.5, r"model\.mixstyle: must be in \[0, 1\]"),
    ("seeds-empty", "grid.seed", [], r"grid\.seed: must list at least one value"),
    ("seeds-duplicate", "grid.seed", [0, 1, 0], r"grid\.seed: has duplicates"),
    ("seed-negative", "grid.seed", [-1], r"grid\.seed: seeds must be integers >= 0"),
    ("seed-past-numpy", "grid.seed", [2**32], r"grid\.seed: seeds must be integers >= 0 and < 2\*\*32, got 4294967296"),
    ("seed-float", "grid.seed", [0, 1.0], r"grid\.seed\[1\]: must be a whole number written as one .* got 1\.0"),
    ("seed-string", "grid.seed", ["02"], r"grid\.seed\[0\]: must be a whole number written as one .* got '02'"),
    ("seed-bool", "grid.seed", [True], r"grid\.seed\[0\]: must be a whole number"),
    ("grid-not-a-list", "grid.loss", "mse", r"grid\.loss: must be a list"),
    ("bool-for-int", "train.epochs", True, r"train\.epochs: must be an integer"),
    ("float-for-int", "model.depth", 2.5, r"model\.depth: must be an integer"),
    ("inf-for-int", "train.epochs", INF, r"train\.epochs: must be an integer"),
    ("huge-int-for-float", "optimizer.lr", 10**400, r"optimizer\.lr: must be finite, got an integer of 1329 bits"),
    ("batch-too-large", "train.test_batch_size", 2**63, r"train\.test_batch_size: must be in 1\.\.65536 tiles"),
    (
        "inexact-float-for-int",
        "split.seed",
        1e17,
        r"split\.seed: must be an integer written without a decimal point .* got 1e\+17",
    ),
    ("float-at-2-53-for-int", "split.seed", "9007199254740993.0", r"split\.seed: must be an integer written without"),
    ("string-for-bool", "train.augment", "true", r"train\.augment: must be true or false"),
    ("empty-string", "data.source", "", r"data\.source: must be a non-empty string"),
    (
        "home-tilde",
        "data.source",
        "~/forest",
        r"data\.source: '~/forest': ~ is not expanded here; write the full path, e\.g\. '/",
    ),
    (  # found from the workspace, not from a queued or --temp run's copy of the project (a review)
        "relative-out-of-the-project",
        "data.source",
        "../zip/Forest Segmented",
        r"data\.source: '\.\./zip/Forest Segmented' leads out of the project by a relative path, .* write the full "
        r"path, e\.g\. '/",
    ),
    ("source-an-output", "data.source", "data/packed", r"data\.source: 'data/packed' is the pipeline's output data/pa"),
    (
        "source-in-an-output",
        "data.source",
        "./metrics/x",
        r"data\.source: './metrics/x' lies in the pipeline's output me",
    ),
    (
        "source-holds-outputs",
        "data.source",
        "data/",
        r"data\.source: 'data/' holds the pipeline's outputs \(the index stage would read what",
    ),
    ("tile-size-not-x16", "synth.tile_size", 40, r"synth\.tile_size: must be a multiple of 16"),
    ("tile-size-too-small", "synth.tile_size", 0, r"synth\.tile_size: must be a multiple of 16"),
    ("grid-too-large", "synth.grid", 11, r"synth\.grid: must be in 1\.\.10"),
    ("synth-scenes-too-many", "synth.scenes", 999000, r"synth\.scenes: must be in 1\.\.10000"),
    ("synth-scene-too-large", "synth.tile_size", 8192, r"synth\.tile_size: x synth\.grid must be <= 4096 px"),
    ("test-fraction-above-1", "split.test_fraction", 1.5, r"split\.test_fraction: must be in \(0, 1\)"),
    ("test-fraction-zero", "split.test_fraction", 0, r"split\.test_fraction: must be in \(0, 1\)"),
    ("val-leaves-no-train", "split.val_fraction", 0.75, r"split\.val_fraction: must be in \[0, 1 - test_fraction\)"),
    ("momentum-one", "optimizer.momentum", 1.0, r"optimizer\.momentum: must be in \[0, 1\)"),
    ("bad-device", "train.device", "gpu", r"train\.device: unknown value 'gpu'"),
    ("bad-device-index", "train.device", "cuda:x", r"train\.device: unknown value 'cuda:x'"),
    ("override-bad-key", "optimizer.lr_overrides", {"foo-adam": 0.01}, r"optimizer\.lr_overrides\.foo-adam: keys are"),
    ("override-bad-optimizer", "optimizer.lr_overrides", {"mse-lion": 0.01}, r"optimizer\.lr_overrides\.mse-lion"),
    ("override-zero", "optimizer.lr_overrides", {"mse-adam": 0}, r"optimizer\.lr_overrides\.mse-adam: must be > 0"),
    ("override-nan", "optimizer.lr_overrides", {"mse-adam": NAN}, r"optimizer\.lr_overrides\.mse-adam: must be finite"),
    ("override-not-mapping", "optimizer.lr_overrides", [0.01], r"optimizer\.lr_overrides: must be a mapping"),
    ("section-not-mapping", "grid", None, r"params\.yaml: grid: must be a mapping"),
    (
        "unknown-mask-convention",
        "data.masks",
        "0-255",
        r"data\.masks: unknown value '0-255'; valid choices: 0/255, resampled, 0/1, classes, colors",
    ),
    ("forest-with-binary-masks", "data.forest", [255], r"data\.forest: must be \[\] with data\.masks '0/255'"),
    ("forest-not-a-list", "data.forest", 255, r"data\.forest: must be a list"),
    ("ema-one", "train.ema", 1.0, r"train\.ema: must be in \[0, 1\)"),
    ("scale-negative", "train.scale", -0.1, r"train\.scale: must be in \[0, 2\)"),
    ("blur-prob", "train.blur", 1.5, r"train\.blur: must be a probability in \[0, 1\], got 1\.5"),
    ("cutmix-prob", "train.cutmix", -0.1, r"train\.cutmix: must be a probability in \[0, 1\], got -0\.1"),
    (
        "sampling",
        "train.sampling",
        "balanced",
        r"train\.sampling: unknown value 'balanced'; valid choices: tile, scene, scene_batch",
    ),
    ("threshold", "train.threshold", "best", r"train\.threshold: unknown value 'best'; valid choices: loss, val"),
    ("init-from-outside-init", "train.init_from", "models/bce-adam-0/model.pt", r"train\.init_from: 'models/bce"),
    ("init-from-absolute", "train.init_from", "/tmp/init/a.pt", r"train\.init_from: '/tmp/init/a\.pt': give none or"),
    ("init-from-up-and-out", "train.init_from", "init/../a.pt", r"train\.init_from: 'init/\.\./a\.pt': give none"),
    ("init-from-the-folder", "train.init_from", "init", r"train\.init_from: 'init': give none or the path of a model"),
    ("init-from-empty", "train.init_from", "", r"train\.init_from: must be a non-empty string"),
    # torch.set_num_threads raised a ValueError traceback from 2**31 up, in the train stage after index and split
    ("threads-past-a-c-int", "train.threads", 2**31, r"train\.threads: must be in 1\.\.1024 .*, got 2147483648$"),
    ("threads-huge", "train.threads", 100000, r"train\.threads: must be in 1\.\.1024"),
    ("jitter-one", "train.color_jitter", 1.0, r"train\.color_jitter: must be in \[0, 1\), got 1\.0"),  # black tiles
    ("examples-17", "report.examples", 17, r"report\.examples: must be in 1\.\.16, got 17"),
    # str.isdigit() took a non-ASCII digit, which torch.device refuses with a traceback
    ("device-index-not-ascii", "train.device", "cuda:\u0663", r"train\.device: unknown value 'cuda:\u0663'"),
]


@pytest.mark.parametrize(
    "masks, forest, match",
    [
        ("classes", [], r"data\.forest: list the values that are forest, e\.g\. \[2\]"),
        ("colors", [], r"data\.forest: list the colors that are forest, e\.g\. \[\[0, 255, 0\]\] \(DeepGlobe\)"),
        ("classes", [256], r"data\.forest: 256 is not a value in 0\.\.255"),
        ("classes", [[0, 255, 0]], r"data\.forest: \[0, 255, 0\] is not a value in 0\.\.255"),
        ("colors", [[0, 255]], r"data\.forest: \[0, 255\] is not an RGB colour \[r, g, b\]"),
        ("colors", [[0, 255, 0, 255]], r"data\.forest: \[0, 255, 0, 255\] is not an RGB colour"),  # RGBA: no
        ("colors", [3], r"data\.forest: 3 is not an RGB colour"),
        ("colors", [[0, 256, 0]], r"data\.forest: \[0, 256, 0\] is not an RGB colour"),  # 256 packs to (1, 0, 0)
        ("colors", [[0, -1, 0]], r"data\.forest: \[0, -1, 0\] is not an RGB colour"),
        ("colors", [["a", 0, 0]], r"data\.forest\[0\]\[0\]: must be an integer"),
    ],
)
def test_bad_mask_params_name_the_key(base, masks, forest, match):
    raw = changed(changed(base, "data.masks", masks), "data.forest", forest)
    with pytest.raises(ConfigError, match=match):
        load_sections(raw, "data")


@pytest.mark.parametrize(
    "edits, sections, match",
    [
        (
            {"optimizer.warmup_epochs": 2, "train.epochs": 2},
            ("optimizer", "train"),
            r"^params\.yaml: optimizer\.warmup_epochs 2: must be below train\.epochs 2, else",
        ),
        (
            {"train.threshold": "val", "split.val_fraction": 0.0},
            ("split", "train"),
            r"^params\.yaml: train\.threshold: val chooses the cut on validation scenes, and this split has none",
        ),
        # values the run took and did nothing with: no batch-norm to adapt, no other tile in a batch of one
        (
            {"train.adapt_bn": 0.25, "model.batch_norm": False},
            ("model", "train"),
            r"^params\.yaml: train\.adapt_bn: 0\.25 moves batch-norm statistics, and unet_half has no batch-norm "
            r"layers \(model\.batch_norm: false\): it would do nothing; set it to 0 or model\.batch_norm: true$",
        ),
        (
            {"train.adapt_bn": 0.25, "model.arch": "study_unet"},
            ("model", "train"),
            r"^params\.yaml: train\.adapt_bn: .* study_unet has no batch-norm layers \(its layers are fixed\).*set it to 0$",
        ),
        (
            {"model.mixstyle": 0.5, "train.batch_size": 1},
            ("model", "train"),
            r"^params\.yaml: model\.mixstyle: mixes .* train\.batch_size 1 has none: it would do nothing",
        ),
    ],
)
def test_rules_across_sections_are_checked_where_both_sections_load(base, edits, sections, match):
    """So recipes/run.py, which loads every section, refuses them before DVC runs index and split."""
    raw = base
    for key, value in edits.items():
        raw = changed(raw, key, value)
    with pytest.raises(ConfigError, match=match):
        load_sections(raw, *sections)
    for section in sections:  # each section alone is valid
        load_sections(raw, section)


@pytest.mark.parametrize(
    "masks, forest, expected",
    [
        ("0/1", [], ()),
        ("classes", [2, 3], (2, 3)),
        ("colors", [[0, 255, 0]], ((0, 255, 0),)),
    ],
)
def test_mask_params_load(base, masks, forest, expected):
    (data,) = load_sections(changed(changed(base, "data.masks", masks), "data.forest", forest), "data")
    assert (data.masks, data.forest) == (masks, expected)


@pytest.mark.parametrize("key, value, match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_value_is_rejected_naming_its_key(base, key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_sections(changed(base, key, value), *SECTIONS)


@pytest.mark.parametrize(
    "key, value, says",
    [
        (
            "model.width",
            32,
            "model.width: study_unet's layers are fixed, so it takes no width; leave it at 16 (got 32)",
        ),
        ("model.depth", 5, "model.depth: study_unet's layers are fixed, so it takes no depth; leave it at 3 (got 5)"),
        ("model.batch_norm", False, "model.batch_norm: .* takes no batch_norm; leave it at true (got false)"),
        ("model.width", 16, None),  # the default: nothing to ignore
    ],
)
def test_a_width_depth_or_batch_norm_asked_of_fixed_layers_is_refused(base, key: str, value, says: str | None) -> None:
    """study_unet ignores them: `-S model.width=32` would train the same network under another name."""
    params = changed(changed(base, "model.arch", "study_unet"), key, value)
    if says:
        with pytest.raises(ConfigError, match=rf"^params\.yaml: {says.replace('(', '[(]').replace(')', '[)]')}$"):
            load_sections(params, "model")
    else:
        assert load_sections(params, "model")[0].arch == "study_unet"
    assert load_sections(changed(base, key, value), "model")[0].arch == "unet_half"  # the unet takes them


@pytest.mark.parametrize("mixstyle, refused", [(0.5, True), (0.0, False)])
def test_a_mixstyle_asked_of_fixed_layers_is_refused(base, mixstyle: float, refused: bool) -> None:
    """study_unet has no MixStyle layer: a probability for it would silently do nothing."""
    params = changed(changed(base, "model.arch", "study_unet"), "model.mixstyle", mixstyle)
    if refused:
        with pytest.raises(ConfigError, match=r"model\.mixstyle: study_unet has no MixStyle layer .*; set it to 0"):
            load_sections(params, "model")
    else:
        assert load_sections(params, "model")[0].arch == "study_unet"


@pytest.mark.parametrize(
    "key, how, match",
    [
        (
            "optimizer",
            {"rename": "optimiser"},
            r"params\.yaml: optimiser: unknown section; valid sections: data, synth",
        ),
        (
            "optimizer.lr",
            {"rename": "lrr"},
            r"optimizer\.lrr: unknown key; valid keys of 'optimizer': lr, lr_overrides",
        ),
        ("train.epochs", {"delete": True}, r"train\.epochs: missing key"),
        ("grid", {"delete": True}, r"params\.yaml: grid: missing section"),
    ],
    ids=["typo-section", "typo-key", "missing-key", "missing-section"],
)
def test_typo_or_missing_key_is_rejected(base, key, how, match):
    with pytest.raises(ConfigError, match=match):
        load_sections(changed(base, key, **how), *SECTIONS)


def test_unknown_loss_message_lists_every_valid_loss(base):
    with pytest.raises(ConfigError) as err:
        load_sections(changed(base, "grid.loss", ["hinge"]), "grid")
    assert str(err.value).endswith("valid choices: " + ", ".join(LOSSES))


def test_unknown_section_is_caught_even_when_not_asked_for(base):
    """A stage that reads only `split` still refuses a typo elsewhere in params.yaml."""
    with pytest.raises(ConfigError, match="optimiser"):
        load_sections(changed(base, "optimizer", rename="optimiser"), "split")


def test_params_that_are_not_a_mapping_are_rejected():
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_sections(None, "split")


# --- a stage, end to end -------------------------------------------------------------------------


def run_split_stage(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "split.py"), "a", "b"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("  by: scene", "  bye: scene", "split.bye"),
        ("  test_fraction: 0.25", "  test_fraction: 1.5", "split.test_fraction"),
        ("optimizer:", "optimiser:", "optimiser"),
    ],
    ids=["typo-key", "bad-value", "typo-section"],
)
def test_stage_with_bad_params_prints_one_line_and_exits_2(tmp_path, old, new, key):
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(old)}", text, re.M), f"params.yaml no longer has {old!r}"
    (tmp_path / "params.yaml").write_text(re.sub(rf"^{re.escape(old)}", new, text, count=1, flags=re.M))

    out = run_split_stage(tmp_path)

    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: params.yaml:") and key in lines[0]


def test_stage_with_invalid_yaml_prints_one_line(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    with open(tmp_path / "params.yaml", "a", encoding="utf-8") as f:
        f.write("extra: [unclosed\n")

    out = run_split_stage(tmp_path)

    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize(
    "old, new, key, value",
    [
        ("  width: 16\n", "  width: 010\n", "width", 10),  # YAML 1.1 (PyYAML): 8; DVC: 10
        ("  lr: 0.001\n", "  lr: 1e-3\n", "lr", 0.001),  # YAML 1.1: the string '1e-3'
    ],
)
def test_stages_read_params_yaml_as_dvc_does(tmp_path, monkeypatch, old, new, key, value):
    """dvc.lock records params.yaml as DVC (YAML 1.2) reads it; the stages must run on the same values."""
    text = (REPO / "params.yaml").read_text()
    assert old in text
    (tmp_path / "params.yaml").write_text(text.replace(old, new, 1))
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(REPO / "stages"))
    import common

    monkeypatch.setattr(common, "_READ", {})  # what this process read before is another stage's
    model, optimizer = common.params("model", "optimizer")
    assert getattr(model if key == "width" else optimizer, key) == value


def test_an_unclosed_quote_is_placed_where_it_opens_not_only_at_the_end_of_the_file() -> None:
    from forestseg.io import load_yaml

    text = (REPO / "params.yaml").read_text()
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith("lr:"))
    broken = text.replace("lr: ", 'lr: "', 1)
    with pytest.raises(ForestsegError) as err:
        load_yaml(broken, "params.yaml")
    end = len(text.splitlines()) + 1
    assert str(err.value) == (
        f"params.yaml: not valid YAML at line {end}, column 1: found unexpected end of stream "
        f"(while scanning a quoted scalar at line {line}, column 7)"
    )


@pytest.mark.parametrize("version, bom, refused", [("1.1", "", True), ("1.1", "\ufeff", True), ("1.2", "", False)])
def test_a_yaml_directive_dvc_ignores_is_refused(version: str, bom: str, refused: bool) -> None:
    """`%YAML 1.1` made ruamel read `010` as 8 where DVC (which ignores the directive) records 10; also
    behind a byte-order mark, which the file's UTF-8 reading keeps."""
    from forestseg.io import load_yaml

    text = f"{bom}%YAML {version}\n---\n" + (REPO / "params.yaml").read_text().replace(
        "  width: 16\n", "  width: 010\n"
    )
    if refused:
        with pytest.raises(ForestsegError) as err:
            load_yaml(text, "params.yaml")
        assert str(err.value).startswith("params.yaml: line 1: a %YAML 1.1 directive would have the stages read")
    else:
        assert load_yaml(text, "params.yaml")["model"]["width"] == 10


def test_a_quoted_line_that_starts_with_yaml_is_no_directive() -> None:
    from forestseg.io import load_yaml

    assert load_yaml('a: "x\n%YAML 1.1 y"\n', "params.yaml") == {"a": "x %YAML 1.1 y"}


def test_a_duplicate_key_in_params_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text() + "split:\n  seed: 1\n")
    out = run_split_stage(tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = len((REPO / "params.yaml").read_text().splitlines()) + 1  # the second `split:`
    assert out.stderr.startswith(
        f'error: params.yaml: not valid YAML at line {line}, column 1: found duplicate key "split"'
    )
    assert out.stderr.count("\n") == 1


def test_params_yaml_spells_out_the_dataclass_defaults(base):
    """One source of defaults: the dataclasses; params.yaml (the demo recipe) is exactly them."""
    assert load_sections(base, *SECTIONS) == tuple(cls() for cls in SECTIONS.values())


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "recipes").glob("*.yaml")))
def test_every_recipe_is_valid_params(name):
    """A recipe names only real sections and keys, with good values (recipes/run.py merges them)."""
    import sys

    sys.path.insert(0, str(REPO))
    from recipes import run

    params = run.merged(name)
    assert load_sections(params, *SECTIONS)


@pytest.mark.parametrize("first", sorted(p.stem for p in (REPO / "recipes").glob("*.yaml")))
def test_a_recipe_after_another_keeps_none_of_its_values(first):
    """`dvc exp run` leaves an experiment's values in params.yaml: each recipe must still be itself after it."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    for then in run.names():
        assert run.merged(then, base=run.merged(first)) == run.merged(then), (first, then)


def test_recipes_one_after_another_leave_params_yaml_readable_as_dvc_writes_it(tmp_path):
    """DVC's own round-trip writer on the committed params.yaml (comments kept): a mapping set by -S
    after a comment on its key's line came out as `{}` at column 0, unreadable YAML (study, then cpu)."""
    from dvc.utils.hydra import apply_overrides

    from forestseg.io import load_yaml

    sys.path.insert(0, str(REPO))
    from recipes import run

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    for name in ["study", *run.names(), "study", "cpu"]:
        workspace = load_yaml(params.read_text(), "params.yaml")
        held = {f"{section}.{key}" for section, values in workspace.items() for key in values or {}}
        args = run.set_args(run.load(name), held)
        apply_overrides(str(params), args[1::2])
        written = load_yaml(params.read_text(), "params.yaml")  # raises where DVC broke it
        assert written == run.merged(name, base=workspace), name


@pytest.mark.parametrize(
    "value, override",
    [
        (None, "null"),  # Hydra reads a bare None as the string 'None'
        ("None", "None"),  # a string in both grammars
        ("null", "'null'"),
        ("true", "'true'"),
        ("TrUe", "'TrUe'"),  # Hydra's booleans ignore case
        ("inf", "'inf'"),  # a float to Hydra
        ("010", "'010'"),
        ("data/raw/kaggle", "data/raw/kaggle"),
        ("Forest Segmented", "'Forest Segmented'"),
        (True, "true"),
        (1e-4, "0.0001"),
        ({"bce-adam": None}, "{bce-adam: null}"),
        ("data/forêt", "'data/forêt'"),  # Hydra's bare strings are ASCII: DVC could not read it bare
        (".5", "'.5'"),  # a float to Hydra
        ("nan", "'nan'"),
        (".5e3", "'.5e3'"),
    ],
)
def test_recipe_values_reach_dvc_as_the_same_yaml_values(value, override):
    sys.path.insert(0, str(REPO))
    from recipes import run

    assert override_value(value) == override
    assert yaml.safe_load(override) == value  # Hydra's grammar agrees with YAML on these
    assert run.dvc_value(f"data.x={override}", override) == value  # and DVC's parser reads it back so


@pytest.mark.parametrize("text", ["{bce-adam: 1e-3, bce-adam: 1e-2}", "{a: {b: 1, b: 2}}"])
def test_a_key_given_twice_in_a_mapping_override_is_refused(text):
    """Hydra keeps the last (DVC would write {bce-adam: 0.01}); params.yaml itself refuses a duplicate key."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    with pytest.raises(ForestsegError, match=r"found duplicate key"):
        run.dvc_value(f"optimizer.lr_overrides={text}", text)


@pytest.mark.parametrize(
    "value, override",
    [
        ("C:\\data\\", "'C:\\data\\\\'"),  # a trailing backslash would escape the closing quote
        ("a\\", "'a\\\\'"),
        ("it's", "'it\\'s'"),
        ("a\\'b", "'a\\\\\\'b'"),  # the backslash before an escaped quote is doubled too
        ("a\\b", "'a\\b'"),  # elsewhere a backslash is itself
    ],
)
def test_backslashes_and_quotes_reach_dvc_as_they_are(value, override):
    sys.path.insert(0, str(REPO))
    from recipes import run

    assert override_value(value) == override
    assert run.dvc_value(f"data.x={override}", override) == value


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "model: {width: 8\n",
            r"^recipes/bad.yaml: not valid YAML at line 2, column 1: expected ',' or '}', but got '<stream end>' "
            r"\(while parsing a flow mapping at line 1, column 8\)$",
        ),
        ("- model\n", r"^recipes/bad.yaml: not a mapping of params sections"),
        ("model: 8\n", r"^recipes/bad.yaml: model: not a params section with keys"),
        ("model: {widht: 8}\n", r"^recipes/bad.yaml: model.widht: unknown key; valid keys of 'model': arch, width"),
        ("model: {width: -3}\n", r"^recipes/bad.yaml: model.width: must be in 1\.\.256, got -3$"),
        (
            b"# caf\xe9\nmodel: {width: 8}\n",
            r"^recipes/bad.yaml: not UTF-8 text \(byte 0xe9 on line 1\); save it as UTF-8$",
        ),
    ],
)
def test_a_bad_recipe_file_is_one_line(tmp_path, monkeypatch, text, message):
    sys.path.insert(0, str(REPO))
    from recipes import run

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/bad.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setattr(run, "ROOT", tmp_path)
    with pytest.raises(ForestsegError, match=message):
        run.load("bad")


def test_a_broken_recipe_file_loading_another_recipe_says_why_it_is_read(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO))
    from recipes import run

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/bad.yaml").write_text("model: {width: -3}\n")
    (tmp_path / "recipes/good.yaml").write_text("model: {width: 8}\n")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    with pytest.raises(
        ForestsegError,
        match=r"^recipes/bad.yaml: model.width: must be in 1\.\.256, got -3 \(read for recipe 'good' too: a recipe "
        r"resets to their defaults the keys every other recipe sets; fix recipes/bad.yaml or move it out of recipes/\)$",
    ):
        run.load("good")


@pytest.mark.parametrize("kind", ["dangling link", "folder"])
def test_a_recipe_file_that_cannot_be_read_is_one_line_for_every_recipe(tmp_path, monkeypatch, kind):
    """Each recipe reads every other: a dangling recipes/zz.yaml was a FileNotFoundError traceback for all."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/good.yaml").write_text("model: {width: 8}\n")
    if kind == "folder":
        (tmp_path / "recipes/zz.yaml").mkdir()
    else:
        (tmp_path / "recipes/zz.yaml").symlink_to("nowhere.yaml")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    reason = "Is a directory" if kind == "folder" else "No such file or directory"
    with pytest.raises(
        ForestsegError,
        match=rf"^recipes/zz.yaml: cannot be read \({reason}\); fix it or move it out of recipes/ \(read for recipe 'good'",
    ):
        run.load("good")


@pytest.mark.parametrize(
    "item, message",
    [
        (
            "model.width=[8",
            r"^-S model.width=\[8: DVC cannot read it \(no viable alternative at input '\[8'\)$",
        ),
        ("model.width", r"^-S model.width: give KEY=VALUE"),
        ("model=3", r"^-S model=3: give SECTION.KEY=VALUE, one key at a time"),
        ("model.width=8,16", r"^-S model.width=8,16: recipes/run.py runs one experiment; .*`dvc exp run --queue -S"),
        *(
            (
                f"{sign}optimizer.lr_overrides.bce-adam=1e-3",
                r": recipes/run.py sets a params key whole .* give all of it",
            )
            for sign in ("", "+")
        ),
        *(
            (
                f"{sign}train.epochs=3",
                rf"^-S \{sign}train.epochs=3: recipes/run.py sets keys that params.yaml has; drop",
            )
            for sign in ("+", "~")
        ),
    ],
)
def test_a_bad_s_item_is_one_line(item, message):
    sys.path.insert(0, str(REPO))
    from recipes import run

    with pytest.raises(ForestsegError, match=message):
        run.with_sets("cpu", [item])


@pytest.mark.parametrize("value", ["none", "init/source.pt", "init/region/source.pt"])
def test_init_from_is_none_or_a_path_inside_init_whether_or_not_its_file_is_here(base, tmp_path, monkeypatch, value):
    """Paths are taken from the project root, where DVC runs the stages. The file is not looked at here:
    a fresh clone has only its .dvc file until `dvc repro --pull` reaches the train stage, and the check
    stage and cluster/members.py, which validate every section, run before that."""
    monkeypatch.chdir(tmp_path)
    (train,) = load_sections(changed(base, "train.init_from", value), "train")
    assert train.init_from == value
    assert TrainConfig().init_from == "none"  # the default: a random init


@pytest.mark.parametrize("tracked", ["no", "file", "folder", "grandparent", "a-folder-named"])
def test_a_missing_init_from_file_is_told_how_to_get_it(tmp_path, monkeypatch, tracked):
    """Where the file is read (the train stage, recipes/run.py): tracked by DVC but not here (a fresh
    clone), by its own .dvc or its folder's (as the train stage takes either): `dvc pull`, not `dvc add`
    of a file that is not there."""
    from forestseg.checkpoint import read_init

    monkeypatch.chdir(tmp_path)
    (tmp_path / "init").mkdir()
    if tracked == "a-folder-named":  # read_model's own line, as for any file that is no model file
        (tmp_path / "init/models/source.pt").mkdir(parents=True)
        with pytest.raises(
            ForestsegError, match=r"^params\.yaml: train\.init_from: init/models/source\.pt: is a folder; copy"
        ):
            read_init("init/models/source.pt", {})
        return
    if tracked == "grandparent":  # a folder two levels above the file, inside init/
        Path("init/models/a/b").mkdir(parents=True)
        Path("init/models/a.dvc").write_text("outs:\n- path: a\n")
        with pytest.raises(
            ForestsegError, match=r"init/models/a\.dvc tracks it: `dvc pull init/models/a/b/source\.pt`"
        ):
            read_init("init/models/a/b/source.pt", {})
        return
    dvc = {"no": None, "file": "init/models/source.pt.dvc", "folder": "init/models.dvc"}[tracked]
    if dvc:
        Path(dvc).parent.mkdir(parents=True, exist_ok=True)
        Path(dvc).write_text("outs:\n- path: x\n")
    with pytest.raises(ForestsegError) as e:
        read_init("init/models/source.pt", {})
    advice = f"{dvc} tracks it: `dvc pull init/models/source.pt`" if dvc else "`dvc add init/models/source.pt`"
    assert str(e.value).startswith("params.yaml: train.init_from: init/models/source.pt: no such file; "), e.value
    assert advice in str(e.value)


def test_recipes_run_checks_init_from_in_the_project_root_from_any_folder(repo):
    """And checks the file against the recipe's model before DVC indexes anything (the train stage did)."""
    from forestseg.checkpoint import write_model
    from forestseg.config import asdict
    from forestseg.model import build_model

    sys.path.insert(0, str(REPO))
    from recipes import run as recipes_run

    demo = recipes_run.merged("demo", base=yaml.safe_load((repo / "params.yaml").read_text()))
    (model,) = load_sections(demo, "model")  # the demo recipe's model over the repo's tiny params
    meta = {"run": "bce-adam-0", "loss": "bce", "threshold": 0.0, "model": asdict(model), "tile_size": 64}
    meta["pixel_size_m"] = 0.5
    norm = {"mean": [1.0] * 3, "std": [1.0] * 3}
    write_model(repo / "init/source.pt", build_model(model).state_dict(), {**meta, "normalizer": norm})

    def run(*sets: str, recipe: str = "demo") -> subprocess.CompletedProcess:
        args = [a for s in sets for a in ("-S", s)]
        return subprocess.run(
            [sys.executable, "run.py", recipe, "--print", *args], cwd=repo / "recipes", capture_output=True, text=True
        )

    out = run("train.init_from=init/source.pt")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("dvc exp run -n demo-") and "train.init_from=init/source.pt" in out.stdout
    out = run("train.init_from=init/source.pt", f"model.width={model.width * 2}")
    assert out.returncode == 2 and out.stderr.startswith(
        f"error: recipes/demo.yaml with the -S values: train.init_from: init/source.pt holds a model with width "
        f"{model.width}; this run's params say model.width {model.width * 2}"
    ), out.stderr
    out = run("train.init_from=init/source.pt", "data.pixel_size_m=0.3")  # refused here, not after index and split
    assert out.returncode == 2 and out.stderr.startswith(
        "error: recipes/demo.yaml with the -S values: train.init_from: init/source.pt learned from 0.5 m pixels, "
        "and data.pixel_size_m says the tiles' are 0.3 m"
    ), out.stderr
    (repo / "init/notes.pt").write_text("not a model")
    out = run("train.init_from=init/notes.pt")
    assert out.returncode == 2 and "train.init_from: init/notes.pt: cannot be read as a forestseg model" in out.stderr
    # params.yaml starts the gpu recipe's model (another) from it: the -S that undoes that is what counts
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["init_from"] = "init/source.pt"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(recipe="gpu")
    assert out.returncode == 2 and out.stderr.startswith("error: recipes/gpu.yaml over params.yaml: train.init_from:")
    out = run("train.init_from=none", recipe="gpu")
    assert out.returncode == 0 and "train.init_from=none" in out.stdout, out.stderr


def test_recipes_run_refuses_a_data_source_that_is_not_there_and_passes_force(monkeypatch, capsys):
    """DVC would fail the index stage of a queued experiment naming only its temp copy of the path;
    its advice on a name taken, `dvc exp run -f`, is --force here."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    monkeypatch.chdir(REPO)  # run.main moves to the project root; restored after the test
    with pytest.raises(ForestsegError, match=r"^data.source data/raw/nope: no such folder \(a path from the project"):
        run.main(["demo", "-S", "data.source=data/raw/nope", "--print"])
    assert run.main(["demo", "--force", "--print"]) == 0
    assert capsys.readouterr().out.startswith("dvc exp run -n demo -f -S ")


def test_an_experiment_name_taken_on_this_commit_is_found_as_dvc_keeps_it(tmp_path) -> None:
    sys.path.insert(0, str(REPO))
    from recipes import run

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    assert not run.taken("demo", tmp_path)  # no commit yet
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "base"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([*git, "update-ref", f"refs/exps/{sha[:2]}/{sha[2:]}/demo-8a2969", sha], check=True)
    assert run.taken("demo-8a2969", tmp_path) and not run.taken("demo", tmp_path)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "next"], check=True)
    assert not run.taken("demo-8a2969", tmp_path)  # another commit's: DVC runs it


@pytest.mark.parametrize("force", [False, True])
def test_recipes_run_says_a_taken_name_in_its_own_flags(monkeypatch, force: bool) -> None:
    """DVC's refusal says `dvc exp run -f`; here it is -f, or -n for another name, before DVC starts."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(run, "taken", lambda name: name == "demo")
    called = []
    monkeypatch.setattr(run.subprocess, "call", lambda cmd, cwd: called.append(cmd) or 0)
    if force:
        assert run.main(["demo", "-f"]) == 0 and called[0][:6] == ["dvc", "exp", "run", "-n", "demo", "-f"]
        return
    with pytest.raises(ForestsegError) as refused:
        run.main(["demo"])
    assert str(refused.value) == (
        "experiment demo exists on this commit (this recipe ran with these values before): "
        "add -f to replace it, or -n NAME to keep both"
    )
    assert called == []


@pytest.mark.parametrize("key", ["blur", "cutmix"])
def test_a_probability_of_one_is_every_tile(key: str) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"][key] = 1.0
    (train,) = load_sections(params, "train")
    assert getattr(train, key) == 1.0


def test_cutmix_in_batches_of_one_is_refused(base) -> None:
    """Each tile takes its box from the batch's next tile: in a batch of one, itself (a silent no-op)."""
    raw = changed(changed(base, "train.cutmix", 0.5), "train.batch_size", 1)
    with pytest.raises(ConfigError, match=r"^params\.yaml: train\.cutmix: pastes .*train\.batch_size 1 has none"):
        load_sections(raw, "train")
    assert load_sections(changed(raw, "train.cutmix", 0.0), "train")[0].batch_size == 1


@pytest.mark.parametrize("section", [None, "train"])
def test_unknown_keys_of_mixed_types_are_one_line(base, section) -> None:
    """YAML keys can be numbers (`1:`) beside strings; sorting them for the message raised a TypeError."""
    raw = copy.deepcopy(base)
    node = raw if section is None else raw[section]
    node[1], node["foo"] = 2, 3
    with pytest.raises(ConfigError, match=r"^params\.yaml: (train\.)?1: unknown (key|section)"):
        load_sections(raw, *SECTIONS)


@pytest.mark.parametrize(
    "item, message",
    [
        # YAML 1.2 reads 0x10 as 16 and [010] as [10]; DVC's -S (Hydra's grammar) writes the strings '0x10' and
        # ['010'] into params.yaml, which the train stage then refused after run.py had passed them
        ("train.epochs=0x10", r"^recipes/cpu\.yaml with the -S values: train\.epochs: must be an integer, got '0x10'$"),
        ("grid.seed=[010]", r"grid\.seed\[0\]: must be a whole number written as one .* got '010'$"),
        ("model.arch=unet #x", r"^-S model\.arch=unet #x: DVC cannot read it"),
        ("train.epochs=choice(3)", r"^-S train\.epochs=choice\(3\): recipes/run\.py runs one experiment"),
    ],
)
def test_s_values_are_read_as_dvc_reads_them(item, message) -> None:
    sys.path.insert(0, str(REPO))
    from recipes import run

    with pytest.raises(ForestsegError, match=message):
        run.with_sets("cpu", [item])


def test_an_s_value_dvc_takes_is_taken() -> None:
    """Hydra's booleans ignore case: DVC writes `-S train.augment=TrUe` as true (YAML 1.2: the string);
    `@x` is a string to Hydra, an error to YAML."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    assert run.with_sets("cpu", ["train.augment=TrUe"])["train"]["augment"] is True
    assert run.with_sets("cpu", ["data.source=@x"])["data"]["source"] == "@x"


def test_a_recipe_name_is_not_a_path() -> None:
    """'../params' read params.yaml itself as a recipe."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    with pytest.raises(ForestsegError, match=r"^recipe '\.\./params': not a recipe name; recipes: cpu, "):
        run.load("../params")
    with pytest.raises(ForestsegError, match=r"^recipe 'cpu.yaml': give the recipe's name, cpu; recipes: cpu, "):
        run.load("cpu.yaml")


def test_a_recipe_key_that_params_yaml_lacks_is_added_not_overridden() -> None:
    """DVC refuses `-S train.adapt_bn=...` where params.yaml has no such key: it must be `+train.adapt_bn=...`."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    held = {"train.epochs"}
    assert run.set_args({"train": {"epochs": 3, "adapt_bn": 0.25}}, held) == [
        "-S",
        "train.epochs=3",
        "-S",
        "+train.adapt_bn=0.25",
    ]
    assert run.set_args({"train": {"adapt_bn": 0.5}}, held) == ["-S", "train.adapt_bn=0.5"]  # added once


@pytest.mark.parametrize(
    "opt, optimizers, said",
    [
        (
            {"momentum": 0.9},
            ("adam",),
            ["optimizer.momentum 0.9 has no effect: no optimizer of grid.optimizer uses it"],
        ),
        ({"momentum": 0.9}, ("adam", "sgd"), []),
        ({"momentum": 0.0}, ("adamw",), []),
        (
            {"lr_overrides": {"bce-sgd": 0.1, "mse-adam": 0.01}},
            ("adam",),
            ["optimizer.lr_overrides.bce-sgd has no effect: the grid trains no bce-sgd run"],
        ),
        (
            {"schedule": "cosine", "gamma": 0.5, "step_epochs": 5},
            ("adam",),
            [
                "optimizer.gamma 0.5 has no effect: optimizer.schedule cosine does not use it",
                "optimizer.step_epochs 5 has no effect: optimizer.schedule cosine does not use it",
            ],
        ),
        ({"schedule": "cosine"}, ("adam",), []),  # the step schedule's defaults are there either way
        ({"schedule": "step", "gamma": 0.5, "step_epochs": 5}, ("adam",), []),
    ],
)
def test_optimizer_settings_no_run_of_the_grid_reads_are_said(opt: dict, optimizers: tuple, said: list) -> None:
    """Said, not refused: a recipe's momentum or override stays valid when a user narrows its grid."""
    grid = GridConfig(loss=("mse", "bce"), optimizer=optimizers, seed=(0,))
    assert unused_by_grid(OptimizerConfig(**opt), grid) == said


@pytest.mark.parametrize(
    "params_text, message",
    [
        ("", r"^error: params\.yaml: must be a mapping of sections$"),
        ("RENAME", r"^error: params\.yaml: optimiser: unknown section; valid sections: .*$"),
    ],
)
def test_run_py_names_a_broken_params_yaml_in_one_line(params_text: str, message: str, tmp_path) -> None:
    """Before the recipe goes over params.yaml: an empty file or a misspelt section, not a traceback."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "recipes", repo / "recipes")
    shutil.copytree(REPO / "forestseg", repo / "forestseg")
    text = (REPO / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("\noptimizer:", "\noptimiser:") if params_text else "")
    run = subprocess.run(
        [sys.executable, "recipes/run.py", "demo", "--print"], cwd=repo, capture_output=True, text=True
    )
    assert run.returncode == 2 and re.match(message, run.stderr.strip()), run.stderr


def test_run_py_without_dvc_on_path_says_to_activate_the_venv(tmp_path) -> None:
    # no dvc there; no bytecode written into the checkout's recipes/ and forestseg/ either
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run(
        [sys.executable, str(REPO / "recipes/run.py"), "demo", "--queue"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1] == (
        "error: dvc is not on PATH: activate the project's venv (. .venv/bin/activate)"
    ), run.stderr


def test_run_py_compares_with_the_projects_committed_params_in_a_git_subfolder(tmp_path) -> None:
    """A DVC project in a subfolder of its git repository (`dvc init --subdir`): the note on uncommitted
    edits compares with that folder's params.yaml, not the repository root's."""
    repo, proj = tmp_path / "repo", tmp_path / "repo" / "proj"
    shutil.copytree(REPO / "recipes", proj / "recipes")
    shutil.copytree(REPO / "forestseg", proj / "forestseg")
    text = (REPO / "params.yaml").read_text()
    (proj / "params.yaml").write_text(text)
    (repo / "params.yaml").write_text(text.replace("seed: 0", "seed: 7"))  # another project's, at the root
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    (proj / "params.yaml").write_text(text.replace("  scenes: 24", "  scenes: 12"))
    run = subprocess.run(
        [sys.executable, "recipes/run.py", "demo", "--print"], cwd=proj, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "params.yaml differs from the last commit in synth.scenes, which" in run.stderr, run.stderr


def test_a_recipe_replaces_a_bad_workspace_value_it_sets(tmp_path) -> None:
    """A failed `dvc exp run -S train.epochs=0` leaves 0 in params.yaml; the cpu recipe sets epochs itself."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "recipes", repo / "recipes")
    shutil.copytree(REPO / "forestseg", repo / "forestseg")
    (repo / "params.yaml").write_text((REPO / "params.yaml").read_text().replace("  epochs: 5", "  epochs: 0"))
    run = subprocess.run([sys.executable, "recipes/run.py", "cpu", "--print"], cwd=repo, capture_output=True, text=True)
    assert run.returncode == 0 and "-S train.epochs=15" in run.stdout, run.stderr


def test_every_loss_and_optimizer_name_fits_the_run_name_format() -> None:
    """A registry name with a '-' (or a character outside [A-Za-z0-9_]) would be split wrongly by
    Run.of and the lr_overrides check, and its run folders never pruned (io.RUN_FOLDER)."""
    from forestseg.config import Run
    from forestseg.io import RUN_FOLDER
    from forestseg.losses import LOSSES
    from forestseg.optim import OPTIMIZERS

    for loss in LOSSES:
        for optimizer in OPTIMIZERS:
            run = Run(loss, optimizer, 7)
            assert RUN_FOLDER.fullmatch(run.name) and Run.of(run.combination, 7) == run, run.name


def test_the_names_config_validates_have_their_code() -> None:
    """train.sampling and model.input are validated against config's lists (so that aggregate, which
    reads those sections, does not depend on loader.py); each name must have its code in the loader's
    registry, or a new name would validate and then train as another."""
    from forestseg import config, loader

    assert tuple(loader.SAMPLINGS) == config.SAMPLINGS
    assert tuple(loader.INPUTS) == config.INPUTS


def test_the_largest_seed_numpy_takes_is_valid() -> None:
    from forestseg.config import GridConfig

    assert GridConfig(seed=(2**32 - 1,)).seed == (2**32 - 1,)


def test_run_py_notes_only_the_uncommitted_edits_the_experiment_keeps(tmp_path) -> None:
    """Keys the recipe sets are overridden by it: the note on uncommitted edits names only the others."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "recipes", repo / "recipes")
    shutil.copytree(REPO / "forestseg", repo / "forestseg")
    text = (REPO / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    (repo / "params.yaml").write_text(
        text.replace("  epochs: 5", "  epochs: 7").replace("  scenes: 24", "  scenes: 12")
    )
    run = subprocess.run([sys.executable, "recipes/run.py", "cpu", "--print"], cwd=repo, capture_output=True, text=True)
    assert run.returncode == 0 and "-S train.epochs=15" in run.stdout, run.stderr
    assert "params.yaml differs from the last commit in synth.scenes, which this recipe" in run.stderr, run.stderr


def test_grid_runs_are_loss_major_as_dvc_yamls_matrix_expands() -> None:
    """DVC's matrix expands loss, then optimizer, then seed; the order ties break in and tables follow."""
    from forestseg.config import GridConfig

    runs = GridConfig(loss=("mse", "bce"), optimizer=("sgd", "adam"), seed=(0, 1)).runs()
    assert [r.name for r in runs] == [
        "mse-sgd-0",
        "mse-sgd-1",
        "mse-adam-0",
        "mse-adam-1",
        "bce-sgd-0",
        "bce-sgd-1",
        "bce-adam-0",
        "bce-adam-1",
    ]


def test_recipes_run_names_an_experiment_by_its_recipe_and_its_s_values(monkeypatch, capsys) -> None:
    """-S values without -n: the recipe's name and 6 hex digits of their sha1, so other values run beside
    it; -n names it as given."""
    import hashlib

    sys.path.insert(0, str(REPO))
    from recipes import run

    monkeypatch.chdir(REPO)
    digest = hashlib.sha1(b"model.width=8").hexdigest()[:6]
    assert run.main(["demo", "-S", "model.width=8", "--print"]) == 0
    assert capsys.readouterr().out.startswith(f"dvc exp run -n demo-{digest} -S ")
    assert run.main(["demo", "-n", "mine", "-S", "model.width=8", "--print"]) == 0
    assert capsys.readouterr().out.startswith("dvc exp run -n mine -S ")


def test_a_mapping_is_deleted_before_it_is_added_only_where_params_yaml_holds_it() -> None:
    """DVC refuses `-S ~key` of a key params.yaml lacks; a key added once is held for the next -S of it."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    held: set[str] = set()
    first = run.set_args({"optimizer": {"lr_overrides": {"bce-adam": 0.01}}}, held)
    assert first == ["-S", "+optimizer.lr_overrides={bce-adam: 0.01}"]
    again = run.set_args({"optimizer": {"lr_overrides": {"mse-adam": 0.1}}}, held)
    assert again == ["-S", "~optimizer.lr_overrides", "-S", "+optimizer.lr_overrides={mse-adam: 0.1}"]


def test_an_s_mapping_replaces_params_yamls_whole(monkeypatch, capsys) -> None:
    sys.path.insert(0, str(REPO))
    from recipes import run

    monkeypatch.chdir(REPO)
    assert run.main(["study", "-S", "optimizer.lr_overrides={bce-adam: 0.01}", "--print"]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("-S '~optimizer.lr_overrides' -S '+optimizer.lr_overrides={bce-adam: 0.01}'")


def test_recipes_run_takes_a_list_value_and_refuses_an_unknown_section() -> None:
    """A comma inside brackets is one YAML list, not DVC's sweep; a section params.yaml lacks is one line."""
    sys.path.insert(0, str(REPO))
    from recipes import run

    assert run.with_sets("cpu", ["grid.seed=[0,1]"])["grid"]["seed"] == [0, 1]
    with pytest.raises(ForestsegError, match=r"^-S foo\.\.\.: unknown params section; valid: data, synth, "):
        run.with_sets("cpu", ["foo.bar=1"])


def test_params_yaml_without_a_section_says_it_is_missing(base) -> None:
    sys.path.insert(0, str(REPO))
    from recipes import run

    params = {k: v for k, v in copy.deepcopy(base).items() if k != "synth"}
    with pytest.raises(ForestsegError, match=r"^params.yaml: synth: missing section \(see the default params.yaml\)$"):
        run.merged("demo", base=params)
    with pytest.raises(ForestsegError, match=r"^params.yaml: synth: must be a mapping$"):
        run.merged("demo", base={**params, "synth": 3})
    with pytest.raises(ForestsegError, match=r"^recipe '\.\.': not a recipe name; recipes: "):
        run.load("..")
