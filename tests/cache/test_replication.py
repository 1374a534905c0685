"""Replication between a master's hub and followers in this process, over loopback TCP."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time

import pytest

from cache import Cache, wire
from cache.journal import scan
from cache.replica import Replica, ReplicaError
from cache.replication import Follower, Hub, NotMasterError
from cache.store import POSITION_KEY, decode_value, encode_value
from cache.wire import Hello, Item, Kind, Op, Session, SnapshotBegin, SnapshotEnd, Welcome

SECRET = b"replication secret for tests"


def wait_for(predicate, timeout: float = 10.0) -> bool:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class Rig:
    """A master hub and followers on loopback; everything closed at the end."""

    def __init__(self, tmp_path, secret=SECRET, sync=True, ack_timeout=2.0) -> None:
        self.tmp = tmp_path
        self.secret = secret
        self.master_ok = True
        self.replica = Replica(tmp_path / "master")
        self.hub = Hub(
            self.replica, "c", "m", "127.0.0.1", secret, ack_timeout, lambda: self.master_ok, sync
        )
        self.hub.serve(1)
        self.followers: list[tuple[Follower, Replica]] = []

    def follower(self, name: str, known_epoch: int = 1, secret=SECRET) -> tuple[Follower, Replica]:
        replica = Replica(self.tmp / name)
        follower = Follower(replica, "c", name, secret, lambda: known_epoch, lambda p, s: None)
        follower.follow("127.0.0.1", self.hub.port, 1)
        self.followers.append((follower, replica))
        return follower, replica

    def cache(self, name: str = "x") -> Cache:
        return Cache(name, self.replica.store(name), self.hub)

    def close(self) -> None:
        for follower, replica in self.followers:
            follower.stop()
            replica.close()
        self.hub.close()
        self.replica.close()


@pytest.fixture
def rig(tmp_path):
    made = []

    def make(**kw) -> Rig:
        made.append(Rig(tmp_path, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def contents(replica: Replica, name: str = "x") -> dict:
    """The entries of one store, once what the replica took is applied (a slave applies
    right after it acknowledges)."""
    wait_for(lambda: replica.applied == replica.position)
    store = replica.store(name)
    return {key: decode_value(value) for key, value, _ in store.items_encoded()}


def test_a_synchronous_write_is_on_every_live_slave_when_it_returns(rig):
    r = rig()
    followers = [r.follower("s1"), r.follower("s2")]
    assert wait_for(lambda: sorted(r.hub.live_slaves()) == ["s1", "s2"])
    c = r.cache()
    for i in range(50):
        c.set(f"k{i}", {"i": i})
        for _, replica in followers:  # no waiting: it is on the slave's disk already
            assert replica.position == (1, i + 1)
            assert on_disk(replica, f"k{i}") == encode_value({"i": i})
    c.delete("k0")
    c.set("gone", 1, expire=60)
    for _, replica in followers:
        assert on_disk(replica, "k0") is None
        assert replica.position == r.replica.position == (1, 52)
    c.clear()
    for _, replica in followers:  # applied to the stores right after the acknowledgement
        assert wait_for(lambda replica=replica: contents(replica) == {})
        assert replica.applied == (1, 53)


def on_disk(replica: Replica, key: str, name: str = "x") -> bytes | None:
    """What a slave holds for ``key`` on disk: its journal's last change to it, else its store
    (what it would have after dying now and opening again)."""
    ops, _, problem = scan((replica.root / "journal").read_bytes())
    assert problem is None
    journaled = [op for op in ops if op.cache == name and (op.key == key or op.kind is Kind.CLEAR)]
    if not journaled:  # the journal is emptied only once what it holds is applied
        return replica.store(name).get_encoded(key)
    return journaled[-1].value if journaled[-1].kind is Kind.PUT else None


def test_a_slave_joining_mid_stream_ends_identical(rig):
    r = rig()
    r.follower("early")
    assert wait_for(lambda: r.hub.live_slaves() == ["early"])
    c = r.cache()
    stop = threading.Event()

    def writer(offset: int) -> None:
        i = 0
        while not stop.is_set():
            c.set(f"w{offset}-{i % 300}", [offset, i])
            if i % 7 == 0:
                c.delete(f"w{offset}-{(i * 13) % 300}")
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    r.follower("late")  # joins while three threads write
    assert wait_for(lambda: "late" in r.hub.live_slaves())
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    c.set("last", True)
    master = contents(r.replica)
    assert len(master) > 100
    for _, replica in r.followers:
        assert replica.position == r.replica.position
        assert contents(replica) == master
    assert r.hub.snapshots >= 1


def test_a_slave_that_missed_changes_catches_up_from_the_log(rig):
    r = rig()
    follower, replica = r.follower("s1")
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
    c = r.cache()
    c.set("a", 1)
    follower.stop()
    assert wait_for(lambda: r.hub.live_slaves() == [])
    for i in range(20):
        c.set(f"b{i}", i)
    follower.follow("127.0.0.1", r.hub.port, 1)
    assert wait_for(lambda: replica.position == r.replica.position)
    assert contents(replica) == contents(r.replica)
    assert r.hub.snapshots == 0  # only the 20 missing changes travelled


def test_only_the_master_writes(rig):
    r = rig()
    c = r.cache()
    r.master_ok = False
    with pytest.raises(NotMasterError, match="only the master writes"):
        c.set("a", 1)
    r.master_ok = True
    r.hub.resign("test")
    with pytest.raises(NotMasterError):
        c.set("a", 1)


def test_a_master_refuses_a_slave_that_knows_a_newer_epoch(rig):
    r = rig()
    follower, replica = r.follower("s1", known_epoch=2)  # it has heard of epoch 2
    assert wait_for(lambda: follower.refused["by-master"] >= 1)
    r.cache().set("a", 1)
    assert replica.position == (0, 0) and contents(replica) == {}
    assert r.hub.live_slaves() == []


def test_a_slave_refuses_changes_from_a_stale_epoch(rig):
    r = rig()
    known = [1]
    replica = Replica(r.tmp / "s1")
    follower = Follower(replica, "c", "s1", SECRET, lambda: known[0], lambda p, s: None)
    r.followers.append((follower, replica))
    follower.follow("127.0.0.1", r.hub.port, 1)
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
    c = r.cache()
    c.set("a", 1)
    known[0] = 2  # a newer master was heard of: epoch 1 is stale now
    c.set("b", 2)
    assert wait_for(lambda: follower.refused["stale-epoch"] >= 1)
    assert contents(replica) == {"a": 1}


@contextlib.contextmanager
def mute_slave(r: Rig):
    """A slave that says hello, is live at once (both at (0, 0)) and never acknowledges."""
    sock = socket.create_connection(("127.0.0.1", r.hub.port))
    try:
        session = Session(SECRET, initiator=True)
        sock.sendall(session.encode(Hello("c", "mute", session.nonce, 1, 0, 0)))
        sock.settimeout(5)
        session.feed(sock.recv(65536))  # the welcome
        assert wait_for(lambda: r.hub.live_slaves() == ["mute"])
        yield sock
    finally:
        sock.close()


def test_a_silent_slave_is_dropped_and_the_write_returns(rig):
    r = rig(ack_timeout=0.3)
    with mute_slave(r):
        started = time.monotonic()
        r.cache().set("a", 1)  # never acknowledged by "mute"
        assert 0.25 <= time.monotonic() - started < 3
        assert r.hub.dropped_slow == 1 and r.hub.live_slaves() == []


@pytest.mark.parametrize("attack", ["garbage", "wrong-secret", "no-secret"])
def test_garbled_and_forged_connections_are_refused(rig, attack):
    r = rig()
    r.follower("honest")
    assert wait_for(lambda: r.hub.live_slaves() == ["honest"])
    sock = socket.create_connection(("127.0.0.1", r.hub.port))
    try:
        if attack == "garbage":
            sock.sendall(
                random.Random(3).randbytes(5000)
                if hasattr(random, "randbytes")
                else os.urandom(5000)
            )
        else:
            session = Session(b"not the secret at all" if attack == "wrong-secret" else None, True)
            sock.sendall(session.encode(Hello("c", "intruder", session.nonce, 1, 0, 0)))
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    finally:
        sock.close()
    assert wait_for(lambda: sum(r.hub.refused.values()) >= 1)
    assert r.hub.live_slaves() == ["honest"]
    r.cache().set("after", 1)
    assert contents(r.followers[0][1]) == {"after": 1}


def test_a_forged_change_never_reaches_a_slave_store(tmp_path):
    """A fake master without the secret: the follower refuses its stream."""
    replica = Replica(tmp_path / "s")
    listener = socket.create_server(("127.0.0.1", 0))
    follower = Follower(replica, "c", "s", SECRET, lambda: 1, lambda p, s: None)
    try:
        follower.follow("127.0.0.1", listener.getsockname()[1], 1)
        listener.settimeout(5)
        conn, _ = listener.accept()
        conn.settimeout(5)
        conn.recv(65536)  # the hello, which we cannot answer properly
        fake = Session(b"guessed secret, wrong", initiator=False)
        fake_hello = Session(b"guessed secret, wrong", initiator=True)
        fake.feed(fake_hello.encode(Hello("c", "s", fake_hello.nonce, 1, 0, 0)))
        from cache.wire import Welcome

        conn.sendall(fake.encode(Welcome("m", fake.nonce, 1, False)))
        conn.sendall(fake.encode(Op(1, 1, Kind.PUT, "x", "k", encode_value("evil"), None)))
        assert wait_for(lambda: sum(follower.refused.values()) >= 1)
        assert replica.position == (0, 0) and "k" not in replica.store("x")
        conn.close()
    finally:
        follower.stop()
        listener.close()
        replica.close()


def test_replica_applies_in_order_only_and_snapshots_swap_whole(tmp_path):
    replica = Replica(tmp_path / "r")
    replica.apply(Op(1, 1, Kind.PUT, "x", "a", encode_value(1), None))
    with pytest.raises(ReplicaError, match="does not follow"):
        replica.apply(Op(1, 3, Kind.PUT, "x", "b", encode_value(2), None))
    with pytest.raises(ReplicaError, match="bad value"):
        replica.apply(Op(1, 2, Kind.PUT, "x", "b", b"P\x80\x04", None))
    assert replica.history_after((1, 1)) == [] and replica.history_after((0, 7)) is None
    replica.begin_snapshot()
    replica.add_item(Item("y", "k", encode_value("v"), None))
    replica.close()  # a crash before the end: the old state stays
    replica = Replica(tmp_path / "r")
    assert replica.position == (1, 1) and contents(replica) == {"a": 1}
    replica.begin_snapshot()
    replica.add_item(Item("y", "k", encode_value("v"), None))
    replica.end_snapshot((4, 40))
    assert replica.position == (4, 40)
    assert contents(replica, "y") == {"k": "v"} and replica.names() == ["y"]
    replica.close()
    assert Replica(tmp_path / "r").position == (4, 40)


def test_a_bad_change_in_a_batch_leaves_the_replica_at_its_last_commit(tmp_path):
    replica = Replica(tmp_path / "r")
    good = [Op(1, n, Kind.PUT, "x", f"k{n}", encode_value(n), None) for n in (1, 2)]
    replica.apply_all(good)
    batch = [
        Op(1, 3, Kind.PUT, "x", "k3", encode_value(3), None),
        Op(1, 4, Kind.PUT, "x", "k4", b"not an encoding", None),
    ]
    with pytest.raises(ReplicaError, match="bad value"):
        replica.apply_all(batch)
    assert replica.position == (1, 2)
    assert contents(replica) == {"k1": 1, "k2": 2}
    replica.apply_all(batch[:1])
    assert replica.position == (1, 3)
    replica.close()
    assert Replica(tmp_path / "r").position == (1, 3)


def test_set_many_is_one_change_batch_on_every_slave(rig):
    r = rig()
    _, replica = r.follower("s1")
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
    c = r.cache()
    c.set("first", 0)
    c.set_many({f"m{i}": i for i in range(5000)})  # more than one wire batch
    c.set_many([("a", 1), ("b", [2])])
    c.set_many({})
    assert replica.position == r.replica.position == (1, 5003)
    assert wait_for(lambda: contents(replica) == contents(r.replica))  # applied after the ack
    assert contents(replica)["b"] == [2] and len(contents(replica)) == 5003


def test_set_many_locally(tmp_path, monkeypatch):
    import cache

    monkeypatch.setenv("TWINWEAVE_CACHE_DIRECTORY", str(tmp_path / "local"))
    cache._forget()
    try:
        c = cache.get_cache("bulk")
        c.set_many({"a": 1, "b": b"2"})
        with pytest.raises(TypeError):
            c.set_many({"c": object()})
        assert sorted(c.items()) == [("a", 1), ("b", b"2")]
    finally:
        cache._forget()


def test_concurrent_writers_share_commits_and_each_gets_its_own_position(rig):
    r = rig()
    _, replica = r.follower("s1")
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
    c = r.cache()
    positions: list[list[tuple[int, int]]] = [[] for _ in range(8)]

    def writer(n: int) -> None:
        for i in range(100):
            c.set(f"t{n}-{i}", i)
            positions[n].append(r.replica.position)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.replica.position == (1, 800) == replica.position
    assert contents(replica) == contents(r.replica) and len(contents(replica)) == 800
    for mine in positions:
        assert mine == sorted(mine)  # each thread's writes land in its own order
    assert r.hub.commits < 800  # writers waiting on acknowledgements were grouped


def test_a_clean_stop_sends_what_async_writes_queued(tmp_path):
    r = Rig(tmp_path, sync=False)
    try:
        _, replica = r.follower("s1")
        assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
        c = r.cache()
        for i in range(300):
            c.set(f"k{i}", i)  # async: returns at once, queued for the slave
        r.hub.close()  # a clean stop flushes the queue before telling the slave
        assert wait_for(lambda: replica.position == (1, 300))
        assert len(contents(replica)) == 300
    finally:
        r.close()


def test_drain_waits_for_the_slaves_to_acknowledge_everything(tmp_path):
    r = Rig(tmp_path, sync=False)
    try:
        _, replica = r.follower("s1")
        assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
        c = r.cache()
        for i in range(500):
            c.set(f"k{i}", i)
        assert r.hub.drain(5.0)
        assert replica.position == (1, 500)  # no waiting: drain returned after the ack
    finally:
        r.close()


def test_slave_lag_counts_what_each_slave_has_not_acknowledged(rig):
    r = rig(sync=False)
    follower, _ = r.follower("keen")
    sock = socket.create_connection(("127.0.0.1", r.hub.port))
    try:
        session = Session(SECRET, initiator=True)
        sock.sendall(session.encode(Hello("c", "mute", session.nonce, 1, 0, 0)))
        sock.settimeout(5)
        session.feed(sock.recv(65536))  # welcomed, and never acknowledges anything
        assert wait_for(lambda: sorted(r.hub.live_slaves()) == ["keen", "mute"])
        assert {lag.node_id: lag.changes for lag in r.hub.slave_lag()} == {"keen": 0, "mute": 0}
        store = r.cache()
        written = time.monotonic()
        for number in range(3):
            store.set(f"k{number}", number)
        assert r.hub.writes == 3
        assert wait_for(lambda: follower.in_sync and lag_of(r.hub, "keen").changes == 0)
        time.sleep(0.05)
        mute = lag_of(r.hub, "mute")
        assert mute.live and mute.changes == 3
        assert 0.05 <= mute.seconds <= time.monotonic() - written
        assert lag_of(r.hub, "keen").seconds == 0
    finally:
        sock.close()


def lag_of(hub, node_id):
    (lag,) = [lag for lag in hub.slave_lag() if lag.node_id == node_id]
    return lag


# -- what a slave tells the election when the master's process is gone -------------------


def gone_recorder(rig_: Rig, name: str) -> tuple[Follower, list]:
    reports: list = []
    replica = Replica(rig_.tmp / name)
    follower = Follower(
        replica,
        "c",
        name,
        SECRET,
        lambda: 1,
        lambda p, s: None,
        on_gone=lambda *report: reports.append(report),
    )
    rig_.followers.append((follower, replica))
    return follower, reports


def test_a_master_process_gone_is_reported_once_with_when_its_link_closed(rig):
    r = rig()
    follower, reports = gone_recorder(r, "s1")
    follower.follow("127.0.0.1", r.hub.port, 1)
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
    r.cache().set("a", 1)  # acknowledged: the slave has its welcome and follows the stream
    port = r.hub.port
    before = time.monotonic()
    # what the kernel does for a killed process: its sockets close, nothing is said
    r.hub._closed = True
    r.hub._listener.close()
    for link in list(r.hub.links):
        link.close("killed")
    assert wait_for(lambda: len(reports) >= 2)  # the first refusal, then each retry's
    host, reported_port, epoch, closed_at = reports[0]
    assert (host, reported_port, epoch) == ("127.0.0.1", port, 1)
    assert closed_at is not None and before <= closed_at <= time.monotonic()
    assert all(report[3] is None for report in reports[1:])  # reported once only


def test_a_refusal_with_no_link_before_it_proves_nothing(rig):
    r = rig()
    follower, reports = gone_recorder(r, "s1")
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    follower.follow("127.0.0.1", port, 1)
    assert wait_for(lambda: len(reports) >= 1)
    assert reports[0] == ("127.0.0.1", port, 1, None)


def test_a_master_dropping_a_slave_or_a_slave_restarting_is_no_death(rig):
    r = rig()
    lost = []
    r.hub.on_link_lost = lambda: lost.append(time.monotonic())
    follower, reports = gone_recorder(r, "s1")
    follower.follow("127.0.0.1", r.hub.port, 1)
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
    # the master drops it, saying why
    r.hub.links[0].close("too slow", tell=wire.RefuseCode.TOO_SLOW)
    assert wait_for(lambda: follower.refused["by-master"] == 1)
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])  # and takes it back
    assert lost == []  # a Refuse is a goodbye: the master need not reassure anyone
    follower.stop()  # the slave goes (a restart): the master hears its link end
    r.followers.pop()[1].close()
    assert wait_for(lambda: len(lost) == 1)
    r.follower("s1")
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
    r.cache().set("a", 1)
    assert reports == []  # nothing ever refused: no one reports the master gone


def test_a_write_not_waited_for_returns_at_once_and_the_next_one_covers_it(rig):
    r = rig(ack_timeout=0.3)
    with mute_slave(r):
        c = r.cache()
        c.set("a", 1, wait=False)  # "mute" never acknowledges: nothing waits for it
        assert c.delete("a", wait=False) is True
        assert r.hub.dropped_slow == 0 and r.hub.live_slaves() == ["mute"]
        c.set("b", 2)  # this one waits, for everything before it too: mute is dropped
        assert r.hub.dropped_slow == 1
    _, replica = r.follower("s1")
    assert wait_for(lambda: r.hub.live_slaves() == ["s1"])
    c.set("c", 3, wait=False)
    c.set_many({"d": 4}, wait=False)
    c.set("e", 5)  # on the slave when it returns, and so is everything before it
    assert replica.position == r.replica.position
    assert contents(replica) == {"b": 2, "c": 3, "d": 4, "e": 5}


class FakeMaster:
    """A master on loopback that welcomes every follower at ``epoch`` and then sends what
    ``first`` holds (frames, or bytes sent as they are) on the first connection only, and
    ends each stream there: it closes once the follower has closed (issue 14's fuzzing)."""

    def __init__(self, epoch: int, first: list) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.epoch, self.first, self.connections = epoch, first, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:  # a timeout: look at done again
                continue
            with conn:
                conn.settimeout(10)
                self.connections += 1
                session = Session(None, initiator=False)
                data = b""
                while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not session.feed(data):
                    continue  # no Hello
                out = session.encode(Welcome("m", session.nonce, self.epoch, False))
                if self.connections == 1:
                    out += b"".join(
                        frame if isinstance(frame, bytes) else session.encode(frame)
                        for frame in self.first
                    )
                # a follower that refuses the stream may close before it is all sent
                with contextlib.suppress(OSError):
                    conn.sendall(out)
                    # the end of the stream; closing before the follower does could reset
                    # the link under data it has not read yet
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass

    def close(self) -> None:
        self.done.set()
        self.thread.join(10)
        self.listener.close()


@contextlib.contextmanager
def following(
    tmp_path,
    frames: list,
    epoch: int = 1,
    known: int = 1,
    retry_s: float = 0.05,
    on_position=lambda position, in_sync: None,
):
    """A follower (``known``: the newest epoch it knows) of a :class:`FakeMaster` at
    ``epoch`` that sends ``frames`` first."""
    master = FakeMaster(epoch, frames)
    replica = Replica(tmp_path / "s1")
    follower = Follower(replica, "c", "s1", None, lambda: known, on_position, retry_s=retry_s)
    try:
        follower.follow("127.0.0.1", master.port, epoch)
        yield master, replica, follower
    finally:
        follower.stop()
        master.close()
        replica.close()


def test_a_stale_epoch_is_counted_once(tmp_path):
    with following(tmp_path, [], epoch=3, known=5, retry_s=30) as (master, _replica, follower):
        assert wait_for(lambda: follower.refused)
        time.sleep(0.3)  # retry_s=30: no connection after the first retry
        assert master.connections in (1, 2)
        assert follower.refused == {"stale-epoch": master.connections}  # once per refusal


def refused_and_syncs(tmp_path, frames: list, sessions: int) -> tuple[dict, list[bool]]:
    """What a follower counted, and each in-sync state it reported, once a FakeMaster
    sending ``frames`` first has seen ``sessions`` connections."""
    syncs: list[bool] = []

    def on_position(_position: tuple[int, int], in_sync: bool) -> None:
        syncs.append(in_sync)

    with following(tmp_path, frames, on_position=on_position) as (master, _replica, follower):
        assert wait_for(lambda: master.connections >= sessions)
        return dict(follower.refused), syncs


@pytest.mark.parametrize(
    ("code", "reason", "out_of_sync"),
    [
        (wire.RefuseCode.TOO_SLOW, "too slow to acknowledge", True),
        (wire.RefuseCode.TOO_SLOW, "nothing the follower could match", True),
        (wire.RefuseCode.RESIGNING, "too slow to acknowledge", False),
        (wire.RefuseCode.OTHER, "too slow", False),
    ],
)
def test_a_refusal_puts_the_follower_out_of_sync_by_its_code_not_its_text(
    tmp_path, code, reason, out_of_sync
):
    refused, syncs = refused_and_syncs(tmp_path, [wire.Refuse(code, reason)], sessions=2)
    assert refused == {"by-master": 1}, refused
    assert syncs == ([False] if out_of_sync else []), syncs


def test_a_refusal_with_an_unknown_code_is_counted_and_ends_only_its_session(tmp_path):
    # a newer peer's code (a new code comes with a new wire version): a malformed frame
    reason = b"from the future"
    unknown = struct.pack("!IBBBH", 5 + len(reason), 3, 0, len(wire.RefuseCode), len(reason))
    refused, syncs = refused_and_syncs(tmp_path, [unknown + reason], sessions=3)
    assert refused == {"malformed": 1}, refused  # and it came back: not stuck
    assert syncs == []


def test_a_change_to_a_cache_the_replica_refuses_is_refused_before_it_is_staged(tmp_path):
    # the wire carried any cache name; the replica refuses "é": the change was journaled and
    # acknowledged, then every reconnection failed applying it, and the slave was stuck
    bad = Op(1, 1, Kind.PUT, "é", "k", encode_value(1), None)
    with following(tmp_path, [bad]) as (master, replica, follower):
        assert wait_for(lambda: follower.refused["invalid"] >= 1)
        assert wait_for(lambda: master.connections >= 3)  # it comes back, and is not stuck
        assert follower.refused["store"] == 0, follower.refused
        assert replica.position == (0, 0) and contents(replica) == {}


def test_a_snapshot_entry_for_a_cache_the_replica_refuses_is_refused_not_a_store_failure(
    tmp_path,
):
    # found by fuzzing (issue 14, tests/fuzz): an Item's cache name went unchecked, so the
    # replica's ValueError was counted 'store', the reason for stores that cannot write
    frames = [SnapshotBegin(1, 1), Item("or$ers", "k", encode_value(1), None), SnapshotEnd(1, 1)]
    with following(tmp_path, frames) as (master, replica, follower):
        assert wait_for(lambda: master.connections >= 2)  # the first session is over
        assert follower.refused == {"invalid": 1}, follower.refused
        assert replica.position == (0, 0) and replica.names() == []


def test_a_change_to_a_reserved_key_is_refused_and_never_overwrites_the_position(tmp_path):
    # found reading the fuzzers' results (issue 14): the master never writes a key starting
    # with NUL, but a change from the wire could name the store's own position row
    forged = Op(1, 1, Kind.PUT, "orders", POSITION_KEY, encode_value([9, 9]), None)
    with following(tmp_path, [forged]) as (_master, replica, follower):
        assert wait_for(lambda: follower.refused["invalid"] >= 1)
        assert follower.refused["store"] == 0, follower.refused
        assert replica.position == (0, 0) and contents(replica) == {}
