"""StreamSession and open_session without a socket: an `asyncio.Transport` fake whose unsent
backlog the test sets, a minimal session subclass that frames nothing, and an `AppContext` of
in-memory ports. Covered: every write is bounded by the hub's `max_pending_bytes` (the slow
consumer close, attached or not), held bytes go out in front of the next write, replay then
`connected` ordering with live events held until the replay is done, the 1013 refusals, and
the bookkeeping when the socket closes (hub, slot, metrics, log line)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from metrics.registry import Metrics
from service.app.auth import Authenticator
from service.app.context import AppContext
from service.app.readiness import Readiness
from service.core.config import Settings
from service.core.errors import CloseCode, ReplayBusy, StoreUnavailable
from service.core.events import Change, Payload, Position, event_id
from service.core.ports import Record
from service.core.schema import TransportName
from service.fanout.batch import Selection
from service.fanout.bus import Bus
from service.fanout.connection import Connection
from service.fanout.hub import Hub, Slot
from service.fanout.replay import Page, Replay, Wants
from service.protocol.wire import Encoded
from service.storage.memory import MemoryUnitOfWork
from service.transports import session as session_module
from service.transports.session import StreamSession, open_session
from tests.fakes import FakeTransport, MemoryChangeFeed, MemoryHealth, encoded, principal, ws_frame_of

LIMIT = 100  # the hub's max_pending_bytes in these tests
T0 = int(time.time()) - 3600  # event ids an hour old: inside the history TTL


class SocketTransport(asyncio.Transport):
    """What asyncio gives a protocol, minus the socket: `kernel` bytes of each write are taken
    at once, the rest stays in the write buffer until the test says otherwise."""

    def __init__(self, kernel: int = 1_000_000) -> None:
        super().__init__()
        self.kernel = kernel
        self.buffered = 0
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.buffered += max(0, len(data) - self.kernel)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = self.closing = True


class Session(StreamSession):
    """A session that writes raw bytes: what `StreamSession` leaves to its subclasses."""

    kind: ClassVar[TransportName] = TransportName.WEBSOCKET

    def __init__(self, ctx: AppContext, slot: Slot | None = None) -> None:
        super().__init__(ctx, slot)
        self.closed_with: tuple[int, str] | None = None

    def send_event(self, encoded: Encoded) -> None:
        self.write(encoded.ws_frame)

    def send_batch(self, selection: Selection) -> None:
        self.write(selection.joined("websocket", ws_frame_of))

    def send_message(self, payload: Payload) -> None:
        self.write(str(payload["type"]).encode())

    def heartbeat(self) -> None:
        self.write(b"ping")

    def close(self, code: CloseCode, reason: str) -> None:
        if self.closed_with is None:
            self.closed_with = (int(code), reason)
            self.write_final(b"close")
            if self._transport is not None:
                self._transport.close()

    def ended(self) -> tuple[int, str] | None:
        return self.closed_with


class Recorder(FakeTransport):
    """A FakeTransport that keeps messages and events in one list, in the order sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send_event(self, encoded: Encoded) -> None:
        super().send_event(encoded)
        self.sent.append(encoded.event.id)

    def send_message(self, payload: Payload) -> None:
        super().send_message(payload)
        self.sent.append(str(payload["type"]))


class Tickets:
    async def save_ticket(self, ticket_hash: str, principal: dict[str, Any], expires_at: float) -> None:
        raise AssertionError("not used")

    async def take_ticket(self, ticket_hash: str) -> dict[str, Any] | None:
        return None


class Nobody:
    async def presence_list(self, stale_before: datetime) -> list[Record]:
        return []


def make_ctx(bus_type: type[Bus] = Bus) -> AppContext:
    settings = Settings(jwt_secret="unit-test-secret-that-is-long-enough-for-hs256-0123456789")
    metrics = Metrics()
    hub = Hub(metrics, max_pending_bytes=LIMIT, max_per_user=3)
    bus = bus_type(MemoryChangeFeed(), hub, metrics, history_size=10)
    bus.covered_from = eid(0)
    return AppContext(
        settings=settings,
        unit_of_work=MemoryUnitOfWork(),
        online=Nobody(),
        auth=Authenticator(settings, Tickets()),
        hub=hub,
        bus=bus,
        metrics=metrics,
        readiness=Readiness(MemoryHealth()),
    )


def eid(inc: int) -> str:
    return event_id(Position(T0, inc))


def change(inc: int) -> Change:
    return Change(
        Position(T0, inc), {"_data": str(inc)}, {"type": "note", "createdAt": datetime(2030, 1, 1, tzinfo=UTC)}
    )


def made(ctx: AppContext, kernel: int = 1_000_000) -> tuple[Session, SocketTransport]:
    session, transport = Session(ctx), SocketTransport(kernel)
    session.connection_made(transport)
    return session, transport


def attached(ctx: AppContext, session: Session) -> Connection:
    connection = Connection(session, principal())
    session.connection = connection
    ctx.hub.attach(connection)
    return connection


def slow(ctx: AppContext) -> float:
    return ctx.metrics.sample("realtime_slow_consumer_disconnects_total", transport="websocket")


# -- writes, bounded at each write -------------------------------------------------------------


def test_a_write_within_the_bound_is_queued() -> None:
    ctx = make_ctx()
    session, transport = made(ctx)
    transport.buffered = 40
    session.write(b"x" * (LIMIT - 40))  # exactly up to the bound
    assert transport.writes == [b"x" * 60] and session.closed_with is None


def test_a_write_past_the_bound_closes_an_attached_client_as_slow() -> None:
    """The bytes are not queued; the hub closes the connection 4408 and counts it once."""
    ctx = make_ctx()
    session, transport = made(ctx)
    connection = attached(ctx, session)
    transport.buffered = 40
    session.write(b"x" * (LIMIT - 39))
    assert transport.writes == [b"close"]  # the event's bytes never went out
    assert session.closed_with == (CloseCode.SLOW_CONSUMER, "slow consumer") and connection.closed
    session.write(b"more")
    assert slow(ctx) == 1 and transport.writes == [b"close"]


def test_a_write_past_the_bound_before_attach_closes_and_counts_it() -> None:
    """Not yet attached (no connection): the session itself closes 4408 and the metric counts it."""
    ctx = make_ctx()
    session, transport = made(ctx)
    transport.buffered = LIMIT
    session.write(b"!")
    assert session.closed_with == (CloseCode.SLOW_CONSUMER, "slow consumer")
    assert slow(ctx) == 1 and transport.closing


def test_one_large_write_into_an_empty_backlog_goes_then_closes_if_it_stays_queued() -> None:
    """Into an empty backlog a write is let through (the kernel takes most of it); if more
    than the bound is still queued afterwards, the client is closed at once."""
    ctx = make_ctx()
    session, transport = made(ctx, kernel=1000)
    session.write(b"x" * 1000 + b"y" * LIMIT)  # the kernel takes 1000: LIMIT left, not past it
    assert session.closed_with is None
    transport.buffered = 0
    session.write(b"x" * 1000 + b"y" * (LIMIT + 1))
    assert len(transport.writes[1]) == 1000 + LIMIT + 1  # it went out...
    assert session.closed_with == (CloseCode.SLOW_CONSUMER, "slow consumer")  # ...and then the close


def test_held_bytes_go_out_in_front_of_the_next_write_in_one_send() -> None:
    ctx = make_ctx()
    session, transport = made(ctx)
    session.hold(b"HTTP/1.1 101\r\n\r\n")
    assert transport.writes == []
    session.write(b"connected")
    assert transport.writes == [b"HTTP/1.1 101\r\n\r\nconnected"]


def test_a_final_write_passes_the_bound_and_carries_the_held_bytes() -> None:
    ctx = make_ctx()
    session, transport = made(ctx)
    transport.buffered = LIMIT
    session.hold(b"head ")
    session.write_final(b"close frame")
    assert transport.writes == [b"head close frame"] and session.closed_with is None


def test_nothing_is_written_once_the_transport_is_closing() -> None:
    ctx = make_ctx()
    session, transport = made(ctx)
    transport.closing = True
    session.write(b"a")
    session.write_final(b"b")
    assert transport.writes == []


def test_drained_waits_for_resume_writing() -> None:
    ctx = make_ctx()
    session, _ = made(ctx)

    async def run() -> list[str]:
        seen: list[str] = []
        session.pause_writing()
        waiter = asyncio.create_task(session.drained())
        await asyncio.sleep(0)
        seen.append("waiting" if not waiter.done() else "done")
        session.resume_writing()
        await waiter
        seen.append("done")
        return seen

    assert asyncio.run(run()) == ["waiting", "done"]


def test_a_client_that_never_drains_is_closed_as_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """DRAIN_SECONDS without taking anything: 4408 (a waiting replay holds a slot)."""
    monkeypatch.setattr(session_module, "DRAIN_SECONDS", 0.0)
    ctx = make_ctx()
    session, _ = made(ctx)
    connection = attached(ctx, session)
    session.pause_writing()
    asyncio.run(session.drained())
    assert connection.closed and session.closed_with == (CloseCode.SLOW_CONSUMER, "slow consumer")


# -- open_session: replay, then `connected`, then live -----------------------------------------


def test_a_new_connection_is_attached_and_greeted() -> None:
    ctx = make_ctx()
    recorder = Recorder()
    connection = Connection(recorder, principal())
    asyncio.run(open_session(ctx, connection))
    assert ctx.hub.get(connection.id) is connection
    assert recorder.messages[0]["type"] == "connected" and recorder.messages[0]["resumed"] is False
    assert recorder.messages[0]["heartbeatSeconds"] == ctx.settings.heartbeat_seconds
    ctx.hub.deliver(encoded(1))  # live from now on: nothing held back
    assert recorder.sent == ["connected", encoded(1).event.id]


def test_a_resume_from_memory_greets_then_replays_in_order() -> None:
    ctx = make_ctx()

    async def run() -> Recorder:
        for inc in (1, 2, 3):
            ctx.bus.handle(change(inc))
        recorder = Recorder()
        await open_session(ctx, Connection(recorder, principal(), last_event_id=eid(1)))
        return recorder

    recorder = asyncio.run(run())
    assert recorder.sent == ["connected", eid(2), eid(3)]
    assert recorder.messages[0]["resumed"] is True
    assert ctx.metrics.sample("realtime_resumes_total", transport="websocket", outcome="replayed") == 1


class ScriptedReplay(Replay):
    """Pages given by the test; `during` runs while each page is read (live events arrive)."""

    def __init__(self, pages: list[Page | Exception], during: Callable[[], None] | None = None) -> None:
        self.pages = pages
        self.during = during
        self.closed = False

    async def next_page(self) -> Page:
        if self.during is not None:
            self.during()
        page = self.pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page

    async def close(self) -> None:
        self.closed = True


class ScriptedBus(Bus):
    """A Bus whose `open_replay` answers what the test put in `replay` (or raises it)."""

    replay: ScriptedReplay | Exception | None = None

    async def open_replay(self, last_id: str, wants: Wants, user_id: int | str) -> Replay | None:
        if isinstance(self.replay, Exception):
            raise self.replay
        return self.replay


def test_live_events_during_a_replay_follow_it_each_once() -> None:
    """Events 2 and 3 replayed over two pages while 3 (again) and 4 arrive live: the client
    gets connected, 2, 3, 4, in that order, 3 only once."""
    ctx = make_ctx(ScriptedBus)
    bus = ctx.bus
    assert isinstance(bus, ScriptedBus)
    live = iter([encoded(3), encoded(4)])
    replay = ScriptedReplay(
        [Page([encoded(2)], encoded(2).event.id, done=False), Page([encoded(3)], encoded(3).event.id, done=True)],
        during=lambda: ctx.hub.deliver(next(live)),
    )
    bus.replay = replay
    recorder = Recorder()
    connection = Connection(recorder, principal(), last_event_id=encoded(1).event.id)
    asyncio.run(open_session(ctx, connection))
    assert recorder.sent == ["connected", encoded(2).event.id, encoded(3).event.id, encoded(4).event.id]
    assert replay.closed and not connection.closed


@pytest.mark.parametrize("refusal", [ReplayBusy("busy"), StoreUnavailable("down")])
def test_a_replay_not_admitted_closes_1013(refusal: Exception) -> None:
    ctx = make_ctx(ScriptedBus)
    assert isinstance(ctx.bus, ScriptedBus)
    ctx.bus.replay = refusal
    recorder = Recorder()
    connection = Connection(recorder, principal(), last_event_id=encoded(1).event.id)
    asyncio.run(open_session(ctx, connection))
    assert recorder.closes == [(CloseCode.TRY_AGAIN_LATER, "try again later")]
    assert recorder.sent == []  # not even `connected`
    assert ctx.metrics.sample("realtime_resumes_total", transport="websocket", outcome="busy") == 1


def test_a_replay_interrupted_by_the_store_keeps_what_was_sent_and_closes_1013() -> None:
    ctx = make_ctx(ScriptedBus)
    assert isinstance(ctx.bus, ScriptedBus)
    replay = ScriptedReplay([Page([encoded(2)], encoded(2).event.id, done=False), StoreUnavailable("reset")])
    ctx.bus.replay = replay
    recorder = Recorder()
    connection = Connection(recorder, principal(), last_event_id=encoded(1).event.id)
    asyncio.run(open_session(ctx, connection))
    assert recorder.sent == ["connected", encoded(2).event.id]
    assert recorder.closes == [(CloseCode.TRY_AGAIN_LATER, "try again later")] and replay.closed
    assert connection.last_event_id == encoded(2).event.id  # where the client resumes next


def test_a_resume_whose_history_is_gone_is_told_to_resync() -> None:
    """An id past the history TTL (tests.fakes ids are from 2021): `connected`, then `resync`."""
    ctx = make_ctx()
    recorder = Recorder()
    connection = Connection(recorder, principal(), last_event_id=encoded(1).event.id)
    asyncio.run(open_session(ctx, connection))
    assert recorder.sent == ["connected", "resync"] and connection.last_event_id is None
    assert recorder.messages[0]["resumed"] is False and not connection.closed
    assert ctx.metrics.sample("realtime_resumes_total", transport="websocket", outcome="resync") == 1


# -- the end of the stream ---------------------------------------------------------------------


def test_connection_lost_gives_everything_back(caplog: pytest.LogCaptureFixture) -> None:
    """Hub stream set, the user's slot, the registry; the disconnect counted by close code
    (1001 when the client left) and logged with the connection's id."""
    ctx = make_ctx()
    slot = ctx.hub.reserve(1)
    assert slot is not None
    session, transport = Session(ctx, slot), SocketTransport()
    session.connection_made(transport)
    assert session.made and ctx.hub.streams == {session}

    async def run() -> Connection:
        connection = Connection(session, principal())
        await session.start(connection, expires_at=time.time() + 3600)
        assert ctx.hub.get(connection.id) is connection and transport.writes == [b"connected"]
        with caplog.at_level(logging.INFO, logger="service.connections"):
            session.connection_lost(None)
        return connection

    connection = asyncio.run(run())
    assert session.lost and connection.closed
    assert ctx.hub.streams == set() and ctx.hub.slots_taken(1) == 0 and ctx.hub.get(connection.id) is None
    assert ctx.metrics.sample("realtime_disconnects_total", transport="websocket", code="1001") == 1
    [line] = [r for r in caplog.records if r.getMessage().startswith("disconnected after")]
    assert line.__dict__["connection_id"] == connection.id and line.__dict__["close_code"] == 1001


def test_a_stream_closed_by_the_server_counts_its_own_code() -> None:
    ctx = make_ctx()
    session, _ = made(ctx)
    session.close(CloseCode.SERVICE_RESTART, "restart")
    session.connection_lost(None)
    assert ctx.metrics.sample("realtime_disconnects_total", transport="websocket", code="1012") == 1
    assert ctx.metrics.sample("realtime_disconnects_total", transport="websocket", code="1001") == 0


def test_a_session_lost_before_start_never_attaches() -> None:
    ctx = make_ctx()
    session, _ = made(ctx)
    session.connection_lost(None)
    connection = Connection(session, principal())
    asyncio.run(session.start(connection, expires_at=time.time() + 3600))
    assert session.connection is None and len(ctx.hub) == 0
