"""The ``sys.monitoring`` backend (PEP 669, 3.12+): report woven calls without rewriting code.

Owns turning interpreter events for the registered code objects into the same
probe calls that the bytecode backend (``agent.weaving.rewrite``) compiles into
woven code, with the same meaning: a call lasts from its start to its return or
to the exception that leaves it; a generator, coroutine or async generator
lasts from its first start to its exhaustion, its exception or its close
(``GeneratorExit`` is a normal exit), time spent suspended included; an
exception caught inside the function does not end the call. It does not decide
which functions match (``weave_tree``'s resolver does, then hands each matched
code object to :meth:`MonitoringBackend.register`), nor what probes do with
durations (``agent.events``). Importing it is harmless on Python 3.9 to 3.11;
:meth:`MonitoringBackend.start` says there that it needs 3.12.

Theory of operation. :meth:`~MonitoringBackend.start` claims a free tool id.
:meth:`~MonitoringBackend.register` enables ``PY_START`` and ``PY_RETURN`` as
*local* events of one code object, so no other code pays for them.
``PY_UNWIND`` cannot be local before 3.15 (gh-142186), so it is enabled for
the whole process and its callback first checks, with one lookup, that the
code is ours. Each start stores a token (the start time, or
:meth:`Probe.enter`'s result in steps mode) under the running frame, which
``sys._getframe(1)`` is inside a callback; the end event pops it again. Keying
by frame pairs every end with its own start across recursion, threads and
interleaved generators. The frame object itself is the key: holding it while
the call runs costs nothing, and it keeps the key from being reused by
another frame.

Where the C accelerator is built (``agent/_speedups.c``, 3.12+), the callbacks
are the methods of its ``Monitor`` (:func:`agent.speedups.monitor`): the
interpreter calls C directly, and no Python frame runs per event. They do what
the Python callbacks below do, with two shortcuts: an ordinary function's start
time goes on a per-thread C stack keyed by the running interpreter frame (no
frame object, no allocation), and a timing-mode probe with a C recorder
(``Probe.recorder``) gets its durations folded in C as on the bytecode path.
Generators, coroutines and steps mode keep their tokens in the same table of
frames as the Python callbacks, so the sweep below serves both. The Python
callbacks remain for interpreters without the extension (or
``TWINWEAVE_PURE_PYTHON=1``), and give the same events and statistics.

A generator can end without any event. Up to the fix of gh-140373, closing a
generator (``close()``, or dropping it) that is suspended at a ``yield``
outside any ``try`` block runs none of its code, so no ``PY_UNWIND`` comes
(seen on 3.13.0; 3.12 reports it). :func:`close_is_silent` tests this
interpreter once. :meth:`~MonitoringBackend.sweep` finds the generator frames
whose generator finished or is gone and records them as normal exits, so
their calls are counted and their frames freed. It runs whenever the table of
running calls doubles and at :meth:`~MonitoringBackend.stop`.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import sys
import threading
import time
import types
from types import CodeType, FrameType
from typing import Any, Callable

from agent import speedups
from agent.events import CO_SUSPENDING, Probe, message_param
from agent.weaving import env

log = logging.getLogger(__name__)

TOOL_NAME = "twinweave"

_mon: Any = sys.monitoring if env.HAS_MONITORING else None
_perf_ns = time.perf_counter_ns
_getframe = sys._getframe

_FRAME_OF = {
    types.GeneratorType: "gi_frame",
    types.CoroutineType: "cr_frame",
    types.AsyncGeneratorType: "ag_frame",
}
_SWEEP_MIN = 256
"""A generator starting with this many calls running sweeps first (next: twice the survivors)."""

_MISSING = object()


class MonitoringUnavailable(RuntimeError):
    """``sys.monitoring`` cannot be used here; the message says why and what to do instead."""


class _Target:
    """What the callbacks (Python or C) need about one registered code object.

    In timing mode a token is a start time on ``clock``: C ticks when the probe
    has a C recorder (durations go to ``recorder.add``), else
    ``perf_counter_ns`` (durations go to ``ok_append``/``failed_append``).
    """

    __slots__ = (
        "clock",
        "code",
        "failed_append",
        "ok_append",
        "param",
        "probe",
        "recorder",
        "steps",
        "suspendable",
    )

    def __init__(self, code: CodeType, probe: Probe) -> None:
        self.code = code
        self.probe = probe
        self.param = message_param(code, probe)
        self.steps = probe.steps_mode
        self.suspendable = bool(code.co_flags & CO_SUSPENDING)
        self.ok_append = probe.ok_append
        self.failed_append = probe.failed_append
        self.recorder = None if self.steps else probe.recorder
        self.clock: Callable[[], int] = _perf_ns if self.recorder is None else speedups.ticks

    def timed(self, duration: int, exc: BaseException | None = None) -> None:
        """A timing-mode call lasted ``duration`` (on ``clock``); ``exc`` left it, if any.

        ``GeneratorExit`` is how a generator is closed early, not a failure.
        """
        failed = exc is not None and not isinstance(exc, GeneratorExit)
        if self.recorder is not None:
            self.recorder.add(duration, failed)
        else:
            (self.failed_append if failed else self.ok_append)(duration)


def _claim_tool_id() -> int:
    """Take ``PROFILER_ID`` if free, else any free id; never one another tool holds."""
    ids = [_mon.PROFILER_ID] + [i for i in range(6) if i != _mon.PROFILER_ID]
    for tool_id in ids:
        if _mon.get_tool(tool_id) is not None:
            continue
        try:
            _mon.use_tool_id(tool_id, TOOL_NAME)
        except ValueError:  # taken by another thread since get_tool()
            continue
        return tool_id
    holders = ", ".join(f"{i}: {_mon.get_tool(i)!r}" for i in range(6))
    raise MonitoringUnavailable(
        f"every sys.monitoring tool id is in use ({holders}); stop one of those tools "
        "or run twinweave with --backend bytecode"
    )


def close_is_silent(tool_id: int) -> bool:
    """Whether closing a generator suspended outside any ``try`` reports no ``PY_UNWIND``.

    gh-140373: 3.13 made ``gen_close()``'s shortcut work (gh-111069), which
    skips throwing ``GeneratorExit`` into such a generator and with it the
    event; fixed by gh-140767 and its backports. Runs one tiny generator with
    ``tool_id``, which must be claimed and have no events or callbacks yet.
    """
    seen: list[bool] = []

    def suspended() -> Any:
        yield

    def on_unwind(code: CodeType, offset: int, exc: BaseException) -> None:
        if code is suspended.__code__:
            seen.append(True)

    events = _mon.events
    _mon.register_callback(tool_id, events.PY_UNWIND, on_unwind)
    _mon.set_events(tool_id, events.PY_UNWIND)
    try:
        gen = suspended()
        next(gen)
        gen.close()
    finally:
        _mon.set_events(tool_id, events.NO_EVENTS)
        _mon.register_callback(tool_id, events.PY_UNWIND, None)
    return not seen


class MonitoringBackend:
    """Reports calls of registered code objects to their probes through ``sys.monitoring``.

    Usage (the agent does this when run with ``--backend monitoring``)::

        backend = MonitoringBackend()
        backend.start()                                   # claims a tool id
        weave_tree(module_code, "", resolver, backend.register)
        ...
        backend.stop()                                    # gives it back

    Costs: with the C callbacks, a matched call of an ordinary function makes two
    C calls and allocates nothing (a generator or a steps-mode call also makes
    its frame object); without them, two Python callbacks and a frame object.
    A generator run on an interpreter where :func:`close_is_silent` also makes
    one callback per ``yield``. Every exception leaving any frame in the
    process makes one callback that does one lookup. Registering code is
    cheap; a sweep walks the garbage collector's objects once, and runs only
    when running calls pile up (see the module docstring).

    ``accelerated=False`` keeps the Python callbacks even where the C ones
    exist; :attr:`accelerated` says which ones a started backend uses.
    """

    def __init__(self, accelerated: bool = True) -> None:
        self.tool_id: int | None = None
        self.silent_close = False
        """Whether this interpreter closes some suspended generators without an event."""
        self._want_c = accelerated
        self._monitor: Any = None  # the C Monitor while started with it, else None
        self._targets: dict[int, _Target] = {}  # id(code) -> target; the target keeps code alive
        self._running: dict[FrameType, Any] = {}  # frame -> token of its call
        self._yielded: dict[FrameType, int] = {}  # frame -> time of its last yield
        self._events = 0
        self._sweep_at = _SWEEP_MIN
        self._sweeping = threading.Lock()
        self._failed = False

    @property
    def accelerated(self) -> bool:
        """Whether the callbacks running now are the C ones (False when stopped)."""
        return self._monitor is not None

    @property
    def monitor(self) -> Any:
        """The C ``Monitor`` in use (its event counters are read by tests), or None."""
        return self._monitor

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Claim a tool id, register the callbacks and enable the events of registered code.

        Raises :class:`MonitoringUnavailable` before Python 3.12 or when every
        tool id is taken.
        """
        if self.tool_id is not None:
            return
        if not env.HAS_MONITORING:
            raise MonitoringUnavailable(
                "the monitoring backend needs Python 3.12 or newer (sys.monitoring, PEP 669); "
                "use --backend bytecode"
            )
        tool_id = _claim_tool_id()
        try:
            self.silent_close = close_is_silent(tool_id)
            events = _mon.events
            self._events = events.PY_START | events.PY_RETURN
            if self.silent_close:
                self._events |= events.PY_YIELD
            if self._want_c:
                self._monitor = speedups.monitor(
                    self._running,
                    self._yielded,
                    _mon.DISABLE,
                    self._callback_failed,
                    self._sweep_if_idle,
                    self.silent_close,
                )
            if self._monitor is not None:
                self._monitor.sweep_at = self._sweep_at
                for target in self._targets.values():
                    self._monitor.add(target.code, target)
                callbacks = self._c_callbacks()
            else:
                callbacks = self._callbacks()
            for event, callback in callbacks.items():
                _mon.register_callback(tool_id, event, callback)
            _mon.set_events(tool_id, events.PY_UNWIND)
            self.tool_id = tool_id
            for target in self._targets.values():
                _mon.set_local_events(tool_id, target.code, self._events)
        except BaseException:
            self.tool_id = tool_id
            self.stop()
            raise
        log.debug(
            "sys.monitoring backend started with tool id %d (%s callbacks)",
            tool_id,
            "C" if self._monitor is not None else "Python",
        )

    def register(self, code: CodeType, probe: Probe) -> CodeType:
        """Report the calls of ``code`` to ``probe``; returns ``code`` itself (``rewrite.Apply``).

        A code object registered twice keeps its first probe. Code registered
        before :meth:`start` is enabled when it runs.
        """
        if id(code) not in self._targets:
            target = self._targets[id(code)] = _Target(code, probe)
            if self._monitor is not None:
                self._monitor.add(code, target)
            if self.tool_id is not None:
                _mon.set_local_events(self.tool_id, code, self._events)
        return code

    def stop(self) -> None:
        """Disable our events, record silently ended generators, give the tool id back.

        Idempotent. Only this backend's tool id is touched, so other tools'
        events and callbacks stay as they were. Calls still running are dropped:
        with no end event to come, they are never recorded.
        """
        tool_id = self.tool_id
        if tool_id is None:
            return
        events = _mon.events
        for target in self._targets.values():
            _mon.set_local_events(tool_id, target.code, events.NO_EVENTS)
        _mon.set_events(tool_id, events.NO_EVENTS)
        for event in (events.PY_START, events.PY_RETURN, events.PY_YIELD, events.PY_UNWIND):
            _mon.register_callback(tool_id, event, None)
        _mon.free_tool_id(tool_id)
        self.tool_id = None
        if self._monitor is not None:
            self._monitor.close()  # no event reaches it any more; its stacked calls are dropped
            self._monitor = None
        self.sweep()
        if self._running:
            log.debug("%d calls still running at stop are not recorded", len(self._running))
        self._running.clear()
        self._yielded.clear()

    @property
    def in_flight(self) -> int:
        """How many calls have started and not ended (running or suspended)."""
        monitor = self._monitor
        return len(self._running) + (monitor.stacked if monitor is not None else 0)

    # -- generators that end without an event ---------------------------------------------

    def sweep(self) -> int:
        """Record, as normal exits, generator calls that ended without an event; returns how many.

        A generator's frame is done when no live generator object runs it any
        more: the generator finished (its frame attribute is None) or was
        freed. One pass over the garbage collector's objects finds the owners
        of all suspended frames at once. The duration runs to the last yield,
        the last moment the call ran (in steps mode, to the sweep, until
        ``Probe.leave`` can take an end time).
        """
        with self._sweeping:
            return self._sweep()

    def _sweep(self) -> int:
        suspects = [frame for frame in list(self._running) if frame.f_code.co_flags & CO_SUSPENDING]
        owned = set()
        if suspects:
            for ref in gc.get_referrers(*suspects):
                attribute = _FRAME_OF.get(type(ref))
                if attribute is not None:
                    frame = getattr(ref, attribute)
                    if frame is not None:
                        owned.add(id(frame))
        now: dict[Callable[[], int], int] = {}  # clock -> its time now, read once
        count = 0
        for frame in suspects:
            if id(frame) in owned:
                continue
            token = self._running.pop(frame, _MISSING)
            end = self._yielded.pop(frame, None)
            target = self._targets.get(id(frame.f_code))
            if token is _MISSING or target is None:
                continue
            count += 1
            if target.steps:
                # Not from inside the generator: keep the message context of
                # whatever runs now out of it.
                contextvars.Context().run(target.probe.leave, token)
                continue
            if end is None:
                end = now.get(target.clock)
                if end is None:
                    end = now[target.clock] = target.clock()
            target.timed(end - token)
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._running))
        if self._monitor is not None:
            self._monitor.sweep_at = self._sweep_at
        if count:
            log.debug("recorded %d generator calls that ended without an event", count)
        return count

    def _sweep_if_idle(self) -> None:
        """The automatic sweep: skipped when another thread is already sweeping."""
        if self._sweeping.acquire(blocking=False):
            try:
                self._sweep()
            finally:
                self._sweeping.release()

    # -- callbacks --------------------------------------------------------------------------

    def _callback_failed(self, exc: BaseException | None = None) -> None:
        """Log, once, that a callback failed: ``exc`` (the C callbacks), else the one handled."""
        if not self._failed:
            self._failed = True
            log.error(
                "twinweave's sys.monitoring callback failed; the program goes on, "
                "but some calls may be missing from the report (logged once)",
                exc_info=exc if exc is not None else True,
            )

    def _c_callbacks(self) -> dict[int, Callable[..., Any]]:
        """The C Monitor's callbacks, for the same events as :meth:`_callbacks`."""
        events = _mon.events
        monitor = self._monitor
        callbacks: dict[int, Callable[..., Any]] = {
            events.PY_START: monitor.py_start,
            events.PY_RETURN: monitor.py_return,
            events.PY_UNWIND: monitor.py_unwind,
        }
        if self.silent_close:
            callbacks[events.PY_YIELD] = monitor.py_yield
        return callbacks

    def _callbacks(self) -> dict[int, Callable[..., Any]]:
        """The event callbacks, as closures over local names (the cheapest lookups there are)."""
        targets = self._targets
        running = self._running
        yielded = self._yielded
        track_yields = self.silent_close
        getframe = _getframe
        disable = _mon.DISABLE
        missing = _MISSING
        failed = self._callback_failed
        backend = self

        def on_start(code: CodeType, offset: int) -> Any:
            try:
                target = targets.get(id(code))
                if target is None:
                    return disable
                if target.suspendable and len(running) >= backend._sweep_at:
                    backend._sweep_if_idle()
                frame = getframe(1)
                if target.steps:
                    param = target.param
                    arg = None if param is None else frame.f_locals.get(param)
                    running[frame] = target.probe.enter(arg)
                else:
                    running[frame] = target.clock()
            except Exception:
                failed()
            return None

        def on_return(code: CodeType, offset: int, value: Any) -> Any:
            try:
                target = targets.get(id(code))
                if target is None:
                    return disable
                end = target.clock()
                frame = getframe(1)
                token = running.pop(frame, missing)
                if token is missing:  # started before it was registered
                    return None
                if track_yields and target.suspendable:
                    yielded.pop(frame, None)
                if target.steps:
                    target.probe.leave(token)
                elif target.recorder is None:
                    target.ok_append(end - token)
                else:
                    target.recorder.add(end - token)
            except Exception:
                failed()
            return None

        def on_unwind(code: CodeType, offset: int, exc: BaseException) -> None:
            # A global event: it runs for every frame an exception leaves, and
            # cannot return DISABLE. Keep the untracked path to one lookup.
            try:
                target = targets.get(id(code))
                if target is None:
                    return
                end = target.clock()
                frame = getframe(1)
                token = running.pop(frame, missing)
                if token is missing:
                    return
                if track_yields and target.suspendable:
                    yielded.pop(frame, None)
                if target.steps:
                    target.probe.fail(token, exc)
                else:
                    target.timed(end - token, exc)
            except Exception:
                failed()

        def on_yield(code: CodeType, offset: int, value: Any) -> Any:
            try:
                target = targets.get(id(code))
                if target is None:
                    return disable
                end = target.clock()
                frame = getframe(1)
                if frame in running:
                    yielded[frame] = end
            except Exception:
                failed()
            return None

        events = _mon.events
        callbacks: dict[int, Callable[..., Any]] = {
            events.PY_START: on_start,
            events.PY_RETURN: on_return,
            events.PY_UNWIND: on_unwind,
        }
        if track_yields:
            callbacks[events.PY_YIELD] = on_yield
        return callbacks
