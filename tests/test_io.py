"""forestseg.io: atomic writes; a full disk or a read-only folder is one line naming the file, no litter."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from forestseg.errors import ForestsegError
from forestseg.io import (
    atomic_path,
    fsync_tree,
    read_columns,
    remove_stale_runs,
    write_csv,
    write_error,
    write_json,
    write_npy,
    write_rows,
    write_text,
    write_torch,
)


def test_a_write_replaces_the_file_atomically(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"x": 1})
    write_json(tmp_path / "a.json", {"x": 2})
    assert (tmp_path / "a.json").read_text().strip().endswith("}") and '"x": 2' in (tmp_path / "a.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("writer", ["text", "json", "csv", "rows"])
def test_a_writer_writes_through_a_temp_renamed_onto_the_file(tmp_path: Path, monkeypatch, writer: str) -> None:
    """The file is never open for writing under its own name: a kill leaves the old one or the new."""
    import pandas as pd

    import forestseg.io

    target = tmp_path / "a.out"
    target.write_text("old")
    renames = []

    def replace(src, dst):  # the rename is the only way the target may change; here it fails
        renames.append((Path(src).name, Path(dst)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(forestseg.io.os, "replace", replace)
    write = {
        "text": lambda: forestseg.io.write_text(target, "new"),
        "json": lambda: forestseg.io.write_json(target, {"x": 1}),
        "csv": lambda: forestseg.io.write_csv(target, pd.DataFrame({"x": [1]})),
        "rows": lambda: forestseg.io.write_rows(target, ["x"], [[1]]),
    }[writer]
    with pytest.raises(ForestsegError, match=r"a\.out: cannot write it: no space left on the device"):
        write()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.out"]
    assert len(renames) == 1 and renames[0][1] == target and renames[0][0].startswith(".a.~")


# names of 215-230 bytes (legal with .png), the last one's bytes not UTF-8 (Python reads them as surrogates)
@pytest.mark.parametrize(
    "stem", ["x" * 230, "é" * 115, "森" * 76, "a" + "é" * 114, os.fsdecode(b"Wald_M\xfcnchen" * 15 + b"x" * 5)]
)
@pytest.mark.parametrize("host", ["short", "h" * 63])  # 64 bytes: the longest host name Linux allows, less one
def test_an_output_with_a_long_name_is_written(tmp_path: Path, stem: str, host: str, monkeypatch) -> None:
    """Its temp name (the stem, host, pid, random part and suffixes) must stay within 255 bytes too, on a
    machine of a long name as well, and a name of text gives a temp name of text: cut inside a character,
    GDAL refused it (a lone surrogate)."""
    from forestseg import io
    from forestseg.io import temp_prefix

    monkeypatch.setattr(io, "_host", lambda: host)
    write_text(tmp_path / f"{stem}.png", "x")
    assert [p.name for p in tmp_path.iterdir()] == [f"{stem}.png"]
    if "\udcfc" not in stem:  # not the name of bytes that are no UTF-8
        temp_prefix(stem).encode("utf-8")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert '"x": 1' in (tmp_path / "a.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize(
    "code, says",
    [
        (errno.ENOSPC, r"cannot write it: no space left on the device \(\d+ MiB free\); free some space and rerun"),
        (errno.EROFS, r"cannot write it: the folder is on a read-only file system; make it writable or run elsewhere"),
        (errno.EACCES, r"cannot write it: permission denied; make the folder writable"),
        (errno.EFBIG, r"cannot write it: the file would pass the largest size allowed \(`ulimit -f`, or the file"),
    ],
)
def test_write_errors_name_the_file_and_what_to_do(tmp_path: Path, monkeypatch, code, says) -> None:
    from forestseg import io

    def refuse(parent, prefix, suffix="", folder=False, listed=None):  # as a real refusal, naming the temp
        raise OSError(code, os.strerror(code), os.path.join(parent, f"{prefix}x1y2{suffix}"))

    monkeypatch.setattr(io, "new_temp", refuse)  # the folder refuses new files
    with pytest.raises(ForestsegError, match=rf"^{tmp_path}/a\.npy: {says}"):
        write_npy(tmp_path / "a.npy", np.zeros(3))


def test_a_full_disk_mid_write_leaves_no_temp(tmp_path: Path) -> None:
    def fill(p: Path) -> None:
        p.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    from forestseg.io import write_with

    with pytest.raises(ForestsegError, match="no space left"):
        write_with(tmp_path / "big.npy", fill)
    assert list(tmp_path.iterdir()) == []


def test_torch_reports_a_full_disk_as_one_line(tmp_path: Path, monkeypatch) -> None:
    import torch

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ForestsegError, match=r"last\.pt: cannot write it: no space left on the device"):
        write_torch(tmp_path / "last.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "code, says", [(errno.ENOSPC, "no space left on the device"), (errno.EFBIG, "largest size allowed")]
)
def test_torch_after_the_disk_said_no_is_one_line_of_what_it_said(tmp_path: Path, monkeypatch, code, says) -> None:
    """A nearly full disk: torch's writer hits the OSError, then raises "unexpected pos" without "write"."""
    import torch

    def full(obj, f, *a, **k):
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ForestsegError, match=rf"r\.pt: cannot write it: .*{says}"):
        write_torch(tmp_path / "r.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_the_same_object_is_written_as_the_same_bytes(tmp_path: Path) -> None:
    import torch

    obj = {"weights": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    write_torch(tmp_path / "a.pt", obj)
    write_torch(tmp_path / "b.pt", obj)  # another temp file name: the bytes must not carry it
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt")["weights"]["w"], obj["weights"]["w"])


def test_a_folder_where_the_file_goes_is_one_line_and_no_temp(tmp_path: Path) -> None:
    (tmp_path / "a.json").mkdir()
    with pytest.raises(ForestsegError, match=rf"^{tmp_path}/a\.json: cannot write it: .*; choose another path$"):
        write_json(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    (tmp_path / "f").write_text("x")
    # a file where the parent folder goes (FileExistsError) or where one above it goes (NotADirectoryError)
    for out, blamed in ((tmp_path / "f" / "b.json", tmp_path / "f"), (tmp_path / "f" / "sub" / "b.json", None)):
        with pytest.raises(ForestsegError) as stop:
            write_json(out, {"x": 1})
        said = re.escape(f" ({blamed})") if blamed else r"( \(.*\))?"
        assert re.fullmatch(
            rf"{out}: cannot write it{said}: a file is where a folder goes; choose another path", str(stop.value)
        )


def test_a_killed_runs_temps_are_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    from conftest import dead_temp_prefix

    from forestseg.io import remove_stale_temps, temp_prefix

    dead = dead_temp_prefix("a_mask")
    (tmp_path / f"{dead}x1.tmp.tif").write_text("half a mask")
    (tmp_path / f"{dead}x2").mkdir()  # a map's folder of logits
    (tmp_path / f"{dead}x2" / "logits.tif").write_text("...")
    live = tmp_path / f"{temp_prefix('b_mask')}x3.tmp.tif"  # this process: running
    live.write_text("being written")
    # another machine's, on a shared folder, whose pid has no process here: its machine may still run it
    gone = int(dead_temp_prefix("x").split("-")[-1].rstrip("."))
    other = tmp_path / f".c_mask.~another-host-{gone}.x4.tmp.tif"
    other.write_text("?")
    (tmp_path / ".hidden").write_text("the user's")
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, ".hidden"])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file to another user")
def test_stale_temps_of_another_user_stay_and_are_not_counted(tmp_path: Path) -> None:
    from conftest import dead_temp_prefix

    from forestseg.io import remove_stale_temps

    theirs = [tmp_path / f"{dead_temp_prefix('eval')}x.tmp.json", tmp_path / f"{dead_temp_prefix('e')}d"]
    theirs[0].write_text("{")
    theirs[1].mkdir()
    for path in theirs:
        os.chown(path, 65534, 65534)  # nobody's, in a shared temp folder
    assert remove_stale_temps(tmp_path) == 0
    assert all(path.exists() for path in theirs)


@pytest.mark.parametrize("folder", ["metrics/runs", "models"])
def test_run_folders_of_members_no_longer_in_the_grid_are_removed(tmp_path: Path, folder: str) -> None:
    root = tmp_path / folder
    for name in ("mse-adam-0", "mse-adam-1", "bce-sgd-0", "bce-sgd-1", "notes"):  # notes: not named like a run
        (root / name).mkdir(parents=True)
        (root / name / "x").write_text("x")
    (root / "README.txt").write_text("kept")
    (root / ".mse-sgd-3.removing").mkdir()  # a removal a kill interrupted
    (root / ".mse-sgd-3.removing" / "metrics.json").write_text("{}")
    (root / "bce-sgd-1" / ".gitignore").write_text("/x\n")  # DVC's, tracked by git: it stays
    members = ["mse-adam-0", "mse-adam-1"]  # the grid shrank to one loss
    assert remove_stale_runs(members, root) == ["bce-sgd-0", "bce-sgd-1"]
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "bce-sgd-1", "mse-adam-0", "mse-adam-1", "notes"]
    assert [p.name for p in (root / "bce-sgd-1").iterdir()] == [".gitignore"]
    assert (root / "bce-sgd-1" / ".gitignore").read_text() == "/x\n"
    assert remove_stale_runs(iter(members), root) == []  # nothing left to remove; any iterable of names
    assert remove_stale_runs(members, tmp_path / "missing") == []


ROWS = [["0102", 16, 0.1, float("nan"), "a, b"], ["7", 0, 1e-05, 2.5, 'say "x"']]


def test_write_rows_writes_what_write_csv_writes_of_the_same_rows(tmp_path: Path) -> None:
    """The train stage writes its tables without pandas; aggregate reads them with it, as before."""
    import pandas as pd

    columns = ["scene", "tiles", "lr", "iou", "note"]
    write_rows(tmp_path / "rows.csv", columns, ROWS)
    write_csv(tmp_path / "frame.csv", pd.DataFrame(ROWS, columns=columns))
    assert (tmp_path / "rows.csv").read_bytes() == (tmp_path / "frame.csv").read_bytes()
    write_rows(tmp_path / "empty.csv", columns, [])
    assert (tmp_path / "empty.csv").read_text() == "scene,tiles,lr,iou,note\n"


def test_read_columns_reads_strings_as_written(tmp_path: Path) -> None:
    write_rows(tmp_path / "t.csv", ["scene", "tiles", "note"], [[r[0], r[1], r[4]] for r in ROWS])
    assert read_columns(tmp_path / "t.csv", "note", "scene") == {"note": ["a, b", 'say "x"'], "scene": ["0102", "7"]}
    assert read_columns(tmp_path / "t.csv", "scene") == {"scene": ["0102", "7"]}


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "t.csv: cannot be read as a CSV table (No such file or directory)"),
        ("", "t.csv: no column scene (columns: none)"),
        ("image,subset\na.jpg,test\n", "t.csv: no column scene (columns: image, subset)"),
        ("image,scene\na.jpg\n", "t.csv: cannot be read as a CSV table (a row is shorter than the header)"),
        (b"scene\n\xff\n", "t.csv: cannot be read as a CSV table ("),
    ],
)
def test_read_columns_names_the_file_and_what_is_wrong(tmp_path: Path, text, message: str) -> None:
    path = tmp_path / "t.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ForestsegError) as e:
        read_columns(path, "scene")
    assert str(e.value).startswith(f"{tmp_path}/{message}") and "\n" not in str(e.value)


def test_fsync_tree_flushes_every_file_and_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "out" / "images").mkdir(parents=True)
    for name in ("images/a.png", "images/b.png", "meta_data.csv"):
        (tmp_path / "out" / name).write_text("x")
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    fsync_tree(tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(synced) == sorted(
        map(str, [out, out / "images", *(out / n for n in ("images/a.png", "images/b.png", "meta_data.csv"))])
    )


def test_write_error_names_another_file_but_not_the_path_itself_nor_a_temp_one(tmp_path: Path) -> None:
    out, temp = tmp_path / "out", tmp_path / ".out.~host-1."

    def gone(f: Path | str) -> OSError:
        return FileNotFoundError(errno.ENOENT, "No such file or directory", str(f))

    plain = f"{out}: cannot write it: No such file or directory; choose another path"
    assert str(write_error(out, gone(out))) == plain
    assert str(write_error(out, gone(f"{temp}x1y2.png"), temp=temp)) == plain
    assert str(write_error(out, gone(out / "a.png"), temp=temp)) == plain.replace("it:", f"it ({out / 'a.png'}):")
    read_only = OSError(errno.EROFS, "Read-only file system", str(out / "a.png"))
    assert str(write_error(out, read_only, "the map", name="-o out")) == (
        f"-o out: cannot write the map ({out / 'a.png'}): the folder is on a read-only file system; "
        "make it writable or run elsewhere"
    )


def test_a_full_disk_says_the_free_space_of_the_deepest_folder_there(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "out").mkdir()
    asked, usage = [], shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: asked.append(Path(p)) or usage(p))
    for path in (tmp_path / "out", tmp_path / "out" / "x.npy", tmp_path / "new" / "deeper" / "x.npy"):
        said = str(write_error(path, OSError(errno.ENOSPC, "No space left on device")))
        assert re.search(r"\(\d+ MiB free\); free some space and rerun$", said), said
    assert asked == [tmp_path / "out", tmp_path / "out", tmp_path]


def test_a_file_too_large_met_mid_write_is_one_line_and_no_litter(tmp_path: Path) -> None:
    """`ulimit -f` or a file system's largest file: Python ignores SIGXFSZ, so the write fails with EFBIG."""
    with pytest.raises(ForestsegError, match=r"a\.bin: cannot write it: the file would pass the largest size"):
        with atomic_path(tmp_path / "a.bin"):
            raise OSError(errno.EFBIG, "File too large")
    assert list(tmp_path.iterdir()) == []


def test_a_files_digest_covers_every_chunk(tmp_path: Path) -> None:
    """Two files differing in their last byte, read in chunks shorter than the file: other digests."""
    import hashlib

    from forestseg.io import sha256_of

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 10 + b"1")
    b.write_bytes(b"x" * 10 + b"2")
    assert sha256_of(a, chunk=4) != sha256_of(b, chunk=4)
    assert sha256_of(a, chunk=4) == hashlib.sha256(a.read_bytes()).hexdigest()


def test_an_array_is_written_whole_under_its_own_name(tmp_path: Path) -> None:
    """np.save adds .npy to a name without it: the temp must end in .npy, or the file stays empty."""
    from forestseg.io import write_npy

    write_npy(tmp_path / "images.npy", np.arange(6))
    assert np.array_equal(np.load(tmp_path / "images.npy"), np.arange(6))
    assert [p.name for p in tmp_path.iterdir()] == ["images.npy"]


def test_a_set_of_outputs_is_replaced_all_or_none(tmp_path: Path) -> None:
    """A folder where the set's last file goes: every old file of the set stays (no new mask beside an
    old probability), checked before the first rename."""
    from forestseg.io import replace_together

    old = {name: tmp_path / name for name in ("mask.tif", "prob.tif")}
    for p in old.values():
        p.write_text("old")
    (tmp_path / "forest.geojson").mkdir()  # in the way
    new = {tmp_path / f"new.{p.name}": p for p in old.values()}
    for src in new:
        src.write_text("new")
    new[tmp_path / "new.geojson"] = tmp_path / "forest.geojson"
    (tmp_path / "new.geojson").write_text("new")
    with pytest.raises(ForestsegError):
        replace_together(new)
    assert [p.read_text() for p in old.values()] == ["old", "old"]


def test_a_written_file_is_flushed_before_its_rename(tmp_path: Path, monkeypatch) -> None:
    """fsync, then rename: a crash after the rename never shows an empty file under the output's name."""
    from forestseg import io

    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: events.append("fsync") or fsync(fd))
    monkeypatch.setattr(io.os, "replace", lambda a, b: events.append("replace") or replace(a, b))
    io.write_text(tmp_path / "a.txt", "x")
    assert events[:2] == ["fsync", "replace"], events


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_mode_a_plain_open_would(tmp_path: Path, umask: int) -> None:
    from forestseg.io import write_text

    before = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(before)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_writes_never_set_the_umask(tmp_path: Path, monkeypatch) -> None:
    """predict writes masks in two threads. A process reads its umask only by setting it (to 0, then back),
    so two threads doing that at once can leave it at 0, every later output world-writable: two threads
    calling the old mode helper 20000 times each at a switch interval of 1e-6 s left 21873 wrong modes
    and the umask 0. Outputs get their mode from the system as open() and mkdir() do, never from it."""
    from forestseg.config import SynthConfig
    from forestseg.io import write_text
    from forestseg.synthetic import generate

    def no(*args):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", no)
    write_text(tmp_path / "a.txt", "x")
    generate(tmp_path / "synthetic", SynthConfig(scenes=1, grid=1, tile_size=16))
    assert (tmp_path / "a.txt").read_text() == "x"


def test_json_refuses_nan_and_writes_nothing(tmp_path: Path) -> None:
    from forestseg.io import write_json

    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"iou": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_read_columns_returns_each_name_its_own_column(tmp_path: Path) -> None:
    from forestseg.io import read_columns

    (tmp_path / "s.csv").write_text("note,scene\na,0102\nb,7\n")
    assert read_columns(tmp_path / "s.csv", "scene", "note") == {"scene": ["0102", "7"], "note": ["a", "b"]}


def test_a_removal_a_kill_interrupted_is_finished_by_the_next(tmp_path: Path) -> None:
    from forestseg.io import remove_tree

    (tmp_path / "run").mkdir()
    (tmp_path / ".run.removing").mkdir()
    (tmp_path / ".run.removing/x").write_text("left by a kill")
    remove_tree(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_a_file_outside_any_git_repo_is_nothing_git_would_commit(tmp_path: Path) -> None:
    from forestseg.io import untracked_in_project

    (tmp_path / "init").mkdir()
    (tmp_path / "init/m.pt").write_bytes(b"x")
    assert untracked_in_project(tmp_path / "init/m.pt", tmp_path) is None  # git: 128, not a repository


def test_torchs_other_errors_keep_their_traceback(tmp_path: Path, monkeypatch) -> None:
    """Only a write that failed is a disk's problem: an object torch cannot save is a bug, said as one."""
    import torch

    from forestseg.io import write_torch

    def refuse(obj, f):
        raise RuntimeError("unsupported type")

    monkeypatch.setattr(torch, "save", refuse)
    with pytest.raises(RuntimeError, match="unsupported type"):
        write_torch(tmp_path / "m.pt", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocks, full", [(255, True), (256, False)])  # of 4096 bytes: a MiB is left or not
def test_out_of_room_reads_the_file_systems_state(tmp_path: Path, monkeypatch, blocks: int, full: bool) -> None:
    """Under 1 MiB free is a full disk (GDAL says "Failed to create mask." there), a read-only file
    system is one whatever its room; the test's own temp folder has room."""
    import errno
    import types

    from forestseg.io import out_of_room

    assert out_of_room(tmp_path) is None  # more than a MiB free where tests run
    state = {"f_flag": 0, "f_bavail": blocks, "f_frsize": 4096}
    monkeypatch.setattr(os, "statvfs", lambda folder: types.SimpleNamespace(**state))
    if full:
        assert out_of_room(tmp_path).errno == errno.ENOSPC
    else:
        assert out_of_room(tmp_path) is None
    state["f_flag"] = os.ST_RDONLY
    assert out_of_room(tmp_path).errno == errno.EROFS


def test_a_temp_of_another_users_live_process_stays(tmp_path: Path, monkeypatch) -> None:
    """os.kill(pid, 0) of another user's process raises PermissionError: that process runs, so its temp
    stays (as root, the suite's user, kill never says so: it is made to here)."""
    from conftest import dead_temp_prefix

    from forestseg import io
    from forestseg.io import remove_stale_temps

    (tmp_path / f"{dead_temp_prefix('a_mask')}x.tmp.png").write_text("being written")

    def not_yours(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(io.os, "kill", not_yours)
    assert remove_stale_temps(tmp_path) == 0 and len(list(tmp_path.iterdir())) == 1


def test_a_killed_runs_temps_are_removed_on_a_machine_of_a_dotted_name(tmp_path: Path, monkeypatch) -> None:
    """node01.cluster.local: the temp name carries the host with its dots made '_', which the stale-temp
    pattern reads back (a dot in it, the killed run's leftovers were never removed)."""
    from conftest import dead_temp_prefix

    from forestseg.io import remove_stale_temps

    monkeypatch.setattr("socket.gethostname", lambda: "node01.cluster.local")
    dead = tmp_path / f"{dead_temp_prefix('x_mask')}abc.tmp.tif"
    dead.write_text("half")
    assert ".~node01_cluster_local-" in dead.name
    assert remove_stale_temps(tmp_path) == 1 and not list(tmp_path.iterdir())


def test_a_full_disk_on_a_sets_second_file_names_that_file(tmp_path: Path) -> None:
    from forestseg.io import atomic_paths

    with pytest.raises(ForestsegError) as e:
        with atomic_paths(tmp_path / "a.tif", tmp_path / "b.tif") as (_, second):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(second))
    assert str(e.value).startswith(f"{tmp_path / 'b.tif'}: cannot write it: no space left on the device"), e.value
    assert not list(tmp_path.iterdir())


def test_read_columns_skips_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("image,scene\n0102,1\n\n0103,2\n")
    assert read_columns(tmp_path / "t.csv", "image", "scene") == {"image": ["0102", "0103"], "scene": ["1", "2"]}


def test_the_project_folder_itself_is_not_an_untracked_path_in_it(tmp_path: Path) -> None:
    """data.source '.' (the project): git would commit files in it, but the folder is the project, not a
    data folder to `dvc add`."""
    import subprocess

    from forestseg.io import untracked_in_project

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("x")
    assert untracked_in_project(tmp_path, tmp_path) is None
    assert untracked_in_project(tmp_path / "a.txt", tmp_path) == Path("a.txt")  # a file in it is


@pytest.mark.parametrize(
    "mask",
    [
        np.ones((1, 1), bool),
        np.zeros((3, 7), bool),
        np.ones((5, 2), bool),
        np.random.default_rng(0).random((256, 256)) > 0.5,
        (np.random.default_rng(1).random((40, 60)) > 0.3)[::2, 1::3],  # a view, not contiguous
    ],
    ids=["1x1", "empty", "full", "noise", "view"],
)
def test_mask_png_reads_back_as_0_and_255_grey(tmp_path: Path, mask: np.ndarray) -> None:
    """predict's masks are encoded by forestseg: Pillow, GDAL and forestseg's own reader agree on them."""
    import io as stdio

    import rasterio
    from PIL import Image

    from forestseg.images import decode
    from forestseg.io import mask_png

    data = mask_png(mask)
    with Image.open(stdio.BytesIO(data)) as im:
        assert (im.mode, im.size) == ("L", mask.shape[::-1])
        assert np.array_equal(np.asarray(im), mask * np.uint8(255))
    (tmp_path / "m.png").write_bytes(data)
    with rasterio.open(tmp_path / "m.png") as src:  # GDAL checks every chunk's CRC
        assert np.array_equal(src.read(1), mask * np.uint8(255))
    assert np.array_equal(decode(data).pixels, mask * np.uint8(255))


def test_new_temp_draws_again_where_a_name_is_taken_and_gives_up_in_the_end(tmp_path: Path, monkeypatch) -> None:
    from forestseg import io

    names = iter(["taken", "taken", "free"])
    monkeypatch.setattr(io.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".a.taken.tmp").write_text("another writer's")
    assert io.new_temp(tmp_path, ".a.", ".tmp") == tmp_path / ".a.free.tmp"
    assert (tmp_path / ".a.taken.tmp").read_text() == "another writer's"
    monkeypatch.setattr(io.secrets, "token_hex", lambda n: "taken")
    monkeypatch.setattr(io, "TEMP_TRIES", 3)
    with pytest.raises(FileExistsError, match="no free temp name after 3 tries"):
        io.new_temp(tmp_path, ".a.", ".tmp")


def test_a_signal_as_a_temp_is_made_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    """A SIGTERM right after the temp file exists, before its writer had listed it for clean-up, left it
    for good (a kill fuzz of `evaluate -o` found one): the path is listed before the file is made."""
    import signal

    from forestseg import io
    from forestseg.errors import Terminated, terminate

    class SignalledAsMade:  # forestseg.io's os, whose open makes the file and then takes a SIGTERM
        def __getattr__(self, name: str):
            return getattr(os, name)

        def open(self, path, *args):
            os.close(os.open(path, *args))
            os.kill(os.getpid(), signal.SIGTERM)
            return -1  # never reached: the handler raises at once

    monkeypatch.setattr(io, "os", SignalledAsMade())
    before = signal.signal(signal.SIGTERM, terminate)
    try:
        with pytest.raises(Terminated):
            io.write_text(tmp_path / "a.txt", "x")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_inside_an_atomic_write_names_its_output_not_the_temp(tmp_path) -> None:
    """A writer that wraps atomic_paths' temp in an atomic write of its own reports that temp: the
    outer one says its output instead; other errors pass unchanged."""
    from forestseg.io import atomic_paths

    final = tmp_path / "images.npy"
    with pytest.raises(ForestsegError) as err:
        with atomic_paths(final) as (tmp,):
            raise ForestsegError(f"{tmp}: cannot write it: no space left on the device (0 MiB free)")
    assert str(err.value) == f"{final}: cannot write it: no space left on the device (0 MiB free)"

    class Kind(ForestsegError):  # a DataError, a PictureError: callers catch those by kind
        pass

    with pytest.raises(Kind) as err:
        with atomic_paths(final) as (tmp,):
            raise Kind(f"{tmp}: cannot write it")
    assert str(err.value) == f"{final}: cannot write it"
    other = ForestsegError("data row 3: an empty cell")
    with pytest.raises(ForestsegError) as err:
        with atomic_paths(final):
            raise other
    assert err.value is other and not list(tmp_path.iterdir())
