"""`GET /api/presence`: who is online on any replica, read from MongoDB so every replica agrees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from handlers.base import ApiHandler
from service.core.errors import NotFound
from service.fanout.presence import STALE_HEARTBEATS


class PresenceHandler(ApiHandler):
    """`GET /api/presence` (user role)."""

    async def get(self) -> None:
        await self.principal()
        if self.ctx.hub.presence is None:
            raise NotFound("presence is off (PRESENCE=0)")
        heartbeat = self.ctx.settings.heartbeat_seconds
        stale_before = datetime.now(UTC) - timedelta(seconds=heartbeat * STALE_HEARTBEATS)
        users = await self.ctx.online.presence_list(stale_before)
        self.write_json({"users": users, "count": len(users)})
