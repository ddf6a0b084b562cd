"""Socket.IO 4.8 under test: `socketio/server.js` on Node, one process or a `cluster` of
workers joined by @socket.io/cluster-adapter; publishes by `POST /publish`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.systems import HttpPublisher, Publisher, System, children_of, raise_open_files, stop_pid, wait_for

HERE = Path(__file__).resolve().parent / "socketio"


def missing_dependencies() -> str | None:
    """Why the server cannot start here, or None."""
    if shutil.which("node") is None:
        return "node not found: install Node.js 20 (make bench-deps needs npm)"
    if not (HERE / "node_modules" / "socket.io").is_dir():
        return f"{HERE}/node_modules missing: run `make bench-deps` (npm ci in bench/peers/socketio)"
    return None


class SocketIoSystem(System):
    """`node server.js --workers n`: WebSocket only, Engine.IO v4 framing, no SSE."""

    ws_path = "/socket.io/?EIO=4&transport=websocket"
    sse_path = None  # Socket.IO has no SSE transport: its SSE share of clients is WebSocket
    ws_protocol = "engineio"

    def __init__(self, workdir: Path, secret: str, *, workers: int) -> None:
        super().__init__(workdir, secret)
        self.name = f"socketio{workers}"
        self.workers = workers
        self._pids: list[int] = []

    def start(self) -> None:
        problem = missing_dependencies()
        if problem:
            raise RuntimeError(problem)
        env = {**os.environ, "BENCH_JWT_SECRET": self.secret, "NODE_ENV": "production"}
        command = ["node", str(HERE / "server.js"), "--port", str(self.port), "--workers", str(self.workers)]
        self._spawn(command, env, cwd=HERE, preexec_fn=raise_open_files)
        if self.workers > 1:
            wait_for(lambda: len(children_of(self._pid())) == self.workers, 30, f"{self.name} workers")
        wait_for(self._listening, 30, self.name)
        self._pids = self.server_pids()

    def _pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def server_pids(self) -> list[int]:
        """The primary (it accepts and hands sockets over, and relays the adapter's messages) and
        its workers."""
        pid = self._pid()
        return [pid, *children_of(pid)] if self.workers > 1 else [pid]

    def publisher(self) -> Publisher:
        return HttpPublisher(self.port, "/publish", self.body, {})

    def stop(self) -> None:
        super().stop()
        for pid in self._pids:  # workers the primary did not take down with it
            stop_pid(pid, "server.js")
        self._pids = []
