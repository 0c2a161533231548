"""Console pages of the second half: accounts, tariffs, finance, reports, alarms, audit, users.

A small site is seeded through the real services at September/October 2026 times (the app's clock is
2026-11-23), so October is a finished month with a known ledger:

    Gardens / B1 / 1: room 101, account A-1 (open), meter <code>-M1 on the commercial TOU tariff
                      room 102, account A-2 (pre-staged, no meter)
    A-1 in October:   +100.00 cashier recharge (Oct 5), -1.75 and -0.31 energy (Oct 10 noon, Oct 11 00:00),
                      -0.50 standing charge (Oct 15), -20.00 cash refund (Oct 20); the daily freeze of Oct 10.

Pages are fetched through the real app with real session logins, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from openpyxl import Workbook, load_workbook
from sqlalchemy import func, insert, select

from powergate.domain.ledger import EntryKind, charge_entry
from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.domain.tariff_files import load_tariff
from powergate.payments.cashier import Cashier
from powergate.services import accounts, freeze, importer, payments
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.audit import audit_records
from powergate.store.tables import ledger_entries, ledger_postings, readings, tariffs
from powergate.store.tables_headend import meter_events, meter_status
from powergate.store.tables_meterside import reconciliation_alarms
from powergate.store.tables_structure import accounts as accounts_table

STAFF_ROLES = ("admin", "operator", "finance", "viewer")
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
SETUP = dt.datetime(2026, 9, 1, 2, 0, tzinfo=dt.UTC)
TOU = (Path(__file__).parents[2] / "docs/examples/tariffs/commercial-tou.toml").read_text()
YUAN = 1_000_000


@dataclass
class Seeded:
    org_id: int
    code: str
    site_id: int
    open_account: int
    staged_account: int
    wallet: str
    meter: str
    tariff: str
    order_no: str


def _ok(value: Any) -> Any:
    assert not isinstance(value, accounts.Rejected | payments.Refused), str(value)
    return value


def local(day: int, hour: int, month: int = 10) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, tzinfo=SHANGHAI)


def _reading(meter: str, at: dt.datetime, total: int, bands: tuple[int, int, int, int], amount: int | None) -> dict:
    return {
        "id": f"{meter}@{int(at.timestamp())}", "meter_id": meter, "at": at, "total_wh": total,
        "sharp_wh": bands[0], "peak_wh": bands[1], "flat_wh": bands[2], "valley_wh": bands[3],
        "status": "rated", "amount_micros": amount, "received_at": at,
    }  # fmt: skip


def seed(web: Any, code: str = "ORG1") -> Seeded:
    org_id = web.org(code)
    tariff, meter = f"tou-{code}", f"{code}-M1"
    with web.engine.begin() as conn:
        site = _ok(
            accounts.create_site(
                conn, org_id, f"Gardens {code}", timezone="Asia/Shanghai", currency="CNY",
                channels=[PaymentChannel.CASHIER], actor="system:test", now=SETUP,
            )
        )  # fmt: skip
        building = _ok(accounts.create_building(conn, site, "B1"))
        floor = _ok(accounts.create_floor(conn, building, "1"))
        room = _ok(accounts.create_room(conn, floor, "101", 4_500, RoomUse.APARTMENT))
        _ok(accounts.create_room(conn, floor, "102", 4_500, RoomUse.APARTMENT))
        metering.add_tariff(conn, tariff, "Commercial TOU", "electricity", TOU.replace("commercial-tou", tariff), SETUP)
        first = _ok(accounts.stage_account(conn, site, "A-1", "Tenant One", phone="13800138000", actor="t", now=SETUP))
        _ok(accounts.open_account(conn, first, actor="system:test", reason="lease signed", now=SETUP))
        _ok(accounts.attach_meter(conn, meter, room, first, tariff_id=tariff, actor="t", reason="installed", now=SETUP))
        second = _ok(accounts.stage_account(conn, site, "A-2", "Tenant Two", actor="system:test", now=SETUP))
        view = accounts.account_view(conn, first)
        assert view is not None
        wallet = view.wallet
    channels = {"cashier": Cashier()}
    order = payments.NewOrder(wallet, 10_000, "cashier", "cash", operator=f"user:cashier@{code}")
    _ok(payments.pay_at_cashier(web.engine, channels, order, f"R-{code}-1", None, local(5, 10)))
    with web.engine.begin() as conn:
        conn.execute(
            insert(readings),
            [
                _reading(meter, local(10, 0), 10_000, (0, 1_000, 4_000, 5_000), None),
                _reading(meter, local(10, 12), 13_000, (0, 2_000, 6_000, 5_000), 1_750_000),
                _reading(meter, local(11, 0), 14_000, (0, 2_000, 6_000, 6_000), 310_000),
            ],
        )
        for key, amount, at in (("noon", 1_750_000, local(10, 12)), ("midnight", 310_000, local(11, 0))):
            entry = charge_entry(f"reading:{meter}@{key}", wallet, {"energy": amount}, at)
            assert entry is not None
            ledger_store.post(conn, entry, at)
        fee = charge_entry(f"standing:{meter}:10-15", wallet, {"meter_fee": 500_000}, local(15, 0),
                           kind=EntryKind.STANDING_CHARGE)  # fmt: skip
        assert fee is not None
        ledger_store.post(conn, fee, local(15, 0))
    refund = payments.RefundRequest(f"RF-{code}", wallet, 2_000, payments.Destination.CASH, "overpaid", "user:op")
    _ok(payments.refund(web.engine, channels, refund, local(20, 10)))
    # a November payment is not October's
    late = payments.NewOrder(wallet, 5_000, "cashier", "cash", operator=f"user:cashier@{code}")
    _ok(payments.pay_at_cashier(web.engine, channels, late, f"R-{code}-2", None, local(2, 10, month=11)))
    freeze.daily_freeze(web.engine, site, dt.date(2026, 10, 10), web.clock())
    with web.engine.connect() as conn:
        order_no = conn.execute(
            select(payments.orders.c.order_no).where(payments.orders.c.receipt_no == f"R-{code}-1")
        ).scalar_one()
    return Seeded(org_id, code, site, first, second, wallet, meter, tariff, str(order_no))


def _lang(client: TestClient, lang: str) -> TestClient:
    client.cookies.set("lang", lang)
    return client


def _audit(web: Any, subject: str, action: str) -> list[Any]:
    with web.engine.connect() as conn:
        return audit_records(conn, subject=subject, action=action)


# --- every page, every staff role, both languages ----------------------------------------------------------------


def test_every_page_renders_for_each_staff_role_in_both_languages(web: Any) -> None:
    s = seed(web)
    pages = [
        "/console/accounts", f"/console/accounts?site={s.site_id}&state=open&q=101",
        f"/console/accounts/{s.open_account}",
        "/console/tariffs", f"/console/tariffs/{s.tariff}", "/console/finance",
        "/console/finance?from=2026-10-01&to=2026-10-31&channel=cashier&state=paid&account=A-1",
        f"/console/finance/orders/{s.order_no}", "/console/reports",
        f"/console/reports/monthly?site={s.site_id}&month=2026-10", "/console/reports/yoy?year=2026",
        "/console/reports/energy?period=month&from=2026-10-01&to=2026-10-31", "/console/alarms?show=all",
        "/console/audit", "/console/users",
    ]  # fmt: skip
    words = {"zh-CN": ("账户", "电价", "审计"), "en": ("Accounts", "Tariffs", "Audit")}
    for role in STAFF_ROLES:
        client = web.client(role, s.org_id)
        for lang, expected in words.items():
            _lang(client, lang)
            for path in pages:
                answer = client.get(path)
                assert answer.status_code == 200, f"{role} {lang} {path}: {answer.status_code} {answer.text[:400]}"
                assert all(word in answer.text for word in expected), f"{role} {lang} {path}: not in {lang}"
                assert "<script>" not in answer.text and ' style="' not in answer.text, "the CSP forbids inline code"
    english = _lang(web.client("viewer", s.org_id), "en")
    assert "Tenant One" in english.get("/console/accounts?q=101").text
    assert "Tenant Two" not in english.get("/console/accounts?q=101").text
    detail = english.get(f"/console/tariffs/{s.tariff}").text
    assert detail.count('class="b-band-sharp"') >= 2 and "19:00-21:00" in detail, "summer day bars with sharp"


def test_operator_and_admin_pages_are_refused_to_other_roles_and_anonymous_users(web: Any) -> None:
    from web_helpers import assert_requires_auth

    s = seed(web)
    for path in ("/console/accounts", "/console/tariffs", "/console/finance", "/console/reports", "/console/alarms",
                 "/console/audit", "/console/users"):  # fmt: skip
        assert_requires_auth(web, "GET", path)
    refused = {
        "viewer": ["/console/accounts/import", "/console/tariffs/new", f"/console/tariffs/{s.tariff}/versions/new"],
        "finance": ["/console/accounts/import"],
        "operator": ["/console/tariffs/new"],
    }
    for role, paths in refused.items():
        client = web.client(role, s.org_id)
        for path in paths:
            assert client.get(path).status_code == 403, f"{role} {path}"
    viewer = web.client("viewer", s.org_id)
    form = {"reason": "test", "settlement": "cash", "idempotency_key": str(uuid.uuid4())}
    assert viewer.post(f"/console/accounts/{s.staged_account}/open", data={"reason": "x"}).status_code == 403
    assert viewer.post(f"/console/accounts/{s.open_account}/close", data=form).status_code == 403
    assert viewer.post("/console/alarms/ack", data={"alarm": "event:1", "reason": "x"}).status_code == 403
    assert web.client("operator", s.org_id).post("/console/users", data={"username": "x"}).status_code == 403
    assert web.client("finance", s.org_id).post("/console/users/keys", data={"name": "x"}).status_code == 403
    # no CSRF token: refused before anything runs
    operator = web.client("operator", s.org_id)
    del operator.headers["X-CSRF-Token"]
    assert operator.post(f"/console/accounts/{s.staged_account}/open", data={"reason": "x"}).status_code == 403


def test_another_organisations_objects_answer_404(web: Any) -> None:
    s = seed(web)
    stranger = web.client("admin", web.org("ORG2"))
    for path in (
        f"/console/accounts/{s.open_account}",
        f"/console/tariffs/{s.tariff}",
        f"/console/tariffs/{s.tariff}/versions/new",
        f"/console/finance/orders/{s.order_no}",
        f"/console/reports/monthly?site={s.site_id}&month=2026-10",
        f"/console/finance?site={s.site_id}",
    ):
        assert stranger.get(path).status_code == 404, path
    answer = stranger.post(f"/console/accounts/{s.staged_account}/open", data={"reason": "mine now"})
    assert answer.status_code == 404
    assert "Tenant One" not in stranger.get("/console/accounts?q=Tenant").text
    assert s.order_no not in stranger.get("/console/finance?from=2026-10-01&to=2026-11-30").text
    assert "account:" not in "".join(stranger.get("/console/audit").text.split("<tbody>")[1:])


# --- accounts ----------------------------------------------------------------------------------------------------


def test_a_pre_staged_account_opens_in_one_click_with_its_reason_audited(web: Any) -> None:
    s = seed(web)
    operator = _lang(web.client("operator", s.org_id), "en")
    empty = operator.post(f"/console/accounts/{s.staged_account}/open", data={"reason": "  "})
    assert empty.status_code == 422 and "Give a reason" in empty.text
    opened = operator.post(f"/console/accounts/{s.staged_account}/open", data={"reason": "keys handed over"})
    assert opened.status_code == 303
    assert "The account is open." in operator.get(opened.headers["location"]).text
    (record,) = _audit(web, f"account:{s.staged_account}", "open_account")
    assert record.reason == "keys handed over" and record.actor.startswith("user:operator")
    again = operator.post(f"/console/accounts/{s.staged_account}/open", data={"reason": "twice"})
    assert again.status_code == 422 and "not pre_staged" in again.text


def test_closing_refunds_the_balance_in_cash_once_even_when_the_form_is_sent_twice(web: Any) -> None:
    s = seed(web)
    admin = _lang(web.client("admin", s.org_id), "en")
    with web.engine.connect() as conn:
        balance = ledger_store.balance(conn, s.wallet).balance_micros
    assert balance == (100 - 1.75 - 0.31 - 0.5 - 20 + 50) * YUAN
    form = {"reason": "tenant moved out", "settlement": "cash", "idempotency_key": str(uuid.uuid4())}
    first = admin.post(f"/console/accounts/{s.open_account}/close", data=form)
    assert first.status_code == 200, first.text[:500]
    assert "The account is closed and settled." in first.text and "¥127.44" in first.text
    second = admin.post(f"/console/accounts/{s.open_account}/close", data=form)
    assert second.status_code == 200 and second.headers.get("Idempotent-Replayed") == "true"
    assert second.text == first.text
    with web.engine.connect() as conn:
        assert ledger_store.balance(conn, s.wallet).balance_micros == 0
        refunds = conn.execute(
            select(func.count())
            .select_from(payments.refunds)
            .where(payments.refunds.c.refund_no == f"close-{s.open_account}")
        ).scalar_one()
    assert refunds == 1
    assert [r.reason for r in _audit(web, f"account:{s.open_account}", "close_account")] == ["tenant moved out"]


def test_closing_with_the_settlement_later_keeps_the_balance_until_settled(web: Any) -> None:
    s = seed(web)
    operator = _lang(web.client("operator", s.org_id), "en")
    form = {"reason": "moved out, refund by bank", "settlement": "later", "idempotency_key": str(uuid.uuid4())}
    closed = operator.post(f"/console/accounts/{s.open_account}/close", data=form)
    assert closed.status_code == 200 and "settled later" in closed.text
    detail = operator.get(f"/console/accounts/{s.open_account}").text
    assert "Settle the balance" in detail
    form = {"reason": "paid at the desk", "settlement": "cash", "idempotency_key": str(uuid.uuid4())}
    settled = operator.post(f"/console/accounts/{s.open_account}/close", data=form)
    assert settled.status_code == 200 and "closed and settled" in settled.text
    with web.engine.connect() as conn:
        assert ledger_store.balance(conn, s.wallet).balance_micros == 0
    missing = operator.post(f"/console/accounts/{s.open_account}/close", data={"reason": "x", "idempotency_key": "k"})
    assert missing.status_code == 422


def _upload_name(web: Any, s: Seeded, token: str) -> str:
    from powergate.web.console.accounts import _upload_path

    return _upload_path(s.org_id, token).name


def _sheet(rows: list[list[str]]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = importer.SHEET_NAME
    sheet.append(list(importer.COLUMN_KEYS))
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def test_an_import_is_previewed_with_every_bad_row_then_applied_all_at_once(web: Any) -> None:
    s = seed(web)
    operator = _lang(web.client("operator", s.org_id), "en")
    template = operator.get("/console/accounts/import/template.xlsx")
    assert template.status_code == 200 and "import" in load_workbook(io.BytesIO(template.content)).sheetnames
    site = f"Gardens {s.code}"
    good = [s.code, site, "B2", "3", "301", "55.5", "apartment", "", "", "B2-301", "Wang Wu", "13900139000", ""]
    bad_area = [s.code, site, "B2", "3", "302", "-1", "apartment", "", "", "", "", "", ""]
    foreign = ["ORG2", "Elsewhere", "B1", "1", "1", "10", "shop", "", "", "", "", "", ""]
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    rejected = operator.post(
        "/console/accounts/import/preview", files={"file": ("rooms.xlsx", _sheet([good, bad_area, foreign]), xlsx)}
    )
    assert rejected.status_code == 422
    assert "Nothing was imported" in rejected.text and "F (area_m2)" in rejected.text
    assert "is not your organisation" in rejected.text and "Import now" not in rejected.text
    preview = operator.post("/console/accounts/import/preview", files={"file": ("rooms.xlsx", _sheet([good]), xlsx)})
    assert preview.status_code == 200 and "Import now" in preview.text
    with web.engine.connect() as conn:
        assert conn.execute(select(accounts_table.c.id).where(accounts_table.c.account_no == "B2-301")).first() is None
    token = re.search(r'name="token" value="([0-9a-f]{64})"', preview.text)
    assert token is not None
    no_reason = operator.post("/console/accounts/import/apply", data={"token": token.group(1), "reason": " "})
    assert no_reason.status_code == 422 and "Give a reason" in no_reason.text
    applied = operator.post(
        "/console/accounts/import/apply",
        data={"token": token.group(1), "filename": "rooms.xlsx", "reason": "new wing B2"},
    )
    assert applied.status_code == 200 and "Imported" in applied.text
    with web.engine.connect() as conn:
        state = conn.execute(select(accounts_table.c.state).where(accounts_table.c.account_no == "B2-301")).scalar()
    assert state == "pre_staged"
    (record,) = _audit(web, "import:" + _upload_name(web, s, token.group(1)), "import_sheet")
    assert record.reason == "new wing B2" and record.detail["rows"] == 1
    replay = operator.post("/console/accounts/import/apply", data={"token": token.group(1)})
    assert replay.status_code == 404


# --- tariffs -----------------------------------------------------------------------------------------------------


def _version_form(**changes: str) -> dict[str, str]:
    form = {
        "effective_from": "2027-01-01", "pricing": "tou", "reason": "2027 prices",
        "tou.prices.sharp": "1.50", "tou.prices.peak": "1.20", "tou.prices.flat": "0.70", "tou.prices.valley": "0.33",
        "season_count": "1", "seasons[0].name": "all year", "seasons[0].months": "1-12",
        "seasons[0].schedule":
            "00:00 valley\n08:00 flat\n10:00 peak\n19:00-21:00 sharp\n21:00 flat\n23:00-24:00 valley",
        "seasons[0].weekend_schedule": "00:00 valley\n08:00 flat\n22:00 valley",
    }  # fmt: skip
    form.update(changes)
    return form


def _document(web: Any, tariff_id: str) -> str:
    with web.engine.connect() as conn:
        return str(conn.execute(select(tariffs.c.document).where(tariffs.c.id == tariff_id)).scalar_one())


def test_an_invalid_tariff_version_shows_each_problem_next_to_its_field_and_saves_nothing(web: Any) -> None:
    s = seed(web)
    finance = _lang(web.client("finance", s.org_id), "en")
    before = _document(web, s.tariff)
    bad = _version_form(**{"seasons[0].schedule": "00:00 valley\n08:00 midpeak\n10:00-20:00 flat",
                           "tou.prices.peak": "abc", "effective_from": "2026-13-01"})  # fmt: skip
    answer = finance.post(f"/console/tariffs/{s.tariff}/versions", data=bad)
    assert answer.status_code == 422
    page = answer.text
    assert "Nothing was saved" in page
    schedule_errors = page.split('id="err-seasons[0].schedule"')[1].split("</ul>")[0]
    assert "line 2 (band): unknown band &#39;midpeak&#39;" in schedule_errors
    assert "&#39;abc&#39; is not a decimal amount" in page.split('id="err-tou.prices.peak"')[1].split("</ul>")[0]
    assert "2026-13-01" in page.split('id="err-effective_from"')[1].split("</ul>")[0]
    assert "08:00 midpeak" in page, "the operator's text is kept"
    gap = finance.post(
        f"/console/tariffs/{s.tariff}/versions", data=_version_form(**{"seasons[0].schedule": "00:00-20:00 flat"})
    )
    assert gap.status_code == 422
    assert "gap 20:00-24:00 has no band" in gap.text.split('id="err-seasons[0].schedule"')[1].split("</ul>")[0]
    past = finance.post(f"/console/tariffs/{s.tariff}/versions", data=_version_form(effective_from="2026-11-01"))
    assert past.status_code == 422 and "must be in the future" in past.text
    assert _document(web, s.tariff) == before
    assert _audit(web, f"tariff:{s.tariff}", "add_tariff_version") == []


def test_a_valid_tariff_version_is_stored_audited_and_drawn(web: Any) -> None:
    s = seed(web)
    admin = _lang(web.client("admin", s.org_id), "zh-CN")
    form_page = admin.get(f"/console/tariffs/{s.tariff}/versions/new")
    assert form_page.status_code == 200 and "19:00-21:00 sharp" in form_page.text, "prefilled from the latest version"
    more = admin.post(f"/console/tariffs/{s.tariff}/versions", data=_version_form(intent="add_season"))
    assert more.status_code == 200 and 'name="seasons[1].schedule"' in more.text
    saved = admin.post(f"/console/tariffs/{s.tariff}/versions", data=_version_form())
    assert saved.status_code == 303, saved.text[:600]
    assert saved.headers["location"] == f"/console/tariffs/{s.tariff}?saved=2"
    tariff = load_tariff(_document(web, s.tariff))
    assert len(tariff.versions) == 3
    assert tariff.versions[2].effective_from == dt.datetime(2027, 1, 1)
    assert dict(tariff.versions[2].tou.prices_micros)[1] == 1_500_000  # type: ignore[union-attr]
    assert "# Created" not in _document(web, s.tariff) and "# added by user:admin" in _document(web, s.tariff)
    (record,) = _audit(web, f"tariff:{s.tariff}", "add_tariff_version")
    assert record.reason == "2027 prices" and record.detail["version"] == 2
    page = admin.get(saved.headers["location"]).text
    assert "已保存" in page and "2027-01-01 00:00" in page
    newest = page.split('id="v2"')[1].split("</section>")[0]
    assert newest.count("<svg") == 2, "workday and weekend bars of the one season"
    assert '<rect x="1140" y="0" width="120" height="24" class="b-band-sharp">' in newest


def test_a_new_tariff_belongs_to_its_organisation_and_a_shared_one_is_read_only(web: Any) -> None:
    s = seed(web)
    finance = _lang(web.client("finance", s.org_id), "en")
    form = _version_form(pricing="flat", price="0.6", tariff_id="flat-2027", name="Flat 2027", commodity="electricity")
    created = finance.post("/console/tariffs", data=form)
    assert created.status_code == 303, created.text[:600]
    assert "flat-2027" in finance.get("/console/tariffs").text
    assert web.client("admin", web.org("ORG2")).get("/console/tariffs/flat-2027").status_code == 404
    taken = finance.post("/console/tariffs", data=form)
    assert taken.status_code == 422 and "exists already" in taken.text
    # ORG2's meter on ORG1's TOU tariff makes it shared: read-only for both
    org2 = web.org("ORG2")
    with web.engine.begin() as conn:
        site = _ok(accounts.create_site(conn, org2, "Other", timezone="Asia/Shanghai", currency="CNY",
                                         channels=[], actor="t", now=SETUP))  # fmt: skip
        floor = _ok(accounts.create_floor(conn, _ok(accounts.create_building(conn, site, "X")), "1"))
        room = _ok(accounts.create_room(conn, floor, "1", 100, RoomUse.SHOP))
        account = _ok(accounts.stage_account(conn, site, "Z-1", "Z", actor="t", now=SETUP))
        _ok(accounts.attach_meter(conn, "ORG2-M", room, account, tariff_id=s.tariff, actor="t", reason="r", now=SETUP))
    refused = finance.post(f"/console/tariffs/{s.tariff}/versions", data=_version_form())
    assert refused.status_code == 422 and "read-only" in refused.text


def test_the_quote_tool_prices_readings_like_the_cli(web: Any) -> None:
    s = seed(web)
    viewer = _lang(web.client("viewer", s.org_id), "en")
    csv = (Path(__file__).parents[2] / "docs/examples/tariffs/readings.csv").read_text()
    answer = viewer.post(f"/console/tariffs/{s.tariff}/quote", data={"readings": csv, "timezone": "Asia/Shanghai"})
    assert answer.status_code == 200, answer.text[:500]
    from powergate.cli.tariff import quote_json
    from powergate.domain.calendar import SiteCalendar
    from powergate.domain.money import format_money
    from powergate.domain.rating import RatingContext, quote
    from powergate.domain.tariff_files import load_readings

    tariff = load_tariff(_document(web, s.tariff))
    context = RatingContext(tariff, SiteCalendar.china(), dt.timezone(dt.timedelta(hours=8)))
    expected = quote_json(tariff, "Asia/Shanghai", quote(load_readings(csv), context))
    total = sum(m["total_amount_micros"] for m in expected["meters"])
    assert f"Total: {format_money(total)}" in answer.text
    bad = viewer.post(f"/console/tariffs/{s.tariff}/quote", data={"readings": "reading_id,meter_id\nr1,m1\n"})
    assert bad.status_code == 422 and "timestamp" in bad.text


# --- finance and reports -----------------------------------------------------------------------------------------


def test_orders_filter_and_the_income_endpoint_and_excel_agree(web: Any) -> None:
    s = seed(web)
    finance = _lang(web.client("finance", s.org_id), "en")
    october = finance.get("/console/finance?from=2026-10-01&to=2026-10-31").text
    assert s.order_no in october and "R-ORG1-2" not in october
    assert "No order matches." in finance.get("/console/finance?from=2026-10-01&to=2026-10-31&channel=wechat").text
    detail = finance.get(f"/console/finance/orders/{s.order_no}").text
    assert "R-ORG1-1" in detail and "¥100.00" in detail
    data = finance.get("/console/finance/income.json?period=month&from=2026-10-01&to=2026-11-30").json()
    assert data["labels"] == ["2026-10", "2026-11"]
    assert data["net_fen"] == {"cashier": [10_000 - 2_000, 5_000]}
    assert (data["income_fen"], data["refunds_fen"], data["net_total_fen"]) == (15_000, 2_000, 13_000)
    sheet = load_workbook(
        io.BytesIO(finance.get("/console/finance/income.xlsx?period=month&from=2026-10-01&to=2026-11-30").content)
    ).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:3] == ("Period", "Channel", "Payments") and rows[-1][0] == "Total"
    assert rows[-1][6] == 130 and sheet.cell(row=2, column=4).number_format == "#,##0.00"
    assert finance.get("/console/finance?from=2026-13-01").status_code == 422
    assert finance.get("/console/finance/income.json?period=week").status_code == 422


def test_one_sites_income_adds_up_to_its_order_list_also_for_orders_recorded_without_a_site(web: Any) -> None:
    """A second site's opening credit is sold as the demo seed sells one (the policy handed in, no site written
    on the order): the API's order list, the console's order list and its income all give it to the site of
    the account it credits, and to no other site."""
    s = seed(web)
    with web.engine.begin() as conn:
        annex = _ok(
            accounts.create_site(
                conn, s.org_id, "Annex", timezone="Asia/Shanghai", currency="CNY",
                channels=[PaymentChannel.CASHIER], actor="system:test", now=SETUP,
            )
        )  # fmt: skip
        tenant = _ok(accounts.stage_account(conn, annex, "X-1", "Annex Tenant", actor="system:test", now=SETUP))
        _ok(accounts.open_account(conn, tenant, actor="system:test", reason="lease signed", now=SETUP))
        view = accounts.account_view(conn, tenant)
        assert view is not None
    opening = payments.NewOrder(view.wallet, 7_700, "cashier", "cash", operator="user:finance@ORG1")
    policy = payments.PaymentPolicy(frozenset({"cashier"}))
    _ok(payments.pay_at_cashier(web.engine, {"cashier": Cashier()}, opening, "OPEN-X-1", policy, local(7, 9)))
    with web.engine.connect() as conn:
        recorded = conn.execute(
            select(payments.orders.c.order_no, payments.orders.c.site_id).where(
                payments.orders.c.receipt_no == "OPEN-X-1"
            )
        ).one()
    assert recorded.site_id is None, "the order carries no site of its own"

    api = web.bearer("finance", s.org_id)
    console = _lang(web.client("finance", s.org_id), "en")
    days = {"from": "2026-10-01", "to": "2026-11-30"}
    window = {"since": "2026-09-30T16:00:00Z", "until": "2026-11-30T16:00:00Z", "limit": 500}
    totals = {}
    for site, expected in ((s.site_id, 15_000), (annex, 7_700)):
        listed = api.get("/api/v1/orders", params={**window, "site_id": site})
        assert listed.status_code == 200, listed.text
        paid = [o for o in listed.json()["items"] if o["state"] in ("paid", "refunded", "partially_refunded")]
        income = console.get("/console/finance/income.json", params={**days, "period": "month", "site": site})
        assert income.status_code == 200, income.text
        assert sum(o["amount_fen"] for o in paid) == income.json()["income_fen"] == expected
        page = console.get("/console/finance", params={**days, "site": site}).text
        assert (recorded.order_no in page) is (site == annex) and (s.order_no in page) is (site == s.site_id)
        totals[site] = income.json()["income_fen"]
    everything = console.get("/console/finance/income.json", params={**days, "period": "month"}).json()
    assert everything["income_fen"] == sum(totals.values())


def _ledger_month(web: Any, wallet: str, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    """The wallet's postings by entry kind in [start, end), and its balance at ``end``: straight from the ledger."""
    from powergate.store.tables import ledger_accounts

    with web.engine.connect() as conn:
        wallet_id = conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.code == wallet)).scalar_one()
        rows = conn.execute(
            select(ledger_entries.c.kind, ledger_entries.c.event_at, ledger_postings.c.amount_micros)
            .join(ledger_postings, ledger_postings.c.entry_id == ledger_entries.c.id)
            .where(ledger_postings.c.account_id == wallet_id)
        ).all()
    sums: dict[str, int] = {"closing": sum(int(a) for _, at, a in rows if at < end)}
    for kind, at, amount in rows:
        if start <= at < end:
            sums[kind] = sums.get(kind, 0) + int(amount)
    return sums


def test_the_monthly_report_and_its_excel_equal_the_ledger_to_the_micro(web: Any) -> None:
    s = seed(web)
    viewer = _lang(web.client("viewer", s.org_id), "zh-CN")
    page = viewer.get(f"/console/reports/monthly?site={s.site_id}&month=2026-10")
    assert page.status_code == 200 and "月度综合报表" in page.text
    assert "¥77.44" in page.text, "closing balance of A-1"
    xlsx = viewer.get(f"/console/reports/monthly?site={s.site_id}&month=2026-10&format=xlsx")
    assert xlsx.status_code == 200 and xlsx.headers["content-type"].startswith("application/vnd.openxmlformats")
    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    header_index = next(i for i, row in enumerate(rows) if row[0] == "户号")
    header = rows[header_index]
    lines = {row[0]: dict(zip(header, row, strict=True)) for row in rows[header_index + 1 :]}
    total = lines["合计"]
    ledger = _ledger_month(web, s.wallet, local(1, 0), local(1, 0, month=11))

    def micros(value: float) -> int:
        return round(value * YUAN)

    assert micros(total["充值 (元)"]) == ledger["recharge"] == 100 * YUAN
    assert micros(total["扣费 (元)"]) == -ledger["deduction"] == 2_060_000
    assert micros(total["其他费用 (元)"]) == -ledger["standing_charge"] == 500_000
    assert micros(total["退费 (元)"]) == -ledger["refund"] == 20 * YUAN
    assert micros(total["期末余额 (元)"]) == ledger["closing"] == 77_440_000
    assert micros(total["期初余额 (元)"]) == 0
    assert lines["A-1"]["用电量 (kWh)"] == 4 and lines["A-1"]["峰 (kWh)"] == 1 and lines["A-1"]["平 (kWh)"] == 2
    assert micros(lines["A-1"]["电费 (冻结, 元)"]) == 2_060_000
    assert "A-2" in lines and micros(lines["A-2"]["期末余额 (元)"]) == 0
    closing_column = header.index("期末余额 (元)") + 1
    assert sheet.cell(row=header_index + 2, column=closing_column).number_format == "#,##0.00"
    english = _lang(viewer, "en").get(f"/console/reports/monthly?site={s.site_id}&month=2026-10&format=xlsx")
    english_sheet = load_workbook(io.BytesIO(english.content)).active
    assert english_sheet is not None
    header_en = next(row for row in english_sheet.iter_rows(values_only=True) if row[0] == "Account")
    assert "Closing balance (yuan)" in header_en


def test_year_on_year_and_energy_reports_come_from_the_freezes(web: Any) -> None:
    s = seed(web)
    viewer = _lang(web.client("viewer", s.org_id), "en")
    energy = viewer.get("/console/reports/energy?period=day&from=2026-10-01&to=2026-10-31")
    assert energy.status_code == 200 and "2026-10-10" in energy.text and "4.00" in energy.text
    sheet = load_workbook(io.BytesIO(viewer.get(
        "/console/reports/energy?period=month&from=2026-10-01&to=2026-10-31&format=xlsx").content)).active  # fmt: skip
    assert sheet is not None
    assert list(sheet.iter_rows(values_only=True))[1][:2] == ("2026-10", 4)
    yoy = viewer.get(f"/console/reports/yoy?site={s.site_id}&year=2026")
    assert yoy.status_code == 200 and "2026-10" in yoy.text
    yoy_sheet = load_workbook(io.BytesIO(viewer.get("/console/reports/yoy?year=2026&format=xlsx").content)).active
    assert yoy_sheet is not None
    october = list(yoy_sheet.iter_rows(values_only=True))[10]
    assert october[0] == "2026-10" and october[1] == 4 and october[2] == 0 and october[3] is None
    assert viewer.get("/console/reports/energy?from=2026-11-01&to=2026-10-01").status_code == 422
    assert viewer.get("/console/reports/monthly?month=2026-1").status_code == 422


# --- alarms, audit, users ----------------------------------------------------------------------------------------


def test_alarms_are_acknowledged_once_with_a_reason_audited(web: Any) -> None:
    s = seed(web)
    now = web.clock()
    with web.engine.begin() as conn:
        event_id = conn.execute(
            insert(meter_events).values(meter_id=s.meter, kind="cover_open", at=now, recorded_at=now, detail="")
            .returning(meter_events.c.id)
        ).scalar_one()  # fmt: skip
        alarm_id = conn.execute(
            insert(reconciliation_alarms).values(
                day=dt.date(2026, 11, 22), subject=f"meter:{s.meter}", kind="remaining_amount",
                expected=1, actual=2, message="the meter says 0.02 more", created_at=now,
            ).returning(reconciliation_alarms.c.id)
        ).scalar_one()  # fmt: skip
        conn.execute(insert(meter_status).values(meter_id=s.meter, online=False, last_seen_at=now, updated_at=now))
    operator = _lang(web.client("operator", s.org_id), "en")
    page = operator.get("/console/alarms").text
    assert f'value="event:{event_id}"' in page and f'value="reconciliation:{alarm_id}"' in page
    assert ("the meter says 0.02 more" in page and "Cover open" in page) or "cover" in page.lower()
    offline = re.search(r'value="(offline:[^"]+)"', page)
    assert offline is not None
    no_reason = operator.post("/console/alarms/ack", data={"alarm": f"event:{event_id}", "reason": ""})
    assert no_reason.status_code == 422
    for key in (f"event:{event_id}", f"reconciliation:{alarm_id}", offline.group(1)):
        done = operator.post("/console/alarms/ack", data={"alarm": key, "reason": "checked on site"})
        assert done.status_code == 303, done.text[:300]
        (record,) = _audit(web, f"alarm:{key}", "ack_alarm")
        assert record.reason == "checked on site"
    assert "Nothing to show." in operator.get("/console/alarms").text
    from powergate.services import queries

    with web.engine.connect() as conn:  # the HTTP API's read model sees the console's acknowledgement
        (seen,) = queries.list_reconciliation_alarms(conn, queries.Scope(s.org_id), acknowledged=True).items
    assert seen.id == alarm_id and seen.acknowledged_by is not None and seen.acknowledged_by.startswith("user:operator")
    shown = operator.get("/console/alarms?show=all").text
    assert shown.count("user:operator") >= 3
    twice = operator.post("/console/alarms/ack", data={"alarm": f"event:{event_id}", "reason": "again"})
    assert twice.status_code == 409 and "acknowledged already" in twice.text
    stranger = web.client("operator", web.org("ORG2"))
    assert stranger.post("/console/alarms/ack", data={"alarm": f"event:{event_id}", "reason": "x"}).status_code == 404


def test_the_audit_log_filters_and_pages_by_id(web: Any) -> None:
    s = seed(web)
    viewer = _lang(web.client("viewer", s.org_id), "en")
    everything = viewer.get("/console/audit").text
    assert "open_account" in everything and "lease signed" in everything
    only_refunds = viewer.get("/console/audit?action=refund").text.split("<tbody>")[1]
    assert "overpaid" in only_refunds and "open_account" not in only_refunds
    by_subject = viewer.get(f"/console/audit?subject=account:{s.open_account}").text.split("<tbody>")[1]
    assert "open_account" in by_subject and "stage_account" in by_subject
    assert "No record matches." in viewer.get("/console/audit?from=2027-01-01").text
    assert "No record matches." in viewer.get(f"/console/audit?subject=account:{s.open_account}9").text
    assert "open_account" in viewer.get("/console/audit?subject=ccount").text
    with web.engine.begin() as conn:
        from powergate.store.audit import record_audit

        for n in range(60):
            record_audit(conn, f"user:bulk@{s.code}", "test_action", f"account:{s.open_account}", f"n{n}", {}, SETUP)
    first = viewer.get("/console/audit?action=test_action")
    older = re.search(r'href="(\?[^"]*before=\d+)" rel="next"', first.text)
    assert older is not None
    second = viewer.get("/console/audit" + older.group(1).replace("&amp;", "&")).text
    reasons_first = set(re.findall(r"<td>(n\d+)</td>", first.text))
    reasons_second = set(re.findall(r"<td>(n\d+)</td>", second))
    assert len(reasons_first) == 50 and len(reasons_second) == 10 and not reasons_first & reasons_second
    assert viewer.get("/console/audit?before=x").status_code == 422


def test_an_admin_manages_users_roles_and_api_keys_shown_once(web: Any) -> None:
    s = seed(web)
    admin = _lang(web.client("admin", s.org_id), "en")
    weak = admin.post("/console/users", data={"username": "wang", "password": "short", "role": "operator"})
    assert weak.status_code == 422 and "password" in weak.text
    made = admin.post("/console/users", data={"username": "wang", "password": "long-enough-1", "role": "operator",
                                              "reason": "new night operator"})  # fmt: skip
    assert made.status_code == 303
    tenant = admin.post("/console/users", data={"username": "tenant-a1", "password": "long-enough-1", "role": "tenant",
                                                "account_no": "A-1"})  # fmt: skip
    assert tenant.status_code == 303
    page = admin.get("/console/users").text
    assert "API key created" not in page
    user_id = re.search(r'action="/console/users/(\d+)/role"[^>]*>\s*<input[^>]*>\s*<select[^>]*>(?:(?!</select>).)*'
                        r'<option value="operator" selected', page, re.S)  # fmt: skip
    assert user_id is not None and "A-1" in page
    changed = admin.post(
        f"/console/users/{user_id.group(1)}/role", data={"role": "finance", "reason": "moved to finance"}
    )
    assert changed.status_code == 303
    assert [r.reason for r in _audit(web, f"user:{s.code}/wang", "set_role")] == ["moved to finance"]
    disabled = admin.post(f"/console/users/{user_id.group(1)}/disable", data={"enable": "0"})
    assert disabled.status_code == 303 and "User disabled." in admin.get(disabled.headers["location"]).text
    key = admin.post("/console/users/keys", data={"name": "erp", "role": "viewer", "user_id": _admin_id(web, s)})
    assert key.status_code == 200 and key.headers["cache-control"] == "no-store"
    secret = re.search(r'<code id="b-new-key">(pg_[^<]+)</code>', key.text)
    assert secret is not None
    api = web.anonymous()
    assert api.get("/console/users", headers={"X-API-Key": secret.group(1)}).status_code == 200
    assert secret.group(1) not in admin.get("/console/users").text, "shown once"
    key_id = re.search(r'action="/console/users/keys/(\d+)/revoke"', admin.get("/console/users").text)
    assert key_id is not None
    assert (
        admin.post(f"/console/users/keys/{key_id.group(1)}/revoke", data={"reason": "erp retired"}).status_code == 303
    )
    assert api.get("/console/users", headers={"X-API-Key": secret.group(1)}).status_code == 303
    stranger = web.client("admin", web.org("ORG2"))
    assert stranger.post(f"/console/users/{user_id.group(1)}/role", data={"role": "admin"}).status_code == 404


def _admin_id(web: Any, s: Seeded) -> str:
    from powergate.services import users

    with web.engine.connect() as conn:
        admins = [u for u in users.list_users(conn, s.org_id) if u.role.value == "admin"]
    return str(admins[0].id)
