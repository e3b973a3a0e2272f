"""Exceptions for mistakes a user can fix.

Every tool under ``tools/`` turns a :class:`UserError` into one line on
stderr and exit code 2 (``--debug`` shows the traceback). Raise one with a
message that says what was wrong and what to do; keep it to one line.
This module imports nothing, so that any part of the package can use it.
"""


class UserError(Exception):
    """A mistake the user can fix; the tools print it in one line, exit 2."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config, or a command-line override of it, is wrong."""


class InputError(UserError, ValueError):
    """An input file or folder (an image, a folder of images) is missing,
    empty or unreadable."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file cannot be used: missing, not a checkpoint,
    truncated, unsafe, or its keys/shapes do not match the model."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not match the model it is loaded
    into. ``missing``, ``unexpected`` and ``mismatched`` list the keys."""

    def __init__(self, message: str, missing=(), unexpected=(),
                 mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


__all__ = ['UserError', 'ConfigError', 'InputError', 'CheckpointError',
           'CheckpointMismatchError']
