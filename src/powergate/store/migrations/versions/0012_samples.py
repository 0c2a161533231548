"""Instantaneous samples: meter_samples.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
FIELDS = ("voltage_dv", "current_ma", "power_dw", "pf_milli", "frequency_chz")


def upgrade() -> None:
    op.create_table(
        "meter_samples",
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("voltage_dv", sa.Integer),
        sa.Column("current_ma", sa.BigInteger),
        sa.Column("power_dw", sa.BigInteger),
        sa.Column("pf_milli", sa.Integer),
        sa.Column("frequency_chz", sa.Integer),
        sa.PrimaryKeyConstraint("meter_id", "at"),
        sa.CheckConstraint("voltage_dv IS NULL OR (voltage_dv >= 0 AND voltage_dv <= 1000000)", name="voltage"),
        sa.CheckConstraint("current_ma IS NULL OR (current_ma >= 0 AND current_ma <= 1000000000)", name="current"),
        sa.CheckConstraint("power_dw IS NULL OR (power_dw >= -10000000000 AND power_dw <= 10000000000)", name="power"),
        sa.CheckConstraint("pf_milli IS NULL OR (pf_milli >= -1000 AND pf_milli <= 1000)", name="pf"),
        sa.CheckConstraint(
            "frequency_chz IS NULL OR (frequency_chz >= 0 AND frequency_chz <= 100000)", name="frequency"
        ),
        sa.CheckConstraint(" OR ".join(f"{name} IS NOT NULL" for name in FIELDS), name="some_value"),
    )
    op.create_index("ix_meter_samples_at", "meter_samples", ["at"])


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
