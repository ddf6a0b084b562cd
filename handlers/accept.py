"""Accepting connections on the listening sockets, without a spin when descriptors run out.

Tornado's `netutil.add_accept_handler` lets an `accept()` failure such as EMFILE escape its
read handler: the listening socket stays readable, so the loop calls it again at once,
forever, logging a traceback each time (issue 23: a core at 100 % and 168 MB of log in 31 s).
Here a failure is counted, logged at most once per LOG_INTERVAL_SECONDS, and then:

- out of descriptors (EMFILE/ENFILE): the spare descriptor kept for this is closed, the
  waiting connection accepted, answered a minimal 503 and closed, and the spare reopened,
  so the listen queue drains instead of filling with connections that cannot be served;
- otherwise, or with no spare to give: accepting pauses (PAUSE_SECONDS, doubling up to
  MAX_PAUSE_SECONDS) and resumes by itself.

Connections are accepted normally again as soon as a descriptor is free.

How many are accepted per loop turn is bounded too (ACCEPT_RATE, ACCEPT_BURST): a connect
storm must neither hold back the events of the clients already connected nor wait for ever
behind their fan-out.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

log = logging.getLogger(__name__)

# Failures that mean "not now" (resources), by the `reason` label they count under.
# Any other failure counts as `other` and pauses too (Linux also reports a pending
# connection's network error from accept, which man accept(2) says to treat as EAGAIN).
# (metrics/registry.py's ACCEPT_ERROR_REASONS lists the same labels.)
RESOURCE_ERRORS = {errno.EMFILE: "emfile", errno.ENFILE: "enfile", errno.ENOBUFS: "enobufs", errno.ENOMEM: "enomem"}
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
# How many connections one readiness callback accepts: one, as nginx does by default
# (`multi_accept off`), plus a floor rate. The listening socket stays readable, so the next
# loop turn accepts again, after the callbacks already waiting: the change stream's reads and
# the handshakes under way. Tornado's figure, 128 a turn, let a connect storm put hundreds of
# handshakes ahead of every event: while 20,000 clients connected to two workers, events to
# the clients already there waited 2.8-5.3 s at p99, and 43-83 ms with one a turn. But one a
# turn ties the connect rate to the loop's turns, and a loop busy with fan-out turns slowly:
# with 5,000 clients taking 10 events/s, 20,000 connects ran at 166-198/s (100-120 s) against
# 919-1,141/s. So a turn may also take what ACCEPT_RATE has earned since the last one (a token
# bucket, at most ACCEPT_BURST): a quick loop still accepts one a turn, a slow one keeps
# ACCEPT_RATE a second, and the handshakes between two event reads stay few: that storm then ran
# at 661-706/s with the watchers' p99 as with one a turn (bench/README.md, "Connect storms").
ACCEPT_RATE = 500.0  # connections per second per process that a busy loop still accepts
ACCEPT_BURST = 16  # at most this many in one turn
PAUSE_SECONDS = 0.05
MAX_PAUSE_SECONDS = 1.0
LOG_INTERVAL_SECONDS = 10.0
# Written to a shed connection before it is closed; a client that has already sent its
# request may see a reset instead (its unread bytes make the close an RST).
SHED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\nout of connections, retry.\r\n"
)

OnConnection = Callable[[socket.socket, Any], None]
OnEvent = Callable[[str], None]


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Acceptor:
    """Accepts on listening sockets and hands each connection to `on_connection`.

    Args:
        on_connection: called with each accepted socket and its peer address.
        on_error: called with the `reason` of each failed accept (`emfile`, `enfile`, ...).
        on_shed: called with `no_descriptor` for each connection answered 503 and closed.
    """

    def __init__(
        self,
        on_connection: OnConnection,
        *,
        on_error: OnEvent,
        on_shed: OnEvent,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_connection = on_connection
        self.on_error = on_error
        self.on_shed = on_shed
        self.sockets: list[socket.socket] = []
        self.spare = _open_spare()
        self.pause = PAUSE_SECONDS
        self.paused = False
        self.closed = False
        self.unreported: Counter[str] = Counter()  # failures (and `shed`) since the last log line
        self.reported_at: float | None = None
        self.report_due = False
        self.last_other: OSError | None = None
        self.clock = clock
        self.tokens = float(ACCEPT_BURST)  # accepts earned beyond one a turn (ACCEPT_RATE)
        self.earned_at = clock()

    def add(self, sock: socket.socket) -> None:
        """Start accepting on a listening socket (non-blocking)."""
        sock.setblocking(False)
        self.sockets.append(sock)
        if not self.paused:
            IOLoop.current().add_handler(sock, self._ready, IOLoop.READ)

    def close(self) -> None:
        """Stop accepting and close the listening sockets and the spare descriptor."""
        if self.closed:
            return
        self.closed = True
        for sock in self.sockets:
            if not self.paused:
                IOLoop.current().remove_handler(sock)
            sock.close()
        if self.spare is not None:
            os.close(self.spare)
            self.spare = None

    def turn_allowance(self) -> int:
        """Accepts this turn may make: one, or the whole tokens earned since the last turn."""
        now = self.clock()
        self.tokens = min(float(ACCEPT_BURST), self.tokens + (now - self.earned_at) * ACCEPT_RATE)
        self.earned_at = now
        return max(1, int(self.tokens))

    def _ready(self, sock: socket.socket, events: int) -> None:
        for _ in range(self.turn_allowance()):
            if self.closed or self.paused:
                return
            try:
                connection, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # gone while still in the queue
            except OSError as exc:
                if not self._failed(sock, exc):
                    return
                continue
            self.tokens = max(0.0, self.tokens - 1.0)
            self.pause = PAUSE_SECONDS
            self.on_connection(connection, address)

    def _failed(self, sock: socket.socket, exc: OSError) -> bool:
        """Count and report a failed accept; shed or pause. True if accepting may go on."""
        shed = None
        if exc.errno in OUT_OF_DESCRIPTORS:
            shed = self._shed(sock)
            if shed is None:
                return False  # nobody was waiting: Linux says EMFILE before it looks at the queue
        reason = RESOURCE_ERRORS.get(exc.errno or 0, "other")
        self.on_error(reason)
        self.unreported[reason] += 1
        if reason == "other":
            self.last_other = exc
        if not shed:
            self._pause()
        self._report()
        return bool(shed)

    def _shed(self, sock: socket.socket) -> bool | None:
        """Spend the spare descriptor on one waiting connection: 503 and close.

        Returns:
            True when one was shed and the spare is back; None when none was waiting; False
            when there was no spare to spend (or it could not be taken back).
        """
        if self.spare is None:
            self.spare = _open_spare()  # a descriptor may have freed since it was spent
            return False
        os.close(self.spare)
        self.spare = None
        try:
            connection, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            self.spare = _open_spare()
            return None
        except OSError:
            connection = None  # taken or gone meanwhile
        if connection is not None:
            try:
                connection.send(SHED_RESPONSE)
            except OSError:
                pass  # the client is gone already
            connection.close()
            self.on_shed("no_descriptor")
            self.unreported["shed"] += 1
        self.spare = _open_spare()
        return self.spare is not None

    def _pause(self) -> None:
        if self.paused or self.closed:
            return
        self.paused = True
        for sock in self.sockets:
            IOLoop.current().remove_handler(sock)
        IOLoop.current().call_later(self.pause, self._resume)
        self.pause = min(self.pause * 2, MAX_PAUSE_SECONDS)

    def _resume(self) -> None:
        if self.closed:
            return
        self.paused = False
        for sock in self.sockets:
            IOLoop.current().add_handler(sock, self._ready, IOLoop.READ)

    def _report(self) -> None:
        """One WARNING line now, or at the end of the current interval, with the counts."""
        wait = 0.0 if self.reported_at is None else self.reported_at + LOG_INTERVAL_SECONDS - time.monotonic()
        if wait <= 0:
            self._report_now()
        elif not self.report_due:
            self.report_due = True
            IOLoop.current().call_later(wait, self._report_now)

    def _report_now(self) -> None:
        self.report_due = False
        shed = self.unreported.pop("shed", 0)
        if not self.unreported:
            return
        failures = sum(self.unreported.values())
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.unreported.items()))
        other = f"; last other error: {self.last_other}" if self.unreported["other"] else ""
        since = "" if self.reported_at is None else f" in the last {time.monotonic() - self.reported_at:.0f}s"
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning(
            "accept() failed %d time(s)%s (%s%s; open-file limit %d); %d waiting connection(s) answered 503; "
            "serving resumes as soon as a descriptor frees; next report in %.0fs at the earliest",
            failures,
            since,
            reasons,
            other,
            soft,
            shed,
            LOG_INTERVAL_SECONDS,
        )
        self.unreported.clear()
        self.last_other = None
        self.reported_at = time.monotonic()
