"""`/metrics` (README "Metrics") scraped from a running service, and the JSON log format.

Each test makes one thing happen on a real service and checks that the metric measuring
it moves; the scrape is parsed with prometheus_client's own text parser.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from harness.clients import Service, wait_bound
from harness.processes import ROOT, ServiceProcess, as_service, shared_env
from metrics.gc_pauses import YOUNG_THRESHOLDS
from metrics.registry import BUS_LAG_BUCKETS, LATENCY_BUCKETS
from service.core.errors import CloseCode

# README "Metrics", as written there: name → (type, label names).
DOCUMENTED_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "realtime_connections": ("gauge", frozenset({"transport"})),
    "realtime_connections_opened": ("counter", frozenset({"transport"})),
    "realtime_disconnects": ("counter", frozenset({"transport", "code"})),
    "realtime_auth_failures": ("counter", frozenset({"transport", "reason"})),
    "realtime_events_published": ("counter", frozenset({"type"})),
    "realtime_messages_sent": ("counter", frozenset({"transport"})),
    "realtime_broadcast_latency_seconds": ("histogram", frozenset({"transport"})),
    "realtime_fanout_duration_seconds": ("histogram", frozenset()),
    "realtime_bus_lag_seconds": ("histogram", frozenset()),
    "realtime_slow_consumer_disconnects": ("counter", frozenset({"transport"})),
    "realtime_resumes": ("counter", frozenset({"transport", "outcome"})),
    "realtime_http_request_duration_seconds": ("histogram", frozenset({"handler", "method", "code"})),
    "realtime_presence_users": ("gauge", frozenset()),
    # Beyond the core set, for the edge (issue 23): accept() failures and connections refused unserved.
    "realtime_accept_errors": ("counter", frozenset({"reason"})),
    "realtime_connections_refused": ("counter", frozenset({"reason"})),
    # Issue 25: events per fan-out batch (1 for an idle service).
    "realtime_fanout_batch_size": ("histogram", frozenset()),
    # How long the process's garbage collections stopped it, by generation.
    "realtime_gc_pause_seconds": ("histogram", frozenset({"generation"})),
    # Resumes replayed from memory or from a MongoDB read (a restarted process warms its memory).
    "realtime_replays": ("counter", frozenset({"source"})),
}
DOCUMENTED_LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05),
    *(0.06, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
)
# The change stream's hop: fine steps up to 5 ms, an edge at 2 ms (issue 25's target).
DOCUMENTED_BUS_LAG_BUCKETS: tuple[float, ...] = (
    *(0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05),
    *(0.1, 0.25, 1, 2.5, 10),
)
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@dataclass
class Scrape:
    """One parsed `/metrics` answer."""

    families: dict[str, Any]

    def value(self, sample_name: str, **labels: str) -> float:
        """Sum of the samples with this name whose labels include `labels` (0 when none)."""
        total = 0.0
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def label_names(self, family: str) -> set[frozenset[str]]:
        """The label name sets its samples carry (without the histogram's `le`)."""
        return {frozenset(s.labels) - {"le"} for s in self.families[family].samples}


async def scrape(service: Service) -> Scrape:
    response = await AsyncHTTPClient().fetch(service.http + "/metrics", request_timeout=wait_bound(10))
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.body.decode()
    return Scrape({family.name: family for family in text_string_to_metric_families(text)})


async def scrape_until(service: Service, condition: Callable[[Scrape], bool], seconds: float = 10) -> Scrape:
    """Scrape until `condition` holds (metrics that move after the client has seen the effect)."""
    deadline = time.monotonic() + wait_bound(seconds)
    while True:
        result = await scrape(service)
        if condition(result):
            return result
        assert time.monotonic() < deadline, "the metrics never reached the expected values"
        await asyncio.sleep(0.05)


def publisher(service: Service) -> str:
    return service.token(sub=99, roles=("publisher",))


# -- the metric set ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_every_spec_metric_is_exported_with_its_type_and_labels(service: Service) -> None:
    """Each documented metric is in the scrape, with its documented type and exactly its labels."""
    ws = await service.websocket({"token": service.token(sub=1)})
    await ws.recv_type("connected")
    await service.publish(publisher(service), {"type": "task_created", "n": 1})
    await ws.recv_type("task_created")
    await ws.close()
    sse = await service.sse({"token": "x.y.z"})
    assert sse.status == 401
    resumed = await service.websocket({"token": service.token(sub=1), "last_event_id": "not-an-id"})
    hello = await resumed.recv_type("connected")
    service.ctx.hub.close_slow(service.ctx.hub.get(hello["connectionId"]))
    result = await scrape_until(service, lambda s: s.value("realtime_slow_consumer_disconnects_total") == 1)
    for name, (kind, labels) in DOCUMENTED_METRICS.items():
        assert name in result.families, f"{name} is not exported"
        family = result.families[name]
        assert family.type == kind, f"{name} is a {family.type}, README says {kind}"
        assert family.samples, f"{name} has no samples after the traffic above"
        assert result.label_names(name) == {labels}, f"{name} labels"
    exported = {name for name in result.families if name.startswith("realtime_")}
    assert exported == set(DOCUMENTED_METRICS), 'metrics outside README "Metrics"'


@pytest.mark.gen_test(timeout=60)
async def test_latency_buckets_are_exactly_the_documented_lists(service: Service) -> None:
    """`le` of broadcast latency (each transport): .001 … 2.5; of bus lag: .0005 … 10, with an edge
    at .002; each as documented, then +Inf."""
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    sse = await service.sse({"token": service.token()})
    await sse.next_of("connected")
    await service.publish(publisher(service), {"type": "tick"})
    await ws.recv_type("tick")
    await sse.next_of("tick")
    result = await scrape(service)
    family = result.families["realtime_broadcast_latency_seconds"]
    for transport in ("websocket", "sse"):
        bounds = [
            float(s.labels["le"])
            for s in family.samples
            if s.name.endswith("_bucket") and s.labels["transport"] == transport
        ]
        assert bounds == [*DOCUMENTED_LATENCY_BUCKETS, math.inf], transport
    lag = result.families["realtime_bus_lag_seconds"]
    assert [float(s.labels["le"]) for s in lag.samples if s.name.endswith("_bucket")] == [
        *DOCUMENTED_BUS_LAG_BUCKETS,
        math.inf,
    ]
    assert LATENCY_BUCKETS == DOCUMENTED_LATENCY_BUCKETS
    assert BUS_LAG_BUCKETS == DOCUMENTED_BUS_LAG_BUCKETS
    await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_process_metrics_are_exported_in_single_process_mode(service: Service) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR the scrape includes the process collector's metrics."""
    result = await scrape(service)
    for name in (
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert name in result.families, name
    assert result.value("process_resident_memory_bytes") > 0


@pytest.mark.gen_test(timeout=30)
async def test_zero_series_exist_before_the_first_connection(service: Service) -> None:
    """A fresh process exports 0 for the per-transport gauges and counters, so rate() has a start."""
    result = await scrape(service)
    for transport in ("websocket", "sse"):
        for sample in (
            "realtime_connections",
            "realtime_connections_opened_total",
            "realtime_messages_sent_total",
            "realtime_slow_consumer_disconnects_total",
        ):
            assert (sample, transport, result.value(sample, transport=transport)) == (sample, transport, 0)


@pytest.mark.gen_test(timeout=30)
async def test_a_full_collection_is_scraped_as_a_gc_pause(service: Service) -> None:
    """A full garbage collection in the serving process shows in realtime_gc_pause_seconds
    (generation 2) within the once-a-second flush."""
    before = (await scrape(service)).value("realtime_gc_pause_seconds_count", generation="2")
    gc.collect()
    result = await scrape_until(service, lambda s: s.value("realtime_gc_pause_seconds_count", generation="2") > before)
    assert result.value("realtime_gc_pause_seconds_sum", generation="2") > 0
    for generation in ("0", "1"):  # exported from the start, like the per-transport series
        assert ("realtime_gc_pause_seconds_count", generation) in {
            (s.name, s.labels.get("generation")) for s in result.families["realtime_gc_pause_seconds"].samples
        }


# -- connections ------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_websocket_connect_and_close_move_gauge_opened_and_disconnects(service: Service) -> None:
    """A WebSocket connect raises the gauge and opened_total; its close lowers it and counts code 1000."""
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    result = await scrape(service)
    assert result.value("realtime_connections", transport="websocket") == 1
    assert result.value("realtime_connections_opened_total", transport="websocket") == 1
    assert result.value("realtime_connections", transport="sse") == 0
    await ws.close()
    result = await scrape_until(service, lambda s: s.value("realtime_connections", transport="websocket") == 0)
    assert result.value("realtime_disconnects_total", transport="websocket", code="1000") == 1
    assert result.value("realtime_connections_opened_total", transport="websocket") == 1


@pytest.mark.gen_test(timeout=60)
async def test_sse_connect_and_leave_move_gauge_opened_and_disconnects(service: Service) -> None:
    """An SSE stream raises the gauge; a client that leaves lowers it and counts code 1001."""
    sse = await service.sse({"token": service.token()})
    await sse.next_of("connected")
    result = await scrape(service)
    assert result.value("realtime_connections", transport="sse") == 1
    assert result.value("realtime_connections_opened_total", transport="sse") == 1
    sse.close()
    result = await scrape_until(service, lambda s: s.value("realtime_connections", transport="sse") == 0)
    assert result.value("realtime_disconnects_total", transport="sse", code=str(int(CloseCode.GOING_AWAY))) == 1


@pytest.mark.gen_test(timeout=60)
async def test_auth_failures_count_transport_and_reason(service: Service) -> None:
    """Rejected credentials count by transport and reason; the WebSocket one also as a 4401 disconnect."""
    ws = await service.websocket({"token": "x.y.z"})
    assert (await ws.closed())[0] == CloseCode.UNAUTHORIZED
    sse = await service.sse({})
    assert sse.status == 401
    expired = await service.sse({"token": service.token(ttl=-120)})
    assert expired.status == 401
    result = await scrape_until(
        service, lambda s: s.value("realtime_disconnects_total", transport="websocket", code="4401") == 1
    )
    assert result.value("realtime_auth_failures_total", transport="websocket", reason="invalid token") == 1
    assert result.value("realtime_auth_failures_total", transport="sse", reason="missing token") == 1
    assert result.value("realtime_auth_failures_total", transport="sse", reason="token expired") == 1
    assert result.value("realtime_connections_opened_total") == 0


@pytest.mark.gen_test(timeout=60)
async def test_slow_consumer_counts_and_closes_with_4408(service: Service) -> None:
    """A connection closed as a slow consumer counts in slow_consumer_disconnects and as code 4408."""
    ws = await service.websocket({"token": service.token()})
    hello = await ws.recv_type("connected")
    connection = service.ctx.hub.get(hello["connectionId"])
    service.ctx.hub.close_slow(connection)
    assert await ws.closed() == (CloseCode.SLOW_CONSUMER, "slow consumer")
    result = await scrape_until(service, lambda s: s.value("realtime_connections", transport="websocket") == 0)
    assert result.value("realtime_slow_consumer_disconnects_total", transport="websocket") == 1
    assert result.value("realtime_slow_consumer_disconnects_total", transport="sse") == 0
    assert result.value("realtime_disconnects_total", transport="websocket", code="4408") == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_resumes_count_replayed_and_resync(service: Service, transport: str) -> None:
    """A reconnect with a known last id counts as `replayed`, one with an unusable id as `resync`."""
    token = service.token()
    first = await service.websocket({"token": token})
    await first.recv_type("connected")
    await service.publish(publisher(service), {"type": "tick"})
    last_id = (await first.recv_type("tick"))["id"]
    await first.close()
    for last in (last_id, "not-an-event-id"):
        if transport == "websocket":
            ws = await service.websocket({"token": token, "last_event_id": last})
            await ws.recv_type("connected")
            await ws.close()
        else:
            sse = await service.sse({"token": token}, headers={"Last-Event-ID": last})
            await sse.next_of("connected")
            sse.close()
    result = await scrape(service)
    assert result.value("realtime_resumes_total", transport=transport, outcome="replayed") == 1
    assert result.value("realtime_resumes_total", transport=transport, outcome="resync") == 1
    assert result.value("realtime_resumes_total") == 2


# -- events -----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_events_move_published_sent_latency_fanout_and_lag(service: Service) -> None:
    """Two events to one WebSocket and one SSE client move every delivery metric once per event."""
    ws_clients = [await service.websocket({"token": service.token(sub=n)}) for n in (1, 2)]
    for ws in ws_clients:
        await ws.recv_type("connected")
    sse = await service.sse({"token": service.token(sub=3)})
    await sse.next_of("connected")
    before = await scrape(service)
    pub = publisher(service)
    await service.publish(pub, {"type": "task_created", "taskId": 1})
    await service.publish(pub, {"type": "my_own_kind", "n": 2})
    for ws in ws_clients:
        assert (await ws.recv_type("task_created"))["taskId"] == 1
        assert (await ws.recv_type("my_own_kind"))["n"] == 2
    assert (await sse.next_of("task_created")).json()["taskId"] == 1
    assert (await sse.next_of("my_own_kind")).json()["n"] == 2
    result = await scrape(service)

    def moved(sample: str, **labels: str) -> float:
        return result.value(sample, **labels) - before.value(sample, **labels)

    assert moved("realtime_events_published_total", type="task_created") == 1
    assert moved("realtime_events_published_total", type="custom") == 1
    assert "my_own_kind" not in {s.labels.get("type") for s in result.families["realtime_events_published"].samples}
    assert moved("realtime_messages_sent_total", transport="websocket") == 4
    assert moved("realtime_messages_sent_total", transport="sse") == 2
    for transport in ("websocket", "sse"):
        assert moved("realtime_broadcast_latency_seconds_count", transport=transport) == 2
        assert moved("realtime_broadcast_latency_seconds_bucket", transport=transport, le="+Inf") == 2
        assert 0 < moved("realtime_broadcast_latency_seconds_sum", transport=transport) < 60
    assert moved("realtime_fanout_duration_seconds_count") == 2
    assert moved("realtime_bus_lag_seconds_count") == 2
    # Latency runs from the insert to the last socket, so it is never below the bus lag.
    lag, latency = result.value("realtime_bus_lag_seconds_sum"), result.value("realtime_broadcast_latency_seconds_sum")
    assert latency >= lag > 0
    for ws in ws_clients:
        await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=60)
async def test_filtered_out_events_are_not_counted_as_sent(service: Service) -> None:
    """messages_sent counts writes to clients, not events offered to a connection that filters them out."""
    ws = await service.websocket({"token": service.token(), "events": "wanted"})
    await ws.recv_type("connected")
    before = await scrape(service)
    pub = publisher(service)
    await service.publish(pub, {"type": "unwanted"})
    await service.publish(pub, {"type": "wanted"})
    await ws.recv_type("wanted")
    result = await scrape(service)
    assert result.value("realtime_events_published_total") - before.value("realtime_events_published_total") == 2
    sent = result.value("realtime_messages_sent_total", transport="websocket")
    assert sent - before.value("realtime_messages_sent_total", transport="websocket") == 1
    await ws.close()


# -- HTTP -------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_http_requests_are_timed_by_handler_method_and_code(service: Service) -> None:
    """Each request lands in realtime_http_request_duration_seconds under its handler, method and status."""
    assert (await service.request("GET", "/healthz")).code == 200
    assert (await service.request("POST", "/api/events", {"type": "x"})).code == 401
    assert (await service.request("POST", "/api/events", {"type": "x"}, token=publisher(service))).code == 202
    assert (await service.request("GET", "/api/no-such-thing")).code == 404
    result = await scrape(service)
    count = "realtime_http_request_duration_seconds_count"
    assert result.value(count, handler="LivenessHandler", method="GET", code="200") == 1
    assert result.value(count, handler="PublishHandler", method="POST", code="401") == 1
    assert result.value(count, handler="PublishHandler", method="POST", code="202") == 1
    assert result.value(count, handler="NotFoundHandler", method="GET", code="404") == 1
    assert result.value("realtime_auth_failures_total", transport="http", reason="missing token") == 1
    # The path is never a label: it would make one series per task id.
    family = result.families["realtime_http_request_duration_seconds"]
    assert all(set(s.labels) <= {"handler", "method", "code", "le"} for s in family.samples)


# -- JSON logs --------------------------------------------------------------------------


class JsonLogService(ServiceProcess):
    """The service with LOG_FORMAT=json; its stderr (the log) kept apart from its stdout (the banner)."""

    def start(self, *, wait: bool = True) -> JsonLogService:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.data_dir / "stdout.txt"
        with open(self.stdout_path, "wb") as out, open(self.log_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=ROOT, env=self.env, stdout=out, stderr=err
            )
        if wait:
            self.wait_ready()
        return self

    def log_lines(self) -> list[dict[str, Any]]:
        lines = [line for line in self.output().splitlines() if line.strip()]
        entries = []
        for line in lines:
            entry = json.loads(line)  # every line is one JSON object
            assert isinstance(entry, dict), line
            entries.append(entry)
        return entries


@pytest.mark.gen_test(timeout=90)
async def test_json_logs_are_one_object_a_line_with_connection_fields_and_no_tokens(
    tmp_path: Path, mongo_uri: str
) -> None:
    """LOG_FORMAT=json: each line parses; connect/disconnect lines carry ids, transport, close code; no token."""
    env = {**shared_env(mongo_uri), "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    process = JsonLogService(tmp_path / "json", env).start()
    try:
        service = as_service(process)
        token = service.token(sub=41, name="ليلى")
        pub = service.token(sub=42, roles=("publisher",))
        ws = await service.websocket({"token": token})
        ws_id = (await ws.recv_type("connected"))["connectionId"]
        await service.publish(pub, {"type": "tick"})
        await ws.recv_type("tick")
        await ws.close()
        sse = await service.sse({"token": token})
        sse_id = (await sse.next_of("connected")).json()["connectionId"]
        sse.close()
        rejected = await service.websocket({"token": token[:-4] + "AAAA"})
        assert (await rejected.closed())[0] == CloseCode.UNAUTHORIZED

        def disconnected(connection_id: str) -> dict[str, Any] | None:
            for entry in process.log_lines():
                if entry.get("connection_id") == connection_id and "close_code" in entry:
                    return entry
            return None

        deadline = time.monotonic() + wait_bound(20)
        while disconnected(ws_id) is None or disconnected(sse_id) is None:
            assert time.monotonic() < deadline, process.output()
            await asyncio.sleep(0.05)
    finally:
        process.stop()
    entries = process.log_lines()
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    connects = {e["connection_id"]: e for e in entries if e["message"] == "connected"}
    for connection_id, transport in ((ws_id, "websocket"), (sse_id, "sse")):
        connect = connects[connection_id]
        assert (connect["level"], connect["logger"]) == ("INFO", "service.connections")
        assert (connect["user_id"], connect["transport"]) == (41, transport)
        gone = disconnected(connection_id)
        assert gone is not None and gone["level"] == "INFO" and gone["logger"] == "service.connections"
        assert (gone["user_id"], gone["transport"]) == (41, transport)
        assert isinstance(gone["close_code"], int) and isinstance(gone["reason"], str) and gone["reason"]
        assert gone["duration_seconds"] >= 0 and math.isfinite(gone["duration_seconds"])
    assert disconnected(ws_id)["close_code"] == 1000  # type: ignore[index]
    assert disconnected(sse_id)["close_code"] == int(CloseCode.GOING_AWAY)  # type: ignore[index]
    access = [e for e in entries if e["logger"] == "service.access"]
    assert any("/ws?token=[redacted]" in e["message"] for e in access), access
    # The worker set its collector up before serving, and said so.
    tuned = [e for e in entries if e["logger"] == "service" and "frozen" in e["message"]]
    assert len(tuned) == 1 and tuned[0]["level"] == "INFO", tuned
    frozen = re.fullmatch(r"garbage collector: (\d+) startup objects frozen, thresholds (.+)", tuned[0]["message"])
    assert frozen is not None and int(frozen.group(1)) > 10_000 and frozen.group(2) == str(YOUNG_THRESHOLDS)
    everything = process.output() + process.stdout_path.read_text()
    for secret in (token, pub, token.split(".")[2], token[:-4] + "AAAA"):
        assert secret not in everything
