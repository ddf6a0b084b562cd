"""The unit of work in memory: dicts, an id counter and an event list, for the use cases' unit
tests (like centrifuge's memory broker, a real small implementation, not a mock).

Atomic by construction: a unit's writes are staged in its `MemoryTransaction` and applied in
one step, without an `await`, when its work returns; a unit that raises leaves nothing. Units
run one at a time (MongoDB would retry a conflicting one; here none conflicts). Ids come from
a counter outside the unit, as on MongoDB, so an aborted create leaves a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from service.core.errors import NotFound, StoreUnavailable
from service.core.ports import Record, Transaction
from service.storage.views import new_task, schedule_view, task_view

T = TypeVar("T")
Document = dict[str, Any]
HISTORY = 50  # runs kept per task, as on MongoDB


def _millis(moment: datetime) -> datetime:
    """BSON keeps milliseconds: store what MongoDB would give back."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class MemoryTransaction:
    """`service.core.ports.Transaction`: reads see the committed state under this unit's own
    staged writes; `commit` applies them."""

    def __init__(self, storage: MemoryUnitOfWork) -> None:
        self._storage = storage
        self._tasks: dict[int, Document | None] = {}  # None: deleted
        self._schedules: dict[int, Document | None] = {}
        self._events: list[Document] = []
        self._keys: dict[str, Document] = {}

    def _task(self, task_id: int) -> Document:
        doc = self._tasks[task_id] if task_id in self._tasks else self._storage.tasks.get(task_id)
        if doc is None:
            raise NotFound(f"task {task_id}")
        return copy.deepcopy(doc)

    def _schedule(self, schedule_id: int) -> Document:
        if schedule_id in self._schedules:
            doc = self._schedules[schedule_id]
        else:
            doc = self._storage.schedules.get(schedule_id)
        if doc is None:
            raise NotFound(f"schedule {schedule_id}")
        return copy.deepcopy(doc)

    async def create_task(self, fields: Mapping[str, Any], user_id: int | str, user_name: str, now: datetime) -> Record:
        now = _millis(now)
        doc = new_task(self._storage.next_id("tasks"), copy.deepcopy(dict(fields)), user_id, user_name, now)
        self._tasks[doc["_id"]] = doc
        return task_view(doc)

    async def update_task(self, task_id: int, changes: Mapping[str, Any], now: datetime) -> Record:
        doc = self._task(task_id)
        doc.update(copy.deepcopy(dict(changes)), updatedAt=_millis(now))
        self._tasks[task_id] = doc
        return task_view(doc)

    async def record_execution(self, task_id: int, result_status: str, note: str | None, now: datetime) -> Record:
        doc = self._task(task_id)
        now = _millis(now)
        doc.update(status=result_status, lastResultStatus=result_status, updatedAt=now)
        doc["executions"] = doc.get("executions", 0) + 1
        run = {"at": now, "resultStatus": result_status, "note": note}
        doc["history"] = [*doc.get("history", []), run][-HISTORY:]
        self._tasks[task_id] = doc
        return task_view(doc)

    async def delete_task(self, task_id: int) -> Record:
        doc = self._task(task_id)
        self._tasks[task_id] = None
        return task_view(doc)

    async def create_schedule(self, fields: Mapping[str, Any], now: datetime) -> Record:
        now = _millis(now)
        doc = {
            "_id": self._storage.next_id("schedules"),
            "enabled": True,
            **copy.deepcopy(dict(fields)),
            "createdAt": now,
            "updatedAt": now,
        }
        self._schedules[doc["_id"]] = doc
        return schedule_view(doc)

    async def update_schedule(self, schedule_id: int, changes: Mapping[str, Any], now: datetime) -> Record:
        doc = self._schedule(schedule_id)
        doc.update(copy.deepcopy(dict(changes)), updatedAt=_millis(now))
        self._schedules[schedule_id] = doc
        return schedule_view(doc)

    async def delete_schedule(self, schedule_id: int) -> Record:
        doc = self._schedule(schedule_id)
        self._schedules[schedule_id] = None
        return schedule_view(doc)

    async def publish(self, event: Mapping[str, Any]) -> None:
        self._events.append(copy.deepcopy(dict(event)))

    async def complete_key(self, key_id: str, owner: str, answer: Mapping[str, Any]) -> bool:
        held = self._keys.get(key_id) or self._storage.keys.get(key_id)
        if held is None or held.get("owner") != owner or held.get("state") != "pending":
            return False
        done = {k: v for k, v in held.items() if k != "leaseUntil"}
        self._keys[key_id] = {**done, "state": "done", "answer": dict(answer)}
        return True

    def commit(self) -> None:
        """Apply every staged write (no `await`: nothing runs in between)."""
        storage = self._storage
        for collection, staged in ((storage.tasks, self._tasks), (storage.schedules, self._schedules)):
            for doc_id, doc in staged.items():
                if doc is None:
                    collection.pop(doc_id, None)
                else:
                    collection[doc_id] = doc
        storage.events.extend(self._events)
        storage.keys.update(self._keys)


class MemoryUnitOfWork:
    """`service.core.ports.UnitOfWork` in this process's memory; its collections are public for
    tests to read (`events` in commit order)."""

    def __init__(self, *, timeout_seconds: float = 2.0) -> None:
        self._timeout_seconds = timeout_seconds
        self.tasks: dict[int, Document] = {}
        self.schedules: dict[int, Document] = {}
        self.events: list[Document] = []
        self.keys: dict[str, Document] = {}
        self.counters: dict[str, int] = {}
        self.units = 0  # units of work run (committed or not)
        self.writes = {True: 0, False: 0}  # `record_write`: committed, failed
        self._lock = asyncio.Lock()

    @property
    def timeout_seconds(self) -> float:
        return self._timeout_seconds

    def next_id(self, name: str) -> int:
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    async def run(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        async with self._lock:
            self.units += 1
            transaction = MemoryTransaction(self)
            result = await work(transaction)
            transaction.commit()
            return result

    async def run_alone(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        return await self.run(work)  # memory commits a unit at once either way

    @contextlib.asynccontextmanager
    async def deadline(self, seconds: float) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError:
            raise StoreUnavailable("memory storage: the deadline passed") from None

    def record_write(self, *, ok: bool) -> None:
        self.writes[ok] += 1

    async def claim_key(self, key_id: str, fingerprint: str, owner: str, lease_seconds: float) -> Record | None:
        now = datetime.now(UTC)
        lease = {"state": "pending", "owner": owner, "leaseUntil": now + timedelta(seconds=lease_seconds)}
        held = self.keys.get(key_id)
        if held is None:
            self.keys[key_id] = {"_id": key_id, "fingerprint": fingerprint, "createdAt": now, **lease}
            return None
        if held["fingerprint"] == fingerprint and held["state"] == "pending" and held["leaseUntil"] < now:
            held.update(lease)
            return None
        return copy.deepcopy(held)

    def release_key(self, key_id: str, owner: str, lease_until: float) -> None:
        held = self.keys.get(key_id)
        if time.monotonic() < lease_until and held is not None and held["owner"] == owner:
            if held["state"] == "pending":
                del self.keys[key_id]

    async def list_tasks(self, *, status: str | None, limit: int, after: int | None) -> list[Record]:
        ids = sorted(self.tasks, reverse=True)
        docs = [self.tasks[i] for i in ids if after is None or i < after]
        return [task_view(doc) for doc in docs if not status or doc.get("status") == status][:limit]

    async def get_task(self, task_id: int) -> Record:
        if task_id not in self.tasks:
            raise NotFound(f"task {task_id}")
        return task_view(self.tasks[task_id])

    async def list_schedules(self) -> list[Record]:
        return [schedule_view(self.schedules[i]) for i in sorted(self.schedules)][:1000]

    async def get_schedule(self, schedule_id: int) -> Record:
        if schedule_id not in self.schedules:
            raise NotFound(f"schedule {schedule_id}")
        return schedule_view(self.schedules[schedule_id])
