"""Real ``examples/fs_adapter.py`` nodes for the tests of this folder, and what they did.

A :class:`FsCluster` starts ``python -m agent.bootstrap --failover --pointcuts
examples/aop.xml examples/fs_adapter.py --in IN --out OUT --trace TRACE ...`` processes on
127.0.0.1 with TTL 0, a random port and a cluster name of the test's own (nothing leaves
the host; runs never meet), each node with its own folder (``state/NAME``), which it finds
again when the test restarts it (``tests/nodeproc.py`` starts, watches and kills them). All
nodes share the folders ``in`` and ``out`` and the adapter's trace file (a test aid: one
line per step of each message, see the adapter).

:func:`check_exactly_once` is the verdict, computed from the folders and the trace alone:
one output per input and nothing else, each the input upper-cased once plus exactly one
``X-Processed-By`` line naming the node that published it, published once (one ``linked``
line in the trace for it), no temp file left, the inbox empty.

Every wait is bounded; the tests' fixture makes its clusters through
:func:`tests.nodeproc.killing_all`, which SIGKILLs and reaps every process whatever happens.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from tests.nodeproc import DELAY_MS, NodeGroup, read_lines

REPO = Path(__file__).resolve().parents[2]
ADAPTER = REPO / "examples" / "fs_adapter.py"
POINTCUTS = REPO / "examples" / "aop.xml"
DEMO = REPO / "examples" / "demo.py"
SETTLE_S = 2 * DELAY_MS / 1000  # after "Following master": the follower connects
HEADER = "X-Processed-By: "


class Event(NamedTuple):
    """One line of the adapter's trace."""

    t: float  # time.monotonic() of the node (one clock system-wide on Linux)
    event: str
    node: str
    epoch: int
    detail: str
    message: str


def read_trace(path: Path) -> list[Event]:
    events = []
    for line in read_lines(path):
        t, event, node, epoch, detail, message = line.split(" ", 5)
        events.append(Event(float(t), event, node, int(epoch), detail, message))
    return events


def message_name(i: int) -> str:
    return f"msg-{i:05d}.txt"


def feed(inbox: Path, numbers: range) -> dict[str, str]:
    """Write one input per number, atomically (a dot file renamed); name -> content."""
    fed = {}
    for i in numbers:
        name = message_name(i)
        content = f"message {i}\nof the exactly-once test\n"
        temp = inbox / f".{name}.part"
        temp.write_text(content, encoding="utf-8")
        os.replace(temp, inbox / name)
        fed[name] = content
    return fed


def check_exactly_once(
    inbox: Path, outbox: Path, events: list[Event], fed: dict[str, str], nodes: set[str]
) -> dict[str, str]:
    """Assert that every fed file was delivered exactly once; returns name -> publishing node."""
    names = set(os.listdir(outbox))
    temps = sorted(n for n in names if n.startswith("."))
    assert not temps, f"temp files left: {temps}"
    assert names == set(fed), (
        f"lost: {sorted(set(fed) - names)[:10]}, unexpected: {sorted(names - set(fed))[:10]}"
    )
    assert os.listdir(inbox) == [], f"inbox not empty: {sorted(os.listdir(inbox))[:10]}"
    assert not [e for e in events if e.event == "failed"], "a message failed"
    published = Counter(e.message for e in events if e.event == "linked")
    twice = {name: count for name, count in published.items() if count != 1}
    assert not twice, f"outputs published more than once: {twice}"
    writers = {e.message: e.node for e in events if e.event == "linked"}
    for name, content in fed.items():
        text = (outbox / name).read_text(encoding="utf-8")
        node = writers.get(name)
        assert node in nodes, f"{name}: published by {node!r}"
        assert text == content.upper() + f"{HEADER}{node}\n", f"{name}: {text!r}"
    return writers


class FsCluster(NodeGroup):
    """The nodes of one test over one ``in``/``out`` pair; ``args`` go to every adapter."""

    def __init__(self, root: Path, args: list[str]) -> None:
        self.inbox = root / "in"
        self.outbox = root / "out"
        self.inbox.mkdir()
        self.outbox.mkdir()
        self.trace = root / "trace"
        self.fed: dict[str, str] = {}
        adapter = [ADAPTER, "--in", self.inbox, "--out", self.outbox, "--trace", self.trace]
        super().__init__(
            root,
            "fs-e2e",
            [*adapter, "--poll-ms", "20", *args],
            options=["--pointcuts", POINTCUTS],
            log_tail=3000,
            poll_s=0.01,
        )

    def start_settled(self, names: tuple[str, ...] = ("node-a", "node-b", "node-c")) -> Event:
        """The first node alone, then the others; the master's start once they follow it."""
        self.start(names[0])
        master = self.wait_master()
        for name in names[1:]:
            self.start(name)
        self.wait_following(master, names[1:])
        return master

    def wait_following(self, master: Event, slaves: tuple[str, ...] | list[str]) -> None:
        """Wait until each of ``slaves`` follows ``master``, then a little more: a follower
        connects to the master's replication stream right after it logs "Following master",
        so that the master's next writes (in-flight records) reach it."""
        line = f"Following master {master.node} (epoch {master.epoch})"
        self.wait_until(lambda: all(line in self.process(name).log() for name in slaves))
        time.sleep(SETTLE_S)

    def feed(self, numbers: range) -> None:
        self.fed.update(feed(self.inbox, numbers))

    def events(self) -> list[Event]:
        return read_trace(self.trace)

    def masters(self, after_epoch: int = 0) -> list[Event]:
        """The adapter starts (promotions) above ``after_epoch``, by time."""
        found = [e for e in self.events() if e.event == "start" and e.epoch > after_epoch]
        return sorted(found, key=lambda e: e.t)

    def wait_master(self, after_epoch: int = 0) -> Event:
        """The promotion above ``after_epoch`` whose node keeps running (a loser of two
        simultaneous claims steps down at once, exit 75)."""

        def probe() -> Event | None:
            for start in self.masters(after_epoch):
                node = self.process(start.node)
                if node.alive() and time.monotonic() - start.t > 2 * DELAY_MS / 1000:
                    return start
            return None

        return self.wait_until(probe)

    def wait_event(self, event: str, message: str) -> Event:
        def probe() -> Event | None:
            return next(
                (e for e in self.events() if e.event == event and e.message == message), None
            )

        return self.wait_until(probe)

    def wait_done(self) -> None:
        """Every fed file has its output and the inbox is empty."""

        def done() -> bool:
            outputs = {n for n in os.listdir(self.outbox) if not n.startswith(".")}
            return not os.listdir(self.inbox) and outputs >= set(self.fed)

        self.wait_until(done)

    def check(self) -> dict[str, str]:
        names = {p.name for p in self.processes}
        return check_exactly_once(self.inbox, self.outbox, self.events(), self.fed, names)

    def details(self) -> list[str]:
        """The trace's last lines and the folders."""
        return [
            "--- trace (last lines):",
            *[" ".join(map(str, e)) for e in self.events()[-30:]],
            f"--- in: {sorted(os.listdir(self.inbox))[:20]}",
            f"--- out: {sorted(os.listdir(self.outbox))[:20]}...",
        ]
