"""Server-Sent Events at `/events`: same auth, messages and guarantees as `/ws`.

Tornado authenticates the request and answers errors; an accepted stream is taken over
at once by an `EventStreamSession` (service.transports), which writes the response head,
`retry:`, and every block after.
"""

from __future__ import annotations

from handlers.base import DEFAULT_CSP, SECURITY_HEADERS, BaseHandler
from service.core.schema import TransportName
from service.fanout.connection import Connection
from service.protocol.wire import parse_event_list
from service.transports.sse import SSE_HEADERS, EventStreamSession, response_head
from service.transports.takeover import take_over


class EventStreamEndpoint(BaseHandler):
    """`GET /events`: authenticates, then hands the socket to a session that answers."""

    transport_label = TransportName.SSE

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for name, value in SSE_HEADERS:
            self.set_header(name, value)

    def compute_etag(self) -> None:
        return None

    def stream_headers(self) -> list[tuple[str, str]]:
        """What the session's head carries besides `SSE_HEADERS`: CORS and security headers
        (the ones `SecurityHeaders` gives every response Tornado writes)."""
        headers = []
        origin = self.request.headers.get("Origin")
        if origin and self.origin_allowed(origin):
            headers += [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true")]
            headers.append(("Vary", "Origin"))
        headers += SECURITY_HEADERS.items()
        headers.append(("Content-Security-Policy", DEFAULT_CSP))
        return headers

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
            chunked = self.request.version == "HTTP/1.1"
            head = response_head(self.stream_headers(), chunked=chunked)
            self.set_status(200)
            self.application.log_request(self)
            sock, _ = take_over(self)
            session = EventStreamSession(ctx, slot, chunked=chunked)
            await session.attach(sock)
        finally:
            if session is None or not session.made:  # else the session gives it back when it ends
                slot.release()
        session.begin(head)
        connection = Connection(
            session, principal, subscriptions=subscriptions, last_event_id=last_id or None, remote=remote
        )
        await session.start(connection, principal.expires_at)
