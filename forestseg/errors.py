"""The one error type users see: stages and the CLI print it as one line and exit 2; and how both
end on Ctrl-C, SIGTERM or a reader that stopped."""

import os
import re
import sys

BROKEN_PIPE = 141  # the exit status a shell gives a process that SIGPIPE ended


class ForestsegError(Exception):
    """An error the user can fix; the message names the file or parameter and what to do."""


class Terminated(BaseException):
    """SIGTERM (a timeout, `kill`, Slurm's time limit, docker stop), raised like KeyboardInterrupt: a
    BaseException, which no `except Exception` swallows, so temp files go as they do on Ctrl-C."""


def terminate(signum: int, frame: object) -> None:
    """A SIGTERM handler (signal.signal(signal.SIGTERM, terminate)) that raises Terminated."""
    raise Terminated


def stopped(e: BaseException) -> tuple[str, int]:
    """What stopped the process (KeyboardInterrupt or Terminated) in the one line said, and the exit
    status a shell reports for that signal."""
    return ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)


def out_of_memory(e: BaseException) -> str | None:
    """Where `e` ran out of memory: "on the GPU" (torch.OutOfMemoryError), "in host memory" (MemoryError,
    or the CPU allocator's RuntimeError "DefaultCPUAllocator: can't allocate memory"), None for any other
    error. One test for the train stage and the CLI (torch not imported here: its class is told by name)."""
    if type(e).__name__ == "OutOfMemoryError":
        return "on the GPU"
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "can't allocate" in str(e)):
        return "in host memory"
    return None


def one_line(text: str) -> str:
    """`text` with its control characters escaped (a newline as \\n): a file name holding one must not
    split the one line an error is, nor move a terminal's cursor. C1 controls and the Unicode line and
    paragraph separators too: Python's splitlines, and some terminals, break lines at them."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


def quiet_stdout() -> None:
    """stdout to /dev/null once its reader stopped (`| head`): Python's flush at exit would fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
