"""A real Prometheus server scraping a running service: the queries of the dashboard and the
alert rules work on what `/metrics` really exports, not only on promtool's offline checks.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from tornado.httpclient import AsyncHTTPClient

from harness.clients import Service, wait_bound
from harness.processes import PrometheusProcess

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s" / "monitoring"
# Grafana's variables, as a Prometheus scraping every second can answer them.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "1s", "$namespace": ".*"}
SLO_RATIO = "namespace:realtime_latency_slo_error_ratio:rate5m"
P99_BY_TRANSPORT = (
    "histogram_quantile(0.99, sum by (le, transport) (rate(realtime_broadcast_latency_seconds_bucket[30s])))"
)


class Prometheus(PrometheusProcess):
    """The shared launcher plus the HTTP API calls the tests make."""

    async def get(self, path: str, **params: str) -> Any:
        """A Prometheus HTTP API call; the `data` of a successful answer."""
        url = f"{self.url}{path}" + ("?" + urlencode(params) if params else "")
        response = await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=wait_bound(10))
        body = json.loads(response.body)
        assert response.code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    async def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + wait_bound(seconds)
        while True:
            assert self.process is not None
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                response = await AsyncHTTPClient().fetch(self.url + "/-/ready", raise_error=False, request_timeout=1)
                if response.code == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus never became ready"
            await asyncio.sleep(0.1)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]  # type: ignore[no-any-return]


@asynccontextmanager
async def prometheus_scraping(
    service: Service, workdir: Path, rule_files: tuple[Path, ...] = ()
) -> AsyncIterator[Prometheus]:
    """Prometheus scraping `service` each second, ready and with one successful scrape."""
    server = Prometheus(workdir, f"127.0.0.1:{service.port}", rule_files)
    server.start()
    try:
        await server.wait_ready()
        deadline = time.monotonic() + wait_bound(30)
        while not [r for r in await server.query('up{job="realtime"} == 1')]:
            assert time.monotonic() < deadline, "prometheus never scraped the service"
            await asyncio.sleep(0.1)
        yield server
    finally:
        server.stop()


def numeric(sample: dict[str, Any]) -> float | None:
    value = float(sample["value"][1])
    return value if math.isfinite(value) else None


async def publish_until(service: Service, clients: list[Any], done: Any, seconds: float = 60) -> None:
    """Publish one event at a time (each read by every client) until `done()` is true."""
    publisher = service.token(sub=99, roles=("publisher",))
    deadline = time.monotonic() + wait_bound(seconds)
    n = 0
    while not await done():
        assert time.monotonic() < deadline, "prometheus never showed the expected series"
        n += 1
        await service.publish(publisher, {"type": "task_executed", "n": n})
        for client in clients:
            if hasattr(client, "recv_type"):
                assert (await client.recv_type("task_executed"))["n"] == n
            else:
                assert (await client.next_of("task_executed")).json()["n"] == n
        await asyncio.sleep(0.2)  # a few events per scrape, not a flood on two cores


@pytest.mark.gen_test(timeout=120)
async def test_prometheus_computes_p99_broadcast_latency_per_transport(service: Service, tmp_path: Path) -> None:
    """Scraped by a real Prometheus, the p99 broadcast latency query has a number for both transports."""
    ws = await service.websocket({"token": service.token(sub=1)})
    await ws.recv_type("connected")
    sse = await service.sse({"token": service.token(sub=2)})
    await sse.next_of("connected")
    async with prometheus_scraping(service, tmp_path / "prometheus") as prometheus:
        found: dict[str, float] = {}

        async def both_transports() -> bool:
            for sample in await prometheus.query(P99_BY_TRANSPORT):
                value = numeric(sample)
                if value is not None:
                    found[sample["metric"]["transport"]] = value
            return set(found) == {"websocket", "sse"}

        await publish_until(service, [ws, sse], both_transports)
        assert all(0 < value <= 2.5 for value in found.values()), found
        sent = await prometheus.query("sum by (transport) (realtime_messages_sent_total)")
        assert {s["metric"]["transport"] for s in sent if float(s["value"][1]) > 0} == {"websocket", "sse"}
    await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=120)
async def test_alert_rules_and_dashboard_queries_run_on_a_real_prometheus(service: Service, tmp_path: Path) -> None:
    """Both PrometheusRules' groups load and evaluate without error; every dashboard query is accepted."""
    rule_files = []
    for name in ("alerts.yaml", "slo-rules.yaml"):
        rules = tmp_path / name
        rules.write_text(yaml.safe_dump(yaml.safe_load((MONITORING / name).read_text())["spec"]))
        rule_files.append(rules)
    ws = await service.websocket({"token": service.token(sub=1)})
    await ws.recv_type("connected")
    async with prometheus_scraping(service, tmp_path / "prometheus", tuple(rule_files)) as prometheus:

        async def evaluated() -> bool:
            groups = (await prometheus.get("/api/v1/rules"))["groups"]
            rules_seen = [rule for group in groups for rule in group["rules"]]
            if not rules_seen or not all(rule.get("lastEvaluation", "").startswith("2") for rule in rules_seen):
                return False
            # The SLO's recorded error ratio has a value once two scrapes hold events.
            return any(numeric(s) is not None for s in await prometheus.query(SLO_RATIO))

        await publish_until(service, [ws], evaluated)
        groups = (await prometheus.get("/api/v1/rules"))["groups"]
        loaded = [rule for group in groups for rule in group["rules"]]
        expected = [
            rule
            for path in rule_files
            for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]
        ]
        assert len(loaded) == len(expected)
        assert [(rule["name"], rule["health"], rule.get("lastError", "")) for rule in loaded] == [
            (rule.get("alert") or rule["record"], "ok", "") for rule in expected
        ]
        # The SLO's ratio counts good events from the `le="0.05"` bucket, which the service exports.
        [ratio] = await prometheus.query(SLO_RATIO)
        assert 0 <= float(ratio["value"][1]) <= 1
        dashboard = json.loads((MONITORING / "dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]
        assert exprs
        for expr in exprs:
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            await prometheus.query(expr)  # asserts status success
        # The connections panel shows the live connection the test holds.
        result = await prometheus.query('sum by (transport) (realtime_connections{namespace=~".*"})')
        assert {s["metric"]["transport"]: float(s["value"][1]) for s in result}["websocket"] == 1
    await ws.close()
