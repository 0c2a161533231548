"""Batch operation tables: account tags, batch jobs and their targets (``powergate.services.batch``).

- ``account_tags``: free labels on accounts ("dorm-north", "vip"), so a batch can select by tag. A tag is
  lower-case letters, digits, '-' or '_' (CHECKed in the service); (account, tag) is the key.
- ``batches``: one job: ONE operation with its parameters, the selection as the operator gave it, who, why,
  when it runs (``run_at``) and its limits (targets are bounded by ``MAX_TARGETS``; commands in flight per DTU
  link by ``max_in_flight_per_link``; each meter command's life by ``command_valid_s``).
  scheduled -> running -> done | cancelled; a retry of the failures takes a done batch back to running.
- ``batch_targets``: one row per target (a meter or an account, never both), UNIQUE per batch, with its
  state (pending -> submitted -> succeeded | failed, or skipped / cancelled), the attempt it is on, the
  queued command ids it waits for (JSON list) and the result or reason. ``link_id`` is the DTU / gateway the
  target's commands travel through: the rate limit counts in-flight targets per link.

Times are UTC; the JSON columns are canonical (sorted keys). Kept by the database: the CHECKed states and
operations, one target kind per row, attempt >= 1, positive limits.
"""

from __future__ import annotations

from sqlalchemy import (
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

from powergate.store.tables import Id, UTCDateTime, metadata

OPERATIONS = (
    "set_tariff",
    "trip",
    "close",
    "power_protect_on",
    "power_protect_off",
    "set_alarms",
    "set_power_limit",
    "push_prices",
    "recharge",
    "grant_allowance",
)
BATCH_STATES = ("scheduled", "running", "done", "cancelled")
TARGET_STATES = ("pending", "submitted", "succeeded", "failed", "skipped", "cancelled")
MAX_TAG_CHARS = 32


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


account_tags = Table(
    "account_tags",
    metadata,
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("tag", String(MAX_TAG_CHARS), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(120), nullable=False),
    PrimaryKeyConstraint("account_id", "tag"),
    CheckConstraint("tag <> ''", name="tag"),
    Index("ix_account_tags_tag", "tag"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("organisation_id", Id, ForeignKey("organisations.id"), nullable=False),
    Column("operation", String(24), nullable=False),
    Column("parameters", Text, nullable=False, server_default="{}"),
    Column("selection", Text, nullable=False, server_default="{}"),
    Column("target_kind", String(8), nullable=False),
    Column("state", String(12), nullable=False),
    Column("run_at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_by", String(120), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("total", Integer, nullable=False),
    Column("max_in_flight_per_link", Integer, nullable=False),
    Column("command_valid_s", Integer, nullable=False),
    Column("retries", Integer, nullable=False, server_default="0"),
    CheckConstraint(_in("operation", OPERATIONS), name="operation"),
    CheckConstraint(_in("state", BATCH_STATES), name="state"),
    CheckConstraint("target_kind IN ('meter', 'account')", name="target_kind"),
    CheckConstraint(
        "total >= 1 AND max_in_flight_per_link >= 1 AND command_valid_s >= 1 AND retries >= 0", name="limits"
    ),
    CheckConstraint("reason <> '' AND created_by <> ''", name="who_why"),
    Index("ix_batches_organisation_id", "organisation_id", "created_at"),
    Index("ix_batches_state", "state", "run_at"),
)

batch_targets = Table(
    "batch_targets",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("batch_id", Id, ForeignKey("batches.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("meter_id", String(64), ForeignKey("meters.id")),
    Column("account_id", Id, ForeignKey("accounts.id")),
    Column("label", String(120), nullable=False),
    Column("link_id", String(128), nullable=False),
    Column("state", String(12), nullable=False),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("command_ids", Text, nullable=False, server_default="[]"),
    Column("result", Text),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("state", TARGET_STATES), name="state"),
    CheckConstraint("(meter_id IS NULL) <> (account_id IS NULL)", name="one_target"),
    CheckConstraint("attempt >= 1 AND position >= 0", name="attempt"),
    UniqueConstraint("batch_id", "meter_id", name="uq_batch_targets_meter"),
    UniqueConstraint("batch_id", "account_id", name="uq_batch_targets_account"),
    Index("ix_batch_targets_batch_id", "batch_id", "state", "position"),
    Index("ix_batch_targets_state", "state", "link_id"),
)
