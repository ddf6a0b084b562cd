"""One serving process: builds the objects, listens, heartbeats, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets

from handlers.edge import EdgeServer
from handlers.routes import make_app
from metrics.gc_pauses import FLUSH_SECONDS, GcPauses
from metrics.registry import Metrics
from service.app.auth import Authenticator
from service.app.context import AppContext, Lifecycle
from service.app.readiness import Readiness
from service.core.config import Settings
from service.core.errors import CloseCode, ServiceError
from service.core.schema import TransportName
from service.fanout.bus import Bus
from service.fanout.hub import Hub
from service.fanout.presence import Presence
from service.storage.mongo.embedded import disk_full
from service.storage.mongo.store import MongoStore
from service.storage.mongo.unit_of_work import MongoUnitOfWork

log = logging.getLogger(__name__)

# Tornado reads bodies up to this; the API answers 413 past 1 MiB, larger bodies are refused.
MAX_BODY_SIZE = 16 * 1024 * 1024
STOP_TIMEOUT_SECONDS = 5.0
HEARTBEAT_TICK_SECONDS = 0.25  # a heartbeat round is spread over ticks this far apart


class ListenError(ServiceError):
    """PORT cannot be listened on (in use by another process, or not permitted)."""


def listen(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for `port` on every address of `host`.

    Raises:
        ListenError: the port is taken (without SO_REUSEPORT on both sides) or not permitted.
    """
    try:
        return bind_sockets(port, host, reuse_port=reuse_port, backlog=4096)
    except OSError as exc:
        raise ListenError(f"PORT: cannot listen on {host or '*'}:{port}: {exc.strerror or exc}") from None


def check_port(host: str, port: int) -> None:
    """Fail now, before anything starts, when another process listens on the port.

    Bound without SO_REUSEPORT, so a listener that set it (another service's workers) counts
    too. The port is free again when this returns; the server binds it at the end of `start`.

    Raises:
        ListenError: the port is taken or not permitted.
    """
    if port:
        for sock in listen(host, port):
            sock.close()


@dataclass(kw_only=True)
class ServerContext(AppContext):
    """The handlers' context and the concrete store behind its ports, which the server starts and closes."""

    store: MongoStore = field(repr=False)


def build_context(
    settings: Settings, mongodb_uri: str, metrics: Metrics | None = None, *, embedded_storage: Path | None = None
) -> ServerContext:
    """Every dependency of the handlers, wired together (nothing started yet).

    Args:
        embedded_storage: the embedded MongoDB's data directory (errors then tell a full disk).
    """
    metrics = metrics or Metrics(settings.multiproc_dir)
    store = MongoStore(settings, mongodb_uri)
    hub = Hub(
        metrics,
        max_pending_bytes=settings.max_pending_bytes,
        max_per_user=settings.max_connections_per_user,
        write_delay_seconds=settings.write_delay_ms / 1000,
    )
    bus = Bus(store, hub, metrics, history_size=settings.history_size, history_ttl_seconds=settings.history_ttl_seconds)
    if settings.presence:
        hub.presence = Presence(
            store, metrics, heartbeat_seconds=settings.heartbeat_seconds, grace_seconds=settings.presence_grace_seconds
        )
    return ServerContext(
        settings=settings,
        store=store,
        unit_of_work=MongoUnitOfWork(store),
        online=store,
        auth=Authenticator(settings, store),
        hub=hub,
        bus=bus,
        metrics=metrics,
        readiness=Readiness(store),
        lifecycle=Lifecycle(started_at=time.time()),
        disk_full=partial(disk_full, embedded_storage) if embedded_storage is not None else lambda: False,
    )


class Server:
    """The HTTP server of one process and the things that run beside it."""

    def __init__(self, ctx: ServerContext, *, reuse_port: bool = False) -> None:
        self.ctx = ctx
        self.reuse_port = reuse_port
        self.http: EdgeServer | None = None
        self.port = 0
        self._heartbeat: PeriodicCallback | None = None
        self.gc_pauses = GcPauses(ctx.metrics.gc_pause)
        self._gc_flush: PeriodicCallback | None = None
        self.stopped = asyncio.Event()
        self._tasks: set[asyncio.Future[None]] = set()  # keeps signal-started work alive

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Check MongoDB, open the change stream, then accept connections.

        Raises:
            ServiceError: MongoDB is unusable (see `MongoStore.start`) or the port is taken
                (`ListenError`); what had started is stopped again.
        """
        ctx = self.ctx
        await ctx.store.start()
        try:
            await self._start_serving(sockets)
        except ServiceError:
            await self.stop()
            raise

    async def _start_serving(self, sockets: list[socket.socket] | None) -> None:
        ctx = self.ctx
        await ctx.bus.start()
        if ctx.hub.presence is not None:
            await ctx.hub.presence.start()
        app = make_app(ctx)
        self.http = EdgeServer(
            app,
            trusted=ctx.settings.trusted_proxy,
            head_timeout=ctx.settings.head_timeout_seconds,
            body_timeout=ctx.settings.body_timeout_seconds,
            max_pending_per_address=ctx.settings.max_pending_per_address,
            metrics=ctx.metrics,
            max_body_size=MAX_BODY_SIZE,
        )
        if sockets is None:
            sockets = listen(ctx.settings.host, ctx.settings.port, reuse_port=self.reuse_port)
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        interval = ctx.settings.heartbeat_seconds
        ticks = max(1, round(interval / HEARTBEAT_TICK_SECONDS))
        self._heartbeat = PeriodicCallback(lambda: ctx.hub.heartbeat(ticks), interval * 1000 / ticks)
        self._heartbeat.start()
        self.gc_pauses.start()
        self._gc_flush = PeriodicCallback(self.gc_pauses.flush, FLUSH_SECONDS * 1000)
        self._gc_flush.start()

    async def drain(self, window: float | None = None) -> None:
        """Refuse new streams, close open ones spread over the window, then stop.

        Args:
            window: seconds to spread the closes over; DRAIN_SECONDS when omitted.
        """
        ctx = self.ctx
        if ctx.lifecycle.draining:
            return
        ctx.lifecycle.draining = True
        for connection in list(ctx.hub):
            if connection.kind == TransportName.POLL:  # a waiting poll answers at once; its next one goes elsewhere
                connection.close(CloseCode.SERVICE_RESTART, "service restart")
        connections = [c for c in ctx.hub if not c.closed]
        window = ctx.settings.drain_seconds if window is None else window
        log.info("draining %d connections over %.0fs", len(connections), window)
        step = window / len(connections) if connections else 0.0
        started = time.monotonic()
        for index, connection in enumerate(connections):
            delay = started + index * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            connection.close(CloseCode.SERVICE_RESTART, "service restart")
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, answer every REST change already accepted, close streams and HTTP
        connections, then release what MongoDB still holds for this process and close it."""
        ctx = self.ctx
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._gc_flush is not None:
            self._gc_flush.stop()
        self.gc_pauses.stop()
        if self.http is not None:
            self.http.stop()
        ctx.lifecycle.stopping = True
        # Each change answers within MONGODB_TIMEOUT_MS; one that failed releases its
        # Idempotency-Key (store.close waits for that), so a client's retry elsewhere is not
        # answered 409 for the rest of the key's lease.
        if not await ctx.lifecycle.writes_done(ctx.store.timeout_seconds + STOP_TIMEOUT_SECONDS):
            log.warning("%d REST changes still running at exit", ctx.lifecycle.writes)
        for connection in list(ctx.hub):
            connection.close(CloseCode.GOING_AWAY, "server stopping")
        for stream in list(ctx.hub.streams):  # not yet authenticated
            stream.close(CloseCode.GOING_AWAY, "server stopping")
        await self._streams_closed_or_dropped()
        # Each last step is bounded and named: a process that waits on one for ever is never
        # "stopped", and the orchestrator kills it with nothing in the log to say why.
        if self.http is not None:
            await _within("closing the HTTP connections", self.http.close_all_connections(), STOP_TIMEOUT_SECONDS)
        if ctx.hub.presence is not None:  # a clean drain removes this process's users at once
            await _within(
                "presence's last write", ctx.hub.presence.stop(), ctx.store.timeout_seconds + STOP_TIMEOUT_SECONDS
            )
        await _within("the change stream's close", ctx.bus.stop(), STOP_TIMEOUT_SECONDS)
        await _within("the MongoDB client's close", ctx.store.close(), STOP_TIMEOUT_SECONDS)
        self.stopped.set()

    async def _streams_closed_or_dropped(self) -> None:
        """Give clients a moment to answer the close; then drop whoever has not."""
        hub = self.ctx.hub
        try:
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await hub.streams_closed()
        except TimeoutError:
            log.warning("%d streams did not close within %.0fs", len(hub.streams), STOP_TIMEOUT_SECONDS)
            for stream in list(hub.streams):
                stream.abort()

    def give_up(self, reason: str) -> None:
        """The database cannot be brought back: fail `/healthz`, drain, and stop (exit non-zero)."""
        log.critical("giving up: %s", reason)
        self.ctx.lifecycle.broken = reason
        self._tasks.add(asyncio.ensure_future(self.drain()))

    def install_signal_handlers(self) -> None:
        """SIGTERM drains over DRAIN_SECONDS; SIGINT (Ctrl-C) drains at once; a second signal stops."""
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if self.ctx.lifecycle.draining:
                log.info("second signal: stopping now")
                self._tasks.add(asyncio.ensure_future(self.stop()))
                return
            log.info("received %s: draining", signal.Signals(signum).name)
            self._tasks.add(asyncio.ensure_future(self.drain(0.0 if signum == signal.SIGINT else None)))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)


async def _within(what: str, step: Awaitable[None], seconds: float) -> None:
    """Await one step of the stop for at most `seconds`; past that, say which and go on
    (presence's users then leave by the other processes' sweep or the TTL index)."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        log.warning("stopping: %s did not finish within %.0fs; going on without it", what, seconds)
