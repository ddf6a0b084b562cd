"""Fakes for unit tests of the transport layer's logic: a `Transport` that records what it
is asked to send, and a clock whose time moves only when a test advances it."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from service.core.errors import CloseCode
from service.core.events import Audience, Event, Payload
from service.core.identity import Principal
from service.fanout.batch import Selection
from service.protocol.wire import Encoded, encode_event


class FakeTransport:
    """A `service.fanout.connection.Transport` that records instead of writing."""

    kind: ClassVar[str] = "websocket"

    def __init__(self) -> None:
        self.events: list[str] = []  # ids of the events sent
        self.writes: list[bytes] = []  # the WebSocket bytes of each write of events
        self.messages: list[Payload] = []
        self.heartbeats = 0
        self.closes: list[tuple[int, str]] = []
        self.pending = 0

    def send_event(self, encoded: Encoded) -> None:
        self.events.append(encoded.event.id)
        self.writes.append(encoded.ws_frame)

    def send_batch(self, selection: Selection) -> None:
        self.events.extend(encoded.event.id for encoded in selection.events)
        self.writes.append(selection.joined("websocket", ws_frame_of))

    def send_message(self, payload: Payload) -> None:
        self.messages.append(payload)

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def pending_bytes(self) -> int:
        return self.pending

    def close(self, code: CloseCode, reason: str) -> None:
        self.closes.append((int(code), reason))

    async def drained(self) -> None:
        """Nothing is ever queued here, so a replay's next page may always go."""


def ws_frame_of(encoded: Encoded) -> bytes:
    return encoded.ws_frame


class FakeSSETransport(FakeTransport):
    kind: ClassVar[str] = "sse"


class FakeTimer:
    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A `service.transports.clock.Clock` that moves only in `advance`, running due timers."""

    def __init__(self, now: float = 2_000_000_000.0) -> None:
        self.now = now
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + max(0.0, delay), callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled]

    def advance(self, seconds: float) -> None:
        """Move time forward, running each timer that falls due on the way, in order."""
        end = self.now + seconds
        while True:
            due = [t for t in self.pending() if t.at <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.at)
            self.timers.remove(timer)
            self.now = timer.at
            timer.callback()
        self.now = end


def principal(user_id: int | str = 1, roles: tuple[str, ...] = ("user",), expires_at: float = 2e9) -> Principal:
    return Principal(user_id, f"user {user_id}", frozenset(roles), expires_at)


def encoded(n: int, event_type: str = "note", audience: Audience | None = None, inserted_at: float = 0.0) -> Encoded:
    """The n-th event: ids sort by n, like real ones."""
    event = Event(f"{0x60000000 + n:08x}00000001", event_type, "2026-12-01T00:00:00Z", {"n": n}, audience, inserted_at)
    return encode_event(event)
