"""PostgreSQL: ``readings`` partitioned by month on ``at`` (native RANGE partitioning), with a DEFAULT partition.

The old table is renamed, the partitioned one created with the same columns, checks, foreign keys and index,
a partition made for every month that holds rows (and the current month and the next two), every row copied
over and the old table dropped, all in the migration's transaction: either every reading is in the new table or
the upgrade did not happen. The primary key becomes (id, at), because a partitioned table's unique constraints
must include the partition key; ingest still finds duplicates by id (``services.ingest``), which is sound as
long as a reading id determines its instant (the head-end's ids are ``<meter>@<unix seconds>``).

Partitions are named ``readings_YYYY_MM`` and cover whole UTC months; ``readings_default`` takes any reading
of a month without a partition, so none is ever refused. ``store.partitions`` creates the coming months' and
drops old ones (retention). SQLite: nothing changes.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")
AHEAD_MONTHS = 2
COLUMNS = (
    "id, meter_id, at, total_wh, sharp_wh, peak_wh, flat_wh, valley_wh, kind, status, reason, amount_micros,"
    " estimated, entry_id, received_at"
)


def _next_month(month: dt.date) -> dt.date:
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def _create_month(month: dt.date) -> None:
    start, end = month, _next_month(month)
    op.execute(
        f"CREATE TABLE readings_{month:%Y_%m} PARTITION OF readings"
        f" FOR VALUES FROM ('{start.isoformat()} 00:00:00+00') TO ('{end.isoformat()} 00:00:00+00')"
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE readings RENAME TO readings_unpartitioned")
    op.execute("ALTER INDEX pk_readings RENAME TO pk_readings_unpartitioned")
    op.execute("ALTER INDEX ix_readings_meter_id_at RENAME TO ix_readings_unpartitioned_meter_id_at")
    op.create_table(
        "readings",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("total_wh", sa.BigInteger, nullable=False),
        sa.Column("sharp_wh", sa.BigInteger),
        sa.Column("peak_wh", sa.BigInteger),
        sa.Column("flat_wh", sa.BigInteger),
        sa.Column("valley_wh", sa.BigInteger),
        sa.Column("kind", sa.String(8), nullable=False, server_default="regular"),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("amount_micros", sa.BigInteger),
        sa.Column("estimated", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("entry_id", Id, sa.ForeignKey("ledger_entries.id")),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", "at", name="pk_readings"),
        sa.CheckConstraint("kind IN ('regular', 'final', 'initial')", name="kind"),
        sa.CheckConstraint("status IN ('rated', 'skipped', 'quarantined')", name="status"),
        sa.CheckConstraint("amount_micros IS NULL OR amount_micros >= 0", name="amount"),
        postgresql_partition_by="RANGE (at)",
    )
    op.create_index("ix_readings_meter_id_at", "readings", ["meter_id", "at"])
    op.execute("CREATE TABLE readings_default PARTITION OF readings DEFAULT")

    held = bind.exec_driver_sql(
        "SELECT DISTINCT CAST(date_trunc('month', at AT TIME ZONE 'UTC') AS date) FROM readings_unpartitioned"
    ).scalars()
    this_month = dt.datetime.now(dt.UTC).date().replace(day=1)
    months = set(held)
    month = this_month
    for _ in range(AHEAD_MONTHS + 1):
        months.add(month)
        month = _next_month(month)
    for month in sorted(months):
        _create_month(month)

    op.execute(f"INSERT INTO readings ({COLUMNS}) SELECT {COLUMNS} FROM readings_unpartitioned")
    op.execute("DROP TABLE readings_unpartitioned")


def downgrade() -> None:
    raise NotImplementedError("migrations are append-only; restore a backup to go back")
