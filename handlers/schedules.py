"""`/api/schedules`: schedules of recurring tasks; every change emits `schedule_updated`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from handlers.base import ApiHandler, path_id
from service.auth import Principal
from service.models import SCHEDULE_FIELDS, validate
from service.store import utcnow


class _ScheduleEvents(ApiHandler):
    async def schedule_changed(
        self, user: Principal, schedule: dict[str, Any], action: str, at: datetime | None = None
    ) -> None:
        fields = {"scheduleId": schedule["id"], "action": action, "name": schedule["name"]}
        await self.emit(user, "schedule_updated", fields, at)


class SchedulesHandler(_ScheduleEvents):
    """`GET /api/schedules` and `POST /api/schedules`."""

    async def get(self) -> None:
        await self.principal()
        self.write_json({"schedules": await self.ctx.store.list_schedules()})

    async def post(self) -> None:
        user = await self.principal()
        fields = validate(self.json_body(), SCHEDULE_FIELDS, required=("name", "cron", "taskType"))
        now = utcnow()
        schedule = await self.ctx.store.create_schedule(fields, now)
        await self.schedule_changed(user, schedule, "created", now)
        self.set_header("Location", f"/api/schedules/{schedule['id']}")
        self.write_json(schedule, 201)


class ScheduleHandler(_ScheduleEvents):
    """`GET`, `PATCH` and `DELETE /api/schedules/{id}`."""

    async def get(self, raw_id: str) -> None:
        await self.principal()
        self.write_json(await self.ctx.store.get_schedule(path_id(raw_id)))

    async def patch(self, raw_id: str) -> None:
        user = await self.principal()
        schedule_id = path_id(raw_id)
        changes = validate(self.json_body(), SCHEDULE_FIELDS, partial=True)
        now = utcnow()
        schedule = await self.ctx.store.update_schedule(schedule_id, changes, now)
        await self.schedule_changed(user, schedule, "updated", now)
        self.write_json(schedule)

    async def delete(self, raw_id: str) -> None:
        user = await self.principal()
        schedule = await self.ctx.store.delete_schedule(path_id(raw_id))
        await self.schedule_changed(user, schedule, "deleted")
        self.set_status(204)
        self.finish()
