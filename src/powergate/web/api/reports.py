"""``/api/v1/reports``: the daily report of a site (JSON or Excel), running the daily / monthly freeze and the
monthly settlement, and the stored settlements.

Staff read reports; finance (and admins) run freezes and settlements (each run is once per period, whoever
asks: ``powergate.services.freeze``; audited). Amounts are integer micros and energy integer Wh. Days and months
are site-local (docs/freeze.md).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from powergate.services import daily_report, freeze, queries
from powergate.store.audit import record_audit
from powergate.web.api._common import (
    ERRORS,
    MAX_ID,
    Cursor,
    DbEngine,
    Finance,
    Limit,
    Model,
    Now,
    PageOut,
    StaffReader,
    found,
    paged,
    problem,
    scope_of,
)
from powergate.web.api._models import mirror

router = APIRouter(prefix="/reports", tags=["reports"], responses=ERRORS)
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FIRST_DAY = dt.date(2000, 1, 1)
LAST_DAY = dt.date(2100, 12, 31)
SiteQuery = Annotated[int, Query(ge=1, le=MAX_ID)]
DayQuery = Annotated[dt.date, Query(ge=FIRST_DAY, le=LAST_DAY, description="site-local day, YYYY-MM-DD")]


@mirror(daily_report.MeterLine, types={"bands_wh": list[int]})
class MeterLineOut(Model):
    pass


class DailyReportOut(BaseModel):
    site_id: int
    day: dt.date
    meters: int
    energy_wh: int
    bands_wh: list[int]
    cost_micros: int
    recharges_micros: int
    recharge_count: int
    estimated: int
    offline: int
    tripped: int
    low_balance: int
    lines: list[MeterLineOut]


class DayIn(BaseModel):
    site_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    day: Annotated[dt.date, Field(ge=FIRST_DAY, le=LAST_DAY)]


class MonthIn(BaseModel):
    site_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    month: Annotated[dt.date, Field(ge=FIRST_DAY, le=LAST_DAY, description="any day of the month")]


class FreezeRunOut(Model):
    period: str
    ran: bool
    """False when another run had done (or is doing) this period, or the period has not ended."""
    meters: int
    estimated: int
    problems: list[str]


class SettlementRunOut(BaseModel):
    settled: int
    problems: list[str]


@mirror(queries.SettlementRow)
class SettlementOut(Model):
    pass


def _report(engine: DbEngine, who: StaffReader, site_id: int, day: dt.date) -> daily_report.DailyReport:
    with engine.connect() as conn:
        found(queries.get_site(conn, scope_of(who), site_id), "site", site_id)
        try:
            return daily_report.daily_report(conn, site_id, day)
        except daily_report.NotFrozen as error:
            raise problem("day", str(error), 404) from None


@router.get("/daily", response_model=DailyReportOut)
def get_daily_report(site_id: SiteQuery, day: DayQuery, who: StaffReader, engine: DbEngine) -> DailyReportOut:
    """The day's report from its freeze: energy per band, cost, recharges, offline / tripped / low balance."""
    report = _report(engine, who, site_id, day)
    return DailyReportOut(
        site_id=site_id,
        day=day,
        meters=len(report.lines),
        energy_wh=report.energy_wh,
        bands_wh=list(report.bands_wh),
        cost_micros=report.cost_micros,
        recharges_micros=report.recharges_micros,
        recharge_count=report.recharge_count,
        estimated=report.estimated,
        offline=report.offline,
        tripped=report.tripped,
        low_balance=report.low_balance,
        lines=[MeterLineOut.model_validate(line) for line in report.lines],
    )


@router.get(
    "/daily.xlsx",
    response_class=Response,
    responses={200: {"content": {XLSX: {"schema": {"type": "string", "format": "binary"}}}}},
)
def get_daily_report_xlsx(site_id: SiteQuery, day: DayQuery, who: StaffReader, engine: DbEngine) -> Response:
    """The day's report as an Excel workbook (a summary sheet and one row per meter)."""
    report = _report(engine, who, site_id, day)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "daily.xlsx"
        daily_report.export_xlsx(report, path)
        content = path.read_bytes()
    name = f"daily-{site_id}-{day.isoformat()}.xlsx"
    return Response(content, media_type=XLSX, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _check_site(engine: DbEngine, who: Finance, site_id: int) -> None:
    with engine.connect() as conn:
        found(queries.get_site(conn, scope_of(who), site_id), "site", site_id)


def _audited(
    engine: DbEngine, who: Finance, action: str, site_id: int, period: str, detail: dict[str, object], now: dt.datetime
) -> None:
    with engine.begin() as conn:
        record_audit(conn, who.actor, action, f"site:{site_id}", f"{action} {period} requested", detail, now)


@router.post("/daily-freeze", response_model=FreezeRunOut)
async def run_daily_freeze(body: DayIn, who: Finance, engine: DbEngine, now: Now) -> FreezeRunOut:
    """Freeze the site's meters for a site-local day that has ended (once; a repeat reports ``ran: false``)."""
    await run_in_threadpool(_check_site, engine, who, body.site_id)
    run = await run_in_threadpool(freeze.daily_freeze, engine, body.site_id, body.day, now)
    if run.ran:
        detail: dict[str, object] = {"meters": run.meters, "estimated": run.estimated}
        await run_in_threadpool(_audited, engine, who, "daily_freeze", body.site_id, run.period, detail, now)
    return FreezeRunOut.model_validate(run)


@router.post("/monthly-freeze", response_model=FreezeRunOut)
async def run_monthly_freeze(body: MonthIn, who: Finance, engine: DbEngine, now: Now) -> FreezeRunOut:
    """Freeze every day of the month (those not done yet) and sum them per meter (once per month)."""
    await run_in_threadpool(_check_site, engine, who, body.site_id)
    run = await run_in_threadpool(freeze.monthly_freeze, engine, body.site_id, body.month.replace(day=1), now)
    if run.ran:
        detail: dict[str, object] = {"meters": run.meters}
        await run_in_threadpool(_audited, engine, who, "monthly_freeze", body.site_id, run.period, detail, now)
    return FreezeRunOut.model_validate(run)


@router.post("/monthly-settlement", response_model=SettlementRunOut)
async def run_monthly_settlement(body: MonthIn, who: Finance, engine: DbEngine, now: Now) -> SettlementRunOut:
    """Settle every wallet of the site for the month from the journal; lines that do not tie out are problems."""
    await run_in_threadpool(_check_site, engine, who, body.site_id)
    month = body.month.replace(day=1)
    result = await run_in_threadpool(freeze.monthly_settlement, engine, body.site_id, month, now)
    if result.settlements:
        detail: dict[str, object] = {"settled": len(result.settlements), "problems": len(result.problems)}
        period = f"{month:%Y-%m}"
        await run_in_threadpool(_audited, engine, who, "monthly_settlement", body.site_id, period, detail, now)
    return SettlementRunOut(settled=len(result.settlements), problems=result.problems)


@router.get("/monthly-settlements", response_model=PageOut[SettlementOut])
def list_settlements(
    site_id: SiteQuery,
    month: Annotated[dt.date, Query(ge=FIRST_DAY, le=LAST_DAY, description="any day of the month")],
    who: StaffReader,
    engine: DbEngine,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[SettlementOut]:
    """The stored settlements of the site's accounts for the month: opening + flows = closing, exactly."""
    with engine.connect() as conn:
        found(queries.get_site(conn, scope_of(who), site_id), "site", site_id)
        return paged(
            lambda: queries.list_settlements(conn, scope_of(who), site_id, month, cursor=cursor, limit=limit),
            SettlementOut,
        )
