"""A node's copy of the replicated state: named stores, their position, and recent history.

Owns the data side of replication on one node, master or slave: the named
:class:`~cache.store.LocalStore` folders under ``<node folder>/data``, the
position ``(epoch, seq)`` of the last change applied (kept in the same
transaction as the change, so it survives a crash exactly), a bounded log of
recent changes from which a slave that missed part of the stream catches up,
and installing a full snapshot without ever exposing half of one (it is built
in ``data.new`` and swapped in whole). Does not talk to the network
(``cache.replication``) and does not decide who may write (the cluster).

Sequence numbers run on across epochs: a new master's first change is
``(its epoch, last seq + 1)``; a slave applies change ``seq`` only right after
``seq - 1``, so a gap is noticed and repaired, never skipped.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from cache.store import LocalStore, decode_value
from cache.wire import Item, Kind, Op

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
META = "_meta"  # holds the position after a snapshot that had no entries
LOG_LIMIT = 100_000


class ReplicaError(Exception):
    """A change cannot be applied here (a gap, a stale epoch, a damaged value)."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(
            f"cache names are 1-128 letters, digits, '_', '.' or '-', starting with a letter "
            f"or digit: {name!r}"
        )
    return name


class Replica:
    """The named stores of one node, their position and the recent history of changes."""

    def __init__(self, root: Path, log_limit: int = LOG_LIMIT) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()
        self._stores: dict[str, LocalStore] = {}
        self._log: deque[Op] = deque(maxlen=log_limit)
        self._recover()
        self.data.mkdir(parents=True, exist_ok=True)
        self.position = self._load_position()
        self._staging: dict[str, LocalStore] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    # -- stores ------------------------------------------------------------------------------

    def store(self, name: str) -> LocalStore:
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                if name != META:
                    check_name(name)
                store = self._stores[name] = LocalStore(str(self.data / name))
            return store

    def names(self) -> list[str]:
        with self._lock:
            on_disk = {p.name for p in self.data.iterdir() if p.is_dir() and p.name != META}
            return sorted(on_disk | {n for n in self._stores if n != META})

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()
            if self._staging is not None:
                for store in self._staging.values():
                    store.close()
                self._staging = None

    # -- applying changes --------------------------------------------------------------------

    def next_position(self, epoch: int) -> tuple[int, int]:
        return (epoch, self.position[1] + 1)

    def apply(self, op: Op) -> None:
        """Apply one change, in order: its seq must follow ours and its epoch not go back."""
        self.apply_all([op])

    def apply_all(self, ops: list[Op], validate: bool = True) -> None:
        """Apply consecutive changes, one transaction per run of changes to the same store.

        On a slave this is where batching pays: a transaction per change costs a disk
        sync each, a transaction per run one for all. The position moves only once a
        run is committed, so a failure (a gap, a bad value, a full disk) leaves this
        replica exactly at its last committed change.
        """
        with self._lock:
            start = 0
            while start < len(ops):
                end = start + 1
                while end < len(ops) and ops[end].cache == ops[start].cache:
                    end += 1
                run = ops[start:end]
                epoch, seq = self.position
                for op in run:
                    if op.seq != seq + 1 or op.epoch < epoch:
                        raise ReplicaError(
                            f"change ({op.epoch}, {op.seq}) does not follow position "
                            f"({epoch}, {seq})"
                        )
                    epoch, seq = op.epoch, op.seq
                store = self.store(run[0].cache)
                with store.transaction():
                    for op in run[:-1]:
                        self._apply(store, op, validate, with_position=False)
                    self._apply(store, run[-1], validate)  # the position: once per run
                self.position = (epoch, seq)
                self._log.extend(run)
                start = end

    def _apply(
        self, store: LocalStore, op: Op, validate: bool = True, with_position: bool = True
    ) -> None:
        if validate and op.kind is Kind.PUT:
            try:
                decode_value(op.value)
            except Exception as exc:
                raise ReplicaError(
                    f"change ({op.epoch}, {op.seq}) carries a bad value: {exc}"
                ) from None
        position = (op.epoch, op.seq) if with_position else None
        store.apply(op.kind, op.key, op.value, op.expire_at, position)

    def history_after(self, position: tuple[int, int]) -> list[Op] | None:
        """The changes after ``position`` if it is in our history and they are all logged."""
        with self._lock:
            if tuple(position) == self.position:
                return []
            ops = list(self._log)
            for index, op in enumerate(ops):
                if (op.epoch, op.seq) == tuple(position):
                    return ops[index + 1 :]
            return None

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> tuple[tuple[int, int], list[Item]]:
        """Every live entry, and the position they represent (call under the writers' lock)."""
        with self._lock:
            items = [
                Item(name, key, value, expire_at)
                for name in self.names()
                for key, value, expire_at in self.store(name).items_encoded()
            ]
            return self.position, items

    def begin_snapshot(self) -> None:
        with self._lock:
            self._drop_staging()
            self._staging = {}

    def add_item(self, item: Item) -> None:
        with self._lock:
            if self._staging is None:
                raise ReplicaError("snapshot item outside a snapshot")
            try:
                decode_value(item.value)
            except Exception as exc:
                raise ReplicaError(
                    f"snapshot entry {item.key!r} carries a bad value: {exc}"
                ) from None
            store = self._staging.get(item.cache)
            if store is None:
                check_name(item.cache)
                store = self._staging[item.cache] = LocalStore(str(self._new / item.cache))
            store.put(item.key, item.value, item.expire_at)

    def end_snapshot(self, position: tuple[int, int]) -> None:
        """Swap the staged snapshot in whole, at ``position``."""
        with self._lock:
            if self._staging is None:
                raise ReplicaError("snapshot end outside a snapshot")
            meta = self._staging.get(META) or LocalStore(str(self._new / META))
            meta.set_position(tuple(position))
            self._staging[META] = meta
            for store in self._staging.values():
                store.close()
            self._staging = None
            (self._new / "complete").write_text("ok\n")
            for store in self._stores.values():
                store.close()
            self._stores.clear()
            self._swap()
            self.position = (int(position[0]), int(position[1]))
            self._log.clear()

    def _drop_staging(self) -> None:
        if self._staging is not None:
            for store in self._staging.values():
                store.close()
            self._staging = None
        shutil.rmtree(self._new, ignore_errors=True)

    @property
    def _new(self) -> Path:
        return self.root / "data.new"

    @property
    def _old(self) -> Path:
        return self.root / "data.old"

    def _swap(self) -> None:
        if self.data.exists():
            os.replace(self.data, self._old)
        os.replace(self._new, self.data)
        (self.data / "complete").unlink()
        shutil.rmtree(self._old, ignore_errors=True)

    def _recover(self) -> None:
        """Finish or undo a snapshot swap that a crash interrupted."""
        if (self._new / "complete").exists():
            self._swap()
        shutil.rmtree(self._new, ignore_errors=True)
        if self._old.exists():
            if not self.data.exists():
                os.replace(self._old, self.data)
            else:
                shutil.rmtree(self._old, ignore_errors=True)

    def _load_position(self) -> tuple[int, int]:
        positions: Iterable[tuple[int, int]] = [
            self.store(name).position() for name in [*self.names(), META]
        ]
        return max(positions, default=(0, 0))
