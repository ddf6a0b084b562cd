"""Headless Chromium (the Debian package) driven by Playwright's sync API, for the dashboard tests."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from harness.clients import wait_bound

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
DASHBOARD = ROOT / "web" / "dist" / "index.html"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Records every change of the status indicator with the wall-clock time it happened.
STATUS_LOG_SCRIPT = """
window.__statusLog = [];
new MutationObserver(() => {
  const el = document.querySelector('[role=status]');
  const status = el ? el.getAttribute('data-status') : null;
  const log = window.__statusLog;
  if (status && (!log.length || log[log.length - 1].status !== status)) {
    log.push({status, transport: el.getAttribute('data-transport'), at: Date.now()});
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']});
"""


def ms(seconds: float) -> float:
    """A Playwright timeout in milliseconds, scaled by TEST_TIMEOUT_FACTOR."""
    return wait_bound(seconds) * 1000


expect.set_options(timeout=ms(15))


def require_dashboard() -> None:
    """The dashboard bundle must be built; a missing one fails (never skips) the browser tests."""
    assert DASHBOARD.is_file(), f"{DASHBOARD} is missing: run `make web` (npm ci && npm run build in web/) first"
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)"


@contextmanager
def chromium(profile: Path, **context_options: Any) -> Iterator[BrowserContext]:
    """A fresh headless Chromium with its own profile directory; closed on exit."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            **context_options,
        )
        context.set_default_timeout(ms(15))
        try:
            yield context
        finally:
            context.close()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def write_artifact(name: str, data: Any) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def create_task(base_url: str, token: str, title: str, task_type: str = "daily") -> dict[str, Any]:
    """`POST /api/tasks` as the token's user; returns the created task."""
    request = urllib.request.Request(
        base_url + "/api/tasks",
        data=json.dumps({"title": title, "taskType": task_type}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=wait_bound(10)) as response:
        assert response.status == 201, response.status
        return json.loads(response.read())  # type: ignore[no-any-return]
