"""Hub with fake transports: per-user slots, the registry, fan-out, heartbeat slices, slow consumers."""

from __future__ import annotations

from metrics.registry import Metrics
from service.connection import Connection
from service.hub import Hub
from tests.fakes import FakeSSETransport, FakeTransport, encoded, principal


def make_hub(max_per_user: int = 2, metrics: Metrics | None = None) -> Hub:
    return Hub(metrics or Metrics(), max_pending_bytes=1024, max_per_user=max_per_user)


def attach(hub: Hub, user_id: int = 1, transport: FakeTransport | None = None) -> tuple[Connection, FakeTransport]:
    transport = transport or FakeTransport()
    connection = Connection(transport, principal(user_id))
    hub.attach(connection)
    return connection, transport


def value(metrics: Metrics, name: str, kind: str) -> float:
    sample = metrics.registry.get_sample_value(name, {"transport": kind})
    return sample or 0.0


def test_reserve_gives_max_per_user_slots_then_none() -> None:
    """A user's slots run out at `max_per_user`; other users are not affected."""
    hub = make_hub(max_per_user=2)
    assert hub.reserve(1) is not None and hub.reserve(1) is not None
    assert hub.reserve(1) is None
    assert hub.reserve(2) is not None and hub.slots_taken(1) == 2


def test_a_slot_released_twice_is_given_back_once() -> None:
    """`release` is idempotent: every exit path may call it."""
    hub = make_hub(max_per_user=2)
    first, second = hub.reserve(1), hub.reserve(1)
    assert first is not None and second is not None
    first.release()
    first.release()
    assert hub.slots_taken(1) == 1
    second.release()
    assert hub.slots_taken(1) == 0


def test_attach_and_detach_keep_the_registry_and_gauge_in_step() -> None:
    """Registered by transport and user; detach is idempotent."""
    metrics = Metrics()
    hub = make_hub(metrics=metrics)
    ws, _ = attach(hub, 1)
    sse, _ = attach(hub, 1, FakeSSETransport())
    assert len(hub) == 2 and hub.get(ws.id) is ws and set(hub.of_user(1)) == {ws, sse}
    assert (value(metrics, "realtime_connections", "websocket"), value(metrics, "realtime_connections", "sse")) == (
        1,
        1,
    )
    hub.detach(ws)
    hub.detach(ws)
    assert len(hub) == 1 and hub.get(ws.id) is None and hub.of_user(1) == [sse]
    assert value(metrics, "realtime_connections", "websocket") == 0


def test_deliver_offers_each_event_to_every_connection_that_wants_it() -> None:
    """Fan-out reaches each wanting connection once and counts what was sent."""
    metrics = Metrics()
    hub = make_hub(metrics=metrics)
    _, first = attach(hub, 1)
    _, second = attach(hub, 2)
    filtered = Connection(FakeTransport(), principal(3), subscriptions=frozenset({"other"}))
    hub.attach(filtered)
    hub.deliver(encoded(1))
    assert first.events == second.events == [encoded(1).event.id]
    assert filtered.transport.events == []  # type: ignore[attr-defined]
    assert value(metrics, "realtime_messages_sent_total", "websocket") == 2


def test_a_connection_closed_during_fanout_does_not_stop_the_others() -> None:
    """A transport that closes its connection while being written to leaves the rest served."""
    hub = make_hub()
    closing, closing_transport = attach(hub, 1)
    closing_transport.send_event = lambda encoded: hub.detach(closing)  # type: ignore[method-assign]
    _, other = attach(hub, 2)
    hub.deliver(encoded(1))
    assert other.events == [encoded(1).event.id] and hub.get(closing.id) is None


def test_a_heartbeat_round_pings_each_connection_once_over_its_ticks() -> None:
    """With 4 ticks per round, each tick pings a quarter; closed connections are skipped."""
    hub = make_hub(max_per_user=10)
    transports = [attach(hub, n)[1] for n in range(8)]
    for tick in range(1, 5):
        hub.heartbeat(4)
        assert sum(t.heartbeats for t in transports) == 2 * tick
    assert [t.heartbeats for t in transports] == [1] * 8
    hub.of_user(0)[0].close(1000, "bye")  # type: ignore[arg-type]
    for _ in range(4):
        hub.heartbeat(4)
    assert transports[0].heartbeats == 1 and [t.heartbeats for t in transports[1:]] == [2] * 7


def test_close_slow_closes_4408_once_and_counts_it() -> None:
    """A slow consumer is closed with 4408; later calls for it do nothing."""
    metrics = Metrics()
    hub = make_hub(metrics=metrics)
    connection, transport = attach(hub, 1)
    hub.close_slow(connection)
    hub.close_slow(connection)
    assert transport.closes == [(4408, "slow consumer")]
    assert value(metrics, "realtime_slow_consumer_disconnects_total", "websocket") == 1
