"""Atomic writes (a killed run leaves either the old file or the new one, never half of one), digests,
folder removal, and whether git would commit a path of the project."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import ForestsegError

# Write-side failures that the user fixes outside forestseg: say which path and what to do.
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device ({free} free); free some space and rerun",
    errno.EDQUOT: "disk quota exceeded; free some space and rerun",
    errno.EROFS: "the folder is on a read-only file system; make it writable or run elsewhere",
    errno.EACCES: "permission denied; make the folder writable",
    errno.EPERM: "permission denied; make the folder writable",
    errno.EFBIG: "the file would pass the largest size allowed (`ulimit -f`, or the file system's); raise it",
}

WRITE_ERRNOS = frozenset(_WRITE_ERRORS)  # the errors of the disk or folder, whose fix write_error says


def out_of_room(folder: str | Path) -> OSError | None:
    """Why nothing can be written in `folder` now (a full disk, a read-only file system), as the
    OSError write_error words, or None: for libraries (GDAL) that report it as their own failure."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    if stat.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS))
    if stat.f_bavail * stat.f_frsize < 1 << 20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def write_error(
    path: str | Path, e: OSError, what: str = "it", name: str | None = None, temp: str | Path | None = None
) -> ForestsegError:
    """One line for an OSError met while writing `path` (`what` of it, e.g. "the synthetic set"; `name`
    how the user gave it, e.g. "-o tiles"), ending in what to do: for a full disk, a quota, a read-only
    folder or a permission the fix; else the system's reason and "choose another path". The file that
    failed is named where it is neither `path` nor a temp file, whose names start with `temp` (the
    writer's temp folder or file, gone by the time the user reads this)."""
    path = Path(path)
    failed = str(e.filename) if e.filename else ""
    shown = failed and failed != str(path) and not (temp and failed.startswith(str(temp)))
    head = f"{name or path}: cannot write {what}" + (f" ({failed})" if shown else "")
    if e.errno not in _WRITE_ERRORS:  # a folder in the way, a file where a folder should be, ...
        why = "a file is where a folder goes" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        return ForestsegError(f"{head}: {why or e}; choose another path")
    try:
        free = f"{shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free / 2**20:.0f} MiB"
    except (OSError, StopIteration):
        free = "unknown"
    return ForestsegError(f"{head}: {_WRITE_ERRORS[e.errno].format(free=free)}")


def need_folder(path: Path, fix: str) -> None:
    """A ForestsegError where `path` is no folder, said as what is there (a file, or nothing), then `fix`."""
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "no such folder"
        raise ForestsegError(f"{path}: {what}; {fix}")


_TEMP = re.compile(r"^\..*\.~(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.")  # what temp_prefix makes


def _host() -> str:
    """This machine's name as temp names carry it (`_TEMP`'s host group)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


TEMP_STEM = 100  # bytes of an output's stem a temp name keeps: with the host (<= 64), the pid, 8
# random characters and forestseg's short suffixes it stays within a file system's 255 bytes


TEMP_TRIES = 10000  # names new_temp draws before it gives up, as mkstemp does: never a loop without end


def new_temp(parent: Path, prefix: str, suffix: str = "", folder: bool = False, listed: list | None = None) -> Path:
    """A new file (or folder) of a unique name in `parent`, with the mode a plain open() (mkdir()) gives:
    0o666 (0o777) less the umask, which the system applies. Not mkstemp, whose files are owner-only:
    changing their mode after needs the umask, which a process reads only by setting it, and two
    threads doing so at once can leave it at 0 (every later output world-writable). With `listed`, the
    path is appended to it before the file exists: a Ctrl-C or SIGTERM (raised between any two Python
    instructions) right after it is made can no longer leave it out of the caller's clean-up."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    listed = [] if listed is None else listed
    for _ in range(TEMP_TRIES):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        listed.append(path)
        try:
            if folder:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, flags, 0o666))
            return path
        except FileExistsError:  # taken (this process's own temps carry its host and pid): draw again
            listed.pop()
    raise FileExistsError(errno.EEXIST, f"no free temp name after {TEMP_TRIES} tries", str(parent / prefix))


def temp_prefix(stem: str) -> str:
    """The name start of a temp file or folder beside an output: hidden, and naming its machine and
    process, so a later run can tell a killed run's leftovers (`remove_stale_temps`) from a live one's."""
    cut = os.fsencode(stem)[:TEMP_STEM]
    try:  # a name of text: cut at a character's end (half a character is a lone surrogate, which GDAL refuses)
        stem.encode("utf-8")
        kept = cut.decode("utf-8", "ignore")
    except UnicodeEncodeError:  # a name of bytes that are no UTF-8: its own bytes, cut
        kept = os.fsdecode(cut)
    return f".{kept}.~{_host()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: Path) -> int:
    """Remove the temp files and folders (`temp_prefix`) that killed runs on this machine left in
    `folder`; those of running processes, of other machines sharing the folder and of other users
    (a shared temp folder) stay. Returns how many were removed."""
    host, uid = _host(), os.getuid()
    removed = 0
    for entry in folder.glob(".*"):
        m = _TEMP.match(entry.name)
        if not (m and m["host"] == host and not _alive(int(m["pid"]))):
            continue
        try:
            if entry.lstat().st_uid != uid:  # another user's (a shared temp folder): theirs to remove
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: left as it is
            continue
        removed += 1
    return removed


def clear_stale_temps(folder: Path, log: Callable[[str], Any] = print) -> int:
    """`remove_stale_temps`, saying through `log` what it removed: no file of a folder goes unsaid."""
    removed = remove_stale_temps(folder)
    if removed:
        log(f"note: removed {removed} temp file(s) or folder(s) that a killed earlier run left in {folder}")
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def _temps_of(path: Path) -> Path:
    """How a write's temp files beside `path` are named (a prefix): never the file to blame."""
    return path.parent / temp_prefix(path.stem)


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[tuple[Path, ...]]:
    """Yield a temp path beside each of `paths`; on success all are fsynced first, then renamed onto
    theirs one right after another (replace_together): files that belong together change within
    microseconds, never one while another is still being flushed (seconds for a large array)."""
    finals, temps = [Path(p) for p in paths], []
    try:
        for path in finals:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # Keep the real suffix last: numpy, matplotlib and PIL pick the format from it.
                new_temp(path.parent, _temps_of(path).name, f".tmp{path.suffix}", listed=temps)
            except OSError as e:
                raise write_error(path, e, temp=_temps_of(path)) from None
        try:
            yield tuple(temps)
        except ForestsegError as e:  # a writer that wraps a temp in a write of its own names it: say the output
            said = str(e)
            for tmp, final in zip(temps, finals):
                said = said.replace(str(tmp), str(final))
            e.args = (said, *e.args[1:])  # the same error, its kind (DataError, ...) and fields kept
            raise
        replace_together(dict(zip(temps, finals)))
    except OSError as e:
        if e.errno in _WRITE_ERRORS:  # a full disk or a read-only folder mid-write: one line, no litter
            failed = str(e.filename or "")
            path = next((p for p in finals if failed.startswith(str(_temps_of(p)))), finals[0])
            raise write_error(path, e, temp=_temps_of(path)) from None
        raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def replace_together(moves: dict[Path, Path]) -> None:
    """Move finished files (temp files on the same file system) onto their paths, each fsynced first,
    then renamed one right after another: one output (atomic_path), or a set that belongs together (a
    map, its probability, its polygons), which then changes within milliseconds, never while one is written."""
    for src, dst in moves.items():
        # before the first rename: a folder in the way (which os.replace refuses, but not a link to one,
        # which it replaces) leaves every old file in place
        if dst.is_dir() and not dst.is_symlink():
            raise write_error(dst, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
        with open(src, "rb") as f:
            os.fsync(f.fileno())
    for src, dst in moves.items():
        try:
            os.replace(src, dst)
        except OSError as e:  # any reason: the writers' own errors are not these
            raise write_error(dst, e, temp=src) from None


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` (and itself) to disk: a folder written whole and then
    renamed into place (`forestseg tile`) holds no empty or cut file after a power cut."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the system can (not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to fsync a folder: nothing more to do there
        pass
    finally:
        os.close(fd)


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> None:
    """Atomically write `path` with writer(tmp_path)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text(path: str | Path, text: str) -> None:
    write_with(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """JSON as the standard has it: a NaN or infinity raises rather than writing a file other readers refuse."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame without its index."""
    write_with(path, lambda p: frame.to_csv(p, index=False, lineterminator="\n"))


def write_rows(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write plain rows as write_csv writes a DataFrame of them (a NaN as an empty field), without
    pandas: importing it takes ~0.5 s, which every train stage would pay for two small tables."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(columns)
            out.writerows([("" if isinstance(v, float) and math.isnan(v) else v) for v in row] for row in rows)

    write_with(path, write)


def read_columns(path: str | Path, *names: str) -> dict[str, list[str]]:
    """The named columns of a CSV file with a header, as strings (a scene "0102" stays "0102"); a
    ForestsegError naming the file where it cannot be read or lacks one of them."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows, [])
            missing = [n for n in names if n not in header]
            if missing:
                raise ForestsegError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(header) or 'none'})")
            at = [header.index(n) for n in names]
            values = [[row[i] for i in at] for row in rows if row]
    except (OSError, UnicodeDecodeError, csv.Error, IndexError) as e:
        reason = (
            "a row is shorter than the header" if isinstance(e, IndexError) else getattr(e, "strerror", None) or str(e)
        )
        raise ForestsegError(f"{path}: cannot be read as a CSV table ({reason})") from None
    return {n: [row[k] for row in values] for k, n in enumerate(names)}


def write_npy(path: str | Path, array: np.ndarray) -> None:
    write_with(path, lambda p: np.save(p, array))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def mask_png(mask: np.ndarray) -> bytes:
    """A (H, W) bool mask as the bytes of an 8-bit grey PNG of 0 and 255. Encoded here, not by Pillow,
    which tries five filters on every row: rows left unfiltered and deflated as runs (a mask is runs of
    two values) take a third of its time at zlib level 1 for ~60 % of its bytes (0.2 against 0.65 ms a
    256-px tile, on cores that predict's forward passes share)."""
    height, width = mask.shape
    rows = np.zeros((height, width + 1), np.uint8)  # each row: its filter type (0: none), then its pixels
    np.multiply(mask, 255, out=rows[:, 1:], casting="unsafe")
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    # 8 bits, grey (colour type 0), deflate, filter method 0, no interlace
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", deflate.compress(rows.tobytes()) + deflate.flush()),
            _png_chunk(b"IEND", b""),
        ]
    )


def plural(n: int, noun: str) -> str:
    """'1 run', '8 runs'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def write_figure(path: str | Path, fig: Any, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG; the figures lay themselves out (layout="constrained"), so no
    bbox_inches="tight", which draws every figure twice."""
    write_with(path, lambda p: fig.savefig(p, dpi=dpi))


def write_torch(path: str | Path, obj: Any) -> None:
    import torch

    def save(tmp: Path) -> None:
        # Through a file object: torch then names the archive's folder "archive", not after the temp
        # file's random name, so the same object gives the same bytes (and DVC the same hash).
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    try:
        write_with(path, save)
    except RuntimeError as e:  # torch's zip writer: "file write failed", or "unexpected pos" after the OSError
        if isinstance(e.__context__, OSError):  # what the disk said (ENOSPC, EFBIG, ...)
            raise write_error(Path(path), e.__context__) from None
        if "write" not in str(e):
            raise
        raise write_error(Path(path), OSError(errno.ENOSPC, str(e))) from None


def sha256_of(path: str | Path, chunk: int = 1 << 24) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (packed arrays are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


REMOVING = ".removing"  # suffix of a folder renamed away by remove_tree, deleted next


def remove_tree(path: str | Path) -> None:
    """Delete a folder so that a kill leaves it whole or gone from its name: rename it to a hidden
    `.<name>.removing` beside it, then delete that (a leftover one is deleted by the next call)."""
    path = Path(path)
    hidden = path.with_name(f".{path.name}{REMOVING}")
    if hidden.exists():
        shutil.rmtree(hidden)
    os.replace(path, hidden)
    shutil.rmtree(hidden)


RUN_FOLDER = re.compile(r"[A-Za-z0-9_]+-[A-Za-z0-9_]+-[0-9]+")  # <loss>-<optimizer>-<seed>, as Run.name


def remove_stale_runs(members: Iterable[str], folder: str | Path) -> list[str]:
    """Delete the run folders under `folder` (metrics/runs, models) of runs not named in `members`
    (left by a grid that has since shrunk, or by git), so no old run passes for a current one and no
    stage's folder dependency holds their outputs; returns their names, sorted. DVC's .gitignore in
    such a folder stays: git tracks it, and a grid grown back has its outputs restored from the cache
    without DVC writing it again (an experiment then committed the outputs to git). Entries that are
    not named like a run are left alone."""
    folder, members = Path(folder), set(members)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name.startswith(".") and entry.name.endswith(REMOVING):  # a removal a kill interrupted
            shutil.rmtree(entry)
        elif RUN_FOLDER.fullmatch(entry.name) and entry.name not in members:
            ignore = entry / ".gitignore"
            contents = list(entry.iterdir())
            if contents == [ignore]:  # a removed run's: its .gitignore alone
                continue
            if not contents:
                entry.rmdir()
                continue
            kept = ignore.read_bytes() if ignore.is_file() else None
            remove_tree(entry)
            if kept is not None:
                entry.mkdir()
                write_with(ignore, lambda tmp, kept=kept: Path(tmp).write_bytes(kept))
            removed.append(entry.name)
    return removed


def read_utf8(path: str | Path, what: str | None = None) -> str:
    """The text of `path`; a file that is not UTF-8 (saved as Latin-1 by an editor, say) is one
    ForestsegError naming it (`what`, else the path) and the first bad byte. OSError is the caller's."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ForestsegError(
            f"{what or path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_yaml(text: str, what: str) -> Any:
    """YAML as DVC reads params.yaml (YAML 1.2, ruamel's safe loader), so a stage runs on the values
    that dvc.lock records: PyYAML's YAML 1.1 reads `010` as 8 and `yes` as true, where DVC has 10 and
    'yes'. A duplicate key is an error, not a silent last-one-wins. `what` names the text in errors."""
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.error import MarkedYAMLError

    for line, text_line in enumerate(text.lstrip("\ufeff").splitlines(), 1):  # the directives: before any content
        if text_line.strip() and not text_line.startswith(("#", "%")):
            break
        version = text_line.split()[1] if text_line.startswith("%YAML") and len(text_line.split()) > 1 else "1.2"
        if version != "1.2":  # ruamel obeys the directive, DVC's reader does not
            raise ForestsegError(
                f"{what}: line {line}: a %YAML {version} directive would have the stages read values "
                "otherwise than DVC records them (DVC reads YAML 1.2 whatever it says: 010 as 10, yes as the "
                "text 'yes'); remove that line"
            )
    try:
        return YAML(typ="safe", pure=True).load(text)
    except MarkedYAMLError as e:  # ruamel's own text spans lines, quotes the YAML and links its docs
        at, start = e.problem_mark, e.context_mark
        where = f" at line {at.line + 1}, column {at.column + 1}" if at is not None else ""
        # where the broken construct began (an unclosed quote is found only at the end of the file)
        began = (
            f" ({' '.join(str(e.context).split())} at line {start.line + 1}, column {start.column + 1})"
            if start is not None
            and ("scanning" in str(e.context) or "flow" in str(e.context))
            and (at is None or start.line != at.line)
            else ""
        )
        raise ForestsegError(f"{what}: not valid YAML{where}: {' '.join(str(e.problem).split())}{began}") from None
    except YAMLError as e:
        raise ForestsegError(f"{what}: not valid YAML ({' '.join(str(e).split())})") from None


def link_in_project(path: str | Path, project: str | Path = ".") -> Path | None:
    """The link that `path` goes through inside `project` (itself or a folder above it, relative to the
    project) where git would commit it (not ignored): `dvc exp run`'s commit takes the files it shows
    (a review: a link to the real sample put its 2072 files in an experiment's commit); None otherwise."""
    project = Path(project).resolve()
    given = Path(os.path.abspath(path))  # '..' folded, links kept
    try:
        rel = given.relative_to(project)
    except ValueError:
        return None
    for k in range(1, len(rel.parts) + 1):
        link = Path(*rel.parts[:k])
        if (project / link).is_symlink():
            return link if _git_would_commit(link, project) else None
    return None


def _git_would_commit(path: Path, project: Path) -> bool:
    """Whether git in `project` would commit `path`: neither ignored (DVC-tracked or generated) nor
    outside a git repo, and git there at all."""
    try:
        out = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=project, capture_output=True)
    except OSError:  # no git: nothing would commit it
        return False
    return out.returncode == 1  # 0: ignored; 128: not a git repo


def untracked_in_project(path: str | Path, project: str | Path = ".") -> Path | None:
    """`path` relative to `project` if it lies inside the project and git would commit it (neither
    DVC-tracked nor ignored: `dvc exp run` would put it in git, and queued experiments would not see
    it); None otherwise (outside the project, ignored, or no git repo)."""
    try:
        path, project = Path(path).resolve(), Path(project).resolve()
    except (OSError, RuntimeError):  # a symlink loop: not a folder git could commit; its reader names it
        return None
    if not path.is_relative_to(project) or path == project:
        return None
    return path.relative_to(project) if _git_would_commit(path, project) else None
