"""bench.scale end to end at a tiny size: the real service, store and load processes, one
phase; what a reader of the curve relies on is in its JSON and its table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.scale import LABELS, SYSTEMS, held, make_system, parse_args, table
from bench.systems import ServiceSystem

ROOT = Path(__file__).resolve().parents[2]


def run_scale(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "scale.json"
    command = [sys.executable, "-m", "bench.scale", "--no-connect", "--no-heartbeat", "--no-readme"]
    command += ["--out", str(out), "--plot", str(tmp_path / "scale.png"), *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:  # SIGTERM: the runner stops what it started, then exits
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def test_a_point_says_where_the_machines_cores_went(tmp_path: Path) -> None:
    # Enough deliveries (400 clients × 40 events) that the load processes' share, in cores to two
    # decimals, is not rounded to 0 (40 clients × 10 events once read 0.00 in CI).
    document = run_scale(
        tmp_path, "--systems", "service", "--sizes", "400", "--rates", "20", "--duration", "2", "--idle", "0.5"
    )
    (point,) = document["points"]
    phase = point["rates"]["20.0"]
    assert phase["events"] == 40
    assert (phase["lost"], phase["duplicated"], phase["out_of_order"]) == (0, 0, 0)
    assert phase["websocket"]["received"] + phase["sse"]["received"] == 400 * 40
    cores = phase["cpu_cores"]
    assert cores["of"] == os.cpu_count()
    assert cores["server"] > 0 and cores["load"] > 0
    # The machine's busy time includes both (clock ticks of 10 ms: a little slack).
    assert cores["server"] + cores["load"] <= cores["machine"] + 0.1
    assert cores["machine"] <= cores["of"] + 0.1
    assert held(point)
    row = next(line for line in table(document).splitlines() if line.startswith("| 400 | service"))
    assert row.endswith(f"| {cores['server']:.2f} / {cores['load']:.2f} / {cores['machine']:.2f} of {cores['of']} |")


def point(size: int, opened: int, failed: int = 0, disconnected: int = 0) -> dict[str, Any]:
    return {
        "size": size,
        "connect": {"opened": opened, "failed": failed},
        "rates": {"1.0": {"disconnected": 0}, "10.0": {"disconnected": disconnected}},
    }


def test_a_system_that_did_not_hold_a_size_is_not_tried_at_larger_ones() -> None:
    assert held(point(1000, 1000))
    assert not held(point(1000, 990, failed=10))
    assert not held(point(1000, 990))  # the connect gave up before the last ones answered
    assert not held(point(1000, 1000, disconnected=3))


def test_what_was_not_measured_is_said_under_the_table() -> None:
    document = {
        "points": [],
        "failures": [{"system": "pushpin", "size": 25000, "error": "RuntimeError('did not connect')"}],
        "skipped": [{"system": "pushpin", "size": 50000, "reason": "did not hold 25,000 connections in this run"}],
    }
    assert table(document).endswith(
        "Not measured: pushpin 25,000: RuntimeError('did not connect'); "
        "pushpin 50,000: skipped, did not hold 25,000 connections in this run."
    )


def test_the_service_runs_with_and_without_presence_in_one_run(tmp_path: Path) -> None:
    """Both service rows come from the same run by default: with presence on every client is a
    new user (N joins per point), with PRESENCE=0 the fan-out alone."""
    assert {"service", "service-nopresence"} <= set(parse_args([]).systems)
    on = make_system("service", tmp_path, "s", 2, "mongodb://127.0.0.1:1/", "bench")
    off = make_system("service-nopresence", tmp_path, "s", 2, "mongodb://127.0.0.1:1/", "bench")
    assert isinstance(on, ServiceSystem) and isinstance(off, ServiceSystem)
    assert "PRESENCE" not in on.extra_env and off.extra_env["PRESENCE"] == "0"
    assert LABELS["service-nopresence"] == "service, PRESENCE=0"
    assert all(LABELS.get(name, name) != "service" for name in SYSTEMS if name != "service")
