"""Schemathesis against the service's own OpenAPI document: no 500s, no schema violations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import SECRET, ServiceProcess, as_service

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "unsupported_method",
    ]
)


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_error_or_schema_violation(tmp_path: Path) -> None:
    """Generated requests for every REST operation get documented statuses and bodies, never a 500."""
    process = ServiceProcess(tmp_path, {"JWT_SECRET": SECRET, "DEV_MODE": "0", "LOG_LEVEL": "WARNING"}).start()
    try:
        token = as_service(process).token(sub=1, name="مدير", roles=("user", "publisher", "admin"))
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"), "run", process.url + "/api/openapi.json",
                "--header", f"Authorization: Bearer {token}",
                "--checks", CHECKS,
                "--max-examples", "20",
                "--seed", "20261125",
                "--exclude-path-regex", "^/(ws|events|poll)$",
                "--request-timeout", "10",
                "--max-time", "30",
            ],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        summary = result.stdout[-4000:]
        assert result.returncode == 0, summary
        assert "Tested:" in summary
    finally:
        process.stop()
