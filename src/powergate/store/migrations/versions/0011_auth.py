"""Authentication: users, auth_sessions, api_keys, login_failures, idempotency_keys.

Revision ID: 0011
Revises: 0018
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0011"
down_revision = "0018"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
ROLES = "role IN ('admin', 'operator', 'finance', 'viewer', 'tenant')"
STAFF_ROLES = "role IN ('admin', 'operator', 'finance', 'viewer')"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("organisation_id", Id, sa.ForeignKey("organisations.id"), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id")),
        sa.Column("phone", sa.String(20)),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_login_at", UTCDateTime),
        sa.Column("password_changed_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("organisation_id", "username"),
        sa.CheckConstraint(ROLES, name="role"),
        sa.CheckConstraint(
            "(role = 'tenant' AND account_id IS NOT NULL) OR (role <> 'tenant' AND account_id IS NULL)",
            name="tenant",
        ),
        sa.CheckConstraint("username <> ''", name="username"),
    )
    op.create_index("ix_users_phone", "users", ["phone"])
    op.create_index("ix_users_account_id", "users", ["account_id"])
    op.create_table(
        "auth_sessions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("csrf_token", sa.String(64)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_seen_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("kind IN ('session', 'bearer')", name="kind"),
        sa.CheckConstraint("kind <> 'session' OR csrf_token IS NOT NULL", name="csrf"),
    )
    op.create_index("ix_auth_sessions_user_id", "auth_sessions", ["user_id"])
    op.create_index("ix_auth_sessions_expires_at", "auth_sessions", ["expires_at"])
    op.create_table(
        "api_keys",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("organisation_id", Id, sa.ForeignKey("organisations.id"), nullable=False),
        sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(120), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_used_at", UTCDateTime),
        sa.Column("revoked_at", UTCDateTime),
        sa.UniqueConstraint("organisation_id", "name"),
        sa.CheckConstraint(STAFF_ROLES, name="role"),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("organisation_code", sa.String(32), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_login_failures_who_at", "login_failures", ["organisation_code", "username", "at"])
    op.create_index("ix_login_failures_client_ip_at", "login_failures", ["client_ip", "at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("organisation_id", Id, sa.ForeignKey("organisations.id"), nullable=False),
        sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("body", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("completed_at", UTCDateTime),
        sa.UniqueConstraint("organisation_id", "user_id", "key"),
        sa.CheckConstraint("state IN ('running', 'done')", name="state"),
        sa.CheckConstraint(
            "(state = 'running' AND status IS NULL) OR (state = 'done' AND status IS NOT NULL AND body IS NOT NULL)",
            name="done",
        ),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("login_failures")
    op.drop_table("api_keys")
    op.drop_table("auth_sessions")
    op.drop_table("users")
