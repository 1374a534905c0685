"""Real ``examples/fs_adapter.py`` nodes for the tests of this folder, and what they did.

A :class:`FsCluster` starts ``python -m agent.bootstrap --failover --pointcuts
examples/aop.xml examples/fs_adapter.py --in IN --out OUT --trace TRACE ...`` processes on
127.0.0.1 with TTL 0, a random port and a cluster name of the test's own (nothing leaves
the host; runs never meet), each node with its own folder (``state/NAME``), which it finds
again when the test restarts it. All nodes share the folders ``in`` and ``out`` and the
adapter's trace file (a test aid: one line per step of each message, see the adapter).

:func:`check_exactly_once` is the verdict, computed from the folders and the trace alone:
one output per input and nothing else, each the input upper-cased once plus exactly one
``X-Processed-By`` line naming the node that published it, published once (one ``linked``
line in the trace for it), no temp file left, the inbox empty.

Every wait is bounded; :meth:`FsCluster.kill_all` SIGKILLs and reaps every process, and the
tests' fixtures call it whatever happens.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
ADAPTER = REPO / "examples" / "fs_adapter.py"
POINTCUTS = REPO / "examples" / "aop.xml"
DEMO = REPO / "examples" / "demo.py"
GROUP = "230.0.0.1"  # reached through 127.0.0.1 with TTL 0 only
DELAY_MS = 150
RETRIES = 3
WAIT_S = 20.0  # the most any single wait may take before the test fails
SETTLE_S = 2 * DELAY_MS / 1000  # after "Following master": the follower connects
HEADER = "X-Processed-By: "
EXIT_DEMOTED = 75

T = TypeVar("T")


class Event(NamedTuple):
    """One line of the adapter's trace."""

    t: float  # time.monotonic() of the node (one clock system-wide on Linux)
    event: str
    node: str
    epoch: int
    detail: str
    message: str


def read_trace(path: Path) -> list[Event]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    events = []
    for line in text.split("\n")[:-1]:  # the last piece is empty or a line being written
        t, event, node, epoch, detail, message = line.split(" ", 5)
        events.append(Event(float(t), event, node, int(epoch), detail, message))
    return events


def clean_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINWEAVE_", "AGENT_"))}
    env["XDG_CACHE_HOME"] = str(root / "xdg")
    return env


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


class Node:
    """One node process (the latest of its name) and its output file."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float = WAIT_S) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {self.name} still runs after {timeout} s:\n{self.log()[-3000:]}")


class FsCluster:
    """The nodes of one test over one ``in``/``out`` pair; ``args`` go to every adapter."""

    def __init__(self, root: Path, args: list[str]) -> None:
        self.root = root
        self.args = args
        self.inbox = root / "in"
        self.outbox = root / "out"
        self.inbox.mkdir()
        self.outbox.mkdir()
        self.trace = root / "trace"
        self.name = f"fs-e2e-{uuid.uuid4().hex[:12]}"
        self.port = random.randint(20000, 60000)
        self.env = clean_env(root)
        self.processes: list[Node] = []
        self.fed: dict[str, str] = {}

    def start(self, name: str) -> Node:
        settings = {
            "failover.interface": "127.0.0.1",
            "failover.ttl": "0",
            "failover.group": GROUP,
            "failover.port": str(self.port),
            "failover.cluster": self.name,
            "failover.delay": str(DELAY_MS),
            "failover.retries": str(RETRIES),
            "failover.node-id": name,
            "cache.directory": str(self.root / "state" / name),
        }
        command = [sys.executable, "-m", "agent.bootstrap", "--failover"]
        command += ["--pointcuts", str(POINTCUTS)]
        for key, value in settings.items():
            command += ["-D", f"{key}={value}"]
        command += [str(ADAPTER), "--in", str(self.inbox), "--out", str(self.outbox)]
        command += ["--trace", str(self.trace), "--poll-ms", "20", *self.args]
        log_path = self.root / f"{name}.{len(self.processes)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,  # holds no folder named agent, cluster or cache
                env=self.env,
            )
        node = Node(name, popen, log_path)
        self.processes.append(node)
        return node

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
        self.wait_until(lambda: all(line in self.node(name).log() for name in slaves))
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
                node = self.node(start.node)
                if node.alive() and time.monotonic() - start.t > 2 * DELAY_MS / 1000:
                    return start
            return None

        return self.wait_until(probe)

    def node(self, name: str) -> Node:
        return [p for p in self.processes if p.name == name][-1]

    def revive(self) -> list[str]:
        """Restart every node whose latest process has ended; their names."""
        latest = {p.name: p for p in self.processes}
        dead = [name for name, p in latest.items() if not p.alive()]
        for name in dead:
            self.start(name)
        return dead

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

    def wait_until(self, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
        limit = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > limit:
                pytest.fail(f"nothing after {timeout} s\n{self.describe()}")
            time.sleep(0.01)

    def describe(self) -> str:
        """Every node's output, the trace's last lines and the folders, for failure messages."""
        parts = [f"--- {p.log_path.name}:\n{p.log()[-3000:]}" for p in self.processes]
        tail = [" ".join(map(str, e)) for e in self.events()[-30:]]
        return "\n".join(
            [
                *parts,
                "--- trace (last lines):",
                *tail,
                f"--- in: {sorted(os.listdir(self.inbox))[:20]}",
                f"--- out: {sorted(os.listdir(self.outbox))[:20]}...",
            ]
        )

    def kill_all(self) -> None:
        for process in self.processes:
            if process.alive():
                process.popen.kill()
        for process in self.processes:
            try:
                process.popen.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - the kernel owes us this
                pass
