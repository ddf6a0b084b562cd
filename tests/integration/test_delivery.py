"""One ordered stream on both transports: every event type, ids, Arabic, addressing, resume."""

from __future__ import annotations

import json

import pytest

from harness.clients import Service, SseClient, WsClient
from tests.conftest import StartService

SEED_FIELDS = {
    "task_created": {"userId", "userName", "taskId", "taskType", "title"},
    "task_executed": {"userId", "userName", "taskId", "taskType", "resultStatus"},
    "task_updated": {"userId", "userName", "taskId"},
    "task_deleted": {"userId", "userName", "taskId"},
    "schedule_updated": {"scheduleId", "action"},
}


async def both(service: Service, token: str, **query: str) -> tuple[WsClient, SseClient]:
    ws = await service.websocket({"token": token, **query})
    sse = await service.sse({"token": token, **query})
    await ws.recv_type("connected")
    await sse.next_of("connected")
    return ws, sse


async def drive_every_event_type(service: Service, token: str) -> None:
    """Cause each application event once, over REST."""
    created = json.loads(
        (await service.request("POST", "/api/tasks", {"title": "تقرير يومي", "taskType": "daily"}, token=token)).body
    )
    path = f"/api/tasks/{created['id']}"
    assert (await service.request("POST", path + "/execute", {"resultStatus": "completed"}, token=token)).code == 200
    assert (await service.request("PATCH", path, {"title": "تقرير أسبوعي"}, token=token)).code == 200
    assert (await service.request("DELETE", path, token=token)).code == 204
    schedule = {"name": "صباحي", "cron": "0 9 * * 1", "taskType": "weekly"}
    assert (await service.request("POST", "/api/schedules", schedule, token=token)).code == 201


@pytest.mark.gen_test(timeout=60)
async def test_every_event_type_reaches_both_transports_with_same_ids(service: Service) -> None:
    """task_* and schedule_updated arrive on WebSocket and SSE, in order, with the seed's fields and equal ids."""
    token = service.token(sub=1, name="محمد حسن")
    ws, sse = await both(service, token)
    await drive_every_event_type(service, token)
    expected = ["task_created", "task_executed", "task_updated", "task_deleted", "schedule_updated"]
    over_ws = [await ws.recv() for _ in expected]
    over_sse = [await sse.next_event() for _ in expected]
    assert [m["type"] for m in over_ws] == expected
    assert [e.event for e in over_sse] == expected
    for message, event in zip(over_ws, over_sse, strict=True):
        assert event.id == message["id"]
        assert event.json() == message
        assert SEED_FIELDS[message["type"]] <= set(message)
        assert message["ts"].endswith("Z") and "to" not in message
    ids = [m["id"] for m in over_ws]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert over_ws[0]["userName"] == "محمد حسن" and over_ws[0]["title"] == "تقرير يومي"
    assert over_ws[2]["title"] == "تقرير أسبوعي"
    assert over_ws[4]["action"] == "created"
    await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_arabic_text_round_trips_byte_for_byte(service: Service) -> None:
    """UTF-8 Arabic published is the exact UTF-8 bytes received on both transports."""
    name = "عبد الرحمن بن عوف ١٢٣ — مهمة «عاجلة»"
    publisher = service.token(sub=2, name=name, roles=("publisher",))
    ws, sse = await both(service, service.token())
    await service.publish(publisher, {"type": "note", "text": name, "userName": name})
    frame = await ws.conn.recv()
    assert isinstance(frame, str) and name.encode() in frame.encode("utf-8")
    assert "\\u" not in frame
    event = await sse.next_event()
    assert name.encode("utf-8") in event.data.encode("utf-8")
    assert name.encode("utf-8") in bytes(sse.raw)
    await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_addressed_events_reach_only_named_users_and_roles(service: Service) -> None:
    """`to.users` / `to.roles` limit delivery; `to` itself is not sent."""
    publisher = service.token(sub=99, roles=("publisher",))
    alice = await service.websocket({"token": service.token(sub=1)})
    bob = await service.websocket({"token": service.token(sub=2, roles=("user", "admin"))})
    carol = await service.sse({"token": service.token(sub=3)})
    for client in (alice, bob):
        await client.recv_type("connected")
    await carol.next_of("connected")
    await service.publish(publisher, {"type": "private", "n": 1, "to": {"users": [1, "3"]}})
    await service.publish(publisher, {"type": "private", "n": 2, "to": {"roles": ["admin"]}})
    await service.publish(publisher, {"type": "public", "n": 3})
    assert [(await alice.recv())["n"] for _ in range(2)] == [1, 3]
    assert [(await bob.recv())["n"] for _ in range(2)] == [2, 3]
    got = [(await carol.next_event()).json() for _ in range(2)]
    assert [m["n"] for m in got] == [1, 3] and all("to" not in m for m in got)
    await alice.close()
    await bob.close()
    carol.close()


async def publish_numbered(service: Service, token: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        await service.publish(token, {"type": "tick", "n": n})


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("history_size", [1000, 2], ids=["from-memory", "from-mongodb"])
async def test_resume_replays_missed_events_once_in_order(start_service: StartService, history_size: int) -> None:
    """Reconnecting with the last id replays what was missed, then live events, no duplicates."""
    service = await start_service(history_size=history_size)
    publisher = service.token(sub=9, roles=("publisher",))
    token = service.token()
    ws = await service.websocket({"token": token})
    await ws.recv_type("connected")
    await publish_numbered(service, publisher, 0, 3)
    seen = [await ws.recv() for _ in range(3)]
    await ws.close()
    await publish_numbered(service, publisher, 3, 5)
    ws = await service.websocket({"token": token, "last_event_id": seen[-1]["id"]})
    hello = await ws.recv_type("connected")
    assert hello["resumed"] is True
    await publish_numbered(service, publisher, 8, 2)
    replayed = [await ws.recv() for _ in range(7)]
    assert [m["n"] for m in replayed] == list(range(3, 10))
    sse = await service.sse({"token": token}, headers={"Last-Event-ID": seen[0]["id"]})
    assert (await sse.next_of("connected")).json()["resumed"] is True
    assert [(await sse.next_event()).json()["n"] for _ in range(9)] == list(range(1, 10))
    outcome = service.ctx.metrics.sample("realtime_resumes_total", transport="websocket", outcome="replayed")
    assert outcome == 1
    await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_unknown_last_event_id_gets_resync_then_live_events(service: Service) -> None:
    """An id that cannot be replayed yields `resumed: false`, one `resync`, then live events."""
    publisher = service.token(sub=9, roles=("publisher",))
    ws = await service.websocket({"token": service.token(), "last_event_id": "not-an-id"})
    assert (await ws.recv())["resumed"] is False
    assert (await ws.recv())["type"] == "resync"
    await service.publish(publisher, {"type": "tick", "n": 1})
    assert (await ws.recv())["n"] == 1
    assert service.ctx.metrics.sample("realtime_resumes_total", transport="websocket", outcome="resync") == 1
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_event_inserted_directly_into_mongodb_is_delivered(service: Service) -> None:
    """Another program may publish by inserting into `events`; bad documents are skipped."""
    ws, sse = await both(service, service.token())
    events = service.ctx.store.events
    await events.insert_one({"type": "Not A Type", "x": 1})
    await events.insert_one({"type": "billing.invoice_paid", "invoiceId": 7, "amount": 12.5})
    message = await ws.recv()
    assert message["type"] == "billing.invoice_paid" and message["invoiceId"] == 7
    assert (await sse.next_event()).id == message["id"]
    await ws.close()
    sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_last_event_id_from_the_future_gets_resync(service: Service) -> None:
    """A well-formed id far ahead of the clock is not followed (it would hide every live event)."""
    ws = await service.websocket({"token": service.token(), "last_event_id": "ffffffff00000001"})
    assert (await ws.recv())["resumed"] is False
    assert (await ws.recv())["type"] == "resync"
    await ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_event_ts_equals_the_changed_tasks_updated_at(service: Service) -> None:
    """A change and its event carry one time, so clients can order REST snapshots and events."""
    token = service.token()
    ws = await service.websocket({"token": token})
    await ws.recv_type("connected")
    created = json.loads(
        (await service.request("POST", "/api/tasks", {"title": "t", "taskType": "daily"}, token=token)).body
    )
    executed = json.loads(
        (
            await service.request(
                "POST", f"/api/tasks/{created['id']}/execute", {"resultStatus": "failed"}, token=token
            )
        ).body
    )
    first, second = await ws.recv(), await ws.recv()
    assert first["ts"] == created["updatedAt"] and second["ts"] == executed["updatedAt"]
    assert second["executions"] == executed["executions"] == 1
    await ws.close()
