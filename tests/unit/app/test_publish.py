"""Published events on the in-memory unit of work: a publisher's event is validated before
anything is written and stored once; a change's event is signed with its user."""

from __future__ import annotations

import pytest

from service.app import publish
from service.core.errors import BadMessage
from service.core.identity import Principal
from service.storage.memory import MemoryUnitOfWork

PUBLISHER = Principal("svc", "Billing", frozenset({"publisher"}), 4_000_000_000.0)


@pytest.mark.gen_test
async def test_an_accepted_event_is_stored_once_and_answered_with_its_type() -> None:
    """`accept` stamps it; `publish` stores it as accepted and answers what the API returns."""
    storage = MemoryUnitOfWork()
    event = publish.accept({"type": "invoice_paid", "amount": 12})
    answer = await storage.run(lambda tx: publish.publish(tx, event))
    assert answer == {"accepted": True, "type": "invoice_paid"}
    assert storage.events == [event]
    assert "createdAt" in event


def test_an_invalid_event_is_refused_before_any_unit_of_work() -> None:
    """A bad type is BadMessage from `accept`: there is nothing to roll back."""
    with pytest.raises(BadMessage):
        publish.accept({"type": "no spaces allowed"})
    with pytest.raises(BadMessage):
        publish.accept({"amount": 1})


@pytest.mark.gen_test
async def test_announce_signs_a_change_event_with_its_user() -> None:
    """userId and userName come from the principal, next to the change's own fields."""
    storage = MemoryUnitOfWork()
    await storage.run(lambda tx: publish.announce(tx, PUBLISHER, "task_deleted", {"taskId": 3, "taskType": "x"}))
    (event,) = storage.events
    assert {k: v for k, v in event.items() if k not in ("createdAt", "createdAtUs")} == {
        "type": "task_deleted",
        "userId": "svc",
        "userName": "Billing",
        "taskId": 3,
        "taskType": "x",
    }
