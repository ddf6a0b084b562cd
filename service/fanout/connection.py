"""One client connection: the `Transport` it writes to, its filters, and resume bookkeeping.

The hub offers every event to every connection; the connection decides whether its
client is entitled to it and wants it, and hands the pre-encoded bytes to its transport.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, ClassVar, Protocol

from service.core.errors import CloseCode
from service.core.events import Event, Payload
from service.core.identity import Principal
from service.core.schema import TransportName
from service.protocol.wire import Encoded

if TYPE_CHECKING:
    from service.fanout.batch import Batch, Selection

# Events that arrive while a resuming connection replays history wait here; past this many
# the connection is treated as a slow consumer rather than growing without bound.
MAX_REPLAY_BUFFER = 50_000


class Transport(Protocol):
    """What a connection writes to; the WebSocket and SSE sessions (`service.transports`) implement it."""

    kind: ClassVar[TransportName]  # the metrics and log label

    def send_event(self, encoded: Encoded) -> None:
        """Queue an event's bytes for this transport; never blocks, never awaits."""

    def send_batch(self, selection: Selection) -> None:
        """Queue several events' bytes in one write (`Selection.joined`); never blocks."""

    def send_message(self, payload: Payload) -> None:
        """Queue a per-connection message (connected, pong, error, ...)."""

    def heartbeat(self) -> None:
        """Keep an idle connection alive and detect dead peers (ping or SSE comment)."""

    def pending_bytes(self) -> int:
        """Bytes queued but not yet accepted by the kernel."""

    def close(self, code: CloseCode, reason: str) -> None:
        """End the connection with a close code (SSE maps it to ending the stream)."""

    async def drained(self) -> None:
        """Return once the client has taken most of what is queued (a replay's next page waits)."""


class Connection:
    """A client's state between the hub and its transport."""

    __slots__ = (
        "_replay_buffer",
        "closed",
        "id",
        "last_event_id",
        "principal",
        "remote",
        "since",
        "subscriptions",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        principal: Principal,
        *,
        subscriptions: frozenset[str] | None = None,
        last_event_id: str | None = None,
        remote: str = "",
    ) -> None:
        self.id = secrets.token_hex(8)
        self.transport = transport
        self.principal = principal
        self.subscriptions = subscriptions  # None: every type
        self.last_event_id = last_event_id
        self.remote = remote
        self.since = time.time()
        # Whether the hub still offers it events; set by `close` alone. What may reach the
        # wire is the transport's own state (for WebSocket, `transports.protocol.State`).
        self.closed = False
        self._replay_buffer: list[Encoded] | None = None

    @property
    def kind(self) -> str:
        return self.transport.kind

    def entitled(self, event: Event) -> bool:
        """Addressed to this client (addressing) and subscribed to (filters), whatever its position."""
        if self.subscriptions is not None and event.type not in self.subscriptions:
            return False
        audience = event.audience
        return audience is None or audience.admits(self.principal.user_id, self.principal.roles)

    def wants(self, encoded: Encoded) -> bool:
        """Entitled, subscribed, and not yet sent (resume)."""
        event = encoded.event
        if self.last_event_id is not None and event.id <= self.last_event_id:
            return False
        return self.entitled(event)

    def offer(self, encoded: Encoded) -> bool:
        """Send the event if this client should get it now; True when bytes were queued."""
        if self.closed:
            return False
        if self._replay_buffer is not None:
            if len(self._replay_buffer) >= MAX_REPLAY_BUFFER:
                self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
                return False
            self._replay_buffer.append(encoded)
            return False
        if not self.wants(encoded):
            return False
        self.transport.send_event(encoded)
        self.last_event_id = encoded.event.id
        return True

    def offer_batch(self, batch: Batch) -> Selection | None:
        """Send the events of `batch` this client should get now in one write; returns what
        was sent (shared with the connections that want the same), None when nothing was.

        While it replays, the events are held one by one as `offer` holds them.
        """
        if self.closed:
            return None
        if self._replay_buffer is not None:
            for encoded in batch.events:
                self.offer(encoded)
            return None
        last = self.last_event_id
        if last is not None and last >= batch.first_id:  # rare: it has some of them already
            selection = batch.select_wanted(self)
        else:
            selection = batch.select(self)
        if not selection.events:
            return None
        self.transport.send_batch(selection)
        self.last_event_id = selection.events[-1].event.id
        return selection

    def begin_replay(self) -> None:
        """Hold live events back while history is replayed, so nothing overtakes it."""
        self._replay_buffer = []

    def send_replayed(self, history: list[Encoded]) -> int:
        """Send a page of replayed history now (live events stay held); returns the count."""
        sent = 0
        for encoded in history:
            if self.closed:
                break
            if self.wants(encoded):
                self.transport.send_event(encoded)
                self.last_event_id = encoded.event.id
                sent += 1
        return sent

    def finish_replay(self, history: list[Encoded] | None = None) -> int:
        """Send the rest of the replayed history, then whatever arrived live meanwhile; returns the count."""
        sent = self.send_replayed(history or [])
        held, self._replay_buffer = self._replay_buffer or [], None
        return sent + sum(1 for encoded in held if self.offer(encoded))

    def send_message(self, payload: Payload) -> None:
        if not self.closed:
            self.transport.send_message(payload)

    def close(self, code: CloseCode, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close(code, reason)

    def describe(self) -> Payload:
        """The admin view of this connection."""
        return {
            "id": self.id,
            "userId": self.principal.user_id,
            "userName": self.principal.name,
            "transport": self.kind,
            "since": self.since,
            "remote": self.remote,
            "subscriptions": None if self.subscriptions is None else sorted(self.subscriptions),
            "pendingBytes": self.transport.pending_bytes(),
            "lastEventId": self.last_event_id,
        }
