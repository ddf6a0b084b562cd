"""A replica replaced while events flow: do its clients resume from memory or from MongoDB?

N WebSocket clients (one user each, spread over `--procs` processes and 127.0.0.2–51) follow
one service process while a writer inserts `--rate` numbered events a second straight into
MongoDB (so it keeps writing while the service is down, as other replicas' REST calls would).
After `--warmup` seconds the service is stopped (SIGTERM, DRAIN_SECONDS=0: every client gets
1012 at once) and a new process is started on the same port and database. Each client
reconnects under the shipped backoff policy (`realtime_client/backoff.py`) with
`last_event_id=` its last event, as every client we ship does. At the end the writer stops,
and every client must hold every event from its first on, once and in order (a client
still short of the last event 30 s after the catch-up deadline is counted `behind`, not lost).

Reported per run: the time from the new process answering `/healthz` until 50 %, 95 % and
100 % of the clients had an event written after the restart (caught up), the resumes the new
process refused (1013: a MongoDB replay not admitted now) and other failed attempts, the new
process's `realtime_replays_total` by source, and the CPU seconds the new process and MongoDB
spent from its start until every client had caught up. `--history-events N` inserts N events
first (numbered -1, which the clients ignore: the new process then reads `HISTORY_SIZE` of
them at start, as a replica with a long history does). `--code DIR` runs another checkout's
service (git worktree) with the same clients; `--rounds` alternates the two.

    python -m bench.restart_resume --clients 5000 --rate 20 --code /tmp/before --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import statistics
import tempfile
import time
import urllib.request
import uuid
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from bench.restart_storm import (
    DEFAULT_POLICY,
    STOP,
    UPGRADE_FAILED,
    Opened,
    Plan,
    ReconnectingClient,
    percentile,
    report,
    run_loop,
    serve_commands,
    shares,
    spawn_clients,
    start_answering,
    stop_clients,
    upgrade,
)
from bench.systems import cpu_seconds
from harness.clients import read_frame
from harness.processes import ROOT, SECRET, ServiceProcess
from service.core.errors import CloseCode
from service.core.events import event_document
from service.storage.mongo.embedded import EmbeddedMongo

TRY_AGAIN_LATER = int(CloseCode.TRY_AGAIN_LATER)


class Client(ReconnectingClient):
    """One WebSocket client that resumes from its last event after every drop."""

    def __init__(self, plan: Plan, user: int, rng: random.Random) -> None:
        super().__init__(plan, user, rng)
        self.last_id: str | None = None
        self.numbers: list[int] = []  # `n` of every event received, in arrival order
        self.watch: int | None = None  # the first event written after the restart's answer
        self.caught_up_at: float | None = None  # when this client first had it (or a later one)
        self.refused = 0  # closed 1013 (try again later)
        self.failed = 0  # other failed attempts: refused connection, timeout, other close

    async def open(self) -> Opened | None:
        query = f"token={self.token}&events=note"
        if self.last_id is not None:
            query += f"&last_event_id={self.last_id}"
        try:
            (reader, writer), opcode, payload = await upgrade(self.plan.port, self.source, query, limit=1 << 20)
        except UPGRADE_FAILED:
            self.failed += 1
            return None
        if opcode == 0x8 and int.from_bytes(payload[:2], "big") == TRY_AGAIN_LATER:
            self.refused += 1
            writer.close()
            return None
        if opcode != 0x1 or b'"connected"' not in payload:
            self.failed += 1
            writer.close()
            return None
        self.backoff.connected(time.monotonic())
        return reader, writer

    async def hold(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        """Read events until the server closes; a 1013 during the replay counts as refused."""
        reader, writer = connection
        try:
            while True:
                opcode, payload = await read_frame(reader)
                if opcode == 0x8:
                    if int.from_bytes(payload[:2], "big") == TRY_AGAIN_LATER:
                        self.refused += 1
                    return
                if opcode != 0x1:
                    continue
                message = json.loads(payload)
                if message.get("type") != "note":
                    continue
                self.last_id = message["id"]
                if message["n"] >= 0:  # not the deep history inserted before the clients came
                    self.numbers.append(message["n"])
                    self.note(message["n"])
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def run(self, initial: asyncio.Semaphore) -> None:
        async with initial:
            connection = await self.open()
        while True:
            if connection is not None:
                await self.hold(connection)
            await asyncio.sleep(self.backoff.next_delay(time.monotonic()))
            connection = await self.open()

    def note(self, n: int) -> None:
        if self.watch is not None and self.caught_up_at is None and n >= self.watch:
            self.caught_up_at = time.time()


async def _serve(plan: Plan, pipe: Connection) -> None:
    rng = random.Random(plan.seed)
    clients = [Client(plan, plan.first_user + i, random.Random(rng.random())) for i in range(plan.clients)]
    initial = asyncio.Semaphore(plan.initial_concurrency)

    def answer(message: tuple[str, Any]) -> Any:
        command, arg = message
        if command == "count":  # clients that have had event `arg` or a later one
            return sum(1 for c in clients if c.numbers and c.numbers[-1] >= arg)
        if command == "watch":
            for c in clients:
                c.watch = arg
                if c.numbers:
                    c.note(c.numbers[-1])
            return None
        if command == "caught":
            return [c.caught_up_at for c in clients]
        if command == "report":
            return {
                "numbers": [c.numbers for c in clients],
                "refused": sum(c.refused for c in clients),
                "failed": sum(c.failed for c in clients),
            }
        return STOP

    await serve_commands([asyncio.create_task(client.run(initial)) for client in clients], pipe, answer)


def _client_process(plan: Plan, pipe: Connection) -> None:
    run_loop(_serve(plan, pipe))


class Writer:
    """Inserts numbered `note` events at a steady rate, in a thread of the bench process."""

    def __init__(self, uri: str, db: str, rate: float) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri)
        self.events = self.client[db]["events"]
        self.rate = rate
        self.n = 0
        self.running = True

    def run(self) -> None:
        start = time.monotonic()
        while self.running:
            self.events.insert_one(event_document("note", {"n": self.n}))
            self.n += 1
            pause = start + self.n / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def replays(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        source: float(value)
        for source, value in re.findall(r'^realtime_replays_total\{source="(\w+)"\} (\S+)$', text, re.M)
    }


def one_run(label: str, code: Path, args: argparse.Namespace, mongo: EmbeddedMongo, workdir: Path) -> dict[str, Any]:
    import threading

    db = f"resume_{uuid.uuid4().hex[:8]}"
    env = {
        "MONGODB_URI": mongo.uri,
        "MONGODB_DB": db,
        "JWT_SECRET": SECRET,
        "DEV_MODE": "0",
        "LOG_LEVEL": "WARNING",
        "HEARTBEAT_SECONDS": "3600",
        "DRAIN_SECONDS": "0",
        "PRESENCE": "0",
        "WORKERS": "1",
    }
    service = ServiceProcess(workdir / label, env, code=code).start()
    writer = Writer(mongo.uri, db, args.rate)
    writing = threading.Thread(target=writer.run, daemon=True)
    pipes: list[Connection] = []
    processes: list[BaseProcess] = []

    def ask(command: str, arg: Any = None) -> list[Any]:
        for pipe in pipes:
            pipe.send((command, arg))
        return [pipe.recv() for pipe in pipes]

    try:
        plans = [
            Plan(service.port, count, first, args.sources, DEFAULT_POLICY, seed=args.seed * 1000 + p)
            for p, (first, count) in enumerate(shares(args.clients, args.procs))
        ]
        pipes, processes = spawn_clients(_client_process, plans)
        for at in range(0, args.history_events, 1000):  # a deep history for the new process to read
            count = min(1000, args.history_events - at)
            writer.events.insert_many([event_document("note", {"n": -1}) for _ in range(count)])
        writing.start()
        started = time.time()
        while (n := sum(ask("count", 0))) < args.clients:  # every client has had an event
            if time.time() - started > args.timeout:
                raise SystemExit(f"{label}: only {n} of {args.clients} clients had an event in {args.timeout} s")
            time.sleep(0.5)
        time.sleep(args.warmup)

        stopped_at = time.time()
        service.stop()
        service = ServiceProcess(workdir / label, env, port=service.port, code=code)
        store_cpu_before = cpu_seconds([mongo.pid or 0])
        answered_at = start_answering(service)
        first_after = writer.n  # written after the new process answered
        ask("watch", first_after)
        deadline = answered_at + args.timeout
        while sum(ask("count", first_after)) < args.clients and time.time() < deadline:
            time.sleep(0.25)
        done_at = time.time()
        service_cpu = cpu_seconds([service.pid])
        store_cpu = cpu_seconds([mongo.pid or 0]) - store_cpu_before
        by_source = replays(service.port)
        caught = [t for times in ask("caught") for t in times if t is not None]
        writer.running = False
        writing.join()
        last = writer.n - 1
        while sum(ask("count", last)) < args.clients and time.time() < deadline + 30:
            time.sleep(0.25)
        reports = ask("report")
    finally:
        writer.running = False
        stop_clients(pipes, processes, ("stop", None))
        service.stop()
        writer.client.close()

    # Lost: events missing between a client's first and the last one written, for the clients
    # that had the last one; the others are still catching up when the run gives up ("behind").
    lost = dup = disorder = behind = 0
    for numbers in (n for r in reports for n in r["numbers"]):
        seen = set(numbers)
        dup += len(numbers) - len(seen)
        disorder += sum(1 for a, b in itertools.pairwise(numbers) if b < a)
        if last not in seen:
            behind += 1
            continue
        lost += len(set(range(numbers[0], last + 1)) - seen)
    delays = sorted(t - answered_at for t in caught)
    result: dict[str, Any] = {
        "code": label,
        "clients": args.clients,
        "rate": args.rate,
        "caught_up": len(caught),
        "outage_s": round(answered_at - stopped_at, 2),
        "refused_1013": sum(r["refused"] for r in reports),
        "failed_attempts": sum(r["failed"] for r in reports),
        "replays": by_source,
        "service_cpu_s": round(service_cpu, 2),
        "store_cpu_s": round(store_cpu, 2),
        "until_all_caught_up_s": round(done_at - answered_at, 2),
        "behind_at_end": behind,
        "lost": lost,
        "dup": dup,
        "out_of_order": disorder,
        "events": last + 1,
    }
    if delays:
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p100", 1.0)):
            result[f"{name}_caught_up_s"] = round(percentile(delays, q), 3)
        result["mean_caught_up_s"] = round(statistics.fmean(delays), 3)
    return result


def replayed(by_source: dict[str, float]) -> str:
    """`memory / store`, or – for a service that does not count them."""
    if not by_source:
        return "–"
    return f"{by_source.get('memory', 0):g} / {by_source.get('store', 0):g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=20, help="events written per second")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of events before the restart")
    parser.add_argument(
        "--history-events", type=int, default=0, help="events inserted before the clients connect (a deep history)"
    )
    parser.add_argument("--procs", type=int, default=0, help="client processes (default: one per 2,500 clients)")
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--code", type=Path, default=None, help="another checkout to run against this one")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="restart_resume")
    args = parser.parse_args()
    args.procs = args.procs or max(1, -(-args.clients // 2500))
    codes = [("this", ROOT)] + ([("other", args.code.resolve())] if args.code else [])
    mongo = EmbeddedMongo(":memory:")
    mongo.start()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="restart-resume-") as tmp:
            for round_ in range(args.rounds):
                for label, code in codes if round_ % 2 == 0 else codes[::-1]:
                    result = one_run(label, code, args, mongo, Path(tmp) / f"r{round_}")
                    result["round"] = round_
                    results.append(result)
                    print(json.dumps(result, ensure_ascii=False), flush=True)
    finally:
        mongo.stop()

    def row(r: dict[str, Any]) -> list[Any]:
        return [
            r["code"],
            r["clients"],
            f"{r['rate']:g}",
            f"{r.get('p50_caught_up_s')} / {r.get('p95_caught_up_s')} / {r.get('p100_caught_up_s')}",
            r["refused_1013"],
            r["failed_attempts"],
            replayed(r["replays"]),
            r["service_cpu_s"],
            r["store_cpu_s"],
            r["behind_at_end"],
            f"{r['lost']} / {r['dup']} / {r['out_of_order']}",
        ]

    columns = ["code", "clients", "events/s", "50 % / 95 % / 100 % caught up, s", "refused 1013", "other failed"]
    columns += ["replays memory / store", "service CPU s", "MongoDB CPU s", "behind at the end", "lost / dup / order"]
    report(results, columns, row, args.out)


if __name__ == "__main__":
    main()
