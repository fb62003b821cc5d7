"""User-facing errors: the entry scripts print their message alone, without a traceback."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class InstsegError(Exception):
    """A problem with the user's input (files, data, checkpoint) explained in one message."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For command-line entry points: an InstsegError ends the process with its message on
    stderr and exit status 1 (other exceptions keep their traceback: they are bugs)."""
    try:
        yield
    except InstsegError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
