"""The event bus: one change stream on `events` per process, feeding the hub.

It keeps the last HISTORY_SIZE events in memory for resume, saves a sparse index of stream
positions (resume tokens) in the store so any process can replay older history cheaply
(`service.fanout.replay`), and always knows where its own stream stands: from the moment it opens
it holds a resume token (the open's own position before the first change), so after a
MongoDB outage it resumes exactly where it was, never from "now". When the store says that
position is gone (`HistoryLost`), every client is told to `resync` and memory's coverage
starts again at the new position. It reaches storage only through the `ChangeFeed` port.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
import zlib
from collections import deque

from metrics.registry import Metrics
from service.core.errors import HistoryLost, ReplayBusy, StoreError, StoreUnavailable
from service.core.events import Change, ResumeToken, event_from_change, event_id, metric_type, parse_event_id
from service.core.ports import ChangeFeed, ChangeStream
from service.fanout.hub import Hub
from service.fanout.replay import PAGE_SIZE, MemoryReplay, Replay, ReplayGate, StoreReplay, Wants
from service.protocol.wire import Encoded, encode_event

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
FUTURE_TOLERANCE_SECONDS = 60  # clock skew between replicas that an id may show
# Positions saved: events whose id hashes to 0 modulo this (the same events on every
# process, so replicas mostly write the same documents), and at least every 4× this many
# events per process. A replay skips at most that many events before the client's id.
POSITION_EVERY = 64
# Events per round trip of a replay's change stream: SecantusDB holds its storage lock while it
# reads a batch, so small batches let writes in between (1,000 per batch: writes' p99 235 ms
# under a deep-replay storm; 100: see bench/README.md "Replay storm").
REPLAY_BATCH = 100
# The most changes fanned out as one batch: a round trip that read more goes out in several.
MAX_BATCH_EVENTS = 1000
# A starting process reads the events before its stream's start back into memory (its
# "warm-up"), so the clients of the replica it replaces resume from memory instead of each
# replaying from MongoDB. A warm-up still running after this long is dropped; a resume waits
# at most WARM_WAIT_SECONDS for it before replaying from MongoDB itself.
WARM_SECONDS = 60.0
WARM_WAIT_SECONDS = 10.0
# Saved positions read per sampled one wanted: room for the others between them (a start and
# a few forced positions per replica every 4 × POSITION_EVERY events).
WARM_POSITIONS_PER_SAMPLE = 8
WARM_ENCODE_CHUNK = 500  # events encoded per loop turn when a segment's read is done
WARM_SEGMENT = 16  # sampled positions per segment of the warm-up (~1,000 events)


def sampled(id: str) -> bool:
    """Whether an event's position is one every process saves (1 in POSITION_EVERY)."""
    return zlib.crc32(id.encode()) % POSITION_EVERY == 0


class Bus:
    """Change stream → history → hub, and replay for resuming clients."""

    def __init__(
        self,
        feed: ChangeFeed,
        hub: Hub,
        metrics: Metrics,
        *,
        history_size: int,
        history_ttl_seconds: float = 86_400,
        gate: ReplayGate | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._feed = feed
        self._hub = hub
        self._metrics = metrics
        self.history_ttl_seconds = history_ttl_seconds
        self.gate = gate or ReplayGate()
        self.page_size = page_size
        self.history: deque[Encoded] = deque(maxlen=history_size)
        self._history_ids: deque[str] = deque(maxlen=history_size)
        # Every event with an id above this one is in `history` (or still to come).
        self.covered_from: str | None = None
        self._resume_token: ResumeToken | None = None
        self._task: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._unsaved: tuple[str, ResumeToken] | None = None  # newest position to save
        self._since_saved = 0
        self._warming: asyncio.Task[None] | None = None
        self._warm_from: str | None = None  # where the warm-up reads back to, once known
        self._grown = asyncio.Event()  # set (and replaced) each time the warm-up adds to memory
        self._lost = 0  # times history was lost: a warm-up begun before one is dropped
        self.running = False

    async def start(self) -> None:
        """Open the change stream (so events inserted after this returns are seen) and run it.

        The stream opens at "now" and its first resume token marks that position, so no
        scan of the oplog by time is needed and an outage before the first event resumes
        from here.
        """
        stream = await self._open(None)
        self.running = True
        self._task = asyncio.create_task(self._run(stream), name="bus")
        if self.covered_from is not None and self.history.maxlen:
            self._warming = asyncio.create_task(self._warm(self.covered_from), name="bus-warm")

    async def stop(self) -> None:
        for task in (self._warming, self._task, self._saver):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.running = False

    async def _open(self, token: ResumeToken | None) -> ChangeStream:
        """A change stream from `token`, or from now (then memory's coverage starts here)."""
        stream = await self._feed.watch_events(resume_after=token)
        self._resume_token = stream.resume_token or token
        if token is None:
            # Every event after the cluster time read *after* the open is seen by this stream.
            self.covered_from = event_id(await self._feed.cluster_time())
            if self._resume_token is not None:
                # Saved, so a replay from any id this process delivers finds a position at or
                # before it (the sampled ones alone may lie after it).
                try:
                    await self._feed.save_position(self.covered_from, self._resume_token)
                except StoreError as exc:
                    log.warning("start position not saved (replays from before the next one resync): %s", exc)
        return stream

    async def _run(self, stream: ChangeStream | None) -> None:
        failures = 0
        while True:
            try:
                if stream is None:
                    stream = await self._open(self._resume_token)
                    log.info("change stream resumed")
                self.running = True
                failures = 0
                try:
                    await self._follow(stream)
                finally:
                    with contextlib.suppress(StoreError):
                        await stream.close()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                if isinstance(exc, HistoryLost):
                    log.error("change stream history lost; connected clients are told to resync")
                    self._resume_token = None
                    self._history_lost()
                elif self.running:
                    log.warning("change stream interrupted: %s", exc)
            except Exception:
                # A bug, not an outage: said with its traceback every time, and the stream
                # reopened at its position. Never a bus that died quietly, which leaves this
                # process delivering nothing while /readyz still says ready.
                log.exception("change stream failed; reopening it where it stood")
            self.running = False
            stream = None
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures += 1

    async def _follow(self, stream: ChangeStream) -> None:
        """Read the stream for ever, fanning out what each round trip brought as one batch."""
        while True:
            change = await stream.try_next()
            if change is not None:
                # The changes that arrived while the last fan-out ran came in this
                # round trip: they go out together, one write per client.
                changes = [change]
                while len(changes) < MAX_BATCH_EVENTS and stream.buffered():
                    more = await stream.try_next()
                    if more is None:
                        break
                    changes.append(more)
                self.handle_batch(changes)
            # Past empty batches too: a quiet collection must not leave the
            # position behind the oplog's pruning.
            self._resume_token = stream.resume_token or self._resume_token

    def handle(self, change: Change) -> None:
        """Turn one change into a delivered event."""
        self.handle_batch([change])

    def handle_batch(self, changes: list[Change]) -> None:
        """Turn change notifications (in stream order) into events delivered as one batch."""
        m = self._metrics
        ready: list[Encoded] = []
        tokens: list[ResumeToken] = []
        for change in changes:
            event = event_from_change(change)
            if event is None:
                log.warning("ignored a document in events that is not a valid event")
                continue
            if self._history_ids and event.id <= self._history_ids[-1]:
                continue  # handled before a failure reopened the stream at this batch's start
            m.bus_lag.observe(max(0.0, time.time() - event.inserted_at))
            m.events_published.labels(metric_type(event.type)).inc()
            encoded = encode_event(event)
            if len(self.history) == self.history.maxlen:
                self.covered_from = self.history[0].event.id
            self.history.append(encoded)
            self._history_ids.append(event.id)
            ready.append(encoded)
            tokens.append(change.token)
        self._hub.deliver_many(ready)
        for encoded, token in zip(ready, tokens, strict=True):
            self._note_position(encoded.event.id, token)

    async def _warm(self, until: str) -> None:
        """Read the events up to `until` (where this process's stream began), as many as
        memory holds, back into memory: newest first, a segment of about WARM_SEGMENT sampled
        positions (~1,000 events) at a time, each put in front of memory as soon as it is read.

        Without it a new process's memory starts empty, and every client of the replica it
        replaces (a rolling deploy, a crash) resumes from MongoDB: N store replays of the same
        events, 8 at a time, the rest told to come back later. Newest first, the clients that
        were following live (their ids are recent) are served after the first segment, however
        long the whole history takes. Whatever it cannot do is logged; memory keeps what was
        read by then.
        """
        lost = self._lost
        began = time.monotonic()
        kept = 0
        try:
            async with asyncio.timeout(WARM_SECONDS):
                candidates, starts = await self._warm_plan(until)
                if not starts:
                    return  # nothing saved before this process's start: a new database
                self._warm_from = candidates[starts[-1]][0]
                end, newer = until, -1
                for planned in starts:
                    opened = await self._open_segment(candidates, planned, newer)
                    if opened is None:
                        log.info("memory warmed back to %s only: older positions were pruned from the oplog", end)
                        break
                    stream, at = opened
                    start = candidates[at][0]
                    read, dropped = await self._read_segment(stream, end)
                    warm = await self._encode(read)
                    if lost != self._lost:
                        return  # history was lost meanwhile: memory starts again from the new position
                    added, full = self._prepend(warm, event_id(read[0].position) if dropped else start)
                    kept += added
                    self._warm_grew()
                    if full or at != planned:
                        break  # memory is full, or the older positions are pruned
                    end, newer = start, at
        except (StoreError, TimeoutError) as exc:
            log.warning("memory warm-up stopped (older resumes replay from MongoDB): %s", exc or "timed out")
        finally:
            self._warm_from = None
            self._warm_grew()
        if kept:
            log.info(
                "memory warmed: %d events from before this process started, read in %.2f s; "
                "resumes from %s on replay from memory",
                kept,
                time.monotonic() - began,
                self.covered_from,
            )

    async def _warm_plan(self, until: str) -> tuple[list[tuple[str, ResumeToken]], list[int]]:
        """The saved positions before `until` (newest first), and the indexes among them of the
        segments' starts, newest first, the last about HISTORY_SIZE events back.

        The sampled positions (`sampled`) are POSITION_EVERY events apart on average whatever
        the number of replicas; the others (each process's start, and the ones a process adds
        when sampling skipped many events) are not counted.
        """
        back = (self.history.maxlen or 0) // POSITION_EVERY
        candidates = await self._feed.positions_before(until, WARM_POSITIONS_PER_SAMPLE * (back + 1))
        if not candidates:
            return candidates, []
        marks = [at for at, (id, _) in enumerate(candidates) if sampled(id)]
        last = marks[back] if back < len(marks) else len(candidates) - 1
        # Every WARM_SEGMENT sampled positions, but none within half a segment of the last.
        starts = [marks[n] for n in range(WARM_SEGMENT - 1, min(back - WARM_SEGMENT // 2, len(marks)), WARM_SEGMENT)]
        return candidates, [*(at for at in starts if at < last), last]

    async def _open_segment(
        self, candidates: list[tuple[str, ResumeToken]], at: int, newer: int
    ) -> tuple[ChangeStream, int] | None:
        """A stream from `candidates[at]`, or, when the store has pruned it, from a newer
        position still older than `candidates[newer]` (the last segment's start); with the
        index it opened at. None when each of those was pruned."""
        while True:
            try:
                stream = await self._feed.watch_events(resume_after=candidates[at][1], batch_size=REPLAY_BATCH)
            except HistoryLost:
                if at <= newer + 1:
                    return None
                at = (newer + 1 + at) // 2
            else:
                return stream, at

    async def _read_segment(self, stream: ChangeStream, end: str) -> tuple[deque[Change], bool]:
        """The changes up to `end`, at most HISTORY_SIZE (the newest; the flag says whether
        older ones were dropped), kept as changes so that only those memory keeps are encoded."""
        read: deque[Change] = deque(maxlen=self.history.maxlen)
        dropped = False
        try:
            while (change := await stream.try_next()) is not None:
                if event_id(change.position) > end:
                    break  # memory has it, or the live stream will
                dropped = dropped or len(read) == read.maxlen
                read.append(change)
        finally:
            with contextlib.suppress(StoreError):
                await stream.close()
        return read, dropped

    @staticmethod
    async def _encode(read: deque[Change]) -> deque[Encoded]:
        """A segment's events, encoded WARM_ENCODE_CHUNK per loop turn (live events and
        connects go on meanwhile)."""
        warm: deque[Encoded] = deque()
        for n, change in enumerate(read, 1):
            if (event := event_from_change(change)) is not None:
                warm.append(encode_event(event))
            if n % WARM_ENCODE_CHUNK == 0:
                await asyncio.sleep(0)
        return warm

    def _prepend(self, warm: deque[Encoded], start: str) -> tuple[int, bool]:
        """Put events older than memory's in front of it, with no await (coverage and memory
        move together): how many were added, and whether memory is now full. `start`: the
        position the events follow; memory then covers from there (from the first event kept
        when there is no room for all)."""
        if self._history_ids:  # the live stream opened before the first segment's end: it may hold some
            while warm and warm[-1].event.id >= self._history_ids[0]:
                warm.pop()
        room = (self.history.maxlen or 0) - len(self.history)
        full = len(warm) >= room
        while len(warm) > room:
            warm.popleft()
        if warm:
            self.history.extendleft(reversed(warm))
            self._history_ids.extendleft(reversed([e.event.id for e in warm]))
            self.covered_from = warm[0].event.id if full else start
        elif not full and self.covered_from is not None and start < self.covered_from:
            self.covered_from = start  # nothing in between: memory covers from there too
        return len(warm), full

    def _warm_grew(self) -> None:
        """Wake the resumes waiting for the warm-up (memory grew, or the warm-up ended)."""
        self._grown.set()
        self._grown = asyncio.Event()

    def _note_position(self, id: str, token: ResumeToken) -> None:
        """Save some positions (see POSITION_EVERY), in the background, newest first."""
        self._since_saved += 1
        if not sampled(id) and self._since_saved < 4 * POSITION_EVERY:
            return
        self._since_saved = 0
        self._unsaved = (id, token)
        if self._saver is None or self._saver.done():
            self._saver = asyncio.get_running_loop().create_task(self._save_positions(), name="bus-positions")

    async def _save_positions(self) -> None:
        while self._unsaved is not None:
            (id, token), self._unsaved = self._unsaved, None
            try:
                await self._feed.save_position(id, token)
            except StoreError as exc:
                log.debug("position %s not saved: %s", id, exc)  # a sparser index, nothing lost

    def _history_lost(self) -> None:
        self._lost += 1
        self._hub.flush()  # events held by the write delay go out before the resync
        self.history.clear()
        self._history_ids.clear()
        self.covered_from = None
        for connection in self._hub:
            connection.send_message({"type": "resync", "reason": "history lost"})

    def recent_since(self, last_id: str) -> list[Encoded] | None:
        """Events after `last_id` from memory; None when memory does not reach back that far."""
        if self.covered_from is None or last_id < self.covered_from:
            return None
        return self.memory_after(last_id)

    def memory_after(self, last_id: str) -> list[Encoded]:
        """The events in memory after `last_id`, in order."""
        start = bisect.bisect_right(self._history_ids, last_id)
        return list(itertools.islice(self.history, start, None))

    async def _wait_for_warm_up(self, warming: asyncio.Task[None], last_id: str) -> list[Encoded] | None:
        """`recent_since(last_id)` once the warm-up has read back that far (None when it ends
        first, or after WARM_WAIT_SECONDS)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WARM_WAIT_SECONDS):
                while (recent := self.recent_since(last_id)) is None and self._warming_covers(warming, last_id):
                    await self._grown.wait()
                return recent
        return self.recent_since(last_id)

    def _warming_covers(self, warming: asyncio.Task[None], last_id: str) -> bool:
        """Whether the warm-up is still running and will put what follows `last_id` in memory
        (or may: it does not know its start yet)."""
        return not warming.done() and (self._warm_from is None or self._warm_from <= last_id)

    def expired(self, last_id: str) -> bool:
        """Whether `last_id` is not ours, from the future, or older than HISTORY_TTL_SECONDS."""
        position = parse_event_id(last_id)
        now = time.time()
        return (
            position is None
            or position.time > now + FUTURE_TOLERANCE_SECONDS
            or position.time < now - self.history_ttl_seconds
        )

    async def open_replay(self, last_id: str, wants: Wants, user_id: int | str) -> Replay | None:
        """The events after `last_id` that `wants` accepts, as pages; None when they cannot
        all be replayed (the client must `resync`).

        Memory first; otherwise, admitted by the gate, a change stream resumed at the newest
        saved position at or before the id.

        Raises:
            ReplayBusy: a store replay was not admitted now.
            StoreUnavailable: MongoDB did not answer.
        """
        if self.expired(last_id):
            log.info("resume from %s: resync (not an id of ours, from the future, or past the history TTL)", last_id)
            return None  # following a future id would filter out every live event
        recent = self.recent_since(last_id)
        warming = self._warming
        if recent is None and warming is not None and self._warming_covers(warming, last_id):
            # One read of MongoDB at this process's start serves all the resumes it will bring.
            recent = await self._wait_for_warm_up(warming, last_id)
        if recent is not None:
            self._metrics.replays.labels("memory").inc()
            return MemoryReplay(recent, last_id, wants)
        self._metrics.replays.labels("store").inc()
        ticket = await self.gate.acquire(user_id)
        try:
            saved = await self._feed.position_at_or_before(last_id)
            if saved is None:
                ticket.release()
                log.info("resume from %s: resync (older than every saved position)", last_id)
                return None  # nothing proves the gap is whole
            stream = await self._feed.watch_events(resume_after=saved, batch_size=REPLAY_BATCH)
        except HistoryLost:
            ticket.release()
            log.info("resume from %s: resync (its position was pruned from the oplog)", last_id)
            return None
        except StoreUnavailable:
            ticket.release()
            raise
        except StoreError as exc:
            ticket.release()
            raise StoreUnavailable(f"cannot replay: {exc}") from exc
        except BaseException:
            ticket.release()
            raise
        return StoreReplay(stream, last_id, wants, self, ticket, page_size=self.page_size)


__all__ = ["Bus", "ReplayBusy"]
