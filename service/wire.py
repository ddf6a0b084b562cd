"""Pure encoders and parsers for both transports; no sockets here.

An event is encoded once into ready-to-send bytes for every transport (`Encoded`), and
those same bytes go to every client: server-to-client WebSocket frames are unmasked, so
the frame is identical for all of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from service.errors import BadMessage
from service.events import TYPE_PATTERN, Event, Payload
from service.transports.frames import ws_frame

MAX_NONCE_LENGTH = 128
MAX_SUBSCRIPTIONS = 64


def dumps(payload: Payload) -> bytes:
    """Compact UTF-8 JSON (Arabic stays as UTF-8, not `\\u` escapes)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def loads(data: str | bytes) -> Any:
    """Strict JSON from a client: only what can be stored and sent on as JSON again.

    Raises:
        ValueError: not JSON (or not UTF-8), NaN or Infinity, a lone surrogate, or nested
            too deeply to parse.
    """
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
        escaped = "\\u" in data if isinstance(data, str) else b"\\u" in data
        if escaped:
            # `\ud800` escapes can decode to lone surrogates, which cannot be stored or sent as UTF-8.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return value


def _field(value: str) -> str:
    # A newline inside `id:` or `event:` would end the field and inject another one.
    return value.replace("\r", "").replace("\n", "")


def sse_block(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """One Server-Sent Events block; multi-line data is split into several `data:` lines."""
    lines = []
    if id is not None:
        lines.append(b"id: " + _field(id).encode("utf-8"))
    if event is not None:
        lines.append(b"event: " + _field(event).encode("utf-8"))
    for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        lines.append(b"data: " + line)
    return b"\n".join(lines) + b"\n\n"


def sse_comment(text: str) -> bytes:
    """An SSE comment line, ignored by EventSource; used as heartbeat."""
    return b": " + _field(text).encode("utf-8") + b"\n\n"


def sse_retry(milliseconds: int) -> bytes:
    """The `retry:` field that sets EventSource's reconnection delay."""
    return b"retry: %d\n\n" % milliseconds


def http_chunk(data: bytes) -> bytes:
    """`data` framed as one HTTP/1.1 chunk (for streams written past Tornado's framing)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


@dataclass(frozen=True, slots=True)
class Encoded:
    """An event and its bytes, ready for each transport; built once per event."""

    event: Event
    json: bytes
    ws_frame: bytes
    sse: bytes
    sse_chunk: bytes


def encode_event(event: Event) -> Encoded:
    """Encode an event for both transports."""
    data = dumps(event.payload())
    sse = sse_block(data, event=event.type, id=event.id)
    return Encoded(event=event, json=data, ws_frame=ws_frame(data), sse=sse, sse_chunk=http_chunk(sse))


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A parsed WebSocket client message."""

    type: str
    nonce: str | int | float | None = None
    events: frozenset[str] = frozenset()
    token: str = ""


def parse_event_list(raw: object, *, field: str = "events") -> frozenset[str]:
    """Validate a list of event types (subscriptions and `events=` filters).

    Raises:
        BadMessage: when it is not a list of well-formed types.
    """
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part]
    if not isinstance(raw, list) or len(raw) > MAX_SUBSCRIPTIONS:
        raise BadMessage(f"{field} must be a list of event types", {field: "invalid"})
    for item in raw:
        if not isinstance(item, str) or not TYPE_PATTERN.fullmatch(item):
            raise BadMessage(f"{field} must be a list of event types", {field: f"invalid type {item!r}"})
    return frozenset(raw)


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse one WebSocket message from a client.

    Raises:
        BadMessage: with code `bad_message` (not JSON, wrong shape or field types) or
            `unknown_type`.
    """
    try:
        message: Any = loads(text)
    except ValueError:
        raise BadMessage("message is not valid JSON") from None
    if not isinstance(message, dict):
        raise BadMessage("message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise BadMessage("message needs a string 'type'")
    if kind == "ping":
        nonce = message.get("nonce")
        if nonce is not None and (
            isinstance(nonce, bool)
            or not isinstance(nonce, str | int | float)
            or (isinstance(nonce, str) and len(nonce) > MAX_NONCE_LENGTH)
        ):
            raise BadMessage("nonce must be a string (at most 128 characters) or a number")
        return ClientMessage(type="ping", nonce=nonce)
    if kind in ("subscribe", "unsubscribe"):
        events = message.get("events")
        if not isinstance(events, list):
            raise BadMessage(f"{kind} needs a list of event types in 'events'")
        return ClientMessage(type=kind, events=parse_event_list(events))
    if kind == "auth":
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise BadMessage("auth needs a string 'token'")
        return ClientMessage(type="auth", token=token)
    raise BadMessage(f"unknown message type {kind[:64]!r}", code="unknown_type")
