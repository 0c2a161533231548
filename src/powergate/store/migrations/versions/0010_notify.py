"""Notifications: notification_recipients, notification_preferences, notification_templates, notifications.

Revision ID: 0010
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0010"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
EVENTS = (
    "event IN ('low_balance', 'tripped', 'restored', 'recharge_received', 'refund', 'meter_alarm', "
    "'meter_offline', 'reconciliation_discrepancy', 'daily_report_ready', 'runout_forecast')"
)
CHANNELS = "channel IN ('email', 'sms', 'voice', 'wechat', 'push', 'webhook')"
LANGUAGES = "language IN ('zh-CN', 'en')"


def upgrade() -> None:
    op.create_table(
        "notification_recipients",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), unique=True),
        sa.Column("admin_login", sa.String(120)),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("language", sa.String(8), nullable=False, server_default="zh-CN"),
        sa.Column("email", sa.String(254)),
        sa.Column("phone", sa.String(20)),
        sa.Column("wechat_openid", sa.String(64)),
        sa.Column("push_token", sa.String(256)),
        sa.Column("webhook_url", sa.String(500)),
        sa.Column("quiet_start_min", sa.Integer),
        sa.Column("quiet_end_min", sa.Integer),
        sa.Column("active", sa.Boolean, nullable=False, server_default="1"),
        sa.UniqueConstraint("site_id", "admin_login"),
        sa.CheckConstraint("role IN ('tenant', 'admin')", name="role"),
        sa.CheckConstraint(LANGUAGES, name="language"),
        sa.CheckConstraint(
            "(role = 'tenant' AND account_id IS NOT NULL AND admin_login IS NULL)"
            " OR (role = 'admin' AND account_id IS NULL AND admin_login IS NOT NULL)",
            name="who",
        ),
        sa.CheckConstraint(
            "(quiet_start_min IS NULL AND quiet_end_min IS NULL) OR (quiet_start_min BETWEEN 0 AND 1439"
            " AND quiet_end_min BETWEEN 0 AND 1439)",
            name="quiet",
        ),
    )
    op.create_table(
        "notification_preferences",
        sa.Column("recipient_id", Id, sa.ForeignKey("notification_recipients.id"), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("channels", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("recipient_id", "event"),
        sa.CheckConstraint(EVENTS, name="event"),
    )
    op.create_table(
        "notification_templates",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated_by", sa.String(120), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("event", "language", "channel"),
        sa.CheckConstraint(EVENTS, name="event"),
        sa.CheckConstraint(LANGUAGES, name="language"),
        sa.CheckConstraint(CHANNELS, name="channel"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("event_key", sa.String(200), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("recipient_id", Id, sa.ForeignKey("notification_recipients.id"), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("address", sa.String(500), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False, server_default="{}"),
        sa.Column("state", sa.String(10), nullable=False, server_default="queued"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("resends", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("claimed_until", UTCDateTime),
        sa.Column("provider_id", sa.String(200)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("delivered_at", UTCDateTime),
        sa.UniqueConstraint("event_key", "recipient_id", "channel"),
        sa.CheckConstraint("state IN ('queued', 'sent', 'delivered', 'failed')", name="state"),
        sa.CheckConstraint(CHANNELS, name="channel"),
        sa.CheckConstraint("attempts >= 0 AND attempts <= 12", name="attempts"),
        sa.CheckConstraint("resends >= 0 AND resends <= 100", name="resends"),
    )
    op.create_index("ix_notifications_state_next_attempt_at", "notifications", ["state", "next_attempt_at"])
    op.create_index("ix_notifications_recipient_id_created_at", "notifications", ["recipient_id", "created_at"])


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
