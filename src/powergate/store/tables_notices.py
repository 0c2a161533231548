"""What the notice producers remember between passes (see ``powergate.services.notices``).

- ``notice_cursors``: per producer, how far it has read its source (an id or an ISO instant, as text), so a pass
  reads only what is new. Losing a cursor is harmless: events are keyed, so re-reading notifies nobody twice.
- ``runout_alerts``: per wallet, the balance at which a run-out forecast notice last went out. A new notice goes
  out only after the balance rose above it (a recharge re-arms the alert), so a tenant hears once per crossing.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, String, Table

from powergate.store.tables import Id, UTCDateTime, metadata

notice_cursors = Table(
    "notice_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", String(200), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

runout_alerts = Table(
    "runout_alerts",
    metadata,
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), primary_key=True),
    Column("balance_micros", BigInteger, nullable=False),
    Column("alerted_at", UTCDateTime, nullable=False),
    CheckConstraint("balance_micros >= 0", name="balance"),
)
