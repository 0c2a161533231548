"""Instantaneous samples (voltage, current, active power, power factor, frequency): stored in batches, read as
curves, pruned after the retention period.

What a read or an MQTT push returned (``MeterSnapshot``'s instant fields) becomes one ``meter_samples`` row per
(meter, instant). Invariants:
- A sample is stored once: a re-delivered push or a retried batch hits the primary key and is skipped
  (``INSERT ... ON CONFLICT DO NOTHING``), never an error that would hold back the batch.
- Out-of-range values (a garbled register, a meter reporting 6553.5 V) are rejected one by one with a reason,
  before the batch is written; the database CHECKs the same ranges again.
- Batches are bounded (``MAX_BATCH``), reads are bounded (``MAX_POINTS``), pruning deletes in bounded chunks.

Retention: ``RETENTION_DAYS`` (35 days: this month and the last few days of the previous one) by default;
billing never reads samples, so pruning loses nothing the ledger needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from powergate.headend.model import MeterSnapshot
from powergate.store.tables_samples import (
    MAX_CURRENT_MA,
    MAX_FREQUENCY_CHZ,
    MAX_POWER_DW,
    MAX_VOLTAGE_DV,
    meter_samples,
)

RETENTION_DAYS = 35
MAX_BATCH = 5_000
MAX_POINTS = 5_000
PRUNE_CHUNK = 10_000
MAX_PRUNE_CHUNKS = 1_000

RANGES: dict[str, tuple[int, int]] = {
    "voltage_dv": (0, MAX_VOLTAGE_DV),
    "current_ma": (0, MAX_CURRENT_MA),
    "power_dw": (-MAX_POWER_DW, MAX_POWER_DW),
    "pf_milli": (-1000, 1000),
    "frequency_chz": (0, MAX_FREQUENCY_CHZ),
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One meter's instantaneous values at ``at`` (UTC); fields not read are None. Units as the table's."""

    meter_id: str
    at: dt.datetime
    voltage_dv: int | None = None
    current_ma: int | None = None
    power_dw: int | None = None
    pf_milli: int | None = None
    frequency_chz: int | None = None

    def values(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in RANGES}


@dataclass(frozen=True, slots=True)
class RejectedSample:
    meter_id: str
    at: dt.datetime
    reason: str


def from_snapshots(snapshots: Sequence[MeterSnapshot]) -> list[Sample]:
    """The samples in a batch of snapshots: those that carry at least one instantaneous value."""
    found: list[Sample] = []
    for s in snapshots:
        sample = Sample(s.meter_id, s.at, s.voltage_dv, s.current_ma, s.power_dw, s.power_factor_milli, s.frequency_chz)
        if any(value is not None for value in sample.values().values()):
            found.append(sample)
    return found


def check(sample: Sample) -> str | None:
    """Why ``sample`` cannot be stored, or None."""
    if sample.at.tzinfo is None:
        return "at: must be timezone-aware"
    values = sample.values()
    if all(value is None for value in values.values()):
        return "no instantaneous value"
    for name, value in values.items():
        low, high = RANGES[name]
        if value is not None and not low <= value <= high:
            return f"{name}: {value} is outside {low}..{high}"
    return None


def store(conn: Connection, samples: Sequence[Sample]) -> tuple[int, list[RejectedSample]]:
    """Store a batch in the caller's transaction; returns (rows offered to the database, rejected samples).

    Duplicates of stored samples (same meter and instant) are skipped silently; a sample for an unknown meter is
    a foreign-key error, as for readings: the head-end only reads meters it knows.
    """
    assert len(samples) <= MAX_BATCH, f"at most {MAX_BATCH} samples a batch, got {len(samples)}"
    rows: dict[tuple[str, dt.datetime], dict[str, Any]] = {}
    rejected: list[RejectedSample] = []
    for sample in samples:
        problem = check(sample)
        if problem is not None:
            rejected.append(RejectedSample(sample.meter_id, sample.at, problem))
            continue
        rows[(sample.meter_id, sample.at)] = {"meter_id": sample.meter_id, "at": sample.at, **sample.values()}
    if rows:
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        statement = dialect.insert(meter_samples).on_conflict_do_nothing(index_elements=["meter_id", "at"])
        conn.execute(statement, list(rows.values()))
    return len(rows), rejected


def store_snapshots(engine: Engine, snapshots: Sequence[MeterSnapshot]) -> tuple[int, list[RejectedSample]]:
    """The head-end's hook: the batch's samples in one transaction (in chunks of ``MAX_BATCH``)."""
    samples = from_snapshots(snapshots)
    stored = 0
    rejected: list[RejectedSample] = []
    if not samples:
        return 0, rejected
    with engine.begin() as conn:
        for start in range(0, len(samples), MAX_BATCH):
            count, problems = store(conn, samples[start : start + MAX_BATCH])
            stored += count
            rejected += problems
    return stored, rejected


def curve(
    conn: Connection, meter_id: str, since: dt.datetime, until: dt.datetime, limit: int = MAX_POINTS
) -> list[Sample]:
    """A meter's samples in ``[since, until)``, oldest first, at most ``limit`` (the most recent ones)."""
    assert 0 < limit <= MAX_POINTS, limit
    c = meter_samples.c
    query = (
        select(meter_samples)
        .where(c.meter_id == meter_id, c.at >= since, c.at < until)
        .order_by(c.at.desc())
        .limit(limit)
    )
    rows = conn.execute(query).all()
    return [
        Sample(str(r.meter_id), r.at, r.voltage_dv, r.current_ma, r.power_dw, r.pf_milli, r.frequency_chz)
        for r in reversed(rows)
    ]


def prune(engine: Engine, now: dt.datetime, keep_days: int = RETENTION_DAYS) -> int:
    """Delete samples older than ``keep_days`` before ``now``, in chunks (each its own short transaction)."""
    assert keep_days >= 1, keep_days
    cut = now - dt.timedelta(days=keep_days)
    c = meter_samples.c
    deleted = 0
    for _ in range(MAX_PRUNE_CHUNKS):
        with engine.begin() as conn:
            oldest = select(c.meter_id, c.at).where(c.at < cut).order_by(c.at).limit(PRUNE_CHUNK).subquery()
            done = conn.execute(
                delete(meter_samples).where(
                    c.at < cut,
                    c.at <= select(oldest.c.at).order_by(oldest.c.at.desc()).limit(1).scalar_subquery(),
                )
            )
        deleted += max(done.rowcount, 0)
        if done.rowcount < PRUNE_CHUNK:
            break
    return deleted
