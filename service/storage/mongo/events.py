"""The `events` collection and its change feed (`service.core.ports.ChangeFeed`): publishing,
change streams of inserts, and the saved stream positions replays resume from.

Driver types stop here: a change leaves as a `service.core.events.Change` (its BSON
`Timestamp` as a `Position`), and driver errors as `StoreUnavailable`, `HistoryLost` or
`StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from bson import Timestamp
from pymongo import DESCENDING
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import OperationFailure

from service.core.config import Settings
from service.core.errors import HistoryLost, StoreError, StoreUnavailable
from service.core.events import Change, Position, ResumeToken
from service.storage.mongo.client import Document, MongoBase, Session, available, refused, utcnow

log = logging.getLogger(__name__)

INSERTS_ONLY = [{"$match": {"operationType": "insert"}}]
POSITION_TTL_MARGIN = 3600  # saved stream positions are kept this much longer than events
HISTORY_LOST = 286  # ChangeStreamHistoryLost: the position was pruned from the oplog
# A quiet change stream's round trip: MongoDB answers an empty batch after this long. Each round
# trip is bounded by this plus MONGODB_TIMEOUT_MS, so a getMore that MongoDB never answers (a
# stall, a lost connection nobody reset) ends as `StoreUnavailable` and the bus reopens the
# stream from its position, instead of one process waiting for ever while every other delivers.
AWAIT_SECONDS = 1.0


@contextlib.asynccontextmanager
async def _feed_errors(bound: float | None = None) -> AsyncIterator[None]:
    """Driver errors of the change feed as core errors, a pruned position as `HistoryLost`."""
    try:
        async with refused(bound):
            yield
    except StoreError as exc:
        cause = exc.__cause__
        if isinstance(cause, OperationFailure) and cause.code == HISTORY_LOST:
            raise HistoryLost("the change stream's position was pruned from the oplog") from cause
        raise


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect what an abandoned round trip ended with, so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


def change_buffered(stream: AsyncChangeStream[Document]) -> bool:
    """Whether the driver already holds the stream's next change (read by the last getMore),
    so `try_next` returns it without a round trip.

    PyMongo has no public way to ask: this reads `AsyncChangeStream._cursor` and
    `AsyncCommandCursor._has_next()` (pymongo 4.x, pymongo/cursor_shared.py).
    tests/integration/test_batching.py fails first if they change; until then every change is its own
    batch (correct, only unbatched).
    """
    has_next = getattr(getattr(stream, "_cursor", None), "_has_next", None)
    return bool(has_next()) if callable(has_next) else False


def to_change(raw: Mapping[str, Any]) -> Change | None:
    """A change stream insert notification as the core's `Change`; None without a cluster time."""
    cluster_time = raw.get("clusterTime")
    if not isinstance(cluster_time, Timestamp):
        return None
    document = raw.get("fullDocument")
    wall_time = raw.get("wallTime")
    return Change(
        position=Position(cluster_time.time, cluster_time.inc),
        token=raw["_id"],
        document=document if isinstance(document, Mapping) else None,
        wall_time=wall_time if isinstance(wall_time, datetime) else None,
    )


class MongoChangeStream:
    """A PyMongo change stream as a `service.core.ports.ChangeStream`."""

    def __init__(self, stream: AsyncChangeStream[Document], bound: float) -> None:
        """
        Args:
            bound: seconds each round trip (and the close) may take, MongoDB's wait included.
        """
        self._stream = stream
        self.bound = bound

    @property
    def resume_token(self) -> ResumeToken | None:
        return self._stream.resume_token

    async def try_next(self) -> Change | None:
        # The round trip runs as a task this call waits for at most `bound` seconds; past that
        # the caller gets StoreUnavailable at once (and closes the stream) while the task ends
        # in the background. Not
        # pymongo.timeout: under PyMongo's client-side operation timeout every read of a busy
        # stream cost more (25,000 clients at 10 events/s, WORKERS=2: p99 5.1-6.8 s against
        # 3.1-3.7 s without, alternated runs).
        round_trip = asyncio.ensure_future(self._next())
        done, _ = await asyncio.wait({round_trip}, timeout=self.bound)
        if not done:
            # Left to finish on its own (MongoDB answers, or the driver's monitor resets the
            # pool): cancelling a PyMongo read mid-way left its socket unclosed.
            round_trip.add_done_callback(_retrieve)
            raise StoreUnavailable(f"MongoDB did not answer a change stream round trip in {self.bound:.1f} s")
        return round_trip.result()

    async def _next(self) -> Change | None:
        async with _feed_errors():
            while True:
                raw = await self._stream.try_next()
                if raw is None:
                    return None
                change = to_change(raw)
                if change is not None:
                    return change
                log.warning("ignored a change with no cluster time")

    def buffered(self) -> bool:
        return change_buffered(self._stream)

    async def close(self) -> None:
        """Give the cursor back; best effort, within `bound`. After a round trip abandoned on a
        MongoDB that does not answer, PyMongo's killCursors can fail with errors of its own
        (an AttributeError in pymongo 4.20's checkout error path): all leave as StoreError."""
        try:
            async with _feed_errors(self.bound):
                await self._stream.close()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"closing the change stream failed: {type(exc).__name__}: {exc}") from exc

    async def __aenter__(self) -> MongoChangeStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class MongoEvents(MongoBase):
    """Events and positions: the bus's `ChangeFeed`, and `publish` for the use cases."""

    def __init__(self, settings: Settings, uri: str) -> None:
        super().__init__(settings, uri)
        self.events = self.db["events"]
        self.positions = self.db["event_positions"]

    async def create_indexes(self) -> None:
        await super().create_indexes()
        ttl = self._settings.history_ttl_seconds
        await self.ttl_index(self.events, "createdAt", ttl, "HISTORY_TTL_SECONDS")
        # Positions outlive the events they lead to, so HISTORY_TTL_SECONDS is what binds a resume.
        await self.ttl_index(self.positions, "at", ttl + POSITION_TTL_MARGIN, "HISTORY_TTL_SECONDS")

    async def publish(self, doc: Document, session: Session | None = None) -> None:
        """Insert an event; the change stream delivers it to every process.

        At most one per transaction: an event's id is its commit's oplog position.
        """
        async with available(self.timeout_seconds):
            await self.events.insert_one(doc, session=session)

    async def watch_events(
        self, *, resume_after: ResumeToken | None = None, batch_size: int | None = None
    ) -> MongoChangeStream:
        """A change stream of inserts into `events`, from now or a resume token.

        Args:
            batch_size: documents per round trip; large for replays that read history.

        Raises:
            HistoryLost: `resume_after` was pruned from the oplog.
            StoreUnavailable: MongoDB did not answer.
        """
        async with _feed_errors():  # unbounded: the stream it opens lives on
            stream = await self.events.watch(
                INSERTS_ONLY,
                resume_after=resume_after,
                batch_size=batch_size,
                max_await_time_ms=round(AWAIT_SECONDS * 1000),
            )
        return MongoChangeStream(stream, bound=AWAIT_SECONDS + self.timeout_seconds)

    async def cluster_time(self) -> Position:
        """MongoDB's operation time (a ping's): a stream opened before this sees every later change.
        The local clock's second when MongoDB does not say."""
        async with _feed_errors():
            reply = await self.client.admin.command("ping")
        ts = reply.get("operationTime") or reply.get("$clusterTime", {}).get("clusterTime")
        if not isinstance(ts, Timestamp):
            return Position(int(time.time()), 0)
        return Position(ts.time, ts.inc)

    async def save_position(self, id: str, token: ResumeToken) -> None:
        """Remember where the change stream stood at event `id` (its resume token), so a
        replay can seek there instead of scanning the oplog by time (`service.fanout.replay`)."""
        async with _feed_errors(self.timeout_seconds):
            await self.positions.update_one(
                {"_id": id}, {"$setOnInsert": {"token": dict(token), "at": utcnow()}}, upsert=True
            )

    async def position_at_or_before(self, id: str) -> ResumeToken | None:
        """The resume token saved for the newest event at or before `id`; None if none is."""
        async with _feed_errors(self.timeout_seconds):
            doc = await self.positions.find_one({"_id": {"$lte": id}}, sort=[("_id", DESCENDING)])
        token = doc.get("token") if doc is not None else None
        return token if isinstance(token, Mapping) else None

    async def positions_before(self, id: str, limit: int) -> list[tuple[str, ResumeToken]]:
        """The newest `limit` saved positions before `id`, newest first: (event id, token)."""
        async with _feed_errors(self.timeout_seconds):
            docs = await self.positions.find({"_id": {"$lt": id}}, sort=[("_id", DESCENDING)], limit=limit).to_list()
        return [(str(doc["_id"]), doc["token"]) for doc in docs if isinstance(doc.get("token"), Mapping)]
