"""Fault suite: is anything acknowledged lost, doubled or reordered under the faults that used
to lose events silently? Each fault runs rounds against real processes with a writer
(`bench.crash.Writer`: tasks created and executed, every request retried with its
`Idempotency-Key` until answered) and WebSocket followers that reconnect and resume with
their last id; the audit compares what MongoDB holds with what the writer was told and each
follower received.

- `outage`: MongoDB SIGKILLed and restarted under two *idle* replicas (no change seen yet in
  round 1), writes resuming as soon as it answers, while the replicas' streams are still in
  their retry sleep.
- `deep`: HISTORY_SIZE=50 under a steady writer; followers leave until more than memory holds
  has passed, then resume (from MongoDB, across memory's moving boundary).
- `rolling`: two replicas restarted one after the other (SIGTERM, drain, start), the followers
  moving to the other replica as a load balancer would.
- `disk`: the embedded MongoDB's volume (a 64 MiB tmpfs) filled, then freed (bench/fault_disk.py).
- `stalls`: MongoDB SIGSTOPped 20 s three times in a row under two replicas (bench/fault_stalls.py).

    .venv/bin/python -m bench.faults [--rounds 3] [--only outage,deep,rolling,disk,stalls] [--code DIR] [--json PATH]

`--code DIR` runs the service of another checkout (e.g. the commit before a fix) with the same
clients. Everything listens on 127.0.0.1; every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import random
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.crash import SERVICE_ENV, Audit, Follower, Writer, audit, stored_events, wait_for, writer_token
from harness.processes import ServiceProcess
from service.storage.mongo.embedded import EmbeddedMongo

ROOT = Path(__file__).resolve().parent.parent

DB = "realtime"


@dataclass
class FaultResult:
    """One fault's rounds, summed over its followers."""

    fault: str
    rounds: int = 0
    acked: int = 0
    clients: int = 0
    missed: list[int] = field(default_factory=list)  # per client
    twice: list[int] = field(default_factory=list)
    out_of_order: list[int] = field(default_factory=list)
    resyncs: int = 0
    lost_acked: int = 0
    recovery_seconds: list[float | None] = field(default_factory=list)  # None: not within the bound
    problems: dict[str, int] = field(default_factory=dict)

    def add(self, audits: list[Audit]) -> None:
        self.acked = max(a.acked for a in audits)
        self.clients = len(audits)
        self.missed = [a.delivered_missing for a in audits]
        self.twice = [a.delivered_twice for a in audits]
        self.out_of_order = [a.delivered_out_of_order for a in audits]
        self.resyncs = sum(a.resyncs for a in audits)
        self.lost_acked = max(a.lost_acked for a in audits)
        for a in audits:
            for name, n in a.problems().items():
                self.problems[name] = self.problems.get(name, 0) + n


async def wind_down(uri: str, writer: Writer, followers: list[Follower], stops: list[asyncio.Event],
                    tasks: list[asyncio.Task[None]]) -> list[Audit]:  # fmt: skip
    """Stop writing, let every follower catch up with what is stored, and audit each."""
    stops[0].set()
    await tasks[0]
    stored = await asyncio.to_thread(stored_events, uri, DB)
    for follower in followers:
        follower.come_back()
        with contextlib.suppress(AssertionError):
            await wait_for(lambda f=follower: len(f.events) >= len(stored), 30, "a follower to catch up")
    stops[1].set()
    for task in tasks[1:]:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return [await asyncio.to_thread(audit, uri, DB, writer, f) for f in followers]


@contextlib.asynccontextmanager
async def external_mongo(data_dir: Path) -> AsyncIterator[tuple[EmbeddedMongo, str]]:
    """A SecantusDB of its own (data on disk, so it can be restarted) for the replicas; stopped after."""
    mongo = EmbeddedMongo(data_dir / "mongo")
    uri = await asyncio.to_thread(mongo.start)
    try:
        yield mongo, uri
    finally:
        await asyncio.to_thread(mongo.stop)


def start_clients(
    base_url: str, ports: list[int], followers: int
) -> tuple[Writer, list[Follower], list[asyncio.Event], list[asyncio.Task[None]]]:
    token = writer_token()
    writer = Writer(base_url, token)
    clients = [Follower(0, token, ports=ports[i % len(ports) :] + ports[: i % len(ports)]) for i in range(followers)]
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(writer.run(stops[0]))]
    tasks += [asyncio.create_task(c.run(stops[1])) for c in clients]
    return writer, clients, stops, tasks


async def outage(data_dir: Path, rounds: int, rng: random.Random, code: Path) -> FaultResult:
    """Each round: two fresh (idle) replicas, MongoDB SIGKILLed for 5-9 s and restarted, writes
    from the moment it answers, while the replicas' streams may still be in their retry sleep."""
    result = FaultResult("outage", rounds)
    token = writer_token()
    ports: list[int] = []  # the live replicas; followers move to them when theirs stop
    followers = [Follower(0, token, ports=ports) for _ in range(4)]
    everything = Writer("", token)
    stops = [asyncio.Event(), asyncio.Event()]
    tasks: list[asyncio.Task[None]] = []
    replicas: list[ServiceProcess] = []
    async with external_mongo(data_dir) as (mongo, uri):
        env = {**SERVICE_ENV, "MONGODB_URI": uri}
        try:
            for number in range(rounds):
                fresh = [ServiceProcess(data_dir / f"r{number}-{i}", env, code=code) for i in range(2)]
                for replica in fresh:
                    await asyncio.to_thread(replica.start)
                ports[:] = [r.port for r in fresh]
                for replica in replicas:
                    await asyncio.to_thread(replica.stop)
                replicas = fresh
                if number == 0:
                    tasks = [asyncio.create_task(f.run(stops[1])) for f in followers]
                await wait_for(lambda: all(f.on in ports for f in followers), 30, "the followers on the new replicas")
                assert mongo.process is not None
                mongo.process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(mongo.process.wait)
                await asyncio.sleep(rng.uniform(5.0, 9.0))  # long enough for the streams' longest retry sleep
                await asyncio.to_thread(mongo.start, 30.0, mongo.port)
                back = time.monotonic()
                writer = Writer(replicas[0].url, token, prefix=f"{everything.prefix}-r{number}")
                stop = asyncio.Event()
                writing = asyncio.create_task(writer.run(stop))
                await wait_for(lambda writer=writer: writer.acked > 0, 60, "a write after MongoDB returned")
                result.recovery_seconds.append(round(time.monotonic() - back, 2))
                target = rng.randint(20, 60)
                await wait_for(lambda writer=writer, target=target: writer.acked >= target, 60, "writes after it")
                stop.set()
                await writing
                everything.acked_tasks.update(writer.acked_tasks)
                everything.acked_executions.update(writer.acked_executions)
                everything.retries += writer.retries
            tasks.insert(0, asyncio.create_task(asyncio.sleep(0)))  # wind_down's "writer": already finished
            result.add(await wind_down(uri, everything, followers, stops, tasks))
            return result
        finally:
            for replica in replicas:
                await asyncio.to_thread(replica.stop)


async def deep(data_dir: Path, rounds: int, rng: random.Random, code: Path) -> FaultResult:
    """Followers away for more than HISTORY_SIZE events, then resuming, under a steady writer."""
    result = FaultResult("deep", rounds)
    async with external_mongo(data_dir) as (_, uri):
        env = {**SERVICE_ENV, "MONGODB_URI": uri, "HISTORY_SIZE": "50"}
        service = ServiceProcess(data_dir / "svc", env, code=code)
        try:
            await asyncio.to_thread(service.start)
            writer, followers, stops, tasks = start_clients(service.url, [service.port], 4)
            for _ in range(rounds):
                # Connected, and each with a position to resume from (one without would start afresh).
                await wait_for(lambda: all(f.ws is not None and f.events for f in followers), 30, "followers following")
                away = rng.sample(followers, 2)
                for follower in away:
                    await follower.leave()
                target = writer.acked + rng.randint(60, 120)  # one event per acknowledged write: > 50 in memory
                await wait_for(lambda target=target: writer.acked >= target, 60, "writes while away")
                started = time.monotonic()
                for follower in away:
                    follower.come_back()
                await wait_for(lambda away=away: all(f.ws is not None for f in away), 30, "the followers back")
                result.recovery_seconds.append(round(time.monotonic() - started, 2))
            result.add(await wind_down(uri, writer, followers, stops, tasks))
            return result
        finally:
            await asyncio.to_thread(service.stop)


async def rolling(data_dir: Path, rounds: int, rng: random.Random, code: Path) -> FaultResult:
    """Two replicas restarted one after the other, followers moving to the other one."""
    result = FaultResult("rolling", rounds)
    async with external_mongo(data_dir) as (_, uri):
        env = {**SERVICE_ENV, "MONGODB_URI": uri, "DRAIN_SECONDS": "2"}
        replicas = [ServiceProcess(data_dir / f"r{i}", env, code=code) for i in range(2)]
        try:
            for replica in replicas:
                await asyncio.to_thread(replica.start)
            writer, followers, stops, tasks = start_clients(replicas[1].url, [r.port for r in replicas], 4)
            for _ in range(rounds):
                for i, replica in enumerate(replicas):
                    writer.base_url = replicas[1 - i].url  # the load balancer sends writes to the other one
                    target = writer.acked + rng.randint(10, 30)
                    await wait_for(lambda target=target: writer.acked >= target, 60, "writes before a restart")
                    started = time.monotonic()
                    await asyncio.to_thread(replica.stop)
                    replicas[i] = ServiceProcess(replica.data_dir, env, port=replica.port, code=code)
                    await asyncio.to_thread(replicas[i].start)
                    result.recovery_seconds.append(round(time.monotonic() - started, 2))
            result.add(await wind_down(uri, writer, followers, stops, tasks))
            return result
        finally:
            for replica in replicas:
                await asyncio.to_thread(replica.stop)


FAULTS = {"outage": outage, "deep": deep, "rolling": rolling}
EXTERNAL = {"disk": "bench.fault_disk", "stalls": "bench.fault_stalls"}  # `run(rounds, seed, code=) -> dict`


async def run_fault(name: str, data_dir: Path, rounds: int, seed: int, code: Path) -> dict[str, Any]:
    if name in FAULTS:
        result = await FAULTS[name](data_dir / name, rounds, random.Random(seed), code)
        return asdict(result)
    module = importlib.import_module(EXTERNAL[name])
    raw = await module.run(rounds, seed, code=code)
    return {**normalized(name, raw), "raw": raw}


def normalized(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The external scenarios' results in `FaultResult`'s shape, for one table."""
    if name == "disk":
        client = raw["clients"]["ws-follower"]
        return asdict(
            FaultResult(
                name,
                rounds=raw["rounds"],
                acked=raw["acknowledged_writes"],
                clients=1,
                missed=[client["missed"]],
                twice=[client["duplicated"]],
                out_of_order=[client["out_of_order"]],
                lost_acked=raw["lost_acked"],
                recovery_seconds=list(raw["recovery_seconds"]),
                problems=dict(raw["problems"]) or ({} if None not in raw["recovery_seconds"] else {"unrecovered": 1}),
            )
        )
    rounds = raw["rounds"]
    followers = [f for r in rounds for f in r["per_follower"]]
    recovery = [s for r in rounds for stall in r["stalls"] for s in stall["recovery_seconds"]]
    problems = {
        "lost_acked": sum(r["lost_acked"] for r in rounds),
        "duplicates": sum(r["duplicates"] for r in rounds),
        "changes_without_event": sum(r["changes_without_event"] for r in rounds),
        "unrecovered": sum(1 for s in recovery if s is None),
    }
    return asdict(
        FaultResult(
            name,
            rounds=len(rounds),
            acked=sum(r["acked_writes"] for r in rounds),
            clients=len(followers),
            missed=[f["missed"] for f in followers],
            twice=[f["twice"] for f in followers],
            out_of_order=[f["out_of_order"] for f in followers],
            resyncs=sum(f["resyncs"] for f in followers),
            lost_acked=problems["lost_acked"],
            recovery_seconds=recovery,
            problems={k: v for k, v in problems.items() if v},
        )
    )


def available() -> list[str]:
    names = list(FAULTS)
    for name, module in EXTERNAL.items():
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
            names.append(name)
    return names


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| fault | rounds | acked writes | clients | missed per client | twice per client | out of order | "
        "resyncs | lost acked | recovery s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        recovery = r.get("recovery_seconds") or []
        lines.append(
            f"| {r['fault']} | {r.get('rounds', '')} | {r.get('acked', '')} | {r.get('clients', '')} | "
            f"{r.get('missed', '')} | {r.get('twice', '')} | {r.get('out_of_order', '')} | {r.get('resyncs', '')} | "
            f"{r.get('lost_acked', '')} | {', '.join('never' if s is None else f'{s:g}' for s in recovery)} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    names = args.only.split(",") if args.only else available()
    code = await asyncio.to_thread(lambda: Path(args.code).resolve())
    results = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        for name in names:
            started = time.monotonic()
            result = await run_fault(name, Path(tmp), args.rounds, args.seed, code)
            result["seconds"] = round(time.monotonic() - started, 1)
            results.append(result)
            print(table([result]).splitlines()[-1], flush=True)
    print(f"\nFault suite, {args.rounds} rounds each, seed {args.seed}, code {args.code}:\n")
    print(table(results))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(results, indent=2))
    bad = [r for r in results if r.get("problems")]
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help=f"comma-separated faults (default: all of {', '.join(available())})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--code", default=str(ROOT), help="checkout whose service runs (default: this one)")
    parser.add_argument("--json", default="", help="also write the results here")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
