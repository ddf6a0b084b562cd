"""Replay storm: what one user resuming from an old id, many times at once, costs everyone else.

A service (with its embedded MongoDB) holds `--events` events. One user then polls
`/poll?cursor=<old id>` `--concurrency` times at once, again and again for `--seconds`, while
another user creates tasks one after the other. Reported: the service's and MongoDB's CPU
seconds, the service's peak RSS growth, the other user's write latency (p50/p99) and 5xx count,
how the attacker's polls were answered, the time to `connected` of a WebSocket resuming from the
old id, and the time and number of polls one client needs to catch up the whole backlog.

    .venv/bin/python -m bench.replay_storm [--events 30000] [--from zero|oldest] [--code DIR]

`--from zero` resumes from `0000000000000000` (an id older than anything); `oldest` from the
first seeded event (a valid, deep position). `--code DIR` runs another checkout's service with
the same clients. Everything listens on 127.0.0.1; every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pymongo import MongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from websockets.asyncio.client import connect

from bench.crash import SERVICE_ENV, embedded_uri
from harness.processes import SECRET, ServiceProcess, children_of
from service.app.auth import issue_token
from service.core.config import Settings
from service.core.events import event_document

ROOT = Path(__file__).resolve().parent.parent

SLOW: list[tuple[float, int]] = []  # (seconds into the storm, ms) of writes over 50 ms
TICKS = 100  # /proc's clock ticks per second on Linux


def token(sub: int) -> str:
    return issue_token(Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",)), sub=sub, name="مهاجم", ttl_seconds=3600)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def seed(uri: str, count: int) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    with client:
        events = client["realtime"]["events"]
        docs = [event_document("note", {"n": n, "text": "حدث " * 8}) for n in range(count)]
        for at in range(0, count, 1000):
            events.insert_many(docs[at : at + 1000])


async def fetch(url: str, headers: dict[str, str], method: str = "GET", body: Any = None) -> tuple[int, bytes]:
    try:
        response = await AsyncHTTPClient().fetch(
            url,
            method=method,
            headers=headers,
            body=None if body is None else json.dumps(body),
            raise_error=False,
            request_timeout=120,
        )
    except (HTTPClientError, OSError) as exc:  # no answer within the timeout
        return 599, str(exc).encode()
    return response.code, response.body or b""


async def first_cursor(base: str, headers: dict[str, str]) -> str:
    code, body = await fetch(base + "/poll", headers)
    assert code == 200, body
    return str(json.loads(body)["cursor"])


async def oldest_id(base: str, headers: dict[str, str], before: str) -> str:
    """The id of the first seeded event (after the cursor taken before seeding)."""
    code, body = await fetch(f"{base}/poll?{urlencode({'cursor': before})}", headers)
    assert code == 200, body
    messages = [m for m in json.loads(body)["messages"] if m.get("type") == "note"]
    assert messages, body[:300]
    return str(messages[0]["id"])


async def attack(base: str, cursor: str, concurrency: int, seconds: float) -> Counter[int]:
    headers = {"Authorization": f"Bearer {token(66)}"}
    answers: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < deadline:
            code, _ = await fetch(f"{base}/poll?{urlencode({'cursor': cursor})}", headers)
            answers[code] += 1
            if code == 503:
                await asyncio.sleep(0.2)

    await asyncio.gather(*(one() for _ in range(concurrency)), asyncio.sleep(0 if concurrency else seconds))
    return answers


async def attack_process(base: str, cursor: str, concurrency: int, seconds: float) -> dict[str, int]:
    """`attack` in a process of its own, so reading its answers does not slow the writer's loop."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.replay_storm", "--attack", base, cursor, str(concurrency), str(seconds),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await child.communicate()
    return {str(k): v for k, v in json.loads(out).items()}


async def write_loop(base: str, seconds: float) -> tuple[list[float], Counter[int]]:
    headers = {"Authorization": f"Bearer {token(77)}", "Content-Type": "application/json"}
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    begin = time.monotonic()
    deadline = begin + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        code, _ = await fetch(base + "/api/tasks", headers, "POST", {"title": "تقرير", "taskType": "daily"})
        latencies.append(time.perf_counter() - started)
        if latencies[-1] > 0.05:
            SLOW.append((round(time.monotonic() - begin, 2), round(latencies[-1] * 1000)))
        codes[code] += 1
        await asyncio.sleep(0.05)
    return latencies, codes


async def sample_rss(pid: int, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb(pid))
        await asyncio.sleep(0.1)


async def catch_up(base: str, cursor: str, expected: int) -> tuple[float, int, int]:
    """Seconds, polls and events for one client to poll its way from `cursor` to the head."""
    headers = {"Authorization": f"Bearer {token(88)}"}
    got = polls = 0
    started = time.monotonic()
    while got < expected and polls < 10_000:
        code, body = await fetch(f"{base}/poll?{urlencode({'cursor': cursor})}", headers)
        polls += 1
        if code == 503:
            await asyncio.sleep(0.2)
            continue
        answer = json.loads(body)
        got += sum(1 for m in answer["messages"] if m.get("type") == "note")
        cursor = answer["cursor"]
        if any(m.get("type") == "resync" for m in answer["messages"]):
            break
    return time.monotonic() - started, polls, got


async def ws_connected_seconds(port: int, last_id: str) -> float:
    query = urlencode({"token": token(99), "last_event_id": last_id})
    started = time.monotonic()
    async with connect(f"ws://127.0.0.1:{port}/ws?{query}", open_timeout=120, max_size=None) as ws:
        while json.loads(await ws.recv()).get("type") != "connected":
            pass
        return time.monotonic() - started


async def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    AsyncHTTPClient.configure(None, max_clients=args.concurrency + 8)  # the attack and the writer, not queued
    service = ServiceProcess(data_dir, {**SERVICE_ENV, "LOG_LEVEL": "WARNING"}, code=Path(args.code))
    await asyncio.to_thread(service.start)
    try:
        uri = embedded_uri(service)
        mongo_pid = children_of(service.pid)[0]
        headers = {"Authorization": f"Bearer {token(55)}"}
        before = await first_cursor(service.url, headers)
        await asyncio.to_thread(seed, uri, args.events)
        await asyncio.sleep(1.0)  # the bus has seen them
        oldest = await oldest_id(service.url, headers, before)
        cursor = "0000000000000000" if args.start == "zero" else oldest
        rss_before = rss_mb(service.pid)
        cpu = (cpu_seconds(service.pid), cpu_seconds(mongo_pid))
        stop, peak = asyncio.Event(), [rss_before]
        sampler = asyncio.create_task(sample_rss(service.pid, stop, peak))
        answers, (latencies, codes) = await asyncio.gather(
            attack_process(service.url, cursor, args.concurrency, args.seconds), write_loop(service.url, args.seconds)
        )
        stop.set()
        await sampler
        service_cpu = cpu_seconds(service.pid) - cpu[0]
        mongo_cpu = cpu_seconds(mongo_pid) - cpu[1]
        latencies.sort()
        connected = await ws_connected_seconds(service.port, cursor)
        catch_seconds, polls, got = await catch_up(service.url, oldest, args.events - 1)
        return {
            "code": args.code,
            "from": args.start,
            "events": args.events,
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "service_cpu_s": round(service_cpu, 2),
            "mongodb_cpu_s": round(mongo_cpu, 2),
            "rss_growth_mb": round(peak[0] - rss_before, 1),
            "attacker_answers": dict(answers),
            "writes": len(latencies),
            "write_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "write_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1),
            "write_5xx": sum(n for c, n in codes.items() if c >= 500),
            "slow_writes": SLOW,
            "ws_connected_s": round(connected, 2),
            "catch_up_s": round(catch_seconds, 2),
            "catch_up_polls": polls,
            "catch_up_events": got,
        }
    finally:
        await asyncio.to_thread(service.stop)


def main() -> int:
    if sys.argv[1:2] == ["--attack"]:
        base, cursor, concurrency, seconds = sys.argv[2:6]
        AsyncHTTPClient.configure(None, max_clients=int(concurrency) + 1)
        answers = asyncio.run(attack(base, cursor, int(concurrency), float(seconds)))
        print(json.dumps(answers))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--from", dest="start", choices=("zero", "oldest"), default="oldest")
    parser.add_argument("--code", default=str(ROOT))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replay-storm-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
