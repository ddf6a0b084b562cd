"""HTTP long-polling at `/poll`, for clients behind proxies that hold streamed responses back.

`GET /poll` (optionally `?last_event_id=`) connects: the answer starts with `connected`.
`GET /poll?cursor=<id>` continues: the events after the id, or, when none are pending, an
empty list after up to POLL_TIMEOUT_SECONDS. Each answer is one complete JSON body
`{"messages": [...], "cursor": "<id>"}`, so a buffering proxy passes it on whole.

Credentials: the Authorization header, the cookie or a ticket, never `?token=`. A poller sends
its credential on every request, every ~25 s, so a token in the URL would land in every proxy's
and browser's history; it is refused with 401 `token in URL` (polls authenticate by header or
cookie; tickets are single-use, so they may ride in a URL).
"""

from __future__ import annotations

import math

from handlers.base import BaseHandler, credentials_of
from service.app.context import AppContext
from service.core.errors import AuthError, ReplayBusy
from service.core.identity import Principal
from service.core.schema import TransportName
from service.fanout.connection import Connection
from service.fanout.pace import Paced, Pacer
from service.protocol.wire import parse_event_list
from service.transports.poll import PollTransport, VerifiedTokens, poll


class PollHandler(BaseHandler):
    """`GET /poll`: authenticated like REST, limited like a stream, answered as JSON."""

    transport_label = TransportName.POLL
    _transport: PollTransport | None = None

    def initialize(self, ctx: AppContext, tokens: VerifiedTokens | None = None, pacer: Pacer | None = None) -> None:
        super().initialize(ctx)
        self.tokens = tokens
        self.pacer = pacer

    async def poller(self) -> Principal:
        """`principal()`, remembering a verified bearer token or cookie for the next polls."""
        credentials = credentials_of(self.request)
        if credentials.token is not None:
            reason = "token in URL"
            self.ctx.metrics.auth_failures.labels(self.transport_label, reason).inc()
            raise AuthError(reason)
        token: str | None = None
        if credentials.authorization is not None:
            scheme, _, value = credentials.authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        elif credentials.cookie:
            token = credentials.cookie
        if self.tokens is None or not token:
            return await self.principal()
        principal = self.tokens.get(token)
        if principal is None:
            principal = await self.principal()
            self.tokens.put(token, principal)
        return principal

    def compute_etag(self) -> None:
        return None

    async def get(self) -> None:
        ctx = self.ctx
        if ctx.lifecycle.draining:
            self.reject(503, "draining", {"Retry-After": "1"})
            return
        principal = await self.poller()
        raw_events = self.get_query_argument("events", None)
        subscriptions = parse_event_list(raw_events) if raw_events else None
        cursor = self.get_query_argument("cursor", None)
        last_id = cursor or self.request.headers.get("Last-Event-ID") or self.get_query_argument("last_event_id", None)
        # Reserved before any await, so concurrent polls cannot all pass the per-user limit.
        slot = ctx.hub.reserve(principal.user_id)
        if slot is None:
            self.set_header("Retry-After", "5")
            self.write_json({"error": "too_many_connections", "reason": "too many connections"}, 429)
            return
        try:
            if self.pacer is not None:
                try:
                    await self.pacer.take(principal.user_id)
                except Paced as exc:
                    self.reject(429, "too many polls", {"Retry-After": str(math.ceil(exc.retry_after))})
                    return
            transport = self._transport = PollTransport(last_id or None)
            connection = Connection(
                transport,
                principal,
                subscriptions=subscriptions,
                last_event_id=last_id or None,
                remote=self.request.remote_ip or "",
            )
            try:
                await poll(ctx, connection, transport, connect=not cursor)
            except ReplayBusy as exc:
                self.reject(503, f"resume not admitted now: {exc}", {"Retry-After": "2"})
                return
            self.set_status(200)
            self.finish(transport.body())
        finally:
            slot.release()

    def on_connection_close(self) -> None:
        """The client left: stop waiting, and give its slot back now."""
        if self._transport is not None:
            self._transport.abort()
