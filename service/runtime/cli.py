"""Command line: `python -m service` serves; `token` signs a development token; `tail` follows
the event stream from a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from metrics import logs
from metrics.gc_pauses import tune_collector
from service.app.auth import issue_token
from service.core.config import Settings, load_settings
from service.core.errors import ConfigError, ServiceError
from service.runtime.launch import EMBEDDED_STORAGE_ENV, WORKER_ENV, announce, metrics_dir
from service.storage.mongo.embedded import EmbeddedMongo

log = logging.getLogger("service")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _serve_one(settings: Settings, uri: str, mongo: EmbeddedMongo | None, *, worker: bool) -> int:
    from service.runtime.server import Server, build_context
    from service.runtime.watchdog import Watchdog

    storage = mongo.storage if mongo is not None else os.environ.get(EMBEDDED_STORAGE_ENV) if worker else None
    ctx = build_context(settings, uri, embedded_storage=Path(storage) if storage else None)
    server = Server(ctx, reuse_port=worker or settings.workers > 1)
    # What exists now (modules, settings, the MongoDB client) lives as long as the process:
    # exempt it from every later collection, and collect young objects less often, before any
    # client can connect (metrics/gc_pauses.py).
    frozen = tune_collector()
    try:
        await server.start()
    except ServiceError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        await server.ctx.store.close()
        return 1
    # Said once serving, so that a failed start stays one line.
    log.info("garbage collector: %d startup objects frozen, thresholds %s", frozen, gc.get_threshold())
    server.install_signal_handlers()
    watchdog: Watchdog | None = None
    if mongo is not None:
        loop = asyncio.get_running_loop()

        def broken(reason: str) -> None:  # called from the watchdog's thread
            loop.call_soon_threadsafe(server.give_up, reason)

        watchdog = Watchdog(mongo, attempts=settings.embedded_restart_attempts, on_broken=broken)
        watchdog.start()
    try:
        if not worker:
            announce(settings, server.port, mongo)
        await server.stopped.wait()
    finally:
        if watchdog is not None:
            await asyncio.to_thread(watchdog.stop)
    log.info("stopped")
    return 1 if ctx.lifecycle.broken else 0


def serve() -> int:
    """Serve until SIGTERM/SIGINT; exit status 0 after a clean drain."""
    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    worker = os.environ.get(WORKER_ENV) == "1"
    if not worker:
        from service.runtime.server import check_port

        try:
            check_port(settings.host, settings.port)  # before the embedded MongoDB starts for nothing
        except ServiceError as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return 1
    if settings.workers > 1 and not worker:
        from service.runtime.workers import supervise

        return supervise(settings)
    if settings.multiproc_dir is not None and not worker:
        # No supervisor prepares it for a single process: create it (an image's default path
        # need not exist) and drop the files of a previous run (a restarted container keeps
        # its emptyDir), as `supervise` does.
        metrics_dir(settings)
    mongo: EmbeddedMongo | None = None
    try:
        if settings.mongodb_uri:
            uri = settings.mongodb_uri
        else:
            mongo = EmbeddedMongo(
                settings.data_dir / "mongo",
                oplog_retention_seconds=settings.history_ttl_seconds,
                sync_on_commit=settings.embedded_sync_on_commit,
            )
            uri = mongo.start()
        return run(_serve_one(settings, uri, mongo, worker=worker))
    except ServiceError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        if mongo is not None:
            mongo.stop()


def token(args: argparse.Namespace) -> int:
    settings = _settings()
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    try:
        print(issue_token(settings, sub=args.sub, name=args.name or str(args.sub), roles=roles, ttl_seconds=args.ttl))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run the process's event loop: uvloop when installed, else asyncio's own.

    uvloop's C transports make each fan-out write cheaper: `hub.deliver` to 5,000
    WebSocket clients took a median 12.9-14.3 us per client on it, 14.7-16.5 on asyncio's.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the service (the default)")
    t = commands.add_parser("token", help="print a signed development token")
    t.add_argument("--sub", required=True, help="user id")
    t.add_argument("--name", default="", help="display name (any script)")
    t.add_argument("--roles", default="user", help="comma-separated: user,publisher,admin")
    t.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    from service.runtime.tail import add_arguments

    add_arguments(commands.add_parser("tail", help="print live events, one JSON per line"))
    args = parser.parse_args(argv)
    if args.command == "token":
        return token(args)
    if args.command == "tail":
        from service.runtime.tail import tail

        return tail(args)
    return serve()


if __name__ == "__main__":
    raise SystemExit(main())
