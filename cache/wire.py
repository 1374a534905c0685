"""The replication stream's bytes: frames, their layout, their authentication and their order.

This module owns what travels on one master-slave replication connection: the frames
(:class:`Hello` ... :class:`Batch`), how each becomes bytes and back, the HMACs that
authenticate them when the cluster has a secret, and the grammar of a conversation
(:class:`Session`). It is sans-I/O: bytes in, frames out, no sockets, no clock, no threads,
so every rule is testable with plain calls. It does not decide what a frame means: which
cluster a Hello may join, whether an epoch is stale, whether positions follow each other,
how values are encoded (``cache.store``) or applied (``cache.replica``), nor when to send
what (``cache.replication``). Nothing received is ever unpickled or evaluated: every field
is a fixed-size number or a length-prefixed string or blob whose length is bounded before
anything is read or buffered, and anything wrong raises :class:`WireError`.

Conversation. The slave (the *initiator*) connects and sends a :class:`Hello`; the master
answers with a :class:`Welcome` (or a :class:`Refuse`), then streams changes: :class:`Op` and
:class:`Batch` frames, and snapshots (:class:`SnapshotBegin`, :class:`Item`...,
:class:`SnapshotEnd`, with changes allowed in between); the slave answers with :class:`Ack`.
Either side may end with a :class:`Refuse`. Each direction has its own little state machine
(:data:`_RULES`, a table); some frames also need the other direction to be far enough along
(an Ack only after the Welcome, a Welcome only after the Hello). :meth:`Session.encode`
checks the same table as :meth:`Session.feed`, so a frame sent out of order is a
programming error that surfaces at once.

Layout, network byte order; ``sN`` is an N-byte length, then that many bytes (UTF-8 for
text)::

    frame          u32 length of what follows | u8 type | body | MAC (when authenticated)
    1 Hello        u8 version | u8 flags | 16 nonce | u64 epoch | u64 data_epoch | u64 data_seq
                   | s1 cluster | s1 node_id
    2 Welcome      u8 version | u8 flags | 16 nonce | u64 epoch | u8 snapshot (0/1) | s1 node_id
    3 Refuse       u8 flags | u8 code (RefuseCode) | s2 reason
    4 SnapshotBegin  u64 epoch | u64 seq
    5 Item         expiry | s1 cache | s2 key | s4 value
    6 SnapshotEnd  u64 epoch | u64 seq
    7 Op           u64 epoch | u64 seq | u8 kind | expiry | s1 cache | s2 key | s4 value
    8 Ack          u64 epoch | u64 seq
    9 Batch        u16 count (1..4096) | count Op bodies
    expiry         u8 present (0/1) | f64 expire_at (all-zero bytes when absent)

``flags`` bit 0 says a MAC follows; other bits must be 0. The version comes first in the
Hello and the Welcome, so a later version can change everything after it and be refused
cleanly. A Refuse's ``code`` is what the receiver acts on; its ``reason`` is for people
and logs only (version 1 had no code: its peers are refused as another version). Text is
strict UTF-8; cluster names and node ids follow :mod:`cluster.names` (printable without
whitespace), cache names and reasons are printable, keys anything. Encodings are
canonical: one frame has exactly one byte string.

Authentication, when a secret is set (both sides must agree: a frame whose flag says
otherwise is ``auth-mismatch``). The Hello carries HMAC-SHA256(secret, type | body); the
Welcome, or a Refuse in its place, HMAC-SHA256(secret, hello nonce | type | body), which
binds it to this Hello so an old Welcome cannot be replayed. From then on both sides use
the session key K = HMAC-SHA256(secret, "twinweave-replication" | slave nonce | master
nonce), and each frame carries HMAC-SHA256(K, direction | u64 counter | type | body)
truncated to 16 bytes; direction is 1 from slave to master and 2 back, the counter is the
frame's index in its direction (the Hello and the Welcome are 0) and is never sent, so a
replayed, reordered, dropped, spliced or reflected frame fails the check. MACs are
checked before a body is parsed. This authenticates; it does not encrypt. The one frame a
side with a secret cannot authenticate is a master's Refuse sent before it could read a
Hello; the receiver reports it as ``auth-mismatch`` and quotes it, unverified.

Errors: :class:`WireError` carries ``reason``, one token of :data:`REASONS`:
``too-large`` (a length over its limit, checked before the bytes are awaited),
``truncated`` (a field runs past the end of its frame), ``malformed`` (anything else in
the bytes: unknown type, flags, kind, refusal code or boolean, bad UTF-8, a bad name, a non-finite
expiry, a value on a DELETE, an empty batch, trailing bytes), ``version``,
``auth-mismatch``, ``forged`` (a MAC that does not verify: tampering, a replay, or another
secret), ``order``, ``invalid`` (:meth:`Session.encode` given a frame whose fields are out
of range) and ``closed`` (a session that already failed).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from cluster.names import MAX_NAME_BYTES, is_name

VERSION = 2  # 2: a Refuse carries a RefuseCode
FLAG_AUTHENTICATED = 0x01
NONCE_BYTES = 16
MAX_CACHE_NAME_BYTES = 128
MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 16 * 1024 * 1024
MAX_REASON_BYTES = 1024
MAX_BATCH_OPS = 4096
MAX_FRAME_BYTES = 64 * 1024 * 1024  # the u32 length: type, body and MAC
HANDSHAKE_MAC_BYTES = 32
FRAME_MAC_BYTES = 16
KEY_LABEL = b"twinweave-replication"

REASONS = frozenset(
    {
        "too-large",
        "truncated",
        "malformed",
        "version",
        "auth-mismatch",
        "forged",
        "order",
        "invalid",
        "closed",
    }
)

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_POSITION = struct.Struct("!QQ")
_HELLO_NUMBERS = struct.Struct("!QQQ")
_WELCOME_NUMBERS = struct.Struct("!QB")
_OP_HEAD = struct.Struct("!QQB")
_EXPIRY = struct.Struct("!Bd")
_F64 = struct.Struct("!d")
_COUNTER = struct.Struct("!BQ")
_U64_MAX = 2**64 - 1
_NO_EXPIRY = bytes(_EXPIRY.size)


class WireError(ValueError):
    """Bytes that are not a valid frame here, or a frame that cannot be sent.

    ``reason`` is a short stable token from :data:`REASONS`, for counters; the message says
    what was wrong. After :meth:`Session.feed` raises it, drop the connection.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


class Kind(enum.IntEnum):
    """What an :class:`Op` does."""

    PUT = 1
    DELETE = 2  # value b"", expire_at None
    CLEAR = 3  # the whole cache: key "", value b"", expire_at None


_KINDS = frozenset(int(kind) for kind in Kind)


class RefuseCode(enum.IntEnum):
    """Why a :class:`Refuse` ends a conversation, for the receiver to act on.

    A new code needs a new :data:`VERSION`: a receiver takes an unknown code as
    ``malformed``, so it drops the connection and counts it, as for any bad frame.
    """

    OTHER = 0  # none of these: the reason says why
    TOO_SLOW = 1  # the slave did not acknowledge in time: it is out of sync until it catches up
    RESIGNING = 2  # the master stops being master (it stepped down, or it is closing)
    FOREIGN = 3  # the Hello is from another cluster
    NOT_MASTER = 4  # the node asked is not (or no longer sure it is) the master
    STALE_MASTER = 5  # the slave knows a newer epoch than the master's
    MASTER_FAILED = 6  # the master cannot read its own state for a snapshot
    STALE_EPOCH = 7  # from the slave: the master's epoch is older than one the slave knows


_REFUSE_CODES = frozenset(int(code) for code in RefuseCode)


@dataclass(frozen=True)
class Hello:
    """Slave to master, the first frame: who asks, and where its state stands."""

    cluster: str
    node_id: str
    nonce: bytes  # the slave's Session.nonce
    epoch: int  # the highest epoch the slave knows
    data_epoch: int  # (data_epoch, data_seq): the position of the slave's state
    data_seq: int


@dataclass(frozen=True)
class Welcome:
    """Master to slave, the first frame back."""

    node_id: str
    nonce: bytes  # the master's Session.nonce
    epoch: int  # the master's epoch
    snapshot: bool  # True: a full snapshot follows; False: the stream goes on from the Hello


@dataclass(frozen=True)
class Refuse:
    """Either side, the last frame before it closes the connection."""

    code: RefuseCode  # what the receiver acts on
    reason: str  # for people: logged, never matched


@dataclass(frozen=True)
class SnapshotBegin:
    """The position (epoch, seq) the following snapshot represents."""

    epoch: int
    seq: int


@dataclass(frozen=True)
class Item:
    """One entry of a snapshot; ``value`` is already encoded (opaque here)."""

    cache: str
    key: str
    value: bytes
    expire_at: float | None


@dataclass(frozen=True)
class SnapshotEnd:
    """The snapshot that began at the same position is complete."""

    epoch: int
    seq: int


@dataclass(frozen=True)
class Op:
    """One change of one cache, at position (epoch, seq)."""

    epoch: int
    seq: int
    kind: Kind
    cache: str
    key: str
    value: bytes
    expire_at: float | None


@dataclass(frozen=True)
class Ack:
    """Slave to master: everything up to (epoch, seq) is stored."""

    epoch: int
    seq: int


@dataclass(frozen=True)
class Batch:
    """Several consecutive changes in one frame (1 to :data:`MAX_BATCH_OPS`)."""

    ops: tuple[Op, ...]


Frame = Union[Hello, Welcome, Refuse, SnapshotBegin, Item, SnapshotEnd, Op, Ack, Batch]


class _Reader:
    """A cursor over one frame's bytes; every read is bounded by the frame's end."""

    __slots__ = ("data", "offset")

    def __init__(self, data: memoryview, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise WireError(
                "truncated",
                f"{size} bytes needed, {len(self.data) - self.offset} left in the frame",
            )
        chunk = bytes(self.data[self.offset : end])
        self.offset = end
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size))

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise WireError("malformed", f"{len(self.data) - self.offset} trailing bytes")


@dataclass(frozen=True)
class _Text:
    """A length-prefixed UTF-8 field: its limits, and its encoder and decoder in one place."""

    field: str
    prefix: struct.Struct
    low: int
    high: int
    rule: Callable[[str], bool] | None = None
    rule_text: str = ""

    def pack(self, value: object) -> bytes:
        if not isinstance(value, str):
            raise WireError("invalid", f"{self.field}: expected a str, not {type(value).__name__}")
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError("invalid", f"{self.field}={value!r}: not encodable as UTF-8") from None
        if len(raw) > self.high:
            raise WireError(
                "too-large", f"{self.field}: {len(raw)} UTF-8 bytes, at most {self.high}"
            )
        problem = self._problem(value, len(raw))
        if problem:
            raise WireError("invalid", f"{self.field}={value!r}: {problem}")
        return self.prefix.pack(len(raw)) + raw

    def read(self, reader: _Reader) -> str:
        (size,) = reader.unpack(self.prefix)
        if size > self.high:
            raise WireError("too-large", f"{self.field}: {size} bytes, at most {self.high}")
        try:
            text = reader.take(size).decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("malformed", f"{self.field}: not UTF-8") from None
        problem = self._problem(text, size)
        if problem:
            raise WireError("malformed", f"{self.field}: {problem}")
        return text

    def _problem(self, text: str, size: int) -> str:
        if size < self.low:
            return f"expected {self.low} to {self.high} UTF-8 bytes"
        if self.rule is not None and not self.rule(text):
            return f"expected {self.rule_text} text"
        return ""


_CLUSTER = _Text("cluster", _U8, 1, MAX_NAME_BYTES, is_name, "printable, whitespace-free")
_NODE_ID = _Text("node_id", _U8, 1, MAX_NAME_BYTES, is_name, "printable, whitespace-free")
_CACHE = _Text("cache", _U8, 1, MAX_CACHE_NAME_BYTES, str.isprintable, "printable")
_KEY = _Text("key", _U16, 0, MAX_KEY_BYTES)
_REASON = _Text("reason", _U16, 0, MAX_REASON_BYTES, str.isprintable, "printable")


def _pack_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise WireError("invalid", f"value: expected bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise WireError("too-large", f"value: {len(value)} bytes, at most {MAX_VALUE_BYTES}")
    return _U32.pack(len(value)) + value


def _read_value(reader: _Reader) -> bytes:
    (size,) = reader.unpack(_U32)
    if size > MAX_VALUE_BYTES:
        raise WireError("too-large", f"value: {size} bytes, at most {MAX_VALUE_BYTES}")
    return reader.take(size)


def _u64(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise WireError("invalid", f"{field}={value!r}: expected an integer from 0 to {_U64_MAX}")
    return value


def _pack_position(frame: SnapshotBegin | SnapshotEnd | Ack) -> bytes:
    return _POSITION.pack(_u64("epoch", frame.epoch), _u64("seq", frame.seq))


def _pack_expiry(value: object) -> bytes:
    if value is None:
        return _NO_EXPIRY
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return _EXPIRY.pack(1, number)
    raise WireError("invalid", f"expire_at={value!r}: expected a finite float or None")


def _read_expiry(reader: _Reader) -> float | None:
    raw = reader.take(_EXPIRY.size)
    if raw == _NO_EXPIRY:
        return None
    (number,) = _F64.unpack_from(raw, 1)
    if raw[0] != 1 or not math.isfinite(number):
        raise WireError("malformed", "expire_at: expected a finite float or none")
    return number


def _shape_problem(kind: Kind, key: str, value: bytes, expire_at: float | None) -> str:
    """What is wrong with the fields of an Op of ``kind``, or ''."""
    if kind is not Kind.PUT and (value or expire_at is not None):
        return f"a {kind.name} carries no value and no expire_at"
    if kind is Kind.CLEAR and key:
        return "a CLEAR carries no key"
    return ""


def _encode_hello(frame: Hello) -> bytes:
    return b"".join(
        (
            frame.nonce,  # Session.encode checked it is the session's
            _HELLO_NUMBERS.pack(
                _u64("epoch", frame.epoch),
                _u64("data_epoch", frame.data_epoch),
                _u64("data_seq", frame.data_seq),
            ),
            _CLUSTER.pack(frame.cluster),
            _NODE_ID.pack(frame.node_id),
        )
    )


def _decode_hello(reader: _Reader) -> Hello:
    nonce = reader.take(NONCE_BYTES)
    epoch, data_epoch, data_seq = reader.unpack(_HELLO_NUMBERS)
    cluster = _CLUSTER.read(reader)
    node_id = _NODE_ID.read(reader)
    return Hello(cluster, node_id, nonce, epoch, data_epoch, data_seq)


def _encode_welcome(frame: Welcome) -> bytes:
    if not isinstance(frame.snapshot, bool):
        raise WireError("invalid", f"snapshot={frame.snapshot!r}: expected a bool")
    return b"".join(
        (
            frame.nonce,
            _WELCOME_NUMBERS.pack(_u64("epoch", frame.epoch), frame.snapshot),
            _NODE_ID.pack(frame.node_id),
        )
    )


def _decode_welcome(reader: _Reader) -> Welcome:
    nonce = reader.take(NONCE_BYTES)
    epoch, snapshot = reader.unpack(_WELCOME_NUMBERS)
    if snapshot > 1:
        raise WireError("malformed", f"snapshot flag {snapshot}")
    return Welcome(_NODE_ID.read(reader), nonce, epoch, bool(snapshot))


def _encode_refuse(frame: Refuse) -> bytes:
    code = frame.code
    if isinstance(code, bool) or not isinstance(code, int) or code not in _REFUSE_CODES:
        raise WireError("invalid", f"code={code!r}: expected one of {[c.name for c in RefuseCode]}")
    return _U8.pack(code) + _REASON.pack(frame.reason)


def _decode_refuse(reader: _Reader) -> Refuse:
    (code,) = reader.unpack(_U8)
    if code not in _REFUSE_CODES:
        raise WireError("malformed", f"unknown refusal code {code}")
    return Refuse(RefuseCode(code), _REASON.read(reader))


def _encode_item(frame: Item) -> bytes:
    return b"".join(
        (
            _pack_expiry(frame.expire_at),
            _CACHE.pack(frame.cache),
            _KEY.pack(frame.key),
            _pack_value(frame.value),
        )
    )


def _decode_item(reader: _Reader) -> Item:
    expire_at = _read_expiry(reader)
    cache = _CACHE.read(reader)
    key = _KEY.read(reader)
    return Item(cache, key, _read_value(reader), expire_at)


def _encode_op(frame: Op) -> bytes:
    kind = frame.kind
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in _KINDS:
        raise WireError("invalid", f"kind={kind!r}: expected one of {[k.name for k in Kind]}")
    data = b"".join(
        (
            _OP_HEAD.pack(_u64("epoch", frame.epoch), _u64("seq", frame.seq), kind),
            _pack_expiry(frame.expire_at),
            _CACHE.pack(frame.cache),
            _KEY.pack(frame.key),
            _pack_value(frame.value),
        )
    )
    problem = _shape_problem(Kind(kind), frame.key, frame.value, frame.expire_at)
    if problem:
        raise WireError("invalid", problem)
    return data


def _decode_op(reader: _Reader) -> Op:
    epoch, seq, code = reader.unpack(_OP_HEAD)
    if code not in _KINDS:
        raise WireError("malformed", f"unknown kind {code}")
    kind = Kind(code)
    expire_at = _read_expiry(reader)
    cache = _CACHE.read(reader)
    key = _KEY.read(reader)
    value = _read_value(reader)
    problem = _shape_problem(kind, key, value, expire_at)
    if problem:
        raise WireError("malformed", problem)
    return Op(epoch, seq, kind, cache, key, value, expire_at)


def _encode_batch(frame: Batch) -> bytes:
    ops = frame.ops
    if not isinstance(ops, (tuple, list)) or not ops:
        raise WireError("invalid", "a Batch holds a non-empty tuple of Op")
    if len(ops) > MAX_BATCH_OPS:
        raise WireError("too-large", f"a Batch of {len(ops)} ops, at most {MAX_BATCH_OPS}")
    parts = [_U16.pack(len(ops))]
    size = _U16.size
    for op in ops:
        if type(op) is not Op:
            raise WireError("invalid", f"a Batch holds Op frames, not {type(op).__name__}")
        parts.append(_encode_op(op))
        size += len(parts[-1])
        if size > MAX_FRAME_BYTES:
            raise WireError("too-large", f"a Batch of more than {MAX_FRAME_BYTES} bytes")
    return b"".join(parts)


def _decode_batch(reader: _Reader) -> Batch:
    (count,) = reader.unpack(_U16)
    if count > MAX_BATCH_OPS:
        raise WireError("too-large", f"a Batch of {count} ops, at most {MAX_BATCH_OPS}")
    if not count:
        raise WireError("malformed", "an empty Batch")
    return Batch(tuple(_decode_op(reader) for _ in range(count)))


def change_record(frame: Op | Batch) -> bytes:
    """An Op or a Batch as its type byte and body, without length or MAC: what
    :meth:`Session.feed` gives for it in ``bodies``, and ``cache.journal``'s record."""
    return _U8.pack(_CODECS[type(frame)].code) + encode_body(frame)


def decode_change(data: bytes) -> list[Op]:
    """The changes of a :func:`change_record`; :class:`WireError` on anything else."""
    view = memoryview(data)
    if not view or view[0] not in (_CODECS[Op].code, _CODECS[Batch].code):
        raise WireError("malformed", "not an Op or a Batch")
    codec = _BY_CODE[view[0]][1]
    reader = _Reader(view, 1)
    frame = codec.decode(reader)
    reader.finish()
    return list(frame.ops) if isinstance(frame, Batch) else [frame]


def encode_body(frame: Frame) -> bytes:
    """The body of ``frame`` (what every session sends of it); :class:`WireError` when a
    field is out of range, so a change can be checked before it is taken."""
    codec = _CODECS.get(type(frame))
    if codec is None:
        raise WireError("invalid", f"not a frame: {type(frame).__name__}")
    return codec.encode(frame)


def _position_decoder(cls: Callable[[int, int], Frame]) -> Callable[[_Reader], Frame]:
    return lambda reader: cls(*reader.unpack(_POSITION))


@dataclass(frozen=True)
class _Codec:
    code: int  # the type byte
    versioned: bool  # the body starts with the version byte
    flagged: bool  # then (or first) the flags byte
    encode: Callable[[Any], bytes]
    decode: Callable[[_Reader], Frame]


_CODECS: dict[type, _Codec] = {
    Hello: _Codec(1, True, True, _encode_hello, _decode_hello),
    Welcome: _Codec(2, True, True, _encode_welcome, _decode_welcome),
    Refuse: _Codec(3, False, True, _encode_refuse, _decode_refuse),
    SnapshotBegin: _Codec(4, False, False, _pack_position, _position_decoder(SnapshotBegin)),
    Item: _Codec(5, False, False, _encode_item, _decode_item),
    SnapshotEnd: _Codec(6, False, False, _pack_position, _position_decoder(SnapshotEnd)),
    Op: _Codec(7, False, False, _encode_op, _decode_op),
    Ack: _Codec(8, False, False, _pack_position, _position_decoder(Ack)),
    Batch: _Codec(9, False, False, _encode_batch, _decode_batch),
}
_BY_CODE = {codec.code: (cls, codec) for cls, codec in _CODECS.items()}


class _Dir(enum.Enum):
    """Who sends a frame; the value is the direction byte of the session MAC."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code

    UP = 1  # slave to master
    DOWN = 2  # master to slave


_SENDER = {_Dir.UP: "slave", _Dir.DOWN: "master"}
_OTHER = {_Dir.UP: _Dir.DOWN, _Dir.DOWN: _Dir.UP}


class _State(enum.Enum):
    """Where one direction of a conversation stands."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code

    HELLO = "no Hello yet"
    WELCOME = "no Welcome yet"
    OPEN = "open"
    SNAPSHOT = "in a snapshot"
    CLOSED = "refused"


_ANY = frozenset(_State)
_HELLO_SENT = frozenset({_State.OPEN})  # the slave's direction, once it has said Hello
_WELCOMED = frozenset({_State.OPEN, _State.SNAPSHOT})  # the master's, after Welcome, before Refuse

#: (direction, its state, frame type) -> (its next state, states the other direction must be in)
_RULES: dict[tuple[_Dir, _State, type], tuple[_State, frozenset[_State]]] = {
    (_Dir.UP, _State.HELLO, Hello): (_State.OPEN, _ANY),
    (_Dir.UP, _State.OPEN, Ack): (_State.OPEN, _WELCOMED),
    (_Dir.UP, _State.OPEN, Refuse): (_State.CLOSED, _WELCOMED),
    (_Dir.DOWN, _State.WELCOME, Welcome): (_State.OPEN, _HELLO_SENT),
    (_Dir.DOWN, _State.WELCOME, Refuse): (_State.CLOSED, _ANY),
    (_Dir.DOWN, _State.OPEN, SnapshotBegin): (_State.SNAPSHOT, _ANY),
    (_Dir.DOWN, _State.OPEN, Op): (_State.OPEN, _ANY),
    (_Dir.DOWN, _State.OPEN, Batch): (_State.OPEN, _ANY),
    (_Dir.DOWN, _State.OPEN, Refuse): (_State.CLOSED, _ANY),
    (_Dir.DOWN, _State.SNAPSHOT, Item): (_State.SNAPSHOT, _ANY),
    (_Dir.DOWN, _State.SNAPSHOT, Op): (_State.SNAPSHOT, _ANY),
    (_Dir.DOWN, _State.SNAPSHOT, Batch): (_State.SNAPSHOT, _ANY),
    (_Dir.DOWN, _State.SNAPSHOT, SnapshotEnd): (_State.OPEN, _ANY),
    (_Dir.DOWN, _State.SNAPSHOT, Refuse): (_State.CLOSED, _ANY),
}


class _Auth(enum.Enum):
    """Which MAC a frame carries."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code

    NONE = "none"
    HELLO = "HMAC(secret, type | body)"
    BOUND = "HMAC(secret, hello nonce | type | body)"
    KEYED = "HMAC(K, direction | counter | type | body), truncated"


_MAC_BYTES = {
    _Auth.NONE: 0,
    _Auth.HELLO: HANDSHAKE_MAC_BYTES,
    _Auth.BOUND: HANDSHAKE_MAC_BYTES,
    _Auth.KEYED: FRAME_MAC_BYTES,
}


class Session:
    """One end of one replication connection: encodes what it sends, decodes what it gets.

    >>> slave, master = Session(b"s3cret", initiator=True), Session(b"s3cret", initiator=False)
    >>> master.feed(slave.encode(Hello("default", "n2", slave.nonce, 4, 4, 17)))[0].node_id
    'n2'
    >>> slave.feed(master.encode(Welcome("n1", master.nonce, 4, False)))[0].snapshot
    False
    >>> master.feed(slave.encode(Ack(4, 17)))
    [Ack(epoch=4, seq=17)]

    The Hello and the Welcome must carry their sender's :attr:`nonce`. :meth:`feed`
    buffers partial input and returns every complete frame, in order; when it raises, the
    frames of that call are discarded and the session is dead (the caller drops the
    connection and the slave resynchronises from what it acknowledged); it can still
    :meth:`encode` a :class:`Refuse` to say why, when the conversation allows one.

    Cost: one HMAC per frame when authenticated, and a copy or two of each frame; buffered
    input is at most one frame (:data:`MAX_FRAME_BYTES`). Each direction's state is written
    by only one of :meth:`encode` and :meth:`feed`, so one thread may encode while another
    feeds; two threads must not both encode, nor both feed.
    """

    def __init__(self, secret: bytes | None, initiator: bool, nonce: bytes | None = None) -> None:
        if nonce is None:
            nonce = os.urandom(NONCE_BYTES)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise WireError("invalid", f"nonce: expected {NONCE_BYTES} bytes")
        self.nonce = nonce
        self.frames_in = 0
        self.frames_out = 0
        self._sends = _Dir.UP if initiator else _Dir.DOWN
        self._gets = _OTHER[self._sends]
        self._states = {_Dir.UP: _State.HELLO, _Dir.DOWN: _State.WELCOME}
        self._secret = hmac.new(bytes(secret), digestmod=hashlib.sha256) if secret else None
        self._key: hmac.HMAC | None = None  # K, once the Welcome is through
        self._hello_nonce = b""
        self._buffer = bytearray()
        self._failure: WireError | None = None

    @property
    def authenticated(self) -> bool:
        """Whether this session signs what it sends and requires signatures on what it gets."""
        return self._secret is not None

    def encode(self, frame: Frame, body: bytes | None = None) -> bytes:
        """The bytes of ``frame``; :class:`WireError` when it is out of range or out of order.

        ``body`` is :func:`encode_body` of the same frame, made once for several sessions.
        """
        cls = type(frame)
        codec = _CODECS.get(cls)
        if codec is None:
            raise WireError("invalid", f"not a frame: {cls.__name__}")
        if self._failure is not None and cls is not Refuse:
            raise WireError("closed", f"this session failed ({self._failure}); only Refuse is left")
        direction = self._sends
        state, other = self._states[direction], self._states[self._gets]
        next_state = self._step(direction, cls)
        if isinstance(frame, (Hello, Welcome)) and frame.nonce != self.nonce:
            raise WireError("invalid", f"{cls.__name__}.nonce must be this session's nonce")
        auth = self._auth(cls, state, other)
        flags = FLAG_AUTHENTICATED if auth is not _Auth.NONE else 0
        preamble = bytes((VERSION,) * codec.versioned + (flags,) * codec.flagged)
        if body is None:
            body = codec.encode(frame)
        size = 1 + len(preamble) + len(body) + _MAC_BYTES[auth]
        if size > MAX_FRAME_BYTES:
            raise WireError("too-large", f"a frame of {size} bytes, at most {MAX_FRAME_BYTES}")
        signed = b"".join((_U8.pack(codec.code), preamble, body))
        data = b"".join(
            (_U32.pack(size), signed, self._sign(auth, direction, self.frames_out, signed))
        )
        self._advance(frame, direction, next_state)
        self.frames_out += 1
        return data

    def feed(self, data: bytes, bodies: list[bytes] | None = None) -> list[Frame]:
        """Every frame completed by ``data``, in order; :class:`WireError` on anything invalid.

        With ``bodies``, each frame's type byte and body (its bytes without length and MAC)
        are appended to it, one per frame returned: a slave journals its changes as received.
        """
        if self._failure is not None:
            raise WireError("closed", f"this session already failed ({self._failure})")
        self._buffer += data
        frames: list[Frame] = []
        offset = 0
        try:
            while len(self._buffer) - offset >= _U32.size:
                (size,) = _U32.unpack_from(self._buffer, offset)
                if size > MAX_FRAME_BYTES:
                    raise WireError(
                        "too-large", f"a frame of {size} bytes, at most {MAX_FRAME_BYTES}"
                    )
                if size == 0:
                    raise WireError("malformed", "an empty frame")
                end = offset + _U32.size + size
                if len(self._buffer) < end:
                    break
                frames.append(self._receive(bytes(self._buffer[offset + _U32.size : end]), bodies))
                offset = end
        except WireError as exc:
            self._failure = exc
            self._buffer = bytearray()
            raise
        del self._buffer[:offset]
        return frames

    def _step(self, direction: _Dir, cls: type) -> _State:
        """The state ``direction`` goes to with a ``cls`` frame; ``order`` when it may not."""
        state, other = self._states[direction], self._states[_OTHER[direction]]
        rule = _RULES.get((direction, state, cls))
        if rule is None or other not in rule[1]:
            sender, peer = _SENDER[direction], _SENDER[_OTHER[direction]]
            raise WireError(
                "order",
                f"{cls.__name__} from the {sender} is out of order"
                f" ({sender}: {state.value}; {peer}: {other.value})",
            )
        return rule[0]

    def _auth(self, cls: type, state: _State, other: _State) -> _Auth:
        """The MAC a ``cls`` frame carries when its direction is in ``state``."""
        if self._secret is None:
            return _Auth.NONE
        if cls is Hello:
            return _Auth.HELLO
        if state is _State.WELCOME:  # a Welcome, or a Refuse instead: bound to the Hello if any
            return _Auth.BOUND if other in _HELLO_SENT else _Auth.NONE
        return _Auth.KEYED

    def _sign(
        self, auth: _Auth, direction: _Dir, counter: int, signed: bytes | memoryview
    ) -> bytes:
        if auth is _Auth.NONE:
            return b""
        if auth is _Auth.KEYED:
            assert self._key is not None  # the rules admit keyed frames only after the Welcome
            mac = self._key.copy()
            mac.update(_COUNTER.pack(direction.value, counter))
        else:
            assert self._secret is not None
            mac = self._secret.copy()
            if auth is _Auth.BOUND:
                mac.update(self._hello_nonce)
        mac.update(signed)
        return mac.digest()[: _MAC_BYTES[auth]]

    def _advance(self, frame: Frame, direction: _Dir, next_state: _State) -> None:
        if isinstance(frame, Hello):
            self._hello_nonce = frame.nonce
        elif isinstance(frame, Welcome) and self._secret is not None:
            mac = self._secret.copy()
            mac.update(KEY_LABEL + self._hello_nonce + frame.nonce)
            self._key = hmac.new(mac.digest(), digestmod=hashlib.sha256)
        self._states[direction] = next_state

    def _receive(self, payload: bytes, bodies: list[bytes] | None = None) -> Frame:
        """Check and decode one frame (type, body, MAC), then move the state machine."""
        view = memoryview(payload)
        entry = _BY_CODE.get(view[0])
        if entry is None:
            raise WireError("malformed", f"unknown frame type {view[0]}")
        cls, codec = entry
        direction = self._gets
        state, other = self._states[direction], self._states[self._sends]
        next_state = self._step(direction, cls)
        auth = self._auth(cls, state, other)
        start = 1 + codec.versioned + codec.flagged
        if codec.flagged:
            if len(view) < start:
                raise WireError("truncated", f"{cls.__name__} without its flags")
            if codec.versioned and view[1] != VERSION:
                raise WireError("version", f"unsupported version {view[1]} (this is {VERSION})")
            self._check_flags(cls, view, start, auth)
        if len(view) < start + _MAC_BYTES[auth]:
            raise WireError("truncated", f"{cls.__name__} shorter than its MAC")
        split = len(view) - _MAC_BYTES[auth]
        signed = view[:split]
        if auth is not _Auth.NONE and not hmac.compare_digest(
            self._sign(auth, direction, self.frames_in, signed), view[split:]
        ):
            raise WireError(
                "forged",
                f"{cls.__name__} with a MAC that does not verify (tampered, replayed, reordered,"
                " or signed with another secret)",
            )
        reader = _Reader(signed, start)
        frame = codec.decode(reader)
        reader.finish()
        self._advance(frame, direction, next_state)
        self.frames_in += 1
        if bodies is not None:
            bodies.append(payload[:split])
        return frame

    def _check_flags(self, cls: type, view: memoryview, start: int, auth: _Auth) -> None:
        flags = view[start - 1]
        if flags & ~FLAG_AUTHENTICATED:
            raise WireError("malformed", f"unknown flags {flags:#04x}")
        signed = bool(flags & FLAG_AUTHENTICATED)
        if self._secret is None and signed:
            raise WireError(
                "auth-mismatch",
                f"authenticated {cls.__name__}, but this side has no secret",
            )
        if self._secret is not None and not signed:
            said = _unverified_reason(view, start) if cls is Refuse else ""
            raise WireError(
                "auth-mismatch",
                f"unauthenticated {cls.__name__}{said}, but this side has a secret",
            )
        if auth is _Auth.NONE and signed:
            raise WireError(
                "auth-mismatch", f"{cls.__name__} sent before the Hello: cannot be authenticated"
            )


def _unverified_reason(view: memoryview, start: int) -> str:
    """The reason of an unauthenticated Refuse, quoted for a log message, or ''."""
    try:
        reader = _Reader(view, start)
        refusal = _decode_refuse(reader)
        reader.finish()
    except WireError:
        return ""
    return f" (unverified: {refusal.reason!r})"
