"""Two torch processes on the same cores (a script, not a test): the default pipeline's `dvc repro
--force` with a `forestseg evaluate` started beside it, against each alone.

    python bench/contention.py [DATA] [--threads 1] [--delay 8] [--cap 120] [--repeats 3]

DATA is a labelled folder to evaluate (default $FORESTSEG_SAMPLE, else the clone's synthetic set). In
a clone of HEAD, after one `dvc repro` that makes the data and the models, it times:

  1. `dvc repro --force` alone, `forestseg evaluate` alone on torch's threads and with --threads
  2. both at once, --repeats times: evaluate started --delay seconds into the repro (into its
     training), on torch's threads, then with --threads (how much sharing costs varies from run to
     run: each repeat is a row)

An evaluate still running after --cap seconds is stopped (SIGTERM) and reported as "> cap"; the repro
then finishes alone, so its time beside it is a lower bound. Each row says whether evaluate, and any train
stage of the repro, printed the note that other processes kept its cores busy.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.repro_stages import env  # noqa: E402

NOTE = "other processes kept"  # the start of forestseg's note that the cores are shared


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, t0: float, cap: float | None = None) -> tuple[float, bool, str]:
    """(seconds from t0 to its end, whether it was stopped at the cap, its output); a failure stops the bench."""
    try:
        out, _ = proc.communicate(timeout=None if cap is None else max(0.0, t0 + cap - time.perf_counter()))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate()
        return time.perf_counter() - t0, True, out
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, proc.args))} failed (exit {proc.returncode}):\n{out[-3000:]}")
    return time.perf_counter() - t0, False, out


def timed(work: Path, repro: bool, evaluate: list[str] | None, delay: float, cap: float) -> dict:
    """Seconds of `dvc repro --force` and of `evaluate`, which starts `delay` s into the repro where both run."""
    row: dict = {}
    proc = start(["dvc", "repro", "--force"], work) if repro else None
    t_repro = time.perf_counter()
    try:
        if evaluate is not None:
            if proc is not None:
                time.sleep(delay)
            t_eval = time.perf_counter()
            row["evaluate"], row["stopped"], out = finish(start(evaluate, work), t_eval, cap)
            row["note"] = NOTE in out
        if proc is not None:
            row["repro"], _, out = finish(proc, t_repro)
            row["repro_note"] = NOTE in out  # the train stages' note
    finally:
        if proc is not None and proc.poll() is None:  # evaluate failed: no repro left running in a deleted folder
            proc.kill()
            proc.wait()
    return row


def cell(row: dict, key: str, cap: float) -> str:
    if key not in row:
        return "-"
    if key == "evaluate" and row["stopped"]:
        return f"> {cap:.0f} (stopped)"
    return f"{row[key]:.1f}"


def table(rows: list[tuple[str, dict]], cap: float) -> str:
    """Each row's seconds and its slowdown against the first row that ran the same command: the repro
    alone, evaluate alone with the same --threads (`cmd`; a stopped evaluate: the cap's)."""
    repro_alone = next(r["repro"] for _, r in rows if "repro" in r)
    lines = [f"{'what':<46} {'repro s':>9} {'x alone':>8} {'evaluate s':>16} {'x alone':>8}  notes (evaluate/repro)"]
    for name, r in rows:
        times = []
        for key in ("repro", "evaluate"):
            alone = repro_alone
            if key == "evaluate" and key in r:
                alone = next(o[key] for _, o in rows if key in o and o.get("cmd") == r.get("cmd"))
            slower = f"{r[key] / alone:.1f}" if key in r else "-"
            if key == "evaluate" and r.get("stopped"):  # it ran past the cap until SIGTERM ended it
                slower = f"> {cap / alone:.1f}"
            times += [cell(r, key, cap), slower]
        note = "/".join(("yes" if r[k] else "no") if k in r else "-" for k in ("note", "repro_note"))
        lines.append(f"{name:<46} {times[0]:>9} {times[1]:>8} {times[2]:>16} {times[3]:>8}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "data", nargs="?", type=Path, help="labelled folder to evaluate (default: the sample, else synthetic)"
    )
    ap.add_argument("--threads", type=int, default=1, help="evaluate's --threads in the second pair (default 1)")
    ap.add_argument("--delay", type=float, default=8.0, help="seconds into the repro that evaluate starts")
    ap.add_argument("--cap", type=float, default=120.0, help="seconds after which evaluate is stopped")
    ap.add_argument("--repeats", type=int, default=3, help="times each side-by-side pair runs")
    args = ap.parse_args(argv)
    sample = os.environ.get("FORESTSEG_SAMPLE")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
        finish(start(["dvc", "repro"], work), time.perf_counter())
        data = (args.data or (Path(sample) if sample else work / "data" / "synthetic")).resolve()
        evaluate = [sys.executable, "-m", "forestseg", "evaluate", "models/bce-adam-0/model.pt", str(data)]
        few = [*evaluate, "--threads", str(args.threads)]
        print(f"evaluate: {data}; dvc repro --force: the default pipeline of {REPO.name} at HEAD", flush=True)
        rows = []
        pairs = [
            ("side by side, evaluate on torch's threads", True, evaluate),
            (f"side by side, evaluate --threads {args.threads}", True, few),
        ]
        for name, repro, cmd in [
            ("dvc repro --force alone", True, None),
            ("evaluate alone (torch's threads)", False, evaluate),
            (f"evaluate alone (--threads {args.threads})", False, few),
            *((f"{name} #{i + 1}", repro, cmd) for i in range(args.repeats) for name, repro, cmd in pairs),
        ]:
            rows.append((name, {**timed(work, repro, cmd, args.delay, args.cap), "cmd": cmd and " ".join(cmd)}))
            print(f"{name}: {rows[-1][1]}", flush=True)
    print(table(rows, args.cap))


if __name__ == "__main__":
    main()
