"""The one error type users see: stages and the CLI print it as one line and exit 2."""


class ForestsegError(Exception):
    """An error the user can fix; the message names the file or parameter and what to do."""
