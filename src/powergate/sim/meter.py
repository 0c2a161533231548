"""A virtual prepaid meter (money-prepaid, meter-side billing) that the protocol faces answer from.

The meter keeps what a real single-phase prepaid meter keeps: per-band energy registers (sharp / peak /
flat / valley, rates 1..4; the total is their sum), its own clock, its TOU table and price table, the
remaining amount and overdraft amount, the purchase count, alarm amounts, overdraft / hoarding /
close-allowed limits, a power limit, the relay and its status word 3, event records with counts, a password
per level and an operator check.

Time is passed in (``advance(now_s)``, true UTC seconds); the meter never reads a clock. Consumption comes
from a seeded, stateless load profile (``sim.profiles``) integrated minute by minute in the meter's local
time, so a meter can be advanced lazily, only when something asks, and still gives the same registers.

Invariants (checked by ``tests/unit/test_sim_meter.py``):
- money and energy are integers: energy accrues in watt-seconds (W·s, or L·s/h for water) and the registers
  are whole 0.01 kWh (0.01 m³) ticks; each tick costs ``price // 100`` micros (prices carry 4 decimals, so the
  division is exact) and is deducted exactly once, when it is reached;
- the balance (remaining amount minus overdraft amount) only goes up through ``recharge`` with the next
  purchase count (last + 1); the same count again reports "already applied" and credits nothing;
- the relay opens by itself at the tick that takes the balance to minus the overdraft limit, above the power
  limit, or on a trip command, and never while power-protect is on; after a recharge above the close-allowed
  amount it closes by itself;
- daily freeze: at every local midnight (00:00 by the meter's own clock and UTC offset) that ``advance``
  runs through, the meter freezes its clock reading and its band registers, exactly as they stand at that
  instant (everything before 00:00 accrued, nothing after); it keeps the last ``MAX_DAILY_FREEZES``, newest
  last, the oldest dropped. A power failure does not stop the freeze (meters catch up on the missed freezes
  at power-up); a clock set across midnight does not freeze (the meter never ran through it).

Memory: a fleet holds 10,000+ meters, so a meter is a ``__slots__`` object of ints plus references to shared,
frozen settings (a write makes this meter its own copy); event records and the notice queue are allocated
only when the first event happens; the daily freezes only at the first midnight, as one flat ``array`` of
32-bit ints (five a day: freeze time and four band registers; the total is their sum), 20 bytes a day.
"""

from __future__ import annotations

import bisect
import dataclasses
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import Enum, IntEnum

from powergate.domain.energy import Commodity
from powergate.domain.money import MICROS_PER_UNIT
from powergate.domain.tou_table import MeterTou
from powergate.sim.profiles import MINUTES_PER_DAY, LoadProfile, mix64

WS_PER_TICK = 36_000
"""One register step, 0.01 kWh, in watt-seconds (10 Wh x 3600 s). Water: 0.01 m³ = 10 L, in L·s/h alike."""

MAX_CATCH_UP_S = 400 * 86_400
"""A limit on one ``advance``: a meter left alone longer than this is a programmer error in the caller."""

MAX_NOTICES = 64
"""A limit on unsent notices; the oldest are dropped (a real meter's event buffer is bounded too)."""

MAX_TOU_SEGMENTS = 14
"""DL/T 645-2007 day tables hold at most 14 periods."""

MAX_REGISTER_TICKS = 99_999_999
"""Registers show XXXXXX.XX kWh and roll over to zero past 999999.99."""

MAX_DAILY_FREEZES = 62
"""DL/T 645-2007 daily freezes "last 1" .. "last 62" (DIs 050600nn / 050601nn)."""

SECONDS_PER_DAY = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_FREEZE_WORDS = 5
"""One daily freeze in the flat array: meter time (UTC seconds), then the four band registers (ticks)."""


class Band(IntEnum):
    """TOU bands; on the meter they are rates 1..4 (``Band + 1``)."""

    SHARP = 0
    PEAK = 1
    FLAT = 2
    VALLEY = 3


class EventKind(IntEnum):
    COVER_OPEN = 0
    TERMINAL_COVER_OPEN = 1
    REVERSE_CURRENT = 2
    VOLTAGE_LOSS = 3
    CURRENT_LOSS = 4
    MAGNETIC_INTERFERENCE = 5
    OVERLOAD = 6
    POWER_FAIL = 7


class RelayAction(Enum):
    """The N1 byte of DL/T 645 control code 1CH."""

    TRIP = 0x1A
    CLOSE_ALLOWED = 0x1B
    CLOSE_NOW = 0x1C
    ALARM_ON = 0x2A
    ALARM_OFF = 0x2B
    PROTECT_ON = 0x3A
    PROTECT_OFF = 0x3B


class TripReason(IntEnum):
    """Why the relay is open; several may hold at once. Values are bits of ``VirtualMeter.flags``."""

    REMOTE = 1 << 0
    CREDIT = 1 << 1
    OVERLOAD = 1 << 2


# Other bits of VirtualMeter.flags (the trip reasons use bits 0..2).
PROTECT = 1 << 3
REMOTE_ALARM = 1 << 4
TRIP_BITS = TripReason.REMOTE | TripReason.CREDIT | TripReason.OVERLOAD
EVENT_SHIFT = 8
"""Bits 8..15 of the flags: events in progress, one bit per ``EventKind``."""

# Status word 3 (DI 04000503) bits, DL/T 645-2007 with its prepaid amendment.
STATUS3_RELAY_OPEN = 1 << 4
STATUS3_RELAY_COMMAND_TRIP = 1 << 6
STATUS3_PRE_TRIP_ALARM = 1 << 7
STATUS3_MONEY_PREPAID = 0b10 << 8
STATUS3_POWER_PROTECT = 1 << 12


class RechargeOutcome(Enum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already applied"
    STALE_COUNT = "stale purchase count"
    COUNT_GAP = "purchase count gap"
    ABOVE_HOARDING_LIMIT = "above hoarding limit"
    INVALID_AMOUNT = "invalid amount"


@dataclass(frozen=True, slots=True)
class RechargeResult:
    outcome: RechargeOutcome
    purchase_count: int
    balance_micros: int
    message: str

    @property
    def credited(self) -> bool:
        return self.outcome is RechargeOutcome.APPLIED


class MeterErrorCode(Enum):
    """Why a command was refused; the DL/T 645 face maps these to its error bits."""

    PASSWORD = "password"
    OPERATOR = "operator"
    EXPIRED = "expired"
    POWER_PROTECT = "power protect"
    OUT_OF_RANGE = "out of range"
    UNKNOWN_FIELD = "unknown field"


@dataclass(frozen=True, slots=True)
class MeterError:
    code: MeterErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the meter would push (MQTT) or flag (DL/T 645 status): an event, a relay change, an alarm."""

    kind: str
    at_s: int
    detail: str


@dataclass(frozen=True, slots=True)
class DailyFreeze:
    """One daily freeze: the meter's clock reading at its local 00:00 and the registers then (0.01 kWh)."""

    meter_time_s: int
    total_ticks: int
    band_ticks: tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class TouTable:
    """The meter's day table: ``(start minute of day, band)``, ascending, the first at 00:00."""

    segments: tuple[tuple[int, Band], ...]

    def __post_init__(self) -> None:
        starts = [start for start, _ in self.segments]
        assert 1 <= len(starts) <= MAX_TOU_SEGMENTS, self.segments
        assert starts[0] == 0 and starts == sorted(set(starts)), self.segments
        assert starts[-1] < MINUTES_PER_DAY, self.segments

    def band_at(self, minute_of_day: int) -> Band:
        starts = [start for start, _ in self.segments]
        return self.segments[bisect.bisect_right(starts, minute_of_day) - 1][1]

    @classmethod
    def parse(cls, text: str) -> TouTable:
        """``"00:00 valley, 08:00 flat, 10:00 peak"``; ``ValueError`` naming the bad entry."""
        segments: list[tuple[int, Band]] = []
        for entry in (e.strip() for e in text.split(",")):
            try:
                clock, band_name = entry.split()
                hours, minutes = (int(part) for part in clock.split(":"))
                band = Band[band_name.upper()]
            except (ValueError, KeyError):
                raise ValueError(f"tou: {entry!r} is not 'HH:MM band' (bands: sharp peak flat valley)") from None
            if not (0 <= hours < 24 and 0 <= minutes < 60):
                raise ValueError(f"tou: {entry!r} has no such time of day")
            segments.append((hours * 60 + minutes, band))
        if not segments or segments[0][0] != 0 or len(segments) > MAX_TOU_SEGMENTS:
            raise ValueError(f"tou: {text!r} must start at 00:00 and have at most {MAX_TOU_SEGMENTS} periods")
        if [s for s, _ in segments] != sorted({s for s, _ in segments}):
            raise ValueError(f"tou: {text!r} periods must be in ascending time order")
        return cls(tuple(segments))


DEFAULT_TOU = TouTable.parse(
    "00:00 valley, 08:00 flat, 10:00 peak, 12:00 flat, 17:00 peak, 19:00 sharp, 21:00 peak, 23:00 valley"
)


@dataclass(frozen=True, slots=True)
class MeterSettings:
    """Parameters a meter shares with its siblings until one is written (then it gets its own copy).

    Prices are micros per kWh (per m³ for water) by band; amounts are micros; 0 means "no limit" for the
    hoarding limit and the power limit. Passwords are ``level -> 3-byte value``; ``operator_codes`` empty
    means any operator code is accepted (most meters only record it).
    """

    prices_micros: tuple[int, int, int, int] = (1_200_000, 900_000, 600_000, 300_000)
    alarm1_micros: int = 50 * MICROS_PER_UNIT
    alarm2_micros: int = 20 * MICROS_PER_UNIT
    overdraft_limit_micros: int = 0
    hoarding_limit_micros: int = 10_000 * MICROS_PER_UNIT
    close_allowed_micros: int = 0
    power_limit_w: int = 0
    tou: TouTable = DEFAULT_TOU
    tou_year: MeterTou | None = None
    """TOU tables pushed to the meter (time zones, day tables, rest and special days); when set, they choose the
    band instead of ``tou``."""
    tou_writes: tuple[tuple[int, object], ...] = ()
    """The TOU values as written over DL/T 645, by DI (the face rebuilds ``tou_year`` from them)."""
    passwords: tuple[tuple[int, int], ...] = ((2, 0x000000), (4, 0x000000))
    operator_codes: frozenset[int] = frozenset()
    utc_offset_minutes: int = 480

    def check(self) -> MeterError | None:
        """``None`` if the settings are usable, else an error naming the field."""
        for band, price in zip(Band, self.prices_micros, strict=True):
            if price < 0 or price % 100:
                return _range(f"prices_micros[{band.name.lower()}]", price, "a price with at most 4 decimals")
        for name in ("alarm1_micros", "alarm2_micros", "overdraft_limit_micros", "hoarding_limit_micros",
                     "close_allowed_micros", "power_limit_w"):  # fmt: skip
            value = getattr(self, name)
            if not 0 <= value <= 99_999_999 * 10_000:
                return _range(name, value, "0 .. 999999.99 yuan (or W)")
        if self.alarm2_micros > self.alarm1_micros:
            return _range("alarm2_micros", self.alarm2_micros, "at most alarm1_micros")
        return None


def _range(field: str, value: object, expected: str) -> MeterError:
    return MeterError(MeterErrorCode.OUT_OF_RANGE, f"{field}: {value!r} is out of range; expected {expected}")


DEFAULT_SETTINGS = MeterSettings()
SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(MeterSettings))


class VirtualMeter:
    """One prepaid meter. All amounts are micros (signed balance), energy W·s, power W, time UTC seconds."""

    __slots__ = (
        "_band_ws",
        "_events",
        "_freezes",
        "_notices",
        "address",
        "balance_micros",
        "clock_offset_s",
        "clock_s",
        "commodity",
        "flags",
        "last_purchase",
        "power_w",
        "profile",
        "purchase_count",
        "purchased_micros",
        "scale_permille",
        "seed",
        "settings",
    )

    def __init__(
        self,
        address: str,
        profile: LoadProfile,
        *,
        seed: int,
        now_s: int,
        balance_micros: int = 100 * MICROS_PER_UNIT,
        band_ticks: Sequence[int] = (0, 0, 0, 0),
        settings: MeterSettings = DEFAULT_SETTINGS,
        scale_permille: int = 1000,
        clock_offset_s: int = 0,
        commodity: Commodity = Commodity.ELECTRICITY,
    ) -> None:
        assert len(address) == 12 and address.isdigit(), address
        assert len(band_ticks) == 4 and scale_permille >= 0
        assert settings.check() is None, settings.check()
        self.address = address
        self.profile = profile
        self.seed = seed
        self.commodity = commodity
        self.settings = settings
        self.scale_permille = scale_permille
        self.clock_s = now_s
        self.clock_offset_s = clock_offset_s
        self._band_ws = [ticks * WS_PER_TICK for ticks in band_ticks]
        self.balance_micros = balance_micros
        self.purchase_count = 0
        self.purchased_micros = 0
        self.last_purchase: tuple[int, int, int] | None = None
        """(meter time, amount, balance before) of the last applied recharge, as meters keep it."""
        self.flags = 0
        self.power_w = 0
        self._events: list[int] | None = None
        self._notices: list[Notice] | None = None
        self._freezes: array[int] | None = None
        self._check_credit()
        if not self.relay_open():
            # the load of the current minute, so a meter read at once does not show an idle 0 W
            minute = (now_s + self.local_offset_s()) // 60
            self.power_w = profile.rate_at(seed, minute) * scale_permille // 1000

    # -- time and consumption ------------------------------------------------------------------------------

    def meter_time_s(self, now_s: int) -> int:
        """The meter's own clock (UTC seconds) when the true time is ``now_s``."""
        return now_s + self.clock_offset_s

    def local_offset_s(self) -> int:
        return self.settings.utc_offset_minutes * 60 + self.clock_offset_s

    def set_clock(self, meter_time_s: int, now_s: int) -> None:
        """Set the meter's clock (broadcast time, write 0400010x): consumption up to ``now_s`` is kept."""
        self.advance(now_s)
        self.clock_offset_s = meter_time_s - now_s

    def advance(self, now_s: int) -> None:
        """Accrue consumption from the last advance up to ``now_s``; a time in the past changes nothing."""
        start_s = self.clock_s
        if now_s <= start_s:
            return
        assert now_s - start_s <= MAX_CATCH_UP_S, (self.address, start_s, now_s)
        offset_s = self.local_offset_s()
        alarm_before = self.alarm_level()
        # the next local 00:00 strictly after the start, in true time (a midnight at the start was frozen by
        # the advance that ended there, or is the meter's first instant)
        midnight_s = start_s + SECONDS_PER_DAY - (start_s + offset_s) % SECONDS_PER_DAY
        t = start_s
        while t < now_s:
            local_s = t + offset_s
            end = min(now_s, t + 60 - local_s % 60)
            self._run_minute_piece(local_s // 60, end - t, t)
            t = end
            if t == midnight_s:
                self._freeze(t)
                midnight_s += SECONDS_PER_DAY
        self.clock_s = now_s
        alarm_after = self.alarm_level()
        if alarm_after > alarm_before:
            self._notify("alarm", now_s, f"level {alarm_after}")

    def _run_minute_piece(self, minute: int, duration_s: int, at_s: int) -> None:
        if self.relay_open() or self.flags & self._event_bit(EventKind.POWER_FAIL):
            self.power_w = 0
            return
        rate = self.profile.rate_at(self.seed, minute) * self.scale_permille // 1000
        if self.flags & self._event_bit(EventKind.VOLTAGE_LOSS):
            rate = 0
        limit = self.settings.power_limit_w
        if limit and rate > limit and not self.flags & PROTECT:
            self.power_w = 0
            self._trip(TripReason.OVERLOAD, at_s, f"{rate} W above the power limit {limit} W")
            self.record_event(EventKind.OVERLOAD, at_s, at_s)
            return
        self.power_w = rate
        if rate and not self.flags & self._event_bit(EventKind.CURRENT_LOSS):
            # a meter that has lost its current input draws but does not measure: that is the theft
            self._accrue(self.band_at_local_minute(minute), rate, duration_s, at_s)

    def band_at_local_minute(self, minute: int) -> Band:
        """The band of a local minute (minutes since 1970-01-01 00:00 local): the pushed tables if any."""
        year = self.settings.tou_year
        if year is None:
            return self.settings.tou.band_at(minute % MINUTES_PER_DAY)
        day = date.fromordinal(_EPOCH_ORDINAL + minute // MINUTES_PER_DAY)
        return Band(year.rate_at(day, minute % MINUTES_PER_DAY) - 1)

    def _accrue(self, band: Band, rate: int, duration_s: int, at_s: int) -> None:
        before = self._band_ws[band]
        after = before + rate * duration_s
        ticks = after // WS_PER_TICK - before // WS_PER_TICK
        tick_price = self.settings.prices_micros[band] // 100
        if ticks and tick_price and not self.flags & PROTECT:
            headroom = self.balance_micros + self.settings.overdraft_limit_micros
            ticks_to_trip = -(-headroom // tick_price)
            if ticks >= ticks_to_trip:
                # stop exactly at the tick that reaches the limit: the meter trips there, not a minute later
                ticks = max(ticks_to_trip, 0)
                after = (before // WS_PER_TICK + ticks) * WS_PER_TICK if ticks else before
                self._band_ws[band] = after
                self.balance_micros -= ticks * tick_price
                self._trip(TripReason.CREDIT, at_s, "balance reached the overdraft limit")
                return
        self._band_ws[band] = after
        self.balance_micros -= ticks * tick_price

    # -- daily freeze -------------------------------------------------------------------------------------

    def _freeze(self, now_s: int) -> None:
        freezes = self._freezes
        if freezes is None:
            # 32-bit words: registers stop at 99,999,999 ticks; meter times fit until 2106
            freezes = self._freezes = array("I")
        elif len(freezes) >= MAX_DAILY_FREEZES * _FREEZE_WORDS:
            del freezes[:_FREEZE_WORDS]  # once a day per meter, 62 x 5 words: cheaper than a ring's index
        freezes.append(self.meter_time_s(now_s))
        freezes.extend(self.band_ticks(band) for band in Band)

    def frozen_days(self) -> int:
        """How many daily freezes the meter holds (0 .. ``MAX_DAILY_FREEZES``)."""
        return len(self._freezes) // _FREEZE_WORDS if self._freezes else 0

    def frozen_day(self, last: int) -> DailyFreeze | None:
        """The ``last``-th most recent daily freeze (1 is the newest), or ``None`` if there is none such."""
        assert last >= 1, last
        if last > self.frozen_days():
            return None
        assert self._freezes is not None
        start = len(self._freezes) - last * _FREEZE_WORDS
        at_s, sharp, peak, flat, valley = self._freezes[start : start + _FREEZE_WORDS]
        total = (sharp + peak + flat + valley) % (MAX_REGISTER_TICKS + 1)
        return DailyFreeze(at_s, total, (sharp, peak, flat, valley))

    # -- registers and instantaneous values ---------------------------------------------------------------

    def band_ticks(self, band: Band) -> int:
        """The band register in 0.01 kWh (0.01 m³), rolled over like the meter's display."""
        return self._band_ws[band] // WS_PER_TICK % (MAX_REGISTER_TICKS + 1)

    def band_energy_wh(self, band: Band) -> int:
        return self._band_ws[band] // 3600

    def total_ticks(self) -> int:
        """The total register: the sum of the band registers (as the standard defines it)."""
        return sum(self.band_ticks(band) for band in Band) % (MAX_REGISTER_TICKS + 1)

    def total_energy_wh(self) -> int:
        return sum(self.band_energy_wh(band) for band in Band)

    def remaining_micros(self) -> int:
        return max(self.balance_micros, 0)

    def overdraft_micros(self) -> int:
        return max(-self.balance_micros, 0)

    def _jitter(self, salt: int, spread: int) -> int:
        """A small deterministic wobble around a nominal value, changing each minute."""
        return mix64(self.seed, salt, (self.clock_s + self.local_offset_s()) // 60) % (2 * spread + 1) - spread

    def voltage_dv(self) -> int:
        """Voltage in 0.1 V (0 without supply)."""
        if self.commodity is Commodity.WATER or self.flags & (
            self._event_bit(EventKind.VOLTAGE_LOSS) | self._event_bit(EventKind.POWER_FAIL)
        ):
            return 0
        return 2200 + self._jitter(1, 66)

    def power_factor_milli(self) -> int:
        return 1000 if self.power_w == 0 else 960 + self._jitter(2, 35)

    def frequency_chz(self) -> int:
        """Frequency in 0.01 Hz."""
        return 0 if self.voltage_dv() == 0 else 5000 + self._jitter(3, 5)

    def signed_power_w(self) -> int:
        """Active power, negative while reverse current is in progress."""
        return -self.power_w if self.flags & self._event_bit(EventKind.REVERSE_CURRENT) else self.power_w

    def current_ma(self) -> int:
        """Current in mA, signed like the power (0 during current loss)."""
        return self._current_ma(self.voltage_dv(), self.power_factor_milli())

    def _current_ma(self, voltage_dv: int, power_factor_milli: int) -> int:
        if voltage_dv == 0 or self.flags & self._event_bit(EventKind.CURRENT_LOSS):
            return 0
        # P = U I pf  ->  I[mA] = P[W] / (U[dV]/10 * pf[milli]/1000) * 1000
        return self.signed_power_w() * 10_000_000 // (voltage_dv * power_factor_milli)

    def instant_values(self) -> tuple[int, int, int, int, int]:
        """(voltage dV, current mA, active power W, power factor permille, frequency cHz): the same values as the
        single getters, each derived once (a fleet asks for all five at every reading)."""
        voltage = self.voltage_dv()
        power_factor = self.power_factor_milli()
        frequency = 0 if voltage == 0 else 5000 + self._jitter(3, 5)
        return voltage, self._current_ma(voltage, power_factor), self.signed_power_w(), power_factor, frequency

    # -- relay, alarms and status -------------------------------------------------------------------------

    def relay_open(self) -> bool:
        return bool(self.flags & TRIP_BITS) and not self.flags & PROTECT

    def trip_reasons(self) -> tuple[TripReason, ...]:
        return tuple(reason for reason in TripReason if self.flags & reason)

    def alarm_level(self) -> int:
        """0 above alarm amount 1, 1 at or below it, 2 at or below alarm amount 2."""
        if self.balance_micros <= self.settings.alarm2_micros:
            return 2
        return 1 if self.balance_micros <= self.settings.alarm1_micros else 0

    def status_word3(self) -> int:
        word = STATUS3_MONEY_PREPAID
        if self.relay_open():
            word |= STATUS3_RELAY_OPEN
        if self.flags & TripReason.REMOTE:
            word |= STATUS3_RELAY_COMMAND_TRIP
        if self.flags & REMOTE_ALARM or self.alarm_level() == 2:
            word |= STATUS3_PRE_TRIP_ALARM
        if self.flags & PROTECT:
            word |= STATUS3_POWER_PROTECT
        return word

    def _trip(self, reason: TripReason, at_s: int, why: str) -> None:
        was_open = self.relay_open()
        self.flags |= reason
        if self.relay_open() and not was_open:
            self.power_w = 0
            self._notify("relay", at_s, f"tripped: {reason.name.lower()}: {why}")

    def _clear_trip(self, reasons: int, at_s: int) -> None:
        was_open = self.relay_open()
        self.flags &= ~reasons
        if was_open and not self.relay_open():
            self._notify("relay", at_s, "closed")

    def _check_credit(self) -> None:
        if self.flags & PROTECT:
            return
        if self.balance_micros + self.settings.overdraft_limit_micros <= 0:
            self._trip(TripReason.CREDIT, self.clock_s, "balance at or below the overdraft limit")

    def relay_command(self, action: RelayAction, now_s: int, valid_until_s: int | None = None) -> MeterError | None:
        """Carry out a 1CH relay command; ``None`` when done, else the reason it was refused."""
        self.advance(now_s)
        if valid_until_s is not None and self.meter_time_s(now_s) > valid_until_s:
            return MeterError(MeterErrorCode.EXPIRED, "valid_until: the command expired before it arrived")
        if action is RelayAction.TRIP:
            if self.flags & PROTECT:
                return MeterError(MeterErrorCode.POWER_PROTECT, "relay: power-protect is on; trip refused")
            self._trip(TripReason.REMOTE, now_s, "trip command")
        elif action in (RelayAction.CLOSE_ALLOWED, RelayAction.CLOSE_NOW):
            # close-allowed waits for the tenant's button press; the simulated tenant presses it at once.
            # A credit trip stays: only a recharge above the close-allowed amount lifts it.
            self._clear_trip(TripReason.REMOTE | TripReason.OVERLOAD, now_s)
        elif action is RelayAction.ALARM_ON:
            self.flags |= REMOTE_ALARM
        elif action is RelayAction.ALARM_OFF:
            self.flags &= ~REMOTE_ALARM
        elif action is RelayAction.PROTECT_ON:
            was_open = self.relay_open()
            self.flags |= PROTECT
            if was_open:
                self._notify("relay", now_s, "closed: power-protect")
        else:
            was_open = self.relay_open()
            self.flags &= ~PROTECT
            if self.relay_open() and not was_open:
                self._notify("relay", now_s, "tripped: power-protect ended")
            self._check_credit()
        return None

    # -- meter-side billing -------------------------------------------------------------------------------

    def recharge(self, purchase_count: int, amount_micros: int, now_s: int) -> RechargeResult:
        """Apply a recharge carrying purchase count ``last + 1``; any other count credits nothing."""
        self.advance(now_s)
        last = self.purchase_count
        if purchase_count == last:
            return self._recharge_result(RechargeOutcome.ALREADY_APPLIED, f"purchase count {last} already applied")
        if purchase_count < last:
            return self._recharge_result(
                RechargeOutcome.STALE_COUNT,
                f"purchase_count: {purchase_count} is older than the meter's {last}",
            )
        if purchase_count != last + 1:
            return self._recharge_result(
                RechargeOutcome.COUNT_GAP,
                f"purchase_count: {purchase_count} skips ahead; expected {last + 1}",
            )
        if amount_micros <= 0:
            return self._recharge_result(RechargeOutcome.INVALID_AMOUNT, f"amount: {amount_micros} is not > 0")
        hoarding = self.settings.hoarding_limit_micros
        if hoarding and self.balance_micros + amount_micros > hoarding:
            return self._recharge_result(
                RechargeOutcome.ABOVE_HOARDING_LIMIT,
                f"amount: the balance would exceed the hoarding limit of {hoarding} micros",
            )
        self.purchase_count = purchase_count
        self.last_purchase = (self.meter_time_s(now_s), amount_micros, self.balance_micros)
        self.balance_micros += amount_micros
        self.purchased_micros += amount_micros
        if self.balance_micros > self.settings.close_allowed_micros:
            self._clear_trip(TripReason.CREDIT, now_s)
        if self.alarm_level() == 0:
            self.flags &= ~REMOTE_ALARM
        return self._recharge_result(RechargeOutcome.APPLIED, f"purchase count {purchase_count} applied")

    def _recharge_result(self, outcome: RechargeOutcome, message: str) -> RechargeResult:
        return RechargeResult(outcome, self.purchase_count, self.balance_micros, message)

    # -- settings, passwords ------------------------------------------------------------------------------

    def check_password(self, level: int, password: int) -> bool:
        """``password`` is the 3-byte value (PA0..PA2) that follows the level byte on the wire."""
        return any(level == known_level and password == value for known_level, value in self.settings.passwords)

    def check_operator(self, operator_code: int) -> bool:
        codes = self.settings.operator_codes
        return not codes or operator_code in codes

    def update_settings(self, now_s: int, **changes: object) -> MeterError | None:
        """Write parameters (names of ``MeterSettings`` fields); the meter gets its own settings copy."""
        unknown = sorted(set(changes) - SETTING_NAMES)
        if unknown:
            return MeterError(MeterErrorCode.UNKNOWN_FIELD, f"{unknown[0]}: no such meter setting")
        self.advance(now_s)
        candidate = dataclasses.replace(self.settings, **changes)  # type: ignore[arg-type]
        error = candidate.check()
        if error is not None:
            return error
        self.settings = candidate
        self._check_credit()
        return None

    # -- events -------------------------------------------------------------------------------------------

    @staticmethod
    def _event_bit(kind: EventKind) -> int:
        return 1 << (EVENT_SHIFT + kind)

    def begin_event(self, kind: EventKind, now_s: int) -> None:
        """An event starts (cover opened, power failed, ...): counted and recorded with its start time."""
        self.advance(now_s)
        self.flags |= self._event_bit(kind)
        self.record_event(kind, now_s, 0)

    def end_event(self, kind: EventKind, now_s: int) -> None:
        """An event in progress ends (power restored, cover closed): its end time is recorded."""
        if not self.flags & self._event_bit(kind):
            return
        self.advance(now_s)
        self.flags &= ~self._event_bit(kind)
        events = self._event_table()
        events[kind * 3 + 2] = self.meter_time_s(now_s)
        self._notify("event", now_s, f"{kind.name.lower()} ended")

    def event_in_progress(self, kind: EventKind) -> bool:
        return bool(self.flags & self._event_bit(kind))

    def record_event(self, kind: EventKind, start_s: int, end_s: int) -> None:
        """Count an event and keep it as the last record (meter time; ``end_s`` 0 while in progress)."""
        events = self._event_table()
        events[kind * 3] += 1
        events[kind * 3 + 1] = self.meter_time_s(start_s)
        events[kind * 3 + 2] = self.meter_time_s(end_s) if end_s else 0
        self._notify("event", start_s, kind.name.lower())

    def event_count(self, kind: EventKind) -> int:
        return self._events[kind * 3] if self._events else 0

    def last_event(self, kind: EventKind) -> tuple[int, int] | None:
        """``(start, end)`` of the last record in meter time (end 0 while in progress), or ``None``."""
        if not self.event_count(kind):
            return None
        assert self._events is not None
        return self._events[kind * 3 + 1], self._events[kind * 3 + 2]

    def _event_table(self) -> list[int]:
        if self._events is None:
            self._events = [0] * (3 * len(EventKind))
        return self._events

    # -- notices (for faces that push) --------------------------------------------------------------------

    def _notify(self, kind: str, at_s: int, detail: str) -> None:
        if self._notices is None:
            self._notices = []
        if len(self._notices) >= MAX_NOTICES:
            del self._notices[0]
        self._notices.append(Notice(kind, at_s, detail))

    def has_notices(self) -> bool:
        """Whether anything is waiting to be drained (cheap: a fleet asks this at every reading)."""
        return bool(self._notices)

    def drain_notices(self) -> list[Notice]:
        """The notices since the last drain, oldest first; the queue is emptied (and freed)."""
        notices = self._notices or []
        self._notices = None
        return notices
