"""``/api/v1`` remote operations and the command queue: list a meter's commands with their states, get one, and
queue trip / close / alarm amounts / power limit / prices (per meter) and temporary supply / power-protect (per
account).

Every operation is an operator's (or admin's), needs a ``reason`` (audited with the actor, in the transaction
that queues the command: ``powergate.services.prepaid``), and runs inside ``idempotent`` (header
``Idempotency-Key``): a retried request queues nothing twice. The answer is 202 with the queued command(s);
poll ``GET /api/v1/commands/{id}`` for pending -> sent -> acked -> verified (or failed / expired / cancelled).

Each operation is one small function registered with ``@remote``: the route (its own path, body schema,
summary and description in the OpenAPI document), the role, scope and body checks, the idempotency and the
answer are the same for all, written once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import Engine
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
from powergate.web.api._models import mirror
from powergate.web.deps import Principal
from powergate.web.idempotency import idempotent

router = APIRouter(tags=["commands"], responses=ERRORS)
MAX_MICROS = 10**12
MAX_POWER_W = 10**7
MAX_PRICE_MICROS = 1_000_000_000
KindQuery = Annotated[str | None, Query(max_length=24, description=f"one of {', '.join(COMMAND_KINDS)}")]
StateQuery = Annotated[str | None, Query(max_length=12, description=f"one of {', '.join(COMMAND_STATES)}")]


@mirror(queries.CommandRow)
class CommandOut(Model):
    pass


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


B = TypeVar("B", bound=BaseModel)
Outcome = Enqueued | list[Enqueued] | Problem


@dataclass(frozen=True, slots=True)
class Call(Generic[B]):
    """What one remote operation runs with: the checked body, its target (the meter id, or the account's
    wallet), the operator and reason, the request's time and command id."""

    engine: Engine
    body: B
    target: str
    operator: prepaid.Operator
    now: dt.datetime
    request_id: str | None
    """From the ``Idempotency-Key``: an operation that passes it on queues the same command when retried."""
    prepared: Any
    """What the operation's ``prepare`` made of the body (None without one)."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a remote operation acts on: a meter (by id) or an account (its wallet's meters)."""

    parameter: str
    annotation: Any
    check: Callable[[Engine, Principal, Any], object]
    """404 unless the target is in the caller's scope (runs before the idempotent part)."""
    subject: Callable[[Engine, Principal, Any], str]
    """What the service operates on: the meter id, or the account's wallet."""


def _meter_in_scope(engine: Engine, who: Principal, meter_id: str) -> object:
    with engine.connect() as conn:
        return found(queries.get_meter(conn, scope_of(who), meter_id), "meter", meter_id)


def _account_in_scope(engine: Engine, who: Principal, account_id: int) -> object:
    with engine.connect() as conn:
        return found(queries.get_account(conn, scope_of(who), account_id), "account", account_id)


def _wallet_of(engine: Engine, who: Principal, account_id: int) -> str:
    with engine.connect() as conn:
        account = queries.get_account(conn, scope_of(who), account_id)
    assert account is not None, "checked before"
    return account.wallet


METER = Target("meter_id", MeterIdPath, _meter_in_scope, lambda engine, who, meter_id: meter_id)
ACCOUNT = Target("account_id", IdPath, _account_in_scope, _wallet_of)


def _request_id(request: Request, who: Principal) -> str | None:
    """A command id from the caller's idempotency key: the same request retried queues the same command."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    scoped = f"{who.organisation_id}\n{who.user_id}\n{request.url.path}\n{key}".encode()
    return f"api-{hashlib.sha256(scoped).hexdigest()[:32]}"


async def _queue(
    request: Request, who: Principal, engine: Engine, check: Callable[[], object], operate: Callable[[], Outcome]
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


def remote(
    target: Target, path: str, body: type[B], prepare: Callable[[B], Any] | None = None
) -> Callable[[Callable[[Call[B]], Outcome]], Callable[[Call[B]], Outcome]]:
    """Register ``POST path`` for an operation: its name is the route's (operationId, summary), its docstring
    the description. The route checks the body (``prepare``: a 422 before anything is stored), then that the
    target is in scope (404), then runs the operation inside ``idempotent``; an operator's or admin's."""

    def register(operation: Callable[[Call[B]], Outcome]) -> Callable[[Call[B]], Outcome]:
        async def endpoint(**given: Any) -> Response:
            key, checked, request, who, engine = (
                given[n] for n in (target.parameter, "body", "request", "who", "engine")
            )
            prepared = None if prepare is None else prepare(checked)
            request_id = _request_id(request, who)

            def operate() -> Outcome:
                subject = target.subject(engine, who, key)
                operator = prepaid.Operator(who.actor, checked.reason)
                return operation(Call(engine, checked, subject, operator, given["now"], request_id, prepared))

            return await _queue(request, who, engine, lambda: target.check(engine, who, key), operate)

        parameters = [
            (target.parameter, target.annotation),
            ("body", body),
            ("request", Request),
            ("who", Operator),
            ("engine", DbEngine),
            ("now", Now),
        ]
        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind) for name, kind in parameters],
            return_annotation=Response,
        )
        endpoint.__name__ = endpoint.__qualname__ = operation.__name__
        endpoint.__doc__ = operation.__doc__
        router.post(path, response_model=QueuedOut, status_code=202)(endpoint)
        return operation

    return register


@remote(METER, "/meters/{meter_id}/commands/trip", ReasonIn)
def trip(c: Call[ReasonIn]) -> Outcome:
    """分闸: open the meter's relay (supply off)."""
    return prepaid.trip(c.engine, c.target, c.operator, c.now, c.request_id)


@remote(METER, "/meters/{meter_id}/commands/close", ReasonIn)
def close(c: Call[ReasonIn]) -> Outcome:
    """合闸: close the meter's relay (supply on)."""
    return prepaid.close(c.engine, c.target, c.operator, c.now, c.request_id)


@remote(METER, "/meters/{meter_id}/commands/alarm-amounts", AlarmAmountsIn)
def alarm_amounts(c: Call[AlarmAmountsIn]) -> Outcome:
    """The meter's own alarm amounts 1 and 2 (meter-side billing); alarm2 <= alarm1."""
    return prepaid.set_alarm_amounts(c.engine, c.target, c.body.alarm1_micros, c.body.alarm2_micros, c.operator, c.now)


@remote(METER, "/meters/{meter_id}/commands/power-limit", PowerLimitIn)
def power_limit(c: Call[PowerLimitIn]) -> Outcome:
    """Overload protection: the relay trips above this power (W); 0 removes the limit."""
    return prepaid.set_power_limit(c.engine, c.target, c.body.power_limit_w, c.operator, c.now)


@remote(METER, "/meters/{meter_id}/commands/prices", PricesIn)
def push_prices(c: Call[PricesIn]) -> Outcome:
    """Push the four band prices (sharp, peak, flat, valley) in micros per kWh, 4 decimals of yuan."""
    sharp, peak, flat, valley = c.body.prices_micros
    return prepaid.push_prices(c.engine, c.target, (sharp, peak, flat, valley), c.operator, c.now)


def _until(body: TemporarySupplyIn) -> dt.datetime:
    """``until`` with a zone, in UTC (a time without a zone is a 422 naming ``until``)."""
    until = aware(body.until, "until")
    assert until is not None
    return until


@remote(ACCOUNT, "/accounts/{account_id}/temporary-supply", TemporarySupplyIn, prepare=_until)
def temporary_supply(c: Call[TemporarySupplyIn]) -> Outcome:
    """临时供电: supply the account's meters until ``until`` whatever the balance (e.g. during maintenance)."""
    return prepaid.temporary_supply(c.engine, c.target, c.prepared, c.operator, c.now)


@remote(ACCOUNT, "/accounts/{account_id}/power-protect", PowerProtectIn)
def power_protect(c: Call[PowerProtectIn]) -> Outcome:
    """保电: a power-protected account never trips; off returns it to the balance policy."""
    return prepaid.power_protect(c.engine, c.target, c.body.on, c.operator, c.now)
