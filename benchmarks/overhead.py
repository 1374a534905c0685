"""Per-call overhead of a woven function, against a bare call and a closure decorator.

Issue 2's speed claim, measured on the running Python in one pyperf run::

    With the timing plugin on, the added cost of a call to a woven function is no
    more than that of a do-nothing closure decorator, and no more than twice the
    cost of two time.perf_counter_ns() calls; functions that no pointcut matches
    cost exactly what they did.

Run it from the repository root (see benchmarks/README.md)::

    python benchmarks/overhead.py --fast -o out.json --summary out.summary.json
    python benchmarks/overhead.py --processes 10 -o full.json --summary full.summary.json

Every pyperf option works (``--fast``, ``--rigorous``, ``-o``, ``--processes``,
``--values``, ``--loops``...); ``--summary FILE`` is ours. Each row is timed by
the same generated loop, ``INNER_LOOPS`` calls per iteration, so the loop's own
cost is small and identical for every row that calls a function; pyperf spawns
the worker processes, calibrates the loop count and reports seconds per call.
Each worker sets up only the row it measures (the drain thread of the twinweave
rows only exists in their workers). The summary uses pyperf's **mean** of each
row and derives every figure from rows of the same run: added cost is ``row -
bare``, the clock floor is ``perf_counter_ns_x2 - empty_loop``, and the claim is
checked as the two ratios ``added(W) / added(closure_decorator)`` (at most 1)
and ``added(W) / floor`` (at most 2) for both woven timing rows W
(``twinweave_timing``, a ``types.FunctionType`` copy as for modules woven in
place, and ``twinweave_timing_hook``, made by ``MAKE_FUNCTION`` as for modules
woven by the import hook), plus the code-identity check of ``twinweave_unmatched``.

Each ``setup_<row>()`` builds one row and returns a :class:`Variant`;
``tests/benchmarks/test_overhead_smoke.py`` runs them all once (behaviour only).
"""

from __future__ import annotations

import atexit
import itertools
import json
import math
import os
import platform
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # pyperf workers run this file directly: make `agent` importable
    sys.path.insert(0, _REPO)

from agent import speedups  # noqa: E402
from agent.events import JoinPoint, Probe, Step  # noqa: E402
from agent.plugins import AgentContext, Plugin, PluginSet  # noqa: E402
from agent.plugins.timing import TimingPlugin  # noqa: E402
from agent.pointcuts import parse as parse_pointcuts  # noqa: E402
from agent.runtime import Agent  # noqa: E402
from agent.weaving.rewrite import probe_of, weave_code  # noqa: E402

INNER_LOOPS = 20
"""Calls per iteration of the timed loop (the loop is unrolled this many times)."""
ARG = 41
EXPECTED = ARG + 1

MAX_VS_DECORATOR = 1.0
"""The claim: added(twinweave_timing) / added(closure_decorator) <= this."""
MAX_VS_CLOCK_FLOOR = 2.0
"""The claim: added(twinweave_timing) / (two perf_counter_ns() calls) <= this."""

TARGET_MODULE = "twinweave_bench_target"
"""The module every measured function comes from (compiled from TARGET_SOURCE)."""
TARGET_SOURCE = """\
def f(x):
    return x + 1


def g(x):
    return x + 1
"""
TARGET_FILE = f"<{TARGET_MODULE}>"
BENCH_JOINPOINT = JoinPoint("bench", "service", f"{TARGET_MODULE}.f")


def pointcuts(function: str) -> str:
    """A pointcut file whose one aspect matches ``function`` of the target module, with timing."""
    return f"""\
<agent>
  <weaver>
    <include within="{TARGET_MODULE}"/>
  </weaver>
  <aspects>
    <aspect name="bench" type="service" pointcut="execution(* {TARGET_MODULE}.{function}(..))"/>
  </aspects>
  <plugins>
    <plugin name="timing"/>
  </plugins>
</agent>
"""


def agent_for(function: str) -> Agent:
    """A real agent (not installed as the process's agent) whose pointcut matches ``function``."""
    return Agent(parse_pointcuts(pointcuts(function), f"<pointcuts for {function}>"), "bytecode")


CONTEXT = AgentContext(python=platform.python_version(), backend="bytecode", report=None)


def _nothing() -> None:
    """The end-of-value hook of rows that have nothing to do there."""


@dataclass
class Variant:
    """One row, ready to time: the timed loop calls ``fn`` ``INNER_LOOPS`` times per iteration.

    ``on_clock`` runs at the end of each timed value *inside* the timed window (the
    twinweave rows drain there, so every recorded duration is drained, and paid
    for, within the value that recorded it); ``off_clock`` runs right after the
    window. ``close`` ends the row (stops its plugins).
    """

    name: str
    fn: Any
    body: str = "fn(arg)"
    on_clock: Callable[[], Any] = _nothing
    off_clock: Callable[[], Any] = _nothing
    close: Callable[[], Any] = _nothing
    plugin_set: PluginSet | None = None
    timing: TimingPlugin | None = None
    probe: Probe | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# -- the functions being called --------------------------------------------------------------


def load_target(code: types.CodeType | None = None) -> dict[str, Any]:
    """Run the target module's code (default: compiled, unwoven) in a fresh namespace."""
    if code is None:
        code = compile(TARGET_SOURCE, TARGET_FILE, "exec")
    namespace: dict[str, Any] = {"__name__": TARGET_MODULE, "__builtins__": __builtins__}
    exec(code, namespace)
    return namespace


def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The do-nothing closure decorator of the claim."""

    def w(*a: Any, **k: Any) -> Any:
        return fn(*a, **k)

    return w


def woven_copy(fn: types.FunctionType, probe: Probe) -> types.FunctionType:
    """A fresh function like ``fn`` whose code is woven to report to ``probe``."""
    return types.FunctionType(
        weave_code(fn.__code__, probe), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


class StepCounter(Plugin):
    """A generic Python plugin that receives every step (puts its join points in steps mode)."""

    name = "step-counter"

    def __init__(self) -> None:
        self.steps = 0
        self.last: Step | None = None

    def on_step(self, step: Step) -> None:
        self.steps += 1
        self.last = step


# -- the rows --------------------------------------------------------------------------------


def setup_empty_loop() -> Variant:
    """The timed loop with nothing in it: the baseline of the clock floor."""
    return Variant("empty_loop", None, body="pass")


def setup_bare() -> Variant:
    """``def f(x): return x + 1``, as compiled."""
    return Variant("bare", load_target()["f"])


def setup_closure_decorator() -> Variant:
    """``f`` wrapped by ``deco`` (``def w(*a, **k): return fn(*a, **k)``)."""
    return Variant("closure_decorator", deco(load_target()["f"]))


def setup_perf_counter_ns_x2() -> Variant:
    """Two ``time.perf_counter_ns()`` calls per slot, the function in a local variable.

    Woven code loads ``perf_counter_ns`` with ``LOAD_CONST``; the loop's
    ``LOAD_FAST`` of its argument ``fn`` is the same kind of single, lookup-free
    instruction, and the call sequence that follows is the one the weaver emits.
    (A function ``two()`` with a default argument or a closure would add a frame
    and the cost of filling the default or copying the free variable.)
    """
    return Variant("perf_counter_ns_x2", time.perf_counter_ns, body="fn(); fn()")


def _woven_row(name: str, timing: TimingPlugin, *others: Any, **notes: Any) -> Variant:
    """A woven copy of ``f`` with ``timing`` (and ``others``) and the drain thread running.

    Production order: the plugin set starts (``PluginSet.start`` starts the drain
    thread), then the weaver asks it for the probe. Every value ends with a
    synchronous drain inside the timed window, so the amortized drain cost of
    every call is in the figure whether or not the thread got to it first.
    """
    plugin_set = PluginSet([timing, *others])
    plugin_set.start(CONTEXT)
    probe = plugin_set.probe_for(BENCH_JOINPOINT)
    assert probe is not None
    return Variant(
        name,
        woven_copy(load_target()["f"], probe),
        on_clock=plugin_set.drain,
        close=plugin_set.stop,
        plugin_set=plugin_set,
        timing=timing,
        probe=probe,
        notes=notes,
    )


def _timing_row(name: str, timing: TimingPlugin) -> Variant:
    """A :func:`_woven_row` in timing mode."""
    variant = _woven_row(name, timing)
    assert variant.probe is not None and not variant.probe.steps_mode
    return variant


def setup_twinweave_timing() -> Variant:
    """``f`` woven in timing mode as the agent runs it (the C accelerator where built)."""
    return _timing_row("twinweave_timing", TimingPlugin())


class PythonPathTiming(TimingPlugin):
    """The timing plugin without ``on_summary``: its join points stay on the Python path."""

    on_summary = None


def setup_twinweave_timing_python() -> Variant:
    """``twinweave_timing`` on the pure-Python path (inline ``perf_counter_ns``, lists, drain).

    What runs where the C accelerator is not built (or ``TWINWEAVE_PURE_PYTHON``
    is set), measured in the same run for comparison.
    """
    variant = _timing_row("twinweave_timing_python", PythonPathTiming())
    assert variant.probe is not None and variant.probe.recorder is None
    return variant


def setup_twinweave_unmatched() -> Variant:
    """``f`` from the target module as the agent's import hook leaves it: no pointcut matches it.

    The real agent (pointcut file parsed, timing plugin started, drain thread
    running) weaves the module's code with ``Agent.weave_module``, the call the
    import hook makes; its aspect matches ``g``, which is woven, and not ``f``.
    """
    agent = agent_for("g")
    agent.plugins.start(CONTEXT)
    original = compile(TARGET_SOURCE, TARGET_FILE, "exec")
    namespace = load_target(agent.weave_module(original, [TARGET_MODULE]))
    fn = namespace["f"]
    original_f = next(
        c for c in original.co_consts if isinstance(c, types.CodeType) and c.co_name == "f"
    )
    return Variant(
        "twinweave_unmatched",
        fn,
        close=agent.stop,
        plugin_set=agent.plugins,
        notes={
            "same_code_object": fn.__code__ is original_f,
            "module_was_woven": probe_of(namespace["g"].__code__) is not None,
        },
    )


def setup_twinweave_timing_hook() -> Variant:
    """``f`` woven on its way in by the import hook's call, then made by ``MAKE_FUNCTION``.

    Like ``twinweave_timing`` (timing plugin, drain thread, drain on the clock),
    but the function is created by running the woven module code, as for every
    module imported after the agent started, rather than by
    ``types.FunctionType`` or a ``__code__`` swap (the path of modules imported
    before it). The two differ on 3.13: a function made either of those two ways
    has no function version, so the interpreter never specializes calls to it
    (python/cpython#117045), and every call takes the generic path.
    """
    agent = agent_for("f")
    agent.plugins.start(CONTEXT)
    namespace = load_target(
        agent.weave_module(compile(TARGET_SOURCE, TARGET_FILE, "exec"), [TARGET_MODULE])
    )
    fn = namespace["f"]
    probe = probe_of(fn.__code__)
    assert probe is not None and not probe.steps_mode
    (timing,) = agent.plugins.plugins
    return Variant(
        "twinweave_timing_hook",
        fn,
        on_clock=agent.plugins.drain,
        close=agent.stop,
        plugin_set=agent.plugins,
        timing=timing,
        probe=probe,
    )


def setup_twinweave_steps() -> Variant:
    """A woven copy of ``f`` in steps mode: a Python plugin's ``on_step`` gets every call."""
    counter = StepCounter()
    variant = _woven_row("twinweave_steps", TimingPlugin(), counter, counter=counter)
    assert variant.probe is not None and variant.probe.steps_mode
    return variant


def setup_twinweave_monitoring() -> Variant:
    """``f`` observed by the ``sys.monitoring`` backend (3.12+), timing plugin and drain on.

    The row that ``--backend auto`` is decided by: the same plugins as
    ``twinweave_timing``, with the calls reported by PEP 669 callbacks instead of
    woven bytecode.
    """
    from agent.weaving.monitoring import MonitoringBackend

    timing = TimingPlugin()
    plugin_set = PluginSet([timing], accelerate=False)
    plugin_set.start(CONTEXT)
    probe = plugin_set.probe_for(BENCH_JOINPOINT)
    assert probe is not None and probe.recorder is None
    target = load_target()["f"]
    code = target.__code__.replace(co_name=target.__code__.co_name)  # a code object of its own
    fn = types.FunctionType(code, target.__globals__, "f")
    backend = MonitoringBackend()
    backend.start()
    backend.register(code, probe)

    def close() -> None:
        backend.stop()
        plugin_set.stop()

    return Variant(
        "twinweave_monitoring",
        fn,
        on_clock=plugin_set.drain,
        close=close,
        plugin_set=plugin_set,
        timing=timing,
        probe=probe,
    )


SETUPS: dict[str, Callable[[], Variant]] = {
    "empty_loop": setup_empty_loop,
    "bare": setup_bare,
    "closure_decorator": setup_closure_decorator,
    "twinweave_timing": setup_twinweave_timing,
    "twinweave_timing_hook": setup_twinweave_timing_hook,
    "twinweave_unmatched": setup_twinweave_unmatched,
    "perf_counter_ns_x2": setup_perf_counter_ns_x2,
    "twinweave_timing_python": setup_twinweave_timing_python,
    "twinweave_steps": setup_twinweave_steps,
}
if sys.version_info >= (3, 12):  # before 3.12 there is no sys.monitoring: the row is missing
    SETUPS["twinweave_monitoring"] = setup_twinweave_monitoring
"""Every row, in the order pyperf runs them."""

DESCRIPTIONS = {
    "empty_loop": "the timed loop alone (per call slot)",
    "bare": "def f(x): return x + 1",
    "closure_decorator": "f wrapped by a do-nothing *a/**k closure",
    "twinweave_timing": "f woven, timing mode, timing plugin + drain thread on",
    "twinweave_timing_hook": "the same, f made by MAKE_FUNCTION (import-hook path)",
    "twinweave_unmatched": "f in a woven module, matched by no pointcut",
    "perf_counter_ns_x2": "two perf_counter_ns() calls (no function call)",
    "twinweave_timing_python": "the same on the pure-Python path (no C accelerator)",
    "twinweave_steps": "f woven, steps mode, a Python on_step plugin",
    "twinweave_monitoring": "f seen by the sys.monitoring backend, timing plugin on",
}


# -- the timed loop --------------------------------------------------------------------------

_LOOP_SOURCE = """\
def timed_loop(loops, fn, arg, on_clock, off_clock):
    it = _repeat(None, loops)
    t0 = _clock()
    for _ in it:
{body}
    on_clock()
    elapsed = _clock() - t0
    off_clock()
    return elapsed
"""


def make_loop(body: str, inner: int = INNER_LOOPS) -> Callable[..., float]:
    """A fresh timing loop (its own code object) running ``body`` ``inner`` times per iteration."""
    lines = "\n".join(f"        {body}" for _ in range(inner))
    namespace: dict[str, Any] = {"_repeat": itertools.repeat, "_clock": time.perf_counter}
    exec(compile(_LOOP_SOURCE.format(body=lines), f"<timed loop: {body}>", "exec"), namespace)
    return namespace["timed_loop"]


def run_variant(variant: Variant, loop: Callable[..., float], loops: int) -> float:
    """Time ``loops`` iterations of ``loop`` on ``variant``; seconds."""
    return loop(loops, variant.fn, ARG, variant.on_clock, variant.off_clock)


_live: dict[str, tuple[Variant, Callable[..., float]]] = {}


def time_row(loops: int, name: str) -> float:
    """pyperf's time function: set the row up on first use in this worker, then time it."""
    live = _live.get(name)
    if live is None:
        variant = SETUPS[name]()
        live = _live[name] = (variant, make_loop(variant.body))
        atexit.register(variant.close)
    variant, loop = live
    return run_variant(variant, loop, loops)


# -- the summary -----------------------------------------------------------------------------


def _stats(bench: Any) -> dict[str, Any]:
    values = bench.get_values()
    mean = bench.mean()
    stdev = bench.stdev() if len(values) > 1 else 0.0
    return {
        "mean_ns": mean * 1e9,
        "stdev_ns": stdev * 1e9,
        "sem_ns": stdev / math.sqrt(len(values)) * 1e9,
        "values": len(values),
    }


def _difference(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {"ns": a["mean_ns"] - b["mean_ns"], "sem_ns": math.hypot(a["sem_ns"], b["sem_ns"])}


def _ratio(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    value = a["ns"] / b["ns"] if b["ns"] else math.inf
    relative = math.hypot(
        a["sem_ns"] / a["ns"] if a["ns"] else 0.0, b["sem_ns"] / b["ns"] if b["ns"] else 0.0
    )
    return {"value": value, "sem": abs(value) * relative}


CLAIM_ROWS = ("twinweave_timing", "twinweave_timing_hook")
"""The woven timing-mode rows the claim is checked on (each present one must pass)."""


def summarize(rows: dict[str, dict[str, Any]], unmatched_notes: dict[str, Any]) -> dict[str, Any]:
    """Added costs and the claim's ratios from pyperf means of one run (``rows``: name -> stats)."""
    bare = rows["bare"]
    added = {
        name: _difference(stats, bare)
        for name, stats in rows.items()
        if name not in ("bare", "empty_loop", "perf_counter_ns_x2")
    }
    floor = _difference(rows["perf_counter_ns_x2"], rows["empty_loop"])
    ratios: dict[str, Any] = {}
    claim: dict[str, bool] = {}
    for row in CLAIM_ROWS:
        if row not in added:
            continue
        vs_decorator = _ratio(added[row], added["closure_decorator"])
        vs_floor = _ratio(added[row], floor)
        ratios[f"{row}_vs_decorator"] = dict(
            vs_decorator,
            definition=f"added({row}) / added(closure_decorator)",
            limit=MAX_VS_DECORATOR,
        )
        ratios[f"{row}_vs_clock_floor"] = dict(
            vs_floor, definition=f"added({row}) / clock_floor", limit=MAX_VS_CLOCK_FLOOR
        )
        claim[f"{row}_vs_decorator"] = vs_decorator["value"] <= MAX_VS_DECORATOR
        claim[f"{row}_vs_clock_floor"] = vs_floor["value"] <= MAX_VS_CLOCK_FLOOR
    unmatched = rows["twinweave_unmatched"]
    ratios["unmatched_vs_bare"] = dict(
        _ratio(
            {"ns": unmatched["mean_ns"], "sem_ns": unmatched["sem_ns"]},
            {"ns": bare["mean_ns"], "sem_ns": bare["sem_ns"]},
        ),
        definition="twinweave_unmatched / bare",
    )
    claim["unmatched_same_code"] = bool(unmatched_notes.get("same_code_object"))
    claim["holds"] = all(claim.values())
    summary: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "statistic": "mean of pyperf values (ns per call); sem = stdev / sqrt(values)",
        "inner_loops": INNER_LOOPS,
        "rows": {name: dict(stats, description=DESCRIPTIONS[name]) for name, stats in rows.items()},
        "added_vs_bare": added,
        "clock_floor": dict(floor, definition="perf_counter_ns_x2 - empty_loop"),
        "ratios": ratios,
        "unmatched": unmatched_notes,
        "claim": claim,
    }
    summary["timing_path"] = speedups.CLOCK if speedups.available() else "python"
    if "twinweave_monitoring" in rows:
        faster = min(("twinweave_timing", "twinweave_monitoring"), key=lambda r: rows[r]["mean_ns"])
        summary["backend_choice"] = {
            "bytecode_ns": rows["twinweave_timing"]["mean_ns"],
            "monitoring_ns": rows["twinweave_monitoring"]["mean_ns"],
            "faster": "bytecode" if faster == "twinweave_timing" else "monitoring",
        }
    else:
        summary["missing"] = ["twinweave_monitoring: sys.monitoring exists from Python 3.12"]
    if "twinweave_timing_python" in rows:
        summary["python_path_added"] = dict(
            _difference(rows["twinweave_timing_python"], rows["bare"]),
            definition="twinweave_timing_python - bare",
        )
    return summary


def _verdict(ok: bool) -> str:
    return "holds" if ok else "FAILS"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a small text table."""
    rows = summary["rows"]
    bare = rows["bare"]["mean_ns"]
    added = summary["added_vs_bare"]
    ratios = summary["ratios"]
    claim = summary["claim"]
    choice = summary.get("backend_choice")
    out: list[str] = [
        f"twinweave call overhead, {summary['implementation']} {summary['python']}: pyperf mean "
        f"(ns per call, +- sem), {summary['inner_loops']} calls per loop iteration; "
        f"timing path: {summary.get('timing_path', '?')}",
        "",
        f"{'row':<26} {'mean ns':>9} {'+-sem':>7} {'x bare':>7} {'added ns':>10}  what",
    ]
    for name, stats in rows.items():
        extra = f"{added[name]['ns']:>10.1f}" if name in added else f"{'':>10}"
        out.append(
            f"{name:<26} {stats['mean_ns']:>9.1f} {stats['sem_ns']:>7.1f} "
            f"{stats['mean_ns'] / bare:>7.2f} {extra}  {stats['description']}"
        )
    figures = [
        (f"added({name})", f"{name} - bare", added[name])
        for name in (*CLAIM_ROWS, "closure_decorator")
        if name in added
    ]
    figures.append(("clock floor", "perf_counter_ns_x2 - empty_loop", summary["clock_floor"]))
    if "python_path_added" in summary:
        figures.append(
            ("added(python path)", "twinweave_timing_python - bare", summary["python_path_added"])
        )
    for missing in summary.get("missing", []):
        out.append(f"{'(missing)':<26} {missing}")
    out.append("")
    for label, definition, figure in figures:
        out.append(
            f"{label:<29} = {definition:<34} = {figure['ns']:7.1f} ns +- {figure['sem_ns']:.1f}"
        )
    out.append("")
    for row in CLAIM_ROWS:
        for kind, against in (("decorator", "added(decorator)"), ("clock_floor", "clock floor")):
            key = f"{row}_vs_{kind}"
            if key not in ratios:
                continue
            ratio = ratios[key]
            text = f"added({row}) / {against}"
            out.append(
                f"{text:<52} = {ratio['value']:5.2f} +- {ratio['sem']:.2f}"
                f"  (claim <= {ratio['limit']:g}): {_verdict(claim[key])}"
            )
    unmatched = summary["unmatched"]
    ratio = ratios["unmatched_vs_bare"]
    out += [
        f"{'twinweave_unmatched / bare':<52} = {ratio['value']:5.3f} +- {ratio['sem']:.3f}"
        f"  (same code object as compiled: {unmatched.get('same_code_object')}, "
        f"module was woven: {unmatched.get('module_was_woven')}): "
        f"{_verdict(claim['unmatched_same_code'])}",
        f"claim on this Python: {_verdict(claim['holds'])}",
    ]
    if choice is not None:
        out.append(
            f"--backend auto: bytecode {choice['bytecode_ns']:.1f} ns vs monitoring "
            f"{choice['monitoring_ns']:.1f} ns per call: {choice['faster']} is faster"
        )
    return "\n".join(out)


def unmatched_notes() -> dict[str, Any]:
    """The structural half of the unmatched row: is ``f`` still its compiled code object?"""
    variant = setup_twinweave_unmatched()
    try:
        return dict(variant.notes)
    finally:
        variant.close()


def main(argv: list[str] | None = None) -> int:
    import pyperf  # only the benchmark itself needs it (the smoke test does not)

    runner = pyperf.Runner()
    runner.metadata["description"] = "twinweave: per-call overhead of the timing probe"
    runner.argparser.add_argument(
        "--summary",
        metavar="FILE",
        help="write the added costs and the claim's ratios (from this run) as JSON to FILE",
    )
    runner.parse_args(argv)
    results: dict[str, Any] = {}
    for name in SETUPS:
        results[name] = runner.bench_time_func(
            name,
            time_row,
            name,
            inner_loops=INNER_LOOPS,
            metadata={"description": DESCRIPTIONS[name]},
        )
    args = runner.args
    if args.worker or any(bench is None for bench in results.values()):
        return 0  # a worker, or a pyperf mode that measured nothing here (--compare-to...)
    rows = {name: _stats(bench) for name, bench in results.items()}
    summary = summarize(rows, unmatched_notes())
    summary["pyperf_output"] = os.path.abspath(args.output) if args.output else None
    print()
    print(format_summary(summary))
    if args.summary:
        with open(args.summary, "w", encoding="utf-8") as stream:
            json.dump(summary, stream, indent=2)
            stream.write("\n")
        print(f"summary written to {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
