"""An operation-based generator (openapi-typescript) on the service's OpenAPI document: the types
it generates check a small client that uses them by operationId (tests/openapi-gen/uses.ts).

openapi-typescript needs TypeScript 5 while web/ is on 7, so it lives in its own package,
tests/openapi-gen (`make openapi-gen` runs its `npm ci`; `make test` does that first).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from handlers.openapi_document import openapi_document
from harness.processes import ROOT

GEN = ROOT / "tests" / "openapi-gen"
BIN = GEN / "node_modules" / ".bin"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")


def generate_and_check(document: dict[str, Any], work: Path) -> subprocess.CompletedProcess[str]:
    """Write the document, generate schema.d.ts from it next to uses.ts, run tsc; tsc's result."""
    assert (BIN / "openapi-typescript").exists(), f"{GEN}/node_modules is missing: run `make openapi-gen`"
    for name in ("uses.ts", "tsconfig.json"):
        shutil.copy(GEN / name, work / name)
    (work / "openapi.json").write_text(json.dumps(document), encoding="utf-8")
    generated = subprocess.run(
        [str(BIN / "openapi-typescript"), "openapi.json", "--output", "schema.d.ts"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    return subprocess.run([str(BIN / "tsc"), "-p", "."], cwd=work, capture_output=True, text=True, timeout=60)


def test_generated_operation_types_check_a_client_that_uses_them(tmp_path: Path) -> None:
    """openapi-typescript's `operations` from openapi_document() type-check uses.ts."""
    checked = generate_and_check(openapi_document(), tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_renamed_operation_id_fails_the_check(tmp_path: Path) -> None:
    """With createTask's operationId changed, tsc rejects uses.ts: the check guards the ids."""
    document = openapi_document()
    document["paths"]["/api/tasks"]["post"]["operationId"] = "addTask"
    checked = generate_and_check(document, tmp_path)
    assert checked.returncode != 0
    assert "'createTask'" in checked.stdout, checked.stdout
