"""Readiness on an in-memory `StoreHealth`: ping normally, a write while writes fail, and one
check shared by the probes that arrive while it runs."""

from __future__ import annotations

import asyncio

from service.app.readiness import MongoHealth, Readiness
from tests.fakes import MemoryHealth


def test_a_reachable_store_is_ready_after_one_ping() -> None:
    """No write is tried while writes succeed."""
    health = MemoryHealth()
    assert asyncio.run(Readiness(health).check()) == MongoHealth(reachable=True, writes=True)
    assert (health.pings, health.probes) == (1, 0)


def test_while_writes_fail_readiness_writes_instead_of_pinging() -> None:
    """A store that answers pings but takes no writes is not ready."""
    health = MemoryHealth(writes=False, writes_failing=True)
    assert asyncio.run(Readiness(health).check()) == MongoHealth(reachable=False, writes=False)
    assert (health.pings, health.probes) == (0, 1)


def test_probes_during_a_check_share_it() -> None:
    """A stalled store gets one pending ping, however many probes arrive."""
    health = MemoryHealth()
    health.hold = True

    async def run() -> list[MongoHealth]:
        readiness = Readiness(health)
        checks = [asyncio.create_task(readiness.check()) for _ in range(5)]
        await asyncio.sleep(0)
        health.release.set()
        return await asyncio.gather(*checks)

    assert asyncio.run(run()) == [MongoHealth(True, True)] * 5 and health.pings == 1
