"""Resumes an attacker, an operator or time makes hard: deep backlogs read a page at a time,
replays admitted a few at a time, and history that is gone (pruned, past the TTL, older than
every saved position) always answered with `resync`, never a short replay."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from harness.clients import Service, eventually
from service.core.events import Position, event_document, event_id
from service.fanout.replay import PER_USER
from service.storage.mongo.embedded import EmbeddedMongo
from tests.conftest import StartService

BACKLOG = 3500


async def poll(service: Service, token: str, **query: str) -> tuple[int, dict[str, str], Any]:
    response = await service.request("GET", "/poll?" + urlencode(query), token=token)
    return response.code, dict(response.headers), json.loads(response.body)


async def seed(service: Service, count: int, start: int = 0) -> None:
    """Insert `count` numbered events straight into `events` and wait until the bus has seen them."""
    docs = [event_document("note", {"n": n}) for n in range(start, start + count)]
    for at in range(0, count, 1000):
        await service.ctx.store.events.insert_many(docs[at : at + 1000])

    def seen() -> bool:
        history = service.ctx.bus.history
        return bool(history) and history[-1].event.fields.get("n") == start + count - 1

    await eventually(seen, 30, f"{count} seeded events on the bus")


async def resyncs_over_websocket(service: Service, token: str, last_id: str) -> None:
    """A WebSocket resuming from `last_id` gets `connected` with `resumed: false`, then `resync`."""
    ws = await service.websocket({"token": token, "last_event_id": last_id})
    assert (await ws.recv_type("connected"))["resumed"] is False
    assert (await ws.recv())["type"] == "resync"
    await ws.close()


async def cursor_now(service: Service, token: str) -> str:
    status, _, body = await poll(service, token)
    assert status == 200 and body["messages"][0]["type"] == "connected"
    return str(body["cursor"])


@pytest.mark.gen_test(timeout=90)
async def test_polling_catches_up_a_deep_backlog_one_page_per_poll(start_service: StartService) -> None:
    """3,500 events behind a 10-event memory: every one once, in order, in ceil(3500/1000) polls plus the last."""
    service = await start_service(history_size=10, poll_timeout_seconds=1)
    token = service.token(sub=21)
    cursor = await cursor_now(service, token)
    await seed(service, BACKLOG)
    got: list[int] = []
    polls = 0
    while len(got) < BACKLOG and polls < 20:
        status, _, body = await poll(service, token, cursor=cursor)
        assert status == 200
        assert len(body["messages"]) <= 1000
        got += [m["n"] for m in body["messages"] if m.get("type") == "note"]
        cursor = body["cursor"]
        polls += 1
    assert got == list(range(BACKLOG))
    assert polls <= BACKLOG // 1000 + 1


@pytest.mark.gen_test(timeout=90)
async def test_streams_resume_a_deep_backlog_greeted_first_then_in_order(start_service: StartService) -> None:
    """WebSocket and SSE: `connected` (resumed) comes at once, then the 3,500 events, then live ones."""
    service = await start_service(history_size=10)
    token = service.token(sub=22)
    cursor = await cursor_now(service, token)
    await seed(service, BACKLOG)
    ws = await service.websocket({"token": token, "last_event_id": cursor})
    sse = await service.sse({"token": token}, headers={"Last-Event-ID": cursor})
    assert (await ws.recv_type("connected"))["resumed"] is True
    assert json.loads((await sse.next_of("connected")).data)["resumed"] is True
    await seed(service, 1, start=BACKLOG)
    ws_got = [(await ws.recv())["n"] for _ in range(BACKLOG + 1)]
    sse_got = [json.loads((await sse.next_of("note")).data)["n"] for _ in range(BACKLOG + 1)]
    assert ws_got == sse_got == list(range(BACKLOG + 1))
    await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_replay_past_the_users_share_is_refused_with_retry_after(start_service: StartService) -> None:
    """With the user's share of store replays taken (PER_USER): poll 503 + Retry-After, WebSocket 1013, SSE close 1013
    with a retry; another user's write still succeeds."""
    service = await start_service(history_size=10)
    token = service.token(sub=23)
    cursor = await cursor_now(service, token)
    await seed(service, 50)
    gate = service.ctx.bus.gate
    held = [await gate.acquire(23) for _ in range(PER_USER)]
    try:
        status, headers, body = await poll(service, token, cursor=cursor)
        assert status == 503 and headers["Retry-After"] == "2" and "not admitted" in body["message"]
        ws = await service.websocket({"token": token, "last_event_id": cursor})
        assert (await ws.closed())[0] == 1013
        sse = await service.sse({"token": token, "last_event_id": cursor})
        close = await sse.next_of("close")
        assert json.loads(close.data)["code"] == 1013 and sse.raw.count(b"retry: ") == 2
        sse.close()
        other = service.token(sub=24)
        created = await service.request("POST", "/api/tasks", {"title": "t", "taskType": "daily"}, token=other)
        assert created.code == 201
    finally:
        for ticket in held:
            ticket.release()
    status, _, body = await poll(service, token, cursor=cursor)
    assert status == 200 and [m["n"] for m in body["messages"] if m["type"] == "note"] == list(range(50))


@pytest.mark.gen_test(timeout=60)
async def test_an_id_older_than_the_history_ttl_is_resync(start_service: StartService) -> None:
    """Events past HISTORY_TTL_SECONDS may still be in the oplog; they are not replayed as if whole."""
    service = await start_service(history_size=10, history_ttl_seconds=60)
    token = service.token(sub=25)
    old = event_id(Position(int(time.time()) - 120, 1))
    await resyncs_over_websocket(service, token, old)


@pytest.mark.gen_test(timeout=60)
async def test_an_id_older_than_every_saved_position_is_resync(start_service: StartService) -> None:
    """An id from before this deployment's oldest saved stream position (older than the oplog's
    floor, or forged) cannot be proven whole: resync, over a poll and a WebSocket."""
    service = await start_service(history_size=10)
    token = service.token(sub=26)
    await seed(service, 20)
    before = event_id(Position(int(time.time()) - 3000, 1))
    status, _, body = await poll(service, token, cursor=before)
    assert status == 200 and [m["type"] for m in body["messages"]] == ["resync"]
    await resyncs_over_websocket(service, token, before)


@pytest.mark.gen_test(timeout=120)
async def test_a_position_pruned_from_the_oplog_is_resync_not_a_short_replay(start_service: StartService) -> None:
    """On a store whose oplog keeps 300 entries, a resume from before 600 newer events is resync
    (the old code answered `resumed: true` and silently skipped what was pruned)."""
    mongo = EmbeddedMongo(":memory:", oplog_max_entries=300)
    uri = mongo.start()
    try:
        service = await start_service(mongodb_uri=uri, history_size=10)
        token = service.token(sub=27)
        cursor = await cursor_now(service, token)
        await seed(service, 600)
        await service.ctx.store.client.admin.command("secantusAdmin.pruneOplog")
        await resyncs_over_websocket(service, token, cursor)
        status, _, body = await poll(service, token, cursor=cursor)
        assert status == 200 and [m["type"] for m in body["messages"]] == ["resync"]
        # A recent position still resumes: pruning costs only what it pruned.
        recent = service.ctx.bus.history[0].event.id
        status, _, body = await poll(service, token, cursor=recent)
        assert status == 200 and [m["n"] for m in body["messages"]] == list(range(591, 600))
        await service.server.stop()
    finally:
        mongo.stop()


async def resume_over_websocket(service: Service, token: str, last_id: str, count: int) -> list[int]:
    """The `n` of the `count` events a WebSocket resuming from `last_id` gets, after `connected`."""
    ws = await service.websocket({"token": token, "last_event_id": last_id})
    assert (await ws.recv_type("connected"))["resumed"] is True
    got = [(await ws.recv())["n"] for _ in range(count)]
    await ws.close()
    return got


@pytest.mark.gen_test(timeout=90)
async def test_a_restarted_process_serves_its_predecessors_resumes_from_memory(start_service: StartService) -> None:
    """The next process reads the events before its start back into memory, so a client of the
    process it replaced resumes without a MongoDB read of its own. Started again with a smaller
    HISTORY_SIZE, it keeps what that holds, and an older resume is still whole, from MongoDB."""
    first = await start_service()
    token = first.token(sub=23)
    await seed(first, 300)
    after = first.ctx.bus.history[19].event.id  # the client had events 0..19
    await first.server.stop()
    second = await start_service(mongodb_db=first.settings.mongodb_db)
    assert await resume_over_websocket(second, token, after, 280) == list(range(20, 300))
    assert second.ctx.metrics.sample("realtime_replays_total", source="memory") == 1
    assert second.ctx.metrics.sample("realtime_replays_total", source="store") == 0
    assert second.ctx.bus.covered_from is not None and second.ctx.bus.covered_from < after
    await second.server.stop()
    third = await start_service(mongodb_db=first.settings.mongodb_db, history_size=100)
    assert await resume_over_websocket(third, token, after, 280) == list(range(20, 300))
    assert third.ctx.metrics.sample("realtime_replays_total", source="store") == 1
    warming = third.ctx.bus._warming
    await eventually(lambda: warming is not None and warming.done(), 10, "the warm-up")
    # At most HISTORY_SIZE, the newest (how many depends on which positions were saved: one
    # event in 64 on average, fewer during the seed's one burst).
    kept = [e.event.fields["n"] for e in third.ctx.bus.history]
    assert len(kept) <= 100 and kept == list(range(300 - len(kept), 300))
