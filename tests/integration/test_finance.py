"""Finance reports over real orders and refunds: order list, income by period and channel, shifts, Excel."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import Engine

from powergate.domain.ledger import wallet_code
from powergate.payments.cashier import Cashier
from powergate.payments.sandbox import Sandbox
from powergate.services import finance
from powergate.services import payments as svc
from powergate.store import ledger as store

WALLET = wallet_code("A-2001")
POLICY = svc.PaymentPolicy(frozenset({"sandbox", "cashier"}))
SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = ZoneInfo("UTC")


def at(text: str) -> dt.datetime:
    """A UTC moment written as ``2026-11-21 15:30``."""
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC)


@pytest.fixture
def books(engine: Engine) -> Iterator[Engine]:
    """A month of takings: online payments around Shanghai midnight, a cashier shift, refunds."""
    with engine.begin() as conn:
        store.ensure_account(conn, WALLET, at("2026-10-01 00:00"))
    sandbox = Sandbox(b"sandbox-secret-for-finance")
    channels: dict[str, svc.PaymentChannel] = {"sandbox": sandbox, "cashier": Cashier()}

    def online(amount_fen: int, when: str, site: str = "S1") -> str:
        order = svc.NewOrder(WALLET, amount_fen, "sandbox", "instant", site)
        placed = svc.create_order(engine, channels, order, POLICY, at(when))
        assert isinstance(placed, svc.OrderPlaced)
        headers, body = sandbox.pay(placed.order_no, at(when))
        outcome = svc.handle_notification(engine, channels, "sandbox", headers, body, at(when))
        assert outcome.verdict is svc.Verdict.ACCEPTED
        return placed.order_no

    def counter(amount_fen: int, method: str, receipt: str, when: str, operator: str = "op-li") -> None:
        sale = svc.NewOrder(WALLET, amount_fen, "cashier", method, "S1", operator=operator)
        done = svc.pay_at_cashier(engine, channels, sale, receipt, POLICY, at(when))
        assert isinstance(done, svc.Settlement) and done.verdict is svc.Verdict.ACCEPTED

    online(10_000, "2026-11-21 15:30")  # 23:30 on the 21st in Shanghai
    refunded = online(20_000, "2026-11-21 16:30")  # 00:30 on the 22nd in Shanghai
    online(5_000, "2026-10-31 17:00", site="S2")  # 01:00 on 1 November in Shanghai
    counter(30_000, "cash", "R-1", "2026-11-22 01:00")
    counter(12_345, "card", "R-2", "2026-11-22 02:00")
    counter(7_000, "cash", "R-3", "2026-11-22 03:00", operator="op-zhao")
    counter(1_000, "cash", "R-4", "2026-11-22 11:00")  # after op-li's shift
    request = svc.RefundRequest("RF-1", WALLET, 5_000, svc.Destination.ORIGINAL, "overpaid", "op-li", refunded, "S1")
    assert isinstance(svc.refund(engine, channels, request, at("2026-11-22 04:00")), svc.RefundDone)
    cash = svc.RefundRequest("RF-2", WALLET, 2_000, svc.Destination.CASH, "moving out", "op-li", None, "S1")
    assert isinstance(svc.refund(engine, channels, cash, at("2026-11-22 05:00")), svc.RefundDone)
    yield engine
    with engine.connect() as conn:
        assert store.audit(conn) == []


def test_the_site_time_zone_decides_which_day_a_payment_belongs_to(books: Engine) -> None:
    window = (at("2026-11-21 00:00"), at("2026-11-22 00:00"))
    with books.connect() as conn:
        local = finance.income(conn, finance.Period.DAY, *window, zone=SHANGHAI, channel="sandbox")
        utc = finance.income(conn, finance.Period.DAY, *window, zone=UTC, channel="sandbox")
    assert [(r.period, r.income_fen) for r in local] == [("2026-11-21", 10_000), ("2026-11-22", 20_000)]
    assert [(r.period, r.income_fen) for r in utc] == [("2026-11-21", 30_000)]


def test_income_by_month_and_channel_is_exact_and_nets_the_refunds(books: Engine) -> None:
    with books.connect() as conn:
        rows = finance.income(conn, finance.Period.MONTH, at("2026-01-01 00:00"), at("2027-01-01 00:00"))
    table = [(r.period, r.channel, r.payments, r.income_fen, r.refunds, r.refunds_fen, r.net_fen) for r in rows]
    assert table == [
        ("2026-11", "cashier", 4, 50_345, 1, 2_000, 48_345),
        ("2026-11", "sandbox", 3, 35_000, 1, 5_000, 30_000),
    ]


def test_income_by_year_for_one_site(books: Engine) -> None:
    with books.connect() as conn:
        rows = finance.income(conn, finance.Period.YEAR, at("2026-01-01 00:00"), at("2027-01-01 00:00"), site_id="S2")
    assert [(r.period, r.channel, r.income_fen) for r in rows] == [("2026", "sandbox", 5_000)]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, 7),
        ({"channel": "cashier"}, 4),
        ({"channel": "sandbox", "state": "partially_refunded"}, 1),
        ({"site_id": "S2"}, 1),
        ({"limit": 2}, 2),
    ],
)
def test_the_order_list_filters_by_channel_site_date_and_state(
    books: Engine, filters: dict[str, object], expected: int
) -> None:
    wanted = finance.OrderFilter(at("2026-10-01 00:00"), at("2026-12-01 00:00"), **filters)  # type: ignore[arg-type]
    with books.connect() as conn:
        lines = finance.list_orders(conn, wanted)
    assert len(lines) == expected
    assert all(line.wallet == WALLET for line in lines)
    assert lines == sorted(lines, key=lambda line: line.created_at, reverse=True)


def test_a_cashier_shift_report_counts_and_totals_by_channel_and_gives_the_cash_in_the_drawer(books: Engine) -> None:
    with books.connect() as conn:
        report = finance.shift_report(conn, "op-li", at("2026-11-22 00:00"), at("2026-11-22 10:00"))
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
        lines = finance.list_orders(conn, finance.OrderFilter(at("2026-10-01 00:00"), at("2026-12-01 00:00")))
        rows = finance.income(conn, finance.Period.DAY, at("2026-10-01 00:00"), at("2026-12-01 00:00"))
        shift = finance.shift_report(conn, "op-li", at("2026-11-22 00:00"), at("2026-11-22 10:00"))
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
