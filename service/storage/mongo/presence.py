"""The `presence` and `presence_users` collections (`service.core.ports.PresenceStore`):
`presence` holds one document per (process, user), `presence_users` one per online user;
`service.fanout.presence` explains the transitions and why.

Each call is bounded by MONGODB_TIMEOUT_MS like a request's: presence retries on its next tick,
and an unbounded call would hold a pooled connection through a whole stall. Every driver error
leaves as `StoreError` (or `StoreUnavailable`), so fan-out needs no driver to retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DeleteOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from service.core.config import Settings
from service.core.events import event_document, iso
from service.core.schema import TransportName
from service.storage.mongo.client import Document, available, refused
from service.storage.mongo.events import MongoEvents


class MongoPresence(MongoEvents):
    """Presence writes, sweeps and reads; a join or leave inserts its event in the same
    transaction (hence built on `MongoEvents`)."""

    def __init__(self, settings: Settings, uri: str) -> None:
        super().__init__(settings, uri)
        self.presence = self.db["presence"]
        self.presence_users = self.db["presence_users"]

    async def create_indexes(self) -> None:
        await super().create_indexes()
        # The TTL is only a backstop for a fleet that died without cleaning up; it must never
        # expire the documents of a live replica between two of its heartbeats. Replicas may
        # run different HEARTBEAT_SECONDS (a rolling deploy), so a starter only raises it:
        # it stays 10 times the largest heartbeat that has run on this database.
        backstop = max(60, round(self._settings.heartbeat_seconds * 10))
        await self.ttl_index(self.presence, "seenAt", backstop, "HEARTBEAT_SECONDS", grow_only=True)
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
            async with refused(self.timeout_seconds):
                await self.presence.bulk_write(ops, ordered=False)

    async def presence_refresh(self, process: str, now: datetime) -> int:
        """The heartbeat: one `update_many` over the process's documents; how many matched."""
        async with refused(self.timeout_seconds):
            result = await self.presence.update_many({"process": process}, {"$set": {"seenAt": now}})
        return result.matched_count

    async def presence_remove_process(self, process: str) -> None:
        async with refused(self.timeout_seconds):
            await self.presence.delete_many({"process": process})

    async def presence_arrive(self, user_id: int | str, user_name: str, now: datetime) -> None:
        """A process has the user's first connection: online again, or joined (with its event)."""
        async with refused(self.timeout_seconds):
            while True:
                found = await self.presence_users.find_one_and_update(
                    {"_id": user_id},
                    {"$set": {"state": "online", "userName": user_name}, "$unset": {"leavingSince": ""}},
                )
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
                    return
                except DuplicateKeyError:
                    continue  # another process inserted it first: take the update path

    async def presence_depart(self, user_id: int | str, since: datetime) -> None:
        """A process no longer has the user: mark them leaving (the sweep decides after the grace)."""
        async with refused(self.timeout_seconds):
            await self.presence_users.update_one(
                {"_id": user_id, "state": "online"}, {"$set": {"state": "leaving", "leavingSince": since}}
            )

    async def presence_back(self, user_ids: list[int | str]) -> list[int | str]:
        """Set these users online again (one `update_many`); returns those with no document."""
        async with refused(self.timeout_seconds):
            await self.presence_users.update_many(
                {"_id": {"$in": user_ids}}, {"$set": {"state": "online"}, "$unset": {"leavingSince": ""}}
            )
            found = set(await self.presence_users.distinct("_id", {"_id": {"$in": user_ids}}))
        return [user_id for user_id in user_ids if user_id not in found]

    async def presence_depart_many(self, user_ids: list[int | str], since: datetime) -> None:
        """`presence_depart` for many users in one `update_many`."""
        async with refused(self.timeout_seconds):
            await self.presence_users.update_many(
                {"_id": {"$in": user_ids}, "state": "online"}, {"$set": {"state": "leaving", "leavingSince": since}}
            )

    async def presence_stale(self, before: datetime) -> list[Document]:
        async with refused(self.timeout_seconds):
            return await self.presence.find({"seenAt": {"$lt": before}}).to_list(length=None)

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
        claim = {"_id": user_id, "state": "leaving", "leavingSince": leaving_since}
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
            found = set(await self.presence_users.distinct("_id", {"_id": {"$in": user_ids}}))
        return [user_id for user_id in user_ids if user_id not in found]

    async def presence_count(self) -> int:
        async with refused(self.timeout_seconds):
            return await self.presence_users.count_documents({})

    async def presence_list(self, stale_before: datetime) -> list[Document]:
        """Online users (the damped view the events describe) with live connection counts."""
        async with available(self.timeout_seconds):
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
