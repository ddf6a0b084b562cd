"""Packaging: `pip install .` into a fresh virtualenv installs the service (its layers, the client,
the `realtime-service` command) and it serves from there, away from the repository; the code
generators stay out. `pip install ./realtime_client` builds the client alone, which imports
without the service next to it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import venv
import zipfile
from pathlib import Path

from harness.processes import ROOT, wait_until
from service.storage.mongo.embedded import free_port


def _fresh_build(source: Path) -> None:
    """setuptools builds in the project's `build/` and keeps what an older build left there
    (a module since moved would ship again): start from none."""
    shutil.rmtree(source / "build", ignore_errors=True)


def _wheel(source: Path, into: Path) -> Path:
    _fresh_build(source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = into.glob("*.whl")
    return wheel


def _top_level(wheel: Path) -> set[str]:
    return {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_pip_install_dot_serves_from_a_fresh_virtualenv(tmp_path: Path) -> None:
    """A fresh venv gets the service with its dependencies; `realtime-service` serves /healthz from it."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _fresh_build(ROOT)
    subprocess.run([python, "-m", "pip", "install", "-q", str(ROOT)], check=True, capture_output=True, timeout=600)
    where = subprocess.run(
        [python, "-c", "import service, handlers, metrics, realtime_client; print(service.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(env_dir)), where  # the installed copy, not the repository's
    codegen = subprocess.run(
        [python, "-c", "import importlib.util; print(importlib.util.find_spec('service.codegen'))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert codegen == "None"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "PYTHON"))}
    env |= {"PORT": str(port), "HOST": "127.0.0.1", "DATA_DIR": str(tmp_path / "data"), "LOG_LEVEL": "WARNING"}
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        server = subprocess.Popen([env_dir / "bin" / "realtime-service"], cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/healthz") or server.poll() is not None, 60, "healthz")
        assert server.poll() is None, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/openapi.json", timeout=5) as answer:
            assert json.load(answer)["openapi"].startswith("3.")
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0


def test_the_service_wheel_holds_its_layers_and_the_client(tmp_path: Path) -> None:
    """The root wheel holds service, handlers, metrics and realtime_client, and no code generator."""
    wheel = _wheel(ROOT, tmp_path)
    assert _top_level(wheel) == {"service", "handlers", "metrics", "realtime_client"}
    assert not [name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("service/codegen/")]


def test_the_client_wheel_holds_the_client_and_imports_without_the_service(tmp_path: Path) -> None:
    """`pip install ./realtime_client` holds realtime_client only, and it imports on its own."""
    source = tmp_path / "src" / "realtime_client"  # a copy: setuptools builds in the project's folder
    shutil.copytree(ROOT / "realtime_client", source, ignore=shutil.ignore_patterns("__pycache__"))
    wheel = _wheel(source, tmp_path)
    assert _top_level(wheel) == {"realtime_client"}
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib.util, realtime_client;"
        "print(realtime_client.__file__);"
        "print(importlib.util.find_spec('service'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    location, service = out.stdout.split()
    assert location.startswith(str(site)) and service == "None"
