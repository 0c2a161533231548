"""Payments: orders, payment_notifications, refunds.

Revision ID: 0006
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
CHANNELS = "channel IN ('wechat', 'alipay', 'cashier', 'bank', 'sandbox')"
ORDER_STATES = "state IN ('created', 'paid', 'closed', 'expired', 'refunded', 'partially_refunded')"
MAX_FEN = 100_000_000


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("order_no", sa.String(64), nullable=False),
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("site_id", sa.String(64)),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False, server_default="CNY"),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("description", sa.String(128), nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("paid_at", UTCDateTime),
        sa.Column("provider_txn_id", sa.String(64)),
        sa.Column("receipt_no", sa.String(64)),
        sa.Column("operator", sa.String(120)),
        sa.Column("refunded_fen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pay_parameters", sa.Text),
        sa.Column("closed_reason", sa.Text),
        sa.UniqueConstraint("order_no"),
        sa.UniqueConstraint("channel", "provider_txn_id", name="uq_orders_channel_provider_txn_id"),
        sa.CheckConstraint(CHANNELS, name="channel"),
        sa.CheckConstraint(ORDER_STATES, name="state"),
        sa.CheckConstraint(f"amount_fen > 0 AND amount_fen <= {MAX_FEN}", name="amount"),
        sa.CheckConstraint("refunded_fen >= 0 AND refunded_fen <= amount_fen", name="refunded"),
        sa.CheckConstraint(
            "state IN ('created', 'closed', 'expired') OR (paid_at IS NOT NULL AND provider_txn_id IS NOT NULL)",
            name="paid",
        ),
        sa.CheckConstraint("expires_at > created_at", name="expiry"),
    )
    op.create_index("ix_orders_state_expires_at", "orders", ["state", "expires_at"])
    op.create_index("ix_orders_site_id_created_at", "orders", ["site_id", "created_at"])
    op.create_index("ix_orders_paid_at", "orders", ["paid_at"])
    op.create_index("ix_orders_wallet_account_id", "orders", ["wallet_account_id"])

    op.create_table(
        "payment_notifications",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("notification_id", sa.String(128)),
        sa.Column("claimed_id", sa.String(128)),
        sa.Column("order_no", sa.String(64)),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("verdict", sa.String(12), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.UniqueConstraint("channel", "notification_id", name="uq_payment_notifications_channel_notification_id"),
        sa.CheckConstraint("verdict IN ('accepted', 'duplicate', 'rejected')", name="verdict"),
        sa.CheckConstraint("notification_id IS NULL OR verdict = 'accepted'", name="unique_only_accepted"),
        sa.CheckConstraint("reason <> ''", name="reason"),
    )
    op.create_index("ix_payment_notifications_order_no", "payment_notifications", ["order_no"])
    op.create_index("ix_payment_notifications_received_at", "payment_notifications", ["received_at"])

    op.create_table(
        "refunds",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("refund_no", sa.String(64), nullable=False),
        sa.Column("order_no", sa.String(64), sa.ForeignKey("orders.order_no")),
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("destination", sa.String(12), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("operator", sa.String(120), nullable=False),
        sa.Column("site_id", sa.String(64)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("completed_at", UTCDateTime),
        sa.Column("provider_refund_id", sa.String(64)),
        sa.Column("failure", sa.Text),
        sa.UniqueConstraint("refund_no"),
        sa.CheckConstraint(CHANNELS, name="channel"),
        sa.CheckConstraint("destination IN ('original', 'cash')", name="destination"),
        sa.CheckConstraint("state IN ('pending', 'processing', 'succeeded', 'failed')", name="state"),
        sa.CheckConstraint(f"amount_fen > 0 AND amount_fen <= {MAX_FEN}", name="amount"),
        sa.CheckConstraint("destination = 'cash' OR order_no IS NOT NULL", name="original_needs_order"),
        sa.CheckConstraint("state IN ('pending', 'processing') OR completed_at IS NOT NULL", name="completed"),
        sa.CheckConstraint("reason <> '' AND operator <> ''", name="who_why"),
    )
    op.create_index("ix_refunds_order_no", "refunds", ["order_no"])
    op.create_index("ix_refunds_created_at", "refunds", ["created_at"])


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
