"""Zeroconf announcements of cluster nodes, and browsing for them, on one interface only.

This module owns the DNS-SD face of a node: the service type, the instance name
and TXT properties a node announces (:class:`Announcer`, run by a background
thread so the failover loop never waits on zeroconf), reading them back
(:func:`browse`, :class:`NodeInfo`), and the socket options that keep zeroconf
on the configured interface with the configured multicast TTL. Announcing is
best effort: any zeroconf failure is logged once and the node runs on without
it. Not here: heartbeats and elections (``cluster.protocol``,
``cluster.election``), merging what is announced with what is heard on the
heartbeat group (``cluster.status``), and settings (``cluster.config``).

Usage::

    announcer = Announcer(settings, node_id, host, replication_port, settings.priority)
    announcer.start()                 # returns at once; registration runs in a thread
    announcer.update("master", 7)     # returns at once; rapid updates coalesce
    announcer.close()                 # goodbye packets, bounded wait

    nodes = browse(settings, timeout_s=2.0)   # blocks for about timeout_s
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zeroconf import (
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceListener,
    Zeroconf,
)

if TYPE_CHECKING:
    from cluster.config import Settings

log = logging.getLogger(__name__)

SERVICE_TYPE = "_twinweave._udp.local."
TXT_VERSION = "1"
ROLES = ("slave", "master", "leaving")

# DNS labels hold at most 63 bytes (RFC 1035 2.3.4, RFC 6763 4.1.1).
_MAX_LABEL_BYTES = 63
# Linux only, and missing from the socket module: without IP_MULTICAST_ALL=0 a
# socket bound to the wildcard address receives a group's packets from every
# interface where *any* socket of the host joined it (an avahi daemon on eth0,
# say), not only from the interface it joined itself. See ip(7).
_IP_MULTICAST_ALL = 49
# Share of browse()'s time spent listening; the rest resolves names whose
# records did not come along with the answers (responders usually send them).
_LISTEN_SHARE = 0.8


@dataclass(frozen=True)
class NodeInfo:
    """One node as ``python -m cluster status`` and replication see it."""

    cluster: str
    node_id: str
    role: str
    """``"slave"``, ``"master"`` or ``"leaving"``."""
    epoch: int
    priority: int
    host: str
    port: int
    """The node's replication port."""
    last_heartbeat: float | None
    """Seconds since its last heartbeat was heard; None if it was only announced."""
    source: str
    """``"zeroconf"``, ``"heartbeat"`` or ``"both"``."""


class DiscoveryError(OSError):
    """Zeroconf cannot run on the configured interface as configured."""


def instance_name(node_id: str, cluster: str = "") -> str:
    """The DNS-SD instance name of a node: ``node@cluster`` made one valid label, then the type.

    The cluster is part of the name so that nodes of two clusters with the same ids
    (``a``, ``b``...) on one network never collide. Dots and control characters
    become ``-`` and the label is cut to 63 bytes of UTF-8 without splitting a
    character; the full id and cluster travel in the TXT properties.
    """
    name = f"{node_id}@{cluster}" if cluster else node_id
    label = re.sub(r"[.\x00-\x1f\x7f]", "-", name) or "-"
    encoded = label.encode("utf-8")[:_MAX_LABEL_BYTES]
    return f"{encoded.decode('utf-8', errors='ignore')}.{SERVICE_TYPE}"


def _server_name(node_id: str, cluster: str = "") -> str:
    """A host name of our own per node, so two nodes on one machine never share one."""
    label = re.sub(r"[^a-z0-9-]", "-", f"{node_id}-{cluster}".lower() if cluster else node_id)
    return f"tw-{label}"[:_MAX_LABEL_BYTES].rstrip("-") + ".local."


def txt_properties(
    settings: Settings,
    node_id: str,
    role: str,
    epoch: int,
    priority: int,
    host: str,
    port: int,
) -> dict[str, str]:
    """The TXT record a node announces (version 1)."""
    return {
        "v": TXT_VERSION,
        "cluster": settings.cluster,
        "node": node_id,
        "role": role,
        "epoch": str(epoch),
        "priority": str(priority),
        "host": host,
        "port": str(port),
        "group": settings.group,
        "hbport": str(settings.port),
    }


def node_from_properties(
    properties: Mapping[bytes, bytes | None], addresses: Iterable[str] = ()
) -> NodeInfo | None:
    """Read a TXT record back; None when it is not a version-1 twinweave record.

    ``addresses`` (the service's A records) stand in for a missing ``host``.
    """
    text = {
        key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
        for key, value in properties.items()
        if value is not None
    }
    if text.get("v") != TXT_VERSION or text.get("role") not in ROLES:
        return None
    host = text.get("host") or next(iter(addresses), "")
    try:
        return NodeInfo(
            cluster=text["cluster"],
            node_id=text["node"],
            role=text["role"],
            epoch=int(text["epoch"]),
            priority=int(text["priority"]),
            host=host,
            port=int(text["port"]),
            last_heartbeat=None,
            source="zeroconf",
        )
    except (KeyError, ValueError):
        return None


def _confine(zc: Zeroconf, ttl: int) -> None:
    """Give every zeroconf socket our multicast TTL and, on Linux, our interface only.

    Zeroconf binds its sender to the interface address and sets
    IP_MULTICAST_IF itself, but always with TTL 255 (RFC 6762 11); it exposes
    its sockets only through its engine's asyncio transports. Raises
    :class:`DiscoveryError` when there is no socket to confine, so nothing is
    ever sent with options we did not set.
    """
    engine = getattr(zc, "engine", None)
    if not getattr(engine, "senders", None):
        raise DiscoveryError(
            "zeroconf opened no socket it can send with on this interface "
            "(does the interface exist and allow multicast?)"
        )
    sockets: dict[int, Any] = {}  # asyncio TransportSocket wrappers
    for wrapped in [*getattr(engine, "readers", ()), *engine.senders]:
        sock = wrapped.transport.get_extra_info("socket")
        if sock is None:
            raise DiscoveryError("this zeroconf version hides its sockets: cannot set the TTL")
        sockets[sock.fileno()] = sock
    for sock in sockets.values():
        # One byte, as BSDs require; Linux accepts it too.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", ttl))
        if sys.platform.startswith("linux"):
            sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)


def _open_zeroconf(settings: Settings) -> Zeroconf:
    """A Zeroconf instance on the configured interface only, confined before it sends anything."""
    zc = Zeroconf(interfaces=[settings.interface_address()], ip_version=IPVersion.V4Only)
    try:
        _confine(zc, settings.ttl)
    except BaseException:
        zc.close()
        raise
    return zc


class _Names(ServiceListener):
    """Collects the instance names a browser reports as present."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self._lock:
            self._names.add(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self._lock:
            self._names.discard(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)


class Announcer:
    """Announces one node with zeroconf from a background thread; never fatal, never blocking.

    The thread opens zeroconf on the configured interface, registers the node
    (as a slave at epoch 0 unless :meth:`update` said otherwise before; probing
    for the name takes about 1.5 s), then applies the latest :meth:`update` each
    time it changes; updates that arrive while one is being sent (about 0.5 s)
    coalesce into the newest. :meth:`close` sends goodbye packets and waits a
    bounded time. Any failure is logged once as a warning and announcing stops
    there; the node keeps running.
    """

    def __init__(
        self, settings: Settings, node_id: str, host: str, port: int, priority: int
    ) -> None:
        self._settings = settings
        self._node_id = node_id
        self._host = host
        self._port = port
        self._priority = priority
        self._changed = threading.Condition()
        self._wanted: tuple[str, int] = ("slave", 0)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start announcing; returns as soon as the thread runs."""
        if self._thread is not None:
            raise RuntimeError("Announcer.start() called twice; make one Announcer per start")
        self._thread = threading.Thread(
            target=self._run, name=f"twinweave-announcer-{self._node_id}", daemon=True
        )
        self._thread.start()

    def update(self, role: str, epoch: int) -> None:
        """Announce a new role and epoch; returns at once, the thread sends the newest."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        with self._changed:
            self._wanted = (role, epoch)
            self._changed.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Unregister (goodbye packets), close zeroconf and wait at most ``timeout`` seconds."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.debug(
                "zeroconf announcer of %s still finishing after %.1f s", self._node_id, timeout
            )

    def _info(self, role: str, epoch: int) -> ServiceInfo:
        properties = txt_properties(
            self._settings, self._node_id, role, epoch, self._priority, self._host, self._port
        )
        try:
            addresses = [socket.inet_aton(self._host)]
        except OSError:
            addresses = []
        return ServiceInfo(
            SERVICE_TYPE,
            instance_name(self._node_id, self._settings.cluster),
            port=self._port,
            properties=properties,
            server=_server_name(self._node_id, self._settings.cluster),
            addresses=addresses,
        )

    def _next(self, applied: tuple[str, int] | None) -> tuple[str, int] | None:
        """Wait until there is something new to announce; None when closing."""
        with self._changed:
            while not self._stopping and self._wanted == applied:
                self._changed.wait()
            return None if self._stopping else self._wanted

    def _run(self) -> None:
        zc: Zeroconf | None = None
        registered: ServiceInfo | None = None
        try:
            zc = _open_zeroconf(self._settings)
            wanted = self._next(None)
            if wanted is not None:
                info = self._info(*wanted)
                _register(zc, info)
                registered = info
                log.debug("announced %s as %s", self._node_id, info.name)
            while wanted is not None:
                wanted = self._next(wanted)
                if wanted is not None:
                    registered = self._info(*wanted)
                    zc.update_service(registered)
        except NonUniqueNameException:
            log.warning(
                "zeroconf: another node already announces itself as %r on %s; give every "
                "node its own failover.node-id. Running without announcements.",
                self._node_id,
                self._settings.interface_address(),
            )
        except Exception as exc:
            log.warning(
                "zeroconf announcements unavailable on %s (%s); the node runs without them",
                self._settings.interface_address(),
                exc,
            )
            log.debug("zeroconf failure", exc_info=True)
        finally:
            if zc is not None:
                _shut(zc, registered)


def _register(zc: Zeroconf, info: ServiceInfo) -> None:
    """Register ``info``; NonUniqueNameException when a live node already holds its name.

    Zeroconf decides that a name is taken only from the PTR records in its cache,
    which a fresh instance does not have: a browser running while zeroconf
    probes fills it from the answers of the nodes already there.
    """
    browser = ServiceBrowser(zc, SERVICE_TYPE, listener=_Names())
    try:
        zc.register_service(info, allow_name_change=False)
    finally:
        browser.cancel()


def _shut(zc: Zeroconf, registered: ServiceInfo | None) -> None:
    """Say goodbye for ``registered`` (if any) and close ``zc``, whatever fails on the way."""
    try:
        if registered is not None:
            zc.unregister_service(registered)
    except Exception:
        log.debug("zeroconf goodbye failed", exc_info=True)
    finally:
        zc.close()


def browse(settings: Settings, timeout_s: float) -> list[NodeInfo]:
    """The nodes of ``settings.cluster`` announced on ``settings.interface``, within ``timeout_s``.

    Blocks the calling thread for about ``timeout_s`` (at least 0.3 s); from
    async code run it in a worker thread (``asyncio.to_thread``). When
    zeroconf cannot run on the interface this logs a warning and returns an
    empty list. A node answers a fresh browser within about a second.
    """
    if _event_loop_running():
        raise RuntimeError("browse() blocks: from async code call it via asyncio.to_thread()")
    budget = max(timeout_s, 0.3)
    deadline = time.monotonic() + budget
    try:
        zc = _open_zeroconf(settings)
    except Exception as exc:
        log.warning("zeroconf discovery unavailable on %s (%s)", settings.interface_address(), exc)
        return []
    try:
        names = _Names()
        browser = ServiceBrowser(zc, SERVICE_TYPE, listener=names)
        try:
            listen_until = deadline - (1 - _LISTEN_SHARE) * budget
            time.sleep(max(0.0, listen_until - time.monotonic()))
        finally:
            browser.cancel()
        nodes = [_resolve(zc, name, deadline) for name in names.names()]
    finally:
        zc.close()
    return [node for node in nodes if node is not None and node.cluster == settings.cluster]


def _resolve(zc: Zeroconf, name: str, deadline: float) -> NodeInfo | None:
    info = ServiceInfo(SERVICE_TYPE, name)
    if not info.load_from_cache(zc):
        remaining_ms = (deadline - time.monotonic()) * 1000
        if remaining_ms <= 0 or not info.request(zc, remaining_ms):
            log.debug("zeroconf: no answer in time for %s", name)
            return None
    return node_from_properties(info.properties, info.parsed_addresses(IPVersion.V4Only))


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
