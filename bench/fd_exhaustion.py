"""`python -m bench.fd_exhaustion [--old DIR]`: the service out of file descriptors, as figures.

For this tree and, with `--old`, another checkout (the code before the fix), each started as
`python -m service` under an open-file limit of `--open-files` (as `ulimit -n` sets it) on one
shared in-memory SecantusDB, on loopback: `--connections` slow-body connections (a complete
POST head, each once the server has read the one before, then one body byte a second of a
100 kB body) from `--addresses` addresses
127.0.0.2, .3, ... (1 is issue 23's case: one address), held for `--seconds`. Measured over
that window: the service's CPU seconds, its log growth (bytes, lines, tracebacks), the
descriptors it holds, and a `/healthz` probe every 2 s (status, 0 for no answer in 2 s);
then, after the attacker closes its sockets, how long until `/healthz` answers 200, and the
accept-error and refusal counters where the checkout has them.

Keep `--seconds` short: the code before the fix spins a core for the whole window.
"""

from __future__ import annotations

import argparse
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.local import old_and_new
from harness.attacks import slow_body
from harness.processes import SECRET, ServiceProcess
from service.storage.mongo.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
PROBE_EVERY_SECONDS = 2.0


def healthz(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def counters(url: str) -> dict[str, float]:
    """`realtime_accept_errors_total` and `realtime_connections_refused_total` samples, if any."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    pattern = r"^(realtime_(?:accept_errors|connections_refused)_total\{[^}]*\}) (\S+)$"
    return {name: float(value) for name, value in re.findall(pattern, text, re.MULTILINE) if float(value)}


def attack(port: int, connections: int, addresses: int) -> tuple[list[socket.socket], int]:
    """Open the slow-body connections, each after the server has read the last one's head (its
    `100 Continue`), as an attacker pacing itself past a per-address cap on heads would; once the
    server stops answering, the rest at once. Those the server closes at once are counted, not kept."""
    held, refused, pace = [], 0, True
    for index in range(connections):
        try:
            sock = slow_body(port, f"127.0.0.{2 + index % addresses}", expect_continue=True)
        except OSError:
            refused += 1
            continue
        answer = None
        if pace:
            sock.settimeout(1.0)
            try:
                answer = sock.recv(64)
            except TimeoutError:
                pace = False  # out of descriptors: the connection waits in the listen queue
            except OSError:
                answer = b""
        try:
            if answer == b"":
                raise ConnectionResetError
            sock.sendall(b"{")
        except OSError:
            refused += 1
            sock.close()
            continue
        sock.setblocking(False)
        held.append(sock)
    return held, refused


def drip(sockets: list[socket.socket], stop: threading.Event) -> None:
    """One more body byte on every connection each second, until `stop`."""
    while not stop.wait(1.0):
        for sock in sockets:
            try:
                sock.send(b" ")
            except OSError:
                pass  # closed by the server, or its buffer full


def measure(root: Path, mongo_uri: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {"MONGODB_URI": mongo_uri, "MONGODB_DB": f"fd_{port}", "JWT_SECRET": SECRET, "DEV_MODE": "0"}
        service = ServiceProcess(Path(tmp), env, port, code=root, open_files=args.open_files).start()
        sockets: list[socket.socket] = []
        try:
            baseline_fds = service.open_descriptors()
            sockets, refused_at_connect = attack(service.port, args.connections, args.addresses)
            stop = threading.Event()
            dripper = threading.Thread(target=drip, args=(sockets, stop), daemon=True)
            log_before = service.log_path.stat().st_size
            cpu_before, started = service.cpu_seconds(), time.monotonic()
            dripper.start()
            probes = []
            while time.monotonic() - started < args.seconds:
                probe_started = time.monotonic()
                probes.append(healthz(service.url))
                time.sleep(max(0.0, PROBE_EVERY_SECONDS - (time.monotonic() - probe_started)))
            cpu, wall = service.cpu_seconds() - cpu_before, time.monotonic() - started
            fds_held = service.open_descriptors()
            stop.set()
            dripper.join()
            with service.log_path.open("rb") as log:
                log.seek(log_before)
                grown = log.read()
            for sock in sockets:
                sock.close()
            released = time.monotonic()
            recovered = None
            while time.monotonic() - released < 30:
                if healthz(service.url, 1.0) == 200:
                    recovered = round(time.monotonic() - released, 2)
                    break
                time.sleep(0.05)
            metrics = counters(service.url)
        finally:
            for sock in sockets:
                sock.close()
            service.stop()
    return {
        "open_file_limit": args.open_files,
        "descriptors_before_attack": baseline_fds,
        "connections_refused_at_connect": refused_at_connect,
        "descriptors_held_at_end_of_window": fds_held,
        "window_s": round(wall, 1),
        "service_cpu_s": round(cpu, 2),
        "log_bytes": len(grown),
        "log_lines": grown.count(b"\n"),
        "log_tracebacks": grown.count(b"Traceback"),
        "healthz_probes_during": probes,
        "healthz_200_after_release_s": recovered if recovered is not None else ">30",
        "counters": metrics,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fd_exhaustion", description=__doc__)
    parser.add_argument("--old", type=Path, help="another checkout (e.g. the code before the fix) to measure too")
    parser.add_argument("--open-files", type=int, default=256, help="the service's RLIMIT_NOFILE (ulimit -n)")
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--addresses", type=int, default=1, help="attacker addresses 127.0.0.2, .3, ...")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the connections are held (≤ 30)")
    args = parser.parse_args(argv)
    args.seconds = min(args.seconds, 30.0)
    old_and_new(lambda code, uri: measure(code, uri, args), args.old)


if __name__ == "__main__":
    main()
