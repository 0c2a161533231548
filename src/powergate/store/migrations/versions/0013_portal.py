"""Tenant portal: portal_login_codes (SMS login codes, hashed) and portal_login_failures (rate limiting).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "portal_login_codes",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("phone", sa.String(20), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("consumed_at", UTCDateTime),
        sa.Column("delivery", sa.String(8), nullable=False, server_default="sending"),
        sa.CheckConstraint("attempts >= 0 AND attempts <= 5", name="attempts"),
        sa.CheckConstraint("expires_at > created_at", name="expiry"),
        sa.CheckConstraint("delivery IN ('sending', 'sent', 'failed')", name="delivery"),
    )
    op.create_index("ix_portal_login_codes_phone_created_at", "portal_login_codes", ["phone", "created_at"])
    op.create_index("ix_portal_login_codes_client_created_at", "portal_login_codes", ["client", "created_at"])
    op.create_table(
        "portal_login_failures",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("phone", sa.String(20), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_portal_login_failures_phone_at", "portal_login_failures", ["phone", "at"])
    op.create_index("ix_portal_login_failures_client_at", "portal_login_failures", ["client", "at"])


def downgrade() -> None:
    op.drop_table("portal_login_failures")
    op.drop_table("portal_login_codes")
