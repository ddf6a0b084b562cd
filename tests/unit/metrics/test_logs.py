"""metrics.logs without a server: the JSON and text formatters (fields, `extra`, exceptions,
Arabic kept as UTF-8, credentials scrubbed), `configure`, the URI redactor, and the access-log
function (level by status, probes quiet at DEBUG, stream handlers' durations, closed label
sets), driven with real Tornado handlers on a fake HTTP connection."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import responses
from pathlib import PurePosixPath
from typing import Any

import pytest
from tornado import httputil
from tornado.web import Application, RequestHandler

from metrics.logs import (
    REDACTED,
    JsonFormatter,
    RedactedLogging,
    TextFormatter,
    configure,
    redact,
    request_logger,
    request_summary,
    scrub,
)
from metrics.registry import Metrics

CREATED = 1_900_000_000.25  # 2030-03-17T17:46:40.250Z
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


def record(
    message: str = "hello %s",
    args: tuple[Any, ...] = ("world",),
    level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    made = logging.getLogger("service.test").makeRecord(
        "service.test", level, __file__, 1, message, args, exc_info, extra=extra
    )
    made.created, made.msecs = CREATED, 250.0
    return made


# -- JSON ------------------------------------------------------------------------------------


def test_json_has_time_level_logger_message_and_the_extra_fields() -> None:
    line = JsonFormatter().format(record(extra={"user_id": 7, "transport": "sse"}))
    assert json.loads(line) == {
        "time": "2030-03-17T17:46:40.250Z",
        "level": "INFO",
        "logger": "service.test",
        "message": "hello world",
        "user_id": 7,
        "transport": "sse",
    }
    assert "\n" not in line


def test_json_keeps_arabic_as_utf8() -> None:
    """`ensure_ascii=False`: the line shows the text, not `\\u0645...` escapes."""
    line = JsonFormatter().format(record("تم الحفظ: %s", ("مهمة ١",), extra={"userName": "محمد حسن"}))
    assert "تم الحفظ: مهمة ١" in line and '"userName": "محمد حسن"' in line
    assert "\\u" not in line
    line.encode("utf-8")  # a valid UTF-8 line
    assert json.loads(line)["userName"] == "محمد حسن"


def test_json_writes_values_it_cannot_encode_as_text_and_adds_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record(extra={"where": PurePosixPath("/data/db")}, exc_info=exc_info)))
    assert entry["where"] == "/data/db"
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]


def test_json_private_extras_are_left_out() -> None:
    entry = json.loads(JsonFormatter().format(record(extra={"_internal": 1, "kept": 2})))
    assert "_internal" not in entry and entry["kept"] == 2


def test_json_scrubs_credentials_anywhere_in_the_line() -> None:
    line = JsonFormatter().format(record("auth with %s", (JWT,), extra={"uri": "/ws?ticket=abc123"}))
    assert JWT not in line and "abc123" not in line
    assert json.loads(line)["message"] == f"auth with {REDACTED}"


# -- text ------------------------------------------------------------------------------------


def test_text_is_time_level_logger_message_then_the_extras() -> None:
    made = record(level=logging.WARNING, extra={"user_id": 7, "reason": "سبب"})
    line = TextFormatter().format(made)
    stamp = logging.Formatter().formatTime(made)  # `asctime`: local time, with milliseconds
    assert line == f"{stamp} WARNING service.test: hello world user_id=7 reason=سبب"


def test_text_pads_the_level_and_has_no_trailing_space_without_extras() -> None:
    line = TextFormatter().format(record())
    assert line.endswith(" INFO    service.test: hello world")


def test_text_scrubs_a_bearer_credential() -> None:
    line = TextFormatter().format(record("header %s", ("Authorization: Bearer s3cr3t-value",)))
    assert "s3cr3t-value" not in line and f"Bearer {REDACTED}" in line


# -- configure -------------------------------------------------------------------------------


@contextmanager
def root_restored() -> Iterator[logging.Logger]:
    """`configure` replaces the root logger's handlers: put back what was there."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access, pymongo = logging.getLogger("tornado.access"), logging.getLogger("pymongo")
    disabled, pymongo_level = access.disabled, pymongo.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        access.disabled = disabled
        pymongo.setLevel(pymongo_level)


@pytest.mark.parametrize(
    ("fmt", "formatter", "level", "pymongo_level"),
    [
        ("json", JsonFormatter, "DEBUG", logging.WARNING),
        ("text", TextFormatter, "ERROR", logging.ERROR),
    ],
)
def test_configure_sends_everything_to_stderr_in_the_chosen_format(
    fmt: str, formatter: type[logging.Formatter], level: str, pymongo_level: int
) -> None:
    """One stderr handler; Tornado's own access log off; pymongo never chattier than WARNING."""
    with root_restored() as root:
        configure(level, fmt)
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
        assert type(handler.formatter) is formatter
        assert root.level == logging.getLevelName(level)
        assert logging.getLogger("tornado.access").disabled
        assert logging.getLogger("pymongo").level == pymongo_level


# -- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/ws?token=abc", f"/ws?token={REDACTED}"),
        ("/events?a=1&ticket=t1&b=2", f"/events?a=1&ticket={REDACTED}&b=2"),
        ("/x?%74oken=abc", f"/x?%74oken={REDACTED}"),
        ("/x?a#&token=abc", f"/x?a#&token={REDACTED}"),
        ("/x?token=a&token=b", f"/x?token={REDACTED}&token={REDACTED}"),
        ("/x?access_token=a;b=1", f"/x?access_token={REDACTED};b=1"),
        ("/api/tasks?limit=5", "/api/tasks?limit=5"),
        ("/token=abc", "/token=abc"),  # no query: the path is not read as pairs
    ],
)
def test_redact_replaces_token_and_ticket_values(uri: str, expected: str) -> None:
    assert redact(uri) == expected


def test_scrub_hides_a_jwt_and_named_secrets_in_free_text() -> None:
    assert (
        scrub(f"saw {JWT} and token%3Dxyz and ticket=abc;")
        == f"saw {REDACTED} and token%3D{REDACTED} and ticket={REDACTED};"
    )


# -- the access log --------------------------------------------------------------------------


class FakeConnection(httputil.HTTPConnection):
    """What a RequestHandler needs of its HTTP connection: a close callback, a context."""

    def __init__(self) -> None:
        self.context = None

    def set_close_callback(self, callback: Any) -> None:
        pass


class Api(RequestHandler):
    pass


class Probe(RequestHandler):
    pass


class Stream(RequestHandler):
    pass


class Redacting(RedactedLogging):
    pass


def handler(
    kind: type[RequestHandler], status: int, uri: str = "/api/tasks", method: str = "GET", seconds: float = 0.0125
) -> RequestHandler:
    start_line = httputil.RequestStartLine(method, uri, "HTTP/1.1")
    headers = httputil.HTTPHeaders({"Host": "service.example"})
    request = httputil.HTTPServerRequest(start_line=start_line, headers=headers, connection=FakeConnection())
    request.remote_ip = "203.0.113.9"
    setattr(request, "_finish_time", request._start_time + seconds)  # noqa: B010 (`request_time()` is fixed)
    made = kind(Application(), request)
    made.set_status(status, "Whatever" if status not in responses else None)
    return made


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="service.access")
    return caplog


def duration_count(metrics: Metrics, handler: str, method: str, code: str) -> float:
    return metrics.sample("realtime_http_request_duration_seconds_count", handler=handler, method=method, code=code)


@pytest.mark.parametrize(
    ("kind", "status", "level"),
    [
        (Api, 200, logging.INFO),
        (Api, 404, logging.WARNING),
        (Api, 503, logging.ERROR),
        (Probe, 200, logging.DEBUG),  # probes and scrapes: quiet while they succeed
        (Probe, 404, logging.WARNING),
        (Probe, 503, logging.ERROR),  # a failing probe is not quiet
    ],
)
def test_the_access_line_level_follows_status_and_quiet_routes(
    access: pytest.LogCaptureFixture, kind: type[RequestHandler], status: int, level: int
) -> None:
    log_request = request_logger(Metrics(), [Api, Probe], quiet=[Probe])
    log_request(handler(kind, status))
    [line] = access.records
    assert line.name == "service.access" and line.levelno == level


def test_the_access_line_shows_status_method_redacted_uri_duration_and_remote(
    access: pytest.LogCaptureFixture,
) -> None:
    request_logger(Metrics(), [Api])(handler(Api, 201, uri="/api/tasks?token=abc&limit=5", method="POST"))
    [line] = access.records
    assert line.getMessage() == f"201 POST /api/tasks?token={REDACTED}&limit=5 12.5ms"
    assert line.__dict__["remote"] == "203.0.113.9"


def test_no_access_line_is_built_below_the_loggers_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.access")
    metrics = Metrics()
    request_logger(metrics, [Api])(handler(Api, 200))
    assert caplog.records == []
    assert duration_count(metrics, "Api", "GET", "200") == 1  # the metric is observed all the same


def test_stream_durations_are_observed_only_for_rejections(access: pytest.LogCaptureFixture) -> None:
    """An accepted stream's "request time" is its whole life: not an HTTP duration."""
    metrics = Metrics()
    log_request = request_logger(metrics, [Stream], streams=[Stream])
    log_request(handler(Stream, 200))
    log_request(handler(Stream, 401))
    assert duration_count(metrics, "Stream", "GET", "200") == 0
    assert duration_count(metrics, "Stream", "GET", "401") == 1
    assert len(access.records) == 2  # both are logged


def test_labels_outside_the_closed_sets_are_other(access: pytest.LogCaptureFixture) -> None:
    """Unknown handler class, unknown method, unknown status: `other`, never the client's value."""
    metrics = Metrics()
    request_logger(metrics, [Api])(handler(Probe, 299, method="BREWCOFFEEFORTHEWHOLEOFFICE"))
    assert duration_count(metrics, "other", "other", "other") == 1
    [line] = access.records
    assert line.getMessage().startswith("299 BREWCOFFEEFORTHE /api/tasks ")  # the method cut at 16


def test_request_summary_and_tornado_error_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    made = handler(Redacting, 500, uri="/ws?ticket=abc")
    assert request_summary(made) == f"GET /ws?ticket={REDACTED} (203.0.113.9)"
    assert made._request_summary() == request_summary(made)
    with caplog.at_level(logging.INFO, logger="metrics.logs"):
        try:
            raise RuntimeError("bad")
        except RuntimeError:
            made.log_exception(*sys.exc_info())
    [line] = caplog.records
    assert line.levelno == logging.ERROR and "abc" not in line.getMessage()
    assert line.getMessage() == f"uncaught exception GET /ws?ticket={REDACTED} (203.0.113.9)"
