"""Running out of file descriptors (issue 23), on a real service process under a low open-file
limit, attacked with slow-body connections from several 127.0.0.x addresses (each under
MAX_PENDING_PER_ADDRESS, so the per-address cap does not stop them first).

Before the fix, Tornado's accept handler raised EMFILE out of a level-triggered callback: a
core at 100 % and a traceback per attempt, megabytes of log a second.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.attacks import slow_body
from harness.clients import wait_bound
from harness.processes import ServiceProcess, shared_env, wait_until

OPEN_FILES = 128
ATTACKERS = tuple(f"127.0.0.{n}" for n in range(2, 6))
PER_ATTACKER = 45  # 4 x 45 = 180 > OPEN_FILES, each address under the default cap of 64


@dataclass
class Attack:
    service: ServiceProcess
    sockets: list[socket.socket]

    def release(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


@pytest.fixture
def attack(tmp_path: Path, mongo_uri: str) -> Iterator[Attack]:
    """A service limited to OPEN_FILES descriptors, held by slow bodies until it has none left."""
    env = {**shared_env(mongo_uri), "HEAD_TIMEOUT_SECONDS": "300", "BODY_TIMEOUT_SECONDS": "300"}
    service = ServiceProcess(tmp_path, env, open_files=OPEN_FILES).start()
    held = Attack(service, [])
    try:
        for index in range(PER_ATTACKER * len(ATTACKERS)):
            held.sockets.append(slow_body(service.port, ATTACKERS[index % len(ATTACKERS)]))
        wait_until(lambda: service.open_descriptors() >= OPEN_FILES - 1, 30, "the service to run out of descriptors")
        yield held
    finally:
        held.release()
        service.stop()


def healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def metric(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{selector}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_out_of_descriptors_the_service_neither_spins_nor_floods_its_log_and_recovers(attack: Attack) -> None:
    """Out of descriptors: CPU well below wall time, a few log lines, the counter moves, /healthz 200 after."""
    service = attack.service
    cpu_before, started = service.cpu_seconds(), time.monotonic()
    late = []
    for _ in range(15):  # newcomers over ~3 s, each an accept() that fails
        late.append(socket.create_connection(("127.0.0.1", service.port), timeout=5))
        time.sleep(0.2)
    cpu, wall = service.cpu_seconds() - cpu_before, time.monotonic() - started
    for sock in late:
        sock.close()
    attack.release()
    wait_until(lambda: healthz(service.url) == 200, 30, "/healthz to answer 200 after the attack")
    errors = metric(service.url, "realtime_accept_errors_total", reason="emfile")
    service.stop()
    log = service.output()
    assert cpu < 0.5 * wall, f"{cpu:.1f} s of CPU in {wall:.1f} s: the accept loop spins"
    assert "Traceback" not in log and "Too many open files" not in log, log[-2000:]
    assert 1 <= len([line for line in log.splitlines() if "accept() failed" in line]) <= 3, log[-2000:]
    assert len(log) < 20_000, f"{len(log)} bytes of log"
    assert errors >= 1


def test_a_connection_that_finds_no_descriptor_is_answered_503(attack: Attack) -> None:
    """Out of descriptors, a newcomer gets a 503 with Retry-After at once, not a wait in the queue."""
    with socket.create_connection(("127.0.0.1", attack.service.port), timeout=wait_bound(10)) as sock:
        answer = sock.recv(200)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b"Retry-After: 1\r\n" in answer
