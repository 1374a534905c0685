"""The agent: one per process, tying the pointcut file, the plugins and a weaving backend together.

Owns the agent's life cycle: build the plugins, choose the backend, install the
import hook, weave what is already loaded, and at exit stop the plugins (which
writes the timing report) and say which aspects matched nothing. It owns the
single-agent guarantee too: the bootstrap and the site hook both call
:func:`start`, and the second caller gets the running agent. It does not parse
the pointcut file (``agent.pointcuts``), rewrite code (``agent.weaving``) or
define plugins (``agent.plugins``).
"""

from __future__ import annotations

import atexit
import logging
import os
import platform
import threading
from collections.abc import Sequence
from types import CodeType
from typing import TYPE_CHECKING

from agent import importer, periodic
from agent.events import Dispatcher, JoinPoint, Probe, code_kind, parameters
from agent.plugins import AgentContext, PluginSet, build_plugins
from agent.pointcuts import AgentConfig
from agent.weaving import codecache, env
from agent.weaving.rewrite import Apply, is_join_point, weave_tree

if TYPE_CHECKING:
    from agent.weaving.monitoring import MonitoringBackend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "bytecode", "monitoring")
# Never woven: the agent itself and what it runs on (a plugin must not profile itself).
# The libraries of the built-in plugins too: a scrape or an export is the agent's own work.
_OWN = (
    "agent",
    "bytecode",
    "cluster",
    "cache",
    "diskcache",
    "zeroconf",
    "prometheus_client",
    "opentelemetry",
)


INTERVAL_VARIABLE = "AGENT_REPORT_INTERVAL"


class AgentError(RuntimeError):
    """The agent cannot start as asked; the message says what to change."""


def parse_interval(text: str | None, source: str) -> float | None:
    """:func:`agent.periodic.parse_interval`, with :class:`AgentError` for bad text."""
    try:
        return periodic.parse_interval(text, source)
    except ValueError as exc:
        raise AgentError(str(exc)) from None


def _own(module: str) -> bool:
    return module.split(".", 1)[0] in _OWN


class Agent:
    """A running agent. Use :func:`start` rather than building one directly."""

    def __init__(
        self,
        config: AgentConfig,
        backend: str = "auto",
        report: str | None = None,
        extra_plugins: Sequence[object] = (),
        report_interval: float | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise AgentError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "monitoring" and not env.HAS_MONITORING:
            raise AgentError(
                "the monitoring backend needs Python 3.12 or newer (sys.monitoring); "
                "use --backend bytecode"
            )
        if backend in ("auto", "bytecode"):
            env.check_supported()
        # auto: the benchmarks (benchmarks/) show the bytecode backend is the cheaper one.
        self.backend = "bytecode" if backend == "auto" else backend
        self.config = config
        self.report = report
        self.report_interval = (
            report_interval
            if report_interval is not None
            else parse_interval(os.environ.get(INTERVAL_VARIABLE), f"${INTERVAL_VARIABLE}")
        )
        plugins, self.plugin_errors = build_plugins(config.plugins)
        self.plugins = PluginSet(list(plugins) + list(extra_plugins), Dispatcher())
        self._probes: dict[tuple[str, str], Probe] = {}
        self._matched: dict[str, int] = {aspect.name: 0 for aspect in config.aspects}
        # join points an aspect matched that no plugin receives events for (not woven)
        self._unheard: dict[str, set[str]] = {aspect.name: set() for aspect in config.aspects}
        self._lock = threading.Lock()
        self._finder: importer.WeavingFinder | None = None
        self._monitor: MonitoringBackend | None = None
        self._apply: Apply | None = None  # None: the bytecode backend's weave_code
        self.code_cache: codecache.CodeCache | None = None  # $AGENT_CODE_CACHE, bytecode only
        self._stopped = False

    # -- matching -------------------------------------------------------------------------

    def probe_for(self, code: CodeType, qualname: str, modules: Sequence[str]) -> Probe | None:
        """The probe for one function, or None when no aspect (or no plugin) wants it."""
        names = [f"{module}.{qualname}" for module in modules]
        aspects = self.config.match(names, parameters(code))
        if not aspects:
            return None
        aspect = aspects[0]
        if len(aspects) > 1:
            log.debug(
                "%s matches aspects %s; %s (first in the file) applies",
                names[0],
                ", ".join(a.name for a in aspects),
                aspect.name,
            )
        key = (aspect.name, names[0])
        with self._lock:
            probe = self._probes.get(key)
            if probe is None:
                joinpoint = JoinPoint(
                    aspect.name, aspect.type, names[0], aspect.message_id, code_kind(code.co_flags)
                )
                probe = self.plugins.probe_for(joinpoint)
                if probe is None:
                    self._unheard.setdefault(aspect.name, set()).add(names[0])
                    return None
                self._probes[key] = probe
                self._matched[aspect.name] += 1
                log.debug("weaving %s (aspect %s)", names[0], aspect.name)
        return probe

    def may_match(self, module: str) -> bool:
        """Cheap pre-filter: could anything in ``module`` be woven?"""
        return not _own(module) and self.config.module_may_match(module)

    def weave_module(self, code: CodeType, modules: Sequence[str]) -> CodeType:
        """Weave a module's code object (every function defined in it, at any depth)."""
        if not any(self.may_match(m) for m in modules):
            return code
        return weave_tree(code, "", lambda c, q: self.probe_for(c, q, modules), self._apply)

    def weave_function(self, code: CodeType, qualname: str, modules: Sequence[str]) -> CodeType:
        """Weave one function's code object (and the functions nested in it)."""
        if not is_join_point(code):
            return code
        return weave_tree(code, qualname, lambda c, q: self.probe_for(c, q, modules), self._apply)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the plugins, install the import hook and weave what is already loaded."""
        self.plugins.start(
            AgentContext(
                python=platform.python_version(),
                backend=self.backend,
                report=self.report,
                report_interval=self.report_interval,
            )
        )
        if self.backend == "monitoring":
            from agent.weaving.monitoring import MonitoringBackend

            monitor = MonitoringBackend()
            monitor.start()
            self._monitor = monitor
            self._apply = monitor.register
        if self._apply is None:
            # Woven code of unchanged modules from earlier runs (agent.weaving.codecache);
            # the monitoring backend changes no code, so it has nothing to cache.
            self.code_cache = codecache.CodeCache.from_setting(self.probe_for)
        self._finder = importer.WeavingFinder(self.may_match, self.weave_module, self.code_cache)
        importer.install(self._finder)
        count = importer.weave_loaded(self.may_match, self.weave_function, _own)
        if count:
            log.info("wove %d functions of modules loaded before the agent", count)
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the plugins (final drain, reports) and warn about aspects that matched nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._finder is not None:
            importer.uninstall(self._finder)
        if self._monitor is not None:
            # Before the plugins' final drain: stopping records the generators that
            # ended without an event (gh-140373), and no event comes after it.
            self._monitor.stop()
        self.plugins.stop()
        for aspect in self.config.aspects:
            if self._matched.get(aspect.name):
                continue
            if self._unheard.get(aspect.name):
                log.warning(
                    "%s: aspect %r matched %d function(s), but no plugin receives its events, "
                    "so nothing was woven; add a plugin (e.g. timing)",
                    self.config.path,
                    aspect.name,
                    len(self._unheard[aspect.name]),
                )
            else:
                log.warning(
                    "%s: aspect %r matched no function (pointcut %s); check its names",
                    self.config.path,
                    aspect.name,
                    aspect.pointcut,
                )

    def joinpoints(self) -> list[JoinPoint]:
        """Every join point woven so far."""
        with self._lock:
            return [probe.joinpoint for probe in self._probes.values()]


_agent: Agent | None = None
_start_lock = threading.Lock()


def current() -> Agent | None:
    """The running agent of this process, if any."""
    return _agent


def start(
    config: AgentConfig,
    backend: str = "auto",
    report: str | None = None,
    extra_plugins: Sequence[object] = (),
    report_interval: float | None = None,
) -> Agent:
    """Start this process's agent, or return the one already running (woven once)."""
    global _agent
    with _start_lock:
        if _agent is not None:
            if config.path != _agent.config.path:
                log.warning(
                    "an agent with %s is already running; ignoring %s",
                    _agent.config.path,
                    config.path,
                )
            return _agent
        agent = Agent(config, backend, report, extra_plugins, report_interval)
        _agent = agent
    agent.start()
    return agent
