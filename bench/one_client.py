"""Publish→receive latency for one event to one WebSocket client (the issue-2 figure).

Starts SecantusDB and the service as separate processes, connects one WebSocket client,
and publishes N events one at a time through `POST /api/events`, each carrying the
client's send time; the latency is receive time minus that time, on the same clock.

    python -m bench.one_client --events 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from tornado.httpclient import AsyncHTTPClient
from websockets.asyncio.client import connect

from bench.local import local_service
from harness.processes import SECRET
from service.app.auth import issue_token
from service.core.config import Settings


async def measure(port: int, events: int) -> list[float]:
    settings = Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",))
    reader = issue_token(settings, sub=1, name="قارئ", roles=("user",))
    publisher = issue_token(settings, sub=2, name="ناشر", roles=("publisher",))
    http = AsyncHTTPClient()
    samples: list[float] = []
    async with connect(f"ws://127.0.0.1:{port}/ws?token={reader}") as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        for n in range(events + 10):  # the first 10 warm up connections and caches
            sent = time.perf_counter()
            body = json.dumps({"type": "bench.tick", "n": n}).encode()
            await http.fetch(
                f"http://127.0.0.1:{port}/api/events", method="POST", body=body,
                headers={"Authorization": f"Bearer {publisher}"},
            )  # fmt: skip
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if message.get("n") == n:
                    break
            if n >= 10:
                samples.append(time.perf_counter() - sent)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    with local_service() as (service, _):
        samples = asyncio.run(measure(service.port, args.events))
    ms = sorted(s * 1000 for s in samples)
    print(
        f"{len(ms)} events, one WebSocket client: publish (POST /api/events) → receive "
        f"median {statistics.median(ms):.2f} ms, p90 {ms[int(len(ms) * 0.9)]:.2f} ms, max {ms[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
