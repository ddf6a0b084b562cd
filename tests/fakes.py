"""Fakes for unit tests: a `Transport` that records what it is asked to send, a clock whose
time moves only when a test advances it, and in-memory implementations of the storage ports
(`service.core.ports`; mypy checks they implement them: `make types` covers this file)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar

from service.core.errors import CloseCode, HistoryLost, StoreUnavailable
from service.core.events import Audience, Change, Event, Payload, Position, ResumeToken
from service.core.identity import Principal
from service.core.ports import ChangeFeed, ChangeStream, StoreHealth
from service.core.schema import TransportName
from service.fanout.batch import Selection
from service.protocol.wire import Encoded, encode_event


class FakeTransport:
    """A `service.fanout.connection.Transport` that records instead of writing."""

    kind: ClassVar[TransportName] = TransportName.WEBSOCKET

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
    kind: ClassVar[TransportName] = TransportName.SSE


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


class MemoryChangeStream:
    """A `ChangeStream` over a list; `on_read` runs as each change is returned (the await point)."""

    def __init__(
        self,
        changes: list[Change],
        on_read: Callable[[Change], None] | None = None,
        fail_at: int | None = None,
    ) -> None:
        self.changes = list(changes)
        self.on_read = on_read
        self.fail_at = fail_at  # `try_next` number this many fails as if MongoDB went away
        self.returned = 0
        self.closed = False
        self._token: ResumeToken | None = {"_data": "start"}

    @property
    def resume_token(self) -> ResumeToken | None:
        return self._token

    async def try_next(self) -> Change | None:
        if self.fail_at is not None and self.returned == self.fail_at:
            raise StoreUnavailable("connection reset")
        if not self.changes:
            await asyncio.sleep(0.01)  # as a server waits before an empty batch
            return None
        change = self.changes.pop(0)
        self.returned += 1
        self._token = change.token
        if self.on_read is not None:
            self.on_read(change)
        return change

    def buffered(self) -> bool:
        return bool(self.changes)

    async def close(self) -> None:
        self.closed = True


class MemoryChangeFeed:
    """A `ChangeFeed` over an in-memory oplog whose resume tokens are `{"_data": "<inc>"}`."""

    def __init__(self, oplog: list[Change] | None = None) -> None:
        self.oplog = oplog if oplog is not None else []
        self.positions: dict[str, ResumeToken] = {}
        self.opened: list[ResumeToken | None] = []
        self.streams: list[MemoryChangeStream] = []
        self.on_read: Callable[[Change], None] | None = None
        self.pruned_below: int | None = None  # tokens before this inc raise `HistoryLost`

    async def watch_events(
        self, *, resume_after: ResumeToken | None = None, batch_size: int | None = None
    ) -> MemoryChangeStream:
        self.opened.append(resume_after)
        data = str(resume_after["_data"]) if resume_after else ""
        after = int(data) if data.isdigit() else 0
        if self.pruned_below is not None and after < self.pruned_below:
            raise HistoryLost("resume point may no longer be in the oplog")
        stream = MemoryChangeStream([c for c in self.oplog if c.position.inc > after], self.on_read)
        self.streams.append(stream)
        return stream

    async def cluster_time(self) -> Position:
        return self.oplog[-1].position if self.oplog else Position(0, 0)

    async def save_position(self, id: str, token: ResumeToken) -> None:
        self.positions[id] = token

    async def position_at_or_before(self, id: str) -> ResumeToken | None:
        older = [key for key in self.positions if key <= id]
        return self.positions[max(older)] if older else None

    async def positions_before(self, id: str, limit: int) -> list[tuple[str, ResumeToken]]:
        older = sorted((key for key in self.positions if key < id), reverse=True)[:limit]
        return [(key, self.positions[key]) for key in older]


class MemoryHealth:
    """A `StoreHealth` whose answers a test sets; counts the checks it was asked."""

    def __init__(self, *, reachable: bool = True, writes: bool = True, writes_failing: bool = False) -> None:
        self.timeout_seconds = 10.0
        self.reachable = reachable
        self.writes = writes
        self.writes_failing = writes_failing
        self.pings = 0
        self.probes = 0
        self.release = asyncio.Event()  # checks wait for it when `hold` is set
        self.hold = False

    async def ping(self, bound: float) -> bool:
        self.pings += 1
        if self.hold:
            await self.release.wait()
        return self.reachable

    async def probe_write(self, bound: float) -> bool:
        self.probes += 1
        if self.hold:
            await self.release.wait()
        return self.writes


def _implements_the_ports(feed: MemoryChangeFeed, stream: MemoryChangeStream, health: MemoryHealth) -> None:
    """Never called: mypy fails here when a fake drifts from its port."""
    _feed: ChangeFeed = feed
    _stream: ChangeStream = stream
    _health: StoreHealth = health
