"""``/api/v1/tariffs``: list and read (staff), validate and quote (staff), create and add versions (admin).

A tariff is written in the tariff file format (TOML or JSON, ``powergate.domain.tariff_files``; docs/tariffs.md)
and sent as text in ``document``. Validation is the domain's: every problem names its field path
(``versions[0].tou.prices.peak: ...``). A new version is a new document that keeps every existing version as it
is and appends later ones, each starting after the current local time at every site of the organisation: a
price change never rewrites what was already billed. Tariffs created here belong to the caller's organisation
(``tariff_owners``); shared tariffs (loaded by the CLI) are visible while the organisation's meters use them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from sqlalchemy import Connection, insert, select, update

from powergate.domain.calendar import SiteCalendar
from powergate.domain.rating import RatingContext, quote
from powergate.domain.tariff import Problem, Tariff
from powergate.domain.tariff_files import DataFileError, detect_format, load_readings, parse_tariff
from powergate.services import queries
from powergate.services.quote_format import quote_json
from powergate.store.audit import record_audit
from powergate.store.tables import tariffs
from powergate.store.tables_api import tariff_owners
from powergate.store.tables_structure import sites
from powergate.web.api._common import (
    ERRORS,
    NO_NUL,
    Admin,
    Cursor,
    DbEngine,
    Limit,
    Model,
    Now,
    PageOut,
    Reason,
    StaffReader,
    TextQuery,
    found,
    paged,
    problem,
    scope_of,
)
from powergate.web.api._models import mirror

router = APIRouter(tags=["tariffs"], responses=ERRORS)
MAX_DOCUMENT_CHARS = 1_000_000
MAX_QUOTE_READINGS_CHARS = 5_000_000
TariffIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_NUL)]
Document = Annotated[str, Field(min_length=1, max_length=MAX_DOCUMENT_CHARS, description="TOML or JSON text")]


@mirror(queries.TariffRow, exclude=["shared"])
class TariffOut(Model):
    pass


class VersionOut(BaseModel):
    effective_from: str
    """Site-local wall time (no zone), as in the tariff file."""
    pricing: list[str]
    """What prices this version: ``flat``, ``tou``, ``tiers``."""
    base_allowance_quantity: int
    standing_charges: int


class TariffDetailOut(TariffOut):
    currency: str
    versions: list[VersionOut]
    document: str


class DocumentIn(BaseModel):
    document: Document
    format: Literal["toml", "json"] | None = None
    """Detected from the text when absent."""


class CreateIn(DocumentIn):
    reason: Reason = "new tariff"


class VersionIn(DocumentIn):
    reason: Reason


class ProblemOut(BaseModel):
    field: str
    message: str


class ValidationOut(BaseModel):
    valid: bool
    problems: list[ProblemOut]
    id: str | None = None
    versions: list[VersionOut] = Field(default_factory=list)


class QuoteIn(BaseModel):
    readings: Annotated[str, Field(min_length=1, max_length=MAX_QUOTE_READINGS_CHARS, description="CSV or JSON")]
    format: Literal["csv", "json"] | None = None
    timezone: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")] = "Asia/Shanghai"


@router.get("/tariffs", response_model=PageOut[TariffOut])
def list_tariffs(
    who: StaffReader,
    engine: DbEngine,
    search: TextQuery = None,
    commodity: Literal["electricity", "water"] | None = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[TariffOut]:
    with engine.connect() as conn:
        return paged(
            lambda: queries.list_tariffs(
                conn, scope_of(who), search=search, commodity=commodity, cursor=cursor, limit=limit
            ),
            TariffOut,
        )


@router.get("/tariffs/{tariff_id}", response_model=TariffDetailOut)
def get_tariff(tariff_id: TariffIdPath, who: StaffReader, engine: DbEngine) -> TariffDetailOut:
    with engine.connect() as conn:
        row, document = found(queries.get_tariff(conn, scope_of(who), tariff_id), "tariff", tariff_id)
    return _detail(row, document)


@router.post("/tariffs/validate", response_model=ValidationOut)
def validate_tariff(body: DocumentIn, who: StaffReader) -> ValidationOut:
    """Check a tariff document without saving it: every problem with its field path."""
    tariff, problems = _parse(body)
    return ValidationOut(
        valid=tariff is not None,
        problems=[ProblemOut(field=p.path, message=p.message) for p in problems],
        id=None if tariff is None else tariff.id,
        versions=[] if tariff is None else _versions(tariff),
    )


@router.post("/tariffs", response_model=TariffDetailOut, status_code=201)
def create_tariff(body: CreateIn, who: Admin, engine: DbEngine, now: Now) -> TariffDetailOut:
    tariff = _valid(body)
    with engine.begin() as conn:
        if conn.execute(select(tariffs.c.id).where(tariffs.c.id == tariff.id)).first() is not None:
            raise problem("id", f"tariff id {tariff.id!r} is taken; choose another", 409)
        conn.execute(
            insert(tariffs).values(
                id=tariff.id, name=tariff.name, commodity=tariff.commodity.value, document=body.document, created_at=now
            )
        )
        conn.execute(
            insert(tariff_owners).values(tariff_id=tariff.id, organisation_id=who.organisation_id, created_at=now)
        )
        detail = {"name": tariff.name, "versions": len(tariff.versions), "commodity": tariff.commodity.value}
        record_audit(conn, who.actor, "create_tariff", f"tariff:{tariff.id}", body.reason, detail, now)
        row, document = found(queries.get_tariff(conn, scope_of(who), tariff.id), "tariff", tariff.id)
    return _detail(row, document)


@router.post("/tariffs/{tariff_id}/versions", response_model=TariffDetailOut)
def add_versions(tariff_id: TariffIdPath, body: VersionIn, who: Admin, engine: DbEngine, now: Now) -> TariffDetailOut:
    """Replace the document by one that keeps every existing version and appends later ones (audited)."""
    scope = scope_of(who)
    with engine.begin() as conn:
        row, stored = found(queries.get_tariff(conn, scope, tariff_id), "tariff", tariff_id)
        new = _valid(body)
        if not row.owned:
            raise problem("tariff_id", f"{tariff_id} is shared, not this organisation's: create your own tariff", 403)
        old, _ = parse_tariff(stored)
        assert old is not None, f"stored tariff {tariff_id} does not parse"
        _check_extension(conn, scope, old, new, now)
        conn.execute(update(tariffs).where(tariffs.c.id == tariff_id).values(name=new.name, document=body.document))
        added = [v.effective_from.isoformat() for v in new.versions[len(old.versions) :]]
        record_audit(conn, who.actor, "tariff_version", f"tariff:{tariff_id}", body.reason, {"added": added}, now)
        row, document = found(queries.get_tariff(conn, scope, tariff_id), "tariff", tariff_id)
    return _detail(row, document)


@router.post("/tariffs/{tariff_id}/quote", response_model=dict[str, Any])
def quote_tariff(tariff_id: TariffIdPath, body: QuoteIn, who: StaffReader, engine: DbEngine) -> dict[str, Any]:
    """What a readings file costs under this tariff (the same as ``powergate tariff quote``): exact micros."""
    with engine.connect() as conn:
        _, document = found(queries.get_tariff(conn, scope_of(who), tariff_id), "tariff", tariff_id)
    tariff, _problems = parse_tariff(document)
    assert tariff is not None
    try:
        zone = ZoneInfo(body.timezone)
    except (KeyError, ValueError):
        raise problem("timezone", f"{body.timezone!r} is not an IANA time zone such as Asia/Shanghai") from None
    try:
        fmt = body.format or ("json" if body.readings.lstrip().startswith(("[", "{")) else "csv")
        readings = load_readings(body.readings, fmt=fmt, source="readings")
    except DataFileError as error:
        raise problem("readings", "; ".join(str(p) for p in error.problems[:20])) from None
    context = RatingContext(tariff, SiteCalendar.china(), zone)
    return quote_json(tariff, body.timezone, quote(readings, context))


def _parse(body: DocumentIn) -> tuple[Tariff | None, tuple[Problem, ...]]:
    fmt = body.format or detect_format(body.document)
    return parse_tariff(body.document, fmt=fmt)


def _valid(body: DocumentIn) -> Tariff:
    tariff, problems = _parse(body)
    if tariff is None:
        listed = "; ".join(str(p) for p in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise problem("document", f"{listed}{more}")
    for name, value in (("id", tariff.id), ("name", tariff.name)):
        if "\x00" in value or value != value.strip() or not value:
            raise problem("document", f"{name}: must be non-empty text without NUL or surrounding spaces")
    return tariff


def _check_extension(conn: Connection, scope: queries.Scope, old: Tariff, new: Tariff, now: dt.datetime) -> None:
    if new.id != old.id:
        raise problem("document", f"id: {new.id!r} is not {old.id!r}; a new version keeps the tariff's id")
    if (new.commodity, new.currency, new.cycle) != (old.commodity, old.currency, old.cycle):
        raise problem("document", "commodity, currency and cycle cannot change; create a new tariff instead")
    if new.versions[: len(old.versions)] != old.versions:
        raise problem("document", f"versions[0..{len(old.versions) - 1}] must stay exactly as they are")
    if len(new.versions) == len(old.versions):
        raise problem("document", "versions: add at least one new version after the existing ones")
    zones = conn.execute(select(sites.c.timezone).where(sites.c.organisation_id == scope.organisation_id)).scalars()
    latest_local = max(
        (now.astimezone(ZoneInfo(z)).replace(tzinfo=None) for z in set(zones)),
        default=now.astimezone(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=14),
    )
    first_new = new.versions[len(old.versions)]
    if first_new.effective_from <= latest_local:
        raise problem(
            "document",
            f"versions[{len(old.versions)}].effective_from: {first_new.effective_from.isoformat()} has begun "
            f"already (local time now {latest_local:%Y-%m-%dT%H:%M}); a new version starts in the future",
        )


def _versions(tariff: Tariff) -> list[VersionOut]:
    return [
        VersionOut(
            effective_from=v.effective_from.isoformat(),
            pricing=[
                name
                for name, part in (("flat", v.price_micros), ("tou", v.tou), ("tiers", v.tiers))
                if part is not None
            ],
            base_allowance_quantity=v.base_allowance_quantity,
            standing_charges=len(v.standing_charges),
        )
        for v in tariff.versions
    ]


def _detail(row: queries.TariffRow, document: str) -> TariffDetailOut:
    tariff, _ = parse_tariff(document)
    return TariffDetailOut.model_validate(
        {
            **TariffOut.model_validate(row).model_dump(),
            "currency": "" if tariff is None else tariff.currency,
            "versions": [] if tariff is None else _versions(tariff),
            "document": document,
        }
    )
