"""Prepaid control tables: each wallet's balance policy and policy state, and the transactional outbox.

- ``wallet_policies``: per wallet (its ledger account id), the warning levels (JSON list of micros; NULL: the
  defaults 50 / 20 / 10 yuan), the reconnect threshold, power-protect, temporary supply until an instant, the
  friendly-credit window (``'default'``: 20:00-08:00 plus non-workdays; ``'off'``; or ``HH:MM-HH:MM`` with an
  optional ``+nonworkdays``) and the billing mode (``platform``: we rate and send trip / close; ``meter``: the
  meter keeps the balance and trips itself, so the platform decides nothing about its relay).
- ``wallet_states``: what the policy remembers between balances: the levels fired (JSON list), whether supply is
  on (the platform's last intent), a trip deferred to ``trip_due_at``, and ``generation``, bumped by every
  decision so that outbox keys derived from it are unique per decision.
- ``outbox``: everything that must happen after a commit (a relay command, a notification), written in the same
  transaction as the change that caused it. ``key`` is UNIQUE: the idempotency key of the decision, so a
  decision evaluated twice (two workers) cannot be queued twice. Consumers mark rows processed; they must be
  idempotent, since a crash between acting and marking repeats the action (at-least-once delivery).

The database checks again what the code keeps: closed lists of modes and kinds, non-negative amounts and
attempts, and a processed row is processed once (``processed_at`` set at most once by the relay's WHERE).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, ForeignKey, Index, Integer, String, Table, Text

from powergate.store.tables import Id, UTCDateTime, metadata

BILLING_MODES = ("platform", "meter")
OUTBOX_KINDS = ("warning", "trip", "close", "trip_deferred", "recharged", "remote_operation")
MAX_OUTBOX_ATTEMPTS = 1_000


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


wallet_policies = Table(
    "wallet_policies",
    metadata,
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), primary_key=True),
    Column("warning_levels", Text),
    Column("reconnect_micros", BigInteger, nullable=False, server_default="0"),
    Column("power_protect", Boolean, nullable=False, server_default="0"),
    Column("temporary_until", UTCDateTime),
    Column("friendly_window", String(40), nullable=False, server_default="default"),
    Column("billing_mode", String(12), nullable=False, server_default="platform"),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("reconnect_micros >= 0", name="reconnect"),
    CheckConstraint(_in("billing_mode", BILLING_MODES), name="billing_mode"),
)

wallet_states = Table(
    "wallet_states",
    metadata,
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), primary_key=True),
    Column("fired_levels", Text, nullable=False, server_default="[]"),
    Column("supply_on", Boolean, nullable=False, server_default="1"),
    Column("trip_due_at", UTCDateTime),
    Column("generation", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("generation >= 0", name="generation"),
    # "trips due by now": the periodic due-trip sweep looks wallets up by this index
    Index("ix_wallet_states_trip_due_at", "trip_due_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(24), nullable=False),
    Column("key", String(200), nullable=False, unique=True),
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id")),
    Column("payload", Text, nullable=False, server_default="{}"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("available_at", UTCDateTime, nullable=False),
    Column("processed_at", UTCDateTime),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    CheckConstraint(_in("kind", OUTBOX_KINDS), name="kind"),
    CheckConstraint(f"attempts >= 0 AND attempts <= {MAX_OUTBOX_ATTEMPTS}", name="attempts"),
    # "unprocessed rows of these kinds, oldest first": the relay's query
    Index("ix_outbox_kind_processed_at", "kind", "processed_at", "id"),
)
