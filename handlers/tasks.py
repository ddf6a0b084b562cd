"""`/api/tasks`: list, create, read, change, delete and execute tasks (`service.app.tasks`,
where each change writes its event); this module only speaks HTTP."""

from __future__ import annotations

from handlers.base import ApiHandler, path_id
from service.app import tasks
from service.app.idempotency import Answer
from service.app.validation import EXECUTE_FIELDS, TASK_FIELDS, validate, validate_listing
from service.core.ports import Transaction


class TasksHandler(ApiHandler):
    """`GET /api/tasks` and `POST /api/tasks`."""

    async def get(self) -> None:
        await self.principal()
        status, limit, after = validate_listing(
            self.get_query_argument("status", None),
            self.get_query_argument("limit", None),
            self.get_query_argument("after", None),
        )
        self.write_json(await tasks.listing(self.ctx.unit_of_work, status=status, limit=limit, after=after))

    async def post(self) -> None:
        user = await self.principal()
        fields = validate(self.json_body(), TASK_FIELDS, required=("title", "taskType"))

        async def change(transaction: Transaction) -> Answer:
            task = await tasks.create(transaction, user, fields)
            return Answer.json(201, task, location=f"/api/tasks/{task['id']}")

        await self.commit(user, change)


class TaskHandler(ApiHandler):
    """`GET`, `PATCH` and `DELETE /api/tasks/{id}`."""

    async def get(self, raw_id: str) -> None:
        await self.principal()
        self.write_json(await tasks.get(self.ctx.unit_of_work, path_id(raw_id)))

    async def patch(self, raw_id: str) -> None:
        user = await self.principal()
        task_id = path_id(raw_id)
        changes = validate(self.json_body(), TASK_FIELDS, partial=True)

        async def change(transaction: Transaction) -> Answer:
            return Answer.json(200, await tasks.update(transaction, user, task_id, changes))

        await self.commit(user, change)

    async def delete(self, raw_id: str) -> None:
        user = await self.principal()
        task_id = path_id(raw_id)

        async def change(transaction: Transaction) -> Answer:
            await tasks.delete(transaction, user, task_id)
            return Answer(204)

        await self.commit(user, change)


class TaskExecutionHandler(ApiHandler):
    """`POST /api/tasks/{id}/execute`: record a run and tell everyone."""

    async def post(self, raw_id: str) -> None:
        user = await self.principal()
        task_id = path_id(raw_id)
        body = validate(self.json_body(), EXECUTE_FIELDS, required=("resultStatus",))

        async def change(transaction: Transaction) -> Answer:
            task = await tasks.execute(transaction, user, task_id, body["resultStatus"], body.get("note"))
            return Answer.json(200, task)

        await self.commit(user, change)
