"""Finance reports over real orders and refunds: order list, income by period and channel, shifts, Excel."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import Engine, select

from powergate.domain.structure import PaymentChannel, account_wallet
from powergate.payments.cashier import Cashier
from powergate.payments.sandbox import Sandbox
from powergate.services import accounts, finance, queries
from powergate.services import payments as svc
from powergate.services.accounts import Rejected
from powergate.store import ledger as store
from powergate.store.tables_payments import orders
from powergate.store.tables_structure import sites

WALLET = account_wallet("FIN", "A-2001")
"""The wallet of account A-2001 of organisation FIN, site S1."""
OTHER_WALLET = account_wallet("MALL", "B-1")
"""The wallet of account B-1 of another organisation (MALL), site S2."""
POLICY = svc.PaymentPolicy(frozenset({"sandbox", "cashier"}))
SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = ZoneInfo("UTC")


def at(text: str) -> dt.datetime:
    """A UTC moment written as ``2026-11-21 15:30``."""
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC)


def site_id(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(sites.c.id).where(sites.c.name == name)).scalar_one())


def open_account(engine: Engine, organisation: str, site: str, account_no: str) -> None:
    """An organisation with one site and one open account in it (its wallet: ``account_wallet``)."""
    now = at("2026-10-01 00:00")
    with engine.begin() as conn:
        organisation_id = accounts.create_organisation(conn, organisation, organisation, actor="test", now=now)
        assert isinstance(organisation_id, int)
        new_site = accounts.create_site(
            conn, organisation_id, site, timezone="Asia/Shanghai", currency="CNY",
            channels=[PaymentChannel.SANDBOX, PaymentChannel.CASHIER], actor="test", now=now,
        )  # fmt: skip
        assert isinstance(new_site, int)
        account_id = accounts.stage_account(conn, new_site, account_no, account_no, actor="test", now=now)
        assert isinstance(account_id, int)
        assert not isinstance(accounts.open_account(conn, account_id, actor="test", reason="test", now=now), Rejected)


@pytest.fixture
def books(engine: Engine) -> Iterator[Engine]:
    """A month of takings: online payments around Shanghai midnight, a cashier shift, refunds; one payment is to
    an account of another organisation."""
    open_account(engine, "FIN", "S1", "A-2001")
    open_account(engine, "MALL", "S2", "B-1")
    s1, s2 = str(site_id(engine, "S1")), str(site_id(engine, "S2"))
    sandbox = Sandbox(b"sandbox-secret-for-finance")
    channels: dict[str, svc.PaymentChannel] = {"sandbox": sandbox, "cashier": Cashier()}

    def online(amount_fen: int, when: str, site: str = s1, wallet: str = WALLET) -> str:
        order = svc.NewOrder(wallet, amount_fen, "sandbox", "instant", site)
        placed = svc.create_order(engine, channels, order, POLICY, at(when))
        assert isinstance(placed, svc.OrderPlaced)
        headers, body = sandbox.pay(placed.order_no, at(when))
        outcome = svc.handle_notification(engine, channels, "sandbox", headers, body, at(when))
        assert outcome.verdict is svc.Verdict.ACCEPTED
        return placed.order_no

    def counter(amount_fen: int, method: str, receipt: str, when: str, operator: str = "op-li") -> None:
        sale = svc.NewOrder(WALLET, amount_fen, "cashier", method, s1, operator=operator)
        done = svc.pay_at_cashier(engine, channels, sale, receipt, POLICY, at(when))
        assert isinstance(done, svc.Settlement) and done.verdict is svc.Verdict.ACCEPTED

    online(10_000, "2026-11-21 15:30")  # 23:30 on the 21st in Shanghai
    refunded = online(20_000, "2026-11-21 16:30")  # 00:30 on the 22nd in Shanghai
    online(5_000, "2026-10-31 17:00", site=s2, wallet=OTHER_WALLET)  # 01:00 on 1 November in Shanghai
    counter(30_000, "cash", "R-1", "2026-11-22 01:00")
    counter(12_345, "card", "R-2", "2026-11-22 02:00")
    counter(7_000, "cash", "R-3", "2026-11-22 03:00", operator="op-zhao")
    counter(1_000, "cash", "R-4", "2026-11-22 11:00")  # after op-li's shift
    request = svc.RefundRequest("RF-1", WALLET, 5_000, svc.Destination.ORIGINAL, "overpaid", "op-li", refunded, s1)
    assert isinstance(svc.refund(engine, channels, request, at("2026-11-22 04:00")), svc.RefundDone)
    cash = svc.RefundRequest("RF-2", WALLET, 2_000, svc.Destination.CASH, "moving out", "op-li", None, s1)
    assert isinstance(svc.refund(engine, channels, cash, at("2026-11-22 05:00")), svc.RefundDone)
    yield engine
    with engine.connect() as conn:
        assert store.audit(conn) == []


def test_the_site_time_zone_decides_which_day_a_payment_belongs_to(books: Engine) -> None:
    window = (at("2026-11-21 00:00"), at("2026-11-22 00:00"))
    with books.connect() as conn:
        local = finance.income(conn, queries.PLATFORM, finance.Period.DAY, *window, zone=SHANGHAI, channel="sandbox")
        utc = finance.income(conn, queries.PLATFORM, finance.Period.DAY, *window, zone=UTC, channel="sandbox")
    assert [(r.period, r.income_fen) for r in local] == [("2026-11-21", 10_000), ("2026-11-22", 20_000)]
    assert [(r.period, r.income_fen) for r in utc] == [("2026-11-21", 30_000)]


def test_income_by_month_and_channel_is_exact_and_nets_the_refunds(books: Engine) -> None:
    with books.connect() as conn:
        rows = finance.income(
            conn, queries.PLATFORM, finance.Period.MONTH, at("2026-01-01 00:00"), at("2027-01-01 00:00")
        )
    table = [(r.period, r.channel, r.payments, r.income_fen, r.refunds, r.refunds_fen, r.net_fen) for r in rows]
    assert table == [
        ("2026-11", "cashier", 4, 50_345, 1, 2_000, 48_345),
        ("2026-11", "sandbox", 3, 35_000, 1, 5_000, 30_000),
    ]


def test_income_by_year_for_one_site(books: Engine) -> None:
    with books.connect() as conn:
        year = (at("2026-01-01 00:00"), at("2027-01-01 00:00"))
        rows = finance.income(conn, queries.PLATFORM, finance.Period.YEAR, *year, site_id=site_id(books, "S2"))
    assert [(r.period, r.channel, r.income_fen) for r in rows] == [("2026", "sandbox", 5_000)]


WINDOW = queries.OrderFilter(since=at("2026-10-01 00:00"), until=at("2026-12-01 00:00"))
"""Every order of the books."""


@pytest.mark.parametrize(
    ("filters", "limit", "expected"),
    [
        ({}, 1_000, 7),
        ({"channel": "cashier"}, 1_000, 4),
        ({"channel": "sandbox", "state": "partially_refunded"}, 1_000, 1),
        ({"site_id": "S2"}, 1_000, 1),
        ({}, 2, 2),
    ],
)
def test_the_order_report_filters_by_channel_site_date_and_state(
    books: Engine, filters: dict[str, object], limit: int, expected: int
) -> None:
    if "site_id" in filters:  # named in the table, its id known once the fixture made it
        filters = {**filters, "site_id": site_id(books, str(filters["site_id"]))}
    wanted = replace(WINDOW, **filters)  # type: ignore[arg-type]
    with books.connect() as conn:
        lines = queries.report_orders(conn, queries.PLATFORM, wanted, limit=limit)
    assert len(lines) == expected
    assert {line.wallet for line in lines} <= {WALLET, OTHER_WALLET}
    assert lines == sorted(lines, key=lambda line: (line.created_at, line.id), reverse=True)


def test_the_platform_order_report_holds_every_organisation_and_an_organisation_scope_only_its_own(
    books: Engine,
) -> None:
    with books.connect() as conn:
        fin = int(conn.execute(select(sites.c.organisation_id).where(sites.c.name == "S1")).scalar_one())
        everyone = queries.report_orders(conn, queries.PLATFORM, WINDOW)
        own = queries.report_orders(conn, queries.Scope(fin), WINDOW)
    assert len(everyone) == 7 and [line.wallet for line in everyone].count(OTHER_WALLET) == 1
    assert [line.order_no for line in own] == [line.order_no for line in everyone if line.wallet == WALLET]
    assert len(own) == 6


def test_a_cashier_shift_report_counts_and_totals_by_channel_and_gives_the_cash_in_the_drawer(books: Engine) -> None:
    with books.connect() as conn:
        report = finance.shift_report(conn, queries.PLATFORM, "op-li", at("2026-11-22 00:00"), at("2026-11-22 10:00"))
    assert [(s.channel, s.method, s.payments, s.total_fen) for s in report.lines] == [
        ("cashier", "card", 1, 12_345),
        ("cashier", "cash", 1, 30_000),
    ]
    assert report.receipts == ("R-1", "R-2")
    assert (report.cash_refunds, report.cash_refunds_fen) == (1, 2_000)
    assert report.cash_in_drawer_fen == 28_000
    assert report.total_fen == 42_345


def test_each_report_exports_to_excel_with_exact_amounts(books: Engine, tmp_path: Path) -> None:
    with books.connect() as conn:
        lines = queries.report_orders(conn, queries.PLATFORM, WINDOW)
        rows = finance.income(
            conn, queries.PLATFORM, finance.Period.DAY, at("2026-10-01 00:00"), at("2026-12-01 00:00")
        )
        shift = finance.shift_report(conn, queries.PLATFORM, "op-li", at("2026-11-22 00:00"), at("2026-11-22 10:00"))
    finance.export_orders(lines, tmp_path / "orders.xlsx")
    finance.export_income(rows, tmp_path / "income.xlsx", finance.Period.DAY)
    finance.export_shift(shift, tmp_path / "shift.xlsx")

    orders_sheet = load_workbook(tmp_path / "orders.xlsx").active
    assert orders_sheet is not None
    assert orders_sheet.max_row == 1 + len(lines)
    header = [c.value for c in orders_sheet[1]]
    assert header[5] == "Amount (yuan)" and header[8] == "Created (Asia/Shanghai)"
    amounts = sorted(Decimal(str(orders_sheet.cell(row, 6).value)) for row in range(2, orders_sheet.max_row + 1))
    assert sum(amounts) == Decimal("853.45")

    income_sheet = load_workbook(tmp_path / "income.xlsx").active
    assert income_sheet is not None
    last = [c.value for c in income_sheet[income_sheet.max_row]]
    assert last[0] == "Total" and Decimal(str(last[6])) == Decimal("783.45")

    shift_sheet = load_workbook(tmp_path / "shift.xlsx").active
    assert shift_sheet is not None
    drawer = [r for r in shift_sheet.iter_rows(values_only=True) if r[0] == "Cash in drawer"]
    assert Decimal(str(drawer[0][3])) == Decimal("280.00")


def test_the_finance_command_prints_income_and_writes_excel(
    books: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from powergate.cli import main

    target = tmp_path / "income.xlsx"
    code = main(
        [
            "finance",
            "--url",
            db_url,
            "income",
            "--by",
            "month",
            "--since",
            "2026-01-01",
            "--until",
            "2027-01-01",
            "--xlsx",
            str(target),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "2026-11    cashier" in out and "total net 783.45" in out
    assert target.exists()
    assert (
        main(
            [
                "finance",
                "--url",
                db_url,
                "shift",
                "--operator",
                "op-li",
                "--start",
                "2026-11-22T08:00",
                "--end",
                "2026-11-22T18:00",
            ]
        )
        == 0
    )
    assert "cash in drawer 280.00" in capsys.readouterr().out


def test_the_finance_orders_command_prints_every_organisations_orders_and_writes_excel(
    books: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from powergate.cli import main

    window = ["--since", "2026-10-01", "--until", "2026-12-01"]
    target = tmp_path / "orders.xlsx"
    assert main(["finance", "--url", db_url, "orders", *window, "--xlsx", str(target)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "7 orders"
    assert lines[-2].endswith(f"2026-11-01 01:00  sandbox  paid                      50.00  {OTHER_WALLET}")
    sheet = load_workbook(target).active
    assert sheet is not None and sheet.max_row == 1 + 7
    assert [c.value for c in sheet[2]][1:3] == [WALLET, site_id(books, "S1")]

    s2 = str(site_id(books, "S2"))
    assert main(["finance", "--url", db_url, "orders", *window, "--site", s2, "--channel", "sandbox"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 orders"
    assert main(["finance", "--url", db_url, "orders", *window, "--limit", "0"]) == 2
    assert "--limit must be 1..200000" in capsys.readouterr().out


def test_one_sites_order_list_income_and_shift_count_the_same_orders_also_those_recorded_without_a_site(
    books: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sale recorded as the demo seed records its opening credits (the policy handed in, no site written on
    the order) belongs to the site of the account it credits in every report, not only in the order list."""
    from powergate.cli import main

    sale = svc.NewOrder(WALLET, 4_000, "cashier", "cash", operator="op-li")
    done = svc.pay_at_cashier(books, {"cashier": Cashier()}, sale, "R-5", POLICY, at("2026-11-22 06:00"))
    assert isinstance(done, svc.Settlement) and done.verdict is svc.Verdict.ACCEPTED
    with books.connect() as conn:
        recorded = conn.execute(select(orders.c.site_id).where(orders.c.receipt_no == "R-5")).scalar_one()
    assert recorded is None, "the order carries no site of its own"
    s1, s2 = site_id(books, "S1"), site_id(books, "S2")
    since, until = WINDOW.since, WINDOW.until
    assert since is not None and until is not None

    def paid_orders_fen(site: int | None) -> int:
        with books.connect() as conn:
            listed = queries.report_orders(conn, queries.PLATFORM, replace(WINDOW, site_id=site))
        return sum(line.amount_fen for line in listed if line.state in queries.PAID_STATES)

    def income_fen(site: int | None, scope: queries.Scope | queries.PlatformScope = queries.PLATFORM) -> int:
        with books.connect() as conn:
            rows = finance.income(conn, scope, finance.Period.MONTH, since, until, site_id=site)
        return sum(row.income_fen for row in rows)

    assert paid_orders_fen(s1) == income_fen(s1) == 80_345 + 4_000
    assert paid_orders_fen(s2) == income_fen(s2) == 5_000
    assert paid_orders_fen(None) == income_fen(None) == income_fen(s1) + income_fen(s2)
    with books.connect() as conn:
        fin = int(conn.execute(select(sites.c.organisation_id).where(sites.c.id == s1)).scalar_one())
    assert income_fen(None, queries.Scope(fin)) == income_fen(s1), "an organisation's income is its own sites'"

    with books.connect() as conn:
        shift = (at("2026-11-22 00:00"), at("2026-11-22 10:00"))
        here = finance.shift_report(conn, queries.PLATFORM, "op-li", *shift, site_id=s1)
        elsewhere = finance.shift_report(conn, queries.PLATFORM, "op-li", *shift, site_id=s2)
    assert [(s.method, s.payments, s.total_fen) for s in here.lines] == [("card", 1, 12_345), ("cash", 2, 34_000)]
    assert here.receipts == ("R-1", "R-2", "R-5") and here.cash_in_drawer_fen == 34_000 - 2_000
    assert (elsewhere.lines, elsewhere.cash_refunds, elsewhere.cash_in_drawer_fen) == ((), 0, 0)

    window = ["--since", "2026-10-01", "--until", "2026-12-01"]
    assert main(["finance", "--url", db_url, "orders", *window, "--site", str(s1)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "7 orders"
    assert main(["finance", "--url", db_url, "income", "--by", "year", *window, "--site", str(s1)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "total net 773.45"  # 843.45 paid, 70.00 refunded
    shift_window = ["--start", "2026-11-22T08:00", "--end", "2026-11-22T18:00"]
    assert main(["finance", "--url", db_url, "shift", "--operator", "op-li", *shift_window, "--site", str(s1)]) == 0
    assert "cash in drawer 320.00" in capsys.readouterr().out
    assert main(["finance", "--url", db_url, "shift", "--operator", "op-li", *shift_window, "--site", str(s2)]) == 0
    assert "cash in drawer 0.00" in capsys.readouterr().out
    backwards = ["--start", "2026-11-22T18:00", "--end", "2026-11-22T08:00"]
    assert main(["finance", "--url", db_url, "shift", "--operator", "op-li", *backwards]) == 2
    assert "is not after --start" in capsys.readouterr().out
