"""The bus's faults with real processes (bench/faults.py's rounds, one each): MongoDB restarted
under idle replicas, resumes deeper than memory under a steady writer, a rolling restart.
Every acknowledged write is stored once with its event, and every follower gets every event
once, in order, with no resync."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from bench.faults import ROOT, deep, outage, rolling


@pytest.mark.timeout(180)
def test_idle_replicas_miss_nothing_when_mongodb_returns_during_their_retry_sleep(tmp_path: Path) -> None:
    """Issue 27's lost window: replicas that had seen no change reopened from "now" and missed the
    first writes after MongoDB came back; they resume from their own open position."""
    result = asyncio.run(outage(tmp_path, 1, random.Random(), ROOT))
    assert result.problems == {} and result.acked > 0, result


@pytest.mark.timeout(180)
def test_resumes_deeper_than_memory_under_load_lose_no_boundary_event(tmp_path: Path) -> None:
    """HISTORY_SIZE=50 while writes go on: followers away for 60+ events get each one, once, in order."""
    result = asyncio.run(deep(tmp_path, 2, random.Random(), ROOT))
    assert result.problems == {} and result.acked > 0, result


@pytest.mark.timeout(180)
def test_a_rolling_restart_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Both replicas restarted in turn, followers moving over: every event once, in order."""
    result = asyncio.run(rolling(tmp_path, 1, random.Random(), ROOT))
    assert result.problems == {} and result.acked > 0, result
