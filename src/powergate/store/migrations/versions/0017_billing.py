"""Property billing: charge_items, charge_postings, apportion_rules, apportion_rule_versions, apportion_runs,
apportion_shares, bills, bill_lines, postpaid_accounts.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TABLES = (
    "charge_items",
    "bills",
    "charge_postings",
    "apportion_rules",
    "apportion_rule_versions",
    "apportion_runs",
    "apportion_shares",
    "bill_lines",
    "postpaid_accounts",
)


def upgrade() -> None:
    op.create_table(
        "charge_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("site_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("basis", sa.String(length=8), nullable=False),
        sa.Column("rate_micros", sa.BigInteger(), nullable=False),
        sa.Column("frequency", sa.String(length=12), nullable=False),
        sa.Column("start_on", sa.Date(), nullable=False),
        sa.Column("due_day", sa.Integer(), server_default="1", nullable=False),
        sa.Column("end_on", sa.Date(), nullable=True),
        sa.Column("collection", sa.String(length=8), nullable=False),
        sa.Column("scope", sa.String(length=12), nullable=False),
        sa.Column("scope_ids", sa.Text(), server_default="[]", nullable=False),
        sa.Column("active", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.CheckConstraint("basis IN ('fixed', 'per_m2')", name=op.f("ck_charge_items_basis")),
        sa.CheckConstraint("collection IN ('deduct', 'bill')", name=op.f("ck_charge_items_collection")),
        sa.CheckConstraint(
            "frequency IN ('once', 'monthly', 'quarterly', 'yearly')", name=op.f("ck_charge_items_frequency")
        ),
        sa.CheckConstraint("scope IN ('site', 'buildings', 'floors', 'rooms')", name=op.f("ck_charge_items_scope")),
        sa.CheckConstraint("rate_micros >= 0 AND due_day >= 1 AND due_day <= 28", name=op.f("ck_charge_items_values")),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_charge_items_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charge_items")),
        sa.UniqueConstraint("site_id", "code", name=op.f("uq_charge_items_site_id")),
    )
    op.create_table(
        "bills",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("bill_no", sa.String(length=40), nullable=False),
        sa.Column("site_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("wallet_account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("period_first", sa.Date(), nullable=False),
        sa.Column("period_last", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=True),
        sa.Column("order_no", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("confirmed_at", UTCDateTime, nullable=True),
        sa.Column("issued_at", UTCDateTime, nullable=True),
        sa.Column("paid_at", UTCDateTime, nullable=True),
        sa.CheckConstraint("kind IN ('postpaid', 'charges')", name=op.f("ck_bills_kind")),
        sa.CheckConstraint(
            "state IN ('draft', 'confirmed', 'issued', 'paid', 'overdue', 'void')", name=op.f("ck_bills_state")
        ),
        sa.CheckConstraint(
            "state NOT IN ('issued', 'paid', 'overdue') OR due_on IS NOT NULL", name=op.f("ck_bills_due")
        ),
        sa.CheckConstraint("amount_micros >= 0 AND period_last >= period_first", name=op.f("ck_bills_values")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_bills_account_id_accounts")),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_bills_site_id_sites")),
        sa.ForeignKeyConstraint(
            ["wallet_account_id"], ["ledger_accounts.id"], name=op.f("fk_bills_wallet_account_id_ledger_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bills")),
        sa.UniqueConstraint("account_id", "kind", "period_first", name=op.f("uq_bills_account_id")),
        sa.UniqueConstraint("bill_no", name=op.f("uq_bills_bill_no")),
    )
    op.create_table(
        "charge_postings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("period_key", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("room_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("period_days", sa.Integer(), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("entry_key", sa.String(length=200), nullable=True),
        sa.Column("bill_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(
            "amount_micros >= 0 AND days >= 0 AND days <= period_days", name=op.f("ck_charge_postings_values")
        ),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_charge_postings_account_id_accounts")),
        sa.ForeignKeyConstraint(["bill_id"], ["bills.id"], name=op.f("fk_charge_postings_bill_id_bills")),
        sa.ForeignKeyConstraint(["item_id"], ["charge_items.id"], name=op.f("fk_charge_postings_item_id_charge_items")),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], name=op.f("fk_charge_postings_room_id_rooms")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charge_postings")),
        sa.UniqueConstraint("item_id", "period_key", "account_id", "room_id", name=op.f("uq_charge_postings_item_id")),
    )
    op.create_table(
        "apportion_rules",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("site_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_apportion_rules_site_id_sites")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apportion_rules")),
        sa.UniqueConstraint("site_id", "code", name=op.f("uq_apportion_rules_site_id")),
    )
    op.create_table(
        "apportion_rule_versions",
        sa.Column("rule_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("master_meter_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=12), nullable=False),
        sa.Column("sub_meters", sa.Text(), server_default="[]", nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("participants", sa.Text(), nullable=False),
        sa.Column("price_micros_per_kwh", sa.BigInteger(), nullable=True),
        sa.Column("collection", sa.String(length=8), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint("collection IN ('deduct', 'bill')", name=op.f("ck_apportion_rule_versions_collection")),
        sa.CheckConstraint("method IN ('ratio', 'area', 'usage')", name=op.f("ck_apportion_rule_versions_method")),
        sa.CheckConstraint("source IN ('total', 'remainder')", name=op.f("ck_apportion_rule_versions_source")),
        sa.CheckConstraint(
            "price_micros_per_kwh IS NULL OR price_micros_per_kwh >= 0", name=op.f("ck_apportion_rule_versions_price")
        ),
        sa.ForeignKeyConstraint(
            ["master_meter_id"], ["meters.id"], name=op.f("fk_apportion_rule_versions_master_meter_id_meters")
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["apportion_rules.id"], name=op.f("fk_apportion_rule_versions_rule_id_apportion_rules")
        ),
        sa.PrimaryKeyConstraint("rule_id", "version", name=op.f("pk_apportion_rule_versions")),
        sa.UniqueConstraint("rule_id", "valid_from", name=op.f("uq_apportion_rule_versions_rule_id")),
    )
    op.create_table(
        "apportion_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("master_wh", sa.BigInteger(), nullable=False),
        sa.Column("sub_meters_wh", sa.BigInteger(), nullable=False),
        sa.Column("energy_wh", sa.BigInteger(), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("weight_total", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.CheckConstraint("energy_wh >= 0 AND amount_micros >= 0", name=op.f("ck_apportion_runs_values")),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["apportion_rules.id"], name=op.f("fk_apportion_runs_rule_id_apportion_rules")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apportion_runs")),
        sa.UniqueConstraint("rule_id", "month", name=op.f("uq_apportion_runs_rule_id")),
    )
    op.create_table(
        "apportion_shares",
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("weight", sa.BigInteger(), nullable=False),
        sa.Column("energy_wh", sa.BigInteger(), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("entry_key", sa.String(length=200), nullable=True),
        sa.Column("bill_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.CheckConstraint(
            "weight >= 0 AND energy_wh >= 0 AND amount_micros >= 0", name=op.f("ck_apportion_shares_values")
        ),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_apportion_shares_account_id_accounts")),
        sa.ForeignKeyConstraint(["bill_id"], ["bills.id"], name=op.f("fk_apportion_shares_bill_id_bills")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["apportion_runs.id"], name=op.f("fk_apportion_shares_run_id_apportion_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "account_id", name=op.f("pk_apportion_shares")),
    )
    op.create_table(
        "bill_lines",
        sa.Column("bill_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("quantity_wh", sa.BigInteger(), nullable=True),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("posted", sa.Boolean(), nullable=False),
        sa.Column("revenue", sa.String(length=120), nullable=True),
        sa.Column("detail", sa.Text(), server_default="{}", nullable=False),
        sa.CheckConstraint(
            "kind IN ('energy', 'standing', 'charge', 'apportionment')", name=op.f("ck_bill_lines_kind")
        ),
        sa.CheckConstraint("amount_micros >= 0", name=op.f("ck_bill_lines_amount")),
        sa.CheckConstraint("posted OR revenue IS NOT NULL", name=op.f("ck_bill_lines_revenue")),
        sa.ForeignKeyConstraint(["bill_id"], ["bills.id"], name=op.f("fk_bill_lines_bill_id_bills")),
        sa.PrimaryKeyConstraint("bill_id", "line_no", name=op.f("pk_bill_lines")),
    )
    op.create_table(
        "postpaid_accounts",
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("due_days", sa.Integer(), nullable=False),
        sa.Column("since", UTCDateTime, nullable=False),
        sa.CheckConstraint("due_days >= 1 AND due_days <= 90", name=op.f("ck_postpaid_accounts_due_days")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_postpaid_accounts_account_id_accounts")),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_postpaid_accounts")),
    )

    op.create_index("ix_charge_postings_account_id", "charge_postings", ["account_id"])
    op.create_index("ix_apportion_shares_account_id", "apportion_shares", ["account_id"])
    op.create_index("ix_bills_site_id_state", "bills", ["site_id", "state"])


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
