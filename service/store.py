"""MongoDB repository (PyMongo async): tasks, schedules, events, counters, tickets and
idempotency keys.

Every driver error that means "MongoDB is not reachable" becomes `StoreUnavailable`, so
handlers answer 503 without knowing PyMongo. Writes wait for a majority (unless the URI sets
`w`), and a REST change commits together with its event in one transaction (`transaction`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pymongo
from bson import Timestamp
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError
from pymongo.uri_parser import parse_uri

from service.config import Settings
from service.errors import BadMessage, ConfigError, NotFound, StoreUnavailable
from service.events import iso

log = logging.getLogger(__name__)

Document = dict[str, Any]
Session = AsyncClientSession
T = TypeVar("T")
INSERTS_ONLY = [{"$match": {"operationType": "insert"}}]
KEY_TTL_SECONDS = 24 * 3600  # how long an Idempotency-Key is remembered
# A transaction we gave up on holds its documents until MongoDB reaps it
# (transactionLifetimeLimitSeconds, 60 s by default); we kill it as soon as MongoDB answers.
# A statement of it still queued when MongoDB resumes may reopen it: kill it again, spaced out.
ABANDONED_KILL_DELAYS = (1.0, 2.0, 4.0, 8.0, 0.0)
ABANDONED_RETRY_SECONDS = 60.0


@contextlib.asynccontextmanager
async def _available(bound: float | None = None) -> AsyncIterator[None]:
    """Bound what runs inside by `bound` seconds, all retries included (pymongo.timeout), and
    turn every "MongoDB is not there" into `StoreUnavailable`."""
    try:
        with pymongo.timeout(bound) if bound else contextlib.nullcontext():
            yield
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"MongoDB unavailable: {type(exc).__name__}") from exc
    except PyMongoError as exc:
        if exc.timeout:  # out of time on the server (ExecutionTimeout)
            raise StoreUnavailable(f"MongoDB did not answer in time: {type(exc).__name__}") from exc
        raise


def write_concern_options(uri: str) -> dict[str, Any]:
    """`w: majority` unless the URI chooses: an acknowledged write then survives a failover."""
    return {} if "w" in parse_uri(uri, validate=False)["options"] else {"w": "majority"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def task_view(doc: Mapping[str, Any]) -> Document:
    """A task as the API returns it."""
    return {
        "id": doc["_id"],
        "title": doc["title"],
        "taskType": doc["taskType"],
        "status": doc.get("status", "pending"),
        "scheduleId": doc.get("scheduleId"),
        "userId": doc["userId"],
        "userName": doc["userName"],
        "createdAt": iso(doc["createdAt"]),
        "updatedAt": iso(doc["updatedAt"]),
        "executions": doc.get("executions", 0),
        "lastResultStatus": doc.get("lastResultStatus"),
    }


def schedule_view(doc: Mapping[str, Any]) -> Document:
    """A schedule as the API returns it."""
    return {
        "id": doc["_id"],
        "name": doc["name"],
        "cron": doc["cron"],
        "taskType": doc["taskType"],
        "enabled": doc.get("enabled", True),
        "createdAt": iso(doc["createdAt"]),
        "updatedAt": iso(doc["updatedAt"]),
    }


class MongoStore:
    """The service's only door to MongoDB."""

    def __init__(self, settings: Settings, uri: str) -> None:
        self._settings = settings
        self.client: AsyncMongoClient[Document] = AsyncMongoClient(
            uri,
            tz_aware=True,
            serverSelectionTimeoutMS=settings.mongodb_timeout_ms,
            connectTimeoutMS=settings.mongodb_timeout_ms,
            appname="realtime-events",
            **write_concern_options(uri),
        )
        self.db = self.client[settings.mongodb_db]
        self.tasks = self.db["tasks"]
        self.schedules = self.db["schedules"]
        self.events = self.db["events"]
        self.counters = self.db["counters"]
        self.tickets = self.db["tickets"]
        self.keys = self.db["idempotency_keys"]
        self.timeout_seconds = settings.mongodb_timeout_ms / 1000
        self._reapers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Check the deployment and create indexes.

        Raises:
            ConfigError: MongoDB is not a replica set (change streams need one).
            StoreUnavailable: MongoDB did not answer.
        """
        async with _available():  # unbounded: building an index on a large collection takes a while
            hello = await self.client.admin.command("hello")
            if not hello.get("setName"):
                raise ConfigError(
                    "MONGODB_URI: MongoDB is not a replica set; change streams need one "
                    "(a single-node replica set is enough: mongod --replSet rs0, then rs.initiate())"
                )
            ttl = self._settings.history_ttl_seconds
            await self.events.create_index([("createdAt", ASCENDING)], expireAfterSeconds=ttl)
            await self.tickets.create_index([("expiresAt", ASCENDING)], expireAfterSeconds=0)
            await self.tasks.create_index([("status", ASCENDING), ("_id", DESCENDING)])
            await self.keys.create_index([("createdAt", ASCENDING)], expireAfterSeconds=KEY_TTL_SECONDS)

    async def close(self) -> None:
        self._closed = True  # PyMongo may turn a reaper's cancellation into an error it retries
        for reaper in list(self._reapers):
            reaper.cancel()
        await asyncio.gather(*self._reapers, return_exceptions=True)
        await self.client.close()

    async def ping(self) -> bool:
        """Whether MongoDB answers right now."""
        try:
            await self.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def transaction(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """Run `work` in one multi-document transaction and commit it; its result.

        Transient conflicts are retried, but everything (retries and commit included) is
        bounded by MONGODB_TIMEOUT_MS, after which the caller gets `StoreUnavailable`.

        Raises:
            StoreUnavailable: MongoDB did not answer or commit in time (the commit may still
                land: a retry with the same Idempotency-Key finds out).
        """
        async with _available(self.timeout_seconds), self.client.start_session() as session:
            try:
                return await session.with_transaction(work)
            except (NotFound, BadMessage):
                raise  # refused before it wrote anything, and aborted
            except BaseException:
                # It may have written, and its abort may not have reached MongoDB (the driver
                # does not say): make sure it does not keep holding what it wrote.
                self._kill_abandoned(session.session_id)
                raise

    def _kill_abandoned(self, session_id: Mapping[str, Any]) -> None:
        """Abort, in the background, a transaction that failed after it may have written.

        MongoDB may still hold it open (when it was stopped, its statements run on resume),
        and then every write to the same documents waits for it: without this, for a minute.
        """

        async def kill() -> None:
            deadline = time.monotonic() + ABANDONED_RETRY_SECONDS
            kills = 0
            while kills < len(ABANDONED_KILL_DELAYS) and time.monotonic() < deadline and not self._closed:
                try:
                    with pymongo.timeout(self.timeout_seconds):
                        await self.client.admin.command("killSessions", [dict(session_id)])
                except PyMongoError:
                    await asyncio.sleep(0.25)
                    continue
                log.debug("killed abandoned session (kill %d)", kills + 1)
                await asyncio.sleep(ABANDONED_KILL_DELAYS[kills])
                kills += 1

        # A fresh context: this one carries the failed request's pymongo.timeout deadline.
        reaper = asyncio.get_running_loop().create_task(
            kill(), name="kill-abandoned-transaction", context=contextvars.Context()
        )
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    async def next_id(self, name: str) -> int:
        """The next integer id of a sequence (atomic `$inc`).

        Never inside a request's transaction: there, every concurrent create would conflict
        on this one document and be retried; outside, an aborted transaction only leaves a
        gap in the ids, which are unique, not dense.
        """
        async with _available(self.timeout_seconds):
            doc = await self.counters.find_one_and_update(
                {"_id": name}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
            )
        assert doc is not None  # upsert with AFTER always returns the document
        return int(doc["seq"])

    # -- events ---------------------------------------------------------------------------

    async def publish(self, doc: Document, session: Session | None = None) -> None:
        """Insert an event; the change stream delivers it to every process.

        At most one per transaction: an event's id is its commit's oplog position.
        """
        async with _available(self.timeout_seconds):
            await self.events.insert_one(doc, session=session)

    async def watch_events(
        self,
        *,
        resume_after: Mapping[str, Any] | None = None,
        start_at: Timestamp | None = None,
        batch_size: int | None = None,
    ) -> AsyncChangeStream[Document]:
        """A change stream of inserts into `events`, from now, a resume token or a position.

        Args:
            batch_size: documents per round trip; large for replays that read history.
        """
        async with _available():  # unbounded: the stream it opens lives on
            return await self.events.watch(
                INSERTS_ONLY, resume_after=resume_after, start_at_operation_time=start_at, batch_size=batch_size
            )

    # -- tasks ----------------------------------------------------------------------------

    async def create_task(
        self,
        fields: Mapping[str, Any],
        user_id: int | str,
        user_name: str,
        now: datetime,
        session: Session | None = None,
    ) -> Document:
        doc = {
            "_id": await self.next_id("tasks"),
            **fields,
            "status": "pending",
            "userId": user_id,
            "userName": user_name,
            "createdAt": now,
            "updatedAt": now,
            "executions": 0,
            "lastResultStatus": None,
        }
        async with _available(self.timeout_seconds):
            await self.tasks.insert_one(doc, session=session)
        return task_view(doc)

    async def list_tasks(self, *, status: str | None, limit: int, after: int | None) -> list[Document]:
        query: Document = {}
        if status:
            query["status"] = status
        if after is not None:
            query["_id"] = {"$lt": after}
        async with _available(self.timeout_seconds):
            cursor = self.tasks.find(query).sort("_id", DESCENDING).limit(limit)
            return [task_view(doc) async for doc in cursor]

    async def get_task(self, task_id: int) -> Document:
        async with _available(self.timeout_seconds):
            doc = await self.tasks.find_one({"_id": task_id})
        if doc is None:
            raise NotFound(f"task {task_id}")
        return task_view(doc)

    async def update_task(
        self, task_id: int, changes: Mapping[str, Any], now: datetime, session: Session | None = None
    ) -> Document:
        async with _available(self.timeout_seconds):
            doc = await self.tasks.find_one_and_update(
                {"_id": task_id},
                {"$set": {**changes, "updatedAt": now}},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
        if doc is None:
            raise NotFound(f"task {task_id}")
        return task_view(doc)

    async def record_execution(
        self, task_id: int, result_status: str, note: str | None, now: datetime, session: Session | None = None
    ) -> Document:
        async with _available(self.timeout_seconds):
            doc = await self.tasks.find_one_and_update(
                {"_id": task_id},
                {
                    "$set": {"status": result_status, "lastResultStatus": result_status, "updatedAt": now},
                    "$inc": {"executions": 1},
                    "$push": {
                        "history": {
                            "$each": [{"at": now, "resultStatus": result_status, "note": note}],
                            "$slice": -50,
                        }
                    },
                },
                return_document=ReturnDocument.AFTER,
                session=session,
            )
        if doc is None:
            raise NotFound(f"task {task_id}")
        return task_view(doc)

    async def delete_task(self, task_id: int, session: Session | None = None) -> Document:
        async with _available(self.timeout_seconds):
            doc = await self.tasks.find_one_and_delete({"_id": task_id}, session=session)
        if doc is None:
            raise NotFound(f"task {task_id}")
        return task_view(doc)

    # -- schedules ------------------------------------------------------------------------

    async def create_schedule(
        self, fields: Mapping[str, Any], now: datetime, session: Session | None = None
    ) -> Document:
        doc = {
            "_id": await self.next_id("schedules"),
            "enabled": True,
            **fields,
            "createdAt": now,
            "updatedAt": now,
        }
        async with _available(self.timeout_seconds):
            await self.schedules.insert_one(doc, session=session)
        return schedule_view(doc)

    async def list_schedules(self) -> list[Document]:
        async with _available(self.timeout_seconds):
            cursor = self.schedules.find({}).sort("_id", ASCENDING).limit(1000)
            return [schedule_view(doc) async for doc in cursor]

    async def get_schedule(self, schedule_id: int) -> Document:
        async with _available(self.timeout_seconds):
            doc = await self.schedules.find_one({"_id": schedule_id})
        if doc is None:
            raise NotFound(f"schedule {schedule_id}")
        return schedule_view(doc)

    async def update_schedule(
        self, schedule_id: int, changes: Mapping[str, Any], now: datetime, session: Session | None = None
    ) -> Document:
        async with _available(self.timeout_seconds):
            doc = await self.schedules.find_one_and_update(
                {"_id": schedule_id},
                {"$set": {**changes, "updatedAt": now}},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
        if doc is None:
            raise NotFound(f"schedule {schedule_id}")
        return schedule_view(doc)

    async def delete_schedule(self, schedule_id: int, session: Session | None = None) -> Document:
        async with _available(self.timeout_seconds):
            doc = await self.schedules.find_one_and_delete({"_id": schedule_id}, session=session)
        if doc is None:
            raise NotFound(f"schedule {schedule_id}")
        return schedule_view(doc)

    # -- tickets (auth.TicketStore) -------------------------------------------------------

    async def save_ticket(self, ticket_hash: str, principal: dict[str, Any], expires_at: float) -> None:
        async with _available(self.timeout_seconds):
            await self.tickets.insert_one(
                {
                    "_id": ticket_hash,
                    "principal": principal,
                    "expiresAt": datetime.fromtimestamp(expires_at, UTC),
                }
            )

    async def take_ticket(self, ticket_hash: str) -> dict[str, Any] | None:
        """Delete and return a live ticket: a ticket can be taken only once."""
        async with _available(self.timeout_seconds):
            doc = await self.tickets.find_one_and_delete({"_id": ticket_hash, "expiresAt": {"$gt": utcnow()}})
        return None if doc is None else dict(doc["principal"])

    # -- idempotency keys (service.idempotency) -------------------------------------------

    async def claim_key(self, key_id: str, fingerprint: str, owner: str, lease_seconds: float) -> Document | None:
        """Take a key for one request; None when taken, else the record that holds it.

        A pending record whose lease ran out (its request died) is taken over.
        """
        now = utcnow()
        lease = {"state": "pending", "owner": owner, "leaseUntil": now + timedelta(seconds=lease_seconds)}
        async with _available(self.timeout_seconds):
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
        async with _available(self.timeout_seconds):
            result = await self.keys.update_one(
                {"_id": key_id, "owner": owner, "state": "pending"},
                {"$set": {"state": "done", "answer": dict(answer)}, "$unset": {"leaseUntil": ""}},
                session=session,
            )
        return result.modified_count == 1

    async def release_key(self, key_id: str, owner: str) -> None:
        """Forget a key whose request changed nothing, so a retry runs again (best effort)."""
        with contextlib.suppress(PyMongoError):
            with pymongo.timeout(self.timeout_seconds):
                await self.keys.delete_one({"_id": key_id, "owner": owner, "state": "pending"})
