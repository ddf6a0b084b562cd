"""Faults of the embedded MongoDB: it dies, or its disk fills up (WiredTiger panics), and the
service restarts it, answers 503 with a reason meanwhile, and gives up loudly when it cannot.

The disk-full tests put DATA_DIR on a 64 MiB tmpfs they mount (root only; skipped otherwise)
and unmount in a `finally`; bench/fault_disk.py runs the same fault with a writer and an audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from bench.crash import SERVICE_ENV, embedded_uri
from bench.fault_disk import BALLAST_BYTES, fill, mount_tmpfs, unmount
from harness.clients import Service, wait_bound
from harness.processes import ServiceProcess, as_service, children_of, pid_alive, wait_until

NEW_TASK = {"title": "تقرير يومي", "taskType": "daily"}


@contextlib.asynccontextmanager
async def on_small_volume(tmp_path: Path, **env: str) -> AsyncIterator[tuple[ServiceProcess, Path]]:
    """A service whose DATA_DIR is a fresh 64 MiB tmpfs (its own log stays off it)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    try:
        mount_tmpfs(volume)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    process = ServiceProcess(tmp_path / "logs", {**SERVICE_ENV, "DATA_DIR": str(volume), **env})
    try:
        await asyncio.to_thread(process.start)
        yield process, volume
    finally:
        await asyncio.to_thread(process.stop)
        unmount(volume)


async def write(service: Service, token: str, key: str | None = None) -> tuple[int, dict[str, Any], str | None]:
    """POST a task; (status, body, Retry-After)."""
    headers = {"Idempotency-Key": key or str(uuid.uuid4())}
    response = await service.request("POST", "/api/tasks", NEW_TASK, token=token, headers=headers)
    body = json.loads(response.body) if response.body else {}
    return response.code, body, response.headers.get("Retry-After")


async def fill_until_a_write_fails(service: Service, volume: Path, token: str) -> tuple[list[int], tuple[Any, ...]]:
    """Fill the volume, then write (tasks, and large events addressed to nobody, to get WiredTiger
    past its preallocated log) until a task write fails; the ids acknowledged and the failure."""
    await asyncio.to_thread(fill, volume / "fill")
    publisher = service.token(sub=2, roles=("publisher",))
    ballast = {"type": "ballast", "to": {"users": [999_999]}, "pad": "x" * BALLAST_BYTES}
    acked: list[int] = []
    for _ in range(120):
        status, body, retry_after = await write(service, token)
        if status != 201:
            return acked, (status, body, retry_after)
        acked.append(body["id"])
        await service.request("POST", "/api/events", ballast, token=publisher)
    raise AssertionError("no write failed on a full disk")


async def until_written(service: Service, token: str, seconds: float) -> int:
    """Retry one write (same key) until it is acknowledged; its id."""
    key = str(uuid.uuid4())
    deadline = asyncio.get_running_loop().time() + wait_bound(seconds)
    while True:
        status, body, _ = await write(service, token, key)
        if status == 201:
            return int(body["id"])
        assert status in (409, 503), (status, body)
        assert asyncio.get_running_loop().time() < deadline, f"no write succeeded: {status} {body}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(180)
def test_disk_full_write_answers_503_with_reason(tmp_path: Path) -> None:
    """A write that meets a full disk answers 503 "database disk full" with Retry-After, not a bare 500."""

    async def scenario() -> None:
        async with on_small_volume(tmp_path) as (process, volume):
            service = as_service(process)
            _, (status, body, retry_after) = await fill_until_a_write_fails(service, volume, service.token())
            assert (status, body) == (503, {"error": "unavailable", "reason": "database disk full"})
            assert retry_after is not None

    asyncio.run(scenario())


@pytest.mark.timeout(240)
def test_writes_recover_after_space_returns_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    """Space back: writes succeed again, every acknowledged task is there, and its event reaches a
    WebSocket follower exactly once."""

    async def scenario() -> None:
        async with on_small_volume(tmp_path) as (process, volume):
            service = as_service(process)
            token = service.token()
            ws = await service.websocket({"token": token})
            await ws.recv_type("connected")
            acked, _ = await fill_until_a_write_fails(service, volume, token)
            (volume / "fill").unlink()
            acked.append(await until_written(service, token, 60))
            for task_id in acked:
                assert (await service.request("GET", f"/api/tasks/{task_id}", token=token)).code == 200
            publisher = service.token(sub=2, roles=("publisher",))
            await service.publish(publisher, {"type": "sentinel"})
            created: Counter[int] = Counter()
            while (message := await ws.recv(20))["type"] != "sentinel":
                if message["type"] == "task_created":
                    created[message["taskId"]] += 1
            assert {task_id: created[task_id] for task_id in acked} == dict.fromkeys(acked, 1)
            assert max(created.values()) == 1
            await ws.close()

    asyncio.run(scenario())


@pytest.mark.timeout(180)
def test_process_exits_1_when_the_embedded_mongo_cannot_be_brought_back(tmp_path: Path) -> None:
    """Disk kept full past EMBEDDED_RESTART_ATTEMPTS restarts: the service gives up and exits 1."""

    async def scenario() -> None:
        async with on_small_volume(tmp_path, EMBEDDED_RESTART_ATTEMPTS="1") as (process, volume):
            service = as_service(process)
            token = service.token()
            await fill_until_a_write_fails(service, volume, token)
            assert process.process is not None
            deadline = asyncio.get_running_loop().time() + wait_bound(90)
            while process.process.poll() is None:  # a restart may come up on the full disk: write again
                assert asyncio.get_running_loop().time() < deadline, "the service did not give up"
                with contextlib.suppress(OSError, HTTPClientError):
                    await write(service, token)
                await asyncio.sleep(0.2)
            assert process.process.returncode == 1
            assert "giving up" in process.output()

    asyncio.run(scenario())


@pytest.mark.timeout(120)
def test_killed_embedded_mongo_is_restarted_on_its_port(tmp_path: Path) -> None:
    """SIGKILL the embedded server under a running service: it comes back on the same port, writes succeed."""

    async def scenario() -> None:
        process = ServiceProcess(tmp_path, SERVICE_ENV)
        try:
            await asyncio.to_thread(process.start)
            service = as_service(process)
            token = service.token()
            await until_written(service, token, 10)
            uri, (old,) = embedded_uri(process), children_of(process.pid)
            os.kill(old, signal.SIGKILL)
            await asyncio.to_thread(wait_until, lambda: not pid_alive(old), 10, "the server to die")
            await until_written(service, token, 60)
            assert embedded_uri(process) == uri
            assert children_of(process.pid) != [old]
        finally:
            await asyncio.to_thread(process.stop)

    asyncio.run(scenario())


@pytest.mark.timeout(120)
def test_supervisor_restarts_a_killed_embedded_mongo(tmp_path: Path) -> None:
    """WORKERS=2: the supervisor's embedded server is SIGKILLed, comes back on its port, writes succeed."""

    async def scenario() -> None:
        process = ServiceProcess(tmp_path, {**SERVICE_ENV, "WORKERS": "2"})
        try:
            await asyncio.to_thread(process.start)
            service = as_service(process)
            token = service.token()
            uri = embedded_uri(process)
            (old,) = [pid for pid in children_of(process.pid) if b"secantus" in _cmdline(pid)]
            os.kill(old, signal.SIGKILL)
            await asyncio.to_thread(wait_until, lambda: not pid_alive(old), 10, "the server to die")
            await until_written(service, token, 60)
            assert embedded_uri(process) == uri
        finally:
            await asyncio.to_thread(process.stop)

    asyncio.run(scenario())


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.gen_test
async def test_healthz_fails_once_the_database_is_given_up(service: Service) -> None:
    """`/healthz` answers 503 with the reason once the process gave up on its database."""
    assert (await service.request("GET", "/healthz")).code == 200
    service.ctx.lifecycle.broken = "embedded MongoDB failed; 20 restarts did not bring it back"
    response = await service.request("GET", "/healthz")
    assert response.code == 503
    assert json.loads(response.body) == {
        "status": "broken",
        "reason": "embedded MongoDB failed; 20 restarts did not bring it back",
    }
