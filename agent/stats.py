"""Timing statistics: every formula that turns durations into a report's numbers.

This module owns the statistics of timed calls, whoever collects them: the
log-linear bucket scheme, the weighted histogram and its nearest-rank
percentiles, the sampling that bounds the work per batch, a component's exact
fields (count, failed, total, min, max, mean) and the merging of summaries into
them, the :class:`TimingSummary` that carries a batch between the drain and the
plugins (from raw durations, or from the C accelerator's clock ticks), and the
field names of a report's component. It imports nothing from the agent at run
time, so ``agent.report`` can use it wherever the JSON file is. It does not
collect durations (woven code, ``agent.events``, ``agent.speedups``), write
reports (``agent.plugins.timing``) or render them (``agent.report``).

Buckets. A bucket is a duration's bit length plus its ``MANTISSA_BITS + 1``
leading bits, so there are ``2**MANTISSA_BITS`` = 64 buckets per power of two
(relative width 1/64) and one bucket per unit below 128. ``agent/_speedups.c``
computes the same buckets on clock ticks (its ``bucket_of`` and ``MANTISSA_BITS``
mirror the ones here; ``tests/agent/test_stats.py`` checks that they agree), and
:func:`scale_ticks` maps them to nanosecond buckets.

Accuracy. ``count``, ``failed``, ``total_ns``, ``min_ns``, ``max_ns`` are exact and
``mean_ns`` is ``total_ns / count`` rounded. ``p50_ns`` and ``p99_ns`` are
nearest-rank percentiles estimated from the histogram:

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
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # only for annotations: at run time this module needs nothing of the agent
    from agent.events import JoinPoint

MANTISSA_BITS = 6
"""Buckets per power of two are ``2**MANTISSA_BITS``: relative bucket width 1/64."""
LINEAR = 1 << (MANTISSA_BITS + 1)
"""Below this, one bucket per unit."""

SAMPLE_LIMIT = 2048
"""Most durations of one list (ok or failed) of one batch that go into the histogram."""

PERCENTILES = (0.5, 0.99)
"""The quantiles a report gives, as ``p50_ns`` and ``p99_ns``."""

TEXT_FIELDS = ("aspect", "type", "name")
COUNT_FIELDS = ("count", "failed")
NS_FIELDS = ("total_ns", "min_ns", "mean_ns", "p50_ns", "p99_ns", "max_ns")
FIELDS = TEXT_FIELDS + COUNT_FIELDS + NS_FIELDS
"""A report component's keys, in the order they are written."""


def bucket_of(duration: int) -> int:
    """Histogram bucket of a duration (``>= 0``); buckets are ordered like durations."""
    shift = duration.bit_length() - MANTISSA_BITS - 1
    if shift <= 0:
        return duration
    return (shift << MANTISSA_BITS) + (duration >> shift)


def bucket_bounds(bucket: int) -> tuple[int, int]:
    """The smallest and largest duration that fall in ``bucket`` (inclusive)."""
    if bucket < LINEAR:
        return bucket, bucket
    shift = (bucket >> MANTISSA_BITS) - 1
    mantissa = bucket - (shift << MANTISSA_BITS)
    return mantissa << shift, ((mantissa + 1) << shift) - 1


def middle(first: int, last: int) -> int:
    """The duration that stands for the range ``[first, last]``: its middle, rounded down."""
    return first + (last - first) // 2


def bucket_middle(bucket: int) -> int:
    """The duration that stands for ``bucket`` (where a coarser scale places it)."""
    return middle(*bucket_bounds(bucket))


def sample(durations: Sequence[int], limit: int = SAMPLE_LIMIT) -> tuple[Sequence[int], float]:
    """At most ``limit`` evenly spaced durations, and the weight each one stands for."""
    count = len(durations)
    if count <= limit:
        return durations, 1.0
    stride = -(-count // limit)  # ceil: a C-level slice keeps count / stride <= limit items
    kept = durations[::stride]
    return kept, count / len(kept)


class TimingSummary(NamedTuple):
    """What a join point's timing-mode calls came to since the last drain (ns)."""

    ok: int
    failed: int
    ok_total_ns: int
    failed_total_ns: int
    min_ns: int
    max_ns: int
    buckets: list[tuple[int, int]]
    """(bucket of :func:`bucket_of` in ns, number of calls), by bucket."""


def summarize(ok: list[int], failed: list[int]) -> TimingSummary:
    """The summary of raw durations (for ``on_summary`` plugins on the Python path)."""
    every = ok + failed
    buckets = Counter(map(bucket_of, every))
    return TimingSummary(
        len(ok), len(failed), sum(ok), sum(failed), min(every), max(every), sorted(buckets.items())
    )


def scale_ticks(taken: tuple[Any, ...], scale: float) -> TimingSummary:
    """A C recorder's ``take()`` (in clock ticks, buckets included) as a summary in ns.

    ``scale`` is nanoseconds per tick. A tick bucket lands in the nanosecond bucket
    of its exact middle, scaled before rounding (a tick is a fraction of a ns).
    """
    ok, failed, ok_ticks, failed_ticks, low, high, tick_buckets = taken
    buckets: Counter[int] = Counter()
    for bucket, count in tick_buckets:
        first, last = bucket_bounds(bucket)
        buckets[bucket_of(round((first + last) / 2 * scale))] += count
    return TimingSummary(
        ok,
        failed,
        round(ok_ticks * scale),
        round(failed_ticks * scale),
        round(low * scale),
        round(high * scale),
        sorted(buckets.items()),
    )


class Histogram:
    """Log-linear histogram of durations with float weights (see the module docstring)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[int, float] = {}

    def add(self, durations: Sequence[int]) -> None:
        """Count a batch; costs at most ``SAMPLE_LIMIT`` Python-level steps."""
        kept, weight = sample(durations)
        counts = self.counts
        get, bucket = counts.get, bucket_of  # locals: this loop is the drain's hot spot
        for duration in kept:
            key = bucket(duration)
            counts[key] = get(key, 0.0) + weight

    def merge(self, buckets: Iterable[tuple[int, int]]) -> None:
        """Fold in ``(bucket, calls)`` pairs counted elsewhere (a :class:`TimingSummary`)."""
        counts = self.counts
        for bucket, weight in buckets:
            counts[bucket] = counts.get(bucket, 0.0) + weight

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
            # A bucket mapped from clock ticks may sit just outside [low, high]: clamp.
            estimate = middle(max(first, low), min(last, high))
            results.append(min(max(estimate, low), high))
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
        self.histogram.merge(summary.buckets)

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
        """The component as the report's JSON object: keys :data:`FIELDS`, ns fields integers."""
        p50, p99 = self.histogram.percentiles(PERCENTILES, self.min_ns, self.max_ns)
        values = (
            self.aspect,
            self.type,
            self.name,
            self.count,
            self.failed,
            self.total_ns,
            self.min_ns,
            (self.total_ns + self.count // 2) // self.count,  # mean, rounded
            p50,
            p99,
            self.max_ns,
        )
        return dict(zip(FIELDS, values))


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


def totals(components: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Calls and failed calls of report components, all together."""
    calls = failed = 0
    for component in components:
        calls += component["count"]
        failed += component["failed"]
    return calls, failed
