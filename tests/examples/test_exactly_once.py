"""The example file adapter across failover: every input delivered exactly once, whatever dies.

Three real nodes run ``examples/fs_adapter.py`` over one ``in``/``out`` pair (see
``fs_cluster.py`` for how they are started and for the verdict, :func:`check_exactly_once`).
The master is killed with ``kill -9`` in the middle of a message, at each step of the
producer's work (its ``--pause-at`` test aid holds the first node that gets there until the
test kills it), paused with SIGSTOP past its lease, or a slave is killed; each time every
input must come out once, published once, transformed once, and the inbox end empty.

Files are fed once the slaves follow the master (and its replication stream), so that the
``failover`` plugin's in-flight record of the message under way reaches them (a record made
while no slave was live may go with its master, by contract; the adapter does not need it
to stay exactly-once, but the tests check that the new master learns from it).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from fs_cluster import message_name

from tests.nodeproc import EXIT_DEMOTED

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="compares time.monotonic() across processes (one clock system-wide on Linux)",
    ),
]


def in_workflow(event: str) -> bool:
    """Whether a node whose last trace line is ``event`` died inside the workflow."""
    return event in ("begin", "written", "linked", "exists", "recorded")


def frozen_until_replaced(c, first, marker: str | None = None):
    """SIGSTOP the master ``first`` until another node took over and the inbox drained,
    then let its pause point go (``marker``, if it waits at one) and SIGCONT it: it must
    step down (exit 75). The new master's start and when the master was stopped."""
    old = c.process(first.node)
    old.popen.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        new = c.wait_master(first.epoch)
        c.wait_done()
    finally:
        if marker is not None:
            os.remove(marker)  # the pause point lets go, and the process runs on from there
        old.popen.send_signal(signal.SIGCONT)
    assert old.wait() == EXIT_DEMOTED, c.describe()
    assert new.node != first.node
    return new, stopped_at


def test_kill_9_of_the_master_in_the_middle_of_a_message(fs_cluster) -> None:
    c = fs_cluster("--delay-ms", "30")
    first = c.start_settled()
    c.feed(range(40))

    def mid_message():
        events = c.events()
        if sum(1 for e in events if e.event == "linked") < 10:
            return None
        mine = [e for e in events if e.node == first.node]
        return mine[-1] if mine[-1].event == "begin" else None

    c.wait_until(mid_message)
    victim = c.process(first.node)
    victim.popen.kill()
    assert victim.wait() == -signal.SIGKILL
    last = [e for e in c.events() if e.node == first.node][-1]  # where it really died
    new = c.wait_master(first.epoch)
    c.wait_done()
    writers = c.check()
    assert new.node != first.node
    assert {writers[name] for name in c.fed} <= {first.node, *(m.node for m in c.masters(1))}
    if in_workflow(last.event):
        listed = [e for e in c.events() if e.event == "inflight" and e.epoch > first.epoch]
        assert (last.message, first.node) in {(e.message, e.detail) for e in listed}, c.describe()


# each step: the message the first node to reach it pauses at (the test then kills it)
STEPS = {"written": 6, "linked": 14, "recorded": 22, "delivered": 30, "removed": 38}


def test_kill_9_at_each_step_of_the_producer(fs_cluster) -> None:
    """Killed with the temp file written (not yet published), right after publishing (not yet
    recorded), after recording (the workflow not ended), after the workflow (the input still
    there), after removing the input (the journal entry still there)."""
    pauses = [f"{step}:{message_name(i)}" for step, i in STEPS.items()]
    c = fs_cluster("--delay-ms", "10", *[arg for p in pauses for arg in ("--pause-at", p)])
    master = c.start_settled()
    fed_up_to = 0
    kills = []
    for step, i in STEPS.items():
        # the next batch only once both slaves follow this master (see the docstring)
        c.feed(range(fed_up_to, i + 4))
        fed_up_to = i + 4
        name = message_name(i)
        paused = c.wait_event("paused", name)
        assert paused.detail == step
        victim = c.process(paused.node)
        killed_at = time.monotonic()
        victim.popen.kill()
        assert victim.wait() == -signal.SIGKILL
        if step in ("written", "linked"):
            temp = c.outbox / f".{name}.{paused.node}.tmp"
            assert temp.exists(), f"{step}: no temp file\n{c.describe()}"
        master = c.wait_master(master.epoch)
        kills.append((step, name, paused.node, killed_at))
        assert paused.node in c.revive()
        c.wait_following(master, [n for n in ("node-a", "node-b", "node-c") if n != master.node])
    c.feed(range(fed_up_to, fed_up_to + 4))
    c.wait_done()
    writers = c.check()

    events = c.events()
    for step, name, killed, killed_at in kills:
        after = [e for e in events if e.message == name and e.t > killed_at]
        listed = [e.detail for e in after if e.event == "inflight"]  # the node it was on
        published = [e.node for e in after if e.event == "linked"]
        skipped = [e.detail for e in after if e.event == "skipped"]  # who had delivered it
        if step in ("delivered", "removed"):  # the workflow had ended: nothing in flight
            assert not listed, f"{step}: {listed}"
        else:  # the new master learnt from cluster.inflight() what the killed one was doing
            assert killed in listed, f"{step}: {listed}\n{c.describe()}"
        if step == "written":  # not published yet: the new master publishes it, once
            assert published == [writers[name]] and writers[name] != killed
        elif step == "removed":  # nothing left to do (the stale journal entry is forgotten)
            assert writers[name] == killed and not published and not skipped, after
        else:  # published by the killed node and never again: its successor only cleans up
            assert writers[name] == killed and not published, f"{step}: {published}"
            assert skipped and set(skipped) == {killed}, f"{step}: {skipped}\n{c.describe()}"


def test_kill_9_of_a_slave_changes_nothing_in_the_output(fs_cluster) -> None:
    c = fs_cluster("--delay-ms", "20")
    master = c.start_settled()
    c.feed(range(40))
    c.wait_until(lambda: sum(1 for e in c.events() if e.event == "linked") >= 10)
    slave = c.process("node-b" if master.node != "node-b" else "node-c")
    slave.popen.kill()
    assert slave.wait() == -signal.SIGKILL
    c.wait_done()
    writers = c.check()
    assert set(writers.values()) == {master.node}  # the master did it all, once
    assert c.masters() == [master]  # nobody else was ever promoted
    assert c.process(master.node).alive()


def test_a_paused_master_that_wakes_up_writes_nothing(fs_cluster) -> None:
    c = fs_cluster("--delay-ms", "30")
    first = c.start_settled()
    c.feed(range(30))

    def mid_message():
        events = c.events()
        if sum(1 for e in events if e.event == "linked") < 5:
            return None
        mine = [e for e in events if e.node == first.node]
        return mine[-1] if mine[-1].event == "begin" else None

    c.wait_until(mid_message)
    new, stopped_at = frozen_until_replaced(c, first)
    writers = c.check()
    late = [e for e in c.events() if e.node == first.node and e.t > stopped_at]
    assert not [e for e in late if e.event in ("written", "linked", "recorded")], late
    assert all(writers[name] in (first.node, new.node) for name in c.fed)


@pytest.mark.parametrize("step", ["written", "recorded"])
def test_a_master_frozen_between_two_steps_does_nothing_when_it_wakes(fs_cluster, step) -> None:
    # Found by the fault campaign (python -m benchmarks.chaos, seed 5004): a master stopped
    # by SIGSTOP between recording a delivery and removing its input woke past its lease
    # and still removed the input, after its successor had started. (After "written" its
    # successor has removed its temp file, so it cannot publish either.)
    target = message_name(5)
    c = fs_cluster("--delay-ms", "10", "--pause-at", f"{step}:{target}")
    first = c.start_settled()
    c.feed(range(20))
    c.wait_event("paused", target)
    _, stopped_at = frozen_until_replaced(c, first, f"{c.trace}.paused-{step}-{target}")
    c.check()
    late = [e for e in c.events() if e.node == first.node and e.t > stopped_at]
    assert late == [], late
