"""Ingest: batches of readings become stored readings, rated charges and ledger deductions, atomically.

One transaction per batch: the readings (rated, skipped or quarantined, each with its reason), the ledger
entries for their charges (idempotency key ``reading:<id>``), the materialised balances and the meters' rating
states commit together or not at all. A reading id seen before is a duplicate and changes nothing, within a batch
or across batches; if another worker races us to the same reading, the unique constraint rolls our batch back and
it is retried once, when the reading is then seen as a duplicate.

Readings of one meter are rated in time order; a reading older than the meter's last rated one is stored as
skipped (out of order) and billed nothing, because the later reading's register delta already covers it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from powergate.domain.ledger import Entry, charge_entry
from powergate.domain.rating import (
    Charge,
    Quarantined,
    Rated,
    RatingContext,
    RatingState,
    Reading,
    Skipped,
    rate,
)
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.bulk import Bulk

MAX_BATCH = 20_000
"""Bound on one batch: larger inputs are refused, the caller splits them."""

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class IngestReport:
    rated: int = 0
    skipped: int = 0
    quarantined: int = 0
    duplicates: int = 0
    charged_micros: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(reading id, reason) for readings that could not be stored at all (unknown meter)."""
    reasons: dict[str, str] = field(default_factory=dict)
    """reading id -> reason, for skipped and quarantined readings."""


class RatingContexts:
    """Builds and caches one ``RatingContext`` per (tariff, time zone, limits); tariffs are parsed once."""

    def __init__(self, build: Callable[[Connection, metering.MeterRow], RatingContext]) -> None:
        self._build = build
        self._cache: dict[tuple[str, str, int, int], RatingContext] = {}

    def for_meter(self, conn: Connection, meter: metering.MeterRow) -> RatingContext:
        key = (meter.tariff_id, meter.timezone, meter.register_max_wh, meter.max_power_w)
        context = self._cache.get(key)
        if context is None:
            context = self._build(conn, meter)
            self._cache[key] = context
        return context

    def forget(self) -> None:
        self._cache.clear()


def default_context_builder(conn: Connection, meter: metering.MeterRow) -> RatingContext:
    """A rating context from the stored tariff document and the site's time zone and calendar."""
    from powergate.domain.calendar import SiteCalendar
    from powergate.domain.tariff_files import load_tariff

    tariff = load_tariff(metering.tariff_document(conn, meter.tariff_id), source=f"tariff {meter.tariff_id}")
    return RatingContext(
        tariff=tariff,
        calendar=SiteCalendar.china(),
        tz=ZoneInfo(meter.timezone),
        register_max_wh=meter.register_max_wh,
        max_power_w=meter.max_power_w,
    )


class Ingestor:
    """Rates and books batches of readings. One per process; safe to share by serial use."""

    def __init__(self, engine: Engine, contexts: RatingContexts | None = None, clock: Clock = utc_now) -> None:
        self.engine = engine
        self.contexts = contexts or RatingContexts(default_context_builder)
        self.clock = clock
        self.accounts = ledger_store.AccountCache()

    def ingest(self, batch: Sequence[Reading]) -> IngestReport:
        if len(batch) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} readings, got {len(batch)}; split it")
        for attempt in (1, 2):
            try:
                with self.engine.begin() as conn:
                    return self._ingest(conn, batch)
            except IntegrityError:
                # A concurrent writer stored some of these readings or accounts first: start again from the
                # database, where they are now visible as duplicates.
                self.accounts.forget()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _ingest(self, conn: Connection, batch: Sequence[Reading]) -> IngestReport:
        now = self.clock()
        report = IngestReport()
        unique: dict[str, Reading] = {}
        for reading in batch:
            if reading.reading_id in unique:
                report.duplicates += 1
            else:
                unique[reading.reading_id] = reading
        seen = metering.existing_reading_ids(conn, list(unique))
        report.duplicates += len(seen)
        fresh = [r for r in unique.values() if r.reading_id not in seen]
        meter_ids = sorted({r.meter_id for r in fresh})
        meters = metering.load_meters(conn, meter_ids)
        states = metering.load_states(conn, meter_ids)
        had_state = set(states)
        fresh.sort(key=lambda r: (r.meter_id, r.at, r.reading_id))

        bulk = Bulk(conn)
        received = bulk.ts(now)
        rows: list[list[object]] = []
        entries: list[Entry] = []
        changed: dict[str, RatingState] = {}
        for known in meters.values():
            self.accounts.remember(known.wallet, known.wallet_account_id)
        for reading in fresh:
            meter = meters.get(reading.meter_id)
            if meter is None:
                report.rejected.append((reading.reading_id, f"unknown meter {reading.meter_id!r}"))
                continue
            state = changed.get(reading.meter_id) or states.get(reading.meter_id) or RatingState(reading.meter_id)
            outcome = rate(state, reading, self.contexts.for_meter(conn, meter))
            status, reason, amount, estimated = _record(outcome, report, reading.reading_id)
            if isinstance(outcome, Rated):
                entry = _deduction(outcome.charge, meter.wallet, reading)
                if entry is not None:
                    entries.append(entry)
                    report.charged_micros += outcome.charge.amount_micros
            if outcome.state != state:
                changed[reading.meter_id] = outcome.state
            rows.append(reading_row(bulk, reading, status, reason, amount, estimated, received))

        entry_ids = ledger_store.post_batch(conn, entries, now, self.accounts)
        for row in rows:
            row[ENTRY_ID_COLUMN] = entry_ids.get(f"reading:{row[0]}")
        metering.insert_readings(conn, [tuple(r) for r in rows])
        metering.save_states(conn, list(changed.values()), had_state)
        return report


ENTRY_ID_COLUMN = metering.READING_COLUMNS.index("entry_id")


def _record(
    outcome: Rated | Skipped | Quarantined, report: IngestReport, reading_id: str
) -> tuple[str, str | None, int | None, bool]:
    """Count the outcome; its (status, reason, amount, estimated) for the reading row."""
    if isinstance(outcome, Rated):
        report.rated += 1
        return "rated", None, outcome.charge.amount_micros, outcome.charge.estimated
    report.reasons[reading_id] = outcome.reason
    if isinstance(outcome, Skipped):
        report.skipped += 1
        return "skipped", outcome.reason, None, False
    report.quarantined += 1
    return "quarantined", outcome.reason, None, False


def reading_row(
    bulk: Bulk,
    reading: Reading,
    status: str,
    reason: str | None,
    amount_micros: int | None,
    estimated: bool,
    received: object,
) -> list[object]:
    """A reading as a row in ``metering.READING_COLUMNS`` order; ``entry_id`` is filled in later."""
    bands = reading.bands_wh or (None, None, None, None)
    return [
        reading.reading_id,
        reading.meter_id,
        bulk.ts(reading.at),
        reading.total_wh,
        *bands,
        reading.kind.value,
        status,
        reason,
        amount_micros,
        estimated,
        None,
        received,
    ]


def _deduction(charge: Charge, wallet: str, reading: Reading) -> Entry | None:
    by_component: dict[str, int] = {}
    for line in charge.lines:
        by_component[line.component] = by_component.get(line.component, 0) + line.amount_micros
    return charge_entry(
        f"reading:{reading.reading_id}",
        wallet,
        by_component,
        reading.at,
        description=f"meter {reading.meter_id} {charge.start.isoformat()}..{charge.end.isoformat()}",
    )
