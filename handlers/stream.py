"""What the WebSocket and SSE endpoints share: handing a connection from Tornado to a lean
asyncio protocol, the session that protocol runs, the connect sequence and token expiry.

Tornado answers the HTTP request (routing, auth, headers, errors); once a stream is
accepted, `take_over` ends Tornado's part and a `StreamSession` owns the socket. A live
connection then costs a socket, an asyncio transport and a few slotted objects (about
3.4 KB of Python heap) instead of Tornado's handler, request, headers, IOStream and
suspended coroutines (about 16 KB), and an event reaches the kernel through one
`transport.write`, with no Future.

Every byte a session writes — events, replies to the client (pongs, `error`, `auth_ok`),
heartbeats — passes `StreamSession.write`, which refuses to queue past the hub's
`max_pending_bytes` and closes the client as a slow consumer instead: what a client that
does not read can cost is bounded where the bytes are queued, not by a periodic sweep.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import UTC, datetime
from typing import ClassVar

from tornado.web import RequestHandler

from handlers.base import cancel, later
from service.connection import Connection
from service.context import AppContext
from service.errors import CloseCode
from service.events import iso, now_iso
from service.hub import Slot

log = logging.getLogger("service.connections")

EXPIRY_WARNING_SECONDS = 30.0


def take_over(handler: RequestHandler) -> tuple[socket.socket, bytes]:
    """End Tornado's part in a request: its socket, and any bytes read past the request head.

    Tornado stops reading and writing the connection and forgets it; the handler, the
    request and the IOStream become garbage. Whatever Tornado wrote must have been flushed.
    """
    stream = handler.detach()
    # IOStream has no public way to give its socket back; these are the attributes of
    # Tornado 6 (tests/test_websocket.py and test_sse.py fail at once if they change).
    if stream._write_buffer:
        raise RuntimeError("take_over before Tornado flushed its writes")
    sock = stream.socket
    leftover = bytes(stream._read_buffer[: stream._read_buffer_size])
    stream.io_loop.remove_handler(sock)
    stream.socket = None  # type: ignore[assignment]
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, leftover


class StreamSession(asyncio.Protocol):
    """A connection after `take_over`: writes without awaiting, its place in the hub, and
    the bookkeeping when it ends. Subclasses add the framing (WebSocket or SSE) and
    implement the rest of `service.connection.Transport`.
    """

    kind: ClassVar[str]
    __slots__ = ("_clock", "_close_code", "_close_reason", "_lost", "_transport", "connection", "ctx", "slot")

    def __init__(self, ctx: AppContext, slot: Slot | None = None) -> None:
        self.ctx = ctx
        self.connection: Connection | None = None
        self.slot = slot  # the user's connection slot this stream holds; given back when it ends
        self._transport: asyncio.Transport | None = None
        self._clock: TokenClock | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._lost = False

    @property
    def lost(self) -> bool:
        """Whether the socket has closed (`connection_lost` ran)."""
        return self._lost

    @property
    def made(self) -> bool:
        """Whether asyncio serves the socket (then `connection_lost` will run when it ends)."""
        return self._transport is not None

    async def attach(self, sock: socket.socket) -> None:
        """Serve `sock` with this protocol on the running loop."""
        await asyncio.get_running_loop().connect_accepted_socket(lambda: self, sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.ctx.hub.stream_opened(self)

    async def start(self, connection: Connection, expires_at: float) -> None:
        """Attach an authenticated connection: replay, `connected`, then live events."""
        if self._lost:
            return
        self.connection = connection
        await open_session(self.ctx, connection)
        if not connection.closed:
            self._clock = TokenClock(connection)
            self._clock.start(expires_at)

    def write(self, data: bytes) -> None:
        """Queue bytes: the kernel takes them at once when nothing is queued before them.

        Bytes that would take the unsent backlog past `max_pending_bytes` are not queued: the
        client is closed as a slow consumer instead. (A single write into an empty backlog is
        let through, as the kernel takes most of it; if it still leaves more than the bound
        queued, the client is closed at once.) Nothing is written once the close has begun.
        """
        transport = self._transport
        if transport is None or transport.is_closing() or self._close_code is not None:
            return
        limit = self.ctx.hub.max_pending_bytes
        pending = transport.get_write_buffer_size()
        if pending and pending + len(data) > limit:
            self._too_slow()
            return
        transport.write(data)
        if not pending and transport.get_write_buffer_size() > limit:
            self._too_slow()

    def write_final(self, data: bytes) -> None:
        """Queue the last bytes of a closing stream (a close frame, the last chunk): one per
        stream and small, so past the bound too."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _too_slow(self) -> None:
        connection = self.connection
        if connection is not None and not connection.closed:
            self.ctx.hub.close_slow(connection)
        elif self._close_code is None:  # not attached yet: nothing to log against a user
            self.ctx.metrics.slow_consumers.labels(self.kind).inc()
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def pending_bytes(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def refuse(self, code: CloseCode, reason: str) -> None:
        """Close a connection that never got attached (auth, limits), logging why."""
        log.info("refused: %s", reason, extra={"transport": self.kind, "close_code": int(code)})
        self.close(code, reason)

    def close(self, code: CloseCode, reason: str) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the socket now, whatever is still queued."""
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        ctx = self.ctx
        ctx.hub.stream_closed(self)
        if self.slot is not None:
            self.slot.release()
        if self._clock is not None:
            self._clock.stop()
        if self._close_code is None:  # neither side sent a close: the client went away
            self._close_code, self._close_reason = int(CloseCode.GOING_AWAY), "client left"
        code, reason = self._close_code, self._close_reason
        ctx.metrics.disconnects.labels(self.kind, str(code)).inc()
        connection = self.connection
        if connection is not None:
            connection.closed = True
            ctx.hub.detach(connection)
            log_disconnect(connection, code, reason)


class TokenClock:
    """Warns a connection 30 s before its token expires and closes it at expiry.

    One timer at a time (warning, then expiry): with thousands of connections, each timer
    handle is memory that every connection pays for.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._timer: object | None = None
        self._expires_at = 0.0

    def start(self, expires_at: float) -> None:
        self.stop()
        self._expires_at = expires_at
        remaining = expires_at - time.time()
        if remaining > EXPIRY_WARNING_SECONDS:
            self._timer = later(remaining - EXPIRY_WARNING_SECONDS, self._warn)
        else:
            self._warn()

    def stop(self) -> None:
        cancel(self._timer)
        self._timer = None

    def _warn(self) -> None:
        expires = datetime.fromtimestamp(self._expires_at, UTC)
        self._connection.send_message({"type": "token_expiring", "expiresAt": iso(expires)})
        self._timer = later(self._expires_at - time.time(), self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._connection.close(CloseCode.UNAUTHORIZED, "token expired")


async def open_session(ctx: AppContext, connection: Connection) -> None:
    """Attach a new connection, replay what it missed, and greet it with `connected`.

    Live events that arrive during the replay are held and sent after it, so the client
    sees history and live events in order, each once.
    """
    requested = connection.last_event_id
    connection.begin_replay()
    ctx.hub.attach(connection)
    history = []
    resumed = False
    if requested is not None:
        replay = await ctx.bus.replay_since(requested)
        outcome = "resync" if replay is None else "replayed"
        ctx.metrics.resumes.labels(connection.kind, outcome).inc()
        if replay is None:
            connection.last_event_id = None
        else:
            history, resumed = replay, True
    p = connection.principal
    connection.send_message(
        {
            "type": "connected",
            "connectionId": connection.id,
            "userId": p.user_id,
            "userName": p.name,
            "transport": connection.kind,
            "serverTime": now_iso(),
            "heartbeatSeconds": ctx.settings.heartbeat_seconds,
            "resumed": resumed,
        }
    )
    if requested is not None and not resumed:
        connection.send_message({"type": "resync", "reason": "history unavailable", "ts": now_iso()})
    connection.finish_replay(history)
    log.info(
        "connected",
        extra={
            "connection_id": connection.id,
            "user_id": p.user_id,
            "transport": connection.kind,
            "resumed": resumed,
            "remote": connection.remote,
        },
    )


def log_disconnect(connection: Connection, code: int, reason: str) -> None:
    """The INFO line for a connection that ended: how long it lasted, its close code and reason."""
    duration = time.time() - connection.since
    log.info(
        "disconnected after %.1fs: %s",
        duration,
        reason or "closed",
        extra={
            "connection_id": connection.id,
            "user_id": connection.principal.user_id,
            "transport": connection.kind,
            "close_code": code,
            "reason": reason or "closed",
            "duration_seconds": round(duration, 3),
        },
    )
