"""Batch and Selection without a hub: which connections share a selection (same subscriptions,
and, once an event has a `to`, the same user and roles), events kept in id order, and each
selection's bytes built once per framing."""

from __future__ import annotations

from service.core.events import Audience
from service.fanout.batch import Batch, Selection
from service.fanout.connection import Connection
from service.protocol.wire import Encoded
from tests.fakes import FakeTransport, encoded, principal, ws_frame_of


def connection(
    user_id: int = 1,
    roles: tuple[str, ...] = ("user",),
    subscriptions: frozenset[str] | None = None,
    last_event_id: str | None = None,
) -> Connection:
    return Connection(
        FakeTransport(), principal(user_id, roles), subscriptions=subscriptions, last_event_id=last_event_id
    )


def ids(selection: Selection) -> list[str]:
    return [e.event.id for e in selection.events]


def test_a_batch_keeps_its_events_in_order_and_knows_its_first_id() -> None:
    events = [encoded(1), encoded(2), encoded(3)]
    batch = Batch(events)
    assert [e.event.id for e in batch.events] == [e.event.id for e in events]
    assert batch.first_id == events[0].event.id
    assert batch.addressed is False


def test_a_batch_with_a_to_is_addressed() -> None:
    batch = Batch([encoded(1), encoded(2, audience=Audience(users=frozenset({7})))])
    assert batch.addressed is True


def test_connections_with_the_same_subscriptions_share_one_selection() -> None:
    """Without a `to`, user and roles play no part: users 1 and 2 get the very same object."""
    batch = Batch([encoded(1), encoded(2)])
    first, second = batch.select(connection(1)), batch.select(connection(2, roles=("admin",)))
    assert first is second
    assert ids(first) == [encoded(1).event.id, encoded(2).event.id]


def test_subscriptions_filter_the_selection_and_keep_the_order() -> None:
    events = [encoded(1, "a"), encoded(2, "b"), encoded(3, "a"), encoded(4, "c")]
    batch = Batch(events)
    only_a = batch.select(connection(subscriptions=frozenset({"a"})))
    a_and_c = batch.select(connection(subscriptions=frozenset({"c", "a"})))
    assert ids(only_a) == [events[0].event.id, events[2].event.id]
    assert ids(a_and_c) == [events[0].event.id, events[2].event.id, events[3].event.id]


def test_different_subscriptions_that_pick_the_same_events_share_a_selection() -> None:
    """Shared by what is picked, not only by the key: {a} and {a, z} both get events 1 and 3."""
    batch = Batch([encoded(1, "a"), encoded(2, "b"), encoded(3, "a")])
    assert batch.select(connection(subscriptions=frozenset({"a"}))) is batch.select(
        connection(subscriptions=frozenset({"a", "z"}))
    )


def test_to_admission_groups_by_user_and_roles() -> None:
    """An event for user 7 or role `ops`: 7 and `ops` holders get it, others do not, and
    connections admitted the same way share one selection."""
    to = Audience(users=frozenset({7}), roles=frozenset({"ops"}))
    events = [encoded(1), encoded(2, audience=to), encoded(3)]
    batch = Batch(events)
    everyone = [events[0].event.id, events[2].event.id]
    addressed = [e.event.id for e in events]

    user7, user7_again = batch.select(connection(7)), batch.select(connection(7))
    ops = batch.select(connection(8, roles=("ops",)))
    other, another = batch.select(connection(9)), batch.select(connection(10))

    assert ids(user7) == ids(ops) == addressed
    assert ids(other) == everyone
    assert user7 is user7_again is ops  # same events picked: one selection
    assert other is another
    assert other is not user7


def test_select_wanted_skips_what_the_connection_already_has() -> None:
    """A connection whose resume position is inside the batch gets only what follows it."""
    events = [encoded(1), encoded(2), encoded(3)]
    batch = Batch(events)
    behind = connection(last_event_id=events[0].event.id)
    assert ids(batch.select_wanted(behind)) == [events[1].event.id, events[2].event.id]
    assert ids(batch.select(behind)) == [e.event.id for e in events]  # `select` ignores the position


def test_joined_concatenates_the_frames_in_order_once_per_framing() -> None:
    """Bytes per group: the frames in order; the second call (same framing) builds nothing."""
    events = (encoded(1), encoded(2, "b"), encoded(3))
    selection = Selection(events)
    calls: list[str] = []

    def frame(e: Encoded) -> bytes:
        calls.append(e.event.id)
        return e.ws_frame

    joined = selection.joined("websocket", frame)
    assert joined == b"".join(e.ws_frame for e in events)
    assert selection.joined("websocket", frame) is joined
    assert calls == [e.event.id for e in events]

    sse = selection.joined("sse", lambda e: e.sse)
    assert sse == b"".join(e.sse for e in events) and sse != joined


def test_each_group_gets_its_own_bytes() -> None:
    """Two groups of a batch: each selection's bytes are its own events' frames only."""
    events = [encoded(1, "a"), encoded(2, "b"), encoded(3, "a")]
    batch = Batch(events)
    a = batch.select(connection(subscriptions=frozenset({"a"})))
    b = batch.select(connection(subscriptions=frozenset({"b"})))
    assert a.joined("websocket", ws_frame_of) == events[0].ws_frame + events[2].ws_frame
    assert b.joined("websocket", ws_frame_of) == events[1].ws_frame


def test_a_connection_that_wants_nothing_gets_an_empty_selection() -> None:
    batch = Batch([encoded(1, "a")])
    empty = batch.select(connection(subscriptions=frozenset({"b"})))
    assert empty.events == () and empty.joined("websocket", ws_frame_of) == b""
