"""Auto-recharge: wallets bound to a payment agreement, and the automatic orders placed under it.

- ``autorecharge_bindings``: one per wallet (its ledger account id). The wallet tops up by ``amount_micros``
  through ``channel`` under ``agreement_id`` (the provider's withholding contract, 委托代扣协议) when its
  balance falls below ``threshold_micros``. ``armed`` is true until a crossing is acted on and becomes true
  again only once the balance is back at or above the threshold; ``crossings`` counts the crossings acted on.
  Claiming a crossing is a conditional UPDATE (``armed AND crossings = n``), so two workers cannot both act.
- ``autorecharge_runs``: one row per crossing acted on, UNIQUE (wallet, crossing) and UNIQUE ``order_no``: at
  most one automatic order per wallet per crossing, whatever the concurrency or restarts. ``state`` goes
  ``placed`` -> ``credited`` (the payment settled through the normal path), or ``refused`` (the site's rules
  or the provider said no; nothing was charged) / ``failed`` (gave up after ``attempts``). A ``placed`` run
  left by a crash is resumed with the same order number, which the provider de-duplicates.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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

RUN_STATES = ("placed", "credited", "refused", "failed")
MAX_AMOUNT_MICROS = 10_000_000_000
"""10,000 yuan: far above any sensible automatic top-up."""

autorecharge_bindings = Table(
    "autorecharge_bindings",
    metadata,
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("agreement_id", String(64), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("threshold_micros", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("armed", Boolean, nullable=False),
    Column("crossings", BigInteger, nullable=False, server_default="0"),
    Column("last_run_at", UTCDateTime),
    Column("last_error", Text),
    Column("updated_by", String(120), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(f"amount_micros > 0 AND amount_micros <= {MAX_AMOUNT_MICROS}", name="amount"),
    CheckConstraint("amount_micros % 10000 = 0", name="whole_fen"),
    CheckConstraint("threshold_micros >= 0", name="threshold"),
    CheckConstraint("crossings >= 0", name="crossings"),
    Index("ix_autorecharge_bindings_active", "active", "armed"),
)

autorecharge_runs = Table(
    "autorecharge_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("crossing", BigInteger, nullable=False),
    Column("order_no", String(64), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("balance_micros", BigInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("message", Text),
    Column("lease_until", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("wallet_account_id", "crossing"),
    CheckConstraint("state IN ('placed', 'credited', 'refused', 'failed')", name="state"),
    CheckConstraint("amount_micros > 0 AND attempts >= 0 AND crossing >= 1", name="amounts"),
    Index("ix_autorecharge_runs_state", "state"),
)
