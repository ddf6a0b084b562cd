"""Long-polling at `/poll`: complete JSON answers, resume by cursor (across a restart too),
filters, auth failures, the per-user limit, drain, headers and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from harness.clients import Service, eventually, wait_bound
from service.core.identity import Principal
from service.transports.poll import VerifiedTokens
from tests.browser import ROOT
from tests.conftest import StartService

PUBLISHER = ("user", "publisher")


async def poll(service: Service, token: str | None, **query: str) -> tuple[int, dict[str, Any], Any]:
    """One `GET /poll`: status, response headers, JSON body."""
    path = "/poll" + ("?" + urlencode(query) if query else "")
    response = await service.request("GET", path, token=token)
    return response.code, dict(response.headers), json.loads(response.body)


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages if "id" in m]


@pytest.mark.gen_test(timeout=30)
async def test_first_poll_answers_connected_at_once_without_caching(service: Service) -> None:
    """The first poll is `connected`, with a cursor, `no-store` and JSON, without waiting."""
    status, headers, body = await poll(service, service.token(sub=8, name="فاطمة"))
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    [hello] = body["messages"]
    assert hello["type"] == "connected" and hello["transport"] == "poll"
    assert hello["userId"] == 8 and hello["userName"] == "فاطمة" and hello["resumed"] is False
    assert isinstance(body["cursor"], str)


@pytest.mark.gen_test(timeout=30)
async def test_idle_poll_returns_empty_with_its_cursor_after_the_timeout(start_service: StartService) -> None:
    """Nothing pending: an empty list after POLL_TIMEOUT_SECONDS, the cursor unchanged."""
    service = await start_service(poll_timeout_seconds=0.3)
    token = service.token()
    _, _, first = await poll(service, token)
    status, _, body = await poll(service, token, cursor=first["cursor"])
    assert status == 200 and body == {"messages": [], "cursor": first["cursor"]}


@pytest.mark.gen_test(timeout=30)
async def test_waiting_poll_answers_with_the_first_live_event(service: Service) -> None:
    """A poll that waits returns as soon as an event is published, with the event's envelope and id."""
    token = service.token()
    _, _, first = await poll(service, token)
    waiting = asyncio.ensure_future(poll(service, token, cursor=first["cursor"]))
    await eventually(lambda: service.ctx.hub.slots_taken(1) == 1, 5, "the poll to wait")
    await service.publish(service.token(sub=2, roles=PUBLISHER), {"type": "note", "text": "سلام"})
    _, _, body = await asyncio.wait_for(waiting, wait_bound(10))
    [event] = body["messages"]
    assert event["type"] == "note" and event["text"] == "سلام"
    assert body["cursor"] == event["id"] > first["cursor"]


@pytest.mark.gen_test(timeout=120)
async def test_consecutive_polls_deliver_100_events_per_second_once_in_order(service: Service) -> None:
    """Under 100 events/s, polling from each cursor yields every event exactly once, in order."""
    token = service.token()
    publisher = service.token(sub=2, roles=PUBLISHER)
    _, _, first = await poll(service, token)
    cursor, polls = first["cursor"], 0
    received: list[dict[str, Any]] = []

    async def publish_all() -> None:
        for n in range(300):
            await service.publish(publisher, {"type": "tick", "n": n})
            await asyncio.sleep(0.01)

    publishing = asyncio.ensure_future(publish_all())
    while len(received) < 300:
        _, _, body = await asyncio.wait_for(poll(service, token, cursor=cursor), wait_bound(30))
        received += body["messages"]
        cursor, polls = body["cursor"], polls + 1
    await publishing
    assert [m["n"] for m in received] == list(range(300))
    assert ids(received) == sorted(set(ids(received)))
    assert polls > 10  # many polls, not one batch


@pytest.mark.gen_test(timeout=60)
async def test_poll_resumes_across_a_service_restart(start_service: StartService) -> None:
    """A cursor from one process is answered by the next (from the history it read back at
    start, or from MongoDB): each missed event once, in order. An answer holds what the new
    process's stream has shown so far, so the three may take more than one poll."""
    service = await start_service()
    token = service.token()
    publisher = service.token(sub=2, roles=PUBLISHER)
    _, _, first = await poll(service, token)
    await service.publish(publisher, {"type": "tick", "n": 0})
    _, _, body = await poll(service, token, cursor=first["cursor"])
    assert [m["n"] for m in body["messages"]] == [0]
    await service.server.stop()
    restarted = await start_service(mongodb_db=service.settings.mongodb_db)
    for n in (1, 2, 3):
        await restarted.publish(publisher, {"type": "tick", "n": n})
    got: list[int] = []
    cursor, polls = body["cursor"], 0
    while len(got) < 3 and polls < 10:
        _, _, after = await poll(restarted, token, cursor=cursor)
        got += [m["n"] for m in after["messages"]]
        cursor, polls = after["cursor"], polls + 1
    assert got == [1, 2, 3]
    assert restarted.ctx.metrics.sample("realtime_resumes_total", transport="poll", outcome="replayed") == polls


@pytest.mark.gen_test(timeout=30)
async def test_unknown_cursor_answers_resync_and_a_fresh_cursor(service: Service) -> None:
    """A position that is not ours cannot be followed: `resync`, and a cursor to go on from."""
    _, _, body = await poll(service, service.token(), cursor="not-an-id")
    [resync] = body["messages"]
    assert resync["type"] == "resync"
    assert isinstance(body["cursor"], str) and body["cursor"] != "not-an-id"
    assert service.ctx.metrics.sample("realtime_resumes_total", transport="poll", outcome="resync") == 1


@pytest.mark.gen_test(timeout=30)
async def test_poll_applies_addressing_and_event_filters(start_service: StartService) -> None:
    """Events for other users and unsubscribed types are skipped, and the cursor still moves past them."""
    service = await start_service(poll_timeout_seconds=0.5)
    token = service.token(sub=1)
    publisher = service.token(sub=2, roles=PUBLISHER)
    _, _, first = await poll(service, token)
    await service.publish(publisher, {"type": "note", "n": 1, "to": {"users": [3]}})
    await service.publish(publisher, {"type": "other", "n": 2})
    await service.publish(publisher, {"type": "note", "n": 3, "to": {"users": [1]}})
    await eventually(lambda: len(service.ctx.bus.history) == 3, 5, "three events on the bus")
    _, _, body = await poll(service, token, cursor=first["cursor"], events="note")
    assert [m["n"] for m in body["messages"]] == [3]
    assert body["cursor"] == service.ctx.bus.history[-1].event.id


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("token", "reason"), [(None, "missing token"), ("x.y.z", "invalid token")])
async def test_poll_auth_failure_is_401_json_at_once(service: Service, token: str | None, reason: str) -> None:
    """No credentials, no poll: 401 with a JSON reason, never a wait."""
    status, headers, body = await poll(service, token, cursor="0")
    assert status == 401 and body == {"error": "unauthorized", "reason": reason}
    assert headers["Cache-Control"] == "no-store"
    assert service.ctx.metrics.sample("realtime_auth_failures_total", transport="poll", reason=reason) == 1


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("header", [False, True], ids=["alone", "with-a-header"])
async def test_poll_refuses_a_token_in_the_url(service: Service, header: bool) -> None:
    """`?token=` on /poll is a 401 `token in URL` (a poller would repeat it in every URL), even beside a header."""
    token = service.token(sub=5)
    response = await service.request("GET", f"/poll?token={token}", token=token if header else None)
    assert response.code == 401 and json.loads(response.body) == {"error": "unauthorized", "reason": "token in URL"}
    assert service.ctx.metrics.sample("realtime_auth_failures_total", transport="poll", reason="token in URL") == 1


@pytest.mark.gen_test(timeout=30)
async def test_poll_accepts_the_access_token_cookie(service: Service) -> None:
    """The dashboard's cookie authenticates a poll like a REST request."""
    response = await service.request("GET", "/poll", headers={"Cookie": f"access_token={service.token(sub=5)}"})
    assert response.code == 200 and json.loads(response.body)["messages"][0]["userId"] == 5


@pytest.mark.gen_test(timeout=30)
async def test_a_waiting_poll_holds_one_of_the_users_slots(start_service: StartService) -> None:
    """Past MAX_CONNECTIONS_PER_USER a poll is refused with 429; the slot comes back when it ends."""
    service = await start_service(max_connections_per_user=1)
    token = service.token()
    _, _, first = await poll(service, token)
    waiting = asyncio.ensure_future(poll(service, token, cursor=first["cursor"]))
    await eventually(lambda: service.ctx.hub.slots_taken(1) == 1, 5, "the poll to wait")
    status, headers, body = await poll(service, token, cursor=first["cursor"])
    assert status == 429 and body["error"] == "too_many_connections" and headers["Retry-After"] == "5"
    await service.publish(service.token(sub=2, roles=PUBLISHER), {"type": "note"})
    await asyncio.wait_for(waiting, wait_bound(10))
    assert service.ctx.hub.slots_taken(1) == 0


@pytest.mark.gen_test(timeout=30)
async def test_drain_answers_a_waiting_poll_at_once_and_refuses_new_ones(start_service: StartService) -> None:
    """SIGTERM's drain answers a pending poll now (empty, same cursor), not in its turn among streams."""
    service = await start_service(drain_seconds=60.0, poll_timeout_seconds=60.0)
    token = service.token()
    stream = await service.sse({"token": token})  # first in line: the drain spreads closes over 60 s
    await stream.next_event()
    _, _, first = await poll(service, token)
    waiting = asyncio.ensure_future(poll(service, token, cursor=first["cursor"]))
    await eventually(lambda: len(service.ctx.hub) == 2, 5, "the poll to wait")
    draining = asyncio.ensure_future(service.server.drain())
    status, _, body = await asyncio.wait_for(waiting, wait_bound(10))
    assert status == 200 and body == {"messages": [], "cursor": first["cursor"]}
    await stream.until_end()
    await draining


@pytest.mark.gen_test(timeout=30)
async def test_new_poll_during_drain_is_503(service: Service) -> None:
    """A draining process sends pollers elsewhere."""
    service.ctx.lifecycle.draining = True
    status, headers, body = await poll(service, service.token())
    assert status == 503 and body["error"] == "service_unavailable" and headers["Retry-After"] == "1"


@pytest.mark.gen_test(timeout=30)
async def test_waiting_polls_count_as_poll_connections(service: Service) -> None:
    """`realtime_connections{transport="poll"}` counts waiting polls; sent events count per poll."""
    metrics = service.ctx.metrics
    token = service.token()
    _, _, first = await poll(service, token)
    waiting = asyncio.ensure_future(poll(service, token, cursor=first["cursor"]))
    await eventually(lambda: metrics.sample("realtime_connections", transport="poll") == 1, 5, "a poll connection")
    await service.publish(service.token(sub=2, roles=PUBLISHER), {"type": "note"})
    await asyncio.wait_for(waiting, wait_bound(10))
    assert metrics.sample("realtime_connections", transport="poll") == 0
    assert metrics.sample("realtime_messages_sent_total", transport="poll") == 1
    assert metrics.sample("realtime_connections_opened_total", transport="poll") == 2
    assert b'realtime_connections{transport="poll"}' in metrics.exposition()


@pytest.mark.gen_test(timeout=60)
async def test_cli_tail_poll_prints_events_as_json_lines(service: Service) -> None:
    """`python -m service tail --poll` follows over long-polling, one JSON line per message."""
    token = service.token(sub=3, name="يوسف")
    command = ["-m", "service", "tail", "--poll", "--url", service.http, "--token", token, "--max-events", "2"]
    command.append("--no-position")  # remember nothing in the home directory
    tail = await asyncio.create_subprocess_exec(
        sys.executable, *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert tail.stdout is not None
        hello = json.loads(await asyncio.wait_for(tail.stdout.readline(), wait_bound(20)))
        assert hello["type"] == "connected" and hello["transport"] == "poll"
        publisher = service.token(sub=2, roles=PUBLISHER)
        for n in (1, 2):
            await service.publish(publisher, {"type": "note", "n": n, "text": "مرحبا"})
        out, _ = await asyncio.wait_for(tail.communicate(), wait_bound(30))
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(m["type"], m["n"], m["text"]) for m in lines] == [("note", 1, "مرحبا"), ("note", 2, "مرحبا")]
    assert tail.returncode == 0


@pytest.mark.gen_test(timeout=30)
async def test_poll_by_ticket_is_logged_without_it(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    """A ticket authenticates a poll, and the access line shows the poll without the ticket."""
    caplog.set_level(logging.DEBUG, logger="service.access")
    token = service.token(sub=4)
    response = await service.request("POST", "/api/realtime/ticket", token=token)
    ticket = json.loads(response.body)["ticket"]
    status, _, body = await poll(service, None, ticket=ticket)
    assert status == 200 and body["messages"][0]["userId"] == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "service.access" and "/poll" in r.getMessage()]
    assert len(lines) == 1 and ticket not in lines[0] and "ticket=[redacted]" in lines[0]


@pytest.mark.gen_test(timeout=30)
async def test_a_poll_ends_with_close_4401_when_its_token_expires(start_service: StartService) -> None:
    """A poll never outlives its token: at expiry (exp + the leeway) it answers `close` 4401, then 401s."""
    service = await start_service(poll_timeout_seconds=60.0)
    token = service.token(ttl=-28)  # exp + 30 s leeway is 2 s away
    _, _, first = await poll(service, token)
    status, _, body = await asyncio.wait_for(poll(service, token, cursor=first["cursor"]), wait_bound(10))
    assert status == 200 and body["messages"] == [{"type": "close", "code": 4401, "reason": "token expired"}]
    status, _, body = await poll(service, token, cursor=first["cursor"])
    assert status == 401 and body["reason"] == "token expired"


def test_remembered_tokens_serve_until_expiry_and_stay_bounded() -> None:
    """A verified token is reused only until its `exp`, and the least recently used go past the bound."""
    tokens = VerifiedTokens(size=2)
    now = time.time()
    tokens.put("expired", Principal(1, "a", frozenset({"user"}), now - 1))
    assert tokens.get("expired") is None and len(tokens) == 0
    for name in ("a", "b"):
        tokens.put(name, Principal(name, name, frozenset({"user"}), now + 60))
    assert tokens.get("a") is not None  # now "b" is the least recently used
    tokens.put("c", Principal("c", "c", frozenset({"user"}), now + 60))
    assert tokens.get("b") is None and tokens.get("a") is not None and tokens.get("c") is not None
