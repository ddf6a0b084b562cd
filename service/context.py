"""The objects every handler needs, built once per process and passed through `initialize`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metrics.registry import Metrics
from service.auth import Authenticator
from service.bus import Bus
from service.config import Settings
from service.hub import Hub
from service.store import MongoStore


@dataclass
class Lifecycle:
    """Process state the health and transport handlers consult."""

    draining: bool = False
    started_at: float = 0.0
    broken: str | None = None  # why the process gave up on its database: `/healthz` fails


@dataclass
class AppContext:
    """Dependencies of the handlers; tests build their own."""

    settings: Settings
    store: MongoStore
    auth: Authenticator
    hub: Hub
    bus: Bus
    metrics: Metrics
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    embedded_storage: Path | None = None  # the embedded MongoDB's data directory, if there is one
