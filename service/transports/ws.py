"""One WebSocket client after the handshake: moves bytes between the socket and the
`WebSocketProtocol`, and handles the messages it yields (ping, subscribe, unsubscribe,
auth refresh). The rules of the connection (states, close handshake, pings, rate limit)
are the protocol's; this module owns only the close timer and the application.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from service.app.context import AppContext
from service.core.errors import AuthError, BadMessage, CloseCode
from service.core.events import Payload, iso, now_iso
from service.core.identity import Principal
from service.core.schema import MAX_BAD_MESSAGES, TransportName
from service.fanout.batch import Selection
from service.fanout.connection import Connection
from service.protocol.frames import OP_TEXT, Deflate, ws_frame
from service.protocol.websocket import State, WebSocketProtocol
from service.protocol.wire import ClientMessage, Encoded, dumps, parse_client_message
from service.transports.session import StreamSession

CLOSE_TIMEOUT_SECONDS = 5.0  # how long a closing connection waits for the client's close frame


class WebSocketSession(StreamSession):
    """One WebSocket client; implements `service.fanout.connection.Transport`.

    Nothing the client sends is read until it is authenticated and greeted (`begin_reading`);
    then frames are parsed as they arrive and answered without awaiting anything.

    Args:
        deflate: the negotiated permessage-deflate, or None.
    """

    kind = TransportName.WEBSOCKET
    __slots__ = ("_bad_messages", "_closing_timer", "_deflate", "protocol")

    def __init__(self, ctx: AppContext, deflate: Deflate | None) -> None:
        super().__init__(ctx)
        self._deflate = deflate
        self.protocol = WebSocketProtocol(
            self.write,
            self.write_final,
            max_message_bytes=ctx.settings.max_message_bytes,
            deflate=deflate is not None,
        )
        self._bad_messages = 0
        self._closing_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]

    def begin_reading(self, leftover: bytes) -> None:
        """Start reading client frames, beginning with any Tornado read past the handshake."""
        transport = self._transport
        if transport is None or transport.is_closing() or self.protocol.state is not State.CONNECTING:
            return
        self.protocol.open()
        if leftover:
            self.data_received(leftover)
        transport.resume_reading()

    # -- Transport ------------------------------------------------------------------------

    def send_event(self, encoded: Encoded) -> None:
        if self._deflate is None:
            self.protocol.send(encoded.ws_frame)
        else:
            self.protocol.send(_compressed_frames.get(encoded, self._deflate))

    def send_batch(self, selection: Selection) -> None:
        """The events' frames in one write; compressed, each is still its own message."""
        deflate = self._deflate
        if deflate is None:
            self.protocol.send(selection.joined(TransportName.WEBSOCKET, _plain_frame))
        else:
            data = selection.joined(
                (TransportName.WEBSOCKET, deflate.window_bits), lambda e: _compressed_frames.get(e, deflate)
            )
            self.protocol.send(data)

    def send_message(self, payload: Payload) -> None:
        self.send_data(dumps(payload), OP_TEXT)

    def send_data(self, data: bytes, opcode: int) -> None:
        """One data message (`OP_TEXT` or `OP_BINARY`), compressed when deflate was negotiated."""
        if self._deflate is None:
            self.protocol.send(ws_frame(data, opcode))
        else:
            self.protocol.send(ws_frame(self._deflate.compress(data), opcode, compressed=True))

    def heartbeat(self) -> None:
        """Protocol-level ping; a client that misses two pongs in a row is closed."""
        self.protocol.ping()
        self._after_protocol()

    def close(self, code: CloseCode | int, reason: str) -> None:
        """Send a close frame and wait (a few seconds at most) for the client's."""
        if self._transport is None or self._transport.is_closing():
            return
        self.protocol.close(code, reason)
        self._after_protocol()

    def ended(self) -> tuple[int, str] | None:
        code = self.protocol.close_code
        return None if code is None else (code, self.protocol.close_reason)

    def _after_protocol(self) -> None:
        """Do what the protocol's state asks of the socket, and stop fan-out once it closes."""
        state = self.protocol.state
        if state < State.CLOSING:
            return
        transport = self._transport
        if self.connection is not None and not self.connection.closed:
            self.connection.close(CloseCode.GOING_AWAY, "")  # stop offering it events; its code is sent
        if transport is None:
            return
        if state is State.CLOSED:
            transport.close()
        elif self._closing_timer is None:  # CLOSING: the client's close frame is the answer
            transport.resume_reading()
            self._closing_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_SECONDS, self.abort)

    # -- client frames --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        for opcode, payload in protocol.receive(data):
            self.on_data(opcode, payload)
        self._after_protocol()

    def on_data(self, opcode: int, payload: bytes) -> None:
        """One complete client message, UTF-8 already checked for text: the application's."""
        self._on_message(payload.decode("utf-8") if opcode == OP_TEXT else payload)

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
        if self._closing_timer is not None:
            self._closing_timer.cancel()
            self._closing_timer = None
        self.protocol.lost()
        super().connection_lost(exc)


def _plain_frame(encoded: Encoded) -> bytes:
    return encoded.ws_frame


class _CompressedFrames:
    """The compressed frames of the events being fanned out: every client of a process gets
    the same bytes (no context takeover), so each is made once per event and window size,
    for the events of the current batch (the cache is emptied past `MAX_CACHED` frames).
    """

    MAX_CACHED = 2048  # above the largest batch (service.fanout.bus.MAX_BATCH_EVENTS), times a few window sizes
    __slots__ = ("_frames",)

    def __init__(self) -> None:
        # id(encoded), window bits → (encoded, frame); the encoded is kept so its id is not reused.
        self._frames: dict[tuple[int, int], tuple[Encoded, bytes]] = {}

    def get(self, encoded: Encoded, deflate: Deflate) -> bytes:
        key = (id(encoded), deflate.window_bits)
        cached = self._frames.get(key)
        if cached is not None and cached[0] is encoded:
            return cached[1]
        if len(self._frames) >= self.MAX_CACHED:
            self._frames.clear()
        frame = ws_frame(deflate.compress(encoded.json), compressed=True)
        self._frames[key] = (encoded, frame)
        return frame


_compressed_frames = _CompressedFrames()
