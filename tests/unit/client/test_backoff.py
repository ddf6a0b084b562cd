"""realtime_client/backoff.py: the Python copy of the browser client's reconnect policy."""

from __future__ import annotations

import random

from realtime_client.backoff import Backoff


class Half(random.Random):
    """uniform(a, b) is always the middle: delays are half the ceiling, as in web/test."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def test_ceiling_doubles_from_one_second_to_a_five_second_cap() -> None:
    """The same ceilings as web/src/backoff.ts: 1, 2, 4, then 5 s however many attempts."""
    assert [Backoff().ceiling(n) for n in (0, 1, 2, 3, 10, 10**6)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert [Backoff(3.0, 30.0, 10.0).ceiling(n) for n in (0, 1, 4, 5)] == [3.0, 6.0, 30.0, 30.0]


def test_delays_are_full_jitter_below_the_ceiling() -> None:
    """Every delay is in [0, ceiling) and the draws cover the range."""
    backoff = Backoff(rng=random.Random(7))
    delays = [backoff.next_delay(0.0) for _ in range(2000)][3:]  # past the doubling: ceiling 5 s
    assert 0 <= min(delays) < 0.1 and 4.9 < max(delays) <= 5.0


def test_connected_restarts_the_count_once_the_connection_held() -> None:
    """After `connected` and more than `stable` seconds, the next delay is from the first ceiling."""
    backoff = Backoff(rng=Half())
    assert [backoff.next_delay(t) for t in (0.0, 1.0, 2.0, 3.0)] == [0.5, 1.0, 2.0, 2.5]
    backoff.connected(10.0)
    assert backoff.next_delay(12.0) == 0.5


def test_a_connection_that_drops_within_stable_continues_the_streak() -> None:
    """A server that accepts and drops at once is retried with the interrupted streak's ceiling."""
    backoff = Backoff(rng=Half())
    backoff.next_delay(0.0)
    backoff.next_delay(1.0)
    backoff.connected(2.0)
    assert backoff.next_delay(2.5) == 2.0
    backoff.connected(5.0)
    assert backoff.next_delay(5.5) == 2.5
