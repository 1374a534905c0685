"""The adapter that ``test_nodes.py`` runs on each failover node: it records what it does.

Run as ``python -m agent.bootstrap --failover ... nodeapp.py TIMELINE``. A node runs it only
once promoted; from then on it appends one short line per event to the file TIMELINE,
shared by every node of a test::

    start NODE EPOCH T        the adapter starts (the node was just promoted)
    work NODE EPOCH T         every ~20 ms while cluster.is_master() says yes
    hook NODE EPOCH T         the stop hook ran (cluster.on_stop)
    exit NODE EPOCH T HOW     the adapter ends: HOW is "returned" or "interrupted"

``T`` is ``time.monotonic()``: CLOCK_MONOTONIC is one clock for the whole system on Linux,
so the tests compare the times of different processes. A work line's ``T`` is read
*before* ``cluster.is_master()`` is asked, so the node was master at some moment after
``T``, never only before it: a process frozen (SIGSTOP) between the two steps writes a
time from before the freeze, and one that wakes up without its lease writes nothing.

Each line is one ``os.write`` on a descriptor opened with ``O_APPEND``: lines of several
processes never interleave, and nothing sits in a buffer when the process is killed.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import cluster

WORK_INTERVAL_S = 0.02


def record(fd: int, kind: str, when: float, *extra: str) -> None:
    fields = [kind, cluster.node_id(), str(cluster.epoch()), repr(when), *extra]
    os.write(fd, (" ".join(fields) + "\n").encode())


def main(timeline: str) -> None:
    fd = os.open(timeline, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    done = threading.Event()

    def on_stop() -> None:
        record(fd, "hook", time.monotonic())
        done.set()

    cluster.on_stop(on_stop)
    how = "interrupted"
    record(fd, "start", time.monotonic())
    try:
        while not done.is_set() and not cluster.stopping():
            now = time.monotonic()
            if cluster.is_master():
                record(fd, "work", now)
            done.wait(WORK_INTERVAL_S)
        how = "returned"
    finally:
        record(fd, "exit", time.monotonic(), how)  # fd stays open: the stop hook may still run


if __name__ == "__main__":
    main(sys.argv[1])
