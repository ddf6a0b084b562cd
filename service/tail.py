"""`python -m service tail`: follow the events from a terminal (WebSocket, SSE or long-polling),
reconnecting like the browser client (full jitter from 1 s, capped at 5 s: `service/backoff.py`)
and resuming from the last id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from service.backoff import Backoff
from service.errors import CloseCode
from service.schema import FINAL_CLOSE_CODES
from service.sse_parser import SseParser

# Close codes after which it exits instead of reconnecting: the schema's client policy, as in web/.
FINAL_CODES = FINAL_CLOSE_CODES


class Follower:
    """One reconnecting subscription that prints every message as a JSON line."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.url.rstrip("/")
        self.token = args.token
        self.sse = args.sse
        self.poll = getattr(args, "poll", False)
        self.events = args.events
        self.last_id: str | None = args.last_event_id
        self.max_events = args.max_events
        self.count = 0
        self.final: int | None = None  # a close code that means "do not retry"
        self.backoff = Backoff()

    def _query(self) -> str:
        params = {"token": self.token}
        if self.events:
            params["events"] = self.events
        if self.last_id:
            params["last_event_id"] = self.last_id
        return urlencode(params)

    def _emit(self, text: str) -> bool:
        """Print one message; False when the event budget is spent."""
        try:
            message = json.loads(text)
        except ValueError:
            return True
        if isinstance(message, dict) and isinstance(message.get("id"), str):
            self.last_id = message["id"]
        if isinstance(message, dict) and message.get("type") == "connected":
            self.backoff.connected(time.monotonic())
        print(json.dumps(message, ensure_ascii=False), flush=True)
        if isinstance(message, dict) and message.get("type") not in ("connected", "pong"):
            self.count += 1
        return not (self.max_events and self.count >= self.max_events)

    async def websocket_once(self) -> None:
        url = self.base.replace("http", "ws", 1) + "/ws?" + self._query()
        conn = await websocket_connect(url)
        while True:
            message = await conn.read_message()
            if message is None:
                code = conn.close_code or CloseCode.GOING_AWAY
                print(f"closed {code} {conn.close_reason or ''}".strip(), file=sys.stderr)
                if code in FINAL_CODES:
                    self.final = code
                return
            if not self._emit(message if isinstance(message, str) else message.decode()):
                conn.close()
                self.final = CloseCode.NORMAL
                return

    async def sse_once(self) -> None:
        parser = SseParser()

        def on_chunk(chunk: bytes) -> None:
            for event in parser.feed(chunk):
                if event.event == "close":
                    self.final = json.loads(event.data).get("code", CloseCode.NORMAL)
                elif not self._emit(event.data):
                    self.final = CloseCode.NORMAL
                    raise StopAsyncIteration

        request = HTTPRequest(
            self.base + "/events?" + self._query(),
            headers={
                "Accept": "text/event-stream",
                **({"Last-Event-ID": self.last_id} if self.last_id else {}),
            },
            streaming_callback=on_chunk,
            request_timeout=10**7,
            connect_timeout=10,
        )
        try:
            await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            if exc.code in (401, 403):
                self.final = CloseCode.UNAUTHORIZED if exc.code == 401 else CloseCode.FORBIDDEN
            raise

    async def poll_once(self) -> None:
        """Poll until something ends it: `connected` first, then each answer's cursor."""
        cursor: str | None = None
        while True:
            params = {"events": self.events} if self.events else {}
            if cursor is not None:
                params["cursor"] = cursor
            elif self.last_id:
                params["last_event_id"] = self.last_id
            request = HTTPRequest(
                self.base + "/poll" + ("?" + urlencode(params) if params else ""),
                headers={"Authorization": f"Bearer {self.token}"},  # as for REST: no token in the URL
                request_timeout=120,
                connect_timeout=10,
            )
            try:
                response = await AsyncHTTPClient().fetch(request)
            except HTTPClientError as exc:
                if exc.code in (401, 403):
                    self.final = CloseCode.UNAUTHORIZED if exc.code == 401 else CloseCode.FORBIDDEN
                raise
            answer = json.loads(response.body)
            for message in answer.get("messages", []):
                if message.get("type") == "close":
                    code = int(message.get("code", CloseCode.NORMAL))
                    print(f"closed {code} {message.get('reason', '')}".strip(), file=sys.stderr)
                    if code in FINAL_CODES:
                        self.final = code
                    return
                if not self._emit(json.dumps(message)):
                    self.final = CloseCode.NORMAL
                    return
            if isinstance(answer.get("cursor"), str):
                cursor = self.last_id = answer["cursor"]
            elif cursor is None:
                cursor = self.last_id or ""

    async def run(self) -> int:
        while True:
            try:
                if self.poll:
                    await self.poll_once()
                else:
                    await (self.sse_once() if self.sse else self.websocket_once())
            except StopAsyncIteration:
                pass
            except (OSError, HTTPClientError) as exc:
                print(f"connection failed: {exc}", file=sys.stderr)
            if self.final is not None:
                return 0 if self.final == CloseCode.NORMAL else 1
            delay = self.backoff.next_delay(time.monotonic())
            print(f"reconnecting in {delay:.1f}s", file=sys.stderr)
            await asyncio.sleep(delay)


def tail(args: argparse.Namespace) -> int:
    if not args.token:
        print("tail needs --token (or REALTIME_TOKEN)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(Follower(args).run())
    except KeyboardInterrupt:
        return 0
