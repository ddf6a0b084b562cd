"""One Server-Sent Events client after the takeover: the response head, ready-made blocks
(as HTTP/1.1 chunks, or bare for HTTP/1.0, which ends the body by closing), and the end.

The session writes the whole response itself, head included, so the framing it chose is
the framing on the wire; nothing depends on how Tornado would have framed it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from email.utils import formatdate

from service.app.context import AppContext
from service.core.errors import CloseCode
from service.core.events import Payload
from service.core.schema import TransportName
from service.fanout.batch import Selection
from service.fanout.hub import Slot
from service.protocol.wire import Encoded, dumps, http_chunk, sse_block, sse_comment, sse_retry
from service.transports.session import StreamSession

# The headers that make a response an event stream no proxy buffers or transforms.
SSE_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache, no-transform"),
    ("X-Accel-Buffering", "no"),
)
HEARTBEAT = sse_comment("heartbeat")
HEARTBEAT_CHUNK = http_chunk(HEARTBEAT)
LAST_CHUNK = b"0\r\n\r\n"


def _chunk(encoded: Encoded) -> bytes:
    return encoded.sse_chunk


def _block(encoded: Encoded) -> bytes:
    return encoded.sse


def response_head(headers: Iterable[tuple[str, str]], *, chunked: bool) -> bytes:
    """The `200 OK` head of an event stream: `SSE_HEADERS`, then `headers`, then the framing.

    Raises:
        ValueError: a header name or value holds a line break (it would split the head).
    """
    lines = ["HTTP/1.1 200 OK", *(f"{name}: {value}" for name, value in (*SSE_HEADERS, *headers))]
    lines.append(f"Date: {formatdate(usegmt=True)}")
    lines.append("Transfer-Encoding: chunked" if chunked else "Connection: close")
    head = "\r\n".join(lines) + "\r\n\r\n"
    if head.count("\n") != len(lines) + 1:
        raise ValueError("line break in a response header")
    return head.encode("latin-1")


class EventStreamSession(StreamSession):
    """One SSE client; implements `service.fanout.connection.Transport`.

    Args:
        chunked: frame the body as HTTP/1.1 chunks (else the client speaks HTTP/1.0).
    """

    kind = TransportName.SSE
    __slots__ = ("_chunked", "_ended")

    def __init__(self, ctx: AppContext, slot: Slot | None = None, *, chunked: bool) -> None:
        super().__init__(ctx, slot)
        self._chunked = chunked
        self._ended: tuple[int, str] | None = None

    def begin(self, head: bytes) -> None:
        """Send the response head and the `retry:` field."""
        retry = sse_retry(self.ctx.settings.sse_retry_ms)
        self.write(head + (http_chunk(retry) if self._chunked else retry))

    def data_received(self, data: bytes) -> None:
        """An EventSource sends nothing after its request; anything else is ignored."""

    def send_event(self, encoded: Encoded) -> None:
        if self._ended is None:
            self.write(encoded.sse_chunk if self._chunked else encoded.sse)

    def send_batch(self, selection: Selection) -> None:
        """The events' blocks (chunked: their chunks) in one write."""
        if self._ended is None:
            if self._chunked:
                self.write(selection.joined("sse_chunk", _chunk))
            else:
                self.write(selection.joined(TransportName.SSE, _block))

    def send_message(self, payload: Payload) -> None:
        if self._ended is None:
            block = sse_block(dumps(payload), event=str(payload["type"]))
            self.write(http_chunk(block) if self._chunked else block)

    def heartbeat(self) -> None:
        if self._ended is None:
            self.write(HEARTBEAT_CHUNK if self._chunked else HEARTBEAT)

    def ended(self) -> tuple[int, str] | None:
        return self._ended

    def close(self, code: CloseCode | int, reason: str) -> None:
        """End the response: a `close` event (or, when draining, a random `retry:`) first."""
        transport = self._transport
        if self._ended is not None or transport is None or transport.is_closing():
            return
        self._ended = (int(code), reason)
        if code == CloseCode.SLOW_CONSUMER:
            transport.abort()  # it does not read, so nothing more can reach it
            return
        if code == CloseCode.SERVICE_RESTART:
            last = sse_retry(random.randint(1000, 5000))  # spread a draining process's reconnects
        elif code == CloseCode.TRY_AGAIN_LATER:  # EventSource reconnects by itself, spread out
            last = sse_retry(random.randint(1000, 5000)) + sse_block(
                json.dumps({"code": int(code), "reason": reason}).encode(), event="close"
            )
        else:
            last = sse_block(json.dumps({"code": int(code), "reason": reason}).encode(), event="close")
        self.write_final(http_chunk(last) + LAST_CHUNK if self._chunked else last)
        transport.close()
