"""A service process on a fresh in-memory SecantusDB, for the small single-system scripts."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.processes import SECRET, ServiceProcess
from service.embedded_mongo import EmbeddedMongo


@contextmanager
def local_service() -> Iterator[tuple[ServiceProcess, str]]:
    """Start SecantusDB and `python -m service` (JWT secret `harness.processes.SECRET`); stop both by pid."""
    mongo = EmbeddedMongo(":memory:")
    uri = mongo.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = {"MONGODB_URI": uri, "JWT_SECRET": SECRET, "DEV_MODE": "0", "LOG_LEVEL": "WARNING"}
            process = ServiceProcess(Path(tmp), env).start()
            try:
                yield process, uri
            finally:
                process.stop()
    finally:
        mongo.stop()
