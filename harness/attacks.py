"""Raw request heads for the HTTP-edge attacks: one corpus for tests/test_abuse_http.py and
bench/abuse_http.py, so the figures and the tests try the same URIs.
"""

from __future__ import annotations


def get(path: str, port: int, method: str = "GET", extra: str = "") -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n"


def upgrade(port: int, origin: str | None = None) -> str:
    lines = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    lines += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    if origin:
        lines += f"Origin: {origin}\r\n"
    return lines


def tricky_requests(port: int, token: str, ticket: str) -> list[str]:
    """Request heads that put a token or ticket where a log line might show it."""
    return [
        get(f"/ws?a#&token={token}", port, extra=upgrade(port)),
        get(f"/ws?a#&token={token}", port),
        get(f"/index.html%00?token={token}", port),
        get(f"/a/%00/b?ticket={ticket}", port),
        get(f"/events?%74oken={token}", port),
        get(f"/events?token=bad&token={token}", port),
        get(f"/events?a=1;token={token}", port),
        get(f"/nothing-here?token={token}", port),
        get(f"/api/nothing?token={token}", port),
        get(f"/api/tasks/abc?token={token}", port),
        get(f"/metrics?token={token}", port, "POST"),
        get(f"/healthz?ticket={ticket}", port, "BREW"),
        get(f"http://127.0.0.1:{port}/events?token={token}#x", port),
        get("/api/tasks", port, extra=f"Authorization: Bearer {token}\x01\r\n"),
        get("/api/nothing", port, extra=f"Cookie: access_token={token}\r\n"),
        get(f"/api/tasks?ticket={ticket}", port, "DELETE"),
    ]
