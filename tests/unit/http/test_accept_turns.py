"""`Acceptor` (handlers/accept.py) with real sockets: one readiness callback accepts at most
ACCEPTS_PER_TURN queued connections, so a connect storm leaves the event loop a turn for
everything else (the change stream's reads above all) between small batches of accepts."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from handlers.accept import ACCEPTS_PER_TURN, Acceptor


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def test_one_turn_accepts_at_most_accepts_per_turn(listener: socket.socket) -> None:
    accepted: list[socket.socket] = []
    acceptor = Acceptor(lambda conn, _: accepted.append(conn), on_error=lambda _: None, on_shed=lambda _: None)
    waiting = 2 * ACCEPTS_PER_TURN + 3
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(waiting)]
    try:
        turns = []
        while len(accepted) < waiting:
            before = len(accepted)
            acceptor._ready(listener, 0)  # what the loop calls when the socket is readable
            turns.append(len(accepted) - before)
            assert len(turns) <= 10 * waiting, "turns that accept nothing"
        # Never more than a batch in one turn; the queue was deeper than a batch, so the bound
        # was reached; and every connection was accepted in the end.
        assert max(turns) == ACCEPTS_PER_TURN and sum(turns) == waiting
        acceptor._ready(listener, 0)
        assert len(accepted) == waiting  # an empty queue ends the turn (EAGAIN), nothing else
    finally:
        for sock in clients + accepted:
            sock.close()
        acceptor.close()
