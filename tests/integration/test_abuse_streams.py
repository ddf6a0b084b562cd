"""Attacks on the stream endpoints that used to work: replies that pile up unread, floods of
pings and messages, concurrent connects past the per-user limit, and user ids that collide.

Each test is bounded (loopback, at most 400 sockets, seconds). Each failed against the code
before the fix, except the WebSocket race (that limit already held) and the slot-release
tests, which guard the new reservations.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from harness.clients import RawWebSocket, Service, eventually, wait_bound
from service.core.identity import Principal
from service.core.rate import RateLimit
from service.core.schema import REQUEST_BURST
from service.fanout.connection import Connection
from service.protocol.frames import OP_CLOSE, OP_PING, parse_close
from service.transports.ws import WebSocketSession
from tests.conftest import StartService

FLOOD = 2_000  # requests sent at once, unread answers and all: 40 times the burst


class StalledTransport(asyncio.Transport):
    """An asyncio transport whose peer reads nothing: every byte written stays queued."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.most_queued = 0  # the largest backlog before the connection began to close
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        if data[0] & 0x0F != OP_CLOSE:
            self.most_queued = max(self.most_queued, self.get_write_buffer_size())

    def get_write_buffer_size(self) -> int:
        return sum(len(data) for data in self.writes)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.gen_test(timeout=30)
async def test_unread_pongs_count_against_max_pending_bytes_and_close_with_4408(start_service: StartService) -> None:
    """Pongs to a client that reads nothing stop at MAX_PENDING_BYTES: it is closed 4408 at that write."""
    service = await start_service(max_pending_bytes=1024)
    session = WebSocketSession(service.ctx, None)
    transport = StalledTransport()
    session.connection_made(transport)
    session.connection = Connection(session, Principal(1, "قارئ", frozenset({"user"}), 2e9))
    before = service.ctx.metrics.sample("realtime_slow_consumer_disconnects_total", transport="websocket")
    session.data_received(RawWebSocket.frame(b"p" * 125, OP_PING) * 20)  # 20 × 127 bytes of pongs
    code, reason = parse_close(transport.writes[-1][2:])
    assert (code, reason) == (4408, "slow consumer")
    assert service.ctx.metrics.sample("realtime_slow_consumer_disconnects_total", transport="websocket") == before + 1
    assert transport.most_queued <= 1024
    session.connection_lost(None)


def test_rate_limit_allows_a_burst_then_the_rate() -> None:
    """The token bucket lets `burst` through at once, then refills at `per_second`."""
    now = [0.0]
    limit = RateLimit(per_second=10, burst=5, clock=lambda: now[0])
    assert [limit.allow() for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.25  # 2.5 requests' worth
    assert [limit.allow() for _ in range(3)] == [True, True, False]
    now[0] += 100.0  # never more than the burst
    assert sum(limit.allow() for _ in range(10)) == 5


async def flood(service: Service, frames: bytes) -> tuple[int, str, int]:
    """Connect, then send `frames` unread; returns the close code and reason and the answers before it."""
    ws = await RawWebSocket.connect(service.port, f"/ws?token={service.token(sub=1)}")
    assert (await ws.recv_json())["type"] == "connected"
    ws.send(frames)
    answers = 0
    while True:
        opcode, payload = await ws.recv_frame(seconds=10)
        if opcode == OP_CLOSE:
            await ws.close()
            code, reason = parse_close(payload)
            return code, reason, answers
        answers += 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    "request_bytes",
    [
        RawWebSocket.frame(b"p" * 125, OP_PING),
        RawWebSocket.frame(b'{"type": "ping", "nonce": 7}'),
        RawWebSocket.frame(b"{") + RawWebSocket.frame(b'{"type": "ping"}'),  # errors, never 10 in a row
    ],
    ids=["ping-frames", "ping-messages", "bad-and-good-messages"],
)
async def test_request_flood_is_closed_with_4400(service: Service, request_bytes: bytes) -> None:
    """Pings or messages past the rate (a burst of 50, then 20/s) end the connection with 4400."""
    code, reason, answers = await flood(service, request_bytes * FLOOD)
    assert (code, reason) == (4400, "too many messages")
    assert answers < 2 * REQUEST_BURST


def source_address(i: int) -> str:
    """One of eight loopback addresses, 127.0.0.2 to 127.0.0.9."""
    return f"127.0.0.{2 + i % 8}"


async def race(service: Service, transport: str, token: str, count: int) -> list[str]:
    """`count` connects for one token, each request written once all sockets are open."""
    path = f"/ws?token={token}" if transport == "websocket" else f"/events?token={token}"
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
    )
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade if transport == 'websocket' else ''}\r\n"
    go = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def one(i: int) -> str:
        # From several source addresses, as many users' browsers would come: one address may
        # hold only MAX_PENDING_PER_ADDRESS connections that have not sent their request yet.
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port, local_addr=(source_address(i), 0))
        writers.append(writer)
        await go.wait()
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        if status != "101":
            return status
        ws = RawWebSocket(reader, writer, head)
        opcode, payload = await ws.recv_frame(seconds=20)
        return f"close {parse_close(payload)[0]}" if opcode == OP_CLOSE else json.loads(payload)["type"]

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await eventually(lambda: len(writers) == count, 20, "every socket open")
    go.set()
    try:
        return list(await asyncio.wait_for(asyncio.gather(*tasks), wait_bound(60)))
    finally:
        for writer in writers:
            writer.close()


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize(
    ("transport", "accepted", "refused"),
    [("sse", "200", "429"), ("websocket", "connected", "close 4429")],
)
async def test_concurrent_connects_for_one_user_stop_at_the_limit(
    service: Service, transport: str, accepted: str, refused: str
) -> None:
    """200 simultaneous connects for one user: exactly MAX_CONNECTIONS_PER_USER get in; then all slots come back."""
    token = service.token(sub=42)
    outcomes = await race(service, transport, token, 200)
    limit = service.settings.max_connections_per_user
    assert (outcomes.count(accepted), outcomes.count(refused)) == (limit, 200 - limit)
    hub = service.ctx.hub
    await eventually(lambda: hub.slots_taken(42) == 0, 20, "every slot given back")
    assert await race(service, transport, token, limit) == [accepted] * limit


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_streams_that_end_before_they_open_give_their_slot_back(service: Service, transport: str) -> None:
    """Clients that leave in the middle of their handshake hold no slot afterwards."""
    path = f"/events?token={service.token(sub=43)}" if transport == "sse" else f"/ws?token={service.token(sub=43)}"
    hub = service.ctx.hub
    for _ in range(service.settings.max_connections_per_user + 5):
        ws = await RawWebSocket.connect(service.port, path) if transport == "websocket" else None
        if ws is not None:  # upgraded: leave before reading `connected`
            await ws.close()
        else:
            _, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            writer.close()  # leave before the response head
            await writer.wait_closed()
    await eventually(lambda: hub.slots_taken(43) == 0 and len(hub.streams) == 0, 20, "every slot given back")


@pytest.mark.gen_test(timeout=60)
async def test_drained_streams_give_their_slots_back(service: Service) -> None:
    """After a drain has closed a user's WebSocket and SSE streams, the user holds no slot."""
    token = service.token(sub=44)
    ws = await service.websocket({"token": token})
    sse = await service.sse({"token": token})
    await ws.recv_type("connected")
    await sse.next_of("connected")
    assert service.ctx.hub.slots_taken(44) == 2
    await service.server.drain(0)
    assert (await ws.closed())[0] == 1012
    await sse.until_end()
    await eventually(lambda: service.ctx.hub.slots_taken(44) == 0, 20, "every slot given back")


# -- one canonical user id ------------------------------------------------------------------


async def connected_as(service: Service, sub: str) -> tuple[Any, Any]:
    ws = await service.websocket({"token": service.token(sub=sub)})
    return ws, (await ws.recv_type("connected"))["userId"]


@pytest.mark.gen_test(timeout=30)
async def test_leading_zeros_make_a_different_user(service: Service) -> None:
    """Subjects "0100", "00100" and "100" are three users: "0100", "00100" and 100."""
    ids = [(await connected_as(service, sub))[1] for sub in ("0100", "00100", "100")]
    assert ids == ["0100", "00100", 100]


async def addressed(ws: Any) -> list[int]:
    """The `n` of every event up to and including the first `public` one."""
    seen: list[int] = []
    while True:
        message = await ws.recv()
        if message["type"] in ("private", "public"):
            seen.append(message["n"])
            if message["type"] == "public":
                return seen


@pytest.mark.gen_test(timeout=30)
async def test_to_users_reaches_only_the_user_with_that_canonical_id(service: Service) -> None:
    """`to.users: [100]` and `["100"]` reach sub "100" only; `["0100"]` reaches sub "0100" only."""
    publisher = service.token(sub=99, roles=("publisher",))
    clients = {sub: (await connected_as(service, sub))[0] for sub in ("0100", "00100", "100")}
    await service.publish(publisher, {"type": "private", "n": 1, "to": {"users": [100]}})
    await service.publish(publisher, {"type": "private", "n": 2, "to": {"users": ["100"]}})
    await service.publish(publisher, {"type": "private", "n": 3, "to": {"users": ["0100"]}})
    await service.publish(publisher, {"type": "public", "n": 4})
    got = {sub: await addressed(ws) for sub, ws in clients.items()}
    assert got == {"0100": [3, 4], "00100": [4], "100": [1, 2, 4]}
    for ws in clients.values():
        await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_leading_zero_subject_does_not_take_the_numeric_users_slots(start_service: StartService) -> None:
    """With one connection per user, "00100" connected does not keep user 100 out."""
    service = await start_service(max_connections_per_user=1)
    other, _ = await connected_as(service, "00100")
    mine, user_id = await connected_as(service, "100")
    assert user_id == 100
    await other.close()
    await mine.close()


@pytest.mark.gen_test(timeout=30)
async def test_admin_disconnects_only_the_user_with_that_canonical_id(service: Service) -> None:
    """`DELETE /api/users/0100/connections` closes "0100" alone; `/api/users/100/...` closes 100 alone."""
    admin = service.token(sub="root", roles=("admin",))
    clients = {sub: (await connected_as(service, sub))[0] for sub in ("0100", "00100", "100")}
    response = await service.request("DELETE", "/api/users/0100/connections", token=admin)
    assert json.loads(response.body) == {"closed": 1}
    assert (await clients["0100"].closed())[0] == 4000
    response = await service.request("DELETE", "/api/users/100/connections", token=admin)
    assert json.loads(response.body) == {"closed": 1}
    assert (await clients["100"].closed())[0] == 4000
    assert sorted(str(c.principal.user_id) for c in service.ctx.hub if not c.closed) == ["00100"]
    await clients["00100"].close()


@pytest.mark.gen_test(timeout=30)
async def test_tasks_and_their_events_keep_the_canonical_user_id(service: Service) -> None:
    """A task created by sub "0100" is stored, returned and announced with userId "0100"."""
    token = service.token(sub="0100")
    ws, _ = await connected_as(service, "0100")
    response = await service.request("POST", "/api/tasks", {"title": "مهمة", "taskType": "daily"}, token=token)
    created = json.loads(response.body)
    event = await ws.recv_type("task_created")
    fetched = json.loads((await service.request("GET", f"/api/tasks/{created['id']}", token=token)).body)
    assert (created["userId"], event["userId"], fetched["userId"]) == ("0100", "0100", "0100")
    await ws.close()
