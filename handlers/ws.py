"""WebSocket transport at `/ws`: auth after the upgrade (4401), client messages, fast writes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from tornado.iostream import IOStream, StreamClosedError
from tornado.web import HTTPError
from tornado.websocket import WebSocketHandler

from handlers.base import credentials_of
from handlers.stream import TokenClock, log_disconnect, open_session, pending_bytes, write_nowait
from service.auth import Principal
from service.connection import Connection
from service.context import AppContext
from service.errors import AuthError, BadMessage, CloseCode
from service.events import Payload, iso, now_iso
from service.wire import ClientMessage, Encoded, dumps, parse_client_message, parse_event_list, ws_frame

log = logging.getLogger(__name__)

MAX_BAD_MESSAGES = 10
MAX_MISSED_PONGS = 2
PING_FRAME = b"\x89\x00"  # an empty, final ping frame; the same bytes for every client


class WebSocketTransport(WebSocketHandler):
    """One WebSocket client; implements `service.connection.Transport`."""

    kind = "websocket"

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.connection: Connection | None = None
        self._clock: TokenClock | None = None
        self._bad_messages = 0
        self._missed_pongs = 0
        self._close_code: int | None = None
        self._close_reason = ""

    # -- handshake ------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.ctx.lifecycle.draining:
            raise HTTPError(503, "draining")

    def _detach_stream(self) -> IOStream:
        # Tornado's own version also replaces eleven response methods with per-instance stubs,
        # 1.5 KB a connection (measured with tracemalloc), to catch calls this handler never makes.
        return self.detach()

    def check_origin(self, origin: str) -> bool:
        return self.ctx.settings.origin_allowed(origin, self.request.host)

    def get_compression_options(self) -> dict[str, Any] | None:
        return {} if self.ctx.settings.ws_compression else None

    async def open(self, *args: str, **kwargs: str) -> None:
        ctx = self.ctx
        try:
            principal = await ctx.auth.authenticate(credentials_of(self.request))
            subscriptions = self._query_events()
        except AuthError as exc:
            ctx.metrics.auth_failures.labels(self.kind, exc.reason).inc()
            self._end(CloseCode.UNAUTHORIZED, exc.reason)
            return
        except BadMessage as exc:
            self._end(CloseCode.TOO_MANY_BAD_MESSAGES, exc.message[:100])
            return
        if not ctx.hub.has_room_for(principal.user_id):
            self._end(CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
            return
        last_id = self.get_query_argument("last_event_id", None) or None
        self.connection = Connection(
            self,
            principal,
            subscriptions=subscriptions,
            last_event_id=last_id,
            remote=self.request.remote_ip or "",
        )
        if self.ws_connection is None:  # the client left during authentication
            return
        await open_session(ctx, self.connection)
        self._clock = TokenClock(self.connection)
        self._clock.start(principal.expires_at)

    def _query_events(self) -> frozenset[str] | None:
        raw = self.get_query_argument("events", None)
        return parse_event_list(raw) if raw else None

    # -- Transport ------------------------------------------------------------------------

    def send_event(self, encoded: Encoded) -> None:
        if self.ctx.settings.ws_compression:
            self._send_text(encoded.json)
        else:
            self._write(encoded.ws_frame)

    def send_message(self, payload: Payload) -> None:
        data = dumps(payload)
        if self.ctx.settings.ws_compression:
            self._send_text(data)
        else:
            self._write(ws_frame(data))

    def heartbeat(self) -> None:
        """Protocol-level ping; a client that misses two pongs in a row is closed."""
        if self._missed_pongs >= MAX_MISSED_PONGS:
            self.close(CloseCode.GOING_AWAY, "ping timeout")
            return
        self._missed_pongs += 1
        self._write(PING_FRAME)

    def on_pong(self, data: bytes) -> None:
        self._missed_pongs = 0

    def pending_bytes(self) -> int:
        ws = self.ws_connection
        return pending_bytes(ws.stream) if ws is not None else 0

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if code is not None and self._close_code is None:
            self._close_code, self._close_reason = int(code), reason or ""
        super().close(code, reason)

    def _end(self, code: CloseCode, reason: str) -> None:
        """Refuse a connection after the upgrade (auth, limits), with a log line saying why."""
        log.info(
            "refused: %s",
            reason,
            extra={"transport": self.kind, "close_code": int(code), "remote": self.request.remote_ip},
        )
        self.close(code, reason)

    def _write(self, data: bytes) -> None:
        ws = self.ws_connection
        if ws is None or ws.is_closing() or ws.stream is None:
            return
        try:
            write_nowait(ws.stream, data)
        except StreamClosedError:
            pass

    def _send_text(self, data: bytes) -> None:
        try:
            self.write_message(data.decode("utf-8"))
        except Exception:
            pass

    # -- client messages ------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        connection = self.connection
        if connection is None or connection.closed:
            return
        try:
            parsed = parse_client_message(message)
            self._handle(connection, parsed)
        except BadMessage as exc:
            self._bad_messages += 1
            connection.send_message({"type": "error", "code": exc.code, "message": exc.message})
            if self._bad_messages >= MAX_BAD_MESSAGES:
                connection.close(CloseCode.TOO_MANY_BAD_MESSAGES, "too many bad messages")
            return
        self._bad_messages = 0

    def _handle(self, connection: Connection, message: ClientMessage) -> None:
        if message.type == "ping":
            pong: Payload = {"type": "pong", "ts": now_iso()}
            if message.nonce is not None:
                pong["nonce"] = message.nonce
            connection.send_message(pong)
        elif message.type == "subscribe":
            current = connection.subscriptions
            connection.subscriptions = message.events if current is None else current | message.events
        elif message.type == "unsubscribe":
            current = connection.subscriptions
            if current is None:
                raise BadMessage("unsubscribe needs an explicit subscription (connect with events=)")
            connection.subscriptions = current - message.events
        elif message.type == "auth":
            self._refresh(connection, message.token)

    def _refresh(self, connection: Connection, token: str) -> None:
        try:
            principal = self.ctx.auth.verify(token)
        except AuthError as exc:
            self.ctx.metrics.auth_failures.labels(self.kind, exc.reason).inc()
            connection.close(CloseCode.UNAUTHORIZED, exc.reason)
            return
        if principal.user_id != connection.principal.user_id:
            self.ctx.metrics.auth_failures.labels(self.kind, "other user").inc()
            connection.close(CloseCode.UNAUTHORIZED, "token belongs to another user")
            return
        connection.principal = Principal(
            connection.principal.user_id, principal.name, principal.roles, principal.expires_at
        )
        connection.send_message(
            {"type": "auth_ok", "expiresAt": iso(datetime.fromtimestamp(principal.expires_at, UTC))}
        )
        if self._clock is not None:
            self._clock.start(principal.expires_at)

    # -- end ------------------------------------------------------------------------------

    def on_close(self) -> None:
        code = self._close_code or self.close_code or int(CloseCode.GOING_AWAY)
        reason = self._close_reason or self.close_reason or ""
        if self._clock is not None:
            self._clock.stop()
        connection = self.connection
        if connection is None:
            self.ctx.metrics.disconnects.labels(self.kind, str(code)).inc()
            return
        connection.closed = True
        self.ctx.hub.detach(connection)
        self.ctx.metrics.disconnects.labels(self.kind, str(code)).inc()
        log_disconnect(connection, code, reason)
