"""One expiry rule on every transport, with real tokens over real sockets: a token authenticates
while `now < exp + 30 s` (the verification leeway) for a REST request, a WebSocket or SSE
connect and a poll alike, and a live stream or waiting poll ends with 4401 at that same moment.

Tokens here expired 20 s ago (inside the leeway) or 40 s ago (past it): 10 s from the boundary
either way, so no test depends on how fast it runs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from harness.clients import Service, wait_bound
from service.core.identity import LEEWAY_SECONDS
from tests.conftest import StartService

INSIDE = -(LEEWAY_SECONDS - 10)  # `ttl` of a token whose exp passed 20 s ago
PAST = -(LEEWAY_SECONDS + 10)  # 40 s ago
ENDING = -(LEEWAY_SECONDS - 2)  # exp passed 28 s ago: it stops authenticating in about 2 s
PUBLISHER = ("user", "publisher")


async def poll(service: Service, token: str, **query: str) -> tuple[int, Any]:
    path = "/poll" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    response = await service.request("GET", path, token=token)
    return response.code, json.loads(response.body)


async def rest_status(service: Service, token: str) -> int:
    return (await service.request("GET", "/api/tasks", token=token)).code


@pytest.mark.gen_test(timeout=30)
async def test_rest_accepts_a_token_inside_the_leeway_and_refuses_it_past(service: Service) -> None:
    """REST: 200 with a token 20 s past `exp`, 401 `token expired` 40 s past."""
    assert await rest_status(service, service.token(ttl=INSIDE)) == 200
    response = await service.request("GET", "/api/tasks", token=service.token(ttl=PAST))
    assert response.code == 401 and json.loads(response.body)["reason"] == "token expired"


@pytest.mark.gen_test(timeout=30)
async def test_websocket_connect_inside_the_leeway_stays_open(service: Service) -> None:
    """A WebSocket connect with a token 20 s past `exp` is warned, not closed: it still answers pings."""
    ws = await service.websocket({"token": service.token(ttl=INSIDE)})
    await ws.recv_type("connected")
    await ws.recv_type("token_expiring")
    await ws.send({"type": "ping", "nonce": "still here"})
    assert (await ws.recv_type("pong"))["nonce"] == "still here"
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_websocket_connect_past_the_leeway_is_closed_4401(service: Service) -> None:
    """Past the leeway a WebSocket connect is refused like a REST request: 4401 `token expired`."""
    ws = await service.websocket({"token": service.token(ttl=PAST)})
    assert await ws.closed() == (4401, "token expired")


@pytest.mark.gen_test(timeout=30)
async def test_sse_connect_inside_the_leeway_delivers_events(service: Service) -> None:
    """An SSE stream opened 20 s past `exp` is warned, then carries the next event instead of closing."""
    sse = await service.sse({"token": service.token(ttl=INSIDE)})
    try:
        await sse.next_of("connected")
        assert (await sse.next_event()).event == "token_expiring"
        await service.publish(service.token(roles=PUBLISHER), {"type": "note", "n": 1})
        note = await sse.next_event()
        assert note.event == "note" and note.json()["n"] == 1
    finally:
        sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_sse_connect_past_the_leeway_is_401(service: Service) -> None:
    """Past the leeway an SSE connect is a 401 with the reason, as for REST."""
    sse = await service.sse({"token": service.token(ttl=PAST)})
    assert sse.status == 401 and sse.body_json == {"error": "unauthorized", "reason": "token expired"}


@pytest.mark.gen_test(timeout=30)
async def test_poll_inside_the_leeway_is_connected_without_a_close(service: Service) -> None:
    """A poll with a token 20 s past `exp` is greeted and not told to stop."""
    status, body = await poll(service, service.token(ttl=INSIDE))
    assert status == 200 and [m["type"] for m in body["messages"]] == ["connected"]


@pytest.mark.gen_test(timeout=30)
async def test_poll_past_the_leeway_is_401(service: Service) -> None:
    """Past the leeway a poll is a 401 `token expired`, as for REST."""
    status, body = await poll(service, service.token(ttl=PAST))
    assert status == 401 and body == {"error": "unauthorized", "reason": "token expired"}


@pytest.mark.gen_test(timeout=30)
async def test_websocket_closes_when_its_token_stops_working_for_rest(service: Service) -> None:
    """The 4401 of a live WebSocket comes when REST starts refusing the same token, not before."""
    token = service.token(ttl=ENDING)
    ws = await service.websocket({"token": token})
    await ws.recv_type("connected")
    assert await ws.closed(seconds=10) == (4401, "token expired")
    assert await rest_status(service, token) == 401


@pytest.mark.gen_test(timeout=30)
async def test_waiting_poll_ends_when_its_token_stops_working_for_rest(start_service: StartService) -> None:
    """A waiting poll is answered `close` 4401 when the token stops authenticating, and the next poll is a 401."""
    service = await start_service(poll_timeout_seconds=60.0)
    token = service.token(ttl=ENDING)
    status, first = await poll(service, token)
    assert status == 200 and [m["type"] for m in first["messages"]] == ["connected"]
    status, body = await asyncio.wait_for(poll(service, token, cursor=first["cursor"]), wait_bound(10))
    assert status == 200 and body["messages"] == [{"type": "close", "code": 4401, "reason": "token expired"}]
    assert await rest_status(service, token) == 401
    status, body = await poll(service, token, cursor=first["cursor"])
    assert status == 401 and body["reason"] == "token expired"
