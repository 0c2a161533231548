"""Notification tables: recipients, their preferences, editable templates, and the messages themselves.

Invariants the database keeps (style rule 4; ``powergate.domain.notifications`` checks the same first):
- A recipient is either a tenant (``account_id`` set) or a site administrator (``admin_login`` set), never both;
  languages and roles are closed lists.
- One template per (event, language, channel) (UNIQUE); an admin edit replaces the row and is audited.
- One message per event per recipient per channel: UNIQUE(event_key, recipient_id, channel). Notifying an event
  again, from a retried outbox relay, cannot add a second message.
- A message's state is a closed list (queued / sent / delivered / failed); attempts are bounded; a claim
  (``claimed_by`` + ``claimed_until``) is a lease, so a crashed worker's claims are taken over when it expires.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from powergate.domain.notifications import CHANNELS, LANGUAGES, MAX_ATTEMPTS, EventKind
from powergate.store.tables import Id, UTCDateTime, metadata

EVENT_KINDS = tuple(k.value for k in EventKind)
RECIPIENT_ROLES = ("tenant", "admin")
NOTIFICATION_STATES = ("queued", "sent", "delivered", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


notification_recipients = Table(
    "notification_recipients",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site_id", Id, ForeignKey("sites.id"), nullable=False),
    Column("role", String(8), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), unique=True),
    Column("admin_login", String(120)),
    Column("name", String(120), nullable=False),
    Column("language", String(8), nullable=False, server_default="zh-CN"),
    Column("email", String(254)),
    Column("phone", String(20)),
    Column("wechat_openid", String(64)),
    Column("push_token", String(256)),
    Column("webhook_url", String(500)),
    # Quiet hours as minutes after local midnight; equal values (or NULL) mean no quiet hours.
    Column("quiet_start_min", Integer),
    Column("quiet_end_min", Integer),
    Column("active", Boolean, nullable=False, server_default="1"),
    UniqueConstraint("site_id", "admin_login"),
    CheckConstraint(_in("role", RECIPIENT_ROLES), name="role"),
    CheckConstraint(_in("language", LANGUAGES), name="language"),
    CheckConstraint(
        "(role = 'tenant' AND account_id IS NOT NULL AND admin_login IS NULL)"
        " OR (role = 'admin' AND account_id IS NULL AND admin_login IS NOT NULL)",
        name="who",
    ),
    CheckConstraint(
        "(quiet_start_min IS NULL AND quiet_end_min IS NULL) OR (quiet_start_min BETWEEN 0 AND 1439"
        " AND quiet_end_min BETWEEN 0 AND 1439)",
        name="quiet",
    ),
)

notification_preferences = Table(
    "notification_preferences",
    metadata,
    Column("recipient_id", Id, ForeignKey("notification_recipients.id"), nullable=False),
    Column("event", String(32), nullable=False),
    # Comma-separated channel names; empty text means "this event: no messages".
    Column("channels", String(64), nullable=False),
    PrimaryKeyConstraint("recipient_id", "event"),
    CheckConstraint(_in("event", EVENT_KINDS), name="event"),
)

notification_templates = Table(
    "notification_templates",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event", String(32), nullable=False),
    Column("language", String(8), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("updated_by", String(120), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("event", "language", "channel"),
    CheckConstraint(_in("event", EVENT_KINDS), name="event"),
    CheckConstraint(_in("language", LANGUAGES), name="language"),
    CheckConstraint(_in("channel", CHANNELS), name="channel"),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_key", String(200), nullable=False),
    Column("event", String(32), nullable=False),
    Column("recipient_id", Id, ForeignKey("notification_recipients.id"), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("address", String(500), nullable=False),
    Column("language", String(8), nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("data", Text, nullable=False, server_default="{}"),
    Column("state", String(10), nullable=False, server_default="queued"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Each resend is a new message to the provider: it gets a new message id (``ntf-<id>-<resends>``).
    Column("resends", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_by", String(64)),
    Column("claimed_until", UTCDateTime),
    Column("provider_id", String(200)),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("delivered_at", UTCDateTime),
    UniqueConstraint("event_key", "recipient_id", "channel"),
    CheckConstraint(_in("state", NOTIFICATION_STATES), name="state"),
    CheckConstraint(_in("channel", CHANNELS), name="channel"),
    CheckConstraint(f"attempts >= 0 AND attempts <= {MAX_ATTEMPTS}", name="attempts"),
    CheckConstraint("resends >= 0 AND resends <= 100", name="resends"),
    # "due queued messages, soonest first": the worker's claim query
    Index("ix_notifications_state_next_attempt_at", "state", "next_attempt_at"),
    Index("ix_notifications_recipient_id_created_at", "recipient_id", "created_at"),
)
