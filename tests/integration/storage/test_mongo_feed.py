"""The storage boundary on a real SecantusDB: `MongoStore` implements the ports fan-out uses,
and its change feed hands over core types (`Change`, `Position`) and core errors, never the
driver's."""

from __future__ import annotations

import time

import pytest

from service.core.errors import HistoryLost, StoreError
from service.core.events import Change, event_document, event_id
from service.core.ports import ChangeFeed, ChangeStream, PresenceStore, StoreHealth
from service.storage.mongo.store import MongoStore
from tests.conftest import base_settings


async def next_change(stream: ChangeStream) -> Change:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        change = await stream.try_next()
        if change is not None:
            return change
    raise AssertionError("no change within 10 s")


@pytest.mark.gen_test(timeout=30)
async def test_the_change_feed_hands_over_core_changes_and_resumes_after_their_token(mongo_uri: str) -> None:
    """An insert comes back as a `Change` whose position is its event id, and a stream resumed
    at its token starts with the next insert."""
    store = MongoStore(base_settings(), mongo_uri)
    await store.start()
    feed: ChangeFeed = store
    try:
        before = await feed.cluster_time()
        stream = await feed.watch_events()
        await store.publish(event_document("note", {"n": 1}))
        await store.publish(event_document("note", {"n": 2}))
        first = await next_change(stream)
        await stream.close()
        assert first.document is not None and first.document["n"] == 1
        assert event_id(first.position) > event_id(before)
        await feed.save_position(event_id(first.position), first.token)
        saved = await feed.position_at_or_before(event_id(first.position))
        assert saved is not None
        resumed = await feed.watch_events(resume_after=saved)
        second = await next_change(resumed)
        await resumed.close()
        assert second.document is not None and second.document["n"] == 2 and second.position > first.position
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_token_mongodb_refuses_is_a_store_error(mongo_uri: str) -> None:
    """A resume token MongoDB refuses reaches fan-out as `StoreError`, not an OperationFailure (a
    pruned one is `HistoryLost`: tests/integration/test_resume_limits.py prunes a real oplog)."""
    store = MongoStore(base_settings(), mongo_uri)
    await store.start()
    try:
        with pytest.raises(StoreError) as caught:
            stream = await store.watch_events(resume_after={"_data": "not a token"})
            await stream.try_next()
        assert not isinstance(caught.value, HistoryLost)
    finally:
        await store.close()


def test_mongo_store_implements_the_fanout_ports() -> None:
    """Checked by mypy (these assignments) and at run time by name."""

    def ports(store: MongoStore) -> tuple[ChangeFeed, PresenceStore, StoreHealth]:
        return store, store, store

    for name in ("watch_events", "cluster_time", "presence_settle", "ping", "probe_write", "writes_failing"):
        assert hasattr(MongoStore, name)
    assert not hasattr(MongoStore, "presence_writes")  # the bench counts serverStatus opcounters
    assert ports is not None
