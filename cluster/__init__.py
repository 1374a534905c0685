"""twinweave's failover cluster, and what an adapter may ask of it.

Several instances of one adapter run as the nodes of a cluster; exactly one,
the master, runs the adapter (``python -m agent.bootstrap --failover ...``).
The package is split by concern: settings (``config``), the node's folder and
epoch (``home``), the node's life (``manager``), the seam to what elects the
master (``backend``) and its two backends: ``multicast`` (the wire format in
``protocol``, the sockets in ``transport``, the pure election in ``election``,
zeroconf in ``discovery``) and ``etcd`` (a lease-bound leader key); and
``python -m cluster status``.

For the adapter, this module answers a few questions; each works outside
failover mode too, as if the process were a cluster of one::

    import cluster
    cluster.on_stop(poller.stop)      # called when the node stops or steps down
    while not cluster.stopping():
        if cluster.is_master():       # False as soon as the lease is in doubt
            process(next_message())
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from cluster.manager import Node

_node: Node | None = None


def current() -> Node | None:
    """The failover node of this process, or None outside failover mode."""
    return _node


def install(node: Node | None) -> None:
    """Make ``node`` the one the module-level functions answer for (the bootstrap's job)."""
    global _node
    import cache  # the one way the dependency runs: cluster -> cache

    _node = node
    if node is not None and node.hub is not None:
        cache.attach(node.replica, node.hub)
    else:
        cache.detach()


def is_master() -> bool:
    """May this process do master work now? Always True outside failover mode."""
    return _node is None or _node.is_master()


def stopping() -> bool:
    """True once the node has begun to stop (signal, demotion): finish up and return."""
    return _node is not None and _node.stopping.is_set()


def on_stop(hook: Callable[[], object]) -> None:
    """Call ``hook`` (no arguments) when the node stops or steps down.

    Hooks run one after another in a helper thread, within ``failover.stop-timeout``
    in all; then the adapter, if still running, is interrupted with ``SystemExit``.
    Outside failover mode the hook is never called by the cluster.
    """
    if _node is not None:
        _node.on_stop(hook)


def node_id() -> str:
    """This node's id (outside failover mode: ``$TWINWEAVE_NODE_ID`` or the host name)."""
    if _node is not None:
        return _node.node_id
    return os.environ.get("TWINWEAVE_NODE_ID") or socket.gethostname().split(".")[0]


def epoch() -> int:
    """The epoch this node is master of, or the last it followed (0 outside failover mode)."""
    return 0 if _node is None else _node.epoch


def inflight() -> list[dict]:
    """What the previous master was processing when this node took over.

    One dict per message its workflows had started and not finished (recorded by
    the ``failover`` plugin in ``FAILOVER_CACHE``): ``message_id``, ``aspect``,
    ``step``, ``start`` (Unix time), ``node``, ``epoch``, and, when a span was
    current as the workflow started (OpenTelemetry), its W3C trace context:
    ``traceparent``, plus ``tracestate`` when not empty (the ``opentelemetry``
    plugin links the redelivery's span to it). Redeliver them, checking first
    whether each was delivered: a master can die after a message's work and before
    its record went (the record's removal is not waited for, so it may also be the
    call that ended just before the takeover). Empty outside failover mode, on a
    slave, or when nothing was in flight.
    """
    if _node is None:
        return []
    return [dict(entry) for entry in _node.inflight]
