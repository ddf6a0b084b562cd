"""The schema as plain functions: no server, no MongoDB.

Body validators give the exact texts clients see, agree with a real JSON Schema validator on the
published schema, the generated files are fresh, and the SSE parser reads what the service writes.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from handlers.openapi_document import openapi_document
from realtime_client.sse import SseEvent, SseParser, parse_block
from service.app.validation import EXECUTE_FIELDS, SCHEDULE_FIELDS, TASK_FIELDS, validate, validate_listing
from service.codegen.__main__ import GENERATED, ROOT, stale
from service.core import schema
from service.core.errors import BadMessage, CloseCode
from service.core.events import APP_TYPES, CONTROL_TYPES, RESERVED_TYPES
from service.protocol.wire import parse_client_message, sse_block
from service.runtime.tail import FINAL_CODES

TASK = {"title": "تقرير", "taskType": "daily"}


def errors(body: dict[str, Any], fields: Any, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(BadMessage) as caught:
        validate(body, fields, **kwargs)
    return caught.value.fields


def test_generated_files_are_fresh() -> None:
    """web/src/generated/schema.ts, docs/protocol.md and realtime_client/schema.py are what
    `python -m service.codegen` writes now."""
    assert stale() == [], "run: python -m service.codegen"
    assert set(GENERATED) == {"web/src/generated/schema.ts", "docs/protocol.md", "realtime_client/schema.py"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"title": "  ", "taskType": "daily"}, {"title": "must be a non-empty string"}),
        ({"title": 5, "taskType": "daily"}, {"title": "must be a non-empty string"}),
        ({"title": "x" * 201, "taskType": "daily"}, {"title": "must be at most 200 characters"}),
        ({"title": "t", "taskType": "yearly"}, {"taskType": "must be one of daily, weekly, monthly, ad-hoc"}),
        ({"title": "t", "taskType": "daily", "scheduleId": True}, {"scheduleId": "must be a positive integer or null"}),
        ({"title": "t", "taskType": "daily", "scheduleId": 0}, {"scheduleId": "must be a positive integer or null"}),
        (
            {"title": "t", "taskType": "daily", "scheduleId": 10**15},
            {"scheduleId": "must be a positive integer or null"},
        ),
        ({"title": "t", "taskType": "daily", "scheduleId": 1.0}, {"scheduleId": "must be a positive integer or null"}),
        ({"title": "t", "taskType": "daily", "status": "completed"}, {"status": "unknown field"}),
        ({"taskType": "daily"}, {"title": "is required"}),
    ],
)
def test_task_body_errors_name_the_field_with_the_same_text(body: dict[str, Any], expected: dict[str, str]) -> None:
    """Each bad task field gets the message clients have always seen."""
    assert errors(body, TASK_FIELDS, required=("title", "taskType")) == expected


def test_execute_and_schedule_errors_keep_their_texts() -> None:
    """Execution and schedule fields report the note, cron and enabled texts."""
    assert errors({"resultStatus": "done", "note": "n" * 2001}, EXECUTE_FIELDS, required=("resultStatus",)) == {
        "resultStatus": "must be one of completed, failed, skipped",
        "note": "must be a string of at most 2000 characters",
    }
    bad = {"name": "s", "cron": "0 24 * * *", "taskType": "daily", "enabled": "yes"}
    assert errors(bad, SCHEDULE_FIELDS, required=("name", "cron", "taskType")) == {
        "cron": "must be a cron expression with five fields in range, such as '0 9 * * 1'",
        "enabled": "must be true or false",
    }
    assert errors({"cron": 5}, SCHEDULE_FIELDS, partial=True) == {
        "cron": "must be a cron expression such as '0 9 * * 1'"
    }


def test_partial_body_needs_a_field_and_values_are_stripped() -> None:
    """A PATCH names at least one field; titles, names and crons are stored stripped."""
    assert errors({}, TASK_FIELDS, partial=True) == {"body": "names no field to change"}
    assert validate({"title": "  a  ", "taskType": "daily"}, TASK_FIELDS) == {"title": "a", "taskType": "daily"}
    assert validate({"cron": " */5 * * * mon-fri "}, SCHEDULE_FIELDS, partial=True) == {"cron": "*/5 * * * mon-fri"}
    assert validate({"note": " n "}, EXECUTE_FIELDS) == {"note": " n "}


def test_listing_query_rejects_each_bad_parameter() -> None:
    """`GET /api/tasks` query: status from the schema, limit and cursor as digits."""
    assert validate_listing("failed", "10", "7") == ("failed", 10, 7)
    with pytest.raises(BadMessage) as caught:
        validate_listing("done", "201", "١")
    assert set(caught.value.fields) == {"status", "limit", "after"}


field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 10**16),
    st.text(max_size=12),
    st.sampled_from(
        [
            "daily",
            "ad-hoc",
            " \u00a0",
            "\u200b",
            "\u3164",
            "\u0301",
            "x" * 201,
            "0\u30009 * * 1",
            "n" * 2001,
            "0 9 * * 1",
            "*/5 1-3 * jan sun",
            "61 * * * *",
        ]
    ),
    st.lists(st.integers(), max_size=2),
)


@pytest.mark.parametrize("component", ["NewTask", "Execution", "NewSchedule"])
@given(value=field_values)
@settings(max_examples=150, deadline=None)
def test_field_checks_agree_with_a_json_schema_validator(component: str, value: Any) -> None:
    """Our checks accept exactly what jsonschema accepts under the published schema (formats included)."""
    published = openapi_document()["components"]["schemas"][component]
    format_checker = FormatChecker()
    for name, check in schema.FORMATS.items():
        format_checker.checks(name)(lambda text, check=check: not isinstance(text, str) or check(text))
    for name, field_check in schema.body_fields(component).items():
        validator = Draft202012Validator(published["properties"][name], format_checker=format_checker)
        assert (field_check(value) is None) == validator.is_valid(value), (name, value)


def test_published_schemas_are_valid_json_schema() -> None:
    """Every component and message schema in /api/openapi.json is itself valid JSON Schema 2020-12."""
    for name, component in openapi_document()["components"]["schemas"].items():
        Draft202012Validator.check_schema(component)
        assert '"x-' not in json.dumps(component), name


def test_openapi_keeps_idempotency_key_and_its_answers() -> None:
    """Every change takes an Idempotency-Key and documents 409 and 422; reads do not."""
    paths = openapi_document()["paths"]
    post = paths["/api/tasks"]["post"]
    assert {p["name"] for p in post["parameters"]} == {"Idempotency-Key"}
    assert {"201", "400", "409", "422"} <= set(post["responses"])
    assert "409" not in paths["/api/tasks"]["get"]["responses"]
    assert "status" not in openapi_document()["components"]["schemas"]["TaskChange"]["properties"]


def test_event_types_and_close_codes_have_one_source() -> None:
    """service.core.events, service tail and the schema name the same types and final close codes."""
    assert set(schema.event_types()) == APP_TYPES >= set(schema.APP_EVENT_TYPES)
    assert set(schema.SERVER_CONTROL_TYPES) == CONTROL_TYPES
    assert set(schema.RESERVED_TYPES) == RESERVED_TYPES >= CONTROL_TYPES
    assert set(CloseCode) <= set(schema.CLOSE_POLICY)
    assert FINAL_CODES == {1000, 1009, 4000, 4400, 4401, 4403}


@pytest.mark.parametrize(
    ("message", "accepted"),
    [
        ({"type": "ping"}, True),
        ({"type": "ping", "nonce": "n" * 128}, True),
        ({"type": "ping", "nonce": "n" * 129}, False),
        ({"type": "subscribe", "events": ["task_created", "a.b:c-d"]}, True),
        ({"type": "subscribe", "events": ["Bad"]}, False),
        ({"type": "unsubscribe", "events": ["x"] * 65}, False),
        ({"type": "auth", "token": "t"}, True),
        ({"type": "auth", "token": ""}, False),
    ],
)
def test_client_message_schemas_match_the_parser(message: dict[str, Any], accepted: bool) -> None:
    """What the schema allows a client to send is what service.protocol.wire accepts, and the reverse."""
    by_type = {m.type: m for m in schema.MESSAGES if m.sender == "client"}
    published = openapi_document()["components"]["schemas"][by_type[message["type"]].name]
    assert Draft202012Validator(published).is_valid(message) is accepted
    try:
        parse_client_message(json.dumps(message))
        parsed = True
    except BadMessage:
        parsed = False
    assert parsed is accepted


def test_the_drift_is_gone() -> None:
    """Events carry what handlers send: task_deleted has taskType, no scheduleId/note where never sent."""
    shapes = {m.type: m.schema() for m in schema.MESSAGES}
    assert "taskType" in shapes["task_deleted"]["required"]
    assert "scheduleId" not in shapes["task_created"]["properties"]
    assert "note" not in shapes["task_executed"]["properties"]
    assert "status" not in shapes["task_updated"]["properties"]
    text = (ROOT / "web/src/generated/schema.ts").read_text(encoding="utf-8")
    task_change = text[text.index("export interface TaskChange") :].split("}", 1)[0]
    assert "status" not in task_change and "title?: string;" in task_change


def test_sse_parser_reads_what_the_service_writes() -> None:
    """A block from service.protocol.wire, split anywhere (even inside a UTF-8 character), parses whole."""
    payload = json.dumps({"type": "task_created", "title": "مهمة\nثانية"}, ensure_ascii=False).encode()
    stream = b": hi\n\nretry: 3000\n\n" + sse_block(payload, event="task_created", id="00000001") * 2
    for cut in range(len(stream)):
        parser = SseParser()
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert events == [SseEvent("task_created", "00000001", payload.decode())] * 2, cut


def test_sse_parser_handles_crlf_multiline_data_and_defaults() -> None:
    """CRLF and CR line ends, multi-line data, a missing `event` (message) and data-less blocks."""
    parser = SseParser()
    assert parser.feed(b"data: a\r\ndata:b\r\n\r\nid: 2\r\rdata: c\r\r") == [
        SseEvent("message", None, "a\nb"),
        SseEvent("message", None, "c"),
    ]
    assert parse_block("event: x\nid: 1") is None


LIMITS = sorted(
    name
    for name, value in vars(schema).items()
    if name.isupper() and isinstance(value, int | float | str | tuple) and not isinstance(value, bool)
)


def literal_definitions(name: str) -> list[str]:
    """Modules outside the schema that bind `name` at module level to a value of their own (a
    literal, not an import of the schema's or a value derived from it)."""
    found = []
    for package in ("service", "handlers", "metrics", "realtime_client"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "service" / "core" / "schema" / "__init__.py" or "codegen" in path.parts:
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                    if isinstance(node, ast.AnnAssign)
                    else []
                )
                value = getattr(node, "value", None)
                if any(isinstance(t, ast.Name) and t.id == name for t in targets) and value is not None:
                    if not any(isinstance(n, ast.Name | ast.Attribute) for n in ast.walk(value)):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("name", LIMITS)
def test_each_documented_limit_is_defined_once(name: str) -> None:
    """The limits docs/protocol.md states are defined in the schema only; the enforcing modules import them."""
    assert literal_definitions(name) == []
