"""Settings from environment variables: parsed once, validated, one clear line on bad values.

Each variable is one field of `Settings`, declared with `setting(...)`: its name, parser (type
and bounds), default and meaning. `load_settings` reads them from that declaration, `ENV_VARS`
(which the Kubernetes manifests are checked against) lists them, and README's configuration
table is generated from it (`python -m service.codegen`).
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from service.core.errors import ConfigError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEV_SECRET_FILE = "dev-jwt-secret"
MAX_WRITE_DELAY_MS = 1000  # WRITE_DELAY_MS: beyond a second, events are late, not batched

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A variable's parser: (its name, its stripped non-empty text) → the value, or ConfigError naming it.
Parser = Callable[[str, str], T]


# -- parsers ----------------------------------------------------------------------------------


def text(name: str, raw: str) -> str:
    return raw


def path(name: str, raw: str) -> Path:
    return Path(raw)


def integer(*, minimum: int = 0, maximum: int | None = None) -> Parser[int]:
    """A whole number within [minimum, maximum]."""

    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name}: must be at most {maximum}, got {value}")
        return value

    return parse


def number(*, minimum: float) -> Parser[float]:
    """A finite number of at least `minimum`."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {raw!r}")
        if value < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {raw}")
        return value

    return parse


def boolean(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected 1/0, true/false, yes/no or on/off, got {raw!r}")


def choice(*choices: str) -> Parser[str]:
    """One of `choices`, case-insensitive, as spelled there."""

    def parse(name: str, raw: str) -> str:
        for option in choices:
            if raw.lower() == option.lower():
                return option
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")

    return parse


def names(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list (JWT_ALGORITHMS is checked against the key in `_algorithms`)."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def origins(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated origins, stored lowercased without a trailing slash (`origin_allowed`)."""
    return tuple(part.strip().rstrip("/").lower() for part in raw.split(",") if part.strip())


def networks(name: str, raw: str) -> tuple[Network, ...]:
    found = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            found.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: expected IP addresses or CIDRs (10.0.0.0/8), got {part!r}") from None
    return tuple(found)


def origin_url(name: str, raw: str) -> str:
    """An absolute http(s)/ws(s) URL, kept as its origin plus path without a trailing slash."""
    scheme, sep, rest = raw.partition("://")
    host = rest.split("/", 1)[0]
    if not sep or scheme.lower() not in ("http", "https", "ws", "wss") or not host or any(c in raw for c in "\"'<> "):
        raise ConfigError(f"{name}: expected an absolute http(s):// or ws(s):// URL, got {raw!r}")
    return raw.rstrip("/")


def public_key(name: str, raw: str) -> str:
    """The PEM text itself or a path to a file holding it."""
    if "-----BEGIN" in raw:
        return raw
    try:
        return Path(raw).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read key file {raw!r}: {exc.strerror}") from None


# -- the variables ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """One environment variable: what `setting` declared for a field of `Settings`."""

    name: str
    parse: Parser[Any]
    default: Any
    meaning: str  # README's configuration table
    shown_default: str | None  # README's default column, when the value alone would mislead


def setting(name: str, parse: Parser[T], default: T, meaning: str, *, shown_default: str | None = None) -> T:
    """A field of `Settings` read from the variable `name` (`default` when unset or blank)."""
    variable = Variable(name, parse, default, meaning, shown_default)
    return field(default=default, metadata={"variable": variable})


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with; build it with `load_settings`."""

    host: str = setting("HOST", text, "0.0.0.0", "listen address")
    port: int = setting("PORT", integer(maximum=65535), 5001, "listen port")
    workers: int = setting(
        "WORKERS",
        integer(),
        1,
        "processes sharing the port (SO_REUSEPORT); `0` = one per usable core (the cgroup CPU limit in a container)",
    )
    mongodb_uri: str | None = setting(
        "MONGODB_URI", text, None, "MongoDB replica set URI", shown_default="unset → embedded"
    )
    mongodb_db: str = setting("MONGODB_DB", text, "realtime", "database name")
    mongodb_timeout_ms: int = setting(
        "MONGODB_TIMEOUT_MS",
        integer(minimum=100),
        3000,
        "how long one REST request's MongoDB work may take, retries included (and the server selection / connect "
        "timeout): how fast requests answer 503 in an outage. A keyed change's claim, transaction and commit share it",
    )
    mongodb_max_pool_size: int = setting(
        "MONGODB_MAX_POOL_SIZE",
        integer(minimum=1),
        20,
        "MongoDB connections per process (a `maxPoolSize` in `MONGODB_URI` wins). Bounded so that the requests "
        "queued on them during a stall stay few: with PyMongo's default of 100, each replica's pool filled on the "
        "burst after a stall, and repeated stalls recovered ever more slowly",
    )
    data_dir: Path = setting(
        "DATA_DIR", path, Path("data"), "embedded MongoDB data and the development secret", shown_default="`./data`"
    )
    embedded_sync_on_commit: bool = setting(
        "EMBEDDED_SYNC_ON_COMMIT",
        boolean,
        True,
        "the embedded MongoDB syncs each commit to disk before acknowledging it; `0` saves about 0.5 ms per commit "
        "(0.77 instead of 1.23 ms per insert, measured) but a crash (the service killed, out of memory, power lost) "
        "then loses the last acknowledged writes: 46 of 300 inserts after a SIGKILL",
    )
    embedded_restart_attempts: int = setting(
        "EMBEDDED_RESTART_ATTEMPTS",
        integer(minimum=1),
        20,
        "restarts of a dead or panicked embedded MongoDB (0.5–5 s apart) without a stable minute between them "
        "before the process gives up: `/healthz` 503, then exit 1 (see Embedded database faults)",
    )
    jwt_secret: str | None = setting("JWT_SECRET", text, None, "HMAC secret (HS256)")
    jwt_public_key: str | None = setting(
        "JWT_PUBLIC_KEY", public_key, None, "PEM public key (RS256/ES256/EdDSA), or a path to one"
    )
    jwt_algorithms: tuple[str, ...] = setting(
        "JWT_ALGORITHMS",
        names,
        ("HS256",),
        "allowed algorithms; `none` is always refused",
        shown_default="`HS256` (or the key's)",
    )
    jwt_issuer: str | None = setting("JWT_ISSUER", text, None, "the tokens' `iss`, checked when set")
    jwt_audience: str | None = setting("JWT_AUDIENCE", text, None, "the tokens' `aud`, checked when set")
    dev_mode: bool = setting(
        "DEV_MODE",
        boolean,
        False,
        "generates and keeps a secret in `DATA_DIR`, logs a warning; `DEV_MODE=0` without a key refuses to start",
        shown_default="`1` when no JWT key is set",
    )
    allowed_origins: tuple[str, ...] = setting(
        "ALLOWED_ORIGINS",
        origins,
        (),
        "WebSocket `Origin` check and CORS (comma-separated); same origin means same scheme, host and port",
        shown_default="`*` in dev mode, else same origin only",
    )
    heartbeat_seconds: float = setting(
        "HEARTBEAT_SECONDS",
        number(minimum=0.05),
        15.0,
        "SSE heartbeat comment and WebSocket ping interval (two missed pongs close); also the presence heartbeat "
        "(a killed replica's users leave within 2 of them)",
    )
    presence_grace_seconds: float = setting(
        "PRESENCE_GRACE_SECONDS",
        number(minimum=0.0),
        5.0,
        "a user whose last connection closed is still online this long, so a reconnect (a deploy's 1012 drain to "
        "another replica) is neither a leave nor a join",
    )
    presence: bool = setting(
        "PRESENCE", boolean, True, "`0` turns presence off: no presence writes, `GET /api/presence` answers 404"
    )
    sse_retry_ms: int = setting("SSE_RETRY_MS", integer(), 3000, "`retry:` sent to SSE clients")
    poll_timeout_seconds: float = setting(
        "POLL_TIMEOUT_SECONDS",
        number(minimum=0.05),
        25.0,
        "how long `/poll` waits for an event before answering empty (below common proxy timeouts)",
    )
    history_size: int = setting(
        "HISTORY_SIZE",
        integer(minimum=1),
        10_000,
        "events kept in memory per process for resume (read back from MongoDB at start)",
    )
    history_ttl_seconds: int = setting(
        "HISTORY_TTL_SECONDS",
        integer(minimum=60),
        86_400,
        "events kept in MongoDB (TTL index, retuned at start when changed; the last replica to start sets it for "
        "all; also the embedded oplog's retention)",
    )
    max_connections_per_user: int = setting(
        "MAX_CONNECTIONS_PER_USER",
        integer(minimum=1),
        20,
        "per user, per process, also under concurrent connects (WebSocket 4429, SSE and waiting polls 429)",
    )
    max_pending_bytes: int = setting(
        "MAX_PENDING_BYTES",
        integer(minimum=1024),
        1_048_576,
        "unsent bytes per connection (events and replies alike, checked at each write) before it is closed as a "
        "slow consumer",
    )
    max_message_bytes: int = setting(
        "MAX_MESSAGE_BYTES", integer(minimum=128), 65_536, "largest client message (1009 beyond)"
    )
    drain_seconds: float = setting(
        "DRAIN_SECONDS", number(minimum=0.0), 20.0, "on SIGTERM, window over which connections are closed"
    )
    ws_compression: bool = setting(
        "WS_COMPRESSION",
        boolean,
        False,
        "permessage-deflate, without context takeover (each event is still compressed once for all clients; off "
        "saves the CPU)",
    )
    write_delay_ms: int = setting(
        "WRITE_DELAY_MS",
        integer(maximum=MAX_WRITE_DELAY_MS),
        0,
        f"hold events up to this long (0–{MAX_WRITE_DELAY_MS} ms) to send each client several in one write: less "
        "CPU per event for that much more latency. At `0` an idle service writes each event at once, and events "
        "that arrive during a fan-out still go out together in the next one",
    )
    web_dir: Path | None = setting("WEB_DIR", path, None, "the built dashboard", shown_default="`web/dist`")
    log_level: str = setting(
        "LOG_LEVEL", choice(*LOG_LEVELS), "INFO", "`" + "`, `".join(LOG_LEVELS[:-1]) + f"` or `{LOG_LEVELS[-1]}`"
    )
    log_format: str = setting("LOG_FORMAT", choice(*LOG_FORMATS), "text", "`json` for one JSON object per line")
    multiproc_dir: Path | None = setting(
        "PROMETHEUS_MULTIPROC_DIR",
        path,
        None,
        "where workers share metric values",
        shown_default="unset (a temp dir with `WORKERS>1`)",
    )
    trusted_proxies: tuple[Network, ...] = setting(
        "TRUSTED_PROXIES",
        networks,
        (),
        "IPs/CIDRs (comma-separated) whose `X-Forwarded-For` / `X-Real-Ip` / `X-Forwarded-Proto` are believed; "
        "from anyone else they are ignored",
        shown_default="unset = none",
    )
    head_timeout_seconds: float = setting(
        "HEAD_TIMEOUT_SECONDS",
        number(minimum=0.5),
        10.0,
        "a request head (the first, or the next on a kept-alive connection) must arrive within this; trusted "
        "proxies get 75",
    )
    body_timeout_seconds: float = setting(
        "BODY_TIMEOUT_SECONDS",
        number(minimum=0.5),
        60.0,  # a 1 MiB body at 17 KiB/s; slower is an attack or a dead link
        "a request body must arrive in full within this of its head (a 1 MiB body at 17 KiB/s); slower, the "
        "connection is closed",
    )
    max_pending_per_address: int = setting(
        "MAX_PENDING_PER_ADDRESS",
        integer(minimum=1),
        64,
        "connections one address may hold open without having sent a complete request, head and body; more are "
        "closed at once (trusted proxies exempt)",
    )
    dashboard_service_url: str | None = setting(
        "DASHBOARD_SERVICE_URL",
        origin_url,
        None,
        "another service URL the dashboard may connect to (its CSP `connect-src` and a `<meta>` the page reads)",
        shown_default="unset = the page's own origin",
    )

    def trusted_proxy(self, address: str) -> bool:
        """Whether a peer address is a proxy whose X-Forwarded-For / X-Real-Ip are believed."""
        if not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.trusted_proxies)

    @property
    def verification_key(self) -> str:
        """The key tokens are verified with (HMAC secret or PEM public key)."""
        key = self.jwt_public_key or self.jwt_secret
        if key is None:  # load_settings guarantees one of them
            raise ConfigError("JWT_SECRET: no verification key configured")
        return key

    def origin_allowed(self, origin: str | None, host: str, scheme: str) -> bool:
        """Whether a browser `Origin` may connect; no header means a non-browser client.

        Args:
            origin: the `Origin` header.
            host: the `Host` the request was sent to.
            scheme: the request's scheme (`http`/`https`; from a trusted proxy's
                `X-Forwarded-Proto` when TRUSTED_PROXIES names it).
        """
        if not origin:
            return True
        # Scheme and host are case-insensitive; `_origins` stores the configured ones lowercased.
        if "*" in self.allowed_origins or origin.lower() in self.allowed_origins:
            return True
        # Same origin: scheme, host and port all equal the request's.
        return origin.rstrip("/").lower() == f"{scheme}://{host}".lower()


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (rounded down).

    `WORKERS=0` starts one worker per usable CPU. In a container limited to 1 CPU on a bigger
    node, `os.cpu_count()` is still the node's count (Python 3.11 reads no cgroup limit).
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup)
    if quota is not None:
        count = min(count, int(quota))
    return max(1, count)


def _cgroup_cpu_quota(cgroup: Path) -> float | None:
    """The CPU quota in CPUs: cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`; None if unlimited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for controller in ("cpu", "cpu,cpuacct"):
        try:
            quota_us = int((cgroup / controller / "cpu.cfs_quota_us").read_text())
            period_us = int((cgroup / controller / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _key_algorithm(pem: str) -> str:
    """The natural JWT algorithm for a public key, used when JWT_ALGORITHMS is unset."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise ConfigError("JWT_PUBLIC_KEY: not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")
    raise ConfigError(f"JWT_PUBLIC_KEY: unsupported key type {type(key).__name__}")


def _fits_key(algorithm: str, natural: str) -> bool:
    """Whether a public-key algorithm can use a key whose natural algorithm is `natural`."""
    if natural.startswith("RS"):
        return algorithm[:2] in ("RS", "PS")
    if natural.startswith("ES"):
        return algorithm.startswith("ES")
    return algorithm == natural


def _algorithms(names: tuple[str, ...] | None, public_key: str | None) -> tuple[str, ...]:
    if names is None:
        return (_key_algorithm(public_key),) if public_key else ("HS256",)
    for name in names:
        if name.lower() == "none":
            raise ConfigError("JWT_ALGORITHMS: 'none' is never accepted")
        if name not in HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS:
            raise ConfigError(f"JWT_ALGORITHMS: unknown algorithm {name!r}")
    if not names:
        raise ConfigError("JWT_ALGORITHMS: empty list")
    uses_hmac = any(n in HMAC_ALGORITHMS for n in names)
    uses_public = any(n in PUBLIC_KEY_ALGORITHMS for n in names)
    if uses_hmac and uses_public:
        raise ConfigError("JWT_ALGORITHMS: mixes HMAC and public-key algorithms; pick one family")
    if uses_public and not public_key:
        raise ConfigError("JWT_ALGORITHMS: public-key algorithms need JWT_PUBLIC_KEY")
    if uses_hmac and public_key:
        raise ConfigError("JWT_ALGORITHMS: HMAC algorithms cannot be used with JWT_PUBLIC_KEY")
    if public_key:
        natural = _key_algorithm(public_key)
        for name in names:
            if not _fits_key(name, natural):
                raise ConfigError(f"JWT_ALGORITHMS: {name} cannot verify with the {natural} key in JWT_PUBLIC_KEY")
    return names


def dev_secret(data_dir: Path) -> str:
    """Read, or create once, the development HMAC secret kept in DATA_DIR."""
    path = data_dir / DEV_SECRET_FILE
    try:
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"DATA_DIR: cannot read {path}: {exc.strerror}") from None
    secret = secrets.token_urlsafe(48)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secret + "\n")
    except OSError as exc:
        raise ConfigError(f"DATA_DIR: cannot write {path}: {exc.strerror}") from None
    return secret


def variables() -> tuple[Variable, ...]:
    """Every variable, in `Settings` order."""
    return tuple(f.metadata["variable"] for f in fields(Settings))


ENV_VARS: tuple[str, ...] = tuple(variable.name for variable in variables())


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from the environment.

    Args:
        env: the variables to read; `os.environ` when omitted.

    Raises:
        ConfigError: naming the first variable with a bad value.
    """
    env = os.environ if env is None else env
    declared = {f.name: f.metadata["variable"] for f in fields(Settings)}

    def read(field_name: str) -> Any:
        """The field's value from its variable, None when unset."""
        variable: Variable = declared[field_name]
        raw = _text(env, variable.name)
        return None if raw is None else variable.parse(variable.name, raw)

    # The keys first: they decide DEV_MODE's default, which decides ALLOWED_ORIGINS'.
    secret = env.get("JWT_SECRET") or None  # taken as given, spaces and all
    key = read("jwt_public_key")
    if secret and key:
        raise ConfigError("JWT_SECRET: set either JWT_SECRET or JWT_PUBLIC_KEY, not both")
    dev_mode = read("dev_mode")
    dev_mode = not (secret or key) if dev_mode is None else dev_mode
    if not (secret or key) and not dev_mode:
        raise ConfigError("JWT_SECRET: no JWT_SECRET or JWT_PUBLIC_KEY set and DEV_MODE=0")
    values: dict[str, Any] = {
        "jwt_secret": secret,
        "jwt_public_key": key,
        "jwt_algorithms": _algorithms(read("jwt_algorithms"), key),
        "dev_mode": dev_mode,
    }
    for name, variable in declared.items():
        if name not in values:
            value = read(name)
            values[name] = variable.default if value is None else value
    if values["workers"] == 0:
        values["workers"] = usable_cpus()
    if dev_mode and _text(env, "ALLOWED_ORIGINS") is None:
        values["allowed_origins"] = ("*",)
    settings = Settings(**values)
    if secret is None and key is None:
        # Only once every value is valid: a rejected configuration leaves DATA_DIR untouched.
        settings = replace(settings, jwt_secret=dev_secret(settings.data_dir))
    return settings
