"""The multicast backend: heartbeats on a group, the pure election, zeroconf.

Owns the heartbeat socket (``cluster.transport``), a thread that feeds heartbeats and time
to :class:`cluster.election.Election` and carries out the actions it returns (send, and
through the node's :class:`cluster.backend.Listener`: persist the epoch, promoted,
following, master lost, demoted), and the zeroconf announcement. It decides nothing itself
(the election does) and knows nothing of the cache or the adapter (the node does).

The loop looks at the clock before it reads the packets that waited in the socket, so a
master whose process was paused (SIGSTOP, a VM freeze) finds its lease gone and steps down
before it handles anything; any thread asking :meth:`MulticastBackend.is_master` meanwhile
already gets "no".
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping

from cluster.backend import Backend, Listener, PeerView
from cluster.config import Settings
from cluster.election import (
    Action,
    Demote,
    Election,
    Follow,
    MasterLost,
    PersistEpoch,
    Promote,
    Send,
    State,
    Timing,
)
from cluster.protocol import Codec, Heartbeat, Role
from cluster.transport import open_transport

log = logging.getLogger("cluster")

LEAVING_COPIES = 3  # a goodbye is sent this many times: losing it costs a whole window


class MulticastBackend(Backend):
    name = "multicast"

    def __init__(
        self, settings: Settings, node_id: str, epoch: int, environ: Mapping[str, str]
    ) -> None:
        super().__init__(settings, node_id, epoch)
        self._environ = environ
        self.incarnation = time.time_ns()
        self.codec = Codec(settings.cluster, settings.secret)
        self.machine = Election(
            node_id,
            settings.priority,
            Timing(settings.delay_s, settings.retries),
            epoch=epoch,
            incarnation=self.incarnation,
        )
        self.transport = None
        self.announcer = None
        self._listener: Listener | None = None
        self._seq = 0
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._started = threading.Event()

    # -- the seam ---------------------------------------------------------------------------

    def start(self, listener: Listener) -> None:
        s = self.settings
        self._listener = listener
        log.info(
            "Node %s of cluster %s: group %s:%d via %s, delay %d ms, retries %d, priority %d%s",
            self.node_id,
            s.cluster,
            s.group,
            s.port,
            self.host,
            s.delay_ms,
            s.retries,
            s.priority,
            ", authenticated" if s.secret else "",
        )
        log.info("Creating listener...")
        log.info("Creating broadcaster...")
        self.transport = open_transport(s.group, s.port, self.host, s.ttl, self._environ)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.transport.fileno(), selectors.EVENT_READ)
        self._selector.register(self._wake_r.fileno(), selectors.EVENT_READ)
        self._start_announcer()
        self._thread = threading.Thread(target=self._run, name="twinweave-failover", daemon=True)
        self._thread.start()
        self._started.wait(5.0)

    def resign(self, wait: bool = True) -> None:
        if wait:
            self._call(self._say_goodbye)
        else:
            self._post(self._say_goodbye)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        if self.announcer is not None:
            try:
                self.announcer.close(0.5)  # goodbyes finish in the background
            except Exception:  # best effort at exit
                log.debug("closing the zeroconf announcer failed", exc_info=True)
        if self.transport is not None:
            self.transport.close()
        if self._selector is not None:
            self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def is_master(self, now: float) -> bool:
        return self.machine.is_master(now)

    def set_position(self, position: tuple[int, int]) -> None:
        self.machine.data_position = position

    def link_lost(self) -> None:
        self._post(self._reassure)

    def _reassure(self) -> None:
        if not self._closed:
            self._apply(self.machine.reassure(time.monotonic()))

    def master_gone(self, host: str, port: int, epoch: int, closed_at: float | None) -> None:
        """A slave stands at once when its master's process died (the election decides).

        Only after a link that closed without a goodbye: a refusal with no link before it
        (the master's port not reachable yet, a stale address) proves nothing new.
        """
        if closed_at is None:
            return
        self._post(lambda: self._on_master_gone(host, port, epoch, closed_at))

    def _on_master_gone(self, host: str, port: int, epoch: int, closed_at: float) -> None:
        if self._closed:
            return
        ignored = self.machine.gone_ignored
        actions = self.machine.master_gone(host, port, epoch, closed_at, time.monotonic())
        if self.machine.gone_ignored > ignored:
            log.info(
                "replication port %s:%d of epoch %d refused, but that is not the master "
                "as last heard (or it beat since): no election",
                host,
                port,
                epoch,
            )
        elif actions:
            log.warning(
                "the master's replication port %s:%d refused a connection after its link "
                "closed: its process looks gone; standing for election in %.0f ms unless "
                "it beats",
                host,
                port,
                self.machine.timing.settle * 1000,
            )
        self._apply(actions)

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def epoch(self) -> int:
        return self.machine.epoch

    @property
    def known_epoch(self) -> int:
        return self.machine.known_epoch

    @property
    def master(self) -> str | None:
        return self.machine.master

    def peers(self) -> list[PeerView]:
        return [
            PeerView(p.node_id, p.role.value, p.epoch, p.priority, p.host, p.port)
            for p in list(self.machine.peers.values())
        ]

    def dropped(self) -> dict[str, int]:
        return dict(self.codec.dropped)

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._listener is not None
        try:
            log.info("Started listener")
            self._apply(self.machine.start(time.monotonic()))
            log.info("Started broadcaster")
            self._started.set()
            while not self._closed:
                self._step()
        except Exception:  # the node must not keep a master without its loop
            log.critical("the failover loop failed; stopping this node", exc_info=True)
            self._started.set()
            self._listener.on_failed("the failover loop failed")

    def _step(self) -> None:
        assert self._selector is not None and self.transport is not None
        timeout = self.machine.deadline - time.monotonic()
        if timeout > 0:
            self._selector.select(min(timeout, 1.0))
        # A master looks at the clock first: paused, it must see its lease gone before any
        # packet. Any other node reads first what waited while it was starved (a heartbeat
        # of its master proves that master alive), then looks at the clock.
        clock_first = self.machine.state is State.MASTER
        if clock_first and time.monotonic() >= self.machine.deadline:
            self._apply(self.machine.tick(time.monotonic()))
        for data in self.transport.receive():
            hb = self.codec.decode(data)
            if hb is not None:
                self._apply(self.machine.receive(hb, time.monotonic()))
        if not clock_first and time.monotonic() >= self.machine.deadline:
            self._apply(self.machine.tick(time.monotonic()))
        if self.machine.id_conflicts:
            log.error(
                "another running node uses the id %s; give each node its own "
                "failover.node-id or cache.directory",
                self.node_id,
            )
            self.machine.id_conflicts = 0
        self._drain_wake()
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call()

    def _apply(self, actions: list[Action]) -> None:
        assert self._listener is not None
        promotion = self._perform(actions)
        if promotion is not None:
            # after the first master heartbeat went out, so the other candidates hear it
            # while the node stops its follower and takes over
            self._listener.on_promoted(promotion.epoch, promotion.reason)
            self._announce("master", promotion.epoch)

    def _perform(self, actions: list[Action]) -> Promote | None:
        """Carry out the actions in order; the promotion among them, if any, is returned."""
        listener = self._listener
        assert listener is not None
        promotion: Promote | None = None
        for action in actions:
            if isinstance(action, Send):
                self._send(action.role, action.epoch)
            elif isinstance(action, PersistEpoch):
                if not listener.persist_epoch(action.epoch):
                    for goodbye in self.machine.stop(time.monotonic()):
                        if isinstance(goodbye, Send):
                            self._send(goodbye.role, goodbye.epoch)
                    return None
            elif isinstance(action, Promote):
                promotion = action
            elif isinstance(action, Demote):
                listener.on_demoted(action.reason)
            elif isinstance(action, Follow):
                self._announce("slave", action.epoch)
                peer = self.machine.peers.get(action.master)
                endpoint = (peer.host, peer.port) if peer is not None and peer.port else None
                listener.on_following(action.master, action.epoch, endpoint)
            elif isinstance(action, MasterLost):
                listener.on_master_lost(action.master, action.reason)
        return promotion

    def _send(self, role: Role, epoch: int) -> None:
        if self.transport is None:
            return
        self._seq += 1
        data_epoch, data_seq = self.machine.data_position
        hb = Heartbeat(
            cluster=self.settings.cluster,
            node_id=self.node_id,
            role=role,
            epoch=epoch,
            priority=self.settings.priority,
            incarnation=self.incarnation,
            seq=self._seq,
            sent_ms=time.time_ns() // 1_000_000,
            host=self.host,
            port=self.port,
            data_epoch=data_epoch,
            data_seq=data_seq,
        )
        self.transport.send(self.codec.encode(hb))

    def _say_goodbye(self) -> None:
        was_master = self.machine.state is State.MASTER
        for action in self.machine.stop(time.monotonic()):
            if isinstance(action, Send):
                for _ in range(LEAVING_COPIES):
                    self._send(action.role, action.epoch)
        if was_master:
            log.info("Resigned as master (epoch %d)", self.machine.epoch)

    def _post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the loop thread soon, without waiting (at once from the loop thread
        itself, or when the loop is gone)."""
        thread = self._thread
        if self._closed or thread is None or not thread.is_alive():
            fn()
        elif thread is threading.current_thread():
            fn()
        else:
            with self._lock:
                self._calls.append(fn)
            self._wake()

    def _call(self, fn: Callable[[], None], timeout: float = 2.0) -> None:
        """Run ``fn`` in the loop thread and wait for it (at most ``timeout``)."""
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._post(run)
        done.wait(timeout)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except OSError:
            pass

    # -- zeroconf ---------------------------------------------------------------------------

    def _start_announcer(self) -> None:
        try:
            from cluster.discovery import Announcer

            self.announcer = Announcer(
                self.settings, self.node_id, self.host, self.port, self.settings.priority
            )
            self.announcer.start()
        except Exception as exc:  # announcing is best effort
            log.warning("zeroconf announcement disabled: %s", exc)
            self.announcer = None

    def _announce(self, role: str, epoch: int) -> None:
        if self.announcer is not None:
            try:
                self.announcer.update(role, epoch)
            except Exception:  # best effort
                log.debug("zeroconf update failed", exc_info=True)
