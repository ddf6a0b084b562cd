"""Attacks on the HTTP edge, each a test that failed before the fix:
metric cardinality from client-chosen methods, tokens in logs, static-path 500s, slow and
piled-up request heads, spoofed forwarded-for, same-host-other-scheme origins, headers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import re
import string
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from handlers.route_table import ROUTES
from harness.attacks import get, tricky_requests, upgrade
from harness.clients import Service, wait_bound
from harness.processes import SECRET, as_service, running, shared_env
from metrics.logs import HTTP_METHODS, redact, scrub
from service.core.config import load_settings
from service.core.errors import ConfigError

TOKEN_STAND_IN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


async def raw_request(port: int, head: str, *, seconds: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request head (`Connection: close`), return status, headers and body
    (no body for an accepted WebSocket or event stream: those stay open; closed here)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1"))
        head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_bound(seconds))
        status_line, *lines = head_bytes.decode("latin-1").strip().split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        streaming = status == 101 or headers.get("content-type", "").startswith("text/event-stream")
        length = headers.get("content-length")
        if streaming:
            body = b""
        elif length is not None:  # an upgrade request keeps the connection open after a refusal
            body = await asyncio.wait_for(reader.readexactly(int(length)), wait_bound(seconds))
        else:
            body = await asyncio.wait_for(reader.read(), wait_bound(seconds))
    finally:
        writer.close()
    return status, headers, body


# -- 2. metric cardinality -------------------------------------------------------------


def duration_series(exposition: str) -> set[tuple[str, str, str]]:
    pattern = r'realtime_http_request_duration_seconds_count\{code="([^"]*)",handler="([^"]*)",method="([^"]*)"\}'
    return {(h, m, c) for c, h, m in re.findall(pattern, exposition)}


@pytest.mark.gen_test(timeout=60)
async def test_random_methods_and_paths_do_not_add_metric_series(service: Service) -> None:
    """300 requests with random methods and paths leave the duration labels in closed sets."""
    rng = random.Random(12)
    handlers = {route.handler.__name__ for route in ROUTES} | {"NotFoundHandler"}
    handlers |= {"NoDashboardHandler", "DashboardHandler", "DashboardIndexHandler", "other"}
    for _ in range(300):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 40)))
        path = "/" + rng.choice(["api/", "api/tasks/", "", "ws", "metrics/"]) + "".join(rng.choices("abcxyz09", k=8))
        await raw_request(service.port, get(path, service.port, method))
    response = await service.request("GET", "/metrics")
    series = duration_series(response.body.decode())
    assert series, "no duration series at all"
    assert {method for _, method, _ in series} <= HTTP_METHODS | {"other"}
    assert {handler for handler, _, _ in series} <= handlers
    assert len(series) < 40, sorted(series)


# -- 5. credentials in logs ------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        f"/ws?a#&token={TOKEN_STAND_IN}",
        f"/ws?a#token={TOKEN_STAND_IN}",
        f"/events?%74oken={TOKEN_STAND_IN}",
        f"/events?TOKEN={TOKEN_STAND_IN}",
        f"/events?token=x&token={TOKEN_STAND_IN}",
        f"/events?a=1;token={TOKEN_STAND_IN}",
        f"/events?ticket={TOKEN_STAND_IN}&x=1",
        f"/events?access%5Ftoken={TOKEN_STAND_IN}",
        f"/index.html%00?token={TOKEN_STAND_IN}",
        f"/ws?+token+={TOKEN_STAND_IN}",
    ],
)
def test_redact_hides_every_way_tornado_reads_a_token(uri: str) -> None:
    """The redactor reads the query past `#`, decodes names, and replaces every occurrence."""
    assert TOKEN_STAND_IN not in redact(uri)


def test_scrub_hides_credentials_in_any_log_text() -> None:
    """Text that never went through `redact` (an error message, a header) is scrubbed too."""
    line = f"Malformed HTTP message: Invalid header value 'Bearer {TOKEN_STAND_IN[:20]}x' cookie access_token=abc123"
    assert TOKEN_STAND_IN[:20] not in scrub(line)
    assert "abc123" not in scrub(line)
    assert TOKEN_STAND_IN not in scrub(f"GET /{TOKEN_STAND_IN} (1.2.3.4)")


def test_no_log_line_of_a_real_service_carries_the_token(tmp_path: Path, mongo_uri: str) -> None:
    """A service at DEBUG answers a corpus of tricky URIs without a 500 or a credential in its log."""
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><html><head></head><body></body></html>")
    env = {**shared_env(mongo_uri), "LOG_LEVEL": "DEBUG", "WEB_DIR": str(web)}
    with running(tmp_path / "svc", env) as process:
        remote = as_service(process)
        token = remote.token(sub=7, roles=("user",))
        request = urllib.request.Request(
            process.url + "/api/realtime/ticket", method="POST", headers={"Authorization": f"Bearer {token}"}, data=b""
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            ticket = json.loads(response.read())["ticket"]

        async def drive() -> list[int]:
            return [(await raw_request(process.port, head))[0] for head in tricky_requests(process.port, token, ticket)]

        statuses = asyncio.run(drive())
        process.stop()
        log = process.output()
    assert all(status < 500 for status in statuses), statuses
    assert statuses[0] == 101  # the `#` form does authenticate, so it must be redacted
    assert "DEBUG" in log and "/index.html%00" in log  # the requests were logged at all
    leaking = [line for line in log.splitlines() if token in line or ticket in line or SECRET in line]
    assert leaking == []


# -- 5. static paths never 500 ---------------------------------------------------------


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<!doctype html><html><head><title>t</title></head><body></body></html>")
    (tmp_path / "app.js").write_text("console.log(1)")
    return tmp_path


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", ["/index.html%00", "/%00", "/a/%00/b", "/app.js%00.map", "/" + "a" * 5000])
async def test_static_paths_a_client_sends_answer_4xx(start_service: Any, web_dir: Path, path: str) -> None:
    """A NUL or over-long name in a dashboard path is the client's error, not a 500."""
    service = await start_service(web_dir=web_dir)
    status, _, _ = await raw_request(service.port, get(path, service.port))
    assert 400 <= status < 500


# -- 7. slow heads, per-address cap, forwarded headers, origin, headers ----------------


@pytest.mark.gen_test(timeout=30)
async def test_a_head_that_never_finishes_is_closed(start_service: Any) -> None:
    """A connection that sends half a request head is closed after HEAD_TIMEOUT_SECONDS."""
    service = await start_service(head_timeout_seconds=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        assert await asyncio.wait_for(reader.read(), wait_bound(10)) == b""
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_connections_without_a_request_are_capped_per_address(start_service: Any) -> None:
    """Beyond MAX_PENDING_PER_ADDRESS silent connections from one address, new ones are closed at once."""
    service = await start_service(max_pending_per_address=20)
    sockets = [await asyncio.open_connection("127.0.0.1", service.port) for _ in range(60)]
    try:

        async def closed(reader: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(reader.read(1), 0.2 * wait_bound(5)) == b""
            except TimeoutError:
                return False
            except ConnectionError:
                return True

        results = await asyncio.gather(*(closed(reader) for reader, _ in sockets))
        assert results.count(True) == 40
        # One that sends its head is no longer pending: a new connection is served again.
        held = next(writer for (_, writer), was_closed in zip(sockets, results, strict=True) if not was_closed)
        held.write(get("/healthz", service.port).encode())
        await held.drain()
        await asyncio.sleep(0)
        status = None
        for _ in range(50):  # until the server has read that head
            try:
                status, _, _ = await raw_request(service.port, get("/healthz", service.port), seconds=1)
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.05)
        assert status == 200
    finally:
        for _, writer in sockets:
            writer.close()


SLOW_HEAD = "POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n"


@pytest.mark.gen_test(timeout=60)
async def test_slow_bodies_are_capped_per_address(start_service: Any) -> None:
    """Connections that sent a head but are still sending the body count toward MAX_PENDING_PER_ADDRESS."""
    service = await start_service(max_pending_per_address=20)
    sockets = []
    answers = []
    try:
        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            sockets.append(writer)
            writer.write(SLOW_HEAD.encode())
            try:  # `100 Continue` once the server has read the head, or the close
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_bound(10))
            except (asyncio.IncompleteReadError, ConnectionError):
                answer = b""
            answers.append(answer)
            if answer:
                writer.write(b"{")  # the body's first byte; the rest never comes
    finally:
        for writer in sockets:
            writer.close()
    assert answers[:20] == [b"HTTP/1.1 100 (Continue)\r\n\r\n"] * 20
    assert answers[20:] == [b""] * 10


@pytest.mark.gen_test(timeout=30)
async def test_a_body_that_never_finishes_is_closed(start_service: Any) -> None:
    """A connection that sends a head and part of its body is closed after BODY_TIMEOUT_SECONDS."""
    service = await start_service(body_timeout_seconds=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(SLOW_HEAD.replace("Expect: 100-continue\r\n", "").encode() + b"{")
    try:
        assert await asyncio.wait_for(reader.read(), wait_bound(10)) == b""
    finally:
        writer.close()


async def remote_seen_by_admin(service: Service, headers: dict[str, str]) -> str:
    stream = await service.sse({"token": service.token(sub=5)}, headers=headers)
    try:
        admin = service.token(sub=1, roles=("user", "admin"))
        response = await service.request("GET", "/api/connections", token=admin)
        connections = json.loads(response.body)
        listed = connections["connections"] if isinstance(connections, dict) else connections
        return str(next(c for c in listed if str(c.get("userId", c.get("user"))) == "5")["remote"])
    finally:
        stream.close()


SPOOFED = {"X-Forwarded-For": "6.6.6.6", "X-Real-Ip": "6.6.6.7", "X-Forwarded-Proto": "https"}


@pytest.mark.gen_test(timeout=30)
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(start_service: Any) -> None:
    """Without TRUSTED_PROXIES, X-Forwarded-For / X-Real-Ip do not change the address an admin sees."""
    service = await start_service()
    assert await remote_seen_by_admin(service, SPOOFED) == "127.0.0.1"


@pytest.mark.gen_test(timeout=30)
async def test_forwarded_for_from_a_trusted_proxy_names_the_client(start_service: Any) -> None:
    """From a TRUSTED_PROXIES peer, the right-most untrusted X-Forwarded-For hop is the client."""
    service = await start_service(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    headers = {"X-Forwarded-For": "1.2.3.4, 6.6.6.6, 127.0.0.2"}
    assert await remote_seen_by_admin(service, headers) == "6.6.6.6"


@pytest.mark.gen_test(timeout=30)
async def test_real_ip_behind_a_forwarded_for_is_not_believed(start_service: Any) -> None:
    """A client's own X-Real-Ip passed through a trusted proxy does not beat the X-Forwarded-For chain."""
    service = await start_service(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    headers = {"X-Forwarded-For": "6.6.6.6", "X-Real-Ip": "1.1.1.1"}
    assert await remote_seen_by_admin(service, headers) == "6.6.6.6"


def test_trusted_proxies_are_parsed_as_cidrs(tmp_path: Path) -> None:
    """TRUSTED_PROXIES takes addresses and CIDRs (IPv4-mapped IPv6 peers match their IPv4 network)."""
    settings = load_settings({"JWT_SECRET": SECRET, "DATA_DIR": str(tmp_path), "TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert settings.trusted_proxy("10.2.3.4") and settings.trusted_proxy("::ffff:10.0.0.1")
    assert settings.trusted_proxy("::1")
    assert not settings.trusted_proxy("127.0.0.1") and not settings.trusted_proxy("unix")
    assert not load_settings({"JWT_SECRET": SECRET, "DATA_DIR": str(tmp_path)}).trusted_proxy("10.2.3.4")


@pytest.mark.parametrize(
    ("name", "value"),
    [("TRUSTED_PROXIES", "10.0.0.0/33"), ("TRUSTED_PROXIES", "ingress"), ("DASHBOARD_SERVICE_URL", "evil.example")],
)
def test_bad_edge_settings_stop_the_service(tmp_path: Path, name: str, value: str) -> None:
    """A malformed TRUSTED_PROXIES or DASHBOARD_SERVICE_URL is a configuration error naming the variable."""
    with pytest.raises(ConfigError, match=name):
        load_settings({"JWT_SECRET": SECRET, "DATA_DIR": str(tmp_path), name: value})


@pytest.mark.gen_test(timeout=30)
async def test_same_host_with_another_scheme_is_not_same_origin(start_service: Any) -> None:
    """A WebSocket from `https://host` to the service at `http://host` is refused 403."""
    service = await start_service(allowed_origins=())
    host = f"127.0.0.1:{service.port}"
    status, _, _ = await raw_request(
        service.port, get("/ws", service.port, extra=upgrade(service.port, f"https://{host}"))
    )
    assert status == 403


@pytest.mark.gen_test(timeout=30)
async def test_same_origin_websocket_is_still_accepted(start_service: Any) -> None:
    """The page's own scheme, host and port pass the Origin check."""
    service = await start_service(allowed_origins=())
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        origin = f"http://127.0.0.1:{service.port}"
        writer.write(get("/ws", service.port, extra=upgrade(service.port, origin)).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_bound(10))
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 101")
    assert b"server:" not in head.lower()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", ["/", "/index.html", "/app.js", "/missing.js", "/healthz", "/api/nothing", "/events"])
async def test_responses_carry_security_headers_and_no_server_version(
    start_service: Any, web_dir: Path, path: str
) -> None:
    """Dashboard, API, error and SSE heads: nosniff, DENY framing, no Referer, no `Server` version."""
    service = await start_service(web_dir=web_dir)
    _, headers, _ = await raw_request(service.port, get(path, service.port))
    assert "tornado" not in headers.get("server", "").lower()
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


@pytest.mark.gen_test(timeout=30)
async def test_an_accepted_event_stream_head_names_no_server(service: Service) -> None:
    """The SSE response head (sent before the socket is taken over) has the same headers."""
    stream = await service.sse({"token": service.token(sub=3)})
    try:
        assert stream.status == 200
        assert "tornado" not in stream.response_headers.get("server", "").lower()
        assert stream.response_headers["x-content-type-options"] == "nosniff"
    finally:
        stream.close()


@pytest.mark.gen_test(timeout=30)
async def test_dashboard_csp_allows_only_its_origin_and_the_configured_service(
    start_service: Any, web_dir: Path
) -> None:
    """The page's CSP connects to 'self' and DASHBOARD_SERVICE_URL, which the page reads from a meta tag."""
    service = await start_service(web_dir=web_dir, dashboard_service_url="https://events.example/rt")
    _, headers, body = await raw_request(service.port, get("/", service.port))
    connect = re.search(r"connect-src ([^;]*)", headers["content-security-policy"])
    assert connect is not None
    assert connect.group(1).split() == ["'self'", "https://events.example", "wss://events.example"]
    assert b'<meta name="realtime-service-url" content="https://events.example/rt" />' in body
    _, plain, _ = await raw_request(service.port, get("/app.js", service.port))
    assert "script-src 'self'" in plain["content-security-policy"]
