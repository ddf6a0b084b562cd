"""Exact bytes of both transports' framing, event encoding and client message parsing."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.clients import parse_sse_block
from service.core.errors import BadMessage
from service.core.events import Event, Position, event_id
from service.protocol.frames import ws_frame
from service.protocol.wire import (
    encode_event,
    http_chunk,
    parse_client_message,
    sse_block,
    sse_comment,
    sse_retry,
)

ARABIC_NAME = "محمد حسن"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


def make_event(**fields: Any) -> Event:
    return Event(
        id=event_id(Position(1_700_000_000, 7)),
        type="task_created",
        ts="2026-11-25T19:00:00.123Z",
        fields=fields,
        audience=None,
        inserted_at=1_700_000_000.0,
    )


def decode_length(frame: bytes) -> tuple[int, int]:
    """The payload length a WebSocket frame header announces, and the header size."""
    marker = frame[1] & 0x7F
    if marker == 126:
        return struct.unpack("!H", frame[2:4])[0], 4
    if marker == 127:
        return struct.unpack("!Q", frame[2:10])[0], 10
    return marker, 2


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_ws_frame_header_bytes_for_each_length_class(length: int, header: bytes) -> None:
    """A final, unmasked text frame uses the 7-bit, 16-bit or 64-bit length form at RFC 6455's bounds."""
    data = b"x" * length
    assert ws_frame(data) == header + data


def test_ws_frame_carries_the_opcode() -> None:
    """A binary opcode is set in the first byte with FIN."""
    assert ws_frame(b"ab", opcode=0x2) == b"\x82\x02ab"


def test_sse_block_writes_id_event_and_data_lines() -> None:
    """A block is `id:`, `event:`, `data:` lines ended by a blank line."""
    block = sse_block(b'{"a":1}', event="task_created", id="0001")
    assert block == b'id: 0001\nevent: task_created\ndata: {"a":1}\n\n'


def test_sse_block_strips_line_breaks_from_id_and_event() -> None:
    """A CR or LF inside `id` or `event` cannot inject another field."""
    block = sse_block(b"{}", event="x\r\ndata: injected", id="1\nretry: 1")
    assert block == b"id: 1retry: 1\nevent: xdata: injected\ndata: {}\n\n"


def test_sse_block_splits_multiline_data_into_data_lines() -> None:
    """LF, CRLF and CR in data each start a new `data:` line."""
    assert sse_block(b"one\ntwo\r\nthree\rfour") == b"data: one\ndata: two\ndata: three\ndata: four\n\n"


def test_sse_comment_and_retry_bytes() -> None:
    """Heartbeat comments and the retry field have their exact wire form."""
    assert sse_comment("heartbeat") == b": heartbeat\n\n"
    assert sse_comment("a\nb") == b": ab\n\n"
    assert sse_retry(3000) == b"retry: 3000\n\n"


def test_http_chunk_frames_data_with_hex_length() -> None:
    """A chunk is the hex length, CRLF, the data, CRLF."""
    assert http_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


def test_encode_event_is_one_utf8_json_without_escapes() -> None:
    """Arabic text is sent as UTF-8 bytes, not `\\u` escapes, identically on both transports."""
    encoded = encode_event(make_event(userId=1, userName=ARABIC_NAME, taskId=5))
    assert ARABIC_NAME.encode("utf-8") in encoded.json
    assert b"\\u" not in encoded.json
    assert json.loads(encoded.json) == {
        "id": "6553f10000000007",
        "type": "task_created",
        "ts": "2026-11-25T19:00:00.123Z",
        "userId": 1,
        "userName": ARABIC_NAME,
        "taskId": 5,
    }
    assert encoded.ws_frame == ws_frame(encoded.json)
    assert encoded.sse == b"id: 6553f10000000007\nevent: task_created\ndata: " + encoded.json + b"\n\n"
    assert encoded.sse_chunk == http_chunk(encoded.sse)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"ping"}', ("ping", None, frozenset(), "")),
        ('{"type":"ping","nonce":"n-1"}', ("ping", "n-1", frozenset(), "")),
        ('{"type":"ping","nonce":2.5}', ("ping", 2.5, frozenset(), "")),
        ('{"type":"ping","nonce":"\\ud83d\\ude00"}', ("ping", "\U0001f600", frozenset(), "")),
        (
            '{"type":"subscribe","events":["task_created","a.b"]}',
            ("subscribe", None, {"task_created", "a.b"}, ""),
        ),
        ('{"type":"unsubscribe","events":[]}', ("unsubscribe", None, frozenset(), "")),
        ('{"type":"auth","token":"abc"}', ("auth", None, frozenset(), "abc")),
    ],
)
def test_parse_client_message_accepts_each_message_type(text: str, expected: tuple[Any, ...]) -> None:
    """ping, subscribe, unsubscribe and auth parse into their fields."""
    message = parse_client_message(text)
    assert (message.type, message.nonce, message.events, message.token) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "bad_message"),
        (b"\xff\xfe{", "bad_message"),
        ("[1, 2]", "bad_message"),
        ('"ping"', "bad_message"),
        ('{"no": "type"}', "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": "ping", "nonce": true}', "bad_message"),
        ('{"type": "ping", "nonce": {"a": 1}}', "bad_message"),
        ('{"type": "ping", "nonce": "' + "n" * 129 + '"}', "bad_message"),
        ('{"type": "ping", "nonce": NaN}', "bad_message"),
        ('{"type": "ping", "nonce": 1e999}', "bad_message"),
        ('{"type": "ping", "nonce": "\\ud800"}', "bad_message"),
        ('{"type": "auth", "token": "\\udfff"}', "bad_message"),
        ('{"type": "subscribe"}', "bad_message"),
        ('{"type": "subscribe", "events": "task_created"}', "bad_message"),
        ('{"type": "subscribe", "events": ["Task Created"]}', "bad_message"),
        ('{"type": "subscribe", "events": [1]}', "bad_message"),
        ('{"type": "subscribe", "events": ' + json.dumps([f"t{i}" for i in range(65)]) + "}", "bad_message"),
        ('{"type": "auth"}', "bad_message"),
        ('{"type": "auth", "token": ""}', "bad_message"),
        ("[" * 50_000, "bad_message"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None,
)
def test_parse_client_message_rejects_bad_shapes_with_code(text: str | bytes, code: str) -> None:
    """Every malformed message raises BadMessage with the code the client receives."""
    with pytest.raises(BadMessage) as info:
        parse_client_message(text)
    assert info.value.code == code
    assert info.value.message


@given(st.text(max_size=200))
def test_parse_client_message_raises_only_bad_message_for_any_text(text: str) -> None:
    """Arbitrary text either parses or raises BadMessage, nothing else."""
    try:
        parse_client_message(text)
    except BadMessage:
        pass


@given(json_values | st.dictionaries(st.sampled_from(["type", "nonce", "events", "token"]), json_values))
def test_parse_client_message_raises_only_bad_message_for_any_json(value: Any) -> None:
    """Arbitrary JSON values (including near-miss messages) either parse or raise BadMessage."""
    try:
        parse_client_message(json.dumps(value))
    except BadMessage:
        pass


@given(st.binary(max_size=300), st.text(max_size=20), st.text(max_size=20))
def test_sse_block_round_trips_data_and_never_has_a_bare_cr(data: bytes, event: str, id: str) -> None:
    """Any data parses back to itself (line breaks normalised to LF) and no CR reaches the stream."""
    block = sse_block(data, event=event, id=id)
    assert b"\r" not in block
    assert block.endswith(b"\n\n")
    lines = block[:-2].split(b"\n")
    assert [line for line in lines if not line.startswith(b"data: ")] == [
        b"id: " + id.replace("\r", "").replace("\n", "").encode(),
        b"event: " + event.replace("\r", "").replace("\n", "").encode(),
    ]
    data_lines = [line.removeprefix(b"data: ") for line in lines if line.startswith(b"data: ")]
    assert b"\n".join(data_lines) == data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


@given(st.text(max_size=200).map(lambda s: s.replace("\r", "")))
def test_sse_block_of_text_parses_back_with_the_test_client(text: str) -> None:
    """The SSE reader the transport tests use recovers exactly the text that was sent."""
    parsed = parse_sse_block(sse_block(text.encode("utf-8"), event="custom")[:-2].decode("utf-8"))
    assert parsed is not None
    assert (parsed.event, parsed.data) == ("custom", text)


@given(st.integers(min_value=0, max_value=70_000))
def test_ws_frame_length_field_decodes_to_data_length(length: int) -> None:
    """Whatever the size, the header announces exactly the payload that follows."""
    frame = ws_frame(b"\x00" * length)
    announced, header = decode_length(frame)
    assert announced == length
    assert len(frame) == header + length
    assert frame[0] == 0x81 and frame[1] & 0x80 == 0
