"""Local message state on diskcache, without pickle.

Owns how values and keys land on disk: :class:`SafeDisk`, a diskcache ``Disk``
that stores only ``str`` keys and JSON-compatible values or bytes, and refuses
to load anything else (a pickled row planted in a shared folder is an error,
never code run: diskcache's default pickling is CVE-2025-69872), and
:class:`LocalStore`, one named store in one folder with the replication
position kept beside the data in the same transaction: a put carries its
position in its own row (diskcache's ``tag`` column, no second statement); a
delete or a clear, which leave no row, write the position row. The store's
position is the newest of the two. Does not replicate
(``cache.replication``) nor decide where folders are (``cache``).

Values are encoded once, as a tag byte and a payload (``J`` + compact JSON, or
``B`` + raw bytes); the same encoded form travels over the network, and a
replica checks it by decoding before it stores it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from cache.wire import Kind

#: reserved key holding the replication position (epoch, seq) of the last applied change
POSITION_KEY = "\x00twinweave.position"
_SEQ_DIGITS = 20  # a tag is "<seq, zero-padded>:<epoch>": its text order is the seq order
_TAG_JSON = b"J"
_TAG_BYTES = b"B"


class StoreError(Exception):
    """A stored entry is not ours (pickled, foreign, damaged): it is refused, never loaded."""


def encode_value(value: Any) -> bytes:
    """``value`` as stored and sent: bytes as they are, anything else as strict JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _TAG_BYTES + bytes(value)
    try:
        _check_keys(value)
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cache values are JSON-compatible data (dict with str keys, list, str, int, "
            f"finite float, bool, None) or bytes, not {type(value).__name__}: {exc}"
        ) from None
    return _TAG_JSON + text.encode("utf-8")


def _check_keys(value: Any) -> None:
    """json.dumps would turn int keys into strings silently: refuse them instead."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"dict key {key!r} is not a str")
                stack.append(inner)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def decode_value(data: bytes) -> Any:
    """The value of :func:`encode_value`'s output; :class:`StoreError` for anything else."""
    tag, payload = data[:1], data[1:]
    if tag == _TAG_BYTES:
        return bytes(payload)
    if tag == _TAG_JSON:
        try:
            return json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreError(f"damaged JSON value: {exc}") from None
    raise StoreError(f"unknown value encoding {tag!r}")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def check_key(key: object) -> str:
    if type(key) is not str:
        raise TypeError(f"cache keys are str, not {type(key).__name__}")
    if key.startswith("\x00"):
        raise KeyError(f"keys starting with NUL are reserved: {key!r}")
    return key


class SafeDisk(diskcache.Disk):
    """A diskcache Disk that never pickles and never unpickles."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        if not raw or not isinstance(key, str):
            raise StoreError("a stored key is not a plain string (pickled?): refused")
        return key

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple:
        if read or not isinstance(value, bytes):
            raise TypeError("SafeDisk stores encoded values only (bytes)")
        return super().store(value, False, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if read or mode not in (MODE_RAW, MODE_BINARY):
            raise StoreError(f"a stored value has mode {mode} (pickled or text?): refused")
        return super().fetch(mode, filename, value, False)


class LocalStore:
    """One named store in one folder: encoded values, plus the replication position."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        # sqlite's NORMAL sync in WAL mode: a committed write survives a process crash
        self._cache = diskcache.Cache(directory, disk=SafeDisk, eviction_policy="none")

    def close(self) -> None:
        self._cache.close()

    def transaction(self) -> Any:
        """Group several writes into one SQLite transaction (nestable)."""
        return self._cache.transact(retry=True)

    # -- reads -----------------------------------------------------------------------------

    def get_encoded(self, key: str) -> bytes | None:
        try:
            return self._cache.get(key, default=None, retry=True)
        except StoreError:
            raise
        except (TypeError, ValueError) as exc:
            raise StoreError(f"entry {key!r} cannot be read: {exc}") from None

    def __contains__(self, key: str) -> bool:
        return self._cache.__contains__(key)

    def keys(self) -> Iterator[str]:
        for key in list(self._cache.iterkeys()):
            if not key.startswith("\x00") and key in self._cache:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def items_encoded(self) -> Iterator[tuple[str, bytes, float | None]]:
        """(key, encoded value, absolute expiry or None) for every live entry."""
        for key in self.keys():
            value, expire_time = self._cache.get(key, default=None, expire_time=True, retry=True)
            if value is not None:
                yield key, value, expire_time

    def position(self) -> tuple[int, int]:
        """The position of the last change applied here: the position row or the newest tag."""
        raw = self._cache.get(POSITION_KEY, default=None, retry=True)
        row = (0, 0)
        if raw is not None:
            epoch, seq = decode_value(raw)
            row = (int(epoch), int(seq))
        # diskcache has no public query for this; _sql is its own statement runner
        (tag,) = self._cache._sql("SELECT MAX(tag) FROM Cache").fetchone()
        return max(row, _untag(tag, self.directory))

    # -- writes ----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        encoded: bytes,
        expire_at: float | None = None,
        position: tuple[int, int] | None = None,
    ) -> None:
        """Store ``encoded`` (and the position, in the same transaction)."""
        expire = _relative(expire_at)
        if expire is not None and expire <= 0:
            self.delete(key, position)
            return
        tag = None if position is None else _tag(position)
        self._cache.set(key, encoded, expire=expire, tag=tag, retry=True)

    def delete(self, key: str, position: tuple[int, int] | None = None) -> bool:
        with self._cache.transact(retry=True):
            existed = self._cache.delete(key, retry=True)
            if position is not None:
                self._set_position(position)
        return existed

    def clear(self, position: tuple[int, int] | None = None) -> None:
        with self._cache.transact(retry=True):
            for key in list(self._cache.iterkeys()):
                if key != POSITION_KEY:
                    self._cache.delete(key, retry=True)
            if position is not None:
                self._set_position(position)

    def apply(
        self,
        kind: Kind,
        key: str,
        encoded: bytes,
        expire_at: float | None,
        position: tuple[int, int] | None = None,
    ) -> None:
        """One change of the replication vocabulary (put, delete or clear), applied here."""
        if kind is Kind.PUT:
            self.put(key, encoded, expire_at, position=position)
        elif kind is Kind.DELETE:
            self.delete(key, position=position)
        elif kind is Kind.CLEAR:
            self.clear(position=position)
        else:  # pragma: no cover - the wire refuses unknown kinds
            raise ValueError(f"unknown change kind {kind!r}")

    def set_position(self, position: tuple[int, int]) -> None:
        self._set_position(position)

    def _set_position(self, position: tuple[int, int]) -> None:
        self._cache.set(POSITION_KEY, encode_value(list(position)), retry=True)


def _tag(position: tuple[int, int]) -> str:
    epoch, seq = position
    return f"{int(seq):0{_SEQ_DIGITS}d}:{int(epoch)}"


def _untag(tag: object, where: str) -> tuple[int, int]:
    if tag is None:
        return (0, 0)
    try:
        seq, _, epoch = str(tag).partition(":")
        if len(seq) != _SEQ_DIGITS:
            raise ValueError(f"{len(seq)} digits of seq")
        return (int(epoch), int(seq))
    except ValueError as exc:
        raise StoreError(f"{where}: a stored position tag {tag!r} is damaged ({exc})") from None


def _relative(expire_at: float | None) -> float | None:
    if expire_at is None:
        return None
    if not math.isfinite(expire_at):
        raise ValueError("expiry must be a finite time")
    return expire_at - time.time()
