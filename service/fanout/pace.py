"""Per-key pacing: a token bucket that makes callers wait for their turn instead of refusing them.

Used per user for the work a client can ask for again and again at no cost to itself: polls
answered at once, and pages read from MongoDB for a replay. A well-behaved client never waits
(its burst covers it); a client that asks faster is slowed to the refill rate while its
requests sleep, holding only the per-user slots it already has, so flooding costs the server
almost nothing. Past `max_wait` the caller is refused (`Paced`) rather than queued for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable

from service.core.errors import ServiceError

MAX_KEYS = 10_000  # buckets kept; past it, those back to a full burst are forgotten


class Paced(ServiceError):
    """The key's turn is further away than the caller may wait."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"paced: next turn in {retry_after:.1f}s")
        self.retry_after = retry_after


class Pacer:
    """Token buckets by key: `burst` at once, then `rate` per second, waits up to `max_wait`."""

    def __init__(
        self, rate: float, burst: int, *, max_wait: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_wait = max_wait
        self._clock = clock
        # key -> (tokens, when): tokens may go below zero, one per caller waiting its turn.
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def reserve(self, key: Hashable) -> float:
        """Take a turn for `key`; the seconds to wait before using it (0: now).

        Raises:
            Paced: the turn is more than `max_wait` away (nothing is reserved).
        """
        now = self._clock()
        tokens, when = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        if wait > self.max_wait:
            raise Paced(wait)
        if key not in self._buckets and len(self._buckets) >= MAX_KEYS:
            self._forget_full(now)
        self._buckets[key] = (tokens - 1.0, now)
        return wait

    async def take(self, key: Hashable) -> None:
        """Wait for `key`'s turn.

        Raises:
            Paced: the turn is more than `max_wait` away.
        """
        wait = self.reserve(key)
        if wait > 0:
            await asyncio.sleep(wait)

    def _forget_full(self, now: float) -> None:
        full = [k for k, (tokens, when) in self._buckets.items() if tokens + (now - when) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
