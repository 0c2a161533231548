"""Sites and tenants: organisations, sites, buildings, floors, rooms, accounts, meter assignments, audit log.

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
ROOM_USES = "use IN ('apartment', 'shop', 'office', 'dormitory', 'public_area')"
ACCOUNT_STATES = "state IN ('pre_staged', 'open', 'closed')"
CHANNELS = "channel IN ('wechat', 'alipay', 'cashier', 'bank', 'sandbox')"
CALENDARS = "calendar IN ('china', 'weekends_only')"
OPENED = (
    "(state = 'open' AND opened_at IS NOT NULL) OR (state = 'pre_staged' AND opened_at IS NULL) OR state = 'closed'"
)


def upgrade() -> None:
    _audit_log()
    _places()
    _accounts()
    _meter_assignments()


def _audit_log() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
        sa.CheckConstraint("actor <> '' AND action <> '' AND subject <> '' AND reason <> ''", name="who_why"),
    )
    op.create_index("ix_audit_log_subject_at", "audit_log", ["subject", "at"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def _places() -> None:
    op.create_table(
        "organisations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("code"),
    )
    op.create_table(
        "sites",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("organisation_id", Id, sa.ForeignKey("organisations.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("calendar", sa.String(16), nullable=False, server_default="china"),
        sa.Column("calendar_overrides", sa.Text, nullable=False, server_default="{}"),
        sa.Column("min_purchase_micros", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("hoarding_limit_micros", sa.BigInteger),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("organisation_id", "name"),
        sa.CheckConstraint(CALENDARS, name="calendar"),
        sa.CheckConstraint("min_purchase_micros >= 0", name="min_purchase"),
        sa.CheckConstraint("hoarding_limit_micros IS NULL OR hoarding_limit_micros > 0", name="hoarding_limit"),
    )
    op.create_table(
        "site_payment_channels",
        sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("site_id", "channel"),
        sa.CheckConstraint(CHANNELS, name="channel"),
    )
    op.create_table(
        "buildings",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.UniqueConstraint("site_id", "name"),
    )
    op.create_table(
        "floors",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("building_id", Id, sa.ForeignKey("buildings.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.UniqueConstraint("building_id", "name"),
    )
    op.create_table(
        "rooms",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("floor_id", Id, sa.ForeignKey("floors.id"), nullable=False),
        sa.Column("number", sa.String(64), nullable=False),
        sa.Column("area_centi_m2", sa.BigInteger, nullable=False),
        sa.Column("use", sa.String(16), nullable=False),
        sa.UniqueConstraint("floor_id", "number"),
        sa.CheckConstraint("area_centi_m2 >= 0", name="area"),
        sa.CheckConstraint(ROOM_USES, name="use"),
    )


def _accounts() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("organisation_id", Id, sa.ForeignKey("organisations.id"), nullable=False),
        sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("account_no", sa.String(32), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("phone", sa.String(20)),
        sa.Column("email", sa.String(254)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("opened_at", UTCDateTime),
        sa.Column("closed_at", UTCDateTime),
        sa.UniqueConstraint("organisation_id", "account_no"),
        sa.UniqueConstraint("wallet_account_id"),
        sa.CheckConstraint(ACCOUNT_STATES, name="state"),
        sa.CheckConstraint(OPENED, name="opened"),
        sa.CheckConstraint("(state = 'closed') = (closed_at IS NOT NULL)", name="closed"),
    )
    op.create_index("ix_accounts_site_id", "accounts", ["site_id"])


def _meter_assignments() -> None:
    op.create_table(
        "meter_assignments",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
        sa.Column("room_id", Id, sa.ForeignKey("rooms.id"), nullable=False),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("valid_from", UTCDateTime, nullable=False),
        sa.Column("valid_to", UTCDateTime),
        sa.Column("start_total_wh", sa.BigInteger),
        sa.Column("end_total_wh", sa.BigInteger),
        sa.CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="period"),
    )
    op.create_index("ix_meter_assignments_meter_id", "meter_assignments", ["meter_id", "valid_from"])
    op.create_index("ix_meter_assignments_account_id", "meter_assignments", ["account_id"])
    op.create_index("ix_meter_assignments_room_id", "meter_assignments", ["room_id"])
    op.create_index(
        "uq_meter_assignments_open",
        "meter_assignments",
        ["meter_id"],
        unique=True,
        sqlite_where=sa.text("valid_to IS NULL"),
        postgresql_where=sa.text("valid_to IS NULL"),
    )


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
