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

A change is taken in two steps. :meth:`Replica.stage` checks it (order, epoch, value)
and holds it, and on a slave first appends it to the journal (``cache.journal``):
from then on it counts, in :attr:`Replica.position`, in what a slave acknowledges and
in its rank at an election. :meth:`Replica.apply_pending` then writes what is held to
the stores. So a slave acknowledges after one ``write`` to a file, and a master sends
a change before its own SQLite transaction and applies it while the slaves do. A
change that fails to apply (a full disk) stays held and is applied before anything
newer; a slave that dies before applying replays its journal when it opens.
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

from cache.journal import Journal
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
        self._lock = threading.RLock()  # the in-memory state: pending, log, stores
        # writing to the stores, and swapping them: one thread at a time, and not under
        # _lock, so that a slave keeps taking (and acknowledging) changes meanwhile.
        # Taken before _lock by whoever takes both.
        self._apply_lock = threading.RLock()
        self._stores: dict[str, LocalStore] = {}
        self._log: deque[Op] = deque(maxlen=log_limit)
        self._recover()
        self.data.mkdir(parents=True, exist_ok=True)
        #: the position of the last change in the stores
        self.applied = self._load_position()
        self._pending: list[Op] = []  # staged, not yet in the stores
        self._staging: dict[str, LocalStore] | None = None
        self._journal = Journal(self.root / "journal")
        self._replay()

    @property
    def position(self) -> tuple[int, int]:
        """The position of the last change taken (staged or applied): what this node holds."""
        with self._lock:
            if self._pending:
                return (self._pending[-1].epoch, self._pending[-1].seq)
            return self.applied

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
        with self._apply_lock, self._lock:
            if self._pending:
                try:
                    self.apply_pending()
                except Exception as exc:  # kept in the journal (a slave's), replayed at open
                    log.warning(
                        "%s: %d changes not applied at close: %s",
                        self.root,
                        len(self._pending),
                        exc,
                    )
            self._journal.close()
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
        """Stage consecutive changes (not journaled) and apply everything pending."""
        with self._lock:
            self.stage(ops, validate=validate)
            self.apply_pending()

    def stage(
        self, ops: list[Op], validate: bool = True, journal: list[bytes] | None = None
    ) -> None:
        """Take consecutive changes: checked, journaled (``journal``: the records that
        carry them, :func:`cache.wire.change_record`), then held.

        Raises :class:`ReplicaError` (a gap, an epoch going back, a bad value) or
        ``OSError`` (the journal's disk is full) and then holds none of ``ops``.
        """
        with self._lock:
            epoch, seq = self.position
            for op in ops:
                if op.seq != seq + 1 or op.epoch < epoch:
                    raise ReplicaError(
                        f"change ({op.epoch}, {op.seq}) does not follow position ({epoch}, {seq})"
                    )
                epoch, seq = op.epoch, op.seq
                if validate and op.kind is Kind.PUT:
                    try:
                        decode_value(op.value)
                    except Exception as exc:
                        raise ReplicaError(
                            f"change ({op.epoch}, {op.seq}) carries a bad value: {exc}"
                        ) from None
            if journal:
                self._journal.append(journal)
            self._pending.extend(ops)
            self._log.extend(ops)

    def apply_pending(self) -> None:
        """Write every staged change to the stores, one transaction per run of one store.

        On a slave this is where batching pays: a transaction per change costs a disk
        sync each, a transaction per run one for all. :attr:`applied` moves only once a
        run is committed, so a failure (a full disk) leaves the stores exactly at their
        last committed change, and what did not get in stays pending.
        """
        with self._apply_lock:
            with self._lock:
                ops = list(self._pending)
            if not ops:
                return
            try:
                start = 0
                while start < len(ops):
                    end = start + 1
                    while end < len(ops) and ops[end].cache == ops[start].cache:
                        end += 1
                    self._apply_run(ops[start:end])
                    start = end
            finally:
                with self._lock:
                    self._pending = [op for op in self._pending if op.seq > self.applied[1]]
                    if not self._pending:
                        self._journal.applied()

    def _apply_run(self, run: list[Op]) -> None:
        store = self.store(run[0].cache)
        last = run[-1]
        if len(run) == 1:  # a put is one statement, its own transaction
            store.apply(last.kind, last.key, last.value, last.expire_at, (last.epoch, last.seq))
        else:
            with store.transaction():
                for op in run[:-1]:
                    store.apply(op.kind, op.key, op.value, op.expire_at, None)
                # the position: once per run
                store.apply(last.kind, last.key, last.value, last.expire_at, (last.epoch, last.seq))
        self.applied = (last.epoch, last.seq)

    def _replay(self) -> None:
        """Take again what the journal holds beyond the stores (a slave that died after
        acknowledging and before applying), then apply it."""
        ops = [op for op in self._journal.read() if op.seq > self.applied[1]]
        taken = 0
        for op in ops:
            try:
                self.stage([op], validate=True)
            except ReplicaError as exc:  # not a continuation of the stores: not ours to apply
                log.warning("%s: journal replay stops at a change: %s", self.root, exc)
                break
            taken += 1
        if taken:
            log.info("%s: %d acknowledged changes replayed from the journal", self.root, taken)
            self.apply_pending()  # a failure here (a full disk) fails the open: nothing lost
        self._journal.clear()

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
        with self._apply_lock, self._lock:
            self.apply_pending()
            items = [
                Item(name, key, value, expire_at)
                for name in self.names()
                for key, value, expire_at in self.store(name).items_encoded()
            ]
            return self.position, items

    def begin_snapshot(self) -> None:
        with self._apply_lock, self._lock:
            # what we hold beyond the stores is not the master's: its snapshot replaces it
            self._pending = []
            self._journal.clear()
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
        with self._apply_lock, self._lock:
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
            self.applied = (int(position[0]), int(position[1]))
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
