"""`POST /api/events`: publishers insert any event (the seed's `wsServer.broadcast`; the rules
are `service.app.publish`)."""

from __future__ import annotations

from handlers.base import ApiHandler
from service.app import publish
from service.app.idempotency import Answer
from service.core.ports import Transaction


class PublishHandler(ApiHandler):
    """Validate and insert; delivery happens through the change stream like every event."""

    async def post(self) -> None:
        user = await self.principal("publisher")
        event = publish.accept(self.json_body())

        async def change(transaction: Transaction) -> Answer:
            return Answer.json(202, await publish.publish(transaction, event))

        await self.commit(user, change, single_write=True)  # one insert: no transaction without a key
