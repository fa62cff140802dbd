"""Wall time of `dvc repro` stage by stage (a script, not a test): runs it and stamps every line.

    python bench/repro_stages.py [-- dvc repro args]     # e.g. -- --force

Prints each stage's seconds (from its "Running stage" line, or the line saying it was restored from
the run-cache or unchanged, to the next stage's) and the total, so
the pipeline's own overhead (start-up, imports, DVC's bookkeeping) shows beside the training.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time


def env() -> dict[str, str]:
    """The environment with this interpreter's folder first on PATH: dvc, and the `python` of the stages'
    commands, of this environment; DVC offline."""
    return {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    }


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    cmd = ["dvc", "repro", *(argv[1:] if argv[:1] == ["--"] else argv)]
    t0 = time.perf_counter()
    stages: list[tuple[str, float]] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env())
    lines = []
    for line in proc.stdout:
        now = time.perf_counter() - t0
        lines.append(line)
        # every stage DVC reaches starts a row: run, restored from the run-cache, or unchanged
        found = re.search(r"Running stage '([^']+)'", line)
        cached = re.search(r"Stage '([^']+)' is cached - skipping run", line)
        unchanged = re.search(r"Stage '([^']+)' didn't change, skipping", line)
        if found:
            stages.append((found.group(1), now))
        elif cached:
            stages.append((f"{cached.group(1)} (restored)", now))
        elif unchanged:
            stages.append((f"{unchanged.group(1)} (unchanged)", now))
    rc = proc.wait()
    total = time.perf_counter() - t0
    if rc:  # the timings alone would hide why: DVC's own output
        sys.stdout.write("".join(lines[-40:]))
    print(f"{'stage':<24} {'seconds':>8}")
    ends = [t for _, t in stages[1:]] + [total]
    for (name, start), end in zip(stages, ends):
        print(f"{name:<24} {end - start:>8.1f}")
    print(f"{'before the first stage':<24} {stages[0][1] if stages else total:>8.1f}")
    print(f"{'total (' + ' '.join(cmd) + ')':<24} {total:>8.1f}  exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
