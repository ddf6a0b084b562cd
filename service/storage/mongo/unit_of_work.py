"""The unit of work on MongoDB: a use case's writes share one session and commit in one
multi-document transaction (`MongoStore.transaction`), so a change lands with its event or not
at all. Built on `MongoStore`'s public methods only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar

from service.core.ports import Record, Transaction
from service.storage.mongo.store import MongoStore, Session

T = TypeVar("T")


class MongoTransaction:
    """`service.core.ports.Transaction`: the store's writes, each in the unit's session."""

    def __init__(self, store: MongoStore, session: Session | None) -> None:
        self._store = store
        self._session = session

    async def create_task(self, fields: Mapping[str, Any], user_id: int | str, user_name: str, now: datetime) -> Record:
        return await self._store.create_task(fields, user_id, user_name, now, self._session)

    async def update_task(self, task_id: int, changes: Mapping[str, Any], now: datetime) -> Record:
        return await self._store.update_task(task_id, changes, now, self._session)

    async def record_execution(self, task_id: int, result_status: str, note: str | None, now: datetime) -> Record:
        return await self._store.record_execution(task_id, result_status, note, now, self._session)

    async def delete_task(self, task_id: int) -> Record:
        return await self._store.delete_task(task_id, self._session)

    async def create_schedule(self, fields: Mapping[str, Any], now: datetime) -> Record:
        return await self._store.create_schedule(fields, now, self._session)

    async def update_schedule(self, schedule_id: int, changes: Mapping[str, Any], now: datetime) -> Record:
        return await self._store.update_schedule(schedule_id, changes, now, self._session)

    async def delete_schedule(self, schedule_id: int) -> Record:
        return await self._store.delete_schedule(schedule_id, self._session)

    async def publish(self, event: Mapping[str, Any]) -> None:
        # insert_one sets `_id` on the document it is given: give it its own.
        await self._store.publish(dict(event), self._session)

    async def complete_key(self, key_id: str, owner: str, answer: Mapping[str, Any]) -> bool:
        if self._session is None:  # a key's record commits with its change: only in `run`
            raise TypeError("complete_key needs a transaction (UnitOfWork.run)")
        return await self._store.complete_key(key_id, owner, answer, self._session)


class MongoUnitOfWork:
    """`service.core.ports.UnitOfWork` on a `MongoStore` (which the runtime starts and closes)."""

    def __init__(self, store: MongoStore) -> None:
        self._store = store

    @property
    def timeout_seconds(self) -> float:
        return self._store.timeout_seconds

    async def run(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        store = self._store

        def in_session(session: Session) -> Awaitable[T]:
            return work(MongoTransaction(store, session))

        return await store.transaction(in_session)

    async def run_alone(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        return await work(MongoTransaction(self._store, None))  # each write commits by itself

    def deadline(self, seconds: float) -> AbstractAsyncContextManager[None]:
        return self._store.deadline(seconds)

    def record_write(self, *, ok: bool) -> None:
        self._store.record_write(ok=ok)

    async def claim_key(self, key_id: str, fingerprint: str, owner: str, lease_seconds: float) -> Record | None:
        return await self._store.claim_key(key_id, fingerprint, owner, lease_seconds)

    def release_key(self, key_id: str, owner: str, lease_until: float) -> None:
        self._store.release_key(key_id, owner, lease_until)

    async def list_tasks(self, *, status: str | None, limit: int, after: int | None) -> list[Record]:
        return await self._store.list_tasks(status=status, limit=limit, after=after)

    async def get_task(self, task_id: int) -> Record:
        return await self._store.get_task(task_id)

    async def list_schedules(self) -> list[Record]:
        return await self._store.list_schedules()

    async def get_schedule(self, schedule_id: int) -> Record:
        return await self._store.get_schedule(schedule_id)
