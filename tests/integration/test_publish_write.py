"""`POST /api/events` without an Idempotency-Key inserts outside a transaction (its event
reaches the change stream one round trip and one commit sooner); with a key it still commits
in one transaction with the key's record. The change stream shows which: a transaction's
writes carry its `txnNumber`."""

from __future__ import annotations

from typing import Any

import pytest

from harness.clients import Service


async def published_change(service: Service, headers: dict[str, str]) -> dict[str, Any]:
    """Publish one event and return its raw change notification (a change stream of the
    service's `events` collection, opened with PyMongo before the publish)."""
    stream = await service.ctx.store.events.watch([{"$match": {"operationType": "insert"}}])
    async with stream:
        response = await service.request(
            "POST", "/api/events", {"type": "hop.probe"}, token=service.token(roles=("publisher",)), headers=headers
        )
        assert response.code == 202
        change = await stream.next()
    assert change["fullDocument"]["type"] == "hop.probe"
    return dict(change)


@pytest.mark.gen_test(timeout=30)
async def test_publish_without_key_is_not_a_transaction(service: Service) -> None:
    """A keyless publish is one insert on its own: no transaction number on its change."""
    change = await published_change(service, {})
    assert "txnNumber" not in change
    assert "lsid" not in change


@pytest.mark.gen_test(timeout=30)
async def test_publish_with_key_commits_in_a_transaction(service: Service) -> None:
    """With an Idempotency-Key the event and the key's answer commit together, in one transaction."""
    change = await published_change(service, {"Idempotency-Key": "hop-1"})
    assert "txnNumber" in change
