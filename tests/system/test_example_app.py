"""examples/vite-react, installed from web/'s packed tarball, in headless Chromium.

The app is built with `vite build` and served by `vite preview` on its own port; the service
runs on another port, so REST and WebSocket are cross-origin, as in the product note's setup
(`VITE_WS_URL`, DEV_MODE or ALLOWED_ORIGINS). `make test-example` installs and builds it first.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Request, expect

from harness.processes import SECRET, ServiceProcess, as_service, wait_until
from service.storage.mongo.embedded import free_port
from tests.browser import CHROMIUM, STATUS_LOG_SCRIPT, chromium, create_task, ms, screenshot, write_artifact

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vite-react"
VITE = EXAMPLE / "node_modules" / ".bin" / "vite"
INSTALLED = EXAMPLE / "node_modules" / "@realtime-tasks" / "web" / "package.json"
ME = {"sub": 1, "name": "محمد حسن"}
OTHER: dict[str, Any] = {"sub": 2, "name": "سارة"}
# Restarts per run; EXAMPLE_RESTARTS=20 for reconnect figures (test-artifacts/example-reconnect-timings.json).
RESTARTS = int(os.environ.get("EXAMPLE_RESTARTS", "3"))

# The service's port is fixed for the module because the app is built with it (VITE_WS_URL).
SERVICE_PORT = free_port()
PREVIEW_PORT = free_port()
PREVIEW_ORIGIN = f"http://127.0.0.1:{PREVIEW_PORT}"

CONFIGS = {
    # `make run` on a laptop: dev mode allows every origin.
    "dev-mode": {"DEV_MODE": "1"},
    # Production: only the app's origin may open streams and call the API.
    "allowed-origins": {"DEV_MODE": "0", "ALLOWED_ORIGINS": PREVIEW_ORIGIN},
}


def service_env(mongo_uri: str, database: str, config: str) -> dict[str, str]:
    return {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DB": database,
        "JWT_SECRET": SECRET,
        "DRAIN_SECONDS": "0",
        **CONFIGS[config],
    }


@pytest.fixture(scope="module")
def preview(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example built against the service's port and served by `vite preview`; its origin."""
    assert INSTALLED.is_file(), f"{INSTALLED} is missing: run `make test-example` (packs web/ and installs it)"
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run `make system-deps`"
    out = tmp_path_factory.mktemp("example") / "dist"
    env = {**os.environ, "VITE_WS_URL": f"ws://127.0.0.1:{SERVICE_PORT}"}
    subprocess.run(
        [str(VITE), "build", "--outDir", str(out), "--emptyOutDir", "--logLevel", "warn", "--bypass-lock"],
        cwd=EXAMPLE,
        env=env,
        check=True,
        timeout=120,
    )
    log = open(out.parent / "preview.log", "wb")
    server = subprocess.Popen(
        [
            str(VITE),
            "preview",
            "--outDir",
            str(out),
            "--host",
            "127.0.0.1",
            "--strictPort",
            "--port",
            str(PREVIEW_PORT),
            # Vite 8 refuses a second build or preview of one project while another runs, and
            # pytest-xdist may set this module up on both workers (CI, 2026-12-07): each has its
            # own outDir and port, so the lock guards nothing here.
            "--bypass-lock",
        ],
        cwd=EXAMPLE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: answers(PREVIEW_ORIGIN + "/"), 30, f"vite preview on {PREVIEW_PORT}")
        yield PREVIEW_ORIGIN
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def context(tmp_path: Path) -> Iterator[BrowserContext]:
    with chromium(tmp_path / "profile") as browser_context:
        yield browser_context


class Watched:
    """The page plus every URL it asked for and every console line, to look for credentials."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.urls: list[str] = []
        self.console: list[str] = []
        self.failed_tickets = 0
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("requestfailed", self._failed)
        page.on("websocket", lambda ws: self.urls.append(ws.url))
        page.on("console", lambda message: self.console.append(message.text))

    def _failed(self, request: Request) -> None:
        if request.url.endswith("/api/realtime/ticket"):
            self.failed_tickets += 1

    def wait_for_failed_ticket(self, seen: int) -> None:
        """Until more than `seen` ticket requests failed: the page tried to reconnect while down."""
        if self.failed_tickets <= seen:
            self.page.wait_for_event("requestfailed", lambda r: r.url.endswith("/api/realtime/ticket"), timeout=ms(60))

    def assert_no_credential(self, token: str) -> None:
        leaks = [text for text in self.urls + self.console if token in text or "token=" in text]
        assert not leaks, leaks
        assert any("ticket=" in url for url in self.urls if url.startswith("ws://")), self.urls


def open_example(context: BrowserContext, origin: str, token: str) -> Watched:
    """The app signed in as `token` (the wrapper reads it from sessionStorage), connected."""
    page = context.pages[0] if context.pages else context.new_page()
    page.add_init_script(f"sessionStorage.setItem('realtime.token', {token!r});")
    page.add_init_script(STATUS_LOG_SCRIPT)
    watched = Watched(page)
    page.goto(origin + "/")
    expect(page.locator("[role=status]")).to_have_attribute("data-status", "connected", timeout=ms(20))
    return watched


def token_for(process: ServiceProcess, user: dict[str, Any]) -> str:
    return as_service(process).token(sub=user["sub"], name=user["name"])


@pytest.mark.parametrize("config", list(CONFIGS))
def test_example_shows_another_users_task_live_with_a_toast(
    config: str, preview: str, context: BrowserContext, mongo_uri: str, tmp_path: Path
) -> None:
    """Cross-origin, the example connects over WebSocket and shows another user's new task and a toast."""
    env = service_env(mongo_uri, f"example_{config[:3]}", config)
    service = ServiceProcess(tmp_path / "service", env, SERVICE_PORT)
    try:
        service.start()
        mine = token_for(service, ME)
        watched = open_example(context, preview, mine)
        page = watched.page
        expect(page.locator("[role=status]")).to_have_attribute("data-transport", "websocket")
        task = create_task(service.url, token_for(service, OTHER), f"تقرير من {config}")
        expect(page.locator(f'[data-task-id="{task["id"]}"]')).to_contain_text(task["title"])
        toast = page.locator("[role=alert]").filter(has_text=OTHER["name"])
        expect(toast).to_contain_text(task["title"])
        screenshot(page, f"example-toast-{config}")
        watched.assert_no_credential(mine)
    finally:
        service.stop()


def wait_answering(process: ServiceProcess, seconds: float = 60) -> float:
    """Poll `/healthz` every 10 ms; the wall-clock time it first answered."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.process is not None and process.process.poll() is None, process.output()
        try:
            with urllib.request.urlopen(process.url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return time.time()
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"service on {process.port} did not answer /healthz")


@pytest.mark.timeout(600)
def test_example_reconnects_after_restarts_and_shows_the_missed_task(
    preview: str, context: BrowserContext, mongo_uri: str, tmp_path: Path
) -> None:
    """Service stopped: the indicator says so; restarted: connected again, the task created meanwhile shown."""
    env = service_env(mongo_uri, "example_restarts", "allowed-origins")
    other = ServiceProcess(tmp_path / "other", env)  # where the other user works during the outage
    first = ServiceProcess(tmp_path / "app", env, SERVICE_PORT)
    processes = [other, first]
    records: list[dict[str, float]] = []
    try:
        other.start(wait=False)
        first.start()
        other.wait_ready()
        mine = token_for(first, ME)
        watched = open_example(context, preview, mine)
        page = watched.page
        page.evaluate("window.__loadedOnce = true")
        status = page.locator("[role=status]")
        current = first
        for n in range(RESTARTS):
            stopped_at = time.time()
            failed_before = watched.failed_tickets
            current.stop()
            expect(status).not_to_have_attribute("data-status", "connected", timeout=ms(5))
            missed = create_task(other.url, token_for(other, OTHER), f"فائتة {n + 1}")
            expect(page.locator(f'[data-task-id="{missed["id"]}"]')).to_have_count(0)
            # Down until the page has tried at least once: its ticket request failed, and it
            # must neither put the token in a URL nor give up.
            watched.wait_for_failed_ticket(failed_before)

            current = ServiceProcess(tmp_path / "app", env, SERVICE_PORT)
            processes.append(current)
            current.start(wait=False)
            answered_at = wait_answering(current)
            shown = page.locator(f'[data-task-id="{missed["id"]}"]')
            expect(shown).to_contain_text(missed["title"], timeout=ms(60))
            expect(status).to_have_attribute("data-status", "connected")
            log = page.evaluate("window.__statusLog")
            back = next(e for e in log if e["at"] / 1000 >= stopped_at and e["status"] == "connected")
            connected_at = back["at"] / 1000
            records.append(
                {"outage_s": answered_at - stopped_at, "answering_to_connected_s": connected_at - answered_at}
            )
        screenshot(page, "example-after-restarts")
        assert page.evaluate("window.__loadedOnce") is True  # the same document throughout: no reload
    finally:
        for process in processes:
            process.stop()

    delays = sorted(r["answering_to_connected_s"] for r in records)
    summary = {
        "what": "examples/vite-react in Chromium: /healthz answering again -> indicator connected, per restart",
        "restarts": len(delays),
        "p50_s": round(statistics.median(delays), 3),
        "p95_s": round(delays[math.ceil(0.95 * len(delays)) - 1], 3),  # nearest rank
        "max_s": round(delays[-1], 3),
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in records],
    }
    write_artifact("example-reconnect-timings.json", summary)
    print("example reconnect timings:", summary)
    watched.assert_no_credential(mine)
