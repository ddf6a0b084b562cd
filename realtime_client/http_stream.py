"""A streamed HTTP/1.1 GET on asyncio streams, for SSE: the response body as it arrives, and a
`close()` that ends it at once (tornado's client can only abandon a streaming fetch).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024


class HttpStream:
    """One response: `status`, `headers` (lower-case names), then `body()` chunks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, url: str, headers: Mapping[str, str], timeout: float) -> HttpStream:  # noqa: ASYNC109
        """Connect, send the GET and read the response head (within `timeout` seconds).

        Raises:
            OSError: the connection failed, or the answer is not HTTP/1.x.
            TimeoutError: no response head in time.
        """
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        host = parts.hostname or "localhost"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl.create_default_context() if secure else None, limit=MAX_HEAD
            )
            stream = cls(reader, writer)
            try:
                lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
                lines += [f"{name}: {value}" for name, value in headers.items()]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                stream.close()
                raise OSError(f"no HTTP response head: {exc}") from exc
            except BaseException:
                stream.close()
                raise
        version, _, rest = head[0].partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            stream.close()
            raise OSError(f"not an HTTP/1.x response: {head[0]!r}")
        stream.status = int(rest[:3])
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name:
                stream.headers[name.strip().lower()] = value.strip()
        return stream

    async def body(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked or until the connection ends)."""
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            while chunk := await self._reader.read(65536):
                yield chunk
            return
        while True:
            size_line = await self._reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await self._reader.readexactly(size + 2)
            yield data[:-2]

    def close(self) -> None:
        """End the connection now."""
        self._writer.close()
