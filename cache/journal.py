"""A slave's journal: the changes it acknowledged before they reach its stores.

Owns one append-only file, ``<node folder>/journal``, and its record format. A slave
appends the changes it received to it, acknowledges them, and only then applies them
to its diskcache stores (``cache.replica``): the master's synchronous write waits for
one ``write`` to a file, not for SQLite transactions. A process that dies between the
acknowledgement and the apply loses nothing: the replica replays the journal when it
opens. The guarantee is the stores' own (SQLite's WAL with ``synchronous=NORMAL``): a
write is in the operating system's hands, so it survives the process, not a power cut.

Record::

    u32 length of the payload | u32 CRC-32 of the payload | payload

where the payload is one replication frame's type byte and body as the master sent it
(:func:`cache.wire.change_record`: an Op or a Batch, at most one frame's size), so a
slave journals what it received without encoding it again. Reading
stops at the first record that is short, fails its CRC or does not decode (the tail a
crash tore off, or damage); that record and everything after it are dropped, counted
and logged. Nothing is unpickled or evaluated: the payload is parsed by the wire's
bounded decoders. Does not decide what a change means or whether it follows the
store's position (``cache.replica``), nor when to acknowledge (``cache.replication``).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

from cache.wire import MAX_FRAME_BYTES, Op, WireError, decode_change

log = logging.getLogger(__name__)

_HEAD = struct.Struct("!II")
TRUNCATE_AT = 1 << 20
"""Once everything journaled is applied, the file is emptied when it is this large."""


class Journal:
    """The append-only journal file of one replica."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.damaged = 0  # records dropped on reading (a torn tail, damage)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    def append(self, payloads: list[bytes]) -> None:
        """Write records, in one ``write``; OSError (a full disk) before anything is
        acknowledged."""
        record = b"".join(_HEAD.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        written = os.write(self._fd, record)
        if written != len(record):  # a full disk part-way: drop the torn record
            os.ftruncate(self._fd, self._size)
            raise OSError(f"{self.path}: short write ({written} of {len(record)} bytes)")
        self._size += written

    def applied(self) -> None:
        """Everything journaled is in the stores now: empty the file when it has grown."""
        if self._size >= TRUNCATE_AT:
            self.clear()

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)
        self._size = 0

    def read(self) -> list[Op]:
        """Every change of every whole record, in order; a damaged tail is cut off."""
        with open(self.path, "rb") as handle:
            data = handle.read()
        ops, end, problem = scan(data)
        if problem is not None:
            self.damaged += 1
            log.warning(
                "%s: %s at byte %d; the %d bytes from there are dropped",
                self.path,
                problem,
                end,
                len(data) - end,
            )
            os.ftruncate(self._fd, end)
            self._size = end
        return ops

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def scan(data: bytes) -> tuple[list[Op], int, str | None]:
    """The changes of the whole records at the start of ``data``, where they end, and
    what is wrong with what follows them (None when nothing follows)."""
    ops: list[Op] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEAD.size:
            return ops, offset, "a torn record header"
        size, crc = _HEAD.unpack_from(data, offset)
        payload = data[offset + _HEAD.size : offset + _HEAD.size + size]
        if size > MAX_FRAME_BYTES or len(payload) != size:
            return ops, offset, "a torn record"
        if zlib.crc32(payload) != crc:
            return ops, offset, "a record that fails its CRC"
        try:
            ops.extend(decode_change(payload))
        except WireError as exc:
            return ops, offset, f"a record that does not decode ({exc})"
        offset += _HEAD.size + size
    return ops, offset, None
