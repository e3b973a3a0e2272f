"""Exceptions for mistakes a user can fix.

Every tool under ``tools/`` turns a :class:`UserError` into one line on
stderr and exit code 2 (``--debug`` shows the traceback). Raise one with a
message that says what was wrong and what to do; keep it to one line.
This module imports only the standard library, so that any part of the
package can use it.
"""
import difflib
from typing import Iterable, List


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


def closest(word: str, candidates: Iterable[str], n: int = 1,
            cutoff: float = 0.6) -> List[str]:
    """The ``n`` candidates closest to ``word`` (``difflib``), best first;
    case differences count as close."""
    candidates = sorted({str(c) for c in candidates})
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n,
                                     cutoff=cutoff)
    return [lowered[h] for h in hits]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` or ``''`` when nothing is close."""
    hit = closest(word, candidates)
    return f"; did you mean {hit[0]!r}?" if hit else ''


__all__ = ['closest', 'did_you_mean', 'UserError', 'ConfigError', 'InputError', 'CheckpointError',
           'CheckpointMismatchError']
