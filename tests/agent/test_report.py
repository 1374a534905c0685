"""Tests for ``python -m agent.report`` (agent.report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from agent import report as report_module
from agent.report import format_duration, format_table, load_report, main, write_chart

ROOT = Path(__file__).resolve().parents[2]
SAMPLE: dict[str, Any] = {
    "python": "3.11.7",
    "backend": "bytecode",
    "components": [
        {
            "aspect": "workflows",
            "type": "workflow",
            "name": "shop.flows.OrderWorkflow.on_message",
            "count": 12_000,
            "failed": 3,
            "total_ns": 9_600_000_000,
            "min_ns": 120_000,
            "mean_ns": 800_000,
            "p50_ns": 650_000,
            "p99_ns": 4_200_000,
            "max_ns": 1_500_000_000,
        },
        {
            "aspect": "services",
            "type": "service",
            "name": "shop.services.Pay.do_service",
            "count": 48_000,
            "failed": 0,
            "total_ns": 2_400_000_000,
            "min_ns": 900,
            "mean_ns": 50_000,
            "p50_ns": 41_000,
            "p99_ns": 310_000,
            "max_ns": 2_000_000,
        },
    ],
}


@pytest.fixture
def sample_file(tmp_path: Path) -> Path:
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(SAMPLE), encoding="utf-8")
    return path


def test_format_duration_picks_readable_units() -> None:
    assert format_duration(812) == "812 ns"
    assert format_duration(12_345) == "12.3 µs"
    assert format_duration(4_560_000) == "4.56 ms"
    assert format_duration(450_000_000) == "450 ms"
    assert format_duration(1_230_000_000) == "1.23 s"
    assert format_duration(7_200_000_000_000) == "7,200 s"


def test_table_for_sample_report() -> None:
    lines = format_table(SAMPLE).splitlines()
    assert lines[0] == (
        "twinweave timing report: python 3.11.7, backend bytecode, 2 components, "
        "60,000 calls, 3 failed"
    )
    header, rule, first, second = lines[1:]
    assert header.split() == [
        "component",
        "type",
        "count",
        "failed",
        "total",
        "ms",
        "mean",
        "µs",
        "p50",
        "p99",
        "min",
        "max",
    ]
    assert set(rule) <= {"-", " "}
    assert first.startswith("shop.flows.OrderWorkflow.on_message [workflows]  workflow")
    assert first.split()[3:] == [
        "12,000",
        "3",
        "9,600.000",
        "800.00",
        "650",
        "µs",
        "4.20",
        "ms",
        "120",
        "µs",
        "1.50",
        "s",
    ]
    assert second.startswith("shop.services.Pay.do_service [services]")
    # Numbers are right-aligned: every count ends under the end of its header.
    end = header.index("count") + len("count")
    assert first[:end].endswith("12,000") and second[:end].endswith("48,000")


def test_sort_orders() -> None:
    def names(sort: str) -> list[str]:
        return [line.split()[0] for line in format_table(SAMPLE, sort).splitlines()[3:]]

    flow, pay = "shop.flows.OrderWorkflow.on_message", "shop.services.Pay.do_service"
    assert names("total") == [flow, pay]
    assert names("count") == [pay, flow]
    assert names("mean") == [flow, pay]
    assert names("p99") == [flow, pay]
    assert names("name") == [flow, pay]


def test_empty_report() -> None:
    text = format_table({"python": "3.9.18", "backend": "bytecode", "components": []})
    assert text.endswith("(no woven call was recorded)")


def test_main_prints_table(sample_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sample_file), "--sort", "count"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[3].startswith("shop.services.Pay.do_service")
    assert err == ""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def bad_component(**changes: Any) -> str:
    report = json.loads(json.dumps(SAMPLE))
    report["components"][1].update(changes)
    return json.dumps(report)


BAD_FILES = [
    ("missing.json", None, "cannot read"),
    ("garbage.json", "{not json", "is not JSON (Expecting property name"),
    ("list.json", "[1, 2]", "expected a JSON object, found list"),
    ("nocomp.json", '{"python": "3.9", "backend": "b"}', "'components' must be a list"),
    ("str.json", bad_component(count="12"), "components[1].count must be a non-negative integer"),
    ("bool.json", bad_component(failed=True), "components[1].failed must be"),
    ("noname.json", bad_component(name=None), "components[1].name must be a string"),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str | None,
    expected: str,
) -> None:
    path = tmp_path / name if text is None else write(tmp_path, name, text)
    assert main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("agent.report: ")
    assert expected in err
    assert name in err


def test_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(report_module.ReportError, match="not UTF-8"):
        load_report(str(path))


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.report", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def test_module_runs_as_a_command(sample_file: Path, tmp_path: Path) -> None:
    good = run_module(str(sample_file))
    assert good.returncode == 0, good.stderr
    assert "shop.flows.OrderWorkflow.on_message" in good.stdout
    bad = run_module(str(write(tmp_path, "bad.json", "nope")))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.startswith("agent.report: ") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr
    usage = run_module("--sort", "fastest", str(sample_file))
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_chart_without_matplotlib_says_so(
    sample_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main([str(sample_file), "--chart", str(tmp_path / "out.png")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "needs matplotlib, which is not installed" in err
    assert "pip install matplotlib" in err


def test_write_chart_draws_components_and_saves(tmp_path: Path) -> None:
    pyplot = mock.MagicMock()
    figure, total_axes, latency_axes = mock.MagicMock(), mock.MagicMock(), mock.MagicMock()
    pyplot.subplots.return_value = (figure, (total_axes, latency_axes))
    out = str(tmp_path / "chart.png")
    write_chart(SAMPLE, out, "total", pyplot)
    figure.savefig.assert_called_once_with(out)
    pyplot.close.assert_called_once_with(figure)
    positions, totals = total_axes.barh.call_args.args
    assert positions == [0, 1] and totals == [9_600.0, 2_400.0]


def test_chart_save_failure_is_a_report_error(tmp_path: Path) -> None:
    pyplot = mock.MagicMock()
    figure = mock.MagicMock()
    figure.savefig.side_effect = OSError("Read-only file system")
    pyplot.subplots.return_value = (figure, (mock.MagicMock(), mock.MagicMock()))
    with pytest.raises(report_module.ReportError, match="cannot write the chart"):
        write_chart(SAMPLE, str(tmp_path / "x.png"), "total", pyplot)


def _live(count: int, final: bool = False) -> dict[str, Any]:
    report = json.loads(json.dumps(SAMPLE))
    report["components"][0]["count"] = count
    report.update(written_at="2026-12-02T10:00:00.000+00:00", uptime_s=12.5, final=final)
    return report


def test_watch_redraws_when_the_file_changes_and_ctrl_c_ends_it(tmp_path: Path) -> None:
    import queue
    import signal
    import threading
    import time

    path = tmp_path / "stats.json"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "agent.report", str(path), "--watch", "--every", "0.05"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in watcher.stdout], daemon=True
    )
    reader.start()
    seen: list[str] = []

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.1))
            except queue.Empty:
                continue
            if text in seen[-1]:
                return
        raise AssertionError(f"{text!r} not shown; got {seen!r}")

    try:
        wait_for("waiting for")
        path.write_text(json.dumps(_live(12_000)), encoding="utf-8")
        wait_for("12,000")
        assert any("written at 2026-12-02T10:00:00.000+00:00" in line for line in seen)
        replacement = tmp_path / "next.json"
        replacement.write_text(json.dumps(_live(13_500, final=True)), encoding="utf-8")
        os.replace(replacement, path)
        wait_for("13,500")
        assert any("final" in line for line in seen)
        path.write_text("{half", encoding="utf-8")
        wait_for("watching for the next write")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=10) == 0
        assert "Traceback" not in watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(timeout=10)
        watcher.stdout.close()
        watcher.stderr.close()
    assert not any("\x1b[" in line for line in seen)  # not a terminal: no screen codes


def test_watch_refuses_a_chart(sample_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([str(sample_file), "--watch", "--chart", "x.png"])
    assert stopped.value.code == 2
    assert "--watch and --chart" in capsys.readouterr().err
