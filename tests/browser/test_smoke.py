"""Smoke: the demo admin logs in to the console in a real Chromium and sees the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def test_the_demo_admin_logs_in_and_sees_the_dashboard(
    demo_server: Any, page: Any, screenshot: Callable[[str], Path]
) -> None:
    admin = demo_server.login("admin")
    page.goto(f"{demo_server.base_url}/console/")
    assert "/login" in page.url, "an anonymous visitor is sent to the login page"
    page.fill("#organisation", admin.organisation)
    page.fill("#username", admin.username)
    page.fill("#password", admin.password)
    page.locator("form button[type=submit], form input[type=submit]").first.click()
    page.wait_for_url(f"{demo_server.base_url}/console/**", timeout=15_000)
    assert "/login" not in page.url
    page.wait_for_load_state("networkidle")
    body = page.locator("body").inner_text()
    assert "仪表盘" in body or "Dashboard" in body, body[:500]
    shot = screenshot("console-dashboard-admin")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
