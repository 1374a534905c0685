"""The multicast sockets that carry heartbeats, and a test-only layer that loses them on purpose.

This module owns the sockets of the failover group (:class:`MulticastTransport`): joining
the group on one interface, sending datagrams with the configured TTL, and draining what
arrived without blocking, so that the loop in ``cluster.manager`` can wait on
:meth:`~MulticastTransport.fileno` with a selector. Sending and receiving never raise:
network trouble is logged (rate-limited) and counted, and the election treats silence as
silence. It does not know what the bytes mean (``cluster.protocol``) nor when to send them
(``cluster.manager``).

Several nodes on one host all receive every datagram: the receive socket sets
``SO_REUSEADDR`` and ``SO_REUSEPORT``, and the send socket keeps ``IP_MULTICAST_LOOP`` on.
For a one-host cluster use interface ``127.0.0.1`` and TTL 0: nothing then leaves the host.

:class:`FaultyTransport` is for tests only: it wraps a transport and drops or duplicates
datagrams as a JSON control file says, so end-to-end tests can cut a node off and heal it
without root, ``tc`` or iptables. :func:`open_transport` inserts it when the environment
has ``TWINWEAVE_FAULTS=<control file>`` (and optionally ``TWINWEAVE_FAULTS_SEED=<int>``);
never set these in production.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

FAULTS_ENV = "TWINWEAVE_FAULTS"
FAULTS_SEED_ENV = "TWINWEAVE_FAULTS_SEED"
MAX_DATAGRAM = 65535
ERROR_LOG_INTERVAL_S = 60.0
CONTROL_CHECK_INTERVAL_S = 0.05

# Windows cannot bind a socket to a multicast address; it binds to any address and relies on
# the membership instead (and takes the TTL and loop options as ints, not bytes).
_WINDOWS = sys.platform == "win32"
# What the kernel says when an interface address is not one of this host's.
_NOT_LOCAL_ERRNOS = frozenset((errno.EADDRNOTAVAIL, errno.ENODEV))


class TransportError(OSError):
    """The multicast sockets could not be opened; the message says which address failed and why."""


class Transport(Protocol):
    """What the failover loop needs from a transport."""

    send_errors: int

    def fileno(self) -> int: ...

    def send(self, data: bytes) -> bool: ...

    def receive(self, limit: int = 64) -> list[bytes]: ...

    def close(self) -> None: ...


class _RateLimitedLog:
    """Logs the first error, then at most one line per interval saying how many followed."""

    def __init__(self, what: str, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self._what = what
        self._interval_s = interval_s
        self._next = -math.inf
        self._suppressed = 0

    def __call__(self, exc: OSError) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        log.warning("%s failed: %s%s", self._what, exc, more)
        self._suppressed = 0
        self._next = now + self._interval_s


def _byte_option(value: int) -> int | bytes:
    return value if _WINDOWS else bytes((value,))


def _check_address(value: str, what: str, multicast: bool) -> bytes:
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise TransportError(f"{what} {value!r} is not an IPv4 address") from None
    if address.is_multicast != multicast:
        expected = "a multicast address (224.0.0.0/4)" if multicast else "a local unicast address"
        raise TransportError(f"{what} {value} must be {expected}")
    return address.packed


class MulticastTransport:
    """A joined multicast group: one non-blocking receive socket and one send socket.

    >>> t = MulticastTransport("239.255.0.7", 27100, "127.0.0.1", 0)  # doctest: +SKIP
    >>> t.send(b"hello"), t.receive()  # doctest: +SKIP
    (True, [b'hello'])

    ``send`` is one ``sendto``; ``receive`` is one ``recvfrom`` per datagram plus one that
    finds nothing. Both are safe after :meth:`close` (they fail quietly).
    """

    def __init__(self, group: str, port: int, interface: str, ttl: int) -> None:
        group_bytes = _check_address(group, "multicast group", multicast=True)
        interface_bytes = _check_address(interface, "interface", multicast=False)
        if not 1 <= port <= 65535:
            raise TransportError(f"port {port} must be from 1 to 65535")
        if not 0 <= ttl <= 255:
            raise TransportError(f"TTL {ttl} must be from 0 to 255")
        self.group = group
        self.port = port
        self.interface = interface
        self.ttl = ttl
        self.send_errors = 0
        self.receive_errors = 0
        self._log_send = _RateLimitedLog(f"sending to {group}:{port} via {interface}")
        self._log_receive = _RateLimitedLog(f"receiving from {group}:{port} on {interface}")
        self._receiver = self._open(
            f"listening on {group}:{port} (interface {interface})",
            lambda s: self._setup_receiver(s, group_bytes + interface_bytes),
        )
        try:
            self._sender = self._open(
                f"sending to {group}:{port} from interface {interface} (TTL {ttl})",
                lambda s: self._setup_sender(s, interface_bytes),
            )
        except TransportError:
            self._receiver.close()
            raise

    @staticmethod
    def _open(what: str, setup: Callable[[socket.socket], None]) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            setup(sock)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            hint = (
                "; is it an address of this host? set failover.interface to a local IPv4 address"
                if exc.errno in _NOT_LOCAL_ERRNOS
                else ""
            )
            raise TransportError(exc.errno, f"cannot set up {what}: {exc.strerror}{hint}") from exc
        return sock

    def _setup_receiver(self, sock: socket.socket, membership: bytes) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("" if _WINDOWS else self.group, self.port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)

    def _setup_sender(self, sock: socket.socket, interface: bytes) -> None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, _byte_option(self.ttl))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, _byte_option(1))
        sock.bind((self.interface, 0))

    def fileno(self) -> int:
        """The receive socket's descriptor, for selectors (-1 once closed)."""
        return self._receiver.fileno()

    def send(self, data: bytes) -> bool:
        """Send one datagram to the group; False (counted in ``send_errors``) when it failed."""
        try:
            self._sender.sendto(data, (self.group, self.port))
        except OSError as exc:
            self.send_errors += 1
            self._log_send(exc)
            return False
        return True

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` datagrams that have arrived, without waiting; [] when none."""
        received: list[bytes] = []
        while len(received) < limit:
            try:
                data, _ = self._receiver.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.receive_errors += 1
                self._log_receive(exc)
                break
            received.append(data)
        return received

    def close(self) -> None:
        """Leave the group and close both sockets; calling it again does nothing."""
        self._receiver.close()
        self._sender.close()

    def __enter__(self) -> MulticastTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_NO_FAULTS: dict[str, Any] = {"drop_in": False, "drop_out": False, "loss": 0.0, "duplicate": 0.0}


def _parse_faults(text: str) -> dict[str, Any]:
    """The control file's faults; ValueError when it is not what the docstring describes."""
    given = json.loads(text)
    if not isinstance(given, dict) or set(given) - set(_NO_FAULTS):
        raise ValueError(f"expected an object with keys among {sorted(_NO_FAULTS)}")
    faults = {**_NO_FAULTS, **given}
    for key in ("drop_in", "drop_out"):
        if not isinstance(faults[key], bool):
            raise ValueError(f"{key} must be true or false")
    for key in ("loss", "duplicate"):
        value = faults[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{key} must be a number from 0.0 to 1.0")
    return faults


class FaultyTransport:
    """Test-only: another transport, with faults read from a JSON control file.

    The file, ``{"drop_in": bool, "drop_out": bool, "loss": 0.0-1.0, "duplicate": 0.0-1.0}``
    (any key may be left out), is re-read when its modification time, size or inode changes,
    looked at no more often than every 50 ms. A missing or invalid file means no faults (it
    is logged once, until a valid file appears). ``drop_out`` and ``drop_in`` drop
    everything sent or received; ``loss`` and ``duplicate`` are the chances of dropping or
    doubling each datagram, applied on both sending and receiving. A dropped send still
    returns True: the sender of a lost packet does not know it was lost.
    """

    def __init__(
        self,
        inner: Transport,
        control_path: str,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.control_path = control_path
        self._random = random.Random(seed)
        self._clock = clock
        self._next_check = -math.inf
        self._stamp: tuple[int, int, int] | None = None
        self._faults = dict(_NO_FAULTS)
        self._complained = False

    @property
    def send_errors(self) -> int:
        return self.inner.send_errors

    @property
    def faults(self) -> dict[str, Any]:
        """The faults in force now (re-reading the control file if it is due)."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + CONTROL_CHECK_INTERVAL_S
            self._reload()
        return dict(self._faults)

    def _reload(self) -> None:
        try:
            st = os.stat(self.control_path)
        except OSError as exc:
            self._stamp = None
            self._give_up(f"cannot read it ({exc.strerror})")
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            with open(self.control_path, encoding="utf-8") as f:
                faults = _parse_faults(f.read())
        except (OSError, ValueError) as exc:
            self._give_up(str(exc))
            return
        self._faults = faults
        self._complained = False
        log.info("fault injection from %s: %s", self.control_path, faults)

    def _give_up(self, why: str) -> None:
        self._faults = dict(_NO_FAULTS)
        if not self._complained:
            self._complained = True
            log.warning("fault control file %s: %s; injecting no faults", self.control_path, why)

    def _copies(self, drop_all: bool, faults: dict[str, Any]) -> int:
        """How many times one datagram goes through: 0, 1 or 2."""
        if drop_all or self._random.random() < faults["loss"]:
            return 0
        return 2 if self._random.random() < faults["duplicate"] else 1

    def fileno(self) -> int:
        return self.inner.fileno()

    def send(self, data: bytes) -> bool:
        faults = self.faults
        ok = True
        for _ in range(self._copies(faults["drop_out"], faults)):
            ok = self.inner.send(data) and ok
        return ok

    def receive(self, limit: int = 64) -> list[bytes]:
        faults = self.faults
        received: list[bytes] = []
        for data in self.inner.receive(limit):
            received.extend([data] * self._copies(faults["drop_in"], faults))
        return received

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> FaultyTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_transport(
    group: str,
    port: int,
    interface: str,
    ttl: int,
    environ: Mapping[str, str] | None = None,
) -> Transport:
    """A :class:`MulticastTransport`, inside a :class:`FaultyTransport` when
    ``$TWINWEAVE_FAULTS`` names a control file (test-only; ``$TWINWEAVE_FAULTS_SEED`` seeds it).
    """
    environ = os.environ if environ is None else environ
    control = environ.get(FAULTS_ENV)
    if not control:
        return MulticastTransport(group, port, interface, ttl)
    seed_text = environ.get(FAULTS_SEED_ENV)
    try:
        seed = int(seed_text) if seed_text else None
    except ValueError:
        raise TransportError(f"${FAULTS_SEED_ENV}={seed_text!r} must be an integer") from None
    log.warning("test-only fault injection is on (%s=%s)", FAULTS_ENV, control)
    return FaultyTransport(MulticastTransport(group, port, interface, ttl), control, seed)
