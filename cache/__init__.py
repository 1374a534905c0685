"""twinweave's message state: a dict-like store on diskcache, replicated from master to slaves.

``get_cache(name)`` is all an adapter needs::

    import cache

    done = cache.get_cache("delivered")
    if message_id not in done:
        deliver(message)
        done.set(message_id, {"at": time.time()})   # sync: every live slave has it now

Values are JSON-compatible data (dict with str keys, list, str, int, finite
float, bool, None; tuples come back as lists) or bytes; keys are str. Nothing
is ever pickled, and nothing read from disk or the network is ever unpickled.

Under ``--failover`` the store is replicated: only the master writes (a write
anywhere else raises :class:`NotMasterError`), every write reaches every live
slave, and with ``cache.replication=sync`` (the default) it returns once they
all have it; a new master has what its predecessor acknowledged. Outside
failover mode it is a plain local store in ``cache.directory`` (default
``$XDG_CACHE_HOME/twinweave/local``).

Costs: a read is one SQLite lookup on the local folder (tens of microseconds);
a local write one SQLite transaction; a synchronous replicated write adds one
round trip to the slaves, overlapped across writer threads.

The package: ``store`` (diskcache without pickle), ``wire`` (the replication
frames), ``replica`` (a node's stores, position and history), ``replication``
(the TCP stream between master and slaves).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cache.inflight import FAILOVER_CACHE
from cache.replica import Replica, check_name
from cache.replication import Hub, NotMasterError
from cache.store import LocalStore, StoreError, check_key, decode_value, encode_value
from cache.wire import Kind

__all__ = [
    "FAILOVER_CACHE",
    "Cache",
    "NotMasterError",
    "StoreError",
    "attach",
    "detach",
    "get_cache",
]


_MISSING = object()
_lock = threading.Lock()
_caches: dict[str, Cache] = {}
_local_root: Path | None = None
_attached: tuple[Replica, Hub] | None = None


class Cache:
    """A named, dict-like store. Get one with :func:`get_cache`; share it between threads."""

    def __init__(self, name: str, store: LocalStore, writer: Any = None) -> None:
        self.name = name
        self._store = store
        self._writer = writer  # cache.replication.Hub under --failover, else None

    # -- reads (local; on a slave they show the replicated state) ----------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        encoded = self._store.get_encoded(check_key(key))
        return default if encoded is None else decode_value(encoded)

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and not key.startswith("\x00") and key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def __iter__(self) -> Iterator[str]:
        return self._store.keys()

    def keys(self) -> list[str]:
        return list(self._store.keys())

    def items(self) -> list[tuple[str, Any]]:
        return [(key, decode_value(value)) for key, value, _ in self._store.items_encoded()]

    def values(self) -> list[Any]:
        return [value for _, value in self.items()]

    # -- writes (the master's, replicated under --failover) ----------------------------------

    def set(self, key: str, value: Any, expire: float | None = None, *, wait: bool = True) -> None:
        """Store ``value`` under ``key``; ``expire`` seconds from now it is gone.

        Every write takes ``wait``: under ``cache.replication=sync`` the write returns
        once every live slave has it; ``wait=False`` returns as soon as it is stored
        here and on its way to the slaves (in order, before anything written after it),
        for changes whose loss in a takeover does no harm, such as removing the record
        of work already finished: a master that dies just then may leave it undone.
        """
        encoded = encode_value(value)
        expire_at = None if expire is None else time.time() + float(expire)
        self._write(Kind.PUT, check_key(key), encoded, expire_at, wait)

    def set_many(self, items: Any, expire: float | None = None, *, wait: bool = True) -> None:
        """Store several entries at once (a mapping or (key, value) pairs), in order.

        One local transaction, and under ``--failover`` one frame and one
        acknowledgement for all of them: the cheap way to write many entries.
        """
        pairs = items.items() if hasattr(items, "items") else items
        expire_at = None if expire is None else time.time() + float(expire)
        fields = [
            (Kind.PUT, self.name, check_key(key), encode_value(value), expire_at)
            for key, value in pairs
        ]
        if not fields:
            return
        if self._writer is not None:
            self._writer.write_many(fields, wait)
            return
        with self._store.transaction():
            for _, _, key, encoded, at in fields:
                self._store.put(key, encoded, at)

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def delete(self, key: str, *, wait: bool = True) -> bool:
        """Remove ``key``; True if it was there. ``wait``: as for :meth:`set`."""
        existed = check_key(key) in self._store
        self._write(Kind.DELETE, key, b"", None, wait)
        return existed

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def clear(self, *, wait: bool = True) -> None:
        self._write(Kind.CLEAR, "", b"", None, wait)

    def _write(
        self, kind: Kind, key: str, encoded: bytes, expire_at: float | None, wait: bool = True
    ) -> None:
        if self._writer is not None:
            self._writer.write((kind, self.name, key, encoded, expire_at), wait)
        else:
            self._store.apply(kind, key, encoded, expire_at)

    def __repr__(self) -> str:
        mode = "replicated" if self._writer is not None else "local"
        return f"<cache.Cache {self.name!r} ({mode})>"


def attach(replica: Replica, writer: Hub) -> None:
    """Replicate from now on: caches live in ``replica`` and writes go through ``writer``.

    The failover node calls this when it is installed (``cluster.install``); ``writer`` is
    its hub, which asks the node whether it may write (only the master does). Caches opened
    before are forgotten, so every later :func:`get_cache` is replicated.
    """
    global _attached
    with _lock:
        _attached = (replica, writer)
        _caches.clear()


def detach() -> None:
    """Back to local caches (the node stopped)."""
    global _attached
    with _lock:
        _attached = None
        _caches.clear()


def get_cache(name: str) -> Cache:
    """The store called ``name`` (created on first use), replicated under ``--failover``."""
    check_name(name)
    with _lock:
        found = _caches.get(name)
        if found is not None:
            return found
        if _attached is not None:
            replica, writer = _attached
            made = Cache(name, replica.store(name), writer)
        else:
            made = Cache(name, LocalStore(str(_local_directory() / name)))
        _caches[name] = made
        return made


def _local_directory() -> Path:
    global _local_root
    if _local_root is None:
        configured = os.environ.get("TWINWEAVE_CACHE_DIRECTORY")
        if configured:
            _local_root = Path(os.path.expanduser(configured))
        else:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache"
            )
            _local_root = Path(base) / "twinweave" / "local"
    return _local_root


def _forget() -> None:
    """Drop every open cache (tests; a node that changed role)."""
    global _local_root
    with _lock:
        _caches.clear()
        _local_root = None
