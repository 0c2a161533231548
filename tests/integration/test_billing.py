"""Property billing (issue 9) on SQLite and PostgreSQL: a per-m² fee across a mid-month tenant change,
common-area apportionment by each method, post-paid bills that match ``powergate tariff quote``, and the bill
life cycle paid through a payment channel; the ledger audit and the reconciliation stay exact throughout."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import Engine, select
from test_freeze import add_reading

from powergate.cli import main
from powergate.domain.billing import Basis, Frequency, Method, Schedule, Source
from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.payments.cashier import Cashier
from powergate.services import accounts as structure
from powergate.services import billing, freeze, payments, reconcile
from powergate.store import ledger as ledger_store
from powergate.store.metering import add_tariff
from powergate.store.tables import ledger_accounts
from powergate.store.tables_notify import notifications

TZ = ZoneInfo("Asia/Shanghai")
EXAMPLES = Path(__file__).parents[2] / "docs/examples/tariffs"
T0 = dt.datetime(2026, 10, 1, tzinfo=TZ).astimezone(dt.UTC)
NOV = dt.date(2026, 11, 1)
DEC_1 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=TZ).astimezone(dt.UTC)


def local(day: dt.date, hour: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=TZ).astimezone(dt.UTC)


@dataclass
class Site:
    engine: Engine
    site: int
    building: int
    floor: int

    def room(self, number: str, area_m2: int, use: RoomUse = RoomUse.APARTMENT) -> int:
        with self.engine.begin() as conn:
            room = structure.create_room(conn, self.floor, number, area_m2 * 100, use)
        assert isinstance(room, int)
        return room

    def account(self, number: str, balance_fen: int = 0) -> tuple[int, str]:
        with self.engine.begin() as conn:
            account = structure.stage_account(
                conn, self.site, number, f"Tenant {number}", phone="13800138000", actor="op", now=T0
            )
            assert isinstance(account, int)
            opened = structure.open_account(conn, account, actor="op", reason="lease", now=T0)
            assert isinstance(opened, structure.AccountView)
        if balance_fen:
            sale = payments.NewOrder(opened.wallet, balance_fen, "cashier", "cash", operator="op")
            done = payments.pay_at_cashier(self.engine, CHANNELS, sale, f"R-{number}", POLICY, T0)
            assert isinstance(done, payments.Settlement) and done.verdict is payments.Verdict.ACCEPTED, done
        return account, opened.wallet

    def attach(self, meter: str, room: int, account: int, tariff: str = "flat") -> None:
        with self.engine.begin() as conn:
            done = structure.attach_meter(conn, meter, room, account, tariff_id=tariff, actor="op", reason="x", now=T0)
        assert isinstance(done, int), done


CHANNELS: dict[str, payments.PaymentChannel] = {"cashier": Cashier()}
POLICY = payments.PaymentPolicy(frozenset({"cashier"}))


@pytest.fixture
def site(engine: Engine) -> Site:
    with engine.begin() as conn:
        for name in ("flat", "commercial-tou"):
            document = (EXAMPLES / f"{name}.toml").read_text()
            add_tariff(conn, name, name, "electricity", document, T0)
        org = structure.create_organisation(conn, "ORG", "Org", actor="admin", now=T0)
        assert isinstance(org, int)
        site_id = structure.create_site(
            conn, org, "Park", timezone="Asia/Shanghai", currency="CNY", channels=[PaymentChannel.CASHIER],
            actor="admin", now=T0,
        )  # fmt: skip
        assert isinstance(site_id, int)
        building = structure.create_building(conn, site_id, "B1")
        assert isinstance(building, int)
        floor = structure.create_floor(conn, building, "1F")
        assert isinstance(floor, int)
    return Site(engine, site_id, building, floor)


def books_are_exact(engine: Engine, days: list[dt.date]) -> None:
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []
        for day in days:
            report = reconcile.reconcile(conn, day, "Asia/Shanghai")
            assert report.ok, report.discrepancies


def sent(engine: Engine, event: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(notifications.c.channel, notifications.c.event_key).where(notifications.c.event == event)
        ).all()
    return [(str(channel), str(key)) for channel, key in rows]


def balance(engine: Engine, wallet: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(select(ledger_accounts.c.balance_micros).where(ledger_accounts.c.code == wallet)).scalar_one()
        )


def meter_days(engine: Engine, meter: str, first: dt.date, last: dt.date, kwh_a_day: int) -> None:
    """Registers at each local midnight from ``first`` to the day after ``last`` (band registers split 1:2:3:4)."""
    with engine.begin() as conn:
        day, total = first, 10_000_000
        while day <= last + dt.timedelta(days=1):
            tenth = total // 10
            bands = (tenth, 2 * tenth, 3 * tenth, total - 6 * tenth)
            add_reading(conn, meter, local(day), total, bands, None, reading_id=f"{meter}@{day}")
            day += dt.timedelta(days=1)
            total += kwh_a_day * 1000 + day.day * 10  # a little different every day


def freeze_days(engine: Engine, site_id: int, first: dt.date, last: dt.date) -> None:
    day = first
    while day <= last:
        run = freeze.daily_freeze(engine, site_id, day, local(last + dt.timedelta(days=2)))
        assert run.ran and run.problems == [], run
        day += dt.timedelta(days=1)


def test_a_per_m2_fee_over_a_month_with_a_mid_month_tenant_change_is_split_by_days(site: Site) -> None:
    room = site.room("1-101", 50)
    old, old_wallet = site.account("A-OLD", 50_000)
    new, new_wallet = site.account("A-NEW", 50_000)
    site.attach("M-1", room, old)
    with site.engine.begin() as conn:
        moved = structure.move_meter(conn, "M-1", new, actor="op", reason="new lease", now=local(dt.date(2026, 11, 11)))
        assert isinstance(moved, int), moved
        spec = billing.ChargeItemSpec(
            "PROP", "Property fee", Basis.PER_M2, 2_000_000, Schedule(Frequency.MONTHLY, NOV, day=1)
        )
        item = billing.create_charge_item(conn, site.site, spec, actor="admin", now=T0)
        assert isinstance(item, int), item
    # Not due before the month has ended.
    assert billing.run_charges(site.engine, local(dt.date(2026, 11, 30), 23)).charged == 0
    run = billing.run_charges(site.engine, DEC_1)
    assert (run.charged, run.amount_micros, run.problems) == (2, 100_000_000, [])
    assert balance(site.engine, old_wallet) == 500_000_000 - 33_333_333
    assert balance(site.engine, new_wallet) == 500_000_000 - 66_666_667
    again = billing.run_charges(site.engine, DEC_1 + dt.timedelta(hours=5))
    assert (again.charged, again.skipped) == (0, 2)
    books_are_exact(site.engine, [dt.date(2026, 12, 1)])


def test_a_charge_collected_as_a_bill_is_posted_when_the_bill_is_paid(site: Site, tmp_path: Path) -> None:
    room = site.room("2-201", 80, RoomUse.SHOP)
    account, wallet = site.account("S-1", 10_000)
    site.attach("M-2", room, account)
    with site.engine.begin() as conn:
        spec = billing.ChargeItemSpec(
            "RENT", "Rent", Basis.FIXED, 3_000_000_000, Schedule(Frequency.MONTHLY, NOV, day=1), collection="bill"
        )
        assert isinstance(billing.create_charge_item(conn, site.site, spec, actor="admin", now=T0), int)
    billing.run_charges(site.engine, DEC_1)
    assert balance(site.engine, wallet) == 100_000_000  # a bill, not a deduction
    with site.engine.connect() as conn:
        (bill,) = billing.list_bills(conn, site.site, account_id=account)
    assert (bill.kind, bill.state, bill.amount_micros, bill.amount_fen) == ("charges", "draft", 3_000_000_000, 300_000)
    with site.engine.begin() as conn:
        assert isinstance(
            billing.confirm_bill(conn, bill.bill_no, actor="fin", reason="checked", now=DEC_1), billing.Bill
        )
        issued = billing.issue_bill(conn, bill.bill_no, actor="fin", reason="monthly run", now=DEC_1)
        assert isinstance(issued, billing.Bill) and issued.due_on == dt.date(2026, 12, 16)
        again = billing.confirm_bill(conn, bill.bill_no, actor="fin", reason="twice", now=DEC_1)
        assert isinstance(again, structure.Rejected) and again.field == "state"
    assert billing.mark_overdue(site.engine, local(dt.date(2026, 12, 16), 12)) == []
    assert billing.mark_overdue(site.engine, local(dt.date(2026, 12, 17), 9)) == [bill.bill_no]
    assert sent(site.engine, "bill_issued") == [("sms", f"bill_issued:{bill.bill_no}")]
    assert sent(site.engine, "bill_overdue") == [("sms", f"bill_overdue:{bill.bill_no}")]
    with site.engine.connect() as conn:
        assert [b.bill_no for b in billing.arrears(conn, site.site)] == [bill.bill_no]
    sheet = tmp_path / "arrears.xlsx"
    url = site.engine.url.render_as_string(hide_password=False)
    code = main(["billing", "--url", url, "export", "--site", str(site.site), "--arrears", "--xlsx", str(sheet)])
    assert code == 0
    rows = list(load_workbook(sheet).worksheets[0].iter_rows(values_only=True))
    assert rows[1][0] == bill.bill_no and rows[1][5] == "overdue" and rows[-1][6] == 3000.0
    paid_at = local(dt.date(2026, 12, 18), 10)
    sale = payments.NewOrder(wallet, bill.amount_fen, "cashier", "cash", operator="op")
    done = payments.pay_at_cashier(site.engine, CHANNELS, sale, "R-BILL", POLICY, paid_at)
    assert isinstance(done, payments.Settlement) and done.order_no is not None
    with site.engine.begin() as conn:
        wrong = billing.attach_order(conn, "no-such-bill", done.order_no, actor="op", now=paid_at)
        assert isinstance(wrong, structure.Rejected) and wrong.field == "bill_no"
        assert isinstance(
            billing.attach_order(conn, bill.bill_no, done.order_no, actor="op", now=paid_at), billing.Bill
        )
    assert billing.settle_paid_bills(site.engine, paid_at) == [bill.bill_no]
    assert billing.settle_paid_bills(site.engine, paid_at) == []
    assert balance(site.engine, wallet) == 100_000_000  # paid in, charged out: the credit is untouched
    with site.engine.connect() as conn:
        paid = billing.get_bill(conn, bill.bill_no)
        assert paid is not None and paid.state == "paid" and all(line.posted for line in paid.lines)
        assert billing.arrears(conn, site.site) == []
    books_are_exact(site.engine, [dt.date(2026, 12, 18)])


@pytest.mark.parametrize("method", list(Method))
def test_apportionment_by_each_method_shares_exactly_the_masters_remainder(site: Site, method: Method) -> None:
    public = site.room("PUB", 0, RoomUse.PUBLIC_AREA)
    owner, _ = site.account("PUBLIC", 0)
    site.attach("MASTER", public, owner)
    tenants = []
    for index, area in enumerate((30, 50, 70)):
        room = site.room(f"3-{index}", area)
        account, wallet = site.account(f"T-{index}", 100_000)
        site.attach(f"SUB-{index}", room, account)
        tenants.append((account, wallet))
    last = dt.date(2026, 11, 30)
    meter_days(site.engine, "MASTER", NOV, last, 100)
    for index in range(3):
        meter_days(site.engine, f"SUB-{index}", NOV, last, 10 * (index + 1))
    freeze_days(site.engine, site.site, NOV, last)
    version = billing.RuleVersion(
        "MASTER", method, tuple((account, parts) for (account, _), parts in zip(tenants, (1, 1, 2), strict=True)),
        Source.REMAINDER, ("SUB-0", "SUB-1", "SUB-2"), price_micros_per_kwh=800_000,
    )  # fmt: skip
    with site.engine.begin() as conn:
        rule = billing.create_rule(
            conn, site.site, "LIFT", "Lift and lights", version, NOV, actor="a", reason="x", now=T0
        )
        assert isinstance(rule, int), rule
    early = billing.run_apportionment(site.engine, rule, NOV, actor="a", now=local(last, 12))
    assert isinstance(early, structure.Rejected) and early.field == "month"
    result = billing.run_apportionment(site.engine, rule, NOV, actor="a", now=DEC_1)
    assert isinstance(result, billing.ApportionResult), result
    assert result.energy_wh > 0 and result.amount_micros == (result.energy_wh * 800_000 * 2 + 1_000) // 2_000
    assert sum(share[2] for share in result.shares) == result.energy_wh
    assert sum(share[3] for share in result.shares) == result.amount_micros
    weights = [share[1] for share in result.shares]
    expected = {Method.RATIO: [1, 1, 2], Method.AREA: [3_000, 5_000, 7_000]}.get(method)
    if expected is not None:
        assert weights == expected
    else:
        assert weights[0] < weights[1] < weights[2]  # their own usage: 10, 20, 30 kWh a day
    spent = sum(1_000_000_000 - balance(site.engine, wallet) for _, wallet in tenants)
    assert spent == result.amount_micros
    assert billing.run_apportionment(site.engine, rule, NOV, actor="a", now=DEC_1) == result
    with site.engine.connect() as conn:
        (seen,) = billing.account_shares(conn, tenants[0][0])
    assert seen["weight"] == weights[0] and seen["weight_total"] == sum(weights)
    books_are_exact(site.engine, [dt.date(2026, 12, 1)])


def test_a_post_paid_bill_matches_the_tariff_quote_of_the_same_frozen_readings(site: Site, tmp_path: Path) -> None:
    room = site.room("4-401", 120, RoomUse.SHOP)
    account, wallet = site.account("P-1", 0)
    site.attach("PP-1", room, account, tariff="commercial-tou")
    with site.engine.begin() as conn:
        assert billing.set_postpaid(conn, account, 10, actor="fin", reason="contract", now=T0) is None
        assert billing.set_postpaid(conn, account, 0, actor="fin", reason="x", now=T0) == structure.Rejected(
            "due_days", "must be 1..90, got 0"
        )
    last = dt.date(2026, 11, 30)
    meter_days(site.engine, "PP-1", NOV, last, 40)
    freeze_days(site.engine, site.site, NOV, last)
    drafted = billing.draft_postpaid_bills(site.engine, site.site, NOV, last, actor="fin", now=DEC_1)
    assert isinstance(drafted, billing.DraftResult) and drafted.problems == ()
    (bill_no,) = drafted.bills
    with site.engine.connect() as conn:
        bill = billing.get_bill(conn, bill_no)
        readings = billing.frozen_readings(conn, "PP-1", NOV, last)
    assert bill is not None and bill.kind == "postpaid" and bill.amount_micros > 0
    assert {line.kind for line in bill.lines} >= {"energy"}
    path = tmp_path / "frozen.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "reading_id",
                "meter_id",
                "timestamp",
                "total_kwh",
                "sharp_kwh",
                "peak_kwh",
                "flat_kwh",
                "valley_kwh",
                "kind",
            ]
        )
        for reading in readings:
            assert reading.bands_wh is not None
            kwh = [f"{value / 1000:.3f}" for value in (reading.total_wh, *reading.bands_wh)]
            writer.writerow([reading.reading_id, reading.meter_id, reading.at.isoformat(), *kwh, "regular"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["tariff", "quote", "--tariff", str(EXAMPLES / "commercial-tou.toml"), "--readings", str(path)])
    assert code == 0
    assert json.loads(printed.getvalue())["total_amount_micros"] == bill.amount_micros
    # Drafting again makes nothing new; a period that has not ended is refused.
    again = billing.draft_postpaid_bills(site.engine, site.site, NOV, last, actor="fin", now=DEC_1)
    assert isinstance(again, billing.DraftResult) and again.bills == ()
    early = billing.draft_postpaid_bills(site.engine, site.site, NOV, last, actor="fin", now=local(last, 20))
    assert isinstance(early, structure.Rejected) and early.field == "last"
    assert balance(site.engine, wallet) == 0  # frozen readings written straight in: no deductions here
