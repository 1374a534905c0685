"""Tests for cache.wire: layout, round trips, every error reason, fuzzing, tampering, replay."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.wire import (
    MAX_BATCH_OPS,
    MAX_CACHE_NAME_BYTES,
    MAX_FRAME_BYTES,
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    MAX_REASON_BYTES,
    MAX_VALUE_BYTES,
    REASONS,
    VERSION,
    Ack,
    Batch,
    Frame,
    Hello,
    Item,
    Kind,
    Op,
    Refuse,
    RefuseCode,
    Session,
    SnapshotBegin,
    SnapshotEnd,
    Welcome,
    WireError,
)

PROPERTY = settings(max_examples=120, deadline=None, database=None)
SECRET = b"replication-test-secret"
SLAVE_NONCE = bytes(range(16))
MASTER_NONCE = bytes(range(16, 32))
HELLO = Hello("default", "node-2", SLAVE_NONCE, 3, 3, 41)
WELCOME = Welcome("node-1", MASTER_NONCE, 3, False)
PUT = Op(3, 42, Kind.PUT, "c", "k", b"v", None)
NO_EXPIRY = bytes(9)

# -- strategies -------------------------------------------------------------------------------

U64 = st.integers(0, 2**64 - 1)
PRINTABLE = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
NAMES = st.text(PRINTABLE, min_size=1, max_size=20).filter(
    lambda s: len(s.encode()) <= MAX_NAME_BYTES and not any(c.isspace() for c in s)
)
CACHES = st.text(PRINTABLE | st.just(" "), min_size=1, max_size=20)
KEYS = st.text(max_size=20)
VALUES = st.binary(max_size=64)
EXPIRIES = st.none() | st.floats(allow_nan=False, allow_infinity=False)
REASON_TEXTS = st.text(PRINTABLE | st.just(" "), max_size=40)
REFUSE_CODES = st.sampled_from(RefuseCode)
OPS = st.one_of(
    st.builds(Op, U64, U64, st.just(Kind.PUT), CACHES, KEYS, VALUES, EXPIRIES),
    st.builds(Op, U64, U64, st.just(Kind.DELETE), CACHES, KEYS, st.just(b""), st.none()),
    st.builds(Op, U64, U64, st.just(Kind.CLEAR), CACHES, st.just(""), st.just(b""), st.none()),
)
ITEMS = st.builds(Item, CACHES, KEYS, VALUES, EXPIRIES)
BATCHES = st.lists(OPS, min_size=1, max_size=4).map(lambda ops: Batch(tuple(ops)))
SNAPSHOTS = st.builds(
    lambda epoch, seq, items: [SnapshotBegin(epoch, seq), *items, SnapshotEnd(epoch, seq)],
    U64,
    U64,
    st.lists(ITEMS, max_size=3),
)
#: what a master may send after its Welcome, in an order the grammar accepts
STREAMS = st.lists(
    st.one_of(OPS.map(lambda op: [op]), BATCHES.map(lambda b: [b]), SNAPSHOTS), max_size=5
).map(lambda parts: [frame for part in parts for frame in part])
HELLOS = st.builds(Hello, NAMES, NAMES, st.just(SLAVE_NONCE), U64, U64, U64)
WELCOMES = st.builds(Welcome, NAMES, st.just(MASTER_NONCE), U64, st.booleans())
ACKS = st.lists(st.builds(Ack, U64, U64), max_size=3)
SECRETS = st.sampled_from([None, SECRET])
#: "whole", "bytewise", or the sizes of successive chunks (cycled)
CHUNKINGS = st.one_of(
    st.just("whole"), st.just("bytewise"), st.lists(st.integers(1, 97), min_size=1, max_size=6)
)

# -- helpers ----------------------------------------------------------------------------------


def chunks(data: bytes, chunking: Any) -> list[bytes]:
    if chunking == "whole":
        sizes = [max(len(data), 1)]
    else:
        sizes = [1] if chunking == "bytewise" else chunking
    out, offset, turn = [], 0, 0
    while offset < len(data):
        size = sizes[turn % len(sizes)]
        out.append(data[offset : offset + size])
        offset += size
        turn += 1
    return out


def feed(session: Session, data: bytes, chunking: Any = "whole") -> list[Frame]:
    frames: list[Frame] = []
    for chunk in chunks(data, chunking):
        frames += session.feed(chunk)
    return frames


def feed_until_error(
    session: Session, data: bytes, chunking: Any = "whole"
) -> tuple[list[Frame], WireError | None]:
    """What ``session`` yields for ``data``, and the error that stopped it (if any)."""
    frames: list[Frame] = []
    try:
        for chunk in chunks(data, chunking):
            frames += session.feed(chunk)
    except WireError as exc:
        return frames, exc
    return frames, None


def pair(secret: bytes | None = None) -> tuple[Session, Session]:
    slave = Session(secret, initiator=True, nonce=SLAVE_NONCE)
    return slave, Session(secret, initiator=False, nonce=MASTER_NONCE)


def opened(secret: bytes | None = None, snapshot: bool = False) -> tuple[Session, Session]:
    """A slave and a master past Hello and Welcome."""
    slave, master = pair(secret)
    assert master.feed(slave.encode(HELLO)) == [HELLO]
    welcome = dataclasses.replace(WELCOME, snapshot=snapshot)
    assert slave.feed(master.encode(welcome)) == [welcome]
    return slave, master


def greeting_slave(secret: bytes | None = SECRET) -> Session:
    """A slave that has sent HELLO and waits for the Welcome."""
    slave = Session(secret, initiator=True, nonce=SLAVE_NONCE)
    slave.encode(HELLO)
    return slave


def s1(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def s2(raw: bytes) -> bytes:
    return struct.pack("!H", len(raw)) + raw


def s4(raw: bytes) -> bytes:
    return struct.pack("!I", len(raw)) + raw


def raw(code: int, *parts: bytes) -> bytes:
    """A frame without a MAC: u32 length | type | body."""
    body = b"".join(parts)
    return struct.pack("!IB", 1 + len(body), code) + body


def reframe(data: bytes) -> bytes:
    """``data`` with its length prefix recomputed."""
    return struct.pack("!I", len(data) - 4) + data[4:]


def hello_raw(version: int = VERSION, flags: int = 0, node: bytes = b"node-2") -> bytes:
    numbers = struct.pack("!QQQ", 3, 3, 41)
    return raw(1, bytes([version, flags]), SLAVE_NONCE, numbers, s1(b"default"), s1(node))


def welcome_raw(version: int = VERSION, flags: int = 0, snapshot: int = 0) -> bytes:
    numbers = struct.pack("!QB", 3, snapshot)
    return raw(2, bytes([version, flags]), MASTER_NONCE, numbers, s1(b"node-1"))


def op_raw(
    kind: int = 1,
    expiry: bytes = NO_EXPIRY,
    cache: bytes = s1(b"c"),
    key: bytes = s2(b"k"),
    value: bytes = s4(b"v"),
) -> bytes:
    return raw(7, struct.pack("!QQB", 3, 42, kind), expiry, cache, key, value)


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


# -- layout -----------------------------------------------------------------------------------


def test_layout_is_the_documented_one() -> None:
    slave, master = pair()
    assert slave.encode(HELLO) == hello_raw()
    master.feed(hello_raw())
    assert master.encode(WELCOME) == welcome_raw()
    slave.feed(welcome_raw())
    assert master.encode(PUT) == op_raw()
    item = Item("c", "", b"", 1.5)
    assert master.encode(SnapshotBegin(3, 42)) == raw(4, struct.pack("!QQ", 3, 42))
    assert master.encode(item) == raw(5, struct.pack("!Bd", 1, 1.5), s1(b"c"), s2(b""), s4(b""))
    assert master.encode(SnapshotEnd(3, 42)) == raw(6, struct.pack("!QQ", 3, 42))
    assert master.encode(Batch((PUT, PUT))) == raw(9, b"\x00\x02", op_raw()[5:] * 2)
    assert slave.encode(Ack(3, 42)) == raw(8, struct.pack("!QQ", 3, 42))
    assert slave.encode(Refuse(RefuseCode.TOO_SLOW, "bye")) == raw(3, b"\x00\x01", s2(b"bye"))


def test_macs_are_the_documented_ones() -> None:
    slave, master = pair(SECRET)
    hello = hello_raw(flags=1)
    signed_hello = reframe(hello + mac(SECRET, hello[4:]))
    assert slave.encode(HELLO) == signed_hello
    assert master.feed(signed_hello) == [HELLO]
    welcome = welcome_raw(flags=1)
    signed_welcome = reframe(welcome + mac(SECRET, SLAVE_NONCE, welcome[4:]))
    assert master.encode(WELCOME) == signed_welcome
    slave.feed(signed_welcome)
    key = mac(SECRET, b"twinweave-replication", SLAVE_NONCE, MASTER_NONCE)
    for counter in (1, 2):  # the Welcome was frame 0 of its direction
        op = op_raw()
        tag = mac(key, b"\x02", struct.pack("!Q", counter), op[4:])[:16]
        assert master.encode(PUT) == reframe(op + tag)
    ack = raw(8, struct.pack("!QQ", 3, 42))
    tag = mac(key, b"\x01", struct.pack("!Q", 1), ack[4:])[:16]  # the Hello was frame 0
    assert slave.encode(Ack(3, 42)) == reframe(ack + tag)


# -- round trips ------------------------------------------------------------------------------


@PROPERTY
@given(
    secret=SECRETS,
    hello=HELLOS,
    welcome=WELCOMES,
    stream=STREAMS,
    acks=ACKS,
    ender=st.sampled_from(["slave", "master", None]),
    code=REFUSE_CODES,
    reason=REASON_TEXTS,
    chunking=CHUNKINGS,
)
def test_round_trip(
    secret: bytes | None,
    hello: Hello,
    welcome: Welcome,
    stream: list[Frame],
    acks: list[Ack],
    ender: str | None,
    code: RefuseCode,
    reason: str,
    chunking: Any,
) -> None:
    slave, master = pair(secret)
    assert slave.authenticated is master.authenticated is (secret is not None)
    assert feed(master, slave.encode(hello), chunking) == [hello]
    assert feed(slave, master.encode(welcome), chunking) == [welcome]
    down = b"".join(master.encode(frame) for frame in stream)
    assert feed(slave, down, chunking) == stream
    up = b"".join(slave.encode(ack) for ack in acks)
    assert feed(master, up, chunking) == acks
    refusal = Refuse(code, reason)
    if ender == "slave":
        assert feed(master, slave.encode(refusal), chunking) == [refusal]
    elif ender == "master":
        assert feed(slave, master.encode(refusal), chunking) == [refusal]
    assert master.frames_out == slave.frames_in == 1 + len(stream) + (ender == "master")
    assert slave.frames_out == master.frames_in == 1 + len(acks) + (ender == "slave")


@PROPERTY
@given(secret=SECRETS, code=REFUSE_CODES, reason=REASON_TEXTS, chunking=CHUNKINGS)
def test_refuse_instead_of_welcome(
    secret: bytes | None, code: RefuseCode, reason: str, chunking: Any
) -> None:
    slave, master = pair(secret)
    feed(master, slave.encode(HELLO), chunking)
    refusal = Refuse(code, reason)
    assert feed(slave, master.encode(refusal), chunking) == [refusal]
    assert type(refusal.code) is RefuseCode
    with pytest.raises(WireError) as info:
        master.encode(PUT)
    assert info.value.reason == "order"


def test_a_master_may_refuse_before_any_hello_without_a_secret() -> None:
    slave, master = pair()
    refusal = master.encode(Refuse(RefuseCode.OTHER, "busy"))
    assert greeting_slave(None).feed(refusal) == [Refuse(RefuseCode.OTHER, "busy")]
    assert slave.feed(refusal) == [Refuse(RefuseCode.OTHER, "busy")]  # even before its own Hello


def test_largest_values_and_batches_round_trip() -> None:
    slave, master = opened(SECRET)
    big = Op(
        3, 1, Kind.PUT, "c" * MAX_CACHE_NAME_BYTES, "k" * MAX_KEY_BYTES, bytes(MAX_VALUE_BYTES), 0.0
    )
    assert feed(slave, master.encode(big), [1 << 20]) == [big]
    batch = Batch(tuple(dataclasses.replace(PUT, seq=i) for i in range(MAX_BATCH_OPS)))
    assert slave.feed(master.encode(batch)) == [batch]
    item = Item("\u00e9" * 64, "\U0001f600" * 1024, b"x", -1e300)
    assert slave.feed(master.encode(SnapshotBegin(3, 1)) + master.encode(item)) == [
        SnapshotBegin(3, 1),
        item,
    ]
    longest = Refuse(RefuseCode.OTHER, "r" * MAX_REASON_BYTES)
    assert master.feed(slave.encode(longest)) == [longest]


def test_a_snapshot_may_interleave_with_changes_and_acks() -> None:
    slave, master = opened(SECRET, snapshot=True)
    frames = [
        SnapshotBegin(3, 40),
        PUT,
        Item("c", "k", b"", None),
        Batch((PUT,)),
        SnapshotEnd(3, 40),
    ]
    data = master.encode(frames[0]) + master.encode(frames[1])
    assert master.feed(slave.encode(Ack(3, 42))) == [Ack(3, 42)]  # the master is mid-snapshot
    data += b"".join(master.encode(frame) for frame in frames[2:])
    assert slave.feed(data) == frames


def test_one_thread_may_encode_while_another_feeds() -> None:
    """cache.replication's send and receive loops share one session."""
    slave, master = opened(SECRET)
    acks = [Ack(3, seq) for seq in range(2000)]
    data = b"".join(slave.encode(ack) for ack in acks)
    errors: list[WireError] = []

    def stream_snapshots() -> None:
        try:
            for _ in range(500):
                for frame in (
                    SnapshotBegin(3, 1),
                    Item("c", "k", b"", None),
                    SnapshotEnd(3, 1),
                    PUT,
                ):
                    master.encode(frame)
        except WireError as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        thread = threading.Thread(target=stream_snapshots)
        thread.start()
        got = feed(master, data, [7])
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors and got == acks
    assert master.frames_out == 1 + 2000


def test_feed_accepts_bytes_like() -> None:
    slave, master = pair()
    data = slave.encode(HELLO)
    assert master.feed(bytearray(data[:10])) + master.feed(memoryview(data[10:])) == [HELLO]


def test_default_nonces_are_random() -> None:
    assert Session(None, True).nonce != Session(None, True).nonce
    assert len(Session(SECRET, False).nonce) == 16


# -- every reason -----------------------------------------------------------------------------


def received(
    make: Callable[[], Session], data: bytes | Callable[[], bytes]
) -> Callable[[], object]:
    """An action: a new session from ``make`` is fed ``data`` (or what ``data()`` builds)."""
    return lambda: make().feed(data() if callable(data) else data)


def plain_slave() -> Session:
    return opened()[0]


def plain_master() -> Session:
    return opened()[1]


def sent(make: Callable[[], Session], frame: Any) -> Callable[[], object]:
    """An action: a new session from ``make`` encodes ``frame``."""
    return lambda: make().encode(frame)


def fresh(initiator: bool, secret: bytes | None = None) -> Callable[[], Session]:
    return lambda: Session(secret, initiator, SLAVE_NONCE if initiator else MASTER_NONCE)


def greeting(secret: bytes | None = SECRET) -> Callable[[], Session]:
    return lambda: greeting_slave(secret)


def after_hello(secret: bytes | None = None) -> Callable[[], Session]:
    return lambda: master_after_hello(secret)


def encoded(make: Callable[[], Session], frame: Frame) -> Callable[[], bytes]:
    return lambda: make().encode(frame)


def master_after_hello(secret: bytes | None = None) -> Session:
    master = Session(secret, False, MASTER_NONCE)
    master.feed(Session(secret, True, SLAVE_NONCE).encode(HELLO))
    return master


def tampered_welcome() -> bytes:
    welcome = master_after_hello(SECRET).encode(WELCOME)
    return welcome[:-1] + bytes([welcome[-1] ^ 1])


def welcome_for_another_hello() -> bytes:
    master = Session(SECRET, False, MASTER_NONCE)
    master.feed(
        Session(SECRET, True, bytes(16)).encode(dataclasses.replace(HELLO, nonce=bytes(16)))
    )
    return master.encode(WELCOME)


def replayed_ack() -> None:
    slave, master = opened(SECRET)
    ack = slave.encode(Ack(3, 1))
    master.feed(ack)
    master.feed(ack)


def swapped_acks() -> None:
    slave, master = opened(SECRET)
    first, second = slave.encode(Ack(3, 1)), slave.encode(Ack(3, 2))
    master.feed(second + first)


def reflected_refuse() -> None:
    """A slave's Refuse sent to its twin: same key, same counter, only the direction differs."""
    slave, twin = opened(SECRET)[0], opened(SECRET)[0]
    twin.feed(slave.encode(Refuse(RefuseCode.OTHER, "bye")))


def after_failure(call: Callable[[Session], object]) -> Callable[[], object]:
    def run() -> object:
        slave = plain_slave()
        with pytest.raises(WireError):
            slave.feed(raw(0))
        return call(slave)

    return run


CASES: list[tuple[str, str, Callable[[], object]]] = [
    # too-large: checked before the bytes are awaited or read
    ("too-large", "frame length", received(fresh(False), struct.pack("!I", MAX_FRAME_BYTES + 1))),
    ("too-large", "name", received(fresh(False), hello_raw(node=b"n" * 65))),
    ("too-large", "key", received(plain_slave, op_raw(key=struct.pack("!H", MAX_KEY_BYTES + 1)))),
    (
        "too-large",
        "value",
        received(plain_slave, op_raw(value=struct.pack("!I", MAX_VALUE_BYTES + 1))),
    ),
    ("too-large", "cache", received(plain_slave, op_raw(cache=b"\xff"))),
    ("too-large", "batch", received(plain_slave, raw(9, struct.pack("!H", MAX_BATCH_OPS + 1)))),
    ("too-large", "reason", received(fresh(True), raw(3, b"\x00\x00", struct.pack("!H", 1025)))),
    ("too-large", "encode key", sent(plain_master, dataclasses.replace(PUT, key="k" * 4097))),
    (
        "too-large",
        "encode multibyte key",
        sent(plain_master, dataclasses.replace(PUT, key="\u00e9" * 2049)),
    ),
    (
        "too-large",
        "encode value",
        sent(plain_master, dataclasses.replace(PUT, value=bytes(MAX_VALUE_BYTES + 1))),
    ),
    ("too-large", "encode cache", sent(plain_master, dataclasses.replace(PUT, cache="c" * 129))),
    ("too-large", "encode node", sent(fresh(True), dataclasses.replace(HELLO, node_id="n" * 65))),
    ("too-large", "encode reason", sent(plain_slave, Refuse(RefuseCode.OTHER, "r" * 1025))),
    ("too-large", "encode batch", sent(plain_master, Batch((PUT,) * (MAX_BATCH_OPS + 1)))),
    # truncated: a field that runs past the end of its frame
    ("truncated", "nonce", received(fresh(False), raw(1, bytes([VERSION, 0]), bytes(8)))),
    ("truncated", "flags", received(fresh(False), raw(1, bytes([VERSION])))),
    ("truncated", "refuse", received(fresh(True), raw(3))),
    ("truncated", "refuse code", received(fresh(True), raw(3, b"\x00"))),
    ("truncated", "value", received(plain_slave, op_raw(value=s4(b"vv")[:-1]))),
    ("truncated", "key", received(plain_slave, op_raw(key=b"\x00", value=b""))),
    ("truncated", "position", received(plain_master, raw(8, bytes(15)))),
    ("truncated", "mac", received(lambda: opened(SECRET)[0], raw(7, bytes(15)))),
    (
        "truncated",
        "handshake mac",
        received(fresh(False, SECRET), raw(1, bytes([VERSION, 1]), bytes(30))),
    ),
    # malformed: anything else that is not this protocol
    ("malformed", "empty frame", received(fresh(False), bytes(4))),
    ("malformed", "type 0", received(fresh(False), raw(0))),
    ("malformed", "type 10", received(fresh(False), raw(10))),
    ("malformed", "flags", received(fresh(False), hello_raw(flags=2))),
    ("malformed", "refuse flags", received(fresh(True), raw(3, b"\x80\x00", s2(b"")))),
    ("malformed", "trailing", received(fresh(False), reframe(hello_raw() + b"\x00"))),
    ("malformed", "empty node", received(fresh(False), hello_raw(node=b""))),
    ("malformed", "node with space", received(fresh(False), hello_raw(node=b"a b"))),
    ("malformed", "node with newline", received(fresh(False), hello_raw(node=b"a\nb"))),
    ("malformed", "node not UTF-8", received(fresh(False), hello_raw(node=b"\xff\xfe"))),
    ("malformed", "cache", received(plain_slave, op_raw(cache=s1(b"a\x1bb")))),
    ("malformed", "empty cache", received(plain_slave, op_raw(cache=s1(b"")))),
    ("malformed", "surrogate key", received(plain_slave, op_raw(key=s2(b"\xed\xa0\x80")))),
    ("malformed", "reason", received(greeting(None), raw(3, b"\x00\x00", s2(b"a\x00")))),
    (
        "malformed",
        "refuse code",
        received(greeting(None), raw(3, bytes([0, len(RefuseCode)]), s2(b"from a newer peer"))),
    ),
    ("malformed", "refuse code 255", received(greeting(None), raw(3, b"\x00\xff", s2(b"")))),
    ("malformed", "snapshot flag", received(greeting(None), welcome_raw(snapshot=2))),
    ("malformed", "kind 0", received(plain_slave, op_raw(kind=0))),
    ("malformed", "kind 4", received(plain_slave, op_raw(kind=4))),
    ("malformed", "expiry flag", received(plain_slave, op_raw(expiry=b"\x02" + bytes(8)))),
    ("malformed", "absent expiry", received(plain_slave, op_raw(expiry=bytes(8) + b"\x01"))),
    ("malformed", "NaN", received(plain_slave, op_raw(expiry=struct.pack("!Bd", 1, float("nan"))))),
    ("malformed", "inf", received(plain_slave, op_raw(expiry=struct.pack("!Bd", 1, float("inf"))))),
    ("malformed", "delete value", received(plain_slave, op_raw(kind=2))),
    (
        "malformed",
        "delete expiry",
        received(plain_slave, op_raw(kind=2, value=s4(b""), expiry=struct.pack("!Bd", 1, 1.0))),
    ),
    ("malformed", "clear key", received(plain_slave, op_raw(kind=3, value=s4(b"")))),
    ("malformed", "empty batch", received(plain_slave, raw(9, b"\x00\x00"))),
    ("malformed", "batch op", received(plain_slave, raw(9, b"\x00\x01", op_raw(kind=9)[5:]))),
    # version
    ("version", "hello newer", received(fresh(False), hello_raw(version=VERSION + 1))),
    ("version", "hello 1, before refusal codes", received(fresh(False), hello_raw(version=1))),
    ("version", "hello 0", received(fresh(False, SECRET), hello_raw(version=0, flags=7))),
    ("version", "welcome", received(greeting(None), welcome_raw(version=VERSION + 1))),
    ("version", "welcome 1", received(greeting(None), welcome_raw(version=1))),
    # auth-mismatch
    (
        "auth-mismatch",
        "hello to plain",
        received(fresh(False), encoded(fresh(True, SECRET), HELLO)),
    ),
    ("auth-mismatch", "plain hello", received(fresh(False, SECRET), hello_raw())),
    ("auth-mismatch", "plain welcome", received(greeting(SECRET), welcome_raw())),
    (
        "auth-mismatch",
        "welcome to plain",
        received(greeting(None), encoded(after_hello(SECRET), WELCOME)),
    ),
    ("auth-mismatch", "plain refuse", received(greeting(SECRET), raw(3, b"\x00\x00", s2(b"no")))),
    (
        "auth-mismatch",
        "signed refuse to plain",
        received(greeting(None), encoded(after_hello(SECRET), Refuse(RefuseCode.OTHER, "no"))),
    ),
    (
        "auth-mismatch",
        "refuse before hello",
        received(fresh(True, SECRET), raw(3, b"\x01\x00", s2(b""), bytes(32))),
    ),
    (
        "auth-mismatch",
        "stripped refuse",
        received(lambda: opened(SECRET)[0], raw(3, b"\x00\x00", s2(b""))),
    ),
    # forged
    ("forged", "tampered welcome", received(greeting(), tampered_welcome)),
    (
        "forged",
        "other secret",
        received(
            fresh(False, SECRET), encoded(lambda: Session(b"other", True, SLAVE_NONCE), HELLO)
        ),
    ),
    ("forged", "old welcome", received(greeting(), welcome_for_another_hello)),
    ("forged", "replayed ack", replayed_ack),
    ("forged", "swapped acks", swapped_acks),
    ("forged", "reflected refuse", reflected_refuse),
    # order, received
    ("order", "ack before hello", received(fresh(False), raw(8, bytes(16)))),
    ("order", "ack before welcome", received(after_hello(), raw(8, bytes(16)))),
    ("order", "welcome before hello", received(fresh(True), welcome_raw())),
    ("order", "second hello", received(after_hello(), hello_raw())),
    ("order", "second welcome", received(plain_slave, welcome_raw())),
    ("order", "op to master", received(plain_master, op_raw())),
    ("order", "ack to slave", received(plain_slave, raw(8, bytes(16)))),
    ("order", "hello to slave", received(greeting(None), hello_raw())),
    (
        "order",
        "item outside snapshot",
        received(plain_slave, raw(5, NO_EXPIRY, s1(b"c"), s2(b""), s4(b""))),
    ),
    ("order", "end without begin", received(plain_slave, raw(6, bytes(16)))),
    ("order", "nested begin", received(plain_slave, raw(4, bytes(16)) * 2)),
    ("order", "after refuse", received(plain_slave, raw(3, b"\x00\x00", s2(b"")) + op_raw())),
    # order, sent: a programming error surfaces at once
    ("order", "slave sends op", sent(plain_slave, PUT)),
    ("order", "master sends ack", sent(plain_master, Ack(1, 1))),
    ("order", "slave acks early", sent(lambda: greeting_slave(None), Ack(1, 1))),
    ("order", "slave starts with refuse", sent(fresh(True), Refuse(RefuseCode.OTHER, "x"))),
    ("order", "master streams early", sent(master_after_hello, PUT)),
    ("order", "master welcomes early", sent(fresh(False), WELCOME)),
    ("order", "second hello", sent(plain_slave, HELLO)),
    ("order", "item outside snapshot", sent(plain_master, Item("c", "k", b"", None))),
    # invalid: encode() given a frame out of range
    ("invalid", "session nonce", lambda: Session(None, True, bytes(15))),
    ("invalid", "hello nonce", sent(fresh(True), dataclasses.replace(HELLO, nonce=bytes(16)))),
    ("invalid", "short nonce", sent(fresh(True), dataclasses.replace(HELLO, nonce=bytes(15)))),
    (
        "invalid",
        "welcome nonce",
        sent(master_after_hello, dataclasses.replace(WELCOME, nonce=SLAVE_NONCE)),
    ),
    ("invalid", "NaN", sent(plain_master, dataclasses.replace(PUT, expire_at=float("nan")))),
    ("invalid", "inf", sent(plain_master, dataclasses.replace(PUT, expire_at=float("-inf")))),
    ("invalid", "huge int expiry", sent(plain_master, dataclasses.replace(PUT, expire_at=10**400))),
    ("invalid", "bool expiry", sent(plain_master, dataclasses.replace(PUT, expire_at=True))),
    ("invalid", "u64", sent(plain_master, dataclasses.replace(PUT, seq=2**64))),
    ("invalid", "negative", sent(plain_slave, Ack(-1, 0))),
    ("invalid", "bool epoch", sent(plain_slave, Ack(True, 0))),
    ("invalid", "float seq", sent(plain_slave, Ack(1, 1.0))),
    ("invalid", "kind", sent(plain_master, dataclasses.replace(PUT, kind=9))),
    (
        "invalid",
        "delete with value",
        sent(plain_master, dataclasses.replace(PUT, kind=Kind.DELETE)),
    ),
    (
        "invalid",
        "clear with key",
        sent(plain_master, dataclasses.replace(PUT, kind=Kind.CLEAR, value=b"")),
    ),
    ("invalid", "str value", sent(plain_master, dataclasses.replace(PUT, value="v"))),
    ("invalid", "surrogate key", sent(plain_master, dataclasses.replace(PUT, key="\udc80"))),
    ("invalid", "empty cache", sent(plain_master, dataclasses.replace(PUT, cache=""))),
    ("invalid", "node with space", sent(fresh(True), dataclasses.replace(HELLO, node_id="a b"))),
    ("invalid", "reason with newline", sent(plain_slave, Refuse(RefuseCode.OTHER, "a\nb"))),
    ("invalid", "refuse code", sent(plain_slave, Refuse(len(RefuseCode), "x"))),
    ("invalid", "refuse code bool", sent(plain_slave, Refuse(True, "x"))),
    (
        "invalid",
        "snapshot not bool",
        sent(master_after_hello, dataclasses.replace(WELCOME, snapshot=1)),
    ),
    ("invalid", "empty batch", sent(plain_master, Batch(()))),
    ("invalid", "batch of items", sent(plain_master, Batch((Item("c", "k", b"", None),)))),
    ("invalid", "not a frame", sent(plain_master, "hello")),
    # closed: a session that failed
    ("closed", "feed", after_failure(lambda session: session.feed(b""))),
    ("closed", "encode", after_failure(lambda session: session.encode(Ack(1, 1)))),
]


@pytest.mark.parametrize(
    ("reason", "action"), [(r, a) for r, _, a in CASES], ids=[f"{r}-{i}" for r, i, _ in CASES]
)
def test_each_reason(reason: str, action: Callable[[], object]) -> None:
    with pytest.raises(WireError) as info:
        action()
    assert info.value.reason == reason, str(info.value)
    assert str(info.value).startswith(reason + ": ")


def test_every_reason_has_a_case() -> None:
    assert {reason for reason, _, _ in CASES} == REASONS


def test_frame_too_large_on_encode() -> None:
    value = bytes(MAX_VALUE_BYTES)
    ops = tuple(Op(3, seq, Kind.PUT, "c", "k", value, None) for seq in range(4))
    with pytest.raises(WireError) as info:
        plain_master().encode(Batch(ops))
    assert info.value.reason == "too-large"


def test_an_unauthenticated_refusal_is_quoted_but_not_returned() -> None:
    slave = greeting_slave(SECRET)
    with pytest.raises(WireError, match="unverified: 'unsupported version'") as info:
        slave.feed(Session(None, False).encode(Refuse(RefuseCode.OTHER, "unsupported version")))
    assert info.value.reason == "auth-mismatch"


def test_a_failed_session_can_still_say_why() -> None:
    slave, master = opened(SECRET)
    with pytest.raises(WireError):
        master.feed(b"\x00\x00\x00\x11" + bytes(17))
    assert slave.feed(master.encode(Refuse(RefuseCode.OTHER, "forged"))) == [
        Refuse(RefuseCode.OTHER, "forged")
    ]
    # a master that could not read a Hello refuses unauthenticated: the slave says so
    master = Session(SECRET, initiator=False)
    with pytest.raises(WireError) as info:
        master.feed(hello_raw(version=9))
    assert info.value.reason == "version"
    with pytest.raises(WireError) as info:
        greeting_slave(SECRET).feed(master.encode(Refuse(RefuseCode.OTHER, "unsupported version")))
    assert info.value.reason == "auth-mismatch"
    assert "unverified: 'unsupported version'" in str(info.value)


def test_encode_errors_do_not_kill_the_session() -> None:
    slave, master = opened(SECRET)
    with pytest.raises(WireError):
        master.encode(dataclasses.replace(PUT, key="\udc80"))
    with pytest.raises(WireError):
        master.encode(Ack(1, 1))
    assert slave.feed(master.encode(PUT)) == [PUT]


def test_the_frames_of_a_failing_call_are_discarded() -> None:
    slave, master = opened()
    with pytest.raises(WireError):
        slave.feed(master.encode(PUT) + raw(0))
    assert slave.frames_in == 2  # Welcome and the Op, counted before the failure


# -- fuzzing ----------------------------------------------------------------------------------


def only_frames_or_wire_errors(session: Session, data: bytes, chunking: Any) -> None:
    frames, _error = feed_until_error(session, data, chunking)
    assert all(type(frame).__module__ == "cache.wire" for frame in frames)


@PROPERTY
@given(data=st.binary(max_size=400), secret=SECRETS, chunking=CHUNKINGS)
def test_arbitrary_bytes_to_a_fresh_responder(
    data: bytes, secret: bytes | None, chunking: Any
) -> None:
    only_frames_or_wire_errors(Session(secret, initiator=False), data, chunking)


@PROPERTY
@given(
    payloads=st.lists(st.tuples(st.integers(0, 11), st.binary(max_size=80)), max_size=6),
    side=st.sampled_from(["slave", "master", "greeting", "fresh"]),
    secret=SECRETS,
    chunking=CHUNKINGS,
)
def test_arbitrary_well_framed_payloads(
    payloads: list[tuple[int, bytes]], side: str, secret: bytes | None, chunking: Any
) -> None:
    sessions = {
        "slave": lambda: opened(secret, snapshot=True)[0],
        "master": lambda: opened(secret)[1],
        "greeting": lambda: greeting_slave(secret),
        "fresh": lambda: Session(secret, initiator=False),
    }
    data = b"".join(raw(code, body) for code, body in payloads)
    only_frames_or_wire_errors(sessions[side](), data, chunking)


MUTATIONS = st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"])


def mutate(data: bytes, how: str, at: int, byte: int) -> bytes:
    at %= len(data)
    if how == "flip":
        return data[:at] + bytes([data[at] ^ (1 << byte % 8)]) + data[at + 1 :]
    if how == "insert":
        return data[:at] + bytes([byte]) + data[at:]
    if how == "delete":
        return data[:at] + data[at + 1 :]
    if how == "truncate":
        return data[:at]
    return data[:at] + data[at : at + byte + 1] * 2 + data[at + byte + 1 :]


@PROPERTY
@given(
    stream=STREAMS,
    mutations=st.lists(
        st.tuples(MUTATIONS, st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3
    ),
    chunking=CHUNKINGS,
)
def test_mutated_plain_streams_fail_cleanly(
    stream: list[Frame], mutations: list[tuple[str, int, int]], chunking: Any
) -> None:
    slave, master = pair()
    master.feed(slave.encode(HELLO))
    data = master.encode(WELCOME) + b"".join(master.encode(frame) for frame in stream)
    for how, at, byte in mutations:
        data = mutate(data, how, at, byte) or b"\x00"
    only_frames_or_wire_errors(slave, data, chunking)


# -- tampering with an authenticated stream ---------------------------------------------------


def recorded(stream: list[Frame], master_nonce: bytes = MASTER_NONCE) -> list[bytes]:
    """The bytes of the Welcome, then of each frame of ``stream``, as a master sends them."""
    master = Session(SECRET, initiator=False, nonce=master_nonce)
    master.feed(Session(SECRET, initiator=True, nonce=SLAVE_NONCE).encode(HELLO))
    welcome = dataclasses.replace(WELCOME, nonce=master_nonce)
    return [master.encode(welcome)] + [master.encode(frame) for frame in stream]


NON_EMPTY_STREAMS = STREAMS.filter(bool)


def assert_prefix(got: list[Frame], frames: list[Frame], index: int) -> None:
    """Frames before the damaged one at most (a failing call yields none), all unchanged."""
    assert len(got) <= index
    assert got == frames[: len(got)]


@PROPERTY
@given(stream=NON_EMPTY_STREAMS, data=st.data(), chunking=CHUNKINGS)
def test_every_bit_flip_is_caught(stream: list[Frame], data: st.DataObject, chunking: Any) -> None:
    parts = recorded(stream)
    frames = [WELCOME, *stream]
    index = data.draw(st.integers(0, len(parts) - 1))
    at = data.draw(st.integers(0, len(parts[index]) - 1))
    bit = data.draw(st.integers(0, 7))
    part = bytearray(parts[index])
    part[at] ^= 1 << bit
    mutated = b"".join(parts[:index]) + bytes(part) + b"".join(parts[index + 1 :])
    got, error = feed_until_error(greeting_slave(), mutated, chunking)
    assert_prefix(got, frames, index)
    if at >= 4:  # a flip in the length prefix may only leave the stream waiting for more
        assert error is not None
    if at >= 5 and index > 0:  # body or MAC of a keyed frame
        assert error is not None and error.reason == "forged"


@PROPERTY
@given(stream=NON_EMPTY_STREAMS, data=st.data(), chunking=CHUNKINGS)
def test_truncated_frames_followed_by_more_bytes_are_caught(
    stream: list[Frame], data: st.DataObject, chunking: Any
) -> None:
    parts = recorded(stream)
    index = data.draw(st.integers(0, len(parts) - 1))
    cut = data.draw(st.integers(5, len(parts[index]) - 1))
    rest = b"".join(parts[index + 1 :]) + bytes(len(parts[index]))
    mutated = b"".join(parts[:index]) + parts[index][:cut] + rest
    got, error = feed_until_error(greeting_slave(), mutated, chunking)
    assert_prefix(got, [WELCOME, *stream], index)
    assert error is not None


@PROPERTY
@given(
    stream=NON_EMPTY_STREAMS,
    how=st.sampled_from(["splice", "swap", "replay", "drop"]),
    data=st.data(),
    chunking=CHUNKINGS,
)
def test_spliced_reordered_replayed_and_dropped_frames_are_caught(
    stream: list[Frame], how: str, data: st.DataObject, chunking: Any
) -> None:
    parts = recorded(stream)
    frames = [WELCOME, *stream]
    last = len(parts) - 1
    if how == "splice":  # the same frame, from a session with another master nonce
        index = data.draw(st.integers(1, last))
        parts[index] = recorded(stream, master_nonce=bytes(16))[index]
    elif how == "swap":
        if last < 2:
            return
        index = data.draw(st.integers(1, last - 1))
        parts[index], parts[index + 1] = parts[index + 1], parts[index]
    elif how == "replay":
        earlier = data.draw(st.integers(0, last))
        index = data.draw(st.integers(earlier, last)) + 1
        parts.insert(index, parts[earlier])
    else:
        if last < 2:
            return
        index = data.draw(st.integers(1, last - 1))
        del parts[index]
    got, error = feed_until_error(greeting_slave(), b"".join(parts), chunking)
    assert_prefix(got, frames, index)
    assert error is not None and error.reason in {"forged", "order"}, error


def test_another_sessions_stream_is_refused_whole() -> None:
    stream = [PUT, Batch((PUT, PUT))]
    other = Session(SECRET, initiator=True)  # another slave nonce
    master = Session(SECRET, initiator=False)
    master.feed(other.encode(dataclasses.replace(HELLO, nonce=other.nonce)))
    data = master.encode(Welcome("node-1", master.nonce, 3, False))
    data += b"".join(master.encode(frame) for frame in stream)
    got, error = feed_until_error(greeting_slave(), data)
    assert got == [] and error is not None and error.reason == "forged"


def test_reflected_frames_are_refused() -> None:
    slave, master = opened(SECRET)
    ack = slave.encode(Ack(3, 1))
    with pytest.raises(WireError, match="order"):
        opened(SECRET)[0].feed(ack)  # an Ack never flows to a slave
    op = master.encode(PUT)
    with pytest.raises(WireError, match="order"):
        opened(SECRET)[1].feed(op)
    assert slave.feed(op) == [PUT]
    assert master.feed(ack) == [Ack(3, 1)]


def test_counters_make_a_replay_fail() -> None:
    slave, master = opened(SECRET)
    ops = [dataclasses.replace(PUT, seq=seq) for seq in range(3)]
    sent = [master.encode(op) for op in ops]
    assert slave.feed(sent[0] + sent[1]) == ops[:2]
    assert (slave.frames_in, master.frames_out) == (3, 4)
    with pytest.raises(WireError) as info:
        slave.feed(sent[1])  # a valid frame, one counter too late
    assert info.value.reason == "forged"
    without_secret, plain_master_ = opened()
    frame = plain_master_.encode(PUT)
    assert without_secret.feed(frame + frame) == [PUT, PUT]  # no secret: no replay protection
