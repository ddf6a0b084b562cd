"""The naive baseline: a Tornado server that broadcasts with `write_message` per client.

Same URLs, JWT check and JSON as the service, none of its fan-out work: no pre-encoded
frames, no bypass of `IOStream.write`, no MongoDB. `POST /publish` takes the event fields
and broadcasts at once. Run: `python -m bench.naive_server --port P --secret S`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from datetime import UTC, datetime
from typing import Any

import jwt
import tornado.web
import tornado.websocket
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets


class Clients:
    """Every open client, by transport."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.websockets: set[WebSocket] = set()
        self.streams: set[EventStream] = set()
        self.ids = itertools.count(1)

    def verify(self, token: str | None) -> dict[str, Any] | None:
        try:
            return dict(jwt.decode(token or "", self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}))
        except jwt.PyJWTError:
            return None


def _connected(claims: dict[str, Any], transport: str) -> str:
    return json.dumps(
        {"type": "connected", "userId": claims["sub"], "userName": claims.get("name"), "transport": transport},
        ensure_ascii=False,
    )


class WebSocket(tornado.websocket.WebSocketHandler):
    def initialize(self, clients: Clients) -> None:
        self.clients = clients

    def open(self) -> None:
        claims = self.clients.verify(self.get_query_argument("token", None))
        if claims is None:
            self.close(4401, "invalid token")
            return
        self.clients.websockets.add(self)
        self.write_message(_connected(claims, "websocket"))

    def on_close(self) -> None:
        self.clients.websockets.discard(self)


class EventStream(tornado.web.RequestHandler):
    def initialize(self, clients: Clients) -> None:
        self.clients = clients

    async def get(self) -> None:
        claims = self.clients.verify(self.get_query_argument("token", None))
        if claims is None:
            self.set_status(401)
            self.finish({"error": "unauthorized"})
            return
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.clients.streams.add(self)
        self.write(f"retry: 3000\n\nevent: connected\ndata: {_connected(claims, 'sse')}\n\n")
        await self.flush()
        try:
            await self._gone
        finally:
            self.clients.streams.discard(self)

    def on_connection_close(self) -> None:
        if hasattr(self, "_gone") and not self._gone.done():
            self._gone.set_result(None)


class Publish(tornado.web.RequestHandler):
    def initialize(self, clients: Clients) -> None:
        self.clients = clients

    def post(self) -> None:
        fields = json.loads(self.request.body)
        event_id = str(next(self.clients.ids))
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        text = json.dumps({"id": event_id, "ts": ts, **fields}, ensure_ascii=False, separators=(",", ":"))
        for ws in list(self.clients.websockets):
            try:
                ws.write_message(text)
            except tornado.websocket.WebSocketClosedError:
                self.clients.websockets.discard(ws)
        block = f"id: {event_id}\nevent: {fields.get('type', 'message')}\ndata: {text}\n\n"
        for stream in list(self.clients.streams):
            try:
                stream.write(block)
                stream.flush()
            except StreamClosedError:
                self.clients.streams.discard(stream)
        self.set_status(202)


async def serve(port: int, secret: str) -> None:
    clients = Clients(secret)
    app = tornado.web.Application(
        [
            (r"/ws", WebSocket, {"clients": clients}),
            (r"/events", EventStream, {"clients": clients}),
            (r"/publish", Publish, {"clients": clients}),
        ]
    )
    server = HTTPServer(app)
    server.add_sockets(bind_sockets(port, "127.0.0.1", backlog=4096))
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.secret))


if __name__ == "__main__":
    main()
