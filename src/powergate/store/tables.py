"""Database tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

The invariants the domain checks are checked again here (style rule 4): the idempotency key of a ledger entry
and the id of a reading are UNIQUE, postings are non-zero, overdraft limits are non-negative, the rating carry is
0..999, kinds and statuses are CHECKed lists, and every reference is a foreign key. Times are stored in UTC
(``UTCDateTime``). Migrations (``store/migrations``) create these tables; a test compares the two.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

Id = BigInteger().with_variant(Integer, "sqlite")
"""A 64-bit surrogate key; INTEGER on SQLite so it is the rowid and autoincrements."""


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware datetimes stored as UTC; naive datetimes are refused (a programmer error)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        assert value.tzinfo is not None, f"naive datetime {value!r} given to the database"
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


ACCOUNT_KINDS = ("wallet", "revenue", "clearing", "equity")
ENTRY_KINDS = ("recharge", "deduction", "refund", "standing_charge", "adjustment", "reversal")
READING_KINDS = ("regular", "final", "initial")
READING_STATUSES = ("rated", "skipped", "quarantined")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


ledger_accounts = Table(
    "ledger_accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("code", String(120), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("currency", String(3), nullable=False, server_default="CNY"),
    Column("overdraft_limit_micros", BigInteger, nullable=False, server_default="0"),
    Column("balance_micros", BigInteger, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("kind", ACCOUNT_KINDS), name="kind"),
    CheckConstraint("overdraft_limit_micros >= 0", name="overdraft_limit"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("kind", String(24), nullable=False),
    Column("event_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    CheckConstraint(_in("kind", ENTRY_KINDS), name="kind"),
)

ledger_postings = Table(
    "ledger_postings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("entry_id", Id, ForeignKey("ledger_entries.id"), nullable=False),
    Column("account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    CheckConstraint("amount_micros <> 0", name="nonzero"),
    Index("ix_ledger_postings_account_id", "account_id"),
    Index("ix_ledger_postings_entry_id", "entry_id"),
)

tariffs = Table(
    "tariffs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("commodity", String(16), nullable=False),
    Column("document", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("commodity", ("electricity", "water")), name="commodity"),
)

meters = Table(
    "meters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("tariff_id", String(64), ForeignKey("tariffs.id"), nullable=False),
    Column("timezone", String(64), nullable=False, server_default="Asia/Shanghai"),
    Column("register_max_wh", BigInteger, nullable=False, server_default="999999990"),
    Column("max_power_w", BigInteger, nullable=False, server_default="100000"),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("register_max_wh > 0 AND max_power_w > 0", name="limits"),
    Index("ix_meters_wallet_account_id", "wallet_account_id"),
)

meter_rating_state = Table(
    "meter_rating_state",
    metadata,
    Column("meter_id", String(64), ForeignKey("meters.id"), primary_key=True),
    Column("last_reading_id", String(128)),
    Column("last_at", UTCDateTime),
    Column("last_total_wh", BigInteger),
    Column("last_sharp_wh", BigInteger),
    Column("last_peak_wh", BigInteger),
    Column("last_flat_wh", BigInteger),
    Column("last_valley_wh", BigInteger),
    Column("awaiting_initial", Boolean, nullable=False, server_default="0"),
    Column("cycle_start", Date),
    Column("cycle_energy_wh", BigInteger, nullable=False, server_default="0"),
    Column("carry_nanos", Integer, nullable=False, server_default="0"),
    CheckConstraint("carry_nanos >= 0 AND carry_nanos < 1000", name="carry"),
    CheckConstraint("cycle_energy_wh >= 0", name="cycle_energy"),
)

readings = Table(
    "readings",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("meter_id", String(64), ForeignKey("meters.id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("total_wh", BigInteger, nullable=False),
    Column("sharp_wh", BigInteger),
    Column("peak_wh", BigInteger),
    Column("flat_wh", BigInteger),
    Column("valley_wh", BigInteger),
    Column("kind", String(8), nullable=False, server_default="regular"),
    Column("status", String(12), nullable=False),
    Column("reason", Text),
    Column("amount_micros", BigInteger),
    Column("estimated", Boolean, nullable=False, server_default="0"),
    Column("entry_id", Id, ForeignKey("ledger_entries.id")),
    Column("received_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("kind", READING_KINDS), name="kind"),
    CheckConstraint(_in("status", READING_STATUSES), name="status"),
    CheckConstraint("amount_micros IS NULL OR amount_micros >= 0", name="amount"),
    Index("ix_readings_meter_id_at", "meter_id", "at"),
)
