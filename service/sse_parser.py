"""Reading a text/event-stream: the one parser `service tail` and the tests use.

The subset of the WHATWG rules this service's streams need: lines end with LF, CRLF or CR;
a blank line ends an event; `data` lines are joined with LF; `event` defaults to `message`;
comments (`:`) and `retry` are skipped; a block without `data` dispatches nothing.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")
_BLOCK_END = re.compile(r"(?:\r\n|\r(?!\n)|\n){2}")  # a blank line (a CR at the end may precede an LF: same end)


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event."""

    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


def parse_block(block: str) -> SseEvent | None:
    """One event from the lines of a block (without its blank line); None when it has no data."""
    event = id_ = None
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
    if not data:
        return None
    return SseEvent(event=event or "message", id=id_, data="\n".join(data))


class SseParser:
    """Incremental: feed the response body as it arrives, get the complete events."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # keeps split characters

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that `chunk` completes, in order."""
        self._buffer += self._decoder.decode(chunk)
        events = []
        while True:
            match = _BLOCK_END.search(self._buffer)
            if match is None:
                break
            block, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            event = parse_block(block)
            if event is not None:
                events.append(event)
        return events
