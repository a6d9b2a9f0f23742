"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class HwpruneError(Exception):
    """A user-facing error: the message says what to fix."""
