"""What every collection's repository shares: the PyMongo async client with its pool and write
concern, startup checks, deadlines, transactions, readiness probes and id counters.

Every driver error that means "MongoDB is not reachable" becomes `StoreUnavailable` (`available`),
so callers answer 503 without knowing PyMongo. Writes wait for a majority (unless the URI sets
`w`), and a REST change commits together with its event in one transaction (`transaction`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import pymongo
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError
from pymongo.uri_parser import parse_uri

from service.core.config import Settings
from service.core.errors import BadMessage, ConfigError, NotFound, StoreError, StoreFull, StoreUnavailable

log = logging.getLogger(__name__)

Document = dict[str, Any]
Session = AsyncClientSession
T = TypeVar("T")
INDEX_CONFLICT_CODES = frozenset({85, 86})  # IndexOptionsConflict, IndexKeySpecsConflict
# A transaction we gave up on holds its documents until MongoDB reaps it
# (transactionLifetimeLimitSeconds, 60 s by default); we kill it as soon as MongoDB answers.
# A statement of it still queued when MongoDB resumes may reopen it: kill it again, spaced out.
ABANDONED_KILL_DELAYS = (1.0, 2.0, 4.0, 8.0, 0.0)
ABANDONED_RETRY_SECONDS = 60.0
INTERNAL_ERROR, OUT_OF_DISK_SPACE = 1, 14031  # server error codes that mean "failed, retry later"


@contextlib.asynccontextmanager
async def available(bound: float | None = None) -> AsyncIterator[None]:
    """Bound what runs inside by `bound` seconds, all retries included (pymongo.timeout), and
    turn every "MongoDB is not there" (or failed, or full) into `StoreUnavailable`.

    Other driver errors pass unchanged: a transaction's callback must show them (with their
    labels) to `with_transaction`, which retries transient ones.
    """
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


@contextlib.asynccontextmanager
async def refused(bound: float | None = None) -> AsyncIterator[None]:
    """`available`, and every other driver error as `StoreError`: for the ports fan-out uses
    (never inside a transaction's callback, see `available`)."""
    try:
        async with available(bound):
            yield
    except PyMongoError as exc:
        raise StoreError(f"MongoDB refused: {type(exc).__name__}: {exc}") from exc


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


class MongoBase:
    """The client and what every repository (`service.storage.mongo.tasks` and its siblings)
    builds on. A repository adds its collections in `__init__` and its indexes in
    `create_indexes`, each calling `super()` first."""

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
        self.counters = self.db["counters"]
        self.timeout_seconds = settings.mongodb_timeout_ms / 1000
        self._reapers: set[asyncio.Task[None]] = set()
        self._closed = False
        # Monotonic times of the last REST write that committed and the last one that could not
        # reach MongoDB: readiness probes writes while the latter is the more recent.
        self.last_write_ok = 0.0
        self.last_write_failed = 0.0

    async def start(self) -> None:
        """Check the deployment and create indexes (a changed TTL is retuned, see `ttl_index`).

        Raises:
            ConfigError: MongoDB is not a replica set (change streams need one), or refused a
                startup command (credentials, permissions).
            StoreUnavailable: MongoDB did not answer within MONGODB_TIMEOUT_MS.
        """
        try:
            async with available():  # unbounded: building an index on a large collection takes a while
                hello = await self.client.admin.command("hello")
                if not hello.get("setName"):
                    raise ConfigError(
                        "MONGODB_URI: MongoDB is not a replica set; change streams need one "
                        "(a single-node replica set is enough: mongod --replSet rs0, then rs.initiate())"
                    )
                await self.create_indexes()
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"MONGODB_URI: no MongoDB answered at {self._hosts} within {self._settings.mongodb_timeout_ms} ms "
                f"(MONGODB_TIMEOUT_MS; {type(exc.__cause__).__name__})"
            ) from None
        except OperationFailure as exc:
            raise ConfigError(f"MONGODB_URI: MongoDB refused a startup command: {exc.details or exc}") from None

    async def create_indexes(self) -> None:
        """Each repository's indexes (overridden cooperatively; the counters need none)."""

    async def ttl_index(
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
        """Stop the reapers and close the client (a repository with background work of its
        own finishes it first, then calls this)."""
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
        async with available(seconds):
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
            async with available(bound):
                await self.client.admin.command("ping")
        except (StoreUnavailable, PyMongoError):
            return False
        return True

    async def probe_write(self, bound: float) -> bool:
        """Whether MongoDB takes a majority write within `bound` seconds (readiness, while writes fail)."""
        try:
            async with available(bound):
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
        async with available(self.timeout_seconds), self.client.start_session() as session:
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
        async with available(self.timeout_seconds):
            doc = await self.counters.find_one_and_update(
                {"_id": name}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
            )
        if doc is None:
            # An upsert with AFTER always returns the document, yet SecantusDB answered
            # `value: null` to a write stalled and retried (tests/system/faults/test_stalls.py).
            # The sequence may have moved (a gap, never a duplicate); the caller gets a 503.
            raise StoreUnavailable(f"MongoDB returned no {name} id; retry")
        return int(doc["seq"])
