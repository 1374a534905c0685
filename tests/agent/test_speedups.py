"""The C timing accelerator: exact counts and failures; tokens across recursion, threads."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent import speedups
from agent.events import JoinPoint, Probe
from agent.stats import bucket_bounds
from agent.weaving.rewrite import weave_code

pytestmark = pytest.mark.skipif(
    not speedups.available(), reason="the C accelerator is not built in this environment"
)
ROOT = Path(__file__).resolve().parents[2]


def c_probe() -> Probe:
    return Probe(JoinPoint("a", "service", "f"), recorder=speedups.recorder())


def woven(fn):
    probe = c_probe()
    fn.__code__ = weave_code(fn.__code__, probe)
    return probe


def take(probe: Probe) -> speedups.TimingSummary:
    summary = speedups.summary(probe.recorder)
    assert summary is not None
    return summary


def test_counts_failures_and_histogram_add_up():
    def work(x):
        if x == 3:
            raise KeyError(x)
        return x

    probe = woven(work)
    for i in range(100):
        try:
            work(i % 10)
        except KeyError:
            pass
    summary = take(probe)
    assert (summary.ok, summary.failed) == (90, 10)
    assert sum(count for _, count in summary.buckets) == 100
    assert summary.min_ns <= summary.max_ns
    assert summary.ok_total_ns + summary.failed_total_ns >= summary.max_ns
    assert speedups.summary(probe.recorder) is None  # take() reset everything


def test_sleep_is_measured_at_least_as_long():
    def nap():
        time.sleep(0.02)

    probe = woven(nap)
    nap()
    summary = take(probe)
    assert summary.min_ns >= 19_000_000
    low, _ = bucket_bounds(summary.buckets[0][0])
    assert low >= 18_000_000


def test_recursion_deeper_than_the_slots():
    def depth(n):
        return 0 if n == 0 else 1 + depth(n - 1)

    probe = woven(depth)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 2000))
    try:
        assert depth(600) == 600
    finally:
        sys.setrecursionlimit(limit)
    summary = take(probe)
    assert summary.ok == 601
    # Nested durations: the outermost call is the longest and contains all others.
    assert summary.max_ns <= summary.ok_total_ns


def test_interleaved_generators_and_close():
    def gen(n):
        yield from range(n)

    probe = woven(gen)
    a, b = gen(3), gen(3)
    next(a)
    next(b)
    assert list(a) == [1, 2]
    b.close()  # GeneratorExit: a normal end, not a failure
    summary = take(probe)
    assert (summary.ok, summary.failed) == (2, 0)


def test_coroutines():
    async def job(x):
        await asyncio.sleep(0)
        if x:
            raise ValueError(x)
        return x

    probe = woven(job)

    async def main():
        return await asyncio.gather(job(0), job(1), job(0), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[1], ValueError)
    summary = take(probe)
    assert (summary.ok, summary.failed) == (2, 1)


def test_threads_keep_their_own_slots():
    def work(x):
        time.sleep(0)
        return x

    probe = woven(work)

    def run():
        for i in range(3000):
            work(i)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    summary = take(probe)
    assert summary.ok == 12000
    assert summary.max_ns < 10**11  # no duration read from another thread's slot


def test_bad_tokens_are_ignored():
    rec = speedups.recorder()
    assert rec.leave("not a token") is None
    assert rec.leave(-5) is None
    assert rec.fail(object(), ValueError()) is None
    assert rec.fail() is None
    assert speedups.summary(rec) is None


def test_calibration_is_sane():
    assert speedups.CLOCK in ("tsc", "monotonic")
    scale = speedups.ns_per_tick()
    assert 0.01 < scale < 100


def test_pure_python_switch():
    env = dict(os.environ, TWINWEAVE_PURE_PYTHON="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", "from agent import speedups; print(speedups.available())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "False", result.stderr


def test_recorder_add_takes_tick_durations_and_ignores_bad_ones():
    rec = speedups.recorder()
    start = speedups.ticks()
    time.sleep(0.01)
    rec.add(speedups.ticks() - start)
    rec.add(5, True)
    rec.add(-3)  # a negative duration counts as 0
    assert rec.add("not a duration") is None
    assert rec.add() is None
    summary = speedups.summary(rec)
    assert (summary.ok, summary.failed) == (2, 1)
    assert summary.min_ns == 0
    assert summary.max_ns >= 9_000_000


needs_monitor = pytest.mark.skipif(
    not speedups.monitor_available(), reason="the C monitor callbacks exist from Python 3.12"
)


class _Target:
    """The attributes Monitor.add reads (agent.weaving.monitoring._Target has them)."""

    def __init__(self, probe, steps=False, suspendable=False, recorder=None):
        self.probe = probe
        self.steps = steps
        self.suspendable = suspendable
        self.recorder = recorder
        self.ok_append = probe.ok_append
        self.failed_append = probe.failed_append
        self.param = None


def _monitor(**kwargs):
    defaults = dict(
        running={}, yielded={}, disable=object(), failed=print, sweep=print, track_yields=False
    )
    defaults.update(kwargs)
    return speedups.monitor(**defaults)


@needs_monitor
def test_monitor_is_one_at_a_time_and_closes():
    first = _monitor()
    assert first is not None and first.live
    assert _monitor() is None  # another is live: the caller keeps its Python callbacks
    first.close()
    assert not first.live
    second = _monitor()
    assert second is not None
    second.close()
    with pytest.raises(RuntimeError, match="closed"):
        second.add(test_monitor_is_one_at_a_time_and_closes.__code__, None)


@needs_monitor
def test_monitor_add_checks_its_arguments():
    monitor = _monitor()
    try:
        probe = Probe(JoinPoint("a", "service", "f"))
        code = test_monitor_add_checks_its_arguments.__code__
        with pytest.raises(TypeError):
            monitor.add("not code", _Target(probe))
        with pytest.raises(TypeError, match="Recorder"):
            monitor.add(code, _Target(probe, recorder="not a recorder"))
        with pytest.raises(AttributeError):
            monitor.add(code, object())
        assert monitor.add(code, _Target(probe)) is True
        assert monitor.add(code, _Target(probe)) is False  # the first registration stays
    finally:
        monitor.close()


@needs_monitor
def test_monitor_callbacks_driven_by_hand():
    """Outside sys.monitoring: unknown code gets DISABLE, a start and an end make one call."""
    disable = object()
    monitor = _monitor(disable=disable)
    try:
        probe = Probe(JoinPoint("a", "service", "f"))

        def f():
            pass

        other = test_monitor_callbacks_driven_by_hand.__code__
        assert monitor.py_start(other, 0) is disable
        assert monitor.py_return(other, 0, None) is disable
        assert monitor.py_unwind(other, 0, ValueError()) is None  # global: never DISABLE
        assert monitor.misses == 2
        monitor.add(f.__code__, _Target(probe))
        # Called from this frame, start and end see the same running frame.
        assert monitor.py_start(f.__code__, 0) is None
        assert monitor.stacked == 1
        assert monitor.py_unwind(f.__code__, 0, KeyError()) is None
        assert monitor.py_start(f.__code__, 0) is None
        assert monitor.py_unwind(f.__code__, 0, GeneratorExit()) is None
        assert monitor.py_return(f.__code__, 0, None) is None  # no start left: ignored
        assert (len(probe.ok), len(probe.failed), monitor.stacked) == (1, 1, 0)
    finally:
        monitor.close()
