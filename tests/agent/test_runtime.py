"""The agent in-process: import hook, modules loaded before it, loaders left intact."""

from __future__ import annotations

import importlib
import importlib.machinery
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from agent import importer
from agent.pointcuts import parse
from agent.runtime import Agent, AgentError
from agent.weaving.rewrite import is_woven

MODULE = textwrap.dedent(
    """
    class Service:
        def do_service(self, message):
            return message + 1

        @property
        def name(self):
            return "svc"

    def helper(x):
        def inner(y):
            return y * 2
        return inner(x)
    """
)


def config_for(package: str, report: str | None = None):
    plugin = f'<plugin name="timing" report="{report}"/>' if report else '<plugin name="timing"/>'
    return parse(
        textwrap.dedent(
            f"""
            <agent>
              <aspects>
                <aspect name="svc" type="service"
                        pointcut="execution(* {package}..*(..))"/>
              </aspects>
              <plugins>{plugin}</plugins>
            </agent>
            """
        ),
        "test.xml",
    )


@pytest.fixture
def package(tmp_path, monkeypatch, request):
    name = f"twpkg_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    root = tmp_path / "src"
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(root))
    yield name
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


@pytest.fixture
def agent_for():
    agents = []

    def make(config):
        agent = Agent(config)
        agent.start()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


def test_import_hook_weaves_new_modules_and_keeps_the_loader(package, agent_for):
    agent = agent_for(config_for(package))
    mod = importlib.import_module(f"{package}.mod")
    assert isinstance(mod.__loader__, importlib.machinery.SourceFileLoader)
    assert mod.__spec__.loader is mod.__loader__
    assert is_woven(mod.Service.do_service.__code__)
    assert is_woven(mod.Service.name.fget.__code__)
    assert mod.helper(2) == 4
    assert mod.Service().do_service(1) == 2
    names = {jp.name for jp in agent.joinpoints()}
    assert {
        f"{package}.mod.Service.do_service",
        f"{package}.mod.helper",
        f"{package}.mod.helper.<locals>.inner",
    } <= names


def test_modules_loaded_before_the_agent_are_woven_in_place(package, agent_for):
    mod = importlib.import_module(f"{package}.mod")
    function = mod.helper
    method = mod.Service.do_service
    assert not is_woven(function.__code__)
    agent_for(config_for(package))
    assert mod.helper is function and mod.Service.do_service is method
    assert is_woven(function.__code__)
    assert is_woven(method.__code__)
    assert function(3) == 6


def test_pyc_cache_keeps_unwoven_code(package, agent_for, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    agent_for(config_for(package))
    mod = importlib.import_module(f"{package}.mod")
    assert is_woven(mod.helper.__code__)
    cached = importlib.util.cache_from_source(mod.__file__)
    check = (
        "import marshal, sys\n"
        "def helper_of(code):\n"
        "    return next(c for c in code.co_consts if getattr(c, 'co_name', '') == 'helper')\n"
        "cached = marshal.loads(open(sys.argv[1], 'rb').read()[16:])\n"
        "fresh = compile(open(sys.argv[2]).read(), sys.argv[2], 'exec')\n"
        "print(helper_of(cached).co_code == helper_of(fresh).co_code)\n"
    )
    probe = subprocess.run(
        [sys.executable, "-c", check, cached, mod.__file__],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "True"  # the cached bytecode is the compiler's own


def test_zip_imports_are_woven(tmp_path, monkeypatch, agent_for):
    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("twzipped/__init__.py", "")
        zf.writestr("twzipped/mod.py", MODULE)
    monkeypatch.syspath_prepend(str(archive))
    try:
        agent_for(config_for("twzipped"))
        mod = importlib.import_module("twzipped.mod")
        assert is_woven(mod.helper.__code__)
        assert mod.helper(5) == 10
    finally:
        for key in [k for k in sys.modules if k.startswith("twzipped")]:
            del sys.modules[key]


def test_agent_never_weaves_itself():
    agent = Agent(
        parse(
            '<agent><aspects><aspect name="all" pointcut="within(..*)"/></aspects>'
            '<plugins><plugin name="timing"/></plugins></agent>',
            "all.xml",
        )
    )
    assert not agent.may_match("agent.events")
    assert not agent.may_match("bytecode.instr")
    assert agent.may_match("json.decoder")


def test_finder_uninstalled_at_stop(package):
    agent = Agent(config_for(package))
    agent.start()
    finders = [f for f in sys.meta_path if isinstance(f, importer.WeavingFinder)]
    assert len(finders) == 1
    agent.stop()
    assert not [f for f in sys.meta_path if isinstance(f, importer.WeavingFinder)]


def test_monitoring_backend_only_where_sys_monitoring_exists():
    from agent.weaving.monitoring import MonitoringBackend, MonitoringUnavailable

    if sys.version_info < (3, 12):
        with pytest.raises(AgentError, match=r"3\.12"):
            Agent(config_for("x"), backend="monitoring")
        with pytest.raises(MonitoringUnavailable, match="--backend bytecode"):
            MonitoringBackend().start()
    else:
        assert Agent(config_for("x"), backend="monitoring").backend == "monitoring"
        backend = MonitoringBackend()
        backend.start()
        assert backend.tool_id is not None
        backend.stop()


def test_report_written_at_stop(package, tmp_path):
    report = tmp_path / "stats.json"
    agent = Agent(config_for(package, str(report)))
    agent.start()
    mod = importlib.import_module(f"{package}.mod")
    for i in range(10):
        mod.helper(i)
    agent.stop()
    text = Path(report).read_text()
    assert f'"{package}.mod.helper"' in text
