"""`RealtimeClient`: one resuming subscription, as an async iterator of messages.

WebSocket first, SSE after two WebSocket attempts that never opened, long-polling after two
such SSE attempts (a remembered fallback is tried upward again after `upgrade_after`). Every
drop — a close code that means retry, a 503 while draining or resuming, a 429, a silent
connection, a process restart — reconnects with the schema's backoff and resumes after the last
event received. The position store is saved after the consumer asks for the next message, so a
restarted worker resumes after the last event it finished (at least once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Literal, NoReturn
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from realtime_client.api import Api, TokenSource, resolve_token, retry_after
from realtime_client.backoff import Backoff
from realtime_client.errors import ApiError, Stopped
from realtime_client.http_stream import HttpStream
from realtime_client.position import MemoryPositionStore, PositionStore
from realtime_client.schema import CLOSE_CODES, CLOSE_POLICY, CONTROL_TYPES
from realtime_client.sse import SseParser

Message = dict[str, Any]
Transport = Literal["websocket", "sse", "poll"]
Status = Literal["idle", "connecting", "open", "reconnecting", "closed"]
TRANSPORTS: tuple[Transport, ...] = ("websocket", "sse", "poll")
FALLBACK_AFTER = 2  # attempts of one transport that never reached `connected` before the next one
LIVENESS_NONCE = "liveness"  # the silence check's pings; their pongs are not yielded
SSE_SILENT_HEARTBEATS = 3  # an SSE stream silent this many heartbeats (comments included) is dead
POLL_MARGIN = 15.0  # seconds beyond `heartbeatSeconds` before a poll counts as lost
log = logging.getLogger("realtime_client")
NORMAL = CLOSE_CODES["NORMAL"]
ABNORMAL = CLOSE_CODES["ABNORMAL"]
UNAUTHORIZED = CLOSE_CODES["UNAUTHORIZED"]


class _Reconnect(Exception):
    """This connection is over; connect again (after `delay` at least, or a new token first)."""

    def __init__(
        self, why: str, *, delay: float = 0.0, reauth: bool = False, unopened: bool = False, now: bool = False
    ) -> None:
        super().__init__(why)
        self.delay = delay
        self.reauth = reauth
        self.unopened = unopened  # never reached `connected`: counts towards the transport fallback
        self.now = now  # no backoff (a token refresh over SSE)


class _Ended(Exception):
    """Closed with 1000, or by `close()`: the iteration ends."""


class RealtimeClient:
    """Follow the service's stream with reconnects and resume.

    Args:
        url: the service's base URL (`http://127.0.0.1:5001`).
        token: a JWT, or `get_token`: a callable (sync or async) asked again on `token_expiring`
            and when the token is refused; a refused token that it does not replace stops the
            client with `Stopped("unauthorized")`.
        events: only these event types (default: all).
        position: where the last processed event id is kept (default: in memory); see
            `FilePositionStore` to resume after a restart.
        last_event_id: resume after this id (overrides the position store's at start).
        transports: allowed transports, in order of preference.
        use_ticket: connect WebSocket and SSE with a one-time `?ticket=` instead of the
            Authorization header (for proxies that strip it).
        controls: also yield control messages (`connected`, `token_expiring`, `pong`, ...);
            events and `resync` are always yielded.

    Iterating yields events and `resync` (refetch your state over REST: the position was
    older than the retained history). It ends after a close with 1000 or `close()`, and raises
    `Stopped` after a close that must not be retried (4403, 4000, 1009, 4400, or 4401 without a
    new token).
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        events: Sequence[str] | None = None,
        position: PositionStore | None = None,
        last_event_id: str | None = None,
        transports: Sequence[Transport] = TRANSPORTS,
        use_ticket: bool = False,
        controls: bool = False,
        open_timeout: float = 10.0,
        upgrade_after: float = 600.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.base = url.rstrip("/")
        self.token_source = token
        self.events = list(events or ())
        self.position: PositionStore = position or MemoryPositionStore()
        self.last_event_id = last_event_id or self.position.load()
        self.transports = tuple(transports)
        self.use_ticket = use_ticket
        self.controls = controls
        self.open_timeout = open_timeout
        self.upgrade_after = upgrade_after
        self.backoff = backoff or Backoff()
        self.status: Status = "idle"
        self.transport: Transport | None = None
        self.heartbeat: float | None = None  # from `connected`
        self.resumed: bool | None = None  # from the last `connected`
        self._token: str | None = None
        self._index = 0
        self._failures = 0
        self._fallback_at = 0.0
        self._ws: WebSocketClientConnection | None = None
        self._stream: HttpStream | None = None
        self._wake: asyncio.Queue[bytes | None] | None = None

    async def __aenter__(self) -> RealtimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.messages()

    @property
    def closed(self) -> bool:
        """True after `close()` or a final close code."""
        return self._is_closed()

    def _is_closed(self) -> bool:  # a call: mypy does not narrow it across awaits
        return self.status == "closed"

    def close(self) -> None:
        """End the iteration: the current connection is closed, nothing reconnects."""
        self.status = "closed"
        if self._ws is not None:
            self._ws.close(NORMAL)
        if self._stream is not None:
            self._stream.close()
        if self._wake is not None:
            self._wake.put_nowait(None)

    async def messages(self) -> AsyncGenerator[Message]:
        """The messages, across reconnects; see the class docstring."""
        self.status = "connecting"
        while not self._is_closed():
            self.transport = self._choose()
            opened = False
            try:
                async for message in self._session(self.transport):
                    opened = True
                    yield message
                    if _is_event(message):
                        self.position.save(message["id"])
            except _Ended:
                break
            except _Reconnect as drop:
                if self._is_closed():  # close() was called while this connection ran
                    break
                await self._after_drop(drop, opened)
        self.status = "closed"

    # -- between connections ------------------------------------------------------------------

    def _choose(self) -> Transport:
        if self._index and time.monotonic() - self._fallback_at > self.upgrade_after:
            self._index = self._failures = 0  # a remembered fallback: try WebSocket again
        return self.transports[self._index]

    async def _after_drop(self, drop: _Reconnect, opened: bool) -> None:
        self.status = "reconnecting"
        if drop.reauth:
            fresh = await resolve_token(self.token_source)
            if fresh == self._token:
                self.status = "closed"
                raise Stopped("unauthorized", UNAUTHORIZED, "the token was refused and get_token gave no other")
            self._token = fresh
            return
        if drop.unopened and not opened:
            self._failures += 1
            if self._failures >= FALLBACK_AFTER and self._index + 1 < len(self.transports):
                self._index += 1
                self._failures = 0
                self._fallback_at = time.monotonic()
        if drop.now:
            return
        delay = max(self.backoff.next_delay(time.monotonic()), drop.delay)
        log.info("%s (%s): reconnecting in %.1f s", drop, self.transport, delay)
        await asyncio.sleep(delay)

    async def _current_token(self) -> str:
        if self._token is None:
            self._token = await resolve_token(self.token_source)
        return self._token

    async def _refreshed_token(self) -> bool:
        """Ask for a new token (on `token_expiring`); True when it differs from the current one."""
        fresh = await resolve_token(self.token_source)
        if fresh == self._token:
            return False
        self._token = fresh
        return True

    async def _auth(self) -> tuple[dict[str, str], dict[str, str]]:
        """Query parameters and headers of a connect: a ticket, or the Bearer header."""
        params = {"events": ",".join(self.events)} if self.events else {}
        if self.last_event_id:
            params["last_event_id"] = self.last_event_id
        token = await self._current_token()
        if not self.use_ticket:
            return params, {"Authorization": f"Bearer {token}"}
        try:
            params["ticket"] = await Api(self.base, token, retries=0, timeout=self.open_timeout).ticket()
        except ApiError as exc:
            raise _refused(exc.status, None) from exc
        except (OSError, HTTPClientError) as exc:
            raise _Reconnect(f"ticket: {exc}", unopened=True) from exc
        return params, {}

    # -- one connection -------------------------------------------------------------------------

    def _session(self, transport: Transport) -> AsyncIterator[Message]:
        if transport == "websocket":
            return self._websocket()
        if transport == "sse":
            return self._sse()
        return self._poll()

    def _accept(self, message: Message) -> bool:
        """Track the connection's state from one message; True when it is to be yielded."""
        kind = message.get("type")
        if kind == "connected":
            self.backoff.connected(time.monotonic())
            self._failures = 0
            self.status = "open"
            self.resumed = bool(message.get("resumed"))
            heartbeat = message.get("heartbeatSeconds")
            self.heartbeat = float(heartbeat) if isinstance(heartbeat, int | float) and heartbeat > 0 else None
        elif kind == "close":
            _closed(int(message.get("code", ABNORMAL)), str(message.get("reason", "")))
        elif kind == "pong" and message.get("nonce") == LIVENESS_NONCE:
            return False
        if _is_event(message):
            self.last_event_id = message["id"]
            return True
        return kind == "resync" or self.controls

    def _silence(self, factor: float) -> float:
        return self.heartbeat * factor if self.heartbeat and self.status == "open" else self.open_timeout

    async def _websocket(self) -> AsyncIterator[Message]:
        params, headers = await self._auth()
        url = self.base.replace("http", "ws", 1) + "/ws?" + urlencode(params)
        request = HTTPRequest(
            url, headers=headers, connect_timeout=self.open_timeout, request_timeout=self.open_timeout
        )
        try:
            conn = await websocket_connect(request)
        except HTTPClientError as exc:
            raise _refused(exc.code, exc.response) from exc
        except (OSError, StreamClosedError) as exc:
            raise _Reconnect(f"websocket: {exc}", unopened=True) from exc
        self._ws = conn
        pinged = False
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(conn.read_message(), self._silence(1))
                except TimeoutError:
                    if pinged or self.status != "open":
                        raise _Reconnect("silent", unopened=self.status != "open") from None
                    await conn.write_message(json.dumps({"type": "ping", "nonce": LIVENESS_NONCE}))
                    pinged = True
                    continue
                pinged = False
                if raw is None:
                    if self._is_closed():
                        raise _Ended
                    _closed(conn.close_code or ABNORMAL, conn.close_reason or "")
                message = json.loads(raw)
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "token_expiring" and await self._refreshed_token():
                    await conn.write_message(json.dumps({"type": "auth", "token": self._token}))
                if self._accept(message):
                    yield message
        except (WebSocketClosedError, StreamClosedError) as exc:
            raise _Reconnect(f"websocket: {exc}") from exc
        finally:
            self._ws = None
            conn.close()

    async def _sse(self) -> AsyncIterator[Message]:
        params, headers = await self._auth()
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id  # the header wins over `last_event_id=`
        url = self.base + "/events?" + urlencode(params)
        try:
            stream = await HttpStream.open(url, {"Accept": "text/event-stream", **headers}, self.open_timeout)
        except (OSError, TimeoutError) as exc:
            raise _Reconnect(f"sse: {exc!r}", unopened=True) from exc
        self._stream = stream
        try:
            if stream.status != 200:
                raise _refused(stream.status, stream.headers.get("retry-after"))
            parser = SseParser()
            body = stream.body()
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(body, None), self._silence(SSE_SILENT_HEARTBEATS))
                except TimeoutError:
                    raise _Reconnect("silent", unopened=self.status != "open") from None
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    if self._is_closed():
                        raise _Ended from None
                    raise _Reconnect(f"sse: {exc!r}") from exc
                if chunk is None:
                    if self._is_closed():
                        raise _Ended
                    # Ended without a `close` event: a drain (after a random `retry:`, to spread reconnects).
                    delay = parser.retry_ms / 1000 if parser.retry_ms is not None else 0.0
                    raise _Reconnect("sse stream ended", delay=delay, unopened=self.status != "open")
                for event in parser.feed(chunk):
                    data = json.loads(event.data)
                    if event.event == "close":
                        _closed(int(data.get("code", ABNORMAL)), str(data.get("reason", "")), parser.retry_ms)
                    if not isinstance(data, dict):
                        continue
                    if data.get("type") == "connected":
                        parser.retry_ms = None  # the opening `retry:`; one after this is a drain's
                    if self._accept(data):
                        yield data
                    if data.get("type") == "token_expiring" and await self._refreshed_token():
                        raise _Reconnect("token refreshed", now=True)
        finally:
            self._stream = None
            stream.close()

    async def _poll(self) -> AsyncIterator[Message]:
        cursor: str | None = None
        while True:
            if self._is_closed():  # closed while a message was with the caller: no next poll
                raise _Ended
            params = {"events": ",".join(self.events)} if self.events else {}
            if cursor is not None:
                params["cursor"] = cursor
            elif self.last_event_id:
                params["last_event_id"] = self.last_event_id
            request = HTTPRequest(
                self.base + "/poll" + ("?" + urlencode(params) if params else ""),
                headers={"Authorization": f"Bearer {await self._current_token()}"},
                connect_timeout=self.open_timeout,
                request_timeout=(self.heartbeat or 30.0) + POLL_MARGIN,
            )
            answer_task = asyncio.ensure_future(AsyncHTTPClient().fetch(request, raise_error=False))
            wake: asyncio.Queue[bytes | None] = asyncio.Queue()
            self._wake = wake
            waiter: asyncio.Future[Any] = asyncio.ensure_future(wake.get())
            try:
                await asyncio.wait((answer_task, waiter), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                self._wake = None
            if self._is_closed():
                answer_task.add_done_callback(_observe)
                raise _Ended
            try:
                response = answer_task.result()
            except (OSError, HTTPClientError) as exc:
                raise _Reconnect(f"poll: {exc}", unopened=cursor is None) from exc
            if response.code != 200:
                raise _refused(response.code, response)
            answer = json.loads(response.body)
            for message in answer.get("messages", []):
                if message.get("type") == "token_expiring":
                    await self._refreshed_token()  # the next poll carries it
                if self._accept(message):
                    yield message
            if isinstance(answer.get("cursor"), str):
                cursor = answer["cursor"]
            elif cursor is None:
                cursor = self.last_event_id or ""


def _is_event(message: Message) -> bool:
    """An application event: its id is a stream position."""
    return isinstance(message.get("id"), str) and message.get("type") not in CONTROL_TYPES


def _closed(code: int, reason: str, retry_ms: int | None = None) -> NoReturn:
    """Act on a close code as the schema's client policy says."""
    action, stop_reason = CLOSE_POLICY.get(code, ("retry", ""))
    if code == NORMAL:
        raise _Ended
    if action == "stop":
        raise Stopped(stop_reason, code, reason)
    if action == "reauth":
        raise _Reconnect(f"closed {code} {reason}", reauth=True)
    raise _Reconnect(f"closed {code} {reason}", delay=(retry_ms or 0) / 1000)


def _refused(code: int, retry: HTTPResponse | str | None) -> Exception:
    """What an HTTP refusal of a connect or poll means for the client."""
    if code == 401:
        return _Reconnect("401", reauth=True)
    if code == 403:
        return Stopped("forbidden", CLOSE_CODES["FORBIDDEN"], "403")
    if code in (400, 413, 414, 431):
        return Stopped("client_error", None, f"HTTP {code}")
    if code in (429, 503):  # over a limit, draining, or a resume not admitted now: back off, resume
        header = retry.headers.get("Retry-After") if isinstance(retry, HTTPResponse) else retry
        return _Reconnect(f"HTTP {code}", delay=retry_after(header, 0.0))
    return _Reconnect(f"HTTP {code}", unopened=True)


def _observe(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned request's outcome, so asyncio does not report it as lost."""
    if not future.cancelled():
        future.exception()
