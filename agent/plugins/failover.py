"""The ``failover`` plugin: the master's in-flight messages, recorded in the replicated cache.

Owns one thing: while this node is the master of a failover cluster, each
workflow call that has a message id is written to ``FAILOVER_CACHE`` when it
starts (message id, aspect, step, start time, node, epoch) and removed when it
ends, returned or raised. The cache replicates it to the slaves, so a newly
promoted master finds in ``cluster.inflight()`` what its predecessor was
processing when it went. Outside failover mode, or on a node that is not the
master, it records nothing. Under ``--failover`` the bootstrap adds it whether
or not the pointcut file names it.

Trace context: when OpenTelemetry is already imported (an application or the
``opentelemetry`` plugin uses it) and a span is current as the workflow starts
(the ``opentelemetry`` plugin's own, since this plugin runs after it), the record
also carries that span's W3C trace context, ``traceparent`` (and ``tracestate``
when it is not empty), so that the new master's redelivery can link to the dead
master's span. Without OpenTelemetry this costs nothing and imports nothing.

Cost: two replicated cache writes per workflow call, so use it on workflows
(one call per message), not on hot inner functions. The start is synchronous by
default (the record is on every live slave before the workflow runs); the
removal at the end is not waited for (``wait=False``): lost in a takeover, it
leaves a record of a call that ended, which a record of a call under way may
always be.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import cluster
from agent.events import JoinPoint, StartEvent, Step
from agent.plugins import AgentContext, Plugin

log = logging.getLogger(__name__)


class FailoverPlugin(Plugin):
    name = "failover"
    order = 100  # after tracing plugins: their span is current when a start is recorded

    def __init__(self, **options: str) -> None:
        if options:
            log.warning("the failover plugin takes no options; ignored: %s", sorted(options))
        self._cache: Any = None
        self._lock = threading.Lock()

    def start(self, context: AgentContext) -> None:
        pass

    def accepts(self, joinpoint: JoinPoint) -> bool:
        return joinpoint.type == "workflow"

    def _store(self) -> Any:
        """The cache to record in, or None when this process is not a master right now."""
        node = cluster.current()
        if node is None or not node.is_master():
            return None
        if self._cache is None:
            with self._lock:
                if self._cache is None:
                    from cache import FAILOVER_CACHE, get_cache  # diskcache: only when needed

                    self._cache = get_cache(FAILOVER_CACHE)
        return self._cache

    def on_start(self, event: StartEvent) -> None:
        if event.message_id is None:
            return
        store = self._store()
        if store is None:
            return
        from cache import inflight

        jp = event.joinpoint
        trace = _trace_context() if sys.modules.get("opentelemetry") is not None else None
        record = inflight.record(
            event.message_id,
            jp.aspect,
            jp.name,
            event.start_ns / 1e9,
            cluster.node_id(),
            cluster.epoch(),
            trace,
        )
        _unless_stepped_down(store.set, record["message_id"], record)

    def on_step(self, step: Step) -> None:
        if step.message_id is None:
            return
        store = self._store()
        if store is not None:
            # not waited for: a master that dies before the slaves have the removal leaves
            # the record of a call that ended, and a record only ever says "was under way,
            # may have finished" (a master can die after the work, before this line)
            _unless_stepped_down(store.delete, str(step.message_id), wait=False)


def _unless_stepped_down(write: Any, *args: Any, **kwargs: Any) -> None:
    """``write(*args, **kwargs)``; refused because this node stepped down since
    :meth:`FailoverPlugin._store` looked, it is the node's own stop under way (the
    workflow finds out from ``cluster.is_master()``), not a plugin failure, which would
    isolate the plugin for good."""
    from cache import NotMasterError

    try:
        write(*args, **kwargs)
    except NotMasterError as exc:
        log.info("in-flight record not written: %s", exc)


_propagator: Any = None


def _trace_context() -> dict[str, str]:
    """The current span's ``traceparent`` (and ``tracestate``), or nothing without a valid span.

    Always the W3C format, whatever ``OTEL_PROPAGATORS`` says: the record's fields are
    W3C's, and the new master reads them back with the same propagator.
    """
    global _propagator
    if _propagator is None:
        try:
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:  # "opentelemetry" is imported, but not its API (another package)
            _propagator = False
            return {}
        _propagator = TraceContextTextMapPropagator()
    if _propagator is False:
        return {}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)  # writes nothing unless the current span context is valid
    return {key: carrier[key] for key in ("traceparent", "tracestate") if carrier.get(key)}
