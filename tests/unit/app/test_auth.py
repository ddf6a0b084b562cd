"""Token verification, the order of token sources, and one-time tickets, without a server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.app.auth import Authenticator
from service.core.config import Settings
from service.core.errors import AuthError
from service.core.identity import LEEWAY_SECONDS, Credentials, Principal

SECRET = "unit-test-secret-that-is-long-enough-for-hs256-hs384-and-hs512-0123"
FOREIGN_SECRET = "another-secret-that-is-long-enough-for-every-hmac-algorithm-987654"


class MemoryTickets:
    """An in-memory `TicketStore`: expiring, single-use, keyed by the ticket hash."""

    def __init__(self) -> None:
        self.saved: dict[str, tuple[dict[str, Any], float]] = {}

    async def save_ticket(self, ticket_hash: str, principal: dict[str, Any], expires_at: float) -> None:
        self.saved[ticket_hash] = (principal, expires_at)

    async def take_ticket(self, ticket_hash: str) -> dict[str, Any] | None:
        entry = self.saved.pop(ticket_hash, None)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]


def hs_settings(**overrides: Any) -> Settings:
    return replace(Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",)), **overrides)


def authenticator(settings: Settings | None = None) -> Authenticator:
    return Authenticator(settings or hs_settings(), MemoryTickets())


def sign(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for user 1, expiring in an hour; `None` removes a claim."""
    base: dict[str, Any] = {"sub": "1", "name": "محمد حسن", "roles": ["user"], "exp": int(time.time()) + 3600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256_by_hand(key: str) -> str:
    """An HS256 token over `claims()` with `key` as the HMAC secret, made without PyJWT (which
    refuses a PEM as a secret): what a key-confusion attacker would send."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims()).encode())
    signature = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


def reason_of(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as info:
        auth.verify(token)
    return info.value.reason


def test_valid_token_gives_principal() -> None:
    """Subject, name, roles and expiry come from the claims."""
    exp = int(time.time()) + 600
    principal = authenticator().verify(sign(claims(exp=exp, roles=["user", "publisher"])))
    assert principal == Principal(1, "محمد حسن", frozenset({"user", "publisher"}), float(exp))


def test_token_expired_beyond_leeway_is_refused_as_expired() -> None:
    """An `exp` further in the past than the 30 s leeway gives `token expired`."""
    token = sign(claims(exp=int(time.time()) - LEEWAY_SECONDS - 30))
    assert reason_of(authenticator(), token) == "token expired"


def test_token_expired_within_leeway_is_accepted() -> None:
    """Clock skew under 30 s does not reject a token."""
    token = sign(claims(exp=int(time.time()) - 10))
    assert authenticator().verify(token).user_id == 1


def test_token_not_yet_valid_is_refused() -> None:
    """An `nbf` beyond the leeway in the future is an invalid token."""
    token = sign(claims(nbf=int(time.time()) + 300))
    assert reason_of(authenticator(), token) == "invalid token"


def test_token_issued_in_the_future_is_refused() -> None:
    """An `iat` beyond the leeway in the future is an invalid token."""
    token = sign(claims(iat=int(time.time()) + 300))
    assert reason_of(authenticator(), token) == "invalid token"


@pytest.mark.parametrize(
    ("missing", "value"),
    [("exp", None), ("sub", None), ("sub", ""), ("sub", 5), ("sub", ["1"]), ("exp", "soon")],
    ids=["no-exp", "no-sub", "empty-sub", "numeric-sub", "list-sub", "text-exp"],
)
def test_token_without_valid_sub_or_exp_is_refused(missing: str, value: Any) -> None:
    """`sub` (a non-empty string) and `exp` (a number) are required."""
    assert reason_of(authenticator(), sign(claims(**{missing: value}))) == "invalid token"


@pytest.mark.parametrize(
    ("token_iss", "accepted"), [("https://issuer.example", True), ("https://evil.example", False), (None, False)]
)
def test_issuer_is_checked_when_configured(token_iss: str | None, accepted: bool) -> None:
    """With JWT_ISSUER set, a token must carry exactly that `iss`."""
    auth = authenticator(hs_settings(jwt_issuer="https://issuer.example"))
    token = sign(claims(iss=token_iss))
    if accepted:
        assert auth.verify(token).user_id == 1
    else:
        assert reason_of(auth, token) == "invalid token"


@pytest.mark.parametrize(
    ("token_aud", "accepted"),
    [("realtime", True), (["other", "realtime"], True), ("other", False), (None, False)],
)
def test_audience_is_checked_when_configured(token_aud: str | list[str] | None, accepted: bool) -> None:
    """With JWT_AUDIENCE set, a token must name it in `aud`."""
    auth = authenticator(hs_settings(jwt_audience="realtime"))
    token = sign(claims(aud=token_aud))
    if accepted:
        assert auth.verify(token).user_id == 1
    else:
        assert reason_of(auth, token) == "invalid token"


def test_audience_in_token_is_accepted_when_not_configured() -> None:
    """A token meant for several services is not refused because we check no audience."""
    assert authenticator().verify(sign(claims(aud="someone-else"))).user_id == 1


@pytest.mark.parametrize("roles", ["admin", {"admin": True}, ["user", 1], None])
def test_roles_that_are_not_a_list_of_strings_are_refused(roles: Any) -> None:
    """`roles` must be a list of strings; anything else makes the token invalid."""
    token = sign({**claims(), "roles": roles})
    assert reason_of(authenticator(), token) == "invalid token"


def test_missing_roles_mean_user_and_missing_name_means_subject() -> None:
    """A bare token is a plain user whose display name is the subject."""
    principal = authenticator().verify(sign(claims(roles=None, name=None, sub="42")))
    assert (principal.roles, principal.name) == (frozenset({"user"}), "42")


def test_non_string_name_is_refused() -> None:
    """A `name` that is not a string makes the token invalid."""
    assert reason_of(authenticator(), sign(claims(name=["x"]))) == "invalid token"


@pytest.mark.parametrize(
    ("sub", "user_id"),
    [
        ("7", 7),
        ("007", "007"),
        ("alice", "alice"),
        ("auth0|5f1", "auth0|5f1"),
        ("١٢", "١٢"),
        ("²", "²"),
        ("1234567890123456789", "1234567890123456789"),
    ],
    ids=["numeric", "leading-zeros", "name", "provider-id", "arabic-indic-digits", "superscript", "19-digits"],
)
def test_numeric_subject_becomes_integer_other_subjects_stay_strings(sub: str, user_id: int | str) -> None:
    """Only canonical ASCII decimal strings (no leading zero) that fit 64 bits become integer user ids."""
    assert authenticator().verify(sign(claims(sub=sub))).user_id == user_id


def test_alg_none_token_is_refused() -> None:
    """An unsigned token is never accepted."""
    token = jwt.encode(claims(), "", algorithm="none")
    assert reason_of(authenticator(), token) == "invalid token"


def test_token_signed_with_another_key_is_refused() -> None:
    """A signature made with a different secret is an invalid token."""
    assert reason_of(authenticator(), sign(claims(), key=FOREIGN_SECRET)) == "invalid token"


def test_token_with_algorithm_outside_the_list_is_refused() -> None:
    """With JWT_ALGORITHMS=HS512, an HS256 token is refused even with the right secret."""
    auth = authenticator(hs_settings(jwt_algorithms=("HS512",)))
    assert reason_of(auth, sign(claims())) == "invalid token"
    assert auth.verify(sign(claims(), algorithm="HS512")).user_id == 1


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "Bearer x"])
def test_garbage_token_is_refused(token: str) -> None:
    """Text that is not a JWT is an invalid token."""
    assert reason_of(authenticator(), token) == "invalid token"


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, pem


def rs_settings(pem: str) -> Settings:
    return Settings(jwt_public_key=pem, jwt_algorithms=("RS256",))


def test_rs256_token_verifies_with_public_key(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    """A token signed with the private key verifies against JWT_PUBLIC_KEY."""
    private, pem = rsa_pair
    token = jwt.encode(claims(sub="9"), private, algorithm="RS256")
    assert authenticator(rs_settings(pem)).verify(token).user_id == 9


def test_rs256_token_from_another_key_pair_is_refused(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    """A signature by a different private key is an invalid token."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256")
    assert reason_of(authenticator(rs_settings(rsa_pair[1])), token) == "invalid token"


def test_hs256_token_signed_with_the_public_key_text_is_refused(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    """Key confusion: an HMAC over the public PEM (which anyone has) is not accepted."""
    pem = rsa_pair[1]
    assert reason_of(authenticator(rs_settings(pem)), hs256_by_hand(pem)) == "invalid token"


def test_pyjwt_still_has_the_signature_layer_the_decoder_replaces_hmac_in() -> None:
    """service.app.auth swaps the HMACs of its own PyJWT's `_jws`: a PyJWT that renames it fails here first."""
    jws = jwt.PyJWT()._jws
    assert isinstance(jws, jwt.PyJWS)
    assert {"HS256", "HS384", "HS512"} <= set(jws.get_algorithms())


def test_a_pem_configured_as_the_hmac_secret_verifies_nothing(rsa_pair: tuple[rsa.RSAPrivateKey, str]) -> None:
    """Checking the secret once at start keeps PyJWT's rule: a PEM is never an HMAC secret."""
    pem = rsa_pair[1]
    assert reason_of(authenticator(hs_settings(jwt_secret=pem)), hs256_by_hand(pem)) == "invalid token"


def test_admin_has_every_role() -> None:
    """`admin` passes every role check; others pass only their own roles."""
    admin = Principal(1, "a", frozenset({"admin"}), 0.0)
    user = Principal(2, "u", frozenset({"user"}), 0.0)
    assert admin.has_role("publisher") and admin.has_role("user")
    assert user.has_role("user") and not user.has_role("publisher")


def user_token(sub: str) -> str:
    return sign(claims(sub=sub, name=f"user {sub}"))


@pytest.mark.gen_test
async def test_authorization_header_beats_every_other_source() -> None:
    """With every source present, the Bearer token decides and the ticket stays unused."""
    auth = authenticator()
    ticket = await auth.issue_ticket(auth.verify(user_token("3")))
    credentials = Credentials(
        authorization=f"Bearer {user_token('1')}", cookie=user_token("2"), ticket=ticket, token=user_token("4")
    )
    assert (await auth.authenticate(credentials)).user_id == 1
    assert (await auth.redeem_ticket(ticket)).user_id == 3


@pytest.mark.gen_test
async def test_cookie_beats_ticket_and_token_query() -> None:
    """Without Authorization, the `access_token` cookie decides."""
    auth = authenticator()
    ticket = await auth.issue_ticket(auth.verify(user_token("3")))
    credentials = Credentials(cookie=user_token("2"), ticket=ticket, token=user_token("4"))
    assert (await auth.authenticate(credentials)).user_id == 2


@pytest.mark.gen_test
async def test_ticket_beats_token_query() -> None:
    """Without header or cookie, a ticket decides over `token=`."""
    auth = authenticator()
    ticket = await auth.issue_ticket(auth.verify(user_token("3")))
    assert (await auth.authenticate(Credentials(ticket=ticket, token=user_token("4")))).user_id == 3


@pytest.mark.gen_test
async def test_token_query_is_the_last_source() -> None:
    """`token=` alone authenticates (the seed's form)."""
    assert (await authenticator().authenticate(Credentials(token=user_token("4")))).user_id == 4


@pytest.mark.gen_test
async def test_no_credentials_is_missing_token() -> None:
    """Nothing to authenticate with gives `missing token`."""
    with pytest.raises(AuthError) as info:
        await authenticator().authenticate(Credentials())
    assert info.value.reason == "missing token"


@pytest.mark.gen_test
@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc", ""])
async def test_non_bearer_authorization_is_invalid_without_fallback(header: str) -> None:
    """A present but unusable Authorization header fails; it does not fall back to the cookie."""
    with pytest.raises(AuthError) as info:
        await authenticator().authenticate(Credentials(authorization=header, cookie=user_token("2")))
    assert info.value.reason == "invalid token"


@pytest.mark.gen_test
async def test_bearer_scheme_is_case_insensitive() -> None:
    """`bearer` in any case is accepted, as RFC 6750 schemes are."""
    credentials = Credentials(authorization=f"bEaReR {user_token('5')}")
    assert (await authenticator().authenticate(credentials)).user_id == 5


@pytest.mark.gen_test
async def test_ticket_works_once() -> None:
    """A redeemed ticket gives the principal it was issued for; the second use fails."""
    auth = authenticator()
    principal = auth.verify(sign(claims(sub="8", name="ليلى", roles=["user", "publisher"])))
    ticket = await auth.issue_ticket(principal)
    assert await auth.redeem_ticket(ticket) == principal
    with pytest.raises(AuthError) as info:
        await auth.redeem_ticket(ticket)
    assert info.value.reason == "invalid ticket"


@pytest.mark.gen_test
async def test_unknown_ticket_is_invalid() -> None:
    """A ticket that was never issued is refused."""
    with pytest.raises(AuthError) as info:
        await authenticator().authenticate(Credentials(ticket="never-issued"))
    assert info.value.reason == "invalid ticket"


@pytest.mark.gen_test
async def test_store_keeps_only_the_ticket_hash() -> None:
    """The ticket text itself is not stored, so a database dump hands out no live tickets."""
    tickets = MemoryTickets()
    auth = Authenticator(hs_settings(), tickets)
    ticket = await auth.issue_ticket(auth.verify(user_token("1")))
    assert list(tickets.saved) == [hashlib.sha256(ticket.encode()).hexdigest()]
    assert ticket not in json.dumps(list(tickets.saved.values()))


@pytest.mark.gen_test
async def test_ticket_expires_within_a_minute_and_never_after_its_token() -> None:
    """A ticket lives at most 60 s, and no longer than the token it was issued for."""
    tickets = MemoryTickets()
    auth = Authenticator(hs_settings(), tickets)
    long_lived = auth.verify(user_token("1"))
    short_lived = replace(long_lived, expires_at=time.time() + 5)
    before = time.time()
    await auth.issue_ticket(long_lived)
    await auth.issue_ticket(short_lived)
    expiries = sorted(expires_at for _, expires_at in tickets.saved.values())
    assert expiries[0] == short_lived.expires_at
    assert before + 59 <= expiries[1] <= time.time() + 60
