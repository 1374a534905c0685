"""The ``opentelemetry`` plugin on real woven programs: spans, nesting, context, export.

Each test runs a program under ``python -m agent.bootstrap`` (the global tracer
provider is per process, so nothing here touches this one's): with an in-memory
exporter the program dumps its finished spans as JSON; with none the plugin configures
the SDK from ``OTEL_*`` and exports over OTLP/HTTP to a receiver the test runs on
127.0.0.1. The plugin's receivers are also driven directly, in a subprocess, with ends
that do not match their starts.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.hide import hiding

pytest.importorskip("opentelemetry.sdk.trace")

pytestmark = pytest.mark.slow

TIMEOUT = 60
ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = "workflow app.Workflow.on_message"

APP = textwrap.dedent(
    """
    import asyncio, json, os, sys, time

    SPANS = os.environ.get("APP_SPANS")  # set: this program configures OpenTelemetry itself
    seen = {}
    if SPANS:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        tracer = trace.get_tracer("app")

        def note(label):
            seen.setdefault(label, trace.get_current_span().get_span_context().span_id)

    else:
        def note(label):
            pass


    class Message:
        def __init__(self, unique_id):
            self.unique_id = unique_id


    class Consumer:
        def receive(self, message_id):
            return Message(message_id)


    class UpperService:
        def do_service(self, message):
            if SPANS:
                with tracer.start_as_current_span("app.inside-service"):
                    time.sleep(0.01)


    class FailingService:
        def do_service(self, message):
            raise KeyError(message.unique_id)


    class Producer:
        def produce(self, message):
            note("producer")


    def numbers(n):
        note("in_generator")
        for i in range(n):
            yield i


    class Workflow:
        def on_message(self, message):
            note("workflow")
            for service in (UpperService(), FailingService()):
                try:
                    service.do_service(message)
                except KeyError:
                    pass
            steps = numbers(3)
            next(steps)
            note("between_yields")
            list(steps)
            note("after_generator")
            Producer().produce(message)


    async def handle(i):
        note(f"task{i}_before")
        if SPANS:
            with tracer.start_as_current_span(f"app.task{i}"):
                await asyncio.sleep(0.01)
        else:
            await asyncio.sleep(0.01)
        return i


    async def tasks():
        return await asyncio.gather(handle(1), handle(2))


    def main():
        workflow = Workflow()
        if SPANS:
            with tracer.start_as_current_span("app.outside"):
                workflow.on_message(Consumer().receive("m-1"))
            with tracer.start_as_current_span("app.main"):
                print("tasks", asyncio.run(tasks()))
            note("end")
            spans = [
                {
                    "name": s.name,
                    "id": s.context.span_id,
                    "trace": s.context.trace_id,
                    "parent": s.parent.span_id if s.parent else None,
                    "kind": s.kind.name,
                    "attributes": dict(s.attributes),
                    "status": s.status.status_code.name,
                    "description": s.status.description,
                    "start": s.start_time,
                    "end": s.end_time,
                }
                for s in exporter.get_finished_spans()
            ]
            with open(SPANS, "w") as out:
                json.dump({"spans": spans, "seen": seen}, out)
        else:
            workflow.on_message(Consumer().receive("m-1"))
            print("tasks", asyncio.run(tasks()))
        print("done")
        sys.exit(int(os.environ.get("APP_EXIT", "0")))


    if __name__ == "__main__":
        main()
    """
)

POINTCUTS = """<agent>
  <aspects>
    <aspect name="consumer" type="consumer" pointcut="execution(* app.Consumer.receive(..))"
            message-id="message_id"/>
    <aspect name="workflow" type="workflow" pointcut="execution(* app.Workflow.on_message(..))"
            message-id="message.unique_id"/>
    <aspect name="services" type="service" pointcut="execution(* app.*Service.do_service(..))"
            message-id="message.unique_id"/>
    <aspect name="producer" type="producer" pointcut="execution(* app.Producer.produce(..))"
            message-id="message.unique_id"/>
    <aspect name="helpers" type="custom" pointcut="execution(* app.numbers(..))"/>
    <aspect name="tasks" type="custom" pointcut="execution(* app.handle(..))"/>
  </aspects>
  <plugins><plugin name="opentelemetry"/></plugins>
</agent>
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without OTEL_*, AGENT_*, proxies; the repository importable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "AGENT_", "TWINWEAVE_")) and "proxy" not in k.lower()
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def woven(project: Path, *options: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "agent.bootstrap", "--pointcuts", "aop.xml", *options]
    return subprocess.run(
        [*command, "app.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "aop.xml").write_text(POINTCUTS)
    return tmp_path


BACKENDS = ["bytecode"] + (["monitoring"] if sys.version_info >= (3, 12) else [])


def in_memory(project: Path, backend: str = "bytecode") -> tuple[dict, dict]:
    """Run the app with its own in-memory provider: (spans by name, span ids it saw current)."""
    dump = project / "spans.json"
    result = woven(project, "--backend", backend, env=clean_env(APP_SPANS=str(dump)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["tasks [1, 2]", "done"]
    assert "Traceback" not in result.stderr, result.stderr
    data = json.loads(dump.read_text())
    spans: dict[str, list[dict]] = {}
    for span in data["spans"]:
        spans.setdefault(span["name"], []).append(span)
    return spans, data["seen"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_spans_nest_as_the_calls_do_with_the_application_s_spans(project, backend):
    spans, seen = in_memory(project, backend)
    one = {name: found[0] for name, found in spans.items() if len(found) == 1}
    outside, flow = one["app.outside"], one[WORKFLOW]
    upper = one["service app.UpperService.do_service"]
    failing = one["service app.FailingService.do_service"]
    producer, generator = one["producer app.Producer.produce"], one["custom app.numbers"]
    inside, consumer = one["app.inside-service"], one["consumer app.Consumer.receive"]
    assert flow["parent"] == outside["id"] and consumer["parent"] == outside["id"]
    for child in (upper, failing, producer, generator):
        assert child["parent"] == flow["id"], child
        assert child["trace"] == flow["trace"] == outside["trace"]
        assert flow["start"] <= child["start"] <= child["end"] <= flow["end"]
    assert inside["parent"] == upper["id"]  # the application's span inside ours
    assert upper["start"] <= inside["start"] <= inside["end"] <= upper["end"]
    assert upper["end"] - upper["start"] >= 10_000_000  # the step's own times: it slept 10 ms
    assert seen["workflow"] == flow["id"]
    assert seen["producer"] == producer["id"]


def test_names_kinds_attributes_and_errors(project):
    spans, _ = in_memory(project)
    flow = spans[WORKFLOW][0]
    assert flow["kind"] == "CONSUMER"
    assert flow["attributes"] == {
        "code.function": "on_message",
        "code.namespace": "app.Workflow",
        "twinweave.aspect": "workflow",
        "messaging.message.id": "m-1",
    }
    assert flow["status"] == "UNSET"
    assert spans["consumer app.Consumer.receive"][0]["kind"] == "CONSUMER"
    assert spans["producer app.Producer.produce"][0]["kind"] == "PRODUCER"
    upper = spans["service app.UpperService.do_service"][0]
    assert upper["kind"] == "INTERNAL" and upper["status"] == "UNSET"
    assert "error.type" not in upper["attributes"]
    failing = spans["service app.FailingService.do_service"][0]
    assert failing["status"] == "ERROR" and failing["description"] == "KeyError"
    assert failing["attributes"]["error.type"] == "KeyError"
    assert failing["attributes"]["messaging.message.id"] == "m-1"
    task = spans["custom app.handle"][0]
    assert task["attributes"] == {
        "code.function": "handle",
        "code.namespace": "app",
        "twinweave.aspect": "tasks",
    }  # no message id, no messaging attribute


def test_a_generator_s_span_is_never_current_in_its_caller(project):
    spans, seen = in_memory(project)
    flow, generator = spans[WORKFLOW][0], spans["custom app.numbers"][0]
    assert generator["parent"] == flow["id"]
    # between two resumes the caller runs: its current span is still the workflow's
    assert seen["between_yields"] == seen["after_generator"] == flow["id"]
    assert seen["in_generator"] == flow["id"]
    assert seen["end"] == 0  # everything restored at the end: no span is current


def test_coroutines_under_asyncio_each_nest_in_their_own_task(project):
    spans, seen = in_memory(project)
    main = spans["app.main"][0]
    coroutines = {span["id"]: span for span in spans["custom app.handle"]}
    assert len(coroutines) == 2
    assert {span["parent"] for span in coroutines.values()} == {main["id"]}
    inner = spans["app.task1"] + spans["app.task2"]
    # each task's own span is a child of its own coroutine's span, never of the other's
    assert sorted(span["parent"] for span in inner) == sorted(coroutines)
    assert {seen["task1_before"], seen["task2_before"]} == set(coroutines)


class Receiver:
    """An OTLP/HTTP receiver on 127.0.0.1: every POST body kept by path, answered 200."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        lock = threading.Lock()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with lock:
                    bodies.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def attributes(key_values) -> dict:
    """OTLP KeyValues as a dict of Python values."""
    found = {}
    for kv in key_values:
        field = kv.value.WhichOneof("value")
        found[kv.key] = getattr(kv.value, field) if field else None
    return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def test_without_a_provider_the_otel_variables_configure_an_otlp_http_export(project, receiver):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    pytest.importorskip("opentelemetry.proto")
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    env = clean_env(
        OTEL_SERVICE_NAME="twinweave-test",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
    )
    result = woven(project, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["tasks [1, 2]", "done"]
    assert receiver.bodies.get("/v1/traces"), (receiver.bodies.keys(), result.stderr)
    spans = {}
    for body in receiver.bodies["/v1/traces"]:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            assert resource["service.name"] == "twinweave-test"
            assert resource["deployment.environment"] == "test"
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "twinweave"
                for span in scope_spans.spans:
                    spans.setdefault(span.name, []).append(span)
    flow = spans[WORKFLOW][0]
    assert flow.parent_span_id == b""  # no application span around it this time
    assert attributes(flow.attributes)["messaging.message.id"] == "m-1"
    for name in ("service app.UpperService.do_service", "producer app.Producer.produce"):
        (child,) = spans[name]
        assert child.parent_span_id == flow.span_id and child.trace_id == flow.trace_id
    (failing,) = spans["service app.FailingService.do_service"]
    assert failing.status.code == failing.status.STATUS_CODE_ERROR
    assert attributes(failing.attributes)["error.type"] == "KeyError"
    assert len(spans["custom app.handle"]) == 2

    histograms = {}
    for body in receiver.bodies.get("/v1/metrics", []):
        request = ExportMetricsServiceRequest.FromString(body)
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == "twinweave.step.duration":
                        assert metric.unit == "s"
                        for point in metric.histogram.data_points:
                            key = attributes(point.attributes)
                            name = (key["twinweave.step.name"], key["twinweave.step.failed"])
                            histograms[name] = histograms.get(name, 0) + point.count
    assert histograms[("app.Workflow.on_message", False)] == 1, result.stderr
    assert histograms[("app.FailingService.do_service", True)] == 1
    assert histograms[("app.handle", False)] == 2


def test_an_exporter_that_is_not_installed_is_one_clear_error(project):
    env = clean_env(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-grpc"
    else:
        env["OTEL_TRACES_EXPORTER"] = "no-such-exporter"
        package = "no-such-exporter"
    result = woven(project, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["tasks [1, 2]", "done"]
    errors = [line for line in result.stderr.splitlines() if "opentelemetry" in line]
    assert len(errors) == 1, result.stderr
    assert "OTEL_TRACES_EXPORTER" in errors[0] and package in errors[0]
    assert "Traceback" not in result.stderr


def test_without_the_extra_one_clear_message_and_the_program_runs(project):
    site = hiding("opentelemetry", project / "site")
    env = clean_env(APP_EXIT="3")
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    plain = subprocess.run(
        [sys.executable, "app.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    result = woven(project, env=env)
    assert plain.returncode == result.returncode == 3
    assert result.stdout == plain.stdout == "tasks [1, 2]\ndone\n"
    assert "Traceback" not in result.stderr, result.stderr
    about_it = [line for line in result.stderr.splitlines() if "opentelemetry" in line]
    assert len(about_it) == 1, result.stderr
    assert "pip install twinweave[otel]" in about_it[0]


DRIVE = textwrap.dedent(
    """
    import json, logging, threading
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from agent.events import JoinPoint, StartEvent, Step
    from agent.plugins import AgentContext
    from agent.plugins.otel import OpenTelemetryPlugin

    logging.basicConfig(level=logging.DEBUG)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    plugin = OpenTelemetryPlugin()
    plugin.start(AgentContext(python="", backend="bytecode"))
    thread = threading.get_ident()
    JOINPOINTS = {
        name: JoinPoint("a", "service", f"m.{name}", None, kind)
        for name, kind in (("f", "function"), ("g", "function"), ("gen", "generator"))
    }

    def start(name, t):
        plugin.on_start(StartEvent(JOINPOINTS[name], None, t, thread, -1))

    def end(name, t, failed=None):
        plugin.on_step(Step("a", "service", f"m.{name}", None, t, 5, failed, thread, -1))

    def current():
        return trace.get_current_span().get_span_context().span_id

    before = context.get_current()
    report = {}
    end("f", 1)  # an end without its start
    report["lone_end_kept_context"] = context.get_current() is before
    start("f", 10)
    start("g", 20)
    end("f", 10)  # the outer ends first
    report["outer_first_restored"] = context.get_current() is before
    end("g", 20)
    report["inner_after_kept"] = context.get_current() is before
    end("g", 20)  # twice
    start("f", 30)
    outer = current()
    start("gen", 40)  # a generator's span never becomes current
    report["generator_not_current"] = current() == outer
    end("f", 30)
    end("gen", 40, "ValueError")
    report["all_restored"] = context.get_current() is before
    report["mismatches"] = plugin.mismatches
    spans = {s.name + "@" + str(s.start_time): s for s in exporter.get_finished_spans()}
    report["ended"] = sorted(spans)
    report["generator_parent"] = spans["service m.gen@40"].parent.span_id == outer
    print(json.dumps(report))
    """
)


def test_ends_that_do_not_match_their_starts_never_raise_or_corrupt_the_context(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", DRIVE],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "lone_end_kept_context": True,
        "outer_first_restored": True,
        "inner_after_kept": True,
        "generator_not_current": True,
        "all_restored": True,
        "mismatches": 2,  # the outer's early end and the inner's late one
        "ended": [
            "service m.f@10",
            "service m.f@30",
            "service m.g@20",
            "service m.gen@40",
        ],
        "generator_parent": True,
    }
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stderr  # said once, then counted
