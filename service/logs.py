"""Logging: text for people, one JSON object per line for machines; an access log that
never shows a token or ticket.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any
from urllib.parse import unquote_plus

from tornado.web import RequestHandler

from metrics.registry import Metrics

SECRET_NAMES = frozenset({"token", "ticket", "access_token"})
# Attributes a `logging.LogRecord` always has; anything else came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
access_log = logging.getLogger("service.access")
STREAM_HANDLERS = frozenset({"WebSocketEndpoint", "EventStreamEndpoint"})


def redact(uri: str) -> str:
    """The URI with token and ticket query values replaced.

    Names are compared decoded, as Tornado reads them: `?%74oken=` is a token too.
    """
    path, mark, query = uri.partition("?")
    if not mark:
        return uri
    query, hash_mark, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        if equals and unquote_plus(name).strip().lower() in SECRET_NAMES:
            pair = f"{name}=[redacted]"
        pairs.append(pair)
    return f"{path}?{'&'.join(pairs)}{hash_mark}{fragment}"


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
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")]
        return f"{line} {' '.join(extras)}" if extras else line


def configure(level: str, fmt: str) -> None:
    """Send every log record to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("tornado.access").disabled = True  # replaced by log_request
    logging.getLogger("pymongo").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def request_logger(metrics: Metrics) -> Any:
    """The Tornado `log_function`: access log line and the HTTP duration metric."""

    def log_request(handler: RequestHandler) -> None:
        status = handler.get_status()
        request = handler.request
        seconds = request.request_time()
        name = type(handler).__name__
        if status >= 400 or name not in STREAM_HANDLERS:
            # An accepted stream's "request time" is its whole life: the connection metrics
            # cover it; only its rejections are HTTP latencies.
            metrics.http_duration.labels(name, request.method or "", str(status)).observe(seconds)
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        if status < 400 and name in ("LivenessHandler", "ReadinessHandler", "MetricsHandler"):
            level = logging.DEBUG  # probes and scrapes every few seconds would drown the log
        access_log.log(
            level,
            "%d %s %s %.1fms",
            status,
            request.method,
            redact(request.uri or ""),
            seconds * 1000,
            extra={"remote": request.remote_ip},
        )

    return log_request
