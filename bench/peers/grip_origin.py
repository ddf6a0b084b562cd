"""The origin behind Pushpin: it authenticates each connection and subscribes it to `events`;
Pushpin holds the sockets and fans published events out itself.

WebSocket arrives as WebSocket-over-HTTP (GRIP): a POST whose body is `OPEN`, answered with
`OPEN`, the `c:{"type":"subscribe",...}` control message and the `m:`-prefixed `connected`
greeting. SSE
arrives as a GET, answered with `Grip-Hold: stream` and `Grip-Channel: events`. Same JWT
check and greeting as `bench/naive_server.py`. Run: `python -m bench.peers.grip_origin
--port P --secret S`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import jwt
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

CHANNEL = "events"
WS_EVENTS = "application/websocket-events"
SUBSCRIBE = "c:" + json.dumps({"type": "subscribe", "channel": CHANNEL}, separators=(",", ":"))


def ws_event(kind: str, content: str | None = None) -> bytes:
    """One WebSocket-over-HTTP event: `KIND\\r\\n`, or `KIND <hex length>\\r\\n<content>\\r\\n`."""
    if content is None:
        return f"{kind}\r\n".encode()
    data = content.encode()
    return f"{kind} {len(data):x}\r\n".encode() + data + b"\r\n"


def connected(claims: dict[str, Any], transport: str) -> str:
    return json.dumps(
        {"type": "connected", "userId": claims["sub"], "userName": claims.get("name"), "transport": transport},
        ensure_ascii=False,
    )


class Origin(tornado.web.RequestHandler):
    """`POST` (WebSocket over HTTP) and `GET` (an SSE stream to hold) on any path."""

    def initialize(self, secret: str) -> None:
        self.secret = secret

    def _claims(self) -> dict[str, Any] | None:
        token = self.get_query_argument("token", "")
        try:
            return dict(jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}))
        except jwt.PyJWTError:
            return None

    def post(self, _path: str) -> None:
        self.set_header("Content-Type", WS_EVENTS)
        if not self.request.body.startswith(b"OPEN\r\n"):
            return  # later events of a connection (CLOSE, DISCONNECT): nothing to do
        claims = self._claims()
        if claims is None:
            self.set_status(401)
            return
        self.set_header("Sec-WebSocket-Extensions", "grip")
        # With the grip extension Pushpin forwards only messages prefixed `m:` to the client.
        greeting = "m:" + connected(claims, "websocket")
        self.write(ws_event("OPEN") + ws_event("TEXT", SUBSCRIBE) + ws_event("TEXT", greeting))

    def get(self, _path: str) -> None:
        claims = self._claims()
        if claims is None:
            self.set_status(401)
            return
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Grip-Hold", "stream")
        self.set_header("Grip-Channel", CHANNEL)
        self.write(f"retry: 3000\n\nevent: connected\ndata: {connected(claims, 'sse')}\n\n")


async def serve(port: int, secret: str) -> None:
    app = tornado.web.Application([(r"/(.*)", Origin, {"secret": secret})])
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
