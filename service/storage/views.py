"""Stored documents, new and as the API returns them: one definition for every storage backend
(the MongoDB repositories and the in-memory unit of work store and answer the same shapes)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from service.core.events import iso


def new_task(
    task_id: int, fields: Mapping[str, Any], user_id: int | str, user_name: str, now: datetime
) -> dict[str, Any]:
    """A task as stored when it is created: pending, never run."""
    return {
        "_id": task_id,
        **fields,
        "status": "pending",
        "userId": user_id,
        "userName": user_name,
        "createdAt": now,
        "updatedAt": now,
        "executions": 0,
        "lastResultStatus": None,
    }


def task_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A task as the API returns it."""
    return {
        "id": doc["_id"],
        "title": doc["title"],
        "taskType": doc["taskType"],
        "status": doc.get("status", "pending"),
        "scheduleId": doc.get("scheduleId"),
        "userId": doc["userId"],
        "userName": doc["userName"],
        "createdAt": iso(doc["createdAt"]),
        "updatedAt": iso(doc["updatedAt"]),
        "executions": doc.get("executions", 0),
        "lastResultStatus": doc.get("lastResultStatus"),
    }


def schedule_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A schedule as the API returns it."""
    return {
        "id": doc["_id"],
        "name": doc["name"],
        "cron": doc["cron"],
        "taskType": doc["taskType"],
        "enabled": doc.get("enabled", True),
        "createdAt": iso(doc["createdAt"]),
        "updatedAt": iso(doc["updatedAt"]),
    }
