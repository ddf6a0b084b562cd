"""The `schedules` collection: a schedule's document, how the API shows it, and its changes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from service.core.config import Settings
from service.core.errors import NotFound
from service.storage.mongo.client import Document, MongoBase, Session, available
from service.storage.views import schedule_view


class MongoSchedules(MongoBase):
    """Create, list, read, change and delete schedules."""

    def __init__(self, settings: Settings, uri: str) -> None:
        super().__init__(settings, uri)
        self.schedules = self.db["schedules"]

    async def create_schedule(
        self, fields: Mapping[str, Any], now: datetime, session: Session | None = None
    ) -> Document:
        doc = {
            "_id": await self.next_id("schedules"),
            "enabled": True,
            **fields,
            "createdAt": now,
            "updatedAt": now,
        }
        async with available(self.timeout_seconds):
            await self.schedules.insert_one(doc, session=session)
        return schedule_view(doc)

    async def list_schedules(self) -> list[Document]:
        async with available(self.timeout_seconds):
            cursor = self.schedules.find({}).sort("_id", ASCENDING).limit(1000)
            return [schedule_view(doc) async for doc in cursor]

    async def get_schedule(self, schedule_id: int) -> Document:
        async with available(self.timeout_seconds):
            doc = await self.schedules.find_one({"_id": schedule_id})
        if doc is None:
            raise NotFound(f"schedule {schedule_id}")
        return schedule_view(doc)

    async def update_schedule(
        self, schedule_id: int, changes: Mapping[str, Any], now: datetime, session: Session | None = None
    ) -> Document:
        async with available(self.timeout_seconds):
            doc = await self.schedules.find_one_and_update(
                {"_id": schedule_id},
                {"$set": {**changes, "updatedAt": now}},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
        if doc is None:
            raise NotFound(f"schedule {schedule_id}")
        return schedule_view(doc)

    async def delete_schedule(self, schedule_id: int, session: Session | None = None) -> Document:
        async with available(self.timeout_seconds):
            doc = await self.schedules.find_one_and_delete({"_id": schedule_id}, session=session)
        if doc is None:
            raise NotFound(f"schedule {schedule_id}")
        return schedule_view(doc)
