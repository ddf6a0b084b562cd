"""Why a client stopped for good: the exceptions `RealtimeClient` and `Api` raise.

RealtimeError
├── Stopped         the service said stop (4401 twice with the same token, 4403, 4000, 1009, 4400)
└── ApiError        a REST answer that is not 2xx after the retries (status, body)
"""

from __future__ import annotations

from typing import Any


class RealtimeError(Exception):
    """The root of this package's errors."""


class Stopped(RealtimeError):
    """The stream ended and must not be resumed by reconnecting (`reason` says why)."""

    def __init__(self, reason: str, code: int | None = None, detail: str = "") -> None:
        super().__init__(f"{reason} ({code}{': ' + detail if detail else ''})" if code else reason)
        self.reason = reason  # one of schema STOP_REASONS: unauthorized, forbidden, disconnected, client_error
        self.code = code
        self.detail = detail


class ApiError(RealtimeError):
    """A REST request answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {error or body}")
        self.status = status
        self.body = body
