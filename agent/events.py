"""Events: join points, the per-call probe that woven code calls, and the fan-out to plugins.

This module owns what happens *at run time* when a woven function is called. It
does not decide what gets woven (``agent.pointcuts``), nor how code is rewritten
(``agent.weaving``), nor what plugins do with events (``agent.plugins``).

Theory of operation. Every woven function (a *join point*) gets one
:class:`Probe`. The weaver bakes the probe's bound methods into the woven code as
constants, so a call never looks anything up. A probe runs in one of two modes,
chosen when it is built:

* **timing mode**, when no plugin wants individual events for the join point: the
  woven code reads ``time.perf_counter_ns()`` at entry and at exit and appends the
  difference to :attr:`Probe.ok` or :attr:`Probe.failed`. These are plain lists:
  ``list.append`` is atomic, so there is no lock; a drain thread folds them into
  statistics (see :meth:`Probe.drain`). This is the cheapest code Python can run
  for "measure this call".
* **steps mode**, when some plugin has ``on_start``/``on_step`` receivers for it:
  the woven code calls :meth:`Probe.enter` and :meth:`Probe.leave` /
  :meth:`Probe.fail`, which build :class:`StartEvent` and :class:`Step` objects,
  keep the per-message context (message id and order) and fan them out to the
  plugins through the :class:`Dispatcher`. Durations still go to the same lists,
  so timing plugins see every call whatever the mode.

A plugin that raises is logged once and isolated; events produced while a plugin
runs (a plugin calling woven code) are not emitted again, so a plugin never
profiles itself.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any, Callable, NamedTuple

log = logging.getLogger(__name__)

STEP_TYPES = ("workflow", "service", "producer", "consumer", "channel", "custom")

_perf_ns = time.perf_counter_ns
_get_ident = threading.get_ident
_new_tuple = tuple.__new__
"""``_new_tuple(Step, fields)`` makes a named tuple without the Python-level ``__new__``
that ``Step(...)`` runs (a frame and argument binding: a quarter of a microsecond)."""


@dataclass(frozen=True)
class JoinPoint:
    """What the pointcut file says about one woven function."""

    aspect: str
    type: str
    name: str
    """Full dotted name: ``module.Qual.name``."""
    message_id: str | None = None
    """Dotted path from a parameter name (``message.unique_id``), or ``None``."""
    kind: str = "function"
    """What the woven code is: ``function``, ``generator``, ``coroutine`` or
    ``async_generator`` (see :func:`code_kind`). A generator's steps start at its first
    resume and end when it finishes, with the caller running in between on the same
    thread, so they need not nest inside the caller's steps."""


KINDS = ("function", "generator", "coroutine", "async_generator")
# Code flags (CPython's Include/cpython/code.h), read by both weaving backends and
# by code_kind below: the one place they are spelled out.
CO_OPTIMIZED = 0x0001
CO_VARARGS = 0x0004
CO_VARKEYWORDS = 0x0008
CO_GENERATOR = 0x0020
CO_COROUTINE = 0x0080
CO_ITERABLE_COROUTINE = 0x0100
CO_ASYNC_GENERATOR = 0x0200
CO_SUSPENDING = CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR
"""Generators, coroutines, async generators: a call outlives one frame activation, its
suspensions interleave with other code on the thread, and it ends at exhaustion, an
exception or its close. ``CO_ITERABLE_COROUTINE`` (set by ``types.coroutine``) only
ever joins ``CO_GENERATOR``; it is listed so that the mask says what it means."""


def code_kind(flags: int) -> str:
    """The :attr:`JoinPoint.kind` of a code object with ``co_flags`` ``flags``.

    A ``types.coroutine`` generator (``CO_ITERABLE_COROUTINE``) runs as a generator.
    """
    if flags & CO_ASYNC_GENERATOR:
        return "async_generator"
    if flags & CO_COROUTINE:
        return "coroutine"
    if flags & (CO_GENERATOR | CO_ITERABLE_COROUTINE):
        return "generator"
    return "function"


def parameters(code: CodeType) -> Sequence[str]:
    """The parameter names of a function's code object, in order."""
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & CO_VARARGS) + bool(code.co_flags & CO_VARKEYWORDS)
    return code.co_varnames[:count]


def message_param(code: CodeType, probe: Probe) -> str | None:
    """The parameter whose value :meth:`Probe.enter` gets, or None (warned) if it has none.

    Both weaving backends ask this once per woven function: the bytecode one to
    load that parameter in the woven entry code, the monitoring one to read it
    from the frame at each start.
    """
    name = probe.param
    if name is not None and name not in parameters(code):
        log.warning(
            "aspect %s: %s has no parameter %r for message-id %r; its steps get no message id",
            probe.joinpoint.aspect,
            probe.joinpoint.name,
            name,
            probe.joinpoint.message_id,
        )
        return None
    return name


class StartEvent(NamedTuple):
    """A woven call has started (steps mode only). Immutable; fields by name."""

    joinpoint: JoinPoint
    message_id: str | None
    start_ns: int
    """Wall-clock start, ns since the epoch."""
    thread: int
    order: int
    """Position of this step within its message (0 for the first), or -1 without a message."""


class Step(NamedTuple):
    """A completed woven call: Interlok's ProcessStep, in Python. Immutable; fields by name.

    A named tuple rather than a dataclass: one is built per call in steps mode,
    and a frozen dataclass costs several times more to build.
    """

    aspect: str
    type: str
    name: str
    message_id: str | None
    start_ns: int
    duration_ns: int
    failed: str | None
    """Exception type name when the call raised, else ``None``."""
    thread: int
    order: int


class _MessageContext:
    """The message a chain of nested steps belongs to, and the next step's order.

    ``outer`` is the context that was current when the step that made this one began;
    ``open`` stays True until that step ends. Steps of generators and coroutines may end
    in any order: the one that ends restores the nearest still-open outer context, and
    only when its own is the current one (else another step's context is current, and
    that step restores when it ends), so no ended message is ever left current.
    """

    __slots__ = ("message_id", "next_order", "open", "outer")

    def __init__(self, message_id: str, outer: _MessageContext | None) -> None:
        self.message_id = message_id
        self.next_order = 0
        self.outer = outer
        self.open = True

    def close(self) -> None:
        """The step that made this context ended."""
        self.open = False
        if _current_message.get() is self:
            outer = self.outer
            while outer is not None and not outer.open:
                outer = outer.outer
            _current_message.set(outer)


_current_message: contextvars.ContextVar[_MessageContext | None] = contextvars.ContextVar(
    "twinweave_message", default=None
)
_dispatching: set[int] = set()
"""Threads running a plugin receiver now: probes stay silent for them (no recursion).

A set of thread ids rather than a ``threading.local``: a membership test and an
add/discard cost a third of a thread-local attribute access, on a path every woven
call takes in steps mode; under the GIL each is atomic.
"""


class Dispatcher:
    """Fans start events and steps out to plugin receivers, isolating failures.

    Receivers are plain callables. One that raises is logged once (with its
    traceback) and counted in :attr:`errors`; the application never sees it.
    """

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self._logged: set = set()

    def call(self, owner: str, receiver: Callable[..., Any], *args: Any) -> None:
        """Run one plugin receiver with recursion guard and isolation."""
        ident = _get_ident()
        if ident in _dispatching:
            return
        _dispatching.add(ident)
        try:
            receiver(*args)
        except Exception:
            self._failed(owner)
        finally:
            _dispatching.discard(ident)

    def fan_out(self, receivers: Sequence[_Receiver], event: Any, ident: int) -> None:
        """Hand ``event`` to every receiver, in order, as the thread ``ident``.

        The caller (a probe) has checked that ``ident`` is not dispatching already;
        the guard is raised once for all receivers, not once each.
        """
        _dispatching.add(ident)
        try:
            for owner, receiver in receivers:
                try:
                    receiver(event)
                except Exception:
                    self._failed(owner)
        finally:
            _dispatching.discard(ident)

    def _failed(self, owner: str) -> None:
        self.errors[owner] = self.errors.get(owner, 0) + 1
        if owner not in self._logged:
            self._logged.add(owner)
            log.exception(
                "plugin %s raised; it is isolated and further errors are only counted", owner
            )


_Receiver = tuple[str, Callable[[Any], None]]


def _resolve_path(root: Any, path: Sequence[str]) -> Any:
    """Follow attribute (or mapping key) names from a parameter value; never evaluates code."""
    value = root
    for part in path:
        if isinstance(value, dict):
            value = value[part]
        else:
            value = getattr(value, part)
    return value


class Probe:
    """The run-time side of one join point; woven code calls it (see the module docstring).

    ``param`` is the name of the parameter the message id starts from and ``path``
    the attribute names after it; the weaver passes that parameter's value to
    :meth:`enter`.
    """

    __slots__ = (
        "_bad_message_id",
        "dispatcher",
        "failed",
        "failed_append",
        "joinpoint",
        "ok",
        "ok_append",
        "param",
        "path",
        "recorder",
        "start_receivers",
        "step_receivers",
    )

    def __init__(
        self,
        joinpoint: JoinPoint,
        dispatcher: Dispatcher | None = None,
        start_receivers: Sequence[_Receiver] = (),
        step_receivers: Sequence[_Receiver] = (),
        recorder: Any = None,
    ) -> None:
        self.joinpoint = joinpoint
        # The C accelerator's recorder (agent.speedups), which times calls in place
        # of the lists in timing mode where it is built; None for the Python path.
        self.recorder = recorder
        self.ok: list[int] = []
        self.failed: list[int] = []
        self.ok_append = self.ok.append
        self.failed_append = self.failed.append
        parts = joinpoint.message_id.split(".") if joinpoint.message_id else []
        self.param: str | None = parts[0] if parts else None
        self.path: tuple[str, ...] = tuple(parts[1:])
        self.dispatcher = dispatcher or Dispatcher()
        self.start_receivers = tuple(start_receivers)
        self.step_receivers = tuple(step_receivers)
        self._bad_message_id = False

    @property
    def steps_mode(self) -> bool:
        """Whether woven code must call :meth:`enter`/:meth:`leave` (else timing mode)."""
        return bool(self.start_receivers or self.step_receivers)

    def __repr__(self) -> str:
        return f"<Probe {self.joinpoint.name} ({self.joinpoint.aspect})>"

    # -- steps mode: called by woven code -------------------------------------------------

    def enter(self, arg: Any = None) -> Any:
        """Start a call; returns the token that :meth:`leave`/:meth:`fail` receive."""
        thread = _get_ident()
        if thread in _dispatching:
            return None
        t0 = _perf_ns()
        message_id = self._message_id(arg) if self.param is not None else None
        outer = _current_message.get()
        ctx = outer
        if message_id is not None and (outer is None or outer.message_id != message_id):
            ctx = _MessageContext(message_id, outer)
            _current_message.set(ctx)
        if ctx is not None:
            order = ctx.next_order
            ctx.next_order = order + 1
            message_id = ctx.message_id
        else:
            order = -1
        if self.start_receivers:
            event = _new_tuple(
                StartEvent, (self.joinpoint, message_id, t0 + _WALL_OFFSET, thread, order)
            )
            self.dispatcher.fan_out(self.start_receivers, event, thread)
        return (t0, message_id, order, thread, outer, ctx)

    def fail(self, token: Any, exc: BaseException | None = None) -> None:
        """A call started by :meth:`enter` raised ``exc`` (default: the one being handled)."""
        if token is not None:
            self.leave(token, exc if exc is not None else sys.exc_info()[1])

    # -- timing mode: the normal exit is ``ok_append(perf_counter_ns() - t0)`` inline ---------

    def fail_timed(self, t0: int, exc: BaseException | None = None) -> None:
        """A timed call raised ``exc`` (default: the one being handled).

        ``GeneratorExit`` is how a generator is closed early, not a failure.
        """
        duration = _perf_ns() - t0
        if exc is None:
            exc = sys.exc_info()[1]
        (self.ok_append if isinstance(exc, GeneratorExit) else self.failed_append)(duration)

    def leave(self, token: Any, exc: BaseException | None = None) -> None:
        """A call started by :meth:`enter` returned normally (or raised ``exc``: see :meth:`fail`).

        One method for both ends, so the common one costs a single Python frame.
        """
        if token is None:
            return
        t0, message_id, order, thread, outer, ctx = token
        duration = _perf_ns() - t0
        failed = None if exc is None or isinstance(exc, GeneratorExit) else type(exc).__name__
        (self.ok_append if failed is None else self.failed_append)(duration)
        if ctx is not outer:
            ctx.close()
        if self.step_receivers:
            jp = self.joinpoint
            step = _new_tuple(
                Step,
                (
                    jp.aspect,
                    jp.type,
                    jp.name,
                    message_id,
                    t0 + _WALL_OFFSET,
                    duration,
                    failed,
                    thread,
                    order,
                ),
            )
            self.dispatcher.fan_out(self.step_receivers, step, thread)

    def _message_id(self, arg: Any) -> str | None:
        try:
            value = _resolve_path(arg, self.path)
        except Exception as exc:
            if not self._bad_message_id:
                self._bad_message_id = True
                log.warning(
                    "aspect %s: message-id %r not found on a call of %s (%s); no message id",
                    self.joinpoint.aspect,
                    self.joinpoint.message_id,
                    self.joinpoint.name,
                    exc,
                )
            return None
        return None if value is None else str(value)

    # -- both modes ---------------------------------------------------------------------

    def drain(self) -> tuple[list[int], list[int]]:
        """Take the durations recorded so far (ok, failed); safe while calls go on.

        Copy-then-delete of a prefix: both are single atomic list operations, and
        concurrent appends only ever land after the prefix.
        """
        ok, failed = self.ok, self.failed
        taken_ok = ok[:]
        del ok[: len(taken_ok)]
        taken_failed = failed[:]
        del failed[: len(taken_failed)]
        return taken_ok, taken_failed


def _wall_offset(samples: int = 7) -> int:
    """Wall clock minus the performance counter, from the tightest of a few brackets: a
    thread preempted between the two reads (milliseconds on a busy machine) would shift
    every step's wall-clock start by that much."""
    best = None
    for _ in range(samples):
        before = _perf_ns()
        wall = time.time_ns()
        after = _perf_ns()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) // 2)
    assert best is not None
    return best[1]


_WALL_OFFSET = _wall_offset()
