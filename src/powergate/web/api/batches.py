"""``/api/v1/batches``: batch operations (issue 9) — create (now or scheduled), preview, list, progress with
per-target results, retry the failures, cancel; and ``/api/v1/account-tags`` (the tags a batch selects by).

Roles: reading is open to every staff role; creating, retrying and cancelling a batch is an operator's (or
admin's), except the batches that move money (``recharge``, ``grant_allowance``), which are finance's (or
admin's). Tenants have no access. Another organisation's batch is 404. Creating, retrying and cancelling run
inside ``idempotent`` (header ``Idempotency-Key``): a retried request creates nothing twice. A batch that runs
now takes its first step at once (``services.batch.run_due`` for that batch); the worker does the rest.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from powergate.services import batch
from powergate.services.accounts import Rejected
from powergate.store.tables_batch import BATCH_STATES, TARGET_STATES
from powergate.web.api._common import (
    ERRORS,
    NO_NUL,
    DbEngine,
    IdPath,
    Model,
    Now,
    Reason,
    StaffReader,
    not_found,
    ok_json,
    one_of,
    problem,
)
from powergate.web.api._models import mirror
from powergate.web.deps import Principal, Role, require
from powergate.web.idempotency import idempotent

router = APIRouter(tags=["batches"], responses=ERRORS)

BatchWriter = Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR, Role.FINANCE))]
"""Who may start batches at all; which operation each role may start is checked per operation."""
MONEY_OPERATIONS = frozenset({batch.Operation.RECHARGE, batch.Operation.GRANT_ALLOWANCE})
Item = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]


class SelectionIn(BaseModel):
    """Filters (all given must match) or ONE list; ``list_text`` is an uploaded list (ids separated by newlines,
    commas or spaces) for ``list_kind`` ``meter_ids`` or ``account_nos``."""

    site_id: Annotated[int | None, Field(ge=1, le=2**63 - 1)] = None
    building_id: Annotated[int | None, Field(ge=1, le=2**63 - 1)] = None
    floor_id: Annotated[int | None, Field(ge=1, le=2**63 - 1)] = None
    tariff_id: Annotated[str | None, StringConstraints(max_length=64, pattern=NO_NUL)] = None
    tag: Annotated[str | None, StringConstraints(max_length=32, pattern=NO_NUL)] = None
    meter_ids: Annotated[list[Item], Field(max_length=batch.MAX_LIST_ITEMS)] = Field(default_factory=list)
    account_nos: Annotated[list[Item], Field(max_length=batch.MAX_LIST_ITEMS)] = Field(default_factory=list)

    def to_selection(self) -> batch.Selection:
        return batch.Selection(
            self.site_id,
            self.building_id,
            self.floor_id,
            self.tariff_id or None,
            self.tag or None,
            tuple(dict.fromkeys(self.meter_ids)),
            tuple(dict.fromkeys(self.account_nos)),
        )


class PreviewIn(BaseModel):
    operation: batch.Operation
    selection: SelectionIn


class BatchIn(PreviewIn):
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="set_tariff: tariff_id; set_alarms: alarm1_micros, alarm2_micros; set_power_limit: "
        "power_limit_w; push_prices: prices_micros (4); recharge: amount_fen; grant_allowance: amount_micros",
    )
    reason: Reason
    run_at: dt.datetime | None = Field(default=None, description="when to run (with a zone); absent: now")
    max_in_flight_per_link: Annotated[int, Field(ge=1, le=batch.MAX_IN_FLIGHT_PER_LINK)] = (
        batch.DEFAULT_MAX_IN_FLIGHT_PER_LINK
    )
    command_valid_s: Annotated[int, Field(ge=batch.MIN_COMMAND_VALID_S, le=batch.MAX_COMMAND_VALID_S)] = (
        batch.DEFAULT_COMMAND_VALID_S
    )


class ReasonIn(BaseModel):
    reason: Reason


@mirror(batch.Preview)
class PreviewOut(Model):
    pass


class BatchOut(Model):
    id: int
    operation: str
    parameters: dict[str, Any]
    selection: dict[str, Any]
    target_kind: str
    state: str
    run_at: dt.datetime
    reason: str
    created_by: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    total: int
    counts: dict[str, int]
    finished: int
    progress_percent: int
    max_in_flight_per_link: int
    command_valid_s: int
    retries: int


class BatchPage(BaseModel):
    items: list[BatchOut]
    next_before_id: int | None = None


@mirror(batch.TargetView)
class TargetOut(Model):
    pass


class TagsIn(BaseModel):
    tags: Annotated[list[Annotated[str, StringConstraints(max_length=32, pattern=NO_NUL)]], Field(max_length=20)]
    reason: Reason


class TagsOut(BaseModel):
    account_id: int
    tags: list[str]


class TagCountOut(BaseModel):
    tag: str
    accounts: int


def _refusal(refused: Rejected) -> HTTPException:
    return problem(refused.field, refused.message)


def may_start(who: Principal, operation: batch.Operation) -> None:
    """403 unless the role may start this operation (money: finance or admin; the rest: operator or admin)."""
    allowed = (Role.ADMIN, Role.FINANCE) if operation in MONEY_OPERATIONS else (Role.ADMIN, Role.OPERATOR)
    if who.role not in allowed:
        names = " or ".join(role.value for role in allowed)
        raise HTTPException(403, detail=f"a {operation.value} batch needs the role {names}; you are {who.role.value}")


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise problem("run_at", f"{value.isoformat()} has no time zone; add one, e.g. +08:00")
    return value.astimezone(dt.UTC)


def new_batch(who: Principal, body: BatchIn) -> batch.NewBatch:
    return batch.NewBatch(
        who.organisation_id,
        body.operation,
        body.selection.to_selection(),
        body.parameters,
        body.reason,
        who.actor,
        _aware(body.run_at),
        body.max_in_flight_per_link,
        body.command_valid_s,
    )


def create_and_start(engine: Any, new: batch.NewBatch, now: dt.datetime) -> batch.BatchView | Rejected:
    """Create the batch and, when it runs now, take its first step (shared with the console)."""
    with engine.begin() as conn:
        made = batch.create_batch(conn, new, now)
    if isinstance(made, Rejected):
        return made
    batch.run_due(engine, now, batch_ids=[made])
    with engine.connect() as conn:
        view = batch.get_batch(conn, new.organisation_id, made)
    assert view is not None
    return view


@router.post("/batches/preview", response_model=PreviewOut)
def preview_batch(body: PreviewIn, who: StaffReader, engine: DbEngine) -> PreviewOut:
    """How many targets a selection gives for an operation (and the first few), without creating anything."""
    with engine.connect() as conn:
        found = batch.preview(conn, who.organisation_id, body.operation, body.selection.to_selection())
    if isinstance(found, Rejected):
        raise _refusal(found)
    return PreviewOut.model_validate(found)


@router.post("/batches", response_model=BatchOut, status_code=201)
async def create_batch(body: BatchIn, request: Request, who: BatchWriter, engine: DbEngine, now: Now) -> Response:
    """Create a batch: ONE operation on the selected meters or accounts, now or at ``run_at``."""
    may_start(who, body.operation)
    new = new_batch(who, body)

    def work() -> tuple[int, Any]:
        made = create_and_start(engine, new, now)
        if isinstance(made, Rejected):
            return 422, {"detail": f"{made.field}: {made.message}"}
        return 201, ok_json(BatchOut.model_validate(made))

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(work)

    return await idempotent(request, who, run)


StateQuery = Annotated[str | None, Query(max_length=12)]


@router.get("/batches", response_model=BatchPage)
def list_batches(
    who: StaffReader,
    engine: DbEngine,
    state: StateQuery = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="next_before_id of the last page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> BatchPage:
    one_of(state, BATCH_STATES, "state")
    with engine.connect() as conn:
        found = batch.list_batches(conn, who.organisation_id, state=state, limit=limit, before_id=before_id)
    return BatchPage(
        items=[BatchOut.model_validate(v) for v in found], next_before_id=found[-1].id if len(found) == limit else None
    )


@router.get("/batches/{batch_id}", response_model=BatchOut)
def get_batch(batch_id: IdPath, who: StaffReader, engine: DbEngine) -> BatchOut:
    with engine.connect() as conn:
        found = batch.get_batch(conn, who.organisation_id, batch_id)
    if found is None:
        raise not_found("batch", batch_id)
    return BatchOut.model_validate(found)


@router.get("/batches/{batch_id}/targets", response_model=list[TargetOut])
def list_targets(
    batch_id: IdPath,
    who: StaffReader,
    engine: DbEngine,
    state: StateQuery = None,
    offset: Annotated[int, Query(ge=0, le=batch.MAX_TARGETS)] = 0,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 200,
) -> list[TargetOut]:
    """The batch's targets in order, each with its state, attempt, commands and result (or reason)."""
    one_of(state, TARGET_STATES, "state")
    with engine.connect() as conn:
        found = batch.list_targets(conn, who.organisation_id, batch_id, state=state, limit=limit, offset=offset)
    if found is None:
        raise not_found("batch", batch_id)
    return [TargetOut.model_validate(target) for target in found]


async def _change(request: Request, who: Principal, engine: Any, batch_id: int, action: Any) -> Response:
    def check() -> batch.BatchView:
        with engine.connect() as conn:
            found = batch.get_batch(conn, who.organisation_id, batch_id)
        if found is None:
            raise not_found("batch", batch_id)
        return found

    current = await run_in_threadpool(check)
    may_start(who, batch.Operation(current.operation))

    def work() -> tuple[int, Any]:
        with engine.begin() as conn:
            done = action(conn)
        if isinstance(done, Rejected):
            return (409 if done.field == "state" else 422), {"detail": f"{done.field}: {done.message}"}
        return 200, ok_json(BatchOut.model_validate(done))

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(work)

    return await idempotent(request, who, run)


@router.post("/batches/{batch_id}/retry", response_model=BatchOut)
async def retry_batch(
    batch_id: IdPath, body: ReasonIn, request: Request, who: BatchWriter, engine: DbEngine, now: Now
) -> Response:
    """Run the failed targets again (only those), each on its next attempt."""
    return await _change(
        request,
        who,
        engine,
        batch_id,
        lambda conn: batch.retry_failures(
            conn, who.organisation_id, batch_id, actor=who.actor, reason=body.reason, now=now
        ),
    )


@router.post("/batches/{batch_id}/cancel", response_model=BatchOut)
async def cancel_batch(
    batch_id: IdPath, body: ReasonIn, request: Request, who: BatchWriter, engine: DbEngine, now: Now
) -> Response:
    """Stop the batch: pending targets are cancelled, queued commands not yet sent are called back."""
    return await _change(
        request,
        who,
        engine,
        batch_id,
        lambda conn: batch.cancel_batch(
            conn, who.organisation_id, batch_id, actor=who.actor, reason=body.reason, now=now
        ),
    )


@router.get("/account-tags", response_model=list[TagCountOut])
def list_tags(who: StaffReader, engine: DbEngine) -> list[TagCountOut]:
    """The organisation's account tags and how many accounts carry each."""
    with engine.connect() as conn:
        return [TagCountOut(tag=t, accounts=n) for t, n in batch.organisation_tags(conn, who.organisation_id)]


@router.put("/account-tags/{account_id}", response_model=TagsOut)
def set_tags(
    account_id: IdPath,
    body: TagsIn,
    who: Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR))],
    engine: DbEngine,
    now: Now,
) -> TagsOut:
    """Replace an account's tags (a-z, 0-9, '-', '_'; at most 20)."""
    with engine.begin() as conn:
        done = batch.set_tags(
            conn, who.organisation_id, account_id, body.tags, actor=who.actor, reason=body.reason, now=now
        )
    if isinstance(done, Rejected):
        if done.field == "account":
            raise not_found("account", account_id)
        raise _refusal(done)
    return TagsOut(account_id=account_id, tags=list(done))
