"""Valid inputs from outside, one copy for both fuzzers (hypothesis mutates them, atheris
starts its corpus from them): pointcut files, ``bootstrap.properties`` texts, heartbeats
made by the real encoder, and replication streams made by real :class:`cache.wire.Session`
objects with fixed nonces, so that every seed is the same bytes on every run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cache.store import encode_value
from cache.wire import (
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
    change_record,
)
from cluster.protocol import Codec, Heartbeat, Role
from tests.agent.test_pointcuts import DESIGN_EXAMPLE

CLUSTER = "fuzz"
SECRET = b"fuzzing secret, not the real one"
OTHER_SECRET = b"a guess at the secret, wrong one"
#: the receiver's clock (ms since the Unix epoch) when it decodes a seed heartbeat
NOW_MS = 1_700_000_000_000
SLAVE_NONCE = bytes(range(16))
MASTER_NONCE = bytes(range(16, 32))
#: the epoch of the master that the replication seeds come from
MASTER_EPOCH = 1
#: the secret's value in SETTINGS; no error message may quote it
SECRET_TEXT = "pr0perties-secret-value-xyzzy"

POINTCUT_FILES: tuple[bytes, ...] = (
    DESIGN_EXAMPLE.encode(),
    b"""<?xml version="1.0" encoding="utf-8"?>
<!-- every operator, nesting, &lt;locals> and a parameter list -->
<agent>
  <aspects>
    <aspect name="inner"
            pointcut="execution(* app.outer.&lt;locals>.inner(self, *, ..))
                      || !(within(app.tests) &amp;&amp; within(app..*))"/>
    <aspect name="any" type="custom" pointcut="((within(..on_message)))"/>
  </aspects>
</agent>
""",
    b'\xef\xbb\xbf<agent><aspects>\r\n<aspect name="a" pointcut="within(x)"/>'
    b"</aspects></agent>\r\n",
)

PROPERTIES_FILES: tuple[bytes, ...] = (
    b"# the defaults, said out loud\n"
    b"failover.group=230.0.0.1\n"
    b"failover.port=2710\n"
    b"failover.delay=1000\n"
    b"failover.retries=5\n"
    b"failover.interface=127.0.0.1\n"
    b"failover.ttl=1\n"
    b"failover.cluster=default\n"
    b"failover.priority=100\n"
    b"cache.replication=sync\n",
    (
        "! Java's forms: ':', a space, escapes and a continued line\n"
        "failover.cluster : shop\\u002Dorders\n"
        "failover.secret " + SECRET_TEXT + "\n"
        "cache.directory = /var/lib/twin\\\n"
        "    weave\n"
        "my.adapter.key=ignored, not ours\n"
        "failover.node-id=n\\u00e9ud-1\n"
    ).encode(),
    b"# Interlok's keys\r\n"
    b"failover.multicast.group=239.1.2.3\r\n"
    b"failover.multicast.port=4446\r\n"
    b"failover.ping.interval.seconds=0.5\r\n"
    b"failover.instance.timeout.seconds=3\r\n"
    b"failover.slave.position=2\r\n"
    b"failover.socket.mode=multicast\r\n",
    b"failover.backend=etcd\n"
    b"failover.etcd.endpoints=http://127.0.0.1:2379,http://127.0.0.1:2380\n"
    b"failover.etcd.prefix=/twinweave\n"
    b"cache.replication=async\n",
)


def _beat(node_id: str, role: Role, epoch: int, seq: int) -> Heartbeat:
    return Heartbeat(
        cluster=CLUSTER,
        node_id=node_id,
        role=role,
        epoch=epoch,
        priority=100,
        incarnation=7,
        seq=seq,
        sent_ms=NOW_MS - seq,
        host="127.0.0.1",
        port=2711,
        data_epoch=epoch,
        data_seq=40 + seq,
    )


HEARTBEATS_SENT: tuple[Heartbeat, ...] = (
    _beat("node-1", Role.MASTER, 3, 1),
    _beat("node-2", Role.SLAVE, 3, 2),
    _beat("n\u00e9ud-3", Role.LEAVING, 2, 3),
)


def heartbeat_packets(secret: bytes | None) -> tuple[bytes, ...]:
    """HEARTBEATS_SENT as the real encoder sends them, signed when ``secret`` is given."""
    codec = Codec(CLUSTER, secret)
    return tuple(codec.encode(hb) for hb in HEARTBEATS_SENT)


def _value(value: object) -> bytes:
    return encode_value(value)


#: what a master sends after its Welcome, from (0, 0): changes, a batch, a snapshot
DOWNSTREAM: tuple[Frame, ...] = (
    Op(1, 1, Kind.PUT, "orders", "m-1", _value({"state": "new", "n": 1}), None),
    Batch(
        (
            Op(1, 2, Kind.PUT, "orders", "m-2", _value([1, 2.5, None, True]), 2e9),
            Op(1, 3, Kind.DELETE, "orders", "m-1", b"", None),
            Op(1, 4, Kind.PUT, "blobs", "b", _value(b"\x00\xffraw"), None),
        )
    ),
    SnapshotBegin(1, 4),
    Item("orders", "m-2", _value("snapshotted"), None),
    Item("inflight", "m-9", _value({"started_ns": 12}), 2e9),
    SnapshotEnd(1, 4),
    Op(1, 5, Kind.CLEAR, "blobs", "", b"", None),
    Op(1, 6, Kind.PUT, "orders", "after", _value("\u00e9t\u00e9"), None),
    Refuse(RefuseCode.RESIGNING, "resigning: the master stops"),
)

UPSTREAM: tuple[Frame, ...] = (
    Ack(1, 1),
    Ack(1, 6),
    Refuse(RefuseCode.STALE_EPOCH, "stale epoch 1 < 2"),
)


def sessions(secret: bytes | None) -> tuple[Session, Session]:
    """A (slave, master) pair with the seeds' nonces, before anything is sent."""
    return (
        Session(secret, initiator=True, nonce=SLAVE_NONCE),
        Session(secret, initiator=False, nonce=MASTER_NONCE),
    )


def hello() -> Hello:
    return Hello(CLUSTER, "node-2", SLAVE_NONCE, MASTER_EPOCH, 0, 0)


def welcome() -> Welcome:
    return Welcome("node-1", MASTER_NONCE, MASTER_EPOCH, False)


def conversation(
    secret: bytes | None, downstream: tuple[Frame, ...] = DOWNSTREAM
) -> tuple[bytes, bytes, bytes]:
    """(the slave's bytes, the master's Welcome, the master's ``downstream`` after it)."""
    slave, master = sessions(secret)
    up = [slave.encode(hello())]
    master.feed(up[0])
    greeting = master.encode(welcome())
    slave.feed(greeting)
    stream = b"".join(master.encode(frame) for frame in downstream)
    up.extend(slave.encode(frame) for frame in UPSTREAM)
    return b"".join(up), greeting, stream


def _streams() -> dict[str, tuple[bytes, ...]]:
    plain_up, plain_welcome, plain_stream = conversation(None)
    signed_up, signed_welcome, signed_stream = conversation(SECRET)
    return {
        # a slave session (it sent the seeds' Hello) fed what the master sends
        "slave-session": (plain_welcome + plain_stream, signed_welcome + signed_stream),
        # a master session fed what the slave sends, its Hello first
        "master-session": (plain_up, signed_up),
        # the change records a slave journals (cache.journal decodes them at start)
        "change-record": tuple(
            change_record(frame) for frame in DOWNSTREAM if isinstance(frame, (Op, Batch))
        ),
        # what tests.cache.test_replication.FakeMaster sends after its own Welcome
        "follower": (plain_stream,),
    }


SEEDS: dict[str, tuple[bytes, ...]] = {
    "pointcuts": POINTCUT_FILES,
    "properties": PROPERTIES_FILES,
    "heartbeat-signed": heartbeat_packets(SECRET),
    "heartbeat-plain": heartbeat_packets(None),
    **_streams(),
}


#: atheris_targets.py's targets and the seeds each starts from
CORPORA: dict[str, tuple[str, ...]] = {
    "pointcuts": ("pointcuts",),
    "properties": ("properties",),
    "heartbeat": ("heartbeat-signed", "heartbeat-plain"),
    "heartbeat-node": ("heartbeat-plain",),
    "slave-session": ("slave-session",),
    "master-session": ("master-session",),
    "change-record": ("change-record",),
    "follower": ("follower",),
}


def write_corpus(target: str, folder: Path) -> None:
    """The seeds of atheris target ``target`` as files in ``folder`` (libFuzzer's layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CORPORA[target]:
        for seed in SEEDS[name]:
            (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
