"""forestseg.cores: how busy other processes keep this process's cores, measured from /proc/stat."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from forestseg import cores
from forestseg.cores import CpuClock, busy_note, busy_seconds, cpu_clock, others_busy, sharing_note

SPIN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 30: pass"
STAT = """cpu  900 0 300 5000 100 0 0 0 0 0
cpu0 100 10 30 2000 50 5 5 7 40 0
cpu1 500 0 100 1000 20 0 0 0 0 0
cpu2 300 0 200 2000 30 0 0 0 0 0
intr 123456 0 0

ctxt 987654
"""


def clock(wall: float, own: float, **busy: float) -> CpuClock:
    return CpuClock(wall, {int(k[1:]): v for k, v in busy.items()}, own)


def test_busy_seconds_are_the_cores_own_lines_less_idle_iowait_and_steal() -> None:
    """cpu0: user 100 + nice 10 + system 30 + irq 5 + softirq 5 ticks (guest's 40 are in user, steal's 7
    are not this machine's processes), at 100 ticks a second; the summary line and the other cores left out."""
    assert busy_seconds(STAT, {0, 2}, 100) == {0: 1.5, 2: 5.0}
    assert busy_seconds(STAT, {5}, 100) == {}  # a core without a line (lxcfs renumbers them): nothing measured


@pytest.mark.parametrize(
    ("since", "now", "expected"),
    [
        (clock(0, 1.0, c0=10.0, c1=0.0), clock(2, 2.0, c0=12.0, c1=1.0), 1.0),  # 3 CPU s on the cores, 1 its own
        (clock(0, 1.0, c0=10.0), clock(0.5, 1.0, c0=10.5), 1.0),
        (clock(0, 1.0, c0=10.0), clock(1, 1.02, c0=10.0), 0.0),  # its own time counted in ticks: never below 0
        (clock(0, 0.0, c0=0.0), clock(1, 0.0, c0=1.04), 1.0),  # ticks of two samples: never above the cores
        (clock(0, 1.0, c0=10.0), clock(1, 1.0, c0=10.5, c1=9.0), 0.5),  # a core that came online: not counted
        (clock(0, 1.0, c0=10.0), clock(0.1, 1.0, c0=10.2), None),  # too short to tell
        (
            clock(0, 0.0, **{f"c{i}": 0.0 for i in range(64)}),
            clock(0.5, 0.0, **{f"c{i}": 0.1 for i in range(64)}),
            None,
        ),
        (clock(0, 0.0, **{f"c{i}": 0.0 for i in range(64)}), clock(1, 0.0, **{f"c{i}": 0.1 for i in range(64)}), 6.4),
        (clock(0, 0.0), clock(1, 0.0), None),  # no core measured
        (None, clock(2, 2.0, c0=12.0), None),
        (clock(0, 1.0, c0=10.0), None, None),
    ],
)
def test_others_busy_is_the_cores_cpu_time_less_its_own_per_second(since, now, expected) -> None:
    assert others_busy(since, now) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("others", "threads", "cores", "suggested"),
    [
        (1.2, 2, 2, 1),  # a training on 2 cores' worth of work, evaluate on both: the measured worst case
        (2.0, 2, 2, 1),  # nothing left: one thread shares least
        (0.75, 2, 2, 1),  # three quarters of a core hold it
        (0.74, 2, 2, None),  # less: noise of start-up, not a process holding a core
        (1.2, 1, 2, None),  # fits
        (2.0, 1, 2, None),  # one thread waits on no other thread: fewer cannot help
        (1.74, 4, 4, 3),
        (1.75, 4, 4, 2),
        (3.0, 6, 8, 5),
        (3.0, 5, 8, None),
        (0.0, 4, 2, None),  # more threads than cores, alone: no other process to tell of
        (None, 2, 2, None),  # not measured
    ],
)
def test_sharing_note_where_threads_and_busy_cores_exceed_the_cores(others, threads, cores, suggested) -> None:
    note = sharing_note(others, threads, cores)
    if suggested is None:
        assert note is None
        return
    assert note.startswith(f"other processes kept {others:.1f} of this process's {cores} cores busy")
    assert f"its {threads} torch threads share cores" in note and note.endswith(
        f"give --threads {suggested} (all torch threads together no more than the cores)"
    )


def test_sharing_note_names_what_to_set() -> None:
    note = sharing_note(1.0, 4, 4, fix="set train.threads: {} for runs beside them")
    assert note.endswith(
        "or set train.threads: 3 for runs beside them (all torch threads together no more than the cores)"
    )


def test_cpu_clocks_own_time_holds_its_threads_and_its_waited_for_children(monkeypatch) -> None:
    """A bench's child processes (bench/speed.py probes the peak in one) are its own work, not another's."""
    if cpu_clock() is None:
        pytest.skip("no /proc/stat (not Linux): nothing is measured and no note is given")
    times = SimpleNamespace(user=1.0, system=2.0, children_user=3.0, children_system=4.0)
    monkeypatch.setattr(cores.os, "times", lambda: times)
    assert cpu_clock().own == 10.0


def test_cpu_clock_counts_its_own_cpu_time_on_its_cores() -> None:
    before = cpu_clock()
    if before is None:
        pytest.skip("no /proc/stat (not Linux): nothing is measured and no note is given")
    assert set(before.busy) == os.sched_getaffinity(0)
    t = time.process_time()
    while time.process_time() - t < 0.3:  # this process's CPU time, whoever else runs
        pass
    after = cpu_clock()
    ticks = 0.01 * (len(before.busy) + 1)  # each count truncated to 10 ms ticks, per core and per process
    assert after.own - before.own >= 0.3 - ticks  # (0.29 read as 0.2899... once)
    assert sum(after.busy.values()) - sum(before.busy.values()) >= after.own - before.own - 2 * ticks  # on its cores


@pytest.mark.skipif(cpu_clock() is None, reason="no /proc/stat (not Linux)")
def test_busy_note_of_a_process_beside_spinning_ones() -> None:
    """A spinning process per core: whatever else runs (another test worker), its cores are held."""
    n = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    try:
        time.sleep(0.2)
        since = cpu_clock()
        time.sleep(max(1.0, 0.02 * n))
        note = busy_note(since, threads=n + 1)
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    assert note is not None and f"its {n + 1} torch threads share cores" in note, note
    assert busy_note(None, threads=n + 1) is None  # not measured at the start: nothing to tell


def cgroup_files(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "files, cgroups, quota",
    [
        ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # v2, no limit
        ({"cpu.max": "200000 100000\n"}, "0::/\n", 2.0),  # docker --cpus 2, in the container's own namespace
        # nested: the least along the path counts (a pod's 1.5 over a container's 4)
        (
            {"cpu.max": "max 100000\n", "kube/cpu.max": "150000 100000\n", "kube/c1/cpu.max": "400000 100000\n"},
            "0::/kube/c1\n",
            1.5,
        ),
        # the host's path in /proc/self/cgroup, the container's own mount: its root is read
        ({"cpu.max": "50000 100000\n"}, "0::/docker/abc123\n", 0.5),
        # v1, its controllers in one folder; -1 is no limit
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            "4:cpu,cpuacct:/\n2:memory:/x\n",
            3.0,
        ),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n", None),
        # v1's cpuset controller is not cpu: its path is no CPU quota's
        (
            {"cpu/x/cpu.cfs_quota_us": "50000\n", "cpu/x/cpu.cfs_period_us": "100000\n"},
            "3:cpuset:/x\n4:cpu,cpuacct:/y\n",
            None,
        ),
        ({"cpu.max": "junk\n"}, "0::/\n", None),  # unreadable: said as nothing, never an error
        ({"cpu.max": "100000 0\n"}, "0::/\n", None),  # a period of 0: no division by it
        ({"cpu.max": "-100000 100000\n"}, "0::/\n", None),
        # outside the namespace's root (the kernel writes "/../x"): the mount's root only, never above it
        ({"cpu.max": "max 100000\n", "../x/cpu.max": "50000 100000\n"}, "0::/../x\n", None),
        ({}, "0::/\n", None),  # no cgroup files at all (not Linux, or not mounted)
    ],
)
def test_cpu_quota_is_the_least_along_the_cgroup_path(tmp_path, files, cgroups, quota) -> None:
    assert cores.cpu_quota(cgroup_files(tmp_path / "cg", files), cgroups) == quota  # "../x" lands in tmp_path


@pytest.mark.parametrize(
    "quota, threads, suggested",
    [(2.0, 64, 2), (1.5, 4, 1), (0.5, 2, 1), (2.0, 2, None), (1.5, 2, None), (None, 64, None)],
)
def test_quota_note_where_torch_threads_exceed_the_cpu_quota(monkeypatch, quota, threads, suggested) -> None:
    """torch sizes its threads by the cores it sees, not the quota: more threads than the quota's
    CPUs (rounded up) are throttled in turn."""
    monkeypatch.setattr(cores, "cpu_quota", lambda: quota)
    note = cores.quota_note(threads, "set train.threads: {}")
    if suggested is None:
        assert note is None
        return
    assert note == (
        f"this process's cgroup allows {quota:g} CPUs' worth of time (a CPU quota: docker --cpus, a Kubernetes "
        f"limit) and it runs {threads} torch threads, which the quota throttles in turn; set train.threads: {suggested}"
    )


def test_cpu_quota_finds_a_v1_mount_whose_name_lists_the_controllers_in_another_order(tmp_path) -> None:
    """CentOS 7 writes "cpuacct,cpu" in /proc/self/cgroup; the mount is cpu,cpuacct, with cpu a link to it."""
    cgroup_files(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    assert cores.cpu_quota(tmp_path, "3:cpuacct,cpu:/\n") == 2.0


@pytest.mark.parametrize("threads, allowed, said", [(2, 1, True), (8, 2, True), (2, 2, False), (1, 4, False)])
def test_cores_note_where_torch_threads_exceed_the_cores_allowed(threads, allowed, said) -> None:
    note = cores.cores_note(threads, "set train.threads: {}", cores=allowed)
    assert note == (
        f"this process may run on {allowed} core(s) (taskset, a Slurm or container cpuset) and it runs {threads} "
        f"torch threads, which take turns on them and wait on each other; set train.threads: {allowed}"
        if said
        else None
    )


def test_thread_notes_say_when_a_cpuset_holds_fewer_cores_than_the_threads(monkeypatch) -> None:
    """2 threads under `taskset -c 0` with nothing else running said nothing: the note on other
    processes counts only their work, and torch's threads alone outnumbered the core."""
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(cores, "cpu_quota", lambda: None)
    monkeypatch.setattr(cores, "busy_note", lambda since, threads, fix: "busy")
    assert cores.thread_notes(None, 2) == [cores.cores_note(2, cores=1)]  # said once, as the cores' note
    assert cores.thread_notes(None, 1) == ["busy"]
