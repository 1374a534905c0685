"""The example adapter on the etcd backend: real nodes, real etcd members, real faults.

Three ``examples/fs_adapter.py`` nodes (``fs_cluster.py``) run with
``failover.backend=etcd`` against a three-member etcd on loopback
(``tests/etcd_server.py``). Each fault must leave exactly one master, a higher epoch after
a takeover, every input delivered exactly once (so every acknowledged write of the
adapter's state reached the new master), and, when the master is cut off from etcd or
paused, no overlap between the old master's work and the new master's start.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fs_cluster import FsCluster

from benchmarks.etcd_server import EtcdCluster, start_cluster
from tests.nodeproc import EXIT_DEMOTED, kill_all

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="compares time.monotonic() across processes (one clock system-wide on Linux)",
    ),
]

WORK = ("begin", "written", "linked", "recorded", "delivered")


class EtcdFsCluster(FsCluster):
    """The example adapter's nodes on the etcd backend; ``endpoints`` per node if given."""

    def __init__(self, root: Path, etcd: EtcdCluster, args: list[str]) -> None:
        super().__init__(root, args)
        self.etcd = etcd
        self.endpoints: dict[str, str] = {}

    def settings(self, name: str) -> dict[str, str]:
        settings = super().settings(name)
        settings["failover.backend"] = "etcd"
        settings["failover.etcd.endpoints"] = self.endpoints.get(name, self.etcd.endpoints)
        settings["failover.retries"] = "5"  # a 1 s lease at the tests' 150 ms delay
        return settings


@pytest.fixture
def etcd_cluster(tmp_path):
    etcd = start_cluster(tmp_path / "etcd", 3)
    made: list[EtcdFsCluster] = []

    def make(*args: str) -> EtcdFsCluster:
        root = tmp_path / f"c{len(made)}"
        root.mkdir()
        group = EtcdFsCluster(root, etcd, list(args))
        made.append(group)
        return group

    try:
        yield make
    finally:
        for group in made:
            kill_all(group.processes)
        etcd.stop()


def mid_message(c: EtcdFsCluster, node: str, linked: int):
    events = c.events()
    if sum(1 for e in events if e.event == "linked") < linked:
        return None
    mine = [e for e in events if e.node == node]
    return mine[-1] if mine and mine[-1].event == "begin" else None


def test_kill_9_of_the_master_gives_one_new_master_with_a_higher_epoch(etcd_cluster):
    c = etcd_cluster("--delay-ms", "30")
    first = c.start_settled()
    c.feed(range(30))
    c.wait_until(lambda: mid_message(c, first.node, 5))
    victim = c.process(first.node)
    victim.popen.kill()
    assert victim.wait() == -signal.SIGKILL
    new = c.wait_master(first.epoch)
    assert new.node != first.node and new.epoch > first.epoch
    c.wait_done()
    c.check()
    starts = [e for e in c.masters(first.epoch)]
    assert [e.node for e in starts] == [new.node], starts  # no double promotion
    assert "in flight" in c.process(new.node).log()  # the predecessor's record reached it


def test_sigterm_hands_over_and_status_shows_the_nodes_from_etcd(etcd_cluster):
    c = etcd_cluster("--delay-ms", "10")
    first = c.start_settled()
    listing = _status(c)
    assert listing["code"] == 0, listing
    nodes = {n["node_id"]: n for n in listing["nodes"]}
    assert set(nodes) == {"node-a", "node-b", "node-c"}
    assert nodes[first.node]["role"] == "master" and nodes[first.node]["epoch"] == first.epoch
    assert {n["source"] for n in nodes.values()} == {"etcd"}
    c.feed(range(10))
    old = c.process(first.node)
    old.send(signal.SIGTERM)
    stopped = time.monotonic()
    assert old.wait() == 0
    new = c.wait_master(first.epoch)
    assert new.t - stopped < 1.5, new.t - stopped  # loose here; the figure is benchmarked
    c.wait_done()
    c.check()


def test_a_master_cut_off_from_etcd_steps_down_before_the_new_one_starts(etcd_cluster):
    c = etcd_cluster("--delay-ms", "30")
    members = c.etcd.members
    # each node talks to its own member only, so the master can be cut off alone
    for name, member in zip(("node-a", "node-b", "node-c"), members):
        c.endpoints[name] = member.url
    first = c.start_settled()
    c.feed(range(30))
    c.wait_until(lambda: mid_message(c, first.node, 5))
    own = members[("node-a", "node-b", "node-c").index(first.node)]
    c.etcd.kill(own)
    old = c.process(first.node)
    assert old.wait() == EXIT_DEMOTED, c.describe()
    new = c.wait_master(first.epoch)
    last_work = max(e.t for e in c.events() if e.node == first.node and e.event in WORK)
    assert last_work < new.t, (last_work, new)
    c.etcd.start(own, state="existing")
    c.wait_done()
    c.check()


def test_a_master_paused_past_its_lease_steps_down_on_waking(etcd_cluster):
    c = etcd_cluster("--delay-ms", "30")
    first = c.start_settled()
    c.feed(range(30))
    c.wait_until(lambda: mid_message(c, first.node, 5))
    old = c.process(first.node)
    old.send(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        new = c.wait_master(first.epoch)
        c.wait_done()
    finally:
        old.send(signal.SIGCONT)
    assert old.wait() == EXIT_DEMOTED, c.describe()
    late = [e for e in c.events() if e.node == first.node and e.t > stopped_at]
    assert not [e for e in late if e.event in ("written", "linked", "recorded")], late
    assert new.node != first.node
    c.check()


def test_the_etcd_leader_dying_leaves_exactly_one_master(etcd_cluster):
    c = etcd_cluster("--delay-ms", "30")
    first = c.start_settled()
    c.feed(range(20))
    leader = c.etcd.leader()
    c.etcd.kill(leader)
    time.sleep(2.0)
    c.etcd.start(leader, state="existing")
    c.wait_done()
    c.check()
    starts = c.masters()
    # either nobody took over, or the old master had stepped down first: never two at once
    if len(starts) > 1:
        old = c.process(first.node)
        assert old.wait() == EXIT_DEMOTED
        last_work = max(e.t for e in c.events() if e.node == first.node and e.event in WORK)
        assert last_work < starts[1].t


def _status(c: EtcdFsCluster) -> dict:
    defines = []
    for key, value in c.settings("node-a").items():
        defines += ["-D", f"{key}={value}"]
    done = subprocess.run(
        [sys.executable, "-m", "cluster", "status", "--json", *defines],
        capture_output=True,
        text=True,
        timeout=30,
        env=c.env,
        cwd=c.root,
    )
    nodes = json.loads(done.stdout) if done.stdout.strip() else []
    return {"code": done.returncode, "nodes": nodes, "err": done.stderr}
