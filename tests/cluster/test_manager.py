"""The failover loop in this process: two nodes on loopback, stops, a full disk, garbage."""

from __future__ import annotations

import errno
import os
import random
import socket
import time
import uuid

import pytest

from cluster.config import Settings
from cluster.manager import EXIT_DEMOTED, EXIT_FAILED, Node
from cluster.protocol import Codec, Heartbeat, Role


def wait_for(predicate, timeout: float = 10.0) -> bool:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def make_node(tmp_path):
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    port = random.randint(20000, 60000)
    nodes: list[Node] = []

    def make(name: str, **overrides) -> Node:
        settings = Settings(
            **{
                "interface": "127.0.0.1",
                "ttl": 0,
                "port": port,
                "cluster": cluster,
                "delay_ms": 50,
                "retries": 3,
                "node_id": name,
                "cache_directory": str(tmp_path / name),
                "stop_timeout_ms": 2000,
                **overrides,
            }
        )
        node = Node(settings)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


def test_first_node_promotes_the_next_follows_and_takes_over_on_resignation(make_node):
    a = make_node("a")
    a.start()
    assert wait_for(a.promoted.is_set)
    assert a.is_master() and a.epoch == 1
    b = make_node("b")
    b.start()
    assert wait_for(lambda: b.backend.master == "a")
    assert not b.is_master()
    assert a.request_stop("test")
    assert not a.is_master()  # stopping: no new work, even before resigning
    assert a.finish(0) == 0
    assert wait_for(b.promoted.is_set, 2.0)
    assert b.epoch == 2
    assert (b.home.path / "epoch").read_text().strip() == "2"
    assert b.finish(0) == 0


def test_stop_hooks_run_before_the_goodbye(make_node):
    a = make_node("a")
    a.start()
    assert wait_for(a.promoted.is_set)
    seen = []
    a.on_stop(lambda: seen.append(a.backend.state.value))
    a.on_stop(lambda: 1 / 0)  # a failing hook is logged; the others still run
    a.on_stop(lambda: seen.append("second"))
    a.request_stop("test")
    assert a.finish(0) == 0
    assert seen == ["master", "second"]
    assert a.backend.state.value == "stopped"


def test_an_epoch_that_cannot_be_persisted_is_never_announced(make_node, monkeypatch):
    a = make_node("a")

    def full_disk(epoch: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(a.home, "save_epoch", full_disk)
    a.start()
    assert wait_for(a.stopping.is_set)
    assert not a.promoted.is_set() and not a.is_master()
    assert a.finish(0) == EXIT_FAILED


def test_garbage_and_forgeries_are_counted_and_dropped(make_node):
    a = make_node("a", secret=b"the right secret, long enough")
    a.start()
    assert wait_for(a.promoted.is_set)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    forger = Codec(a.settings.cluster, secret=b"a wrong secret, long enough too")
    rng = random.Random(1)
    try:
        for seq in range(1, 101):
            sender.sendto(
                rng.randbytes(rng.randint(0, 300))
                if hasattr(rng, "randbytes")
                else bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))),
                (a.settings.group, a.settings.port),
            )
            forged = Heartbeat(
                a.settings.cluster,
                "usurper",
                Role.MASTER,
                99,
                65535,
                1,
                seq,
                int(time.time() * 1000),
                "127.0.0.1",
                0,
            )
            sender.sendto(forger.encode(forged), (a.settings.group, a.settings.port))
    finally:
        sender.close()
    assert wait_for(lambda: sum(a.backend.codec.dropped.values()) >= 200, 5.0)
    assert a.backend.codec.dropped["forged"] == 100
    assert a.is_master() and a.epoch == 1 and "usurper" not in a.backend.machine.peers
    a.request_stop("test")
    assert a.finish(0) == 0


def test_replicated_writes_and_what_was_in_flight_survive_the_master(make_node):
    import cluster
    from agent.events import JoinPoint, StartEvent, Step
    from agent.plugins.failover import FailoverPlugin
    from cache import Cache, NotMasterError

    a = make_node("a")
    a.start()
    assert wait_for(a.promoted.is_set)
    b = make_node("b")
    b.start()
    assert wait_for(lambda: a.hub.live_slaves() == ["b"])
    orders = Cache("orders", a.replica.store("orders"), a.hub)
    orders.set("o1", {"total": 3})
    # the write returned: the slave has taken it already (journaled), and its store
    # shows it once applied, right after the acknowledgement
    assert b.replica.position == a.replica.position
    assert wait_for(lambda: Cache("orders", b.replica.store("orders")).get("o1") == {"total": 3})
    with pytest.raises(NotMasterError):
        Cache("orders", b.replica.store("orders"), b.hub).set("o2", 1)

    plugin = FailoverPlugin()
    jp = JoinPoint("flows", "workflow", "app.Flow.on_message", "msg")
    cluster.install(a)
    try:
        for mid in ("m1", "m2"):
            plugin.on_start(StartEvent(jp, mid, 1_700_000_000_000_000_000, 1, 0))
        plugin.on_step(Step("flows", "workflow", jp.name, "m1", 0, 5, None, 1, 0))
    finally:
        cluster.install(None)
    a.request_stop("test")
    assert a.finish(0) == 0
    assert wait_for(b.promoted.is_set, 3.0)
    assert [entry["message_id"] for entry in b.inflight] == ["m2"]
    entry = b.inflight[0]
    assert entry["aspect"] == "flows" and entry["step"] == jp.name
    assert entry["node"] == "a" and entry["epoch"] == 1 and entry["start"] == 1.7e9
    assert Cache("orders", b.replica.store("orders"), b.hub).get("o1") == {"total": 3}
    assert cluster.inflight() == []  # outside failover mode (no node installed)


def test_an_adapter_that_ends_after_the_lease_ran_out_exits_as_demoted(make_node, monkeypatch):
    # A paused master wakes: its adapter sees is_master() False and returns before the
    # backend's thread notices the lapsed lease. The node stepped down; a supervisor must
    # restart it as a slave, so the status is EXIT_DEMOTED, not the adapter's 0.
    a = make_node("a")
    a.start()
    assert wait_for(a.promoted.is_set)
    monkeypatch.setattr(a.backend, "is_master", lambda now: False)
    assert not a.is_master()
    assert a.finish(0) == EXIT_DEMOTED
    assert a.demoted and a.stop_reason.startswith("demoted:")
