"""A load process: opens WebSocket, SSE and long-polling clients to one server and records
what they receive.

The clients are lean `asyncio.Protocol`s (uvloop when installed): they parse only what a
benchmark needs (the 101/200 answer, WebSocket frame boundaries and pings, SSE block ends,
a poll answer's length and cursor)
and find each event's `"b":"<seq>:<sent µs>"` field with one regex, so the harness costs the
same for every system. The runner drives it over a pipe: connect, then finish, then exit.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

import jwt

from bench.stats import Delivery, Histogram

MARK = re.compile(rb'"b": ?"(\d+):(\d+)"')
CONNECTED = b'"connected"'
QUIET_SECONDS = 5.0
SENT_US: dict[int, int] = {}  # seq -> its publish stamp (µs), kept only with track_heartbeats
DISORDER: list[tuple[int, int, int]] = []  # first few (seq, last seen, count) out of order, for diagnosis
PONG_EMPTY = b"\x8a\x80\x00\x00\x00\x00"  # masked (with a zero key), empty pong
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
CURSOR = re.compile(rb'"cursor":"([0-9a-f]+)"\}$')


@dataclass(frozen=True)
class Plan:
    """What one load process opens, and against which server."""

    port: int
    ws_path: str
    sse_path: str
    ws: int
    sse: int
    first_user: int  # user ids are first_user, first_user + 1, ...: one user per client
    jwt_secret: str
    greeting: bool  # the server sends a first message (`connected`) once it has authenticated
    concurrency: int = 100
    connect_timeout: float = 30.0
    poll: int = 0  # long-polling clients (the service only)
    poll_path: str = "/poll"
    algorithm: str = "HS256"  # RS256: jwt_secret is then the private key (PEM)
    track_heartbeats: bool = False  # record heartbeat arrival times and a histogram per event
    ws_protocol: str = "websocket"  # "engineio": Socket.IO's packets inside the WebSocket frames
    client: str = "python"  # "c": the same clients in C (bench/cload.c), two thirds of the CPU


class Tracker:
    """One client's view of the event sequence: loss, duplicates, order, latency."""

    __slots__ = (
        "beats",
        "by_seq",
        "closed",
        "duplicated",
        "established",
        "hist",
        "last",
        "out_of_order",
        "received",
        "seen",
        "worst",
    )

    def __init__(
        self,
        hist: Histogram,
        worst: dict[int, int],
        established: asyncio.Future[bool],
        by_seq: dict[int, Histogram] | None = None,
        beats: dict[int, int] | None = None,
    ) -> None:
        self.hist = hist
        self.worst = worst  # per event: the longest any client of this process waited (µs)
        self.by_seq = by_seq  # per event: every client's latency (heartbeat measurement only)
        self.beats = beats  # ms -> heartbeats (pings, SSE comments) that arrived then
        self.established = established
        self.seen = bytearray(64)
        self.last = 0
        self.received = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.closed = False

    def ready(self, ok: bool) -> None:
        if not self.established.done():
            self.established.set_result(ok)

    def scan(self, data: bytes, start: int, end: int, now_us: int) -> bool:
        """Record every event mark in data[start:end]; False when there was none."""
        found = False
        for match in MARK.finditer(data, start, end):
            found = True
            seq = int(match.group(1))
            seen = self.seen
            if seq >= len(seen):
                seen.extend(bytes(seq - len(seen) + 256))
            if seen[seq]:
                self.duplicated += 1
                continue
            seen[seq] = 1
            self.received += 1
            if seq < self.last:
                self.out_of_order += 1
                if len(DISORDER) < 20:
                    DISORDER.append((seq, self.last, self.received))
            else:
                self.last = seq
            latency = now_us - int(match.group(2))
            self.hist.add(max(1.0, float(latency)))
            if self.by_seq is not None:
                hist = self.by_seq.get(seq)
                if hist is None:
                    hist = self.by_seq[seq] = Histogram()
                    SENT_US[seq] = int(match.group(2))
                hist.add(max(1.0, float(latency)))
            if latency > self.worst.get(seq, 0):
                self.worst[seq] = latency
        return found

    def lost(self, last_seq: int, first_seq: int = 1) -> int:
        return max(0, last_seq - first_seq + 1 - self.received)

    def beat(self) -> None:
        if self.beats is not None:
            ms = time.time_ns() // 1_000_000
            self.beats[ms] = self.beats.get(ms, 0) + 1


class LoadClient(asyncio.Protocol):
    """What both clients share: send the request on connect, record the end on loss."""

    def __init__(self, request: bytes, tracker: Tracker, greeting: bool) -> None:
        self.request = request
        self.tracker = tracker
        self.greeting = greeting
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tracker.closed = True
        self.tracker.ready(False)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class WsClient(LoadClient):
    """A WebSocket client: handshake, then frames (text recorded, pings answered)."""

    def __init__(self, request: bytes, tracker: Tracker, greeting: bool) -> None:
        super().__init__(request, tracker, greeting)
        self.upgraded = False

    def data_received(self, data: bytes) -> None:
        now_us = time.time_ns() // 1000
        buf = self.buffer + data if self.buffer else data
        pos = 0
        if not self.upgraded:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                self.buffer = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.tracker.ready(False)
                self.close()
                return
            self.upgraded = True
            if not self.greeting:
                self.tracker.ready(True)
            pos = head_end + 4
        size = len(buf)
        while size - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            if opcode == 0x1:
                self._text(buf, pos + head, end, now_us)
            elif opcode == 0x9:
                self._pong(buf[pos + head : end])
                self.tracker.beat()
            elif opcode == 0x8:
                self.close()
                return
            pos = end
        self.buffer = buf[pos:]

    def _text(self, buf: bytes, start: int, end: int, now_us: int) -> None:
        if not self.tracker.scan(buf, start, end, now_us):
            self.tracker.ready(True)  # the greeting, or another per-connection message

    def _pong(self, payload: bytes) -> None:
        if self.transport is None:
            return
        if not payload:
            self.transport.write(PONG_EMPTY)
        elif len(payload) < 126:  # a zero mask key leaves the payload as it is
            self.transport.write(bytes((0x8A, 0x80 | len(payload), 0, 0, 0, 0)) + payload)


def masked_text(payload: bytes) -> bytes:
    """A short client text frame, masked with a zero key (which leaves the payload as it is)."""
    return bytes((0x81, 0x80 | len(payload), 0, 0, 0, 0)) + payload


class EngineIoClient(WsClient):
    """A Socket.IO client over a WebSocket (Engine.IO v4): the server's open packet `0{...}` is
    answered with `40` (connect to namespace `/`), its `40{"sid":...}` means connected (`44` is a
    refusal), its pings `2` are answered `3`, and events arrive as `42["event",{...}]`."""

    CONNECT = masked_text(b"40")
    PONG = masked_text(b"3")

    def _text(self, buf: bytes, start: int, end: int, now_us: int) -> None:
        kind = buf[start : start + 2]
        if kind == b"42":
            self.tracker.scan(buf, start, end, now_us)
        elif kind[:1] == b"2":
            if self.transport is not None:
                self.transport.write(self.PONG)
            self.tracker.beat()
        elif kind == b"40":
            self.tracker.ready(True)
        elif kind[:1] == b"0":
            if self.transport is not None:
                self.transport.write(self.CONNECT)
        elif kind == b"44" or kind[:1] == b"1":  # connect refused, or the engine closed
            self.tracker.ready(False)
            self.close()


class SseClient(LoadClient):
    """An EventSource-like reader: status line, then complete `\\n\\n`-terminated blocks."""

    def __init__(self, request: bytes, tracker: Tracker, greeting: bool) -> None:
        super().__init__(request, tracker, greeting)
        self.headers_done = False

    def data_received(self, data: bytes) -> None:
        now_us = time.time_ns() // 1000
        buf = self.buffer + data if self.buffer else data
        pos = 0
        if not self.headers_done:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                self.buffer = buf
                return
            if not buf.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                self.tracker.ready(False)
                self.close()
                return
            self.headers_done = True
            if not self.greeting:
                self.tracker.ready(True)
            pos = head_end + 4
        end = buf.rfind(b"\n\n", pos)
        if end < 0:
            self.buffer = buf[pos:]
            return
        if self.greeting and not self.tracker.established.done() and buf.find(CONNECTED, pos, end) >= 0:
            self.tracker.ready(True)
        if not self.tracker.scan(buf, pos, end, now_us) and self.tracker.beats is not None:
            if buf.find(b"heartbeat", pos, end) >= 0:
                self.tracker.beat()
        self.buffer = buf[end + 2 :]


class PollClient(LoadClient):
    """A long-polling client on one keep-alive connection: each answer (Content-Length framed)
    is scanned, then the next poll goes out at once with the answer's cursor."""

    def __init__(self, request: bytes, tracker: Tracker, greeting: bool) -> None:
        super().__init__(request, tracker, greeting)
        self.base_request = request  # `GET /poll?... HTTP/1.1\r\n...`: the cursor goes before ` HTTP/1.1`

    def data_received(self, data: bytes) -> None:
        now_us = time.time_ns() // 1000
        buf = self.buffer + data if self.buffer else data
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                break
            length = CONTENT_LENGTH.search(buf, 0, head_end + 2)
            if not buf.startswith(b"HTTP/1.1 200") or length is None:
                self.tracker.ready(False)
                self.close()
                return
            end = head_end + 4 + int(length.group(1))
            if len(buf) < end:
                break
            body_start = head_end + 4
            if not self.tracker.established.done() and buf.find(CONNECTED, body_start, end) >= 0:
                self.tracker.ready(True)
            self.tracker.scan(buf, body_start, end, now_us)
            cursor = CURSOR.search(buf[body_start:end])
            self._next(cursor.group(1) if cursor else b"")
            buf = buf[end:]
        self.buffer = buf

    def _next(self, cursor: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        path_end = self.base_request.index(b" HTTP/1.1")
        separator = b"&" if b"?" in self.base_request[:path_end] else b"?"
        self.transport.write(
            self.base_request[:path_end] + separator + b"cursor=" + cursor + self.base_request[path_end:]
        )


def _token(secret: Any, user: int, algorithm: str = "HS256") -> str:
    now = int(time.time())
    claims = {"sub": str(user), "name": "محمد حسن", "roles": ["user"], "iat": now, "exp": now + 3600}
    return jwt.encode(claims, secret, algorithm=algorithm)


def _ws_request(plan: Plan, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    separator = "&" if "?" in plan.ws_path else "?"
    return (
        f"GET {plan.ws_path}{separator}token={token} HTTP/1.1\r\nHost: 127.0.0.1:{plan.port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _sse_request(plan: Plan, token: str) -> bytes:
    separator = "&" if "?" in plan.sse_path else "?"
    return (
        f"GET {plan.sse_path}{separator}token={token} HTTP/1.1\r\nHost: 127.0.0.1:{plan.port}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    ).encode()


def _poll_request(plan: Plan, token: str) -> bytes:
    return (
        f"GET {plan.poll_path} HTTP/1.1\r\nHost: 127.0.0.1:{plan.port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


def client_requests(plan: Plan) -> list[tuple[str, int, bytes]]:
    """(kind, user, request) of every client of `plan`: WebSocket, then SSE, then long-polling,
    one user each from `plan.first_user` on (the Python and the C clients send the same)."""
    secret: Any = plan.jwt_secret
    first, alg = plan.first_user, plan.algorithm
    if not alg.startswith("HS"):  # a PEM private key: parsed once here, not by PyJWT per token
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        secret = load_pem_private_key(plan.jwt_secret.encode(), password=None)
    build = [("websocket", _ws_request)] * plan.ws + [("sse", _sse_request)] * plan.sse
    build += [("poll", _poll_request)] * plan.poll
    return [(kind, first + n, make(plan, _token(secret, first + n, alg))) for n, (kind, make) in enumerate(build)]


SOURCE_ADDRESSES = 50  # 127.0.0.2 to 127.0.0.51


def source_address(n: int) -> str:
    """Client `n`'s loopback source address: browsers come from many addresses, and one address
    runs out of ephemeral ports near 28,000 connections (the service also caps, per address,
    connections that have not sent a request yet)."""
    return f"127.0.0.{2 + n % SOURCE_ADDRESSES}"


CLIENTS: dict[str, type[LoadClient]] = {"websocket": WsClient, "sse": SseClient, "poll": PollClient}


class Load:
    """The clients of one process, opened with bounded concurrency."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.hists = {kind: Histogram() for kind in CLIENTS}
        self.worst: dict[int, int] = {}
        self.clients: dict[str, list[tuple[Tracker, asyncio.Protocol]]] = {kind: [] for kind in CLIENTS}
        self.failed = 0
        self.first_seq = 1
        self.by_seq: dict[int, Histogram] | None = {} if plan.track_heartbeats else None
        self.beats: dict[int, int] | None = {} if plan.track_heartbeats else None
        self.established_at: dict[str, float] = {}  # kind -> when its last client was established

    async def connect(self) -> dict[str, Any]:
        plan = self.plan
        loop = asyncio.get_running_loop()
        first_user = plan.first_user
        requests = [(kind, request) for kind, _, request in client_requests(plan)]
        limit = asyncio.Semaphore(plan.concurrency)

        async def open_one(n: int, kind: str, request: bytes) -> None:
            async with limit:
                tracker = Tracker(self.hists[kind], self.worst, loop.create_future(), self.by_seq, self.beats)
                client = EngineIoClient if kind == "websocket" and plan.ws_protocol == "engineio" else CLIENTS[kind]
                protocol: asyncio.Protocol = client(request, tracker, plan.greeting)
                try:
                    await loop.create_connection(
                        lambda: protocol, "127.0.0.1", plan.port, local_addr=(source_address(first_user + n), 0)
                    )
                    ok = await asyncio.wait_for(tracker.established, plan.connect_timeout)
                except (OSError, TimeoutError):
                    ok = False
                if ok:
                    self.clients[kind].append((tracker, protocol))
                    self.established_at[kind] = time.time()
                else:
                    self.failed += 1
                    protocol.close()  # type: ignore[attr-defined]

        started = time.time()
        await asyncio.gather(*(open_one(n, kind, request) for n, (kind, request) in enumerate(requests)))
        finished = time.time()
        opened = sum(len(group) for group in self.clients.values())
        return {
            "opened": opened,
            "failed": self.failed,
            "started": started,
            "finished": finished,
            "by_kind": {kind: (len(g), self.established_at.get(kind, started)) for kind, g in self.clients.items()},
        }

    def reset(self, first_seq: int) -> None:
        """Start counting afresh, on the same open clients, from event `first_seq` on."""
        self.first_seq = first_seq
        for hist in self.hists.values():
            hist.counts.clear()
            hist.total, hist.max_us = 0, 0.0
        self.worst.clear()
        DISORDER.clear()
        if self.by_seq is not None:
            self.by_seq.clear()
        for group in self.clients.values():
            for tracker, _ in group:
                tracker.received = tracker.duplicated = tracker.out_of_order = 0

    def extras(self) -> dict[str, Any]:
        """Heartbeat arrival times and per-event histograms (when tracked); cleared after."""
        out = {"beats": dict(self.beats or {}), "by_seq": dict(self.by_seq or {}), "sent_us": dict(SENT_US)}
        if self.beats is not None:
            self.beats.clear()
        return out

    async def finish(self, last_seq: int, wait_seconds: float) -> dict[str, Delivery]:
        """Wait until every open client has the last event, or nothing arrived for QUIET_SECONDS
        (what is still missing then is lost, not late), or `wait_seconds` passed; then count."""
        deadline = time.monotonic() + wait_seconds
        everyone = [t for group in self.clients.values() for t, _ in group]
        progress, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if all(t.closed or t.last >= last_seq for t in everyone):
                break
            received = sum(t.received for t in everyone)
            if received != progress:
                progress, quiet_since = received, time.monotonic()
            elif time.monotonic() - quiet_since > QUIET_SECONDS:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # a duplicate right behind the last event still counts
        result: dict[str, Delivery] = {}
        for kind, group in self.clients.items():
            d = Delivery(clients=len(group), latency=self.hists[kind])
            missing: dict[int, int] = {}
            for tracker, _ in group:
                d.received += tracker.received
                d.lost += tracker.lost(last_seq, self.first_seq)
                if tracker.lost(last_seq, self.first_seq) and len(missing) < 50:
                    seen = tracker.seen.ljust(last_seq + 1, b"\0")
                    for seq in range(self.first_seq, last_seq + 1):
                        if not seen[seq]:
                            missing[seq] = missing.get(seq, 0) + 1
                d.duplicated += tracker.duplicated
                d.out_of_order += tracker.out_of_order
                d.disconnected += int(tracker.closed)
            d.missing_examples = missing
            d.worst_by_event = self.worst
            d.disorder = DISORDER
            result[kind] = d
        return result

    async def close(self) -> None:
        for group in self.clients.values():
            for _, protocol in group:
                protocol.close()  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)


async def _serve(plan: Plan, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    load = Load(plan)
    try:
        while True:
            command, arg = await loop.run_in_executor(None, pipe.recv)
            if command == "connect":
                pipe.send(await load.connect())
            elif command == "finish":
                last_seq, wait_seconds = arg
                pipe.send(await load.finish(last_seq, wait_seconds))
            elif command == "reset":
                load.reset(arg)
                pipe.send(True)
            elif command == "extras":
                pipe.send(load.extras())
            else:
                break
    finally:
        await load.close()


def main(plan: Plan, pipe: Connection) -> None:
    """Entry point of a load process (multiprocessing target)."""
    if plan.client == "c":
        from bench import cload

        cload.main(plan, pipe)
        return
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(plan, pipe))
    else:
        uvloop.run(_serve(plan, pipe))
