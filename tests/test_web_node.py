"""The npm package's root entry in Node 20: importable without React, and it receives events."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest

from harness.clients import Service, wait_bound
from harness.processes import ROOT

SCRIPT = ROOT / "web" / "test" / "node" / "receive-one.mjs"


@pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "web" / "dist" / "index.js").exists(),
    reason="needs node and web/dist (make web)",
)
@pytest.mark.gen_test(timeout=60)
async def test_node_script_imports_the_package_root_and_receives_an_event(service: Service) -> None:
    """web/test/node/receive-one.mjs (package root, no React) prints a published event."""
    env = {**os.environ, "REALTIME_URL": service.http, "REALTIME_TOKEN": service.token(sub=4)}
    node = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), cwd=ROOT / "web", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert node.stdout is not None
        assert (await asyncio.wait_for(node.stdout.readline(), wait_bound(20))).strip() == b"open"
        publisher = service.token(sub=1, roles=("publisher",))
        answer = await service.request("POST", "/api/events", {"type": "note", "text": "مرحبا"}, token=publisher)
        assert answer.code == 202
        out, err = await asyncio.wait_for(node.communicate(), wait_bound(30))
        event = json.loads(out)
        assert (event["type"], event["text"]) == ("note", "مرحبا"), err
        assert node.returncode == 0
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
