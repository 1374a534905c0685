"""``python -m cluster status``: merging and rendering as plain calls, the CLI against fake nodes.

The end-to-end tests run a driver in a network namespace of its own (see
``test_discovery.run_isolated``): it multicasts heartbeats for fake nodes (TTL 0
on ``lo``), optionally announces some with zeroconf, runs the status command
there and prints what it returned.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_discovery import ROOT, TIMEOUT, needs_netns, run_isolated

from cluster.__main__ import main
from cluster.config import Settings
from cluster.discovery import NodeInfo
from cluster.protocol import Heartbeat, Role
from cluster.status import (
    Heard,
    as_json,
    dropped_note,
    exit_status,
    keep_newest,
    merge,
    summary,
    table,
)

CLUSTER = "shop"
SECRET = "s3cret-s3cret-s3cret"


def heartbeat(node: str, role: Role = Role.SLAVE, epoch: int = 1, **changes: object) -> Heartbeat:
    fields: dict = {
        "cluster": CLUSTER,
        "node_id": node,
        "role": role,
        "epoch": epoch,
        "priority": 100,
        "incarnation": 1,
        "seq": 1,
        "sent_ms": 0,
        "host": "127.0.0.1",
        "port": 9000,
    }
    fields.update(changes)
    return Heartbeat(**fields)


def announced(node: str, role: str = "slave", epoch: int = 1, priority: int = 100) -> NodeInfo:
    return NodeInfo(CLUSTER, node, role, epoch, priority, "127.0.0.2", 9100, None, "zeroconf")


def test_newest_heartbeat_of_a_node_wins():
    heard: dict[str, Heard] = {}
    keep_newest(heard, heartbeat("a", seq=5), 1.0)
    keep_newest(heard, heartbeat("a", Role.MASTER, seq=4), 2.0)  # late packet
    assert heard["a"].heartbeat.seq == 5 and heard["a"].received == 1.0
    keep_newest(heard, heartbeat("a", Role.MASTER, incarnation=2, seq=1), 3.0)  # restarted
    assert heard["a"].heartbeat.role is Role.MASTER and heard["a"].received == 3.0


def test_merge_prefers_heartbeats_and_sorts_master_first_then_priority():
    heard = {
        "b": Heard(heartbeat("b", Role.MASTER, 7, priority=10), 9.5),
        "c": Heard(heartbeat("c", priority=300, host="0.0.0.0", port=0), 9.0),
    }
    nodes = merge(
        heard,
        [announced("b", "slave", 6, 10), announced("c", priority=300), announced("a")],
        now=10.0,
    )
    assert [(n.node_id, n.role, n.epoch, n.source) for n in nodes] == [
        ("b", "master", 7, "both"),
        ("c", "slave", 1, "both"),
        ("a", "slave", 1, "zeroconf"),
    ]
    assert nodes[0].last_heartbeat == 0.5 and nodes[0].host == "127.0.0.1"
    assert (nodes[1].host, nodes[1].port) == ("127.0.0.2", 9100)  # heartbeat knew no address
    assert nodes[2].last_heartbeat is None


def test_ties_in_priority_sort_by_node_id():
    nodes = merge({}, [announced("z"), announced("m"), announced("x", priority=101)], 0.0)
    assert [n.node_id for n in nodes] == ["x", "m", "z"]


def test_summary_table_and_exit_status():
    settings = Settings(cluster=CLUSTER, interface="127.0.0.1", port=4000)
    heard = {"m": Heard(heartbeat("m", Role.MASTER, 3), 0.0)}
    nodes = merge(heard, [announced("s")], now=0.4)
    assert summary(settings, nodes) == (
        "cluster shop on 230.0.0.1:4000 via 127.0.0.1: 2 nodes, master m (epoch 3)"
    )
    lines = table(nodes).splitlines()
    assert lines[0].split() == ["NODE", "ROLE", "EPOCH", "PRIORITY", "ADDRESS", "LAST", "HEARTBEAT"]
    assert lines[1].split() == ["m", "master", "3", "100", "127.0.0.1:9000", "0.4", "s", "ago"]
    assert lines[2].split() == ["s", "slave", "1", "100", "127.0.0.2:9100", "-"]
    assert exit_status(nodes) == 0
    assert exit_status([announced("s")]) == 1
    two = [announced("a", "master", 4), announced("b", "master", 5)]
    assert exit_status(two) == 1
    assert summary(settings, two).endswith("2 nodes, 2 masters: a (epoch 4), b (epoch 5)")
    assert summary(settings, []).endswith(": 0 nodes, no master")


def test_json_and_dropped_note():
    nodes = merge({"m": Heard(heartbeat("m", Role.MASTER), 0.0)}, [], now=1.23456)
    assert json.loads(as_json(nodes)) == [
        {
            "cluster": CLUSTER,
            "node_id": "m",
            "role": "master",
            "epoch": 1,
            "priority": 100,
            "host": "127.0.0.1",
            "port": 9000,
            "last_heartbeat": 1.235,
            "source": "heartbeat",
        }
    ]
    assert dropped_note(Counter()) is None
    note = dropped_note(Counter(foreign=1, forged=2, short=0))
    assert note == "ignored 3 packets: 2 forged, 1 foreign"


def test_cli_usage_and_settings_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENT_CONFIG", raising=False)
    assert main([]) == 2
    assert "status" in capsys.readouterr().err
    with pytest.raises(SystemExit) as help_exit:
        main(["--help"])
    assert help_exit.value.code == 0 and "status" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad_wait:
        main(["status", "--wait", "-1"])
    assert bad_wait.value.code == 2
    assert main(["status", "--config", str(tmp_path / "missing.properties")]) == 2
    assert "twinweave: error: --config: settings file" in capsys.readouterr().err


def test_settings_error_as_a_program(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINWEAVE_", "AGENT_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "status", "-D", "failover.port=http"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("twinweave: error: command line -D: failover.port='http'")
    assert proc.stdout == ""


DRIVER = textwrap.dedent(
    """
    import json, subprocess, sys, threading, time
    from cluster.config import Settings
    from cluster.discovery import Announcer, browse
    from cluster.protocol import Codec, Heartbeat, Role, wall_clock_ms
    from cluster.transport import open_transport

    plan = json.loads(sys.argv[1])
    port, cluster = plan["port"], plan["cluster"]
    secret = plan["secret"].encode() if plan["secret"] else None
    stop = threading.Event()

    def send(node, role, epoch, priority, cluster=cluster, secret=secret):
        codec = Codec(cluster, secret)
        transport = open_transport("230.0.0.1", port, "127.0.0.1", 0)
        seq = 0
        while not stop.is_set():
            seq += 1
            transport.send(codec.encode(Heartbeat(
                cluster, node, Role[role.upper()], epoch, priority, 1, seq, wall_clock_ms(),
                "127.0.0.1", 9000)))
            stop.wait(0.1)
        transport.close()

    senders = [threading.Thread(target=send, args=tuple(n)) for n in plan["nodes"]]
    if plan["foreign"]:
        senders.append(threading.Thread(target=send, args=("x1", "master", 9, 100, "elsewhere")))
    if plan["forged"]:
        wrong = b"not-the-secret-at-all"
        senders.append(threading.Thread(target=send, args=("f1", "master", 99, 100), kwargs={
            "secret": wrong}))
    settings = Settings(interface="127.0.0.1", ttl=0, cluster=cluster)
    announcers = [Announcer(settings, n, "127.0.0.1", 9500, p) for n, _, _, p in plan["announce"]]
    for thread in senders:
        thread.start()
    for announcer, (_, role, epoch, _) in zip(announcers, plan["announce"]):
        announcer.update(role, epoch)
        announcer.start()
    deadline = time.monotonic() + 10
    while announcers and time.monotonic() < deadline:
        if len(browse(settings, 0.6)) == len(announcers):
            break
    try:
        status = subprocess.run(
            [sys.executable, "-m", "cluster", "status", *plan["args"],
             "-D", "failover.interface=127.0.0.1", "-D", "failover.ttl=0",
             "-D", f"failover.port={port}", "-D", f"failover.cluster={cluster}"],
            capture_output=True, text=True, timeout=20)
    finally:
        stop.set()
        for thread in senders:
            thread.join(5)
        for announcer in announcers:
            announcer.close()
    print(json.dumps({"rc": status.returncode, "out": status.stdout, "err": status.stderr}))
    """
)


def run_status(
    nodes: list[tuple[str, str, int, int]],
    args: list[str],
    *,
    secret: str = "",
    foreign: bool = False,
    forged: bool = False,
    announce: Sequence[tuple[str, str, int, int]] = (),
    tmp_path: Path,
) -> dict:
    plan = {
        "port": random.randint(20000, 60000),
        "cluster": CLUSTER,
        "secret": secret,
        "nodes": nodes,
        "foreign": foreign,
        "forged": forged,
        "announce": list(announce),
        "args": args + (["-D", f"failover.secret={secret}"] if secret else []),
    }
    proc = run_isolated(DRIVER, json.dumps(plan), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_netns
def test_status_lists_the_cluster_and_ignores_foreign_and_forged_nodes(tmp_path):
    nodes = [("m1", "master", 7, 100), ("s1", "slave", 7, 200), ("s2", "slave", 6, 50)]
    seen = run_status(
        nodes,
        ["--json", "--wait", "1"],
        secret=SECRET,
        foreign=True,
        forged=True,
        tmp_path=tmp_path,
    )
    assert seen["rc"] == 0, seen
    listed = json.loads(seen["out"])
    assert [(n["node_id"], n["role"], n["epoch"], n["priority"]) for n in listed] == [
        ("m1", "master", 7, 100),
        ("s1", "slave", 7, 200),
        ("s2", "slave", 6, 50),
    ]
    assert all(n["source"] == "heartbeat" and 0 <= n["last_heartbeat"] < 2 for n in listed)
    assert "twinweave: ignored " in seen["err"]
    assert " forged" in seen["err"] and " foreign" in seen["err"]


@needs_netns
def test_status_without_a_master_exits_1_and_prints_a_table(tmp_path):
    nodes = [("s1", "slave", 2, 100), ("s2", "slave", 2, 100)]
    seen = run_status(nodes, ["--wait", "1"], tmp_path=tmp_path)
    assert seen["rc"] == 1, seen
    lines = seen["out"].splitlines()
    assert lines[0].startswith(f"cluster {CLUSTER} on 230.0.0.1:")
    assert lines[0].endswith(" via 127.0.0.1: 2 nodes, no master")
    assert lines[1].split()[:3] == ["NODE", "ROLE", "EPOCH"]
    assert [line.split()[:2] for line in lines[2:]] == [["s1", "slave"], ["s2", "slave"]]
    assert "ignored" not in seen["err"]


@needs_netns
def test_status_merges_zeroconf_announcements(tmp_path):
    seen = run_status(
        [("m1", "master", 4, 100)],
        # long enough for two answers when the machine is busy (a CI run once missed one in 2 s)
        ["--json", "--wait", "4"],
        announce=[("m1", "slave", 3, 100), ("quiet", "slave", 4, 120)],
        tmp_path=tmp_path,
    )
    assert seen["rc"] == 0, seen
    listed = {n["node_id"]: n for n in json.loads(seen["out"])}
    assert listed["m1"]["source"] == "both"
    assert (listed["m1"]["role"], listed["m1"]["epoch"]) == ("master", 4)
    quiet = listed["quiet"]
    assert quiet["source"] == "zeroconf" and quiet["last_heartbeat"] is None
    assert (quiet["role"], quiet["epoch"], quiet["priority"], quiet["port"]) == (
        "slave",
        4,
        120,
        9500,
    )


@needs_netns
def test_an_interface_that_is_not_local_is_a_settings_error(tmp_path):
    cli = "import runpy; runpy.run_module('cluster', run_name='__main__')"
    proc = run_isolated(cli, "status", "-D", "failover.interface=10.255.0.1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("twinweave: error: cannot set up listening on 230.0.0.1:2710")
    assert "zeroconf" not in proc.stderr
