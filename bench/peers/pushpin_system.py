"""Pushpin under test: its runner (condure for client sockets, pushpin-proxy, pushpin-handler,
zurl) with a config of its own in a temp dir, in front of `grip_origin.py`; publishes through
the handler's HTTP publish API."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jwt

from bench.systems import (
    OneShotHttpPublisher,
    Publisher,
    System,
    bench_fields,
    children_of,
    raise_open_files,
    stop_pid,
    stop_process,
    wait_for,
)
from service.storage.mongo.embedded import free_port

INTERNAL_CONF = Path("/usr/lib/pushpin/internal.conf")

# Every port is a free one and every IPC socket is in the temp dir, so a system-wide Pushpin (the
# Debian package starts one where an init system runs) and other runs never collide with this one.
# message_rate=0 and message_hwm=0 turn the handler's delivery rate limit and its queue bound off
# (defaults 2,500 deliveries/s and 25,000 queued): nginx+nchan and the service have neither.
PUSHPIN_CONF = """\
[global]
include={home}/internal.conf
rundir={home}/run
ipc_prefix=bench-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:{port}
logdir={home}/log
log_level=1
client_buffer_size=8192
client_maxconn={maxconn}

[proxy]
routesfile=routes
debug=false
auto_cross_origin=false
updates_check=off
sig_iss=pushpin
sig_key=bench-{port}

[handler]
push_in_spec=tcp://127.0.0.1:{pull_port}
push_in_sub_specs=tcp://127.0.0.1:{sub_port}
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={publish_port}
stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats
command_spec=tcp://127.0.0.1:{command_port}
message_rate=0
message_hwm=0
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
"""


class PushpinSystem(System):
    """One Pushpin instance (`pushpin1`) with the GRIP origin; WebSocket over HTTP and SSE."""

    ws_path = "/ws"
    sse_path = "/events"
    # With 100 handshakes in flight per load process, Pushpin answered 0.5-7 % of them `502`
    # ("Error while proxying to origin") although its origin answered every one; with 50, none
    # in 8 bursts of 1,000 and 10,000 (2026-12-08). Its issue "1% of traffic receives 502"
    # (fastly/pushpin) reports the same under load. Each failed handshake would end the scaling
    # run's Pushpin column at its first size, so it gets the in-flight count it takes.
    connect_concurrency = 50

    def __init__(self, workdir: Path, secret: str) -> None:
        super().__init__(workdir, secret)
        self.name = "pushpin1"
        self.publish_port = free_port()
        self.origin_port = free_port()
        self.origin: System | None = None
        self._services: list[tuple[int, str]] = []

    def start(self) -> None:
        if shutil.which("pushpin") is None or not INTERNAL_CONF.exists():
            raise RuntimeError("pushpin missing: run `make bench-deps` (apt-get install -y pushpin)")
        home = self.workdir / self.name
        for sub in ("run", "log"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        # Debian's internal.conf expects a system-wide zurl in /var/run/zurl: this one runs zurl itself.
        (home / "internal.conf").write_text(
            INTERNAL_CONF.read_text().replace("ipc:///var/run/zurl/zurl-", "ipc://{rundir}/{ipc_prefix}zurl-")
        )
        (home / "routes").write_text(f"* 127.0.0.1:{self.origin_port},over_http\n")
        (home / "pushpin.conf").write_text(
            PUSHPIN_CONF.format(
                home=home,
                port=self.port,
                maxconn=50_000,
                pull_port=free_port(),
                sub_port=free_port(),
                publish_port=self.publish_port,
                command_port=free_port(),
            )
        )
        self.origin = _Origin(self.workdir, self.secret, self.origin_port)
        self.origin.start()
        self._spawn(
            ["pushpin", "--config", str(home / "pushpin.conf"), "--merge-output"],
            cwd=home,
            preexec_fn=raise_open_files,
        )
        wait_for(self._listening, 30, "pushpin")
        # Until the handler has bound its accept socket, a held stream is answered 502 ("Accept
        # service unavailable"): ready is when a real SSE subscription gets its greeting.
        wait_for(self._holds_a_stream, 30, "pushpin holding a stream")
        self._services = [(pid, _command(pid)) for pid in children_of(self.process.pid)] if self.process else []

    def _holds_a_stream(self) -> bool:
        token = jwt.encode({"sub": "0", "exp": int(time.time()) + 60}, self.secret, algorithm="HS256")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(f"GET {self.sse_path}?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                answer = b""
                while b'"connected"' not in answer and len(answer) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                return answer.startswith(b"HTTP/1.1 200") and b'"connected"' in answer
        except OSError:
            return False

    def server_pids(self) -> list[int]:
        """The runner, its services (condure holds the client sockets) and the origin."""
        assert self.process is not None and self.origin is not None and self.origin.process is not None
        return [self.process.pid, *children_of(self.process.pid), self.origin.process.pid]

    def publisher(self) -> Publisher:
        return OneShotHttpPublisher(self.publish_port, "/publish/", self.body)

    def body(self, seq: int) -> bytes:
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        text = json.dumps({"id": str(seq), "ts": ts, **bench_fields(seq)}, ensure_ascii=False, separators=(",", ":"))
        formats = {
            "ws-message": {"content": text},
            "http-stream": {"content": f"id: {seq}\nevent: bench\ndata: {text}\n\n"},
        }
        return json.dumps({"items": [{"channel": "events", "formats": formats}]}, ensure_ascii=False).encode()

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
        for pid, command in self._services:  # services the runner did not stop
            stop_pid(pid, command)
        self._services = []
        if self.origin is not None:
            self.origin.stop()
            self.origin = None


def _command(pid: int) -> str:
    """The program a process runs (argv[0]), to recognise it when stopping it by pid later."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode() or "?"
    except OSError:
        return "?"


class _Origin(System):
    """`python -m bench.peers.grip_origin` on its own port."""

    def __init__(self, workdir: Path, secret: str, port: int) -> None:
        super().__init__(workdir, secret)
        self.name = "pushpin1-origin"
        self.port = port

    def start(self) -> None:
        command = [sys.executable, "-m", "bench.peers.grip_origin", "--port", str(self.port), f"--secret={self.secret}"]
        self._spawn(command)
        wait_for(self._listening, 30, "pushpin's origin")
