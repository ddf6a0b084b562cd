"""Presence: which users are online anywhere in the fleet, kept in MongoDB, damped and crash-honest.

A user is online while they hold at least one authenticated connection on any process. The
state lives in MongoDB, so every replica answers `GET /api/presence` the same:

- `presence`: one document per (process, user) with that process's connection counts per
  transport. A process writes only user-level transitions (a user's first connection here,
  their last one gone, a changed count), collected by the hub's synchronous hooks and
  flushed as one `bulk_write` per tick (`FLUSH_SECONDS`).
- `presence_processes`: one heartbeat document per process (`seenAt`), written twice per
  heartbeat: a process's user documents live as long as it beats, so 10,000 connections
  cost two writes per heartbeat per process, however many users. (Refreshing every user
  document instead, as an earlier release did, cost SecantusDB 3 s per 5,000 users per
  heartbeat: at 50,000 connections the one embedded store never caught up.) A fleet that
  died entirely leaves stale heartbeats; the first process to start sweeps them.
- `presence_users`: one document per online user, `state` `online` or `leaving` (+
  `leavingSince`). It is the damped, fleet-wide view that the events describe.
- `presence_joins`: one document per chunk of new users whose `presence_joined` events are
  not all written yet (see arrive); empty but for a moment, unless a process died mid-chunk.
- `presence_fleet`: when the fleet's orphan backstop last ran (ORPHAN_HEARTBEATS), so that one
  process runs it, not each.

Transitions and their events (inserted into `events`, so they travel the one change stream
like every event: ordered, with ids, resumable, filterable with `events=`):

- arrive (a process gets a user's first connection): `presence_arrive_many`, 100 users per
  call (20 while other events flow and new users join), before the process's own documents of
  them are written. One transaction inserts the documents of the users who have none, and a
  `presence_joins` document naming them; a user who has one (online, or leaving within the
  grace) is set back to `online`, no event. The users inserted get their `presence_joined`
  (each its own insert, outside the transaction), then the `presence_joins` document is
  deleted. Two processes racing to insert meet the unique `_id`: the loser sets the user
  online and emits nothing. An event's `_id` is made of the user and the document's `since`,
  so a join written twice (a sweep finishing the joins of a process that died after its
  transaction) is one event; a grace does not end while a join is unwritten. The next chunk
  waits until this process's change stream has shown the last chunk's joins
  (JOIN_WAIT_SECONDS at most), and a new user's document here waits for their join: a storm
  of new users goes into the stream no faster than it delivers them.
- depart (a process's last connection of a user closes, or a drain ends): the process's
  document is deleted and the user marked `leaving` (conditional on `online`; all of a
  flush's departures in one `update_many`). No event yet.
- sweep (every process, every half heartbeat or half grace, whichever is shorter; a few
  indexed reads when nothing changed): a process silent for `STALE_HEARTBEATS` heartbeats
  (killed with `kill -9`) is claimed by a conditional delete of its heartbeat document (one
  sweeper wins), its user documents are deleted, and its users marked leaving as of its last
  heartbeat. (User documents of an earlier release still carry their own `seenAt` and are
  swept one by one, as that release does, so a rolling deploy mixes both.) A user leaving
  for longer than the grace period either has a document again (reconnected elsewhere: set
  back to `online`, no event) or is removed by `find_one_and_delete` conditional on the very
  `leavingSince` seen, in the same transaction as the `presence_left` insert. Only one
  sweeper's conditional delete can match, so each leave is emitted once. A process that has
  just started ends no grace during its first grace period: after a single replica restarts,
  its clients come back to it, and nobody else was there to take them in.

Why not one write per connection, or keep it in memory: a write per connect/disconnect
grows with connections (10,000 reconnecting clients = 20,000 writes), while users change far
less often; and memory per process cannot give the same answer on every replica nor notice a
replica that died. Why the grace in `presence_users` and not in each process: a user who
leaves A (drain) and arrives on B must be matched across processes, which only the shared
document can do. Every step is kept until it succeeded and retried on the next tick, so a
MongoDB outage or a write conflict between two processes only delays it.

Bounds: a killed process's users are stale after 1.5 heartbeats and seen by a sweep at most
half a heartbeat later, so `presence_left` follows `kill -9` within 2 heartbeats (when the
grace is shorter than 1.5 heartbeats; otherwise within the grace plus half a heartbeat). A
user who reconnects (to any process) within the grace produces neither leave nor join: a
deploy's 1012 drain moves users from one replica to another without a flap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta

from metrics.registry import Metrics
from service.core.errors import StoreError, StoreUnavailable
from service.core.ports import PresenceStore
from service.protocol.wire import Encoded

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25  # transitions are batched this long: one bulk write per tick at most
STALE_HEARTBEATS = 1.5  # a process silent this many heartbeats is considered dead
LOST_CHECK_BEATS = 20  # every this many beats (two per heartbeat), look for users whose fleet document went
# Users online with no process document at all are looked for at start, after a sweep that
# claimed a dead process (one that died between a user's join and its own document leaves
# them), and every ORPHAN_HEARTBEATS heartbeats as a backstop. The read covers every user
# (two `distinct`s: 0.19-0.27 s of the embedded store's lock at 5,000 users); it ran every 20 sweeps
# of every process, every 50 s with the default 5 s grace. The backstop runs once per fleet, by
# whichever process asks first once ORPHAN_HEARTBEATS heartbeats have passed: run by every
# process, at 50,000 users on 4 workers it stalled every worker's change stream for seconds every
# ~40 s (1.3 s of `distinct`s and 0.5 s of count each time; paging them did not help).
ORPHAN_HEARTBEATS = 10
# Users per `presence_arrive_many`. SecantusDB holds its storage lock through each command, so
# the change stream's next round trip waits for the whole of one: 1,000 users per call (a
# 0.2-0.4 s insert or update each) held every worker's stream up to seconds while 25,000 new
# users joined (the scaling run's p99 at 1 event/s: 3.3 s); 100 keep each command near 40 ms.
JOIN_CHUNK = 100
# A process writes its next chunk of joins once its change stream has shown it the last chunk's
# `presence_joined` (or this long after it was written, should one never show): joins go into
# the one ordered stream, and a join storm written as fast as the store takes it put thousands
# of them ahead of every other event (20,000 new users connecting to two workers on the embedded
# store: events to the clients already there waited 8.8-15.6 s at p99). One chunk in flight per
# process keeps that wait to a chunk's worth, and costs nothing when the stream keeps up.
JOIN_WAIT_SECONDS = 5.0
# While other events are flowing (any seen in the last EVENTS_RECENT_SECONDS) and the last
# chunk wrote joins, a chunk is this many users: the events wait behind at most that many of
# each process's joins in the stream. (Users back within their grace write no join: a restart
# keeps chunks of JOIN_CHUNK.)
# 20,000 new users connecting to two workers while 100 clients took 10 events/s: their p50
# 0.21-0.32 s and p99 0.74-1.83 s, against 0.99-2.0 s and 2.4-6.3 s with chunks of 100 always.
# Joins alone keep the full chunk: with 20, 10,000 joins on one process took 45-50 s instead of
# 29-36 s, and half as much of the service's CPU again (each chunk is a fan-out of its own).
JOIN_CHUNK_BEHIND_EVENTS = 20
EVENTS_RECENT_SECONDS = 2.0
JOINED = "presence_joined"
PRESENCE_EVENTS = frozenset({"presence_joined", "presence_left"})
STEP_TIMEOUT_SECONDS = 5.0  # at least; half a heartbeat when longer (cancelled work is redone)
BACKOFF_MAX_SECONDS = 8.0  # the longest pause of the steps after failures in a row
WRITE_CHUNK = 500  # users per `presence_write` (100 per command inside it)
# The events that change how many users the fleet has (a document inserted, or deleted): both.
COUNTED_EVENTS = PRESENCE_EVENTS


class Presence:
    """This process's side of presence: local counts, batched writes, the fleet-wide sweep."""

    def __init__(
        self,
        store: PresenceStore,
        metrics: Metrics,
        *,
        heartbeat_seconds: float,
        grace_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.heartbeat_seconds = heartbeat_seconds
        self.grace_seconds = grace_seconds
        self._clock = clock
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._counts: dict[int | str, dict[str, int]] = {}  # open connections here, by user, by transport
        self._names: dict[int | str, str] = {}
        self._dirty: set[int | str] = set()
        self._written: set[int | str] = set()  # users with a `presence` document of this process
        # User-level steps still to do (kept until done, so a MongoDB outage only delays them).
        self._arrivals: dict[int | str, str] = {}
        self._departures: set[int | str] = set()
        # Users whose arrival this process began (queued, cut off, or done) and whose document
        # here is not written yet: online fleet-wide, perhaps, with nothing of this process to
        # remove. One who leaves meanwhile (a drain cancels a flush between the two) must depart.
        self._unwritten: set[int | str] = set()
        self._started = time.monotonic()
        self._last_refresh = self._started  # monotonic time of the last refresh that succeeded
        self._refreshes = 0
        self._swept = False  # the last heartbeat found this process swept: rewrite everything
        self._backoff = 0.0  # seconds the loop's steps pause after the last failure (0: none)
        self._resume_at = 0.0  # monotonic time before which they do not run
        self._look_for_lost = False  # a heartbeat came late: look for users whose document went
        self._wake = asyncio.Event()  # the stream showed the last joins: write the next ones now
        # Joins written and not yet seen on the change stream (at most one chunk), and since
        # when. While a chunk is being written it holds the whole chunk: its events can show
        # before the call returns, and the call then says which of them were joins.
        self._unseen_joins: set[int | str] = set()
        self._joins_written_at = 0.0
        self._events_seen_at = -EVENTS_RECENT_SECONDS  # when the stream last showed an event not of presence
        self._last_chunk_joined = False  # whether the last `presence_arrive_many` wrote a join
        self._backlog: tuple[float, int] | None = None  # arrivals waiting on the stream: (since, joined)
        # Users whose document here waits for their join (flushed again once it is written;
        # kept apart from `_dirty`, so a flush does not go through thousands of them each time).
        self._held: set[int | str] = set()
        self._arrived: set[int | str] = set()  # of those, the ones whose join is written now
        self._task: asyncio.Task[None] | None = None
        # Whether the fleet's users may have changed since the gauge's last count: a count reads
        # every `presence_users` document (SecantusDB: ~17 µs each, holding its storage lock, so
        # 0.85 s at 50,000 users), and every process of a quiet fleet counted every sweep.
        self._count_stale = True
        # Often enough to see a dead process within half a heartbeat and to end a grace
        # within half a grace; each sweep is three indexed reads.
        self.sweep_seconds = max(FLUSH_SECONDS, min(heartbeat_seconds, grace_seconds or heartbeat_seconds) / 2)

    # -- hooks from the hub (synchronous, no I/O) -----------------------------------------

    def connected(self, user_id: int | str, user_name: str, transport: str) -> None:
        """An authenticated connection of this user was attached on this process."""
        counts = self._counts.setdefault(user_id, {})
        counts[transport] = counts.get(transport, 0) + 1
        self._names[user_id] = user_name
        self._dirty.add(user_id)

    def disconnected(self, user_id: int | str, transport: str) -> None:
        """One of this user's connections on this process was detached."""
        counts = self._counts.get(user_id)
        if counts is None:
            return
        left = counts.get(transport, 0) - 1
        if left > 0:
            counts[transport] = left
        else:
            counts.pop(transport, None)
        if not counts:
            del self._counts[user_id]
        self._dirty.add(user_id)

    def saw(self, events: Iterable[Encoded]) -> None:
        """Events the bus handed the hub: a join or a leave anywhere in the fleet (every process
        sees every event) means the next sweep counts the users again; this process's own joins
        seen let it write the next chunk of them; other events make the chunks small."""
        if any(encoded.event.type not in PRESENCE_EVENTS for encoded in events):
            self._events_seen_at = time.monotonic()
        if self._unseen_joins:
            for encoded in events:
                if encoded.event.type == JOINED:
                    user_id = encoded.event.fields.get("userId")
                    if isinstance(user_id, int | str):
                        self._unseen_joins.discard(user_id)
            if not self._unseen_joins and self._arrivals and time.monotonic() >= self._resume_at:
                self._wake.set()
        if not self._count_stale:
            self._count_stale = any(encoded.event.type in COUNTED_EVENTS for encoded in events)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Sweep once (users left behind by a fleet that stopped), then run the loop."""
        self._started = self._last_refresh = time.monotonic()
        try:
            await self._store.presence_refresh(self.process_id, self._clock())  # registered: sweepable
            await self._sweep(orphans=True)
        except StoreUnavailable:
            raise
        except StoreError as exc:  # a conflict with another sweeper: the loop sweeps again
            log.warning("presence: first sweep: %s: %s", type(exc).__name__, exc)
        self._task = asyncio.create_task(self._run(), name="presence")

    async def stop(self) -> None:
        """Write the last transitions and remove this process's users at once (clean drain)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StoreError):  # the TTL index and the sweepers remain
            self._dirty |= set(self._counts) | self._written
            self._counts.clear()
            await self.flush()
            await self._store.presence_remove_process(self.process_id)

    async def _run(self) -> None:
        beat = asyncio.create_task(self._beat(), name="presence-heartbeat")
        try:
            await self._steps_loop()
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _beat(self) -> None:
        """The heartbeat on its own task, twice per HEARTBEAT_SECONDS (one small write each): a
        flush or a sweep slowed by a join storm (each may take up to its step timeout) must
        not make the other processes sweep this one, nor may a beat that the loop runs late
        on a busy machine (with one beat per heartbeat, 0.5 heartbeats of lateness got a live
        process swept: its users left and joined again)."""
        while True:
            await asyncio.sleep(self.heartbeat_seconds / 2)
            await self._attempt(self._heartbeat, back_off=False)

    async def _steps_loop(self) -> None:
        last_sweep = last_orphans = time.monotonic()
        while True:
            # A tick, or sooner when the stream has shown the last joins and more wait.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(FLUSH_SECONDS, self._resume_at - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            # Independent steps: a flush that keeps failing (a conflict, an outage) must not
            # hold back the sweep or what a heartbeat found to do.
            await self._attempt(self.flush)
            if self._swept or self._look_for_lost:
                await self._attempt(self._reconcile)
            now = time.monotonic()
            if now - last_sweep >= self.sweep_seconds:
                last_sweep = now
                backstop = now - last_orphans >= ORPHAN_HEARTBEATS * self.heartbeat_seconds
                if backstop:
                    last_orphans = now
                await self._attempt(functools.partial(self._sweep, backstop=backstop))

    async def _attempt(self, step: Callable[[], Awaitable[None]], *, back_off: bool = True) -> None:
        """Run one step within STEP_TIMEOUT_SECONDS; a failure is logged and retried (every
        pending change is kept until written).

        After a failure the loop's steps pause, 0.5 s then twice as long after each further
        failure up to BACKOFF_MAX_SECONDS: a store that times out is usually overloaded, and
        MongoDB goes on running what a client gave up on, so retrying every tick adds the same
        work again and again (a 50,000-user connect storm once kept SecantusDB busy for ten
        minutes, every request of every worker waiting behind it). The heartbeat, on its own
        task, does not back off (`back_off=False`): it is one small write per half heartbeat.
        """
        try:
            async with asyncio.timeout(max(STEP_TIMEOUT_SECONDS, self.heartbeat_seconds / 2)):
                await step()
        except (StoreError, TimeoutError) as exc:
            if back_off:
                self._backoff = min(BACKOFF_MAX_SECONDS, max(0.5, self._backoff * 2))
                self._resume_at = time.monotonic() + self._backoff
            log.warning("presence: %s: %s; retrying in %.1f s", type(exc).__name__, exc, self._backoff)
        else:
            if back_off:
                self._backoff = 0.0

    # -- writes ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write the transitions collected since the last flush: the per-user arrive steps, one
        bulk write of this process's changed documents, then the per-user depart steps."""
        if not self._dirty:
            if self._arrivals or self._departures:
                await self._steps(self._clock())
            return
        dirty, self._dirty = self._dirty, set()
        now = self._clock()
        upserts: dict[int | str, tuple[str, dict[str, int]]] = {}
        removals: list[int | str] = []
        for user_id in dirty:
            counts = self._counts.get(user_id)
            if counts:
                upserts[user_id] = (self._names[user_id], dict(counts))
            elif user_id in self._written:
                removals.append(user_id)
            elif user_id in self._unwritten:  # left before its document here was written
                self._unwritten.discard(user_id)
                self._held.discard(user_id)
                self._arrived.discard(user_id)
                self._arrivals.pop(user_id, None)
                self._departures.add(user_id)
        for user_id in upserts:
            if user_id not in self._written and user_id not in self._arrived:
                self._arrivals[user_id] = upserts[user_id][0]
                self._unwritten.add(user_id)
                self._departures.discard(user_id)
        try:
            # Arrivals first: one small update takes a user back from `leaving`, before the bulk
            # write (slow under a restart's load) could let their grace run out.
            await self._steps(now)
        except BaseException:  # an error, or the step's timeout: nothing is lost
            self._dirty |= dirty
            raise
        # A user whose join still waits (for the stream, or after a step cut off) waits for
        # their document here too, and is written by the flush after their join: a storm of new
        # users then costs the store no faster than the stream shows their joins, and no listing
        # counts a connection of a user who has not joined.
        held = [user_id for user_id in upserts if user_id in self._arrivals]
        for user_id in held:
            del upserts[user_id]
        self._held.update(held)
        # WRITE_CHUNK users per call, each kept once written: a store too slow for all of a
        # connect storm's users within one call's MONGODB_TIMEOUT_MS still makes progress,
        # where retrying the whole (as before) timed out again every time.
        users = [*upserts, *removals]
        for start in range(0, len(users), WRITE_CHUNK):
            part = users[start : start + WRITE_CHUNK]
            changed = {user_id: upserts[user_id] for user_id in part if user_id in upserts}
            gone = [user_id for user_id in part if user_id not in upserts]
            new = [user_id for user_id in changed if user_id not in self._written]
            try:
                await self._store.presence_write(self.process_id, changed, gone, now, new=new)
            except BaseException:
                self._dirty.update(users[start:])
                self._arrived.difference_update(users[start:])  # asked again, as after any failed write
                raise
            for user_id in gone:
                self._arrivals.pop(user_id, None)
                self._departures.add(user_id)
            self._written.update(changed)
            self._written.difference_update(gone)
            self._unwritten.difference_update(changed)
            self._arrived.difference_update(changed)
        await self._steps(now)

    async def _steps(self, now: datetime) -> None:
        """The per-user steps around the bulk write: back online or joined, and leaving.

        Arriving users (returning within their grace, the common case of a restart, or new)
        take a few bulk operations per JOIN_CHUNK of them (`presence_arrive_many`), departing
        users one `update_many` per chunk of ids. (One transaction per new user, as before,
        kept the one embedded store busy for minutes while 50,000 new users connected.) Each
        step is kept until it succeeded.
        """
        store = self._store
        # JOIN_CHUNK users per call; a step's timeout between calls leaves the rest for the next
        # tick, and so do joins of the last call that the change stream has not shown yet.
        while self._arrivals:
            if self._unseen_joins and time.monotonic() - self._joins_written_at < JOIN_WAIT_SECONDS:
                self._waiting_for_stream()
                break
            chunk = dict(itertools.islice(self._arrivals.items(), self.join_chunk()))
            # The gate above passed: what the set held no longer holds anything back.
            self._unseen_joins = set(chunk)
            try:
                joined = await store.presence_arrive_many(chunk, now)
            except BaseException:
                self._unseen_joins = set()
                raise
            for user_id in chunk:
                self._arrivals.pop(user_id, None)
            released = self._held.intersection(chunk)
            if released:  # their documents here, at the next flush
                self._held -= released
                self._arrived |= released
                self._dirty |= released
            self._last_chunk_joined = bool(joined)
            self._unseen_joins.intersection_update(joined)  # those seen meanwhile are gone already
            self._joins_written_at = time.monotonic()
            if self._backlog is not None:
                self._backlog = (self._backlog[0], self._backlog[1] + len(joined))
        if not self._arrivals and self._backlog is not None:
            since, joined_count = self._backlog
            self._backlog = None
            elapsed = time.monotonic() - since
            log.info("presence: join backlog written: %d users joined in %.1f s", joined_count, elapsed)
        if self._departures:
            departing = list(self._departures)
            await store.presence_depart_many(departing, now)
            self._departures.difference_update(departing)

    def join_chunk(self) -> int:
        """Users per `presence_arrive_many`: JOIN_CHUNK, or JOIN_CHUNK_BEHIND_EVENTS while the
        stream carries other events, which would wait behind a chunk's joins, and the last
        chunk wrote joins (new users, not a restart's returning ones)."""
        if self._last_chunk_joined and time.monotonic() - self._events_seen_at < EVENTS_RECENT_SECONDS:
            return JOIN_CHUNK_BEHIND_EVENTS
        return JOIN_CHUNK

    def _waiting_for_stream(self) -> None:
        """Say once per backlog that arrivals wait for the change stream."""
        if self._backlog is None:
            self._backlog = (time.monotonic(), len(self._unseen_joins))
            log.info(
                "presence: %d arrivals wait until the change stream shows the last %d joins "
                "(joins are written as fast as it shows them)",
                len(self._arrivals),
                len(self._unseen_joins),
            )

    async def _refresh(self) -> None:
        """The heartbeat, then what it found to do (the loop runs the two apart)."""
        await self._heartbeat()
        await self._reconcile()

    async def _heartbeat(self) -> None:
        """One write, however many users (`presence_processes`); notes whether this process
        was swept meanwhile, or may have been."""
        kept = await self._store.presence_refresh(self.process_id, self._clock())
        now = time.monotonic()
        late, self._last_refresh = now - self._last_refresh, now
        self._refreshes += 1
        if not kept:
            self._swept = True
        # Asked only when a sweep may have taken this process's users: this heartbeat came later
        # than the stale bound allows, and every LOST_CHECK_BEATS beats against clock skew.
        elif late > self.heartbeat_seconds * (STALE_HEARTBEATS - 0.25) or self._refreshes % LOST_CHECK_BEATS == 0:
            self._look_for_lost = True

    async def _reconcile(self) -> None:
        """After a heartbeat: a swept process writes all its users again; users whose fleet-wide
        document is gone (a sweep took it while this process stalled, and a later flush
        re-created only the process document) arrive again. (`presence_missing` reads every
        user of the process: asked at each heartbeat, 12,500 users per worker at 50,000
        connections, it kept the embedded store busy.)"""
        if self._swept:
            self._swept = self._look_for_lost = False
            if self._written or self._counts:
                log.warning("presence: this process was swept; rewriting its %d users", len(self._written))
                self._dirty |= self._written | set(self._counts)
                self._written.clear()
            return
        if self._look_for_lost:
            if self._written:
                for user_id in await self._store.presence_missing(list(self._written)):
                    if user_id in self._names:
                        self._arrivals[user_id] = self._names[user_id]
            self._look_for_lost = False

    async def _sweep(self, *, orphans: bool = False, backstop: bool = False) -> None:
        """Remove dead processes' users, end graces that ran out, update the gauge.

        Args:
            orphans: look for users online with no process document (a process's start).
            backstop: this process's periodic look for them is due: it looks if no process of
                the fleet did in the last ORPHAN_HEARTBEATS heartbeats (`presence_claim_backstop`).
        """
        store = self._store
        now = self._clock()
        stale_before = now - timedelta(seconds=self.heartbeat_seconds * STALE_HEARTBEATS)
        claimed = False
        for doc in await store.presence_stale_processes(stale_before):
            users = await store.presence_sweep_process(doc["_id"], doc["seenAt"])
            claimed = claimed or users is not None
            if users:
                await store.presence_depart_many(users, doc["seenAt"])
        # Documents of replicas of an earlier release, refreshed one by one (a rolling deploy).
        for doc in await store.presence_stale(stale_before):
            if await store.presence_claim_stale(doc["_id"], doc["seenAt"]):
                await store.presence_depart(doc["userId"], doc["seenAt"])
        await store.presence_finish_joins(now)  # before any grace ends: a join precedes its leave
        if backstop and not (orphans or claimed):
            orphans = await store.presence_claim_backstop(
                now, timedelta(seconds=ORPHAN_HEARTBEATS * self.heartbeat_seconds)
            )
        if orphans or claimed:
            await store.presence_mark_orphans(now)
        # A process that just started gives clients one grace to come back to it first: after
        # a single-replica restart, nobody else was there to take them back.
        if time.monotonic() - self._started >= self.grace_seconds:
            grace_before = now - timedelta(seconds=self.grace_seconds)
            for doc in await store.presence_leaving(grace_before):
                await store.presence_settle(doc["_id"], doc["leavingSince"], now)
        # Counted when a join or leave was seen since the last count, and on every orphan sweep
        # (whatever changed the documents without an event: a backstop).
        if self._count_stale or orphans:
            self._count_stale = False  # a join seen while counting asks for another count
            try:
                self._metrics.presence_users.set(await store.presence_count())
            except BaseException:
                self._count_stale = True
                raise

    # -- reads ----------------------------------------------------------------------------

    def local_users(self) -> int:
        """Users with at least one connection on this process."""
        return len(self._counts)
