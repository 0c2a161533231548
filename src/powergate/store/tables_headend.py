"""Head-end tables: how each meter is reached, its last known status, and the events it reported.

- ``meter_endpoints``: one row per meter (PK ``meter_id`` -> ``meters.id``): transport, address on that
  transport, the DTU / gateway / site it is behind (``link_id``) and the meter model;
- ``meter_status``: one row per meter, overwritten in place (an upsert per batch): online, when it was last
  heard from and last read, and the last relay state, remaining amount and purchase count it reported;
- ``meter_events``: anti-theft and safety events, append-only. ``UNIQUE(meter_id, kind, at)``: reading the
  same event record again (every read of a meter returns its last record) stores it once.

Kinds are CHECKed lists: transports as ``headend.model.Transport``, events as ``protocols.mqtt.EVENT_TYPES``.
Times are UTC (``UTCDateTime``); amounts are micros.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from powergate.protocols.mqtt import EVENT_TYPES
from powergate.store.tables import Id, UTCDateTime, metadata

TRANSPORTS = ("dlt645", "modbus", "mqtt")
MAX_EVENT_DETAIL = 200


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


meter_endpoints = Table(
    "meter_endpoints",
    metadata,
    Column("meter_id", String(64), ForeignKey("meters.id"), primary_key=True),
    Column("transport", String(16), nullable=False),
    Column("address", String(64), nullable=False),
    Column("link_id", String(128), nullable=False),
    Column("model", String(64), nullable=False, server_default="default"),
    CheckConstraint(_in("transport", TRANSPORTS), name="transport"),
    UniqueConstraint("transport", "link_id", "address", name="uq_meter_endpoints_where"),
    Index("ix_meter_endpoints_link_id", "link_id"),
)

meter_status = Table(
    "meter_status",
    metadata,
    Column("meter_id", String(64), ForeignKey("meters.id"), primary_key=True),
    Column("online", Boolean, nullable=False),
    Column("last_seen_at", UTCDateTime),
    Column("last_read_at", UTCDateTime),
    Column("relay_open", Boolean),
    Column("remaining_micros", BigInteger),
    Column("purchase_count", BigInteger),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("remaining_micros IS NULL OR remaining_micros >= 0", name="remaining"),
    CheckConstraint("purchase_count IS NULL OR purchase_count >= 0", name="purchase_count"),
)

meter_events = Table(
    "meter_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("meter_id", String(64), ForeignKey("meters.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    CheckConstraint(_in("kind", EVENT_TYPES), name="kind"),
    UniqueConstraint("meter_id", "kind", "at", name="uq_meter_events_once"),
)
