"""Tests for the built-in timing plugin (agent.plugins.timing)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent import speedups
from agent.events import JoinPoint
from agent.plugins import AgentContext, PluginError, PluginSet, timing
from agent.plugins.timing import TimingPlugin, write_report

FLOW = JoinPoint("workflows", "workflow", "shop.flows.OrderWorkflow.on_message")
SERVICE = JoinPoint("services", "service", "shop.services.Pay.do_service")
CONTEXT = AgentContext(python="3.11.7", backend="bytecode", report=None)
KEYS = [
    "aspect",
    "type",
    "name",
    "count",
    "failed",
    "total_ns",
    "min_ns",
    "mean_ns",
    "p50_ns",
    "p99_ns",
    "max_ns",
]
TOLERANCE = 1 / 128
"""Documented accuracy of p50/p99 while every duration of a batch is kept."""


# -- the plugin and its report ----------------------------------------------------------------


def feed(plugin: TimingPlugin) -> None:
    plugin.on_timings(FLOW, [1_000, 2_000, 3_000], [10_000])
    plugin.on_timings(SERVICE, [50_000, 70_000], [])
    plugin.on_timings(FLOW, [4_000], [])


def test_report_json_shape(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    plugin = TimingPlugin(report=str(path))
    plugin.start(CONTEXT)
    feed(plugin)
    plugin.stop()
    report = json.loads(path.read_text(encoding="utf-8"))
    assert list(report) == ["python", "backend", "components", "written_at", "uptime_s", "final"]
    assert (report["python"], report["backend"]) == ("3.11.7", "bytecode")
    assert report["final"] is True and report["uptime_s"] >= 0
    written = datetime.datetime.fromisoformat(report["written_at"])
    assert written.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - written).total_seconds()) < 60
    assert [c["name"] for c in report["components"]] == [SERVICE.name, FLOW.name]
    for component in report["components"]:
        assert list(component) == KEYS
        for key in KEYS[3:]:
            assert type(component[key]) is int
    flow = report["components"][1]
    assert (flow["count"], flow["failed"], flow["total_ns"]) == (5, 1, 20_000)
    assert (flow["min_ns"], flow["max_ns"], flow["mean_ns"]) == (1_000, 10_000, 4_000)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # no temporary left


def test_report_option_wins_over_command_line(tmp_path: Path) -> None:
    option, flag = tmp_path / "option.json", tmp_path / "flag.json"
    plugin = TimingPlugin(report=str(option))
    plugin.start(AgentContext("3.9.18", "bytecode", report=str(flag)))
    assert plugin.path == str(option)
    fallback = TimingPlugin()
    fallback.start(AgentContext("3.9.18", "bytecode", report=str(flag)))
    assert fallback.path == str(flag)


def test_relative_report_path_is_taken_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plugin = TimingPlugin(report="stats.json")
    plugin.start(CONTEXT)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    feed(plugin)
    plugin.stop()
    assert (tmp_path / "stats.json").exists()


def test_without_report_path_the_table_goes_to_stderr(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    plugin = TimingPlugin()
    plugin.start(CONTEXT)
    feed(plugin)
    with caplog.at_level(logging.DEBUG, logger="agent.plugins.timing"):
        plugin.stop()
    shown = capsys.readouterr()
    assert shown.out == ""
    assert "python 3.11.7, backend bytecode" in shown.err
    assert SERVICE.name in shown.err and FLOW.name in shown.err
    assert not caplog.records  # shown once, not logged a second time


def test_interval_rewrites_the_report_while_running(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    plugin = TimingPlugin(report=str(path), interval="0.05")
    plugin.start(CONTEXT)
    try:
        plugin.on_timings(FLOW, [1_000], [])
        first = wait_for_report(path, lambda r: r["components"])
        assert first["final"] is False
        assert [(c["name"], c["count"]) for c in first["components"]] == [(FLOW.name, 1)]
        plugin.on_timings(FLOW, [2_000, 3_000], [])
        second = wait_for_report(path, lambda r: r["components"][0]["count"] == 3)
        assert second["uptime_s"] >= first["uptime_s"]
    finally:
        plugin.stop()
    final = json.loads(path.read_text(encoding="utf-8"))
    assert final["final"] is True and final["components"][0]["count"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def wait_for_report(path: Path, ready: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            report = json.loads(path.read_text(encoding="utf-8"))
            if ready(report):
                return report
        time.sleep(0.01)
    raise AssertionError(f"{path} did not get the expected content within {timeout} s")


def test_interval_from_the_context_and_option_wins(tmp_path: Path) -> None:
    context = AgentContext("3.11.7", "bytecode", report=str(tmp_path / "s.json"), report_interval=7)
    from_context = TimingPlugin()
    from_context.start(context)
    own = TimingPlugin(interval="0.5")
    own.start(context)
    try:
        assert from_context._writer is not None and from_context._writer.interval == 7
        assert own._writer is not None and own._writer.interval == 0.5
    finally:
        from_context.stop()
        own.stop()


@pytest.mark.parametrize("bad", ["0", "-1", "soon", "nan", "inf"])
def test_bad_interval_is_a_plugin_error(bad: str) -> None:
    with pytest.raises(PluginError, match=f'interval="{bad}".*seconds above 0'):
        TimingPlugin(report="stats.json", interval=bad)


def test_interval_without_report_file_warns_and_shows_at_exit(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = TimingPlugin(interval="1")
    with caplog.at_level(logging.WARNING, logger="agent.plugins.timing"):
        plugin.start(CONTEXT)
    assert "needs a report file" in caplog.text and plugin._writer is None
    feed(plugin)
    plugin.stop()
    assert SERVICE.name in capsys.readouterr().err


def test_live_rewrite_failure_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gone" / "stats.json"
    plugin = TimingPlugin(report=str(path), interval="0.02")
    with caplog.at_level(logging.ERROR, logger="agent.plugins.timing"):
        plugin.start(CONTEXT)
        time.sleep(0.3)
        assert plugin._writer is not None and plugin._writer.runs >= 2
        plugin.stop()
    rewrites = [r for r in caplog.records if "could not rewrite" in r.getMessage()]
    assert len(rewrites) == 1 and str(path) in rewrites[0].getMessage()
    assert any("could not write the report" in r.getMessage() for r in caplog.records)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stats.json"
    path.write_text('{"old": true}', encoding="utf-8")

    class HalfWritten(json.JSONEncoder):
        def iterencode(self, o: Any, _one_shot: bool = False) -> Any:
            yield '{"python": '
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(timing.json, "JSONEncoder", HalfWritten)
    with pytest.raises(OSError, match="No space left"):
        write_report({"python": "3.11.7", "backend": "x", "components": []}, str(path))
    assert path.read_text(encoding="utf-8") == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]
    monkeypatch.undo()
    write_report({"python": "3.11.7", "backend": "x", "components": []}, str(path))
    assert json.loads(path.read_text(encoding="utf-8"))["python"] == "3.11.7"


def test_write_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing-folder" / "stats.json"
    plugin = TimingPlugin(report=str(path))
    plugin.start(CONTEXT)
    feed(plugin)
    with caplog.at_level(logging.ERROR, logger="agent.plugins.timing"):
        plugin.stop()
    (record,) = caplog.records
    message = record.getMessage()
    assert str(path) in message and "folder exists" in message
    assert SERVICE.name in message  # the data is not lost: the table is in the log
    assert not path.parent.exists()


def test_end_to_end_through_plugin_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedups, "available", lambda: False)  # the pure-Python path
    path = tmp_path / "stats.json"
    plugin_set = PluginSet([TimingPlugin()])
    plugin_set.start(AgentContext("3.13.0", "monitoring", report=str(path)))
    probe = plugin_set.probe_for(FLOW)
    assert probe is not None and not probe.steps_mode and probe.recorder is None
    for duration in range(1, 1001):  # what timing-mode woven code does
        probe.ok_append(duration)
    probe.failed_append(5_000)
    plugin_set.stop()
    (component,) = json.loads(path.read_text(encoding="utf-8"))["components"]
    assert (component["count"], component["failed"]) == (1001, 1)
    assert component["total_ns"] == sum(range(1, 1001)) + 5_000
    assert abs(component["p50_ns"] - 501) <= 501 * TOLERANCE
    assert os.listdir(tmp_path) == ["stats.json"]


@pytest.mark.skipif(not speedups.available(), reason="the C accelerator is not built here")
def test_end_to_end_on_the_c_path(tmp_path: Path) -> None:
    from agent.weaving.rewrite import weave_code

    def work(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return sum(range(x))

    path = tmp_path / "stats.json"
    plugin_set = PluginSet([TimingPlugin()])
    plugin_set.start(AgentContext("3.13.0", "bytecode", report=str(path)))
    probe = plugin_set.probe_for(FLOW)
    assert probe is not None and probe.recorder is not None
    work.__code__ = weave_code(work.__code__, probe)
    for x in range(1000):
        work(x % 50)
    with pytest.raises(ValueError):
        work(-1)
    plugin_set.stop()
    (component,) = json.loads(path.read_text(encoding="utf-8"))["components"]
    assert (component["count"], component["failed"]) == (1001, 1)
    assert 0 < component["min_ns"] <= component["p50_ns"] <= component["p99_ns"]
    assert component["p99_ns"] <= component["max_ns"] <= component["total_ns"]


def test_report_path_takes_the_process_id(tmp_path: Path) -> None:
    plugin = TimingPlugin(report=str(tmp_path / "stats-{pid}.json"))
    plugin.start(CONTEXT)
    assert plugin.path == str(tmp_path / f"stats-{os.getpid()}.json")


def test_a_report_path_that_is_not_a_regular_file_is_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    for target in (folder, fifo):
        with pytest.raises(OSError, match="not a regular file"):
            write_report({"python": "3.11.7", "backend": "x", "components": []}, str(target))
    assert folder.is_dir() and not any(folder.iterdir())
    assert fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-fifo", "a-folder"]
