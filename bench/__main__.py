"""`python -m bench`: fan-out latency, delivery, memory and connect rate of the service against
nginx+nchan and a naive Tornado server, in one run, with the same client harness.

Each system runs alone in turn: start it, open the clients from separate load processes,
measure idle memory, publish `--rate` events per second for `--duration` seconds (each
carrying its sequence number and send time), count what every client received, stop it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from bench import load, report
from bench.peers.pushpin_system import PushpinSystem
from bench.peers.socketio_system import SocketIoSystem
from bench.stats import Delivery, Histogram
from bench.systems import (
    NaiveSystem,
    NchanSystem,
    ServiceSystem,
    System,
    add_client_option,
    add_events_option,
    cpu_seconds,
    rss_bytes,
)
from service.storage.mongo.embedded import EmbeddedMongo

SYSTEMS = ("service1", "service2", "naive", "nchan1", "nchan2", "socketio1", "socketio2", "pushpin1")
PIPE_TIMEOUT = 300.0  # no single step of a load process may take longer than this


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--ws", type=int, default=200, help="WebSocket clients (`make bench` uses 5000)")
    parser.add_argument("--sse", type=int, default=200, help="SSE clients (`make bench` uses 5000)")
    parser.add_argument("--poll", type=int, default=0, help="long-polling clients (the service only)")
    parser.add_argument(
        "--apart",
        action="store_true",
        help="run each transport alone (service systems), so server CPU per delivered event is per transport",
    )
    parser.add_argument("--rate", type=float, default=20, help="events published per second")
    parser.add_argument("--duration", type=float, default=5, help="seconds of publishing (`make bench` uses 20)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, any of {','.join(SYSTEMS)}")
    parser.add_argument("--procs", type=int, default=2, help="load processes (each holds at most ~19,000 sockets)")
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before memory is read")
    parser.add_argument(
        "--drain",
        type=float,
        default=120.0,
        help="longest wait for the last event after publishing (a saturated server drains its backlog)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep server logs and configs here")
    parser.add_argument("--out", default="latest", help="results/<OUT>.json; only `latest` also updates README.md")
    add_events_option(parser)
    add_client_option(parser)
    parser.add_argument("--no-save", action="store_true", help="print only: leave results/ and README.md alone")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    names = ["nchan2" if s == "nchan" else s for s in names]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)}")
    args.systems = names
    if args.client == "c" and args.poll:
        parser.error("--client c has no long-polling clients: use --client python with --poll")
    return args


def stop_load_processes(workers: list[tuple[Any, Connection]]) -> None:
    """Ask each load process to exit; terminate the ones that do not within 15 s."""
    for process, pipe in workers:
        try:
            pipe.send(("exit", None))
        except OSError:
            pass
        process.join(15)
        if process.is_alive():
            process.terminate()
            process.join(5)


def _recv(pipe: Connection, what: str) -> Any:
    if not pipe.poll(PIPE_TIMEOUT):
        raise RuntimeError(f"load process did not answer {what} within {PIPE_TIMEOUT:.0f}s")
    return pipe.recv()


def _plans(system: System, args: argparse.Namespace, secret: str, **extra: Any) -> list[load.Plan]:
    """One plan per load process; `extra`: more `load.Plan` fields (algorithm, ...), or other
    values for those taken from `system` (ws_path, ...)."""
    plans = []
    user = 1
    for i in range(args.procs):
        ws = args.ws // args.procs + (1 if i < args.ws % args.procs else 0)
        sse = args.sse // args.procs + (1 if i < args.sse % args.procs else 0)
        poll = args.poll // args.procs + (1 if i < args.poll % args.procs else 0)
        if system.sse_path is None:  # no SSE transport (Socket.IO): the same connections, all WebSocket
            ws, sse = ws + sse, 0
        fields: dict[str, Any] = {
            "port": system.port,
            "ws_path": system.ws_path,
            "sse_path": system.sse_path or "",
            "ws_protocol": system.ws_protocol,
            "ws": ws,
            "sse": sse,
            "poll": poll if system.name.startswith("service") else 0,
            "first_user": user,
            "jwt_secret": secret,
            "greeting": system.greeting,
            "concurrency": system.connect_concurrency,
        }
        plans.append(load.Plan(**(fields | extra)))
        user += ws + sse + poll
    return plans


def publish(system: System, rate: float, duration: float) -> tuple[int, int]:
    """Publish at a steady rate, bounded in count and time; returns (sent, accepted)."""
    publisher = system.publisher()
    count = max(1, int(rate * duration))
    started = time.monotonic()
    try:
        for seq in range(1, count + 1):
            delay = started + (seq - 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publisher.send(seq)
    finally:
        publisher.close()
    return count, publisher.accepted


def scrape(system: System) -> str | None:
    """The service's /metrics text (summed over workers: with WORKERS > 1 any worker's /metrics
    reads every worker's files); None for other systems, or when it does not answer."""
    if not isinstance(system, ServiceSystem):
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{system.port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
            return text
    except OSError:
        return None


def histogram_samples(text: str | None, name: str, **labels: str) -> dict[str, float] | None:
    """One histogram series of a scrape as {le: cumulative count, "sum": ..., "count": ...};
    None when the scrape has none (code without the metric)."""
    if text is None:
        return None
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name) or not all(label in line for label in wanted):
            continue
        series, value = line.split(" ", 1)[0], float(line.rsplit(" ", 1)[1])
        if series.startswith(name + "_bucket"):
            values[series.split('le="', 1)[1].split('"', 1)[0]] = value
        elif series.startswith((name + "_sum", name + "_count")):
            values[series.split("{", 1)[0].rsplit("_", 1)[1]] = value
    return values or None


def batch_histogram(system: System) -> dict[str, float] | None:
    """The service's `realtime_fanout_batch_size` histogram now (see `histogram_samples`)."""
    return histogram_samples(scrape(system), "realtime_fanout_batch_size")


def gc_histograms(system: System) -> dict[str, dict[str, float]] | None:
    """The service's `realtime_gc_pause_seconds` now, per generation (all workers summed)."""
    text = scrape(system)
    by_generation = {g: histogram_samples(text, "realtime_gc_pause_seconds", generation=g) for g in "012"}
    if any(h is None for h in by_generation.values()):
        return None
    return {g: h for g, h in by_generation.items() if h is not None}


def histogram_diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What one histogram series (as `histogram_samples` reads it) gained between two readings."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def smallest_bound(diff: dict[str, float], share: float) -> float | None:
    """The smallest bucket bound that at least `share` of a `histogram_diff`'s observations
    stayed under (None: there were none, or they went past the largest bound)."""
    count = diff.get("count", 0.0)
    return min(
        (float(le) for le, n in diff.items() if le not in ("sum", "count", "+Inf") and n >= share * count),
        default=None,
    )


def gc_pauses(
    before: dict[str, dict[str, float]] | None, after: dict[str, dict[str, float]] | None
) -> dict[str, dict[str, Any]] | None:
    """The garbage-collection pauses between two readings (all workers), per generation ("2":
    full collections): how many, their total seconds, and the smallest bucket bound the longest
    stayed under (None: none ran, or one took longer than the largest bound)."""
    if before is None or after is None:
        return None
    pauses: dict[str, dict[str, Any]] = {}
    for generation, now in after.items():
        diff = histogram_diff(before[generation], now)
        count = diff.get("count", 0)
        longest = smallest_bound(diff, 1.0)
        pauses[generation] = {
            "count": int(count),
            "seconds": round(diff.get("sum", 0.0), 3),
            "longest_le_ms": round(longest * 1000, 1) if count and longest is not None else None,
        }
    return pauses


def fanout_batches(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any] | None:
    """The fan-outs while publishing: how many, how many events, the mean batch, how many
    sent more than one event, and the cumulative distribution by batch size."""
    if before is None or after is None:
        return None
    diff = {key: int(n) for key, n in histogram_diff(before, after).items()}
    count = diff.get("count", 0)
    if not count:
        return None
    return {
        "fanouts": count,
        "events": diff.get("sum", 0),
        "mean": round(diff.get("sum", 0) / count, 2),
        "batched": count - diff.get("1.0", count),
        "cumulative": {le: n for le, n in diff.items() if le not in ("sum", "count")},
    }


def run_system(system: System, args: argparse.Namespace, secret: str) -> dict[str, Any]:
    """Start, load, publish, count, stop. Every process started here is stopped by pid."""
    ctx = multiprocessing.get_context("spawn")
    workers: list[tuple[SpawnProcess, Connection]] = []
    print(f"[{system.name}] starting", file=sys.stderr, flush=True)
    system.start()
    try:
        pids = system.server_pids()
        base_rss = rss_bytes(pids)
        for plan in _plans(system, args, secret, client=args.client):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=load.main, args=(plan, theirs), daemon=True)
            process.start()
            workers.append((process, mine))
        for _, pipe in workers:
            pipe.send(("connect", None))
        connects = [_recv(pipe, "connect") for _, pipe in workers]
        opened = sum(c["opened"] for c in connects)
        failed = sum(c["failed"] for c in connects)
        connect_seconds = max(c["finished"] for c in connects) - min(c["started"] for c in connects)
        note = f"[{system.name}] {opened} connected, {failed} failed, {connect_seconds:.1f}s"
        print(note, file=sys.stderr, flush=True)
        time.sleep(args.settle)
        pids = system.server_pids()
        idle_rss = rss_bytes(pids)
        cpu_before = cpu_seconds(pids)
        histogram_before = batch_histogram(system)
        sent, accepted = publish(system, args.rate, args.duration)
        for _, pipe in workers:
            pipe.send(("finish", (sent, args.drain)))
        deliveries = [_recv(pipe, "finish") for _, pipe in workers]
        cpu_used = cpu_seconds(pids) - cpu_before
        batches = fanout_batches(histogram_before, batch_histogram(system))
        if batches is not None:
            print(f"[{system.name}] fan-out batches: {batches}", file=sys.stderr, flush=True)
    finally:
        stop_load_processes(workers)
        system.stop()
    merged = {kind: Delivery() for kind in load.CLIENTS}
    for part in deliveries:
        for kind, d in part.items():
            merged[kind].merge(d)
    everything, worst = Histogram(), Delivery()
    for d in merged.values():
        everything.merge(d.latency)
        worst.merge(Delivery(worst_by_event=d.worst_by_event))
    result = {
        "workers": system.workers,
        "published": sent,
        "publish_accepted": accepted,
        "connections": opened,
        "connect_failed": failed,
        "connect_seconds": round(connect_seconds, 3),
        "connect_per_second": opened / connect_seconds if connect_seconds > 0 else 0.0,
        "rss_baseline_mb": base_rss / 2**20,
        "rss_idle_mb": idle_rss / 2**20,
        "rss_per_connection_kb": (idle_rss - base_rss) / max(1, opened) / 1024,
        "server_cpu_seconds": cpu_used,
        "fanout_batches": batches,
        "websocket": report.delivery_summary(merged["websocket"]),
        "sse": report.delivery_summary(merged["sse"]),
        "poll": report.delivery_summary(merged["poll"]),
        "server_cpu_us_per_delivered": cpu_used * 1e6 / max(1, sum(d.received for d in merged.values())),
        "all": report.latency_summary(everything),
        "slowest_events": report.slowest_events(worst.worst_by_event),
    }
    print(f"[{system.name}] done: p99 {result['all']['p99_ms']:.1f} ms", file=sys.stderr, flush=True)
    return result


def transport_table(results: dict[str, dict[str, Any]]) -> str:
    """Per transport: publish→receive latency and server CPU per delivered event."""
    rows = [
        "| run | transport | clients | received | lost / dup / out-of-order | p50 / p99 / max ms "
        "| server CPU s | CPU µs per delivered event |",
        "|" + "---|" * 8,
    ]
    for name, r in results.items():
        for kind in load.CLIENTS:
            d = r.get(kind)
            if not d or not d["clients"]:
                continue
            lat = " / ".join(_fmt(d["latency"][k]) for k in ("p50_ms", "p99_ms", "max_ms"))
            rows.append(
                f"| {name} | {kind} | {d['clients']} | {d['received']} "
                f"| {d['lost']} / {d['duplicated']} / {d['out_of_order']} | {lat} "
                f"| {_fmt(r['server_cpu_seconds'])} | {_fmt(r['server_cpu_us_per_delivered'])} |"
            )
    return "\n".join(rows)


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secret = secrets.token_urlsafe(32)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        mongo: EmbeddedMongo | None = None
        try:
            if any(s.startswith("service") for s in args.systems):
                mongo = EmbeddedMongo(":memory:")
                mongo_uri = mongo.start()
            for name in args.systems:
                system: System
                if name.startswith("service"):
                    system = ServiceSystem(
                        workdir, secret, workers=int(name[-1]), mongo_uri=mongo_uri, events=args.events
                    )
                elif name == "naive":
                    system = NaiveSystem(workdir, secret)
                elif name.startswith("socketio"):
                    system = SocketIoSystem(workdir, secret, workers=int(name[-1]))
                elif name == "pushpin1":
                    system = PushpinSystem(workdir, secret)
                else:
                    system = NchanSystem(workdir, secret, workers=int(name[-1]))
                if args.apart and name.startswith("service"):
                    for kind, count in (("websocket", args.ws), ("sse", args.sse), ("poll", args.poll)):
                        if count:
                            alone = argparse.Namespace(**{**vars(args), "ws": 0, "sse": 0, "poll": 0})
                            setattr(alone, "ws" if kind == "websocket" else kind, count)
                            system = ServiceSystem(
                                workdir, secret, workers=int(name[-1]), mongo_uri=mongo_uri, events=args.events
                            )
                            results[f"{name} {kind}"] = run_system(system, alone, secret)
                    continue
                results[name] = run_system(system, args, secret)
        finally:
            if mongo is not None:
                mongo.stop()
    report.add_ratios(results)
    markdown = report.table(results)
    if args.poll or args.apart:
        markdown += "\n\n" + transport_table(results)
    print(markdown)
    if not args.no_save:
        document = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": report.machine(),
            "sizes": {"ws": args.ws, "sse": args.sse, "poll": args.poll, "rate": args.rate, "duration": args.duration},
            "publish_path": {
                "service": "insert_one into `events` (acknowledged, sequential); delivery via the change stream",
                "naive": "POST /publish (broadcast in the request)",
                "nchan": "POST /pub (nchan_publisher)",
                "socketio": "POST /publish (io.emit, through the cluster adapter with 2 workers)",
                "pushpin": "POST /publish/ on the handler's HTTP publish port (ws-message and http-stream formats)",
            },
            "results": results,
            "table": markdown,
        }
        print(f"saved {report.save(document, markdown, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
