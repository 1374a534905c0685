"""The seam between a node and the engine that elects its master.

A node (``cluster.manager.Node``) owns what every backend shares: its folder and epoch
file, the replicated cache (hub and follower), the stop sequence and the exit status. A
backend owns who is master: how candidates claim the role, how a master keeps it (renews
its lease) and gives it up (resigns), how slaves watch the master, and where the peers are
listed. Two exist, one module each: ``cluster.multicast`` (heartbeats on a group, the pure
election of ``cluster.election``) and ``cluster.etcd`` (a lease-bound leader key in etcd).

The node drives a backend with :meth:`Backend.start`, :meth:`Backend.resign` and
:meth:`Backend.close`, asks it :meth:`Backend.is_master` from any thread, and tells it the
replicated-state position that ranks candidates. The backend answers through the
:class:`Listener` the node gives it, from the backend's own thread, in the order things
happen: an epoch to persist before it is used, promoted, following a master, master lost,
demoted.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cluster.election import State

if TYPE_CHECKING:
    from cluster.config import Settings


class BackendError(RuntimeError):
    """The backend cannot start as configured (the message says what was tried)."""


class Listener(Protocol):
    """What a backend tells its node (called from the backend's thread)."""

    def persist_epoch(self, epoch: int) -> bool:
        """Write ``epoch`` to the node's folder before it is used; False: do not take over."""

    def on_promoted(self, epoch: int, reason: str) -> None:
        """This node is master of ``epoch`` now."""

    def on_following(self, master: str, epoch: int, endpoint: tuple[str, int] | None) -> None:
        """``master`` leads ``epoch``; ``endpoint`` is its replication address when known."""

    def on_master_lost(self, master: str | None, reason: str) -> None:
        """There is no master any more (``master`` is the one that went, when known)."""

    def on_demoted(self, reason: str) -> None:
        """This node was master and must stop acting as one now (exit 75)."""

    def on_failed(self, reason: str) -> None:
        """The backend cannot go on; the node stops without resigning."""


@dataclass(frozen=True)
class PeerView:
    """Another node as a backend knows it, for status and metrics."""

    node_id: str
    role: str
    epoch: int
    priority: int
    host: str
    port: int


class Backend(abc.ABC):
    """One way of electing a master. Subclasses are one module each."""

    name: str = "?"

    def __init__(self, settings: Settings, node_id: str, epoch: int) -> None:
        self.settings = settings
        self.node_id = node_id
        #: the replication endpoint this node serves (set before :meth:`start`)
        self.host = ""
        self.port = 0
        self._stored_epoch = epoch

    # -- what the node drives -----------------------------------------------------------

    @abc.abstractmethod
    def start(self, listener: Listener) -> None:
        """Open what the backend needs and begin (joining, then slave or master)."""

    @abc.abstractmethod
    def resign(self, wait: bool = True) -> None:
        """Leave the election: a master gives the role up, a slave stops standing.

        With ``wait`` it returns once done (bounded); without, it only asks. Idempotent.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the backend's thread and release what it opened (after :meth:`resign`)."""

    @abc.abstractmethod
    def is_master(self, now: float) -> bool:
        """May this node act as master at ``now`` (``time.monotonic()``)? Any thread."""

    @abc.abstractmethod
    def set_position(self, position: tuple[int, int]) -> None:
        """The replicated-state position (epoch, seq) that ranks this node as a candidate."""

    def link_lost(self) -> None:
        """A slave's replication link to this node ended (called from the hub's threads):
        a master makes itself heard, so that the slave knows it lives. By default nothing."""
        return None

    def master_gone(self, host: str, port: int, epoch: int, closed_at: float | None) -> None:
        """The master of ``epoch`` at host:port refused a replication connection: its host
        says no process listens there, so it died. ``closed_at`` (``time.monotonic()``) is
        when a link that this master had welcomed closed without a goodbye before the
        refusal, None when none did since the last report. A backend may stand at once
        instead of waiting for the master's lease or heartbeats to run out (called from the
        follower's thread); by default nothing changes."""
        return None

    # -- what the node reads (status, metrics) ------------------------------------------

    @property
    @abc.abstractmethod
    def state(self) -> State: ...

    @property
    @abc.abstractmethod
    def epoch(self) -> int:
        """The epoch this node is master of, or the last one it followed."""

    @property
    @abc.abstractmethod
    def known_epoch(self) -> int:
        """The newest epoch this node has heard of."""

    @property
    @abc.abstractmethod
    def master(self) -> str | None:
        """The id of the master as this node knows it."""

    @abc.abstractmethod
    def peers(self) -> list[PeerView]:
        """The other nodes as last seen."""

    def dropped(self) -> dict[str, int]:
        """Messages dropped by reason (the multicast backend's forged packets, say)."""
        return {}


def make_backend(settings: Settings, node_id: str, epoch: int, environ: object) -> Backend:
    """The backend ``failover.backend`` names."""
    if settings.backend == "etcd":
        from cluster.etcd import EtcdBackend

        return EtcdBackend(settings, node_id, epoch)
    from cluster.multicast import MulticastBackend

    return MulticastBackend(settings, node_id, epoch, environ)
