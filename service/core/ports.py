"""The ports: what fan-out and the use cases need from storage, as Protocols. The MongoDB
implementations are in `service.storage.mongo`; only the runtime picks and wires one."""

from __future__ import annotations

from typing import Any, Protocol


class TicketStore(Protocol):
    """Where tickets live (MongoDB in the service, so any replica can redeem them)."""

    async def save_ticket(self, ticket_hash: str, principal: dict[str, Any], expires_at: float) -> None: ...

    async def take_ticket(self, ticket_hash: str) -> dict[str, Any] | None: ...
