"""The ports: what fan-out and the use cases need from storage, as Protocols. The MongoDB
implementations are in `service.storage.mongo`; only the runtime picks and wires one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol, TypeVar


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
