"""JWT verification, the token sources in order, and one-time tickets (who they name: `service.core.identity`)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm

from service.core.config import HMAC_ALGORITHMS, Settings
from service.core.errors import AuthError, ConfigError
from service.core.events import user_id_of
from service.core.identity import LEEWAY_SECONDS, Credentials, Principal
from service.core.ports import TicketStore
from service.core.schema import TICKET_SECONDS


def _prepared_key(settings: Settings) -> Any:
    """The verification key as PyJWT uses it. A PEM public key is parsed here once: given the
    text, PyJWT parses it again on every token (for RS256 that was most of a connect's cost).
    PyJWT still checks that the key object suits the token's algorithm, as with the text."""
    if settings.jwt_public_key is None:
        return settings.verification_key
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(settings.jwt_public_key.encode())


class _CheckedHmac(HMACAlgorithm):
    """HMAC that checks its one configured secret once, not per token.

    PyJWT's `prepare_key` makes sure an HMAC secret is not a PEM, SSH, DER or JWK key (so a
    token saying `alg: HS256` cannot be verified with a public key as the secret); for the
    secret we verify with, that answer never changes, and the checks were two thirds of a
    token's verification. Any other key still goes through them.
    """

    def __init__(self, hash_alg: Any, secret: str) -> None:
        super().__init__(hash_alg)
        self._secret = secret
        try:
            self._prepared: bytes | None = super().prepare_key(secret)
        except jwt.InvalidKeyError:
            self._prepared = None  # refused per token, as before: every token is `invalid token`

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._secret and self._prepared is not None:
            return self._prepared
        return super().prepare_key(key)


def _decoder(key: Any) -> jwt.PyJWT:
    """A PyJWT of our own: the HMAC algorithms replaced by `_CheckedHmac` when `key` is a secret."""
    decoder = jwt.PyJWT()
    if isinstance(key, str):
        jws = decoder._jws  # PyJWT's own signature layer; register_algorithm is its public API
        for name, hash_alg in (
            ("HS256", HMACAlgorithm.SHA256),
            ("HS384", HMACAlgorithm.SHA384),
            ("HS512", HMACAlgorithm.SHA512),
        ):
            jws.unregister_algorithm(name)
            jws.register_algorithm(name, _CheckedHmac(hash_alg, key))
    return decoder


def _ticket_hash(ticket: str) -> str:
    # Only the hash is stored: a database dump does not hand out live tickets.
    return hashlib.sha256(ticket.encode("utf-8")).hexdigest()


def _subject(value: object) -> int | str:
    # The same rule as event addressing (`to.users`), so a token's user is the one addressed.
    try:
        return user_id_of(value)
    except ValueError:
        raise AuthError("invalid token") from None


class Authenticator:
    """Verifies tokens and tickets with the configured key and algorithms."""

    def __init__(self, settings: Settings, tickets: TicketStore) -> None:
        self._settings = settings
        self._tickets = tickets
        self._key = _prepared_key(settings)
        self._jwt = _decoder(self._key)
        self._algorithms = list(settings.jwt_algorithms)
        # The same every call: built once, not per connect.
        self._options: Any = {"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None}

    def verify(self, token: str) -> Principal:
        """Decode and check a JWT.

        Raises:
            AuthError: `token expired` or `invalid token`.
        """
        s = self._settings
        try:
            claims = self._jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                options=self._options,
                leeway=LEEWAY_SECONDS,
                issuer=s.jwt_issuer,
                audience=s.jwt_audience,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        name = claims.get("name")
        roles = claims.get("roles", ["user"])
        if name is not None and not isinstance(name, str):
            raise AuthError("invalid token")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError("invalid token")
        exp = claims["exp"]
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("invalid token")
        user_id = _subject(claims["sub"])
        return Principal(user_id, name or str(user_id), frozenset(roles), float(exp))

    async def authenticate(self, credentials: Credentials) -> Principal:
        """Authenticate from the first source present, in the order README "Messages" gives (first match wins).

        Raises:
            AuthError: `missing token`, `invalid token`, `token expired`, `invalid ticket`.
        """
        if credentials.authorization is not None:
            scheme, _, token = credentials.authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("invalid token")
            return self.verify(token.strip())
        if credentials.cookie:
            return self.verify(credentials.cookie)
        if credentials.ticket:
            return await self.redeem_ticket(credentials.ticket)
        if credentials.token:
            return self.verify(credentials.token)
        raise AuthError("missing token")

    async def issue_ticket(self, principal: Principal) -> str:
        """A random one-time ticket for `principal`, valid for TICKET_SECONDS."""
        ticket = secrets.token_urlsafe(32)
        expires_at = min(time.time() + TICKET_SECONDS, principal.expires_at)
        await self._tickets.save_ticket(_ticket_hash(ticket), principal.to_document(), expires_at)
        return ticket

    async def redeem_ticket(self, ticket: str) -> Principal:
        """Use a ticket up; a second use fails.

        Raises:
            AuthError: `invalid ticket` (unknown, used or expired) or `token expired`.
        """
        doc = await self._tickets.take_ticket(_ticket_hash(ticket))
        if doc is None:
            raise AuthError("invalid ticket")
        principal = Principal.from_document(doc)
        if time.time() >= principal.valid_until:
            raise AuthError("token expired")
        return principal


def issue_token(
    settings: Settings,
    *,
    sub: int | str,
    name: str,
    roles: Iterable[str] = ("user",),
    ttl_seconds: float = 3600,
    extra: dict[str, Any] | None = None,
) -> str:
    """Sign a token with the configured HMAC secret (development and tests).

    Raises:
        ConfigError: when the service verifies with a public key (it holds no private key).
    """
    if settings.jwt_secret is None:
        raise ConfigError("JWT_SECRET: tokens can only be issued with an HMAC secret")
    algorithm = next((a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS), "HS256")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(sub),
        "name": name,
        "roles": list(roles),
        "iat": now,
        "exp": now + int(ttl_seconds),
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    claims.update(extra or {})
    return jwt.encode(claims, settings.jwt_secret, algorithm=algorithm)
