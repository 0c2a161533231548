"""The ingest queue: ingest_batches (head-ends in queue mode hand batches of readings to the workers).

Revision ID: 0022
Revises: 0020
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ingest_batches",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("enqueued_at", UTCDateTime, nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=8), server_default="queued", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failed_at", UTCDateTime, nullable=True),
        sa.CheckConstraint("state IN ('queued', 'failed')", name=op.f("ck_ingest_batches_state")),
        sa.CheckConstraint("count >= 1 AND count <= 20000", name=op.f("ck_ingest_batches_count")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_ingest_batches_attempts")),
        sa.CheckConstraint(
            "state <> 'failed' OR (last_error IS NOT NULL AND failed_at IS NOT NULL)",
            name=op.f("ck_ingest_batches_failed"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_batches")),
    )
    op.create_index("ix_ingest_batches_state_id", "ingest_batches", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_ingest_batches_state_id", table_name="ingest_batches")
    op.drop_table("ingest_batches")
