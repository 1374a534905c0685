"""Per-call overhead of a woven function, against a bare call, a closure decorator and others.

Issue 2's speed claim, measured on the running Python in one pyperf run::

    With the timing plugin on, the added cost of a call to a woven function is no
    more than that of a do-nothing closure decorator, and no more than twice the
    cost of two time.perf_counter_ns() calls; functions that no pointcut matches
    cost exactly what they did.

and, for issue 5, the same function under the other instruments people use
(wrapt, ``sys.setprofile`` with a no-op, cProfile, no-op ``sys.monitoring``
callbacks, a generic Python plugin receiving every event), plus methods,
generators and coroutines, each against its own bare call and closure decorator.

Run it from the repository root (see benchmarks/README.md)::

    python benchmarks/overhead.py --quick -o out.json --summary out.summary.json
    python benchmarks/overhead.py --processes 10 -o full.json --summary full.summary.json

Every pyperf option works (``--fast``, ``--rigorous``, ``-o``, ``--processes``,
``--values``, ``--loops``...); ``--summary FILE`` and ``--quick`` (3 processes of
2 values per row) are ours. Each row is timed by
the same generated loop, ``INNER_LOOPS`` calls per iteration, so the loop's own
cost is small and identical for every row that calls a function; pyperf spawns
the worker processes, calibrates the loop count and reports seconds per call.
Each worker sets up only the row it measures (the drain thread of the twinweave
rows only exists in their workers). The summary uses pyperf's **mean** of each
row and derives every figure from rows of the same run: added cost is ``row -
bare`` (the bare row of the row's kind), the clock floor is ``perf_counter_ns_x2 -
empty_loop``, and the claim is
checked as the two ratios ``added(W) / added(closure_decorator)`` (at most 1)
and ``added(W) / floor`` (at most 2) for both woven timing rows W
(``twinweave_timing``, a ``types.FunctionType`` copy as for modules woven in
place, and ``twinweave_timing_hook``, made by ``MAKE_FUNCTION`` as for modules
woven by the import hook), plus the code-identity check of ``twinweave_unmatched``.
Rows the interpreter cannot run (``sys.monitoring`` before 3.12, wrapt not
installed) are listed with a ``missing:`` line instead of a figure.

Each ``setup_<row>()`` builds one row and returns a :class:`Variant`;
``tests/benchmarks/test_overhead_smoke.py`` runs them all once (behaviour only).
"""

from __future__ import annotations

import importlib.util
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
from benchmarks._pyperf import (  # noqa: E402
    cprofile,
    make_loop,
    monitoring_missing,
    monitoring_noop,
    nothing,
    row_timer,
    run_hooked,
    run_script,
    setprofile_noop,
)
from benchmarks._report import verdict  # noqa: E402

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


class C:
    def m(self, x):
        return x + 1


def gen(x):
    yield x
    yield x + 1
    yield x + 2


async def coro(x):
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


@dataclass
class Variant:
    """One row, ready to time: the timed loop calls ``fn`` ``INNER_LOOPS`` times per iteration.

    ``before``, ``after``, ``on_clock``, ``off_clock`` and ``close`` are the hooks of
    :class:`benchmarks._pyperf.Hooked` (the twinweave rows drain on the clock, the
    profiler rows switch their profiler around the window). ``kind`` says what is
    called and how (see :data:`KINDS`); its ``bare`` and ``closure_decorator`` rows
    are the row's baselines.
    """

    name: str
    fn: Any
    body: str = "fn(arg)"
    kind: str = "function"
    before: Callable[[], Any] = nothing
    after: Callable[[], Any] = nothing
    on_clock: Callable[[], Any] = nothing
    off_clock: Callable[[], Any] = nothing
    close: Callable[[], Any] = nothing
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
    variant, namespace = _f_woven_by("twinweave_unmatched", agent_for("g"))
    variant.notes["module_was_woven"] = probe_of(namespace["g"].__code__) is not None
    return variant


def _f_woven_by(name: str, agent: Agent) -> tuple[Variant, dict[str, Any]]:
    """Start ``agent``'s plugins and load the target module as its import hook weaves it.

    Returns the row of the module's ``f`` (its notes say whether ``f`` kept the code
    object the compiler made) and the module's namespace.
    """
    agent.plugins.start(CONTEXT)
    original = compile(TARGET_SOURCE, TARGET_FILE, "exec")
    namespace = load_target(agent.weave_module(original, [TARGET_MODULE]))
    compiled_f = next(
        c for c in original.co_consts if isinstance(c, types.CodeType) and c.co_name == "f"
    )
    fn = namespace["f"]
    variant = Variant(
        name,
        fn,
        close=agent.stop,
        plugin_set=agent.plugins,
        notes={"same_code_object": fn.__code__ is compiled_f},
    )
    return variant, namespace


def setup_twinweave_no_plugin() -> Variant:
    """``f`` from the target module, matched by a pointcut, with no plugin subscribed.

    The real agent, with a pointcut file whose aspect matches ``f`` and which names no
    plugin, weaves the module's code with ``Agent.weave_module`` (the import hook's
    call): a join point no plugin receives events for is not woven, so ``f`` keeps the
    code object the compiler made.
    """
    source = pointcuts("f").replace('<plugin name="timing"/>', "")
    agent = Agent(parse_pointcuts(source, "<pointcuts for f, no plugin>"), "bytecode")
    return _f_woven_by("twinweave_no_plugin", agent)[0]


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
    return _hook_woven_row("twinweave_timing_hook", "function", "f")


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
    woven bytecode. Where the C accelerator is built, the callbacks are its C
    functions and the probe's C recorder folds the durations, as on the bytecode
    path; ``notes["c_callbacks"]`` says whether they ran.
    """
    from agent.weaving.monitoring import MonitoringBackend

    timing = TimingPlugin()
    plugin_set = PluginSet([timing])
    plugin_set.start(CONTEXT)
    probe = plugin_set.probe_for(BENCH_JOINPOINT)
    assert probe is not None and (probe.recorder is not None) == speedups.available()
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
        notes={"c_callbacks": backend.accelerated},
    )


# -- the other instruments, on the same f -----------------------------------------------------


def wrapt_missing() -> str | None:
    """Why the wrapt row cannot run here, or ``None`` when it can."""
    if importlib.util.find_spec("wrapt") is None:
        return "wrapt not installed"
    return None


def setup_wrapt_decorator() -> Variant:
    """``f`` wrapped by a do-nothing ``@wrapt.decorator`` (``return wrapped(*args, **kwargs)``)."""
    import wrapt

    @wrapt.decorator
    def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    fn = passthrough(load_target()["f"])
    module = sys.modules.get(type(fn).__module__)
    path = str(getattr(module, "__file__", "") or "")
    return Variant(
        "wrapt_decorator",
        fn,
        notes={
            "wrapt_version": getattr(wrapt, "__version__", "?"),
            "c_extension": path.endswith((".so", ".pyd")),
        },
    )


def setup_setprofile_noop() -> Variant:
    """``f`` as compiled, with ``sys.setprofile(<no-op>)`` active around the timed loop."""
    return Variant("setprofile_noop", load_target()["f"], **setprofile_noop()._asdict())


def setup_cprofile() -> Variant:
    """``f`` as compiled, with a ``cProfile.Profile`` enabled around the timed loop."""
    return Variant("cprofile", load_target()["f"], **cprofile()._asdict())


MONITORING_TOOL_NAME = "twinweave-bench-noop"


def setup_monitoring_noop() -> Variant:
    """``f`` as compiled, with do-nothing ``sys.monitoring`` PY_START/PY_RETURN callbacks (3.12+).

    Local events on ``f``'s code object only (the timed loop is not instrumented),
    under a tool id no one else holds; the callbacks return ``None`` (not
    ``DISABLE``), so they run on every call.
    """
    fn = load_target()["f"]
    return Variant(
        "monitoring_noop", fn, **monitoring_noop(MONITORING_TOOL_NAME, fn.__code__)._asdict()
    )


class EventCounter(Plugin):
    """A generic Python plugin that receives every event: ``on_start`` and ``on_step``."""

    name = "event-counter"

    def __init__(self) -> None:
        self.starts = 0
        self.steps = 0

    def on_start(self, event: Any) -> None:
        self.starts += 1

    def on_step(self, step: Step) -> None:
        self.steps += 1


def setup_twinweave_events() -> Variant:
    """A woven copy of ``f`` whose only plugin is :class:`EventCounter` (start and end events)."""
    counter = EventCounter()
    plugin_set = PluginSet([counter])
    plugin_set.start(CONTEXT)
    probe = plugin_set.probe_for(BENCH_JOINPOINT)
    assert probe is not None and probe.steps_mode
    return Variant(
        "twinweave_events",
        woven_copy(load_target()["f"], probe),
        on_clock=plugin_set.drain,
        close=plugin_set.stop,
        plugin_set=plugin_set,
        probe=probe,
        notes={"counter": counter},
    )


# -- methods, generators and coroutines -------------------------------------------------------

KINDS: dict[str, dict[str, str]] = {
    "function": {
        "body": "fn(arg)",
        "bare": "bare",
        "closure_decorator": "closure_decorator",
        "title": "plain functions: fn(arg), def f(x): return x + 1",
    },
    "method": {
        "body": "fn.m(arg)",
        "bare": "method_bare",
        "closure_decorator": "method_closure_decorator",
        "title": "methods: obj.m(arg) (attribute lookup and call), def m(self, x): return x + 1",
    },
    "generator": {
        "body": "for _v in fn(arg): pass",
        "bare": "generator_bare",
        "closure_decorator": "generator_closure_decorator",
        "title": "generators: for _v in gen(arg): pass, gen yields x, x + 1, x + 2 "
        "(creation, first next to exhaustion)",
    },
    "coroutine": {
        "body": "c = fn(arg)\ntry:\n    c.send(None)\nexcept StopIteration:\n    pass",
        "bare": "coroutine_bare",
        "closure_decorator": "coroutine_closure_decorator",
        "title": "coroutines: async def coro(x): return x + 1, created and driven by one "
        ".send(None) to its StopIteration (no event loop)",
    },
}
"""What each kind of row calls (``body``, run by the timed loop) and its two baseline rows."""


def use(variant: Variant, arg: Any) -> Any:
    """One use of ``variant`` as its timed loop makes it, returning the result (for tests)."""
    fn = variant.fn
    if variant.kind == "method":
        return fn.m(arg)
    if variant.kind == "generator":
        return list(fn(arg))
    if variant.kind == "coroutine":
        c = fn(arg)
        try:
            c.send(None)
        except StopIteration as stop:
            return stop.value
        c.close()
        raise AssertionError("the coroutine did not finish in one send")
    return fn(arg)


def _kind_row(name: str, kind: str, fn: Any, **fields: Any) -> Variant:
    return Variant(name, fn, body=KINDS[kind]["body"], kind=kind, **fields)


def _method_class(decorate: bool = False) -> Any:
    cls = load_target()["C"]
    if decorate:
        cls.m = deco(cls.__dict__["m"])
    return cls


def setup_method_bare() -> Variant:
    """``obj.m(arg)`` on an instance of the compiled ``C``."""
    return _kind_row("method_bare", "method", _method_class()())


def setup_method_closure_decorator() -> Variant:
    """``obj.m(arg)`` with ``C.m`` replaced by ``deco(C.m)`` (bound like any function)."""
    return _kind_row("method_closure_decorator", "method", _method_class(decorate=True)())


def setup_generator_bare() -> Variant:
    """The compiled ``gen``, consumed by a ``for`` loop."""
    return _kind_row("generator_bare", "generator", load_target()["gen"])


def setup_generator_closure_decorator() -> Variant:
    """``deco(gen)``: the wrapper returns the generator object, so it only spans its creation."""
    return _kind_row("generator_closure_decorator", "generator", deco(load_target()["gen"]))


def setup_coroutine_bare() -> Variant:
    """The compiled ``coro``, driven by ``.send(None)``."""
    return _kind_row("coroutine_bare", "coroutine", load_target()["coro"])


def setup_coroutine_closure_decorator() -> Variant:
    """``deco(coro)``: the wrapper returns the coroutine object, so it only spans its creation."""
    return _kind_row("coroutine_closure_decorator", "coroutine", deco(load_target()["coro"]))


def _hook_woven_row(name: str, kind: str, qualname: str) -> Variant:
    """``qualname`` of the target module woven by the import hook's call, timing plugin on.

    A real agent whose pointcut matches ``qualname``, its plugin set started (drain
    thread running), the module's code woven by ``Agent.weave_module`` and run, so the
    function is made by ``MAKE_FUNCTION``; every value ends with a drain on the clock.
    """
    agent = agent_for(qualname)
    agent.plugins.start(CONTEXT)
    namespace = load_target(
        agent.weave_module(compile(TARGET_SOURCE, TARGET_FILE, "exec"), [TARGET_MODULE])
    )
    if kind == "method":
        fn = namespace["C"]()
        code = namespace["C"].__dict__["m"].__code__
    else:
        fn = namespace[qualname]
        code = fn.__code__
    probe = probe_of(code)
    assert probe is not None and not probe.steps_mode
    (timing,) = agent.plugins.plugins
    return _kind_row(
        name,
        kind,
        fn,
        on_clock=agent.plugins.drain,
        close=agent.stop,
        plugin_set=agent.plugins,
        timing=timing,
        probe=probe,
    )


def setup_method_twinweave_timing() -> Variant:
    """``C.m`` woven by the import hook's call, timing plugin and drain on."""
    return _hook_woven_row("method_twinweave_timing", "method", "C.m")


def setup_generator_twinweave_timing() -> Variant:
    """``gen`` woven by the import hook's call, timing plugin and drain on."""
    return _hook_woven_row("generator_twinweave_timing", "generator", "gen")


def setup_coroutine_twinweave_timing() -> Variant:
    """``coro`` woven by the import hook's call, timing plugin and drain on."""
    return _hook_woven_row("coroutine_twinweave_timing", "coroutine", "coro")


def missing_rows() -> dict[str, str]:
    """Rows this interpreter cannot measure, and why."""
    missing = monitoring_missing("twinweave_monitoring", "monitoring_noop")
    why = wrapt_missing()
    if why is not None:
        missing["wrapt_decorator"] = why
    return missing


MISSING = missing_rows()
"""Rows this interpreter cannot measure, and why (each gets a ``missing:`` line)."""

ALL_SETUPS: dict[str, Callable[[], Variant]] = {
    "empty_loop": setup_empty_loop,
    "bare": setup_bare,
    "closure_decorator": setup_closure_decorator,
    "twinweave_timing": setup_twinweave_timing,
    "twinweave_timing_hook": setup_twinweave_timing_hook,
    "twinweave_unmatched": setup_twinweave_unmatched,
    "twinweave_no_plugin": setup_twinweave_no_plugin,
    "perf_counter_ns_x2": setup_perf_counter_ns_x2,
    "twinweave_timing_python": setup_twinweave_timing_python,
    "twinweave_steps": setup_twinweave_steps,
    "twinweave_monitoring": setup_twinweave_monitoring,
    "twinweave_events": setup_twinweave_events,
    "wrapt_decorator": setup_wrapt_decorator,
    "setprofile_noop": setup_setprofile_noop,
    "cprofile": setup_cprofile,
    "monitoring_noop": setup_monitoring_noop,
    "method_bare": setup_method_bare,
    "method_closure_decorator": setup_method_closure_decorator,
    "method_twinweave_timing": setup_method_twinweave_timing,
    "generator_bare": setup_generator_bare,
    "generator_closure_decorator": setup_generator_closure_decorator,
    "generator_twinweave_timing": setup_generator_twinweave_timing,
    "coroutine_bare": setup_coroutine_bare,
    "coroutine_closure_decorator": setup_coroutine_closure_decorator,
    "coroutine_twinweave_timing": setup_coroutine_twinweave_timing,
}
"""Every row there is, in the order pyperf runs them (and the table shows them)."""

SETUPS: dict[str, Callable[[], Variant]] = {
    name: setup for name, setup in ALL_SETUPS.items() if name not in MISSING
}
"""The rows measured on this interpreter."""

KIND_OF: dict[str, str] = {
    name: kind
    for kind in ("method", "generator", "coroutine")
    for name in ALL_SETUPS
    if name.startswith(f"{kind}_")
}
KIND_OF.update(empty_loop="clock", perf_counter_ns_x2="clock")
"""Row -> kind (rows not listed are plain functions; ``clock`` rows call nothing)."""


def kind_of(name: str) -> str:
    return KIND_OF.get(name, "function")


DESCRIPTIONS = {
    "empty_loop": "the timed loop alone (per call slot)",
    "bare": "def f(x): return x + 1",
    "closure_decorator": "f wrapped by a do-nothing *a/**k closure",
    "twinweave_timing": "f woven, timing mode, timing plugin + drain thread on",
    "twinweave_timing_hook": "the same, f made by MAKE_FUNCTION (import-hook path)",
    "twinweave_unmatched": "f in a woven module, matched by no pointcut",
    "twinweave_no_plugin": "f matched by a pointcut, no plugin subscribed: not woven, "
    "the compiler's code object",
    "perf_counter_ns_x2": "two perf_counter_ns() calls (no function call)",
    "twinweave_timing_python": "the same on the pure-Python path (no C accelerator)",
    "twinweave_steps": "f woven, steps mode, a Python on_step plugin + timing plugin",
    "twinweave_monitoring": "f seen by the sys.monitoring backend, timing plugin on",
    "twinweave_events": "f woven, steps mode, only a generic Python plugin with on_start + "
    "on_step (every event)",
    "wrapt_decorator": "f wrapped by a do-nothing @wrapt.decorator",
    "setprofile_noop": "f, sys.setprofile(no-op function) on around the timed loop",
    "cprofile": "f, cProfile.Profile enabled around the timed loop",
    "monitoring_noop": "f, sys.monitoring PY_START + PY_RETURN no-op callbacks on its code",
    "method_bare": "obj.m(arg), m as compiled",
    "method_closure_decorator": "obj.m(arg), m = deco(m)",
    "method_twinweave_timing": "obj.m(arg), m woven (import-hook path), timing plugin on",
    "generator_bare": "gen as compiled",
    "generator_closure_decorator": "deco(gen): wrapper returns the generator, so it only "
    "spans creation, not the iteration",
    "generator_twinweave_timing": "gen woven (import-hook path; timed from first resume to "
    "exhaustion), timing plugin on",
    "coroutine_bare": "coro as compiled",
    "coroutine_closure_decorator": "deco(coro): wrapper returns the coroutine, so it only "
    "spans creation, not the run",
    "coroutine_twinweave_timing": "coro woven (import-hook path; timed from first send to "
    "return), timing plugin on",
}


# -- the timed loop --------------------------------------------------------------------------


def run_variant(variant: Variant, loop: Callable[..., float], loops: int) -> float:
    """Time ``loops`` iterations of ``loop`` (from ``make_loop``) on ``variant``; seconds."""
    return run_hooked(loop, loops, variant.fn, ARG, variant)


def _prepare(name: str) -> tuple[Variant, Callable[[int], float]]:
    variant = SETUPS[name]()
    loop = make_loop(variant.body, INNER_LOOPS)
    return variant, lambda loops: run_variant(variant, loop, loops)


time_row = row_timer(_prepare)
"""pyperf's time function: set the row up on first use in this worker, then time it."""


# -- the summary -----------------------------------------------------------------------------


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


def _baselines(name: str, rows: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    """The stats of the bare and closure-decorator rows of ``name``'s kind (``None`` if absent)."""
    kind = KINDS.get(kind_of(name), KINDS["function"])
    return rows.get(kind["bare"]), rows.get(kind["closure_decorator"])


def _is_bare(name: str) -> bool:
    return name in {kind["bare"] for kind in KINDS.values()}


def _figures(rows: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every row against the ``bare`` and ``closure_decorator`` rows of its kind.

    Returns the added cost of each non-bare row (``row - bare``) and, by row, its
    ratios to the two baselines (``x_bare``, ``x_decorator``, ``added_vs_decorator_added``).
    """
    added: dict[str, Any] = {}
    vs_baselines: dict[str, Any] = {}
    for name, stats in rows.items():
        kind_bare, kind_deco = _baselines(name, rows)
        if kind_of(name) == "clock" or kind_bare is None:
            continue
        entry: dict[str, Any] = {"x_bare": stats["mean_ns"] / kind_bare["mean_ns"]}
        if kind_deco is not None:
            entry["x_decorator"] = stats["mean_ns"] / kind_deco["mean_ns"]
        if not _is_bare(name):
            added[name] = _difference(stats, kind_bare)
            if kind_deco is not None:
                deco_added = _difference(kind_deco, kind_bare)
                entry["added_vs_decorator_added"] = _ratio(added[name], deco_added)["value"]
        vs_baselines[name] = entry
    return added, vs_baselines


def _claims(
    rows: dict[str, dict[str, Any]],
    added: dict[str, Any],
    floor: dict[str, float],
    unmatched_notes: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, bool]]:
    """The claim's ratios (with their definitions and limits) and whether each part holds."""
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
    unmatched, bare = rows["twinweave_unmatched"], rows["bare"]
    ratios["unmatched_vs_bare"] = dict(
        _ratio(
            {"ns": unmatched["mean_ns"], "sem_ns": unmatched["sem_ns"]},
            {"ns": bare["mean_ns"], "sem_ns": bare["sem_ns"]},
        ),
        definition="twinweave_unmatched / bare",
    )
    claim["unmatched_same_code"] = bool(unmatched_notes.get("same_code_object"))
    claim["holds"] = all(claim.values())
    return ratios, claim


def summarize(rows: dict[str, dict[str, Any]], unmatched_notes: dict[str, Any]) -> dict[str, Any]:
    """Added costs and the claim's ratios from pyperf means of one run (``rows``: name -> stats).

    Every row is compared with the ``bare`` and ``closure_decorator`` rows of its
    kind (plain function, method, generator, coroutine; see :data:`KINDS`).
    """
    added, vs_baselines = _figures(rows)
    floor = _difference(rows["perf_counter_ns_x2"], rows["empty_loop"])
    ratios, claim = _claims(rows, added, floor, unmatched_notes)
    summary: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "statistic": "mean of pyperf values (ns per call); sem = stdev / sqrt(values)",
        "inner_loops": INNER_LOOPS,
        "rows": {
            name: dict(stats, description=DESCRIPTIONS[name], kind=kind_of(name))
            for name, stats in rows.items()
        },
        "added_vs_bare": added,
        "vs_baselines": vs_baselines,
        "clock_floor": dict(floor, definition="perf_counter_ns_x2 - empty_loop"),
        "ratios": ratios,
        "unmatched": unmatched_notes,
        "claim": claim,
        "missing": [f"{name}: missing: {reason}" for name, reason in MISSING.items()],
    }
    summary["timing_path"] = speedups.CLOCK if speedups.available() else "python"
    if "twinweave_monitoring" in rows:
        faster = min(("twinweave_timing", "twinweave_monitoring"), key=lambda r: rows[r]["mean_ns"])
        summary["backend_choice"] = {
            "bytecode_ns": rows["twinweave_timing"]["mean_ns"],
            "monitoring_ns": rows["twinweave_monitoring"]["mean_ns"],
            "faster": "bytecode" if faster == "twinweave_timing" else "monitoring",
        }
    if "twinweave_timing_python" in rows:
        summary["python_path_added"] = dict(
            _difference(rows["twinweave_timing_python"], rows["bare"]),
            definition="twinweave_timing_python - bare",
        )
    return summary


def _row_order(names: Any) -> list[str]:
    """``names`` in table order: every known row in :data:`ALL_SETUPS` order, then the rest."""
    names = list(names)
    known = [name for name in ALL_SETUPS if name in names]
    return known + [name for name in names if name not in ALL_SETUPS]


def _missing(summary: dict[str, Any]) -> dict[str, str]:
    """Row -> why it is missing, from the summary's ``name: missing: reason`` lines."""
    missing = {}
    for line in summary.get("missing", []):
        name, _, reason = line.partition(": ")
        missing[name] = reason[len("missing: ") :] if reason.startswith("missing: ") else reason
    return missing


def _table_lines(summary: dict[str, Any]) -> list[str]:
    """The heading and one line per row (or its ``missing:`` line), by kind."""
    rows = summary["rows"]
    bare = rows["bare"]["mean_ns"]
    added = summary["added_vs_bare"]
    vs = summary.get("vs_baselines", {})
    missing = _missing(summary)
    out: list[str] = [
        f"twinweave call overhead, {summary['implementation']} {summary['python']}: pyperf mean "
        f"(ns per call, +- sem), {summary['inner_loops']} calls per loop iteration; "
        f"timing path: {summary.get('timing_path', '?')}",
        "x bare / x deco: mean / mean of the bare / closure-decorator row of the same kind; "
        "added: mean - bare; added/deco: added / added(closure decorator)",
        "",
        f"{'row':<28} {'mean ns':>9} {'+-sem':>7} {'x bare':>7} {'x deco':>7} "
        f"{'added ns':>9} {'added/deco':>10}  what",
    ]
    kind = None
    for name in _row_order([*rows, *missing]):
        row_kind = rows[name].get("kind", kind_of(name)) if name in rows else kind_of(name)
        section = row_kind if row_kind in KINDS else "function"
        if section != kind:
            kind = section
            out.append(f"-- {KINDS[kind]['title']}")
        if name not in rows:
            out.append(f"{name:<28} missing: {missing[name]}")
            continue
        stats = rows[name]
        entry = vs.get(name, {})
        x_bare = entry.get("x_bare", stats["mean_ns"] / bare)
        x_deco = f"{entry['x_decorator']:>7.2f}" if "x_decorator" in entry else f"{'':>7}"
        extra = f"{added[name]['ns']:>9.1f}" if name in added else f"{'':>9}"
        deco = (
            f"{entry['added_vs_decorator_added']:>10.2f}"
            if "added_vs_decorator_added" in entry
            else f"{'':>10}"
        )
        out.append(
            f"{name:<28} {stats['mean_ns']:>9.1f} {stats['sem_ns']:>7.1f} "
            f"{x_bare:>7.2f} {x_deco} {extra} {deco}  {stats['description']}"
        )
    return out


def _figure_lines(summary: dict[str, Any]) -> list[str]:
    """The added costs the claim is made of, each with its definition."""
    added = summary["added_vs_bare"]
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
    return [
        f"{label:<29} = {definition:<34} = {figure['ns']:7.1f} ns +- {figure['sem_ns']:.1f}"
        for label, definition, figure in figures
    ]


def _claim_lines(summary: dict[str, Any]) -> list[str]:
    """Each ratio of the claim with its limit and verdict, the unmatched check, the backend."""
    ratios = summary["ratios"]
    claim = summary["claim"]
    out: list[str] = []
    for row in CLAIM_ROWS:
        for kind_name, against in (
            ("decorator", "added(decorator)"),
            ("clock_floor", "clock floor"),
        ):
            key = f"{row}_vs_{kind_name}"
            if key not in ratios:
                continue
            ratio = ratios[key]
            text = f"added({row}) / {against}"
            out.append(
                f"{text:<52} = {ratio['value']:5.2f} +- {ratio['sem']:.2f}"
                f"  (claim <= {ratio['limit']:g}): {verdict(claim[key])}"
            )
    unmatched = summary["unmatched"]
    ratio = ratios["unmatched_vs_bare"]
    out += [
        f"{'twinweave_unmatched / bare':<52} = {ratio['value']:5.3f} +- {ratio['sem']:.3f}"
        f"  (same code object as compiled: {unmatched.get('same_code_object')}, "
        f"module was woven: {unmatched.get('module_was_woven')}): "
        f"{verdict(claim['unmatched_same_code'])}",
        f"claim on this Python: {verdict(claim['holds'])}",
    ]
    choice = summary.get("backend_choice")
    if choice is not None:
        out.append(
            f"--backend auto: bytecode {choice['bytecode_ns']:.1f} ns vs monitoring "
            f"{choice['monitoring_ns']:.1f} ns per call: {choice['faster']} is faster"
        )
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a small text table: the rows, the figures, the claim."""
    return "\n".join(
        [*_table_lines(summary), "", *_figure_lines(summary), "", *_claim_lines(summary)]
    )


def unmatched_notes() -> dict[str, Any]:
    """The structural half of the unmatched row: is ``f`` still its compiled code object?"""
    variant = setup_twinweave_unmatched()
    try:
        return dict(variant.notes)
    finally:
        variant.close()


QUICK_ARGS = ("--processes", "3", "--values", "2")
"""What ``--quick`` stands for: pyperf's ``--fast`` (2 values per process) with 3 processes.

pyperf's ``--fast`` always runs 10 worker processes per row (and overrides
``--processes``); 3 is the floor pyperf itself keeps for ``--fast``.
"""


RUN_OPTIONS: dict[str, Any] = {
    "unit": "ns",
    "stdev": True,
    "quick_note": " (pyperf's --fast, fewer processes)",
}
"""How :func:`benchmarks._pyperf.run_script` reports these rows (live.py's per-call rows too)."""


def main(argv: list[str] | None = None) -> int:
    return run_script(
        "twinweave: per-call overhead of the timing probe",
        SETUPS,
        time_row,
        INNER_LOOPS,
        DESCRIPTIONS,
        QUICK_ARGS,
        argv,
        lambda rows: summarize(rows, unmatched_notes()),
        format_summary,
        **RUN_OPTIONS,
    )


if __name__ == "__main__":
    sys.exit(main())
