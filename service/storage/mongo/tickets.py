"""The `tickets` collection (`service.core.ports.TicketStore`): one-use WebSocket/SSE tickets,
kept in MongoDB so any replica can redeem one, and expired by a TTL index."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING

from service.core.config import Settings
from service.storage.mongo.client import MongoBase, available, utcnow


class MongoTickets(MongoBase):
    """Save a ticket; take it (once)."""

    def __init__(self, settings: Settings, uri: str) -> None:
        super().__init__(settings, uri)
        self.tickets = self.db["tickets"]

    async def create_indexes(self) -> None:
        await super().create_indexes()
        await self.tickets.create_index([("expiresAt", ASCENDING)], expireAfterSeconds=0)

    async def save_ticket(self, ticket_hash: str, principal: dict[str, Any], expires_at: float) -> None:
        async with available(self.timeout_seconds):
            await self.tickets.insert_one(
                {
                    "_id": ticket_hash,
                    "principal": principal,
                    "expiresAt": datetime.fromtimestamp(expires_at, UTC),
                }
            )

    async def take_ticket(self, ticket_hash: str) -> dict[str, Any] | None:
        """Delete and return a live ticket: a ticket can be taken only once."""
        async with available(self.timeout_seconds):
            doc = await self.tickets.find_one_and_delete({"_id": ticket_hash, "expiresAt": {"$gt": utcnow()}})
        return None if doc is None else dict(doc["principal"])
