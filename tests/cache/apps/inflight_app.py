"""The adapter of ``test_failover_cache.py``'s in-flight test: a workflow that can get stuck.

Run as ``python -m agent.bootstrap --failover --pointcuts aop.xml ... inflight_app.py OUT``
with an aspect of type ``workflow`` on ``inflight_app.on_message`` whose message id is
``msg``, so that the built-in ``failover`` plugin records each message in ``FAILOVER_CACHE``
while it is processed. Once promoted, the node:

1. writes ``cluster.inflight()`` to ``OUT/inflight-NODE-EPOCH.json``, before anything else;
2. if that list is empty, processes ``done-1`` and ``done-2`` (they complete) and then
   ``stuck-3``, which never completes: it waits until the node stops (or is killed);
   otherwise it redelivers each listed message (they complete) and notes ``redelivered``;
3. waits until the node stops.

``--min-live N`` waits for N live slaves before processing anything (so the plugin's
writes reach them); a node that stops meanwhile (the loser of a simultaneous claim)
processes nothing. ``--local``: run outside failover mode; step 2 processes only the two
messages that complete, and the program then ends. Progress goes to
``OUT/events-NODE-EPOCH``, one ``os.write`` per line (``begin MSG``, ``end MSG``,
``redelivered``), with ``O_APPEND``, so nothing is lost when the process is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import cluster

_events = -1


def note(line: str) -> None:
    os.write(_events, f"{line}\n".encode())


def on_message(msg: str, redelivered: bool = False) -> None:
    """The workflow: a message starts, is processed, ends (unless it is stuck)."""
    note(f"begin {msg}")
    if msg.startswith("stuck") and not redelivered:
        while not cluster.stopping():
            time.sleep(0.01)
        return
    note(f"end {msg}")


def wait_live(count: int) -> bool:
    """Wait for ``count`` live slaves; False if the node stops first (a demoted loser)."""
    node = cluster.current()
    limit = time.monotonic() + 15.0
    while node is not None and len(node.hub.live_slaves()) < count:
        if cluster.stopping() or time.monotonic() > limit:
            break
        time.sleep(0.01)
    return not cluster.stopping()


def main() -> None:
    global _events
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--min-live", type=int, default=0)
    parser.add_argument("--local", action="store_true")
    options = parser.parse_args()

    me = "local" if options.local else f"{cluster.node_id()}-{cluster.epoch()}"
    inflight = cluster.inflight()
    tmp = options.out / f"inflight-{me}.tmp"
    tmp.write_text(json.dumps(inflight))
    os.replace(tmp, options.out / f"inflight-{me}.json")
    _events = os.open(options.out / f"events-{me}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    done = threading.Event()
    cluster.on_stop(done.set)
    if not wait_live(options.min_live):
        return
    if inflight:
        for entry in inflight:
            on_message(entry["message_id"], redelivered=True)
        note("redelivered")
    else:
        on_message("done-1")
        on_message("done-2")
        if options.local:
            return
        on_message("stuck-3")
    done.wait(60.0)


if __name__ == "__main__":
    main()
