"""Validation of REST bodies for tasks and schedules: every field error at once, as 400."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from service.errors import BadMessage

TASK_TYPES = ("daily", "weekly", "monthly", "ad-hoc")
RESULT_STATUSES = ("completed", "failed", "skipped")
TASK_STATUSES = ("pending", *RESULT_STATUSES)
MAX_TITLE = 200
MAX_NOTE = 2000
MAX_LIST_LIMIT = 200
MAX_ID = 10**15 - 1  # the largest id a URL may name (handlers.base.path_id)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
_DAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# Per cron field: lowest and highest value, and the names it accepts.
_CRON_FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}),  # minute
    (0, 23, {}),  # hour
    (1, 31, {}),  # day of month
    (1, 12, _MONTHS),  # month
    (0, 7, _DAYS),  # day of week (0 and 7 are Sunday)
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
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        return "must be a positive integer or null"
    return None


def _digits(text: str) -> bool:
    """At most 15 ASCII digits: `str.isdigit` also accepts `١` and `²`, and `int` refuses
    strings of over 4300 digits, each of which would otherwise be a 500."""
    return text.isascii() and text.isdigit() and len(text) <= 15


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _cron_value(text: str, low: int, high: int, names: dict[str, int]) -> int | None:
    if text.lower() in names:
        return names[text.lower()]
    if _digits(text) and low <= int(text) <= high:
        return int(text)
    return None


def _cron_field(text: str, low: int, high: int, names: dict[str, int]) -> bool:
    """One field: comma-separated `*`, values or ranges, each with an optional `/step`."""
    for item in text.split(","):
        base, slash, step = item.partition("/")
        if slash and not (_digits(step) and 1 <= int(step) <= high):
            return False
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        first = _cron_value(start, low, high, names)
        last = _cron_value(end, low, high, names) if dash else first
        if first is None or last is None or first > last:
            return False
    return True


def _cron(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 100:
        return "must be a cron expression such as '0 9 * * 1'"
    fields = value.split()
    if len(fields) != 5 or not all(_cron_field(f, *rule) for f, rule in zip(fields, _CRON_FIELDS, strict=True)):
        return "must be a cron expression with five fields in range, such as '0 9 * * 1'"
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
        if not _digits(limit) or not 1 <= int(limit) <= MAX_LIST_LIMIT:
            errors["limit"] = f"must be a whole number from 1 to {MAX_LIST_LIMIT}"
        else:
            size = int(limit)
    cursor = None
    if after is not None:
        if not _digits(after):
            errors["after"] = "must be a task id"
        else:
            cursor = int(after)
    if errors:
        raise BadMessage("invalid query", errors)
    return status, size, cursor
