"""Meter-side billing: recharges pushed to meters with a purchase count, and the meters' balances mirrored.

In meter-side billing (表端计费) the meter holds the balance and trips itself. The platform still keeps the
money in its ledger (a payment credits the tenant's wallet through ``services.payments.settle``, and ingest
deducts rated readings from it), and it must get every credit onto the meter exactly once.

Invariants kept here:

- A purchase count is allocated in the same transaction as the ledger credit it carries (``push_recharge`` runs
  inside that transaction and checks the credit is there), so a count exists if and only if its money does.
- Counts are allocated in order without gaps (``next_purchase_count`` is bumped by one conditional UPDATE), and
  the meter applies each count once and in order: a retried push, or a replayed payment, is never a second credit.
- A replayed payment enqueues nothing new: the command id is derived from the payment's ledger key, and the
  existing command (with its original count) is returned.
- ``mirror`` stores what meters report and raises a reconciliation alarm, once per (day, meter, kind), when the
  meter's purchase count or remaining amount disagrees with the platform. It never changes money: a mismatch
  is for a person to look at.

"The platform's view" of a meter-side meter's remaining amount (docs/reconciliation.md): the wallet's ledger
balance (credits minus the deductions rated from the meter's own energy registers at its price) minus the
recharges allocated but not yet on the meter. The two differ by the energy used since the last rated reading and
by the meter's rounding to the fen, so they are compared within ``tolerance_micros``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from powergate.headend import commands as queue
from powergate.headend.model import CommandKind, MeterCommand, MeterSnapshot
from powergate.store.audit import record_audit
from powergate.store.tables import ledger_accounts, ledger_entries, ledger_postings, meters
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_meterside import MAX_MESSAGE_CHARS, meter_side_state, reconciliation_alarms

RECHARGE_VALID_FOR = dt.timedelta(days=7)
"""How long a pushed recharge may still be delivered: a meter offline for a week still gets its money."""
DEFAULT_TOLERANCE_MICROS = 1_000_000
"""1 yuan: about an hour of a household's use between the last rated reading and the prepaid read, plus the
meter's rounding to the fen."""
MAX_PENDING_RECHARGES = 1_000
"""Bound on the open recharges looked at per meter when computing the platform's view."""
MAX_MIRROR_BATCH = 10_000
ENROLLED_CHUNK = 1_000
"""Meter ids per ``IN (...)`` when looking up which meters of a batch are in meter-side billing."""
CANCELLED_STATES = ("failed", "expired", "cancelled")


@dataclass(frozen=True, slots=True)
class Problem:
    """A push that cannot be made, naming the field at fault."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class Pushed:
    meter_id: str
    command_id: str
    purchase_count: int
    amount_micros: int
    created: bool
    """False when this payment had already been pushed: the original command is returned, nothing is written."""


@dataclass(frozen=True, slots=True)
class Alarm:
    day: dt.date
    subject: str
    kind: str
    expected: int | None
    actual: int | None
    message: str


def command_id_for(payment_key: str) -> str:
    """The recharge command's id for a payment: the payment's ledger key, so a replay finds the same command."""
    return f"meterside:{payment_key}"[: queue.MAX_COMMAND_ID]


def enrol(conn: Connection, meter_id: str, purchase_count: int, now: dt.datetime) -> None:
    """Put ``meter_id`` into meter-side billing; ``purchase_count`` is the meter's own count, read from it."""
    assert purchase_count >= 0, purchase_count
    conn.execute(
        insert(meter_side_state).values(
            meter_id=meter_id,
            next_purchase_count=purchase_count + 1,
            last_pushed_purchase_count=purchase_count,
            mirrored_purchase_count=purchase_count,
            mirrored_at=now,
            enrolled_at=now,
        )
    )


def push_recharge(
    conn: Connection,
    meter_id: str,
    amount_micros: int,
    now: dt.datetime,
    requested_by: str,
    reason: str,
    *,
    payment_key: str,
) -> Pushed | Problem:
    """Queue a recharge of ``amount_micros`` for ``meter_id`` with the next purchase count.

    Call it in the transaction that posted the ledger credit ``payment_key`` (``settle``'s recharge entry): the
    entry must exist and credit this meter's wallet with exactly ``amount_micros``. A second call for the same
    payment returns the first push and writes nothing.
    """
    command_id = command_id_for(payment_key)
    existing = queue.get(conn, command_id)
    if existing is not None:
        return _replayed(existing, meter_id, amount_micros)
    problem = _check_credit(conn, meter_id, amount_micros, payment_key)
    if problem is not None:
        return problem
    count = _allocate(conn, meter_id)
    if count is None:
        return Problem("meter_id", f"meter {meter_id} is not in meter-side billing (enrol it first)")
    command = MeterCommand(
        command_id,
        CommandKind.RECHARGE,
        now + RECHARGE_VALID_FOR,
        amount_micros=amount_micros,
        purchase_count=count,
    )
    result = queue.enqueue(conn, meter_id, command, requested_by=requested_by, reason=reason, now=now)
    # The count was allocated in this transaction: a refusal here is a bug, and the caller's rollback undoes both.
    assert isinstance(result, queue.Enqueued) and result.created, result
    detail = {"purchase_count": count, "amount_micros": amount_micros, "payment_key": payment_key}
    record_audit(conn, requested_by, "meterside.push_recharge", f"meter:{meter_id}", reason, detail, now)
    return Pushed(meter_id, command_id, count, amount_micros, created=True)


def after_credit(
    conn: Connection, wallet: str, amount_micros: int, payment_key: str, now: dt.datetime, requested_by: str
) -> Pushed | Problem | None:
    """After a payment credited ``wallet`` (same transaction): push it to the wallet's meter-side meter.

    ``None`` when the wallet funds no meter in meter-side billing (platform-side billing: nothing to push). A
    wallet funding several meter-side meters cannot say which meter holds the money: that is refused as a
    problem, and the credit stays on the platform until an operator pushes it.
    """
    enrolled = (
        conn.execute(
            select(meters.c.id)
            .join(ledger_accounts, ledger_accounts.c.id == meters.c.wallet_account_id)
            .join(meter_side_state, meter_side_state.c.meter_id == meters.c.id)
            .where(ledger_accounts.c.code == wallet)
            .order_by(meters.c.id)
        )
        .scalars()
        .all()
    )
    if not enrolled:
        return None
    if len(enrolled) > 1:
        return Problem("wallet", f"{wallet} funds {len(enrolled)} meter-side meters; push the recharge to one by hand")
    return push_recharge(
        conn, enrolled[0], amount_micros, now, requested_by, f"payment {payment_key}", payment_key=payment_key
    )


def _replayed(existing: queue.QueuedCommand, meter_id: str, amount_micros: int) -> Pushed | Problem:
    command = existing.command
    if existing.meter_id != meter_id or command.amount_micros != amount_micros:
        return Problem(
            "payment_key",
            f"payment already pushed as {command.amount_micros} micros to meter {existing.meter_id}, "
            f"not {amount_micros} to {meter_id}",
        )
    assert command.purchase_count is not None
    return Pushed(meter_id, command.command_id, command.purchase_count, amount_micros, created=False)


def _check_credit(conn: Connection, meter_id: str, amount_micros: int, payment_key: str) -> Problem | None:
    if amount_micros <= 0:
        return Problem("amount_micros", f"must be positive, got {amount_micros}")
    wallet_id = conn.execute(select(meters.c.wallet_account_id).where(meters.c.id == meter_id)).scalar()
    if wallet_id is None:
        return Problem("meter_id", f"no meter {meter_id!r}")
    credited = conn.execute(
        select(ledger_entries.c.kind, ledger_postings.c.amount_micros)
        .join(ledger_postings, ledger_postings.c.entry_id == ledger_entries.c.id)
        .where(ledger_entries.c.idempotency_key == payment_key, ledger_postings.c.account_id == wallet_id)
    ).first()
    if credited is None:
        return Problem("payment_key", f"no ledger credit {payment_key!r} to meter {meter_id}'s wallet")
    if credited[0] != "recharge" or int(credited[1]) != amount_micros:
        return Problem(
            "amount_micros",
            f"ledger entry {payment_key!r} is a {credited[0]} of {int(credited[1])} micros, not a recharge of "
            f"{amount_micros}",
        )
    return None


def _allocate(conn: Connection, meter_id: str) -> int | None:
    """The next purchase count of ``meter_id``, taken under the row's write lock (the UPDATE)."""
    state = meter_side_state.c
    bumped = conn.execute(
        update(meter_side_state)
        .where(state.meter_id == meter_id)
        .values(next_purchase_count=state.next_purchase_count + 1)
    )
    if bumped.rowcount != 1:
        return None
    after = conn.execute(select(state.next_purchase_count).where(state.meter_id == meter_id)).scalar_one()
    return int(after) - 1


# -- mirroring what meters report ------------------------------------------------------------------------------


def mirror(
    conn: Connection,
    snapshots: Iterable[MeterSnapshot],
    now: dt.datetime,
    *,
    tolerance_micros: int = DEFAULT_TOLERANCE_MICROS,
) -> list[Alarm]:
    """Store the prepaid values of meter-side meters; returns the alarms newly raised.

    Snapshots of meters not in meter-side billing, and snapshots without a purchase count, are ignored. Which
    meters are enrolled is looked up once for the whole batch (``enrolled``): a fleet of platform-billed meters
    that report a purchase count costs one query per batch, not one per snapshot.
    """
    assert tolerance_micros >= 0
    prepaid = [s for s in snapshots if s.purchase_count is not None]
    assert len(prepaid) <= MAX_MIRROR_BATCH, len(prepaid)
    if not prepaid:
        return []
    rows = enrolled(conn, {s.meter_id for s in prepaid})
    raised: list[Alarm] = []
    for snapshot in prepaid:
        row = rows.get(snapshot.meter_id)
        if row is not None:
            raised.extend(_mirror_one(conn, snapshot, row, now, tolerance_micros))
    return raised


@dataclass(slots=True)
class _Enrolled:
    """A meter's meter-side state as a batch sees it (``_mirror_one`` advances ``seen``: a meter may report
    twice in one batch)."""

    allocated: int
    """The last purchase count the platform allocated (``next_purchase_count - 1``)."""
    seen: int
    """The highest count the meter has shown (``last_pushed_purchase_count``)."""
    timezone: str


def enrolled(conn: Connection, meter_ids: Iterable[str]) -> dict[str, _Enrolled]:
    """The meter-side state of those of ``meter_ids`` that are in meter-side billing (one query per chunk)."""
    state = meter_side_state.c
    ids = sorted(set(meter_ids))
    found: dict[str, _Enrolled] = {}
    for start in range(0, len(ids), ENROLLED_CHUNK):
        query = (
            select(state.meter_id, state.next_purchase_count, state.last_pushed_purchase_count, meters.c.timezone)
            .join(meters, meters.c.id == state.meter_id)
            .where(state.meter_id.in_(ids[start : start + ENROLLED_CHUNK]))
        )
        for meter_id, next_count, seen, timezone in conn.execute(query):
            found[str(meter_id)] = _Enrolled(int(next_count) - 1, int(seen), str(timezone))
    return found


def _mirror_one(
    conn: Connection, snapshot: MeterSnapshot, row: _Enrolled, now: dt.datetime, tolerance_micros: int
) -> list[Alarm]:
    state = meter_side_state.c
    count = snapshot.purchase_count
    assert count is not None
    allocated, seen = row.allocated, row.seen
    row.seen = max(seen, min(count, allocated))
    conn.execute(
        update(meter_side_state)
        .where(state.meter_id == snapshot.meter_id)
        .values(
            mirrored_purchase_count=count,
            mirrored_remaining_micros=snapshot.remaining_micros,
            mirrored_overdraft_micros=snapshot.overdraft_micros,
            mirrored_at=snapshot.at,
            last_pushed_purchase_count=row.seen,
        )
    )
    day = snapshot.at.astimezone(ZoneInfo(row.timezone)).date()
    # A count out of line makes the amount comparison meaningless: report the cause, not its echo.
    alarm = _count_alarm(day, snapshot.meter_id, count, allocated, seen)
    if alarm is None and snapshot.remaining_micros is not None:
        alarm = _amount_alarm(conn, day, snapshot, tolerance_micros)
    return [alarm] if alarm is not None and raise_alarm(conn, alarm, now) else []


def _count_alarm(day: dt.date, meter_id: str, count: int, allocated: int, seen: int) -> Alarm | None:
    subject = f"meter:{meter_id}"
    if count > allocated:
        message = f"purchase count {count} on the meter, but the platform allocated only up to {allocated}"
        return Alarm(day, subject, "purchase_count_ahead", allocated, count, message)
    if count < seen:
        message = f"purchase count {count} on the meter, but it had shown {seen}: a recharge was lost"
        return Alarm(day, subject, "purchase_count_behind", seen, count, message)
    return None


def platform_view_micros(conn: Connection, meter_id: str, meter_purchase_count: int) -> int:
    """What the meter should show as remaining (negative: overdrawn): the wallet's balance less the recharges
    allocated after ``meter_purchase_count`` that have not reached the meter."""
    wallet_balance = conn.execute(
        select(ledger_accounts.c.balance_micros)
        .join(meters, meters.c.wallet_account_id == ledger_accounts.c.id)
        .where(meters.c.id == meter_id)
    ).scalar_one()
    return int(wallet_balance) - sum(
        amount for count, amount in _open_recharges(conn, meter_id) if count > meter_purchase_count
    )


def _open_recharges(conn: Connection, meter_id: str) -> list[tuple[int, int]]:
    """(purchase count, amount) of the meter's recharges that were not abandoned, newest first."""
    c = meter_commands.c
    rows = conn.execute(
        select(c.parameters)
        .where(c.meter_id == meter_id, c.kind == CommandKind.RECHARGE.value, c.state.not_in(CANCELLED_STATES))
        .order_by(c.seq.desc())
        .limit(MAX_PENDING_RECHARGES)
    )
    found = []
    for (parameters,) in rows:
        values = json.loads(parameters)
        found.append((int(values["purchase_count"]), int(values["amount_micros"])))
    return found


def _amount_alarm(conn: Connection, day: dt.date, snapshot: MeterSnapshot, tolerance_micros: int) -> Alarm | None:
    assert snapshot.remaining_micros is not None and snapshot.purchase_count is not None
    on_meter = snapshot.remaining_micros - (snapshot.overdraft_micros or 0)
    expected = platform_view_micros(conn, snapshot.meter_id, snapshot.purchase_count)
    if abs(on_meter - expected) <= tolerance_micros:
        return None
    message = (
        f"remaining amount {on_meter} micros on the meter, platform's view {expected} "
        f"(difference {on_meter - expected}, tolerance {tolerance_micros})"
    )
    return Alarm(day, f"meter:{snapshot.meter_id}", "remaining_amount", expected, on_meter, message)


def raise_alarm(conn: Connection, alarm: Alarm, now: dt.datetime) -> bool:
    """Record ``alarm`` once per (day, subject, kind); ``False`` if it was already raised."""
    values = {
        "day": alarm.day,
        "subject": alarm.subject,
        "kind": alarm.kind,
        "expected": alarm.expected,
        "actual": alarm.actual,
        "message": alarm.message[:MAX_MESSAGE_CHARS],
        "created_at": now,
    }
    try:
        with conn.begin_nested():
            conn.execute(insert(reconciliation_alarms).values(**values))
    except IntegrityError:
        return False
    return True


def alarms_of(conn: Connection, day: dt.date, *, limit: int = 10_000) -> list[Alarm]:
    a = reconciliation_alarms.c
    rows = conn.execute(
        select(a.day, a.subject, a.kind, a.expected, a.actual, a.message)
        .where(a.day == day)
        .order_by(a.id)
        .limit(limit)
    )
    return [Alarm(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


@dataclass(frozen=True, slots=True)
class MeterSideRow:
    meter_id: str
    next_purchase_count: int
    last_pushed_purchase_count: int
    mirrored_purchase_count: int | None
    mirrored_remaining_micros: int | None
    mirrored_overdraft_micros: int | None
    mirrored_at: dt.datetime | None


def states(conn: Connection, *, limit: int = 1_000_000) -> list[MeterSideRow]:
    s = meter_side_state.c
    rows = conn.execute(
        select(
            s.meter_id,
            s.next_purchase_count,
            s.last_pushed_purchase_count,
            s.mirrored_purchase_count,
            s.mirrored_remaining_micros,
            s.mirrored_overdraft_micros,
            s.mirrored_at,
        )
        .order_by(s.meter_id)
        .limit(limit)
    )
    return [MeterSideRow(r[0], int(r[1]), int(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


def count_enrolled(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(meter_side_state)).scalar_one())


Sink = Callable[[Sequence[MeterSnapshot]], Awaitable[None]]


class MirrorSink:
    """Wraps a head-end readings sink: snapshots go on to ``inner`` (ingest), then prepaid values are mirrored.

    For ``HeadendRuntime``'s readings callback; the database work runs in a worker thread.
    """

    def __init__(self, engine: Engine, inner: Sink, clock: Callable[[], dt.datetime]) -> None:
        self.engine = engine
        self.inner = inner
        self.clock = clock
        self.alarms_raised = 0

    async def __call__(self, batch: Sequence[MeterSnapshot]) -> None:
        await self.inner(batch)
        prepaid = [s for s in batch if s.purchase_count is not None]
        for start in range(0, len(prepaid), MAX_MIRROR_BATCH):
            chunk = prepaid[start : start + MAX_MIRROR_BATCH]
            self.alarms_raised += len(await asyncio.to_thread(self._write, chunk))

    def _write(self, chunk: Sequence[MeterSnapshot]) -> list[Alarm]:
        with self.engine.begin() as conn:
            return mirror(conn, chunk, self.clock())
