"""Pure encoders and parsers for both transports; no sockets here.

An event is encoded once into ready-to-send bytes for every transport (`Encoded`), and
those same bytes go to every client: server-to-client WebSocket frames are unmasked, so
the frame is identical for all of them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from service.core.errors import BadMessage
from service.core.events import TYPE_PATTERN, Event, Payload
from service.core.schema import MAX_NONCE_LENGTH, MAX_SUBSCRIPTIONS
from service.protocol.frames import ws_frame


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


_SURROGATE = re.compile("[\ud800-\udfff]")
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16 LE/BE; UTF-32 LE starts with the first, BE has NULs
UTF8_BOM = b"\xef\xbb\xbf"


def utf8_text(data: bytes) -> str:
    """A client's JSON bytes as text: UTF-8 only (RFC 8259 8.1), one leading UTF-8 BOM ignored.

    Encoded surrogates (CESU-8 / WTF-8 `ED A0 80`) are let through here as lone surrogates, so
    that `loads` can name the field that holds them.

    Raises:
        BadMessage: UTF-16 or UTF-32 (with or without a BOM), or bytes that are not UTF-8.
    """
    if data.startswith(_WIDE_BOMS) or b"\x00" in data[:4]:
        # JSON starts with two ASCII characters: NULs among the first four bytes are UTF-16/32.
        raise BadMessage("JSON must be UTF-8", {"body": "is UTF-16 or UTF-32; send UTF-8"})
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise BadMessage(
            "JSON must be UTF-8", {"body": f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8"}
        ) from None


def _where(path: str, key: object) -> str:
    # A name that itself holds a surrogate is shown escaped: the answer must be UTF-8 too.
    name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{name}" if path else name


def surrogate_in(value: Any) -> tuple[str, str] | None:
    """The first place, in document order, where a parsed JSON value holds a surrogate code
    point in a string or a name, and which: `("to.users[0]", "U+D800")`, or None. Such text
    (a lone `\\ud800` escape, or CESU-8 bytes) cannot be stored or sent on as UTF-8."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return path or "body", f"U+{ord(found.group()):04X}"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if _SURROGATE.search(key):
                    children.append((_where(path, key), key))  # the name itself is checked as a string
                children.append((_where(path, key), child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(_where(path, index), child) for index, child in enumerate(item)]))
    return None


def loads(data: str | bytes) -> Any:
    """Strict JSON from a client: only what can be stored and sent on as JSON again.

    Raises:
        BadMessage: bytes that are not UTF-8 (`utf8_text`), or a lone surrogate, raw or as a
            `\\ud800` escape (the field is named in `fields`).
        ValueError: not JSON, NaN or Infinity, or nested too deeply to parse.
    """
    text = utf8_text(data) if isinstance(data, bytes) else data
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if "\\u" in text or _SURROGATE.search(text):
        found = surrogate_in(value)
        if found is not None:
            where, code_point = found
            problem = f"holds a lone surrogate ({code_point}), which UTF-8 text cannot carry"
            raise BadMessage(f"{where} {problem}", {where: problem})
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
