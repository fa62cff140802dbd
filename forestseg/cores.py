"""How busy other processes keep this process's CPU cores. torch's threads that, with another
process's, outnumber the cores slow both far more than sharing the cores explains (a pipeline beside
an evaluate on 2 cores: 2.5x-16x, bench/contention.py), so predict, evaluate and the train stage say
so where they start beside other work. Reads Linux's /proc/stat, without torch (sampled before torch
loads). The cores are those the process may run on (taskset, Slurm's cpusets); a CPU quota without a
cpuset (`docker --cpus`, a Kubernetes CPU limit), which torch's default threads do not see either, is read
from the process's cgroups (`cpu_quota`) and said where the threads exceed it."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import NamedTuple

CGROUP = Path("/sys/fs/cgroup")
QUIET = 0.1  # cores' worth of other processes' work under which a bench's machine counts as quiet
BUSY_CORE = 0.75  # of a core's time, from which another process counts as holding that core


class CpuClock(NamedTuple):
    wall: float  # seconds, monotonic
    busy: dict[int, float]  # CPU seconds each core this process may run on has been busy, since boot
    own: float  # this process's own CPU seconds (its threads, user and system, and its waited-for children's)


def busy_seconds(stat: str, cores: set[int], hz: int) -> dict[int, float]:
    """{core: busy seconds} of /proc/stat's text, for `cores`: all but idle and iowait, and steal (time
    the hypervisor gave another machine: no process here used it, and fewer threads do not win it back)."""
    busy = {}
    for line in stat.splitlines():
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores and len(fields) >= 7:
            ticks = [int(t) for t in fields[:7]]  # user nice system idle iowait irq softirq (guest is in user)
            busy[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4]) / hz
    return busy


def cpu_clock() -> CpuClock | None:
    """Now, on the cores this process may run on; None where Linux's /proc/stat cannot be read."""
    try:
        cores = os.sched_getaffinity(0)
        with open("/proc/stat") as f:
            stat = f.read()
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, ValueError):
        return None
    t = os.times()
    return CpuClock(
        time.monotonic(), busy_seconds(stat, cores, hz), t.user + t.system + t.children_user + t.children_system
    )


def others_busy(since: CpuClock | None, now: CpuClock | None) -> float | None:
    """Cores' worth of CPU that other processes used on this process's cores between two clocks (the
    cores of both), at most those cores; None where either is missing or they are too close to tell: the
    kernel counts each core in ticks of 10 ms, so the window grows with the cores."""
    if since is None or now is None:
        return None
    cores = since.busy.keys() & now.busy.keys()
    wall = now.wall - since.wall
    if not cores or wall < max(0.2, 0.01 * len(cores)):
        return None
    others = sum(now.busy[c] - since.busy[c] for c in cores) - (now.own - since.own)
    return min(float(len(cores)), max(0.0, others / wall))


def sharing_note(others: float | None, threads: int, cores: int, fix: str = "give --threads {}") -> str | None:
    """A note where `threads` torch threads and the cores other processes hold (BUSY_CORE of a core's
    time each) together exceed the cores and fewer threads would fit: each process then waits on threads
    the other has descheduled. `fix` says what to set, with {} for the threads that fit (at least 1)."""
    if others is None:
        return None
    held = math.floor(others + 1 - BUSY_CORE)  # 0.75 -> 1, 1.75 -> 2
    fit = max(1, cores - held)
    if held < 1 or threads <= fit:  # one thread waits on no other: no fewer threads would help
        return None
    return (
        f"other processes kept {others:.1f} of this process's {cores} cores busy while it started: its "
        f"{threads} torch threads share cores with them, which can slow both several-fold; wait for them, or "
        f"{fix.format(fit)} (all torch threads together no more than the cores)"
    )


def busy_note(since: CpuClock | None, threads: int, fix: str = "give --threads {}") -> str | None:
    """sharing_note for the time since `since` on this process's cores."""
    if since is None:
        return None
    return sharing_note(others_busy(since, cpu_clock()), threads, len(since.busy), fix)


def cpu_quota(root: Path = CGROUP, cgroups: str | None = None) -> float | None:
    """CPUs' worth of time this process's cgroups allow it, the least along its cgroup's path up to the
    hierarchy's root (cgroup v2's cpu.max, v1's cpu.cfs_quota_us / cpu.cfs_period_us); None where none is
    set or none can be read. `cgroups`: /proc/self/cgroup's text (read where not given)."""
    try:
        text = Path("/proc/self/cgroup").read_text() if cgroups is None else cgroups
    except (OSError, ValueError):  # a cgroup name of bytes that are no UTF-8
        return None
    limits = []
    for line in text.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if not controllers:  # v2: "0::/its/path"
            base, files = root, ("cpu.max",)
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/its/path" (CentOS 7: "cpuacct,cpu")
            mounts = (root / "cpu", root / controllers, root / "cpu,cpuacct")  # 'cpu' is a link to the joint mount
            base, files = next((m for m in mounts if m.is_dir()), mounts[0]), ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        # in a container the path may be the host's while the mount is the container's own: its
        # folders up to the root are read as far as they exist; a path outside the namespace's root
        # ("/../x") is read at the root only
        parts = [p for p in path.strip().split("/") if p]
        folder = base.joinpath(*parts) if ".." not in parts else base
        for d in (folder, *(p for p in folder.parents if p.is_relative_to(base))):
            limits.append(_limit(d, files))
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _limit(folder: Path, files: tuple[str, ...]) -> float | None:
    """One cgroup's CPU quota in CPUs, or None (no limit, or not readable there)."""
    try:
        if len(files) == 1:
            text = (folder / files[0]).read_text().split()[:2]
            if text[:1] == ["max"]:
                return None
            quota, period = (int(t) for t in text)
        else:
            quota, period = (int((folder / f).read_text()) for f in files)
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def quota_note(threads: int, fix: str = "give --threads {}", quota: float | None = None) -> str | None:
    """A note where `threads` torch threads exceed the CPU quota (`cpu_quota` unless given): torch sizes
    its threads by the cores it sees, and the quota then throttles them in turn. `fix` as for sharing_note."""
    quota = cpu_quota() if quota is None else quota
    if quota is None or threads <= math.ceil(quota):
        return None
    return (
        f"this process's cgroup allows {quota:g} CPUs' worth of time (a CPU quota: docker --cpus, a Kubernetes "
        f"limit) and it runs {threads} torch threads, which the quota throttles in turn; "
        f"{fix.format(max(1, math.floor(quota)))}"
    )


def cores_note(threads: int, fix: str = "give --threads {}", cores: int | None = None) -> str | None:
    """A note where `threads` torch threads exceed the cores this process may run on (`cores`, else its
    affinity: taskset, a Slurm or container cpuset), with nothing else running there: the threads take
    turns on the cores, and each step waits on the ones descheduled. `fix` as for sharing_note."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            return None
    if threads <= cores:
        return None
    return (
        f"this process may run on {cores} core(s) (taskset, a Slurm or container cpuset) and it runs {threads} "
        f"torch threads, which take turns on them and wait on each other; {fix.format(cores)}"
    )


def thread_notes(
    since: CpuClock | None, threads: int, fix: str = "give --threads {}", quota_fix: str | None = None
) -> list[str]:
    """What a process about to run `threads` torch threads on the CPU tells first: cores_note, else
    busy_note (since `since`, with `fix`), and quota_note (these two with `quota_fix`, else `fix`), those
    that apply."""
    over = cores_note(threads, quota_fix or fix)
    return [n for n in (over or busy_note(since, threads, fix), quota_note(threads, quota_fix or fix)) if n]
