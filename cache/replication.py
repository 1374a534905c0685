"""Replication over TCP: the master's hub streams changes, the slave's follower applies them.

Owns the sockets and threads of replication around :class:`cache.replica.Replica`
and the sans-I/O :mod:`cache.wire`:

- :class:`Hub` (every node runs one; it serves only while its node is master)
  accepts slaves, greets each with the changes it missed (from the log) or a
  full snapshot, then streams every change, in order, tagged with the epoch and
  a sequence number. A write (:meth:`Hub.write`) is applied locally, queued to
  every slave, and, in ``sync`` mode, returns once every *live* slave (one that
  has caught up) acknowledged it; a slave that does not answer within the ack
  timeout is dropped (told so, disconnected) and catches up when it reconnects,
  and the write still returns. Writers in several threads pipeline: their
  changes go out in batches and one ack covers many.
- :class:`Follower` (on a slave) connects to the master it follows, applies
  what comes, acks it, refuses anything from an epoch older than the newest it
  knows, and reconnects after a failure.

Registering a slave and queuing a write happen under one lock, so a change
made while a snapshot is being sent is queued after that snapshot: nothing
lost, nothing reordered. Garbled, forged or out-of-order traffic ends the
connection and is counted (``Hub.refused``, ``Follower.refused``).
Not here: the election (``cluster``), the stores' encoding (``cache.store``).
"""

from __future__ import annotations

import bisect
import collections
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cache.replica import Replica, ReplicaError, check_name
from cache.store import check_key
from cache.wire import (
    MAX_BATCH_OPS,
    Ack,
    Batch,
    Hello,
    Item,
    Op,
    Refuse,
    RefuseCode,
    Session,
    SnapshotBegin,
    SnapshotEnd,
    Welcome,
    WireError,
    encode_body,
)

log = logging.getLogger(__name__)

MAX_BATCH = 512
ASYNC_GATHER_S = 0.002  # in async mode, how long a sender waits to batch more changes
RECV_BYTES = 256 * 1024
CONNECT_TIMEOUT_S = 2.0
QUICK_RETRIES = 3  # reconnections without waiting after a link closed without a word


class NotMasterError(RuntimeError):
    """A write on a node that is not the master (or no longer sure it is)."""


class _Link:
    """One slave connection, seen from the master."""

    def __init__(self, hub: Hub, sock: socket.socket, address: Any) -> None:
        self.hub = hub
        self.sock = sock
        self.address = address
        self.session = Session(hub.secret, initiator=False)
        self.node_id = "?"
        self.queue: collections.deque = collections.deque()
        self.acked = (0, 0)
        self.target = (0, 0)  # live once it has acked this (the end of its catch-up)
        self.live = False
        self.closed = False
        self.joined_at = time.monotonic()
        self.wake = threading.Condition(hub.lock)
        self.sender: threading.Thread | None = None
        self.sending = False  # the sender thread has frames out of the queue (under hub.lock)

    # called under hub.lock
    def enqueue(self, frame: object) -> None:
        self.queue.append(frame)
        self.wake.notify()

    # called under hub.lock
    def send_now(self, frame: object, body: bytes) -> None:
        """Send from the writer's thread when the link is idle: no hand-off to the sender.

        The socket is written without blocking; what it does not take now (a full send
        buffer) is queued, as bytes, for the sender thread, ahead of anything newer.
        """
        if self.queue or self.sending or self.closed:
            self.enqueue(frame)
            return
        data = self.session.encode(frame, body)
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.close(f"send failed: {exc}")
            return
        if sent < len(data):
            self.enqueue(data[sent:])

    def close(self, reason: str, tell: RefuseCode | None = None, flush: bool = False) -> None:
        """Stop this link; ``tell`` sends the slave a Refuse with that code and the reason,
        after what is still queued when ``flush`` (a clean resignation), instead of it
        otherwise."""
        with self.hub.lock:
            if self.closed:
                return
            self.closed = True
            self.live = False
            if tell is not None:
                if not flush:
                    self.queue.clear()
                self.queue.append(Refuse(tell, reason))
            self.wake.notify()
            self.hub.cond.notify_all()
            if self in self.hub.links:
                self.hub.links.remove(self)
        log.info("replication to %s (%s) closed: %s", self.node_id, self.address, reason)
        if tell is None:
            _close(self.sock)
            if self.hub.on_link_lost is not None:
                self.hub.on_link_lost()  # the slave may probe our port: we beat first

    def send_loop(self) -> None:
        try:
            while True:
                with self.hub.lock:
                    while not self.queue and not self.closed:
                        self.wake.wait()
                    gather = not self.hub.sync and len(self.queue) < MAX_BATCH and not self.closed
                if gather:
                    # nobody waits for these: gather more, one send (and one ack) for many
                    time.sleep(ASYNC_GATHER_S)
                with self.hub.lock:
                    frames = []
                    while self.queue and len(frames) < MAX_BATCH:
                        frames.append(self.queue.popleft())
                    finished = self.closed and not self.queue
                    self.sending = True
                data = b"".join(
                    f if isinstance(f, bytes) else self.session.encode(f) for f in _batched(frames)
                )
                if data:
                    self.sock.sendall(data)
                with self.hub.lock:
                    self.sending = False
                if finished:
                    break
        except (OSError, WireError) as exc:
            self.close(f"send failed: {exc}")
        finally:
            self.sending = False
            _close(self.sock)

    def receive_loop(self) -> None:
        buffer = memoryview(bytearray(RECV_BYTES))
        try:
            while not self.closed:
                data = receive(self.sock, buffer)
                if not data:
                    self.close("the slave disconnected")
                    return
                for frame in self.session.feed(data):
                    self.hub._on_frame(self, frame)
        except WireError as exc:
            self.hub._count(exc.reason)
            self.close(f"refused: {exc}")
        except OSError as exc:
            self.close(f"receive failed: {exc}")


@dataclass(frozen=True)
class SlaveLag:
    """How far one slave is behind the master (:meth:`Hub.slave_lag`)."""

    node_id: str
    live: bool
    """Caught up once since it joined (sync writes wait for it)."""
    changes: int
    """Changes the master made that the slave has not acknowledged."""
    seconds: float
    """Age of the oldest of those changes (0 when it has acknowledged everything)."""


COMMIT_TIMES = 4096
"""Recent commits whose time the hub keeps for :meth:`Hub.slave_lag` (older ones are
dropped; a slave further behind reports the age of the oldest one kept)."""


class _Ticket:
    """One writer's changes, waiting to be carried by a group commit."""

    __slots__ = ("done", "error", "fields", "position", "wait")

    def __init__(self, fields: list[tuple], wait: bool = True) -> None:
        self.fields = fields
        self.wait = wait  # for the slaves' acknowledgements (in sync mode)
        self.done = False
        self.error: BaseException | None = None
        self.position = (0, 0)


class Hub:
    """The replication endpoint of one node; streams changes while the node is master."""

    def __init__(
        self,
        replica: Replica,
        cluster: str,
        node_id: str,
        host: str,
        secret: bytes | None,
        ack_timeout: float,
        is_master: Callable[[], bool],
        sync: bool = True,
        on_link_lost: Callable[[], None] | None = None,
    ) -> None:
        self.replica = replica
        self.cluster = cluster
        self.node_id = node_id
        self.secret = secret
        self.ack_timeout = ack_timeout
        self.is_master = is_master
        self.sync = sync
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.links: list[_Link] = []
        self.epoch = 0  # set while serving as master
        self.refused: collections.Counter[str] = collections.Counter()
        self.dropped_slow = 0
        self._queued: list[_Ticket] = []  # writes waiting for the next group commit
        self._committed = threading.Condition(self.lock)
        self.commits = 0  # group commits made (each one transaction, frame and ack)
        self.writes = 0  # changes written (a group commit carries one or more)
        # (last seq, monotonic time) of recent commits: how old a slave's lag is
        self._commit_times: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=COMMIT_TIMES
        )
        self._awaiting = False  # a writer waits for acknowledgements (under the lock)
        #: what the waiting writer waits for (its links, the seq): the receive threads wake
        #: it once, when the last of them acknowledged, not at every acknowledgement
        self._awaited: tuple[list[_Link], int] | None = None
        self._committing = False
        self.snapshots = 0  # full snapshots sent (the rest caught up from the log)
        #: called when a link ends without a Refuse (the slave went, or the link broke)
        self.on_link_lost = on_link_lost
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.5)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(
            target=self._accept_loop, name="twinweave-repl", daemon=True
        )
        self._thread.start()

    # -- master role -------------------------------------------------------------------------

    def serve(self, epoch: int) -> None:
        """This node is master with ``epoch`` from now on."""
        with self.lock:
            self.epoch = epoch

    def resign(self, reason: str, flush: bool = False) -> list[_Link]:
        """Stop serving: every slave is told and disconnected.

        ``flush`` (a clean stop) first sends what is queued, so that an asynchronous
        write that returned before the stop still reaches the slaves; a demoted master
        sends nothing more.
        """
        with self.lock:
            self.epoch = 0
            links = list(self.links)
        for link in links:
            link.close(reason, tell=RefuseCode.RESIGNING, flush=flush)
        return links

    def drain(self, timeout: float = 1.0) -> bool:
        """Wait until every live slave acknowledged everything written (a clean stop)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            last = self.replica.position[1]
            self._awaiting = True
            try:
                while True:
                    pending = [
                        link
                        for link in self.links
                        if link.live and not link.closed and link.acked[1] < last
                    ]
                    remaining = deadline - time.monotonic()
                    if not pending or remaining <= 0:
                        return not pending
                    self.cond.wait(remaining)
            finally:
                self._awaiting = False

    def write(self, op_fields: tuple, wait: bool = True) -> tuple[int, int]:
        """Apply (kind, cache, key, value, expire_at) here, stream it, and in sync mode wait."""
        return self.write_many([op_fields], wait)

    def write_many(self, ops_fields: list[tuple], wait: bool = True) -> tuple[int, int]:
        """Several changes as one: one local transaction, one frame, one acknowledgement.

        Each tuple is (kind, cache, key, encoded value, expire_at). Returns the
        position of the last one. ``wait=False``: in sync mode too, return once the
        changes are applied here and streamed, without waiting for the slaves (the
        stream keeps them in order; a later write that waits covers them too).

        Group commit: writers in several threads queue their changes; whichever finds
        no commit under way leads one for everything queued (one transaction, one
        frame, one acknowledgement to wait for) while the next ones queue behind it.
        Each writer returns when the commit that carried its changes is acknowledged.
        """
        if not ops_fields:
            return self.replica.position
        ticket = _Ticket(list(ops_fields), wait)
        with self.lock:
            self._check_master()
            self._queued.append(ticket)
            while not ticket.done:
                if self._committing:
                    self._committed.wait()  # woken once per commit, not per acknowledgement
                    continue
                group, self._queued = self._queued, []
                self._committing = True
                try:
                    self._commit(group)
                finally:
                    self._committing = False
                    self._committed.notify_all()
        error = ticket.error
        if error is not None:
            if isinstance(error, NotMasterError):
                raise NotMasterError(str(error))  # one instance per writer thread
            raise error
        return ticket.position

    def _check_master(self) -> None:
        if not self.epoch or not self.is_master():
            raise NotMasterError(
                "this node is not the master: only the master writes to the replicated "
                "cache (check cluster.is_master() first)"
            )

    def _commit(self, group: list[_Ticket]) -> None:
        """Apply, stream and (sync) await one group of writers' changes; under the lock."""
        try:
            self._check_master()
            epoch, seq = self.replica.next_position(self.epoch)
            ops: list[Op] = []
            for ticket in group:
                for kind, cache, key, value, expire_at in ticket.fields:
                    ops.append(Op(epoch, seq + len(ops), kind, cache, key, value, expire_at))
                ticket.position = (epoch, ops[-1].seq)
            frames = _framed(ops)  # a field out of the wire's range fails here, untaken
            # taken, sent, then applied here while the slaves journal it; a change that
            # fails to apply here stays pending (its seq is never reused) and is applied
            # before the next one, and its writer gets the error
            self.replica.stage(ops, validate=False)  # values encoded by us just now
            self.commits += 1
            self.writes += len(ops)
            last = ops[-1].seq
            self._commit_times.append((last, time.monotonic()))
            waiting = []
            for link in list(self.links):
                for frame, body in frames:
                    if self.sync:
                        link.send_now(frame, body)
                    else:
                        link.enqueue(frame)  # nobody waits: the sender gathers a batch
                if link.live:
                    waiting.append(link)
            self.replica.apply_pending()
            if self.sync and waiting and any(ticket.wait for ticket in group):
                self._await(waiting, last)
                if self.epoch != epoch or not self.is_master():
                    # the wait outlived our mastership (a pause, a demotion): a slave may
                    # have taken over without this change, so it is not acknowledged
                    raise NotMasterError(
                        f"this node is not the master any more: it stopped being master while "
                        f"changes up to ({epoch}, {last}) were replicating, which may be lost; "
                        "retry on the new master"
                    )
        except BaseException as exc:
            for ticket in group:
                ticket.error = exc
        finally:
            for ticket in group:
                ticket.done = True

    def _await(self, links: list[_Link], seq: int) -> None:
        # called under the lock; Condition.wait releases it, so other writers pipeline.
        # _awaiting tells the receive threads to take the lock and notify; they store
        # the acknowledgement before they look at it, and we look at the acknowledgements
        # after setting it, so none is missed.
        self._awaiting = True
        self._awaited = (links, seq)
        try:
            self._await_acks(links, seq)
        finally:
            self._awaiting = False
            self._awaited = None

    def _await_acks(self, links: list[_Link], seq: int) -> None:
        deadline = time.monotonic() + self.ack_timeout
        while True:
            pending = [link for link in links if not link.closed and link.acked[1] < seq]
            if not pending:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for link in pending:
                    self.dropped_slow += 1
                    log.warning(
                        "slave %s did not acknowledge within %.3f s: dropped from the live "
                        "set; it catches up when it reconnects",
                        link.node_id,
                        self.ack_timeout,
                    )
                    link.close("too slow to acknowledge", tell=RefuseCode.TOO_SLOW)
                return
            self.cond.wait(remaining)

    def slave_lag(self) -> list[SlaveLag]:
        """Every connected slave and how far behind it is (for metrics; cheap)."""
        now = time.monotonic()
        with self.lock:
            last = self.replica.position[1]
            commits = list(self._commit_times)
            links = [(ln.node_id, ln.live, ln.acked[1], ln.joined_at) for ln in self.links]
        lags = []
        for node_id, live, acked, joined_at in links:
            changes = max(0, last - acked)
            seconds = 0.0
            if changes:
                # the oldest commit the slave has not acknowledged, else when it joined
                index = bisect.bisect_right(commits, (acked, float("inf")))
                since = commits[index][1] if index < len(commits) else joined_at
                seconds = max(0.0, now - min(since, now))
            lags.append(SlaveLag(node_id, live, changes, seconds))
        return lags

    def live_slaves(self) -> list[str]:
        with self.lock:
            return [link.node_id for link in self.links if link.live]

    def close(self, timeout: float = 2.0) -> None:
        self._closed = True
        deadline = time.monotonic() + timeout
        for link in self.resign("the master is closing", flush=True):
            if link.sender is not None:
                link.sender.join(max(0.0, deadline - time.monotonic()))
        _close(self._listener)
        self._thread.join(max(0.1, deadline - time.monotonic()))

    # -- connections -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _send_timeout(sock, max(5.0, self.ack_timeout))
            link = _Link(self, sock, address)
            threading.Thread(
                target=link.receive_loop, name="twinweave-repl-in", daemon=True
            ).start()

    def _on_frame(self, link: _Link, frame: object) -> None:
        if isinstance(frame, Hello):
            self._greet(link, frame)
        elif isinstance(frame, Ack):
            link.acked = (frame.epoch, frame.seq)
            if link.live and not self._awaiting:
                return  # nobody waits for acknowledgements (async, or idle): no lock
            with self.lock:
                awaited = self._awaited
                if not link.live and not link.closed and link.acked[1] >= link.target[1]:
                    link.live = True
                    log.info("slave %s is live at (%d, %d)", link.node_id, *link.acked)
                    awaited = None
                if awaited is None or all(
                    other.closed or other.acked[1] >= awaited[1] for other in awaited[0]
                ):
                    self.cond.notify_all()
        elif isinstance(frame, Refuse):
            link.close(f"the slave refused: {frame.reason}")
        else:
            self._count("order")
            link.close(f"unexpected {type(frame).__name__} from a slave")

    def _greet(self, link: _Link, hello: Hello) -> None:
        link.node_id = hello.node_id
        if hello.cluster != self.cluster:
            self._count("foreign")
            self._refuse(
                link, RefuseCode.FOREIGN, f"this is cluster {self.cluster!r}, not {hello.cluster!r}"
            )
            return
        with self.lock:
            if not self.epoch or not self.is_master():
                self._refuse(link, RefuseCode.NOT_MASTER, "not the master")
                return
            if hello.epoch > self.epoch:
                self._refuse(
                    link,
                    RefuseCode.STALE_MASTER,
                    f"stale master: epoch {self.epoch} < {hello.epoch}",
                )
                return
            history = self.replica.history_after((hello.data_epoch, hello.data_seq))
            snapshot = history is None
            if snapshot:
                try:
                    position, items = self.replica.snapshot()
                except Exception as exc:  # our own changes cannot be applied (a full disk)
                    self._refuse(
                        link, RefuseCode.MASTER_FAILED, f"the master cannot read its state: {exc}"
                    )
                    return
            link.enqueue(Welcome(self.node_id, link.session.nonce, self.epoch, snapshot))
            if snapshot:
                self.snapshots += 1
                link.enqueue(SnapshotBegin(*position))
                for item in items:
                    link.enqueue(item)
                link.enqueue(SnapshotEnd(*position))
            else:
                for op in history:
                    link.enqueue(op)
            link.target = self.replica.position
            link.acked = (0, 0)
            if not snapshot and (hello.data_epoch, hello.data_seq) == link.target:
                link.live = True  # already up to date
                link.acked = link.target
            # started before the link is listed: close() joins the sender of every
            # listed link, and joining a thread not yet started raises
            link.sender = threading.Thread(
                target=link.send_loop, name="twinweave-repl-out", daemon=True
            )
            link.sender.start()
            self.links.append(link)
            how = "snapshot" if snapshot else f"{len(history)} changes"
        log.info("slave %s joined from (%d, %d): %s", link.node_id, *link.target, how)

    def _refuse(self, link: _Link, code: RefuseCode, reason: str) -> None:
        log.info("replication refused to %s: %s", link.node_id, reason)
        try:
            link.sock.sendall(link.session.encode(Refuse(code, reason)))
        except (OSError, WireError):
            pass
        link.closed = True
        _close(link.sock)

    def _count(self, reason: str) -> None:
        self.refused[reason] += 1


class Follower:
    """The slave side: follow one master at a time, apply and acknowledge its stream."""

    def __init__(
        self,
        replica: Replica,
        cluster: str,
        node_id: str,
        secret: bytes | None,
        known_epoch: Callable[[], int],
        on_position: Callable[[tuple[int, int], bool], None],
        retry_s: float = 0.2,
        on_gone: Callable[[str, int, int, float | None], None] | None = None,
    ) -> None:
        self.replica = replica
        #: called (host, port, epoch, closed_at) when the master's port refuses the
        #: connection: no process listens there any more (its host answered for it).
        #: closed_at is the time.monotonic() at which a link that this master had
        #: welcomed closed without a goodbye (a clean close or a reset) before the
        #: refusal; None when none did since the last report
        self.on_gone = on_gone
        self.cluster = cluster
        self.node_id = node_id
        self.secret = secret
        self.known_epoch = known_epoch
        self.on_position = on_position
        self.retry_s = retry_s
        self.refused: collections.Counter[str] = collections.Counter()
        self.in_sync = False  # caught up with the current master (or with the last one)
        self._target: tuple[str, int, int] | None = None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._welcomed = False  # the current session was welcomed by the master
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._changed = threading.Event()  # wakes a retry wait at once

    def follow(self, host: str, port: int, epoch: int) -> None:
        """Replicate from the master at host:port (epoch given for logs and checks)."""
        with self._lock:
            if self._target == (host, port, epoch):
                return
            self._target = (host, port, epoch)
            self._generation += 1
            generation = self._generation
            self._drop_socket()
            self._changed.set()
        # the new thread waits for the old one to finish, so that only one applies at a time
        # (the caller, the failover loop, must not block)
        thread = threading.Thread(
            target=self._run,
            args=(generation, self._thread),
            name="twinweave-follower",
            daemon=True,
        )
        self._thread = thread
        thread.start()

    def detach(self) -> None:
        """Stop following without waiting (the master was lost; an election is under way)."""
        with self._lock:
            self._target = None
            self._generation += 1
            self._drop_socket()
            self._changed.set()

    def stop(self) -> None:
        """Stop following; returns once nothing more will be applied."""
        with self._lock:
            self._target = None
            self._generation += 1
            self._drop_socket()
            self._changed.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _drop_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _current(self, generation: int) -> bool:
        return generation == self._generation

    def _run(self, generation: int, previous: threading.Thread | None = None) -> None:
        if previous is not None:
            previous.join()
        # After a close without a word, a few retries at once: a master's process that
        # died closes its link and its listening socket a moment apart, and a connection
        # made in that moment is closed or reset too. ``closed_at`` is when the last
        # link that the master had welcomed closed so, reported with the refusal that
        # follows it, once.
        quick = 0
        closed_at: float | None = None
        last_target = None
        while self._current(generation):
            target = self._target
            if target is None:
                return
            if target != last_target:
                last_target, closed_at, quick = target, None, 0
            host, port, epoch = target
            outcome = None
            self._welcomed = False
            try:
                outcome = self._session(generation, host, port)
            except ConnectionRefusedError:
                if self._current(generation) and self.on_gone is not None:
                    self.on_gone(host, port, epoch, closed_at)
                closed_at = None
            except ConnectionResetError as exc:  # a killed process's kernel resets the link
                if self._current(generation):
                    log.info("replication from %s:%d: %s", host, port, exc)
                    outcome = "closed"
            except WireError as exc:
                self.refused[exc.reason] += 1
                log.warning("replication stream from %s:%d refused: %s", host, port, exc)
            except ReplicaError as exc:
                self.refused["gap"] += 1
                log.warning("replication from %s:%d: %s; resynchronising", host, port, exc)
            except OSError as exc:
                if self._current(generation):
                    log.info("replication from %s:%d: %s", host, port, exc)
            except Exception as exc:  # the stores cannot take a change (damaged, locked)
                self.refused["store"] += 1
                log.warning("replication from %s:%d: cannot store a change: %s", host, port, exc)
            if outcome == "closed":
                if self._welcomed:
                    closed_at = time.monotonic()
                if quick < QUICK_RETRIES:
                    quick += 1
                    continue
            quick = 0
            if self._current(generation):
                self._changed.wait(self.retry_s)
                self._changed.clear()

    def _session(self, generation: int, host: str, port: int) -> str | None:
        """One connection to the master; "closed" when the master closed it unannounced."""
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if not self._current(generation):
                _close(sock)
                return
            self._sock = sock
        session = Session(self.secret, initiator=True)
        applier = None
        try:
            self.replica.apply_pending()  # what an earlier session took and could not apply
            position = self.replica.position
            sock.sendall(
                session.encode(
                    Hello(self.cluster, self.node_id, session.nonce, self.known_epoch(), *position)
                )
            )
            master_epoch = 0
            applier = _Applier(self.replica)
            buffer = memoryview(bytearray(RECV_BYTES))
            while self._current(generation):
                data = receive(sock, buffer)
                if not data:
                    return "closed"  # the master went away: we keep what we have (in sync)
                last = None
                ops: list[Op] = []  # consecutive changes are journaled together
                records: list[bytes] = []  # the frames that carry them, as received
                bodies: list[bytes] = []
                for frame, body in zip(session.feed(data, bodies), bodies):
                    if not self._current(generation):
                        break  # promoted or following another master: take nothing more
                    if isinstance(frame, (Op, Batch)):
                        for op in frame.ops if isinstance(frame, Batch) else (frame,):
                            self._check_op(session, sock, op, master_epoch)
                            ops.append(op)
                        records.append(body)
                        continue
                    if ops:
                        self.replica.stage(ops, journal=records)
                        self.replica.apply_pending()
                        last = self.replica.position
                        ops, records = [], []
                    if isinstance(frame, Welcome):
                        self._welcomed = True
                        master_epoch = frame.epoch
                        self._check_epoch(session, sock, master_epoch)
                    elif isinstance(frame, Refuse):
                        self.refused["by-master"] += 1
                        if frame.code is RefuseCode.TOO_SLOW:  # the code, never the text
                            self._set_sync(False)
                        log.info("the master refused replication: %s", frame.reason)
                        return
                    elif isinstance(frame, SnapshotBegin):
                        self._set_sync(False)
                        self.replica.begin_snapshot()
                    elif isinstance(frame, Item):
                        _check_target(frame.cache, frame.key)
                        self.replica.add_item(frame)
                    elif isinstance(frame, SnapshotEnd):
                        self.replica.end_snapshot((frame.epoch, frame.seq))
                        last = (frame.epoch, frame.seq)
                if ops and self._current(generation):
                    # journaled, acknowledged, then applied: the master's wait is one write
                    self.replica.stage(ops, journal=records)
                    last = self.replica.position
                if last is not None and self._current(generation):
                    sock.sendall(session.encode(Ack(*last)))
                    self._set_sync(True)
                applier.wake()  # everything taken, acknowledged or not

        finally:
            with self._lock:
                if self._sock is sock:
                    self._sock = None
            _close(sock)
            if applier is not None:
                applier.finish()  # nothing taken is left unapplied when the session ends

    def _check_epoch(self, session: Session, sock: socket.socket, epoch: int) -> None:
        known = self.known_epoch()
        if epoch < known:  # counted where the WireError is caught, once
            try:
                refusal = Refuse(RefuseCode.STALE_EPOCH, f"stale epoch {epoch} < {known}")
                sock.sendall(session.encode(refusal))
            except (OSError, WireError):
                pass
            raise WireError("stale-epoch", f"master epoch {epoch} is older than {known}")

    def _check_op(self, session: Session, sock: socket.socket, op: Op, master_epoch: int) -> None:
        # Changes from the master's log may come from earlier epochs (a slave catching up
        # across a takeover): the fence is the stream's epoch, checked again at every
        # change in case a newer master has been heard of meanwhile.
        self._check_epoch(session, sock, master_epoch)
        if op.epoch > master_epoch:
            raise WireError(
                "epoch-mismatch", f"change of epoch {op.epoch} on a stream of {master_epoch}"
            )
        _check_target(op.cache, op.key)

    def _set_sync(self, value: bool) -> None:
        self.in_sync = value
        self.on_position(self.replica.position, value)


def _check_target(name: str, key: str) -> None:
    """A change or snapshot entry for a cache the stores would refuse, or for a reserved key
    (NUL first: the store's own position row), is refused ('invalid') before it is staged
    or acknowledged, not counted as a failure of the stores nor written over the position."""
    try:
        check_name(name)
    except ValueError as exc:
        raise WireError("invalid", str(exc)) from None
    try:
        check_key(key)  # the stores' own rule: str, not reserved
    except (KeyError, TypeError) as exc:
        raise WireError("invalid", f"cache {name!r}: {exc}") from None


class _Applier:
    """A slave session's thread that writes taken changes to the stores.

    The receiving thread journals and acknowledges; this one applies, in batches of
    whatever arrived meanwhile (one transaction per run of one store; SQLite releases the
    GIL while it writes, so the next change is received and acknowledged during the
    transaction of the previous one). Nothing reads a slave's stores before
    :meth:`finish` (a promotion stops the follower first). Gathering for a few
    milliseconds first, to make the batches larger, was measured and did not pay: the
    larger transaction holds the GIL longer against the receiving thread.
    A failure (a full disk) is logged and retried at the next wake: what is taken stays
    in the journal, and in the replica's pending changes, until it is applied.
    """

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._wanted = threading.Event()
        self._stop = False
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="twinweave-apply", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wanted.set()

    def finish(self) -> None:
        """Stop the thread, then apply what is left here (errors propagate)."""
        self._stop = True
        self._wanted.set()
        self._thread.join()
        self.replica.apply_pending()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stop:
                return
            try:
                self.replica.apply_pending()
                self._failing = False
            except Exception as exc:  # kept pending and journaled; retried at the next wake
                if not self._failing:
                    log.warning("replicated changes cannot be applied yet: %s", exc)
                self._failing = True


def _batched(frames: list) -> list:
    """Consecutive changes travel as one Batch frame."""
    out: list = []
    run: list[Op] = []
    for frame in frames:
        if isinstance(frame, Op):
            run.append(frame)
            continue
        if isinstance(frame, Batch):
            run.extend(frame.ops)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else Batch(tuple(run)))
            run = []
        out.append(frame)
    if run:
        out.append(run[0] if len(run) == 1 else Batch(tuple(run)))
    return _split_batches(out)


def _framed(ops: list[Op]) -> list[tuple[object, bytes]]:
    """One group commit's changes as frames within the wire's limits, with their bodies."""
    out: list[tuple[object, bytes]] = []
    for start in range(0, len(ops), MAX_BATCH_OPS):
        chunk = tuple(ops[start : start + MAX_BATCH_OPS])
        frame: object = chunk[0] if len(chunk) == 1 else Batch(chunk)
        try:
            out.append((frame, encode_body(frame)))
        except WireError as exc:
            if exc.reason != "too-large" or len(chunk) == 1:
                raise
            out.extend((op, encode_body(op)) for op in chunk)  # large values: one per frame
    return out


def _split_batches(frames: list) -> list:
    """No Batch frame over the wire's limit."""
    out: list = []
    for frame in frames:
        if isinstance(frame, Batch) and len(frame.ops) > MAX_BATCH_OPS:
            for start in range(0, len(frame.ops), MAX_BATCH_OPS):
                chunk = frame.ops[start : start + MAX_BATCH_OPS]
                out.append(chunk[0] if len(chunk) == 1 else Batch(chunk))
        else:
            out.append(frame)
    return out


def receive(sock: socket.socket, buffer: memoryview) -> bytes:
    """What one ``recv`` brings (b"" when the peer closed), read into a buffer the caller
    keeps: ``sock.recv(RECV_BYTES)`` would allocate, and the allocator map and unmap,
    RECV_BYTES at every call, three system calls per frame on a synchronous link."""
    return bytes(buffer[: sock.recv_into(buffer)])


def _close(sock: socket.socket) -> None:
    """Shut down (which wakes a thread blocked in recv on it), then close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _send_timeout(sock: socket.socket, seconds: float) -> None:
    """A send that blocks longer than this fails (a paused peer must not hang a thread)."""
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
