"""TensorBoard event files written without TensorBoard: scalars and PNG images.

An event file is a sequence of records (TFRecord framing: length, masked CRC-32C of the length,
the bytes, masked CRC-32C of the bytes), each an `Event` protocol buffer (tensorflow/core/util/
event.proto): wall_time (1, double), step (2, int64), file_version (3, string) or summary
(5, message). A `Summary` holds values with tag (1), simple_value (2, float) or image (4: height 1,
width 2, colorspace 3, encoded_image_string 4). Only these fields are written, by hand, so that
`edm-space train --tensorboard` needs no TensorBoard install; `tensorboard --logdir RUN/tensorboard`
reads them.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import List, Optional


def _crc32c_table() -> List[int]:
    table = []
    for byte in range(256):  # CRC-32C, the Castagnoli polynomial, reflected (0x82F63B78)
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2) + _varint(len(data)) + data


def _event(step: int, wall_time: float, file_version: Optional[str] = None, summary: Optional[bytes] = None) -> bytes:
    data = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if file_version is not None:
        data += _bytes_field(3, file_version.encode())
    if summary is not None:
        data += _bytes_field(5, summary)
    return data


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Appends events to events.out.tfevents.TIME.HOST in `log_dir` (created when needed); flushed per call."""

    def __init__(self, log_dir: str):
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}")
        self._write(_event(0, time.time(), file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        with open(self.path, "ab") as file:
            file.write(_record(event))

    def scalars(self, values: dict, step: int) -> None:
        """One event of {tag: number} at `step` (None values are left out)."""
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(value)))
            for tag, value in values.items() if value is not None
        )
        self._write(_event(step, time.time(), summary=summary))

    def image(self, tag: str, png: bytes, height: int, width: int, channels: int, step: int) -> None:
        """A PNG image event at `step`."""
        image = (_field(1, 0) + _varint(height) + _field(2, 0) + _varint(width) + _field(3, 0) + _varint(channels)
                 + _bytes_field(4, png))
        self._write(_event(step, time.time(), summary=_bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(4, image))))
