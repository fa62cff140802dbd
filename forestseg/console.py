"""The `forestseg` command. Its libraries (torch, GDAL) take seconds to load; Ctrl-C meanwhile ends
as it does later, with one line and exit 130, not a traceback from inside an import."""

from __future__ import annotations

import os
import signal
import sys


def while_starting(signum: int, frame: object) -> None:
    print("forestseg: interrupted while starting; nothing was written", file=sys.stderr)
    os._exit(130)  # as a shell reports Ctrl-C; no import is left half done to unwind


def main() -> None:
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # an ignored Ctrl-C (`trap '' INT`) stays so
        signal.signal(signal.SIGINT, while_starting)  # until cli.main has loaded what its command needs
    from forestseg.cli import main as run

    run()
