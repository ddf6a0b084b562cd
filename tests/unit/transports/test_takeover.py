"""The Tornado internals `service.transports.takeover` relies on: checked here, by name, so a
Tornado upgrade that changes them fails this file (and not a live connection); and no other
module of the service names one.

If one of these fails, read takeover.py's PRIVATE_ATTRIBUTES and PRIVATE_NAMES against the new
Tornado, fix `release` or `register_connection`, and move TESTED_TORNADO and the pin in
requirements.txt together.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import tornado
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from service.transports.takeover import (
    PRIVATE_ATTRIBUTES,
    PRIVATE_NAMES,
    TESTED_TORNADO,
    take_over,
    tornado_tested,
)

ROOT = Path(__file__).resolve().parents[3]
REQUIREMENTS = ROOT / "requirements.txt"
TAKEOVER = ROOT / "service" / "transports" / "takeover.py"
# A private Tornado name in code: `from tornado... import _x`, `tornado.x._y`, or one of the
# attributes listed in takeover.py read off an object.
PRIVATE_USE = re.compile(
    r"from tornado[\w.]* import [^\n]*\b_[A-Za-z]"
    r"|tornado(?:\.\w+)*\._[A-Za-z]"
    r"|\._(?:connections|write_buffer|read_buffer)\b"
)


def test_installed_tornado_is_in_the_tested_range() -> None:
    """Tornado outside TESTED_TORNADO: the private attributes were never checked against it."""
    assert tornado_tested(), f"Tornado {tornado.version} is outside the tested range {TESTED_TORNADO}"


def test_requirements_pin_the_tested_range() -> None:
    """requirements.txt allows exactly the Tornado versions takeover.py was tested with."""
    pin = re.search(r"^tornado>=(\d+)\.(\d+),<(\d+)\.(\d+)", REQUIREMENTS.read_text(), re.MULTILINE)
    assert pin is not None, "requirements.txt must pin tornado>=X.Y,<X.Z"
    low, high = (int(pin[1]), int(pin[2])), (int(pin[3]), int(pin[4]))
    assert (low, high) == TESTED_TORNADO


def test_iostream_has_the_private_attributes_with_their_types() -> None:
    """`_write_buffer` has a length (0 when flushed), `_read_buffer` is a bytearray, `_read_buffer_size` an int."""
    left, right = socket.socketpair()
    stream = IOStream(left)
    try:
        missing = [name for name, _ in PRIVATE_ATTRIBUTES if not hasattr(stream, name)]
        assert missing == [], f"IOStream lost {missing}"
        assert len(stream._write_buffer) == 0
        assert isinstance(stream._read_buffer, bytearray)
        assert isinstance(stream._read_buffer_size, int) and stream._read_buffer_size == 0
    finally:
        stream.close()
        right.close()


def test_the_edge_servers_private_names_exist() -> None:
    """handlers.edge builds Tornado's per-connection context and registers connections itself."""
    left, right = socket.socketpair()
    stream = IOStream(left)
    try:
        context = _HTTPRequestContext(stream, ("127.0.0.1", 1), "http")
        assert isinstance(context.remote_ip, str) and context.protocol == "http"
        assert isinstance(HTTPServer(Application())._connections, set)
        assert [name for name, _ in PRIVATE_NAMES] == [
            "tornado.httpserver._HTTPRequestContext",
            "HTTPServer._connections",
        ]
    finally:
        stream.close()
        right.close()


class TakeOver(RequestHandler):
    """Takes the socket over in the middle of a request and hands it to the test."""

    def initialize(self, taken: asyncio.Future[tuple[socket.socket, bytes]]) -> None:
        self.taken = taken

    def get(self) -> None:
        self.taken.set_result(take_over(self))


@pytest.mark.gen_test(timeout=10)
async def test_take_over_returns_the_socket_and_the_bytes_read_past_the_request() -> None:
    """Bytes the client sent right behind the request head come back as `leftover`, and the
    socket is ours: what we write reaches the client and Tornado writes nothing."""
    taken: asyncio.Future[tuple[socket.socket, bytes]] = asyncio.get_running_loop().create_future()
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/", TakeOver, {"taken": taken})]))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbytes after the head")
        sock, leftover = await asyncio.wait_for(taken, 5)
        assert leftover == b"bytes after the head"
        sock.sendall(b"ours")
        sock.close()
        assert await asyncio.wait_for(reader.read(), 5) == b"ours"
    finally:
        writer.close()
        server.stop()
        await server.close_all_connections()


def test_take_over_refuses_while_tornado_holds_unsent_bytes() -> None:
    """A handler that took over before its writes were flushed would lose them: RuntimeError."""

    class Unflushed:
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def detach(self) -> Any:
            return self.stream

    left, right = socket.socketpair()
    stream = IOStream(left)
    stream._write_buffer.append(b"not yet sent")
    try:
        with pytest.raises(RuntimeError):
            take_over(Unflushed(stream))  # type: ignore[arg-type]
    finally:
        stream.close()
        right.close()


def test_no_other_module_names_a_tornado_private() -> None:
    """Every reach into Tornado's internals goes through takeover.py, where the checks above
    cover it: a new one elsewhere fails here first."""
    offenders = []
    for package in ("service", "handlers", "metrics"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == TAKEOVER:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE_USE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
    assert PRIVATE_USE.search("from tornado.httpserver import HTTPServer, _HTTPRequestContext")
    assert PRIVATE_USE.search("server._connections.add(conn)")
