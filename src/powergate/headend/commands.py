"""The persisted command queue: every command reaches its meter exactly once, across crashes and outages.

A command (trip, close, recharge, set prices, ...) is a row of ``meter_commands`` from ``enqueue`` to a
terminal state. Its life::

    pending --claim--> sent --ack--> acked --read back--> verified
       ^                 |  \\                 |
       |   offline/busy  |   timeout: unknown  +--not applied--> pending (backoff) ... failed
       +-----------------+   (verify BEFORE any resend)
    pending past valid_until -> expired;  superseded or cancelled while pending -> cancelled

Exactly once, the argument (docs/headend.md has it in full):

1. The row is written before every send: a claim moves ``pending`` to ``sent`` and counts the attempt in the
   same committed UPDATE, before a byte goes out. A claim is a compare-and-set on ``version`` (and, on
   PostgreSQL, under a row lock on the meter taken with SKIP LOCKED), so two dispatchers, or a restarted one,
   never own the same attempt.
2. A command found in ``sent`` (the process died, or the reply never came) may or may not have been applied.
   It is never simply resent: for relay commands and recharges the meter is read first (relay state; purchase
   count). Applied -> ``verified``; not applied -> a new attempt, written before it is sent.
3. A recharge carries its purchase count. A meter applies each count once and reports a repeat as already
   applied; a meter whose purchase count has reached the command's has it. So even a resend after a lost
   reply, or after a read that raced the frame, can never credit twice.
4. Commands without a read-back (close-allowed, power-protect off, parameters, time sync) set a state rather
   than add to one: a repeat changes nothing.
5. One command in flight per meter, in priority then age order; a newer relay command supersedes older pending
   ones, so a stale trip can never follow the close that a payment jumped ahead of it.

Limits: attempts per command (``max_attempts`` <= 100), exponential backoff with jitter up to
``max_delay_s``, claims per poll (``batch``), commands in flight (``max_in_flight``), steps per claim, and the
time a command of unknown outcome keeps being re-verified after its ``valid_until`` (``verify_grace_s``).
Offline meters cost nothing: their head command is looked at again every ``offline_recheck_s`` and at once
when ``wake()`` is called.

Time is injected (``clock``); jitter comes from an injected ``random.Random``. The state machine
(``plan_claim``, ``after_send``, ``after_read``) is pure; the SQL functions run inside the caller's
transaction; ``Dispatcher`` runs them in a worker thread so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, and_, exists, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from powergate.domain import tou_table
from powergate.headend.model import (
    CommandKind,
    CommandResult,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterLink,
    MeterSnapshot,
    ReadItem,
)
from powergate.store.tables import meters
from powergate.store.tables_commands import MAX_ATTEMPTS_LIMIT, OPEN_STATES, PRIORITY_RANGE, meter_commands

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
T = TypeVar("T")
EndpointLookup = Callable[[str], MeterEndpoint | None]

DEFAULT_MAX_ATTEMPTS = 5
MAX_COMMAND_ID = 128
MAX_REQUESTED_BY = 120
MAX_STEPS_PER_CLAIM = 4
"""send -> read back, or read -> resend -> read back: a claim never needs more."""
PRICE_STEP_MICROS = 100
"""Meter prices carry 4 decimals: 0.0001 yuan = 100 micros."""
MAX_TEXT = 2_000
"""Bound on stored error and result texts."""


class CommandState(StrEnum):
    PENDING = "pending"
    """Waiting for its turn, its meter, or its next attempt (``next_attempt_at``)."""
    SENT = "sent"
    """An attempt is (or was) on its way; whether the meter applied it is not known yet."""
    ACKED = "acked"
    """The meter said yes; the read-back has not confirmed it yet."""
    VERIFIED = "verified"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


OPEN = frozenset({CommandState.PENDING, CommandState.SENT, CommandState.ACKED})
IN_FLIGHT = (CommandState.SENT.value, CommandState.ACKED.value)
assert {state.value for state in OPEN} == set(OPEN_STATES)

PRIORITY_URGENT = 900
"""Restoring supply (close, power-protect on): a close after a payment jumps the queue."""
PRIORITY_NORMAL = 500
PRIORITY_ROUTINE = 100
"""Parameters and time sync: they wait behind anything that touches supply or money."""

DEFAULT_PRIORITY = {
    CommandKind.CLOSE: PRIORITY_URGENT,
    CommandKind.PROTECT_ON: PRIORITY_URGENT,
    CommandKind.TRIP: PRIORITY_NORMAL,
    CommandKind.CLOSE_ALLOWED: PRIORITY_NORMAL,
    CommandKind.PROTECT_OFF: PRIORITY_NORMAL,
    CommandKind.RECHARGE: PRIORITY_NORMAL,
    CommandKind.SET_ALARMS: PRIORITY_ROUTINE,
    CommandKind.SET_POWER_LIMIT: PRIORITY_ROUTINE,
    CommandKind.SET_PRICES: PRIORITY_ROUTINE,
    CommandKind.SET_TOU: PRIORITY_ROUTINE,
    CommandKind.TIME_SYNC: PRIORITY_ROUTINE,
}

READ_BACK = {
    CommandKind.RECHARGE: frozenset({ReadItem.PREPAID}),
    CommandKind.TRIP: frozenset({ReadItem.RELAY}),
    CommandKind.CLOSE: frozenset({ReadItem.RELAY}),
    CommandKind.PROTECT_ON: frozenset({ReadItem.RELAY}),
}
"""What to read to know whether a command took effect. Other kinds set a state; their ack is their proof."""

SUPERSEDES = {
    CommandKind.TRIP: frozenset({CommandKind.TRIP, CommandKind.CLOSE, CommandKind.CLOSE_ALLOWED}),
    CommandKind.CLOSE: frozenset({CommandKind.TRIP, CommandKind.CLOSE, CommandKind.CLOSE_ALLOWED}),
    CommandKind.CLOSE_ALLOWED: frozenset({CommandKind.TRIP, CommandKind.CLOSE, CommandKind.CLOSE_ALLOWED}),
    CommandKind.PROTECT_ON: frozenset({CommandKind.PROTECT_ON, CommandKind.PROTECT_OFF}),
    CommandKind.PROTECT_OFF: frozenset({CommandKind.PROTECT_ON, CommandKind.PROTECT_OFF}),
    CommandKind.SET_ALARMS: frozenset({CommandKind.SET_ALARMS}),
    CommandKind.SET_POWER_LIMIT: frozenset({CommandKind.SET_POWER_LIMIT}),
    CommandKind.SET_PRICES: frozenset({CommandKind.SET_PRICES}),
    CommandKind.SET_TOU: frozenset({CommandKind.SET_TOU}),
    CommandKind.TIME_SYNC: frozenset({CommandKind.TIME_SYNC}),
}
"""A newer command makes these older *pending* ones of the same meter obsolete (the latest intent wins).
Recharges are never superseded: each is money."""


@dataclass(frozen=True, slots=True)
class Problem:
    """A command that cannot be queued, naming the field at fault."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class QueuedCommand:
    """One row of ``meter_commands``."""

    seq: int
    meter_id: str
    command: MeterCommand
    priority: int
    state: CommandState
    attempts: int
    max_attempts: int
    next_attempt_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    requested_by: str
    reason: str
    last_error: str | None = None
    result: str | None = None
    claimed_by: str | None = None
    version: int = 0

    @property
    def command_id(self) -> str:
        return self.command.command_id


@dataclass(frozen=True, slots=True)
class Enqueued:
    queued: QueuedCommand
    created: bool
    """False when the command id was already queued: the first command is returned and nothing is written."""
    superseded: tuple[str, ...] = ()
    """Ids of older pending commands this one cancelled."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_delay_s: float = 5.0
    max_delay_s: float = 600.0
    jitter: float = 0.5
    """A retry waits a random time in [delay x (1 - jitter), delay], so meters that failed together spread out."""
    offline_recheck_s: float = 5.0
    """How soon an offline meter's command (or a BUSY link) is looked at again."""
    lease_s: float = 60.0
    """How long a claim holds; another dispatcher may take over a command whose holder fell silent longer."""
    verify_grace_s: float = 86_400.0
    """How long after ``valid_until`` a command of unknown outcome is still re-verified before it fails."""

    def __post_init__(self) -> None:
        assert 0 < self.base_delay_s <= self.max_delay_s, (self.base_delay_s, self.max_delay_s)
        assert 0 <= self.jitter <= 1, self.jitter
        assert self.offline_recheck_s > 0 and self.lease_s > 0 and self.verify_grace_s >= 0

    def retry_delay(self, attempts: int, rng: random.Random) -> dt.timedelta:
        """The wait after the ``attempts``-th failed attempt: exponential, capped, jittered."""
        exponent = min(max(attempts - 1, 0), 30)
        delay_s = min(self.base_delay_s * 2**exponent, self.max_delay_s)
        return dt.timedelta(seconds=delay_s * (1 - self.jitter * rng.random()))


# -- parameters (the command's fields that are not columns) --------------------------------------------------

_PARAMETER_FIELDS = ("amount_micros", "purchase_count", "alarm1_micros", "alarm2_micros", "power_limit_w")


def encode_parameters(command: MeterCommand) -> str:
    """The command's optional fields as canonical JSON (sorted keys, no spaces): equal commands, equal text."""
    values: dict[str, Any] = {}
    for name in _PARAMETER_FIELDS:
        value = getattr(command, name)
        if value is not None:
            values[name] = value
    if command.prices_micros is not None:
        values["prices_micros"] = list(command.prices_micros)
    if command.at is not None:
        values["at"] = command.at.astimezone(dt.UTC).isoformat()
    if command.tou is not None:
        values["tou"] = tou_table.to_plain(command.tou)
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def decode_command(command_id: str, kind: str, valid_until: dt.datetime, parameters: str) -> MeterCommand:
    values = json.loads(parameters)
    assert isinstance(values, dict), parameters
    unknown = set(values) - {*_PARAMETER_FIELDS, "prices_micros", "at", "tou"}
    assert not unknown, f"command {command_id}: unknown parameters {sorted(unknown)}"
    prices = values.get("prices_micros")
    at = values.get("at")
    tou = None if "tou" not in values else tou_table.from_plain(values["tou"])
    assert not isinstance(tou, list), f"command {command_id}: stored TOU table is invalid: {tou}"
    return MeterCommand(
        command_id=command_id,
        kind=CommandKind(kind),
        valid_until=valid_until,
        prices_micros=None if prices is None else tuple(int(p) for p in prices),
        at=None if at is None else dt.datetime.fromisoformat(at),
        tou=tou,
        **{name: int(values[name]) for name in _PARAMETER_FIELDS if name in values},
    )


# -- checks ---------------------------------------------------------------------------------------------------


def check_command(
    meter_id: str,
    command: MeterCommand,
    *,
    requested_by: str,
    reason: str,
    now: dt.datetime,
    priority: int,
    max_attempts: int,
) -> Problem | None:
    """``None`` if the command can be queued, else the first problem found, naming the field."""
    general = _check_general(meter_id, command, requested_by, reason, now, priority, max_attempts)
    return general if general is not None else _check_parameters(command)


def _check_general(
    meter_id: str,
    command: MeterCommand,
    requested_by: str,
    reason: str,
    now: dt.datetime,
    priority: int,
    max_attempts: int,
) -> Problem | None:
    if not 0 < len(command.command_id) <= MAX_COMMAND_ID:
        return Problem("command_id", f"must be 1..{MAX_COMMAND_ID} characters, got {len(command.command_id)}")
    if not meter_id:
        return Problem("meter_id", "is empty")
    if not 0 < len(requested_by.strip()) <= MAX_REQUESTED_BY:
        return Problem("requested_by", f"who asked must be named (1..{MAX_REQUESTED_BY} characters)")
    if not reason.strip():
        return Problem("reason", "why must be given: every command to a meter is audited")
    if command.valid_until.tzinfo is None:
        return Problem("valid_until", "must be timezone-aware")
    if command.valid_until <= now:
        return Problem("valid_until", f"{command.valid_until.isoformat()} has already passed")
    if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        return Problem("priority", f"{priority} is not in {PRIORITY_RANGE[0]}..{PRIORITY_RANGE[1]}")
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        return Problem("max_attempts", f"{max_attempts} is not in 1..{MAX_ATTEMPTS_LIMIT}")
    return None


def _check_parameters(command: MeterCommand) -> Problem | None:
    kind = command.kind
    if kind is CommandKind.RECHARGE:
        if command.amount_micros is None or command.amount_micros <= 0:
            return Problem("amount_micros", f"a recharge needs an amount > 0, got {command.amount_micros}")
        if command.purchase_count is None or command.purchase_count < 1:
            return Problem("purchase_count", f"a recharge needs a purchase count >= 1, got {command.purchase_count}")
    elif kind is CommandKind.SET_ALARMS:
        one, two = command.alarm1_micros, command.alarm2_micros
        if one is None or two is None or not 0 <= two <= one:
            return Problem("alarm2_micros", f"alarm amounts need 0 <= alarm2 <= alarm1, got {one} and {two}")
    elif kind is CommandKind.SET_POWER_LIMIT:
        if command.power_limit_w is None or command.power_limit_w < 0:
            return Problem("power_limit_w", f"must be >= 0 (0: no limit), got {command.power_limit_w}")
    elif kind is CommandKind.SET_PRICES:
        prices = command.prices_micros
        if prices is None or len(prices) != 4 or min(prices) < 0:
            return Problem("prices_micros", "four prices >= 0 are needed: sharp, peak, flat, valley")
        if any(price % PRICE_STEP_MICROS for price in prices):
            return Problem("prices_micros", f"{list(prices)}: meter prices carry at most 4 decimals (yuan/kWh)")
    elif kind is CommandKind.SET_TOU:
        if command.tou is None:
            return Problem("tou", "a TOU push needs the tables")
        problems = tou_table.structure_problems(command.tou)
        if problems:
            return Problem(problems[0].path, problems[0].message)
    elif kind is CommandKind.TIME_SYNC and command.at is not None and command.at.tzinfo is None:
        return Problem("at", "must be timezone-aware")
    return None


# -- the state machine (pure) ---------------------------------------------------------------------------------


class Step(StrEnum):
    SEND = "send"
    VERIFY = "verify"


@dataclass(frozen=True, slots=True)
class Transition:
    """The row's next values. ``then`` is the step to take at once within the same claim (None: release it)."""

    state: CommandState
    attempts: int
    next_attempt_at: dt.datetime
    last_error: str | None
    result: str | None
    then: Step | None = None


def _terminal(
    row: QueuedCommand, state: CommandState, now: dt.datetime, *, error: str | None = None, result: str | None = None
) -> Transition:
    return Transition(state, row.attempts, now, error if error is not None else row.last_error, result)


def _later(
    row: QueuedCommand,
    state: CommandState,
    at: dt.datetime,
    error: str,
    attempts: int | None = None,
) -> Transition:
    return Transition(state, row.attempts if attempts is None else attempts, at, error, row.result)


def _send_now(row: QueuedCommand, now: dt.datetime) -> Transition:
    """A new attempt, counted and written BEFORE it is sent."""
    return Transition(CommandState.SENT, row.attempts + 1, now, row.last_error, row.result, Step.SEND)


def plan_claim(row: QueuedCommand, now: dt.datetime) -> Transition:
    """What a dispatcher does with a due command it has claimed."""
    kind = row.command.kind
    if row.state is CommandState.PENDING:
        if now >= row.command.valid_until:
            return _terminal(row, CommandState.EXPIRED, now, error="valid_until passed before it could be sent")
        if row.attempts >= row.max_attempts:
            return _terminal(row, CommandState.FAILED, now, error=f"not applied after {row.attempts} attempts")
        return _send_now(row, now)
    if row.state is CommandState.ACKED or kind in READ_BACK:
        # The meter may have applied it: look before anything is sent again.
        return Transition(row.state, row.attempts, now, row.last_error, row.result, Step.VERIFY)
    # sent, no read-back: the command sets a state, so sending it again is harmless
    if now >= row.command.valid_until:
        return _terminal(row, CommandState.FAILED, now, error=f"outcome unknown at valid_until: {row.last_error}")
    if row.attempts >= row.max_attempts:
        return _terminal(row, CommandState.FAILED, now, error=f"no answer after {row.attempts} attempts")
    return _send_now(row, now)


def after_send(
    row: QueuedCommand, outcome: CommandResult | LinkError, now: dt.datetime, policy: RetryPolicy, rng: random.Random
) -> Transition:
    """The row after an attempt (``row.state`` is ``sent``, the attempt already counted)."""
    if isinstance(outcome, CommandResult):
        if outcome.already_applied:
            return _terminal(row, CommandState.VERIFIED, now, result=_clip(f"already applied: {outcome.reason}"))
        if outcome.ok and row.command.kind in READ_BACK:
            return Transition(CommandState.ACKED, row.attempts, now, row.last_error, None, Step.VERIFY)
        if outcome.ok:
            return _terminal(row, CommandState.VERIFIED, now, result=_clip(f"acknowledged {outcome.reason}".strip()))
        outcome = LinkError(FailureKind.REJECTED, outcome.reason or "refused")
    error = _clip(f"attempt {row.attempts}: {outcome.kind.value}: {outcome.reason}")
    if outcome.kind is FailureKind.REJECTED:
        state = CommandState.EXPIRED if now >= row.command.valid_until else CommandState.FAILED
        return _terminal(row, state, now, error=error)
    if outcome.kind in (FailureKind.OFFLINE, FailureKind.BUSY):
        # Nothing went out: give the attempt back and wait for the meter (or the link) to be ready.
        at = now + dt.timedelta(seconds=policy.offline_recheck_s)
        return _later(row, CommandState.PENDING, at, error, attempts=row.attempts - 1)
    # timeout or garbled reply: the meter may have acted; the next look starts with a read (or, for a
    # kind without a read-back, a harmless repeat)
    return _later(row, CommandState.SENT, now + policy.retry_delay(row.attempts, rng), error)


def applied(command: MeterCommand, snapshot: MeterSnapshot) -> bool | None:
    """Does the meter show the command's effect? ``None`` if the snapshot lacks the value that tells."""
    kind = command.kind
    if kind is CommandKind.RECHARGE:
        if snapshot.purchase_count is None or command.purchase_count is None:
            return None
        # counts are applied in order, one at a time: a meter at or past ours has ours
        return snapshot.purchase_count >= command.purchase_count
    if snapshot.relay_open is None:
        return None
    if kind is CommandKind.TRIP:
        return snapshot.relay_open
    assert kind in (CommandKind.CLOSE, CommandKind.PROTECT_ON), kind
    return not snapshot.relay_open


def _evidence(command: MeterCommand, snapshot: MeterSnapshot) -> str:
    if command.kind is CommandKind.RECHARGE:
        return f"purchase count {snapshot.purchase_count} on the meter"
    return f"relay {'open' if snapshot.relay_open else 'closed'} on the meter"


def after_read(
    row: QueuedCommand,
    read: MeterSnapshot | LinkError,
    now: dt.datetime,
    policy: RetryPolicy,
    rng: random.Random,
) -> Transition:
    """The row after reading the meter to learn whether a ``sent`` or ``acked`` command took effect."""
    command = row.command
    shown = None if isinstance(read, LinkError) else applied(command, read)
    if shown is None:
        return _unreadable(row, read, now, policy, rng)
    assert isinstance(read, MeterSnapshot)
    evidence = _evidence(command, read)
    if shown:
        return _terminal(row, CommandState.VERIFIED, now, result=f"verified: {evidence}")
    expired = now >= command.valid_until
    if row.attempts >= row.max_attempts or expired:
        state = CommandState.EXPIRED if expired else CommandState.FAILED
        when = "by valid_until" if expired else f"after {row.attempts} attempts"
        return _terminal(row, state, now, error=_clip(f"not applied {when}: {evidence}; {row.last_error or ''}"))
    if row.state is CommandState.ACKED:
        # The meter said yes but does not show it (a close refused by a credit trip): try again later.
        error = _clip(f"attempt {row.attempts}: acknowledged, but {evidence}")
        return _later(row, CommandState.PENDING, now + policy.retry_delay(row.attempts, rng), error)
    return _send_now(row, now)


def _unreadable(
    row: QueuedCommand, read: MeterSnapshot | LinkError, now: dt.datetime, policy: RetryPolicy, rng: random.Random
) -> Transition:
    """The outcome stays unknown: keep the state (never resend blind) and look again later, within a bound."""
    what = f"{read.kind.value}: {read.reason}" if isinstance(read, LinkError) else "the reply lacks the value"
    error = _clip(f"read-back: {what}")
    if now >= row.command.valid_until + dt.timedelta(seconds=policy.verify_grace_s):
        return _terminal(row, CommandState.FAILED, now, error=f"outcome unknown: {error}")
    offline = isinstance(read, LinkError) and read.kind in (FailureKind.OFFLINE, FailureKind.BUSY)
    wait = dt.timedelta(seconds=policy.offline_recheck_s) if offline else policy.retry_delay(row.attempts, rng)
    return _later(row, row.state, now + wait, error)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


# -- the store (SQL inside the caller's transaction) ----------------------------------------------------------

_c = meter_commands.c


def _row(record: Any) -> QueuedCommand:
    command = decode_command(record.id, record.kind, record.valid_until, record.parameters)
    return QueuedCommand(
        seq=int(record.seq),
        meter_id=record.meter_id,
        command=command,
        priority=int(record.priority),
        state=CommandState(record.state),
        attempts=int(record.attempts),
        max_attempts=int(record.max_attempts),
        next_attempt_at=record.next_attempt_at,
        created_at=record.created_at,
        updated_at=record.updated_at,
        requested_by=record.requested_by,
        reason=record.reason,
        last_error=record.last_error,
        result=record.result,
        claimed_by=record.claimed_by,
        version=int(record.version),
    )


def get(conn: Connection, command_id: str) -> QueuedCommand | None:
    record = conn.execute(select(meter_commands).where(_c.id == command_id)).first()
    return None if record is None else _row(record)


def commands_of(conn: Connection, meter_id: str, *, limit: int = 100) -> list[QueuedCommand]:
    """A meter's commands, newest first (at most ``limit``)."""
    query = select(meter_commands).where(_c.meter_id == meter_id).order_by(_c.seq.desc()).limit(limit)
    return [_row(record) for record in conn.execute(query)]


def count_by_state(conn: Connection) -> dict[CommandState, int]:
    rows = conn.execute(select(_c.state, func.count()).group_by(_c.state))
    return {CommandState(state): int(count) for state, count in rows}


def enqueue(
    conn: Connection,
    meter_id: str,
    command: MeterCommand,
    *,
    requested_by: str,
    reason: str,
    now: dt.datetime,
    priority: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Enqueued | Problem:
    """Queue ``command`` for ``meter_id``, idempotently by its command id.

    A second enqueue with the same id returns the first row and writes nothing (also when two transactions
    race: the loser's unique violation is caught in a savepoint). The same id with a different command is a
    ``Problem``: an idempotency key names one command only.
    """
    priority = DEFAULT_PRIORITY[command.kind] if priority is None else priority
    problem = check_command(
        meter_id,
        command,
        requested_by=requested_by,
        reason=reason,
        now=now,
        priority=priority,
        max_attempts=max_attempts,
    )
    if problem is not None:
        return problem
    existing = get(conn, command.command_id)
    if existing is not None:
        return _replay(existing, meter_id, command)
    values = {
        "id": command.command_id,
        "meter_id": meter_id,
        "kind": command.kind.value,
        "parameters": encode_parameters(command),
        "priority": priority,
        "state": CommandState.PENDING.value,
        "attempts": 0,
        "max_attempts": max_attempts,
        "next_attempt_at": now,
        "valid_until": command.valid_until,
        "created_at": now,
        "updated_at": now,
        "requested_by": requested_by.strip(),
        "reason": _clip(reason.strip()),
        "version": 0,
    }
    try:
        with conn.begin_nested():
            inserted = conn.execute(insert(meter_commands).values(**values)).inserted_primary_key
    except IntegrityError:
        existing = get(conn, command.command_id)
        if existing is None:
            raise  # not the idempotency key: a missing meter, say; the caller's bug
        return _replay(existing, meter_id, command)
    assert inserted is not None
    seq = int(inserted[0])
    superseded = _supersede(conn, meter_id, command, seq, now)
    stored = get(conn, command.command_id)
    assert stored is not None and stored.seq == seq
    return Enqueued(stored, created=True, superseded=superseded)


def _replay(existing: QueuedCommand, meter_id: str, command: MeterCommand) -> Enqueued | Problem:
    same = (
        existing.meter_id == meter_id
        and existing.command.kind is command.kind
        and existing.command.valid_until == command.valid_until
        and encode_parameters(existing.command) == encode_parameters(command)
    )
    if not same:
        return Problem(
            "command_id",
            f"{command.command_id} is already used by a different command "
            f"({existing.command.kind.value} for meter {existing.meter_id})",
        )
    return Enqueued(existing, created=False)


def _supersede(conn: Connection, meter_id: str, command: MeterCommand, seq: int, now: dt.datetime) -> tuple[str, ...]:
    kinds = SUPERSEDES.get(command.kind)
    if not kinds:
        return ()
    older = and_(
        _c.meter_id == meter_id,
        _c.seq < seq,
        _c.state == CommandState.PENDING.value,
        _c.kind.in_([kind.value for kind in kinds]),
    )
    ids = tuple(str(i) for i in conn.execute(select(_c.id).where(older).order_by(_c.seq)).scalars())
    if ids:
        conn.execute(
            update(meter_commands)
            .where(older, _c.id.in_(ids))
            .values(
                state=CommandState.CANCELLED.value,
                last_error=f"superseded by {command.command_id}",
                updated_at=now,
                version=_c.version + 1,
            )
        )
    return ids


def cancel(conn: Connection, command_id: str, *, reason: str, now: dt.datetime) -> QueuedCommand | Problem:
    """Cancel a pending command. One already sent cannot be called back: it runs to a verified outcome."""
    if not reason.strip():
        return Problem("reason", "why must be given: cancelling is audited")
    result = conn.execute(
        update(meter_commands)
        .where(_c.id == command_id, _c.state == CommandState.PENDING.value)
        .values(
            state=CommandState.CANCELLED.value,
            last_error=_clip(f"cancelled: {reason.strip()}"),
            updated_at=now,
            version=_c.version + 1,
        )
    )
    row = get(conn, command_id)
    if row is None:
        return Problem("command_id", f"no command {command_id!r}")
    if result.rowcount != 1:
        return Problem("command_id", f"{command_id} is {row.state.value}; only a pending command can be cancelled")
    return row


def expire_due(conn: Connection, now: dt.datetime, *, limit: int = 10_000) -> int:
    """Pending commands whose ``valid_until`` has passed become ``expired`` (never sent, so never applied)."""
    due = (
        select(_c.seq)
        .where(_c.state == CommandState.PENDING.value, _c.valid_until <= now)
        .order_by(_c.valid_until)
        .limit(limit)
    )
    seqs = list(conn.execute(due).scalars())
    if not seqs:
        return 0
    result = conn.execute(
        update(meter_commands)
        .where(_c.seq.in_(seqs), _c.state == CommandState.PENDING.value)
        .values(
            state=CommandState.EXPIRED.value,
            last_error="valid_until passed before it could be sent",
            updated_at=now,
            version=_c.version + 1,
        )
    )
    return int(result.rowcount)


def _blocked(candidate_seq: Any, candidate_meter: Any, candidate_pending: Any, priority: Any) -> Any:
    """Another open command of the meter is in flight, or (for a pending candidate) ranks before it.

    The arguments are the candidate's columns (a correlated query) or its values (a guarded UPDATE).
    """
    other = meter_commands.alias("other")
    o = other.c
    ranks_before = or_(o.priority > priority, and_(o.priority == priority, o.seq < candidate_seq))
    if isinstance(candidate_pending, bool):
        blocking = or_(o.state.in_(IN_FLIGHT), ranks_before) if candidate_pending else o.state.in_(IN_FLIGHT)
    else:
        blocking = or_(o.state.in_(IN_FLIGHT), and_(candidate_pending, ranks_before))
    return exists(
        select(literal(1))
        .select_from(other)
        .where(o.meter_id == candidate_meter, o.seq != candidate_seq, o.state.in_(OPEN_STATES), blocking)
    )


def due_heads(conn: Connection, now: dt.datetime, *, limit: int) -> list[QueuedCommand]:
    """The due command at the head of each meter's queue: at most one per meter, most urgent first."""
    query = (
        select(meter_commands)
        .where(
            _c.state.in_(OPEN_STATES),
            _c.next_attempt_at <= now,
            ~_blocked(_c.seq, _c.meter_id, _c.state == CommandState.PENDING.value, _c.priority),
        )
        .order_by(_c.priority.desc(), _c.next_attempt_at, _c.seq)
        .limit(limit)
    )
    return [_row(record) for record in conn.execute(query)]


MAX_REACHABLE_LINKS = 5_000
"""Bound on the link ids one ``put_off_heads`` query names (a head-end's DTU sessions)."""


def put_off_heads(conn: Connection, now: dt.datetime, link_ids: Sequence[str], *, limit: int) -> list[QueuedCommand]:
    """Never-tried pending commands of meters behind ``link_ids`` that are not due only because a dispatcher
    that could not reach them put them off (``defer``): with several head-ends, a DTU is online at one of them,
    and that one takes its meters' commands at once instead of after the others' offline re-checks."""
    from powergate.store.tables_headend import meter_endpoints

    if not link_ids:
        return []
    behind = select(meter_endpoints.c.meter_id).where(meter_endpoints.c.link_id.in_(list(link_ids)))
    query = (
        select(meter_commands)
        .where(
            _c.state == CommandState.PENDING.value,
            _c.attempts == 0,
            _c.claimed_by.is_(None),
            _c.next_attempt_at > now,
            _c.meter_id.in_(behind),
            ~_blocked(_c.seq, _c.meter_id, True, _c.priority),
        )
        .order_by(_c.priority.desc(), _c.seq)
        .limit(limit)
    )
    return [_row(record) for record in conn.execute(query)]


def defer(conn: Connection, seqs: Sequence[int], until: dt.datetime, now: dt.datetime) -> None:
    """Look at these (offline meters' commands) again at ``until``; a row claimed meanwhile is left alone."""
    if seqs:
        conn.execute(
            update(meter_commands)
            .where(_c.seq.in_(list(seqs)), _c.state.in_(OPEN_STATES), _c.next_attempt_at <= now)
            .values(next_attempt_at=until)
        )


def lock_meters(conn: Connection, meter_ids: Iterable[str]) -> set[str]:
    """PostgreSQL: lock these meters for this transaction, skipping any another dispatcher holds."""
    ids = sorted(set(meter_ids))
    if conn.dialect.name != "postgresql" or not ids:
        return set(ids)  # SQLite: BEGIN IMMEDIATE already serialises every claim transaction
    query = select(meters.c.id).where(meters.c.id.in_(ids)).order_by(meters.c.id).with_for_update(skip_locked=True)
    return {str(meter_id) for meter_id in conn.execute(query).scalars()}


def write(
    conn: Connection,
    row: QueuedCommand,
    transition: Transition,
    now: dt.datetime,
    *,
    holder: str | None,
    lease_until: dt.datetime | None = None,
    guard_head: bool = False,
) -> QueuedCommand | None:
    """Apply ``transition`` if the row is still as we read it (same ``version``); ``None`` if it is not.

    ``holder`` keeps the claim (with ``next_attempt_at`` = ``lease_until``) while the dispatcher works on;
    ``guard_head`` re-checks, in the same statement, that no other command of the meter went in flight.
    """
    keep = transition.state in OPEN and holder is not None
    next_at = lease_until if keep and lease_until is not None else transition.next_attempt_at
    claimed_by = holder if keep else None
    values = {
        "state": transition.state.value,
        "attempts": transition.attempts,
        "next_attempt_at": next_at,
        "last_error": transition.last_error,
        "result": transition.result,
        "claimed_by": claimed_by,
        "updated_at": now,
        "version": row.version + 1,
    }
    statement = update(meter_commands).where(_c.seq == row.seq, _c.version == row.version)
    if guard_head:
        statement = statement.where(~_blocked(row.seq, row.meter_id, row.state is CommandState.PENDING, row.priority))
    if conn.execute(statement.values(**values)).rowcount != 1:
        return None
    return dataclasses.replace(
        row,
        state=transition.state,
        attempts=transition.attempts,
        next_attempt_at=next_at,
        last_error=transition.last_error,
        result=transition.result,
        claimed_by=claimed_by,
        updated_at=now,
        version=row.version + 1,
    )


def recover(conn: Connection, holder: str, now: dt.datetime) -> int:
    """After a restart: this dispatcher's own claims are due at once (their holder is gone; no lease to wait)."""
    result = conn.execute(
        update(meter_commands)
        .where(_c.claimed_by == holder, _c.state.in_(OPEN_STATES))
        .values(claimed_by=None, next_attempt_at=now, version=_c.version + 1)
    )
    return int(result.rowcount)


# -- the dispatcher -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    poll_s: float = 1.0
    """How often the queue is looked at when nobody calls ``wake()``."""
    batch: int = 500
    """Bound on commands claimed in one transaction."""
    max_in_flight: int = 1_000
    """Bound on commands being worked on at once (each holds one meter)."""
    stop_grace_s: float = 10.0
    """On stop, how long in-flight work may finish before it is cancelled (the claims survive)."""
    retry: RetryPolicy = RetryPolicy()

    def __post_init__(self) -> None:
        assert self.poll_s > 0 and 0 < self.batch <= 10_000 and 0 < self.max_in_flight <= 100_000


@dataclass(slots=True)
class DispatchStats:
    claimed: int = 0
    sends: int = 0
    reads: int = 0
    verified: int = 0
    failed: int = 0
    expired: int = 0
    deferred: int = 0
    lost_claims: int = 0
    """Transitions refused because the row changed under us (our lease ran out and another took over)."""


@dataclass(frozen=True, slots=True)
class _Claim:
    row: QueuedCommand
    step: Step
    endpoint: MeterEndpoint


class Dispatcher:
    """Claims due commands, sends them through a ``MeterLink``, verifies them, records every step.

    ``name`` identifies this dispatcher's claims: two live dispatchers need different names; a restarted one
    keeps its name, so it takes its claims back at once (``recover``) instead of waiting for their leases.
    """

    def __init__(
        self,
        engine: Engine,
        link: MeterLink,
        endpoints: EndpointLookup,
        *,
        name: str,
        clock: Clock,
        options: DispatchOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        assert 0 < len(name) <= 64, name
        self.reachable_links: Callable[[], Iterable[str]] | None = None
        """Ids of the links (DTUs) this dispatcher reaches now; set by a head-end that shares meters with others."""
        self.engine = engine
        self.link = link
        self.endpoints = endpoints
        self.name = name
        self.clock = clock
        self.options = options or DispatchOptions()
        self.policy = self.options.retry
        self.rng = rng or random.Random()
        self.stats = DispatchStats()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovered = False

    def wake(self) -> None:
        """Look at the queue now: a command was enqueued, or a meter came back online."""
        self._wake.set()

    async def recover(self) -> int:
        self._recovered = True
        return await self._db(lambda conn: recover(conn, self.name, self.clock()))

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; in-flight work then gets ``stop_grace_s`` to finish."""
        await self.recover()
        try:
            while not stop.is_set():
                claimed, asked = await self._start_due()
                if asked and claimed == asked:
                    await asyncio.sleep(0)  # a full batch: more may be due at once, look again before waiting
                    continue
                await self._wait(stop)
        finally:
            await self._finish()

    async def run_once(self) -> int:
        """One look at the queue, and every claimed command worked to its next rest; returns the claims."""
        if not self._recovered:
            await self.recover()
        claims = await self._claim(self.options.batch)
        await asyncio.gather(*(self._work(claim) for claim in claims))
        return len(claims)

    async def _start_due(self) -> tuple[int, int]:
        """Claim and start what is due; returns (claimed, asked for)."""
        free = self.options.max_in_flight - len(self._tasks)
        if free <= 0:
            return 0, 0
        asked = min(free, self.options.batch)
        claims = await self._claim(asked)
        for claim in claims:
            task = asyncio.create_task(self._work(claim), name=f"command {claim.row.command_id}")
            self._tasks.add(task)
            task.add_done_callback(self._done)
        return len(claims), asked

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("command work failed", exc_info=task.exception())
        self._wake.set()  # a meter's queue moved on: its next command may be due

    async def _wait(self, stop: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waits, timeout=self.options.poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
            self._wake.clear()

    async def _finish(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.options.stop_grace_s)
        for task in pending:
            task.cancel()  # its claim stays in the database; recover() or the lease hands it on
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)

    # -- claiming -------------------------------------------------------------------------------------------

    async def _claim(self, limit: int) -> list[_Claim]:
        now = self.clock()
        links = sorted(self.reachable_links())[:MAX_REACHABLE_LINKS] if self.reachable_links is not None else []

        def look(conn: Connection) -> tuple[int, list[QueuedCommand]]:
            expired = expire_due(conn, now)
            due = due_heads(conn, now, limit=limit)
            seqs = {row.seq for row in due}
            put_off = [row for row in put_off_heads(conn, now, links, limit=limit) if row.seq not in seqs]
            return expired, (due + put_off)[:limit]

        expired, candidates = await self._db(look)
        self.stats.expired += expired
        ready: list[tuple[QueuedCommand, MeterEndpoint]] = []
        offline: list[int] = []
        for row in candidates:
            endpoint = self.endpoints(row.meter_id)
            if endpoint is not None and self.link.online(endpoint):
                ready.append((row, endpoint))
            else:
                offline.append(row.seq)
        self.stats.deferred += len(offline)
        claims, settled = await self._db(lambda conn: self._take(conn, ready, offline))
        self.stats.claimed += len(claims)
        for state in settled:
            self._count_terminal(state)
        return claims

    def _take(
        self, conn: Connection, ready: Sequence[tuple[QueuedCommand, MeterEndpoint]], offline: Sequence[int]
    ) -> tuple[list[_Claim], list[CommandState | None]]:
        """Claim the ready rows; also returns the states of rows settled at claim time (None: lost)."""
        now = self.clock()
        # jittered, so two head-ends polling at the same pace do not lock into the same order for ever
        recheck_s = self.policy.offline_recheck_s * (1 - 0.5 * self.rng.random())
        defer(conn, offline, now + dt.timedelta(seconds=recheck_s), now)
        locked = lock_meters(conn, (row.meter_id for row, _ in ready))
        lease_until = now + dt.timedelta(seconds=self.policy.lease_s)
        claims: list[_Claim] = []
        settled: list[CommandState | None] = []
        for row, endpoint in ready:
            if row.meter_id not in locked:
                continue  # another dispatcher is claiming for this meter right now
            transition = plan_claim(row, now)
            written = write(conn, row, transition, now, holder=self.name, lease_until=lease_until, guard_head=True)
            if written is None or transition.then is None:
                settled.append(transition.state if written is not None else None)
                continue
            claims.append(_Claim(written, transition.then, endpoint))
        return claims, settled

    # -- working one command --------------------------------------------------------------------------------

    async def _work(self, claim: _Claim) -> None:
        row: QueuedCommand | None = claim.row
        step: Step | None = claim.step
        for _ in range(MAX_STEPS_PER_CLAIM):
            if row is None or step is None:
                return
            transition = await (self._send(row, claim.endpoint) if step is Step.SEND else self._verify(row, claim))
            row = await self._record(row, transition)
            step = transition.then
        if row is not None and row.claimed_by is not None:
            # a bound, not an expected path: release the claim so the command is looked at again
            await self._record(row, Transition(row.state, row.attempts, self.clock(), row.last_error, row.result))

    async def _send(self, row: QueuedCommand, endpoint: MeterEndpoint) -> Transition:
        self.stats.sends += 1
        outcome = await self.link.execute(endpoint, row.command)
        if isinstance(outcome, LinkError) and outcome.kind is FailureKind.REJECTED and row.command.kind in READ_BACK:
            outcome = await self._confirm_rejection(row, endpoint, outcome)
        return after_send(row, outcome, self.clock(), self.policy, self.rng)

    async def _confirm_rejection(
        self, row: QueuedCommand, endpoint: MeterEndpoint, rejection: LinkError
    ) -> CommandResult | LinkError:
        """A meter refuses a recharge whose count it already has (or passed): that is success, not failure."""
        if row.command.kind is not CommandKind.RECHARGE:
            return rejection
        self.stats.reads += 1
        read = await self.link.read(endpoint, READ_BACK[row.command.kind])
        if isinstance(read, MeterSnapshot) and applied(row.command, read):
            return CommandResult(
                ok=True, already_applied=True, reason=f"{rejection.reason}; {_evidence(row.command, read)}"
            )
        return rejection

    async def _verify(self, row: QueuedCommand, claim: _Claim) -> Transition:
        self.stats.reads += 1
        read = await self.link.read(claim.endpoint, READ_BACK[row.command.kind])
        return after_read(row, read, self.clock(), self.policy, self.rng)

    async def _record(self, row: QueuedCommand, transition: Transition) -> QueuedCommand | None:
        now = self.clock()
        holder = self.name if transition.then is not None else None
        lease_until = now + dt.timedelta(seconds=self.policy.lease_s)
        written = await self._db(lambda conn: write(conn, row, transition, now, holder=holder, lease_until=lease_until))
        if written is None:
            self.stats.lost_claims += 1
            log.warning("command %s changed under dispatcher %s; left to its new holder", row.command_id, self.name)
            return None
        if transition.then is None:
            self._count_terminal(transition.state)
        return written

    def _count_terminal(self, state: CommandState | None) -> None:
        if state is CommandState.VERIFIED:
            self.stats.verified += 1
        elif state is CommandState.FAILED:
            self.stats.failed += 1
        elif state is CommandState.EXPIRED:
            self.stats.expired += 1
        elif state is None:
            self.stats.lost_claims += 1

    async def _db(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction in a worker thread: the event loop never waits on the database."""

        def run() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return await asyncio.to_thread(run)
