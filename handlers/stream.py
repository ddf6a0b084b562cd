"""What the WebSocket and SSE handlers share: the connect sequence, token expiry, and
writing ready-made bytes to a Tornado stream without a Future per write.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from tornado.iostream import IOStream, StreamClosedError

from handlers.base import cancel, later
from service.connection import Connection
from service.context import AppContext
from service.errors import CloseCode
from service.events import iso, now_iso

log = logging.getLogger("service.connections")

EXPIRY_WARNING_SECONDS = 30.0


def write_nowait(stream: IOStream, data: bytes) -> None:
    """Queue bytes on a Tornado stream and try to send them now, without allocating a Future.

    `IOStream.write` creates a Future per call, which dominates fan-out cost with
    thousands of clients; this does the same buffering and flushing without it.

    Raises:
        StreamClosedError: the stream is closed.
    """
    if stream.closed():
        raise StreamClosedError()
    try:
        buffer = stream._write_buffer
        if not buffer and type(stream) is IOStream and not stream._connecting:
            # Nothing queued (the common case): one send() straight to the kernel, and only
            # what it does not take goes through Tornado's buffer. Profiled: Tornado's
            # append/peek/advance loop cost more Python time per client than the rest of fan-out.
            _send_now(stream, data)
            return
        buffer.append(data)
        stream._total_write_index += len(data)
    except AttributeError:  # a Tornado without these internals: take the public road
        stream.write(data)
        return
    if not stream._connecting:
        stream._handle_write()
        if stream._write_buffer:
            stream._add_io_state(stream.io_loop.WRITE)


def _send_now(stream: IOStream, data: bytes) -> None:
    """Send on a plain stream with an empty buffer; queue the rest for Tornado to flush."""
    try:
        sent = stream.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        stream.close(exc_info=exc)
        raise StreamClosedError(real_error=exc) from exc
    stream._total_write_index += len(data)
    stream._total_write_done_index += sent
    if sent < len(data):
        stream._write_buffer.append(data[sent:])
        stream._add_io_state(stream.io_loop.WRITE)


def pending_bytes(stream: IOStream | None) -> int:
    """Bytes queued on a stream that the kernel has not taken yet."""
    if stream is None or stream.closed():
        return 0
    return len(stream._write_buffer)


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
