"""Tests for the built-in trace plugin (agent.plugins.trace): the Chrome trace timeline file.

The fast tests drive the plugin through a real PluginSet and real probes; the slow
ones run woven programs through ``python -m agent.bootstrap`` and read the file.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.events import JoinPoint, Step
from agent.files import write_atomic
from agent.plugins import AgentContext, PluginError, PluginSet, build_plugins, receivers
from agent.plugins.trace import UNNAMED_TID, TracePlugin

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30
CONTEXT = AgentContext(python="3.11.7", backend="bytecode")
FLOW = JoinPoint("workflows", "workflow", "shop.Flow.on_message", "message")
SERVICE = JoinPoint("services", "service", "shop.Pay.do_service")
GENERATOR = JoinPoint("parts", "custom", "shop.parts", kind="generator")
X_FIELDS = ("name", "cat", "ph", "ts", "dur", "pid", "tid", "args")
BACKENDS = ["bytecode"] + (["monitoring"] if sys.version_info >= (3, 12) else [])


def ns(microseconds: float) -> int:
    """A file's ``ts``/``dur`` back in whole ns (exact: the file holds ns decimals)."""
    return round(microseconds * 1000)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def complete(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [event for event in trace["traceEvents"] if event["ph"] == "X"]


def thread_names(trace: dict[str, Any]) -> dict[int, str]:
    return {
        event["tid"]: event["args"]["name"]
        for event in trace["traceEvents"]
        if event["ph"] == "M" and event["name"] == "thread_name"
    }


def started(tmp_path: Path, **options: Any) -> TracePlugin:
    plugin = TracePlugin(file=str(tmp_path / "trace.json"), **options)
    plugin.start(CONTEXT)
    return plugin


def step(start_ns: int, duration_ns: int, order: int = -1, message_id: str | None = None) -> Step:
    return Step(
        "services",
        "service",
        "shop.Pay.do_service",
        message_id,
        start_ns,
        duration_ns,
        None,
        threading.get_ident(),
        order,
    )


# -- the receiver and the options ---------------------------------------------------------


def test_on_step_is_the_bounded_deques_own_append(tmp_path: Path) -> None:
    plugin = started(tmp_path, limit="3")
    found = receivers(plugin)
    assert set(found) == {"on_step", "on_timings"}
    assert type(found["on_step"]).__name__ == "builtin_function_or_method"  # no Python frame
    for index in range(5):
        found["on_step"](step(1_000 * index, 10, index))
    plugin.stop()
    assert [e["args"]["order"] for e in complete(load(tmp_path / "trace.json"))] == [2, 3, 4]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"limit": "0"}, 'limit="0"'),
        ({"limit": "-5"}, 'limit="-5"'),
        ({"limit": "many"}, 'limit="many"'),
        ({"limit": "2.5"}, 'limit="2.5"'),
        ({"interval": "0"}, 'interval="0"'),
        ({"interval": "soon"}, 'interval="soon"'),
        ({"file": " "}, 'file=" "'),
    ],
)
def test_bad_options_are_plugin_errors_naming_the_option(
    options: dict[str, str], named: str
) -> None:
    with pytest.raises(PluginError, match=named):
        TracePlugin(**options)


def test_file_in_a_missing_folder_is_a_plugin_error_at_start(tmp_path: Path) -> None:
    plugin = TracePlugin(file=str(tmp_path / "missing" / "t.json"))
    with pytest.raises(PluginError, match=r"file=.*missing.*does not exist"):
        plugin.start(CONTEXT)


def test_defaults_and_relative_path_taken_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = TracePlugin(limit="1_000")
    assert (plugin.limit, plugin.interval, plugin.file) == (1000, None, "trace-{pid}.json")
    assert TracePlugin().limit == 1_000_000
    monkeypatch.chdir(tmp_path)
    plugin.start(CONTEXT)
    assert plugin.path == str(tmp_path / f"trace-{os.getpid()}.json")


# -- the file, from real probes -------------------------------------------------------------


class Message:
    def __init__(self, unique_id: str) -> None:
        self.unique_id = unique_id


def test_real_probes_give_nested_events_with_their_fields(tmp_path: Path) -> None:
    plugin = TracePlugin(file=str(tmp_path / "trace.json"))
    plugins = PluginSet([plugin])
    plugins.start(CONTEXT)
    flow = plugins.probe_for(
        JoinPoint("workflows", "workflow", "shop.Flow.on_message", "message.unique_id")
    )
    service = plugins.probe_for(SERVICE)
    parts = plugins.probe_for(GENERATOR)
    assert flow is not None and service is not None and parts is not None
    outer = flow.enter(Message("m-1"))
    ok = service.enter()
    service.leave(ok)
    bad = service.enter()
    service.fail(bad, KeyError("k"))
    generator = parts.enter()
    parts.leave(generator)
    flow.leave(outer)
    plugins.stop()

    trace = load(tmp_path / "trace.json")
    events = complete(trace)
    assert [e["name"] for e in events] == ["shop.Pay.do_service"] * 2 + ["shop.Flow.on_message"]
    for event in events:
        assert set(X_FIELDS) <= set(event)
        assert event["pid"] == os.getpid()
        assert event["args"]["message_id"] == "m-1"
        assert event["args"]["type"] == event["cat"]
    first, second, parent = events
    assert [e["args"]["order"] for e in events] == [1, 2, 0]
    assert "failed" not in first["args"] and second["args"]["failed"] == "KeyError"
    assert parent["args"]["aspect"] == "workflows" and parent["cat"] == "workflow"
    begin, end = (e for e in trace["traceEvents"] if e["ph"] in "be")
    assert (begin["ph"], end["ph"], begin["id"]) == ("b", "e", end["id"])
    assert begin["args"]["order"] == 3 and begin["name"] == end["name"] == "shop.parts"
    for child_start, child_end in [
        (ns(first["ts"]), ns(first["ts"]) + ns(first["dur"])),
        (ns(second["ts"]), ns(second["ts"]) + ns(second["dur"])),
        (ns(begin["ts"]), ns(end["ts"])),
    ]:
        assert ns(parent["ts"]) <= child_start <= child_end
        assert child_end <= ns(parent["ts"]) + ns(parent["dur"])
    assert thread_names(trace)[parent["tid"]] == threading.current_thread().name
    assert trace["displayTimeUnit"] == "ms"
    other = trace["otherData"]
    assert (other["steps_seen"], other["steps_kept"], other["steps_dropped"]) == (4, 4, 0)
    assert other["final"] is True and other["python"] == "3.11.7"


def test_times_are_exact_whole_nanoseconds_relative_to_a_whole_second(tmp_path: Path) -> None:
    plugin = started(tmp_path)
    now = time.time_ns()
    parent = step(now, 1_000_003)
    # a child one nanosecond inside each end: what a double of epoch microseconds would lose
    child = step(now + 1, 1_000_001)
    plugin.on_step(child)
    plugin.on_step(parent)
    plugin.stop()
    trace = load(tmp_path / "trace.json")
    origin = trace["otherData"]["time_origin_unix_s"]
    assert origin == now // 1_000_000_000
    inner, outer = complete(trace)
    assert ns(inner["ts"]) - ns(outer["ts"]) == 1
    assert ns(inner["dur"]) == 1_000_001 and ns(outer["dur"]) == 1_000_003
    assert origin * 1_000_000_000 + ns(outer["ts"]) == now
    assert '"dur":1000.003' in (tmp_path / "trace.json").read_text()


def test_limit_keeps_the_newest_and_counts_the_dropped(tmp_path: Path) -> None:
    plugin = TracePlugin(file=str(tmp_path / "trace.json"), limit="4")
    plugins = PluginSet([plugin])
    plugins.start(CONTEXT)
    probe = plugins.probe_for(FLOW)
    assert probe is not None
    for index in range(10):
        probe.leave(probe.enter(f"m{index}"))
    plugins.stop()
    trace = load(tmp_path / "trace.json")
    assert [e["args"]["message_id"] for e in complete(trace)] == ["m6", "m7", "m8", "m9"]
    other = trace["otherData"]
    assert (other["steps_seen"], other["steps_kept"], other["steps_dropped"]) == (10, 4, 6)


def test_writes_while_threads_record_keep_every_step_whole(tmp_path: Path) -> None:
    plugin = started(tmp_path, limit="5000")
    now = time.time_ns()

    def record() -> None:
        for index in range(20_000):
            plugin.on_step(step(now + index, index % 997, index % 997))

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    writes = 0
    while any(thread.is_alive() for thread in threads) or not writes:
        assert plugin.write()
        writes += 1
        for event in complete(load(tmp_path / "trace.json")):
            assert ns(event["dur"]) == event["args"]["order"]  # fields never mixed up
    for thread in threads:
        thread.join()
    plugin.stop()
    assert len(complete(load(tmp_path / "trace.json"))) == 5000


def test_a_thread_never_seen_alive_gets_a_made_up_tid_and_a_name(tmp_path: Path) -> None:
    plugin = started(tmp_path)
    plugin.on_step(step(time.time_ns(), 5)._replace(thread=12345))
    plugin.stop()
    trace = load(tmp_path / "trace.json")
    (event,) = complete(trace)
    assert event["tid"] == UNNAMED_TID
    assert thread_names(trace)[UNNAMED_TID] == "Python thread 12345"


def test_empty_trace_is_still_a_valid_file(tmp_path: Path) -> None:
    plugin = started(tmp_path)
    plugin.stop()
    trace = load(tmp_path / "trace.json")
    assert complete(trace) == [] and trace["otherData"]["steps_kept"] == 0


def test_write_failure_is_logged_with_path_and_reason_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    plugin = TracePlugin(file=str(folder / "trace.json"))
    plugin.start(CONTEXT)
    plugin.on_step(step(time.time_ns(), 5))
    folder.rmdir()
    with caplog.at_level(logging.ERROR, logger="agent.plugins.trace"):
        assert plugin.write() is False
        assert plugin.write() is False  # a live rewrite that keeps failing is logged once
        plugin.stop()  # and the final one always
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(str(folder / "trace.json") in e and "FileNotFoundError" in e for e in errors)


def test_atomic_write_keeps_the_old_file_when_a_write_breaks(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text('{"old": true}')

    def pieces() -> Iterator[str]:
        yield '{"traceEvents":['
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(str(path), pieces())
    assert load(path) == {"old": True}
    assert os.listdir(tmp_path) == ["trace.json"]  # no temporary file left behind


def test_bad_option_through_build_plugins_is_one_message_and_no_plugin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Spec:
        name = "trace"
        factory = None
        options = {"limit": "zero"}
        line = 7

    with caplog.at_level(logging.ERROR):
        plugins, errors = build_plugins([Spec()])
    assert plugins == [] and len(errors) == 1
    assert 'limit="zero"' in errors[0] and "line 7" in errors[0]


# -- real woven programs ----------------------------------------------------------------------

APP = textwrap.dedent(
    """
    import sys, threading

    class Message:
        def __init__(self, unique_id, payload):
            self.unique_id = unique_id
            self.payload = payload

    class Upper:
        def do_service(self, message):
            message.payload = message.payload.upper()

    class Check:
        def do_service(self, message):
            if message.payload.startswith("BAD"):
                raise ValueError("bad payload")

    def chunks(text):
        for i in range(0, len(text), 2):
            yield text[i : i + 2]

    class Producer:
        def produce(self, message):
            return "-".join(chunks(message.payload))

    class Workflow:
        services = (Upper(), Check())
        producer = Producer()

        def on_message(self, message):
            try:
                for service in self.services:
                    service.do_service(message)
            except ValueError:
                return "rejected"
            return self.producer.produce(message)

    def run(prefix, flow):
        for i in range(3):
            payload = "bad" if (prefix, i) == ("w", 1) else "hello"
            print(prefix + str(i), flow.on_message(Message(prefix + str(i), payload)), flush=True)

    if __name__ == "__main__":
        flow = Workflow()
        done, parked = threading.Event(), threading.Event()

        def worker():
            run("w", flow)
            done.set()
            parked.wait()  # still alive at exit, so the timeline names it

        threading.Thread(target=worker, name="worker-1", daemon=True).start()
        done.wait()
        run("m", flow)
        if sys.argv[1:] == ["wait"]:
            print("READY", flush=True)
            sys.stdin.readline()
            run("n", flow)
    """
)

POINTCUTS = """<agent>
  <aspects>
    <aspect name="workflows" type="workflow"
            pointcut="execution(* app.Workflow.on_message(message))"
            message-id="message.unique_id"/>
    <aspect name="services" type="service" pointcut="execution(* app.*.do_service(..))"/>
    <aspect name="producers" type="producer" pointcut="execution(* app.Producer.produce(..))"/>
    <aspect name="chunks" type="custom" pointcut="execution(* app.chunks(..))"/>
  </aspects>
  <plugins>
    PLUGIN
    <plugin name="timing" report="stats.json"/>
  </plugins>
</agent>
"""

OUTPUT = [
    "w0 HE-LL-O",
    "w1 rejected",
    "w2 HE-LL-O",
    "m0 HE-LL-O",
    "m1 HE-LL-O",
    "m2 HE-LL-O",
]


def project(tmp_path: Path, plugin: str) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "aop.xml").write_text(POINTCUTS.replace("PLUGIN", plugin))
    return tmp_path


def command(*args: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env.pop("AGENT_POINTCUTS", None)
    env["PYTHONPATH"] = str(ROOT)
    return [sys.executable, "-m", "agent.bootstrap", "--pointcuts", "aop.xml", *args], env


def bootstrap(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv, env = command(*args)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def only_trace_file(folder: Path) -> Path:
    (path,) = folder.glob("trace-*.json")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_timeline_of_a_woven_program(tmp_path: Path, backend: str) -> None:
    folder = project(tmp_path, '<plugin name="trace"/>')
    result = bootstrap(folder, "--backend", backend, "app.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == OUTPUT
    path = only_trace_file(folder)
    trace = load(path)
    events = trace["traceEvents"]
    pid = int(path.stem.split("-")[1])
    assert {event["pid"] for event in events} == {pid}

    flows = complete(trace)
    for event in flows:
        assert set(X_FIELDS) <= set(event), event
        assert {"message_id", "type", "aspect", "order"} <= set(event["args"]), event
        assert event["args"]["type"] == event["cat"] and event["dur"] >= 0
    by_message: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event["ph"] in "Xb":
            by_message.setdefault(event["args"]["message_id"], []).append(event)
    assert sorted(by_message) == ["m0", "m1", "m2", "w0", "w1", "w2"]
    ends = {e["id"]: e for e in events if e["ph"] == "e"}
    for message_id, steps in by_message.items():
        (workflow,) = (e for e in steps if e["cat"] == "workflow")
        assert workflow["args"]["order"] == 0 and "failed" not in workflow["args"]
        start, end = ns(workflow["ts"]), ns(workflow["ts"]) + ns(workflow["dur"])
        for event in steps:
            assert event["tid"] == workflow["tid"]
            stop = (
                ns(ends[event["id"]]["ts"])
                if event["ph"] == "b"
                else ns(event["ts"]) + ns(event["dur"])
            )
            assert start <= ns(event["ts"]) <= stop <= end, (message_id, event)
        kinds = [e["cat"] for e in sorted(steps, key=lambda e: e["args"]["order"])]
        if message_id == "w1":
            assert kinds == ["workflow", "service", "service"]
            assert [e["args"].get("failed") for e in steps if e["cat"] == "service"] == [
                None,
                "ValueError",
            ]
        else:
            assert kinds == ["workflow", "service", "service", "producer", "custom"]
            (producer,) = (e for e in steps if e["cat"] == "producer")
            (generator,) = (e for e in steps if e["ph"] == "b")
            assert generator["name"] == "app.chunks"
            assert ns(producer["ts"]) <= ns(generator["ts"])
            assert ns(ends[generator["id"]]["ts"]) <= ns(producer["ts"]) + ns(producer["dur"])

    names = thread_names(trace)
    tids = {e["args"]["message_id"][0]: e["tid"] for e in flows}
    assert names[tids["m"]] == "MainThread" and names[tids["w"]] == "worker-1"
    assert tids["m"] != tids["w"]
    (process,) = (e for e in events if e["ph"] == "M" and e["name"] == "process_name")
    assert process["args"]["name"] == "app.py"
    other = trace["otherData"]
    kept = sum(1 for e in events if e["ph"] in "Xb")
    assert (other["steps_seen"], other["steps_kept"], other["steps_dropped"]) == (kept, kept, 0)
    assert kept == 5 * 5 + 3  # w1 was rejected after two services
    assert other["final"] is True


@pytest.mark.slow
def test_limit_keeps_only_the_newest_steps(tmp_path: Path) -> None:
    folder = project(tmp_path, '<plugin name="trace" file="t.json" limit="7"/>')
    result = bootstrap(folder, "app.py")
    assert result.returncode == 0, result.stderr
    trace = load(folder / "t.json")
    kept = [e for e in trace["traceEvents"] if e["ph"] in "Xb"]
    assert len(kept) == 7
    # in the order they ended; the main thread ran last: m1's producer and workflow,
    # then m2's five steps
    assert [e["args"]["message_id"] for e in kept] == ["m1"] * 2 + ["m2"] * 5
    assert kept[-1]["cat"] == "workflow"
    other = trace["otherData"]
    assert (other["steps_seen"], other["steps_kept"], other["steps_dropped"]) == (28, 7, 21)


def read_lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def wait_for(ready: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"not ready after {timeout} s")


@pytest.mark.slow
def test_interval_rewrites_the_file_while_the_program_runs(tmp_path: Path) -> None:
    folder = project(tmp_path, '<plugin name="trace" file="live.json" interval="0.2"/>')
    argv, env = command("app.py", "wait")
    with subprocess.Popen(
        argv,
        cwd=folder,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
        try:
            assert [lines.get(timeout=TIMEOUT) for _ in range(7)][-1] == "READY"

            def live() -> dict[str, Any] | None:
                try:
                    trace = load(folder / "live.json")  # atomic: never half a file
                except FileNotFoundError:
                    return None
                return trace if trace["otherData"]["steps_kept"] == 28 else None

            trace = wait_for(live)
            assert trace["otherData"]["final"] is False
            assert process.poll() is None  # written while the program still runs
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.close()
            assert process.wait(timeout=TIMEOUT) == 0
        finally:
            process.kill()
    final = load(folder / "live.json")
    assert final["otherData"]["final"] is True
    assert final["otherData"]["steps_kept"] == 28 + 15
    assert sorted({e["args"]["message_id"][0] for e in complete(final)}) == ["m", "n", "w"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ('limit="0"', 'limit="0"'),
        ('limit="lots"', 'limit="lots"'),
        ('interval="-1"', 'interval="-1"'),
        ('file="no/such/folder/t.json"', "no/such/folder"),
    ],
)
def test_bad_option_is_one_message_and_the_program_runs(
    tmp_path: Path, options: str, named: str
) -> None:
    folder = project(tmp_path, f'<plugin name="trace" {options}/>')
    result = bootstrap(folder, "app.py")
    assert result.returncode == 0
    assert result.stdout.splitlines() == OUTPUT
    messages = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(messages) == 1, result.stderr
    assert named in messages[0] and "trace" in messages[0]
    assert "Traceback" not in result.stderr
    assert load(folder / "stats.json")["components"]  # the other plugin still works
    assert sorted(p.name for p in folder.iterdir()) == ["aop.xml", "app.py", "stats.json"]
