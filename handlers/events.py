"""`POST /api/events`: publishers insert any event (the seed's `wsServer.broadcast`)."""

from __future__ import annotations

from datetime import UTC, datetime

from handlers.base import ApiHandler
from service.events import document_for_publish


class PublishHandler(ApiHandler):
    """Validate and insert; delivery happens through the change stream like every event."""

    async def post(self) -> None:
        await self.principal("publisher")
        doc = document_for_publish(self.json_body(), datetime.now(UTC))
        await self.ctx.store.publish(doc)
        self.write_json({"accepted": True, "type": doc["type"]}, 202)
