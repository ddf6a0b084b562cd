"""Presence in the dashboard: two pages as two users in headless Chromium, each sees the other come and go."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from harness.processes import ServiceProcess, as_service, running, shared_env
from tests.browser import chromium, ms, require_dashboard, screenshot

ME = {"sub": 1, "name": "محمد حسن"}
OTHER = {"sub": 2, "name": "سارة"}


@pytest.fixture
def service(tmp_path: Path, mongo_uri: str) -> Iterator[ServiceProcess]:
    require_dashboard()
    env = {**shared_env(mongo_uri), "HEARTBEAT_SECONDS": "2", "PRESENCE_GRACE_SECONDS": "0.5"}
    with running(tmp_path / "service", env) as process:
        yield process


@pytest.fixture
def context(tmp_path: Path) -> Iterator[BrowserContext]:
    with chromium(tmp_path / "profile") as browser_context:
        yield browser_context


def open_as(context: BrowserContext, process: ServiceProcess, user: dict[str, object], query: str = "") -> Page:
    page = context.new_page()
    token = as_service(process).token(sub=user["sub"], name=str(user["name"]))  # type: ignore[arg-type]
    page.goto(f"{process.url}/?token={token}{query}")
    expect(page.locator("[role=status]")).to_have_attribute("data-status", "connected", timeout=ms(20))
    return page


def test_two_users_see_each_other_appear_and_go(service: ServiceProcess, context: BrowserContext) -> None:
    """Page 1 (Arabic UI) and page 2 list both users, each marking its own; page 2 closed: page 1 lists only itself."""
    mine = open_as(context, service, ME, "&lang=ar")
    theirs = open_as(context, service, OTHER)
    for page, me, other in ((mine, ME, OTHER), (theirs, OTHER, ME)):
        online = page.get_by_test_id("online")
        expect(online.locator(f'[data-user-id="{other["sub"]}"] bdi')).to_have_text(str(other["name"]))
        own = online.locator(f'[data-user-id="{me["sub"]}"]')
        expect(own).to_have_attribute("data-self", "true")
        expect(online.locator(f'[data-user-id="{other["sub"]}"]')).not_to_have_attribute("data-self", "true")
    expect(mine.locator("html")).to_have_attribute("dir", "rtl")
    expect(mine.get_by_test_id("online").locator("bdi").first).to_have_attribute("dir", "auto")
    expect(mine.get_by_test_id("online")).to_contain_text("أنت")
    screenshot(mine, "presence-arabic-two-users")
    theirs.close()
    expect(mine.get_by_test_id("online").locator("li")).to_have_count(1, timeout=ms(20))
    expect(mine.get_by_test_id("online").locator(f'[data-user-id="{ME["sub"]}"]')).to_be_visible()
