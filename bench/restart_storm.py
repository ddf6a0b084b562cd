"""Restart storm: N WebSocket clients, the service restarted, how fast and how spread they come back.

For each reconnect policy in turn (the current one, `realtime_client/backoff.py`'s policy =
web/src/backoff.ts, and the previous 3 s → 30 s one), N clients connect, the service is
stopped (SIGTERM; every connection closed with 1012 at once, DRAIN_SECONDS=0) and started
again on the same port, and every client reconnects under the policy exactly as the browser
client does (a failed attempt or a drop → `Backoff.next_delay`; `connected` → `Backoff.connected`).
Reported per policy: the time from the new process answering `/healthz` until 50 %, 95 % and
100 % of the clients had `connected` again, the peak connect rate (most `connected` in any
one second) and the failed attempts (refused while down, or no `connected` within 10 s).
`--outage S` keeps the service down S seconds longer, so the old policy's delays reach its cap.

Clients are spread over `--procs` processes (a process holds at most ~19,000 sockets; the
service is another process) and over 127.0.0.2–127.0.0.`--sources`+1 as source addresses, so
no source runs short of ephemeral ports. Clients authenticate with `?token=` (one user each):
the browser's ticket request is left out, so each attempt costs the service one request.

    python -m bench.restart_storm --clients 10000            # restart: stop, start at once
    python -m bench.restart_storm --clients 10000 --outage 30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import statistics
import time
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import jwt

from bench.systems import cpu_seconds
from harness.clients import read_frame
from harness.processes import SECRET, ServiceProcess
from realtime_client.backoff import Backoff
from realtime_client.schema import BACKOFF
from service.storage.mongo.embedded import EmbeddedMongo


@dataclass(frozen=True)
class BackoffPolicy:
    """Base and cap of the ceiling, and how long a connection must hold to reset the count (s)."""

    base: float
    cap: float
    stable: float


DEFAULT_POLICY = BackoffPolicy(BACKOFF["base"], BACKOFF["cap"], BACKOFF["stable"])  # every client we ship
# What web/ and `service tail` did before: 3 s doubling to 30 s, reset after 10 s open.
PREVIOUS_POLICY = BackoffPolicy(base=3.0, cap=30.0, stable=10.0)
POLICIES = {"new": DEFAULT_POLICY, "old": PREVIOUS_POLICY}
OPEN_TIMEOUT = 10.0  # the browser client's openTimeoutMs
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    port: int
    clients: int
    first_user: int
    sources: int
    policy: BackoffPolicy
    seed: int
    initial_concurrency: int = 100


def user_token(user: int) -> str:
    """A two-hour HS256 token for one load user (an Arabic name, like the product's users)."""
    now = int(time.time())
    claims = {"sub": str(user), "name": "عميل", "roles": ["user"], "iat": now, "exp": now + 7200}
    return jwt.encode(claims, SECRET, algorithm="HS256")


Opened = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def upgrade(port: int, source: str, query: str, *, limit: int = 1 << 16) -> tuple[Opened, int, bytes]:
    """A WebSocket to `/ws?query` from `source`, within OPEN_TIMEOUT, and its first frame
    (opcode, payload); the connection is closed before any error leaves.

    Raises:
        ConnectionError, OSError, TimeoutError, IncompleteReadError, LimitOverrunError: no 101,
            or nothing in time.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0), limit=limit)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(head[:12])
            opcode, payload = await read_frame(reader)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return (reader, writer), opcode, payload


UPGRADE_FAILED = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


class ReconnectingClient:
    """What a restart bench's client is made of: its plan, its loopback source address, its
    user's token and its reconnect backoff (the shipped policy's, jittered by `rng`)."""

    def __init__(self, plan: Plan, user: int, rng: random.Random) -> None:
        self.plan = plan
        self.source = f"127.0.0.{2 + user % plan.sources}"
        self.token = user_token(user)
        self.backoff = Backoff(plan.policy.base, plan.policy.cap, plan.policy.stable, rng)


class Client(ReconnectingClient):
    """One reconnecting WebSocket client; records when each connection said `connected`."""

    def __init__(self, plan: Plan, user: int, rng: random.Random) -> None:
        super().__init__(plan, user, rng)
        self.connected_at: list[float] = []
        self.failures = 0

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Handshake until `connected`; None if the attempt failed (refused, timeout, refusal)."""
        try:
            (reader, writer), opcode, payload = await upgrade(self.plan.port, self.source, f"token={self.token}")
        except UPGRADE_FAILED:
            return None
        if opcode != 0x1 or b'"connected"' not in payload:
            writer.close()
            return None
        self.connected_at.append(time.time())
        self.backoff.connected(time.monotonic())
        return reader, writer

    async def hold(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        """Read until the server closes (the restart); heartbeats are off."""
        reader, writer = connection
        try:
            while await reader.read(1 << 16):
                pass
        except OSError:
            pass
        finally:
            writer.close()

    async def run(self, initial: asyncio.Semaphore) -> None:
        async with initial:  # the first connect is paced, like pages opened over time
            connection = await self.open()
        while True:
            if connection is None:
                self.failures += 1
            else:
                await self.hold(connection)
            await asyncio.sleep(self.backoff.next_delay(time.monotonic()))
            connection = await self.open()


STOP = object()  # what a load process's `answer` returns for a command that ends it


async def serve_commands(tasks: list[asyncio.Task[None]], pipe: Connection, answer: Callable[[Any], Any]) -> None:
    """Send back `answer(command)` for each command down the pipe until it is STOP, then
    cancel the clients' `tasks`."""
    loop = asyncio.get_running_loop()
    try:
        while (reply := answer(await loop.run_in_executor(None, pipe.recv))) is not STOP:
            pipe.send(reply)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _serve(plan: Plan, pipe: Connection) -> None:
    rng = random.Random(plan.seed)
    clients = [Client(plan, plan.first_user + i, random.Random(rng.random())) for i in range(plan.clients)]
    initial = asyncio.Semaphore(plan.initial_concurrency)

    def answer(command: str) -> Any:
        if command == "count":
            return sum(1 for c in clients if c.connected_at)
        if command == "report":
            return {"connected_at": [c.connected_at for c in clients], "failures": [c.failures for c in clients]}
        return STOP

    await serve_commands([asyncio.create_task(client.run(initial)) for client in clients], pipe, answer)


def _client_process(plan: Plan, pipe: Connection) -> None:
    run_loop(_serve(plan, pipe))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a load process's clients on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def shares(clients: int, procs: int) -> list[tuple[int, int]]:
    """(first user, count) for each of `procs` load processes sharing `clients` users from 1."""
    per = -(-clients // procs)
    return [(1 + p * per, min(per, clients - p * per)) for p in range(procs)]


def spawn_clients(
    target: Callable[[Any, Connection], None], plans: list[Any]
) -> tuple[list[Connection], list[BaseProcess]]:
    """One load process per plan (spawned, daemonic), each with the pipe its commands come down."""
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    processes: list[BaseProcess] = []
    for plan in plans:
        parent, child = context.Pipe()
        process = context.Process(target=target, args=(plan, child), daemon=True)
        process.start()
        pipes.append(parent)
        processes.append(process)
    return pipes, processes


def stop_clients(pipes: list[Connection], processes: list[BaseProcess], message: Any) -> None:
    """Tell each load process to stop, wait 10 s for it, then kill it."""
    for pipe in pipes:
        try:
            pipe.send(message)
        except OSError:
            pass
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()


def start_answering(service: ServiceProcess) -> float:
    """Start `service` (on the port it was given) and return when it first answers `/healthz`."""
    service.start(wait=False)
    while not answering(service.port):
        assert service.process is not None and service.process.poll() is None, service.output()
        time.sleep(0.01)
    return time.time()


def answering(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, int(q * len(sorted_values) + 0.999999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def one_policy(name: str, args: argparse.Namespace, mongo_uri: str, workdir: Path) -> dict[str, Any]:
    """Connect the fleet under one policy, restart the service, measure the way back."""
    policy = POLICIES[name]
    env = {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DB": f"storm_{name}",
        "JWT_SECRET": SECRET,
        "DEV_MODE": "0",
        "LOG_LEVEL": "WARNING",
        "HEARTBEAT_SECONDS": "3600",
        "DRAIN_SECONDS": "0",
        "MAX_CONNECTIONS_PER_USER": "5",
    }
    service = ServiceProcess(workdir / name, env).start()
    pipes: list[Connection] = []
    processes: list[BaseProcess] = []
    try:
        plans = [
            Plan(service.port, count, first, args.sources, policy, seed=args.seed * 1000 + p)
            for p, (first, count) in enumerate(shares(args.clients, args.procs))
        ]
        pipes, processes = spawn_clients(_client_process, plans)

        def connected_count() -> int:
            for pipe in pipes:
                pipe.send("count")
            return sum(pipe.recv() for pipe in pipes)

        started = time.time()
        while (n := connected_count()) < args.clients:
            if time.time() - started > args.timeout:
                raise SystemExit(f"{name}: only {n} of {args.clients} clients connected in {args.timeout} s")
            time.sleep(0.5)
        initial_s = time.time() - started
        time.sleep(1.5)  # past `stable`: every client's count has reset

        stopped_at = time.time()
        service.stop()
        time.sleep(args.outage)  # a longer outage: the clients' backoff climbs to its cap
        service = ServiceProcess(workdir / name, env, port=service.port)
        answered_at = start_answering(service)

        deadline = answered_at + args.timeout
        back = 0
        while time.time() < deadline:
            for pipe in pipes:
                pipe.send("report")
            reports = [pipe.recv() for pipe in pipes]
            times = [
                min(t for t in ts if t > stopped_at) for r in reports for ts in r["connected_at"] if ts[-1] > stopped_at
            ]
            back = len(times)
            if back >= args.clients:
                break
            time.sleep(1.0)
        cpu_after = cpu_seconds([service.pid])
        failures = sum(sum(r["failures"]) for r in reports)
    finally:
        stop_clients(pipes, processes, "stop")
        service.stop()

    delays = sorted(t - answered_at for t in times)
    bins: dict[int, int] = {}
    for t in times:
        bins[int((t - answered_at) * 10)] = bins.get(int((t - answered_at) * 10), 0) + 1
    # The most `connected` in any one-second window (ten 100 ms bins).
    peak = max((sum(bins.get(b + i, 0) for i in range(10)) for b in bins), default=0)
    result: dict[str, Any] = {
        "policy": name,
        "backoff": asdict(policy),
        "clients": args.clients,
        "back": back,
        "initial_connect_s": round(initial_s, 2),
        "outage_s": round(answered_at - stopped_at, 3),
        "extra_outage_s": args.outage,
        "peak_connects_per_s": peak,
        "failed_attempts": failures,
        "restarted_service_cpu_s": round(cpu_after, 2),
    }
    if delays:
        for label, q in (("p50", 0.5), ("p95", 0.95), ("p100", 1.0)):
            result[f"{label}_back_s"] = round(percentile(delays, q), 3)
        result["mean_back_s"] = round(statistics.fmean(delays), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=0, help="client processes (default: one per 2,500 clients)")
    parser.add_argument("--sources", type=int, default=50, help="127.0.0.x source addresses")
    parser.add_argument("--policies", default="new,old")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed for each connect phase")
    parser.add_argument("--outage", type=float, default=0, help="seconds to stay down after the stop")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", default="restart_storm")
    args = parser.parse_args()
    args.procs = args.procs or max(1, -(-args.clients // 2500))
    if args.clients / args.procs > 19_000:
        parser.error("at most 19,000 clients per process (open-file limit 20,000)")

    import tempfile

    mongo = EmbeddedMongo(":memory:")
    uri = mongo.start()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = args.workdir or Path(tmp)
            for name in args.policies.split(","):
                result = one_policy(name, args, uri, workdir)
                results.append(result)
                print(json.dumps(result, ensure_ascii=False), flush=True)
    finally:
        mongo.stop()

    def row(r: dict[str, Any]) -> list[Any]:
        b = r["backoff"]
        return [
            f"{r['policy']} ({b['base']:g} s → {b['cap']:g} s)",
            r["clients"],
            r["back"],
            r["outage_s"],
            f"{r.get('p50_back_s')} / {r.get('p95_back_s')} / {r.get('p100_back_s')}",
            r["peak_connects_per_s"],
            r["failed_attempts"],
        ]

    columns = ["policy", "clients", "back", "outage s", "50 % / 95 % / 100 % back after /healthz answers, s"]
    report(results, [*columns, "peak connects/s", "failed attempts"], row, args.out)


def report(
    results: list[dict[str, Any]], columns: list[str], row: Callable[[dict[str, Any]], list[Any]], out: str
) -> None:
    """Print the runs as a Markdown table (one `row` each) and save them as bench/results/`out`.json."""
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in results:
        print("| " + " | ".join(str(cell) for cell in row(r)) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{out}.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
