"""`python -m bench.abuse_http [--old DIR]`: the HTTP-edge attacks, as figures.

For this tree and, with `--old`, another checkout of the service (the code before the fix),
each started as `python -m service` on one shared in-memory SecantusDB, on loopback:

- `/metrics` bytes before and after `--methods` requests with random `--method-length`-char methods;
- log lines (at LOG_LEVEL=DEBUG) holding the token or ticket after a corpus of tricky URIs,
  and how many of those requests were answered 500;
- slowloris: `--sockets` connections that send half a request head: how many the server
  still holds after 1 s, and when the last one was closed (capped at `--hold` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.local import old_and_new
from harness.attacks import tricky_requests
from harness.processes import SECRET, ServiceProcess
from service.app.auth import issue_token
from service.core.config import Settings
from service.storage.mongo.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def start_service(root: Path, mongo_uri: str, workdir: Path) -> ServiceProcess:
    """The service from checkout `root`, at DEBUG (every access line), with a stand-in dashboard."""
    web = workdir / "web"
    web.mkdir(exist_ok=True)
    (web / "index.html").write_text("<!doctype html><html><head></head><body></body></html>")
    port = free_port()
    env = {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DB": f"abuse_{port}",
        "JWT_SECRET": SECRET,
        "DEV_MODE": "0",
        "WEB_DIR": str(web),
        "LOG_LEVEL": "DEBUG",
    }
    return ServiceProcess(workdir, env, port, code=root).start()


def metrics_bytes(service: ServiceProcess) -> int:
    with urllib.request.urlopen(f"{service.url}/metrics", timeout=60) as response:
        return len(response.read())


async def random_methods(port: int, count: int, length: int, connections: int = 20) -> None:
    rng = random.Random(12)
    methods = iter(["".join(rng.choices(string.ascii_uppercase, k=length)) for _ in range(count)])

    async def worker() -> None:
        for method in methods:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"{method} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            await reader.read()
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


async def send_corpus(service: ServiceProcess, token: str, ticket: str) -> list[int]:
    statuses = []
    for head in tricky_requests(service.port, token, ticket):
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(head.encode("latin-1"))
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            statuses.append(int(line.split()[1]) if line else 0)
        finally:
            writer.close()
    return statuses


async def slowloris(port: int, sockets: int, hold: float) -> dict[str, Any]:
    """Open `sockets` connections that send half a head; when does the server close them?"""
    opened = []
    for _ in range(sockets):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            break
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        opened.append((reader, writer))
    started = time.monotonic()
    closed_at: list[float] = []

    async def watch(reader: asyncio.StreamReader) -> None:
        try:
            await asyncio.wait_for(reader.read(), hold)
        except TimeoutError:
            return  # still held
        except ConnectionError:
            pass  # closed with our half head unread: a reset rather than a FIN
        closed_at.append(time.monotonic() - started)

    watchers = asyncio.gather(*(watch(r) for r, _ in opened))
    await asyncio.sleep(1.0)
    held_after_1s = len(opened) - len(closed_at)
    await watchers
    for _, writer in opened:
        writer.close()
    return {
        "opened": len(opened),
        "held_after_1s": held_after_1s,
        "held_at_end": len(opened) - len(closed_at),
        "last_closed_s": round(max(closed_at), 1) if len(closed_at) == len(opened) else f">{hold:g}",
    }


def measure(root: Path, mongo_uri: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        service = start_service(root, mongo_uri, Path(tmp))
        try:
            token = issue_token(Settings(jwt_secret=SECRET), sub=7, name="bench", roles=("user",))
            request = urllib.request.Request(
                f"{service.url}/api/realtime/ticket",
                method="POST",
                data=b"",
                headers={"Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                ticket = json.loads(response.read())["ticket"]
            before = metrics_bytes(service)
            asyncio.run(random_methods(service.port, args.methods, args.method_length))
            after = metrics_bytes(service)
            statuses = asyncio.run(send_corpus(service, token, ticket))
            time.sleep(0.5)  # the last access lines
            lines = service.log_path.read_text(errors="replace").splitlines()
            leaks = sum(1 for line in lines if token in line or ticket in line)
            loris = asyncio.run(slowloris(service.port, args.sockets, args.hold))
        finally:
            service.stop()
    return {
        "metrics_bytes_before": before,
        "metrics_bytes_after": after,
        "corpus_requests": len(statuses),
        "corpus_500s": statuses.count(500),
        "log_lines_with_token_or_ticket": leaks,
        "slowloris": loris,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse_http", description=__doc__)
    parser.add_argument("--old", type=Path, help="another checkout (e.g. the code before the fix) to measure too")
    parser.add_argument("--methods", type=int, default=5000)
    parser.add_argument("--method-length", type=int, default=8000)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=20.0, help="longest wait for the slowloris sockets to close")
    args = parser.parse_args(argv)
    old_and_new(lambda code, uri: measure(code, uri, args), args.old)


if __name__ == "__main__":
    main()
