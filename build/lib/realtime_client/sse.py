"""An incremental text/event-stream reader that also reports `retry:`.

Every stream of this service opens with a block holding only `retry: <ms>` (EventSource's
reconnection delay) and, when draining, ends with one; such a block dispatches no event, and
its value is kept in `SseParser.retry_ms` instead. Lines end with LF, CRLF or CR; `data` lines
are joined with LF; comments (`:`, the heartbeats) count as activity only.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")
_BLOCK_END = re.compile(r"(?:\r\n|\r(?!\n)|\n){2}")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event."""

    event: str
    id: str | None
    data: str


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
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)
        if not data:
            return None
        return SseEvent(event=event or "message", id=id_, data="\n".join(data))
