"""Bus without MongoDB: change → history → hub, resume from memory, and replay logic against an
in-memory change feed (paging, the memory boundary, saved positions, the gate). Replay against SecantusDB
is tested in test_delivery.py and test_resume_limits.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from metrics.registry import Metrics
from service.core.errors import ReplayBusy, StoreUnavailable
from service.core.events import Change, Position, ResumeToken, event_id
from service.fanout.bus import POSITION_EVERY, WARM_SEGMENT, Bus, sampled
from service.fanout.connection import Connection
from service.fanout.hub import Hub
from service.fanout.replay import ReplayGate
from tests.fakes import FakeTransport, MemoryChangeFeed, MemoryChangeStream, principal

T0 = int(time.time()) - 3600  # an hour ago: inside the history TTL, not from the future


def change(inc: int, event_type: str = "note", **fields: object) -> Change:
    """The change feed's insert of an event at oplog position (T0, inc)."""
    doc = {"type": event_type, "createdAt": datetime(2030, 3, 17, tzinfo=UTC), **fields}
    return Change(Position(T0, inc), {"_data": str(inc)}, doc)


def eid(inc: int) -> str:
    return event_id(Position(T0, inc))


def handle(bus: Bus, *changes: Change) -> None:
    """`bus.handle` each change in an event loop (a sampled position is saved by a task)."""

    async def run() -> None:
        for c in changes:
            bus.handle(c)
        await asyncio.sleep(0)

    asyncio.run(run())


def make_bus(history_size: int = 3) -> tuple[Bus, FakeTransport]:
    metrics = Metrics()
    hub = Hub(metrics, max_pending_bytes=1024, max_per_user=5)
    transport = FakeTransport()
    hub.attach(Connection(transport, principal()))
    bus = Bus(MemoryChangeFeed(), hub, metrics, history_size=history_size)
    bus.covered_from = eid(0)  # as `start` sets it: everything after position 0 is seen
    return bus, transport


def test_a_change_is_delivered_and_kept_for_resume() -> None:
    """`handle` encodes the event once, hands it to the hub and appends it to history."""
    bus, transport = make_bus()
    handle(bus, change(1, text="مرحبا"))
    assert transport.events == [eid(1)] and [e.event.id for e in bus.history] == [eid(1)]
    assert bus.history[0].event.fields["text"] == "مرحبا"


def test_a_document_that_is_not_an_event_is_ignored() -> None:
    """A bad `type` (inserted by another program) reaches no client and no history."""
    bus, transport = make_bus()
    handle(bus, change(1, event_type="Bad Type!"))
    assert transport.events == [] and len(bus.history) == 0


def test_changes_read_together_are_one_write_and_all_kept_for_resume() -> None:
    """`handle_batch`: every valid change is in history, and a client gets them in one write."""
    bus, transport = make_bus(history_size=5)

    async def run() -> None:
        bus.handle_batch([change(1), change(2, event_type="Bad Type!"), change(3)])

    asyncio.run(run())
    assert [e.event.id for e in bus.history] == [eid(1), eid(3)]
    assert transport.events == [eid(1), eid(3)]
    assert transport.writes == [bus.history[0].ws_frame + bus.history[1].ws_frame]


def test_recent_since_returns_the_events_after_an_id_from_memory() -> None:
    """Resume from memory: exactly the events after the client's id, in order."""
    bus, _ = make_bus()
    handle(bus, *(change(inc) for inc in (1, 2, 3)))
    assert [e.event.id for e in bus.recent_since(eid(1)) or []] == [eid(2), eid(3)]
    assert bus.recent_since(eid(3)) == []


def test_history_is_bounded_and_coverage_moves_with_it() -> None:
    """Past `history_size`, the oldest event leaves memory and an id before it is no longer covered."""
    bus, _ = make_bus(history_size=3)
    handle(bus, *(change(inc) for inc in (1, 2, 3, 4, 5)))
    assert [e.event.id for e in bus.history] == [eid(3), eid(4), eid(5)]
    assert bus.recent_since(eid(1)) is None
    assert [e.event.id for e in bus.recent_since(eid(3)) or []] == [eid(4), eid(5)]


def test_open_replay_refuses_ids_that_are_not_ours_from_the_future_or_past_the_ttl() -> None:
    """A malformed id, one far in the future, or one older than HISTORY_TTL_SECONDS means resync (None)."""
    bus, _ = make_bus()
    for last_id in ("not-an-id", "ffffffff00000001", event_id(Position(T0 - 86_400, 1))):
        assert asyncio.run(bus.open_replay(last_id, everything, 1)) is None


def test_a_covered_id_is_replayed_from_memory_in_one_page() -> None:
    """Within memory, replay needs no store: one page, done."""
    bus, _ = make_bus()
    handle(bus, change(1), change(2))
    page = asyncio.run(first_page(bus, eid(1)))
    assert ids(page.events) == [eid(2)] and page.done


def everything(_: object) -> bool:
    return True


def ids(events: list[Any]) -> list[str]:
    return [e.event.id for e in events]


async def first_page(bus: Bus, last_id: str) -> Any:
    replay = await bus.open_replay(last_id, everything, 1)
    assert replay is not None
    try:
        return await replay.next_page()
    finally:
        await replay.close()


async def replay_all(bus: Bus, last_id: str) -> list[str]:
    replay = await bus.open_replay(last_id, everything, 1)
    assert replay is not None
    got: list[str] = []
    try:
        for _ in range(100):
            page = await replay.next_page()
            got += ids(page.events)
            if page.done:
                return got
    finally:
        await replay.close()
    raise AssertionError("replay never finished")


def store_bus(events: int, history_size: int, *, page_size: int = 1000) -> tuple[Bus, MemoryChangeFeed]:
    """A bus whose memory holds the last `history_size` of `events` events, over a change feed
    holding them all with a saved position at event 1 (call it in an event loop)."""
    oplog = [change(inc) for inc in range(1, events + 1)]
    store = MemoryChangeFeed(oplog)
    store.positions[eid(1)] = oplog[0].token
    metrics = Metrics()
    hub = Hub(metrics, max_pending_bytes=1024, max_per_user=5)
    bus = Bus(store, hub, metrics, history_size=history_size)
    bus.covered_from = eid(0)
    for c in oplog:
        bus.handle(c)
    bus.page_size = page_size
    return bus, store


def test_a_store_replay_reads_pages_then_switches_to_memory() -> None:
    """Older than memory: the store from the saved position, skipping what the client has, then memory."""

    async def run() -> list[str]:
        bus, store = store_bus(10, history_size=4, page_size=2)
        got = await replay_all(bus, eid(3))
        assert store.opened == [{"_data": "1"}] and all(s.closed for s in store.streams)
        return got

    assert asyncio.run(run()) == [eid(i) for i in range(4, 11)]


def test_a_page_is_the_events_after_the_client_however_far_back_the_saved_position() -> None:
    """The newest saved position lies further behind the client's id than a page (a burst left
    positions sparse): the events between it and the id are read past, not counted, so a poll's
    one page still brings the next `page_size` events instead of an empty page for ever."""

    async def run() -> list[list[str]]:
        bus, _ = store_bus(20, history_size=2, page_size=3)
        pages = []
        after = eid(10)
        for _ in range(2):  # two polls, each one page of a fresh replay from its cursor
            replay = await bus.open_replay(after, everything, 1)
            assert replay is not None
            try:
                page = await replay.next_page()
            finally:
                await replay.close()
            pages.append(ids(page.events))
            after = page.position
        return pages

    assert asyncio.run(run()) == [[eid(11), eid(12), eid(13)], [eid(14), eid(15), eid(16)]]


def test_memory_moving_its_boundary_during_a_store_read_loses_no_event() -> None:
    """Live events evicting memory while the store is read (issue 27's boundary race): the replay
    reads on from the store instead of trusting memory it checked before the await."""

    async def run() -> list[str]:
        bus, store = store_bus(8, history_size=3, page_size=3)
        live = iter(range(9, 30))

        def push_live(read: Change) -> None:
            if read.position.inc == 5:  # while page 1 is read, three live events evict 6, 7, 8
                for _ in range(3):
                    inc = next(live)
                    store.oplog.append(change(inc))
                    bus.handle(store.oplog[-1])
                    for stream in store.streams:
                        stream.changes.append(store.oplog[-1])

        store.on_read = push_live
        return await replay_all(bus, eid(2))

    assert asyncio.run(run()) == [eid(i) for i in range(3, 12)]


def test_a_position_older_than_every_saved_one_is_resync() -> None:
    """Nothing proves the history before the oldest saved position is whole: resync."""

    async def run() -> object:
        bus, store = store_bus(5, history_size=2)
        store.positions.clear()
        store.positions[eid(3)] = {"_data": "3"}
        return await bus.open_replay(eid(2), everything, 1)

    assert asyncio.run(run()) is None


def test_a_pruned_position_is_resync() -> None:
    """MongoDB pruned the saved position (ChangeStreamHistoryLost): resync, not a short replay."""

    async def run() -> object:
        bus, store = store_bus(5, history_size=2)
        store.pruned_below = 2
        return await bus.open_replay(eid(1), everything, 1)

    assert asyncio.run(run()) is None


def test_positions_are_saved_as_events_pass() -> None:
    """Some events' positions (the same ones on every process, plus one per 4 × POSITION_EVERY) are saved."""

    async def run() -> MemoryChangeFeed:
        bus, store = store_bus(600, history_size=10)
        store.positions.clear()
        bus2 = Bus(store, bus._hub, Metrics(), history_size=10)
        for c in store.oplog:
            bus2.handle(c)
        for _ in range(10):
            await asyncio.sleep(0)
        return store

    store = asyncio.run(run())
    assert store.positions and set(store.positions) <= {eid(i) for i in range(1, 601)}
    assert all(store.positions[key] == {"_data": str(int(key[8:], 16))} for key in store.positions)


def test_an_idle_bus_resumes_from_where_it_opened_not_from_now() -> None:
    """Before its first change the bus holds the open's own token, and reopens there after a failure."""

    async def run() -> list[ResumeToken | None]:
        store = MemoryChangeFeed()
        metrics = Metrics()
        bus = Bus(store, Hub(metrics, max_pending_bytes=1024, max_per_user=5), metrics, history_size=3)
        bus.covered_from = eid(0)
        stream = MemoryChangeStream([], fail_at=0)
        store.streams.append(stream)
        bus._resume_token = stream.resume_token
        task = asyncio.create_task(bus._run(stream))
        for _ in range(200):
            if store.opened:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return store.opened

    assert asyncio.run(run())[:1] == [{"_data": "start"}]


def test_a_fan_out_that_raises_reopens_the_stream_where_it_stood_and_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug that raises out of a fan-out (here the hub's, once, after it sent the batch) is logged
    with its traceback and the stream reopened at the last position it had fully handled; what it
    reads again is not handled again: the client gets every event once and in order, and history
    holds each once. Before, the bus task ended with the
    exception unseen: the process went on answering /readyz as ready and delivered nothing."""

    async def run() -> tuple[list[str], list[str], list[ResumeToken | None]]:
        store = MemoryChangeFeed([change(1), change(2), change(3)])
        metrics = Metrics()
        hub = Hub(metrics, max_pending_bytes=1024, max_per_user=5)
        transport = FakeTransport()
        hub.attach(Connection(transport, principal()))
        bus = Bus(store, hub, metrics, history_size=10)
        bus.covered_from = eid(0)
        deliver_many = hub.deliver_many
        calls = 0

        def flaky(events: Any) -> None:
            nonlocal calls
            calls += 1
            deliver_many(events)  # the first event went out, then the failure
            if calls == 1:
                raise RuntimeError("boom")

        hub.deliver_many = flaky  # type: ignore[method-assign]
        stream = await store.watch_events()
        bus._resume_token = stream.resume_token
        task = asyncio.create_task(bus._run(stream))
        for _ in range(500):  # until the reopened stream has read all three again (and, in the
            if len(store.streams) == 2 and not store.streams[1].changes:  # same step, handled them)
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return transport.events, [e.event.id for e in bus.history], store.opened

    with caplog.at_level(logging.ERROR, logger="service.fanout.bus"):
        events, history, opened = asyncio.run(run())
    assert events == history == [eid(1), eid(2), eid(3)]
    assert opened == [None, {"_data": "start"}]  # reopened before the change that raised
    failed = [r for r in caplog.records if r.getMessage().startswith("change stream failed")]
    assert len(failed) == 1 and failed[0].exc_info is not None


def test_the_gate_bounds_replays_per_user_and_in_all() -> None:
    """Per user, then per process, then a bounded wait: past them, ReplayBusy; a release frees a slot."""

    async def run() -> None:
        gate = ReplayGate(2, per_user=2, queue=1, wait_seconds=0.05)
        a1 = await gate.acquire("a")
        await gate.acquire("a")
        with pytest.raises(ReplayBusy, match="this user"):
            await gate.acquire("a")
        with pytest.raises(ReplayBusy, match="no replay slot"):
            await gate.acquire("b")  # waits, then gives up
        waiting = asyncio.create_task(gate.acquire("c"))
        await asyncio.sleep(0)
        with pytest.raises(ReplayBusy, match="queue full"):
            await gate.acquire("d")
        a1.release()
        a1.release()  # idempotent
        ticket = await waiting
        assert gate.running == 2 and gate.users() == 2
        ticket.release()

    asyncio.run(run())


def warm_bus(events: int, history_size: int, saved: tuple[int, ...]) -> tuple[Bus, MemoryChangeFeed]:
    """A bus just started after `events` events, its memory empty, with positions saved at
    `saved` (call it in an event loop)."""
    oplog = [change(inc) for inc in range(1, events + 1)]
    store = MemoryChangeFeed(oplog)
    for inc in saved:
        store.positions[eid(inc)] = oplog[inc - 1].token
    metrics = Metrics()
    bus = Bus(store, Hub(metrics, max_pending_bytes=1024, max_per_user=5), metrics, history_size=history_size)
    bus.covered_from = eid(events)  # as `start` sets it: its stream sees what comes after
    return bus, store


def test_a_starting_bus_reads_the_events_before_its_start_back_into_memory() -> None:
    """The warm-up reads from a saved position about HISTORY_SIZE events back up to the stream's
    start: a resume from before the start is then one memory page, and MongoDB was read once."""

    async def run() -> None:
        bus, store = warm_bus(300, history_size=500, saved=(1, 100, 200))
        await bus._warm(eid(300))
        assert ids(list(bus.history)) == [eid(i) for i in range(2, 301)]
        assert bus.covered_from == eid(1) and store.opened == [{"_data": "1"}]
        assert await replay_all(bus, eid(150)) == [eid(i) for i in range(151, 301)]
        assert store.opened == [{"_data": "1"}]
        assert bus._metrics.sample("realtime_replays_total", source="memory") == 1
        assert bus._metrics.sample("realtime_replays_total", source="store") == 0

    asyncio.run(run())


def test_a_warm_up_keeps_what_memory_holds_and_coverage_says_so() -> None:
    """More events than HISTORY_SIZE since the position read from: the newest are kept, and
    `covered_from` is the first one kept, so an older resume still replays from MongoDB, whole."""

    mark = next(inc for inc in range(200, 1, -1) if sampled(eid(inc)))  # a position every process saves

    async def run() -> None:
        bus, store = warm_bus(250, history_size=30, saved=(1, mark))
        await bus._warm(eid(250))
        assert store.opened == [{"_data": str(mark)}]  # 30 // POSITION_EVERY = 0 back: the newest sampled
        assert ids(list(bus.history)) == [eid(i) for i in range(221, 251)] and bus.covered_from == eid(221)
        assert await replay_all(bus, eid(210)) == [eid(i) for i in range(211, 251)]
        assert bus._metrics.sample("realtime_replays_total", source="store") == 1

    asyncio.run(run())


def test_a_warm_up_counts_only_sampled_positions_back() -> None:
    """Saved positions are denser than the sampled ones (each start, and forced ones; here one
    every 50 events besides): the warm-up goes back HISTORY_SIZE // POSITION_EVERY sampled
    positions, not that many saved."""
    history_size = 2 * POSITION_EVERY

    def layout(until: int) -> tuple[list[int], set[int]]:
        marks = [inc for inc in range(until - 1, 0, -1) if sampled(eid(inc))]
        return marks, {*marks, *range(50, until, 50)}

    # An end whose 24 newest saved positions (what is read for 2 back) hold 3 sampled ones, as
    # they do but for one time in thousands (the ids, hence the sampling, follow the clock).
    until = next(u for u in range(3000, 4000) if len(set(layout(u)[0][:3]) & set(sorted(layout(u)[1])[-24:])) == 3)
    marks, saved = layout(until)

    async def run() -> None:
        bus, store = warm_bus(until, history_size=history_size, saved=tuple(saved))
        await bus._warm(eid(until))
        assert store.opened == [{"_data": str(marks[2])}]
        first = max(marks[2] + 1, until - history_size + 1)
        assert ids(list(bus.history)) == [eid(i) for i in range(first, until + 1)]

    asyncio.run(run())


def test_a_warm_up_merges_with_live_events_each_once() -> None:
    """The live stream opened before the start position was read, so it may already hold
    events the warm-up reads too; live events keep arriving while it reads. Memory ends with
    each event once, in order."""

    async def run() -> None:
        bus, store = warm_bus(250, history_size=500, saved=(1, 100))
        bus.handle_batch([change(249), change(250)])  # seen live before the warm-up got there
        live = iter(range(251, 256))

        def more_live(_: Change) -> None:
            if (inc := next(live, None)) is not None:
                bus.handle(change(inc))

        store.on_read = more_live
        await bus._warm(eid(250))
        assert ids(list(bus.history)) == [eid(i) for i in range(2, 256)] and bus.covered_from == eid(1)

    asyncio.run(run())


def test_a_pruned_position_warms_from_a_newer_one_and_a_failure_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The oldest positions pruned from the oplog: the warm-up tries newer ones. MongoDB gone:
    a WARNING, and memory covers from the start as without a warm-up."""

    async def run() -> None:
        bus, store = warm_bus(300, history_size=500, saved=(1, 100, 200))
        store.pruned_below = 150
        await bus._warm(eid(300))
        assert store.opened[-1] == {"_data": "200"} and bus.covered_from == eid(200)
        assert ids(list(bus.history)) == [eid(i) for i in range(201, 301)]

        bus, store = warm_bus(300, history_size=500, saved=(1, 100))

        async def gone(**_: Any) -> Any:
            raise StoreUnavailable("connection refused")

        store.watch_events = gone  # type: ignore[method-assign]
        await bus._warm(eid(300))
        assert not bus.history and bus.covered_from == eid(300)

    with caplog.at_level(logging.WARNING, logger="service.fanout.bus"):
        asyncio.run(run())
    assert [r.getMessage()[:22] for r in caplog.records] == ["memory warm-up stopped"]


def test_the_warm_up_reads_newest_first_and_a_recent_resume_does_not_wait_for_the_rest() -> None:
    """HISTORY_SIZE = 2,048 is two segments back (32 sampled positions): the newest ~1,000
    events land in memory first, and a client that was following live is answered from them
    while the older segment is still being read; then memory holds both, each event once."""
    until = 6000
    marks = [inc for inc in range(until - 1, 0, -1) if sampled(eid(inc))]
    assert len(marks) > 2 * WARM_SEGMENT
    released = asyncio.Event()

    async def run() -> None:
        bus, store = warm_bus(until, history_size=2 * WARM_SEGMENT * POSITION_EVERY, saved=tuple(marks))
        watch = store.watch_events

        async def second_waits(**kwargs: Any) -> Any:
            if len(store.opened) == 1:
                await released.wait()  # the older segment's read has not begun
            return await watch(**kwargs)

        store.watch_events = second_waits  # type: ignore[method-assign]
        bus._warming = asyncio.create_task(bus._warm(eid(until)))
        recent = marks[WARM_SEGMENT - 1] + 10
        assert await replay_all(bus, eid(recent)) == [eid(i) for i in range(recent + 1, until + 1)]
        assert not bus._warming.done() and bus.covered_from == eid(marks[WARM_SEGMENT - 1])
        released.set()
        await bus._warming
        oldest = marks[2 * WARM_SEGMENT]  # HISTORY_SIZE // POSITION_EVERY sampled positions back
        assert store.opened == [{"_data": str(marks[WARM_SEGMENT - 1])}, {"_data": str(oldest)}]
        first = max(oldest + 1, until - 2 * WARM_SEGMENT * POSITION_EVERY + 1)  # as many as memory holds
        assert ids(list(bus.history)) == [eid(i) for i in range(first, until + 1)]
        assert bus.covered_from == (eid(oldest) if first == oldest + 1 else eid(first))

    asyncio.run(run())


def test_history_lost_during_a_warm_up_drops_it() -> None:
    """The live stream's position was pruned while the warm-up read: what it read is not put in
    front of the memory that starts again."""

    async def run() -> None:
        bus, store = warm_bus(100, history_size=500, saved=(1,))
        store.on_read = lambda c: bus._history_lost() if c.position.inc == 50 else None
        await bus._warm(eid(100))
        assert not bus.history and bus.covered_from is None

    asyncio.run(run())


def test_a_resume_during_the_warm_up_waits_for_it_instead_of_reading_mongodb() -> None:
    """Resumes that come while the warm-up reads (a replaced replica's clients) are answered
    from memory once it is done: the warm-up is the only read of MongoDB."""

    async def run() -> None:
        bus, store = warm_bus(300, history_size=500, saved=(1,))
        bus._warming = asyncio.create_task(bus._warm(eid(300)))
        got = await asyncio.gather(*(replay_all(bus, eid(n)) for n in (10, 100, 299)))
        assert [len(g) for g in got] == [290, 200, 1] and store.opened == [{"_data": "1"}]
        assert bus._metrics.sample("realtime_replays_total", source="memory") == 3

    asyncio.run(run())
