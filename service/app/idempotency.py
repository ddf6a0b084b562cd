"""`Idempotency-Key`: a retried POST/PATCH/DELETE gets the first answer instead of a second change.

A key belongs to one user. The first request with it claims it (a pending record with a
lease); its change, its event and its answer then commit in one transaction, so the answer
is remembered exactly when the change happened. A retry with the same request gets that
answer back; one with another method, path or body is refused (422); one that arrives while
the first is still running is told to wait (409). Answers that changed nothing (4xx, 503)
are not remembered: the key is released and a retry runs again. Records expire after 24 h.
The claim, the change and the commit share one deadline, MONGODB_TIMEOUT_MS.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from service.core.errors import BadMessage, ServiceError, StoreUnavailable
from service.core.ports import Transaction, UnitOfWork

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Visible ASCII: a UUID, a ULID or any opaque token a client makes fits.
KEY_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")


class KeyInUse(ServiceError):
    """A request with this key is still running (409); retry shortly."""


class KeyReused(ServiceError):
    """This key was used for a different request (422)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a change request answers: status, JSON body text (None for 204) and `Location`."""

    status: int
    body: str | None = None
    location: str | None = None
    replayed: bool = False

    @classmethod
    def json(cls, status: int, payload: Any, location: str | None = None) -> Answer:
        return cls(status, json.dumps(payload, ensure_ascii=False, separators=(",", ":")), location)

    def record(self) -> dict[str, Any]:
        return {"status": self.status, "body": self.body, "location": self.location}


# A use case's change inside the unit of work, with the answer to remember for its key.
Change = Callable[[Transaction], Awaitable[Answer]]


def parse_key(raw: str | None) -> str | None:
    """The header's key, or None without one.

    Raises:
        BadMessage: empty, longer than 255 characters, or not visible ASCII.
    """
    if raw is None:
        return None
    if not KEY_PATTERN.fullmatch(raw):
        raise BadMessage(
            "invalid Idempotency-Key",
            {HEADER: f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (a UUID, say)"},
        )
    return raw


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same": method, path and body (JSON compared by value)."""
    try:
        canonical = json.dumps(json.loads(body or b"null"), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def key_id(user_id: int | str, key: str) -> str:
    """The record's id: the key within its user's scope (one user cannot replay another's)."""
    return hashlib.sha256(f"{type(user_id).__name__}:{user_id}\n{key}".encode()).hexdigest()


async def commit_once(
    storage: UnitOfWork,
    change: Change,
    *,
    key: str | None,
    user_id: int | str,
    fingerprint: str,
    deadline: float | None = None,
    single_write: bool = False,
) -> Answer:
    """Run `change` in one unit of work, once per key: the first answer for a repeated request.

    The claim, the transaction and its commit share one deadline (MONGODB_TIMEOUT_MS from
    `deadline`'s start), so a request answers 503 within it, not after a budget per step. A
    request whose deadline passed before it reached MongoDB (its process was paused, or it
    waited behind others) is not run late: it answers 503 at once and its client retries.

    Args:
        deadline: `time.monotonic()` by which to answer; MONGODB_TIMEOUT_MS from now if None.
        single_write: `change` is one write, atomic by itself: without a key it runs outside a
            transaction (`UnitOfWork.run_alone`); with one it still commits with the key's record.

    Raises:
        KeyInUse: the key's first request is still running.
        KeyReused: the key was used for another request.
        StoreUnavailable: MongoDB did not answer in time (the key is released, in the
            background, when nothing changed).
    """
    left = storage.timeout_seconds if deadline is None else deadline - time.monotonic()
    if left <= 0:
        raise StoreUnavailable("the request's deadline passed before MongoDB was asked")
    try:
        async with storage.deadline(left):
            answer = await _commit_once(
                storage, change, key=key, user_id=user_id, fingerprint=fingerprint, single_write=single_write
            )
    except StoreUnavailable:
        storage.record_write(ok=False)
        raise
    if not answer.replayed:
        storage.record_write(ok=True)
    return answer


async def _commit_once(
    storage: UnitOfWork, change: Change, *, key: str | None, user_id: int | str, fingerprint: str, single_write: bool
) -> Answer:
    if key is None:
        return await (storage.run_alone(change) if single_write else storage.run(change))
    record_id = key_id(user_id, key)
    owner = uuid.uuid4().hex
    lease = 2 * storage.timeout_seconds + 1
    lease_until = time.monotonic() + lease
    held = await storage.claim_key(record_id, fingerprint, owner, lease_seconds=lease)
    if held is not None:
        if held.get("fingerprint") != fingerprint:
            raise KeyReused("this Idempotency-Key was used for a different request (method, path or body)")
        if held.get("state") != "done":
            raise KeyInUse("a request with this Idempotency-Key is still in progress; retry shortly")
        answer = held["answer"]
        return Answer(answer["status"], answer.get("body"), answer.get("location"), replayed=True)

    async def change_and_record(transaction: Transaction) -> Answer:
        answer = await change(transaction)
        if not await transaction.complete_key(record_id, owner, answer.record()):
            # Our lease ran out and a retry took the key over: it will make the change.
            raise KeyInUse("a request with this Idempotency-Key is still in progress; retry shortly")
        return answer

    try:
        return await storage.run(change_and_record)
    except BaseException:
        storage.release_key(record_id, owner, lease_until)
        raise
