"""`Idempotency-Key` on the in-memory unit of work: a repeated request gets the first answer
and no second change; another request under the key, or one still running, is refused; a
change that failed releases its key."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from service.app import tasks
from service.app.idempotency import (
    Answer,
    Change,
    KeyInUse,
    KeyReused,
    commit_once,
    fingerprint,
    key_id,
    parse_key,
)
from service.core.errors import BadMessage, NotFound, StoreUnavailable
from service.core.identity import Principal
from service.core.ports import Transaction
from service.storage.memory import MemoryUnitOfWork

ALICE = Principal(1, "Alice", frozenset({"user"}), 4_000_000_000.0)
BODY = b'{"title": "t", "taskType": "daily"}'
SAME = fingerprint("POST", "/api/tasks", BODY)


async def create(transaction: Transaction) -> Answer:
    task = await tasks.create(transaction, ALICE, {"title": "t", "taskType": "daily"})
    return Answer.json(201, task, location=f"/api/tasks/{task['id']}")


async def commit(storage: MemoryUnitOfWork, change: Change = create, *, key: str | None, user: int = 1) -> Answer:
    return await commit_once(storage, change, key=key, user_id=user, fingerprint=SAME)


@pytest.mark.gen_test
async def test_a_repeated_request_gets_the_first_answer_and_changes_nothing_more() -> None:
    """Same key, same request: the stored answer, marked replayed; one task, one event."""
    storage = MemoryUnitOfWork()
    first = await commit(storage, key="k-1")
    again = await commit(storage, key="k-1")
    assert (again.status, again.body, again.location) == (first.status, first.body, first.location)
    assert not first.replayed and again.replayed
    assert len(storage.tasks) == 1 and [e["type"] for e in storage.events] == ["task_created"]
    assert storage.writes == {True: 1, False: 0}  # a replay is not a write


@pytest.mark.gen_test
async def test_without_a_key_each_request_is_a_change() -> None:
    """No key: two requests, two tasks, two events, nothing remembered."""
    storage = MemoryUnitOfWork()
    await commit(storage, key=None)
    await commit(storage, key=None)
    assert len(storage.tasks) == 2 and len(storage.events) == 2 and storage.keys == {}


@pytest.mark.gen_test
async def test_the_same_key_for_another_request_is_refused() -> None:
    """Another body under a used key: KeyReused (422), and no second change."""
    storage = MemoryUnitOfWork()
    await commit(storage, key="k")
    with pytest.raises(KeyReused):
        await commit_once(storage, create, key="k", user_id=1, fingerprint=fingerprint("POST", "/api/tasks", b"{}"))
    assert len(storage.events) == 1


@pytest.mark.gen_test
async def test_a_key_whose_first_request_still_runs_is_in_use() -> None:
    """A live claim by another request: KeyInUse (409), nothing runs."""
    storage = MemoryUnitOfWork()
    assert await storage.claim_key(key_id(1, "k"), SAME, "other-request", lease_seconds=60) is None
    with pytest.raises(KeyInUse):
        await commit(storage, key="k")
    assert storage.events == [] and storage.tasks == {}


@pytest.mark.gen_test
async def test_a_failed_change_releases_its_key_and_a_retry_runs_again() -> None:
    """NotFound inside the unit: no event, no remembered answer; the retry is a fresh request."""
    storage = MemoryUnitOfWork()

    async def missing(transaction: Transaction) -> Answer:
        return Answer.json(200, await tasks.update(transaction, ALICE, 42, {"title": "x"}))

    for _ in range(2):
        with pytest.raises(NotFound):
            await commit(storage, missing, key="k")
        assert storage.keys == {} and storage.events == []
    assert (await commit(storage, key="k")).status == 201


@pytest.mark.gen_test
async def test_keys_belong_to_their_user() -> None:
    """Another user's request with the same key is its own change."""
    storage = MemoryUnitOfWork()
    await commit(storage, key="shared", user=1)
    second = await commit(storage, key="shared", user=2)
    assert not second.replayed and len(storage.events) == 2


@pytest.mark.gen_test
async def test_a_request_past_its_deadline_answers_unavailable_without_running() -> None:
    """Deadline already passed: StoreUnavailable at once, no claim, and no write recorded (storage was never asked)."""
    storage = MemoryUnitOfWork()
    with pytest.raises(StoreUnavailable):
        await commit_once(storage, create, key="k", user_id=1, fingerprint=SAME, deadline=time.monotonic() - 1)
    assert storage.keys == {} and storage.events == [] and storage.writes == {True: 0, False: 0}


@pytest.mark.parametrize("raw", ["", "x" * 256, "tab\there", "é"])
def test_parse_key_refuses_what_is_not_1_to_255_visible_ascii(raw: str) -> None:
    with pytest.raises(BadMessage):
        parse_key(raw)


def test_parse_key_passes_a_uuid_and_none() -> None:
    key = str(uuid.uuid4())
    assert parse_key(key) == key and parse_key(None) is None


def test_fingerprint_compares_json_bodies_by_value() -> None:
    """Key order and spacing do not make another request; another method or path does."""
    assert fingerprint("POST", "/a", b'{"a":1,"b":2}') == fingerprint("POST", "/a", b'{ "b": 2, "a": 1 }')
    assert fingerprint("POST", "/a", b"{}") != fingerprint("PATCH", "/a", b"{}")
    assert fingerprint("POST", "/a", b"{}") != fingerprint("POST", "/b", b"{}")


@pytest.mark.gen_test
async def test_a_change_that_outlives_the_deadline_is_unavailable_and_releases_its_key() -> None:
    """Storage stalls inside the unit: StoreUnavailable (503), nothing kept, the key free for the retry."""
    storage = MemoryUnitOfWork(timeout_seconds=0.05)

    async def stalled(transaction: Transaction) -> Answer:
        await tasks.create(transaction, ALICE, {"title": "t", "taskType": "daily"})
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with pytest.raises(StoreUnavailable):
        await commit(storage, stalled, key="k")
    assert storage.keys == {} and storage.events == [] and storage.tasks == {}
    assert storage.writes == {True: 0, False: 1}
    assert (await commit(storage, key="k")).status == 201
