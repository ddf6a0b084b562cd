"""Validation of REST bodies for tasks and schedules: every field error at once, as 400.

The rules are the JSON Schema components of `service.core.schema`; this module only applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from service.core.errors import BadMessage
from service.core.schema import (
    MAX_ID,
    MAX_LIST_LIMIT,
    MAX_NOTE,
    MAX_TITLE,
    RESULT_STATUSES,
    TASK_STATUSES,
    TASK_TYPES,
    body_fields,
    stripped_fields,
)
from service.core.schema.cron import digits

__all__ = ["MAX_ID", "MAX_LIST_LIMIT", "MAX_NOTE", "MAX_TITLE", "RESULT_STATUSES", "TASK_STATUSES", "TASK_TYPES"]

Check = Callable[[Any], str | None]  # returns an error text, or None when valid

TASK_FIELDS: dict[str, Check] = body_fields("NewTask")
EXECUTE_FIELDS: dict[str, Check] = body_fields("Execution")
SCHEDULE_FIELDS: dict[str, Check] = body_fields("NewSchedule")
_STRIPPED = stripped_fields("NewTask") | stripped_fields("NewSchedule")


def validate(
    body: Mapping[str, Any],
    fields: Mapping[str, Check],
    *,
    required: tuple[str, ...] = (),
    partial: bool = False,
) -> dict[str, Any]:
    """Check a body against field rules.

    Args:
        body: the parsed JSON object.
        fields: the allowed fields and their checks.
        required: fields that must be present (ignored when `partial`).
        partial: a PATCH: at least one field, none required.

    Raises:
        BadMessage: with every field error (unknown fields included).
    """
    errors: dict[str, str] = {}
    for name in body:
        if name not in fields:
            errors[name] = "unknown field"
    for name, check in fields.items():
        if name not in body:
            if name in required and not partial:
                errors[name] = "is required"
            continue
        problem = check(body[name])
        if problem:
            errors[name] = problem
    if partial and not errors and not body:
        errors["body"] = "names no field to change"
    if errors:
        raise BadMessage("invalid request body", errors)
    return {
        name: (value.strip() if isinstance(value, str) and name in _STRIPPED else value) for name, value in body.items()
    }


def validate_listing(status: str | None, limit: str | None, after: str | None) -> tuple[str | None, int, int | None]:
    """Check the `GET /api/tasks` query.

    Raises:
        BadMessage: naming the bad parameters.
    """
    errors: dict[str, str] = {}
    if status is not None and status not in TASK_STATUSES:
        errors["status"] = f"must be one of {', '.join(TASK_STATUSES)}"
    size = 50
    if limit is not None:
        if not digits(limit) or not 1 <= int(limit) <= MAX_LIST_LIMIT:
            errors["limit"] = f"must be a whole number from 1 to {MAX_LIST_LIMIT}"
        else:
            size = int(limit)
    cursor = None
    if after is not None:
        if not digits(after):
            errors["after"] = "must be a task id"
        else:
            cursor = int(after)
    if errors:
        raise BadMessage("invalid query", errors)
    return status, size, cursor
