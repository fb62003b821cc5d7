"""User-facing errors: the entry scripts print their message alone, without a traceback."""


class InstsegError(Exception):
    """A problem with the user's input (files, data, checkpoint) explained in one message."""
