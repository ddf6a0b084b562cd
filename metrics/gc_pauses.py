"""Garbage-collection pauses: how long the cyclic collector stopped this process, and a heap
that the full collections need not scan.

While the collector runs, nothing else in the process does: no event is fanned out and no
connection is served. A full collection (generation 2) scans every container object the
process holds, so it grows with the connections; on this project's 2-core test machine one
took 75–190 ms at 2,500 connections per process while clients were connecting (bench/README.md,
"Garbage collection"). `GcPauses` times every collection into `realtime_gc_pause_seconds`, so
an operator sees these pauses beside the 50 ms latency objective instead of guessing.

Timing happens in a `gc.callbacks` hook, which runs inside whatever code allocated the object
that started the collection: possibly while that code holds a metric's lock. So the hook only
appends to a deque (no lock, no metric) and `flush` moves the pauses into the histogram from
the event loop, once a second (`FLUSH_SECONDS`).

`freeze_startup_heap` moves every object alive once a process has built its application objects
(modules, classes, settings, the MongoDB client) into the collector's permanent generation,
before it accepts a connection: full collections then scan only what serving added.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from typing import Any

from prometheus_client import Histogram

FLUSH_SECONDS = 1.0
# Pauses held between two flushes; past this many the oldest are dropped (and counted): only
# a process collecting thousands of times a second would reach it.
MAX_PENDING = 10_000
GENERATIONS = ("0", "1", "2")

log = logging.getLogger(__name__)


class GcPauses:
    """Times this process's garbage collections into a histogram labelled by generation.

    `start` installs the hook, `stop` removes it; `flush` (from the event loop) observes what
    the hook recorded since the last flush.
    """

    def __init__(self, histogram: Histogram, *, max_pending: int = MAX_PENDING) -> None:
        self._histogram = histogram
        self._pending: deque[tuple[int, float]] = deque(maxlen=max_pending)
        self._began = 0.0
        self.recorded = 0  # every pause the hook saw, flushed or dropped
        self.flushed = 0
        self._dropped_said = 0

    @property
    def dropped(self) -> int:
        """Pauses lost because more than MAX_PENDING came between two flushes."""
        return self.recorded - self.flushed - len(self._pending)

    def start(self) -> None:
        if self._hook not in gc.callbacks:
            gc.callbacks.append(self._hook)

    def stop(self) -> None:
        if self._hook in gc.callbacks:
            gc.callbacks.remove(self._hook)
        self.flush()

    def _hook(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside an allocation anywhere in the process: no locks, no metrics, no logging.
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began:
            self._pending.append((info["generation"], time.perf_counter() - self._began))
            self.recorded += 1
            self._began = 0.0

    def flush(self) -> None:
        """Observe the pauses recorded since the last flush (and say how many were dropped)."""
        pending = self._pending
        while pending:
            generation, seconds = pending.popleft()
            self._histogram.labels(str(generation)).observe(seconds)
            self.flushed += 1
        dropped = self.dropped
        if dropped > self._dropped_said:
            log.warning(
                "%d garbage-collection pauses not recorded: more than %d between two flushes",
                dropped - self._dropped_said,
                pending.maxlen,
            )
            self._dropped_said = dropped


def freeze_startup_heap() -> int:
    """Collect what starting left behind, then exempt every object still alive from later
    collections (`gc.freeze`); returns how many objects were frozen.

    Call it once per process, before it serves: what it freezes should live as long as the
    process (a cycle among those objects that becomes garbage later is never collected, so
    nothing per-connection or per-request may be alive at that moment).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
