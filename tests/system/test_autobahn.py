"""Autobahn|Testsuite conformance of the service's own WebSocket session, driven by `kosoku`.

The server is `EchoSession` behind `EchoEndpoint`, both defined here (the service has no echo
mode): the same `WebSocketSession`, `WebSocketProtocol`, frames, deflate and socket take-over
as production, through the session's public API, answering each message with itself,
unauthenticated and without the request rate limit (the cases send thousands of messages at once).

`make test` runs `QUICK_CASES` (every section of 1-10 but the large-message and throughput
cases of 9, a few seconds here) and, with compression on, `QUICK_COMPRESSION_CASES` (the
first small-message cases of each 12/13 family, ~1 s); `make conformance` (AUTOBAHN=full)
runs all of 1-10 and, with compression on, all of 12-13 (~5 min). The HTML and JSON reports
land in test-artifacts/autobahn-*/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from metrics.registry import Metrics
from service.app.context import AppContext
from service.core.config import Settings
from service.protocol.frames import Deflate, handshake_response, negotiate_deflate, valid_key
from service.protocol.websocket import WebSocketProtocol
from service.runtime.server import build_context
from service.transports.takeover import take_over
from service.transports.ws import WebSocketSession

ROOT = Path(__file__).resolve().parents[2]
KOSOKU = Path(sys.executable).parent / "kosoku"
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
FULL = os.environ.get("AUTOBAHN") == "full"
# Every case but 9.* (up to 16 MiB messages and 1000-message runs, ~5 of the 6 minutes).
QUICK_CASES = (["-i", "*", "-x", "9.*", "-x", "12.*", "-x", "13.*"], "autobahn-quick")
CASES_1_TO_10 = (["-i", "*", "-x", "12.*", "-x", "13.*"], "autobahn-1-10")
CASES_12_13 = (["-i", "12.*", "-i", "13.*"], "autobahn-12-13")
# Small messages through each compression family: the deflate paths without the long runs.
QUICK_COMPRESSION_CASES = (
    [
        arg
        for case in ("12.1.1", "12.1.2", "12.1.3", "12.2.1", "13.1.1", "13.1.2", "13.1.3", "13.7.1", "13.7.2", "13.7.3")
        for arg in ("-i", case)
    ],
    "autobahn-compression-quick",
)


class EchoSession(WebSocketSession):
    """The service's WebSocket session answering each client message with itself, with no
    request rate limit; close handshake, pings, UTF-8 and frame rules stay the protocol's."""

    def __init__(self, ctx: AppContext, deflate: Deflate | None) -> None:
        super().__init__(ctx, deflate)
        self.protocol = WebSocketProtocol(
            self.write,
            self.write_final,
            max_message_bytes=ctx.settings.max_message_bytes,
            deflate=deflate is not None,
            limit_requests=False,
        )

    def on_data(self, opcode: int, payload: bytes) -> None:
        self.send_data(payload, opcode)


class EchoEndpoint(RequestHandler):
    """The upgrade as `handlers.ws_endpoint.WebSocketEndpoint` answers it, without authentication."""

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def get(self) -> None:
        key = self.request.headers.get("Sec-WebSocket-Key", "")
        if not valid_key(key):
            raise HTTPError(400)
        extensions = self.request.headers.get("Sec-WebSocket-Extensions")
        deflate = negotiate_deflate(extensions) if self.ctx.settings.ws_compression else None
        self.set_status(101)
        sock, leftover = take_over(self)
        session = EchoSession(self.ctx, deflate)
        await session.attach(sock)
        session.write(handshake_response(key, deflate.response() if deflate else None))
        session.begin_reading(leftover)


def echo_settings(*, compression: bool) -> Settings:
    """Limits that let the cases' largest messages (16 MiB) through and back."""
    return replace(
        Settings(),
        host="127.0.0.1",
        port=0,
        jwt_secret="unused-the-echo-mode-authenticates-no-one-0123456789",
        max_message_bytes=64 * 1024 * 1024,
        max_pending_bytes=256 * 1024 * 1024,
        ws_compression=compression,
    )


async def run_kosoku(selection: list[str], name: str, *, compression: bool) -> dict[str, tuple[str, str]]:
    """Serve the echo session on a free port, run the selected cases, and read their verdicts."""
    ctx = build_context(echo_settings(compression=compression), "mongodb://127.0.0.1:9/", Metrics())
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/", EchoEndpoint, {"ctx": ctx})]))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    outdir = ROOT / "test-artifacts" / name
    shutil.rmtree(outdir, ignore_errors=True)
    command = [str(KOSOKU), "-m", "fuzzingclient", "-p", "4", "-o", str(outdir), *selection, f"127.0.0.1:{port}"]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 900)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        server.stop()
        await server.close_all_connections()
        await ctx.hub.streams_closed()
        await ctx.store.close()
    # kosoku exits non-zero when a case fails; the verdicts below say which.
    verdicts = {}
    for report in outdir.rglob("*.json"):
        data = json.loads(report.read_text())
        if isinstance(data, dict) and "behavior" in data and "id" in data:
            verdicts[str(data["id"])] = (str(data["behavior"]), str(data["behaviorClose"]))
    assert verdicts, f"kosoku wrote no case reports under {outdir}: {stderr.decode(errors='replace')[-2000:]}"
    summary = Counter(behavior for behavior, _ in verdicts.values())
    print(f"\n{name}: {len(verdicts)} cases, {dict(summary)}")  # the summary the README quotes
    return verdicts


def failures(verdicts: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    return {case: v for case, v in verdicts.items() if v[0] not in PASSING or v[1] not in PASSING}


@pytest.mark.timeout(1000)
@pytest.mark.gen_test(timeout=960)
async def test_autobahn_cases_pass_against_the_real_session() -> None:
    """Every case is OK, NON-STRICT or INFORMATIONAL, for the behaviour and for the close."""
    verdicts = await run_kosoku(*(CASES_1_TO_10 if FULL else QUICK_CASES), compression=False)
    assert failures(verdicts) == {}


@pytest.mark.timeout(1000)
@pytest.mark.gen_test(timeout=960)
async def test_autobahn_compression_cases_pass_with_ws_compression() -> None:
    """With WS_COMPRESSION=1, the permessage-deflate cases 12-13 pass too."""
    verdicts = await run_kosoku(*(CASES_12_13 if FULL else QUICK_COMPRESSION_CASES), compression=True)
    assert failures(verdicts) == {}
