"""The safetensors container, read and written one tensor at a time.

A ``.safetensors`` file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON, then
the raw little-endian tensor bytes. The JSON maps each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the end of the header; the data of all
tensors is contiguous, without gaps) and may hold a ``__metadata__`` object of string -> string.
The JSON is padded with spaces to a multiple of 8 bytes so that the data starts aligned.

Reading the header needs neither torch nor the safetensors package, which lets a merge plan every
output tensor (name, dtype, shape, offset) before it loads a single weight. :func:`read_tensor`
then reads one tensor with positional reads into a fresh buffer. It deliberately does not memory-map
the file: every page of a mapping that has been touched counts in the process's resident memory
until the mapping is closed, so streaming three mapped 2 GB inputs would still show ~6 GB of RSS.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lib_dbchar.checkpoint.errors import CheckpointError

# safetensors dtype code -> (torch dtype name, bytes per element).
DTYPES: Mapping[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_CODE_OF_NAME = {name: code for code, (name, _) in DTYPES.items()}
METADATA_KEY = "__metadata__"
# The safetensors package refuses headers above 100 MB; a bigger one is a damaged file.
MAX_HEADER_BYTES = 100_000_000
_ALIGNMENT = 8


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file.

    Args:
        key: the tensor's name in the file.
        dtype: the torch dtype name (``"float16"``).
        shape: the tensor's shape.
        start: absolute byte offset of its data in the file.
        end: absolute byte offset one past its data.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A parsed safetensors header.

    Args:
        entries: key -> :class:`TensorEntry`, in the order of the data in the file.
        metadata: the ``__metadata__`` strings (empty when absent).
        data_start: absolute offset of the first data byte (8 + header length).
    """

    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


def itemsize(dtype: str) -> int:
    """Bytes per element of the torch dtype name ``dtype`` (``"float16"`` -> 2).

    Raises:
        ValueError: a dtype safetensors cannot store.
    """
    code = _CODE_OF_NAME.get(dtype)
    if code is None:
        raise ValueError(f"dtype {dtype!r} cannot be stored in a safetensors file")
    return DTYPES[code][1]


def dtype_name(dtype: Any) -> str:
    """The torch dtype name of a ``torch.dtype`` (``torch.float16`` -> ``"float16"``)."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` called ``name`` (``"float16"`` -> ``torch.float16``).

    Raises:
        CheckpointError: this torch build has no such dtype (e.g. ``uint16`` before torch 2.3).
    """
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(
            f"this torch {torch.__version__} has no dtype {name!r}; update torch to read it"
        )
    return dtype


def read_header(path: Path | str) -> Header:
    """Parse the header of a ``.safetensors`` file without reading tensor data.

    Args:
        path: the file.

    Returns:
        The :class:`Header`; entries ordered by their position in the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated, damaged or not safetensors (the message names it).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:  # noqa: PTH123 - a raw binary handle is what we need
        head = handle.read(8)
        if len(head) < 8:
            raise _damaged(path, "it is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise _damaged(path, f"its header claims {length} bytes")
        raw = handle.read(length)
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"its header is not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise _damaged(path, "its header is not a JSON object")
    metadata = _parse_metadata(path, parsed.pop(METADATA_KEY, None))
    data_start = 8 + length
    entries = [_parse_entry(path, key, value, data_start) for key, value in parsed.items()]
    entries.sort(key=lambda e: (e.start, e.end))
    _check_layout(path, entries, size - data_start)
    return Header({e.key: e for e in entries}, metadata, data_start)


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file: {why}; re-download or re-save it.")


def _parse_metadata(path: Path, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _damaged(path, "its __metadata__ is not a map of strings")
    return dict(value)


def _parse_entry(path: Path, key: str, value: Any, data_start: int) -> TensorEntry:
    try:
        code = value["dtype"]
        shape = tuple(value["shape"])
        begin, end = value["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise _damaged(path, f"tensor {key!r} has no dtype/shape/data_offsets") from None
    if code not in DTYPES:
        raise CheckpointError(f"{path}: tensor {key!r} has dtype {code!r}, which dbchar cannot read.")
    if not all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end)) or end < begin:
        raise _damaged(path, f"tensor {key!r} has a bad shape or offsets")
    if (end - begin) != math.prod(shape) * DTYPES[code][1]:
        raise _damaged(path, f"tensor {key!r} has {end - begin} bytes for shape {list(shape)} {code}")
    return TensorEntry(key, DTYPES[code][0], shape, data_start + begin, data_start + end)


def _check_layout(path: Path, entries: Sequence[TensorEntry], data_bytes: int) -> None:
    """Tensors must tile the data area exactly: a gap or an overlap means a damaged file."""
    position = entries[0].start if entries else 0
    for entry in entries:
        if entry.start != position:
            raise _damaged(path, f"tensor {entry.key!r} overlaps another or leaves a gap")
        position = entry.end
    used = (position - entries[0].start) if entries else 0
    if used != data_bytes:
        what = "truncated" if used > data_bytes else "followed by stray bytes"
        raise _damaged(path, f"its data is {what} ({data_bytes} bytes for {used} declared)")


def read_tensor(handle: BinaryIO, entry: TensorEntry, *, path: Path | str = "") -> Any:
    """Read one tensor into fresh memory.

    Args:
        handle: the file opened ``"rb"`` (unbuffered is best: no second copy).
        entry: from :func:`read_header` of the same file.
        path: for error messages.

    Returns:
        A CPU tensor of ``entry.dtype`` and ``entry.shape`` that owns its memory.

    Raises:
        CheckpointError: the file ended early.
    """
    import torch

    dtype = torch_dtype(entry.dtype)
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    raw = torch.empty(entry.nbytes, dtype=torch.uint8)
    read_into(handle, raw, entry.start, path=path)
    return raw.view(dtype).reshape(entry.shape)


def read_into(handle: BinaryIO, buffer: Any, offset: int, *, path: Path | str = "") -> None:
    """Fill the contiguous uint8 tensor ``buffer`` from ``handle`` at ``offset``.

    Raises:
        CheckpointError: the file ended before ``buffer`` was full.
    """
    view = memoryview(buffer.numpy())
    handle.seek(offset)
    done = 0
    while done < len(view):
        # readinto may return less than asked (large reads are capped by the OS): loop.
        count = handle.readinto(view[done:])
        if not count:
            raise CheckpointError(f"{path}: the file ends early (truncated); re-download or re-save it.")
        done += count


def aligned_header(entries: Sequence[tuple[str, str, Sequence[int]]], metadata: Mapping[str, str]) -> bytes:
    """Serialise a header for tensors written back to back in the given order.

    Args:
        entries: ``(key, torch dtype name, shape)`` in the order the data will be written.
        metadata: stored as ``__metadata__`` (omitted when empty); values must be strings.

    Returns:
        The 8-byte length followed by the JSON, space-padded so the data starts 8-byte aligned.

    Raises:
        ValueError: a duplicate key, a non-string metadata value, or a dtype safetensors lacks.
    """
    header: dict[str, Any] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ValueError(f"safetensors metadata must be strings; not so for {', '.join(map(str, bad))}")
        header[METADATA_KEY] = dict(metadata)
    offset = 0
    for key, dtype, shape in entries:
        if key in header:
            raise ValueError(f"tensor {key!r} appears twice")
        nbytes = math.prod(shape) * itemsize(dtype)
        header[key] = {
            "dtype": _CODE_OF_NAME[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % _ALIGNMENT)
    return struct.pack("<Q", len(text)) + text


def tensor_bytes(tensor: Any) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())
