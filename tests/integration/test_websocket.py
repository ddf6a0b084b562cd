"""The WebSocket transport: greeting, ping/pong, subscriptions, bad input, auth failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from harness.clients import Service
from tests.conftest import StartService


@pytest.mark.gen_test(timeout=30)
async def test_websocket_greets_with_connected(service: Service) -> None:
    """The first message names the connection, user, transport and heartbeat."""
    ws = await service.websocket({"token": service.token(sub=5, name="محمد حسن")})
    hello = await ws.recv()
    assert hello["type"] == "connected"
    assert hello["userId"] == 5 and hello["userName"] == "محمد حسن"
    assert hello["transport"] == "websocket" and hello["resumed"] is False
    assert hello["heartbeatSeconds"] == service.settings.heartbeat_seconds
    assert len(hello["connectionId"]) == 16
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_ping_is_answered_with_pong_and_nonce(service: Service) -> None:
    """`ping` gets `pong` carrying the client's nonce."""
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    await ws.send({"type": "ping", "nonce": "n-1"})
    pong = await ws.recv()
    assert pong["type"] == "pong" and pong["nonce"] == "n-1" and pong["ts"].endswith("Z")
    await ws.send({"type": "ping"})
    assert "nonce" not in await ws.recv()
    await ws.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "bad_message"),
        ("[1, 2]", "bad_message"),
        ('{"no": "type"}', "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type": "launch_rockets"}', "unknown_type"),
        ('{"type": "subscribe", "events": "task_created"}', "bad_message"),
        ('{"type": "subscribe", "events": ["Bad Type"]}', "bad_message"),
        ('{"type": "ping", "nonce": {"a": 1}}', "bad_message"),
        ('{"type": "auth"}', "bad_message"),
    ],
)
async def test_bad_message_gets_error_and_connection_stays(service: Service, message: str, code: str) -> None:
    """A malformed or unknown message is answered with `error`; the connection still works."""
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    await ws.send(message)
    error = await ws.recv()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    await ws.send({"type": "ping", "nonce": 1})
    assert (await ws.recv())["nonce"] == 1
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_ten_bad_messages_in_a_row_close_with_4400(service: Service) -> None:
    """Ten consecutive bad messages end the connection with 4400."""
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    for _ in range(10):
        await ws.send("{")
    code, reason = await ws.closed()
    assert code == 4400 and reason == "too many bad messages"


@pytest.mark.gen_test(timeout=30)
async def test_good_message_resets_bad_message_count(service: Service) -> None:
    """Nine bad messages, a good one, nine more: still open."""
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    for batch in range(2):
        for _ in range(9):
            await ws.send("{")
            await ws.recv_type("error")
        await ws.send({"type": "ping", "nonce": batch})
        assert (await ws.recv_type("pong"))["nonce"] == batch
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_message_over_limit_closes_with_1009(start_service: StartService) -> None:
    """A frame larger than MAX_MESSAGE_BYTES closes the connection with 1009."""
    service = await start_service(max_message_bytes=1024)
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    await ws.send('{"type":"ping","nonce":"' + "x" * 5000 + '"}')
    code, _ = await ws.closed()
    assert code == 1009


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("make_query", "reason"),
    [
        (lambda s: {}, "missing token"),
        (lambda s: {"token": "not-a-jwt"}, "invalid token"),
        (lambda s: {"token": s.token(ttl=-120)}, "token expired"),
        (
            lambda s: {
                "token": jwt.encode(
                    {"sub": "1", "exp": time.time() + 60},
                    "another-key-of-sufficient-length-xx",
                    algorithm="HS256",
                )
            },
            "invalid token",
        ),
        (
            lambda s: {"token": jwt.encode({"sub": "1", "exp": time.time() + 60}, "", algorithm="none")},
            "invalid token",
        ),
        (
            lambda s: {"token": jwt.encode({"sub": "1"}, s.settings.jwt_secret, algorithm="HS256")},
            "invalid token",
        ),
        (lambda s: {"ticket": "never-issued"}, "invalid ticket"),
    ],
    ids=["missing", "garbage", "expired", "foreign-key", "alg-none", "no-exp", "unknown-ticket"],
)
async def test_auth_failure_closes_websocket_with_4401(
    service: Service, make_query: Callable[[Service], dict[str, str]], reason: str
) -> None:
    """The upgrade is accepted, then the server closes with 4401 and a short reason."""
    ws = await service.websocket(make_query(service))
    code, got = await ws.closed()
    assert (code, got) == (4401, reason)
    failures = service.ctx.metrics.sample("realtime_auth_failures_total", transport="websocket", reason=reason)
    assert failures >= 1


@pytest.mark.gen_test(timeout=30)
async def test_ticket_works_once(service: Service) -> None:
    """A ticket opens one connection; the second use is refused with 4401."""
    response = await service.request("POST", "/api/realtime/ticket", token=service.token(sub=9, name="ليلى"))
    assert response.code == 200
    body = __import__("json").loads(response.body)
    assert body["expiresIn"] == 60
    ws = await service.websocket({"ticket": body["ticket"]})
    hello = await ws.recv_type("connected")
    assert hello["userId"] == 9 and hello["userName"] == "ليلى"
    again = await service.websocket({"ticket": body["ticket"]})
    assert await again.closed() == (4401, "invalid ticket")
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_disallowed_origin_is_refused_with_403(service: Service) -> None:
    """A browser Origin outside ALLOWED_ORIGINS is refused at the handshake."""
    with pytest.raises(InvalidStatus) as info:
        await service.websocket({"token": service.token()}, origin="http://evil.example")
    assert info.value.response.status_code == 403
    ws = await service.websocket({"token": service.token()}, origin="http://allowed.example")
    await ws.recv_type("connected")
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_subscribe_and_unsubscribe_filter_events(service: Service) -> None:
    """`events=` at connect, `subscribe` and `unsubscribe` decide which types arrive."""
    publisher = service.token(sub=2, roles=("publisher",))
    ws = await service.websocket({"token": service.token(), "events": "alpha"})
    await ws.recv_type("connected")
    await ws.send({"type": "subscribe", "events": ["beta"]})
    await ws.send({"type": "unsubscribe", "events": ["alpha"]})
    await ws.send({"type": "ping", "nonce": "sync"})
    await ws.recv_type("pong")
    for kind in ("alpha", "gamma", "beta"):
        await service.publish(publisher, {"type": kind})
    assert (await ws.recv())["type"] == "beta"
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_too_many_connections_per_user_close_with_4429(start_service: StartService) -> None:
    """Past MAX_CONNECTIONS_PER_USER the next connection is closed with 4429."""
    service = await start_service(max_connections_per_user=2)
    token = service.token(sub=3)
    first = await service.websocket({"token": token})
    second = await service.websocket({"token": token})
    await first.recv_type("connected")
    await second.recv_type("connected")
    third = await service.websocket({"token": token})
    assert await third.closed() == (4429, "too many connections")
    other_user = await service.websocket({"token": service.token(sub=4)})
    await other_user.recv_type("connected")
    for ws in (first, second, other_user):
        await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_auth_refresh_extends_session_for_same_user_only(service: Service) -> None:
    """`auth` with a new token of the same user gets `auth_ok`; another user's closes 4401."""
    ws = await service.websocket({"token": service.token(sub=6, ttl=600)})
    await ws.recv_type("connected")
    await ws.send({"type": "auth", "token": service.token(sub=6, ttl=7200)})
    ok = await ws.recv_type("auth_ok")
    assert ok["expiresAt"].endswith("Z")
    await ws.send({"type": "auth", "token": service.token(sub=7)})
    assert await ws.closed() == (4401, "token belongs to another user")


@pytest.mark.gen_test(timeout=30)
async def test_token_near_expiry_warns_then_closes_with_4401(service: Service) -> None:
    """A token within 30 s of expiry gets `token_expiring`, then 4401 `token expired` when the leeway ends."""
    ws = await service.websocket({"token": service.token(ttl=-28)})  # exp + 30 s leeway is 2 s away
    await ws.recv_type("connected")
    warning = await ws.recv_type("token_expiring")
    assert warning["expiresAt"].endswith("Z")
    assert await ws.closed(seconds=10) == (4401, "token expired")


@pytest.mark.gen_test(timeout=30)
async def test_draining_service_refuses_new_websockets(service: Service) -> None:
    """Once draining, the upgrade is refused with 503 so clients go elsewhere."""
    service.ctx.lifecycle.draining = True
    with pytest.raises(InvalidStatus) as info:
        await service.websocket({"token": service.token()})
    assert info.value.response.status_code == 503
    service.ctx.lifecycle.draining = False
    await asyncio.sleep(0)


@pytest.mark.gen_test(timeout=30)
async def test_a_warned_connection_refreshes_in_band(service: Service) -> None:
    """A token in its last 30 s is warned at once; `auth` with a fresh token answers `auth_ok`
    with the new expiry (that the clock re-arms is tests/unit/transports/test_clock.py's, without waiting)."""
    token = service.token(sub=11, ttl=20)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    ws = await service.websocket({"token": token})
    await ws.recv_type("connected")
    warning = await ws.recv_type("token_expiring")
    assert warning["expiresAt"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(expires)))
    fresh = service.token(sub=11, ttl=3600)
    await ws.send({"type": "auth", "token": fresh})
    fresh_expires = jwt.decode(fresh, options={"verify_signature": False})["exp"]
    ok = await ws.recv_type("auth_ok")
    assert ok["expiresAt"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(fresh_expires)))
    await ws.send({"type": "ping", "nonce": "alive"})
    assert (await ws.recv_type("pong"))["nonce"] == "alive"
    await ws.close()
