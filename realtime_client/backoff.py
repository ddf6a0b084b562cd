"""The reconnect policy of every client we ship: full jitter, the schema's numbers (the same as
web/src/backoff.ts), so a fleet of workers comes back like a fleet of browsers.

A delay is uniform in [0, min(cap, base * 2^attempt)); the attempt count restarts at
`connected`, unless that connection ended within `stable` seconds (a server that accepts and
drops at once is not hammered).
"""

from __future__ import annotations

import random

from realtime_client.schema import BACKOFF


class Backoff:
    """One client's retry state; times are the caller's monotonic clock, in seconds."""

    def __init__(
        self,
        base: float = BACKOFF["base"],
        cap: float = BACKOFF["cap"],
        stable: float = BACKOFF["stable"],
        rng: random.Random | None = None,
    ) -> None:
        self.base, self.cap, self.stable = base, cap, stable
        self.rng = rng or random.Random()
        self.attempt = 0
        self._held = 0
        self._connected_at: float | None = None

    def ceiling(self, attempt: int) -> float:
        """min(cap, base * 2^attempt) for a 0-based attempt."""
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 0), 52))

    def connected(self, now: float) -> None:
        """The service said `connected`: the next drop starts from the first ceiling."""
        if self._connected_at is None:
            self._held = self.attempt
        self.attempt = 0
        self._connected_at = now

    def next_delay(self, now: float) -> float:
        """The wait before the next attempt, after a failure or a drop at `now`."""
        if self._connected_at is not None:
            if now - self._connected_at < self.stable:
                self.attempt = max(self.attempt, self._held)
            self._connected_at = None
        delay = self.rng.uniform(0, self.ceiling(self.attempt))
        self.attempt += 1
        return delay
