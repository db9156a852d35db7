"""Errors a user can act on.

Every problem caused by the user's input (a broken file, a bad config key, a missing folder) is raised as a
`TatlError` subclass whose message names the file or key and the reason. The command line prints such an
error on one line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class TatlError(Exception):
    """Base class: an error in the user's input, reported on one line (exit code 2)."""


class DataError(TatlError):
    """A data file or folder is missing, unreadable or inconsistent."""


class ConfigError(TatlError):
    """A configuration key or value is unknown or invalid."""


class CheckpointError(TatlError):
    """A checkpoint or weights file cannot be used (truncated, foreign architecture, unsafe)."""
