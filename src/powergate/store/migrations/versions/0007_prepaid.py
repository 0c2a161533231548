"""Prepaid control: wallet_policies, wallet_states, outbox.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0007"
down_revision = "0009"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
BILLING_MODES = "billing_mode IN ('platform', 'meter')"
OUTBOX_KINDS = "kind IN ('warning', 'trip', 'close', 'trip_deferred', 'recharged', 'remote_operation')"


def upgrade() -> None:
    op.create_table(
        "wallet_policies",
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), primary_key=True),
        sa.Column("warning_levels", sa.Text),
        sa.Column("reconnect_micros", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("power_protect", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("temporary_until", UTCDateTime),
        sa.Column("friendly_window", sa.String(40), nullable=False, server_default="default"),
        sa.Column("billing_mode", sa.String(12), nullable=False, server_default="platform"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("reconnect_micros >= 0", name="reconnect"),
        sa.CheckConstraint(BILLING_MODES, name="billing_mode"),
    )
    op.create_table(
        "wallet_states",
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), primary_key=True),
        sa.Column("fired_levels", sa.Text, nullable=False, server_default="[]"),
        sa.Column("supply_on", sa.Boolean, nullable=False, server_default="1"),
        sa.Column("trip_due_at", UTCDateTime),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("generation >= 0", name="generation"),
    )
    op.create_index("ix_wallet_states_trip_due_at", "wallet_states", ["trip_due_at"])
    op.create_table(
        "outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id")),
        sa.Column("payload", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("available_at", UTCDateTime, nullable=False),
        sa.Column("processed_at", UTCDateTime),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("key"),
        sa.CheckConstraint(OUTBOX_KINDS, name="kind"),
        sa.CheckConstraint("attempts >= 0 AND attempts <= 1000", name="attempts"),
    )
    op.create_index("ix_outbox_kind_processed_at", "outbox", ["kind", "processed_at", "id"])


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
