"""MongoDB stalls (a SecantusDB process SIGSTOPped and continued): the service answers within its
deadlines during a stall, recovers after each of several, keeps its pool bounded, and a drain
answers the writes it accepted.

Time bounds here are correctness bounds (MONGODB_TIMEOUT_MS plus a generous margin), not
benchmarks; bench/fault_stalls.py measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from harness.clients import Service, wait_bound
from harness.processes import SECRET, ServiceProcess, as_service, wait_until
from service.app.idempotency import Answer, commit_once, key_id
from service.core.config import Settings
from service.core.errors import StoreUnavailable
from service.core.ports import Transaction
from service.storage.mongo.embedded import EmbeddedMongo
from service.storage.mongo.store import MongoStore, utcnow
from service.storage.mongo.unit_of_work import MongoUnitOfWork

NEW_TASK = {"title": "stall", "taskType": "daily"}
STALL_SECONDS = 5.0  # each stall of the repeated-stalls test
MARGIN_SECONDS = 1.0  # scheduling slack on a busy 2-core machine: a correctness bound, not a benchmark


@pytest.fixture
def mongo() -> Iterator[EmbeddedMongo]:
    """A SecantusDB of this test's own (the session's must never be stopped); continued and stopped after."""
    server = EmbeddedMongo(":memory:")
    server.start()
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


def pause(mongo: EmbeddedMongo) -> None:
    assert mongo.process is not None
    mongo.process.send_signal(signal.SIGSTOP)


def resume(mongo: EmbeddedMongo) -> None:
    assert mongo.process is not None
    mongo.process.send_signal(signal.SIGCONT)


def sockets_to(pid: int, port: int) -> int:
    """TCP connections process `pid` has open (or opening) to `port` on loopback, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open(f"/proc/{pid}/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[3] in ("01", "02") and fields[9] in inodes:  # ESTABLISHED, SYN_SENT
                count += 1
    return count


async def post(client: AsyncHTTPClient, url: str, token: str, key: str | None = None) -> tuple[int, float]:
    """One task creation's status (599: no answer) and seconds."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    started = time.monotonic()
    try:
        response = await client.fetch(
            url + "/api/tasks",
            method="POST",
            body=json.dumps(NEW_TASK),
            headers=headers,
            raise_error=False,
            request_timeout=wait_bound(30),
        )
        code = response.code
    except (HTTPClientError, OSError):
        code = 599
    return code, time.monotonic() - started


@pytest.mark.timeout(300)
def test_three_stalls_in_a_row_each_recover_with_the_pool_bounded(tmp_path: Path, mongo: EmbeddedMongo) -> None:
    """Three 5 s stalls under 40 concurrent writers per replica (two replicas): each replica holds at most
    MONGODB_MAX_POOL_SIZE (default 20) + its 2 monitors connections, and writes succeed after each SIGCONT."""
    env = {"JWT_SECRET": SECRET, "DEV_MODE": "0", "MONGODB_URI": mongo.uri, "MONGODB_TIMEOUT_MS": "1000"}
    replicas = [ServiceProcess(tmp_path / f"r{n}", env) for n in (1, 2)]
    try:
        for replica in replicas:
            replica.start()
        token = as_service(replicas[0]).token()
        most = asyncio.run(stalls(mongo, replicas, token, rounds=3, writes=40))
    finally:
        for replica in replicas:
            replica.stop()
    assert max(most) <= 20 + 2, most


async def stalls(
    mongo: EmbeddedMongo, replicas: list[ServiceProcess], token: str, rounds: int, writes: int
) -> list[int]:
    """`writes` writers per replica write all along while MongoDB stalls `rounds` times for
    STALL_SECONDS, each time until every replica acknowledged a write begun after the SIGCONT;
    the most connections each replica held (the burst after a SIGCONT is when a pool grows)."""
    client = AsyncHTTPClient(force_instance=True, max_clients=len(replicas) * writes)
    most = [0] * len(replicas)
    answers: list[list[tuple[float, int]]] = [[] for _ in replicas]  # (attempt began, status)
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        while not stop.is_set():
            began = time.monotonic()
            answers[n].append((began, (await post(client, replicas[n].url, token, str(uuid.uuid4())))[0]))

    async def sample_until(done: Any, seconds: float, what: str) -> None:
        deadline = time.monotonic() + wait_bound(seconds)
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            for n, replica in enumerate(replicas):
                most[n] = max(most[n], sockets_to(replica.pid, mongo.port))
            await asyncio.sleep(0.05)

    writers = [asyncio.ensure_future(writer(n)) for n in range(len(replicas)) for _ in range(writes)]
    try:
        for _ in range(rounds):
            pause(mongo)
            try:
                until = time.monotonic() + STALL_SECONDS
                await sample_until(lambda until=until: time.monotonic() >= until, 2 * STALL_SECONDS, "the stall")
            finally:
                resume(mongo)
            resumed = time.monotonic()

            def recovered(resumed: float = resumed) -> bool:
                return all(any(t >= resumed and code == 201 for t, code in mine) for mine in answers)

            await sample_until(recovered, 30, "a write begun after SIGCONT to succeed on every replica")
    finally:
        stop.set()
        await asyncio.gather(*writers)
        client.close()
    assert {code for mine in answers for _, code in mine} <= {201, 503}
    return most


def test_mongodb_max_pool_size_bounds_the_pool_unless_the_uri_sets_it() -> None:
    """The client gets maxPoolSize=MONGODB_MAX_POOL_SIZE; a URI's own maxPoolSize wins."""
    settings = Settings(mongodb_max_pool_size=7)
    default = MongoStore(settings, "mongodb://127.0.0.1:1/")
    chosen = MongoStore(settings, "mongodb://127.0.0.1:1/?maxPoolSize=3")
    try:
        assert default.client.options.pool_options.max_pool_size == 7
        assert chosen.client.options.pool_options.max_pool_size == 3
    finally:
        asyncio.run(default.client.close())
        asyncio.run(chosen.client.close())


@pytest.mark.timeout(60)
def test_keyed_write_stalled_after_its_claim_answers_within_the_timeout(mongo: EmbeddedMongo) -> None:
    """Claim, transaction and release share MONGODB_TIMEOUT_MS: a stall after the claim fails the write in time."""
    timeout = 1.5

    async def scenario() -> float:
        store = MongoStore(Settings(mongodb_db="stall", mongodb_timeout_ms=int(timeout * 1000)), mongo.uri)
        await store.start()

        async def change(unit: Transaction) -> Answer:
            pause(mongo)  # the key is claimed: MongoDB stops mid-transaction
            await unit.create_task(NEW_TASK, 1, "x", utcnow())
            return Answer(201)

        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable):
                await commit_once(MongoUnitOfWork(store), change, key="k1", user_id=1, fingerprint="f")
            return time.monotonic() - started
        finally:
            resume(mongo)
            await store.close()

    assert asyncio.run(scenario()) <= timeout + MARGIN_SECONDS


@pytest.mark.timeout(60)
def test_key_of_a_write_that_failed_in_a_stall_is_released_after_it(mongo: EmbeddedMongo) -> None:
    """The release outlives the stall: once MongoDB is back the key holds nothing, so a retry is no 409."""

    async def scenario() -> dict[str, Any] | None:
        store = MongoStore(Settings(mongodb_db="stall", mongodb_timeout_ms=1000), mongo.uri)
        await store.start()

        async def change(unit: Transaction) -> Answer:
            pause(mongo)
            await unit.create_task(NEW_TASK, 1, "x", utcnow())
            return Answer(201)

        try:
            with pytest.raises(StoreUnavailable):
                await commit_once(MongoUnitOfWork(store), change, key="k2", user_id=1, fingerprint="f")
        finally:
            resume(mongo)
            await store.close()  # waits for the release
        client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
        with client:
            return client["stall"]["idempotency_keys"].find_one({"_id": key_id(1, "k2")})

    assert asyncio.run(scenario()) is None


@pytest.mark.timeout(60)
def test_readyz_during_a_stall_answers_not_ready_within_its_bound(tmp_path: Path, mongo: EmbeddedMongo) -> None:
    """Five concurrent probes while MongoDB is stopped each answer 503 "not ready" within the probe's bound."""
    env = {"JWT_SECRET": SECRET, "DEV_MODE": "0", "MONGODB_URI": mongo.uri}  # MONGODB_TIMEOUT_MS: 3000
    replica = ServiceProcess(tmp_path, env)

    async def probes() -> list[tuple[int, str, float]]:
        client = AsyncHTTPClient(force_instance=True)

        async def probe() -> tuple[int, str, float]:
            started = time.monotonic()
            try:
                response = await client.fetch(replica.url + "/readyz", raise_error=False, request_timeout=10)
                code, status = response.code, json.loads(response.body)["status"]
            except (HTTPClientError, OSError):
                code, status = 599, "no answer"
            return code, status, time.monotonic() - started

        try:
            return await asyncio.gather(*(probe() for _ in range(5)))
        finally:
            client.close()

    try:
        replica.start()
        pause(mongo)
        try:
            answers = asyncio.run(probes())
        finally:
            resume(mongo)
        wait_until(replica.ready, 30, "ready again after the stall")
    finally:
        replica.stop()
    assert {(code, status) for code, status, _ in answers} == {(503, "not ready")}, answers
    assert max(seconds for _, _, seconds in answers) <= 2.0 + MARGIN_SECONDS, answers


def test_sigterm_while_mongodb_is_stopped_exits_within_its_bounds(tmp_path: Path, mongo: EmbeddedMongo) -> None:
    """A drain while MongoDB does not answer: every stream is closed, and the process exits 0
    within DRAIN_SECONDS + its stop bounds instead of waiting on MongoDB for ever (presence's
    last write, the change stream's close, the client's close each wait at most a bounded time)."""
    env = {"JWT_SECRET": SECRET, "DEV_MODE": "0", "MONGODB_URI": mongo.uri, "MONGODB_TIMEOUT_MS": "1000"}
    env["DRAIN_SECONDS"] = "1"
    replica = ServiceProcess(tmp_path, env)
    service = as_service(replica)

    async def connect_then_drain() -> tuple[int | None, str]:
        ws = await service.websocket({"token": service.token(sub=5)})
        await ws.recv_type("connected")
        pause(mongo)
        replica.signal(signal.SIGTERM)
        return await ws.closed(seconds=15)

    try:
        replica.start()
        try:
            closed = asyncio.run(connect_then_drain())
            began = time.monotonic()
            code = replica.wait(60)
            seconds = time.monotonic() - began
        finally:
            resume(mongo)
    finally:
        replica.stop()
    assert closed == (1012, "service restart")
    assert code == 0
    # the drain (1 s), presence's last write (MONGODB_TIMEOUT_MS + 5 s), then the HTTP connections', the change
    # stream's and the client's close (5 s each at most), with margin; measured: 12 s
    assert seconds <= 1 + 6 + 5 + 5 + 5 + MARGIN_SECONDS, seconds


@pytest.mark.gen_test(timeout=60)
async def test_drain_answers_a_keyed_write_in_flight_and_releases_its_key(start_service: Any, mongo_uri: str) -> None:
    """A keyed write still retrying its transaction when the drain starts gets its answer before the
    process stops, and its key is released (a retry elsewhere would run, not get 409)."""
    service: Service = await start_service(mongodb_timeout_ms=1500)
    token, key = service.token(sub=9), str(uuid.uuid4())
    created = await service.request("POST", "/api/tasks", NEW_TASK, token=token)
    task_id = json.loads(created.body)["id"]
    # Another transaction holds the task: the PATCH's transaction conflicts and retries until its deadline.
    other: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        async with other.start_session() as blocker:
            await blocker.start_transaction()
            tasks = other[service.settings.mongodb_db]["tasks"]
            await tasks.update_one({"_id": task_id}, {"$set": {"title": "held"}}, session=blocker)
            patch = asyncio.ensure_future(
                service.request(
                    "PATCH", f"/api/tasks/{task_id}", {"title": "x"}, token=token, headers={"Idempotency-Key": key}
                )
            )
            deadline = time.monotonic() + wait_bound(10)
            while service.ctx.lifecycle.writes == 0:
                assert time.monotonic() < deadline, "the PATCH never started"
                await asyncio.sleep(0.01)
            await service.server.drain(0.0)
            response = await patch
            await blocker.abort_transaction()
    finally:
        await other.close()
    assert response.code == 503, response.body
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    with client:
        held = client[service.settings.mongodb_db]["idempotency_keys"].find_one({"_id": key_id(9, key)})
    assert held is None


@pytest.mark.timeout(90)
def test_a_change_stream_round_trip_mongodb_does_not_answer_is_given_up_then_resumed(
    tmp_path: Path, mongo: EmbeddedMongo
) -> None:
    """MongoDB stopped while the change stream waits in a getMore: within AWAIT_SECONDS +
    MONGODB_TIMEOUT_MS the bus gives that round trip up (the log says the stream was interrupted,
    /readyz shows `changeStream: false`), and after SIGCONT it reopens where it stood: a client
    connected throughout gets the events published before and after, in order, with no resync.

    Before, the round trip had no bound (PyMongo sets no socket timeout by default): a getMore
    that was never answered held that process's stream for ever while /readyz said ready."""
    env = {"JWT_SECRET": SECRET, "DEV_MODE": "0", "MONGODB_URI": mongo.uri, "MONGODB_TIMEOUT_MS": "1000"}
    replica = ServiceProcess(tmp_path, env)
    service = as_service(replica)

    async def stream_state() -> bool:
        response = await AsyncHTTPClient().fetch(replica.url + "/readyz", raise_error=False, request_timeout=10)
        return bool(json.loads(response.body)["changeStream"])

    async def scenario() -> tuple[float, list[str]]:
        publisher = service.token(sub=2, roles=("publisher",))
        ws = await service.websocket({"token": service.token(sub=5)})
        await ws.recv_type("connected")
        await service.publish(publisher, {"type": "before"})
        pause(mongo)
        try:
            stopped = time.monotonic()
            deadline = stopped + wait_bound(15)
            while await stream_state():
                assert time.monotonic() < deadline, "the change stream never gave up its round trip"
            gave_up = time.monotonic() - stopped
        finally:
            resume(mongo)
        await asyncio.to_thread(replica.wait_ready, 30)
        await service.publish(publisher, {"type": "after"})
        seen: list[str] = []
        while not seen or seen[-1] != "after":
            seen.append((await ws.recv(20))["type"])
        await ws.close()
        return gave_up, seen

    try:
        replica.start()
        gave_up, seen = asyncio.run(scenario())
    finally:
        replica.stop()
    # one round trip's wait (1 s) + MONGODB_TIMEOUT_MS (1 s) + the probe's own MongoDB check (1 s)
    assert gave_up <= 1 + 1 + 1 + 2 * MARGIN_SECONDS, gave_up
    assert "change stream interrupted" in replica.output()
    assert [t for t in seen if t in ("before", "after", "resync")] == ["before", "after"], seen
