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
import warnings
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from metrics.registry import Metrics
from service.core.errors import StoreError, StoreUnavailable
from service.core.ports import PresenceStore, Record, UserId
from service.fanout.presence import FLUSH_SECONDS, STALE_HEARTBEATS, STEP_CONCURRENCY, Presence

T0 = datetime(2030, 3, 17, 12, 0, tzinfo=UTC)


class MemoryPresenceStore:
    """A `PresenceStore` over two dicts, like the two collections; records every call, and
    raises `StoreUnavailable` (or `error`) from the methods named in `failing`."""

    def __init__(self) -> None:
        self.docs: dict[str, Record] = {}  # `presence`: per (process, user)
        self.users: dict[UserId, Record] = {}  # `presence_users`: per user, online or leaving
        self.joined: list[UserId] = []  # `presence_joined` events
        self.left: list[UserId] = []  # `presence_left` events
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.failing: set[str] = set()
        self.error: StoreError = StoreUnavailable("connection refused")

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
    ) -> None:
        self._call("presence_write", process, dict(upserts), list(removals), now)
        for user_id, (name, counts) in upserts.items():
            doc_id = f"{process}|{user_id!r}"
            self.docs[doc_id] = {
                "_id": doc_id,
                "process": process,
                "userId": user_id,
                "userName": name,
                "counts": dict(counts),
                "seenAt": now,
            }
        for user_id in removals:
            self.docs.pop(f"{process}|{user_id!r}", None)

    async def presence_refresh(self, process: str, now: datetime) -> int:
        self._call("presence_refresh", process, now)
        mine = [doc for doc in self.docs.values() if doc["process"] == process]
        for doc in mine:
            doc["seenAt"] = now
        return len(mine)

    async def presence_remove_process(self, process: str) -> None:
        self._call("presence_remove_process", process)
        self.docs = {key: doc for key, doc in self.docs.items() if doc["process"] != process}

    async def presence_arrive(self, user_id: UserId, user_name: str, now: datetime) -> None:
        self._call("presence_arrive", user_id, user_name, now)
        if user_id in self.users:
            self.users[user_id].update(state="online", userName=user_name)
            self.users[user_id].pop("leavingSince", None)
        else:
            self.users[user_id] = {"_id": user_id, "state": "online", "userName": user_name}
            self.joined.append(user_id)

    async def presence_depart(self, user_id: UserId, since: datetime) -> None:
        self._call("presence_depart", user_id, since)
        user = self.users.get(user_id)
        if user is not None and user["state"] == "online":
            user.update(state="leaving", leavingSince=since)

    async def presence_back(self, user_ids: list[UserId]) -> list[UserId]:
        self._call("presence_back", list(user_ids))
        for user_id in user_ids:
            if user_id in self.users:
                self.users[user_id]["state"] = "online"
                self.users[user_id].pop("leavingSince", None)
        return [user_id for user_id in user_ids if user_id not in self.users]

    async def presence_depart_many(self, user_ids: list[UserId], since: datetime) -> None:
        self._call("presence_depart_many", list(user_ids), since)
        for user_id in user_ids:
            user = self.users.get(user_id)
            if user is not None and user["state"] == "online":
                user.update(state="leaving", leavingSince=since)

    async def presence_stale(self, before: datetime) -> list[Record]:
        self._call("presence_stale", before)
        return [dict(doc) for doc in self.docs.values() if doc["seenAt"] < before]

    async def presence_claim_stale(self, doc_id: str, seen_at: datetime) -> bool:
        self._call("presence_claim_stale", doc_id, seen_at)
        doc = self.docs.get(doc_id)
        if doc is None or doc["seenAt"] != seen_at:
            return False
        del self.docs[doc_id]
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
    store: MemoryPresenceStore | None = None, *, heartbeat: float = 10.0, grace: float = 0.0
) -> tuple[Presence, MemoryPresenceStore, Clock, Metrics]:
    store = store or MemoryPresenceStore()
    clock, metrics = Clock(), Metrics()
    presence = Presence(store, metrics, heartbeat_seconds=heartbeat, grace_seconds=grace, clock=clock)
    return presence, store, clock, metrics


def run(step: Coroutine[Any, Any, None]) -> None:
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
    """Arrival: `presence_back` finds no document, so the user is inserted (with their
    `presence_joined`), then the process document carries the counts per transport."""
    presence, store, clock, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    presence.connected(1, "Ahmed", "websocket")
    presence.connected(1, "Ahmed", "sse")
    run(presence.flush())
    assert [name for name, _ in store.calls] == ["presence_back", "presence_arrive", "presence_write"]
    assert store.called("presence_write") == [(presence.process_id, {1: ("Ahmed", {"websocket": 2, "sse": 1})}, [], T0)]
    assert store.joined == [1] and store.users[1]["state"] == "online"
    assert store.called("presence_arrive") == [(1, "Ahmed", clock.now)]


def test_a_user_back_within_the_grace_is_set_online_without_a_join() -> None:
    """`presence_back` found the document (leaving, within grace): no insert, no event."""
    presence, store, clock, _ = make()
    store.users[1] = {"_id": 1, "state": "leaving", "userName": "Ahmed", "leavingSince": clock.now}
    presence.connected(1, "Ahmed", "websocket")
    run(presence.flush())
    assert store.called("presence_arrive") == [] and store.joined == []
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
    assert store.called("presence_write") == [(presence.process_id, {}, [], T0)]
    assert store.called("presence_arrive") == store.called("presence_depart_many") == []
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
    assert store.called("presence_arrive") == []  # the join itself had succeeded: not redone
    assert store.joined == [1] and len(store.docs) == 1


def test_a_failed_join_is_kept_and_retried_even_with_nothing_new() -> None:
    """`presence_arrive` raised: the flush raises; the next flush, with no new transition,
    still retries the join (and the bulk write it never reached)."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    store.failing.add("presence_arrive")
    with pytest.raises(StoreUnavailable):
        run(presence.flush())
    assert store.joined == [] and store.called("presence_write") == []
    store.failing.clear()
    run(presence.flush())
    assert store.joined == [1] and len(store.docs) == 1


class StalledJoins(MemoryPresenceStore):
    """`presence_arrive` waits until `go` is set: a store too busy to answer (a join storm)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.waiting = 0
        self.chunk_waiting = asyncio.Event()

    async def presence_arrive(self, user_id: UserId, user_name: str, now: datetime) -> None:
        self.waiting += 1
        if self.waiting == STEP_CONCURRENCY:
            self.chunk_waiting.set()
        await self.go.wait()
        await super().presence_arrive(user_id, user_name, now)


def test_a_join_storm_cut_off_mid_way_leaves_no_coroutine_behind_and_loses_no_join() -> None:
    """More new users than one chunk of joins, and the step cancelled (its timeout) while the
    first chunk waits on the store: the rest were never started, so no coroutine is left
    un-awaited (a RuntimeWarning per user in the log of a 50,000-user connect storm), and
    every join is still pending; the next flush writes them all."""
    users = STEP_CONCURRENCY + 8
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
    assert store.waiting == STEP_CONCURRENCY and store.joined == []
    store.go.set()
    run(presence.flush())
    assert sorted(store.joined) == list(range(users)) and len(store.docs) == users


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
    store.failing.add("presence_back")
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
    store.failing.add("presence_write")
    run(presence.stop())  # no exception
    assert store.called("presence_remove_process") == []


# -- heartbeat refresh -------------------------------------------------------------------------


def test_the_heartbeat_refreshes_seen_at_in_one_call() -> None:
    presence, store, clock, _ = make()
    for user in range(3):
        presence.connected(user, f"user {user}", "websocket")
    run(presence.flush())
    clock.advance(10)
    store.calls.clear()
    run(presence._refresh())
    assert store.called("presence_refresh") == [(presence.process_id, clock.now)]
    assert {doc["seenAt"] for doc in store.docs.values()} == {clock.now}


def test_a_swept_process_rewrites_its_documents_and_rejoins_users() -> None:
    """Refresh matched fewer documents than this process wrote (another process swept it
    while it stalled): the next flush writes all again, and users whose fleet-wide
    document is gone arrive again (a `presence_joined`)."""
    presence, store, _, _ = make()
    presence.connected(1, "Ahmed", "websocket")
    run(presence.flush())
    store.docs.clear()  # a sweeper claimed our stale document...
    del store.users[1]  # ...and the grace ended with `presence_left`
    run(presence._refresh())
    store.calls.clear()
    run(presence.flush())
    assert store.called("presence_write") == [(presence.process_id, {1: ("Ahmed", {"websocket": 1})}, [], T0)]
    assert store.joined == [1, 1] and store.users[1]["state"] == "online"


def test_no_refresh_without_documents() -> None:
    presence, store, _, _ = make()
    run(presence._refresh())
    assert store.calls == []


# -- the sweep ---------------------------------------------------------------------------------


def test_a_dead_process_users_leave_as_of_its_last_heartbeat() -> None:
    """A document silent for STALE_HEARTBEATS heartbeats is claimed and its user marked
    leaving at its `seenAt`; a fresh one is left alone; the gauge counts users."""
    presence, store, _, metrics = make(heartbeat=10.0, grace=60.0)
    dead_seen = T0 - timedelta(seconds=10.0 * STALE_HEARTBEATS + 1)
    store.docs["dead|7"] = {"_id": "dead|7", "process": "dead", "userId": 7, "seenAt": dead_seen}
    store.docs["live|8"] = {"_id": "live|8", "process": "live", "userId": 8, "seenAt": T0}
    store.users[7] = {"_id": 7, "state": "online", "userName": "x"}
    store.users[8] = {"_id": 8, "state": "online", "userName": "y"}
    run(presence._sweep())
    assert store.called("presence_claim_stale") == [("dead|7", dead_seen)]
    assert store.users[7] == {"_id": 7, "state": "leaving", "userName": "x", "leavingSince": dead_seen}
    assert store.users[8]["state"] == "online" and set(store.docs) == {"live|8"}
    assert metrics.sample("realtime_presence_users") == 2


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


def test_the_sweep_interval_is_half_the_shorter_of_heartbeat_and_grace() -> None:
    assert make(heartbeat=10.0, grace=30.0)[0].sweep_seconds == 5.0
    assert make(heartbeat=10.0, grace=4.0)[0].sweep_seconds == 2.0
    assert make(heartbeat=10.0, grace=0.0)[0].sweep_seconds == 5.0  # no grace: the heartbeat's
    assert make(heartbeat=0.1, grace=0.0)[0].sweep_seconds == FLUSH_SECONDS  # never below a tick
