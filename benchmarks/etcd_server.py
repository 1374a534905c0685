"""Real etcd servers for tests and benchmarks: one member or three, on loopback, in a folder.

Debian's ``etcd-server`` package provides ``etcd`` (``.ci/run`` installs it when it is
missing). Every member listens on 127.0.0.1 only, keeps its data under the folder given,
and is stopped (SIGKILL after a bounded wait) by :meth:`EtcdCluster.stop`. The election
timings are shortened (heartbeat 25 ms, election 250 ms) so that a member's death is
noticed within a test's patience and the server's smallest lease TTL is one second.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ETCD = shutil.which("etcd")


class EtcdMissing(RuntimeError):
    """No ``etcd`` executable on PATH."""


def need_etcd() -> str:
    """The etcd executable, or :class:`EtcdMissing` saying how to get it (tests fail on it,
    never skip)."""
    if ETCD is None:
        raise EtcdMissing("etcd is not installed: apt-get install -y etcd-server (.ci/run does)")
    return ETCD


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data: Path
    log: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=0.5) as answer:
                return json.loads(answer.read()).get("health") in ("true", True)
        except (OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class EtcdCluster:
    members: list[Member] = field(default_factory=list)

    @property
    def endpoints(self) -> str:
        return ",".join(m.url for m in self.members)

    def start(self, member: Member, state: str = "new") -> None:
        peers = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        command = [
            need_etcd(),
            "--name", member.name,
            "--data-dir", str(member.data),
            "--listen-client-urls", member.url,
            "--advertise-client-urls", member.url,
            "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-cluster", peers,
            "--initial-cluster-state", state,
            "--initial-cluster-token", "twinweave-test",
            "--heartbeat-interval", "25",
            "--election-timeout", "250",
        ]  # fmt: skip
        with open(member.log, "ab") as log:
            member.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.healthy() for m in self.members if m.alive()):
                return
            time.sleep(0.1)
        tails = {m.name: m.log.read_text(errors="replace")[-2000:] for m in self.members}
        raise RuntimeError(f"etcd did not become healthy in {timeout} s: {tails}")

    def kill(self, member: Member) -> None:
        if member.process is not None and member.process.poll() is None:
            member.process.kill()
            member.process.wait(5)

    def restart(self, member: Member) -> None:
        self.kill(member)
        self.start(member, state="existing")

    def leader(self) -> Member:
        """The member that is the raft leader now (asked of a live member)."""
        for m in self.members:
            if not m.alive():
                continue
            try:
                request = urllib.request.Request(
                    m.url + "/v3/maintenance/status", data=b"{}", method="POST"
                )
                with urllib.request.urlopen(request, timeout=1.0) as answer:
                    status = json.loads(answer.read())
            except OSError:
                continue
            leader_id = status.get("leader")
            if leader_id and leader_id == status.get("header", {}).get("member_id"):
                return m
        raise RuntimeError("no etcd member says it is the leader")

    def handled_requests(self) -> int:
        """Requests the live members served so far (``grpc_server_handled_total`` summed)."""
        total = 0
        for m in self.members:
            if not m.alive():
                continue
            try:
                with urllib.request.urlopen(m.url + "/metrics", timeout=2.0) as answer:
                    text = answer.read().decode("utf-8", "replace")
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("grpc_server_handled_total{"):
                    total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def stop(self) -> None:
        for m in self.members:
            if m.process is not None and m.process.poll() is None:
                m.process.terminate()
        for m in self.members:
            if m.process is not None:
                try:
                    m.process.wait(5)
                except subprocess.TimeoutExpired:
                    m.process.kill()
                    m.process.wait(5)


def start_cluster(folder: Path, size: int = 1) -> EtcdCluster:
    folder.mkdir(parents=True, exist_ok=True)
    ports = free_ports(2 * size)
    cluster = EtcdCluster()
    for i in range(size):
        cluster.members.append(
            Member(
                f"m{i}",
                ports[2 * i],
                ports[2 * i + 1],
                folder / f"m{i}.etcd",
                folder / f"m{i}.log",
            )
        )
    try:
        for m in cluster.members:
            cluster.start(m)
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster
