"""Issue 14, item 4: what comes from outside never crashes a node or the agent.

Pointcut files, ``bootstrap.properties``, heartbeats and replication streams, fed random
bytes and mutations of the valid seeds (``seeds.py``: bit flips, truncations, splices,
insertions, deletions, overwrites with boundary bytes, repeats), go to the real parsers
and decoders; ``targets.py`` says what each must do with them. Derandomized, so a run in
CI tries the same examples as a run here; the whole folder takes about half a minute.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.store import encode_value
from cache.wire import Hello, Item, Kind, Op, Session, SnapshotBegin, SnapshotEnd, Welcome
from cluster.protocol import Codec, Heartbeat, Role
from tests.fuzz import seeds, targets


def fuzz(examples: int) -> settings:
    """Repeatable (derandomized, no example database) and never failing on a slow machine."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


_BOUNDARY_BYTES = st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF])


@st.composite
def mutated(draw: st.DrawFn, pool: tuple[bytes, ...]) -> bytes:
    """One seed of ``pool`` changed one to four times."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(
            st.sampled_from(
                ["flip", "truncate", "insert", "delete", "splice", "boundary", "repeat"]
            )
        )
        at = draw(st.integers(0, len(data)))
        if how == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif how == "truncate":
            del data[at:]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        elif how == "splice":  # this seed's head, another seed's tail
            other = draw(st.sampled_from(pool))
            data[at:] = other[draw(st.integers(0, len(other))) :]
        elif how == "boundary":
            data[at : at + 1] = bytes([draw(_BOUNDARY_BYTES)])
        elif how == "repeat":
            end = draw(st.integers(at, min(len(data), at + 64)))
            data[end:end] = data[at:end] * draw(st.integers(1, 3))
    return bytes(data)


def inputs(*names: str) -> st.SearchStrategy[bytes]:
    """Random bytes, or mutations of the seeds of the named targets."""
    pool = tuple(seed for name in names for seed in seeds.SEEDS[name])
    return st.binary(max_size=300) | mutated(pool)


# -- the seeds are valid: the mutations start from inputs each entry point takes ----------------


def test_the_seeds_are_taken_whole() -> None:
    with targets.scratch() as files:
        for data in seeds.POINTCUT_FILES:
            targets.pointcut_file(data, files)
        for data in seeds.PROPERTIES_FILES:
            targets.properties_file(data, files)
    for name, secret in (("heartbeat-plain", None), ("heartbeat-signed", seeds.SECRET)):
        codec = Codec(seeds.CLUSTER, secret)
        assert [targets.heartbeat(p, codec) for p in seeds.SEEDS[name]] == list(
            seeds.HEARTBEATS_SENT
        )
    for secret, data in zip((None, seeds.SECRET), seeds.SEEDS["slave-session"]):
        slave, _ = seeds.sessions(secret)
        slave.encode(seeds.hello())
        frames = slave.feed(data)
        assert isinstance(frames[0], Welcome) and tuple(frames[1:]) == seeds.DOWNSTREAM
    for secret, data in zip((None, seeds.SECRET), seeds.SEEDS["master-session"]):
        assert targets.master_session(data, secret) == [seeds.hello(), *seeds.UPSTREAM]


def test_the_follower_applies_the_seed_stream(tmp_path: Path) -> None:
    from cache.replica import Replica
    from cache.replication import Follower
    from tests.cache.test_replication import FakeMaster, contents, wait_for

    (stream,) = seeds.SEEDS["follower"]
    master = FakeMaster(seeds.MASTER_EPOCH, [stream])
    replica = Replica(tmp_path / "s")
    node = Follower(replica, seeds.CLUSTER, "s", None, lambda: 1, lambda p, s: None, 0.01)
    try:
        node.follow("127.0.0.1", master.port, seeds.MASTER_EPOCH)
        assert wait_for(lambda: node.refused["by-master"] == 1)  # the seed's last frame
        assert dict(node.refused) == {"by-master": 1}
        assert replica.position == (1, 6)
        assert contents(replica, "orders") == {"m-2": "snapshotted", "after": "\u00e9t\u00e9"}
        assert contents(replica, "blobs") == {}
    finally:
        node.stop()
        master.close()
        replica.close()


# -- the agent's and the node's files -------------------------------------------------------


@fuzz(300)
@given(inputs("pointcuts"))
def test_pointcut_files_load_or_say_where_they_are_wrong(data: bytes) -> None:
    with targets.scratch() as files:
        targets.pointcut_file(data, files)


@fuzz(300)
@given(inputs("properties"))
def test_properties_files_load_or_say_where_they_are_wrong(data: bytes) -> None:
    with targets.scratch() as files:
        targets.properties_file(data, files)


# -- heartbeats ----------------------------------------------------------------------------------


@fuzz(400)
@given(inputs("heartbeat-signed", "heartbeat-plain"))
def test_heartbeats_decode_exactly_or_are_counted_and_dropped(data: bytes) -> None:
    for secret in (None, seeds.SECRET):
        targets.heartbeat(data, Codec(seeds.CLUSTER, secret))


@fuzz(200)
@given(inputs("heartbeat-plain"))
def test_a_node_without_a_secret_survives_any_heartbeat(data: bytes) -> None:
    targets.heartbeat_to_node(data)


U64 = st.integers(0, 2**64 - 1)


@fuzz(200)
@given(
    st.builds(
        dataclasses.replace,
        st.sampled_from(seeds.HEARTBEATS_SENT),
        role=st.sampled_from(Role),
        epoch=U64,
        priority=st.integers(0, 2**16 - 1),
        incarnation=U64,
        seq=U64,
        data_epoch=U64,
        data_seq=U64,
    )
)
def test_a_node_without_a_secret_survives_any_field_values(hb: Heartbeat) -> None:
    targets.heartbeat_to_node(Codec(seeds.CLUSTER).encode(hb))


@fuzz(80)
@given(
    st.lists(
        st.sampled_from(
            seeds.heartbeat_packets(seeds.SECRET) + seeds.heartbeat_packets(seeds.OTHER_SECRET)
        ),
        max_size=12,
    )
)
def test_forged_and_replayed_heartbeats_are_counted_and_dropped(packets: list[bytes]) -> None:
    codec = Codec(seeds.CLUSTER, seeds.SECRET)
    genuine = set(seeds.heartbeat_packets(seeds.SECRET))
    for packet in packets:
        targets.heartbeat(packet, codec)
    forged = sum(packet not in genuine for packet in packets)
    first_times = len(set(packets) & genuine)
    assert codec.accepted == first_times
    assert codec.dropped == {
        reason: count
        for reason, count in (("forged", forged), ("replayed", len(packets) - forged - first_times))
        if count
    }


# -- replication ---------------------------------------------------------------------------------


@fuzz(300)
@given(inputs("slave-session"))
def test_a_slave_session_takes_frames_or_refuses_with_a_reason(data: bytes) -> None:
    for secret in (None, seeds.SECRET):
        targets.slave_session(data, secret)


@fuzz(300)
@given(inputs("master-session"))
def test_a_master_session_takes_frames_or_refuses_with_a_reason(data: bytes) -> None:
    for secret in (None, seeds.SECRET):
        targets.master_session(data, secret)


@fuzz(200)
@given(inputs("change-record"))
def test_a_journal_record_is_changes_or_refused_with_a_reason(data: bytes) -> None:
    targets.change_record(data)


def test_a_hello_or_welcome_replayed_into_another_session_is_forged() -> None:
    """Fixed nonces make the seeds repeatable; a session with a fresh nonce must refuse
    them, since the Welcome's MAC binds it to the Hello it answers."""
    _, welcome, _ = seeds.conversation(seeds.SECRET)
    slave = Session(seeds.SECRET, initiator=True)
    slave.encode(Hello(seeds.CLUSTER, "node-2", slave.nonce, 1, 0, 0))
    assert targets.refusal(lambda: slave.feed(welcome)) == "forged"


@fuzz(80)
@given(inputs("follower"))
def test_a_follower_applies_a_stream_or_ends_it_counted(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="twinweave-fuzz-") as folder:
        targets.follower(data, Path(folder) / "replica")


# names the stores take, and any the wire carries; values that decode, and any bytes
_CACHES = st.sampled_from(["orders", "x.y-z"]) | st.text(min_size=1, max_size=6).filter(
    str.isprintable
)
_VALUES = st.builds(encode_value, st.integers() | st.text(max_size=4)) | st.binary(max_size=6)


@fuzz(60)
@given(
    st.lists(st.builds(Item, _CACHES, st.text(max_size=4), _VALUES, st.none()), max_size=3),
    st.lists(st.tuples(_CACHES, st.text(max_size=4), _VALUES), min_size=1, max_size=3),
)
def test_a_follower_takes_any_well_formed_frames_or_refuses_them_counted(
    items: list[Item], puts: list[tuple[str, str, bytes]]
) -> None:
    """Frames the wire takes, with field values it does not check (cache names, values)."""
    ops = tuple(Op(1, 2 + n, Kind.PUT, *put, None) for n, put in enumerate(puts))
    frames = (SnapshotBegin(1, 1), *items, SnapshotEnd(1, 1), *ops)
    with tempfile.TemporaryDirectory(prefix="twinweave-fuzz-") as folder:
        targets.follower(seeds.conversation(None, frames)[2], Path(folder) / "replica")
