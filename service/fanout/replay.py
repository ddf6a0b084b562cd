"""Catching a resuming client up: bounded, paged, filtered, and never silently short.

A resume is served from the bus's memory when memory reaches back to the client's id, else
from MongoDB: a change stream resumed from the nearest *position* (a resume token the bus
saved for an event at or before the id) reads forward one page at a time until memory covers
the rest. What a client can make this cost is bounded three ways:

- a page is at most `PAGE_SIZE` events read after the client's id (those between the saved
  position and the id are read past, not counted), filtered for the client before they are
  encoded, and handed to it before the next is read (a stream waits until its client has
  taken the page; a poll answers with one page and carries on at the next poll);
- store replays run through a `ReplayGate`: a few at a time per process, at most
  `PER_USER` per user, a bounded queue and a bounded wait, else `ReplayBusy`; and each
  user's pages are paced (`PAGE_BURST` at once, then `PAGES_PER_SECOND`);
- opening costs an index lookup and a seek to a saved position, never a scan of the oplog
  by time (SecantusDB answers `startAtOperationTime` by reading the whole oplog while
  holding its storage lock; 0.5 s per open at 30,000 entries, stalling every write).

History that is gone is never replayed as if it were complete: an id older than
HISTORY_TTL_SECONDS, one with no saved position at or before it, or one whose position
the store has pruned (`HistoryLost`) answers `None`, and the client gets `resync`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from service.core.errors import ReplayBusy, StoreError, StoreUnavailable
from service.core.events import Event, event_from_change, event_id
from service.core.ports import ChangeStream
from service.fanout.pace import Paced, Pacer
from service.protocol.wire import Encoded, encode_event

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # events read from MongoDB per page (a poll reads at most one)
SLOTS = 8  # store replays running at once per process
PER_USER = 3  # store replays of one user, running or waiting, per process
QUEUE = 256  # store replays waiting for a slot per process
WAIT_SECONDS = 5.0  # longest wait for a slot before `ReplayBusy`
# Pages read from MongoDB per user per process: a burst, then this rate (a page costs MongoDB
# tens of milliseconds of CPU; one user re-reading old history must not take all of it).
PAGES_PER_SECOND = 2.0
PAGE_BURST = 4
PAGE_WAIT_SECONDS = 30.0

Wants = Callable[[Event], bool]


class Memory(Protocol):
    """What a replay needs of the bus's in-memory history."""

    covered_from: str | None

    def memory_after(self, last_id: str) -> list[Encoded]:
        """Events in memory after `last_id`, in order (valid when `covered_from <= last_id`)."""


@dataclass(slots=True)
class Page:
    """One step of a replay: the events for the client, and how far the replay has read."""

    events: list[Encoded]
    position: str  # id of the last event read, wanted or not: where the next page starts
    done: bool  # nothing more to replay: live events follow


class ReplayGate:
    """Admission for store replays: `slots` at once, `per_user` per user, `queue` waiting.

    A replay that cannot be admitted (the user has `per_user` already, the queue is full, or
    no slot freed within `wait_seconds`) raises `ReplayBusy`: the client is told to come
    back later (WebSocket 1013, a poll 503 with Retry-After) instead of queueing without end.
    """

    def __init__(
        self,
        slots: int = SLOTS,
        *,
        per_user: int = PER_USER,
        queue: int = QUEUE,
        wait_seconds: float = WAIT_SECONDS,
    ) -> None:
        self._free = asyncio.Semaphore(slots)
        self._per_user = per_user
        self._queue = queue
        self._wait_seconds = wait_seconds
        self._users: dict[int | str, int] = {}
        self._waiting = 0
        self.running = 0
        self.pages = Pacer(PAGES_PER_SECOND, PAGE_BURST, max_wait=PAGE_WAIT_SECONDS)

    def users(self) -> int:
        """How many users have a replay running or waiting."""
        return len(self._users)

    async def acquire(self, user_id: int | str) -> Ticket:
        """A slot for one store replay; give it back with `Ticket.release`.

        Raises:
            ReplayBusy: not admitted (see the class docstring).
        """
        held = self._users.get(user_id, 0)
        if held >= self._per_user:
            raise ReplayBusy("too many replays for this user")
        if self._free.locked() and self._waiting >= self._queue:
            raise ReplayBusy("replay queue full")
        self._users[user_id] = held + 1
        self._waiting += 1
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self._free.acquire()
        except TimeoutError:
            self._forget(user_id)
            raise ReplayBusy("no replay slot free") from None
        except BaseException:
            self._forget(user_id)
            raise
        finally:
            self._waiting -= 1
        self.running += 1
        return Ticket(self, user_id)

    def _forget(self, user_id: int | str) -> None:
        left = self._users.get(user_id, 1) - 1
        if left > 0:
            self._users[user_id] = left
        else:
            self._users.pop(user_id, None)

    def _release(self, user_id: int | str) -> None:
        self.running -= 1
        self._forget(user_id)
        self._free.release()


@dataclass(slots=True)
class Ticket:
    """One admitted store replay; `release` is idempotent."""

    gate: ReplayGate
    user_id: int | str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate._release(self.user_id)

    async def page(self) -> None:
        """Wait for this user's turn to read a page from MongoDB.

        Raises:
            ReplayBusy: the turn is further away than PAGE_WAIT_SECONDS.
        """
        try:
            await self.gate.pages.take(self.user_id)
        except Paced as exc:
            raise ReplayBusy(f"replay paced ({exc.retry_after:.0f}s)") from None


class Replay:
    """The events after a client's id, page by page; `close` it when done with it."""

    async def next_page(self) -> Page:
        """The next page; `Page.done` says whether another follows."""
        raise NotImplementedError

    async def close(self) -> None:
        """Give back what the replay holds (a change stream, a gate slot)."""


class MemoryReplay(Replay):
    """A replay that memory covers whole: one page, nothing to wait for."""

    def __init__(self, events: Iterable[Encoded], after: str, wants: Wants) -> None:
        self._events = [e for e in events if wants(e.event)]
        self._position = max((e.event.id for e in self._events), default=after)

    async def next_page(self) -> Page:
        events, self._events = self._events, []
        return Page(events, self._position, done=True)


@dataclass(eq=False)
class StoreReplay(Replay):
    """A change stream resumed at a saved position before the client's id, read a page at a
    time until memory covers what follows (decided with no await between the check and the
    memory read, so memory cannot move its boundary in between)."""

    stream: ChangeStream
    after: str  # the client's id: events at or before it are skipped
    wants: Wants
    memory: Memory
    ticket: Ticket | None = None
    page_size: int = PAGE_SIZE
    _closed: bool = field(default=False, init=False)

    async def next_page(self) -> Page:
        if self.ticket is not None:
            await self.ticket.page()
        events: list[Encoded] = []
        caught_up = False
        read = 0
        while read < self.page_size:
            try:
                change = await self.stream.try_next()
            except StoreUnavailable:
                raise
            except StoreError as exc:
                raise StoreUnavailable(f"replay interrupted: {type(exc).__name__}: {exc}") from exc
            if change is None:
                caught_up = True  # nothing more committed right now
                break
            position = event_id(change.position)
            if position <= self.after:
                # Between the saved position and the client's id: not part of the page. Counted,
                # a poll (one page each, each from the newest saved position at or before its
                # id) whose saved position lay a page or more behind got an empty page and the
                # same id back, for ever; positions are sparse after a burst (the saver keeps
                # only the newest while a save is in flight).
                continue
            read += 1
            self.after = position
            event = event_from_change(change)
            if event is not None and self.wants(event):
                events.append(encode_event(event))
        # From here to the return, no await: `covered_from` and memory are read together.
        # Caught up, everything committed after the client's id was read: any later event is
        # in memory (the bus saw it) or still to come live (held since before the replay began).
        covered = self.memory.covered_from
        if caught_up or (covered is not None and covered <= self.after):
            events += [e for e in self.memory.memory_after(self.after) if self.wants(e.event)]
            return Page(events, max(self.after, events[-1].event.id if events else self.after), done=True)
        return Page(events, self.after, done=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.stream.close()
        except StoreError as exc:  # the replay is over either way; a dead stream has nothing to give back
            log.debug("closing a replay stream: %s", exc)
        finally:
            if self.ticket is not None:
                self.ticket.release()
