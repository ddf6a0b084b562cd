"""Nothing acknowledged is lost or doubled: crashes of the service and of MongoDB with real
processes, retries after a lost answer, and the `Idempotency-Key` rules.

The crash rounds are bench/crash.py's, smaller; the bench reports the same counts.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.crash import sigkill_rounds, sigstop_rounds
from harness.clients import Service, wait_bound
from service.app.idempotency import fingerprint, key_id
from service.core.config import load_settings
from service.storage.mongo.embedded import EmbeddedMongo
from service.storage.mongo.store import MongoStore

NEW_TASK = {"title": "تقرير يومي", "taskType": "daily"}


def key_header(key: str | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key or str(uuid.uuid4())}


async def events_of(store: MongoStore, **query: Any) -> list[dict[str, Any]]:
    return await store.events.find(query).to_list()


# -- crashes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "synced"), [("", True), ("0", False)])
def test_embedded_mongodb_syncs_each_commit_unless_turned_off(tmp_path: Path, setting: str, synced: bool) -> None:
    """The embedded server runs with --sync-on-commit by default; EMBEDDED_SYNC_ON_COMMIT=0 drops it."""
    settings = load_settings({"DATA_DIR": str(tmp_path), "EMBEDDED_SYNC_ON_COMMIT": setting})
    assert settings.embedded_sync_on_commit is synced
    mongo = EmbeddedMongo(tmp_path / "mongo", sync_on_commit=settings.embedded_sync_on_commit)
    mongo.start()
    try:
        arguments = Path(f"/proc/{mongo.pid}/cmdline").read_bytes().split(b"\0")
        assert (b"--sync-on-commit" in arguments) is synced
    finally:
        mongo.stop()


@pytest.mark.timeout(240)
def test_sigkilled_service_loses_no_acknowledged_write_and_no_event(tmp_path: Path) -> None:
    """Three SIGKILLs of the service and its embedded MongoDB at random moments: every 2xx is stored
    with exactly one event, retries double nothing, and a resuming client gets each event once, in order."""
    audit = asyncio.run(sigkill_rounds(tmp_path, 3, random.Random(), (5, 40)))
    assert audit.problems() == {}, audit
    assert audit.acked > 0 and audit.stored_events >= audit.acked, audit


@pytest.mark.timeout(240)
def test_mongodb_stopped_mid_request_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """MongoDB SIGSTOPped while requests are in flight, then continued, twice: the same guarantees hold."""
    audit = asyncio.run(sigstop_rounds(tmp_path, 2, random.Random(), (5, 40)))
    assert audit.problems() == {}, audit
    assert audit.retries > 0, "no request failed while MongoDB was stopped"


@pytest.mark.gen_test(timeout=30)
async def test_retry_after_a_lost_answer_makes_one_task_and_one_event(service: Service) -> None:
    """A client that hangs up before reading the answer, then retries with the same key, gets one task."""
    token, key = service.token(), str(uuid.uuid4())
    body = json.dumps({"title": "answer lost", "taskType": "daily"}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nIdempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()  # gone before the answer
    store = service.ctx.store
    stored: list[dict[str, Any]] = []

    async def find() -> None:
        stored[:] = await store.tasks.find({"title": "answer lost"}).to_list()

    deadline = asyncio.get_running_loop().time() + wait_bound(10)
    while not stored:
        assert asyncio.get_running_loop().time() < deadline, "the first request never made its change"
        await find()
        await asyncio.sleep(0.02)
    response = await service.request("POST", "/api/tasks", json.loads(body), token=token, headers=key_header(key))
    while response.code == 409:  # the first one may still be committing
        response = await service.request("POST", "/api/tasks", json.loads(body), token=token, headers=key_header(key))
    assert response.code == 201, response.body
    assert json.loads(response.body)["id"] == stored[0]["_id"]
    await find()
    assert len(stored) == 1
    assert len(await events_of(store, type="task_created", taskId=stored[0]["_id"])) == 1


# -- Idempotency-Key ----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_same_key_and_body_returns_the_first_answer_without_a_second_event(service: Service) -> None:
    """The retry gets the same status, body and Location, marked as replayed; one task, one event."""
    token, headers = service.token(), key_header()
    first = await service.request("POST", "/api/tasks", NEW_TASK, token=token, headers=headers)
    again = await service.request("POST", "/api/tasks", NEW_TASK, token=token, headers=headers)
    assert (first.code, again.code) == (201, 201)
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    task_id = json.loads(first.body)["id"]
    assert await service.ctx.store.tasks.count_documents({"title": NEW_TASK["title"]}) == 1
    assert len(await events_of(service.ctx.store, type="task_created", taskId=task_id)) == 1


@pytest.mark.gen_test(timeout=30)
async def test_repeated_execute_counts_one_execution(service: Service) -> None:
    """`POST /execute` retried with its key records one run and emits one `task_executed`."""
    token = service.token()
    task = json.loads((await service.request("POST", "/api/tasks", NEW_TASK, token=token)).body)
    headers, path = key_header(), f"/api/tasks/{task['id']}/execute"
    answers = [
        await service.request("POST", path, {"resultStatus": "failed"}, token=token, headers=headers) for _ in "12"
    ]
    assert [json.loads(a.body)["executions"] for a in answers] == [1, 1]
    assert len(await events_of(service.ctx.store, type="task_executed", taskId=task["id"])) == 1


@pytest.mark.gen_test(timeout=30)
async def test_same_key_with_another_body_gets_422(service: Service) -> None:
    """Reusing a key for a different request is refused with a JSON error and changes nothing."""
    token, headers = service.token(), key_header()
    await service.request("POST", "/api/tasks", NEW_TASK, token=token, headers=headers)
    other = await service.request("POST", "/api/tasks", {**NEW_TASK, "title": "آخر"}, token=token, headers=headers)
    assert other.code == 422
    body = json.loads(other.body)
    assert body["error"] == "unprocessable_entity" and "Idempotency-Key" in body["message"]
    assert await service.ctx.store.tasks.count_documents({"title": "آخر"}) == 0


@pytest.mark.gen_test(timeout=30)
async def test_same_key_on_another_path_gets_422(service: Service) -> None:
    """The key names one request: the same body sent to another path is refused."""
    token, headers = service.token(), key_header()
    await service.request("POST", "/api/tasks", NEW_TASK, token=token, headers=headers)
    schedule = {"name": "x", "cron": "0 9 * * 1", "taskType": "daily"}
    other = await service.request("POST", "/api/schedules", schedule, token=token, headers=headers)
    assert other.code == 422


@pytest.mark.gen_test(timeout=30)
async def test_key_of_a_request_in_flight_gets_409(service: Service) -> None:
    """While the key's first request holds it, a second one is told to retry later (409, Retry-After)."""
    token, key = service.token(sub=5), str(uuid.uuid4())
    store = service.ctx.store
    # What a request that is still running leaves behind: a pending claim with a live lease.
    same = fingerprint("POST", "/api/tasks", json.dumps(NEW_TASK).encode())
    assert await store.claim_key(key_id(5, key), same, "another-request", lease_seconds=60) is None
    response = await service.request("POST", "/api/tasks", NEW_TASK, token=token, headers=key_header(key))
    assert response.code == 409
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["error"] == "conflict"


@pytest.mark.gen_test(timeout=30)
async def test_key_of_a_dead_request_is_taken_over_after_its_lease(service: Service) -> None:
    """A claim whose request died (lease over) does not block the key: the retry makes the change once."""
    token, key = service.token(sub=6), str(uuid.uuid4())
    store = service.ctx.store
    same = fingerprint("POST", "/api/tasks", json.dumps(NEW_TASK).encode())
    assert await store.claim_key(key_id(6, key), same, "dead-request", lease_seconds=-1) is None
    response = await service.request("POST", "/api/tasks", NEW_TASK, token=token, headers=key_header(key))
    assert response.code == 201, response.body
    assert len(await events_of(store, type="task_created", taskId=json.loads(response.body)["id"])) == 1


@pytest.mark.gen_test(timeout=30)
async def test_keys_belong_to_one_user(service: Service) -> None:
    """Another user's request with the same key is a request of its own, not a replay."""
    headers = key_header()
    first = await service.request("POST", "/api/tasks", NEW_TASK, token=service.token(sub=1), headers=headers)
    second = await service.request("POST", "/api/tasks", NEW_TASK, token=service.token(sub=2), headers=headers)
    assert (first.code, second.code) == (201, 201)
    assert json.loads(first.body)["id"] != json.loads(second.body)["id"]


@pytest.mark.gen_test(timeout=30)
async def test_failed_request_releases_its_key(service: Service) -> None:
    """An answer that changed nothing (404) is not remembered: the key's retry runs again."""
    token, headers = service.token(), key_header()
    missing = await service.request("DELETE", "/api/tasks/999999", token=token, headers=headers)
    assert missing.code == 404
    again = await service.request("DELETE", "/api/tasks/999999", token=token, headers=headers)
    assert again.code == 404 and "Idempotent-Replayed" not in again.headers


@pytest.mark.gen_test(timeout=30)
async def test_replayed_delete_answers_204_with_one_event(service: Service) -> None:
    """DELETE retried with its key answers 204 again (not 404) and emits one `task_deleted`."""
    token, headers = service.token(), key_header()
    task = json.loads((await service.request("POST", "/api/tasks", NEW_TASK, token=token)).body)
    codes = [
        (await service.request("DELETE", f"/api/tasks/{task['id']}", token=token, headers=headers)).code for _ in "12"
    ]
    assert codes == [204, 204]
    assert len(await events_of(service.ctx.store, type="task_deleted", taskId=task["id"])) == 1


@pytest.mark.parametrize("bad", ["", "has space", "x" * 256, "é-accent", "tab\there"])
@pytest.mark.gen_test(timeout=30)
async def test_bad_idempotency_key_gets_400(service: Service, bad: str) -> None:
    """An empty, over-long or non-ASCII key is refused, naming the header, and nothing is created."""
    token = service.token()
    raw = {"Idempotency-Key": bad.encode("utf-8").decode("latin-1")}
    response = await service.request("POST", "/api/tasks", {**NEW_TASK, "title": "bad key"}, token=token, headers=raw)
    assert response.code == 400, response.body
    assert "Idempotency-Key" in json.loads(response.body)["fields"]
    assert await service.ctx.store.tasks.count_documents({"title": "bad key"}) == 0


@pytest.mark.gen_test(timeout=30)
async def test_each_change_event_has_its_own_increasing_id(service: Service) -> None:
    """Events committed in transactions keep unique ids in commit order on the stream."""
    token = service.token()
    client = await service.websocket({"token": token})
    await client.recv_type("connected")
    for n in range(5):
        response = await service.request("POST", "/api/tasks", {**NEW_TASK, "title": f"t{n}"}, token=token)
        assert response.code == 201
    ids = [(await client.recv_type("task_created"))["id"] for _ in range(5)]
    await client.close()
    assert ids == sorted(set(ids)) and len(ids) == 5


@pytest.mark.gen_test(timeout=30)
async def test_openapi_documents_the_key_on_every_change(service: Service) -> None:
    """Every operation that changes tasks, schedules or events takes the header and may answer 409 and 422."""
    document = json.loads((await service.request("GET", "/api/openapi.json")).body)
    changes = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in ("post", "patch", "delete") and path.startswith(("/api/tasks", "/api/schedules", "/api/events"))
    ]
    assert len(changes) == 8
    for path, method, op in changes:
        names = [param["name"] for param in op["parameters"]]
        assert "Idempotency-Key" in names, (method, path)
        assert {"409", "422"} <= set(op["responses"]), (method, path)
