"""What the WebSocket and SSE sessions share once Tornado has handed over the socket:
writes without awaiting, bounded at each write; a place in the hub; the connect sequence
(`open_session`: `connected`, then the replay); and the bookkeeping when the socket closes.

A live connection costs a socket, an asyncio transport and a few slotted objects (about
3.4 KB of Python heap) instead of Tornado's handler, request, headers, IOStream and
suspended coroutines (about 16 KB), and an event reaches the kernel through one
`transport.write`, with no Future.

Every byte a session writes — events, replies to the client (pongs, `error`, `auth_ok`),
heartbeats — passes `StreamSession.write`, which refuses to queue past the hub's
`max_pending_bytes` and closes the client as a slow consumer instead: what a client that
does not read can cost is bounded where the bytes are queued, not by a periodic sweep.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import ClassVar

from service.app.context import AppContext
from service.core.errors import CloseCode, ReplayBusy, StoreUnavailable
from service.core.events import now_iso
from service.fanout.connection import Connection
from service.fanout.hub import Slot
from service.fanout.replay import Replay
from service.transports.clock import TokenClock

log = logging.getLogger("service.connections")

DRAIN_SECONDS = 10.0  # how long a replay waits for its client to take a page


class StreamSession(asyncio.Protocol):
    """A connection after the takeover. Subclasses add the framing (WebSocket or SSE),
    implement the rest of `service.fanout.connection.Transport`, and say how it ended (`ended`).
    """

    kind: ClassVar[str]
    __slots__ = ("_clock", "_drain", "_held", "_lost", "_transport", "connection", "ctx", "slot")

    def __init__(self, ctx: AppContext, slot: Slot | None = None) -> None:
        self.ctx = ctx
        self.connection: Connection | None = None
        self.slot = slot  # the user's connection slot this stream holds; given back when it ends
        self._transport: asyncio.Transport | None = None
        self._clock: TokenClock | None = None
        self._lost = False
        self._held = b""
        self._drain: asyncio.Event | None = None  # set while the kernel's buffer is full

    @property
    def lost(self) -> bool:
        """Whether the socket has closed (`connection_lost` ran)."""
        return self._lost

    @property
    def made(self) -> bool:
        """Whether asyncio serves the socket (then `connection_lost` will run when it ends)."""
        return self._transport is not None

    async def attach(self, sock: socket.socket) -> None:
        """Serve `sock` with this protocol on the running loop."""
        await asyncio.get_running_loop().connect_accepted_socket(lambda: self, sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.ctx.hub.stream_opened(self)

    async def start(self, connection: Connection, expires_at: float) -> None:
        """Attach an authenticated connection: replay, `connected`, then live events."""
        if self._lost:
            return
        self.connection = connection
        await open_session(self.ctx, connection)
        if not connection.closed:
            self._clock = TokenClock(connection)
            self._clock.start(expires_at)

    def write(self, data: bytes) -> None:
        """Queue bytes: the kernel takes them at once when nothing is queued before them.

        Bytes that would take the unsent backlog past `max_pending_bytes` are not queued: the
        client is closed as a slow consumer instead. (A single write into an empty backlog is
        let through, as the kernel takes most of it; if it still leaves more than the bound
        queued, the client is closed at once.)
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._held:
            data, self._held = self._held + data, b""
        limit = self.ctx.hub.max_pending_bytes
        pending = transport.get_write_buffer_size()
        if pending and pending + len(data) > limit:
            self._too_slow()
            return
        transport.write(data)
        if not pending and transport.get_write_buffer_size() > limit:
            self._too_slow()

    def hold(self, data: bytes) -> None:
        """Bytes that go out in front of the next write, in the same `send()`: the 101 answer
        and the first frame after it (`connected`, or the close frame of a refusal) cost the
        kernel one send per connect instead of two. The client sees the same bytes in the
        same order."""
        self._held += data

    def write_final(self, data: bytes) -> None:
        """Queue the last bytes of a closing stream (a close frame, the last chunk): one per
        stream and small, so past the bound too."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._held:
                data, self._held = self._held + data, b""
            transport.write(data)

    def _too_slow(self) -> None:
        connection = self.connection
        if connection is not None and not connection.closed:
            self.ctx.hub.close_slow(connection)
        elif self.ended() is None:  # not attached yet: nothing to log against a user
            self.ctx.metrics.slow_consumers.labels(self.kind).inc()
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def pending_bytes(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def pause_writing(self) -> None:
        self._drain = asyncio.Event()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.set()

    async def drained(self) -> None:
        """Until the transport's buffer is below its low-water mark (or the socket is gone).

        A client that takes nothing for DRAIN_SECONDS is closed as a slow consumer: a replay
        waiting for it holds one of the process's few replay slots.
        """
        drain = self._drain
        if drain is None or self._lost:
            return
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                await drain.wait()
        except TimeoutError:
            self._too_slow()

    def refuse(self, code: CloseCode, reason: str) -> None:
        """Close a connection that never got attached (auth, limits), logging why."""
        log.info("refused: %s", reason, extra={"transport": self.kind, "close_code": int(code)})
        self.close(code, reason)

    def close(self, code: CloseCode, reason: str) -> None:
        raise NotImplementedError

    def ended(self) -> tuple[int, str] | None:
        """The close code and reason, once the close has begun (either side)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the socket now, whatever is still queued."""
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.resume_writing()
        ctx = self.ctx
        ctx.hub.stream_closed(self)
        if self.slot is not None:
            self.slot.release()
        if self._clock is not None:
            self._clock.stop()
        code, reason = self.ended() or (int(CloseCode.GOING_AWAY), "client left")
        ctx.metrics.disconnects.labels(self.kind, str(code)).inc()
        connection = self.connection
        if connection is not None:
            connection.close(CloseCode.GOING_AWAY, reason)  # a no-op on the socket: it is gone
            ctx.hub.detach(connection)
            log_disconnect(connection, code, reason)


async def open_session(ctx: AppContext, connection: Connection) -> None:
    """Attach a new connection, greet it with `connected`, and replay what it missed.

    Live events that arrive during the replay are held and sent after it, so the client
    sees history and live events in order, each once. A replay that cannot be admitted now,
    or that MongoDB interrupts, closes the connection with 1013 (try again later): the
    client resumes from the last event it got.
    """
    connection.begin_replay()
    ctx.hub.attach(connection)
    try:
        caught = await replay_and_greet(ctx, connection, heartbeat_seconds=ctx.settings.heartbeat_seconds)
    except (ReplayBusy, StoreUnavailable) as exc:
        log.info("resume refused: %s", exc, extra={"transport": connection.kind})
        connection.close(CloseCode.TRY_AGAIN_LATER, "try again later")
        return
    if caught.interrupted:
        connection.close(CloseCode.TRY_AGAIN_LATER, "try again later")
        return
    connection.finish_replay()
    log.info(
        "connected",
        extra={
            "connection_id": connection.id,
            "user_id": connection.principal.user_id,
            "transport": connection.kind,
            "resumed": caught.resumed,
            "remote": connection.remote,
        },
    )


@dataclass(slots=True)
class CaughtUp:
    """How far `replay_and_greet` took a connection."""

    resumed: bool  # it resumes from its id (else it starts from now, told to `resync` if it asked)
    done: bool = True  # the whole replay was sent (False: a poll's page limit stopped it)
    position: str | None = None  # the id of the last event the replay read, sent or filtered out
    interrupted: bool = False  # MongoDB failed mid-replay: resume again from the last id sent


async def replay_and_greet(
    ctx: AppContext,
    connection: Connection,
    *,
    heartbeat_seconds: float,
    greet: bool = True,
    max_pages: int | None = None,
) -> CaughtUp:
    """Greet the connection with `connected` (when `greet`) and send it what it missed since
    its `last_event_id`, page by page, or tell it to `resync` when that history is gone.

    Every transport (streams and polls) resumes and greets through here, so they count and
    say it alike. Live events stay held by the connection (`finish_replay` sends them).

    Args:
        max_pages: stop after this many pages read from MongoDB (a poll reads one); streams
            read them all, each after the client has taken the one before.

    Raises:
        ReplayBusy: a replay from MongoDB was not admitted now.
        StoreUnavailable: MongoDB did not answer when the replay opened.
    """
    requested = connection.last_event_id
    replay: Replay | None = None
    if requested is not None:
        try:
            replay = await ctx.bus.open_replay(requested, connection.entitled, connection.principal.user_id)
        except (ReplayBusy, StoreUnavailable):
            ctx.metrics.resumes.labels(connection.kind, "busy").inc()
            raise
        ctx.metrics.resumes.labels(connection.kind, "resync" if replay is None else "replayed").inc()
        if replay is None:
            connection.last_event_id = None
    caught = CaughtUp(resumed=replay is not None)
    if greet:
        p = connection.principal
        connection.send_message(
            {
                "type": "connected",
                "connectionId": connection.id,
                "userId": p.user_id,
                "userName": p.name,
                "transport": connection.kind,
                "serverTime": now_iso(),
                "heartbeatSeconds": heartbeat_seconds,
                "resumed": caught.resumed,
            }
        )
    if requested is not None and replay is None:
        connection.send_message({"type": "resync", "reason": "history unavailable", "ts": now_iso()})
    if replay is None:
        return caught
    pages = 0
    try:
        while not connection.closed:
            page = await replay.next_page()
            connection.send_replayed(page.events)
            caught.position = page.position
            pages += 1
            if page.done:
                break
            if max_pages is not None and pages >= max_pages:
                caught.done = False
                break
            await connection.transport.drained()
    except StoreUnavailable as exc:
        # MongoDB went away mid-replay: what was sent stands, the rest comes when the client
        # resumes again from its last id (a stream is closed 1013, a poll answers what it has).
        log.warning("replay interrupted: %s", exc, extra={"transport": connection.kind})
        caught.done = False
        caught.interrupted = True
    finally:
        await replay.close()
    return caught


def log_disconnect(connection: Connection, code: int, reason: str) -> None:
    """The INFO line for a connection that ended: how long it lasted, its close code and reason."""
    duration = time.time() - connection.since
    log.info(
        "disconnected after %.1fs: %s",
        duration,
        reason or "closed",
        extra={
            "connection_id": connection.id,
            "user_id": connection.principal.user_id,
            "transport": connection.kind,
            "close_code": code,
            "reason": reason or "closed",
            "duration_seconds": round(duration, 3),
        },
    )
