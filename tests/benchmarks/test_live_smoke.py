"""Smoke test of benchmarks/live.py: every row sets up, runs its real path, and its plugin saw it.

Behaviour only: nothing here is timed and no assertion is about speed (the figures come
from running the benchmark itself, see benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import live, overhead, suite, table
from tests.benchmarks.scripts import run_quickest

pytest.importorskip("prometheus_client")  # the bench and test extras install both
pytest.importorskip("opentelemetry.sdk")
from opentelemetry import trace as otel_trace
from opentelemetry.util._once import Once
from prometheus_client.parser import text_string_to_metric_families

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "live.py"
CALLS = 7
PER_CALL = [name for name in live.PER_CALL_ROWS if name in live.SETUPS]


@pytest.fixture(autouse=True)
def fresh_otel_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    """No global tracer provider yet, as in the fresh worker process each row runs in."""
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(live, "_tracing", None)


def _built(name: str) -> Iterator[Any]:
    variant = live.SETUPS[name]()
    try:
        yield variant
    finally:
        variant.close()


@pytest.fixture(params=PER_CALL)
def per_call(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from _built(request.param)


@pytest.fixture
def row(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from _built(request.param)


def _loop_once(variant: Any) -> int:
    """One iteration of the row's own timed loop (drained on the clock); the calls it made."""
    overhead.run_variant(variant, live.loop_for(variant), 1)
    return live.INNER[variant.name]


def _counts(text: str) -> dict[str, float]:
    """``name`` label -> ``twinweave_step_duration_seconds_count``, from an exposition."""
    return {
        sample.labels["name"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "twinweave_step_duration_seconds_count"
    }


def test_rows_are_the_documented_ones() -> None:
    assert set(live.ALL_SETUPS) == set(live.DESCRIPTIONS) == set(live.INNER)
    assert set(live.ALL_SETUPS) == {*live.PER_CALL_ROWS, *live.SCRAPE_ROWS}
    for name in live.ALL_SETUPS:
        assert (name in live.SETUPS) != (name in live.MISSING), name
    assert live.MISSING == {}  # the test extra installs prometheus_client and the OTel SDK
    assert all(live.INNER[name] == overhead.INNER_LOOPS for name in live.PER_CALL_ROWS)
    assert all(live.INNER[name] == 1 for name in live.SCRAPE_ROWS)


def test_rows_that_need_a_package_say_so_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # find_spec: not installed
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    missing = live.missing_rows()
    assert set(missing) == set(live.NEEDS)
    assert (
        missing["twinweave_otel"] == 'opentelemetry.sdk not installed (pip install -e ".[bench]")'
    )
    assert "prometheus_client not installed" in missing["prometheus_scrape_http"]


def test_every_per_call_row_runs_its_loop_and_computes_what_bare_does(per_call: Any) -> None:
    assert isinstance(overhead.run_variant(per_call, live.loop_for(per_call), 2), float)
    for value in (overhead.ARG, -1, 10**20):
        assert per_call.fn(value) == value + 1
    with pytest.raises(TypeError):
        per_call.fn("text")  # failures propagate unchanged


@pytest.mark.parametrize(
    "row",
    ["twinweave_timing", "twinweave_prometheus", "twinweave_otel", "twinweave_trace"],
    indirect=True,
)
def test_woven_rows_record_their_calls_into_the_timing_plugin(row: Any) -> None:
    assert row.plugin_set.draining, "the drain thread runs as in production"
    assert isinstance(row.timing, overhead.TimingPlugin)
    calls = _loop_once(row) + CALLS
    for _ in range(CALLS):
        row.fn(overhead.ARG)
    row.plugin_set.drain()
    (component,) = row.timing.build_report()["components"]
    assert component["name"] == overhead.BENCH_JOINPOINT.name
    assert component["count"] == calls


@pytest.mark.parametrize("row", ["twinweave_prometheus"], indirect=True)
def test_prometheus_row_keeps_timing_alone_s_probe_and_serves_the_calls(row: Any) -> None:
    timing = overhead.setup_twinweave_timing()
    try:
        assert live._probe_mode(row.probe) == live._probe_mode(timing.probe)
        assert not row.probe.steps_mode
    finally:
        timing.close()
    calls = _loop_once(row)
    row.plugin_set.drain()
    prometheus = row.notes["prometheus"]
    assert prometheus.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(prometheus.url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    assert _counts(text) == {overhead.BENCH_JOINPOINT.name: calls}


@pytest.mark.parametrize("row", ["otel_sdk_span", "otel_sdk_span_attributes"], indirect=True)
def test_anchor_rows_export_one_span_per_call_of_the_application_tracer(row: Any) -> None:
    exporter = row.notes["exporter"]
    provider, shared = live.application_tracing()
    assert shared is exporter and otel_trace.get_tracer_provider() is provider
    calls = _loop_once(row)
    assert exporter.spans == calls
    span = exporter.last
    assert span.name == live.SPAN_NAME
    assert span.instrumentation_scope.name == live.ANCHOR_SCOPE
    expected = live.SPAN_ATTRIBUTES if row.name == "otel_sdk_span_attributes" else {}
    assert dict(span.attributes) == expected
    assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN  # the span has ended


@pytest.mark.parametrize("row", ["twinweave_otel"], indirect=True)
def test_otel_row_spans_come_from_the_plugin_on_the_application_provider(row: Any) -> None:
    exporter = row.notes["exporter"]
    assert row.probe.steps_mode
    calls = _loop_once(row)
    assert exporter.spans == calls
    span = exporter.last
    assert span.name == live.SPAN_NAME
    assert span.instrumentation_scope.name == "twinweave"
    assert span.resource is live.application_tracing()[0].resource
    assert dict(span.attributes) == live.SPAN_ATTRIBUTES
    assert span.end_time - span.start_time >= 0
    with pytest.raises(TypeError):
        row.fn("text")
    assert exporter.spans == calls + 1
    assert exporter.last.status.status_code.name == "ERROR"
    assert row.notes["otel"].mismatches == 0


@pytest.mark.parametrize("row", ["twinweave_trace"], indirect=True)
def test_trace_row_keeps_the_steps_in_its_timeline_in_a_temporary_folder(row: Any) -> None:
    plugin = row.notes["trace"]
    folder = row.notes["folder"]
    assert os.path.dirname(plugin.path) == folder and plugin.limit == live.TRACE_LIMIT
    assert row.probe.steps_mode
    calls = _loop_once(row)
    assert live.timeline_steps(plugin) == calls
    with open(plugin.path, encoding="utf-8") as stream:
        document = json.load(stream)
    (event, *_) = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert event["cat"] == "service" and event["dur"] >= 0
    assert document["otherData"]["steps_kept"] == calls
    row.close()
    assert not os.path.exists(folder)


@pytest.mark.parametrize("row", list(live.SCRAPE_ROWS), indirect=True)
def test_scrape_rows_return_every_component_and_every_call(row: Any) -> None:
    assert row.notes["fed"] == live.COMPONENTS * live.DURATIONS
    assert _loop_once(row) == 1
    counts = _counts(row.fn().decode("utf-8"))
    assert len(counts) == live.COMPONENTS
    assert sum(counts.values()) == row.notes["fed"]
    assert set(counts) == {joinpoint.name for joinpoint in live.scrape_joinpoints()}
    facts = live._scrape_facts(row)
    assert (facts["components"], facts["calls"]) == (live.COMPONENTS, row.notes["fed"])
    url = row.notes["plugin"].url
    row.close()
    with pytest.raises(OSError):  # the row's server is gone with it
        urllib.request.urlopen(url, timeout=5)


def _stats(mean_ns: float, sem_ns: float = 1.0) -> dict[str, Any]:
    return {"mean_ns": mean_ns, "stdev_ns": sem_ns * 2, "sem_ns": sem_ns, "values": 4}


FACTS = {
    "timing_probe": {"steps_mode": False, "in_c": True},
    "prometheus_probe": {"steps_mode": False, "in_c": True},
    "otel_sdk_span_spans_per_call": 1.0,
    "otel_sdk_span_attributes_spans_per_call": 1.0,
    "twinweave_otel_spans_per_call": 1.0,
    "twinweave_otel_span": {"name": live.SPAN_NAME, "attributes": dict(live.SPAN_ATTRIBUTES)},
    "trace_steps_per_call": 1.0,
    "prometheus_scrape_http": {"bytes": 1000, "components": 100, "calls": 300, "fed": 300},
}


def _rows() -> dict[str, dict[str, Any]]:
    return {
        "bare": _stats(30.0),
        "twinweave_timing": _stats(70.0),
        "twinweave_prometheus": _stats(71.0),
        "otel_sdk_span": _stats(5030.0, 20.0),
        "otel_sdk_span_attributes": _stats(6030.0, 20.0),
        "twinweave_otel": _stats(5530.0, 20.0),
        "twinweave_trace": _stats(1030.0),
        "prometheus_scrape_collect": _stats(2e6, 1e4),
        "prometheus_scrape_http": _stats(3e6, 1e4),
    }


def test_summary_is_derived_from_the_rows_only() -> None:
    """The summary arithmetic, on made-up rows (no timing involved)."""
    summary = live.summarize(_rows(), FACTS)
    assert summary["added_vs_bare"]["twinweave_timing"]["ns"] == pytest.approx(40.0)
    assert "prometheus_scrape_http" not in summary["added_vs_bare"]
    ratios = summary["ratios"]
    assert ratios["prometheus_vs_timing"]["value"] == pytest.approx(41 / 40)
    assert ratios["otel_vs_sdk_span"]["value"] == pytest.approx(5500 / 5000)
    assert ratios["otel_vs_sdk_span_attributes"]["value"] == pytest.approx(5500 / 6000)
    assert summary["claim"] == {
        "prometheus_same_probe": True,
        "prometheus_within_noise": True,
        "otel_vs_sdk_span": True,
        "rows_did_their_work": True,
        "holds": True,
    }
    text = live.format_summary(summary)
    assert "added(twinweave_otel) / added(otel_sdk_span) = 1.10 +- 0.01 (claim <= 1.2): holds" in (
        text
    )
    assert "2.000 ms" in text and "every row did what it is timed for: holds" in text
    rows = _rows()
    rows["twinweave_otel"] = _stats(6530.0, 20.0)  # 1.3x the anchor: reported as missing it
    rows["twinweave_prometheus"] = _stats(90.0)  # 20 ns more per call, sem 1.4
    summary = live.summarize(rows, dict(FACTS, trace_steps_per_call=0.0))
    assert summary["claim"]["otel_vs_sdk_span"] is False
    assert summary["claim"]["prometheus_within_noise"] is False
    assert summary["claim"]["rows_did_their_work"] is False
    text = live.format_summary(summary)
    assert "(claim <= 1.2): FAILS" in text
    assert "0 steps in the timeline per call, not 1" in text


def test_missing_rows_get_a_missing_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "MISSING", {"twinweave_otel": "opentelemetry.sdk not installed"})
    rows = _rows()
    del rows["twinweave_otel"]
    summary = live.summarize(rows, FACTS)
    assert "otel_vs_sdk_span" not in summary["ratios"]
    lines = live.format_summary(summary).splitlines()
    assert "twinweave_otel             missing: opentelemetry.sdk not installed" in lines


def test_the_suite_reads_the_summary_into_rows_claims_and_the_readme_table() -> None:
    converted = suite.convert_live(live.summarize(_rows(), FACTS))
    rows = {row["name"]: row for row in converted["rows"]}
    assert rows["twinweave_timing"]["baseline"] == "bare"
    assert rows["twinweave_timing"]["ratio"] == pytest.approx(70 / 30)
    assert rows["twinweave_timing"]["added"] == pytest.approx(40.0)
    assert rows["prometheus_scrape_http"]["unit"] == "ms"
    assert rows["prometheus_scrape_http"]["value"] == pytest.approx(3.0)
    assert rows["twinweave_otel"]["added_ratio"]["of"] == "otel_sdk_span"
    assert [claim["holds"] for claim in converted["claims"]] == [True] * 4
    results = {"sections": {"live": dict(converted, status="ok")}}
    assert table.cell(results, "live", "twinweave_otel", "added+vs") == (
        "5,500 ns (1.10x ± 0.01 the SDK span)"
    )
    assert table.cell(results, "live", "twinweave_prometheus", "added+vs").startswith(
        "41.0 ns (1.02x ± "
    )
    assert table.cell(results, "live", "prometheus_scrape_collect", "value") == "2 ms"
    assert "live" in [section.name for section in suite.SECTIONS]


def test_the_script_runs_every_row_in_one_pyperf_run(tmp_path: Path) -> None:
    """End to end, with pyperf's quickest mode (one worker, one value of one loop per row)."""
    done, summary_file = run_quickest(SCRIPT, tmp_path)
    assert done.returncode == 0, done.stderr
    table_text = done.stdout[done.stdout.index("twinweave live observability") :]
    lines = {line.split()[0]: line for line in table_text.splitlines() if line.strip()}
    for name in live.SETUPS:
        assert name in lines and "missing" not in lines[name], name
    assert "every row did what it is timed for: holds" in table_text
    summary = json.loads(summary_file.read_text())
    assert set(summary["rows"]) == set(live.SETUPS)
    assert summary["claim"]["rows_did_their_work"] is True
    assert summary["claim"]["prometheus_same_probe"] is True
