"""A load process whose clients run in C (`bench/cload.c`), for `--client c`.

The Python clients of `bench.load` cost 4–5 µs of CPU per delivery, most of it Python per
read; at 25,000 connections and 10 events/s they took as much of the two cores as the server.
These clients send the same requests (built here, by `bench.load`), answer the same pings and
find the same marks, from one epoll loop in C, and answer the runner's commands (`connect`,
`reset`, `finish`, `exit`) with the same values, so every runner and table reads them as it reads
the Python ones. Long-polling clients and heartbeat tracking stay in Python (`--client python`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import load
from bench.stats import Delivery, Histogram

SOURCE = Path(__file__).with_name("cload.c")
BINARY = Path(__file__).with_name("build") / "cload"
KINDS = {"websocket": "w", "engineio": "e", "sse": "s"}


def build() -> Path:
    """The compiled clients, built with the system C compiler when missing or older than the
    source (written to a temporary name first: load processes may build at once)."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("--client c needs a C compiler (apt-get install -y gcc)")
    BINARY.parent.mkdir(exist_ok=True)
    partial = BINARY.with_name(f"cload.{os.getpid()}")
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(partial), str(SOURCE), "-lm"], check=True)
    partial.replace(BINARY)
    return BINARY


def setup_file(plan: load.Plan, directory: Path) -> Path:
    """The clients of `plan` for cload: one line of settings, then each client's kind, source
    address and request."""
    if plan.poll or plan.track_heartbeats:
        raise ValueError("the C clients have no long-polling or heartbeat tracking: use --client python")
    ws_kind = KINDS["engineio" if plan.ws_protocol == "engineio" else "websocket"]
    path = directory / "setup"
    with path.open("wb") as out:
        out.write(f"{plan.ws + plan.sse} {plan.port} {plan.concurrency} {plan.connect_timeout * 1000:.0f}".encode())
        out.write(f" {int(plan.greeting)}\n".encode())
        for kind, user, request in load.client_requests(plan):
            code = ws_kind if kind == "websocket" else KINDS[kind]
            out.write(f"{code} {load.source_address(user)} {len(request)}\n".encode() + request)
    return path


def delivery(part: dict[str, Any], worst: dict[int, int], disorder: list[tuple[int, int, int]]) -> Delivery:
    counts = {int(bucket): n for bucket, n in part["counts"].items()}
    return Delivery(
        clients=part["clients"],
        received=part["received"],
        lost=part["lost"],
        duplicated=part["duplicated"],
        out_of_order=part["out_of_order"],
        disconnected=part["disconnected"],
        latency=Histogram(counts=counts, total=part["total"], max_us=part["max_us"]),
        worst_by_event=worst,
        disorder=disorder,
        missing_examples={int(seq): n for seq, n in part["missing"].items()},
    )


class Clients:
    """One cload process: the clients of `plan`, driven through its stdin and stdout."""

    def __init__(self, plan: load.Plan, directory: Path) -> None:
        self.process = subprocess.Popen(
            [str(build()), str(setup_file(plan, directory))], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.failed = 0

    def ask(self, line: str) -> Any:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        answer = stdout.readline()
        if not answer:
            raise RuntimeError(f"cload exited (code {self.process.wait()}) on {line!r}")
        return json.loads(answer)

    def connect(self) -> dict[str, Any]:
        """As `bench.load.Load.connect`, plus `pid` (the cload process, whose CPU is the clients')."""
        answer: dict[str, Any] = self.ask("connect")
        self.failed = answer["failed"]
        return answer

    def reset(self, first_seq: int) -> bool:
        return bool(self.ask(f"reset {int(first_seq)}"))

    def finish(self, last_seq: int, wait_seconds: float) -> dict[str, Delivery]:
        """As `bench.load.Load.finish`."""
        answer = self.ask(f"finish {int(last_seq)} {float(wait_seconds)}")
        worst = {int(seq): us for seq, us in answer["worst"].items()}
        disorder = [(a, b, c) for a, b, c in answer["disorder"]]
        result = {kind: delivery(answer[kind], worst, disorder) for kind in ("websocket", "sse")}
        result["poll"] = Delivery()
        return result

    def close(self) -> None:
        stdin, stdout = self.process.stdin, self.process.stdout
        try:
            if stdin is not None:
                stdin.write(b"exit\n")
                stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if stdout is not None:
            stdout.close()


def serve(clients: Clients, pipe: Connection) -> None:
    while True:
        command, arg = pipe.recv()
        if command == "connect":
            pipe.send(clients.connect())
        elif command == "reset":
            pipe.send(clients.reset(arg))
        elif command == "finish":
            pipe.send(clients.finish(*arg))
        elif command == "extras":
            pipe.send({"beats": {}, "by_seq": {}, "sent_us": {}})
        else:
            break


def main(plan: load.Plan, pipe: Connection) -> None:
    """Entry point of a load process (multiprocessing target) with C clients."""
    with tempfile.TemporaryDirectory(prefix="cload-") as directory:
        clients = Clients(plan, Path(directory))
        try:
            serve(clients, pipe)
        finally:
            clients.close()
