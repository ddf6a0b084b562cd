"""The embedded MongoDB: a SecantusDB server run as a child process on a free loopback port.

Used when MONGODB_URI is unset. Its data lives in DATA_DIR/mongo, so it survives restarts, and
it syncs every commit to disk before acknowledging it (`--sync-on-commit`), so it survives
crashes too: without that flag, 46 of 300 acknowledged inserts were gone after a SIGKILL.
The child is stopped on every exit path: `stop()` (SIGTERM, a clean shutdown) on normal exit
and signals, and the kernel kills it if this process dies without cleaning up
(PR_SET_PDEATHSIG with SIGKILL: an orphan must not keep holding the data directory, and a
SIGTERM to an orphan was seen not to end it within 45 s on a busy machine).

One server per data directory: before starting, the service takes an exclusive `flock` on
DATA_DIR/mongo.pid and writes its pid there; the child inherits the lock, so it is held until
both have exited, and the kernel drops it however they die (no stale lock after `kill -9`).
A second service on the same directory is refused with that pid, before SecantusDB would
fail on WiredTiger's own lock ("Device or resource busy").
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from service.core.errors import ServiceError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
# Oplog entries kept whatever their age (every write is one: events, tasks, keys, presence).
# Past it, resumes from pruned positions answer `resync`; HISTORY_TTL_SECONDS is the other bound.
OPLOG_MAX_ENTRIES = 1_000_000
# A holder that has exited may leave its lock to a child that is still dying (SIGKILL from
# PR_SET_PDEATHSIG): wait this long for it before calling the directory in use.
DYING_HOLDER_SECONDS = 10.0
FLOCK_STRUCT = "hhqqi"  # struct flock on 64-bit Linux: type, whence, start, len, pid
DISK_FULL_BYTES = 16 * 1024 * 1024
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")  # outgoing connections' source ports


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


class DataDirInUse(EmbeddedMongoError):
    """Another process already runs a server on this data directory."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now, for a server started next: below the kernel's
    ephemeral range when one is free there.

    A port the kernel picks (`bind` to 0) comes from that range, which every outgoing
    connection also draws its source port from: between the check and the server's bind, one
    can take it (Pushpin, started by the bench, once failed to bind one of its five ports while
    its parts connected to each other). Nothing takes a port below the range unasked."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(max(1024, low - 10_000), low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # someone listens there (or just did)
            return port
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
        self,
        storage: Path | str,
        *,
        oplog_retention_seconds: int = 86_400,
        oplog_max_entries: int = OPLOG_MAX_ENTRIES,
        sync_on_commit: bool = True,
    ) -> None:
        """One server, not started yet.

        Args:
            storage: a data directory, or `:memory:` for a throwaway store (never synced).
            sync_on_commit: sync each commit to disk before acknowledging it (EMBEDDED_SYNC_ON_COMMIT).
        """
        self.storage = storage
        self.oplog_retention_seconds = oplog_retention_seconds
        self.oplog_max_entries = oplog_max_entries
        self.sync_on_commit = sync_on_commit
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._lock: int | None = None  # fd of the held DATA_DIR lock

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
            DataDirInUse: another process runs a server on this data directory (names its pid).
            EmbeddedMongoError: it exited or did not answer in time (with its last log line).
        """
        storage = str(self.storage)
        log_path: Path | None = None
        log_start = 0
        if storage != ":memory:":
            try:
                Path(storage).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EmbeddedMongoError(f"DATA_DIR: cannot create {storage}: {exc.strerror}") from None
            if self._lock is None:
                self._lock = lock_data_dir(Path(storage))
            log_path = Path(storage).parent / "mongo.log"
            log_start = log_path.stat().st_size if log_path.exists() else 0
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
            str(self.oplog_max_entries),
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
                pass_fds=() if self._lock is None else (self._lock,),
            )
        finally:
            if log_path:
                output.close()  # type: ignore[union-attr]
        try:
            self._wait_ready(timeout, log_path, log_start)
        except BaseException:
            self.stop()
            raise
        log.info("embedded MongoDB (SecantusDB) pid %d on port %d, data in %s", self.pid, self.port, storage)
        return self.uri

    def _wait_ready(self, timeout: float, log_path: Path | None, log_start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedMongoError(
                    f"embedded MongoDB exited with code {self.process.returncode}: {_last_line(log_path, log_start)}"
                )
            client: MongoClient[dict[str, object]] = MongoClient(self.uri, serverSelectionTimeoutMS=250)
            try:
                client.admin.command("hello")
                return
            except PyMongoError:
                time.sleep(0.1)
            finally:
                client.close()
        raise EmbeddedMongoError(
            f"embedded MongoDB did not answer within {timeout:.0f}s: {_last_line(log_path, log_start)}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL if it would not stop; then release the directory (idempotent)."""
        process, self.process = self.process, None
        try:
            if process is None or process.poll() is not None:
                return
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded MongoDB did not stop in %.0fs; killing it", timeout)
                process.kill()
                process.wait()
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                os.close(lock)


def lock_data_dir(storage: Path) -> int:
    """Take the exclusive lock of a server's data directory, with this pid in it; its fd.

    Raises:
        DataDirInUse: a live process holds it (ours, or WiredTiger's own lock in `storage`).
        EmbeddedMongoError: the lock file cannot be opened or locked at all.
    """
    path = storage.parent / f"{storage.name}.pid"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise EmbeddedMongoError(f"DATA_DIR: cannot open {path}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + DYING_HOLDER_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise EmbeddedMongoError(f"DATA_DIR: cannot lock {path}: {exc.strerror}") from None
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if (holder.isdigit() and _alive(int(holder))) or time.monotonic() > deadline:
                raise DataDirInUse(
                    f"data directory {storage.parent} is in use by pid {holder or '?'} "
                    f"(another service and its embedded MongoDB); stop it or set another DATA_DIR"
                )
            time.sleep(0.1)  # its service is gone and its server is dying: the lock comes free
        server = wiredtiger_holder(storage)
        if server is not None:
            raise DataDirInUse(
                f"data directory {storage.parent} is in use by pid {server} (a MongoDB server holds "
                f"{storage / 'WiredTiger.lock'}); stop it or set another DATA_DIR"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def wiredtiger_holder(storage: Path) -> int | None:
    """The pid holding WiredTiger's lock on `storage` (a server not started by us), if any."""
    try:
        fd = os.open(storage / "WiredTiger.lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        query = struct.pack(FLOCK_STRUCT, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack(FLOCK_STRUCT, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _last_line(log_path: Path | None, start: int) -> str:
    """The last line this start wrote to the server's log (a traceback's last line is its error)."""
    if log_path is None or not log_path.exists():
        return "no log"
    with open(log_path, "rb") as log_file:
        log_file.seek(start)
        lines = log_file.read().decode(errors="replace").strip().splitlines()
    return f"{lines[-1].strip()} (see {log_path})" if lines else f"nothing in {log_path}"
