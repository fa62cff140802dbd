"""The one error type users see: stages and the CLI print it as one line and exit 2."""


class ForestsegError(Exception):
    """An error the user can fix; the message names the file or parameter and what to do."""


class Terminated(BaseException):
    """SIGTERM (a timeout, `kill`, Slurm's time limit, docker stop), raised like KeyboardInterrupt: a
    BaseException, which no `except Exception` swallows, so temp files go as they do on Ctrl-C."""


def terminate(signum: int, frame: object) -> None:
    """A SIGTERM handler (signal.signal(signal.SIGTERM, terminate)) that raises Terminated."""
    raise Terminated
