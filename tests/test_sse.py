"""The SSE transport: headers, retry, greeting, heartbeat, filters, auth failures, resume."""

from __future__ import annotations

import pytest

from tests.clients import Service


@pytest.mark.gen_test(timeout=30)
async def test_sse_sends_headers_retry_and_connected_at_once(service: Service) -> None:
    """Anti-buffering headers, then `retry:` and `connected` without waiting for an event."""
    sse = await service.sse({"token": service.token(sub=8, name="فاطمة")})
    assert sse.status == 200
    headers = sse.response_headers
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache, no-transform"
    assert headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers and "content-length" not in headers
    assert await sse.next_block() == f"retry: {service.settings.sse_retry_ms}"
    hello = await sse.next_event()
    assert hello.event == "connected"
    data = hello.json()
    assert data["transport"] == "sse" and data["userId"] == 8 and data["userName"] == "فاطمة"
    assert data["resumed"] is False
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_sse_heartbeat_comment_arrives_every_interval(start_service) -> None:  # type: ignore[no-untyped-def]
    """An idle stream gets `: heartbeat` comments."""
    service = await start_service(heartbeat_seconds=0.2)
    sse = await service.sse({"token": service.token()})
    await sse.next_event()
    assert await sse.next_block(seconds=5) == ": heartbeat"
    assert await sse.next_block(seconds=5) == ": heartbeat"
    sse.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("query", "reason"),
    [({}, "missing token"), ({"token": "x.y.z"}, "invalid token"), ({"ticket": "nope"}, "invalid ticket")],
)
async def test_sse_auth_failure_is_401_json(service: Service, query: dict[str, str], reason: str) -> None:
    """No stream without credentials: 401 with a JSON reason."""
    sse = await service.sse(query)
    assert sse.status == 401
    assert sse.body_json == {"error": "unauthorized", "reason": reason}
    assert service.ctx.metrics.auth_failures.labels("sse", reason)._value.get() >= 1


@pytest.mark.gen_test(timeout=30)
async def test_sse_expired_token_is_401(service: Service) -> None:
    """An expired token is refused with `token expired`."""
    sse = await service.sse({"token": service.token(ttl=-120)})
    assert (sse.status, sse.body_json["reason"]) == (401, "token expired")


@pytest.mark.gen_test(timeout=30)
async def test_sse_bearer_header_authenticates(service: Service) -> None:
    """The Authorization header is the first token source."""
    sse = await service.sse(headers={"Authorization": f"Bearer {service.token(sub=12)}"})
    assert (await sse.next_event()).json()["userId"] == 12
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_sse_events_filter(service: Service) -> None:
    """`events=` limits the stream to those types."""
    publisher = service.token(sub=2, roles=("publisher",))
    sse = await service.sse({"token": service.token(), "events": "beta,gamma"})
    await sse.next_event()
    for kind in ("alpha", "beta", "delta", "gamma"):
        await service.publish(publisher, {"type": kind})
    assert (await sse.next_event()).event == "beta"
    assert (await sse.next_event()).event == "gamma"
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_sse_too_many_connections_is_429(start_service) -> None:  # type: ignore[no-untyped-def]
    """Past MAX_CONNECTIONS_PER_USER the stream is refused with 429."""
    service = await start_service(max_connections_per_user=1)
    first = await service.sse({"token": service.token(sub=3)})
    await first.next_event()
    second = await service.sse({"token": service.token(sub=3)})
    assert second.status == 429 and second.body_json["error"] == "too_many_connections"
    first.close()


@pytest.mark.gen_test(timeout=30)
async def test_sse_token_expiry_sends_close_event_and_ends(service: Service) -> None:
    """At expiry: `token_expiring` first, then `event: close` with 4401, then the stream ends."""
    sse = await service.sse({"token": service.token(ttl=2)})
    await sse.next_of("connected")
    assert (await sse.next_event()).event == "token_expiring"
    close = await sse.next_event(seconds=10)
    assert close.event == "close" and close.json() == {"code": 4401, "reason": "token expired"}
    await sse.until_end()
    assert sse.ended
