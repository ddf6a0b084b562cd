"""Every shape the service speaks, defined once as JSON Schema (2020-12, as plain Python data).

REST bodies and answers (`COMPONENTS`), every stream message in both directions (`MESSAGES`),
the close codes' client policy (`CLOSE_POLICY`, codes from `service.core.errors.CloseCode`) and the
reconnect constants (`BACKOFF`) live here. Everything else is derived from them:

- the server's body validators (`field_error`, used by `service.app.validation`), with the exact
  `{"error": "invalid", "fields": {...}}` messages clients already see;
- `/api/openapi.json` (`handlers.openapi_document`);
- the TypeScript types of web/ (`service.codegen.typescript` → web/src/generated/schema.ts);
- docs/protocol.md (`service.codegen.protocol`).

`python -m service.codegen` rewrites the generated files; tests/unit/core/test_schema.py fails when one is
stale. Plain dicts rather than pydantic or dataclasses: the schema *is* the published JSON
Schema, with no dependency and no mapping layer between what we validate and what we document.
Extension keywords (`x-...`) carry what JSON Schema cannot say (error texts, TypeScript names);
the OpenAPI output drops them.

Adding an event type is one `Message(...)` in `MESSAGES`; adding a transport is one `TransportName`
member and its entry in `TRANSPORTS`; then `python -m service.codegen`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from service.core.errors import CloseCode
from service.core.schema.cron import valid_cron
from service.core.schema.text import visible

Schema = dict[str, Any]

# -- enums and limits ------------------------------------------------------------------------

TASK_TYPES = ("daily", "weekly", "monthly", "ad-hoc")
RESULT_STATUSES = ("completed", "failed", "skipped")
TASK_STATUSES = ("pending", *RESULT_STATUSES)


class TransportName(StrEnum):
    """A transport's name: `connected.transport`, `/api/connections`, presence counts and the
    `transport` label of every metric and log line."""

    WEBSOCKET = "websocket"
    SSE = "sse"
    POLL = "poll"


# Every transport and how a client opens it (docs/protocol.md lists them).
TRANSPORTS: dict[TransportName, str] = {
    TransportName.WEBSOCKET: "`GET /ws` (WebSocket upgrade); both directions, messages are text frames",
    TransportName.SSE: "`GET /events` with `Accept: text/event-stream` (Server-Sent Events); server to client only",
    TransportName.POLL: "`GET /poll` (long-polling, for proxies that buffer streams): each answer is one JSON body "
    "`{messages, cursor}`; poll again with `cursor=` (no `token=`: a header, the cookie or a ticket)",
}
SCHEDULE_ACTIONS = ("created", "updated", "deleted")
ERROR_CODES = ("bad_message", "unknown_type")  # what `error.code` can be (service.core.errors.BadMessage)
MAX_TITLE = 200
MAX_NOTE = 2000
MAX_CRON = 100
MAX_LIST_LIMIT = 200
MAX_ID = 10**15 - 1  # the largest id a URL may name (handlers.base.path_id)
TYPE_PATTERN = r"^[a-z][a-z0-9_.:-]{0,63}$"
MAX_NONCE_LENGTH = 128
MAX_SUBSCRIPTIONS = 64
# WebSocket client messages and ping frames: a burst, then a rate (service/protocol/websocket.py enforces them).
MAX_BAD_MESSAGES = 10
REQUEST_BURST = 50
REQUESTS_PER_SECOND = 20.0
EXPIRY_WARNING_SECONDS = 30
LEEWAY_SECONDS = 30  # JWT verification leeway, and so when a token stops authenticating (service.app.auth)
TICKET_SECONDS = 60  # a one-time connection ticket's life (service.app.auth)
MAX_BODY_BYTES = 1024 * 1024  # a REST request body, else 413 (handlers.base)


def ref(name: str) -> Schema:
    """A reference to one of `COMPONENTS`."""
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(values: tuple[str, ...], description: str = "") -> Schema:
    schema: Schema = {"type": "string", "enum": list(values)}
    if description:
        schema["description"] = description
    return schema


def _object(
    properties: dict[str, Schema], required: tuple[str, ...] = (), *, closed: bool = False, **extra: object
) -> Schema:
    schema: Schema = {"type": "object"}
    if required:
        schema["required"] = list(required)
    schema["properties"] = properties
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


CRON_EXAMPLE = "'0 9 * * 1'"
TITLE: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_TITLE,
    "pattern": r"\S",
    "format": "visible",
    "description": "at least one visible character: a letter, digit, punctuation or symbol "
    "(zero-width, format, control and space characters alone are blank)",
    "x-strip": True,
    "x-error": {"format": "must contain a visible character (zero-width and format characters alone are blank)"},
}
SCHEDULE_ID: Schema = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": MAX_ID,
    "x-error": "must be a positive integer or null",
}
CRON: Schema = {
    "type": "string",
    "maxLength": MAX_CRON,
    "format": "cron",
    "examples": ["0 9 * * 1"],
    "description": "five fields separated by ASCII spaces or tabs: minute hour day-of-month month day-of-week "
    "(names jan-dec, sun-sat allowed)",
    "x-strip": True,
    "x-error": {
        "type": f"must be a cron expression such as {CRON_EXAMPLE}",
        "maxLength": f"must be a cron expression such as {CRON_EXAMPLE}",
        "format": f"must be a cron expression with five fields in range, such as {CRON_EXAMPLE}",
    },
}
NOTE: Schema = {
    "type": ["string", "null"],
    "maxLength": MAX_NOTE,
    "x-error": f"must be a string of at most {MAX_NOTE} characters",
}
DATE_TIME: Schema = {"type": "string", "format": "date-time"}
ID = {"type": "integer", "minimum": 1}
EVENT_ID: Schema = {
    "type": "string",
    "description": "opaque, ordered stream position: send it back as `last_event_id` to resume",
}

_TASK_BODY = {"title": TITLE, "taskType": ref("TaskType"), "scheduleId": SCHEDULE_ID}
_SCHEDULE_BODY = {"name": TITLE, "cron": CRON, "taskType": ref("TaskType"), "enabled": {"type": "boolean"}}

# -- REST ------------------------------------------------------------------------------------

COMPONENTS: dict[str, Schema] = {
    "UserId": {"type": ["integer", "string"], "description": "a decimal id below 10^18 is a number"},
    "TaskType": _enum(TASK_TYPES),
    "ResultStatus": _enum(RESULT_STATUSES),
    "TaskStatus": _enum(TASK_STATUSES),
    "TransportName": _enum(tuple(TRANSPORTS)),
    "Error": {
        **_object(
            {
                "error": {"type": "string", "description": "`invalid`, `unauthorized`, `not_found`, ..."},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"}, "description": "per field"},
            },
            ("error",),
        ),
        "x-ts": "ApiErrorBody",  # `Error` is a global in TypeScript
    },
    "Task": _object(
        {
            "id": {"type": "integer"},
            "title": {"type": "string"},
            "taskType": ref("TaskType"),
            "status": ref("TaskStatus"),
            "scheduleId": {"type": ["integer", "null"]},
            "userId": ref("UserId"),
            "userName": {"type": "string"},
            "createdAt": DATE_TIME,
            "updatedAt": DATE_TIME,
            "executions": {"type": "integer"},
            "lastResultStatus": {"anyOf": [ref("ResultStatus"), {"type": "null"}]},
        },
        (
            "id",
            "title",
            "taskType",
            "status",
            "scheduleId",
            "userId",
            "userName",
            "createdAt",
            "updatedAt",
            "executions",
            "lastResultStatus",
        ),
    ),
    "NewTask": _object(_TASK_BODY, ("title", "taskType"), closed=True),
    "TaskChange": _object(_TASK_BODY, closed=True, minProperties=1),
    "Execution": _object({"resultStatus": ref("ResultStatus"), "note": NOTE}, ("resultStatus",), closed=True),
    "TaskPage": _object(
        {
            "tasks": {"type": "array", "items": ref("Task")},
            "next": {"type": ["integer", "null"], "description": "pass as `after` for the next page"},
        },
        ("tasks", "next"),
    ),
    "Schedule": _object(
        {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "cron": {"type": "string"},
            "taskType": ref("TaskType"),
            "enabled": {"type": "boolean"},
            "createdAt": DATE_TIME,
            "updatedAt": DATE_TIME,
        },
        ("id", "name", "cron", "taskType", "enabled", "createdAt", "updatedAt"),
    ),
    "NewSchedule": _object(_SCHEDULE_BODY, ("name", "cron", "taskType"), closed=True),
    "ScheduleChange": _object(_SCHEDULE_BODY, closed=True, minProperties=1),
    "ScheduleList": _object({"schedules": {"type": "array", "items": ref("Schedule")}}, ("schedules",)),
    "PublishEvent": _object(
        {
            "type": {"type": "string", "pattern": TYPE_PATTERN, "description": "not a control message type"},
            "to": {
                "type": ["object", "null"],
                "properties": {
                    "users": {"type": "array", "items": ref("UserId")},
                    "roles": {"type": "array", "items": {"type": "string"}},
                },
                "description": "only these users and roles receive it (default: everybody)",
            },
        },
        ("type",),
        additionalProperties=True,
        description="any other fields are delivered as they are (not `id`, `ts`, `_id`, `createdAt`)",
    ),
    "Accepted": _object({"accepted": {"type": "boolean"}, "type": {"type": "string"}}, ("accepted", "type")),
    "Ticket": _object(
        {"ticket": {"type": "string"}, "expiresIn": {"type": "integer", "description": "seconds, used once"}},
        ("ticket", "expiresIn"),
    ),
    "Connection": _object(
        {
            "id": {"type": "string"},
            "userId": ref("UserId"),
            "userName": {"type": "string"},
            "transport": ref("TransportName"),
            "since": {"type": "number", "description": "when it opened, in epoch seconds"},
            "remote": {"type": "string"},
            "subscriptions": {"type": ["array", "null"], "items": {"type": "string"}},
            "pendingBytes": {"type": "integer"},
            "lastEventId": {"type": ["string", "null"]},
        },
        ("id", "userId", "userName", "transport", "since", "remote", "pendingBytes"),
    ),
    "ConnectionList": _object({"connections": {"type": "array", "items": ref("Connection")}}, ("connections",)),
    "Closed": _object({"closed": {"type": "integer"}}, ("closed",)),
    "PresentUser": _object(
        {
            "userId": ref("UserId"),
            "userName": {"type": "string"},
            "since": {"type": ["string", "null"], "description": "when they joined (ISO-8601 UTC)"},
            "connections": {
                "type": "object",
                "description": "open connections per transport (`websocket`, `sse`, `poll`: polls waiting now) "
                "on every replica; transports with none are left out (empty within the grace)",
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
        },
        ("userId", "userName", "since", "connections"),
    ),
    "PresenceList": _object(
        {"users": {"type": "array", "items": ref("PresentUser")}, "count": {"type": "integer"}},
        ("users", "count"),
    ),
    "PollAnswer": _object(
        {
            "messages": {"type": "array", "items": {"type": "object"}, "description": "as on the streams"},
            "cursor": {"type": ["string", "null"], "description": "pass as `cursor=` in the next poll"},
        },
        ("messages", "cursor"),
    ),
}

# -- stream messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message type on the streams.

    `sender` is who sends it; an `event` is an application event (stored, has a resume `id`,
    filterable with `events=`); a `control` message is about this connection only. Events come
    in `group`s (`app`: tasks and schedules; web/ gets `<GROUP>_EVENT_TYPES` and a
    `<Group>Event` union per group). A `reserved` event only the server may emit
    (`POST /api/events` refuses it); control messages always are.
    """

    type: str
    sender: str  # "server" | "client"
    kind: str  # "event" | "control"
    name: str  # its TypeScript interface and JSON Schema title
    summary: str
    fields: dict[str, Schema] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    group: str = "app"
    reserved: bool = False

    def schema(self) -> Schema:
        """The message as a JSON Schema object (envelope included)."""
        props: dict[str, Schema] = {"type": {"const": self.type}}
        required = ["type"]
        if self.kind == "event":
            props |= {"id": EVENT_ID, "ts": DATE_TIME, "userId": ref("UserId"), "userName": {"type": "string"}}
            required += ["id", "ts", "userId", "userName"]
        elif self.sender == "server":
            props |= {"id": {"type": "string"}, "ts": DATE_TIME}
        props |= self.fields
        required += [name for name in self.required if name not in required]
        return {"title": self.name, "description": self.summary, **_object(props, tuple(required))}


TASK_ID = {"type": "integer", "minimum": 1}
EXPIRES_AT: Schema = {**DATE_TIME, "description": "when the token expires"}
TYPE_LIST: Schema = {
    "type": "array",
    "maxItems": MAX_SUBSCRIPTIONS,
    "items": {"type": "string", "pattern": TYPE_PATTERN},
}

# Every message on the streams. A new one is one entry here (then `python -m service.codegen`):
# `fields` and `required` are its own fields; the envelope (`type`, and `id`, `ts`, `userId`,
# `userName` for events) is added by `Message.schema`.
MESSAGES: tuple[Message, ...] = (
    Message(
        type="task_created", sender="server", kind="event", name="TaskCreatedEvent",
        summary="A task was created (`POST /api/tasks`).",
        fields={"taskId": TASK_ID, "taskType": ref("TaskType"), "title": {"type": "string"}},
        required=("taskId", "taskType", "title"),
    ),
    Message(
        type="task_executed", sender="server", kind="event", name="TaskExecutedEvent",
        summary="A run of a task was recorded (`POST /api/tasks/{id}/execute`).",
        fields={
            "taskId": TASK_ID, "taskType": ref("TaskType"), "resultStatus": ref("ResultStatus"),
            "executions": {"type": "integer", "description": "the count after this run (replays are idempotent)"},
        },
        required=("taskId", "taskType", "resultStatus", "executions"),
    ),
    Message(
        type="task_updated", sender="server", kind="event", name="TaskUpdatedEvent",
        summary="A task was changed (`PATCH /api/tasks/{id}`): carries the fields that the request set.",
        fields={
            "taskId": TASK_ID, "taskType": ref("TaskType"), "title": {"type": "string"},
            "scheduleId": {"type": ["integer", "null"]},
        },
        required=("taskId", "taskType"),
    ),
    Message(
        type="task_deleted", sender="server", kind="event", name="TaskDeletedEvent",
        summary="A task was removed (`DELETE /api/tasks/{id}`).",
        fields={"taskId": TASK_ID, "taskType": ref("TaskType")},
        required=("taskId", "taskType"),
    ),
    Message(
        type="schedule_updated", sender="server", kind="event", name="ScheduleUpdatedEvent",
        summary="A schedule was created, changed or removed.",
        fields={"scheduleId": TASK_ID, "action": _enum(SCHEDULE_ACTIONS), "name": {"type": "string"}},
        required=("scheduleId", "action", "name"),
    ),
    Message(
        type="presence_joined", sender="server", kind="event", name="PresenceJoinedEvent", group="presence",
        reserved=True,
        summary="A user's first connection anywhere in the fleet (not sent again for a reconnect within "
        "`PRESENCE_GRACE_SECONDS`).",
    ),
    Message(
        type="presence_left", sender="server", kind="event", name="PresenceLeftEvent", group="presence",
        reserved=True,
        summary="A user's last connection anywhere is gone and the grace ran out, or their replica died "
        "(within 2 heartbeats).",
    ),
    Message(
        type="connected", sender="server", kind="control", name="ConnectedMessage",
        summary="First message of every connection.",
        fields={
            "connectionId": {"type": "string"}, "userId": ref("UserId"), "userName": {"type": "string"},
            "transport": ref("TransportName"), "serverTime": DATE_TIME,
            "heartbeatSeconds": {"type": "number", "description": "pings (WebSocket) or comments (SSE) this often"},
            "resumed": {"type": "boolean", "description": "true when the events after `last_event_id` follow"},
        },
        required=("connectionId", "userId", "userName", "transport", "serverTime", "heartbeatSeconds", "resumed"),
    ),
    Message(
        type="pong", sender="server", kind="control", name="PongMessage",
        summary="Answer to a client `ping`, with its nonce.",
        fields={"nonce": {"type": ["string", "number"]}},
        required=("ts",),
    ),
    Message(
        type="resync", sender="server", kind="control", name="ResyncMessage",
        summary="The requested resume position is gone: refetch state over REST; live events follow.",
        fields={"reason": {"type": "string"}},
        required=("reason",),
    ),
    Message(
        type="token_expiring", sender="server", kind="control", name="TokenExpiringMessage",
        summary="The token expires soon: send `auth` with a fresh one (WebSocket) or reconnect (SSE).",
        fields={"expiresAt": EXPIRES_AT},
        required=("expiresAt",),
    ),
    Message(
        type="auth_ok", sender="server", kind="control", name="AuthOkMessage",
        summary="A fresh token from `auth` was accepted.",
        fields={"expiresAt": EXPIRES_AT},
        required=("expiresAt",),
    ),
    Message(
        type="error", sender="server", kind="control", name="ErrorMessage",
        summary="A client message was rejected (the connection stays open).",
        fields={"code": {"type": "string", "enum": list(ERROR_CODES), "x-open": True}, "message": {"type": "string"}},
        required=("code", "message"),
    ),
    Message(
        type="close", sender="server", kind="control", name="CloseMessage",
        summary="The end, where a WebSocket would close: over SSE `event: close` with data `{code, reason}` "
        "(no `type`); over long-polling the last message of the answer.",
        fields={"code": {"type": "integer"}, "reason": {"type": "string"}},
        required=("code", "reason"),
    ),
    Message(
        type="ping", sender="client", kind="control", name="PingRequest",
        summary="Ask for a `pong` (WebSocket).",
        fields={"nonce": {"type": ["string", "number"], "maxLength": MAX_NONCE_LENGTH}},
    ),
    Message(
        type="subscribe", sender="client", kind="control", name="SubscribeRequest",
        summary="Receive these event types too (WebSocket).",
        fields={"events": TYPE_LIST},
        required=("events",),
    ),
    Message(
        type="unsubscribe", sender="client", kind="control", name="UnsubscribeRequest",
        summary="Stop receiving these event types (WebSocket; needs an `events=` subscription).",
        fields={"events": TYPE_LIST},
        required=("events",),
    ),
    Message(
        type="auth", sender="client", kind="control", name="AuthRequest",
        summary="Replace the connection's token before it expires (WebSocket).",
        fields={"token": {"type": "string", "minLength": 1}},
        required=("token",),
    ),
)  # fmt: skip


def event_types(group: str | None = None) -> tuple[str, ...]:
    """The event types of one group, or of all."""
    return tuple(m.type for m in MESSAGES if m.kind == "event" and group in (None, m.group))


EVENT_GROUPS = tuple(dict.fromkeys(m.group for m in MESSAGES if m.kind == "event"))
APP_EVENT_TYPES = event_types("app")
SERVER_CONTROL_TYPES = tuple(m.type for m in MESSAGES if m.sender == "server" and m.kind == "control")
# What only the server may send: nobody can publish these through `POST /api/events`.
RESERVED_TYPES = SERVER_CONTROL_TYPES + tuple(m.type for m in MESSAGES if m.kind == "event" and m.reserved)
CLIENT_MESSAGE_TYPES = tuple(m.type for m in MESSAGES if m.sender == "client")

# -- close codes and reconnecting ------------------------------------------------------------


@dataclass(frozen=True)
class ClosePolicy:
    """What a client does after a close code: `retry` (backoff, resume), `reauth` (a new token
    first) or `stop` (with `reason`)."""

    action: str
    reason: str
    meaning: str


# Codes of `service.core.errors.CloseCode` (the server's source), plus 1006 which only clients see.
ABNORMAL = 1006
CLOSE_POLICY: dict[int, ClosePolicy] = {
    CloseCode.NORMAL: ClosePolicy("stop", "normal", "closed on purpose"),
    CloseCode.GOING_AWAY: ClosePolicy("retry", "", "the server is shutting down"),
    CloseCode.PROTOCOL_ERROR: ClosePolicy("retry", "", "a frame broke RFC 6455 (a client library bug)"),
    ABNORMAL: ClosePolicy("retry", "", "no close frame: the network or the process went away (never sent)"),
    CloseCode.INVALID_DATA: ClosePolicy("retry", "", "a text message that is not UTF-8"),
    CloseCode.MESSAGE_TOO_BIG: ClosePolicy("stop", "client_error", "a client message over the size limit"),
    CloseCode.INTERNAL_ERROR: ClosePolicy("retry", "", "a server error"),
    CloseCode.SERVICE_RESTART: ClosePolicy("retry", "", "draining for a restart: reconnect (to another instance)"),
    CloseCode.TRY_AGAIN_LATER: ClosePolicy("retry", "", "MongoDB unavailable while redeeming a ticket"),
    CloseCode.DISCONNECTED_BY_ADMIN: ClosePolicy("stop", "disconnected", "an admin closed it (`/api/connections`)"),
    CloseCode.TOO_MANY_BAD_MESSAGES: ClosePolicy(
        "stop", "client_error", f"{MAX_BAD_MESSAGES} bad messages in a row, or over the message rate limit"
    ),
    CloseCode.UNAUTHORIZED: ClosePolicy("reauth", "", "token missing, invalid, expired or of another user"),
    CloseCode.FORBIDDEN: ClosePolicy("stop", "forbidden", "authenticated, but lacks a role"),
    CloseCode.SLOW_CONSUMER: ClosePolicy("retry", "", "fell too far behind (send buffer full): resume"),
    CloseCode.TOO_MANY_CONNECTIONS: ClosePolicy("retry", "", "over the per-user connection limit"),
}
STOP_REASONS = ("normal", "disconnected", "forbidden", "client_error", "unauthorized", "closed")
# Close codes after which a client must not simply reconnect (`service tail` exits on them).
FINAL_CLOSE_CODES = frozenset(code for code, policy in CLOSE_POLICY.items() if policy.action != "retry")
# The reconnect policy of every client we ship (realtime_client/backoff.py, web/src/backoff.ts), seconds.
BACKOFF = {"base": 1.0, "cap": 5.0, "stable": 1.0}


def close_code_names() -> dict[str, int]:
    """Every close code by name, in code order (`CloseCode` plus `ABNORMAL`)."""
    codes = {code.name: int(code) for code in CloseCode} | {"ABNORMAL": ABNORMAL}
    return dict(sorted(codes.items(), key=lambda item: item[1]))


# -- validation ------------------------------------------------------------------------------


def resolve(schema: Schema) -> Schema:
    """The component a `$ref` names, else the schema itself."""
    if "$ref" in schema:
        return COMPONENTS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}
FORMATS: dict[str, Callable[[str], bool]] = {"cron": valid_cron, "visible": visible}


def failed_keyword(schema: Schema, value: Any) -> str | None:
    """The first keyword of a field schema that `value` breaks, or None.

    The subset request bodies use: `type`, `enum`, `minLength`, `pattern`, `maxLength`,
    `minimum`, `maximum`, `format`, and `anyOf` of those.
    """
    schema = resolve(schema)
    if "anyOf" in schema:
        return None if any(failed_keyword(s, value) is None for s in schema["anyOf"]) else "anyOf"
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else types
        if not any(_TYPE_CHECKS[t](value) for t in allowed):
            return "type"
        if value is None:
            return None
    if "enum" in schema and not any(value == v and type(value) is type(v) for v in schema["enum"]):
        return "enum"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return "minLength"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return "pattern"
        if len(value) > schema.get("maxLength", len(value)):
            return "maxLength"
        if "format" in schema and schema["format"] in FORMATS and not FORMATS[schema["format"]](value):
            return "format"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return "minimum"
        if "maximum" in schema and value > schema["maximum"]:
            return "maximum"
    return None


def field_error(schema: Schema, value: Any) -> str | None:
    """The error text clients get for a body field, or None when `value` is valid."""
    keyword = failed_keyword(schema, value)
    if keyword is None:
        return None
    schema = resolve(schema)
    custom = schema.get("x-error")
    if isinstance(custom, str):
        return custom
    if isinstance(custom, dict) and keyword in custom:
        return str(custom[keyword])
    if "enum" in schema:
        return f"must be one of {', '.join(schema['enum'])}"
    if schema.get("type") == "boolean":
        return "must be true or false"
    if keyword == "maxLength":
        return f"must be at most {schema['maxLength']} characters"
    if schema.get("type") == "string":
        return "must be a non-empty string"
    return "is invalid"


def body_fields(component: str) -> dict[str, Callable[[Any], str | None]]:
    """Per property of a request body component, its check (`service.app.validation.validate` runs them)."""

    def check_for(schema: Schema) -> Callable[[Any], str | None]:
        return lambda value: field_error(schema, value)

    return {name: check_for(schema) for name, schema in COMPONENTS[component]["properties"].items()}


def stripped_fields(component: str) -> frozenset[str]:
    """Properties whose string values are stored without surrounding whitespace."""
    return frozenset(name for name, s in COMPONENTS[component]["properties"].items() if resolve(s).get("x-strip"))


def public(schema: Any) -> Any:
    """A schema without our `x-...` extension keywords (what OpenAPI and docs publish)."""
    if isinstance(schema, dict):
        return {k: public(v) for k, v in schema.items() if not k.startswith("x-")}
    if isinstance(schema, list):
        return [public(v) for v in schema]
    return schema


def inline_scalars(schema: Any) -> Any:
    """Refs to enum and scalar components replaced by their schemas, so that each object
    schema can be used on its own (`Draft202012Validator(components["NewTask"])`)."""
    if isinstance(schema, dict):
        if "$ref" in schema and resolve(schema).get("type") != "object":
            return inline_scalars(resolve(schema))
        return {k: inline_scalars(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [inline_scalars(v) for v in schema]
    return schema


def published_components() -> dict[str, Schema]:
    """`COMPONENTS` and every stream message as named JSON Schemas, as OpenAPI publishes them."""
    messages = {m.name: m.schema() for m in MESSAGES}
    return {name: public(inline_scalars(schema)) for name, schema in (COMPONENTS | messages).items()}
