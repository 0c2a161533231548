"""Head-end: meter endpoints, meter status and meter events.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")
EVENT_KINDS = (
    "'cover_open', 'terminal_cover_open', 'reverse_current', 'abnormal_current', 'voltage_loss', "
    "'current_loss', 'magnetic_interference', 'overload_trip', 'power_fail', 'power_restore'"
)


def upgrade() -> None:
    op.create_table(
        "meter_endpoints",
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), primary_key=True),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("link_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(64), nullable=False, server_default="default"),
        sa.CheckConstraint("transport IN ('dlt645', 'modbus', 'mqtt')", name="transport"),
        sa.UniqueConstraint("transport", "link_id", "address", name="uq_meter_endpoints_where"),
    )
    op.create_index("ix_meter_endpoints_link_id", "meter_endpoints", ["link_id"])
    op.create_table(
        "meter_status",
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), primary_key=True),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("last_seen_at", UTCDateTime),
        sa.Column("last_read_at", UTCDateTime),
        sa.Column("relay_open", sa.Boolean),
        sa.Column("remaining_micros", sa.BigInteger),
        sa.Column("purchase_count", sa.BigInteger),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("remaining_micros IS NULL OR remaining_micros >= 0", name="remaining"),
        sa.CheckConstraint("purchase_count IS NULL OR purchase_count >= 0", name="purchase_count"),
    )
    op.create_table(
        "meter_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint(f"kind IN ({EVENT_KINDS})", name="kind"),
        sa.UniqueConstraint("meter_id", "kind", "at", name="uq_meter_events_once"),
    )


def downgrade() -> None:
    op.drop_table("meter_events")
    op.drop_table("meter_status")
    op.drop_index("ix_meter_endpoints_link_id", table_name="meter_endpoints")
    op.drop_table("meter_endpoints")
