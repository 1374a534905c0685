"""Smoke test of benchmarks/overhead.py: every row sets up and computes what ``bare`` does.

Behaviour only: nothing here is timed and no assertion is about speed (the speed
claim is shown by running the benchmark itself, see benchmarks/README.md).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"
CALLS = 7


def _load() -> ModuleType:
    """Import the benchmark script from its file (it need not be on sys.path)."""
    name = "twinweave_benchmarks_overhead"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


overhead = _load()


@pytest.fixture(params=sorted(overhead.SETUPS))
def variant(request: pytest.FixtureRequest) -> Iterator[Any]:
    built = overhead.SETUPS[request.param]()
    try:
        yield built
    finally:
        built.close()


def test_rows_are_the_documented_ones() -> None:
    assert set(overhead.SETUPS) <= set(overhead.DESCRIPTIONS)
    monitoring = sys.version_info >= (3, 12)
    assert ("twinweave_monitoring" in overhead.SETUPS) == monitoring
    for required in (
        "bare",
        "closure_decorator",
        "twinweave_timing",
        "twinweave_timing_hook",
        "twinweave_unmatched",
        "perf_counter_ns_x2",
        "empty_loop",
    ):
        assert required in overhead.SETUPS


def test_every_row_runs_its_timed_loop_and_computes_what_bare_does(variant: Any) -> None:
    bare = overhead.setup_bare().fn
    loop = overhead.make_loop(variant.body, inner=3)
    elapsed = overhead.run_variant(variant, loop, 2)  # runs; the figure itself is not checked
    assert isinstance(elapsed, float)
    if variant.body == "fn(arg)":
        for value in (overhead.ARG, -1, 10**20):
            assert variant.fn(value) == bare(value)
        assert variant.fn(overhead.ARG) == overhead.EXPECTED
        with pytest.raises(TypeError):
            variant.fn("text")  # failures propagate unchanged
        with pytest.raises(TypeError):
            bare("text")
    elif variant.name == "perf_counter_ns_x2":
        assert isinstance(variant.fn(), int)
    else:
        assert variant.name == "empty_loop"


@pytest.mark.parametrize("setup", ["setup_twinweave_timing", "setup_twinweave_timing_hook"])
def test_woven_timing_rows_record_calls_into_the_timing_plugin(setup: str) -> None:
    variant = getattr(overhead, setup)()
    try:
        assert variant.plugin_set.draining, "the drain thread runs as in production"
        assert variant.probe is not None and not variant.probe.steps_mode
        assert isinstance(variant.timing, overhead.TimingPlugin)
        loop = overhead.make_loop(variant.body, inner=3)
        overhead.run_variant(variant, loop, 2)  # 6 calls, drained on the clock
        assert variant.probe.ok == []
        for _ in range(CALLS):
            variant.fn(overhead.ARG)
        with pytest.raises(TypeError):
            variant.fn("text")
        variant.plugin_set.drain()
        (component,) = variant.timing.build_report()["components"]
        assert component["name"] == overhead.BENCH_JOINPOINT.name
        assert component["count"] == 6 + CALLS + 1
        assert component["failed"] == 1
    finally:
        variant.close()
    assert not any(t.name == "twinweave-drain" and t.is_alive() for t in threading.enumerate())


def test_python_path_row_times_on_the_python_path() -> None:
    variant = overhead.setup_twinweave_timing_python()
    try:
        assert variant.probe.recorder is None
        for _ in range(CALLS):
            assert variant.fn(overhead.ARG) == overhead.EXPECTED
        assert len(variant.probe.ok) == CALLS
        variant.plugin_set.drain()
        (component,) = variant.timing.build_report()["components"]
        assert component["count"] == CALLS
    finally:
        variant.close()


def test_unmatched_row_is_the_compiled_code_in_a_module_the_agent_wove() -> None:
    variant = overhead.setup_twinweave_unmatched()
    try:
        assert variant.notes == {"same_code_object": True, "module_was_woven": True}
    finally:
        variant.close()


def test_steps_row_delivers_every_call_to_the_python_plugin() -> None:
    variant = overhead.setup_twinweave_steps()
    try:
        assert variant.probe.steps_mode
        for _ in range(CALLS):
            assert variant.fn(overhead.ARG) == overhead.EXPECTED
        counter = variant.notes["counter"]
        assert counter.steps == CALLS
        assert counter.last.name == overhead.BENCH_JOINPOINT.name
        variant.plugin_set.drain()
        (component,) = variant.timing.build_report()["components"]
        assert component["count"] == CALLS
    finally:
        variant.close()


def test_summary_is_derived_from_the_rows_only() -> None:
    """The summary arithmetic, on made-up rows (no timing involved)."""

    def row(mean: float) -> dict:
        return {"mean_ns": mean, "stdev_ns": 1.0, "sem_ns": 0.5, "values": 4}

    rows = {
        "empty_loop": row(2.0),
        "bare": row(30.0),
        "closure_decorator": row(130.0),
        "twinweave_timing": row(110.0),
        "twinweave_timing_hook": row(100.0),
        "twinweave_unmatched": row(30.0),
        "perf_counter_ns_x2": row(62.0),
        "twinweave_timing_python": row(100.0),
        "twinweave_steps": row(1000.0),
    }
    summary = overhead.summarize(rows, {"same_code_object": True, "module_was_woven": True})
    assert summary["added_vs_bare"]["twinweave_timing"]["ns"] == pytest.approx(80.0)
    assert summary["clock_floor"]["ns"] == pytest.approx(60.0)
    ratios = summary["ratios"]
    assert ratios["twinweave_timing_vs_decorator"]["value"] == pytest.approx(0.8)
    assert ratios["twinweave_timing_vs_clock_floor"]["value"] == pytest.approx(80 / 60)
    assert ratios["twinweave_timing_hook_vs_decorator"]["value"] == pytest.approx(0.7)
    assert summary["python_path_added"]["ns"] == pytest.approx(70.0)
    assert summary["claim"]["holds"] is True
    rows["twinweave_timing_hook"] = row(200.0)  # either woven row failing fails the claim
    assert overhead.summarize(rows, {"same_code_object": True})["claim"]["holds"] is False
    assert "FAILS" in overhead.format_summary(overhead.summarize(rows, {}))
