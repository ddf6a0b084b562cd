"""A replay storm against a real service process: one user resuming from an old id 20 times at
once, again and again, while another user writes (bench/replay_storm.py's clients, smaller).
The writer gets no 5xx, the attacker only 200s and "come back later" answers, and the service's
memory does not grow with the replays."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlencode

import pytest
from tornado.httpclient import AsyncHTTPClient

from bench.crash import SERVICE_ENV, embedded_uri
from bench.replay_storm import attack, fetch, first_cursor, oldest_id, rss_mb, seed, token, write_loop
from harness.processes import ServiceProcess

EVENTS = 5000


@pytest.mark.timeout(120)
def test_a_replay_storm_by_one_user_costs_other_users_nothing(tmp_path: Path) -> None:
    """20 concurrent polls from the oldest of 5,000 events for 5 s: writes all answered 201,
    polls answered 200 (a page), 503 or 429 (come back later), RSS growth under 50 MB."""

    async def run() -> tuple[dict[int, int], dict[int, int], float]:
        AsyncHTTPClient.configure(None, max_clients=32)
        service = ServiceProcess(tmp_path, {**SERVICE_ENV, "HISTORY_SIZE": "100"})
        await asyncio.to_thread(service.start)
        try:
            headers = {"Authorization": f"Bearer {token(55)}"}
            before = await first_cursor(service.url, headers)
            await asyncio.to_thread(seed, embedded_uri(service), EVENTS)
            oldest = await oldest_id(service.url, headers, before)
            rss = rss_mb(service.pid)
            answers, (_, writes) = await asyncio.gather(
                attack(service.url, oldest, 20, 5.0), write_loop(service.url, 5.0)
            )
            growth = rss_mb(service.pid) - rss
            # And the history is still all there, once, for a client catching up by polling.
            cursor, got = oldest, 0
            for _ in range(40):
                code, body = await fetch(f"{service.url}/poll?{urlencode({'cursor': cursor})}", headers)
                if code != 200:
                    await asyncio.sleep(0.5)
                    continue
                answer = json.loads(body)
                got += sum(1 for m in answer["messages"] if m.get("type") == "note")
                cursor = answer["cursor"]
                if got >= EVENTS - 1:
                    break
            assert got == EVENTS - 1
            return dict(answers), dict(writes), growth
        finally:
            await asyncio.to_thread(service.stop)

    answers, writes, growth = asyncio.run(run())
    assert set(writes) == {201} and sum(writes.values()) > 0, writes
    assert set(answers) <= {200, 429, 503} and answers.get(200, 0) > 0, answers
    assert growth < 50, growth
