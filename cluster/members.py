"""Print the grid's members (train@<member> stages), all or one job-array task's share.

usage: python cluster/members.py                 every member, one per line
       python cluster/members.py --task K N      members K, K+N, K+2N, ... (task K of N)
"""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from common import check_all, params  # noqa: E402

from forestseg.errors import ForestsegError  # noqa: E402


def main(argv: list[str]) -> None:
    (grid,) = params("grid")
    # Every other section validated too: a worker or array task with a bad value fails here, at once,
    # not after its data stages ran (and an afterok coordinator never starts on half a grid).
    check_all()
    names = [run.name for run in grid.runs()]
    if argv[:1] == ["--task"]:
        if len(argv) != 3 or not all(re.fullmatch("[0-9]+", a) for a in argv[1:]) or not int(argv[1]) < int(argv[2]):
            raise ForestsegError("usage: members.py --task K N (0 <= K < N)")
        k, n = int(argv[1]), int(argv[2])
        names = names[k::n]
    elif argv:
        raise ForestsegError("usage: members.py [--task K N]")
    if names:  # an array task with no share prints nothing (the worker then has nothing to train)
        print("\n".join(names))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ForestsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
