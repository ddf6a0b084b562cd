"""Render the Grafana dashboard (k8s/monitoring/dashboard.json) from a short real run.

Starts the service (embedded MongoDB) and a Prometheus server scraping it every second (with
the alert and SLO rules loaded, so the SLO row has its recorded series),
drives a small load (WebSocket and SSE clients, events, reconnects with resume, rejected
tokens, one stalled client), then asks Prometheus for every panel's PromQL over the run
(`query_range`) and draws the panels, placed as in the dashboard, into one PNG.
Grafana is not needed: the PNG is a preview of what the dashboard shows.

    .venv/bin/python -m bench.dashboard_preview --out docs/dashboard-preview.png

It also saves the last `/metrics` scrape and prints p50/p99 broadcast latency estimated
from its buckets. Everything listens on 127.0.0.1; every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import re
import secrets
import shutil
import socket
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from harness.processes import PrometheusProcess, ServiceProcess, wait_until
from service.app.auth import issue_token
from service.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent

DASHBOARD = ROOT / "k8s" / "monitoring" / "dashboard.json"
RULE_FILES = ("alerts.yaml", "slo-rules.yaml")
EVENT_TYPES = ("task_created", "task_executed", "task_updated", "schedule_updated", "deploy_finished")
ID_FIELD = re.compile(rb"id: ([0-9a-f]{16})\n")
BULK_PADDING = "x" * 60_000


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


# -- processes --------------------------------------------------------------------------


@dataclass
class Processes:
    """The service and a Prometheus scraping it, each stopped by pid (harness/processes.py)."""

    workdir: Path
    secret: str = field(default_factory=lambda: secrets.token_hex(32))
    service: ServiceProcess | None = None
    prometheus: PrometheusProcess | None = None

    @property
    def service_port(self) -> int:
        assert self.service is not None
        return self.service.port

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"

    def start(self, max_pending_bytes: int) -> None:
        env = {
            "JWT_SECRET": self.secret,
            "DEV_MODE": "0",
            "ALLOWED_ORIGINS": "*",
            "LOG_LEVEL": "WARNING",
            "MAX_PENDING_BYTES": str(max_pending_bytes),
        }
        self.service = ServiceProcess(self.workdir / "data", env)
        self.service.start()
        # The PrometheusRules' groups, so the SLO row's recorded series exist (evaluated each second).
        rule_files = []
        for name in RULE_FILES:
            path = self.workdir / name
            path.write_text(json.dumps(yaml.safe_load((DASHBOARD.parent / name).read_text())["spec"]))
            rule_files.append(path)
        self.prometheus = PrometheusProcess(
            self.workdir / "prometheus", f"127.0.0.1:{self.service_port}", tuple(rule_files)
        )
        self.prometheus.start()
        wait_until(self.scraped, 60, "prometheus to scrape the service")

    def scraped(self) -> bool:
        assert self.prometheus is not None and self.prometheus.process is not None
        if self.prometheus.process.poll() is not None:
            raise SystemExit(f"prometheus exited; log in {self.prometheus.log_path}")
        try:
            return bool(self.query('up{job="realtime"} == 1'))
        except (OSError, RuntimeError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        assert self.prometheus is not None
        return get_json(self.prometheus.url + "/api/v1/query?" + urlencode({"query": expr}))["result"]  # type: ignore[no-any-return]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        assert self.prometheus is not None
        params = urlencode({"query": expr, "start": start, "end": end, "step": step})
        return get_json(self.prometheus.url + "/api/v1/query_range?" + params)["result"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.service is not None:
            self.service.stop()


# -- load -------------------------------------------------------------------------------


class Load:
    """WebSocket and SSE clients that read everything, plus the traffic a dashboard should show."""

    def __init__(self, procs: Processes, ws_clients: int, sse_clients: int, rate: float) -> None:
        self.procs = procs
        self.settings = Settings(jwt_secret=procs.secret, jwt_algorithms=("HS256",))
        self.n_ws, self.n_sse, self.rate = ws_clients, sse_clients, rate
        self.last_id: dict[int, str | None] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.sockets: dict[int, ClientConnection] = {}
        self.random = random.Random(7)
        self.published = 0

    def token(self, sub: int, roles: tuple[str, ...] = ("user",), ttl: float = 3600) -> str:
        return issue_token(self.settings, sub=sub, name=f"user {sub}", roles=roles, ttl_seconds=ttl)

    def ws_url(self, query: dict[str, str]) -> str:
        return f"ws://127.0.0.1:{self.procs.service_port}/ws?" + urlencode(query)

    async def websocket_reader(self, n: int, last_id: str | None = None) -> None:
        query = {"token": self.token(n), "events": ",".join(EVENT_TYPES)}
        if last_id:
            query["last_event_id"] = last_id
        ws = await connect(self.ws_url(query), max_size=None)
        self.sockets[n] = ws
        try:
            await self._read_ws(n, ws)
        finally:
            await ws.close()  # code 1000 (leaving `async with` by cancellation would send 1011)

    async def _read_ws(self, n: int, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in ws:
                message = json.loads(text)
                if "id" in message:
                    self.last_id[n] = message["id"]

    async def sse_reader(self, n: int, last_id: str | None = None, *, read: bool = True, events: str = "") -> None:
        query = {"token": self.token(n), "events": events or ",".join(EVENT_TYPES)}
        headers = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
        sock = socket.socket()
        if not read:  # a small receive buffer: the stalled client backs up the server sooner
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.procs.service_port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            f"GET /events?{urlencode(query)} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"{headers}\r\n".encode()
        )
        tail = b""
        try:
            while read:
                data = await reader.read(65536)
                if not data:
                    return
                tail = tail[-64:] + data
                ids = ID_FIELD.findall(tail)
                if ids:
                    self.last_id[n] = ids[-1].decode()
            await asyncio.Event().wait()  # a stalled client: connected, never reading
        finally:
            writer.close()

    def spawn(self, n: int, coroutine: Any) -> None:
        self.tasks[n] = asyncio.create_task(coroutine)

    async def reconnect(self, n: int, *, bogus: bool = False) -> None:
        """Drop client n and reconnect it with its last event id (or an unusable one: resync)."""
        await self.leave(n)
        last = "not-an-event-id" if bogus else self.last_id.get(n)
        is_ws = n < self.n_ws
        self.spawn(n, self.websocket_reader(n, last) if is_ws else self.sse_reader(n, last))

    async def leave(self, n: int) -> None:
        """A WebSocket client closes normally (1000); an SSE client just goes away (1001)."""
        ws = self.sockets.pop(n, None)
        if ws is not None:
            await ws.close()
        task = self.tasks[n]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionClosed):
            await task

    async def slow_consumers(self, http: Any) -> float:
        response = await http.fetch(f"{self.procs.service_url}/metrics")
        families = text_string_to_metric_families(response.body.decode())
        return sum(s.value for f in families if f.name == "realtime_slow_consumer_disconnects" for s in f.samples)

    async def rejected(self, kind: int) -> None:
        """One connection attempt with bad credentials (an auth failure on the dashboard)."""
        port = self.procs.service_port
        if kind % 3 == 0:
            with contextlib.suppress(ConnectionClosed, OSError):
                async with connect(self.ws_url({"token": "not.a.token"})) as ws:
                    await ws.recv()
        else:
            token = "" if kind % 3 == 1 else self.token(1, ttl=-120)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            query = f"?token={token}" if token else ""
            writer.write(f"GET /events{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            await reader.read()
            writer.close()

    async def publish(self, client: Any, body: dict[str, Any], token: str) -> None:
        await client.fetch(
            f"{self.procs.service_url}/api/events",
            method="POST",
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            raise_error=False,
        )
        self.published += 1

    async def run(self, seconds: float) -> None:
        from tornado.httpclient import AsyncHTTPClient

        http = AsyncHTTPClient(max_clients=20)
        publisher = self.token(1000, roles=("publisher",))
        for n in range(self.n_ws):
            self.spawn(n, self.websocket_reader(n))
        for n in range(self.n_ws, self.n_ws + self.n_sse):
            self.spawn(n, self.sse_reader(n))
        start = time.monotonic()
        tick = 0
        stalled: asyncio.Task[None] | None = None
        bulk_until = 0.0
        while (elapsed := time.monotonic() - start) < seconds:
            kind = EVENT_TYPES[tick % len(EVENT_TYPES)]
            await self.publish(http, {"type": kind, "taskId": tick, "by": "dashboard_preview"}, publisher)
            if tick % int(self.rate * 2) == 0:  # every ~2 s: a reconnect that resumes, a rejected token
                await self.reconnect(self.random.randrange(self.n_ws + self.n_sse))
                await self.rejected(tick // int(self.rate * 2))
                await http.fetch(
                    f"{self.procs.service_url}/api/events",
                    method="POST",
                    body="{",
                    headers={"Authorization": f"Bearer {publisher}"},
                    raise_error=False,
                )  # a 400 for the HTTP error rate panel
            if tick % int(self.rate * 9) == 0 and tick:  # every ~9 s: a client whose last id is unusable
                await self.reconnect(self.random.randrange(self.n_ws), bogus=True)
            if stalled is None and elapsed > seconds / 3:  # one client that stops reading
                stalled = asyncio.create_task(self.sse_reader(10_000, read=False, events="bulk"))
                bulk_until = seconds * 2 / 3
            if stalled is not None and elapsed < bulk_until and tick % 4 == 0:
                # Big events only the stalled client subscribes to, until the service drops it.
                await self.publish(http, {"type": "bulk", "padding": BULK_PADDING}, publisher)
                if tick % int(self.rate) == 0 and await self.slow_consumers(http) > 0:
                    bulk_until = 0
            tick += 1
            await asyncio.sleep(max(0.0, start + tick / self.rate - time.monotonic()))
        for n in list(self.tasks):
            await self.leave(n)
        if stalled is not None:
            stalled.cancel()
        await asyncio.gather(*([stalled] if stalled else []), return_exceptions=True)
        http.close()


# -- reading /metrics -------------------------------------------------------------------


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' estimate: linear interpolation inside the bucket that holds rank q·count."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-12)
        lower_bound, lower_count = bound, count
    return math.nan


def latency_summary(text: str) -> dict[str, tuple[float, float, float]]:
    """Per transport: (count, p50, p99) of realtime_broadcast_latency_seconds."""
    by_transport: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "realtime_broadcast_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets = by_transport.setdefault(sample.labels["transport"], [])
                buckets.append((float(sample.labels["le"]), sample.value))
    summary = {}
    for transport, buckets in by_transport.items():
        summary[transport] = (
            max(c for _, c in buckets),
            histogram_quantile(0.5, buckets),
            histogram_quantile(0.99, buckets),
        )
    return summary


def excerpt(text: str) -> str:
    """The lines of /metrics a reader of the docs wants to see (broadcast latency, websocket, and a few others)."""
    keep = []
    for line in text.splitlines():
        if line.startswith("# ") and "realtime_" not in line:
            continue
        if "realtime_broadcast_latency_seconds" in line and 'transport="sse"' in line:
            continue
        if line.startswith(("realtime_http_", "# HELP realtime_http", "# TYPE realtime_http")):
            continue
        if line.startswith(("realtime_", "# HELP realtime_", "# TYPE realtime_")):
            keep.append(line)
    return "\n".join(keep)


# -- drawing ----------------------------------------------------------------------------

UNITS = {  # Grafana unit → (scale, axis label)
    "s": (1000.0, "ms"),
    "percentunit": (100.0, "%"),
    "ops": (1.0, "per second"),
    "reqps": (1.0, "requests/s"),
    "short": (1.0, ""),
}


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def render(
    panels: list[dict[str, Any]], series: dict[int, list[tuple[str, list[float], list[float]]]], out: Path, note: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(16, height * 0.5), dpi=100)
    grid = GridSpec(height, 24, figure=figure, hspace=2.4, wspace=1.6, left=0.05, right=0.98, top=0.955, bottom=0.025)
    figure.suptitle(
        f"{json.loads(DASHBOARD.read_text())['title']} — preview from a local run\n{note}; x: seconds into the run",
        fontsize=12,
    )
    for panel in panels:
        pos = panel["gridPos"]
        axis = figure.add_subplot(grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        if panel["type"] == "row":
            axis.axis("off")
            axis.text(0, 0.2, panel["title"], fontsize=12, fontweight="bold", transform=axis.transAxes)
            continue
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        scale, unit = UNITS.get(defaults.get("unit", "short"), (1.0, defaults.get("unit", "")))
        drawn = 0
        positive: list[float] = []
        plotted: list[float] = []
        for name, times, values in series.get(panel["id"], []):
            if any(not math.isnan(v) for v in values):
                axis.plot(times, [v * scale for v in values], linewidth=1.2, label=name)
                positive += [v * scale for v in values if v > 0]
                plotted += [v * scale for v in values if not math.isnan(v)]
                drawn += 1
        # One series far above the rest (e.g. an SSE stream's lifetime among request durations)
        # would flatten the others to zero on a linear axis.
        wide = bool(positive) and max(positive) / min(positive) > 300
        if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line":
            for step in defaults.get("thresholds", {}).get("steps", []):
                if step.get("value") is not None:
                    axis.axhline(step["value"] * scale, color="red", linestyle="--", linewidth=1.2)
                    axis.text(
                        0.005,
                        step["value"] * scale,
                        f" {step['value'] * scale:g} {unit}",
                        color="red",
                        fontsize=8,
                        va="bottom",
                        transform=axis.get_yaxis_transform(),
                    )
        axis.set_title(panel["title"], fontsize=10, loc="left")
        axis.set_ylabel(f"{unit} (log scale)" if wide else unit, fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if wide:
            axis.set_yscale("log")
        else:
            # Grafana's soft limits: the axis spans at least this range, wider when the data do.
            custom = defaults.get("custom", {})
            soft_min, soft_max = custom.get("axisSoftMin"), custom.get("axisSoftMax")
            bottom = 0.0 if soft_min is None else min([soft_min * scale, *plotted])
            top = None if soft_max is None else max([soft_max * scale, *plotted])
            if top is not None:
                top += (top - bottom) * 0.02  # a line at the soft maximum stays visible
            axis.set_ylim(bottom=bottom, top=top)
        if drawn:
            axis.legend(fontsize=7, loc="upper left", ncol=4 if drawn > 6 else 2, framealpha=0.6)
        else:
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes, color="grey")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)


def panel_series(
    procs: Processes, panels: list[dict[str, Any]], start: float, end: float, step: float, rate_window: str
) -> dict[int, list[tuple[str, list[float], list[float]]]]:
    variables = {"$__rate_interval": rate_window, "$__interval": f"{step:g}s", "$namespace": ".*"}
    series: dict[int, list[tuple[str, list[float], list[float]]]] = {}
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in variables.items():
                expr = expr.replace(variable, value)
            for result in procs.query_range(expr, start, end, step):
                times = [float(t) - start for t, _ in result["values"]]
                values = [float(v) for _, v in result["values"]]
                name = legend(target.get("legendFormat", ""), result["metric"])
                series.setdefault(panel["id"], []).append((name, times, values))
    return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard-preview.png")
    parser.add_argument("--metrics-out", type=Path, default=None, help="save the last /metrics scrape here")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--ws", type=int, default=40, help="WebSocket clients")
    parser.add_argument("--sse", type=int, default=20, help="SSE clients")
    parser.add_argument("--rate", type=float, default=20, help="events per second")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, TSDB)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dashboard-preview-"))
    procs = Processes(workdir)
    try:
        procs.start(max_pending_bytes=262_144)
        started = time.time()
        load = Load(procs, args.ws, args.sse, args.rate)
        asyncio.run(load.run(args.seconds))
        ended = time.time()
        # Two more scrapes, so the last second of the run is in the TSDB.
        wait_until(lambda: bool(procs.query(f"timestamp(up) > {ended + 2}")), 30, "the last scrapes")
        with urllib.request.urlopen(procs.service_url + "/metrics", timeout=10) as response:
            metrics_text = response.read().decode()
        dashboard = json.loads(DASHBOARD.read_text())
        panels = dashboard["panels"]
        rate_window = "15s"
        series = panel_series(procs, panels, started - 5, ended + 2, 2.0, rate_window)
        note = (
            f"{args.ws} WebSocket + {args.sse} SSE clients, {args.rate:g} events/s for {args.seconds:g} s on 2 shared "
            f"cores; scrape 1 s, rate window {rate_window}"
        )
        render(panels, series, args.out, note)
    finally:
        procs.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.metrics_out is not None:
        args.metrics_out.parent.mkdir(parents=True, exist_ok=True)
        args.metrics_out.write_text(metrics_text)
    print(f"wrote {args.out} ({load.published} events published)")
    print("\n/metrics excerpt (websocket latency histogram and counters):\n" + excerpt(metrics_text))
    print("\nbroadcast latency from the final scrape's buckets (linear interpolation, as histogram_quantile):")
    for transport, (count, p50, p99) in sorted(latency_summary(metrics_text).items()):
        print(f"  {transport:9s} n={count:.0f}  p50 ≈ {p50 * 1000:.1f} ms  p99 ≈ {p99 * 1000:.1f} ms")
    if args.keep:
        print(f"work directory kept: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
