"""The task use cases on the in-memory unit of work: each change commits with exactly one
event, and a refused or failed change leaves neither."""

from __future__ import annotations

import pytest

from service.app import tasks
from service.core.errors import NotFound
from service.core.identity import Principal
from service.core.ports import Transaction
from service.storage.memory import MemoryUnitOfWork

ALICE = Principal("u1", "Alice", frozenset({"user"}), 4_000_000_000.0)
NEW = {"title": "تقرير يومي", "taskType": "daily"}


def event_fields(storage: MemoryUnitOfWork) -> list[tuple[str, dict[str, object]]]:
    """Each stored event's type and its fields but the timestamp."""
    return [
        (event["type"], {k: v for k, v in event.items() if k not in ("type", "createdAt", "createdAtUs")})
        for event in storage.events
    ]


async def created(storage: MemoryUnitOfWork) -> dict[str, object]:
    async def work(transaction: Transaction) -> dict[str, object]:
        return await tasks.create(transaction, ALICE, NEW)

    return await storage.run(work)


@pytest.mark.gen_test
async def test_create_stores_a_pending_task_with_one_task_created() -> None:
    """The task is stored as the API shows it, announced once, signed by its user."""
    storage = MemoryUnitOfWork()
    task = await created(storage)
    assert task["id"] == 1 and task["status"] == "pending" and task["userName"] == "Alice"
    assert await tasks.get(storage, 1) == task
    assert event_fields(storage) == [
        ("task_created", {"userId": "u1", "userName": "Alice", "taskId": 1, "taskType": "daily", "title": NEW["title"]})
    ]


@pytest.mark.gen_test
async def test_update_writes_the_changes_into_one_task_updated() -> None:
    """The event carries exactly the changed fields."""
    storage = MemoryUnitOfWork()
    await created(storage)
    task = await storage.run(lambda tx: tasks.update(tx, ALICE, 1, {"title": "new"}))
    assert task["title"] == "new"
    assert event_fields(storage)[1:] == [
        ("task_updated", {"userId": "u1", "userName": "Alice", "taskId": 1, "taskType": "daily", "title": "new"})
    ]


@pytest.mark.gen_test
async def test_update_of_an_unknown_id_is_not_found_and_writes_no_event() -> None:
    """NotFound, and the storage is as it was."""
    storage = MemoryUnitOfWork()
    await created(storage)
    with pytest.raises(NotFound):
        await storage.run(lambda tx: tasks.update(tx, ALICE, 99, {"title": "new"}))
    assert [t for t, _ in event_fields(storage)] == ["task_created"]
    assert (await tasks.get(storage, 1))["title"] == NEW["title"]


@pytest.mark.gen_test
async def test_delete_removes_the_task_with_one_task_deleted() -> None:
    """Gone from reads; a second delete is NotFound with no second event."""
    storage = MemoryUnitOfWork()
    await created(storage)
    await storage.run(lambda tx: tasks.delete(tx, ALICE, 1))
    with pytest.raises(NotFound):
        await tasks.get(storage, 1)
    with pytest.raises(NotFound):
        await storage.run(lambda tx: tasks.delete(tx, ALICE, 1))
    assert event_fields(storage)[1:] == [
        ("task_deleted", {"userId": "u1", "userName": "Alice", "taskId": 1, "taskType": "daily"})
    ]


@pytest.mark.gen_test
async def test_execute_counts_runs_and_announces_each_once() -> None:
    """Two runs: status is the last result, `executions` 2, two `task_executed` with the running count."""
    storage = MemoryUnitOfWork()
    await created(storage)
    await storage.run(lambda tx: tasks.execute(tx, ALICE, 1, "failed", "disk"))
    task = await storage.run(lambda tx: tasks.execute(tx, ALICE, 1, "completed", None))
    assert (task["status"], task["lastResultStatus"], task["executions"]) == ("completed", "completed", 2)
    runs = [(fields["resultStatus"], fields["executions"]) for kind, fields in event_fields(storage)[1:]]
    assert runs == [("failed", 1), ("completed", 2)]
    with pytest.raises(NotFound):
        await storage.run(lambda tx: tasks.execute(tx, ALICE, 2, "completed", None))
    assert len(storage.events) == 3


@pytest.mark.gen_test
async def test_a_unit_that_fails_after_its_event_leaves_neither_change_nor_event() -> None:
    """Atomicity: the task and its event were written, then the unit raised; nothing is kept."""
    storage = MemoryUnitOfWork()

    async def work(transaction: Transaction) -> None:
        await tasks.create(transaction, ALICE, NEW)
        raise RuntimeError("after the event")

    with pytest.raises(RuntimeError):
        await storage.run(work)
    assert storage.tasks == {} and storage.events == []
    assert (await created(storage))["id"] == 2  # ids come from a counter outside the unit: a gap


@pytest.mark.gen_test
async def test_listing_pages_newest_first_with_a_cursor() -> None:
    """`next` is the last id of a full page, None on the last page; `status` filters."""
    storage = MemoryUnitOfWork()
    for _ in range(3):
        await created(storage)
    await storage.run(lambda tx: tasks.execute(tx, ALICE, 2, "completed", None))
    page = await tasks.listing(storage, status=None, limit=2, after=None)
    assert [t["id"] for t in page["tasks"]] == [3, 2] and page["next"] == 2
    rest = await tasks.listing(storage, status=None, limit=2, after=2)
    assert [t["id"] for t in rest["tasks"]] == [1] and rest["next"] is None
    done = await tasks.listing(storage, status="completed", limit=10, after=None)
    assert [t["id"] for t in done["tasks"]] == [2]
