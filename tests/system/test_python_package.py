"""`pip install .` installs the Python client alone: a wheel of realtime_client/ (built as pip does,
with setuptools fetched into an isolated build environment) that imports
without the service's code next to it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from harness.processes import ROOT


def test_wheel_holds_the_client_and_imports_without_the_service(tmp_path: Path) -> None:
    """The wheel from the repository root holds realtime_client only, and it imports on its own."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("realtime_events-*.whl")
    packages = {
        name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist() if not name.startswith("realtime_events-")
    }
    assert packages == {"realtime_client"}
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
