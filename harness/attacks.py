"""Raw request heads and connections for the HTTP-edge attacks: one corpus for the tests
(tests/integration/test_abuse_http.py, tests/integration/test_accept.py) and bench/abuse_http.py and
bench/fd_exhaustion.py, so the figures and the tests try the same things.
"""

from __future__ import annotations

import socket


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


SLOW_BODY_LENGTH = 100_000


def slow_body(port: int, source: str = "127.0.0.1", *, expect_continue: bool = False) -> socket.socket:
    """A connection from `source` (any 127.0.0.0/8 address) that sends a complete POST head and
    the first byte of a SLOW_BODY_LENGTH body, and nothing more (the caller may drip the rest).

    With `expect_continue`, the head asks for `100 Continue`, which Tornado sends once it has
    read the head: a caller can wait for it to know the server holds the connection.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        extra = "Expect: 100-continue\r\n" if expect_continue else ""
        head = f"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {SLOW_BODY_LENGTH}\r\n{extra}\r\n"
        sock.sendall(head.encode() + (b"" if expect_continue else b"{"))
    except OSError:
        sock.close()
        raise
    return sock
