"""`POST /api/events`: publishers insert any event (the seed's `wsServer.broadcast`)."""

from __future__ import annotations

from datetime import UTC, datetime

from handlers.base import ApiHandler
from service.app.idempotency import Answer
from service.core.events import document_for_publish
from service.storage.mongo.store import Session


class PublishHandler(ApiHandler):
    """Validate and insert; delivery happens through the change stream like every event."""

    async def post(self) -> None:
        user = await self.principal("publisher")
        doc = document_for_publish(self.json_body(), datetime.now(UTC))

        async def change(session: Session) -> Answer:
            await self.ctx.store.publish(doc, session)
            return Answer.json(202, {"accepted": True, "type": doc["type"]})

        await self.commit(user, change)
