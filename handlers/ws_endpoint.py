"""WebSocket at `/ws`: Tornado checks the upgrade request, then hands the socket to a
`WebSocketSession` (service.transports), which speaks the protocol itself; auth follows the
upgrade, so failures are close codes (4401) a browser can read.
"""

from __future__ import annotations

import logging

from tornado.web import HTTPError

from handlers.base import BaseHandler, credentials_of
from service.core.errors import AuthError, BadMessage, CloseCode, StoreUnavailable
from service.core.schema import TransportName
from service.fanout.connection import Connection
from service.protocol.frames import handshake_response, negotiate_deflate, valid_key
from service.protocol.wire import parse_event_list
from service.transports.takeover import take_over
from service.transports.ws import WebSocketSession

log = logging.getLogger(__name__)


class WebSocketEndpoint(BaseHandler):
    """`GET /ws`: validates the upgrade, answers 101, and hands the socket to a session."""

    transport_label = TransportName.WEBSOCKET

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
        handshake = handshake_response(key, deflate.response() if deflate else None)
        # The 101 goes out with the first frame after it: `connected`, or a refusal's close.
        session.hold(handshake)
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
