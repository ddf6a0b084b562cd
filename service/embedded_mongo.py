"""The embedded MongoDB: a SecantusDB server run as a child process on a free loopback port.

Used when MONGODB_URI is unset. Its data lives in DATA_DIR/mongo, so it survives restarts, and
it syncs every commit to disk before acknowledging it (`--sync-on-commit`), so it survives
crashes too: without that flag, 46 of 300 acknowledged inserts were gone after a SIGKILL.
The child is stopped on every exit path: `stop()` (SIGTERM, a clean shutdown) on normal exit
and signals, and the kernel kills it if this process dies without cleaning up
(PR_SET_PDEATHSIG with SIGKILL: an orphan must not keep holding the data directory, and a
SIGTERM to an orphan was seen not to end it within 45 s on a busy machine).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from service.errors import ServiceError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
DISK_FULL_BYTES = 16 * 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded here, not between fork and exec: the watchdog restarts the server from a thread, and a
# forked child of a threaded process must not take the dynamic loader's lock another thread held.
_LIBC = _libc()


class EmbeddedMongoError(ServiceError):
    """The embedded server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def signal_on_parent_death(signum: int) -> None:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux).

    Runs in a child between fork and exec (`preexec_fn`); elsewhere it does nothing, and the
    parent's orderly exit paths still stop the child.
    """
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signum)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    signal_on_parent_death(signal.SIGKILL)
    os.setpgrp()  # Ctrl-C in a terminal reaches the service, which stops the child itself


def disk_full(storage: Path) -> bool:
    """Whether the filesystem of a data directory has less room than WiredTiger needs to go on
    (it preallocates 10 MiB log files, and panics when a write finds no room)."""
    try:
        return shutil.disk_usage(storage).free < DISK_FULL_BYTES
    except OSError:
        return False


def server_command() -> str:
    """Path of `secantusd-py`, next to this Python first (a venv need not be activated)."""
    beside = Path(sys.executable).parent / "secantusd-py"
    if beside.exists():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found is None:
        raise EmbeddedMongoError("secantusd-py not found: pip install -r requirements.txt")
    return found


class EmbeddedMongo:
    """Start, wait for, and stop one SecantusDB server."""

    def __init__(
        self, storage: Path | str, *, oplog_retention_seconds: int = 86_400, sync_on_commit: bool = True
    ) -> None:
        """One server, not started yet.

        Args:
            storage: a data directory, or `:memory:` for a throwaway store (never synced).
            sync_on_commit: sync each commit to disk before acknowledging it (EMBEDDED_SYNC_ON_COMMIT).
        """
        self.storage = storage
        self.oplog_retention_seconds = oplog_retention_seconds
        self.sync_on_commit = sync_on_commit
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 30.0, port: int | None = None) -> str:
        """Start the server and wait until it answers `hello`; returns its URI.

        Args:
            timeout: seconds to wait for it to answer.
            port: a fixed port (a restart on the same address); a free one when omitted.

        Raises:
            EmbeddedMongoError: it exited or did not answer in time (with its last log lines).
        """
        storage = str(self.storage)
        log_path: Path | None = None
        if storage != ":memory:":
            Path(storage).mkdir(parents=True, exist_ok=True)
            log_path = Path(storage).parent / "mongo.log"
        self.port = port or free_port()
        command = [
            server_command(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            storage,
            "--log-level",
            "WARNING",
            "--oplog-retention-seconds",
            str(self.oplog_retention_seconds),
            "--oplog-max-entries",
            "1000000",
        ]
        if self.sync_on_commit and storage != ":memory:":
            command.append("--sync-on-commit")
        output = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            if log_path:
                output.close()  # type: ignore[union-attr]
        try:
            self._wait_ready(timeout, log_path)
        except BaseException:
            self.stop()
            raise
        log.info("embedded MongoDB (SecantusDB) pid %d on port %d, data in %s", self.pid, self.port, storage)
        return self.uri

    def _wait_ready(self, timeout: float, log_path: Path | None) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedMongoError(
                    f"embedded MongoDB exited with code {self.process.returncode}: {_tail(log_path)}"
                )
            client: MongoClient[dict[str, object]] = MongoClient(self.uri, serverSelectionTimeoutMS=250)
            try:
                client.admin.command("hello")
                return
            except PyMongoError:
                time.sleep(0.1)
            finally:
                client.close()
        raise EmbeddedMongoError(f"embedded MongoDB did not answer within {timeout:.0f}s: {_tail(log_path)}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL if it would not stop (idempotent)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded MongoDB did not stop in %.0fs; killing it", timeout)
            process.kill()
            process.wait()


def _tail(log_path: Path | None, lines: int = 5) -> str:
    if log_path is None or not log_path.exists():
        return "no log"
    text = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(text) or "empty log"
