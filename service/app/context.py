"""The objects every handler needs, built once per process and passed through `initialize`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from metrics.registry import Metrics
from service.app.auth import Authenticator
from service.app.readiness import Readiness
from service.core.config import Settings
from service.core.ports import OnlineUsers, UnitOfWork
from service.fanout.bus import Bus
from service.fanout.hub import Hub


@dataclass
class Lifecycle:
    """Process state the health, transport and REST handlers consult."""

    draining: bool = False
    started_at: float = 0.0
    broken: str | None = None  # why the process gave up on its database: `/healthz` fails
    stopping: bool = False  # REST changes are refused (503): the process answers those it accepted, then exits
    writes: int = 0  # REST changes in flight
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Count a REST change in flight until it answered (`writes_done` waits for them)."""
        self.writes += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.writes -= 1
            if self.writes == 0:
                self._idle.set()

    async def writes_done(self, seconds: float) -> bool:
        """Wait until no REST change is in flight, at most `seconds`; whether none is."""
        if self.writes:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._idle.wait()
        return self.writes == 0


@dataclass
class AppContext:
    """Dependencies of the handlers, storage as ports (the runtime wires MongoDB in); tests build their own."""

    settings: Settings
    unit_of_work: UnitOfWork  # the use cases' changes and reads (`service.app.tasks`, ...)
    online: OnlineUsers  # `GET /api/presence`
    auth: Authenticator
    hub: Hub
    bus: Bus
    metrics: Metrics
    readiness: Readiness
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    # Whether the database's disk is full (the embedded MongoDB's data directory is): a 503 says so.
    disk_full: Callable[[], bool] = lambda: False
