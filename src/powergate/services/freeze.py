"""Daily and monthly freeze, monthly settlement, keyed job runs and catch-up.

The daily freeze of a scope (a site, or every meter in a time zone until sites are wired everywhere) for a
site-local ``day`` writes one ``daily_freezes`` row per meter with readings: the registers at the cut (00:00
site-local after ``day``), the day's energy (registers at this cut minus the previous one) and cost (sum of the
rated amounts of the readings in the day), the cost split over the TOU bands, and the wallet balance at the cut.

Invariants:
- A (job, period) runs once across workers and restarts: the run is claimed by inserting its ``job_runs`` row
  (UNIQUE), owned for a lease that each batch renews; a run whose owner died is taken over after the lease.
  The rows are upserted, so a run taken over half-way simply writes them again.
- The register at the cut is exact when a stored reading (rated or skipped) sits exactly on it, which is what
  the head-end's daily frozen readings (``<meter>@frozen@<ts>``) are; otherwise it is interpolated between the
  readings either side, or the last reading before is used, and the row is flagged ``estimated``.
- Band costs add up exactly to the day's cost (largest remainder, ``split_largest_remainder``).
- The balance at the cut is the materialised balance minus the postings whose event is at or after the cut,
  read in the same snapshot (SQLite's write transaction; REPEATABLE READ on PostgreSQL).
- Bounded work: meters go in batches of ``batch_size`` (keyset on the meter id, one transaction each), catch-up
  goes back at most ``MAX_CATCH_UP_DAYS``.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from powergate.domain.billing import split_exact
from powergate.domain.tariff import Band, Tariff
from powergate.domain.tariff_files import load_tariff
from powergate.store.bulk import Bulk

JOB_DAILY = "daily_freeze"
JOB_MONTHLY = "monthly_freeze"
BATCH_METERS = 5_000
"""Meters per freeze transaction."""
MAX_BATCH_METERS = 50_000
LEASE = dt.timedelta(minutes=10)
"""How long a claimed run is its owner's without a heartbeat; each batch renews it."""
MAX_CATCH_UP_DAYS = 62
"""Catch-up goes back at most this far (meters keep 62 daily freezes)."""
BANDS = ("sharp", "peak", "flat", "valley")
FREEZE_COLUMNS = (
    *("day", "meter_id", "wallet_account_id", "frozen_at", "total_wh"),
    *(f"{b}_wh" for b in BANDS),
    "energy_wh",
    *(f"{b}_energy_wh" for b in BANDS),
    "cost_micros",
    *(f"{b}_cost_micros" for b in BANDS),
    *("balance_micros", "estimated", "created_at", "reading_id"),
)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- pure helpers ------------------------------------------------------------------------------------------


split_largest_remainder = split_exact
"""Kept under its old name: the band split of a day's cost."""


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    reading_id: str | None
    at: dt.datetime
    total_wh: int
    bands_wh: tuple[int, int, int, int] | None


@dataclass(frozen=True, slots=True)
class RegisterAtCut:
    reading_id: str | None
    total_wh: int
    bands_wh: tuple[int, int, int, int] | None
    estimated: bool


def register_at(before: RegisterPoint | None, after: RegisterPoint | None, cut: dt.datetime) -> RegisterAtCut | None:
    """The registers at ``cut`` from the readings either side of it (see the module docstring)."""
    if before is None:
        return None
    if before.at == cut:
        return RegisterAtCut(before.reading_id, before.total_wh, before.bands_wh, False)
    if after is None or after.total_wh < before.total_wh:
        # Nothing after yet, or a rollover / replacement in between: the last known state, flagged.
        return RegisterAtCut(before.reading_id, before.total_wh, before.bands_wh, True)
    span_us = _micros(after.at - before.at)
    part_us = _micros(cut - before.at)
    total = before.total_wh + (after.total_wh - before.total_wh) * part_us // span_us
    bands = None
    if before.bands_wh is not None and after.bands_wh is not None:
        bands = tuple(
            b + max(a - b, 0) * part_us // span_us for b, a in zip(before.bands_wh, after.bands_wh, strict=True)
        )
    return RegisterAtCut(None, total, bands, True)  # type: ignore[arg-type]


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def register_delta(start_wh: int, end_wh: int, register_max_wh: int) -> tuple[int, bool]:
    """Energy between two register values; a rollover past the register's maximum counts, a reset does not.

    Returns (energy, estimated): a decrease that is not a plausible rollover (a meter cleared or replaced) is
    no energy, flagged, because the true figure is unknown here (rating handles those with its own readings).
    """
    if end_wh >= start_wh:
        return end_wh - start_wh, False
    modulus = register_max_wh + 10  # registers count in 0.01 kWh; after the maximum comes 0
    wrapped = end_wh + modulus - start_wh
    if 0 <= wrapped < modulus // 2:
        return wrapped, False
    return 0, True


def band_prices(tariff: Tariff, local_start: dt.datetime) -> tuple[int, int, int, int]:
    """Price per band (micros per kWh) of the version in effect at the start of the day: the split's weights."""
    index = tariff.version_index_at(local_start.replace(tzinfo=None))
    version = tariff.versions[0 if index is None else index]
    if version.tou is not None:
        prices = tuple(version.tou.price_of(band) or 0 for band in Band)
        return prices  # type: ignore[return-value]
    flat = version.price_micros
    if flat is None and version.tiers is not None:
        flat = version.tiers.blocks[0].price_micros
    price = flat or 0
    return (price, price, price, price)


# --- scopes ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """The meters a freeze covers: those of a site (by open assignment at the cut) or of a time zone."""

    kind: str
    key: str
    zone: ZoneInfo

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.key}"

    def meters_clause(self) -> str:
        if self.kind == "timezone":
            return "m.timezone = :scope_key"
        return (
            "m.id IN (SELECT ma.meter_id FROM meter_assignments ma JOIN accounts ac ON ac.id = ma.account_id"
            " WHERE ac.site_id = CAST(:scope_key AS INTEGER) AND ma.valid_from < :cut"
            " AND (ma.valid_to IS NULL OR ma.valid_to >= :cut))"
        )


def scope_of(conn: Connection, site_or_zone: int | str) -> Scope:
    """A site id, or an IANA time zone name (e.g. ``Asia/Shanghai``)."""
    if isinstance(site_or_zone, int):
        zone = conn.execute(text("SELECT timezone FROM sites WHERE id = :id"), {"id": site_or_zone}).scalar()
        if zone is None:
            raise KeyError(f"site: no site {site_or_zone}")
        return Scope("site", str(site_or_zone), ZoneInfo(str(zone)))
    return Scope("timezone", site_or_zone, ZoneInfo(site_or_zone))


def local_midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    """00:00 site-local at the start of ``day``, in UTC."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)


# --- job runs ----------------------------------------------------------------------------------------------


class Claim(StrEnum):
    CLAIMED = "claimed"
    TAKEN_OVER = "taken_over"
    DONE = "done"
    RUNNING = "running"


class LeaseLost(Exception):
    """Another worker took the run over (our lease expired): stop without finishing it."""


def claim(engine: Engine, job: str, period: str, owner: str, now: dt.datetime, lease: dt.timedelta = LEASE) -> Claim:
    """Claim (job, period) by inserting its row; take over a run whose lease has expired."""
    params = {"job": job, "period": period, "owner": owner}
    try:
        with engine.begin() as conn:
            bulk = Bulk(conn)
            conn.execute(
                text(
                    "INSERT INTO job_runs (job, period, owner, started_at, lease_until, attempts)"
                    " VALUES (:job, :period, :owner, :now, :lease_until, 1)"
                ),
                {**params, "now": bulk.ts(now), "lease_until": bulk.ts(now + lease)},
            )
        return Claim.CLAIMED
    except IntegrityError:
        pass
    with engine.begin() as conn:
        bulk = Bulk(conn)
        finished = conn.execute(
            text("SELECT finished_at FROM job_runs WHERE job = :job AND period = :period"), params
        ).first()
        assert finished is not None, f"job run {job} {period} vanished"
        if finished[0] is not None:
            return Claim.DONE
        taken = conn.execute(
            text(
                "UPDATE job_runs SET owner = :owner, started_at = :now, lease_until = :lease_until,"
                " attempts = attempts + 1 WHERE job = :job AND period = :period AND finished_at IS NULL"
                " AND lease_until <= :now"
            ),
            {**params, "now": bulk.ts(now), "lease_until": bulk.ts(now + lease)},
        )
        return Claim.TAKEN_OVER if taken.rowcount == 1 else Claim.RUNNING


def finish_claim(conn: Connection, job: str, period: str, owner: str, now: dt.datetime) -> None:
    """Mark a claimed (job, period) done in the caller's transaction; ``LeaseLost`` if another owner took it."""
    _renew(conn, job, period, owner, now, finish=True)


def _renew(conn: Connection, job: str, period: str, owner: str, now: dt.datetime, *, finish: bool) -> None:
    bulk = Bulk(conn)
    finished = ", finished_at = :now" if finish else ""
    renewed = conn.execute(
        text(
            f"UPDATE job_runs SET lease_until = :lease_until{finished}"
            " WHERE job = :job AND period = :period AND owner = :owner AND finished_at IS NULL"
        ),
        {"job": job, "period": period, "owner": owner, "now": bulk.ts(now), "lease_until": bulk.ts(now + LEASE)},
    )
    if renewed.rowcount != 1:
        raise LeaseLost(f"{job} {period}: owned by another worker now")


# --- daily freeze ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FreezeRun:
    job: str
    period: str
    claim: Claim | None
    """None when the period has not ended yet (nothing was attempted)."""
    meters: int = 0
    estimated: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return self.claim in (Claim.CLAIMED, Claim.TAKEN_OVER)


def _pick(alias: str, cmp: str, order: str) -> str:
    return (
        f"LEFT JOIN readings {alias} ON {alias}.id = (SELECT r.id FROM readings r WHERE r.meter_id = m.id"
        f" AND r.at {cmp} AND r.status IN ('rated', 'skipped') ORDER BY r.at {order}, r.id {order} LIMIT 1)"
    )


_POINT = "{a}.id, {a}.at, {a}.total_wh, {a}.sharp_wh, {a}.peak_wh, {a}.flat_wh, {a}.valley_wh"


def _batch_sql(scope: Scope) -> str:
    points = ", ".join(_POINT.format(a=a) for a in ("eb", "ea", "sb", "sa"))
    previous = "p.total_wh, p.sharp_wh, p.peak_wh, p.flat_wh, p.valley_wh"
    return (
        "SELECT m.id, m.wallet_account_id, m.tariff_id, m.register_max_wh, w.balance_micros, "
        f"{points}, {previous}, "
        "(SELECT COALESCE(SUM(r.amount_micros), 0) FROM readings r WHERE r.meter_id = m.id"
        " AND r.status = 'rated' AND r.at > :start AND r.at <= :cut) "
        "FROM meters m JOIN ledger_accounts w ON w.id = m.wallet_account_id "
        f"{_pick('eb', '<= :cut', 'DESC')} {_pick('ea', '> :cut', 'ASC')} "
        f"{_pick('sb', '<= :start', 'DESC')} {_pick('sa', '> :start', 'ASC')} "
        "LEFT JOIN daily_freezes p ON p.meter_id = m.id AND p.day = :previous_day "
        f"WHERE {scope.meters_clause()} AND m.id > :after ORDER BY m.id LIMIT :limit"
    )


def _upsert_sql(table: str, columns: Sequence[str], keys: Sequence[str], mark: str) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


class _DayContext:
    """What every meter of one freeze shares: the cuts, the tariffs' band prices, the after-cut postings."""

    def __init__(self, scope: Scope, day: dt.date, now: dt.datetime) -> None:
        self.day = day
        self.start = local_midnight(day, scope.zone)
        self.cut = local_midnight(day + dt.timedelta(days=1), scope.zone)
        self.local_start = dt.datetime.combine(day, dt.time(0), tzinfo=scope.zone)
        self.now = now
        self.prices: dict[str, tuple[int, int, int, int]] = {}

    def prices_of(self, conn: Connection, tariff_id: str) -> tuple[int, int, int, int]:
        prices = self.prices.get(tariff_id)
        if prices is None:
            document = conn.execute(text("SELECT document FROM tariffs WHERE id = :id"), {"id": tariff_id}).scalar()
            assert document is not None, f"meter refers to missing tariff {tariff_id}"
            prices = self.prices[tariff_id] = band_prices(load_tariff(str(document)), self.local_start)
        return prices


def _point(bulk: Bulk, row: Sequence[Any], offset: int) -> RegisterPoint | None:
    if row[offset] is None:
        return None
    at = bulk.datetime_of(row[offset + 1])
    assert at is not None
    return RegisterPoint(row[offset], at, int(row[offset + 2]), _bands(row[offset + 3 : offset + 7]))


def _bands(values: Sequence[Any]) -> tuple[int, int, int, int] | None:
    if any(v is None for v in values):
        return None
    sharp, peak, flat, valley = (int(v) for v in values)
    return (sharp, peak, flat, valley)


def _freeze_row(
    conn: Connection, bulk: Bulk, ctx: _DayContext, row: Sequence[Any], after_cut: dict[int, int]
) -> tuple[Any, ...] | None:
    meter_id, wallet_id, tariff_id, register_max_wh, balance = row[0], int(row[1]), row[2], int(row[3]), int(row[4])
    end = register_at(_point(bulk, row, 5), _point(bulk, row, 12), ctx.cut)
    if end is None:
        return None
    start: RegisterAtCut | None
    if row[33] is not None:  # yesterday's freeze: days telescope
        start = RegisterAtCut(None, int(row[33]), _bands(row[34:38]), False)
    else:
        first = _point(bulk, row, 26)
        start = register_at(_point(bulk, row, 19), first, ctx.start)
        if start is None and first is not None:  # no reading before the day: the first one is the baseline
            start = RegisterAtCut(first.reading_id, first.total_wh, first.bands_wh, False)
    assert start is not None
    energy, energy_estimated = register_delta(start.total_wh, end.total_wh, register_max_wh)
    cost = int(row[38])
    band_energy: list[int | None] = [None] * 4
    band_cost: list[int | None] = [None] * 4
    if start.bands_wh is not None and end.bands_wh is not None:
        band_energy = [
            register_delta(s, e, register_max_wh)[0] for s, e in zip(start.bands_wh, end.bands_wh, strict=True)
        ]
        prices = ctx.prices_of(conn, tariff_id)
        weights = [e * p for e, p in zip(band_energy, prices, strict=True)]  # type: ignore[operator]
        if sum(weights) == 0:
            weights = [e or 0 for e in band_energy]
        if sum(weights) == 0:
            weights = [0, 0, 1, 0]  # cost without band energy (a tier or rounding carry): booked as flat
        band_cost = list(split_largest_remainder(cost, weights))
    bands_end = end.bands_wh or (None, None, None, None)
    estimated = end.estimated or start.estimated or energy_estimated
    return (
        ctx.day.isoformat() if bulk.sqlite else ctx.day,
        meter_id,
        wallet_id,
        bulk.ts(ctx.cut),
        end.total_wh,
        *bands_end,
        energy,
        *band_energy,
        cost,
        *band_cost,
        balance - after_cut.get(wallet_id, 0),
        estimated,
        bulk.ts(ctx.now),
        end.reading_id,
    )


def _postings_since(conn: Connection, bulk: Bulk, cut: dt.datetime) -> dict[int, int]:
    """Per ledger account, the sum of postings whose entry happened at or after ``cut``."""
    rows = conn.execute(
        text(
            "SELECT p.account_id, SUM(p.amount_micros) FROM ledger_entries e"
            " JOIN ledger_postings p ON p.entry_id = e.id WHERE e.event_at >= :cut GROUP BY p.account_id"
        ),
        {"cut": bulk.ts(cut)},
    )
    return {int(account): int(total) for account, total in rows}


def _freeze_batch(
    conn: Connection, ctx: _DayContext, scope: Scope, after: str, limit: int
) -> tuple[str | None, int, int]:
    """Freeze the next ``limit`` meters after ``after``; returns (last meter id, rows written, estimated)."""
    bulk = Bulk(conn)
    params = {
        "cut": bulk.ts(ctx.cut),
        "start": bulk.ts(ctx.start),
        "previous_day": (ctx.day - dt.timedelta(days=1)).isoformat() if bulk.sqlite else ctx.day - dt.timedelta(days=1),
        "scope_key": scope.key,
        "after": after,
        "limit": limit,
    }
    rows = conn.execute(text(_batch_sql(scope)), params).all()
    if not rows:
        return None, 0, 0
    after_cut = _postings_since(conn, bulk, ctx.cut)
    frozen = [f for f in (_freeze_row(conn, bulk, ctx, row, after_cut) for row in rows) if f is not None]
    if frozen:
        sql = _upsert_sql("daily_freezes", FREEZE_COLUMNS, ("meter_id", "day"), bulk.mark)
        conn.exec_driver_sql(sql, frozen)
    estimated = sum(1 for f in frozen if f[-3])
    return str(rows[-1][0]), len(frozen), estimated


def _snapshot(engine: Engine) -> Any:
    """A connection whose transactions read one snapshot (SQLite's write transaction already does)."""
    conn = engine.connect()
    if conn.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def daily_freeze(
    engine: Engine,
    site_or_zone: int | str,
    day: dt.date,
    now: dt.datetime,
    *,
    owner: str | None = None,
    batch_size: int = BATCH_METERS,
) -> FreezeRun:
    """Freeze every meter of a site (id) or time zone (name) for the site-local ``day``, once."""
    assert 1 <= batch_size <= MAX_BATCH_METERS, batch_size
    owner = owner or default_owner()
    with engine.connect() as conn:
        scope = scope_of(conn, site_or_zone)
    period = f"{scope.name}:{day.isoformat()}"
    ctx = _DayContext(scope, day, now)
    if now < ctx.cut:
        return FreezeRun(JOB_DAILY, period, None, problems=[f"day: {day} has not ended at {now.isoformat()}"])
    claimed = claim(engine, JOB_DAILY, period, owner, now)
    run = FreezeRun(JOB_DAILY, period, claimed)
    if not run.ran:
        return run
    after = ""
    with _snapshot(engine) as conn:
        while True:
            with conn.begin():
                last, written, estimated = _freeze_batch(conn, ctx, scope, after, batch_size)
                run.meters += written
                run.estimated += estimated
                _renew(conn, JOB_DAILY, period, owner, now, finish=last is None)
            if last is None:
                return run
            after = last


def last_completed_day(conn: Connection, scope: Scope) -> dt.date | None:
    prefix = f"{scope.name}:"
    value = conn.execute(
        text("SELECT MAX(period) FROM job_runs WHERE job = :job AND finished_at IS NOT NULL AND period LIKE :prefix"),
        {"job": JOB_DAILY, "prefix": prefix + "%"},
    ).scalar()
    return None if value is None else dt.date.fromisoformat(str(value)[len(prefix) :])


def catch_up(engine: Engine, now: dt.datetime, *, scopes: Sequence[int | str] | None = None) -> list[FreezeRun]:
    """Run every daily freeze that is due and not done, per scope, oldest first (after downtime).

    Scopes default to every time zone that has meters. A scope that never froze starts at yesterday.
    """
    with engine.connect() as conn:
        if scopes is None:
            scopes = [str(z) for (z,) in conn.execute(text("SELECT DISTINCT timezone FROM meters ORDER BY 1"))]
        resolved = [scope_of(conn, s) for s in scopes]
        lasts = [last_completed_day(conn, s) for s in resolved]
    runs: list[FreezeRun] = []
    for site_or_zone, scope, last in zip(scopes, resolved, lasts, strict=True):
        yesterday = now.astimezone(scope.zone).date() - dt.timedelta(days=1)
        first = yesterday if last is None else last + dt.timedelta(days=1)
        first = max(first, yesterday - dt.timedelta(days=MAX_CATCH_UP_DAYS - 1))
        day = first
        while day <= yesterday:
            runs.append(daily_freeze(engine, site_or_zone, day, now))
            day += dt.timedelta(days=1)
    return runs


# --- monthly freeze and settlement -------------------------------------------------------------------------

DEDUCTION_KINDS = ("deduction", "standing_charge")
ADJUSTMENT_KINDS = ("adjustment", "reversal")


@dataclass(frozen=True, slots=True)
class Settlement:
    """One wallet's month: opening + recharges - deductions - refunds + adjustments = closing."""

    wallet_account_id: int
    month: dt.date
    opening_micros: int
    recharges_micros: int
    deductions_micros: int
    refunds_micros: int
    adjustments_micros: int
    closing_micros: int

    @property
    def ties_out(self) -> bool:
        flows = self.recharges_micros - self.deductions_micros - self.refunds_micros + self.adjustments_micros
        return self.opening_micros + flows == self.closing_micros


@dataclass(slots=True)
class SettlementResult:
    settlements: list[Settlement] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def month_bounds(month: dt.date, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """[00:00 local on the 1st, 00:00 local on the 1st of the next month), in UTC."""
    first = month.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return local_midnight(first, zone), local_midnight(following, zone)


def _scope_wallets(conn: Connection, bulk: Bulk, scope: Scope, cut: dt.datetime) -> list[int]:
    sql = f"SELECT DISTINCT m.wallet_account_id FROM meters m WHERE {scope.meters_clause()} ORDER BY 1"
    return [int(w) for (w,) in conn.execute(text(sql), {"scope_key": scope.key, "cut": bulk.ts(cut)})]


def _sums(conn: Connection, bulk: Bulk, where: str, params: dict[str, Any]) -> dict[tuple[int, str], int]:
    rows = conn.execute(
        text(
            "SELECT p.account_id, e.kind, SUM(p.amount_micros) FROM ledger_entries e"
            f" JOIN ledger_postings p ON p.entry_id = e.id WHERE {where} GROUP BY p.account_id, e.kind"
        ),
        {k: bulk.ts(v) if isinstance(v, dt.datetime) else v for k, v in params.items()},
    )
    return {(int(account), str(kind)): int(total) for account, kind, total in rows}


def _settle_wallet(
    wallet: int, month: dt.date, sums: tuple[dict[tuple[int, str], int], ...], balance_micros: int
) -> Settlement:
    before, during, after = sums

    def total(source: dict[tuple[int, str], int], kinds: Sequence[str] | None = None) -> int:
        return sum(v for (account, kind), v in source.items() if account == wallet and (kinds is None or kind in kinds))

    return Settlement(
        wallet,
        month,
        opening_micros=total(before),
        recharges_micros=total(during, ("recharge",)),
        deductions_micros=-total(during, DEDUCTION_KINDS),
        refunds_micros=-total(during, ("refund",)),
        adjustments_micros=total(during, ADJUSTMENT_KINDS),
        closing_micros=balance_micros - total(after),
    )


def monthly_settlement(engine: Engine, site_or_zone: int | str, month: dt.date, now: dt.datetime) -> SettlementResult:
    """Settle every wallet of the scope for ``month`` from the journal and store the lines that tie out.

    The opening balance is summed from the journal, the closing one is the materialised balance less what
    happened since: the two are computed independently, so a line that does not tie out is a real
    discrepancy (reported, not stored).
    """
    result = SettlementResult()
    with _snapshot(engine) as conn, conn.begin():
        bulk = Bulk(conn)
        scope = scope_of(conn, site_or_zone)
        start, end = month_bounds(month, scope.zone)
        if now < end:
            result.problems.append(f"month: {month:%Y-%m} has not ended at {now.isoformat()}")
            return result
        wallets = _scope_wallets(conn, bulk, scope, end)
        sums = (
            _sums(conn, bulk, "e.event_at < :start", {"start": start}),
            _sums(conn, bulk, "e.event_at >= :start AND e.event_at < :end", {"start": start, "end": end}),
            _sums(conn, bulk, "e.event_at >= :end", {"end": end}),
        )
        balances = dict(
            conn.execute(text("SELECT id, balance_micros FROM ledger_accounts WHERE kind = 'wallet'")).all()
        )
        for wallet in wallets:
            line = _settle_wallet(wallet, month.replace(day=1), sums, int(balances[wallet]))
            if not line.ties_out:
                result.problems.append(f"wallet {wallet}: {month:%Y-%m} does not tie out: {line}")
                continue
            result.settlements.append(line)
        columns = (
            "wallet_account_id", "month", "opening_micros", "recharges_micros", "deductions_micros",
            "refunds_micros", "adjustments_micros", "closing_micros", "created_at",
        )  # fmt: skip
        rows = [
            (
                s.wallet_account_id,
                s.month.isoformat() if bulk.sqlite else s.month,
                s.opening_micros,
                s.recharges_micros,
                s.deductions_micros,
                s.refunds_micros,
                s.adjustments_micros,
                s.closing_micros,
                bulk.ts(now),
            )
            for s in result.settlements
        ]
        if rows:
            conn.exec_driver_sql(
                _upsert_sql("monthly_settlements", columns, ("wallet_account_id", "month"), bulk.mark), rows
            )
    return result


MONTH_SUMS = ("energy_wh", *(f"{b}_energy_wh" for b in BANDS), "cost_micros", *(f"{b}_cost_micros" for b in BANDS))
MONTH_LAST = ("wallet_account_id", "frozen_at", "total_wh", *(f"{b}_wh" for b in BANDS), "balance_micros")


def monthly_freeze(engine: Engine, site_or_zone: int | str, month: dt.date, now: dt.datetime) -> FreezeRun:
    """Sum the month's daily freezes per meter (registers and balance from its last day), once per period.

    Every day of the month is frozen first (each daily run happens once; done ones return at once). A meter
    whose days do not all have a band split gets none for the month, so band costs still add up.
    """
    with engine.connect() as conn:
        scope = scope_of(conn, site_or_zone)
    first = month.replace(day=1)
    _start, end = month_bounds(first, scope.zone)
    period = f"{scope.name}:{first:%Y-%m}"
    if now < end:
        return FreezeRun(JOB_MONTHLY, period, None, problems=[f"month: {first:%Y-%m} has not ended"])
    day = first
    while local_midnight(day, scope.zone) < end:
        daily_freeze(engine, site_or_zone, day, now)
        day += dt.timedelta(days=1)
    owner = default_owner()
    run = FreezeRun(JOB_MONTHLY, period, claim(engine, JOB_MONTHLY, period, owner, now))
    if not run.ran:
        return run
    with _snapshot(engine) as conn, conn.begin():
        run.meters = _write_monthly(conn, scope, first, day - dt.timedelta(days=1), now)
        _renew(conn, JOB_MONTHLY, period, owner, now, finish=True)
    return run


def _write_monthly(conn: Connection, scope: Scope, first: dt.date, last: dt.date, now: dt.datetime) -> int:
    bulk = Bulk(conn)
    sums = ", ".join(f"SUM(d.{c})" for c in MONTH_SUMS)
    banded_sql = "COUNT(d.sharp_cost_micros)"
    picked = ", ".join(f"l.{c}" for c in MONTH_LAST)
    sql = (
        f"SELECT g.meter_id, g.days, g.banded, g.estimated, {picked}, g.* FROM ("
        f"SELECT d.meter_id, COUNT(*) AS days, {banded_sql} AS banded,"
        " MAX(CASE WHEN d.estimated THEN 1 ELSE 0 END) AS estimated, MAX(d.day) AS last_day, "
        f"{sums} FROM daily_freezes d JOIN meters m ON m.id = d.meter_id"
        f" WHERE d.day >= :first AND d.day <= :last AND {scope.meters_clause()} GROUP BY d.meter_id) g"
        " JOIN daily_freezes l ON l.meter_id = g.meter_id AND l.day = g.last_day ORDER BY g.meter_id"
    )

    def as_date(value: dt.date) -> Any:
        return value.isoformat() if bulk.sqlite else value

    params = {"first": as_date(first), "last": as_date(last), "scope_key": scope.key, "cut": bulk.ts(now)}
    rows = []
    for row in conn.execute(text(sql), params):
        meter_id, days, banded, estimated = str(row[0]), int(row[1]), int(row[2]), bool(row[3])
        wallet, frozen_at, total, *rest = row[4 : 4 + len(MONTH_LAST)]
        registers, balance = rest[:4], rest[4]
        totals = list(row[4 + len(MONTH_LAST) + 5 :])
        energy, band_energy, cost, band_cost = totals[0], totals[1:5], totals[5], totals[6:10]
        if banded != days:
            band_energy, band_cost = [None] * 4, [None] * 4
        rows.append(
            (as_date(first), meter_id, wallet, frozen_at, total, *registers, energy, *band_energy, cost, *band_cost,
             balance, estimated, bulk.ts(now), days)
        )  # fmt: skip
    columns = ("month", *FREEZE_COLUMNS[1:-1], "days")
    if rows:
        conn.exec_driver_sql(_upsert_sql("monthly_freezes", columns, ("meter_id", "month"), bulk.mark), rows)
    return len(rows)
