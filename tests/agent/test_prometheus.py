"""The ``prometheus`` plugin (agent.plugins.prometheus): real HTTP scrapes of woven programs.

The programs run as ``python -m agent.bootstrap`` subprocesses with a pointcut file naming
the plugin on 127.0.0.1, port 0 (a free one, which ``-v`` logs); the tests scrape
``/metrics`` with urllib and parse the exposition with prometheus_client's own parser.
The cluster's metrics on a real three-node cluster are in tests/cluster/test_metrics.py.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.events import JoinPoint
from agent.plugins import AgentContext, PluginError
from agent.plugins.prometheus import (
    DEFAULT_BUCKETS,
    PrometheusPlugin,
    cumulative_buckets,
    parse_buckets,
)
from agent.stats import bucket_of

pytest.importorskip("prometheus_client")  # the test extra installs it
from tests.hide import hiding
from tests.scrape import scrape, value

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30
FLOW = JoinPoint("flows", "workflow", "app.Flow.on_message")
CONTEXT = AgentContext(python="3.11.7", backend="bytecode")


# -- the histogram mapping and the options ---------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=20_000_000_000), min_size=1, max_size=300))
def test_cumulative_buckets_count_each_duration_at_its_bound(durations: list[int]) -> None:
    counts: dict[int, float] = {}
    for duration in durations:
        counts[bucket_of(duration)] = counts.get(bucket_of(duration), 0.0) + 1.0
    bounds_ns = [round(bound * 1e9) for bound in DEFAULT_BUCKETS]
    cumulative = cumulative_buckets(counts, len(durations), bounds_ns)
    assert cumulative == sorted(cumulative) and cumulative[-1] <= len(durations)
    for bound, below in zip(bounds_ns, cumulative):
        # exact, but for durations in the one fine bucket (1/64 wide) around the bound
        surely = sum(d <= bound * (1 - 1 / 64) for d in durations)
        maybe = sum(d <= bound * (1 + 1 / 64) for d in durations)
        assert surely <= below <= maybe


def test_cumulative_buckets_scale_sampled_weights_to_the_exact_count() -> None:
    # 4,096 calls of 1 us represented by 2,048 samples of weight 2.0, plus one of 2 s
    counts = {bucket_of(1_000): 4096.0 - 0.3, bucket_of(2_000_000_000): 1.0}
    cumulative = cumulative_buckets(counts, 4097, [10_000, 1_000_000_000, 5_000_000_000])
    assert cumulative == [4096, 4096, 4097]


@pytest.mark.parametrize("text", ["", "0.1,0.01", "0,1", "-1", "a,b", "1,inf", "1,1"])
def test_bad_buckets_and_ports_are_plugin_errors(text: str) -> None:
    if text == "":
        assert parse_buckets(text) == DEFAULT_BUCKETS
        return
    with pytest.raises(PluginError, match=f'buckets="{re.escape(text)}"'):
        PrometheusPlugin(buckets=text)


@pytest.mark.parametrize("port", ["-1", "65536", "http", "9464.5"])
def test_bad_port_is_a_plugin_error(port: str) -> None:
    with pytest.raises(PluginError, match=f'port="{re.escape(port)}"'):
        PrometheusPlugin(port=port)


def test_in_process_scrape_of_the_collector() -> None:
    plugin = PrometheusPlugin(port="0", buckets="0.000002,0.001")
    plugin.start(CONTEXT)
    try:
        assert plugin.url == f"http://127.0.0.1:{plugin.port}/metrics"
        plugin.on_timings(FLOW, [1_000, 1_500, 500_000], [2_000_000_000])
        samples = scrape(plugin.url)
        labels = {"aspect": "flows", "type": "workflow", "name": FLOW.name}
        bucket = "twinweave_step_duration_seconds_bucket"
        assert value(samples, bucket, le="2e-06", **labels) == 2
        assert value(samples, bucket, le="0.001", **labels) == 3
        assert value(samples, bucket, le="+Inf", **labels) == 4
        assert value(samples, "twinweave_step_duration_seconds_count", **labels) == 4
        assert math.isclose(
            value(samples, "twinweave_step_duration_seconds_sum", **labels), 2.0005025
        )
        assert value(samples, "twinweave_step_failures_total", **labels) == 1
        assert value(samples, "twinweave_info", python="3.11.7", backend="bytecode") == 1
        assert "twinweave_cluster_is_master" not in samples  # not a failover node
    finally:
        plugin.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{plugin.port}/metrics", timeout=2)


# -- a woven program, scraped while it runs ------------------------------------------------------

APP = textwrap.dedent(
    """
    import os, sys, time

    class Flow:
        def on_message(self, number):
            if number % 10 == 0:
                raise ValueError(number)
            return helper(number)

    def helper(number):
        return number * 2

    if __name__ == "__main__":
        flow, number = Flow(), 0
        print("STARTED", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists("stop") and time.monotonic() < deadline:
            try:
                flow.on_message(number)
            except ValueError:
                pass
            number += 1
            time.sleep(0.001)
        print("PROCESSED", number, flush=True)
    """
)

POINTCUTS = """<agent>
  <aspects>
    <aspect name="flows" type="workflow" pointcut="execution(* app.Flow.on_message(..))"/>
    <aspect name="helpers" type="service" pointcut="execution(* app.helper(..))"/>
  </aspects>
  <plugins>
    <plugin name="timing"/>
    <plugin name="prometheus" address="127.0.0.1" port="{port}"/>
  </plugins>
</agent>
"""


class Program:
    """A woven program in the background; its output in files, stopped by the test."""

    def __init__(
        self,
        root: Path,
        port: int | str = 0,
        env: dict[str, str] | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        (root / "app.py").write_text(APP)
        pointcuts = POINTCUTS.format(port=port).replace("127.0.0.1", address)
        (root / "aop.xml").write_text(pointcuts)
        self.root = root
        self.out = root / "out.txt"
        self.err = root / "err.txt"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        full_env["PYTHONPATH"] = str(ROOT)
        full_env.update(env or {})
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "agent.bootstrap", "-v", "--pointcuts", "aop.xml", "app.py"],
                cwd=root,
                env=full_env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def wait_for(self, path: Path, pattern: str) -> re.Match:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            match = re.search(pattern, path.read_text(errors="replace"))
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not in {path.name}:\n{path.read_text()}")

    def url(self) -> str:
        return self.wait_for(self.err, r"serving (http://127\.0\.0\.1:\d+/metrics)").group(1)

    def finish(self) -> int:
        (self.root / "stop").touch()
        try:
            return self.popen.wait(TIMEOUT)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(TIMEOUT)


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[list[Program]]:
    made: list[Program] = []
    yield made
    for program in made:
        program.kill()


def calls_and_failures(url: str, name: str) -> tuple[float, float]:
    samples = scrape(url)
    labels = {"name": name}
    count = value(samples, "twinweave_step_duration_seconds_count", **labels)
    assert value(samples, "twinweave_step_duration_seconds_bucket", le="+Inf", **labels) == count
    return count, value(samples, "twinweave_step_failures_total", **labels)


@pytest.mark.slow
def test_scrapes_of_a_running_woven_program_grow(tmp_path: Path, programs: list[Program]) -> None:
    program = Program(tmp_path)
    programs.append(program)
    url = program.url()
    deadline = time.monotonic() + TIMEOUT
    first = (0.0, 0.0)
    while first[0] < 20 and time.monotonic() < deadline:
        first = calls_and_failures(url, "app.Flow.on_message") if _has(url) else first
        time.sleep(0.1)
    assert first[0] >= 20
    second = first
    while second[0] <= first[0] and time.monotonic() < deadline:
        time.sleep(0.2)
        second = calls_and_failures(url, "app.Flow.on_message")
    assert second[0] > first[0]
    for count, failures in (first, second):
        # messages 0, 10, 20, ... raise: one in ten, give or take the batch being drained
        assert abs(failures - math.ceil(count / 10)) <= 1
    helpers, helper_failures = calls_and_failures(url, "app.helper")
    assert helpers > 0 and helper_failures == 0
    samples = scrape(url)
    for labels in samples["twinweave_step_duration_seconds_bucket"]:
        assert dict(labels)["type"] in ("workflow", "service")  # one series per component
    assert len(samples["twinweave_step_duration_seconds_count"]) == 2
    assert program.finish() == 0
    processed = int(program.wait_for(program.out, r"PROCESSED (\d+)").group(1))
    assert processed >= second[0]
    assert "twinweave timing report" in program.err.read_text()


def _has(url: str) -> bool:
    return "twinweave_step_duration_seconds_count" in scrape(url)


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["port in use", "bad address"])
def test_an_unusable_endpoint_is_one_clear_error_and_the_program_runs(
    tmp_path: Path, programs: list[Program], problem: str
) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        port = holder.getsockname()[1]
        if problem == "bad address":
            program = Program(tmp_path, address="256.0.0.1")
        else:
            program = Program(tmp_path, port=port)
        programs.append(program)
        program.wait_for(program.out, "STARTED")
        assert program.finish() == 0
    finally:
        holder.close()
    err = program.err.read_text()
    errors = [line for line in err.splitlines() if "plugin prometheus" in line]
    assert len(errors) == 1, err
    setting = f'port="{port}"' if problem == "port in use" else 'address="256.0.0.1"'
    assert setting in errors[0] and "failed to start" in errors[0]
    assert "Traceback" not in err
    assert "PROCESSED" in program.out.read_text()
    assert "app.Flow.on_message [flows]" in err  # the timing plugin still works


@pytest.mark.slow
def test_without_the_extra_one_message_says_what_to_install(
    tmp_path: Path, programs: list[Program]
) -> None:
    block = hiding("prometheus_client", tmp_path / "block")
    program = Program(tmp_path, env={"PYTHONPATH": os.pathsep.join([str(block), str(ROOT)])})
    programs.append(program)
    program.wait_for(program.out, "STARTED")
    assert program.finish() == 0
    err = program.err.read_text()
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "prometheus" in line and "ERROR" in line]
    assert "pip install twinweave[prometheus]" in line
    assert "PROCESSED" in program.out.read_text()
    assert "app.Flow.on_message [flows]" in err
