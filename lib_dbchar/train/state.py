"""The resume state of a run: one self-describing file, written atomically.

nanoGPT-style: a plain dict holding the weights being trained, the optimizer and gradient-scaler
state, the random generator's state, the counters (step, epoch, position in the epoch, where this
session began) and the config it was trained with. Loaded with ``torch.load(weights_only=True)``: it
holds only tensors, numbers, strings, lists and dicts, so loading it can run no code.

The file is written to a temporary name beside the old one and renamed over it, so a kill during a
save leaves the previous state usable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import atomic_writer

STATE_FORMAT = "dbchar-train-state"
STATE_VERSION = 1


class StateError(DbcharError):
    """A state file that cannot be used; the message names the file and what to do."""


@dataclass
class Counters:
    """Where a run is.

    Attributes:
        step: global steps done.
        epoch: epochs completed.
        index: steps done inside the current epoch.
        session_step: ``step`` when this training session began (a resumed session keeps it).
        session_epoch: ``epoch`` when this training session began.
    """

    step: int = 0
    epoch: int = 0
    index: int = 0
    session_step: int = 0
    session_epoch: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def save_state(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write a state dict atomically (``format`` and ``version`` are added).

    Args:
        path: the state file (``runs/<run>/state/state.pt``); its folder is created.
        payload: tensors, numbers, strings, lists and dicts only.

    Returns:
        ``path``.
    """
    import torch

    record = {"format": STATE_FORMAT, "version": STATE_VERSION, **payload}
    with atomic_writer(Path(path), "wb") as handle:
        torch.save(record, handle)
    return Path(path)


def load_state(path: Path) -> dict[str, Any]:
    """Read a state file written by :func:`save_state` (tensors on the CPU).

    Raises:
        FileNotFoundError: no state yet.
        StateError: not a dbchar state, a newer version, or damaged.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: this run has no saved state to resume from.")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as exc:
        raise StateError(
            f"{path} is damaged ({exc}); resume from a checkpoint is not possible, start a new run."
        ) from None
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        raise StateError(f"{path} is not a dbchar training state.")
    if int(record.get("version", 0)) > STATE_VERSION:
        raise StateError(
            f"{path} was written by a newer dbchar (state version {record['version']}); update dbchar."
        )
    return record


def counters_from(record: Mapping[str, Any]) -> Counters:
    """The :class:`Counters` stored in a state record."""
    return Counters(**{k: int(v) for k, v in record["counters"].items()})
