"""Errors raised while reading, converting or writing checkpoints.

They live here rather than in :mod:`lib_dbchar.errors` only because this package was written
alongside the skeleton; both derive from :class:`~lib_dbchar.errors.DbcharError`, so callers that
catch the base class see them.
"""

from lib_dbchar.errors import DbcharError


class CheckpointError(DbcharError, ValueError):
    """A checkpoint cannot be read, converted or written; the message names the file or key."""


class MissingKeyError(CheckpointError):
    """A tensor every model of this kind has is absent: converting would give a broken model.

    Attributes:
        key: the missing key, in the naming of the layout that was being read.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class UnsupportedCheckpoint(CheckpointError):
    """The checkpoint is of a kind or layout this version cannot convert (SDXL, unknown keys, ...)."""
