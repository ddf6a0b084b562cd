"""The event bus: one change stream on `events` per process, feeding the hub.

It keeps the last HISTORY_SIZE events in memory for resume, replays older positions from
MongoDB (a change stream started at the client's position), and after a MongoDB outage
resumes its own stream from the last token so nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from bson import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from metrics.registry import Metrics
from service.errors import StoreUnavailable
from service.events import event_from_change, event_id, metric_type, parse_event_id
from service.hub import Hub
from service.store import MongoStore
from service.wire import Encoded, encode_event

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
MAX_STORE_REPLAY = 100_000
REPLAY_BATCH = 1000
FUTURE_TOLERANCE_SECONDS = 60  # clock skew between replicas that an id may show


class Bus:
    """Change stream → history → hub, and replay for resuming clients."""

    def __init__(self, store: MongoStore, hub: Hub, metrics: Metrics, *, history_size: int) -> None:
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self.history: deque[Encoded] = deque(maxlen=history_size)
        self._history_ids: deque[str] = deque(maxlen=history_size)
        # Every event with an id above this one is in `history` (or still to come).
        self.covered_from: str | None = None
        self._resume_token: Mapping[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self.running = False

    async def start(self) -> None:
        """Open the change stream (so events inserted after this returns are seen) and run it."""
        position = await self._cluster_time()
        stream = await self._store.watch_events(start_at=position)
        self.covered_from = event_id(position)
        self.running = True
        self._task = asyncio.create_task(self._run(stream), name="bus")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.running = False

    async def _cluster_time(self) -> Timestamp:
        try:
            reply = await self._store.client.admin.command("ping")
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB unavailable: {type(exc).__name__}") from exc
        ts = reply.get("operationTime") or reply.get("$clusterTime", {}).get("clusterTime")
        if not isinstance(ts, Timestamp):
            ts = Timestamp(int(time.time()), 0)
        return ts

    async def _run(self, stream: Any) -> None:
        failures = 0
        while True:
            try:
                if stream is None:
                    stream = await self._store.watch_events(resume_after=self._resume_token)
                    log.info("change stream resumed")
                self.running = True
                failures = 0
                async with stream:
                    async for change in stream:
                        self._resume_token = change["_id"]
                        self.handle(change)
            except asyncio.CancelledError:
                raise
            except (PyMongoError, StoreUnavailable) as exc:
                if isinstance(exc, OperationFailure) and exc.code == 286:  # ChangeStreamHistoryLost
                    log.error("change stream history lost; clients will resync")
                    self._resume_token = None
                    self._history_lost()
                if self.running:
                    log.warning("change stream interrupted: %s", exc)
                self.running = False
                stream = None
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1

    def handle(self, change: Mapping[str, Any]) -> None:
        """Turn one change notification into a delivered event."""
        event = event_from_change(change)
        if event is None:
            log.warning("ignored a document in events that is not a valid event")
            return
        m = self._metrics
        m.bus_lag.observe(max(0.0, time.time() - event.inserted_at))
        m.events_published.labels(metric_type(event.type)).inc()
        encoded = encode_event(event)
        if len(self.history) == self.history.maxlen:
            self.covered_from = self.history[0].event.id
        self.history.append(encoded)
        self._history_ids.append(event.id)
        self._hub.deliver(encoded)

    def _history_lost(self) -> None:
        self.history.clear()
        self._history_ids.clear()
        self.covered_from = None
        for connection in self._hub:
            connection.send_message({"type": "resync", "reason": "history lost"})

    def recent_since(self, last_id: str) -> list[Encoded] | None:
        """Events after `last_id` from memory; None when memory does not reach back that far."""
        if self.covered_from is None or last_id < self.covered_from:
            return None
        return self._memory_after(last_id)

    def _memory_after(self, last_id: str) -> list[Encoded]:
        start = bisect.bisect_right(self._history_ids, last_id)
        return list(itertools.islice(self.history, start, None))

    async def replay_since(self, last_id: str) -> list[Encoded] | None:
        """Every event after `last_id`, in order; None when they cannot be replayed (resync).

        Memory first; otherwise a change stream started at the client's position reads
        forward until it meets what memory holds.
        """
        position = parse_event_id(last_id)
        if position is None or position.time > time.time() + FUTURE_TOLERANCE_SECONDS:
            return None  # not an id of ours: following it would filter out every live event
        recent = self.recent_since(last_id)
        if recent is not None:
            return recent
        replayed: list[Encoded] = []
        try:
            stream = await self._store.watch_events(start_at=position, batch_size=REPLAY_BATCH)
            async with stream:
                while len(replayed) < MAX_STORE_REPLAY:
                    change = await stream.try_next()
                    if change is None:
                        break
                    event = event_from_change(change)
                    if event is None or event.id <= last_id:
                        continue
                    if self.covered_from is not None and event.id > self.covered_from:
                        break  # memory holds the rest
                    replayed.append(encode_event(event))
                else:
                    return None
        except (PyMongoError, StoreUnavailable) as exc:
            log.info("cannot replay from %s: %s", last_id, exc)
            return None
        return replayed + self._memory_after(replayed[-1].event.id if replayed else last_id)
