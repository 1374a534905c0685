"""The headline figures of one or more runs as a Markdown table (README's "Performance").

    python -m benchmarks.table benchmarks/results/results-cpython-3.11.7.json results-...3.13.0.json

One column per results file, one row per headline figure below, each read from the
file (nothing is typed in by hand, so the README's table is the run's). A figure a run
does not have shows as "n/a" (e.g. ``sys.monitoring`` before 3.12).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.suite import ResultsError, load_results

# (section, row, what to show, label); what: "added" (ns added to the bare call),
# "value", "ratio" (x the row's baseline), "ratio+p99", "added+vs" (ns added, and that
# as a multiple of another row's added ns: the row's "added_ratio", named in ADDED_RATIO_OF)
HEADLINES: tuple[tuple[str, str, str, str], ...] = (
    ("overhead", "twinweave_timing_hook", "added", "twinweave, timing plugin: ns added per call"),
    ("overhead", "closure_decorator", "added", "do-nothing closure decorator"),
    ("overhead", "clock_floor", "value", "two `time.perf_counter_ns()` calls"),
    ("overhead", "wrapt_decorator", "added", "wrapt decorator"),
    ("overhead", "setprofile_noop", "added", "`sys.setprofile`, no-op"),
    ("overhead", "cprofile", "added", "cProfile"),
    ("overhead", "monitoring_noop", "added", "`sys.monitoring` PY_START/PY_RETURN, no-op"),
    ("overhead", "twinweave_monitoring", "added", "twinweave, `sys.monitoring` backend"),
    ("overhead", "twinweave_events", "added", "twinweave, a Python plugin on every event"),
    ("overhead", "twinweave_timing_python", "added", "twinweave, timing, pure-Python path"),
    ("overhead", "twinweave_unmatched", "added", "a function no pointcut matches"),
    ("overhead", "method_twinweave_timing", "added", "method, timing plugin"),
    ("overhead", "generator_twinweave_timing", "added", "generator, timing plugin"),
    ("overhead", "coroutine_twinweave_timing", "added", "coroutine, timing plugin"),
    ("workload", "bare", "value", "service loop, no agent: per message"),
    ("workload", "agent_few_matched", "ratio", "... agent on, 3 of 58 functions matched"),
    ("workload", "agent_all_matched", "ratio", "... agent on, all 58 functions matched"),
    ("workload", "setprofile_noop", "ratio", "... `sys.setprofile`, no-op"),
    ("workload", "cprofile", "ratio", "... cProfile"),
    ("workload", "monitoring_noop", "ratio", "... `sys.monitoring` callbacks, no-op"),
    ("weaving", "import_agent_off", "value", "import of ~980 stdlib functions, no agent"),
    ("weaving", "import_agent_unrelated", "ratio", "... agent on, pointcuts elsewhere"),
    ("weaving", "import_agent_nothing", "ratio", "... agent on, package named, nothing matched"),
    ("weaving", "import_agent_everything", "ratio", "... agent on, everything woven"),
    ("weaving", "import_agent_everything_warm", "ratio", "... everything woven, code cache warm"),
    ("weaving", "weave_per_function_cold", "value", "weaving one function, cold"),
    ("weaving", "weave_per_function_warm", "value", "weaving one function, warm"),
    ("live", "twinweave_prometheus", "added+vs", "timing + prometheus plugin: ns added per call"),
    ("live", "prometheus_scrape_collect", "value", "prometheus scrape, 100 components (ms)"),
    ("live", "prometheus_scrape_http", "value", "... the same as an HTTP GET (urllib, loopback)"),
    ("live", "twinweave_otel", "added+vs", "OpenTelemetry plugin: ns added per call"),
    ("live", "otel_sdk_span", "added", "OTel SDK start_as_current_span: ns added per call"),
    (
        "live",
        "otel_sdk_span_attributes",
        "added",
        "... the same with the plugin's 3 attributes (the span the plugin makes, by hand)",
    ),
    (
        "live",
        "twinweave_otel / otel_sdk_span_attributes",
        "value",
        "OpenTelemetry plugin / that hand-made span (added ns)",
    ),
    ("live", "twinweave_trace", "added", "trace plugin (timeline): ns added per call"),
    (
        "takeover",
        "takeover process death median",
        "value",
        "takeover after `kill -9` of the master process, median",
    ),
    ("takeover", "takeover process death p99", "value", "... p99"),
    (
        "takeover",
        "takeover host gone median",
        "value",
        "takeover after its host is gone (SIGSTOP), median",
    ),
    ("takeover", "takeover host gone p99", "value", "... p99"),
    ("takeover", "takeover SIGTERM median", "value", "takeover after SIGTERM, median"),
    ("takeover", "takeover SIGTERM p99", "value", "takeover after SIGTERM, p99"),
    ("takeover", "heartbeat CPU master", "value", "heartbeat CPU, master (% of a core)"),
    ("takeover", "heartbeat CPU slave", "value", "heartbeat CPU, slave (% of a core)"),
    ("replication", "sync, 1 slave: local diskcache, 1 thr", "value", "local diskcache `set`"),
    (
        "replication",
        "sync, 1 slave: sync replicated, 1 thr",
        "ratio+p99",
        "sync to 1 slave, 1 thread (x local, p99)",
    ),
    (
        "replication",
        "sync, 1 slave: CPU per write, all nodes",
        "value",
        "... CPU per write, master + slave",
    ),
    (
        "replication",
        "floor: round trip to a Python echo",
        "value",
        "... the floor: one round trip to a Python echo",
    ),
    (
        "replication",
        "sync, 2 slaves: sync replicated, 1 thr",
        "ratio+p99",
        "sync to 2 slaves, 1 thread",
    ),
    (
        "replication",
        "sync, 2 slaves: sync replicated, 4 thr",
        "ratio+p99",
        "sync to 2 slaves, 4 threads",
    ),
    ("replication", "sync, 2 slaves: set_many(100)", "ratio", "sync to 2 slaves, `set_many(100)`"),
    (
        "replication",
        "async, 2 slaves: async replicated, 1 thr",
        "ratio+p99",
        "async to 2 slaves, 1 thread",
    ),
    (
        "replication",
        "async, 2 slaves: set_many(100)",
        "ratio",
        "async to 2 slaves, `set_many(100)`",
    ),
    ("adapter", "example adapter alone", "value", "example adapter alone, messages/s"),
    (
        "adapter",
        "example adapter, failover, 2 slaves",
        "ratio",
        "... under `--failover` with 2 slaves (x alone)",
    ),
)

ADDED_RATIO_OF = {"twinweave_timing": "timing alone", "otel_sdk_span": "the SDK span"}
"""How an "added+vs" cell names the row its ratio is to."""


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2g}" if value else "0"


def cell(results: dict[str, Any], section: str, name: str, what: str) -> str:
    """One figure of one run, formatted; "n/a" with the reason's first words if missing."""
    data = results.get("sections", {}).get(section, {})
    if data.get("status") != "ok":
        return "not run"
    row = next((r for r in data["rows"] if r["name"] == name), None)
    if row is None:
        return "n/a"
    unit = "" if row["unit"] in ("count", "/s") else f" {row['unit']}"
    if row["unit"] == "/s":
        unit = "/s"
    if what == "added":
        if name == "twinweave_unmatched":
            return f"{_number(row['added'])} ns (same code object)"
        return f"{_number(row['added'])}{unit}"
    if what == "added+vs":
        ratio = row["added_ratio"]
        of = ADDED_RATIO_OF.get(ratio["of"], ratio["of"])
        return f"{_number(row['added'])}{unit} ({ratio['value']:.2f}x ± {ratio['sem']:.2f} {of})"
    if what == "value":
        if row["unit"] == "x":
            return f"{row['value']:.2f}x ± {row.get('sem') or 0:.2f}"
        return f"{_number(row['value'])}{unit}"
    ratio = f"{row['ratio']:.2f}x" if row.get("ratio") is not None else "-"
    if what == "ratio+p99":
        return f"{ratio}, {row['p99_ms']:.1f} ms"
    return ratio


def markdown(runs: Sequence[dict[str, Any]]) -> str:
    head = ["figure", *(f"{r['implementation']} {r['python']}" for r in runs)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for section, name, what, label in HEADLINES:
        out.append("| " + " | ".join([label, *(cell(r, section, name, what) for r in runs)]) + " |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__)
    parser.add_argument("results", nargs="+", help="results-*.json files of python -m benchmarks")
    options = parser.parse_args(argv)
    try:
        runs = [load_results(path) for path in options.results]
    except ResultsError as exc:
        print(f"table: {exc}", file=sys.stderr)
        return 2
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
