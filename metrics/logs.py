"""Logging: text for people, one JSON object per line for machines; an access log that
never shows a token or ticket, on any path (access lines, Tornado's error lines, tracebacks).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from http.client import responses
from types import TracebackType
from typing import Any
from urllib.parse import unquote_plus

from tornado.web import HTTPError, RequestHandler

from metrics.registry import Metrics

SECRET_NAMES = frozenset({"token", "ticket", "access_token"})
# Attributes a `logging.LogRecord` always has; anything else came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
access_log = logging.getLogger("service.access")
log = logging.getLogger(__name__)
# The `method` label: anything else a client sends is `other` (closed label sets: README "Metrics").
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
MAX_LOGGED_METHOD = 16  # a method is any token a client likes; the log shows its start

# Where a query pair may begin for some parser: Tornado splits on `&` only and reads past
# `#`, others split on `;`. Redacting after each of them can only hide more, never less.
_PAIR_SEPARATORS = re.compile(r"([&;#])")
# Last line of defence, applied to every formatted log line: a JWT anywhere, a Bearer
# credential, or `token=`/`ticket=` in text that never went through `redact`.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;]+")
_NAMED_SECRET = re.compile(r"(?i)((?:access_token|token|ticket)(?:=|%3d))[^&;#\s'\"\\]+")
REDACTED = "[redacted]"


def redact(uri: str) -> str:
    """The URI with token and ticket query values replaced.

    Read as Tornado reads it: the query is everything after the first `?`, fragment
    included (`?a#&token=` is a token), and names are compared decoded (`%74oken=`).
    Every occurrence is replaced, so repeated parameters are too.
    """
    path, mark, query = uri.partition("?")
    if not mark:
        return uri
    parts = _PAIR_SEPARATORS.split(query)
    for index in range(0, len(parts), 2):  # even indexes are pairs, odd ones separators
        name, equals, _ = parts[index].partition("=")
        if equals and unquote_plus(name, encoding="latin-1").strip().lower() in SECRET_NAMES:
            parts[index] = f"{name}={REDACTED}"
    return f"{path}?{''.join(parts)}"


def scrub(text: str) -> str:
    """Hide anything credential-shaped in an already formatted log line."""
    text = _JWT.sub(REDACTED, text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return _NAMED_SECRET.sub(rf"\g<1>{REDACTED}", text)


def request_summary(handler: RequestHandler) -> str:
    """`METHOD /redacted-uri (remote)`, the form Tornado's own error lines use."""
    request = handler.request
    method = (request.method or "")[:MAX_LOGGED_METHOD]
    return f"{method} {redact(request.uri or '')} ({request.remote_ip})"


class RedactedLogging(RequestHandler):
    """Mixin for every handler: Tornado's error lines print the raw URI (token and all) and,
    for a 500, the whole request with its headers; these print the redacted URI only."""

    def _request_summary(self) -> str:
        return request_summary(self)

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(value, HTTPError):
            level = logging.INFO if value.status_code < 500 else logging.WARNING
            log.log(level, "%d %s: %s", value.status_code, request_summary(self), value.get_message() or "")
        else:
            log.error("uncaught exception %s", request_summary(self), exc_info=(typ, value, tb))  # type: ignore[arg-type]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")]
        return scrub(f"{line} {' '.join(extras)}" if extras else line)


def configure(level: str, fmt: str) -> None:
    """Send every log record to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("tornado.access").disabled = True  # replaced by log_request
    logging.getLogger("pymongo").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def request_logger(
    metrics: Metrics,
    handlers: Iterable[type[RequestHandler]],
    *,
    streams: Iterable[type[RequestHandler]] = (),
    quiet: Iterable[type[RequestHandler]] = (),
) -> Any:
    """The Tornado `log_function`: access log line and the HTTP duration metric.

    Args:
        metrics: holds the duration histogram.
        handlers: the handler classes of the route table: their names are the `handler` label's
            values (anything else, such as Tornado's own error handler, is `other`).
        streams: handlers whose accepted requests become streams: their "request time" is their
            whole life, which the connection metrics cover; only their rejections are observed.
        quiet: probes and scrapes, every few seconds: their successes log at DEBUG.
    """
    known_handlers = frozenset(handlers)
    stream_handlers = frozenset(streams)
    quiet_handlers = frozenset(quiet)

    def log_request(handler: RequestHandler) -> None:
        status = handler.get_status()
        request = handler.request
        seconds = request.request_time()
        kind = type(handler)
        if status >= 400 or kind not in stream_handlers:
            metrics.http_duration.labels(
                kind.__name__ if kind in known_handlers else OTHER,
                request.method if request.method in HTTP_METHODS else OTHER,
                str(status) if status in responses else OTHER,
            ).observe(seconds)
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        if status < 400 and kind in quiet_handlers:
            level = logging.DEBUG  # probes and scrapes every few seconds would drown the log
        if not access_log.isEnabledFor(level):
            return  # every connect comes through here: build no line nobody will read
        access_log.log(
            level,
            "%d %s %s %.1fms",
            status,
            (request.method or "")[:MAX_LOGGED_METHOD],
            redact(request.uri or ""),
            seconds * 1000,
            extra={"remote": request.remote_ip},
        )

    return log_request
