"""Starting `python -m service`: a changed setting is applied, every failure is one line and exit 1."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from pymongo import MongoClient

from harness.processes import SECRET, ServiceProcess, shared_env
from service.app.auth import issue_token
from service.core.config import Settings
from service.storage.mongo.embedded import EmbeddedMongo, free_port, server_command
from tests.system.test_process import call


def secantusd(storage: str, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    """A SecantusDB server started by hand (not by the service), answering; and its port."""
    port = free_port()
    command = [server_command(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", storage, *flags]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = EmbeddedMongo(":memory:")
    probe.port, probe.process = port, server
    try:
        probe._wait_ready(30, None)
    except BaseException:
        stop(server)
        raise
    return server, port


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(15)


def ttl_of(uri: str, database: str, collection: str, field: str) -> float | None:
    """`expireAfterSeconds` of the index on `field`, read with listIndexes."""
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        for index in client[database][collection].list_indexes():
            if dict(index["key"]) == {field: 1}:
                return float(index["expireAfterSeconds"])
        return None
    finally:
        client.close()


def embedded_ttl(data_dir: Path, collection: str, field: str) -> float | None:
    """Read a TTL from the embedded MongoDB's data, with the service stopped."""
    mongo = EmbeddedMongo(data_dir / "mongo")
    uri = mongo.start()
    try:
        return ttl_of(uri, "realtime", collection, field)
    finally:
        mongo.stop()


def restarted(data_dir: Path, first: dict[str, str], second: dict[str, str]) -> None:
    """Run the service on `data_dir` with `first`, stop it, then start it again with `second`."""
    for env in (first, second):
        service = ServiceProcess(data_dir, env)
        try:
            service.start()
        finally:
            code = service.stop()
        assert code == 0


def failed_start(service: ServiceProcess) -> str:
    """Start a service that must not start; its exit status is 1 and its output one line, returned."""
    service.start(wait=False)
    try:
        assert service.wait(60) == 1
    finally:
        service.stop()
    output = service.output()
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


def test_restart_with_another_history_ttl_retunes_the_events_index(tmp_path: Path) -> None:
    """HISTORY_TTL_SECONDS changed between runs on one DATA_DIR: it starts, and the events TTL is the new one."""
    restarted(tmp_path, {"HISTORY_TTL_SECONDS": "86400"}, {"HISTORY_TTL_SECONDS": "3600"})
    assert embedded_ttl(tmp_path, "events", "createdAt") == 3600


def test_restart_with_a_longer_heartbeat_raises_the_presence_backstop(tmp_path: Path) -> None:
    """HEARTBEAT_SECONDS 15 then 30 on one DATA_DIR: it starts, and the presence TTL is 10 heartbeats (300 s)."""
    restarted(tmp_path, {"HEARTBEAT_SECONDS": "15"}, {"HEARTBEAT_SECONDS": "30"})
    assert embedded_ttl(tmp_path, "presence", "seenAt") == 300


def test_replicas_with_different_heartbeat_and_history_ttl_both_serve(tmp_path: Path, mongo_uri: str) -> None:
    """Two processes that disagree on both settings share one database; both are ready and serve it."""
    env = shared_env(mongo_uri)
    first = ServiceProcess(tmp_path, {**env, "HEARTBEAT_SECONDS": "20", "HISTORY_TTL_SECONDS": "7200"})
    second = ServiceProcess(tmp_path, {**env, "HEARTBEAT_SECONDS": "5", "HISTORY_TTL_SECONDS": "3600"})
    try:
        first.start()
        second.start()
        token = as_publisher()
        status, task = call(first.url + "/api/tasks", "POST", {"title": "shared", "taskType": "daily"}, token)
        assert status == 201
        status, seen = call(f"{second.url}/api/tasks/{task['id']}", token=token)
        assert status == 200 and seen["title"] == "shared"
        database = env["MONGODB_DB"]
        assert ttl_of(mongo_uri, database, "events", "createdAt") == 3600  # the last to start sets it
        assert ttl_of(mongo_uri, database, "presence", "seenAt") == 200  # the largest heartbeat's backstop
    finally:
        second.stop()
        first.stop()


def as_publisher() -> str:
    settings = Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",))
    return issue_token(settings, sub=1, name="one", roles=("user", "publisher"))


def test_second_service_on_one_data_dir_names_the_first_pid(tmp_path: Path) -> None:
    """A second service on the DATA_DIR of a running one exits 1 with one line: in use, by which pid."""
    first = ServiceProcess(tmp_path)
    try:
        first.start()
        line = failed_start(ServiceProcess(tmp_path))
        assert "in use by pid" in line and str(first.pid) in line and str(tmp_path) in line
    finally:
        first.stop()


def test_server_started_by_hand_on_the_data_dir_is_named(tmp_path: Path) -> None:
    """A SecantusDB the service did not start holds DATA_DIR/mongo: one line with that server's pid."""
    server, _ = secantusd(str(tmp_path / "mongo"))
    try:
        line = failed_start(ServiceProcess(tmp_path))
        assert f"in use by pid {server.pid}" in line and "WiredTiger.lock" in line
    finally:
        stop(server)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unreachable_mongodb_is_one_line(tmp_path: Path, workers: str) -> None:
    """Nothing answers at MONGODB_URI within MONGODB_TIMEOUT_MS: one line naming the host, exit 1."""
    port = free_port()
    env = {"MONGODB_URI": f"mongodb://user:pass@127.0.0.1:{port}/", "MONGODB_TIMEOUT_MS": "500", "WORKERS": workers}
    line = failed_start(ServiceProcess(tmp_path, env))
    assert line.startswith(f"cannot start: MONGODB_URI: no MongoDB answered at 127.0.0.1:{port} within 500 ms")
    assert "pass" not in line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_one_line(tmp_path: Path, workers: str) -> None:
    """Another process listens on PORT: one line naming it, exit 1 (the workers are not restarted forever)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = failed_start(ServiceProcess(tmp_path, {"WORKERS": workers}, port=port))
    assert line == f"cannot start: PORT: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_embedded_server_that_fails_is_one_line(tmp_path: Path) -> None:
    """SecantusDB exits at start (corrupt data): one line with its error and where its log is."""
    store = tmp_path / "mongo"
    store.mkdir()
    for name in ("WiredTiger", "WiredTiger.turtle", "WiredTiger.wt"):
        (store / name).write_text("not a database\n")
    line = failed_start(ServiceProcess(tmp_path))
    assert line.startswith("cannot start: embedded MongoDB exited with code 1: ")
    assert line.endswith(f"(see {tmp_path / 'mongo.log'})")


def test_standalone_server_is_one_line_with_workers(tmp_path: Path) -> None:
    """WORKERS=2 and a MongoDB that is not a replica set: one line, exit 1 (no worker restarted forever)."""
    server, port = secantusd(":memory:", "--standalone")
    try:
        uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        line = failed_start(ServiceProcess(tmp_path, {"MONGODB_URI": uri, "WORKERS": "2"}))
        assert "is not a replica set; change streams need one" in line
    finally:
        stop(server)
