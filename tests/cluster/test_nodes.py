"""Real failover nodes on loopback: election, takeover, pauses, partitions, floods, bad settings.

Each test starts real ``python -m agent.bootstrap --failover`` processes that run
``nodeapp.py`` (its docstring describes the timeline they share), on 127.0.0.1 with TTL 0,
a random port and a cluster name of the test's own, so nothing leaves the host and runs on
one machine never meet. A delay of 150 ms with 3 retries keeps each scenario to seconds.

From the timeline every scenario computes the longest time two different nodes both did
master work (:func:`overlap`). It must stay within the fencing window (delay * retries); in
the scenarios where the old master is dead, stopped, or frozen before its successor is
promoted, causality makes it exactly zero, and that is what they assert. The timing bounds
below are sanity checks with a second of slack for a loaded two-core machine, not
performance claims: ``benchmarks/takeover.py`` measures the takeover times.

Every process is SIGKILLed and reaped when its test ends, whatever happened; every wait is
bounded, so a hung node fails its test instead of hanging the run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from cache.wire import Session, Welcome
from cluster.protocol import Codec, Heartbeat, Role
from tests.nodeproc import (
    DELAY_MS,
    EXIT_DEMOTED,
    GROUP,
    RETRIES,
    WAIT_S,
    NodeGroup,
    NodeProcess,
    killing_all,
    read_lines,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="compares time.monotonic() across processes (one clock system-wide on Linux)",
    ),
]

NODEAPP = Path(__file__).with_name("nodeapp.py")
DELAY_S = DELAY_MS / 1000
WINDOW_S = DELAY_S * RETRIES  # the takeover (and fencing) window
SLACK_S = 1.0  # room for a loaded two-core machine in the sanity bounds
KILL_BOUND_S = DELAY_S * (RETRIES + 1) + SLACK_S
RESIGN_BOUND_S = 3 * DELAY_S + SLACK_S
QUIET_S = 3 * WINDOW_S  # how long "nothing else happens" is watched for
EXIT_USAGE = 2
CLUSTER_LOG_LINES = (
    "Creating listener...",
    "Creating broadcaster...",
    "Started listener",
    "Started broadcaster",
    "Failover Manager has started",
)


class Event(NamedTuple):
    """One line of the timeline that ``nodeapp.py`` writes."""

    kind: str  # start, work, hook or exit
    node: str
    epoch: int
    t: float  # time.monotonic() in the node's process
    how: str = ""  # for exit: returned or interrupted


def read_timeline(path: Path) -> list[Event]:
    events = []
    for line in read_lines(path):
        kind, node, epoch, t, *how = line.split()
        events.append(Event(kind, node, int(epoch), float(t), *how))
    return events


def starts(events: list[Event], after: float = -math.inf) -> list[Event]:
    """The promotions (adapter starts) after ``after``, in time order."""
    return sorted((e for e in events if e.kind == "start" and e.t > after), key=lambda e: e.t)


def work_of(events: list[Event], node: str, after: float = -math.inf) -> list[Event]:
    return [e for e in events if e.kind == "work" and e.node == node and e.t > after]


def overlap(events: list[Event], since: float = -math.inf) -> float:
    """The longest time two different nodes both did master work, counted from ``since``.

    A node's work in one epoch spans its first to its last "work" line (clipped to start at
    ``since``); the result is the largest intersection of spans of two different nodes.
    """
    spans: dict[tuple[str, int], tuple[float, float]] = {}
    for e in events:
        if e.kind == "work" and e.t >= since:
            first, last = spans.get((e.node, e.epoch), (e.t, e.t))
            spans[(e.node, e.epoch)] = (min(first, e.t), max(last, e.t))
    longest = 0.0
    for ((node1, _), (a1, b1)), ((node2, _), (a2, b2)) in itertools.combinations(spans.items(), 2):
        if node1 != node2:
            longest = max(longest, min(b1, b2) - max(a1, a2))
    return longest


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T for stopped...)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class Nodes(NodeGroup):
    """The nodes of one test's cluster, running ``nodeapp.py``: faults, the timeline."""

    def __init__(self, root: Path) -> None:
        self.timeline = root / "timeline"
        super().__init__(root, "e2e", [NODEAPP, self.timeline])

    def start_cluster(
        self, *defines: str, faults: bool = False, together: bool = False
    ) -> tuple[dict[str, NodeProcess], Event]:
        """Nodes a, b and c; returns them by id and the master's start, once both others
        follow it and it has been at work for a few beats.

        Node a comes up alone first and b and c join its cluster, unless ``together``: the
        takeover scenarios start from a settled cluster, and a simultaneous start is the
        subject of its own test. Settled also means that every node has heard every other
        (each beats once per delay), so each scenario starts from the same steady state.
        ``faults``: each node under the control of its fault file (see :meth:`set_faults`).
        """

        def start(node_id: str) -> NodeProcess:
            return self.start(node_id, *defines, env=self.fault_env(node_id) if faults else None)

        procs = {"a": start("a")}
        if not together:
            self.wait_start()
        for node_id in ("b", "c"):
            procs[node_id] = start(node_id)
        master = self.wait_start()
        for node_id, proc in procs.items():
            if node_id != master.node:
                proc.wait_log(rf"Following master {master.node} \(epoch {master.epoch}\)")
        settled = time.monotonic() + 2 * DELAY_S
        self.wait_until(lambda: work_of(self.events(), master.node, after=settled))
        return procs, master

    def fault_file(self, node_id: str) -> Path:
        return self.root / f"faults-{node_id}.json"

    def fault_env(self, node_id: str) -> dict[str, str]:
        """The environment that puts node ``node_id`` under its fault file, without faults."""
        self.set_faults(node_id)
        return {"TWINWEAVE_FAULTS": str(self.fault_file(node_id))}

    def set_faults(self, node_id: str, **faults: bool) -> None:
        """Replace the node's fault control file at once (a new inode: it is re-read)."""
        path = self.fault_file(node_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(faults), encoding="utf-8")
        os.replace(tmp, path)

    def events(self) -> list[Event]:
        return read_timeline(self.timeline)

    def wait_start(self, after: float = -math.inf, timeout: float = WAIT_S) -> Event:
        """The first promotion after ``after``, once its adapter has started."""
        return self.wait_until(lambda: next(iter(starts(self.events(), after)), None), timeout)

    def details(self) -> list[str]:
        """The timeline's last lines (no work lines)."""
        tail = [line for line in self.events() if line.kind != "work"][-20:]
        return ["--- timeline (no work lines):", *map(str, tail)]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    with killing_all(Nodes) as make:
        yield make(tmp_path)


def assert_one_master_since(nodes: Nodes, master: Event, since: float) -> None:
    """Watch for QUIET_S: ``master`` stays the only promotion since ``since``, and works."""
    time.sleep(QUIET_S)
    events = nodes.events()
    promotions = starts(events, since)
    assert promotions == [master], f"promotions: {promotions}\n{nodes.describe()}"
    assert work_of(events, master.node, time.monotonic() - QUIET_S / 2), nodes.describe()


def test_three_nodes_started_together_elect_one_master_the_others_follow(nodes: Nodes) -> None:
    procs, master = nodes.start_cluster(together=True)
    assert master.epoch == 1
    for proc in procs.values():
        for line in CLUSTER_LOG_LINES:
            proc.wait_log(re.escape(line))
    procs[master.node].wait_log(r"Promoted to Master node \(epoch 1\b")
    procs[master.node].wait_log("Failover Manager has been promoted")
    assert_one_master_since(nodes, master, -math.inf)
    for node_id, proc in procs.items():
        if node_id != master.node:
            assert "Promoted to Master node" not in proc.log()
    for proc in procs.values():
        proc.send(signal.SIGTERM)
    assert [proc.wait() for proc in procs.values()] == [0, 0, 0], nodes.describe()
    assert overlap(nodes.events()) == 0.0


def test_kill_9_of_the_master_one_slave_takes_over_with_the_next_epoch(nodes: Nodes) -> None:
    procs, old = nodes.start_cluster()
    killed_at = time.monotonic()
    procs[old.node].popen.kill()
    assert procs[old.node].wait() == -signal.SIGKILL
    new = nodes.wait_start(after=killed_at)
    assert new.node != old.node and new.epoch == old.epoch + 1
    assert new.t - killed_at <= KILL_BOUND_S, nodes.describe()
    # the host was up: the links closed, the port refused, and no window was waited out
    procs[new.node].wait_log(
        rf"Master {old.node} lost: master {old.node} is gone: its link closed without a goodbye"
    )
    assert_one_master_since(nodes, new, killed_at)
    (survivor,) = (p for n, p in procs.items() if n not in (old.node, new.node))
    survivor.wait_log(rf"Following master {new.node} \(epoch {new.epoch}\)")
    assert overlap(nodes.events()) == 0.0


def test_sigterm_makes_the_master_resign_and_a_slave_take_over_at_once(nodes: Nodes) -> None:
    procs, old = nodes.start_cluster()
    signalled_at = time.monotonic()
    procs[old.node].send(signal.SIGTERM)
    assert procs[old.node].wait() == 0, nodes.describe()
    procs[old.node].wait_log(rf"Resigned as master \(epoch {old.epoch}\)")
    new = nodes.wait_start(after=signalled_at)
    assert new.node != old.node and new.epoch == old.epoch + 1
    assert new.t - signalled_at <= RESIGN_BOUND_S, nodes.describe()
    mine = {e.kind: e for e in nodes.events() if e.node == old.node and e.kind != "work"}
    assert sorted(mine) == ["exit", "hook", "start"] and mine["exit"].how == "returned"
    assert mine["hook"].t < new.t  # the stop hook ran before the resignation
    assert_one_master_since(nodes, new, signalled_at)
    assert overlap(nodes.events()) == 0.0


def test_a_master_paused_past_its_window_steps_down_without_working(nodes: Nodes) -> None:
    procs, old = nodes.start_cluster()
    paused = procs[old.node]
    paused.send(signal.SIGSTOP)
    nodes.wait_until(lambda: process_state(paused.popen.pid) in ("T", "t"))
    stopped_at = time.monotonic()  # from here on the old master cannot run a single step
    new = nodes.wait_start(after=stopped_at)
    assert new.node != old.node and new.epoch == old.epoch + 1
    time.sleep(max(0.0, stopped_at + 2.5 * WINDOW_S - time.monotonic()))
    paused.send(signal.SIGCONT)
    assert paused.wait() == EXIT_DEMOTED, nodes.describe()
    paused.wait_log(r"Demoted: no heartbeat sent for")  # the clock came before any packet
    for node_id, proc in procs.items():  # nothing refused a frozen process: silence ruled
        if node_id != old.node:
            assert "looks gone" not in proc.log(), nodes.describe()
    events = nodes.events()
    assert work_of(events, old.node, after=stopped_at) == [], nodes.describe()
    assert_one_master_since(nodes, new, stopped_at)
    assert overlap(nodes.events()) == 0.0


def test_a_restarted_node_joins_as_a_slave_and_the_master_stays(nodes: Nodes) -> None:
    procs, old = nodes.start_cluster()
    killed_at = time.monotonic()
    procs[old.node].popen.kill()
    procs[old.node].wait()
    new = nodes.wait_start(after=killed_at)
    assert_one_master_since(nodes, new, killed_at)
    restarted = nodes.start(old.node)  # same id, same folder (and persisted epoch)
    restarted.wait_log(rf"Following master {new.node} \(epoch {new.epoch}\)")
    assert_one_master_since(nodes, new, killed_at)
    assert restarted.alive() and "Promoted to Master node" not in restarted.log()
    assert overlap(nodes.events()) == 0.0


def test_a_slave_killed_and_restarted_never_starts_an_election(nodes: Nodes) -> None:
    procs, master = nodes.start_cluster()
    slave = next(n for n in procs if n != master.node)
    procs[slave].popen.kill()  # the master's link to it breaks; it beats at once
    procs[slave].wait()
    restarted = nodes.start(slave)
    restarted.wait_log(rf"Following master {master.node} \(epoch {master.epoch}\)")
    assert_one_master_since(nodes, master, -math.inf)
    for proc in [*procs.values(), restarted]:
        log = proc.log()
        assert " lost: " not in log and "looks gone" not in log, nodes.describe()


class FakeMaster:
    """Master heartbeats from the test, with a replication port that takes one connection,
    closes it without a goodbye and then refuses (a live master whose port refused)."""

    def __init__(self, nodes: Nodes) -> None:
        self.codec = Codec(nodes.name)
        self.target = (GROUP, nodes.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT_S)
        self.port = self.listener.getsockname()[1]
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.sender.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
        )
        self.sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        self.seq = 0
        self.incarnation = random.getrandbits(32)

    def beat(self) -> None:
        self.seq += 1
        hb = Heartbeat(
            self.codec.cluster,
            "fake",
            Role.MASTER,
            1,
            100,
            self.incarnation,
            self.seq,
            int(time.time() * 1000),
            "127.0.0.1",
            self.port,
        )
        self.sender.sendto(self.codec.encode(hb), self.target)

    def close(self) -> None:
        self.listener.close()
        self.sender.close()


def test_a_refused_probe_while_the_masters_heartbeats_arrive_starts_no_election(
    nodes: Nodes,
) -> None:
    fake = FakeMaster(nodes)
    try:
        slave = nodes.start("s")
        fake.beat()
        conn = None
        beats_until = time.monotonic() + WAIT_S
        while conn is None and time.monotonic() < beats_until:  # it follows, then connects
            fake.listener.settimeout(DELAY_S)
            try:
                conn, _ = fake.listener.accept()
            except socket.timeout:
                fake.beat()
        assert conn is not None, nodes.describe()
        slave.wait_log(r"Following master fake \(epoch 1\)")
        session = Session(None, initiator=False)
        conn.settimeout(WAIT_S)
        while not session.feed(conn.recv(65536)):  # the slave's Hello
            pass
        conn.sendall(session.encode(Welcome("fake", session.nonce, 1, False)))
        time.sleep(DELAY_S / 8)  # the link is up
        fake.listener.close()  # the port refuses from now on
        conn.close()  # the link closes without a goodbye
        fake.beat()  # and the master answers the lost link at once and again a little
        time.sleep(DELAY_S / 8)  # later, as a live one does (Election.reassure)
        fake.beat()
        quiet_until = time.monotonic() + QUIET_S
        while time.monotonic() < quiet_until:
            time.sleep(DELAY_S)
            fake.beat()
        slave.wait_log(rf"replication port 127\.0\.0\.1:{fake.port} (of epoch 1 )?refused")
        assert slave.alive(), nodes.describe()
        log = slave.log()
        assert " lost: " not in log and "Promoted" not in log, nodes.describe()
    finally:
        fake.close()


def test_an_isolated_master_is_replaced_and_steps_down_when_the_partition_heals(
    nodes: Nodes,
) -> None:
    procs, old = nodes.start_cluster(faults=True)
    nodes.set_faults(old.node, drop_in=True, drop_out=True)
    cut_at = time.monotonic()
    new = nodes.wait_start(after=cut_at)
    assert new.node != old.node and new.epoch > old.epoch
    (third,) = (p for n, p in procs.items() if n not in (old.node, new.node))
    third.wait_log(rf"Following master {new.node} \(epoch {new.epoch}\)")
    # Cut off, the old master hears nobody and keeps its lease (renewed by its own
    # heartbeats): both masters work until the heal; the epochs fence the old one's writes.
    nodes.wait_until(lambda: work_of(nodes.events(), old.node, after=new.t + WINDOW_S))
    nodes.set_faults(old.node)
    healed_at = time.monotonic()
    assert procs[old.node].wait() == EXIT_DEMOTED, nodes.describe()
    procs[old.node].wait_log(r"Demoted: (master \S+ holds|node \S+ reports) epoch")
    assert procs[new.node].alive()
    assert_one_master_since(nodes, new, cut_at)
    assert overlap(nodes.events(), since=healed_at) <= WINDOW_S, nodes.describe()


def flood(group: str, port: int, cluster: str, node_ids: list[str], seconds: float) -> int:
    """Garbage, unsigned and wrongly signed heartbeats to the group; returns how many."""
    rng = random.Random(port)
    forgers = [Codec(cluster, secret=b"not the cluster's secret at all"), Codec(cluster)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sent = 0
    try:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        limit = time.monotonic() + seconds
        while time.monotonic() < limit:
            for _ in range(20):
                forged = Heartbeat(
                    cluster,
                    rng.choice([*node_ids, "usurper"]),
                    rng.choice(list(Role)),
                    rng.choice([0, 1, 2, 1000, 2**63]),
                    rng.choice([0, 100, 65535]),
                    rng.getrandbits(63),
                    rng.randint(1, 2**32),
                    int(time.time() * 1000),
                    "127.0.0.1",
                    0,
                )
                packet = rng.choice(forgers).encode(forged)
                mutated = bytearray(packet)
                for _ in range(rng.randint(1, 4)):
                    mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
                for data in (
                    packet,
                    bytes(mutated),
                    packet[: rng.randrange(len(packet))],
                    rng.getrandbits(8 * 300).to_bytes(300, "little")[: rng.randint(0, 300)],
                ):
                    sender.sendto(data, (group, port))
                    sent += 1
            time.sleep(0.02)
    finally:
        sender.close()
    return sent


def test_a_flood_of_garbage_and_forgeries_changes_nothing(nodes: Nodes) -> None:
    secret = f"e2e-{uuid.uuid4().hex}"
    procs, master = nodes.start_cluster(f"failover.secret={secret}")
    flooded_at = time.monotonic()
    sent = flood(GROUP, nodes.port, nodes.name, list(procs), 1.5)
    assert sent > 1000
    assert_one_master_since(nodes, master, -math.inf)
    assert all(proc.alive() for proc in procs.values()), nodes.describe()
    assert work_of(nodes.events(), master.node, after=flooded_at + 1.5 + WINDOW_S)
    for proc in procs.values():
        log = proc.log()
        assert "Traceback" not in log and "usurper" not in log, log
        assert not re.search(rf"Demoted|lost|Following master (?!{master.node} )", log), log
    # the slaves still hear (signed) heartbeats: one takes over when the master resigns
    signalled_at = time.monotonic()
    procs[master.node].send(signal.SIGTERM)
    assert procs[master.node].wait() == 0
    new = nodes.wait_start(after=signalled_at)
    assert new.epoch == master.epoch + 1
    assert overlap(nodes.events()) == 0.0


def test_a_bad_value_on_the_command_line_exits_2_naming_the_key(nodes: Nodes) -> None:
    proc = nodes.start("a", "failover.delay=abc")
    assert proc.wait() == EXIT_USAGE
    assert "failover.delay" in proc.log() and "abc" in proc.log()


def test_an_unknown_key_in_the_config_file_exits_2_naming_it(nodes: Nodes) -> None:
    config = nodes.root / "bootstrap.properties"
    config.write_text("# a typo\nfailover.dleay=200\n", encoding="utf-8")
    proc = nodes.start("a", options=["--config", str(config)])
    assert proc.wait() == EXIT_USAGE
    assert "failover.dleay" in proc.log()
    assert read_timeline(nodes.timeline) == []
