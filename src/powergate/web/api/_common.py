"""Shared pieces of the JSON API (``/api/v1``): roles per kind of work, scoping, pagination, bounded inputs, errors.

Not a router (the leading underscore keeps it out of router discovery). Conventions every resource follows:
- reads are open to every staff role (``STAFF_READ``); remote and account operations to operators
  (``OPERATE``); orders, refunds and reports to finance (``FINANCE``); structure and tariffs to admins
  (``ADMIN_ONLY``); admins may do everything. Tenants reach only the routes that take ``ANYONE`` and there
  see only their own account (``scope_of``).
- an object of another organisation is "not found" (404), never "forbidden", so ids do not leak;
- lists take ``limit`` (1..500, default 50) and an opaque ``cursor`` and answer ``{"items", "next_cursor"}``;
- every input is bounded: ids fit a 64-bit key, texts have a length limit and no NUL character (PostgreSQL
  refuses NUL in text), times carry a zone; a bad value is a 4xx naming the field, never a 5xx.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy import Engine

from powergate.services.queries import DEFAULT_LIMIT, MAX_LIMIT, BadCursor, Page, Scope
from powergate.web.deps import STAFF, Principal, Role, get_engine, require
from powergate.web.deps import now as request_now
from powergate.web.deps import principal as any_principal

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MAX_ID = 2**63 - 1
NO_NUL = r"^[^\x00]*$"
MAX_REASON_CHARS = 2_000

STAFF_READ = require(*STAFF)
OPERATE = require(Role.ADMIN, Role.OPERATOR)
FINANCE = require(Role.ADMIN, Role.FINANCE)
ADMIN_ONLY = require(Role.ADMIN)
ANYONE = any_principal

StaffReader = Annotated[Principal, Depends(STAFF_READ)]
Operator = Annotated[Principal, Depends(OPERATE)]
Finance = Annotated[Principal, Depends(FINANCE)]
Admin = Annotated[Principal, Depends(ADMIN_ONLY)]
Anyone = Annotated[Principal, Depends(ANYONE)]
DbEngine = Annotated[Engine, Depends(get_engine)]
Now = Annotated[dt.datetime, Depends(request_now)]

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
MeterIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_NUL)]
KeyPath = Annotated[str, Path(min_length=1, max_length=128, pattern=NO_NUL)]
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
TextQuery = Annotated[str | None, Query(max_length=64, pattern=NO_NUL)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size, 1..500")]
Cursor = Annotated[
    str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]*$", description="next_cursor of the previous page")
]
TimeQuery = Annotated[dt.datetime | None, Query(description="ISO 8601 with a zone, e.g. 2026-11-01T00:00:00+08:00")]
Reason = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_REASON_CHARS, pattern=NO_NUL)
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
ShortText = Annotated[str, StringConstraints(max_length=120, pattern=NO_NUL)]

DEFAULT_PAGE = DEFAULT_LIMIT


class Model(BaseModel):
    """Response models read the query dataclasses by attribute."""

    model_config = ConfigDict(from_attributes=True)


class PageOut(BaseModel, Generic[M]):
    items: list[M]
    next_cursor: str | None = None


class ErrorOut(BaseModel):
    """A refusal: ``detail`` names the field at fault and says why (``"amount_fen: must be 1..100000000"``)."""

    detail: str


class ValidationErrorOut(BaseModel):
    """422: a field-named message from a rule (text), or FastAPI's list of schema validation errors."""

    detail: str | list[dict[str, Any]]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Bad request (a foreign cursor, a missing Idempotency-Key)"},
    401: {"model": ErrorOut, "description": "Not authenticated"},
    403: {"model": ErrorOut, "description": "The role may not do this (or the CSRF token is missing)"},
    404: {"model": ErrorOut, "description": "Not found in the caller's organisation"},
    409: {"model": ErrorOut, "description": "Conflicts with the current state (exists, already done, running)"},
    422: {"model": ValidationErrorOut, "description": "A field is wrong; the message names it"},
}
"""The error answers every resource router documents (``APIRouter(responses=ERRORS)``)."""


def page_out(page: Page[Any], model: type[M]) -> PageOut[M]:
    return PageOut[M](items=[model.model_validate(item) for item in page.items], next_cursor=page.next_cursor)


def scope_of(who: Principal) -> Scope:
    """What ``who`` may read: their organisation; a tenant only their account."""
    if who.role is Role.TENANT:
        assert who.account_id is not None, "a tenant principal always names its account"
        return Scope(who.organisation_id, who.account_id)
    return Scope(who.organisation_id)


def problem(field: str, message: str, status: int = 422) -> HTTPException:
    """A 4xx whose detail names the field: ``{"detail": "amount_fen: must be positive"}``."""
    return HTTPException(status, detail=f"{field}: {message}")


def rejected(field: str, message: str) -> HTTPException:
    """A service's refusal: 409 when it clashes with what exists already, else 422."""
    clash = any(word in message for word in ("exists", "already"))
    return problem(field, message, 409 if clash else 422)


def not_found(what: str, key: object) -> HTTPException:
    return HTTPException(404, detail=f"{what} {key} not found")


def found(value: T | None, what: str, key: object) -> T:
    if value is None:
        raise not_found(what, key)
    return value


def aware(value: dt.datetime | None, field: str) -> dt.datetime | None:
    """A time from a query parameter; a time without a zone is refused (it would be ambiguous)."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise problem(field, f"{value.isoformat()} has no time zone; add one, e.g. +08:00 or Z")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise problem(field, f"{value.isoformat()} is out of range") from None


def window(since: dt.datetime | None, until: dt.datetime | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    start, end = aware(since, "since"), aware(until, "until")
    if start is not None and end is not None and end <= start:
        raise problem("until", "must be after since")
    return start, end


def paged(run: Callable[[], Page[Any]], model: type[M]) -> PageOut[M]:
    """Run a list query; a foreign cursor is a 400 naming ``cursor``."""
    try:
        return page_out(run(), model)
    except BadCursor as error:
        raise HTTPException(400, detail=str(error)) from None


def payment_channels(request: Request) -> Mapping[str, Any]:
    """The payment channel adapters of this app: cashier and bank always; the configured online ones.

    Built once per app from ``settings.payment_channels`` (a ``PaymentsConfig``), unless the app already holds
    a mapping of adapters in ``app.state.payment_channels`` (the sandbox keeps its trades in memory, so every
    part of the app must share one adapter).
    """
    state = request.app.state
    shared = getattr(state, "payment_channels", None)
    if isinstance(shared, Mapping):
        return shared
    built = getattr(state, "api_payment_channels", None)
    if built is None:
        built = _build_channels(request.app.state.settings.payment_channels)
        state.api_payment_channels = built
    return built


def _build_channels(config: Any) -> dict[str, Any]:
    from powergate.payments.bank import BankTransfer
    from powergate.payments.cashier import Cashier

    channels: dict[str, Any] = {"cashier": Cashier(), "bank": BankTransfer()}
    if config is None:
        return channels
    if getattr(config, "wechat", None) is not None:
        from powergate.payments.wechat import WechatPay

        channels["wechat"] = WechatPay(config.wechat)
    if getattr(config, "alipay", None) is not None:
        from powergate.payments.alipay import Alipay

        channels["alipay"] = Alipay(config.alipay)
    if getattr(config, "sandbox", None) is not None:
        from powergate.payments.sandbox import Sandbox

        channels["sandbox"] = Sandbox(config.sandbox.secret)
    return channels


def ok_json(model: BaseModel) -> Any:
    """A response model as the JSON body ``idempotent`` stores and replays."""
    return model.model_dump(mode="json")


def one_of(value: str | None, allowed: Sequence[str], field: str) -> str | None:
    if value is not None and value not in allowed:
        raise problem(field, f"{value!r} is not one of {', '.join(allowed)}")
    return value
