"""The C load clients (`bench/cload.c`) against a scripted server on a real socket: frames and SSE
blocks cut at every byte, extended lengths, pings, duplicates, an event out of order, a refused
handshake, a server that closes. What they count must be what `bench/load.py`'s clients count.

Needs a C compiler (`make bench-deps`); run by `make test-bench`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import cload, load
from bench.__main__ import parse_args

CONNECTED = json.dumps({"type": "connected"}).encode()
PONG_SEEN: list[bytes] = []


def event(seq: int, padding: int = 0) -> bytes:
    body = {"type": "bench", "id": str(seq), "data": {"b": f"{seq}:{time.time_ns() // 1000}", "pad": "x" * padding}}
    return json.dumps(body).encode()


def frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload


# seq 2 twice, 4 before 3: 4 received, 1 duplicated, 1 out of order; 3 has 300 bytes (a 126 length)
ORDER = [(1, 0), (2, 0), (2, 0), (4, 0), (3, 300), (5, 70_000)]  # 5: a 127 length


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Every byte its own write (every 997 bytes for a long frame): the client's reads end
    anywhere in a frame or a mark."""
    step = 1 if len(data) < 1000 else 997
    for i in range(0, len(data), step):
        writer.write(data[i : i + step])
        await writer.drain()
        if i % 64 == 0:
            await asyncio.sleep(0)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ", 2)[1]
    try:
        if b"refuse" in path:
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        elif b"hangup" in path:
            pass  # closes without an answer
        elif path.startswith(b"/ws"):
            await trickle(writer, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            await trickle(writer, frame(0x1, CONNECTED) + frame(0x9, b"beat"))
            PONG_SEEN.append(await reader.readexactly(10))
            for seq, padding in ORDER:
                await trickle(writer, frame(0x1, event(seq, padding)))
            await reader.read()  # until the client closes
        else:
            await trickle(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            await trickle(writer, b"data: " + CONNECTED + b"\n\n: heartbeat\n\n")
            for seq, padding in ORDER:
                await trickle(writer, b"id: " + str(seq).encode() + b"\ndata: " + event(seq, padding) + b"\n\n")
            await reader.read()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@pytest.fixture
def server() -> Iterator[int]:
    """The scripted server in a thread of its own; every connection handler ends with it."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    handlers: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handle(reader, writer)
        finally:
            handlers.discard(task)

    async def serve() -> None:
        listener = await asyncio.start_server(accept, "127.0.0.1", 0)
        port.append(listener.sockets[0].getsockname()[1])
        started.set()
        try:
            async with listener:
                await listener.serve_forever()
        finally:
            for task in list(handlers):
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

    task = loop.create_task(serve())

    def run() -> None:
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        assert not thread.is_alive()


def plan(port: int, ws: int, sse: int, path: str = "") -> load.Plan:
    return load.Plan(
        port=port,
        ws_path=f"/ws{path}",
        sse_path=f"/events{path}",
        ws=ws,
        sse=sse,
        first_user=1,
        jwt_secret="s" * 32,
        greeting=True,
        connect_timeout=10.0,
        client="c",
    )


def test_counts_survive_reads_cut_anywhere(server: int, tmp_path: Path) -> None:
    PONG_SEEN.clear()
    clients = cload.Clients(plan(server, 2, 2), tmp_path)
    try:
        connected = clients.connect()
        assert (connected["opened"], connected["failed"]) == (4, 0)
        assert connected["by_kind"]["websocket"][0] == 2 and connected["by_kind"]["sse"][0] == 2
        result = clients.finish(5, 20.0)
    finally:
        clients.close()
    for kind in ("websocket", "sse"):
        d = result[kind]
        counts = (d.clients, d.received, d.lost, d.duplicated, d.out_of_order, d.disconnected)
        assert counts == (2, 10, 0, 2, 2, 0), kind
        assert d.latency.total == 10 and 0 < d.latency.percentile(0.99) < 10e6
    assert sorted(result["websocket"].worst_by_event) == [1, 2, 3, 4, 5]
    assert result["sse"].disorder[0][:2] == (3, 4)  # 3 arrived after 4
    # each WebSocket client answered the ping with a masked pong carrying its payload
    assert PONG_SEEN == [b"\x8a\x84\x00\x00\x00\x00beat"] * 2


def test_reset_counts_afresh_and_a_missing_event_is_lost(server: int, tmp_path: Path) -> None:
    clients = cload.Clients(plan(server, 1, 1), tmp_path)
    try:
        clients.connect()
        clients.finish(5, 20.0)
        assert clients.reset(6)
        result = clients.finish(6, 0.5)  # event 6 never comes
    finally:
        clients.close()
    for kind in ("websocket", "sse"):
        d = result[kind]
        assert (d.received, d.lost, d.latency.total) == (0, 1, 0)
        assert d.missing_examples == {6: 1}


@pytest.mark.parametrize(
    ("path", "reason", "status"),
    [("?refuse=1", "status", "HTTP/1.1 401 Unauthorized"), ("?hangup=1", "closed", "")],
)
def test_a_refused_or_dropped_handshake_is_a_failure_with_its_reason(
    server: int, tmp_path: Path, path: str, reason: str, status: str
) -> None:
    clients = cload.Clients(plan(server, 2, 1, path), tmp_path)
    try:
        connected = clients.connect()
    finally:
        clients.close()
    assert (connected["opened"], connected["failed"]) == (0, 3)
    assert connected["failures"] == {"refused": 0, "status": 0, "closed": 0, "timeout": 0} | {reason: 3}
    assert connected["first_status"] == status


def test_nothing_listening_is_a_failure(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connects are refused
        clients = cload.Clients(plan(port, 1, 1), tmp_path)
        try:
            connected = clients.connect()
        finally:
            clients.close()
    assert (connected["opened"], connected["failed"]) == (0, 2)
    assert connected["failures"]["refused"] == 2


def test_long_polling_clients_are_refused_up_front_with_c_clients(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--client", "c", "--poll", "10"])
    assert "--client c has no long-polling clients" in capsys.readouterr().err
    assert parse_args(["--client", "c"]).client == "c"
