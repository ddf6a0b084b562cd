"""`POST /api/realtime/ticket`: a one-time ticket so browsers keep tokens out of URLs."""

from __future__ import annotations

from handlers.base import ApiHandler
from service.core.schema import TICKET_SECONDS


class TicketHandler(ApiHandler):
    async def post(self) -> None:
        user = await self.principal()
        ticket = await self.ctx.auth.issue_ticket(user)
        self.write_json({"ticket": ticket, "expiresIn": TICKET_SECONDS})
