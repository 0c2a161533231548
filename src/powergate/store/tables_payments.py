"""Payments: orders, the notifications received about them, and refunds.

Invariants the database keeps (style rule 4; ``powergate.services.payments`` checks the same first):
- An order number is UNIQUE, and so is a provider transaction id per channel: one payment at the provider
  can be matched to one order only. The amount is a positive integer in fen (the currency's minor unit).
- An order's state is a closed list; a paid (or refunded) order has a payment time and a provider
  transaction id; the refunded amount never exceeds the order's amount.
- A notification id is UNIQUE per channel among *accepted* notifications: duplicates, forgeries and other
  rejections are logged with ``notification_id`` NULL (the id they claimed is kept in ``claimed_id``), so a
  forged copy that arrives first can never block the genuine one.
- A refund number is UNIQUE (it is also the ledger idempotency key ``refund:<refund_no>``); its amount is
  positive; destination and state are closed lists; a finished refund has a completion time.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, Index, String, Table, Text, UniqueConstraint

from powergate.store.tables import Id, UTCDateTime, metadata

CHANNELS = ("wechat", "alipay", "cashier", "bank", "sandbox")
ORDER_STATES = ("created", "paid", "closed", "expired", "refunded", "partially_refunded")
NOTIFICATION_VERDICTS = ("accepted", "duplicate", "rejected")
REFUND_DESTINATIONS = ("original", "cash")
REFUND_STATES = ("pending", "processing", "succeeded", "failed")
MAX_ORDER_FEN = 100_000_000
"""One order may carry at most 1,000,000.00 yuan: a typo guard and a bound on every sum."""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


orders = Table(
    "orders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("order_no", String(64), nullable=False),
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("site_id", String(64)),
    Column("channel", String(16), nullable=False),
    Column("method", String(16), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False, server_default="CNY"),
    Column("state", String(24), nullable=False),
    Column("description", String(128), nullable=False, server_default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("paid_at", UTCDateTime),
    Column("provider_txn_id", String(64)),
    Column("receipt_no", String(64)),
    Column("operator", String(120)),
    Column("refunded_fen", BigInteger, nullable=False, server_default="0"),
    Column("pay_parameters", Text),
    Column("closed_reason", Text),
    UniqueConstraint("order_no"),
    UniqueConstraint("channel", "provider_txn_id", name="uq_orders_channel_provider_txn_id"),
    CheckConstraint(_in("channel", CHANNELS), name="channel"),
    CheckConstraint(_in("state", ORDER_STATES), name="state"),
    CheckConstraint(f"amount_fen > 0 AND amount_fen <= {MAX_ORDER_FEN}", name="amount"),
    CheckConstraint("refunded_fen >= 0 AND refunded_fen <= amount_fen", name="refunded"),
    CheckConstraint(
        "state IN ('created', 'closed', 'expired') OR (paid_at IS NOT NULL AND provider_txn_id IS NOT NULL)",
        name="paid",
    ),
    CheckConstraint("expires_at > created_at", name="expiry"),
    Index("ix_orders_state_expires_at", "state", "expires_at"),
    Index("ix_orders_site_id_created_at", "site_id", "created_at"),
    Index("ix_orders_paid_at", "paid_at"),
    Index("ix_orders_wallet_account_id", "wallet_account_id"),
)

payment_notifications = Table(
    "payment_notifications",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),
    Column("notification_id", String(128)),
    Column("claimed_id", String(128)),
    Column("order_no", String(64)),
    Column("received_at", UTCDateTime, nullable=False),
    Column("verdict", String(12), nullable=False),
    Column("reason", Text, nullable=False),
    UniqueConstraint("channel", "notification_id", name="uq_payment_notifications_channel_notification_id"),
    CheckConstraint(_in("verdict", NOTIFICATION_VERDICTS), name="verdict"),
    CheckConstraint("notification_id IS NULL OR verdict = 'accepted'", name="unique_only_accepted"),
    CheckConstraint("reason <> ''", name="reason"),
    Index("ix_payment_notifications_order_no", "order_no"),
    Index("ix_payment_notifications_received_at", "received_at"),
)

refunds = Table(
    "refunds",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("refund_no", String(64), nullable=False),
    Column("order_no", String(64), ForeignKey("orders.order_no")),
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("destination", String(12), nullable=False),
    Column("state", String(12), nullable=False),
    Column("reason", Text, nullable=False),
    Column("operator", String(120), nullable=False),
    Column("site_id", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime),
    Column("provider_refund_id", String(64)),
    Column("failure", Text),
    UniqueConstraint("refund_no"),
    CheckConstraint(_in("channel", CHANNELS), name="channel"),
    CheckConstraint(_in("destination", REFUND_DESTINATIONS), name="destination"),
    CheckConstraint(_in("state", REFUND_STATES), name="state"),
    CheckConstraint(f"amount_fen > 0 AND amount_fen <= {MAX_ORDER_FEN}", name="amount"),
    CheckConstraint("destination = 'cash' OR order_no IS NOT NULL", name="original_needs_order"),
    CheckConstraint("state IN ('pending', 'processing') OR completed_at IS NOT NULL", name="completed"),
    CheckConstraint("reason <> '' AND operator <> ''", name="who_why"),
    Index("ix_refunds_order_no", "order_no"),
    Index("ix_refunds_created_at", "created_at"),
)
