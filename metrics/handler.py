"""`GET /metrics`: the Prometheus text format (summed over workers in multiprocess mode)."""

from __future__ import annotations

from metrics.logs import RedactedLogging
from metrics.registry import Metrics


class MetricsHandler(RedactedLogging):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", self.metrics.content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.metrics.exposition())
