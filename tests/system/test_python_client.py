"""The Python client (realtime_client/) against real services: resume across a killed worker,
a restarted service and a drain, on every transport; token refresh; publish with a key."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.clients import Service, wait_bound
from harness.processes import ROOT, ServiceProcess, as_service, shared_env
from realtime_client import Api, FilePositionStore, RealtimeClient, Stopped
from realtime_client.client import Message
from realtime_client.sse import SseParser

WORKER = ROOT / "examples" / "python" / "worker.py"


async def next_message(messages: AsyncIterator[Message], seconds: float = 20) -> Message:
    return await asyncio.wait_for(anext(messages), wait_bound(seconds))


async def publish(service: Service, token: str, n: int) -> None:
    answer = await service.request("POST", "/api/events", {"type": "note", "n": n}, token=token)
    assert answer.code == 202, answer.body


async def seed_position(service: Service, publisher: str, path: Path) -> None:
    """Write the id of a fresh event into `path`: a worker started later resumes right after it."""
    client = RealtimeClient(service.http, service.token(sub=99), controls=True)
    messages = client.messages()
    try:
        assert (await next_message(messages))["type"] == "connected"
        await publish(service, publisher, 0)
        note = await next_message(messages)
        assert note["n"] == 0
        FilePositionStore(path).save(note["id"])
    finally:
        client.close()
        await messages.aclose()


def test_sse_opening_retry_block_is_kept_not_dispatched() -> None:
    """The stream's first block, a bare `retry: 3000`, sets `retry_ms` and yields no event."""
    parser = SseParser()
    assert parser.feed(b"retry: 3000\n\n") == []
    assert parser.retry_ms == 3000
    [event] = parser.feed(b'event: connected\ndata: {"type":"connected"}\n\n')
    assert (event.event, event.data) == ("connected", '{"type":"connected"}')


async def client_setup(
    tmp_path: Path, mongo_uri: str, sub: int, **env: str
) -> tuple[ServiceProcess, Service, str, dict[str, str]]:
    """A service process, a publisher's token, a position file seeded at its head, and the
    environment a client process runs with (its URL, a token for `sub`, and `env`)."""
    process = ServiceProcess(tmp_path, {**shared_env(mongo_uri), "PRESENCE": "0"})
    await asyncio.to_thread(process.start)
    service = as_service(process)
    publisher = service.token(sub=1, roles=("publisher",))
    await seed_position(service, publisher, tmp_path / "worker.position")
    return process, service, publisher, {
        **os.environ, "REALTIME_URL": process.url, "REALTIME_TOKEN": service.token(sub=sub), **env
    }  # fmt: skip


@pytest.mark.gen_test(timeout=120)
async def test_killed_worker_resumes_from_its_position_file(tmp_path: Path, mongo_uri: str) -> None:
    """examples/python/worker.py, SIGKILLed mid-stream and started again, prints what it missed."""
    process, service, publisher, env = await client_setup(
        tmp_path, mongo_uri, 2, POSITION_FILE=str(tmp_path / "worker.position"), PYTHONPATH=str(ROOT)
    )

    async def start_worker() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), env=env, stdout=asyncio.subprocess.PIPE, cwd=tmp_path
        )

    async def line(worker: asyncio.subprocess.Process) -> list[str]:
        assert worker.stdout is not None
        return (await asyncio.wait_for(worker.stdout.readline(), wait_bound(20))).decode().split()

    worker = await start_worker()
    try:
        await publish(service, publisher, 1)
        first = await line(worker)
        assert first[1:] == ["note", "1"]
        await publish(service, publisher, 2)
        assert (await line(worker))[2] == "2"
        worker.kill()
        await worker.wait()
        for n in (3, 4):
            await publish(service, publisher, n)
        worker = await start_worker()
        seen = [(await line(worker))[2]]
        while seen[-1] != "4":
            seen.append((await line(worker))[2])
        assert seen in (["3", "4"], ["2", "3", "4"])  # at least once: 2 again if killed before saving it
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        process.stop()


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
@pytest.mark.gen_test(timeout=120)
async def test_client_resumes_across_a_draining_service_restart(tmp_path: Path, mongo_uri: str, transport: Any) -> None:
    """SIGTERM with a drain, events published while down, a new process: resumed, nothing lost."""
    env = {
        **shared_env(mongo_uri),
        "PRESENCE": "0",
        "DRAIN_SECONDS": "2",
        "POLL_TIMEOUT_SECONDS": "2",
        "HEARTBEAT_SECONDS": "2",
    }
    process = ServiceProcess(tmp_path, env)
    await asyncio.to_thread(process.start)
    service = as_service(process)
    publisher = service.token(sub=1, roles=("publisher",))
    client = RealtimeClient(process.url, service.token(sub=2), transports=[transport], controls=True)
    messages = client.messages()
    try:
        assert (await next_message(messages))["resumed"] is False
        await publish(service, publisher, 1)
        assert (await next_message(messages))["n"] == 1
        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
        replacement = ServiceProcess(tmp_path, env, port=process.port)
        await asyncio.to_thread(replacement.start)
        try:
            await publish(service, publisher, 2)  # before or after the client is back: it gets it once
            await publish(service, publisher, 3)
            received: list[int] = []
            while len(received) < 2:
                message = await next_message(messages, 30)
                if message["type"] == "note":
                    received.append(message["n"])
                elif message["type"] == "connected":
                    assert message["resumed"] is True
            assert received == [2, 3]
        finally:
            replacement.stop()
    finally:
        client.close()
        await messages.aclose()
        process.stop()


@pytest.mark.gen_test(timeout=60)
async def test_token_expiring_over_websocket_is_answered_with_get_token(service: Service) -> None:
    """`token_expiring` makes the client call get_token and send `auth`; the service says `auth_ok`."""
    tokens = iter([service.token(sub=5, ttl=10), service.token(sub=5, ttl=3600)])
    client = RealtimeClient(service.http, lambda: next(tokens), controls=True)
    messages = client.messages()
    try:
        kinds = [(await next_message(messages))["type"] for _ in range(3)]
        assert kinds == ["connected", "token_expiring", "auth_ok"]
    finally:
        client.close()
        await messages.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_token_expiring_over_sse_reconnects_with_the_new_token(service: Service) -> None:
    """Over SSE the client reconnects at once with get_token's new token, resuming."""
    tokens = iter([service.token(sub=6, ttl=10), service.token(sub=6, ttl=3600)])
    client = RealtimeClient(service.http, lambda: next(tokens), transports=["sse"], controls=True)
    messages = client.messages()
    try:
        kinds = [(await next_message(messages))["type"] for _ in range(3)]
        assert kinds == ["connected", "token_expiring", "connected"]
    finally:
        client.close()
        await messages.aclose()


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
@pytest.mark.gen_test(timeout=60)
async def test_refused_token_without_a_new_one_stops_unauthorized(service: Service, transport: Any) -> None:
    """A token past its leeway, and get_token offering no other: `Stopped("unauthorized")`."""
    client = RealtimeClient(service.http, service.token(sub=7, ttl=-120), transports=[transport])
    with pytest.raises(Stopped) as stopped:
        await next_message(client.messages())
    assert stopped.value.reason == "unauthorized"


@pytest.mark.gen_test(timeout=60)
async def test_resume_from_a_lost_position_yields_resync(service: Service) -> None:
    """A stored position the service no longer has: the client yields `resync` (refetch)."""
    client = RealtimeClient(service.http, service.token(sub=8), last_event_id="0000000000000001")
    messages = client.messages()
    try:
        assert (await next_message(messages))["type"] == "resync"
    finally:
        client.close()
        await messages.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_publish_with_one_idempotency_key_emits_once(service: Service) -> None:
    """Two publishes with the same key: the same answer, one event on the stream."""
    api = Api(service.http, service.token(sub=9, roles=("publisher",)))
    client = RealtimeClient(service.http, service.token(sub=10), controls=True)
    messages = client.messages()
    try:
        assert (await next_message(messages))["type"] == "connected"
        first = await api.publish("note", {"n": 1}, idempotency_key="job-42")
        again = await api.publish("note", {"n": 1}, idempotency_key="job-42")
        await api.publish("note", {"n": 2})
        assert first == again
        assert [(await next_message(messages))["n"] for _ in range(2)] == [1, 2]
    finally:
        client.close()
        await messages.aclose()


@pytest.mark.gen_test(timeout=120)
async def test_tail_remembers_its_position_between_runs(tmp_path: Path, mongo_uri: str) -> None:
    """`python -m service tail` run again prints what was published while it was away."""
    process, service, publisher, env = await client_setup(tmp_path, mongo_uri, 3, XDG_STATE_HOME=str(tmp_path))

    async def tail(*args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "tail", *args, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )

    try:
        first = await tail("--max-events", "1")
        assert first.stdout is not None
        assert b'"connected"' in await asyncio.wait_for(first.stdout.readline(), wait_bound(20))
        await publish(service, publisher, 1)
        await asyncio.wait_for(first.wait(), wait_bound(20))
        for n in (2, 3):
            await publish(service, publisher, n)
        second = await tail("--max-events", "2")
        out, _ = await asyncio.wait_for(second.communicate(), wait_bound(30))
        lines = [line for line in out.decode().splitlines() if '"note"' in line]
        assert ['"n": 2' in lines[0], '"n": 3' in lines[1]] == [True, True]
        assert second.returncode == 0
    finally:
        for tail_process in ("first", "second"):
            running = locals().get(tail_process)
            if running is not None and running.returncode is None:
                running.kill()
                await running.wait()
        process.stop()
