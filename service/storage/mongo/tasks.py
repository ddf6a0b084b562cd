"""The `tasks` collection: a task's document, how the API shows it, and its changes.

Ids come from the `counters` sequence (outside any transaction, see `MongoBase.next_id`);
changes take the request's session, so the task and its event commit together.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument

from service.core.config import Settings
from service.core.errors import NotFound
from service.storage.mongo.client import Document, MongoBase, Session, available
from service.storage.views import new_task, task_view


class MongoTasks(MongoBase):
    """Create, list, read, change, execute and delete tasks."""

    def __init__(self, settings: Settings, uri: str) -> None:
        super().__init__(settings, uri)
        self.tasks = self.db["tasks"]

    async def create_indexes(self) -> None:
        await super().create_indexes()
        await self.tasks.create_index([("status", ASCENDING), ("_id", DESCENDING)])

    async def create_task(
        self,
        fields: Mapping[str, Any],
        user_id: int | str,
        user_name: str,
        now: datetime,
        session: Session | None = None,
    ) -> Document:
        doc = new_task(await self.next_id("tasks"), fields, user_id, user_name, now)
        async with available(self.timeout_seconds):
            await self.tasks.insert_one(doc, session=session)
        return task_view(doc)

    async def list_tasks(self, *, status: str | None, limit: int, after: int | None) -> list[Document]:
        query: Document = {}
        if status:
            query["status"] = status
        if after is not None:
            query["_id"] = {"$lt": after}
        async with available(self.timeout_seconds):
            cursor = self.tasks.find(query).sort("_id", DESCENDING).limit(limit)
            return [task_view(doc) async for doc in cursor]

    async def get_task(self, task_id: int) -> Document:
        async with available(self.timeout_seconds):
            doc = await self.tasks.find_one({"_id": task_id})
        if doc is None:
            raise NotFound(f"task {task_id}")
        return task_view(doc)

    async def update_task(
        self, task_id: int, changes: Mapping[str, Any], now: datetime, session: Session | None = None
    ) -> Document:
        async with available(self.timeout_seconds):
            doc = await self.tasks.find_one_and_update(
                {"_id": task_id},
                {"$set": {**changes, "updatedAt": now}},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
        if doc is None:
            raise NotFound(f"task {task_id}")
        return task_view(doc)

    async def record_execution(
        self, task_id: int, result_status: str, note: str | None, now: datetime, session: Session | None = None
    ) -> Document:
        async with available(self.timeout_seconds):
            doc = await self.tasks.find_one_and_update(
                {"_id": task_id},
                {
                    "$set": {"status": result_status, "lastResultStatus": result_status, "updatedAt": now},
                    "$inc": {"executions": 1},
                    "$push": {
                        "history": {
                            "$each": [{"at": now, "resultStatus": result_status, "note": note}],
                            "$slice": -50,
                        }
                    },
                },
                return_document=ReturnDocument.AFTER,
                session=session,
            )
        if doc is None:
            raise NotFound(f"task {task_id}")
        return task_view(doc)

    async def delete_task(self, task_id: int, session: Session | None = None) -> Document:
        async with available(self.timeout_seconds):
            doc = await self.tasks.find_one_and_delete({"_id": task_id}, session=session)
        if doc is None:
            raise NotFound(f"task {task_id}")
        return task_view(doc)
