"""Connection with a fake transport: who gets which event, resume, replay order, closing once."""

from __future__ import annotations

import pytest

import service.fanout.connection
from service.core.events import Audience
from service.fanout.connection import Connection
from tests.fakes import FakeTransport, encoded, principal


def connect(**kwargs: object) -> tuple[Connection, FakeTransport]:
    transport = FakeTransport()
    return Connection(transport, principal(), **kwargs), transport  # type: ignore[arg-type]


def test_offer_sends_and_remembers_the_last_event_id() -> None:
    """An event the client wants is queued, and becomes its resume position."""
    connection, transport = connect()
    assert connection.offer(encoded(1)) is True
    assert transport.events == [encoded(1).event.id] and connection.last_event_id == encoded(1).event.id


def test_events_at_or_before_the_resume_position_are_not_sent_again() -> None:
    """Resume: ids up to `last_event_id` are skipped."""
    connection, transport = connect(last_event_id=encoded(2).event.id)
    for n in (1, 2, 3):
        connection.offer(encoded(n))
    assert transport.events == [encoded(3).event.id]


def test_subscriptions_filter_by_type() -> None:
    """With `subscriptions`, only those types are sent."""
    connection, transport = connect(subscriptions=frozenset({"wanted"}))
    connection.offer(encoded(1, "other"))
    connection.offer(encoded(2, "wanted"))
    assert transport.events == [encoded(2).event.id]


@pytest.mark.parametrize(
    ("audience", "sent"),
    [
        (None, True),
        (Audience(users=frozenset({1})), True),
        (Audience(users=frozenset({2})), False),
        (Audience(roles=frozenset({"user"})), True),
        (Audience(roles=frozenset({"admin"})), False),
    ],
    ids=["everybody", "this-user", "other-user", "my-role", "other-role"],
)
def test_an_addressed_event_reaches_only_its_audience(audience: Audience | None, sent: bool) -> None:
    """`to.users` / `to.roles` decide who is entitled."""
    connection, transport = connect()
    assert connection.offer(encoded(1, audience=audience)) is sent
    assert len(transport.events) == int(sent)


def test_replay_sends_history_then_what_arrived_live_each_once() -> None:
    """Live events held during the replay follow the history, and overlaps are sent once."""
    connection, transport = connect()
    connection.begin_replay()
    for n in (3, 4):
        assert connection.offer(encoded(n)) is False  # held, not sent yet
    assert transport.events == []
    assert connection.finish_replay([encoded(1), encoded(2), encoded(3)]) == 4
    assert transport.events == [encoded(n).event.id for n in (1, 2, 3, 4)]


def test_a_replay_buffer_past_its_bound_closes_as_a_slow_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events held during a replay are bounded: past MAX_REPLAY_BUFFER the client is closed 4408."""
    monkeypatch.setattr(service.fanout.connection, "MAX_REPLAY_BUFFER", 3)
    connection, transport = connect()
    connection.begin_replay()
    for n in range(5):
        connection.offer(encoded(n))
    assert transport.closes == [(4408, "slow consumer")] and connection.closed


def test_close_reaches_the_transport_once_and_silences_the_connection() -> None:
    """After `close`, nothing more is sent and a second close does nothing."""
    connection, transport = connect()
    connection.close(4401, "token expired")  # type: ignore[arg-type]
    connection.close(4408, "slow consumer")  # type: ignore[arg-type]
    connection.send_message({"type": "pong"})
    assert connection.offer(encoded(1)) is False
    assert transport.closes == [(4401, "token expired")] and transport.messages == [] and transport.events == []


def test_describe_reports_the_transports_pending_bytes() -> None:
    """The admin view reads the backlog from the transport."""
    connection, transport = connect(subscriptions=frozenset({"b", "a"}))
    transport.pending = 1234
    view = connection.describe()
    assert view["pendingBytes"] == 1234 and view["subscriptions"] == ["a", "b"] and view["transport"] == "websocket"
