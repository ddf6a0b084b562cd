"""The in-memory unit of work the use-case tests run on answers like the MongoDB one: the same
scenario of use cases, run on each, leaves the same records, events and answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from service.app import publish, schedules, tasks
from service.app.idempotency import Answer, commit_once, fingerprint
from service.core.errors import NotFound
from service.core.identity import Principal
from service.core.ports import Transaction, UnitOfWork
from service.storage.memory import MemoryUnitOfWork
from service.storage.mongo.store import MongoStore
from service.storage.mongo.unit_of_work import MongoUnitOfWork
from tests.conftest import base_settings

ALICE = Principal(1, "Alice", frozenset({"user"}), 4_000_000_000.0)
STAMPS = ("createdAt", "updatedAt", "createdAtUs", "_id")
Events = Callable[[], Awaitable[list[dict[str, Any]]]]


def plain(record: dict[str, Any]) -> dict[str, Any]:
    """A record or event without its timestamps and storage id (they differ per run)."""
    for stamp in ("createdAt", "updatedAt"):
        value = record.get(stamp)
        assert value is None or (isinstance(value, str) and value.endswith("Z")) or hasattr(value, "tzinfo")
    return {k: v for k, v in record.items() if k not in STAMPS}


async def scenario(storage: UnitOfWork, events: Events) -> dict[str, Any]:
    """Creates, changes, refusals, a publish and a replayed request; what each left."""
    seen: dict[str, Any] = {}
    run = storage.run
    first = await run(lambda tx: tasks.create(tx, ALICE, {"title": "يومي", "taskType": "daily"}))
    await run(lambda tx: tasks.create(tx, ALICE, {"title": "weekly", "taskType": "weekly"}))
    seen["updated"] = plain(await run(lambda tx: tasks.update(tx, ALICE, first["id"], {"title": "renamed"})))
    seen["executed"] = plain(await run(lambda tx: tasks.execute(tx, ALICE, 2, "completed", "ok")))
    await run(lambda tx: tasks.delete(tx, ALICE, first["id"]))
    refusals = []
    for refused in (
        lambda tx: tasks.update(tx, ALICE, first["id"], {"title": "gone"}),
        lambda tx: tasks.execute(tx, ALICE, 99, "failed", None),
        lambda tx: schedules.delete(tx, ALICE, 99),
    ):
        try:
            await run(refused)
        except NotFound as exc:
            refusals.append(str(exc))
    seen["refusals"] = refusals
    schedule = await run(lambda tx: schedules.create(tx, ALICE, {"name": "n", "cron": "* * * * *", "taskType": "t"}))
    seen["schedule"] = plain(await run(lambda tx: schedules.update(tx, ALICE, schedule["id"], {"enabled": False})))
    event = publish.accept({"type": "deploy_done", "version": "1.2", "nested": {"ok": True}})
    seen["published"] = await run(lambda tx: publish.publish(tx, event))

    async def create(transaction: Transaction) -> Answer:
        task = await tasks.create(transaction, ALICE, {"title": "once", "taskType": "daily"})
        return Answer(201, str(task["id"]), f"/api/tasks/{task['id']}")

    same = fingerprint("POST", "/api/tasks", b'{"title":"once"}')
    answers = [await commit_once(storage, create, key="k", user_id=1, fingerprint=same) for _ in range(2)]
    seen["answers"] = [(a.status, a.body, a.location, a.replayed) for a in answers]
    seen["tasks"] = [plain(t) for t in (await tasks.listing(storage, status=None, limit=10, after=None))["tasks"]]
    seen["schedules"] = [plain(s) for s in (await schedules.listing(storage))["schedules"]]
    seen["events"] = [plain(e) for e in await events()]
    return seen


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("backend", ["memory", "mongo"])
async def test_memory_and_mongodb_units_of_work_leave_the_same_records_and_events(backend: str, mongo_uri: str) -> None:
    """One scenario on each backend: equal records, answers, refusals and events, in order."""
    if backend == "memory":
        memory = MemoryUnitOfWork()

        async def stored() -> list[dict[str, Any]]:
            return memory.events

        assert await scenario(memory, stored) == EXPECTED
        return
    store = MongoStore(base_settings(), mongo_uri)
    try:
        await store.start()

        async def inserted() -> list[dict[str, Any]]:
            return await store.events.find({}).sort("_id", 1).to_list()

        assert await scenario(MongoUnitOfWork(store), inserted) == EXPECTED
    finally:
        await store.close()


# What the scenario leaves: MongoDB's answers, which the memory implementation must match.
EXPECTED: dict[str, Any] = {
    "updated": {
        "id": 1,
        "title": "renamed",
        "taskType": "daily",
        "status": "pending",
        "scheduleId": None,
        "userId": 1,
        "userName": "Alice",
        "executions": 0,
        "lastResultStatus": None,
    },
    "executed": {
        "id": 2,
        "title": "weekly",
        "taskType": "weekly",
        "status": "completed",
        "scheduleId": None,
        "userId": 1,
        "userName": "Alice",
        "executions": 1,
        "lastResultStatus": "completed",
    },
    "refusals": ["task 1", "task 99", "schedule 99"],
    "schedule": {"id": 1, "name": "n", "cron": "* * * * *", "taskType": "t", "enabled": False},
    "published": {"accepted": True, "type": "deploy_done"},
    "answers": [(201, "3", "/api/tasks/3", False), (201, "3", "/api/tasks/3", True)],
    "tasks": [
        {
            "id": 3,
            "title": "once",
            "taskType": "daily",
            "status": "pending",
            "scheduleId": None,
            "userId": 1,
            "userName": "Alice",
            "executions": 0,
            "lastResultStatus": None,
        },
        {
            "id": 2,
            "title": "weekly",
            "taskType": "weekly",
            "status": "completed",
            "scheduleId": None,
            "userId": 1,
            "userName": "Alice",
            "executions": 1,
            "lastResultStatus": "completed",
        },
    ],
    "schedules": [{"id": 1, "name": "n", "cron": "* * * * *", "taskType": "t", "enabled": False}],
    "events": [
        {"type": "task_created", "userId": 1, "userName": "Alice", "taskId": 1, "taskType": "daily", "title": "يومي"},
        {
            "type": "task_created",
            "userId": 1,
            "userName": "Alice",
            "taskId": 2,
            "taskType": "weekly",
            "title": "weekly",
        },
        {
            "type": "task_updated",
            "userId": 1,
            "userName": "Alice",
            "taskId": 1,
            "taskType": "daily",
            "title": "renamed",
        },
        {
            "type": "task_executed",
            "userId": 1,
            "userName": "Alice",
            "taskId": 2,
            "taskType": "weekly",
            "resultStatus": "completed",
            "executions": 1,
        },
        {"type": "task_deleted", "userId": 1, "userName": "Alice", "taskId": 1, "taskType": "daily"},
        {
            "type": "schedule_updated",
            "userId": 1,
            "userName": "Alice",
            "scheduleId": 1,
            "action": "created",
            "name": "n",
        },
        {
            "type": "schedule_updated",
            "userId": 1,
            "userName": "Alice",
            "scheduleId": 1,
            "action": "updated",
            "name": "n",
        },
        {"type": "deploy_done", "version": "1.2", "nested": {"ok": True}},
        {"type": "task_created", "userId": 1, "userName": "Alice", "taskId": 3, "taskType": "daily", "title": "once"},
    ],
}
