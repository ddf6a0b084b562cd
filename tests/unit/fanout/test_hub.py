"""Hub with fake transports: per-user slots, the registry, fan-out, heartbeat slices, slow consumers."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest

from metrics.registry import Metrics
from service.core.events import Audience
from service.core.schema import TransportName
from service.fanout.batch import Selection
from service.fanout.connection import Connection
from service.fanout.hub import Hub
from service.protocol.wire import Encoded
from tests.fakes import FakeClock, FakeSSETransport, FakeTransport, encoded, principal


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


def test_a_connection_that_raises_is_closed_1011_and_the_fan_out_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A bug in one connection's write (single event or batch) costs that client a 1011 close,
    logged with its traceback; every other connection gets the event, and later events too."""
    hub = make_hub()
    broken, broken_transport = attach(hub, 1)

    def fail(*_: object) -> None:
        raise RuntimeError("boom")

    broken_transport.send_event = fail  # type: ignore[method-assign,assignment]
    broken_transport.send_batch = fail  # type: ignore[method-assign,assignment]
    _, before = attach(hub, 2)
    with caplog.at_level(logging.ERROR, logger="service.fanout.hub"):
        hub.deliver(encoded(1))
    _, after = attach(hub, 3)
    hub.deliver_many([encoded(2), encoded(3)])
    assert broken_transport.closes == [(1011, "internal error")] and hub.get(broken.id) is None
    assert before.events == [encoded(n).event.id for n in (1, 2, 3)]
    assert after.events == [encoded(n).event.id for n in (2, 3)]
    failed = [r for r in caplog.records if r.getMessage() == "fan-out to a connection failed; closing it"]
    assert len(failed) == 1 and failed[0].exc_info is not None


def test_a_fan_out_alternates_transports_in_proportion_so_neither_waits_for_the_other() -> None:
    """1,000 WebSocket clients attached before 500 SSE ones: by the time half the writes of an
    event (or a batch) are done, about half of each transport's clients have theirs, rather
    than every WebSocket client first."""
    hub = make_hub(max_per_user=2000)
    order: list[str] = []

    class Recording(FakeTransport):
        def send_event(self, encoded: Encoded) -> None:
            order.append(self.kind)

        def send_batch(self, selection: Selection) -> None:
            order.append(self.kind)

    class RecordingSSE(Recording):
        kind: ClassVar[TransportName] = TransportName.SSE

    for n in range(1000):
        attach(hub, n, Recording())
    for n in range(1000, 1500):
        attach(hub, n, RecordingSSE())

    def one() -> None:
        hub.deliver(encoded(1))

    def batch() -> None:
        hub.deliver_many([encoded(2), encoded(3)])

    for deliver in (one, batch):
        order.clear()
        deliver()
        assert len(order) == 1500
        first_half = order[:750]
        assert 0.4 <= first_half.count("sse") / 500 <= 0.6, first_half.count("sse")
        assert 0.4 <= first_half.count("websocket") / 1000 <= 0.6, first_half.count("websocket")


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


# -- batches (issue 25) --------------------------------------------------------------------


def frames(*numbers: int) -> bytes:
    return b"".join(encoded(n).ws_frame for n in numbers)


def test_a_single_ready_event_is_one_write_of_its_own_frame() -> None:
    """An idle service: one event ready is written alone, at once, as its own frame."""
    hub = make_hub()
    _, transport = attach(hub, 1)
    hub.deliver_many([encoded(1)])
    assert transport.writes == [frames(1)]


def test_a_batch_is_one_write_per_connection_with_the_frames_in_order() -> None:
    """Three events ready together: each connection gets one write, the three frames in order."""
    hub = make_hub()
    _, first = attach(hub, 1)
    _, second = attach(hub, 2)
    hub.deliver_many([encoded(1), encoded(2), encoded(3)])
    assert first.writes == second.writes == [frames(1, 2, 3)]
    assert first.events == [encoded(n).event.id for n in (1, 2, 3)]


def test_connections_with_the_same_filters_share_one_bytes_object() -> None:
    """The concatenation is built once per group, not once per client."""
    hub = make_hub(max_per_user=10)
    transports = [attach(hub, n)[1] for n in range(5)]
    hub.deliver_many([encoded(1), encoded(2)])
    assert len({id(t.writes[0]) for t in transports}) == 1


def test_filters_and_to_stay_exact_per_connection_within_a_batch() -> None:
    """Subscriptions and `to` (users, roles) pick each connection's events out of one batch."""
    hub = make_hub(max_per_user=10)
    every = Connection(FakeTransport(), principal(1))
    notes = Connection(FakeTransport(), principal(2), subscriptions=frozenset({"note"}))
    admin = Connection(FakeTransport(), principal(3, roles=("admin",)))
    user_4 = Connection(FakeTransport(), principal(4))
    for connection in (every, notes, admin, user_4):
        hub.attach(connection)
    batch = [
        encoded(1),
        encoded(2, "alert"),
        encoded(3, audience=Audience(frozenset({4}), frozenset())),
        encoded(4, "alert", audience=Audience(frozenset(), frozenset({"admin"}))),
        encoded(5),
    ]
    hub.deliver_many(batch)

    def of(*numbers: int) -> list[bytes]:
        return [b"".join(batch[n - 1].ws_frame for n in numbers)]

    got = {c.principal.user_id: c.transport.writes for c in (every, notes, admin, user_4)}  # type: ignore[attr-defined]
    assert got == {1: of(1, 2, 5), 2: of(1, 5), 3: of(1, 2, 4, 5), 4: of(1, 2, 3, 5)}


def test_a_connection_that_already_has_part_of_a_batch_gets_only_the_rest() -> None:
    """Resume positions stay exact: events at or before `last_event_id` are not sent again."""
    hub = make_hub()
    connection, transport = attach(hub, 1)
    connection.last_event_id = encoded(2).event.id
    hub.deliver_many([encoded(1), encoded(2), encoded(3), encoded(4)])
    assert transport.writes == [frames(3, 4)] and connection.last_event_id == encoded(4).event.id


def test_a_replaying_connection_holds_a_batch_and_sends_it_after_the_replay() -> None:
    """While it replays, a batch is held event by event, then sent after the replayed history."""
    hub = make_hub()
    connection, transport = attach(hub, 1)
    connection.begin_replay()
    hub.deliver_many([encoded(2), encoded(3)])
    assert transport.writes == []
    connection.finish_replay([encoded(1)])
    assert transport.events == [encoded(n).event.id for n in (1, 2, 3)]


def test_write_delay_holds_events_and_sends_them_as_one_batch() -> None:
    """WRITE_DELAY_MS > 0: events ready within the delay go out together when it ends."""
    clock = FakeClock()
    hub = Hub(Metrics(), max_pending_bytes=1024, max_per_user=2, write_delay_seconds=0.01, call_later=clock.call_later)
    _, transport = attach(hub, 1)
    hub.deliver_many([encoded(1)])
    clock.advance(0.005)
    hub.deliver_many([encoded(2), encoded(3)])
    assert transport.writes == [] and len(clock.pending()) == 1
    clock.advance(0.005)
    assert transport.writes == [frames(1, 2, 3)] and clock.pending() == []
    hub.deliver_many([encoded(4)])
    clock.advance(0.01)
    assert transport.writes == [frames(1, 2, 3), frames(4)]


def test_without_write_delay_no_timer_is_set() -> None:
    """WRITE_DELAY_MS=0 (the default): each event is written at once, no timer."""
    clock = FakeClock()
    hub = Hub(Metrics(), max_pending_bytes=1024, max_per_user=2, call_later=clock.call_later)
    _, transport = attach(hub, 1)
    hub.deliver_many([encoded(1)])
    assert transport.writes == [frames(1)] and clock.timers == []


def test_batch_metrics_are_observed_once_per_event() -> None:
    """A batch of 3 to a WebSocket and an SSE client: 3 latencies per transport, 3 fan-out
    durations, 6 messages, and one batch-size observation of 3."""
    metrics = Metrics()
    hub = make_hub(metrics=metrics)
    attach(hub, 1)
    attach(hub, 2, FakeSSETransport())
    hub.deliver_many([encoded(1), encoded(2), encoded(3)])
    sample = metrics.registry.get_sample_value
    for kind in ("websocket", "sse"):
        assert sample("realtime_broadcast_latency_seconds_count", {"transport": kind}) == 3
        assert value(metrics, "realtime_messages_sent_total", kind) == 3
    assert sample("realtime_fanout_duration_seconds_count", {}) == 3
    assert (sample("realtime_fanout_batch_size_count", {}), sample("realtime_fanout_batch_size_sum", {})) == (1, 3)


def test_latency_is_observed_only_for_events_a_transport_got() -> None:
    """An event no SSE client wants adds no SSE latency observation."""
    metrics = Metrics()
    hub = make_hub(metrics=metrics)
    attach(hub, 1)
    hub.attach(Connection(FakeSSETransport(), principal(2), subscriptions=frozenset({"note"})))
    hub.deliver_many([encoded(1), encoded(2, "alert")])
    sample = metrics.registry.get_sample_value
    assert sample("realtime_broadcast_latency_seconds_count", {"transport": "websocket"}) == 2
    assert sample("realtime_broadcast_latency_seconds_count", {"transport": "sse"}) == 1
