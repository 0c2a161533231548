"""Browser-test fixtures: a seeded demo server in a child process, and Debian's Chromium driven by Playwright.

- ``demo_server`` (module scope): ``powergate demo`` on a free port with its SQLite file in a temporary folder,
  at ``POWERGATE_BROWSER_DEMO_SPEED`` demo seconds per real second (else the test module's ``DEMO_SPEED``, else
  60); yields a ``DemoServer`` with the base URL, the demo logins and the speed; SIGTERM stops it afterwards.
- ``browser``: headless Chromium from ``/usr/bin/chromium`` (Debian package ``chromium``; Playwright's own
  browser downloads are not used). Missing Chromium skips loudly on a laptop and fails under ``CI=true``.
- ``page``: a fresh page (its own context: cookies do not leak between tests); ``screenshot(name)`` gives
  the path of a PNG under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit import *  # noqa: F403 - so that `from conftest import free_port` works whichever conftest it finds

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("POWERGATE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class DemoLogin:
    where: str
    """``console`` or ``portal``."""
    organisation: str
    username: str
    password: str


@dataclass(frozen=True)
class DemoServer:
    base_url: str
    logins: tuple[DemoLogin, ...]
    output_file: Path
    speed: float = 60.0
    """Demo seconds per real second (scale the bounded waits for demo-time events by it)."""

    def login(self, username: str) -> DemoLogin:
        return next(login for login in self.logins if login.username == username)


def _logins() -> tuple[DemoLogin, ...]:
    from powergate.demo.seed import ORGANISATION, STAFF, STAFF_PASSWORD, TENANT_PASSWORD, WATCH

    staff = tuple(DemoLogin("console", ORGANISATION, username, STAFF_PASSWORD) for username, _, _ in STAFF)
    tenants = tuple(DemoLogin("portal", ORGANISATION, w.room, TENANT_PASSWORD) for w in WATCH if w.tenant_login)
    return staff + tenants


@pytest.fixture(scope="module")
def demo_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    folder = tmp_path_factory.mktemp("demo")
    port = free_port()
    speed = os.environ.get("POWERGATE_BROWSER_DEMO_SPEED") or str(getattr(request.module, "DEMO_SPEED", 60))
    output = folder / "demo.out"
    with output.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "powergate", "demo", "--port", str(port), "--speed", speed,
             "--db", str(folder / "demo.db"), "--quiet"],
            stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "PowerGate demo is running" not in output.read_text(encoding="utf-8"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not start:\n{output.read_text(encoding='utf-8')[-3000:]}")
            time.sleep(0.2)
        assert httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200
        yield DemoServer(base_url, _logins(), output, float(speed))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"Chromium is not installed at {CHROMIUM} (Debian package chromium)"
        if IN_CI:
            pytest.fail(f"{message} and CI=true: browser tests must run in CI", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {message}; apt-get install -y chromium to run browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"


@pytest.fixture
def screenshot() -> Any:
    """``screenshot(name)`` -> the PNG path under test-artifacts/screenshots/ for that name."""
    return screenshot_path
