"""The dashboard at `/` in headless Chromium against real service processes."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect

from harness.processes import ServiceProcess, as_service, running, shared_env
from tests.browser import STATUS_LOG_SCRIPT, chromium, create_task, ms, require_dashboard, screenshot, write_artifact

HEARTBEAT_SECONDS = 2.0
ME = {"sub": 1, "name": "محمد حسن"}
OTHER: dict[str, Any] = {"sub": 2, "name": "سارة"}

# Every WebSocket the page opens goes to a path that answers with plain HTTP, not 101:
# the browser sees a refused upgrade (close 1006), as behind a proxy that blocks WebSocket.
REFUSE_WEBSOCKET_SCRIPT = """
(() => {
  const Native = window.WebSocket;
  window.__webSocketAttempts = 0;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      const refused = new URL(url);
      refused.pathname = '/websocket-refused';
      super(refused.href, protocols);
      window.__webSocketAttempts += 1;
    }
  };
})();
"""


@pytest.fixture(autouse=True)
def dashboard_built() -> None:
    require_dashboard()


@pytest.fixture
def env(mongo_uri: str) -> dict[str, str]:
    return {
        **shared_env(mongo_uri),
        "HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "DRAIN_SECONDS": "0",
    }


@pytest.fixture
def service(tmp_path: Path, env: dict[str, str]) -> Iterator[ServiceProcess]:
    with running(tmp_path / "service", env) as process:
        yield process


@pytest.fixture
def context(tmp_path: Path) -> Iterator[BrowserContext]:
    with chromium(tmp_path / "profile") as browser_context:
        yield browser_context


@pytest.fixture
def page(context: BrowserContext) -> Page:
    page = context.pages[0] if context.pages else context.new_page()
    page.add_init_script(STATUS_LOG_SCRIPT)
    return page


def token(process: ServiceProcess, user: dict[str, Any]) -> str:
    return as_service(process).token(sub=user["sub"], name=user["name"])


def open_dashboard(page: Page, process: ServiceProcess, query: str = "", as_token: str | None = None) -> Locator:
    """Load `/?token=…` (ME by default) and wait for the indicator to say connected."""
    page.goto(f"{process.url}/?token={as_token or token(process, ME)}{query}")
    status = page.locator("[role=status]")
    expect(status).to_have_attribute("data-status", "connected", timeout=ms(20))
    return status


def row(page: Page, task: dict[str, Any]) -> Locator:
    return page.locator(f'[data-task-id="{task["id"]}"]')


def test_dashboard_connects_over_websocket_and_hides_the_token(service: ServiceProcess, page: Page) -> None:
    """`/?token=` connects over WebSocket, the indicator says so, and the token leaves the address bar."""
    mine = token(service, ME)
    status = open_dashboard(page, service, as_token=mine)
    expect(status).to_have_attribute("data-transport", "websocket")
    expect(status).to_contain_text("Connected")
    expect(status).to_contain_text("WebSocket")
    expect(page).to_have_url(f"{service.url}/")
    assert "token" not in page.evaluate("location.href")
    assert page.evaluate("sessionStorage.getItem('realtime.token')") == mine
    screenshot(page, "dashboard-connected")


def test_task_created_by_another_user_appears_live_with_a_toast(service: ServiceProcess, page: Page) -> None:
    """A task another user creates over REST shows up in the list and raises a toast naming them."""
    open_dashboard(page, service)
    task = create_task(service.url, token(service, OTHER), "مراجعة التقرير الأسبوعي")
    expect(row(page, task)).to_contain_text("مراجعة التقرير الأسبوعي")
    toast = page.locator("[role=alert]").filter(has_text=OTHER["name"])
    expect(toast).to_be_visible()
    expect(toast).to_contain_text("مراجعة التقرير الأسبوعي")
    screenshot(page, "dashboard-task-toast")


@pytest.mark.timeout(180)
def test_dashboard_catches_up_on_tasks_created_while_its_service_was_down(
    tmp_path: Path, env: dict[str, str], page: Page
) -> None:
    """Service A killed, 3 tasks created through B, A restarted: the page reconnects and shows them all."""
    first = ServiceProcess(tmp_path / "a", env)
    other = ServiceProcess(tmp_path / "b", env)
    processes = [first, other]
    try:
        first.start(wait=False)
        other.start(wait=False)
        first.wait_ready()
        other.wait_ready()
        status = open_dashboard(page, first)
        # An event seen before the outage gives the page an id to resume from.
        seen = create_task(other.url, token(other, OTHER), "قبل الانقطاع")
        expect(row(page, seen)).to_be_visible()
        listings: list[float] = []
        page.on("request", lambda r: listings.append(time.time()) if "/api/tasks?" in r.url else None)

        killed_at = time.time()
        first.signal(signal.SIGKILL)  # a crash: no close frame, no drain
        first.wait()
        expect(status).to_have_attribute("data-status", "reconnecting", timeout=ms(2 * HEARTBEAT_SECONDS))
        screenshot(page, "dashboard-outage-reconnecting")

        # A refresh during the outage fails; the page says so until it is back.
        page.get_by_role("button", name="Refresh").click()
        expect(page.locator(".form-error")).to_be_visible()

        titles = ["مهمة فائتة ١", "مهمة فائتة ٢", "مهمة فائتة ٣"]
        missed = [create_task(other.url, token(other, OTHER), title) for title in titles]
        for task in missed:
            expect(row(page, task)).to_have_count(0)

        restarted_at = time.time()
        restarted = ServiceProcess(tmp_path / "a", env, port=first.port)
        processes.append(restarted)
        restarted.start()
        ready_at = time.time()

        shown = page.wait_for_function(
            "ids => ids.every(id => document.querySelector(`[data-task-id='${id}']`)) && Date.now()",
            arg=[task["id"] for task in missed],
            polling="raf",
            timeout=ms(60),
        )
        all_shown_at = float(shown.json_value()) / 1000
        expect(status).to_have_attribute("data-status", "connected", timeout=ms(60))
        for task, title in zip(missed, titles, strict=True):
            expect(row(page, task)).to_contain_text(title)
        expect(row(page, seen)).to_be_visible()
        expect(page.locator(".form-error")).to_have_count(0)
        screenshot(page, "dashboard-outage-caught-up")
        log = page.evaluate("window.__statusLog")
    finally:
        for process in processes:
            process.stop()

    left = next(entry for entry in log if entry["at"] / 1000 >= killed_at and entry["status"] != "connected")
    back = next(entry for entry in log if entry["at"] / 1000 >= restarted_at and entry["status"] == "connected")
    timings = {
        "signal": "SIGKILL",
        "heartbeat_seconds": HEARTBEAT_SECONDS,
        "stop_to_indicator_change_s": round(left["at"] / 1000 - killed_at, 3),
        "indicator_after_stop": left["status"],
        "outage_s": round(ready_at - killed_at, 3),
        "restart_to_ready_s": round(ready_at - restarted_at, 3),
        "restart_to_connected_s": round(back["at"] / 1000 - restarted_at, 3),
        "ready_to_connected_s": round(back["at"] / 1000 - ready_at, 3),
        "restart_to_all_tasks_shown_s": round(all_shown_at - restarted_at, 3),
        "ready_to_all_tasks_shown_s": round(all_shown_at - ready_at, 3),
        "transport_after_reconnect": back["transport"],
        "task_list_refetches_after_restart": sum(1 for at in listings if at >= restarted_at),
        "status_log": [
            {"status": e["status"], "transport": e["transport"], "t_s": round(e["at"] / 1000 - killed_at, 3)}
            for e in log
        ],
    }
    write_artifact("reconnect-timings.json", timings)
    print("reconnect timings:", timings)


def test_dashboard_falls_back_to_sse_when_websocket_is_refused(service: ServiceProcess, page: Page) -> None:
    """With every WebSocket upgrade refused, the page connects over SSE and still gets live tasks."""
    page.add_init_script(REFUSE_WEBSOCKET_SCRIPT)
    status = open_dashboard(page, service)
    expect(status).to_have_attribute("data-transport", "sse")
    expect(status).to_contain_text("Server-Sent Events")
    assert page.evaluate("window.__webSocketAttempts") >= 2
    task = create_task(service.url, token(service, OTHER), "Inventory check over SSE")
    expect(row(page, task)).to_contain_text("Inventory check over SSE")
    expect(page.locator("[role=alert]").filter(has_text=OTHER["name"])).to_be_visible()
    screenshot(page, "dashboard-sse-fallback")


def test_arabic_ui_is_right_to_left_and_remembered(service: ServiceProcess, page: Page) -> None:
    """`?lang=ar` gives an RTL Arabic page, and a later visit without the parameter stays Arabic."""
    create_task(service.url, token(service, OTHER), "تجهيز تقرير المبيعات الشهري", "monthly")
    create_task(service.url, token(service, ME), "Weekly backup check", "weekly")
    html = page.locator("html")
    status = open_dashboard(page, service, "&lang=ar")
    expect(html).to_have_attribute("dir", "rtl")
    expect(html).to_have_attribute("lang", "ar")
    expect(page.get_by_role("heading", level=1)).to_have_text("المهام الفورية")
    expect(page.get_by_role("heading", name="المهام", exact=True)).to_be_visible()
    expect(status).to_contain_text("متصل")
    expect(page.locator("[data-task-id]")).to_have_count(2)
    screenshot(page, "dashboard-arabic")

    page.goto(f"{service.url}/")
    expect(status).to_have_attribute("data-status", "connected", timeout=ms(20))
    expect(html).to_have_attribute("dir", "rtl")
    expect(html).to_have_attribute("lang", "ar")
    expect(page.get_by_role("heading", level=1)).to_have_text("المهام الفورية")
    screenshot(page, "dashboard-arabic-remembered")


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_dashboard_fits_a_phone_screen_without_horizontal_scroll(
    service: ServiceProcess, page: Page, lang: str
) -> None:
    """At 390x844, with tasks and a toast on screen, the page is no wider than the viewport."""
    page.set_viewport_size({"width": 390, "height": 844})
    create_task(service.url, token(service, OTHER), "مراجعة طلبات الصيانة المتأخرة في جميع الفروع الإقليمية", "ad-hoc")
    create_task(service.url, token(service, ME), "Reconcile the quarterly supplier invoices and payments", "monthly")
    open_dashboard(page, service, f"&lang={lang}")
    expect(page.locator("[data-task-id]")).to_have_count(2)
    task = create_task(service.url, token(service, OTHER), "Notify every regional warehouse about the schedule")
    expect(row(page, task)).to_be_visible()
    expect(page.locator("[role=alert]").filter(has_text=OTHER["name"])).to_be_visible()
    screenshot(page, f"dashboard-phone-{lang}")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390


def test_indicator_leaves_connected_when_the_service_stops_answering(
    tmp_path: Path, env: dict[str, str], page: Page
) -> None:
    """A frozen service (no FIN, no close frame) is noticed within the heartbeat window; thawed, the page reconnects."""
    process = ServiceProcess(tmp_path / "service", env).start()
    try:
        status = open_dashboard(page, process)
        frozen_at = time.time()
        process.signal(signal.SIGSTOP)
        try:
            expect(status).to_have_attribute("data-status", "reconnecting", timeout=ms(3 * HEARTBEAT_SECONDS))
            screenshot(page, "dashboard-frozen-service")
        finally:
            process.signal(signal.SIGCONT)
        thawed_at = time.time()
        expect(status).to_have_attribute("data-status", "connected", timeout=ms(60))
        log = page.evaluate("window.__statusLog")
        left = next(e for e in log if e["at"] / 1000 >= frozen_at and e["status"] != "connected")
        back = next(e for e in log if e["at"] / 1000 >= thawed_at and e["status"] == "connected")
        timings = {
            "signal": "SIGSTOP, then SIGCONT",
            "heartbeat_seconds": HEARTBEAT_SECONDS,
            "freeze_to_indicator_change_s": round(left["at"] / 1000 - frozen_at, 3),
            "thaw_to_connected_s": round(back["at"] / 1000 - thawed_at, 3),
        }
        write_artifact("frozen-service-timings.json", timings)
        print("frozen service timings:", timings)
    finally:
        process.signal(signal.SIGCONT)
        process.stop()
