"""Property billing tables: custom charge items, common-area apportionment, bills and post-paid accounts.

- ``charge_items``: a site's custom charge (rent, property fee, service fee): fixed per room or a price per m² of
  the room's area, on a schedule (once, monthly on a day, quarterly, yearly), for the rooms in a scope (the whole
  site, buildings, floors or a list of rooms), collected by deduction from the wallet or as a bill.
- ``charge_postings``: one row per (item, period, account, room) charged: the idempotency record of a charge run
  (UNIQUE), with the days held and the ledger key or bill it went to.
- ``apportion_rules`` / ``apportion_rule_versions``: a common-area rule, versioned (a change is a new version
  from a date; old months keep the version they were computed with).
- ``apportion_runs`` / ``apportion_shares``: a rule's month, computed once (UNIQUE rule + month), with each
  participant's weight, energy and amount, so a tenant sees how the share was computed.
- ``bills`` / ``bill_lines``: a statement to pay (post-paid consumption, or charges collected as a bill):
  draft -> confirmed -> issued -> paid | overdue (| void). Lines already in the ledger (post-paid deductions) are
  ``posted``; the others are posted when the bill is paid.
- ``postpaid_accounts``: accounts that pay after use, with the days a bill gives them to pay.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from powergate.store.tables import Id, UTCDateTime, metadata

BASES = ("fixed", "per_m2")
FREQUENCIES = ("once", "monthly", "quarterly", "yearly")
COLLECTIONS = ("deduct", "bill")
SCOPES = ("site", "buildings", "floors", "rooms")
SOURCES = ("total", "remainder")
METHODS = ("ratio", "area", "usage")
BILL_KINDS = ("postpaid", "charges")
BILL_STATES = ("draft", "confirmed", "issued", "paid", "overdue", "void")
LINE_KINDS = ("energy", "standing", "charge", "apportionment")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


charge_items = Table(
    "charge_items",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site_id", Id, ForeignKey("sites.id"), nullable=False),
    Column("code", String(32), nullable=False),
    Column("name", String(120), nullable=False),
    Column("basis", String(8), nullable=False),
    Column("rate_micros", BigInteger, nullable=False),
    Column("frequency", String(12), nullable=False),
    Column("start_on", Date, nullable=False),
    Column("due_day", Integer, nullable=False, server_default="1"),
    Column("end_on", Date),
    Column("collection", String(8), nullable=False),
    Column("scope", String(12), nullable=False),
    Column("scope_ids", Text, nullable=False, server_default="[]"),
    Column("active", Boolean, nullable=False, server_default="1"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(120), nullable=False),
    UniqueConstraint("site_id", "code"),
    CheckConstraint(_in("basis", BASES), name="basis"),
    CheckConstraint(_in("frequency", FREQUENCIES), name="frequency"),
    CheckConstraint(_in("collection", COLLECTIONS), name="collection"),
    CheckConstraint(_in("scope", SCOPES), name="scope"),
    CheckConstraint("rate_micros >= 0 AND due_day >= 1 AND due_day <= 28", name="values"),
)

charge_postings = Table(
    "charge_postings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("item_id", Id, ForeignKey("charge_items.id"), nullable=False),
    Column("period_key", String(16), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("room_id", Id, ForeignKey("rooms.id"), nullable=False),
    Column("days", Integer, nullable=False),
    Column("period_days", Integer, nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("entry_key", String(200)),
    Column("bill_id", Id, ForeignKey("bills.id")),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("item_id", "period_key", "account_id", "room_id"),
    CheckConstraint("amount_micros >= 0 AND days >= 0 AND days <= period_days", name="values"),
    Index("ix_charge_postings_account_id", "account_id"),
)

apportion_rules = Table(
    "apportion_rules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site_id", Id, ForeignKey("sites.id"), nullable=False),
    Column("code", String(32), nullable=False),
    Column("name", String(120), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("site_id", "code"),
)

apportion_rule_versions = Table(
    "apportion_rule_versions",
    metadata,
    Column("rule_id", Id, ForeignKey("apportion_rules.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("master_meter_id", String(64), ForeignKey("meters.id"), nullable=False),
    Column("source", String(12), nullable=False),
    Column("sub_meters", Text, nullable=False, server_default="[]"),
    Column("method", String(8), nullable=False),
    Column("participants", Text, nullable=False),
    Column("price_micros_per_kwh", BigInteger),
    Column("collection", String(8), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(120), nullable=False),
    Column("reason", Text, nullable=False),
    PrimaryKeyConstraint("rule_id", "version"),
    UniqueConstraint("rule_id", "valid_from"),
    CheckConstraint(_in("source", SOURCES), name="source"),
    CheckConstraint(_in("method", METHODS), name="method"),
    CheckConstraint(_in("collection", COLLECTIONS), name="collection"),
    CheckConstraint("price_micros_per_kwh IS NULL OR price_micros_per_kwh >= 0", name="price"),
)

apportion_runs = Table(
    "apportion_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("rule_id", Id, ForeignKey("apportion_rules.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("month", Date, nullable=False),
    Column("master_wh", BigInteger, nullable=False),
    Column("sub_meters_wh", BigInteger, nullable=False),
    Column("energy_wh", BigInteger, nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("weight_total", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(120), nullable=False),
    UniqueConstraint("rule_id", "month"),
    CheckConstraint("energy_wh >= 0 AND amount_micros >= 0", name="values"),
)

apportion_shares = Table(
    "apportion_shares",
    metadata,
    Column("run_id", Id, ForeignKey("apportion_runs.id"), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("weight", BigInteger, nullable=False),
    Column("energy_wh", BigInteger, nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("entry_key", String(200)),
    Column("bill_id", Id, ForeignKey("bills.id")),
    PrimaryKeyConstraint("run_id", "account_id"),
    CheckConstraint("weight >= 0 AND energy_wh >= 0 AND amount_micros >= 0", name="values"),
    Index("ix_apportion_shares_account_id", "account_id"),
)

bills = Table(
    "bills",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("bill_no", String(40), nullable=False, unique=True),
    Column("site_id", Id, ForeignKey("sites.id"), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("kind", String(12), nullable=False),
    Column("period_first", Date, nullable=False),
    Column("period_last", Date, nullable=False),
    Column("state", String(12), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("due_on", Date),
    Column("order_no", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(120), nullable=False),
    Column("confirmed_at", UTCDateTime),
    Column("issued_at", UTCDateTime),
    Column("paid_at", UTCDateTime),
    UniqueConstraint("account_id", "kind", "period_first"),
    CheckConstraint(_in("kind", BILL_KINDS), name="kind"),
    CheckConstraint(_in("state", BILL_STATES), name="state"),
    CheckConstraint("amount_micros >= 0 AND period_last >= period_first", name="values"),
    CheckConstraint("state NOT IN ('issued', 'paid', 'overdue') OR due_on IS NOT NULL", name="due"),
    Index("ix_bills_site_id_state", "site_id", "state"),
)

bill_lines = Table(
    "bill_lines",
    metadata,
    Column("bill_id", Id, ForeignKey("bills.id"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("description", String(200), nullable=False),
    Column("quantity_wh", BigInteger),
    Column("amount_micros", BigInteger, nullable=False),
    Column("posted", Boolean, nullable=False),
    Column("revenue", String(120)),
    Column("detail", Text, nullable=False, server_default="{}"),
    PrimaryKeyConstraint("bill_id", "line_no"),
    CheckConstraint(_in("kind", LINE_KINDS), name="kind"),
    CheckConstraint("amount_micros >= 0", name="amount"),
    CheckConstraint("posted OR revenue IS NOT NULL", name="revenue"),
)

postpaid_accounts = Table(
    "postpaid_accounts",
    metadata,
    Column("account_id", Id, ForeignKey("accounts.id"), primary_key=True),
    Column("due_days", Integer, nullable=False),
    Column("since", UTCDateTime, nullable=False),
    CheckConstraint("due_days >= 1 AND due_days <= 90", name="due_days"),
)
