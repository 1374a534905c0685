"""One run of the fault campaign: hosts, nodes, a seeded schedule of faults, a clean end.

A run builds a :class:`~benchmarks.chaos.net.Lab` of 3 or 5 hosts, starts one real node per
host (``python -m benchmarks.chaos.node --failover`` with the campaign's adapter, which is
the example adapter plus a ledger), feeds its shared inbox a message every
``FEED_S`` and drives faults drawn from ``random.Random(seed)``:

- ``kill``: SIGKILL, the node restarted 0.5-2 s later;
- ``term``: SIGTERM (a clean resignation), restarted later;
- ``pause``: SIGSTOP for 1.5-4 takeover windows, then SIGCONT;
- ``restart``: SIGTERM and a new process at once;
- ``isolate``: the host's link down for 1.5-4 windows, then up;
- ``split``: 2/1 (3 hosts) or 3/2 (5 hosts) for 1.5-4 windows, then healed.

Two thirds of the faults hit the master of the moment, the rest any node. Between
faults, nodes that exited (killed, or demoted: exit 75) are started again. At the end
everything is healed and resumed, the inbox drains, every node must rejoin, and the nodes
are stopped with SIGTERM (slaves first). The campaign's own log, ``events.log``, has one
line per thing it did: ``MONOTONIC EVENT ARGS``; the nodes' stamped output is
``NODE.K.log``; the adapter's trace is ``trace``. :mod:`benchmarks.chaos.check` judges
the run from these files and the folders alone.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.chaos.check import message_name, message_text
from benchmarks.chaos.net import ETCD_ADDRESS, Lab

REPO = Path(__file__).resolve().parents[2]
ADAPTER = REPO / "benchmarks" / "chaos" / "adapter.py"
POINTCUTS = REPO / "examples" / "aop.xml"
FEED_S = 0.03
PORT = 45000
ETCD_URL = f"http://{ETCD_ADDRESS}:2379"
KINDS = ("kill", "term", "pause", "restart", "isolate", "split")
SETTLE_S = 40.0  # the most the end of a run may wait for the nodes to drain and rejoin
STOP_S = 15.0  # the most a node may take to stop on SIGTERM before it is killed
ROLE_LINE = re.compile(
    r"^(\d+\.\d+) \w+ cluster (?:Promoted to Master node \(epoch (\d+)|"
    r"Following master (\S+) \(epoch (\d+)\))"
)


@dataclass(frozen=True)
class Plan:
    """What one run does: its seed, hosts, backend, timing and number of faults."""

    seed: int
    hosts: int = 3
    backend: str = "multicast"
    delay_ms: int = 150
    retries: int = 3
    faults: int = 4

    @property
    def window_s(self) -> float:
        """The takeover window: ``delay * retries``; on etcd the lease, in whole seconds."""
        window = self.delay_ms * self.retries / 1000
        return float(max(1, math.ceil(window))) if self.backend == "etcd" else window


class Run:
    """The processes and the log of one run in ``folder`` (see the module's docstring)."""

    def __init__(self, plan: Plan, folder: Path) -> None:
        self.plan = plan
        self.folder = folder
        self.rng = random.Random(plan.seed)
        self.inbox = folder / "in"
        self.outbox = folder / "out"
        self.names = [f"n{i}" for i in range(1, plan.hosts + 1)]
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}
        self.paused: set[str] = set()
        self.fed = 0
        self._feeding = threading.Event()
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._log = open(folder / "events.log", "a", encoding="utf-8")
        self.lab: Lab | None = None
        self.etcd: subprocess.Popen | None = None

    # -- the campaign's log ------------------------------------------------------------------

    def note(self, event: str, *args: object) -> None:
        with self._lock:
            line = " ".join([f"{time.monotonic():.6f}", event, *map(str, args)])
            self._log.write(line + "\n")
            self._log.flush()

    # -- nodes -------------------------------------------------------------------------------

    def settings(self, name: str) -> dict[str, str]:
        i = self.names.index(name) + 1
        settings = {
            "failover.interface": Lab.address(i),
            "failover.ttl": "1",
            "failover.group": "230.0.0.1",
            "failover.port": str(PORT),
            "failover.cluster": "chaos",
            "failover.delay": str(self.plan.delay_ms),
            "failover.retries": str(self.plan.retries),
            "failover.node-id": name,
            "cache.directory": str(self.folder / "state" / name),
        }
        if self.plan.backend == "etcd":
            settings["failover.backend"] = "etcd"
            settings["failover.etcd.endpoints"] = ETCD_URL
        return settings

    def start(self, name: str, why: str = "start") -> None:
        assert self.lab is not None
        command = [sys.executable, "-m", "benchmarks.chaos.node", "--failover"]
        command += ["--pointcuts", str(POINTCUTS)]
        for key, value in self.settings(name).items():
            command += ["-D", f"{key}={value}"]
        command += [str(ADAPTER), "--in", str(self.inbox), "--out", str(self.outbox)]
        command += ["--trace", str(self.folder / "trace"), "--poll-ms", "20", "--delay-ms", "5"]
        count = self.starts.get(name, 0)
        self.starts[name] = count + 1
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINWEAVE_", "AGENT_"))}
        env["PYTHONPATH"] = str(REPO)
        env["XDG_CACHE_HOME"] = str(self.folder / "xdg")
        with open(self.folder / f"{name}.{count}.log", "wb") as log:
            popen = subprocess.Popen(
                self.lab.command(self.names.index(name) + 1, command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=env,
            )
        self.procs[name] = popen
        self.paused.discard(name)
        self.note(why, name, popen.pid)

    def alive(self, name: str) -> bool:
        popen = self.procs.get(name)
        return popen is not None and popen.poll() is None

    def reap(self) -> None:
        """Log the exit of every node process that ended since the last look."""
        with self._lock:
            ended = [
                (name, popen)
                for name, popen in self.procs.items()
                if popen.poll() is not None and not getattr(popen, "_noted", False)
            ]
            for _, popen in ended:
                popen._noted = True  # type: ignore[attr-defined]
        for name, popen in ended:
            self.note("exit", name, popen.returncode)

    def watch(self) -> None:
        """Exits logged within 50 ms of happening, whatever the main thread is doing."""
        while not self._ended.wait(0.05):
            self.reap()

    def revive(self) -> None:
        self.reap()
        for name in self.names:
            if not self.alive(name):
                self.start(name, "restart")

    def signal(self, name: str, sig: signal.Signals) -> None:
        popen = self.procs.get(name)
        if popen is not None and popen.poll() is None:
            popen.send_signal(sig)

    def roles(self) -> dict[str, tuple[str, int]]:
        """Each live node's latest role line: ("master", epoch) or (master's id, epoch)."""
        found = {}
        for name in self.names:
            if not self.alive(name):
                continue
            k = self.starts[name] - 1
            try:
                text = (self.folder / f"{name}.{k}.log").read_text(errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                match = ROLE_LINE.match(line)
                if match and match.group(2):
                    found[name] = ("master", int(match.group(2)))
                elif match:
                    found[name] = (match.group(3), int(match.group(4)))
        return found

    def master(self) -> str | None:
        roles = self.roles()
        masters = [n for n, (role, _) in roles.items() if role == "master"]
        if len(masters) == 1:
            return masters[0]
        return max(masters, key=lambda n: roles[n][1]) if masters else None

    # -- the workload ------------------------------------------------------------------------

    def feed(self) -> None:
        while not self._feeding.wait(FEED_S):
            name = message_name(self.fed)
            temp = self.inbox / f".{name}.part"
            temp.write_text(message_text(self.fed), encoding="utf-8")
            os.replace(temp, self.inbox / name)
            self.fed += 1

    # -- faults ------------------------------------------------------------------------------

    def hold(self, low: float = 1.5, high: float = 4.0) -> float:
        return self.plan.window_s * self.rng.uniform(low, high)

    def target(self) -> tuple[str, str]:
        master = self.master()
        if master is not None and self.rng.random() < 2 / 3:
            return master, "master"
        name = self.rng.choice(self.names)
        return name, "master" if name == master else "slave"

    def fault(self, kind: str) -> None:
        assert self.lab is not None
        name, role = self.target()
        i = self.names.index(name) + 1
        if kind == "split":
            others = [n for n in self.names if n != name]
            self.rng.shuffle(others)
            small = [name, *others[: len(self.names) // 2 - 1]]
            big = [n for n in self.names if n not in small]
            self.note("fault", kind, name, role, ",".join(small) + "|" + ",".join(big))
            self.lab.split(self.names.index(n) + 1 for n in small)
        elif kind == "isolate":
            rest = ",".join(n for n in self.names if n != name)
            self.note("fault", kind, name, role, f"{name}|{rest}")
        else:
            self.note("fault", kind, name, role)
        if kind == "kill":
            self.signal(name, signal.SIGKILL)
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.revive()
        elif kind == "term":
            self.signal(name, signal.SIGTERM)
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.revive()
        elif kind == "restart":
            self.signal(name, signal.SIGTERM)
            popen = self.procs.get(name)
            if popen is not None:
                try:
                    popen.wait(STOP_S)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
            self.revive()
        elif kind == "pause":
            self.signal(name, signal.SIGSTOP)
            self.paused.add(name)
            time.sleep(self.hold())
            self.signal(name, signal.SIGCONT)
            self.paused.discard(name)
            self.note("resume", name)
        elif kind == "isolate":
            self.lab.isolate(i)
            time.sleep(self.hold())
            self.lab.heal()
            self.note("heal")
        elif kind == "split":
            time.sleep(self.hold())
            self.lab.heal()
            self.note("heal")

    # -- the run -----------------------------------------------------------------------------

    def start_etcd(self) -> None:
        assert self.lab is not None
        data = self.folder / "etcd"
        command = [
            "etcd",
            "--name",
            "m0",
            "--data-dir",
            str(data),
            "--listen-client-urls",
            ETCD_URL,
            "--advertise-client-urls",
            ETCD_URL,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "m0=http://127.0.0.1:2380",
            "--heartbeat-interval",
            "25",
            "--election-timeout",
            "250",
        ]
        with open(self.folder / "etcd.log", "wb") as log:
            self.etcd = subprocess.Popen(
                self.lab.in_switch(command), stdout=log, stderr=subprocess.STDOUT
            )
        probe = "import urllib.request as u; u.urlopen(%r, timeout=0.5).read()" % (
            ETCD_URL + "/health"
        )
        limit = time.monotonic() + 20
        while time.monotonic() < limit:
            done = subprocess.run(
                self.lab.in_switch([sys.executable, "-c", probe]), capture_output=True, timeout=10
            )
            if done.returncode == 0:
                self.note("etcd", "healthy")
                return
            time.sleep(0.2)
        raise RuntimeError("etcd did not answer in 20 s: see etcd.log")

    def settled(self) -> bool:
        """Inbox empty, every node alive, one master, every other node following it."""
        self.reap()
        if os.listdir(self.inbox) or not all(self.alive(n) for n in self.names):
            return False
        roles = self.roles()
        masters = [n for n, (role, _) in roles.items() if role == "master"]
        if len(masters) != 1 or len(roles) != len(self.names):
            return False
        epoch = roles[masters[0]][1]
        return all(roles[n] == (masters[0], epoch) for n in self.names if n != masters[0])

    def execute(self) -> None:
        for folder in (self.inbox, self.outbox, self.folder / "state"):
            folder.mkdir(parents=True, exist_ok=True)
        self.note(
            "plan",
            f"seed={self.plan.seed}",
            f"hosts={self.plan.hosts}",
            f"backend={self.plan.backend}",
            f"window={self.plan.window_s}",
        )
        self.lab = Lab(self.plan.hosts)
        feeder = threading.Thread(target=self.feed, daemon=True)
        watcher = threading.Thread(target=self.watch, daemon=True)
        watcher.start()
        try:
            if self.plan.backend == "etcd":
                self.start_etcd()
            for name in self.names:
                self.start(name)
            limit = time.monotonic() + SETTLE_S
            while self.master() is None and time.monotonic() < limit:
                time.sleep(0.1)
            feeder.start()
            time.sleep(2 * self.plan.window_s)
            for _ in range(self.plan.faults):
                self.fault(self.rng.choice(KINDS))
                time.sleep(self.rng.uniform(0.3, 2.5))
                self.revive()
            self._feeding.set()
            feeder.join()
            self.note("fed", self.fed)
            self.lab.heal()
            for name in self.names:
                self.signal(name, signal.SIGCONT)
            self.revive()
            limit = time.monotonic() + SETTLE_S
            while not self.settled():
                if time.monotonic() > limit:
                    self.note("unsettled")
                    break
                time.sleep(0.1)
                self.revive()
            else:
                self.note("settled", self.master())
            self.stop_nodes()
        finally:
            self._feeding.set()
            self._ended.set()
            watcher.join()
            self.close()

    def stop_nodes(self) -> None:
        master = self.master()
        order = [n for n in self.names if n != master] + ([master] if master else [])
        for name in order:
            self.note("stop", name)
            self.signal(name, signal.SIGTERM)
            popen = self.procs[name]
            try:
                popen.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.note("stuck", name)
                popen.kill()
                popen.wait()
            self.reap()
        self.note("end")

    def close(self) -> None:
        for popen in self.procs.values():
            if popen.poll() is None:
                popen.kill()
        for popen in self.procs.values():
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.kill()
            self.etcd.wait(10)
        if self.lab is not None:
            self.lab.close()
            self.lab = None
        self._log.close()
