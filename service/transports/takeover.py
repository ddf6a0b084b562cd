"""The one place that reaches into Tornado's private state.

- Taking a socket back: Tornado answers the HTTP request (routing, auth, errors); `take_over`
  then ends its part and the transports serve the socket with a lean asyncio protocol.
  `IOStream` has no public way to give its socket back together with what it read ahead.
- The edge server (`handlers/edge.py`) serves accepted streams itself: it builds Tornado's
  per-connection context (`RequestContext`) and registers the connection the way
  `HTTPServer.handle_stream` does (`register_connection`), so `close_all_connections` closes it.

This module names every private attribute used (`PRIVATE_ATTRIBUTES`, `PRIVATE_NAMES`) and the
Tornado versions they were checked against (`TESTED_TORNADO`, the same range as
requirements.txt). tests/unit/transports/test_takeover.py checks them first, and that no other
module names a Tornado private, so a Tornado upgrade that renames them fails there, loudly, not
in production.
"""

from __future__ import annotations

import socket

import tornado
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.iostream import IOStream
from tornado.web import RequestHandler

# Checked with Tornado 6.5.10 and 6.6.1 (tests/unit/transports/test_takeover.py and the stream tests);
# the pin in requirements.txt.
TESTED_TORNADO = ((6, 5), (6, 7))  # lower bound included, upper bound excluded
# IOStream's private attributes read here: (name, what it holds).
PRIVATE_ATTRIBUTES = (
    ("_write_buffer", "bytes queued but not yet sent; its len() is 0 once flushed"),
    ("_read_buffer", "a bytearray of bytes read ahead of the request handler"),
    ("_read_buffer_size", "how many bytes at the start of _read_buffer are unread"),
)
# The edge server's private names: (name, what it is).
PRIVATE_NAMES = (
    ("tornado.httpserver._HTTPRequestContext", "per-connection remote_ip and protocol, what xheaders rewrites"),
    ("HTTPServer._connections", "the set of live HTTP1ServerConnections that close_all_connections closes"),
)

RequestContext = _HTTPRequestContext  # the per-connection context an HTTP1ServerConnection is given


def register_connection(server: HTTPServer, connection: HTTP1ServerConnection) -> None:
    """Count a connection the server serves as its own, as `HTTPServer.handle_stream` does:
    `close_all_connections` (the stop's first step) then closes it."""
    server._connections.add(connection)


def tornado_tested() -> bool:
    """Whether the installed Tornado is in the range these attributes were checked with."""
    version = tuple(int(part) for part in tornado.version.split(".")[:2])
    low, high = TESTED_TORNADO
    return low <= version < high


def take_over(handler: RequestHandler) -> tuple[socket.socket, bytes]:
    """End Tornado's part in a request: its socket, and any bytes read past the request head.

    Tornado stops reading and writing the connection and forgets it; the handler, the
    request and the IOStream become garbage.

    Raises:
        RuntimeError: Tornado still holds unsent bytes of this response (they would be lost).
    """
    stream = handler.detach()
    return release(stream)


def release(stream: IOStream) -> tuple[socket.socket, bytes]:
    """Take the socket and the unread bytes out of a detached `IOStream`."""
    if len(stream._write_buffer):
        raise RuntimeError("take_over before Tornado flushed its writes")
    sock = stream.socket
    leftover = bytes(stream._read_buffer[: stream._read_buffer_size])
    stream.io_loop.remove_handler(sock)
    stream.socket = None  # type: ignore[assignment]
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, leftover
