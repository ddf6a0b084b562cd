"""The OpenAPI 3.1 document of `/api/openapi.json`: its operations here, its paths from the route table
(`handlers.route_table`), every schema from `service.core.schema`."""

from __future__ import annotations

from functools import cache
from typing import Any

from handlers.route_table import ROUTES
from service.app.idempotency import HEADER, MAX_KEY_LENGTH
from service.core.schema import MAX_BODY_BYTES, MAX_ID, MAX_LIST_LIMIT, MESSAGES, TICKET_SECONDS, published_components

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {JSON: {"schema": schema}}
    return answer


ERRORS = {
    "400": _answer("invalid input (a body that is not UTF-8 JSON, or a lone surrogate, included)", _ref("Error")),
    "401": _answer("missing, invalid or expired token", _ref("Error")),
    "403": _answer("missing role", _ref("Error")),
    "413": _answer(f"body over {MAX_BODY_BYTES // 2**20} MiB", _ref("Error")),
    "503": _answer("MongoDB unavailable", _ref("Error")),
}
IDEMPOTENCY_PARAM = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "One key per user action, reused on every retry of it: the same key with the same method, path and body "
        "within 24 h gets the first answer again (with `Idempotent-Replayed: true`) and changes nothing; with "
        "another request, 422; while the first is still running, 409. Answers that changed nothing are not kept."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[\\x21-\\x7e]+$"},
}
IDEMPOTENCY_ERRORS = {
    "409": _answer("a request with this Idempotency-Key is still in progress (retry after Retry-After)", _ref("Error")),
    "422": _answer("this Idempotency-Key was used for a different request", _ref("Error")),
}
ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}


def _op(
    operation_id: str,
    summary: str,
    ok: dict[str, dict[str, Any]],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    not_found: bool = False,
    change: bool = False,
) -> dict[str, Any]:
    """One operation; a `change` commits with its event and takes an `Idempotency-Key`."""
    responses = {**ok, **ERRORS}
    if not_found:
        responses["404"] = _answer("no such id", _ref("Error"))
    if change:
        responses.update(IDEMPOTENCY_ERRORS)
        params = [*(params or []), IDEMPOTENCY_PARAM]
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": responses,
        "security": [{"bearer": []}],
    }
    if body is not None:
        op["requestBody"] = _body(body)
        responses["415"] = _answer("a Content-Type charset other than UTF-8", _ref("Error"))
    if params:
        op["parameters"] = params
    return op


# Streams take a Bearer header (not from browsers), the cookie, or a one-time ticket.
STREAM_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}, {"ticket": []}]


def _stream_unions() -> dict[str, Any]:
    """The stream messages as two unions (what a client receives, what it may send), so that the
    message components are referenced from the stream operations."""
    server = [_ref(m.name) for m in MESSAGES if m.sender == "server"]
    client = [_ref(m.name) for m in MESSAGES if m.sender == "client"]
    return {
        "ServerMessage": {"description": "a message the service sends on /ws, /events and /poll", "anyOf": server},
        "ClientMessage": {"description": "a message a client may send on /ws", "anyOf": client},
        "WebSocketFrame": {
            "description": "one text frame: a ServerMessage from the service, a ClientMessage from the client",
            "anyOf": [_ref("ServerMessage"), _ref("ClientMessage")],
        },
    }


def _stream_text() -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref("ServerMessage")}


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _referenced(schemas: dict[str, Any], roots: Any) -> dict[str, Any]:
    """The components reachable from `roots` (scalar ones are inlined where used, so some are not)."""
    seen: set[str] = set()
    todo = _refs(roots)
    while todo:
        name = todo.pop()
        if name not in seen and name in schemas:
            seen.add(name)
            todo |= _refs(schemas[name])
    return {name: schema for name, schema in schemas.items() if name in seen}


def _operation_list() -> list[dict[str, Any]]:
    """Every operation (the route table says which path and method has which, by operationId)."""
    stream_params = [
        {
            "name": "events",
            "in": "query",
            "schema": {"type": "string"},
            "description": "comma-separated types",
        },
        {"name": "last_event_id", "in": "query", "schema": {"type": "string"}},
        {"name": "ticket", "in": "query", "schema": {"type": "string"}},
        {"name": "token", "in": "query", "schema": {"type": "string"}},
    ]
    return [
        _op(
            "listTasks",
            "List tasks, newest first",
            {"200": _answer("a page of tasks", _ref("TaskPage"))},
            params=[
                {
                    "name": "status",
                    "in": "query",
                    "schema": _ref("TaskStatus"),
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
                },
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
            ],
        ),
        _op(
            "createTask",
            "Create a task (emits task_created)",
            {"201": _answer("created", _ref("Task"))},
            body=_ref("NewTask"),
            change=True,
        ),
        _op("getTask", "Read a task", {"200": _answer("the task", _ref("Task"))}, params=[ID_PARAM], not_found=True),
        _op(
            "updateTask",
            "Change a task (emits task_updated)",
            {"200": _answer("changed", _ref("Task"))},
            body=_ref("TaskChange"),
            params=[ID_PARAM],
            not_found=True,
            change=True,
        ),
        _op(
            "deleteTask",
            "Remove a task (emits task_deleted)",
            {"204": _answer("removed")},
            params=[ID_PARAM],
            not_found=True,
            change=True,
        ),
        _op(
            "executeTask",
            "Record an execution (emits task_executed)",
            {"200": _answer("the task", _ref("Task"))},
            body=_ref("Execution"),
            params=[ID_PARAM],
            not_found=True,
            change=True,
        ),
        _op(
            "listSchedules",
            "List schedules",
            {"200": _answer("schedules", _ref("ScheduleList"))},
        ),
        _op(
            "createSchedule",
            "Create a schedule (emits schedule_updated)",
            {"201": _answer("created", _ref("Schedule"))},
            body=_ref("NewSchedule"),
            change=True,
        ),
        _op(
            "getSchedule",
            "Read a schedule",
            {"200": _answer("the schedule", _ref("Schedule"))},
            params=[ID_PARAM],
            not_found=True,
        ),
        _op(
            "updateSchedule",
            "Change a schedule (emits schedule_updated)",
            {"200": _answer("changed", _ref("Schedule"))},
            body=_ref("ScheduleChange"),
            params=[ID_PARAM],
            not_found=True,
            change=True,
        ),
        _op(
            "deleteSchedule",
            "Remove a schedule (emits schedule_updated)",
            {"204": _answer("removed")},
            params=[ID_PARAM],
            not_found=True,
            change=True,
        ),
        _op(
            "publishEvent",
            "Publish an event (publisher role)",
            {"202": _answer("accepted", _ref("Accepted"))},
            body=_ref("PublishEvent"),
            change=True,
        ),
        _op(
            "createTicket",
            f"A one-time connection ticket ({TICKET_SECONDS} s)",
            {"200": _answer("ticket", _ref("Ticket"))},
        ),
        _op(
            "listPresence",
            "Users online on any replica, with connection counts per transport (the same on every replica)",
            {"200": _answer("online users, oldest first", _ref("PresenceList"))},
        ),
        {
            "operationId": "getOpenApi",
            "summary": "This OpenAPI document",
            "security": [],
            "responses": {
                "200": _answer("OpenAPI 3.1 document", {"type": "object"}),
                "400": _answer("not a valid HTTP request (answered by the HTTP server itself)"),
            },
        },
        _op(
            "listConnections",
            "This instance's open connections (admin role)",
            {"200": _answer("connections", _ref("ConnectionList"))},
        ),
        _op(
            "closeConnection",
            "Close one connection on this instance with 4000 (admin role)",
            {"200": _answer("closed", _ref("Closed"))},
            params=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            not_found=True,
        ),
        _op(
            "closeUserConnections",
            "Close every connection of a user on this instance with 4000 (admin role)",
            {"200": _answer("closed", _ref("Closed"))},
            params=[{"name": "userId", "in": "path", "required": True, "schema": _ref("UserId")}],
        ),
        {
            "operationId": "streamEvents",
            "summary": "Server-Sent Events stream",
            "description": "Opens with a bare `retry:` block; each message is one block whose `data` is JSON.",
            "parameters": [
                *stream_params,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string"},
                    "description": "resume after this id (wins over `last_event_id=`)",
                },
            ],
            "security": STREAM_SECURITY,
            "responses": {
                "200": {
                    "description": "text/event-stream: `data:` lines carry one message each",
                    "content": {"text/event-stream": {"schema": _stream_text()}},
                },
                "401": ERRORS["401"],
                "429": _answer("too many connections", _ref("Error")),
                "503": _answer("draining, or a resume not admitted now: retry after Retry-After", _ref("Error")),
            },
        },
        {
            "operationId": "poll",
            "summary": "Long-polling: the events after a position, or an empty list after POLL_TIMEOUT_SECONDS",
            "parameters": [
                *[p for p in stream_params if p["name"] != "token"],
                {
                    "name": "cursor",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "the previous answer's cursor; without it the poll connects (`connected` first)",
                },
            ],
            "security": [{"bearer": []}, {"cookie": []}, {"ticket": []}],
            "responses": {
                "200": _answer(
                    "messages (events, `connected`, `resync`, `close`) and the position to poll from next",
                    _ref("PollAnswer"),
                ),
                "400": ERRORS["400"],
                "401": ERRORS["401"],
                "429": _answer("too many connections, or polls past the burst (Retry-After)", _ref("Error")),
                "503": _answer("draining, or a resume not admitted now: retry after Retry-After", _ref("Error")),
            },
        },
        {
            "operationId": "websocket",
            "summary": "WebSocket stream (upgrade; auth failures close with 4401)",
            "parameters": stream_params,
            "security": STREAM_SECURITY,
            "responses": {
                "101": {
                    "description": "switching protocols; then text frames, each one JSON message",
                    "content": {"application/json": {"schema": _ref("WebSocketFrame")}},
                },
                "400": _answer("not a WebSocket upgrade request"),
                "503": _answer("draining: connect again (another instance)", _ref("Error")),
            },
        },
    ]


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once): a path for each route that documents operations."""
    operations = {op["operationId"]: op for op in _operation_list()}
    paths = {
        route.path: {method: operations[op_id] for method, op_id in route.operations.items()}
        for route in ROUTES
        if route.operations
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Realtime task events",
            "version": "1.0.0",
            "description": "REST API of the realtime task events service; events arrive on /ws, /events and /poll.",
            "license": {"name": "Apache 2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "the service that serves this document"}],
        "paths": paths,
        "components": {
            "schemas": _referenced(published_components() | _stream_unions(), paths),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "access_token"},
                "ticket": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "ticket",
                    "description": "one-time, from POST /api/realtime/ticket",
                },
            },
        },
    }
