"""Rendering console pages: one ``Jinja2Templates`` for the console, the layout's context, and display filters.

``render(request, name, principal, **ctx)`` gives every template ``t`` (the console catalog's lookup in the
request's language), ``lang``, ``principal``, ``csrf_token``, the navigation and the language links; filters
``money`` (integer micros), ``fen`` (integer minor units), ``kwh`` (integer Wh) and ``localtime`` (an aware
datetime in a site's time zone). Amounts are rounded only here, for display, by the one rule of
``powergate.domain.money``. console-b renders its pages through the same function.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context

from powergate.domain.money import currency as currency_of
from powergate.domain.money import minor_to_micros
from powergate.services.monitoring import zone
from powergate.web.console._i18n import CATALOG
from powergate.web.deps import STAFF, Principal, csrf_token, require_page
from powergate.web.i18n import LANGS, format_money, language

StaffPage = Annotated[Principal, Depends(require_page(*STAFF))]
"""A console page's principal: any staff role; anonymous -> 303 to the login page, a tenant -> 403."""
TEMPLATE_DIR = Path(__file__).with_name("templates")
TEMPLATES = Jinja2Templates(directory=str(TEMPLATE_DIR))

NAV: tuple[tuple[str, str], ...] = (
    ("nav.dashboard", "/console/"),
    ("nav.monitor", "/console/monitor"),
    ("nav.accounts", "/console/accounts"),
    ("nav.tariffs", "/console/tariffs"),
    ("nav.finance", "/console/finance"),
    ("nav.reports", "/console/reports"),
    ("nav.billing", "/console/billing"),
    ("nav.batches", "/console/batches"),
    ("nav.alarms", "/console/alarms"),
    ("nav.audit", "/console/audit"),
    ("nav.users", "/console/users"),
)
SECTION_OF = {"/console/rooms": "/console/monitor"}
"""Pages that belong to another section of the navigation (a room is opened from the monitoring grid)."""
LANGUAGE_LABELS = {"zh-CN": "中文", "en": "English"}


def format_kwh(energy_wh: int | None) -> str:
    """Wh as kWh with two decimals, rounded half-up (display only); "—" when unknown."""
    if energy_wh is None:
        return "—"
    sign = "-" if energy_wh < 0 else ""
    centi = (abs(int(energy_wh)) + 5) // 10
    return f"{sign}{centi // 100:,}.{centi % 100:02d}"


def fast_money(amount_micros: int, currency: str = "CNY") -> str:
    """The same text as ``powergate.web.i18n.format_money`` (half-up to the minor unit, thousands separators,
    sign before the symbol) in integer arithmetic: the grid formats thousands of balances per request."""
    cur = currency_of(currency)
    step = cur.micros_per_minor
    minor, rest = divmod(abs(amount_micros), step)
    if 2 * rest >= step:
        minor += 1
    sign = "-" if amount_micros < 0 and minor else ""
    if cur.exponent == 0:
        return f"{sign}{cur.symbol}{minor:,}"
    units, cents = divmod(minor, 10**cur.exponent)
    return f"{sign}{cur.symbol}{units:,}.{cents:0{cur.exponent}d}"


@pass_context
def _money(context: Context, amount_micros: int | None, currency: str = "CNY") -> str:
    if amount_micros is None:
        return "—"
    return format_money(int(amount_micros), str(context["lang"]), currency)


@pass_context
def _fen(context: Context, amount_minor: int | None, currency: str = "CNY") -> str:
    if amount_minor is None:
        return "—"
    micros = minor_to_micros(int(amount_minor), currency_of(currency))
    return format_money(micros, str(context["lang"]), currency)


def _localtime(moment: dt.datetime | None, timezone: str = "Asia/Shanghai") -> str:
    if moment is None:
        return "—"
    return moment.astimezone(zone(timezone)).strftime("%Y-%m-%d %H:%M")


TEMPLATES.env.filters["money"] = _money
TEMPLATES.env.filters["fen"] = _fen
TEMPLATES.env.filters["kwh"] = format_kwh
TEMPLATES.env.filters["localtime"] = _localtime
TEMPLATES.env.globals["new_key"] = lambda: str(uuid.uuid4())


def _nav(path: str) -> list[dict[str, Any]]:
    for prefix, section in SECTION_OF.items():
        if path.startswith(prefix):
            path = section
    items = []
    for key, href in NAV:
        active = path == href if href == "/console/" else path == href or path.startswith(href + "/")
        items.append({"key": key, "href": href, "active": active})
    return items


def page_context(request: Request, principal: Principal) -> dict[str, Any]:
    """What the layout needs; also handy for partials rendered outside a full page."""
    lang = language(request)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return {
        "request": request,
        "t": CATALOG.gettext(lang),
        "lang": lang,
        "principal": principal,
        "csrf_token": csrf_token(request),
        "nav": _nav(request.url.path),
        "here": here,
        "languages": [(code, LANGUAGE_LABELS[code]) for code in LANGS],
    }


def render(
    request: Request,
    name: str,
    principal: Principal,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    **ctx: Any,
) -> HTMLResponse:
    """Render console template ``name`` with the layout's context plus ``ctx``."""
    context = {**page_context(request, principal), **ctx}
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=status_code, headers=headers)
    assert isinstance(response, HTMLResponse)
    return response
