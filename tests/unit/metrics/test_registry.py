"""`Metrics.sample`: the public read of one series that tests use instead of a metric's `_value`."""

from __future__ import annotations

import pytest

from metrics.registry import Metrics


def test_sample_reads_a_counter_by_its_exported_name_and_labels() -> None:
    """A counter reads under its `_total` name, per label set, as a scrape would show it."""
    metrics = Metrics()
    metrics.resumes.labels("sse", "replayed").inc(2)
    assert metrics.sample("realtime_resumes_total", transport="sse", outcome="replayed") == 2
    assert metrics.sample("realtime_resumes_total", transport="sse", outcome="resync") == 0


def test_sample_reads_gauges_and_histogram_series() -> None:
    """A gauge reads under its own name; a histogram's `_count` and `_bucket` series read too."""
    metrics = Metrics()
    metrics.connections.labels("poll").inc()
    metrics.bus_lag.observe(0.02)
    metrics.bus_lag.observe(0.0018)
    assert metrics.sample("realtime_connections", transport="poll") == 1
    assert metrics.sample("realtime_bus_lag_seconds_count") == 2
    assert metrics.sample("realtime_bus_lag_seconds_bucket", le="0.0015") == 0
    assert metrics.sample("realtime_bus_lag_seconds_bucket", le="0.002") == 1
    assert metrics.sample("realtime_bus_lag_seconds_bucket", le="0.025") == 2


def test_sample_of_a_name_not_exported_is_an_error_not_zero() -> None:
    """A misspelt name raises, so an assertion that a value stayed 0 cannot pass by accident."""
    with pytest.raises(KeyError, match="realtime_resume_total"):
        Metrics().sample("realtime_resume_total", transport="sse", outcome="replayed")
