"""The adapter the nodes of ``takeover.py`` run: note when it starts, then wait to be stopped.

``python -m agent.bootstrap --failover ... takeover_adapter.py TIMELINE``: once promoted,
the node appends ``start NODE EPOCH MONOTONIC`` to TIMELINE (one ``os.write`` with
``O_APPEND``, so lines of several nodes never mix) and waits, using no CPU, until the node
stops. It imports nothing but ``cluster`` and the standard modules the interpreter has
already loaded, so the time from promotion to that line stays small.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import cluster


def main(timeline: str) -> None:
    done = threading.Event()
    cluster.on_stop(done.set)
    line = f"start {cluster.node_id()} {cluster.epoch()} {time.monotonic()!r}\n"
    fd = os.open(timeline, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())
    os.close(fd)
    done.wait()


if __name__ == "__main__":
    main(sys.argv[1])
