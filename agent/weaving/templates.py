"""The instructions the bytecode weaver inserts, one small template per CPython family.

Owns the exact opcodes; ``rewrite`` decides where they go. Every woven function
keeps a *token* at the bottom of its value stack for the whole call: the start
time in timing mode, :meth:`Probe.enter`'s result in steps mode. Keeping it on
the stack rather than in a new local variable leaves ``co_varnames``,
``locals()``, ``frame.f_locals`` and argument-less ``super()`` exactly as they
were.

Three templates per interpreter family:

* ``entry``: push the token (``perf_counter_ns()`` or ``probe.enter(param)``);
* ``before_return``: with ``[token, value]`` on the stack, record a normal exit
  and leave ``[value]`` for ``RETURN_VALUE``;
* ``handler``: the catch-all handler around the body, which records the failure
  and re-raises the exception untouched (same traceback, no extra entry).

Every object the templates load as a constant that is not a literal (the probe's
bound methods, the C accelerator's functions, the clock, ``type``) comes from one
:class:`Kit` per woven function, under a slot name (:data:`SLOTS`). The code cache
(``agent.weaving.codecache``) stores woven code with those constants replaced by
their slot names, and fills them in again from a new kit of the same mode.

The handler differs most. With an exception table (3.11+) the handler starts with
``[token, lasti, exc]`` and ends in ``RERAISE 1``, which restores the frame's
line to where the exception came from. With blocks (3.9, 3.10) it starts with
``[token, 3 saved exc_info values, tb, value, type]`` and the exception is also
the "current" one: 3.10 rotates the token up and back with ``ROT_N`` and ends in
``RERAISE 1`` (which restores the line too); 3.9 drops the triple, rotates the
token up with ``ROT_FOUR`` and re-raises with a bare ``raise``, so a frame that
an exception left reports its last line there.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from bytecode import CellVar, Instr, Label

from agent import speedups
from agent.events import Probe
from agent.weaving import env

if env.NO_LOCATION:
    from bytecode.instr import InstrLocation

    NOWHERE: Any = {"location": InstrLocation(None, None, None, None)}
else:
    # 3.9: an unset line inherits the previous instruction's, so inserted code
    # never starts a line of its own and fires no extra line events.
    NOWHERE = {}

Clock = Callable[[], int]
_clock: Clock = time.perf_counter_ns


_NO_ARG = object()


def _i(name: str, arg: Any = _NO_ARG) -> Instr:
    if arg is _NO_ARG:
        return Instr(name, **NOWHERE)
    return Instr(name, arg, **NOWHERE)


def located(instrs: list[Instr], at: Instr) -> list[Instr]:
    """Give inserted code the line of ``at``, the original instruction it runs just before.

    Used for the epilogue of a return: inside one line, code with no line would
    split it and make tracers see that line start twice.
    """
    for instr in instrs:
        instr.location = at.location
    return instrs


def _push(fn: Any) -> list[Instr]:
    """Push a constant callable the way this interpreter's CALL wants it."""
    if env.NULL_BEFORE_CALLABLE:
        return [_i("PUSH_NULL"), _i("LOAD_CONST", fn)]
    if env.NULL_AFTER_CALLABLE:
        return [_i("LOAD_CONST", fn), _i("PUSH_NULL")]
    return [_i("LOAD_CONST", fn)]


def _call(nargs: int) -> list[Instr]:
    if env.CALL_PRECALL:
        return [_i("PRECALL", nargs), _i("CALL", nargs)]
    if env.EXCEPTION_TABLE:
        return [_i("CALL", nargs)]
    return [_i("CALL_FUNCTION", nargs)]


def _subtract() -> Instr:
    return _i("BINARY_OP", env.NB_SUBTRACT) if env.HAS_BINARY_OP else _i("BINARY_SUBTRACT")


def load_param(name: str | None, cell: bool) -> list[Instr]:
    """Push the value of parameter ``name`` (or None when there is no message id)."""
    if name is None:
        return [_i("LOAD_CONST", None)]
    if cell:
        return [_i("LOAD_DEREF", CellVar(name))]
    return [_i("LOAD_FAST", name)]


MODES = ("steps", "c", "python")
"""How a probe's calls are recorded, which decides the instructions: :meth:`Probe.enter` and
:meth:`Probe.leave` (steps), the C recorder (c), or the clock and list appends inline (python)."""

SLOTS = {
    "steps": ("enter", "leave", "fail"),
    "c": ("entry", "leave", "fail"),
    "python": ("clock", "ok_append", "choose", "failed_append", "type", "exc_info"),
}
"""The non-literal constants of each mode, by name (``exc_info`` only before 3.11)."""


def mode_of(probe: Probe) -> str:
    """The :data:`MODES` entry ``probe`` is woven in."""
    if probe.steps_mode:
        return "steps"
    return "c" if probe.recorder is not None else "python"


class Kit:
    """The constants one woven function's templates load, by slot name (see :data:`SLOTS`)."""

    __slots__ = ("mode", "values")

    def __init__(self, probe: Probe, generator: bool) -> None:
        self.mode = mode_of(probe)
        values: dict[str, Any]
        if self.mode == "steps":
            values = {"enter": probe.enter, "leave": probe.leave, "fail": probe.fail}
        elif self.mode == "c":
            recorder = probe.recorder
            values = {
                "entry": speedups.entry(generator),
                "leave": recorder.leave,
                "fail": recorder.fail,
            }
        else:
            choose, failed_append = _inline_failure(probe)
            values = {
                "clock": _clock,
                "ok_append": probe.ok_append,
                "choose": choose,
                "failed_append": failed_append,
                "type": type,
            }
            if not env.EXCEPTION_TABLE:
                values["exc_info"] = sys.exc_info
        self.values = values

    def slots_in(self, consts: tuple[Any, ...]) -> tuple[tuple[int, str], ...]:
        """``(index, slot name)`` of every constant in ``consts`` that is one of this kit's."""
        by_id = {id(value): name for name, value in self.values.items()}
        return tuple(
            (index, by_id[id(const)])
            for index, const in enumerate(consts)
            if id(const) in by_id and self.values[by_id[id(const)]] is const
        )


def entry(kit: Kit, param: list[Instr]) -> list[Instr]:
    """Push the token; the caller opens the protected region right after."""
    values = kit.values
    if kit.mode == "steps":
        return _push(values["enter"]) + param + _call(1)
    if kit.mode == "c":
        return _push(values["entry"]) + _call(0)
    return _push(values["clock"]) + _call(0)


def open_block(handler: Label) -> list[Instr]:
    """3.9/3.10: the block that sends every exception of the body to ``handler``."""
    return [_i("SETUP_FINALLY", handler)]


def before_return(kit: Kit) -> list[Instr]:
    """``[token, value]`` -> ``[value]``, recording a normal exit."""
    values = kit.values
    leave = values["leave"] if kit.mode != "python" else None
    if env.EXCEPTION_TABLE:
        if leave is not None:
            # [tok, v, <leave>] tok is 4 deep (the pushed callable takes two slots)
            body = _push(leave) + [_i("COPY", 4)] + _call(1)
        else:
            # [t0, v, <append>, now]: t0 is 5 deep
            body = (
                _push(values["ok_append"])
                + _push(values["clock"])
                + _call(0)
                + [_i("COPY", 5), _subtract()]
                + _call(1)
            )
        return body + [_i("POP_TOP"), _i("SWAP", 2), _i("POP_TOP")]
    prologue = [_i("POP_BLOCK"), _i("ROT_TWO")]  # leave our block; [v, token]
    if leave is not None:
        body = [_i("LOAD_CONST", leave), _i("ROT_TWO")] + _call(1)
    else:
        body = (
            [_i("LOAD_CONST", values["clock"])]
            + _call(0)
            + [
                _i("ROT_TWO"),
                _subtract(),
                _i("LOAD_CONST", values["ok_append"]),
                _i("ROT_TWO"),
            ]
            + _call(1)
        )
    return prologue + body + [_i("POP_TOP")]


def _inline_failure(probe: Probe) -> tuple[Any, Any]:
    """Pure-Python timing: pick the list with C calls only, ``GeneratorExit`` being no failure.

    Calling Python code here (a probe method) would show up in tracers and
    profilers and could raise a new RecursionError at the recursion limit.
    """
    return {GeneratorExit: probe.ok_append}.get, probe.failed_append


def _record_failure_blocks(kit: Kit) -> list[Instr]:
    """3.9/3.10: record the failure of the call whose token is on top (consumed)."""
    values = kit.values
    if kit.mode != "python":
        return [_i("LOAD_CONST", values["fail"]), _i("ROT_TWO")] + _call(1) + [_i("POP_TOP")]
    return (
        [_i("LOAD_CONST", values["choose"]), _i("LOAD_CONST", values["exc_info"])]
        + _call(0)
        + [_i("LOAD_CONST", 0), _i("BINARY_SUBSCR"), _i("LOAD_CONST", values["failed_append"])]
        + _call(2)  # [t0, append]
        + [_i("ROT_TWO"), _i("LOAD_CONST", values["clock"])]
        + _call(0)
        + [_i("ROT_TWO"), _subtract()]
        + _call(1)
        + [_i("POP_TOP")]
    )


def handler(kit: Kit) -> list[Instr]:
    """The catch-all handler: record the failure, re-raise the same exception."""
    values = kit.values
    if env.EXCEPTION_TABLE:
        # [tok, lasti, exc]
        if kit.mode != "python":
            # [tok, lasti, exc, <fail>]: tok is 5 deep, then exc is 4 deep.
            record = _push(values["fail"]) + [_i("COPY", 5), _i("COPY", 4)] + _call(2)
        else:
            # append = choose(type(exc), failed_append); append(clock() - tok)
            null_under = [_i("PUSH_NULL"), _i("SWAP", 2)] if env.NULL_BEFORE_CALLABLE else []
            record = (
                _push(values["choose"])
                + _push(values["type"])
                + [_i("COPY", 5)]
                + _call(1)
                + [_i("LOAD_CONST", values["failed_append"])]
                + _call(2)  # [tok, lasti, exc, append]
                + (null_under or [_i("PUSH_NULL")])
                + _push(values["clock"])
                + _call(0)
                + [_i("COPY", 6), _subtract()]
                + _call(1)
            )
        return record + [_i("POP_TOP"), _i("RERAISE", 1)]
    # [tok, ptb, pval, ptype, tb, val, exc]: the exception is also sys.exc_info() here.
    if env.HAS_ROT_N:
        # Rotate the token up, record with a copy, rotate it back, RERAISE 1.
        return (
            [_i("ROT_N", 7)] * 6
            + [_i("DUP_TOP")]
            + _record_failure_blocks(kit)
            + [_i("ROT_N", 7), _i("RERAISE", 1)]
        )
    return (
        [_i("POP_TOP")] * 3
        + [_i("ROT_FOUR")] * 3  # [ptb, pval, ptype, tok]
        + _record_failure_blocks(kit)
        + [_i("RAISE_VARARGS", 0)]
    )


EXTRA_STACK = 10
"""At least what the templates add to a function's deepest stack, so ``co_stacksize`` is
set without the library's stack analysis (a whole control-flow graph per function).

The body runs one deeper (the token); a return's epilogue holds at most five more
(3.11+: a callable with its NULL twice, or a copy of the token); the handler, which
starts from the token alone, peaks at ten values on 3.9/3.10 (the token, the six a
block handler pushes, the choosing call and its argument) and at eight from 3.11.
Overestimating costs a few slots of frame, underestimating would corrupt it."""
