"""Bus without MongoDB: change → history → hub, and resume from memory (the store is not touched;
replay from the store is tested against SecantusDB in test_delivery.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from bson import Timestamp

from metrics.registry import Metrics
from service.bus import Bus
from service.connection import Connection
from service.events import event_id
from service.hub import Hub
from tests.fakes import FakeTransport, principal

T0 = 1_700_000_000  # in the past: ids from the future are refused


def change(inc: int, event_type: str = "note", **fields: object) -> dict[str, object]:
    """A change stream insert notification for an event at oplog position (T0, inc)."""
    doc = {"type": event_type, "createdAt": datetime(2030, 3, 17, tzinfo=UTC), **fields}
    return {"_id": {"_data": str(inc)}, "clusterTime": Timestamp(T0, inc), "fullDocument": doc}


def eid(inc: int) -> str:
    return event_id(Timestamp(T0, inc))


def make_bus(history_size: int = 3) -> tuple[Bus, FakeTransport]:
    metrics = Metrics()
    hub = Hub(metrics, max_pending_bytes=1024, max_per_user=5)
    transport = FakeTransport()
    hub.attach(Connection(transport, principal()))
    bus = Bus(None, hub, metrics, history_size=history_size)  # type: ignore[arg-type]  # memory paths only
    bus.covered_from = eid(0)  # as `start` sets it: everything after position 0 is seen
    return bus, transport


def test_a_change_is_delivered_and_kept_for_resume() -> None:
    """`handle` encodes the event once, hands it to the hub and appends it to history."""
    bus, transport = make_bus()
    bus.handle(change(1, text="مرحبا"))
    assert transport.events == [eid(1)] and [e.event.id for e in bus.history] == [eid(1)]
    assert bus.history[0].event.fields["text"] == "مرحبا"


def test_a_document_that_is_not_an_event_is_ignored() -> None:
    """A bad `type` (inserted by another program) reaches no client and no history."""
    bus, transport = make_bus()
    bus.handle(change(1, event_type="Bad Type!"))
    assert transport.events == [] and len(bus.history) == 0


def test_recent_since_returns_the_events_after_an_id_from_memory() -> None:
    """Resume from memory: exactly the events after the client's id, in order."""
    bus, _ = make_bus()
    for inc in (1, 2, 3):
        bus.handle(change(inc))
    assert [e.event.id for e in bus.recent_since(eid(1)) or []] == [eid(2), eid(3)]
    assert bus.recent_since(eid(3)) == []


def test_history_is_bounded_and_coverage_moves_with_it() -> None:
    """Past `history_size`, the oldest event leaves memory and an id before it is no longer covered."""
    bus, _ = make_bus(history_size=3)
    for inc in (1, 2, 3, 4, 5):
        bus.handle(change(inc))
    assert [e.event.id for e in bus.history] == [eid(3), eid(4), eid(5)]
    assert bus.recent_since(eid(1)) is None
    assert [e.event.id for e in bus.recent_since(eid(3)) or []] == [eid(4), eid(5)]


def test_replay_since_refuses_ids_that_are_not_ours_or_from_the_future() -> None:
    """A malformed id or one far in the future means resync (None), not an empty replay."""
    bus, _ = make_bus()
    assert asyncio.run(bus.replay_since("not-an-id")) is None
    assert asyncio.run(bus.replay_since("ffffffff00000001")) is None


def test_replay_since_a_covered_id_is_served_from_memory() -> None:
    """Within memory, replay needs no store."""
    bus, _ = make_bus()
    for inc in (1, 2):
        bus.handle(change(inc))
    replayed = asyncio.run(bus.replay_since(eid(1)))
    assert [e.event.id for e in replayed or []] == [eid(2)]
