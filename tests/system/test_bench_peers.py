"""The benchmark's peers (Socket.IO one process and two cluster workers, Pushpin, nginx+nchan, the
naive Tornado server): each starts, authenticates 20 clients of the bench's own load clients
(Python, and the same in C), delivers one published event to every one of them, refuses a token
signed with another key, and stops every process it started.

Needs `make bench-deps` (Pushpin and nchan from Debian, `npm ci` in bench/peers/socketio, a C
compiler); run by `make test-bench`, not by `make test`. A missing dependency fails with that hint.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import cload, load
from bench.peers.pushpin_system import PushpinSystem
from bench.peers.socketio_system import SocketIoSystem
from bench.stats import Delivery
from bench.systems import NaiveSystem, NchanSystem, System

# A leading '-' as `token_urlsafe` gives one time in 64: a server taking it as `--secret VALUE`
# read it as an option, and the peer did not start (CI, 2026-12-07).
SECRET = "-" + secrets.token_urlsafe(32)
PEERS: dict[str, Callable[[Path], System]] = {
    "socketio1": lambda workdir: SocketIoSystem(workdir, SECRET, workers=1),
    "socketio2": lambda workdir: SocketIoSystem(workdir, SECRET, workers=2),
    "pushpin1": lambda workdir: PushpinSystem(workdir, SECRET),
    "nchan1": lambda workdir: NchanSystem(workdir, SECRET, workers=1),
    "naive": lambda workdir: NaiveSystem(workdir, SECRET),
}


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def started(name: str, tmp_path: Path) -> Iterator[System]:
    system = PEERS[name](tmp_path)
    pids: list[int] = []
    try:
        system.start()
        pids = system.server_pids()
        yield system
    finally:
        system.stop()
    assert not [pid for pid in pids if running(pid)], f"{system.name} left processes running"


@pytest.fixture(params=sorted(PEERS))
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    yield from started(request.param, tmp_path)


@pytest.fixture(params=sorted(set(PEERS) - {"nchan1"}))  # nchan authenticates nothing
def authenticating_peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    yield from started(request.param, tmp_path)


def plan(system: System, ws: int, sse: int, secret: str = SECRET) -> load.Plan:
    return load.Plan(
        port=system.port,
        ws_path=system.ws_path,
        sse_path=system.sse_path or "",
        ws_protocol=system.ws_protocol,
        ws=ws,
        sse=sse,
        first_user=1,
        jwt_secret=secret,
        greeting=system.greeting,
        connect_timeout=20.0,
    )


def publish_one(system: System) -> None:
    publisher = system.publisher()
    try:
        publisher.send(1)
    finally:
        publisher.close()


async def deliver_one(system: System, clients: load.Load) -> dict[str, Delivery]:
    """Connect the clients, publish event 1, wait (bounded) until each has it."""
    try:
        await asyncio.wait_for(clients.connect(), 60)
        await asyncio.get_running_loop().run_in_executor(None, publish_one, system)
        return await asyncio.wait_for(clients.finish(1, 30.0), 60)
    finally:
        await clients.close()


def deliver(
    system: System, client: str, ws: int, sse: int, tmp_path: Path, secret: str = SECRET
) -> tuple[int, dict[str, Delivery]]:
    """The clients of `plan` in Python or C: connected, then event 1 published and awaited;
    (clients that failed to connect, what each transport's clients got)."""
    the_plan = plan(system, ws, sse, secret)
    if client == "python":
        clients = load.Load(the_plan)
        result = asyncio.run(deliver_one(system, clients))
        return clients.failed, result
    native = cload.Clients(the_plan, tmp_path)
    try:
        native.connect()
        publish_one(system)
        return native.failed, native.finish(1, 30.0)
    finally:
        native.close()


@pytest.mark.parametrize("client", ["python", "c"])
def test_peer_delivers_an_event_to_all_its_clients(peer: System, client: str, tmp_path: Path) -> None:
    """20 clients (10 SSE where the peer has SSE) connect, and each gets the one event, once."""
    sse = 10 if peer.sse_path else 0
    failed, result = deliver(peer, client, 20 - sse, sse, tmp_path)
    assert failed == 0
    got = {kind: (d.clients, d.received, d.lost, d.duplicated) for kind, d in result.items() if d.clients}
    expected = {"websocket": (20 - sse, 20 - sse, 0, 0)} | ({"sse": (sse, sse, 0, 0)} if sse else {})
    assert got == expected


@pytest.mark.parametrize("client", ["python", "c"])
def test_peer_refuses_a_token_signed_with_another_key(authenticating_peer: System, client: str, tmp_path: Path) -> None:
    """A WebSocket client with a forged token is never counted as connected."""
    failed, result = deliver(authenticating_peer, client, 1, 0, tmp_path, secret=secrets.token_urlsafe(32))
    assert (failed, result["websocket"].clients) == (1, 0)
