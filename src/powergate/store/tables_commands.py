"""The persisted command queue: one row per command to a meter, from enqueue to a terminal state.

The row is the command's whole life (``powergate.headend.commands`` drives it): its idempotency key ``id``
(UNIQUE: an enqueue retried with the same id returns the first row), what to do (``kind``, ``parameters`` as
JSON), who asked and why (``requested_by``, ``reason``: every relay command is audited), its place in the
meter's queue (``priority``, then ``seq``), where it is (``state``), how often it was sent (``attempts`` up to
``max_attempts``), when it may next be looked at (``next_attempt_at``; while a dispatcher holds it, the end of
its lease), who holds it (``claimed_by``) and an optimistic-concurrency ``version`` that every transition
compares and increments, so two dispatchers never both own one attempt.

The database checks again what the state machine keeps: states and kinds are closed lists, attempts stay within
``0..max_attempts``, ``max_attempts`` is bounded, and a terminal row holds no claim.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, ForeignKey, Index, Integer, String, Table, Text

from powergate.store.tables import Id, UTCDateTime, metadata

COMMAND_STATES = ("pending", "sent", "acked", "verified", "failed", "expired", "cancelled")
OPEN_STATES = ("pending", "sent", "acked")
"""States in which a command still occupies its meter's queue."""
COMMAND_KINDS = (
    "trip",
    "close",
    "close_allowed",
    "protect_on",
    "protect_off",
    "recharge",
    "set_alarms",
    "set_power_limit",
    "set_prices",
    "set_tou",
    "time_sync",
)
MAX_ATTEMPTS_LIMIT = 100
PRIORITY_RANGE = (0, 1000)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


meter_commands = Table(
    "meter_commands",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("id", String(128), nullable=False, unique=True),
    Column("meter_id", String(64), ForeignKey("meters.id"), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("parameters", Text, nullable=False, server_default="{}"),
    Column("priority", Integer, nullable=False),
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("valid_until", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_error", Text),
    Column("result", Text),
    Column("requested_by", String(120), nullable=False),
    Column("reason", Text, nullable=False),
    Column("claimed_by", String(64)),
    Column("version", Integer, nullable=False, server_default="0"),
    CheckConstraint(_in("state", COMMAND_STATES), name="state"),
    CheckConstraint(_in("kind", COMMAND_KINDS), name="kind"),
    CheckConstraint(f"max_attempts >= 1 AND max_attempts <= {MAX_ATTEMPTS_LIMIT}", name="max_attempts"),
    CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts"),
    CheckConstraint(f"priority >= {PRIORITY_RANGE[0]} AND priority <= {PRIORITY_RANGE[1]}", name="priority"),
    CheckConstraint(f"claimed_by IS NULL OR {_in('state', OPEN_STATES)}", name="claim"),
    # "the next due commands per meter": the dispatcher looks up a meter's open commands by this index
    Index("ix_meter_commands_meter_id_state", "meter_id", "state", "priority", "seq"),
    Index("ix_meter_commands_state_next_attempt_at", "state", "next_attempt_at"),
)
