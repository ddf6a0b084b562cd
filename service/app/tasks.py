"""Tasks: list, read, create, change, delete and run them. Each change writes its one event
(`task_created`, `task_updated`, `task_deleted`, `task_executed`) in the same unit of work."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.app.publish import announce, utcnow
from service.core.identity import Principal
from service.core.ports import Record, Transaction, UnitOfWork


async def listing(storage: UnitOfWork, *, status: str | None, limit: int, after: int | None) -> dict[str, Any]:
    """A page of tasks, newest first, and the cursor of the next page (None on the last)."""
    tasks = await storage.list_tasks(status=status, limit=limit, after=after)
    return {"tasks": tasks, "next": tasks[-1]["id"] if len(tasks) == limit else None}


async def get(storage: UnitOfWork, task_id: int) -> Record:
    """Raises: NotFound."""
    return await storage.get_task(task_id)


async def create(transaction: Transaction, user: Principal, fields: Mapping[str, Any]) -> Record:
    """A new pending task owned by `user`, announced by `task_created`."""
    now = utcnow()
    task = await transaction.create_task(fields, user.user_id, user.name, now)
    summary = {"taskId": task["id"], "taskType": task["taskType"], "title": task["title"]}
    await announce(transaction, user, "task_created", summary, now)
    return task


async def update(transaction: Transaction, user: Principal, task_id: int, changes: Mapping[str, Any]) -> Record:
    """Apply `changes`; `task_updated` carries them.

    Raises:
        NotFound: no such task (and no event).
    """
    now = utcnow()
    task = await transaction.update_task(task_id, changes, now)
    await announce(transaction, user, "task_updated", {"taskId": task_id, "taskType": task["taskType"], **changes}, now)
    return task


async def delete(transaction: Transaction, user: Principal, task_id: int) -> Record:
    """Delete the task; `task_deleted`.

    Raises:
        NotFound: no such task (and no event).
    """
    task = await transaction.delete_task(task_id)
    await announce(transaction, user, "task_deleted", {"taskId": task["id"], "taskType": task["taskType"]})
    return task


async def execute(
    transaction: Transaction, user: Principal, task_id: int, result_status: str, note: str | None
) -> Record:
    """Record a run of the task; `task_executed` with the run count.

    Raises:
        NotFound: no such task (and no event).
    """
    now = utcnow()
    task = await transaction.record_execution(task_id, result_status, note, now)
    fields = {
        "taskId": task_id,
        "taskType": task["taskType"],
        "resultStatus": result_status,
        "executions": task["executions"],
    }
    await announce(transaction, user, "task_executed", fields, now)
    return task
