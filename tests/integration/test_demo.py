"""``powergate demo`` end to end: the seeded park runs, A-0101 warns and trips, a portal recharge restores it.

The demo runs in this process (its own thread and event loop) at 300x on a fresh SQLite file and a free port,
with every real part: virtual DTUs dialling in over TCP with DL/T 645, Modbus TCP gateways, MQTT meters through
the embedded Mosquitto (skipped loudly without it), the head-end, the worker delivering SMS and webhooks to the
inbox, uvicorn serving the console and portal. The tenant of A-0101 logs in to the portal and pays with the
sandbox over HTTP; the relay closes on the simulated meter and in ``meter_status``.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import func, select

from powergate.demo.runner import DemoOptions, DemoRunner
from powergate.demo.seed import ORGANISATION, STAFF_PASSWORD, TENANT_PASSWORD
from powergate.services.prepaid import outbox_rows
from powergate.store.tables import ledger_accounts, readings
from powergate.store.tables_headend import meter_status

SPEED = 300.0
WATCHED = "A-0101"


class DemoThread:
    def __init__(self, options: DemoOptions) -> None:
        self.out = io.StringIO()
        self.runner = DemoRunner(options, self.out)
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="demo", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            await self.runner.run(self.stop)

        try:
            asyncio.run(main())
        except BaseException as error:  # reported by the test, not lost in the thread
            self.failure = error

    def start(self, timeout_s: float) -> None:
        self.thread.start()
        until(lambda: self.runner.ready.is_set() or self.failure is not None, timeout_s, "the demo to start")
        assert self.failure is None, f"the demo failed to start: {self.failure!r}\n{self.out.getvalue()}"

    def close(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        assert not self.thread.is_alive(), "the demo did not stop within 60 s"


def until(condition: Callable[[], object], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoThread]:
    folder = tmp_path_factory.mktemp("demo")
    running = DemoThread(DemoOptions(port=0, speed=SPEED, db=folder / "demo.db", watch=False))
    running.start(timeout_s=60)
    try:
        yield running
    finally:
        running.close()


def hidden(page: str, name: str) -> str:
    match = re.search(rf'name="{name}"\s+value="([^"]+)"', page) or re.search(rf'value="([^"]+)"\s+name="{name}"', page)
    assert match is not None, f"no hidden field {name} in the page"
    return match.group(1)


def test_the_demo_runs_down_a_balance_trips_and_a_portal_recharge_restores_supply(demo: DemoThread) -> None:
    runner = demo.runner
    assert runner.engine is not None and runner.made is not None
    assert runner.made.rooms >= 200 and len(runner.made.meters) >= 200
    engine = runner.engine
    watched = runner.made.meter(WATCHED)
    virtual = runner.virtual_meter(watched.meter_id)
    assert virtual is not None and not virtual.relay_open()
    timings: dict[str, float] = {}

    def readings_stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(readings)).scalar_one())

    def warned() -> bool:
        with engine.connect() as conn:
            wallet_id = conn.execute(
                select(ledger_accounts.c.id).where(ledger_accounts.c.code == watched.wallet)
            ).scalar_one()
            return any(row["wallet_account_id"] == wallet_id for row in outbox_rows(conn, "warning"))

    def relay_in_status() -> bool | None:
        with engine.connect() as conn:
            value = conn.execute(
                select(meter_status.c.relay_open).where(meter_status.c.meter_id == watched.meter_id)
            ).scalar()
        return None if value is None else bool(value)

    timings["readings"] = until(lambda: readings_stored() > 100, 30, "readings to be ingested")
    timings["warning"] = until(warned, 30, f"a low-balance warning for {WATCHED}")
    timings["trip"] = until(lambda: virtual.relay_open() and relay_in_status() is True, 80, f"{WATCHED} to trip")

    with httpx.Client(base_url=runner.base_url, follow_redirects=False, timeout=10) as client:
        for page in ("/console/", "/portal/", "/api/docs", "/healthz", "/login", "/portal/login"):
            answer = client.get(page, follow_redirects=True)
            assert answer.status_code == 200, f"{page}: {answer.status_code}"
        login = client.post(
            "/portal/login/password", data={"org": ORGANISATION, "account_no": WATCHED, "password": TENANT_PASSWORD}
        )
        assert login.status_code == 303, login.text[:500]
        form = client.get("/portal/recharge")
        assert form.status_code == 200
        placed = client.post(
            "/portal/recharge",
            data={
                "amount": "100",
                "channel": "sandbox",
                "csrf_token": hidden(form.text, "csrf_token"),
                "idempotency_key": hidden(form.text, "idempotency_key"),
            },
        )
        assert placed.status_code == 303, placed.text[:500]
        status_page = client.get(placed.headers["location"])
        paid = client.post(
            f"{placed.headers['location']}/pay",
            data={
                "csrf_token": hidden(status_page.text, "csrf_token"),
                "idempotency_key": hidden(status_page.text, "idempotency_key"),
            },
        )
        assert paid.status_code == 303, paid.text[:500]
    timings["payment to relay closed"] = until(
        lambda: not virtual.relay_open() and relay_in_status() is False, 30, f"{WATCHED}'s relay to close"
    )
    assert runner.inbox is not None and any(WATCHED in m.text for m in runner.inbox.messages), "the tenant got SMS"
    assert runner.headend.stats.rejected == 0
    print(f"demo timings (s, {SPEED:g}x): {timings}")


def test_the_demo_command_refuses_bad_options_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from powergate.cli import main

    assert main(["demo", "--speed", "5000"]) == 2
    assert "--speed" in capsys.readouterr().err
    assert main(["demo", "--db", "demo.sqlite"]) == 2
    assert "--db" in capsys.readouterr().err
    assert main(["demo", "--duration", "-1"]) == 2
    assert "--duration" in capsys.readouterr().err


def test_the_banner_names_the_urls_and_every_seeded_login(demo: DemoThread) -> None:
    banner = demo.out.getvalue()
    runner = demo.runner
    for path in ("/console/", "/portal/", "/api/docs"):
        assert f"{runner.base_url}{path}" in banner
    assert f"admin      / {STAFF_PASSWORD}" in banner and f"{WATCHED}     / {TENANT_PASSWORD}" in banner
    with httpx.Client(base_url=runner.base_url, timeout=10) as client:
        data = {"organisation": ORGANISATION, "username": "admin", "password": STAFF_PASSWORD}
        login = client.post("/login", data=data, follow_redirects=True)
        assert login.status_code == 200 and "/login" not in str(login.url), login.text[:300]
