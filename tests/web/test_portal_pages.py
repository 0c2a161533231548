"""The tenant portal over HTTP, on SQLite and PostgreSQL: logins, home, recharge, bills, preferences, scoping.

A small world per test: organisation ORG1, site "Garden" (Asia/Shanghai, sandbox and cashier enabled, minimum
purchase 10 yuan, hoarding limit 500 yuan), one room, account A-101 with phone 13800138001 and meter M-101 on a
flat 1 yuan/kWh tariff. The app is built with a real sandbox payment channel and a real SMS gateway: a local
HTTP server that records each message (the code is read back from what the gateway received).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from powergate.domain.ledger import recharge_entry
from powergate.domain.rating import Reading
from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.headend import commands as queue
from powergate.headend.model import CommandResult, MeterSnapshot
from powergate.notify._http import HttpProviderConfig
from powergate.notify.config import NotifyConfig
from powergate.payments.config import PaymentsConfig, SandboxConfig
from powergate.services import accounts, portal, prepaid
from powergate.services.ingest import Ingestor
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.audit import audit_records
from powergate.store.tables import ledger_accounts, ledger_entries, ledger_postings, tariffs
from powergate.store.tables_portal import portal_login_codes
from powergate.web.app import create_app
from powergate.web.settings import WebSettings
from testkit import FLAT_TARIFF as FLAT

YUAN = 1_000_000
SANDBOX_SECRET = b"portal-test-sandbox-secret-0123"
ACTOR = "system:test"
SHANGHAI = ZoneInfo("Asia/Shanghai")
MOVED_IN = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


# --- a real SMS gateway on 127.0.0.1 ------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    refuse: bool = False

    def last_code(self, phone: str) -> str:
        found = [m for m in self.messages if m["to"] == phone]
        assert found, f"no SMS to {phone}; the gateway got {self.messages}"
        match = re.search(r"\b(\d{6})\b", found[-1]["text"])
        assert match, found[-1]
        return match.group(1)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    gw = Gateway()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            if gw.refuse:
                answer, status = {"result": "REJECTED"}, 200
            else:
                gw.messages.append(body)
                answer, status = {"result": "0", "id": f"gw-{len(gw.messages)}"}, 200
            content = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    gw.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield gw
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def pw(web: Any, gateway: Gateway) -> Iterator[Any]:
    """The ``web`` helper around an app that has the sandbox channel and the SMS gateway configured."""
    gateway.messages.clear()
    gateway.refuse = False
    sms = HttpProviderConfig(
        url=gateway.url + "/send",
        body={"to": "{address}", "text": "{body}", "ref": "{message_id}"},
        success_field="result",
        success_values=("0",),
        id_field="id",
        timeout_s=5.0,
    )
    settings = WebSettings(
        database_url=web.db_url,
        secret_key="portal-test-secret-key-0123456789abcdef",
        clock=web.clock,
        payment_channels=PaymentsConfig(sandbox=SandboxConfig(SANDBOX_SECRET)),
        notify=NotifyConfig(sms=sms),
    )
    app = create_app(settings)
    helper = type(web)(app=app, engine=app.state.engine, clock=web.clock, db_url=web.db_url)
    try:
        yield helper
    finally:
        helper.close()
        app.state.engine.dispose()


@dataclass(frozen=True)
class World:
    org_id: int
    site_id: int
    account_id: int
    wallet_account_id: int
    meter_id: str


def make_world(w: Any, *, org: str = "ORG1", account_no: str = "A-101", phone: str = "13800138001") -> World:
    """The tenant moved in on 1 November (the test clock is at 23 November)."""
    org_id = w.org(org)
    now = MOVED_IN
    with w.engine.begin() as conn:
        if conn.execute(select(tariffs.c.id).where(tariffs.c.id == "flat")).first() is None:
            metering.add_tariff(conn, "flat", "flat 1 yuan", "electricity", FLAT, now)
        site = accounts.create_site(
            conn, org_id, f"Garden {org} {account_no}", timezone="Asia/Shanghai", currency="CNY",
            channels=[PaymentChannel.SANDBOX, PaymentChannel.CASHIER], min_purchase_micros=10 * YUAN,
            hoarding_limit_micros=500 * YUAN, actor=ACTOR, now=now,
        )  # fmt: skip
        assert isinstance(site, int)
        building = accounts.create_building(conn, site, "B1")
        assert isinstance(building, int)
        floor = accounts.create_floor(conn, building, "1F")
        assert isinstance(floor, int)
        room = accounts.create_room(conn, floor, account_no, 5_000, RoomUse.APARTMENT)
        assert isinstance(room, int)
        account = accounts.stage_account(conn, site, account_no, "Zhang San", phone=phone, actor=ACTOR, now=now)
        assert isinstance(account, int)
        opened = accounts.open_account(conn, account, actor=ACTOR, reason="move in", now=now)
        assert isinstance(opened, accounts.AccountView)
        meter = f"M-{org}-{account_no}"
        assert isinstance(
            accounts.attach_meter(conn, meter, room, account, tariff_id="flat", actor=ACTOR, reason="install", now=now),
            int,
        )
        assert (
            prepaid.set_policy(conn, opened.wallet_account_id, prepaid.WalletPolicy(friendly_window="off"), now) is None
        )
    return World(org_id, site, account, opened.wallet_account_id, meter)


def credit(w: Any, world: World, amount_micros: int, key: str) -> None:
    with w.engine.begin() as conn:
        query = select(ledger_accounts.c.code).where(ledger_accounts.c.id == world.wallet_account_id)
        wallet = str(conn.execute(query).scalar_one())
        ledger_store.post(conn, recharge_entry(key, wallet, "cashier", amount_micros, w.clock()), w.clock())


def read(w: Any, world: World, readings: list[tuple[dt.datetime, int]]) -> None:
    """Readings through the real ingest (rating, ledger deductions, balance policy)."""
    ingestor = Ingestor(w.engine, clock=w.clock, after_post=prepaid.after_ingest)
    batch = [Reading(f"{world.meter_id}@{int(at.timestamp())}", world.meter_id, at, wh) for at, wh in readings]
    ingestor.ingest(batch)


def tenant(w: Any, world: World) -> TestClient:
    return w.client("tenant", world.org_id, account_id=world.account_id)


def local(hour: int, minute: int = 0, day: int = 23) -> dt.datetime:
    """A time on 2026-11-<day> in Shanghai, as UTC (the fake clock starts at 2026-11-23 10:00 Shanghai)."""
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=SHANGHAI).astimezone(dt.UTC)


def text_of(answer: Any, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}"[^>]*>(.*?)<', answer.text, re.S)
    assert match, f"no {testid} in the page"
    return " ".join(match.group(1).split())


# --- logins ---------------------------------------------------------------------------------------------------


def test_a_tenant_logs_in_with_account_number_and_password_and_lands_on_home(pw: Any) -> None:
    world = make_world(pw)
    username, password = pw.user("tenant", world.org_id, account_id=world.account_id, username="A-101")
    client = pw.anonymous()
    page = client.get("/portal/login?org=ORG1")
    assert page.status_code == 200 and 'name="org"' in page.text and 'value="ORG1"' in page.text
    wrong = client.post("/portal/login/password", data={"org": "ORG1", "account_no": "A-101", "password": "nope-nope"})
    assert wrong.status_code == 401 and "login" in wrong.text.lower()
    answer = client.post("/portal/login/password", data={"org": "ORG1", "account_no": username, "password": password})
    assert answer.status_code == 303 and answer.headers["location"] == "/portal/"
    home = client.get("/portal/")
    assert home.status_code == 200 and "A-101" in home.text


def test_staff_cannot_use_the_portal_and_anonymous_visitors_are_sent_to_the_portal_login(pw: Any) -> None:
    world = make_world(pw)
    staff = pw.client("operator", world.org_id)
    assert staff.get("/portal/").status_code == 303 and staff.get("/portal/").headers["location"] == "/console/"
    assert staff.post("/portal/notifications", data={}).status_code == 403
    username, password = pw.user("admin", world.org_id)
    refused = pw.anonymous().post(
        "/portal/login/password", data={"org": "ORG1", "account_no": username, "password": password}
    )
    assert refused.status_code == 403
    anonymous = pw.anonymous().get("/portal/bills")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/portal/login?next=/portal/bills")


def test_a_tenant_logs_in_by_sms_code_once_and_the_code_is_single_use(pw: Any, gateway: Gateway) -> None:
    make_world(pw)
    client = pw.anonymous()
    sent = client.post("/portal/login/code", data={"phone": "138 0013 8001"})
    assert sent.status_code == 200 and 'name="code"' in sent.text
    code = gateway.last_code("13800138001")
    wrong = "000000" if code != "000000" else "111111"
    bad = client.post("/portal/login/sms", data={"phone": "13800138001", "code": wrong})
    assert bad.status_code == 401 and "4 tries left" in bad.text
    good = client.post("/portal/login/sms", data={"phone": "13800138001", "code": code})
    assert good.status_code == 303
    home = client.get("/portal/")
    assert home.status_code == 200 and "A-101" in home.text
    # The first SMS login of an account without a tenant user made one, audited.
    with pw.engine.connect() as conn:
        made = [r for r in audit_records(conn, action="create_user") if r.actor == portal.SYSTEM_ACTOR]
    assert len(made) == 1
    again = pw.anonymous().post("/portal/login/sms", data={"phone": "13800138001", "code": code})
    assert again.status_code == 401 and "used already" in again.text


def test_an_expired_code_and_too_many_wrong_codes_are_refused(pw: Any, gateway: Gateway) -> None:
    make_world(pw)
    client = pw.anonymous()
    assert client.post("/portal/login/code", data={"phone": "13800138001"}).status_code == 200
    code = gateway.last_code("13800138001")
    pw.clock.advance(minutes=5, seconds=1)
    expired = client.post("/portal/login/sms", data={"phone": "13800138001", "code": code})
    assert expired.status_code == 401 and "expired" in expired.text
    soon = client.post("/portal/login/code", data={"phone": "13800138001"})
    assert soon.status_code == 200
    assert client.post("/portal/login/code", data={"phone": "13800138001"}).status_code == 429  # resend limit
    code = gateway.last_code("13800138001")
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(portal.MAX_CODE_ATTEMPTS):
        client.post("/portal/login/sms", data={"phone": "13800138001", "code": wrong})
    locked = client.post("/portal/login/sms", data={"phone": "13800138001", "code": code})
    assert locked.status_code in (401, 429) and ("too many" in locked.text)
    with pw.engine.connect() as conn:
        stored = conn.execute(select(portal_login_codes.c.code_hash, portal_login_codes.c.attempts)).all()
    assert all(code not in row.code_hash for row in stored), "codes are stored hashed"
    assert max(row.attempts for row in stored) == portal.MAX_CODE_ATTEMPTS


def test_an_unknown_phone_or_a_failed_gateway_never_yields_a_usable_code(pw: Any, gateway: Gateway) -> None:
    make_world(pw)
    client = pw.anonymous()
    unknown = client.post("/portal/login/code", data={"phone": "13900000000"})
    assert unknown.status_code == 422 and not gateway.messages
    assert client.post("/portal/login/code", data={"phone": "12345"}).status_code == 422
    gateway.refuse = True
    failed = client.post("/portal/login/code", data={"phone": "13800138001"})
    assert failed.status_code == 502
    with pw.engine.connect() as conn:
        row = conn.execute(select(portal_login_codes)).one()
    assert row.delivery == "failed" and row.consumed_at is not None


def test_two_logins_racing_with_one_code_succeed_once(engine: Any) -> None:
    now = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.UTC)
    secret = "race-secret"
    with engine.begin() as conn:
        issued = portal.issue_login_code(conn, "13800138009", client="a", secret_key=secret, now=now, code="424242")
    assert isinstance(issued, portal.CodeIssued)
    barrier = threading.Barrier(2)
    results: list[object] = []

    def attempt(client: str) -> None:
        barrier.wait(5)
        with engine.begin() as conn:
            results.append(
                portal.verify_login_code(conn, "13800138009", "424242", client=client, secret_key=secret, now=now)
            )

    threads = [threading.Thread(target=attempt, args=(name,)) for name in ("b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [r for r in results if isinstance(r, portal.PhoneVerified)]
    losers = [r for r in results if isinstance(r, portal.Refused)]
    assert len(winners) == 1 and len(losers) == 1 and "used already" in losers[0].message


# --- home -----------------------------------------------------------------------------------------------------


def test_home_shows_balance_forecast_supply_and_usage_equal_to_the_ledger(pw: Any) -> None:
    world = make_world(pw)
    credit(pw, world, 100 * YUAN, "cash:home")
    # Yesterday evening, then today 08:00, 09:00 and 09:30 (Shanghai): 1 kWh yesterday, 3.5 kWh today.
    read(pw, world, [(local(20, day=22), 1_000_000), (local(22, day=22), 1_001_000)])
    read(pw, world, [(local(8), 1_002_000), (local(9), 1_003_500), (local(9, 30), 1_004_500)])
    client = tenant(pw, world)
    page = client.get("/portal/", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    with pw.engine.connect() as conn:
        account = portal.tenant_account(conn, world.org_id, world.account_id)
        assert account is not None
        balance = ledger_store.balance(conn, account.wallet).balance_micros
        today_start = portal.local_midnight(dt.date(2026, 11, 23), account.zone)
        deductions = conn.execute(
            select(func.coalesce(func.sum(ledger_postings.c.amount_micros), 0))
            .join(ledger_entries, ledger_entries.c.id == ledger_postings.c.entry_id)
            .where(
                ledger_postings.c.account_id == world.wallet_account_id,
                ledger_entries.c.kind == "deduction",
                ledger_entries.c.event_at > today_start,
            )
        ).scalar_one()
        home = portal.home(conn, account, pw.clock())
    assert home.balance_micros == balance == 100 * YUAN - 4_500_000
    assert home.today.cost_micros == -deductions == 3_500_000
    assert (home.today.energy_wh, home.month.energy_wh, home.month.cost_micros) == (3_500, 4_500, 4_500_000)
    assert sum(p.energy_wh for p in home.hourly) == 3_500
    assert [p.energy_wh for p in home.hourly[7:10]] == [1_000, 1_500, 1_000]  # a bucket is (start, end]
    assert text_of(page, "balance") == "¥95.50"
    assert text_of(page, "today-energy") == "3.50"
    assert text_of(page, "today-cost") == "¥3.50"
    assert text_of(page, "supply") == "On"
    assert "days left" in text_of(page, "forecast")
    assert 'data-energy="[' in page.text and 'name="viewport"' in page.text


def test_pages_render_in_both_languages(pw: Any) -> None:
    world = make_world(pw)
    client = tenant(pw, world)
    for path in ("/portal/", "/portal/recharge", "/portal/bills", "/portal/statements", "/portal/me",
                 "/portal/auto-recharge", "/portal/notifications"):  # fmt: skip
        zh = client.get(path, headers={"Accept-Language": "zh-CN"})
        en = client.get(path, headers={"Accept-Language": "en-US,en;q=0.9"})
        assert zh.status_code == 200 and en.status_code == 200, path
        assert '<html lang="zh-CN">' in zh.text and '<html lang="en">' in en.text, path
        assert "首页" in zh.text and "Home" in en.text, path
        assert 'content="width=device-width, initial-scale=1' in zh.text, path
        assert "<script>" not in zh.text and "style=" not in zh.text, f"{path}: inline script or style (CSP)"
    visitor = pw.anonymous()
    switched = visitor.get("/lang/en?next=/portal/login")
    assert switched.status_code in (302, 303, 307) and switched.headers["location"] == "/portal/login"
    login = visitor.get("/portal/login")
    assert "Mobile number and SMS code" in login.text and 'href="/lang/zh-CN?next=/portal/login"' in login.text


# --- recharge -------------------------------------------------------------------------------------------------


def advance_command(w: Any, command_id: str, to: str) -> None:
    """Drive one queued command as the dispatcher would: claim and send it, then the meter's answers."""
    now = w.clock()
    policy, rng = queue.RetryPolicy(), random.Random(1)
    with w.engine.begin() as conn:
        row = queue.get(conn, command_id)
        assert row is not None
        if to in ("sent", "verified"):
            row = queue.write(conn, row, queue.plan_claim(row, now), now, holder=None)
            assert row is not None and row.state is queue.CommandState.SENT
        if to == "verified":
            row = queue.write(
                conn, row, queue.after_send(row, CommandResult(ok=True), now, policy, rng), now, holder=None
            )
            assert row is not None and row.state is queue.CommandState.ACKED
            snapshot = MeterSnapshot(row.meter_id, now, relay_open=False)
            row = queue.write(conn, row, queue.after_read(row, snapshot, now, policy, rng), now, holder=None)
            assert row is not None and row.state is queue.CommandState.VERIFIED


def stage(client: TestClient, order_no: str) -> str:
    answer = client.get(f"/portal/recharge/{order_no}/status")
    assert answer.status_code == 200
    match = re.search(r'data-stage="([a-z_]+)"', answer.text)
    assert match
    return match.group(1)


def test_a_sandbox_recharge_goes_paid_then_sent_to_meter_then_power_restored(pw: Any) -> None:
    world = make_world(pw)
    credit(pw, world, 20 * YUAN, "cash:start")
    read(pw, world, [(local(8), 1_000_000), (local(9), 1_025_000)])  # 25 kWh: the balance is -5 yuan, tripped
    assert prepaid.process_outbox(pw.engine, pw.clock()).commands == 1
    client = tenant(pw, world)
    home = client.get("/portal/", headers={"Accept-Language": "en"})
    assert text_of(home, "supply") == "Cut off"
    form = client.get("/portal/recharge")
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form.text)
    assert key and 'value="sandbox"' in form.text
    data = {"amount": "50", "channel": "sandbox", "idempotency_key": key.group(1)}
    placed = client.post("/portal/recharge", data=data)
    assert placed.status_code == 303
    order_no = placed.headers["location"].rsplit("/", 1)[1]
    replay = client.post("/portal/recharge", data=data)
    assert replay.status_code == 303 and replay.headers["location"] == placed.headers["location"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert stage(client, order_no) == "awaiting_payment"
    paid = client.post(f"/portal/recharge/{order_no}/pay", data={"idempotency_key": "pay-1"})
    assert paid.status_code == 303
    assert stage(client, order_no) == "paid"
    assert prepaid.process_outbox(pw.engine, pw.clock()).closes == 1
    assert stage(client, order_no) == "queued"
    with pw.engine.connect() as conn:
        close = [c for c in queue.commands_of(conn, world.meter_id) if c.command.kind.value == "close"]
    assert len(close) == 1
    advance_command(pw, close[0].command_id, "sent")
    page = client.get(f"/portal/recharge/{order_no}", headers={"Accept-Language": "en"})
    assert "Sent to meter" in page.text and 'hx-trigger="every 2s"' in page.text
    advance_command(pw, close[0].command_id, "verified")
    done = client.get(f"/portal/recharge/{order_no}/status", headers={"Accept-Language": "en"})
    assert "Power restored" in done.text and "hx-trigger" not in done.text, "a finished recharge stops polling"
    with pw.engine.connect() as conn:
        assert ledger_store.balance(conn, "wallet:ORG1/A-101").balance_micros == 45 * YUAN
        assert [r.subject for r in audit_records(conn, action="recharge")] == [f"order:{order_no}"]


def test_a_recharge_outside_the_sites_rules_is_refused_naming_the_amount(pw: Any) -> None:
    world = make_world(pw)
    client = tenant(pw, world)
    low = client.post("/portal/recharge", data={"custom_amount": "5", "channel": "sandbox", "idempotency_key": "k1"})
    assert low.status_code == 422 and "minimum purchase" in low.text
    high = client.post("/portal/recharge", data={"custom_amount": "600", "channel": "sandbox", "idempotency_key": "k2"})
    assert high.status_code == 422 and "hoarding limit" in high.text
    bad = client.post(
        "/portal/recharge", data={"custom_amount": "1.234", "channel": "sandbox", "idempotency_key": "k3"}
    )
    assert bad.status_code == 422 and "amount" in bad.text
    channel = client.post("/portal/recharge", data={"amount": "50", "channel": "cashier", "idempotency_key": "k4"})
    assert channel.status_code == 422 and "channel" in channel.text
    missing_key = client.post("/portal/recharge", data={"amount": "50", "channel": "sandbox"})
    assert missing_key.status_code == 400
    with pw.engine.connect() as conn:
        assert portal.orders_of(conn, portal.tenant_account(conn, world.org_id, world.account_id)) == []  # type: ignore[arg-type]


# --- bills, statements, preferences, auto-recharge --------------------------------------------------------------


def test_bills_list_orders_and_a_receipt_and_another_account_is_not_found(pw: Any) -> None:
    world = make_world(pw)
    other = make_world(pw, account_no="A-102", phone="13800138002")
    stranger = make_world(pw, org="ORG2", account_no="A-101", phone="13800138003")
    client = tenant(pw, world)
    placed = client.post("/portal/recharge", data={"amount": "20", "channel": "sandbox", "idempotency_key": "b1"})
    order_no = placed.headers["location"].rsplit("/", 1)[1]
    client.post(f"/portal/recharge/{order_no}/pay", data={"idempotency_key": "b2"})
    bills = client.get("/portal/bills")
    assert order_no in bills.text
    receipt = client.get(f"/portal/bills/{order_no}", headers={"Accept-Language": "en"})
    assert receipt.status_code == 200 and "¥20.00" in receipt.text and 'data-testid="unpaid"' not in receipt.text
    for neighbour in (other, stranger):
        peer = tenant(pw, neighbour)
        assert peer.get(f"/portal/bills/{order_no}").status_code == 404
        assert peer.get(f"/portal/recharge/{order_no}").status_code == 404
        assert peer.post(f"/portal/recharge/{order_no}/pay", data={"idempotency_key": "x"}).status_code == 404
        assert order_no not in peer.get("/portal/bills").text


def test_monthly_statements_come_from_the_daily_freezes(pw: Any) -> None:
    from powergate.services import freeze

    world = make_world(pw)
    credit(pw, world, 100 * YUAN, "cash:st")
    read(pw, world, [(local(8, day=20), 1_000_000), (local(0, day=21), 1_002_000), (local(0, day=22), 1_005_000)])
    for day in (20, 21):
        freeze.daily_freeze(pw.engine, world.site_id, dt.date(2026, 11, day), pw.clock())
    client = tenant(pw, world)
    listing = client.get("/portal/statements")
    assert "2026-11" in listing.text
    month = client.get("/portal/statements/2026-11", headers={"Accept-Language": "en"})
    assert month.status_code == 200
    assert text_of(month, "statement-energy") == "5.00" and text_of(month, "statement-cost") == "¥5.00"
    assert client.get("/portal/statements/2026-13").status_code == 422


def test_notification_preferences_are_saved_per_event_and_unknown_channels_refused(pw: Any) -> None:
    world = make_world(pw)
    client = tenant(pw, world)
    page = client.get("/portal/notifications")
    assert 'name="low_balance" value="sms" checked' in page.text
    saved = client.post("/portal/notifications", data={"low_balance": ["sms"], "tripped": ["sms", "voice"]})
    assert saved.status_code == 303
    with pw.engine.connect() as conn:
        account = portal.tenant_account(conn, world.org_id, world.account_id)
        assert account is not None
        prefs = portal.preferences(conn, account)
    assert prefs.chosen[portal.EventKind.LOW_BALANCE] == ("sms",)
    assert prefs.chosen[portal.EventKind.TRIPPED] == ("sms", "voice")
    assert prefs.chosen[portal.EventKind.RECHARGE_RECEIVED] == ()
    refused = client.post("/portal/notifications", data={"low_balance": ["email"]})
    assert refused.status_code == 422 and "email" in refused.text
    with pw.engine.connect() as conn:
        assert portal.preferences(conn, account).chosen[portal.EventKind.LOW_BALANCE] == ("sms",)


def test_auto_recharge_binds_and_unbinds_with_the_sites_rules(pw: Any) -> None:
    world = make_world(pw)
    client = tenant(pw, world)
    refused = client.post("/portal/auto-recharge", data={"amount": "5", "threshold": "10", "channel": "sandbox"})
    assert refused.status_code == 422 and "minimum purchase" in refused.text
    bound = client.post("/portal/auto-recharge", data={"amount": "50", "threshold": "20", "channel": "sandbox"})
    assert bound.status_code == 303
    page = client.get("/portal/auto-recharge", headers={"Accept-Language": "en"})
    assert "¥50.00" in text_of(page, "binding-state") or "On" in page.text
    assert client.post("/portal/auto-recharge/unbind", data={}).status_code == 303
    with pw.engine.connect() as conn:
        actions = [r.action for r in audit_records(conn) if r.action.endswith("autorecharge")]
    assert actions == ["bind_autorecharge", "unbind_autorecharge"]
