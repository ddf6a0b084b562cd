"""Schedules of recurring tasks: every change writes its one `schedule_updated` (action
`created`, `updated` or `deleted`) in the same unit of work."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from service.app.publish import announce, utcnow
from service.core.identity import Principal
from service.core.ports import Record, Transaction, UnitOfWork


async def listing(storage: UnitOfWork) -> dict[str, Any]:
    """Every schedule by id (at most 1000)."""
    return {"schedules": await storage.list_schedules()}


async def get(storage: UnitOfWork, schedule_id: int) -> Record:
    """Raises: NotFound."""
    return await storage.get_schedule(schedule_id)


async def _changed(
    transaction: Transaction, user: Principal, schedule: Record, action: str, at: datetime | None
) -> None:
    fields = {"scheduleId": schedule["id"], "action": action, "name": schedule["name"]}
    await announce(transaction, user, "schedule_updated", fields, at)


async def create(transaction: Transaction, user: Principal, fields: Mapping[str, Any]) -> Record:
    """A new (enabled unless said otherwise) schedule."""
    now = utcnow()
    schedule = await transaction.create_schedule(fields, now)
    await _changed(transaction, user, schedule, "created", now)
    return schedule


async def update(transaction: Transaction, user: Principal, schedule_id: int, changes: Mapping[str, Any]) -> Record:
    """Raises: NotFound: no such schedule (and no event)."""
    now = utcnow()
    schedule = await transaction.update_schedule(schedule_id, changes, now)
    await _changed(transaction, user, schedule, "updated", now)
    return schedule


async def delete(transaction: Transaction, user: Principal, schedule_id: int) -> Record:
    """Raises: NotFound: no such schedule (and no event)."""
    schedule = await transaction.delete_schedule(schedule_id)
    await _changed(transaction, user, schedule, "deleted", None)
    return schedule
