"""Ingest: batches of readings become stored readings, rated charges and ledger deductions, atomically.

One transaction per batch: the readings (rated, skipped or quarantined, each with its reason), the ledger
entries for their charges (idempotency key ``reading:<id>``), the materialised balances and the meters' rating
states commit together or not at all. A reading id seen before is a duplicate and changes nothing, within a batch
or across batches; if another worker races us to the same reading, the unique constraint rolls our batch back and
it is retried once, when the reading is then seen as a duplicate.

Readings of one meter are rated in time order; a reading older than the meter's last rated one is stored as
skipped (out of order) and billed nothing, because the later reading's register delta already covers it.

Speed (the goal is tens of thousands of readings a second on one core): each reading becomes one row tuple,
built once after the entries are posted, its entry id found by position rather than by key; the ISO text of
an instant is formatted once per batch; the rating context is looked up once per meter, not per reading.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError

from powergate.domain.calendar import SiteCalendar
from powergate.domain.ledger import Entry, charge_entry
from powergate.domain.rating import (
    Charge,
    Rated,
    RatingContext,
    RatingState,
    Reading,
    Skipped,
    rate,
)
from powergate.services.site_calendar import SiteCalendars, sites_of_meters
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.bulk import Bulk
from powergate.store.tables import tariffs

MAX_BATCH = 20_000
MAX_CACHED_CONTEXTS = 10_000
"""Bound on the rating contexts kept (one per tariff, zone, limits and site calendar in use)."""
"""Bound on one batch: larger inputs are refused, the caller splits them."""

Clock = Callable[[], dt.datetime]
AfterPost = Callable[[Connection, set[int], dt.datetime], object]
"""Called in the batch's transaction after the ledger posts, with the wallet account ids the batch touched."""
Outcome = tuple[Reading, str, str | None, int | None, bool, int]
"""A reading's row-to-be: (reading, status, reason, amount in micros, estimated, index of its entry or -1)."""


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
    busy: list[Reading] = field(default_factory=list)
    """Readings left out because another transaction held their meter (``skip_busy``): the caller ingests them
    again, in a transaction of their own."""

    def absorb(self, other: IngestReport) -> None:
        """Add ``other``'s counts (the busy readings' own pass) to this report; ``busy`` becomes ``other``'s."""
        self.rated += other.rated
        self.skipped += other.skipped
        self.quarantined += other.quarantined
        self.duplicates += other.duplicates
        self.charged_micros += other.charged_micros
        self.rejected += other.rejected
        self.reasons.update(other.reasons)
        self.busy = other.busy


class RatingContexts:
    """Builds and caches one ``RatingContext`` per (tariff, time zone, limits, site calendar); tariffs are parsed
    once per stored document. ``prepare`` (once per batch) looks up the calendar of each meter's site, so a meter
    that belongs to a site is rated by its site's day types (admin overrides included, from the next batch after a
    change). The first meter of a tariff in a batch reads the tariff's stored document (a primary-key lookup, so
    one query per tariff in use per batch): a tariff whose document changed since its contexts were built (a new
    version published from the console, the API or the CLI, by any process) has them dropped, so every running
    ingest rates the next batch with the new document. Effective dates stay the rating engine's business:
    readings before a new version's start are still priced by the version in effect then."""

    def __init__(
        self,
        build: Callable[[Connection, metering.MeterRow], RatingContext],
        calendars: SiteCalendars | None = None,
    ) -> None:
        self._build = build
        self._cache: dict[tuple[str, str, int, int, int], RatingContext] = {}
        self._calendars = calendars if calendars is not None else SiteCalendars()
        self._site_calendars: dict[str, SiteCalendar] = {}
        self._documents: dict[str, str] = {}
        """tariff id -> the stored document its cached contexts were built from (as last read here)."""
        self._checked: set[str] = set()
        """Tariffs whose document this batch has checked already."""

    def prepare(self, conn: Connection, meter_ids: Sequence[str]) -> None:
        """The site calendar of each meter of a batch that belongs to a site (two indexed queries); the stored
        documents of the batch's tariffs are checked again (``for_meter``)."""
        site_of = sites_of_meters(conn, meter_ids)
        calendars = self._calendars.for_sites(conn, site_of.values())
        self._site_calendars = {meter_id: calendars[site_id] for meter_id, site_id in site_of.items()}
        self._checked.clear()

    def _check_document(self, conn: Connection, tariff_id: str) -> None:
        """Drop the tariff's contexts if its stored document changed since they were built (one primary-key
        lookup, once per tariff per batch)."""
        document = conn.execute(select(tariffs.c.document).where(tariffs.c.id == tariff_id)).scalar()
        known = self._documents.get(tariff_id)
        if known is not None and known != document:
            self._cache = {key: context for key, context in self._cache.items() if key[0] != tariff_id}
        if document is not None:
            if len(self._documents) >= MAX_CACHED_CONTEXTS:
                # contexts whose document is no longer remembered could not be checked: drop them together
                self._documents.clear()
                self._cache.clear()
            self._documents[tariff_id] = document
        self._checked.add(tariff_id)

    def for_meter(self, conn: Connection, meter: metering.MeterRow) -> RatingContext:
        if meter.tariff_id not in self._checked:
            self._check_document(conn, meter.tariff_id)
        calendar = self._site_calendars.get(meter.meter_id)
        # a cached context keeps its calendar alive, so the id of a cached calendar is never reused
        key = (meter.tariff_id, meter.timezone, meter.register_max_wh, meter.max_power_w, id(calendar))
        context = self._cache.get(key)
        if context is None:
            context = self._build(conn, meter)
            if calendar is not None and context.calendar is not calendar:
                context = replace(context, calendar=calendar)
            if len(self._cache) >= MAX_CACHED_CONTEXTS:
                self._cache.clear()
            self._cache[key] = context
        return context

    def forget(self) -> None:
        self._cache.clear()
        self._documents.clear()
        self._checked.clear()


def default_context_builder(conn: Connection, meter: metering.MeterRow) -> RatingContext:
    """A rating context from the stored tariff document and the site's time zone and calendar."""
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

    def __init__(
        self,
        engine: Engine,
        contexts: RatingContexts | None = None,
        clock: Clock = utc_now,
        after_post: AfterPost | None = None,  # issue 5 hook: services.prepaid.after_ingest
    ) -> None:
        self.after_post = after_post
        self.engine = engine
        self.contexts = contexts or RatingContexts(default_context_builder)
        self.clock = clock
        self.accounts = ledger_store.AccountCache()

    def ingest(self, batch: Sequence[Reading]) -> IngestReport:
        """Ingest ``batch`` in a transaction of its own."""
        with self.engine.begin() as conn:
            return self.ingest_in(conn, batch)

    def ingest_in(self, conn: Connection, batch: Sequence[Reading], *, skip_busy: bool = False) -> IngestReport:
        """Ingest ``batch`` within the caller's transaction on ``conn`` (which commits or rolls back all of it).

        Each attempt runs in a savepoint, so a failed one leaves the caller's transaction as it was: the ingest
        queue's worker holds its claimed batch row in the same transaction and deletes it on success.

        ``skip_busy`` (PostgreSQL): readings of meters that another transaction is rating right now are not
        waited for but returned in ``IngestReport.busy``, for the caller to ingest once this transaction is
        committed (``ingest``, which waits). Without it, two head-ends whose batches share one meter take turns
        for their whole batches.
        """
        if len(batch) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} readings, got {len(batch)}; split it")
        for attempt in (1, 2):
            try:
                with conn.begin_nested():
                    return self._ingest(conn, batch, skip_busy)
            except (IntegrityError, OperationalError) as error:
                # A concurrent writer stored some of these readings or accounts first: start again from the
                # database, where they are now visible as duplicates (a new statement sees what it committed).
                # PostgreSQL may also pick this batch as a deadlock victim (two first batches of new meters have
                # no state rows to queue on): the savepoint is gone, try once more.
                if isinstance(error, OperationalError) and not _transient(error):
                    raise
                self.accounts.forget()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _ingest(self, conn: Connection, batch: Sequence[Reading], skip_busy: bool = False) -> IngestReport:
        now = self.clock()
        report = IngestReport()
        unique: dict[str, Reading] = {}
        for reading in batch:
            if reading.reading_id in unique:
                report.duplicates += 1
            else:
                unique[reading.reading_id] = reading
        # Lock the meters' states before looking up known ids: another process may be rating these meters right
        # now, and once it commits we see its readings as duplicates (a reading id alone is no longer a unique
        # key on partitioned PostgreSQL, where the key is (id, at)). A meter without a state yet has no row to
        # lock: two first batches of one meter then collide on its new state row and ours is retried.
        busy = metering.lock_states(conn, sorted({r.meter_id for r in unique.values()}), skip_busy=skip_busy)
        if busy:
            report.busy = [r for r in unique.values() if r.meter_id in busy]
            unique = {key: r for key, r in unique.items() if r.meter_id not in busy}
        times = [r.at for r in unique.values()]
        seen = metering.existing_reading_ids(conn, list(unique), (min(times), max(times)) if times else None)
        report.duplicates += len(seen)
        fresh = [r for r in unique.values() if r.reading_id not in seen]
        meter_ids = sorted({r.meter_id for r in fresh})
        meters = metering.load_meters(conn, meter_ids)
        self.contexts.prepare(conn, meter_ids)
        states = metering.load_states(conn, meter_ids)
        had_state = set(states)
        fresh.sort(key=_INGEST_ORDER)
        for known in meters.values():
            self.accounts.remember(known.wallet, known.wallet_account_id)

        bulk = Bulk(conn)
        outcomes, entries, changed = self._rate(conn, fresh, meters, states, report)
        # The revenue account every deduction credits is the hottest row there is, held from its balance update
        # to the commit: the balances are updated once the readings and states are written, so another
        # head-end's batch waits for it only while this one decides its balance policy and commits.
        deltas: dict[int, int] = {}
        entry_ids = ledger_store.post_batch(conn, entries, now, self.accounts, bulk, defer_deltas=deltas)
        metering.insert_readings(conn, reading_rows(bulk, outcomes, entry_ids, bulk.ts(now)), bulk)
        metering.save_states(conn, changed.values(), had_state, bulk)
        ledger_store.apply_deltas(conn, deltas, bulk)
        if self.after_post is not None:  # issue 5 hook: balance policy decisions, in this same transaction
            self.after_post(conn, {m.wallet_account_id for m in meters.values()}, now)
        return report

    def _rate(
        self,
        conn: Connection,
        fresh: Sequence[Reading],
        meters: dict[str, metering.MeterRow],
        states: dict[str, RatingState],
        report: IngestReport,
    ) -> tuple[list[Outcome], list[Entry], dict[str, RatingState]]:
        """Rate ``fresh`` (sorted by meter and time) from ``states``, which it advances.

        Returns each reading's outcome for its row (the entry's index in the returned entries, or -1), the
        deductions to post and the states that changed.
        """
        outcomes: list[Outcome] = []
        entries: list[Entry] = []
        changed: dict[str, RatingState] = {}
        iso = _IsoTimes()
        context: RatingContext | None = None
        context_meter = ""
        for reading in fresh:
            meter_id = reading.meter_id
            meter = meters.get(meter_id)
            if meter is None:
                report.rejected.append((reading.reading_id, f"unknown meter {meter_id!r}"))
                continue
            if context is None or meter_id != context_meter:  # readings come grouped by meter
                context, context_meter = self.contexts.for_meter(conn, meter), meter_id
            state = states.get(meter_id) or RatingState(meter_id)
            outcome = rate(state, reading, context)
            if outcome.state is not state:
                states[meter_id] = changed[meter_id] = outcome.state
            if isinstance(outcome, Rated):
                report.rated += 1
                charge = outcome.charge
                entry = _deduction(charge, meter.wallet, reading, iso)
                index = -1
                if entry is not None:
                    index = len(entries)
                    entries.append(entry)
                    report.charged_micros += charge.amount_micros
                outcomes.append((reading, "rated", None, charge.amount_micros, charge.estimated, index))
                continue
            report.reasons[reading.reading_id] = outcome.reason
            if isinstance(outcome, Skipped):
                report.skipped += 1
                outcomes.append((reading, "skipped", outcome.reason, None, False, -1))
            else:
                report.quarantined += 1
                outcomes.append((reading, "quarantined", outcome.reason, None, False, -1))
        return outcomes, entries, changed


_INGEST_ORDER = attrgetter("meter_id", "at", "reading_id")
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
"""PostgreSQL's deadlock_detected and serialization_failure: the transaction may simply be tried again."""


def _transient(error: OperationalError) -> bool:
    return getattr(error.orig, "sqlstate", None) in TRANSIENT_SQLSTATES


ENTRY_ID_COLUMN = metering.READING_COLUMNS.index("entry_id")
MAX_CACHED_TIMES = 50_000
"""Bound on the instants one batch remembers the ISO text of."""


class _IsoTimes:
    """``datetime.isoformat()`` remembered per UTC instant: a batch's readings share a few instants."""

    __slots__ = ("_texts",)

    def __init__(self) -> None:
        self._texts: dict[dt.datetime, str] = {}

    def __call__(self, value: dt.datetime) -> str:
        if value.tzinfo is not dt.UTC:  # other zones: equal instants may print differently
            return value.isoformat()
        text = self._texts.get(value)
        if text is None:
            if len(self._texts) >= MAX_CACHED_TIMES:
                self._texts.clear()
            text = self._texts[value] = value.isoformat()
        return text


def reading_rows(
    bulk: Bulk, outcomes: Sequence[Outcome], entry_ids: Sequence[int], received: object
) -> list[tuple[object, ...]]:
    """The readings as rows in ``metering.READING_COLUMNS`` order, each with its ledger entry's id."""
    ts = bulk.ts
    no_bands = metering.NO_BANDS
    rows: list[tuple[object, ...]] = []
    for reading, status, reason, amount_micros, estimated, index in outcomes:
        bands = reading.bands_wh or no_bands
        rows.append(
            (
                reading.reading_id,
                reading.meter_id,
                ts(reading.at),
                reading.total_wh,
                bands[0],
                bands[1],
                bands[2],
                bands[3],
                reading.kind.value,
                status,
                reason,
                amount_micros,
                estimated,
                entry_ids[index] if index >= 0 else None,
                received,
            )
        )
    return rows


def _deduction(
    charge: Charge, wallet: str, reading: Reading, iso: Callable[[dt.datetime], str] = dt.datetime.isoformat
) -> Entry | None:
    lines = charge.lines
    if len(lines) == 1:  # the common case: one band, or one flat price
        by_component = {lines[0].component: lines[0].amount_micros}
    else:
        by_component = {}
        for line in lines:
            by_component[line.component] = by_component.get(line.component, 0) + line.amount_micros
    return charge_entry(
        f"reading:{reading.reading_id}",
        wallet,
        by_component,
        reading.at,
        description=f"meter {reading.meter_id} {iso(charge.start)}..{iso(charge.end)}",
    )
