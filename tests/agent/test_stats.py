"""Tests for the timing statistics (agent.stats): buckets, percentiles, summaries."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import speedups, stats
from agent.events import JoinPoint
from agent.stats import (
    FIELDS,
    SAMPLE_LIMIT,
    ComponentStats,
    TimingSummary,
    bucket_bounds,
    bucket_middle,
    bucket_of,
    sample,
    scale_ticks,
    summarize,
    totals,
)

FLOW = JoinPoint("workflows", "workflow", "shop.flows.OrderWorkflow.on_message")
TOLERANCE = 1 / 128
"""Documented accuracy of p50/p99 while every duration of a batch is kept."""


def nearest_rank(values: list[int], quantile: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(quantile * len(ordered) - 1e-9)) - 1]


def batches(values: list[int], size: int) -> list[list[int]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


# -- histogram buckets ------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**62))
def test_bucket_contains_value_and_is_narrow(value: int) -> None:
    first, last = bucket_bounds(bucket_of(value))
    assert first <= value <= last
    assert last - first < max(1, first * TOLERANCE * 2)


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**40))
def test_buckets_are_ordered_like_values(a: int, b: int) -> None:
    if a <= b:
        assert bucket_of(a) <= bucket_of(b)


def test_small_durations_have_exact_buckets() -> None:
    assert [bucket_bounds(bucket_of(v)) for v in (0, 1, 127)] == [(0, 0), (1, 1), (127, 127)]
    assert bucket_bounds(bucket_of(128)) == (128, 129)


# -- exact fields and percentiles -----------------------------------------------------------


def test_known_durations_give_exact_fields() -> None:
    component = ComponentStats(FLOW)
    component.add([300, 100], [])
    component.add([200], [1000, 50])
    row = component.as_dict()
    assert tuple(row) == FIELDS  # the literal order is pinned by test_timing's report shape
    assert (row["aspect"], row["type"], row["name"]) == (FLOW.aspect, FLOW.type, FLOW.name)
    assert row["count"] == 5
    assert row["failed"] == 2
    assert row["total_ns"] == 1650
    assert row["min_ns"] == 50
    assert row["max_ns"] == 1000
    assert row["mean_ns"] == 330
    assert row["p50_ns"] == 200  # below 128 ns buckets are exact; 200 is in [200, 201]
    assert abs(row["p99_ns"] - 1000) <= 1000 * TOLERANCE


def test_percentiles_of_small_values_are_exact() -> None:
    component = ComponentStats(FLOW)
    component.add(list(range(100, 0, -1)), [])
    row = component.as_dict()
    assert (row["p50_ns"], row["p99_ns"], row["min_ns"], row["max_ns"]) == (50, 99, 1, 100)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=600),
    st.lists(st.integers(min_value=0, max_value=10**7), max_size=50),
    st.integers(min_value=1, max_value=200),
)
def test_percentiles_within_documented_tolerance(
    ok: list[int], failed: list[int], batch_size: int
) -> None:
    component = ComponentStats(FLOW)
    for ok_batch in batches(ok, batch_size):
        component.add(ok_batch, [])
    component.add([], failed)
    row = component.as_dict()
    everything = ok + failed
    assert row["count"] == len(everything)
    assert row["failed"] == len(failed)
    assert row["total_ns"] == sum(everything)
    assert row["min_ns"] == min(everything)
    assert row["max_ns"] == max(everything)
    for key, quantile in (("p50_ns", 0.5), ("p99_ns", 0.99)):
        reference = nearest_rank(everything, quantile)
        assert abs(row[key] - reference) <= reference * TOLERANCE, (key, reference, row[key])


def test_sample_is_bounded_and_weights_add_up() -> None:
    durations = list(range(500_000))
    kept, weight = sample(durations)
    assert len(kept) <= SAMPLE_LIMIT
    assert len(kept) > SAMPLE_LIMIT // 2
    assert kept[0] == 0 and kept[-1] > 499_000 - 500_000 // SAMPLE_LIMIT
    assert weight * len(kept) == pytest.approx(500_000)
    small = [5, 6, 7]
    assert sample(small) == (small, 1.0)


def test_big_batch_keeps_exact_fields_and_bounded_histogram_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A well-mixed, deterministic 500k batch: a permutation-like spread over 1 µs .. 1 ms.
    durations = [1_000 + (i * 7_919) % 999_983 for i in range(500_000)]
    kept_sizes: list[int] = []
    original = stats.sample

    def counting_sample(values: Any, limit: int = SAMPLE_LIMIT) -> Any:
        kept, weight = original(values, limit)
        kept_sizes.append(len(kept))
        return kept, weight

    monkeypatch.setattr(stats, "sample", counting_sample)
    component = ComponentStats(FLOW)
    component.add(durations, [])
    component.add(durations[:1000], [])
    row = component.as_dict()
    everything = durations + durations[:1000]
    assert row["count"] == 501_000
    assert row["total_ns"] == sum(everything)
    assert row["min_ns"] == min(everything) and row["max_ns"] == max(everything)
    assert max(kept_sizes) <= SAMPLE_LIMIT
    assert sum(component.histogram.counts.values()) == pytest.approx(501_000)
    for key, quantile in (("p50_ns", 0.5), ("p99_ns", 0.99)):
        reference = nearest_rank(everything, quantile)
        assert abs(row[key] - reference) <= reference * 0.03, (key, reference, row[key])


def test_percentiles_stay_within_min_and_max() -> None:
    component = ComponentStats(FLOW)
    # One call of 90.4 ms whose histogram bucket, mapped from clock ticks, fell just below.
    component.add_summary(
        TimingSummary(1, 0, 90_400_000, 0, 90_400_000, 90_400_000, [(bucket_of(89_000_000), 1)])
    )
    row = component.as_dict()
    assert row["p50_ns"] == row["p99_ns"] == row["min_ns"] == 90_400_000


# -- summaries and the C accelerator's buckets --------------------------------------------


@pytest.mark.skipif(not speedups.available(), reason="the C accelerator is not built here")
def test_the_c_accelerator_uses_the_same_bucket_scheme() -> None:
    from agent import _speedups

    assert _speedups.MANTISSA_BITS == stats.MANTISSA_BITS
    recorder = speedups.recorder()
    durations = [0, 1, 127, 128, 129, 1_000, 65_537, 10**9]
    for duration in durations:
        recorder.add(duration, False)
    taken = recorder.take()
    assert taken[6] == sorted(Counter(map(bucket_of, durations)).items())  # 128, 129 share


def test_summarize_counts_every_duration_exactly() -> None:
    summary = summarize([300, 100, 300], [1_000])
    assert summary == TimingSummary(
        3, 1, 700, 1_000, 100, 1_000, [(100, 1), (bucket_of(300), 2), (bucket_of(1_000), 1)]
    )


def test_scale_ticks_maps_each_tick_bucket_by_its_middle() -> None:
    taken = (2, 1, 300, 100, 90, 200, [(bucket_of(90), 1), (bucket_of(200), 2)])
    assert scale_ticks(taken, 1.0) == TimingSummary(2, 1, 300, 100, 90, 200, taken[6])
    halved = scale_ticks(taken, 0.5)
    assert halved[:6] == (2, 1, 150, 50, 45, 100)
    assert halved.buckets == [(45, 1), (100, 2)]


def test_bucket_middle_lies_in_the_bucket() -> None:
    for duration in (0, 5, 127, 128, 129, 1_000_003, 2**40 + 12_345):
        first, last = bucket_bounds(bucket_of(duration))
        assert first <= bucket_middle(bucket_of(duration)) <= last
        assert bucket_middle(bucket_of(duration)) == (first + last) // 2


def test_a_component_is_written_with_the_report_fields_and_totals_add_up() -> None:
    component = ComponentStats(FLOW)
    component.add([10, 20], [30])
    row = component.as_dict()
    assert tuple(row) == FIELDS
    assert totals([row, row]) == (6, 2)
