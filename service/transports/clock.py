"""Token expiry on a live connection: a warning 30 s before `exp`, a 4401 close when the token
stops authenticating (`exp` plus the leeway, the moment a REST request or a connect with it
would be refused too: `LEEWAY_SECONDS`). Both are the schema's, which documents them.

The clock is injected (`Clock`): the service uses the wall clock and the running loop's
timers; unit tests use a fake one they advance by hand, so no test waits for a token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from service.core.errors import CloseCode
from service.core.events import iso
from service.core.schema import EXPIRY_WARNING_SECONDS, LEEWAY_SECONDS
from service.fanout.connection import Connection


class Timer(Protocol):
    """A scheduled callback (`asyncio.TimerHandle` is one)."""

    def cancel(self) -> None:
        """Make sure the callback does not run."""


class Clock(Protocol):
    """Wall-clock time and one-shot timers."""

    def time(self) -> float:
        """Seconds since the epoch (token expiry times are epoch seconds)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` after `delay` seconds."""


class LoopClock:
    """The real clock: `time.time` and the running asyncio loop's timers."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


LOOP_CLOCK = LoopClock()


class TokenClock:
    """Warns a connection 30 s before its token's `exp` and closes it at `exp` + the leeway.

    One timer at a time (warning, then expiry): with thousands of connections, each timer
    handle is memory that every connection pays for.
    """

    __slots__ = ("_clock", "_connection", "_expires_at", "_timer")

    def __init__(self, connection: Connection, clock: Clock = LOOP_CLOCK) -> None:
        self._connection = connection
        self._clock = clock
        self._timer: Timer | None = None
        self._expires_at = 0.0

    def start(self, expires_at: float) -> None:
        """(Re)arm for a token whose `exp` is `expires_at` (epoch seconds)."""
        self.stop()
        self._expires_at = expires_at
        remaining = expires_at - self._clock.time()
        if remaining > EXPIRY_WARNING_SECONDS:
            self._timer = self._clock.call_later(remaining - EXPIRY_WARNING_SECONDS, self._warn)
        else:
            self._warn()

    def stop(self) -> None:
        """Cancel the pending warning or expiry."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _warn(self) -> None:
        expires = datetime.fromtimestamp(self._expires_at, UTC)
        self._connection.send_message({"type": "token_expiring", "expiresAt": iso(expires)})
        ends = self._expires_at + LEEWAY_SECONDS
        self._timer = self._clock.call_later(ends - self._clock.time(), self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._connection.close(CloseCode.UNAUTHORIZED, "token expired")
