"""The event envelope: types, validation of published events, ids from the change feed.

An event is stored in the `events` collection as a flat document (the seed's shape) plus
`createdAt`, `createdAtUs` and an optional `to`; its `id` is the change stream's position, so
every process sees the same id for the same event, in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from service.core import schema
from service.core.errors import BadMessage

JSONValue = Any  # what json.loads can produce; kept as Any only inside payload dicts
Payload = dict[str, JSONValue]

TYPE_PATTERN = re.compile(schema.TYPE_PATTERN.removeprefix("^").removesuffix("$"))  # used with fullmatch
EVENT_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
APP_TYPES = frozenset(schema.event_types())  # every event type service/core/schema defines, with its fields
# Messages the server itself produces per connection.
CONTROL_TYPES = frozenset(schema.SERVER_CONTROL_TYPES)
# What nobody may publish: the control messages and the events only the server emits.
RESERVED_TYPES = frozenset(schema.RESERVED_TYPES)
# When the service first knew of the event, in whole microseconds since the epoch: the start
# of the latency metrics. `createdAt` (a BSON date, for the TTL index and `ts`) keeps only
# milliseconds, too coarse against 5 ms buckets. Documents from other programs may lack it.
CREATED_US = "createdAtUs"
RESERVED_FIELDS = frozenset({"id", "ts", "_id", "createdAt", CREATED_US})
# Stored fields that are not part of what clients receive.
PRIVATE_FIELDS = frozenset({"_id", "createdAt", CREATED_US, "to"})
MAX_ADDRESSEES = 1000
MAX_DEPTH = 32  # nesting of published fields; MongoDB refuses documents past 100 levels
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def metric_type(event_type: str) -> str:
    """The low-cardinality label for an event type: known types, else `custom`."""
    return event_type if event_type in APP_TYPES else "custom"


def iso(moment: datetime) -> str:
    """An ISO-8601 UTC timestamp with milliseconds and a `Z`, as clients receive it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_us(moment: datetime) -> int:
    """A moment as whole microseconds since the Unix epoch (naive datetimes are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def now_iso() -> str:
    """The current time as `iso` formats it."""
    return iso(datetime.now(UTC))


class Position(NamedTuple):
    """An oplog position: a commit's seconds and its order within that second (MongoDB's
    `Timestamp`, converted by storage so the core needs no driver). Ordered like the oplog."""

    time: int
    inc: int


# Where a change feed stands, as the store gives it: opaque, handed back to resume there.
ResumeToken = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One insert into `events` as the change feed reports it."""

    position: Position  # the commit's: the event's id
    token: ResumeToken  # a feed resumed after it starts with the next change
    document: Mapping[str, Any] | None  # the inserted document (None if the feed had none)
    wall_time: datetime | None = None  # the commit's wall-clock time, when the store says


def event_id(position: Position) -> str:
    """Encode an oplog position as an id that sorts like the position (16 hex digits)."""
    return f"{position.time:08x}{position.inc:08x}"


def parse_event_id(value: str) -> Position | None:
    """The oplog position of an id made by `event_id`; None if it is not one."""
    if not EVENT_ID_PATTERN.fullmatch(value):
        return None
    return Position(int(value[:8], 16), int(value[8:], 16))


@dataclass(frozen=True, slots=True)
class Audience:
    """Who may receive an event; an event without one goes to everybody."""

    users: frozenset[int | str] = frozenset()
    roles: frozenset[str] = frozenset()

    def admits(self, user_id: int | str, roles: frozenset[str]) -> bool:
        """Whether a principal with this id and these roles is addressed."""
        return user_id in self.users or not self.roles.isdisjoint(roles)

    def to_document(self) -> dict[str, list[int | str]]:
        """The stored `to` sub-document."""
        doc: dict[str, list[int | str]] = {}
        if self.users:
            doc["users"] = sorted(self.users, key=str)
        if self.roles:
            doc["roles"] = sorted(self.roles)
        return doc


@dataclass(frozen=True, slots=True)
class Event:
    """One event as delivered: id, type, time, the flat fields, and its audience."""

    id: str
    type: str
    ts: str
    fields: Payload
    audience: Audience | None
    inserted_at: float  # epoch seconds when the service first knew of it (`createdAtUs`, else `createdAt`)

    def payload(self) -> Payload:
        """The JSON object clients receive: `id`, `type`, `ts` first, then the fields."""
        return {"id": self.id, "type": self.type, "ts": self.ts, **self.fields}


def user_id_of(value: object) -> int | str:
    """The one canonical user id, as tokens (`sub`), `to.users`, limits, admin and REST use it.

    A string that is the canonical decimal form of a number below 10^18 (ASCII digits, no
    leading zero) becomes that integer, so `"7"`, `7` and a token's `"sub": "7"` are one user;
    every other id stays the string it is, so `"0100"`, `"00100"` and `"100"` are three users.
    An integer is read as its decimal text (a big one stays a string).

    Raises:
        ValueError: not a non-empty string or an integer.
    """
    if isinstance(value, bool):
        raise ValueError("not a user id")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and value:
        canonical = value.isascii() and value.isdigit() and len(value) < 19 and (value == "0" or value[0] != "0")
        return int(value) if canonical else value
    raise ValueError("not a user id")


def parse_audience(raw: object) -> Audience | None:
    """Validate a `to` value: `{"users": [...], "roles": [...]}`.

    Raises:
        BadMessage: with a `to` field error.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not set(raw) <= {"users", "roles"}:
        raise BadMessage("invalid addressing", {"to": "must be an object with users and/or roles"})
    users_raw = raw.get("users", [])
    roles_raw = raw.get("roles", [])
    if not isinstance(users_raw, list) or len(users_raw) > MAX_ADDRESSEES:
        raise BadMessage("invalid addressing", {"to.users": "must be a list of user ids"})
    if not isinstance(roles_raw, list) or len(roles_raw) > MAX_ADDRESSEES:
        raise BadMessage("invalid addressing", {"to.roles": "must be a list of role names"})
    try:
        users = frozenset(user_id_of(u) for u in users_raw)
    except ValueError:
        raise BadMessage("invalid addressing", {"to.users": "must be a list of user ids"}) from None
    if not all(isinstance(r, str) and r for r in roles_raw):
        raise BadMessage("invalid addressing", {"to.roles": "must be a list of role names"})
    if not users and not roles_raw:
        raise BadMessage("invalid addressing", {"to": "names no users and no roles"})
    return Audience(users=users, roles=frozenset(roles_raw))


def validate_type(value: object) -> str:
    """Check a publishable event type.

    Raises:
        BadMessage: for a non-string, a malformed or a reserved type.
    """
    if not isinstance(value, str) or not TYPE_PATTERN.fullmatch(value):
        raise BadMessage("invalid event type", {"type": "must match [a-z][a-z0-9_.:-]{0,63}"})
    if value in RESERVED_TYPES:
        raise BadMessage("invalid event type", {"type": f"{value!r} is reserved for the server"})
    return value


def document_for_publish(body: Mapping[str, object], created_at: datetime) -> dict[str, object]:
    """Turn a `POST /api/events` body into the document inserted into `events`.

    Raises:
        BadMessage: naming every rejected field.
    """
    event_type = validate_type(body.get("type"))
    reserved = sorted(RESERVED_FIELDS & set(body))
    if reserved:
        raise BadMessage("reserved fields", {name: "is set by the server" for name in reserved})
    audience = parse_audience(body.get("to"))
    doc: dict[str, object] = {k: v for k, v in body.items() if k != "to"}
    unstorable = {name: problem for name, value in doc.items() if (problem := _unstorable(name, value, 0))}
    if unstorable:
        raise BadMessage("fields MongoDB cannot store", unstorable)
    doc["type"] = event_type
    doc["createdAt"] = created_at
    doc[CREATED_US] = epoch_us(created_at)
    if audience is not None:
        doc["to"] = audience.to_document()
    return doc


def _unstorable(key: str, value: object, depth: int) -> str | None:
    """Why a published field cannot be stored as BSON as it is, or None when it can."""
    if key.startswith("$") or "\x00" in key:
        return "field names must not start with '$' or contain NUL"
    if depth > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} levels"
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        return "integers must fit in 64 bits"
    if isinstance(value, Mapping):
        children = list(value.items())
    elif isinstance(value, list):
        children = [("", item) for item in value]
    else:
        return None
    for child_key, child in children:
        problem = _unstorable(str(child_key), child, depth + 1)
        if problem:
            return problem
    return None


def event_from_change(change: Change) -> Event | None:
    """Build the event for one change feed insert.

    Returns None for a document that is not a valid event (for example one inserted
    directly by another program with a bad `type`); the caller logs and counts it.
    """
    doc = change.document
    if not isinstance(doc, Mapping):
        return None
    event_type = doc.get("type")
    if not isinstance(event_type, str) or not TYPE_PATTERN.fullmatch(event_type):
        return None
    if event_type in CONTROL_TYPES:
        return None
    try:
        audience = parse_audience(doc.get("to"))
    except BadMessage:
        return None
    created = doc.get("createdAt")
    if not isinstance(created, datetime):
        wall = change.wall_time
        created = wall if isinstance(wall, datetime) else datetime.fromtimestamp(change.position.time, UTC)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    fields = {k: _plain(v) for k, v in doc.items() if k not in PRIVATE_FIELDS and k not in ("type", "id", "ts")}
    micros = doc.get(CREATED_US)
    if isinstance(micros, int | float) and not isinstance(micros, bool):
        inserted_at = micros / 1e6
    else:
        inserted_at = created.timestamp()
    return Event(
        id=event_id(change.position),
        type=event_type,
        ts=iso(created),
        fields=fields,
        audience=audience,
        inserted_at=inserted_at,
    )


def _plain(value: Any) -> Any:
    """BSON values as JSON values: datetimes as ISO strings, ObjectIds and others as strings."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def event_document(
    event_type: str, fields: Mapping[str, object], created_at: datetime | None = None
) -> dict[str, object]:
    """The document for an event the service itself emits (REST side effects).

    Args:
        created_at: the change's own time (a task's `updatedAt`), so the event's `ts`
            equals it and clients can tell which of the two is newer; now when omitted.
    """
    created = created_at or datetime.now(UTC)
    return {"type": event_type, **fields, "createdAt": created, CREATED_US: epoch_us(created)}
