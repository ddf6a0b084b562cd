"""The WebSocket connection as a state machine, without I/O (after python-websockets'
`Protocol`): one `State`, the close handshake, ping/pong accounting, the request rate limit,
and the rule that nothing follows our close frame.

The session (`service.transports.ws`) moves bytes: it feeds what the socket reads to
`receive`, hands the messages it yields to the application, and gives the protocol two
sinks for what it writes. After each call it looks at `state`: CLOSING means "wait (a few
seconds) for the client's close frame", CLOSED means "close the socket".
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

from service.core.errors import CloseCode
from service.core.rate import RateLimit
from service.core.schema import REQUEST_BURST, REQUESTS_PER_SECOND
from service.protocol.frames import (
    NO_STATUS,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    ProtocolError,
    close_frame,
    parse_close,
    ws_frame,
)

MAX_MISSED_PONGS = 2
# Client frames that ask for work or an answer (pings, messages): a burst (`REQUEST_BURST`), then
# a rate (`REQUESTS_PER_SECOND`), both defined in the schema, which documents them. Beyond it the
# connection is closed with 4400, whether or not the client reads the answers.
ANSWERED_OPCODES = frozenset((OP_PING, OP_TEXT, OP_BINARY))
PING_FRAME = ws_frame(b"", OP_PING)  # the same bytes for every client
EMPTY_CLOSE_FRAME = ws_frame(b"", OP_CLOSE)

Write = Callable[[bytes], None]


class State(enum.IntEnum):
    """Where a connection is; the order matters (`state >= CLOSING`: nothing more is sent)."""

    CONNECTING = 0  # the 101 is sent; the client is being authenticated and greeted, not read
    OPEN = 1  # client frames are read and answered
    CLOSING = 2  # our close frame is sent; only the client's close frame still matters
    CLOSED = 3  # the close handshake is over (or failed): the socket is to be closed


class WebSocketProtocol:
    """One WebSocket connection's rules; writes through `write` and `write_final`.

    Args:
        write: queues bytes on the socket; counted against the session's write bound.
        write_final: queues the close frame (one per connection, small, so past the bound).
        max_message_bytes: the largest message a client may send (else 1009).
        deflate: permessage-deflate was negotiated, so compressed client frames are valid.
        limit_requests: apply the request rate limit (`REQUEST_BURST`, `REQUESTS_PER_SECOND`).
    """

    __slots__ = (
        "_discarding",
        "_limit_requests",
        "_missed_pongs",
        "_parser",
        "_requests",
        "_write",
        "_write_final",
        "close_code",
        "close_reason",
        "state",
    )

    def __init__(
        self,
        write: Write,
        write_final: Write,
        *,
        max_message_bytes: int,
        deflate: bool = False,
        limit_requests: bool = True,
    ) -> None:
        self.state = State.CONNECTING
        self.close_code: int | None = None  # the code the connection ended with (sent or received)
        self.close_reason = ""
        self._write = write
        self._write_final = write_final
        self._parser = FrameParser(max_message_bytes, deflate=deflate)
        self._missed_pongs = 0
        self._limit_requests = limit_requests
        self._requests: RateLimit | None = None  # made at the first request: most clients send few
        self._discarding = False

    @property
    def missed_pongs(self) -> int:
        """Pings sent since the client last answered one."""
        return self._missed_pongs

    # -- what the server sends --------------------------------------------------------------

    def open(self) -> None:
        """The client is authenticated and greeted: its frames are read from now on."""
        if self.state is State.CONNECTING:
            self.state = State.OPEN

    def send(self, frame: bytes) -> None:
        """Send a data frame, unless the close has begun (RFC 6455 §5.5.1)."""
        if self.state < State.CLOSING:
            self._write(frame)

    def ping(self) -> None:
        """Send a heartbeat ping; the third without a pong in between closes 1001 instead."""
        if self.state >= State.CLOSING:
            return
        if self._missed_pongs >= MAX_MISSED_PONGS:
            self.close(CloseCode.GOING_AWAY, "ping timeout")
            return
        self._missed_pongs += 1
        self._write(PING_FRAME)

    def close(self, code: int, reason: str) -> bool:
        """Begin the close handshake: send our close frame; True if this call sent it."""
        if self.state >= State.CLOSING:
            return False
        self.state = State.CLOSING
        self.close_code, self.close_reason = int(code), reason
        self._write_final(close_frame(int(code), reason))
        return True

    def lost(self) -> None:
        """The socket closed; without a close frame either way, the client left (1001)."""
        self.state = State.CLOSED
        if self.close_code is None:
            self.close_code, self.close_reason = int(CloseCode.GOING_AWAY), "client left"

    # -- what the client sends ------------------------------------------------------------

    def receive(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Parse client bytes, answering control frames; yields `(opcode, payload)` of each
        text or binary message to handle.

        Lazy: the caller handles each message before the next frame is parsed, so a message
        that closes the connection stops the ones after it.
        """
        if self._discarding or self.state >= State.CLOSED:
            return
        try:
            for opcode, payload in self._parser.feed(data):
                if opcode == OP_CLOSE:
                    self._on_close(payload)
                    return
                if self.state >= State.CLOSING:
                    continue  # after our close frame only the client's close frame matters
                if opcode in ANSWERED_OPCODES and not self._request_allowed():
                    self.close(CloseCode.TOO_MANY_BAD_MESSAGES, "too many messages")
                    self._discarding = True  # a flood is not worth parsing; its EOF still ends it
                    return
                if opcode == OP_PING:
                    self._write(ws_frame(payload, OP_PONG))
                elif opcode == OP_PONG:
                    self._missed_pongs = 0
                else:
                    yield opcode, payload
                    if self._discarding or self.state >= State.CLOSED:
                        return
        except ProtocolError as exc:
            self.close(exc.code, exc.reason)
            self.state = State.CLOSED  # a broken stream is not worth a handshake

    def _on_close(self, payload: bytes) -> None:
        code, reason = parse_close(payload)
        if self.state < State.CLOSING:  # the client began: answer with its code and finish
            self.close_code, self.close_reason = (code, reason) if code != NO_STATUS else (1000, "")
            self._write_final(close_frame(code) if code != NO_STATUS else EMPTY_CLOSE_FRAME)
        self.state = State.CLOSED

    def _request_allowed(self) -> bool:
        if not self._limit_requests:
            return True
        if self._requests is None:
            self._requests = RateLimit(REQUESTS_PER_SECOND, REQUEST_BURST)
        return self._requests.allow()
