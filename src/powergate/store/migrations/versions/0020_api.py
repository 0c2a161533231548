"""The HTTP API: tariff_owners (which organisation owns a tariff).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "tariff_owners",
        sa.Column("tariff_id", sa.String(64), sa.ForeignKey("tariffs.id"), primary_key=True),
        sa.Column("organisation_id", Id, sa.ForeignKey("organisations.id"), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_tariff_owners_organisation_id", "tariff_owners", ["organisation_id"])


def downgrade() -> None:
    op.drop_index("ix_tariff_owners_organisation_id", table_name="tariff_owners")
    op.drop_table("tariff_owners")
