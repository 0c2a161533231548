"""Meter-side billing: the platform's mirror of each meter's own balance, and reconciliation alarms.

``meter_side_state`` has one row per meter in meter-side billing (the meter holds the balance and trips
itself). ``next_purchase_count`` is the next count the platform will allocate to a recharge; counts are
allocated in the transaction that credits the ledger, so the counter and the money never disagree.
``last_pushed_purchase_count`` is the highest allocated count the meter has been seen to hold. The ``mirrored_*``
columns are what the meter last reported (NULL until the first prepaid read).

``reconciliation_alarms`` records each mismatch once per (day, subject, kind): a mismatch seen on every read of
the day raises one alarm, not thousands.

Checked again in the database (style rule 4): counts are non-negative, a meter has seen no more than was
allocated, amounts mirrored from a meter fit its registers, alarm kinds are a closed list.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, Date, ForeignKey, String, Table, Text, UniqueConstraint

from powergate.store.tables import Id, UTCDateTime, metadata

ALARM_KINDS = (
    "purchase_count_behind",
    "purchase_count_ahead",
    "remaining_amount",
    "ledger",
    "flow",
)
"""``purchase_count_behind``: the meter lost a recharge it had shown; ``purchase_count_ahead``: the meter holds
purchases the platform never allocated; ``remaining_amount``: the meter's remaining amount is outside the
tolerance of the platform's view; ``ledger`` and ``flow``: found by the daily reconciliation."""

MAX_MESSAGE_CHARS = 2_000


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


meter_side_state = Table(
    "meter_side_state",
    metadata,
    Column("meter_id", String(64), ForeignKey("meters.id"), primary_key=True),
    Column("next_purchase_count", BigInteger, nullable=False),
    Column("last_pushed_purchase_count", BigInteger, nullable=False),
    Column("mirrored_remaining_micros", BigInteger),
    Column("mirrored_overdraft_micros", BigInteger),
    Column("mirrored_purchase_count", BigInteger),
    Column("mirrored_at", UTCDateTime),
    Column("enrolled_at", UTCDateTime, nullable=False),
    CheckConstraint("next_purchase_count >= 1", name="next_count"),
    CheckConstraint(
        "last_pushed_purchase_count >= 0 AND last_pushed_purchase_count < next_purchase_count", name="pushed_count"
    ),
    CheckConstraint("mirrored_purchase_count IS NULL OR mirrored_purchase_count >= 0", name="mirrored_count"),
    CheckConstraint("mirrored_remaining_micros IS NULL OR mirrored_remaining_micros >= 0", name="mirrored_remaining"),
    CheckConstraint("mirrored_overdraft_micros IS NULL OR mirrored_overdraft_micros >= 0", name="mirrored_overdraft"),
)

reconciliation_alarms = Table(
    "reconciliation_alarms",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("day", Date, nullable=False),
    Column("subject", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("expected", BigInteger),
    Column("actual", BigInteger),
    Column("message", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("day", "subject", "kind"),
    CheckConstraint(_in("kind", ALARM_KINDS), name="kind"),
    CheckConstraint("subject <> '' AND message <> ''", name="named"),
)
