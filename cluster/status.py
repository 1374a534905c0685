"""``python -m cluster status``: who is in the cluster, who is master, at which epoch.

This module owns the status view: listening to the heartbeat group for a while
(without ever sending), browsing zeroconf at the same time, merging both by
node id (a heartbeat is fresher than an announcement for role and epoch), and
rendering the result as a table or JSON with the exit status scripts rely on
(0: exactly one master, 1: none or several). It does not parse the command line
(``cluster.__main__``), decode packets (``cluster.protocol``), own sockets
(``cluster.transport``) or speak zeroconf (``cluster.discovery``).
"""

from __future__ import annotations

import json
import logging
import select
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, TextIO

from cluster.discovery import NodeInfo, browse
from cluster.protocol import Codec, Heartbeat, Role
from cluster.transport import Transport, open_transport

if TYPE_CHECKING:
    from cluster.config import Settings

log = logging.getLogger(__name__)

EXIT_ONE_MASTER = 0
EXIT_NOT_ONE_MASTER = 1
# What a heartbeat carries as host when its sender does not know its address.
UNKNOWN_HOST = "0.0.0.0"
_COLUMNS = ("NODE", "ROLE", "EPOCH", "PRIORITY", "ADDRESS", "LAST HEARTBEAT")
# How much longer than asked browse() may take (opening and closing zeroconf).
_BROWSE_SLACK_S = 5.0


@dataclass(frozen=True)
class Heard:
    """The newest heartbeat of one node and when (``time.monotonic()``) it arrived."""

    heartbeat: Heartbeat
    received: float


def default_wait(settings: Settings) -> float:
    """How long status listens unless told: 2.5 heartbeat delays, at least 1 s."""
    return max(1.0, 2.5 * settings.delay_s)


def keep_newest(heard: dict[str, Heard], heartbeat: Heartbeat, received: float) -> None:
    """Record ``heartbeat`` unless a newer one of its node (by incarnation, seq) is there."""
    known = heard.get(heartbeat.node_id)
    if known is not None:
        old = known.heartbeat
        if (heartbeat.incarnation, heartbeat.seq) <= (old.incarnation, old.seq):
            return
    heard[heartbeat.node_id] = Heard(heartbeat, received)


def listen(
    transport: Transport, codec: Codec, wait_s: float
) -> tuple[dict[str, Heard], Counter[str]]:
    """The heartbeats ``codec`` accepts in ``wait_s`` seconds on ``transport``, and the drops.

    Only receives; closes ``transport`` when done.
    """
    heard: dict[str, Heard] = {}
    try:
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([transport.fileno()], [], [], remaining)
            if not ready:
                continue
            for data in transport.receive():
                heartbeat = codec.decode(data)
                if heartbeat is not None:
                    keep_newest(heard, heartbeat, time.monotonic())
    finally:
        transport.close()
    return heard, Counter(codec.dropped)


def merge(heard: Mapping[str, Heard], announced: Iterable[NodeInfo], now: float) -> list[NodeInfo]:
    """One :class:`NodeInfo` per node id, sorted master first, then priority (high first), id.

    ``now`` is the ``time.monotonic()`` the heartbeat ages are measured at.
    """
    nodes: dict[str, NodeInfo] = {node.node_id: node for node in announced}
    for node_id, seen in heard.items():
        hb = seen.heartbeat
        known = nodes.get(node_id)
        unknown_host = hb.host == UNKNOWN_HOST and known is not None
        nodes[node_id] = NodeInfo(
            cluster=hb.cluster,
            node_id=node_id,
            role=Role(hb.role).name.lower(),
            epoch=hb.epoch,
            priority=hb.priority,
            host=known.host if unknown_host else hb.host,
            port=known.port if unknown_host else hb.port,
            last_heartbeat=max(0.0, now - seen.received),
            source="heartbeat" if known is None else "both",
        )
    return sorted(nodes.values(), key=_order)


def _order(node: NodeInfo) -> tuple[bool, int, str]:
    return (node.role != "master", -node.priority, node.node_id)


def masters(nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    return [node for node in nodes if node.role == "master"]


def exit_status(nodes: Iterable[NodeInfo]) -> int:
    """0 when exactly one master is seen, else 1."""
    return EXIT_ONE_MASTER if len(masters(nodes)) == 1 else EXIT_NOT_ONE_MASTER


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary(settings: Settings, nodes: list[NodeInfo]) -> str:
    """``cluster NAME on GROUP:PORT via IFACE: N nodes, master ID (epoch E)``."""
    found = masters(nodes)
    if not found:
        who = "no master"
    elif len(found) == 1:
        who = f"master {found[0].node_id} (epoch {found[0].epoch})"
    else:
        listed = ", ".join(f"{m.node_id} (epoch {m.epoch})" for m in found)
        who = f"{len(found)} masters: {listed}"
    if settings.backend == "etcd":
        where = f"etcd {','.join(settings.etcd_endpoints)} under {settings.etcd_prefix}"
    else:
        where = f"{settings.group}:{settings.port} via {settings.interface_address()}"
    return f"cluster {settings.cluster} on {where}: {_plural(len(nodes), 'node')}, {who}"


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s ago"


def table(nodes: list[NodeInfo]) -> str:
    """The nodes as aligned columns under a header row."""
    rows = [_COLUMNS] + [
        (
            n.node_id,
            n.role,
            str(n.epoch),
            str(n.priority),
            f"{n.host}:{n.port}" if n.port else n.host,
            _age(n.last_heartbeat),
        )
        for n in nodes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def as_json(nodes: list[NodeInfo]) -> str:
    """The nodes as a JSON list of objects (the :class:`NodeInfo` fields)."""
    records = []
    for node in nodes:
        if node.last_heartbeat is not None:
            node = replace(node, last_heartbeat=round(node.last_heartbeat, 3))
        records.append(asdict(node))
    return json.dumps(records, indent=2)


def dropped_note(dropped: Mapping[str, int]) -> str | None:
    """``ignored 3 packets: 2 forged, 1 foreign``, or None when nothing was dropped."""
    counts = sorted(((n, reason) for reason, n in dropped.items() if n > 0), key=_by_count)
    if not counts:
        return None
    total = sum(n for n, _ in counts)
    details = ", ".join(f"{n} {reason}" for n, reason in counts)
    return f"ignored {_plural(total, 'packet')}: {details}"


def _by_count(item: tuple[int, str]) -> tuple[int, str]:
    return (-item[0], item[1])


def from_etcd(settings: Settings) -> list[NodeInfo]:
    """The nodes as their etcd records show them (``failover.backend=etcd``): no waiting.

    The master is the node the leader key names; a record that says master while another
    holds the key (a master that has just stepped down) is shown as a slave.
    """
    from cluster.etcd import collect_nodes

    records, leader = collect_nodes(settings)
    leader_id = leader.get("node") if leader else None
    nodes = []
    for record in records:
        node_id = str(record.get("node"))
        try:
            epoch, priority, port = (
                int(record.get(name, 0) or 0) for name in ("epoch", "priority", "port")
            )
        except (TypeError, ValueError):
            continue  # a record this version cannot read
        nodes.append(
            NodeInfo(
                cluster=settings.cluster,
                node_id=node_id,
                role="master" if node_id == leader_id else "slave",
                epoch=int(leader["create_revision"]) if node_id == leader_id else epoch,
                priority=priority,
                host=str(record.get("host", "")),
                port=port,
                last_heartbeat=None,
                source="etcd",
            )
        )
    return sorted(nodes, key=_order)


def collect(settings: Settings, wait_s: float) -> tuple[list[NodeInfo], Counter[str]]:
    """Heartbeats and zeroconf announcements of the cluster, gathered together for ``wait_s``.

    On the etcd backend, the node records in etcd instead (at once). Raises
    :class:`cluster.transport.TransportError`, before browsing starts, when the heartbeat
    group cannot be joined.
    """
    if settings.backend == "etcd":
        return from_etcd(settings), Counter()
    transport = open_transport(
        settings.group, settings.port, settings.interface_address(), settings.ttl
    )
    announced: list[NodeInfo] = []

    def discover() -> None:
        announced.extend(browse(settings, wait_s))

    browser = threading.Thread(target=discover, name="twinweave-status-browse", daemon=True)
    browser.start()
    heard, dropped = listen(transport, Codec(settings.cluster, settings.secret), wait_s)
    browser.join(wait_s + _BROWSE_SLACK_S)
    if browser.is_alive():
        log.warning("zeroconf browsing did not finish in time; showing heartbeats only")
        return merge(heard, (), time.monotonic()), dropped
    return merge(heard, announced, time.monotonic()), dropped


def report(settings: Settings, wait_s: float, json_output: bool, out: TextIO, err: TextIO) -> int:
    """Run ``status``: gather, print to ``out`` (notes to ``err``), return the exit status."""
    nodes, dropped = collect(settings, wait_s)
    if json_output:
        out.write(as_json(nodes) + "\n")
    else:
        out.write(summary(settings, nodes) + "\n")
        if nodes:
            out.write(table(nodes) + "\n")
    note = dropped_note(dropped)
    if note is not None:
        err.write(f"twinweave: {note}\n")
    return exit_status(nodes)
