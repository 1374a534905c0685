"""Real failover node processes for the tests: start them, read their output, wait, kill them.

A :class:`NodeGroup` is the nodes of one test's cluster: ``python -m agent.bootstrap
--failover OPTIONS -D SETTINGS... PROGRAM ARGS`` processes on 127.0.0.1 with TTL 0 (nothing
leaves the host), on a random port and with a cluster name of the test's own (runs on one
machine never meet), under an environment without the caller's ``TWINWEAVE_*`` and
``AGENT_*`` variables and with the test's own ``XDG_CACHE_HOME``. Node ``NAME`` keeps its
cache in ``state/NAME``, which it finds again when the test restarts it; each of its
processes writes its stdout and stderr to ``NAME.N.log``; all of them run in the test's
folder, which holds no folder named agent, cluster or cache.

Every wait is bounded (:func:`wait_until`) and fails the test with every node's output
(:meth:`NodeGroup.describe`); :func:`killing_all` SIGKILLs and reaps every process of every
group it made, whatever happened in the test.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

GROUP = "230.0.0.1"  # DESIGN's default group; reached through 127.0.0.1 with TTL 0 only
DELAY_MS = 150
RETRIES = 3
WAIT_S = 20.0  # the most any single wait may take before the test fails
POLL_S = 0.02  # how often a wait looks again
EXIT_DEMOTED = 75  # the contract: a node that steps down exits with EX_TEMPFAIL

T = TypeVar("T")
G = TypeVar("G", bound="NodeGroup")


def clean_env(root: Path) -> dict[str, str]:
    """This process's environment without ``TWINWEAVE_*`` and ``AGENT_*``, caches in ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINWEAVE_", "AGENT_"))}
    env["XDG_CACHE_HOME"] = str(root / "xdg")
    return env


def read_lines(path: Path) -> list[str]:
    """The complete lines of a file that a node may be writing (none if it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return text.split("\n")[:-1]  # the last piece is empty or a line being written


def wait_until(
    probe: Callable[[], T | None],
    timeout: float = WAIT_S,
    describe: Callable[[], str] = lambda: "",
    poll_s: float = POLL_S,
) -> T:
    """The first true value of ``probe()``; fails the test with ``describe()`` after ``timeout``."""
    limit = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > limit:
            pytest.fail(f"nothing after {timeout} s\n{describe()}")
        time.sleep(poll_s)


class NodeProcess:
    """One process of node ``name`` (whose id is ``node_id``) and its output file.

    Failure messages show the output's last ``log_tail`` characters (all of it if None).
    """

    def __init__(
        self,
        name: str,
        node_id: str,
        popen: subprocess.Popen,
        log_path: Path,
        log_tail: int | None = None,
    ) -> None:
        self.name = name
        self.node_id = node_id
        self.popen = popen
        self.log_path = log_path
        self.log_tail = log_tail

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_end(self) -> str:
        """The output as failure messages show it."""
        log = self.log()
        return log if self.log_tail is None else log[-self.log_tail :]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = WAIT_S) -> int:
        """The exit status (negative: killed by that signal); fails the test after ``timeout``."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {self.node_id} still runs after {timeout} s:\n{self.log_end()}")

    def wait_log(self, pattern: str, timeout: float = WAIT_S) -> re.Match:
        """The first match of ``pattern`` in the node's output, once it appears."""
        limit = time.monotonic() + timeout
        while True:
            exited = not self.alive()  # read the log after this, so an exit's last lines count
            match = re.search(pattern, self.log())
            if match:
                return match
            if exited or time.monotonic() > limit:
                state = f"exited with {self.popen.returncode}" if exited else f"{timeout} s passed"
                pytest.fail(
                    f"{pattern!r} not in node {self.node_id}'s log ({state}):\n{self.log_end()}"
                )
            time.sleep(POLL_S)


class NodeGroup:
    """The nodes of one test's cluster, every one running ``args`` (the program and its
    arguments) with the bootstrap ``options``.

    ``prefix`` begins the cluster's name; a node's id is its name and ``id_suffix``; failure
    messages show each node's last ``log_tail`` characters of output (all if None); waits
    look every ``poll_s`` seconds. A subclass adds lines to failure messages in
    :meth:`details`.
    """

    def __init__(
        self,
        root: Path,
        prefix: str,
        args: Iterable[str | Path],
        *,
        options: Iterable[str | Path] = (),
        id_suffix: str = "",
        log_tail: int | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.root = root
        self.args = [str(arg) for arg in args]
        self.options = [str(option) for option in options]
        self.name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.port = random.randint(20000, 60000)
        self.env = clean_env(root)
        self.id_suffix = id_suffix
        self.log_tail = log_tail
        self.poll_s = poll_s
        self.processes: list[NodeProcess] = []

    def node_id(self, name: str) -> str:
        return f"{name}{self.id_suffix}"

    def settings(self, name: str) -> dict[str, str]:
        return {
            "failover.interface": "127.0.0.1",
            "failover.ttl": "0",
            "failover.group": GROUP,
            "failover.port": str(self.port),
            "failover.cluster": self.name,
            "failover.delay": str(DELAY_MS),
            "failover.retries": str(RETRIES),
            "failover.node-id": self.node_id(name),
            "cache.directory": str(self.root / "state" / name),
        }

    def start(
        self,
        name: str,
        *defines: str,
        options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> NodeProcess:
        """Start node ``name`` (again, with its folder, if it ran before); ``defines``
        (``key=value``) replace or add settings, ``options`` follow the group's, ``env``
        adds to the group's environment."""
        settings = self.settings(name)
        settings.update(define.split("=", 1) for define in defines)  # type: ignore[misc]
        command = [sys.executable, "-m", "agent.bootstrap", "--failover", *self.options, *options]
        for key, value in settings.items():
            command += ["-D", f"{key}={value}"]
        command += self.args
        log_path = self.root / f"{name}.{len(self.processes)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env={**self.env, **(env or {})},
            )
        process = NodeProcess(name, self.node_id(name), popen, log_path, self.log_tail)
        self.processes.append(process)
        return process

    def process(self, node_id: str) -> NodeProcess:
        """The latest process of the node with this id."""
        return [p for p in self.processes if p.node_id == node_id][-1]

    def revive(self) -> list[str]:
        """Restart every node whose latest process has ended (killed, or a demoted loser);
        their names."""
        latest = {p.name: p for p in self.processes}
        dead = [name for name, p in latest.items() if not p.alive()]
        for name in dead:
            self.start(name)
        return dead

    def wait_until(self, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
        return wait_until(probe, timeout, self.describe, self.poll_s)

    def describe(self) -> str:
        """Every node's output and the :meth:`details`, for failure messages."""
        parts = [f"--- {p.log_path.name}:\n{p.log_end()}" for p in self.processes]
        return "\n".join([*parts, *self.details()])

    def details(self) -> list[str]:
        """More lines for :meth:`describe`: what the nodes wrote besides their output."""
        return []


def kill_all(processes: Iterable[NodeProcess]) -> None:
    """SIGKILL every process that still runs, then reap them all."""
    processes = list(processes)
    for process in processes:
        if process.alive():
            process.popen.kill()
    for process in processes:
        try:
            process.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel owes us this
            pass


@contextmanager
def killing_all(make: Callable[..., G]) -> Iterator[Callable[..., G]]:
    """``make`` (which makes a group), each process of each group it made killed at the end.

    For a fixture: ``with killing_all(Group) as make: yield make(tmp_path)``.
    """
    made: list[G] = []

    def tracked(*args: object, **kwargs: object) -> G:
        made.append(make(*args, **kwargs))
        return made[-1]

    try:
        yield tracked
    finally:
        kill_all(process for group in made for process in group.processes)
