"""Abuse figures for the stream endpoints: server memory under a ping flood from a client that
never reads, and how many of N concurrent connects for one user the per-user limit lets in.

Starts SecantusDB and `python -m service` from `--code` (default: this checkout; point it at
another checkout to measure older code with the same client), all on loopback, stopped by pid.

    python -m bench.abuse                       # ping flood 5 s, SSE and WebSocket races of 200
    python -m bench.abuse --code /work/main --ping-flood 5 --race 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from bench.systems import rss_bytes
from harness.processes import SECRET, ServiceProcess
from service.app.auth import issue_token
from service.core.config import Settings
from service.storage.mongo.embedded import EmbeddedMongo

ROOT = Path(__file__).resolve().parent.parent
PING = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125  # masked (all-zero key) ping, 125 bytes
MB = 1024 * 1024


def token(sub: str = "1") -> str:
    return issue_token(Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",)), sub=sub, name="bench")


def upgrade_request(port: int, query: str) -> bytes:
    return (
        f"GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def start_service(code: Path, mongo_uri: str, data_dir: Path) -> ServiceProcess:
    """`python -m service` run from checkout `code` (its own code), on a free port."""
    env = {"MONGODB_URI": mongo_uri, "JWT_SECRET": SECRET, "DEV_MODE": "0", "LOG_LEVEL": "WARNING"}
    return ServiceProcess(data_dir, env, code=code).start()


def rss_mb(service: ServiceProcess) -> float:
    return rss_bytes([service.pid]) / MB


def healthz_ms(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10):
        pass
    return (time.perf_counter() - started) * 1000


def read_close(sock: socket.socket, seconds: float) -> str:
    """Read what the server sent after the flood; the close frame's code, or how it ended."""
    sock.settimeout(seconds)
    buffer = b""
    pongs = 0
    try:
        while True:
            while len(buffer) >= 2:
                length = buffer[1] & 0x7F
                start = 2 + (2 if length == 126 else 8 if length == 127 else 0)
                if length >= 126:
                    if len(buffer) < start:
                        break
                    length = int.from_bytes(buffer[2:start], "big")
                if len(buffer) < start + length:
                    break
                opcode, payload, buffer = buffer[0] & 0x0F, buffer[start : start + length], buffer[start + length :]
                if opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big")
                    return f"closed {code} {payload[2:].decode(errors='replace')!r} after {pongs} pongs"
                pongs += opcode == 0xA
            data = sock.recv(1 << 20)
            if not data:
                return f"TCP closed without a close frame after {pongs} pongs"
            buffer += data
    except TimeoutError:
        return f"still open after {pongs} pongs (no close within {seconds:.0f} s of reading)"
    except ConnectionResetError:
        return f"reset after {pongs} pongs"


def ping_flood(service: ServiceProcess, seconds: float) -> None:
    """One signed-in WebSocket client sends ping frames for `seconds` and reads nothing."""
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.sendall(upgrade_request(service.port, f"token={token('flood')}"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    time.sleep(0.3)  # let `connected` arrive; it stays unread with everything after it
    before = rss_mb(service)
    peak, health, sent = before, [0.0], 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(service))
            try:
                health[0] = max(health[0], healthz_ms(service.port))
            except OSError:
                pass
            stop.wait(0.25)

    sampler = threading.Thread(target=sample)
    sampler.start()
    batch = PING * 1000
    sock.settimeout(2)
    deadline = time.monotonic() + seconds
    outcome = "the flood lasted its full time"
    try:
        while time.monotonic() < deadline:
            sock.sendall(batch)
            sent += 1000
    except TimeoutError:
        outcome = "the server stopped reading"
    except OSError as exc:
        outcome = f"the server closed the connection ({exc.__class__.__name__})"
    elapsed = seconds - max(0.0, deadline - time.monotonic())
    stop.set()
    sampler.join()
    after = rss_mb(service)
    ending = read_close(sock, 5)
    sock.close()
    print(
        f"ping flood: {sent:,} pings (125 B) in {elapsed:.1f} s from a client that reads nothing; {outcome}\n"
        f"  server RSS {before:.0f} MB before, peak {peak:.0f} MB, {after:.0f} MB at the end; "
        f"worst /healthz {health[0]:.0f} ms\n"
        f"  then, reading: {ending}"
    )


async def connect_one(port: int, request: bytes, start: asyncio.Event, source: str) -> tuple[str, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    await start.wait()
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = head.split(b" ", 2)[1].decode()
    if status != "101":
        return status, writer
    first = await asyncio.wait_for(reader.readexactly(2), 30)
    length = first[1] & 0x7F
    if length >= 126:
        length = int.from_bytes(await reader.readexactly(2 if length == 126 else 8), "big")
    payload = await asyncio.wait_for(reader.readexactly(length), 30)
    if first[0] & 0x0F == 0x8:
        return f"close {int.from_bytes(payload[:2], 'big')}", writer
    return f"101 {json.loads(payload)['type']}", writer


async def race(port: int, transport: str, count: int) -> None:
    """`count` connects for one user, all sent at once; then, after they close, one more."""
    query = f"token={token('racer')}"
    request = (
        upgrade_request(port, query)
        if transport == "websocket"
        else f"GET /events?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    start = asyncio.Event()
    # From eight source addresses: the service caps connections per address that have not sent a request.
    tasks = [asyncio.create_task(connect_one(port, request, start, f"127.0.0.{2 + i % 8}")) for i in range(count)]
    await asyncio.sleep(0.5)  # every socket connected, no request sent yet
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes = Counter(r[0] if isinstance(r, tuple) else type(r).__name__ for r in results)
    for r in results:
        if isinstance(r, tuple):
            r[1].close()
    await asyncio.sleep(1.0)  # let the server see them go
    again, writer = await connect_one(port, request, _set(asyncio.Event()), "127.0.0.2")
    writer.close()
    accepted = outcomes.get("200", 0) + outcomes.get("101 connected", 0)
    print(f"{transport} race: {accepted} of {count} concurrent connects for one user accepted {dict(outcomes)}; "
          f"after they closed, one more: {again}")  # fmt: skip


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose service to run")
    parser.add_argument("--ping-flood", type=float, default=5.0, metavar="SECONDS", help="0 skips it")
    parser.add_argument("--race", type=int, default=200, metavar="N", help="concurrent connects; 0 skips")
    args = parser.parse_args()
    mongo = EmbeddedMongo(":memory:")
    uri = mongo.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            service = start_service(args.code.resolve(), uri, Path(tmp))
            try:
                print(f"service from {args.code.resolve()} (pid {service.pid}, port {service.port})")
                if args.race:
                    asyncio.run(race(service.port, "sse", args.race))
                    asyncio.run(race(service.port, "websocket", args.race))
                if args.ping_flood:
                    ping_flood(service, args.ping_flood)
            finally:
                service.stop()
    finally:
        mongo.stop()


if __name__ == "__main__":
    main()
