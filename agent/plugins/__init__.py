"""The plugin API: how plugins are named, loaded, started, fed and stopped.

This package owns everything between "the pointcut file names a plugin" and "a
plugin's receiver is called": finding factories (built-in short names, entry
points of the ``twinweave.plugins`` group, ``module:callable`` specs), building
plugins without ever letting a broken one stop the user's program, choosing for
each join point the receivers (and so the probe mode) it needs, and delivering
batched durations. It does not parse the pointcut file (``agent.pointcuts``),
rewrite code (``agent.weaving``) or build events (``agent.events``); the built-in
plugins live in the modules next to this one.

Writing a plugin. A plugin is any object with ``start``/``stop`` (subclass
:class:`Plugin` for the defaults) and the receivers it needs, each optional:

* ``on_start(event: StartEvent)`` and ``on_step(step: Step)``: one call per woven
  call, on the calling thread. Defining either one puts the join points the plugin
  accepts in *steps mode*, which costs more per call.
* ``on_timings(joinpoint: JoinPoint, ok: list[int], failed: list[int])``: batched
  durations (ns) of calls that returned or raised, delivered about every 0.5 s by
  the drain thread and once more at stop. Treat the lists as read-only: every
  timing plugin gets the same ones. With only this receiver, join points stay in
  the cheap *timing mode*.
* ``on_summary(joinpoint: JoinPoint, summary: agent.speedups.TimingSummary)``: the
  same calls already aggregated (counts, totals, min, max, histogram buckets).
  Where the C accelerator is built, a join point whose timing plugins all define
  ``on_summary`` is timed in C, the cheapest mode of all; a plugin that defines
  only ``on_timings`` keeps its join points on the Python path.

A plugin without any receiver only gets ``start`` and ``stop``; a function that
no plugin with receivers accepts is not woven at all.

Receivers run with errors isolated (the first one is logged, the rest counted) and
with profiling switched off on their thread. A copyable example, ``mypkg/slow.py``::

    import logging
    from agent.plugins import AgentContext, Plugin

    log = logging.getLogger(__name__)

    class SlowCalls(Plugin):
        name = "slow-calls"

        def __init__(self, threshold_ms: str = "100") -> None:   # options arrive as strings
            self.threshold_ns = int(float(threshold_ms) * 1_000_000)

        def start(self, context: AgentContext) -> None:
            log.info("watching for calls over %d ns (backend %s)",
                     self.threshold_ns, context.backend)

        def accepts(self, joinpoint) -> bool:
            return joinpoint.type == "workflow"

        def on_step(self, step) -> None:
            if step.duration_ns > self.threshold_ns:
                log.warning("%s took %.1f ms (message %s)",
                            step.name, step.duration_ns / 1e6, step.message_id)

Name it in the pointcut file, where every other attribute becomes a keyword
argument of the factory::

    <plugin factory="mypkg.slow:SlowCalls" threshold_ms="250"/>

or publish it under a short name from your package's ``pyproject.toml``, then use
``<plugin name="slow-calls"/>``::

    [project.entry-points."twinweave.plugins"]
    slow-calls = "mypkg.slow:SlowCalls"
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

from agent import speedups
from agent.drain import Drainer
from agent.events import Dispatcher, JoinPoint, Probe

log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "RECEIVERS",
    "AgentContext",
    "Plugin",
    "PluginError",
    "PluginSet",
    "PluginSpecLike",
    "build_plugins",
    "import_extra",
    "load_factory",
    "receivers",
    "resolve",
]

BUILTIN: dict[str, str] = {
    "timing": "agent.plugins.timing:TimingPlugin",
    "failover": "agent.plugins.failover:FailoverPlugin",
    "prometheus": "agent.plugins.prometheus:PrometheusPlugin",
    "opentelemetry": "agent.plugins.otel:OpenTelemetryPlugin",
    "trace": "agent.plugins.trace:TracePlugin",
}
"""Short names of the plugins that come with twinweave, and their factories."""

ENTRY_POINT_GROUP = "twinweave.plugins"
"""Entry point group where installed packages publish plugin factories by short name."""

RECEIVERS = ("on_start", "on_step", "on_timings", "on_summary")
"""The optional receiver methods a plugin may define."""

STOP_TIMEOUT = 2.0
"""Seconds :meth:`PluginSet.stop` waits for the drain thread and for the final drain."""


class PluginError(Exception):
    """A plugin cannot be found, built or started; the message says what to do about it.

    Raised from a plugin's ``start``, it is logged as that one message (no traceback):
    use it for configuration mistakes the user can fix (a port in use, a bad option).
    """


def import_extra(module: str, extra: str, plugin: str) -> Any:
    """Import ``module`` for a built-in plugin, or say which extra installs it.

    ``import_extra("prometheus_client", "prometheus", "prometheus")`` returns the
    module, or raises :class:`PluginError` with ``pip install twinweave[prometheus]``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(
            f"the {plugin} plugin needs the {module.split('.')[0]} package, which is not "
            f"installed in this interpreter ({sys.executable}): pip install "
            f"twinweave[{extra}]"
        ) from exc


@dataclass(frozen=True)
class AgentContext:
    """What a plugin learns about the agent when it starts.

    New fields may be added (always with defaults); plugins should read the ones
    they need by name.
    """

    python: str
    """Version of the running interpreter, e.g. ``"3.11.7"``."""
    backend: str
    """Weaving backend in use: ``"bytecode"`` or ``"monitoring"``."""
    report: str | None = None
    """The ``--report FILE`` given on the command line, or ``None``."""
    report_interval: float | None = None
    """Seconds between rewrites of the report (``--report-interval``,
    ``$AGENT_REPORT_INTERVAL``), or ``None`` for "at exit only"."""


class Plugin:
    """Base class with do-nothing defaults; duck typing also works.

    Define only the receivers you need (see the module docstring): the weaver
    emits the cheapest code that serves what is subscribed.
    """

    name: str = "plugin"
    order: int = 0
    """Receivers of plugins with a lower order run first for each event (ties: file order).
    The ``failover`` plugin runs last (100), so that it sees the trace context that a
    tracing plugin made current for the step."""

    def start(self, context: AgentContext) -> None:
        """Called once before any event; ``context`` describes the agent."""

    def stop(self) -> None:
        """Called once at exit, after the last ``on_timings``."""

    def accepts(self, joinpoint: JoinPoint) -> bool:
        """Whether this plugin wants events of ``joinpoint`` (asked once, when it is woven)."""
        return True


class PluginSpecLike(Protocol):
    """One ``<plugin>`` element of the pointcut file (``agent.pointcuts`` builds them)."""

    name: str | None
    factory: str | None
    options: Mapping[str, str]
    line: int | None


def receivers(plugin: Any) -> dict[str, Callable[..., None]]:
    """The receivers ``plugin`` really defines: name -> bound method (callable, not ``None``)."""
    found: dict[str, Callable[..., None]] = {}
    for name in RECEIVERS:
        receiver = getattr(plugin, name, None)
        if receiver is not None and callable(receiver):
            found[name] = receiver
    return found


def load_factory(spec: str) -> Callable[..., Any]:
    """Import ``"module:callable"`` (the callable may be a dotted path) and return it."""
    module_name, sep, attr_path = spec.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not sep or not module_name or not attr_path:
        raise PluginError(
            f"plugin factory {spec!r} is not of the form 'module:callable' "
            "(for example 'mypkg.telemetry:make_plugin')"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(
            f"plugin factory {spec!r}: cannot import module {module_name!r} ({exc}); "
            "check that the package is installed in this interpreter and on sys.path"
        ) from exc
    except Exception as exc:
        raise PluginError(
            f"plugin factory {spec!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PluginError(
                f"plugin factory {spec!r}: module {module_name!r} has no attribute "
                f"{attr_path!r}; check the name after the ':'"
            ) from exc
    if not callable(obj):
        raise PluginError(
            f"plugin factory {spec!r} is a {type(obj).__name__}, not a callable; name a "
            "class or a function that returns a plugin"
        )
    return obj


def _entry_points(group: str) -> list[Any]:
    """Entry points of ``group``, first one per name, on every importlib.metadata API."""
    try:
        found = metadata.entry_points()
        # Python 3.10+ returns a selectable collection; 3.9 a dict of group -> list.
        if hasattr(found, "select"):
            candidates = list(found.select(group=group))
        else:
            candidates = list(found.get(group, ()))
    except Exception as exc:
        log.warning("twinweave: could not list the %s entry points: %s", group, exc)
        return []
    unique: dict[str, Any] = {}
    for entry_point in candidates:
        unique.setdefault(entry_point.name, entry_point)
    return list(unique.values())


def resolve(name: str | None, factory: str | None) -> Callable[..., Any]:
    """The factory for a ``<plugin>``: ``factory`` if given, else the short ``name``.

    A short name is looked up in :data:`BUILTIN` first, then in the entry points
    of :data:`ENTRY_POINT_GROUP`.
    """
    if factory:
        return load_factory(factory)
    if not name:
        raise PluginError(
            'a <plugin> needs name="..." (a built-in or installed plugin) or '
            'factory="module:callable"'
        )
    if name in BUILTIN:
        spec = BUILTIN[name]
        try:
            return load_factory(spec)
        except PluginError as exc:
            cause = exc.__cause__
            module_name = spec.partition(":")[0]
            if isinstance(cause, ModuleNotFoundError) and cause.name == module_name:
                raise PluginError(
                    f"built-in plugin {name!r} is not available yet in this version of "
                    "twinweave; remove it from the pointcut file or upgrade twinweave"
                ) from exc
            raise
    entry_points = _entry_points(ENTRY_POINT_GROUP)
    for entry_point in entry_points:
        if entry_point.name == name:
            try:
                loaded = entry_point.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {name!r} (entry point {entry_point.value!r} in group "
                    f"{ENTRY_POINT_GROUP!r}) cannot be loaded: {type(exc).__name__}: {exc}; "
                    "reinstall the package that provides it"
                ) from exc
            if not callable(loaded):
                raise PluginError(
                    f"plugin {name!r} (entry point {entry_point.value!r}) is not callable"
                )
            return loaded
    known = sorted(set(BUILTIN) | {entry_point.name for entry_point in entry_points})
    raise PluginError(
        f"unknown plugin {name!r}; known plugins: {', '.join(known)}. Install the package "
        f'that provides it or use factory="module:callable"'
    )


def _label(spec: Any) -> str:
    name = getattr(spec, "name", None)
    factory = getattr(spec, "factory", None)
    text = f"plugin {name!r}" if name else f"plugin factory {factory!r}"
    line = getattr(spec, "line", None)
    return f"{text} (pointcut file line {line})" if line else text


def _build_one(spec: Any) -> Any:
    factory = resolve(getattr(spec, "name", None), getattr(spec, "factory", None))
    options = dict(getattr(spec, "options", None) or {})
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise PluginError(f"options {sorted(options)} do not fit its factory: {exc}") from exc
    except ValueError:
        pass  # no signature to check (some builtins): let the call decide
    try:
        plugin = factory(**options)
    except Exception as exc:
        raise PluginError(f"its factory raised {type(exc).__name__}: {exc}") from exc
    if plugin is None:
        raise PluginError("its factory returned None instead of a plugin object")
    return plugin


def build_plugins(
    specs: Sequence[PluginSpecLike], extra_entry_points: bool = False
) -> tuple[list[Any], list[str]]:
    """Build the plugins named in the pointcut file: ``(plugins, error messages)``.

    Each spec's factory is called with the spec's options as keyword arguments. A
    plugin that cannot be found, imported or built is skipped: the reason is logged
    at ERROR and returned, and the program goes on without it. With
    ``extra_entry_points``, every plugin installed in :data:`ENTRY_POINT_GROUP`
    that no spec names is built too, without options (built-in names excepted:
    those run only when named).
    """
    plugins: list[Any] = []
    errors: list[str] = []
    all_specs: list[Any] = list(specs)
    if extra_entry_points:
        named = {getattr(spec, "name", None) for spec in all_specs}
        for entry_point in _entry_points(ENTRY_POINT_GROUP):
            if entry_point.name not in named and entry_point.name not in BUILTIN:
                all_specs.append(_EntryPointSpec(entry_point.name))
    for spec in all_specs:
        try:
            plugins.append(_build_one(spec))
        except Exception as exc:
            message = f"twinweave: {_label(spec)} is disabled: {exc}"
            log.error("%s", message)
            errors.append(message)
    return plugins, errors


@dataclass(frozen=True)
class _EntryPointSpec:
    name: str
    factory: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    line: int | None = None


_Receiver = tuple[str, Callable[..., None]]


def _discarding_append() -> Callable[[int], None]:
    """A C-level ``append`` that keeps nothing (for probes no timing plugin listens to)."""
    return deque(maxlen=0).append


class _Member:
    """One plugin of a :class:`PluginSet`, with its unique owner name and receivers."""

    __slots__ = ("accept_failed", "owner", "plugin", "receivers")

    def __init__(self, owner: str, plugin: Any) -> None:
        self.owner = owner
        self.plugin = plugin
        self.receivers = receivers(plugin)
        self.accept_failed = False

    def accepts(self, joinpoint: JoinPoint) -> bool:
        accepts = getattr(self.plugin, "accepts", None)
        if accepts is None:
            return True
        try:
            return bool(accepts(joinpoint))
        except Exception:
            if not self.accept_failed:
                self.accept_failed = True
                log.exception(
                    "twinweave: plugin %s: accepts() raised, so it gets no events of that "
                    "join point (nor of any other where accepts() raises)",
                    self.owner,
                )
            return False


class PluginSet:
    """The running plugins of one agent.

    Lifecycle: build it, :meth:`start` it, let the weaver call :meth:`probe_for`
    for each function it may weave, :meth:`stop` it at exit. Join points woven
    before :meth:`start` keep the receivers of plugins whose ``start`` failed
    (their errors stay isolated), so start first.
    """

    def __init__(
        self, plugins: Sequence[Any], dispatcher: Dispatcher | None = None, accelerate: bool = True
    ) -> None:
        self.dispatcher = dispatcher if dispatcher is not None else Dispatcher()
        # Whether timing-mode probes may be timed by the C accelerator (a recorder that
        # folds durations in C): woven code calls it on the bytecode backend, the C
        # callbacks (or their Python fallback) on the monitoring backend.
        self.accelerate = accelerate
        self._members: list[_Member] = []
        used: dict[str, int] = {}
        # stable: equal orders keep the pointcut file's order
        for plugin in sorted(plugins, key=lambda plugin: _order(plugin)):
            base = str(getattr(plugin, "name", None) or type(plugin).__name__)
            used[base] = used.get(base, 0) + 1
            owner = base if used[base] == 1 else f"{base}#{used[base]}"
            self._members.append(_Member(owner, plugin))
        self._probes: dict[JoinPoint, tuple[Probe, tuple[_Receiver, ...]]] = {}
        # Reentrant: a plugin's accepts() may import a module, which weaves it.
        self._probes_lock = threading.RLock()
        self._drainer = Drainer(self._drain_all)
        self._started = False
        self._stopped = False
        self._closed = False  # after the final drain: plugins get nothing more

    @property
    def plugins(self) -> list[Any]:
        """The plugins that are active (built, and started without error)."""
        return [member.plugin for member in self._members]

    @property
    def probes(self) -> list[Probe]:
        """Every probe handed out by :meth:`probe_for`."""
        return [entry[0] for entry in list(self._probes.values())]

    @property
    def draining(self) -> bool:
        """Whether the drain thread runs."""
        return self._drainer.running

    def probe_for(self, joinpoint: JoinPoint) -> Probe | None:
        """The probe for ``joinpoint``, or ``None`` when no plugin wants it (do not weave).

        Only plugins that define at least one receiver and accept the join point
        count. The probe is in steps mode when one of them has ``on_start`` or
        ``on_step``, else in timing mode. The same join point always gets the same
        probe, so its statistics stay together.
        """
        with self._probes_lock:
            known = self._probes.get(joinpoint)
            if known is not None:
                return known[0]
            starts: list[_Receiver] = []
            steps: list[_Receiver] = []
            raw: list[_Receiver] = []
            summaries: list[_Receiver] = []
            raw_only = False  # some plugin reads raw durations and cannot take summaries
            for member in list(self._members):
                if not member.receivers or not member.accepts(joinpoint):
                    continue
                for kind, into in (("on_start", starts), ("on_step", steps)):
                    if kind in member.receivers:
                        into.append((member.owner, member.receivers[kind]))
                if "on_summary" in member.receivers:
                    summaries.append((member.owner, member.receivers["on_summary"]))
                elif "on_timings" in member.receivers:
                    raw_only = True
                if "on_timings" in member.receivers:
                    raw.append((member.owner, member.receivers["on_timings"]))
            if not (starts or steps or raw or summaries):
                return None
            recorder = None
            accelerated = self.accelerate and speedups.available()
            if summaries and not (starts or steps or raw_only) and accelerated:
                recorder = speedups.recorder()
                raw = []
            probe = Probe(joinpoint, self.dispatcher, starts, steps, recorder)
            if not (raw or summaries):
                # Steps mode with nobody to read durations: keep the lists from growing.
                probe.ok_append = _discarding_append()
                probe.failed_append = _discarding_append()
            elif raw:
                # On the Python path a plugin with both receivers gets the raw lists.
                readers = {owner for owner, _ in raw}
                summaries = [r for r in summaries if r[0] not in readers]
            self._probes[joinpoint] = (probe, tuple(raw), tuple(summaries))
            return probe

    def start(self, context: AgentContext) -> None:
        """Start every plugin; one whose ``start`` raises is logged and disabled."""
        if self._started:
            return
        self._started = True
        for member in list(self._members):
            start = getattr(member.plugin, "start", None)
            if start is None:
                continue
            done: list[PluginError | None] = []
            self.dispatcher.call(member.owner, _then_mark(start, done), context)
            if not done or done[0] is not None:
                why = f"{done[0]}" if done else "see the error above"
                log.error(
                    "twinweave: plugin %s failed to start (%s); it is disabled and the "
                    "program goes on without it",
                    member.owner,
                    why,
                )
                self._members.remove(member)
        if any(
            "on_timings" in member.receivers or "on_summary" in member.receivers
            for member in self._members
        ):
            self._drainer.start()

    def drain(self) -> int:
        """Drain every probe once and deliver ``on_timings``; the number of samples moved."""
        return self._drainer.drain() or 0

    def stop(self) -> None:
        """Final drain, then stop every plugin (in reverse order); never raises.

        After this, plugins receive no more events. Call it at exit (the agent
        registers it with ``atexit``); without a :meth:`start` before, it does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        if not self._started:  # nothing was started, so nothing is stopped or reported
            self._closed = True
            return
        self._drainer.stop(STOP_TIMEOUT)
        if self._drainer.drain(timeout=STOP_TIMEOUT) is None:
            log.warning(
                "twinweave: final drain skipped: a timing plugin is still busy after %.1f s",
                STOP_TIMEOUT,
            )
        self._closed = True
        for probe in self.probes:
            probe.start_receivers = ()
            probe.step_receivers = ()
        for member in reversed(self._members):
            stop = getattr(member.plugin, "stop", None)
            if stop is not None:
                self.dispatcher.call(member.owner, stop)

    def _drain_all(self) -> int:
        if self._closed:
            return 0
        moved = 0
        call = self.dispatcher.call
        for probe, raw, summaries in list(self._probes.values()):
            joinpoint = probe.joinpoint
            if probe.recorder is not None:
                summary = speedups.summary(probe.recorder)
                if summary is None:
                    continue
                moved += summary.ok + summary.failed
                for owner, receiver in summaries:
                    call(owner, receiver, joinpoint, summary)
                continue
            if not (raw or summaries):
                continue
            ok, failed = probe.drain()
            if not ok and not failed:
                continue
            moved += len(ok) + len(failed)
            for owner, receiver in raw:
                call(owner, receiver, joinpoint, ok, failed)
            if summaries:
                summary = speedups.summarize(ok, failed)
                for owner, receiver in summaries:
                    call(owner, receiver, joinpoint, summary)
        return moved


def _order(plugin: Any) -> int:
    order = getattr(plugin, "order", 0)
    return order if isinstance(order, int) and not isinstance(order, bool) else 0


def _then_mark(function: Callable[..., Any], done: list[PluginError | None]) -> Callable[..., None]:
    """``function`` wrapped to record in ``done`` how it ended: ``None`` when it returned,
    the :class:`PluginError` it raised (a message for the user, no traceback), or nothing
    when it raised anything else (the dispatcher logs that with its traceback)."""

    def run(*args: Any) -> None:
        try:
            function(*args)
        except PluginError as exc:
            done.append(exc)
        else:
            done.append(None)

    return run
