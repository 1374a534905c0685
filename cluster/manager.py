"""The failover node: one node's life in a process, whichever backend elects the master.

Owns claiming the node's folder and epoch (``cluster.home``), the replicated cache's
endpoints (the hub it serves as master, the follower it runs as slave, handed to the
cache with ``cache.attach``), what a promotion takes over (the predecessor's in-flight
messages), and stopping: stop hooks with a deadline, then the adapter interrupted if it is
still running, then the exit status (:data:`EXIT_DEMOTED` when the node stepped down, so a
supervisor restarts it as a slave). Who is master is the backend's (``cluster.backend``:
``cluster.multicast`` or ``cluster.etcd``), which reports to the node as its listener; the
node does not run the user's program (the bootstrap does, in the main thread, once
:meth:`Node.wait_promoted` returns).

Log lines are the ones Interlok users know (``Creating listener...``, ``Started
broadcaster``, ``Failover Manager has started``, ``Promoted to Master node``, ``Failover
Manager has been promoted``), at INFO on the ``cluster`` logger.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cache import inflight
from cache.replica import Replica
from cache.replication import Follower, Hub, SlaveLag
from cluster.backend import make_backend
from cluster.config import Settings
from cluster.election import State
from cluster.home import NodeHome

log = logging.getLogger("cluster")

EXIT_DEMOTED = 75  # EX_TEMPFAIL: "try again"; a supervisor restarts the node as a slave
EXIT_FAILED = 1
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
            self.replica = Replica(self.home.path)
        except Exception:
            self.home.release()
            raise
        try:
            self.backend = make_backend(settings, self.node_id, epoch, self._environ)
        except Exception:
            self.replica.close()
            self.home.release()
            raise
        self.host = settings.interface_address()
        self.port = 0  # the replication endpoint, once the cache listens
        self.backend.set_position(self.replica.position)
        self.hub: Hub | None = None
        self.follower: Follower | None = None
        #: what the previous master was processing when this node was promoted
        self.inflight: list[dict] = []
        self._lock = threading.Lock()
        self._closed = False
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
        try:
            self._start_replication()
            self.backend.host, self.backend.port = self.host, self.port
            self.backend.start(self)
        except Exception:
            self.close()
            raise
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
        return not self.stopping.is_set() and self.backend.is_master(time.monotonic())

    @property
    def epoch(self) -> int:
        """The epoch this node is master of, or the last one it followed."""
        return self.backend.epoch

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
            self.backend.resign(wait=False)
        threading.Thread(target=self._stop_sequence, name="twinweave-stop", daemon=True).start()
        return True

    def interrupting(self) -> bool:
        """True while the stop sequence interrupts the adapter (the signal handler asks)."""
        return self._interrupting

    def finish(self, status: int) -> int:
        """The adapter returned (or never ran): resign if master, close, return the status."""
        self._adapter_running = False
        if not self.stopping.is_set():
            if self.promoted.is_set() and not self.backend.is_master(time.monotonic()):
                # the adapter saw the lease run out (the process was paused) before the
                # backend's thread did: that is a step-down, not an adapter that finished
                self.on_demoted("the lease ran out while the adapter ran")
            else:
                self.request_stop("the adapter ended", status)
        self._stopped.wait(self.settings.stop_timeout_ms / 1000 + FORCE_GRACE_S)
        if self._resign and not self.demoted:
            if self.hub is not None and self.backend.state is State.MASTER:
                # what asynchronous writes queued reaches the slaves before they take over
                self.hub.drain(min(2.0, max(0.2, 2 * self.settings.delay_s)))
            self.backend.resign(wait=True)
        self.close()
        if self.demoted:
            return EXIT_DEMOTED
        return self.exit_status if self.exit_status not in (None, 0) else status

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.backend.close()
        if self.follower is not None:
            self.follower.stop()
        if self.hub is not None:
            self.hub.close()
        self.replica.close()
        self.home.release()

    def status(self) -> dict:
        b = self.backend
        return {
            "node": self.node_id,
            "backend": b.name,
            "state": b.state.value,
            "epoch": b.epoch,
            "known_epoch": b.known_epoch,
            "master": b.master,
            "peers": sorted(p.node_id for p in b.peers()),
            "dropped": b.dropped(),
        }

    def metrics(self) -> NodeMetrics:
        """What this node counts, for a metrics endpoint; any thread, no waiting."""
        b = self.backend
        refused: dict[str, int] = {}
        for counter in (
            self.hub.refused if self.hub else {},
            self.follower.refused if self.follower else {},
        ):
            for reason, count in counter.items():
                refused[reason] = refused.get(reason, 0) + count
        state = b.state
        return NodeMetrics(
            cluster=self.settings.cluster,
            node=self.node_id,
            state=state.value,
            is_master=self.is_master(),
            epoch=b.epoch,
            known_epoch=b.known_epoch,
            takeovers=self.takeovers,
            dropped=b.dropped(),
            replicated_writes=self.hub.writes if self.hub else 0,
            replication_refused=refused,
            position=self.replica.position[1],
            slaves=self.hub.slave_lag() if self.hub and state is State.MASTER else [],
        )

    # -- what the backend tells (cluster.backend.Listener), in the backend's thread -------

    def persist_epoch(self, epoch: int) -> bool:
        try:
            self.home.save_epoch(epoch)
        except OSError as exc:
            log.error(
                "cannot persist epoch %d in %s (%s): not taking over", epoch, self.home.path, exc
            )
            self.request_stop("the epoch could not be persisted", EXIT_FAILED, False)
            return False
        return True

    def on_promoted(self, epoch: int, reason: str) -> None:
        self.promoted_at = time.monotonic()
        self.takeovers += 1
        log.info("Promoted to Master node (epoch %d, %s)", epoch, reason)
        log.info("Failover Manager has been promoted")
        self._take_over(epoch)
        self.promoted.set()

    def on_following(self, master: str, epoch: int, endpoint: tuple[str, int] | None) -> None:
        log.info("Following master %s (epoch %d)", master, epoch)
        if self.follower is not None and endpoint is not None:
            self.follower.follow(endpoint[0], endpoint[1], epoch)

    def on_master_lost(self, master: str | None, reason: str) -> None:
        if self.follower is not None:
            self.follower.detach()
        if master is None:
            log.info("No master: %s; standing for election", reason)
        else:
            log.warning("Master %s lost: %s; standing for election", master, reason)

    def on_demoted(self, reason: str) -> None:
        log.warning("Demoted: %s", reason)
        self.demoted = True
        if self.hub is not None:
            self.hub.resign("the master stepped down")
        self.request_stop(f"demoted: {reason}", EXIT_DEMOTED, resign=False)

    def on_failed(self, reason: str) -> None:
        was_master = self.backend.state is State.MASTER
        self.request_stop(reason, EXIT_FAILED, resign=False)
        self.demoted = was_master or self.demoted

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
            on_link_lost=self.backend.link_lost,
        )
        self.port = self.hub.port
        self.follower = Follower(
            self.replica,
            s.cluster,
            self.node_id,
            s.secret,
            known_epoch=lambda: self.backend.known_epoch,
            on_position=self._on_position,
            on_gone=self.backend.master_gone,
        )

    def _on_position(self, position: tuple[int, int], in_sync: bool) -> None:
        # a slave the master dropped ranks last until it has caught up again
        self.backend.set_position(position if in_sync else (0, 0))

    def _take_over(self, epoch: int) -> None:
        """Promotion: stop applying the old stream, serve the new one, note what was in flight."""
        if self.follower is not None:
            self.follower.stop()
        self.backend.set_position(self.replica.position)
        if self.hub is not None:
            self.hub.serve(epoch)
        try:
            self.inflight = inflight.read(self.replica)
        except Exception:
            log.exception("cannot read what the previous master had in flight")
            self.inflight = []
        if self.inflight:
            log.info("the previous master had %d messages in flight", len(self.inflight))


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
