"""The systems under test: how to start each, where its clients connect, how to publish to it,
which processes hold its connections (for RSS and CPU), and how to stop it (by pid).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.clients import Condition
from service.storage.mongo.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
NOFILE_LIMIT = 20_000  # open files per process on this machine (the hard limit; setrlimit above it fails)
USER_NAME = "محمد حسن"


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_bytes(pids: list[int]) -> int:
    """Sum of resident memory of these processes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_rate(pids: list[int], seconds: float) -> float:
    """Cores those processes used on average over the next `seconds` (sleeps that long; 0 for 0)."""
    if seconds <= 0:
        return 0.0
    before = cpu_seconds(pids)
    time.sleep(seconds)
    return (cpu_seconds(pids) - before) / seconds


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy so far: all of /proc/stat's first
    line but idle and iowait (user, system, interrupts and softirq included, whoever ran)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / ticks


def wait_for(condition: Condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {seconds:.0f}s waiting for {what}")


def raise_open_files() -> None:
    """In a child before exec: the soft open-file limit up to NOFILE_LIMIT (or the hard limit),
    for servers that cannot raise it themselves (Node, Pushpin)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_LIMIT if hard == resource.RLIM_INFINITY else min(NOFILE_LIMIT, hard)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def stop_pid(pid: int, command_part: str, grace: float = 10) -> None:
    """Stop a process we started but do not hold a Popen for (a server's worker), by pid: SIGTERM,
    then SIGKILL after `grace` s. Only while its command line still holds `command_part`, so a
    reused pid is left alone."""

    def ours() -> bool:
        try:
            return command_part.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not ours():
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while ours() and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM, grace: float = 30) -> None:
    """Signal one process we started, wait, and kill it if it does not exit."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Publisher:
    """Sends one event per call; `accepted` counts those the server acknowledged."""

    accepted = 0

    def send(self, seq: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop, after the acknowledgements of what was sent have arrived (bounded)."""


class HttpPublisher(Publisher):
    """Pipelined HTTP POSTs on one keep-alive socket, so a slow server cannot slow the rate."""

    def __init__(self, port: int, path: str, body: Callable[[int], bytes], headers: dict[str, str]) -> None:
        self.body = body
        self.sent = 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Type: application/json\r\n"
        self.accepted = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        tail = b""
        try:
            while chunk := self.sock.recv(65536):
                data = tail + chunk
                self.accepted += data.count(b"HTTP/1.1 20")
                tail = data[-16:]
                self.accepted -= tail.count(b"HTTP/1.1 20")
        except OSError:
            pass

    def send(self, seq: int) -> None:
        body = self.body(seq)
        self.sent += 1
        self.sock.sendall(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def close(self) -> None:
        # Half-closing with a request in flight makes nginx drop it: wait for every answer first.
        deadline = time.monotonic() + 30
        while self.accepted < self.sent and self._reader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.sock.shutdown(socket.SHUT_WR)
        self._reader.join(10.0)
        self.sock.close()


class OneShotHttpPublisher(Publisher):
    """One POST per connection, each answered before the next is sent: for servers that close
    after every request (Pushpin's publish API answers `Connection: close`), where pipelining
    would lose what follows the first request."""

    def __init__(self, port: int, path: str, body: Callable[[int], bytes]) -> None:
        self.port = port
        self.body = body
        self.head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        self.accepted = 0

    def send(self, seq: int) -> None:
        body = self.body(seq)
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            if sock.recv(64).startswith(b"HTTP/1.1 20"):
                self.accepted += 1


class MongoPublisher(Publisher):
    """Acknowledged inserts into `events`, one after another: what `POST /api/events` does, minus HTTP.

    Why not the HTTP route: pipelined POSTs on one connection were seen inserted out of
    publish order under load, which would read as out-of-order delivery; inserting directly
    (README "Publishing from another program": any backend may insert directly) keeps the publish order exact.

    Each insert is bounded (`INSERT_TIMEOUT_MS`): a store that stops answering fails the
    point with PyMongo's timeout instead of holding the run (a stalled insert once held a
    scaling run for 10 minutes, deaf to SIGTERM).
    """

    INSERT_TIMEOUT_MS = 30_000

    def __init__(self, uri: str, database: str) -> None:
        from pymongo import MongoClient

        self.client: MongoClient[dict[str, Any]] = MongoClient(uri, timeoutMS=self.INSERT_TIMEOUT_MS)
        self.events = self.client[database]["events"]

    def send(self, seq: int) -> None:
        from service.core.events import document_for_publish

        self.events.insert_one(document_for_publish(bench_fields(seq), datetime.now(UTC)))
        self.accepted += 1

    def close(self) -> None:
        self.client.close()


BENCH_EVENTS = "bench"  # the type every system publishes (bench_fields) and the service's clients subscribe to


def bench_fields(seq: int) -> dict[str, object]:
    """The event fields every system publishes; `b` carries the sequence and send time (µs)."""
    return {"type": BENCH_EVENTS, "userId": 1, "userName": USER_NAME, "b": f"{seq}:{time.time_ns() // 1000}"}


class System:
    """A server under test."""

    name = ""
    ws_path = "/ws"
    sse_path: str | None = "/events"  # None: no SSE transport (its share of clients is WebSocket)
    ws_protocol = "websocket"  # or "engineio": Socket.IO's framing inside the WebSocket frames
    greeting = True  # sends `connected` after authenticating
    workers = 1
    connect_concurrency = 100  # handshakes each load process keeps in flight while connecting

    def __init__(self, workdir: Path, secret: str) -> None:
        self.workdir = workdir
        self.secret = secret
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def server_pids(self) -> list[int]:
        """The processes that hold client connections."""
        assert self.process is not None
        return [self.process.pid]

    def publisher(self) -> Publisher:
        raise NotImplementedError

    def body(self, seq: int) -> bytes:
        return json.dumps(bench_fields(seq), ensure_ascii=False, separators=(",", ":")).encode()

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def _spawn(
        self,
        command: list[str],
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")
        try:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
            )
        finally:
            log.close()

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.workdir}/{self.name}.log")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


def add_events_option(parser: argparse.ArgumentParser) -> None:
    """`--all-events` (args.events == ""): the service's clients drop their `events=` filter."""
    parser.add_argument(
        "--all-events",
        dest="events",
        action="store_const",
        const="",
        default=BENCH_EVENTS,
        help="the service's clients take every event, presence included (default: events=bench, as the peers)",
    )


def add_client_option(parser: argparse.ArgumentParser) -> None:
    """`--client python|c`: which load clients (bench/load.py's, or the same in C, bench/cload.c)."""
    parser.add_argument(
        "--client",
        choices=("python", "c"),
        default="python",
        help="load clients: python (bench/load.py), or c (bench/cload.c: the same requests, pongs and marks "
        "at about two thirds of the CPU; WebSocket and SSE only, built with the system C compiler)",
    )


class ServiceSystem(System):
    """`python -m service` with WORKERS=n against a shared SecantusDB; publishes via POST /api/events."""

    def __init__(
        self,
        workdir: Path,
        secret: str,
        *,
        workers: int,
        mongo_uri: str,
        env: dict[str, str] | None = None,
        root: Path = ROOT,
        public_key: str | None = None,
        events: str = BENCH_EVENTS,
    ) -> None:
        """`env`: more settings (HEARTBEAT_SECONDS, ...); `root`: another checkout's code (with
        its own `.venv` link); `public_key`: verify tokens with this PEM (JWT_PUBLIC_KEY) instead
        of the HMAC secret; `events`: the clients' `events=` filter. By default they take the
        bench's own events, as every peer's clients do: a peer has no presence, and without the
        filter each of N clients also gets the `presence_joined` of every other one, N² deliveries
        while they connect (`--all-events` measures that)."""
        super().__init__(workdir, secret)
        if events:
            self.ws_path = f"/ws?events={events}"
            self.sse_path = f"/events?events={events}"
        self.name = f"service{workers}"
        self.workers = workers
        self.mongo_uri = mongo_uri
        self.database = f"bench_{self.name}_{os.getpid()}_{self.port}"
        self.extra_env = env or {}
        self.root = root
        self.public_key = public_key

    def start(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "MONGODB_", "PROMETHEUS_"))},
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": str(self.workers),
            "MONGODB_URI": self.mongo_uri,
            "MONGODB_DB": self.database,
            "JWT_SECRET": self.secret,
            "DEV_MODE": "0",
            "ALLOWED_ORIGINS": "*",
            "MAX_CONNECTIONS_PER_USER": "100000",
            "LOG_LEVEL": "WARNING",  # nginx runs with access_log off; per-connection INFO lines are not fan-out
            "DATA_DIR": str(self.workdir / self.name),
            "DRAIN_SECONDS": "0",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        if self.public_key is not None:
            del env["JWT_SECRET"]
            env["JWT_PUBLIC_KEY"] = self.public_key
        self._spawn([sys.executable, "-m", "service"], env, cwd=self.root)
        wait_for(self._ready, 60, f"{self.name} /readyz")
        if self.workers > 1:
            wait_for(lambda: len(self.server_pids()) == self.workers, 30, f"{self.name} workers")

    def _ready(self) -> bool:
        if not self._listening():
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def server_pids(self) -> list[int]:
        assert self.process is not None
        return children_of(self.process.pid) if self.workers > 1 else [self.process.pid]

    def publisher(self) -> Publisher:
        return MongoPublisher(self.mongo_uri, self.database)


class NaiveSystem(System):
    """`bench/naive_server.py`: one Tornado process, `write_message` per client."""

    name = "naive"

    def start(self) -> None:
        self._spawn([sys.executable, "-m", "bench.naive_server", "--port", str(self.port), f"--secret={self.secret}"])
        wait_for(self._listening, 30, "naive server")

    def publisher(self) -> Publisher:
        return HttpPublisher(self.port, "/publish", self.body, {})


NGINX_CONF = """\
load_module {module};
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
worker_rlimit_nofile {nofile};
events {{ worker_connections {connections}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  client_body_buffer_size 64k;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location = /sub {{
      nchan_subscriber websocket eventsource;
      nchan_channel_id bench;
    }}
    location = /pub {{
      nchan_publisher;
      nchan_channel_id bench;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 10m;
    }}
  }}
}}
"""


class NchanSystem(System):
    """nginx + nchan with `workers` worker processes; publishes by POST to its publisher location."""

    ws_path = "/sub"
    sse_path = "/sub"
    greeting = False  # no auth and nothing sent on connect: established at 101 / 200

    def __init__(self, workdir: Path, secret: str, *, workers: int) -> None:
        super().__init__(workdir, secret)
        self.name = f"nchan{workers}"
        self.workers = workers

    def start(self) -> None:
        if not Path(NCHAN_MODULE).exists():
            raise RuntimeError(f"{NCHAN_MODULE} missing: apt-get install -y nginx-light libnginx-mod-nchan")
        home = self.workdir / self.name
        home.mkdir(parents=True, exist_ok=True)
        conf = home / "nginx.conf"
        nofile = min(NOFILE_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        conf.write_text(
            NGINX_CONF.format(
                module=NCHAN_MODULE,
                workers=self.workers,
                dir=home,
                port=self.port,
                nofile=nofile,
                connections=nofile - 500,  # room for the listening socket, logs, the publisher
            )
        )
        os.chmod(home, 0o755)
        self._spawn(["nginx", "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")])
        wait_for(self._listening, 30, "nginx")
        wait_for(lambda: len(self.server_pids()) == self.workers, 30, "nginx workers")

    def server_pids(self) -> list[int]:
        assert self.process is not None
        return children_of(self.process.pid)

    def publisher(self) -> Publisher:
        return HttpPublisher(self.port, "/pub", self.body, {})

    def body(self, seq: int) -> bytes:
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json.dumps(
            {"id": str(seq), "ts": ts, **bench_fields(seq)}, ensure_ascii=False, separators=(",", ":")
        ).encode()
