"""Connection lifecycle: slow consumers, admin disconnects, MongoDB outages."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from harness.clients import Service, wait_bound
from service.storage.mongo.embedded import EmbeddedMongo
from tests.conftest import StartService

PADDING = "x" * 50_000


async def stalled_client(service: Service, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that sends its request, reads the response head, then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", service.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        if path.startswith("/ws")
        else ""
    )
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_bound(10))
    return reader, writer


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_slow_consumer_is_closed_and_never_delays_others(start_service: StartService, transport: str) -> None:
    """A client that stops reading is disconnected past MAX_PENDING_BYTES; a reading client gets everything."""
    service = await start_service(max_pending_bytes=65_536)
    token = service.token(sub=1)
    publisher = service.token(sub=2, roles=("publisher",))
    path = ("/ws" if transport == "websocket" else "/events") + f"?token={token}"
    _, stalled_writer = await stalled_client(service, path)
    healthy = await service.websocket({"token": service.token(sub=3)})
    await healthy.recv_type("connected")
    sent = 0
    while service.ctx.metrics.sample("realtime_slow_consumer_disconnects_total", transport=transport) == 0:
        assert sent < 600, "the stalled client was never closed"
        await service.publish(publisher, {"type": "bulk", "n": sent, "padding": PADDING})
        sent += 1
    assert [c.principal.user_id for c in service.ctx.hub if not c.closed] == [3]
    received = [(await healthy.recv(seconds=20))["n"] for _ in range(sent)]
    assert received == list(range(sent))
    await healthy.close()
    stalled_writer.close()
    await stalled_writer.wait_closed()


@pytest.mark.gen_test(timeout=30)
async def test_connections_listing_is_admin_only(service: Service) -> None:
    """`GET /api/connections` shows each connection's details to admins; users get 403."""
    ws = await service.websocket({"token": service.token(sub=5, name="سلمى"), "events": "task_created"})
    hello = await ws.recv_type("connected")
    assert (await service.request("GET", "/api/connections", token=service.token(sub=5))).code == 403
    response = await service.request("GET", "/api/connections", token=service.token(sub=1, roles=("admin",)))
    assert response.code == 200
    listed = json.loads(response.body)["connections"]
    mine = next(c for c in listed if c["id"] == hello["connectionId"])
    assert mine["userId"] == 5 and mine["userName"] == "سلمى" and mine["transport"] == "websocket"
    assert mine["subscriptions"] == ["task_created"] and mine["pendingBytes"] == 0
    assert mine["remote"] == "127.0.0.1" and mine["since"] > 0
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_admin_disconnects_a_connection_with_4000(service: Service) -> None:
    """`DELETE /api/connections/{id}` closes that WebSocket with 4000; unknown ids are 404."""
    admin = service.token(sub=1, roles=("admin",))
    ws = await service.websocket({"token": service.token(sub=5)})
    hello = await ws.recv_type("connected")
    response = await service.request("DELETE", f"/api/connections/{hello['connectionId']}", token=admin)
    assert response.code == 200
    assert await ws.closed() == (4000, "disconnected by admin")
    assert (await service.request("DELETE", "/api/connections/nope", token=admin)).code == 404


@pytest.mark.gen_test(timeout=30)
async def test_admin_disconnects_every_connection_of_a_user(service: Service) -> None:
    """`DELETE /api/users/{id}/connections` closes all of them: WebSocket 4000, SSE `event: close`."""
    admin = service.token(sub=1, roles=("admin",))
    ws = await service.websocket({"token": service.token(sub=7)})
    await ws.recv_type("connected")
    sse = await service.sse({"token": service.token(sub=7)})
    await sse.next_of("connected")
    other = await service.websocket({"token": service.token(sub=8)})
    await other.recv_type("connected")
    response = await service.request("DELETE", "/api/users/7/connections", token=admin)
    assert response.code == 200 and json.loads(response.body) == {"closed": 2}
    assert await ws.closed() == (4000, "disconnected by admin")
    close = await sse.next_of("close")
    assert close.json() == {"code": 4000, "reason": "disconnected by admin"}
    await sse.until_end()
    await other.send({"type": "ping", "nonce": "still here"})
    assert (await other.recv_type("pong"))["nonce"] == "still here"
    await other.close()


# PyMongo 4.20.1 leaks a socket when `AsyncMongoClient.close()` (or any cancellation) interrupts
# a connect still in progress: `pymongo.pool_shared._async_create_connection` closes the socket
# on a timeout or an OSError, not on `CancelledError` (PYTHON-5867, fixed upstream after 4.20.1).
# Here the client's monitor is still connecting to the server that was SIGSTOPped (its SYNs were
# dropped on a full backlog and are retried 1, 2, 4 s later) when the teardown closes the
# client, in about 1 run in 2 under xdist. Reproduced outside the service: a client whose ping
# timed out against a listener that never accepts, then closed, warns `unclosed <socket.socket
# ... laddr=(...)>` with no peer, as here. The socket is closed when collected; nothing of ours
# holds it. Only that warning is tolerated, and only in this test: any other unraisable
# exception, or a socket with a peer, still fails it.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket fd=\d+, family=\d+, type=\d+, proto=\d+, "
    r"laddr=\('[0-9.]+', \d+\)>:pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.gen_test(timeout=120)
async def test_mongodb_pause_gives_503_keeps_streams_and_loses_nothing(
    start_service: StartService, tmp_path: Path
) -> None:
    """SIGSTOP the database: writes 503, readiness 503, heartbeats go on; after SIGCONT events flow, none lost."""
    mongo = EmbeddedMongo(tmp_path / "mongo")
    uri = mongo.start()
    try:
        service = await start_service(mongodb_uri=uri, mongodb_timeout_ms=500, heartbeat_seconds=0.2)
        token = service.token(sub=1)
        publisher = service.token(sub=2, roles=("publisher",))
        sse = await service.sse({"token": token})
        await sse.next_of("connected")
        await service.publish(publisher, {"type": "tick", "n": 1})
        assert (await sse.next_event()).json()["n"] == 1
        tickets = []
        for _ in range(2):
            issued = await service.request("POST", "/api/realtime/ticket", token=token)
            tickets.append(json.loads(issued.body)["ticket"])
        assert mongo.pid is not None
        os.kill(mongo.pid, signal.SIGSTOP)
        try:
            response = await service.request("POST", "/api/tasks", {"title": "t", "taskType": "daily"}, token=token)
            assert response.code == 503
            assert json.loads(response.body)["error"] == "unavailable"
            # A ticket cannot be redeemed: the WebSocket is told to retry later, SSE gets 503.
            ws = await service.websocket({"ticket": tickets[0]})
            assert await ws.closed() == (1013, "database unavailable, retry later")
            refused = await service.sse({"ticket": tickets[1]})
            assert refused.status == 503 and refused.response_headers["retry-after"] == "2"
            assert (await service.request("GET", "/readyz")).code == 503
            assert await sse.next_block() == ": heartbeat"
            assert await sse.next_block() == ": heartbeat"
        finally:
            os.kill(mongo.pid, signal.SIGCONT)
        await service.publish(publisher, {"type": "tick", "n": 2})
        assert (await sse.next_event(seconds=20)).json()["n"] == 2
        assert (await service.request("GET", "/readyz")).code == 200
        sse.close()
    finally:
        mongo.stop()


@pytest.mark.gen_test(timeout=120)
async def test_change_stream_resumes_after_mongodb_restart(start_service: StartService, tmp_path: Path) -> None:
    """Restart the database: the bus resumes from its token; events inserted meanwhile arrive once."""
    mongo = EmbeddedMongo(tmp_path / "mongo")
    uri = mongo.start()
    port = mongo.port
    try:
        service = await start_service(mongodb_uri=uri, mongodb_timeout_ms=500)
        ws = await service.websocket({"token": service.token(sub=1)})
        await ws.recv_type("connected")
        events = service.ctx.store.events
        await events.insert_one({"type": "tick", "n": 1})
        assert (await ws.recv())["n"] == 1
        mongo.stop()  # SIGTERM: SecantusDB flushes; after SIGKILL it loses its last writes
        mongo.start(port=port)
        for n in (2, 3, 4):  # inserted while the bus may still be reconnecting
            await events.insert_one({"type": "tick", "n": n})
        got = [(await ws.recv(seconds=30))["n"] for _ in range(3)]
        assert got == [2, 3, 4]
        await ws.send({"type": "ping", "nonce": "end"})
        assert (await ws.recv())["type"] == "pong"  # nothing else (no duplicate) came before it
        await ws.close()
    finally:
        mongo.stop()
