"""Validation of REST bodies for tasks and schedules: every field error at once, as 400."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from service.errors import BadMessage

TASK_TYPES = ("daily", "weekly", "monthly", "ad-hoc")
RESULT_STATUSES = ("completed", "failed", "skipped")
TASK_STATUSES = ("pending", *RESULT_STATUSES)
MAX_TITLE = 200
MAX_NOTE = 2000
MAX_LIST_LIMIT = 200
_CRON_FIELD = re.compile(
    r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*"
)

Check = Callable[[Any], str | None]  # returns an error text, or None when valid


def _text(max_length: int) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty string"
        if len(value) > max_length:
            return f"must be at most {max_length} characters"
        return None

    return check


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _optional_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be a positive integer or null"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _cron(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 100:
        return "must be a cron expression such as '0 9 * * 1'"
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        return "must be a cron expression with five fields, such as '0 9 * * 1'"
    return None


def _optional_note(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NOTE:
        return f"must be a string of at most {MAX_NOTE} characters"
    return None


TASK_FIELDS: dict[str, Check] = {
    "title": _text(MAX_TITLE),
    "taskType": _one_of(TASK_TYPES),
    "scheduleId": _optional_id,
}
EXECUTE_FIELDS: dict[str, Check] = {"resultStatus": _one_of(RESULT_STATUSES), "note": _optional_note}
SCHEDULE_FIELDS: dict[str, Check] = {
    "name": _text(MAX_TITLE),
    "cron": _cron,
    "taskType": _one_of(TASK_TYPES),
    "enabled": _boolean,
}


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
        name: (value.strip() if isinstance(value, str) and name in ("title", "name", "cron") else value)
        for name, value in body.items()
    }


def validate_listing(
    status: str | None, limit: str | None, after: str | None
) -> tuple[str | None, int, int | None]:
    """Check the `GET /api/tasks` query.

    Raises:
        BadMessage: naming the bad parameters.
    """
    errors: dict[str, str] = {}
    if status is not None and status not in TASK_STATUSES:
        errors["status"] = f"must be one of {', '.join(TASK_STATUSES)}"
    size = 50
    if limit is not None:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST_LIMIT:
            errors["limit"] = f"must be a whole number from 1 to {MAX_LIST_LIMIT}"
        else:
            size = int(limit)
    cursor = None
    if after is not None:
        if not after.isdigit() or len(after) > 15:
            errors["after"] = "must be a task id"
        else:
            cursor = int(after)
    if errors:
        raise BadMessage("invalid query", errors)
    return status, size, cursor
