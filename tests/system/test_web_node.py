"""The npm package's root entry in Node 20: importable without React, and it receives events
over long-polling (Node's fetch) and over WebSocket (the `ws` package passed as WebSocketImpl)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest

from harness.clients import Service, wait_bound
from harness.processes import ROOT

NODE_DIR = ROOT / "web" / "test" / "node"

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "web" / "dist" / "index.js").exists(),
    reason="needs node and web/dist (make web)",
)


@needs_node
@pytest.mark.gen_test(timeout=60)
async def test_node_script_imports_the_package_root_and_receives_an_event(service: Service) -> None:
    """web/test/node/receive-one.mjs (package root, no React) prints a published event."""
    await receive_one(service, "receive-one.mjs", b"open")


@needs_node
@pytest.mark.gen_test(timeout=60)
async def test_node_script_receives_an_event_over_websocket_with_the_ws_package(service: Service) -> None:
    """web/test/node/receive-one-websocket.mjs (ws as WebSocketImpl) opens a WebSocket and prints an event."""
    await receive_one(service, "receive-one-websocket.mjs", b"open websocket")


async def receive_one(service: Service, script: str, opened: bytes) -> None:
    """Run the script until it prints `opened`, publish a note, and expect it back as its last line."""
    env = {**os.environ, "REALTIME_URL": service.http, "REALTIME_TOKEN": service.token(sub=4)}
    node = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / script),
        cwd=ROOT / "web",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert node.stdout is not None
        assert (await asyncio.wait_for(node.stdout.readline(), wait_bound(20))).strip() == opened
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
