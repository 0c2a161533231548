"""The rating engine: one meter reading in, the charge for the interval since the last one out.

``rate(state, reading, ctx)`` is a pure function. ``state`` is the meter's persisted ``RatingState`` (last
registers, tier cycle, rounding carry); ``ctx`` is everything else (tariff, calendar, time zone, limits),
built once per meter and reused. The outcome is ``Rated`` (a ``Charge`` and the next state), ``Skipped`` (no
charge; first reading, duplicate, out of order, replacement meter's initial reading) or ``Quarantined`` (not
billed, state unchanged: negative or implausible delta, zero-length interval with energy).

How an interval is priced:

- Energy is the delta of the total register; a register below the last one is a rollover when
  ``register_max_wh + register_step_wh - last + current`` is plausible, otherwise the reading is quarantined.
- Band energies come from the meter's band registers when both readings have them (the meter split TOU
  itself; their sum is scaled to the total by largest remainder, since each register truncates on its own);
  otherwise the total is split by time overlap with the band schedule in site-local time and the charge is
  ``estimated``.
- The interval is cut at tariff-version changes and tier-cycle boundaries; energy is shared between the pieces
  by time. Tier thresholds are exact: the piece's energy sits at positions ``[e, e + q)`` of the cycle's
  consumption and each tier gets its overlap. The base allowance is the first N of the cycle and is free; with
  TOU its share is taken from each band pro rata.

The one rounding rule: a line's exact cost is ``quantity * price`` nanos; the reading's amount is
``(carry + sum of nanos) // 1000`` micros and the remainder is carried in the state (0..999). So the sum of
the amounts of any run of readings equals ``floor(total nanos / 1000)``: no drift, ever. Within a reading
the micros are split over the lines by largest remainder, so the lines sum exactly to the amount.

Speed: the version and cycle of an interval are checked with datetime comparisons against precomputed UTC
instants; the band schedule of a local date is converted to UTC once and cached; a regular reading needs no
time-zone conversion unless it must be split by time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from itertools import pairwise

from powergate.domain.calendar import SiteCalendar
from powergate.domain.tariff import (
    Band,
    StandingChargeLine,
    Tariff,
    TariffVersion,
    TierMode,
    standing_charge_lines,
)

COMPONENT_ENERGY = "energy"
"""Energy at the flat or the TOU band price."""
COMPONENT_TIER_ENERGY = "tier_energy"
"""Energy at the tier price (tiers in mode ``price``)."""
COMPONENT_TIER_SURCHARGE = "tier_surcharge"
"""Per-kWh tier surcharge on top of the energy price (tiers in mode ``surcharge``)."""
COMPONENT_BASE_ALLOWANCE = "base_allowance"
"""Free energy of the cycle's base allowance (price 0)."""
QUANTITY_COMPONENTS = frozenset({COMPONENT_ENERGY, COMPONENT_TIER_ENERGY, COMPONENT_BASE_ALLOWANCE})
"""The lines of these components split the interval's energy: their quantities sum to ``Charge.quantity``.
Surcharge lines cover the charged (non-free) energy a second time."""

NANOS_PER_MICRO = 1000
US_PER_S = 1_000_000
US_PER_HOUR = 3600 * US_PER_S
BAND_TOLERANCE_STEPS = 4
"""Band registers may disagree with the total by one step each (they truncate separately); beyond that they
are not trusted and the interval is split by time instead."""
MAX_CACHED_DAYS = 20_000
"""Bound on the per-(version, local date) schedule cache of one plan; cleared when full."""
_BANDS = (Band.SHARP, Band.PEAK, Band.FLAT, Band.VALLEY)


class ReadingKind(StrEnum):
    REGULAR = "regular"
    FINAL = "final"
    """Last reading of a removed meter."""
    INITIAL = "initial"
    """First reading of its replacement."""


@dataclass(frozen=True, slots=True)
class Reading:
    reading_id: str
    meter_id: str
    at: datetime
    """Timezone-aware (UTC in the store)."""
    total_wh: int
    """Total register, e.g. 12345678 = 12345.678 kWh (litres for water)."""
    bands_wh: tuple[int, int, int, int] | None = None
    """Sharp, peak, flat, valley registers, if the meter has them."""
    kind: ReadingKind = ReadingKind.REGULAR


@dataclass(frozen=True, slots=True)
class RatingState:
    """What rating remembers of a meter; persisted by the store, so plain fields only."""

    meter_id: str
    last_reading_id: str | None = None
    last_at: datetime | None = None
    last_total_wh: int | None = None
    last_bands_wh: tuple[int, int, int, int] | None = None
    awaiting_initial: bool = False
    """After a FINAL reading, until the replacement's INITIAL reading."""
    cycle_start: date | None = None
    """Local date the current tier / allowance cycle began."""
    cycle_energy_wh: int = 0
    """Consumption so far in that cycle."""
    carry_nanos: int = 0
    """0..999, the rounding carry."""


@dataclass(frozen=True, slots=True)
class ChargeLine:
    component: str
    band: Band | None
    tier: int | None
    """0-based tier index, or None."""
    quantity: int
    """Wh (litres for water)."""
    price_micros: int
    """Per kWh (per m³)."""
    amount_micros: int
    version: int
    """Index of the tariff version applied."""


@dataclass(frozen=True, slots=True)
class Charge:
    reading_id: str
    meter_id: str
    start: datetime
    end: datetime
    quantity: int
    amount_micros: int
    """``== sum(line.amount_micros)``, never negative."""
    lines: tuple[ChargeLine, ...]
    estimated: bool
    """True when a band split came from time overlap (no usable band registers)."""


@dataclass(frozen=True, slots=True)
class Rated:
    state: RatingState
    charge: Charge


@dataclass(frozen=True, slots=True)
class Skipped:
    state: RatingState
    reason: str


@dataclass(frozen=True, slots=True)
class Quarantined:
    state: RatingState
    reason: str


RatingOutcome = Rated | Skipped | Quarantined


# --- hot-path constructors ---
# A frozen dataclass sets each field through object.__setattr__, which costs about 1.4 µs for a RatingState:
# a third of a flat reading's rating time. These build the same objects (equal, immutable) by calling the slot
# descriptors directly, at half the cost. The field lists are checked against the classes at import.

_NEW = object.__new__
Setter = Callable[[object, object], None]


def _setters(cls: type, names: tuple[str, ...]) -> tuple[Setter, ...]:
    assert tuple(cls.__dict__["__slots__"]) == names, f"{cls.__name__} fields changed; update its hot-path constructor"
    return tuple(getattr(cls, name).__set__ for name in names)


_STATE_SETTERS = _setters(
    RatingState,
    (
        "meter_id",
        "last_reading_id",
        "last_at",
        "last_total_wh",
        "last_bands_wh",
        "awaiting_initial",
        "cycle_start",
        "cycle_energy_wh",
        "carry_nanos",
    ),
)
_CHARGE_SETTERS = _setters(
    Charge, ("reading_id", "meter_id", "start", "end", "quantity", "amount_micros", "lines", "estimated")
)
_LINE_SETTERS = _setters(
    ChargeLine, ("component", "band", "tier", "quantity", "price_micros", "amount_micros", "version")
)
_RATED_SETTERS = _setters(Rated, ("state", "charge"))


def new_state(
    meter_id: str,
    reading: Reading,
    awaiting_initial: bool,
    cycle_start: date | None,
    cycle_energy_wh: int,
    carry_nanos: int,
) -> RatingState:
    """``RatingState`` with ``reading`` as the last reading; equal to calling the class."""
    state = _NEW(RatingState)
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = _STATE_SETTERS
    s0(state, meter_id)
    s1(state, reading.reading_id)
    s2(state, reading.at)
    s3(state, reading.total_wh)
    s4(state, reading.bands_wh)
    s5(state, awaiting_initial)
    s6(state, cycle_start)
    s7(state, cycle_energy_wh)
    s8(state, carry_nanos)
    return state


def new_charge(
    reading: Reading,
    start: datetime,
    quantity: int,
    amount_micros: int,
    lines: tuple[ChargeLine, ...],
    estimated: bool,
) -> Charge:
    charge = _NEW(Charge)
    s0, s1, s2, s3, s4, s5, s6, s7 = _CHARGE_SETTERS
    s0(charge, reading.reading_id)
    s1(charge, reading.meter_id)
    s2(charge, start)
    s3(charge, reading.at)
    s4(charge, quantity)
    s5(charge, amount_micros)
    s6(charge, lines)
    s7(charge, estimated)
    return charge


def new_line(
    component: str,
    band: Band | None,
    tier: int | None,
    quantity: int,
    price_micros: int,
    amount_micros: int,
    version: int,
) -> ChargeLine:
    line = _NEW(ChargeLine)
    s0, s1, s2, s3, s4, s5, s6 = _LINE_SETTERS
    s0(line, component)
    s1(line, band)
    s2(line, tier)
    s3(line, quantity)
    s4(line, price_micros)
    s5(line, amount_micros)
    s6(line, version)
    return line


def new_rated(state: RatingState, charge: Charge) -> Rated:
    rated = _NEW(Rated)
    s0, s1 = _RATED_SETTERS
    s0(rated, state)
    s1(rated, charge)
    return rated


# --- the compiled tariff ---


@dataclass(frozen=True, slots=True)
class _VersionPlan:
    """One version with its prices laid out for rating."""

    index: int
    version: TariffVersion
    flat_price_micros: int | None
    band_prices_micros: tuple[int, ...] | None
    """Indexed by band value (0 unused); None for flat pricing."""
    tier_mode: TierMode | None
    tier_bounds: tuple[tuple[int, int | None, int], ...]
    """(lower, upper or None, price) per tier."""
    allowance_wh: int
    simple: bool
    """No tiers and no allowance: the energy lines depend only on the interval's own energy."""


@dataclass(frozen=True, slots=True)
class _Day:
    """One local date of one version: its UTC span and the band of every stretch of it."""

    end: datetime
    segments: tuple[tuple[datetime, datetime, Band], ...]


class Plan:
    """A tariff compiled for a time zone and calendar; caches UTC instants (bounded), answers the same."""

    def __init__(self, tariff: Tariff, calendar: SiteCalendar, tz: tzinfo) -> None:
        problems = tariff.problems()
        assert not problems, f"rating needs a valid tariff: {'; '.join(map(str, problems))}"
        self.tariff = tariff
        self.calendar = calendar
        self.tz = tz
        self.version_starts = tuple(self.to_utc(v.effective_from) for v in tariff.versions)
        self.versions = tuple(_version_plan(i, v) for i, v in enumerate(tariff.versions))
        self.single_version = len(self.versions) == 1
        self._cycle_bounds: dict[date, tuple[datetime, datetime]] = {}
        self._days: dict[tuple[int, date], _Day] = {}

    def to_utc(self, local: datetime) -> datetime:
        """A naive local wall time as an aware UTC instant."""
        return local.replace(tzinfo=self.tz).astimezone(UTC)

    def local_date(self, at: datetime) -> date:
        return at.astimezone(self.tz).date()

    def version_at(self, at: datetime) -> int | None:
        if self.single_version:
            return 0 if at >= self.version_starts[0] else None
        index = bisect_right(self.version_starts, at) - 1
        return index if index >= 0 else None

    def cycle_bounds(self, cycle_start: date) -> tuple[datetime, datetime]:
        """UTC start and end of the cycle that begins on local date ``cycle_start``."""
        bounds = self._cycle_bounds.get(cycle_start)
        if bounds is None:
            end = self.tariff.cycle.next_start(cycle_start)
            bounds = (
                self.to_utc(datetime.combine(cycle_start, time())),
                self.to_utc(datetime.combine(end, time())),
            )
            if len(self._cycle_bounds) >= MAX_CACHED_DAYS:
                self._cycle_bounds.clear()
            self._cycle_bounds[cycle_start] = bounds
        return bounds

    def cycle_start_at(self, at: datetime) -> date:
        return self.tariff.cycle.start_of(self.local_date(at))

    def day(self, version: int, local_date: date) -> _Day:
        """The band schedule of a local date under a TOU version, in UTC; cached."""
        key = (version, local_date)
        found = self._days.get(key)
        if found is None:
            found = self._build_day(version, local_date)
            if len(self._days) >= MAX_CACHED_DAYS:
                self._days.clear()
            self._days[key] = found
        return found

    def _build_day(self, version: int, local_date: date) -> _Day:
        tou = self.tariff.versions[version].tou
        assert tou is not None
        schedule = tou.season_of(local_date.month).schedule_for(self.calendar.day_type(local_date))
        midnight = datetime.combine(local_date, time())
        segments: list[tuple[datetime, datetime, Band]] = []
        previous_end = self.to_utc(midnight)
        for period in sorted(schedule, key=lambda p: p.start_minute):
            # Clamp to keep the stretches ordered across a DST change (none in China, but zones vary).
            start = max(previous_end, self.to_utc(midnight + timedelta(minutes=period.start_minute)))
            end = max(start, self.to_utc(midnight + timedelta(minutes=period.end_minute)))
            if segments and segments[-1][2] is period.band and segments[-1][1] == start:
                segments[-1] = (segments[-1][0], end, period.band)
            elif end > start:
                segments.append((start, end, period.band))
            previous_end = end
        return _Day(previous_end, tuple(segments))


def _version_plan(index: int, version: TariffVersion) -> _VersionPlan:
    band_prices: tuple[int, ...] | None = None
    if version.tou is not None:
        band_prices = (0, *(version.tou.price_of(band) or 0 for band in _BANDS))
    bounds: list[tuple[int, int | None, int]] = []
    if version.tiers is not None:
        lower = 0
        for block in version.tiers.blocks:
            bounds.append((lower, block.up_to_quantity, block.price_micros))
            lower = block.up_to_quantity or lower
    tier_mode = version.tiers.mode if version.tiers is not None else None
    return _VersionPlan(
        index=index,
        version=version,
        flat_price_micros=version.price_micros,
        band_prices_micros=band_prices,
        tier_mode=tier_mode,
        tier_bounds=tuple(bounds),
        allowance_wh=version.base_allowance_quantity,
        simple=tier_mode is None and version.base_allowance_quantity == 0,
    )


@dataclass(frozen=True, slots=True)
class RatingContext:
    """Everything rating needs besides the state; built once per meter (or per tariff and site), reused."""

    tariff: Tariff
    calendar: SiteCalendar
    tz: tzinfo
    register_max_wh: int = 999_999_990
    """999999.99 kWh: the rollover point; the next value after it is 0."""
    max_power_w: int = 100_000
    """Average power over an interval above this is implausible (for water: litres per hour)."""
    register_step_wh: int = 10
    """Register resolution: the rollover modulus is ``register_max_wh + register_step_wh``."""
    plan: Plan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert self.register_max_wh > 0 and self.register_step_wh > 0 and self.max_power_w > 0
        object.__setattr__(self, "plan", Plan(self.tariff, self.calendar, self.tz))


# --- rating ---


def rate(state: RatingState, reading: Reading, ctx: RatingContext) -> RatingOutcome:
    """Rate one reading of ``state``'s meter against the interval since its last reading."""
    assert reading.meter_id == state.meter_id, "reading of another meter"
    assert reading.at.tzinfo is not None, "reading time must be timezone-aware"
    if not 0 <= reading.total_wh <= ctx.register_max_wh:
        return Quarantined(state, f"total register {reading.total_wh} Wh is outside 0..{ctx.register_max_wh}")
    last_at = state.last_at
    if last_at is None or state.last_total_wh is None:
        return Skipped(_baseline(state, reading, ctx), "baseline: first reading of the meter")
    if reading.reading_id == state.last_reading_id:
        return Skipped(state, f"duplicate: reading {reading.reading_id} is the meter's last reading")
    at = reading.at
    if at < last_at:
        return Skipped(state, f"out of order: {at.isoformat()} is before the last reading at {last_at.isoformat()}")
    if at == last_at:
        return _same_instant(state, reading)
    if reading.kind is ReadingKind.INITIAL:
        return Skipped(_baseline(state, reading, ctx), "baseline: initial reading of a replacement meter")
    if state.awaiting_initial:
        return Quarantined(
            state,
            f"meter was removed (final reading {state.last_reading_id}); expected the replacement's initial reading",
        )
    return _rate_interval(state, reading, ctx, last_at, state.last_total_wh)


def _same_instant(state: RatingState, reading: Reading) -> Skipped | Quarantined:
    if reading.total_wh == state.last_total_wh and (
        reading.bands_wh is None or state.last_bands_wh is None or reading.bands_wh == state.last_bands_wh
    ):
        return Skipped(state, f"duplicate: same time and registers as reading {state.last_reading_id}")
    return Quarantined(
        state,
        f"zero-duration interval at {reading.at.isoformat()}: total {state.last_total_wh} -> {reading.total_wh} Wh",
    )


def _baseline(state: RatingState, reading: Reading, ctx: RatingContext) -> RatingState:
    """Registers of ``reading`` become the baseline; the tier cycle continues if it is the same cycle."""
    cycle_start = ctx.plan.cycle_start_at(reading.at)
    cycle_energy_wh = state.cycle_energy_wh if cycle_start == state.cycle_start else 0
    return RatingState(
        state.meter_id,
        reading.reading_id,
        reading.at,
        reading.total_wh,
        reading.bands_wh,
        reading.kind is ReadingKind.FINAL,
        cycle_start,
        cycle_energy_wh,
        state.carry_nanos,
    )


def _rate_interval(
    state: RatingState, reading: Reading, ctx: RatingContext, last_at: datetime, last_total_wh: int
) -> RatingOutcome:
    at = reading.at
    modulus = ctx.register_max_wh + ctx.register_step_wh
    energy_wh = reading.total_wh - last_total_wh
    rolled = energy_wh < 0
    if rolled:
        energy_wh += modulus
    span = at - last_at
    duration_us = (span.days * 86_400 + span.seconds) * US_PER_S + span.microseconds
    if energy_wh * US_PER_HOUR > ctx.max_power_w * duration_us:
        return Quarantined(state, _implausible(state, reading, energy_wh, duration_us, rolled, ctx))
    plan = ctx.plan
    version = plan.version_at(last_at)
    if version is None:
        first = plan.tariff.versions[0].effective_from
        return Quarantined(state, f"no tariff version in effect before {first:%Y-%m-%d %H:%M} (local time)")
    bands_wh = _band_deltas(state.last_bands_wh, reading.bands_wh, energy_wh, modulus, ctx.register_step_wh)
    cycle_start = state.cycle_start
    if cycle_start is not None and (plan.single_version or plan.version_at(at) == version):
        cycle_begin, cycle_end = plan.cycle_bounds(cycle_start)
        if cycle_begin <= last_at and at < cycle_end:
            vp = plan.versions[version]
            if vp.simple:
                return _rate_simple(state, reading, plan, vp, energy_wh, bands_wh, cycle_start)
            pricer = _Pricer()
            estimated = _price_piece(
                pricer, plan, plan.versions[version], energy_wh, bands_wh, state.cycle_energy_wh, last_at, at
            )
            return _finish(state, reading, pricer, energy_wh, estimated, cycle_start, state.cycle_energy_wh + energy_wh)
    return _rate_split(state, reading, plan, energy_wh, bands_wh)


def _rate_simple(
    state: RatingState,
    reading: Reading,
    plan: Plan,
    vp: _VersionPlan,
    energy_wh: int,
    bands_wh: tuple[int, ...] | None,
    cycle_start: date,
) -> Rated:
    """The hot path: one version, one cycle, no tiers, no allowance. Same result as the general path."""
    last_at = state.last_at
    assert last_at is not None
    version = vp.index
    band_prices = vp.band_prices_micros
    estimated = False
    if band_prices is None:
        price = vp.flat_price_micros
        assert price is not None
        amount_micros, carry_nanos = divmod(state.carry_nanos + energy_wh * price, NANOS_PER_MICRO)
        lines: tuple[ChargeLine, ...] = ()
        if energy_wh:
            lines = (new_line(COMPONENT_ENERGY, None, None, energy_wh, price, amount_micros, version),)
    else:
        if bands_wh is None and energy_wh:
            bands_wh = tuple(largest_remainder(energy_wh, band_durations_us(plan, version, last_at, reading.at)))
            estimated = True
        nanos_total = state.carry_nanos
        used: list[tuple[Band, int, int, int]] = []  # (band, Wh, price, nanos) of the bands with energy
        for band, wh in zip(_BANDS, bands_wh or (), strict=False):
            if wh:
                price = band_prices[band]
                used.append((band, wh, price, wh * price))
                nanos_total += wh * price
        amount_micros, carry_nanos = divmod(nanos_total, NANOS_PER_MICRO)
        if len(used) == 1:  # the usual quarter hour: all of it in one band, so the line takes the whole amount
            band, wh, price, _ = used[0]
            lines = (new_line(COMPONENT_ENERGY, band, None, wh, price, amount_micros, version),)
        else:
            line_micros = _split_micros(amount_micros, [nanos for _, _, _, nanos in used])
            lines = tuple(
                new_line(COMPONENT_ENERGY, band, None, wh, price, micros, version)
                for (band, wh, price, _), micros in zip(used, line_micros, strict=True)
            )
    charge = new_charge(reading, last_at, energy_wh, amount_micros, lines, estimated)
    final = reading.kind is ReadingKind.FINAL
    next_state = new_state(state.meter_id, reading, final, cycle_start, state.cycle_energy_wh + energy_wh, carry_nanos)
    return new_rated(next_state, charge)


def _implausible(
    state: RatingState, reading: Reading, energy_wh: int, duration_us: int, rolled: bool, ctx: RatingContext
) -> str:
    seconds = duration_us / US_PER_S
    power = f"{energy_wh * US_PER_HOUR // duration_us} W average" if duration_us else "infinite power"
    what = f"{energy_wh} Wh in {seconds:g} s is {power}, above the limit of {ctx.max_power_w} W"
    if rolled:
        return (
            f"negative delta: total register went from {state.last_total_wh} to {reading.total_wh} Wh; "
            f"as a rollover at {ctx.register_max_wh} Wh, {what}"
        )
    return f"implausible reading: {what}"


def _band_deltas(
    last: tuple[int, int, int, int] | None,
    current: tuple[int, int, int, int] | None,
    energy_wh: int,
    modulus: int,
    step_wh: int,
) -> tuple[int, int, int, int] | None:
    """Band energies summing exactly to ``energy_wh``, or None when the registers can't be used."""
    if last is None or current is None:
        return None
    last_sharp, last_peak, last_flat, last_valley = last
    sharp, peak, flat, valley = current
    deltas = (
        (sharp - last_sharp) % modulus,
        (peak - last_peak) % modulus,
        (flat - last_flat) % modulus,
        (valley - last_valley) % modulus,
    )
    found = deltas[0] + deltas[1] + deltas[2] + deltas[3]
    if found == energy_wh:
        return deltas
    if found == 0 or abs(found - energy_wh) > BAND_TOLERANCE_STEPS * step_wh:
        return None
    shares = largest_remainder(energy_wh, deltas)
    return (shares[0], shares[1], shares[2], shares[3])


class _Pricer:
    """Collects (component, band, tier, price, version) -> quantity for one reading."""

    __slots__ = ("quantities",)

    def __init__(self) -> None:
        self.quantities: dict[tuple[str, Band | None, int | None, int, int], int] = {}

    def add(self, component: str, band: Band | None, tier: int | None, price: int, version: int, qty: int) -> None:
        if qty:
            key = (component, band, tier, price, version)
            self.quantities[key] = self.quantities.get(key, 0) + qty


def _price_piece(
    pricer: _Pricer,
    plan: Plan,
    vp: _VersionPlan,
    energy_wh: int,
    bands_wh: tuple[int, ...] | None,
    cycle_energy_wh: int,
    start: datetime,
    end: datetime,
) -> bool:
    """Price ``energy_wh`` used in ``[start, end)`` under one version within one cycle; True if estimated."""
    estimated = False
    band_prices = vp.band_prices_micros
    if band_prices is not None and bands_wh is None and energy_wh:
        bands_wh = tuple(largest_remainder(energy_wh, band_durations_us(plan, vp.index, start, end)))
        estimated = True
    free_wh = min(energy_wh, max(0, vp.allowance_wh - cycle_energy_wh))
    charged_from = cycle_energy_wh + free_wh
    version = vp.index
    if vp.tier_mode is TierMode.PRICE:
        pricer.add(COMPONENT_BASE_ALLOWANCE, None, None, 0, version, free_wh)
        _add_tiers(pricer, COMPONENT_TIER_ENERGY, vp, charged_from, energy_wh - free_wh)
        return estimated
    if band_prices is None:
        assert vp.flat_price_micros is not None
        pricer.add(COMPONENT_BASE_ALLOWANCE, None, None, 0, version, free_wh)
        pricer.add(COMPONENT_ENERGY, None, None, vp.flat_price_micros, version, energy_wh - free_wh)
    elif bands_wh is not None:
        free_bands = largest_remainder(free_wh, bands_wh) if free_wh else (0, 0, 0, 0)
        for band, band_wh, band_free_wh in zip(_BANDS, bands_wh, free_bands, strict=True):
            pricer.add(COMPONENT_BASE_ALLOWANCE, band, None, 0, version, band_free_wh)
            pricer.add(COMPONENT_ENERGY, band, None, band_prices[band], version, band_wh - band_free_wh)
    if vp.tier_mode is TierMode.SURCHARGE:
        _add_tiers(pricer, COMPONENT_TIER_SURCHARGE, vp, charged_from, energy_wh - free_wh)
    return estimated


def _add_tiers(pricer: _Pricer, component: str, vp: _VersionPlan, first_wh: int, energy_wh: int) -> None:
    """Energy at cycle positions ``[first_wh, first_wh + energy_wh)``, split exactly at the thresholds."""
    last_wh = first_wh + energy_wh
    for tier, (lower, upper, price) in enumerate(vp.tier_bounds):
        overlap = (last_wh if upper is None else min(upper, last_wh)) - max(lower, first_wh)
        if overlap > 0:
            pricer.add(component, None, tier, price, vp.index, overlap)


def band_durations_us(plan: Plan, version: int, start: datetime, end: datetime) -> list[int]:
    """Microseconds of ``[start, end)`` spent in each band (sharp, peak, flat, valley) under a TOU version."""
    durations = [0, 0, 0, 0, 0]
    local_date = plan.local_date(start)
    while True:
        day = plan.day(version, local_date)
        for seg_start, seg_end, band in day.segments:
            if seg_end <= start:
                continue
            if seg_start >= end:
                break
            span = min(seg_end, end) - max(seg_start, start)
            durations[band] += (span.days * 86_400 + span.seconds) * US_PER_S + span.microseconds
        if day.end >= end:
            return durations[1:]
        local_date += timedelta(days=1)


def _rate_split(
    state: RatingState, reading: Reading, plan: Plan, energy_wh: int, bands_wh: tuple[int, ...] | None
) -> RatingOutcome:
    """The general case: cut the interval at version changes and cycle boundaries, share energy by time."""
    last_at = state.last_at
    assert last_at is not None
    pieces = _pieces(plan, last_at, reading.at)
    piece_energy = largest_remainder(energy_wh, [_us(end - start) for start, end, _, _ in pieces])
    remaining_bands = list(bands_wh) if bands_wh is not None else None
    pricer = _Pricer()
    estimated = False
    cycle_start = state.cycle_start
    cycle_energy_wh = state.cycle_energy_wh
    for (start, end, version, piece_cycle), piece_wh in zip(pieces, piece_energy, strict=True):
        if piece_cycle != cycle_start:
            cycle_start, cycle_energy_wh = piece_cycle, 0
        piece_bands: tuple[int, ...] | None = None
        if remaining_bands is not None:
            # Each piece takes its energy from the bands pro rata to what is left, so the pieces use up
            # exactly the interval's band energies.
            piece_bands = tuple(largest_remainder(piece_wh, remaining_bands))
            remaining_bands = [left - taken for left, taken in zip(remaining_bands, piece_bands, strict=True)]
        vp = plan.versions[version]
        estimated |= _price_piece(pricer, plan, vp, piece_wh, piece_bands, cycle_energy_wh, start, end)
        cycle_energy_wh += piece_wh
    assert cycle_start is not None
    return _finish(state, reading, pricer, energy_wh, estimated, cycle_start, cycle_energy_wh)


def _pieces(plan: Plan, start: datetime, end: datetime) -> list[tuple[datetime, datetime, int, date]]:
    """``[start, end)`` cut at version starts and cycle boundaries: (start, end, version, cycle start)."""
    cuts = {instant for instant in plan.version_starts if start < instant < end}
    cycle_start = plan.cycle_start_at(start)
    cycle_of_cut: list[tuple[datetime, date]] = [(start, cycle_start)]
    while True:
        boundary = plan.cycle_bounds(cycle_start)[1]
        if boundary >= end:
            break
        cycle_start = plan.tariff.cycle.next_start(cycle_start)
        cycle_of_cut.append((boundary, cycle_start))
        cuts.add(boundary)
    edges = [start, *sorted(cuts), end]
    pieces = []
    cycle_index = 0
    for piece_start, piece_end in pairwise(edges):
        while cycle_index + 1 < len(cycle_of_cut) and cycle_of_cut[cycle_index + 1][0] <= piece_start:
            cycle_index += 1
        version = plan.version_at(piece_start)
        assert version is not None
        pieces.append((piece_start, piece_end, version, cycle_of_cut[cycle_index][1]))
    return pieces


def _us(span: timedelta) -> int:
    return (span.days * 86_400 + span.seconds) * US_PER_S + span.microseconds


def _finish(
    state: RatingState,
    reading: Reading,
    pricer: _Pricer,
    energy_wh: int,
    estimated: bool,
    cycle_start: date,
    cycle_energy_wh: int,
) -> Rated:
    """Turn the collected quantities into micros by the one rounding rule and advance the state."""
    keys = list(pricer.quantities)
    nanos = [pricer.quantities[key] * key[3] for key in keys]
    carried = state.carry_nanos + sum(nanos)
    amount_micros, carry_nanos = divmod(carried, NANOS_PER_MICRO)
    line_micros = _split_micros(amount_micros, nanos)
    lines = tuple(
        new_line(key[0], key[1], key[2], pricer.quantities[key], key[3], micros, key[4])
        for key, micros in zip(keys, line_micros, strict=True)
    )
    last_at = state.last_at
    assert last_at is not None
    charge = new_charge(reading, last_at, energy_wh, amount_micros, lines, estimated)
    final = reading.kind is ReadingKind.FINAL
    return new_rated(new_state(state.meter_id, reading, final, cycle_start, cycle_energy_wh, carry_nanos), charge)


def _split_micros(amount_micros: int, nanos: list[int]) -> list[int]:
    """Micros per line summing to ``amount_micros``: floors first, the rest to the largest remainders."""
    if len(nanos) == 1:
        return [amount_micros]
    floors = [n // NANOS_PER_MICRO for n in nanos]
    extra = amount_micros - sum(floors)
    assert 0 <= extra <= len(nanos)
    if extra:
        order = sorted(range(len(nanos)), key=lambda i: -(nanos[i] % NANOS_PER_MICRO))
        for i in order[:extra]:
            floors[i] += 1
    return floors


def largest_remainder(total: int, weights: Iterable[int]) -> list[int]:
    """Split the integer ``total`` in proportion to ``weights`` so that the parts sum exactly to ``total``.

    Each part is the floor of its exact share; the units left over go to the largest fractional remainders
    (ties to the earlier weight). A part never exceeds its weight when ``total <= sum(weights)``.
    """
    weights = list(weights)
    weight_sum = sum(weights)
    assert weight_sum > 0 or total == 0, "cannot split a quantity over zero weights"
    if not total:
        return [0] * len(weights)
    parts = [total * w // weight_sum for w in weights]
    left = total - sum(parts)
    if left:
        order = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % weight_sum))
        for i in order[:left]:
            parts[i] += 1
    return parts


# --- quotes: a run of readings of several meters, priced from fresh states ---


@dataclass(frozen=True, slots=True)
class MeterQuote:
    """What a run of one meter's readings costs: every outcome, plus standing charges for the days covered."""

    meter_id: str
    outcomes: tuple[tuple[Reading, RatingOutcome], ...]
    standing_charges: tuple[StandingChargeLine, ...]
    state: RatingState

    @property
    def charges(self) -> tuple[Charge, ...]:
        return tuple(outcome.charge for _, outcome in self.outcomes if isinstance(outcome, Rated))

    @property
    def quantity(self) -> int:
        return sum(charge.quantity for charge in self.charges)

    @property
    def energy_micros(self) -> int:
        return sum(charge.amount_micros for charge in self.charges)

    @property
    def standing_micros(self) -> int:
        return sum(line.amount_micros for line in self.standing_charges)

    @property
    def total_micros(self) -> int:
        return self.energy_micros + self.standing_micros


def quote(
    readings: Iterable[Reading], ctx: RatingContext, states: Mapping[str, RatingState] | None = None
) -> tuple[MeterQuote, ...]:
    """Rate each meter's readings in time order (from ``states`` or from scratch), meters sorted by id.

    Standing charges cover the local dates from the first reading to the last one that advanced the state (a
    last reading at local midnight does not start a new day).
    """
    by_meter: dict[str, list[Reading]] = {}
    for reading in readings:
        by_meter.setdefault(reading.meter_id, []).append(reading)
    quotes = []
    for meter_id in sorted(by_meter):
        meter_readings = sorted(by_meter[meter_id], key=lambda r: r.at)
        state = (states or {}).get(meter_id) or RatingState(meter_id)
        first_at = state.last_at
        outcomes = []
        for reading in meter_readings:
            outcome = rate(state, reading, ctx)
            outcomes.append((reading, outcome))
            state = outcome.state
            first_at = first_at or state.last_at
        standing: tuple[StandingChargeLine, ...] = ()
        if first_at is not None and state.last_at is not None and state.last_at > first_at:
            first_date = ctx.plan.local_date(first_at)
            last_date = ctx.plan.local_date(state.last_at - timedelta(microseconds=1))
            standing = standing_charge_lines(ctx.tariff, first_date, last_date)
        quotes.append(MeterQuote(meter_id, tuple(outcomes), standing, state))
    return tuple(quotes)
