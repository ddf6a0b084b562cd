"""The `cron` string format of schedules: five fields, each `*`, values, ranges and steps in range."""

from __future__ import annotations

import re

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


def digits(text: str) -> bool:
    """At most 15 ASCII digits: `str.isdigit` also accepts `١` and `²`, and `int` refuses
    strings of over 4300 digits, each of which would otherwise be a 500."""
    return text.isascii() and text.isdigit() and len(text) <= 15


def _value(text: str, low: int, high: int, names: dict[str, int]) -> int | None:
    if text.lower() in names:
        return names[text.lower()]
    if digits(text) and low <= int(text) <= high:
        return int(text)
    return None


def _field(text: str, low: int, high: int, names: dict[str, int]) -> bool:
    """One field: comma-separated `*`, values or ranges, each with an optional `/step`."""
    for item in text.split(","):
        base, slash, step = item.partition("/")
        if slash and not (digits(step) and 1 <= int(step) <= high):
            return False
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        first = _value(start, low, high, names)
        last = _value(end, low, high, names) if dash else first
        if first is None or last is None or first > last:
            return False
    return True


# Fields are separated by ASCII spaces and tabs only, as crontab(5) has it: `str.split()` also
# splits on U+3000 (ideographic space), NBSP and other Unicode spaces that no cron accepts.
_SEPARATOR = re.compile(r"[ \t]+")


def valid_cron(value: str) -> bool:
    """Five fields separated by ASCII spaces or tabs, every one in range."""
    fields = _SEPARATOR.split(value.strip(" \t"))
    return len(fields) == 5 and all(_field(f, *rule) for f, rule in zip(fields, _CRON_FIELDS, strict=True))
