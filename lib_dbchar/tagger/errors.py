"""The tagger's typed errors: each message names the file or model and says what to do."""

from __future__ import annotations

from lib_dbchar.errors import DbcharError


class TaggerModelError(DbcharError):
    """A tagger model folder or file is missing, damaged or not a WD14 export."""


class ModelUnavailable(TaggerModelError):
    """The model is neither in the cache nor downloadable right now (offline, no network, HTTP error)."""


class ImageProblem(DbcharError):
    """One image cannot be read; the batch goes on without it."""
