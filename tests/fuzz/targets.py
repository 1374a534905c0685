"""What the fuzzers check, one function per entry point that takes input from outside.

Each target takes any bytes and returns only when the entry point either took them or
refused them the documented way: its own error type with a message that says what was
wrong, or, on the network paths, a drop counted under a documented reason. Anything else
(another exception type, a refusal without a message, a drop not counted, an assertion
here) propagates: hypothesis (``test_outside_inputs.py``) shrinks it to an example,
atheris (``atheris_targets.py``) reports it as a crash. Nothing here opens a socket except
the follower's target, which talks to a fake master on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.pointcuts import AgentConfig, PointcutError, load
from cache.replica import Replica
from cache.replication import Follower
from cache.wire import REASONS, Hello, Session, WireError, decode_change
from cluster.config import Settings, SettingsError, load_settings
from cluster.election import Election, Send, Timing
from cluster.protocol import Codec, Heartbeat
from tests.cache.test_replication import FakeMaster, wait_for
from tests.cluster.test_protocol import ALL_REASONS
from tests.fuzz import seeds

#: Follower.refused's reasons for a stream it ends: the wire's, the follower's own checks,
#: a gap or bad value (ReplicaError) and a Refuse from the master; not "store", which is
#: for stores that cannot write (a full disk), never for anything the master sent
FOLLOWER_REFUSALS = REASONS | {"stale-epoch", "epoch-mismatch", "gap", "by-master"}
_LINE_BREAKS = re.compile(rb"\r\n|\r|\n")


class Scratch:
    """A folder for the files a target writes (the parsers read paths, not bytes)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def write(self, data: bytes, name: str) -> str:
        self.count += 1
        path = self.folder / f"{self.count}-{name}"
        path.write_bytes(data)
        return str(path)


@contextlib.contextmanager
def scratch() -> Iterator[Scratch]:
    with tempfile.TemporaryDirectory(prefix="twinweave-fuzz-") as folder:
        yield Scratch(Path(folder))


def _lines(data: bytes) -> int:
    return len(_LINE_BREAKS.split(data))


def pointcut_file(data: bytes, files: Scratch) -> None:
    """``agent.pointcuts.load``: a config, or a PointcutError that says file, line and what."""
    path = files.write(data, "aop.xml")
    try:
        config = load(path)
    except PointcutError as error:
        assert error.detail.strip(), repr(error)
        assert error.filename == path and str(error).startswith(path), str(error)
        assert error.line is None or 1 <= error.line <= _lines(data), str(error)
        return
    assert isinstance(config, AgentConfig) and config.aspects


_SECRET_LINE = re.compile(rb"[ \t\f]*failover\.secret[ \t\f]*[=: \t\f][ \t\f]*(.{4,})")


def _secret_on(data: bytes, where: str | None, path: str) -> str | None:
    """The secret's value, when the line an error points at sets ``failover.secret``."""
    line = (where or "").rpartition(":")[2]
    if not where or not where.startswith(f"{path}:") or not line.isdigit():
        return None
    found = _SECRET_LINE.match(_LINE_BREAKS.split(data)[int(line) - 1])
    return found[1].rstrip(b" \t\f\\").decode("utf-8", "replace") if found else None


def properties_file(data: bytes, files: Scratch) -> None:
    """``cluster.config.load_settings``: settings, or a SettingsError naming where and what;
    a secret's value is never quoted."""
    path = files.write(data, "bootstrap.properties")
    try:
        settings = load_settings(path, environ={})
    except SettingsError as error:
        assert error.detail.strip(), repr(error)
        assert error.where is None or error.where.startswith(path), str(error)
        secret = _secret_on(data, error.where, path)
        assert not secret or secret not in str(error), str(error)
        return
    assert isinstance(settings, Settings)


def heartbeat(data: bytes, codec: Codec) -> Heartbeat | None:
    """``Codec.decode``: a heartbeat whose encoding is exactly ``data``, or one drop counted."""
    before, dropped = codec.accepted, sum(codec.dropped.values())
    hb = codec.decode(data, now_ms=seeds.NOW_MS)
    assert set(codec.dropped) <= ALL_REASONS, codec.dropped
    if hb is None:
        assert codec.accepted == before and sum(codec.dropped.values()) == dropped + 1
        return None
    assert codec.accepted == before + 1 and sum(codec.dropped.values()) == dropped
    assert codec.encode(hb) == data  # encode is canonical and keeps no state
    return hb


def heartbeat_to_node(data: bytes) -> None:
    """A node without a secret: whatever heartbeat decodes goes to its election, which then
    runs past every deadline, and each heartbeat it sends is encodable (the failover loop
    encodes them; an error there would stop the node)."""
    codec = Codec(seeds.CLUSTER)
    hb = heartbeat(data, codec)
    if hb is None:
        return
    election = Election("me", 100, Timing(1.0, 3))
    actions = election.start(0.0)
    actions += election.receive(hb, 0.5)
    for now in (3.5, 4.0, 7.5, 8.0, 20.0):
        actions += election.tick(now)
    for action in actions:
        if isinstance(action, Send):
            codec.encode(
                Heartbeat(
                    cluster=seeds.CLUSTER,
                    node_id="me",
                    role=action.role,
                    epoch=action.epoch,
                    priority=100,
                    incarnation=1,
                    seq=1,
                    sent_ms=seeds.NOW_MS,
                    host="127.0.0.1",
                    port=0,
                )
            )


def refusal(call: Callable[[], object]) -> str | None:
    """Run ``call``; the reason of the WireError it raised (with a message), or None."""
    try:
        call()
    except WireError as error:
        assert error.reason in REASONS, error.reason
        reason, _, message = str(error).partition(": ")
        assert reason == error.reason and message.strip(), str(error)
        return error.reason
    return None


def slave_session(data: bytes, secret: bytes | None) -> None:
    """A slave's Session after its Hello, fed what a master would send: frames or a WireError
    with a reason and a message; fed in two pieces, the same outcome; dead after an error."""
    outcomes = []
    for cut in (len(data), len(data) // 2):
        slave, _ = seeds.sessions(secret)
        slave.encode(seeds.hello())
        frames: list = []

        def feed(slave: Session = slave, frames: list = frames, cut: int = cut) -> None:
            frames.extend(slave.feed(data[:cut]))
            frames.extend(slave.feed(data[cut:]))

        reason = refusal(feed)
        if reason is not None:
            assert refusal(lambda slave=slave: slave.feed(b"")) == "closed"
        outcomes.append(reason or frames)
    assert outcomes[0] == outcomes[1], outcomes


def master_session(data: bytes, secret: bytes | None) -> list:
    """A master's Session fed what a slave would send, a byte at a time, answering its
    Hello with a Welcome as the hub does: the frames, or a WireError with a reason."""
    _, master = seeds.sessions(secret)
    frames: list = []

    def feed() -> None:
        for at in range(len(data)):
            for frame in master.feed(data[at : at + 1]):
                frames.append(frame)
                if isinstance(frame, Hello):
                    master.encode(seeds.welcome())

    refusal(feed)
    return frames


def change_record(data: bytes) -> None:
    """``decode_change``: what a slave's journal holds, read back at start."""
    refusal(lambda: decode_change(data))


def follower(data: bytes, folder: Path) -> None:
    """A real Follower taking ``data`` from a fake master after its Welcome: it applies it
    or ends the stream with a counted refusal, and its next session starts cleanly (a
    change it took is never one it cannot apply, which would leave it stuck)."""
    master = FakeMaster(seeds.MASTER_EPOCH, [data])
    replica = Replica(folder)
    node = Follower(
        replica, seeds.CLUSTER, "s", None, lambda: seeds.MASTER_EPOCH, lambda p, s: None, 0.01
    )
    try:
        node.follow("127.0.0.1", master.port, seeds.MASTER_EPOCH)
        # the follower connects again only once its first session is over
        assert wait_for(lambda: master.connections >= 2), "the first session never ended"
        first = dict(node.refused)
        assert set(first) <= FOLLOWER_REFUSALS, first
        assert wait_for(lambda: master.connections >= 3), "the second session never ended"
        assert dict(node.refused) == first, (first, node.refused)  # a Welcome alone: fine
    finally:
        node.stop()
        master.close()
        replica.close()
