"""Console: reports (报表). The monthly comprehensive report of a site (per account: opening balance, recharges,
energy with its TOU split and cost, deductions, fees, refunds, adjustments, closing balance; totals),
year-on-year by month, and energy by day / month / year. Each one is a page and an Excel download (.xlsx, exact
decimals with number formats, headers in the page's language).

Figures come from ``powergate.services.reports`` (the ledger and the daily freezes, integers); this module only
parses the parameters and formats. Every staff role may read reports.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from powergate.services import reports
from powergate.web.console._common_b import (
    Staff,
    choice_param,
    date_param,
    int_param,
    local_today,
    month_param,
    organisation_zone,
    read,
    site_choice,
    sites_of,
    xlsx_response,
)
from powergate.web.console._render import render
from powergate.web.deps import now
from powergate.web.i18n import language

router = APIRouter(prefix="/reports", tags=["console"])

PERIODS = tuple(p.value for p in reports.Period)
FORMATS = ("html", "xlsx")


def _previous_month(today: dt.date) -> dt.date:
    return (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)


@router.get("", response_class=HTMLResponse)
async def index(request: Request, who: Staff) -> Response:
    sites = await sites_of(request, who)
    today = local_today(now(request), organisation_zone(sites))
    return render(
        request,
        "reports.html",
        who,
        sites=sites,
        month=_previous_month(today),
        year=today.year,
        first=today - dt.timedelta(days=29),
        last=today,
        periods=PERIODS,
    )


@router.get("/monthly", response_class=HTMLResponse)
async def monthly(request: Request, who: Staff) -> Response:
    params = request.query_params
    sites = await sites_of(request, who)
    site = site_choice(sites, params.get("site"), required=True)
    if site is None:
        raise HTTPException(status_code=404, detail="site: the organisation has no site yet")
    today = local_today(now(request), site.timezone)
    month = month_param(params.get("month"), "month") or _previous_month(today)
    fmt = choice_param(params.get("format"), "format", FORMATS) or "html"
    report = await read(request, lambda conn: reports.monthly_report(conn, who.organisation_id, site.id, month))
    assert report is not None, "the site was checked to be the organisation's"
    if fmt == "xlsx":
        content = reports.monthly_xlsx(report, language(request))
        return xlsx_response(content, f"monthly-{site.name}-{month:%Y-%m}.xlsx")
    return render(request, "reports_monthly.html", who, sites=sites, site=site, report=report, bands=reports.BANDS)


@router.get("/yoy", response_class=HTMLResponse)
async def year_on_year(request: Request, who: Staff) -> Response:
    params = request.query_params
    sites = await sites_of(request, who)
    site = site_choice(sites, params.get("site"))
    today = local_today(now(request), site.timezone if site else organisation_zone(sites))
    year = int_param(params.get("year"), "year", minimum=2000, maximum=2200) or today.year
    fmt = choice_param(params.get("format"), "format", FORMATS) or "html"
    rows = await read(request, lambda conn: reports.year_on_year(conn, who.organisation_id, site, year))
    if fmt == "xlsx":
        content = reports.year_on_year_xlsx(rows, year, language(request))
        return xlsx_response(content, f"year-on-year-{year}.xlsx")
    change = {
        r.month: (
            reports.YearOnYearRow.change_permille(r.energy_wh, r.previous_energy_wh),
            reports.YearOnYearRow.change_permille(r.income_fen, r.previous_income_fen),
        )
        for r in rows
    }
    totals = {
        name: sum(getattr(r, name) for r in rows)
        for name in ("energy_wh", "previous_energy_wh", "cost_micros", "previous_cost_micros", "income_fen",
                     "previous_income_fen")
    }  # fmt: skip
    return render(
        request, "reports_yoy.html", who, sites=sites, site=site, year=year, rows=rows, change=change, totals=totals
    )


@router.get("/energy", response_class=HTMLResponse)
async def energy(request: Request, who: Staff) -> Response:
    params = request.query_params
    sites = await sites_of(request, who)
    site = site_choice(sites, params.get("site"))
    today = local_today(now(request), site.timezone if site else organisation_zone(sites))
    period = reports.Period(choice_param(params.get("period"), "period", PERIODS) or "day")
    last = date_param(params.get("to"), "to") or today
    span = {"day": 30, "month": 365, "year": 3 * 365}[period.value]
    first = date_param(params.get("from"), "from") or last - dt.timedelta(days=span - 1)
    fmt = choice_param(params.get("format"), "format", FORMATS) or "html"

    def work(conn: Any) -> list[reports.EnergyRow]:
        return reports.energy_by(conn, who.organisation_id, site.id if site else None, period, first, last)

    try:
        rows = await read(request, work)
    except ValueError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    if fmt == "xlsx":
        content = reports.energy_xlsx(rows, period, language(request))
        return xlsx_response(content, f"energy-{period.value}-{first.isoformat()}-{last.isoformat()}.xlsx")
    totals = reports.EnergyRow(
        "",
        sum(r.energy_wh for r in rows),
        (
            sum(r.bands_wh[0] for r in rows),
            sum(r.bands_wh[1] for r in rows),
            sum(r.bands_wh[2] for r in rows),
            sum(r.bands_wh[3] for r in rows),
        ),
        sum(r.cost_micros for r in rows),
        sum(r.meter_days for r in rows),
    )
    return render(
        request,
        "reports_energy.html",
        who,
        sites=sites,
        site=site,
        period=period.value,
        periods=PERIODS,
        first=first,
        last=last,
        rows=rows,
        totals=totals,
        bands=reports.BANDS,
    )
