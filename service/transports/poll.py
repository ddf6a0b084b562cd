"""Long-polling: one request gathers the events after a position, waits for the first live
batch or the timeout, and is answered as one complete JSON body.

Nothing survives a poll: the next one resumes from the position it carries, through the bus
(memory history, else one page read from MongoDB, so catching up N events costs N/1000 polls
of one page each), so any replica can answer it. While
it waits, a poll is a `Connection` in the hub like a stream, with a `PollTransport` that
keeps each event's JSON (encoded once per event, shared by every poller) and wakes the
request when there is something to answer with.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import ClassVar

from service.app.context import AppContext
from service.core.errors import CloseCode
from service.core.events import Payload
from service.core.identity import Principal
from service.core.schema import TransportName
from service.fanout.batch import Selection
from service.fanout.connection import Connection
from service.fanout.pace import Pacer
from service.protocol.wire import Encoded, dumps
from service.transports.session import replay_and_greet

# Tokens whose verification a process remembers for its pollers (least recently used dropped).
VERIFIED_TOKENS = 10_000

# Polls per user per process: past a burst, a user's polls wait their turn (a long-poll answered
# at once by a busy stream is a new poll at once, so the rate is above any event rate worth polling).
POLLS_PER_SECOND = 20
POLL_BURST = 40
POLL_WAIT_SECONDS = 10.0


def poll_pacer() -> Pacer:
    """The pacing of one process's polls, by user (`service.fanout.pace`)."""
    return Pacer(POLLS_PER_SECOND, POLL_BURST, max_wait=POLL_WAIT_SECONDS)


# The most messages one response carries; the cursor stops at the last one, so a long
# replay arrives over several polls instead of one unbounded body.
MAX_BATCH = 1000


class PollTransport:
    """What a waiting poll's connection writes to; implements `service.fanout.connection.Transport`."""

    kind: ClassVar[TransportName] = TransportName.POLL
    __slots__ = ("_bytes", "_wake", "close_code", "close_reason", "complete", "cursor", "parts")

    def __init__(self, cursor: str | None) -> None:
        self.parts: list[bytes] = []  # JSON texts, in the order they will be answered
        self.cursor = cursor  # the id of the last event in `parts` (or the request's position)
        self.close_code: int | None = None
        self.close_reason = ""
        self.complete = True  # every event offered is in `parts`
        self._bytes = 0
        self._wake = asyncio.Event()

    def send_event(self, encoded: Encoded) -> None:
        if len(self.parts) >= MAX_BATCH or self.close_code is not None:
            self.complete = False  # the cursor stays before it: the next poll asks for it again
            return
        self.parts.append(encoded.json)
        self.cursor = encoded.event.id
        self._bytes += len(encoded.json)
        self._wake.set()

    def send_batch(self, selection: Selection) -> None:
        """A poll answers in one body anyway: the events join its parts one by one."""
        for encoded in selection.events:
            self.send_event(encoded)

    def send_message(self, payload: Payload) -> None:
        if self.close_code is None:
            data = dumps(payload)
            self.parts.append(data)
            self._bytes += len(data)
            self._wake.set()

    def heartbeat(self) -> None:
        """Nothing to keep alive: a poll ends by itself within the timeout."""

    async def drained(self) -> None:
        """A poll's answer is one body: nothing to wait for."""

    def pending_bytes(self) -> int:
        return self._bytes

    def close(self, code: CloseCode | int, reason: str) -> None:
        """Answer now; a drain's restart is just the end of this poll, anything else is told."""
        if self.close_code is not None:
            return
        if code not in (CloseCode.SERVICE_RESTART, CloseCode.GOING_AWAY):
            self.send_message({"type": "close", "code": int(code), "reason": reason})
        self.close_code, self.close_reason = int(code), reason
        self._wake.set()

    def abort(self) -> None:
        """What a stopping server calls on streams that outstay it: answer at once."""
        self.close(CloseCode.GOING_AWAY, "server stopping")

    async def wait(self, seconds: float) -> None:
        """Until there is something to answer with, or `seconds` have passed."""
        if self.parts or self.close_code is not None:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        # Events delivered in the same loop iteration as the first join its batch.
        await asyncio.sleep(0)

    def body(self) -> bytes:
        """The response: `{"messages": [...], "cursor": "<id>"}`."""
        cursor = dumps({"cursor": self.cursor})[1:]  # `"cursor":...}`
        return b'{"messages":[' + b",".join(self.parts) + b"]," + cursor


class VerifiedTokens:
    """Tokens this process has verified, so that a poller's every poll is not a new signature
    check (about a third of a poll's server time at 1,000 pollers).

    Keyed by the whole token, which is the credential itself; an entry serves only until the
    token's `exp` (past it, full verification decides, leeway included) and the least recently
    used are dropped past `size`. Tickets are single-use and never kept here.
    """

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = VERIFIED_TOKENS) -> None:
        self._entries: OrderedDict[str, Principal] = OrderedDict()
        self._size = size

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Principal | None:
        principal = self._entries.get(token)
        if principal is None:
            return None
        if time.time() >= principal.expires_at:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return principal

    def put(self, token: str, principal: Principal) -> None:
        self._entries[token] = principal
        self._entries.move_to_end(token)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


async def poll(ctx: AppContext, connection: Connection, transport: PollTransport, *, connect: bool) -> None:
    """One poll: resume after `connection.last_event_id`, then wait for live events.

    Args:
        connect: the client's first poll, greeted with `connected` (later polls are not).
    """
    hub = ctx.hub
    connection.begin_replay()
    hub.attach(connection)
    hub.stream_opened(transport)  # a stopping server waits for this answer like for a stream
    try:
        caught = await replay_and_greet(
            ctx, connection, heartbeat_seconds=ctx.settings.poll_timeout_seconds, greet=connect, max_pages=1
        )
        if not caught.resumed:
            # No position, or one the client must drop: start from the newest event known here.
            transport.cursor = connection.last_event_id = head(ctx)
        elif transport.complete and caught.position is not None:
            # Past the replay's filtered-out events too, so a rare subscription still advances.
            transport.cursor = max(transport.cursor or caught.position, caught.position)
        if not caught.done:
            # One page read from MongoDB and more to come: answer with it now; live events
            # (held, not sent) wait for the poll that reaches them.
            return
        connection.finish_replay()
        expires_at = connection.principal.valid_until  # `exp` plus the leeway, as on every transport
        remaining = expires_at - time.time()
        if remaining > 0:
            await transport.wait(min(ctx.settings.poll_timeout_seconds, remaining))
        if time.time() >= expires_at:
            # As a stream closes at expiry: told, not answered empty (which would be polled again at once).
            connection.close(CloseCode.UNAUTHORIZED, "token expired")
        newest = head(ctx)
        if transport.complete and newest is not None and (transport.cursor is None or newest > transport.cursor):
            # Every event up to the newest was offered (filtered ones too): a client that
            # subscribes to a rare type must not fall behind what memory holds.
            transport.cursor = newest
    finally:
        connection.closed = True
        hub.detach(connection)
        hub.stream_closed(transport)


def head(ctx: AppContext) -> str | None:
    """The id of the newest event this process knows of (where a new poller starts)."""
    bus = ctx.bus
    return bus.history[-1].event.id if bus.history else bus.covered_from
