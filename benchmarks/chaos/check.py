"""The campaign's independent checker: one run judged from its files alone.

It reads the campaign's ``events.log`` (what was done to whom, when), each node's stamped
output (``NODE.K.log``: promotions, role lines, tracebacks), the adapter's ``trace``, the
inbox, the outbox and the final master's ledger (its sqlite file, read directly). It never
asks a node anything and never trusts a node's verdict about itself. All times are
``time.monotonic()`` of the machine (one clock for every namespace).

What it reports (:func:`check_run`):

- **double masters**: two nodes acting as master at once. A node acts as master at epoch
  E from its adapter's ``start`` to the last thing others can see it do at E (``VISIBLE``:
  publish, record, remove; a paused master that does nothing more after it wakes stopped
  acting when it was paused). Overlaps are split into
  the part inside a partition (from the fault to its heal plus the fencing window, one
  takeover window: the time two masters need to meet) and the part outside it; only the
  latter is a failure on multicast (which has no quorum by design); on etcd any overlap is.
- **acknowledged writes lost**: ``acked`` entries (written with ``cache.replication=sync``
  before being traced) missing from the final master's ledger. Two kinds are counted
  apart, as the contract allows them: a write acknowledged while its master counted no
  slave live (from its log's "slave X is live" and "replication to X ... closed" lines:
  "a write survives the master's crash when any slave was live"; a master cut off by a
  partition drops its slaves this way), and a write acknowledged by the side of a
  partition that lost: by a master that had a rival during a partition, or that a master
  promoted on the other side replaced (multicast has no quorum: at the heal one side's
  writes give way;
  on etcd, the cut-off master acknowledges with the slaves on its side until its lease
  runs out). Any other loss is a failure.
- **epochs**: a node promoted twice at one epoch or to a lower one (never allowed); one
  epoch promoted by two nodes (outside partitions: a failure).
- **files**: inputs lost (neither delivered nor left), delivered twice (two ``linked``
  lines), half-written (temp files left, or an output that is not its input upper-cased
  plus one header naming the node that linked it), failed.
- **nodes**: nodes that did not end following the final master, processes that crashed
  (a traceback, or an exit status that is neither 0, 75 nor the signal we sent: our
  SIGKILL, or our SIGTERM to a process that had not yet set its handler; nor the exit 2
  of a node that found etcd unreachable as it started, the documented refusal, counted
  as ``refused_at_start``).
- **unavailability**: per fault that hit the master, seconds from the fault until the
  next acknowledged delivery by any node.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = "X-Processed-By: "
LEDGER = "chaos.ledger"
# what others can see a master do: publish an output (or find it there), record a delivery
# or an acknowledgement in the replicated cache, remove an input, move it to the error
# folder, finish a predecessor's message; not its private steps (reading, its own temp file)
VISIBLE = {"start", "linked", "exists", "recorded", "removed", "acked", "inflight", "failed"}
PROMOTED = re.compile(r"^(\d+\.\d+) \w+ cluster Promoted to Master node \(epoch (\d+)")
ROLE = re.compile(
    r"^(\d+\.\d+) \w+ cluster (?:Promoted to Master node \(epoch (\d+)|"
    r"Following master (\S+) \(epoch (\d+)\))"
)
LIVE = re.compile(r"^(\d+\.\d+) INFO\s+\[cache\.replication\] slave (\S+) is live at")
CLOSED = re.compile(r"^(\d+\.\d+) INFO\s+\[cache\.replication\] replication to (\S+) \(.*closed")
FAULT_KINDS = {"isolate", "split"}  # faults that make a partition


def message_name(i: int) -> str:
    return f"msg-{i:06d}.txt"


def message_text(i: int) -> str:
    return f"message {i}\nof the fault campaign\n"


@dataclass
class Fault:
    t: float
    kind: str
    node: str
    role: str


@dataclass
class Log:
    """``events.log``, parsed."""

    plan: dict[str, str] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    partitions: list[tuple[float, float]] = field(default_factory=list)
    sides: list[list[set[str]]] = field(default_factory=list)  # each partition's sides
    exits: list[tuple[float, str, int]] = field(default_factory=list)
    killed: list[tuple[float, str]] = field(default_factory=list)
    termed: list[tuple[float, str]] = field(default_factory=list)  # sent SIGTERM
    fed: int = 0
    settled: bool = False


def read_events(path: Path) -> Log:
    log = Log()
    opened: float | None = None
    sides: list[set[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        t_text, event, *args = line.split()
        t = float(t_text)
        if event == "plan":
            log.plan = dict(arg.split("=", 1) for arg in args)
        elif event == "fault":
            log.faults.append(Fault(t, args[0], args[1], args[2]))
            if args[0] == "kill":
                log.killed.append((t, args[1]))
            elif args[0] in ("term", "restart"):
                log.termed.append((t, args[1]))
            if args[0] in FAULT_KINDS:
                opened = t
                sides = [set(side.split(",")) for side in args[3].split("|")]
        elif event == "heal" and opened is not None:
            log.partitions.append((opened, t))
            log.sides.append(sides)
            opened = None
        elif event == "exit":
            log.exits.append((t, args[0], int(args[1])))
        elif event == "stuck":
            log.killed.append((t, args[0]))
        elif event == "stop":
            log.termed.append((t, args[0]))
        elif event == "fed":
            log.fed = int(args[0])
        elif event == "settled":
            log.settled = True
    if opened is not None:  # the run ended inside a partition (it failed before healing)
        log.partitions.append((opened, float("inf")))
        log.sides.append(sides)
    return log


@dataclass
class Trace:
    t: float
    event: str
    node: str
    epoch: int
    detail: str
    message: str


def read_trace(path: Path) -> list[Trace]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
        t, event, node, epoch, detail, message = line.split(" ", 5)
        found.append(Trace(float(t), event, node, int(epoch), detail, message))
    return found


def node_logs(folder: Path) -> dict[str, list[Path]]:
    """Each node's output files, oldest process first."""
    found: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for path in folder.glob("n*.log"):
        name, k, _ = path.name.split(".")
        found[name].append((int(k), path))
    return {name: [p for _, p in sorted(paths)] for name, paths in found.items()}


def _overlap_outside(
    start: float, end: float, partitions: list[tuple[float, float]], fencing: float
) -> float:
    """How much of [start, end] lies outside every (partition + fencing window)."""
    covered = sorted((a, b + fencing) for a, b in partitions)
    outside, cursor = 0.0, start
    for a, b in covered:
        if b <= cursor or a >= end:
            continue
        if a > cursor:
            outside += a - cursor
        cursor = max(cursor, b)
        if cursor >= end:
            break
    if cursor < end:
        outside += end - cursor
    return outside


def _inside(t: float, partitions: list[tuple[float, float]], fencing: float) -> bool:
    return any(a <= t <= b + fencing for a, b in partitions)


def live_slaves(path: Path) -> list[tuple[str, float, float]]:
    """(slave, from, until): when the master whose output ``path`` is counted each slave
    live (it waits for their acknowledgements), from its own log lines."""
    spans, opened = [], {}
    for line in path.read_text(errors="replace").splitlines():
        match = LIVE.match(line)
        if match:
            opened.setdefault(match.group(2), float(match.group(1)))
            continue
        match = CLOSED.match(line)
        if match and match.group(2) in opened:
            spans.append((match.group(2), opened.pop(match.group(2)), float(match.group(1))))
    spans += [(slave, t, float("inf")) for slave, t in opened.items()]
    return spans


def _process_at(paths: list[Path], t: float) -> Path | None:
    """The output of the node's process that ran at ``t`` (the latest one begun by then)."""
    found = None
    for path in paths:
        first = path.read_text(errors="replace").split(" ", 1)[0]
        try:
            if float(first) <= t:
                found = path
        except ValueError:
            continue
    return found


def _side(log: Log, node: str, t: float, fencing: float) -> set[str] | None:
    """The hosts ``node`` could reach at ``t``, if a partition (plus fencing) was on then."""
    for (a, b), sides in zip(log.partitions, log.sides):
        if a <= t <= b + fencing:
            return next((side for side in sides if node in side), None)
    return None


def read_ledger(folder: Path) -> dict[str, Any] | None:
    """The entries of a node's ledger on disk (None if it has none), read with sqlite."""
    path = folder / "data" / LEDGER / "cache.db"  # cache.directory/data/NAME (cache.replica)
    if not path.exists():
        return None
    entries = {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for key, value in db.execute("SELECT key, value FROM Cache"):
            if not isinstance(key, str) or key.startswith("\x00"):
                continue
            data = bytes(value) if value is not None else b""
            entries[key] = json.loads(data[1:]) if data[:1] == b"J" else None
    finally:
        db.close()
    return entries


def check_run(folder: Path) -> dict[str, Any]:
    """The verdict on one run (see the module's docstring): counts, and what they are."""
    log = read_events(folder / "events.log")
    window = float(log.plan.get("window", "0.45"))
    etcd = log.plan.get("backend") == "etcd"
    trace = read_trace(folder / "trace")
    logs = node_logs(folder)
    result: dict[str, Any] = {"folder": str(folder), "backend": log.plan.get("backend")}

    # -- who acted as master, and when
    acting: dict[tuple[str, int], list[float]] = {}
    for e in trace:
        if e.event in VISIBLE:
            span = acting.setdefault((e.node, e.epoch), [e.t, e.t])
            span[0], span[1] = min(span[0], e.t), max(span[1], e.t)
    overlaps = []
    spans = sorted(acting.items(), key=lambda item: item[1][0])
    for i, ((node_a, epoch_a), (a0, a1)) in enumerate(spans):
        for (node_b, epoch_b), (b0, b1) in spans[i + 1 :]:
            start, end = max(a0, b0), min(a1, b1)
            if node_a == node_b or end <= start:
                continue
            outside = _overlap_outside(start, end, log.partitions, window)
            overlaps.append(
                {
                    "nodes": [f"{node_a}@{epoch_a}", f"{node_b}@{epoch_b}"],
                    "start": start,
                    "length": end - start,
                    "outside": outside,
                }
            )
    result["double_masters_inside"] = sum(1 for o in overlaps if o["outside"] == 0)
    result["double_masters_outside"] = sum(1 for o in overlaps if o["outside"] > 0)
    result["double_master_max_s"] = max((o["length"] for o in overlaps), default=0.0)
    result["overlaps"] = overlaps

    # -- epochs
    promotions = []  # (t, node, epoch)
    for name, paths in logs.items():
        for path in paths:
            for line in path.read_text(errors="replace").splitlines():
                match = PROMOTED.match(line)
                if match:
                    promotions.append((float(match.group(1)), name, int(match.group(2))))
    promotions.sort()
    reused_on_node = []
    last: dict[str, int] = {}
    for _, name, epoch in promotions:
        if epoch <= last.get(name, 0):
            reused_on_node.append(f"{name}@{epoch}")
        last[name] = max(epoch, last.get(name, 0))
    by_epoch: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for t, name, epoch in promotions:
        by_epoch[epoch].append((t, name))
    shared_inside, shared_outside = [], []
    for epoch, holders in by_epoch.items():
        if len({name for _, name in holders}) > 1:
            later = max(t for t, _ in holders)
            inside = _inside(later, log.partitions, window)
            (shared_inside if inside else shared_outside).append(epoch)
    result["epochs_reused_on_a_node"] = reused_on_node
    result["epochs_shared_inside"] = shared_inside
    result["epochs_shared_outside"] = shared_outside
    result["promotions"] = len(promotions)

    # -- the end: the final master and who rejoined it
    last_role: dict[str, tuple[str, int]] = {}
    for name, paths in logs.items():
        for line in paths[-1].read_text(errors="replace").splitlines():
            match = ROLE.match(line)
            if match and match.group(2):
                last_role[name] = ("master", int(match.group(2)))
            elif match:
                last_role[name] = (match.group(3), int(match.group(4)))
    masters = sorted((epoch, name) for name, (role, epoch) in last_role.items() if role == "master")
    final = masters[-1][1] if masters else None
    final_epoch = masters[-1][0] if masters else None
    result["final_master"] = final
    result["not_rejoined"] = sorted(
        name for name in logs if name != final and last_role.get(name) != (final, final_epoch)
    )
    result["settled"] = log.settled

    # -- crashes
    crashes = []
    refused = Counter()  # the contract's exit 2: etcd unreachable as the node started
    for name, paths in logs.items():
        for path in paths:
            text = path.read_text(errors="replace")
            if "Traceback (most recent call last)" in text:
                crashes.append(path.name)
            if "twinweave: error: failover.etcd.endpoints=" in text:
                refused[name] += 1
    result["refused_at_start"] = sum(refused.values())
    sent = {
        -9: Counter(name for _, name in log.killed),
        -15: Counter(name for _, name in log.termed),
    }
    for _, name, code in log.exits:
        if code in sent and sent[code][name] > 0:  # the signal we sent (SIGTERM before
            sent[code][name] -= 1  # Python set its handler: a node that was starting)
        elif code == 2 and refused[name] > 0:
            refused[name] -= 1
        elif code not in (0, 75):
            crashes.append(f"{name} exited {code}")
    result["crashes"] = crashes

    # -- acknowledged writes
    rivals = {name for o in overlaps if o["outside"] == 0 for name in o["nodes"]}
    starts = [e for e in trace if e.event == "start"]
    acked = [e for e in trace if e.event == "acked"]
    ledger = read_ledger(folder / "state" / final) if final else None
    lost: dict[str, list[str]] = {"no_live_slave": [], "losing_side": [], "outside": []}
    spans: dict[Path, list[tuple[str, float, float]]] = {}
    for e in acked:
        if ledger is not None and e.message in ledger:
            continue
        process = _process_at(logs.get(e.node, []), e.t)
        if process is not None and process not in spans:
            spans[process] = live_slaves(process)
        side = _side(log, e.node, e.t, window)
        if not any(a <= e.t < b for _, a, b in spans.get(process, [])):  # type: ignore[arg-type]
            # its master waited for no slave: "a write survives the master's crash when
            # any slave was live" does not cover it
            lost["no_live_slave"].append(e.message)
        elif f"{e.node}@{e.epoch}" in rivals or (
            side is not None
            and any(
                s.epoch > e.epoch and s.node not in side and _side(log, e.node, s.t, window) == side
                for s in starts
            )
        ):
            # no quorum, or a grace period: a master on the other side replaced this one
            lost["losing_side"].append(e.message)
        else:
            lost["outside"].append(e.message)
    result["acked"] = len(acked)
    for kind, messages in lost.items():
        result[f"acked_lost_{kind}"] = messages

    # -- files
    inbox, outbox = folder / "in", folder / "out"
    outputs = {p.name for p in outbox.iterdir()} if outbox.exists() else set()
    waiting = {p.name for p in inbox.iterdir()} if inbox.exists() else set()
    linked = Counter(e.message for e in trace if e.event == "linked")
    writer = {e.message: e.node for e in trace if e.event == "linked"}
    lost, damaged = [], []
    for i in range(log.fed):
        name = message_name(i)
        if name not in outputs:
            lost.append(name)
            continue
        text = (outbox / name).read_text(encoding="utf-8", errors="replace")
        if text != message_text(i).upper() + f"{HEADER}{writer.get(name)}\n":
            damaged.append(name)
    failed_folder = Path(str(outbox) + ".failed")
    result["fed"] = log.fed
    result["files_lost"] = lost
    result["files_left_in_inbox"] = sorted(waiting)
    result["files_twice"] = sorted(name for name, count in linked.items() if count > 1)
    result["files_half_written"] = sorted(n for n in outputs if n.startswith(".")) + damaged
    result["files_failed"] = (
        sorted(p.name for p in failed_folder.iterdir()) if (failed_folder.exists()) else []
    )

    # -- faults and unavailability
    result["faults"] = dict(Counter(f.kind for f in log.faults))
    ack_times = sorted(e.t for e in acked)
    unavailable = []
    for f in log.faults:
        if f.role != "master":
            continue
        after = next((t for t in ack_times if t > f.t), None)
        unavailable.append((f.kind, None if after is None else after - f.t))
    result["unavailable"] = unavailable

    failures = []
    if etcd and overlaps:
        failures.append("double masters (etcd)")
    if result["double_masters_outside"]:
        failures.append("double masters outside partitions")
    for key in (
        "epochs_reused_on_a_node",
        "epochs_shared_outside",
        "acked_lost_outside",
        "files_lost",
        "files_twice",
        "files_half_written",
        "files_failed",
        "not_rejoined",
        "crashes",
    ):
        if result[key]:
            failures.append(key)
    if etcd and result["epochs_shared_inside"]:
        failures.append("epochs shared (etcd)")
    if not log.settled:
        failures.append("not settled")
    result["failures"] = failures
    return result
