"""service/fanout/pace.py on a fake clock: the burst, the turns callers wait for, the refusal past
`max_wait`, and the bound on remembered keys."""

from __future__ import annotations

import pytest

from service.fanout import pace
from service.fanout.pace import Paced, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_at_once_then_callers_wait_their_turn() -> None:
    """`burst` reservations wait 0; the next ones wait one refill interval more each."""
    clock = Clock()
    pacer = Pacer(2.0, 3, max_wait=10, clock=clock)
    assert [pacer.reserve("u") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [pacer.reserve("u") for _ in range(2)] == [0.5, 1.0]
    assert pacer.reserve("other") == 0.0  # buckets are per key
    clock.now += 10
    assert pacer.reserve("u") == 0.0  # refilled


def test_a_turn_further_than_max_wait_is_refused_and_reserves_nothing() -> None:
    """Past `max_wait`, `Paced` says when to come back; the refused call took no turn."""
    clock = Clock()
    pacer = Pacer(1.0, 1, max_wait=1.5, clock=clock)
    assert pacer.reserve("u") == 0.0
    assert pacer.reserve("u") == 1.0
    with pytest.raises(Paced) as refused:
        pacer.reserve("u")
    assert refused.value.retry_after == pytest.approx(2.0)
    clock.now += 1.0
    assert pacer.reserve("u") == pytest.approx(1.0)


def test_keys_back_to_a_full_burst_are_forgotten_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_KEYS, buckets that refilled are dropped, so idle users cost nothing."""
    monkeypatch.setattr(pace, "MAX_KEYS", 4)
    clock = Clock()
    pacer = Pacer(1.0, 2, max_wait=10, clock=clock)
    for key in range(4):
        pacer.reserve(key)
    clock.now += 5  # every bucket full again
    pacer.reserve("new")
    assert len(pacer) == 1
