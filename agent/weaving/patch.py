"""The direct patcher: weave a 3.11+ code object by editing its bytes, not by rebuilding it.

Owns the byte-level form of :func:`agent.weaving.rewrite.weave_code`'s rewrite on
interpreters with an exception table (3.11 to 3.13). It produces the same woven
code as the ``bytecode`` library path: the same instructions in the same order,
the same handler for every instruction, the same location for every instruction
(the equivalence test in ``tests/agent/test_patch.py`` checks this over whole
stdlib packages). It does not decide what the probe's instructions are
(``templates`` does, once per mode, symbolically) nor where the entry goes
(the same rule as ``rewrite._body_start``, on offsets).

Why it is faster: the library decodes every instruction into an object, every
exception-table entry into a pair of pseudo-instructions and every location
into a record, then assembles all of it again. Almost all of a function's bytes
survive weaving unchanged, so here they are copied as slices. What changes is
small and local:

* the entry code goes in after ``RESUME`` (or before the generator's PEP 479 range);
* each return gets the epilogue before it (``RETURN_CONST k`` becomes
  ``LOAD_CONST k`` + epilogue + ``RETURN_VALUE``);
* relative jumps are re-aimed where insertions lie between a jump and its target
  (and grow an ``EXTENDED_ARG`` when they must);
* exception-table entries move with the code and keep one more stack item;
  our catch-all range covers what no entry covers; the handler goes at the end;
* the location table gets the inserted units: the entry code and the handler
  have no location, an epilogue the location of its return. Untouched location
  entries are copied byte for byte: an inserted "no location" entry does not
  change the running line, so every original delta stays right.

Anything unexpected (an unknown jump form, a jump into the middle of an
instruction, a range starting before the body) raises :class:`Unpatchable`, and
the caller weaves with the library instead.
"""

from __future__ import annotations

import dis
import opcode
import os
import re
from bisect import bisect_left, bisect_right
from itertools import accumulate
from types import CodeType
from typing import Any

from agent.weaving import env, templates

__all__ = ["Unpatchable", "patch_code"]


class Unpatchable(Exception):
    """This code object has a shape the direct patcher does not handle (use the library)."""


_OP = opcode.opmap
EXTENDED_ARG = _OP["EXTENDED_ARG"]
_CACHE = _OP.get("CACHE", 0)
RESUME = _OP.get("RESUME", -1)
RETURN_VALUE = _OP["RETURN_VALUE"]
RETURN_CONST = _OP.get("RETURN_CONST", -1)
LOAD_CONST = _OP["LOAD_CONST"]
YIELD_VALUE = _OP["YIELD_VALUE"]


def _cache_table() -> list[int]:
    raw: Any = getattr(opcode, "_inline_cache_entries", None)
    table = [0] * 256
    if isinstance(raw, dict):  # 3.13: by name
        for name, count in raw.items():
            op = _OP.get(name, 256)
            if op < 256:
                table[op] = count
    elif raw is not None:  # 3.11, 3.12: by opcode
        for op, count in enumerate(raw[:256]):
            table[op] = count
    return table


_CACHES = _cache_table()
_STEP = bytes(2 + 2 * count for count in _CACHES)
"""Bytes from an instruction's opcode to the next instruction (its arg byte and caches)."""
_WATCHED = re.compile(b"[^\\x00]")
_JUMPS = frozenset(op for op in dis.hasjrel if op < 256)
_BACKWARD = frozenset(op for op in _JUMPS if "BACKWARD" in opcode.opname[op])
_WATCH = bytearray(256)
"""Per opcode, whether the scan must stop at it: 1 jump, 2 return, 3 RETURN_CONST, 4 other."""
for _op in _JUMPS:
    _WATCH[_op] = 1
_WATCH[RETURN_VALUE] = 2
if RETURN_CONST >= 0:
    _WATCH[RETURN_CONST] = 3
if RESUME >= 0:
    _WATCH[RESUME] = 4
if env.YIELD_VALUE_DEPTH:
    _WATCH[YIELD_VALUE] = 4


def _ext_units(arg: int) -> int:
    """``EXTENDED_ARG`` prefixes an argument needs."""
    return 0 if arg < 0x100 else 1 if arg < 0x10000 else 2 if arg < 0x1000000 else 3


def _encode(op: int, arg: int, units: int = 0) -> bytes:
    """One instruction with its prefixes and zeroed caches (at least ``units`` prefixes)."""
    if arg < 0x100 and not units:
        return bytes((op, arg)) + _ZEROS[op]
    ext = max(_ext_units(arg), units)
    out = bytearray()
    for shift in range(ext * 8, 0, -8):
        out += bytes((EXTENDED_ARG, (arg >> shift) & 0xFF))
    out += bytes((op, arg & 0xFF))
    return bytes(out) + _ZEROS[op]


_ZEROS = [bytes(2 * count) for count in _CACHES]


# -- the probe's instructions, once per mode and parameter shape ------------------------------


class _Slot:
    """A kit constant by slot name, standing in for the object while templates are compiled."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _SymbolicKit:
    """What ``templates`` reads of a :class:`templates.Kit`: its mode and values (here, slots)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.values = {name: _Slot(name) for name in templates.SLOTS[mode]}


class Template:
    """One template's bytes with its constants and parameter left as holes.

    ``code`` holds the instructions with every hole's argument at 0; ``holes`` says,
    per hole, the byte of ``code`` that takes the argument and what goes there: the
    ordinal of a kit slot (constants appended to ``co_consts`` in :data:`templates.SLOTS`
    order, then literals) or ``-1`` for the parameter. Valid while every argument fits
    a byte (a function with 256 constants or locals takes the general path)."""

    __slots__ = ("code", "holes", "instrs", "top")

    def __init__(self, instrs: list[Any], ordinals: dict[Any, int]) -> None:
        out = bytearray()
        holes = []
        compiled = []  # (opcode, argument, hole): hole None, a slot ordinal, or -1
        for instr in instrs:
            op = instr.opcode
            hole = None
            arg = 0
            if instr.name == "LOAD_CONST":
                value = instr.arg
                hole = ordinals[value.name if isinstance(value, _Slot) else ("literal", value)]
            elif instr.name in ("LOAD_FAST", "LOAD_DEREF"):
                hole = -1
            elif op >= opcode.HAVE_ARGUMENT:
                arg = int(instr.arg)
            if hole is not None:
                holes.append((len(out) + 1, hole))
            compiled.append((op, arg, hole))
            out += _encode(op, arg)
        self.code = bytes(out)
        self.holes = tuple(holes)
        self.instrs = tuple(compiled)
        self.top = max((hole for _at, hole in holes), default=0)

    def fill(self, base: int, param: int) -> bytes:
        """The bytes for constants from ``co_consts[base]`` on and the parameter at ``param``."""
        if base + self.top < 0x100 and param < 0x100:
            out = bytearray(self.code)
            for at, hole in self.holes:
                out[at] = param if hole < 0 else base + hole
            return bytes(out)
        return b"".join(
            _encode(op, arg if hole is None else param if hole < 0 else base + hole)
            for op, arg, hole in self.instrs
        )


_PARAM = "<param>"
_templates: dict[tuple[str, int], tuple[tuple[Any, ...], Template, Template, Template]] = {}


def _templates_for(mode: str, param: int) -> tuple[tuple[Any, ...], Template, Template, Template]:
    """The constants to append (slot names, literals) and the entry, epilogue and handler
    templates of ``mode``; ``param``: 0 none, 1 a local, 2 a cell."""
    key = (mode, param)
    found = _templates.get(key)
    if found is None:
        kit: Any = _SymbolicKit(mode)
        name = _PARAM if param else None
        parts = (
            templates.entry(kit, templates.load_param(name, param == 2)),
            templates.before_return(kit),
            templates.handler(kit),
        )
        ordinals: dict[Any, int] = {}
        appended: list[Any] = []
        for part in parts:
            for instr in part:
                if instr.name == "LOAD_CONST":
                    arg = instr.arg
                    key_ = arg.name if isinstance(arg, _Slot) else ("literal", arg)
                    if key_ not in ordinals:
                        ordinals[key_] = len(appended)
                        appended.append(key_)
        found = (tuple(appended),) + tuple(Template(part, ordinals) for part in parts)  # type: ignore[assignment]
        _templates[key] = found  # type: ignore[assignment]
    return found  # type: ignore[return-value]


# -- tables -------------------------------------------------------------------------------------


def _read_exception_table(table: bytes) -> list[list[int]]:
    """``[start, end, target, depth, lasti]`` per entry, in code units."""
    entries = []
    pos, size = 0, len(table)
    while pos < size:
        fields = []
        for _ in range(4):
            byte = table[pos]
            pos += 1
            value = byte & 0x3F
            while byte & 0x40:
                byte = table[pos]
                pos += 1
                value = (value << 6) | (byte & 0x3F)
            fields.append(value)
        start, length, target, depth_lasti = fields
        entries.append([start, start + length, target, depth_lasti >> 1, depth_lasti & 1])
    return entries


def _varint_be(value: int) -> bytes:
    """The exception table's variable-length number: 6 bits a byte, most significant first."""
    if value < 0x40:
        return _SMALL[value]
    if value < 0x1000:
        return bytes((0x40 | value >> 6, value & 0x3F))
    chunks = [value & 0x3F]
    value >>= 6
    while value:
        chunks.append(0x40 | (value & 0x3F))
        value >>= 6
    return bytes(reversed(chunks))


_SMALL = [bytes((value,)) for value in range(0x40)]


def _write_exception_table(entries: list[tuple[int, int, int, int, int]]) -> bytes:
    out = bytearray()
    for start, end, target, depth, lasti in entries:
        first = _varint_be(start)
        out.append(first[0] | 0x80)  # an entry's first byte is marked
        out += first[1:]
        out += _varint_be(end - start)
        out += _varint_be(target)
        out += _varint_be((depth << 1) | lasti)
    return bytes(out)


_NONE_ENTRY = [bytes((0x80 | (15 << 3) | (n - 1),)) for n in range(1, 9)]


def _no_location(units: int, out: bytearray) -> None:
    while units > 8:
        out += _NONE_ENTRY[7]
        units -= 8
    if units:
        out += _NONE_ENTRY[units - 1]


_ENTRY_UNITS = bytes(((byte & 7) + 1) if byte & 0x80 else 0 for byte in range(256))
_IS_HEAD = bytes(1 if byte & 0x80 else 0 for byte in range(256))
_NOT_HEAD = bytes(range(0x80))


def _read_locations(table: bytes) -> tuple[list[int], list[int]]:
    """Per location entry, its first code unit (and the end); per byte of ``table``, how
    many entries start at or before it (the entry ``k`` starts at the first byte whose
    count is ``k + 1``).

    Every entry starts with a byte whose top bit is set and no other byte has it
    (CPython's own decoder walks backwards by that rule), so the entries are found
    without decoding them, by C-level passes over the bytes."""
    starts = list(accumulate(table.translate(_ENTRY_UNITS, _NOT_HEAD), initial=0))
    return starts, list(accumulate(table.translate(_IS_HEAD)))


def _continued(entry: bytes) -> tuple[int, bytes]:
    """The head code and body of a location entry continued: the same location, line delta 0."""
    code = (entry[0] >> 3) & 15
    if code < 10 or code == 15:  # short forms have no line delta; "none" has none at all
        return code, entry[1:]
    if code < 13:  # one-line forms: the delta is in the code
        return 10, entry[1:]
    if code == 13:  # no columns: just the delta
        return 13, b"\x00"
    pos = 1  # long form: skip the line delta, keep end line, column and end column
    while entry[pos] & 0x40:
        pos += 1
    return 14, b"\x00" + entry[pos + 1 :]


def _emit(entry: bytes, units: int, out: bytearray, first: bool) -> None:
    """``entry``'s location over ``units`` code units, in entries of at most 8.

    ``first``: this is where the entry's own line delta applies (otherwise the running
    line is already the entry's, and a delta of 0 continues it)."""
    if first:
        piece = 8 if units > 8 else units
        out.append((entry[0] & 0xF8) | (piece - 1))
        out += entry[1:]
        units -= piece
        if not units:
            return
    head, body = _continued(entry)
    full, rest = divmod(units, 8)
    if full:
        out += (bytes((0x80 | (head << 3) | 7,)) + body) * full
    if rest:
        out.append(0x80 | (head << 3) | (rest - 1))
        out += body


# -- the patch ----------------------------------------------------------------------------------


def _core_python(
    raw: bytes, exceptions: bytes, lines: bytes, prologue: bytes, epilogue: bytes, tail: bytes
) -> tuple[bytes, bytes, bytes]:
    """The woven ``co_code``, ``co_exceptiontable`` and ``co_linetable`` from the original's,
    with the entry code, the epilogue of every return and the handler as given.

    ``agent/weaving/_patch.c`` is the same in C (used where it is built); both raise
    ``ValueError`` for code they do not handle."""
    size = len(raw)
    # Every code unit is (opcode, argument) and a cache unit is (CACHE, 0): the even
    # bytes alone show which units begin instructions, and those needing an edit are
    # found by C-level passes (the few matches are all the Python work per function).
    ops = raw[::2]
    units = len(ops)
    edits: list[tuple[int, int, int, int, int]] = []  # (start byte, opcode byte, op, arg, kind)
    resume = -1
    for match in _WATCHED.finditer(ops.translate(_WATCH)):
        unit = match.start()
        op = ops[unit]
        arg = raw[2 * unit + 1]
        start = unit
        shift = 8
        while start and ops[start - 1] == EXTENDED_ARG:
            start -= 1
            arg |= raw[2 * start + 1] << shift
            shift += 8
        kind = _WATCH[op]
        if op == RESUME:
            if resume < 0:
                resume = unit
            if arg & env.RESUME_DEPTH1_MASK:
                edits.append((2 * start, 2 * unit, op, arg & ~env.RESUME_DEPTH1_MASK, 4))
        elif kind != 4:
            edits.append((2 * start, 2 * unit, op, arg, kind))
        elif arg == 1:  # 3.12's YIELD_VALUE: the handler depth, one more with the token
            edits.append((2 * start, 2 * unit, op, 2, 4))
    if resume < 0:
        raise ValueError("no RESUME")

    def starts_instruction(offset: int) -> bool:
        """Whether byte ``offset`` begins an instruction (prefixes included) or ends the code."""
        unit = offset >> 1
        if unit >= units:
            return unit == units and not offset & 1
        return bool(ops[unit]) and not (unit and ops[unit - 1] == EXTENDED_ARG) and not offset & 1

    handlers = _read_exception_table(exceptions)
    for entry in handlers:
        if not all(starts_instruction(2 * value) for value in entry[:3]):
            raise ValueError("an exception range does not fall on instructions")
    # Where the entry goes (rewrite._body_start): after RESUME, or where the first range
    # starts when that is RESUME or before it (3.12+ generators, PEP 479's range).
    resume_start = 2 * resume
    while resume_start and ops[resume_start // 2 - 1] == EXTENDED_ARG:
        resume_start -= 2
    body = 2 * resume + 2
    if handlers and handlers[0][0] * 2 <= resume_start:
        body = handlers[0][0] * 2
    for entry in handlers:
        if entry[0] * 2 < body:
            raise ValueError("an exception range starts before the body")

    # New sizes. An edit replaces the instruction at `start` (and, for a return, puts
    # the epilogue before it, in the same group: jumps to the return run the epilogue).
    # Jumps get their final size by iterating: insertions only grow distances.
    count = len(edits)
    old_len = [0] * count
    new_code: list[bytes] = [b""] * count
    targets = [0] * count  # old byte offset a jump aims at
    for index, (start, at, op, arg, kind) in enumerate(edits):
        end = at + _STEP[op]
        old_len[index] = end - start
        if kind == 1:
            after = end
            targets[index] = after - 2 * arg if op in _BACKWARD else after + 2 * arg
            new_code[index] = raw[start:end]  # provisional: same size
        elif kind == 2:
            new_code[index] = epilogue + raw[start:end]
        elif kind == 3:
            new_code[index] = (
                _encode(LOAD_CONST, arg, (at - start) // 2) + epilogue + _encode(RETURN_VALUE, 0)
            )
        else:
            new_code[index] = _encode(op, arg, (at - start) // 2)
    edit_starts = [edit[0] for edit in edits]
    prologue_len = len(prologue)

    def moved(offset: int, shifts: list[int]) -> int:
        """New byte offset of the instruction (group) that starts at old ``offset``."""
        index = bisect_right(edit_starts, offset - 1)  # edits strictly before offset
        new = offset + shifts[index]
        if offset >= body:
            new += prologue_len
        return new

    for _ in range(8):
        shifts = [0] * (count + 1)  # shifts[i]: growth of edits 0..i-1
        total = 0
        for index in range(count):
            shifts[index] = total
            total += len(new_code[index]) - old_len[index]
        shifts[count] = total
        changed = False
        for index, (start, at, op, _arg, kind) in enumerate(edits):
            if kind != 1:
                continue
            target = targets[index]
            if target >= size or not starts_instruction(target):
                raise ValueError(f"a jump at {at} aims inside an instruction ({target})")
            new_start = moved(start, shifts)
            new_target = moved(target, shifts)
            length = len(new_code[index])
            after = new_start + length
            distance = (after - new_target if op in _BACKWARD else new_target - after) // 2
            if distance < 0:
                raise ValueError(f"a jump at {at} changed direction")
            encoded = _encode(op, distance, (length - 2 - 2 * _CACHES[op]) // 2)
            if len(encoded) != length:
                changed = True
            new_code[index] = encoded
        if not changed:
            break
    else:  # pragma: no cover - a distance cannot keep growing past 3 prefixes
        raise ValueError("jump sizes did not settle")

    # The code: copied slices between the edits, the entry code at the body's start.
    pieces = []
    cursor = 0
    placed = False
    for index in range(count):
        start = edit_starts[index]
        if not placed and start >= body:
            pieces += (raw[cursor:body], prologue)
            cursor, placed = body, True
        pieces += (raw[cursor:start], new_code[index])
        cursor = start + old_len[index]
    if not placed:
        pieces += (raw[cursor:body], prologue)
        cursor = body
    pieces += (raw[cursor:], tail)
    handler_at = (size + shifts[count] + prologue_len) // 2

    # The exception table: the function's own ranges moved and one deeper, ours in the gaps.
    def unit(offset_units: int) -> int:
        return moved(offset_units * 2, shifts) // 2

    own = [
        (unit(start), unit(end), unit(target), depth + 1, lasti)
        for start, end, target, depth, lasti in handlers
    ]
    # Ours: from the body's first instruction after the entry to the handler, minus the
    # function's ranges and every return group (epilogue + return).
    holes = sorted(
        [(start, end) for start, end, _t, _d, _l in own]
        + [
            (moved(edit[0], shifts) // 2, (moved(edit[0], shifts) + len(new_code[i])) // 2)
            for i, edit in enumerate(edits)
            if edit[4] in (2, 3)
        ]
    )
    ours = []
    cursor_u = moved(body, shifts) // 2
    for start, end in holes:
        if start > cursor_u:
            ours.append((cursor_u, start, handler_at, 1, 1))
        if end > cursor_u:
            cursor_u = end
    if handler_at > cursor_u:
        ours.append((cursor_u, handler_at, handler_at, 1, 1))
    table = sorted(own + ours)

    # The location table: untouched entries copied as they are, grown ones re-headed,
    # "no location" for the entry code and the handler.
    loc_starts, heads = _read_locations(lines)
    if loc_starts[-1] != size // 2:
        raise ValueError("the location table does not cover the code")
    grow: dict[int, int] = {}
    for index in range(count):
        extra = len(new_code[index]) - old_len[index]
        if extra:
            entry = bisect_right(loc_starts, edit_starts[index] // 2) - 1
            grow[entry] = grow.get(entry, 0) + extra // 2
    body_unit = body // 2
    split_entry = bisect_right(loc_starts, body_unit) - 1
    out = bytearray()
    copied = 0
    last = len(loc_starts) - 1  # entries
    for index in sorted({split_entry, *grow}):
        if not 0 <= index < last:
            raise ValueError("no location entry covers an edit")
        begin = bisect_left(heads, index + 1)
        out += lines[copied:begin]
        copied = bisect_left(heads, index + 2) if index + 1 < last else len(lines)
        entry = lines[begin:copied]
        length = loc_starts[index + 1] - loc_starts[index] + grow.get(index, 0)
        if index == split_entry:
            before = body_unit - loc_starts[index]
            if before:
                _emit(entry, before, out, True)
            _no_location(len(prologue) // 2, out)
            _emit(entry, length - before, out, not before)
        else:
            _emit(entry, length, out, True)
    out += lines[copied:]
    _no_location(len(tail) // 2, out)

    return b"".join(pieces), _write_exception_table(table), bytes(out)


def patch_code(
    code: CodeType, kit: templates.Kit, param: str | None, core: Any = None
) -> tuple[CodeType, tuple[tuple[int, str], ...]]:
    """``code`` woven for ``kit``, passing parameter ``param`` to the entry (steps mode),
    and where the kit's constants sit in its ``co_consts`` (``templates.Kit.slots_in``).

    ``core``: :func:`_core_python` or the C core (default: the C core where it is built)."""
    mode = kit.mode
    param_kind = 0
    param_index = 0
    if param is not None:
        param_index = code.co_varnames.index(param)
        param_kind = 2 if param in code.co_cellvars else 1
    appended, entry_t, return_t, handler_t = _templates_for(mode, param_kind)
    consts = list(code.co_consts)
    base = len(consts)
    values = kit.values
    consts += [values[key] if type(key) is str else key[1] for key in appended]
    prologue = entry_t.fill(base, param_index)
    epilogue = return_t.fill(base, param_index)
    tail = handler_t.fill(base, param_index)

    try:
        co_code, exceptions, lines = (core or _core)(
            code.co_code, code.co_exceptiontable, code.co_linetable, prologue, epilogue, tail
        )
    except (ValueError, IndexError) as exc:  # IndexError: a table that ends too soon
        raise Unpatchable(str(exc) or type(exc).__name__) from None
    woven = code.replace(
        co_code=co_code,
        co_consts=tuple(consts),
        co_exceptiontable=exceptions,
        co_linetable=lines,
        co_stacksize=code.co_stacksize + templates.EXTRA_STACK,
    )
    slots = tuple((base + index, key) for index, key in enumerate(appended) if type(key) is str)
    return woven, slots


def _native() -> Any:
    """The C core (``agent.weaving._patch``), set up with this interpreter's opcodes, or None."""
    if os.environ.get("TWINWEAVE_PURE_PYTHON") or not env.EXCEPTION_TABLE:
        return None
    try:
        from agent.weaving import _patch  # type: ignore[attr-defined]
    except ImportError:
        return None
    kinds = bytearray(_WATCH)
    for op in _BACKWARD:
        kinds[op] = 5  # the C core's mark for a backward jump
    _patch.setup(
        bytes(_CACHES),
        bytes(kinds),
        EXTENDED_ARG,
        RESUME,
        RETURN_VALUE,
        RETURN_CONST,
        LOAD_CONST,
        env.RESUME_DEPTH1_MASK,
    )
    return _patch.core


NATIVE = _native()
"""The C core when it is built (and ``TWINWEAVE_PURE_PYTHON`` is unset), else None."""
_core = NATIVE or _core_python
