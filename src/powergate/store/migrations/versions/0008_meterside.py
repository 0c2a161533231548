"""Meter-side billing: meter_side_state, reconciliation_alarms.

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
ALARM_KINDS = "kind IN ('purchase_count_behind', 'purchase_count_ahead', 'remaining_amount', 'ledger', 'flow')"


def upgrade() -> None:
    op.create_table(
        "meter_side_state",
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), primary_key=True),
        sa.Column("next_purchase_count", sa.BigInteger, nullable=False),
        sa.Column("last_pushed_purchase_count", sa.BigInteger, nullable=False),
        sa.Column("mirrored_remaining_micros", sa.BigInteger),
        sa.Column("mirrored_overdraft_micros", sa.BigInteger),
        sa.Column("mirrored_purchase_count", sa.BigInteger),
        sa.Column("mirrored_at", UTCDateTime),
        sa.Column("enrolled_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("next_purchase_count >= 1", name="next_count"),
        sa.CheckConstraint(
            "last_pushed_purchase_count >= 0 AND last_pushed_purchase_count < next_purchase_count",
            name="pushed_count",
        ),
        sa.CheckConstraint("mirrored_purchase_count IS NULL OR mirrored_purchase_count >= 0", name="mirrored_count"),
        sa.CheckConstraint(
            "mirrored_remaining_micros IS NULL OR mirrored_remaining_micros >= 0", name="mirrored_remaining"
        ),
        sa.CheckConstraint(
            "mirrored_overdraft_micros IS NULL OR mirrored_overdraft_micros >= 0", name="mirrored_overdraft"
        ),
    )
    op.create_table(
        "reconciliation_alarms",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("expected", sa.BigInteger),
        sa.Column("actual", sa.BigInteger),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("day", "subject", "kind"),
        sa.CheckConstraint(ALARM_KINDS, name="kind"),
        sa.CheckConstraint("subject <> '' AND message <> ''", name="named"),
    )


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
