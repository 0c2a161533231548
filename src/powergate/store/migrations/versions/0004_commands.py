"""The persisted command queue: meter_commands.

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
STATES = "state IN ('pending', 'sent', 'acked', 'verified', 'failed', 'expired', 'cancelled')"
KINDS = (
    "kind IN ('trip', 'close', 'close_allowed', 'protect_on', 'protect_off', 'recharge', 'set_alarms', "
    "'set_power_limit', 'set_prices', 'time_sync')"
)


def upgrade() -> None:
    op.create_table(
        "meter_commands",
        sa.Column("seq", Id, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("parameters", sa.Text, nullable=False, server_default="{}"),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("valid_until", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("requested_by", sa.String(120), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint(STATES, name="state"),
        sa.CheckConstraint(KINDS, name="kind"),
        sa.CheckConstraint("max_attempts >= 1 AND max_attempts <= 100", name="max_attempts"),
        sa.CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts"),
        sa.CheckConstraint("priority >= 0 AND priority <= 1000", name="priority"),
        sa.CheckConstraint("claimed_by IS NULL OR state IN ('pending', 'sent', 'acked')", name="claim"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_meter_commands_meter_id_state", "meter_commands", ["meter_id", "state", "priority", "seq"])
    op.create_index("ix_meter_commands_state_next_attempt_at", "meter_commands", ["state", "next_attempt_at"])


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
