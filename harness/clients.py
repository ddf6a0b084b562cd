"""Real clients for tests: REST over HTTP, WebSocket (python-websockets), and a raw SSE
reader that sees the exact bytes and headers the server sends.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from realtime_client.sse import SseEvent, parse_block
from service.app.auth import issue_token
from service.core.config import Settings


class Condition(Protocol):
    """What `eventually` and `wait_until` poll: called with no argument, true when done.

    A Protocol rather than `Callable[[], object]` because code in a loop binds its variables as
    lambda defaults (`lambda target=target: ...`), and mypy infers those only against a Protocol.
    """

    def __call__(self) -> object: ...


def wait_bound(seconds: float) -> float:
    return seconds * float(os.environ.get("TEST_TIMEOUT_FACTOR", "1"))


@dataclass
class Service:
    """A service started by a test, with helpers to talk to it."""

    server: Any
    settings: Settings
    port: int = 0

    def __post_init__(self) -> None:
        self.port = self.server.port

    @property
    def ctx(self) -> Any:
        return self.server.ctx

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(
        self,
        sub: int | str = 1,
        name: str = "محمد حسن",
        roles: tuple[str, ...] = ("user",),
        ttl: float = 3600,
        **extra: Any,
    ) -> str:
        return issue_token(self.settings, sub=sub, name=name, roles=roles, ttl_seconds=ttl, extra=extra or None)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> HTTPResponse:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if payload is None and method in ("POST", "PATCH", "PUT"):
            payload = b""
        return await AsyncHTTPClient().fetch(
            self.http + path,
            method=method,
            body=payload,
            headers=all_headers,
            raise_error=False,
            request_timeout=wait_bound(20),
            allow_nonstandard_methods=True,
        )

    async def publish(self, token: str, event: dict[str, Any]) -> None:
        response = await self.request("POST", "/api/events", event, token=token)
        assert response.code == 202, response.body

    async def websocket(self, query: dict[str, str] | None = None, **kwargs: Any) -> WsClient:
        url = f"ws://127.0.0.1:{self.port}/ws"
        if query:
            url += "?" + urlencode(query)
        conn = await connect(url, open_timeout=wait_bound(10), max_size=None, **kwargs)
        return WsClient(conn)

    async def sse(self, query: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> SseClient:
        client = SseClient(self.port, "/events" + ("?" + urlencode(query) if query else ""), headers or {})
        await client.open()
        return client


@dataclass
class WsClient:
    conn: ClientConnection

    async def recv(self, seconds: float = 5) -> dict[str, Any]:
        text = await asyncio.wait_for(self.conn.recv(), wait_bound(seconds))
        return json.loads(text)  # type: ignore[no-any-return]

    async def recv_type(self, kind: str, seconds: float = 5) -> dict[str, Any]:
        """The next message of a type, skipping others."""
        while True:
            message = await self.recv(seconds)
            if message.get("type") == kind:
                return message

    async def send(self, payload: Any) -> None:
        await self.conn.send(payload if isinstance(payload, str | bytes) else json.dumps(payload))

    async def closed(self, seconds: float = 5) -> tuple[int | None, str]:
        """Wait for the server to close; returns (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.conn.recv(), wait_bound(seconds))
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return None, ""
            return exc.rcvd.code, exc.rcvd.reason

    async def close(self) -> None:
        await self.conn.close()


@dataclass
class SseClient:
    """A minimal HTTP/1.1 SSE client on a raw socket: exact bytes, chunked decoding."""

    port: int
    path: str
    headers: dict[str, str]
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    raw: bytearray = field(default_factory=bytearray)  # the de-chunked body so far
    body_json: Any = None
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _parsed_to: int = 0
    ended: bool = False

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        lines = [f"GET {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), wait_bound(10))
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                self.response_headers[name.strip().lower()] = value.strip()
        if self.status != 200:
            length = int(self.response_headers.get("content-length", "0"))
            body = await self._reader.readexactly(length) if length else b""
            self.body_json = json.loads(body) if body else None
            self.close()

    async def _read_more(self) -> bool:
        assert self._reader is not None
        if self.response_headers.get("transfer-encoding") == "chunked":
            size_line = await self._reader.readline()
            if not size_line:
                self.ended = True
                return False
            size = int(size_line.strip(), 16)
            data = await self._reader.readexactly(size + 2)
            if size == 0:
                self.ended = True
                return False
            self.raw += data[:-2]
        else:
            data = await self._reader.read(65536)
            if not data:
                self.ended = True
                return False
            self.raw += data
        return True

    async def next_block(self, seconds: float = 5) -> str:
        """The next complete block (events, comments, retry) as text."""

        async def read() -> str:
            while True:
                end = self.raw.find(b"\n\n", self._parsed_to)
                if end >= 0:
                    block = self.raw[self._parsed_to : end].decode("utf-8")
                    self._parsed_to = end + 2
                    return block
                if not await self._read_more():
                    raise EOFError("stream ended")

        return await asyncio.wait_for(read(), wait_bound(seconds))

    async def next_event(self, seconds: float = 5) -> SseEvent:
        """The next event block, skipping comments and retry fields."""
        while True:
            block = await self.next_block(seconds)
            event = parse_sse_block(block)
            if event is not None:
                return event

    async def next_of(self, kind: str, seconds: float = 5) -> SseEvent:
        while True:
            event = await self.next_event(seconds)
            if event.event == kind:
                return event

    async def until_end(self, seconds: float = 5) -> None:
        async def drain() -> None:
            while await self._read_more():
                pass

        try:
            await asyncio.wait_for(drain(), wait_bound(seconds))
        finally:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def parse_sse_block(block: str) -> SseEvent | None:
    """One block of a stream, parsed as `service tail` parses it."""
    return parse_block(block)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked frame as a server sends it: (opcode, payload)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(length)


class RawWebSocket:
    """A WebSocket client that writes frames byte by byte, to test what well-behaved
    libraries never send: unmasked frames, fragments, bad UTF-8, odd close frames.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def connect(
        cls, port: int, path: str, *, headers: dict[str, str] | None = None, first_frames: bytes = b""
    ) -> RawWebSocket:
        """Upgrade; `first_frames` go out in the same write as the request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + first_frames)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_bound(10))
        return cls(reader, writer, head)

    @staticmethod
    def frame(payload: bytes, opcode: int = 0x1, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
        first = (0x80 if fin else 0) | rsv | opcode
        mask = os.urandom(4) if masked else b""
        length = len(payload)
        if length < 126:
            header = bytes([first, (0x80 if masked else 0) | length])
        else:
            header = bytes([first, (0x80 if masked else 0) | 126]) + length.to_bytes(2, "big")
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
        return header + mask + body

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv_frame(self, seconds: float = 5) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        return await asyncio.wait_for(read_frame(self.reader), wait_bound(seconds))

    async def recv_json(self, seconds: float = 5) -> dict[str, Any]:
        """The next text message, skipping pings."""
        while True:
            opcode, payload = await self.recv_frame(seconds)
            if opcode == 0x1:
                return json.loads(payload)  # type: ignore[no-any-return]

    async def recv_close(self, seconds: float = 5) -> tuple[int, str]:
        """Skip to the server's close frame; returns (code, reason)."""
        while True:
            opcode, payload = await self.recv_frame(seconds)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    async def at_eof(self, seconds: float = 5) -> bool:
        """Whether the server closes the TCP connection (after anything still unread)."""
        while await asyncio.wait_for(self.reader.read(65536), wait_bound(seconds)):
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def eventually(condition: Condition, seconds: float, what: str) -> None:
    """Wait (without blocking the loop) until `condition()` is true."""
    deadline = asyncio.get_running_loop().time() + wait_bound(seconds)
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
