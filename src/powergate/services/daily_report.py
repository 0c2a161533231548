"""The daily report of a site (or a time zone): what the day's freeze says, with the day's money, per meter.

Built from ``daily_freezes`` (so it exists only once the day is frozen: ``powergate freeze daily``), the ledger's
recharge entries of the day (event time in the site's day) and the meters' current status (offline, tripped).
All amounts are integers; totals are sums of the per-meter rows, so the report adds up by construction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, text

from powergate.domain.energy import format_quantity
from powergate.domain.money import MICROS_PER_UNIT, format_decimal
from powergate.services.freeze import Scope, local_midnight, scope_of

LOW_BALANCE_MICROS = 20 * MICROS_PER_UNIT
"""A meter's wallet below this at the freeze counts as low balance in the report (the default 2nd warning)."""
BANDS = ("sharp", "peak", "flat", "valley")


class NotFrozen(LookupError):
    """The day has no freeze for this scope yet."""


@dataclass(frozen=True, slots=True)
class MeterLine:
    meter_id: str
    energy_wh: int
    bands_wh: tuple[int, int, int, int]
    cost_micros: int
    balance_micros: int
    estimated: bool
    online: bool | None
    relay_open: bool | None


@dataclass(slots=True)
class DailyReport:
    scope: str
    day: dt.date
    lines: list[MeterLine] = field(default_factory=list)
    recharges_micros: int = 0
    recharge_count: int = 0

    @property
    def energy_wh(self) -> int:
        return sum(line.energy_wh for line in self.lines)

    @property
    def bands_wh(self) -> tuple[int, int, int, int]:
        totals = [sum(line.bands_wh[i] for line in self.lines) for i in range(4)]
        return totals[0], totals[1], totals[2], totals[3]

    @property
    def cost_micros(self) -> int:
        return sum(line.cost_micros for line in self.lines)

    @property
    def estimated(self) -> int:
        return sum(1 for line in self.lines if line.estimated)

    @property
    def offline(self) -> int:
        return sum(1 for line in self.lines if line.online is False)

    @property
    def tripped(self) -> int:
        return sum(1 for line in self.lines if line.relay_open)

    @property
    def low_balance(self) -> int:
        return sum(1 for line in self.lines if line.balance_micros < LOW_BALANCE_MICROS)


def daily_report(conn: Connection, site_or_zone: int | str, day: dt.date) -> DailyReport:
    """The report of ``day``; ``NotFrozen`` if the day has not been frozen for the scope."""
    scope = scope_of(conn, site_or_zone)
    start = local_midnight(day, scope.zone)
    cut = local_midnight(day + dt.timedelta(days=1), scope.zone)
    rows = conn.execute(
        text(
            "SELECT f.meter_id, f.energy_wh, f.sharp_energy_wh, f.peak_energy_wh, f.flat_energy_wh, "
            "f.valley_energy_wh, f.cost_micros, f.balance_micros, f.estimated, s.online, s.relay_open, "
            "f.wallet_account_id "
            "FROM daily_freezes f JOIN meters m ON m.id = f.meter_id "
            "LEFT JOIN meter_status s ON s.meter_id = f.meter_id "
            f"WHERE f.day = :day AND {scope.meters_clause()} ORDER BY f.meter_id"
        ),
        {"day": day, "scope_key": scope.key, "cut": cut},
    ).all()
    if not rows:
        raise NotFrozen(f"{scope.name}: {day.isoformat()} has no freeze yet; run `powergate freeze daily` first")
    report = DailyReport(scope.name, day)
    wallets = sorted({int(row[11]) for row in rows})
    for row in rows:
        bands = tuple(int(v or 0) for v in row[2:6])
        report.lines.append(
            MeterLine(
                row[0],
                int(row[1]),
                (bands[0], bands[1], bands[2], bands[3]),
                int(row[6]),
                int(row[7]),
                bool(row[8]),
                None if row[9] is None else bool(row[9]),
                None if row[10] is None else bool(row[10]),
            )
        )
    report.recharges_micros, report.recharge_count = _recharges(conn, scope, wallets, start, cut)
    return report


def _recharges(
    conn: Connection, scope: Scope, wallets: list[int], start: dt.datetime, cut: dt.datetime
) -> tuple[int, int]:
    total, count = 0, 0
    for index in range(0, len(wallets), 2_000):
        chunk = wallets[index : index + 2_000]
        marks = ", ".join(f":w{i}" for i in range(len(chunk)))
        params: dict[str, object] = {f"w{i}": w for i, w in enumerate(chunk)}
        params.update(start=_bind(conn, start), cut=_bind(conn, cut))
        row = conn.execute(
            text(
                "SELECT COALESCE(SUM(p.amount_micros), 0), COUNT(DISTINCT e.id) FROM ledger_postings p "
                "JOIN ledger_entries e ON e.id = p.entry_id "
                f"WHERE e.kind = 'recharge' AND p.account_id IN ({marks}) "
                "AND e.event_at >= :start AND e.event_at < :cut"
            ),
            params,
        ).one()
        total += int(row[0])
        count += int(row[1])
    return total, count


def _bind(conn: Connection, value: dt.datetime) -> object:
    """Raw SQL bypasses ``UTCDateTime``: bind as it stores (naive UTC text on SQLite)."""
    utc = value.astimezone(dt.UTC)
    if conn.dialect.name == "sqlite":
        return utc.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return utc


def render(report: DailyReport) -> str:
    """The report as text for the terminal."""
    kwh = " / ".join(f"{name} {format_quantity(v)}" for name, v in zip(BANDS, report.bands_wh, strict=True))
    return "\n".join(
        [
            f"Daily report {report.scope} {report.day.isoformat()}",
            f"  meters            {len(report.lines)} ({report.estimated} estimated)",
            f"  energy            {format_quantity(report.energy_wh)} kWh ({kwh})",
            f"  cost              {format_decimal(report.cost_micros)}",
            f"  recharges         {format_decimal(report.recharges_micros)} in {report.recharge_count} payments",
            f"  offline           {report.offline}",
            f"  tripped           {report.tripped}",
            f"  low balance       {report.low_balance} (below {format_decimal(LOW_BALANCE_MICROS)})",
        ]
    )


def export_xlsx(report: DailyReport, path: Path) -> None:
    """The report as an Excel workbook: a summary sheet and one row per meter."""
    from openpyxl import Workbook

    book = Workbook()
    summary = book.active
    assert summary is not None
    summary.title = "summary"
    summary.append(["scope", report.scope])
    summary.append(["day", report.day.isoformat()])
    summary.append(["meters", len(report.lines)])
    summary.append(["energy kWh", float(format_quantity(report.energy_wh, 3))])
    for name, value in zip(BANDS, report.bands_wh, strict=True):
        summary.append([f"{name} kWh", float(format_quantity(value, 3))])
    summary.append(["cost", float(format_decimal(report.cost_micros))])
    summary.append(["recharges", float(format_decimal(report.recharges_micros))])
    summary.append(["offline", report.offline])
    summary.append(["tripped", report.tripped])
    summary.append(["low balance", report.low_balance])
    meters = book.create_sheet("meters")
    meters.append(["meter", "kWh", *[f"{b} kWh" for b in BANDS], "cost", "balance", "estimated", "online", "tripped"])
    for line in report.lines:
        meters.append(
            [
                line.meter_id,
                float(format_quantity(line.energy_wh, 3)),
                *[float(format_quantity(v, 3)) for v in line.bands_wh],
                float(format_decimal(line.cost_micros)),
                float(format_decimal(line.balance_micros)),
                line.estimated,
                line.online,
                line.relay_open,
            ]
        )
    book.save(path)
