"""A token bucket, for what one client may ask of the server (WebSocket requests, polls)."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimit:
    """A token bucket: `burst` requests at once, then `per_second` on average.

    It bounds the work (and the replies) one client can ask of the server, whatever it sends.
    """

    __slots__ = ("_allowance", "_burst", "_clock", "_last", "_per_second")

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._burst = float(burst)
        self._clock = clock
        self._allowance = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        """Take one request from the bucket; False when it is empty (refuse the request)."""
        now = self._clock()
        self._allowance = min(self._burst, self._allowance + (now - self._last) * self._per_second)
        self._last = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True
