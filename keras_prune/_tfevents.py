"""A minimal writer of TensorBoard event files (scalars only), without TensorFlow.

Keras 3 has no backend-neutral summary writer, so `PruningSummaries` writes
the TFRecord/Event format itself. A file is a sequence of records

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little-endian), where each `data` is a serialized `tensorflow.Event`
protobuf. The first event carries `file_version = "brain.Event:2"`; each
later one carries `wall_time`, `step` and a `Summary` of
`Value{tag, simple_value}` entries. The protobuf fields are encoded by hand:

    Event:         1 wall_time double   2 step int64   3 file_version string   5 summary
    Summary:       1 value (repeated Summary.Value)
    Summary.Value: 1 tag string   2 simple_value float
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterable

_FILE_VERSION = "brain.Event:2"


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord files use.

    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The rotated and offset CRC-32C that TFRecord stores."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _value(tag: str, simple_value: float) -> bytes:
    return _length_delimited(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", simple_value)


def encode_event(
    wall_time: float,
    step: int = 0,
    scalars: Iterable[tuple[str, float]] = (),
    file_version: str | None = None,
) -> bytes:
    """A serialized `Event` with the given scalars (or the file version)."""
    event = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        event += _length_delimited(3, file_version.encode("utf-8"))
    summary = b"".join(_length_delimited(1, _value(tag, value)) for tag, value in scalars)
    if summary:
        event += _length_delimited(5, summary)
    return event


def encode_record(data: bytes) -> bytes:
    """`data` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


class EventFileWriter:
    """Appends scalar events to one new `events.out.tfevents.*` file in `directory`.

    The file is created (with its parent directories) on construction, and
    every `add_scalars` call is written and flushed at once, so TensorBoard
    sees it while training runs.
    """

    _count = 0

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        EventFileWriter._count += 1
        name = (
            f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}"
            f".{os.getpid()}.{EventFileWriter._count}.keras_prune"
        )
        self.path = os.path.join(directory, name)
        self._file = open(self.path, "xb")
        self._write(encode_event(time.time(), file_version=_FILE_VERSION))

    def _write(self, event: bytes) -> None:
        self._file.write(encode_record(event))
        self._file.flush()

    def add_scalars(self, step: int, scalars: Iterable[tuple[str, float]]) -> None:
        """Writes one event at `step` holding every `(tag, value)` of `scalars`."""
        self._write(encode_event(time.time(), step, list(scalars)))

    def close(self) -> None:
        self._file.close()
