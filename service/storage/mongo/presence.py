"""The `presence`, `presence_processes` and `presence_users` collections
(`service.core.ports.PresenceStore`): `presence` holds one document per (process, user),
`presence_processes` one heartbeat per process, `presence_users` one per online user;
`service.fanout.presence` explains the transitions and why.

Each call is bounded by MONGODB_TIMEOUT_MS like a request's: presence retries on its next tick,
and an unbounded call would hold a pooled connection through a whole stall. Every driver error
leaves as `StoreError` (or `StoreUnavailable`), so fan-out needs no driver to retry.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import ASCENDING, DeleteOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError

from service.core.config import Settings
from service.core.errors import StoreError
from service.core.events import event_document, iso
from service.core.schema import TransportName
from service.storage.mongo.client import Document, available, refused
from service.storage.mongo.events import MongoEvents

T = TypeVar("T")

JOINING = "joining"  # on a `presence_users` document until its `presence_joined` is written
DUPLICATE_KEY = 11000
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
        await self.presence_users.create_index([(JOINING, ASCENDING)], sparse=True)

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

        A few bulk operations for any number of users, no transaction. The documents are
        inserted (one unordered `insert_many`) marked `joining` with this call's own mark; a
        duplicate key is a user with a document (back within the grace, or inserted by another
        process just now), set online. The users inserted get their events (one `insert_many`:
        each event its own insert, so its own id), then lose the mark (one `update_many` on
        the indexed mark). An event's `_id` is made of the user and the document's `since`, so
        a second writer of the same join (the sweep finishing a join whose process died or
        timed out between the inserts) meets a duplicate key instead of writing a second event.
        """
        since = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as stored: milliseconds
        joined: list[int | str] = []
        async with refused(self.timeout_seconds):
            # A document that a sweeper deletes (its grace ended) between our insert's duplicate
            # key and our update is gone: that user goes round again, as a new one.
            for _ in range(ARRIVE_ROUNDS):
                if not users:
                    return joined
                mark = secrets.token_hex(8)
                docs = [
                    {"_id": user_id, "state": "online", "userName": name, "since": since, JOINING: mark}
                    for user_id, name in users.items()
                ]
                try:
                    await self.presence_users.insert_many(docs, ordered=False)
                    existing: list[int | str] = []
                except BulkWriteError as exc:
                    existing = [docs[error["index"]]["_id"] for error in only_duplicates(exc)]
                gone = await self._online_again(existing)
                if len(existing) < len(docs):
                    known = set(existing)
                    await self._write_joins([doc for doc in docs if doc["_id"] not in known], now)
                    joined += [user_id for user_id in users if user_id not in known]
                    await self.presence_users.update_many({JOINING: mark}, {"$unset": {JOINING: ""}})
                users = {user_id: users[user_id] for user_id in gone}
            if users:  # still racing a sweeper: the next flush's arrival, or the heartbeat's check, retries
                raise StoreError(f"presence: {len(users)} arrivals raced a sweeper {ARRIVE_ROUNDS} times")
        return joined

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

    async def _without_document(self, user_ids: list[int | str]) -> list[int | str]:
        """Which of these users have no `presence_users` document (IN_CHUNK ids per `distinct`)."""
        found: set[Any] = set()
        for chunk in chunked(user_ids):
            found.update(await self.presence_users.distinct("_id", {"_id": {"$in": chunk}}))
        return [user_id for user_id in user_ids if user_id not in found]

    async def presence_finish_joins(self, now: datetime) -> None:
        """The sweep's part: write the `presence_joined` of every document still `joining`
        (its process died, or timed out, between the inserts of `presence_arrive_many`)."""
        async with refused(self.timeout_seconds):
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
        # A document still `joining` is left for after its `presence_joined` (the sweep writes it first).
        claim = {"_id": user_id, "state": "leaving", "leavingSince": leaving_since, JOINING: {"$exists": False}}
        async with refused(self.timeout_seconds):
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
