"""The service's own WebSocket protocol: the frame parser (pure) and the wire behaviour a
browser library would never exercise (unmasked frames, fragments, bad UTF-8, frames in the
handshake's packet, close handshakes, permessage-deflate), on real sockets.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import time
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.sse_endpoint import EventStreamEndpoint
from handlers.ws_endpoint import WebSocketEndpoint
from harness.clients import RawWebSocket, Service, eventually
from service.core.events import Event
from service.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Deflate,
    FrameParser,
    ProtocolError,
    accept_key,
    close_frame,
    negotiate_deflate,
    parse_close,
)
from service.protocol.wire import encode_event
from service.transports.ws import WebSocketSession
from tests.conftest import StartService

frame = RawWebSocket.frame


def _frame_ids(value: object) -> str | None:
    """Test ids without the frame bytes: their masks are random, and pytest-xdist's workers
    must collect the same ids."""
    return "frame" if isinstance(value, bytes) else None


def parse_all(data: bytes, max_size: int = 1024, *, deflate: bool = False) -> list[tuple[int, bytes]]:
    return list(FrameParser(max_size, deflate=deflate).feed(data))


def protocol_error(data: bytes, max_size: int = 1024, *, deflate: bool = False) -> tuple[int, str]:
    with pytest.raises(ProtocolError) as caught:
        parse_all(data, max_size, deflate=deflate)
    return caught.value.code, caught.value.reason


# -- pure ---------------------------------------------------------------------------------


def test_accept_key_matches_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_parser_unmasks_and_reassembles_fragments_around_a_ping() -> None:
    """A ping between fragments is delivered at once; the message after its last fragment."""
    data = frame("سلام ".encode(), fin=False) + frame(b"ping", OP_PING) + frame(b"world", 0x0)
    assert parse_all(data) == [(OP_PING, b"ping"), (OP_TEXT, "سلام world".encode())]


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.data())
def test_parser_gives_the_same_messages_however_the_bytes_are_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p, OP_BINARY) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = FrameParser(1024)
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += list(parser.feed(stream[start:end]))
    assert got == [(OP_BINARY, p) for p in payloads]


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (frame(b"{}", masked=False), 1002, "client frames must be masked"),
        (frame(b"{}", rsv=0x40), 1002, "reserved bits set without an extension"),
        (frame(b"{}", rsv=0x20), 1002, "reserved bits set without an extension"),
        (frame(b"x" * 126, OP_PING), 1002, "control frames must be final and at most 125 bytes"),
        (frame(b"x", OP_PING, fin=False), 1002, "control frames must be final and at most 125 bytes"),
        (frame(b"x", 0x3), 1002, "unknown opcode 3"),
        (frame(b"x", 0xB), 1002, "unknown opcode 11"),
        (frame(b"x", 0x0), 1002, "continuation frame without a message"),
        (frame(b"a", fin=False) + frame(b"b"), 1002, "new message inside a fragmented one"),
        (frame(b"\xff\xfe"), 1007, "text message is not UTF-8"),
        (frame("ع".encode()[:1]), 1007, "text message is not UTF-8"),
    ],
    ids=_frame_ids,
)
def test_parser_refuses_what_rfc_6455_forbids(data: bytes, code: int, reason: str) -> None:
    assert protocol_error(data) == (code, reason)


@given(st.text(max_size=200), st.data())
def test_parser_accepts_valid_utf_8_text_however_it_is_split(text: str, data: st.DataObject) -> None:
    """Checking text piece by piece never refuses a character cut between reads or fragments."""
    encoded = text.encode()
    middle = data.draw(st.integers(0, len(encoded)))
    stream = frame(encoded[:middle], fin=False) + frame(encoded[middle:], 0x0)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser = FrameParser(1024)
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += list(parser.feed(stream[start:end]))
    assert got == [(OP_TEXT, encoded)]


@pytest.mark.parametrize("fragmented", [True, False], ids=["first-fragment", "first-read-of-a-frame"])
def test_invalid_utf_8_fails_at_the_first_bad_byte(fragmented: bool) -> None:
    """Autobahn 6.4.x: the bad byte is refused (1007) before the rest of the message arrives."""
    bad = "κόσμε".encode() + b"\xf4\x90\x80\x80"  # beyond U+10FFFF
    parser = FrameParser(1024)
    if fragmented:
        first = frame(bad, fin=False)
    else:
        first = frame(bad + b"-and-the-rest")[: 6 + len(bad)]  # header, mask, the bad part only
    with pytest.raises(ProtocolError) as caught:
        list(parser.feed(first))
    assert (caught.value.code, caught.value.reason) == (1007, "text message is not UTF-8")


def test_parser_refuses_an_oversized_message_from_its_header_alone() -> None:
    """The declared length is enough: the parser never buffers a frame it will refuse."""
    header = bytes([0x81, 0xFF]) + struct.pack("!Q", 10**12) + os.urandom(4)
    assert protocol_error(header) == (1009, "message too big")
    fragments = frame(b"x" * 600, fin=False) + frame(b"x" * 600, 0x0)
    assert protocol_error(fragments) == (1009, "message too big")


def test_parser_inflates_compressed_messages_and_stops_bombs() -> None:
    def deflated(data: bytes) -> bytes:
        out = Deflate().compress(data)
        return frame(out, rsv=0x40)

    assert parse_all(deflated(b'{"type":"ping"}'), deflate=True) == [(OP_TEXT, b'{"type":"ping"}')]
    assert protocol_error(deflated(b" " * 100_000), deflate=True) == (1009, "message too big")
    assert protocol_error(frame(b"\xff\xff\xff", rsv=0x40), deflate=True) == (
        1007,
        "compressed message does not inflate",
    )
    # RSV1 belongs on a message's first frame only (RFC 7692 §6.1).
    continued = frame(b"a", fin=False, rsv=0x40) + frame(b"b", 0x0, rsv=0x40)
    assert protocol_error(continued, deflate=True) == (1002, "reserved bits set without an extension")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (1005, "")),
        (struct.pack("!H", 1000), (1000, "")),
        (struct.pack("!H", 4000) + "وداعا".encode(), (4000, "وداعا")),
    ],
)
def test_close_payloads_parse(payload: bytes, expected: tuple[int, str]) -> None:
    assert parse_close(payload) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\x03", 1002), (struct.pack("!H", 1005), 1002), (struct.pack("!H", 2999), 1002), (b"\x03\xe8\xff", 1007)],
)
def test_bad_close_payloads_are_protocol_errors(payload: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_close(payload)
    assert caught.value.code == code


def test_close_frame_cuts_a_long_arabic_reason_on_a_character_boundary() -> None:
    data = close_frame(4401, "انتهت صلاحية الرمز " * 20)
    assert len(data) <= 127 and data[1] <= 125
    code, reason = parse_close(data[2:])
    assert code == 4401 and reason and "انتهت صلاحية الرمز ".startswith(reason[:19])


PLAIN = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


@pytest.mark.parametrize(
    ("offer", "response"),
    [
        (None, None),
        ("x-webkit-deflate-frame", None),
        ("permessage-deflate", PLAIN),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            "permessage-deflate; server_max_window_bits=12",
            PLAIN + "; server_max_window_bits=12",
        ),
        ("permessage-deflate; server_max_window_bits=8", None),
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        ("permessage-deflate; unknown=1", None),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ],
)
def test_deflate_negotiation(offer: str | None, response: str | None) -> None:
    negotiated = negotiate_deflate(offer)
    assert (negotiated.response() if negotiated else None) == response


def test_compression_with_a_small_window_inflates_with_a_small_window() -> None:
    data = json.dumps({"type": "task_created", "name": "مهمة " * 500}).encode()
    compressed = Deflate(window_bits=9).compress(data)
    assert zlib.decompressobj(-9).decompress(compressed + b"\x00\x00\xff\xff") == data


# -- on real sockets ----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Upgrade": "h2c"}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Sec-WebSocket-Key": "short"}, 400),
    ],
)
async def test_bad_upgrade_requests_get_http_errors(service: Service, headers: dict[str, str], status: int) -> None:
    ws = await RawWebSocket.connect(service.port, f"/ws?token={service.token()}", headers=headers)
    assert ws.head.startswith(f"HTTP/1.1 {status} ".encode())
    if status == 426:
        assert b"\r\nsec-websocket-version: 13\r\n" in ws.head.lower()
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_frames_in_the_handshake_packet_are_read_after_connected(service: Service) -> None:
    """Bytes Tornado read past the request head are handed over, not lost."""
    ping = frame(json.dumps({"type": "ping", "nonce": "early"}).encode())
    ws = await RawWebSocket.connect(service.port, f"/ws?token={service.token()}", first_frames=ping)
    assert ws.head.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in ws.head
    assert (await ws.recv_json())["type"] == "connected"
    assert (await ws.recv_json())["nonce"] == "early"
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_protocol_pings_fragments_and_binary_messages(service: Service) -> None:
    ws = await RawWebSocket.connect(service.port, f"/ws?token={service.token()}")
    assert (await ws.recv_json())["type"] == "connected"
    ws.send(frame(b"are you there", OP_PING))
    assert await ws.recv_frame() == (OP_PONG, b"are you there")
    ws.send(frame(b'{"type":"pi', fin=False) + frame(b"", OP_PING) + frame(b'ng","nonce":"\xd9\x86"}', 0x0))
    assert await ws.recv_frame() == (OP_PONG, b"")
    assert (await ws.recv_json())["nonce"] == "ن"
    ws.send(frame(b'{"type":"ping","nonce":"b"}', OP_BINARY))
    assert (await ws.recv_json())["nonce"] == "b"
    await ws.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("bad", "code"),
    [(frame(b'{"type":"ping"}', masked=False), 1002), (frame(b"\xc3\x28"), 1007), (frame(b"x", 0x0), 1002)],
    ids=_frame_ids,
)
async def test_protocol_errors_close_with_their_code_and_others_carry_on(
    service: Service, bad: bytes, code: int
) -> None:
    other = await service.websocket({"token": service.token(sub=2)})
    await other.recv_type("connected")
    ws = await RawWebSocket.connect(service.port, f"/ws?token={service.token()}")
    assert (await ws.recv_json())["type"] == "connected"
    ws.send(bad)
    assert (await ws.recv_close())[0] == code
    assert await ws.at_eof()
    await other.send({"type": "ping", "nonce": "still here"})
    assert (await other.recv_type("pong"))["nonce"] == "still here"
    await other.close()
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_client_close_is_answered_with_its_code_and_counted(service: Service) -> None:
    ws = await RawWebSocket.connect(service.port, f"/ws?token={service.token()}")
    assert (await ws.recv_json())["type"] == "connected"
    ws.send(frame(struct.pack("!H", 4321) + "خروج".encode(), OP_CLOSE))
    assert await ws.recv_close() == (4321, "")
    assert await ws.at_eof()
    assert service.ctx.metrics.sample("realtime_disconnects_total", transport="websocket", code="4321") == 1
    assert len(service.ctx.hub) == 0
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_unauthenticated_client_sends_nothing_that_is_read(service: Service) -> None:
    """Frames from a client that fails auth are never parsed: it just gets 4401."""
    junk = frame(b"not json") * 20
    ws = await RawWebSocket.connect(service.port, "/ws?token=nope", first_frames=junk)
    assert await ws.recv_close() == (4401, "invalid token")
    ws.send(frame(struct.pack("!H", 4401), OP_CLOSE))
    assert await ws.at_eof()
    await ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_compressed_connection_round_trips_arabic(start_service: StartService) -> None:
    """WS_COMPRESSION=1: python-websockets offers permessage-deflate and gets it, both ways."""
    service = await start_service(ws_compression=True)
    ws = await service.websocket({"token": service.token()})
    assert ws.conn.response is not None
    extensions = ws.conn.response.headers["Sec-WebSocket-Extensions"]
    assert extensions.startswith("permessage-deflate")
    await ws.recv_type("connected")
    await ws.send({"type": "ping", "nonce": "ضغط" * 40})
    assert (await ws.recv_type("pong"))["nonce"] == "ضغط" * 40
    publisher = service.token(sub=2, roles=("publisher",))
    await service.publish(publisher, {"type": "note", "text": "مهمة مضغوطة" * 20})
    assert (await ws.recv_type("note"))["text"] == "مهمة مضغوطة" * 20
    plain = await service.websocket({"token": service.token(sub=3)}, compression=None)
    assert plain.conn.response is not None and "Sec-WebSocket-Extensions" not in plain.conn.response.headers
    await plain.recv_type("connected")
    await ws.close()
    await plain.close()


@pytest.mark.gen_test(timeout=30)
async def test_no_tornado_objects_outlive_the_handshake(service: Service) -> None:
    """What keeps a connection small: once streaming, no handler or request object remains."""
    clients = [await service.websocket({"token": service.token(sub=i)}) for i in range(3)]
    sse = [await service.sse({"token": service.token(sub=10 + i)}) for i in range(3)]
    for client in clients:
        await client.recv_type("connected")
    for stream in sse:
        await stream.next_of("connected")
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, WebSocketEndpoint | EventStreamEndpoint)]
    assert len(service.ctx.hub) == 6 and alive == []
    for client in clients:
        await client.close()
    for stream in sse:
        stream.close()


def sessions(service: Service) -> list[WebSocketSession]:
    return [c.transport for c in service.ctx.hub if isinstance(c.transport, WebSocketSession)]


def missed_pongs(service: Service) -> list[int]:
    return sorted(session.protocol.missed_pongs for session in sessions(service))


@pytest.mark.gen_test(timeout=30)
async def test_a_heartbeat_round_is_spread_over_its_ticks(start_service: StartService) -> None:
    """Each tick pings its share; after a round every client has had exactly one ping."""
    service = await start_service(heartbeat_seconds=3600)  # the timer stays out of the way
    clients = [await RawWebSocket.connect(service.port, f"/ws?token={service.token(sub=i)}") for i in range(8)]
    for client in clients:
        assert (await client.recv_json())["type"] == "connected"
    for tick in range(1, 5):
        service.ctx.hub.heartbeat(4)
        assert missed_pongs(service) == [0] * (8 - 2 * tick) + [1] * (2 * tick)
    for client in clients:
        assert await client.recv_frame() == (OP_PING, b"")
    service.ctx.hub.heartbeat(4)  # the next round begins
    assert missed_pongs(service) == [1] * 6 + [2] * 2
    for client in clients:
        await client.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_never_answers_pings_is_closed_and_one_that_does_stays(start_service: StartService) -> None:
    service = await start_service(heartbeat_seconds=3600)
    silent = await RawWebSocket.connect(service.port, f"/ws?token={service.token(sub=1)}")
    assert (await silent.recv_json())["type"] == "connected"
    answering = await service.websocket({"token": service.token(sub=2)})  # python-websockets answers pings
    await answering.recv_type("connected")
    session = next(s for s in sessions(service) if s.connection is not None and s.connection.principal.user_id == 2)
    for _ in range(3):
        service.ctx.hub.heartbeat()
        await eventually(lambda: session.protocol.missed_pongs == 0, 10, "the pong")
    assert await silent.recv_close() == (1001, "ping timeout")
    # Until the client answers the close, it is still in the hub: nothing may follow the close frame.
    event = Event("00000000000000ff", "note", "2026-01-01T00:00:00Z", {"text": "late"}, None, time.time())
    service.ctx.hub.deliver(encode_event(event))
    silent.send(frame(struct.pack("!H", 1001), OP_CLOSE))
    assert await silent.reader.read() == b""
    await answering.recv_type("note")
    await answering.send({"type": "ping", "nonce": "alive"})
    assert (await answering.recv_type("pong"))["nonce"] == "alive"
    await answering.close()
    await silent.close()
