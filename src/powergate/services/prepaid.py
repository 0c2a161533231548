"""Prepaid control: balance policy decisions into the outbox, the outbox relay to meter commands, remote operations.

The loop, for platform-side billing::

    ingest / settle (one transaction) -- evaluate --> wallet_states + outbox rows (warning, trip, close)
    process_outbox --> headend.commands.enqueue (one command per meter of the wallet) --> Dispatcher --> meter
    due_trips (periodic) --> trips deferred to the end of a friendly window or of temporary supply

Invariants:
- Decisions are written in the transaction that changed the balance (``after_ingest`` inside the ingest batch,
  ``after_recharge`` inside the payment's ``settle``): a committed balance always has its decisions queued, and a
  rolled-back one has none. ``evaluate`` decides wallet by wallet, then writes the states and outbox rows of
  the whole call in bulk (new states in one insert, changed ones in one update, the outbox rows in one insert
  in decision order), so a batch of thousands of wallets costs a handful of statements inside that transaction.
- Every outbox key is unique (``<kind>:<wallet id>:<generation>[:<level>]``, the generation bumped by every
  decision), so one decision is queued once even if two workers evaluate the same wallet concurrently (the
  loser's unique violation rolls its transaction back and the caller retries).
- The relay is at-least-once with idempotent consumers: the command id is ``<outbox key>:<meter id>``, and
  ``enqueue`` returns the first row for a repeated id, so a crash between enqueue and marking the row processed
  sends nothing twice. Rows are relayed in id order, so a close never overtakes the trip it follows.
- Every head-end and worker runs a relay; on PostgreSQL they claim disjoint rows (``FOR UPDATE SKIP LOCKED``),
  and a wallet's rows keep their id order across relays (a row waits while an earlier one of its wallet is held
  by another relay).
- Meter-side billing wallets (``billing_mode = 'meter'``) get no relay decisions here: their meters trip
  themselves.
- Warnings stay in the outbox (kind ``warning``) for the notifications issue: nothing processes them yet.

- A wallet's warning levels are its own if set, else its tariff plan's (``set_plan_warning_levels``), else 50 /
  20 / 10 yuan; its friendly window is judged by its site's calendar (``services.site_calendar``: statutory
  days plus admin overrides, re-read when the site's revision changes).
- A recharge that lifts a balance to its auto-recharge threshold re-arms the binding (``services.autorecharge``).

Every remote operation is validated, audited (who, when, why) with ``record_audit`` in the same transaction as
its command, and returns the queued command (whose state ``command_state`` looks up) or a ``Problem``. The TOU
push (``push_tou``) builds every meter's tables from its tariff and site calendar before queueing any.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, delete, exists, insert, select, update

from powergate.domain.balance_policy import (
    DEFAULT_WARNING_LEVELS_MICROS,
    MAX_WARNING_LEVELS,
    Decision,
    FriendlyWindow,
    Policy,
    PolicyState,
    decide,
)
from powergate.domain.calendar import SiteCalendar
from powergate.domain.tariff_files import DataFileError, load_tariff
from powergate.domain.tou_table import MAX_HORIZON_DAYS, MeterTou, MeterTouLimits, build_meter_tou
from powergate.headend import commands as queue
from powergate.headend.commands import Enqueued, Problem, QueuedCommand
from powergate.headend.model import CommandKind, MeterCommand
from powergate.services import notify
from powergate.services.site_calendar import NO_SITE, SiteCalendars, sites_of_meters
from powergate.store import ledger as ledger_store
from powergate.store import metering, wakeup
from powergate.store.audit import record_audit
from powergate.store.bulk import Bulk
from powergate.store.tables import ledger_accounts, meters, tariffs
from powergate.store.tables_autorecharge import autorecharge_bindings, autorecharge_runs
from powergate.store.tables_calendar import tariff_warning_levels
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_prepaid import BILLING_MODES, outbox, wallet_policies, wallet_states

SYSTEM_ACTOR = "system:prepaid"
ID_CHUNK = 1_000
"""Bound on the ids in one ``IN (...)`` lookup."""
MAX_RELAY_BATCH = 1_000
DEFAULT_RELAY_BATCH = 500
MAX_METERS_PER_WALLET = 100
RELAY_VALID_FOR = dt.timedelta(hours=1)
RESEND_HORIZON = dt.timedelta(days=31)
"""How far back ``resend_lapsed`` looks for expired relay commands (it runs every few seconds; a meter's
re-sent command that expires in turn is a new, recent one)."""
"""How long a trip or close decided by the policy stays worth sending; a later decision supersedes it anyway."""
OPERATION_VALID_FOR = dt.timedelta(hours=24)
FAILED_RETRY_FIRST = dt.timedelta(minutes=2)
"""The wait after a trip / close failed before ``retry_failed`` queues it again; it doubles with every failed
retry up to ``FAILED_RETRY_LONGEST``."""
FAILED_RETRY_LONGEST = dt.timedelta(hours=1)
RELAY_FAILED_ALARM = {
    "trip": "trip command failed, retrying / 分闸命令失败，正在重试",
    "close": "close command failed, retrying / 合闸命令失败，正在重试",
}
DEFAULT_TZ = "Asia/Shanghai"
RELAY_KINDS = ("trip", "close")
PROCESSED_KINDS = ("trip", "close", "warning")
"""Outbox kinds this relay handles; warnings only notify."""


# -- policies ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalletPolicy:
    """A wallet's stored policy (``wallet_policies``); a wallet without a row has these defaults."""

    warning_levels_micros: tuple[int, ...] | None = None
    """The wallet's own levels; ``None``: its tariff plan's levels (``set_plan_warning_levels``), else the
    defaults 50 / 20 / 10 yuan."""
    reconnect_micros: int = 0
    power_protect: bool = False
    temporary_until: dt.datetime | None = None
    friendly_window: str = "default"
    billing_mode: str = "platform"


def parse_window(text: str) -> FriendlyWindow | Problem | None:
    """``default`` | ``off`` | ``HH:MM-HH:MM`` optionally followed by ``+nonworkdays``."""
    if text == "default":
        return FriendlyWindow()
    if text == "off":
        return None
    nightly, _, extra = text.partition("+")
    if extra not in ("", "nonworkdays"):
        return Problem("friendly_window", f"{text!r}: only '+nonworkdays' may follow the hours")
    try:
        start, end = (dt.time.fromisoformat(part) for part in nightly.split("-", 1))
    except ValueError:
        return Problem("friendly_window", f"{text!r} is not 'default', 'off' or 'HH:MM-HH:MM[+nonworkdays]'")
    return FriendlyWindow(start.hour * 60 + start.minute, end.hour * 60 + end.minute, extra == "nonworkdays")


def check_levels(levels: Sequence[int], field: str = "warning_levels_micros") -> Problem | None:
    """Any number of distinct levels >= 0 up to ``MAX_WARNING_LEVELS`` (integer micros)."""
    if any(not isinstance(level, int) or isinstance(level, bool) for level in levels):
        return Problem(field, f"{list(levels)}: levels are integer micros")
    if len(levels) > MAX_WARNING_LEVELS or len(set(levels)) != len(levels) or min(levels, default=0) < 0:
        return Problem(field, f"{list(levels)}: at most {MAX_WARNING_LEVELS} distinct levels >= 0")
    return None


def check_policy(policy: WalletPolicy) -> Problem | None:
    levels = policy.warning_levels_micros
    if levels is not None and (problem := check_levels(levels)) is not None:
        return problem
    if policy.reconnect_micros < 0:
        return Problem("reconnect_micros", f"must be >= 0, got {policy.reconnect_micros}")
    if policy.temporary_until is not None and policy.temporary_until.tzinfo is None:
        return Problem("temporary_until", "must be timezone-aware")
    if policy.billing_mode not in BILLING_MODES:
        return Problem("billing_mode", f"{policy.billing_mode!r} is not one of {list(BILLING_MODES)}")
    window = parse_window(policy.friendly_window)
    return window if isinstance(window, Problem) else None


def set_policy(conn: Connection, wallet_account_id: int, policy: WalletPolicy, now: dt.datetime) -> Problem | None:
    """Store a wallet's policy (insert or replace) in the caller's transaction."""
    problem = check_policy(policy)
    if problem is not None:
        return problem
    levels = policy.warning_levels_micros
    values = {
        "warning_levels": None if levels is None else json.dumps(sorted(levels, reverse=True)),
        "reconnect_micros": policy.reconnect_micros,
        "power_protect": policy.power_protect,
        "temporary_until": policy.temporary_until,
        "friendly_window": policy.friendly_window,
        "billing_mode": policy.billing_mode,
        "updated_at": now,
    }
    table = wallet_policies
    done = conn.execute(update(table).where(table.c.wallet_account_id == wallet_account_id).values(**values))
    if done.rowcount == 0:
        conn.execute(insert(table).values(wallet_account_id=wallet_account_id, **values))
    return None


def get_policy(conn: Connection, wallet_account_id: int) -> WalletPolicy:
    return _policies(conn, [wallet_account_id]).get(wallet_account_id, WalletPolicy())


def _policies(conn: Connection, ids: Sequence[int]) -> dict[int, WalletPolicy]:
    found: dict[int, WalletPolicy] = {}
    for chunk in _chunks(ids):
        for row in conn.execute(select(wallet_policies).where(wallet_policies.c.wallet_account_id.in_(chunk))):
            levels = None if row.warning_levels is None else tuple(int(lv) for lv in json.loads(row.warning_levels))
            found[int(row.wallet_account_id)] = WalletPolicy(
                levels,
                int(row.reconnect_micros),
                bool(row.power_protect),
                row.temporary_until,
                str(row.friendly_window),
                str(row.billing_mode),
            )
    return found


def _domain_policy(stored: WalletPolicy, overdraft_limit_micros: int, plan_levels: tuple[int, ...] | None) -> Policy:
    window = parse_window(stored.friendly_window)
    assert not isinstance(window, Problem), window  # checked when stored
    return Policy(
        resolve_levels(stored.warning_levels_micros, plan_levels),
        stored.reconnect_micros,
        overdraft_limit_micros,
        stored.power_protect,
        stored.temporary_until,
        window,
    )


# -- evaluation (inside the caller's transaction) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stored:
    state: PolicyState
    generation: int
    exists: bool


@dataclass(frozen=True, slots=True)
class _Saved:
    """A wallet's new policy state, to be written: ``exists``: update its row, else insert one."""

    wallet_id: int
    state: PolicyState
    generation: int
    exists: bool


_OutboxRow = tuple[str, str, str, int]
"""(kind, key, payload JSON, wallet account id): an outbox row as ``_write_outbox`` takes it."""


def after_ingest(conn: Connection, wallet_balances_changed: Collection[int], now: dt.datetime) -> int:
    """The ingest hook: evaluate the policy of every wallet (ledger account id) whose balance a batch changed.

    Runs inside the ingest transaction; returns the number of outbox rows written.
    """
    return evaluate(conn, sorted(set(wallet_balances_changed)), now)


def after_recharge(conn: Connection, wallet: str, now: dt.datetime) -> int:
    """The payment hook: called in ``settle``'s transaction, so a close is queued with the payment itself."""
    account_id = conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.code == wallet)).scalar()
    assert account_id is not None, f"credited wallet {wallet} has no account"
    _rearm_autorecharge(conn, int(account_id), now)
    return evaluate(conn, [int(account_id)], now)


def _rearm_autorecharge(conn: Connection, wallet_id: int, now: dt.datetime) -> None:
    """A recharge that lifts the balance to the auto-recharge threshold ends the crossing (``services.autorecharge``):
    the next fall below it is a new one, even if no periodic run saw the balance in between. A run still placed
    keeps the binding disarmed (its own credit must not re-arm it before it is recorded)."""
    b = autorecharge_bindings.c
    balance_now = select(ledger_accounts.c.balance_micros).where(ledger_accounts.c.id == wallet_id).scalar_subquery()
    placed = exists().where(autorecharge_runs.c.wallet_account_id == wallet_id, autorecharge_runs.c.state == "placed")
    conn.execute(
        update(autorecharge_bindings)
        .where(b.wallet_account_id == wallet_id, b.active, ~b.armed, b.threshold_micros <= balance_now, ~placed)
        .values(armed=True, updated_at=now)
    )


def evaluate(conn: Connection, wallet_ids: Sequence[int], now: dt.datetime) -> int:
    """Decide for each wallet from its balance now; write changed states and the decisions' outbox rows.

    Decisions are taken wallet by wallet in the order given; the writes are then made for all of them at once
    (``_save_states``: new states in one bulk insert, changed ones in one bulk update; ``_write_outbox``: every
    outbox row in one bulk insert, in decision order, so ids keep that order). All inside the caller's
    transaction: a failure (say, a concurrent evaluation's unique outbox key) leaves nothing half-applied.
    A wallet listed twice is evaluated once. Returns the number of outbox rows written.
    """
    wallet_ids = list(dict.fromkeys(wallet_ids))
    if not wallet_ids:
        return 0
    balances = _balances(conn, wallet_ids)
    policies = _policies(conn, wallet_ids)
    states = _states(conn, wallet_ids)
    zones = _zones(conn, wallet_ids)
    plans = _plan_levels_of_wallets(conn, wallet_ids)
    calendars = CALENDARS.for_wallets(conn, wallet_ids)
    saved: list[_Saved] = []
    rows: list[_OutboxRow] = []
    for wallet_id in wallet_ids:
        stored_policy = policies.get(wallet_id, WalletPolicy())
        if wallet_id not in balances or stored_policy.billing_mode != "platform":
            continue
        balance_micros, overdraft_micros = balances[wallet_id]
        policy = _domain_policy(stored_policy, overdraft_micros, plans.get(wallet_id))
        stored = states.get(wallet_id, _Stored(PolicyState(), 0, False))
        tz = _zone(zones.get(wallet_id, DEFAULT_TZ))
        decision = decide(policy, stored.state, balance_micros, now, tz, calendars[wallet_id].day_type)
        if decision.state == stored.state and stored.exists:
            continue
        generation = stored.generation + (1 if decision.changed else 0)
        saved.append(_Saved(wallet_id, decision.state, generation, stored.exists))
        rows.extend(_decision_rows(wallet_id, generation, decision, balance_micros))
    bulk = Bulk(conn)
    _save_states(bulk, saved, now)
    _write_outbox(bulk, rows, now)
    return len(rows)


def _decision_rows(wallet_id: int, generation: int, decision: Decision, balance_micros: int) -> list[_OutboxRow]:
    """The outbox rows of one decision, in the order they are relayed: warnings, deferral, trip, close."""
    rows: list[_OutboxRow] = []
    base = {"wallet_account_id": wallet_id, "balance_micros": balance_micros}
    for level in decision.warnings_micros:
        rows.append(
            _row(wallet_id, "warning", f"warning:{wallet_id}:{generation}:{level}", {**base, "level_micros": level})
        )
    if decision.deferred_until is not None:
        until = decision.deferred_until.isoformat()
        rows.append(
            _row(wallet_id, "trip_deferred", f"trip_deferred:{wallet_id}:{generation}", {**base, "until": until})
        )
    if decision.trip:
        rows.append(_row(wallet_id, "trip", f"trip:{wallet_id}:{generation}", base))
    if decision.close:
        rows.append(_row(wallet_id, "close", f"close:{wallet_id}:{generation}", base))
    return rows


OUTBOX_COLUMNS = ("kind", "key", "payload", "wallet_account_id", "created_at", "available_at", "attempts")


def _row(wallet_id: int, kind: str, key: str, payload: dict[str, Any]) -> _OutboxRow:
    return kind, key, json.dumps(payload, sort_keys=True), wallet_id


def _write_outbox(bulk: Bulk, rows: Sequence[_OutboxRow], now: dt.datetime) -> None:
    """Insert ``rows`` in their order (ids follow it) and wake the relays when the transaction commits."""
    if not rows:
        return
    at = bulk.ts(now)
    bulk.insert("outbox", OUTBOX_COLUMNS, [(*row, at, at, 0) for row in rows])
    wakeup.notify(bulk.conn, wakeup.OUTBOX)  # on PostgreSQL a COPY, which the wake-up hook does not see


def _balances(conn: Connection, ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    accounts = ledger_accounts.c
    found: dict[int, tuple[int, int]] = {}
    for chunk in _chunks(ids):
        query = select(accounts.id, accounts.balance_micros, accounts.overdraft_limit_micros)
        for account_id, balance_micros, overdraft in conn.execute(query.where(accounts.id.in_(chunk))):
            found[int(account_id)] = (int(balance_micros), int(overdraft))
    return found


def _states(conn: Connection, ids: Sequence[int]) -> dict[int, _Stored]:
    found: dict[int, _Stored] = {}
    for chunk in _chunks(ids):
        for row in conn.execute(select(wallet_states).where(wallet_states.c.wallet_account_id.in_(chunk))):
            state = PolicyState(frozenset(json.loads(row.fired_levels)), bool(row.supply_on), row.trip_due_at)
            found[int(row.wallet_account_id)] = _Stored(state, int(row.generation), True)
    return found


def _zones(conn: Connection, ids: Sequence[int]) -> dict[int, str]:
    """Each wallet's site-local time zone, from its meters (a wallet's meters share a site)."""
    found: dict[int, str] = {}
    for chunk in _chunks(ids):
        query = select(meters.c.wallet_account_id, meters.c.timezone).where(meters.c.wallet_account_id.in_(chunk))
        for wallet_id, timezone in conn.execute(query):
            found.setdefault(int(wallet_id), str(timezone))
    return found


STATE_COLUMNS = (
    ("fired_levels", "text"),
    ("supply_on", "boolean"),
    ("trip_due_at", "timestamptz"),
    ("generation", "bigint"),
    ("updated_at", "timestamptz"),
)
"""``wallet_states``' columns after the key, with their PostgreSQL types (``Bulk.update``'s arrays)."""


def _save_states(bulk: Bulk, saved: Sequence[_Saved], now: dt.datetime) -> None:
    """Insert the new states and update the changed ones: one bulk statement each, rows in wallet id order.

    Concurrent writers lock state rows in id order: on PostgreSQL an ``UPDATE ... FROM unnest(...)`` locks rows
    in whatever order its plan visits them, so several rows are locked first with an ordered ``SELECT ... FOR
    NO KEY UPDATE`` (as ``store.ledger`` does for balances); one row needs no ordering, SQLite no lock.
    """
    at = bulk.ts(now)
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    for item in sorted(saved, key=lambda s: s.wallet_id):
        state = item.state
        row = (
            item.wallet_id,
            json.dumps(sorted(state.fired_micros, reverse=True)),
            state.supply_on,
            bulk.ts(state.trip_due_at),
            item.generation,
            at,
        )
        (updates if item.exists else inserts).append(row)
    if len(updates) > 1 and not bulk.sqlite:
        ids = [row[0] for row in updates]
        lock = "SELECT wallet_account_id FROM wallet_states WHERE wallet_account_id = ANY(%s)"
        bulk.conn.exec_driver_sql(f"{lock} ORDER BY wallet_account_id FOR NO KEY UPDATE", (ids,))
    bulk.update("wallet_states", ("wallet_account_id", "bigint"), STATE_COLUMNS, updates)
    bulk.insert("wallet_states", ("wallet_account_id", *(name for name, _ in STATE_COLUMNS)), inserts)


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), ID_CHUNK):
        yield ids[start : start + ID_CHUNK]


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


CALENDARS = SiteCalendars()
"""Each site's calendar (statutory + admin overrides), re-read when the site's revision changes."""


# -- warning levels: the wallet's own, else its tariff plan's, else the defaults --------------------------------


def resolve_levels(own: tuple[int, ...] | None, plan: tuple[int, ...] | None) -> tuple[int, ...]:
    """The levels a wallet is warned at: its own if set, else its plan's, else 50 / 20 / 10 yuan."""
    if own is not None:
        return own
    return plan if plan is not None else DEFAULT_WARNING_LEVELS_MICROS


def _plan_levels_of_wallets(conn: Connection, ids: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """wallet id -> the warning levels of its tariff plan (the plan of its first meter), where the plan has any."""
    found: dict[int, tuple[int, ...]] = {}
    for chunk in _chunks(ids):
        query = (
            select(meters.c.wallet_account_id, tariff_warning_levels.c.levels)
            .join(tariff_warning_levels, tariff_warning_levels.c.tariff_id == meters.c.tariff_id)
            .where(meters.c.wallet_account_id.in_(chunk))
            .order_by(meters.c.wallet_account_id, meters.c.id)
        )
        for wallet_id, levels in conn.execute(query):
            found.setdefault(int(wallet_id), tuple(int(level) for level in json.loads(levels)))
    return found


def plan_warning_levels(conn: Connection, tariff_id: str) -> tuple[int, ...] | None:
    """A tariff plan's warning levels, highest first; ``None`` when the plan sets none."""
    table = tariff_warning_levels
    levels = conn.execute(select(table.c.levels).where(table.c.tariff_id == tariff_id)).scalar()
    return None if levels is None else tuple(int(level) for level in json.loads(levels))


def set_plan_warning_levels(
    conn: Connection, tariff_id: str, levels: Sequence[int] | None, who: Operator, now: dt.datetime
) -> Problem | None:
    """Set (``None``: remove) a tariff plan's warning levels; audited in the caller's transaction.

    Every wallet on the plan whose own policy sets no levels is warned at these from its next balance change;
    a level that fired stays fired until a recharge lifts the balance above it, as always.
    """
    problem = _check_operator(who) or (None if levels is None else check_levels(list(levels), "levels"))
    if problem is not None:
        return problem
    if conn.execute(select(tariffs.c.id).where(tariffs.c.id == tariff_id)).scalar() is None:
        return Problem("tariff_id", f"no tariff plan {tariff_id!r}")
    before = plan_warning_levels(conn, tariff_id)
    table = tariff_warning_levels
    conn.execute(delete(table).where(table.c.tariff_id == tariff_id))
    after = None if levels is None else sorted(levels, reverse=True)
    if after is not None:
        values = {"levels": json.dumps(after), "updated_by": who.actor, "updated_at": now}
        conn.execute(insert(table).values(tariff_id=tariff_id, **values))
    detail = {"before": None if before is None else list(before), "after": after}
    record_audit(conn, who.actor, "set_warning_levels", f"tariff:{tariff_id}", who.reason, detail, now)
    return None


def set_warning_levels(
    conn: Connection, wallet_account_id: int, levels: Sequence[int] | None, who: Operator, now: dt.datetime
) -> Problem | None:
    """Set a wallet's own warning levels (``None``: inherit its plan's); audited in the caller's transaction."""
    problem = _check_operator(who) or (None if levels is None else check_levels(list(levels)))
    if problem is not None:
        return problem
    code = conn.execute(select(ledger_accounts.c.code).where(ledger_accounts.c.id == wallet_account_id)).scalar()
    if code is None:
        return Problem("wallet_account_id", f"no wallet account {wallet_account_id}")
    stored = get_policy(conn, wallet_account_id)
    changed = replace(stored, warning_levels_micros=None if levels is None else tuple(levels))
    problem = set_policy(conn, wallet_account_id, changed, now)
    if problem is not None:
        return problem
    before = stored.warning_levels_micros
    detail = {
        "before": None if before is None else sorted(before, reverse=True),
        "after": None if levels is None else sorted(levels, reverse=True),
    }
    record_audit(conn, who.actor, "set_warning_levels", str(code), who.reason, detail, now)
    return None


def effective_warning_levels(conn: Connection, wallet_account_id: int) -> tuple[tuple[int, ...], str]:
    """(the levels a wallet is warned at, highest first; where they come from: ``wallet``, ``plan``, ``default``)."""
    own = get_policy(conn, wallet_account_id).warning_levels_micros
    if own is not None:
        return tuple(sorted(own, reverse=True)), "wallet"
    plan = _plan_levels_of_wallets(conn, [wallet_account_id]).get(wallet_account_id)
    if plan is not None:
        return plan, "plan"
    return DEFAULT_WARNING_LEVELS_MICROS, "default"


def wallet_state(conn: Connection, wallet_account_id: int) -> PolicyState | None:
    stored = _states(conn, [wallet_account_id]).get(wallet_account_id)
    return None if stored is None else stored.state


# -- the outbox relay -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Relayed:
    rows: int = 0
    commands: int = 0
    closes: int = 0
    """Close commands newly queued: the caller wakes the dispatcher at once when this is not 0."""
    problems: tuple[str, ...] = ()
    deferred: int = 0
    """Rows claimed but left for a later run: an earlier row of their wallet was held by another relay."""


def process_outbox(engine: Engine, now: dt.datetime, limit: int = DEFAULT_RELAY_BATCH) -> Relayed:
    """Turn unprocessed outbox rows into meter commands (trip, close) and notifications (warning, trip, close),
    and mark them processed, in one transaction. A notification problem (say, a template missing a variable) is
    recorded on the row but never holds back a relay command.

    Every head-end and every worker runs a relay. On PostgreSQL each claims its rows with ``FOR UPDATE SKIP
    LOCKED``, so concurrent relays take disjoint rows instead of relaying the same ones and waiting on each
    other's locks; SQLite's single writer (``BEGIN IMMEDIATE``) runs one relay transaction at a time. A wallet's
    rows stay in id order across relays: a claimed row whose wallet has an earlier unprocessed row held by
    another relay is left for a later run (``_overtaking``), so a close never overtakes the trip it follows
    (the later command would supersede the earlier one at the meter).
    """
    assert 0 < limit <= MAX_RELAY_BATCH, limit
    with engine.begin() as conn:
        query = (
            select(
                outbox.c.id,
                outbox.c.kind,
                outbox.c.key,
                outbox.c.wallet_account_id,
                outbox.c.payload,
                outbox.c.created_at,
            )
            .where(outbox.c.kind.in_(PROCESSED_KINDS), outbox.c.processed_at.is_(None), outbox.c.available_at <= now)
            .order_by(outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claimed = conn.execute(query).all()
        waiting = _overtaking(conn, claimed, now)
        rows = [row for row in claimed if int(row.id) not in waiting]
        commands = closes = 0
        problems: list[str] = []
        for row in rows:
            kind, key, wallet_id = str(row.kind), str(row.key), int(row.wallet_account_id)
            fault = None
            if kind in RELAY_KINDS:
                made, fault = _relay_one(conn, kind, key, wallet_id, now)
                commands += made
                closes += made if kind == "close" else 0
            payload = {**json.loads(row.payload), "wallet_account_id": wallet_id}
            unheard = _notify_one(conn, kind, key, payload, row.created_at, now)
            fault = "; ".join(p for p in (fault, unheard) if p) or None
            if fault is not None:
                problems.append(fault)
            _mark(conn, int(row.id), now, fault)
    return Relayed(len(rows), commands, closes, tuple(problems), len(waiting))


def _overtaking(conn: Connection, claimed: Sequence[Any], now: dt.datetime) -> set[int]:
    """The ids of claimed rows that would overtake an earlier unprocessed row of their wallet that this relay
    does not hold (another relay holds it, or it committed after the claim): they wait for a later run.

    PostgreSQL only: with SQLite's single writer no other relay holds a row. One query for the whole batch,
    with arrays (at most ``MAX_RELAY_BATCH`` wallets and ids).
    """
    if not claimed or conn.dialect.name == "sqlite":
        return set()
    ours = [int(row.id) for row in claimed]
    wallets = sorted({int(row.wallet_account_id) for row in claimed})
    earliest = conn.exec_driver_sql(
        "SELECT wallet_account_id, min(id) FROM outbox"
        " WHERE kind = ANY(%s) AND processed_at IS NULL AND available_at <= %s AND id < %s"
        " AND wallet_account_id = ANY(%s) AND NOT (id = ANY(%s)) GROUP BY wallet_account_id",
        (list(PROCESSED_KINDS), now, max(ours), wallets, ours),
    )
    held_elsewhere = {int(wallet_id): int(first_id) for wallet_id, first_id in earliest}
    return {int(row.id) for row in claimed if int(row.id) > held_elsewhere.get(int(row.wallet_account_id), int(row.id))}


def _notify_one(
    conn: Connection, kind: str, key: str, payload: dict[str, Any], created_at: dt.datetime, now: dt.datetime
) -> str | None:
    """Tell the tenant and the site's administrators; a problem as text, or None."""
    event = notify.event_from_outbox(conn, kind, key, payload, created_at)
    if event is None:
        return None  # a bare wallet with no account (tests, ledger tools): nobody to tell
    done = notify.notify_event(conn, event, now)
    return f"{key}: notification: {done.message}" if isinstance(done, notify.Rejected) else None


def _relay_one(conn: Connection, kind: str, key: str, wallet_id: int, now: dt.datetime) -> tuple[int, str | None]:
    """Enqueue the row's command for each meter of its wallet; (commands newly queued, a problem or None)."""
    meter_ids = _meters_of(conn, wallet_id)
    command_kind = CommandKind.TRIP if kind == "trip" else CommandKind.CLOSE
    made = 0
    for meter_id in meter_ids:
        command = MeterCommand(f"{key}:{meter_id}", command_kind, now + RELAY_VALID_FOR)
        reason = f"balance policy: {kind} ({key})"
        done = queue.enqueue(conn, meter_id, command, requested_by=SYSTEM_ACTOR, reason=reason, now=now)
        if isinstance(done, Problem):
            return made, f"{key} meter {meter_id}: {done.field}: {done.message}"
        made += 1 if done.created else 0
    return made, None if meter_ids else f"{key}: wallet {wallet_id} has no meter"


def _mark(conn: Connection, row_id: int, now: dt.datetime, fault: str | None) -> None:
    conn.execute(
        update(outbox)
        .where(outbox.c.id == row_id, outbox.c.processed_at.is_(None))
        .values(processed_at=now, attempts=outbox.c.attempts + 1, last_error=fault)
    )


def _meters_of(conn: Connection, wallet_id: int) -> list[str]:
    query = select(meters.c.id).where(meters.c.wallet_account_id == wallet_id).order_by(meters.c.id)
    return [str(m) for m in conn.execute(query.limit(MAX_METERS_PER_WALLET)).scalars()]


def due_trips(engine: Engine, now: dt.datetime, limit: int = 1_000) -> int:
    """Re-evaluate wallets whose deferred trip is due: they trip now if still short. Returns outbox rows written.
    Also sends the wallet's intent again to meters whose last trip / close expired (``resend_lapsed``) or failed
    (``retry_failed``)."""
    with engine.begin() as conn:
        query = (
            select(wallet_states.c.wallet_account_id)
            .where(wallet_states.c.trip_due_at <= now)
            .order_by(wallet_states.c.trip_due_at)
            .limit(limit)
        )
        ids = [int(i) for i in conn.execute(query).scalars()]
        # an ingest of one of these wallets may be deciding from its balance right now: wait for it, so this
        # decision starts from what it committed instead of overwriting its state with one worked out before
        ledger_store.lock_balances(conn, ids)
        written = evaluate(conn, ids, now)
        resend_lapsed(conn, now, limit)
        retry_failed(conn, now, limit)
        return written


def _latest_relay_command() -> Any:
    """The command is its meter's latest relay command (no trip / close / close-allowed queued after it)."""
    c = meter_commands.c
    newer = meter_commands.alias("newer")
    relay_kinds = ("trip", "close", "close_allowed")
    return ~exists(
        select(newer.c.seq).where(newer.c.meter_id == c.meter_id, newer.c.seq > c.seq, newer.c.kind.in_(relay_kinds))
    )


def resend_lapsed(conn: Connection, now: dt.datetime, limit: int = 1_000) -> int:
    """Send again the wallet's intent to meters whose latest trip / close expired before it reached them.

    A meter away longer than ``RELAY_VALID_FOR`` lets its relay command expire, and no new decision follows
    (the policy already decided): without this, a paid-up tenant stays in the dark, or a short one is supplied
    for free, until the balance crosses a line again. Only a meter's latest relay command counts, only when it
    carried the wallet's current intent (which stays "off" between the trip line and the reconnect threshold);
    a trip is sent again only when a short wallet would trip now (never inside a friendly window, during
    temporary supply or for a protected wallet). One new command per expired
    one (id ``resend:<seq>:<meter>``), so a meter still away gets one command an hour. Returns commands queued.
    """
    c = meter_commands.c
    query = (
        select(c.seq, c.id, c.meter_id, c.kind, c.next_attempt_at, c.last_error, meters.c.wallet_account_id)
        .join(meters, meters.c.id == c.meter_id)
        .where(
            c.kind.in_(RELAY_KINDS),
            c.state == queue.CommandState.EXPIRED.value,
            c.next_attempt_at >= now - RESEND_HORIZON,  # on the (state, next_attempt_at) index: recent ones
            _latest_relay_command(),
        )
        .order_by(c.seq)
        .limit(limit)
    )
    queued = 0
    for row in _still_wanted(conn, conn.execute(query).all(), now):
        kind, meter_id = str(row.kind), str(row.meter_id)
        command = MeterCommand(f"resend:{row.seq}:{meter_id}", CommandKind(kind), now + RELAY_VALID_FOR)
        reason = f"balance policy: {kind} again, command {row.seq} expired before it reached the meter"
        done = queue.enqueue(conn, meter_id, command, requested_by=SYSTEM_ACTOR, reason=reason, now=now)
        queued += 1 if isinstance(done, Enqueued) and done.created else 0
    return queued


def _still_wanted(conn: Connection, lapsed: Sequence[Any], now: dt.datetime) -> list[Any]:
    """The rows (a meter's latest trip / close, with its ``wallet_account_id``) whose kind is still what the
    wallet's policy wants now: a close for a wallet with supply on; a trip for a short wallet that would trip now
    (never inside a friendly window, during temporary supply or for a protected wallet)."""
    wallet_ids = sorted({int(row.wallet_account_id) for row in lapsed})
    states, policies, balances = _states(conn, wallet_ids), _policies(conn, wallet_ids), _balances(conn, wallet_ids)
    zones, plans = _zones(conn, wallet_ids), _plan_levels_of_wallets(conn, wallet_ids)
    calendars = CALENDARS.for_wallets(conn, wallet_ids) if wallet_ids else {}
    wanted = []
    for row in lapsed:
        wallet_id, kind = int(row.wallet_account_id), str(row.kind)
        stored, stored_policy = states.get(wallet_id), policies.get(wallet_id, WalletPolicy())
        if stored is None or stored_policy.billing_mode != "platform" or wallet_id not in balances:
            continue
        if kind != ("close" if stored.state.supply_on else "trip"):
            continue  # not the wallet's intent (an operator's command, or a decision since)
        if kind == "trip":
            # the intent stays "off" between the trip line and the reconnect threshold; what may hold the trip
            # back now is a friendly window, temporary supply or power-protect: would a short wallet trip now?
            overdraft_micros = balances[wallet_id][1]
            policy = _domain_policy(stored_policy, overdraft_micros, plans.get(wallet_id))
            tz = _zone(zones.get(wallet_id, DEFAULT_TZ))
            fresh = decide(policy, PolicyState(), -overdraft_micros, now, tz, calendars[wallet_id].day_type)
            if not fresh.trip:
                continue
        wanted.append(row)
    return wanted


def failed_retry_delay(retry: int) -> dt.timedelta:
    """The wait before the ``retry``-th new command after failed ones (1, 2, ...): doubling, at most an hour."""
    assert retry >= 1, retry
    return min(FAILED_RETRY_FIRST * (1 << min(retry - 1, 16)), FAILED_RETRY_LONGEST)


def _retry_number(command_id: str) -> int:
    """How many retries the failed command ends: ``retry:<n>:<seq>:<meter>`` is the n-th; any other id, none."""
    prefix, _, rest = command_id.partition(":")
    number = rest.partition(":")[0]
    return int(number) if prefix == "retry" and number.isdigit() else 0


def retry_failed(conn: Connection, now: dt.datetime, limit: int = 1_000) -> int:
    """Queue a new trip / close for meters whose latest one failed (attempts used up), after a back-off.

    A meter that answers but does not act (a relay that will not move, a link that garbles every reply) makes
    its command fail, and no new decision follows: without this a tenant who paid stays in the dark, or a meter
    at zero stays on. The new command (id ``retry:<n>:<failed seq>:<meter>``) is queued when the policy still
    wants that relay state (as ``resend_lapsed`` judges it) and the back-off after the failure has passed:
    ``FAILED_RETRY_FIRST``, doubling with every failed retry, at most ``FAILED_RETRY_LONGEST``. Each retry is
    audited (``relay_retry`` on ``meter:<id>``), and the first failure of a run raises a meter alarm to the
    site's administrators (one per failed command: ``relay_failed:<seq>``). Returns commands queued.
    """
    c = meter_commands.c
    query = (
        select(c.seq, c.id, c.meter_id, c.kind, c.next_attempt_at, c.last_error, meters.c.wallet_account_id)
        .join(meters, meters.c.id == c.meter_id)
        .where(
            c.kind.in_(RELAY_KINDS),
            c.state == queue.CommandState.FAILED.value,
            # on the (state, next_attempt_at) index; a terminal row's next_attempt_at is when it ended
            c.next_attempt_at >= now - RESEND_HORIZON,
            c.next_attempt_at <= now - FAILED_RETRY_FIRST,
            _latest_relay_command(),
        )
        .order_by(c.next_attempt_at, c.seq)
        .limit(limit)
    )
    queued = 0
    for row in _still_wanted(conn, conn.execute(query).all(), now):
        retry = _retry_number(str(row.id)) + 1
        if row.next_attempt_at + failed_retry_delay(retry) > now:
            continue
        queued += _queue_retry(conn, row, retry, now)
    return queued


def _queue_retry(conn: Connection, row: Any, retry: int, now: dt.datetime) -> int:
    kind, meter_id = str(row.kind), str(row.meter_id)
    command = MeterCommand(f"retry:{retry}:{row.seq}:{meter_id}", CommandKind(kind), now + RELAY_VALID_FOR)
    reason = f"balance policy: {kind} again (retry {retry}), command {row.id} failed: {row.last_error or ''}"
    done = queue.enqueue(conn, meter_id, command, requested_by=SYSTEM_ACTOR, reason=reason[:500], now=now)
    if not isinstance(done, Enqueued) or not done.created:
        return 0
    detail = {
        "failed_command": str(row.id),
        "failed_at": row.next_attempt_at.isoformat(),
        "error": str(row.last_error or "")[:500],
        "retry": retry,
        "command": command.command_id,
        "next_back_off_s": int(failed_retry_delay(retry + 1).total_seconds()),
    }
    why = f"the wallet's policy still wants the relay {'open' if kind == 'trip' else 'closed'}"
    record_audit(conn, SYSTEM_ACTOR, "relay_retry", f"meter:{meter_id}", why, detail, now)
    if retry == 1:
        _relay_failed_alarm(conn, row, now)
    return 1


def _relay_failed_alarm(conn: Connection, row: Any, now: dt.datetime) -> None:
    """Tell the site's administrators (meter alarm) that a trip / close failed and is being retried."""
    from powergate.domain.notifications import EventKind, NotificationEvent
    from powergate.store.tables_structure import accounts, sites

    place = conn.execute(
        select(accounts.c.id, accounts.c.name, sites.c.id.label("site_id"), sites.c.timezone)
        .join(sites, sites.c.id == accounts.c.site_id)
        .where(accounts.c.wallet_account_id == int(row.wallet_account_id))
    ).first()
    if place is None:
        return  # a bare wallet in no site's account: nobody to tell
    data = {
        "alarm": RELAY_FAILED_ALARM[str(row.kind)],
        "meter": str(row.meter_id),
        "room": notify.room_of(conn, int(place.id)) or str(place.name),
        "time": row.next_attempt_at.astimezone(_zone(str(place.timezone))).strftime("%Y-%m-%d %H:%M"),
    }
    event = NotificationEvent(EventKind.METER_ALARM, f"relay_failed:{row.seq}", int(place.site_id), now, None, data)
    notify.notify_event(conn, event, now)  # a missing template or recipient must not hold the retry back


def outbox_rows(conn: Connection, kind: str | None = None, limit: int = 1_000) -> list[dict[str, Any]]:
    """Outbox rows, oldest first (for the console, tests and the notifications issue)."""
    query = select(outbox).order_by(outbox.c.id).limit(limit)
    if kind is not None:
        query = query.where(outbox.c.kind == kind)
    return [{**row._asdict(), "payload": json.loads(row.payload)} for row in conn.execute(query)]


# -- remote operations ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operator:
    """Who asks and why: every remote operation is audited with both."""

    actor: str
    reason: str


def command_state(engine: Engine, command_id: str) -> QueuedCommand | None:
    with engine.connect() as conn:
        return queue.get(conn, command_id)


def trip(
    engine: Engine, meter_id: str, who: Operator, now: dt.datetime, request_id: str | None = None
) -> Enqueued | Problem:
    return _operate(
        engine, meter_id, MeterCommand(_id(request_id), CommandKind.TRIP, now + OPERATION_VALID_FOR), who, now
    )


def close(
    engine: Engine, meter_id: str, who: Operator, now: dt.datetime, request_id: str | None = None
) -> Enqueued | Problem:
    return _operate(
        engine, meter_id, MeterCommand(_id(request_id), CommandKind.CLOSE, now + OPERATION_VALID_FOR), who, now
    )


def set_alarm_amounts(
    engine: Engine, meter_id: str, alarm1_micros: int, alarm2_micros: int, who: Operator, now: dt.datetime
) -> Enqueued | Problem:
    command = MeterCommand(
        _id(None), CommandKind.SET_ALARMS, now + OPERATION_VALID_FOR, alarm1_micros=alarm1_micros,
        alarm2_micros=alarm2_micros,
    )  # fmt: skip
    return _operate(engine, meter_id, command, who, now)


def set_power_limit(
    engine: Engine, meter_id: str, power_limit_w: int, who: Operator, now: dt.datetime
) -> Enqueued | Problem:
    command = MeterCommand(
        _id(None), CommandKind.SET_POWER_LIMIT, now + OPERATION_VALID_FOR, power_limit_w=power_limit_w
    )
    return _operate(engine, meter_id, command, who, now)


def push_prices(
    engine: Engine, meter_id: str, prices_micros: tuple[int, int, int, int], who: Operator, now: dt.datetime
) -> Enqueued | Problem:
    """Push the four band prices (sharp, peak, flat, valley) to a meter (the band times: ``push_tou``)."""
    command = MeterCommand(_id(None), CommandKind.SET_PRICES, now + OPERATION_VALID_FOR, prices_micros=prices_micros)
    return _operate(engine, meter_id, command, who, now)


TOU_HORIZON_DAYS = 366
"""How far ahead a TOU push lays down special days (holidays, make-up workdays, admin overrides): push again
within a year, and after any change of the site calendar or of the tariff's TOU schedule."""


def push_tou(
    engine: Engine,
    wallet_or_meter: str,
    who: Operator,
    now: dt.datetime,
    *,
    horizon_days: int = TOU_HORIZON_DAYS,
    limits: MeterTouLimits | None = None,
) -> list[Enqueued] | Problem:
    """Push the TOU tables of the tariff in effect now to a meter (a meter id) or to every meter of a wallet
    (a wallet code): time zones, day tables, rest days and the site calendar's special days for
    ``horizon_days`` from today (site-local). Every meter's tables are built and checked against the meter
    model's ``limits`` before anything is queued; one problem queues nothing. Audited per meter."""
    problem = _check_operator(who)
    if problem is not None:
        return problem
    if not 1 <= horizon_days <= MAX_HORIZON_DAYS:
        return Problem("horizon_days", f"must be 1..{MAX_HORIZON_DAYS}, got {horizon_days}")
    with engine.begin() as conn:
        targets = _tou_targets(conn, wallet_or_meter)
        if isinstance(targets, Problem):
            return targets
        site_of = sites_of_meters(conn, [meter_id for meter_id, _, _ in targets])
        calendars = CALENDARS.for_sites(conn, site_of.values())
        built: list[tuple[str, MeterCommand]] = []
        for meter_id, tariff_id, timezone in targets:
            calendar = calendars[site_of.get(meter_id, NO_SITE)]
            tables = _meter_tables(conn, tariff_id, _zone(timezone), calendar, now, horizon_days, limits)
            if isinstance(tables, Problem):
                return Problem(tables.field, f"meter {meter_id}: {tables.message}")
            command = MeterCommand(_id(None), CommandKind.SET_TOU, now + OPERATION_VALID_FOR, tou=tables)
            built.append((meter_id, command))
        done: list[Enqueued] = []
        for meter_id, command in built:
            queued = queue.enqueue(conn, meter_id, command, requested_by=who.actor, reason=who.reason, now=now)
            if isinstance(queued, Problem):
                conn.rollback()
                return queued
            detail = {
                "command": command.command_id,
                "day_tables": len(command.tou.day_tables) if command.tou else 0,
                "special_days": len(command.tou.special_days) if command.tou else 0,
                "horizon_days": horizon_days,
            }
            record_audit(conn, who.actor, CommandKind.SET_TOU.value, f"meter:{meter_id}", who.reason, detail, now)
            done.append(queued)
    return done


def _tou_targets(conn: Connection, wallet_or_meter: str) -> list[tuple[str, str, str]] | Problem:
    """(meter id, tariff id, time zone) of the meter, or of each meter of the wallet."""
    columns = select(meters.c.id, meters.c.tariff_id, meters.c.timezone)
    found = conn.execute(columns.where(meters.c.id == wallet_or_meter)).all()
    if not found:
        wallet_id = conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.code == wallet_or_meter)).scalar()
        if wallet_id is None:
            return Problem("wallet_or_meter", f"no meter and no wallet {wallet_or_meter!r}")
        query = columns.where(meters.c.wallet_account_id == wallet_id).order_by(meters.c.id)
        found = conn.execute(query.limit(MAX_METERS_PER_WALLET)).all()
        if not found:
            return Problem("wallet_or_meter", f"wallet {wallet_or_meter!r} has no meter")
    return [(str(m), str(t), str(z)) for m, t, z in found]


def _meter_tables(
    conn: Connection,
    tariff_id: str,
    tz: ZoneInfo,
    calendar: SiteCalendar,
    now: dt.datetime,
    horizon_days: int,
    limits: MeterTouLimits | None,
) -> MeterTou | Problem:
    try:
        tariff = load_tariff(metering.tariff_document(conn, tariff_id), source=f"tariff {tariff_id}")
    except DataFileError as error:
        return Problem("tariff", str(error))
    local = now.astimezone(tz)
    index = tariff.version_index_at(local.replace(tzinfo=None))
    version = tariff.versions[index] if index is not None else None
    if version is None or version.tou is None:
        return Problem("tariff", f"tariff {tariff_id} has no TOU schedule in effect now: push prices instead")
    built = build_meter_tou(version.tou, calendar.day_type, local.date(), horizon_days, limits)
    if isinstance(built, list):
        return Problem(built[0].path, "; ".join(str(p) for p in built))
    return built


def power_protect(engine: Engine, wallet: str, on: bool, who: Operator, now: dt.datetime) -> list[Enqueued] | Problem:
    """Power-protect a wallet on or off: the policy flag, and the command to every meter of the wallet."""
    kind = CommandKind.PROTECT_ON if on else CommandKind.PROTECT_OFF

    def change(stored: WalletPolicy) -> WalletPolicy:
        return _replace_policy(stored, power_protect=on)

    return _wallet_operation(engine, wallet, kind, change, who, now, {"power_protect": on})


def temporary_supply(
    engine: Engine, wallet: str, until: dt.datetime, who: Operator, now: dt.datetime
) -> list[Enqueued] | Problem:
    """Supply a wallet until ``until`` whatever its balance; the policy closes it now and trips it then if short."""
    if until.tzinfo is None or until <= now:
        return Problem("until", f"{until.isoformat()} must be an aware instant after now")

    def change(stored: WalletPolicy) -> WalletPolicy:
        return _replace_policy(stored, temporary_until=until)

    return _wallet_operation(engine, wallet, None, change, who, now, {"until": until.isoformat()})


def _replace_policy(stored: WalletPolicy, **changes: Any) -> WalletPolicy:
    return replace(stored, **changes)


def _wallet_operation(
    engine: Engine,
    wallet: str,
    kind: CommandKind | None,
    change: Any,
    who: Operator,
    now: dt.datetime,
    detail: dict[str, Any],
) -> list[Enqueued] | Problem:
    problem = _check_operator(who)
    if problem is not None:
        return problem
    with engine.begin() as conn:
        wallet_id = conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.code == wallet)).scalar()
        if wallet_id is None:
            return Problem("wallet", f"no wallet account {wallet!r}")
        problem = set_policy(conn, int(wallet_id), change(get_policy(conn, int(wallet_id))), now)
        if problem is not None:
            return problem
        done: list[Enqueued] = []
        for meter_id in _meters_of(conn, int(wallet_id)) if kind is not None else []:
            assert kind is not None
            command = MeterCommand(_id(None), kind, now + OPERATION_VALID_FOR)
            queued = queue.enqueue(conn, meter_id, command, requested_by=who.actor, reason=who.reason, now=now)
            if isinstance(queued, Problem):
                conn.rollback()
                return queued
            done.append(queued)
        commands = [d.queued.command_id for d in done]
        action = kind.value if kind is not None else "temporary_supply"
        record_audit(conn, who.actor, action, wallet, who.reason, {**detail, "commands": commands}, now)
        evaluate(conn, [int(wallet_id)], now)  # e.g. temporary supply closes a tripped wallet now
    return done


def _operate(
    engine: Engine, meter_id: str, command: MeterCommand, who: Operator, now: dt.datetime
) -> Enqueued | Problem:
    problem = _check_operator(who)
    if problem is not None:
        return problem
    with engine.begin() as conn:
        if conn.execute(select(meters.c.id).where(meters.c.id == meter_id)).scalar() is None:
            return Problem("meter_id", f"no meter {meter_id!r}")
        done = queue.enqueue(conn, meter_id, command, requested_by=who.actor, reason=who.reason, now=now)
        if isinstance(done, Problem):
            return done
        detail = {"command": command.command_id, "parameters": queue.encode_parameters(command)}
        if done.created:
            record_audit(conn, who.actor, command.kind.value, f"meter:{meter_id}", who.reason, detail, now)
    return done


def _check_operator(who: Operator) -> Problem | None:
    if not who.actor.strip() or len(who.actor) > queue.MAX_REQUESTED_BY:
        return Problem("actor", f"who asked must be named (1..{queue.MAX_REQUESTED_BY} characters)")
    if not who.reason.strip():
        return Problem("reason", "why must be given: every remote operation is audited")
    return None


def _id(request_id: str | None) -> str:
    """The command id: the caller's idempotency key (a retried request queues nothing twice), else a new one."""
    return f"op:{request_id}" if request_id is not None else f"op:{uuid.uuid4().hex}"
