"""A safetensors writer that takes one tensor at a time.

The header (every tensor's name, dtype, shape and offset) must come first in the file. A merge
knows all of that before it computes anything (:mod:`lib_dbchar.merge.plan`), so the writer
writes the header up front and then appends each tensor's bytes as it is produced; memory holds
one tensor, never the model. The file is written under a temporary name beside the target,
fsynced and renamed into place only when every tensor has arrived: an error, a stop request or
a crash leaves the previous file (if any) untouched and no partial checkpoint where the webui
would list it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from lib_dbchar.checkpoint.io import check_output_path
from lib_dbchar.checkpoint.stformat import aligned_header, dtype_name, tensor_bytes
from lib_dbchar.paths import atomic_writer


class StreamWriter:
    """Appends tensors to an open file in the order its header declared.

    Use :func:`stream_safetensors` rather than building one directly.
    """

    def __init__(
        self, handle: IO[bytes], entries: Sequence[tuple[str, str, Sequence[int]]], path: Path
    ) -> None:
        self._handle = handle
        self._entries = [(key, dtype, tuple(shape)) for key, dtype, shape in entries]
        self._next = 0
        self._path = path

    @property
    def written(self) -> int:
        """How many tensors have been written."""
        return self._next

    def write(self, key: str, tensor: Any) -> None:
        """Append the next tensor.

        Args:
            key: must be the next name the header declared.
            tensor: a CPU tensor of the declared dtype and shape.

        Raises:
            ValueError: out of order, or a dtype/shape other than declared (the header would lie).
        """
        if self._next >= len(self._entries):
            raise ValueError(f"{self._path}: {key!r} is one tensor more than the header declared")
        want_key, want_dtype, want_shape = self._entries[self._next]
        got = (key, dtype_name(tensor.dtype), tuple(tensor.shape))
        if got != (want_key, want_dtype, want_shape):
            raise ValueError(
                f"{self._path}: tensor #{self._next} should be {want_key!r} {want_dtype} {list(want_shape)}, "
                f"got {got[0]!r} {got[1]} {list(got[2])}"
            )
        self._handle.write(tensor_bytes(tensor))
        self._next += 1

    def finish(self) -> None:
        """Check every declared tensor was written.

        Raises:
            ValueError: some are missing (the file would be truncated).
        """
        if self._next != len(self._entries):
            missing = self._entries[self._next][0]
            raise ValueError(
                f"{self._path}: only {self._next} of {len(self._entries)} tensors written; next {missing!r}"
            )


@contextlib.contextmanager
def stream_safetensors(
    path: Path | str,
    entries: Sequence[tuple[str, str, Sequence[int]]],
    metadata: Mapping[str, str] | None = None,
    *,
    overwrite: bool = False,
) -> Iterator[StreamWriter]:
    """Write a ``.safetensors`` file tensor by tensor, atomically.

    Args:
        path: the target; must end in ``.safetensors``.
        entries: ``(key, torch dtype name, shape)`` in the order the tensors will be written.
        metadata: header metadata strings.
        overwrite: replace an existing file (atomically); otherwise refuse.

    Yields:
        A :class:`StreamWriter`; call :meth:`StreamWriter.write` once per entry, in order.

    Raises:
        ValueError: wrong suffix, bad metadata, or not every entry written when the block ends.
        TargetExists: ``path`` exists and ``overwrite`` is False.
    """
    path = check_output_path(path, overwrite=overwrite)
    header = aligned_header(entries, metadata or {})
    with atomic_writer(path, "wb") as handle:
        handle.write(header)
        writer = StreamWriter(handle, entries, path)
        yield writer
        writer.finish()
