"""The built-in ``timing`` plugin: per-component statistics and the JSON report.

This module owns the statistics of each component (one aspect's join point:
count, failed, total, min, mean, p50, p99, max, in ns) and writing them at stop as
the report of DESIGN.md, atomically. It does not collect durations (woven code and
``agent.events.Probe`` do), schedule drains (``agent.drain``) or render tables
(``agent.report``, whose :func:`~agent.report.format_table` it reuses when there
is no report file and the table goes to the log).

Accuracy. ``count``, ``failed``, ``total_ns``, ``min_ns``, ``max_ns`` are exact and
``mean_ns`` is ``total_ns / count`` rounded. ``p50_ns`` and ``p99_ns`` are
nearest-rank percentiles estimated from a log-linear histogram with
``2**MANTISSA_BITS`` = 64 buckets per power of two (a bucket is the bit length of
a duration plus its 7 leading bits):

* while every duration of a batch is kept (at most ``SAMPLE_LIMIT`` = 2048 ok and
  2048 failed durations per drain, that is below about 4,000 calls per 0.5 s for a
  join point), the estimate is within 1/128 (0.8 %) of the true percentile, and
  exact below 128 ns;
* a bigger batch (a hot function can deliver 500k durations per drain) is
  represented by ``SAMPLE_LIMIT`` evenly spaced durations, each weighted
  ``n / kept``, so the Python work per drain stays bounded whatever the call
  rate. That adds sampling error: the rank of the estimate is off by about
  ``sqrt(q * (1 - q) / 2048)`` per batch (1.1 % of the calls at p50, 0.2 % at p99),
  which averages out over batches, unless the durations follow a pattern whose
  period matches the sampling stride.

Options (attributes of ``<plugin name="timing" .../>``):

* ``report``, the JSON file to write at stop. It wins over ``--report FILE``;
  without either, the table goes to stderr at exit (it is the profile the user
  asked for, so it is shown whatever the logging level). A relative path is taken
  from the working directory at start; ``{pid}`` in it becomes the process id
  (child processes that inherit ``AGENT_POINTCUTS`` would otherwise overwrite
  each other's report).
* ``interval``, seconds: also rewrite the report that often while the program
  runs (it wins over ``--report-interval`` and ``$AGENT_REPORT_INTERVAL``). Each
  write is atomic and carries ``written_at`` (ISO 8601, UTC), ``uptime_s`` (since
  the agent started) and ``final`` (true for the write at exit), so
  ``python -m agent.report stats.json --watch`` can follow a service that runs for
  weeks. A rewrite holds what the drain thread delivered, at most about 0.5 s old.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from agent.events import JoinPoint
from agent.files import write_atomic
from agent.periodic import Periodic, parse_interval
from agent.plugins import AgentContext, Plugin, PluginError
from agent.report import format_table
from agent.speedups import TimingSummary
from agent.stats import MANTISSA_BITS, bucket_bounds

log = logging.getLogger(__name__)

SAMPLE_LIMIT = 2048
"""Most durations of one list (ok or failed) of one batch that go into the histogram."""


def sample(durations: Sequence[int], limit: int = SAMPLE_LIMIT) -> tuple[Sequence[int], float]:
    """At most ``limit`` evenly spaced durations, and the weight each one stands for."""
    count = len(durations)
    if count <= limit:
        return durations, 1.0
    stride = -(-count // limit)  # ceil: a C-level slice keeps count / stride <= limit items
    kept = durations[::stride]
    return kept, count / len(kept)


class Histogram:
    """Log-linear histogram of durations with float weights (see the module docstring)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[int, float] = {}

    def add(self, durations: Sequence[int]) -> None:
        """Count a batch; costs at most ``SAMPLE_LIMIT`` Python-level steps."""
        kept, weight = sample(durations)
        counts = self.counts
        get = counts.get
        for duration in kept:  # bucket_of() inlined: a call per sample would double the cost
            shift = duration.bit_length() - MANTISSA_BITS - 1
            bucket = (shift << MANTISSA_BITS) + (duration >> shift) if shift > 0 else duration
            counts[bucket] = get(bucket, 0.0) + weight

    def percentiles(self, quantiles: Sequence[float], low: int, high: int) -> list[int]:
        """Nearest-rank estimates for ``quantiles`` (ascending, in 0..1), within ``[low, high]``.

        ``low``/``high`` are the exact minimum and maximum, which bound the estimate.
        """
        buckets = sorted(self.counts.items())
        if not buckets:
            return [low for _ in quantiles]
        total = sum(weight for _, weight in buckets)
        results: list[int] = []
        cumulative = 0.0
        position = 0
        for quantile in quantiles:
            # The tolerance absorbs float rounding of q * n (0.29 * 100 = 28.999...).
            target = quantile * total - 1e-9 * total
            while position < len(buckets) - 1 and cumulative + buckets[position][1] < target:
                cumulative += buckets[position][1]
                position += 1
            first, last = bucket_bounds(buckets[position][0])
            first, last = max(first, low), min(last, high)
            # A bucket mapped from clock ticks may sit just outside [low, high]: clamp.
            results.append(min(max(first + (last - first) // 2, low), high))
        return results


class ComponentStats:
    """Statistics of one component (an aspect's join point); not thread-safe on its own."""

    __slots__ = (
        "aspect",
        "count",
        "failed",
        "histogram",
        "max_ns",
        "min_ns",
        "name",
        "total_ns",
        "type",
    )

    def __init__(self, joinpoint: JoinPoint) -> None:
        self.aspect = joinpoint.aspect
        self.type = joinpoint.type
        self.name = joinpoint.name
        self.count = 0
        self.failed = 0
        self.total_ns = 0
        self.min_ns = 0
        self.max_ns = 0
        self.histogram = Histogram()

    def _extremes(self, low: int, high: int) -> None:
        if self.count:
            self.min_ns = min(self.min_ns, low)
            self.max_ns = max(self.max_ns, high)
        else:
            self.min_ns, self.max_ns = low, high

    def add_summary(self, summary: TimingSummary) -> None:
        """Fold in what the C accelerator aggregated (already exact, histogram included)."""
        calls = summary.ok + summary.failed
        if not calls:
            return
        self._extremes(summary.min_ns, summary.max_ns)
        self.count += calls
        self.failed += summary.failed
        self.total_ns += summary.ok_total_ns + summary.failed_total_ns
        counts = self.histogram.counts
        for bucket, weight in summary.buckets:
            counts[bucket] = counts.get(bucket, 0.0) + weight

    def add(self, ok: Sequence[int], failed: Sequence[int]) -> None:
        """Fold in a batch: exact fields with C-level builtins, percentiles by sampling."""
        for durations, is_failed in ((ok, False), (failed, True)):
            if not durations:
                continue
            self._extremes(min(durations), max(durations))
            self.count += len(durations)
            if is_failed:
                self.failed += len(durations)
            self.total_ns += sum(durations)
            self.histogram.add(durations)

    def as_dict(self) -> dict[str, Any]:
        """The component as the report's JSON object (ns fields are integers)."""
        p50, p99 = self.histogram.percentiles((0.5, 0.99), self.min_ns, self.max_ns)
        return {
            "aspect": self.aspect,
            "type": self.type,
            "name": self.name,
            "count": self.count,
            "failed": self.failed,
            "total_ns": self.total_ns,
            "min_ns": self.min_ns,
            "mean_ns": (self.total_ns + self.count // 2) // self.count,
            "p50_ns": p50,
            "p99_ns": p99,
            "max_ns": self.max_ns,
        }


class Components:
    """The :class:`ComponentStats` of every join point a plugin heard of; thread-safe.

    What a statistics plugin keeps: the timing plugin, and the prometheus plugin,
    which fills one from the same drains and turns it into metrics at each scrape.
    """

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], ComponentStats] = {}
        self.lock = threading.Lock()
        """Held while a batch is folded in; hold it to read a consistent view."""

    def _get(self, joinpoint: JoinPoint) -> ComponentStats:
        key = (joinpoint.aspect, joinpoint.name)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = ComponentStats(joinpoint)
        return stats

    def add(self, joinpoint: JoinPoint, ok: Sequence[int], failed: Sequence[int]) -> None:
        with self.lock:
            self._get(joinpoint).add(ok, failed)

    def add_summary(self, joinpoint: JoinPoint, summary: TimingSummary) -> None:
        with self.lock:
            self._get(joinpoint).add_summary(summary)

    def stats(self) -> list[ComponentStats]:
        """The components with calls so far; read them under :attr:`lock`."""
        return [stats for stats in self._stats.values() if stats.count]

    def as_dicts(self) -> list[dict[str, Any]]:
        """Every component with calls so far, as report objects, by ``total_ns`` descending."""
        with self.lock:
            components = [stats.as_dict() for stats in self.stats()]
        components.sort(key=lambda c: (-c["total_ns"], c["name"], c["aspect"]))
        return components


def write_report(report: dict[str, Any], path: str) -> None:
    """Write ``report`` as indented JSON to ``path`` atomically (:func:`agent.files.write_atomic`).

    Readers see the old file or the new one, never half of one. Raises ``OSError``.
    """
    write_atomic(path, itertools.chain(json.JSONEncoder(indent=2).iterencode(report), "\n"))


class TimingPlugin(Plugin):
    """Per-component timing statistics, written as a JSON report (or shown) at stop.

    With an interval, the report is also rewritten every that many seconds.
    """

    name = "timing"

    def __init__(self, report: str | None = None, interval: str | None = None) -> None:
        self.report = report or None
        self.interval = _interval(interval, "interval")
        self.path: str | None = None
        """Where :meth:`stop` writes the report, decided at :meth:`start`."""
        self._python = platform.python_version()
        self._backend = "unknown"
        self.components = Components()
        self._started_at = time.monotonic()
        self._writer: Periodic | None = None
        self._write_failed = False

    def start(self, context: AgentContext) -> None:
        self._python = context.python
        self._backend = context.backend
        self._started_at = time.monotonic()
        chosen = self.report or context.report
        # "{pid}" in the name keeps the reports of processes sharing a pointcut file apart.
        self.path = os.path.abspath(chosen.replace("{pid}", str(os.getpid()))) if chosen else None
        interval = self.interval or getattr(context, "report_interval", None)
        if interval is None:
            return
        if self.path is None:
            log.warning(
                "twinweave timing: a report interval (%g s) needs a report file "
                '(report="stats.json" or --report); the table is shown at exit only',
                interval,
            )
            return
        self._writer = Periodic(interval, self._rewrite, "twinweave-report")
        self._writer.start()

    def on_timings(self, joinpoint: JoinPoint, ok: list[int], failed: list[int]) -> None:
        self.components.add(joinpoint, ok, failed)

    def on_summary(self, joinpoint: JoinPoint, summary: TimingSummary) -> None:
        self.components.add_summary(joinpoint, summary)

    def build_report(self, final: bool = True) -> dict[str, Any]:
        """The report so far: DESIGN.md's fields, and when and how long into the run."""
        return {
            "python": self._python,
            "backend": self._backend,
            "components": self.components.as_dicts(),
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "final": final,
        }

    def _rewrite(self) -> None:
        """One live rewrite (the writer thread); a failure is logged once, then retried."""
        assert self.path is not None
        try:
            write_report(self.build_report(final=False), self.path)
        except OSError as exc:
            if not self._write_failed:
                self._write_failed = True
                log.error(
                    "twinweave timing: could not rewrite the report %s (%s: %s); retrying "
                    "every %g s, and once more at exit",
                    self.path,
                    type(exc).__name__,
                    exc,
                    self._writer.interval if self._writer else 0,
                )
        else:
            self._write_failed = False

    def stop(self) -> None:
        """Write the report to :attr:`path`, or show it on stderr as a table; never raises."""
        if self._writer is not None:
            self._writer.stop()
        report = self.build_report(final=True)
        if self.path is None:
            _show(format_table(report))
            return
        try:
            write_report(report, self.path)
        except Exception as exc:
            log.error(
                "twinweave timing: could not write the report to %s (%s: %s); check that "
                "the folder exists and is writable. The report was:\n%s",
                self.path,
                type(exc).__name__,
                exc,
                format_table(report),
            )
        else:
            log.info("twinweave timing: report written to %s", self.path)


def _interval(text: str | None, option: str) -> float | None:
    try:
        return parse_interval(text, f'timing plugin option {option}="{text}"')
    except ValueError as exc:
        raise PluginError(str(exc)) from None


def _show(table: str) -> None:
    """The table on stderr, at exit: the user's profile, shown without asking."""
    stream = sys.stderr
    if stream is None:  # pythonw, or a closed stderr: nowhere to show it
        return
    try:
        stream.write(table + "\n")
        stream.flush()
    except UnicodeEncodeError:
        stream.write(table.replace("µ", "u") + "\n")
    except (OSError, ValueError):
        pass
