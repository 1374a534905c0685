"""Hosts as network namespaces on one bridge, and the link faults the campaign makes.

A :class:`Lab` is ``twc<PID>-sw`` (the switch: bridges ``br0`` and ``br1``, the etcd
server's address ``10.77.0.250`` on ``br0``) and ``twc<PID>-hN`` per host, each with an
``eth0`` (``10.77.0.N/24``) whose veth peer ``hN`` sits in the switch on ``br0``. Nothing
lives in the caller's namespace: multicast from the hosts reaches only the switch's
bridges, never a real interface.

Faults are what this machine allows without ``tc``, iptables or nft: a host's link taken
down (``isolate``), hosts moved to the second bridge (``split``: the two bridges never
meet), all links up and back on ``br0`` (``heal``).

Every namespace made is removed by :meth:`Lab.close` (its processes are SIGKILLed first).
:func:`sweep` removes what an earlier campaign left when it was killed before it could
clean up (its PID, in the names, no longer runs).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterable, Sequence

PREFIX = "twc"
SUBNET = "10.77.0"
ETCD_ADDRESS = f"{SUBNET}.250"


class LabError(RuntimeError):
    """An ``ip`` command failed: the lab could not be built or changed."""


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def kill_inside(namespace: str) -> None:
    """SIGKILL every process in ``namespace``."""
    try:
        pids = ip("netns", "pids", namespace).split()
    except LabError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def remove(names: Sequence[str]) -> None:
    """Kill what runs in each namespace, then delete it (its veth ends go with it)."""
    for name in names:
        kill_inside(name)
    for name in names:
        try:
            ip("netns", "delete", name)
        except LabError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Remove the namespaces of campaigns that no longer run; their names."""
    stale = []
    for name in namespaces():
        match = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            stale.append(name)
    remove(stale)
    return stale


class Lab:
    """``hosts`` namespaces on a switch; ``address(i)`` is host i's (1-based) address."""

    def __init__(self, hosts: int) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.hosts = [f"{self.prefix}-h{i}" for i in range(1, hosts + 1)]
        self.made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add(self.switch)
        for n, bridge in enumerate(("br0", "br1")):
            ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
            # a fixed address: a bridge otherwise takes its smallest port's, which changes
            # when a split moves that port away, and the hosts' ARP entries for etcd (on
            # br0) then point nowhere for seconds
            ip("-n", self.switch, "link", "set", bridge, "address", f"02:77:00:00:00:{n:02x}")
            # flood multicast to every port: no IGMP snooping between our own hosts
            ip("-n", self.switch, "link", "set", bridge, "type", "bridge", "mcast_snooping", "0")
            ip("-n", self.switch, "link", "set", bridge, "up")
        ip("-n", self.switch, "addr", "add", f"{ETCD_ADDRESS}/24", "dev", "br0")
        for i, host in enumerate(self.hosts, 1):
            self._add(host)
            port = f"h{i}"
            # made inside the switch, its other end moved straight into the host
            ip(
                "-n",
                self.switch,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host,
            )
            ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            ip("-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            ip("-n", host, "link", "set", "eth0", "up")
            # multicast leaves by eth0 even before a node sets IP_MULTICAST_IF
            ip("-n", host, "route", "add", "224.0.0.0/4", "dev", "eth0")

    @staticmethod
    def address(i: int) -> str:
        return f"{SUBNET}.{i}"

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host i."""
        return ["ip", "netns", "exec", self.hosts[i - 1], *argv]

    def in_switch(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.switch, *argv]

    def isolate(self, i: int) -> None:
        ip("-n", self.switch, "link", "set", f"h{i}", "down")

    def split(self, side: Iterable[int]) -> None:
        """Hosts ``side`` on the second bridge: they hear each other, not the rest (nor etcd)."""
        for i in side:
            ip("-n", self.switch, "link", "set", f"h{i}", "master", "br1")

    def heal(self) -> None:
        for i in range(1, len(self.hosts) + 1):
            ip("-n", self.switch, "link", "set", f"h{i}", "master", "br0", "up")

    def close(self) -> None:
        remove(self.made[::-1])
        self.made = []
