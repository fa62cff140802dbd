"""forestseg.cores: how busy other processes keep this process's cores, measured from /proc/stat."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from forestseg.cores import CpuClock, busy_note, cpu_clock, others_busy, sharing_note

SPIN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 30: pass"


@pytest.mark.parametrize(
    ("since", "now", "expected"),
    [
        (CpuClock(0.0, 10.0, 1.0), CpuClock(2.0, 13.0, 2.0), 1.0),  # 3 CPU s on the cores, 1 of them its own
        (CpuClock(0.0, 10.0, 1.0), CpuClock(0.5, 10.5, 1.0), 1.0),
        (CpuClock(0.0, 10.0, 1.0), CpuClock(1.0, 10.0, 1.02), 0.0),  # its own time counted in ticks: never below 0
        (CpuClock(0.0, 10.0, 1.0), CpuClock(0.1, 10.2, 1.0), None),  # too short to tell
        (None, CpuClock(2.0, 13.0, 2.0), None),
        (CpuClock(0.0, 10.0, 1.0), None, None),
    ],
)
def test_others_busy_is_the_cores_cpu_time_less_its_own_per_second(since, now, expected) -> None:
    assert others_busy(since, now) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("others", "threads", "cores", "suggested"),
    [
        (1.2, 2, 2, 1),  # a training on 2 cores' worth of work, evaluate on both: the measured worst case
        (2.0, 2, 2, 1),  # nothing left: one thread shares least
        (1.2, 1, 2, None),  # fits
        (0.4, 2, 2, None),  # less than a core's worth: noise of start-up, not a sharing process
        (0.0, 4, 2, None),  # more threads than cores, alone: no other process to tell of
        (3.0, 6, 8, 5),
        (3.0, 5, 8, None),
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


def test_cpu_clock_counts_its_own_cpu_time_and_the_cores() -> None:
    before = cpu_clock()
    if before is None:
        pytest.skip("no /proc/stat (not Linux): nothing is measured and no note is given")
    t = time.monotonic()
    while time.monotonic() - t < 0.3:
        pass
    after = cpu_clock()
    assert after.wall - before.wall >= 0.3
    assert after.own - before.own >= 0.2  # this process spun for 0.3 s
    assert after.cores_busy - before.cores_busy >= after.own - before.own - 0.05  # its own time is on its cores


def _measured_on_core_0(spin_on: int) -> float:
    """others_busy of a process on core 0 over 1 s while another process spins on core `spin_on`."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN], preexec_fn=lambda: os.sched_setaffinity(0, {spin_on}))
    try:
        time.sleep(0.2)  # the spinner running
        measure = (
            "import os, time\nfrom forestseg.cores import cpu_clock, others_busy\nos.sched_setaffinity(0, {0})\n"
            "a = cpu_clock(); time.sleep(1.0); print(others_busy(a, cpu_clock()))"
        )
        out = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True, check=True)
        return float(out.stdout)
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or not {0, 1} <= os.sched_getaffinity(0), reason="needs cores 0 and 1"
)
def test_only_the_processes_own_cores_count() -> None:
    """A process spinning on the measuring process's core is seen; one on another core is not (taskset,
    Slurm's cpusets: the cores a process may use are the ones its threads would share)."""
    assert _measured_on_core_0(spin_on=0) >= 0.6
    assert _measured_on_core_0(spin_on=1) <= 0.4


@pytest.mark.skipif(cpu_clock() is None, reason="no /proc/stat (not Linux)")
def test_busy_note_of_a_process_beside_a_spinning_one() -> None:
    cores = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(cores)]  # every core busy
    try:
        time.sleep(0.2)
        since = cpu_clock()
        time.sleep(1.0)
        note = busy_note(since, threads=cores)
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    assert note is not None and f"its {cores} torch threads share cores" in note, note
    assert busy_note(cpu_clock(), threads=1) is None  # no time passed: nothing measured


def test_sharing_note_names_what_to_set() -> None:
    note = sharing_note(1.0, 4, 4, fix="set train.threads: {} for runs beside them")
    assert note.endswith(
        "or set train.threads: 3 for runs beside them (all torch threads together no more than the cores)"
    )


@pytest.mark.skipif(cpu_clock() is None, reason="no /proc/stat (not Linux)")
def test_a_waited_for_childs_cpu_time_is_its_own() -> None:
    """A bench's child processes (bench/speed.py probes the peak in one) are its own work, not another's."""
    since = cpu_clock()
    subprocess.run([sys.executable, "-c", SPIN.replace("< 30", "< 0.8")], check=True)
    others = others_busy(since, cpu_clock())
    assert others is not None and others < 0.3, others  # the child's ~0.8 s counted as others: ~0.8
