"""The WebSocket state machine (`service.protocol.websocket`) with no socket: client bytes
in, the exact bytes it writes out, and its one `State`."""

from __future__ import annotations

import struct

import pytest

from harness.clients import RawWebSocket
from service.core.schema import REQUEST_BURST
from service.protocol.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, close_frame, ws_frame
from service.protocol.websocket import PING_FRAME, State, WebSocketProtocol

frame = RawWebSocket.frame


class Wire:
    """What the protocol wrote, split by sink."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.finals: list[bytes] = []

    def protocol(self, *, limit_requests: bool = True) -> WebSocketProtocol:
        protocol = WebSocketProtocol(
            self.writes.append, self.finals.append, max_message_bytes=1024, limit_requests=limit_requests
        )
        protocol.open()
        return protocol


@pytest.fixture
def wire() -> Wire:
    return Wire()


def test_a_new_protocol_is_connecting_and_open_opens_it(wire: Wire) -> None:
    """CONNECTING until the client is greeted; `open` moves to OPEN once."""
    protocol = WebSocketProtocol(wire.writes.append, wire.finals.append, max_message_bytes=10)
    assert protocol.state is State.CONNECTING
    protocol.open()
    assert protocol.state is State.OPEN  # type: ignore[comparison-overlap]  # mypy keeps the narrowing across open()


def test_messages_are_yielded_and_pings_answered_with_their_payload(wire: Wire) -> None:
    """Text and binary go to the caller; a ping is answered by the protocol itself."""
    protocol = wire.protocol()
    data = frame(b"hello", OP_TEXT) + frame(b"abc", OP_PING) + frame(b"\x00\x01", OP_BINARY)
    assert list(protocol.receive(data)) == [(OP_TEXT, b"hello"), (OP_BINARY, b"\x00\x01")]
    assert wire.writes == [ws_frame(b"abc", OP_PONG)]


def test_close_sends_one_close_frame_and_nothing_after_it(wire: Wire) -> None:
    """After our close frame, data frames and pings are not written (RFC 6455 §5.5.1)."""
    protocol = wire.protocol()
    assert protocol.close(4408, "slow consumer") is True
    assert protocol.close(1000, "again") is False
    protocol.send(ws_frame(b"late event"))
    protocol.ping()
    assert wire.finals == [close_frame(4408, "slow consumer")] and wire.writes == []
    assert protocol.state is State.CLOSING and (protocol.close_code, protocol.close_reason) == (4408, "slow consumer")


def test_the_third_unanswered_ping_closes_with_1001_and_nothing_follows(wire: Wire) -> None:
    """Two pings without a pong are allowed; the next heartbeat closes `ping timeout`, and
    an event offered after that is not sent (the bug of events after our close frame)."""
    protocol = wire.protocol()
    protocol.ping()
    protocol.ping()
    protocol.ping()
    protocol.send(ws_frame(b"event"))
    assert wire.writes == [PING_FRAME, PING_FRAME]
    assert wire.finals == [close_frame(1001, "ping timeout")] and protocol.state is State.CLOSING


def test_a_pong_resets_the_missed_count(wire: Wire) -> None:
    """A client that answers stays open however many pings it gets."""
    protocol = wire.protocol()
    for _ in range(5):
        protocol.ping()
        assert list(protocol.receive(frame(b"", OP_PONG))) == []
        assert protocol.missed_pongs == 0
    assert protocol.state is State.OPEN


def test_a_client_close_is_answered_with_its_code_and_ends_the_handshake(wire: Wire) -> None:
    """The client began: echo its code, record it, CLOSED (the socket is to be closed)."""
    protocol = wire.protocol()
    assert list(protocol.receive(frame(struct.pack("!H", 4321) + b"bye", OP_CLOSE))) == []
    assert wire.finals == [close_frame(4321)] and protocol.state is State.CLOSED
    assert (protocol.close_code, protocol.close_reason) == (4321, "bye")


def test_an_empty_client_close_is_answered_empty_and_counts_as_1000(wire: Wire) -> None:
    """No status code in, no status code out; the connection ended normally."""
    protocol = wire.protocol()
    list(protocol.receive(frame(b"", OP_CLOSE)))
    assert wire.finals == [ws_frame(b"", OP_CLOSE)] and protocol.close_code == 1000


def test_after_our_close_only_the_clients_close_frame_matters(wire: Wire) -> None:
    """Messages and pings after our close frame are dropped; the client's close ends it."""
    protocol = wire.protocol()
    protocol.close(4401, "token expired")
    data = frame(b"late", OP_TEXT) + frame(b"p", OP_PING) + frame(struct.pack("!H", 1000), OP_CLOSE)
    assert list(protocol.receive(data)) == []
    assert wire.writes == [] and wire.finals == [close_frame(4401, "token expired")]
    assert protocol.state is State.CLOSED and protocol.close_code == 4401


def test_a_protocol_error_closes_with_its_code_without_waiting(wire: Wire) -> None:
    """An unmasked frame: close 1002 and CLOSED at once (a broken stream gets no handshake)."""
    protocol = wire.protocol()
    assert list(protocol.receive(frame(b"x", OP_TEXT, masked=False))) == []
    assert wire.finals == [close_frame(1002, "client frames must be masked")] and protocol.state is State.CLOSED


def test_a_message_that_closes_stops_the_messages_after_it(wire: Wire) -> None:
    """`receive` is lazy: once the caller closes, the next frames of the same read are not handled."""
    protocol = wire.protocol()
    seen = []
    for _, payload in protocol.receive(frame(b"1") + frame(b"2") + frame(b"p", OP_PING)):
        seen.append(payload)
        protocol.close(4400, "too many bad messages")
    assert seen == [b"1"] and wire.writes == []


def test_requests_past_the_burst_close_with_4400_and_the_rest_is_not_parsed(wire: Wire) -> None:
    """Pings beyond REQUEST_BURST at once: 4400, and the flood after it is discarded unparsed."""
    protocol = wire.protocol()
    flood = frame(b"", OP_PING) * (REQUEST_BURST + 10)
    assert list(protocol.receive(flood)) == []
    assert len(wire.writes) == REQUEST_BURST and wire.finals == [close_frame(4400, "too many messages")]
    list(protocol.receive(frame(struct.pack("!H", 1000), OP_CLOSE)))
    assert protocol.state is State.CLOSING and len(wire.finals) == 1


def test_without_the_request_limit_a_flood_is_answered(wire: Wire) -> None:
    """The echo mode of the conformance test turns the limit off."""
    protocol = wire.protocol(limit_requests=False)
    messages = list(protocol.receive(frame(b"m") * (REQUEST_BURST * 3)))
    assert len(messages) == REQUEST_BURST * 3 and protocol.state is State.OPEN


def test_a_lost_socket_without_a_close_frame_is_1001_client_left(wire: Wire) -> None:
    """Neither side sent a close: the client went away."""
    protocol = wire.protocol()
    protocol.lost()
    assert protocol.state is State.CLOSED and (protocol.close_code, protocol.close_reason) == (1001, "client left")


def test_a_lost_socket_keeps_the_close_code_already_sent(wire: Wire) -> None:
    """A close that began before the socket went keeps its code for the metrics and the log."""
    protocol = wire.protocol()
    protocol.close(4408, "slow consumer")
    protocol.lost()
    assert (protocol.close_code, protocol.close_reason) == (4408, "slow consumer")
