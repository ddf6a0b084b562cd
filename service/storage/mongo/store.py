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
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, DeleteOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.uri_parser import parse_uri

from service.core.config import Settings
from service.core.errors import BadMessage, ConfigError, NotFound, StoreFull, StoreUnavailable
from service.core.events import event_document, iso
from service.core.schema import TransportName

log = logging.getLogger(__name__)

Document = dict[str, Any]
Session = AsyncClientSession
T = TypeVar("T")
INSERTS_ONLY = [{"$match": {"operationType": "insert"}}]
KEY_TTL_SECONDS = 24 * 3600  # how long an Idempotency-Key is remembered
POSITION_TTL_MARGIN = 3600  # saved stream positions are kept this much longer than events
INDEX_CONFLICT_CODES = frozenset({85, 86})  # IndexOptionsConflict, IndexKeySpecsConflict
# A transaction we gave up on holds its documents until MongoDB reaps it
# (transactionLifetimeLimitSeconds, 60 s by default); we kill it as soon as MongoDB answers.
# A statement of it still queued when MongoDB resumes may reopen it: kill it again, spaced out.
ABANDONED_KILL_DELAYS = (1.0, 2.0, 4.0, 8.0, 0.0)
ABANDONED_RETRY_SECONDS = 60.0
INTERNAL_ERROR, OUT_OF_DISK_SPACE = 1, 14031  # server error codes that mean "failed, retry later"


@contextlib.asynccontextmanager
async def _available(bound: float | None = None) -> AsyncIterator[None]:
    """Bound what runs inside by `bound` seconds, all retries included (pymongo.timeout), and
    turn every "MongoDB is not there" (or failed, or full) into `StoreUnavailable`."""
    try:
        with pymongo.timeout(bound) if bound else contextlib.nullcontext():
            yield
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"MongoDB unavailable: {type(exc).__name__}") from exc
    except PyMongoError as exc:
        if exc.timeout:  # out of time on the server (ExecutionTimeout)
            raise StoreUnavailable(f"MongoDB did not answer in time: {type(exc).__name__}") from exc
        if isinstance(exc, OperationFailure) and exc.code == OUT_OF_DISK_SPACE:
            raise StoreFull("MongoDB is out of disk space") from exc
        if isinstance(exc, OperationFailure) and exc.code == INTERNAL_ERROR:
            # SecantusDB after a WiredTiger panic (a full disk): every command fails until the
            # embedded server's watchdog restarts it. Worth a retry, never a bare 500.
            raise StoreUnavailable("MongoDB failed: InternalError") from exc
        raise


async def _ttl_of(collection: AsyncCollection[Document], field: str) -> float | None:
    """`expireAfterSeconds` of the single-field index on `field`; None when there is none."""
    async for index in await collection.list_indexes():
        if dict(index["key"]) == {field: 1}:
            expiry = index.get("expireAfterSeconds")
            return None if expiry is None else float(expiry)
    return None


def pool_options(uri: str, max_pool_size: int) -> dict[str, Any]:
    """A bounded pool (MONGODB_MAX_POOL_SIZE) unless the URI sets `maxPoolSize`.

    PyMongo's default of 100 per process let each stall of MongoDB open ~100 more connections
    per replica, every one of them carrying a queued request the server ran on resume: two
    replicas held ~206 connections, and the third 20 s stall never recovered.
    """
    return {} if "maxPoolSize" in parse_uri(uri, validate=False)["options"] else {"maxPoolSize": max_pool_size}


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
            **pool_options(uri, settings.mongodb_max_pool_size),
            **write_concern_options(uri),
        )
        self.db = self.client[settings.mongodb_db]
        # For messages: the URI's hosts without credentials or options.
        self._hosts = uri.partition("://")[2].split("/")[0].split("?")[0].rpartition("@")[2]
        self.tasks = self.db["tasks"]
        self.schedules = self.db["schedules"]
        self.events = self.db["events"]
        self.counters = self.db["counters"]
        self.tickets = self.db["tickets"]
        self.keys = self.db["idempotency_keys"]
        self.positions = self.db["event_positions"]
        self.timeout_seconds = settings.mongodb_timeout_ms / 1000
        self._reapers: set[asyncio.Task[None]] = set()
        self._releases: set[asyncio.Task[None]] = set()  # awaited by `close`: a drain releases its keys
        self._closed = False
        # Monotonic times of the last REST write that committed and the last one that could not
        # reach MongoDB: readiness probes writes while the latter is the more recent.
        self.last_write_ok = 0.0
        self.last_write_failed = 0.0
        self.presence = self.db["presence"]
        self.presence_users = self.db["presence_users"]
        self.presence_writes = 0  # write commands presence sent (bench/presence.py reads it)

    async def start(self) -> None:
        """Check the deployment and create indexes (a changed TTL is retuned, see `_ttl_index`).

        Raises:
            ConfigError: MongoDB is not a replica set (change streams need one), or refused a
                startup command (credentials, permissions).
            StoreUnavailable: MongoDB did not answer within MONGODB_TIMEOUT_MS.
        """
        try:
            async with _available():  # unbounded: building an index on a large collection takes a while
                hello = await self.client.admin.command("hello")
                if not hello.get("setName"):
                    raise ConfigError(
                        "MONGODB_URI: MongoDB is not a replica set; change streams need one "
                        "(a single-node replica set is enough: mongod --replSet rs0, then rs.initiate())"
                    )
                ttl = self._settings.history_ttl_seconds
                await self._ttl_index(self.events, "createdAt", ttl, "HISTORY_TTL_SECONDS")
                await self.tickets.create_index([("expiresAt", ASCENDING)], expireAfterSeconds=0)
                await self.tasks.create_index([("status", ASCENDING), ("_id", DESCENDING)])
                await self._ttl_index(self.keys, "createdAt", KEY_TTL_SECONDS, "KEY_TTL_SECONDS")
                # Positions outlive the events they lead to, so HISTORY_TTL_SECONDS is what binds a resume.
                await self._ttl_index(self.positions, "at", ttl + POSITION_TTL_MARGIN, "HISTORY_TTL_SECONDS")
                await self._presence_indexes()
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"MONGODB_URI: no MongoDB answered at {self._hosts} within {self._settings.mongodb_timeout_ms} ms "
                f"(MONGODB_TIMEOUT_MS; {type(exc.__cause__).__name__})"
            ) from None
        except OperationFailure as exc:
            raise ConfigError(f"MONGODB_URI: MongoDB refused a startup command: {exc.details or exc}") from None

    async def _ttl_index(
        self, collection: AsyncCollection[Document], field: str, seconds: int, setting: str, *, grow_only: bool = False
    ) -> None:
        """The TTL index on `field`, created, or retuned with `collMod` when it has another expiry.

        A restart with another HISTORY_TTL_SECONDS (or HEARTBEAT_SECONDS) must apply it, not
        fail on `IndexOptionsConflict`; replicas that disagree each set theirs as they start,
        so the last one to start wins, unless `grow_only` (never lowered by a starter).
        """
        current = await _ttl_of(collection, field)
        if current is None:
            try:
                await collection.create_index([(field, ASCENDING)], expireAfterSeconds=seconds)
                return
            except OperationFailure as exc:
                if exc.code not in INDEX_CONFLICT_CODES:
                    raise
                current = await _ttl_of(collection, field)  # another process created it just now
        if current == seconds or (grow_only and current is not None and current > seconds):
            return
        await self.db.command(
            "collMod", collection.name, index={"keyPattern": {field: 1}, "expireAfterSeconds": seconds}
        )
        log.warning(
            "%s: TTL of %s.%s changed from %s s to %d s for every process on this database",
            setting,
            collection.name,
            field,
            current,
            seconds,
        )

    async def close(self) -> None:
        """Release the keys of failed requests (each within its lease), stop the reapers, close."""
        await asyncio.gather(*self._releases, return_exceptions=True)
        self._closed = True  # PyMongo may turn a reaper's cancellation into an error it retries
        for reaper in list(self._reapers):
            reaper.cancel()
        await asyncio.gather(*self._reapers, return_exceptions=True)
        await self.client.close()

    @contextlib.asynccontextmanager
    async def deadline(self, seconds: float) -> AsyncIterator[None]:
        """One deadline for every store call inside (nested bounds only shorten it): a request's
        claim, transaction and commit share MONGODB_TIMEOUT_MS instead of taking it each. A
        driver error past it between two calls (ending a session, say) is `StoreUnavailable` too."""
        async with _available(seconds):
            yield

    def record_write(self, *, ok: bool) -> None:
        """How a REST write ended: committed, or MongoDB did not answer (readiness reads it)."""
        if ok:
            self.last_write_ok = time.monotonic()
        else:
            self.last_write_failed = time.monotonic()

    @property
    def writes_failing(self) -> bool:
        """Whether the last REST write that ended could not reach MongoDB."""
        return self.last_write_failed > self.last_write_ok

    async def ping(self, bound: float) -> bool:
        """Whether MongoDB answers within `bound` seconds."""
        try:
            async with _available(bound):
                await self.client.admin.command("ping")
        except (StoreUnavailable, PyMongoError):
            return False
        return True

    async def probe_write(self, bound: float) -> bool:
        """Whether MongoDB takes a majority write within `bound` seconds (readiness, while writes fail)."""
        try:
            async with _available(bound):
                await self.db["readiness"].update_one({"_id": "write-probe"}, {"$set": {"at": utcnow()}}, upsert=True)
        except (StoreUnavailable, PyMongoError):
            return False
        self.record_write(ok=True)
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

    async def save_position(self, id: str, token: Mapping[str, Any]) -> None:
        """Remember where the change stream stood at event `id` (its resume token), so a
        replay can seek there instead of scanning the oplog by time (`service.fanout.replay`)."""
        async with _available(self.timeout_seconds):
            await self.positions.update_one(
                {"_id": id}, {"$setOnInsert": {"token": dict(token), "at": utcnow()}}, upsert=True
            )

    async def position_at_or_before(self, id: str) -> Mapping[str, Any] | None:
        """The resume token saved for the newest event at or before `id`; None if none is."""
        async with _available(self.timeout_seconds):
            doc = await self.positions.find_one({"_id": {"$lte": id}}, sort=[("_id", DESCENDING)])
        token = doc.get("token") if doc is not None else None
        return token if isinstance(token, Mapping) else None

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

    # -- idempotency keys (service.app.idempotency) -------------------------------------------

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

    # -- presence (service.fanout.presence) ------------------------------------------------------
    # Each call is bounded by MONGODB_TIMEOUT_MS like a request's: presence retries on its next
    # tick, and an unbounded call would hold a pooled connection through a whole stall.
    # `presence`: one document per (process, user); `presence_users`: one per online user.

    async def _presence_indexes(self) -> None:
        # The TTL is only a backstop for a fleet that died without cleaning up; it must never
        # expire the documents of a live replica between two of its heartbeats. Replicas may
        # run different HEARTBEAT_SECONDS (a rolling deploy), so a starter only raises it:
        # it stays 10 times the largest heartbeat that has run on this database.
        backstop = max(60, round(self._settings.heartbeat_seconds * 10))
        await self._ttl_index(self.presence, "seenAt", backstop, "HEARTBEAT_SECONDS", grow_only=True)
        await self.presence.create_index([("process", ASCENDING)])
        await self.presence.create_index([("userId", ASCENDING)])
        await self.presence_users.create_index([("state", ASCENDING), ("leavingSince", ASCENDING)])

    async def presence_write(
        self,
        process: str,
        upserts: Mapping[int | str, tuple[str, Mapping[str, int]]],
        removals: list[int | str],
        now: datetime,
    ) -> None:
        """One process's changed users in one bulk write: counts set, departed users deleted."""
        ops: list[UpdateOne | DeleteOne] = [
            UpdateOne(
                {"_id": f"{process}|{user_id!r}"},
                {"$set": {"process": process, "userId": user_id, "userName": name, "counts": counts, "seenAt": now}},
                upsert=True,
            )
            for user_id, (name, counts) in upserts.items()
        ]
        ops += [DeleteOne({"_id": f"{process}|{user_id!r}"}) for user_id in removals]
        if ops:
            async with _available(self.timeout_seconds):
                await self.presence.bulk_write(ops, ordered=False)
            self.presence_writes += 1

    async def presence_refresh(self, process: str, now: datetime) -> int:
        """The heartbeat: one `update_many` over the process's documents; how many matched."""
        async with _available(self.timeout_seconds):
            result = await self.presence.update_many({"process": process}, {"$set": {"seenAt": now}})
        self.presence_writes += 1
        return result.matched_count

    async def presence_remove_process(self, process: str) -> None:
        async with _available(self.timeout_seconds):
            await self.presence.delete_many({"process": process})
        self.presence_writes += 1

    async def presence_arrive(self, user_id: int | str, user_name: str, now: datetime) -> None:
        """A process has the user's first connection: online again, or joined (with its event)."""
        async with _available(self.timeout_seconds):
            while True:
                found = await self.presence_users.find_one_and_update(
                    {"_id": user_id},
                    {"$set": {"state": "online", "userName": user_name}, "$unset": {"leavingSince": ""}},
                )
                self.presence_writes += 1
                if found is not None:
                    return  # online already, or back within the grace: no event

                async def join(session: AsyncClientSession) -> None:
                    await self.presence_users.insert_one(
                        {"_id": user_id, "state": "online", "userName": user_name, "since": now}, session=session
                    )
                    await self.events.insert_one(
                        event_document("presence_joined", {"userId": user_id, "userName": user_name}, now),
                        session=session,
                    )

                try:
                    await self.transaction(join)
                    self.presence_writes += 2
                    return
                except DuplicateKeyError:
                    continue  # another process inserted it first: take the update path

    async def presence_depart(self, user_id: int | str, since: datetime) -> None:
        """A process no longer has the user: mark them leaving (the sweep decides after the grace)."""
        async with _available(self.timeout_seconds):
            await self.presence_users.update_one(
                {"_id": user_id, "state": "online"}, {"$set": {"state": "leaving", "leavingSince": since}}
            )
        self.presence_writes += 1

    async def presence_back(self, user_ids: list[int | str]) -> list[int | str]:
        """Set these users online again (one `update_many`); returns those with no document."""
        async with _available(self.timeout_seconds):
            await self.presence_users.update_many(
                {"_id": {"$in": user_ids}}, {"$set": {"state": "online"}, "$unset": {"leavingSince": ""}}
            )
            found = set(await self.presence_users.distinct("_id", {"_id": {"$in": user_ids}}))
        self.presence_writes += 1
        return [user_id for user_id in user_ids if user_id not in found]

    async def presence_depart_many(self, user_ids: list[int | str], since: datetime) -> None:
        """`presence_depart` for many users in one `update_many`."""
        async with _available(self.timeout_seconds):
            await self.presence_users.update_many(
                {"_id": {"$in": user_ids}, "state": "online"}, {"$set": {"state": "leaving", "leavingSince": since}}
            )
        self.presence_writes += 1

    async def presence_stale(self, before: datetime) -> list[Document]:
        async with _available(self.timeout_seconds):
            return await self.presence.find({"seenAt": {"$lt": before}}).to_list(length=None)

    async def presence_claim_stale(self, doc_id: str, seen_at: datetime) -> bool:
        """Delete a dead process's document unless someone did (or it was refreshed) first."""
        async with _available(self.timeout_seconds):
            result = await self.presence.delete_one({"_id": doc_id, "seenAt": seen_at})
        self.presence_writes += 1
        return result.deleted_count == 1

    async def presence_mark_orphans(self, now: datetime) -> None:
        """Users online with no process document at all (e.g. the whole fleet was stopped)."""
        async with _available(self.timeout_seconds):
            online = await self.presence_users.distinct("_id", {"state": "online"})
            present = set(await self.presence.distinct("userId"))
        for user_id in online:
            if user_id not in present:
                await self.presence_depart(user_id, now)

    async def presence_leaving(self, before: datetime) -> list[Document]:
        async with _available(self.timeout_seconds):
            return await self.presence_users.find({"state": "leaving", "leavingSince": {"$lt": before}}).to_list(
                length=None
            )

    async def presence_settle(self, user_id: int | str, leaving_since: datetime, now: datetime) -> bool:
        """End a grace that ran out: back online if connected anywhere, else left (once, with its event)."""
        claim = {"_id": user_id, "state": "leaving", "leavingSince": leaving_since}
        async with _available(self.timeout_seconds):
            if await self.presence.find_one({"userId": user_id}, {"_id": 1}) is not None:
                await self.presence_users.update_one(
                    claim, {"$set": {"state": "online"}, "$unset": {"leavingSince": ""}}
                )
                self.presence_writes += 1
                return False

            async def leave(session: AsyncClientSession) -> bool:
                doc = await self.presence_users.find_one_and_delete(claim, session=session)
                if doc is None:
                    return False  # another sweeper, or a reconnect, got there first
                await self.events.insert_one(
                    event_document("presence_left", {"userId": user_id, "userName": doc.get("userName", "")}, now),
                    session=session,
                )
                return True

            left = await self.transaction(leave)
        if left:
            self.presence_writes += 2
        return bool(left)

    async def presence_missing(self, user_ids: list[int | str]) -> list[int | str]:
        """Which of these users have no `presence_users` document."""
        if not user_ids:
            return []
        async with _available(self.timeout_seconds):
            found = set(await self.presence_users.distinct("_id", {"_id": {"$in": user_ids}}))
        return [user_id for user_id in user_ids if user_id not in found]

    async def presence_count(self) -> int:
        async with _available(self.timeout_seconds):
            return await self.presence_users.count_documents({})

    async def presence_list(self, stale_before: datetime) -> list[Document]:
        """Online users (the damped view the events describe) with live connection counts."""
        async with _available(self.timeout_seconds):
            users = await self.presence_users.find({}).sort("since", ASCENDING).to_list(length=None)
            docs = await self.presence.find({"seenAt": {"$gte": stale_before}}).to_list(length=None)
        counts: dict[Any, dict[str, int]] = {}
        for doc in docs:
            mine = counts.setdefault(doc["userId"], {})
            for transport, n in doc.get("counts", {}).items():
                mine[transport] = mine.get(transport, 0) + int(n)
        return [
            {
                "userId": user["_id"],
                "userName": user.get("userName", ""),
                "since": iso(user["since"]) if isinstance(user.get("since"), datetime) else None,
                "connections": {TransportName.WEBSOCKET: 0, TransportName.SSE: 0, **counts.get(user["_id"], {})},
            }
            for user in users
        ]
