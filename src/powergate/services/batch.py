"""Batch operations (issue 9): one operation on a selection of meters or accounts, now or at a set time.

A batch selects its targets once, when it is created (by site, building, floor, tariff, account tag, or an
uploaded list of meter ids / account numbers), stores one ``batch_targets`` row per target and then does ONE
thing to each:

- meters: trip, close, set alarm amounts, set the power limit, push prices: a command through the persisted
  command queue (``headend.commands``), at low priority (``BATCH_PRIORITY``: a payment's close goes first);
- accounts: set the tariff (``accounts.set_account_tariff``), power-protect on / off (the wallet's policy flag
  and a command to each of its meters, as ``prepaid.power_protect`` does), recharge (a cashier sale through
  ``payments.pay_at_cashier``), grant a base allowance (a free credit posted as an adjustment from
  ``equity:allowance``).

``run_due(engine, now)`` moves every batch on (the worker calls it every few seconds; it keeps no state of its
own, so a restart loses nothing): it starts batches whose time has come, collects the final state of the
commands it is waiting for, and starts the next targets, within the limits.

Invariants:
- A target is done once: a pending target is claimed by a conditional UPDATE (``state = 'pending' AND attempt =
  n``) in the transaction that queues its command or posts its money, so two workers never both act on it.
- Every action is idempotent by a key derived from (batch, target, attempt): command ids
  ``batch:<batch>:<target>:<attempt>[:<meter>]`` (``enqueue`` returns the first row for a repeated id); the
  recharge's order number ``BAT<batch>T<target>`` and receipt ``batch-<batch>-<target>`` (a retry after a lost
  answer confirms the same order: one credit); the allowance's ledger key ``batch:<batch>:<target>:allowance``.
  Money is therefore never moved twice for a target, not even by "retry failures".
- A meter command's result is the command's final state: verified = succeeded; failed, expired or cancelled =
  failed with the command's own reason. A batch waits for results rather than piling up commands: at most
  ``max_in_flight_per_link`` targets wait on commands per DTU link / gateway (``meter_endpoints.link_id``,
  counted across all batches), so a batch never floods an RS485 bus, and the queue's one-command-per-meter
  rule still holds.
- Limits: ``MAX_TARGETS`` per batch, targets started per batch and call (``MAX_STEP_TARGETS``), batches per
  call (``MAX_BATCHES_PER_RUN``), how far ahead a batch may be scheduled, how long its commands stay valid.
- Audited: creating, retrying and cancelling a batch (who, why, what, the selection), and every action on a
  target (the operation's own audit record, naming the batch), in the transaction that does it.

Bad input is a ``Rejected`` naming the field; nothing is written then.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update

from powergate.domain.ledger import EntryKind, Posting, make_entry
from powergate.domain.money import format_money, minor_to_micros
from powergate.headend import commands as queue
from powergate.headend.commands import CommandState, Enqueued
from powergate.headend.model import CommandKind, MeterCommand
from powergate.services import accounts as accounts_service
from powergate.services import payments, prepaid
from powergate.services.accounts import Rejected
from powergate.store import ledger as ledger_store
from powergate.store.audit import record_audit
from powergate.store.tables import ledger_accounts, meters, tariffs
from powergate.store.tables_api import tariff_owners
from powergate.store.tables_batch import MAX_TAG_CHARS, account_tags, batch_targets, batches
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_headend import meter_endpoints
from powergate.store.tables_payments import MAX_ORDER_FEN
from powergate.store.tables_structure import accounts, buildings, floors, meter_assignments, rooms, sites

MAX_TARGETS = 5_000
"""Targets of one batch: a bigger selection is refused (split it)."""
MAX_LIST_ITEMS = MAX_TARGETS
DEFAULT_MAX_IN_FLIGHT_PER_LINK = 4
MAX_IN_FLIGHT_PER_LINK = 64
DEFAULT_COMMAND_VALID_S = 3_600
MIN_COMMAND_VALID_S = 30
MAX_COMMAND_VALID_S = 7 * 86_400
MAX_SCHEDULE_AHEAD = dt.timedelta(days=366)
MAX_STEP_TARGETS = 500
"""Targets one call of ``run_due`` starts per batch (for recharges, each is a payment of its own)."""
MAX_BATCHES_PER_RUN = 50
MAX_SCAN = 10_000
"""Pending rows looked at per batch and call when picking the ones whose link has room."""
CLAIM_LEASE = dt.timedelta(minutes=5)
"""A target claimed for a recharge whose worker died is picked up again after this (its key keeps it once)."""
BATCH_PRIORITY = 50
"""Below routine parameters (100): anything else a meter is asked to do goes first."""
MAX_REASON_CHARS = 2_000
MAX_RESULT_CHARS = 1_000
MAX_ALLOWANCE_MICROS = 10_000_000_000
"""¥10,000 per account: a larger grant is a typo."""
MAX_ALARM_MICROS = 10**12
MAX_POWER_W = 10**7
MAX_PRICE_MICROS = 1_000_000_000
ALLOWANCE_ACCOUNT = "equity:allowance"
ID_CHUNK = 1_000
TAG_PATTERN = re.compile(rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_TAG_CHARS - 1}}}$")
NO_LINK = "meter:"
"""Prefix of the rate-limit key of a meter with no known link: each such meter is its own "link"."""


class Operation(StrEnum):
    SET_TARIFF = "set_tariff"
    TRIP = "trip"
    CLOSE = "close"
    POWER_PROTECT_ON = "power_protect_on"
    POWER_PROTECT_OFF = "power_protect_off"
    SET_ALARMS = "set_alarms"
    SET_POWER_LIMIT = "set_power_limit"
    PUSH_PRICES = "push_prices"
    RECHARGE = "recharge"
    GRANT_ALLOWANCE = "grant_allowance"


METER_OPERATIONS = frozenset(
    {Operation.TRIP, Operation.CLOSE, Operation.SET_ALARMS, Operation.SET_POWER_LIMIT, Operation.PUSH_PRICES}
)
"""Operations on meters; the others act on accounts."""
COMMAND_KINDS: Mapping[Operation, CommandKind] = {
    Operation.TRIP: CommandKind.TRIP,
    Operation.CLOSE: CommandKind.CLOSE,
    Operation.SET_ALARMS: CommandKind.SET_ALARMS,
    Operation.SET_POWER_LIMIT: CommandKind.SET_POWER_LIMIT,
    Operation.PUSH_PRICES: CommandKind.SET_PRICES,
    Operation.POWER_PROTECT_ON: CommandKind.PROTECT_ON,
    Operation.POWER_PROTECT_OFF: CommandKind.PROTECT_OFF,
}
"""Operations whose result is the final state of meter commands (rate-limited per link)."""
PARAMETERS: Mapping[Operation, tuple[str, ...]] = {
    Operation.SET_TARIFF: ("tariff_id",),
    Operation.TRIP: (),
    Operation.CLOSE: (),
    Operation.POWER_PROTECT_ON: (),
    Operation.POWER_PROTECT_OFF: (),
    Operation.SET_ALARMS: ("alarm1_micros", "alarm2_micros"),
    Operation.SET_POWER_LIMIT: ("power_limit_w",),
    Operation.PUSH_PRICES: ("prices_micros",),
    Operation.RECHARGE: ("amount_fen",),
    Operation.GRANT_ALLOWANCE: ("amount_micros",),
}
"""The parameters each operation takes (all required; no others allowed)."""


class BatchState(StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class TargetState(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    """Claimed: its command is queued (or its payment is in progress); the result is not known yet."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Not acted on, with the reason (a closed account, an account without a meter)."""
    CANCELLED = "cancelled"


FINAL_TARGET_STATES = frozenset({TargetState.SUCCEEDED, TargetState.FAILED, TargetState.SKIPPED, TargetState.CANCELLED})
COMMAND_SUCCESS = frozenset({CommandState.VERIFIED.value})
COMMAND_FAILURE = frozenset({CommandState.FAILED.value, CommandState.EXPIRED.value, CommandState.CANCELLED.value})


# --- selection -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which meters or accounts a batch targets: filters (all given ones must match), or ONE uploaded list.

    An account operation given meter ids acts on the accounts holding them; a meter operation given account
    numbers acts on their attached meters.
    """

    site_id: int | None = None
    building_id: int | None = None
    floor_id: int | None = None
    tariff_id: str | None = None
    tag: str | None = None
    meter_ids: tuple[str, ...] = ()
    account_nos: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        plain: dict[str, Any] = {}
        for name in ("site_id", "building_id", "floor_id", "tariff_id", "tag"):
            value = getattr(self, name)
            if value is not None:
                plain[name] = value
        if self.meter_ids:
            plain["meter_ids"] = list(self.meter_ids)
        if self.account_nos:
            plain["account_nos"] = list(self.account_nos)
        return plain

    @classmethod
    def from_json(cls, plain: Mapping[str, Any]) -> Selection:
        return cls(
            site_id=plain.get("site_id"),
            building_id=plain.get("building_id"),
            floor_id=plain.get("floor_id"),
            tariff_id=plain.get("tariff_id"),
            tag=plain.get("tag"),
            meter_ids=tuple(plain.get("meter_ids", ())),
            account_nos=tuple(plain.get("account_nos", ())),
        )

    @property
    def filtered(self) -> bool:
        return any(v is not None for v in (self.site_id, self.building_id, self.floor_id, self.tariff_id, self.tag))


def parse_list(text: str) -> tuple[str, ...]:
    """An uploaded list: ids separated by newlines, commas, semicolons or spaces (a CSV column pasted or sent as a
    file); blank items and repeats are dropped, the order is kept."""
    seen: dict[str, None] = {}
    for item in re.split(r"[\s,;]+", text):
        item = item.strip().strip('"').strip("'")
        if item:
            seen.setdefault(item, None)
    return tuple(seen)


def check_selection(selection: Selection) -> Rejected | None:
    lists = [name for name in ("meter_ids", "account_nos") if getattr(selection, name)]
    if len(lists) > 1:
        return Rejected("selection", "give meter ids or account numbers, not both")
    if lists and selection.filtered:
        return Rejected("selection", "give either filters (site, building, floor, tariff, tag) or a list, not both")
    if not lists and not selection.filtered:
        return Rejected("selection", "choose a site, building, floor, tariff or tag, or upload a list of targets")
    for name in ("meter_ids", "account_nos"):
        items: tuple[str, ...] = getattr(selection, name)
        if len(items) > MAX_LIST_ITEMS:
            return Rejected(name, f"at most {MAX_LIST_ITEMS} items, got {len(items)}")
        bad = [item for item in items if not 0 < len(item) <= 64 or not item.isprintable()]
        if bad:
            return Rejected(name, f"{bad[0][:70]!r} is not an id (1..64 printable characters)")
    if selection.tag is not None and TAG_PATTERN.match(selection.tag) is None:
        return Rejected("tag", f"{selection.tag[:40]!r}: a tag is 1..{MAX_TAG_CHARS} of a-z, 0-9, '-', '_'")
    return None


@dataclass(frozen=True, slots=True)
class Target:
    meter_id: str | None
    account_id: int | None
    label: str
    link_id: str
    skip: str | None = None
    """Why this target is skipped (it is listed, but not acted on)."""


def resolve(
    conn: Connection, organisation_id: int, operation: Operation, selection: Selection
) -> list[Target] | Rejected:
    """The targets of ``operation`` for ``selection`` within the organisation (an id of another organisation is
    "unknown", like a missing one). More than ``MAX_TARGETS`` is refused."""
    problem = check_selection(selection) or _check_scope(conn, organisation_id, selection)
    if problem is not None:
        return problem
    found = (
        _meter_targets(conn, organisation_id, selection)
        if operation in METER_OPERATIONS
        else _account_targets(conn, organisation_id, selection, operation)
    )
    if isinstance(found, Rejected):
        return found
    if not found:
        return Rejected("selection", "selects nothing: no target matches")
    if len(found) > MAX_TARGETS:
        return Rejected("selection", f"selects more than {MAX_TARGETS} targets; narrow it or split the batch")
    return found


def _check_scope(conn: Connection, organisation_id: int, selection: Selection) -> Rejected | None:
    """Every id in the filters exists in the organisation (404-like: another organisation's id is unknown)."""
    if selection.site_id is not None:
        query = select(sites.c.id).where(sites.c.id == selection.site_id, sites.c.organisation_id == organisation_id)
        if conn.execute(query).first() is None:
            return Rejected("site_id", f"no site {selection.site_id}")
    if selection.building_id is not None:
        query = (
            select(buildings.c.id)
            .join(sites, sites.c.id == buildings.c.site_id)
            .where(buildings.c.id == selection.building_id, sites.c.organisation_id == organisation_id)
        )
        if conn.execute(query).first() is None:
            return Rejected("building_id", f"no building {selection.building_id}")
    if selection.floor_id is not None:
        query = (
            select(floors.c.id)
            .join(buildings, buildings.c.id == floors.c.building_id)
            .join(sites, sites.c.id == buildings.c.site_id)
            .where(floors.c.id == selection.floor_id, sites.c.organisation_id == organisation_id)
        )
        if conn.execute(query).first() is None:
            return Rejected("floor_id", f"no floor {selection.floor_id}")
    if selection.tariff_id is not None and not tariff_visible(conn, organisation_id, selection.tariff_id):
        return Rejected("tariff_id", f"no tariff {selection.tariff_id!r}")
    return None


def tariff_visible(conn: Connection, organisation_id: int, tariff_id: str) -> bool:
    """The organisation owns the tariff or one of its meters uses it."""
    owned = select(tariff_owners.c.tariff_id).where(
        tariff_owners.c.tariff_id == tariff_id, tariff_owners.c.organisation_id == organisation_id
    )
    if conn.execute(owned).first() is not None:
        return True
    used = (
        select(meters.c.id)
        .join(accounts, accounts.c.wallet_account_id == meters.c.wallet_account_id)
        .where(meters.c.tariff_id == tariff_id, accounts.c.organisation_id == organisation_id)
        .limit(1)
    )
    return conn.execute(used).first() is not None


def _placed(organisation_id: int) -> Any:
    """Open assignments of the organisation's accounts, with their place (site, building, floor)."""
    ma = meter_assignments.c
    return (
        select(
            ma.meter_id,
            ma.account_id,
            accounts.c.account_no,
            accounts.c.state,
            buildings.c.site_id,
            meters.c.tariff_id,
            meter_endpoints.c.link_id,
        )
        .join(accounts, accounts.c.id == ma.account_id)
        .join(meters, meters.c.id == ma.meter_id)
        .join(rooms, rooms.c.id == ma.room_id)
        .join(floors, floors.c.id == rooms.c.floor_id)
        .join(buildings, buildings.c.id == floors.c.building_id)
        .outerjoin(meter_endpoints, meter_endpoints.c.meter_id == ma.meter_id)
        .where(ma.valid_to.is_(None), accounts.c.organisation_id == organisation_id)
    )


def _filter_places(query: Any, selection: Selection) -> Any:
    if selection.site_id is not None:
        query = query.where(buildings.c.site_id == selection.site_id)
    if selection.building_id is not None:
        query = query.where(buildings.c.id == selection.building_id)
    if selection.floor_id is not None:
        query = query.where(floors.c.id == selection.floor_id)
    if selection.tariff_id is not None:
        query = query.where(meters.c.tariff_id == selection.tariff_id)
    if selection.tag is not None:
        tagged = select(account_tags.c.account_id).where(account_tags.c.tag == selection.tag)
        query = query.where(accounts.c.id.in_(tagged))
    return query


def _link_key(meter_id: str, link_id: str | None) -> str:
    return link_id if link_id else f"{NO_LINK}{meter_id}"


def _meter_targets(conn: Connection, organisation_id: int, selection: Selection) -> list[Target] | Rejected:
    query = _filter_places(_placed(organisation_id), selection)
    if selection.meter_ids:
        rows = _rows_in(conn, query, meter_assignments.c.meter_id, selection.meter_ids)
        missing = [m for m in selection.meter_ids if m not in {str(r.meter_id) for r in rows}]
        if missing:
            return Rejected("meter_ids", f"unknown or unattached meters: {_some(missing)}")
    elif selection.account_nos:
        rows = _rows_in(conn, query, accounts.c.account_no, selection.account_nos)
        missing = [a for a in selection.account_nos if a not in {str(r.account_no) for r in rows}]
        if missing:
            return Rejected("account_nos", f"unknown accounts, or accounts without a meter: {_some(missing)}")
    else:
        rows = list(conn.execute(query.order_by(meter_assignments.c.meter_id).limit(MAX_TARGETS + 1)).all())
    rows = sorted(rows, key=lambda r: str(r.meter_id))
    return [
        Target(str(r.meter_id), None, f"{r.meter_id} ({r.account_no})", _link_key(str(r.meter_id), r.link_id))
        for r in rows
    ]


def _rows_in(conn: Connection, query: Any, column: Any, values: Sequence[Any]) -> list[Any]:
    rows: list[Any] = []
    for start in range(0, len(values), ID_CHUNK):
        rows.extend(conn.execute(query.where(column.in_(list(values[start : start + ID_CHUNK])))).all())
    return rows


def _account_targets(
    conn: Connection, organisation_id: int, selection: Selection, operation: Operation
) -> list[Target] | Rejected:
    base = select(accounts.c.id, accounts.c.account_no, accounts.c.state).where(
        accounts.c.organisation_id == organisation_id
    )
    if selection.account_nos:
        rows = _rows_in(conn, base, accounts.c.account_no, selection.account_nos)
        missing = [a for a in selection.account_nos if a not in {str(r.account_no) for r in rows}]
        if missing:
            return Rejected("account_nos", f"unknown accounts: {_some(missing)}")
    elif selection.meter_ids:
        placed = _rows_in(conn, _placed(organisation_id), meter_assignments.c.meter_id, selection.meter_ids)
        missing = [m for m in selection.meter_ids if m not in {str(r.meter_id) for r in placed}]
        if missing:
            return Rejected("meter_ids", f"unknown or unattached meters: {_some(missing)}")
        ids = sorted({int(r.account_id) for r in placed})
        rows = _rows_in(conn, base, accounts.c.id, ids) if ids else []
    else:
        query = base.where(accounts.c.state != "closed")
        if selection.site_id is not None and not (selection.building_id or selection.floor_id or selection.tariff_id):
            query = query.where(accounts.c.site_id == selection.site_id)
        if any(v is not None for v in (selection.building_id, selection.floor_id, selection.tariff_id)):
            holders = _filter_places(_placed(organisation_id), replace(selection, tag=None)).with_only_columns(
                meter_assignments.c.account_id
            )
            query = query.where(accounts.c.id.in_(holders))
        if selection.tag is not None:
            query = query.where(
                accounts.c.id.in_(select(account_tags.c.account_id).where(account_tags.c.tag == selection.tag))
            )
        rows = list(conn.execute(query.order_by(accounts.c.id).limit(MAX_TARGETS + 1)).all())
    rows = sorted(rows, key=lambda r: int(r.id))
    links = _account_links(conn, [int(r.id) for r in rows])
    found: list[Target] = []
    for r in rows:
        account_id = int(r.id)
        meter_link = links.get(account_id)
        skip = None
        if r.state == "closed":
            skip = "the account is closed"
        elif operation in COMMAND_KINDS and meter_link is None:
            skip = "the account has no meter attached"
        link = meter_link[1] if meter_link is not None else f"account:{account_id}"
        found.append(Target(None, account_id, str(r.account_no), link, skip))
    return found


def _account_links(conn: Connection, account_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """account -> (its first attached meter, that meter's rate-limit key)."""
    found: dict[int, tuple[str, str]] = {}
    ma = meter_assignments.c
    for start in range(0, len(account_ids), ID_CHUNK):
        chunk = list(account_ids[start : start + ID_CHUNK])
        query = (
            select(ma.account_id, ma.meter_id, meter_endpoints.c.link_id)
            .outerjoin(meter_endpoints, meter_endpoints.c.meter_id == ma.meter_id)
            .where(ma.account_id.in_(chunk), ma.valid_to.is_(None))
            .order_by(ma.account_id, ma.meter_id)
        )
        for account_id, meter_id, link_id in conn.execute(query):
            found.setdefault(int(account_id), (str(meter_id), _link_key(str(meter_id), link_id)))
    return found


def _some(items: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


# --- parameters ------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_parameters(
    conn: Connection, organisation_id: int, operation: Operation, parameters: Mapping[str, Any]
) -> dict[str, Any] | Rejected:
    """The operation's parameters, checked (ranges, types, a tariff the organisation may use)."""
    wanted = PARAMETERS[operation]
    extra = sorted(set(parameters) - set(wanted))
    if extra:
        return Rejected(f"parameters.{extra[0]}", f"is not a parameter of {operation.value}")
    missing = [name for name in wanted if parameters.get(name) is None]
    if missing:
        return Rejected(f"parameters.{missing[0]}", f"{operation.value} needs it")
    values = {name: parameters[name] for name in wanted}
    problem = _check_values(conn, organisation_id, values)
    return problem if problem is not None else values


def _check_values(conn: Connection, organisation_id: int, values: dict[str, Any]) -> Rejected | None:
    def integer(name: str, low: int, high: int) -> Rejected | None:
        value = values[name]
        if not _is_int(value) or not low <= value <= high:
            return Rejected(f"parameters.{name}", f"must be a whole number {low}..{high}, got {value!r}")
        return None

    bounds = {
        "alarm1_micros": (0, MAX_ALARM_MICROS),
        "alarm2_micros": (0, MAX_ALARM_MICROS),
        "power_limit_w": (0, MAX_POWER_W),
        "amount_fen": (1, MAX_ORDER_FEN),
        "amount_micros": (1, MAX_ALLOWANCE_MICROS),
    }
    for name, (low, high) in bounds.items():
        if name in values and (problem := integer(name, low, high)) is not None:
            return problem
    if "alarm2_micros" in values and values["alarm2_micros"] > values["alarm1_micros"]:
        return Rejected("parameters.alarm2_micros", "must not be above alarm1_micros")
    if "prices_micros" in values:
        prices = values["prices_micros"]
        if (
            not isinstance(prices, list | tuple)
            or len(prices) != 4
            or not all(_is_int(p) and 0 <= p <= MAX_PRICE_MICROS and p % queue.PRICE_STEP_MICROS == 0 for p in prices)
        ):
            return Rejected(
                "parameters.prices_micros",
                "four prices (sharp, peak, flat, valley) in micros per kWh, 0..1000 yuan with at most 4 decimals",
            )
        values["prices_micros"] = [int(p) for p in prices]
    if "tariff_id" in values:
        tariff_id = values["tariff_id"]
        if not isinstance(tariff_id, str) or not 0 < len(tariff_id) <= 64:
            return Rejected("parameters.tariff_id", "must be a tariff id")
        exists = conn.execute(select(tariffs.c.id).where(tariffs.c.id == tariff_id)).first()
        if exists is None or not tariff_visible(conn, organisation_id, tariff_id):
            return Rejected("parameters.tariff_id", f"no tariff {tariff_id!r}")
    return None


# --- creating a batch ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewBatch:
    organisation_id: int
    operation: Operation
    selection: Selection
    parameters: Mapping[str, Any]
    reason: str
    actor: str
    run_at: dt.datetime | None = None
    """None: now. Otherwise an aware time (up to ``MAX_SCHEDULE_AHEAD`` ahead)."""
    max_in_flight_per_link: int = DEFAULT_MAX_IN_FLIGHT_PER_LINK
    command_valid_s: int = DEFAULT_COMMAND_VALID_S


def _check_new(new: NewBatch, now: dt.datetime) -> Rejected | None:
    if not new.reason.strip() or len(new.reason) > MAX_REASON_CHARS:
        return Rejected("reason", f"why must be given (1..{MAX_REASON_CHARS} characters): every batch is audited")
    if not new.actor.strip() or len(new.actor) > queue.MAX_REQUESTED_BY:
        return Rejected("actor", f"who asks must be named (1..{queue.MAX_REQUESTED_BY} characters)")
    if new.run_at is not None:
        if new.run_at.tzinfo is None or new.run_at.utcoffset() is None:
            return Rejected("run_at", "needs a time zone")
        if new.run_at > now + MAX_SCHEDULE_AHEAD:
            return Rejected("run_at", f"at most {MAX_SCHEDULE_AHEAD.days} days ahead")
    if not 1 <= new.max_in_flight_per_link <= MAX_IN_FLIGHT_PER_LINK:
        return Rejected("max_in_flight_per_link", f"must be 1..{MAX_IN_FLIGHT_PER_LINK}")
    if not MIN_COMMAND_VALID_S <= new.command_valid_s <= MAX_COMMAND_VALID_S:
        return Rejected("command_valid_s", f"must be {MIN_COMMAND_VALID_S}..{MAX_COMMAND_VALID_S} seconds")
    return None


@dataclass(frozen=True, slots=True)
class Preview:
    count: int
    skipped: int
    sample: tuple[str, ...]
    target_kind: str


def preview(
    conn: Connection, organisation_id: int, operation: Operation, selection: Selection, sample: int = 20
) -> Preview | Rejected:
    """How many targets ``selection`` gives (and a few of them), without creating anything."""
    found = resolve(conn, organisation_id, operation, selection)
    if isinstance(found, Rejected):
        return found
    return Preview(
        len(found),
        sum(1 for t in found if t.skip is not None),
        tuple(t.label for t in found[:sample]),
        "meter" if operation in METER_OPERATIONS else "account",
    )


def create_batch(conn: Connection, new: NewBatch, now: dt.datetime) -> int | Rejected:
    """Store a batch and its targets (audited) in the caller's transaction; ``run_due`` runs it."""
    problem = _check_new(new, now)
    if problem is not None:
        return problem
    parameters = check_parameters(conn, new.organisation_id, new.operation, new.parameters)
    if isinstance(parameters, Rejected):
        return parameters
    found = resolve(conn, new.organisation_id, new.operation, new.selection)
    if isinstance(found, Rejected):
        return found
    run_at = now if new.run_at is None or new.run_at < now else new.run_at.astimezone(dt.UTC)
    values = {
        "organisation_id": new.organisation_id,
        "operation": new.operation.value,
        "parameters": json.dumps(parameters, sort_keys=True),
        "selection": json.dumps(new.selection.to_json(), sort_keys=True),
        "target_kind": "meter" if new.operation in METER_OPERATIONS else "account",
        "state": BatchState.SCHEDULED.value,
        "run_at": run_at,
        "reason": new.reason.strip(),
        "created_by": new.actor.strip(),
        "created_at": now,
        "updated_at": now,
        "total": len(found),
        "max_in_flight_per_link": new.max_in_flight_per_link,
        "command_valid_s": new.command_valid_s,
    }
    key = conn.execute(insert(batches).values(**values)).inserted_primary_key
    assert key is not None
    batch_id = int(key[0])
    rows = [
        {
            "batch_id": batch_id,
            "position": position,
            "meter_id": target.meter_id,
            "account_id": target.account_id,
            "label": target.label[:120],
            "link_id": target.link_id[:128],
            "state": (TargetState.SKIPPED if target.skip else TargetState.PENDING).value,
            "attempt": 1,
            "command_ids": "[]",
            "result": target.skip,
            "updated_at": now,
        }
        for position, target in enumerate(found)
    ]
    for start in range(0, len(rows), ID_CHUNK):
        conn.execute(insert(batch_targets), rows[start : start + ID_CHUNK])
    detail = {
        "operation": new.operation.value,
        "parameters": parameters,
        "selection": new.selection.to_json(),
        "targets": len(found),
        "skipped": sum(1 for t in found if t.skip),
        "run_at": run_at.isoformat(),
    }
    record_audit(conn, new.actor.strip(), "batch_create", f"batch:{batch_id}", new.reason.strip(), detail, now)
    return batch_id


# --- reading batches -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchView:
    id: int
    organisation_id: int
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
    max_in_flight_per_link: int
    command_valid_s: int
    retries: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return sum(self.counts.get(state.value, 0) for state in FINAL_TARGET_STATES)

    @property
    def progress_percent(self) -> int:
        """Targets with a final result, in whole per cent (rounded down: 100 only when all are done)."""
        return self.finished * 100 // self.total if self.total else 100


@dataclass(frozen=True, slots=True)
class TargetView:
    id: int
    position: int
    meter_id: str | None
    account_id: int | None
    label: str
    link_id: str
    state: str
    attempt: int
    command_ids: tuple[str, ...]
    result: str | None
    updated_at: dt.datetime


def _counts(conn: Connection, batch_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    found: dict[int, dict[str, int]] = {batch_id: {} for batch_id in batch_ids}
    if not batch_ids:
        return found
    query = (
        select(batch_targets.c.batch_id, batch_targets.c.state, func.count())
        .where(batch_targets.c.batch_id.in_(list(batch_ids)))
        .group_by(batch_targets.c.batch_id, batch_targets.c.state)
    )
    for batch_id, state, count in conn.execute(query):
        found[int(batch_id)][str(state)] = int(count)
    return found


def _view(row: Any, counts: dict[str, int]) -> BatchView:
    return BatchView(
        int(row.id),
        int(row.organisation_id),
        str(row.operation),
        json.loads(row.parameters),
        json.loads(row.selection),
        str(row.target_kind),
        str(row.state),
        row.run_at,
        str(row.reason),
        str(row.created_by),
        row.created_at,
        row.started_at,
        row.finished_at,
        int(row.total),
        int(row.max_in_flight_per_link),
        int(row.command_valid_s),
        int(row.retries),
        counts,
    )


def get_batch(conn: Connection, organisation_id: int, batch_id: int) -> BatchView | None:
    """The batch, if it belongs to the organisation (another organisation's batch is None, like a missing one)."""
    row = conn.execute(
        select(batches).where(batches.c.id == batch_id, batches.c.organisation_id == organisation_id)
    ).first()
    return None if row is None else _view(row, _counts(conn, [batch_id])[batch_id])


def list_batches(
    conn: Connection, organisation_id: int, *, state: str | None = None, limit: int = 50, before_id: int | None = None
) -> list[BatchView]:
    """The organisation's batches, newest first (``before_id``: the page after the one ending there)."""
    assert 0 < limit <= 500, limit
    query = select(batches).where(batches.c.organisation_id == organisation_id)
    if state is not None:
        query = query.where(batches.c.state == state)
    if before_id is not None:
        query = query.where(batches.c.id < before_id)
    rows = conn.execute(query.order_by(batches.c.id.desc()).limit(limit)).all()
    counts = _counts(conn, [int(r.id) for r in rows])
    return [_view(r, counts[int(r.id)]) for r in rows]


def list_targets(
    conn: Connection,
    organisation_id: int,
    batch_id: int,
    *,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[TargetView] | None:
    """A batch's targets in order (None: no such batch in the organisation)."""
    assert 0 < limit <= MAX_TARGETS and offset >= 0, (limit, offset)
    if get_batch(conn, organisation_id, batch_id) is None:
        return None
    query = select(batch_targets).where(batch_targets.c.batch_id == batch_id)
    if state is not None:
        query = query.where(batch_targets.c.state == state)
    rows = conn.execute(query.order_by(batch_targets.c.position).limit(limit).offset(offset)).all()
    return [
        TargetView(
            int(r.id),
            int(r.position),
            r.meter_id,
            None if r.account_id is None else int(r.account_id),
            str(r.label),
            str(r.link_id),
            str(r.state),
            int(r.attempt),
            tuple(json.loads(r.command_ids)),
            r.result,
            r.updated_at,
        )
        for r in rows
    ]


# --- retry and cancel ------------------------------------------------------------------------------------


def retry_failures(
    conn: Connection, organisation_id: int, batch_id: int, *, actor: str, reason: str, now: dt.datetime
) -> BatchView | Rejected:
    """Run the failed targets again (only those), each on its next attempt; audited. Money cannot move twice:
    a recharge or allowance keeps its key across attempts."""
    batch = get_batch(conn, organisation_id, batch_id)
    if batch is None:
        return Rejected("batch", f"no batch {batch_id}")
    if not reason.strip():
        return Rejected("reason", "why must be given: a retry is audited")
    if batch.state == BatchState.CANCELLED.value:
        return Rejected("state", f"batch {batch_id} was cancelled")
    failed = batch.counts.get(TargetState.FAILED.value, 0)
    if failed == 0:
        return Rejected("state", f"batch {batch_id} has no failed target to retry")
    t = batch_targets.c
    conn.execute(
        update(batch_targets)
        .where(t.batch_id == batch_id, t.state == TargetState.FAILED.value)
        .values(state=TargetState.PENDING.value, attempt=t.attempt + 1, command_ids="[]", updated_at=now)
    )
    conn.execute(
        update(batches)
        .where(batches.c.id == batch_id)
        .values(
            state=BatchState.RUNNING.value if batch.state != BatchState.SCHEDULED.value else batch.state,
            finished_at=None,
            retries=batches.c.retries + 1,
            updated_at=now,
        )
    )
    record_audit(conn, actor, "batch_retry", f"batch:{batch_id}", reason.strip(), {"targets": failed}, now)
    view = get_batch(conn, organisation_id, batch_id)
    assert view is not None
    return view


def cancel_batch(
    conn: Connection, organisation_id: int, batch_id: int, *, actor: str, reason: str, now: dt.datetime
) -> BatchView | Rejected:
    """Stop a batch: its pending targets are cancelled, and so are its queued commands not yet sent; commands
    already on their way finish, and their targets keep their results. Audited."""
    batch = get_batch(conn, organisation_id, batch_id)
    if batch is None:
        return Rejected("batch", f"no batch {batch_id}")
    if not reason.strip():
        return Rejected("reason", "why must be given: cancelling is audited")
    changed = conn.execute(
        update(batches)
        .where(batches.c.id == batch_id, batches.c.state.in_((BatchState.SCHEDULED.value, BatchState.RUNNING.value)))
        .values(state=BatchState.CANCELLED.value, finished_at=now, updated_at=now)
    )
    if changed.rowcount != 1:
        return Rejected(
            "state", f"batch {batch_id} is {batch.state}; only a scheduled or running batch can be cancelled"
        )
    t = batch_targets.c
    result = f"cancelled by {actor}: {reason.strip()}"[:MAX_RESULT_CHARS]
    pending = conn.execute(
        update(batch_targets)
        .where(t.batch_id == batch_id, t.state == TargetState.PENDING.value)
        .values(state=TargetState.CANCELLED.value, result=result, updated_at=now)
    ).rowcount
    recalled = 0
    for command_id in _submitted_command_ids(conn, batch_id):
        if not isinstance(queue.cancel(conn, command_id, reason=result, now=now), queue.Problem):
            recalled += 1
    detail = {"pending_cancelled": int(pending), "commands_recalled": recalled}
    record_audit(conn, actor, "batch_cancel", f"batch:{batch_id}", reason.strip(), detail, now)
    _collect(conn, batch_id, now)
    view = get_batch(conn, organisation_id, batch_id)
    assert view is not None
    return view


def _submitted_command_ids(conn: Connection, batch_id: int) -> list[str]:
    t = batch_targets.c
    rows = conn.execute(
        select(t.command_ids).where(t.batch_id == batch_id, t.state == TargetState.SUBMITTED.value)
    ).scalars()
    return [command_id for text in rows for command_id in json.loads(text)]


# --- running ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunReport:
    started: int = 0
    """Batches whose time came."""
    submitted: int = 0
    """Targets acted on (commands queued, payments made)."""
    succeeded: int = 0
    failed: int = 0
    finished: int = 0
    """Batches that completed."""

    def summary(self) -> str | None:
        if not (self.started or self.submitted or self.succeeded or self.failed or self.finished):
            return None
        return (
            f"batches: {self.started} started, {self.finished} finished; targets: {self.submitted} submitted, "
            f"{self.succeeded} succeeded, {self.failed} failed"
        )


@dataclass(frozen=True, slots=True)
class _Batch:
    id: int
    operation: Operation
    parameters: dict[str, Any]
    actor: str
    reason: str
    max_in_flight_per_link: int
    command_valid_s: int
    state: str


def run_due(engine: Engine, now: dt.datetime, *, batch_ids: Sequence[int] | None = None) -> RunReport:
    """Move batches on: start those due, collect finished commands, start the next targets within the limits.

    Safe to call from several workers at once and after any crash (everything is in the tables). ``batch_ids``
    restricts the call to these batches (the API runs a new batch's first step at once).
    """
    report = RunReport()
    with engine.begin() as conn:
        report.started = _start_due(conn, now, batch_ids)
        active = _active(conn, batch_ids)
    for batch in active:
        with engine.begin() as conn:
            succeeded, failed = _collect(conn, batch.id, now)
            report.succeeded += succeeded
            report.failed += failed
        if batch.state == BatchState.RUNNING.value:
            submitted, succeeded, failed = _advance(engine, batch, now)
            report.submitted += submitted
            report.succeeded += succeeded
            report.failed += failed
        with engine.begin() as conn:
            report.finished += _finish_if_done(conn, batch.id, now)
    return report


def _start_due(conn: Connection, now: dt.datetime, batch_ids: Sequence[int] | None) -> int:
    statement = update(batches).where(batches.c.state == BatchState.SCHEDULED.value, batches.c.run_at <= now)
    if batch_ids is not None:
        statement = statement.where(batches.c.id.in_(list(batch_ids)))
    return int(conn.execute(statement.values(state=BatchState.RUNNING.value, started_at=now, updated_at=now)).rowcount)


def _active(conn: Connection, batch_ids: Sequence[int] | None) -> list[_Batch]:
    """Running batches, and cancelled ones still waiting on commands already sent."""
    waiting = select(batch_targets.c.batch_id).where(batch_targets.c.state == TargetState.SUBMITTED.value)
    query = select(batches).where(
        or_(
            batches.c.state == BatchState.RUNNING.value,
            and_(batches.c.state == BatchState.CANCELLED.value, batches.c.id.in_(waiting)),
        )
    )
    if batch_ids is not None:
        query = query.where(batches.c.id.in_(list(batch_ids)))
    rows = conn.execute(query.order_by(batches.c.run_at, batches.c.id).limit(MAX_BATCHES_PER_RUN)).all()
    return [
        _Batch(
            int(r.id),
            Operation(r.operation),
            json.loads(r.parameters),
            str(r.created_by),
            str(r.reason),
            int(r.max_in_flight_per_link),
            int(r.command_valid_s),
            str(r.state),
        )
        for r in rows
    ]


def _collect(conn: Connection, batch_id: int, now: dt.datetime) -> tuple[int, int]:
    """Submitted targets whose commands all reached a final state get their result; (succeeded, failed)."""
    t = batch_targets.c
    rows = conn.execute(
        select(t.id, t.attempt, t.command_ids, t.updated_at).where(
            t.batch_id == batch_id, t.state == TargetState.SUBMITTED.value
        )
    ).all()
    stale = [int(r.id) for r in rows if r.command_ids == "[]" and r.updated_at < now - CLAIM_LEASE]
    if stale:  # a recharge whose worker died: its key makes a second try safe
        conn.execute(
            update(batch_targets)
            .where(t.id.in_(stale), t.state == TargetState.SUBMITTED.value, t.command_ids == "[]")
            .values(state=TargetState.PENDING.value, updated_at=now)
        )
    ids = {int(r.id): tuple(json.loads(r.command_ids)) for r in rows if r.command_ids != "[]"}
    states = _command_states(conn, [c for found in ids.values() for c in found])
    succeeded = failed = 0
    for target_id, command_ids in ids.items():
        known = [states.get(c) for c in command_ids]
        if any(k is None or k[0] not in COMMAND_SUCCESS | COMMAND_FAILURE for k in known):
            continue
        failures = [
            (c, k) for c, k in zip(command_ids, known, strict=True) if k is not None and k[0] in COMMAND_FAILURE
        ]
        if failures:
            state, text = TargetState.FAILED, "; ".join(_failure_text(c, k) for c, k in failures)
            failed += 1
        else:
            state, text = TargetState.SUCCEEDED, "; ".join(k[1] for k in known if k is not None and k[1])
            succeeded += 1
        conn.execute(
            update(batch_targets)
            .where(t.id == target_id, t.state == TargetState.SUBMITTED.value)
            .values(state=state.value, result=text[:MAX_RESULT_CHARS] or None, updated_at=now)
        )
    return succeeded, failed


def _command_states(conn: Connection, command_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """command id -> (state, text): the command's result when it succeeded, its error otherwise."""
    c = meter_commands.c
    found: dict[str, tuple[str, str]] = {}
    for start in range(0, len(command_ids), ID_CHUNK):
        chunk = list(command_ids[start : start + ID_CHUNK])
        for command_id, state, result, error in conn.execute(
            select(c.id, c.state, c.result, c.last_error).where(c.id.in_(chunk))
        ):
            text = result if state in COMMAND_SUCCESS else error
            found[str(command_id)] = (str(state), str(text or ""))
    return found


def _failure_text(command_id: str, known: tuple[str, str]) -> str:
    state, text = known
    return f"{state}: {text}" if text else f"{state} (command {command_id})"


def _finish_if_done(conn: Connection, batch_id: int, now: dt.datetime) -> int:
    t = batch_targets.c
    open_targets = select(t.id).where(
        t.batch_id == batch_id, t.state.in_((TargetState.PENDING.value, TargetState.SUBMITTED.value))
    )
    changed = conn.execute(
        update(batches)
        .where(batches.c.id == batch_id, batches.c.state == BatchState.RUNNING.value, ~open_targets.exists())
        .values(state=BatchState.DONE.value, finished_at=now, updated_at=now)
    )
    return int(changed.rowcount)


def _in_flight(conn: Connection, links: Iterable[str]) -> dict[str, int]:
    """Targets waiting on commands, per link, across all batches."""
    t = batch_targets.c
    wanted = sorted(set(links))
    counts: dict[str, int] = {}
    for start in range(0, len(wanted), ID_CHUNK):
        chunk = wanted[start : start + ID_CHUNK]
        query = (
            select(t.link_id, func.count())
            .where(t.state == TargetState.SUBMITTED.value, t.command_ids != "[]", t.link_id.in_(chunk))
            .group_by(t.link_id)
        )
        counts.update({str(link): int(n) for link, n in conn.execute(query)})
    return counts


@dataclass(frozen=True, slots=True)
class _Pending:
    id: int
    attempt: int
    meter_id: str | None
    account_id: int | None
    link_id: str


def _next_targets(conn: Connection, batch: _Batch) -> list[_Pending]:
    """The next pending targets in order, at most ``MAX_STEP_TARGETS``; for command operations only as many
    per link as the link has room for."""
    t = batch_targets.c
    rows = conn.execute(
        select(t.id, t.attempt, t.meter_id, t.account_id, t.link_id)
        .where(t.batch_id == batch.id, t.state == TargetState.PENDING.value)
        .order_by(t.position)
        .limit(MAX_SCAN)
    ).all()
    pending = [
        _Pending(int(r.id), int(r.attempt), r.meter_id, None if r.account_id is None else int(r.account_id), r.link_id)
        for r in rows
    ]
    if batch.operation not in COMMAND_KINDS:
        return pending[:MAX_STEP_TARGETS]
    busy = _in_flight(conn, (p.link_id for p in pending))
    chosen: list[_Pending] = []
    for target in pending:
        if busy.get(target.link_id, 0) >= batch.max_in_flight_per_link:
            continue
        busy[target.link_id] = busy.get(target.link_id, 0) + 1
        chosen.append(target)
        if len(chosen) >= MAX_STEP_TARGETS:
            break
    return chosen


def _claim(conn: Connection, target: _Pending, now: dt.datetime) -> bool:
    """Take a pending target for this attempt (False: another worker took it, or it was cancelled)."""
    t = batch_targets.c
    changed = conn.execute(
        update(batch_targets)
        .where(t.id == target.id, t.state == TargetState.PENDING.value, t.attempt == target.attempt)
        .values(state=TargetState.SUBMITTED.value, updated_at=now)
    )
    return changed.rowcount == 1


def _settle(conn: Connection, target_id: int, state: TargetState, text: str | None, now: dt.datetime) -> None:
    t = batch_targets.c
    conn.execute(
        update(batch_targets)
        .where(t.id == target_id, t.state == TargetState.SUBMITTED.value)
        .values(state=state.value, result=None if text is None else text[:MAX_RESULT_CHARS], updated_at=now)
    )


def _advance(engine: Engine, batch: _Batch, now: dt.datetime) -> tuple[int, int, int]:
    """Act on the next targets; returns (submitted, succeeded, failed) of those settled at once."""
    with engine.begin() as conn:
        chosen = _next_targets(conn, batch)
    if not chosen:
        return 0, 0, 0
    if batch.operation is Operation.RECHARGE:
        return _recharge_all(engine, batch, chosen, now)
    with engine.begin() as conn:
        return _act_all(conn, batch, chosen, now)


def _act_all(conn: Connection, batch: _Batch, chosen: Sequence[_Pending], now: dt.datetime) -> tuple[int, int, int]:
    """Every database-only action of a step, in one transaction (claims, commands, postings, audit)."""
    submitted = succeeded = failed = 0
    t = batch_targets.c
    for target in chosen:
        if not _claim(conn, target, now):
            continue
        submitted += 1
        outcome = _act(conn, batch, target, now)
        if isinstance(outcome, list):
            conn.execute(update(batch_targets).where(t.id == target.id).values(command_ids=json.dumps(outcome)))
            continue
        state, text = outcome
        _settle(conn, target.id, state, text, now)
        succeeded += state is TargetState.SUCCEEDED
        failed += state is TargetState.FAILED
    return submitted, succeeded, failed


def _why(batch: _Batch) -> str:
    return f"{batch.reason} (batch {batch.id})"[:MAX_REASON_CHARS]


def _act(
    conn: Connection, batch: _Batch, target: _Pending, now: dt.datetime
) -> list[str] | tuple[TargetState, str | None]:
    """One target's action: the command ids to wait for, or a final (state, text)."""
    operation = batch.operation
    if operation in METER_OPERATIONS:
        assert target.meter_id is not None
        return _meter_command(conn, batch, target, target.meter_id, now)
    assert target.account_id is not None
    if operation is Operation.SET_TARIFF:
        return _set_tariff(conn, batch, target.account_id, now)
    if operation in (Operation.POWER_PROTECT_ON, Operation.POWER_PROTECT_OFF):
        return _power_protect(conn, batch, target, target.account_id, now)
    assert operation is Operation.GRANT_ALLOWANCE, operation
    return _grant(conn, batch, target, target.account_id, now)


def _command(batch: _Batch, command_id: str, kind: CommandKind, now: dt.datetime) -> MeterCommand:
    p = batch.parameters
    prices = p.get("prices_micros")
    return MeterCommand(
        command_id,
        kind,
        now + dt.timedelta(seconds=batch.command_valid_s),
        alarm1_micros=p.get("alarm1_micros"),
        alarm2_micros=p.get("alarm2_micros"),
        power_limit_w=p.get("power_limit_w"),
        prices_micros=None if prices is None else (prices[0], prices[1], prices[2], prices[3]),
    )


def _enqueue(
    conn: Connection, batch: _Batch, meter_id: str, command: MeterCommand, subject: str, now: dt.datetime
) -> Enqueued | queue.Problem:
    done = queue.enqueue(
        conn, meter_id, command, requested_by=batch.actor, reason=_why(batch), now=now, priority=BATCH_PRIORITY
    )
    if isinstance(done, Enqueued) and done.created:
        detail = {"batch": batch.id, "command": command.command_id, "parameters": queue.encode_parameters(command)}
        record_audit(conn, batch.actor, command.kind.value, subject, _why(batch), detail, now)
    return done


def _meter_command(
    conn: Connection, batch: _Batch, target: _Pending, meter_id: str, now: dt.datetime
) -> list[str] | tuple[TargetState, str | None]:
    kind = COMMAND_KINDS[batch.operation]
    command = _command(batch, f"batch:{batch.id}:{target.id}:{target.attempt}", kind, now)
    done = _enqueue(conn, batch, meter_id, command, f"meter:{meter_id}", now)
    if isinstance(done, queue.Problem):
        return TargetState.FAILED, f"{done.field}: {done.message}"
    return [command.command_id]


def _wallet(conn: Connection, account_id: int) -> tuple[int, str]:
    row = conn.execute(
        select(ledger_accounts.c.id, ledger_accounts.c.code)
        .join(accounts, accounts.c.wallet_account_id == ledger_accounts.c.id)
        .where(accounts.c.id == account_id)
    ).one()
    return int(row.id), str(row.code)


def _account_meters(conn: Connection, account_id: int) -> list[str]:
    ma = meter_assignments.c
    query = select(ma.meter_id).where(ma.account_id == account_id, ma.valid_to.is_(None)).order_by(ma.meter_id)
    return [str(m) for m in conn.execute(query.limit(prepaid.MAX_METERS_PER_WALLET)).scalars()]


def _set_tariff(conn: Connection, batch: _Batch, account_id: int, now: dt.datetime) -> tuple[TargetState, str | None]:
    tariff_id = str(batch.parameters["tariff_id"])
    with conn.begin_nested():
        done = accounts_service.set_account_tariff(
            conn, account_id, tariff_id, actor=batch.actor, reason=_why(batch), now=now
        )
    if isinstance(done, Rejected):
        return TargetState.FAILED, str(done)
    return TargetState.SUCCEEDED, f"meters {', '.join(done)} on tariff {tariff_id}"


def _power_protect(
    conn: Connection, batch: _Batch, target: _Pending, account_id: int, now: dt.datetime
) -> list[str] | tuple[TargetState, str | None]:
    """The wallet's power-protect flag and a command to each of its meters (as ``prepaid.power_protect``)."""
    on = batch.operation is Operation.POWER_PROTECT_ON
    wallet_id, wallet = _wallet(conn, account_id)
    meter_ids = _account_meters(conn, account_id)
    if not meter_ids:
        return TargetState.SKIPPED, "the account has no meter attached"
    problem = prepaid.set_policy(conn, wallet_id, replace(prepaid.get_policy(conn, wallet_id), power_protect=on), now)
    if problem is not None:
        return TargetState.FAILED, f"{problem.field}: {problem.message}"
    kind = COMMAND_KINDS[batch.operation]
    ids: list[str] = []
    for meter_id in meter_ids:
        command = _command(batch, f"batch:{batch.id}:{target.id}:{target.attempt}:{meter_id}", kind, now)
        done = _enqueue(conn, batch, meter_id, command, f"meter:{meter_id}", now)
        if isinstance(done, queue.Problem):
            return TargetState.FAILED, f"meter {meter_id}: {done.field}: {done.message}"
        ids.append(command.command_id)
    detail = {"batch": batch.id, "power_protect": on, "commands": ids}
    record_audit(conn, batch.actor, kind.value, wallet, _why(batch), detail, now)
    prepaid.evaluate(conn, [wallet_id], now)  # off: a wallet short of credit trips now
    return ids


def _grant(
    conn: Connection, batch: _Batch, target: _Pending, account_id: int, now: dt.datetime
) -> tuple[TargetState, str | None]:
    """A free credit from ``equity:allowance``; the key has no attempt in it, so it is granted once."""
    amount = int(batch.parameters["amount_micros"])
    wallet_id, wallet = _wallet(conn, account_id)
    key = f"batch:{batch.id}:{target.id}:allowance"
    entry = make_entry(
        key,
        EntryKind.ADJUSTMENT,
        now,
        (Posting(ALLOWANCE_ACCOUNT, -amount), Posting(wallet, amount)),
        f"base allowance granted by batch {batch.id}",
    )
    posted = ledger_store.post(conn, entry, now)
    if posted.created:
        detail = {"batch": batch.id, "amount_micros": amount, "entry": key}
        record_audit(conn, batch.actor, "grant_allowance", f"account:{account_id}", _why(batch), detail, now)
        prepaid.evaluate(conn, [wallet_id], now)  # a tripped wallet back above zero closes
    return TargetState.SUCCEEDED, f"granted {format_money(amount)} to {wallet}"


def _recharge_all(engine: Engine, batch: _Batch, chosen: Sequence[_Pending], now: dt.datetime) -> tuple[int, int, int]:
    """Cashier sales, one per target; each payment runs its own transactions (``payments.pay_at_cashier``)."""
    submitted = succeeded = failed = 0
    for target in chosen:
        with engine.begin() as conn:
            if not _claim(conn, target, now):
                continue
            assert target.account_id is not None
            _, wallet = _wallet(conn, target.account_id)
        submitted += 1
        state, text = _recharge(engine, batch, target, wallet, now)
        with engine.begin() as conn:
            _settle(conn, target.id, state, text, now)
        succeeded += state is TargetState.SUCCEEDED
        failed += state is TargetState.FAILED
    return submitted, succeeded, failed


def _recharge(
    engine: Engine, batch: _Batch, target: _Pending, wallet: str, now: dt.datetime
) -> tuple[TargetState, str]:
    from powergate.payments.cashier import Cashier

    amount_fen = int(batch.parameters["amount_fen"])
    order_no = f"BAT{batch.id}T{target.id}"
    receipt = f"batch-{batch.id}-{target.id}"
    order = payments.NewOrder(
        wallet, amount_fen, "cashier", "cash", description=f"batch {batch.id}", order_no=order_no, operator=batch.actor
    )
    settled = payments.pay_at_cashier(engine, {"cashier": Cashier()}, order, receipt, None, now)
    if isinstance(settled, payments.Refused) and settled.field == "order_no":
        # placed by an earlier try whose answer was lost: confirm the same order (credited once)
        settled = payments.confirm_offline(engine, "cashier", order_no, amount_fen, receipt, batch.actor, now)
    if isinstance(settled, payments.Refused):
        return TargetState.FAILED, f"{settled.field}: {settled.message}"
    if settled.verdict is payments.Verdict.REJECTED:
        return TargetState.FAILED, settled.reason
    amount = format_money(minor_to_micros(amount_fen))
    return TargetState.SUCCEEDED, f"recharged {amount} (order {order_no})"


# --- account tags ----------------------------------------------------------------------------------------


def set_tags(
    conn: Connection,
    organisation_id: int,
    account_id: int,
    tags: Iterable[str],
    *,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> tuple[str, ...] | Rejected:
    """Replace an account's tags (audited); returns them sorted."""
    wanted = tuple(sorted({tag.strip().lower() for tag in tags if tag.strip()}))
    bad = [tag for tag in wanted if TAG_PATTERN.match(tag) is None]
    if bad:
        return Rejected("tags", f"{bad[0][:40]!r}: a tag is 1..{MAX_TAG_CHARS} of a-z, 0-9, '-', '_'")
    if len(wanted) > 20:
        return Rejected("tags", "at most 20 tags per account")
    found = conn.execute(
        select(accounts.c.id).where(accounts.c.id == account_id, accounts.c.organisation_id == organisation_id)
    ).first()
    if found is None:
        return Rejected("account", f"no account {account_id}")
    before = tags_of(conn, [account_id]).get(account_id, ())
    conn.execute(delete(account_tags).where(account_tags.c.account_id == account_id))
    if wanted:
        conn.execute(
            insert(account_tags),
            [{"account_id": account_id, "tag": tag, "created_at": now, "created_by": actor} for tag in wanted],
        )
    detail = {"before": list(before), "after": list(wanted)}
    record_audit(conn, actor, "set_tags", f"account:{account_id}", reason.strip() or "tags", detail, now)
    return wanted


def tags_of(conn: Connection, account_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
    found: dict[int, list[str]] = {}
    for start in range(0, len(account_ids), ID_CHUNK):
        chunk = list(account_ids[start : start + ID_CHUNK])
        query = select(account_tags.c.account_id, account_tags.c.tag).where(account_tags.c.account_id.in_(chunk))
        for account_id, tag in conn.execute(query.order_by(account_tags.c.tag)):
            found.setdefault(int(account_id), []).append(str(tag))
    return {account_id: tuple(tags) for account_id, tags in found.items()}


def organisation_tags(conn: Connection, organisation_id: int) -> list[tuple[str, int]]:
    """(tag, accounts carrying it) of the organisation, by tag."""
    query = (
        select(account_tags.c.tag, func.count())
        .join(accounts, accounts.c.id == account_tags.c.account_id)
        .where(accounts.c.organisation_id == organisation_id)
        .group_by(account_tags.c.tag)
        .order_by(account_tags.c.tag)
        .limit(1_000)
    )
    return [(str(tag), int(n)) for tag, n in conn.execute(query)]
