"""The bytecode backend: rewrite code objects so that each call reports to its probe.

Owns the transformation of one code object (:func:`weave_code`) and the walk over
a tree of nested code objects with their qualified names (:func:`weave_tree`).
On 3.11+ the bytes are edited in place by ``agent.weaving.patch`` (its core in C
where the extension is built); this module keeps the reference form of the same
rewrite through the ``bytecode`` library, used before 3.11 and for code the
patcher declines, and the tests hold the two to the same result.
It does not decide which functions match (the resolver passed in does), nor load
modules (``agent.importer``), nor know what plugins do (``agent.events``).

A woven function runs, in effect::

    token = <entry>                 # perf_counter_ns() or probe.enter(param)
    try:
        <original body>             # every `return v` records a normal exit first
    except BaseException:
        <record failure>; raise     # same exception, same traceback

where the token lives on the value stack, not in a local (see ``templates``).
Generators and coroutines start timing at their first resume (after the
prologue that creates the generator object) and stop when they return, raise
or are closed. Nothing about the code object changes but ``co_code``, its
tables, ``co_stacksize`` and ``co_consts``: names, flags, argument counts,
varnames, first line and each original instruction's line stay as they were.
"""

from __future__ import annotations

import logging
import weakref
from types import CodeType
from typing import Callable, Optional

from bytecode import Bytecode, Instr, Label

from agent.events import CO_OPTIMIZED, CO_SUSPENDING, Probe, message_param
from agent.weaving import env, patch, templates

if env.EXCEPTION_TABLE:
    from bytecode import TryBegin, TryEnd
else:  # pragma: no cover - names only used on 3.11+
    TryBegin = TryEnd = ()

log = logging.getLogger(__name__)

Resolver = Callable[[CodeType, str], Optional[Probe]]
"""Given a function's code object and its ``__qualname__``, the probe to weave in, or None."""
Apply = Callable[[CodeType, Probe], CodeType]
"""What a backend does to a matched function's code: returns the code to run."""
Layout = tuple[str, Optional[str]]
"""What the woven instructions of a function depend on besides its code: the probe's mode
(``templates.MODES``) and the parameter passed to :meth:`Probe.enter` (or None)."""

_BLOCK_SETUPS = ("SETUP_FINALLY", "SETUP_WITH", "SETUP_ASYNC_WITH")
_RETURNS = ("RETURN_VALUE", "RETURN_CONST")


class WeaveError(RuntimeError):
    """A code object could not be woven; the function is left as it was."""


def is_join_point(code: CodeType) -> bool:
    """Functions, methods and lambdas; not modules, class bodies or comprehensions."""
    if not code.co_flags & CO_OPTIMIZED:
        return False
    name = code.co_name
    return not name.startswith("<") or name == "<lambda>"


Slots = tuple[tuple[int, str], ...]
"""``(index in co_consts, slot name)`` of the probe's constants in woven code (``templates``)."""

_woven: dict[int, tuple[weakref.ref[CodeType], Probe, Slots, Layout]] = {}
"""Woven code objects (by id, with a weak reference to tell a reused id), their probes,
where the probe's constants sit in ``co_consts``, and the :func:`layout` they were woven for."""


def register(code: CodeType, probe: Probe, slots: Slots = (), layout: Layout | None = None) -> None:
    """Record ``code`` as woven for ``probe`` (the code cache calls it for code it restores)."""
    key = id(code)
    ref = weakref.ref(code, lambda _ref: _woven.pop(key, None))
    _woven[key] = (ref, probe, slots, layout if layout is not None else ("", None))


def probe_of(code: CodeType) -> Probe | None:
    """The probe woven into ``code``, if it is woven code."""
    entry = _woven.get(id(code))
    if entry is not None and entry[0]() is code:
        return entry[1]
    return None


def woven_details(code: CodeType) -> tuple[Probe, Slots, Layout] | None:
    """For woven code: its probe, the slots of the probe's constants, and its layout."""
    entry = _woven.get(id(code))
    if entry is not None and entry[0]() is code:
        return entry[1], entry[2], entry[3]
    return None


def is_woven(code: CodeType) -> bool:
    """Whether ``code`` already reports to a probe (so it is never woven twice)."""
    return probe_of(code) is not None


def _child_qualname(parent: CodeType, parent_qualname: str, child: CodeType) -> str:
    if env.HAS_CO_QUALNAME:
        return child.co_qualname  # type: ignore[attr-defined]
    if parent.co_name == "<module>" and not parent_qualname:
        return child.co_name
    if parent.co_flags & CO_OPTIMIZED:  # a function's locals
        return f"{parent_qualname}.<locals>.{child.co_name}"
    return f"{parent_qualname}.{child.co_name}"  # a class body


def weave_tree(
    code: CodeType, qualname: str, resolver: Resolver, apply: Apply | None = None
) -> CodeType:
    """Weave ``code`` (named ``qualname``; ``""`` for a module) and every code nested in it.

    ``apply`` is the backend's step for one matched function (default: this
    module's :func:`weave_code`; the monitoring backend registers the code
    instead and returns it unchanged). Returns ``code`` itself when nothing in
    the tree changed, so unmatched modules and functions keep their code objects.
    """
    apply = apply or weave_code
    consts = code.co_consts
    new_consts = None
    for index, const in enumerate(consts):
        if isinstance(const, CodeType):
            child = weave_tree(const, _child_qualname(code, qualname, const), resolver, apply)
            if child is not const:
                if new_consts is None:
                    new_consts = list(consts)
                new_consts[index] = child
    if new_consts is not None:
        code = code.replace(co_consts=tuple(new_consts))
    if is_join_point(code) and not is_woven(code):
        probe = resolver(code, qualname)
        if probe is not None:
            try:
                code = apply(code, probe)
            except WeaveError as exc:
                log.warning("not weaving %s: %s", qualname, exc)
    return code


def _body_start(items: list[object]) -> int:
    """Index where the entry code goes: after the function's prologue.

    From 3.12 a generator's PEP 479 handler (StopIteration -> RuntimeError) covers
    everything from the end of the generator prologue on, RESUME included, at an
    empty stack. The token must already be on the stack when that range starts,
    or the handler would unwind it; so for such code the entry goes just before
    the range, still after the first resumption's POP_TOP of the sent value.
    """
    first_try = None
    for index, item in enumerate(items):
        if env.EXCEPTION_TABLE and first_try is None and isinstance(item, TryBegin):
            first_try = index
        if isinstance(item, Instr):
            if env.HAS_RESUME:
                if item.name == "RESUME":
                    return index + 1 if first_try is None else first_try
            elif env.HAS_GEN_START and item.name == "GEN_START":
                return index + 1
            else:
                return 0
    return 0


def layout(code: CodeType, probe: Probe) -> Layout:
    """The :data:`Layout` ``code`` is woven in for ``probe`` (warns as ``events.message_param``)."""
    name = message_param(code, probe)
    mode = templates.mode_of(probe)
    return mode, name if mode == "steps" else None


def weave_code(code: CodeType, probe: Probe, direct: bool = True) -> CodeType:
    """Return a copy of the function code ``code`` that reports each call to ``probe``.

    On 3.11+ the direct patcher (``agent.weaving.patch``) edits the bytes; code it
    does not handle, every code object before 3.11, and ``direct=False`` go
    through the ``bytecode`` library. Both give the same woven code.
    """
    env.check_supported()
    kit = templates.Kit(probe, bool(code.co_flags & CO_SUSPENDING))
    shape = layout(code, probe)
    if direct and env.EXCEPTION_TABLE:
        try:
            woven, slots = patch.patch_code(code, kit, shape[1])
        except patch.Unpatchable as exc:
            log.debug("weaving %s with the bytecode library: %s", code.co_name, exc)
        else:
            register(woven, probe, slots, shape)
            return woven
    woven = _weave_with_library(code, kit, shape[1])
    register(woven, probe, kit.slots_in(woven.co_consts), shape)
    return woven


def _weave_with_library(code: CodeType, kit: templates.Kit, param: str | None) -> CodeType:
    """:func:`weave_code` through the ``bytecode`` library: decode, insert, assemble.

    The steps, each a function below: find where the body starts
    (:func:`_body_start`), put the entry before it (:func:`_prologue`), raise the
    compiler's handler depths and clear its depth-1 marks (3.11+, 3.12/3.13), cover
    the rest of the body with the catch-all handler's ranges (3.11+), put the exit
    before each return (:func:`_with_return_epilogues`), append the handler.
    """
    bc = _decode(code)
    items: list[object] = list(bc)
    if not env.EXCEPTION_TABLE:
        setups = sum(1 for i in items if isinstance(i, Instr) and i.name in _BLOCK_SETUPS)
        if setups + 1 > env.MAX_BLOCKS:
            raise WeaveError("too many nested blocks for one more")
    start = _body_start(items)
    handler = Label()
    body = items[start:]
    prologue = _prologue(code, kit, param, body, handler)
    if env.EXCEPTION_TABLE:
        _deepen_handlers(body)
        body = [_unmark_depth1(item) for item in body]
        body = _split_ranges(body, _covered(items[:start]), handler)
    body = _with_return_epilogues(body, kit)
    return _assemble(code, bc, items[:start] + prologue + body + [handler] + templates.handler(kit))


def _decode(code: CodeType) -> Bytecode:
    """The library's form of ``code``, with its locals numbered as the compiler did."""
    try:
        if env.EXCEPTION_TABLE:
            # Keep the compiler's handler depths (by default the library zeroes them).
            bc = Bytecode.from_code(code, conserve_exception_block_stackdepth=True)
        else:
            bc = Bytecode.from_code(code)
    except Exception as exc:  # the library refuses code it cannot represent
        raise WeaveError(f"cannot decode the bytecode: {exc}") from exc
    # The library numbers locals by first use after the arguments; seed it with every
    # local in the compiler's order so co_varnames (and frame.f_locals) stay as they were.
    bc.argnames = list(code.co_varnames)
    return bc


def _prologue(
    code: CodeType, kit: templates.Kit, param: str | None, body: list[object], handler: Label
) -> list[Instr]:
    """The entry code: push the token; 3.9/3.10 also open the block that goes to ``handler``."""
    prologue = templates.entry(kit, templates.load_param(param, param in code.co_cellvars))
    if not env.EXCEPTION_TABLE:
        prologue += templates.open_block(handler)
        # Part of the first line, so it starts no line of its own, and a
        # RecursionError from the entry call (C calls count there) names that line.
        first = next((i for i in body if isinstance(i, Instr)), None)
        if first is not None:
            templates.located(prologue, first)
    return prologue


def _covered(items: list[object]) -> bool:
    """Whether the end of ``items`` lies inside one of the function's own ranges (3.11+).

    3.12 wraps a generator's whole body, from before RESUME, in one: PEP 479's
    StopIteration check.
    """
    covered = False
    for item in items:
        if isinstance(item, (TryBegin, TryEnd)):
            covered = isinstance(item, TryBegin)
    return covered


def _deepen_handlers(body: list[object]) -> None:
    """Make each of the compiler's handlers in ``body`` unwind to one item more (3.11+).

    The token sits under everything the body does. A range the library split
    appears more than once, and is deepened once.
    """
    deepened: set[int] = set()
    for item in body:
        if isinstance(item, TryBegin) and id(item) not in deepened:
            item.stack_depth += 1
            deepened.add(id(item))


def _unmark_depth1(item: object) -> object:
    """``item`` without the compiler's mark of a yield at handler depth 1 (3.12, 3.13).

    With the token under it the yield is deeper, and a generator closed there
    must get its ``GeneratorExit`` thrown in (see ``env.YIELD_VALUE_DEPTH``).
    """
    if not isinstance(item, Instr):
        return item
    if item.name == "YIELD_VALUE" and env.YIELD_VALUE_DEPTH and item.arg == 1:
        return Instr("YIELD_VALUE", 2, location=item.location)
    if item.name == "RESUME" and item.arg & env.RESUME_DEPTH1_MASK:
        return Instr("RESUME", item.arg & ~env.RESUME_DEPTH1_MASK, location=item.location)
    return item


def _split_ranges(body: list[object], covered: bool, handler: Label) -> list[object]:
    """``body`` with the catch-all handler's ranges over what no range of its own covers (3.11+).

    ``covered`` says whether ``body`` starts inside one of the function's ranges.
    A range of ours ends where one of the function's begins or ends, and before
    each return (whose epilogue, already past the token, must not fail into the
    handler); the next instruction outside the function's ranges opens another.
    """
    out: list[object] = []
    ours = None
    for item in body:
        boundary = isinstance(item, (TryBegin, TryEnd))
        returns = isinstance(item, Instr) and item.name in _RETURNS
        if ours is not None and (boundary or returns):
            out.append(TryEnd(ours))
            ours = None
        if boundary:
            covered = isinstance(item, TryBegin)
        elif isinstance(item, Instr) and not returns and not covered and ours is None:
            ours = TryBegin(handler, push_lasti=True, stack_depth=1)
            out.append(ours)
        out.append(item)
    if ours is not None:
        out.append(TryEnd(ours))
    return out


def _with_return_epilogues(body: list[object], kit: templates.Kit) -> list[object]:
    """``body`` with a normal exit recorded before each return (``RETURN_CONST`` split in two)."""
    out: list[object] = []
    for item in body:
        if isinstance(item, Instr) and item.name in _RETURNS:
            if item.name == "RETURN_CONST":
                out.append(Instr("LOAD_CONST", item.arg, location=item.location))
                item = Instr("RETURN_VALUE", location=item.location)
            out += templates.located(templates.before_return(kit), item)
        out.append(item)
    return out


def _assemble(code: CodeType, bc: Bytecode, items: list[object]) -> CodeType:
    """The code object of the woven ``items``, with ``code``'s flags."""
    bc.clear()
    bc.extend(items)
    # The stack size from the original's plus what the templates add (templates.EXTRA_STACK):
    # the library's own stack analysis builds a control-flow graph of the whole function,
    # a quarter of the weaving time.
    stacksize = code.co_stacksize + templates.EXTRA_STACK
    try:
        if env.EXCEPTION_TABLE:
            # Depths as set above: the library's own recomputation takes the lowest
            # stack inside each range, which is wrong for some nested handlers
            # (a `raise` in a `finally` in an `except`) and for ranges that hold a return.
            woven = bc.to_code(stacksize=stacksize, compute_exception_stack_depths=False)
        else:
            woven = bc.to_code(stacksize=stacksize)
    except Exception as exc:
        raise WeaveError(f"cannot assemble the woven bytecode: {exc}") from exc
    if woven.co_flags != code.co_flags:
        woven = woven.replace(co_flags=code.co_flags)
    return woven
