"""Property-based tests: whatever JSON a client sends, the REST API answers 2xx or 4xx, never 5xx."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.processes import SECRET, ServiceProcess, as_service
from service.app.validation import EXECUTE_FIELDS, SCHEDULE_FIELDS, TASK_FIELDS, Check, validate
from service.core.errors import BadMessage

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = ["title", "taskType", "scheduleId", "resultStatus", "note", "name", "cron", "enabled", "type", "to",
               "users", "roles", "id", "ts"]  # fmt: skip
bodies = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), json_values, max_size=6)
plausible = st.fixed_dictionaries(
    {},
    optional={
        "title": st.text(max_size=210) | json_values,
        "taskType": st.sampled_from(["daily", "weekly", "monthly", "ad-hoc", "yearly", ""]) | json_values,
        "scheduleId": st.integers(-2, 10**16) | json_values,
        "type": st.from_regex(r"[a-z][a-z0-9_.:-]{0,70}", fullmatch=True) | json_values,
        "to": st.fixed_dictionaries({}, optional={"users": json_values, "roles": json_values}) | json_values,
    },
)


@pytest.mark.parametrize("fields", [TASK_FIELDS, EXECUTE_FIELDS, SCHEDULE_FIELDS], ids=["task", "execute", "schedule"])
@given(body=bodies)
@settings(max_examples=300, deadline=None)
def test_validation_only_ever_raises_bad_message(fields: dict[str, Check], body: dict[str, Any]) -> None:
    """The body validators accept or raise BadMessage with field errors, nothing else."""
    try:
        validate(body, fields, required=tuple(fields)[:1])
    except BadMessage as exc:
        assert exc.fields and all(isinstance(v, str) for v in exc.fields.values())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    process = ServiceProcess(
        Path(tmp_path_factory.mktemp("props")), {"JWT_SECRET": SECRET, "DEV_MODE": "0", "LOG_LEVEL": "ERROR"}
    ).start()
    try:
        yield process.url, as_service(process).token(sub=1, roles=("user", "publisher"))
    finally:
        process.stop()


def post(url: str, token: str, payload: bytes) -> tuple[int, object]:
    request = urllib.request.Request(url, data=payload, method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


@pytest.mark.parametrize("path", ["/api/tasks", "/api/schedules", "/api/events", "/api/tasks/1/execute"])
@given(body=plausible | bodies)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rest_answers_any_json_body_without_server_error(api: tuple[str, str], path: str, body: object) -> None:
    """Random JSON bodies get 2xx or a JSON 4xx (with `fields` on 400), never a 5xx."""
    url, token = api
    status, answer = post(url + path, token, json.dumps(body).encode())
    assert status < 500, answer
    if status == 400:
        assert isinstance(answer, dict) and answer["error"] == "invalid" and isinstance(answer["fields"], dict)


@given(raw=st.binary(max_size=200))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rest_answers_arbitrary_bytes_with_400(api: tuple[str, str], raw: bytes) -> None:
    """Bodies that are not JSON objects are a 400, not a crash."""
    url, token = api
    status, _ = post(url + "/api/tasks", token, raw)
    assert status in (201, 400)
