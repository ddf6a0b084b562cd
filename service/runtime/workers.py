"""`WORKERS=N`: a parent that runs N serving processes on one port (SO_REUSEPORT).

The parent starts the embedded MongoDB once (and its watchdog, which restarts it after a
crash or panic), checks MongoDB (and reconciles its indexes) once, prepares the Prometheus
multiprocess directory, restarts a worker that dies, forwards SIGTERM to all and exits 0 when
they have drained (1 if the watchdog gave up). Each worker has its own change stream, hub and
connections. A startup failure is one line and exit status 1: the parent's own checks print
it; a worker that fails before the service was ever ready printed it, and the parent stops
the others instead of restarting it forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from types import FrameType

from service.core.config import Settings
from service.core.errors import ServiceError
from service.runtime.launch import EMBEDDED_STORAGE_ENV, WORKER_ENV, announce, metrics_dir
from service.storage.mongo.embedded import EmbeddedMongo, signal_on_parent_death
from service.storage.mongo.store import MongoStore

log = logging.getLogger("service.runtime.workers")

RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)


def _wait_listening(port: int, workers: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w.poll() is not None for w in workers):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


async def _check_store(settings: Settings, uri: str) -> None:
    """What each worker's start does first, once, so its failure is one line, not one per worker."""
    store = MongoStore(settings, uri)
    try:
        await store.start()
    finally:
        await store.close()


def supervise(settings: Settings) -> int:
    """Run the workers until a signal; returns the exit status."""
    from prometheus_client import multiprocess

    from service.runtime.watchdog import Watchdog

    mongo: EmbeddedMongo | None = None
    watchdog: Watchdog | None = None
    metrics_path, owned = metrics_dir(settings)
    stopping = False
    broken = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    workers: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        uri = settings.mongodb_uri
        if not uri:
            mongo = EmbeddedMongo(
                settings.data_dir / "mongo",
                oplog_retention_seconds=settings.history_ttl_seconds,
                sync_on_commit=settings.embedded_sync_on_commit,
            )
            uri = mongo.start()
            watchdog = Watchdog(mongo, attempts=settings.embedded_restart_attempts, on_broken=lambda _: broken.set())
            watchdog.start()
        asyncio.run(_check_store(settings, uri))
        env = {
            **os.environ,
            WORKER_ENV: "1",
            "MONGODB_URI": uri,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_path),
            **({EMBEDDED_STORAGE_ENV: str(mongo.storage)} if mongo is not None else {}),
        }

        def spawn() -> subprocess.Popen[bytes]:
            # A worker whose supervisor is killed drains and exits instead of serving on alone.
            return subprocess.Popen(
                [sys.executable, "-m", "service", "serve"],
                env=env,
                preexec_fn=lambda: signal_on_parent_death(signal.SIGTERM),
            )

        workers.extend(spawn() for _ in range(settings.workers))
        log.info("started %d workers: %s", len(workers), " ".join(str(w.pid) for w in workers))
        if _wait_listening(settings.port, workers):
            announce(settings, settings.port, mongo)
        elif not stopping and any((w.poll() or 0) > 0 for w in workers):
            # It refused to start (and printed why); the others would, forever. A worker
            # killed by a signal (a negative status) is restarted below as usual.
            return 1
        crashes = 0
        while not stopping:
            if broken.is_set():  # the watchdog logged why; the orchestrator restarts us
                on_signal(signal.SIGTERM, None)
                break
            for index, worker in enumerate(workers):
                code = worker.poll()
                if code is None or stopping:
                    continue
                multiprocess.mark_process_dead(worker.pid, str(metrics_path))  # type: ignore[no-untyped-call]
                delay = RESTART_DELAYS[min(crashes, len(RESTART_DELAYS) - 1)]
                log.error("worker %d exited with %d; restarting in %.1fs", worker.pid, code, delay)
                crashes += 1
                time.sleep(delay)
                workers[index] = spawn()
            time.sleep(0.2)
        grace = settings.drain_seconds + 15
        deadline = time.monotonic() + grace
        for worker in workers:
            try:
                worker.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not drain in %.0fs; killing it", worker.pid, grace)
                worker.kill()
                worker.wait()
        failed = [w.pid for w in workers if w.returncode not in (0, -signal.SIGTERM)]
        return 1 if failed or broken.is_set() else 0
    except ServiceError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        if watchdog is not None:
            watchdog.stop()
        if mongo is not None:
            mongo.stop()
        if owned:
            shutil.rmtree(metrics_path, ignore_errors=True)
