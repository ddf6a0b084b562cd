"""The reconnect policy of every client we ship, in Python: the same rules as web/src/backoff.ts
and web/src/client.ts, so `service tail` and the restart bench behave like the browser.

Full jitter (a delay uniform in [0, min(cap, base * 2^attempt))) with a low cap: a client
retries at most `cap` seconds apart, so after an outage of any length it is back within `cap`
of the service answering, while a fleet's retries stay spread over `cap`. The attempt count
restarts at `connected`, unless that connection ended within `stable` seconds (a server that
accepts and drops at once is not hammered).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from service.schema import BACKOFF


@dataclass(frozen=True)
class BackoffPolicy:
    """Base and cap of the ceiling, and how long a connection must hold to reset the count (s)."""

    base: float = BACKOFF["base"]  # the numbers web/ uses too (web/src/generated/schema.ts)
    cap: float = BACKOFF["cap"]
    stable: float = BACKOFF["stable"]

    def ceiling(self, attempt: int) -> float:
        """min(cap, base * 2^attempt) for a 0-based attempt."""
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 0), 52))


DEFAULT_POLICY = BackoffPolicy()
# What web/ and `service tail` did before: 3 s doubling to 30 s, reset after 10 s open.
PREVIOUS_POLICY = BackoffPolicy(base=3.0, cap=30.0, stable=10.0)


class Backoff:
    """One client's retry state under a policy; times are the caller's clock, in seconds."""

    def __init__(self, policy: BackoffPolicy = DEFAULT_POLICY, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random()
        self.attempt = 0
        self._held = 0
        self._connected_at: float | None = None

    def connected(self, now: float) -> None:
        """The service said `connected`: the next drop starts from the first ceiling."""
        if self._connected_at is None:
            self._held = self.attempt
        self.attempt = 0
        self._connected_at = now

    def next_delay(self, now: float) -> float:
        """The wait before the next attempt, after a failure or a drop at `now`."""
        if self._connected_at is not None:
            if now - self._connected_at < self.policy.stable:
                self.attempt = max(self.attempt, self._held)
            self._connected_at = None
        delay = self.rng.uniform(0, self.policy.ceiling(self.attempt))
        self.attempt += 1
        return delay
