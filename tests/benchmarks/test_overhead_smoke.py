"""Smoke test of benchmarks/overhead.py: every row sets up and computes what ``bare`` does.

Behaviour only: nothing here is timed and no assertion is about speed (the speed
claim is shown by running the benchmark itself, see benchmarks/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _pyperf, overhead
from tests.benchmarks.scripts import profiled_calls, row_fixture, run_quickest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"
CALLS = 7


variant = row_fixture(overhead.SETUPS)


NEW_ROWS = (
    "twinweave_events",
    "wrapt_decorator",
    "setprofile_noop",
    "cprofile",
    "monitoring_noop",
    "method_bare",
    "method_closure_decorator",
    "method_twinweave_timing",
    "generator_bare",
    "generator_closure_decorator",
    "generator_twinweave_timing",
    "coroutine_bare",
    "coroutine_closure_decorator",
    "coroutine_twinweave_timing",
)


def test_rows_are_the_documented_ones() -> None:
    assert set(overhead.SETUPS) <= set(overhead.DESCRIPTIONS)
    assert set(overhead.ALL_SETUPS) == set(overhead.DESCRIPTIONS)
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


def test_every_new_row_is_measured_or_said_to_be_missing_on_this_python() -> None:
    for name in NEW_ROWS:
        assert name in overhead.ALL_SETUPS
        assert (name in overhead.SETUPS) != (name in overhead.MISSING), name
    monitoring = sys.version_info >= (3, 12)
    assert ("monitoring_noop" in overhead.SETUPS) == monitoring
    if not monitoring:
        assert overhead.MISSING["monitoring_noop"] == "sys.monitoring exists from Python 3.12"
    wrapt = importlib.util.find_spec("wrapt") is not None
    assert ("wrapt_decorator" in overhead.SETUPS) == wrapt
    for kind in overhead.KINDS.values():
        assert kind["bare"] in overhead.SETUPS
        assert kind["closure_decorator"] in overhead.SETUPS


def test_wrapt_row_is_missing_with_a_clear_line_without_wrapt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "wrapt", None)  # find_spec answers None: not installed
    missing = overhead.missing_rows()
    assert missing["wrapt_decorator"] == "wrapt not installed"
    monkeypatch.setattr(overhead, "MISSING", missing)
    rows = {name: _row(30.0 + i) for i, name in enumerate(overhead.SETUPS)}
    rows.pop("wrapt_decorator", None)
    text = overhead.format_summary(overhead.summarize(rows, {"same_code_object": True}))
    (line,) = [line for line in text.splitlines() if line.startswith("wrapt_decorator ")]
    assert line.split() == ["wrapt_decorator", "missing:", "wrapt", "not", "installed"]


def test_every_row_runs_its_timed_loop_and_computes_what_bare_does(variant: Any) -> None:
    loop = overhead.make_loop(variant.body, inner=3)
    elapsed = overhead.run_variant(variant, loop, 2)  # runs; the figure itself is not checked
    assert isinstance(elapsed, float)
    assert sys.getprofile() is None, "a profiler row left its profiler on"
    if variant.name == "perf_counter_ns_x2":
        assert isinstance(variant.fn(), int)
        return
    if variant.name == "empty_loop":
        return
    kind = overhead.KINDS[variant.kind]
    assert variant.body == kind["body"]
    bare = overhead.SETUPS[kind["bare"]]()
    try:
        for value in (overhead.ARG, -1, 10**20):
            assert overhead.use(variant, value) == overhead.use(bare, value)
        expected = overhead.EXPECTED
        if variant.kind == "generator":
            expected = [overhead.ARG, overhead.ARG + 1, overhead.ARG + 2]
        assert overhead.use(variant, overhead.ARG) == expected
        with pytest.raises(TypeError):
            overhead.use(variant, "text")  # failures propagate unchanged
        with pytest.raises(TypeError):
            overhead.use(bare, "text")
    finally:
        bare.close()


TIMING_ROWS = [
    "setup_twinweave_timing",
    "setup_twinweave_timing_hook",
    "setup_method_twinweave_timing",
    "setup_generator_twinweave_timing",
    "setup_coroutine_twinweave_timing",
]


@pytest.mark.parametrize("setup", TIMING_ROWS)
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
            overhead.use(variant, overhead.ARG)
        with pytest.raises(TypeError):
            overhead.use(variant, "text")
        variant.plugin_set.drain()
        (component,) = variant.timing.build_report()["components"]
        assert component["name"] == variant.probe.joinpoint.name
        assert component["count"] == 6 + CALLS + 1
        assert component["failed"] == 1
    finally:
        variant.close()
    assert not any(t.name == "twinweave-drain" and t.is_alive() for t in threading.enumerate())


def test_kind_rows_weave_the_function_of_their_kind() -> None:
    names = {
        "setup_method_twinweave_timing": "C.m",
        "setup_generator_twinweave_timing": "gen",
        "setup_coroutine_twinweave_timing": "coro",
    }
    for setup, qualname in names.items():
        variant = getattr(overhead, setup)()
        try:
            assert variant.probe.joinpoint.name == f"{overhead.TARGET_MODULE}.{qualname}"
        finally:
            variant.close()


def test_events_row_delivers_every_start_and_end_event_to_a_python_plugin() -> None:
    variant = overhead.setup_twinweave_events()
    try:
        assert variant.probe.steps_mode
        assert variant.timing is None
        for _ in range(CALLS):
            assert variant.fn(overhead.ARG) == overhead.EXPECTED
        counter = variant.notes["counter"]
        assert (counter.starts, counter.steps) == (CALLS, CALLS)
    finally:
        variant.close()


def test_profiler_rows_are_on_only_around_the_timed_loop() -> None:
    seen: list[Any] = []
    variant = overhead.setup_setprofile_noop()
    try:
        loop = overhead.make_loop("fn(arg); seen(_getprofile())", inner=1)
        loop.__globals__.update(_getprofile=sys.getprofile, seen=seen.append)
        overhead.run_variant(variant, loop, 2)
        assert seen == [_pyperf.noop_profile] * 2
        assert sys.getprofile() is None
    finally:
        variant.close()
    variant = overhead.setup_cprofile()
    try:
        overhead.run_variant(variant, overhead.make_loop(variant.body, inner=3), 2)
        profiler = variant.notes["profiler"]
        assert profiled_calls(profiler, "f") == [6]
    finally:
        variant.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring exists from 3.12")
def test_monitoring_row_fires_on_its_code_only_and_frees_its_tool_id() -> None:
    variant = overhead.setup_monitoring_noop()
    tool = variant.notes["tool_id"]
    mon = sys.monitoring
    try:
        assert mon.get_tool(tool) == overhead.MONITORING_TOOL_NAME
        events = mon.get_local_events(tool, variant.fn.__code__)
        assert events == mon.events.PY_START | mon.events.PY_RETURN
        assert mon.get_events(tool) == 0  # no global events: only f's code is instrumented
    finally:
        variant.close()
    assert mon.get_tool(tool) is None


@pytest.mark.skipif(importlib.util.find_spec("wrapt") is None, reason="wrapt not installed")
def test_wrapt_row_is_a_wrapt_function_wrapper() -> None:
    import wrapt

    variant = overhead.setup_wrapt_decorator()
    assert isinstance(variant.fn, wrapt.FunctionWrapper)
    assert variant.fn(overhead.ARG) == overhead.EXPECTED


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


def test_no_plugin_row_is_matched_but_keeps_the_compiled_code() -> None:
    variant = overhead.setup_twinweave_no_plugin()
    try:
        assert variant.notes["same_code_object"] is True
        assert overhead.probe_of(variant.fn.__code__) is None
        assert variant.plugin_set is not None and not variant.plugin_set.plugins
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


def _row(mean: float) -> dict:
    return {"mean_ns": mean, "stdev_ns": 1.0, "sem_ns": 0.5, "values": 4}


def test_summary_is_derived_from_the_rows_only() -> None:
    """The summary arithmetic, on made-up rows (no timing involved)."""
    row = _row
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


def test_kinds_are_compared_with_their_own_baselines() -> None:
    rows = {name: _row(100.0) for name in overhead.SETUPS}
    rows.update(
        bare=_row(30.0),
        closure_decorator=_row(130.0),
        wrapt_decorator=_row(330.0),
        method_bare=_row(40.0),
        method_closure_decorator=_row(80.0),
        method_twinweave_timing=_row(60.0),
    )
    if "wrapt_decorator" not in overhead.SETUPS:
        del rows["wrapt_decorator"]
    summary = overhead.summarize(rows, {"same_code_object": True})
    vs = summary["vs_baselines"]
    assert vs["method_twinweave_timing"]["x_bare"] == pytest.approx(1.5)
    assert vs["method_twinweave_timing"]["x_decorator"] == pytest.approx(0.75)
    assert vs["method_twinweave_timing"]["added_vs_decorator_added"] == pytest.approx(0.5)
    assert summary["added_vs_bare"]["method_twinweave_timing"]["ns"] == pytest.approx(20.0)
    if "wrapt_decorator" in rows:
        assert vs["wrapt_decorator"]["added_vs_decorator_added"] == pytest.approx(3.0)
    text = overhead.format_summary(summary)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    for name in overhead.ALL_SETUPS:
        assert name in lines, name
        if name in overhead.MISSING:
            assert f"missing: {overhead.MISSING[name]}" in lines[name]
    for kind in overhead.KINDS.values():
        assert f"-- {kind['title']}" in text


@pytest.mark.skipif(importlib.util.find_spec("pyperf") is None, reason="pyperf not installed")
def test_the_script_runs_every_row_in_one_pyperf_run(tmp_path: Path) -> None:
    """End to end, with pyperf's quickest mode (one worker, one value of one loop per row)."""
    done, summary_file = run_quickest(SCRIPT, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "never awaited" not in done.stderr
    table = done.stdout[done.stdout.index("twinweave call overhead") :]
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    for name in overhead.SETUPS:
        assert name in lines and "missing" not in lines[name], name
    for name, reason in overhead.MISSING.items():
        assert f"missing: {reason}" in lines[name]
    summary = json.loads(summary_file.read_text())
    assert set(summary["rows"]) == set(overhead.SETUPS)
