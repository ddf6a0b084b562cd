"""`Acceptor` (handlers/accept.py) with real sockets: a readiness callback accepts one queued
connection, plus what ACCEPT_RATE earned since the previous callback (at most ACCEPT_BURST),
so a connect storm leaves the event loop a turn for everything else (the change stream's reads
above all) between small batches of accepts, and a loop slowed by fan-out still accepts
ACCEPT_RATE connections a second."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from handlers.accept import ACCEPT_BURST, ACCEPT_RATE, Acceptor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


def test_a_turn_accepts_one_plus_what_the_rate_earned(listener: socket.socket) -> None:
    clock = Clock()
    accepted: list[socket.socket] = []
    acceptor = Acceptor(
        lambda conn, _: accepted.append(conn), on_error=lambda _: None, on_shed=lambda _: None, clock=clock
    )
    waiting = 3 * ACCEPT_BURST + 20
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(waiting)]
    try:

        def turn(after: float) -> int:
            """What one readiness callback accepts `after` seconds after the previous one."""
            clock.now += after
            before = len(accepted)
            acceptor._ready(listener, 0)  # what the loop calls when the socket is readable
            return len(accepted) - before

        # A fresh acceptor has a full bucket; turns in quick succession then take one each.
        assert turn(0.0) == ACCEPT_BURST
        assert [turn(0.0) for _ in range(5)] == [1] * 5
        # A slow turn (a fan-out held the loop) takes what the rate earned meanwhile...
        earned = 6
        assert turn((earned + 0.5) / ACCEPT_RATE) == earned  # whole ones: half a token stays
        # ...and never more than a burst, however long the loop was away.
        assert turn(3600.0) == ACCEPT_BURST
        assert turn(0.0) == 1
        # Every connection is accepted in the end; an empty queue ends the turn (EAGAIN).
        for _ in range(10 * waiting):
            if len(accepted) == waiting:
                break
            turn(0.001)
        assert len(accepted) == waiting
        assert turn(3600.0) == 0
    finally:
        for sock in clients + accepted:
            sock.close()
        acceptor.close()
