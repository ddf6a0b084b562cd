"""The SSE transport: headers, retry, greeting, heartbeat, filters, auth failures, resume."""

from __future__ import annotations

import asyncio

import pytest

from harness.clients import Service, wait_bound
from tests.conftest import StartService


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
async def test_sse_heartbeat_comment_arrives_every_interval(start_service: StartService) -> None:
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
    assert service.ctx.metrics.sample("realtime_auth_failures_total", transport="sse", reason=reason) >= 1


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
async def test_sse_too_many_connections_is_429(start_service: StartService) -> None:
    """Past MAX_CONNECTIONS_PER_USER the stream is refused with 429."""
    service = await start_service(max_connections_per_user=1)
    first = await service.sse({"token": service.token(sub=3)})
    await first.next_event()
    second = await service.sse({"token": service.token(sub=3)})
    assert second.status == 429 and second.body_json["error"] == "too_many_connections"
    first.close()


@pytest.mark.gen_test(timeout=30)
async def test_sse_token_expiry_sends_close_event_and_ends(service: Service) -> None:
    """At expiry (exp + the 30 s leeway): `token_expiring` first, then `event: close` with 4401, then the end."""
    sse = await service.sse({"token": service.token(ttl=-28)})
    await sse.next_of("connected")
    assert (await sse.next_event()).event == "token_expiring"
    close = await sse.next_event(seconds=10)
    assert close.event == "close" and close.json() == {"code": 4401, "reason": "token expired"}
    await sse.until_end()
    assert sse.ended


async def raw_sse(service: Service, version: str) -> tuple[bytes, bytes]:
    """The head and the first body bytes of a stream requested with this HTTP version."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        request = f"GET /events?token={service.token()} {version}\r\nHost: 127.0.0.1\r\n\r\n"
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_bound(10))
        body = b""
        while b"event: connected" not in body:
            body += await asyncio.wait_for(reader.read(4096), wait_bound(10))
        return head, body
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_http_1_1_stream_is_chunked_with_the_session_head(service: Service) -> None:
    """The session's own head: 200, the SSE and security headers, no Server, chunked framing."""
    head, body = await raw_sse(service, "HTTP/1.1")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    assert headers["transfer-encoding"] == "chunked" and "server" not in headers
    assert headers["x-frame-options"] == "DENY" and headers["content-security-policy"].startswith("default-src 'none'")
    assert body.startswith(b"d\r\nretry: 3000\n\n\r\n")


@pytest.mark.gen_test(timeout=30)
async def test_http_1_0_stream_is_unframed_and_ends_by_closing(service: Service) -> None:
    """An HTTP/1.0 client gets the blocks bare (no chunks it could not read)."""
    head, body = await raw_sse(service, "HTTP/1.0")
    assert b"transfer-encoding" not in head.lower()
    assert body.startswith(b"retry: 3000\n\nevent: connected\ndata: {")
