"""``/api/v1/orders`` (recharges and their payments) and ``/api/v1/refunds`` (退费 / 退电).

Finance (and admins) list orders and refunds and make refunds; viewers and operators read orders; a tenant lists
and reads their own orders. A refund takes credit out of the wallet through the ledger and pays it back in cash
or through the order's original channel (``powergate.services.payments.refund``): idempotent (header
``Idempotency-Key``) and audited with the reason. The cashier's recharge is ``POST /accounts/{id}/recharge``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from powergate.services import payments, queries
from powergate.store.tables_payments import payment_notifications
from powergate.web.api._common import (
    ERRORS,
    MAX_ID,
    NO_NUL,
    Anyone,
    Cursor,
    DbEngine,
    Finance,
    IdQuery,
    Limit,
    Model,
    Now,
    PageOut,
    Reason,
    StaffReader,
    TextQuery,
    TimeQuery,
    found,
    ok_json,
    paged,
    payment_channels,
    problem,
    scope_of,
    window,
)
from powergate.web.api._models import mirror
from powergate.web.idempotency import idempotent

router = APIRouter(tags=["orders"], responses=ERRORS)
MAX_NOTIFICATIONS = 100
OrderState = Literal["created", "paid", "closed", "expired", "refunded", "partially_refunded"]
Channel = Literal["wechat", "alipay", "cashier", "bank", "sandbox"]
OrderNoPath = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_NUL)]


@mirror(queries.OrderRow, exclude=["wallet"])  # the API names the account (id, number), not its ledger code
class OrderOut(Model):
    pass


class NotificationOut(Model):
    channel: str
    received_at: dt.datetime
    verdict: str
    reason: str


@mirror(queries.RefundRow)
class RefundOut(Model):
    pass


class OrderDetailOut(OrderOut):
    payments: list[NotificationOut]
    """The provider notifications and confirmations received for this order, with their verdicts."""
    refunds: list[RefundOut]


class RefundIn(BaseModel):
    account_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    amount_fen: Annotated[int, Field(ge=1, le=100_000_000)]
    destination: Literal["cash", "original"] = "cash"
    order_no: Annotated[str | None, Field(min_length=1, max_length=64, pattern=NO_NUL)] = None
    """Required for ``original``: the paid order whose channel pays the money back."""
    reason: Reason


@mirror(payments.RefundDone)
class RefundDoneOut(Model):
    pass


@router.get("/orders", response_model=PageOut[OrderOut])
def list_orders(
    who: Anyone,
    engine: DbEngine,
    site_id: IdQuery = None,
    account_id: IdQuery = None,
    channel: Channel | None = None,
    state: OrderState | None = None,
    since: TimeQuery = None,
    until: TimeQuery = None,
    search: TextQuery = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[OrderOut]:
    """Orders created in [since, until), newest first."""
    start, end = window(since, until)
    wanted = queries.OrderFilter(site_id, account_id, channel, state, start, end, search)
    with engine.connect() as conn:
        return paged(lambda: queries.list_orders(conn, scope_of(who), wanted, cursor=cursor, limit=limit), OrderOut)


@router.get("/orders/{order_no}", response_model=OrderDetailOut)
def get_order(order_no: OrderNoPath, who: Anyone, engine: DbEngine) -> OrderDetailOut:
    scope = scope_of(who)
    with engine.connect() as conn:
        order = found(queries.get_order(conn, scope, order_no), "order", order_no)
        seen = conn.execute(
            select(payment_notifications)
            .where(payment_notifications.c.order_no == order_no)
            .order_by(payment_notifications.c.id)
            .limit(MAX_NOTIFICATIONS)
        ).all()
        refunds = queries.list_refunds(conn, scope, queries.RefundFilter(order_no=order_no), limit=500).items
    return OrderDetailOut.model_validate(
        {
            **OrderOut.model_validate(order).model_dump(),
            "payments": [NotificationOut.model_validate(notification) for notification in seen],
            "refunds": [RefundOut.model_validate(r) for r in refunds],
        }
    )


@router.get("/refunds", response_model=PageOut[RefundOut])
def list_refunds(
    who: StaffReader,
    engine: DbEngine,
    site_id: IdQuery = None,
    account_id: IdQuery = None,
    order_no: TextQuery = None,
    state: Literal["pending", "processing", "succeeded", "failed"] | None = None,
    since: TimeQuery = None,
    until: TimeQuery = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[RefundOut]:
    """Refunds made in [since, until), newest first."""
    start, end = window(since, until)
    wanted = queries.RefundFilter(site_id, account_id, order_no, state, start, end)
    with engine.connect() as conn:
        return paged(lambda: queries.list_refunds(conn, scope_of(who), wanted, cursor=cursor, limit=limit), RefundOut)


@router.post("/refunds", response_model=RefundDoneOut, status_code=201)
async def refund(body: RefundIn, request: Request, who: Finance, engine: DbEngine, now: Now) -> Response:
    """Give credit back: in cash, or through the original channel of ``order_no``; idempotent and audited."""
    if body.destination == "original" and body.order_no is None:
        raise problem("order_no", "a refund to the original channel names the paid order it refunds")
    scope = scope_of(who)

    def lookup() -> queries.AccountRow:
        with engine.connect() as conn:
            account = found(queries.get_account(conn, scope, body.account_id), "account", body.account_id)
            if body.order_no is not None:
                order = found(queries.get_order(conn, scope, body.order_no), "order", body.order_no)
                if order.account_id != account.id:
                    raise problem("order_no", f"order {body.order_no} was not paid into account {account.account_no}")
            return account

    account = await run_in_threadpool(lookup)
    channels = payment_channels(request)

    def pay_back() -> tuple[int, Any]:
        wanted = payments.RefundRequest(
            refund_no=payments.new_refund_no(now),
            wallet=account.wallet,
            amount_fen=body.amount_fen,
            destination=payments.Destination(body.destination),
            reason=body.reason,
            operator=who.actor,
            order_no=body.order_no,
            site_id=str(account.site_id),
        )
        done = payments.refund(engine, channels, wanted, now)
        if isinstance(done, payments.Refused):
            return 422, {"detail": f"{done.field}: {done.message}"}
        return 201, ok_json(RefundDoneOut.model_validate(done))

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(pay_back)

    return await idempotent(request, who, run)
