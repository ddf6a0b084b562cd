"""WebSocket at `/ws`: Tornado checks the upgrade request, then the service speaks the
protocol itself (`service.websocket`) on the socket it takes over; auth follows the
upgrade, so failures are close codes (4401) a browser can read.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from tornado.web import HTTPError

from handlers.base import BaseHandler, cancel, credentials_of, later
from handlers.stream import StreamSession, take_over
from service.auth import Principal
from service.connection import Connection, RateLimit
from service.context import AppContext
from service.errors import AuthError, BadMessage, CloseCode, StoreUnavailable
from service.events import Payload, iso, now_iso
from service.websocket import (
    NO_STATUS,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Deflate,
    FrameParser,
    ProtocolError,
    close_frame,
    handshake_response,
    negotiate_deflate,
    parse_close,
    valid_key,
    ws_frame,
)
from service.wire import ClientMessage, Encoded, dumps, parse_client_message, parse_event_list

log = logging.getLogger(__name__)

MAX_BAD_MESSAGES = 10
# Client frames that ask for work or an answer (pings, messages): a burst, then a rate.
# Beyond it the connection is closed with 4400, whether or not the client reads the answers.
REQUEST_BURST = 50
REQUESTS_PER_SECOND = 20.0
ANSWERED_OPCODES = frozenset((OP_PING, OP_TEXT, OP_BINARY))
MAX_MISSED_PONGS = 2
CLOSE_TIMEOUT_SECONDS = 5.0  # how long a closing connection waits for the client's close frame
PING_FRAME = ws_frame(b"", OP_PING)  # the same bytes for every client


class WebSocketEndpoint(BaseHandler):
    """`GET /ws`: validates the upgrade, answers 101, and hands the socket to a session."""

    transport_label = "websocket"

    async def get(self) -> None:
        ctx = self.ctx
        if ctx.lifecycle.draining:
            self.reject(503, "draining", {"Retry-After": "1"})
            return
        headers = self.request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            raise HTTPError(400, 'Can "Upgrade" only to "WebSocket".')
        if "upgrade" not in {part.strip().lower() for part in headers.get("Connection", "").split(",")}:
            raise HTTPError(400, '"Connection" must be "Upgrade".')
        if headers.get("Sec-WebSocket-Version") != "13":
            self.reject(426, "only WebSocket version 13 is supported", {"Sec-WebSocket-Version": "13"})
            return
        key = headers.get("Sec-WebSocket-Key", "")
        if not valid_key(key):
            raise HTTPError(400, "Sec-WebSocket-Key is missing or invalid")
        origin = headers.get("Origin")
        if origin and not self.origin_allowed(origin):
            raise HTTPError(403, "cross-origin WebSocket refused")
        deflate = negotiate_deflate(headers.get("Sec-WebSocket-Extensions")) if ctx.settings.ws_compression else None
        credentials = credentials_of(self.request)
        raw_events = self.get_query_argument("events", None)
        last_id = self.get_query_argument("last_event_id", None) or None
        remote = self.request.remote_ip or ""
        self.set_status(101)
        self.application.log_request(self)
        sock, leftover = take_over(self)
        session = WebSocketSession(ctx, deflate)
        await session.attach(sock)
        session.write(handshake_response(key, deflate.response() if deflate else None))
        # From here on every answer is a close code: Tornado no longer owns the connection.
        try:
            principal = await ctx.auth.authenticate(credentials)
            subscriptions = parse_event_list(raw_events) if raw_events else None
        except AuthError as exc:
            ctx.metrics.auth_failures.labels(session.kind, exc.reason).inc()
            session.refuse(CloseCode.UNAUTHORIZED, exc.reason)
            return
        except BadMessage as exc:
            session.refuse(CloseCode.TOO_MANY_BAD_MESSAGES, exc.message[:100])
            return
        except StoreUnavailable:  # a ticket could not be looked up
            session.refuse(CloseCode.TRY_AGAIN_LATER, "database unavailable, retry later")
            return
        except Exception:
            log.exception("authenticating a WebSocket failed")
            session.refuse(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if session.lost:
            return  # the client left during authentication
        # Reserved with no await since the check above; the session gives it back when it ends.
        session.slot = ctx.hub.reserve(principal.user_id)
        if session.slot is None:
            session.refuse(CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
            return
        connection = Connection(session, principal, subscriptions=subscriptions, last_event_id=last_id, remote=remote)
        await session.start(connection, principal.expires_at)
        session.begin_reading(leftover)


class WebSocketSession(StreamSession):
    """One WebSocket client; implements `service.connection.Transport`.

    Nothing the client sends is read until it is authenticated and greeted; then frames
    are parsed as they arrive and answered without awaiting anything.
    """

    kind = "websocket"
    __slots__ = (
        "_bad_messages",
        "_close_sent",
        "_closing_timer",
        "_deflate",
        "_discarding",
        "_missed_pongs",
        "_parser",
        "_requests",
    )

    def __init__(self, ctx: AppContext, deflate: Deflate | None) -> None:
        super().__init__(ctx)
        self._deflate = deflate
        self._parser = FrameParser(ctx.settings.max_message_bytes, deflate=deflate is not None)
        self._bad_messages = 0
        self._missed_pongs = 0
        self._close_sent = False
        self._closing_timer: object | None = None
        self._requests: RateLimit | None = None  # made at the first request: most clients send few
        self._discarding = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.pause_reading()

    def begin_reading(self, leftover: bytes) -> None:
        """Start reading client frames, beginning with any Tornado read past the handshake."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._close_sent:
            return
        if leftover:
            self.data_received(leftover)
        transport.resume_reading()

    # -- Transport ------------------------------------------------------------------------

    def send_event(self, encoded: Encoded) -> None:
        if self._deflate is None:
            self.write(encoded.ws_frame)
        else:
            self.write(_compressed_frames.get(encoded, self._deflate))

    def send_message(self, payload: Payload) -> None:
        data = dumps(payload)
        if self._deflate is None:
            self.write(ws_frame(data))
        else:
            self.write(ws_frame(self._deflate.compress(data), compressed=True))

    def heartbeat(self) -> None:
        """Protocol-level ping; a client that misses two pongs in a row is closed."""
        if self._close_sent:
            return
        if self._missed_pongs >= MAX_MISSED_PONGS:
            self.close(CloseCode.GOING_AWAY, "ping timeout")
            return
        self._missed_pongs += 1
        self.write(PING_FRAME)

    def close(self, code: CloseCode | int, reason: str) -> None:
        """Send a close frame and wait (a few seconds at most) for the client's."""
        transport = self._transport
        if self._close_sent or transport is None or transport.is_closing():
            return
        self._close_sent = True
        self._close_code, self._close_reason = int(code), reason
        if self.connection is not None:
            self.connection.closed = True  # nothing may follow the close frame (RFC 6455 §5.5.1)
        self.write_final(close_frame(int(code), reason))
        transport.resume_reading()  # the client's close frame is the answer
        self._closing_timer = later(CLOSE_TIMEOUT_SECONDS, self.abort)

    # -- client frames --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        try:
            for opcode, payload in self._parser.feed(data):
                self._on_frame(opcode, payload)
                if self._transport is None or self._transport.is_closing() or self._discarding:
                    return
        except ProtocolError as exc:
            if not self._close_sent:
                self.close(exc.code, exc.reason)
            if self._transport is not None:
                self._transport.close()

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_CLOSE:
            code, reason = parse_close(payload)
            if not self._close_sent:  # the client began: answer with its code and finish
                self._close_sent = True
                self._close_code, self._close_reason = (code, reason) if code != NO_STATUS else (1000, "")
                self.write_final(close_frame(code) if code != NO_STATUS else ws_frame(b"", OP_CLOSE))
            if self._transport is not None:
                self._transport.close()
        elif self._close_sent:
            return  # after our close frame only the client's close frame matters
        elif opcode in ANSWERED_OPCODES and not self._request_allowed():
            self.close(CloseCode.TOO_MANY_BAD_MESSAGES, "too many messages")
            self._discarding = True  # a flood is not worth parsing; the client's EOF still ends it
        elif opcode == OP_PING:
            self.write(ws_frame(payload, OP_PONG))
        elif opcode == OP_PONG:
            self._missed_pongs = 0
        elif opcode == OP_TEXT:
            self._on_message(payload.decode("utf-8"))
        elif opcode == OP_BINARY:
            self._on_message(payload)

    def _request_allowed(self) -> bool:
        if self._requests is None:
            self._requests = RateLimit(REQUESTS_PER_SECOND, REQUEST_BURST)
        return self._requests.allow()

    def _on_message(self, message: str | bytes) -> None:
        connection = self.connection
        if connection is None or connection.closed:
            return
        try:
            self._handle(connection, parse_client_message(message))
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

    def connection_lost(self, exc: Exception | None) -> None:
        cancel(self._closing_timer)
        self._closing_timer = None
        super().connection_lost(exc)


class _CompressedFrames:
    """The compressed frame of the event being fanned out: every client of a process gets
    the same bytes (no context takeover), so it is made once per event and window size.
    """

    __slots__ = ("_encoded", "_frame", "_window_bits")

    def __init__(self) -> None:
        self._encoded: Encoded | None = None
        self._window_bits = 0
        self._frame = b""

    def get(self, encoded: Encoded, deflate: Deflate) -> bytes:
        if encoded is not self._encoded or deflate.window_bits != self._window_bits:
            self._frame = ws_frame(deflate.compress(encoded.json), compressed=True)
            self._encoded, self._window_bits = encoded, deflate.window_bits
        return self._frame


_compressed_frames = _CompressedFrames()
