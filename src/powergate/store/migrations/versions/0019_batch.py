"""Batch operations: account_tags, batches, batch_targets.

Revision ID: 0019
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0019"
down_revision = "0015"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPERATIONS = (
    "'set_tariff', 'trip', 'close', 'power_protect_on', 'power_protect_off', 'set_alarms', 'set_power_limit', "
    "'push_prices', 'recharge', 'grant_allowance'"
)


def upgrade() -> None:
    op.create_table(
        "account_tags",
        sa.Column("account_id", Id, nullable=False),
        sa.Column("tag", sa.String(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.CheckConstraint("tag <> ''", name=op.f("ck_account_tags_tag")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_account_tags_account_id_accounts")),
        sa.PrimaryKeyConstraint("account_id", "tag", name=op.f("pk_account_tags")),
    )
    op.create_index("ix_account_tags_tag", "account_tags", ["tag"])
    op.create_table(
        "batches",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("organisation_id", Id, nullable=False),
        sa.Column("operation", sa.String(length=24), nullable=False),
        sa.Column("parameters", sa.Text(), server_default="{}", nullable=False),
        sa.Column("selection", sa.Text(), server_default="{}", nullable=False),
        sa.Column("target_kind", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("run_at", UTCDateTime, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("max_in_flight_per_link", sa.Integer(), nullable=False),
        sa.Column("command_valid_s", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint(f"operation IN ({OPERATIONS})", name=op.f("ck_batches_operation")),
        sa.CheckConstraint("state IN ('scheduled', 'running', 'done', 'cancelled')", name=op.f("ck_batches_state")),
        sa.CheckConstraint("target_kind IN ('meter', 'account')", name=op.f("ck_batches_target_kind")),
        sa.CheckConstraint(
            "total >= 1 AND max_in_flight_per_link >= 1 AND command_valid_s >= 1 AND retries >= 0",
            name=op.f("ck_batches_limits"),
        ),
        sa.CheckConstraint("reason <> '' AND created_by <> ''", name=op.f("ck_batches_who_why")),
        sa.ForeignKeyConstraint(
            ["organisation_id"], ["organisations.id"], name=op.f("fk_batches_organisation_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_organisation_id", "batches", ["organisation_id", "created_at"])
    op.create_index("ix_batches_state", "batches", ["state", "run_at"])
    op.create_table(
        "batch_targets",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("batch_id", Id, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=True),
        sa.Column("account_id", Id, nullable=True),
        sa.Column("label", sa.String(length=120), nullable=False),
        sa.Column("link_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("command_ids", sa.Text(), server_default="[]", nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'submitted', 'succeeded', 'failed', 'skipped', 'cancelled')",
            name=op.f("ck_batch_targets_state"),
        ),
        sa.CheckConstraint("(meter_id IS NULL) <> (account_id IS NULL)", name=op.f("ck_batch_targets_one_target")),
        sa.CheckConstraint("attempt >= 1 AND position >= 0", name=op.f("ck_batch_targets_attempt")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_batch_targets_account_id_accounts")),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_batch_targets_batch_id_batches")),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name=op.f("fk_batch_targets_meter_id_meters")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_targets")),
        sa.UniqueConstraint("batch_id", "meter_id", name="uq_batch_targets_meter"),
        sa.UniqueConstraint("batch_id", "account_id", name="uq_batch_targets_account"),
    )
    op.create_index("ix_batch_targets_batch_id", "batch_targets", ["batch_id", "state", "position"])
    op.create_index("ix_batch_targets_state", "batch_targets", ["state", "link_id"])


def downgrade() -> None:
    op.drop_table("batch_targets")
    op.drop_table("batches")
    op.drop_table("account_tags")
