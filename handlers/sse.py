"""Server-Sent Events at `/events`: same auth, messages and guarantees as `/ws`.

Tornado authenticates the request and sends the response head and `retry:`; the socket
is then taken over by an `EventStreamSession`, which writes ready-made blocks (as HTTP
chunks when the response is chunked) and ends the response itself.
"""

from __future__ import annotations

import json
import random

from tornado.iostream import StreamClosedError

from handlers.base import BaseHandler
from handlers.stream import StreamSession, take_over
from service.connection import Connection
from service.context import AppContext
from service.errors import CloseCode
from service.events import Payload
from service.hub import Slot
from service.wire import Encoded, dumps, http_chunk, parse_event_list, sse_block, sse_comment, sse_retry

HEARTBEAT = sse_comment("heartbeat")
HEARTBEAT_CHUNK = http_chunk(HEARTBEAT)
LAST_CHUNK = b"0\r\n\r\n"


class EventStreamEndpoint(BaseHandler):
    """`GET /events`: authenticates, starts the response, and hands the socket to a session."""

    transport_label = "sse"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-transform")
        self.set_header("X-Accel-Buffering", "no")

    def compute_etag(self) -> None:
        return None

    async def get(self) -> None:
        ctx = self.ctx
        if ctx.lifecycle.draining:
            self.reject(503, "draining", {"Retry-After": "1"})
            return
        principal = await self.principal()
        raw_events = self.get_query_argument("events", None)
        subscriptions = parse_event_list(raw_events) if raw_events else None
        last_id = self.request.headers.get("Last-Event-ID") or self.get_query_argument("last_event_id", None)
        remote = self.request.remote_ip or ""
        # The slot is taken before the first await below, so concurrent requests cannot all pass.
        slot = ctx.hub.reserve(principal.user_id)
        if slot is None:
            self.set_header("Retry-After", "5")
            self.write_json({"error": "too_many_connections", "reason": "too many connections"}, 429)
            return
        session: EventStreamSession | None = None
        try:
            self.set_status(200)
            self.write(sse_retry(ctx.settings.sse_retry_ms))
            try:
                await self.flush()
            except StreamClosedError:
                return  # the client left before the stream began
            # Tornado chose the framing with the head (chunked for HTTP/1.1); the session keeps it.
            chunked = bool(getattr(self.request.connection, "_chunking_output", False))
            self.application.log_request(self)
            sock, _ = take_over(self)
            session = EventStreamSession(ctx, slot, chunked=chunked)
            await session.attach(sock)
        finally:
            if session is None or not session.made:  # else the session gives it back when it ends
                slot.release()
        connection = Connection(
            session, principal, subscriptions=subscriptions, last_event_id=last_id or None, remote=remote
        )
        await session.start(connection, principal.expires_at)


class EventStreamSession(StreamSession):
    """One SSE client; implements `service.connection.Transport`."""

    kind = "sse"
    __slots__ = ("_chunked",)

    def __init__(self, ctx: AppContext, slot: Slot | None = None, *, chunked: bool) -> None:
        super().__init__(ctx, slot)
        self._chunked = chunked

    def data_received(self, data: bytes) -> None:
        """An EventSource sends nothing after its request; anything else is ignored."""

    def send_event(self, encoded: Encoded) -> None:
        self.write(encoded.sse_chunk if self._chunked else encoded.sse)

    def send_message(self, payload: Payload) -> None:
        self._raw(sse_block(dumps(payload), event=str(payload["type"])))

    def heartbeat(self) -> None:
        self.write(HEARTBEAT_CHUNK if self._chunked else HEARTBEAT)

    def close(self, code: CloseCode | int, reason: str) -> None:
        """End the response: a `close` event (or, when draining, a random `retry:`) first."""
        transport = self._transport
        if self._close_code is not None or transport is None or transport.is_closing():
            return
        self._close_code, self._close_reason = int(code), reason
        if code == CloseCode.SLOW_CONSUMER:
            transport.abort()  # it does not read, so nothing more can reach it
            return
        if code == CloseCode.SERVICE_RESTART:
            last = sse_retry(random.randint(1000, 5000))  # spread a draining process's reconnects
        else:
            last = sse_block(json.dumps({"code": int(code), "reason": reason}).encode(), event="close")
        self.write_final(http_chunk(last) + LAST_CHUNK if self._chunked else last)
        transport.close()

    def _raw(self, data: bytes) -> None:
        """Write an SSE block that was not pre-framed as an HTTP chunk."""
        self.write(http_chunk(data) if self._chunked else data)
