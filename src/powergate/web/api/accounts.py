"""``/api/v1/accounts``: list and get (balance, run-out forecast, policy, meters), stage, open, close, set the
tariff, set the balance policy, and the cashier's recharge.

Staff read; operators do account operations (stage, open, close, tariff, policy); finance sells credit at the
cashier (recharge). A tenant lists and reads only their own account. Close and recharge move money, so they run
inside ``idempotent`` (header ``Idempotency-Key``). Every change is audited with who and why, in the transaction
that makes it (through ``powergate.services.accounts``, ``services.prepaid`` and ``services.payments``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from powergate.services import accounts as accounts_service
from powergate.services import payments, prepaid, queries
from powergate.services.forecast import wallet_forecast
from powergate.store.audit import record_audit
from powergate.store.tables import tariffs
from powergate.web.api._common import (
    ERRORS,
    Anyone,
    Cursor,
    DbEngine,
    Finance,
    IdPath,
    IdQuery,
    Limit,
    Model,
    Name,
    Now,
    Operator,
    PageOut,
    Reason,
    TextQuery,
    found,
    ok_json,
    paged,
    payment_channels,
    problem,
    rejected,
    scope_of,
)
from powergate.web.api._models import mirror
from powergate.web.idempotency import idempotent

router = APIRouter(tags=["accounts"], responses=ERRORS)
MAX_MICROS = 10**15
MAX_WARNING_LEVELS = 16


@mirror(queries.AccountRow, exclude=["wallet_account_id", "meters", "rooms"])
class AccountOut(Model):
    pass


class ForecastOut(BaseModel):
    seconds_left: int
    rate_micros_per_day: int
    capped: bool
    text_en: str
    text_zh: str


@mirror(prepaid.WalletPolicy)
class PolicyOut(Model):
    pass


class AccountDetailOut(AccountOut):
    forecast: ForecastOut
    policy: PolicyOut
    supply_on: bool | None
    """The platform's last relay intent for the wallet (None until the policy first decided)."""
    meter_ids: list[str]


class StageIn(BaseModel):
    site_id: Annotated[int, Field(ge=1, le=2**63 - 1)]
    account_no: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
    name: Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[^\x00]*$")]
    phone: Annotated[str | None, Field(max_length=20, pattern=r"^[^\x00]*$")] = None
    email: Annotated[str | None, Field(max_length=254, pattern=r"^[^\x00]*$")] = None


class ReasonIn(BaseModel):
    reason: Reason


class TariffIn(BaseModel):
    tariff_id: Name
    reason: Reason


class TariffSetOut(BaseModel):
    account_id: int
    tariff_id: str
    meter_ids: list[str]


class PolicyIn(BaseModel):
    warning_levels_micros: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_MICROS)]] | None,
        Field(max_length=MAX_WARNING_LEVELS, description="null: the tariff plan's levels, else 50 / 20 / 10 yuan"),
    ] = None
    reconnect_micros: Annotated[int, Field(ge=0, le=MAX_MICROS)] = 0
    friendly_window: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[^\x00]*$")] = "default"
    reason: Reason


class ClosedOut(Model):
    account_id: int
    settled: bool
    balance_micros: int
    refunded_micros: int
    written_off_micros: int
    left_micros: int
    final_readings_wh: dict[str, int | None]


class RechargeIn(BaseModel):
    amount_fen: Annotated[int, Field(ge=1, le=100_000_000, description="amount in fen (0.01 yuan)")]
    method: Literal["cash", "card"] = "cash"
    receipt_no: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]
    description: Annotated[str, Field(max_length=128, pattern=r"^[^\x00]*$")] = ""


class RechargeOut(BaseModel):
    order_no: str | None
    verdict: str
    message: str
    balance_micros: int


@router.get("/accounts", response_model=PageOut[AccountOut])
def list_accounts(
    who: Anyone,
    engine: DbEngine,
    site_id: IdQuery = None,
    state: Literal["pre_staged", "open", "closed"] | None = None,
    search: TextQuery = None,
    below_micros: Annotated[int | None, Query(ge=0, le=MAX_MICROS, description="balance below this")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[AccountOut]:
    wanted = queries.AccountFilter(site_id, state, search, below_micros)
    with engine.connect() as conn:
        return paged(lambda: queries.list_accounts(conn, scope_of(who), wanted, cursor=cursor, limit=limit), AccountOut)


@router.get("/accounts/{account_id}", response_model=AccountDetailOut)
def get_account(account_id: IdPath, who: Anyone, engine: DbEngine) -> AccountDetailOut:
    with engine.connect() as conn:
        account = found(queries.get_account(conn, scope_of(who), account_id), "account", account_id)
        forecast = wallet_forecast(conn, account.wallet_account_id)
        policy = prepaid.get_policy(conn, account.wallet_account_id)
        state = prepaid.wallet_state(conn, account.wallet_account_id)
        meter_ids = queries.account_meter_ids(conn, account_id)
    return AccountDetailOut.model_validate(
        {
            **AccountOut.model_validate(account).model_dump(),
            "forecast": ForecastOut(
                seconds_left=forecast.seconds_left,
                rate_micros_per_day=forecast.rate_micros_per_day,
                capped=forecast.capped,
                text_en=forecast.text("en"),
                text_zh=forecast.text("zh"),
            ),
            "policy": _policy_out(policy),
            "supply_on": None if state is None else state.supply_on,
            "meter_ids": meter_ids,
        }
    )


@router.post("/accounts", response_model=AccountOut, status_code=201)
def stage_account(body: StageIn, who: Operator, engine: DbEngine, now: Now) -> AccountOut:
    """Stage (pre-open) an account at a site: its wallet exists from now; open it with ``/open``."""
    with engine.begin() as conn:
        found(queries.get_site(conn, scope_of(who), body.site_id), "site", body.site_id)
        staged = accounts_service.stage_account(
            conn, body.site_id, body.account_no, body.name, phone=body.phone, email=body.email, actor=who.actor, now=now
        )
        if isinstance(staged, accounts_service.Rejected):
            raise rejected(staged.field, staged.message)
        return AccountOut.model_validate(queries.get_account(conn, scope_of(who), staged))


@router.post("/accounts/{account_id}/open", response_model=AccountOut)
def open_account(account_id: IdPath, body: ReasonIn, who: Operator, engine: DbEngine, now: Now) -> AccountOut:
    with engine.begin() as conn:
        found(queries.get_account(conn, scope_of(who), account_id), "account", account_id)
        opened = accounts_service.open_account(conn, account_id, actor=who.actor, reason=body.reason, now=now)
        if isinstance(opened, accounts_service.Rejected):
            raise problem(opened.field, opened.message, 409)
        return AccountOut.model_validate(queries.get_account(conn, scope_of(who), account_id))


@router.post("/accounts/{account_id}/close", response_model=ClosedOut)
async def close_account(
    account_id: IdPath, body: ReasonIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """Close the account: final readings, meters detached, the balance refunded in cash (idempotent)."""
    await _require_account(engine, who, account_id)
    refund = accounts_service.payments_cash_refund(engine, payment_channels(request))

    def close() -> tuple[int, Any]:
        done = accounts_service.close_account(
            engine, account_id, refund=refund, actor=who.actor, reason=body.reason, now=now
        )
        if isinstance(done, accounts_service.Rejected):
            return 409, {"detail": str(done)}
        return 200, ok_json(ClosedOut.model_validate(done))

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(close)

    return await idempotent(request, who, run)


@router.put("/accounts/{account_id}/tariff", response_model=TariffSetOut)
def set_tariff(account_id: IdPath, body: TariffIn, who: Operator, engine: DbEngine, now: Now) -> TariffSetOut:
    """Put every meter of the account on a tariff the organisation may use (audited)."""
    scope = scope_of(who)
    with engine.begin() as conn:
        found(queries.get_account(conn, scope, account_id), "account", account_id)
        visible = conn.execute(
            tariffs.select()
            .with_only_columns(tariffs.c.id)
            .where(tariffs.c.id == body.tariff_id, queries.visible_tariffs(scope))
        ).first()
        if visible is None:
            raise problem("tariff_id", f"no tariff {body.tariff_id!r} in this organisation")
        changed = accounts_service.set_account_tariff(
            conn, account_id, body.tariff_id, actor=who.actor, reason=body.reason, now=now
        )
        if isinstance(changed, accounts_service.Rejected):
            raise problem(changed.field, changed.message, 409)
    return TariffSetOut(account_id=account_id, tariff_id=body.tariff_id, meter_ids=changed)


@router.put("/accounts/{account_id}/policy", response_model=PolicyOut)
def set_policy(account_id: IdPath, body: PolicyIn, who: Operator, engine: DbEngine, now: Now) -> PolicyOut:
    """Warning levels, reconnect threshold and friendly-credit window of the account's wallet (audited).

    Power-protect and temporary supply are remote operations with commands: see ``/power-protect`` and
    ``/temporary-supply``.
    """
    with engine.begin() as conn:
        account = found(queries.get_account(conn, scope_of(who), account_id), "account", account_id)
        before = prepaid.get_policy(conn, account.wallet_account_id)
        after = prepaid.WalletPolicy(
            None if body.warning_levels_micros is None else tuple(body.warning_levels_micros),
            body.reconnect_micros,
            before.power_protect,
            before.temporary_until,
            body.friendly_window,
            before.billing_mode,
        )
        failed = prepaid.set_policy(conn, account.wallet_account_id, after, now)
        if failed is not None:
            raise problem(failed.field, failed.message)
        detail = {
            "warning_levels_micros": _levels(body.warning_levels_micros),
            "reconnect_micros": body.reconnect_micros,
            "friendly_window": body.friendly_window,
            "before": {
                "warning_levels_micros": _levels(before.warning_levels_micros),
                "reconnect_micros": before.reconnect_micros,
                "friendly_window": before.friendly_window,
            },
        }
        record_audit(conn, who.actor, "set_policy", f"account:{account_id}", body.reason, detail, now)
        prepaid.evaluate(conn, [account.wallet_account_id], now)
        stored = prepaid.get_policy(conn, account.wallet_account_id)
    return _policy_out(stored)


@router.post("/accounts/{account_id}/recharge", response_model=RechargeOut)
async def recharge(
    account_id: IdPath, body: RechargeIn, request: Request, who: Finance, engine: DbEngine, now: Now
) -> Response:
    """The cashier sells credit (售电): an order paid at once with the receipt number; idempotent, audited."""
    account = await _require_account(engine, who, account_id)
    channels = payment_channels(request)

    def sell() -> tuple[int, Any]:
        if account.state != "open":
            return 409, {"detail": f"account: {account.account_no} is {account.state}; only open accounts take credit"}
        order = payments.NewOrder(
            wallet=account.wallet,
            amount_fen=body.amount_fen,
            channel="cashier",
            method=body.method,
            description=body.description or f"cashier recharge {account.account_no}",
            operator=who.actor,
        )
        done = payments.pay_at_cashier(engine, channels, order, body.receipt_no, None, now)
        if isinstance(done, payments.Refused):
            return 422, {"detail": f"{done.field}: {done.message}"}
        with engine.connect() as conn:
            balance = queries.get_account(conn, scope_of(who), account_id)
        assert balance is not None
        status = 200 if done.verdict is not payments.Verdict.REJECTED else 409
        out = RechargeOut(
            order_no=done.order_no,
            verdict=done.verdict.value,
            message=done.reason,
            balance_micros=balance.balance_micros,
        )
        return status, ok_json(out)

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(sell)

    return await idempotent(request, who, run)


async def _require_account(engine: Any, who: Any, account_id: int) -> queries.AccountRow:
    def lookup() -> queries.AccountRow | None:
        with engine.connect() as conn:
            return queries.get_account(conn, scope_of(who), account_id)

    return found(await run_in_threadpool(lookup), "account", account_id)


def _policy_out(policy: prepaid.WalletPolicy) -> PolicyOut:
    """The policy as answered: its warning levels highest first."""
    levels = policy.warning_levels_micros
    return PolicyOut.model_validate(
        replace(policy, warning_levels_micros=None if levels is None else tuple(sorted(levels, reverse=True)))
    )


def _levels(levels: Sequence[int] | None) -> list[int] | None:
    return None if levels is None else sorted(levels, reverse=True)
