"""How busy other processes keep this process's CPU cores. torch's threads that, with another
process's, outnumber the cores slow both far more than sharing the cores explains (a pipeline beside
an evaluate on 2 cores: 2.5x-16x, bench/contention.py), so predict, evaluate and the train stage say
so where they start beside other work. Reads Linux's /proc/stat, without torch (sampled before torch
loads). The cores are those the process may run on (taskset, Slurm's cpusets); a CPU quota without a
cpuset (`docker --cpus`) is not seen."""

from __future__ import annotations

import math
import os
import time
from typing import NamedTuple

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
