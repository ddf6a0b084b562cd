"""Garbage-collection pauses: how long the cyclic collector stopped this process, and a collector
tuned for a process that holds thousands of long-lived connections.

While the collector runs, nothing else in the process does: no event is fanned out and no
connection is served. A full collection (generation 2) scans every container object the
process holds, so it grows with the connections: on this project's 2-core test machine, 20,000
WebSocket clients connecting to two workers with CPython's default settings set off 18–20 full
collections, 2.5–4.0 s in all and up to 0.5 s each (bench/README.md, "Garbage collection").
`GcPauses` times every collection into `realtime_gc_pause_seconds`, so an operator sees these
pauses beside the 50 ms latency objective instead of guessing.

Timing happens in a `gc.callbacks` hook, which runs inside whatever code allocated the object
that started the collection: possibly while that code holds a metric's lock. So the hook only
appends to a deque (no lock, no metric) and `flush` moves the pauses into the histogram from
the event loop, once a second (`FLUSH_SECONDS`).

`tune_collector` runs once a process has built its application objects (modules, classes,
settings, the MongoDB client), before it accepts a connection: it moves every object then alive
into the collector's permanent generation, so that no collection scans them again, and sets
`YOUNG_THRESHOLDS`. The same storm then ran no full collection, and the longest pause was
under 0.25 s.
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
# gc.set_threshold: a young collection every 10,000 net allocations instead of CPython's 700,
# and the default ten young collections per middle one and ten middle ones per full one. Each
# connect leaves short-lived cycles behind (Tornado's request objects after the takeover) and
# long-lived objects (the connection's own); with the default, a connect storm ran a young
# collection every few hundred microseconds, promoted requests still in flight, and
# considered a full collection every 70,000 allocations instead of every million (CPython
# also waits until the objects that survived a middle collection are a quarter of those the
# last full one kept). With 700, 10, 100 most storms still ran one full collection of
# 0.47–0.77 s.
YOUNG_THRESHOLDS = (10_000, 10, 10)

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


def tune_collector() -> int:
    """Set this serving process's collector up (`YOUNG_THRESHOLDS`, and the startup heap frozen);
    returns how many objects were frozen.

    Collects what starting left behind, then exempts every object still alive from later
    collections (`gc.freeze`). Call it once per process, before it serves: what it freezes
    should live as long as the process (a cycle among those objects that becomes garbage later
    is never collected, so nothing per-connection or per-request may be alive at that moment).
    """
    gc.set_threshold(*YOUNG_THRESHOLDS)
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
