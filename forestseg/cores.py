"""How busy other processes keep this process's CPU cores. torch's threads that, with another
process's, outnumber the cores slow both far more than sharing the cores explains (a pipeline beside
an evaluate on 2 cores: 2.5x-16x, bench/contention.py), so predict, evaluate and the train stage say
so where they start beside other work. Reads Linux's /proc/stat, without torch (sampled before torch
loads)."""

from __future__ import annotations

import os
import time
from typing import NamedTuple


class CpuClock(NamedTuple):
    wall: float  # seconds, monotonic
    cores_busy: float  # CPU seconds spent on this process's cores by anything
    own: float  # this process's own CPU seconds (its threads, user and system, and its waited-for children's)


def cpu_clock() -> CpuClock | None:
    """Now, on the cores this process may run on (taskset, Slurm, a cpuset); None where Linux's
    /proc/stat cannot be read."""
    try:
        cores = os.sched_getaffinity(0)
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, ValueError):
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            ticks = [int(t) for t in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is in user)
            busy += sum(ticks) - ticks[3] - ticks[4]
    t = os.times()
    return CpuClock(time.monotonic(), busy / hz, t.user + t.system + t.children_user + t.children_system)


def others_busy(since: CpuClock | None, now: CpuClock | None) -> float | None:
    """Cores' worth of CPU that other processes used on this process's cores between two clocks; None
    where either is missing or they are too close to tell (the kernel counts in ticks of 10 ms)."""
    if since is None or now is None or now.wall - since.wall < 0.2:
        return None
    others = (now.cores_busy - since.cores_busy) - (now.own - since.own)
    return max(0.0, others / (now.wall - since.wall))


def sharing_note(others: float | None, threads: int, cores: int, fix: str = "give --threads {}") -> str | None:
    """A note where `threads` torch threads and the other processes' busy cores together exceed the
    cores: each process then waits on threads the other has descheduled. `fix` says what to set, with
    {} for the threads that would fit (at least 1)."""
    if others is None or round(others) < 1 or threads + round(others) <= cores:
        return None
    return (
        f"other processes kept {others:.1f} of this process's {cores} cores busy while it started: its "
        f"{threads} torch threads share cores with them, which can slow both several-fold; wait for them, or "
        f"{fix.format(max(1, cores - round(others)))} (all torch threads together no more than the cores)"
    )


def busy_note(since: CpuClock | None, threads: int, fix: str = "give --threads {}") -> str | None:
    """sharing_note for the time since `since` on this process's cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity (not Linux): no /proc/stat either, so nothing measured
        return None
    return sharing_note(others_busy(since, cpu_clock()), threads, cores, fix)
