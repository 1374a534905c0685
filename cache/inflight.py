"""The in-flight record: what a master was processing, written by the failover plugin.

One home for the record's shape. The ``failover`` plugin makes a record with
:func:`record` when a workflow with a message id starts and stores it in
:data:`cache.FAILOVER_CACHE` under the message id (deleting it when the workflow ends); a
newly promoted node reads what its predecessor left with :func:`read`. Fields:
``message_id``, ``aspect``, ``step``, ``start`` (Unix time), ``node``, ``epoch``, and the
W3C trace context (``traceparent``, ``tracestate``) when a span was current.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cache.store import decode_value

if TYPE_CHECKING:
    from cache.replica import Replica

FAILOVER_CACHE = "FAILOVER_CACHE"
"""The cache where the ``failover`` plugin records the master's in-flight messages."""

_TRACE_FIELDS = ("traceparent", "tracestate")


def record(
    message_id: object,
    aspect: str,
    step: str,
    start: float,
    node: str,
    epoch: int,
    trace: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The record of one message in flight (JSON-compatible)."""
    entry: dict[str, Any] = {
        "message_id": str(message_id),
        "aspect": aspect,
        "step": step,
        "start": start,
        "node": node,
        "epoch": epoch,
    }
    if trace:
        entry.update({key: str(trace[key]) for key in _TRACE_FIELDS if trace.get(key)})
    return entry


def read(replica: Replica) -> list[dict[str, Any]]:
    """The records a replica holds (what the previous master had in flight)."""
    store = replica.store(FAILOVER_CACHE)
    found = []
    for _, value, _ in store.items_encoded():
        entry = decode_value(value)
        if isinstance(entry, dict):
            found.append(entry)
    return found
