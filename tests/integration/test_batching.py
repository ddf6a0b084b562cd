"""Adaptive batching (issue 25) against a real service and SecantusDB: changes read in one
round trip go out as one batch, and a batch's concatenated frames or blocks are what real
WebSocket (plain and compressed) and SSE clients parse, event by event, in order."""

from __future__ import annotations

import time

import pytest

from harness.clients import RawWebSocket, Service, eventually
from service.core.events import Event
from service.fanout.connection import Connection
from service.protocol.wire import Encoded, encode_event
from tests.conftest import StartService
from tests.fakes import FakeTransport, principal


def live_events(count: int, *, size: int = 10, start: int = 1) -> list[Encoded]:
    """`count` events with ids after anything the test service has sent."""
    ts = "2026-12-01T00:00:00Z"
    return [
        encode_event(Event(f"f000{n:04x}00000001", "note", ts, {"n": n, "pad": "x" * size}, None, time.time()))
        for n in range(start, start + count)
    ]


def event_docs(count: int) -> list[dict[str, object]]:
    return [{"type": "note", "n": n} for n in range(count)]


@pytest.mark.gen_test(timeout=30)
async def test_change_buffered_sees_the_changes_pymongo_holds(service: Service) -> None:
    """The private pymongo names `service.storage.mongo.events.change_buffered` reads (the
    change feed's `buffered`) still tell a held change from none."""
    stream = await service.ctx.store.watch_events()
    async with stream:
        await service.ctx.store.events.insert_many(event_docs(3))
        first = None
        deadline = time.monotonic() + 10
        while first is None and time.monotonic() < deadline:
            first = await stream.try_next()
        assert first is not None
        assert stream.buffered()  # the other two came in the same getMore
        assert await stream.try_next() is not None and await stream.try_next() is not None
        assert not stream.buffered()


@pytest.mark.gen_test(timeout=30)
async def test_events_read_in_one_round_trip_reach_a_client_in_one_write(service: Service) -> None:
    """Three events inserted in one command are one batch: one write of three frames."""
    transport = FakeTransport()
    service.ctx.hub.attach(Connection(transport, principal(1)))
    await service.ctx.store.events.insert_many(event_docs(3))
    await eventually(lambda: len(transport.events) == 3, 10, "three events")
    assert len(transport.writes) == 1
    assert transport.writes[0] == b"".join(e.ws_frame for e in list(service.ctx.bus.history)[-3:])
    sample = service.ctx.metrics.registry.get_sample_value
    assert sample("realtime_fanout_batch_size_sum", {}) == 3


@pytest.mark.gen_test(timeout=30)
async def test_websocket_and_sse_clients_parse_a_batch_event_by_event(service: Service) -> None:
    """A batch's concatenated frames and SSE chunks arrive as separate events, in order."""
    ws = await service.websocket({"token": service.token(sub=1)})
    await ws.recv_type("connected")
    sse = await service.sse({"token": service.token(sub=2)})
    await sse.next_of("connected")
    batch = live_events(5)
    service.ctx.hub.deliver_many(batch)
    ids = [e.event.id for e in batch]
    assert [(await ws.recv_type("note"))["id"] for _ in ids] == ids
    assert [(await sse.next_of("note")).id for _ in ids] == ids
    await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_compressed_batch_is_one_message_per_event(start_service: StartService) -> None:
    """WS_COMPRESSION=1: each event of a batch is still its own compressed message."""
    service = await start_service(ws_compression=True)
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    batch = live_events(4, size=300)
    service.ctx.hub.deliver_many(batch)
    for encoded in batch:
        assert await ws.recv_type("note") == encoded.event.payload()
    await ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_batch_past_max_pending_bytes_closes_a_client_that_does_not_read_once(
    start_service: StartService,
) -> None:
    """A client that stops reading is closed 4408 by the batch write that passes the bound, once."""
    service = await start_service(max_pending_bytes=1024)
    silent = await RawWebSocket.connect(service.port, f"/ws?token={service.token(sub=1)}")
    assert (await silent.recv_json())["type"] == "connected"
    hub = service.ctx.hub
    connection = next(iter(hub))
    start = 1
    for _ in range(20):  # far past any loopback socket buffer: 20 × 2 MB
        hub.deliver_many(live_events(20, size=100_000, start=start))
        start += 20
        if connection.closed:
            break
    hub.deliver_many(live_events(20, size=100_000, start=start))
    assert connection.closed
    sample = service.ctx.metrics.registry.get_sample_value
    assert sample("realtime_slow_consumer_disconnects_total", {"transport": "websocket"}) == 1
    await silent.close()


@pytest.mark.gen_test(timeout=30)
async def test_write_delay_ms_reaches_the_hub_and_events_still_arrive(start_service: StartService) -> None:
    """WRITE_DELAY_MS=50: the hub holds events that long, then the client gets them whole."""
    service = await start_service(write_delay_ms=50)
    assert service.ctx.hub.write_delay_seconds == 0.05
    transport = FakeTransport()
    service.ctx.hub.attach(Connection(transport, principal(1)))
    await service.ctx.store.events.insert_many(event_docs(2))
    await service.ctx.store.events.insert_one({"type": "note", "n": 2})
    await eventually(lambda: len(transport.events) == 3, 10, "three events")
    assert b"".join(transport.writes) == b"".join(e.ws_frame for e in list(service.ctx.bus.history)[-3:])
