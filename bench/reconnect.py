"""Catch-up after a reconnect: 5 s offline while 1,000 events are published.

A WebSocket client (and an SSE client) receive a first event, disconnect, stay away for
`--offline` seconds while `--events` events are inserted, then reconnect with their last
id. Reports how long until each is caught up and checks that every sequence number
arrived exactly once, in order.

    python -m bench.reconnect --events 1000 --offline 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime

from pymongo import AsyncMongoClient

from bench.local import local_service
from harness.clients import Service
from harness.processes import SECRET, ServiceProcess, as_service
from service.app.auth import issue_token
from service.core.config import Settings


async def publish(uri: str, first: int, count: int) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    events = client["realtime"]["events"]
    # One oplog entry per document, in order: each is a separate event.
    docs = [{"type": "bench.seq", "n": n, "createdAt": datetime.now(UTC)} for n in range(first, first + count)]
    await events.insert_many(docs, ordered=True)
    await client.close()


async def run(
    service: Service, uri: str, count: int, offline: float, transport: str, process: ServiceProcess | None = None
) -> dict[str, object]:
    """One disconnect/reconnect cycle; with `process`, the service is restarted while offline
    (empty memory: the replay comes from a change stream started at the client's id)."""
    token = issue_token(Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",)), sub=1, name="عائد")
    ws = await service.websocket({"token": token}) if transport == "websocket" else None
    sse = await service.sse({"token": token}) if transport == "sse" else None

    async def next_message() -> dict[str, object]:
        if ws is not None:
            return await ws.recv(seconds=30)
        assert sse is not None
        message: dict[str, object] = (await sse.next_event(seconds=30)).json()
        return message

    while (await next_message())["type"] != "connected":
        pass
    await publish(uri, 0, 1)
    last = await next_message()
    if ws is not None:
        await ws.close()
    if sse is not None:
        sse.close()
    started = time.monotonic()
    if process is not None:
        await asyncio.to_thread(process.stop)
    await publish(uri, 1, count)
    if process is not None:
        await asyncio.to_thread(process.start)
    await asyncio.sleep(max(0.0, offline - (time.monotonic() - started)))
    reconnect_at = time.monotonic()
    query = {"token": token, "last_event_id": str(last["id"])}
    ws = await service.websocket(query) if transport == "websocket" else None
    sse = await service.sse(query) if transport == "sse" else None
    hello = await next_message()
    received: list[object] = []
    while len(received) < count:
        message = await next_message()
        received.append(message["n"])
    caught_up = time.monotonic() - reconnect_at
    if ws is not None:
        await ws.close()
    if sse is not None:
        sse.close()
    return {
        "transport": transport,
        "service_restarted": process is not None,
        "offline_seconds": round(reconnect_at - started, 2),
        "published_while_offline": count,
        "resumed": hello.get("resumed"),
        "caught_up_ms": round(caught_up * 1000, 1),
        "received": len(received),
        "exactly_once_in_order": received == list(range(1, count + 1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--offline", type=float, default=5.0)
    parser.add_argument("--restart", action="store_true", help="also restart the service while offline")
    args = parser.parse_args()
    with local_service() as (process, uri):
        for restart in (False, True) if args.restart else (False,):
            for transport in ("websocket", "sse"):
                cycle = run(
                    as_service(process), uri, args.events, args.offline, transport, process if restart else None
                )
                print(json.dumps(asyncio.run(cycle), ensure_ascii=False))


if __name__ == "__main__":
    main()
