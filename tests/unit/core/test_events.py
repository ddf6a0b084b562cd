"""The event envelope as pure code: ids, publish documents, change notifications, audiences."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId
from hypothesis import given
from hypothesis import strategies as st

from service.core.errors import BadMessage
from service.core.events import (
    Audience,
    Change,
    Position,
    document_for_publish,
    event_document,
    event_from_change,
    event_id,
    iso,
    parse_audience,
    parse_event_id,
)

CREATED = datetime(2026, 11, 25, 19, 0, 0, 123_456, tzinfo=UTC)
CREATED_US = 1_795_633_200_123_456  # CREATED in microseconds since the epoch
U32 = st.integers(min_value=0, max_value=2**32 - 1)
timestamps = st.builds(Position, U32, U32)


POSITION = Position(1_700_000_000, 3)


def change(doc: Any, position: Position = POSITION, wall_time: datetime | None = None) -> Change:
    """The change feed's insert of `doc` (anything, as another program may have inserted)."""
    return Change(position, {"_data": "token"}, doc, wall_time)


@given(timestamps)
def test_event_id_round_trips_through_parse(position: Position) -> None:
    """Every oplog position survives `event_id` then `parse_event_id`."""
    assert parse_event_id(event_id(position)) == position


@given(timestamps, timestamps)
def test_event_id_order_follows_oplog_order(a: Position, b: Position) -> None:
    """Ids compare as strings exactly as their positions compare."""
    assert (event_id(a) < event_id(b)) == (a < b)
    assert (event_id(a) == event_id(b)) == (a == b)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "00000000000000000",
        "zzzzzzzzzzzzzzzz",
        "+000000100000001",
        " 00000010000000f",
        "0000_00100000001",
        "-000000100000001",
        "00000001000000０",
        "6553F10000000007",
    ],
)
def test_parse_event_id_refuses_anything_event_id_cannot_produce(value: str) -> None:
    """Signs, blanks, underscores, upper case and non-ASCII digits are not ids."""
    assert parse_event_id(value) is None


@given(st.text(max_size=20))
def test_parse_event_id_accepts_only_canonical_ids(value: str) -> None:
    """Whatever parses re-encodes to the same string, so one event has one id."""
    position = parse_event_id(value)
    if position is not None:
        assert event_id(position) == value


def test_iso_formats_milliseconds_and_z() -> None:
    """Timestamps are UTC with milliseconds and a `Z`; naive datetimes are taken as UTC."""
    assert iso(CREATED) == "2026-11-25T19:00:00.123Z"
    assert iso(CREATED.replace(tzinfo=None)) == "2026-11-25T19:00:00.123Z"


def test_document_for_publish_keeps_fields_and_normalises_to() -> None:
    """The stored document has the flat fields, the type, `createdAt` and the normalised audience."""
    body = {"type": "deploy.done", "userName": "ليلى", "n": 1, "to": {"users": ["7", 3], "roles": ["admin"]}}
    doc = document_for_publish(body, CREATED)
    assert doc == {
        "type": "deploy.done",
        "userName": "ليلى",
        "n": 1,
        "createdAt": CREATED,
        "createdAtUs": CREATED_US,
        "to": {"users": [3, 7], "roles": ["admin"]},
    }


def test_document_for_publish_without_to_has_no_audience() -> None:
    """An event without `to` is stored without one (delivered to everybody)."""
    expected = {"type": "x", "createdAt": CREATED, "createdAtUs": CREATED_US}
    assert document_for_publish({"type": "x"}, CREATED) == expected


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"type"}),
        ({"type": 5}, {"type"}),
        ({"type": "Bad"}, {"type"}),
        ({"type": "x" * 65}, {"type"}),
        ({"type": "connected"}, {"type"}),
        ({"type": "error"}, {"type"}),
        ({"type": "x", "id": "1", "ts": "now", "_id": 1, "createdAt": 1}, {"id", "ts", "_id", "createdAt"}),
        ({"type": "x", "createdAtUs": 1}, {"createdAtUs"}),
        ({"type": "x", "to": []}, {"to"}),
        ({"type": "x", "to": {}}, {"to"}),
        ({"type": "x", "to": {"groups": ["a"]}}, {"to"}),
        ({"type": "x", "to": {"users": 1}}, {"to.users"}),
        ({"type": "x", "to": {"users": [True]}}, {"to.users"}),
        ({"type": "x", "to": {"users": [1.5]}}, {"to.users"}),
        ({"type": "x", "to": {"roles": [1]}}, {"to.roles"}),
        ({"type": "x", "to": {"roles": [""]}}, {"to.roles"}),
    ],
)
def test_document_for_publish_rejects_bad_bodies_naming_fields(body: dict[str, Any], fields: set[str]) -> None:
    """Each rejected body names the offending fields."""
    with pytest.raises(BadMessage) as info:
        document_for_publish(body, CREATED)
    assert set(info.value.fields) == fields


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "x", "n": 2**63}, "n"),
        ({"type": "x", "deep": {"list": [1, -(2**63) - 1]}}, "deep"),
        ({"type": "x", "$set": {"a": 1}}, "$set"),
        ({"type": "x", "nested": {"a\x00b": 1}}, "nested"),
    ],
)
def test_document_for_publish_rejects_what_mongodb_cannot_store(body: dict[str, Any], field: str) -> None:
    """Integers beyond 64 bits, `$` keys and NUL in keys are refused up front, not as a 500."""
    with pytest.raises(BadMessage) as info:
        document_for_publish(body, CREATED)
    assert field in info.value.fields


def test_event_from_change_builds_the_client_payload() -> None:
    """Private fields are dropped, BSON values become JSON, the id comes from the position."""
    oid = ObjectId("65a1b2c3d4e5f6a7b8c9d0e1")
    doc = {
        "_id": oid,
        "type": "task_created",
        "createdAt": CREATED,
        "userId": 1,
        "userName": "محمد حسن",
        "taskId": 12,
        "meta": {"at": CREATED, "ref": oid, "tags": ("a", "b")},
        "to": {"users": [1]},
    }
    event = event_from_change(change(doc, Position(1_700_000_000, 3)))
    assert event is not None
    assert event.id == "6553f10000000003"
    assert event.ts == "2026-11-25T19:00:00.123Z"
    assert event.inserted_at == CREATED.timestamp()
    assert event.audience == Audience(users=frozenset({1}))
    assert event.payload() == {
        "id": "6553f10000000003",
        "type": "task_created",
        "ts": "2026-11-25T19:00:00.123Z",
        "userId": 1,
        "userName": "محمد حسن",
        "taskId": 12,
        "meta": {"at": "2026-11-25T19:00:00.123Z", "ref": str(oid), "tags": ["a", "b"]},
    }


def test_event_from_change_ignores_stored_id_and_ts() -> None:
    """A document inserted directly with its own `id`/`ts` cannot override the server's."""
    event = event_from_change(change({"type": "x", "id": "forged", "ts": "forged", "createdAt": CREATED}))
    assert event is not None
    assert event.payload()["id"] == "6553f10000000003"
    assert event.payload()["ts"] == "2026-11-25T19:00:00.123Z"


def test_event_from_change_without_created_at_uses_wall_time() -> None:
    """A document without `createdAt` takes the notification's wall time (naive means UTC)."""
    event = event_from_change(change({"type": "x"}, wall_time=CREATED.replace(tzinfo=None)))
    assert event is not None and event.ts == "2026-11-25T19:00:00.123Z"


def test_event_from_change_without_any_time_uses_cluster_time() -> None:
    """With neither `createdAt` nor wall time the cluster time's seconds are used."""
    event = event_from_change(change({"type": "x"}, Position(1_700_000_000, 1)))
    assert event is not None and event.ts == "2023-11-14T22:13:20.000Z"


@pytest.mark.parametrize(
    "doc",
    [None, "text", {}, {"type": 5}, {"type": "Bad Type"}, {"type": "connected"}, {"type": "x", "to": {}}],
    ids=["none", "not-a-document", "no-type", "numeric-type", "bad-type", "control-type", "bad-to"],
)
def test_event_from_change_skips_documents_that_are_not_events(doc: Any) -> None:
    """Documents written directly by other programs with a bad shape are skipped, not delivered."""
    assert event_from_change(change(doc)) is None


@pytest.mark.parametrize(
    ("audience", "user", "roles", "admitted"),
    [
        (Audience(users=frozenset({7})), 7, frozenset({"user"}), True),
        (Audience(users=frozenset({7})), 8, frozenset({"user"}), False),
        (Audience(roles=frozenset({"admin"})), 8, frozenset({"user", "admin"}), True),
        (Audience(roles=frozenset({"admin"})), 8, frozenset({"user"}), False),
        (Audience(users=frozenset({7}), roles=frozenset({"admin"})), 9, frozenset({"admin"}), True),
        (Audience(users=frozenset({"alice"})), "alice", frozenset(), True),
        (Audience(users=frozenset({"7"})), 7, frozenset(), False),
    ],
)
def test_audience_admits_listed_users_and_roles(
    audience: Audience, user: int | str, roles: frozenset[str], admitted: bool
) -> None:
    """A principal is addressed by its id or by any shared role."""
    assert audience.admits(user, roles) is admitted


@pytest.mark.parametrize(
    ("raw", "users"),
    [
        (["7"], {7}),
        ([7], {7}),
        (["alice"], {"alice"}),
        (["007"], {"007"}),
        (["١"], {"١"}),
        (["²"], {"²"}),
        (["12345678901234567890"], {"12345678901234567890"}),
        ([2**64], {"18446744073709551616"}),
    ],
    ids=[
        "numeric-string",
        "int",
        "name",
        "leading-zeros",
        "arabic-indic-digit",
        "superscript",
        "long-string",
        "long-int",
    ],
)
def test_to_users_follow_the_same_id_rule_as_token_subjects(raw: list[Any], users: set[int | str]) -> None:
    """Only canonical ASCII decimal strings that fit a token's integer `sub` become integers."""
    audience = parse_audience({"users": raw})
    assert audience is not None and audience.users == users


def test_published_and_emitted_documents_carry_created_at_in_microseconds() -> None:
    """`createdAtUs` keeps the microseconds a BSON `createdAt` date drops."""
    assert document_for_publish({"type": "x"}, CREATED)["createdAtUs"] == CREATED_US
    assert event_document("task_created", {"taskId": 1}, CREATED)["createdAtUs"] == CREATED_US


def test_latency_starts_at_created_at_us_when_present() -> None:
    """The metrics' start is `createdAtUs` (sub-millisecond), and clients never see it."""
    millis = CREATED.replace(microsecond=123_000)  # what MongoDB gives back for `createdAt`
    event = event_from_change(change({"type": "x", "createdAt": millis, "createdAtUs": CREATED_US}))
    assert event is not None
    assert event.inserted_at == CREATED_US / 1e6
    assert "createdAtUs" not in event.payload()


def test_latency_falls_back_to_created_at_without_created_at_us() -> None:
    """A document another program inserted without `createdAtUs` is timed from `createdAt`."""
    event = event_from_change(change({"type": "x", "createdAt": CREATED, "createdAtUs": "soon"}))
    assert event is not None
    assert event.inserted_at == CREATED.timestamp()
