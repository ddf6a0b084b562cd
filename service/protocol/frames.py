"""The WebSocket protocol (RFC 6455) and permessage-deflate (RFC 7692), without sockets.

The service speaks WebSocket itself once Tornado has answered the HTTP request (see
`handlers.ws_endpoint`): a connection then costs a socket, an asyncio transport and a few small
objects instead of Tornado's handler, request, stream and frame-reading coroutines.
This module is the pure part: the handshake answer, a parser for client frames that
enforces the protocol's rules, and the frames the server sends.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
NO_STATUS = 1005

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
# Codes a peer may put in a close frame (RFC 6455 §7.4); others are a protocol error.
_VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class ProtocolError(Exception):
    """The client broke the protocol; the connection ends with this close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key`."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def valid_key(key: str) -> bool:
    """A key is 16 random bytes in base64 (RFC 6455 §4.2.1)."""
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def handshake_response(key: str, extensions: str | None = None) -> bytes:
    """The complete `101 Switching Protocols` response head."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class Deflate:
    """Negotiated permessage-deflate: the server compresses with `window_bits`; neither
    side keeps compression context between messages, so one compressed frame serves
    every client and no connection holds a zlib stream while idle.
    """

    window_bits: int = 15

    def response(self) -> str:
        params = ["permessage-deflate", "server_no_context_takeover", "client_no_context_takeover"]
        if self.window_bits != 15:
            params.append(f"server_max_window_bits={self.window_bits}")
        return "; ".join(params)

    def compress(self, data: bytes) -> bytes:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.window_bits)
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return out[: -len(_DEFLATE_TAIL)] if out.endswith(_DEFLATE_TAIL) else out


def negotiate_deflate(header: str | None) -> Deflate | None:
    """Accept the first permessage-deflate offer we can honour, or None.

    zlib cannot compress with an 8-bit window, so an offer limiting the server to 8
    bits is declined (the connection then runs uncompressed).
    """
    for offer in (header or "").split(","):
        name, *raw_params = (part.strip() for part in offer.split(";"))
        if name.lower() != "permessage-deflate":
            continue
        window_bits, acceptable, seen = 15, True, set()
        for param in raw_params:
            key, _, value = (p.strip().strip('"') for p in param.partition("="))
            key = key.lower()
            if key in seen:
                acceptable = False
            seen.add(key)
            if key == "server_max_window_bits":
                if not (value.isdigit() and 9 <= int(value) <= 15):
                    acceptable = False
                else:
                    window_bits = int(value)
            elif key == "client_max_window_bits":
                if value and not (value.isdigit() and 8 <= int(value) <= 15):
                    acceptable = False
            elif key not in ("server_no_context_takeover", "client_no_context_takeover"):
                acceptable = False
        if acceptable:
            return Deflate(window_bits)
    return None


def ws_frame(data: bytes, opcode: int = OP_TEXT, *, compressed: bool = False) -> bytes:
    """One unmasked, final WebSocket frame (RFC 6455 §5.2) carrying `data`; `compressed`
    sets RSV1, which marks a permessage-deflate payload.
    """
    length = len(data)
    first = 0x80 | (0x40 if compressed else 0) | opcode
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + data


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit the 125-byte control frame limit."""
    encoded = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return ws_frame(struct.pack("!H", code) + encoded, OP_CLOSE)


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a client's close frame.

    Raises:
        ProtocolError: a one-byte payload, a code no peer may send, or a reason that is not UTF-8.
    """
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    (code,) = struct.unpack("!H", payload[:2])
    if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
        raise ProtocolError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


def unmask(mask: bytes, data: bytes) -> bytes:
    """XOR the payload with the repeating 4-byte mask, as one big-integer operation."""
    length = len(data)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


class FrameParser:
    """Turns the bytes a client sends into whole messages, enforcing RFC 6455 on the way.

    `feed` returns `(opcode, payload)` for each complete message or control frame; text
    payloads are already checked to be UTF-8 and compressed ones already inflated. An
    uncompressed text message that arrives in pieces (fragments, or one frame in several
    reads) is checked piece by piece, so invalid UTF-8 fails at the first bad byte.
    """

    __slots__ = (
        "_buffer",
        "_checked",
        "_deflate",
        "_fragments",
        "_fragments_compressed",
        "_fragments_opcode",
        "_max_size",
        "_utf8",
    )

    def __init__(self, max_size: int, *, deflate: bool = False) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        self._deflate = deflate
        self._fragments: list[bytes] | None = None
        self._fragments_opcode = OP_TEXT
        self._fragments_compressed = False
        self._utf8: codecs.IncrementalDecoder | None = None  # a text message arriving in pieces
        self._checked = 0  # bytes of the incomplete frame at the buffer's head already checked

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Parse `data` (and anything left from before).

        Raises:
            ProtocolError: the client broke the protocol; nothing after it is parsed.
        """
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            fin, rsv, opcode = first & 0x80, first & 0x70, first & 0x0F
            if not second & 0x80:
                raise ProtocolError(PROTOCOL_ERROR, "client frames must be masked")
            length, offset = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                (length,) = struct.unpack_from("!H", buffer, 2)
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                (length,) = struct.unpack_from("!Q", buffer, 2)
                offset = 10
            self._check_header(fin, rsv, opcode, length)
            end = offset + 4 + length
            plain_text = self._plain_text(opcode, rsv)
            if len(buffer) < end:
                if plain_text and len(buffer) > offset + 4 + self._checked:
                    self._check_partial(buffer, offset)
                return
            payload = unmask(bytes(buffer[offset : offset + 4]), bytes(buffer[offset + 4 : end]))
            del buffer[:end]
            if plain_text and (self._utf8 is not None or not fin):
                self._check_text(payload[self._checked :], final=bool(fin))
            self._checked = 0
            message = self._assemble(bool(fin), bool(rsv), opcode, payload)
            if message is not None:
                yield message

    def _plain_text(self, opcode: int, rsv: int) -> bool:
        """Whether a frame carries (part of) an uncompressed text message."""
        if opcode == OP_TEXT:
            return not rsv
        return (
            opcode == OP_CONTINUATION
            and self._fragments is not None
            and self._fragments_opcode == OP_TEXT
            and not self._fragments_compressed
        )

    def _check_partial(self, buffer: bytearray, offset: int) -> None:
        """Check the part of an incomplete text frame that has arrived and is not checked yet."""
        start = offset + 4 + self._checked
        turn = self._checked % 4  # the mask continues where the checked part ended
        mask = bytes(buffer[offset + turn : offset + 4] + buffer[offset : offset + turn])
        self._check_text(unmask(mask, bytes(buffer[start:])), final=False)
        self._checked = len(buffer) - offset - 4

    def _check_text(self, data: bytes, *, final: bool) -> None:
        if self._utf8 is None:
            self._utf8 = codecs.getincrementaldecoder("utf-8")()
        try:
            self._utf8.decode(data, final)
        except UnicodeDecodeError:
            raise ProtocolError(INVALID_DATA, "text message is not UTF-8") from None
        if final:
            self._utf8 = None

    def _check_header(self, fin: int, rsv: int, opcode: int, length: int) -> None:
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if not fin or length > 125:
                raise ProtocolError(PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
            if rsv:
                raise ProtocolError(PROTOCOL_ERROR, "reserved bits set on a control frame")
            return
        if opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY):
            raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if rsv & 0x30 or (rsv and (not self._deflate or opcode == OP_CONTINUATION)):
            raise ProtocolError(PROTOCOL_ERROR, "reserved bits set without an extension")
        if opcode == OP_CONTINUATION and self._fragments is None:
            raise ProtocolError(PROTOCOL_ERROR, "continuation frame without a message")
        if opcode != OP_CONTINUATION and self._fragments is not None:
            raise ProtocolError(PROTOCOL_ERROR, "new message inside a fragmented one")
        so_far = sum(map(len, self._fragments)) if self._fragments else 0
        if so_far + length > self._max_size:
            raise ProtocolError(MESSAGE_TOO_BIG, "message too big")

    def _assemble(self, fin: bool, compressed: bool, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode >= 0x8:
            return opcode, payload
        if opcode != OP_CONTINUATION:
            self._fragments, self._fragments_opcode, self._fragments_compressed = [], opcode, compressed
        assert self._fragments is not None
        self._fragments.append(payload)
        if not fin:
            return None
        data, self._fragments = b"".join(self._fragments), None
        if self._fragments_compressed:
            data = self._inflate(data)
        if self._fragments_opcode == OP_TEXT:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(INVALID_DATA, "text message is not UTF-8") from None
        return self._fragments_opcode, data

    def _inflate(self, data: bytes) -> bytes:
        # A fresh decompressor per message (client_no_context_takeover was negotiated);
        # max_length stops a small bomb from inflating past the message limit.
        inflater = zlib.decompressobj(-15)
        try:
            out = inflater.decompress(data + _DEFLATE_TAIL, self._max_size + 1)
        except zlib.error:
            raise ProtocolError(INVALID_DATA, "compressed message does not inflate") from None
        if len(out) > self._max_size:
            raise ProtocolError(MESSAGE_TOO_BIG, "message too big")
        return out
