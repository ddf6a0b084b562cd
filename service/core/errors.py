"""Exception tree and close codes shared by every module.

ServiceError
├── ConfigError        bad environment; the service refuses to start
├── AuthError          missing, invalid or expired credentials (carries a reason)
│   └── Forbidden      authenticated, but lacks a role
├── BadMessage         a client message or request body was rejected (carries fields)
├── NotFound           an unknown id
├── StoreError         storage did not do what was asked (a write conflict, say); a retry may
│   │                  succeed. Fan-out sees only these, never the driver's errors
│   ├── StoreUnavailable   MongoDB did not answer in time, or failed and must be restarted
│   │   └── StoreFull      MongoDB is out of disk space
│   └── HistoryLost    a change feed position was pruned from the oplog: clients must resync
└── ReplayBusy         a resume from MongoDB was not admitted now (too many at once)
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """WebSocket close codes the service sends; their client policy is `service.core.schema.CLOSE_POLICY`."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    DISCONNECTED_BY_ADMIN = 4000
    TOO_MANY_BAD_MESSAGES = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    SLOW_CONSUMER = 4408
    TOO_MANY_CONNECTIONS = 4429


class ServiceError(Exception):
    """Root of every error the service raises on purpose."""


class ConfigError(ServiceError):
    """A configuration variable has a bad value; the message names it."""


class AuthError(ServiceError):
    """Credentials are missing, invalid or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Forbidden(AuthError):
    """The principal is authenticated but lacks the role the action needs."""


class BadMessage(ServiceError):
    """A client message or request body was rejected."""

    def __init__(self, message: str, fields: dict[str, str] | None = None, code: str = "bad_message") -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.code = code


class NotFound(ServiceError):
    """An id that names nothing."""


class StoreError(ServiceError):
    """Storage refused or failed an operation; the caller may retry it later."""


class StoreUnavailable(StoreError):
    """MongoDB could not be reached within the configured timeout, or answered that it failed."""


class StoreFull(StoreUnavailable):
    """MongoDB said it is out of disk space (OutOfDiskSpace)."""


class HistoryLost(StoreError):
    """The change feed cannot resume at a position: MongoDB pruned it (ChangeStreamHistoryLost)."""


class ReplayBusy(ServiceError):
    """A resume that needs MongoDB was not admitted now; the client should come back later."""
