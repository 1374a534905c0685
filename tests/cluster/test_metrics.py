"""The cluster's metrics on a real three-node loopback cluster, scraped over HTTP.

Each node runs ``python -m agent.bootstrap -v --failover --pointcuts aop.xml app.py`` with
the ``prometheus`` plugin on 127.0.0.1, port 0 (each node logs the one it got). The adapter
writes to the replicated cache while it is master. The test scrapes every node (slaves
too), then kills the master with SIGKILL and watches the gauges follow the takeover.
"""

from __future__ import annotations

import socket
import textwrap
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.protocol import Codec, Heartbeat, Role
from tests.nodeproc import GROUP, NodeGroup, NodeProcess, killing_all
from tests.scrape import scrape, value

pytestmark = pytest.mark.slow
pytest.importorskip("prometheus_client")

APP = textwrap.dedent(
    """
    import time

    import cache
    import cluster

    def write(store, number):
        store.set(f"k{number % 50}", number)

    store = cache.get_cache("metrics")
    number = 0
    while not cluster.stopping():
        if cluster.is_master():
            try:
                write(store, number)
            except cache.NotMasterError:
                pass
            number += 1
        time.sleep(0.01)
    """
)

POINTCUTS = """<agent>
  <aspects>
    <aspect name="writes" type="service" pointcut="execution(* app.write(..))"/>
  </aspects>
  <plugins>
    <plugin name="timing" report="stats-{pid}.json"/>
    <plugin name="prometheus" address="127.0.0.1" port="0"/>
  </plugins>
</agent>
"""


class Nodes(NodeGroup):
    def __init__(self, root: Path) -> None:
        (root / "app.py").write_text(APP)
        (root / "aop.xml").write_text(POINTCUTS)
        super().__init__(root, "metrics", ["app.py"], options=["-v", "--pointcuts", "aop.xml"])

    def url(self, process: NodeProcess) -> str:
        return process.wait_log(r"serving (http://127\.0\.0\.1:\d+/metrics)").group(1)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    with killing_all(Nodes) as make:
        yield make(tmp_path)


def cluster_view(url: str) -> dict[str, float] | None:
    """The node's cluster gauges, or None while it cannot be scraped."""
    try:
        samples = scrape(url)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    if "twinweave_cluster_is_master" not in samples:
        return None  # the node is not installed yet
    view = {
        name: value(samples, f"twinweave_cluster_{name}")
        for name in (
            "is_master",
            "epoch",
            "known_epoch",
            "takeovers_total",
            "replicated_writes_total",
            "replica_position",
        )
    }
    view["lagging_slaves"] = len(samples.get("twinweave_cluster_replication_lag_changes", {}))
    dropped = samples.get("twinweave_cluster_packets_dropped_total", {})
    view["dropped"] = sum(dropped.values())
    return view


def send_garbage(port: int, cluster: str, count: int) -> None:
    """Heartbeats signed with a secret the cluster does not have, and plain junk."""
    forger = Codec(cluster, secret=b"not the cluster's secret at all")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        for seq in range(count):
            forged = Heartbeat(
                cluster,
                "usurper",
                Role.MASTER,
                99,
                100,
                1,
                seq + 1,
                int(time.time() * 1000),
                "127.0.0.1",
                0,
            )
            sender.sendto(forger.encode(forged), (GROUP, port))
            sender.sendto(b"junk", (GROUP, port))
    finally:
        sender.close()


def test_cluster_gauges_on_every_node_follow_a_takeover(nodes: Nodes) -> None:
    a = nodes.start("a")
    a.wait_log("Promoted to Master node")
    b, c = nodes.start("b"), nodes.start("c")
    urls = {p.node_id: nodes.url(p) for p in (a, b, c)}

    def settled() -> dict[str, dict[str, float]] | None:
        views = {node: cluster_view(url) for node, url in urls.items()}
        if any(view is None for view in views.values()):
            return None
        master, slaves = views["a"], [views["b"], views["c"]]
        if not (master["is_master"] == 1 and master["lagging_slaves"] == 2):
            return None
        if master["replicated_writes_total"] < 20:
            return None
        if any(s["is_master"] != 0 or s["epoch"] != master["epoch"] for s in slaves):
            return None
        if any(s["replica_position"] == 0 for s in slaves):
            return None
        return views

    before = nodes.wait_until(settled)
    epoch = before["a"]["epoch"]
    assert epoch >= 1 and before["a"]["takeovers_total"] == 1
    for slave in ("b", "c"):
        assert before[slave]["takeovers_total"] == 0
        assert before[slave]["replicated_writes_total"] == 0  # only the master writes

    send_garbage(nodes.port, nodes.name, 5)
    nodes.wait_until(
        lambda: all((cluster_view(url) or {}).get("dropped", 0) >= 10 for url in urls.values())
    )

    a.popen.kill()
    a.wait()

    def taken_over() -> tuple[str, dict[str, dict[str, float]]] | None:
        views = {node: cluster_view(urls[node]) for node in ("b", "c")}
        if any(view is None for view in views.values()):
            return None
        masters = [node for node, view in views.items() if view["is_master"] == 1]
        if len(masters) != 1:
            return None
        new = views[masters[0]]
        other = views["c" if masters[0] == "b" else "b"]
        if new["epoch"] <= epoch or other["epoch"] != new["epoch"]:
            return None
        if new["lagging_slaves"] != 1 or new["replicated_writes_total"] == 0:
            return None
        return masters[0], views

    new_master, after = nodes.wait_until(taken_over)
    other = "c" if new_master == "b" else "b"
    assert after[new_master]["takeovers_total"] == 1
    assert after[other]["takeovers_total"] == 0 and after[other]["is_master"] == 0
    assert after[other]["known_epoch"] == after[new_master]["epoch"]
    samples = scrape(urls[new_master])
    assert set(dict(k)["slave"] for k in samples["twinweave_cluster_replication_lag_changes"]) == {
        other
    }
    for key, seconds in samples["twinweave_cluster_replication_lag_seconds"].items():
        assert seconds >= 0 and dict(key)["cluster"] == nodes.name
