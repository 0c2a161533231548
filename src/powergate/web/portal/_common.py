"""Shared pieces of the tenant portal: who the tenant is, page rendering, form fields, channels.

Not a router (the leading underscore keeps it out of router discovery). Every portal page depends on
``tenant``: an anonymous visitor is sent to ``/portal/login`` (303), a staff user to the console (303 for a
page, 403 for a form post), and the tenant's one account is loaded scoped by organisation and account id, so
no query below can reach another account (404 when the account is gone).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from powergate.domain.money import format_decimal
from powergate.services import portal
from powergate.web.deps import Principal, Role, csrf_token, get_engine, page_principal
from powergate.web.deps import now as request_now
from powergate.web.i18n import format_money, language
from powergate.web.portal._catalog import CATALOG

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
MAX_FIELD_CHARS = 200
CONSOLE_HOME = "/console/"


@dataclass(frozen=True)
class Tenant:
    """The logged-in tenant and the one account they may see."""

    principal: Principal
    account: portal.TenantAccount


def _load_account(engine: Engine, organisation_id: int, account_id: int) -> portal.TenantAccount | None:
    with engine.connect() as conn:
        return portal.tenant_account(conn, organisation_id, account_id)


async def tenant(request: Request) -> Tenant:
    """FastAPI dependency of every portal page: the tenant and their account (see the module docstring)."""
    who = await page_principal(request)
    if who.role is not Role.TENANT:
        if request.method in ("GET", "HEAD"):
            raise HTTPException(status_code=303, detail="staff use the console", headers={"Location": CONSOLE_HOME})
        raise HTTPException(status_code=403, detail="the tenant portal is for tenants; staff use the console")
    assert who.account_id is not None, "a tenant principal always has its account"
    account = await run_in_threadpool(_load_account, get_engine(request), who.organisation_id, who.account_id)
    if account is None:
        raise HTTPException(status_code=404, detail="the account of this login no longer exists")
    return Tenant(who, account)


TenantDep = Depends(tenant)


def kwh(energy_wh: int) -> str:
    """Wh as kWh with two decimals, exactly (integer arithmetic; registers count 0.01 kWh)."""
    hundredths = (abs(energy_wh) + 5) // 10
    sign = "-" if energy_wh < 0 and hundredths else ""
    return f"{sign}{hundredths // 100:,}.{hundredths % 100:02d}"


def local_time(at: dt.datetime | None, account: portal.TenantAccount, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "" if at is None else at.astimezone(account.zone).strftime(fmt)


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    account: portal.TenantAccount | None = None,
    status: int = 200,
) -> HTMLResponse:
    """A portal page in the request's language, with the helpers every template uses."""
    lang = language(request)
    currency_code = account.currency if account is not None else "CNY"
    helpers: dict[str, Any] = {
        "lang": lang,
        "other_lang": "en" if lang == "zh-CN" else "zh-CN",
        "_": CATALOG.gettext(lang),
        "money": lambda micros: format_money(int(micros), lang, currency_code),
        "kwh": kwh,
        "plain": lambda micros: format_decimal(int(micros)),
        "when": (lambda at, fmt="%Y-%m-%d %H:%M": local_time(at, account, fmt)) if account else (lambda at, fmt="": ""),
        "csrf": csrf_token(request),
        "account": account,
        "path": request.url.path,
        "new_key": lambda: str(uuid.uuid4()),
    }
    return TEMPLATES.TemplateResponse(request, template, {**helpers, **context}, status_code=status)


def field(form: FormData, name: str, limit: int = MAX_FIELD_CHARS) -> str:
    """A text form field, trimmed; a file or an over-long value is a 422 naming the field."""
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HTTPException(status_code=422, detail=f"{name}: expected text")
    if len(value) > limit or "\x00" in value:
        raise HTTPException(status_code=422, detail=f"{name}: at most {limit} characters of text")
    return value.strip()


def payment_channels(request: Request) -> Mapping[str, Any]:
    """The app's one set of payment channel adapters (shared with the API: the sandbox keeps trades in memory)."""
    from powergate.web.api._common import payment_channels as shared

    return shared(request)


def now(request: Request) -> dt.datetime:
    return request_now(request)
