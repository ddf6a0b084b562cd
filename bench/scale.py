"""`python -m bench.scale` (`make bench-scale`): the curve a fleet is sized by.

For each size (total connections, half WebSocket and half SSE) each system (the service with
presence on and with `PRESENCE=0`, nginx+nchan, Socket.IO, Pushpin) is started in turn with as
many worker processes as keep each under the per-process open-file limit
(`files_per_process`), and the clients come from as many load processes, spread over 50
loopback source addresses. On one set of open connections each point measures, in turn: the
connect rate, idle memory, idle CPU (heartbeats only), then publish→receive latency, loss,
duplicates and order at each `--rates` event rate. Before the sizes: the authenticated
WebSocket connect rate alone (HS256 and RS256; with `--old DIR`, the same for another checkout).
After them: event latency during a heartbeat round against between rounds, at the largest size.

The JSON is rewritten after every point, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, TypeVar

from bench import load, report
from bench.__main__ import (
    _plans,
    _recv,
    batch_histogram,
    fanout_batches,
    gc_histograms,
    gc_pauses,
    histogram_diff,
    histogram_samples,
    scrape,
    smallest_bound,
    stop_load_processes,
)
from bench.peers.pushpin_system import PushpinSystem
from bench.peers.socketio_system import SocketIoSystem
from bench.stats import Delivery, Histogram
from bench.systems import (
    ROOT,
    NchanSystem,
    ServiceSystem,
    System,
    add_client_option,
    add_events_option,
    cpu_rate,
    cpu_seconds,
    machine_busy_seconds,
    rss_bytes,
)
from service.storage.mongo.embedded import EmbeddedMongo

HERE = Path(__file__).resolve().parent
SIZES = (1_000, 5_000, 10_000, 25_000, 50_000, 100_000)
SYSTEMS = ("service", "service-nopresence", "nchan", "socketio", "pushpin")
# How a system is named in the tables and the plot. Every client is a new user, so the service
# with presence on also measures N joins at each point; `PRESENCE=0` is its fan-out alone.
LABELS = {"service-nopresence": "service, PRESENCE=0"}
FILES_PER_PROCESS = 15_000  # connections per server or load process: 20,000 open files, with room for imbalance
START, END = "<!-- scale:start -->", "<!-- scale:end -->"
# Connect runs: (algorithm, log settings). The bench's LOG_LEVEL=WARNING, and k8s/base's INFO
# as JSON, where every connect writes an access line.
CONNECT_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "hs256": ("HS256", {}),
    "rs256": ("RS256", {}),
    "json": ("HS256", {"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}),
}
STORM_EVENTS = "storm"  # the storm clients' `events=` filter: no system publishes this type


def say(text: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="total connections per point")
    parser.add_argument("--rates", default="1,10", help="events per second, one phase each")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of events per rate (at most)")
    parser.add_argument(
        "--deliveries",
        type=float,
        default=2e6,
        help="at most this many deliveries per phase (shorter phases at high rates and sizes; 2 s at least)",
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    parser.add_argument(
        "--settle",
        type=float,
        default=180.0,
        help="with presence on, wait at most this long for every client's join to be written and the "
        "store to go quiet before the idle measurement and the phases (0: do not wait)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"any of {','.join(SYSTEMS)} (service-nopresence: the service with PRESENCE=0; socketio: "
        "WebSocket only; pushpin: one instance, at most ~19k connections)",
    )
    parser.add_argument("--connect-size", type=int, default=10_000, help="WebSocket clients of the connect runs")
    parser.add_argument("--old", type=Path, default=None, help="another checkout: its connect rate beside this one")
    parser.add_argument("--connect-reps", type=int, default=2, help="connect runs per code and algorithm, alternated")
    parser.add_argument(
        "--connect-variants",
        default=",".join(CONNECT_VARIANTS),
        help=f"which connect runs, any of {','.join(CONNECT_VARIANTS)} (json: HS256 with k8s/base's JSON access log)",
    )
    parser.add_argument(
        "--storm-watchers",
        type=int,
        default=0,
        help="WebSocket clients connected before each connect run, receiving --storm-rate events/s during it",
    )
    parser.add_argument("--storm-rate", type=float, default=10.0, help="events/s to the storm watchers")
    parser.add_argument(
        "--connect-no-presence",
        action="store_true",
        help="connect runs with PRESENCE=0 (default: on, and every client is a new user: a join each)",
    )
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0, help="HEARTBEAT_SECONDS of the heartbeat run")
    parser.add_argument(
        "--heartbeat-rate", type=float, default=2.7, help="events/s of the heartbeat run (not a multiple of its ticks)"
    )
    parser.add_argument("--heartbeat-size", type=int, default=0, help="its size (default: the largest service point)")
    add_events_option(parser)
    add_client_option(parser)
    parser.add_argument("--no-connect", action="store_true", help="skip the connect-rate runs")
    parser.add_argument("--no-heartbeat", action="store_true", help="skip the heartbeat run")
    parser.add_argument("--deadline", type=float, default=0, help="start no new point after this many seconds")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON (default: bench/scale-latest.json; with --no-readme, bench/results/scale-<UTC time>.json)",
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="the plot (default: docs/scale.png; with --no-readme, none)"
    )
    parser.add_argument(
        "--no-readme",
        action="store_true",
        help="a side run: leave the curve's files alone (bench/README.md's tables, docs/scale.png, "
        "bench/scale-latest.json)",
    )
    parser.add_argument(
        "--files-per-process", type=int, default=FILES_PER_PROCESS, help="connections per worker / load process"
    )
    parser.add_argument("--render", type=Path, default=None, help="only redo the table and plot from this JSON")
    args = parser.parse_args(argv)
    if args.out is None:
        stamp = time.strftime("%Y-%m-%d-%H%M%S", time.gmtime())
        args.out = HERE / "results" / f"scale-{stamp}.json" if args.no_readme else HERE / "scale-latest.json"
    if args.plot is None and not args.no_readme:
        args.plot = ROOT / "docs" / "scale.png"
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]

    def names(value: str, known: Iterable[str], what: str) -> list[str]:
        """A comma-separated list of names, each one of `known` (else the usage error)."""
        chosen = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            parser.error(f"unknown {what}: {', '.join(unknown)}")
        return chosen

    args.systems = names(args.systems, SYSTEMS, "systems")
    args.connect_variants = names(args.connect_variants, CONNECT_VARIANTS, "connect variants")
    set_files_per_process(args.files_per_process)
    return args


def set_files_per_process(count: int) -> None:
    global FILES_PER_PROCESS
    FILES_PER_PROCESS = count


def processes_for(connections: int) -> int:
    """Worker (and load) processes that keep each under the open-file limit: at least 2."""
    return max(2, math.ceil(connections / FILES_PER_PROCESS))


def phase_seconds(args: argparse.Namespace, rate: float, size: int) -> float:
    """`--duration`, shortened so one phase delivers at most `--deliveries` events (2 s at least):
    100,000 clients at 10 events/s are a million deliveries a second, which 2 shared cores
    work through far slower than they arrive."""
    return max(2.0, min(float(args.duration), float(args.deliveries) / (rate * size)))


def rsa_keys() -> tuple[str, str]:
    """A fresh RSA-2048 key pair (private, public PEM), as an identity provider would sign with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


class Clients:
    """Load processes against one system: connect, then phases on the same connections."""

    def __init__(self, system: System, ws: int, sse: int, procs: int, secret: str, **extra: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        args = argparse.Namespace(ws=ws, sse=sse, poll=0, procs=procs)
        self.workers: list[tuple[SpawnProcess, Connection]] = []
        self.children: list[int] = []
        for plan in _plans(system, args, secret, **extra):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=load.main, args=(plan, theirs), daemon=True)
            process.start()
            self.workers.append((process, mine))

    def ask(self, command: str, arg: object = None) -> list[Any]:
        for _, pipe in self.workers:
            pipe.send((command, arg))
        return [_recv(pipe, command) for _, pipe in self.workers]

    def connect(self) -> dict[str, Any]:
        parts = self.ask("connect")
        self.children = [p["pid"] for p in parts if "pid" in p]
        started = min(p["started"] for p in parts)
        opened = sum(p["opened"] for p in parts)
        seconds = max(p["finished"] for p in parts) - started
        out: dict[str, Any] = {
            "opened": opened,
            "failed": sum(p["failed"] for p in parts),
            "seconds": round(seconds, 3),
            "per_second": round(opened / seconds, 1) if seconds > 0 else 0.0,
        }
        if out["failed"] and any("failures" in p for p in parts):  # the C clients say why
            out["failures"] = {why: sum(p["failures"][why] for p in parts) for why in parts[0]["failures"]}
            out["first_status"] = next((p["first_status"] for p in parts if p["first_status"]), "")
        for kind in ("websocket", "sse"):
            count = sum(p["by_kind"][kind][0] for p in parts)
            last = max(p["by_kind"][kind][1] for p in parts)
            # WebSocket clients are queued first in every load process, so this is their own rate.
            if count and kind == "websocket":
                out["websocket_per_second"] = round(count / max(1e-3, last - started), 1)
        return out

    def pids(self) -> list[int]:
        """The load processes, and the C clients' processes they started (`--client c`)."""
        pids = [process.pid for process, _ in self.workers if process.pid is not None]
        return pids + self.children

    def close(self) -> None:
        stop_load_processes(self.workers)


def publish_phase(system: System, clients: Clients, first_seq: int, rate: float, duration: float) -> dict[str, Any]:
    """Publish `rate` events/s for `duration` s from `first_seq` on; count what arrived."""
    clients.ask("reset", first_seq)
    publisher = system.publisher()
    count = max(1, int(rate * duration))
    pids, load_pids = system.server_pids(), clients.pids()
    cpu_before, load_before, busy_before = cpu_seconds(pids), cpu_seconds(load_pids), machine_busy_seconds()
    batches_before, gc_before = batch_histogram(system), gc_histograms(system)
    lag_before = bus_lag_histogram(system)
    started = time.monotonic()
    try:
        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publisher.send(first_seq + i)
    finally:
        publisher.close()
    last = first_seq + count - 1
    parts = clients.ask("finish", (last, 120.0))
    clients_done = time.monotonic()
    cpu = cpu_seconds(pids) - cpu_before
    load_cpu, busy = cpu_seconds(load_pids) - load_before, machine_busy_seconds() - busy_before
    merged = {kind: Delivery() for kind in ("websocket", "sse")}
    for part in parts:
        for kind in merged:
            merged[kind].merge(part[kind])
    everything = Histogram()
    for d in merged.values():
        everything.merge(d.latency)
    result: dict[str, Any] = {
        "rate": rate,
        "seconds": duration,
        "events": count,
        "accepted": publisher.accepted,
        "server_cpu_seconds": round(cpu, 2),
        "all": report.latency_summary(everything),
    }
    for kind, d in merged.items():
        summary = report.delivery_summary(d)
        summary.pop("disorder_examples")
        result[kind] = summary
    result["lost"] = sum(result[k]["lost"] for k in merged)
    result["duplicated"] = sum(result[k]["duplicated"] for k in merged)
    result["out_of_order"] = sum(result[k]["out_of_order"] for k in merged)
    result["disconnected"] = sum(result[k]["disconnected"] for k in merged)
    wall = max(1e-3, clients_done - started)
    result["deliveries_per_second"] = round(sum(result[k]["received"] for k in merged) / wall, 1)
    result["slowest_by_third_ms"] = slowest_by_third(merged.values(), first_seq, count)
    # Where the machine's cores went from the first publish to the last delivery: the server,
    # the load clients (the same for every system), and the rest (the service's store, the
    # kernel's softirq work, the runner). A machine near all its cores busy is saturated: the
    # latency then measures the machine, not the server alone.
    result["cpu_cores"] = {
        "server": round(cpu / wall, 2),
        "load": round(load_cpu / wall, 2),
        "machine": round(busy / wall, 2),
        "of": os.cpu_count() or 0,
    }
    batches = fanout_batches(batches_before, batch_histogram(system))
    if batches is not None:
        result["fanout_batches"] = batches
    pauses = gc_pauses(gc_before, gc_histograms(system))
    if pauses is not None:
        result["gc"] = pauses
    lag_after = bus_lag_histogram(system)
    if lag_after is not None:
        # The store's share of the latency: insert → the service's change stream, by its clock.
        result["bus_lag"] = histogram_change(lag_before or {}, lag_after)
    return result


def bus_lag_histogram(system: System) -> dict[str, float] | None:
    """The service's `realtime_bus_lag_seconds` now; None for a peer (see `histogram_samples`)."""
    return histogram_samples(scrape(system), "realtime_bus_lag_seconds")


def slowest_by_third(deliveries: Iterable[Delivery], first_seq: int, count: int) -> list[float]:
    """The longest any client waited for an event of each third of a phase (ms), in publish
    order: flat when the backlog is bounded, rising when every event waits behind the last."""
    worst: dict[int, int] = {}
    for d in deliveries:
        for seq, us in d.worst_by_event.items():
            worst[seq] = max(us, worst.get(seq, 0))
    thirds = [[worst.get(first_seq + i, 0) for i in range(n * count // 3, (n + 1) * count // 3)] for n in range(3)]
    return [round(max(third, default=0) / 1000, 1) for third in thirds]


def room_for(connections: int, longest: float = 150.0) -> None:
    """Wait (bounded) until the kernel's connection-tracking table has room for `connections`
    more: closed loopback connections stay in it for 2 minutes (TIME_WAIT), and a full table
    drops new connections, which would read as the server refusing them."""
    try:
        limit = int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
    except OSError:
        return  # no connection tracking here
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        used = int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())
        if used + connections * 1.1 + 1000 < limit:
            return
        say(f"waiting for conntrack room: {used:,} of {limit:,} used, {connections:,} needed")
        time.sleep(5)


def run_point(
    system: System, size: int, args: argparse.Namespace, secret: str, store_pid: int | None = None
) -> dict[str, Any]:
    """One system at one size: connect, idle memory and CPU, then each event rate. `store_pid`:
    the service's MongoDB, which a point with presence on waits to see quiet (`presence_settled`)."""
    room_for(size)
    say(f"{system.name} {size}: starting")
    system.start()
    clients: Clients | None = None
    try:
        base_rss = rss_bytes(system.server_pids())
        clients = Clients(system, size // 2, size - size // 2, processes_for(size), secret, client=args.client)
        gc_before = gc_histograms(system)
        connect = clients.connect()
        say(f"{system.name} {size}: {connect}")
        time.sleep(2.0)  # also lets each worker flush its last GC pauses (once a second)
        connect_gc = gc_pauses(gc_before, gc_histograms(system))
        if connect_gc is not None:
            connect["gc"] = connect_gc
        joins = presence_settled(system, connect["opened"], args.settle, store_pid)
        if joins is not None:
            connect["presence"] = joins
            if joins["settled_s"] is None:
                say(f"{system.name} {size}: joins not all written after {args.settle:g} s; measuring anyway")
        pids = system.server_pids()
        idle_rss = rss_bytes(pids)
        idle_cpu = cpu_rate(pids, args.idle)
        point: dict[str, Any] = {
            "size": size,
            "workers": system.workers,
            "load_processes": processes_for(size),
            "connect": connect,
            "rss_baseline_mb": round(base_rss / 2**20, 1),
            "rss_idle_mb": round(idle_rss / 2**20, 1),
            "rss_per_connection_kb": round((idle_rss - base_rss) / max(1, connect["opened"]) / 1024, 2),
            "idle_cpu_percent_of_core": round(idle_cpu * 100, 2),
            "rates": {},
        }
        first = 1
        for rate in args.rates:
            phase = publish_phase(system, clients, first, rate, phase_seconds(args, rate, size))
            first += phase["events"]
            point["rates"][str(rate)] = phase
            say(
                f"{system.name} {size} @ {rate}/s: p99 {phase['all']['p99_ms']:.1f} ms, lost "
                f"{phase['lost']} dup {phase['duplicated']} ooo {phase['out_of_order']}"
            )
        return point
    finally:
        if clients is not None:
            clients.close()
        system.stop()


def presence_settled(system: System, users: int, limit: float, store_pid: int | None = None) -> dict[str, Any] | None:
    """With presence on (every client a new user), wait for the steady state the idle and publish
    measurements are for, not the tail of N joins: until the service counts `users` online
    (`realtime_presence_users`, read at its sweeps: `counted_s`) and then, with `store_pid`, until
    the store is quiet (under 5 % of a core over 2 s: each process's own presence documents are
    written after the joins), for at most `limit` s. How long it took (`settled_s`, None: not within
    `limit`); None for a peer, `PRESENCE=0` or `limit` 0."""
    if not isinstance(system, ServiceSystem) or system.extra_env.get("PRESENCE") == "0" or limit <= 0:
        return None
    started = time.monotonic()
    counted: float | None = None
    online: float | None = None
    while True:
        if counted is None:
            online = gauge_value(scrape(system), "realtime_presence_users")
            if online is not None and online >= users:
                counted = round(time.monotonic() - started, 1)
        if counted is not None and (store_pid is None or quiet(store_pid)):
            return {"users": users, "counted_s": counted, "settled_s": round(time.monotonic() - started, 1)}
        if time.monotonic() - started >= limit:
            return {"users": users, "counted_s": counted, "settled_s": None, "online": online}
        if counted is None:
            time.sleep(0.5)


def quiet(pid: int, window: float = 2.0, share: float = 0.05) -> bool:
    """Whether a process used under `share` of a core over the next `window` s."""
    return cpu_rate([pid], window) < share


def gauge_value(text: str | None, name: str) -> float | None:
    """An unlabelled gauge's value in a scrape; None when it is not there."""
    for line in (text or "").splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


T = TypeVar("T")


def events_during(system: System, watchers: Clients, rate: float, work: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """Publish `rate` events/s to `watchers` (connected already) for as long as `work` runs:
    what `work` returned, and how late those events reached the watchers."""
    watchers.ask("reset", 1)
    before = service_latencies(system)
    publisher = system.publisher()
    stop = threading.Event()
    sent = 0

    def publish() -> None:
        nonlocal sent
        started = time.monotonic()
        while not stop.is_set():
            if stop.wait(max(0.0, started + sent / rate - time.monotonic())):
                return
            publisher.send(1 + sent)
            sent += 1

    thread = threading.Thread(target=publish, name="storm-publisher", daemon=True)
    thread.start()
    try:
        out = work()
    finally:
        stop.set()
        thread.join(30)
        publisher.close()
    merged = Delivery()
    for part in watchers.ask("finish", (sent, 60.0)):
        merged.merge(part["websocket"])
    summary = report.delivery_summary(merged)
    summary.pop("disorder_examples")
    summary.pop("missing_by_seq")
    worst = max(merged.worst_by_event.values(), default=0)
    watched = {"rate": rate, "events": sent, "accepted": publisher.accepted, "slowest_ms": worst / 1000, **summary}
    after = service_latencies(system)
    if after:
        # Where the time went, by the service's own clock from the moment an event reached it:
        # to its change stream (bus lag), and to the last socket write (broadcast latency).
        watched["service"] = {name: histogram_change(before.get(name, {}), now) for name, now in after.items()}
    return out, watched


def service_latencies(system: System) -> dict[str, dict[str, float]]:
    """The service's bus-lag and WebSocket broadcast-latency histograms now: none for a peer,
    and none of either before the service has seen an event."""
    text = scrape(system)
    found = {
        "bus_lag": histogram_samples(text, "realtime_bus_lag_seconds"),
        "broadcast": histogram_samples(text, "realtime_broadcast_latency_seconds", transport="websocket"),
    }
    return {name: samples for name, samples in found.items() if samples is not None}


def histogram_change(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What a histogram gained between two readings: count, mean (ms) and the smallest bucket
    bounds (ms) that half and 99 % stayed under (None past the largest)."""
    diff = histogram_diff(before, after)
    count = diff.get("count", 0.0)
    p50, p99 = (smallest_bound(diff, share) if count else None for share in (0.5, 0.99))
    return {
        "count": int(count),
        "mean_ms": round(diff.get("sum", 0.0) / count * 1000, 1) if count else None,
        "p50_le_ms": round(p50 * 1000, 1) if p50 is not None else None,
        "p99_le_ms": round(p99 * 1000, 1) if p99 is not None else None,
    }


def connect_run(
    system: System, count: int, secret: str, algorithm: str, *, watchers: int = 0, watch_rate: float = 10.0
) -> dict[str, Any]:
    """Only WebSocket clients, only connecting: the authenticated connect rate. With `watchers`,
    that many clients connect first and receive `watch_rate` events/s while the others connect:
    what a connect storm does to the clients already there."""
    system.start()
    clients: Clients | None = None
    watching: Clients | None = None
    try:
        if watchers:
            watching = Clients(system, watchers, 0, 1, secret, algorithm=algorithm)
            watching.connect()
        # While watching, the storm's clients subscribe to a type nobody publishes: the events
        # go to the watchers alone, and the storm stays a storm of connects.
        storm = {"ws_path": f"/ws?events={STORM_EVENTS}"} if watching is not None else {}
        clients = Clients(system, count, 0, 2, secret, algorithm=algorithm, **storm)
        gc_before = gc_histograms(system)
        if watching is not None:
            result, watched = events_during(system, watching, watch_rate, clients.connect)
            result["watchers"] = watched
        else:
            result = clients.connect()
        time.sleep(1.5)  # each worker flushes its GC pauses once a second
        result["algorithm"] = algorithm
        pauses = gc_pauses(gc_before, gc_histograms(system))
        if pauses is not None:
            result["gc"] = pauses
        return result
    finally:
        say("connect run: stopping")
        for group in (clients, watching):
            if group is not None:
                group.close()
        system.stop()
        say("connect run: stopped")


def heartbeat_run(size: int, args: argparse.Namespace, workdir: Path, secret: str, mongo_uri: str) -> dict[str, Any]:
    """Events at the top rate with a short heartbeat: each event is 'during' a heartbeat tick
    when it was published while heartbeats were arriving at the clients (or up to 25 ms before), else 'between'."""
    workers = processes_for(size)
    env = {"HEARTBEAT_SECONDS": str(args.heartbeat_seconds)}
    system = ServiceSystem(workdir, secret, workers=workers, mongo_uri=mongo_uri, env=env, events=args.events)
    room_for(size)
    system.start()
    clients: Clients | None = None
    try:
        clients = Clients(system, size // 2, size - size // 2, processes_for(size), secret, track_heartbeats=True)
        connect = clients.connect()
        clients.ask("extras")  # forget the heartbeats while connecting
        seconds = max(phase_seconds(args, args.heartbeat_rate, size), 2 * args.heartbeat_seconds)
        phase = publish_phase(system, clients, 1, args.heartbeat_rate, seconds)
        parts = clients.ask("extras")
    finally:
        if clients is not None:
            clients.close()
        system.stop()
    beats: dict[int, int] = {}
    by_seq: dict[int, Histogram] = {}
    for part in parts:
        for ms, n in part["beats"].items():
            beats[ms] = beats.get(ms, 0) + n
        for seq, hist in part["by_seq"].items():
            by_seq.setdefault(seq, Histogram()).merge(hist)
    # Heartbeat bursts: runs of milliseconds with arrivals no more than 20 ms apart.
    bursts: list[list[int]] = []
    for ms in sorted(beats):
        if bursts and ms - bursts[-1][1] <= 20:
            bursts[-1][1] = ms
        else:
            bursts.append([ms, ms])
    sent_ms = {seq: us / 1000 for part in parts for seq, us in part["sent_us"].items()}
    during, between = Histogram(), Histogram()
    n_during = 0
    for seq, hist in by_seq.items():
        t = sent_ms.get(seq)
        inside = t is not None and any(start - 25 <= t <= end + 5 for start, end in bursts)
        n_during += int(inside)
        (during if inside else between).merge(hist)
    return {
        "size": size,
        "workers": workers,
        "heartbeat_seconds": args.heartbeat_seconds,
        "connect": connect,
        "phase": phase,
        "bursts": len(bursts),
        "burst_ms_median": sorted(e - s + 1 for s, e in bursts)[len(bursts) // 2] if bursts else 0,
        "events_during": n_during,
        "events_between": len(by_seq) - n_during,
        "burst_windows_ms": bursts[:60],
        "sent_ms": dict(sorted(sent_ms.items())[:60]),
        "during": report.latency_summary(during),
        "between": report.latency_summary(between),
    }


def save(document: dict[str, Any], args: argparse.Namespace) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")


def table(document: dict[str, Any]) -> str:
    rows = [
        "| connections | system | workers | rate /s × s | WS p50 / p99 ms | SSE p50 / p99 ms "
        "| lost / dup / out-of-order "
        "| RSS per conn KB | idle CPU % of a core | connects /s (WS alone) | deliveries /s | events per fan-out "
        "| slowest event by third ms | cores busy: server / load / machine |",
        "|" + "---|" * 14,
    ]
    for point in document["points"]:
        for rate, phase in point["rates"].items():
            ws, sse = phase["websocket"]["latency"], phase["sse"]["latency"]
            connect = point["connect"]
            rows.append(
                f"| {point['size']:,} | {point['system']} | {point['workers']} "
                f"| {float(rate):g} × {phase['seconds']:g} "
                f"| {ws['p50_ms']:.1f} / {ws['p99_ms']:.1f} | {sse['p50_ms']:.1f} / {sse['p99_ms']:.1f} "
                f"| {phase['lost']} / {phase['duplicated']} / {phase['out_of_order']} "
                f"| {point['rss_per_connection_kb']:.1f} | {point['idle_cpu_percent_of_core']:.1f} "
                f"| {connect['per_second']:.0f} ({connect.get('websocket_per_second', 0):.0f}) "
                f"| {phase.get('deliveries_per_second', 0):,.0f} "
                f"| {phase['fanout_batches']['mean'] if phase.get('fanout_batches') else '–'} "
                f"| {' / '.join(f'{ms:.0f}' for ms in phase.get('slowest_by_third_ms', [])) or '–'} "
                f"| {cores_busy(phase)} |"
            )
    out = "\n".join(rows)
    missing = [
        f"{entry['system']} {entry['size']:,}: {entry.get('error') or 'skipped, ' + entry['reason']}"
        for entry in sorted(
            document.get("failures", []) + document.get("skipped", []), key=lambda e: (e["system"], e["size"])
        )
    ]
    if missing:
        out += "\n\nNot measured: " + "; ".join(missing) + "."
    if document["points"]:
        out += "\n\n" + sizing_table(document)
    if document.get("connect_runs"):
        out += (
            "\n\n| connect run | code | algorithm | log | WebSocket clients | connected / failed | connects /s "
            "| events to clients already connected: p50 / p99 / slowest ms, lost |\n"
        )
        out += "|---|---|---|---|---|---|---|---|\n"
        for run in document["connect_runs"]:
            watched = run.get("watchers")
            during = "–"
            if watched:
                latency = watched["latency"]
                during = (
                    f"{latency['p50_ms']:.1f} / {latency['p99_ms']:.1f} / {watched['slowest_ms']:.0f}, "
                    f"{watched['lost']}"
                )
            out += (
                f"| {run['label']} | {run['code']} | {run['algorithm']} | {run.get('log', 'WARNING')} "
                f"| {run['clients']:,} "
                f"| {run['opened']} / {run['failed']} | {run['per_second']:.0f} | {during} |\n"
            )
    hb = document.get("heartbeat")
    if hb:
        out += (
            f"\n\nHeartbeat ({hb['size']:,} connections, HEARTBEAT_SECONDS={hb['heartbeat_seconds']:g}, "
            f"{hb['phase']['rate']:g} events/s, {hb['bursts']} heartbeat bursts of ~{hb['burst_ms_median']} ms): "
            f"events published during a burst ({hb['events_during']}): p50 / p99 "
            f"{hb['during']['p50_ms']:.1f} / {hb['during']['p99_ms']:.1f} ms; between bursts "
            f"({hb['events_between']}): {hb['between']['p50_ms']:.1f} / {hb['between']['p99_ms']:.1f} ms; "
            f"lost / dup / out-of-order {hb['phase']['lost']} / {hb['phase']['duplicated']} / "
            f"{hb['phase']['out_of_order']}."
        )
    return out


def held(point: dict[str, Any]) -> bool:
    """Whether a system held a point: every client connected and none dropped in a phase. One
    that did not is not tried at larger sizes in the same run (Pushpin spent 5 minutes failing to
    connect 25,000, then 5 more at 50,000)."""
    if point["connect"]["failed"] or point["connect"]["opened"] < point["size"]:
        return False
    return not any(phase["disconnected"] for phase in point["rates"].values())


def cores_busy(phase: dict[str, Any]) -> str:
    """`server / load / machine of N` cores busy over a phase ('–' in runs before it was kept)."""
    cores = phase.get("cpu_cores")
    if not cores:
        return "–"
    return f"{cores['server']:.2f} / {cores['load']:.2f} / {cores['machine']:.2f} of {cores['of']}"


def sizing(document: dict[str, Any], system: str = "service") -> dict[str, Any]:
    """What the curve says for one system: per event rate, the most connections held (all
    delivered) with p99 within 50 ms and within 250 ms, per core of this 2-core machine; and
    idle memory per 10,000 connections at the largest size held."""
    points = sorted((p for p in document["points"] if p["system"] == system), key=lambda p: p["size"])
    cores = int(document["machine"].get("nproc", "2") or 2)
    out: dict[str, Any] = {"cores": cores, "by_rate": {}}
    for rate in sorted({r for p in points for r in p["rates"]}, key=float):
        row: dict[str, Any] = {}
        for bound in (50, 250):
            held = [
                p["size"]
                for p in points
                if rate in p["rates"]
                and p["rates"][rate]["all"]["p99_ms"] <= bound
                and p["rates"][rate]["lost"] + p["rates"][rate]["duplicated"] + p["rates"][rate]["out_of_order"] == 0
            ]
            row[f"p99_{bound}ms"] = max(held, default=0)
            row[f"p99_{bound}ms_per_core"] = max(held, default=0) // cores
        out["by_rate"][rate] = row
    if points:
        top = points[-1]
        out["largest"] = top["size"]
        out["mb_per_10k"] = round(top["rss_per_connection_kb"] * 10_000 / 1024, 1)
        out["baseline_mb_per_worker"] = round(top["rss_baseline_mb"] / max(1, top["workers"]), 1)
    return out


def sizing_table(document: dict[str, Any]) -> str:
    rows = [
        "| system | events /s | most connections with p99 ≤ 50 ms (per core) "
        "| with p99 ≤ 250 ms (per core) | idle RSS per 10k connections |",
        "|---|---|---|---|---|",
    ]
    for system in _systems(document):
        s = sizing(document, system)
        for rate, row in s["by_rate"].items():
            rows.append(
                f"| {system} | {float(rate):g} | {row['p99_50ms']:,} ({row['p99_50ms_per_core']:,}) "
                f"| {row['p99_250ms']:,} ({row['p99_250ms_per_core']:,}) | {s.get('mb_per_10k', 0):g} MB |"
            )
    return "\n".join(rows)


def _systems(document: dict[str, Any]) -> list[str]:
    """The systems with points, in the order they were first measured."""
    return list(dict.fromkeys(p["system"] for p in document["points"]))


def write_readme(markdown: str, command: str) -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    block = f"{START}\nCommand: `{command}`\n\n{markdown}\n{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text += f"\n## Scaling run (`make bench-scale`)\n\n{block}\n"
    readme.write_text(text)


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {
        "service": "tab:blue",
        "service, PRESENCE=0": "tab:purple",
        "nchan": "tab:orange",
        "socketio": "tab:green",
        "pushpin": "tab:red",
    }
    for system in _systems(document):
        colour = colours.get(system, "tab:grey")
        points = sorted((p for p in document["points"] if p["system"] == system), key=lambda p: p["size"])
        if not points:
            continue
        sizes = [p["size"] for p in points]
        for rate, style in (("1.0", "-"), ("10.0", "--")):
            p99 = [p["rates"][rate]["all"]["p99_ms"] if rate in p["rates"] else math.nan for p in points]
            lat.plot(sizes, p99, style, marker="o", color=colour, label=f"{system}, {float(rate):g} event/s")
        per_conn = [p["rss_per_connection_kb"] for p in points]
        mem.plot(sizes, per_conn, marker="o", color=colour, label=f"{system}")
    lat.set(xscale="log", yscale="log", xlabel="connections (half WebSocket, half SSE)", ylabel="p99 ms")
    lat.axhline(50, color="grey", lw=0.6, ls=":")
    lat.axhline(250, color="grey", lw=0.6, ls=":")
    lat.legend(fontsize=8)
    lat.grid(alpha=0.3)
    mem.set(xscale="log", xlabel="connections", ylabel="idle RSS per connection KB (all workers)")
    mem.set_ylim(bottom=0)
    mem.axhline(5, color="grey", lw=0.6, ls=":")
    mem.legend(fontsize=8)
    mem.grid(alpha=0.3)
    fig.suptitle(f"2 vCPU, one machine, clients on the same cores — {document['when']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def render(document: dict[str, Any], args: argparse.Namespace) -> None:
    markdown = table(document)
    print(markdown)
    if document["points"] and args.plot is not None:
        plot(document, args.plot)
    if not args.no_readme:
        write_readme(markdown, document["command"])


def make_system(name: str, workdir: Path, secret: str, workers: int, mongo_uri: str, events: str) -> System:
    """System `name` of `SYSTEMS` with `workers` processes (Pushpin: always one instance)."""
    if name in ("service", "service-nopresence"):
        env = {"PRESENCE": "0"} if name == "service-nopresence" else None
        return ServiceSystem(workdir, secret, workers=workers, mongo_uri=mongo_uri, events=events, env=env)
    if name == "socketio":
        return SocketIoSystem(workdir, secret, workers=workers)
    if name == "pushpin":  # one instance: condure holds every socket in one process
        return PushpinSystem(workdir, secret)
    return NchanSystem(workdir, secret, workers=workers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        render(json.loads(args.render.read_text()), args)
        return 0
    # `timeout` / kill: stop what was started and still write what was measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    secret = secrets.token_urlsafe(32)
    command = "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    document: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": report.machine(),
        "files_per_process": args.files_per_process,
        "points": [],
        "connect_runs": [],
        "heartbeat": None,
    }
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        mongo = EmbeddedMongo(":memory:")
        mongo_uri = mongo.start()
        try:
            if not args.no_connect:
                private, public = rsa_keys()
                codes = [("this", ROOT)] + ([("old", args.old.resolve())] if args.old else [])
                variants = [CONNECT_VARIANTS[name] for name in args.connect_variants]
                order = [(c, v) for _ in range(args.connect_reps) for v in variants for c in codes]
                presence = {"PRESENCE": "0"} if args.connect_no_presence else {}
                for (label, root), (algorithm, env) in order:
                    if True:
                        key = secret if algorithm == "HS256" else private
                        system: System = ServiceSystem(
                            workdir,
                            secret,
                            workers=2,
                            mongo_uri=mongo_uri,
                            root=root,
                            public_key=public if algorithm == "RS256" else None,
                            env=env | presence,
                        )
                        run = connect_run(
                            system,
                            args.connect_size,
                            key,
                            algorithm,
                            watchers=args.storm_watchers,
                            watch_rate=args.storm_rate,
                        )
                        run.update(label="WORKERS=2", code=label, clients=args.connect_size)
                        run["log"] = env.get("LOG_LEVEL", "WARNING") + (
                            " json" if env.get("LOG_FORMAT") == "json" else ""
                        )
                        run["presence"] = not args.connect_no_presence
                        document["connect_runs"].append(run)
                        say(f"connect {label} {algorithm}: {run}")
                        save(document, args)
            largest = 0
            could_not_hold: dict[str, int] = {}  # system -> the smallest size it did not hold
            for size in args.sizes:
                for name in args.systems:
                    if args.deadline and time.monotonic() - began > args.deadline:
                        say(f"deadline: skipping {name} {size}")
                        continue
                    label = LABELS.get(name, name)
                    if name in could_not_hold and size > could_not_hold[name]:
                        reason = f"did not hold {could_not_hold[name]:,} connections in this run"
                        say(f"skipping {name} {size}: {reason}")
                        document.setdefault("skipped", []).append({"system": label, "size": size, "reason": reason})
                        continue
                    system = make_system(name, workdir, secret, processes_for(size), mongo_uri, args.events)
                    try:
                        point = run_point(system, size, args, secret, mongo.pid)
                    except Exception as exc:  # a size that cannot be held is a result too
                        say(f"{name} {size} failed: {exc!r}")
                        document.setdefault("failures", []).append({"system": label, "size": size, "error": repr(exc)})
                        could_not_hold.setdefault(name, size)
                        save(document, args)
                        continue
                    point["system"] = label
                    document["points"].append(point)
                    if not held(point):
                        could_not_hold.setdefault(name, size)
                    if name == "service":
                        largest = max(largest, size)
                    save(document, args)
            late = args.deadline and time.monotonic() - began > args.deadline
            if not args.no_heartbeat and (args.heartbeat_size or largest) and not late:
                size = args.heartbeat_size or largest
                say(f"heartbeat run at {size}")
                document["heartbeat"] = heartbeat_run(size, args, workdir, secret, mongo_uri)
                save(document, args)
        finally:
            mongo.stop()
            document["seconds"] = round(time.monotonic() - began, 1)
            save(document, args)
            render(document, args)
            say(f"JSON: {args.out}" + (f", plot: {args.plot}" if args.plot is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
