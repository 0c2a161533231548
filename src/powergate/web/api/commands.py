"""``/api/v1`` remote operations and the command queue: list a meter's commands with their states, get one, and
queue trip / close / alarm amounts / power limit / prices (per meter) and temporary supply / power-protect (per
account).

Every operation is an operator's (or admin's), needs a ``reason`` (audited with the actor, in the transaction
that queues the command: ``powergate.services.prepaid``), and runs inside ``idempotent`` (header
``Idempotency-Key``): a retried request queues nothing twice. The answer is 202 with the queued command(s);
poll ``GET /api/v1/commands/{id}`` for pending -> sent -> acked -> verified (or failed / expired / cancelled).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from powergate.headend.commands import Enqueued, Problem
from powergate.services import prepaid, queries
from powergate.store.tables_commands import COMMAND_KINDS, COMMAND_STATES
from powergate.web.api._common import (
    ERRORS,
    Cursor,
    DbEngine,
    IdPath,
    KeyPath,
    Limit,
    MeterIdPath,
    Model,
    Now,
    Operator,
    PageOut,
    Reason,
    StaffReader,
    aware,
    found,
    ok_json,
    one_of,
    paged,
    scope_of,
)
from powergate.web.deps import Principal
from powergate.web.idempotency import idempotent

router = APIRouter(tags=["commands"], responses=ERRORS)
MAX_MICROS = 10**12
MAX_POWER_W = 10**7
MAX_PRICE_MICROS = 1_000_000_000
KindQuery = Annotated[str | None, Query(max_length=24, description=f"one of {', '.join(COMMAND_KINDS)}")]
StateQuery = Annotated[str | None, Query(max_length=12, description=f"one of {', '.join(COMMAND_STATES)}")]


class CommandOut(Model):
    id: str
    meter_id: str
    kind: str
    parameters: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    requested_by: str
    reason: str
    created_at: dt.datetime
    updated_at: dt.datetime
    valid_until: dt.datetime
    last_error: str | None
    result: str | None


class QueuedOut(BaseModel):
    commands: list[CommandOut]
    created: bool
    """False when a request with this command id had been queued already (nothing new was queued)."""
    superseded: list[str] = Field(default_factory=list)


class ReasonIn(BaseModel):
    reason: Reason


class AlarmAmountsIn(BaseModel):
    alarm1_micros: Annotated[int, Field(ge=0, le=MAX_MICROS)]
    alarm2_micros: Annotated[int, Field(ge=0, le=MAX_MICROS, description="at most alarm1_micros")]
    reason: Reason


class PowerLimitIn(BaseModel):
    power_limit_w: Annotated[int, Field(ge=0, le=MAX_POWER_W, description="0: no limit")]
    reason: Reason


class PricesIn(BaseModel):
    prices_micros: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_PRICE_MICROS, multiple_of=100)]],
        Field(min_length=4, max_length=4, description="sharp, peak, flat, valley; yuan/kWh with 4 decimals"),
    ]
    reason: Reason


class TemporarySupplyIn(BaseModel):
    until: dt.datetime
    reason: Reason


class PowerProtectIn(BaseModel):
    on: bool
    reason: Reason


@router.get("/meters/{meter_id}/commands", response_model=PageOut[CommandOut])
def list_commands(
    meter_id: MeterIdPath,
    who: StaffReader,
    engine: DbEngine,
    state: StateQuery = None,
    kind: KindQuery = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[CommandOut]:
    one_of(state, COMMAND_STATES, "state")
    one_of(kind, COMMAND_KINDS, "kind")
    with engine.connect() as conn:
        found(queries.get_meter(conn, scope_of(who), meter_id), "meter", meter_id)
        return paged(
            lambda: queries.list_commands(conn, meter_id, state=state, kind=kind, cursor=cursor, limit=limit),
            CommandOut,
        )


@router.get("/commands/{command_id}", response_model=CommandOut)
def get_command(command_id: KeyPath, who: StaffReader, engine: DbEngine) -> CommandOut:
    with engine.connect() as conn:
        return CommandOut.model_validate(
            found(queries.get_command(conn, scope_of(who), command_id), "command", command_id)
        )


def _operator(who: Principal, reason: str) -> prepaid.Operator:
    return prepaid.Operator(who.actor, reason)


async def _queue(
    request: Request,
    who: Principal,
    engine: Any,
    check: Callable[[], object],
    operate: Callable[[], Enqueued | list[Enqueued] | Problem],
) -> Response:
    """Check the target is in scope (404 otherwise), then run the operation idempotently; 202 with the commands."""
    await run_in_threadpool(check)

    def work() -> tuple[int, Any]:
        done = operate()
        if isinstance(done, Problem):
            return 422, {"detail": f"{done.field}: {done.message}"}
        queued = done if isinstance(done, list) else [done]
        with engine.connect() as conn:
            rows = [queries.get_command(conn, scope_of(who), q.queued.command_id) for q in queued]
        out = QueuedOut(
            commands=[CommandOut.model_validate(row) for row in rows if row is not None],
            created=any(q.created for q in queued) or not queued,
            superseded=[s for q in queued for s in q.superseded],
        )
        return 202, ok_json(out)

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(work)

    return await idempotent(request, who, run)


def _meter_check(engine: Any, who: Principal, meter_id: str) -> Callable[[], object]:
    def check() -> object:
        with engine.connect() as conn:
            return found(queries.get_meter(conn, scope_of(who), meter_id), "meter", meter_id)

    return check


def _request_id(request: Request, who: Principal) -> str | None:
    """A command id from the caller's idempotency key: the same request retried queues the same command."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    scoped = f"{who.organisation_id}\n{who.user_id}\n{request.url.path}\n{key}".encode()
    return f"api-{hashlib.sha256(scoped).hexdigest()[:32]}"


@router.post("/meters/{meter_id}/commands/trip", response_model=QueuedOut, status_code=202)
async def trip(
    meter_id: MeterIdPath, body: ReasonIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """分闸: open the meter's relay (supply off)."""
    request_id = _request_id(request, who)
    return await _queue(
        request,
        who,
        engine,
        _meter_check(engine, who, meter_id),
        lambda: prepaid.trip(engine, meter_id, _operator(who, body.reason), now, request_id),
    )


@router.post("/meters/{meter_id}/commands/close", response_model=QueuedOut, status_code=202)
async def close(
    meter_id: MeterIdPath, body: ReasonIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """合闸: close the meter's relay (supply on)."""
    request_id = _request_id(request, who)
    return await _queue(
        request,
        who,
        engine,
        _meter_check(engine, who, meter_id),
        lambda: prepaid.close(engine, meter_id, _operator(who, body.reason), now, request_id),
    )


@router.post("/meters/{meter_id}/commands/alarm-amounts", response_model=QueuedOut, status_code=202)
async def alarm_amounts(
    meter_id: MeterIdPath, body: AlarmAmountsIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """The meter's own alarm amounts 1 and 2 (meter-side billing); alarm2 <= alarm1."""
    return await _queue(
        request,
        who,
        engine,
        _meter_check(engine, who, meter_id),
        lambda: prepaid.set_alarm_amounts(
            engine, meter_id, body.alarm1_micros, body.alarm2_micros, _operator(who, body.reason), now
        ),
    )


@router.post("/meters/{meter_id}/commands/power-limit", response_model=QueuedOut, status_code=202)
async def power_limit(
    meter_id: MeterIdPath, body: PowerLimitIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """Overload protection: the relay trips above this power (W); 0 removes the limit."""
    return await _queue(
        request,
        who,
        engine,
        _meter_check(engine, who, meter_id),
        lambda: prepaid.set_power_limit(engine, meter_id, body.power_limit_w, _operator(who, body.reason), now),
    )


@router.post("/meters/{meter_id}/commands/prices", response_model=QueuedOut, status_code=202)
async def push_prices(
    meter_id: MeterIdPath, body: PricesIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """Push the four band prices (sharp, peak, flat, valley) in micros per kWh, 4 decimals of yuan."""
    prices = (body.prices_micros[0], body.prices_micros[1], body.prices_micros[2], body.prices_micros[3])
    return await _queue(
        request,
        who,
        engine,
        _meter_check(engine, who, meter_id),
        lambda: prepaid.push_prices(engine, meter_id, prices, _operator(who, body.reason), now),
    )


def _account_check(engine: Any, who: Principal, account_id: int) -> Callable[[], object]:
    def check() -> object:
        with engine.connect() as conn:
            return found(queries.get_account(conn, scope_of(who), account_id), "account", account_id)

    return check


def _wallet_of(engine: Any, who: Principal, account_id: int) -> str:
    with engine.connect() as conn:
        account = queries.get_account(conn, scope_of(who), account_id)
    assert account is not None, "checked before"
    return account.wallet


@router.post("/accounts/{account_id}/temporary-supply", response_model=QueuedOut, status_code=202)
async def temporary_supply(
    account_id: IdPath, body: TemporarySupplyIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """临时供电: supply the account's meters until ``until`` whatever the balance (e.g. during maintenance)."""
    until = aware(body.until, "until")
    assert until is not None
    return await _queue(
        request,
        who,
        engine,
        _account_check(engine, who, account_id),
        lambda: prepaid.temporary_supply(
            engine, _wallet_of(engine, who, account_id), until, _operator(who, body.reason), now
        ),
    )


@router.post("/accounts/{account_id}/power-protect", response_model=QueuedOut, status_code=202)
async def power_protect(
    account_id: IdPath, body: PowerProtectIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """保电: a power-protected account never trips; off returns it to the balance policy."""
    return await _queue(
        request,
        who,
        engine,
        _account_check(engine, who, account_id),
        lambda: prepaid.power_protect(
            engine, _wallet_of(engine, who, account_id), body.on, _operator(who, body.reason), now
        ),
    )
