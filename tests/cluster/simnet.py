"""A simulated cluster: election machines on a simulated clock and network.

Owns the test harness only: nodes (an :class:`cluster.election.Election` plus
what the real driver does around it: sequence numbers, the persisted epoch, a
supervisor that restarts a node that stepped down), a network with loss,
delay, duplication and partitions, processes that can be killed, stopped
(SIGTERM), paused and resumed, and a monitor that records every promotion and
every moment two nodes could run the adapter at once. A process that dies with its
host up closes its replication links, and its slaves find its port refused (as
the follower reports it, :meth:`cluster.election.Election.master_gone`); a host
that vanishes refuses nothing. No sockets, no sleeping:
one scenario of a minute of cluster time runs in milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Callable

from cluster.election import (
    Demote,
    Election,
    Follow,
    PersistEpoch,
    Promote,
    Send,
    State,
    Timing,
)
from cluster.protocol import Heartbeat, Role

RESTART_AFTER = 0.3  # the supervisor restarts a node that stepped down after this long


@dataclass
class Promotion:
    node: str
    epoch: int
    at: float


@dataclass
class Episode:
    """A stretch of time during which two or more nodes could run the adapter."""

    start: float
    end: float
    nodes: frozenset
    excused: bool  # the masters could not hear each other (a partition) at some point


class SimNode:
    def __init__(self, net: SimNet, node_id: str, priority: int) -> None:
        self.net = net
        self.node_id = node_id
        self.priority = priority
        self.stored_epoch = 0  # what PersistEpoch wrote: survives kill and restart
        self.stored_history: list[int] = []
        self.machine: Election | None = None
        self.incarnation = 0
        self.seq = 0
        self.paused = False
        self.buffer: list[Heartbeat] = []  # packets that arrived while paused
        self.generation = 0  # invalidates scheduled ticks of an older process or deadline
        self.exit_codes: list[int] = []
        self.supervised = True
        self.port = 0  # the replication port of this process (a new one at each boot)

    @property
    def alive(self) -> bool:
        return self.machine is not None

    # -- process life ----------------------------------------------------------------------

    def boot(self) -> None:
        now = self.net.now
        self.incarnation += 1
        self.port = next(self.net.ports)
        self.seq = 0
        self.paused = False
        self.buffer.clear()
        self.machine = Election(
            self.node_id,
            self.priority,
            self.net.timing,
            epoch=self.stored_epoch,
            incarnation=self.incarnation,
        )
        self.apply(self.machine.start(now))

    def kill(self, host_up: bool = True) -> None:
        """kill -9: nothing more is sent. With its host up, the kernel closes the
        process's replication links: its slaves notice and find its port refused, its
        master notices a slave gone; when the host vanishes (``host_up=False``) nothing
        tells anyone."""
        machine = self.machine
        self.machine = None
        self.paused = False
        self.generation += 1
        if host_up and machine is not None:
            self.net.links_closed(self, machine)
        self.net.changed()

    def vanish(self) -> None:
        """The host or its network is gone (SIGSTOP forever, a cut cable): only silence."""
        self.kill(host_up=False)

    def link_closed(self, master: SimNode, port: int, epoch: int, closed_at: float) -> None:
        """Our follower's link to ``master`` closed; its reconnection is refused now."""
        if self.machine is not None and not self.paused:
            self.apply(self.machine.master_gone("127.0.0.1", port, epoch, closed_at, self.net.now))

    def slave_link_closed(self) -> None:
        if self.machine is not None and not self.paused:
            self.apply(self.machine.reassure(self.net.now))

    def terminate(self) -> None:
        """SIGTERM: resign (three copies of the goodbye, as the driver sends), then exit."""
        if self.machine is None:
            return
        for action in self.machine.stop(self.net.now):
            if isinstance(action, Send):
                for _ in range(3):
                    self.net.broadcast(self, self._heartbeat(action))
        self.exit_codes.append(0)
        self.kill()

    def pause(self) -> None:
        if self.alive:
            self.paused = True
            self.net.changed()

    def resume(self) -> None:
        if not self.alive or not self.paused:
            return
        self.paused = False
        # as the driver does: a master looks at the clock first, then at what waited in
        # the socket buffer; any other node reads the buffer first
        clock_first = self.machine.state is State.MASTER
        if clock_first:
            self.apply(self.machine.tick(self.net.now))
        pending, self.buffer = self.buffer, []
        for hb in pending:
            if self.machine is None:
                break
            self.apply(self.machine.receive(hb, self.net.now))
        if not clock_first and self.machine is not None:
            self.apply(self.machine.tick(self.net.now))
        self.net.changed()

    # -- driver ----------------------------------------------------------------------------

    def deliver(self, hb: Heartbeat) -> None:
        if self.machine is None:
            return
        if self.paused:
            self.buffer.append(hb)
            return
        self.apply(self.machine.receive(hb, self.net.now))

    def on_tick(self, generation: int) -> None:
        if self.machine is None or self.paused or generation != self.generation:
            return
        self.apply(self.machine.tick(self.net.now))

    def apply(self, actions: list) -> None:
        machine = self.machine
        assert machine is not None
        for action in actions:
            if isinstance(action, Send):
                self.net.broadcast(self, self._heartbeat(action))
            elif isinstance(action, PersistEpoch):
                assert action.epoch > self.stored_epoch, "an epoch must never repeat on a node"
                self.stored_epoch = action.epoch
                self.stored_history.append(action.epoch)
            elif isinstance(action, Promote):
                self.net.promotions.append(Promotion(self.node_id, action.epoch, self.net.now))
            elif isinstance(action, Follow):
                pass
            elif isinstance(action, Demote):
                self.net.demotions.append((self.node_id, self.net.now, action.reason))
                self.exit_codes.append(75)
                self.kill()
                if self.supervised:
                    self.net.at(self.net.now + RESTART_AFTER, self._restart_if_dead)
                return
        self.net.changed()
        if self.machine is not None:
            self.generation += 1
            deadline = self.machine.deadline
            if deadline != float("inf"):
                # timers fire a little late, never early
                jitter = self.net.rng.uniform(0, self.net.timer_jitter)
                self.net.at(max(deadline, self.net.now) + jitter, self.on_tick, self.generation)

    def _restart_if_dead(self) -> None:
        if not self.alive:
            self.boot()

    def _heartbeat(self, send: Send) -> Heartbeat:
        self.seq += 1
        return Heartbeat(
            cluster="sim",
            node_id=self.node_id,
            role=send.role,
            epoch=send.epoch,
            priority=self.priority,
            incarnation=self.incarnation,
            seq=self.seq,
            sent_ms=int(self.net.now * 1000),
            host="127.0.0.1",
            port=self.port,
            data_epoch=self.machine.data_position[0] if self.machine else 0,
            data_seq=self.machine.data_position[1] if self.machine else 0,
        )


@dataclass
class SimNet:
    timing: Timing
    seed: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    min_delay: float = 0.0005
    max_delay: float = 0.003
    timer_jitter: float = 0.002
    now: float = 0.0
    nodes: dict = field(default_factory=dict)
    promotions: list = field(default_factory=list)
    demotions: list = field(default_factory=list)
    episodes: list = field(default_factory=list)
    codec: object = None  # a cluster.protocol.Codec: packets go through encode/decode

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._queue: list = []
        self._counter = itertools.count()
        self.groups: dict[str, int] = {}  # partition: node -> side; same side hears each other
        self._episode_start: float | None = None
        self._episode_nodes: set = set()
        self._episode_excused = False
        self.packets_sent = 0
        self.ports = itertools.count(4000)
        self.gone_reports = 0  # refusals delivered to slaves of a dead master process

    # -- set-up ----------------------------------------------------------------------------

    def add(self, node_id: str, priority: int = 100) -> SimNode:
        node = self.nodes[node_id] = SimNode(self, node_id, priority)
        return node

    def at(self, when: float, fn: Callable, *args: object) -> None:
        heapq.heappush(self._queue, (when, next(self._counter), fn, args))

    def run_until(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _, fn, args = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            fn(*args)
        self.now = max(self.now, until)
        self.changed()

    # -- network ---------------------------------------------------------------------------

    def partition(self, *sides: list) -> None:
        self.groups = {name: index for index, side in enumerate(sides) for name in side}
        self.changed()

    def heal(self) -> None:
        self.groups = {}
        self.changed()

    def connected(self, a: str, b: str) -> bool:
        return self.groups.get(a, 0) == self.groups.get(b, 0)

    def broadcast(self, sender: SimNode, hb: Heartbeat) -> None:
        self.packets_sent += 1
        payload: object = hb
        if self.codec is not None:
            payload = self.codec.encode(hb)
        for node in self.nodes.values():
            if node is sender or not self.connected(sender.node_id, node.node_id):
                continue
            if self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                delay = self.rng.uniform(self.min_delay, self.max_delay)
                self.at(self.now + delay, self._arrive, node, payload)

    def links_closed(self, dead: SimNode, machine: Election) -> None:
        """A process died with its host up: every replication link it had breaks."""
        for node in self.nodes.values():
            peer = node.machine
            if node is dead or peer is None or not self.connected(dead.node_id, node.node_id):
                continue
            if peer.state is State.SLAVE and peer.master == dead.node_id:
                closed = self.now + self.rng.uniform(self.min_delay, self.max_delay)
                refused = closed + self.rng.uniform(self.min_delay, self.max_delay)
                self.gone_reports += 1
                self.at(refused, node.link_closed, dead, dead.port, peer.epoch, closed)
            elif peer.state is State.MASTER and machine.master == node.node_id:
                self.at(self.now + self.rng.uniform(0, self.max_delay), node.slave_link_closed)

    def _arrive(self, node: SimNode, payload: object) -> None:
        if self.codec is not None:
            hb = self.codec.decode(payload, now_ms=int(self.now * 1000))
            if hb is None:
                return
        else:
            hb = payload
        node.deliver(hb)

    # -- monitor ---------------------------------------------------------------------------

    def acting_masters(self) -> list[str]:
        """Nodes that could run the adapter right now (alive, not paused, lease valid)."""
        return [
            n.node_id
            for n in self.nodes.values()
            if n.machine is not None and not n.paused and n.machine.is_master(self.now)
        ]

    def changed(self) -> None:
        masters = self.acting_masters()
        if len(masters) >= 2:
            if self._episode_start is None:
                self._episode_start = self.now
                self._episode_nodes = set()
                self._episode_excused = False
            self._episode_nodes.update(masters)
            if any(not self.connected(a, b) for a in masters for b in masters):
                self._episode_excused = True
        elif self._episode_start is not None:
            self.episodes.append(
                Episode(
                    self._episode_start,
                    self.now,
                    frozenset(self._episode_nodes),
                    self._episode_excused,
                )
            )
            self._episode_start = None

    def unexcused_overlap(self) -> float:
        """The longest time two connected nodes could both run the adapter."""
        return max((e.end - e.start for e in self.episodes if not e.excused), default=0.0)

    def settled(self) -> str | None:
        """None when exactly one master runs and every live node follows it; else why not."""
        live = [n for n in self.nodes.values() if n.machine is not None and not n.paused]
        masters = [n for n in live if n.machine.state is State.MASTER]
        if len(masters) != 1:
            return f"{len(masters)} masters: {[n.node_id for n in masters]}"
        master = masters[0]
        for n in live:
            if n is master:
                continue
            m = n.machine
            if m.state is not State.SLAVE or m.master != master.node_id:
                return f"{n.node_id} is {m.state.value} following {m.master}"
            if m.epoch != master.machine.epoch:
                return f"{n.node_id} follows epoch {m.epoch}, master has {master.machine.epoch}"
        return None

    def master(self) -> str | None:
        masters = [
            n.node_id
            for n in self.nodes.values()
            if n.machine is not None and n.machine.state is State.MASTER
        ]
        return masters[0] if len(masters) == 1 else None


def role_of(net: SimNet, node_id: str) -> Role | None:
    node = net.nodes[node_id]
    return None if node.machine is None else node.machine.role()
