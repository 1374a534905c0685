"""Who is master: the election as a pure state machine (packets and time in, actions out).

Everything that decides a node's role lives here; nothing here touches a socket,
a clock, a thread or a file. The driver (``cluster.manager``) feeds the machine
the heartbeats it receives and the time, performs the actions it returns, in
order, and calls :meth:`Election.tick` when :attr:`Election.deadline` comes.
Because of that, whole clusters run in tests on a simulated clock and network
(``tests/cluster/simnet.py``), with loss, delay, duplication, partitions and
paused processes, hundreds of scenarios a second.

The rules are data, at the top: ``_ON_HEARTBEAT`` says what each state does with
each role heard, ``_DEADLINES`` which transitions time makes in each state; the
clock (:meth:`Election.tick`) and the wake-up it asks for (:attr:`Election.deadline`)
both read the second.

Theory of operation
-------------------
Every node multicasts a heartbeat every ``delay``: its role, the epoch it holds
(a master) or the highest it has seen (everyone else), its priority and the
position of its replicated state. A node's life::

    JOINING --window, no master--> CANDIDATE --its turn, still none--> MASTER
       |                              ^   |                              |
       +--hears a master--> SLAVE ----+   +--hears a master--> SLAVE     +--> STOPPED
                                                                  (resign, demotion)

- *Joining*: a starting node listens for ``retries * delay`` (the takeover
  window); a running master is heard in that time and the node becomes its
  slave. A node that comes back while a master runs therefore joins as a slave.
- *Losing the master*: a slave that hears nothing from its master for
  ``retries`` heartbeats (plus a quarter delay of slack), or hears it resign,
  becomes a candidate. So does one whose replication link to the master closed
  without a goodbye and whose reconnection the master's host refused, unless
  the master beats within ``settle``: its process is dead
  (:meth:`Election.master_gone`), and waiting out the window would only delay
  the takeover.
- *Candidates are staggered by rank* (as VRRP skews its timers): a new
  candidate sends a heartbeat at once, so that the others know its state's
  position as it is now; a quarter delay later the live candidates are ordered
  by that position (most up-to-date first: a write acknowledged by every live
  slave is never lost), then priority, then node id (smaller first), and the one
  of rank ``r`` claims ``r * delay / 2`` after that, unless a master was heard
  meanwhile. The best one claims first; the others hear it and follow. Nodes
  that start together elect the same one, by that rule, never by luck.
- *Promotion* takes ``max(every epoch seen) + 1``; the driver persists it
  (:class:`PersistEpoch`) before anything is announced with it, so the epoch
  survives restarts and never repeats on one node. A higher epoch heard from
  anyone is persisted as well, so a restarted node never takes one it heard held.
- *Two masters meet* (a healed partition, a simultaneous claim): the higher
  epoch wins; at equal epochs the higher priority, then the smaller node id.
  Only the loser steps down. A master that hears any node report a higher epoch
  than its own has been replaced and steps down too.
- *Lease*: a master may act only while its last heartbeat is younger than the
  takeover window; the earliest a slave can claim is one window after it
  *received* that heartbeat. A master whose process was paused longer than
  that finds its lease gone before it handles anything else, and steps down
  (:meth:`Election.is_master` says so to any thread that asks).
- Packets from one sender are applied in (incarnation, sequence) order; older
  and duplicate ones are ignored, so a late heartbeat never resurrects a master
  that has resigned.

Not here: the wire format (``cluster.protocol``), sockets and timers
(``cluster.manager``), persisting the epoch (the driver's job, told by
:class:`PersistEpoch`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple, Union

from cluster.protocol import Heartbeat, Role


class State(enum.Enum):
    JOINING = "joining"
    SLAVE = "slave"
    CANDIDATE = "candidate"
    MASTER = "master"
    STOPPED = "stopped"


# -- actions: what the driver must do, in the order given --------------------------------


class Send(NamedTuple):
    """Multicast a heartbeat now, with this role and epoch."""

    role: Role
    epoch: int


class PersistEpoch(NamedTuple):
    """Store ``epoch`` durably before performing the next action."""

    epoch: int


class Promote(NamedTuple):
    """This node is master from now on, with ``epoch``: start the adapter."""

    epoch: int
    reason: str


class Demote(NamedTuple):
    """This node must stop being master (or stop altogether): run stop hooks, exit."""

    reason: str


class Follow(NamedTuple):
    """This node now follows ``master`` (informational: logs, status, cache replication)."""

    master: str
    epoch: int


class MasterLost(NamedTuple):
    """The master went silent or resigned; an election is under way (informational)."""

    master: str | None
    reason: str


Action = Union[Send, PersistEpoch, Promote, Demote, Follow, MasterLost]


# -- the rules: what moves the machine, as data ------------------------------------------
#
# The entries name methods of :class:`Election` (below): the handler of a packet is
# called as ``handler(peer, now, actions)``, a deadline's ``due(now)`` says when it passes
# (``inf``: nothing pending) and ``fire(now, actions)`` is what then happens. A handler is
# only ever called in the state it is listed under, so none of them checks the state.

#: (state, role heard) -> handler; None: nothing happens. A STOPPED node hears nothing.
#: Heartbeats from nodes with a newer epoch than a master's own are caught by
#: _master_hears_node / _master_meets_master.
_ON_HEARTBEAT: dict[tuple[State, Role], str | None] = {
    (State.JOINING, Role.MASTER): "_hears_master",
    (State.JOINING, Role.SLAVE): None,
    (State.JOINING, Role.LEAVING): None,
    (State.SLAVE, Role.MASTER): "_slave_hears_master",
    (State.SLAVE, Role.SLAVE): None,
    (State.SLAVE, Role.LEAVING): "_slave_hears_leaving",
    (State.CANDIDATE, Role.MASTER): "_hears_master",
    (State.CANDIDATE, Role.SLAVE): None,
    (State.CANDIDATE, Role.LEAVING): "_candidate_hears_leaving",
    (State.MASTER, Role.MASTER): "_master_meets_master",
    (State.MASTER, Role.SLAVE): "_master_hears_node",
    (State.MASTER, Role.LEAVING): "_master_hears_node",
}


class _Deadline(NamedTuple):
    """A transition that time makes: once ``due(now)`` has come, ``fire(now, actions)``."""

    due: str
    fire: str


#: state -> its deadlines, in the order they are tried; the first one passed fires, and
#: the state it leads to is tried in turn (a slave's silent master makes it a candidate
#: that may claim in the same tick). :meth:`Election.tick` fires them and
#: :meth:`Election._reschedule` wakes the driver at the earliest, besides the next
#: heartbeat, which every running state sends every delay. A master's lease is no
#: deadline: its own heartbeat renews it before it ends, so only a pause lets it pass,
#: and then every input, not only the clock, must see that first (``_lease_lost``).
_DEADLINES: dict[State, tuple[_Deadline, ...]] = {
    State.JOINING: (_Deadline("_listening_ends", "_no_master_heard"),),
    State.SLAVE: (
        _Deadline("_master_silent_at", "_master_went_silent"),
        _Deadline("_gone_settled_at", "_master_process_died"),
    ),
    # peers only leave the ranking as time passes, so a claim time can only come sooner:
    # the next heartbeat tick (at most one delay away) re-evaluates it
    State.CANDIDATE: (_Deadline("_claim_time", "_promote"),),
    State.MASTER: (),
    State.STOPPED: (),
}


@dataclass
class Peer:
    """What this node last heard from another node."""

    node_id: str
    role: Role
    epoch: int
    priority: int
    incarnation: int
    seq: int
    heard: float
    data_epoch: int = 0
    data_seq: int = 0
    host: str = "0.0.0.0"
    port: int = 0
    #: when this incarnation of the peer was first heard (it may still be joining)
    first_heard: float = 0.0
    #: out of the ranking until heard again: it said goodbye, or it is the master this
    #: node stopped following (silent, dead or gone) and is replacing
    resigned: bool = False

    def rank_key(self) -> tuple[int, int, int, str]:
        return rank_key(self.data_epoch, self.data_seq, self.priority, self.node_id)


def rank_key(data_epoch: int, data_seq: int, priority: int, node_id: str) -> tuple:
    """Sort key of candidates: most up-to-date state, then priority, then smaller id, first."""
    return (-data_epoch, -data_seq, -priority, node_id)


def master_beats(a: tuple[int, int, str], b: tuple[int, int, str]) -> bool:
    """Does master ``a`` = (epoch, priority, node_id) win against master ``b``?"""
    if a[0] != b[0]:
        return a[0] > b[0]
    if a[1] != b[1]:
        return a[1] > b[1]
    return a[2] < b[2]


@dataclass(frozen=True)
class Timing:
    """The clock rules, from ``failover.delay`` and ``failover.retries``."""

    delay: float
    retries: int

    @property
    def window(self) -> float:
        """The takeover window: how long a master may be silent before slaves act."""
        return self.delay * self.retries

    @property
    def slack(self) -> float:
        """Tolerance for late heartbeats (scheduling, network) before a slave acts."""
        return self.delay / 4

    @property
    def skew(self) -> float:
        """Gap between two candidates' claims, by rank."""
        return self.delay / 2

    @property
    def settle(self) -> float:
        """How long a new candidate waits for the others' fresh positions before ranking."""
        return self.delay / 4


class Election:
    """One node's view of the election. Not thread-safe: one driver calls it."""

    def __init__(
        self,
        node_id: str,
        priority: int,
        timing: Timing,
        epoch: int = 0,
        incarnation: int = 0,
    ) -> None:
        self.node_id = node_id
        self.priority = priority
        self.timing = timing
        self.incarnation = incarnation
        self.state = State.JOINING
        #: the highest epoch this node has seen or held (persisted by the driver)
        self.known_epoch = epoch
        #: the epoch this node is master of, or the epoch of the master it follows
        self.epoch = epoch
        self.master: str | None = None
        self.peers: dict[str, Peer] = {}
        self.data_position: tuple[int, int] = (0, 0)
        self.deadline = float("inf")
        self.id_conflicts = 0
        #: process-death reports (:meth:`master_gone`) that did not match the master heard
        self.gone_ignored = 0
        #: (link closed at, reported at) of a process-death report awaiting its settle
        self._gone: tuple[float, float] | None = None
        self._next_beat = float("inf")
        self._lease_until = float("-inf")
        self._master_heard = float("-inf")
        self._lost_at = float("-inf")
        self._joined_at = float("-inf")
        self._last_echo = float("-inf")

    # -- inputs --------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """The node starts: announce itself and listen for a master for one window."""
        self.state = State.JOINING
        self._joined_at = now
        actions = self._beat(now)
        self._reschedule(now)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Time has reached :attr:`deadline` (calling it early or late is harmless)."""
        actions: list[Action] = []
        if self._lease_lost(now, actions):
            return actions
        self._fire_deadlines(now, actions)
        if self.state is not State.STOPPED and now >= self._next_beat:
            actions.extend(self._beat(now))
        self._forget_silent_peers(now)
        self._reschedule(now)
        return actions

    def receive(self, hb: Heartbeat, now: float) -> list[Action]:
        """A heartbeat of this cluster arrived (already decoded and authenticated)."""
        actions: list[Action] = []
        if self.state is State.STOPPED:
            return actions
        if self._lease_lost(now, actions):
            return actions
        if hb.node_id == self.node_id:
            if hb.incarnation != self.incarnation:
                self.id_conflicts += 1  # two live processes claim one id: the driver reports it
            return actions
        peer = self.peers.get(hb.node_id)
        if peer is not None and (hb.incarnation, hb.seq) <= (peer.incarnation, peer.seq):
            return actions  # a duplicate or a late packet: older news than we have
        peer = self._record(hb, now)
        if hb.epoch > self.known_epoch:
            # persisted too: a node that restarts alone must not take an epoch it heard
            # another node hold (found by the fault campaign, seed 4028: a slave paused
            # while a rival took epoch 3 heard it on waking, restarted, and took 3 again)
            self.known_epoch = hb.epoch
            actions.append(PersistEpoch(hb.epoch))
        handler = _ON_HEARTBEAT.get((self.state, hb.role))
        if handler is not None:
            getattr(self, handler)(peer, now, actions)
        self._reschedule(now)
        return actions

    def master_gone(
        self, host: str, port: int, epoch: int, closed_at: float, now: float
    ) -> list[Action]:
        """The master's process looks dead: its replication link closed without a goodbye
        at ``closed_at`` and its port at host:port then refused a connection.

        A refusal is the master's host saying that no process listens there, so this
        slave does not wait out the takeover window: it sends its position at once and,
        unless the master beats within ``settle`` (a live master answers a lost link with
        a heartbeat), stands at the end of it as if it had stood now, so that the
        best-ranked candidate claims at once and the others a skew apart, ranked by state
        position as always. Only when the report is about the master this slave follows
        as last heard: the same epoch, the address its latest heartbeat advertises (a
        restarted master listens on a new port), and no heartbeat of it since the link
        closed. Anything else is ignored and counted in :attr:`gone_ignored`. When the host
        or the network is gone nothing is refused, and silence rules.
        """
        actions: list[Action] = []
        if self.state is State.STOPPED or self._lease_lost(now, actions):
            return actions
        peer = self.peers.get(self.master) if self.master is not None else None
        if (
            self.state is not State.SLAVE
            or peer is None
            or peer.role is not Role.MASTER
            or epoch != self.epoch
            or peer.epoch != epoch
            or (peer.host, peer.port) != (host, port)
            or self._master_heard > closed_at
        ):
            self.gone_ignored += 1
            return actions
        if self._gone is None:
            self._gone = (closed_at, now)
            actions.extend(self._beat(now))  # our position now, for the ranking to come
        self._reschedule(now)
        return actions

    def reassure(self, now: float) -> list[Action]:
        """A slave's replication link to this master ended: beat now and again half a
        settle later, so that a slave that finds the port refused (whatever refused it)
        hears that the master lives, after it noticed the close and before its
        :meth:`master_gone` settle runs out."""
        actions: list[Action] = []
        if self.state is not State.MASTER or self._lease_lost(now, actions):
            return actions
        actions.extend(self._beat(now))
        self._next_beat = now + self.timing.settle / 2
        self._reschedule(now)
        return actions

    def stop(self, now: float) -> list[Action]:
        """The node is stopping (SIGTERM, Ctrl-C, the adapter ended): resign, say goodbye."""
        if self.state is State.STOPPED:
            return []
        epoch = self.epoch if self.state is State.MASTER else self.known_epoch
        self.state = State.STOPPED
        self.deadline = float("inf")
        return [Send(Role.LEAVING, epoch)]

    # -- questions -----------------------------------------------------------------------

    def is_master(self, now: float) -> bool:
        """May this node act as master now? False once the lease has run out."""
        return self.state is State.MASTER and now <= self._lease_until

    def role(self) -> Role:
        return Role.MASTER if self.state is State.MASTER else Role.SLAVE

    def live_peers(self, now: float) -> list[Peer]:
        horizon = now - self.timing.window - self.timing.slack
        return [p for p in self.peers.values() if p.heard >= horizon and not p.resigned]

    # -- packets (_ON_HEARTBEAT): what each state does with a heartbeat heard -----------

    def _hears_master(self, peer: Peer, now: float, actions: list[Action]) -> None:
        """JOINING or CANDIDATE hears a master: follow it, unless a newer epoch exists."""
        if peer.epoch < self.known_epoch:
            return  # a stale master (a newer epoch exists): it will hear the new one and go
        self._follow(peer, now, actions)

    def _slave_hears_master(self, peer: Peer, now: float, actions: list[Action]) -> None:
        """Our master beat; or another master: follow it unless ours wins their meeting."""
        if peer.node_id == self.master:
            if peer.epoch >= self.epoch:
                self.epoch = peer.epoch
                self._master_heard = now
            return
        current = self.peers.get(self.master) if self.master is not None else None
        if (
            current is not None
            and current.role is Role.MASTER
            and now - self._master_heard < (self.timing.window)
        ):
            mine = (self.epoch, current.priority, current.node_id)
            if not master_beats((peer.epoch, peer.priority, peer.node_id), mine):
                return  # our master wins the meeting; the other one will step down
        self._hears_master(peer, now, actions)

    def _slave_hears_leaving(self, peer: Peer, now: float, actions: list[Action]) -> None:
        """Someone is going away; if it is our master, the election starts now."""
        if peer.node_id == self.master:
            reason = f"master {peer.node_id} resigned"
            self._become_candidate(now, peer.node_id, reason, actions)
            self._fire_deadlines(now, actions)

    def _master_meets_master(self, peer: Peer, now: float, actions: list[Action]) -> None:
        """Two masters: the loser steps down, the winner makes itself heard at once."""
        theirs = (peer.epoch, peer.priority, peer.node_id)
        if master_beats(theirs, (self.epoch, self.priority, self.node_id)):
            self._demote(
                f"master {peer.node_id} holds epoch {peer.epoch} (ours {self.epoch}) and wins",
                actions,
            )
        elif now - self._last_echo >= self.timing.skew:
            self._last_echo = now
            actions.extend(self._beat(now))

    def _master_hears_node(self, peer: Peer, now: float, actions: list[Action]) -> None:
        """A node reporting a newer epoch than ours means we were replaced."""
        if peer.epoch > self.epoch:
            self._demote(
                f"node {peer.node_id} reports epoch {peer.epoch}, newer than ours ({self.epoch})",
                actions,
            )

    def _candidate_hears_leaving(self, peer: Peer, now: float, actions: list[Action]) -> None:
        """A better-ranked candidate left: our turn may have come."""
        self._fire_deadlines(now, actions)

    # -- deadlines (_DEADLINES): when each passes, and what happens then ------------------

    def _listening_ends(self, now: float) -> float:
        return self._joined_at + self.timing.window

    def _no_master_heard(self, now: float, actions: list[Action]) -> None:
        self._become_candidate(now, None, "no master heard since start", actions)

    def _master_silent_at(self, now: float) -> float:
        return self._master_heard + self.timing.window + self.timing.slack

    def _master_went_silent(self, now: float, actions: list[Action]) -> None:
        reason = f"no heartbeat from the master for {now - self._master_heard:.3f} s"
        self._become_candidate(now, self.master, reason, actions)

    def _gone_settled_at(self, now: float) -> float:
        gone = self._gone_pending()
        return float("inf") if gone is None else gone[1] + self.timing.settle

    def _master_process_died(self, now: float, actions: list[Action]) -> None:
        assert self._gone is not None  # its deadline passed: the report stands
        reason = (
            f"master {self.master} is gone: its link closed without a goodbye, its "
            "replication port refused, and it did not beat since"
        )
        self._become_candidate(now, self.master, reason, actions, since=self._gone[1])

    def _fire_deadlines(self, now: float, actions: list[Action]) -> None:
        """Make every transition whose time has come, from state to state."""
        while True:
            rows = _DEADLINES[self.state]
            passed = next((d for d in rows if now >= getattr(self, d.due)(now)), None)
            if passed is None:
                return
            getattr(self, passed.fire)(now, actions)

    # -- helpers -------------------------------------------------------------------------

    def _follow(self, peer: Peer, now: float, actions: list[Action]) -> None:
        changed = self.master != peer.node_id or self.state is not State.SLAVE
        if changed:
            self._gone = None
        self.state = State.SLAVE
        self.master = peer.node_id
        self.epoch = peer.epoch
        self._master_heard = now
        if changed:
            actions.append(Follow(peer.node_id, peer.epoch))

    def _become_candidate(
        self,
        now: float,
        master: str | None,
        reason: str,
        actions: list[Action],
        since: float | None = None,
    ) -> None:
        """Stand for election; ``since`` backdates the loss (a confirmed process death)."""
        self.state = State.CANDIDATE
        self._lost_at = now if since is None else since
        self._gone = None
        if master is not None:
            lost = self.peers.get(master)
            if lost is not None:
                lost.resigned = True  # out of the ranking: it is what we are replacing
        self.master = None
        actions.append(MasterLost(master, reason))
        # tell the others where our state stands now: heartbeats are up to a delay old, and
        # the most up-to-date node must win (every candidate ranks after `settle`)
        actions.extend(self._beat(now))

    def _rank(self, now: float) -> int:
        mine = rank_key(*self.data_position, self.priority, self.node_id)
        return sum(1 for p in self.live_peers(now) if p.rank_key() < mine)

    def _claim_time(self, now: float) -> float:
        """When this candidate claims: after every better-ranked one had its turn.

        A better-ranked peer heard for less than a window may still be joining: it
        stands only when its own listening window ends, so our turn is counted from
        the later of the two moments (else both could claim at once).
        """
        mine = rank_key(*self.data_position, self.priority, self.node_id)
        better = [p for p in self.live_peers(now) if p.rank_key() < mine]
        anchor = max([self._lost_at, *(p.first_heard + self.timing.window for p in better)])
        return anchor + self.timing.settle + len(better) * self.timing.skew

    def _promote(self, now: float, actions: list[Action]) -> None:
        epoch = max([self.known_epoch, *(p.epoch for p in self.peers.values())]) + 1
        self.state = State.MASTER
        self.master = self.node_id
        self.epoch = self.known_epoch = epoch
        rank = self._rank(now)
        actions.append(PersistEpoch(epoch))
        actions.append(Promote(epoch, f"rank {rank} among {len(self.live_peers(now)) + 1} nodes"))
        actions.extend(self._beat(now))
        # say it twice: the next candidate claims one skew later unless it hears this
        self._next_beat = now + self.timing.skew / 2

    def _demote(self, reason: str, actions: list[Action]) -> None:
        self.state = State.STOPPED
        self.deadline = float("inf")
        self._lease_until = float("-inf")
        actions.append(Demote(reason))

    def _lease_lost(self, now: float, actions: list[Action]) -> bool:
        if self.state is State.MASTER and now > self._lease_until:
            late = now - (self._lease_until - self.timing.window)
            self._demote(
                f"no heartbeat sent for {late:.3f} s, longer than the takeover window "
                f"({self.timing.window:.3f} s): the process was paused or starved",
                actions,
            )
            return True
        return False

    def _beat(self, now: float) -> list[Action]:
        self._next_beat = now + self.timing.delay
        if self.state is State.MASTER:
            self._lease_until = now + self.timing.window
            return [Send(Role.MASTER, self.epoch)]
        return [Send(Role.SLAVE, self.known_epoch)]

    def _record(self, hb: Heartbeat, now: float) -> Peer:
        peer = self.peers.get(hb.node_id)
        if peer is None:
            peer = self.peers[hb.node_id] = Peer(
                hb.node_id, hb.role, hb.epoch, hb.priority, hb.incarnation, hb.seq, now
            )
            peer.first_heard = now
        elif hb.incarnation != peer.incarnation:
            peer.first_heard = now  # restarted: joining again
        peer.role, peer.epoch, peer.priority = hb.role, hb.epoch, hb.priority
        peer.incarnation, peer.seq, peer.heard = hb.incarnation, hb.seq, now
        peer.data_epoch, peer.data_seq = hb.data_epoch, hb.data_seq
        peer.host, peer.port = hb.host, hb.port
        peer.resigned = hb.role is Role.LEAVING
        return peer

    def _forget_silent_peers(self, now: float) -> None:
        horizon = now - 20 * self.timing.window
        for node_id in [n for n, p in self.peers.items() if p.heard < horizon]:
            del self.peers[node_id]

    def _gone_pending(self) -> tuple[float, float] | None:
        """The process-death report still standing: none once the master beat after it."""
        if self._gone is not None and self._master_heard > self._gone[0]:
            self._gone = None
        return self._gone

    def _reschedule(self, now: float) -> None:
        if self.state is State.STOPPED:
            self.deadline = float("inf")
            return
        dues = [getattr(self, deadline.due)(now) for deadline in _DEADLINES[self.state]]
        self.deadline = min([self._next_beat, *dues])
