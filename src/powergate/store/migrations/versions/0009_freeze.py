"""Frozen data: daily_freezes, monthly_freezes, monthly_settlements, job_runs; an index on ledger event times.

Revision ID: 0009
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
BANDS = ("sharp", "peak", "flat", "valley")
BAND_ENERGY = [f"{band}_energy_wh" for band in BANDS]
BAND_COST = [f"{band}_cost_micros" for band in BANDS]
TIES_OUT = (
    "opening_micros + recharges_micros - deductions_micros - refunds_micros + adjustments_micros = closing_micros"
)


def _all_or_none(columns: list[str]) -> str:
    nulls = " AND ".join(f"{c} IS NULL" for c in columns)
    present = " AND ".join(f"{c} IS NOT NULL" for c in columns)
    return f"({nulls}) OR ({present})"


def _adds_up(columns: list[str], total: str) -> str:
    return f"{columns[0]} IS NULL OR {' + '.join(columns)} = {total}"


def _freeze_columns() -> list[sa.Column[object]]:
    columns: list[sa.Column[object]] = [
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("frozen_at", UTCDateTime, nullable=False),
        sa.Column("total_wh", sa.BigInteger, nullable=False),
    ]
    columns += [sa.Column(f"{band}_wh", sa.BigInteger) for band in BANDS]
    columns.append(sa.Column("energy_wh", sa.BigInteger, nullable=False))
    columns += [sa.Column(name, sa.BigInteger) for name in BAND_ENERGY]
    columns.append(sa.Column("cost_micros", sa.BigInteger, nullable=False))
    columns += [sa.Column(name, sa.BigInteger) for name in BAND_COST]
    columns += [
        sa.Column("balance_micros", sa.BigInteger, nullable=False),
        sa.Column("estimated", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
    ]
    return columns


def _freeze_checks() -> list[sa.CheckConstraint]:
    return [
        sa.CheckConstraint("energy_wh >= 0 AND cost_micros >= 0", name="usage"),
        sa.CheckConstraint(_all_or_none(BAND_ENERGY + BAND_COST), name="bands_present"),
        sa.CheckConstraint(_adds_up(BAND_COST, "cost_micros"), name="band_costs"),
    ]


def upgrade() -> None:
    op.create_index("ix_ledger_entries_event_at", "ledger_entries", ["event_at"])

    op.create_table(
        "daily_freezes",
        sa.Column("day", sa.Date, nullable=False),
        *_freeze_columns(),
        sa.Column("reading_id", sa.String(128)),
        sa.PrimaryKeyConstraint("meter_id", "day"),
        *_freeze_checks(),
    )
    op.create_index("ix_daily_freezes_day", "daily_freezes", ["day"])

    op.create_table(
        "monthly_freezes",
        sa.Column("month", sa.Date, nullable=False),
        *_freeze_columns(),
        sa.Column("days", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "month"),
        *_freeze_checks(),
        sa.CheckConstraint("days >= 1 AND days <= 31", name="days"),
    )
    op.create_index("ix_monthly_freezes_month", "monthly_freezes", ["month"])

    op.create_table(
        "monthly_settlements",
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("month", sa.Date, nullable=False),
        sa.Column("opening_micros", sa.BigInteger, nullable=False),
        sa.Column("recharges_micros", sa.BigInteger, nullable=False),
        sa.Column("deductions_micros", sa.BigInteger, nullable=False),
        sa.Column("refunds_micros", sa.BigInteger, nullable=False),
        sa.Column("adjustments_micros", sa.BigInteger, nullable=False),
        sa.Column("closing_micros", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("wallet_account_id", "month"),
        sa.CheckConstraint(TIES_OUT, name="ties_out"),
        sa.CheckConstraint("recharges_micros >= 0 AND refunds_micros >= 0", name="flows"),
    )

    op.create_table(
        "job_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("period", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("lease_until", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("attempts", sa.BigInteger, nullable=False, server_default="1"),
        sa.UniqueConstraint("job", "period", name="uq_job_runs_job_period"),
        sa.CheckConstraint("lease_until > started_at", name="lease"),
        sa.CheckConstraint("attempts >= 1", name="attempts"),
    )


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
