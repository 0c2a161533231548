"""Helpers shared by console-b's pages (accounts, tariffs, finance, reports, alarms, audit, users).

Query parameters are operator input: a malformed one is answered 422 with a message naming it, never a 500.
Database work runs in the thread pool (``run_in_threadpool``) so a slow report never blocks the event loop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import Depends, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool

from powergate.services.reports import SiteInfo, organisation_sites
from powergate.web.deps import STAFF, Principal, Role, get_engine, require_page

T = TypeVar("T")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DEFAULT_ZONE = "Asia/Shanghai"
MAX_FORM_CHARS = 20_000

OPERATORS = (Role.ADMIN, Role.OPERATOR)
"""Who opens and closes accounts and imports."""
ACKNOWLEDGERS = (Role.ADMIN, Role.OPERATOR, Role.FINANCE)
"""Who acknowledges alarms (as in the HTTP API: finance answers for the money mismatches)."""
PRICE_SETTERS = (Role.ADMIN, Role.FINANCE)
"""Who creates tariffs and tariff versions (prices are money)."""

Staff = Annotated[Principal, Depends(require_page(*STAFF))]
Operator = Annotated[Principal, Depends(require_page(*OPERATORS))]
Acknowledger = Annotated[Principal, Depends(require_page(*ACKNOWLEDGERS))]
PriceSetter = Annotated[Principal, Depends(require_page(*PRICE_SETTERS))]
Admin = Annotated[Principal, Depends(require_page(Role.ADMIN))]


async def read(request: Request, work: Callable[[Connection], T]) -> T:
    """``work(conn)`` in a read transaction, in the thread pool."""
    engine = get_engine(request)

    def run() -> T:
        with engine.connect() as conn:
            return work(conn)

    return await run_in_threadpool(run)


async def write(request: Request, work: Callable[[Connection], T]) -> T:
    """``work(conn)`` in one write transaction (committed when it returns), in the thread pool."""
    engine = get_engine(request)

    def run() -> T:
        with engine.begin() as conn:
            return work(conn)

    return await run_in_threadpool(run)


async def with_engine(request: Request, work: Callable[[Engine], T]) -> T:
    engine = get_engine(request)
    return await run_in_threadpool(work, engine)


def bad(field: str, message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=f"{field}: {message}")


def int_param(value: str | None, field: str, *, minimum: int = 0, maximum: int = 2**62) -> int | None:
    """An optional integer query parameter ("" is absent)."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if not text.lstrip("-").isdigit() or len(text) > 19:
        raise bad(field, f"expected a whole number, got {value[:40]!r}")
    number = int(text)
    if not minimum <= number <= maximum:
        raise bad(field, f"must be {minimum}..{maximum}")
    return number


def date_param(value: str | None, field: str) -> dt.date | None:
    if value is None or value.strip() == "":
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise bad(field, f"expected a date like 2026-11-30, got {value[:40]!r}") from None


def month_param(value: str | None, field: str) -> dt.date | None:
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if len(text) == 7:
        try:
            return dt.date.fromisoformat(f"{text}-01")
        except ValueError:
            pass
    raise bad(field, f"expected a month like 2026-11, got {value[:40]!r}")


def choice_param(value: str | None, field: str, choices: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    if value not in choices:
        raise bad(field, f"unknown value {value[:40]!r}; expected one of {', '.join(choices)}")
    return value


def local_today(now: dt.datetime, zone: str) -> dt.date:
    return now.astimezone(ZoneInfo(zone)).date()


def local_day_bounds(first: dt.date, last: dt.date, zone: str) -> tuple[dt.datetime, dt.datetime]:
    """[00:00 local on ``first``, 00:00 local after ``last``) in UTC."""
    tz = ZoneInfo(zone)
    start = dt.datetime.combine(first, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    return start, end


def organisation_zone(sites: list[SiteInfo]) -> str:
    """The zone dates are read in when no site is chosen: the organisation's first site's (else Shanghai)."""
    return sites[0].timezone if sites else DEFAULT_ZONE


async def sites_of(request: Request, who: Principal) -> list[SiteInfo]:
    return await read(request, lambda conn: organisation_sites(conn, who.organisation_id))


def site_choice(sites: list[SiteInfo], value: str | None, *, required: bool = False) -> SiteInfo | None:
    """The chosen site of the organisation; another organisation's id is 404 (ids do not leak)."""
    site_id = int_param(value, "site", minimum=1)
    if site_id is None:
        if required and sites:
            return sites[0]
        return None
    found = next((s for s in sites if s.id == site_id), None)
    if found is None:
        raise HTTPException(status_code=404, detail=f"site: no site {site_id}")
    return found


def xlsx_response(content: bytes, filename: str) -> Response:
    headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"}
    return Response(content=content, media_type=XLSX, headers=headers)


def form_text(form: Any, name: str, limit: int = MAX_FORM_CHARS) -> str:
    """A text field of a submitted form ("" when absent), at most ``limit`` characters (422 beyond)."""
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad(name, "expected text")
    if len(value) > limit:
        raise bad(name, f"at most {limit} characters")
    return value


def can(principal: Principal, roles: tuple[Role, ...]) -> bool:
    return principal.role in roles
