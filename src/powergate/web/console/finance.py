"""Console: finance (财务). Orders with filters (dates, channel, state, account, site), order detail with its
payment notifications and refunds, and income charts by day / month / year and by channel.

The charts are Chart.js (vendored) drawn by ``/static/console/b-finance.js`` from this module's JSON endpoint
``/console/finance/income.json``; the same figures download as Excel. Sums are integer fen from
``powergate.services.reports.income_by`` (organisation-scoped); dates are the site's local days.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from powergate.services import queries, reports
from powergate.services.finance import ReportTooLarge
from powergate.store.tables_payments import CHANNELS, ORDER_STATES
from powergate.web.console._common_b import (
    Staff,
    choice_param,
    date_param,
    int_param,
    local_day_bounds,
    local_today,
    organisation_zone,
    read,
    site_choice,
    sites_of,
    xlsx_response,
)
from powergate.web.console._i18n import CATALOG
from powergate.web.console._render import render
from powergate.web.deps import Principal, now
from powergate.web.i18n import language

router = APIRouter(prefix="/finance", tags=["console"])

PAGE_SIZE = 50
PERIODS = tuple(p.value for p in reports.Period)
DEFAULT_SPAN = {"day": 30, "month": 365, "year": 3 * 365}


def _dates(request: Request, zone: str, default_days: int) -> tuple[dt.date, dt.date]:
    today = local_today(now(request), zone)
    last = date_param(request.query_params.get("to"), "to") or today
    first = date_param(request.query_params.get("from"), "from") or last - dt.timedelta(days=default_days - 1)
    if last < first:
        raise HTTPException(status_code=422, detail="to: the last day is before the first (from)")
    if (last - first).days > reports.MAX_SPAN_DAYS:
        raise HTTPException(status_code=422, detail=f"to: at most {reports.MAX_SPAN_DAYS} days after from")
    return first, last


@router.get("", response_class=HTMLResponse)
async def orders_page(request: Request, who: Staff) -> Response:
    params = request.query_params
    sites = await sites_of(request, who)
    site = site_choice(sites, params.get("site"))
    zone = site.timezone if site else organisation_zone(sites)
    first, last = _dates(request, zone, 30)
    channel = choice_param(params.get("channel"), "channel", CHANNELS)
    state = choice_param(params.get("state"), "state", ORDER_STATES)
    account_no = params.get("account", "").strip()[:32]
    page = int_param(params.get("page"), "page", minimum=1, maximum=100_000) or 1
    since, until = local_day_bounds(first, last, zone)
    wanted = queries.OrderFilter(
        site_id=site.id if site else None, channel=channel, state=state, since=since, until=until,
        account_no=account_no or None,
    )  # fmt: skip
    scope = queries.Scope(who.organisation_id)
    offset = (page - 1) * PAGE_SIZE
    found = await read(request, lambda conn: queries.number_orders(conn, scope, wanted, offset=offset, limit=PAGE_SIZE))
    base = urlencode(
        {
            "site": site.id if site else "",
            "from": first.isoformat(),
            "to": last.isoformat(),
            "channel": channel or "",
            "state": state or "",
            "account": account_no,
        }
    )
    return render(
        request,
        "finance.html",
        who,
        sites=sites,
        site=site,
        zone=zone,
        first=first,
        last=last,
        channel=channel,
        state=state,
        account_no=account_no,
        channels=CHANNELS,
        states=ORDER_STATES,
        found=found,
        page=page,
        base=base,
        periods=PERIODS,
        channel_labels={c: CATALOG.gettext(language(request))(f"channel.{c}") for c in CHANNELS},
    )


@router.get("/orders/{order_no}", response_class=HTMLResponse)
async def order_page(request: Request, order_no: str, who: Staff) -> Response:
    scope = queries.Scope(who.organisation_id)
    detail = await read(request, lambda conn: queries.get_order_detail(conn, scope, order_no[:64]))
    if detail is None:
        raise HTTPException(status_code=404, detail=f"order: no order {order_no[:64]!r}")
    sites = await sites_of(request, who)
    return render(request, "finance_order.html", who, detail=detail, zone=organisation_zone(sites))


async def _income(request: Request, who: Principal) -> tuple[list[Any], reports.Period, dt.date, dt.date]:
    params = request.query_params
    period = reports.Period(choice_param(params.get("period"), "period", PERIODS) or "day")
    sites = await sites_of(request, who)
    site = site_choice(sites, params.get("site"))
    zone = site.timezone if site else organisation_zone(sites)
    first, last = _dates(request, zone, DEFAULT_SPAN[period.value])
    channel = choice_param(params.get("channel"), "channel", CHANNELS)

    def work(conn: Any) -> list[Any]:
        return reports.income_by(
            conn, who.organisation_id, site.id if site else None, period, first, last, ZoneInfo(zone), channel
        )

    try:
        rows = await read(request, work)
    except ReportTooLarge as error:
        raise HTTPException(status_code=422, detail=f"from: {error}") from None
    return rows, period, first, last


@router.get("/income.json")
async def income_json(request: Request, who: Staff) -> Response:
    """Income per period and channel for the charts: labels, net fen per channel, totals (integers)."""
    rows, period, first, last = await _income(request, who)
    labels = sorted({r.period for r in rows})
    channels = sorted({r.channel for r in rows})
    net = {ch: [0] * len(labels) for ch in channels}
    position = {label: i for i, label in enumerate(labels)}
    for r in rows:
        net[r.channel][position[r.period]] += r.net_fen
    by_channel = {ch: sum(values) for ch, values in net.items()}
    body = {
        "period": period.value,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "labels": labels,
        "net_fen": net,
        "by_channel_fen": by_channel,
        "income_fen": sum(r.income_fen for r in rows),
        "refunds_fen": sum(r.refunds_fen for r in rows),
        "net_total_fen": sum(r.net_fen for r in rows),
    }
    return JSONResponse(body)


@router.get("/income.xlsx")
async def income_xlsx(request: Request, who: Staff) -> Response:
    rows, period, first, last = await _income(request, who)
    content = reports.income_xlsx(rows, period, language(request))
    return xlsx_response(content, f"income-{period.value}-{first.isoformat()}-{last.isoformat()}.xlsx")
