"""The bootstrap and the site hook, with real interpreters: the program runs as under `python`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 60
ROOT = Path(__file__).resolve().parents[2]


def run(args, cwd, env=None, input=None):
    full_env = dict(os.environ)
    full_env.pop("AGENT_POINTCUTS", None)
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        input=input,
    )


APP = textwrap.dedent(
    """
    import os, pickle, sys

    class Flow:
        def on_message(self, message):
            if message == "bad":
                raise ValueError("bad message")
            return helper(message)

    def helper(m):
        return m.upper()

    def report_env():
        return dict(argv=sys.argv, path0=sys.path[0], path1=sys.path[1], name=__name__,
                    file=__file__, pickled=pickle.loads(pickle.dumps(helper)) is helper)

    if __name__ == "__main__":
        flow = Flow()
        for m in sys.argv[1:]:
            if m.startswith("exit="):
                sys.exit(int(m[5:]))
            print(flow.on_message(m))
        print("ENV", report_env())
    """
)

POINTCUTS = """<agent>
  <aspects>
    <aspect name="flow" type="workflow" pointcut="execution(* app.Flow.on_message(message))"
            message-id="message"/>
    <aspect name="helpers" type="service" pointcut="execution(* app.helper(..))"/>
  </aspects>
  <plugins><plugin name="timing"/></plugins>
</agent>
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(APP)
    (tmp_path / "aop.xml").write_text(POINTCUTS)
    return tmp_path


def components(report_path):
    report = json.loads(Path(report_path).read_text())
    return {c["name"]: c for c in report["components"]}


def bootstrap(project, *args, env=None):
    return run(
        ["-m", "agent.bootstrap", "--pointcuts", "aop.xml", "--report", "r.json", *args],
        cwd=project,
        env=env,
    )


def test_runs_like_python_and_reports(project):
    plain = run(["app/app.py", "a", "b"], cwd=project)
    woven = bootstrap(project, "app/app.py", "a", "b")
    assert woven.returncode == plain.returncode == 0, woven.stderr
    assert woven.stdout == plain.stdout
    assert "'pickled': True" in woven.stdout
    stats = components(project / "r.json")
    assert stats["app.Flow.on_message"]["count"] == 2
    assert stats["app.Flow.on_message"]["type"] == "workflow"
    assert stats["app.helper"]["count"] == 2


def test_exit_status_and_uncaught_exception_output(project):
    assert bootstrap(project, "app/app.py", "exit=7").returncode == 7
    plain = run(["app/app.py", "bad"], cwd=project)
    woven = bootstrap(project, "app/app.py", "bad")
    assert plain.returncode == woven.returncode == 1
    assert woven.stderr.splitlines()[-6:] == plain.stderr.splitlines()[-6:]
    assert "bootstrap.py" not in woven.stderr
    assert components(project / "r.json")["app.Flow.on_message"]["failed"] == 1


def test_run_module(project):
    (project / "pkg").mkdir()
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "svc.py").write_text(
        "import sys\ndef work(x):\n    return x * 2\n"
        "if __name__ == '__main__':\n    print(work(21), sys.argv[1:])\n"
    )
    (project / "aop.xml").write_text(
        POINTCUTS.replace("app.helper(..)", "pkg.svc.work(..)").replace(
            "execution(* app.Flow.on_message(message))", "execution(* nothing.matches(..))"
        )
    )
    woven = bootstrap(project, "-m", "pkg.svc", "x")
    assert woven.returncode == 0, woven.stderr
    assert woven.stdout.strip() == "42 ['x']"
    assert components(project / "r.json")["pkg.svc.work"]["count"] == 1
    assert "aspect 'flow' matched no function" in woven.stderr


def test_an_aspect_no_plugin_listens_to_is_not_woven_and_says_why(project):
    (project / "aop.xml").write_text(POINTCUTS.replace('<plugin name="timing"/>', ""))
    woven = bootstrap(project, "app/app.py", "a")
    assert woven.returncode == 0, woven.stderr
    assert woven.stdout.splitlines()[0] == "A"
    assert "aspect 'flow' matched 1 function(s), but no plugin receives its events" in (
        woven.stderr
    )
    assert "aspect 'helpers' matched 1 function(s)" in woven.stderr
    assert "matched no function" not in woven.stderr


def test_malformed_pointcut_file_stops_before_the_program(project):
    (project / "aop.xml").write_text(
        "<agent>\n  <aspects>\n    <aspect name='x' pointcut='execution(* a.b(' />\n"
    )
    result = bootstrap(project, "app/app.py", "a")
    assert result.returncode == 2
    assert "aop.xml:3" in result.stderr
    assert "A" not in result.stdout  # the program did not start


def test_bad_plugins_do_not_crash_the_program(project, tmp_path):
    (project / "app" / "badplugin.py").write_text(
        textwrap.dedent(
            """
            class Boom:
                name = "boom"
                def start(self, context): pass
                def stop(self): pass
                def on_step(self, step):
                    raise RuntimeError("plugin bug")
            def make():
                return Boom()
            """
        )
    )
    (project / "aop.xml").write_text(
        POINTCUTS.replace(
            '<plugin name="timing"/>',
            '<plugin name="timing"/><plugin factory="badplugin:make"/>'
            '<plugin factory="no_such_module:make"/>',
        )
    )
    result = bootstrap(project, "app/app.py", "a", "b", env={"PYTHONPATH": f"{ROOT}:app"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["A", "B"]
    assert "no_such_module:make" in result.stderr
    assert result.stderr.count("RuntimeError: plugin bug") == 1  # logged once, isolated
    assert components(project / "r.json")["app.Flow.on_message"]["count"] == 2


def test_agent_messages_print_once_whether_or_not_the_app_configures_logging(project):
    (project / "app" / "logs.py").write_text(
        textwrap.dedent(
            """
            import logging, sys
            class Boom:
                name = "boom"
                def on_step(self, step):
                    raise RuntimeError("plugin bug")
            class Flow:
                def on_message(self, message):
                    return message
            if __name__ == "__main__":
                if "configure" in sys.argv:
                    logging.basicConfig(format="APP %(name)s: %(message)s")
                Flow().on_message("one")
                Flow().on_message("two")
            """
        )
    )
    (project / "aop.xml").write_text(
        POINTCUTS.replace("app.Flow.on_message(message)", "logs.Flow.on_message(message)").replace(
            '<plugin name="timing"/>', '<plugin factory="logs:Boom"/>'
        )
    )
    env = {"PYTHONPATH": f"{ROOT}:app"}
    for args, prefix in (((), "twinweave ERROR"), (("configure",), "APP agent")):
        result = bootstrap(project, "app/logs.py", *args, env=env)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if "plugin boom raised" in line]
        assert len(lines) == 1, result.stderr  # once: not once per handler, nor per call
        assert lines[0].startswith(prefix), result.stderr


site_hook_installed = pytest.mark.skipif(
    not (Path(sysconfig.get_paths()["purelib"]) / "twinweave.pth").exists(),
    reason="twinweave.pth is installed by `pip install -e .`/`pip install .`; this interpreter "
    "runs the tests from a checkout without it",
)


@site_hook_installed
@pytest.mark.parametrize("how", ["xoption", "environment"])
def test_site_hook_weaves_the_script(project, how):
    if how == "xoption":
        result = run(
            ["-X", "agent=aop.xml", "app/app.py", "a"], cwd=project, env={"AGENT_REPORT": "r.json"}
        )
    else:
        result = run(
            ["app/app.py", "a"],
            cwd=project,
            env={"AGENT_POINTCUTS": "aop.xml", "AGENT_REPORT": "r.json"},
        )
    plain = run(["app/app.py", "a"], cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain.stdout
    assert components(project / "r.json")["app.Flow.on_message"]["count"] == 1


@site_hook_installed
def test_site_hook_exit_status_and_errors(project):
    result = run(["-X", "agent=aop.xml", "app/app.py", "exit=5"], cwd=project)
    assert result.returncode == 5
    result = run(["-X", "agent=missing.xml", "app/app.py", "a"], cwd=project)
    assert result.returncode == 2 and "missing.xml" in result.stderr
    assert result.stdout == ""


@site_hook_installed
def test_site_hook_is_free_when_not_asked():
    result = run(
        ["-c", "import sys; print(sorted(m for m in sys.modules if m.startswith('agent')))"],
        cwd=ROOT,
    )
    assert result.stdout.strip() == "[]"


@site_hook_installed
def test_bootstrap_and_site_hook_weave_once(project):
    result = bootstrap(project, "app/app.py", "a", "b", env={"AGENT_POINTCUTS": "aop.xml"})
    assert result.returncode == 0, result.stderr
    assert components(project / "r.json")["app.Flow.on_message"]["count"] == 2


@site_hook_installed
def test_children_get_the_agent_through_the_environment(project):
    (project / "app" / "parent.py").write_text(
        textwrap.dedent(
            """
            import os, subprocess, sys
            env = dict(os.environ, AGENT_REPORT="child.json")
            subprocess.run([sys.executable, "app/app.py", "child"], check=True, env=env)
            """
        )
    )
    result = run(
        ["app/parent.py"], cwd=project, env={"AGENT_POINTCUTS": "aop.xml", "AGENT_REPORT": "r.json"}
    )
    assert result.returncode == 0, result.stderr
    assert "CHILD" in result.stdout
    assert components(project / "child.json")["app.Flow.on_message"]["count"] == 1


def test_options_after_the_target_belong_to_the_program(project):
    from agent.bootstrap import split_argv

    assert split_argv(["--pointcuts", "a.xml", "-v", "app.py", "-v", "--report", "x"]) == (
        ["--pointcuts", "a.xml", "-v"],
        ["app.py", "-v", "--report", "x"],
    )
    assert split_argv(["--report=r.json", "-m", "json.tool", "-h"]) == (
        ["--report=r.json", "-m", "json.tool"],
        ["-h"],
    )
    assert split_argv(["-mjson.tool", "-q"]) == (["-mjson.tool"], ["-q"])
    assert split_argv(["--failover", "-D", "failover.delay=200", "-Dfailover.ttl=0", "a.py"]) == (
        ["--failover", "-D", "failover.delay=200", "-Dfailover.ttl=0"],
        ["a.py"],
    )
    woven = bootstrap(project, "-m", "json.tool", "--help")
    assert woven.returncode == 0, woven.stderr
    assert "json.tool" in woven.stdout or "json" in woven.stdout
    assert "twinweave agent" not in woven.stdout


def test_without_a_report_file_the_table_is_shown_at_exit(project):
    woven = run(["-m", "agent.bootstrap", "--pointcuts", "aop.xml", "app/app.py", "a"], project)
    assert woven.returncode == 0, woven.stderr
    assert woven.stdout.splitlines()[0] == "A"
    assert "twinweave timing report: python" in woven.stderr  # without -v
    assert "app.Flow.on_message [flow]" in woven.stderr and "app.helper [helpers]" in woven.stderr


LIVE_APP = textwrap.dedent(
    """
    import json, os, sys, time

    def helper(m):
        return m.upper()

    # call woven code, then wait (bounded) until the live report shows those calls
    for m in "abc":
        helper(m)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open("r.json") as f:
                report = json.load(f)
        except (OSError, ValueError):
            report = None
        if report and report["components"] and not report["final"]:
            print("LIVE", report["components"][0]["count"], report["uptime_s"] > 0)
            break
        time.sleep(0.05)
    else:
        print("NO LIVE REPORT")
    """
)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_report_interval_rewrites_while_the_program_runs(project, how):
    (project / "app" / "app.py").write_text(LIVE_APP)
    if how == "flag":
        woven = bootstrap(project, "--report-interval", "0.2", "app/app.py")
    else:
        woven = bootstrap(project, "app/app.py", env={"AGENT_REPORT_INTERVAL": "0.2"})
    assert woven.returncode == 0, woven.stderr
    assert woven.stdout.strip() == "LIVE 3 True"
    final = json.loads((project / "r.json").read_text())
    assert final["final"] is True and final["components"][0]["count"] == 3


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--report-interval", "often"], None, "--report-interval"),
        ([], {"AGENT_REPORT_INTERVAL": "-3"}, "$AGENT_REPORT_INTERVAL"),
    ],
)
def test_bad_report_interval_stops_before_the_program(project, args, env, named):
    woven = bootstrap(project, *args, "app/app.py", "a", env=env)
    assert woven.returncode == 2
    assert woven.stdout == ""
    assert named in woven.stderr and "seconds above 0" in woven.stderr
    assert "Traceback" not in woven.stderr
