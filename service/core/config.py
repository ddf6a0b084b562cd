"""Settings from environment variables: parsed once, validated, one clear line on bad values.

Every variable the service reads is listed in `ENV_VARS`; the Kubernetes manifests are
checked against that list.
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from service.core.errors import ConfigError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEV_SECRET_FILE = "dev-jwt-secret"
MAX_WRITE_DELAY_MS = 1000  # WRITE_DELAY_MS: beyond a second, events are late, not batched

ENV_VARS: tuple[str, ...] = (
    "HOST",
    "PORT",
    "WORKERS",
    "MONGODB_URI",
    "MONGODB_DB",
    "MONGODB_TIMEOUT_MS",
    "MONGODB_MAX_POOL_SIZE",
    "DATA_DIR",
    "EMBEDDED_SYNC_ON_COMMIT",
    "EMBEDDED_RESTART_ATTEMPTS",
    "JWT_SECRET",
    "JWT_PUBLIC_KEY",
    "JWT_ALGORITHMS",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "DEV_MODE",
    "ALLOWED_ORIGINS",
    "HEARTBEAT_SECONDS",
    "PRESENCE_GRACE_SECONDS",
    "PRESENCE",
    "SSE_RETRY_MS",
    "POLL_TIMEOUT_SECONDS",
    "HISTORY_SIZE",
    "HISTORY_TTL_SECONDS",
    "MAX_CONNECTIONS_PER_USER",
    "MAX_PENDING_BYTES",
    "MAX_MESSAGE_BYTES",
    "DRAIN_SECONDS",
    "WS_COMPRESSION",
    "WRITE_DELAY_MS",
    "WEB_DIR",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "TRUSTED_PROXIES",
    "HEAD_TIMEOUT_SECONDS",
    "BODY_TIMEOUT_SECONDS",
    "MAX_PENDING_PER_ADDRESS",
    "DASHBOARD_SERVICE_URL",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with; build it with `load_settings`."""

    host: str = "0.0.0.0"
    port: int = 5001
    workers: int = 1
    mongodb_uri: str | None = None
    mongodb_db: str = "realtime"
    mongodb_timeout_ms: int = 3000
    mongodb_max_pool_size: int = 20  # connections per process; the URI's maxPoolSize wins
    data_dir: Path = Path("data")
    embedded_sync_on_commit: bool = True
    embedded_restart_attempts: int = 20
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    dev_mode: bool = False
    allowed_origins: tuple[str, ...] = ()
    heartbeat_seconds: float = 15.0
    presence_grace_seconds: float = 5.0
    presence: bool = True
    sse_retry_ms: int = 3000
    poll_timeout_seconds: float = 25.0
    history_size: int = 10_000
    history_ttl_seconds: int = 86_400
    max_connections_per_user: int = 20
    max_pending_bytes: int = 1_048_576
    max_message_bytes: int = 65_536
    drain_seconds: float = 20.0
    ws_compression: bool = False
    write_delay_ms: int = 0
    web_dir: Path | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    multiproc_dir: Path | None = None
    trusted_proxies: tuple[Network, ...] = ()
    head_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0  # a 1 MiB body at 17 KiB/s; slower is an attack or a dead link
    max_pending_per_address: int = 64
    dashboard_service_url: str | None = None

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


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {raw!r}")
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected 1/0, true/false, yes/no or on/off, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _text(env, name)
    if raw is None:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")


def _public_key(raw: str) -> str:
    """Accept the PEM text itself or a path to a file holding it."""
    if "-----BEGIN" in raw:
        return raw
    try:
        return Path(raw).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY: cannot read key file {raw!r}: {exc.strerror}") from None


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


def _algorithms(env: Mapping[str, str], secret: str | None, public_key: str | None) -> tuple[str, ...]:
    raw = _text(env, "JWT_ALGORITHMS")
    if raw is None:
        return (_key_algorithm(public_key),) if public_key else ("HS256",)
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
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


def _origins(env: Mapping[str, str], dev_mode: bool) -> tuple[str, ...]:
    raw = _text(env, "ALLOWED_ORIGINS")
    if raw is None:
        return ("*",) if dev_mode else ()
    return tuple(part.strip().rstrip("/").lower() for part in raw.split(",") if part.strip())


def _networks(env: Mapping[str, str], name: str) -> tuple[Network, ...]:
    raw = _text(env, name)
    if raw is None:
        return ()
    networks = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: expected IP addresses or CIDRs (10.0.0.0/8), got {part!r}") from None
    return tuple(networks)


def _origin_url(env: Mapping[str, str], name: str) -> str | None:
    """An absolute http(s)/ws(s) URL, kept as its origin plus path without a trailing slash."""
    raw = _text(env, name)
    if raw is None:
        return None
    scheme, sep, rest = raw.partition("://")
    host = rest.split("/", 1)[0]
    if not sep or scheme.lower() not in ("http", "https", "ws", "wss") or not host or any(c in raw for c in "\"'<> "):
        raise ConfigError(f"{name}: expected an absolute http(s):// or ws(s):// URL, got {raw!r}")
    return raw.rstrip("/")


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


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from the environment.

    Args:
        env: the variables to read; `os.environ` when omitted.

    Raises:
        ConfigError: naming the first variable with a bad value.
    """
    env = os.environ if env is None else env
    secret = env.get("JWT_SECRET")
    secret = secret if secret else None
    raw_key = _text(env, "JWT_PUBLIC_KEY")
    public_key = _public_key(raw_key) if raw_key else None
    if secret and public_key:
        raise ConfigError("JWT_SECRET: set either JWT_SECRET or JWT_PUBLIC_KEY, not both")
    dev_mode = _bool(env, "DEV_MODE", default=not (secret or public_key))
    data_dir = Path(_text(env, "DATA_DIR") or "data")
    if not (secret or public_key) and not dev_mode:
        raise ConfigError("JWT_SECRET: no JWT_SECRET or JWT_PUBLIC_KEY set and DEV_MODE=0")
    algorithms = _algorithms(env, secret, public_key)
    port = _int(env, "PORT", 5001)
    if port > 65535:
        raise ConfigError(f"PORT: must be at most 65535, got {port}")
    heartbeat = _float(env, "HEARTBEAT_SECONDS", 15.0, minimum=0.05)
    write_delay_ms = _int(env, "WRITE_DELAY_MS", 0)
    if write_delay_ms > MAX_WRITE_DELAY_MS:
        raise ConfigError(f"WRITE_DELAY_MS: must be at most {MAX_WRITE_DELAY_MS}, got {write_delay_ms}")
    web_dir = _text(env, "WEB_DIR")
    multiproc = _text(env, "PROMETHEUS_MULTIPROC_DIR")
    settings = Settings(
        host=_text(env, "HOST") or "0.0.0.0",
        port=port,
        workers=_int(env, "WORKERS", 1) or usable_cpus(),
        mongodb_uri=_text(env, "MONGODB_URI"),
        mongodb_db=_text(env, "MONGODB_DB") or "realtime",
        mongodb_timeout_ms=_int(env, "MONGODB_TIMEOUT_MS", 3000, minimum=100),
        mongodb_max_pool_size=_int(env, "MONGODB_MAX_POOL_SIZE", 20, minimum=1),
        data_dir=data_dir,
        embedded_sync_on_commit=_bool(env, "EMBEDDED_SYNC_ON_COMMIT", True),
        embedded_restart_attempts=_int(env, "EMBEDDED_RESTART_ATTEMPTS", 20, minimum=1),
        jwt_secret=secret,
        jwt_public_key=public_key,
        jwt_algorithms=algorithms,
        jwt_issuer=_text(env, "JWT_ISSUER"),
        jwt_audience=_text(env, "JWT_AUDIENCE"),
        dev_mode=dev_mode,
        allowed_origins=_origins(env, dev_mode),
        heartbeat_seconds=heartbeat,
        presence_grace_seconds=_float(env, "PRESENCE_GRACE_SECONDS", 5.0, minimum=0.0),
        presence=_bool(env, "PRESENCE", True),
        sse_retry_ms=_int(env, "SSE_RETRY_MS", 3000),
        poll_timeout_seconds=_float(env, "POLL_TIMEOUT_SECONDS", 25.0, minimum=0.05),
        history_size=_int(env, "HISTORY_SIZE", 10_000, minimum=1),
        history_ttl_seconds=_int(env, "HISTORY_TTL_SECONDS", 86_400, minimum=60),
        max_connections_per_user=_int(env, "MAX_CONNECTIONS_PER_USER", 20, minimum=1),
        max_pending_bytes=_int(env, "MAX_PENDING_BYTES", 1_048_576, minimum=1024),
        max_message_bytes=_int(env, "MAX_MESSAGE_BYTES", 65_536, minimum=128),
        drain_seconds=_float(env, "DRAIN_SECONDS", 20.0, minimum=0.0),
        ws_compression=_bool(env, "WS_COMPRESSION", False),
        write_delay_ms=write_delay_ms,
        web_dir=Path(web_dir) if web_dir else None,
        log_level=_choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS),
        log_format=_choice(env, "LOG_FORMAT", "text", LOG_FORMATS),
        multiproc_dir=Path(multiproc) if multiproc else None,
        trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
        head_timeout_seconds=_float(env, "HEAD_TIMEOUT_SECONDS", 10.0, minimum=0.5),
        body_timeout_seconds=_float(env, "BODY_TIMEOUT_SECONDS", 60.0, minimum=0.5),
        max_pending_per_address=_int(env, "MAX_PENDING_PER_ADDRESS", 64, minimum=1),
        dashboard_service_url=_origin_url(env, "DASHBOARD_SERVICE_URL"),
    )
    if secret is None and public_key is None:
        # Only once every value is valid: a rejected configuration leaves DATA_DIR untouched.
        settings = replace(settings, jwt_secret=dev_secret(data_dir))
    return settings
