"""The REST API over real HTTP: tasks, schedules, publishing, errors, limits, OpenAPI, logs, CORS."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from jsonschema import Draft202012Validator
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from handlers.route_table import ROUTES
from harness.clients import Service, wait_bound

MIB = 1024 * 1024
NEW_TASK = {"title": "تقرير يومي", "taskType": "daily"}
NEW_SCHEDULE = {"name": "صباحي", "cron": "0 9 * * 1", "taskType": "weekly"}


def body_of(response: HTTPResponse) -> Any:
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    return json.loads(response.body)


async def create_task(service: Service, token: str, **fields: Any) -> dict[str, Any]:
    response = await service.request("POST", "/api/tasks", {**NEW_TASK, **fields}, token=token)
    assert response.code == 201, response.body
    return body_of(response)  # type: ignore[no-any-return]


async def create_schedule(service: Service, token: str) -> dict[str, Any]:
    response = await service.request("POST", "/api/schedules", NEW_SCHEDULE, token=token)
    assert response.code == 201, response.body
    return body_of(response)  # type: ignore[no-any-return]


def assert_invalid(response: HTTPResponse, fields: set[str]) -> None:
    assert response.code == 400, response.body
    body = body_of(response)
    assert body["error"] == "invalid"
    assert set(body["fields"]) == fields, body


# -- tasks ------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_create_task_answers_201_with_integer_id_and_location(service: Service) -> None:
    """A new task gets an integer id, a Location header and the creator from the token."""
    response = await service.request("POST", "/api/tasks", NEW_TASK, token=service.token(sub=3, name="ليلى"))
    assert response.code == 201
    task = body_of(response)
    assert isinstance(task["id"], int) and task["id"] >= 1
    assert response.headers["Location"] == f"/api/tasks/{task['id']}"
    assert (task["title"], task["taskType"], task["status"]) == ("تقرير يومي", "daily", "pending")
    assert (task["userId"], task["userName"], task["scheduleId"]) == (3, "ليلى", None)
    assert (task["executions"], task["lastResultStatus"]) == (0, None)
    assert task["createdAt"].endswith("Z") and task["updatedAt"] == task["createdAt"]


@pytest.mark.gen_test(timeout=30)
async def test_get_task_returns_the_stored_task(service: Service) -> None:
    """GET by id returns what POST created."""
    token = service.token()
    task = await create_task(service, token, scheduleId=4)
    response = await service.request("GET", f"/api/tasks/{task['id']}", token=token)
    assert response.code == 200 and body_of(response) == task


@pytest.mark.gen_test(timeout=30)
async def test_list_tasks_newest_first_with_cursor_paging(service: Service) -> None:
    """`limit` pages newest first; `next` is the cursor for `after`, null on the last page."""
    token = service.token()
    ids = [(await create_task(service, token, title=f"t{i}"))["id"] for i in range(5)]
    pages = []
    query = "limit=2"
    while True:
        response = await service.request("GET", f"/api/tasks?{query}", token=token)
        assert response.code == 200
        page = body_of(response)
        pages.append([t["id"] for t in page["tasks"]])
        if page["next"] is None:
            break
        assert page["next"] == page["tasks"][-1]["id"]
        query = f"limit=2&after={page['next']}"
    newest_first = ids[::-1]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]


@pytest.mark.gen_test(timeout=30)
async def test_list_tasks_defaults_to_everything_newest_first(service: Service) -> None:
    """Without parameters, the list holds every task (under the default limit), newest first."""
    token = service.token()
    ids = [(await create_task(service, token))["id"] for _ in range(3)]
    listing = body_of(await service.request("GET", "/api/tasks", token=token))
    assert [t["id"] for t in listing["tasks"]] == ids[::-1] and listing["next"] is None


@pytest.mark.gen_test(timeout=30)
async def test_list_tasks_filters_by_status(service: Service) -> None:
    """`status=` returns only tasks in that state."""
    token = service.token()
    done, pending = await create_task(service, token), await create_task(service, token)
    execute = await service.request(
        "POST", f"/api/tasks/{done['id']}/execute", {"resultStatus": "completed"}, token=token
    )
    assert execute.code == 200
    for status, expected in (("completed", [done["id"]]), ("pending", [pending["id"]]), ("failed", [])):
        listing = body_of(await service.request("GET", f"/api/tasks?status={status}", token=token))
        assert [t["id"] for t in listing["tasks"]] == expected


@pytest.mark.gen_test(timeout=30)
async def test_patch_task_changes_only_given_fields(service: Service) -> None:
    """PATCH changes the named fields, keeps the others and moves `updatedAt`."""
    token = service.token()
    task = await create_task(service, token)
    response = await service.request(
        "PATCH", f"/api/tasks/{task['id']}", {"title": "  تقرير أسبوعي ", "taskType": "weekly"}, token=token
    )
    assert response.code == 200
    changed = body_of(response)
    assert (changed["title"], changed["taskType"]) == ("تقرير أسبوعي", "weekly")
    assert changed["createdAt"] == task["createdAt"] and changed["updatedAt"] >= task["updatedAt"]
    assert body_of(await service.request("GET", f"/api/tasks/{task['id']}", token=token)) == changed


@pytest.mark.gen_test(timeout=30)
async def test_delete_task_answers_204_then_404(service: Service) -> None:
    """A deleted task is gone: 204 with no body, then 404 for GET and a second DELETE."""
    token = service.token()
    path = f"/api/tasks/{(await create_task(service, token))['id']}"
    deleted = await service.request("DELETE", path, token=token)
    assert deleted.code == 204 and deleted.body == b""
    for method in ("GET", "DELETE"):
        gone = await service.request(method, path, token=token)
        assert gone.code == 404 and body_of(gone)["error"] == "not_found"


@pytest.mark.gen_test(timeout=30)
async def test_execute_task_records_result_status_and_executions(service: Service) -> None:
    """Each execution sets the status and result, and counts."""
    token = service.token()
    path = f"/api/tasks/{(await create_task(service, token))['id']}/execute"
    first = body_of(await service.request("POST", path, {"resultStatus": "failed", "note": "قرص ممتلئ"}, token=token))
    assert (first["status"], first["lastResultStatus"], first["executions"]) == ("failed", "failed", 1)
    second = body_of(await service.request("POST", path, {"resultStatus": "skipped", "note": None}, token=token))
    assert (second["status"], second["lastResultStatus"], second["executions"]) == ("skipped", "skipped", 2)


@pytest.mark.gen_test(timeout=30)
async def test_arabic_title_round_trips_byte_for_byte(service: Service) -> None:
    """UTF-8 Arabic (with diacritics and a mark) comes back as the very bytes that were sent."""
    token = service.token(name="محمّد حسن")
    title = "مُهِمَّة يوميّة\u200f: تقرير «المبيعات»"
    raw = b'{"title": "' + title.encode("utf-8") + b'", "taskType": "daily"}'
    created = await service.request("POST", "/api/tasks", raw=raw, token=token)
    assert created.code == 201
    expected = b'"title":"' + title.encode("utf-8") + b'"'
    assert expected in created.body and "محمّد حسن".encode() in created.body
    task_id = body_of(created)["id"]
    assert expected in (await service.request("GET", f"/api/tasks/{task_id}", token=token)).body
    assert expected in (await service.request("GET", "/api/tasks", token=token)).body


# -- schedules --------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_schedule_create_list_get_patch_delete(service: Service) -> None:
    """Schedules go through their whole life over HTTP."""
    token = service.token()
    created = await service.request("POST", "/api/schedules", NEW_SCHEDULE, token=token)
    assert created.code == 201
    schedule = body_of(created)
    path = f"/api/schedules/{schedule['id']}"
    assert created.headers["Location"] == path
    assert {k: schedule[k] for k in NEW_SCHEDULE} == NEW_SCHEDULE and schedule["enabled"] is True
    assert body_of(await service.request("GET", "/api/schedules", token=token)) == {"schedules": [schedule]}
    assert body_of(await service.request("GET", path, token=token)) == schedule
    patched = body_of(
        await service.request("PATCH", path, {"enabled": False, "cron": "*/15 8-18 * * MON-FRI"}, token=token)
    )
    assert (patched["enabled"], patched["cron"], patched["name"]) == (False, "*/15 8-18 * * MON-FRI", "صباحي")
    assert (await service.request("DELETE", path, token=token)).code == 204
    assert (await service.request("GET", path, token=token)).code == 404
    assert body_of(await service.request("GET", "/api/schedules", token=token)) == {"schedules": []}


# -- bad input --------------------------------------------------------------------------------


TASK_ERRORS = [
    ({"title": 5, "taskType": "daily"}, {"title"}),
    ({"title": "   ", "taskType": "daily"}, {"title"}),
    ({"title": "x" * 201, "taskType": "daily"}, {"title"}),
    ({"title": "t", "taskType": "yearly"}, {"taskType"}),
    ({"title": "t", "taskType": "daily", "scheduleId": "x"}, {"scheduleId"}),
    ({"title": "t", "taskType": "daily", "scheduleId": True}, {"scheduleId"}),
    ({"title": "t", "taskType": "daily", "scheduleId": -1}, {"scheduleId"}),
    ({"title": "t", "taskType": "daily", "scheduleId": 1.5}, {"scheduleId"}),
    ({"title": "t", "taskType": "daily", "scheduleId": 2**63}, {"scheduleId"}),
    ({"title": "t", "taskType": "daily", "color": "red", "id": 1}, {"color", "id"}),
    ({}, {"title", "taskType"}),
    ({"title": "t"}, {"taskType"}),
    ({"title": 5, "taskType": "yearly", "extra": 1}, {"title", "taskType", "extra"}),
]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("body", "fields"), TASK_ERRORS)
async def test_bad_task_body_is_400_naming_every_field(
    service: Service, body: dict[str, Any], fields: set[str]
) -> None:
    """Wrong types, unknown and missing fields are all reported at once."""
    assert_invalid(await service.request("POST", "/api/tasks", body, token=service.token()), fields)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"body"}),
        ({"status": "completed"}, {"status"}),
        ({"title": None}, {"title"}),
        ({"taskType": "yearly"}, {"taskType"}),
    ],
)
async def test_bad_task_patch_is_400(service: Service, body: dict[str, Any], fields: set[str]) -> None:
    """An empty PATCH, a read-only field or a bad value is refused and changes nothing."""
    token = service.token()
    task = await create_task(service, token)
    assert_invalid(await service.request("PATCH", f"/api/tasks/{task['id']}", body, token=token), fields)
    assert body_of(await service.request("GET", f"/api/tasks/{task['id']}", token=token)) == task


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"resultStatus": "done"}, {"resultStatus"}),
        ({}, {"resultStatus"}),
        ({"resultStatus": "completed", "note": 5}, {"note"}),
        ({"resultStatus": "completed", "by": "me"}, {"by"}),
    ],
)
async def test_bad_execution_is_400(service: Service, body: dict[str, Any], fields: set[str]) -> None:
    """An execution needs a known resultStatus and at most a string note."""
    token = service.token()
    task = await create_task(service, token)
    assert_invalid(await service.request("POST", f"/api/tasks/{task['id']}/execute", body, token=token), fields)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({**NEW_SCHEDULE, "cron": "bad"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": "x x x x x"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": "61 * * * *"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": "0 24 * * *"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": "0 9 0 * *"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": "0 9 * 13 *"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": "0 9 * * 8"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": "5-1 * * * *"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": "*/0 * * * *"}, {"cron"}),
        ({**NEW_SCHEDULE, "cron": 5}, {"cron"}),
        ({**NEW_SCHEDULE, "enabled": "yes"}, {"enabled"}),
        ({**NEW_SCHEDULE, "taskType": "yearly"}, {"taskType"}),
        ({"name": "n"}, {"cron", "taskType"}),
        ({**NEW_SCHEDULE, "owner": 1}, {"owner"}),
    ],
)
async def test_bad_schedule_body_is_400(service: Service, body: dict[str, Any], fields: set[str]) -> None:
    """Schedules need a name, a five-field cron within range, a task type and a boolean `enabled`."""
    assert_invalid(await service.request("POST", "/api/schedules", body, token=service.token()), fields)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "cron", ["0 9 * * 1", "*/5 * * * *", "0 0 1,15 * *", "30 8-18/2 * JAN-JUN mon-fri", "0 0 * * 7", "59 23 31 12 0"]
)
async def test_valid_cron_expressions_are_accepted(service: Service, cron: str) -> None:
    """Lists, ranges, steps and month/day names are valid cron."""
    response = await service.request("POST", "/api/schedules", {**NEW_SCHEDULE, "cron": cron}, token=service.token())
    assert response.code == 201 and body_of(response)["cron"] == cron


INVISIBLE = {
    "zero-width-spaces": "\u200b\u200b",
    "joiners": "\u200d\u200c",
    "bom": "\ufeff",
    "bidi-marks": "\u200e\u200f\u202e\u2066",
    "word-joiner-and-soft-hyphen": "\u2060\u00ad",
    "hangul-filler": "\u3164",
    "braille-blank": "\u2800",
    "control": "\u0007\u0085",
    "lone-combining-mark": "\u0301",
    "ideographic-space-and-nbsp": "\u3000\u00a0",
}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("text", INVISIBLE.values(), ids=INVISIBLE.keys())
async def test_title_and_name_of_only_invisible_characters_are_400(service: Service, text: str) -> None:
    """Zero-width, format, control and separator characters alone are blank, for titles and schedule names."""
    token = service.token()
    assert_invalid(
        await service.request("POST", "/api/tasks", {"title": text, "taskType": "daily"}, token=token), {"title"}
    )
    assert_invalid(
        await service.request("POST", "/api/schedules", {**NEW_SCHEDULE, "name": text}, token=token), {"name"}
    )


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("title", ["مَرْحَبًا بِكُمْ", "\u200fتقرير", "a\u200bb", "😀", "١٢", "\u0915\u094d\u200d"])
async def test_title_with_a_visible_character_is_accepted(service: Service, title: str) -> None:
    """Arabic with its marks, text around zero-width characters, emoji and digits are not blank."""
    response = await service.request("POST", "/api/tasks", {"title": title, "taskType": "daily"}, token=service.token())
    assert response.code == 201 and body_of(response)["title"] == title


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "cron", ["0\u30009 * * 1", "0 9 * * 1\u3000", "0\u00a09 * * 1", "0\u20039 * * 1", "0\n9 * * 1"]
)
async def test_cron_fields_are_split_on_ascii_space_and_tab_only(service: Service, cron: str) -> None:
    """An ideographic space, NBSP, em space or newline is not a cron field separator."""
    response = await service.request("POST", "/api/schedules", {**NEW_SCHEDULE, "cron": cron}, token=service.token())
    assert_invalid(response, {"cron"})


@pytest.mark.gen_test(timeout=30)
async def test_cron_fields_may_be_separated_by_tabs_and_runs_of_spaces(service: Service) -> None:
    """crontab's own separators, repeated, stay valid."""
    cron = "0\t9  *\t * 1"
    response = await service.request("POST", "/api/schedules", {**NEW_SCHEDULE, "cron": cron}, token=service.token())
    assert response.code == 201 and body_of(response)["cron"] == cron


@pytest.mark.gen_test(timeout=30)
async def test_empty_schedule_patch_is_400(service: Service) -> None:
    """A PATCH that names no field is refused."""
    token = service.token()
    schedule = await create_schedule(service, token)
    assert_invalid(await service.request("PATCH", f"/api/schedules/{schedule['id']}", {}, token=token), {"body"})


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b"[]",
        b'["title", "taskType"]',
        b'"text"',
        b"null",
        b"\xff\xfe",
        b'{"title": NaN, "taskType": "daily"}',
        b'{"title": "t", "taskType": "daily", "scheduleId": 1e999}',
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "truncated",
        "text",
        "array",
        "array-of-names",
        "string",
        "null",
        "not-utf8",
        "nan",
        "infinity",
        "deep-nesting",
    ],
)
async def test_body_that_is_not_a_json_object_is_400(service: Service, raw: bytes) -> None:
    """Anything but one plain JSON object is refused as a whole body."""
    assert_invalid(await service.request("POST", "/api/tasks", raw=raw, token=service.token()), {"body"})


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1000", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("limit=%C2%B2", "limit"),
        ("limit=%D9%A1", "limit"),
        ("status=bogus", "status"),
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("after=%C2%B2", "after"),
        ("after=1" + "0" * 20, "after"),
        pytest.param("limit=" + "1" * 5000, "limit", id="limit-of-5000-digits"),
        pytest.param("after=" + "1" * 5000, "after", id="after-of-5000-digits"),
    ],
)
async def test_bad_list_query_is_400(service: Service, query: str, field: str) -> None:
    """Out-of-range or non-numeric paging and unknown statuses name the parameter."""
    assert_invalid(await service.request("GET", f"/api/tasks?{query}", token=service.token()), {field})


@pytest.mark.gen_test(timeout=30)
async def test_query_that_is_not_utf8_is_400(service: Service) -> None:
    """Bytes that are not UTF-8 in a query value are a client error, not a server error."""
    response = await service.request("GET", "/api/tasks?limit=%FF", token=service.token())
    assert response.code == 400 and body_of(response)["error"] == "bad_request"


# -- unknown ids and routes -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/tasks/999999", None),
        ("PATCH", "/api/tasks/999999", {"title": "x"}),
        ("DELETE", "/api/tasks/999999", None),
        ("POST", "/api/tasks/999999/execute", {"resultStatus": "completed"}),
        ("GET", "/api/schedules/999999", None),
        ("PATCH", "/api/schedules/999999", {"enabled": False}),
        ("DELETE", "/api/schedules/999999", None),
    ],
)
async def test_unknown_id_is_404(service: Service, method: str, path: str, body: Any) -> None:
    """Ids that name nothing answer 404 with a JSON error."""
    response = await service.request(method, path, body, token=service.token())
    assert response.code == 404 and body_of(response)["error"] == "not_found"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "path",
    [
        "/api/tasks/abc",
        "/api/tasks/1.0",
        "/api/tasks/-1",
        "/api/tasks/0x1",
        "/api/tasks/%C2%B2",
        "/api/tasks/%D9%A1",
        "/api/tasks/%EF%BC%91",
        "/api/tasks/" + "9" * 40,
        "/api/tasks/abc/execute",
        "/api/schedules/abc",
        "/api/schedules/%D9%A1",
    ],
)
async def test_non_numeric_id_is_404(service: Service, path: str) -> None:
    """Only ASCII digits name a task or schedule; `١` (Arabic-Indic one) is not task 1."""
    token = service.token()
    await create_task(service, token)
    await create_schedule(service, token)
    method = "POST" if path.endswith("/execute") else "GET"
    body = {"resultStatus": "completed"} if method == "POST" else None
    response = await service.request(method, path, body, token=token)
    assert response.code == 404 and body_of(response)["error"] == "not_found"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/nope"), ("POST", "/api/nope"), ("GET", "/api/tasks/1/2/3"), ("DELETE", "/api/")],
)
async def test_unknown_api_route_is_json_404(service: Service, method: str, path: str) -> None:
    """Paths under /api that match no route answer JSON 404, not the dashboard's HTML."""
    response = await service.request(method, path, {} if method == "POST" else None)
    assert response.code == 404 and body_of(response)["error"] == "not_found"


@pytest.mark.gen_test(timeout=30)
async def test_unsupported_method_is_json_405(service: Service) -> None:
    """A known path with a method it does not serve answers 405 as JSON."""
    response = await service.request("PUT", "/api/tasks", NEW_TASK, token=service.token())
    assert response.code == 405 and body_of(response)["error"] == "method_not_allowed"


# -- size limit -------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_body_over_one_mib_is_413_and_service_keeps_serving(service: Service) -> None:
    """A 2 MiB body is refused with 413; the next request on a new connection works."""
    token = service.token()
    raw = b'{"title": "' + b"x" * (2 * MIB) + b'", "taskType": "daily"}'
    response = await service.request("POST", "/api/tasks", raw=raw, token=token)
    assert response.code == 413 and body_of(response)["error"] == "request_entity_too_large"
    assert (await service.request("POST", "/api/tasks", NEW_TASK, token=token)).code == 201


@pytest.mark.gen_test(timeout=60)
async def test_chunked_body_over_one_mib_is_413(service: Service) -> None:
    """Without Content-Length, the cap applies to the bytes as they stream in."""

    async def produce(write: Callable[[bytes], Any]) -> None:
        await write(b'{"title": "')
        for _ in range(3):
            await write(b"x" * (MIB // 2))
        await write(b'", "taskType": "daily"}')

    response = await AsyncHTTPClient().fetch(
        service.http + "/api/tasks",
        method="POST",
        body_producer=produce,
        headers={"Authorization": f"Bearer {service.token()}", "Content-Type": "application/json"},
        raise_error=False,
        request_timeout=wait_bound(30),
    )
    assert response.code == 413 and body_of(response)["error"] == "request_entity_too_large"


@pytest.mark.gen_test(timeout=60)
async def test_body_of_exactly_one_mib_is_accepted(service: Service) -> None:
    """The cap is 1 MiB inclusive: a padded body of exactly that size still creates a task."""
    raw = json.dumps(NEW_TASK).encode()
    raw += b" " * (MIB - len(raw))
    assert len(raw) == MIB
    assert (await service.request("POST", "/api/tasks", raw=raw, token=service.token())).code == 201


# -- authentication ---------------------------------------------------------------------------


def bad_credentials() -> list[Any]:
    now = time.time()
    foreign = "another-key-that-is-long-enough-for-hs256-xyz"
    return [
        pytest.param(lambda s: {}, "missing token", id="missing"),
        pytest.param(lambda s: {"Authorization": "Bearer not-a-jwt"}, "invalid token", id="garbage"),
        pytest.param(lambda s: {"Authorization": f"Bearer {s.token(ttl=-120)}"}, "token expired", id="expired"),
        pytest.param(
            lambda s: {"Authorization": "Bearer " + jwt.encode({"sub": "1", "exp": now + 600}, "", algorithm="none")},
            "invalid token",
            id="alg-none",
        ),
        pytest.param(
            lambda s: {
                "Authorization": "Bearer " + jwt.encode({"sub": "1", "exp": now + 600}, foreign, algorithm="HS256")
            },
            "invalid token",
            id="foreign-key",
        ),
        pytest.param(lambda s: {"Authorization": f"Basic {s.token()}"}, "invalid token", id="basic-scheme"),
        pytest.param(lambda s: {"Authorization": s.token()}, "invalid token", id="no-scheme"),
        pytest.param(lambda s: {"Cookie": "access_token=not-a-jwt"}, "invalid token", id="bad-cookie"),
    ]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("make_headers", "reason"), bad_credentials())
async def test_bad_credentials_are_401_with_reason(
    service: Service, make_headers: Callable[[Service], dict[str, str]], reason: str
) -> None:
    """Missing, invalid, expired, unsigned and foreign tokens get 401 with a JSON reason."""
    for method, path, body in (("GET", "/api/tasks", None), ("POST", "/api/tasks", NEW_TASK)):
        response = await service.request(method, path, body, headers=make_headers(service))
        assert response.code == 401
        assert body_of(response) == {"error": "unauthorized", "reason": reason}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert body_of(await service.request("GET", "/api/tasks", token=service.token()))["tasks"] == []


@pytest.mark.gen_test(timeout=30)
async def test_cookie_and_token_query_authenticate(service: Service) -> None:
    """The `access_token` cookie and the seed's `token=` query both work over REST."""
    by_cookie = await service.request("GET", "/api/tasks", headers={"Cookie": f"access_token={service.token()}"})
    by_query = await service.request("GET", f"/api/tasks?token={service.token()}")
    assert (by_cookie.code, by_query.code) == (200, 200)


@pytest.mark.gen_test(timeout=30)
async def test_cookie_from_foreign_origin_cannot_change_anything(service: Service) -> None:
    """A cross-site form post carrying the cookie is refused with 403 and creates nothing (CSRF)."""
    cookie = f"access_token={service.token()}"
    forged = await service.request(
        "POST",
        "/api/tasks",
        raw=b'{"title":"x=","taskType":"daily"}',
        headers={"Cookie": cookie, "Origin": "http://evil.example", "Content-Type": "text/plain"},
    )
    assert forged.code == 403 and body_of(forged)["error"] == "forbidden"
    listing = await service.request("GET", "/api/tasks", headers={"Cookie": cookie, "Origin": "http://evil.example"})
    assert listing.code == 200 and body_of(listing)["tasks"] == []
    for origin in ("http://allowed.example", f"http://127.0.0.1:{service.port}"):
        allowed = await service.request("POST", "/api/tasks", NEW_TASK, headers={"Cookie": cookie, "Origin": origin})
        assert allowed.code == 201, origin


@pytest.mark.gen_test(timeout=30)
async def test_bearer_token_works_from_any_origin(service: Service) -> None:
    """A Bearer token is not ambient, so the Origin does not matter for it."""
    headers = {"Origin": "http://evil.example"}
    response = await service.request("POST", "/api/tasks", NEW_TASK, token=service.token(), headers=headers)
    assert response.code == 201


@pytest.mark.gen_test(timeout=30)
async def test_publish_without_publisher_role_is_403(service: Service) -> None:
    """A plain user may not publish; the event is refused with 403."""
    response = await service.request("POST", "/api/events", {"type": "x"}, token=service.token(roles=("user",)))
    assert response.code == 403
    assert body_of(response)["error"] == "forbidden"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("roles", [("publisher",), ("admin",)])
async def test_publish_with_publisher_or_admin_role_is_202(service: Service, roles: tuple[str, ...]) -> None:
    """Publishers and admins may publish; the answer is 202 with the type."""
    event = {"type": "report.ready", "title": "تقرير", "to": {"roles": ["admin"]}}
    response = await service.request("POST", "/api/events", event, token=service.token(roles=roles))
    assert response.code == 202
    assert body_of(response) == {"accepted": True, "type": "report.ready"}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"type"}),
        ({"type": 5}, {"type"}),
        ({"type": "Bad Type"}, {"type"}),
        ({"type": "1abc"}, {"type"}),
        ({"type": "a" * 65}, {"type"}),
        ({"type": "connected"}, {"type"}),
        ({"type": "pong"}, {"type"}),
        ({"type": "error"}, {"type"}),
        ({"type": "resync"}, {"type"}),
        ({"type": "token_expiring"}, {"type"}),
        ({"type": "x", "id": "1"}, {"id"}),
        ({"type": "x", "ts": "now"}, {"ts"}),
        ({"type": "x", "id": "1", "ts": "now"}, {"id", "ts"}),
        ({"type": "x", "to": "everyone"}, {"to"}),
        ({"type": "x", "to": {"users": 1}}, {"to.users"}),
        ({"type": "x", "to": {"roles": [1, 2]}}, {"to.roles"}),
        ({"type": "x", "to": {}}, {"to"}),
        ({"type": "x", "to": {"users": [], "roles": []}}, {"to"}),
        ({"type": "x", "n": 2**64}, {"n"}),
        ({"type": "x", "$set": {"a": 1}}, {"$set"}),
        ({"type": "x", "deep": json.loads("[" * 40 + "]" * 40)}, {"deep"}),
    ],
)
async def test_bad_published_event_is_400_naming_fields(
    service: Service, body: dict[str, Any], fields: set[str]
) -> None:
    """Bad types, reserved types and fields, bad addressing and unstorable values are refused."""
    response = await service.request("POST", "/api/events", body, token=service.token(roles=("publisher",)))
    assert_invalid(response, fields)


# -- OpenAPI, logs, CORS ----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_openapi_describes_every_api_route(service: Service) -> None:
    """`/api/openapi.json` is OpenAPI 3.1 and has an entry for every /api route the app serves."""
    response = await service.request("GET", "/api/openapi.json")
    assert response.code == 200
    document = body_of(response)
    assert document["openapi"].startswith("3.1.")
    documented = [re.sub(r"\{[^}]+\}", "([^/]+)", path) for path in document["paths"]]
    served = [route.pattern for route in ROUTES if route.path.startswith("/api/")]
    assert sorted(served) == sorted(p for p in documented if p.startswith("/api/"))
    for path, operations in document["paths"].items():
        assert operations, path
        for operation in operations.values():
            assert operation["responses"], (path, operation)


@pytest.mark.gen_test(timeout=30)
async def test_openapi_body_schemas_agree_with_the_server(service: Service) -> None:
    """Bodies the server refuses are invalid under the documented schema; a good body is valid."""
    document = body_of(await service.request("GET", "/api/openapi.json"))
    new_task = Draft202012Validator(document["components"]["schemas"]["NewTask"])
    assert new_task.is_valid(NEW_TASK)
    for body, _ in TASK_ERRORS:
        assert not new_task.is_valid(body), body


@pytest.mark.gen_test(timeout=30)
async def test_access_log_never_contains_tokens_or_tickets(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    """Token and ticket query values are redacted in the access log, on every endpoint."""
    caplog.set_level(logging.DEBUG, logger="service.access")
    secrets = {
        "sse": "SECRET-sse-token-1",
        "ws": "SECRET-ws-ticket-2",
        "rest": "SECRET-rest-token-3",
    }
    valid = service.token()
    sse = await service.sse({"token": secrets["sse"]})
    assert sse.status == 401
    ws = await service.websocket({"ticket": secrets["ws"]})
    assert await ws.closed() == (4401, "invalid ticket")
    assert (await service.request("GET", f"/api/tasks?limit=5&token={secrets['rest']}")).code == 401
    assert (await service.request("GET", f"/api/tasks?token={valid}&access_token={valid}")).code == 200
    lines = [record.getMessage() for record in caplog.records if record.name == "service.access"]
    assert len(lines) >= 4
    text = "\n".join(lines)
    for secret in [*secrets.values(), valid]:
        assert secret not in text
    assert text.count("[redacted]") >= 5
    assert "limit=5&token=[redacted]" in text


@pytest.mark.gen_test(timeout=30)
async def test_access_log_redacts_percent_encoded_token_names(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A token passed as `%74oken=` still authenticates, so it must be redacted too."""
    caplog.set_level(logging.DEBUG, logger="service.access")
    token = service.token()
    assert (await service.request("GET", f"/api/tasks?%74oken={token}")).code == 200
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "service.access")
    assert token not in text


@pytest.mark.gen_test(timeout=30)
async def test_cors_preflight_answers_204_for_allowed_origin(service: Service) -> None:
    """OPTIONS from an allowed origin gets 204 with the methods and headers browsers need."""
    response = await service.request(
        "OPTIONS",
        "/api/tasks",
        headers={
            "Origin": "http://allowed.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "PATCH", "DELETE"} <= methods
    allowed_headers = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed_headers


@pytest.mark.gen_test(timeout=30)
async def test_cors_headers_are_absent_for_other_origins(service: Service) -> None:
    """A foreign origin gets no Access-Control-Allow-Origin, on preflight or on a real request."""
    headers = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    preflight = await service.request("OPTIONS", "/api/tasks", headers=headers)
    actual = await service.request(
        "GET", "/api/tasks", token=service.token(), headers={"Origin": "http://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Origin" not in actual.headers


@pytest.mark.gen_test(timeout=30)
async def test_request_from_allowed_origin_is_answered_with_cors_headers(service: Service) -> None:
    """A browser request carrying `Origin` (as every cross-origin fetch and same-origin POST does) works."""
    headers = {"Origin": "http://allowed.example"}
    created = await service.request("POST", "/api/tasks", NEW_TASK, token=service.token(), headers=headers)
    assert created.code == 201
    assert created.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    refused = await service.request("GET", "/api/tasks", headers=headers)
    assert refused.code == 401 and refused.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
