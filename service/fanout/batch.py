"""A fan-out batch: events that became ready together, sent to each connection in one write.

Every connection of a batch gets the concatenation of the frames it wants, in order. Which
ones it wants depends only on its subscriptions and, when an event has a `to`, on its user
and roles: connections that agree on those share one `Selection`, and a selection builds its
concatenated bytes once per framing (WebSocket, SSE chunked or bare, a deflate window), so
10,000 clients that want the same batch share one bytes object instead of 10,000 copies.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

from service.protocol.wire import Encoded

if TYPE_CHECKING:
    from service.fanout.connection import Connection


class Selection:
    """The events of a batch one group of connections gets, and their bytes per framing."""

    __slots__ = ("_joined", "events")

    def __init__(self, events: tuple[Encoded, ...]) -> None:
        self.events = events
        self._joined: dict[Hashable, bytes] = {}

    def joined(self, framing: Hashable, frame: Callable[[Encoded], bytes]) -> bytes:
        """The frames of the events, concatenated; built at the first call per `framing`.

        Args:
            framing: names `frame` (the same name must always mean the same function).
            frame: one event's bytes on this framing (`Encoded.ws_frame`, `.sse_chunk`, ...).
        """
        data = self._joined.get(framing)
        if data is None:
            data = self._joined[framing] = b"".join([frame(encoded) for encoded in self.events])
        return data


class Batch:
    """Events in id order, and the selections their connections share."""

    __slots__ = ("_by_key", "_by_pick", "addressed", "events", "first_id")

    def __init__(self, events: Sequence[Encoded]) -> None:
        self.events = tuple(events)
        self.first_id = self.events[0].event.id
        # Whether any event has a `to`: only then do user and roles take part in the choice.
        self.addressed = any(encoded.event.audience is not None for encoded in self.events)
        self._by_key: dict[Hashable, Selection] = {}
        self._by_pick: dict[tuple[int, ...], Selection] = {}

    def select(self, connection: Connection) -> Selection:
        """The events `connection` is entitled to (subscriptions, `to`), shared with every
        connection that is entitled to the same ones.

        The resume position is not looked at: a live connection is behind the whole batch
        (`Connection.offer_batch` handles one that is not).
        """
        subscriptions = connection.subscriptions
        key: Hashable = subscriptions
        if self.addressed:
            principal = connection.principal
            key = (subscriptions, principal.user_id, principal.roles)
        selection = self._by_key.get(key)
        if selection is None:
            pick = tuple(i for i, encoded in enumerate(self.events) if connection.entitled(encoded.event))
            selection = self._by_pick.get(pick)
            if selection is None:
                selection = self._by_pick[pick] = Selection(tuple(self.events[i] for i in pick))
            self._by_key[key] = selection
        return selection

    def select_wanted(self, connection: Connection) -> Selection:
        """The events `connection` wants (`Connection.wants`: its resume position too), not shared."""
        return Selection(tuple(encoded for encoded in self.events if connection.wants(encoded)))
