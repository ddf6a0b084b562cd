"""Presence against an in-memory `PresenceStore`: the hub hooks' counting, what a flush writes
(user-level transitions only: arrive, counts, depart), the heartbeat refresh, the sweep (dead
processes, graces that ran out, the gauge), and that a store raising `StoreUnavailable` loses
nothing: the step fails, the transition is kept and written by the next one.

No MongoDB and no loop timing: each step (`flush`, `_refresh`, `_sweep`) is awaited directly,
with a clock the test sets. The MongoDB side is in tests/integration (test_presence*.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import warnings
from collections.abc import Callable, Collection, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from metrics.registry import Metrics
from service.core.errors import StoreError, StoreUnavailable
from service.core.events import Event, Position, event_id
from service.core.ports import PresenceStore, Record, UserId
from service.fanout.hub import Hub
from service.fanout.presence import (
    EVENTS_RECENT_SECONDS,
    FLUSH_SECONDS,
    JOIN_CHUNK,
    JOIN_CHUNK_BEHIND_EVENTS,
    JOIN_WAIT_SECONDS,
    LOST_CHECK_BEATS,
    ORPHAN_HEARTBEATS,
    STALE_HEARTBEATS,
    WRITE_CHUNK,
    Presence,
)
from service.protocol.wire import Encoded, encode_event

T0 = datetime(2030, 3, 17, 12, 0, tzinfo=UTC)


class MemoryPresenceStore:
    """A `PresenceStore` over three dicts, like the three collections; records every call, and
    raises `StoreUnavailable` (or `error`) from the methods named in `failing`."""

    def __init__(self) -> None:
        self.docs: dict[str, Record] = {}  # `presence`: per (process, user)
        self.processes: dict[str, datetime] = {}  # `presence_processes`: heartbeat per process
        self.new: list[list[UserId]] = []  # `new` of each presence_write
        self.users: dict[UserId, Record] = {}  # `presence_users`: per user, online or leaving
        self.joined: list[UserId] = []  # `presence_joined` events
        self.left: list[UserId] = []  # `presence_left` events
        self.backstop_at: datetime | None = None  # `presence_fleet`: when the orphan backstop last ran
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.failing: set[str] = set()
        self.error: StoreError = StoreUnavailable("connection refused")
        # The change stream: handed each call's `presence_joined` before the call returns (a
        # stream that keeps up), or None (one that has not shown them yet).
        self.stream: Callable[[list[Encoded]], None] | None = None

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if name in self.failing:
            raise self.error

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]

    async def presence_write(
        self,
        process: str,
        upserts: Mapping[UserId, tuple[str, Mapping[str, int]]],
        removals: list[UserId],
        now: datetime,
        *,
        new: Collection[UserId] = (),
    ) -> None:
        self._call("presence_write", process, dict(upserts), list(removals), now)
        self.new.append(sorted(new, key=repr))
        for user_id, (name, counts) in upserts.items():
            doc_id = f"{process}|{user_id!r}"
            self.docs[doc_id] = {
                "_id": doc_id,
                "process": process,
                "userId": user_id,
                "userName": name,
                "counts": dict(counts),
            }
        for user_id in removals:
            self.docs.pop(f"{process}|{user_id!r}", None)

    async def presence_refresh(self, process: str, now: datetime) -> bool:
        self._call("presence_refresh", process, now)
        kept = process in self.processes
        self.processes[process] = now
        return kept

    async def presence_remove_process(self, process: str) -> None:
        self._call("presence_remove_process", process)
        self.docs = {key: doc for key, doc in self.docs.items() if doc["process"] != process}
        self.processes.pop(process, None)

    async def presence_stale_processes(self, before: datetime) -> list[Record]:
        self._call("presence_stale_processes", before)
        return [{"_id": process, "seenAt": seen} for process, seen in self.processes.items() if seen < before]

    async def presence_sweep_process(self, process: str, seen_at: datetime) -> list[UserId] | None:
        self._call("presence_sweep_process", process, seen_at)
        if self.processes.get(process) != seen_at:
            return None
        del self.processes[process]
        users = [doc["userId"] for doc in self.docs.values() if doc["process"] == process]
        self.docs = {key: doc for key, doc in self.docs.items() if doc["process"] != process}
        return users

    async def presence_arrive_many(self, users: Mapping[UserId, str], now: datetime) -> list[UserId]:
        self._call("presence_arrive_many", dict(users), now)
        joined: list[UserId] = []
        for user_id, user_name in users.items():
            if user_id in self.users:
                self.users[user_id].update(state="online", userName=user_name)
                self.users[user_id].pop("leavingSince", None)
            else:
                self.users[user_id] = {"_id": user_id, "state": "online", "userName": user_name}
                self.joined.append(user_id)
                joined.append(user_id)
        if self.stream is not None:
            self.stream([joined_event(user_id) for user_id in joined])
        return joined

    async def presence_finish_joins(self, now: datetime) -> None:
        self._call("presence_finish_joins", now)

    async def presence_depart(self, user_id: UserId, since: datetime) -> None:
        self._call("presence_depart", user_id, since)
        user = self.users.get(user_id)
        if user is not None and user["state"] == "online":
            user.update(state="leaving", leavingSince=since)

    async def presence_depart_many(self, user_ids: list[UserId], since: datetime) -> None:
        self._call("presence_depart_many", list(user_ids), since)
        for user_id in user_ids:
            user = self.users.get(user_id)
            if user is not None and user["state"] == "online":
                user.update(state="leaving", leavingSince=since)

    async def presence_stale(self, before: datetime) -> list[Record]:
        self._call("presence_stale", before)
        return [dict(doc) for doc in self.docs.values() if "seenAt" in doc and doc["seenAt"] < before]

    async def presence_claim_stale(self, doc_id: str, seen_at: datetime) -> bool:
        self._call("presence_claim_stale", doc_id, seen_at)
        doc = self.docs.get(doc_id)
        if doc is None or doc.get("seenAt") != seen_at:
            return False
        del self.docs[doc_id]
        return True

    async def presence_claim_backstop(self, now: datetime, every: timedelta) -> bool:
        self._call("presence_claim_backstop", now, every)
        if self.backstop_at is not None and self.backstop_at > now - every:
            return False
        self.backstop_at = now
        return True

    async def presence_mark_orphans(self, now: datetime) -> None:
        self._call("presence_mark_orphans", now)
        present = {doc["userId"] for doc in self.docs.values()}
        for user_id, user in self.users.items():
            if user["state"] == "online" and user_id not in present:
                user.update(state="leaving", leavingSince=now)

    async def presence_leaving(self, before: datetime) -> list[Record]:
        self._call("presence_leaving", before)
        return [dict(u) for u in self.users.values() if u["state"] == "leaving" and u["leavingSince"] < before]

    async def presence_settle(self, user_id: UserId, leaving_since: datetime, now: datetime) -> bool:
        self._call("presence_settle", user_id, leaving_since, now)
        user = self.users.get(user_id)
        if user is None or user["state"] != "leaving" or user["leavingSince"] != leaving_since:
            return False
        if any(doc["userId"] == user_id for doc in self.docs.values()):
            user["state"] = "online"
            user.pop("leavingSince", None)
            return False
        del self.users[user_id]
        self.left.append(user_id)
        return True

    async def presence_missing(self, user_ids: list[UserId]) -> list[UserId]:
        self._call("presence_missing", list(user_ids))
        return [user_id for user_id in user_ids if user_id not in self.users]

    async def presence_count(self) -> int:
        self._call("presence_count")
        return len(self.users)


def _implements_the_port(store: MemoryPresenceStore) -> None:
    """Never called: mypy fails here when the fake drifts from `PresenceStore`."""
    _store: PresenceStore = store


class Clock:
    """The datetime clock `Presence` is given; moves only when a test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make(
    store: MemoryPresenceStore | None = None, *, heartbeat: float = 10.0, grace: float = 0.0, stream: bool = True
) -> tuple[Presence, MemoryPresenceStore, Clock, Metrics]:
    """A presence over `store`; with `stream`, the change stream shows each join at once."""
    store = store or MemoryPresenceStore()
    clock, metrics = Clock(), Metrics()
    presence = Presence(store, metrics, heartbeat_seconds=heartbeat, grace_seconds=grace, clock=clock)
    if stream:
        store.stream = presence.saw
    return presence, store, clock, metrics


def joined_event(user_id: UserId) -> Encoded:
    """The `presence_joined` of a user, as the bus hands it to the hub."""
    return encode_event(
        Event(
            id=event_id(Position(1_700_000_000, 1)),
            type="presence_joined",
            ts="2030-03-17T12:00:00.000Z",
            fields={"userId": user_id, "userName": f"user {user_id}"},
            audience=None,
            inserted_at=1_700_000_000.0,
        )
    )


def run(step: Coroutine[Any, Any, object]) -> None:
    asyncio.run(step)


# -- the hub's hooks: counting, no I/O ---------------------------------------------------------


def test_connections_are_counted_per_user_and_transport() -> None:
    """A user is local while any connection is; the second tab does not make a second user."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    presence.connected(1, "Ahmed", "sse")
    presence.connected(2, "سارة", "websocket")
    assert presence.local_users() == 2
    presence.disconnected(1, "websocket")
    assert presence.local_users() == 2
    presence.disconnected(1, "sse")
    assert presence.local_users() == 1
    assert store.calls == []  # the hooks write nothing themselves


def test_a_user_with_two_connections_on_one_transport_keeps_one_after_a_disconnect() -> None:
    """Counts go down one at a time: the flushed document says what is still open."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    presence.connected(1, "Ahmed", "websocket")
    presence.disconnected(1, "websocket")
    assert presence.local_users() == 1
    run(presence.flush())
    assert store.called("presence_write")[0][1] == {1: ("Ahmed", {"websocket": 1})}


def test_a_disconnect_of_an_unknown_user_or_transport_changes_nothing() -> None:
    presence, _, _, _ = make()
    presence.disconnected(9, "websocket")
    presence.connected(1, "Ahmed", "websocket")
    presence.disconnected(1, "sse")  # not one of theirs: the websocket one stays
    assert presence.local_users() == 1
    presence.disconnected(1, "websocket")
    assert presence.local_users() == 0


# -- flush: the user-level transitions ---------------------------------------------------------


def test_a_first_connection_writes_the_counts_and_joins_a_new_user() -> None:
    """Arrival: `presence_arrive_many` finds no document, so the user is inserted (with their
    `presence_joined`), then the process document carries the counts per transport."""
    presence, store, clock, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    presence.connected(1, "Ahmed", "websocket")
    presence.connected(1, "Ahmed", "sse")
    run(presence.flush())
    assert [name for name, _ in store.calls] == ["presence_arrive_many", "presence_write"]
    assert store.new == [[1]]  # no document of this process yet: inserted, not upserted
    assert store.called("presence_write") == [(presence.process_id, {1: ("Ahmed", {"websocket": 2, "sse": 1})}, [], T0)]
    assert store.joined == [1] and store.users[1]["state"] == "online"
    assert store.called("presence_arrive_many") == [({1: "Ahmed"}, clock.now)]


def test_a_user_back_within_the_grace_is_set_online_without_a_join() -> None:
    """`presence_arrive_many` finds the document (leaving, within grace): no insert, no event."""
    presence, store, clock, _ = make()
    store.users[1] = {"_id": 1, "state": "leaving", "userName": "Ahmed", "leavingSince": clock.now}
    presence.connected(1, "Ahmed", "websocket")
    run(presence.flush())
    assert store.called("presence_arrive_many") == [({1: "Ahmed"}, clock.now)] and store.joined == []
    assert store.users[1]["state"] == "online"


def test_only_changes_are_written_and_an_idle_flush_writes_nothing() -> None:
    """A second connection rewrites the counts (no second arrival); no change, no call."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    run(presence.flush())
    store.calls.clear()
    run(presence.flush())
    assert store.calls == []
    presence.connected(1, "Ahmed", "sse")
    run(presence.flush())
    assert [name for name, _ in store.calls] == ["presence_write"]
    assert store.called("presence_write")[0][1] == {1: ("Ahmed", {"websocket": 1, "sse": 1})}
    assert store.new[-1] == []  # written before: its counts are updated


def test_the_last_connection_gone_removes_the_document_and_marks_the_user_leaving() -> None:
    """Departure: the process document is deleted, then one `presence_depart_many` marks the
    user leaving (no `presence_left` yet: the sweep decides after the grace)."""
    presence, store, clock, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    run(presence.flush())
    presence.disconnected(1, "websocket")
    clock.advance(5)
    store.calls.clear()
    run(presence.flush())
    assert store.called("presence_write") == [(presence.process_id, {}, [1], clock.now)]
    assert store.called("presence_depart_many") == [([1], clock.now)]
    assert store.users[1] == {"_id": 1, "state": "leaving", "userName": "Ahmed", "leavingSince": clock.now}
    assert store.docs == {} and store.left == []


def test_connect_and_disconnect_within_one_tick_writes_no_document() -> None:
    """A user who came and went between two flushes: no upsert, no removal, no arrival."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    presence.disconnected(1, "websocket")
    run(presence.flush())
    assert store.called("presence_write") == []
    assert store.called("presence_arrive_many") == store.called("presence_depart_many") == []
    assert store.users == {}


# -- StoreUnavailable: the step fails, nothing is lost -----------------------------------------


def test_a_failed_bulk_write_is_retried_whole_by_the_next_flush() -> None:
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    store.failing.add("presence_write")
    with pytest.raises(StoreUnavailable):
        run(presence.flush())
    assert store.docs == {}
    store.failing.clear()
    store.calls.clear()
    run(presence.flush())
    assert store.called("presence_write") == [(presence.process_id, {1: ("Ahmed", {"websocket": 1})}, [], T0)]
    # the arrival is asked again (the bulk write never said the user is written here), but
    # the join had succeeded: the user is found, no second `presence_joined`
    assert len(store.called("presence_arrive_many")) == 1
    assert store.joined == [1] and len(store.docs) == 1


def test_a_failed_join_is_kept_and_retried_even_with_nothing_new() -> None:
    """`presence_arrive_many` raised: the flush raises; the next flush, with no new transition,
    still retries the join (and the bulk write it never reached)."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    store.failing.add("presence_arrive_many")
    with pytest.raises(StoreUnavailable):
        run(presence.flush())
    assert store.joined == [] and store.called("presence_write") == []
    store.failing.clear()
    run(presence.flush())
    assert store.joined == [1] and len(store.docs) == 1


class StalledJoins(MemoryPresenceStore):
    """`presence_arrive_many` waits until `go` is set: a store too busy to answer (a join storm)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.waiting: list[int] = []  # users per call that waited
        self.chunk_waiting = asyncio.Event()

    async def presence_arrive_many(self, users: Mapping[UserId, str], now: datetime) -> list[UserId]:
        self.waiting.append(len(users))
        self.chunk_waiting.set()
        await self.go.wait()
        return await super().presence_arrive_many(users, now)


def test_a_join_storm_is_joined_in_chunks_and_one_cut_off_mid_way_loses_no_join() -> None:
    """More new users than one chunk: they are joined JOIN_CHUNK per call, not one call (or
    transaction) each. The step cancelled (its timeout) while the first chunk waits on the
    store leaves no coroutine un-awaited (a RuntimeWarning per user in the log of a
    50,000-user connect storm) and every join pending; the next flush writes them all, each
    once."""
    users = JOIN_CHUNK + 8
    store = StalledJoins()
    presence, _, _, _ = make(store)
    for user_id in range(users):
        presence.connected(user_id, f"user {user_id}", "websocket")

    async def cut_off() -> None:
        step = asyncio.ensure_future(presence.flush())
        await store.chunk_waiting.wait()
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(cut_off())
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    assert store.waiting == [JOIN_CHUNK] and store.joined == []
    store.go.set()
    run(presence.flush())
    assert store.waiting == [JOIN_CHUNK, JOIN_CHUNK, 8]
    assert sorted(store.joined) == list(range(users)) and len(store.docs) == users


def test_a_join_storm_writes_a_chunk_once_the_stream_showed_the_last(caplog: pytest.LogCaptureFixture) -> None:
    """Joins travel the one ordered change stream: a process writes its next JOIN_CHUNK of them
    only once its stream has shown the last chunk's `presence_joined`, so a storm of new users
    never puts more than a chunk per process ahead of the other events. A user's document here
    (the counts) waits for their join, so the store is not flooded meanwhile either; the
    backlog is logged when it starts and when it is written, and the stream's showing the last
    join wakes the loop at once."""
    presence, store, _, _ = make(stream=False)
    users = 2 * JOIN_CHUNK + 5
    for user in range(users):
        presence.connected(user, f"user {user}", "websocket")
    with caplog.at_level(logging.INFO, logger="service.fanout.presence"):
        run(presence.flush())
        assert [len(args[0]) for args in store.called("presence_arrive_many")] == [JOIN_CHUNK]
        assert {doc["userId"] for doc in store.docs.values()} == set(range(JOIN_CHUNK))  # the joined ones
        waiting = f"{users - JOIN_CHUNK} arrivals wait until the change stream shows the last {JOIN_CHUNK} joins"
        assert waiting in caplog.text
        run(presence.flush())  # nothing shown yet: nothing more written
        assert len(store.called("presence_arrive_many")) == 1
        presence.saw([joined_event(user) for user in range(JOIN_CHUNK - 1)] + [encoded("task_created")])
        assert not presence._wake.is_set()
        presence._events_seen_at -= EVENTS_RECENT_SECONDS  # long ago: the chunks stay full (see below)
        run(presence.flush())
        assert len(store.called("presence_arrive_many")) == 1  # one join of the chunk still unseen
        presence.saw([joined_event(JOIN_CHUNK - 1)])
        assert presence._wake.is_set()  # the loop flushes now, not at its next tick
        run(presence.flush())
        presence.saw([joined_event(user) for user in range(JOIN_CHUNK, 2 * JOIN_CHUNK)])
        run(presence.flush())
    assert [len(args[0]) for args in store.called("presence_arrive_many")] == [JOIN_CHUNK, JOIN_CHUNK, 5]
    assert sorted(store.joined) == list(range(users))
    assert f"join backlog written: {users} users joined in" in caplog.text
    run(presence.flush())  # the documents of the last joined
    assert len(store.docs) == users and sorted(store.new[-1] + store.new[-2]) == list(range(JOIN_CHUNK, users))


def test_joins_yield_to_other_events_with_smaller_chunks_while_those_flow() -> None:
    """While the stream carries other events (seen within EVENTS_RECENT_SECONDS) and the last
    chunk wrote joins, a chunk is JOIN_CHUNK_BEHIND_EVENTS users, so those events wait behind
    fewer joins. Presence events alone (this process's joins, other processes' joins and
    leaves) keep chunks at JOIN_CHUNK, and so does a stream whose last other event is older."""
    presence, store, _, _ = make(stream=False)
    presence.saw([joined_event("elsewhere"), encoded("presence_left")])
    presence.saw([encoded("task_created")])
    users = JOIN_CHUNK + JOIN_CHUNK_BEHIND_EVENTS + 5
    for user in range(users):
        presence.connected(user, f"user {user}", "websocket")
    run(presence.flush())  # no chunk has joined anyone yet: a full one
    presence.saw([joined_event(user) for user in range(JOIN_CHUNK)])
    assert presence.join_chunk() == JOIN_CHUNK_BEHIND_EVENTS
    run(presence.flush())
    presence.saw([joined_event("elsewhere"), encoded("presence_left")])
    presence._events_seen_at -= EVENTS_RECENT_SECONDS  # the other events stopped
    presence.saw([joined_event(user) for user in range(JOIN_CHUNK, JOIN_CHUNK + JOIN_CHUNK_BEHIND_EVENTS)])
    assert presence.join_chunk() == JOIN_CHUNK
    run(presence.flush())
    sizes = [len(args[0]) for args in store.called("presence_arrive_many")]
    assert sizes == [JOIN_CHUNK, JOIN_CHUNK_BEHIND_EVENTS, 5]
    assert sorted(store.joined) == list(range(users))


def test_a_user_is_arrived_once_when_the_stream_shows_joins_during_the_bulk_write() -> None:
    """The stream shows the first chunk's joins while the flush writes documents, so the same
    flush writes the second chunk after its bulk write: those users' documents follow at the
    next flush, and nobody's arrival is asked twice."""
    presence, store, _, _ = make(stream=False)
    users = 2 * JOIN_CHUNK + 5
    for user in range(users):
        presence.connected(user, f"user {user}", "websocket")
    write = store.presence_write

    async def shown_meanwhile(*args: Any, **kwargs: Any) -> None:
        presence.saw([joined_event(user) for user in store.joined])
        await write(*args, **kwargs)

    store.presence_write = shown_meanwhile  # type: ignore[method-assign]
    for _ in range(6):
        run(presence.flush())
    arrived = [user for args in store.called("presence_arrive_many") for user in args[0]]
    assert sorted(arrived) == list(range(users))  # each once
    assert len(store.docs) == users and sorted(u for new in store.new for u in new) == list(range(users))


def test_joins_never_shown_hold_the_next_chunk_for_join_wait_seconds_at_most() -> None:
    """A join the stream never shows (a resync skipped it) delays the next chunk, not for ever."""
    presence, store, _, _ = make(stream=False)
    for user in range(JOIN_CHUNK + 1):
        presence.connected(user, f"user {user}", "websocket")
    run(presence.flush())
    run(presence.flush())
    assert len(store.called("presence_arrive_many")) == 1
    presence._joins_written_at -= JOIN_WAIT_SECONDS
    run(presence.flush())
    assert [len(args[0]) for args in store.called("presence_arrive_many")] == [JOIN_CHUNK, 1]


@pytest.mark.parametrize("events_flowing", [False, True], ids=["quiet", "events-flowing"])
def test_returning_users_are_not_held_back_a_restart_writes_them_all_at_once(events_flowing: bool) -> None:
    """Users back within their grace (a restart, a drain) emit no join, so nothing waits on the
    stream: every chunk is written in one flush, as a restart storm needs, and chunks stay full
    while other events flow (nothing waits behind joins that are not written)."""
    presence, store, clock, _ = make(stream=False)
    if events_flowing:
        presence.saw([encoded("task_created")])
    users = 2 * JOIN_CHUNK + 5
    for user in range(users):
        store.users[user] = {"_id": user, "state": "leaving", "userName": "a", "leavingSince": clock.now}
        presence.connected(user, f"user {user}", "websocket")
    run(presence.flush())
    assert [len(args[0]) for args in store.called("presence_arrive_many")] == [JOIN_CHUNK, JOIN_CHUNK, 5]
    assert store.joined == [] and {user["state"] for user in store.users.values()} == {"online"}


def test_a_connect_storm_is_written_in_chunks_and_a_failure_keeps_what_was_written() -> None:
    """1,200 new users: WRITE_CHUNK users per `presence_write`; the third call fails (the
    store timed out), the first two stay written, and the next flush writes only the rest."""
    presence, store, _, _ = make()
    for user in range(1200):
        presence.connected(user, f"user {user}", "websocket")
    calls = 0
    write = store.presence_write

    async def third_fails(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise StoreUnavailable("timed out")
        await write(*args, **kwargs)

    store.presence_write = third_fails  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        run(presence.flush())
    assert [len(users) for _, users, _, _ in store.called("presence_write")] == [WRITE_CHUNK, WRITE_CHUNK]
    assert len(store.docs) == 2 * WRITE_CHUNK
    run(presence.flush())
    assert [len(users) for _, users, _, _ in store.called("presence_write")][2:] == [1200 - 2 * WRITE_CHUNK]
    assert len(store.docs) == 1200 and store.new[-1] == sorted(store.called("presence_write")[-1][1], key=repr)


def test_a_failed_step_pauses_the_loop_longer_each_time_and_a_success_resets_it() -> None:
    """A store that times out is not asked again at every tick: 0.5 s, 1, 2, ... up to
    BACKOFF_MAX_SECONDS; the heartbeat (`back_off=False`) never sets the pause."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    store.failing.add("presence_arrive_many")
    pauses = []
    for _ in range(6):
        run(presence._attempt(presence.flush))
        pauses.append(presence._backoff)
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0] and presence._resume_at > time.monotonic()
    store.failing.clear()
    run(presence._attempt(presence.flush))
    assert presence._backoff == 0.0
    store.failing.add("presence_refresh")
    run(presence._attempt(presence._heartbeat, back_off=False))
    assert presence._backoff == 0.0


def test_a_user_who_leaves_before_their_document_here_is_written_departs() -> None:
    """The join went through but this process's document did not (the write failed, or a drain
    cancelled the flush between the two); the user's last connection then closed. Nothing of
    this process is left to remove, but the user is online fleet-wide: they depart (and leave
    after the grace), rather than stay online until the next orphan sweep."""
    presence, store, _, _ = make()
    presence.connected(4, "ليلى", "sse")
    store.failing.add("presence_write")
    with pytest.raises(StoreUnavailable):
        run(presence.flush())
    assert store.joined == [4] and store.users[4]["state"] == "online" and not store.docs
    store.failing.clear()
    presence.disconnected(4, "sse")
    run(presence.flush())
    assert store.users[4]["state"] == "leaving"
    # Only the write that failed: nothing of this process was written, so nothing to remove.
    assert store.called("presence_write") == [(presence.process_id, {4: ("ليلى", {"sse": 1})}, [], T0)]
    store.calls.clear()
    presence.connected(4, "ليلى", "sse")  # back: a new arrival, written this time
    run(presence.flush())
    assert store.users[4]["state"] == "online" and len(store.docs) == 1


def test_a_failed_departure_is_retried_by_the_next_flush() -> None:
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    run(presence.flush())
    presence.disconnected(1, "websocket")
    store.failing.add("presence_depart_many")
    with pytest.raises(StoreUnavailable):
        run(presence.flush())
    assert store.docs == {} and store.users[1]["state"] == "online"
    store.failing.clear()
    store.calls.clear()
    run(presence.flush())
    assert [name for name, _ in store.calls] == ["presence_depart_many"]
    assert store.users[1]["state"] == "leaving"


def test_a_step_that_fails_is_logged_and_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """The loop's `_attempt`: a StoreUnavailable from a step is a warning, and the loop goes on."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    store.failing.add("presence_arrive_many")
    with caplog.at_level(logging.WARNING, logger="service.fanout.presence"):
        run(presence._attempt(presence.flush))
    assert "StoreUnavailable: connection refused; retrying" in caplog.text


def test_start_raises_when_the_store_is_unavailable() -> None:
    """The first sweep's StoreUnavailable reaches the caller (startup waits for MongoDB)."""
    presence, store, _, _ = make()
    store.failing.add("presence_stale")

    async def start() -> None:
        await presence.start()

    with pytest.raises(StoreUnavailable):
        run(start())
    assert presence._task is None


def test_start_goes_on_after_a_conflict_in_the_first_sweep(caplog: pytest.LogCaptureFixture) -> None:
    """Another StoreError (a conflict with another sweeper) is logged; the loop still starts."""
    presence, store, _, _ = make()
    store.failing.add("presence_stale")
    store.error = StoreError("write conflict")

    async def start_and_stop() -> bool:
        await presence.start()
        running = presence._task is not None and not presence._task.done()
        await presence.stop()
        return running

    with caplog.at_level(logging.WARNING, logger="service.fanout.presence"):
        assert asyncio.run(start_and_stop()) is True
    assert "first sweep: StoreError: write conflict" in caplog.text


def test_stop_writes_the_departures_and_removes_the_process() -> None:
    """A clean drain: every local user departs (leaving, for the grace) and the process's
    documents go; the store failing then is not raised (TTL and sweepers remain)."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    presence.connected(2, "سارة", "sse")
    run(presence.flush())
    run(presence.stop())
    assert presence.local_users() == 0
    assert {u: doc["state"] for u, doc in store.users.items()} == {1: "leaving", 2: "leaving"}
    assert store.called("presence_remove_process") == [(presence.process_id,)] and store.docs == {}

    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    run(presence.flush())
    store.failing.add("presence_write")
    run(presence.stop())  # no exception
    assert store.called("presence_remove_process") == []


# -- heartbeat refresh -------------------------------------------------------------------------


def test_the_heartbeat_is_one_write_however_many_users() -> None:
    """1,000 users: the heartbeat writes the process's one document, no user's."""
    presence, store, clock, _ = make()
    run(store.presence_refresh(presence.process_id, T0))  # registered, as `start` does
    for user in range(1000):
        presence.connected(user, f"user {user}", "websocket")
    run(presence.flush())
    before = [dict(doc) for doc in store.docs.values()]
    clock.advance(10)
    store.calls.clear()
    run(presence._refresh())
    assert [name for name, _ in store.calls] == ["presence_refresh"]
    assert store.processes == {presence.process_id: clock.now}
    assert [dict(doc) for doc in store.docs.values()] == before


def test_a_swept_process_rewrites_its_documents_and_rejoins_users() -> None:
    """Refresh matched fewer documents than this process wrote (another process swept it
    while it stalled): the next flush writes all again, and users whose fleet-wide
    document is gone arrive again (a `presence_joined`)."""
    presence, store, _, _ = make()
    run(store.presence_refresh(presence.process_id, T0))
    presence.connected(1, "Ahmed", "websocket")
    run(presence.flush())
    store.processes.clear()  # a sweeper claimed our stale heartbeat...
    store.docs.clear()  # ...deleted our users' documents...
    del store.users[1]  # ...and the grace ended with `presence_left`
    run(presence._refresh())
    store.calls.clear()
    run(presence.flush())
    assert store.called("presence_write") == [(presence.process_id, {1: ("Ahmed", {"websocket": 1})}, [], T0)]
    assert store.joined == [1, 1] and store.users[1]["state"] == "online"


def test_lost_fleet_documents_are_looked_for_only_when_a_sweep_may_have_taken_them() -> None:
    """`presence_missing` reads every user of the process, so a refresh on time does not ask
    it; one later than the stale bound allows (a sweep may have taken this process's users
    meanwhile) does, and so does every LOST_CHECK_BEATS-th refresh, against clock skew. A user
    found missing arrives again (a `presence_joined`)."""
    presence, store, _, _ = make(heartbeat=10)
    run(store.presence_refresh(presence.process_id, T0))
    for user in range(3):
        presence.connected(user, f"user {user}", "websocket")
    run(presence.flush())
    del store.users[1]  # swept while this process stalled; its process document came back since
    presence._last_refresh = time.monotonic()
    run(presence._refresh())
    assert store.called("presence_missing") == []
    presence._last_refresh = time.monotonic() - 10 * (STALE_HEARTBEATS - 0.25) - 1
    run(presence._refresh())
    assert [sorted(users) for (users,) in store.called("presence_missing")] == [[0, 1, 2]]
    run(presence.flush())
    assert store.joined == [0, 1, 2, 1]
    store.calls.clear()
    while presence._refreshes % LOST_CHECK_BEATS:
        presence._last_refresh = time.monotonic()
        run(presence._refresh())
    assert len(store.called("presence_missing")) == 1


def test_a_process_without_users_still_beats_and_has_nothing_to_rewrite() -> None:
    presence, store, _, _ = make()
    run(presence._refresh())
    assert [name for name, _ in store.calls] == ["presence_refresh"]
    assert not presence._dirty


# -- the sweep ---------------------------------------------------------------------------------


def test_a_dead_process_users_leave_as_of_its_last_heartbeat() -> None:
    """A process silent for STALE_HEARTBEATS heartbeats is claimed, its documents deleted and
    its users marked leaving at its last heartbeat; a live one is left alone; the gauge
    counts users."""
    presence, store, _, metrics = make(heartbeat=10.0, grace=60.0)
    dead_seen = T0 - timedelta(seconds=10.0 * STALE_HEARTBEATS + 1)
    store.processes.update(dead=dead_seen, live=T0)
    store.docs["dead|7"] = {"_id": "dead|7", "process": "dead", "userId": 7}
    store.docs["dead|9"] = {"_id": "dead|9", "process": "dead", "userId": 9}
    store.docs["live|8"] = {"_id": "live|8", "process": "live", "userId": 8}
    for user in (7, 8, 9):
        store.users[user] = {"_id": user, "state": "online", "userName": f"u{user}"}
    run(presence._sweep())
    assert store.called("presence_sweep_process") == [("dead", dead_seen)]
    assert store.called("presence_depart_many") == [([7, 9], dead_seen)]
    assert store.users[7] == {"_id": 7, "state": "leaving", "userName": "u7", "leavingSince": dead_seen}
    assert store.users[8]["state"] == "online" and set(store.docs) == {"live|8"}
    assert set(store.processes) == {"live"}
    assert metrics.sample("realtime_presence_users") == 3


def test_documents_of_an_earlier_release_are_swept_one_by_one_by_their_own_seen_at() -> None:
    """A rolling deploy from the release that refreshed every user document: those documents
    (their own `seenAt`, no heartbeat document) are still swept when their process dies."""
    presence, store, _, _ = make(heartbeat=10.0, grace=60.0)
    dead_seen = T0 - timedelta(seconds=10.0 * STALE_HEARTBEATS + 1)
    store.docs["old|7"] = {"_id": "old|7", "process": "old", "userId": 7, "seenAt": dead_seen}
    store.docs["old|8"] = {"_id": "old|8", "process": "old2", "userId": 8, "seenAt": T0}
    store.users[7] = {"_id": 7, "state": "online", "userName": "x"}
    run(presence._sweep())
    assert store.called("presence_claim_stale") == [("old|7", dead_seen)]
    assert store.users[7]["state"] == "leaving" and set(store.docs) == {"old|8"}


def test_a_sweep_ends_graces_that_ran_out_with_a_leave() -> None:
    """Leaving for longer than the grace and connected nowhere: `presence_left`; leaving
    but connected elsewhere: back online; leaving within the grace: untouched."""
    presence, store, _, metrics = make(grace=30.0)
    presence._started -= 60  # past this process's own first grace
    long_ago = T0 - timedelta(seconds=31)
    store.users[1] = {"_id": 1, "state": "leaving", "userName": "a", "leavingSince": long_ago}
    store.users[2] = {"_id": 2, "state": "leaving", "userName": "b", "leavingSince": long_ago}
    store.users[3] = {"_id": 3, "state": "leaving", "userName": "c", "leavingSince": T0 - timedelta(seconds=5)}
    store.docs["other|2"] = {"_id": "other|2", "process": "other", "userId": 2, "seenAt": T0}
    run(presence._sweep())
    assert store.left == [1]
    assert {u: doc["state"] for u, doc in store.users.items()} == {2: "online", 3: "leaving"}
    assert metrics.sample("realtime_presence_users") == 2


def test_a_process_that_just_started_ends_no_grace() -> None:
    """Its first grace period: clients of a restarted single replica are still coming back."""
    presence, store, _, _ = make(grace=30.0)
    store.users[1] = {"_id": 1, "state": "leaving", "userName": "a", "leavingSince": T0 - timedelta(hours=1)}
    run(presence._sweep())
    assert store.called("presence_leaving") == [] and store.left == []


def test_orphans_are_looked_for_only_when_asked() -> None:
    presence, store, _, _ = make(grace=30.0)
    run(presence._sweep())
    assert store.called("presence_mark_orphans") == []
    run(presence._sweep(orphans=True))
    assert store.called("presence_mark_orphans") == [(T0,)]


def test_the_periodic_backstop_runs_once_per_fleet() -> None:
    """The backstop reads every user, holding the embedded store's lock for seconds at 50,000:
    of the processes whose backstop falls due, only the first since the last one anywhere reads
    them; a start still looks at once."""
    first, store, clock, _ = make(heartbeat=10.0, grace=30.0)
    second, _, second_clock, _ = make(store, heartbeat=10.0, grace=30.0)
    store.users[5] = {"_id": 5, "state": "online", "userName": "نور"}  # joined, no process document
    run(first._sweep(backstop=True))
    assert store.called("presence_mark_orphans") == [(T0,)]
    assert store.users[5]["state"] == "leaving"
    every = timedelta(seconds=10.0 * ORPHAN_HEARTBEATS)
    store.calls.clear()
    second_clock.advance(10.0 * ORPHAN_HEARTBEATS - 1)
    run(second._sweep(backstop=True))
    assert store.called("presence_claim_backstop") == [(second_clock.now, every)]
    assert store.called("presence_mark_orphans") == []
    run(second._sweep(orphans=True))  # a start does not ask
    assert store.called("presence_mark_orphans") == [(second_clock.now,)]
    assert len(store.called("presence_claim_backstop")) == 1
    store.calls.clear()
    clock.advance(10.0 * ORPHAN_HEARTBEATS)
    run(first._sweep(backstop=True))
    assert store.called("presence_mark_orphans") == [(clock.now,)]


def test_a_sweep_that_claims_a_dead_process_looks_for_its_orphans_at_once() -> None:
    """A process killed between a user's join (the fleet-wide document) and its own document
    leaves that user online with no process: the sweep that claims it looks for such users
    then, not at the next backstop. A sweeper that lost the claim does not read them again."""
    presence, store, _, _ = make(heartbeat=10.0, grace=30.0)
    dead_seen = T0 - timedelta(seconds=10.0 * STALE_HEARTBEATS + 1)
    store.processes["dead"] = dead_seen
    store.users[5] = {"_id": 5, "state": "online", "userName": "نور"}  # joined, no process document
    run(presence._sweep())
    assert store.called("presence_mark_orphans") == [(T0,)]
    assert store.users[5]["state"] == "leaving"
    store.calls.clear()
    store.processes["other"] = dead_seen

    async def lose(process: str, seen_at: datetime) -> list[UserId] | None:
        store._call("presence_sweep_process", process, seen_at)
        return None  # another sweeper claimed it first

    store.presence_sweep_process = lose  # type: ignore[method-assign]
    run(presence._sweep())
    assert store.called("presence_sweep_process") == [("other", dead_seen)]
    assert store.called("presence_mark_orphans") == []


def encoded(event_type: str, seq: int = 1) -> Encoded:
    return encode_event(
        Event(
            id=event_id(Position(1_700_000_000, seq)),
            type=event_type,
            ts="2030-03-17T12:00:00.000Z",
            fields={"userId": seq, "userName": "سارة"},
            audience=None,
            inserted_at=1_700_000_000.0,
        )
    )


def test_the_gauge_is_counted_again_only_after_a_join_or_leave_was_seen() -> None:
    """A count reads every user document (0.85 s of the store at 50,000 users): a quiet fleet
    does not count at every sweep of every process, only after the bus brought a change, and
    on the orphan sweeps as a backstop."""
    presence, store, _, metrics = make(grace=30.0)
    store.users[1] = {"_id": 1, "state": "online", "userName": "a"}
    run(presence._sweep())  # the first sweep counts
    assert len(store.called("presence_count")) == 1 and metrics.sample("realtime_presence_users") == 1
    presence.saw([encoded("task_created"), encoded("schedule_updated", 2)])
    run(presence._sweep())
    assert len(store.called("presence_count")) == 1  # nothing that changes the count
    store.users[2] = {"_id": 2, "state": "online", "userName": "b"}
    presence.saw([encoded("task_created"), encoded("presence_joined", 2)])
    run(presence._sweep())
    assert len(store.called("presence_count")) == 2 and metrics.sample("realtime_presence_users") == 2
    run(presence._sweep())
    assert len(store.called("presence_count")) == 2
    del store.users[1]
    presence.saw([encoded("presence_left", 3)])
    store.failing.add("presence_count")
    with pytest.raises(StoreUnavailable):
        run(presence._sweep())
    store.failing.clear()
    run(presence._sweep())  # a count that failed is asked for again
    assert metrics.sample("realtime_presence_users") == 1
    store.users[3] = {"_id": 3, "state": "online", "userName": "c"}  # no event (a backstop case)
    run(presence._sweep(orphans=True))
    assert metrics.sample("realtime_presence_users") == 2


def test_the_hub_shows_presence_every_event_the_bus_hands_it() -> None:
    presence, store, _, _ = make()
    hub = Hub(Metrics(), max_pending_bytes=1 << 20, max_per_user=5)
    hub.presence = presence
    run(presence._sweep())
    hub.deliver_many([encoded("task_created")])
    run(presence._sweep())
    assert len(store.called("presence_count")) == 1
    hub.deliver_many([encoded("task_created"), encoded("presence_joined", 2)])
    run(presence._sweep())
    assert len(store.called("presence_count")) == 2


def test_the_sweep_interval_is_half_the_shorter_of_heartbeat_and_grace() -> None:
    assert make(heartbeat=10.0, grace=30.0)[0].sweep_seconds == 5.0
    assert make(heartbeat=10.0, grace=4.0)[0].sweep_seconds == 2.0
    assert make(heartbeat=10.0, grace=0.0)[0].sweep_seconds == 5.0  # no grace: the heartbeat's
    assert make(heartbeat=0.1, grace=0.0)[0].sweep_seconds == FLUSH_SECONDS  # never below a tick
