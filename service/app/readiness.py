"""Readiness: whether this process should get traffic, answered within a bound however MongoDB is.

`/readyz` asks MongoDB with a ping bounded by MONGODB_TIMEOUT_MS (at most READY_BOUND_SECONDS),
and, while the last REST write could not reach MongoDB, with a bounded write instead: a server
that answers pings but takes no writes is not ready. Probes that arrive while a check is
running share its answer, so a stalled MongoDB never piles up one pending ping per probe.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.core.ports import StoreHealth

READY_BOUND_SECONDS = 2.0  # a probe's MongoDB check, at most (Kubernetes' default probe timeout is 1 s)


@dataclass(frozen=True, slots=True)
class MongoHealth:
    """What one check found: MongoDB answers, and takes writes."""

    reachable: bool
    writes: bool


class Readiness:
    """The MongoDB half of `/readyz`, one check in flight at a time."""

    def __init__(self, store: StoreHealth) -> None:
        self._store = store
        self.bound_seconds = min(store.timeout_seconds, READY_BOUND_SECONDS)
        self._running: asyncio.Task[MongoHealth] | None = None

    async def check(self) -> MongoHealth:
        """Ping MongoDB (or, while writes fail, write to it) within `bound_seconds`; joins a check
        that is already running."""
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._check(), name="readiness")
        # A probe that gives up (client gone) must not cancel the check the others wait for.
        return await asyncio.shield(self._running)

    async def _check(self) -> MongoHealth:
        store = self._store
        if store.writes_failing:
            ok = await store.probe_write(self.bound_seconds)
            return MongoHealth(reachable=ok, writes=ok)
        reachable = await store.ping(self.bound_seconds)
        return MongoHealth(reachable=reachable, writes=reachable)
