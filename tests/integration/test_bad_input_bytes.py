"""Request bodies that are not UTF-8 text, over real HTTP: lone surrogates (raw CESU-8 bytes or
`\\ud800` escapes), UTF-16/32, invalid bytes and declared charsets are client errors that name
the problem, on every write endpoint, never a 500, an ERROR log line or a consumed id."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from harness.clients import Service

PUBLISHER = ("user", "publisher")
RAW_SURROGATE = b"\xed\xa0\x80"  # U+D800 encoded as if it were a character (CESU-8 / WTF-8)


def answer(response: HTTPResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    return json.loads(response.body)  # type: ignore[no-any-return]


async def new_task(service: Service, token: str) -> int:
    response = await service.request("POST", "/api/tasks", {"title": "t", "taskType": "daily"}, token=token)
    assert response.code == 201, response.body
    return answer(response)["id"]  # type: ignore[no-any-return]


async def new_schedule(service: Service, token: str) -> int:
    body = {"name": "s", "cron": "0 9 * * 1", "taskType": "daily"}
    response = await service.request("POST", "/api/schedules", body, token=token)
    assert response.code == 201, response.body
    return answer(response)["id"]  # type: ignore[no-any-return]


# Per write endpoint: method, path, a body valid but for `@@`, and the field that holds it.
ENDPOINTS = [
    ("POST", "/api/tasks", '{"title":"a@@b","taskType":"daily"}', "title"),
    ("PATCH", "/api/tasks/{task}", '{"title":"a@@b"}', "title"),
    ("POST", "/api/tasks/{task}/execute", '{"resultStatus":"completed","note":"a@@b"}', "note"),
    ("POST", "/api/schedules", '{"name":"a@@b","cron":"0 9 * * 1","taskType":"daily"}', "name"),
    ("PATCH", "/api/schedules/{schedule}", '{"name":"a@@b"}', "name"),
    ("POST", "/api/events", '{"type":"note","text":["x","a@@b"]}', "text[1]"),
]
ENDPOINT_IDS = ["create-task", "patch-task", "execute", "create-schedule", "patch-schedule", "publish"]


async def send(service: Service, method: str, path: str, body: bytes, **headers: str) -> HTTPResponse:
    token = service.token(roles=PUBLISHER)
    ids = {"task": await new_task(service, token), "schedule": await new_schedule(service, token)}
    return await service.request(method, path.format(**ids), raw=body, token=token, headers=headers)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("method", "path", "template", "field"), ENDPOINTS, ids=ENDPOINT_IDS)
async def test_raw_lone_surrogate_is_400_naming_the_field(
    service: Service, caplog: pytest.LogCaptureFixture, method: str, path: str, template: str, field: str
) -> None:
    """The bytes ED A0 80 inside a string are refused with 400 naming the field, and nothing logs an ERROR."""
    caplog.set_level(logging.WARNING)
    response = await send(service, method, path, template.encode().replace(b"@@", RAW_SURROGATE))
    assert response.code == 400, response.body
    assert answer(response)["fields"] == {field: "holds a lone surrogate (U+D800), which UTF-8 text cannot carry"}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("method", "path", "template", "field"), ENDPOINTS, ids=ENDPOINT_IDS)
async def test_escaped_lone_surrogate_is_400_naming_the_field(
    service: Service, method: str, path: str, template: str, field: str
) -> None:
    """A `\\udfff` escape that pairs with nothing is refused the same way as the raw bytes."""
    response = await send(service, method, path, template.replace("@@", "\\udfff").encode())
    assert response.code == 400, response.body
    assert set(answer(response)["fields"]) == {field}


@pytest.mark.gen_test(timeout=30)
async def test_surrogate_in_a_field_name_is_named_escaped(service: Service) -> None:
    """A name holding a surrogate is named with the surrogate escaped, so the answer is UTF-8 itself."""
    body = b'{"type":"note","to":{"users":[1]},"k' + RAW_SURROGATE + b'":1}'
    response = await service.request("POST", "/api/events", raw=body, token=service.token(roles=PUBLISHER))
    assert response.code == 400 and set(answer(response)["fields"]) == {"k\\ud800"}
    response.body.decode("utf-8")


@pytest.mark.gen_test(timeout=30)
async def test_refused_bodies_consume_no_task_or_schedule_id(service: Service) -> None:
    """Ids stay consecutive around refused creates: the counters are never bumped by a 400."""
    token = service.token()
    first_task, first_schedule = await new_task(service, token), await new_schedule(service, token)
    for raw in (
        b'{"title":"a' + RAW_SURROGATE + b'","taskType":"daily"}',
        '{"title":"t","taskType":"daily"}'.encode("utf-16"),
        b'{"title":"\\ud800","taskType":"daily"}',
    ):
        assert (await service.request("POST", "/api/tasks", raw=raw, token=token)).code == 400
    raw = b'{"name":"' + RAW_SURROGATE + b'","cron":"0 9 * * 1","taskType":"daily"}'
    assert (await service.request("POST", "/api/schedules", raw=raw, token=token)).code == 400
    assert await new_task(service, token) == first_task + 1
    assert await new_schedule(service, token) == first_schedule + 1


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe" + '{"title":"t","taskType":"daily"}'.encode("utf-16-le"),
        b"\xfe\xff" + '{"title":"t","taskType":"daily"}'.encode("utf-16-be"),
        '{"title":"t","taskType":"daily"}'.encode("utf-16-le"),
        '{"title":"t","taskType":"daily"}'.encode("utf-16-be"),
        '{"title":"t","taskType":"daily"}'.encode("utf-32"),
        '{"title":"t","taskType":"daily"}'.encode("utf-32-le"),
        '{"title":"t","taskType":"daily"}'.encode("utf-32-be"),
    ],
    ids=["utf16le-bom", "utf16be-bom", "utf16le", "utf16be", "utf32-bom", "utf32le", "utf32be"],
)
async def test_utf16_and_utf32_bodies_are_400(service: Service, raw: bytes) -> None:
    """JSON between systems is UTF-8 (RFC 8259): UTF-16/32, with or without a BOM, are refused by name."""
    response = await service.request("POST", "/api/tasks", raw=raw, token=service.token())
    assert response.code == 400
    assert answer(response)["fields"] == {"body": "is UTF-16 or UTF-32; send UTF-8"}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("raw", "offset"), [(b"\xff", 10), (b"\xc0\xaf", 10), (b"\xe2\x82", 10), (b"\x80", 10)])
async def test_bytes_that_are_not_utf8_are_400_with_their_offset(service: Service, raw: bytes, offset: int) -> None:
    """An invalid byte, an overlong form or a cut sequence is named with its offset."""
    body = b'{"title":"' + raw + b'","taskType":"daily"}'
    response = await service.request("POST", "/api/tasks", raw=body, token=service.token())
    assert response.code == 400
    assert answer(response)["fields"] == {"body": f"byte 0x{raw[0]:02x} at offset {offset} is not UTF-8"}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("charset", ["latin-1", "utf-16", '"iso-8859-1"', "Shift_JIS"])
async def test_declared_charset_other_than_utf8_is_415(service: Service, charset: str) -> None:
    """A body declared in another charset is refused as a whole with 415 and a JSON reason."""
    response = await service.request(
        "POST",
        "/api/tasks",
        {"title": "t", "taskType": "daily"},
        token=service.token(),
        headers={"Content-Type": f"application/json; charset={charset}"},
    )
    assert response.code == 415
    body = answer(response)
    assert body["error"] == "unsupported_media_type" and charset.strip('"').lower() in body["message"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json;charset=UTF-8"])
async def test_declared_utf8_is_accepted(service: Service, content_type: str) -> None:
    """`charset=utf-8`, in any case, is what we speak."""
    response = await service.request(
        "POST", "/api/tasks", {"title": "ت", "taskType": "daily"}, token=service.token(),
        headers={"Content-Type": content_type},
    )  # fmt: skip
    assert response.code == 201


@pytest.mark.gen_test(timeout=30)
async def test_leading_utf8_bom_is_ignored(service: Service) -> None:
    """One UTF-8 BOM before the JSON is skipped (RFC 8259 lets parsers ignore it); the text is kept."""
    body = b"\xef\xbb\xbf" + json.dumps({"title": "تقرير", "taskType": "daily"}, ensure_ascii=False).encode()
    response = await service.request("POST", "/api/tasks", raw=body, token=service.token())
    assert response.code == 201 and answer(response)["title"] == "تقرير"


@pytest.mark.gen_test(timeout=30)
async def test_paired_surrogate_escapes_are_one_character(service: Service) -> None:
    """`\\ud83d\\ude00` is a valid escape of U+1F600, stored and answered as that character."""
    body = b'{"title":"\\ud83d\\ude00","taskType":"daily"}'
    response = await service.request("POST", "/api/tasks", raw=body, token=service.token())
    assert response.code == 201 and answer(response)["title"] == "\U0001f600"


@pytest.mark.gen_test(timeout=30)
async def test_websocket_message_with_a_lone_surrogate_escape_is_an_error_naming_it(service: Service) -> None:
    """On a WebSocket the same rule answers `error` naming the field, and the connection stays open."""
    ws = await service.websocket({"token": service.token()})
    await ws.recv_type("connected")
    await ws.send('{"type":"ping","nonce":"\\ud800"}')
    error = await ws.recv_type("error")
    assert error["code"] == "bad_message" and "nonce" in error["message"]
    await ws.send({"type": "ping", "nonce": "after"})
    assert (await ws.recv_type("pong"))["nonce"] == "after"
    await ws.close()
