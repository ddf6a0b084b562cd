"""`python -m service` as users run it: embedded MongoDB lifecycle, restarts, signals, logs."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from harness.processes import ROOT, SECRET, ServiceProcess, as_service, children_of, pid_alive, running, wait_until
from service.app.auth import issue_token
from service.core.config import load_settings
from service.storage.mongo.embedded import EPHEMERAL_RANGE, EmbeddedMongo, free_port, server_command


def dev_token(data_dir: Path, sub: int | str = 1, name: str = "محمد حسن") -> str:
    settings = load_settings({"DATA_DIR": str(data_dir)})
    return issue_token(settings, sub=sub, name=name, roles=("user", "publisher"))


def call(url: str, method: str = "GET", body: object = None, token: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


def mongo_child(service: ServiceProcess) -> int:
    kids = children_of(service.pid)
    assert len(kids) == 1, f"expected the embedded MongoDB as the only child, got {kids}"
    return kids[0]


def test_service_starts_embedded_mongodb_and_prints_dev_token(tmp_path: Path) -> None:
    """With no MONGODB_URI it runs SecantusDB as a child and prints the URLs and a working token."""
    with running(tmp_path) as service:
        output = service.output()
        assert f"{service.url}/?token=" in output
        token = output.split("dev token", 1)[1].split(": ", 1)[1].split()[0]
        status, body = call(service.url + "/api/tasks", token=token)
        assert status == 200 and body["tasks"] == []
        assert pid_alive(mongo_child(service))
        assert (tmp_path / "mongo").is_dir()


def test_sigterm_stops_service_and_embedded_mongodb(tmp_path: Path) -> None:
    """SIGTERM: exit status 0 and no process left behind."""
    service = ServiceProcess(tmp_path).start()
    try:
        mongo = mongo_child(service)
        service.signal(signal.SIGTERM)
        assert service.wait() == 0
        wait_until(lambda: not pid_alive(mongo), 45, "embedded MongoDB to exit")
    finally:
        service.stop()


def test_ctrl_c_stops_service_and_embedded_mongodb(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) also stops both, exit status 0."""
    service = ServiceProcess(tmp_path).start()
    try:
        mongo = mongo_child(service)
        service.signal(signal.SIGINT)
        assert service.wait() == 0
        wait_until(lambda: not pid_alive(mongo), 45, "embedded MongoDB to exit")
    finally:
        service.stop()


def test_killed_service_leaves_no_orphaned_mongodb(tmp_path: Path) -> None:
    """Even SIGKILL of the service (no cleanup code runs) takes the embedded server down."""
    service = ServiceProcess(tmp_path).start()
    try:
        mongo = mongo_child(service)
        service.signal(signal.SIGKILL)
        service.wait()
        wait_until(lambda: not pid_alive(mongo), 45, "orphaned MongoDB to exit")
    finally:
        service.stop()


def test_data_survives_a_restart(tmp_path: Path) -> None:
    """Tasks created before a restart are there after it (data in DATA_DIR/mongo)."""
    token = dev_token(tmp_path)
    with running(tmp_path) as service:
        status, task = call(service.url + "/api/tasks", "POST", {"title": "باقية", "taskType": "weekly"}, token)
        assert status == 201
    with running(tmp_path) as service:
        status, again = call(f"{service.url}/api/tasks/{task['id']}", token=token)
        assert status == 200 and again["title"] == "باقية"


def test_bad_configuration_exits_with_one_line(tmp_path: Path) -> None:
    """A bad value stops the service at start with one line naming the variable."""
    service = ServiceProcess(tmp_path, {"HEARTBEAT_SECONDS": "soon"})
    service.start(wait=False)
    assert service.wait() == 2
    lines = service.output().strip().splitlines()
    assert lines == ["configuration error: HEARTBEAT_SECONDS: expected a number, got 'soon'"]


def test_mongodb_that_is_not_a_replica_set_is_refused(tmp_path: Path) -> None:
    """Change streams need a replica set: a standalone server stops the service with a clear error."""
    port = free_port()
    standalone = subprocess.Popen(
        [
            server_command(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            ":memory:",
            "--standalone",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = EmbeddedMongo(":memory:")
        probe.port, probe.process = port, standalone
        probe._wait_ready(30, None)
        probe.process = None  # stopped below, by pid
        service = ServiceProcess(tmp_path, {"MONGODB_URI": f"mongodb://127.0.0.1:{port}/?directConnection=true"})
        service.start(wait=False)
        assert service.wait() == 1
        assert "is not a replica set; change streams need one" in service.output()
    finally:
        standalone.terminate()
        standalone.wait(15)


def test_logs_never_contain_tokens_or_tickets(tmp_path: Path) -> None:
    """Access log lines show `[redacted]` where the token and ticket were."""
    token = dev_token(tmp_path, sub=4)
    with running(tmp_path) as service:
        status, body = call(service.url + "/api/realtime/ticket", "POST", {}, token)
        assert status == 200
        for path in (
            f"/api/tasks?token={token}",
            f"/events?ticket={body['ticket']}&x=1",
            "/ws?token=abc.def.ghi",
        ):
            try:
                urllib.request.urlopen(service.url + path, timeout=5).close()
            except urllib.error.HTTPError as error:
                error.close()
        wait_until(lambda: service.output().count("[redacted]") >= 3, 10, "access log lines")
        output = service.output()
        signature = token.rsplit(".", 1)[1]
        assert signature not in output.split("dev token", 1)[0] + output.split("API ", 1)[1]
        assert body["ticket"] not in output and "abc.def.ghi" not in output


def test_cli_token_prints_a_token_the_service_accepts(tmp_path: Path) -> None:
    """`python -m service token` signs with the same development secret."""
    env = {"DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "token",
            "--sub",
            "1",
            "--name",
            "محمد حسن",
            "--roles",
            "user,publisher",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    token = result.stdout.strip()
    with running(tmp_path) as service:
        status, _ = call(service.url + "/api/events", "POST", {"type": "hello"}, token)
        assert status == 202


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_drains_streams_then_exits_zero(tmp_path: Path) -> None:
    """SIGTERM: readiness 503 at once, no new streams, WebSocket 1012 and SSE retry+end, exit 0."""
    process = ServiceProcess(tmp_path, {"JWT_SECRET": SECRET, "DEV_MODE": "0", "DRAIN_SECONDS": "3"})
    await asyncio.to_thread(process.start)
    try:
        service = as_service(process)
        clients = []
        for sub in range(1, 4):
            ws = await service.websocket({"token": service.token(sub=sub)})
            await ws.recv_type("connected")
            clients.append(ws)
        sse = await service.sse({"token": service.token(sub=9)})
        await sse.next_of("connected")
        process.signal(signal.SIGTERM)
        await asyncio.to_thread(wait_until, lambda: not process.ready(), 5, "readiness to turn 503")
        assert (await service.request("GET", "/readyz")).code == 503
        late = await service.sse({"token": service.token(sub=10)})
        assert late.status == 503
        for ws in clients:
            assert await ws.closed(seconds=15) == (1012, "service restart")
        await sse.until_end(seconds=15)
        assert b"retry: " in bytes(sse.raw).split(b"event: connected", 1)[1]
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        process.stop()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_cli_tail_prints_events_as_json_lines(tmp_path: Path, transport: str) -> None:
    """`python -m service tail` prints each event as one JSON line, on either transport."""
    token = dev_token(tmp_path, sub=3, name="يوسف")
    with running(tmp_path, {"PRESENCE": "0"}) as service:  # its presence_joined would be one of the two
        command = [sys.executable, "-m", "service", "tail", "--url", service.url, "--token", token, "--max-events", "2"]
        command.append("--no-position")  # remember nothing in the home directory
        tail = subprocess.Popen(
            [*command, *(["--sse"] if transport == "sse" else [])],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert json.loads(tail.stdout.readline())["type"] == "connected"  # type: ignore[union-attr]
            for n in (1, 2):
                assert (
                    call(service.url + "/api/events", "POST", {"type": "note", "n": n, "text": "مرحبا"}, token)[0]
                    == 202
                )
            out, _ = tail.communicate(timeout=30)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.communicate()
        lines = [json.loads(line) for line in out.splitlines()]
        assert [(m["type"], m["n"], m["text"]) for m in lines] == [("note", 1, "مرحبا"), ("note", 2, "مرحبا")]
        assert tail.returncode == 0


def test_free_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    """Pushpin once failed to bind one of its ports (CI, 2026-12-07): a port of the ephemeral
    range, which an outgoing connection can take before the server binds it. `free_port`, which
    the embedded store, the tests' servers and the bench's take theirs from, draws below it."""
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports)
    assert len(ports) > 1  # drawn at random, not one fixed port
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
