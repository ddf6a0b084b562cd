"""A service process on a fresh in-memory SecantusDB, for the small single-system scripts."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.processes import ROOT, SECRET, ServiceProcess
from service.storage.mongo.embedded import EmbeddedMongo


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


def old_and_new(measure: Callable[[Path, str], dict[str, object]], old: Path | None) -> None:
    """Run `measure(checkout, mongodb_uri)` for another checkout (`--old`, when given) and this
    one against one in-memory SecantusDB, and print both results as JSON."""
    mongo = EmbeddedMongo(":memory:")
    uri = mongo.start()
    try:
        results = {}
        if old:
            results["old"] = measure(old.resolve(), uri)
        results["new"] = measure(ROOT, uri)
    finally:
        mongo.stop()
    print(json.dumps(results, indent=2))
