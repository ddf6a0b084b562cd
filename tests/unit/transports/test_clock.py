"""TokenClock on a fake clock: the warning 30 s before `exp`, the 4401 when the 30 s leeway
after it ends (when a REST request with the token is refused too), re-arming."""

from __future__ import annotations

from service.fanout.connection import Connection
from service.transports.clock import TokenClock
from tests.fakes import FakeClock, FakeTransport, principal


def clocked(seconds_left: float) -> tuple[FakeClock, FakeTransport, TokenClock]:
    clock, transport = FakeClock(), FakeTransport()
    token_clock = TokenClock(Connection(transport, principal()), clock)
    token_clock.start(clock.now + seconds_left)
    return clock, transport, token_clock


def test_35_second_token_warns_at_30_seconds_left_then_closes_with_4401_when_the_leeway_ends() -> None:
    """`token_expiring` comes 5 s in (not before); 4401 `token expired` at 35 + 30 s."""
    clock, transport, _ = clocked(35)
    clock.advance(4.9)
    assert transport.messages == []
    clock.advance(0.1)
    assert [m["type"] for m in transport.messages] == ["token_expiring"]
    clock.advance(30)  # at `exp`: still inside the leeway
    assert transport.closes == []
    clock.advance(29.9)
    assert transport.closes == []
    clock.advance(0.1)
    assert transport.closes == [(4401, "token expired")]


def test_token_past_exp_but_inside_the_leeway_is_not_closed_at_start() -> None:
    """A token whose `exp` passed 20 s ago is warned at once and closed 10 s later, not at once."""
    clock, transport, _ = clocked(-20)
    assert [m["type"] for m in transport.messages] == ["token_expiring"] and transport.closes == []
    clock.advance(9.9)
    assert transport.closes == []
    clock.advance(0.1)
    assert transport.closes == [(4401, "token expired")]


def test_token_within_30_seconds_warns_at_once() -> None:
    """A token already in its last 30 s is warned at `start`, with its expiry time."""
    _, transport, _ = clocked(10)
    assert transport.messages == [{"type": "token_expiring", "expiresAt": "2033-05-18T03:33:30.000Z"}]


def test_refresh_rearms_the_clock_so_the_old_expiry_passes_quietly() -> None:
    """Starting again with a later expiry cancels the pending timer: no close at the old one."""
    clock, transport, token_clock = clocked(35)
    clock.advance(10)  # warned
    token_clock.start(clock.now + 600)
    clock.advance(30)
    assert transport.closes == [] and len(clock.pending()) == 1
    clock.advance(630)
    assert transport.closes == [(4401, "token expired")]


def test_stop_cancels_the_pending_timer() -> None:
    """A stopped clock (the connection ended) never warns or closes."""
    clock, transport, token_clock = clocked(60)
    token_clock.stop()
    clock.advance(120)
    assert transport.messages == [] and transport.closes == [] and clock.pending() == []
