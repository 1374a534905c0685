"""Tests for agent.plugins (the plugin API) and agent.drain (the drain thread)."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import agent.plugins as plugins_module
from agent.drain import THREAD_NAME, Drainer
from agent.events import JoinPoint, StartEvent, Step
from agent.plugins import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    AgentContext,
    Plugin,
    PluginError,
    PluginSet,
    build_plugins,
    load_factory,
    receivers,
    resolve,
)
from agent.plugins.timing import TimingPlugin

CONTEXT = AgentContext(python="3.11.7", backend="bytecode", report=None)
FLOW = JoinPoint("workflows", "workflow", "shop.flows.OrderWorkflow.on_message")
SERVICE = JoinPoint("services", "service", "shop.services.Pay.do_service")

FAKE_MODULE = "twinweave_fake_plugins"
FAKE_SOURCE = """
from agent.plugins import Plugin

class Recorder(Plugin):
    name = "recorder"

    def __init__(self, label="default"):
        self.label = label
        self.steps = []

    def on_step(self, step):
        self.steps.append(step)

def make_recorder(label="made"):
    return Recorder(label)

class Nested:
    class Inner:
        @staticmethod
        def make():
            return Recorder("nested")

def explode(**options):
    raise RuntimeError("no database configured")

def make_none():
    return None

NOT_CALLABLE = 42
"""


@dataclass
class Spec:
    """Stands in for agent.pointcuts' plugin spec."""

    name: str | None = None
    factory: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    line: int | None = None


@pytest.fixture
def fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / f"{FAKE_MODULE}.py").write_text(textwrap.dedent(FAKE_SOURCE))
    (tmp_path / "twinweave_broken_plugin.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield FAKE_MODULE
    for name in (FAKE_MODULE, "twinweave_broken_plugin"):
        sys.modules.pop(name, None)


class FakeMetadata:
    """Replaces importlib.metadata in agent.plugins with fixed entry points."""

    def __init__(self, entry_points: list[metadata.EntryPoint], old_api: bool) -> None:
        self._entry_points = entry_points
        self._old_api = old_api

    def entry_points(self) -> Any:
        if self._old_api:  # Python 3.9: a dict of group name -> entry points
            return {ENTRY_POINT_GROUP: self._entry_points, "other": []}
        return _Selectable(self._entry_points)


class _Selectable:
    def __init__(self, entry_points: list[metadata.EntryPoint]) -> None:
        self._entry_points = entry_points

    def select(self, group: str) -> list[metadata.EntryPoint]:
        return [ep for ep in self._entry_points if ep.group == group]


def install_entry_points(monkeypatch: pytest.MonkeyPatch, old_api: bool, **values: str) -> None:
    entry_points = [metadata.EntryPoint(n, v, ENTRY_POINT_GROUP) for n, v in values.items()]
    monkeypatch.setattr(plugins_module, "metadata", FakeMetadata(entry_points, old_api))


class StepRecorder(Plugin):
    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.starts: list[StartEvent] = []
        self.steps: list[Step] = []

    def on_start(self, event: StartEvent) -> None:
        self.starts.append(event)

    def on_step(self, step: Step) -> None:
        self.steps.append(step)


class TimingRecorder(Plugin):
    def __init__(self, name: str = "timings", only: str | None = None) -> None:
        self.name = name
        self.only = only
        self.batches: list[tuple[JoinPoint, list[int], list[int]]] = []
        self.stopped_after: int | None = None

    def accepts(self, joinpoint: JoinPoint) -> bool:
        return self.only is None or joinpoint.type == self.only

    def on_timings(self, joinpoint: JoinPoint, ok: list[int], failed: list[int]) -> None:
        self.batches.append((joinpoint, list(ok), list(failed)))

    def stop(self) -> None:
        self.stopped_after = len(self.batches)


def call(probe: Any, times: int = 1, fail: bool = False) -> None:
    """Do what woven code does in steps mode."""
    for _ in range(times):
        token = probe.enter(None)
        if fail:
            probe.fail(token, ValueError("boom"))
        else:
            probe.leave(token)


# -- receivers ------------------------------------------------------------------------


def test_receivers_lists_only_defined_callable_receivers() -> None:
    class OnlySteps(Plugin):
        def on_step(self, step: Step) -> None:
            pass

    class Disabled(OnlySteps):
        on_step = None  # type: ignore[assignment]
        on_start = "not callable"

    class Duck:
        def on_timings(self, joinpoint: JoinPoint, ok: list[int], failed: list[int]) -> None:
            pass

    assert set(receivers(OnlySteps())) == {"on_step"}
    assert receivers(Disabled()) == {}
    assert receivers(Plugin()) == {}
    duck = Duck()
    assert receivers(duck) == {"on_timings": duck.on_timings}


# -- resolve and load_factory ------------------------------------------------------------


def test_resolve_builtin_timing() -> None:
    assert resolve("timing", None) is TimingPlugin


def test_resolve_builtin_failover() -> None:
    from agent.plugins.failover import FailoverPlugin

    assert resolve("failover", None) is FailoverPlugin


def test_builtin_missing_from_the_installation_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import plugins

    monkeypatch.setitem(plugins.BUILTIN, "future", "agent.plugins.twinweave_future:Future")
    with pytest.raises(PluginError, match="'future' is not available yet"):
        resolve("future", None)


@pytest.mark.parametrize("old_api", [False, True], ids=["select-api", "dict-api-3.9"])
def test_resolve_entry_point(
    monkeypatch: pytest.MonkeyPatch, fake_module: str, old_api: bool
) -> None:
    install_entry_points(monkeypatch, old_api, recorder=f"{fake_module}:make_recorder")
    factory = resolve("recorder", None)
    assert factory().label == "made"


def test_resolve_unknown_name_lists_known_names(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(monkeypatch, False, shiny="nowhere:make")
    with pytest.raises(PluginError) as caught:
        resolve("nope", None)
    message = str(caught.value)
    assert "unknown plugin 'nope'" in message
    for known in [*BUILTIN, "shiny"]:
        assert known in message


def test_resolve_entry_point_that_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(monkeypatch, False, ghost="twinweave_no_such_module:make")
    with pytest.raises(PluginError, match=r"'ghost'.*cannot be loaded"):
        resolve("ghost", None)


def test_resolve_factory_wins_and_nothing_is_an_error(fake_module: str) -> None:
    assert resolve("timing", f"{fake_module}:make_recorder")().label == "made"
    with pytest.raises(PluginError, match="needs name="):
        resolve(None, None)


def test_load_factory_dotted_attribute(fake_module: str) -> None:
    assert load_factory(f"{fake_module}:Nested.Inner.make")().label == "nested"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_colon_here", "not of the form 'module:callable'"),
        (":make", "not of the form"),
        ("twinweave_no_such_module:make", "cannot import module 'twinweave_no_such_module'"),
        ("twinweave_fake_plugins:missing", "has no attribute 'missing'"),
        ("twinweave_fake_plugins:Nested.Missing", "has no attribute 'Nested.Missing'"),
        ("twinweave_fake_plugins:NOT_CALLABLE", "not a callable"),
        ("twinweave_broken_plugin:make", "raised ZeroDivisionError"),
    ],
)
def test_load_factory_errors_name_the_spec(fake_module: str, spec: str, expected: str) -> None:
    with pytest.raises(PluginError) as caught:
        load_factory(spec)
    assert repr(spec) in str(caught.value)
    assert expected in str(caught.value)


# -- build_plugins ---------------------------------------------------------------------


def test_build_plugins_passes_options(fake_module: str) -> None:
    specs = [Spec(factory=f"{fake_module}:Recorder", options={"label": "x"}), Spec(name="timing")]
    built, errors = build_plugins(specs)
    assert errors == []
    assert [type(p).__name__ for p in built] == ["Recorder", "TimingPlugin"]
    assert built[0].label == "x"


def test_build_plugins_skips_broken_factories_with_clear_errors(
    fake_module: str, caplog: pytest.LogCaptureFixture
) -> None:
    specs = [
        Spec(factory="twinweave_no_such_module:make", line=12),
        Spec(factory=f"{fake_module}:explode", line=13),
        Spec(factory=f"{fake_module}:make_none"),
        Spec(factory=f"{fake_module}:Recorder", options={"colour": "red"}),
        Spec(name="no-such-plugin", line=14),
        Spec(name="timing", options={"report": "stats.json"}),
    ]
    with caplog.at_level(logging.ERROR, logger="agent.plugins"):
        built, errors = build_plugins(specs)
    assert [type(p).__name__ for p in built] == ["TimingPlugin"]
    assert len(errors) == 5
    assert "'twinweave_no_such_module:make' (pointcut file line 12)" in errors[0]
    assert "cannot import module" in errors[0]
    assert "RuntimeError: no database configured" in errors[1]
    assert "returned None" in errors[2]
    assert "colour" in errors[3]
    assert "plugin 'no-such-plugin' (pointcut file line 14)" in errors[4]
    assert "timing" in errors[4]  # the known names are listed
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == errors


def test_build_plugins_extra_entry_points(
    monkeypatch: pytest.MonkeyPatch, fake_module: str
) -> None:
    install_entry_points(
        monkeypatch, False, recorder=f"{fake_module}:Recorder", timing="ignored:ignored"
    )
    built, errors = build_plugins([Spec(name="timing")], extra_entry_points=True)
    assert errors == []
    assert [type(p).__name__ for p in built] == ["TimingPlugin", "Recorder"]
    assert [type(p).__name__ for p in build_plugins([])[0]] == []
    discovered, _ = build_plugins([], extra_entry_points=True)
    assert [type(p).__name__ for p in discovered] == ["Recorder"]  # built-ins only when named


# -- PluginSet: probes and events ---------------------------------------------------------


def test_probe_for_returns_none_when_no_plugin_wants_the_joinpoint() -> None:
    only_workflows = TimingRecorder(only="workflow")
    plugin_set = PluginSet([only_workflows, Plugin()], dispatcher=None)
    assert plugin_set.probe_for(SERVICE) is None
    assert plugin_set.probe_for(FLOW) is not None
    no_receivers = PluginSet([Plugin()])  # nothing to weave for
    assert no_receivers.probe_for(FLOW) is None


def test_mode_follows_receivers() -> None:
    timing_only = PluginSet([TimingRecorder()])
    probe = timing_only.probe_for(FLOW)
    assert probe is not None and not probe.steps_mode
    mixed = PluginSet([TimingRecorder(), StepRecorder()])
    probe = mixed.probe_for(FLOW)
    assert probe is not None and probe.steps_mode
    assert [owner for owner, _ in probe.step_receivers] == ["recorder"]
    assert [owner for owner, _ in probe.start_receivers] == ["recorder"]


def test_same_joinpoint_same_probe_and_probes_are_remembered() -> None:
    plugin_set = PluginSet([TimingRecorder()])
    first = plugin_set.probe_for(FLOW)
    assert plugin_set.probe_for(FLOW) is first
    assert plugin_set.probes == [first]


def test_failing_receiver_is_isolated_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    class Bad(Plugin):
        name = "bad"

        def on_step(self, step: Step) -> None:
            raise KeyError("oops")

    good = StepRecorder("good")
    plugin_set = PluginSet([Bad(), good])
    probe = plugin_set.probe_for(FLOW)
    with caplog.at_level(logging.ERROR):
        call(probe, times=3)
    assert len(good.steps) == 3
    assert [s.name for s in good.steps] == [FLOW.name] * 3
    bad_logs = [r for r in caplog.records if "plugin bad raised" in r.getMessage()]
    assert len(bad_logs) == 1
    assert plugin_set.dispatcher.errors == {"bad": 3}


def test_receiver_calling_woven_code_is_not_profiled() -> None:
    seen: list[Any] = []

    class Reentrant(StepRecorder):
        def on_step(self, step: Step) -> None:
            super().on_step(step)
            seen.append(probe.enter(None))

    plugin = Reentrant()
    plugin_set = PluginSet([plugin])
    probe = plugin_set.probe_for(FLOW)
    call(probe, times=2)
    assert seen == [None, None]
    assert len(plugin.steps) == 2


def test_accepts_that_raises_is_logged_and_treated_as_no(caplog: pytest.LogCaptureFixture) -> None:
    class Picky(TimingRecorder):
        def accepts(self, joinpoint: JoinPoint) -> bool:
            raise AttributeError("typo")

    plugin_set = PluginSet([Picky()])
    with caplog.at_level(logging.ERROR):
        assert plugin_set.probe_for(FLOW) is None
        assert plugin_set.probe_for(SERVICE) is None
    assert len([r for r in caplog.records if "accepts() raised" in r.getMessage()]) == 1


def test_steps_without_timing_plugins_do_not_keep_durations() -> None:
    plugin_set = PluginSet([StepRecorder()])
    probe = plugin_set.probe_for(FLOW)
    call(probe, times=5)
    assert probe.ok == [] and probe.failed == []


def test_drain_delivers_to_accepting_timing_plugins() -> None:
    everything = TimingRecorder("everything")
    workflows = TimingRecorder("workflows", only="workflow")
    steps = StepRecorder()
    plugin_set = PluginSet([everything, workflows, steps])
    flow = plugin_set.probe_for(FLOW)
    service = plugin_set.probe_for(SERVICE)
    call(flow, times=2)
    call(flow, fail=True)
    service.ok_append(1234)  # what timing-mode woven code does
    assert plugin_set.drain() == 4
    assert plugin_set.drain() == 0
    by_name = {jp.name: (len(ok), len(failed)) for jp, ok, failed in everything.batches}
    assert by_name == {FLOW.name: (2, 1), SERVICE.name: (1, 0)}
    assert [(jp, len(ok), len(failed)) for jp, ok, failed in workflows.batches] == [(FLOW, 2, 1)]
    assert [s.failed for s in steps.steps] == [None, None, "ValueError"]


def test_start_failure_disables_plugin_and_stop_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class WontStart(StepRecorder):
        def start(self, context: AgentContext) -> None:
            raise OSError("port in use")

    class WontStop(TimingRecorder):
        def stop(self) -> None:
            raise RuntimeError("stuck")

    good = TimingRecorder("good")
    plugin_set = PluginSet([WontStart("wontstart"), WontStop("wontstop"), good])
    with caplog.at_level(logging.ERROR):
        plugin_set.start(CONTEXT)
        assert [p.name for p in plugin_set.plugins] == ["wontstop", "good"]
        plugin_set.stop()
    assert any("wontstart failed to start" in r.getMessage() for r in caplog.records)
    assert good.stopped_after == 0
    assert plugin_set.dispatcher.errors == {"wontstart": 1, "wontstop": 1}


def test_duplicate_plugin_names_get_distinct_owners() -> None:
    plugin_set = PluginSet([StepRecorder("same"), StepRecorder("same")])
    probe = plugin_set.probe_for(FLOW)
    assert [owner for owner, _ in probe.step_receivers] == ["same", "same#2"]


def test_drain_thread_runs_only_for_timing_plugins_and_stop_drains_last() -> None:
    steps_only = PluginSet([StepRecorder()])
    steps_only.start(CONTEXT)
    assert not steps_only.draining
    steps_only.stop()

    timings = TimingRecorder()
    plugin_set = PluginSet([timings, StepRecorder()])
    plugin_set.start(CONTEXT)
    try:
        assert plugin_set.draining
        assert THREAD_NAME in {t.name for t in threading.enumerate()}
        probe = plugin_set.probe_for(FLOW)
        call(probe, times=3)
    finally:
        plugin_set.stop()
    assert not plugin_set.draining
    assert sum(len(ok) for _, ok, _ in timings.batches) == 3
    assert timings.stopped_after == len(timings.batches)
    call(probe)  # after stop: no more events, no errors
    assert plugin_set.drain() == 0
    assert timings.stopped_after == len(timings.batches)


# -- Drainer ------------------------------------------------------------------------------


def test_drainer_interval_shrinks_while_busy_and_recovers() -> None:
    drainer = Drainer(lambda: 0, interval=0.5, min_interval=0.05, busy_samples=100_000)
    interval = drainer.interval
    seen = []
    for moved in [500_000] * 6 + [10] * 6:
        interval = drainer.next_interval(interval, moved)
        seen.append(interval)
    assert seen[:6] == [0.25, 0.125, 0.0625, 0.05, 0.05, 0.05]
    assert seen[-1] == 0.5 and max(seen) == 0.5
    assert drainer.next_interval(0.1, None) == 0.2  # lock busy: not a busy batch


def test_drainer_thread_drains_periodically_and_stops() -> None:
    calls = threading.Event()
    seen: list[int] = []

    def target() -> int:
        seen.append(1)
        if len(seen) >= 3:
            calls.set()
        return 0

    drainer = Drainer(target, interval=0.01)
    drainer.start()
    try:
        assert drainer.running
        assert calls.wait(10)
    finally:
        assert drainer.stop(timeout=5)
    assert not drainer.running


def test_drainer_survives_a_failing_target(caplog: pytest.LogCaptureFixture) -> None:
    def target() -> int:
        raise RuntimeError("bad plugin set")

    drainer = Drainer(target)
    with caplog.at_level(logging.ERROR):
        assert drainer.drain() == 0
        assert drainer.drain() == 0
    assert len([r for r in caplog.records if "draining timings failed" in r.getMessage()]) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_drainer_restarts_in_forked_child_even_if_lock_was_held() -> None:
    inside, release = threading.Event(), threading.Event()
    blocked = []

    def target() -> int:
        if not blocked:  # the first drain (in the parent's thread) holds the lock
            blocked.append(True)
            inside.set()
            release.wait(10)
        return 0

    drainer = Drainer(target, interval=0.01)
    drainer.start()
    assert inside.wait(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        status = 1
        try:
            ok = drainer.running and drainer.drain(timeout=2) == 0
            names = {t.name for t in threading.enumerate()}
            status = 0 if ok and THREAD_NAME in names else 1
        finally:
            os._exit(status)
    release.set()
    _, status = os.waitpid(pid, 0)
    assert drainer.stop(timeout=5)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_docstring_example_plugin_works(caplog: pytest.LogCaptureFixture) -> None:
    doc = plugins_module.__doc__ or ""
    example = doc.split("``mypkg/slow.py``::", 1)[1].split("Name it in the pointcut file", 1)[0]
    namespace: dict[str, Any] = {"__name__": "mypkg.slow"}
    exec(textwrap.dedent(example), namespace)
    plugin = namespace["SlowCalls"](threshold_ms="0")
    plugin_set = PluginSet([plugin])
    assert plugin_set.probe_for(SERVICE) is None
    probe = plugin_set.probe_for(FLOW)
    with caplog.at_level(logging.INFO, logger="mypkg.slow"):
        plugin_set.start(CONTEXT)
        call(probe)
        plugin_set.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "mypkg.slow"]
    assert messages[0] == "watching for calls over 0 ns (backend bytecode)"
    assert messages[1].startswith(f"{FLOW.name} took ")


def test_stop_without_start_does_nothing() -> None:
    timings = TimingRecorder()
    plugin_set = PluginSet([timings])
    call(plugin_set.probe_for(FLOW))
    plugin_set.stop()
    assert timings.batches == [] and timings.stopped_after is None


def test_the_failover_plugin_takes_a_refused_record_as_the_node_stepping_down(caplog) -> None:
    # Found by the fault campaign (python -m benchmarks.chaos, seed 3003, etcd): SIGTERM
    # reached a master between the plugin's is_master() check and its write; the write's
    # NotMasterError escaped as a plugin failure (a traceback, the plugin isolated).
    import cluster
    from agent.plugins.failover import FailoverPlugin
    from cache import NotMasterError

    class SteppingDown:
        hub = None
        node_id = "a"
        epoch = 3

        def is_master(self) -> bool:
            return True

    class RefusingStore:
        def set(self, key: str, value: object) -> None:
            raise NotMasterError("this node is not the master any more")

        def delete(self, key: str, wait: bool = True) -> None:
            raise NotMasterError("this node is not the master any more")

    plugin = FailoverPlugin()
    plugin._cache = RefusingStore()
    jp = JoinPoint("flows", "workflow", "app.Flow.on_message", "msg")
    cluster.install(SteppingDown())  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.INFO, logger="agent.plugins.failover"):
            plugin.on_start(StartEvent(jp, "m1", 1, 1, 0))
            plugin.on_step(Step("flows", "workflow", jp.name, "m1", 0, 5, None, 1, 0))
    finally:
        cluster.install(None)
    refused = [r for r in caplog.records if "in-flight record not written" in r.getMessage()]
    assert len(refused) == 2 and all(r.levelno == logging.INFO for r in refused)
