"""Server-Sent Events transport at `/events`: same auth, messages and guarantees as `/ws`."""

from __future__ import annotations

import asyncio
import json
import logging
import random

from tornado.iostream import StreamClosedError

from handlers.base import BaseHandler
from handlers.stream import TokenClock, log_disconnect, open_session, pending_bytes, write_nowait
from service.connection import Connection
from service.errors import CloseCode
from service.events import Payload
from service.wire import Encoded, dumps, http_chunk, parse_event_list, sse_block, sse_comment, sse_retry

log = logging.getLogger(__name__)

HEARTBEAT = sse_comment("heartbeat")
HEARTBEAT_CHUNK = http_chunk(HEARTBEAT)


class EventStreamTransport(BaseHandler):
    """One SSE client; implements `service.connection.Transport`."""

    kind = "sse"
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
            self.set_header("Retry-After", "1")
            self.send_error(503)
            return
        principal = await self.principal()
        raw_events = self.get_query_argument("events", None)
        subscriptions = parse_event_list(raw_events) if raw_events else None
        if not ctx.hub.has_room_for(principal.user_id):
            self.set_header("Retry-After", "5")
            self.write_json({"error": "too_many_connections", "reason": "too many connections"}, 429)
            return
        last_id = self.request.headers.get("Last-Event-ID") or self.get_query_argument("last_event_id", None)
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunked = False
        self._close_code = int(CloseCode.NORMAL)
        self._close_reason = ""
        self.connection = Connection(
            self,
            principal,
            subscriptions=subscriptions,
            last_event_id=last_id or None,
            remote=self.request.remote_ip or "",
        )
        self.set_status(200)
        # Headers and the retry field go out first; open_session then writes `connected` and
        # any replay through the same raw path as live events.
        self.write(sse_retry(ctx.settings.sse_retry_ms))
        flushed = self.flush()
        # From here on bytes go straight to the socket, framed as HTTP chunks when the
        # response is chunked (HTTP/1.1), the way Tornado would have framed them.
        self._chunked = bool(getattr(self.request.connection, "_chunking_output", False))
        clock = TokenClock(self.connection)
        try:
            await open_session(ctx, self.connection)
            clock.start(principal.expires_at)
            await flushed
            await self._done
        except StreamClosedError:
            pass
        finally:
            clock.stop()
            self.connection.closed = True
            ctx.hub.detach(self.connection)
            ctx.metrics.disconnects.labels(self.kind, str(self._close_code)).inc()
            log_disconnect(self.connection, self._close_code, self._close_reason)

    def on_connection_close(self) -> None:
        if hasattr(self, "_done") and not self._done.done():
            self._close_code, self._close_reason = int(CloseCode.GOING_AWAY), "client left"
            self._end()

    # -- Transport ------------------------------------------------------------------------

    def send_event(self, encoded: Encoded) -> None:
        self._write(encoded.sse_chunk if self._chunked else encoded.sse)

    def send_message(self, payload: Payload) -> None:
        self._raw(sse_block(dumps(payload), event=str(payload["type"])))

    def heartbeat(self) -> None:
        self._write(HEARTBEAT_CHUNK if self._chunked else HEARTBEAT)

    def pending_bytes(self) -> int:
        return pending_bytes(self.request.connection.stream)  # type: ignore[union-attr]

    def close(self, code: CloseCode, reason: str) -> None:
        if self._done.done():
            return
        self._close_code, self._close_reason = int(code), reason
        if code == CloseCode.SLOW_CONSUMER:
            # It does not read, so nothing more can reach it: drop the socket.
            self.request.connection.stream.close()  # type: ignore[union-attr]
        elif code == CloseCode.SERVICE_RESTART:
            # Spread the reconnects of a draining process over a few seconds.
            self._raw(sse_retry(random.randint(1000, 5000)))
        else:
            self._raw(sse_block(json.dumps({"code": int(code), "reason": reason}).encode(), event="close"))
        self._end()  # get() returns and Tornado ends the response

    def _raw(self, data: bytes) -> None:
        """Write an SSE block that was not pre-framed as an HTTP chunk."""
        self._write(http_chunk(data) if self._chunked else data)

    def _write(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            write_nowait(self.request.connection.stream, data)  # type: ignore[union-attr]
        except StreamClosedError:
            self._close_code, self._close_reason = int(CloseCode.GOING_AWAY), "client left"
            self._end()

    def _end(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
