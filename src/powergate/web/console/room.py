"""Room detail (``/console/rooms/{id}``): account, balance and forecast, today's energy and cost, TOU split today
and this month, load curves, meters, commands (refreshed live) and events, and every remote operation.

Each operation is a form with a required reason and a confirm step: the first POST validates the fields and
answers a confirmation panel (nothing is done yet); the confirmation POSTs the same fields with ``confirm=yes``
and the form's hidden ``idempotency_key``, and runs through ``powergate.web.idempotency.idempotent``, so a
double click or a retried request is answered from the first result and never acts twice. The work goes through
the existing services (``services.prepaid``, ``services.accounts``, ``services.payments``,
``services.meter_settings``), which validate again and audit who and why in the same transaction.

Roles: every staff role sees the page; a viewer gets no operation forms (and 403 if it posts one); finance may
recharge and refund; an operator does relay and account operations; an admin does all. A room of another
organisation answers 404 everywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from powergate.domain.money import micros_to_minor, minor_to_micros, parse_micros
from powergate.headend.commands import Enqueued, Problem
from powergate.payments.cashier import Cashier
from powergate.services import accounts, meter_settings, monitoring, payments, prepaid
from powergate.services.monitoring import RoomPlace
from powergate.web.console._render import StaffPage, page_context, render
from powergate.web.deps import Principal, Role, get_engine, now
from powergate.web.idempotency import idempotent

router = APIRouter(prefix="/rooms", tags=["console"])

RELAY_OPS = ("trip", "close", "temporary_supply", "power_protect", "alarm_amounts", "open_account", "set_tariff")
MONEY_OPS = ("recharge", "refund")
OPS = RELAY_OPS + MONEY_OPS
MAX_REASON_CHARS = 500
MAX_RECEIPT_CHARS = 40
MAX_AMOUNT_MICROS = 1_000_000 * 1_000_000
"""One operation moves at most 1,000,000 yuan (the order limit)."""


def allowed_ops(role: Role) -> frozenset[str]:
    """The operations a role may do from the room page."""
    if role is Role.ADMIN:
        return frozenset(OPS)
    if role is Role.OPERATOR:
        return frozenset(RELAY_OPS)
    if role is Role.FINANCE:
        return frozenset(MONEY_OPS)
    return frozenset()


# -- pages ----------------------------------------------------------------------------------------------------


@router.get("/{room_id}", response_class=HTMLResponse, name="console_room")
def room_page(room_id: int, request: Request, who: StaffPage) -> HTMLResponse:
    at = now(request)
    with get_engine(request).connect() as conn:
        room = monitoring.room_detail(conn, who.organisation_id, room_id, at)
        state = monitoring.room_state(conn, who.organisation_id, room_id, at)
    if room is None or state is None:
        raise HTTPException(status_code=404, detail=f"no room {room_id}")
    t = page_context(request, who)["t"]
    month = room.tou_month_wh or {}
    forecast_text = ""
    if room.account is not None:
        forecast_text = room.account.forecast.text("zh" if page_context(request, who)["lang"] == "zh-CN" else "en")
    return render(
        request,
        "room.html",
        who,
        room=room,
        state=state.value,
        bands=monitoring.BANDS,
        month_max=max([1, *month.values()]),
        forecast_text=forecast_text,
        allowed=allowed_ops(who.role),
        event_label=lambda kind: t(f"event.{kind}"),
        panel=None,
        **_commands_context(room.room_id, room.commands, room.site.timezone),
    )


def _commands_context(room_id: int, commands: list[Any], timezone: str) -> dict[str, Any]:
    open_states = ("pending", "sent", "acked")
    return {
        "room_id": room_id,
        "commands": commands,
        "commands_open": any(c.state.value in open_states for c in commands),
        "timezone": timezone,
    }


@router.get("/{room_id}/commands", response_class=HTMLResponse, name="console_room_commands")
def room_commands(room_id: int, request: Request, who: StaffPage) -> HTMLResponse:
    """Only the commands table: the page re-fetches it every 3 s while a command is still open."""
    with get_engine(request).connect() as conn:
        place = monitoring.room_place(conn, who.organisation_id, room_id)
        commands = monitoring.room_commands(conn, who.organisation_id, room_id)
    if place is None or commands is None:
        raise HTTPException(status_code=404, detail=f"no room {room_id}")
    return render(request, "room_commands.html", who, **_commands_context(room_id, commands, place.site.timezone))


@router.get("/{room_id}/curves.json", name="console_room_curves")
def room_curves(room_id: int, request: Request, who: StaffPage) -> JSONResponse:
    """The last 24 hours of samples per meter, in the stored integer units, with site-local time labels."""
    at = now(request)
    with get_engine(request).connect() as conn:
        place = monitoring.room_place(conn, who.organisation_id, room_id)
        curves = monitoring.room_curves(conn, who.organisation_id, room_id, at)
    if place is None or curves is None:
        raise HTTPException(status_code=404, detail=f"no room {room_id}")
    tz = monitoring.zone(place.site.timezone)
    body = {
        meter_id: {
            "labels": [p.at.astimezone(tz).strftime("%H:%M") for p in points],
            "power_dw": [p.power_dw for p in points],
            "voltage_dv": [p.voltage_dv for p in points],
            "current_ma": [p.current_ma for p in points],
            "pf_milli": [p.pf_milli for p in points],
        }
        for meter_id, points in curves.items()
    }
    return JSONResponse({"meters": body})


# -- operations -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What an operation acts on: the room, its meters, and the account on it (if any)."""

    place: RoomPlace
    meter_ids: list[str]
    account_id: int | None
    wallet: str | None
    tariffs: list[tuple[str, str]]


@dataclass
class Parsed:
    summary: list[tuple[str, str]] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)
    """The submitted fields, carried through the confirmation as hidden inputs."""
    args: dict[str, Any] = field(default_factory=dict)


class Invalid(Exception):
    """A form field is wrong; the message names it."""


def _target(engine: Engine, who: Principal, room_id: int) -> Target | None:
    with engine.connect() as conn:
        place = monitoring.room_place(conn, who.organisation_id, room_id)
        if place is None:
            return None
        found = monitoring.room_account(conn, room_id)
        return Target(
            place,
            monitoring.room_meter_ids(conn, room_id),
            None if found is None else found[0],
            None if found is None else found[1],
            monitoring.tariff_choices(conn),
        )


def _text(form: Mapping[str, Any], name: str, limit: int, *, required: bool = True) -> str:
    value = form.get(name)
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise Invalid(f"{name}: required")
    if len(text) > limit:
        raise Invalid(f"{name}: at most {limit} characters")
    return text


def _amount(form: Mapping[str, Any], name: str) -> int:
    """A positive amount in yuan with at most two decimals, as micros."""
    try:
        micros = parse_micros(_text(form, name, 20), field=name, max_decimals=2)
    except ValueError as error:
        raise Invalid(str(error)) from None
    if not 0 < micros <= MAX_AMOUNT_MICROS:
        raise Invalid(f"{name}: must be more than 0 and at most 1,000,000.00")
    return micros


def _parse(
    op: str,
    form: Mapping[str, Any],
    target: Target,
    t: Callable[[str], str],
    money: Callable[[int], str],
    at: dt.datetime,
) -> Parsed:
    place = target.place
    parsed = Parsed()
    parsed.summary.append((t("ops.room"), f"{place.site.name} · {place.building} · {place.floor} · {place.number}"))
    if op in ("trip", "close", "alarm_amounts", "set_tariff") and not target.meter_ids:
        raise Invalid(t("ops.no_meters"))
    if (
        op in ("trip", "close", "recharge", "refund", "temporary_supply", "power_protect", "open_account")
        and target.wallet is None
    ):
        raise Invalid(t("ops.no_account"))
    if target.meter_ids:
        parsed.summary.append((t("ops.meters"), ", ".join(target.meter_ids)))
    if op in ("recharge", "refund"):
        micros = _amount(form, "amount")
        parsed.args["amount_fen"] = micros_to_minor(micros)
        parsed.summary.append((t("ops.amount"), money(micros)))
        parsed.fields.append(("amount", _text(form, "amount", 20)))
    if op == "recharge":
        method = _text(form, "method", 10)
        if method not in ("cash", "card"):
            raise Invalid(f"method: {method!r} is not cash or card")
        receipt = _text(form, "receipt_no", MAX_RECEIPT_CHARS, required=False)
        if receipt and not (receipt.isascii() and receipt.isprintable()):
            raise Invalid("receipt_no: letters, digits and punctuation only")
        parsed.args.update(method=method, receipt_no=receipt)
        parsed.summary.append((t("ops.method"), t(f"ops.{method}")))
        parsed.fields += [("method", method), ("receipt_no", receipt)]
    if op == "alarm_amounts":
        alarm1, alarm2 = _amount(form, "alarm1"), _amount(form, "alarm2")
        parsed.args.update(alarm1_micros=alarm1, alarm2_micros=alarm2)
        parsed.summary += [(t("ops.alarm1"), money(alarm1)), (t("ops.alarm2"), money(alarm2))]
        parsed.fields += [("alarm1", _text(form, "alarm1", 20)), ("alarm2", _text(form, "alarm2", 20))]
    if op == "set_tariff":
        tariff_id = _text(form, "tariff_id", 64)
        names = dict(target.tariffs)
        if tariff_id not in names:
            raise Invalid(f"tariff_id: no tariff {tariff_id!r}")
        parsed.args["tariff_id"] = tariff_id
        parsed.summary.append((t("field.tariff"), f"{names[tariff_id]} ({tariff_id})"))
        parsed.fields.append(("tariff_id", tariff_id))
    if op == "temporary_supply":
        text = _text(form, "until", 20)
        try:
            local = dt.datetime.fromisoformat(text)
        except ValueError:
            raise Invalid(f"until: {text!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
        if local.tzinfo is not None:
            raise Invalid("until: give the site's local time without a zone")
        until = local.replace(tzinfo=monitoring.zone(place.site.timezone)).astimezone(dt.UTC)
        if until <= at:
            raise Invalid("until: must be in the future")
        parsed.args["until"] = until
        parsed.summary.append((t("ops.until"), f"{local:%Y-%m-%d %H:%M} ({place.site.timezone})"))
        parsed.fields.append(("until", text))
    if op == "power_protect":
        mode = _text(form, "on", 3)
        if mode not in ("on", "off"):
            raise Invalid(f"on: {mode!r} is not on or off")
        parsed.args["on"] = mode == "on"
        parsed.summary.append((t("ops.protect_mode"), t(f"ops.protect_{mode}")))
        parsed.fields.append(("on", mode))
    reason = _text(form, "reason", MAX_REASON_CHARS)
    parsed.args["reason"] = reason
    parsed.summary.append((t("field.reason"), reason))
    parsed.fields.append(("reason", reason))
    key = _text(form, "idempotency_key", 200)
    parsed.fields.append(("idempotency_key", key))
    parsed.args["key"] = key if len(key) <= 40 else hashlib.sha256(key.encode()).hexdigest()[:32]
    return parsed


def _queued(commands: list[Enqueued]) -> list[str]:
    return [c.queued.command_id for c in commands]


def _problem(problem: Problem | accounts.Rejected | payments.Refused) -> tuple[int, dict[str, Any]]:
    return 422, {"kind": "error", "message": f"{problem.field}: {problem.message}", "commands": []}


class _Abort(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _execute(
    op: str,
    engine: Engine,
    target: Target,
    args: dict[str, Any],
    who: Principal,
    at: dt.datetime,
    t: Callable[[str], str],
    money: Callable[[int], str],
) -> tuple[int, dict[str, Any]]:
    """Run a confirmed operation through its service; (status, result) for the panel and the idempotency store."""
    operator = prepaid.Operator(who.actor, args["reason"])
    key = args["key"]
    done: list[Enqueued] = []
    if op in ("trip", "close", "alarm_amounts"):
        for meter_id in target.meter_ids:
            if op == "alarm_amounts":
                one = prepaid.set_alarm_amounts(
                    engine, meter_id, args["alarm1_micros"], args["alarm2_micros"], operator, at
                )
            else:
                act = prepaid.trip if op == "trip" else prepaid.close
                one = act(engine, meter_id, operator, at, request_id=f"{key}:{meter_id}")
            if isinstance(one, Problem):
                return 422, {
                    "kind": "error",
                    "message": f"{meter_id}: {one.field}: {one.message}",
                    "commands": _queued(done),
                }
            done.append(one)
        return 200, {"kind": "done", "message": t("ops.queued"), "commands": _queued(done)}
    if op in ("temporary_supply", "power_protect"):
        assert target.wallet is not None
        if op == "temporary_supply":
            many = prepaid.temporary_supply(engine, target.wallet, args["until"], operator, at)
        else:
            many = prepaid.power_protect(engine, target.wallet, args["on"], operator, at)
        if isinstance(many, Problem):
            return _problem(many)
        return 200, {"kind": "done", "message": t("ops.policy_set"), "commands": _queued(many)}
    if op == "recharge":
        return _recharge(engine, target, args, who, at, t, money)
    if op == "refund":
        assert target.wallet is not None
        request = payments.RefundRequest(
            f"RF-{key}",
            target.wallet,
            args["amount_fen"],
            payments.Destination.CASH,
            args["reason"],
            who.actor,
            site_id=str(target.place.site.id),
        )
        refunded = payments.refund(engine, {}, request, at)
        if isinstance(refunded, payments.Refused):
            return _problem(refunded)
        amount = money(minor_to_micros(args["amount_fen"]))
        message = f"{t('ops.refunded')} {amount} · {refunded.refund_no} ({refunded.state})"
        return 200, {"kind": "done", "message": message, "commands": []}
    if op == "open_account":
        assert target.account_id is not None
        with engine.begin() as conn:
            opened = accounts.open_account(conn, target.account_id, actor=who.actor, reason=args["reason"], now=at)
        if isinstance(opened, accounts.Rejected):
            return _problem(opened)
        return 200, {"kind": "done", "message": f"{t('ops.opened')}: {opened.account_no}", "commands": []}
    assert op == "set_tariff", op
    try:
        with engine.begin() as conn:
            for meter_id in target.meter_ids:
                problem = meter_settings.set_tariff(
                    conn, meter_id, args["tariff_id"], actor=who.actor, reason=args["reason"], now=at
                )
                if problem is not None:
                    raise _Abort(problem)  # rolls back the meters already changed: all or nothing
    except _Abort as abort:
        return _problem(abort.problem)
    return 200, {"kind": "done", "message": f"{t('ops.tariff_set')}: {args['tariff_id']}", "commands": []}


def _recharge(
    engine: Engine,
    target: Target,
    args: dict[str, Any],
    who: Principal,
    at: dt.datetime,
    t: Callable[[str], str],
    money: Callable[[int], str],
) -> tuple[int, dict[str, Any]]:
    assert target.wallet is not None
    place = target.place
    order = payments.NewOrder(
        target.wallet,
        args["amount_fen"],
        "cashier",
        args["method"],
        description=f"{place.building} {place.floor} {place.number}"[:128],
        operator=who.actor,
    )
    receipt = args["receipt_no"] or f"C-{args['key']}"
    settled = payments.pay_at_cashier(engine, {"cashier": Cashier()}, order, receipt, None, at)
    if isinstance(settled, payments.Refused):
        return _problem(settled)
    if settled.verdict is payments.Verdict.REJECTED:
        return 422, {"kind": "error", "message": settled.reason, "commands": []}
    message = f"{t('ops.recharged')} {money(minor_to_micros(args['amount_fen']))} · {settled.order_no} · {receipt}"
    return 200, {"kind": "done", "message": message, "commands": []}


def _panel(request: Request, who: Principal, room_id: int, op: str, status: int, panel: dict[str, Any]) -> Response:
    """The panel alone for htmx (swapped into ``#op-panel``), or a small page around it for a plain form post."""
    name = "room_op_panel.html" if request.headers.get("hx-request") else "room_op_page.html"
    return render(request, name, who, status_code=status, room_id=room_id, panel={"op": op, **panel})


@router.post("/{room_id}/ops/{op}", response_class=HTMLResponse, name="console_room_operation")
async def operate(room_id: int, op: str, request: Request, who: StaffPage) -> Response:
    if op not in OPS:
        raise HTTPException(status_code=404, detail=f"no operation {op[:40]!r}; one of {', '.join(OPS)}")
    if op not in allowed_ops(who.role):
        raise HTTPException(status_code=403, detail=f"role {who.role.value} may not {op}")
    engine = get_engine(request)
    target = await run_in_threadpool(_target, engine, who, room_id)
    if target is None:
        raise HTTPException(status_code=404, detail=f"no room {room_id}")
    form = await request.form()
    context = page_context(request, who)
    t: Callable[[str], str] = context["t"]
    currency = target.place.site.currency

    def money(micros: int) -> str:
        from powergate.web.i18n import format_money

        return format_money(micros, context["lang"], currency)

    at = now(request)
    try:
        parsed = _parse(op, form, target, t, money, at)
    except Invalid as error:
        return _panel(request, who, room_id, op, 422, {"kind": "error", "message": str(error)})
    if form.get("confirm") != "yes":
        return _panel(
            request, who, room_id, op, 200, {"kind": "confirm", "summary": parsed.summary, "fields": parsed.fields}
        )

    async def run() -> tuple[int, Any]:
        return await run_in_threadpool(_execute, op, engine, target, parsed.args, who, at, t, money)

    def show(status: int, body: Any) -> Response:
        return _panel(request, who, room_id, op, status, dict(body))

    return await idempotent(request, who, run, render=show)
