"""The failover manager: the thin loop that owns the sockets and the clock around the election.

Owns one node's life in a process: claiming its folder (``cluster.home``),
opening the multicast transport, a thread that feeds heartbeats and time to
:class:`cluster.election.Election` and performs the actions it returns
(send, persist the epoch, promote, demote), the zeroconf announcement, and
stopping: stop hooks with a deadline, then the adapter interrupted if it is
still running, then the exit status (:data:`EXIT_DEMOTED` when the node
stepped down, so a supervisor restarts it as a slave). It decides nothing about
roles (that is the election's) and does not run the user's program (the
bootstrap does, in the main thread, once :meth:`Node.wait_promoted` returns).

The loop looks at the clock before it reads the packets that waited in the
socket, so a master whose process was paused (SIGSTOP, a VM freeze) finds its
lease gone and steps down before it handles anything; any thread asking
:meth:`Node.is_master` meanwhile already gets "no".

Log lines are the ones Interlok users know (``Creating listener...``,
``Started broadcaster``, ``Failover Manager has started``, ``Promoted to Master
node``, ``Failover Manager has been promoted``), at INFO on the ``cluster``
logger.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cache.replica import Replica
from cache.replication import Follower, Hub, SlaveLag
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
from cluster.home import NodeHome
from cluster.protocol import Codec, Heartbeat, Role
from cluster.transport import open_transport

log = logging.getLogger("cluster")

EXIT_DEMOTED = 75  # EX_TEMPFAIL: "try again"; a supervisor restarts the node as a slave
EXIT_FAILED = 1
LEAVING_COPIES = 3  # a goodbye is sent this many times: losing it costs a whole window
FORCE_GRACE_S = 2.0  # after the stop deadline, how long the adapter gets once interrupted


@dataclass(frozen=True)
class NodeMetrics:
    """A node's counters and gauges at one moment (:meth:`Node.metrics`)."""

    cluster: str
    node: str
    state: str
    """The election state: ``joining``, ``slave``, ``candidate``, ``master``, ``stopped``."""
    is_master: bool
    """Whether it may act as master now (its lease holds)."""
    epoch: int
    """The epoch it is master of, or the last one it followed."""
    known_epoch: int
    """The newest epoch it has heard of."""
    takeovers: int
    """Times this process was promoted."""
    dropped: dict[str, int]
    """Heartbeats dropped, by reason (``cluster.protocol``)."""
    replicated_writes: int
    """Changes this node wrote to the replicated cache as master."""
    replication_refused: dict[str, int]
    """Replication connections refused or ended, by reason (both directions)."""
    position: int
    """Sequence number of the last change in this node's replica."""
    slaves: list[SlaveLag] = field(default_factory=list)
    """On the master: each connected slave's lag."""


class Node:
    """One failover node in this process. Create, :meth:`start`, then wait to be promoted."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = os.environ if environ is None else environ
        self.home = NodeHome.claim(settings)
        self.node_id = self.home.node_id
        try:
            epoch = self.home.load_epoch()
        except Exception:
            self.home.release()
            raise
        try:
            self.replica = Replica(self.home.path)
        except Exception:
            self.home.release()
            raise
        self.incarnation = time.time_ns()
        self.host = settings.interface_address()
        self.port = 0  # the replication endpoint, once the cache listens
        self.codec = Codec(settings.cluster, settings.secret)
        self.machine = Election(
            self.node_id,
            settings.priority,
            Timing(settings.delay_s, settings.retries),
            epoch=epoch,
            incarnation=self.incarnation,
        )
        self.machine.data_position = self.replica.position
        self.transport = None
        self.announcer = None
        self.hub: Hub | None = None
        self.follower: Follower | None = None
        #: what the previous master was processing when this node was promoted
        self.inflight: list[dict] = []
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
        self.promoted = threading.Event()
        #: set once the node starts to stop: the adapter should wind down
        self.stopping = threading.Event()
        self._stopped = threading.Event()  # the stop sequence (hooks, interrupt) is over
        self.stop_reason: str | None = None
        self.exit_status: int | None = None
        self.demoted = False
        self._resign = True
        self._stop_hooks: list[Callable[[], object]] = []
        self._adapter_running = False
        self._interrupting = False
        self.promoted_at: float | None = None
        self.takeovers = 0  # promotions of this node since it started

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
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
        try:
            self.transport = open_transport(s.group, s.port, self.host, s.ttl, self._environ)
        except Exception:
            self.home.release()
            raise
        self._start_replication()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.transport.fileno(), selectors.EVENT_READ)
        self._selector.register(self._wake_r.fileno(), selectors.EVENT_READ)
        self._start_announcer()
        self._thread = threading.Thread(target=self._run, name="twinweave-failover", daemon=True)
        self._thread.start()
        self._started.wait(5.0)
        log.info("Failover Manager has started")

    def wait_promoted(self) -> bool:
        """Block until this node is master (True) or is stopping (False)."""
        while True:
            if self.stopping.is_set():
                return False
            if self.promoted.wait(0.05):
                return not self.stopping.is_set()

    def is_master(self) -> bool:
        """May this node act as master now? Any thread may ask; False once stopping."""
        return not self.stopping.is_set() and self.machine.is_master(time.monotonic())

    def on_stop(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` when the node stops or steps down (within ``failover.stop-timeout``)."""
        self._stop_hooks.append(hook)

    def adapter_started(self) -> None:
        self._adapter_running = True

    def request_stop(self, reason: str, status: int = 0, resign: bool = True) -> bool:
        """Begin stopping (thread-safe, idempotent); False when a stop was already under way."""
        with self._lock:
            if self.stopping.is_set():
                return False
            self.stop_reason = reason
            self.exit_status = status
            self._resign = resign
            self.stopping.set()
        log.info("Stopping node %s: %s", self.node_id, reason)
        if not self._adapter_running and not self.promoted.is_set():
            # a slave: leave the election now, so that it is never promoted while stopping
            self._post(self._say_goodbye)
        threading.Thread(target=self._stop_sequence, name="twinweave-stop", daemon=True).start()
        return True

    def interrupting(self) -> bool:
        """True while the stop sequence interrupts the adapter (the signal handler asks)."""
        return self._interrupting

    def finish(self, status: int) -> int:
        """The adapter returned (or never ran): resign if master, close, return the status."""
        self._adapter_running = False
        if not self.stopping.is_set():
            self.request_stop("the adapter ended", status)
        self._stopped.wait(self.settings.stop_timeout_ms / 1000 + FORCE_GRACE_S)
        if self._resign and not self.demoted:
            if self.hub is not None and self.machine.state is State.MASTER:
                # what asynchronous writes queued reaches the slaves before they take over
                self.hub.drain(min(2.0, max(0.2, 2 * self.settings.delay_s)))
            self._call(self._say_goodbye)
        self.close()
        if self.demoted:
            return EXIT_DEMOTED
        return self.exit_status if self.exit_status not in (None, 0) else status

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        if self.follower is not None:
            self.follower.stop()
        if self.hub is not None:
            self.hub.close()
        self.replica.close()
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
        self.home.release()

    def status(self) -> dict:
        m = self.machine
        return {
            "node": self.node_id,
            "state": m.state.value,
            "epoch": m.epoch,
            "known_epoch": m.known_epoch,
            "master": m.master,
            "peers": sorted(m.peers),
            "dropped": dict(self.codec.dropped),
        }

    def metrics(self) -> NodeMetrics:
        """What this node counts, for a metrics endpoint; any thread, no waiting."""
        m = self.machine
        refused: dict[str, int] = {}
        for counter in (
            self.hub.refused if self.hub else {},
            self.follower.refused if self.follower else {},
        ):
            for reason, count in counter.items():
                refused[reason] = refused.get(reason, 0) + count
        return NodeMetrics(
            cluster=self.settings.cluster,
            node=self.node_id,
            state=m.state.value,
            is_master=self.is_master(),
            epoch=m.epoch,
            known_epoch=m.known_epoch,
            takeovers=self.takeovers,
            dropped=dict(self.codec.dropped),
            replicated_writes=self.hub.writes if self.hub else 0,
            replication_refused=refused,
            position=self.replica.position[1],
            slaves=self.hub.slave_lag() if self.hub and m.state is State.MASTER else [],
        )

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
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
            self.request_stop("the failover loop failed", EXIT_FAILED, resign=False)
            self.demoted = self.machine.state is State.MASTER or self.demoted

    def _step(self) -> None:
        assert self._selector is not None and self.transport is not None
        timeout = self.machine.deadline - time.monotonic()
        if timeout > 0:
            self._selector.select(min(timeout, 1.0))
        # the clock first: a paused master must see its lease gone before any packet
        now = time.monotonic()
        if now >= self.machine.deadline:
            self._apply(self.machine.tick(now))
        for data in self.transport.receive():
            hb = self.codec.decode(data)
            if hb is not None:
                self._apply(self.machine.receive(hb, time.monotonic()))
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
        promotion = self._perform(actions)
        if promotion is not None:
            # after the first master heartbeat went out, so the other candidates hear it
            # while this node stops its follower and takes over
            self._take_over(promotion.epoch)
            self._announce("master", promotion.epoch)
            self.promoted.set()

    def _perform(self, actions: list[Action]) -> Promote | None:
        """Carry out the actions in order; the promotion among them, if any, is returned."""
        promotion: Promote | None = None
        for action in actions:
            if isinstance(action, Send):
                self._send(action.role, action.epoch)
            elif isinstance(action, PersistEpoch):
                try:
                    self.home.save_epoch(action.epoch)
                except OSError as exc:
                    log.error(
                        "cannot persist epoch %d in %s (%s): not taking over",
                        action.epoch,
                        self.home.path,
                        exc,
                    )
                    for goodbye in self.machine.stop(time.monotonic()):
                        self._send(goodbye.role, goodbye.epoch)
                    self.request_stop("the epoch could not be persisted", EXIT_FAILED, False)
                    return None
            elif isinstance(action, Promote):
                self.promoted_at = time.monotonic()
                self.takeovers += 1
                log.info("Promoted to Master node (epoch %d, %s)", action.epoch, action.reason)
                log.info("Failover Manager has been promoted")
                promotion = action
            elif isinstance(action, Demote):
                log.warning("Demoted: %s", action.reason)
                self.demoted = True
                if self.hub is not None:
                    self.hub.resign("the master stepped down")
                self.request_stop(f"demoted: {action.reason}", EXIT_DEMOTED, resign=False)
            elif isinstance(action, Follow):
                log.info("Following master %s (epoch %d)", action.master, action.epoch)
                self._announce("slave", action.epoch)
                peer = self.machine.peers.get(action.master)
                if self.follower is not None and peer is not None and peer.port:
                    self.follower.follow(peer.host, peer.port, action.epoch)
            elif isinstance(action, MasterLost):
                if self.follower is not None:
                    self.follower.detach()
                if action.master is None:
                    log.info("No master: %s; standing for election", action.reason)
                else:
                    log.warning(
                        "Master %s lost: %s; standing for election", action.master, action.reason
                    )
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

    # -- stopping --------------------------------------------------------------------------

    def _stop_sequence(self) -> None:
        """Stop hooks within the deadline, then the adapter interrupted if it still runs."""
        deadline = time.monotonic() + self.settings.stop_timeout_ms / 1000
        for hook in list(self._stop_hooks):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("stop hooks ran out of time (failover.stop-timeout)")
                break
            worker = threading.Thread(target=_run_hook, args=(hook,), daemon=True)
            worker.start()
            worker.join(remaining)
            if worker.is_alive():
                log.error("stop hook %r did not finish within failover.stop-timeout", hook)
        if self._adapter_running and self._stop_hooks:
            # the hooks asked the adapter to stop: give it the rest of the deadline
            while self._adapter_running and time.monotonic() < deadline:
                time.sleep(0.01)
        if self._adapter_running:
            self._interrupting = True
            _interrupt_main()
            limit = time.monotonic() + FORCE_GRACE_S
            while self._adapter_running and time.monotonic() < limit:
                time.sleep(0.01)
            if self._adapter_running:
                log.critical("the adapter did not stop; exiting now")
                for handler in logging.getLogger().handlers + log.handlers:
                    handler.flush()
                os._exit(self.exit_status or EXIT_FAILED)
        self._stopped.set()

    # -- replication -----------------------------------------------------------------------

    @property
    def replication(self) -> Node:
        """What ``cache.get_cache`` needs: ``.replica`` and ``.hub`` (this node)."""
        return self

    def _start_replication(self) -> None:
        s = self.settings
        self.hub = Hub(
            self.replica,
            s.cluster,
            self.node_id,
            self.host,
            s.secret,
            ack_timeout=min(5.0, max(0.2, 2 * s.delay_s)),
            is_master=self.is_master,
            sync=s.replication == "sync",
        )
        self.port = self.hub.port
        self.follower = Follower(
            self.replica,
            s.cluster,
            self.node_id,
            s.secret,
            known_epoch=lambda: self.machine.known_epoch,
            on_position=self._on_position,
        )

    def _on_position(self, position: tuple[int, int], in_sync: bool) -> None:
        # a slave the master dropped ranks last until it has caught up again
        self.machine.data_position = position if in_sync else (0, 0)

    def _take_over(self, epoch: int) -> None:
        """Promotion: stop applying the old stream, serve the new one, note what was in flight."""
        if self.follower is not None:
            self.follower.stop()
        self.machine.data_position = self.replica.position
        if self.hub is not None:
            self.hub.serve(epoch)
        from cache import FAILOVER_CACHE
        from cache.store import decode_value

        try:
            store = self.replica.store(FAILOVER_CACHE)
            self.inflight = [decode_value(value) for _, value, _ in store.items_encoded()]
        except Exception:
            log.exception("cannot read what the previous master had in flight")
            self.inflight = []
        if self.inflight:
            log.info("the previous master had %d messages in flight", len(self.inflight))

    # -- zeroconf --------------------------------------------------------------------------

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


def _run_hook(hook: Callable[[], object]) -> None:
    try:
        hook()
    except Exception:  # one failing hook must not stop the others
        log.exception("stop hook %r failed", hook)


def _interrupt_main() -> None:
    """Wake the main thread with SIGINT; the bootstrap's handler turns it into SystemExit."""
    main = threading.main_thread()
    try:
        signal.pthread_kill(main.ident, signal.SIGINT)  # type: ignore[arg-type]
    except (OSError, ValueError, AttributeError):
        import _thread

        _thread.interrupt_main()
