"""Recharge from the portal: choose an amount and a channel, pay, and watch the order until power is back.

- ``GET /portal/recharge``: presets within the site's minimum purchase and hoarding limit, a custom amount,
  the site's enabled online channels that this app has adapters for, and a hidden ``idempotency_key``.
- ``POST /portal/recharge``: ``services.payments.create_order`` (which checks the site's policy again) inside
  ``powergate.web.idempotency.idempotent``: a double tap or a retried post places one order. 303 to the status
  page; a refusal shows the form again (422) naming what was wrong.
- ``GET /portal/recharge/{order_no}``: the live status page; ``.../status`` is the fragment htmx polls every
  two seconds until the recharge is done or failed: awaiting payment -> paid -> sent to meter -> power
  restored (``services.portal.recharge_status``).
- ``POST /portal/recharge/{order_no}/pay``: the sandbox channel's pay step (demo and tests): the sandbox
  signs a notification exactly as a provider would and it goes through ``payments.handle_notification``.
  WeChat Pay and Alipay orders are paid at the provider (the page links to ``code_url`` / ``pay_url``); their
  notifications arrive at the API's notify endpoint.

An order of another account is 404, like an unknown one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from powergate.domain.money import MICROS_PER_UNIT, micros_to_minor
from powergate.services import payments, portal
from powergate.web.deps import get_engine
from powergate.web.i18n import language
from powergate.web.idempotency import idempotent
from powergate.web.portal._catalog import CATALOG
from powergate.web.portal._common import Tenant, TenantDep, field, now, payment_channels, render

router = APIRouter(prefix="/recharge", tags=["portal"], include_in_schema=False)

OrderNo = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
POLL_EVERY_S = 2


def _options(engine: Engine, account: portal.TenantAccount, configured: list[str]) -> portal.RechargeOptions:
    with engine.connect() as conn:
        return portal.recharge_options(conn, account, configured)


def _form_page(
    request: Request,
    who: Tenant,
    options: portal.RechargeOptions,
    *,
    error: str = "",
    values: Mapping[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    preset_yuan = [str(preset // MICROS_PER_UNIT) for preset in options.presets_micros]
    context = {"options": options, "error": error, "values": dict(values or {}), "preset_yuan": preset_yuan}
    return render(request, "recharge.html", context, account=who.account, status=status)


@router.get("", response_class=HTMLResponse)
async def recharge_page(request: Request, who: Tenant = TenantDep) -> HTMLResponse:
    configured = sorted(payment_channels(request))
    options = await run_in_threadpool(_options, get_engine(request), who.account, configured)
    return _form_page(request, who, options)


def _place(
    engine: Engine,
    channels: Mapping[str, Any],
    account: portal.TenantAccount,
    amount_text: str,
    channel: str,
    at: dt.datetime,
    expiry_s: int | None = None,
) -> tuple[int, dict[str, Any]]:
    options = _options(engine, account, sorted(channels))
    if not options.open:
        return 422, {"field": "account", "detail": "this account is not open; it cannot be recharged"}
    if channel not in options.channels:
        offered = ", ".join(options.channels) or "none"
        return 422, {"field": "channel", "detail": f"choose one of the offered channels ({offered})"}
    amount = portal.parse_amount(amount_text, options, account.currency)
    if isinstance(amount, portal.Refused):
        return 422, {"field": amount.field, "detail": amount.message}
    order = payments.NewOrder(
        wallet=account.wallet,
        amount_fen=micros_to_minor(amount),
        channel=channel,
        method=portal.PAY_METHOD[channel],
        description=f"{account.site_name} {account.account_no}"[:128],
        expiry_s=expiry_s,
    )
    placed = payments.create_order(engine, channels, order, None, at)
    if isinstance(placed, payments.Refused):
        return 422, {"field": placed.field, "detail": placed.message}
    return 303, {"order_no": placed.order_no}


@router.post("")
async def place_order(request: Request, who: Tenant = TenantDep) -> Response:
    form = await request.form()
    amount_text = field(form, "custom_amount", 32) or field(form, "amount", 32)
    channel = field(form, "channel", 16)
    engine = get_engine(request)
    channels = payment_channels(request)
    at = now(request)
    expiry_s = request.app.state.settings.order_expiry_s

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(_place, engine, channels, who.account, amount_text, channel, at, expiry_s)

    def show(status: int, body: Any) -> Response:
        if status == 303:
            return RedirectResponse(f"/portal/recharge/{body['order_no']}", status_code=303)
        options = _options(engine, who.account, sorted(channels))
        values = {"amount": amount_text, "channel": channel}
        error = f"{body.get('field', '')}: {body.get('detail', '')}"
        return _form_page(request, who, options, error=error, values=values, status=status)

    return await idempotent(request, who.principal, run, render=show)


def _status(engine: Engine, account: portal.TenantAccount, order_no: str, at: dt.datetime) -> portal.RechargeStatus:
    with engine.connect() as conn:
        found = portal.recharge_status(conn, account, order_no, at)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no order {order_no}")
    return found


STEPS = ("pay", "paid", "sent", "restored")
STEP_OF_STAGE = {
    portal.Stage.AWAITING_PAYMENT: 0,
    portal.Stage.PAID: 1,
    portal.Stage.QUEUED: 1,
    portal.Stage.STILL_OFF: 1,
    portal.Stage.SUPPLY_ON: 3,
    portal.Stage.SENT: 2,
    portal.Stage.RESTORED: 3,
    portal.Stage.METER_CREDITED: 3,
}


def _status_context(status: portal.RechargeStatus) -> dict[str, Any]:
    done = STEP_OF_STAGE.get(status.stage, -1)
    return {"status": status, "steps": STEPS, "done_step": done, "poll_every_s": POLL_EVERY_S}


@router.get("/{order_no}", response_class=HTMLResponse)
async def status_page(request: Request, order_no: str = OrderNo, who: Tenant = TenantDep) -> HTMLResponse:
    status = await run_in_threadpool(_status, get_engine(request), who.account, order_no, now(request))
    return render(request, "recharge_status.html", _status_context(status), account=who.account)


@router.get("/{order_no}/status", response_class=HTMLResponse)
async def status_fragment(request: Request, order_no: str = OrderNo, who: Tenant = TenantDep) -> HTMLResponse:
    status = await run_in_threadpool(_status, get_engine(request), who.account, order_no, now(request))
    return render(request, "recharge_progress.html", _status_context(status), account=who.account)


def _pay_sandbox(
    engine: Engine, channels: Mapping[str, Any], account: portal.TenantAccount, order_no: str, at: dt.datetime
) -> tuple[int, dict[str, Any]]:
    with engine.connect() as conn:
        order = portal.order_of(conn, account, order_no)
    if order is None:
        return 404, {"detail": f"no order {order_no}"}
    if order.channel != "sandbox":
        return 409, {"detail": f"order {order_no} is paid through {order.channel}, not the sandbox"}
    sandbox = channels.get("sandbox")
    if sandbox is None:
        return 409, {"detail": "the sandbox channel is not configured"}
    if order.state == "created":
        try:
            headers, body = sandbox.pay(order_no, at)
        except KeyError:
            return 409, {"detail": f"the sandbox does not know order {order_no} (was the server restarted?)"}
        outcome = payments.handle_notification(engine, channels, "sandbox", headers, body, at)
        if outcome.verdict is payments.Verdict.REJECTED:
            return 409, {"detail": outcome.reason}
    return 303, {"order_no": order_no}


@router.post("/{order_no}/pay")
async def pay_sandbox(request: Request, order_no: str = OrderNo, who: Tenant = TenantDep) -> Response:
    engine = get_engine(request)
    channels = payment_channels(request)
    at = now(request)

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(_pay_sandbox, engine, channels, who.account, order_no, at)

    def show(status: int, body: Any) -> Response:
        if status == 303:
            return RedirectResponse(f"/portal/recharge/{order_no}", status_code=303)
        _ = CATALOG.gettext(language(request))
        context = {"message": str(body.get("detail", "")), "title": _("error.title")}
        return render(request, "error.html", context, account=who.account, status=status)

    return await idempotent(request, who.principal, run, render=show)
