"""`GcPauses` and `tune_collector` (metrics/gc_pauses.py) with the real collector: the hook
records collections without touching the histogram, a flush observes them by generation, stop
removes the hook, a flood past the bound is dropped and said, and `tune_collector` exempts the
startup heap from later collections and sets the thresholds (in a child process, so this test
process is left as it is)."""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys

import pytest

from harness.processes import ROOT
from metrics.gc_pauses import YOUNG_THRESHOLDS, GcPauses
from metrics.registry import Metrics


def full_collections(metrics: Metrics) -> tuple[float, float]:
    count = metrics.sample("realtime_gc_pause_seconds_count", generation="2")
    return count, metrics.sample("realtime_gc_pause_seconds_sum", generation="2")


def test_a_full_collection_is_observed_at_the_next_flush_not_inside_the_collector() -> None:
    metrics = Metrics()
    pauses = GcPauses(metrics.gc_pause)
    pauses.start()
    try:
        gc.collect()
        gc.collect()
        # The hook ran inside the collector: it may not take a metric's lock, so nothing moved yet.
        assert full_collections(metrics) == (0, 0)
        pauses.flush()
        count, seconds = full_collections(metrics)
        assert count >= 2  # the two above, and any the interpreter started meanwhile
        assert seconds > 0
        assert metrics.sample("realtime_gc_pause_seconds_bucket", generation="2", le="+Inf") == count
    finally:
        pauses.stop()


def test_stop_removes_the_hook_and_flushes_what_it_had() -> None:
    metrics = Metrics()
    pauses = GcPauses(metrics.gc_pause)
    pauses.start()
    pauses.start()  # idempotent: one hook, each collection recorded once
    gc.collect()
    pauses.stop()
    assert pauses._hook not in gc.callbacks
    after_stop = full_collections(metrics)
    assert after_stop[0] >= 1
    gc.collect()
    pauses.flush()
    assert full_collections(metrics) == after_stop
    assert pauses.recorded == pauses.flushed


def test_pauses_past_the_bound_are_dropped_and_said(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    pauses = GcPauses(metrics.gc_pause, max_pending=2)
    pauses.start()
    try:
        for _ in range(5):
            gc.collect()
        with caplog.at_level(logging.WARNING, logger="metrics.gc_pauses"):
            pauses.flush()
    finally:
        pauses.stop()
    assert pauses.flushed == 2
    assert pauses.dropped == pauses.recorded - 2 >= 3
    assert f"{pauses.dropped} garbage-collection pauses not recorded" in caplog.text
    total = sum(metrics.sample("realtime_gc_pause_seconds_count", generation=g) for g in "012")
    assert total == 2


FREEZE_PROBE = """
import gc, json
import service.runtime.server  # the modules a serving process has imported
from metrics.gc_pauses import tune_collector
before = len(gc.get_objects())
frozen = tune_collector()
after = len(gc.get_objects())
print(json.dumps({"before": before, "frozen": frozen, "after": after, "thresholds": gc.get_threshold()}))
"""


def test_a_serving_process_freezes_its_startup_heap_and_collects_young_objects_less_often() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    counts = json.loads(done.stdout)
    assert counts["frozen"] > 10_000  # modules, classes, functions: what a full collection no longer scans
    assert counts["after"] < counts["before"] / 10
    assert tuple(counts["thresholds"]) == YOUNG_THRESHOLDS
