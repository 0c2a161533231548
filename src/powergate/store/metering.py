"""Meters, tariffs, rating state and readings in the database.

A reading's id is its idempotency key (PRIMARY KEY): a reading stored once is never stored or rated again. The
rating state of a meter (``meter_rating_state``) is the only thing rating needs from the past; it is written in
the same transaction as the readings and the ledger entries it produced, so the three never disagree.

The per-batch reads and writes of ingest (known reading ids, meters, states, new readings) go through ``Bulk``
as driver SQL: for thousands of rows, SQLAlchemy's statement compilation and row processing cost more than
the queries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select

from powergate.domain.rating import RatingState
from powergate.store.bulk import Bulk
from powergate.store.tables import meters, tariffs


@dataclass(frozen=True, slots=True)
class MeterRow:
    meter_id: str
    wallet: str
    wallet_account_id: int
    tariff_id: str
    timezone: str
    register_max_wh: int
    max_power_w: int


def add_tariff(conn: Connection, tariff_id: str, name: str, commodity: str, document: str, now: dt.datetime) -> None:
    conn.execute(
        insert(tariffs).values(id=tariff_id, name=name, commodity=commodity, document=document, created_at=now)
    )


def tariff_document(conn: Connection, tariff_id: str) -> str:
    value = conn.execute(select(tariffs.c.document).where(tariffs.c.id == tariff_id)).scalar()
    if value is None:
        raise KeyError(f"no tariff {tariff_id!r}")
    return str(value)


def add_meter(
    conn: Connection,
    meter_id: str,
    wallet_account_id: int,
    tariff_id: str,
    now: dt.datetime,
    *,
    timezone: str = "Asia/Shanghai",
    register_max_wh: int = 999_999_990,
    max_power_w: int = 100_000,
) -> None:
    conn.execute(
        insert(meters).values(
            id=meter_id,
            wallet_account_id=wallet_account_id,
            tariff_id=tariff_id,
            timezone=timezone,
            register_max_wh=register_max_wh,
            max_power_w=max_power_w,
            created_at=now,
        )
    )


def load_meters(conn: Connection, meter_ids: Sequence[str]) -> dict[str, MeterRow]:
    bulk = Bulk(conn)
    query = (
        "SELECT m.id, a.code, m.wallet_account_id, m.tariff_id, m.timezone, m.register_max_wh, m.max_power_w "
        "FROM meters m JOIN ledger_accounts a ON a.id = m.wallet_account_id"
    )
    return {
        row[0]: MeterRow(row[0], row[1], int(row[2]), row[3], row[4], int(row[5]), int(row[6]))
        for row in bulk.select_in(query, "m.id", meter_ids)
    }


def lock_states(conn: Connection, meter_ids: Sequence[str], *, skip_busy: bool = False) -> frozenset[str]:
    """PostgreSQL: lock these meters' rating states until the transaction ends, in meter order; returns the busy
    ones (always none unless ``skip_busy``).

    Two processes ingesting readings of one meter at once (MQTT shared subscriptions hand a meter's readings
    to any head-end) would otherwise both rate from the same state and charge the overlap twice; with the lock
    the second waits and then reads the state the first committed. SQLite serialises writers already.

    ``skip_busy``: do not wait for meters another transaction holds (``SKIP LOCKED``); they are returned, and the
    caller leaves their readings out of this transaction. Two head-ends' batches nearly always share a few of
    100,000 meters, so waiting would make them take turns for whole batches.
    """
    if conn.dialect.name != "postgresql" or not meter_ids:
        return frozenset()
    wanted = sorted(meter_ids)
    if not skip_busy:
        query = "SELECT meter_id FROM meter_rating_state WHERE meter_id = ANY(%s) ORDER BY meter_id FOR UPDATE"
        conn.exec_driver_sql(query, (wanted,))
        return frozenset()
    query = "SELECT meter_id FROM meter_rating_state WHERE meter_id = ANY(%s) ORDER BY meter_id FOR UPDATE SKIP LOCKED"
    locked = {str(row[0]) for row in conn.exec_driver_sql(query, (wanted,))}
    rest = [meter_id for meter_id in wanted if meter_id not in locked]
    if not rest:
        return frozenset()
    # not locked: held by someone else, or no state row yet (a first reading: nothing to wait for)
    existing = conn.exec_driver_sql("SELECT meter_id FROM meter_rating_state WHERE meter_id = ANY(%s)", (rest,))
    return frozenset(str(row[0]) for row in existing)


def load_states(conn: Connection, meter_ids: Sequence[str]) -> dict[str, RatingState]:
    bulk = Bulk(conn)
    query = f"SELECT meter_id, {', '.join(name for name, _ in STATE_COLUMNS)} FROM meter_rating_state"
    states: dict[str, RatingState] = {}
    for row in bulk.select_in(query, "meter_id", meter_ids):
        meter_id, last_reading_id, last_at, last_total_wh, sharp, peak, flat, valley = row[:8]
        states[meter_id] = RatingState(
            meter_id=meter_id,
            last_reading_id=last_reading_id,
            last_at=bulk.datetime_of(last_at),
            last_total_wh=last_total_wh,
            last_bands_wh=None if sharp is None else (sharp, peak, flat, valley),
            awaiting_initial=bool(row[8]),
            cycle_start=bulk.date_of(row[9]),
            cycle_energy_wh=int(row[10]),
            carry_nanos=int(row[11]),
        )
    return states


STATE_COLUMNS = (
    ("last_reading_id", "text"),
    ("last_at", "timestamptz"),
    ("last_total_wh", "bigint"),
    ("last_sharp_wh", "bigint"),
    ("last_peak_wh", "bigint"),
    ("last_flat_wh", "bigint"),
    ("last_valley_wh", "bigint"),
    ("awaiting_initial", "boolean"),
    ("cycle_start", "date"),
    ("cycle_energy_wh", "bigint"),
    ("carry_nanos", "integer"),
)


NO_BANDS = (None, None, None, None)


def save_states(
    conn: Connection, changed: Iterable[RatingState], existing: Container[str], bulk: Bulk | None = None
) -> None:
    """Write the new states: UPDATE the meters that had one, INSERT the others."""
    bulk = bulk or Bulk(conn)
    ts = bulk.ts
    sqlite = bulk.sqlite
    updates: list[tuple[object, ...]] = []
    inserts: list[tuple[object, ...]] = []
    for state in changed:
        bands = state.last_bands_wh or NO_BANDS
        start = state.cycle_start
        cycle_start: object = start.isoformat() if sqlite and start is not None else start
        row = (
            state.meter_id,
            state.last_reading_id,
            ts(state.last_at),
            state.last_total_wh,
            bands[0],
            bands[1],
            bands[2],
            bands[3],
            state.awaiting_initial,
            cycle_start,
            state.cycle_energy_wh,
            state.carry_nanos,
        )
        (updates if state.meter_id in existing else inserts).append(row)
    bulk.update("meter_rating_state", ("meter_id", "text"), STATE_COLUMNS, updates)
    bulk.insert("meter_rating_state", ("meter_id", *(name for name, _ in STATE_COLUMNS)), inserts)


def existing_reading_ids(
    conn: Connection, reading_ids: Sequence[str], within: tuple[dt.datetime, dt.datetime] | None = None
) -> set[str]:
    """The ids among ``reading_ids`` already stored.

    ``within`` (first, last): the readings' times. On PostgreSQL, where ``readings`` is partitioned by month
    and the key is (id, at), the search is limited to ``READING_ID_SLACK`` around them, so it probes the
    partitions of those months only; sound because a reading id determines its instant (to the second: the
    head-end's ids are ``<meter>@<unix seconds>``).
    """
    query = "SELECT id FROM readings"
    if within is not None and conn.dialect.name == "postgresql":
        first, last = within[0] - READING_ID_SLACK, within[1] + READING_ID_SLACK
        query = f"SELECT id FROM (SELECT id FROM readings WHERE at >= '{first.isoformat()}'"
        query += f" AND at <= '{last.isoformat()}') AS near"
    return {str(row[0]) for row in Bulk(conn).select_in(query, "id", reading_ids)}


READING_ID_SLACK = dt.timedelta(days=1)
"""How far from the instant in its id a reading's time may be (ids carry whole seconds; this is generous)."""


READING_COLUMNS = (
    "id",
    "meter_id",
    "at",
    "total_wh",
    "sharp_wh",
    "peak_wh",
    "flat_wh",
    "valley_wh",
    "kind",
    "status",
    "reason",
    "amount_micros",
    "estimated",
    "entry_id",
    "received_at",
)


def insert_readings(conn: Connection, rows: Sequence[tuple[object, ...]], bulk: Bulk | None = None) -> None:
    """Insert reading rows given as tuples in ``READING_COLUMNS`` order (times already bound by ``Bulk.ts``)."""
    (bulk or Bulk(conn)).insert("readings", READING_COLUMNS, rows)
