"""The etcd backend against real etcd servers (one member, three members) on loopback.

Nodes run in this process (``cluster.manager.Node`` with ``failover.backend=etcd``); the
process-level tests (kill -9, SIGSTOP, exit 75, the adapter's timeline) are in
``tests/examples/test_etcd_failover.py``. No mock stands in for etcd anywhere.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from benchmarks.etcd_server import free_ports, start_cluster
from cache import Cache
from cluster.backend import BackendError
from cluster.config import Settings
from cluster.election import State
from cluster.etcd import EtcdBackend, collect_nodes, lease_ttl
from cluster.manager import Node


def wait_for(predicate, timeout: float = 10.0) -> bool:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    server = start_cluster(tmp_path_factory.mktemp("etcd1"), 1)
    yield server
    server.stop()


@pytest.fixture
def make_node(tmp_path, etcd):
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    nodes: list[Node] = []

    def make(name: str, endpoints: str | None = None, **overrides) -> Node:
        settings = Settings(
            **{
                "interface": "127.0.0.1",
                "backend": "etcd",
                "etcd_endpoints": tuple((endpoints or etcd.endpoints).split(",")),
                "cluster": cluster,
                "delay_ms": 100,
                "retries": 5,
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


def masters(nodes) -> list[Node]:
    return [n for n in nodes if n.is_master()]


def never_two_masters(nodes, seconds: float) -> None:
    """Look every 10 ms for ``seconds``: at most one node may be master at any moment."""
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        now = [n.node_id for n in masters(nodes)]
        assert len(now) <= 1, now
        time.sleep(0.01)


def test_three_nodes_elect_one_master_whose_epoch_is_the_etcd_revision(make_node, caplog):
    caplog.set_level(logging.INFO, logger="cluster")
    a, b, c = (make_node(x) for x in "abc")
    for n in (a, b, c):
        n.start()
    assert wait_for(lambda: len(masters([a, b, c])) == 1)
    master = masters([a, b, c])[0]
    others = [n for n in (a, b, c) if n is not master]
    assert wait_for(lambda: all(n.backend.master == master.node_id for n in others))
    assert all(n.epoch == master.epoch for n in others)
    # one line per follower (the fault campaign's logs had each twice, backend and manager)
    follows = [r.getMessage() for r in caplog.records if "Following master" in r.getMessage()]
    assert len(follows) == 2, follows
    assert master.home.load_epoch() == master.epoch > 0
    # the replicated cache on this backend: the slaves have a returned write
    assert wait_for(lambda: sorted(master.hub.live_slaves()) == sorted(n.node_id for n in others))
    Cache("orders", master.replica.store("orders"), master.hub).set("o1", {"n": 1})
    for n in others:  # taken (journaled) when the write returned; applied right after
        assert n.replica.position == master.replica.position
        assert wait_for(
            lambda n=n: Cache("orders", n.replica.store("orders")).get("o1") == {"n": 1}
        )
    # peers come from etcd's node records
    expected = sorted(n.node_id for n in others)
    assert wait_for(lambda: sorted(p.node_id for p in master.backend.peers()) == expected)
    nodes, leader = collect_nodes(master.settings)
    assert leader["node"] == master.node_id and leader["create_revision"] == master.epoch
    assert sorted(r["node"] for r in nodes) == ["a", "b", "c"]


def test_resignation_hands_over_within_about_one_delay_with_a_higher_epoch(make_node):
    a = make_node("a")
    a.start()
    assert wait_for(a.is_master)
    b = make_node("b")
    b.start()
    assert wait_for(lambda: b.backend.master == "a")
    old = a.epoch
    a.request_stop("test")
    started = time.monotonic()
    assert a.finish(0) == 0
    assert wait_for(b.is_master, 5.0)
    took = time.monotonic() - started
    assert b.epoch > old
    assert took < 2.0, took  # a loose bound: the figure lives in benchmarks/takeover.py


def test_a_master_whose_lease_cannot_be_renewed_steps_down_before_it_expires(make_node, etcd):
    a = make_node("a")
    a.start()
    assert wait_for(a.is_master)
    backend = a.backend
    assert isinstance(backend, EtcdBackend)
    # revoke the lease behind the master's back, as an expiry on the server would
    lease = backend._lease_id
    from etcd3gw import client
    from etcd3gw.lease import Lease

    member = etcd.members[0]
    Lease(lease, client(host="127.0.0.1", port=member.client_port)).revoke()
    assert wait_for(lambda: a.demoted, 3.0)
    assert not a.is_master() and a.stopping.is_set()
    assert a.finish(0) == 75


def test_unreachable_etcd_is_a_clear_error_at_start(make_node):
    (port,) = free_ports(1)
    node = make_node("a", endpoints=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError) as error:
        node.start()
    text = str(error.value)
    assert "failover.etcd.endpoints" in text and f"127.0.0.1:{port}" in text
    assert "refused" in text


def test_lease_ttl_is_delay_times_retries_in_whole_seconds():
    assert lease_ttl(Settings(delay_ms=200, retries=3)) == 1
    assert lease_ttl(Settings(delay_ms=1000, retries=5)) == 5
    assert lease_ttl(Settings(delay_ms=700, retries=3)) == 3


def test_a_three_member_etcd_keeps_one_master_when_the_members_die(make_node, tmp_path):
    etcd3 = start_cluster(tmp_path / "etcd3", 3)
    try:
        endpoints = etcd3.endpoints
        a, b, c = (make_node(x, endpoints=endpoints) for x in "abc")
        for n in (a, b, c):
            n.start()
        assert wait_for(lambda: len(masters([a, b, c])) == 1)
        first = masters([a, b, c])[0]
        # the member every node talks to first dies, then the raft leader
        etcd3.kill(etcd3.members[0])
        never_two_masters([a, b, c], 3.0)
        leader = etcd3.leader()
        etcd3.kill(leader)
        etcd3.start(leader, state="existing")  # back, so a majority (2 of 3) stays
        etcd3.wait_healthy()
        never_two_masters([a, b, c], 4.0)
        assert wait_for(lambda: len(masters([a, b, c])) == 1, 10.0)
        assert first.backend.state in (State.MASTER, State.STOPPED)
    finally:
        etcd3.stop()


def _gateway(url: str, path: str, body: dict) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def test_etcd_authentication_with_the_right_password_and_a_clear_error_with_a_wrong_one(
    make_node, tmp_path
):
    secured = start_cluster(tmp_path / "auth", 1)
    try:
        url = secured.members[0].url
        _gateway(url, "/v3/auth/role/add", {"name": "root"})
        _gateway(url, "/v3/auth/user/add", {"name": "root", "password": "s3cret"})
        _gateway(url, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        _gateway(url, "/v3/auth/enable", {})
        # etcd checks a password with bcrypt: on a busy 2-core machine that outlasts the
        # 0.25 s request timeout of delay_ms=100, so every node here gets a longer one
        good = make_node(
            "a", endpoints=url, etcd_username="root", etcd_password="s3cret", delay_ms=1000
        )
        good.start()
        assert wait_for(good.is_master, 15.0)
        bad = make_node(
            "b", endpoints=url, etcd_username="root", etcd_password="wrong", delay_ms=1000
        )
        with pytest.raises(BackendError) as error:
            bad.start()
        assert "authentication failed" in str(error.value), str(error.value)
        assert "wrong" not in str(error.value)  # the password is never shown
        anonymous = make_node("c", endpoints=url, delay_ms=1000)
        with pytest.raises(BackendError):
            anonymous.start()
    finally:
        secured.stop()
