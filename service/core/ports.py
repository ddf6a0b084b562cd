"""The ports: what fan-out and the use cases need from storage, as Protocols. The MongoDB
implementations are in `service.storage.mongo`; only the runtime picks and wires one.

Ports speak plain types and core errors (`service.core.errors`: `StoreError` and below), never
a driver's: fan-out catches `StoreError`, not `PyMongoError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from service.core.events import Change, Position, ResumeToken


class TicketStore(Protocol):
    """Where tickets live (MongoDB in the service, so any replica can redeem them)."""

    async def save_ticket(self, ticket_hash: str, principal: dict[str, Any], expires_at: float) -> None: ...

    async def take_ticket(self, ticket_hash: str) -> dict[str, Any] | None: ...


# -- The unit of work (service.app): a change and its one event commit together, or neither does --

Record = dict[str, Any]  # a task, schedule or idempotency record as the API shows it
T = TypeVar("T")


class Transaction(Protocol):
    """The writes of one unit of work; they commit together when its work returns, and none of
    them does when it raises. An update or delete of an unknown id raises `NotFound`."""

    async def create_task(self, fields: Mapping[str, Any], user_id: int | str, user_name: str, now: datetime) -> Record:
        """A new pending task with the next id; the task as the API shows it."""
        ...

    async def update_task(self, task_id: int, changes: Mapping[str, Any], now: datetime) -> Record: ...

    async def record_execution(self, task_id: int, result_status: str, note: str | None, now: datetime) -> Record:
        """Set the task's status to the run's result and count the run."""
        ...

    async def delete_task(self, task_id: int) -> Record:
        """Delete and return the task."""
        ...

    async def create_schedule(self, fields: Mapping[str, Any], now: datetime) -> Record: ...

    async def update_schedule(self, schedule_id: int, changes: Mapping[str, Any], now: datetime) -> Record: ...

    async def delete_schedule(self, schedule_id: int) -> Record: ...

    async def publish(self, event: Mapping[str, Any]) -> None:
        """Insert an event document; at most one per unit of work (its id is the commit's position)."""
        ...

    async def complete_key(self, key_id: str, owner: str, answer: Mapping[str, Any]) -> bool:
        """Store a request's answer under its claimed key; False when `owner` no longer holds it."""
        ...


class UnitOfWork(Protocol):
    """What the use cases need from storage: atomic work, the reads around it, and the
    `Idempotency-Key` records whose claim and release live outside the work's transaction."""

    @property
    def timeout_seconds(self) -> float:
        """MONGODB_TIMEOUT_MS: the bound on one request's storage calls together."""
        ...

    async def run(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run `work` atomically and commit it; its result. It may run more than once (a
        transient conflict is retried), so it must not act outside its transaction.

        Raises:
            StoreUnavailable: storage did not answer or commit in time (the commit may still land).
        """
        ...

    async def run_alone(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run `work`, a single write that is atomic by itself, without a transaction where the
        store allows it: its event reaches the change stream one commit sooner (a transaction's
        insert waits for `commitTransaction`). `POST /api/events` without a key is one insert."""
        ...

    def deadline(self, seconds: float) -> AbstractAsyncContextManager[None]:
        """One deadline for every call inside; past it they raise `StoreUnavailable`."""
        ...

    def record_write(self, *, ok: bool) -> None:
        """How a REST write ended (readiness probes writes while they fail)."""
        ...

    async def claim_key(self, key_id: str, fingerprint: str, owner: str, lease_seconds: float) -> Record | None:
        """Take a key for one request: None when taken, else the record that holds it (a pending
        record whose lease ran out is taken over)."""
        ...

    def release_key(self, key_id: str, owner: str, lease_until: float) -> None:
        """Forget, in the background and before `lease_until` (monotonic), a key whose request did
        not complete, so a retry runs again."""
        ...

    async def list_tasks(self, *, status: str | None, limit: int, after: int | None) -> list[Record]:
        """Tasks newest first, with `status`, ids below `after`, at most `limit`."""
        ...

    async def get_task(self, task_id: int) -> Record:
        """Raises: NotFound."""
        ...

    async def list_schedules(self) -> list[Record]:
        """Schedules by id, at most 1000."""
        ...

    async def get_schedule(self, schedule_id: int) -> Record:
        """Raises: NotFound."""
        ...


class OnlineUsers(Protocol):
    """Who is online on any replica, as `GET /api/presence` shows them."""

    async def presence_list(self, stale_before: datetime) -> list[Record]: ...


# -- Fan-out (service.fanout) and readiness: the change feed, presence, health ---------------------

UserId = int | str


class ChangeStream(Protocol):
    """An open change feed: the inserted events in commit order, from where it was opened.

    Its methods raise `StoreUnavailable` (the store is gone; reopen at `resume_token`),
    `HistoryLost` (that position was pruned) or `StoreError`.
    """

    @property
    def resume_token(self) -> ResumeToken | None:
        """Where the stream stands now (after the last change read, or where it opened)."""

    async def try_next(self) -> Change | None:
        """The next change, or None when none came within the store's wait (a quiet feed)."""

    def buffered(self) -> bool:
        """Whether the next change is already here (read in the last round trip), so
        `try_next` returns it without waiting: the bus fans such changes out together."""

    async def close(self) -> None:
        """Give the stream's cursor back."""


class ChangeFeed(Protocol):
    """The event bus's side of storage: streams of inserted events and saved positions."""

    async def watch_events(
        self, *, resume_after: ResumeToken | None = None, batch_size: int | None = None
    ) -> ChangeStream:
        """A stream of inserted events from now, or resumed after a token.

        Args:
            batch_size: changes per round trip; large for replays that read history.

        Raises:
            HistoryLost: `resume_after` was pruned.
            StoreUnavailable: the store did not answer.
        """

    async def cluster_time(self) -> Position:
        """A position at or after every commit so far: a stream opened before this call sees
        every change after it."""

    async def save_position(self, id: str, token: ResumeToken) -> None:
        """Remember where the feed stood at event `id`, so a replay can resume there."""

    async def position_at_or_before(self, id: str) -> ResumeToken | None:
        """The token saved for the newest event at or before `id`; None if none is."""

    async def positions_before(self, id: str, limit: int) -> list[tuple[str, ResumeToken]]:
        """The newest `limit` saved positions before `id`, newest first, as (event id, token)."""


class PresenceStore(Protocol):
    """Fleet-wide presence (`service.fanout.presence` explains the two collections and the
    transitions). Every method raises `StoreError` (or `StoreUnavailable`) when the store
    refused or did not answer; presence retries on its next tick."""

    async def presence_write(
        self,
        process: str,
        upserts: Mapping[UserId, tuple[str, Mapping[str, int]]],
        removals: list[UserId],
        now: datetime,
        *,
        new: Collection[UserId] = (),
    ) -> None:
        """A process's changed users: counts set (`new`: none written by it yet), departed removed."""

    async def presence_refresh(self, process: str, now: datetime) -> bool:
        """The process's heartbeat; False when its registration was gone (swept) and is rewritten."""

    async def presence_stale_processes(self, before: datetime) -> list[Record]: ...

    async def presence_sweep_process(self, process: str, seen_at: datetime) -> list[UserId] | None:
        """Claim a dead process and delete its documents; its users, or None when not claimed."""

    async def presence_remove_process(self, process: str) -> None: ...

    async def presence_arrive_many(self, users: Mapping[UserId, str], now: datetime) -> list[UserId]:
        """Users a process has the first connection of: online again when they have a document,
        otherwise inserted online, each with exactly one `presence_joined`. Returns the users
        whose `presence_joined` this call wrote."""

    async def presence_finish_joins(self, now: datetime) -> None:
        """Write the `presence_joined` of joins a process began and did not finish."""

    async def presence_depart(self, user_id: UserId, since: datetime) -> None: ...

    async def presence_depart_many(self, user_ids: list[UserId], since: datetime) -> None: ...

    async def presence_stale(self, before: datetime) -> list[Record]: ...

    async def presence_claim_stale(self, doc_id: str, seen_at: datetime) -> bool: ...

    async def presence_claim_backstop(self, now: datetime, every: timedelta) -> bool:
        """Whether this process runs the fleet's periodic orphan backstop now (one process per
        `every`, fleet-wide)."""

    async def presence_mark_orphans(self, now: datetime) -> None: ...

    async def presence_leaving(self, before: datetime) -> list[Record]: ...

    async def presence_settle(self, user_id: UserId, leaving_since: datetime, now: datetime) -> bool: ...

    async def presence_missing(self, user_ids: list[UserId]) -> list[UserId]: ...

    async def presence_count(self) -> int: ...


class StoreHealth(Protocol):
    """What readiness asks of storage: does it answer, and does it take writes."""

    @property
    def timeout_seconds(self) -> float:
        """MONGODB_TIMEOUT_MS, in seconds: no check waits longer."""

    @property
    def writes_failing(self) -> bool:
        """Whether the last REST write that ended could not reach the store."""

    async def ping(self, bound: float) -> bool:
        """Whether the store answers within `bound` seconds."""

    async def probe_write(self, bound: float) -> bool:
        """Whether the store takes a (majority) write within `bound` seconds."""
