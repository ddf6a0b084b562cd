"""What the single-process start (`service.runtime.cli`) and the worker supervisor
(`service.runtime.workers`) share: the environment a worker is started with, the multiprocess
metrics directory, and the banner printed once the service listens."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from service.app.auth import issue_token
from service.core.config import Settings
from service.storage.mongo.embedded import EmbeddedMongo

log = logging.getLogger("service")

WORKER_ENV = "REALTIME_WORKER"
EMBEDDED_STORAGE_ENV = "REALTIME_EMBEDDED_STORAGE"  # a worker's hint that its MongoDB is the embedded one
DEV_USER_ID, DEV_USER_NAME, DEV_ROLES = 1, "محمد حسن", ("user", "publisher", "admin")


def metrics_dir(settings: Settings) -> tuple[Path, bool]:
    """The multiprocess directory, emptied; and whether we created it (and so remove it)."""
    if settings.multiproc_dir is not None:
        path = settings.multiproc_dir
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    return Path(tempfile.mkdtemp(prefix="realtime-metrics-")), True


def announce(settings: Settings, port: int, mongo: EmbeddedMongo | None) -> None:
    """Print where the service is and, in dev mode, a token to try it with."""
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{port}"
    where = f"embedded MongoDB pid {mongo.pid}, data in {settings.data_dir}" if mongo else "MONGODB_URI"
    if settings.dev_mode:  # once started: a failed start prints its one line and nothing else
        log.warning("DEV_MODE is on: tokens are signed with a development secret from %s", settings.data_dir)
    if settings.log_format == "json":
        # Containers read stdout/stderr as one JSON log: no banner, and no token in a log line.
        log.info("listening", extra={"url": base, "workers": settings.workers, "mongodb": where})
        return
    lines = [f"Realtime events service on {base} ({settings.workers} worker(s), {where})"]
    if settings.dev_mode and settings.jwt_secret:
        token = issue_token(
            settings,
            sub=DEV_USER_ID,
            name=DEV_USER_NAME,
            roles=DEV_ROLES,
            ttl_seconds=24 * 3600,
        )
        lines += [
            f"  dashboard  {base}/?token={token}",
            f"  dev token  (user 1, roles user,publisher,admin, valid 24 h): {token}",
            "  DEV_MODE: a development secret is in use; set JWT_SECRET or JWT_PUBLIC_KEY in production.",
        ]
    lines.append(f"  streams    ws://{host}:{port}/ws   {base}/events   (?token=... or ?ticket=...)")
    lines.append(f"  API        {base}/api/openapi.json   metrics {base}/metrics")
    print("\n".join(lines), flush=True)
