"""Prepaid control: balance policy decisions into the outbox, the outbox relay to meter commands, remote operations.

The loop, for platform-side billing::

    ingest / settle (one transaction) -- evaluate --> wallet_states + outbox rows (warning, trip, close)
    process_outbox --> headend.commands.enqueue (one command per meter of the wallet) --> Dispatcher --> meter
    due_trips (periodic) --> trips deferred to the end of a friendly window or of temporary supply

Invariants:
- Decisions are written in the transaction that changed the balance (``after_ingest`` inside the ingest batch,
  ``after_recharge`` inside the payment's ``settle``): a committed balance always has its decisions queued, and a
  rolled-back one has none.
- Every outbox key is unique (``<kind>:<wallet id>:<generation>[:<level>]``, the generation bumped by every
  decision), so one decision is queued once even if two workers evaluate the same wallet concurrently (the
  loser's unique violation rolls its transaction back and the caller retries).
- The relay is at-least-once with idempotent consumers: the command id is ``<outbox key>:<meter id>``, and
  ``enqueue`` returns the first row for a repeated id, so a crash between enqueue and marking the row processed
  sends nothing twice. Rows are relayed in id order, so a close never overtakes the trip it follows.
- Meter-side billing wallets (``billing_mode = 'meter'``) get no relay decisions here: their meters trip
  themselves.
- Warnings stay in the outbox (kind ``warning``) for the notifications issue: nothing processes them yet.

Every remote operation is validated, audited (who, when, why) with ``record_audit`` in the same transaction as
its command, and returns the queued command (whose state ``command_state`` looks up) or a ``Problem``.
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

from sqlalchemy import Connection, Engine, insert, select, update

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
from powergate.headend import commands as queue
from powergate.headend.commands import Enqueued, Problem, QueuedCommand
from powergate.headend.model import CommandKind, MeterCommand
from powergate.services import notify
from powergate.store.audit import record_audit
from powergate.store.tables import ledger_accounts, meters
from powergate.store.tables_prepaid import BILLING_MODES, outbox, wallet_policies, wallet_states

SYSTEM_ACTOR = "system:prepaid"
ID_CHUNK = 1_000
"""Bound on the ids in one ``IN (...)`` lookup."""
MAX_RELAY_BATCH = 1_000
DEFAULT_RELAY_BATCH = 500
MAX_METERS_PER_WALLET = 100
RELAY_VALID_FOR = dt.timedelta(hours=1)
"""How long a trip or close decided by the policy stays worth sending; a later decision supersedes it anyway."""
OPERATION_VALID_FOR = dt.timedelta(hours=24)
DEFAULT_TZ = "Asia/Shanghai"
RELAY_KINDS = ("trip", "close")
PROCESSED_KINDS = ("trip", "close", "warning")
"""Outbox kinds this relay handles; warnings only notify."""


# -- policies ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalletPolicy:
    """A wallet's stored policy (``wallet_policies``); a wallet without a row has these defaults."""

    warning_levels_micros: tuple[int, ...] = DEFAULT_WARNING_LEVELS_MICROS
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


def check_policy(policy: WalletPolicy) -> Problem | None:
    levels = policy.warning_levels_micros
    if len(levels) > MAX_WARNING_LEVELS or len(set(levels)) != len(levels) or min(levels, default=0) < 0:
        return Problem("warning_levels_micros", f"{list(levels)}: at most {MAX_WARNING_LEVELS} distinct levels >= 0")
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
    values = {
        "warning_levels": json.dumps(sorted(policy.warning_levels_micros, reverse=True)),
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
            levels = DEFAULT_WARNING_LEVELS_MICROS if row.warning_levels is None else json.loads(row.warning_levels)
            found[int(row.wallet_account_id)] = WalletPolicy(
                tuple(int(level) for level in levels),
                int(row.reconnect_micros),
                bool(row.power_protect),
                row.temporary_until,
                str(row.friendly_window),
                str(row.billing_mode),
            )
    return found


def _domain_policy(stored: WalletPolicy, overdraft_limit_micros: int) -> Policy:
    window = parse_window(stored.friendly_window)
    assert not isinstance(window, Problem), window  # checked when stored
    return Policy(
        stored.warning_levels_micros,
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


def after_ingest(conn: Connection, wallet_balances_changed: Collection[int], now: dt.datetime) -> int:
    """The ingest hook: evaluate the policy of every wallet (ledger account id) whose balance a batch changed.

    Runs inside the ingest transaction; returns the number of outbox rows written.
    """
    return evaluate(conn, sorted(set(wallet_balances_changed)), now)


def after_recharge(conn: Connection, wallet: str, now: dt.datetime) -> int:
    """The payment hook: called in ``settle``'s transaction, so a close is queued with the payment itself."""
    account_id = conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.code == wallet)).scalar()
    assert account_id is not None, f"credited wallet {wallet} has no account"
    return evaluate(conn, [int(account_id)], now)


def evaluate(conn: Connection, wallet_ids: Sequence[int], now: dt.datetime) -> int:
    """Decide for each wallet from its balance now; write changed states and the decisions' outbox rows."""
    if not wallet_ids:
        return 0
    balances = _balances(conn, wallet_ids)
    policies = _policies(conn, wallet_ids)
    states = _states(conn, wallet_ids)
    zones = _zones(conn, wallet_ids)
    written = 0
    for wallet_id in wallet_ids:
        stored_policy = policies.get(wallet_id, WalletPolicy())
        if wallet_id not in balances or stored_policy.billing_mode != "platform":
            continue
        balance_micros, overdraft_micros = balances[wallet_id]
        policy = _domain_policy(stored_policy, overdraft_micros)
        stored = states.get(wallet_id, _Stored(PolicyState(), 0, False))
        tz = _zone(zones.get(wallet_id, DEFAULT_TZ))
        decision = decide(policy, stored.state, balance_micros, now, tz, _calendar().day_type)
        if decision.state == stored.state and stored.exists:
            continue
        generation = stored.generation + (1 if decision.changed else 0)
        _save_state(conn, wallet_id, decision.state, generation, stored.exists, now)
        written += _write_decisions(conn, wallet_id, generation, decision, balance_micros, now)
    return written


def _write_decisions(
    conn: Connection, wallet_id: int, generation: int, decision: Decision, balance_micros: int, now: dt.datetime
) -> int:
    rows: list[dict[str, Any]] = []
    base = {"wallet_account_id": wallet_id, "balance_micros": balance_micros}
    for level in decision.warnings_micros:
        rows.append(_row("warning", f"warning:{wallet_id}:{generation}:{level}", {**base, "level_micros": level}))
    if decision.deferred_until is not None:
        until = decision.deferred_until.isoformat()
        rows.append(_row("trip_deferred", f"trip_deferred:{wallet_id}:{generation}", {**base, "until": until}))
    if decision.trip:
        rows.append(_row("trip", f"trip:{wallet_id}:{generation}", base))
    if decision.close:
        rows.append(_row("close", f"close:{wallet_id}:{generation}", base))
    if rows:
        extra = {"wallet_account_id": wallet_id, "created_at": now, "available_at": now, "attempts": 0}
        conn.execute(insert(outbox), [{**row, **extra} for row in rows])
    return len(rows)


def _row(kind: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "key": key, "payload": json.dumps(payload, sort_keys=True)}


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


def _save_state(
    conn: Connection, wallet_id: int, state: PolicyState, generation: int, exists: bool, now: dt.datetime
) -> None:
    values = {
        "fired_levels": json.dumps(sorted(state.fired_micros, reverse=True)),
        "supply_on": state.supply_on,
        "trip_due_at": state.trip_due_at,
        "generation": generation,
        "updated_at": now,
    }
    if exists:
        table = wallet_states
        conn.execute(update(table).where(table.c.wallet_account_id == wallet_id).values(**values))
    else:
        conn.execute(insert(wallet_states).values(wallet_account_id=wallet_id, **values))


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), ID_CHUNK):
        yield ids[start : start + ID_CHUNK]


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def _calendar() -> SiteCalendar:
    # Site calendar overrides (tables_structure.sites) are not applied yet: the statutory calendar is used.
    return SiteCalendar.china()


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


def process_outbox(engine: Engine, now: dt.datetime, limit: int = DEFAULT_RELAY_BATCH) -> Relayed:
    """Turn unprocessed outbox rows into meter commands (trip, close) and notifications (warning, trip, close),
    and mark them processed, in one transaction. A notification problem (say, a template missing a variable) is
    recorded on the row but never holds back a relay command."""
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
        )
        rows = conn.execute(query).all()
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
    return Relayed(len(rows), commands, closes, tuple(problems))


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
    """Re-evaluate wallets whose deferred trip is due: they trip now if still short. Returns outbox rows written."""
    with engine.begin() as conn:
        query = (
            select(wallet_states.c.wallet_account_id)
            .where(wallet_states.c.trip_due_at <= now)
            .order_by(wallet_states.c.trip_due_at)
            .limit(limit)
        )
        ids = [int(i) for i in conn.execute(query).scalars()]
        return evaluate(conn, ids, now)


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
    """Push the four band prices (sharp, peak, flat, valley) to a meter. The TOU table push is not done yet."""
    command = MeterCommand(_id(None), CommandKind.SET_PRICES, now + OPERATION_VALID_FOR, prices_micros=prices_micros)
    return _operate(engine, meter_id, command, who, now)


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
