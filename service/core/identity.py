"""Who is connected: `Principal` (a verified token's subject, name, roles, expiry) and the
`Credentials` a request carries; no JWT here (verification is `service.app.auth`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.core.events import user_id_of
from service.core.schema import LEEWAY_SECONDS

# The one expiry rule of every transport: a token authenticates while `now < exp + LEEWAY_SECONDS`
# (clock skew between its issuer and us). PyJWT applies it to REST requests, connects and
# polls; `Principal.valid_until` is the same moment for what outlives one check (a stream's
# TokenClock, a waiting poll, a ticket). Defined in the schema, which documents it.
__all__ = ["LEEWAY_SECONDS", "Credentials", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected: the token's subject, display name, roles and expiry."""

    user_id: int | str
    name: str
    roles: frozenset[str]
    expires_at: float

    @property
    def valid_until(self) -> float:
        """When this principal's token stops authenticating: `exp` plus the leeway, as PyJWT decides."""
        return self.expires_at + LEEWAY_SECONDS

    def has_role(self, role: str) -> bool:
        """Admins may do everything."""
        return role in self.roles or "admin" in self.roles

    def to_document(self) -> dict[str, Any]:
        """How a ticket stores the principal."""
        return {"sub": self.user_id, "name": self.name, "roles": sorted(self.roles), "exp": self.expires_at}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Principal:
        return cls(user_id_of(doc["sub"]), doc["name"], frozenset(doc["roles"]), float(doc["exp"]))


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request carries that may authenticate it, one field per source."""

    authorization: str | None = None
    cookie: str | None = None
    ticket: str | None = None
    token: str | None = None
