"""Does `realtime_broadcast_latency_seconds` read true? The clients' latencies beside the metric's.

    .venv/bin/python -m bench.metric_check [--ws 1000] [--events 40] [--rate 10] [--runs 1]

One run: SecantusDB and the service (WORKERS=1), `--ws` WebSocket clients from the bench's
load processes (bench/load.py), `--events` events through `POST /api/events` (each stamped
with its send time), then the service's `/metrics` scraped before and after. It prints the
clients' p50 / p99 / max (publish → received) beside the metric's p50 / p99 for the same
events, computed from the scraped buckets as Prometheus' `histogram_quantile` does, also with
the buckets the service had before (.001 .0025 .005 .01 .025 .05 .1 .25 .5 1 2.5).

The metric is one observation per event, at the write to its last socket, timed from when the
service first knew of the event; every client's latency also counts the HTTP request before
that and its own read after it. So the metric's p99 should sit at or below the slowest client,
and the check is metric p99 ÷ slowest client ≤ 1.1.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
from prometheus_client.parser import text_string_to_metric_families

from bench.__main__ import run_system
from bench.dashboard_preview import histogram_quantile
from bench.systems import HttpPublisher, Publisher, ServiceSystem
from service.storage.mongo.embedded import EmbeddedMongo

OLD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LIMIT = 1.1  # metric p99 ÷ slowest client


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return str(response.read().decode())


def buckets(text: str, family_name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts by `le` of one histogram's series with these labels."""
    found: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and all(sample.labels.get(k) == v for k, v in labels.items()):
                le = float(sample.labels["le"])
                found[le] = found.get(le, 0.0) + sample.value
    return found


def increase(after: dict[float, float], before: dict[float, float]) -> list[tuple[float, float]]:
    """What the buckets counted between two scrapes: the events of this run only."""
    return sorted((le, count - before.get(le, 0.0)) for le, count in after.items())


def coarsen(counts: list[tuple[float, float]], edges: tuple[float, ...]) -> list[tuple[float, float]]:
    """The same cumulative counts with only these edges (and +Inf): what coarser buckets would say."""
    keep = {*edges, float("inf")}
    return [(le, count) for le, count in counts if le in keep]


def quantiles(counts: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "count": counts[-1][1] if counts else 0.0,
        "p50_ms": histogram_quantile(0.5, counts) * 1000,
        "p99_ms": histogram_quantile(0.99, counts) * 1000,
    }


class MetricCheckSystem(ServiceSystem):
    """The bench's service launcher, publishing through `POST /api/events` and scraping `/metrics`
    just before publishing and just before it stops (after every client had the last event)."""

    def __init__(self, workdir: Path, secret: str, mongo_uri: str) -> None:
        super().__init__(workdir, secret, workers=1, mongo_uri=mongo_uri)
        self.before = ""
        self.after = ""

    def publisher(self) -> Publisher:
        self.before = scrape(self.port)
        now = int(time.time())
        claims = {"sub": "bench-publisher", "name": "bench", "roles": ["publisher"], "iat": now, "exp": now + 3600}
        token = jwt.encode(claims, self.secret, algorithm="HS256")
        return HttpPublisher(self.port, "/api/events", self.body, {"Authorization": f"Bearer {token}"})

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.after = scrape(self.port)
        super().stop()


def check(args: argparse.Namespace, mongo_uri: str, workdir: Path) -> dict[str, Any]:
    """One run: clients, events, scrapes; the figures side by side."""
    secret = secrets.token_urlsafe(32)
    system = MetricCheckSystem(workdir, secret, mongo_uri)
    run_args = argparse.Namespace(
        ws=args.ws,
        sse=0,
        procs=args.procs,
        settle=1.0,
        rate=args.rate,
        duration=args.events / args.rate,
        drain=60.0,
    )
    result = run_system(system, run_args, secret)
    clients = result["websocket"]["latency"]
    latency = increase(
        buckets(system.after, "realtime_broadcast_latency_seconds", transport="websocket"),
        buckets(system.before, "realtime_broadcast_latency_seconds", transport="websocket"),
    )
    lag_name = "realtime_bus_lag_seconds"
    lag = increase(buckets(system.after, lag_name), buckets(system.before, lag_name))
    metric, old = quantiles(latency), quantiles(coarsen(latency, OLD_BUCKETS))
    ratio = metric["p99_ms"] / clients["max_ms"] if clients["max_ms"] else float("nan")
    return {
        "clients": result["connections"],
        "events": result["published"],
        "lost": result["websocket"]["lost"],
        "client_p50_ms": clients["p50_ms"],
        "client_p99_ms": clients["p99_ms"],
        "client_max_ms": clients["max_ms"],
        "metric": metric,
        "metric_old_buckets": old,
        "bus_lag": quantiles(lag),
        "metric_p99_over_client_max": ratio,
        "metric_p99_over_client_p99": metric["p99_ms"] / clients["p99_ms"] if clients["p99_ms"] else float("nan"),
        "old_p99_over_client_max": old["p99_ms"] / clients["max_ms"] if clients["max_ms"] else float("nan"),
        "buckets": latency,
    }


def line(run: dict[str, Any]) -> str:
    m, o, lag = run["metric"], run["metric_old_buckets"], run["bus_lag"]
    return (
        f"| {run['clients']} | {run['events']} ({m['count']:.0f} observed) | "
        f"{run['client_p50_ms']:.1f} / {run['client_p99_ms']:.1f} / {run['client_max_ms']:.1f} | "
        f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} | {o['p50_ms']:.1f} / {o['p99_ms']:.1f} | "
        f"{lag['p50_ms']:.1f} / {lag['p99_ms']:.1f} | "
        f"**{run['metric_p99_over_client_max']:.2f}** | {run['old_p99_over_client_max']:.2f} |"
    )


HEADER = (
    "| WS clients | events | clients p50 / p99 / max ms | metric p50 / p99 ms | old buckets p50 / p99 ms "
    "| bus lag p50 / p99 ms | metric p99 ÷ client max | old ÷ client max |\n|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metric_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ws", type=int, default=1000, help="WebSocket clients")
    parser.add_argument("--events", type=int, default=40, help="events published through POST /api/events")
    parser.add_argument("--rate", type=float, default=10, help="events per second")
    parser.add_argument("--procs", type=int, default=2, help="load processes")
    parser.add_argument("--runs", type=int, default=1, help="independent runs (a fresh service each)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="metric-check-") as tmp:
        mongo = EmbeddedMongo(":memory:")
        uri = mongo.start()
        try:
            for _ in range(args.runs):
                runs.append(check(args, uri, Path(tmp)))
        finally:
            mongo.stop()
    print(HEADER)
    for run in runs:
        print(line(run))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=2))
    failed = [run for run in runs if not run["metric_p99_over_client_max"] <= LIMIT]
    print(
        f"metric p99 ÷ slowest client ≤ {LIMIT}: "
        + ("yes" if not failed else f"no in {len(failed)} of {len(runs)} runs"),
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
