"""The `idempotency_keys` collection: the storage half of Idempotency-Key (claim, complete,
release); what a key means to a request is `service.app.idempotency`."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pymongo
from pymongo.errors import DuplicateKeyError, PyMongoError

from service.core.config import Settings
from service.storage.mongo.client import Document, MongoBase, Session, available, utcnow

log = logging.getLogger(__name__)

KEY_TTL_SECONDS = 24 * 3600  # how long an Idempotency-Key is remembered


class MongoKeys(MongoBase):
    """Idempotency keys: one request holds a key (a lease), then stores its answer or lets go."""

    def __init__(self, settings: Settings, uri: str) -> None:
        super().__init__(settings, uri)
        self.keys = self.db["idempotency_keys"]
        self._releases: set[asyncio.Task[None]] = set()  # awaited by `close`: a drain releases its keys

    async def create_indexes(self) -> None:
        await super().create_indexes()
        await self.ttl_index(self.keys, "createdAt", KEY_TTL_SECONDS, "KEY_TTL_SECONDS")

    async def close(self) -> None:
        """Release the keys of failed requests (each within its lease), then close."""
        await asyncio.gather(*self._releases, return_exceptions=True)
        await super().close()

    async def claim_key(self, key_id: str, fingerprint: str, owner: str, lease_seconds: float) -> Document | None:
        """Take a key for one request; None when taken, else the record that holds it.

        A pending record whose lease ran out (its request died) is taken over.
        """
        now = utcnow()
        lease = {"state": "pending", "owner": owner, "leaseUntil": now + timedelta(seconds=lease_seconds)}
        async with available(self.timeout_seconds):
            try:
                await self.keys.insert_one({"_id": key_id, "fingerprint": fingerprint, "createdAt": now, **lease})
                return None
            except DuplicateKeyError:
                pass
            taken = await self.keys.find_one_and_update(
                {"_id": key_id, "fingerprint": fingerprint, "state": "pending", "leaseUntil": {"$lt": now}},
                {"$set": lease},
            )
            if taken is not None:
                return None
            held = await self.keys.find_one({"_id": key_id})
        # Gone between the two reads (expired): report it held; the client's retry claims it.
        return held if held is not None else {"_id": key_id, "fingerprint": fingerprint, **lease}

    async def complete_key(self, key_id: str, owner: str, answer: Mapping[str, Any], session: Session) -> bool:
        """Store a request's answer under its key, in the request's transaction; False if it lost the key."""
        async with available(self.timeout_seconds):
            result = await self.keys.update_one(
                {"_id": key_id, "owner": owner, "state": "pending"},
                {"$set": {"state": "done", "answer": dict(answer)}, "$unset": {"leaseUntil": ""}},
                session=session,
            )
        return result.modified_count == 1

    def release_key(self, key_id: str, owner: str, lease_until: float) -> None:
        """Forget, in the background, a key whose request did not complete, so a retry runs again.

        The request answers at once; this retries until it worked or the lease ran out (then a
        retry takes the key over anyway), and `close` waits for it: a draining process does not
        leave a key that answers 409 to the client's retry.
        """

        async def release() -> None:
            while True:
                left = lease_until - time.monotonic()
                if left <= 0:
                    log.warning("idempotency key not released before its lease ran out")
                    return
                try:
                    with pymongo.timeout(min(left, self.timeout_seconds)):
                        await self.keys.delete_one({"_id": key_id, "owner": owner, "state": "pending"})
                    return
                except PyMongoError:
                    await asyncio.sleep(min(0.25, max(0.0, lease_until - time.monotonic())))

        # A fresh context: this one carries the failed request's pymongo.timeout deadline.
        task = asyncio.get_running_loop().create_task(
            release(), name="release-idempotency-key", context=contextvars.Context()
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
