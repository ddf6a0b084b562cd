"""Presence costs and honesty: writes and CPU at N connections, kill -9 to leave, flaps in a rolling restart.

Three scenarios, each against real service processes on one SecantusDB:

- `cost`: N WebSocket clients over U users (several client processes, 127.0.0.x sources),
  first with PRESENCE=0, then PRESENCE=1, same run. For each: the service's and the store's
  CPU seconds and MongoDB write operations (serverStatus opcounters insert+update+delete) while the clients
  connect, and then over a steady window of `--window` seconds (default 4 heartbeats).
- `kill`: a user connected to A, an observer on B; A is killed with SIGKILL; the time until
  the observer receives `presence_left`, `--runs` times (p50 and max), and how many
  `presence_left` each kill produced in `events` (must be 1).
- `rolling`: U users (one client each) spread over two service processes (clients pick a
  port at random at each connect, like a load balancer); A is drained (SIGTERM, 1012 spread
  over DRAIN_SECONDS) and started again, then B; the `presence_joined` / `presence_left`
  events inserted meanwhile are the flaps (target 0).

    python -m bench.presence cost --clients 10000 --users 2000
    python -m bench.presence kill --runs 5
    python -m bench.presence rolling --users 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from bench.restart_storm import DEFAULT_POLICY, Client, Plan
from bench.systems import cpu_seconds
from harness.clients import WsClient, read_frame
from harness.processes import SECRET, ServiceProcess, as_service
from service.storage.mongo.embedded import EmbeddedMongo

RESULTS = Path(__file__).resolve().parent / "results"
WRITES = ("insert", "update", "delete")


class PortClient(Client):
    """A restart-storm client that picks one of several ports at each connect (a load balancer)."""

    def __init__(self, plan: Plan, user: int, rng: random.Random, ports: list[int], events: str) -> None:
        super().__init__(plan, user, rng)
        self._ports = ports
        self._rng = rng
        self.open_now = False
        if events:
            self.token += f"&events={events}"  # the request line is `/ws?token={token}`

    async def open(self) -> Any:
        self.plan = replace(self.plan, port=self._rng.choice(self._ports))
        connection = await super().open()
        self.open_now = connection is not None
        return connection

    async def hold(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        """Read frames until the server closes, answering its pings (or it would close us as dead)."""
        reader, writer = connection
        try:
            while True:
                opcode, payload = await read_frame(reader)
                length = len(payload)
                if opcode == 0x9 and length < 126:  # ping → masked pong with the same payload
                    mask = os.urandom(4)
                    writer.write(
                        bytes([0x8A, 0x80 | length]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    )
                elif opcode == 0x8:
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now = False
            writer.close()


async def _serve(plan: Plan, first: int, users: int, ports: list[int], events: str, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(plan.seed)
    clients = [
        PortClient(plan, 1 + (first + i) % users, random.Random(rng.random()), ports, events)
        for i in range(plan.clients)
    ]
    initial = asyncio.Semaphore(plan.initial_concurrency)
    tasks = [asyncio.create_task(client.run(initial)) for client in clients]
    try:
        while (command := await loop.run_in_executor(None, pipe.recv)) != "stop":
            if command == "count":
                pipe.send(sum(1 for c in clients if c.connected_at))
            elif command == "open":
                pipe.send(sum(1 for c in clients if c.open_now))
            else:  # ("ports", [...]): the load balancer's rotation (every client shares the list)
                ports[:] = command[1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    del command


def _client_process(plan: Plan, first: int, users: int, ports: list[int], events: str, pipe: Connection) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(plan, first, users, ports, events, pipe))
    else:
        uvloop.run(_serve(plan, first, users, ports, events, pipe))


class Fleet:
    """Client processes holding `clients` WebSocket connections over `users` users."""

    def __init__(self, ports: list[int], clients: int, users: int, procs: int, sources: int, events: str) -> None:
        context = multiprocessing.get_context("spawn")
        per = -(-clients // procs)
        self.clients = clients
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for p in range(procs):
            count = min(per, clients - p * per)
            plan = Plan(ports[0], count, 1, sources, DEFAULT_POLICY, seed=1000 + p)
            parent, child = context.Pipe()
            process = context.Process(
                target=_client_process, args=(plan, p * per, users, ports, events, child), daemon=True
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def connected(self) -> int:
        for pipe in self.pipes:
            pipe.send("count")
        return sum(pipe.recv() for pipe in self.pipes)

    def wait_connected(self, timeout: float) -> float:
        started = time.time()
        while (n := self.connected()) < self.clients:
            if time.time() - started > timeout:
                raise SystemExit(f"only {n} of {self.clients} clients connected in {timeout} s")
            time.sleep(0.5)
        return time.time() - started

    def open_now(self) -> int:
        """Clients connected right now."""
        for pipe in self.pipes:
            pipe.send("open")
        return sum(pipe.recv() for pipe in self.pipes)

    def route(self, ports: list[int]) -> None:
        """Set the ports new connections go to (a load balancer following readiness)."""
        for pipe in self.pipes:
            pipe.send(("ports", ports))

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("stop")
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def writes(mongo: MongoClient[dict[str, Any]]) -> int:
    counters = mongo.admin.command("serverStatus")["opcounters"]
    return sum(int(counters[name]) for name in WRITES)


def scraped(port: int, name: str, **labels: str) -> float:
    """The sum of one metric's samples with these labels, from the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def published(port: int, event_type: str) -> float:
    """`realtime_events_published_total` of one type."""
    return scraped(port, "realtime_events_published_total", type=event_type)


def base_env(uri: str, db: str, **extra: str) -> dict[str, str]:
    return {
        "MONGODB_URI": uri,
        "MONGODB_DB": db,
        "JWT_SECRET": SECRET,
        "DEV_MODE": "0",
        "LOG_LEVEL": "WARNING",
        "MAX_CONNECTIONS_PER_USER": "50",
        **extra,
    }


def cost(args: argparse.Namespace, uri: str, workdir: Path) -> dict[str, Any]:
    mongo: MongoClient[dict[str, Any]] = MongoClient(uri)
    result: dict[str, Any] = {
        "clients": args.clients,
        "users": args.users,
        "heartbeat_s": args.heartbeat,
        "client_events_filter": args.events or "(all events)",
    }
    for mode in args.modes.split(","):
        env = base_env(
            uri, f"presence_cost_{mode}", PRESENCE="1" if mode == "on" else "0", HEARTBEAT_SECONDS=str(args.heartbeat)
        )
        service = ServiceProcess(workdir / mode, env).start()
        fleet = None
        try:
            store = [args.store_pid]  # the store's CPU: reads (the gauge's count, the sweeps) show only here
            cpu0, w0, started = cpu_seconds([service.pid]), writes(mongo), time.time()
            store0 = cpu_seconds(store)
            fleet = Fleet([service.port], args.clients, args.users, args.procs, args.sources, args.events)
            connect_s = fleet.wait_connected(args.timeout)
            if mode == "on":
                # Every join event through the bus: each is offered to every connection (filtered
                # out by the clients' events=), part of the connect cost, not of the steady state.
                while published(service.port, "presence_joined") < args.users:
                    time.sleep(0.2)
                # Then every user's document, and the process's own document of each (written
                # after the user's join). Counted only now: a count reads every document
                # (SecantusDB: ~0.15 s at 10,000), and counting both once a second while the
                # users joined was a tenth of the store's CPU in this measurement.
                for collection in ("presence_users", "presence"):
                    while mongo[f"presence_cost_{mode}"][collection].count_documents({}) < args.users:
                        time.sleep(0.5)
            connect_s = time.time() - started
            time.sleep(1.0)
            cpu1, w1, store1 = cpu_seconds([service.pid]), writes(mongo), cpu_seconds(store)
            drops1 = scraped(service.port, "realtime_disconnects_total")
            slices, store_slices, last, store_last = [], [], cpu1, store1
            for _ in range(int(args.window // 5)):  # CPU per 5 s: a tail of the connect phase shows as a decay
                time.sleep(5)
                now_cpu, now_store = cpu_seconds([service.pid]), cpu_seconds(store)
                slices.append(round(now_cpu - last, 2))
                store_slices.append(round(now_store - store_last, 2))
                last, store_last = now_cpu, now_store
            time.sleep(args.window % 5)
            cpu2, w2, store2 = cpu_seconds([service.pid]), writes(mongo), cpu_seconds(store)
            drops = scraped(service.port, "realtime_disconnects_total") - drops1
        finally:
            if fleet is not None:
                fleet.stop()
            service.stop()
        result[mode] = {
            "connect_s": round(connect_s, 1),
            "connect_cpu_s": round(cpu1 - cpu0, 2),
            "connect_writes": w1 - w0,
            "steady_window_s": args.window,
            "steady_cpu_s": round(cpu2 - cpu1, 2),
            "steady_writes": w2 - w1,
            "steady_writes_per_s": round((w2 - w1) / args.window, 3),
            "steady_cpu_percent": round(100 * (cpu2 - cpu1) / args.window, 2),
            "steady_cpu_s_per_5s": slices,
            "connect_store_cpu_s": round(store1 - store0, 2),
            "steady_store_cpu_s": round(store2 - store1, 2),
            "steady_store_cpu_percent": round(100 * (store2 - store1) / args.window, 2),
            "steady_store_cpu_s_per_5s": store_slices,
            "steady_disconnects": int(drops),  # clients dropped and back: their transitions write
        }
        print(mode, json.dumps(result[mode]), flush=True)
    mongo.close()
    return result


async def _kill_once(a: ServiceProcess, b: ServiceProcess, user: int, heartbeat: float) -> float:
    sa, sb = as_service(a), as_service(b)
    observer: WsClient = await sb.websocket(
        {"token": sb.token(sub="observer"), "events": "presence_left,presence_joined"}
    )
    await observer.recv_type("connected")
    client = await sa.websocket({"token": sa.token(sub=user)})
    await client.recv_type("connected")
    while (m := await observer.recv(30))["type"] != "presence_joined" or m["userId"] != user:
        pass
    await asyncio.sleep(random.uniform(0, heartbeat))  # a random point of A's heartbeat cycle
    killed = time.monotonic()
    assert a.process is not None
    a.process.kill()
    a.process.wait()
    while (m := await observer.recv(120))["type"] != "presence_left" or m["userId"] != user:
        pass
    elapsed = time.monotonic() - killed
    await observer.close()
    try:
        await client.close()
    except OSError:
        pass
    return elapsed


def kill(args: argparse.Namespace, uri: str, workdir: Path) -> dict[str, Any]:
    env = base_env(uri, "presence_kill", HEARTBEAT_SECONDS=str(args.heartbeat), PRESENCE_GRACE_SECONDS=str(args.grace))
    b = ServiceProcess(workdir / "b", env).start()
    times = []
    try:
        for run in range(args.runs):
            a = ServiceProcess(workdir / f"a{run}", env).start()
            try:
                times.append(asyncio.run(_kill_once(a, b, 100 + run, args.heartbeat)))
            finally:
                a.stop()
            print(f"run {run}: {times[-1]:.2f} s", flush=True)
    finally:
        b.stop()
    mongo: MongoClient[dict[str, Any]] = MongoClient(uri)
    events = mongo["presence_kill"]["events"]
    per_user = [events.count_documents({"type": "presence_left", "userId": 100 + run}) for run in range(args.runs)]
    mongo.close()
    return {
        "heartbeat_s": args.heartbeat,
        "grace_s": args.grace,
        "runs": args.runs,
        "kill_to_left_s": [round(t, 3) for t in times],
        "p50_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "presence_left_per_kill": per_user,
    }


def rolling(args: argparse.Namespace, uri: str, workdir: Path) -> dict[str, Any]:
    db = "presence_rolling"
    env = base_env(
        uri,
        db,
        HEARTBEAT_SECONDS=str(args.heartbeat),
        DRAIN_SECONDS=str(args.drain),
        PRESENCE_GRACE_SECONDS=str(args.grace),
    )
    services = [ServiceProcess(workdir / "a", env), ServiceProcess(workdir / "b", env)]
    for service in services:
        service.start()
    ports = [s.port for s in services]
    mongo: MongoClient[dict[str, Any]] = MongoClient(uri)
    events = mongo[db]["events"]
    fleet = Fleet(ports, args.users, args.users, args.procs, args.sources, args.events)
    try:
        fleet.wait_connected(args.timeout)
        while mongo[db]["presence_users"].count_documents({}) < args.users:
            time.sleep(0.2)
        joined_before = events.count_documents({"type": "presence_joined"})
        start = datetime.now(UTC)
        for index, service in enumerate(services):
            # As behind a Kubernetes Service: the draining pod leaves the rotation (readiness),
            # its clients are closed with 1012 and reconnect to the other; the new pod joins
            # the rotation once ready.
            fleet.route([s.port for s in services if s is not service])
            service.stop()  # SIGTERM: drain with 1012 over DRAIN_SECONDS, then exit
            restarted = ServiceProcess(workdir / f"r{index}", env, port=service.port)
            restarted.start()
            services[index] = restarted
            fleet.route(ports)
        restarted_at = time.time()
        # Wait until every client is connected again and past any grace that could still end.
        while fleet.open_now() < args.users:
            time.sleep(0.5)
        time.sleep(args.grace + args.heartbeat * 2)
        flaps = {
            kind: events.count_documents({"type": kind, "createdAt": {"$gte": start}})
            for kind in ("presence_left", "presence_joined")
        }
        online = mongo[db]["presence_users"].count_documents({})
    finally:
        fleet.stop()
        for service in services:
            service.stop()
        mongo.close()
    return {
        "users": args.users,
        "drain_s": args.drain,
        "grace_s": args.grace,
        "heartbeat_s": args.heartbeat,
        "joined_before_restart": joined_before,
        "restart_s": round(restarted_at - start.timestamp(), 1),
        "flaps": flaps,
        "online_after": online,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=("cost", "kill", "rolling"))
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=0, help="cost: default clients/5; rolling: default 1000")
    parser.add_argument("--procs", type=int, default=0, help="client processes (default one per 2,500 clients)")
    parser.add_argument("--sources", type=int, default=50, help="127.0.0.x source addresses")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="HEARTBEAT_SECONDS")
    parser.add_argument("--grace", type=float, default=5.0, help="PRESENCE_GRACE_SECONDS")
    parser.add_argument("--window", type=float, default=0, help="cost: steady seconds (default 4 heartbeats)")
    parser.add_argument("--runs", type=int, default=5, help="kill: runs")
    parser.add_argument("--drain", type=float, default=2.0, help="rolling: DRAIN_SECONDS")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--modes", default="off,on", help="cost: PRESENCE=0 (off) and/or PRESENCE=1 (on)")
    parser.add_argument(
        "--events",
        default="task_created",
        help="the clients' events= filter; '' = every event, presence included (then each join/leave "
        "is one message per connection: the fan-out cost of any broadcast event)",
    )
    parser.add_argument("--out", default="")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (service logs)")
    args = parser.parse_args()
    if args.scenario == "rolling":
        args.users = args.users or 1000
        args.clients = args.users
    else:
        args.users = args.users or max(1, args.clients // 5)
    args.procs = args.procs or max(1, -(-args.clients // 2500))
    args.window = args.window or 4 * args.heartbeat

    with tempfile.TemporaryDirectory(prefix="bench-presence-") as tmp:
        workdir = args.keep or Path(tmp)  # --keep DIR: the service logs stay there
        mongo = EmbeddedMongo(":memory:")
        uri = mongo.start()
        args.store_pid = mongo.pid
        try:
            result = {"cost": cost, "kill": kill, "rolling": rolling}[args.scenario](args, uri, workdir)
        finally:
            mongo.stop()
    result = {"scenario": args.scenario, "at": datetime.now(UTC).isoformat(timespec="seconds"), **result}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out or 'presence_' + args.scenario}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
