"""The REST side: publish events and change tasks with an `Idempotency-Key`, get tickets.

A change carries one key for all its retries, so a retry after a lost answer, a 503 or a 409
("the first is still running") changes nothing twice; the service replays the first answer.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from realtime_client.errors import ApiError

# A JWT, or a callable returning one (sync or async): called again when a token is refused or expiring.
TokenSource = str | Callable[[], str | Awaitable[str]]
RETRIED_STATUSES = frozenset({409, 429, 502, 503, 504})


async def resolve_token(source: TokenSource) -> str:
    """The current token from a string or a `get_token` callable."""
    if isinstance(source, str):
        return source
    value = source()
    if inspect.isawaitable(value):
        value = await value
    return str(value)


def retry_after(value: str | None, default: float) -> float:
    """Seconds from a `Retry-After` header (capped at 60), else `default`."""
    return min(float(value), 60.0) if value and value.isdigit() else default


class Api:
    """REST calls with the Bearer token; changes retried with one `Idempotency-Key`.

    Args:
        url: the service's base URL (`http://127.0.0.1:5001`).
        token: a JWT or a `get_token` callable.
        retries: how many times a change is sent again after a network error or 409/429/502/503/504.
        timeout: seconds per request.
    """

    def __init__(self, url: str, token: TokenSource, *, retries: int = 4, timeout: float = 20.0) -> None:
        self.base = url.rstrip("/")
        self.token = token
        self.retries = retries
        self.timeout = timeout

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str | int] | None = None,
        idempotency_key: str | None = None,
        idempotent: bool = True,
    ) -> Any:
        """One call; the JSON answer (None for 204).

        With an `idempotency_key` (or for any POST, PATCH and DELETE, which get a fresh one),
        network errors and 409/429/502/503/504 are retried with the same key, waiting
        `Retry-After` (or 1 s) in between. `idempotent=False` sends a change once, without a key.

        Raises:
            ApiError: a 4xx/5xx answer left after the retries.
            OSError: the service could not be reached after the retries.
        """
        change = method.upper() in ("POST", "PATCH", "PUT", "DELETE")
        key = idempotency_key or (str(uuid.uuid4()) if change and idempotent else None)
        url = self.base + path + ("?" + urlencode(query) if query else "")
        attempts = self.retries + 1 if key else 1
        for attempt in range(attempts):
            headers = {"Authorization": f"Bearer {await resolve_token(self.token)}", "Accept": "application/json"}
            if key:
                headers["Idempotency-Key"] = key
            payload = None
            if body is not None:
                payload = json.dumps(body, ensure_ascii=False).encode()
                headers["Content-Type"] = "application/json; charset=utf-8"
            elif change:
                payload = b""
            try:
                response = await AsyncHTTPClient().fetch(
                    url,
                    method=method.upper(),
                    body=payload,
                    headers=headers,
                    raise_error=False,
                    request_timeout=self.timeout,
                    allow_nonstandard_methods=True,
                )
            except (OSError, HTTPClientError):
                if attempt + 1 == attempts:
                    raise
                await asyncio.sleep(1.0)
                continue
            if response.code in RETRIED_STATUSES and attempt + 1 < attempts:
                await asyncio.sleep(retry_after(response.headers.get("Retry-After"), 1.0))
                continue
            if response.code == 599:  # tornado's "no answer" (timeout, reset)
                raise OSError(str(response.error))
            answer = json.loads(response.body) if response.body else None
            if response.code >= 400:
                raise ApiError(response.code, answer)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish(
        self, type: str, fields: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """`POST /api/events` (publisher role): `{"type": type, **fields}` to every subscriber.

        Pass your own `idempotency_key` (e.g. the id of the job that publishes) to make a
        publish safe to repeat across restarts of your process too.
        """
        answer = await self.request(
            "POST", "/api/events", {"type": type, **(fields or {})}, idempotency_key=idempotency_key
        )
        return dict(answer)

    async def ticket(self) -> str:
        """A one-time connection ticket (valid 60 s, on any replica)."""
        answer = await self.request("POST", "/api/realtime/ticket", idempotent=False)
        return str(answer["ticket"])
