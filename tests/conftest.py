"""Shared fixtures: one real SecantusDB per session, a real service per test on a free port."""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.clients import Service
from metrics.registry import Metrics
from service.core.config import Settings
from service.runtime.server import Server, build_context
from service.storage.mongo.embedded import EmbeddedMongo

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> Iterator[None]:
    """Collect garbage at each test's end, so nothing a test left behind surfaces in another.

    asyncio transports closed by a test close their socket one loop turn later; when
    pytest-tornado closes the loop first, the socket is only reclaimed here. That is the test
    client's socket, already shut down, so its ResourceWarning is not news.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A real SecantusDB server for the whole session (in-memory storage)."""
    server = EmbeddedMongo(":memory:")
    uri = server.start()
    yield uri
    server.stop()


def base_settings(**overrides: Any) -> Settings:
    """Settings for a test service: a fresh database, a known secret, fast heartbeats.

    Presence is off here: its `presence_joined`/`presence_left` events would interleave with
    what each stream test expects next. tests/test_presence*.py run real processes with it on.
    """
    settings = Settings(
        host="127.0.0.1",
        port=0,
        mongodb_db=f"test_{uuid.uuid4().hex[:12]}",
        mongodb_timeout_ms=2000,
        jwt_secret=TEST_SECRET,
        jwt_algorithms=("HS256",),
        dev_mode=False,
        allowed_origins=("http://allowed.example",),
        heartbeat_seconds=15.0,
        drain_seconds=0.0,
        presence=False,
    )
    return replace(settings, **overrides)


StartService = Callable[..., Awaitable[Service]]


@pytest.fixture
def start_service(io_loop: Any, mongo_uri: str) -> Iterator[StartService]:
    """Start a real service (HTTP server, change stream) on a free port; stopped after the test."""
    started: list[Server] = []

    async def start(mongodb_uri: str | None = None, **overrides: Any) -> Service:
        settings = base_settings(**overrides)
        ctx = build_context(settings, mongodb_uri or mongo_uri, Metrics())
        server = Server(ctx)
        await server.start()
        started.append(server)
        return Service(server=server, settings=settings)

    yield start
    for server in started:
        if not server.stopped.is_set():
            io_loop.run_sync(server.stop, timeout=30)

    async def settle() -> None:
        # A stopped server may leave one task behind: the change stream read its bus stopped
        # waiting for (service/storage/mongo/events.py), which a process exit ends. Here the
        # loop goes on to the next test, so it is cancelled (PyMongo closes its connection)
        # and awaited. Then transports closed by the test or by that finish closing their
        # sockets on the next loop turns; they run before pytest-tornado closes the loop
        # (else: ResourceWarning, at whichever later moment the garbage collector runs).
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=5)
        for _ in range(3):
            await asyncio.sleep(0)

    io_loop.run_sync(settle)


@pytest.fixture
def service(io_loop: Any, start_service: StartService) -> Service:
    """A running service with default test settings."""
    return io_loop.run_sync(start_service)  # type: ignore[no-any-return]
