"""`GET /api/openapi.json`: an OpenAPI 3.1 description of the REST API and both streams."""

from __future__ import annotations

from functools import cache
from typing import Any

from handlers.base import BaseHandler
from service.models import MAX_ID, MAX_LIST_LIMIT, MAX_NOTE, MAX_TITLE, RESULT_STATUSES, TASK_STATUSES, TASK_TYPES

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
    "400": _answer("invalid input", _ref("Error")),
    "401": _answer("missing, invalid or expired token", _ref("Error")),
    "403": _answer("missing role", _ref("Error")),
    "413": _answer("body over 1 MiB", _ref("Error")),
    "503": _answer("MongoDB unavailable", _ref("Error")),
}
ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}


def _op(
    summary: str,
    ok: dict[str, dict[str, Any]],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    not_found: bool = False,
) -> dict[str, Any]:
    responses = {**ok, **ERRORS}
    if not_found:
        responses["404"] = _answer("no such id", _ref("Error"))
    op: dict[str, Any] = {"summary": summary, "responses": responses, "security": [{"bearer": []}]}
    if body is not None:
        op["requestBody"] = _body(body)
    if params:
        op["parameters"] = params
    return op


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    task_type = {"type": "string", "enum": list(TASK_TYPES)}
    title = {"type": "string", "minLength": 1, "maxLength": MAX_TITLE, "pattern": r"\S"}
    schedule_id = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_ID}
    cron = {"type": "string", "maxLength": 100, "examples": ["0 9 * * 1"]}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object"},
            },
        },
        "Task": {
            "type": "object",
            "required": ["id", "title", "taskType", "status", "userId", "userName", "createdAt", "updatedAt"],
            "properties": {
                "id": {"type": "integer"},
                "title": {"type": "string"},
                "taskType": task_type,
                "status": {"type": "string", "enum": list(TASK_STATUSES)},
                "scheduleId": schedule_id,
                "userId": {"type": ["integer", "string"]},
                "userName": {"type": "string"},
                "createdAt": {"type": "string", "format": "date-time"},
                "updatedAt": {"type": "string", "format": "date-time"},
                "executions": {"type": "integer"},
                "lastResultStatus": {"type": ["string", "null"]},
            },
        },
        "NewTask": {
            "type": "object",
            "required": ["title", "taskType"],
            "additionalProperties": False,
            "properties": {"title": title, "taskType": task_type, "scheduleId": schedule_id},
        },
        "TaskChange": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {"title": title, "taskType": task_type, "scheduleId": schedule_id},
        },
        "Execution": {
            "type": "object",
            "required": ["resultStatus"],
            "additionalProperties": False,
            "properties": {
                "resultStatus": {"type": "string", "enum": list(RESULT_STATUSES)},
                "note": {"type": ["string", "null"], "maxLength": MAX_NOTE},
            },
        },
        "Schedule": {
            "type": "object",
            "required": ["id", "name", "cron", "taskType", "enabled"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "cron": {"type": "string"},
                "taskType": task_type,
                "enabled": {"type": "boolean"},
                "createdAt": {"type": "string"},
                "updatedAt": {"type": "string"},
            },
        },
        "NewSchedule": {
            "type": "object",
            "required": ["name", "cron", "taskType"],
            "additionalProperties": False,
            "properties": {
                "name": title,
                "cron": cron,
                "taskType": task_type,
                "enabled": {"type": "boolean"},
            },
        },
        "ScheduleChange": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "name": title,
                "cron": cron,
                "taskType": task_type,
                "enabled": {"type": "boolean"},
            },
        },
        "Connection": {
            "type": "object",
            "required": ["id", "userId", "userName", "transport", "since", "remote", "pendingBytes"],
            "properties": {
                "id": {"type": "string"},
                "userId": {"type": ["integer", "string"]},
                "userName": {"type": "string"},
                "transport": {"type": "string", "enum": ["websocket", "sse"]},
                "since": {"type": "number", "description": "when it opened, in epoch seconds"},
                "remote": {"type": "string"},
                "subscriptions": {"type": ["array", "null"], "items": {"type": "string"}},
                "pendingBytes": {"type": "integer"},
                "lastEventId": {"type": ["string", "null"]},
            },
        },
        "PresentUser": {
            "type": "object",
            "required": ["userId", "userName", "since", "connections"],
            "properties": {
                "userId": {"type": ["integer", "string"]},
                "userName": {"type": "string"},
                "since": {"type": ["string", "null"], "description": "when they joined (ISO-8601 UTC)"},
                "connections": {
                    "type": "object",
                    "description": "open connections per transport on every replica (all 0 within the grace)",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
            },
        },
        "Event": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "pattern": "^[a-z][a-z0-9_.:-]{0,63}$"},
                "to": {
                    "type": ["object", "null"],
                    "properties": {
                        "users": {"type": "array", "items": {"type": ["integer", "string"]}},
                        "roles": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "additionalProperties": True,
        },
    }
    closed = {"type": "object", "required": ["closed"], "properties": {"closed": {"type": "integer"}}}
    task_list = {
        "type": "object",
        "required": ["tasks", "next"],
        "properties": {
            "tasks": {"type": "array", "items": _ref("Task")},
            "next": {"type": ["integer", "null"]},
        },
    }
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
    paths: dict[str, Any] = {
        "/api/tasks": {
            "get": _op(
                "List tasks, newest first",
                {"200": _answer("a page of tasks", task_list)},
                params=[
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(TASK_STATUSES)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
                    },
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
                ],
            ),
            "post": _op(
                "Create a task (emits task_created)",
                {"201": _answer("created", _ref("Task"))},
                body=_ref("NewTask"),
            ),
        },
        "/api/tasks/{id}": {
            "get": _op("Read a task", {"200": _answer("the task", _ref("Task"))}, params=[ID_PARAM], not_found=True),
            "patch": _op(
                "Change a task (emits task_updated)",
                {"200": _answer("changed", _ref("Task"))},
                body=_ref("TaskChange"),
                params=[ID_PARAM],
                not_found=True,
            ),
            "delete": _op(
                "Remove a task (emits task_deleted)",
                {"204": _answer("removed")},
                params=[ID_PARAM],
                not_found=True,
            ),
        },
        "/api/tasks/{id}/execute": {
            "post": _op(
                "Record an execution (emits task_executed)",
                {"200": _answer("the task", _ref("Task"))},
                body=_ref("Execution"),
                params=[ID_PARAM],
                not_found=True,
            ),
        },
        "/api/schedules": {
            "get": _op(
                "List schedules",
                {
                    "200": _answer(
                        "schedules",
                        {
                            "type": "object",
                            "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}},
                        },
                    )
                },
            ),
            "post": _op(
                "Create a schedule (emits schedule_updated)",
                {"201": _answer("created", _ref("Schedule"))},
                body=_ref("NewSchedule"),
            ),
        },
        "/api/schedules/{id}": {
            "get": _op(
                "Read a schedule",
                {"200": _answer("the schedule", _ref("Schedule"))},
                params=[ID_PARAM],
                not_found=True,
            ),
            "patch": _op(
                "Change a schedule (emits schedule_updated)",
                {"200": _answer("changed", _ref("Schedule"))},
                body=_ref("ScheduleChange"),
                params=[ID_PARAM],
                not_found=True,
            ),
            "delete": _op(
                "Remove a schedule (emits schedule_updated)",
                {"204": _answer("removed")},
                params=[ID_PARAM],
                not_found=True,
            ),
        },
        "/api/events": {
            "post": _op(
                "Publish an event (publisher role)",
                {"202": _answer("accepted", {"type": "object"})},
                body=_ref("Event"),
            ),
        },
        "/api/realtime/ticket": {
            "post": _op(
                "A one-time connection ticket (60 s)",
                {
                    "200": _answer(
                        "ticket",
                        {
                            "type": "object",
                            "required": ["ticket", "expiresIn"],
                            "properties": {"ticket": {"type": "string"}, "expiresIn": {"type": "integer"}},
                        },
                    )
                },
            ),
        },
        "/api/presence": {
            "get": _op(
                "Users online on any replica, with connection counts per transport (the same on every replica)",
                {
                    "200": _answer(
                        "online users, oldest first",
                        {
                            "type": "object",
                            "required": ["users", "count"],
                            "properties": {
                                "users": {"type": "array", "items": _ref("PresentUser")},
                                "count": {"type": "integer"},
                            },
                        },
                    )
                },
            ),
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This OpenAPI document",
                "responses": {"200": _answer("OpenAPI 3.1 document", {"type": "object"})},
            },
        },
        "/api/connections": {
            "get": _op(
                "This instance's open connections (admin role)",
                {
                    "200": _answer(
                        "connections",
                        {
                            "type": "object",
                            "required": ["connections"],
                            "properties": {"connections": {"type": "array", "items": _ref("Connection")}},
                        },
                    )
                },
            ),
        },
        "/api/connections/{id}": {
            "delete": _op(
                "Close one connection on this instance with 4000 (admin role)",
                {"200": _answer("closed", closed)},
                params=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                not_found=True,
            ),
        },
        "/api/users/{userId}/connections": {
            "delete": _op(
                "Close every connection of a user on this instance with 4000 (admin role)",
                {"200": _answer("closed", closed)},
                params=[{"name": "userId", "in": "path", "required": True, "schema": {"type": ["integer", "string"]}}],
            ),
        },
        "/events": {
            "get": {
                "summary": "Server-Sent Events stream",
                "parameters": stream_params,
                "security": [{"bearer": []}],
                "responses": {
                    "200": {
                        "description": "text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "401": ERRORS["401"],
                    "429": _answer("too many connections", _ref("Error")),
                },
            },
        },
        "/ws": {
            "get": {
                "summary": "WebSocket stream (upgrade; auth failures close with 4401)",
                "parameters": stream_params,
                "responses": {"101": {"description": "switching protocols"}},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Realtime task events",
            "version": "1.0.0",
            "description": "REST API of the realtime task events service; events arrive on /ws and /events.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(openapi_document())
