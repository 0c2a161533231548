"""Authentication tables: users, sessions and bearer tokens, API keys, login failures, idempotency keys.

Invariants the database keeps (style rule 4; ``powergate.services.users`` checks the same first):
- A username is unique within its organisation; roles are a closed list; a tenant user is bound to exactly one
  account and a staff user to none.
- Secrets are never stored: passwords as argon2 hashes, session / bearer tokens and API keys as SHA-256 of a
  random 256-bit value (UNIQUE, so a lookup is one index probe). An API key's short prefix is stored in clear to
  tell keys apart in lists.
- A session is ``kind`` session (cookie, with a CSRF token) or bearer (``Authorization`` header, no CSRF).
- ``login_failures`` holds only failed attempts of the last window (rate limiting across processes).
- ``idempotency_keys``: one row per (organisation, user, key) (UNIQUE: inserting the "running" row is the lock);
  state running -> done; a done row has a status and a body.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from powergate.store.tables import Id, UTCDateTime, metadata

USER_ROLES = ("admin", "operator", "finance", "viewer", "tenant")
SESSION_KINDS = ("session", "bearer")
IDEMPOTENCY_STATES = ("running", "done")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("organisation_id", Id, ForeignKey("organisations.id"), nullable=False),
    Column("username", String(64), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id")),
    Column("phone", String(20)),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_login_at", UTCDateTime),
    Column("password_changed_at", UTCDateTime, nullable=False),
    UniqueConstraint("organisation_id", "username"),
    CheckConstraint(_in("role", USER_ROLES), name="role"),
    CheckConstraint(
        "(role = 'tenant' AND account_id IS NOT NULL) OR (role <> 'tenant' AND account_id IS NULL)", name="tenant"
    ),
    CheckConstraint("username <> ''", name="username"),
    Index("ix_users_phone", "phone"),
    Index("ix_users_account_id", "account_id"),
)

auth_sessions = Table(
    "auth_sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("csrf_token", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("kind", SESSION_KINDS), name="kind"),
    CheckConstraint("kind <> 'session' OR csrf_token IS NOT NULL", name="csrf"),
    Index("ix_auth_sessions_user_id", "user_id"),
    Index("ix_auth_sessions_expires_at", "expires_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("organisation_id", Id, ForeignKey("organisations.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("created_by", String(120), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    UniqueConstraint("organisation_id", "name"),
    CheckConstraint(_in("role", tuple(r for r in USER_ROLES if r != "tenant")), name="role"),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("organisation_code", String(32), nullable=False),
    Column("username", String(64), nullable=False),
    Column("client_ip", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_login_failures_who_at", "organisation_code", "username", "at"),
    Index("ix_login_failures_client_ip_at", "client_ip", "at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("organisation_id", Id, ForeignKey("organisations.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    Column("key", String(200), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(8), nullable=False),
    Column("status", Integer),
    Column("body", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime),
    UniqueConstraint("organisation_id", "user_id", "key"),
    CheckConstraint(_in("state", IDEMPOTENCY_STATES), name="state"),
    CheckConstraint(
        "(state = 'running' AND status IS NULL) OR (state = 'done' AND status IS NOT NULL AND body IS NOT NULL)",
        name="done",
    ),
    Index("ix_idempotency_keys_created_at", "created_at"),
)
