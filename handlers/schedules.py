"""`/api/schedules`: schedules of recurring tasks (`service.app.schedules`, where every change
writes its `schedule_updated`); this module only speaks HTTP."""

from __future__ import annotations

from handlers.base import ApiHandler, path_id
from service.app import schedules
from service.app.idempotency import Answer
from service.app.validation import SCHEDULE_FIELDS, validate
from service.core.ports import Transaction


class SchedulesHandler(ApiHandler):
    """`GET /api/schedules` and `POST /api/schedules`."""

    async def get(self) -> None:
        await self.principal()
        self.write_json(await schedules.listing(self.ctx.unit_of_work))

    async def post(self) -> None:
        user = await self.principal()
        fields = validate(self.json_body(), SCHEDULE_FIELDS, required=("name", "cron", "taskType"))

        async def change(transaction: Transaction) -> Answer:
            schedule = await schedules.create(transaction, user, fields)
            return Answer.json(201, schedule, location=f"/api/schedules/{schedule['id']}")

        await self.commit(user, change)


class ScheduleHandler(ApiHandler):
    """`GET`, `PATCH` and `DELETE /api/schedules/{id}`."""

    async def get(self, raw_id: str) -> None:
        await self.principal()
        self.write_json(await schedules.get(self.ctx.unit_of_work, path_id(raw_id)))

    async def patch(self, raw_id: str) -> None:
        user = await self.principal()
        schedule_id = path_id(raw_id)
        changes = validate(self.json_body(), SCHEDULE_FIELDS, partial=True)

        async def change(transaction: Transaction) -> Answer:
            return Answer.json(200, await schedules.update(transaction, user, schedule_id, changes))

        await self.commit(user, change)

    async def delete(self, raw_id: str) -> None:
        user = await self.principal()
        schedule_id = path_id(raw_id)

        async def change(transaction: Transaction) -> Answer:
            await schedules.delete(transaction, user, schedule_id)
            return Answer(204)

        await self.commit(user, change)
