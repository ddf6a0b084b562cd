"""Settings from the environment: defaults, one clear error per bad value, keys, dev mode, origins."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from harness.clients import wait_bound
from service.codegen.__main__ import GENERATED, SECTIONS, section, stale
from service.codegen.settings import settings_table
from service.core.config import DEV_SECRET_FILE, ENV_VARS, Settings, load_settings, usable_cpus, variables
from service.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SECRET = "config-test-secret-that-is-long-enough-0123456789"
CODEGEN_OUTPUTS = (*GENERATED, *SECTIONS)


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def test_defaults_with_a_secret(tmp_path: Path) -> None:
    """With only JWT_SECRET set, every other setting has its documented default."""
    settings = load_settings({"JWT_SECRET": SECRET, "DATA_DIR": str(tmp_path)})
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 5001, 1)
    assert (settings.mongodb_uri, settings.mongodb_db) == (None, "realtime")
    assert (settings.jwt_secret, settings.jwt_algorithms) == (SECRET, ("HS256",))
    assert (settings.jwt_issuer, settings.jwt_audience) == (None, None)
    assert settings.dev_mode is False and settings.allowed_origins == ()
    assert (settings.heartbeat_seconds, settings.sse_retry_ms) == (15.0, 3000)
    assert (settings.history_size, settings.history_ttl_seconds) == (10_000, 86_400)
    assert settings.max_connections_per_user == 20
    assert (settings.max_pending_bytes, settings.max_message_bytes) == (1_048_576, 65_536)
    assert settings.drain_seconds == 20.0
    assert (settings.log_level, settings.log_format) == ("INFO", "text")
    assert list(tmp_path.iterdir()) == []


def test_values_are_read_and_trimmed(tmp_path: Path) -> None:
    """Set values are parsed, surrounding blanks ignored, choices matched in any case."""
    settings = load_settings(
        {
            "JWT_SECRET": SECRET,
            "PORT": " 8080 ",
            "HOST": "127.0.0.1",
            "HEARTBEAT_SECONDS": "2.5",
            "LOG_FORMAT": "JSON",
            "LOG_LEVEL": "debug",
            "JWT_ALGORITHMS": "HS512, HS256",
            "ALLOWED_ORIGINS": "https://a.example/, https://b.example",
            "DATA_DIR": str(tmp_path),
        }
    )
    assert (settings.port, settings.host, settings.heartbeat_seconds) == (8080, "127.0.0.1", 2.5)
    assert (settings.log_format, settings.log_level) == ("json", "DEBUG")
    assert settings.jwt_algorithms == ("HS512", "HS256")
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_workers_zero_means_one_per_usable_core() -> None:
    """WORKERS=0 starts one process per CPU this process may use (affinity and cgroup quota)."""
    assert load_settings({"JWT_SECRET": SECRET, "WORKERS": "0"}).workers == usable_cpus()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("WORKERS", "-1"),
        ("WORKERS", "two"),
        ("HEARTBEAT_SECONDS", "x"),
        ("HEARTBEAT_SECONDS", "0"),
        ("HEARTBEAT_SECONDS", "nan"),
        ("HEARTBEAT_SECONDS", "inf"),
        ("DRAIN_SECONDS", "inf"),
        ("SSE_RETRY_MS", "3s"),
        ("HISTORY_SIZE", "0"),
        ("MAX_MESSAGE_BYTES", "10"),
        ("JWT_ALGORITHMS", "none"),
        ("JWT_ALGORITHMS", "HS256,None"),
        ("JWT_ALGORITHMS", "XS256"),
        ("JWT_ALGORITHMS", "HS256,RS256"),
        ("JWT_ALGORITHMS", "RS256"),
        ("JWT_ALGORITHMS", " , "),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("DEV_MODE", "maybe"),
        ("WS_COMPRESSION", "2"),
        ("WRITE_DELAY_MS", "-1"),
        ("WRITE_DELAY_MS", "1001"),
        ("WRITE_DELAY_MS", "5ms"),
    ],
)
def test_bad_value_names_its_variable(tmp_path: Path, name: str, value: str) -> None:
    """Each bad value raises ConfigError whose message starts with the variable's name."""
    with pytest.raises(ConfigError) as info:
        load_settings({"JWT_SECRET": SECRET, "DATA_DIR": str(tmp_path), name: value})
    assert str(info.value).startswith(f"{name}: ")


def test_unreadable_public_key_path_names_jwt_public_key(tmp_path: Path) -> None:
    """A JWT_PUBLIC_KEY path that cannot be read stops the service, naming the variable and path."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as info:
        load_settings({"JWT_PUBLIC_KEY": str(missing)})
    assert str(info.value).startswith("JWT_PUBLIC_KEY: ") and str(missing) in str(info.value)


@pytest.mark.parametrize("algorithms", [None, "RS256"])
def test_public_key_file_that_is_not_a_pem_key_is_refused(tmp_path: Path, algorithms: str | None) -> None:
    """A readable file that holds no PEM public key is refused, with or without JWT_ALGORITHMS."""
    path = tmp_path / "key.pem"
    path.write_text("this is not a key\n")
    env = {"JWT_PUBLIC_KEY": str(path)} | ({"JWT_ALGORITHMS": algorithms} if algorithms else {})
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith("JWT_PUBLIC_KEY: ")


def test_algorithm_of_another_key_family_is_refused(rsa_pem: str) -> None:
    """JWT_ALGORITHMS=ES256 with an RSA key could verify nothing, so it stops the service."""
    with pytest.raises(ConfigError) as info:
        load_settings({"JWT_PUBLIC_KEY": rsa_pem, "JWT_ALGORITHMS": "ES256"})
    assert str(info.value).startswith("JWT_ALGORITHMS: ")


def test_secret_and_public_key_together_are_refused(rsa_pem: str) -> None:
    """Only one verification key may be configured."""
    with pytest.raises(ConfigError) as info:
        load_settings({"JWT_SECRET": SECRET, "JWT_PUBLIC_KEY": rsa_pem})
    assert str(info.value).startswith("JWT_SECRET: ")


@pytest.mark.parametrize(
    ("make_key", "algorithm"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ],
    ids=["rsa", "p256", "p384", "ed25519"],
)
def test_public_key_picks_its_algorithm(tmp_path: Path, make_key: Callable[[], PrivateKey], algorithm: str) -> None:
    """Without JWT_ALGORITHMS, the key's type decides the algorithm; PEM text and a path both work."""
    pem = public_pem(make_key())
    path = tmp_path / "key.pem"
    path.write_text(pem)
    for value in (pem, str(path)):
        settings = load_settings({"JWT_PUBLIC_KEY": value, "DATA_DIR": str(tmp_path)})
        assert settings.jwt_algorithms == (algorithm,)
        assert (settings.jwt_public_key or "").strip() == pem.strip() and settings.jwt_secret is None
        assert settings.dev_mode is False


def test_rsa_key_accepts_pss_algorithms(rsa_pem: str) -> None:
    """RS* and PS* algorithms both verify with an RSA key."""
    settings = load_settings({"JWT_PUBLIC_KEY": rsa_pem, "JWT_ALGORITHMS": "PS256,RS512"})
    assert settings.jwt_algorithms == ("PS256", "RS512")


def test_dev_mode_creates_a_private_secret_and_reuses_it(tmp_path: Path) -> None:
    """Without a key, dev mode writes a 0600 secret into DATA_DIR and the next start reuses it."""
    data_dir = tmp_path / "data"
    first = load_settings({"DATA_DIR": str(data_dir)})
    path = data_dir / DEV_SECRET_FILE
    assert first.dev_mode is True
    assert first.jwt_secret is not None and len(first.jwt_secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.jwt_secret
    assert load_settings({"DATA_DIR": str(data_dir)}).jwt_secret == first.jwt_secret


def test_dev_mode_replaces_a_too_short_secret_file(tmp_path: Path) -> None:
    """A truncated secret file is not used as an HMAC key; a new secret replaces it."""
    (tmp_path / DEV_SECRET_FILE).write_text("short\n")
    secret = load_settings({"DATA_DIR": str(tmp_path)}).jwt_secret
    assert secret is not None and len(secret) >= 32
    assert (tmp_path / DEV_SECRET_FILE).read_text().strip() == secret


def test_dev_mode_off_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    """DEV_MODE=0 and no JWT key: the service will not run with an invented secret."""
    with pytest.raises(ConfigError) as info:
        load_settings({"DEV_MODE": "0", "DATA_DIR": str(tmp_path)})
    assert str(info.value).startswith("JWT_SECRET: ") and "DEV_MODE=0" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_rejected_configuration_leaves_data_dir_untouched(tmp_path: Path) -> None:
    """A bad value elsewhere stops the start before any dev secret is written."""
    with pytest.raises(ConfigError):
        load_settings({"DATA_DIR": str(tmp_path), "PORT": "abc"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("env", "origins"),
    [
        ({}, ("*",)),
        ({"JWT_SECRET": SECRET}, ()),
        ({"JWT_SECRET": SECRET, "DEV_MODE": "1"}, ("*",)),
        ({"ALLOWED_ORIGINS": "https://app.example"}, ("https://app.example",)),
    ],
    ids=["dev-mode", "production", "dev-mode-with-secret", "explicit"],
)
def test_allowed_origins_default_depends_on_dev_mode(
    tmp_path: Path, env: dict[str, str], origins: tuple[str, ...]
) -> None:
    """Dev mode allows every origin; otherwise only the same origin unless ALLOWED_ORIGINS says more."""
    assert load_settings({"DATA_DIR": str(tmp_path), **env}).allowed_origins == origins


@pytest.mark.parametrize(
    ("allowed", "origin", "served_at", "expected"),
    [
        ((), None, "https://svc.example", True),
        ((), "", "https://svc.example", True),
        ((), "https://svc.example", "https://svc.example", True),
        ((), "http://svc.example:5001", "http://SVC.example:5001", True),
        ((), "http://svc.example:5002", "http://svc.example:5001", False),
        ((), "https://evil.example", "https://svc.example", False),
        ((), "https://svc.example.evil.example", "https://svc.example", False),
        ((), "null", "https://svc.example", False),
        (("https://app.example",), "https://app.example", "https://svc.example", True),
        (("https://app.example",), "https://other.example", "https://svc.example", False),
        (("*",), "https://anything.example", "https://svc.example", True),
        ((), "http://svc.example", "https://svc.example", False),
    ],
)
def test_origin_allowed_by_list_or_same_origin(
    allowed: tuple[str, ...], origin: str | None, served_at: str, expected: bool
) -> None:
    """No Origin (non-browser), a listed origin, `*`, or the request's own scheme and host are allowed."""
    scheme, _, host = served_at.partition("://")
    assert Settings(allowed_origins=allowed).origin_allowed(origin, host, scheme) is expected


def test_configured_origins_match_in_any_case(tmp_path: Path) -> None:
    """ALLOWED_ORIGINS written with capitals or a trailing slash still matches the browser's Origin."""
    settings = load_settings(
        {"JWT_SECRET": SECRET, "ALLOWED_ORIGINS": "HTTPS://App.Example/", "DATA_DIR": str(tmp_path)}
    )
    assert settings.origin_allowed("https://app.example", "svc.example", "https")


def test_every_variable_read_is_listed_in_env_vars() -> None:
    """ENV_VARS (checked against the Kubernetes manifests) names every variable load_settings reads."""
    seen: list[str] = []

    class Recording(dict[str, str]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
            seen.append(key)
            return super().get(key, default)

    load_settings(Recording(JWT_SECRET=SECRET))
    assert seen and set(seen) <= set(ENV_VARS)


def test_module_with_bad_port_exits_2_with_one_line(tmp_path: Path) -> None:
    """`python -m service` with PORT=abc exits 2 at once with one stderr line naming PORT."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(DATA_DIR=str(tmp_path), PORT="abc")
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=wait_bound(60),
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PORT" in lines[0] and "'abc'" in lines[0]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_each_variable_is_declared_once_with_its_field() -> None:
    """One `setting(...)` per field: ENV_VARS is the declarations' names, none twice, and an unset
    environment gives each field its declared default."""
    declared = variables()
    assert ENV_VARS == tuple(v.name for v in declared)
    assert len(set(ENV_VARS)) == len(ENV_VARS) == len(fields(Settings))
    defaults = Settings()
    for f, variable in zip(fields(Settings), declared, strict=True):
        assert getattr(defaults, f.name) == variable.default, variable.name


def test_readme_configuration_table_is_generated_and_checked(tmp_path: Path) -> None:
    """README's table between the settings markers is `settings_table()`; an edit by hand is stale."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert section(readme, "settings", settings_table()) == readme
    for name in CODEGEN_OUTPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text(encoding="utf-8"), encoding="utf-8")
    assert stale(tmp_path) == []
    edited = readme.replace("| `PORT` | `5001` |", "| `PORT` | `8080` |")
    assert edited != readme
    (tmp_path / "README.md").write_text(edited, encoding="utf-8")
    assert stale(tmp_path) == ["README.md"]
