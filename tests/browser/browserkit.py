"""Helpers shared by the browser tests: logging in through the real forms, bounded polling, screenshots.

Waiting is always for a state, with a deadline: Playwright's auto-waiting ``expect`` where the page updates
itself, ``poll_until`` where the test must ask again (a page without a live region). A deadline that
passes fails the test with what it was waiting for and what it saw last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Browser, BrowserContext, Page, expect

T = TypeVar("T")

EXPECT_TIMEOUT_MS = 15_000
"""How long ``expect`` waits for a state by default: pages answer in well under a second, but the machine
running the suite may be busy."""
expect.set_options(timeout=EXPECT_TIMEOUT_MS)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def login_console(page: Page, server: Any, username: str = "admin", password: str | None = None) -> None:
    """Log in at ``/login`` as a demo staff user; waits for the console."""
    login = server.login(username)
    page.goto(f"{server.base_url}/login")
    page.fill("#organisation", login.organisation)
    page.fill("#username", login.username)
    page.fill("#password", password if password is not None else login.password)
    page.locator("main.login form button[type=submit]").click()
    page.wait_for_url(f"{server.base_url}/console/**", timeout=15_000)


def login_portal(page: Page, server: Any, account_no: str, password: str | None = None) -> None:
    """Log in to the tenant portal with the account number and password form (does not wait for the result)."""
    login = server.login(account_no)
    page.goto(f"{server.base_url}/portal/login")
    form = page.locator("form[action='/portal/login/password']")
    form.locator("input[name=org]").fill(login.organisation)
    form.locator("input[name=account_no]").fill(login.username)
    form.locator("input[name=password]").fill(password if password is not None else login.password)
    form.locator("button[type=submit]").click()


def phone_context(browser: Browser) -> BrowserContext:
    """A phone-sized context (390 x 844 CSS pixels, touch), as the tenant portal is used."""
    return browser.new_context(locale="zh-CN", viewport=PHONE, is_mobile=True, has_touch=True)


def poll_until(page: Page, probe: Callable[[], T | None], *, timeout_s: float, what: str, every_s: float = 0.5) -> T:
    """Call ``probe`` until it returns something other than None/False, at most ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = probe()
        if seen is not None and seen is not False:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s for {what}; last seen: {seen!r}")
        page.wait_for_timeout(every_s * 1000)


def shoot(page: Page, path: Path, *, full_page: bool = False) -> Path:
    """Save a PNG of the page (the viewport unless ``full_page``) and check it is a real picture."""
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
    return path


def wait_for_charts(page: Page, *selectors: str) -> None:
    """Wait until Chart.js has drawn a chart on each canvas (the page scripts fetch their data first)."""
    for selector in selectors:
        page.wait_for_function(
            "(s) => window.Chart && document.querySelector(s) && window.Chart.getChart(document.querySelector(s))",
            arg=selector,
            timeout=15_000,
        )
