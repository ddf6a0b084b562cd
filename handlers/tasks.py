"""`/api/tasks`: list, create, read, change, delete and execute tasks; each change commits with its event."""

from __future__ import annotations

from handlers.base import ApiHandler, path_id
from service.app.idempotency import Answer
from service.app.validation import EXECUTE_FIELDS, TASK_FIELDS, validate, validate_listing
from service.storage.mongo.store import Session, utcnow


class TasksHandler(ApiHandler):
    """`GET /api/tasks` and `POST /api/tasks`."""

    async def get(self) -> None:
        await self.principal()
        status, limit, after = validate_listing(
            self.get_query_argument("status", None),
            self.get_query_argument("limit", None),
            self.get_query_argument("after", None),
        )
        tasks = await self.ctx.store.list_tasks(status=status, limit=limit, after=after)
        next_cursor = tasks[-1]["id"] if len(tasks) == limit else None
        self.write_json({"tasks": tasks, "next": next_cursor})

    async def post(self) -> None:
        user = await self.principal()
        fields = validate(self.json_body(), TASK_FIELDS, required=("title", "taskType"))

        async def change(session: Session) -> Answer:
            now = utcnow()
            task = await self.ctx.store.create_task(fields, user.user_id, user.name, now, session)
            summary = {"taskId": task["id"], "taskType": task["taskType"], "title": task["title"]}
            await self.emit(user, "task_created", summary, now, session)
            return Answer.json(201, task, location=f"/api/tasks/{task['id']}")

        await self.commit(user, change)


class TaskHandler(ApiHandler):
    """`GET`, `PATCH` and `DELETE /api/tasks/{id}`."""

    async def get(self, raw_id: str) -> None:
        await self.principal()
        self.write_json(await self.ctx.store.get_task(path_id(raw_id)))

    async def patch(self, raw_id: str) -> None:
        user = await self.principal()
        task_id = path_id(raw_id)
        changes = validate(self.json_body(), TASK_FIELDS, partial=True)

        async def change(session: Session) -> Answer:
            now = utcnow()
            task = await self.ctx.store.update_task(task_id, changes, now, session)
            fields = {"taskId": task_id, "taskType": task["taskType"], **changes}
            await self.emit(user, "task_updated", fields, now, session)
            return Answer.json(200, task)

        await self.commit(user, change)

    async def delete(self, raw_id: str) -> None:
        user = await self.principal()
        task_id = path_id(raw_id)

        async def change(session: Session) -> Answer:
            task = await self.ctx.store.delete_task(task_id, session)
            await self.emit(user, "task_deleted", {"taskId": task["id"], "taskType": task["taskType"]}, None, session)
            return Answer(204)

        await self.commit(user, change)


class TaskExecutionHandler(ApiHandler):
    """`POST /api/tasks/{id}/execute`: record a run and tell everyone."""

    async def post(self, raw_id: str) -> None:
        user = await self.principal()
        task_id = path_id(raw_id)
        body = validate(self.json_body(), EXECUTE_FIELDS, required=("resultStatus",))

        async def change(session: Session) -> Answer:
            now = utcnow()
            task = await self.ctx.store.record_execution(task_id, body["resultStatus"], body.get("note"), now, session)
            fields = {
                "taskId": task_id,
                "taskType": task["taskType"],
                "resultStatus": body["resultStatus"],
                "executions": task["executions"],
            }
            await self.emit(user, "task_executed", fields, now, session)
            return Answer.json(200, task)

        await self.commit(user, change)
