"""Crash benchmark: is anything acknowledged lost or doubled when the service or MongoDB dies?

A writer creates and executes tasks as fast as it can, retrying every failed request with
its `Idempotency-Key`, while a WebSocket client follows the stream and resumes with its last
id after each drop. Meanwhile the service (with its embedded MongoDB) is SIGKILLed at random
moments and restarted, then an external MongoDB is SIGSTOPped mid-request and continued.
The audit counts acknowledged writes lost, stored changes without their event, duplicates
from retries, and events the follower missed, got twice or out of order (targets: all 0).
Last, the write latency of the durability settings is measured against the old ones (no
sync-on-commit, no transaction, w:1) in the same run.

    .venv/bin/python -m bench.crash [--rounds 3] [--writes 300]

tests/integration/test_durability.py runs the same rounds, smaller. Everything listens on 127.0.0.1;
every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pymongo import AsyncMongoClient, MongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from harness.clients import Condition
from harness.processes import SECRET, ServiceProcess, children_of, pid_alive, wait_until
from service.app.auth import issue_token
from service.core.config import Settings
from service.storage.mongo.embedded import EmbeddedMongo
from service.storage.mongo.store import MongoStore

SERVICE_ENV = {"JWT_SECRET": SECRET, "DEV_MODE": "0", "MONGODB_TIMEOUT_MS": "1000", "LOG_LEVEL": "WARNING"}
RETRY_STATUSES = (409, 503, 599)  # in flight, MongoDB away, no answer (connection dropped)


def writer_token() -> str:
    settings = Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",))
    return issue_token(settings, sub=1, name="كاتب", roles=("user",), ttl_seconds=3600)


class TaskGone(Exception):
    """A task the service acknowledged is not there any more."""


@dataclass
class Writer:
    """Creates a task, executes it once, and so on; each request retried with its key until answered."""

    base_url: str
    token: str
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    acked_tasks: dict[str, int] = field(default_factory=dict)  # title -> id, from a 201
    acked_executions: dict[int, int] = field(default_factory=dict)  # task id -> executions answered
    retries: int = 0
    failures: int = 0  # answers that were no answer: dropped connections, 503, 409
    latencies: list[float] = field(default_factory=list)

    @property
    def acked(self) -> int:
        return len(self.acked_tasks) + len(self.acked_executions)

    async def run(self, stop: asyncio.Event) -> None:
        number = 0
        while not stop.is_set():
            number += 1
            title = f"{self.prefix}-{number}"
            task = await self.until_answered("POST", "/api/tasks", {"title": title, "taskType": "daily"}, stop)
            if task is None:
                return
            self.acked_tasks[title] = task["id"]
            body = {"resultStatus": "completed"}
            try:
                done = await self.until_answered("POST", f"/api/tasks/{task['id']}/execute", body, stop)
            except TaskGone:
                continue  # an acknowledged task was lost: the audit counts it
            if done is None:
                return
            self.acked_executions[task["id"]] = done["executions"]

    async def until_answered(self, method: str, path: str, body: Any, stop: asyncio.Event) -> dict[str, Any] | None:
        """The 2xx answer's body; the same key on every attempt. None if stopped first."""
        key = str(uuid.uuid4())
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json", "Idempotency-Key": key}
        while True:
            started = time.perf_counter()
            try:
                response = await AsyncHTTPClient().fetch(
                    self.base_url + path,
                    method=method,
                    body=json.dumps(body),
                    headers=headers,
                    raise_error=False,
                    request_timeout=15,
                    connect_timeout=2,
                )
                code, text = response.code, response.body
            except (HTTPClientError, OSError) as exc:  # the connection dropped: no answer
                code, text = 599, str(exc).encode()
            if 200 <= code < 300:
                self.latencies.append(time.perf_counter() - started)
                return json.loads(text)  # type: ignore[no-any-return]
            if code == 404:
                raise TaskGone(path)
            if code not in RETRY_STATUSES:
                raise AssertionError(f"{method} {path}: {code} {text!r}")
            self.failures += 1
            if stop.is_set():
                return None
            self.retries += 1
            await asyncio.sleep(0.05)


@dataclass
class Follower:
    """A WebSocket client that reconnects after every drop and resumes with its last id; over
    several replicas (`ports`, a list the caller may change) it resumes on the next one, as
    behind a load balancer. `leave` keeps it away until `come_back`."""

    port: int
    token: str
    events: list[dict[str, Any]] = field(default_factory=list)
    resyncs: int = 0
    reconnects: int = 0
    ports: list[int] = field(default_factory=list)  # empty: `port` only
    following: asyncio.Event = field(default_factory=asyncio.Event)
    ws: Any = None  # the open connection, if any
    on: int = 0  # the port it is connected to (0: none)

    def __post_init__(self) -> None:
        self.following.set()

    @property
    def last_id(self) -> str | None:
        return self.events[-1]["id"] if self.events else None

    async def run(self, stop: asyncio.Event) -> None:
        turn = 0
        while not stop.is_set():
            await self.following.wait()
            port = self.ports[turn % len(self.ports)] if self.ports else self.port
            query = {"token": self.token, **({"last_event_id": self.last_id} if self.last_id else {})}
            try:
                async with connect(f"ws://127.0.0.1:{port}/ws?{urlencode(query)}", open_timeout=5) as ws:
                    self.ws, self.on = ws, port
                    async for text in ws:
                        message = json.loads(text)
                        if message.get("type") == "resync":
                            self.resyncs += 1
                        elif message.get("type") in ("task_created", "task_executed"):
                            self.events.append(message)
            except (OSError, WebSocketException, TimeoutError):
                pass
            self.ws, self.on = None, 0
            self.reconnects += 1
            turn += 1
            await asyncio.sleep(0.1)

    async def leave(self) -> None:
        """Disconnect and stay away until `come_back`."""
        self.following.clear()
        if self.ws is not None:
            await self.ws.close()

    def come_back(self) -> None:
        self.following.set()


@dataclass
class Audit:
    """What the database holds against what the writer was told and the follower received."""

    acked: int = 0
    lost_acked: int = 0
    changes_without_event: int = 0
    events_without_change: int = 0
    duplicate_tasks: int = 0
    duplicate_executions: int = 0
    stored_events: int = 0
    delivered_missing: int = 0
    delivered_twice: int = 0
    delivered_out_of_order: int = 0
    resyncs: int = 0
    retries: int = 0

    def problems(self) -> dict[str, int]:
        """Every count that must be zero and is not."""
        names = (
            "lost_acked",
            "changes_without_event",
            "events_without_change",
            "duplicate_tasks",
            "duplicate_executions",
            "delivered_missing",
            "delivered_twice",
            "delivered_out_of_order",
            "resyncs",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name)}


def event_key(event: dict[str, Any]) -> tuple[str, int, int]:
    return (event["type"], event["taskId"], event.get("executions", 0))


def stored_events(uri: str, db_name: str) -> list[tuple[str, int, int]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    with client:
        docs = client[db_name]["events"].find({"type": {"$in": ["task_created", "task_executed"]}})
        return [event_key(doc) for doc in docs]


def audit(uri: str, db_name: str, writer: Writer, follower: Follower) -> Audit:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    with client:
        db = client[db_name]
        tasks = {doc["_id"]: doc for doc in db["tasks"].find({"title": {"$regex": f"^{writer.prefix}-"}})}
        events = [event_key(doc) for doc in db["events"].find({"type": {"$in": ["task_created", "task_executed"]}})]
    result = Audit(acked=writer.acked, stored_events=len(events), retries=writer.retries, resyncs=follower.resyncs)
    titles = Counter(doc["title"] for doc in tasks.values())
    result.duplicate_tasks = sum(n - 1 for n in titles.values())
    # Each task is executed once by the writer: more is a retry counted twice.
    result.duplicate_executions = sum(max(0, doc.get("executions", 0) - 1) for doc in tasks.values())
    for title, task_id in writer.acked_tasks.items():
        result.lost_acked += task_id not in tasks or tasks[task_id]["title"] != title
    for task_id, executions in writer.acked_executions.items():
        result.lost_acked += tasks.get(task_id, {}).get("executions", 0) < executions
    counts = Counter(events)
    for task_id, doc in tasks.items():
        expected = [("task_created", task_id, 0)] + [
            ("task_executed", task_id, n + 1) for n in range(doc["executions"])
        ]
        result.changes_without_event += sum(counts[key] != 1 for key in expected)
    changes = {("task_created", i, 0) for i in tasks} | {
        ("task_executed", i, n + 1) for i, doc in tasks.items() for n in range(doc["executions"])
    }
    result.events_without_change = sum(1 for key in events if key not in changes)
    received = Counter(event_key(e) for e in follower.events)
    result.delivered_missing = sum(1 for key in counts if key not in received)
    result.delivered_twice = sum(n - 1 for n in received.values() if n > 1)
    ids = [e["id"] for e in follower.events]
    result.delivered_out_of_order = sum(1 for a, b in itertools.pairwise(ids) if b <= a)
    return result


def embedded_uri(service: ServiceProcess) -> str:
    """The URI of the embedded MongoDB a service started (its child's `--port`)."""
    for pid in children_of(service.pid):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--port" in args:
            port = args[args.index(b"--port") + 1].decode()
            return f"mongodb://127.0.0.1:{port}/?directConnection=true"
    raise RuntimeError("no embedded MongoDB under the service")


async def wait_for(condition: Condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def finish(uri: str, writer: Writer, follower: Follower, stops: tuple[asyncio.Event, asyncio.Event],
                 tasks: tuple[asyncio.Task[None], asyncio.Task[None]]) -> Audit:  # fmt: skip
    """Stop writing, let the follower catch up with what is stored, and audit."""
    stops[0].set()
    await tasks[0]
    stored = await asyncio.to_thread(stored_events, uri, "realtime")
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: len(follower.events) >= len(stored), 30, "the follower to catch up")
    stops[1].set()
    tasks[1].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tasks[1]
    return await asyncio.to_thread(audit, uri, "realtime", writer, follower)


async def sigkill_rounds(data_dir: Path, rounds: int, rng: random.Random, writes_per_round: tuple[int, int]) -> Audit:
    """(a) SIGKILL the service (and so its embedded MongoDB) after a random number of acked writes."""
    service = ServiceProcess(data_dir, SERVICE_ENV)
    await asyncio.to_thread(service.start)
    token = writer_token()
    writer, follower = Writer(service.url, token), Follower(service.port, token)
    stops = (asyncio.Event(), asyncio.Event())
    tasks = (asyncio.create_task(writer.run(stops[0])), asyncio.create_task(follower.run(stops[1])))
    try:
        for _ in range(rounds):
            target = writer.acked + rng.randint(*writes_per_round)
            await wait_for(lambda target=target: writer.acked >= target or tasks[0].done(), 60, "acknowledged writes")
            mongo_pids = children_of(service.pid)
            service.signal(signal.SIGKILL)
            await asyncio.to_thread(service.wait)
            await asyncio.to_thread(
                wait_until, lambda pids=mongo_pids: not any(map(pid_alive, pids)), 30, "MongoDB to die"
            )
            service = ServiceProcess(data_dir, SERVICE_ENV, port=service.port)
            await asyncio.to_thread(service.start)
        acked = writer.acked
        await wait_for(lambda: writer.acked >= acked + 4 or tasks[0].done(), 60, "writes after the last restart")
        return await finish(embedded_uri(service), writer, follower, stops, tasks)
    finally:
        for stop in stops:
            stop.set()
        await asyncio.to_thread(service.stop)


async def sigstop_rounds(data_dir: Path, rounds: int, rng: random.Random, writes_per_round: tuple[int, int]) -> Audit:
    """(b) SIGSTOP an external MongoDB mid-request until requests fail, then SIGCONT it."""
    mongo = EmbeddedMongo(data_dir / "mongo")
    uri = await asyncio.to_thread(mongo.start)
    service = ServiceProcess(data_dir, {**SERVICE_ENV, "MONGODB_URI": uri})
    try:
        await asyncio.to_thread(service.start)
        token = writer_token()
        writer, follower = Writer(service.url, token), Follower(service.port, token)
        stops = (asyncio.Event(), asyncio.Event())
        tasks = (asyncio.create_task(writer.run(stops[0])), asyncio.create_task(follower.run(stops[1])))
        try:
            assert mongo.process is not None
            for _ in range(rounds):
                target = writer.acked + rng.randint(*writes_per_round)
                await wait_for(
                    lambda target=target: writer.acked >= target or tasks[0].done(), 60, "acknowledged writes"
                )
                failures = writer.failures
                mongo.process.send_signal(signal.SIGSTOP)
                try:
                    await wait_for(
                        lambda failures=failures: writer.failures > failures or tasks[0].done(), 30, "a failed request"
                    )
                finally:
                    mongo.process.send_signal(signal.SIGCONT)
            acked = writer.acked
            await wait_for(lambda: writer.acked >= acked + 4 or tasks[0].done(), 60, "writes after the outage")
            return await finish(uri, writer, follower, stops, tasks)
        finally:
            for stop in stops:
                stop.set()
    finally:
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(mongo.stop)


# -- latency: the durable path against the old one ---------------------------------------------


async def write_latencies(data_dir: Path, writes: int) -> dict[str, list[float]]:
    """Seconds per task creation with its event, for the old and the new settings, interleaved."""
    old_server = EmbeddedMongo(data_dir / "old", sync_on_commit=False)
    new_server = EmbeddedMongo(data_dir / "new", sync_on_commit=True)
    old_uri, new_uri = old_server.start(), new_server.start()
    old: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(old_uri, w=1)
    store = MongoStore(Settings(mongodb_db="bench", mongodb_timeout_ms=5000), new_uri)
    await store.start()
    samples: dict[str, list[float]] = {"old": [], "new": [], "new + key": []}

    async def old_write(n: int) -> None:
        counter = await old.bench.counters.find_one_and_update({"_id": "tasks"}, {"$inc": {"seq": 1}}, upsert=True)
        now = time.time()
        await old.bench.tasks.insert_one({"_id": n, "seq": counter, "title": f"t{n}", "createdAt": now})
        await old.bench.events.insert_one({"type": "task_created", "taskId": n, "createdAt": now})

    async def new_write(n: int, key: bool) -> None:
        from service.app.idempotency import Answer, commit_once
        from service.core.ports import Transaction
        from service.storage.mongo.store import utcnow
        from service.storage.mongo.unit_of_work import MongoUnitOfWork

        async def change(unit: Transaction) -> Answer:
            task = await unit.create_task({"title": f"t{n}", "taskType": "daily"}, 1, "bench", utcnow())
            await unit.publish({"type": "task_created", "taskId": task["id"], "createdAt": utcnow()})
            return Answer.json(201, task)

        await commit_once(
            MongoUnitOfWork(store), change, key=uuid.uuid4().hex if key else None, user_id=1, fingerprint=str(n)
        )

    try:
        for n in range(writes):
            for name, write in (
                ("old", partial(old_write, n)),
                ("new", partial(new_write, n, False)),
                ("new + key", partial(new_write, n, True)),
            ):
                started = time.perf_counter()
                await write()
                samples[name].append(time.perf_counter() - started)
    finally:
        await old.close()
        await store.close()
        old_server.stop()
        new_server.stop()
    return samples


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main_async(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="crash-bench-") as tmp:
        killed = await sigkill_rounds(Path(tmp) / "kill", args.rounds, rng, (20, 120))
        stopped = await sigstop_rounds(Path(tmp) / "stop", args.rounds, rng, (20, 120))
        latencies = await write_latencies(Path(tmp) / "latency", args.writes) if args.writes else {}
    print(f"SIGKILL rounds: {args.rounds} (service + embedded MongoDB), SIGSTOP rounds: {args.rounds} (MongoDB)")
    print(
        "| faults | acked writes | retried requests | lost acked | change without event | event without change "
        "| duplicate tasks / executions | stored events | follower missed / twice / out of order | resyncs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, a in (("SIGKILL", killed), ("SIGSTOP", stopped)):
        print(
            f"| {name} | {a.acked} | {a.retries} | {a.lost_acked} | {a.changes_without_event} | "
            f"{a.events_without_change} | {a.duplicate_tasks} / {a.duplicate_executions} | {a.stored_events} | "
            f"{a.delivered_missing} / {a.delivered_twice} / {a.delivered_out_of_order} | {a.resyncs} |"
        )
    if not latencies:
        return 1 if killed.problems() or stopped.problems() else 0
    print(f"\nWrite latency, task + event, {args.writes} sequential writes each, interleaved:")
    print("| settings | p50 ms | p90 ms | p99 ms | p50 ÷ old |")
    print("|---|---|---|---|---|")
    base = statistics.median(latencies["old"])
    for name, values in latencies.items():
        print(
            f"| {name} | {quantile(values, 0.5) * 1000:.2f} | {quantile(values, 0.9) * 1000:.2f} | "
            f"{quantile(values, 0.99) * 1000:.2f} | {statistics.median(values) / base:.2f} |"
        )
    return 1 if killed.problems() or stopped.problems() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="SIGKILL rounds, and as many SIGSTOP rounds")
    parser.add_argument(
        "--writes", type=int, default=300, help="writes per setting for the latency comparison (0: skip it)"
    )
    parser.add_argument("--seed", type=int, default=None)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
