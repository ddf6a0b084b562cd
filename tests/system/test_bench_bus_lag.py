"""bench.bus_lag end to end, briefly: the real store, service and client; what its numbers rest on
(every event arrived once and in order, the exact share within 2 ms, the hop's floor) is in its JSON."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_run_reports_every_phase_and_the_stores_floor() -> None:
    command = [sys.executable, "-m", "bench.bus_lag", "--publish", "http", "--rates", "20", "--duration", "1"]
    command += ["--burst", "10", "--idle", "0.2", "--round-trips", "20", "--memory"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        output, errors = process.communicate(timeout=180)
    finally:
        if process.poll() is None:  # SIGTERM: it stops the service and the store, then exits
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
    assert process.returncode == 0, errors.decode(errors="replace")[-3000:]
    result = json.loads(output)
    floor = result["store_round_trips"]
    assert 0 < floor["ping_p50_ms"] <= floor["ping_p99_ms"]
    assert 0 < floor["hop_p50_ms"] <= floor["hop_p99_ms"]
    phases = result["new"]
    for name, events in (("20/s", 20), ("burst 10", 10)):
        phase = phases[name]
        assert phase["events"] == events, name
        assert (phase["lost"], phase["dup"], phase["out_of_order"]) == (0, 0, 0), name
        assert 0 < phase["e2e_p50_ms"] <= phase["e2e_p99_ms"] <= phase["e2e_max_ms"], name
        assert 0 <= phase["bus_within_2ms"] <= 1, name  # read at the bucket edge le="0.002"
        assert phase["bus_p50_ms"] <= phase["bus_p99_ms"], name
