"""Events into the stream: the one a change announces (signed with its user), and the ones
publishers send (`POST /api/events`). Either is inserted in the caller's unit of work; delivery
happens through the change stream like every event."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.core.events import document_for_publish, event_document
from service.core.identity import Principal
from service.core.ports import Transaction


def utcnow() -> datetime:
    """The time a change is stamped with (its record's and its event's)."""
    return datetime.now(UTC)


async def announce(
    transaction: Transaction, user: Principal, event_type: str, fields: Mapping[str, Any], at: datetime | None = None
) -> None:
    """Insert the event of a change `user` made, signed with the user's id and name."""
    signed = {"userId": user.user_id, "userName": user.name, **fields}
    await transaction.publish(event_document(event_type, signed, at))


def accept(body: Mapping[str, object]) -> dict[str, object]:
    """A publisher's event as it will be stored, stamped now.

    Raises:
        BadMessage: the body is not a valid event (type, audience, size, nesting).
    """
    return document_for_publish(body, utcnow())


async def publish(transaction: Transaction, event: Mapping[str, object]) -> dict[str, object]:
    """Insert an accepted event (`accept`); what `POST /api/events` answers."""
    await transaction.publish(event)
    return {"accepted": True, "type": event["type"]}
