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

import pytest

from bench.__main__ import _plans, gc_pauses, histogram_samples
from bench.peers.pushpin_system import PushpinSystem
from bench.scale import LABELS, SYSTEMS, held, histogram_change, make_system, parse_args, table
from bench.systems import NchanSystem, ServiceSystem

ROOT = Path(__file__).resolve().parents[2]


def run_scale(tmp_path: Path, *args: str, connect: bool = False) -> dict[str, Any]:
    out = tmp_path / "scale.json"
    command = [sys.executable, "-m", "bench.scale", "--no-heartbeat", "--no-readme"]
    command += [] if connect else ["--no-connect"]
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
    # Presence is on and every client is a new user: the idle and publish measurements began
    # once the service counted all 400 online and then the store was quiet.
    joins = point["connect"]["presence"]
    assert joins["users"] == 400
    assert joins["counted_s"] is not None and joins["settled_s"] is not None
    assert joins["counted_s"] <= joins["settled_s"]
    # The store's share, by the service's clock: every event passed the change stream (and a
    # presence event or two may have), each within the histogram's bounds.
    lag = phase["bus_lag"]
    assert lag["count"] >= 40
    assert 0 < lag["p50_le_ms"] <= lag["p99_le_ms"]
    # The service's garbage collections, per generation, during the connect and the phase.
    for where in (point["connect"], phase):
        assert set(where["gc"]) == {"0", "1", "2"}
        assert all(g["count"] >= 0 and g["seconds"] >= 0 for g in where["gc"].values())
    row = next(line for line in table(document).splitlines() if line.startswith("| 400 | service"))
    assert row.endswith(f"| {cores['server']:.2f} / {cores['load']:.2f} / {cores['machine']:.2f} of {cores['of']} |")


def test_the_c_clients_count_what_the_python_ones_do_and_their_cpu_is_the_loads(tmp_path: Path) -> None:
    # The same point with `--client c`: every delivery counted, and the cload processes' CPU in
    # the load share (the load processes only relay commands).
    document = run_scale(
        tmp_path,
        *("--systems", "service-nopresence", "--sizes", "400", "--rates", "20", "--duration", "2", "--idle", "0.5"),
        *("--client", "c"),
    )
    (point,) = document["points"]
    phase = point["rates"]["20.0"]
    assert (phase["lost"], phase["duplicated"], phase["out_of_order"]) == (0, 0, 0)
    assert phase["websocket"]["received"] + phase["sse"]["received"] == 400 * 40
    assert phase["websocket"]["clients"] == phase["sse"]["clients"] == 200
    assert phase["cpu_cores"]["load"] > 0
    assert "--client c" in document["command"]


def test_a_connect_run_measures_events_to_the_clients_already_connected(tmp_path: Path) -> None:
    # Three connect runs of 300 clients (HS256, RS256, HS256 with JSON logs); 20 clients connected
    # before each take 20 events/s while the others connect. No point after them (--deadline 1).
    document = run_scale(
        tmp_path,
        *("--systems", "service-nopresence", "--sizes", "100", "--deadline", "1", "--connect-size", "300"),
        *("--connect-reps", "1", "--storm-watchers", "20", "--storm-rate", "20"),
        connect=True,
    )
    runs = document["connect_runs"]
    assert [run["algorithm"] for run in runs] == ["HS256", "RS256", "HS256"] and not document["points"]
    rows = [line for line in table(document).splitlines() if line.startswith("| WORKERS=2 | this")]
    for run, row in zip(runs, rows, strict=True):
        assert (run["opened"], run["failed"]) == (300, 0)
        watched = run["watchers"]
        assert watched["events"] >= 1 and watched["accepted"] == watched["events"]
        assert watched["clients"] == 20 and watched["received"] == 20 * watched["events"]
        assert (watched["lost"], watched["duplicated"], watched["out_of_order"]) == (0, 0, 0)
        assert 0 < watched["latency"]["p99_ms"] <= watched["slowest_ms"] + 1  # histogram buckets round up a little
        latency = watched["latency"]
        assert row.endswith(f"| {latency['p50_ms']:.1f} / {latency['p99_ms']:.1f} / {watched['slowest_ms']:.0f}, 0 |")


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


def test_connect_variants_default_to_all_and_a_typo_is_refused() -> None:
    """`--connect-variants` picks connect runs by name (all three unless told); an unknown name
    stops the run before anything starts, instead of running nothing for an hour."""
    assert parse_args([]).connect_variants == ["hs256", "rs256", "json"]
    assert parse_args(["--connect-variants", "hs256, json"]).connect_variants == ["hs256", "json"]
    with pytest.raises(SystemExit):
        parse_args(["--connect-variants", "hs265"])


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


SCRAPE = """\
# TYPE realtime_gc_pause_seconds histogram
realtime_gc_pause_seconds_bucket{generation="2",le="0.1"} 1.0
realtime_gc_pause_seconds_bucket{generation="2",le="0.25"} 3.0
realtime_gc_pause_seconds_bucket{generation="2",le="0.5"} 4.0
realtime_gc_pause_seconds_bucket{generation="2",le="+Inf"} 4.0
realtime_gc_pause_seconds_count{generation="2"} 4.0
realtime_gc_pause_seconds_sum{generation="2"} 0.9
realtime_gc_pause_seconds_bucket{generation="0",le="0.1"} 7.0
realtime_gc_pause_seconds_bucket{generation="0",le="0.25"} 7.0
realtime_gc_pause_seconds_bucket{generation="0",le="0.5"} 7.0
realtime_gc_pause_seconds_bucket{generation="0",le="+Inf"} 7.0
realtime_gc_pause_seconds_count{generation="0"} 7.0
realtime_gc_pause_seconds_sum{generation="0"} 0.07
"""


def test_gc_pauses_between_two_scrapes_give_count_seconds_and_the_longest_bucket() -> None:
    after: dict[str, dict[str, float]] = {}
    for generation in "02":
        samples = histogram_samples(SCRAPE, "realtime_gc_pause_seconds", generation=generation)
        assert samples is not None
        after[generation] = samples
    assert after["2"] == {"0.1": 1, "0.25": 3, "0.5": 4, "+Inf": 4, "count": 4, "sum": 0.9}
    before = {"2": {"0.1": 1, "0.25": 1, "0.5": 1, "+Inf": 1, "count": 1, "sum": 0.05}, "0": dict(after["0"])}
    pauses = gc_pauses(before, after)
    # Three full collections since `before`, all between 0.1 and 0.5 s: the longest passed 0.25 s.
    assert pauses == {
        "2": {"count": 3, "seconds": 0.85, "longest_le_ms": 500.0},
        "0": {"count": 0, "seconds": 0.0, "longest_le_ms": None},
    }
    assert gc_pauses(None, after) is None  # another system, or code without the metric
    # The same difference as the storm watchers' service latencies read it: of the three, two
    # stayed under 0.25 s (half did) and all (99 %) under 0.5 s.
    assert histogram_change(before["2"], after["2"]) == {
        "count": 3,
        "mean_ms": 283.3,
        "p50_le_ms": 250.0,
        "p99_le_ms": 500.0,
    }
    assert histogram_change(after["0"], after["0"]) == {
        "count": 0,
        "mean_ms": None,
        "p50_le_ms": None,
        "p99_le_ms": None,
    }


def test_a_side_run_leaves_the_curves_files_alone() -> None:
    """`--no-readme` is a side run: the README's tables, the plot and the curve's JSON stay the
    last full run's (a side run once redrew docs/scale.png with its one point)."""
    curve = parse_args([])
    assert (curve.out, curve.plot) == (ROOT / "bench" / "scale-latest.json", ROOT / "docs" / "scale.png")
    side = parse_args(["--no-readme"])
    assert side.plot is None
    assert side.out.parent == ROOT / "bench" / "results" and side.out.name.startswith("scale-")
    chosen = parse_args(["--no-readme", "--out", "a.json", "--plot", "a.png"])
    assert (chosen.out, chosen.plot) == (Path("a.json"), Path("a.png"))


def test_each_system_gets_its_own_handshakes_in_flight(tmp_path: Path) -> None:
    """Pushpin answers some handshakes 502 with 100 in flight (bench/README, "What runs"): its
    load processes keep 50 in flight, every other system's 100."""
    args = parse_args(["--sizes", "1000"])
    args.procs, args.ws, args.sse, args.poll = 2, 500, 500, 0
    pushpin = PushpinSystem(tmp_path, "secret")
    nchan = NchanSystem(tmp_path, "secret", workers=1)
    assert {plan.concurrency for plan in _plans(pushpin, args, "secret")} == {50}
    assert {plan.concurrency for plan in _plans(nchan, args, "secret")} == {100}
