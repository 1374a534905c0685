"""Tests for cluster.protocol: round trips, every drop reason, fuzzing and replay protection."""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.protocol import (
    MAX_EPOCH,
    MAX_PACKET_BYTES,
    VERSION,
    Codec,
    Heartbeat,
    ProtocolError,
    Role,
    wall_clock_ms,
)

PROPERTY = settings(max_examples=150, deadline=None, database=None)
SECRET = b"0123456789abcdef-test-secret"
NOW = 1_700_000_000_000
U64 = st.integers(0, 2**64 - 1)
U16 = st.integers(0, 2**16 - 1)
NAME_CHARS = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
NAMES = st.text(NAME_CHARS, min_size=1, max_size=64).filter(
    lambda s: len(s.encode()) <= 64 and not any(c.isspace() for c in s)
)
ALL_REASONS = {
    "short",
    "magic",
    "version",
    "malformed",
    "foreign",
    "unauthenticated",
    "unexpected-auth",
    "forged",
    "stale",
    "replayed",
}


def heartbeats(cluster: st.SearchStrategy[str] = NAMES) -> st.SearchStrategy[Heartbeat]:
    return st.builds(
        Heartbeat,
        cluster=cluster,
        node_id=NAMES,
        role=st.sampled_from(Role),
        epoch=st.integers(0, MAX_EPOCH),
        priority=U16,
        incarnation=U64,
        seq=U64,
        sent_ms=U64,
        host=st.ip_addresses(v=4).map(str),
        port=U16,
        data_epoch=U64,
        data_seq=U64,
    )


def beat(**changes: object) -> Heartbeat:
    hb = Heartbeat(
        cluster="default",
        node_id="node-1",
        role=Role.MASTER,
        epoch=3,
        priority=100,
        incarnation=10,
        seq=1,
        sent_ms=NOW,
        host="127.0.0.1",
        port=2711,
        data_epoch=3,
        data_seq=42,
    )
    return dataclasses.replace(hb, **changes)  # type: ignore[arg-type]


def dropped_as(codec: Codec, data: bytes, reason: str, now_ms: int = NOW) -> None:
    before = codec.dropped.copy()
    assert codec.decode(data, now_ms) is None
    assert codec.dropped - before == {reason: 1}, dict(codec.dropped - before)


@PROPERTY
@given(hb=heartbeats(), secret=st.none() | st.binary(min_size=1, max_size=64))
def test_round_trip(hb: Heartbeat, secret: bytes | None) -> None:
    sender = Codec(hb.cluster, secret)
    receiver = Codec(hb.cluster, secret)
    data = sender.encode(hb)
    assert len(data) <= MAX_PACKET_BYTES < 512
    assert data[:3] == b"TW" + bytes([VERSION])
    assert receiver.decode(data, now_ms=hb.sent_ms) == hb
    assert receiver.accepted == 1 and not receiver.dropped


def test_largest_packet() -> None:
    codec = Codec("c" * 64, SECRET)
    data = codec.encode(beat(cluster="c" * 64, node_id="\u00e9" * 32))
    assert len(data) == MAX_PACKET_BYTES == 223


def test_decode_uses_the_wall_clock_by_default() -> None:
    codec = Codec("default", SECRET)
    assert codec.decode(codec.encode(beat(sent_ms=wall_clock_ms()))) is not None
    dropped_as(codec, codec.encode(beat(sent_ms=1, seq=2)), "stale", now_ms=wall_clock_ms())


def test_decode_accepts_bytes_like() -> None:
    codec = Codec("default")
    data = codec.encode(beat())
    assert codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == beat()


@pytest.mark.parametrize(
    ("hb", "message"),
    [
        (beat(node_id=""), "node_id ''"),
        (beat(node_id="x" * 65), "node_id 'xxx"),
        (beat(node_id="two words"), "without whitespace"),
        (beat(node_id="bell\a"), "printable"),
        (beat(node_id="\udc80"), "node_id"),
        (beat(priority=65536), "priority=65536: expected an integer from 0 to 65535"),
        (beat(port=-1), "port=-1"),
        (beat(seq=2**64), "seq=18446744073709551616"),
        (beat(epoch=1.0), "epoch=1.0"),
        (beat(host="1.2.3"), "host='1.2.3': expected an IPv4 address"),
        (beat(host="::1"), "host='::1'"),
        (beat(role=7), "role 7"),
        (beat(cluster="other"), "cluster 'other' given to the codec of 'default'"),
    ],
)
def test_encode_refuses_bad_heartbeats(hb: Heartbeat, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Codec("default").encode(hb)
    assert message in str(info.value)


def test_codec_refuses_bad_cluster_names() -> None:
    for name in ("", "a b", "x" * 65):
        with pytest.raises(ProtocolError, match="cluster name"):
            Codec(name)
    with pytest.raises(ProtocolError, match="max_peers"):
        Codec("default", max_peers=0)


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def with_node(node: bytes, cluster: bytes = b"default") -> bytes:
    """A plain packet whose node id is exactly ``node`` (maybe invalid)."""
    prefix = Codec("default").encode(beat())[:61]
    return prefix + bytes([len(cluster)]) + cluster + bytes([len(node)]) + node


def test_each_drop_reason() -> None:
    plain = Codec("default")
    signed = Codec("default", SECRET)
    good = plain.encode(beat())
    assert plain.decode(with_node(b"node-1"), NOW) == beat()

    for data in (b"", b"T", b"TW\x01", good[:61], good[:-1], good[:70]):
        dropped_as(plain, data, "short")
    dropped_as(plain, patch(good, 0, b"XW"), "magic")
    dropped_as(plain, patch(good, 2, b"\x02"), "version")
    dropped_as(plain, patch(good, 2, b"\x00"), "version")
    dropped_as(plain, patch(good, 3, b"\x02"), "malformed")  # an unknown flag
    dropped_as(plain, patch(good, 4, b"\x00"), "malformed")  # role 0
    dropped_as(plain, patch(good, 4, b"\x04"), "malformed")  # role 4
    dropped_as(plain, good + b"\x00", "malformed")  # trailing byte
    dropped_as(plain, with_node(b""), "malformed")
    dropped_as(plain, with_node(b"\xff\xfe"), "malformed")
    dropped_as(plain, with_node(b"a b"), "malformed")
    dropped_as(plain, with_node(b"a\nb"), "malformed")
    dropped_as(plain, with_node(b"x" * 65), "malformed")
    dropped_as(plain, with_node(b"n", cluster=b""), "malformed")
    dropped_as(plain, Codec("other").encode(beat(cluster="other")), "foreign")
    dropped_as(plain, Codec("other", SECRET).encode(beat(cluster="other")), "foreign")
    dropped_as(plain, signed.encode(beat()), "unexpected-auth")
    dropped_as(signed, good, "unauthenticated")
    dropped_as(signed, Codec("default", b"another secret!!").encode(beat()), "forged")
    authentic = signed.encode(beat())
    dropped_as(signed, patch(authentic, len(authentic) - 1, bytes([authentic[-1] ^ 1])), "forged")
    dropped_as(signed, patch(authentic, 20, bytes([authentic[20] ^ 0x80])), "forged")
    dropped_as(signed, authentic, "stale", now_ms=NOW + 30_001)
    dropped_as(signed, authentic, "stale", now_ms=NOW - 30_001)
    assert signed.decode(authentic, NOW + 30_000) == beat()
    dropped_as(signed, authentic, "replayed")
    assert set(plain.dropped) | set(signed.dropped) == ALL_REASONS
    assert plain.accepted == signed.accepted == 1


def test_an_epoch_over_the_largest_is_dropped_and_a_promotion_over_it_fits() -> None:
    # found by fuzzing (issue 14, tests/fuzz): a heartbeat of epoch 2**64 - 1 was taken, the
    # node promoted itself to 2**64, its own heartbeat could not be encoded and the
    # failover loop stopped
    plain = Codec("default")
    for epoch in (MAX_EPOCH + 1, 2**64 - 1):
        dropped_as(plain, plain.encode(beat(epoch=epoch)), "malformed")
    assert plain.decode(plain.encode(beat(epoch=MAX_EPOCH)), NOW) == beat(epoch=MAX_EPOCH)
    assert plain.encode(beat(epoch=MAX_EPOCH + 1))  # the promotion over it goes out


def test_replay_window_setting() -> None:
    codec = Codec("default", SECRET, replay_window_s=0.5)
    data = codec.encode(beat())
    dropped_as(codec, data, "stale", now_ms=NOW + 501)
    assert codec.decode(data, NOW + 500) is not None


@PROPERTY
@given(data=st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: b"TW\x01" + b))
def test_decode_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    for codec in (Codec("default"), Codec("default", SECRET)):
        hb = codec.decode(data, NOW)
        if hb is None:
            assert sum(codec.dropped.values()) == 1 and codec.accepted == 0
            assert set(codec.dropped) <= ALL_REASONS
        else:
            assert isinstance(hb, Heartbeat) and codec.accepted == 1 and not codec.dropped


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        flips = draw(
            st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=4, unique=True)
        )
        mutated = bytearray(data)
        for bit in flips:
            mutated[bit // 8] ^= 1 << (bit % 8)
        return bytes(mutated)
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=40))
    start = draw(st.integers(0, len(data) - 1))
    replacement = draw(st.binary(min_size=1, max_size=8))
    mutated = data[:start] + replacement + data[start + len(replacement) :]
    return mutated if mutated != data else data[:start]


@PROPERTY
@given(hb=heartbeats(st.just("default")), data=st.data())
def test_every_mutation_of_an_authenticated_packet_is_dropped(
    hb: Heartbeat, data: st.DataObject
) -> None:
    codec = Codec("default", SECRET)
    packet = codec.encode(hb)
    for _ in range(5):
        mutated = data.draw(mutations(packet))
        before = sum(codec.dropped.values())
        assert codec.decode(mutated, hb.sent_ms) is None
        assert sum(codec.dropped.values()) == before + 1
    assert set(codec.dropped) <= {"short", "magic", "version", "malformed", "foreign", "forged"}
    assert codec.tracked_peers == 0  # nothing forged touched the replay state
    assert codec.decode(packet, hb.sent_ms) == hb


@PROPERTY
@given(hb=heartbeats(), data=st.data())
def test_mutations_without_a_secret_never_raise(hb: Heartbeat, data: st.DataObject) -> None:
    codec = Codec(hb.cluster)
    mutated = data.draw(mutations(codec.encode(hb)))
    result = codec.decode(mutated, hb.sent_ms)
    assert (result is not None) + sum(codec.dropped.values()) == 1


class Peer:
    """Builds authenticated heartbeats of one node."""

    def __init__(self, node_id: str = "node-1", incarnation: int = 10) -> None:
        self.codec = Codec("default", SECRET)
        self.node_id = node_id
        self.incarnation = incarnation

    def packet(self, seq: int, incarnation: int | None = None) -> bytes:
        inc = self.incarnation if incarnation is None else incarnation
        return self.codec.encode(beat(node_id=self.node_id, seq=seq, incarnation=inc))


def test_replayed_packet_is_refused() -> None:
    receiver = Codec("default", SECRET)
    data = Peer().packet(1)
    assert receiver.decode(data, NOW) is not None
    dropped_as(receiver, data, "replayed")


def test_reordering_within_the_window_is_accepted_once_each() -> None:
    receiver, peer = Codec("default", SECRET), Peer()
    seqs = list(range(100, 164))
    random.Random(7).shuffle(seqs)
    for seq in seqs:
        assert receiver.decode(peer.packet(seq), NOW) is not None
    for seq in seqs:
        dropped_as(receiver, peer.packet(seq), "replayed")
    assert receiver.accepted == 64


def test_packets_older_than_the_window_are_refused() -> None:
    receiver, peer = Codec("default", SECRET), Peer()
    assert receiver.decode(peer.packet(100), NOW) is not None
    dropped_as(receiver, peer.packet(36), "replayed")  # 64 behind
    assert receiver.decode(peer.packet(37), NOW) is not None  # 63 behind
    assert receiver.decode(peer.packet(10_000), NOW) is not None  # a long jump forward
    assert receiver.decode(peer.packet(9_999), NOW) is not None
    dropped_as(receiver, peer.packet(100), "replayed")
    dropped_as(receiver, peer.packet(10_000), "replayed")


def test_incarnations() -> None:
    receiver, peer = Codec("default", SECRET), Peer()
    assert receiver.decode(peer.packet(500), NOW) is not None
    assert receiver.decode(peer.packet(1, incarnation=11), NOW) is not None  # restarted
    dropped_as(receiver, peer.packet(501), "replayed")  # the old life
    assert receiver.decode(peer.packet(2, incarnation=11), NOW) is not None


def test_forged_packets_do_not_touch_replay_state() -> None:
    receiver = Codec("default", SECRET)
    forger = Codec("default", b"not the secret at all")
    dropped_as(receiver, forger.encode(beat(seq=5, incarnation=2**64 - 1)), "forged")
    assert receiver.tracked_peers == 0
    assert receiver.decode(Peer().packet(5), NOW) is not None


def test_replay_state_is_bounded_and_forgets_the_least_recently_heard() -> None:
    receiver = Codec("default", SECRET, max_peers=4)
    peers = {name: Peer(name) for name in "abcde"}
    for name in "abcd":
        assert receiver.decode(peers[name].packet(1), NOW) is not None
    assert receiver.decode(peers["a"].packet(2), NOW) is not None  # a is now the most recent
    assert receiver.decode(peers["e"].packet(1), NOW) is not None  # b is forgotten
    assert receiver.tracked_peers == 4
    dropped_as(receiver, peers["a"].packet(1), "replayed")
    assert receiver.decode(peers["b"].packet(1), NOW) is not None  # the stale check still bounds it
    for i in range(100):
        receiver.decode(Peer(f"n{i}").packet(1), NOW)
    assert receiver.tracked_peers == 4


def test_without_a_secret_duplicates_pass() -> None:
    codec = Codec("default")
    data = codec.encode(beat())
    assert codec.decode(data, NOW) == codec.decode(data, NOW) == beat()
    assert codec.decode(data, 0) == beat()  # and the clock is not checked
    assert codec.accepted == 3 and codec.tracked_peers == 0


def test_layout_offsets() -> None:
    """The documented layout, field by field, so other implementations can rely on it."""
    hb = beat(priority=0x0102, port=0x0304, epoch=5, incarnation=6, seq=7, sent_ms=8)
    data = Codec("default", SECRET).encode(hb)
    assert data[:4] == b"TW\x01\x01"
    assert struct.unpack_from("!BHH4s6Q", data, 4) == (
        int(Role.MASTER),
        0x0102,
        0x0304,
        bytes([127, 0, 0, 1]),
        5,
        6,
        7,
        8,
        3,
        42,
    )
    assert data[61] == 7 and data[62:69] == b"default"
    assert data[69] == 6 and data[70:76] == b"node-1"
    assert len(data) == 76 + 32
