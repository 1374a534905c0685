"""The built-in ``opentelemetry`` plugin: a span per woven step, and durations as metrics.

This module owns turning start events and steps into OpenTelemetry spans (names,
kinds, attributes, parents, status, the links of redelivered messages), choosing
the tracer provider, and turning batched durations into an OTel histogram. It does
not build events (``agent.events``), record what is in flight (``failover``, which
stores each workflow's W3C trace context for a new master) or export anything
itself: the OpenTelemetry SDK and its exporters do that.

Spans. Each woven step gets a span named ``TYPE NAME`` (``workflow
fs_adapter.StandardWorkflow.on_message``), started and ended at the step's own
times, with ``code.function``/``code.namespace`` (the dotted name split at its last
dot), ``twinweave.aspect`` and, when the step has one,
``messaging.message.id``. A failed step has status ERROR and ``error.type``, both
the exception's type name. A workflow step that redelivers a message the previous
master had in flight (``cluster.inflight()``) links to that master's span.

Which provider. The agent starts before the application's ``main``, so the choice is
made at the first event: the application's global tracer provider if it set one by
then; otherwise one this plugin configures the way ``opentelemetry-instrument`` does,
from the standard variables (``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
through ``Resource.create``, ``OTEL_TRACES_EXPORTER``, default ``otlp``, resolved
through the ``opentelemetry_traces_exporter`` entry points, endpoints read by the
exporters themselves), with a ``BatchSpanProcessor`` per exporter, and sets it as the
global provider, so that the application's own spans go the same way. ``otlp`` means
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``, default
``http/protobuf`` as the OpenTelemetry specification says (the Python SDK's own
auto-configuration still defaults to ``grpc``, whose exporter the ``otel`` extra does
not install). The exporters are checked at start, so a missing package is one error
naming the variable and the package. Only what this plugin configured is shut down
(flushed) at stop; an application's provider is its own. Metrics work the same way,
with ``OTEL_METRICS_EXPORTER`` (configured only when it is set and not ``none``).

Context. For ``function`` and ``coroutine`` steps the span is made current while the
step runs (the receivers run in the caller's context, and every asyncio task has its
own), so spans nest as the calls do: the application's spans inside a woven call are
children of ours, ours children of the application's current span. A generator's (or
async generator's) step starts at its first resume and ends when it finishes, the
caller running in between on the same thread, so its span is started under the current
span but never made current: that would leak into the caller. An end is matched to its
start by ``(thread, start_ns, name)``, identical in both events; an end without a start
is ignored. An end that finds another context current than the one its start made (an
end lost, an out-of-order end) undoes its own attach and those made on top of it, as an
exception would, and the later ends of those leave the context alone: counted, said
once, never raised.

Cost. Everything that does not change from call to call (name, kind, attributes, whether
the span becomes current) is computed once per join point; an event costs a dictionary
look-up, the SDK's ``start_span`` or ``end``, and the context switch. Durations reach the
histogram in batches on the drain thread (``on_timings``), never on the calling thread.
Exports run with profiling off for the exporting thread, so woven code an exporter
calls (an HTTP client a pointcut matched) never feeds spans back into the export.

Option (attribute of ``<plugin name="opentelemetry" .../>``): ``tracer``, the
instrumentation scope of the spans and the histogram (default ``twinweave``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

from agent import __version__, events
from agent.events import JoinPoint, StartEvent, Step
from agent.plugins import AgentContext, Plugin, PluginError, _entry_points, import_extra

log = logging.getLogger(__name__)

DURATION_METRIC = "twinweave.step.duration"
DURATION_BUCKETS = (
    0.000_001,
    0.000_005,
    0.000_01,
    0.000_05,
    0.000_1,
    0.000_5,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
)
"""Histogram boundaries in seconds: woven steps range from microseconds to seconds."""

MESSAGE_ID = "messaging.message.id"
REDELIVERED = "twinweave.redelivered"

_DEFAULT_PROTOCOL = "http/protobuf"  # the specification's default (see the module docstring)
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_PACKAGES = {
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http (pip install twinweave[otel])",
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
}
"""The package to install for an exporter entry point, when we know it."""


class _Signal(NamedTuple):
    """Where the exporters of one signal (traces, metrics) are named."""

    variable: str
    protocol_variable: str
    group: str
    default: str


_TRACES = _Signal(
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "opentelemetry_traces_exporter",
    "otlp",
)
_METRICS = _Signal(
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "opentelemetry_metrics_exporter",
    "none",  # unlike traces: metrics only when asked for (see the module docstring)
)


def _exporter_classes(signal: _Signal) -> list[type]:
    """The exporter classes the environment names for ``signal``; PluginError if one is missing."""
    value = os.environ.get(signal.variable, "").strip() or signal.default
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or [name.lower() for name in names] == ["none"]:
        return []
    found = {entry.name: entry for entry in _entry_points(signal.group)}
    classes = []
    for name in names:
        entry_name = name
        if name == "otlp":
            protocol = (
                os.environ.get(signal.protocol_variable, "").strip()
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
                or _DEFAULT_PROTOCOL
            )
            if protocol not in _OTLP_BY_PROTOCOL:
                raise PluginError(
                    f"{signal.variable}=otlp with OTLP protocol {protocol!r} "
                    f"(${signal.protocol_variable} or $OTEL_EXPORTER_OTLP_PROTOCOL): the Python "
                    f"exporters support {' and '.join(sorted(_OTLP_BY_PROTOCOL))}"
                )
            entry_name = _OTLP_BY_PROTOCOL[protocol]
        entry = found.get(entry_name)
        if entry is None:
            package = _PACKAGES.get(entry_name, "the package that provides it")
            raise PluginError(
                f"{signal.variable}={value} needs the exporter {entry_name!r} (entry point "
                f"group {signal.group}), which is not installed: install {package}, or set "
                f"{signal.variable}=none"
            )
        try:
            classes.append(entry.load())
        except Exception as exc:
            raise PluginError(
                f"{signal.variable}={value}: the exporter {entry_name!r} ({entry.value}) cannot "
                f"be imported: {type(exc).__name__}: {exc}"
            ) from exc
    return classes


def _profiling_off(exporter: Any) -> Any:
    """``exporter`` with its ``export`` running as agent work: woven code it calls is silent.

    Exporters run on the SDK's own threads (batch processor, periodic reader); marking
    the thread as dispatching for the call (``agent.events``) keeps an HTTP client that a
    pointcut matched from turning each export into new spans to export.
    """
    export = exporter.export
    dispatching = events._dispatching
    get_ident = threading.get_ident

    def quiet_export(*args: Any, **kwargs: Any) -> Any:
        ident = get_ident()
        if ident in dispatching:
            return export(*args, **kwargs)
        dispatching.add(ident)
        try:
            return export(*args, **kwargs)
        finally:
            dispatching.discard(ident)

    exporter.export = quiet_export
    return exporter


def _code_attributes(name: str) -> dict[str, str]:
    """``code.function`` and ``code.namespace`` of a dotted name (``mod.Class`` + ``method``)."""
    namespace, _, function = name.rpartition(".")
    attributes = {"code.function": function}
    if namespace:
        attributes["code.namespace"] = namespace
    return attributes


class _Shape(NamedTuple):
    """What every span of one join point shares, computed at its first event."""

    joinpoint: JoinPoint
    name: str | None
    """``None`` while tracing is off (no provider: ``OTEL_SDK_DISABLED``)."""
    kind: Any
    attributes: dict[str, Any]
    current: bool
    """Whether the span is made current while the step runs (functions, coroutines)."""
    redelivery: bool
    """Whether a start may redeliver a message of the previous master (workflows)."""


class OpenTelemetryPlugin(Plugin):
    """Spans for woven steps and a duration histogram (see the module docstring)."""

    name = "opentelemetry"

    def __init__(self, tracer: str = "twinweave") -> None:
        self.trace = import_extra("opentelemetry.trace", "otel", "opentelemetry")
        import_extra("opentelemetry.sdk.trace", "otel", "opentelemetry")
        self.scope = tracer or "twinweave"
        self.mismatches = 0
        """Ends that found the context changed under them (counted, never raised)."""
        self._shapes: dict[int, _Shape] = {}  # by id(joinpoint)
        self._open: dict[tuple[int, int, str], tuple[Any, Any, Any]] = {}
        """(thread, start_ns, name) -> (span, token of its attach or None, context attached)."""
        self._unwound: set[int] = set()  # ids of tokens undone by an outer step's end
        self._own_tokens = True  # attach() returns contextvars tokens (checked at _decide)
        self._lock = threading.Lock()
        self._decided = False
        self._owned: list[Any] = []  # providers this plugin configured: shut down at stop
        self._span_exporters: list[type] = []
        self._metric_exporters: list[type] = []
        self._start_span: Callable[..., Any] | None = None
        self._histogram: Any = None
        self._metric_attributes: dict[JoinPoint, tuple[dict, dict]] = {}
        self._cluster: Any = None  # the cluster module, once a workflow is traced
        self._inflight: list | None = None  # the node's list the links were built from
        self._links: dict[str, tuple[Any, ...]] = {}
        from opentelemetry.context import attach, detach
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.status import Status, StatusCode

        self._attach = attach
        self._detach = detach
        self._set_span = set_span_in_context
        self._status = Status
        self._error = StatusCode.ERROR
        # CONSUMER: a workflow (and a consumer) handles a message that arrived from outside,
        # the receiving end of an asynchronous exchange; PRODUCER: the producer sends it on.
        # Services and other steps are work inside the process, so INTERNAL.
        self._kinds = {
            "workflow": SpanKind.CONSUMER,
            "consumer": SpanKind.CONSUMER,
            "producer": SpanKind.PRODUCER,
        }
        self._internal = SpanKind.INTERNAL

    # -- life cycle ---------------------------------------------------------------------

    def start(self, context: AgentContext) -> None:
        """Check now what the environment asks for, so mistakes show before the first call."""
        if isinstance(self.trace.get_tracer_provider(), self.trace.ProxyTracerProvider):
            self._span_exporters = _exporter_classes(_TRACES)
        if _default_meter_provider():
            self._metric_exporters = _exporter_classes(_METRICS)

    def stop(self) -> None:
        """Flush and shut down the providers this plugin configured (not the application's)."""
        for provider in reversed(self._owned):
            try:
                provider.shutdown()
            except Exception as exc:
                log.warning(
                    "twinweave opentelemetry: shutting down %s failed: %s: %s",
                    type(provider).__name__,
                    type(exc).__name__,
                    exc,
                )
        self._owned.clear()

    # -- steps mode ---------------------------------------------------------------------

    def on_start(self, event: StartEvent) -> None:
        joinpoint = event.joinpoint
        # By id: a JoinPoint's own hash is a Python-level dataclass method, and every
        # probe keeps its JoinPoint alive; the identity check covers a recycled id.
        shape = self._shapes.get(id(joinpoint))
        if shape is None or shape[0] is not joinpoint:
            shape = self._shape(joinpoint)
        _, name, kind, attributes, current, redelivery = shape
        if name is None:  # tracing is off
            return
        message_id = event.message_id
        links: Sequence[Any] = ()
        if message_id is not None:
            attributes = {**attributes, MESSAGE_ID: message_id}
            if redelivery:
                links = self._redelivered(message_id)
        span = self._start_span(name, None, kind, attributes, links, event.start_ns)
        key = (event.thread, event.start_ns, joinpoint.name)
        if current:
            context = self._set_span(span)
            self._open[key] = (span, self._attach(context), context if self._own_tokens else None)
        else:
            self._open[key] = (span, None, None)

    def on_step(self, step: Step) -> None:
        entry = self._open.pop((step.thread, step.start_ns, step.name), None)
        if entry is None:  # its start was not seen (tracing off then, or a plugin error)
            return
        span, token, context = entry
        if token is not None:
            if context is not None and token.var.get() is context:
                token.var.reset(token)  # what opentelemetry.context.detach does, minus 2 frames
            else:
                self._restore(token, context)
        if step.failed is not None:
            span.set_attribute("error.type", step.failed)
            span.set_status(self._status(self._error, step.failed))
        span.end(step.start_ns + step.duration_ns)

    def _restore(self, token: Any, context: Any) -> None:
        """Undo a step's attach when the context is not simply the one it made current.

        Steps made current nest strictly in practice; this is the defence for when they
        do not (an end lost, the application attaching without detaching). The rule is
        an exception's: the ending step's attach is undone, and with it those made on top
        of it, whose own ends later leave the context alone. Counted; said once.
        """
        if context is None:  # a runtime context that is not contextvars: its own detach
            self._detach(token)
            return
        with self._lock:
            if id(token) in self._unwound:  # an outer step's end undid this one already
                self._unwound.discard(id(token))
                self._mismatched()
                return
            ours = {
                id(entry[2]): entry[1]
                for entry in list(self._open.values())
                if entry[2] is not None
            }
            current = token.var.get(None)
            while id(current) in ours and current is not context:
                above = ours.pop(id(current))
                self._unwound.add(id(above))
                current = above.old_value
        try:
            token.var.reset(token)
        except (ValueError, RuntimeError):  # made in another context, or used already
            pass
        self._mismatched()

    def _mismatched(self) -> None:
        self.mismatches += 1
        if self.mismatches == 1:
            log.warning(
                "twinweave opentelemetry: a step ended while the current context was not the "
                "one it started; its span ended and the context was restored to what it was "
                "before the step (further cases are only counted)"
            )

    # -- batched durations: the histogram -------------------------------------------------

    def on_timings(self, joinpoint: JoinPoint, ok: list[int], failed: list[int]) -> None:
        histogram = self._histogram
        if histogram is None:
            histogram = self._histogram = self._make_histogram()
            if histogram is None:
                return
        shared = self._metric_attributes.get(joinpoint)
        if shared is None:
            base = {
                "twinweave.aspect": joinpoint.aspect,
                "twinweave.step.type": joinpoint.type,
                "twinweave.step.name": joinpoint.name,
            }
            shared = self._metric_attributes[joinpoint] = (
                {**base, "twinweave.step.failed": False},
                {**base, "twinweave.step.failed": True},
            )
        record = histogram.record
        for durations, attributes in ((ok, shared[0]), (failed, shared[1])):
            for duration in durations:
                record(duration / 1e9, attributes)

    def _make_histogram(self) -> Any:
        """The duration histogram, once a meter provider is configured (else None, for now)."""
        if _default_meter_provider():
            return None
        from opentelemetry.metrics import get_meter_provider

        meter = get_meter_provider().get_meter(self.scope, __version__)
        description = "Duration of woven steps (twinweave)"
        try:
            return meter.create_histogram(
                DURATION_METRIC,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
            )
        except TypeError:  # an API older than 1.23 has no advisory boundaries
            return meter.create_histogram(DURATION_METRIC, unit="s", description=description)

    # -- first event of a join point --------------------------------------------------------

    def _shape(self, joinpoint: JoinPoint) -> _Shape:
        with self._lock:
            if not self._decided:
                self._decided = True
                self._decide()
            if self._start_span is None:
                shape = _Shape(joinpoint, None, None, {}, False, False)
            else:
                if joinpoint.type == "workflow" and self._cluster is None:
                    import cluster  # only now: the plugin runs outside failover mode too

                    self._cluster = cluster
                # The step type is not repeated as an attribute: it begins the span's name,
                # and the SDK charges a few microseconds for every attribute of every span.
                attributes = {
                    **_code_attributes(joinpoint.name),
                    "twinweave.aspect": joinpoint.aspect,
                }
                shape = _Shape(
                    joinpoint,
                    f"{joinpoint.type} {joinpoint.name}",
                    self._kinds.get(joinpoint.type, self._internal),
                    attributes,
                    joinpoint.kind in ("function", "coroutine"),
                    joinpoint.type == "workflow",
                )
            self._shapes[id(joinpoint)] = shape
            return shape

    def _decide(self) -> None:
        """Choose the providers (at the first event: the application has had its chance)."""
        from opentelemetry.context import get_current

        probe = self._attach(get_current())
        # The SDK's runtime context is contextvars; another ($OTEL_PYTHON_CONTEXT) keeps
        # its tokens opaque, and then ends simply call its detach.
        self._own_tokens = isinstance(probe, contextvars.Token)
        self._detach(probe)
        provider = self.trace.get_tracer_provider()
        if isinstance(provider, self.trace.ProxyTracerProvider):
            provider = self._configure_tracing()
        if provider is not None:
            self._start_span = provider.get_tracer(self.scope, __version__).start_span
        if self._metric_exporters and _default_meter_provider():
            self._configure_metrics()

    def _configure_tracing(self) -> Any:
        """A tracer provider from the ``OTEL_*`` variables, made global; None if disabled."""
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            log.info("twinweave opentelemetry: OTEL_SDK_DISABLED=true, so no spans")
            return None
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(shutdown_on_exit=False)  # resource, sampler: from the env
        for exporter in _instances(self._span_exporters, _TRACES):
            provider.add_span_processor(BatchSpanProcessor(_profiling_off(exporter)))
        self.trace.set_tracer_provider(provider)
        self._owned.append(provider)
        log.info(
            "twinweave opentelemetry: no tracer provider was set; configured one from the "
            "OTEL_* variables (exporters: %s)",
            ", ".join(cls.__name__ for cls in self._span_exporters) or "none",
        )
        return provider

    def _configure_metrics(self) -> None:
        from opentelemetry.metrics import set_meter_provider
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

        readers = []
        for cls in self._metric_exporters:
            if issubclass(cls, MetricReader):  # a pull exporter (prometheus) is a reader
                readers.extend(_instances([cls], _METRICS))
            else:
                readers.extend(
                    PeriodicExportingMetricReader(_profiling_off(exporter))
                    for exporter in _instances([cls], _METRICS)
                )
        provider = MeterProvider(metric_readers=readers, shutdown_on_exit=False)
        set_meter_provider(provider)
        self._owned.append(provider)

    # -- failover: links of redelivered messages -----------------------------------------

    def _redelivered(self, message_id: str) -> Sequence[Any]:
        """The link to the previous master's span when it had ``message_id`` in flight."""
        node = self._cluster.current()
        if node is None:
            return ()
        records = node.inflight
        if records is not self._inflight:
            self._links = _links(records)
            self._inflight = records
        return self._links.get(message_id, ())


def _instances(classes: Sequence[type], signal: _Signal) -> list[Any]:
    """One exporter per class; one that cannot be built is reported and left out."""
    built = []
    for cls in classes:
        try:
            built.append(cls())
        except Exception as exc:
            log.error(
                "twinweave opentelemetry: the exporter %s named by %s cannot be built (%s: %s); "
                "check its OTEL_EXPORTER_* variables",
                cls.__name__,
                signal.variable,
                type(exc).__name__,
                exc,
            )
    return built


def _links(records: Sequence[dict]) -> dict[str, tuple[Any, ...]]:
    """message id -> (link,) for the in-flight records that carry a W3C trace context."""
    from opentelemetry.trace import Link, get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    links = {}
    for record in records:
        carrier = {k: record[k] for k in ("traceparent", "tracestate") if record.get(k)}
        if "traceparent" not in carrier or "message_id" not in record:
            continue
        context = get_current_span(propagator.extract(carrier)).get_span_context()
        if context.is_valid:
            attributes = {REDELIVERED: True, "twinweave.redelivered.node": str(record.get("node"))}
            links[str(record["message_id"])] = (Link(context, attributes),)
    return links


def _default_meter_provider() -> bool:
    """Whether the global meter provider is still the API's placeholder (nobody set one)."""
    from opentelemetry import metrics

    # The API has no public name for its proxy class; it is the provider returned until
    # set_meter_provider is called (or $OTEL_PYTHON_METER_PROVIDER names one).
    return type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
