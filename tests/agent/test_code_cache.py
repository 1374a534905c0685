"""The cache of woven module code (agent.weaving.codecache): used only when every key matches.

Behaviour only. Each "process" below is a fresh agent with a fresh cache object on
the same folder and a fresh loader for the module, as a new start-up would have;
the cross-interpreter and stdlib cases run real processes.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

import pytest

from agent.importer import instrument_loader
from agent.plugins import AgentContext, Plugin
from agent.pointcuts import parse
from agent.runtime import Agent
from agent.weaving import codecache
from agent.weaving.codecache import CodeCache
from agent.weaving.rewrite import is_join_point, probe_of

REPO = Path(__file__).resolve().parents[2]
CONTEXT = AgentContext(python="3", backend="bytecode", report=None)

SOURCE = """
def add(a, b):
    return a + b

def fails(x):
    raise ValueError(x)

def gen(n):
    for i in range(n):
        yield i

def outer(x):
    def inner(y):
        return x + y
    return inner(1)

class Service:
    def do_service(self, message):
        return message["id"]

    @property
    def name(self):
        return "svc"
"""


class Steps(Plugin):
    name = "steps"

    def __init__(self) -> None:
        self.steps: list[tuple[Any, ...]] = []

    def on_step(self, step: Any) -> None:
        self.steps.append((step.aspect, step.name, step.message_id, step.failed, step.order))


def config(pointcut: str = "within(twcc_mod)", message_id: str | None = None) -> Any:
    extra = f' message-id="{message_id}"' if message_id else ""
    return parse(
        f'<agent><aspects><aspect name="all" type="service" pointcut="{pointcut}"{extra}/>'
        "</aspects><plugins/></agent>",
        "cc.xml",
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "twcc_mod.py"
    path.parent.mkdir()
    path.write_text(SOURCE)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


class Run:
    """One start-up: an agent with a steps plugin, its cache, the module's woven code."""

    def __init__(self, source: Path, folder: str | None, cfg: Any = None, **fake: Any) -> None:
        """``folder``: None for no cache, ``"default"`` for beside the ``.pyc``; ``fake``:
        key parts of another interpreter (``_tag``, ``_magic``)."""
        self.plugin = Steps()
        self.agent = Agent(cfg or config(), "bytecode", extra_plugins=[self.plugin])
        self.agent.plugins.start(CONTEXT)
        self.cache = None
        if folder is not None:
            self.cache = CodeCache(self.agent.probe_for, None if folder == "default" else folder)
            for name, value in fake.items():
                setattr(self.cache, name, value)
        loader = importlib.machinery.SourceFileLoader("twcc_mod", str(source))
        instrument_loader(loader, self.agent.weave_module, self.cache)
        self.code = loader.get_code("twcc_mod")
        self.module = ModuleType("twcc_mod")
        exec(self.code, self.module.__dict__)

    def exercise(self) -> list[tuple[Any, ...]]:
        m = self.module
        assert m.add(2, 3) == 5
        with pytest.raises(ValueError):
            m.fails(1)
        assert list(m.gen(3)) == [0, 1, 2]
        assert m.outer(1) == 2
        assert m.Service().do_service({"id": "m1"}) == "m1"
        assert m.Service().name == "svc"
        self.agent.stop()
        return self.plugin.steps

    @property
    def stats(self) -> dict[str, int]:
        assert self.cache is not None
        return self.cache.stats.as_dict()


def shape(code: CodeType) -> list[tuple[Any, ...]]:
    """What the bytecode of a tree is, apart from the probes' objects."""
    found = []
    stack = [code]
    while stack:
        current = stack.pop()
        literals = [c for c in current.co_consts if not callable(c) and not isinstance(c, CodeType)]
        name = getattr(current, "co_qualname", current.co_name)
        sizes = (current.co_stacksize, len(current.co_consts))
        found.append((name, current.co_firstlineno, current.co_code, sizes, repr(literals)))
        stack.extend(c for c in current.co_consts if isinstance(c, CodeType))
    return sorted(found)


def entry_file(folder: str) -> Path:
    files = [p for p in Path(folder).iterdir() if p.suffix == ".pyc"]
    assert len(files) == 1, files
    return files[0]


def test_the_second_start_up_uses_the_cache_and_behaves_the_same(source: Path, folder: str):
    plain = Run(source, None)
    first = Run(source, folder)
    assert first.stats["misses"] == 1 and first.stats["written"] == 1
    second = Run(source, folder)
    assert second.stats["hits"] == 1 and second.stats["written"] == 0
    assert shape(second.code) == shape(first.code) == shape(plain.code)
    assert second.code.co_filename == str(source)
    functions = [c for c in second.code.co_consts if isinstance(c, CodeType) and is_join_point(c)]
    assert functions and all(probe_of(c) is not None for c in functions)
    steps = plain.exercise()
    assert steps  # every function reported its calls
    assert {s[1] for s in steps} >= {"twcc_mod.add", "twcc_mod.outer.<locals>.inner"}
    assert first.exercise() == steps
    assert second.exercise() == steps
    # the probes were registered with the agent as weaving registers them
    assert {jp.name for jp in second.agent.joinpoints()} == {
        jp.name for jp in first.agent.joinpoints()
    }


def test_the_entry_is_private_to_the_user(source: Path, folder: str):
    Run(source, folder)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(entry_file(folder).stat().st_mode) == 0o600


def test_an_edited_source_is_woven_again(source: Path, folder: str):
    Run(source, folder)
    source.write_text(SOURCE.replace("return a + b", "return a + b + 100"))
    edited = Run(source, folder)
    assert edited.stats["hits"] == 0 and edited.stats["stale"] == 1
    assert edited.stats["written"] == 1
    assert edited.module.add(1, 1) == 102
    again = Run(source, folder)
    assert again.stats["hits"] == 1
    assert again.module.add(1, 1) == 102


def test_a_same_size_edit_is_woven_again(source: Path, folder: str):
    Run(source, folder)
    source.write_text(SOURCE.replace("return a + b", "return a - b"))
    edited = Run(source, folder)
    assert edited.stats["hits"] == 0
    assert edited.module.add(5, 3) == 2


@pytest.mark.parametrize(
    "changed",
    [
        config("execution(* twcc_mod.add(..)) or execution(* twcc_mod.gen(..))"),  # fewer
        config("within(twcc_mod)", message_id="message.id"),  # another message-id parameter
    ],
    ids=["fewer-functions", "message-id"],
)
def test_another_pointcut_layout_is_woven_again(source: Path, folder: str, changed: Any):
    Run(source, folder)
    other = Run(source, folder, changed)
    assert other.stats["hits"] == 0 and other.stats["stale"] == 1
    assert other.stats["written"] == 1
    assert shape(other.code) == shape(Run(source, None, changed).code)
    back = Run(source, folder)  # the first layout again: its entry was replaced
    assert back.stats["hits"] == 0 and back.stats["stale"] == 1


def test_more_functions_matching_is_woven_again(source: Path, folder: str):
    Run(source, folder, config("execution(* twcc_mod.add(..))"))
    more = Run(source, folder)
    assert more.stats["hits"] == 0
    assert {s[1] for s in more.exercise()} >= {"twcc_mod.gen", "twcc_mod.Service.do_service"}


def test_an_other_aspect_name_with_the_same_layout_uses_the_entry_with_its_own_probes(
    source: Path, folder: str
):
    Run(source, folder)
    renamed = parse(
        '<agent><aspects><aspect name="renamed" type="workflow" pointcut="within(twcc_mod)"/>'
        "</aspects><plugins/></agent>",
        "cc.xml",
    )
    run = Run(source, folder, renamed)
    assert run.stats["hits"] == 1
    assert {s[0] for s in run.exercise()} == {"renamed"}


def _as_if_from(source: Path, folder: str, tmp_path: Path, **fake: Any) -> None:
    """Overwrite the module's entry with the one an interpreter with ``fake`` key parts wrote."""
    other = str(tmp_path / f"other-{len(fake)}-{sorted(fake)[0]}")
    Run(source, other, **fake)
    entry_file(folder).write_bytes(entry_file(other).read_bytes())
    for path in Path(other).iterdir():
        path.unlink()


def test_an_entry_of_another_python_version_is_not_used(source: Path, folder: str, tmp_path: Path):
    Run(source, folder)  # the real entry, then overwritten with other interpreters' entries
    fakes: list[dict[str, Any]] = [{"_tag": "cpython-300"}, {"_magic": b"\x00\x01\r\n"}]
    for fake in fakes:
        _as_if_from(source, folder, tmp_path, **fake)
        run = Run(source, folder)
        assert run.stats["hits"] == 0, fake
        assert run.stats["stale"] + run.stats["corrupt"] == 1, fake
        assert run.stats["written"] == 1  # replaced by this interpreter's
        assert Run(source, folder).stats["hits"] == 1


def test_another_agent_fingerprint_is_not_used(
    source: Path, folder: str, monkeypatch: pytest.MonkeyPatch
):
    Run(source, folder)
    monkeypatch.setattr(codecache, "_agent_fingerprint", lambda: "0.0.0:00000000")
    run = Run(source, folder)
    assert run.stats["hits"] == 0 and run.stats["stale"] == 1


def _corrupt_variants(data: bytes) -> dict[str, bytes]:
    import marshal
    import zlib

    head = len(codecache._HEADER) + 12

    def framed(entry: object) -> bytes:
        payload = marshal.dumps(entry)
        return (
            data[: len(codecache._HEADER) + 4]
            + len(payload).to_bytes(4, "little")
            + zlib.crc32(payload).to_bytes(4, "little")
            + payload
        )

    well_framed = framed(("not", "an", "entry"))
    key, code, table = marshal.loads(data[head:])
    path, qualname, shape, slots = table[0]
    bad_tables = {
        "a table that is a list": list(table),
        "a short row": ((path, qualname, shape),),
        "a path of strings": ((("0",), qualname, shape, slots),),
        "an unknown mode": ((path, qualname, ("bogus", None), slots),),
        "a slot index that is a string": ((path, qualname, shape, (("0", "enter"),)),),
    }
    flipped = bytearray(data)
    flipped[head + len(data[head:]) // 2] ^= 0xFF
    return {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "header only": data[:head],
        "wrong magic": b"XXXX" + data[4:],
        "a flipped byte": bytes(flipped),
        "garbage": os.urandom(len(data)),
        "wrong type": well_framed,
        **{name: framed((key, code, bad)) for name, bad in bad_tables.items()},
    }


def test_a_corrupt_entry_is_ignored_and_replaced(source: Path, folder: str):
    reference = Run(source, folder)
    path = entry_file(folder)
    data = path.read_bytes()
    for name, bad in _corrupt_variants(data).items():
        path.write_bytes(bad)
        run = Run(source, folder)
        assert run.stats["hits"] == 0, name
        assert run.stats["corrupt"] + run.stats["stale"] == 1, name
        assert run.stats["written"] == 1, name
        assert shape(run.code) == shape(reference.code), name
        assert Run(source, folder).stats["hits"] == 1, name


def test_a_group_or_world_writable_entry_is_refused(source: Path, folder: str):
    Run(source, folder)
    path = entry_file(folder)
    for mode in (0o620, 0o602):
        path.chmod(mode)
        run = Run(source, folder)
        assert run.stats["hits"] == 0 and run.stats["refused"] == 1, oct(mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # rewritten, as ours
        assert Run(source, folder).stats["hits"] == 1


def test_an_entry_or_folder_owned_by_someone_else_is_refused(
    source: Path, folder: str, monkeypatch: pytest.MonkeyPatch
):
    Run(source, folder)
    me = os.getuid()
    monkeypatch.setattr(codecache.os, "getuid", lambda: me + 1)
    run = Run(source, folder)
    assert run.stats["hits"] == 0 and run.stats["misses"] == 1
    monkeypatch.setattr(codecache.os, "getuid", lambda: me)
    Path(folder).chmod(0o770)  # a folder others may write to is not ours either
    assert Run(source, folder).stats["hits"] == 0


def test_a_symbolic_link_is_not_followed(source: Path, folder: str, tmp_path: Path):
    Run(source, folder)
    path = entry_file(folder)
    elsewhere = tmp_path / "elsewhere.pyc"
    os.replace(path, elsewhere)
    path.symlink_to(elsewhere)
    assert Run(source, folder).stats["hits"] == 0


def test_beside_the_pyc_by_default_and_per_user_when_not_writable(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "twinweave"
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # python -B: nothing beside the source
    Run(source, "default")
    assert not (source.parent / "__pycache__" / "twinweave").exists()
    assert len(list(user.iterdir())) == 1
    for entry in user.iterdir():
        entry.unlink()
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    Run(source, "default")
    beside = source.parent / "__pycache__" / "twinweave"
    assert [p.name for p in beside.iterdir()] == [f"twcc_mod.{sys.implementation.cache_tag}.pyc"]
    assert Run(source, "default").stats["hits"] == 1
    for entry in beside.iterdir():
        entry.unlink()
    beside.chmod(0o500)  # not writable: entries go to the per-user folder
    if os.access(beside, os.W_OK):  # root writes anyway: make it someone else's instead
        beside.chmod(0o777)
    Run(source, "default")
    assert len(list(user.iterdir())) == 1
    assert stat.S_IMODE(user.stat().st_mode) == 0o700
    assert Run(source, "default").stats["hits"] == 1
    beside.chmod(0o700)


def test_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def resolve(*_: Any) -> None:
        return None

    for off in ("off", "0", "no", "false", "OFF"):
        assert CodeCache.from_setting(resolve, off) is None
    assert CodeCache.from_setting(resolve, "")._folder is None  # type: ignore[union-attr]
    assert CodeCache.from_setting(resolve, "on")._folder is None  # type: ignore[union-attr]
    there = CodeCache.from_setting(resolve, str(tmp_path))
    assert there is not None and there._folder == str(tmp_path)
    monkeypatch.setenv(codecache.SETTING, "off")
    agent = Agent(config(), "bytecode", extra_plugins=[Steps()])
    agent.start()
    try:
        assert agent.code_cache is None
    finally:
        agent.stop()
    monkeypatch.setenv(codecache.SETTING, str(tmp_path))
    agent = Agent(config(), "bytecode", extra_plugins=[Steps()])
    agent.start()
    try:
        assert agent.code_cache is not None and agent.code_cache._folder == str(tmp_path)
    finally:
        agent.stop()


# --------------------------------------------------------------------------- real processes

CHILD = """
import importlib, json, sys
import twcc_mod
from agent import runtime
assert twcc_mod.add(1, 2) == 3
print(json.dumps(runtime.current().code_cache.stats.as_dict()))
"""


def _child_run(python: str, source: Path, folder: str, tmp_path: Path) -> dict[str, int]:
    aop = tmp_path / "child.xml"
    aop.write_text(
        '<agent><aspects><aspect name="all" pointcut="within(twcc_mod)"/></aspects>'
        '<plugins><plugin name="timing"/></plugins></agent>'
    )
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(PYTHONPATH=f"{source.parent}{os.pathsep}{REPO}", AGENT_CODE_CACHE=folder)
    env["TWINWEAVE_PURE_PYTHON"] = "1"
    done = subprocess.run(
        [python, "-m", "agent.bootstrap", "--pointcuts", str(aop), str(script)],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


OTHER_PYTHONS = ("/work/venv3.9/bin/python", "/work/venv3.13/bin/python")
"""Two interpreters of this checkout (where they exist; else this one, twice)."""


def test_two_interpreters_on_one_folder_never_share_an_entry(
    source: Path, folder: str, tmp_path: Path
):
    pythons = [p for p in OTHER_PYTHONS if os.path.exists(p)] or [sys.executable]
    if len(pythons) < 2:
        pythons.append(sys.executable)
    first, second = pythons[0], pythons[1]
    assert _child_run(first, source, folder, tmp_path)["written"] == 1
    other = _child_run(second, source, folder, tmp_path)
    if first != second:  # another interpreter does not take the first one's entry
        assert other["hits"] == 0 and other["written"] == 1
    assert _child_run(first, source, folder, tmp_path)["hits"] == 1
    assert _child_run(second, source, folder, tmp_path)["hits"] == 1


def test_a_stdlib_regression_suite_woven_from_the_cache_reports_the_same_calls(tmp_path: Path):
    """``python -m test test_contextlib`` woven twice: once weaving, once from the cache."""
    cache = tmp_path / "cache"
    reports = []
    for run in ("cold", "warm"):
        report = tmp_path / f"{run}.json"
        aop = tmp_path / f"{run}.xml"
        aop.write_text(
            textwrap.dedent(f"""
            <agent><aspects>
              <aspect name="lib" pointcut="within(contextlib) or within(test.test_contextlib)"/>
            </aspects><plugins><plugin name="timing" report="{report}"/></plugins></agent>
            """)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(PYTHONPATH=str(REPO), AGENT_CODE_CACHE=str(cache))
        done = subprocess.run(
            [sys.executable, "-m", "agent.bootstrap", "--pointcuts", str(aop),
             "-m", "test", "test_contextlib"],
            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        reports.append(json.loads(report.read_text()))
        written = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
        if run == "cold":
            entries = written
        else:  # every entry was read, none rewritten: the warm run's code came from them
            assert written == entries
    assert any(name.startswith("test_contextlib.") for name in entries), entries

    def calls(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
        return {c["name"]: (c["count"], c.get("failed", 0)) for c in report["components"]}

    cold, warm = calls(reports[0]), calls(reports[1])
    assert len(cold) > 50
    assert warm == cold
