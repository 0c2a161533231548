"""Notice producers: notice_cursors, runout_alerts.

Revision ID: 0016
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0016"
down_revision = "0010"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "notice_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("position", sa.String(200), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "runout_alerts",
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), primary_key=True),
        sa.Column("balance_micros", sa.BigInteger, nullable=False),
        sa.Column("alerted_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("balance_micros >= 0", name="balance"),
    )


def downgrade() -> None:
    op.drop_table("runout_alerts")
    op.drop_table("notice_cursors")
