"""The adapter the master of ``replication.py`` runs: it times writes, saves the figures, ends.

``python -m agent.bootstrap --failover ... replication_adapter.py RESULT [--slaves N]
[--writes N] [--threads T] [--repeat R]``: once promoted, the node waits until N slaves are
live (so that every synchronous write waits for all of them), then, R times over, times
``--writes`` writes of small JSON values (``{"i": i, "payload": "x" * 100}``, a fresh key
each) through four paths, with one writer thread and with T:

* ``local``: a plain ``diskcache.Cache`` in a temporary folder, default settings: the
  baseline, measured in the same process and run as what it is compared with;
* ``replicated``: ``cache.get_cache("bench").set``, synchronous or asynchronous as the
  node's ``cache.replication`` says.

Each figure is the wall time of the whole batch (``time.perf_counter`` from the moment the
writer threads are released to the moment the last one is done) and each write's own
latency. The figures go to RESULT as JSON (written to a temporary name, then renamed), and
the adapter returns, so the node resigns and exits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache

import cache
import cluster
from benchmarks import procstat

LIVE_WAIT_S = 30.0
WARMUP_WRITES = 200
BATCH = 100  # entries per set_many call in the batched row (latency is per call)


def value(i: int) -> dict:
    return {"i": i, "payload": "x" * 100}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU each process has used so far (``/proc/PID/stat``; clock ticks)."""
    used = {}
    for name, pid in pids.items():
        try:
            used[name] = procstat.cpu_seconds(pid)
        except OSError:
            continue  # not Linux, or the process is gone: that figure is left out
    return used


def cpu_per_write(before: dict[str, float], after: dict[str, float], writes: int) -> dict:
    """Microseconds of CPU per write, per process (the batch's share of its CPU time)."""
    return {name: (after[name] - before[name]) * 1e6 / writes for name in after if name in before}


def timed_writes(
    write: Callable[[str, Any], object],
    prefix: str,
    writes: int,
    threads: int,
    pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``writes`` writes split over ``threads`` threads: the batch's wall time and latencies,
    and with ``pids``, the CPU each of those processes spent on the batch, per write."""
    chunks = [range(t, writes, threads) for t in range(threads)]
    latencies: list[list[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def run(chunk: range, out: list[int]) -> None:
        values = [(f"{prefix}-{i}", value(i)) for i in chunk]
        clock = time.perf_counter_ns
        barrier.wait()
        for key, data in values:
            started = clock()
            write(key, data)
            out.append(clock() - started)

    workers = [
        threading.Thread(target=run, args=(chunk, out)) for chunk, out in zip(chunks, latencies)
    ]
    for worker in workers:
        worker.start()
    cpu_before = cpu_seconds(pids or {})
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    cpu = cpu_per_write(cpu_before, cpu_seconds(pids or {}), writes)
    merged = sorted(ns for out in latencies for ns in out)
    return {"cpu_us_per_write": cpu, **_batch_figures(threads, writes, wall, merged)}


def timed_batches(store: Any, prefix: str, writes: int, batch: int) -> dict[str, Any]:
    """``writes`` writes as ``set_many`` calls of ``batch`` entries each, from one thread."""
    groups = [
        [(f"{prefix}-{i}", value(i)) for i in range(start, min(writes, start + batch))]
        for start in range(0, writes, batch)
    ]
    clock = time.perf_counter_ns
    latencies = []
    started = time.perf_counter()
    for group in groups:
        began = clock()
        store.set_many(group)
        latencies.append(clock() - began)
    wall = time.perf_counter() - started
    return _batch_figures(1, writes, wall, sorted(latencies))


def _batch_figures(threads: int, writes: int, wall: float, ordered: list[int]) -> dict[str, Any]:
    """A batch's throughput and latencies (``ordered``: every write's, in ns, sorted)."""
    return {
        "threads": threads,
        "writes": writes,
        "wall_s": wall,
        "per_s": writes / wall,
        "p50_ms": _rank(ordered, 0.50) / 1e6,
        "p99_ms": _rank(ordered, 0.99) / 1e6,
        "max_ms": ordered[-1] / 1e6,
    }


def _rank(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list: an observed value, never interpolated."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else 0


def wait_live(count: int) -> list[str]:
    node = cluster.current()
    if node is None:
        return []
    limit = time.monotonic() + LIVE_WAIT_S
    while len(node.hub.live_slaves()) < count and time.monotonic() < limit:
        time.sleep(0.01)
    return node.hub.live_slaves()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("result", type=Path)
    parser.add_argument("--slaves", type=int, default=1)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pids", type=Path, help="a JSON file of the slaves' {name: pid}")
    options = parser.parse_args()

    live = wait_live(options.slaves)
    pids = {"master": os.getpid()}
    if options.pids is not None and options.pids.exists():
        pids.update(json.loads(options.pids.read_text(encoding="utf-8")))
    node = cluster.current()
    replicated = cache.get_cache("bench")
    thread_counts = sorted({1, options.threads})
    with tempfile.TemporaryDirectory(prefix="bench-local-") as folder:
        local = diskcache.Cache(folder)
        paths: dict[str, Callable[[str, Any], object]] = {
            "local": local.set,
            "replicated": replicated.set,
        }
        for name, write in paths.items():
            timed_writes(write, f"warmup-{name}", WARMUP_WRITES, 1)
        runs = []
        for rep in range(options.repeat):
            run: dict[str, Any] = {}
            for name, write in paths.items():
                for threads in thread_counts:
                    prefix = f"{name}-{threads}-{rep}"
                    run[f"{name}/{threads}"] = timed_writes(
                        write, prefix, options.writes, threads, pids
                    )
            run[f"batched/{BATCH}"] = timed_batches(
                replicated, f"batched-{rep}", options.writes, BATCH
            )
            runs.append(run)
        still_live = node.hub.live_slaves() if node is not None else []
        local.close()
    result = {
        "python": platform.python_version(),
        "mode": node.settings.replication if node is not None else "local",
        "slaves_live_at_start": sorted(live),
        "slaves_live_at_end": sorted(still_live),
        # slaves the hub dropped for not acknowledging in time: writes after that waited
        # for fewer slaves, so the synchronous figures would flatter
        "dropped_slow": node.hub.dropped_slow if node is not None else 0,
        "runs": runs,
    }
    tmp = options.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, options.result)


if __name__ == "__main__":
    main()
