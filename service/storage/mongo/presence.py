"""The `presence`, `presence_processes`, `presence_users`, `presence_joins` and `presence_fleet`
collections (`service.core.ports.PresenceStore`): `presence` holds one document per (process,
user), `presence_processes` one heartbeat per process, `presence_users` one per online user,
`presence_joins` one per chunk of joins whose `presence_joined` events are not all written yet,
and `presence_fleet` when the fleet's orphan backstop last ran;
`service.fanout.presence` explains the transitions and why.

Each call is bounded by MONGODB_TIMEOUT_MS like a request's: presence retries on its next tick,
and an unbounded call would hold a pooled connection through a whole stall. Every driver error
leaves as `StoreError` (or `StoreUnavailable`), so fan-out needs no driver to retry.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from pymongo import ASCENDING, DeleteOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError, CollectionInvalid, DuplicateKeyError, OperationFailure

from service.core.config import Settings
from service.core.errors import StoreError
from service.core.events import event_document, iso
from service.core.schema import TransportName
from service.storage.mongo.client import Document, available, refused
from service.storage.mongo.events import MongoEvents

T = TypeVar("T")

# On a `presence_users` document inserted by this release: the `presence_joins` document of its
# chunk, which lives until the chunk's `presence_joined` events are written. Never removed.
JOIN = "join"
# On a `presence_users` document of an earlier release until its `presence_joined` was written
# (one more update per user, which doubled what a join cost the store): finished by the sweep.
JOINING = "joining"
DUPLICATE_KEY = 11000
NAMESPACE_EXISTS = 48
# Ids per `$in`: SecantusDB's cost of an `$in` grows with the square of its length (1,000 ids:
# 1 s; 4,000: 16 s), and presence asked about every user of a process at each heartbeat
# (12,500 per worker at 50,000 connections: minutes of the one store's time, every 15 s).
IN_CHUNK = 50
ARRIVE_ROUNDS = 3  # insert attempts of an arrival whose document a sweeper deletes meanwhile
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # below every `seenAt`: a date range's lower bound


# Documents per write command: SecantusDB holds its storage lock through a command, and every
# process's change stream waits behind it (a 12,500-document insert: ~2.5 s).
WRITE_BATCH = 100


def chunked(ids: list[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def batches(items: list[T]) -> Iterator[list[T]]:
    return chunked(items, WRITE_BATCH)


def only_duplicates(exc: BulkWriteError) -> list[dict[str, Any]]:
    """The write errors of an unordered insert, when every one is a duplicate key; the error
    itself otherwise (a write concern error included)."""
    errors: list[dict[str, Any]] = exc.details.get("writeErrors", [])
    if exc.details.get("writeConcernErrors") or any(error.get("code") != DUPLICATE_KEY for error in errors):
        raise exc
    return errors


class MongoPresence(MongoEvents):
    """Presence writes, sweeps and reads; joins and leaves insert their events (hence built
    on `MongoEvents`)."""

    def __init__(self, settings: Settings, uri: str) -> None:
        super().__init__(settings, uri)
        self.presence = self.db["presence"]
        self.presence_users = self.db["presence_users"]
        self.presence_processes = self.db["presence_processes"]
        self.presence_joins = self.db["presence_joins"]
        self.presence_fleet = self.db["presence_fleet"]

    async def create_indexes(self) -> None:
        await super().create_indexes()
        # Only documents written by releases before the heartbeat documents carry `seenAt` (they
        # were refreshed one by one), so the TTL applies to them alone: the backstop for such a
        # fleet that died without cleaning up. It must never expire the documents of a live
        # replica between two of its heartbeats; replicas may run different HEARTBEAT_SECONDS
        # (a rolling deploy), so a starter only raises it: 10 times the largest heartbeat seen.
        backstop = max(60, round(self._settings.heartbeat_seconds * 10))
        await self.ttl_index(self.presence, "seenAt", backstop, "HEARTBEAT_SECONDS", grow_only=True)
        await self.presence.create_index([("process", ASCENDING)])
        await self.presence.create_index([("userId", ASCENDING)])
        await self.presence_users.create_index([("state", ASCENDING), ("leavingSince", ASCENDING)])
        await self.presence_users.create_index([(JOINING, ASCENDING)], sparse=True)  # an earlier release's
        try:  # written in transactions, which create no collection on MongoDB before 4.4
            await self.db.create_collection(self.presence_joins.name)
        except CollectionInvalid:
            pass  # there already
        except OperationFailure as exc:
            if exc.code != NAMESPACE_EXISTS:  # another process created it just now
                raise

    async def presence_write(
        self,
        process: str,
        upserts: Mapping[int | str, tuple[str, Mapping[str, int]]],
        removals: list[int | str],
        now: datetime,
        *,
        new: Collection[int | str] = (),
    ) -> None:
        """One process's changed users: counts set, departed users deleted; the users in `new`
        (no document of this process yet) inserted in one `insert_many`, the rest in one bulk
        write. (An upsert costs SecantusDB four times an insert: 0.84 against 0.2 ms a user,
        which a connect storm of 5,000 new users turns into seconds of the store's time.)

        The documents carry no `seenAt`: they live as long as their process's heartbeat
        document (`presence_refresh`), so a heartbeat is one write however many users.
        """

        def fields(user_id: int | str) -> Document:
            name, counts = upserts[user_id]
            return {"process": process, "userId": user_id, "userName": name, "counts": counts}

        def doc_id(user_id: int | str) -> str:
            return f"{process}|{user_id!r}"

        inserts = [{"_id": doc_id(user_id), **fields(user_id)} for user_id in upserts if user_id in new]
        ops: list[UpdateOne | DeleteOne] = [
            UpdateOne({"_id": doc_id(user_id)}, {"$set": fields(user_id)}, upsert=True)
            for user_id in upserts
            if user_id not in new
        ]
        ops += [DeleteOne({"_id": doc_id(user_id)}) for user_id in removals]
        async with refused(self.timeout_seconds):
            for chunk in batches(inserts):
                try:
                    await self.presence.insert_many(chunk, ordered=False)
                except BulkWriteError as exc:  # written before a failure the caller retries
                    for error in only_duplicates(exc):
                        doc = chunk[error["index"]]
                        ops.append(UpdateOne({"_id": doc["_id"]}, {"$set": fields(doc["userId"])}, upsert=True))
            for part in batches(ops):
                await self.presence.bulk_write(part, ordered=False)

    async def presence_refresh(self, process: str, now: datetime) -> bool:
        """The heartbeat: one write to the process's document in `presence_processes`; False
        when it was not there (a sweeper took this process for dead, or it just started), and
        it is written again. (Before, every user document of the process was refreshed: 5,000
        users took SecantusDB 3 s per heartbeat, per process.)"""
        async with refused(self.timeout_seconds):
            result = await self.presence_processes.update_one({"_id": process}, {"$set": {"seenAt": now}})
            if result.matched_count:
                return True
            await self.presence_processes.update_one({"_id": process}, {"$set": {"seenAt": now}}, upsert=True)
        return False

    async def presence_remove_process(self, process: str) -> None:
        async with refused(self.timeout_seconds):
            await self.presence.delete_many({"process": process})
            await self.presence_processes.delete_one({"_id": process})

    async def presence_stale_processes(self, before: datetime) -> list[Document]:
        """Processes whose last heartbeat is older than `before`."""
        async with refused(self.timeout_seconds):
            return await self.presence_processes.find({"seenAt": {"$lt": before}}).to_list(length=None)

    async def presence_sweep_process(self, process: str, seen_at: datetime) -> list[int | str] | None:
        """Take a dead process's heartbeat document (unless another sweeper did, or it beat
        again since `seen_at`), then delete its users' documents; the users it had, or None
        when the claim failed."""
        async with refused(self.timeout_seconds):
            claimed = await self.presence_processes.delete_one({"_id": process, "seenAt": seen_at})
            if not claimed.deleted_count:
                return None
            users: list[int | str] = await self.presence.distinct("userId", {"process": process})
            await self.presence.delete_many({"process": process})
        return users

    async def presence_arrive_many(self, users: Mapping[int | str, str], now: datetime) -> list[int | str]:
        """Users a process has the first connection of: online again (no event) when they have
        a `presence_users` document, otherwise inserted online with exactly one `presence_joined`.
        Returns the users whose `presence_joined` this call wrote (presence waits for the change
        stream to show them before it writes the next chunk).

        One transaction inserts the documents of the users who have none together with the
        chunk's `presence_joins` document, which names them; then their events are inserted
        (one unordered `insert_many`, outside the transaction: an event's id is its insert's
        oplog position, and a transaction's inserts share one) and the `presence_joins`
        document is deleted. If this process dies or times out in between, the sweep finds
        that document and writes the events (`presence_finish_joins`). An event's `_id` is made
        of the user and the document's `since`, so the second writer of a join meets a
        duplicate key instead of writing a second event.

        Before, each document carried a `joining` mark that a third write removed once the
        events were in: that update cost SecantusDB as much as the two inserts together, 1.5
        against 0.8 ms of its CPU a user (10,000 new users in chunks of 100).
        """
        since = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as stored: milliseconds
        joined: list[int | str] = []
        async with refused(self.timeout_seconds):
            # A document that a sweeper deletes (its grace ended) between our transaction and
            # `_online_again` is gone: that user goes round again, as a new one.
            for _ in range(ARRIVE_ROUNDS):
                if not users:
                    return joined
                # Another process inserting one of these users meanwhile is a write conflict
                # (the transaction's snapshot did not have that document): PyMongo runs the
                # transaction again, and its read then finds the user.
                mark = secrets.token_hex(8)
                new, existing = await self.transaction(partial(self._insert_new, users, since, mark))
                if new:
                    await self._finish_chunk(mark, since, [(user_id, users[user_id]) for user_id in new], now)
                    joined += new
                gone = await self._online_again(existing)
                users = {user_id: users[user_id] for user_id in gone}
            if users:  # still racing a sweeper: the next flush's arrival, or the heartbeat's check, retries
                raise StoreError(f"presence: {len(users)} arrivals raced a sweeper {ARRIVE_ROUNDS} times")
        return joined

    async def _insert_new(
        self, users: Mapping[int | str, str], since: datetime, mark: str, session: AsyncClientSession
    ) -> tuple[list[int | str], list[int | str]]:
        """In a transaction: insert the documents of the users who have none, and the chunk's
        `presence_joins` document naming them. The users inserted, and the others."""
        new = await self._without_document(list(users), session)
        if new:
            docs = [
                {"_id": user_id, "state": "online", "userName": users[user_id], "since": since, JOIN: mark}
                for user_id in new
            ]
            await self.presence_users.insert_many(docs, session=session)
            await self.presence_joins.insert_one(
                {"_id": mark, "since": since, "users": [[user_id, users[user_id]] for user_id in new]}, session=session
            )
        inserted = set(new)
        return new, [user_id for user_id in users if user_id not in inserted]

    async def _online_again(self, user_ids: list[int | str]) -> list[int | str]:
        """Set users with a document online again (IN_CHUNK per `update_many`); those whose
        document was gone by then."""
        gone: list[int | str] = []
        for chunk in chunked(user_ids):
            result = await self.presence_users.update_many(
                {"_id": {"$in": chunk}}, {"$set": {"state": "online"}, "$unset": {"leavingSince": ""}}
            )
            if result.matched_count < len(chunk):
                gone += await self._without_document(chunk)
        return gone

    async def _without_document(
        self, user_ids: list[int | str], session: AsyncClientSession | None = None
    ) -> list[int | str]:
        """Which of these users have no `presence_users` document (IN_CHUNK ids per `distinct`)."""
        found: set[Any] = set()
        for chunk in chunked(user_ids):
            found.update(await self.presence_users.distinct("_id", {"_id": {"$in": chunk}}, session=session))
        return [user_id for user_id in user_ids if user_id not in found]

    async def presence_finish_joins(self, now: datetime) -> None:
        """The sweep's part: write the `presence_joined` events of every chunk whose
        `presence_joins` document is still there a store timeout after it began (its process
        died, or timed out, between the transaction and the events; a chunk still being written
        is left to its writer), and of every document an earlier release left `joining`."""
        begun_before = now - timedelta(seconds=self.timeout_seconds)
        async with refused(self.timeout_seconds):
            for batch in await self.presence_joins.find({"since": {"$lt": begun_before}}).to_list(length=None):
                await self._finish_chunk(batch["_id"], batch["since"], batch["users"], now)
            pending = await self.presence_users.find(
                {JOINING: {"$exists": True}}, {"userName": 1, "since": 1, JOINING: 1}
            ).to_list(length=None)
            if not pending:
                return
            await self._write_joins(pending, now)
            for doc in pending:  # only the marks seen: a join begun since is its writer's
                await self.presence_users.update_one(
                    {"_id": doc["_id"], JOINING: doc[JOINING]}, {"$unset": {JOINING: ""}}
                )

    async def _finish_chunk(self, mark: str, since: datetime, users: Sequence[Sequence[Any]], now: datetime) -> None:
        """A chunk's `presence_joined` events ((user, name) pairs inserted at `since`), then its
        `presence_joins` document deleted: by its writer, or by the sweep after its writer died."""
        await self._write_joins([{"_id": user_id, "userName": name, "since": since} for user_id, name in users], now)
        await self.presence_joins.delete_one({"_id": mark})

    async def _write_joins(self, docs: list[Document], now: datetime) -> None:
        """The `presence_joined` of these `presence_users` documents, each once (see the `_id`)."""
        events = [
            {
                **event_document("presence_joined", {"userId": doc["_id"], "userName": doc.get("userName", "")}, now),
                "_id": f"presence_joined|{doc['_id']!r}|{doc['since'].isoformat()}",
            }
            for doc in docs
        ]
        try:
            await self.events.insert_many(events, ordered=False)
        except BulkWriteError as exc:
            only_duplicates(exc)  # written before, by the join's first writer

    async def presence_depart(self, user_id: int | str, since: datetime) -> None:
        """A process no longer has the user: mark them leaving (the sweep decides after the grace)."""
        async with refused(self.timeout_seconds):
            await self.presence_users.update_one(
                {"_id": user_id, "state": "online"}, {"$set": {"state": "leaving", "leavingSince": since}}
            )

    async def presence_depart_many(self, user_ids: list[int | str], since: datetime) -> None:
        """`presence_depart` for many users, one `update_many` per IN_CHUNK of them."""
        async with refused(self.timeout_seconds):
            for chunk in chunked(user_ids):
                await self.presence_users.update_many(
                    {"_id": {"$in": chunk}, "state": "online"}, {"$set": {"state": "leaving", "leavingSince": since}}
                )

    async def presence_stale(self, before: datetime) -> list[Document]:
        """Documents written by an earlier release (one `seenAt` each) that are older than `before`.

        The range is bounded below too: this release's documents have no `seenAt`, and their
        null keys sort before every date in the index. SecantusDB scans an open-ended `$lt` from
        the index's start, so the sweep read (every sweep, every process) fetched and rejected
        every user document: 0.29 s at 5,000 users, the store's busiest read in a quiet fleet.
        """
        async with refused(self.timeout_seconds):
            return await self.presence.find({"seenAt": {"$gte": EPOCH, "$lt": before}}).to_list(length=None)

    async def presence_claim_stale(self, doc_id: str, seen_at: datetime) -> bool:
        """Delete a dead process's document unless someone did (or it was refreshed) first."""
        async with refused(self.timeout_seconds):
            result = await self.presence.delete_one({"_id": doc_id, "seenAt": seen_at})
        return result.deleted_count == 1

    async def presence_claim_backstop(self, now: datetime, every: timedelta) -> bool:
        """Whether this process runs the fleet's orphan backstop now: true for the first to ask
        once `every` has passed since it last ran anywhere (a conditional update of one
        document; a second process's upsert meets the unique `_id` instead)."""
        async with refused(self.timeout_seconds):
            try:
                await self.presence_fleet.update_one(
                    {"_id": "orphans", "at": {"$lte": now - every}}, {"$set": {"at": now}}, upsert=True
                )
            except DuplicateKeyError:
                return False  # it ran less than `every` ago
        return True

    async def presence_mark_orphans(self, now: datetime) -> None:
        """Users online with no process document at all (e.g. the whole fleet was stopped)."""
        async with refused(self.timeout_seconds):
            online = await self.presence_users.distinct("_id", {"state": "online"})
            present = set(await self.presence.distinct("userId"))
        for user_id in online:
            if user_id not in present:
                await self.presence_depart(user_id, now)

    async def presence_leaving(self, before: datetime) -> list[Document]:
        async with refused(self.timeout_seconds):
            return await self.presence_users.find({"state": "leaving", "leavingSince": {"$lt": before}}).to_list(
                length=None
            )

    async def presence_settle(self, user_id: int | str, leaving_since: datetime, now: datetime) -> bool:
        """End a grace that ran out: back online if connected anywhere, else left (once, with its event)."""
        # A user whose `presence_joined` is not written yet is left for after it (the sweep
        # writes it first). Their chunk's document can only go away meanwhile: another one is
        # written only with a new user document, once this one is deleted.
        claim = {"_id": user_id, "state": "leaving", "leavingSince": leaving_since, JOINING: {"$exists": False}}
        async with refused(self.timeout_seconds):
            doc = await self.presence_users.find_one(claim, {JOIN: 1})
            if doc is None:
                return False  # back online, settled by another sweeper, or an earlier release's join unfinished
            if JOIN in doc and await self.presence_joins.find_one({"_id": doc[JOIN]}, {"_id": 1}) is not None:
                return False
            if await self.presence.find_one({"userId": user_id}, {"_id": 1}) is not None:
                await self.presence_users.update_one(
                    claim, {"$set": {"state": "online"}, "$unset": {"leavingSince": ""}}
                )
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
        return bool(left)

    async def presence_missing(self, user_ids: list[int | str]) -> list[int | str]:
        """Which of these users have no `presence_users` document."""
        if not user_ids:
            return []
        async with refused(self.timeout_seconds):
            return await self._without_document(user_ids)

    async def presence_count(self) -> int:
        async with refused(self.timeout_seconds):
            return await self.presence_users.count_documents({})

    async def presence_list(self, stale_before: datetime) -> list[Document]:
        """Online users (the damped view the events describe) with live connection counts."""
        async with available(self.timeout_seconds):
            users = await self.presence_users.find({}).sort("since", ASCENDING).to_list(length=None)
            live = await self.presence_processes.distinct("_id", {"seenAt": {"$gte": stale_before}})
            docs = await self.presence.find(
                {"$or": [{"process": {"$in": live}}, {"seenAt": {"$gte": stale_before}}]}
            ).to_list(length=None)
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
