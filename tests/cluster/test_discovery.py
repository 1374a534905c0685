"""Zeroconf announcements: names and TXT records as plain calls, the rest in a network namespace.

Every test that starts zeroconf runs its scenario in a child interpreter inside a
network namespace of its own (``unshare -rn``, only ``lo`` up), so no mDNS packet
can leave this machine whatever zeroconf does. :func:`run_isolated` is shared
with ``test_status.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.config import Settings
from cluster.discovery import (
    SERVICE_TYPE,
    Announcer,
    NodeInfo,
    instance_name,
    node_from_properties,
    txt_properties,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=TIMEOUT
    )
    return probe.returncode == 0


needs_netns = pytest.mark.skipif(
    not _namespaces_work(), reason="needs unprivileged network namespaces (unshare -rn)"
)


def run_isolated(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -c script args`` in a fresh network namespace where only ``lo`` is up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINWEAVE_", "AGENT_"))}
    env["PYTHONPATH"] = str(ROOT)
    command = 'ip link set lo up && exec "$@"'
    return subprocess.run(
        ["unshare", "-rn", "sh", "-c", command, "sh", sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=env,
    )


def result_of(proc: subprocess.CompletedProcess) -> dict:
    """The JSON a scenario prints as its last stdout line."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def settings(**changes: object) -> Settings:
    return Settings(**{"interface": "127.0.0.1", "ttl": 0, "cluster": "alpha", **changes})


def test_instance_name_is_one_label_of_at_most_63_bytes():
    assert instance_name("node-1") == f"node-1.{SERVICE_TYPE}"
    assert instance_name("a", "orders.eu") == f"a@orders-eu.{SERVICE_TYPE}"
    assert instance_name("a.b\x01c") == f"a-b-c.{SERVICE_TYPE}"
    long = instance_name("é" * 40)  # 80 bytes of UTF-8
    label = long[: -len(SERVICE_TYPE) - 1]
    assert label == "é" * 31 and len(label.encode()) == 62


def test_txt_record_reads_back():
    props = txt_properties(settings(port=4000), "n1", "master", 7, 150, "127.0.0.1", 9000)
    raw = {k.encode(): v.encode() for k, v in props.items()}
    assert props["group"] == "230.0.0.1" and props["hbport"] == "4000" and props["v"] == "1"
    assert node_from_properties(raw) == NodeInfo(
        "alpha", "n1", "master", 7, 150, "127.0.0.1", 9000, None, "zeroconf"
    )
    without_host = {**raw, b"host": b""}
    assert node_from_properties(without_host, ["10.0.0.5"]).host == "10.0.0.5"


@pytest.mark.parametrize(
    "change",
    [{b"v": b"2"}, {b"role": b"boss"}, {b"epoch": b"x"}, {b"node": None}, {b"port": b""}],
)
def test_foreign_or_broken_txt_records_are_skipped(change):
    props = txt_properties(settings(), "n1", "slave", 1, 100, "127.0.0.1", 9000)
    raw = {k.encode(): v.encode() for k, v in props.items()}
    assert node_from_properties({**raw, **change}) is None


def test_update_checks_the_role_and_close_before_start_is_harmless():
    announcer = Announcer(settings(), "n1", "127.0.0.1", 9000, 100)
    with pytest.raises(ValueError, match="role must be one of"):
        announcer.update("boss", 1)
    announcer.update("master", 1)
    announcer.close()


SCENARIO = textwrap.dedent(
    """
    import json, socket, time
    from cluster.config import Settings
    from cluster.discovery import Announcer, _open_zeroconf, browse

    alpha = Settings(interface="127.0.0.1", ttl=0, cluster="alpha")
    beta = Settings(interface="127.0.0.1", ttl=0, cluster="beta")

    def until(predicate, limit=10.0):
        deadline = time.monotonic() + limit
        while True:
            nodes = browse(alpha, 0.6)
            if predicate(nodes) or time.monotonic() > deadline:
                return [[n.node_id, n.role, n.epoch, n.priority, n.host, n.port] for n in nodes]

    zc = _open_zeroconf(alpha)
    socks = [w.transport.get_extra_info("socket") for w in zc.engine.readers + zc.engine.senders]
    ttls = sorted({s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) for s in socks})
    zc.close()

    a = Announcer(alpha, "node-a", "127.0.0.1", 9001, 150)
    b = Announcer(beta, "node-b", "127.0.0.1", 9002, 100)
    started = time.monotonic()
    a.start()
    b.start()
    start_s = time.monotonic() - started
    a.update("master", 3)
    first = until(lambda nodes: [n.role for n in nodes] == ["master"])
    a.update("slave", 4)
    a.update("leaving", 5)
    second = until(lambda nodes: [(n.role, n.epoch) for n in nodes] == [("leaving", 5)])
    a.close()
    b.close()
    gone = until(lambda nodes: not nodes)
    print(json.dumps({"ttls": ttls, "start_s": start_s, "first": first, "second": second,
                      "gone": gone}))
    """
)


@needs_netns
def test_announce_update_and_goodbye_are_seen_by_browse():
    seen = result_of(run_isolated(SCENARIO))
    assert seen["ttls"] == [0]
    assert seen["start_s"] < 0.5
    assert seen["first"] == [["node-a", "master", 3, 150, "127.0.0.1", 9001]]
    assert seen["second"] == [["node-a", "leaving", 5, 150, "127.0.0.1", 9001]]
    assert seen["gone"] == []


FAILURES = textwrap.dedent(
    """
    import json, logging, time
    from cluster.config import Settings
    from cluster.discovery import Announcer, browse

    class Keep(logging.Handler):
        records = []
        def emit(self, record):
            self.records.append((record.levelname, record.name, record.getMessage()))

    logging.getLogger().addHandler(Keep())
    logging.getLogger().setLevel(logging.WARNING)
    nowhere = Settings(interface="10.255.0.1", ttl=0, cluster="alpha")
    here = Settings(interface="127.0.0.1", ttl=0, cluster="alpha")

    broken = Announcer(nowhere, "lost", "10.255.0.1", 9000, 100)
    broken.start()
    broken.update("master", 1)
    broken.close(timeout=5)
    broken.update("slave", 2)
    found_nowhere = browse(nowhere, 0.3)
    mine = [r for r in Keep.records if r[1] == "cluster.discovery"]

    first = Announcer(here, "twin", "127.0.0.1", 9001, 100)
    first.start()
    deadline = time.monotonic() + 10
    while not browse(here, 0.6) and time.monotonic() < deadline:
        pass
    del Keep.records[:]
    second = Announcer(here, "twin", "127.0.0.1", 9002, 100)
    second.start()
    deadline = time.monotonic() + 10
    while not Keep.records and time.monotonic() < deadline:
        time.sleep(0.05)
    second.close()
    first.close()
    conflict = [r for r in Keep.records if r[1] == "cluster.discovery"]
    print(json.dumps({"nowhere": mine, "found": len(found_nowhere), "conflict": conflict}))
    """
)


@needs_netns
def test_zeroconf_failures_only_warn_once():
    seen = result_of(run_isolated(FAILURES))
    levels = [level for level, _, _ in seen["nowhere"]]
    assert levels == ["WARNING", "WARNING"], seen["nowhere"]
    assert "announcements unavailable on 10.255.0.1" in seen["nowhere"][0][2]
    assert "discovery unavailable on 10.255.0.1" in seen["nowhere"][1][2]
    assert seen["found"] == 0
    assert len(seen["conflict"]) == 1, seen["conflict"]
    assert "another node already announces itself as 'twin'" in seen["conflict"][0][2]
