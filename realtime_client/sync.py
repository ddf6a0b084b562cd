"""A blocking wrapper for scripts without asyncio: `for message in SyncClient(url, token): ...`.

It runs the async client on a private event loop, only while you wait in `next()`: handle each
message within a heartbeat (15 s by default) or the WebSocket may be closed for not answering
pings, which the client then resumes from (nothing is lost, the reconnect costs a round trip).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from realtime_client.api import Api
from realtime_client.client import Message, RealtimeClient


class SyncClient:
    """`RealtimeClient`'s iteration and `Api`'s calls, blocking; same arguments as `RealtimeClient`."""

    def __init__(self, url: str, token: Any, **options: Any) -> None:
        self.client = RealtimeClient(url, token, **options)
        self.api = Api(url, token)
        self._runner = asyncio.Runner()
        self._messages = self.client.messages()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        async def step() -> Message:
            return await anext(self._messages)

        try:
            return self._runner.run(step())
        except StopAsyncIteration:
            raise StopIteration from None

    def publish(self, type: str, fields: dict[str, Any] | None = None, *, idempotency_key: str | None = None) -> Any:
        """`Api.publish`, blocking."""
        return self._runner.run(self.api.publish(type, fields, idempotency_key=idempotency_key))

    def close(self) -> None:
        """Close the connection and the private loop."""
        self.client.close()
        self._runner.run(self._messages.aclose())
        self._runner.close()
