"""`/api/schedules`: schedules of recurring tasks; every change emits `schedule_updated`."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiHandler, path_id
from service.auth import Principal
from service.events import event_document
from service.models import SCHEDULE_FIELDS, validate


class _ScheduleEvents(ApiHandler):
    async def emit(self, user: Principal, schedule: dict[str, Any], action: str) -> None:
        await self.ctx.store.publish(
            event_document(
                "schedule_updated",
                {
                    "scheduleId": schedule["id"],
                    "action": action,
                    "name": schedule["name"],
                    "userId": user.user_id,
                    "userName": user.name,
                },
            )
        )


class SchedulesHandler(_ScheduleEvents):
    """`GET /api/schedules` and `POST /api/schedules`."""

    async def get(self) -> None:
        await self.principal()
        self.write_json({"schedules": await self.ctx.store.list_schedules()})

    async def post(self) -> None:
        user = await self.principal()
        fields = validate(self.json_body(), SCHEDULE_FIELDS, required=("name", "cron", "taskType"))
        schedule = await self.ctx.store.create_schedule(fields)
        await self.emit(user, schedule, "created")
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
        schedule = await self.ctx.store.update_schedule(schedule_id, changes)
        await self.emit(user, schedule, "updated")
        self.write_json(schedule)

    async def delete(self, raw_id: str) -> None:
        user = await self.principal()
        schedule = await self.ctx.store.delete_schedule(path_id(raw_id))
        await self.emit(user, schedule, "deleted")
        self.set_status(204)
        self.finish()
