"""What the service really sends matches the published schema: every event and control
message, over WebSocket and SSE, validated against /api/openapi.json's message schemas.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from harness.clients import Service
from service.core import schema
from tests.integration.test_delivery import drive_every_event_type

EVERY_APP_EVENT = list(schema.APP_EVENT_TYPES)


async def validators(service: Service) -> dict[str, Draft202012Validator]:
    """Per message type, a validator for its schema as the service publishes it, closed to
    undocumented fields (clients must ignore unknown fields, but we document all we send)."""
    response = await service.request("GET", "/api/openapi.json")
    published = json.loads(response.body)["components"]["schemas"]
    return {m.type: Draft202012Validator({**published[m.name], "additionalProperties": False}) for m in schema.MESSAGES}


def check(by_type: dict[str, Draft202012Validator], message: dict[str, Any]) -> str:
    """The message's type, after asserting that it matches its schema."""
    errors = [e.message for e in by_type[message["type"]].iter_errors(message)]
    assert not errors, (message, errors)
    return str(message["type"])


@pytest.mark.gen_test(timeout=60)
async def test_every_message_over_websocket_matches_its_schema(service: Service) -> None:
    """connected, each task/schedule event, pong, error, token_expiring, auth_ok and resync are as documented."""
    by_type = await validators(service)
    token = service.token(sub=7, name="سارة", ttl=20)  # expires within the warning window
    ws = await service.websocket({"token": token})
    seen = [check(by_type, await ws.recv()) for _ in range(2)]
    assert sorted(seen) == ["connected", "token_expiring"]
    await drive_every_event_type(service, service.token(sub=7))
    seen += [check(by_type, await ws.recv()) for _ in EVERY_APP_EVENT]
    await ws.send({"type": "ping", "nonce": 42})
    await ws.send({"type": "nope"})
    await ws.send({"type": "auth", "token": service.token(sub=7)})
    seen += [check(by_type, await ws.recv()) for _ in range(3)]
    await ws.close()
    gone = await service.websocket({"token": service.token(sub=7), "last_event_id": "not-an-id"})
    seen += [check(by_type, await gone.recv()) for _ in range(2)]
    await gone.close()
    assert set(seen) == {*EVERY_APP_EVENT, "connected", "token_expiring", "pong", "error", "auth_ok", "resync"}


@pytest.mark.gen_test(timeout=60)
async def test_every_message_over_sse_matches_its_schema(service: Service) -> None:
    """Over SSE the same JSON arrives, and an admin's disconnect ends it with a documented `close`."""
    by_type = await validators(service)
    sse = await service.sse({"token": service.token(sub=8)})
    connected = (await sse.next_event()).json()
    check(by_type, connected)
    await drive_every_event_type(service, service.token(sub=8))
    seen = [check(by_type, (await sse.next_event()).json()) for _ in EVERY_APP_EVENT]
    assert seen == EVERY_APP_EVENT
    admin = service.token(sub=9, roles=("admin",))
    assert (await service.request("DELETE", f"/api/connections/{connected['connectionId']}", token=admin)).code == 200
    close = (await sse.next_of("close")).json()
    assert check(by_type, {"type": "close", **close}) == "close" and close["code"] == 4000
    sse.close()


@pytest.mark.gen_test(timeout=60)
async def test_rest_answers_match_their_schemas_with_no_undocumented_field(service: Service) -> None:
    """Task, TaskPage, Schedule, ScheduleList, Ticket, Accepted and ConnectionList are exactly as documented."""
    published = json.loads((await service.request("GET", "/api/openapi.json")).body)["components"]["schemas"]
    token = service.token(sub=3, roles=("user", "publisher", "admin"))
    ws = await service.websocket({"token": token})
    await ws.recv_type("connected")
    answers = {
        "Task": await service.request("POST", "/api/tasks", {"title": "t", "taskType": "daily"}, token=token),
        "TaskPage": await service.request("GET", "/api/tasks", token=token),
        "Schedule": await service.request(
            "POST", "/api/schedules", {"name": "s", "cron": "0 9 * * 1", "taskType": "weekly"}, token=token
        ),
        "ScheduleList": await service.request("GET", "/api/schedules", token=token),
        "Ticket": await service.request("POST", "/api/realtime/ticket", token=token),
        "Accepted": await service.request("POST", "/api/events", {"type": "note"}, token=token),
        "ConnectionList": await service.request("GET", "/api/connections", token=token),
        "Error": await service.request("POST", "/api/tasks", {"status": "x"}, token=token),
    }
    for name, response in answers.items():
        closed = {**published[name], "additionalProperties": False, "components": {"schemas": published}}
        body = json.loads(response.body)
        errors = [e.message for e in Draft202012Validator(closed).iter_errors(body)]
        assert not errors, (name, body, errors)
    assert json.loads(answers["ConnectionList"].body)["connections"][0]["transport"] == "websocket"
    await ws.close()
