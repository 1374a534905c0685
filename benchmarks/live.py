"""What live observability costs: per call with each plugin, and per Prometheus scrape.

Issue 11's figures, measured on the running Python in one pyperf run::

    The default path is unchanged: with the Prometheus plugin on, the per-call cost
    is the timing plugin's (a scrape's cost is reported separately: ms per scrape
    for 100 components). OpenTelemetry span per call: ns added per call next to the
    plain OTel SDK cost of tracer.start_as_current_span around the same function
    (the anchor); ours must be no more than 1.2x of it. Trace plugin: ns added per
    call, reported.

Run it from the repository root (see benchmarks/README.md)::

    python benchmarks/live.py --quick -o out.json --summary out.summary.json
    python benchmarks/live.py --processes 10 -o full.json --summary full.summary.json

Every pyperf option works; ``--summary FILE`` and ``--quick`` (3 processes of 2 values
per row) are ours, as in overhead.py, whose pieces this script reuses: the target
function ``def f(x): return x + 1``, its ``bare`` and ``twinweave_timing`` rows, the
woven rows' set-up (a real ``PluginSet`` started as in production, drain thread
running, a drain inside the timed window at the end of every value) and the generated
timed loop of ``INNER_LOOPS`` unrolled calls. Every twinweave row here is
``twinweave_timing`` plus one plugin, built with its own constructor:

* ``twinweave_prometheus``: ``PrometheusPlugin(port="0")``, started, so its HTTP
  server runs (nobody scrapes it while the calls are timed);
* ``twinweave_otel``: ``OpenTelemetryPlugin()``, with the application's tracer provider
  (see below);
* ``twinweave_trace``: ``TracePlugin`` writing a timeline into a temporary folder.

``otel_sdk_span`` is the anchor: the timed loop runs ``with
tracer.start_as_current_span(name): f(x)`` around the compiled ``f``, the span named as
the plugin names ``f``'s. ``otel_sdk_span_attributes`` is the same with the three
attributes the plugin gives every span (``code.function``, ``code.namespace``,
``twinweave.aspect``), for scale: what the SDK charges for
them is in the plugin's figure and not in the anchor's. The OTel rows share one
``TracerProvider``, set as the global provider before the plugin sees its
first event (configured by the application), with a ``SimpleSpanProcessor`` and an
exporter that counts and drops every span: every span's whole cost is paid on the
calling thread inside the timed window, no background thread competes for the CPU,
and no span is dropped by a full queue (``BatchSpanProcessor`` drops, and logs, once
its 2048-span queue fills, which a loop making a span every few µs can do between two
switches of the GIL, so the rows would time the drop path).

The scrape rows each time one scrape per loop iteration (pyperf's figure is per
scrape, shown in ms) of a started ``PrometheusPlugin`` that holds
:data:`COMPONENTS` components, each fed :data:`DURATIONS` durations spread over
1 µs to 10 ms through ``on_timings`` and ``on_summary``, as the drain thread feeds
it: ``prometheus_scrape_collect`` is the collector's work,
``prometheus_client.generate_latest(plugin.registry)``; ``prometheus_scrape_http`` a
real HTTP GET of ``plugin.url`` on 127.0.0.1 with urllib (the client runs in the same
process as the server, so its work is in the figure too).

The summary: ``added(X) = X - bare`` per call; ``added(twinweave_prometheus) /
added(twinweave_timing)`` with its sem, and, structurally, that both rows time ``f``
the same way (timing mode, in C where the accelerator is built); ``added(twinweave_otel)
/ added(otel_sdk_span)`` against :data:`MAX_VS_SDK_SPAN` (and, for scale, to
``otel_sdk_span_attributes``); and, counted untimed on rows built once more, the spans
exported and the timeline's steps per call, the plugin's span name and attributes, and
what a scrape returns (every component, every call fed).

Each ``setup_<row>()`` builds one row and returns an ``overhead.Variant``;
``tests/benchmarks/test_live_smoke.py`` runs them all once (behaviour only).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import urllib.request
from typing import Any, Callable

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # pyperf workers run this file directly: make `agent` importable
    sys.path.insert(0, _REPO)

from agent import speedups  # noqa: E402
from agent.events import JoinPoint  # noqa: E402
from agent.plugins.timing import TimingPlugin  # noqa: E402
from benchmarks import overhead  # noqa: E402
from benchmarks._pyperf import row_timer, run_script  # noqa: E402
from benchmarks._report import verdict  # noqa: E402
from benchmarks.overhead import Variant  # noqa: E402

MAX_VS_SDK_SPAN = 1.2
"""The claim: added(twinweave_otel) / added(otel_sdk_span) <= this."""
SAME_COST_SEMS = 3.0
"""``twinweave_prometheus`` costs what ``twinweave_timing`` costs per call when the two
added costs differ by at most this many standard errors of their difference (the
structural half, the same probe mode and recorder, is checked apart)."""

SPAN_NAME = f"{overhead.BENCH_JOINPOINT.type} {overhead.BENCH_JOINPOINT.name}"
"""The anchor's span name: the one the plugin gives ``f``'s spans (``TYPE NAME``)."""
ANCHOR_SCOPE = "twinweave-bench-application"
"""The instrumentation scope of the anchor's tracer (the application's own spans)."""
SPAN_ATTRIBUTES = {
    "code.function": overhead.BENCH_JOINPOINT.name.rpartition(".")[2],
    "code.namespace": overhead.BENCH_JOINPOINT.name.rpartition(".")[0],
    "twinweave.aspect": overhead.BENCH_JOINPOINT.aspect,
}
"""The attributes the plugin gives ``f``'s spans (issue 11): the ``otel_sdk_span_attributes``
row passes the same ones, to show what they cost apart from the plugin's own work."""

TRACE_LIMIT = 10_000
"""The trace row's ``limit``: reached within the first warm-up value, so the figure is a
long-running service's steady state (every new step pushes the oldest out). The default
(1,000,000) would take a whole run to fill, timing the filling instead, and each worker
would then spend seconds writing the file at exit."""

COMPONENTS = 100
"""Components (join points) behind each scrape."""
DURATIONS = 3_000
"""Durations fed to each component, log-uniform over 1 µs to 10 ms."""
FEED_BATCH = 500
"""Durations per simulated drain: batches alternate between ``on_timings`` (the Python
path) and ``on_summary`` (what the C accelerator hands over)."""
FAILED_EVERY = 50
"""One call in this many raised."""
SEED = 2026
SCRAPE_TYPES = ("workflow", "service", "service", "producer", "consumer")
SCRAPE_TIMEOUT_S = 30.0

PER_CALL_ROWS = (
    "bare",
    "twinweave_timing",
    "twinweave_prometheus",
    "otel_sdk_span",
    "otel_sdk_span_attributes",
    "twinweave_otel",
    "twinweave_trace",
)
SCRAPE_ROWS = ("prometheus_scrape_collect", "prometheus_scrape_http")
OTEL_ROWS = ("otel_sdk_span", "otel_sdk_span_attributes", "twinweave_otel")
INNER: dict[str, int] = {
    **{name: overhead.INNER_LOOPS for name in PER_CALL_ROWS},
    **{name: 1 for name in SCRAPE_ROWS},
}
"""Operations per iteration of each row's timed loop: calls (unrolled), or one scrape."""


# -- the application's tracing: one provider per process ------------------------------------


class DroppingExporter:
    """A span exporter that counts the spans it is handed and drops them."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self._success = SpanExportResult.SUCCESS
        self.spans = 0
        self.last: Any = None
        """The last span exported (kept for the checks; the others are dropped)."""

    def export(self, spans: Any) -> Any:
        self.spans += len(spans)
        self.last = spans[-1]
        return self._success

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


_tracing: tuple[Any, DroppingExporter] | None = None


def application_tracing() -> tuple[Any, DroppingExporter]:
    """The process's global ``TracerProvider`` as an application configures it, made once.

    A ``SimpleSpanProcessor`` with a :class:`DroppingExporter`; both OTel rows share it.
    """
    global _tracing
    if _tracing is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        exporter = DroppingExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            raise RuntimeError(
                "another tracer provider is already the global one in this process: the OTel "
                "rows need their own (run them in a fresh process)"
            )
        _tracing = (provider, exporter)
    return _tracing


# -- the per-call rows ------------------------------------------------------------------------


def setup_twinweave_prometheus() -> Variant:
    """``twinweave_timing`` plus ``PrometheusPlugin(port="0")``, its HTTP server running."""
    from agent.plugins.prometheus import PrometheusPlugin

    prometheus = PrometheusPlugin(port="0")
    variant = overhead._woven_row(
        "twinweave_prometheus", TimingPlugin(), prometheus, prometheus=prometheus
    )
    assert prometheus.url is not None, "the plugin did not start its HTTP server"
    return variant


def _sdk_span_row(name: str, body: str, **loop_globals: Any) -> Variant:
    """``f`` as compiled, called inside the application's own span by the timed loop."""
    provider, exporter = application_tracing()
    tracer = provider.get_tracer(ANCHOR_SCOPE)
    names = dict(loop_globals, _span=tracer.start_as_current_span, _name=SPAN_NAME)
    return Variant(
        name,
        overhead.load_target()["f"],
        body=body,
        notes={"loop_globals": names, "exporter": exporter},
    )


def setup_otel_sdk_span() -> Variant:
    """The anchor: ``with tracer.start_as_current_span(name): f(x)``, ``f`` as compiled."""
    return _sdk_span_row("otel_sdk_span", "with _span(_name): fn(arg)")


def setup_otel_sdk_span_attributes() -> Variant:
    """The anchor with the plugin's attributes: ``start_as_current_span(name, attributes=...)``."""
    return _sdk_span_row(
        "otel_sdk_span_attributes",
        "with _span(_name, attributes=_attributes): fn(arg)",
        _attributes=SPAN_ATTRIBUTES,
    )


def setup_twinweave_otel() -> Variant:
    """``twinweave_timing`` plus ``OpenTelemetryPlugin()``, on the application's provider."""
    from agent.plugins.otel import OpenTelemetryPlugin

    _, exporter = application_tracing()  # global before the plugin's first event
    otel = OpenTelemetryPlugin()
    return overhead._woven_row("twinweave_otel", TimingPlugin(), otel, otel=otel, exporter=exporter)


def setup_twinweave_trace() -> Variant:
    """``twinweave_timing`` plus ``TracePlugin``, its timeline file in a temporary folder."""
    from agent.plugins.trace import TracePlugin

    folder = tempfile.mkdtemp(prefix="twinweave-live-")
    trace = TracePlugin(file=os.path.join(folder, "trace.json"), limit=TRACE_LIMIT)
    variant = overhead._woven_row(
        "twinweave_trace", TimingPlugin(), trace, trace=trace, folder=folder
    )
    stop = variant.close

    def close() -> None:
        stop()  # writes the file one last time
        shutil.rmtree(folder, ignore_errors=True)

    variant.close = close
    return variant


# -- the scrape rows --------------------------------------------------------------------------


def scrape_joinpoints() -> list[JoinPoint]:
    """The :data:`COMPONENTS` components behind each scrape (one series each, as in production)."""
    return [
        JoinPoint(
            "bench",
            SCRAPE_TYPES[i % len(SCRAPE_TYPES)],
            f"{overhead.TARGET_MODULE}.Component{i:03d}.do_service",
        )
        for i in range(COMPONENTS)
    ]


def feed(plugin: Any) -> int:
    """Give ``plugin`` :data:`DURATIONS` durations per component, as the drain thread would.

    Log-uniform over 1 µs to 10 ms (a seeded draw), one in :data:`FAILED_EVERY` failed,
    in batches of :data:`FEED_BATCH` alternating between ``on_timings`` and
    ``on_summary``. Returns the calls fed.
    """
    rng = random.Random(SEED)
    fed = 0
    for joinpoint in scrape_joinpoints():
        for first in range(0, DURATIONS, FEED_BATCH):
            ok: list[int] = []
            failed: list[int] = []
            for i in range(first, min(first + FEED_BATCH, DURATIONS)):
                duration = round(10 ** rng.uniform(3.0, 7.0))
                (failed if i % FAILED_EVERY == 0 else ok).append(duration)
            if (first // FEED_BATCH) % 2:
                plugin.on_summary(joinpoint, speedups.summarize(ok, failed))
            else:
                plugin.on_timings(joinpoint, ok, failed)
            fed += len(ok) + len(failed)
    return fed


def _scrape_row(name: str, scrape: Callable[[Any], Callable[[], Any]]) -> Variant:
    """A started ``PrometheusPlugin`` holding the fed components; ``fn`` does one scrape."""
    from agent.plugins.prometheus import PrometheusPlugin

    plugin = PrometheusPlugin(port="0")
    plugin.start(overhead.CONTEXT)
    try:
        fed = feed(plugin)
        fn = scrape(plugin)
    except BaseException:
        plugin.stop()
        raise
    notes = {"plugin": plugin, "fed": fed}
    return Variant(name, fn, body="fn()", kind="scrape", close=plugin.stop, notes=notes)


def _collector(plugin: Any) -> Callable[[], bytes]:
    from prometheus_client import generate_latest

    return functools.partial(generate_latest, plugin.registry)


def _http_get(plugin: Any) -> Callable[[], bytes]:
    # No proxy: an http_proxy variable must not send a loopback scrape elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = plugin.url

    def get() -> bytes:
        with opener.open(url, timeout=SCRAPE_TIMEOUT_S) as response:
            return response.read()

    return get


def setup_prometheus_scrape_collect() -> Variant:
    """One scrape's collector work: ``generate_latest(plugin.registry)``."""
    return _scrape_row("prometheus_scrape_collect", _collector)


def setup_prometheus_scrape_http() -> Variant:
    """One real scrape: an HTTP GET of ``plugin.url`` on 127.0.0.1 with urllib."""
    return _scrape_row("prometheus_scrape_http", _http_get)


# -- which rows run here ----------------------------------------------------------------------

NEEDS: dict[str, tuple[str, ...]] = {
    "twinweave_prometheus": ("prometheus_client",),
    "otel_sdk_span": ("opentelemetry.sdk",),
    "otel_sdk_span_attributes": ("opentelemetry.sdk",),
    "twinweave_otel": ("opentelemetry.sdk",),
    "prometheus_scrape_collect": ("prometheus_client",),
    "prometheus_scrape_http": ("prometheus_client",),
}
"""The packages (of the ``bench`` extra) each row needs beyond the agent."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def missing_rows() -> dict[str, str]:
    """Rows this interpreter cannot measure, and why."""
    missing: dict[str, str] = {}
    for name, modules in NEEDS.items():
        absent = [module for module in modules if not _installed(module)]
        if absent:
            missing[name] = f'{", ".join(absent)} not installed (pip install -e ".[bench]")'
    return missing


MISSING = missing_rows()


def _setup(name: str) -> Callable[[], Variant]:
    """``setup_<name>``: this script's, else overhead.py's (``bare``, ``twinweave_timing``)."""
    return globals().get(f"setup_{name}") or getattr(overhead, f"setup_{name}")


ALL_SETUPS = {name: _setup(name) for name in (*PER_CALL_ROWS, *SCRAPE_ROWS)}
"""Row -> its set-up, for every row, in the order pyperf runs them and the table shows them."""
SETUPS = {name: setup for name, setup in ALL_SETUPS.items() if name not in MISSING}
"""The rows this interpreter measures."""

DESCRIPTIONS = {
    "bare": "def f(x): return x + 1",
    "twinweave_timing": "f woven, timing plugin + drain thread on (overhead.py's row)",
    "twinweave_prometheus": "the same + PrometheusPlugin(port=0), HTTP server running",
    "otel_sdk_span": "with tracer.start_as_current_span(name): f(x), f as compiled (anchor)",
    "otel_sdk_span_attributes": "the same with attributes= the plugin's 3 span attributes",
    "twinweave_otel": "f woven, timing + OpenTelemetryPlugin, the application's provider",
    "twinweave_trace": f"f woven, timing + TracePlugin (timeline file, limit {TRACE_LIMIT:,})",
    "prometheus_scrape_collect": f"generate_latest(registry), {COMPONENTS} components",
    "prometheus_scrape_http": f"urllib GET of /metrics on 127.0.0.1, {COMPONENTS} components",
}


# -- the timed loop ---------------------------------------------------------------------------


def loop_for(variant: Variant) -> Callable[..., float]:
    """overhead.py's timed loop for ``variant``, with the names its body needs besides ``fn``."""
    loop = overhead.make_loop(variant.body, INNER[variant.name])
    loop.__globals__.update(variant.notes.get("loop_globals", {}))
    return loop


def _prepare(name: str) -> tuple[Variant, Callable[[int], float]]:
    variant = SETUPS[name]()
    loop = loop_for(variant)
    return variant, lambda loops: overhead.run_variant(variant, loop, loops)


time_row = row_timer(_prepare)
"""pyperf's time function: set the row up on first use in this worker, then time it."""


# -- what each row really did, counted untimed ------------------------------------------------


def calls_through(variant: Variant, count: Callable[[], int]) -> float:
    """``count()``'s growth per call over one iteration of ``variant``'s timed loop."""
    before = count()
    overhead.run_variant(variant, loop_for(variant), 1)
    return (count() - before) / INNER[variant.name]


def structure() -> dict[str, Any]:
    """The run-independent facts the summary reports (each row built once more, untimed)."""
    facts: dict[str, Any] = {}
    built: dict[str, Variant] = {}
    try:
        for name in SETUPS:
            if name != "bare":
                built[name] = SETUPS[name]()
        timing = built["twinweave_timing"].probe
        assert timing is not None
        facts["timing_probe"] = _probe_mode(timing)
        if "twinweave_prometheus" in built:
            probe = built["twinweave_prometheus"].probe
            assert probe is not None
            facts["prometheus_probe"] = _probe_mode(probe)
        for name in OTEL_ROWS:
            if name in built:
                exporter = built[name].notes["exporter"]
                facts[f"{name}_spans_per_call"] = calls_through(
                    built[name], lambda e=exporter: e.spans
                )
                facts[f"{name}_span"] = {
                    "name": exporter.last.name,
                    "attributes": dict(exporter.last.attributes),
                }
        if "twinweave_trace" in built:
            variant = built["twinweave_trace"]
            facts["trace_steps_per_call"] = calls_through(
                variant, functools.partial(timeline_steps, variant.notes["trace"])
            )
        for name in SCRAPE_ROWS:
            if name in built:
                facts[name] = _scrape_facts(built[name])
    finally:
        for variant in built.values():
            variant.close()
    return facts


def timeline_steps(trace: Any) -> int:
    """Steps of ``f`` in the timeline file the trace plugin writes now (it is read back)."""
    assert trace.write(), "the trace plugin could not write its timeline"
    with open(trace.path, encoding="utf-8") as stream:
        events = json.load(stream)["traceEvents"]
    return sum(
        event["ph"] == "X" and event["name"] == overhead.BENCH_JOINPOINT.name for event in events
    )


def _probe_mode(probe: Any) -> dict[str, Any]:
    return {"steps_mode": probe.steps_mode, "in_c": probe.recorder is not None}


def _scrape_facts(variant: Variant) -> dict[str, Any]:
    """What one scrape returns: its size and the components and calls it counts."""
    from prometheus_client.parser import text_string_to_metric_families

    text = variant.fn().decode("utf-8")
    counts = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "twinweave_step_duration_seconds_count"
    }
    return {
        "bytes": len(text.encode("utf-8")),
        "components": len(counts),
        "calls": int(sum(counts.values())),
        "fed": variant.notes["fed"],
    }


# -- the summary ------------------------------------------------------------------------------


def _claims(
    rows: dict[str, dict[str, Any]], added: dict[str, Any], facts: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, bool]]:
    """The claims' ratios (with definitions and limits) and whether each claim holds."""
    ratios: dict[str, Any] = {}
    claim: dict[str, bool] = {}
    if "twinweave_prometheus" in added:
        timing, prometheus = added["twinweave_timing"], added["twinweave_prometheus"]
        ratio = overhead._ratio(prometheus, timing)
        gap = prometheus["ns"] - timing["ns"]
        gap_sem = overhead._difference(rows["twinweave_prometheus"], rows["twinweave_timing"])[
            "sem_ns"
        ]
        ratios["prometheus_vs_timing"] = dict(
            ratio,
            definition="added(twinweave_prometheus) / added(twinweave_timing)",
            of="twinweave_timing",
            difference_ns=gap,
            difference_sem_ns=gap_sem,
        )
        claim["prometheus_same_probe"] = facts.get("prometheus_probe") == facts["timing_probe"]
        claim["prometheus_within_noise"] = abs(gap) <= SAME_COST_SEMS * gap_sem
    if "twinweave_otel" in added and "otel_sdk_span" in added:
        ratio = overhead._ratio(added["twinweave_otel"], added["otel_sdk_span"])
        ratios["otel_vs_sdk_span"] = dict(
            ratio,
            definition="added(twinweave_otel) / added(otel_sdk_span)",
            of="otel_sdk_span",
            limit=MAX_VS_SDK_SPAN,
        )
        claim["otel_vs_sdk_span"] = ratio["value"] <= MAX_VS_SDK_SPAN
    if "twinweave_otel" in added and "otel_sdk_span_attributes" in added:
        ratios["otel_vs_sdk_span_attributes"] = dict(
            overhead._ratio(added["twinweave_otel"], added["otel_sdk_span_attributes"]),
            definition="added(twinweave_otel) / added(otel_sdk_span_attributes)",
            of="otel_sdk_span_attributes",
        )
    claim["rows_did_their_work"] = not work_problems(facts)
    claim["holds"] = all(claim.values())
    return ratios, claim


def summarize(rows: dict[str, dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    """Added costs, ratios and claims from the pyperf means of one run (name -> stats)."""
    bare = rows["bare"]
    added = {
        name: overhead._difference(rows[name], bare)
        for name in PER_CALL_ROWS
        if name in rows and name != "bare"
    }
    ratios, claim = _claims(rows, added, facts)
    described = {
        name: dict(stats, description=DESCRIPTIONS[name], unit=_unit(name))
        for name, stats in rows.items()
    }
    return {
        "rows": described,
        "added_vs_bare": added,
        "ratios": ratios,
        "claim": claim,
        "facts": facts,
        "missing": [{"name": name, "reason": reason} for name, reason in MISSING.items()],
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "statistic": "mean of pyperf values, ns per call or per scrape; sem = stdev / sqrt(n)",
        "inner_loops": overhead.INNER_LOOPS,
        "timing_path": speedups.CLOCK if speedups.available() else "python",
        "span_processor": "SimpleSpanProcessor with an exporter that counts and drops every span",
        "settings": {
            "components": COMPONENTS,
            "durations_per_component": DURATIONS,
            "trace_limit": TRACE_LIMIT,
            "same_cost_sems": SAME_COST_SEMS,
        },
    }


def work_problems(facts: dict[str, Any]) -> list[str]:
    """What the untimed checks found wrong with the rows (empty: each did what it is timed for)."""
    problems = []
    for name in OTEL_ROWS:
        per_call = facts.get(f"{name}_spans_per_call")
        if per_call is not None and per_call != 1:
            problems.append(f"{name}: {per_call:g} spans exported per call, not 1")
    span = facts.get("twinweave_otel_span")
    if span is not None:
        if span["name"] != SPAN_NAME:
            problems.append(f"twinweave_otel: span named {span['name']!r}, not {SPAN_NAME!r}")
        wrong = {k: v for k, v in SPAN_ATTRIBUTES.items() if span["attributes"].get(k) != v}
        if wrong:
            problems.append(f"twinweave_otel: span attributes differ from {wrong}")
    steps = facts.get("trace_steps_per_call")
    if steps is not None and steps != 1:
        problems.append(f"twinweave_trace: {steps:g} steps in the timeline per call, not 1")
    for name in SCRAPE_ROWS:
        scrape = facts.get(name)
        if scrape is not None and (scrape["components"], scrape["calls"]) != (
            COMPONENTS,
            scrape["fed"],
        ):
            problems.append(
                f"{name}: {scrape['components']} components and {scrape['calls']} calls "
                f"scraped, not {COMPONENTS} and {scrape['fed']}"
            )
    return problems


def _unit(name: str) -> str:
    return "ms" if name in SCRAPE_ROWS else "ns"


def _table_lines(summary: dict[str, Any]) -> list[str]:
    """The heading and one line per row (or its ``missing:`` line)."""
    rows = summary["rows"]
    added = summary["added_vs_bare"]
    missing = {entry["name"]: entry["reason"] for entry in summary["missing"]}
    out = [
        f"twinweave live observability, {summary['implementation']} {summary['python']}: pyperf "
        f"mean (+- sem), {summary['inner_loops']} calls (or 1 scrape) per loop iteration; timing "
        f"path: {summary['timing_path']}; OTel: {summary['span_processor']}",
        "added: mean - bare (ns per call)",
        "",
        f"{'row':<26} {'mean':>12} {'+-sem':>8} {'added ns':>10} {'+-sem':>7}  what",
    ]
    for name in ALL_SETUPS:
        stats = rows.get(name)
        if stats is None:
            out.append(f"{name:<26} missing: {missing.get(name, 'not measured in this run')}")
            continue
        scale, unit = (1e-6, "ms") if stats["unit"] == "ms" else (1.0, "ns")
        mean = f"{stats['mean_ns'] * scale:.{3 if unit == 'ms' else 1}f} {unit}"
        sem = f"{stats['sem_ns'] * scale:.{3 if unit == 'ms' else 1}f}"
        extra = (
            f"{added[name]['ns']:>10.1f} {added[name]['sem_ns']:>7.1f}"
            if name in added
            else f"{'':>10} {'':>7}"
        )
        out.append(f"{name:<26} {mean:>12} {sem:>8} {extra}  {stats['description']}")
    return out


def _claim_lines(summary: dict[str, Any]) -> list[str]:
    """Each claim's ratio against its limit (or the noise), with its verdict."""
    ratios = summary["ratios"]
    claim = summary["claim"]
    facts = summary["facts"]
    out: list[str] = []
    if "prometheus_vs_timing" in ratios:
        ratio = ratios["prometheus_vs_timing"]
        probe = facts.get("prometheus_probe", {})
        out += [
            f"{ratio['definition']} = {ratio['value']:.2f} +- {ratio['sem']:.2f}; difference "
            f"{ratio['difference_ns']:+.1f} ns +- {ratio['difference_sem_ns']:.1f} (within "
            f"{summary['settings']['same_cost_sems']:g} sem): "
            f"{verdict(claim['prometheus_within_noise'])}",
            f"same per-call path as timing alone (steps mode {probe.get('steps_mode')}, timed in "
            f"C {probe.get('in_c')}; timing alone: {facts['timing_probe']}): "
            f"{verdict(claim['prometheus_same_probe'])}",
        ]
    if "otel_vs_sdk_span" in ratios:
        ratio = ratios["otel_vs_sdk_span"]
        out.append(
            f"{ratio['definition']} = {ratio['value']:.2f} +- {ratio['sem']:.2f} (claim <= "
            f"{ratio['limit']:g}): {verdict(claim['otel_vs_sdk_span'])}"
        )
    if "otel_vs_sdk_span_attributes" in ratios:
        ratio = ratios["otel_vs_sdk_span_attributes"]
        out.append(
            f"{ratio['definition']} = {ratio['value']:.2f} +- {ratio['sem']:.2f} (for scale: "
            "the anchor with the plugin's attributes)"
        )
    return out


def _work_lines(summary: dict[str, Any]) -> list[str]:
    """What each row did, counted untimed, and whether every row did what it is timed for."""
    claim = summary["claim"]
    facts = summary["facts"]
    out: list[str] = []
    for name in OTEL_ROWS:
        if f"{name}_spans_per_call" in facts:
            out.append(f"{name}: {facts[f'{name}_spans_per_call']:g} spans exported per call")
    if "trace_steps_per_call" in facts:
        out.append(f"twinweave_trace: {facts['trace_steps_per_call']:g} steps kept per call")
    for name in SCRAPE_ROWS:
        if name in facts:
            scrape = facts[name]
            out.append(
                f"{name}: {scrape['bytes']:,} bytes, {scrape['components']} components, "
                f"{scrape['calls']:,} calls counted of {scrape['fed']:,} fed"
            )
    problems = work_problems(facts)
    out.append(
        "every row did what it is timed for: "
        + (verdict(True) if not problems else f"{verdict(False)}: {'; '.join(problems)}")
    )
    out.append(f"claim on this Python: {verdict(claim['holds'])}")
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a small text table: the rows, the claims, what each row did."""
    return "\n".join(
        [*_table_lines(summary), "", *_claim_lines(summary), "", *_work_lines(summary)]
    )


def main(argv: list[str] | None = None) -> int:
    return run_script(
        "twinweave: live observability, per call and per scrape",
        SETUPS,
        time_row,
        {name: INNER[name] for name in SETUPS},
        DESCRIPTIONS,
        overhead.QUICK_ARGS,
        argv,
        lambda rows: summarize(rows, structure()),
        format_summary,
        **overhead.RUN_OPTIONS,
    )


if __name__ == "__main__":
    sys.exit(main())
