"""Ledger (accounts, entries, postings), tariffs, meters, rating state and readings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("code", sa.String(120), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False, server_default="CNY"),
        sa.Column("overdraft_limit_micros", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("balance_micros", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("kind IN ('wallet', 'revenue', 'clearing', 'equity')", name="kind"),
        sa.CheckConstraint("overdraft_limit_micros >= 0", name="overdraft_limit"),
        sa.UniqueConstraint("code"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("event_at", UTCDateTime, nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint(
            "kind IN ('recharge', 'deduction', 'refund', 'standing_charge', 'adjustment', 'reversal')",
            name="kind",
        ),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_table(
        "ledger_postings",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("entry_id", Id, sa.ForeignKey("ledger_entries.id"), nullable=False),
        sa.Column("account_id", Id, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.CheckConstraint("amount_micros <> 0", name="nonzero"),
    )
    op.create_index("ix_ledger_postings_account_id", "ledger_postings", ["account_id"])
    op.create_index("ix_ledger_postings_entry_id", "ledger_postings", ["entry_id"])
    op.create_table(
        "tariffs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("commodity", sa.String(16), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("commodity IN ('electricity', 'water')", name="commodity"),
    )
    op.create_table(
        "meters",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("wallet_account_id", Id, sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("tariff_id", sa.String(64), sa.ForeignKey("tariffs.id"), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="Asia/Shanghai"),
        sa.Column("register_max_wh", sa.BigInteger, nullable=False, server_default="999999990"),
        sa.Column("max_power_w", sa.BigInteger, nullable=False, server_default="100000"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("register_max_wh > 0 AND max_power_w > 0", name="limits"),
    )
    op.create_index("ix_meters_wallet_account_id", "meters", ["wallet_account_id"])
    op.create_table(
        "meter_rating_state",
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), primary_key=True),
        sa.Column("last_reading_id", sa.String(128)),
        sa.Column("last_at", UTCDateTime),
        sa.Column("last_total_wh", sa.BigInteger),
        sa.Column("last_sharp_wh", sa.BigInteger),
        sa.Column("last_peak_wh", sa.BigInteger),
        sa.Column("last_flat_wh", sa.BigInteger),
        sa.Column("last_valley_wh", sa.BigInteger),
        sa.Column("awaiting_initial", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("cycle_start", sa.Date),
        sa.Column("cycle_energy_wh", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("carry_nanos", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint("carry_nanos >= 0 AND carry_nanos < 1000", name="carry"),
        sa.CheckConstraint("cycle_energy_wh >= 0", name="cycle_energy"),
    )
    op.create_table(
        "readings",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("total_wh", sa.BigInteger, nullable=False),
        sa.Column("sharp_wh", sa.BigInteger),
        sa.Column("peak_wh", sa.BigInteger),
        sa.Column("flat_wh", sa.BigInteger),
        sa.Column("valley_wh", sa.BigInteger),
        sa.Column("kind", sa.String(8), nullable=False, server_default="regular"),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("amount_micros", sa.BigInteger),
        sa.Column("estimated", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("entry_id", Id, sa.ForeignKey("ledger_entries.id")),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("kind IN ('regular', 'final', 'initial')", name="kind"),
        sa.CheckConstraint("status IN ('rated', 'skipped', 'quarantined')", name="status"),
        sa.CheckConstraint("amount_micros IS NULL OR amount_micros >= 0", name="amount"),
    )
    op.create_index("ix_readings_meter_id_at", "readings", ["meter_id", "at"])


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
