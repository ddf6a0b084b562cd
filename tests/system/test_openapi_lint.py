"""`/api/openapi.json` passes `redocly lint` with its recommended rules (web/'s devDependency)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from handlers.openapi_document import openapi_document
from harness.processes import ROOT

REDOCLY = ROOT / "web" / "node_modules" / ".bin" / "redocly"


@pytest.mark.skipif(not REDOCLY.exists(), reason="web/node_modules missing: run `make web` (npm ci)")
def test_openapi_document_is_redocly_lint_clean(tmp_path: Path) -> None:
    """No error and no warning under redocly's recommended rules (one documented exception: /ws's 101)."""
    (tmp_path / "openapi.json").write_text(json.dumps(openapi_document()), encoding="utf-8")
    shutil.copy(ROOT / "handlers" / "openapi.lint-ignore.yaml", tmp_path / ".redocly.lint-ignore.yaml")
    result = subprocess.run(
        [str(REDOCLY), "lint", "--format", "json", "openapi.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "REDOCLY_TELEMETRY": "off",
            "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true",
        },
    )
    report = json.loads(result.stdout)
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 1}, result.stdout
    assert result.returncode == 0


def test_every_operation_has_an_id_and_security() -> None:
    """Operation-based generators need an operationId per operation; every path states its security."""
    document = openapi_document()
    operations = [op for path in document["paths"].values() for op in path.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)) == 21
    assert all("security" in op for op in operations)
    assert document["servers"] and document["info"]["license"]["identifier"] == "Apache-2.0"
