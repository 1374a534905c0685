"""The bytecode backend: woven functions behave as before and report every call."""

from __future__ import annotations

import asyncio
import dis
import functools
import inspect
import pickle
import sys
import textwrap
import threading
import time
import traceback
from types import CodeType, FunctionType
from typing import Any, Callable

import pytest

from agent import events
from agent.events import JoinPoint, Probe, Step
from agent.weaving import env
from agent.weaving.rewrite import is_woven, probe_of, weave_code, weave_tree


def timing_probe(name: str = "f") -> Probe:
    return Probe(JoinPoint("a", "service", name))


def steps_probe(name: str = "f", message_id: str | None = None) -> tuple:
    steps: list[Step] = []
    probe = Probe(
        JoinPoint("a", "workflow", name, message_id), step_receivers=[("test", steps.append)]
    )
    return probe, steps


def weave(fn: Callable[..., Any], probe: Probe) -> Probe:
    """Weave ``fn`` in place (also through staticmethod/classmethod/property wrappers)."""
    fn.__code__ = weave_code(fn.__code__, probe)
    return probe


PROBE_KINDS = ["timing", "steps"]


def make_probe(kind: str, name: str = "f") -> Probe:
    return timing_probe(name) if kind == "timing" else steps_probe(name)[0]


# --- functions under test, defined at module level so they pickle by name ---------------


def plain(a, b=2, *args, c=3, **kw):
    return a + b + c + len(args) + len(kw)


def returns_in_loop(n):
    for i in range(n):
        if i == 3:
            return i
    return -1


def with_try(x):
    try:
        return 10 // x
    except ZeroDivisionError:
        return None
    finally:
        x = 0


def raises(kind):
    if kind == "value":
        raise ValueError("bad value")
    if kind == "key":
        return {}["missing"]
    return "ok"


def catches_inside():
    try:
        raise KeyError("x")
    except KeyError:
        return "caught"


def conditional_return(a):
    return "yes" if a else "no"


def recursive(n):
    return 1 if n <= 1 else n * recursive(n - 1)


def uses_locals(a, b):
    c = a + b
    return sorted(locals())


def gen(n):
    yield from range(n)
    return "done"


def gen_raises():
    yield 1
    raise RuntimeError("inside")


def gen_delegates():
    result = yield from gen(3)
    yield result


async def coro(x):
    await asyncio.sleep(0)
    return x * 2


async def coro_raises():
    await asyncio.sleep(0)
    raise LookupError("async")


async def agen(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def outer(a):
    def inner(b):
        return a + b

    return inner


def cell_param(message):
    def peek():
        return message

    return peek()


class Base:
    def hello(self):
        return "base"


class Child(Base):
    def hello(self):
        return "child+" + super().hello()

    @staticmethod
    def static(x):
        return x + 1

    @classmethod
    def klass(cls, x):
        return (cls.__name__, x)

    @property
    def prop(self):
        return 42


class Message:
    def __init__(self, unique_id):
        self.unique_id = unique_id


def on_message(message):
    return message.unique_id


# --- behaviour -------------------------------------------------------------------------


@pytest.fixture
def restore():
    """Put back the original code of everything a test weaves."""
    saved: dict[FunctionType, CodeType] = {}

    def keep(*fns: FunctionType) -> None:
        for fn in fns:
            saved.setdefault(fn, fn.__code__)

    yield keep
    for fn, code in saved.items():
        fn.__code__ = code


CASES = [
    (plain, lambda: plain(1, 2, 3, 4, c=5, d=6)),
    (returns_in_loop, lambda: (returns_in_loop(10), returns_in_loop(2))),
    (with_try, lambda: (with_try(0), with_try(5))),
    (catches_inside, catches_inside),
    (conditional_return, lambda: (conditional_return(1), conditional_return(0))),
    (recursive, lambda: recursive(6)),
    (uses_locals, lambda: uses_locals(1, 2)),
    (gen, lambda: list(gen(4))),
    (gen_delegates, lambda: list(gen_delegates())),
    (coro, lambda: asyncio.run(coro(21))),
    (outer, lambda: outer(1)(2)),
    (cell_param, lambda: cell_param("m")),
    (Child.hello, lambda: Child().hello()),
    (Child.static, lambda: Child.static(1)),
    (Child.klass.__func__, lambda: Child.klass(2)),
    (Child.prop.fget, lambda: Child().prop),
]


@pytest.mark.parametrize("kind", PROBE_KINDS)
@pytest.mark.parametrize("fn,call", CASES, ids=[c[0].__qualname__ for c in CASES])
def test_same_result_and_every_call_counted(restore, kind, fn, call):
    expected = call()
    restore(fn)
    probe = weave(fn, make_probe(kind, fn.__qualname__))
    assert call() == expected
    calls = len(probe.ok) + len(probe.failed)
    assert calls >= 1
    assert probe.failed == []
    assert all(isinstance(d, int) and d >= 0 for d in probe.ok)


def test_recursion_counts_each_level(restore):
    restore(recursive)
    probe = weave(recursive, timing_probe())
    assert recursive(5) == 120
    assert len(probe.ok) == 5


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_failure_is_counted_and_traceback_unchanged(restore, kind):
    def run() -> list[str]:
        try:
            raises("value")
        except ValueError:
            return traceback.format_exc().splitlines()[-3:]
        raise AssertionError("did not raise")

    before = run()
    restore(raises)
    probe = weave(raises, make_probe(kind))
    after = run()
    assert after == before
    with pytest.raises(KeyError):
        raises("key")
    assert raises("ok") == "ok"
    assert len(probe.failed) == 2
    assert len(probe.ok) == 1


def test_exception_context_and_exc_info_untouched(restore):
    restore(raises)
    weave(raises, timing_probe())
    try:
        try:
            raise OSError("first")
        except OSError:
            raises("value")
    except ValueError as exc:
        assert isinstance(exc.__context__, OSError)
    assert sys.exc_info() == (None, None, None)


def test_generator_timed_from_first_resume_to_exhaustion(restore):
    restore(gen)
    probe = weave(gen, timing_probe())
    g = gen(3)
    assert probe.ok == []  # creating the generator is not a call yet
    assert next(g) == 0
    time.sleep(0.02)
    assert list(g) == [1, 2]
    assert len(probe.ok) == 1
    assert probe.ok[0] >= 20_000_000


def test_generator_closed_early_is_not_a_failure(restore):
    restore(gen)
    probe = weave(gen, timing_probe())
    g = gen(5)
    next(g)
    g.close()
    assert len(probe.ok) == 1 and probe.failed == []


def test_generator_that_raises_fails(restore):
    restore(gen_raises)
    probe = weave(gen_raises, timing_probe())
    g = gen_raises()
    assert next(g) == 1
    with pytest.raises(RuntimeError):
        next(g)
    assert len(probe.failed) == 1


def test_coroutine_failure(restore):
    restore(coro_raises)
    probe = weave(coro_raises, timing_probe())
    with pytest.raises(LookupError):
        asyncio.run(coro_raises())
    assert len(probe.failed) == 1


def test_async_generator(restore):
    restore(agen)
    probe = weave(agen, timing_probe())

    async def consume():
        return [i async for i in agen(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    assert len(probe.ok) == 1


def test_threads_each_call_counted(restore):
    restore(plain)
    probe = weave(plain, timing_probe())

    def work():
        for _ in range(2000):
            plain(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(probe.ok) == 8000


def test_identity_signature_pickle_inspect(restore):
    sig = inspect.signature(plain)
    restore(plain, gen, coro, agen)
    fn_id = id(plain)
    for fn in (plain, gen, coro, agen):
        original = fn.__code__
        weave(fn, timing_probe())
        woven = fn.__code__
        for attr in (
            "co_name",
            "co_flags",
            "co_argcount",
            "co_posonlyargcount",
            "co_kwonlyargcount",
            "co_varnames",
            "co_cellvars",
            "co_freevars",
            "co_firstlineno",
            "co_filename",
            "co_nlocals",
        ):
            assert getattr(woven, attr) == getattr(original, attr), attr
        if env.HAS_CO_QUALNAME:
            assert woven.co_qualname == original.co_qualname
    assert id(plain) == fn_id
    assert inspect.signature(plain) == sig
    assert pickle.loads(pickle.dumps(plain)) is plain
    assert inspect.isgeneratorfunction(gen)
    assert inspect.iscoroutinefunction(coro)
    assert inspect.isasyncgenfunction(agen)
    assert uses_locals(1, 2) == ["a", "b", "c"]


def _line_events(fn: Callable[[], Any]) -> list[tuple]:
    events: list[tuple] = []
    code_names = {"with_try", "returns_in_loop", "raises", "gen", "catches_inside"}

    def tracer(frame, event, arg):
        if frame.f_code.co_name in code_names:
            events.append((frame.f_code.co_name, event, frame.f_lineno))
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    except Exception:
        pass
    finally:
        sys.settrace(None)
    return events


@pytest.mark.parametrize(
    "fn,call",
    [
        (with_try, lambda: (with_try(0), with_try(5))),
        (returns_in_loop, lambda: returns_in_loop(5)),
        (raises, lambda: raises("value")),
        (catches_inside, catches_inside),
        (gen, lambda: list(gen(2))),
    ],
)
def test_tracing_sees_the_same_line_events(restore, fn, call):
    before = _line_events(call)
    restore(fn)
    weave(fn, timing_probe())
    after = _line_events(call)
    raise_line = ("raises", "exception", raises.__code__.co_firstlineno + 2)
    if env.PY == (3, 9) and raise_line in before:
        # 3.9 cannot restore the frame's line before re-raising from a block
        # handler, so the final 'return' of an exception exit reports the handler's
        # line; every event up to the exception is the same.
        cut = before.index(raise_line) + 1
        before, after = before[:cut], after[:cut]
    assert after == before


def test_line_numbers_of_original_instructions_kept():
    def lines(code: CodeType) -> set:
        return {line for _, line in dis.findlinestarts(code) if line is not None}

    for fn in (with_try, returns_in_loop, gen, Child.hello):
        woven = weave_code(fn.__code__, timing_probe())
        assert lines(woven) == lines(fn.__code__)


def test_steps_carry_message_id_order_and_failure(restore):
    restore(on_message, raises)
    probe, steps = steps_probe("on_message", "message.unique_id")
    weave(on_message, probe)
    assert on_message(Message("m-1")) == "m-1"
    assert on_message(Message("m-2")) == "m-2"
    assert [s.message_id for s in steps] == ["m-1", "m-2"]
    assert [s.order for s in steps] == [0, 0]
    assert all(s.failed is None and s.type == "workflow" for s in steps)
    probe2, steps2 = steps_probe("raises")
    weave(raises, probe2)
    with pytest.raises(ValueError):
        raises("value")
    assert steps2[0].failed == "ValueError"


def test_message_id_from_a_cell_parameter(restore):
    restore(cell_param)
    probe, steps = steps_probe("cell_param", "message")
    weave(cell_param, probe)
    assert cell_param("abc") == "abc"
    assert steps[0].message_id == "abc"


def test_nested_steps_share_the_message_and_count_order(restore):
    restore(on_message, plain)
    outer_probe, steps = steps_probe("on_message", "message.unique_id")
    inner_probe = Probe(JoinPoint("b", "service", "plain"), step_receivers=[("test", steps.append)])
    weave(plain, inner_probe)

    def flow(message):
        plain(1)
        plain(2)
        return message.unique_id

    restore(flow)
    weave(flow, outer_probe)
    flow(Message("m-9"))
    assert [(s.name, s.message_id, s.order) for s in steps] == [
        ("plain", "m-9", 1),
        ("plain", "m-9", 2),
        ("on_message", "m-9", 0),
    ]


def test_weave_tree_names_and_weaves_once():
    source = textwrap.dedent(
        """
        def top(x):
            def inner(y):
                return y
            return inner(x)

        class K:
            def m(self):
                return (lambda: 1)()

            class Nested:
                def deep(self):
                    return [i for i in range(2)]
        """
    )
    module_code = compile(source, "<test>", "exec")
    seen: list[str] = []

    def resolver(code: CodeType, qualname: str) -> Probe | None:
        seen.append(qualname)
        return timing_probe(qualname)

    woven = weave_tree(module_code, "", resolver)
    assert sorted(seen) == sorted(
        ["top", "top.<locals>.inner", "K.m", "K.m.<locals>.<lambda>", "K.Nested.deep"]
    )
    namespace: dict[str, Any] = {}
    exec(woven, namespace)
    assert namespace["top"](3) == 3
    assert namespace["K"]().m() == 1
    assert namespace["K"].Nested().deep() == [0, 1]
    assert is_woven(namespace["top"].__code__)
    assert probe_of(namespace["top"].__code__).joinpoint.name == "top"
    assert len(probe_of(namespace["K"].m.__code__).ok) == 1
    seen.clear()
    assert weave_tree(woven, "", resolver) is woven  # already woven: untouched
    assert seen == []


def test_unmatched_tree_is_returned_unchanged():
    code = compile("def f():\n    return 1\n", "<test>", "exec")
    assert weave_tree(code, "", lambda c, q: None) is code


def test_functools_wraps_target_woven(restore):
    def deco(f):
        @functools.wraps(f)
        def wrapper(*a, **k):
            return f(*a, **k)

        return wrapper

    wrapped = deco(plain)
    restore(plain)
    probe = weave(plain, timing_probe())
    assert wrapped(1) == plain(1)
    assert len(probe.ok) == 2


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_generator_close_and_throw_keep_the_token(restore, kind):
    """The token survives the exception paths of generators (3.12+: PEP 479's handler)."""
    restore(gen)
    probe = weave(gen, make_probe(kind))
    g = gen(3)
    next(g)
    g.close()
    g = gen(3)
    next(g)
    with pytest.raises(ValueError):
        g.throw(ValueError("thrown"))
    assert len(probe.ok) == 1 and len(probe.failed) == 1
    assert all(0 <= d < 10**10 for d in probe.ok + probe.failed)


WIDE_MODULES = [
    "json.decoder",
    "asyncio.tasks",
    "contextlib",
    "functools",
    "argparse",
    "email.utils",
    "test.test_exceptions",
    "test.test_contextlib",
]


@pytest.mark.parametrize("module_name", WIDE_MODULES)
def test_every_function_of_real_modules_keeps_its_code_metadata(module_name):
    """Weave every function of whole stdlib modules: only the code itself changes."""
    import importlib.util

    spec = importlib.util.find_spec(module_name)
    with open(spec.origin, encoding="utf-8") as handle:
        source = handle.read()
    module_code = compile(source, spec.origin, "exec")
    originals: dict[str, CodeType] = {}

    def collect(code: CodeType, qualname: str) -> Probe | None:
        originals[qualname] = code
        return timing_probe(qualname)

    woven_tree = weave_tree(module_code, "", collect)
    assert originals, "nothing was woven"

    def walk(code: CodeType) -> list[CodeType]:
        found: list[CodeType] = []
        for const in code.co_consts:
            if isinstance(const, CodeType):
                found.append(const)
                found.extend(walk(const))
        return found

    woven_by_name = {probe_of(c).joinpoint.name: c for c in walk(woven_tree) if probe_of(c)}
    assert set(woven_by_name) == set(originals)
    if env.EXCEPTION_TABLE:
        # Every handler unwinds to one item more (the token) than the compiler said;
        # the weaver's own handler (absent where nothing can raise) keeps just the token.
        def depths(entries: list) -> list:
            merged: list = []
            for entry in entries:
                if not merged or merged[-1] != (entry.depth, entry.lasti):
                    merged.append((entry.depth, entry.lasti))
            return merged

        for qualname, original in originals.items():
            before = [
                (d + 1, lasti) for d, lasti in depths(dis.Bytecode(original).exception_entries)
            ]
            entries = dis.Bytecode(woven_by_name[qualname]).exception_entries
            ours = max((e.target for e in entries), default=None)
            assert all(e.depth == 1 for e in entries if e.target == ours) or not before
            theirs = [e for e in entries if e.target != ours] if before else []
            assert depths(theirs) == before, qualname
    for qualname, original in originals.items():
        woven = woven_by_name[qualname]
        for attr in (
            "co_varnames",
            "co_cellvars",
            "co_freevars",
            "co_argcount",
            "co_flags",
            "co_kwonlyargcount",
            "co_posonlyargcount",
            "co_nlocals",
            "co_firstlineno",
            "co_name",
            "co_filename",
        ):
            assert getattr(woven, attr) == getattr(original, attr), (qualname, attr)


def test_frame_left_by_an_exception_reports_the_raising_line(restore):
    restore(raises)
    weave(raises, timing_probe())
    try:
        raises("value")
    except ValueError as exc:
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        frame_line = tb.tb_frame.f_lineno
    expected = raises.__code__.co_firstlineno + 2
    if env.PY == (3, 9):
        assert frame_line is not None  # 3.9: the handler's line (see templates)
    else:
        assert frame_line == expected


def test_profilers_see_no_python_call_from_timing_code(restore):
    """Timing mode calls only C functions, on the exception path too."""

    def python_calls(fn: Callable[[], Any]) -> list[str]:
        seen: list[str] = []

        def profiler(frame, event, arg):
            if event == "call":
                seen.append(frame.f_code.co_name)

        sys.setprofile(profiler)
        try:
            fn()
        except Exception:
            pass
        finally:
            sys.setprofile(None)
        return seen

    def call_all():
        raises("ok")
        raises("value")

    before = python_calls(call_all)
    restore(raises)
    weave(raises, timing_probe())
    assert python_calls(call_all) == before


def test_exception_through_with_in_a_closure(restore):
    """Handler depths inside closures (a wrong one corrupts the stack and crashes)."""
    import contextlib

    def outer_with(func):
        def inner(*args):
            with contextlib.nullcontext():
                return func(*args)

        return inner

    def boom(x):
        raise LookupError(x)

    for kind in PROBE_KINDS:
        inner = outer_with(boom)
        probe = weave(inner, make_probe(kind))
        for _ in range(3):
            with pytest.raises(LookupError):
                inner(1)
        assert outer_with(len).__code__ is not inner.__code__
        ok = outer_with(len)
        ok.__code__ = inner.__code__
        assert ok("abc") == 3
        assert len(probe.failed) == 3 and len(probe.ok) == 1


def test_types_coroutine_generator_woven_before_its_decorator():
    # As the importer does: weave the module's code, then run it. types.coroutine
    # then swaps the woven code for a copy with CO_ITERABLE_COROUTINE set, which
    # keeps the woven instructions and so still reports as a generator does.
    source = (
        "import types\n"
        "@types.coroutine\n"
        "def ticks(limit=2):\n"
        "    for _ in range(limit):\n"
        "        yield\n"
        "    return limit\n"
        "async def awaits_ticks():\n"
        "    return await ticks()\n"
    )
    probes: dict[str, Probe] = {}

    def resolver(code: Any, qualname: str) -> Probe:
        probes[qualname] = timing_probe(qualname)
        return probes[qualname]

    namespace: dict = {}
    exec(weave_tree(compile(source, "<module>", "exec"), "", resolver), namespace)
    ticks = namespace["ticks"]
    assert ticks.__code__.co_flags & events.CO_ITERABLE_COROUTINE
    assert asyncio.run(namespace["awaits_ticks"]()) == 2
    assert list(ticks(3)) == [None] * 3
    gen = ticks()
    next(gen)
    gen.close()
    assert (len(probes["ticks"].ok), len(probes["ticks"].failed)) == (3, 0)
    assert (len(probes["awaits_ticks"].ok), len(probes["awaits_ticks"].failed)) == (1, 0)
