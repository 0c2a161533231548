"""Auto-recharge from the portal: bind (amount, threshold, channel) and unbind.

``GET /portal/auto-recharge`` shows the binding (``services.autorecharge.binding``) and its recent automatic
orders; ``POST /portal/auto-recharge`` binds or re-binds (``bind`` checks the site's rules: channel enabled and
able to charge under an agreement, minimum purchase, threshold + amount within the hoarding limit) and
``POST /portal/auto-recharge/unbind`` stops it. Both are audited by the service, with the tenant as actor.
A refusal shows the form again (422) naming the field.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from powergate.domain.money import parse_micros
from powergate.services import accounts as accounts_service
from powergate.services import autorecharge, portal
from powergate.web.deps import get_engine
from powergate.web.portal._common import Tenant, TenantDep, field, now, payment_channels, render

router = APIRouter(prefix="/auto-recharge", tags=["portal"], include_in_schema=False)


def _state(engine: Engine, account: portal.TenantAccount, configured: list[str]) -> dict[str, Any]:
    with engine.connect() as conn:
        policy = accounts_service.site_payment_policy(conn, account.site_id)
        assert policy is not None
        enabled = {c.value for c in policy.channels}
        channels = [c for c in sorted(autorecharge.AGREEMENT_CHANNELS) if c in enabled and c in configured]
        return {
            "binding": autorecharge.binding(conn, account.wallet_account_id),
            "runs": autorecharge.runs(conn, account.wallet_account_id, limit=10),
            "channels": channels,
        }


async def _page(request: Request, who: Tenant, *, status: int = 200, error: str = "", notice: str = "") -> HTMLResponse:
    state = await run_in_threadpool(_state, get_engine(request), who.account, sorted(payment_channels(request)))
    return render(
        request, "autorecharge.html", {**state, "error": error, "notice": notice}, account=who.account, status=status
    )


@router.get("", response_class=HTMLResponse)
async def autorecharge_page(request: Request, who: Tenant = TenantDep) -> HTMLResponse:
    notice = "saved" if request.query_params.get("saved") else ""
    return await _page(request, who, notice=notice)


def _micros(text: str, name: str) -> int | portal.Refused:
    try:
        return parse_micros(text or "", field=name, max_decimals=2)
    except ValueError as error:
        return portal.Refused(name, str(error).removeprefix(f"{name}: "))


def _bind(
    engine: Engine, account: portal.TenantAccount, channel: str, amount: int, threshold: int, at: dt.datetime
) -> portal.Refused | None:
    with engine.begin() as conn:
        problem = autorecharge.bind(
            conn,
            account.wallet_account_id,
            channel=channel,
            amount_micros=amount,
            threshold_micros=threshold,
            actor=account.actor,
            now=at,
        )
    return None if problem is None else portal.Refused(problem.field, problem.message)


@router.post("")
async def bind(request: Request, who: Tenant = TenantDep) -> Response:
    form = await request.form()
    amount = _micros(field(form, "amount", 16), "amount")
    threshold = _micros(field(form, "threshold", 16), "threshold")
    channel = field(form, "channel", 16)
    for parsed in (amount, threshold):
        if isinstance(parsed, portal.Refused):
            return await _page(request, who, status=422, error=str(parsed))
    assert isinstance(amount, int) and isinstance(threshold, int)
    refused = await run_in_threadpool(_bind, get_engine(request), who.account, channel, amount, threshold, now(request))
    if refused is not None:
        return await _page(request, who, status=422, error=str(refused))
    return RedirectResponse("/portal/auto-recharge?saved=1", status_code=303)


def _unbind(engine: Engine, account: portal.TenantAccount, at: dt.datetime) -> None:
    with engine.begin() as conn:
        autorecharge.unbind(conn, account.wallet_account_id, actor=account.actor, now=at)


@router.post("/unbind")
async def unbind(request: Request, who: Tenant = TenantDep) -> Response:
    await run_in_threadpool(_unbind, get_engine(request), who.account, now(request))
    return RedirectResponse("/portal/auto-recharge?saved=1", status_code=303)
