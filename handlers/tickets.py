"""`POST /api/realtime/ticket`: a one-time ticket so browsers keep tokens out of URLs."""

from __future__ import annotations

from handlers.base import ApiHandler
from service.app import tickets


class TicketHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.principal()
        self.write_json(await tickets.issue(self.ctx.auth, user))
