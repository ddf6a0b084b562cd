"""The service's Prometheus metrics (README "Metrics"), held by one object passed into the app.

With `PROMETHEUS_MULTIPROC_DIR` set (several workers), values live in files in that
directory and `exposition()` sums them over every worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from metrics.gc_pauses import GENERATIONS
from service.core.schema import TransportName

# 5 ms steps from 10 to 50 ms, so `histogram_quantile` near the 50 ms objective is off by at
# most a step, and 0.05 is an edge, so the SLO counts good events exactly (`le="0.05"`).
# 19 bounds + `+Inf`, `_sum`, `_count`: 22 series per transport for broadcast latency (44).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05,
    0.06, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# The change stream's hop is a few milliseconds: 0.5-1 ms steps up to 5 ms, so its p50 and p99
# read to a millisecond and the share within 2 ms (`le="0.002"`, a fast store's hop) is exact;
# 0.25 is RealtimeBusLagHigh's threshold, and 10 s a store that stopped answering.
# 17 bounds + `+Inf`, `_sum`, `_count`: 20 series.
BUS_LAG_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
    0.1, 0.25, 1.0, 2.5, 10.0,
)  # fmt: skip
FANOUT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # events per fan-out; 1 is an idle service
GC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # a full collection can pass 50 ms
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ACCEPT_ERROR_REASONS = ("emfile", "enfile", "enobufs", "enomem", "other")  # handlers/accept.py
REFUSED_REASONS = ("per_address", "no_descriptor")  # handlers/edge.py, handlers/accept.py
SAMPLE_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count")  # series of a family, `_created` disabled


class Metrics:
    """Every metric of the service, registered in its own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiproc_dir: Path | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        if multiproc_dir is not None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # prometheus_client picks its storage when a metric is created, from this variable.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
        # No `<name>_created` gauge beside every counter and histogram: README "Metrics" names the
        # series, the multiprocess collector never exports them, and they double the count.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "realtime_connections",
            "Open client connections",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_opened = Counter(
            "realtime_connections_opened",
            "Connections accepted after authentication",
            ["transport"],
            registry=r,
        )
        self.disconnects = Counter(
            "realtime_disconnects", "Connections closed, by close code", ["transport", "code"], registry=r
        )
        self.auth_failures = Counter(
            "realtime_auth_failures", "Rejected credentials", ["transport", "reason"], registry=r
        )
        self.events_published = Counter(
            "realtime_events_published", "Events seen on the change stream, by type", ["type"], registry=r
        )
        self.messages_sent = Counter("realtime_messages_sent", "Messages written to clients", ["transport"], registry=r)
        self.broadcast_latency = Histogram(
            "realtime_broadcast_latency_seconds",
            "Event first known to the service to written to the last local socket",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fanout_duration = Histogram(
            "realtime_fanout_duration_seconds",
            "Time to hand one event to every local connection",
            buckets=FANOUT_BUCKETS,
            registry=r,
        )
        self.fanout_batch_size = Histogram(
            "realtime_fanout_batch_size",
            "Events fanned out together, each client getting its share in one write (one per batch)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.bus_lag = Histogram(
            "realtime_bus_lag_seconds",
            "Event first known to the service to seen on the change stream",
            buckets=BUS_LAG_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "realtime_gc_pause_seconds",
            "Garbage-collection pauses of a process, by generation (2: a full collection)",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=r,
        )
        self.slow_consumers = Counter(
            "realtime_slow_consumer_disconnects",
            "Connections closed for unread data",
            ["transport"],
            registry=r,
        )
        self.resumes = Counter(
            "realtime_resumes", "Reconnects with a last event id", ["transport", "outcome"], registry=r
        )
        self.replays = Counter(
            "realtime_replays",
            "Resumes replayed, by where the events came from (memory, or a MongoDB read)",
            ["source"],
            registry=r,
        )
        for source in ("memory", "store"):  # both exported from the start, so rates compare
            self.replays.labels(source)
        self.http_duration = Histogram(
            "realtime_http_request_duration_seconds",
            "HTTP request duration",
            ["handler", "method", "code"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.accept_errors = Counter(
            "realtime_accept_errors", "Failed accept() calls on the listening socket", ["reason"], registry=r
        )
        self.connections_refused = Counter(
            "realtime_connections_refused", "Connections closed at accept, unserved", ["reason"], registry=r
        )
        # A fleet-wide value every process reads from MongoDB: in multiprocess mode the most
        # recent reading wins (summing would count each user once per worker).
        self.presence_users = Gauge(
            "realtime_presence_users",
            "Users online across the fleet (at least one connection on any replica, or within the grace)",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        if multiproc_dir is None:
            ProcessCollector(registry=r)
        for transport in TransportName:  # export zeros before the first connection
            self.connections.labels(transport)
            self.connections_opened.labels(transport)
            self.messages_sent.labels(transport)
            self.slow_consumers.labels(transport)
        for generation in GENERATIONS:
            self.gc_pause.labels(generation)
        for reason in ACCEPT_ERROR_REASONS:
            self.accept_errors.labels(reason)
        for reason in REFUSED_REASONS:
            self.connections_refused.labels(reason)

    def sample(self, name: str, **labels: str) -> float:
        """One series' current value in this process, by its exported name and labels.

        The public read (`CollectorRegistry.get_sample_value`) for tests and tools, in place of a
        metric's private `_value`: `metrics.sample("realtime_resumes_total", transport="sse",
        outcome="replayed")`. A series not yet touched reads 0; a name this registry does not
        export raises KeyError, so a misspelt name cannot pass as 0.
        """
        value = self.registry.get_sample_value(name, labels)
        if value is not None:
            return value
        exported = {family.name + suffix for family in self.registry.collect() for suffix in SAMPLE_SUFFIXES}
        if name not in exported:
            raise KeyError(f"{name}: not a series of this registry")
        return 0.0

    def exposition(self) -> bytes:
        """The text format scraped at `/metrics` (summed over workers in multiprocess mode)."""
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(merged, path=str(self.multiproc_dir))  # type: ignore[no-untyped-call]
        return generate_latest(merged)


def exported_metric_names() -> set[str]:
    """Base names of every metric the service exports (no `_total`, `_bucket`, ... suffixes)."""
    return {family.name for family in Metrics().registry.collect()}
