"""Admin endpoints: list this process's connections, disconnect one or all of a user's (4000)."""

from __future__ import annotations

from handlers.base import BaseHandler
from service.core.errors import CloseCode, NotFound
from service.core.events import user_id_of


class ConnectionsHandler(BaseHandler):
    """`GET /api/connections`."""

    async def get(self) -> None:
        await self.principal("admin")
        self.write_json({"connections": [c.describe() for c in self.ctx.hub]})


class ConnectionHandler(BaseHandler):
    """`DELETE /api/connections/{id}`."""

    async def delete(self, connection_id: str) -> None:
        await self.principal("admin")
        connection = self.ctx.hub.get(connection_id)
        if connection is None:
            raise NotFound(f"connection {connection_id[:32]!r} on this instance")
        connection.close(CloseCode.DISCONNECTED_BY_ADMIN, "disconnected by admin")
        self.write_json({"closed": 1})


class UserConnectionsHandler(BaseHandler):
    """`DELETE /api/users/{userId}/connections`."""

    async def delete(self, raw_user: str) -> None:
        await self.principal("admin")
        connections = self.ctx.hub.of_user(user_id_of(raw_user))
        for connection in connections:
            connection.close(CloseCode.DISCONNECTED_BY_ADMIN, "disconnected by admin")
        self.write_json({"closed": len(connections)})
