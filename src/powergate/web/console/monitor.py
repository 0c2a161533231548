"""Room monitoring (``/console/monitor``): every room of a site by building and floor as colour-coded tiles, with
filters (site, building, floor, state, search), counts per state, and a partial (``/console/monitor/grid``) that
the page re-fetches every 5 s while the tab is visible (``static/console/console.js``).

Read-only, for every staff role. The grid is one set-based query (``services.monitoring.grid``); a site, building
or floor of another organisation is simply not found (404).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape

from powergate.services import monitoring
from powergate.services.monitoring import GridFilter, TileState
from powergate.web.console._render import StaffPage, fast_money, format_kwh, page_context, render
from powergate.web.deps import Principal, get_engine, now

router = APIRouter(prefix="/monitor", tags=["console"])
MAX_ID = 2**63 - 1


def _id(params: Any, name: str) -> int | None:
    text = (params.get(name) or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > MAX_ID:
        raise HTTPException(status_code=422, detail=f"{name}: {text[:40]!r} is not an id")
    return int(text)


def parse_filter(request: Request) -> GridFilter:
    """The grid filter from the query string; a bad value answers 422 naming the parameter."""
    params = request.query_params
    state_text = (params.get("state") or "").strip()
    states = [s.value for s in TileState]
    if state_text and state_text not in states:
        raise HTTPException(status_code=422, detail=f"state: {state_text[:40]!r} is not one of {', '.join(states)}")
    search = params.get("q") or ""
    if len(search) > monitoring.MAX_SEARCH_CHARS:
        raise HTTPException(status_code=422, detail=f"q: at most {monitoring.MAX_SEARCH_CHARS} characters")
    return GridFilter(
        _id(params, "site"),
        _id(params, "building"),
        _id(params, "floor"),
        TileState(state_text) if state_text else None,
        search,
    )


def _query(wanted: GridFilter, site_id: int, **override: Any) -> str:
    values: dict[str, Any] = {
        "site": site_id,
        "building": wanted.building_id,
        "floor": wanted.floor_id,
        "state": wanted.state.value if wanted.state else None,
        "q": wanted.search or None,
    }
    values.update(override)
    return urlencode({k: v for k, v in values.items() if v is not None})


def tiles_html(grid: monitoring.Grid, labels: dict[TileState, str]) -> list[Markup]:
    """Each floor row's tiles as one piece of HTML, built here rather than in a Jinja loop: a 10,000-room
    grid is 10,000 tiles, and plain string building (every text escaped) is several times faster."""
    currency = grid.site.currency
    rows: list[Markup] = []
    for row in grid.floors:
        parts: list[str] = []
        for tile in row.tiles:
            title = f"{tile.number} {labels[tile.state]}"
            if tile.account_no is not None:
                title += f" · {tile.account_no} {tile.account_name}"
            if tile.balance_micros is not None:
                title += f" · {fast_money(tile.balance_micros, currency)}"
            energy = "" if tile.today_wh is None else f"<i>{format_kwh(tile.today_wh)}</i>"
            parts.append(
                f'<a class="tile s-{tile.state.value}" href="/console/rooms/{tile.room_id}" title="{escape(title)}">'
                f"<b>{escape(tile.number)}</b>{energy}</a>"
            )
        rows.append(Markup("".join(parts)))
    return rows


def grid_context(request: Request, who: Principal, wanted: GridFilter) -> dict[str, Any]:
    """The grid of the filter, with what its template needs; 404 when the site is not the organisation's."""
    at = now(request)
    with get_engine(request).connect() as conn:
        grid = monitoring.grid(conn, who.organisation_id, wanted, at)
        sites = monitoring.org_sites(conn, who.organisation_id) if grid is not None else []
    if grid is None:
        raise HTTPException(status_code=404, detail="no such site" if wanted.site_id else "no site yet")
    t = page_context(request, who)["t"]
    site_id = grid.site.id
    labels = {s: t(f"state.{s.value}") for s in TileState}
    return {
        "grid": grid,
        "tiles_html": tiles_html(grid, labels),
        "sites": sites,
        "wanted": {
            "building_id": wanted.building_id,
            "floor_id": wanted.floor_id,
            "state": wanted.state.value if wanted.state else "",
            "search": wanted.search,
        },
        "states": [s.value for s in monitoring.STATE_ORDER],
        "state_urls": {
            s.value: "/console/monitor?" + _query(wanted, site_id, state=None if wanted.state is s else s.value)
            for s in TileState
        },
        "grid_url": "/console/monitor/grid?" + _query(wanted, site_id),
        "currency": grid.site.currency,
        "updated": at.astimezone(monitoring.zone(grid.site.timezone)).strftime("%H:%M:%S"),
    }


@router.get("", response_class=HTMLResponse, name="console_monitor")
def monitor(request: Request, who: StaffPage) -> HTMLResponse:
    return render(request, "monitor.html", who, **grid_context(request, who, parse_filter(request)))


@router.get("/grid", response_class=HTMLResponse, name="console_monitor_grid")
def monitor_grid(request: Request, who: StaffPage) -> HTMLResponse:
    """Only the grid (legend, counts and tiles): what the page swaps in on each refresh."""
    return render(request, "monitor_grid.html", who, **grid_context(request, who, parse_filter(request)))
