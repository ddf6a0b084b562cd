"""`python -m realtime_client tail` (and `python -m service tail`): print the stream as JSON
lines, on `RealtimeClient`.

Defaults come from the environment (`REALTIME_URL`, else `http://127.0.0.1:$PORT` with PORT
5001; `REALTIME_TOKEN`), and the position is remembered per URL, user and event filter in
`$XDG_STATE_HOME/realtime/` (`--position-file` to choose, `--no-position` to start live), so
running it again prints what happened while it was away.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from realtime_client.client import RealtimeClient, Transport, _is_event
from realtime_client.errors import Stopped
from realtime_client.position import FilePositionStore, MemoryPositionStore, PositionStore


def default_url() -> str:
    return os.environ.get("REALTIME_URL") or f"http://127.0.0.1:{os.environ.get('PORT', '5001')}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tail options, shared by both command lines."""
    parser.add_argument("--url", default=default_url(), help="service base URL (REALTIME_URL, else 127.0.0.1:$PORT)")
    parser.add_argument("--token", default=os.environ.get("REALTIME_TOKEN"), help="JWT (or REALTIME_TOKEN)")
    parser.add_argument("--sse", action="store_true", help="use Server-Sent Events instead of WebSocket")
    parser.add_argument("--poll", action="store_true", help="use long-polling (for proxies that buffer streams)")
    parser.add_argument("--events", default="", help="comma-separated event types (default: all)")
    parser.add_argument("--last-event-id", default=None, help="resume after this id (instead of the remembered one)")
    parser.add_argument("--max-events", type=int, default=0, help="exit after this many events (0: never)")
    parser.add_argument("--position-file", default=os.environ.get("REALTIME_TAIL_POSITION"), help="where to remember")
    parser.add_argument("--no-position", action="store_true", help="start from live events, remember nothing")


def _subject(token: str) -> str:
    """The token's `sub`, unverified: only to tell users' position files apart."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("sub", ""))
    except (IndexError, ValueError):
        return ""


def position_store(args: argparse.Namespace) -> PositionStore:
    if args.no_position:
        return MemoryPositionStore()
    if args.position_file:
        return FilePositionStore(args.position_file)
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    key = hashlib.sha256(f"{args.url.rstrip('/')}|{_subject(args.token)}|{args.events}".encode()).hexdigest()[:16]
    return FilePositionStore(state / "realtime" / f"tail-{key}")


async def follow(args: argparse.Namespace) -> int:
    transports: tuple[Transport, ...] = ("poll",) if args.poll else ("sse",) if args.sse else ("websocket",)
    client = RealtimeClient(
        args.url,
        args.token,
        events=[e for e in args.events.split(",") if e],
        position=position_store(args),
        last_event_id=args.last_event_id,
        transports=transports,
        controls=True,
    )
    count = 0
    try:
        async for message in client:
            print(json.dumps(message, ensure_ascii=False), flush=True)
            if _is_event(message):
                count += 1
                if args.max_events and count >= args.max_events:
                    client.position.save(message["id"])
                    client.close()
    except Stopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def tail(args: argparse.Namespace) -> int:
    if not args.token:
        print("tail needs --token (or REALTIME_TOKEN)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return asyncio.run(follow(args))
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m realtime_client", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("tail", help="print live events, one JSON per line"))
    return tail(parser.parse_args(argv))
