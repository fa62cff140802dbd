"""forestseg predict: tiled prediction of large images, the CLI, and its errors."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BIN, flip_a_bit_in_the_largest_tensor, in_the_way, make_set, random_predictor, train_small_model
from PIL import Image

import forestseg.cores
import forestseg.io
import forestseg.predict
import forestseg.windows
from forestseg.checkpoint import RESUME_FORMAT, read_init
from forestseg.cli import main
from forestseg.config import ForestsegError, ReportConfig
from forestseg.evaluate import evaluate, evaluate_tiles
from forestseg.layout import DataLayout
from forestseg.predict import Predictor, error_map, scored_masks, write_worst_scenes
from forestseg.synthetic import render_scene

TILE = 64


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    image, mask = render_scene(np.random.default_rng(3), 640)
    return image[:500, :600], mask[:500, :600]  # 600 wide, 500 high


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained for 3 epochs on 64x64 tiles of other synthetic scenes."""
    return train_small_model(tmp_path_factory.mktemp("model"), TILE)


def test_large_image_gives_a_mask_of_its_size_that_agrees_with_single_tiles(checkpoint, scene) -> None:
    image, _ = scene
    predictor = Predictor.load(checkpoint, torch.device("cpu"))
    assert predictor.tile == TILE
    full = predictor.mask(image)
    assert full.shape == (500, 600)
    for y, x in [(96, 96), (200, 320), (400, 500)]:
        single = predictor.mask(np.ascontiguousarray(image[y : y + TILE, x : x + TILE]))
        q = TILE // 4  # away from the window's borders, where its context is cut
        agree = (full[y + q : y + TILE - q, x + q : x + TILE - q] == single[q:-q, q:-q]).mean()
        assert agree >= 0.95, (y, x, agree)


def test_tiling_beats_chance_on_an_unseen_scene(checkpoint, scene) -> None:
    image, truth = scene
    pred = Predictor.load(checkpoint, torch.device("cpu")).mask(image)
    assert (pred == truth).mean() > max(truth.mean(), 1 - truth.mean())  # better than any constant mask


def test_small_image_is_padded_to_a_tile(checkpoint, scene) -> None:
    """Reflect-padded to one tile, as the model saw whole tiles in training; zeros would be black ground."""
    predictor = Predictor.load(checkpoint, torch.device("cpu"), precision="fp32")
    small = np.ascontiguousarray(scene[0][:40, :50])
    logits = predictor.logits(small)
    assert logits.shape == (40, 50)
    padded = np.pad(small, ((0, TILE - 40), (0, TILE - 50), (0, 0)), mode="reflect")
    assert np.allclose(logits, predictor.windows_logits(padded[None])[0][:40, :50], atol=1e-5)
    zeros = np.pad(small, ((0, TILE - 40), (0, TILE - 50), (0, 0)))
    assert not np.allclose(logits, predictor.windows_logits(zeros[None])[0][:40, :50], atol=1e-5)


def test_error_map_colours_each_outcome() -> None:
    truth = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    colours = [tuple(c) for c in error_map(truth, pred)[0]]
    assert len(set(colours)) == 4 and colours[3] == (0, 0, 0)


def test_cli_writes_masks_and_overlays_and_reports_unreadable_images(checkpoint, scene, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(scene[0]).save(src / "big.jpg")
    (src / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(src), "-o", str(tmp_path / "out"), "--overlay"])
    assert done.value.code == 1  # one image failed
    mask = np.asarray(Image.open(tmp_path / "out/big_mask.png"))
    assert mask.shape == (500, 600) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out/big_overlay.png").is_file()
    err = capsys.readouterr().err
    assert "broken.jpg: cannot be decoded: not a JPEG nor any image format Pillow reads" in err


def test_an_error_naming_a_file_with_a_newline_stays_one_line(checkpoint, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "two\nlines.jpg").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(src / "two\nlines.jpg"), "-o", str(tmp_path / "out")])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two\\nlines.jpg: cannot be decoded" in err, err


def test_an_output_link_to_a_folder_is_written_through(checkpoint, scene, tmp_path) -> None:
    """-o a symlink to a real folder (outputs on a larger disk) is fine: only a link to nothing is refused."""
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "a.png")
    (tmp_path / "big").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "big")
    assert run_cli(checkpoint, [tmp_path / "a.png"], tmp_path / "out") == 0
    assert (tmp_path / "big/a_mask.png").is_file()


@pytest.mark.parametrize(
    "breaks, shown", [("\n", "\\n"), ("\r", "\\r"), ("\x85", "\\x85"), ("\u2028", "\\u2028"), ("\x1b[2J", "\\x1b[2J")]
)
def test_a_missing_input_with_a_line_break_in_its_name_is_one_line(
    checkpoint, tmp_path, capsys, breaks: str, shown: str
) -> None:
    """A newline, a carriage return, a C1 next-line, a Unicode line separator (Python's splitlines breaks
    at each) or a terminal's escape sequence in a file name is shown escaped, on the error's one line."""
    assert run_cli(checkpoint, [tmp_path / f"two{breaks}lines.jpg"], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith(f"two{shown}lines.jpg: no such file or folder\n"), err


def test_an_output_link_to_nothing_is_named_as_that(checkpoint, scene, tmp_path, capsys) -> None:
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "a.png")
    (tmp_path / "out").symlink_to(tmp_path / "gone/out")
    assert run_cli(checkpoint, [tmp_path / "a.png"], tmp_path / "out") == 2
    assert capsys.readouterr().err == (
        f"error: -o {tmp_path / 'out'}: is a link to {tmp_path / 'gone/out'}, which does not exist; "
        "create that folder, or give another -o\n"
    )


def test_a_rerun_without_overlay_removes_the_earlier_runs_overlays(checkpoint, scene, tmp_path, capsys) -> None:
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "a.png")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(out), "--overlay"])
    assert done.value.code == 0 and (out / "a_overlay.png").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # another model, say: the old overlay shows another mask
        main(["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(out)])
    assert done.value.code == 0 and sorted(p.name for p in out.iterdir()) == ["a_mask.png"]
    assert (
        f"note: removed 1 overlay of an earlier run from {out} (this one has no --overlay)" in capsys.readouterr().out
    )


def test_an_image_that_no_longer_reads_loses_the_earlier_runs_outputs(checkpoint, scene, tmp_path, capsys) -> None:
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "a.png")
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "b.png")
    out = tmp_path / "out"
    argv = ["predict", str(checkpoint), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--overlay"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and len(list(out.iterdir())) == 4
    (tmp_path / "b.png").write_bytes((tmp_path / "b.png").read_bytes()[:100])  # cut short
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 1  # b named as failed; its old mask would pass for this run's
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png"]
    said = capsys.readouterr().out
    assert (
        f"note: removed 2 outputs of an earlier run from {out} whose images now fail to read: b_mask.png, b_overlay.png"
        in said
    )


def test_a_model_file_older_than_its_fields_reads_as_their_absence_meant(checkpoint, tmp_path) -> None:
    """Files written before precision, adapt_bn, train_scenes, pixel_size_m, init_from and tile_shape were recorded:
    read_model fills in what their absence meant, in one place, and predict takes it from there."""
    from forestseg.checkpoint import OLDER_FILES, read_model
    from forestseg.device import use_bf16

    state = torch.load(checkpoint, weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in state.items() if k not in {*OLDER_FILES, "tile_shape"}}, old)
    read = read_model(old)
    assert [read[k] for k in ("precision", "adapt_bn", "train_scenes", "pixel_size_m", "init_from")] == [
        "auto",
        0.0,
        (),
        None,
        None,
    ]
    assert read["tile_shape"] == [state["tile_size"]] * 2  # square tiles, all there were
    predictor = Predictor.load(old, torch.device("cpu"), "trained")
    assert (predictor.pixel_size_m, predictor.pixel_size_recorded, predictor.adapt_bn) == (0.5, False, 0.0)
    assert predictor.train_scenes == frozenset() and predictor.bf16 == use_bf16("auto", torch.device("cpu"))
    assert predictor.oblong is None


def test_a_model_file_that_recorded_a_mixstyle_for_fixed_layers_still_predicts(checkpoint, tmp_path) -> None:
    """Before config refused them, model.mixstyle 0.5, width 32, depth 5 or batch_norm false with study_unet
    trained (its layers fixed) and its model file recorded them: they shape nothing, so it predicts."""
    from forestseg.checkpoint import write_model
    from forestseg.config import ModelConfig, asdict
    from forestseg.model import build_model

    cfg = ModelConfig(arch="study_unet", input="raw")
    state = torch.load(checkpoint, weights_only=True)
    meta = {k: v for k, v in state.items() if k not in ("format", "weights")}
    meta.update(model={**asdict(cfg), "mixstyle": 0.5, "width": 32, "depth": 5, "batch_norm": False}, tile_size=64)
    write_model(tmp_path / "study.pt", build_model(cfg).state_dict(), meta)
    assert Predictor.load(tmp_path / "study.pt", torch.device("cpu")).mask(np.zeros((64, 64, 3), np.uint8)).shape == (
        64,
        64,
    )


@pytest.mark.parametrize(
    "change, says",
    [
        ("width", "size mismatch"),
        ("not a checkpoint", "damaged, cut short, or not a model file; copy it again"),
        ("cut short", "damaged, cut short, or not a model file; copy it again"),
        ("resume file", "a resume file of a training run (forestseg-resume/3), not a model file"),
        ("runs code", "holds pickled Python objects beyond weights (a whole model saved with torch.save(model)?)"),
        ("arch unknown", "its model params are not a model of this version (model.arch: unknown value 'resnet'"),
        ("a flipped bit", "fails its checksum"),
        ("nan weights", "weight tensor(s) hold NaN or inf"),
        ("threshold nan", "threshold nan is not a finite number"),
        ("loss unknown", "loss 'nosuch' is none of"),
        ("adapt_bn text", "adapt_bn 'x' is not a number from 0 to 1"),
        ("tile_size 0", "tile_size 0 is not a whole number of pixels from 1 to 8192"),
        ("tile_size 8", "tile_size 8 is below its unet_half's smallest, 31 px"),
        ("tile_shape one side", "tile_shape [64] is not a tile's height and width in pixels, the shorter tile_size"),
        ("tile_shape off", "tile_shape [70, 80] is not a tile's height and width in pixels, the shorter tile_size"),
        ("normalizer junk", "normalizer {'junk': 1} is not a mean and std of 3 finite numbers each"),
        ("precision unknown", "precision 'fp8' is none of auto, fp32, bf16"),
        ("pixel size 0", "pixel_size_m 0 is not a pixel side from 0.001 to 10000 m"),
        ("train_scenes text", "train_scenes 'abc' is not a list of scene names"),
        ("init_from text", "init_from 'a.pt' is not the path and SHA-256 of a model file"),
        ("newer format", "not a forestseg-model/1 model file (forestseg-model/2); it was written by another forestseg"),
        ("no such file", "no such file; pass a model file"),
        ("a pipeline's, not made yet", "no such file; run `dvc repro` in the project to train it"),
        ("a folder", "is a folder; pass a model file"),
    ],
)
def test_cli_rejects_a_checkpoint_that_does_not_match(checkpoint, tmp_path, change, says, capsys) -> None:
    bad = tmp_path / "bad.pt"
    edits = {
        "nan weights": lambda st: next(v for v in st["weights"].values() if v.is_floating_point()).fill_(float("nan")),
        "threshold nan": lambda st: st.update(threshold=float("nan")),
        "loss unknown": lambda st: st.update(loss="nosuch"),
        "adapt_bn text": lambda st: st.update(adapt_bn="x"),
        "tile_size 0": lambda st: st.update(tile_size=0),
        "tile_size 8": lambda st: (
            st["model"].update(arch="unet_half", depth=3, batch_norm=True) or st.update(tile_size=8, tile_shape=[8, 8])
        ),
        "tile_shape one side": lambda st: st.update(tile_shape=[64]),
        "tile_shape off": lambda st: st.update(tile_shape=[70, 80]),
        "normalizer junk": lambda st: st.update(normalizer={"junk": 1}),
        "precision unknown": lambda st: st.update(precision="fp8"),
        "pixel size 0": lambda st: st.update(pixel_size_m=0),
        "train_scenes text": lambda st: st.update(train_scenes="abc"),
        "init_from text": lambda st: st.update(init_from="a.pt"),
        "runs code": lambda st: st.update(note=_RunsCode(tmp_path / "ran")),
        "arch unknown": lambda st: st["model"].update(arch="resnet"),
        "newer format": lambda st: st.update(format="forestseg-model/2"),
    }
    if change in edits:
        state = torch.load(checkpoint, weights_only=True)
        edits[change](state)
        torch.save(state, bad)
    elif change == "width":
        state = torch.load(checkpoint, weights_only=False)
        state["model"]["width"] = 16
        torch.save(state, bad)
    elif change == "a flipped bit":  # inside a weight tensor's bytes: torch's reader would not notice
        bad.write_bytes(checkpoint.read_bytes())
        flip_a_bit_in_the_largest_tensor(bad)
    elif change == "no such file":
        pass
    elif change == "a pipeline's, not made yet":  # README's command in a fresh clone: models/ comes from DVC
        bad = tmp_path / "models/bce-adam-0/model.pt"
    elif change == "a folder":
        bad.mkdir()
    elif change == "resume file":
        torch.save({"format": RESUME_FORMAT, "model": {}}, bad)
    elif change == "cut short":
        data = checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(b"junk")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as done:
        main(["predict", str(bad), str(tmp_path / "a.png"), "-o", str(tmp_path / "out")])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}") and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ran").exists()


def test_a_model_file_without_read_permission_is_said_as_that(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    """It was called damaged or cut short, with "copy it again" (root reads a mode-000 file: refused here)."""
    import forestseg.checkpoint

    def no_permission(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(forestseg.checkpoint.zipfile, "ZipFile", no_permission)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out")])
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {checkpoint}: cannot be read (Permission denied); check its permissions (chmod a+r)\n"
    )
    # as train.init_from too: its own advice, not "copy a finished run's model file into init/"
    with pytest.raises(
        ForestsegError, match=r"cannot be read \(Permission denied\); check its permissions \(chmod a\+r\)$"
    ):
        read_init(checkpoint, {})


@pytest.mark.parametrize("above", ["a link to nothing", "a file"])
def test_an_output_folder_under_a_dangling_link_or_a_file_says_which(checkpoint, tmp_path, capsys, above) -> None:
    """mkdir says only "File exists" (under a link to nothing) or "Not a directory": name what is in the way."""
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    why = in_the_way(tmp_path, above)
    assert run_cli(checkpoint, [tmp_path / "a.png"], tmp_path / "up/out") == 2
    assert capsys.readouterr().err == f"error: -o {tmp_path / 'up/out'}: cannot create the folder ({why})\n"


def test_predict_says_where_its_threads_exceed_the_cpu_quota(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    """docker --cpus 1 on a machine of many cores: torch's threads, one per core it sees, are throttled."""
    monkeypatch.setattr("forestseg.cores.cpu_quota", lambda: 1.0)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    argv = ["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--device", "cpu"]
    for threads, noted in (("2", True), ("1", False)):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--threads", threads])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert ("note: this process's cgroup allows 1 CPUs' worth of time" in out) == noted, out
        assert ("and it runs 2 torch threads, which the quota throttles in turn; give --threads 1" in out) == noted


class _RunsCode:
    """Pickled as a call that touches `path` when loaded: what a malicious model file holds."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("overlap", ["-1", str(TILE)])
def test_cli_rejects_an_overlap_outside_the_tile(checkpoint, tmp_path, overlap, capsys) -> None:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--overlap", overlap])
    assert done.value.code == 2 and "--overlap" in capsys.readouterr().err


def run_cli(checkpoint: Path, inputs: list[Path], out: Path) -> int:
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), *map(str, inputs), "-o", str(out)])
    return done.value.code


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def test_palette_png_is_read_as_its_colours(checkpoint, scene, tmp_path) -> None:
    rgb = Image.fromarray(scene[0][:128, :128]).quantize(64).convert("RGB")
    src = tmp_path / "in"
    src.mkdir()
    rgb.save(src / "rgb.png")
    rgb.quantize(64).save(src / "palette.png")  # mode P: the same colours through a palette
    assert Image.open(src / "palette.png").mode == "P"
    assert run_cli(checkpoint, [src], tmp_path / "out") == 0
    assert np.array_equal(read_mask(tmp_path / "out/palette_mask.png"), read_mask(tmp_path / "out/rgb_mask.png"))


def test_transparent_pixels_are_never_forest(checkpoint, scene, tmp_path, capsys) -> None:
    image = scene[0][:128, :128]
    alpha = np.full((128, 128), 255, np.uint8)
    alpha[:, :64] = 0
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.dstack([image, alpha]), "RGBA").save(src / "a.png")
    Image.fromarray(image).save(src / "b.png")
    assert run_cli(checkpoint, [src], tmp_path / "out") == 0
    a, b = read_mask(tmp_path / "out/a_mask.png"), read_mask(tmp_path / "out/b_mask.png")
    assert not a[:, :64].any() and b[:, :64].any()
    assert np.array_equal(a[:, 64:], b[:, 64:])  # the opaque half is predicted from the same pixels
    assert "; 1 image(s) had an alpha band: transparent pixels are not forest" in capsys.readouterr().out


def test_exif_rotated_jpeg_gives_a_mask_as_the_viewer_shows_it(checkpoint, scene, tmp_path) -> None:
    shown = np.ascontiguousarray(scene[0][:96, :160])  # 160 wide, 96 high as shown
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: a viewer turns it 90 degrees clockwise
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.rot90(shown, 1)).save(src / "photo.jpg", quality=100, exif=exif)
    assert run_cli(checkpoint, [src], tmp_path / "out") == 0
    assert read_mask(tmp_path / "out/photo_mask.png").shape == (96, 160)


@pytest.mark.parametrize("kind", ["16-bit grey", "grey"])
def test_single_band_images_are_refused_with_the_reason(checkpoint, tmp_path, capsys, kind) -> None:
    src = tmp_path / "in"
    src.mkdir()
    pixels = np.full((64, 64), 40000, np.uint16) if kind == "16-bit grey" else np.full((64, 64), 90, np.uint8)
    Image.fromarray(pixels).save(src / "x.png")
    assert run_cli(checkpoint, [src], tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "x.png: " in err and "one colour band; forestseg needs RGB images" in err
    assert ("values up to 40000" in err) == (kind == "16-bit grey")
    assert "8 bits" not in err and "Traceback" not in err  # 8-bit grey would be refused next


def test_output_that_is_a_file_or_an_input_folder_is_refused(checkpoint, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(src / "a.png")
    (tmp_path / "file").write_text("x")
    assert run_cli(checkpoint, [src], tmp_path / "file") == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert run_cli(checkpoint, [src], src) == 2
    assert "is a folder of input images" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]  # nothing written among the inputs


def test_masks_collect_each_chunk_after_the_next_is_queued_and_every_tile_in_a_chunk(monkeypatch) -> None:
    """The order that lets a GPU run a chunk's forward while the host stacks the next one; no tile-sized
    image left to the one-by-one path (which would give the same masks, slower)."""
    p = random_predictor()
    images = list(np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    expected = [p.mask(image) for image in images]
    events, launch = [], Predictor._launch

    def launched(self, tiles, cut=False):
        assert cut, "the masks are cut where the outputs are"
        k = sum(e[0] == "queue" for e in events)
        events.append(("queue", k, len(tiles)))
        wait = launch(self, tiles, cut)
        return lambda: events.append(("collect", k)) or wait()

    monkeypatch.setattr(Predictor, "_launch", launched)
    monkeypatch.setattr(Predictor, "mask", lambda *a, **k: pytest.fail("a tile-sized image went one by one"))
    got = p.masks(images, batch=2)
    assert events == [("queue", 0, 2), ("queue", 1, 2), ("collect", 0), ("queue", 2, 1), ("collect", 1), ("collect", 2)]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("tta", [False, True])
def test_masks_cut_on_the_device_equal_the_host_blend_at_float32_boundaries(tta: bool) -> None:
    """masks cuts in torch where mask() cuts in numpy: the same float32 arithmetic, cut included, also
    for a cut between two float32 values and one at an output exactly."""
    p = random_predictor(seed=2, tta=tta)
    images = list(np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    y = p.windows_logits(np.stack(images))
    z = np.sort(y.ravel())
    at = float(z[len(z) // 2])
    weight = forestseg.predict._window_weight(32)
    moved = y[(y * weight) / weight != y]  # outputs the blend's float32 arithmetic moves by an ulp
    assert moved.size
    for cut in (at, (at + float(np.nextafter(np.float32(at), np.float32(np.inf)))) / 2, 0.1, float(moved[0])):
        q = dataclasses.replace(p, cut=cut)
        got = q.masks(images, batch=1)
        assert all(np.array_equal(a, q.mask(image)) for a, image in zip(got, images, strict=True)), cut
        assert all(a.base is None for a in got)  # each its own array


@pytest.mark.parametrize("tta", [False, True])
def test_an_image_of_the_oblong_training_tiles_shape_runs_whole(tta: bool, monkeypatch) -> None:
    """A model trained on 32 x 48 tiles predicts a 32 x 48 image in one window, as training scored its
    tiles, in masks() and mask() alike; other shapes (48 x 32 too) in square windows of the short side."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(32, 48, 3)] * 3 + [(48, 32, 3), (40, 48, 3)]]
    square = random_predictor(seed=4, tta=tta, centre_on=np.stack([image[:, :32] for image in images[:3]]))
    p = dataclasses.replace(square, oblong=(32, 48))
    got = p.masks(images)
    assert all(np.array_equal(m, p.mask(image)) for m, image in zip(got, images, strict=True))
    weight = forestseg.predict._window_weight(32, 48)
    whole = p.windows_logits(np.stack(images[:3]))
    assert all(np.array_equal(got[i], (whole[i] * weight) / weight > p.cut) for i in range(3))
    assert not all(np.array_equal(got[i], square.mask(images[i])) for i in range(3))  # windows would differ
    assert all(np.array_equal(got[i], square.mask(images[i])) for i in (3, 4))
    assert [p.windows(*image.shape[:2]) for image in images] == [1, 1, 1, 2, 4]
    batches, launch = [], Predictor._launch
    monkeypatch.setattr(Predictor, "_launch", lambda self, x, cut=False: batches.append(len(x)) or launch(self, x, cut))
    p.masks(images[:3])
    assert batches == [3]  # one forward pass for the three, as for square tiles


def test_masks_of_several_images_equal_one_by_one(checkpoint, scene) -> None:
    predictor = Predictor.load(checkpoint, torch.device("cpu"))
    image = scene[0]
    images = [np.ascontiguousarray(image[y : y + TILE, x : x + TILE]) for y, x in [(0, 0), (64, 100), (200, 300)]]
    images += [np.ascontiguousarray(image[:100, :150]), np.ascontiguousarray(image[:40, :50])]  # tiled, padded
    images += [np.ascontiguousarray(image[:TILE, : 2 * TILE])]  # a tile high, two wide: tiled, not batched
    together = predictor.masks(images, batch=2)
    for one, image_ in zip(together, images):
        assert np.array_equal(one, predictor.mask(image_))


def test_bf16_prediction_of_confident_models_differs_from_fp32_in_few_pixels(checkpoint, scene, tmp_path) -> None:
    """At most 0.1 % of pixels, pooled over three models: which pixels flip depends on how each weight
    rounds to bf16, one draw per model (over 6 seeds of this model: 0-0.113 % with the fused conv +
    batch-norm + ReLU, mean 0.029 %; 0-0.066 % unfused, mean 0.027 %), so one model is one draw."""
    differ = []
    for model in (
        checkpoint,
        train_small_model(tmp_path / "1", TILE, train_seed=1),
        train_small_model(tmp_path / "2", TILE, train_seed=2),
    ):
        fp32 = Predictor.load(model, torch.device("cpu"), precision="fp32")
        bf16 = Predictor.load(model, torch.device("cpu"), precision="bf16")
        assert (fp32.bf16, bf16.bf16) == (False, True)
        differ.append((fp32.mask(scene[0]) != bf16.mask(scene[0])).mean())
        assert not np.array_equal(fp32.logits(scene[0]), bf16.logits(scene[0]))  # bf16 really ran
    assert np.mean(differ) <= 0.001, differ


def worst_scenes_setup(checkpoint: Path, root: Path) -> tuple[Path, DataLayout, dict]:
    """A models folder with the checkpoint as bce-adam-0, packed tiles of scenes 1, 2, 5, 9 (scene 2 has
    only 2 test tiles, scene 1 none), and summary.json's best combination."""
    (root / "models" / "bce-adam-0").mkdir(parents=True)
    (root / "models" / "bce-adam-0" / "model.pt").symlink_to(checkpoint)
    layout = DataLayout(root / "data")
    layout.packed.mkdir(parents=True)
    scenes, subsets = [], []
    for scene, test in (("5", 4), ("1", 0), ("2", 2), ("9", 5)):
        scenes += [scene] * (test + 2)
        subsets += ["test"] * test + ["train"] * 2
    n = len(scenes)
    images = np.stack([render_scene(np.random.default_rng(i), TILE)[0] for i in range(n)])
    images[:, 0, 0, 0] = np.arange(n)  # tile i marked in its first pixel
    np.save(layout.images, images)
    np.save(layout.masks, (images[..., 1] > 100).astype(np.uint8))
    names = [f"{s}_sat_{i:02d}.jpg" for i, s in enumerate(scenes)]
    pd.DataFrame({"image": names, "scene": scenes, "subset": subsets}).to_csv(layout.split_csv, index=False)
    summary = {"best_combination": "bce-adam", "combinations": {"bce-adam": {"best_seed": 0}}}
    return root / "models", layout, summary


def test_worst_scenes_panel_shows_seeded_test_tiles_of_the_three_worst(checkpoint, tmp_path, monkeypatch) -> None:
    models, layout, summary = worst_scenes_setup(checkpoint, tmp_path)
    scenes_csv = tmp_path / "scenes.csv"
    scenes_csv.write_text(
        "scene,tiles,forest_share,iou,precision,recall\n9,5,.5,.1,.5,.5\n2,2,.5,.2,.5,.5\n"
        "5,4,.5,.3,.5,.5\n1,9,.5,.9,.5,.5\n"
    )
    drawn = []
    monkeypatch.setattr(forestseg.predict, "example_panel", lambda *a: drawn.append(a))
    cfg = ReportConfig(seed=3)
    path = tmp_path / "worst_scenes.png"
    device = torch.device("cpu")
    assert write_worst_scenes(models, layout, summary, scenes_csv, cfg, path, device) == ["9", "2", "5"]
    images, masks, _, title, _, labels = drawn[0]
    assert labels == ["scene 9"] * 3 + ["scene 2"] * 2 + ["scene 5"] * 3  # 3 tiles each, or all a scene has
    split = pd.read_csv(layout.split_csv, dtype={"scene": str})
    rows = images[:, 0, 0, 0].tolist()
    assert all(
        split.loc[r, "subset"] == "test" and f"scene {split.loc[r, 'scene']}" == lab for r, lab in zip(rows, labels)
    )
    assert title.startswith("bce-adam-0: test tiles of the 3 worst scenes")
    write_worst_scenes(models, layout, summary, scenes_csv, cfg, path, device)
    assert drawn[1][0][:, 0, 0, 0].tolist() == rows  # seeded: the same tiles again
    monkeypatch.undo()
    write_worst_scenes(models, layout, summary, scenes_csv, cfg, path, device)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.height > im.width  # 8 rows of 4 panels


def test_overlays_draw_test_tiles_as_the_run_scored_them(checkpoint, tmp_path) -> None:
    _, layout, _ = worst_scenes_setup(checkpoint, tmp_path)
    plain = Predictor.load(checkpoint, torch.device("cpu"))
    images = np.load(layout.images)
    rows = np.array([0, 3, 8, 9])  # test tiles of scenes 5 and 2
    assert all(np.array_equal(a, plain.mask(images[r])) for a, r in zip(scored_masks(plain, layout, rows), rows))
    adapting = dataclasses.replace(plain, adapt_bn=0.5)  # a model file of train.adapt_bn 0.5
    got = scored_masks(adapting, layout, rows)
    for scene, own in (("5", [0, 1, 2, 3]), ("2", [8, 9])):  # each scene's test tiles, not its train tiles
        adapted = plain.adapted(images[own], 0.5)
        for r in rows[np.isin(rows, own)]:
            assert np.array_equal(got[list(rows).index(r)], adapted.mask(images[r])), (scene, r)
    assert any(not np.array_equal(a, plain.mask(images[r])) for a, r in zip(got, rows))


@pytest.mark.parametrize("rows", [2, 9])
def test_panel_title_and_legend_keep_a_small_margin_at_any_row_count(checkpoint, scene, tmp_path, rows) -> None:
    predictor = Predictor.load(checkpoint, torch.device("cpu"))
    images = np.stack([scene[0][:TILE, i * 8 : i * 8 + TILE] for i in range(rows)])
    masks = np.stack([scene[1][:TILE, i * 8 : i * 8 + TILE] for i in range(rows)])
    path = tmp_path / "panel.png"
    forestseg.predict.example_panel(images, masks, predictor.masks(list(images)), "title", path)
    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"))
    blank = (grey > 250).all(axis=1)  # rows of pixels with nothing drawn
    longest = max(len(run) for run in "".join("1" if b else "0" for b in blank).split("0"))
    assert longest < 0.05 * len(grey), (longest, len(grey))  # no band of empty figure, e.g. under the title


@pytest.mark.parametrize("size", [32, 64, 256])
def test_each_panel_is_framed_so_an_all_forest_mask_is_not_white_on_white(size: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    masks = np.ones((2, size, size), np.uint8)  # all forest: white panels
    preds = [np.zeros((size, size), bool), np.ones((size, size), bool)]
    picture, titles = forestseg.predict.panel_picture(images, masks, preds, ["scene 7", "scene 8"])
    assert len(titles) == 8 and titles[0][2] == "scene 7: image" and titles[6][2] == "prediction (IoU 1.00)"
    for x, y, _ in titles:  # each title sits just above its panel, whose frame is grey all round
        x0, y0 = int(x - size / 2), int(y + 1.5)
        panel = picture[y0 - 1 : y0 + size + 1, x0 - 1 : x0 + size + 1]
        ring = np.concatenate([panel[0], panel[-1], panel[:, 0], panel[:, -1]])
        assert (ring == 128).all()
    truth = picture[int(titles[1][1] + 1.5) :][:size, int(titles[1][0] - size / 2) :][:, :size]
    assert (truth == 255).all()  # the all-forest truth, inside its frame
    assert (picture[0] == 255).all()  # the first row's titles have white above them


def test_worst_scenes_without_scenes_or_with_a_stale_table(checkpoint, tmp_path) -> None:
    models, layout, summary = worst_scenes_setup(checkpoint, tmp_path)
    scenes_csv, path, cfg = tmp_path / "scenes.csv", tmp_path / "worst_scenes.png", ReportConfig()
    scenes_csv.write_text("scene,tiles,forest_share,iou,precision,recall\n")
    assert write_worst_scenes(models, layout, summary, scenes_csv, cfg, path, torch.device("cpu")) == []
    assert not path.exists()
    scenes_csv.write_text("scene,tiles,forest_share,iou,precision,recall\n1,2,.5,.1,.5,.5\n")
    with pytest.raises(ForestsegError, match="scene 1 has no test tile in .*split.csv; run `dvc repro aggregate`"):
        write_worst_scenes(models, layout, summary, scenes_csv, cfg, path, torch.device("cpu"))
    with pytest.raises(ForestsegError, match="missing.csv: missing or not a per-scene table"):
        write_worst_scenes(models, layout, summary, tmp_path / "missing.csv", cfg, path, torch.device("cpu"))


# --- test-time augmentation -----------------------------------------------------------------------


def test_tta_is_the_mean_of_the_8_views_each_mapped_back() -> None:
    plain, tta = random_predictor(tta=False), random_predictor(tta=True)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = []
    for image in images:  # the dihedral group by hand, in numpy: 4 turns of the image and of its mirror
        backs = []
        for mirror in (False, True):
            for k in range(4):
                view = np.rot90(image[:, ::-1] if mirror else image, k)
                out = plain.windows_logits(np.ascontiguousarray(view)[None])[0]
                back = np.rot90(out, -k)
                backs.append(back[:, ::-1] if mirror else back)
        expected.append(np.mean(backs, axis=0))
    expected = np.stack(expected)
    assert np.allclose(tta.windows_logits(images), expected, rtol=1e-5, atol=1e-5)
    assert np.allclose(tta.logits(images[0]), expected[0], rtol=1e-5, atol=1e-5)  # through the tiler
    assert [m.tolist() for m in tta.masks(list(images))] == [(e > 0).tolist() for e in expected]
    assert (
        np.abs(plain.windows_logits(images) - expected).max() > 1e-2
    )  # the views really differ: TTA changed the output


def test_tta_windowed_prediction_equals_the_in_memory_one(checkpoint, scene) -> None:
    predictor = Predictor.load(checkpoint, torch.device("cpu"), tta=True)
    image = np.ascontiguousarray(scene[0][:200, :260])
    whole = predictor.logits(image)
    for block in (40, 150):  # panels narrower than a tile, a few
        assert np.array_equal(predictor.logits(image, block=block), whole), block
    assert not np.array_equal(Predictor.load(checkpoint, torch.device("cpu")).logits(image), whole)
    tiles = [np.ascontiguousarray(image[y : y + TILE, x : x + TILE]) for y, x in [(0, 0), (64, 100)]]
    for one, tile in zip(predictor.masks(tiles + [image], batch=2), tiles + [image]):
        assert np.array_equal(one, predictor.mask(tile))


@pytest.mark.parametrize("precision, kernels", [("fp32", False), ("bf16", True), ("bf16", False)])
def test_cli_predict_runs_in_the_precision_asked_for(
    checkpoint, scene, tmp_path, monkeypatch, capsys, precision: str, kernels: bool
) -> None:
    """And says where bf16 runs on a CPU without oneDNN's bf16 kernels (an AVX2 CPU): emulated."""
    import forestseg.device

    image = np.ascontiguousarray(scene[0][:100, :150])
    Image.fromarray(image).save(tmp_path / "a.png")
    loaded, load = [], Predictor.load
    monkeypatch.setattr(Predictor, "load", lambda *a: loaded.append(load(*a)) or loaded[-1])
    monkeypatch.setattr(forestseg.device, "cpu_bf16_kernels", lambda: kernels)
    with pytest.raises(SystemExit) as done:
        main(
            ["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--precision", precision]
        )
    assert done.value.code == 0
    assert [p.bf16 for p in loaded] == [precision == "bf16"]
    assert np.array_equal(read_mask(tmp_path / "out/a_mask.png"), loaded[0].mask(image))
    noted = f"note: --precision {precision}: bf16 on a CPU without oneDNN's bf16 kernels" in capsys.readouterr().out
    assert noted is (precision == "bf16" and not kernels)


def test_evaluate_writes_its_file_before_a_reader_that_stops_early(checkpoint, tmp_path, monkeypatch) -> None:
    """`forestseg evaluate ... -o e.json | head -1`: the pipe breaks at the summary; the file is there."""
    import forestseg.cli

    def head_1(*args, **kwargs) -> None:
        if str(args[0]).startswith("evaluate:"):
            raise BrokenPipeError

    data = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=TILE)
    monkeypatch.setattr(forestseg.cli, "print", head_1, raising=False)
    # the CLI then points file descriptor 1 at /dev/null: in a pytest worker, that is pytest's capture file
    # (closed under it: every later test of the worker failed with EBADF); tests/test_geo.py runs the
    # command in a process of its own into a closed pipe
    monkeypatch.setattr(forestseg.cli, "quiet_stdout", lambda: None)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data), "--device", "cpu", "-o", str(tmp_path / "e.json")])
    assert done.value.code == 141 and json.loads((tmp_path / "e.json").read_text())["tiles"] == 4


def test_evaluate_refuses_a_missing_split_file_before_reading_the_data(
    checkpoint, tmp_path, capsys, monkeypatch
) -> None:
    import forestseg.evaluate

    monkeypatch.setattr(forestseg.evaluate, "build_index", lambda *a, **k: pytest.fail("read the data first"))
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(tmp_path), "--split", str(tmp_path / "no.csv")])
    assert done.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: --split {tmp_path / 'no.csv'}: no such file; give a split.csv (e.g. data/split.csv)\n"
    )


@pytest.mark.parametrize("there", ["file", "nothing"])
def test_evaluates_data_that_is_no_folder_is_said_as_what_is_there(checkpoint, tmp_path, capsys, there) -> None:
    data = tmp_path / "meta_data.csv"
    if there == "file":
        data.write_text("image,mask\n")
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data)])
    what = "is a file, not a folder" if there == "file" else "no such folder"
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {data}: {what}; give the data folder (images/, masks/ and meta_data.csv, or of GeoTIFFs)\n"
    )


def test_cli_predict_and_evaluate_with_tta(checkpoint, scene, tmp_path, capsys) -> None:
    image = np.ascontiguousarray(scene[0][:100, :150])
    Image.fromarray(image).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--tta"])
    assert done.value.code == 0
    tta = Predictor.load(checkpoint, torch.device("cpu"), tta=True)
    assert np.array_equal(read_mask(tmp_path / "out/a_mask.png"), tta.mask(image))

    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=TILE)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data), "--tta", "--device", "cpu", "-o", str(tmp_path / "eval.json")])
    assert done.value.code == 0
    assert "with test-time augmentation" in capsys.readouterr().out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["tta"] is True and result["tiles"] == 8
    assert result["dtype"] == ("bf16" if tta.bf16 else "fp32")  # what auto picked on this machine
    assert result["iou"] == round(evaluate(tta, data, log=lambda s: None)["iou"], 6)  # the TTA predictor's scores
    assert result["iou"] != round(evaluate(dataclasses.replace(tta, tta=False), data, log=lambda s: None)["iou"], 6)


def test_cli_evaluate_scores_tiles_larger_than_the_model_s_with_its_overlap(checkpoint, tmp_path, capsys) -> None:
    """Tiles larger than the model's are predicted window by window as predict does, with --overlap."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=2 * TILE + 16)
    plain, scores = Predictor.load(checkpoint, torch.device("cpu")), {}
    for overlap in (0, TILE // 2):
        with pytest.raises(SystemExit) as done:
            out = str(tmp_path / f"e{overlap}.json")
            main(["evaluate", str(checkpoint), str(data), "--overlap", str(overlap), "--device", "cpu", "-o", out])
        assert done.value.code == 0
        scores[overlap] = json.loads((tmp_path / f"e{overlap}.json").read_text())["iou"]
        assert scores[overlap] == round(evaluate_tiles(plain, data, overlap=overlap, log=lambda s: None)["iou"], 6)
    assert scores[0] != scores[TILE // 2]
    capsys.readouterr()


# --- batch-norm statistics adapted to the imagery (--adapt-bn) ------------------------------------


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_adapted_moves_batch_norm_statistics_towards_the_tiles_by_mix(mix: float) -> None:
    p = random_predictor(seed=1, depth=1)
    tiles = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    first = next(m for m in p.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = first.running_mean.clone()
    adapted = p.adapted(tiles, mix)
    conv = next(m for m in p.model.modules() if isinstance(m, torch.nn.Conv2d))  # the conv before that norm
    with torch.no_grad():
        scene = conv(forestseg.predict.to_input(torch.from_numpy(tiles), p.norm)).mean(dim=(0, 2, 3))
    got = next(m for m in adapted.model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
    assert torch.allclose(got, (1 - mix) * before + mix * scene, atol=1e-5)
    assert torch.equal(first.running_mean, before) and not p.model.training  # the original is untouched
    assert not adapted.model.training
    assert np.allclose(adapted.windows_logits(tiles), p.windows_logits(tiles)) == (mix == 0.0)
    assert p.adapted(tiles[:0], mix) is p  # no tiles: nothing to adapt to


def test_sample_windows_is_a_seeded_sample_of_the_grid_keeping_usable_windows() -> None:
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    read = lambda r0, r1, c0, c1: image[r0:r1, c0:c1]  # noqa: E731
    every = forestseg.windows.sample_windows(read, 100, 150, 32, n=100)
    grid = [(y, x) for y in (0, 32, 64, 68) for x in (0, 32, 64, 96, 118)]  # the last windows flush with the edge
    assert sorted(w.tobytes() for w in every) == sorted(read(y, y + 32, x, x + 32).tobytes() for y, x in grid)
    some = forestseg.windows.sample_windows(read, 100, 150, 32, n=5, usable=lambda y, x: x > 0)
    assert len(some) == 5 and not any(np.array_equal(w, image[y : y + 32, :32]) for w in some for y in (0, 32, 64, 68))
    assert np.array_equal(some, forestseg.windows.sample_windows(read, 100, 150, 32, n=5, usable=lambda y, x: x > 0))
    assert forestseg.windows.sample_windows(read, 100, 150, 128).shape == (0, 128, 128, 3)  # smaller than a window
    # a sample spread over the image, not its first rows (batch-norm adapts to what it sees)
    cells = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8), np.ones((32, 32), np.uint8))[..., None].repeat(3, -1)
    picked = forestseg.windows.sample_windows(lambda r0, r1, c0, c1: cells[r0:r1, c0:c1], 256, 256, 32, n=8)
    assert [int(w[0, 0, 0]) for w in picked] == np.random.default_rng(0).permutation(64)[:8].tolist()


def test_cli_predict_and_evaluate_with_adapt_bn(checkpoint, scene, tmp_path, capsys) -> None:
    tiles = [np.ascontiguousarray(scene[0][y : y + TILE, x : x + TILE]) for y, x in [(0, 0), (64, 100), (200, 300)]]
    for i, tile in enumerate(tiles):
        Image.fromarray(tile // 2).save(tmp_path / f"t{i}.png")  # darker than training: something to adapt to
    out = tmp_path / "out"
    argv = ["predict", str(checkpoint), *(str(tmp_path / f"t{i}.png") for i in range(3)), "-o", str(out)]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--adapt-bn", "0.5"])
    assert done.value.code == 0
    plain = Predictor.load(checkpoint, torch.device("cpu"))
    adapted = plain.adapted(np.stack([t // 2 for t in tiles]), 0.5)  # the pictures of one call: one scene
    for i, tile in enumerate(tiles):
        assert np.array_equal(read_mask(out / f"t{i}_mask.png"), adapted.mask(tile // 2))
    assert any(not np.array_equal(adapted.mask(t // 2), plain.mask(t // 2)) for t in tiles)  # it changed something

    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=TILE)
    for mix in ("0", "1"):
        with pytest.raises(SystemExit) as done:
            main(["evaluate", str(checkpoint), str(data), "--adapt-bn", mix, "-o", str(tmp_path / f"e{mix}.json")])
        assert done.value.code == 0
    capsys.readouterr()
    unadapted, adapted_scores = (json.loads((tmp_path / f"e{m}.json").read_text()) for m in ("0", "1"))
    assert unadapted["iou"] == round(evaluate(plain, data, log=lambda s: None)["iou"], 6)
    assert adapted_scores["iou"] != unadapted["iou"]  # each scene scored by the model adapted to it

    with pytest.raises(SystemExit) as done:
        main([*argv, "--adapt-bn", "2"])
    assert done.value.code == 2 and "--adapt-bn 2.0: must be in 0..1" in capsys.readouterr().err


def test_the_model_files_adapt_bn_is_predicts_default(checkpoint, scene, tmp_path, capsys) -> None:
    state = torch.load(checkpoint, weights_only=False)
    stored = tmp_path / "adapting.pt"
    torch.save({**state, "adapt_bn": 0.5}, stored)  # as train.adapt_bn: 0.5 writes it
    assert Predictor.load(checkpoint, torch.device("cpu")).adapt_bn == 0.0  # trained without
    tiles = [
        np.ascontiguousarray(scene[0][y : y + TILE, x : x + TILE]) // 2 for y, x in [(0, 0), (64, 100), (200, 300)]
    ]
    for i, tile in enumerate(tiles):
        Image.fromarray(tile).save(tmp_path / f"t{i}.png")
    masks = {}
    for name, flags in {"default": [], "0.5": ["--adapt-bn", "0.5"], "off": ["--adapt-bn", "0"]}.items():
        out = tmp_path / name
        with pytest.raises(SystemExit) as done:
            main(["predict", str(stored), *(str(tmp_path / f"t{i}.png") for i in range(3)), "-o", str(out), *flags])
        assert done.value.code == 0
        masks[name] = [read_mask(out / f"t{i}_mask.png") for i in range(3)]
        said = "note: batch-norm adapted by 0.5, the model file's: the 3 picture(s) to all of them, as one scene"
        assert (said in capsys.readouterr().out) == (name == "default")
    plain = Predictor.load(stored, torch.device("cpu"))
    assert plain.adapt_bn == 0.5
    assert all(np.array_equal(a, b) for a, b in zip(masks["default"], masks["0.5"], strict=True))
    assert all(np.array_equal(m, plain.mask(t)) for m, t in zip(masks["off"], tiles, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(masks["default"], masks["off"], strict=True))


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_min_area_must_be_a_finite_area(checkpoint, tmp_path, capsys, value) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(image), "-o", str(tmp_path / "out"), "--min-area-m2", value])
    assert done.value.code == 2
    assert f"--min-area-m2 {float(value)}: must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_removes_what_a_killed_run_left_in_its_folder(checkpoint, tmp_path, capsys) -> None:
    from conftest import dead_temp_prefix

    out = tmp_path / "out"
    (out / (dead_temp_prefix("a") + "x")).mkdir(parents=True)
    image = tmp_path / "b.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit) as exited:
        main(["predict", str(checkpoint), str(image), "-o", str(out)])
    assert exited.value.code == 0
    assert "removed 1 temp file(s) or folder(s) that a killed earlier run left" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["b_mask.png"]


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda s: {k: v for k, v in s.items() if k != "weights"}, r"a forestseg-model/1 file without weights; "),
        (
            lambda s: {**s, "model": {**s["model"], "width": s["model"]["width"] * 2}},
            r"do not match the model its params describe \(.*\); damaged or edited: copy it again, or retrain",
        ),
        # saved from a torch.compile'd model: the cause is the prefix, which the cut list left out
        (
            lambda s: {**s, "weights": {f"_orig_mod.{k}": v for k, v in s["weights"].items()}},
            r"do not match the model its params describe \(its weights' names start '_orig_mod.': saved from a "
            r"torch.compile'd or DataParallel model\); remove '_orig_mod.' from the start of its weights' names",
        ),
        (  # a compiled DataParallel model: both prefixes at once, not one per try
            lambda s: {**s, "weights": {f"_orig_mod.module.{k}": v for k, v in s["weights"].items()}},
            r"remove '_orig_mod.module.' from the start of its weights' names",
        ),
        (lambda s: {**s, "model": {**s["model"], "arch": "resnet"}}, r"predict with the version that trained it"),
        # read as params.yaml's model section is: predicted with batch-norm, as truthy text (a review)
        (
            lambda s: {**s, "model": {**s["model"], "batch_norm": "no"}},
            r"its model params are not a model of this version \(model.batch_norm: must be true or false, got 'no'",
        ),
    ],
)
def test_a_damaged_model_file_is_one_short_line(checkpoint, tmp_path, capsys, damage, says) -> None:
    bad = tmp_path / "bad.pt"
    torch.save(damage(torch.load(checkpoint, weights_only=False)), bad)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit) as done:
        main(["predict", str(bad), str(image), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and re.search(says, err) and len(err) < 500 and err.count("\n") == 1, err


def test_evaluates_mask_advice_names_its_flags(checkpoint, tmp_path, capsys) -> None:
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)  # 0/255 masks
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data), "--masks", "0/1"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "pass --masks '0/255'" in err and "data.masks" not in err, err


def test_evaluate_scores_tiles_of_no_forest_only_when_told(checkpoint, tmp_path, capsys) -> None:
    """All-background masks read as masks of another convention would: stopped, naming the flag; with it,
    scored (forest IoU 0 wherever the model calls any forest: false forest on farmland)."""
    import json

    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    for mask in (data / "masks").iterdir():
        Image.new("L", Image.open(mask).size).save(mask, quality=95)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "no pixel of any mask is forest" in err and "pass --allow-no-forest" in err, err
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data), "--allow-no-forest", "-o", str(tmp_path / "e.json")])
    assert done.value.code == 0, capsys.readouterr().err
    scores = json.loads((tmp_path / "e.json").read_text())
    assert scores["tiles"] == 8 and scores["true_forest_ha"] == 0 and scores["area_bias_pct"] is None, scores


def test_evaluate_names_its_flag_for_bright_forest(checkpoint, tmp_path, capsys) -> None:
    from PIL import ImageOps

    data = make_set(tmp_path / "set", scenes=3, grid=2, tile_size=64)
    for mask in (data / "masks").iterdir():  # inverted: forest brighter than the rest in every scene
        ImageOps.invert(Image.open(mask).convert("L")).save(mask, quality=95)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "are the masks inverted?" in err and "pass --forest-brighter" in err, err
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data), "--forest-brighter"])
    assert done.value.code == 0


@pytest.mark.parametrize("linked", ["one", "every"])
def test_evaluates_data_advice_names_its_argument(checkpoint, tmp_path, capsys, linked: str) -> None:
    """The index's reasons name params.yaml's data.source and say where to get the Kaggle set; evaluate's
    folder is its DATA argument, whether a skipped pair is noted or no pair is left."""
    data = make_set(tmp_path / "set", scenes=2, grid=2, tile_size=64)
    images = sorted((data / "images").iterdir())
    for image in images[:1] if linked == "one" else images:
        outside = tmp_path / "elsewhere" / image.name
        outside.parent.mkdir(exist_ok=True)
        image.rename(outside)
        image.symlink_to(outside)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(checkpoint), str(data), "--masks", "0/255"])
    out, err = capsys.readouterr()
    said = out if linked == "one" else err
    assert done.value.code == (0 if linked == "one" else 2) and (linked == "one" or err.count("\n") == 1), err
    assert "links outside DATA (" in said and "or set DATA to a folder that holds them" in said, said
    assert "data.source" not in said and "kaggle datasets download" not in said, said


@pytest.mark.parametrize(
    "said, says",
    [
        ("they look like 0/1 masks: set data.masks: '0/1'", "they look like 0/1 masks: pass --masks '0/1'"),
        (
            "read with data.masks: classes and data.forest: [0], JPEG",
            "read with --masks classes and --forest [0], JPEG",
        ),
        ("params.yaml: data.masks: unknown value 'x'", "--masks: unknown value 'x'"),
        ("cut them (README), then set data.source to that folder", "cut them (README), then set DATA to that folder"),
        ("a Mac holds: set data.source to /d/Forest (1)", "a Mac holds: set DATA to /d/Forest (1)"),  # as it is
    ],
)
def test_the_index_advice_is_told_in_evaluates_flags(said: str, says: str) -> None:
    from forestseg.cli import _as_flags

    assert _as_flags(said) == says


@pytest.mark.parametrize(
    "text, value", [("[2]", (2,)), ("[2, 3]", (2, 3)), ("[[0, 255, 0]]", ((0, 255, 0),)), ('["2"]', (2,))]
)
def test_forest_flag_reads_as_params_yaml_does(text: str, value: tuple) -> None:
    from forestseg.cli import _forest

    assert _forest(text) == value


@pytest.mark.parametrize("text", ["[true]", "[[0, 255, true]]", "[2.5]", "2", "{}", "x"])
def test_forest_flag_refuses_what_params_yaml_refuses(text: str) -> None:
    """`--forest [true]` read as class 1 (a bool is an int to Python), where params.yaml refuses it."""
    from forestseg.cli import _forest

    with pytest.raises(ForestsegError, match=r"give a JSON list of class ids, e\.g\. \[2\], or of colours"):
        _forest(text)


def test_a_folders_files_of_other_types_are_listed_as_skipped(checkpoint, tmp_path, capsys) -> None:
    """A folder's .webp or .gif is not predicted (the folder takes IMAGE_SUFFIXES) but never vanishes
    unreported; world files, hidden files and GDAL's .aux.xml are a raster's companions, not skipped."""
    src = tmp_path / "in"
    src.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    for name in ("a.png", "b.webp", "c.gif"):
        Image.fromarray(pixels).save(src / name)
    for name in (
        "a.pgw",
        ".DS_Store",
        "Thumbs.db",
        "desktop.ini",
        "a.png.aux.xml",
        "z.tif.msk",
        "a.qml",
    ):  # .msk: GDAL mask
        (src / name).write_text("x")
    for name in ("sheet_2", ".git"):
        (src / name).mkdir()
    Image.fromarray(pixels).save(src / "sheet_2/d.png")
    assert run_cli(checkpoint, [src], tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "predict: skipped 2 file(s) of other types in the input folder(s): b.webp, c.gif (a folder takes" in err
    assert "predict: did not look into 1 subfolder(s) of the input folder(s): sheet_2 (name a subfolder" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a_mask.png"]
    assert run_cli(checkpoint, [src / "b.webp"], tmp_path / "out2") == 0  # named, it is decoded


@pytest.mark.parametrize("cut", [-1.0, 1.5])
def test_the_model_files_threshold_is_the_cut_predict_uses(checkpoint, scene, tmp_path, cut) -> None:
    """train.threshold: val (or a loss's own cut) is stored in the model file; predict cuts the logits
    there, not at 0, in the library and in the CLI's written mask."""
    state = torch.load(checkpoint, weights_only=False)
    state["threshold"] = cut
    path = tmp_path / "cut.pt"
    torch.save(state, path)
    predictor = Predictor.load(path, torch.device("cpu"), precision="fp32")
    image = np.ascontiguousarray(scene[0][:128, :160])
    logits = predictor.logits(image)
    assert predictor.cut == cut and np.array_equal(predictor.mask(image), logits > cut)
    assert (logits > cut).sum() != (logits > 0).sum()  # the cut matters on this image
    Image.fromarray(image).save(tmp_path / "a.png")
    with pytest.raises(SystemExit):
        main(["predict", str(path), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--precision", "fp32"])
    assert np.array_equal(read_mask(tmp_path / "out/a_mask.png"), logits > cut)


def test_pictures_are_decoded_in_steps_bounded_by_pixels_not_only_count(tmp_path) -> None:
    """Steps of at most `chunk` images and CHUNK_PIXELS pixels, from the headers: tiles share a step,
    a large photo takes one alone (the next step is read ahead, so two steps are held at once)."""
    from forestseg.cli import _groups

    names = []
    for i, side in enumerate([64, 64, 64, 300, 64, 64, 64, 64, 64]):
        names.append(tmp_path / f"{i}.png")
        Image.new("RGB", (side, side)).save(names[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")  # counted as 0 px: its decode reports it
    groups = _groups([*names, tmp_path / "broken.png"], chunk=4, budget=4 * 64 * 64)
    assert [[p.name for p in g] for g in groups] == [
        ["0.png", "1.png", "2.png"],
        ["3.png"],  # 300x300 px alone: over the budget, but a step holds one image at least
        ["4.png", "5.png", "6.png", "7.png"],  # four tiles: the count limit
        ["8.png", "broken.png"],
    ]


def test_ctrl_c_is_one_line_and_exit_130(checkpoint, tmp_path, monkeypatch, capsys) -> None:
    import forestseg.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(forestseg.cli, "predict", interrupted)
    with pytest.raises(SystemExit) as done:
        forestseg.cli.main(["predict", str(checkpoint), str(tmp_path), "-o", str(tmp_path / "out")])
    assert done.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("forestseg predict: interrupted;"), err


@pytest.mark.parametrize(
    "error, says",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory on the GPU"),
        (MemoryError(), "out of memory in host memory"),
        (  # the CPU allocator's: a RuntimeError, not a MemoryError
            RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried"),
            "out of memory in host memory",
        ),
    ],
)
def test_out_of_memory_is_one_line(checkpoint, tmp_path, monkeypatch, capsys, error, says) -> None:
    """A model of large tiles on a small GPU: one line saying what to do, not torch's traceback."""
    import forestseg.cli

    def runs_out(args):
        raise error

    monkeypatch.setattr(forestseg.cli, "evaluate", runs_out)
    with pytest.raises(SystemExit) as done:
        forestseg.cli.main(["evaluate", str(checkpoint), str(tmp_path)])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: forestseg evaluate: {says} (the model runs 32 windows")
    assert ("--device" in err) == (says == "out of memory on the GPU"), err  # on the CPU already: no other device

    def other(error):
        def run(args):
            raise error

        return run

    # any other error stays a traceback, which says where it came from
    for error in (
        IndexError("list index out of range"),
        RuntimeError("shape mismatch"),  # not torch's OutOfMemoryError
        FileNotFoundError(2, "No such file or directory"),  # no file named: not the user's to fix
        UnicodeEncodeError("ascii", "forêt", 3, 4, "ordinal not in range(128)"),  # a print to an ASCII console
    ):
        monkeypatch.setattr(forestseg.cli, "evaluate", other(error))
        with pytest.raises(type(error)):
            forestseg.cli.main(["evaluate", str(checkpoint), str(tmp_path)])


def test_a_name_too_long_for_its_outputs_is_one_line_before_predicting(checkpoint, tmp_path, capsys) -> None:
    """A 245-byte stem fits, its <stem>_overlay.png does not: refused before any prediction, not after it."""
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "in" / ("x" * 245 + ".png"))
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its outputs' names would pass the 255 bytes a file name may have" in err
    assert not list((tmp_path / "out").iterdir())
    with pytest.raises(SystemExit) as done:  # an -o the file system refuses: one line too
        main(["evaluate", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / ("y" * 300 + ".json"))])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "File name too long" in err, err


# --- the tiler's arithmetic, with models whose outputs are known ------------------------------------


class Constant(torch.nn.Module):
    """A model whose raw output is `value` everywhere."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], *x.shape[2:]), self.value, dtype=torch.float32)


class WindowMean(torch.nn.Module):
    """Each window's output is the mean of its red input, everywhere in it: the blend of overlapping
    windows then depends on the blending weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].mean((1, 2), keepdim=True).expand(x.shape[0], *x.shape[2:]).contiguous()


def known_predictor(model: torch.nn.Module, tile: int = 32, cut: float = 0.0, **kw) -> Predictor:
    from forestseg.loader import Normalizer

    return Predictor(model.eval(), Normalizer(), tile, cut, torch.device("cpu"), **kw)


@pytest.mark.parametrize("cut", [0.0, 0.5, -1.25])
@pytest.mark.parametrize("shape", [(32, 32), (70, 90), (20, 24)])
def test_a_raw_output_exactly_at_the_cut_is_not_forest(cut: float, shape: tuple[int, int]) -> None:
    """Forest is output > cut, as training scores it (metrics.confusion): for one image, a batch of
    tile-sized ones, and ones tiled or padded."""
    image = np.zeros((*shape, 3), np.uint8)
    at = known_predictor(Constant(cut), cut=cut)
    assert not at.mask(image).any()
    assert not any(m.any() for m in at.masks([image, image]))
    above = known_predictor(Constant(cut + 2**-10), cut=cut)
    assert above.mask(image).all() and all(m.all() for m in above.masks([image, image]))


@pytest.mark.parametrize(
    "h, w, overlap, block",
    [
        (100, 150, None, 2048),
        (100, 150, 0, 64),
        (70, 200, 10, 40),
        (32, 33, None, 16),
        (20, 50, None, 2048),
        (200, 200, None, 2048),  # where a wrong default overlap runs another number of windows
    ],
)
def test_windows_counts_the_windows_stream_runs(h: int, w: int, overlap, block: int) -> None:
    """The progress bar's total (`windows`) is what `stream` runs, with the default overlap too."""
    p = known_predictor(Constant(0.0))
    ran: list[int] = []
    p.stream(
        lambda r0, r1, c0, c1: np.zeros((r1 - r0, c1 - c0, 3), np.uint8),
        h,
        w,
        lambda *a: None,
        overlap,
        block,
        progress=ran.append,
    )
    assert sum(ran) == p.windows(h, w, overlap, block)


@pytest.mark.parametrize("axis", [0, 1])
def test_a_mirrored_image_gives_mirrored_logits(axis: int) -> None:
    """Windows every 24 px (tile 32, default overlap 8) fit 104 x 128 exactly, so the window grid is its
    own mirror image: with symmetric blending weights the blend of a mirrored image is the mirrored blend."""
    p = known_predictor(WindowMean())
    image = np.random.default_rng(0).integers(0, 256, (104, 128, 3), dtype=np.uint8)
    image[:, :40, 0] //= 4  # windows differ from each other
    logits = p.logits(image)
    mirrored = p.logits(np.ascontiguousarray(np.flip(image, axis)))
    assert np.allclose(mirrored, np.flip(logits, axis), atol=1e-3)
    assert logits.max() - logits.min() > 10


def test_four_windows_blend_by_the_nearest_edge_of_each() -> None:
    """Tile 32, overlap 8, a 56 x 56 image: pixel (28, 28) lies in four windows, 4 px from the nearest edge
    of three (weight 4) and 5 px into the fourth on both axes (weight 5): a window's weight at a pixel is
    its distance to the window's nearest edge, not a product of the two axes' ramps."""
    p = known_predictor(WindowMean())
    image = np.zeros((56, 56, 3), np.uint8)
    for k, (r, c) in enumerate([(0, 0), (0, 28), (28, 0), (28, 28)]):
        image[r : r + 28, c : c + 28, 0] = 30 + 50 * k
    a, b, c, d = (p.logits(image[r : r + 32, c : c + 32].copy())[0, 0] for r, c in [(0, 0), (0, 24), (24, 0), (24, 24)])
    assert p.logits(image)[28, 28] == pytest.approx((4 * a + 4 * b + 4 * c + 5 * d) / 17, rel=1e-5)


def test_overlapping_windows_blend_by_their_weight_at_the_pixel() -> None:
    """Tile 32, overlap 8: windows at columns 0 and 24 of a 32 x 56 image. A pixel they share is the
    mean of their outputs weighted by its distance from each window's edge (the weight ramps up from
    1 at a window's border), so a window's edge pixels, where its context is poorest, count least."""
    p = known_predictor(WindowMean())
    image = np.zeros((32, 56, 3), np.uint8)
    image[:, :28, 0], image[:, 28:, 0] = 40, 200
    a, b = p.logits(image[:, :32].copy())[0, 0], p.logits(image[:, 24:].copy())[0, 0]  # each window alone
    logits = p.logits(image)
    # (16, 28): 4 px from the left window's right edge (weight 4), 4 px into the right one (weight 5)
    assert logits[16, 28] == pytest.approx((4 * a + 5 * b) / 9, rel=1e-5)
    assert logits[16, 10] == pytest.approx(a) and logits[16, 45] == pytest.approx(b)  # one window only
    assert a != b


@pytest.mark.parametrize("loss", ["bce", "mse_logits"])
def test_probability_is_a_sigmoid_except_for_the_studys_mse_on_raw_outputs(loss: str) -> None:
    p = known_predictor(Constant(0.0), loss=loss)
    logits = np.array([-100.0, -2.0, 0.0, 0.25, 0.5, 1.0, 3.0], np.float32)
    expected = np.clip(logits, 0, 1) if loss == "mse_logits" else 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert np.allclose(p.probability(logits), expected, atol=1e-6)


def test_error_map_colours_each_outcome_as_the_legend_names_it() -> None:
    """TP 'forest found', FP 'false forest' (predicted, not true), FN 'missed forest' (true, not predicted)."""
    truth = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    colours = [tuple(int(v) for v in c) for c in error_map(truth, pred)[0]]
    assert colours == [forestseg.predict.TP, forestseg.predict.FN, forestseg.predict.FP, (0, 0, 0)]


def test_partly_transparent_pixels_are_photo_only_fully_transparent_ones_are_not(tmp_path: Path) -> None:
    """As a raster's alpha (geo: dataset_mask > 0): alpha 0 is no photo, any other alpha is."""
    image = np.full((2, 4, 3), 90, np.uint8)
    alpha = np.array([[0, 1, 128, 255]] * 2, np.uint8)
    Image.fromarray(np.dstack([image, alpha]), "RGBA").save(tmp_path / "a.png")
    pixels, opaque = forestseg.predict.read_rgb(tmp_path / "a.png")
    assert np.array_equal(pixels, image) and opaque.tolist() == [[False, True, True, True]] * 2


@pytest.mark.parametrize("pred, says", [(np.zeros((8, 8), bool), "IoU 1.00"), (np.ones((8, 8), bool), "IoU 0.00")])
def test_a_panels_iou_of_a_tile_without_forest_is_scored_as_the_metrics_score_it(pred, says: str) -> None:
    """No forest, none predicted: nothing to get wrong, IoU 1 (metrics._ratio); any forest predicted: 0."""
    _, titles = forestseg.predict.panel_picture(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8), np.uint8), [pred])
    assert f"prediction ({says})" in [t for _, _, t in titles]


def test_scene_windows_takes_ceil_n_over_images_windows_of_each_up_to_n() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]  # 4 windows of 32 px each
    got = forestseg.windows.scene_windows(images, 32, n=5)  # ceil(5 / 3) = 2 of each, cut to 5
    assert len(got) == 5
    assert len(forestseg.windows.scene_windows(images, 32, n=64)) == 12  # every window, fewer than n


def test_scene_windows_of_the_sampled_images_equal_those_of_all() -> None:
    """predict --adapt-bn on a folder decodes only `sample_of` its pictures: the windows it adapts to
    must be those `scene_windows` takes from all of them (as evaluate and train take them)."""
    images = [np.full((32, 32, 3), i, np.uint8) for i in range(100)]
    sampled = [images[i] for i in forestseg.windows.sample_of(len(images))]
    assert np.array_equal(forestseg.windows.scene_windows(sampled, 32), forestseg.windows.scene_windows(images, 32))
    # n windows from n distinct images, sampled, in the images' own order
    n = forestseg.windows.ADAPT_WINDOWS
    indices = forestseg.windows.sample_of(len(images))
    assert len(indices) == n and indices == sorted(set(indices)) and indices != list(range(n))
    assert sorted({int(w[0, 0, 0]) for w in forestseg.windows.scene_windows(images, 32)}) == indices
    assert forestseg.windows.sample_of(10) == list(range(10))  # fewer than n: every one


def write_tiny_model(path: Path, change: dict | None = None, drop: str | None = None) -> Path:
    """A valid model file of a width-4 depth-1 UNet, its fields changed by `change` or one dropped."""
    from forestseg.checkpoint import write_model
    from forestseg.config import ModelConfig, asdict
    from forestseg.model import build_model

    cfg = ModelConfig(width=4, depth=1)
    meta = {"run": "r", "loss": "bce", "threshold": 0.0, "model": asdict(cfg), "tile_size": 32}
    meta["normalizer"] = {"mean": [0.0] * 3, "std": [1.0] * 3}
    meta |= change or {}
    if drop:
        del meta[drop]
    write_model(path, build_model(cfg).state_dict(), meta)
    return path


@pytest.mark.parametrize(
    "change, says",
    [
        ({"adapt_bn": 1.5}, r"adapt_bn 1\.5 is not a number from 0 to 1"),
        ({"adapt_bn": -0.1}, r"adapt_bn -0\.1 is not a number from 0 to 1"),
        ({"normalizer": {"mean": [0.0] * 3, "std": [1.0, 0.0, 1.0]}}, r"normalizer std holds a value below 0\.0001"),
        ({"normalizer": {"mean": [0.0] * 3, "std": [1e-300, 1.0, 1.0]}}, r"normalizer std holds a value below"),
        ({"normalizer": {"mean": [0.0] * 3, "std": [1.0] * 3, "per_tile": "yes"}}, r"per_tile 'yes' is not true or"),
        ({"loss": ["bce"]}, r"loss \['bce'\] is none of"),
        ({"tile_size": 100000}, r"tile_size 100000 is not a whole number of pixels from 1 to 8192"),
        ({"pixel_size_m": 1e-300}, r"pixel_size_m 1e-300 is not a pixel side from 0\.001 to 10000 m"),
        ({"pixel_size_m": 1e5}, r"pixel_size_m 100000\.0 is not a pixel side from 0\.001 to 10000 m"),
        ({"threshold": True}, r"threshold True is not a finite number"),  # a bool is an int to Python
        ({"adapt_bn": True}, r"adapt_bn True is not a number from 0 to 1"),
        ({"train_scenes": [1, 2]}, r"train_scenes \[1, 2\] is not a list of scene names"),
        ({"normalizer": {"mean": [0.0] * 4, "std": [1.0] * 4}}, r"is not a mean and std of 3 finite numbers each"),
    ],
)
def test_a_model_file_with_fields_out_of_range_is_refused(tmp_path: Path, change: dict, says: str) -> None:
    from forestseg.checkpoint import read_model

    read_model(write_tiny_model(tmp_path / "ok.pt"))
    with pytest.raises(ForestsegError, match=says):
        read_model(write_tiny_model(tmp_path / "m.pt", change))


@pytest.mark.parametrize(
    "change",
    [{"adapt_bn": 0.0}, {"adapt_bn": 1.0}, {"pixel_size_m": 1e-3}, {"pixel_size_m": 1e4}, {"tile_size": 1}]
    + [{"tile_size": 8192}],
)
def test_a_model_file_at_the_ends_of_its_ranges_is_read(tmp_path: Path, change: dict) -> None:
    """The ranges the refusals name ("from 0 to 1", "from 0.001 to 10000 m", "from 1 to 8192") hold their ends."""
    from forestseg.checkpoint import read_model

    state = read_model(write_tiny_model(tmp_path / "m.pt", change))
    assert all(state[k] == v for k, v in change.items())


@pytest.mark.parametrize("field", ["model", "normalizer", "tile_size", "threshold", "loss"])
def test_a_model_file_without_a_field_is_named_so(tmp_path: Path, field: str) -> None:
    from forestseg.checkpoint import read_model

    with pytest.raises(ForestsegError, match=rf"file without {field}; it was not written by forestseg's training"):
        read_model(write_tiny_model(tmp_path / "m.pt", drop=field))


@pytest.mark.parametrize("command", [[str(BIN / "forestseg")], [sys.executable, "-m", "forestseg"]])
def test_ctrl_c_while_the_command_loads_its_libraries_is_one_line(tmp_path: Path, command: list[str]) -> None:
    """`forestseg` interrupted during `import torch` (seconds on a slow CPU): exit 130 and one line,
    as Ctrl-C later gives, not a traceback from inside the import."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        [*command, "predict", "m.pt", "a.png", "-o", str(tmp_path / "out")],
        stderr=subprocess.PIPE,
        text=True,
    )
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:  # torch is being imported
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "forestseg: interrupted while starting; nothing was written\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("count", [3, 70])
def test_adapt_bn_windows_of_pictures_are_taken_one_picture_at_a_time_as_before(count: int, tmp_path: Path) -> None:
    """predict --adapt-bn decodes one picture at a time (cli._Opaque: 64 drone photos held at once
    were GBs) and gets the windows `scene_windows` gives over the readable, opaque pictures of the sample."""
    from forestseg.cli import _Opaque
    from forestseg.windows import sample_of, scene_windows

    rng = np.random.default_rng(0)
    paths, images = [], {}
    for i in range(count):
        path = tmp_path / f"p{i:02d}.png"
        image = rng.integers(0, 256, (40 + 8 * (i % 3), 48, 3), dtype=np.uint8)
        if i % 4 == 1:  # a transparent corner: left out
            alpha = np.full(image.shape[:2], 255, np.uint8)
            alpha[0, 0] = 0
            Image.fromarray(np.dstack([image, alpha])).save(path)
        elif i % 4 == 2:  # unreadable: left out
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(image).save(path)
            images[i] = image
        paths.append(path)
    usable = [images[i] for i in sample_of(count) if i in images]

    class Counted(_Opaque):  # which pictures are decoded, and how many decoded ones are alive at each decode
        def __init__(self, pictures: list[Path]) -> None:
            super().__init__(pictures)
            self.read, self.alive, self.most = [], [], 0

        def __getitem__(self, i: int) -> np.ndarray | None:
            self.most = max(self.most, sum(ref() is not None for ref in self.alive))
            self.read.append(i)
            image = super().__getitem__(i)
            if image is not None:
                self.alive.append(weakref.ref(image))
            return image

    lazy = Counted(paths)
    assert np.array_equal(scene_windows(lazy, 8), scene_windows(usable, 8))  # 30-42 windows a picture
    assert lazy.most <= 1 and set(lazy.read) <= set(sample_of(count))  # the last one's windows are copies


def test_init_from_keeps_the_advice_for_another_versions_file(checkpoint, tmp_path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    state["format"] = "forestseg-model/2"
    torch.save(state, tmp_path / "v2.pt")
    with pytest.raises(ForestsegError) as e:
        read_init(tmp_path / "v2.pt", state["model"])
    assert "written by another forestseg version: read it with that version" in str(e.value)
    assert "copy a finished run's model file" not in str(e.value)  # what the user already did


# within a percent of the data's pixel: 0.5 / 0.50502 - 1 = -0.99 %, 0.5 / 0.49502 - 1 = +1.006 %
@pytest.mark.parametrize(
    "pixel, refused",
    [(0.504, False), (0.496, False), (0.506, True), (0.494, True), (0.50502, False), (0.49502, True)],
)
def test_init_from_takes_data_within_a_percent_of_its_pixels(checkpoint, pixel: float, refused: bool) -> None:
    from forestseg.checkpoint import read_model

    state = read_model(checkpoint)
    assert state["pixel_size_m"] == 0.5
    if refused:
        with pytest.raises(ForestsegError, match=r"learned from 0\.5 m pixels, and data\.pixel_size_m says"):
            read_init(checkpoint, state["model"], pixel)
    else:
        assert read_init(checkpoint, state["model"], pixel)["pixel_size_m"] == 0.5


def test_init_from_with_a_dvc_file_but_not_ignored_by_git_is_not_tracked(checkpoint, tmp_path, monkeypatch) -> None:
    """A .dvc file beside the model but no .gitignore for it: git would commit the model file too."""
    import shutil
    import subprocess

    from forestseg.checkpoint import check_init, read_model

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "init").mkdir()
    shutil.copy(checkpoint, tmp_path / "init/m.pt")
    (tmp_path / "init/m.pt.dvc").write_text("outs:\n- path: m.pt\n")
    model = read_model(checkpoint)["model"]
    with pytest.raises(ForestsegError, match=r"init/m\.pt is not tracked by DVC \(no init/m\.pt\.dvc\)"):
        check_init("init/m.pt", model)
    (tmp_path / "init/.gitignore").write_text("/m.pt\n")  # as `dvc add` writes it
    check_init("init/m.pt", model)


def test_init_from_compares_only_what_shapes_the_archs_weights(checkpoint, tmp_path) -> None:
    """study_unet's fixed layers read no width, depth or batch_norm: a file differing there fine-tunes."""
    state = torch.load(checkpoint, weights_only=True)
    state["model"] = {"arch": "study_unet", "width": 16, "depth": 3, "batch_norm": True, "input": "raw"}
    torch.save(state, tmp_path / "study.pt")
    run = {"arch": "study_unet", "width": 8, "depth": 2, "batch_norm": False, "input": "raw"}
    assert read_init(tmp_path / "study.pt", run)["model"]["width"] == 16
    with pytest.raises(
        ForestsegError, match=r"holds a model with input raw; this run's params say model.input normalized"
    ):
        read_init(tmp_path / "study.pt", {**run, "input": "normalized"})
    state["model"] = {"arch": "unet", "width": 16, "depth": 3, "batch_norm": True, "input": "raw"}
    torch.save(state, tmp_path / "unet.pt")
    with pytest.raises(
        ForestsegError, match=r"holds a model with width 16, depth 3; this run's params say model.width 8"
    ):
        read_init(tmp_path / "unet.pt", {**run, "arch": "unet", "batch_norm": True})


def test_a_run_without_adapt_bn_says_nothing_of_adapting(checkpoint, scene, tmp_path, capsys) -> None:
    """The model file adapts nothing (train.adapt_bn 0) and no --adapt-bn: no note on batch-norm windows."""
    Image.fromarray(scene[0][:100, :150]).save(tmp_path / "a.png")
    assert Predictor.load(checkpoint, torch.device("cpu")).adapt_bn == 0
    assert run_cli(checkpoint, [tmp_path / "a.png"], tmp_path / "out") == 0
    assert "batch-norm" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_the_device_asked_for_reaches_the_model(checkpoint, scene, tmp_path, monkeypatch, command: str) -> None:
    """--device (default auto) is what the model is loaded on, for predict and evaluate alike."""
    import forestseg.device

    asked, loaded = [], []
    picked = torch.device("cpu", 0)  # not the plain "cpu" a path that ignores the pick would load on
    monkeypatch.setattr(forestseg.device, "pick_device", lambda pref, key: asked.append((pref, key)) or picked)
    load = Predictor.load

    def spy(checkpoint, device, *a, **k):
        loaded.append(device)
        return load(checkpoint, device, *a, **k)

    monkeypatch.setattr(Predictor, "load", staticmethod(spy))
    Image.fromarray(scene[0][:64, :64]).save(tmp_path / "a.png")
    data = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=TILE)
    given = [str(tmp_path / "a.png"), "-o", str(tmp_path / "out")] if command == "predict" else [str(data)]
    for flags, pref in (([], "auto"), (["--device", "cuda:3"], "cuda:3")):
        with pytest.raises(SystemExit) as done:
            main([command, str(checkpoint), *given, *flags])
        assert done.value.code == 0 and asked.pop() == (pref, "--device") and loaded.pop() == picked


def test_two_inputs_of_one_name_are_refused_before_predicting(checkpoint, tmp_path, capsys) -> None:
    """a.png and a.jpg (or two folders' a.png) would write one a_mask.png: the later's replacing the earlier's."""
    for name in ("x/a.png", "y/a.png", "y/a.jpg", "y/b.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / name)
    for inputs in (
        [tmp_path / "x/a.png", tmp_path / "y/a.jpg"],
        [tmp_path / "x", tmp_path / "y/a.png", tmp_path / "y/b.png"],
    ):
        assert run_cli(checkpoint, inputs, tmp_path / "out") == 2
        assert "several inputs would write the same <name>_mask output: ['a']" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_the_folder_of_a_named_input_is_refused_as_output(checkpoint, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(src / "a.png")
    assert run_cli(checkpoint, [src / "a.png"], src) == 2
    assert f"error: -o {src}: is a folder of input images" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]


def test_the_folder_a_linked_input_lies_in_is_refused_as_output(checkpoint, tmp_path, capsys) -> None:
    """links/a.png -> ../out/a_mask.png with -o out: the input's mask would replace the input itself."""
    (tmp_path / "out").mkdir()
    (tmp_path / "links").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "out/a_mask.png")
    before = (tmp_path / "out/a_mask.png").read_bytes()
    (tmp_path / "links/a.png").symlink_to("../out/a_mask.png")
    assert run_cli(checkpoint, [tmp_path / "links"], tmp_path / "out") == 2
    assert f"error: -o {tmp_path / 'out'}: is a folder of input images" in capsys.readouterr().err
    assert (tmp_path / "out/a_mask.png").read_bytes() == before


def test_a_link_to_an_input_under_another_name_is_said(checkpoint, tmp_path, capsys) -> None:
    """Predicted once (its area would count twice), but its own mask name is not written: say so."""
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "in/a.png")
    (tmp_path / "in/c.png").symlink_to("a.png")
    assert (
        run_cli(checkpoint, [tmp_path / "in/a.png", tmp_path / "in/c.png", tmp_path / "in/a.png"], tmp_path / "o") == 0
    )
    out = capsys.readouterr().out
    assert out.count("is the same file as") == 1  # not for the same name given twice
    assert (
        f"note: {tmp_path / 'in/c.png'} is the same file as {tmp_path / 'in/a.png'}: predicted once, as a_mask" in out
    )
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_mask.png"]


def test_a_pipe_as_input_is_refused_as_no_regular_file(checkpoint, tmp_path, capsys) -> None:
    """The probes read a pipe's bytes before the decoder, which then called it empty (0 bytes)."""
    import os

    os.mkfifo(tmp_path / "p.png")
    assert run_cli(checkpoint, [tmp_path / "p.png"], tmp_path / "o") == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'p.png'}: not a regular file (a pipe or a device); save it to a file first\n"
    )
    # and in an input folder, where predict waited for a writer
    assert run_cli(checkpoint, [tmp_path], tmp_path / "o") == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'p.png'}: not a regular file (a pipe or a device); move it out of {tmp_path}\n"
    )


def test_an_output_name_of_exactly_the_longest_length_is_written(checkpoint, tmp_path, capsys) -> None:
    """<stem>_overlay.png of exactly PC_NAME_MAX bytes (255 on most file systems) is a name the limit allows."""
    import os

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    (tmp_path / "in").mkdir()
    stem = "x" * (limit - len("_overlay.png"))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "in" / f"{stem}.png")
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--overlay"])
    assert done.value.code == 0, capsys.readouterr().err
    assert len(os.fsencode(f"{stem}_overlay.png")) == limit and (tmp_path / "out" / f"{stem}_overlay.png").is_file()


def test_cli_predict_tiles_pictures_with_the_overlap_asked_for(checkpoint, scene, tmp_path) -> None:
    image = np.ascontiguousarray(scene[0][:200, :300])
    Image.fromarray(image).save(tmp_path / "a.png")
    predictor = Predictor.load(checkpoint, torch.device("cpu"))
    with_0 = predictor.mask(image, overlap=0)
    assert not np.array_equal(with_0, predictor.mask(image))  # the default, TILE // 4, tiles it otherwise
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--overlap", "0"])
    assert done.value.code == 0 and np.array_equal(read_mask(tmp_path / "out/a_mask.png"), with_0)


def test_a_folder_without_images_is_refused(checkpoint, tmp_path, capsys) -> None:
    """An empty folder, or one of other files only: exit 2 and why, not a silent run that wrote nothing."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/readme.txt").write_text("x")
    for folder in ("empty", "notes"):
        assert run_cli(checkpoint, [tmp_path / folder], tmp_path / "out") == 2
        assert "error: no images (" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_command_puts_back_the_sigterm_handler_it_found(checkpoint, tmp_path) -> None:
    """main() run in-process (bench scripts, a notebook) leaves SIGTERM as it was, not raising Terminated later."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    assert run_cli(checkpoint, [tmp_path / "a.png"], tmp_path / "out") == 0
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_threads_set_torchs_threads_for_the_command_and_the_sharing_note_is_told(
    command, checkpoint, tmp_path, capsys, monkeypatch
) -> None:
    data = make_set(tmp_path / "set", scenes=1, grid=2, tile_size=TILE)
    seen = []

    def note(started, threads, fix):  # what the command measured its threads against
        seen.append((started is not None, threads, torch.get_num_threads()))
        return "other processes kept 1.2 of this process's 2 cores busy"

    monkeypatch.setattr(forestseg.cores, "busy_note", note)
    before = torch.get_num_threads()
    args = [str(data / "images"), "-o", str(tmp_path / "out")] if command == "predict" else [str(data)]
    with pytest.raises(SystemExit) as done:
        main([command, str(checkpoint), *args, "--threads", "1"])
    assert done.value.code == 0
    assert seen == [(True, 1, 1)]  # measured from the start, with the thread the command runs on
    assert torch.get_num_threads() == before  # put back: the caller's threads are the caller's
    assert "note: other processes kept 1.2 of this process's 2 cores busy\n" in capsys.readouterr().out


@pytest.mark.parametrize("threads", ["0", "-2", "1025"])
def test_threads_out_of_range_is_one_line(threads, checkpoint, tmp_path, capsys) -> None:
    before = torch.get_num_threads()
    with pytest.raises(SystemExit) as done:
        main(["predict", str(checkpoint), str(tmp_path), "-o", str(tmp_path / "out"), "--threads", threads])
    assert done.value.code == 2 and torch.get_num_threads() == before
    assert capsys.readouterr().err == (
        f"error: --threads {threads}: must be in 1..1024 (torch's CPU threads: the cores a run should use)\n"
    )


@pytest.mark.parametrize("batch", [2, 8])
def test_a_tall_image_streams_in_groups_of_rows_as_it_would_in_one(batch: int) -> None:
    """`stream` carries each group of window rows' partial sums (and their weights) into the next: a
    constant model gives its constant everywhere, and any model the logits of one group of all rows."""
    image = np.repeat(np.linspace(0, 255, 400).astype(np.uint8)[:, None, None], 40, axis=1).repeat(3, axis=2)
    flat = known_predictor(Constant(2.0), cut=1.5).logits(image, batch=batch)
    assert np.allclose(flat, 2.0, atol=1e-6)  # weights summed with stale ones gave 0.1 below the first group
    mean = known_predictor(WindowMean())
    assert np.array_equal(mean.logits(image, batch=batch), mean.logits(image, batch=64))  # 64: one group


@pytest.mark.parametrize("tile", [8, 32])
def test_window_starts_cover_every_pixel_at_most_a_stride_apart(tile: int) -> None:
    from forestseg.windows import window_starts

    for stride in range(1, tile + 1):
        for size in range(tile, tile + 3 * stride + 3):
            starts = window_starts(size, tile, stride)
            covered = np.zeros(size, bool)
            for s in starts:
                covered[s : s + tile] = True
            assert starts[0] == 0 and starts[-1] == size - tile and covered.all(), (size, stride, starts)
            assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:])), (size, stride, starts)


def test_a_scene_adapts_on_up_to_64_windows_of_its_images(monkeypatch) -> None:
    """for_scene samples as scene_windows does: two 128-px images of 16 windows each give 32, not fewer."""
    got = []
    monkeypatch.setattr(Predictor, "adapted", lambda self, windows, mix: got.append((len(windows), mix)) or self)
    images = [np.full((128, 128, 3), v, np.uint8) for v in (10, 200)]
    known_predictor(Constant(0.0)).for_scene(images, 0.25)
    assert got == [(32, 0.25)]


def test_scene_windows_share_the_64_windows_evenly_over_the_images() -> None:
    """ceil(64 / 3) = 22 from each image in turn, the last taking what is left."""
    from forestseg.windows import scene_windows

    images = [np.full((256, 256, 3), k, np.uint8) for k in range(3)]  # 64 windows of 32 px each
    windows = scene_windows(images, 32)
    assert [int((windows[:, 0, 0, 0] == k).sum()) for k in range(3)] == [22, 22, 20]


def test_an_overlay_tints_forest_45_percent_green_and_leaves_the_rest() -> None:
    from forestseg.predict import overlay

    image = np.full((1, 2, 3), 200, np.uint8)
    out = overlay(image, np.array([[True, False]]))
    assert out[0, 0].tolist() == [110, 224, 110] and out[0, 1].tolist() == [200, 200, 200]  # 0.55 x 200 + 0.45 x 255


def test_truth_values_already_kept_keep_counting_past_the_limit() -> None:
    from forestseg.evaluate import TruthValues

    seen = TruthValues()
    seen.add(np.arange(TruthValues.KEEP, dtype=np.uint8))  # as many values as it keeps, one pixel each
    seen.add(np.zeros(6, np.uint8))  # more of one it has, then a value past the limit
    seen.add(np.full(3, 250, np.uint8))
    assert seen.counts[0] == 7 and 250 not in seen.counts and seen.others == 3


def test_truth_values_text_shares_every_pixel_and_names_the_first_four() -> None:
    """100 values one pixel each: 64 kept, 36 counted past them; each value is 1 % of all 100 pixels."""
    from forestseg.evaluate import TruthValues

    seen = TruthValues()
    seen.add(np.arange(100, dtype=np.float32))
    assert seen.problem(Path("t.tif")).startswith(
        "t.tif: holds 63 values besides 0 (0 (1.0%), 1 (1.0%), 2 (1.0%), 3 (1.0%) and 60+ more); "
    )


def test_no_images_give_no_windows_to_adapt_to() -> None:
    assert forestseg.windows.scene_windows([], 64).shape == (0, 64, 64, 3)
