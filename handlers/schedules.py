"""`/api/schedules`: schedules of recurring tasks; every change commits with its `schedule_updated`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from handlers.base import ApiHandler, path_id
from service.app.idempotency import Answer
from service.app.validation import SCHEDULE_FIELDS, validate
from service.core.identity import Principal
from service.storage.mongo.store import Session, utcnow


class _ScheduleEvents(ApiHandler):
    async def schedule_changed(
        self, user: Principal, schedule: dict[str, Any], action: str, at: datetime | None, session: Session
    ) -> None:
        fields = {"scheduleId": schedule["id"], "action": action, "name": schedule["name"]}
        await self.emit(user, "schedule_updated", fields, at, session)


class SchedulesHandler(_ScheduleEvents):
    """`GET /api/schedules` and `POST /api/schedules`."""

    async def get(self) -> None:
        await self.principal()
        self.write_json({"schedules": await self.ctx.store.list_schedules()})

    async def post(self) -> None:
        user = await self.principal()
        fields = validate(self.json_body(), SCHEDULE_FIELDS, required=("name", "cron", "taskType"))

        async def change(session: Session) -> Answer:
            now = utcnow()
            schedule = await self.ctx.store.create_schedule(fields, now, session)
            await self.schedule_changed(user, schedule, "created", now, session)
            return Answer.json(201, schedule, location=f"/api/schedules/{schedule['id']}")

        await self.commit(user, change)


class ScheduleHandler(_ScheduleEvents):
    """`GET`, `PATCH` and `DELETE /api/schedules/{id}`."""

    async def get(self, raw_id: str) -> None:
        await self.principal()
        self.write_json(await self.ctx.store.get_schedule(path_id(raw_id)))

    async def patch(self, raw_id: str) -> None:
        user = await self.principal()
        schedule_id = path_id(raw_id)
        changes = validate(self.json_body(), SCHEDULE_FIELDS, partial=True)

        async def change(session: Session) -> Answer:
            now = utcnow()
            schedule = await self.ctx.store.update_schedule(schedule_id, changes, now, session)
            await self.schedule_changed(user, schedule, "updated", now, session)
            return Answer.json(200, schedule)

        await self.commit(user, change)

    async def delete(self, raw_id: str) -> None:
        user = await self.principal()
        schedule_id = path_id(raw_id)

        async def change(session: Session) -> Answer:
            schedule = await self.ctx.store.delete_schedule(schedule_id, session)
            await self.schedule_changed(user, schedule, "deleted", None, session)
            return Answer(204)

        await self.commit(user, change)
