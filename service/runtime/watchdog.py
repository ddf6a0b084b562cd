"""The embedded MongoDB's watchdog: restarts the SecantusDB child when it dies or panics.

A full disk makes WiredTiger panic ("the process must exit and restart", its log says): the
server lives on and still answers `ping`, but every command that touches storage fails with
InternalError, forever. So once a second the watchdog runs a storage read; when the child
exited, or the read failed with InternalError twice in a row, it restarts the child on the same
port and data directory (PyMongo clients reconnect by themselves), backing off while that fails
(a disk still full refuses it). After EMBEDDED_RESTART_ATTEMPTS restarts without a stable
minute between them it gives up and calls `on_broken`: the process then fails `/healthz` and
exits non-zero, for the orchestrator to act. Unreachable-but-alive is not a panic (a busy
machine looks the same) and is left alone.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

import pymongo
from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from service.storage.mongo.embedded import EmbeddedMongo, EmbeddedMongoError

log = logging.getLogger(__name__)

INTERNAL_ERROR = 1  # what SecantusDB answers to storage commands after a WiredTiger panic
PANICS_BEFORE_RESTART = 2  # one InternalError could be a bug in one command; two in a row is a panic
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 5.0)  # between failed restarts: space returns → back in ≤ 5 s
STABLE_SECONDS = 60.0  # healthy this long after a restart: the next fault starts a new count
PROBE_TIMEOUT_SECONDS = 2.0


class Health(enum.Enum):
    """What one probe of the server found."""

    OK = "ok"
    PANICKED = "panicked"  # alive, answers, but storage commands fail: it must be restarted
    UNREACHABLE = "unreachable"  # alive but not answering (busy, or paused): leave it be
    EXITED = "exited"


class Watchdog:
    """A thread that probes one `EmbeddedMongo` and restarts it (see the module docstring)."""

    def __init__(
        self,
        mongo: EmbeddedMongo,
        *,
        attempts: int,
        on_broken: Callable[[str], None],
        interval: float = 1.0,
    ) -> None:
        """Watch `mongo` (already started); nothing runs until `start`.

        Args:
            attempts: restarts in a row (without STABLE_SECONDS of health between them) before
                giving up.
            on_broken: called once, from the watchdog's thread, with the reason it gave up.
            interval: seconds between probes.
        """
        self.mongo = mongo
        self.attempts = attempts
        self.on_broken = on_broken
        self.interval = interval
        self.restarts = 0  # successful restarts, ever
        self.broken: str | None = None
        self._failures = 0  # restart attempts since the server was last stable
        self._restarted_at = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: MongoClient[dict[str, object]] | None = None

    def start(self) -> None:
        self._client = MongoClient(
            self.mongo.uri, serverSelectionTimeoutMS=int(PROBE_TIMEOUT_SECONDS * 1000), appname="watchdog"
        )
        self._thread = threading.Thread(target=self._run, name="embedded-mongo-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, then stop the server from the watchdog's own thread (idempotent).

        A child the watchdog restarted dies with the thread that started it (PR_SET_PDEATHSIG
        follows the thread), so that thread stops it first, cleanly.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.mongo.stop()
        if self._client is not None:
            self._client.close()
            self._client = None

    def probe(self) -> Health:
        """One storage read (a `find` on a collection nobody uses)."""
        process = self.mongo.process
        if process is None or process.poll() is not None:
            return Health.EXITED
        assert self._client is not None
        try:
            with pymongo.timeout(PROBE_TIMEOUT_SECONDS):
                self._client.admin.command({"find": "watchdog", "limit": 1})
        except OperationFailure as exc:
            return Health.PANICKED if exc.code == INTERNAL_ERROR else Health.OK
        except ConnectionFailure:
            return Health.EXITED if process.poll() is not None else Health.UNREACHABLE
        except PyMongoError:
            return Health.UNREACHABLE  # out of time on a busy machine
        return Health.OK

    def _run(self) -> None:
        panics = 0
        try:
            while not self._stopping.wait(self.interval) and self.broken is None:
                try:
                    health = self.probe()
                    if health is Health.OK:
                        panics = 0
                        if self._failures and time.monotonic() - self._restarted_at > STABLE_SECONDS:
                            self._failures = 0
                        continue
                    if health is Health.PANICKED:
                        panics += 1
                        if panics < PANICS_BEFORE_RESTART:
                            continue
                    if health is not Health.UNREACHABLE:
                        panics = 0
                        self._restart(health)
                except Exception:  # the thread must outlive a bug in one round: it owns the child
                    log.exception("embedded MongoDB watchdog round failed")
        finally:
            self.mongo.stop()

    def _restart(self, health: Health) -> None:
        """Restart the server on its port until it answers, the watchdog stops, or it gives up."""
        port = self.mongo.port
        log.error("embedded MongoDB %s; restarting it on port %d", health.value, port)
        self.mongo.stop()
        while not self._stopping.is_set():
            if self._failures >= self.attempts:
                self.broken = f"embedded MongoDB failed; {self._failures} restarts did not bring it back"
                log.critical("%s: giving up", self.broken)
                self.on_broken(self.broken)
                return
            if self._failures:  # a restart failed, or came back and failed again (the disk still full)
                self._stopping.wait(RESTART_DELAYS[min(self._failures - 1, len(RESTART_DELAYS) - 1)])
                if self._stopping.is_set():
                    return
            self._failures += 1
            try:
                self.mongo.start(port=port)
            except EmbeddedMongoError as exc:
                log.error("embedded MongoDB restart %d failed: %s", self._failures, exc)
                continue
            self.restarts += 1
            self._restarted_at = time.monotonic()
            log.warning("embedded MongoDB restarted (pid %d, port %d)", self.mongo.pid, port)
            return
