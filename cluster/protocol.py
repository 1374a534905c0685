"""The heartbeat wire format: encoding, decoding, authentication and replay protection.

This module owns the bytes of a heartbeat (:class:`Heartbeat`, :class:`Codec`): their layout,
the HMAC that authenticates them when the cluster has a secret, and the checks that turn
any datagram into either a heartbeat or one counted reason for dropping it. It is sans-I/O:
no sockets and no timers (the caller passes the clock, or the wall clock is read), so every
rule is testable with plain calls. It does not decide anything about roles or epochs
(``cluster.election``) nor send anything (``cluster.transport``).

Layout, network byte order (61 fixed bytes, at most 223 in all)::

    offset size
         0    2  magic b"TW"
         2    1  version (1)
         3    1  flags: bit 0 = authenticated; other bits must be 0 in version 1
         4    1  role (Role)
         5    2  priority
         7    2  port (TCP replication endpoint, 0 = none)
         9    4  host (IPv4)
        13    8  epoch
        21    8  incarnation
        29    8  seq
        37    8  sent_ms
        45    8  data_epoch
        53    8  data_seq
        61    1  length of the cluster name, then that many bytes of UTF-8 (1..64)
         .    1  length of the node id, then that many bytes of UTF-8 (1..64)
         .   32  HMAC-SHA256 of every byte before it, only when flag bit 0 is set

The magic and version come first so that a later version can change everything after them;
a version 1 decoder drops any other version. Names follow :mod:`cluster.names` (printable,
without whitespace), so a node id can go into a log line as it is.

Checks, in order, each a reason counted in :attr:`Codec.dropped`: ``short`` (truncated),
``magic``, ``version``, ``malformed`` (unknown flags or role, bad lengths or UTF-8, trailing
bytes, an epoch over :data:`MAX_EPOCH`), ``foreign`` (another cluster), then, when the
codec has a secret, ``unauthenticated`` (no HMAC), ``forged`` (wrong HMAC), ``stale``
(``sent_ms`` further than the replay window from the receiver's clock) and ``replayed``;
without a secret, an authenticated packet is ``unexpected-auth`` (a peer configured with a
secret this node lacks), and there is no replay check: the election copes with duplicates.

Replay protection keeps, per node id, the latest incarnation and an IPsec-style window: the
highest ``seq`` seen and a 64-bit bitmap of the ones below it. A packet is refused when its
incarnation is older than the latest, when its ``seq`` was already seen or when it is 64 or
more below the highest. The HMAC is checked first, so forged packets never touch this
state, and at most ``max_peers`` node ids are remembered (the least recently heard is
forgotten; the replay window still bounds how old a packet it would then take can be).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from cluster.names import MAX_NAME_BYTES, NAME_RULE, is_name

VERSION = 1
MAGIC = b"TW"
FLAG_AUTHENTICATED = 0x01
MAC_BYTES = 32
REPLAY_WINDOW_PACKETS = 64
#: The largest epoch a received heartbeat may carry (a signed 64-bit integer, like etcd's
#: revisions). A node promotes itself one above the largest epoch it heard, so a peer's
#: epoch at the field's maximum would make the node's own heartbeat unencodable and stop
#: it (found by fuzzing, issue 14); from this bound, a node's epoch can reach the field's
#: maximum only after 2**63 promotions of its own.
MAX_EPOCH = 2**63 - 1

_HEADER = struct.Struct("!2sBB")
_FIXED = struct.Struct("!BHH4sQQQQQQ")
_PREFIX_BYTES = _HEADER.size + _FIXED.size
MAX_PACKET_BYTES = _PREFIX_BYTES + 2 * (1 + MAX_NAME_BYTES) + MAC_BYTES
_U16 = 0xFFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class Role(enum.IntEnum):
    """What a heartbeat's sender is."""

    SLAVE = 1  # listening, joining, or following a master
    MASTER = 2
    LEAVING = 3  # stopping (a resigning master or a slave going away): forget it now


_ROLES = frozenset(int(role) for role in Role)


@dataclass(frozen=True)
class Heartbeat:
    """One node's announcement, as sent every ``failover.delay`` ms."""

    cluster: str
    node_id: str
    role: Role
    epoch: int  # a master's epoch, or the highest epoch the sender knows
    priority: int
    incarnation: int  # fixed for one process life, larger after a restart
    seq: int  # +1 per packet within an incarnation
    sent_ms: int  # sender's wall clock, ms since the Unix epoch
    host: str  # IPv4 address where peers reach the node ("0.0.0.0" = unknown)
    port: int  # TCP port of the node's replication endpoint, 0 = none
    data_epoch: int = 0  # position of the node's replicated state
    data_seq: int = 0


class ProtocolError(ValueError):
    """A heartbeat cannot be encoded; the message names the field and its allowed range."""


def _valid_name(raw: bytes) -> str | None:
    """The UTF-8 text of a cluster name or node id, or None when it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if is_name(text) else None


def _sign(key: hmac.HMAC, data: bytes) -> bytes:
    mac = key.copy()
    mac.update(data)
    return mac.digest()


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch, as ``sent_ms`` and ``decode(now_ms=...)`` use."""
    return time.time_ns() // 1_000_000


@dataclass
class _ReplayState:
    incarnation: int
    highest: int
    bitmap: int  # bit i set: seq ``highest - i`` was seen


class Codec:
    """Encodes this cluster's heartbeats and decodes, authenticates and filters received ones.

    >>> codec = Codec("default")
    >>> hb = Heartbeat("default", "n1", Role.SLAVE, 0, 100, 1, 1, 0, "127.0.0.1", 0)
    >>> codec.decode(codec.encode(hb)) == hb
    True

    Each call costs a few microseconds (one HMAC when there is a secret); memory is bounded
    by ``max_peers`` small records. Not thread-safe: one codec per receiving loop.
    """

    def __init__(
        self,
        cluster: str,
        secret: bytes | None = None,
        replay_window_s: float = 30.0,
        max_peers: int = 1024,
    ) -> None:
        if not is_name(cluster):
            raise ProtocolError(f"cluster name {cluster!r}: expected {NAME_RULE}")
        if max_peers < 1:
            raise ProtocolError(f"max_peers={max_peers}: expected at least 1")
        self.cluster = cluster
        self._cluster_bytes = cluster.encode("utf-8")
        self._mac = hmac.new(secret, digestmod=hashlib.sha256) if secret else None
        self._window_ms = round(replay_window_s * 1000)
        self._max_peers = max_peers
        self._replay: OrderedDict[str, _ReplayState] = OrderedDict()
        self.dropped: Counter[str] = Counter()
        self.accepted = 0

    @property
    def authenticated(self) -> bool:
        """Whether this codec signs what it encodes and requires signatures on what it decodes."""
        return self._mac is not None

    @property
    def tracked_peers(self) -> int:
        """How many node ids have replay state (at most ``max_peers``)."""
        return len(self._replay)

    def encode(self, hb: Heartbeat) -> bytes:
        """The datagram for ``hb``; :class:`ProtocolError` when a field is out of range."""
        if hb.cluster != self.cluster:
            raise ProtocolError(
                f"heartbeat of cluster {hb.cluster!r} given to the codec of {self.cluster!r}"
            )
        if not is_name(hb.node_id):
            raise ProtocolError(f"node_id {hb.node_id!r}: expected {NAME_RULE}")
        node = hb.node_id.encode("utf-8")
        if type(hb.role) not in (Role, int) or hb.role not in _ROLES:
            raise ProtocolError(f"role {hb.role!r}: expected one of {[r.name for r in Role]}")
        for name, limit in (
            ("priority", _U16),
            ("port", _U16),
            ("epoch", _U64),
            ("incarnation", _U64),
            ("seq", _U64),
            ("sent_ms", _U64),
            ("data_epoch", _U64),
            ("data_seq", _U64),
        ):
            value = getattr(hb, name)
            if type(value) is not int or not 0 <= value <= limit:
                raise ProtocolError(f"{name}={value!r}: expected an integer from 0 to {limit}")
        try:
            host = ipaddress.IPv4Address(hb.host).packed
        except ValueError:
            raise ProtocolError(f"host={hb.host!r}: expected an IPv4 address") from None
        flags = FLAG_AUTHENTICATED if self._mac is not None else 0
        body = b"".join(
            (
                _HEADER.pack(MAGIC, VERSION, flags),
                _FIXED.pack(
                    int(hb.role),
                    hb.priority,
                    hb.port,
                    host,
                    hb.epoch,
                    hb.incarnation,
                    hb.seq,
                    hb.sent_ms,
                    hb.data_epoch,
                    hb.data_seq,
                ),
                bytes((len(self._cluster_bytes),)),
                self._cluster_bytes,
                bytes((len(node),)),
                node,
            )
        )
        return body + _sign(self._mac, body) if self._mac is not None else body

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def decode(self, data: bytes, now_ms: int | None = None) -> Heartbeat | None:
        """The heartbeat in ``data``, or None with one reason counted in :attr:`dropped`.

        Never raises, whatever the bytes. ``now_ms`` (default: the wall clock) is compared
        with ``sent_ms`` when there is a secret.
        """
        reason, hb = self._check(bytes(data), now_ms)
        if hb is None:
            self._drop(reason)
            return None
        self.accepted += 1
        return hb

    def _check(self, data: bytes, now_ms: int | None) -> tuple[str, Heartbeat | None]:
        if len(data) < _HEADER.size:
            return "short", None
        magic, version, flags = _HEADER.unpack_from(data)
        if magic != MAGIC:
            return "magic", None
        if version != VERSION:
            return "version", None
        if flags & ~FLAG_AUTHENTICATED:
            return "malformed", None
        signed = bool(flags & FLAG_AUTHENTICATED)
        end = len(data) - MAC_BYTES if signed else len(data)
        if end < _PREFIX_BYTES + 1:
            return "short", None
        role, priority, port, host, epoch, incarnation, seq, sent_ms, data_epoch, data_seq = (
            _FIXED.unpack_from(data, _HEADER.size)
        )
        offset = _PREFIX_BYTES
        names: list[str] = []
        for _ in range(2):
            if offset >= end:
                return "short", None
            size = data[offset]
            offset += 1
            if offset + size > end:
                return "short", None
            name = _valid_name(data[offset : offset + size])
            if name is None:
                return "malformed", None
            names.append(name)
            offset += size
        if offset != end or role not in _ROLES or epoch > MAX_EPOCH:
            return "malformed", None
        if names[0] != self.cluster:
            return "foreign", None
        if self._mac is None:
            if signed:
                return "unexpected-auth", None
        else:
            if not signed:
                return "unauthenticated", None
            if not hmac.compare_digest(_sign(self._mac, data[:end]), data[end:]):
                return "forged", None
            if now_ms is None:
                now_ms = wall_clock_ms()
            if abs(now_ms - sent_ms) > self._window_ms:
                return "stale", None
            if not self._note(names[1], incarnation, seq):
                return "replayed", None
        hb = Heartbeat(
            cluster=names[0],
            node_id=names[1],
            role=Role(role),
            epoch=epoch,
            priority=priority,
            incarnation=incarnation,
            seq=seq,
            sent_ms=sent_ms,
            host=str(ipaddress.IPv4Address(host)),
            port=port,
            data_epoch=data_epoch,
            data_seq=data_seq,
        )
        return "", hb

    def _note(self, node_id: str, incarnation: int, seq: int) -> bool:
        """Record an authenticated (incarnation, seq); False when it must be refused as replayed."""
        state = self._replay.get(node_id)
        if state is None or incarnation > state.incarnation:
            self._replay[node_id] = _ReplayState(incarnation, seq, 1)
            self._replay.move_to_end(node_id)
            while len(self._replay) > self._max_peers:
                self._replay.popitem(last=False)
            return True
        if incarnation < state.incarnation:
            return False
        if seq > state.highest:
            shift = seq - state.highest
            state.bitmap = ((state.bitmap << shift) | 1) if shift < REPLAY_WINDOW_PACKETS else 1
            state.bitmap &= (1 << REPLAY_WINDOW_PACKETS) - 1
            state.highest = seq
        else:
            behind = state.highest - seq
            if behind >= REPLAY_WINDOW_PACKETS or state.bitmap >> behind & 1:
                return False
            state.bitmap |= 1 << behind
        self._replay.move_to_end(node_id)
        return True
