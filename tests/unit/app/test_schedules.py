"""The schedule use cases on the in-memory unit of work: every change commits with exactly one
`schedule_updated` naming its action; an unknown id changes nothing and announces nothing."""

from __future__ import annotations

import pytest

from service.app import schedules
from service.core.errors import NotFound
from service.core.identity import Principal
from service.storage.memory import MemoryUnitOfWork

BOB = Principal(7, "Bob", frozenset({"user"}), 4_000_000_000.0)
NEW = {"name": "nightly", "cron": "0 3 * * *", "taskType": "report"}


def actions(storage: MemoryUnitOfWork) -> list[tuple[str, object, object, object]]:
    return [(e["type"], e["action"], e["scheduleId"], e["userId"]) for e in storage.events]


@pytest.mark.gen_test
async def test_create_stores_an_enabled_schedule_with_one_created_event() -> None:
    """Enabled by default, readable, announced as `created` by its user."""
    storage = MemoryUnitOfWork()
    schedule = await storage.run(lambda tx: schedules.create(tx, BOB, NEW))
    assert schedule["enabled"] is True and schedule["name"] == "nightly"
    assert await schedules.get(storage, schedule["id"]) == schedule
    assert await schedules.listing(storage) == {"schedules": [schedule]}
    assert actions(storage) == [("schedule_updated", "created", 1, 7)]
    assert storage.events[0]["name"] == "nightly" and storage.events[0]["userName"] == "Bob"


@pytest.mark.gen_test
async def test_update_and_delete_each_announce_once() -> None:
    """`updated` carries the new name; `deleted` the last one; the schedule is gone."""
    storage = MemoryUnitOfWork()
    await storage.run(lambda tx: schedules.create(tx, BOB, NEW))
    updated = await storage.run(lambda tx: schedules.update(tx, BOB, 1, {"name": "weekly", "enabled": False}))
    assert (updated["name"], updated["enabled"]) == ("weekly", False)
    await storage.run(lambda tx: schedules.delete(tx, BOB, 1))
    assert actions(storage)[1:] == [("schedule_updated", "updated", 1, 7), ("schedule_updated", "deleted", 1, 7)]
    assert [e["name"] for e in storage.events] == ["nightly", "weekly", "weekly"]
    with pytest.raises(NotFound):
        await schedules.get(storage, 1)


@pytest.mark.gen_test
@pytest.mark.parametrize("action", ["update", "delete"])
async def test_a_change_of_an_unknown_schedule_is_not_found_and_writes_no_event(action: str) -> None:
    """NotFound; the existing schedule and the event list are untouched."""
    storage = MemoryUnitOfWork()
    await storage.run(lambda tx: schedules.create(tx, BOB, NEW))
    with pytest.raises(NotFound):
        if action == "update":
            await storage.run(lambda tx: schedules.update(tx, BOB, 5, {"name": "x"}))
        else:
            await storage.run(lambda tx: schedules.delete(tx, BOB, 5))
    assert len(storage.events) == 1 and (await schedules.get(storage, 1))["name"] == "nightly"
