"""A replica replaced while events flow (bench/restart_resume.py, smaller): its clients all
resume from the new process's memory, none is told to come back later, and every client
holds every event once and in order."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.restart_resume import one_run
from harness.processes import ROOT
from service.storage.mongo.embedded import EmbeddedMongo

CLIENTS = 300


@pytest.mark.timeout(180)
def test_a_replaced_process_serves_its_predecessors_clients_from_memory(tmp_path: Path) -> None:
    """300 clients, 20 events/s, a restart: 300 replays from memory, none from MongoDB, no 1013."""
    args = argparse.Namespace(
        clients=CLIENTS, rate=20.0, warmup=2.0, history_events=0, procs=1, sources=10, timeout=60.0, seed=1
    )
    mongo = EmbeddedMongo(":memory:")
    mongo.start()
    try:
        result = one_run("this", ROOT, args, mongo, tmp_path)
    finally:
        mongo.stop()
    assert result["caught_up"] == CLIENTS, result
    assert (result["behind_at_end"], result["lost"], result["dup"], result["out_of_order"]) == (0, 0, 0, 0), result
    assert result["replays"].get("store") == 0 and result["replays"].get("memory", 0) >= CLIENTS, result
    assert result["refused_1013"] == 0, result
