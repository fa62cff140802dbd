"""Shared fixtures: tiny synthetic sets made per test, and the real sample where present."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

# `pytest -n 2` runs two workers, each running torch (and its stages, through dvc) on 2 threads, on a
# 2-core machine: OpenMP's threads spin-wait between parallel regions and, oversubscribed, burn the
# cores the other worker needs (tests/test_geo.py: 73 s -> 23 s on an AVX2 EPYC). Passive waiting
# changes no number; set before torch loads, and inherited by every dvc and stage process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The tests send Ctrl-C to the stages and commands they start, which honour a Ctrl-C their caller
# ignores (a script's background job: `.ci/run &` starts with SIGINT ignored, and children inherit
# that). Handled here, the children start with it at its default whoever ran pytest.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import yaml  # noqa: E402

from forestseg.config import SynthConfig  # noqa: E402
from forestseg.synthetic import generate  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

    from forestseg.predict import Predictor

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("FORESTSEG_SAMPLE", REPO.parent / "shared" / "forest-sample"))


@pytest.fixture
def sample_dir() -> Path:
    """The real 1035-pair forest sample (set FORESTSEG_SAMPLE to point elsewhere)."""
    if not (SAMPLE / "meta_data.csv").is_file():
        pytest.skip(f"real forest sample not found at {SAMPLE} (set FORESTSEG_SAMPLE to its folder)")
    return SAMPLE


def make_set(root: Path, scenes: int = 4, grid: int = 2, tile_size: int = 32, seed: int = 0) -> Path:
    """A tiny synthetic Kaggle-layout folder at `root`."""
    generate(root, SynthConfig(scenes=scenes, grid=grid, tile_size=tile_size, seed=seed))
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end (slow) tests first: `pytest -n 2 --dist worksteal` then runs the long ones side
    by side at the start and fills the end with short ones (an idle worker takes tests queued for the
    other), instead of one worker idling while the other finishes a 2-minute dvc run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise


@pytest.fixture(scope="session", autouse=True)
def dvc_site_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """DVC's per-repo site cache (/var/tmp/dvc/repo/<hash> by default) under pytest's temp folder, so the
    temp repos' caches do not pile up outside it; inherited by every dvc process a test starts."""
    before = os.environ.get("DVC_SITE_CACHE_DIR")
    os.environ["DVC_SITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dvc-site-cache"))
    yield
    if before is None:
        os.environ.pop("DVC_SITE_CACHE_DIR")
    else:
        os.environ["DVC_SITE_CACHE_DIR"] = before


@pytest.fixture(autouse=True)
def quiet_cores(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """No note that other processes keep the cores busy in commands and stages run in a test's process:
    under `pytest -n 2` the other worker does, and outputs checked line by line would change with it.
    tests/test_cores.py measures for real; the tests of the note stub busy_note itself."""
    if request.module.__name__ != "test_cores":
        import forestseg.cores

        monkeypatch.setattr(forestseg.cores, "others_busy", lambda since, now: None)


@pytest.fixture
def tiny_set(tmp_path: Path) -> Path:
    """4 scenes x 4 tiles of 32x32, in the Kaggle layout."""
    return make_set(tmp_path / "Forest Segmented")


# --- end-to-end runs of the real pipeline in a temp copy of the repo ----------------------------

BIN = Path(sys.executable).parent
TINY = {
    "synth": {"scenes": 4, "grid": 2, "tile_size": 32},
    "model": {"width": 4, "depth": 2},
    "train": {"epochs": 2, "batch_size": 4, "test_batch_size": 8},
    "grid": {"loss": ["mse", "bce"], "optimizer": ["adam"], "seed": [0]},
}


def sh(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        # dvc exp run commits: give git an identity on machines that have none configured
        "GIT_AUTHOR_NAME": "forestseg-test",
        "GIT_AUTHOR_EMAIL": "test@forestseg",
        "GIT_COMMITTER_NAME": "forestseg-test",
        "GIT_COMMITTER_EMAIL": "test@forestseg",
    }
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def ran(out: subprocess.CompletedProcess) -> set[str]:
    """Names of the stages a dvc command actually ran."""
    return set(re.findall(r"Running stage '([^']+)'", out.stdout + out.stderr))


def in_the_way(folder: Path, above: str) -> str:
    """`folder`/up made "a file" or "a link to nothing" (above an output), and how forestseg names it."""
    up = folder / "up"
    if above == "a file":
        up.write_text("x")
        return f"{up} is a file, where a folder goes"
    up.symlink_to(folder / "gone")
    return f"{up} is a link to {folder / 'gone'}, which does not exist"


def dead_temp_prefix(stem: str) -> str:
    """`io.temp_prefix(stem)` as a process of this machine that has ended would have made it."""
    from forestseg.io import temp_prefix

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return temp_prefix(stem).replace(f"-{os.getpid()}.", f"-{int(done.stdout)}.")


def set_params(repo: Path, changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The project's tracked files copied into a fresh git repo with tiny params."""
    dst = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if rel.startswith(("metrics/", "plots/")) or rel in ("dvc.lock", "REPORT.md") or not (REPO / rel).is_file():
            continue  # outputs of the checkout's own runs
        if rel.endswith(".dvc") or (rel.startswith(("data/", "init/")) and rel.endswith(".gitignore")):
            continue  # a user's own DVC-tracked data (README: Real data): its cache is not copied
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst / rel)
    set_params(dst, TINY)
    sh(dst, "git", "init", "-q")
    # DVC stays offline: the copied .dvc/config sets core.analytics and core.check_update false
    config = (dst / ".dvc/config").read_text()
    assert "analytics = false" in config and "check_update = false" in config
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return dst


def start_dvc(repo: Path, *args: str) -> subprocess.Popen:
    """`dvc <args>` in its own process group with line-buffered output, for tests that act mid-run."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    return subprocess.Popen(
        ["dvc", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_queue(repo: Path, seconds: int = 300) -> str:
    """`dvc queue status` once nothing is queued or running; the workers are stopped either way. Every
    poll is a dvc process (~1.2 s of CPU, on the cores the queue's workers train on): 3 s apart."""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            status = sh(repo, "dvc", "queue", "status").stdout
            if "Running" not in status and "Queued" not in status:
                return status
            time.sleep(3)
    finally:
        sh(repo, "dvc", "queue", "stop", check=False)
    raise AssertionError(f"queue still busy after {seconds} s:\n{status}")


def failed_logs(repo: Path, status: str) -> str:
    """`dvc queue status` followed by the logs of each task it lists as Failed (for assert messages)."""
    failed = [line.split()[0] for line in status.splitlines() if line.endswith(" Failed")]
    return status + "".join(sh(repo, "dvc", "queue", "logs", task, check=False).stdout for task in failed)


def train_small_model(folder: Path, tile: int = 64, width: int = 8, train_seed: int = 0) -> Path:
    """A small model (UNet `width`, depth 2) trained 3 epochs on `tile`-px tiles of two synthetic scenes,
    trained with `train_seed`; returns its model file."""
    import numpy as np
    import torch

    from forestseg.config import ModelConfig, OptimizerConfig, Run, TrainConfig
    from forestseg.loader import Tiles
    from forestseg.synthetic import render_scene
    from forestseg.train import train_run

    images, masks = [], []
    for seed in range(2):
        image, mask = render_scene(np.random.default_rng(seed), 256)
        for y in range(0, 256, tile):
            for x in range(0, 256, tile):
                images.append(image[y : y + tile, x : x + tile])
                masks.append(mask[y : y + tile, x : x + tile])
    tiles = Tiles(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks).astype(np.uint8)))
    train_run(
        Run("bce", "adam", train_seed),
        ModelConfig(width=width, depth=2),
        OptimizerConfig(lr=3e-3),
        TrainConfig(epochs=3, batch_size=8, test_batch_size=16, device="cpu", precision="fp32"),
        tiles,
        tiles,
        folder,
        folder / "resume.pt",
        "test",
        log=lambda s: None,
    )
    return folder / "model.pt"


def flip_a_bit_in_the_largest_tensor(path: Path) -> None:
    """Flip one bit inside the stored bytes of a torch file's largest tensor: damage that torch's own
    reader, which skips the zip checksums, would load as other weights."""
    import struct
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        part = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[part.header_offset + 26 : part.header_offset + 30])
    data[part.header_offset + 30 + name_len + extra_len + part.file_size // 2] ^= 1
    path.write_bytes(bytes(data))


def random_predictor(
    seed: int = 0, depth: int = 2, tta: bool = False, centre_on: np.ndarray | None = None
) -> Predictor:
    """A Predictor of an untrained UNet (width 4, `depth`) on 32-px windows, its weights drawn from
    `seed`, so no view or seed gives another's output. With `centre_on` (images), its output bias is
    shifted so that about half of their pixels are forest."""
    import numpy as np
    import torch

    from forestseg.config import ModelConfig
    from forestseg.loader import Normalizer
    from forestseg.model import build_model
    from forestseg.predict import Predictor

    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="unet", width=4, depth=depth)).eval()
    p = Predictor(model, Normalizer((110.0, 120.0, 100.0), (50.0, 45.0, 40.0)), 32, 0.0, torch.device("cpu"), tta=tta)
    if centre_on is not None:
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            head.bias -= float(np.median(p.windows_logits(centre_on)))
    return p
