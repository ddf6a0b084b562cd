"""Python client of the realtime task events service: follow the stream (WebSocket, SSE or
long-polling, with reconnects and resume) and call the REST API.

    async with RealtimeClient(url, token, position=FilePositionStore("worker.pos")) as client:
        async for event in client:
            ...

Nothing here imports the service: this package installs on its own (`pip install ./realtime_client`).
"""

from __future__ import annotations

from realtime_client.api import Api, TokenSource
from realtime_client.backoff import Backoff
from realtime_client.client import TRANSPORTS, Message, RealtimeClient, Transport
from realtime_client.errors import ApiError, RealtimeError, Stopped
from realtime_client.position import FilePositionStore, MemoryPositionStore, PositionStore
from realtime_client.sync import SyncClient

__all__ = [
    "TRANSPORTS",
    "Api",
    "ApiError",
    "Backoff",
    "FilePositionStore",
    "MemoryPositionStore",
    "Message",
    "PositionStore",
    "RealtimeClient",
    "RealtimeError",
    "Stopped",
    "SyncClient",
    "TokenSource",
    "Transport",
]
