"""Scale-out: several service processes on one MongoDB carry one ordered stream."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.clients import Service, SseClient, WsClient
from harness.processes import ServiceProcess, as_service, children_of, pid_alive, shared_env, wait_until


@pytest.fixture
def two_services(tmp_path: Path, mongo_uri: str) -> Iterator[tuple[Service, Service]]:
    env = shared_env(mongo_uri)
    first = ServiceProcess(tmp_path / "a", env)
    second = ServiceProcess(tmp_path / "b", env)
    try:
        first.start(wait=False)
        second.start(wait=False)
        first.wait_ready()
        second.wait_ready()
        yield as_service(first), as_service(second)
    finally:
        first.stop()
        second.stop()


@pytest.mark.gen_test(timeout=90)
async def test_events_from_either_process_reach_clients_of_both_in_one_order(
    two_services: tuple[Service, Service],
) -> None:
    """Publishing through A and B alternately: every client on A and B sees one order, one set of ids."""
    a, b = two_services
    token = a.token(sub=1)
    publisher = a.token(sub=2, roles=("publisher",))
    clients: list[WsClient | SseClient] = []
    for service in (a, b):
        ws = await service.websocket({"token": token})
        await ws.recv_type("connected")
        sse = await service.sse({"token": token})
        await sse.next_of("connected")
        clients += [ws, sse]
    count = 20
    await asyncio.gather(*[(a if n % 2 else b).publish(publisher, {"type": "tick", "n": n}) for n in range(count)])
    streams = []
    for client in clients:
        # Only the ticks: presence (on in these processes) may put `presence_joined` among them.
        if isinstance(client, WsClient):
            streams.append([(m["id"], m["n"]) for m in [await client.recv_type("tick") for _ in range(count)]])
        else:
            streams.append([(e.id, e.json()["n"]) for e in [await client.next_of("tick") for _ in range(count)]])
    assert all(stream == streams[0] for stream in streams)
    ids = [event_id for event_id, _ in streams[0]]
    assert ids == sorted(ids) and len(set(ids)) == count
    assert sorted(n for _, n in streams[0]) == list(range(count))
    for client in clients:
        await client.close() if isinstance(client, WsClient) else client.close()


@pytest.mark.gen_test(timeout=90)
async def test_resume_works_on_the_other_process(two_services: tuple[Service, Service]) -> None:
    """An id seen on A resumes on B: the missed events, in order, once."""
    a, b = two_services
    token = a.token(sub=1)
    publisher = a.token(sub=2, roles=("publisher",))
    ws = await a.websocket({"token": token})
    await ws.recv_type("connected")
    await a.publish(publisher, {"type": "tick", "n": 0})
    last = await ws.recv_type("tick")
    await ws.close()
    for n in range(1, 6):
        await a.publish(publisher, {"type": "tick", "n": n})
    sse = await b.sse({"token": token}, headers={"Last-Event-ID": last["id"]})
    assert (await sse.next_of("connected")).json()["resumed"] is True
    assert [(await sse.next_of("tick")).json()["n"] for _ in range(5)] == [1, 2, 3, 4, 5]
    sse.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.gen_test(timeout=120)
async def test_workers_share_the_port_and_metrics_are_summed(tmp_path: Path, mongo_uri: str) -> None:
    """WORKERS=2: two processes serve one port; any scrape reports connections of both."""
    env = {**shared_env(mongo_uri), "WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    process = ServiceProcess(tmp_path / "w", env).start()
    clients: list[WsClient] = []
    try:
        workers = children_of(process.pid)
        assert len(workers) == 2
        service = as_service(process)
        token = service.token(sub=1)
        for _ in range(16):
            ws = await service.websocket({"token": token + ""})
            await ws.recv_type("connected")
            clients.append(ws)
        key = ("realtime_connections", (("transport", "websocket"),))
        for _ in range(6):  # new TCP connection each time: the kernel spreads them over workers
            assert scrape(process.url)[key] == 16
        publisher = service.token(sub=2, roles=("publisher",))
        await service.publish(publisher, {"type": "tick", "n": 1})
        for ws in clients:  # presence (on here) may put `presence_joined` before the tick
            assert (await ws.recv_type("tick"))["n"] == 1
        sent = scrape(process.url)[("realtime_messages_sent_total", (("transport", "websocket"),))]
        assert sent >= 16
    finally:
        for ws in clients:
            await ws.close()
        assert process.stop() == 0
    for pid in workers:
        assert not pid_alive(pid)


def test_dead_worker_is_restarted(tmp_path: Path, mongo_uri: str) -> None:
    """The parent replaces a worker that dies and keeps serving."""
    env = {**shared_env(mongo_uri), "WORKERS": "2"}
    process = ServiceProcess(tmp_path / "w", env).start()
    try:
        victim = children_of(process.pid)[0]
        import os
        import signal

        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len([p for p in children_of(process.pid) if p != victim]) == 2, 30, "a new worker")
        wait_until(process.ready, 30, "readiness")
        assert "restarting" in process.output()
    finally:
        assert process.stop() == 0
