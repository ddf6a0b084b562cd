"""Disk-full fault: the embedded MongoDB's data volume fills up, then space returns.

The service runs with DATA_DIR on a small tmpfs (64 MiB, mounted here: needs root). A writer
(bench/crash.py's, retrying with its Idempotency-Key) and a WebSocket follower run throughout.
Each round fills the volume with a file until ENOSPC, keeps it full for `--hold` seconds while a
prober sends one write and one read every 0.1 s and reads `/healthz`, then deletes the file and
measures how long until a write and a read succeed again. If the service never comes back it is
restarted (as an operator would), so the audit can still count what was lost.

    .venv/bin/python -m bench.fault_disk [--rounds 1] [--hold 3] [--code /path/to/checkout]

`run(rounds, seed)` returns the audit as a dict, for bench/faults.py. Everything listens on
127.0.0.1; the service is stopped by pid and the tmpfs unmounted in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from bench.crash import SERVICE_ENV, Follower, Writer, embedded_uri, finish, wait_for, writer_token
from harness.processes import SECRET, ServiceProcess
from service.app.auth import issue_token
from service.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent

VOLUME_MB = 64
RECOVERY_BOUND_SECONDS = 60.0
FULL_BOUND_SECONDS = 30.0  # for the first write to fail once the volume is full
BALLAST_BYTES, BALLAST_EVENTS = 256 * 1024, 120  # up to 30 MiB: past the 10 MiB log files


def mount_tmpfs(path: Path, megabytes: int = VOLUME_MB) -> None:
    """A small tmpfs at `path` (root only).

    Raises:
        RuntimeError: mount refused (not root, or no mount namespace rights).
    """
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs at {path}: {result.stderr.strip()}")


def unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)
    if path.is_mount():
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> int:
    """Write zeros into `path` until the filesystem is full; the bytes written."""
    chunk = bytes(1024 * 1024)
    written = 0
    with open(path, "wb", buffering=0) as out:
        while True:
            try:
                written += out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        with contextlib.suppress(OSError):  # tmpfs: writes leave room after a short write
            while True:
                written += out.write(b"\0" * 4096)
    return written


@dataclass
class Prober:
    """One write and one read every 0.1 s, and `/healthz`; statuses by time."""

    base_url: str
    token: str
    prefix: str  # the writer's: the audit then counts the prober's tasks and events as its own
    writes: list[tuple[float, int, str]] = field(default_factory=list)  # (monotonic, status, reason)
    reads: list[tuple[float, int]] = field(default_factory=list)
    health: list[tuple[float, int]] = field(default_factory=list)

    async def fetch(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token or self.token}", "Content-Type": "application/json"}
        if method == "POST":
            headers["Idempotency-Key"] = str(uuid.uuid4())
        try:
            response = await AsyncHTTPClient().fetch(
                self.base_url + path,
                method=method,
                body=json.dumps(body) if body is not None else None,
                headers=headers,
                raise_error=False,
                request_timeout=10,
                connect_timeout=2,
            )
        except (HTTPClientError, OSError) as exc:
            return 599, str(exc).encode()
        return response.code, response.body or b""

    async def run(self, stop: asyncio.Event) -> None:
        number = 0
        while not stop.is_set():
            number += 1
            task = {"title": f"{self.prefix}-probe-{number}", "taskType": "daily"}
            code, text = await self.fetch("POST", "/api/tasks", task)
            reason = ""
            if code >= 500:
                with contextlib.suppress(ValueError, AttributeError):
                    reason = json.loads(text).get("reason", "")
            self.writes.append((time.monotonic(), code, reason))
            code, _ = await self.fetch("GET", "/api/tasks?limit=1")
            self.reads.append((time.monotonic(), code))
            code, _ = await self.fetch("GET", "/healthz")
            self.health.append((time.monotonic(), code))
            await asyncio.sleep(0.1)

    def since(self, started: float) -> tuple[list[tuple[float, int, str]], list[tuple[float, int]]]:
        return [w for w in self.writes if w[0] >= started], [r for r in self.reads if r[0] >= started]

    def recovered_at(self, started: float) -> float | None:
        """When a write and a read both succeeded again after `started`."""
        writes, reads = self.since(started)
        ok_write = next((t for t, code, _ in writes if code < 300), None)
        ok_read = next((t for t, code in reads if code < 300), None)
        return None if ok_write is None or ok_read is None else max(ok_write, ok_read)


async def ballast_until_failure(prober: Prober, publisher: str, since: float) -> None:
    """Publish large events addressed to nobody until a write fails.

    WiredTiger writes into a preallocated 10 MiB log file and only meets the full disk when it
    opens the next one; the writer's small tasks would take minutes to get there.
    """
    ballast = {"type": "ballast", "to": {"users": [999_999]}, "pad": "x" * BALLAST_BYTES}
    for _ in range(BALLAST_EVENTS):
        if any(c >= 500 for t, c, _ in prober.writes if t >= since):
            return
        code, _ = await prober.fetch("POST", "/api/events", ballast, publisher)
        if code >= 500:
            return
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: any(c >= 500 for t, c, _ in prober.writes if t >= since), FULL_BOUND_SECONDS, "5xx")


async def run(rounds: int, seed: int, *, hold: float = 3.0, code: Path = ROOT) -> dict[str, Any]:
    """Fill and free the embedded MongoDB's volume `rounds` times under a writer and a follower.

    Args:
        rounds: fill/free cycles.
        seed: picks how many acknowledged writes come between cycles.
        hold: seconds the volume stays full.
        code: the checkout whose service runs (a main checkout for a before/after).
    """
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="fault-disk-"))
    volume = base / "volume"
    volume.mkdir()
    mount_tmpfs(volume)
    env = {**SERVICE_ENV, "DATA_DIR": str(volume)}  # the service's own log stays off the volume
    service = ServiceProcess(base / "logs", env, code=code)
    result: dict[str, Any] = {"rounds": rounds, "seed": seed, "hold_seconds": hold, "volume_mb": VOLUME_MB}
    per_round: list[dict[str, Any]] = []
    stops = (asyncio.Event(), asyncio.Event(), asyncio.Event())
    try:
        await asyncio.to_thread(service.start)
        token = writer_token()
        publisher = issue_token(
            Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",)), sub=2, name="ballast", roles=("publisher",),
            ttl_seconds=3600,
        )  # fmt: skip
        writer, follower = Writer(service.url, token), Follower(service.port, token)
        prober = Prober(service.url, token, writer.prefix)
        tasks = (
            asyncio.create_task(writer.run(stops[0])),
            asyncio.create_task(follower.run(stops[1])),
            asyncio.create_task(prober.run(stops[2])),
        )
        manual_restarts = 0
        for _ in range(rounds):
            target = writer.acked + rng.randint(10, 40)
            await wait_for(lambda t=target: writer.acked >= t or tasks[0].done(), 60, "acknowledged writes")
            filled_at = time.monotonic()
            filler = volume / "fill"
            await asyncio.to_thread(fill, filler)
            await ballast_until_failure(prober, publisher, filled_at)
            await asyncio.sleep(hold)
            writes_full, reads_full = prober.since(filled_at)
            health_full = Counter(c for t, c in prober.health if t >= filled_at)
            filler.unlink()
            freed_at = time.monotonic()
            with contextlib.suppress(AssertionError):
                await wait_for(
                    lambda f=freed_at: prober.recovered_at(f) is not None, RECOVERY_BOUND_SECONDS, "recovery"
                )  # fmt: skip
            recovered = prober.recovered_at(freed_at)
            writes_after, reads_after = prober.since(freed_at)
            if recovered is not None:
                writes_after = [w for w in writes_after if w[0] <= recovered]
                reads_after = [r for r in reads_after if r[0] <= recovered]
            per_round.append(
                {
                    "full_write_statuses": dict(Counter(c for _, c, _ in writes_full)),
                    "full_read_statuses": dict(Counter(c for _, c in reads_full)),
                    "full_reasons": dict(Counter(r for _, c, r in writes_full if c >= 500)),
                    "healthz_while_full": dict(health_full),
                    "writes_5xx_after_space_returned": sum(1 for _, c, _ in writes_after if c >= 500),
                    "reads_5xx_after_space_returned": sum(1 for _, c in reads_after if c >= 500),
                    "recovery_seconds": None if recovered is None else round(recovered - freed_at, 2),
                    "healthz_after": dict(Counter(c for t, c in prober.health if t >= freed_at)),
                }
            )
            if recovered is None:  # what an operator does: restart it, to count what was kept
                manual_restarts += 1
                await asyncio.to_thread(service.stop)
                service = ServiceProcess(base / "logs", env, port=service.port, code=code)
                await asyncio.to_thread(service.start)
        stops[2].set()
        await tasks[2]
        writer_error = None
        if tasks[0].done() and tasks[0].exception() is not None:
            writer_error = str(tasks[0].exception())[:200]  # a status the writer does not retry (500)
            tasks = (asyncio.create_task(asyncio.sleep(0)), tasks[1], tasks[2])
        audit = await finish(embedded_uri(service), writer, follower, (stops[0], stops[1]), (tasks[0], tasks[1]))
        result.update(
            acknowledged_writes=audit.acked,
            lost_acked=audit.lost_acked,
            problems=audit.problems(),
            clients={
                "ws-follower": {
                    "missed": audit.delivered_missing,
                    "duplicated": audit.delivered_twice,
                    "out_of_order": audit.delivered_out_of_order,
                }
            },
            writer_retries=audit.retries,
            writer_error=writer_error,
            manual_restarts=manual_restarts,
            recovery_seconds=[r["recovery_seconds"] for r in per_round],
            per_round=per_round,
        )
        return result
    finally:
        for stop in stops:
            stop.set()
        await asyncio.to_thread(service.stop)
        unmount(volume)
        if not volume.is_mount():
            shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds the volume stays full")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout to run (default: this one)")
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.seed, hold=args.hold, code=args.code))
    print(json.dumps(result, indent=2))
    return 1 if result["problems"] or None in result["recovery_seconds"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
