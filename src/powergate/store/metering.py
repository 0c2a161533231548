"""Meters, tariffs, rating state and readings in the database.

A reading's id is its idempotency key (PRIMARY KEY): a reading stored once is never stored or rated again. The
rating state of a meter (``meter_rating_state``) is the only thing rating needs from the past; it is written in
the same transaction as the readings and the ledger entries it produced, so the three never disagree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select

from powergate.domain.rating import RatingState
from powergate.store.bulk import Bulk
from powergate.store.tables import ledger_accounts, meter_rating_state, meters, readings, tariffs

ID_CHUNK = 2_000


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


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), ID_CHUNK):
        yield items[start : start + ID_CHUNK]


def load_meters(conn: Connection, meter_ids: Sequence[str]) -> dict[str, MeterRow]:
    found: dict[str, MeterRow] = {}
    query = select(
        meters.c.id,
        ledger_accounts.c.code,
        meters.c.wallet_account_id,
        meters.c.tariff_id,
        meters.c.timezone,
        meters.c.register_max_wh,
        meters.c.max_power_w,
    ).join(ledger_accounts, ledger_accounts.c.id == meters.c.wallet_account_id)
    for chunk in _chunks(meter_ids):
        for row in conn.execute(query.where(meters.c.id.in_(chunk))):
            found[row[0]] = MeterRow(row[0], row[1], int(row[2]), row[3], row[4], int(row[5]), int(row[6]))
    return found


def load_states(conn: Connection, meter_ids: Sequence[str]) -> dict[str, RatingState]:
    states: dict[str, RatingState] = {}
    c = meter_rating_state.c
    for chunk in _chunks(meter_ids):
        for row in conn.execute(select(meter_rating_state).where(c.meter_id.in_(chunk))):
            bands = (row.last_sharp_wh, row.last_peak_wh, row.last_flat_wh, row.last_valley_wh)
            states[row.meter_id] = RatingState(
                meter_id=row.meter_id,
                last_reading_id=row.last_reading_id,
                last_at=row.last_at,
                last_total_wh=row.last_total_wh,
                last_bands_wh=None if bands[0] is None else (bands[0], bands[1], bands[2], bands[3]),
                awaiting_initial=bool(row.awaiting_initial),
                cycle_start=row.cycle_start,
                cycle_energy_wh=int(row.cycle_energy_wh),
                carry_nanos=int(row.carry_nanos),
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


def _state_values(bulk: Bulk, state: RatingState) -> tuple[object, ...]:
    bands = state.last_bands_wh or (None, None, None, None)
    cycle_start = state.cycle_start.isoformat() if bulk.sqlite and state.cycle_start else state.cycle_start
    return (
        state.last_reading_id,
        bulk.ts(state.last_at),
        state.last_total_wh,
        *bands,
        state.awaiting_initial,
        cycle_start,
        state.cycle_energy_wh,
        state.carry_nanos,
    )


def save_states(conn: Connection, changed: Sequence[RatingState], existing: set[str]) -> None:
    """Write the new states: UPDATE the meters that had one, INSERT the others."""
    bulk = Bulk(conn)
    rows = [(s.meter_id, *_state_values(bulk, s)) for s in changed]
    bulk.update("meter_rating_state", ("meter_id", "text"), STATE_COLUMNS, [r for r in rows if r[0] in existing])
    columns = ("meter_id", *(name for name, _ in STATE_COLUMNS))
    bulk.insert("meter_rating_state", columns, [r for r in rows if r[0] not in existing])


def existing_reading_ids(conn: Connection, reading_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(reading_ids):
        found.update(str(r) for r in conn.execute(select(readings.c.id).where(readings.c.id.in_(chunk))).scalars())
    return found


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


def insert_readings(conn: Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert reading rows given as tuples in ``READING_COLUMNS`` order (times already bound by ``Bulk.ts``)."""
    Bulk(conn).insert("readings", READING_COLUMNS, rows)
