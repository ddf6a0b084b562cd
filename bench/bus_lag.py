"""The bus hop: insert → the service's bus has the event → one WebSocket client has it.

Starts SecantusDB (`EmbeddedMongo`, on a temporary data directory with the service's own flags,
or `--memory`) and `python -m service` against it, connects one WebSocket client, and inserts
events straight into `events` (the bench's `MongoPublisher`, another process's thread) at each
`--rates` in turn, then in one burst. For each phase it reports:

- `bus`: `realtime_bus_lag_seconds` from `/metrics` (the difference of two scrapes), p50/p99 as
  Prometheus' `histogram_quantile` reads them: linear inside a bucket, so only as fine as the
  buckets (0.5–1 ms steps up to 5 ms), and `bus_within_2ms`, the share at or under 2 ms, exact
  (`le="0.002"` is an edge);
- `e2e`: insert → the client's receipt, stamped exactly: the publisher writes its clock into
  the event (`b`) just before `insert_one`, the client reads the same clock on arrival;
- `store`: insert → a bare PyMongo change stream in this process has it (the same store, no
  service), so `e2e − store` is the service's own share;
- `service_cpu_ms_per_event`, `store_cpu_ms_per_event`: each process's CPU from the phase's
  first insert to the client's last event, less what it spends idle in that time (its idle
  rate, below), per event. The store's is what one event costs it (the insert, and one
  notification per change stream: the service's and the bare one), the floor under `store`:
  SecantusDB does it in Python, one core at a time.

Before the phases: idle CPU of the service and of the store over `--idle` seconds with no event,
and before all that `store_round_trips`: `ping` and `insert_one` timed alone against the same store
(`--round-trips`, 200 each), the floor under any hop, and `hop`, the whole hop with no service
and no thread: insert → a waiting change stream of the same asyncio loop has it, one event every
`--floor-gap` s (10 ms; as many). The gap matters: after a second of idle the same hop is slower
(threads and caches gone cold), so compare the 1/s phase with `--floor-gap 1`.
`--old DIR` runs another checkout first against the same store (`git worktree add /tmp/old main`).

    python -m bench.bus_lag --duration 30
    python -m bench.bus_lag --old /tmp/hop-old --duration 30 --rates 1,10 --burst 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, MongoClient
from websockets.asyncio.client import connect

from bench.systems import HttpPublisher, MongoPublisher, Publisher, ServiceSystem, cpu_rate, cpu_seconds
from harness.processes import ROOT, SECRET
from service.app.auth import issue_token
from service.core.config import Settings
from service.storage.mongo.embedded import EmbeddedMongo

METRIC = "realtime_bus_lag_seconds"


def scrape(port: int) -> dict[float, float]:
    """Cumulative bucket counts of the bus-lag histogram: upper bound → count."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{METRIC}_bucket{{"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(value)  # summed over workers
    return buckets


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' `histogram_quantile` over cumulative buckets (seconds); None without samples."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def within(buckets: dict[float, float], bound: float) -> float | None:
    """The share of observations at or under `bound`, one of the histogram's edges (exact, not
    interpolated); None without observations."""
    total = buckets.get(float("inf"), 0.0)
    return buckets[bound] / total if total > 0 and bound in buckets else None


def quantile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


@dataclass
class Phase:
    """One rate's samples (seconds)."""

    name: str
    events: int = 0
    e2e: list[float] = field(default_factory=list)
    store: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    bus: dict[str, float | None] = field(default_factory=dict)
    expected: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # the client has every event
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds for its events
    within_2ms: float | None = None  # share of the bus-lag observations at or under 2 ms (le="0.002")

    def report(self) -> dict[str, Any]:
        received = set(self.seqs)
        return {
            "events": self.events,
            "bus_p50_ms": ms(self.bus.get("p50")),
            "bus_p99_ms": ms(self.bus.get("p99")),
            "bus_within_2ms": None if self.within_2ms is None else round(self.within_2ms, 4),
            "e2e_p50_ms": ms(quantile(self.e2e, 0.5)),
            "e2e_p99_ms": ms(quantile(self.e2e, 0.99)),
            "e2e_max_ms": ms(max(self.e2e, default=None)),
            "store_p50_ms": ms(quantile(self.store, 0.5)),
            "store_p99_ms": ms(quantile(self.store, 0.99)),
            "lost": self.events - len(received),
            "dup": len(self.seqs) - len(received),
            "out_of_order": sum(1 for a, b in zip(self.seqs, self.seqs[1:], strict=False) if b < a),
            # CPU per event, first publish to last arrival, net of idle: the store's is its work
            # per insert and per notification (the service's stream and this bench's bare one)
            **{f"{name}_cpu_ms_per_event": round(1000 * s / max(1, self.events), 3) for name, s in self.cpu.items()},
        }


def sent_at(fields: dict[str, Any]) -> tuple[int, float] | None:
    """(seq, send time) from a bench event's `b` ("seq:µs")."""
    b = fields.get("b")
    if not isinstance(b, str) or ":" not in b:
        return None
    seq, micros = b.split(":", 1)
    return int(seq), int(micros) / 1e6


async def run_phases(
    system: ServiceSystem,
    rates: list[float],
    duration: float,
    burst: int,
    via: str,
    pids: dict[str, list[int]] | None = None,
    idle: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Publish at each rate for `duration` s, then `burst` events back to back; the phases' numbers
    (with the CPU of each of `pids`' processes, by name, per event, less its `idle` CPU per second)."""
    pids, idle = pids or {}, idle or {}
    settings = Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",))
    token = issue_token(settings, sub=1, name="قارئ", roles=("user",))
    publisher: Publisher
    if via == "http":
        writer = issue_token(settings, sub=2, name="ناشر", roles=("publisher",))
        headers = {"Authorization": f"Bearer {writer}"}
        publisher = HttpPublisher(system.port, "/api/events", system.body, headers)
    else:
        publisher = MongoPublisher(system.mongo_uri, system.database)
    phases = [Phase(f"{rate:g}/s") for rate in rates] + ([Phase(f"burst {burst}")] if burst else [])
    current: list[Phase] = []  # the phase receiving now (the client and the watcher append to it)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(system.mongo_uri)
    watch = await mongo[system.database]["events"].watch([{"$match": {"operationType": "insert"}}])

    async def watcher() -> None:
        while True:
            change = await watch.try_next()
            if change is not None and current:
                stamp = sent_at(change["fullDocument"])
                if stamp is not None:
                    current[0].store.append(time.time() - stamp[1])

    async with connect(f"ws://127.0.0.1:{system.port}/ws?token={token}") as ws:
        assert json.loads(await ws.recv())["type"] == "connected"

        async def client() -> None:
            async for raw in ws:
                now = time.time()
                stamp = sent_at(json.loads(raw))
                if stamp is not None and current:
                    phase = current[0]
                    phase.e2e.append(now - stamp[1])
                    phase.seqs.append(stamp[0])
                    if len(set(phase.seqs)) >= phase.expected:
                        phase.arrived.set()

        tasks = [asyncio.create_task(watcher()), asyncio.create_task(client())]
        loop = asyncio.get_running_loop()
        seq = 0
        try:
            for phase, rate in zip(phases, [*rates, 0.0], strict=False):
                current[:] = [phase]
                before = scrape(system.port)
                count = burst if rate == 0.0 else max(1, round(rate * duration))
                phase.expected = count
                cpu_before = {name: cpu_seconds(group) for name, group in pids.items()}
                start = time.monotonic()
                for n in range(count):
                    if rate:
                        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                    await loop.run_in_executor(None, publisher.send, seq)
                    seq += 1
                    phase.events += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(phase.arrived.wait(), 5)  # else: counted as lost
                elapsed = time.monotonic() - start
                phase.cpu = {
                    name: cpu_seconds(group) - cpu_before[name] - idle.get(name, 0.0) * elapsed
                    for name, group in pids.items()
                }
                await asyncio.sleep(0.2)  # a duplicate would show here
                after = scrape(system.port)
                delta = {bound: after.get(bound, 0.0) - before.get(bound, 0.0) for bound in after}
                phase.bus = {"p50": histogram_quantile(0.5, delta), "p99": histogram_quantile(0.99, delta)}
                phase.within_2ms = within(delta, 0.002)
        finally:
            publisher.close()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await watch.close()
            await mongo.close()
    return {phase.name: phase.report() for phase in phases}


def round_trips(uri: str, count: int) -> dict[str, float | None]:
    """The store's own floor: `ping` and `insert_one` round trips from one client, one at a time
    10 ms apart (each alone on the store), p50/p99 ms. An event's hop is at least one insert and
    one getMore answer."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        scratch = client["bus_lag_floor"]["inserts"]
        out: dict[str, float | None] = {}
        for name, call in (("ping", lambda: client.admin.command("ping")), ("insert", lambda: scratch.insert_one({}))):
            call()  # the connection is open before the clock starts
            took: list[float] = []
            for _ in range(count):
                started = time.perf_counter()
                call()
                took.append(time.perf_counter() - started)
                time.sleep(0.01)
            out[f"{name}_p50_ms"] = ms(quantile(took, 0.5))
            out[f"{name}_p99_ms"] = ms(quantile(took, 0.99))
        client.drop_database("bus_lag_floor")
        return out
    finally:
        client.close()


async def hop_floor(uri: str, count: int, gap: float = 0.01) -> dict[str, float | None]:
    """The store's and the driver's floor for the whole hop, with no service and no thread: one
    asyncio loop keeps a change stream's getMore waiting, as the service's bus does, and inserts
    one event every `gap` s; insert call → the stream has it, p50/p99 ms."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        events = client["bus_lag_floor"]["events"]
        hops: list[float] = []
        sent: dict[int, float] = {}
        async with await events.watch([{"$match": {"operationType": "insert"}}]) as stream:

            async def read() -> None:
                while len(hops) < count:
                    change = await stream.try_next()
                    if change is not None:
                        hops.append(time.perf_counter() - sent[change["fullDocument"]["n"]])

            reader = asyncio.create_task(read())
            for n in range(count):
                await asyncio.sleep(gap)
                sent[n] = time.perf_counter()
                await events.insert_one({"n": n})
            await asyncio.wait_for(reader, 10)
        await client.drop_database("bus_lag_floor")
        return {"hop_p50_ms": ms(quantile(hops, 0.5)), "hop_p99_ms": ms(quantile(hops, 0.99))}
    finally:
        await client.close()


@contextlib.contextmanager
def store(memory: bool) -> Iterator[EmbeddedMongo]:
    """The embedded SecantusDB as the service starts it (data directory, `--sync-on-commit`)."""
    with tempfile.TemporaryDirectory() as tmp:
        mongo = EmbeddedMongo(":memory:" if memory else Path(tmp) / "mongo")
        mongo.start()
        try:
            yield mongo
        finally:
            mongo.stop()


def measure(checkout: Path, mongo: EmbeddedMongo, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        system = ServiceSystem(Path(tmp), SECRET, workers=1, mongo_uri=mongo.uri, root=checkout)
        system.start()
        try:
            assert mongo.pid is not None
            pids = {"service": system.server_pids(), "store": [mongo.pid]}
            # CPU seconds per second of wall time while nothing is published
            rates = {name: round(cpu_rate(group, args.idle), 4) for name, group in pids.items()}
            phases = asyncio.run(run_phases(system, args.rates, args.duration, args.burst, args.publish, pids, rates))
        finally:
            system.stop()
    idle = {f"{name}_cpu_per_s": rate for name, rate in rates.items()}
    return {"checkout": str(checkout), "idle": idle, **phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda s: [float(r) for r in s.split(",")], default=[1.0, 10.0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--burst", type=int, default=100, help="events back to back at the end (0: none)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured per process")
    parser.add_argument(
        "--publish",
        choices=("mongo", "http"),
        default="mongo",
        help="insert_one into events (default), or POST /api/events (the service inserts, in its own loop)",
    )
    parser.add_argument("--memory", action="store_true", help="an in-memory store (no data directory, no sync)")
    parser.add_argument(
        "--round-trips", type=int, default=200, help="ping and insert_one round trips timed first (0: none)"
    )
    parser.add_argument(
        "--floor-gap", type=float, default=0.01, help="seconds between the hop floor's inserts (1: as at 1 event/s)"
    )
    parser.add_argument("--old", type=Path, help="another checkout measured first, against the same store")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the service and store stop
    results: dict[str, Any] = {}
    with store(args.memory) as mongo:
        if args.round_trips:
            results["store_round_trips"] = {
                **round_trips(mongo.uri, args.round_trips),
                **asyncio.run(hop_floor(mongo.uri, args.round_trips, args.floor_gap)),
            }
        if args.old:
            results["old"] = measure(args.old.resolve(), mongo, args)
        results["new"] = measure(ROOT, mongo, args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
