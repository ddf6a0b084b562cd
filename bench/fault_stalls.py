"""Stall scenario: does the service recover from the third MongoDB stall as from the first?

Two replicas share an external SecantusDB. A paced writer sends task creations (then one
execution of each) at `rate` per second to both replicas, each request retried with its
`Idempotency-Key` until answered; a WebSocket follower on each replica resumes with its last
id after every drop. Each round SIGSTOPs MongoDB three times in a row for `stall_seconds`,
and after each SIGCONT measures how long until each replica acknowledges a write begun after
the SIGCONT (recovery), how long one keyed write and the first `/readyz` took to answer during
the stall, and how many connections the server holds. The audit (bench/crash.py's) then
counts acknowledged writes lost or doubled and, per follower, events missed, doubled or out
of order (targets: all 0).

    .venv/bin/python -m bench.fault_stalls [--rounds 1] [--stall 20] [--rate 20] [--code DIR] [--workdir DIR]

`--code DIR` runs another checkout's service (a "before" measurement). Everything listens on
127.0.0.1; every process is stopped by pid; the writer keeps at most MAX_CHAINS requests
going at once and everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from bench.crash import Follower, TaskGone, Writer, audit, stored_events, wait_for, writer_token
from harness.processes import SECRET, ServiceProcess
from service.storage.mongo.embedded import EmbeddedMongo

ROOT = Path(__file__).resolve().parent.parent

SERVICE_ENV = {"JWT_SECRET": SECRET, "DEV_MODE": "0", "LOG_LEVEL": "WARNING", "MONGODB_DB": "realtime"}
STALLS_PER_ROUND = 3
MAX_CHAINS = 200  # writer chains (create, then execute) in flight at once, across replicas
RECOVERY_LIMIT_SECONDS = 60.0  # a replica that acknowledges nothing new for this long "never" recovered


@dataclass
class PacedWriter:
    """Starts a create-then-execute chain every 1/rate s (open loop, like real clients), on one
    replica, each request retried with its key until answered (crash.Writer's rules)."""

    writer: Writer
    rate: float
    chains: set[asyncio.Task[None]] = field(default_factory=set)
    acks: list[tuple[float, float]] = field(default_factory=list)  # (attempt started, answered), monotonic
    skipped: int = 0  # chains not started because MAX_CHAINS were in flight

    async def run(self, stop: asyncio.Event, shared: set[asyncio.Task[None]]) -> None:
        number = 0
        while not stop.is_set():
            if len(shared) < MAX_CHAINS:
                number += 1
                chain = asyncio.create_task(self.chain(number, stop))
                shared.add(chain)
                self.chains.add(chain)
                chain.add_done_callback(shared.discard)
                chain.add_done_callback(self.chains.discard)
            else:
                self.skipped += 1
            await asyncio.sleep(1 / self.rate)
        await asyncio.gather(*self.chains, return_exceptions=True)

    async def chain(self, number: int, stop: asyncio.Event) -> None:
        writer = self.writer
        title = f"{writer.prefix}-{number}"
        task = await self.answered("POST", "/api/tasks", {"title": title, "taskType": "daily"}, stop)
        if task is None:
            return
        writer.acked_tasks[title] = task["id"]
        try:
            done = await self.answered("POST", f"/api/tasks/{task['id']}/execute", {"resultStatus": "completed"}, stop)
        except TaskGone:
            return  # an acknowledged task was lost: the audit counts it
        if done is not None:
            writer.acked_executions[task["id"]] = done["executions"]

    async def answered(self, method: str, path: str, body: Any, stop: asyncio.Event) -> dict[str, Any] | None:
        answer = await self.writer.until_answered(method, path, body, stop)
        if answer is not None:
            now = time.monotonic()
            self.acks.append((now - self.writer.latencies[-1], now))
        return answer

    def recovered_at(self, since: float) -> float | None:
        """When the first request begun after `since` was acknowledged."""
        return min((answered for started, answered in self.acks if started >= since), default=None)


async def timed(method: str, url: str, **kwargs: Any) -> tuple[int, float]:
    """One request's status (599: no answer) and its seconds, on a client of its own (never
    queued behind the writers')."""
    client = AsyncHTTPClient(force_instance=True)
    started = time.monotonic()
    try:
        response = await client.fetch(url, method=method, raise_error=False, request_timeout=60, **kwargs)
        code = response.code
    except (HTTPClientError, OSError):
        code = 599
    finally:
        client.close()
    return code, time.monotonic() - started


def server_connections(uri: str) -> int:
    """Connections the server holds (serverStatus), this one's excluded."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000, maxPoolSize=1)
    with client:
        return int(client.admin.command("serverStatus")["connections"]["current"]) - 1


async def stall(
    mongo: EmbeddedMongo, services: list[ServiceProcess], writers: list[PacedWriter], token: str, seconds: float
) -> dict[str, Any]:
    """One SIGSTOP of `seconds`, its probes during the stall, and the recovery after SIGCONT."""
    assert mongo.process is not None
    mongo.process.send_signal(signal.SIGSTOP)
    stalled_at = time.monotonic()
    try:
        await asyncio.sleep(min(1.0, seconds / 4))  # let writes pile up behind the stopped server
        keyed = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        probes = [
            timed(
                "POST",
                service.url + "/api/tasks",
                body=json.dumps({"title": f"{writer.writer.prefix}-probe-{uuid.uuid4().hex[:6]}", "taskType": "daily"}),
                headers=keyed,
            )
            for service, writer in zip(services, writers, strict=True)
        ] + [timed("GET", service.url + "/readyz") for service in services]
        results = await asyncio.gather(*probes)
        await asyncio.sleep(max(0.0, stalled_at + seconds - time.monotonic()))
    finally:
        mongo.process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    recovery: list[float | None] = []
    for writer in writers:
        with contextlib.suppress(AssertionError):
            await wait_for(
                lambda writer=writer: writer.recovered_at(resumed) is not None,
                RECOVERY_LIMIT_SECONDS,
                "a write after the stall",
            )
        at = writer.recovered_at(resumed)
        recovery.append(None if at is None else round(at - resumed, 2))
    half = len(services)
    return {
        "recovery_seconds": recovery,
        "keyed_write_during_stall": [{"status": c, "seconds": round(s, 2)} for c, s in results[:half]],
        "readyz_during_stall": [{"status": c, "seconds": round(s, 2)} for c, s in results[half:]],
        "server_connections_after": await asyncio.to_thread(server_connections, mongo.uri),
    }


async def one_round(
    data_dir: Path, rng: random.Random, *, stall_seconds: float, rate: float, code: Path
) -> dict[str, Any]:
    """Two replicas, a writer and a follower each, three stalls; the measurements and the audit."""
    mongo = EmbeddedMongo(data_dir / "mongo")
    uri = await asyncio.to_thread(mongo.start)
    env = {**SERVICE_ENV, "MONGODB_URI": uri}
    services = [ServiceProcess(data_dir / f"replica{n}", env, code=code) for n in (1, 2)]
    stops = (asyncio.Event(), asyncio.Event())
    runs: list[asyncio.Task[None]] = []
    try:
        for service in services:
            await asyncio.to_thread(service.start)
        token = writer_token()
        writers = [PacedWriter(Writer(s.url, token), rate / len(services)) for s in services]
        followers = [Follower(s.port, token) for s in services]
        shared: set[asyncio.Task[None]] = set()
        runs += [asyncio.create_task(w.run(stops[0], shared)) for w in writers]
        runs += [asyncio.create_task(f.run(stops[1])) for f in followers]
        stalls = []
        for _ in range(STALLS_PER_ROUND):
            await asyncio.sleep(rng.uniform(2.0, 4.0))  # steady writing between stalls
            stalls.append(await stall(mongo, services, writers, token, stall_seconds))
        stops[0].set()
        await asyncio.gather(*runs[: len(writers)])
        stored = await asyncio.to_thread(stored_events, uri, "realtime")
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: all(len(f.events) >= len(stored) for f in followers), 30, "followers to catch up")
        stops[1].set()
        for run in runs[len(writers) :]:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        writes = [(await asyncio.to_thread(audit, uri, "realtime", w.writer, followers[0])) for w in writers]
        deliveries = [(await asyncio.to_thread(audit, uri, "realtime", writers[0].writer, f)) for f in followers]
        return {
            "stalls": stalls,
            "acked_writes": sum(a.acked for a in writes),
            "retried_requests": sum(a.retries for a in writes),
            "skipped_chains": sum(w.skipped for w in writers),
            "lost_acked": sum(a.lost_acked for a in writes),
            "duplicates": sum(a.duplicate_tasks + a.duplicate_executions for a in writes),
            "changes_without_event": writes[0].changes_without_event,
            "per_follower": [
                {
                    "missed": a.delivered_missing,
                    "twice": a.delivered_twice,
                    "out_of_order": a.delivered_out_of_order,
                    "resyncs": a.resyncs,
                }
                for a in deliveries
            ],
        }
    finally:
        for stop in stops:
            stop.set()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        if mongo.process is not None:
            mongo.process.send_signal(signal.SIGCONT)
        for service in services:
            await asyncio.to_thread(service.stop)
        await asyncio.to_thread(mongo.stop)


async def run(
    rounds: int,
    seed: int,
    *,
    stall_seconds: float = 20.0,
    rate: float = 20.0,
    code: Path = ROOT,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """`rounds` rounds of three stalls each; every round's measurements and audit.

    Args:
        rounds: independent rounds, each with a fresh MongoDB and fresh replicas.
        seed: picks the pauses between stalls.
        stall_seconds: how long each SIGSTOP lasts.
        rate: writes started per second, over both replicas.
        code: the checkout whose service runs.
        workdir: keep the logs and data here (a temporary directory, removed, when None).
    """
    # The writers share Tornado's client: let it hold every chain's request at once (its default is 10).
    AsyncHTTPClient.configure(None, max_clients=MAX_CHAINS)
    rng = random.Random(seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="fault-stalls-") as tmp:
        base = workdir or Path(tmp)
        for number in range(rounds):
            results.append(
                await one_round(base / f"round{number}", rng, stall_seconds=stall_seconds, rate=rate, code=code)
            )
    problems = sum(
        r["lost_acked"]
        + r["duplicates"]
        + r["changes_without_event"]
        + sum(f["missed"] + f["twice"] + f["out_of_order"] for f in r["per_follower"])
        + sum(None in s["recovery_seconds"] for s in r["stalls"])
        for r in results
    )
    return {
        "scenario": "stalls",
        "stall_seconds": stall_seconds,
        "rate": rate,
        "rounds": results,
        "ok": problems == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stall", type=float, default=20.0, help="seconds per SIGSTOP")
    parser.add_argument("--rate", type=float, default=20.0, help="writes started per second over both replicas")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose service runs")
    parser.add_argument("--workdir", type=Path, default=None, help="keep service and MongoDB logs here")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.rounds, args.seed, stall_seconds=args.stall, rate=args.rate, code=args.code, workdir=args.workdir)
    )
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
