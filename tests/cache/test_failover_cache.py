"""The replicated cache across real failover nodes: crashes, a late slave, in-flight messages.

Each test starts real ``python -m agent.bootstrap --failover`` processes running one of the
adapters in ``apps/`` (their docstrings say what they write to the test's ``out`` folder),
on 127.0.0.1 with TTL 0, a random port and a cluster name of the test's own, so nothing
leaves the host and runs on one machine never meet. Node ids carry a token of the test's
own too, so that concurrent runs never clash in zeroconf. Each node has its own folder
(``state/NAME``), which it finds again when the test restarts it.

What is checked is the cache's contract (DESIGN.md, "cache"): a write acknowledged to the
master's caller survives the master's ``kill -9`` while a slave was live; a slave that
joins mid-stream ends identical to its master; a new master lists in ``cluster.inflight()``
what its predecessor's workflows had started and not finished; a master paused past its
takeover window has every write refused once it wakes, and none of them reaches the new
master.

Under load, two candidates may both claim the same epoch; the loser steps down (exit 75).
The tests allow for it: every node promoted after a failure must have the acknowledged
writes, and the next round's master is the node whose adapter actually works. Every
process is SIGKILLed and reaped when its test ends; every wait is bounded.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.nodeproc import (
    DELAY_MS,
    EXIT_DEMOTED,
    RETRIES,
    WAIT_S,
    NodeGroup,
    clean_env,
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

APPS = Path(__file__).with_name("apps")
WRITER = APPS / "writer.py"
INFLIGHT_APP = APPS / "inflight_app.py"
WINDOW_S = DELAY_MS / 1000 * RETRIES  # the takeover window
ACKS_PER_ROUND = 200  # acknowledged writes of a master before it is killed
KILLS = 3


class Promotion(NamedTuple):
    """A node became master and its adapter wrote what it found (a ``PREFIX-NODE-EPOCH.json``)."""

    node: str
    epoch: int
    data: Any


class WriterLog(NamedTuple):
    """What ``writer.py``'s stream wrote to ``log-NODE-EPOCH``."""

    tries: dict[int, float]  # i -> time.monotonic() just before c.set
    acked: dict[int, float]  # i -> time.monotonic() once c.set returned
    refused: dict[int, str]  # i -> the NotMasterError's message
    live: list[int]  # how many slaves were live when the writer started (--min-live)


def read_writer_log(path: Path) -> WriterLog:
    log = WriterLog({}, {}, {}, [])
    for line in read_lines(path):
        kind, i, *rest = line.split(" ", 3)
        if kind == "try":
            log.tries[int(i)] = float(rest[0])
        elif kind == "acked":
            log.acked[int(i)] = float(rest[0])
        elif kind == "refused":
            log.refused[int(i)] = rest[1] if len(rest) > 1 else ""
        elif kind == "live":
            log.live.append(int(i))
    return log


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (state T in /proc/PID/task/TID/stat).

    The process's own line shows only its main thread, which may stop before the others.
    """
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        states.append(text.rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


class Cluster(NodeGroup):
    """The nodes of one test, all running one adapter; they share the folder ``out``.

    A node's id is its name and a token of the test's own (``NAME-TOKEN``).
    """

    def __init__(self, root: Path, app: Path, args: list[str], pointcuts: Path | None) -> None:
        self.out = root / "out"
        self.out.mkdir()
        super().__init__(
            root,
            "cache-e2e",
            [app, self.out, *args],
            options=[] if pointcuts is None else ["--pointcuts", pointcuts],
            id_suffix=f"-{uuid.uuid4().hex[:6]}",
            log_tail=4000,
        )

    def promotions(self, prefix: str = "dump", after_epoch: int = 0) -> list[Promotion]:
        """What the adapters of the nodes promoted after ``after_epoch`` found, by epoch."""
        found = []
        for path in self.out.glob(f"{prefix}-*.json"):
            node, epoch = path.stem[len(prefix) + 1 :].rsplit("-", 1)
            if int(epoch) > after_epoch:
                found.append(Promotion(node, int(epoch), json.loads(path.read_text())))
        return sorted(found, key=lambda p: (p.epoch, p.node))

    def wait_promotion(self, prefix: str = "dump", after_epoch: int = 0) -> Promotion:
        """The first promotion after ``after_epoch`` whose adapter has written what it found."""
        return self.wait_until(lambda: next(iter(self.promotions(prefix, after_epoch)), None))

    def wait_writer(self, after_epoch: int, acks: int) -> tuple[Promotion, WriterLog]:
        """The master (promoted after ``after_epoch``) that has acknowledged ``acks`` writes.

        A loser of a simultaneous claim also wrote its dump, but never writes: the node
        whose writes are acknowledged is the master.
        """

        def probe() -> tuple[Promotion, WriterLog] | None:
            for promotion in self.promotions(after_epoch=after_epoch):
                log = read_writer_log(self.out / f"log-{promotion.node}-{promotion.epoch}")
                if len(log.acked) >= acks:
                    return promotion, log
            return None

        return self.wait_until(probe)

    def details(self) -> list[str]:
        """The out folder's listing."""
        return [f"--- out: {sorted(path.name for path in self.out.iterdir())}"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    def make(app: Path, *args: str, pointcuts: Path | None = None) -> Cluster:
        return Cluster(tmp_path, app, list(args), pointcuts)

    with killing_all(make) as tracked:
        yield tracked


def stream_items(count: int) -> dict[str, int]:
    return {f"k{i}": i for i in range(count)}


def test_every_write_acked_before_a_kill_9_is_on_the_next_master(cluster) -> None:
    c = cluster(WRITER, "--min-live", "2")  # a master writes once both slaves are live
    c.start("a")
    first = c.wait_promotion()
    assert first.data["items"] == {}
    c.start("b")
    c.start("c")
    acked: set[int] = set()
    epoch = 0
    for _round in range(KILLS):
        master, _log = c.wait_writer(epoch, ACKS_PER_ROUND)
        victim = c.process(master.node)
        victim.popen.kill()  # mid-stream: the writer does not stop on its own
        assert victim.wait() == -signal.SIGKILL
        acked |= set(read_writer_log(c.out / f"log-{master.node}-{master.epoch}").acked)
        epoch = master.epoch
        c.wait_promotion(after_epoch=epoch)
        c.revive()  # the killed node comes back as a slave, with its folder
        # every node promoted since the kill (a demoted loser too) holds every acknowledged
        # write, and nothing else: the stream's k0..kN, a prefix of what the old master wrote
        promoted = c.wait_writer(epoch, 1)[0]
        for new in c.promotions(after_epoch=epoch):
            assert new.node != master.node and new.epoch > master.epoch
            items = new.data["items"]
            missing = sorted(i for i in acked if items.get(f"k{i}") != i)
            assert not missing, (
                f"{new.node} (epoch {new.epoch}) lacks {len(missing)} of {len(acked)} acked "
                f"writes, e.g. {missing[:10]}\n{c.describe()}"
            )
            assert items == stream_items(len(items)), c.describe()
        assert promoted.data["position"][1] >= max(acked) + 1
    # both other nodes (the one restarted after the previous kill included) caught up with
    # each master within 5 s and were live before it wrote, so each write waited for both
    logs = {path.name: read_writer_log(path) for path in c.out.glob("log-*")}
    live = {name: log.live for name, log in logs.items() if log.acked}
    assert all(counts == [2] for counts in live.values()), f"{live}\n{c.describe()}"


def test_a_slave_started_while_the_master_writes_ends_identical_to_it(cluster) -> None:
    c = cluster(WRITER, "--mixed", "3")  # three threads of puts, updates and deletes
    master_process = c.start("a")
    master = c.wait_promotion()
    log = c.out / f"log-{master.node}-{master.epoch}"
    c.wait_until(lambda: len(read_lines(log)) >= 30)
    late = c.start("b")  # joins while the master writes
    c.wait_until(lambda: f"Following master {master.node} (epoch {master.epoch})" in late.log())
    joined = len(read_lines(log))
    c.wait_until(lambda: len(read_lines(log)) >= joined + 30)  # and keeps writing a while
    (c.out / "pause").write_text("1")  # stop; a last sync write once b is live; dump
    paused_path = c.out / f"paused-{master.node}-{master.epoch}.json"
    paused = c.wait_until(lambda: paused_path.exists() and json.loads(paused_path.read_text()))
    master_process.popen.send_signal(signal.SIGTERM)
    assert master_process.wait() == 0, c.describe()
    new = c.wait_promotion(after_epoch=master.epoch)
    assert new.node == late.node_id
    assert paused["items"]["paused-by"] == f"{master.node}-{master.epoch}"
    assert len(paused["items"]) > 100
    assert new.data == paused, c.describe()


AOP_XML = """\
<agent>
  <aspects>
    <aspect name="orders" type="workflow"
            pointcut="execution(* inflight_app.on_message(..))" message-id="msg"/>
  </aspects>
</agent>
"""


def test_a_new_master_lists_what_its_predecessor_had_in_flight(cluster, tmp_path) -> None:
    pointcuts = tmp_path / "aop.xml"
    pointcuts.write_text(AOP_XML)
    c = cluster(INFLIGHT_APP, "--min-live", "2", pointcuts=pointcuts)
    c.start("a")
    first = c.wait_promotion("inflight")
    assert first.data == []
    c.start("b")
    c.start("c")
    events = c.out / f"events-{first.node}-{first.epoch}"
    c.wait_until(lambda: "begin stuck-3" in read_lines(events))
    assert read_lines(events) == [
        *("begin done-1", "end done-1", "begin done-2", "end done-2"),
        "begin stuck-3",
    ]
    killed_at = time.time()
    victim = c.process(first.node)
    victim.popen.kill()  # stuck-3 is in flight, done-1 and done-2 are done
    assert victim.wait() == -signal.SIGKILL
    c.wait_promotion("inflight", first.epoch)
    c.revive()
    for new in c.promotions("inflight", first.epoch):
        assert new.node != first.node
        (entry,) = new.data
        assert entry.pop("start") <= killed_at
        assert entry == {
            "message_id": "stuck-3",
            "aspect": "orders",
            "step": "inflight_app.on_message",
            "node": first.node,
            "epoch": first.epoch,
        }

    # the new master redelivers stuck-3; once it is done, nothing is in flight any more
    def redelivered() -> Promotion | None:
        for new in c.promotions("inflight", first.epoch):
            if "redelivered" in read_lines(c.out / f"events-{new.node}-{new.epoch}"):
                return new
        return None

    second = c.wait_until(redelivered)
    second_events = read_lines(c.out / f"events-{second.node}-{second.epoch}")
    assert second_events == ["begin stuck-3", "end stuck-3", "redelivered"]
    victim = c.process(second.node)
    victim.popen.kill()
    assert victim.wait() == -signal.SIGKILL
    c.wait_promotion("inflight", second.epoch)
    for third in c.promotions("inflight", second.epoch):
        assert third.data == [], c.describe()


def test_inflight_is_empty_outside_failover_mode(tmp_path) -> None:
    pointcuts = tmp_path / "aop.xml"
    pointcuts.write_text(AOP_XML)
    out = tmp_path / "out"
    out.mkdir()
    env = clean_env(tmp_path)
    command = [sys.executable, "-m", "agent.bootstrap", "--pointcuts", str(pointcuts)]
    command += [str(INFLIGHT_APP), str(out), "--local"]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT_S
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "inflight-local.json").read_text()) == []
    assert read_lines(out / "events-local") == [
        *("begin done-1", "end done-1", "begin done-2", "end done-2"),
    ]


def test_a_stale_master_that_wakes_up_has_its_writes_refused(cluster) -> None:
    # epoch 1 writes until a write is refused, ignoring the stop request; later masters
    # write nothing, so everything the new master holds came from the stale one
    c = cluster(WRITER, "--min-live", "2", "--write-epochs", "1", "--until-refused")
    old_process = c.start("a")
    c.wait_promotion()
    c.start("b")
    c.start("c")
    old, _ = c.wait_writer(0, ACKS_PER_ROUND)
    old_process.popen.send_signal(signal.SIGSTOP)
    c.wait_until(lambda: all_threads_stopped(old_process.popen.pid))
    stopped_at = time.monotonic()  # from here on the old master cannot run a single step
    new = c.wait_promotion(after_epoch=old.epoch)
    time.sleep(max(0.0, stopped_at + 2.5 * WINDOW_S - time.monotonic()))
    old_process.popen.send_signal(signal.SIGCONT)
    assert old_process.wait() == EXIT_DEMOTED, c.describe()
    assert re.search(r"Demoted: no heartbeat sent for", old_process.log()), c.describe()

    log = read_writer_log(c.out / f"log-{old.node}-{old.epoch}")
    after_waking = sorted(i for i, t in log.tries.items() if t > stopped_at)
    assert after_waking, f"no write tried after waking\n{c.describe()}"
    assert set(after_waking) <= set(log.refused), f"{after_waking} vs {sorted(log.refused)}"
    assert not set(after_waking) & set(log.acked)
    assert all("not the master" in message for message in log.refused.values()), log.refused

    (c.out / "pause").write_text("0")  # the new master dumps what it holds now

    def paused() -> Promotion | None:
        for path in c.out.glob(f"paused-*-{new.epoch}.json"):
            node = path.stem[len("paused-") :].rsplit("-", 1)[0]
            return Promotion(node, new.epoch, json.loads(path.read_text()))
        return None

    now = c.wait_until(paused)
    at_promotion = next(p for p in c.promotions(after_epoch=old.epoch) if p.node == now.node)
    assert now.data == at_promotion.data  # nothing arrived after the takeover
    items = now.data["items"]
    assert not [i for i in after_waking if f"k{i}" in items]
    # a write begun before the pause and acknowledged after it must be on the new master too
    missing = {i: log.acked[i] - stopped_at for i in log.acked if items.get(f"k{i}") != i}
    assert not missing, (
        f"acked writes lost (write: seconds from the pause to its acknowledgement): {missing}"
        f"\n{c.describe()}"
    )
