"""The one exception type the CLI turns into a one-line message and exit code 2."""


class HwpruneError(ValueError):
    """A user-facing error: the message says what to fix (a ValueError, as bad arguments are)."""
