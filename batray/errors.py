"""User-facing errors: one line that names what is wrong and what to do.

The CLI prints `BatrayError`s without a traceback and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class BatrayError(Exception):
    """An error caused by the user's input (config, data, request), reported in one line."""


class ConfigError(BatrayError):
    """A config file or override is invalid; the message starts with the offending key path."""


class DataError(BatrayError):
    """Input data cannot be read or does not match its schema."""


class DistributedError(BatrayError):
    """A collective or a process-group setup failed or timed out."""
