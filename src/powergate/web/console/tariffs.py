"""Console: tariffs (电价). The organisation's tariffs and their versions, each TOU version drawn as 24-hour day
bars per season and day type (SVG, band colours from the stylesheet), a form for a new effective-dated version
(flat / TOU with seasons / tiers; prefilled from the latest version) or a new tariff, and the quote tool (the
same rating as ``powergate tariff quote``).

Validation is the domain's (``services.tariff_edit`` maps each problem to its form field); a rejected form is
shown again with the operator's text and the messages next to the fields, and nothing is saved. Prices are money:
only admin and finance may create tariffs and versions; every staff role may read and quote.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from powergate.domain.tariff import Tariff, TariffVersion
from powergate.domain.tariff_files import DataFileError, load_tariff
from powergate.services import queries, tariff_edit
from powergate.services.tariff_edit import FieldProblem, SeasonForm, VersionForm
from powergate.web.console._common_b import (
    PRICE_SETTERS,
    PriceSetter,
    Staff,
    can,
    form_text,
    int_param,
    read,
    write,
)
from powergate.web.console._render import render
from powergate.web.deps import Principal, now

router = APIRouter(prefix="/tariffs", tags=["console"])

BANDS = tariff_edit.BANDS
MAX_SEASON_FORMS = 12
MAX_QUOTE_CHARS = 2_000_000
"""A pasted or uploaded readings file for a quote: about 20,000 readings."""
TIMEZONES = ("Asia/Shanghai", "Asia/Urumqi", "Asia/Hong_Kong", "UTC")


@dataclass(frozen=True, slots=True)
class VersionView:
    index: int
    version: TariffVersion
    pricing: str
    price: str | None
    tou_prices: list[tuple[str, str]]
    tiers: list[tuple[str | None, str]]
    tier_mode: str | None
    base_allowance_kwh: str | None
    standing: list[tuple[str, str, str]]
    bars: list[tariff_edit.DayBar]
    current: bool


def _price(micros: int) -> str:
    return tariff_edit.price_text(micros)


def _kwh(wh: int) -> str:
    return f"{(Decimal(wh) / 1000).normalize():f}"


def version_views(tariff: Tariff, at: dt.datetime) -> list[VersionView]:
    current = tariff.version_index_at(at.astimezone(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None))
    views = []
    for index, v in enumerate(tariff.versions):
        pricing = "tou" if v.tou is not None else ("tiers" if v.tier_prices_energy else "flat")
        views.append(
            VersionView(
                index=index,
                version=v,
                pricing=pricing,
                price=_price(v.price_micros) if v.price_micros is not None else None,
                tou_prices=[(b.label, _price(p)) for b, p in v.tou.prices_micros] if v.tou else [],
                tiers=[
                    (_kwh(b.up_to_quantity) if b.up_to_quantity is not None else None, _price(b.price_micros))
                    for b in v.tiers.blocks
                ]
                if v.tiers
                else [],
                tier_mode=v.tiers.mode.value if v.tiers else None,
                base_allowance_kwh=_kwh(v.base_allowance_quantity) if v.base_allowance_quantity else None,
                standing=[(c.name, _price(c.amount_micros), c.per.value) for c in v.standing_charges],
                bars=tariff_edit.day_bars(tariff, index),
                current=index == current,
            )
        )
    return views


async def _tariff(request: Request, who: Principal, tariff_id: str) -> tuple[queries.TariffRow, Tariff]:
    found = await read(request, lambda conn: queries.get_tariff(conn, queries.Scope(who.organisation_id), tariff_id))
    if found is None:
        raise HTTPException(status_code=404, detail=f"tariff: no tariff {tariff_id!r}")
    line, document = found
    try:
        tariff = load_tariff(document, source=f"tariff {tariff_id}")
    except DataFileError as error:
        raise HTTPException(status_code=409, detail=f"tariff {tariff_id} is stored invalid: {error}") from None
    return line, tariff


@router.get("", response_class=HTMLResponse)
async def list_page(request: Request, who: Staff) -> Response:
    lines = await read(request, lambda conn: queries.tariffs_with_documents(conn, queries.Scope(who.organisation_id)))
    at = now(request)
    rows: list[tuple[queries.TariffRow, Tariff | None, VersionView | None]] = []
    for line, document in lines:
        try:
            tariff = load_tariff(document)
        except DataFileError:
            rows.append((line, None, None))
            continue
        views = version_views(tariff, at)
        current = next((v for v in views if v.current), None)
        rows.append((line, tariff, current))
    return render(request, "tariffs.html", who, rows=rows, can_edit=can(who, PRICE_SETTERS))


# --- new tariff (before /{tariff_id}) ----------------------------------------------------------------------------


def _form_context(form: VersionForm, problems: list[FieldProblem], extra_season: bool = False) -> dict[str, Any]:
    seasons = list(form.seasons) or [SeasonForm(name="all year", months="1-12")]
    if extra_season and len(seasons) < MAX_SEASON_FORMS:
        seasons.append(SeasonForm())
    errors: dict[str, list[str]] = {}
    for problem in problems:
        errors.setdefault(problem.field, []).append(problem.message)
    return {"form": form, "seasons": seasons, "errors": errors, "bands": BANDS}


@router.get("/new", response_class=HTMLResponse)
async def new_tariff_page(request: Request, who: PriceSetter) -> Response:
    context = _form_context(VersionForm(pricing="flat"), [])
    return render(request, "tariffs_form.html", who, mode="tariff", tariff=None, values={}, **context)


def read_version_form(form: Any) -> VersionForm:
    count = int_param(form_text(form, "season_count", 3), "season_count", minimum=0, maximum=MAX_SEASON_FORMS) or 0
    seasons = tuple(
        SeasonForm(
            name=form_text(form, f"seasons[{i}].name", 200),
            months=form_text(form, f"seasons[{i}].months", 100),
            schedule=form_text(form, f"seasons[{i}].schedule"),
            weekend_schedule=form_text(form, f"seasons[{i}].weekend_schedule"),
            holiday_schedule=form_text(form, f"seasons[{i}].holiday_schedule"),
        )
        for i in range(count)
    )
    return VersionForm(
        effective_from=form_text(form, "effective_from", 40),
        pricing=form_text(form, "pricing", 16),
        price=form_text(form, "price", 40),
        tou_prices={band: form_text(form, f"tou.prices.{band}", 40) for band in BANDS},
        seasons=seasons,
        tier_mode=form_text(form, "tiers.mode", 16),
        tier_blocks=form_text(form, "tiers.blocks"),
        base_allowance=form_text(form, "base_allowance", 40),
        standing_charges=form_text(form, "standing_charges"),
    )


@router.post("", response_class=HTMLResponse)
async def create_tariff(request: Request, who: PriceSetter) -> Response:
    form = await request.form()
    version = read_version_form(form)
    values = {name: form_text(form, name, 200) for name in ("tariff_id", "name", "commodity", "reason")}
    if form_text(form, "intent", 20) == "add_season":
        context = _form_context(version, [], extra_season=True)
        return render(request, "tariffs_form.html", who, mode="tariff", tariff=None, values=values, **context)
    at = now(request)
    saved = await write(
        request,
        lambda conn: tariff_edit.create_tariff(
            conn, who.organisation_id, values["tariff_id"], values["name"], values["commodity"] or "electricity",
            version, actor=who.actor, reason=values["reason"], now=at,
        ),
    )  # fmt: skip
    if isinstance(saved, list):
        context = _form_context(version, saved)
        return render(
            request, "tariffs_form.html", who, status_code=422, mode="tariff", tariff=None, values=values, **context
        )
    return RedirectResponse(f"/console/tariffs/{saved.tariff_id}?saved={saved.version_index}", status_code=303)


# --- one tariff ----------------------------------------------------------------------------------------------------


@router.get("/{tariff_id}", response_class=HTMLResponse)
async def detail_page(request: Request, tariff_id: str, who: Staff) -> Response:
    line, tariff = await _tariff(request, who, tariff_id)
    return render(
        request,
        "tariffs_detail.html",
        who,
        line=line,
        tariff=tariff,
        versions=version_views(tariff, now(request)),
        can_edit=can(who, PRICE_SETTERS) and line.editable,
        saved=int_param(request.query_params.get("saved"), "saved", maximum=10_000),
        timezones=TIMEZONES,
        result=None,
        quote_error=None,
        readings="",
    )


@router.get("/{tariff_id}/versions/new", response_class=HTMLResponse)
async def new_version_page(request: Request, tariff_id: str, who: PriceSetter) -> Response:
    line, tariff = await _tariff(request, who, tariff_id)
    start_from = int_param(request.query_params.get("from"), "from", maximum=len(tariff.versions) - 1)
    form = tariff_edit.form_of(tariff, len(tariff.versions) - 1 if start_from is None else start_from)
    return render(
        request,
        "tariffs_form.html",
        who,
        mode="version",
        tariff=tariff,
        line=line,
        values={},
        **_form_context(form, []),
    )


@router.post("/{tariff_id}/versions", response_class=HTMLResponse)
async def add_version(request: Request, tariff_id: str, who: PriceSetter) -> Response:
    line, tariff = await _tariff(request, who, tariff_id)
    form = await request.form()
    version = read_version_form(form)
    values = {"reason": form_text(form, "reason", 2_000)}
    if form_text(form, "intent", 20) == "add_season":
        context = _form_context(version, [], extra_season=True)
        return render(
            request, "tariffs_form.html", who, mode="version", tariff=tariff, line=line, values=values, **context
        )
    at = now(request)
    saved = await write(
        request,
        lambda conn: tariff_edit.add_version(
            conn, who.organisation_id, tariff_id, version, actor=who.actor, reason=values["reason"], now=at
        ),
    )
    if saved is None:
        raise HTTPException(status_code=404, detail=f"tariff: no tariff {tariff_id!r}")
    if isinstance(saved, list):
        context = _form_context(version, saved)
        return render(
            request, "tariffs_form.html", who, status_code=422, mode="version", tariff=tariff, line=line,
            values=values, **context,
        )  # fmt: skip
    return RedirectResponse(f"/console/tariffs/{tariff_id}?saved={saved.version_index}", status_code=303)


# --- quote ---------------------------------------------------------------------------------------------------------


@router.post("/{tariff_id}/quote", response_class=HTMLResponse)
async def quote_page(request: Request, tariff_id: str, who: Staff) -> Response:
    line, tariff = await _tariff(request, who, tariff_id)
    form = await request.form()
    text = form_text(form, "readings", MAX_QUOTE_CHARS)
    upload = form.get("file")
    if upload is not None and not isinstance(upload, str):
        try:
            raw = await upload.read(MAX_QUOTE_CHARS + 1)
        finally:
            await upload.close()
        if len(raw) > MAX_QUOTE_CHARS:
            raise HTTPException(status_code=413, detail=f"file: at most {MAX_QUOTE_CHARS} bytes")
        if upload.filename and raw:
            text = raw.decode("utf-8-sig", errors="replace")
    timezone = form_text(form, "timezone", 64) or "Asia/Shanghai"
    max_power = form_text(form, "max_power_kw", 20) or "100"
    quoted = tariff_edit.quote_readings(tariff, text, timezone, max_power)
    result = quoted if isinstance(quoted, tariff_edit.QuoteResult) else None
    error = None if result is not None else "\n".join(quoted)  # type: ignore[arg-type]
    return render(
        request,
        "tariffs_detail.html",
        who,
        status_code=200 if error is None else 422,
        line=line,
        tariff=tariff,
        versions=version_views(tariff, now(request)),
        can_edit=can(who, PRICE_SETTERS) and line.editable,
        saved=None,
        timezones=TIMEZONES,
        result=result,
        quote_error=error,
        readings=text if len(text) <= 100_000 else "",
        timezone=timezone,
        price_text=tariff_edit.price_text,
    )
