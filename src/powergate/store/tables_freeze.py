"""Frozen data: daily and monthly freezes per meter, monthly settlements per wallet, and job runs.

Invariants the database keeps (style rule 4; ``powergate.services.freeze`` computes them first):
- One daily freeze per (meter, site-local day) and one monthly freeze per (meter, month): PRIMARY KEYs.
- Energy is integer Wh, money integer micros; daily energy and cost are never negative.
- Per-band figures are all present or all absent (a total-only meter has none); when present, the band costs
  add up exactly to the day's (month's) cost (band energies are the meter's own register deltas, whose
  rounding may differ from the total's by a few Wh).
- A settlement ties out: opening + recharges - deductions - refunds + adjustments = closing, exactly.
- A job runs once per (job, period): ``job_runs`` has UNIQUE(job, period); a run is claimed by inserting its
  row, owned until ``lease_until``, and finished when ``finished_at`` is set.

Also here: an index on ``ledger_entries.event_at``, which the freeze needs to find the postings made after a
cut-off (the balance at midnight is the materialised balance minus those) without scanning the journal.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)

from powergate.store.tables import Id, UTCDateTime, ledger_entries, metadata

BANDS = ("sharp", "peak", "flat", "valley")

Index("ix_ledger_entries_event_at", ledger_entries.c.event_at)


def _all_or_none(columns: list[str]) -> str:
    nulls = " AND ".join(f"{c} IS NULL" for c in columns)
    present = " AND ".join(f"{c} IS NOT NULL" for c in columns)
    return f"({nulls}) OR ({present})"


def _bands_add_up(prefix: str, suffix: str, total: str) -> str:
    columns = [f"{prefix}{band}_{suffix}" for band in BANDS]
    return f"{columns[0]} IS NULL OR {' + '.join(columns)} = {total}"


BAND_REGISTERS = [f"{band}_wh" for band in BANDS]
BAND_ENERGY = [f"{band}_energy_wh" for band in BANDS]
BAND_COST = [f"{band}_cost_micros" for band in BANDS]


def _freeze_columns() -> list[Column[object]]:
    """Columns shared by the daily and the monthly freeze (registers at the end of the period, its usage)."""
    columns: list[Column[object]] = [
        Column("meter_id", String(64), ForeignKey("meters.id"), nullable=False),
        Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False),
        Column("frozen_at", UTCDateTime, nullable=False),
        Column("total_wh", BigInteger, nullable=False),
    ]
    columns += [Column(name, BigInteger) for name in BAND_REGISTERS]
    columns.append(Column("energy_wh", BigInteger, nullable=False))
    columns += [Column(name, BigInteger) for name in BAND_ENERGY]
    columns.append(Column("cost_micros", BigInteger, nullable=False))
    columns += [Column(name, BigInteger) for name in BAND_COST]
    columns += [
        Column("balance_micros", BigInteger, nullable=False),
        Column("estimated", Boolean, nullable=False, server_default="0"),
        Column("created_at", UTCDateTime, nullable=False),
    ]
    return columns


def _freeze_checks() -> list[CheckConstraint]:
    return [
        CheckConstraint("energy_wh >= 0 AND cost_micros >= 0", name="usage"),
        CheckConstraint(_all_or_none(BAND_ENERGY + BAND_COST), name="bands_present"),
        CheckConstraint(_bands_add_up("", "cost_micros", "cost_micros"), name="band_costs"),
    ]


daily_freezes = Table(
    "daily_freezes",
    metadata,
    Column("day", Date, nullable=False),
    *_freeze_columns(),
    Column("reading_id", String(128)),
    PrimaryKeyConstraint("meter_id", "day"),
    *_freeze_checks(),
    Index("ix_daily_freezes_day", "day"),
)
"""The register state of a meter at 00:00 site-local after ``day``, and the day's usage, cost and balance.

``reading_id`` is the reading the registers come from (NULL when they were interpolated between two)."""

monthly_freezes = Table(
    "monthly_freezes",
    metadata,
    Column("month", Date, nullable=False),
    *_freeze_columns(),
    Column("days", BigInteger, nullable=False),
    PrimaryKeyConstraint("meter_id", "month"),
    *_freeze_checks(),
    CheckConstraint("days >= 1 AND days <= 31", name="days"),
    Index("ix_monthly_freezes_month", "month"),
)
"""The month's daily freezes summed up (``month`` is the first day); registers and balance of its last day."""

monthly_settlements = Table(
    "monthly_settlements",
    metadata,
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("month", Date, nullable=False),
    Column("opening_micros", BigInteger, nullable=False),
    Column("recharges_micros", BigInteger, nullable=False),
    Column("deductions_micros", BigInteger, nullable=False),
    Column("refunds_micros", BigInteger, nullable=False),
    Column("adjustments_micros", BigInteger, nullable=False),
    Column("closing_micros", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("wallet_account_id", "month"),
    CheckConstraint(
        "opening_micros + recharges_micros - deductions_micros - refunds_micros + adjustments_micros = closing_micros",
        name="ties_out",
    ),
    CheckConstraint("recharges_micros >= 0 AND refunds_micros >= 0", name="flows"),
)
"""Per wallet and month: the ledger's flows by kind between two balances (see docs/freeze.md)."""

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("period", String(128), nullable=False),
    Column("owner", String(128), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("attempts", BigInteger, nullable=False, server_default="1"),
    UniqueConstraint("job", "period", name="uq_job_runs_job_period"),
    CheckConstraint("lease_until > started_at", name="lease"),
    CheckConstraint("attempts >= 1", name="attempts"),
)
"""A keyed run of a periodic job: claimed by INSERT (once across workers), taken over after its lease."""
