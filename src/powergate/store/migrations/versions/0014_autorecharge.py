"""Auto-recharge: autorecharge_bindings, autorecharge_runs.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "autorecharge_bindings",
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("agreement_id", sa.String(64), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("threshold_micros", sa.BigInteger, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("armed", sa.Boolean, nullable=False),
        sa.Column("crossings", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_run_at", UTCDateTime),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_by", sa.String(120), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("amount_micros > 0 AND amount_micros <= 10000000000", name="amount"),
        sa.CheckConstraint("amount_micros % 10000 = 0", name="whole_fen"),
        sa.CheckConstraint("threshold_micros >= 0", name="threshold"),
        sa.CheckConstraint("crossings >= 0", name="crossings"),
    )
    op.create_index("ix_autorecharge_bindings_active", "autorecharge_bindings", ["active", "armed"])
    op.create_table(
        "autorecharge_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("crossing", sa.BigInteger, nullable=False),
        sa.Column("order_no", sa.String(64), nullable=False, unique=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("balance_micros", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("message", sa.Text),
        sa.Column("lease_until", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("wallet_account_id", "crossing"),
        sa.CheckConstraint("state IN ('placed', 'credited', 'refused', 'failed')", name="state"),
        sa.CheckConstraint("amount_micros > 0 AND attempts >= 0 AND crossing >= 1", name="amounts"),
    )
    op.create_index("ix_autorecharge_runs_state", "autorecharge_runs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_autorecharge_runs_state", "autorecharge_runs")
    op.drop_table("autorecharge_runs")
    op.drop_index("ix_autorecharge_bindings_active", "autorecharge_bindings")
    op.drop_table("autorecharge_bindings")
