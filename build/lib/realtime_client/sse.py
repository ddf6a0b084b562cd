"""An incremental text/event-stream reader that also reports `retry:`.

Every stream of this service opens with a block holding only `retry: <ms>` (EventSource's
reconnection delay) and, when draining, ends with one; such a block dispatches no event, and
its value is kept in `SseParser.retry_ms` instead. Lines end with LF, CRLF or CR; `data` lines
are joined with LF; comments (`:`, the heartbeats) count as activity only.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")
_BLOCK_END = re.compile(r"(?:\r\n|\r(?!\n)|\n){2}")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event."""

    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        """`data` parsed as JSON (every event of this service carries a JSON object)."""
        return json.loads(self.data)


class SseParser:
    """Feed the body as it arrives; get the complete events."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that `chunk` completes, in order."""
        self._buffer += self._decoder.decode(chunk)
        events = []
        while (match := _BLOCK_END.search(self._buffer)) is not None:
            block, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            event = self._block(block)
            if event is not None:
                events.append(event)
        return events

    def _block(self, block: str) -> SseEvent | None:
        event, retry_ms = read_block(block)
        if retry_ms is not None:
            self.retry_ms = retry_ms
        return event


def read_block(block: str) -> tuple[SseEvent | None, int | None]:
    """The event of one block (its lines, without the blank line; None when it has no data),
    and the `retry:` it sets, if any."""
    event = id_ = None
    retry_ms: int | None = None
    data: list[str] = []
    for line in _LINE_END.split(block):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "id":
            id_ = value
        elif name == "data":
            data.append(value)
        elif name == "retry" and value.isdigit():
            retry_ms = int(value)
    if not data:
        return None, retry_ms
    return SseEvent(event=event or "message", id=id_, data="\n".join(data)), retry_ms


def parse_block(block: str) -> SseEvent | None:
    """The event of one block; None when it has no data."""
    return read_block(block)[0]
