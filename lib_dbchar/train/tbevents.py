"""TensorBoard scalar logs written without the ``tensorboard`` package (the webui's venv lacks it).

The guide reads the loss curve with ``tensorboard --logdir <run>/logging/dreambooth``. An event file
is a sequence of TFRecords, each holding one serialised ``Event`` protocol buffer. The subset needed
for scalars is small enough to write by hand:

* record framing: ``uint64 length``, ``uint32 masked crc32c(length)``, ``data``, ``uint32 masked
  crc32c(data)``, little-endian; the mask is ``((crc >> 15) | (crc << 17)) + 0xa282ead8``;
* ``Event``: ``wall_time`` (field 1, double), ``step`` (2, varint), ``file_version`` (3, string,
  ``"brain.Event:2"`` in the first record) or ``summary`` (5, message);
* ``Summary``: repeated ``value`` (1, message); ``Summary.Value``: ``tag`` (1, string),
  ``simple_value`` (2, float).

:func:`read_scalars` reads such files back (tests, and the Train tab's loss chart); :func:`trim_events`
drops the records past the step a run resumes from.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

_CRC32C_POLY = 0x82F63B78  # Castagnoli, bit-reflected
_MASK_DELTA = 0xA282EAD8
FILE_VERSION = "brain.Event:2"


@functools.lru_cache(maxsize=1)
def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord uses it."""
    table = _crc_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(
    wall_time: float, step: int, *, scalars: Mapping[str, float] | None = None, file_version: str = ""
) -> bytes:
    """Serialise one ``Event`` with either a file version or scalar values."""
    out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(max(0, int(step)))
    if file_version:
        out += _bytes_field(3, file_version.encode("utf-8"))
    if scalars:
        summary = b"".join(
            _bytes_field(
                1, _bytes_field(1, tag.encode("utf-8")) + _field(2, 5) + struct.pack("<f", float(value))
            )
            for tag, value in scalars.items()
        )
        out += _bytes_field(5, summary)
    return out


def frame(data: bytes) -> bytes:
    """One TFRecord around ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Appends scalars to a new event file in ``folder`` (one file per training session).

    Each record is flushed as written, so TensorBoard shows the curve live and a killed run loses
    at most the record being written (TensorBoard skips a truncated last record).
    """

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        unique = f"{socket.gethostname()}.{os.getpid()}.{time.monotonic_ns()}"
        name = f"events.out.tfevents.{int(time.time())}.{unique}"
        self.path = folder / name
        self._handle: BinaryIO | None = open(self.path, "ab")  # noqa: SIM115, PTH123 - kept open for appends
        self._write(encode_event(time.time(), 0, file_version=FILE_VERSION))

    def _write(self, data: bytes) -> None:
        if self._handle is None:
            raise ValueError(f"{self.path} is closed")
        self._handle.write(frame(data))
        self._handle.flush()

    def add_scalars(self, step: int, scalars: Mapping[str, float], *, wall_time: float | None = None) -> None:
        """Write ``tag -> value`` at ``step``."""
        self._write(encode_event(time.time() if wall_time is None else wall_time, step, scalars=scalars))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- reading back ----------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message; unknown wire types stop the scan."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            return
        yield number, wire, value


def _frames(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """``(start, end, payload)`` of each whole record in ``data``; stops at a truncated or corrupt one."""
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            return
        payload = data[pos + 12 : pos + 12 + length]
        (crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        if crc != masked_crc(payload):
            return
        yield pos, end, payload
        pos = end


def records(path: Path) -> Iterator[bytes]:
    """The record payloads of a TFRecord file; stops at a truncated or corrupt record."""
    for _, _, payload in _frames(Path(path).read_bytes()):
        yield payload


def event_step(payload: bytes) -> int:
    """The ``step`` of a serialised ``Event`` (0 when the field is absent, as protobuf reads it)."""
    for number, wire, value in _fields(payload):
        if number == 2 and wire == 0:
            return int(value)  # type: ignore[arg-type]
    return 0


def trim_events(folder: Path, step: int) -> list[Path]:
    """Drop every record after ``step`` from the event files of ``folder`` (a resume from ``step``).

    A session that died (or was stopped) after its last saved state logged steps the resumed
    session will log again; left in place, TensorBoard would draw both. Each file holding a record
    past ``step`` -- or a record torn by a kill -- is rewritten atomically (temporary file + rename)
    with the records up to ``step`` in their order, bytes unchanged; the file-version record (step 0)
    always stays. The resumed session then writes its own new file.

    Args:
        folder: the TensorBoard folder (``logging/dreambooth``); a missing folder is nothing to do.
        step: the step the run resumes from; records with a larger step go.

    Returns:
        The files rewritten.
    """
    from lib_dbchar.paths import atomic_write

    changed = []
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        kept = b"".join(data[a:b] for a, b, payload in _frames(data) if event_step(payload) <= step)
        if kept != data:
            atomic_write(path, kept)
            changed.append(path)
    return changed


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars in the event files of ``folder``: ``tag -> [(step, value), ...]`` in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for payload in records(path):
            step = 0
            for number, _, value in _fields(payload):
                if number == 2:
                    step = int(value)  # type: ignore[arg-type]
                elif number == 5:
                    for _, _, item in _fields(value):  # type: ignore[arg-type]
                        tag, scalar = "", 0.0
                        for n, _, v in _fields(item):  # type: ignore[arg-type]
                            if n == 1:
                                tag = bytes(v).decode("utf-8")  # type: ignore[arg-type]
                            elif n == 2:
                                (scalar,) = struct.unpack("<f", v)  # type: ignore[arg-type]
                        out.setdefault(tag, []).append((step, scalar))
    return out
