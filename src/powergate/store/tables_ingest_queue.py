"""The ingest queue: batches of readings a head-end hands to the workers (``headend.ingest = "queue"``).

One row per batch, written by a head-end in one INSERT (its commit wakes the workers: ``store.wakeup``) and
deleted by the worker that ingests it, in the transaction that stores its readings and ledger entries, so a
batch is ingested exactly once (``services.ingest_queue``). ``payload`` is the readings as compact JSON text
(``services.ingest_queue.encode``); ``count`` is how many it holds.

A batch that fails ``max attempts`` times with an error that is not transient is parked: ``state`` becomes
``failed`` with the reason in ``last_error``, and the queue moves on. Parked rows stay until an operator
requeues or deletes them (docs/headend.md).

The database checks again what the code keeps: the state is a closed list, a batch holds 1..20,000 readings
(``services.ingest.MAX_BATCH``), attempts are never negative and a parked batch says why and when.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, Index, Integer, String, Table, Text

from powergate.store.tables import Id, UTCDateTime, metadata

BATCH_STATES = ("queued", "failed")
MAX_BATCH_READINGS = 20_000
"""Equal to ``services.ingest.MAX_BATCH`` (the store may not import services; a test keeps them equal)."""

ingest_batches = Table(
    "ingest_batches",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("enqueued_at", UTCDateTime, nullable=False),
    Column("source", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("count", Integer, nullable=False),
    Column("state", String(8), nullable=False, server_default="queued"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("failed_at", UTCDateTime),
    CheckConstraint("state IN ('queued', 'failed')", name="state"),
    CheckConstraint(f"count >= 1 AND count <= {MAX_BATCH_READINGS}", name="count"),
    CheckConstraint("attempts >= 0", name="attempts"),
    CheckConstraint("state <> 'failed' OR (last_error IS NOT NULL AND failed_at IS NOT NULL)", name="failed"),
    # "the oldest queued batch": the workers' claim walks this index
    Index("ix_ingest_batches_state_id", "state", "id"),
)
