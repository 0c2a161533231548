"""Instantaneous samples: voltage, current, active power, power factor and frequency of a meter at a moment.

The head-end stores what a read (or an MQTT push) returned alongside the energy registers, in batches
(``powergate.services.samples``); the console draws the room curves from them.

Invariants the database keeps (style rule 4; ``services.samples`` checks the same first):
- One sample per (meter, instant): the PRIMARY KEY, so a re-delivered push or a retried batch stores it once.
- Integers in the head-end's units: voltage 0.1 V, current mA, active power 0.1 W (signed: reverse flow is
  negative), power factor x1000 (signed), frequency 0.01 Hz; each within a plausible range (CHECK), and at
  least one of them present.

Retention: samples are operational data, not billing data; ``services.samples.prune`` deletes those older
than ``RETENTION_DAYS`` (see docs/console.md).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
)

from powergate.store.tables import UTCDateTime, metadata

MAX_VOLTAGE_DV = 1_000_000
MAX_CURRENT_MA = 1_000_000_000
MAX_POWER_DW = 10_000_000_000
MAX_FREQUENCY_CHZ = 100_000
FIELDS = ("voltage_dv", "current_ma", "power_dw", "pf_milli", "frequency_chz")

meter_samples = Table(
    "meter_samples",
    metadata,
    Column("meter_id", String(64), ForeignKey("meters.id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("voltage_dv", Integer),
    Column("current_ma", BigInteger),
    Column("power_dw", BigInteger),
    Column("pf_milli", Integer),
    Column("frequency_chz", Integer),
    PrimaryKeyConstraint("meter_id", "at"),
    CheckConstraint(f"voltage_dv IS NULL OR (voltage_dv >= 0 AND voltage_dv <= {MAX_VOLTAGE_DV})", name="voltage"),
    CheckConstraint(f"current_ma IS NULL OR (current_ma >= 0 AND current_ma <= {MAX_CURRENT_MA})", name="current"),
    CheckConstraint(f"power_dw IS NULL OR (power_dw >= -{MAX_POWER_DW} AND power_dw <= {MAX_POWER_DW})", name="power"),
    CheckConstraint("pf_milli IS NULL OR (pf_milli >= -1000 AND pf_milli <= 1000)", name="pf"),
    CheckConstraint(
        f"frequency_chz IS NULL OR (frequency_chz >= 0 AND frequency_chz <= {MAX_FREQUENCY_CHZ})", name="frequency"
    ),
    CheckConstraint(" OR ".join(f"{name} IS NOT NULL" for name in FIELDS), name="some_value"),
    # "samples older than the retention": the prune looks rows up by time across meters
    Index("ix_meter_samples_at", "at"),
)
