"""A trace that survives failover: the new master's redelivery links to the dead master's span.

Three real ``examples/fs_adapter.py`` nodes (``fs_cluster.py``) run with the adapter's own
aspects, the ``opentelemetry`` plugin, and a provider that a small plugin of the test sets
up at start, as an application would, exporting every span as one JSON line to a file the
nodes share (``SimpleSpanProcessor``: written as each span ends, so ``kill -9`` loses
nothing that ended). The master is killed with SIGKILL inside the producer of a message
(the adapter's ``--pause-at`` aid), after its services ended: their spans name the dead
master's workflow span as parent, the span that never ended. The new master finds the
message in ``cluster.inflight()`` with that span's ``traceparent``, redelivers it, and its
workflow span must carry a link to exactly that trace and span id.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fs_cluster import POINTCUTS, message_name

pytest.importorskip("opentelemetry.sdk.trace")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="compares time.monotonic() across processes (one clock system-wide on Linux)",
    ),
]

WORKFLOW = "workflow fs_adapter.StandardWorkflow.on_message"

SPAN_FILE = textwrap.dedent(
    """
    import json, os

    import cluster
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor, SpanExporter, SpanExportResult,
    )


    class JsonLines(SpanExporter):
        def __init__(self, path):
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def export(self, spans):
            for span in spans:
                line = {
                    "node": cluster.node_id(),
                    "name": span.name,
                    "trace": f"{span.context.trace_id:032x}",
                    "span": f"{span.context.span_id:016x}",
                    "parent": f"{span.parent.span_id:016x}" if span.parent else None,
                    "message": span.attributes.get("messaging.message.id"),
                    "links": [
                        {
                            "trace": f"{link.context.trace_id:032x}",
                            "span": f"{link.context.span_id:016x}",
                            "attributes": dict(link.attributes or {}),
                        }
                        for link in span.links
                    ],
                }
                os.write(self.fd, (json.dumps(line) + "\\n").encode())
            return SpanExportResult.SUCCESS


    class SpanFile:
        name = "span-file"

        def __init__(self, path):
            self.path = path

        def start(self, context):
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(JsonLines(self.path)))
            trace.set_tracer_provider(provider)

        def stop(self):
            pass
    """
)


def traced_pointcuts(folder: Path, spans: Path) -> Path:
    """The adapter's own aspects (examples/aop.xml), with this test's plugins."""
    aspects = ET.parse(POINTCUTS).getroot().find("aspects")
    assert aspects is not None
    plugins = (
        f'<plugins><plugin factory="spanfile:SpanFile" path="{spans}"/>'
        '<plugin name="opentelemetry"/></plugins>'
    )
    path = folder / "traced.xml"
    path.write_text(f"<agent>{ET.tostring(aspects, encoding='unicode')}{plugins}</agent>")
    return path


def read_spans(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_redelivery_span_links_to_the_span_of_the_killed_master(fs_cluster, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "spanfile.py").write_text(SPAN_FILE)
    spans_file = tmp_path / "spans.jsonl"
    name = message_name(3)
    c = fs_cluster("--delay-ms", "10", "--pause-at", f"written:{name}")
    c.options = ["--pointcuts", str(traced_pointcuts(tmp_path, spans_file))]
    c.env["PYTHONPATH"] = os.pathsep.join([str(plugins), *filter(None, [c.env.get("PYTHONPATH")])])
    first = c.start_settled()
    c.feed(range(6))
    paused = c.wait_event("paused", name)  # in the producer, its services ended
    victim = c.process(paused.node)
    victim.popen.kill()
    assert victim.wait() == -signal.SIGKILL
    new = c.wait_master(first.epoch)
    c.wait_done()
    c.check()  # still exactly once
    assert new.node != paused.node

    spans = read_spans(spans_file)
    of_message = [s for s in spans if s["message"] == name]
    dead = {
        (s["trace"], s["parent"])
        for s in of_message
        if s["node"] == paused.node and s["name"].startswith("service ")
    }
    assert len(dead) == 1, (of_message, c.describe())  # both services: one workflow span
    ((dead_trace, dead_span),) = dead
    assert not [s for s in of_message if s["node"] == paused.node and s["name"] == WORKFLOW]

    redelivery = [s for s in of_message if s["node"] == new.node and s["name"] == WORKFLOW]
    assert len(redelivery) == 1, (of_message, c.describe())
    (span,) = redelivery
    assert span["links"] == [
        {
            "trace": dead_trace,
            "span": dead_span,
            "attributes": {
                "twinweave.redelivered": True,
                "twinweave.redelivered.node": paused.node,
            },
        }
    ]
    assert span["trace"] != dead_trace  # a link, not a parent: the redelivery is a new trace
    others = [s for s in spans if s["name"] == WORKFLOW and s["message"] != name]
    assert others and not [s for s in others if s["links"]]
