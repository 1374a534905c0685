"""The direct patcher (3.11+): the same woven code as the bytecode library, and its fallback.

The library path (``rewrite._weave_with_library``) is the reference: it is what the
stdlib regression suites were first made green with. Here every function of whole
stdlib modules (test modules included: pattern matching, exception groups,
generators, coroutines, huge functions) is woven both ways for every probe mode,
and the two results must agree instruction for instruction: the same operations
with the same arguments (jump targets compared as instructions, constants and
names as values), the same location for each instruction, the same handler, depth
and lasti flag for each instruction, the same stack size, and the probe's constants
at the slots the code cache will look for.
"""

from __future__ import annotations

import dis
import importlib.util
import textwrap
from types import CodeType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import events, speedups
from agent.events import JoinPoint, Probe
from agent.weaving import env, rewrite, templates

if not env.EXCEPTION_TABLE:
    pytest.skip("the direct patcher exists for 3.11+ (exception tables)", allow_module_level=True)

from agent.weaving import patch

MODULES = [
    "tarfile",
    "difflib",
    "typing",
    "asyncio.tasks",
    "asyncio.base_events",
    "argparse",
    "contextlib",
    "dataclasses",
    "enum",
    "json.decoder",
    "re._parser",
    "test.test_patma",
    "test.test_exception_group",
    "test.test_generators",
    "test.test_coroutines",
    "test.test_grammar",
]
"""Modules whose every function is woven both ways, with every probe mode."""


def _walk(code: CodeType) -> list[CodeType]:
    found = [code]
    for const in code.co_consts:
        if isinstance(const, CodeType):
            found.extend(_walk(const))
    return found


def _functions(module: str) -> list[CodeType]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    with open(spec.origin, encoding="utf-8") as handle:
        top = compile(handle.read(), spec.origin, "exec")
    return [code for code in _walk(top) if rewrite.is_join_point(code)]


def shape(code: CodeType) -> list[tuple[Any, ...]]:
    """Per instruction (prefixes and caches left out): what it does, its location, its handler."""
    everything = list(dis.get_instructions(code))
    index: dict[int, int] = {}
    count = 0
    for instr in everything:  # a prefix's offset stands for the instruction it prefixes
        index[instr.offset] = count
        if instr.opname not in ("EXTENDED_ARG", "CACHE"):
            count += 1
    table = dis._parse_exception_table(code)  # type: ignore[attr-defined]
    by_name = set(dis.hasconst) | set(dis.hasname) | set(dis.haslocal) | set(dis.hasfree)
    out = []
    for instr in everything:
        if instr.opname in ("EXTENDED_ARG", "CACHE"):
            continue
        if instr.opcode in dis.hasjrel:
            what = (instr.opname, "->", index[instr.argval])
        elif instr.opcode in by_name:
            what = (instr.opname, instr.argrepr)
        else:
            what = (instr.opname, instr.arg)
        handler = None
        for entry in table:
            if entry.start <= instr.offset < entry.end:
                handler = (index[entry.target], entry.depth, entry.lasti)
                break
        out.append((what, tuple(instr.positions), handler))
    return out


def _probes(code: CodeType) -> list[tuple[str, Probe]]:
    name = code.co_qualname
    params = events.parameters(code)
    probes = [("python", Probe(JoinPoint("a", "service", name)))]
    if speedups.available():
        probes.append(("c", Probe(JoinPoint("a", "service", name), recorder=speedups.recorder())))
    # Steps mode: the message id from the first parameter (a cell when a closure uses
    # it), and with no parameter at all.
    message_id = params[0] if params else None
    probes.append(
        ("steps", Probe(JoinPoint("a", "workflow", name, message_id), step_receivers=[("t", id)]))
    )
    return probes


CORES = ["python", "c"] if patch.NATIVE is not None else ["python"]
"""The direct patcher's cores here: its Python core, and its C core where it is built."""


def _core(name: str) -> Any:
    return patch._core_python if name == "python" else patch.NATIVE


def _both(code: CodeType, probe: Probe, core: str = CORES[-1]) -> tuple[Any, Any, CodeType, Any]:
    kit = templates.Kit(probe, bool(code.co_flags & events.CO_SUSPENDING))
    param = rewrite.layout(code, probe)[1]
    direct, slots = patch.patch_code(code, kit, param, _core(core))
    library = rewrite._weave_with_library(code, kit, param)
    return direct, slots, library, kit


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("module", MODULES)
def test_direct_patch_equals_the_library_over_whole_modules(module, core):
    codes = _functions(module)
    assert len(codes) > 5, module
    modes = set()
    for code in codes:
        for mode, probe in _probes(code):
            direct, slots, library, kit = _both(code, probe, core)
            where = (module, code.co_qualname, mode)
            assert shape(direct) == shape(library), where
            assert direct.co_stacksize == library.co_stacksize, where
            assert slots == kit.slots_in(direct.co_consts), where
            assert sorted(name for _i, name in slots) == sorted(kit.values), where
            for attr in ("co_varnames", "co_names", "co_flags", "co_firstlineno", "co_qualname"):
                assert getattr(direct, attr) == getattr(code, attr), (where, attr)
            modes.add(mode)
    assert modes >= {"python", "steps"}


def _run(source: str, name: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(source), "<patched>", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("returns", [1, 4, 9, 10, 11, 12, 20])
def test_jumps_that_grow_a_prefix_still_land(returns, core):
    """A forward jump over the returns' epilogues crosses 255 code units and takes an
    EXTENDED_ARG; the jumps after it move with it, backward jumps over it too."""
    body = "\n".join(f"        if x == {i}:\n            return {i} * y" for i in range(returns))
    source = f"""
    def f(x, y):
        total = 0
        while y > 0:
            if x < 0:
{textwrap.indent(body, "        ")}
            total += y
            y -= 1
        return total
    """
    fn = _run(source, "f")
    probe = Probe(JoinPoint("a", "service", "f"))
    direct, _slots, library, _kit = _both(fn.__code__, probe, core)
    assert shape(direct) == shape(library)
    expected = [fn(x, y) for x in (-5, -1, 0, 3) for y in (0, 1, 4)]
    fn.__code__ = direct
    assert [fn(x, y) for x in (-5, -1, 0, 3) for y in (0, 1, 4)] == expected
    assert len(probe.ok) == len(expected)


@pytest.mark.parametrize("core", CORES)
def test_message_id_from_a_cell_parameter(core):
    """Steps mode reading the message id from a parameter a closure keeps (LOAD_DEREF)."""
    fn = _run(
        """
        def f(message, other=1):
            def peek():
                return message
            return peek() + other
        """,
        "f",
    )
    assert "message" in fn.__code__.co_cellvars
    steps: list[Any] = []
    probe = Probe(JoinPoint("a", "workflow", "f", "message"), step_receivers=[("t", steps.append)])
    direct, _slots, library, _kit = _both(fn.__code__, probe, core)
    assert shape(direct) == shape(library)
    fn.__code__ = direct
    assert fn(41) == 42
    assert [step.message_id for step in steps] == ["41"]


@pytest.mark.parametrize("core", CORES)
def test_a_function_too_odd_for_the_patcher_is_woven_by_the_library(core, monkeypatch):
    """A location table that does not cover the code: the patcher refuses it, the
    library weaves it, and the woven function counts its calls."""
    fn = _run(
        """
        def f(a):
            if a:
                return a * 2
            return -1
        """,
        "f",
    )
    odd = fn.__code__.replace(co_linetable=b"")
    probe = Probe(JoinPoint("a", "service", "f"))
    kit = templates.Kit(probe, False)
    with pytest.raises(patch.Unpatchable, match="location table"):
        patch.patch_code(odd, kit, None, _core(core))
    monkeypatch.setattr(patch, "_core", _core(core))
    fn.__code__ = rewrite.weave_code(odd, probe)
    assert rewrite.is_woven(fn.__code__)
    assert (fn(3), fn(0)) == (6, -1)
    assert len(probe.ok) == 2


def test_direct_false_takes_the_library():
    fn = _run("def f(a):\n    return a + 1\n", "f")
    probe = Probe(JoinPoint("a", "service", "f"))
    kit = templates.Kit(probe, False)
    by_library = rewrite._weave_with_library(fn.__code__, kit, None)
    assert rewrite.weave_code(fn.__code__, probe, direct=False).co_code == by_library.co_code
    assert (
        rewrite.weave_code(fn.__code__, probe).co_code
        == patch.patch_code(fn.__code__, kit, None)[0].co_code
    )


def _real_parts() -> list[tuple[bytes, bytes, bytes]]:
    codes = _functions("difflib")[:40]
    return [(c.co_code, c.co_exceptiontable, c.co_linetable) for c in codes]


PARTS = _real_parts()
_PROBE = Probe(JoinPoint("a", "service", "f"))
_KIT = templates.Kit(_PROBE, False)
_APPENDED, _ENTRY, _RETURN, _HANDLER = patch._templates_for("python", 0)
TEMPLATES = tuple(t.fill(40, 0) for t in (_ENTRY, _RETURN, _HANDLER))


@pytest.mark.parametrize("core", CORES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_code_and_tables_are_refused_never_crash(core, data):
    """Random and mutated code, exception and location tables: each core returns three
    byte strings or refuses with ValueError (the Python core may also hit the end of a
    table: IndexError); the C core never reads or writes out of bounds (a crash here
    would take the test process down)."""
    parts = list(data.draw(st.sampled_from(PARTS)))
    for index in range(3):
        how = data.draw(st.sampled_from(["keep", "random", "flip", "cut"]))
        if how == "random":
            parts[index] = data.draw(st.binary(max_size=64))
        elif how == "flip" and parts[index]:
            at = data.draw(st.integers(0, len(parts[index]) - 1))
            value = data.draw(st.integers(0, 255))
            parts[index] = parts[index][:at] + bytes((value,)) + parts[index][at + 1 :]
        elif how == "cut":
            parts[index] = parts[index][: data.draw(st.integers(0, len(parts[index])))]
    try:
        result = _core(core)(*parts, *TEMPLATES)
    except ValueError:
        return
    except IndexError:
        assert core == "python"
        return
    assert isinstance(result, tuple) and len(result) == 3
    assert all(isinstance(part, bytes) for part in result)
