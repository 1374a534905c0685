"""Tests for cluster.transport: real multicast on 127.0.0.1 with TTL 0, and the fault layer.

Every socket here sends only through 127.0.0.1 with TTL 0, to a random group and high port,
so nothing leaves the host and concurrent runs do not hear each other. Absence is checked
without sleeping: a marker datagram is sent after the one that must not arrive, and
loopback delivers datagrams in the order they were sent.
"""

from __future__ import annotations

import json
import logging
import random
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.transport import (
    FaultyTransport,
    MulticastTransport,
    TransportError,
    open_transport,
)

LOCAL = "127.0.0.1"
WAIT_S = 2.0


@pytest.fixture
def group_port() -> tuple[str, int]:
    rng = random.SystemRandom()
    return f"239.255.{rng.randint(1, 254)}.{rng.randint(1, 254)}", rng.randint(20000, 60000)


@pytest.fixture
def make(group_port: tuple[str, int]) -> Iterator[Callable[[], MulticastTransport]]:
    opened: list[MulticastTransport] = []

    def make() -> MulticastTransport:
        transport = MulticastTransport(*group_port, LOCAL, 0)
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


def receive_until(transport: object, count: int, timeout: float = WAIT_S) -> list[bytes]:
    """Datagrams from ``transport`` until ``count`` arrived or ``timeout`` passed."""
    received: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([transport], [], [], left)
        if ready:
            received += transport.receive()  # type: ignore[attr-defined]
    return received


def test_every_transport_on_the_host_receives_each_datagram(
    make: Callable[[], MulticastTransport],
) -> None:
    a, b = make(), make()
    assert a.send(b"hello")
    assert receive_until(a, 1) == [b"hello"]  # the sender's own copy, through the loop
    assert receive_until(b, 1) == [b"hello"]
    assert a.receive() == [] and b.receive() == []
    assert a.send_errors == 0


def test_receive_respects_the_limit(make: Callable[[], MulticastTransport]) -> None:
    a, b = make(), make()
    assert a.receive() == []
    sent = [bytes([i]) for i in range(5)]
    for data in sent:
        assert a.send(data)
    # Each datagram reaches every member in one pass: once b has all five, so has a.
    assert receive_until(b, 5) == sent
    assert a.receive(limit=2) == sent[:2]
    assert a.receive() == sent[2:]


def test_close_is_quiet_and_idempotent(make: Callable[[], MulticastTransport]) -> None:
    a = make()
    a.close()
    a.close()
    assert a.fileno() == -1
    assert a.send(b"x") is False and a.send_errors == 1
    assert a.receive() == [] and a.receive_errors == 1


def test_context_manager(group_port: tuple[str, int]) -> None:
    with MulticastTransport(*group_port, LOCAL, 0) as t:
        assert t.fileno() >= 0
    assert t.fileno() == -1


@pytest.mark.parametrize(
    ("group", "interface", "port", "ttl", "message"),
    [
        ("10.0.0.1", LOCAL, 30000, 0, "multicast group 10.0.0.1 must be a multicast address"),
        ("239.1.2", LOCAL, 30000, 0, "multicast group '239.1.2' is not an IPv4 address"),
        ("239.1.2.3", "239.1.2.4", 30000, 0, "interface 239.1.2.4 must be a local unicast"),
        ("239.1.2.3", "eth0", 30000, 0, "interface 'eth0' is not an IPv4 address"),
        ("239.1.2.3", LOCAL, 0, 0, "port 0 must be from 1 to 65535"),
        ("239.1.2.3", LOCAL, 30000, 256, "TTL 256 must be from 0 to 255"),
        (
            "239.1.2.3",
            "203.0.113.77",
            30000,
            0,
            "cannot set up listening on 239.1.2.3:30000 (interface 203.0.113.77)",
        ),
    ],
)
def test_bad_addresses(group: str, interface: str, port: int, ttl: int, message: str) -> None:
    with pytest.raises(TransportError) as info:
        MulticastTransport(group, port, interface, ttl)
    assert message in str(info.value)


def test_foreign_interface_hint() -> None:
    with pytest.raises(TransportError, match=r"set failover\.interface to a local IPv4 address"):
        MulticastTransport("239.1.2.3", 30000, "203.0.113.77", 0)


class FakeTransport:
    """An in-memory transport: records what is sent, hands out what is put in ``inbox``."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.inbox: list[bytes] = []
        self.send_errors = 0
        self.closed = False

    def fileno(self) -> int:
        return 42

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True

    def receive(self, limit: int = 64) -> list[bytes]:
        out, self.inbox = self.inbox[:limit], self.inbox[limit:]
        return out

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def control(tmp_path: Path) -> Path:
    return tmp_path / "faults.json"


def set_faults(path: Path, clock: Clock | None = None, **faults: object) -> None:
    path.write_text(json.dumps(faults))
    if clock is not None:
        clock.now += 0.06  # the layer looks at the file at most every 50 ms


def test_fault_layer_drops_and_resumes(control: Path) -> None:
    inner, clock = FakeTransport(), Clock()
    faulty = FaultyTransport(inner, str(control), seed=1, clock=clock)
    set_faults(control, clock, drop_out=True)
    assert faulty.send(b"a") is True  # lost on the way, as far as the sender knows
    assert inner.sent == []
    inner.inbox = [b"in"]
    assert faulty.receive() == [b"in"]
    set_faults(control, clock, drop_in=True)
    assert faulty.send(b"b") is True and inner.sent == [b"b"]
    inner.inbox = [b"x", b"y"]
    assert faulty.receive() == [] and inner.inbox == []  # drained, then dropped
    set_faults(control, clock, drop_in=False)
    inner.inbox = [b"z"]
    assert faulty.receive() == [b"z"]
    assert faulty.fileno() == 42 and faulty.send_errors == 0
    faulty.close()
    assert inner.closed


def test_fault_file_is_read_at_most_every_50_ms(control: Path) -> None:
    inner, clock = FakeTransport(), Clock()
    set_faults(control, drop_out=True)
    faulty = FaultyTransport(inner, str(control), clock=clock)
    faulty.send(b"1")
    set_faults(control, drop_out=False)
    clock.now += 0.049
    faulty.send(b"2")
    clock.now += 0.002
    faulty.send(b"3")
    assert inner.sent == [b"3"]


def test_loss_and_duplication(control: Path) -> None:
    inner, clock = FakeTransport(), Clock()
    faulty = FaultyTransport(inner, str(control), seed=5, clock=clock)
    set_faults(control, clock, duplicate=1.0)
    faulty.send(b"d")
    inner.inbox = [b"r"]
    assert inner.sent == [b"d", b"d"] and faulty.receive() == [b"r", b"r"]
    set_faults(control, clock, loss=1.0)
    faulty.send(b"l")
    inner.inbox = [b"r"]
    assert inner.sent == [b"d", b"d"] and faulty.receive() == []
    set_faults(control, clock, loss=0.5)
    for i in range(200):
        faulty.send(bytes([i]))
    assert 50 < len(inner.sent) - 2 < 150


def test_same_seed_same_faults(control: Path) -> None:
    set_faults(control, loss=0.3, duplicate=0.3)
    runs = []
    for _ in range(2):
        inner = FakeTransport()
        faulty = FaultyTransport(inner, str(control), seed=9, clock=Clock())
        for i in range(50):
            faulty.send(bytes([i]))
        runs.append(inner.sent)
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "content",
    [None, "{not json", '["drop_in"]', '{"drop_in": 1}', '{"loss": 2}', '{"los": 0.5}'],
)
def test_missing_or_bad_control_file_means_no_faults(
    control: Path, content: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    if content is not None:
        control.write_text(content)
    inner, clock = FakeTransport(), Clock()
    faulty = FaultyTransport(inner, str(control), clock=clock)
    with caplog.at_level(logging.WARNING, logger="cluster.transport"):
        for i in range(3):
            faulty.send(bytes([i]))
            clock.now += 0.06
    assert inner.sent == [b"\x00", b"\x01", b"\x02"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "injecting no faults" in warnings[0].getMessage()
    set_faults(control, clock, drop_out=True)
    faulty.send(b"gone")
    assert inner.sent[-1] == b"\x02"


def test_fault_layer_on_real_sockets(make: Callable[[], MulticastTransport], control: Path) -> None:
    clock = Clock()
    a, b = make(), make()
    faulty_a = FaultyTransport(a, str(control), clock=clock)
    set_faults(control, clock, drop_out=True)
    faulty_a.send(b"lost")
    b.send(b"marker")
    assert receive_until(b, 1) == [b"marker"]
    set_faults(control, clock, drop_in=True)
    b.send(b"ignored")
    assert receive_until(b, 1) == [b"ignored"]  # so a's socket has it too
    assert faulty_a.receive() == [] and a.receive() == []
    set_faults(control, clock)
    faulty_a.send(b"back")
    assert receive_until(b, 1) == [b"back"]
    assert receive_until(faulty_a, 1) == [b"back"]


def test_open_transport(group_port: tuple[str, int], control: Path) -> None:
    plain = open_transport(*group_port, LOCAL, 0, environ={})
    plain.close()
    assert isinstance(plain, MulticastTransport)
    environ = {"TWINWEAVE_FAULTS": str(control), "TWINWEAVE_FAULTS_SEED": "3"}
    faulty = open_transport(*group_port, LOCAL, 0, environ=environ)
    faulty.close()
    assert isinstance(faulty, FaultyTransport)
    assert isinstance(faulty.inner, MulticastTransport)
    assert faulty.fileno() == -1
    with pytest.raises(TransportError, match="TWINWEAVE_FAULTS_SEED='x' must be an integer"):
        open_transport(*group_port, LOCAL, 0, environ={**environ, "TWINWEAVE_FAULTS_SEED": "x"})
