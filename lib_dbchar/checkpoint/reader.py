"""Open a checkpoint once, look at every tensor's name, dtype and shape, load tensors one by one.

:func:`open_checkpoint` reads ``.safetensors`` (header only; each tensor is read when asked for)
and pickled ``.ckpt``/``.pt`` files (through :mod:`~lib_dbchar.checkpoint.legacy`, never a full
unpickle). Keys come out the way the webui sees them after its loader, so merges and conversions
agree with it key for key:

* a ``{"state_dict": {...}}`` wrapper is unwrapped, non-tensor entries are set aside;
* NAI/AnythingV3-era CLIP keys ``cond_stage_model.transformer.{embeddings,encoder,final_layer_norm}``
  gain the ``text_model.`` level;
* SD2.1-Turbo files (sgm layout) have ``conditioner.embedders.0.`` renamed to ``cond_stage_model.``.

The helpers at the end deal with what real files carry beside the weights: float ``position_ids``
left by old merges and EMA copies of the UNet.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from lib_dbchar.checkpoint.errors import CheckpointError, UnsupportedCheckpoint
from lib_dbchar.checkpoint.io import unwrap_state_dict
from lib_dbchar.checkpoint.stformat import (
    TensorEntry,
    dtype_name,
    read_header,
    read_into,
    read_tensor,
    torch_dtype,
)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
POSITION_IDS_KEY = "cond_stage_model.transformer.text_model.embeddings.position_ids"
EMA_PREFIX = "model_ema."
_UNET_PARENT = "model."  # EMA names are the UNet key without "model." and without dots

_NAI_TEXT_RENAMES = tuple(
    (f"cond_stage_model.transformer.{child}.", f"cond_stage_model.transformer.text_model.{child}.")
    for child in ("embeddings", "encoder", "final_layer_norm")
)
_SGM_TEXT = "conditioner.embedders.0."
_SD2_TURBO_PROBE = "conditioner.embedders.0.model.ln_final.weight"
_OPENCLIP_H_WIDTH = 1024  # SD2's text encoder; SDXL's second encoder (bigG) is 1280 wide


def normalized_keys(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """Map each file key to the key the webui's loader gives it.

    Args:
        shapes: file key -> shape, in file order.

    Returns:
        normalised key -> file key. When two file keys land on the same name the later one
        wins, as it does in the webui's dict.
    """
    probe = shapes.get(_SD2_TURBO_PROBE)
    sd2_turbo = probe is not None and len(probe) >= 1 and probe[0] == _OPENCLIP_H_WIDTH
    out: dict[str, str] = {}
    for key in shapes:
        out[_normalize_key(key, sd2_turbo=sd2_turbo)] = key
    return out


def _normalize_key(key: str, *, sd2_turbo: bool) -> str:
    if sd2_turbo and key.startswith(_SGM_TEXT):
        return "cond_stage_model." + key[len(_SGM_TEXT) :]
    for old, new in _NAI_TEXT_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


class CheckpointReader(abc.ABC):
    """An open checkpoint: names, dtypes and shapes at once; tensor data on request.

    Use as a context manager, or call :meth:`close`. Not for concurrent use from several threads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    @abc.abstractmethod
    def metadata(self) -> dict[str, str]:
        """The file's metadata strings (safetensors ``__metadata__``; empty for pickles)."""

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """Normalised tensor keys in file order."""

    @abc.abstractmethod
    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of ``key`` (no data is read)."""

    @abc.abstractmethod
    def dtype(self, key: str) -> str:
        """The torch dtype name of ``key`` (``"float16"``; no data is read)."""

    @abc.abstractmethod
    def load(self, key: str) -> Any:
        """The tensor ``key`` on the CPU. Safetensors: fresh memory the caller owns."""

    def load_into(self, key: str, buffer: Any) -> Any:
        """Read ``key`` into the start of ``buffer`` and return it viewed as the tensor.

        Reusing one buffer for many tensors saves the page faults of fresh memory on every read,
        which dominate a streamed merge on some machines.

        Args:
            key: the tensor.
            buffer: a contiguous 1-D uint8 CPU tensor of at least :meth:`nbytes` bytes.

        Returns:
            A view of ``buffer`` with ``key``'s dtype and shape, holding its values.
        """
        view = _view_of(buffer, self.nbytes(key), self.dtype(key), self.shape(key))
        view.copy_(self.load(key))
        return view

    def prefetch(self, key: str) -> None:  # noqa: B027 - optional hook
        """Hint that ``key`` will be read soon (the default does nothing)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the file."""

    @abc.abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether the checkpoint has the (normalised) key."""

    def __iter__(self) -> Iterator[str]:
        """The normalised keys in file order (as :meth:`keys`)."""
        return iter(self.keys())

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape for every tensor, in file order."""
        return {key: self.shape(key) for key in self.keys()}

    def nbytes(self, key: str) -> int:
        """Bytes the tensor ``key`` takes in memory."""
        from lib_dbchar.checkpoint.stformat import itemsize

        count = 1
        for n in self.shape(key):
            count *= n
        return count * itemsize(self.dtype(key))

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _missing(self, key: str) -> KeyError:
        return KeyError(f"{self.path} has no tensor {key!r}")


class SafetensorsReader(CheckpointReader):
    """A ``.safetensors`` file: the header is parsed once, each tensor read on :meth:`load`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        header = read_header(path)
        self._metadata = header.metadata
        raw = {key: entry.shape for key, entry in header.entries.items()}
        self._entries: dict[str, TensorEntry] = {
            key: header.entries[file_key] for key, file_key in normalized_keys(raw).items()
        }
        # Unbuffered: readinto then goes straight into the tensor, with no second copy.
        self._handle = open(path, "rb", buffering=0)  # noqa: PTH123, SIM115 - closed in close()

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def entry(self, key: str) -> TensorEntry:
        """Where ``key``'s bytes are in the file."""
        try:
            return self._entries[key]
        except KeyError:
            raise self._missing(key) from None

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entry(key).shape

    def dtype(self, key: str) -> str:
        return self.entry(key).dtype

    def load(self, key: str) -> Any:
        return read_tensor(self._handle, self.entry(key), path=self.path)

    def prefetch(self, key: str) -> None:
        """Ask the OS to start reading ``key``'s bytes from disk now, into its cache.

        A streamed merge calls this for the next tensor while it computes and writes the current
        one, so a cold read overlaps the work instead of adding to it. The cache is the OS's, not
        this process's memory. Only where ``posix_fadvise`` exists (Linux); elsewhere a no-op.
        """
        entry = self.entry(key)
        if entry.nbytes and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._handle.fileno(), entry.start, entry.nbytes, os.POSIX_FADV_WILLNEED)

    def load_into(self, key: str, buffer: Any) -> Any:
        entry = self.entry(key)
        view = _view_of(buffer, entry.nbytes, entry.dtype, entry.shape)
        if entry.nbytes:
            read_into(self._handle, buffer[: entry.nbytes], entry.start, path=self.path)
        return view

    def close(self) -> None:
        self._handle.close()


class PickleReader(CheckpointReader):
    """A pickled checkpoint, loaded through the restricted loader (tensors stay mapped if possible).

    Attributes:
        skipped: top-level entries of the state dict that are not tensors (``epoch``, ...).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import torch

        from lib_dbchar.checkpoint.legacy import load_ckpt

        loaded = load_ckpt(path)
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors.")
        state = unwrap_state_dict(loaded)
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        self.skipped = sorted(str(k) for k in state if k not in tensors)
        mapping = normalized_keys({k: tuple(v.shape) for k, v in tensors.items()})
        self._tensors = {key: tensors[file_key] for key, file_key in mapping.items()}

    @property
    def metadata(self) -> dict[str, str]:
        return {}

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def _get(self, key: str) -> Any:
        try:
            return self._tensors[key]
        except KeyError:
            raise self._missing(key) from None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._get(key).shape)

    def dtype(self, key: str) -> str:
        return dtype_name(self._get(key).dtype)

    def load(self, key: str) -> Any:
        return self._get(key)

    def close(self) -> None:
        self._tensors = {}


def _view_of(buffer: Any, nbytes: int, dtype: str, shape: tuple[int, ...]) -> Any:
    """The first ``nbytes`` of a uint8 buffer as a tensor of ``dtype`` and ``shape``."""
    if buffer.numel() < nbytes:
        raise ValueError(f"buffer of {buffer.numel()} bytes is too small for {nbytes}")
    if nbytes == 0:
        import torch

        return torch.empty(shape, dtype=torch_dtype(dtype))
    return buffer[:nbytes].view(torch_dtype(dtype)).reshape(shape)


def open_checkpoint(path: Path | str) -> CheckpointReader:
    """Open a checkpoint for reading.

    Args:
        path: a ``.safetensors`` file, or a pickled ``.ckpt``/``.pt``/``.pth``/``.bin``.

    Returns:
        A :class:`CheckpointReader` with normalised keys (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsupportedCheckpoint: another file type, or a pickle that needs code to load.
        CheckpointError: a damaged file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return SafetensorsReader(path)
    if suffix in PICKLE_SUFFIXES:
        return PickleReader(path)
    raise UnsupportedCheckpoint(
        f"{path}: dbchar reads .safetensors and .ckpt/.pt checkpoints, not "
        f"{suffix or 'files without a suffix'}."
    )


def load_checkpoint(path: Path | str, *, ema: str = "keep", fix_position_ids: bool = True) -> dict[str, Any]:
    """Read a whole checkpoint into a state dict with normalised keys.

    Args:
        path: see :func:`open_checkpoint`.
        ema: ``"keep"`` the ``model_ema.*`` tensors, ``"drop"`` them, or ``"use"`` them in place of
            the UNet weights they shadow (see :func:`apply_ema`).
        fix_position_ids: replace float ``position_ids`` (from old merges) with int64 ``0..n-1``.

    Returns:
        Key -> CPU tensor.

    Raises:
        ValueError: unknown ``ema`` mode.
        FileNotFoundError, UnsupportedCheckpoint, CheckpointError: as :func:`open_checkpoint`.
    """
    if ema not in EMA_MODES:
        raise ValueError(f"ema must be one of {', '.join(EMA_MODES)}; got {ema!r}")
    with open_checkpoint(path) as reader:
        state = {key: reader.load(key) for key in reader}
    if fix_position_ids and POSITION_IDS_KEY in state:
        state[POSITION_IDS_KEY] = repaired_position_ids(state[POSITION_IDS_KEY])
    return apply_ema(state, ema)


def repaired_position_ids(tensor: Any) -> Any:
    """``position_ids`` as they must be: int64 ``0..n-1`` in the same shape.

    Merges made before the webui skipped this buffer averaged it into float values like
    ``75.9999``, which the text encoder truncates to wrong positions.

    Args:
        tensor: the buffer, shape ``[1, n]`` (or ``[n]``), any dtype.

    Returns:
        ``tensor`` itself when it is already an integer tensor, else a new int64 ``arange``.
    """
    import torch

    if not tensor.is_floating_point():
        return tensor
    return torch.arange(tensor.shape[-1], dtype=torch.int64).reshape(tensor.shape)


EMA_MODES = ("keep", "drop", "use")


def ema_key(key: str) -> str | None:
    """The EMA key that shadows a UNet key: ``model.diffusion_model.out.2.weight`` ->
    ``model_ema.diffusion_modelout2weight`` (LitEma drops the dots); None for other keys."""
    if not key.startswith(_UNET_PARENT + "diffusion_model."):
        return None
    return EMA_PREFIX + key[len(_UNET_PARENT) :].replace(".", "")


def ema_keys(keys: Iterable[str]) -> list[str]:
    """The keys that belong to an EMA copy (``model_ema.*``), in the given order."""
    return [k for k in keys if k.startswith(EMA_PREFIX)]


def apply_ema(state: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """Keep, drop or use the EMA weights of an ldm state dict.

    Args:
        state: key -> tensor.
        mode: ``"keep"`` (unchanged), ``"drop"`` (remove ``model_ema.*``), ``"use"`` (every UNet
            tensor with an EMA copy takes the copy's values; ``model_ema.*`` removed).

    Returns:
        A new dict (tensors not copied).

    Raises:
        ValueError: unknown mode.
    """
    if mode not in EMA_MODES:
        raise ValueError(f"ema must be one of {', '.join(EMA_MODES)}; got {mode!r}")
    if mode == "keep":
        return dict(state)
    out = {k: v for k, v in state.items() if not k.startswith(EMA_PREFIX)}
    if mode == "use":
        for key in out:
            shadow = ema_key(key)
            if shadow is not None and shadow in state:
                out[key] = state[shadow]
    return out
