"""The built-in ``prometheus`` plugin: a ``/metrics`` endpoint with the profile and the cluster.

This module owns turning what twinweave already counts into Prometheus metrics
on an HTTP endpoint served by ``prometheus_client`` (extra ``[prometheus]``):

* per component (labels ``aspect``, ``type``, ``name``; one series per woven
  function, never per message): ``twinweave_step_duration_seconds``, a histogram
  (``_bucket``, ``_sum``, ``_count``), and ``twinweave_step_failures_total``;
* under ``--failover``, on every node, slaves included (labels ``cluster``,
  ``node``): ``twinweave_cluster_is_master``, ``twinweave_cluster_epoch``,
  ``twinweave_cluster_known_epoch``, ``twinweave_cluster_takeovers_total``,
  ``twinweave_cluster_packets_dropped_total{reason}``,
  ``twinweave_cluster_replicated_writes_total``,
  ``twinweave_cluster_replication_refused_total{reason}``,
  ``twinweave_cluster_replica_position`` and, on the master, per slave,
  ``twinweave_cluster_replication_lag_changes{slave}`` and
  ``twinweave_cluster_replication_lag_seconds{slave}``;
* ``twinweave_info{python, backend, version}``.

Cost. The plugin only has the drain-time receivers (``on_summary`` and
``on_timings``), so woven functions stay in timing mode (in C where the
accelerator is built): a call costs exactly what it costs under the ``timing``
plugin alone. Statistics are folded in by the drain thread (about every 0.5 s)
into the same :class:`~agent.stats.Components` the timing plugin keeps,
and a custom collector turns them into metrics when Prometheus scrapes, so the
work is per scrape (the benchmark suite reports ms per scrape), not per call.

Histogram buckets. The statistics keep a log-linear histogram (64 buckets per
power of two, see ``agent.stats``); a scrape maps it onto fixed ``le`` bounds,
by default :data:`DEFAULT_BUCKETS` (1 µs to 10 s: woven functions range from
microseconds to seconds), or the ``buckets`` option (seconds, comma-separated).
Each fine bucket counts below the first bound at or above its midpoint, so a
count can land one fine bucket (1/64 of a power of two, under 1.6 %) off a bound.

Options (``<plugin name="prometheus" address="127.0.0.1" port="9464"/>``):
``address`` (default ``127.0.0.1``: an agent inside someone's service opens no port
to the network unless asked; ``0.0.0.0`` for a remote Prometheus), ``port``
(default 9464, the port OpenTelemetry's Prometheus exporter uses; ``0`` picks a
free one, logged), ``buckets``. A port in use or a bad address is one clear error
at start naming the plugin and the setting; the service runs without the endpoint.

Not here: timing statistics themselves (``agent.stats``),
the cluster's counters (``cluster.manager.Node.metrics``).
"""

from __future__ import annotations

import bisect
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from agent import __version__
from agent.events import JoinPoint
from agent.plugins import AgentContext, Plugin, PluginError, import_extra
from agent.stats import Components, TimingSummary, bucket_middle

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9464
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the duration histogram's buckets, besides ``+Inf``."""

COMPONENT_LABELS = ("aspect", "type", "name")
CLUSTER_LABELS = ("cluster", "node")


def parse_buckets(text: str | None) -> tuple[float, ...]:
    """The ``buckets`` option: ascending positive seconds, comma-separated."""
    if text is None or not text.strip():
        return DEFAULT_BUCKETS
    try:
        bounds = tuple(float(part) for part in text.split(","))
    except ValueError:
        bounds = ()
    if (
        not bounds
        or any(not 0 < bound < float("inf") for bound in bounds)
        or any(a >= b for a, b in zip(bounds, bounds[1:]))
    ):
        raise PluginError(
            f'prometheus plugin option buckets="{text}": expected ascending numbers of '
            'seconds above 0, comma-separated (for example buckets="0.001,0.01,0.1,1")'
        )
    return bounds


def parse_port(text: str | int) -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        port = -1
    if not 0 <= port <= 65535:
        raise PluginError(
            f'prometheus plugin option port="{text}": expected a TCP port number from 0 to '
            "65535 (0: any free port)"
        )
    return port


def cumulative_buckets(
    counts: dict[int, float],
    count: int,
    bounds_ns: Sequence[int],
    slots: dict[int, int] | None = None,
) -> list[int]:
    """Calls at or below each bound of ``bounds_ns``, from a fine histogram (``agent.stats``).

    The fine histogram may hold sampled weights (``agent.stats.sample``) whose sum
    is close to, not exactly, ``count``: they are scaled so that the buckets end at
    the exact count; the result is non-decreasing and never above ``count``.
    ``slots`` caches which bound each fine bucket falls under (pass the same dict for
    the same bounds: a scrape then costs a dictionary look-up per fine bucket).
    """
    per_bound = [0.0] * (len(bounds_ns) + 1)
    if slots is None:
        slots = {}
    for bucket, weight in counts.items():
        slot = slots.get(bucket)
        if slot is None:
            slot = slots[bucket] = bisect.bisect_left(bounds_ns, bucket_middle(bucket))
        per_bound[slot] += weight
    total = sum(per_bound)
    if total <= 0:
        return [0] * len(bounds_ns)
    scale = count / total
    result: list[int] = []
    running = 0.0
    for weight in per_bound[:-1]:
        running += weight
        result.append(min(count, round(running * scale)))
    return result


class _Collector:
    """A ``prometheus_client`` custom collector over the plugin's statistics and the node."""

    def __init__(self, plugin: PrometheusPlugin, client: Any) -> None:
        self.plugin = plugin
        self.core = client.metrics_core
        self.labels = [f"{bound:g}" for bound in plugin.buckets] + ["+Inf"]
        self.bounds_ns = [round(bound * 1e9) for bound in plugin.buckets]
        self._slots: dict[int, int] = {}  # fine bucket -> index of its bound
        # (aspect, name) -> (count, its buckets): a component without new calls since the
        # last scrape is not mapped again (its count moves with every call it adds)
        self._mapped: dict[tuple[str, str], tuple[int, list[tuple[str, int]]]] = {}
        self._lock = threading.Lock()  # scrapes may come in parallel (a threading server)

    def describe(self) -> list[Any]:
        return []  # unchecked collector: metric names are fixed, and registering stays cheap

    def collect(self) -> Iterator[Any]:
        core = self.core
        yield core.InfoMetricFamily(
            "twinweave",
            "The agent serving these metrics.",
            value={
                "python": self.plugin.python,
                "backend": self.plugin.backend,
                "version": __version__,
            },
        )
        duration = core.HistogramMetricFamily(
            "twinweave_step_duration_seconds",
            "Duration of the calls of each woven component (a step), in seconds.",
            labels=COMPONENT_LABELS,
        )
        failures = core.CounterMetricFamily(
            "twinweave_step_failures",
            "Calls of each woven component that raised.",
            labels=COMPONENT_LABELS,
        )
        for aspect, type_, name, failed, total_ns, buckets in self._components():
            labels = [aspect, type_, name]
            duration.add_metric(labels, buckets, total_ns / 1e9)
            failures.add_metric(labels, failed)
        yield duration
        yield failures
        yield from self._cluster()

    def _components(self) -> list[tuple[str, str, str, int, int, list[tuple[str, int]]]]:
        """Each component's labels, failures, total and ``le`` buckets (cached when unchanged)."""
        components = self.plugin.components
        with self._lock:
            mapped = self._mapped
            with components.lock:  # copies of what changed, so the mapping runs without it
                rows = []
                for s in components.stats():
                    known = mapped.get((s.aspect, s.name))
                    changed = known is None or known[0] != s.count
                    counts = dict(s.histogram.counts) if changed else None
                    rows.append((s.aspect, s.type, s.name, s.count, s.failed, s.total_ns, counts))
            result = []
            for aspect, type_, name, count, failed, total_ns, counts in rows:
                if counts is None:
                    buckets = mapped[(aspect, name)][1]
                else:
                    cumulative = cumulative_buckets(counts, count, self.bounds_ns, self._slots)
                    buckets = list(zip(self.labels, [*cumulative, count]))
                    mapped[(aspect, name)] = (count, buckets)
                result.append((aspect, type_, name, failed, total_ns, buckets))
            return result

    def _cluster(self) -> Iterator[Any]:
        node = _current_node()
        if node is None:
            return
        try:
            m = node.metrics()
        except Exception:  # a node that is closing: no cluster metrics in this scrape
            log.debug("the node's metrics are not available", exc_info=True)
            return
        core = self.core
        ids = [m.cluster, m.node]

        def gauge(name: str, doc: str, value: float) -> Any:
            family = core.GaugeMetricFamily(name, doc, labels=CLUSTER_LABELS)
            family.add_metric(ids, value)
            return family

        def counter(name: str, doc: str, value: float) -> Any:
            family = core.CounterMetricFamily(name, doc, labels=CLUSTER_LABELS)
            family.add_metric(ids, value)
            return family

        def by_reason(name: str, doc: str, values: dict[str, int]) -> Any:
            family = core.CounterMetricFamily(name, doc, labels=(*CLUSTER_LABELS, "reason"))
            for reason, value in sorted(values.items()):
                family.add_metric([*ids, reason], value)
            return family

        yield gauge(
            "twinweave_cluster_is_master",
            "1 while this node is the master and its lease holds, else 0.",
            1 if m.is_master else 0,
        )
        yield gauge(
            "twinweave_cluster_epoch",
            "The epoch this node is master of, or the last one it followed.",
            m.epoch,
        )
        yield gauge(
            "twinweave_cluster_known_epoch",
            "The newest epoch this node has heard of.",
            m.known_epoch,
        )
        yield counter(
            "twinweave_cluster_takeovers", "Times this node was promoted to master.", m.takeovers
        )
        yield by_reason(
            "twinweave_cluster_packets_dropped",
            "Heartbeat packets dropped, by reason (malformed, foreign, forged, replayed...).",
            m.dropped,
        )
        yield counter(
            "twinweave_cluster_replicated_writes",
            "Changes this node wrote to the replicated cache as master.",
            m.replicated_writes,
        )
        yield by_reason(
            "twinweave_cluster_replication_refused",
            "Replication connections refused or ended, by reason.",
            m.replication_refused,
        )
        yield gauge(
            "twinweave_cluster_replica_position",
            "Sequence number of the last change in this node's replica.",
            m.position,
        )
        lag_changes = core.GaugeMetricFamily(
            "twinweave_cluster_replication_lag_changes",
            "On the master: changes each slave has not acknowledged yet.",
            labels=(*CLUSTER_LABELS, "slave"),
        )
        lag_seconds = core.GaugeMetricFamily(
            "twinweave_cluster_replication_lag_seconds",
            "On the master: age of the oldest change each slave has not acknowledged.",
            labels=(*CLUSTER_LABELS, "slave"),
        )
        for slave in m.slaves:
            lag_changes.add_metric([*ids, slave.node_id], slave.changes)
            lag_seconds.add_metric([*ids, slave.node_id], slave.seconds)
        yield lag_changes
        yield lag_seconds


def _current_node() -> Any:
    """The failover node of this process, if the cluster package is in use."""
    cluster = sys.modules.get("cluster")
    current = getattr(cluster, "current", None)
    return current() if current is not None else None


class PrometheusPlugin(Plugin):
    """Serves ``/metrics`` for Prometheus (see the module docstring)."""

    name = "prometheus"

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        port: str = str(DEFAULT_PORT),
        buckets: str | None = None,
    ) -> None:
        self._client = import_extra("prometheus_client", "prometheus", "prometheus")
        import_extra("prometheus_client.metrics_core", "prometheus", "prometheus")
        self.address = address.strip() or DEFAULT_ADDRESS
        self.port = parse_port(port)
        self.buckets = parse_buckets(buckets)
        self.components = Components()
        self.python = "unknown"
        self.backend = "unknown"
        self.registry: Any = None
        self._server: Any = None
        self._thread: Any = None

    @property
    def url(self) -> str | None:
        """Where the endpoint is, once started."""
        if self._server is None:
            return None
        host = self.address if ":" not in self.address else f"[{self.address}]"
        return f"http://{host}:{self.port}/metrics"

    def start(self, context: AgentContext) -> None:
        self.python, self.backend = context.python, context.backend
        client = self._client
        self.registry = client.CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self, client))
        try:
            self._server, self._thread = client.start_http_server(
                self.port, addr=self.address, registry=self.registry
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise PluginError(
                f'cannot serve /metrics on address="{self.address}" port="{self.port}": '
                f"{reason}; choose another port (or address) in the pointcut file"
            ) from None
        self.port = self._server.server_port
        log.info("twinweave prometheus: serving %s", self.url)

    def on_timings(self, joinpoint: JoinPoint, ok: list[int], failed: list[int]) -> None:
        self.components.add(joinpoint, ok, failed)

    def on_summary(self, joinpoint: JoinPoint, summary: TimingSummary) -> None:
        self.components.add_summary(joinpoint, summary)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
