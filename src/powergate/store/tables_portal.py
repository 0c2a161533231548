"""Tenant portal tables: SMS login codes and failed code logins (the rate limiter's memory).

Invariants the database keeps (style rule 4; ``powergate.services.portal`` checks the same first):
- A login code is stored only as an HMAC-SHA256 of (phone, code) under the server's secret key: a copy of the
  database does not reveal a usable code. It expires (``expires_at > created_at``), is used at most once
  (``consumed_at`` is set by a conditional UPDATE) and takes at most ``MAX_CODE_ATTEMPTS`` guesses (CHECK).
- ``delivery`` is a closed list: ``sending`` until the SMS gateway answered, then ``sent`` or ``failed``.
- ``portal_login_failures`` is append-only; its rows only count failed code logins per phone and per client
  inside a window (password logins are limited by ``services.users.authenticate``).
  Both tables are pruned after ``RETENTION`` (``services.portal.prune``).
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, Index, Integer, String, Table

from powergate.store.tables import Id, UTCDateTime, metadata

MAX_CODE_ATTEMPTS = 5
CODE_DELIVERIES = ("sending", "sent", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


portal_login_codes = Table(
    "portal_login_codes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("phone", String(20), nullable=False),
    Column("code_hash", String(64), nullable=False),
    Column("client", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("consumed_at", UTCDateTime),
    Column("delivery", String(8), nullable=False, server_default="sending"),
    CheckConstraint(f"attempts >= 0 AND attempts <= {MAX_CODE_ATTEMPTS}", name="attempts"),
    CheckConstraint("expires_at > created_at", name="expiry"),
    CheckConstraint(_in("delivery", CODE_DELIVERIES), name="delivery"),
    Index("ix_portal_login_codes_phone_created_at", "phone", "created_at"),
    Index("ix_portal_login_codes_client_created_at", "client", "created_at"),
)

portal_login_failures = Table(
    "portal_login_failures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("phone", String(20), nullable=False),
    Column("client", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_portal_login_failures_phone_at", "phone", "at"),
    Index("ix_portal_login_failures_client_at", "client", "at"),
)
