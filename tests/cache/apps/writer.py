"""The adapter ``test_failover_cache.py`` runs on its nodes: replicated writes, each one logged.

Run as ``python -m agent.bootstrap --failover ... writer.py OUT [options]``. A node runs it
only once promoted. Everything it tells the test lands in the folder OUT, shared by the
nodes of one test, named after the node and the epoch it is master of:

``dump-NODE-EPOCH.json``
    the cache ``stream`` as the node found it when promoted, before it writes anything:
    ``{"items": {key: value}, "position": [epoch, seq]}``
``log-NODE-EPOCH``
    one line per event, ``try I T`` just before ``c.set("kI", I)`` (``T`` is
    ``time.monotonic()``), ``acked I T`` once it returned, ``refused I T MESSAGE`` when it
    raised :class:`cache.NotMasterError`; with ``--mixed``, ``mixed THREAD N`` every 100
    writes of a thread
``paused-NODE-EPOCH.json``
    once the file ``OUT/pause`` exists the writers stop; the node waits for as many live
    slaves as that file says, makes one last synchronous write (``paused-by``: it reaches
    every live slave, after everything before it) and dumps the cache again

Options: ``--min-live N`` waits (at most 5 s) for N live slaves before the first write (a
write acked with no live slave may be lost with its master, by contract) and logs ``live
COUNT T``, the number it saw; ``--write-epochs 1,2`` writes only when master of one of
these epochs (others only dump); ``--mixed T`` runs T threads of puts, updates and deletes
on keys of their own instead of the ``kI`` stream; ``--until-refused`` keeps writing
through a stop request until a write is refused (an adapter that relies on the cache's
fencing instead of polling ``cluster.stopping()``).

The master's replication log lines (``cache`` logger, INFO) go to its output too. Each
line of the log is one ``os.write`` on a descriptor opened with ``O_APPEND``: nothing sits in a
buffer when the process is killed, and the test never reads half a line as a whole one.
Dumps are written to a temporary name and renamed, so a dump the test sees is complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path

import cache
import cluster

STREAM = "stream"
LIVE_WAIT_S = 5.0


def dump(path: Path, store: cache.Cache) -> None:
    node = cluster.current()
    position = list(node.replica.position) if node is not None else [0, 0]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"items": dict(store.items()), "position": position}))
    os.replace(tmp, path)


def wait_live(count: int, done: threading.Event) -> int:
    """Wait (at most LIVE_WAIT_S) until ``count`` slaves are live; how many are."""
    node = cluster.current()
    if node is None:
        return 0
    limit = time.monotonic() + LIVE_WAIT_S
    while len(node.hub.live_slaves()) < count and not done.is_set():
        if time.monotonic() > limit:
            break
        time.sleep(0.01)
    return len(node.hub.live_slaves())


def stream(store: cache.Cache, fd: int, keep_going: threading.Event, until_refused: bool) -> None:
    """Write k0, k1, ... (from one past the highest found) until stopped or refused."""
    i = 1 + max((int(key[1:]) for key in store if key.startswith("k")), default=-1)
    refusals = 0
    while until_refused or keep_going.is_set():
        os.write(fd, f"try {i} {time.monotonic()!r}\n".encode())
        try:
            store.set(f"k{i}", i)
        except cache.NotMasterError as exc:
            message = str(exc).replace("\n", " ")
            os.write(fd, f"refused {i} {time.monotonic()!r} {message}\n".encode())
            refusals += 1
            if refusals == 2:  # the write in progress when refused, and one begun after
                return
            i += 1
            continue
        os.write(fd, f"acked {i} {time.monotonic()!r}\n".encode())
        i += 1


def mixed(store: cache.Cache, fd: int, thread: int, keep_going: threading.Event) -> None:
    """Puts, updates and deletes on the keys m<thread>-0 .. m<thread>-199; a line per 100."""
    n = 0
    while keep_going.is_set():
        store.set(f"m{thread}-{n % 200}", {"thread": thread, "n": n, "pad": "x" * (n % 50)})
        if n % 5 == 0:
            store.delete(f"m{thread}-{(n * 7) % 200}")
        n += 1
        if n % 100 == 0:
            os.write(fd, f"mixed {thread} {n}\n".encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--min-live", type=int, default=0)
    parser.add_argument("--write-epochs", default="")
    parser.add_argument("--mixed", type=int, default=0)
    parser.add_argument("--until-refused", action="store_true")
    options = parser.parse_args()

    # the hub's replication log lines (slaves joining, live, dropped) in the node's output
    replication_log = logging.getLogger("cache")
    replication_log.setLevel(logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s [%(name)s] %(message)s"))
    replication_log.addHandler(handler)

    me = f"{cluster.node_id()}-{cluster.epoch()}"
    store = cache.get_cache(STREAM)
    dump(options.out / f"dump-{me}.json", store)
    done = threading.Event()
    finished = threading.Event()

    def on_stop() -> None:
        done.set()
        finished.wait(5.0)  # let the writers see the refusal (or the stop) through

    cluster.on_stop(on_stop)
    fd = os.open(options.out / f"log-{me}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    keep_going = threading.Event()
    keep_going.set()
    writes = not options.write_epochs or str(cluster.epoch()) in options.write_epochs.split(",")
    try:
        if writes:
            live = wait_live(options.min_live, done)
            os.write(fd, f"live {live} {time.monotonic()!r}\n".encode())
            writes = not done.is_set()  # a loser of a simultaneous claim writes nothing
        if not writes:
            jobs: list[tuple] = []
        elif options.mixed:
            jobs = [(mixed, (store, fd, t, keep_going)) for t in range(options.mixed)]
        else:
            jobs = [(stream, (store, fd, keep_going, options.until_refused))]
        workers = [threading.Thread(target=job, args=args, daemon=True) for job, args in jobs]
        for worker in workers:
            worker.start()
        pause = options.out / "pause"
        while not done.is_set() and not pause.exists():
            if workers and not any(worker.is_alive() for worker in workers):
                break
            time.sleep(0.01)
        keep_going.clear()
        for worker in workers:
            worker.join(10.0)
        if pause.exists():
            if writes:
                wait_live(int(pause.read_text() or 0), done)
                store.set("paused-by", me)
            dump(options.out / f"paused-{me}.json", store)
            done.wait(60.0)
    finally:
        finished.set()


if __name__ == "__main__":
    main()
