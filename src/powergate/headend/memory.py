"""An in-memory ``MeterLink`` over virtual meters, with seeded fault injection, for fast tests above the wire.

``MemoryLink(meters, clock)`` reads and commands ``VirtualMeter``s (``powergate.sim.meter``) directly: no bytes,
no sockets, the same ``MeterSnapshot`` / ``CommandResult`` / ``LinkError`` values a real transport returns. The
scheduler, the command queue and the services run against it in one process, in milliseconds.

Faults (``LinkFaults``, drawn from one seeded ``random.Random`` so a run repeats exactly):

- ``drop_request``: the request is lost on the way; the meter never sees it; the caller gets TIMEOUT;
- ``drop_reply``: the meter acted (a command is applied!) but the reply is lost; the caller gets TIMEOUT. This
  is the case exactly-once delivery must survive: a retry must not credit or trip twice;
- ``garble``: the meter acted but the reply cannot be decoded; the caller gets GARBLED;
- ``delay_min_s..delay_max_s``: the reply takes this long; longer than ``timeout_s`` is a TIMEOUT;
- ``set_offline(meter_id, True)``: the meter (its DTU, its modem) is unreachable: OFFLINE at once.

Invariants:
- values are what the meter shows on its DL/T 645 face: energy in whole 0.01 kWh (as Wh), money rounded down
  to 0.01 yuan, so a test against this link and one against the DTU link see the same numbers;
- ``deliveries[command_id]`` counts how many times a command reached a meter (an auditor checks it);
- in-flight requests are bounded (``max_in_flight``): beyond it the caller gets BUSY.

The daily freeze: a virtual meter keeps no frozen data, so this link freezes for it. Before any request it
advances the meter to the last local midnight it has not yet crossed and keeps the registers there. This only
sees midnights the meter crosses while this link drives it (meters are advanced lazily, so that is all of them
unless something else advances the meter).

Layering: ``headend`` may not import ``sim`` (tests/unit/test_layers.py), so the meter is typed by the methods
used (``SimulatedMeter``) and the meter's own relay-action enum is found through its method's type hints.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, TypeVar

from powergate.headend.model import (
    CommandKind,
    CommandResult,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterSnapshot,
    ReadItem,
)

FEN_MICROS = 10_000
WH_PER_TICK = 10
"""One register step of 0.01 kWh."""
DAY_S = 86_400
MAX_DELAY_S = 60.0
MAX_TRACKED_COMMANDS = 1_000_000
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_IN_FLIGHT = 10_000

Clock = Callable[[], dt.datetime]
T = TypeVar("T")


class _Refusal(Protocol):
    @property
    def message(self) -> str: ...


class _RechargeOutcome(Protocol):
    @property
    def outcome(self) -> Enum: ...

    @property
    def message(self) -> str: ...


class SimulatedMeter(Protocol):
    """What this link needs of a meter: ``powergate.sim.meter.VirtualMeter`` has all of it."""

    address: str
    clock_s: int
    balance_micros: int
    purchase_count: int

    def advance(self, now_s: int) -> None: ...
    def local_offset_s(self) -> int: ...
    def meter_time_s(self, now_s: int) -> int: ...
    def band_ticks(self, band: Any) -> int: ...
    def total_ticks(self) -> int: ...
    def voltage_dv(self) -> int: ...
    def current_ma(self) -> int: ...
    def signed_power_w(self) -> int: ...
    def power_factor_milli(self) -> int: ...
    def frequency_chz(self) -> int: ...
    def relay_open(self) -> bool: ...
    def relay_command(self, action: Any, now_s: int, valid_until_s: int | None = None) -> _Refusal | None: ...
    def recharge(self, purchase_count: int, amount_micros: int, now_s: int) -> _RechargeOutcome: ...
    def update_settings(self, now_s: int, **changes: Any) -> _Refusal | None: ...
    def set_clock(self, meter_time_s: int, now_s: int) -> None: ...


@dataclass(slots=True)
class LinkFaults:
    """Fault probabilities in [0, 1] and a reply delay range; one seeded generator decides them all."""

    drop_request: float = 0.0
    drop_reply: float = 0.0
    garble: float = 0.0
    delay_min_s: float = 0.0
    delay_max_s: float = 0.0
    seed: int = 1
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for rate in (self.drop_request, self.drop_reply, self.garble):
            assert 0.0 <= rate <= 1.0, rate
        assert 0.0 <= self.delay_min_s <= self.delay_max_s <= MAX_DELAY_S, (self.delay_min_s, self.delay_max_s)
        self.rng = random.Random(self.seed)

    def draw(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def delay_s(self) -> float:
        if self.delay_max_s == 0:
            return 0.0
        return self.rng.uniform(self.delay_min_s, self.delay_max_s)


@dataclass(slots=True)
class MemoryLinkStats:
    reads: int = 0
    commands: int = 0
    requests_dropped: int = 0
    replies_dropped: int = 0
    garbled: int = 0
    timeouts: int = 0
    offline: int = 0
    busy: int = 0


@dataclass(frozen=True, slots=True)
class _Freeze:
    at_s: int
    total_wh: int
    bands_wh: tuple[int, int, int, int]


_RELAY_ACTION_NAMES = {
    CommandKind.TRIP: "TRIP",
    CommandKind.CLOSE: "CLOSE_NOW",
    CommandKind.CLOSE_ALLOWED: "CLOSE_ALLOWED",
    CommandKind.PROTECT_ON: "PROTECT_ON",
    CommandKind.PROTECT_OFF: "PROTECT_OFF",
}
_relay_enums: dict[type, type[Enum]] = {}


def _relay_action(meter: SimulatedMeter, kind: CommandKind) -> Enum:
    """The meter's own relay-action member for ``kind`` (see the module docstring on layering)."""
    cls = type(meter)
    actions = _relay_enums.get(cls)
    if actions is None:
        hint = typing.get_type_hints(cls.relay_command)["action"]
        assert isinstance(hint, type) and issubclass(hint, Enum), hint
        actions = _relay_enums[cls] = hint
    return actions[_RELAY_ACTION_NAMES[kind]]


def _fen_floor(micros: int) -> int:
    return micros // FEN_MICROS * FEN_MICROS


def _utc(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


class MemoryLink:
    """A ``MeterLink`` over virtual meters keyed by meter id (an endpoint's address is tried as well)."""

    def __init__(
        self,
        meters: Mapping[str, SimulatedMeter],
        clock: Clock,
        *,
        faults: LinkFaults | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        assert timeout_s > 0 and max_in_flight > 0, (timeout_s, max_in_flight)
        self.meters = meters
        self.clock = clock
        self.faults = faults or LinkFaults()
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.stats = MemoryLinkStats()
        self.deliveries: dict[str, int] = {}
        self._offline: set[str] = set()
        self._freezes: dict[str, _Freeze] = {}
        self._in_flight = 0

    # -- the MeterLink interface ------------------------------------------------------------------------------

    def online(self, endpoint: MeterEndpoint) -> bool:
        return endpoint.meter_id not in self._offline and self._meter(endpoint) is not None

    def set_offline(self, meter_id: str, offline: bool) -> None:
        """Unplug (``True``) or reconnect (``False``) a meter."""
        if offline:
            self._offline.add(meter_id)
        else:
            self._offline.discard(meter_id)

    async def read(self, endpoint: MeterEndpoint, items: frozenset[ReadItem]) -> MeterSnapshot | LinkError:
        self.stats.reads += 1
        return await self._exchange(endpoint, lambda meter, now: self._snapshot(endpoint, meter, items, now))

    async def execute(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        self.stats.commands += 1
        return await self._exchange(endpoint, lambda meter, now: self._command(meter, command, now))

    # -- one request through the faults ----------------------------------------------------------------------

    async def _exchange(
        self, endpoint: MeterEndpoint, act: Callable[[SimulatedMeter, dt.datetime], T]
    ) -> T | LinkError:
        meter = self._meter(endpoint)
        if meter is None or endpoint.meter_id in self._offline:
            self.stats.offline += 1
            return LinkError(FailureKind.OFFLINE, f"meter {endpoint.meter_id}: not connected")
        if self._in_flight >= self.max_in_flight:
            self.stats.busy += 1
            return LinkError(FailureKind.BUSY, f"{self._in_flight} requests in flight (limit {self.max_in_flight})")
        self._in_flight += 1
        try:
            return await self._deliver(endpoint, meter, act)
        finally:
            self._in_flight -= 1

    async def _deliver(
        self, endpoint: MeterEndpoint, meter: SimulatedMeter, act: Callable[[SimulatedMeter, dt.datetime], T]
    ) -> T | LinkError:
        faults = self.faults
        if faults.draw(faults.drop_request):
            self.stats.requests_dropped += 1
            return await self._time_out(endpoint, self.timeout_s)
        delay_s = faults.delay_s()
        await asyncio.sleep(min(delay_s, self.timeout_s))
        if endpoint.meter_id in self._offline:
            # unplugged while the request was on its way
            return await self._time_out(endpoint, 0.0)
        now = self.clock()
        self._freeze_until(endpoint.meter_id, meter, int(now.timestamp()))
        outcome = act(meter, now)
        if delay_s > self.timeout_s:
            return await self._time_out(endpoint, 0.0)
        if faults.draw(faults.drop_reply):
            self.stats.replies_dropped += 1
            return await self._time_out(endpoint, self.timeout_s - delay_s)
        if faults.draw(faults.garble):
            self.stats.garbled += 1
            return LinkError(FailureKind.GARBLED, f"meter {endpoint.meter_id}: reply checksum error (injected)")
        return outcome

    async def _time_out(self, endpoint: MeterEndpoint, wait_s: float) -> LinkError:
        self.stats.timeouts += 1
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        return LinkError(FailureKind.TIMEOUT, f"meter {endpoint.meter_id}: no reply within {self.timeout_s} s")

    def _meter(self, endpoint: MeterEndpoint) -> SimulatedMeter | None:
        meter = self.meters.get(endpoint.meter_id)
        return meter if meter is not None else self.meters.get(endpoint.address)

    # -- the daily freeze -----------------------------------------------------------------------------------

    def _freeze_until(self, meter_id: str, meter: SimulatedMeter, now_s: int) -> None:
        """Freeze at the last local midnight between the meter's last advance and ``now_s``, if any."""
        offset_s = meter.local_offset_s()
        midnight_s = (now_s + offset_s) // DAY_S * DAY_S - offset_s
        if not meter.clock_s < midnight_s <= now_s:
            return
        meter.advance(midnight_s)
        self._freezes[meter_id] = _Freeze(
            meter.meter_time_s(midnight_s), meter.total_ticks() * WH_PER_TICK, self._bands_wh(meter)
        )

    @staticmethod
    def _bands_wh(meter: SimulatedMeter) -> tuple[int, int, int, int]:
        sharp, peak, flat, valley = (meter.band_ticks(band) * WH_PER_TICK for band in range(4))
        return sharp, peak, flat, valley

    # -- reads ----------------------------------------------------------------------------------------------

    def _snapshot(
        self, endpoint: MeterEndpoint, meter: SimulatedMeter, items: frozenset[ReadItem], now: dt.datetime
    ) -> MeterSnapshot:
        now_s = int(now.timestamp())
        meter.advance(now_s)
        values: dict[str, Any] = {}
        if ReadItem.ENERGY in items:
            values.update(total_wh=meter.total_ticks() * WH_PER_TICK, bands_wh=self._bands_wh(meter))
        if ReadItem.INSTANT in items:
            values.update(
                voltage_dv=meter.voltage_dv(),
                current_ma=meter.current_ma(),
                power_dw=meter.signed_power_w() * 10,
                power_factor_milli=meter.power_factor_milli(),
                frequency_chz=meter.frequency_chz(),
            )
        if ReadItem.RELAY in items:
            values["relay_open"] = meter.relay_open()
        if ReadItem.PREPAID in items:
            balance = _fen_floor(meter.balance_micros)
            values.update(
                remaining_micros=max(balance, 0),
                overdraft_micros=max(-balance, 0),
                purchase_count=meter.purchase_count,
            )
        if ReadItem.CLOCK in items:
            values["meter_time"] = _utc(meter.meter_time_s(now_s))
        freeze = self._freezes.get(endpoint.meter_id)
        if ReadItem.FROZEN_DAY in items and freeze is not None:
            values.update(frozen_at=_utc(freeze.at_s), frozen_total_wh=freeze.total_wh, frozen_bands_wh=freeze.bands_wh)
        return MeterSnapshot(endpoint.meter_id, now, **values)

    # -- commands -------------------------------------------------------------------------------------------

    def _command(self, meter: SimulatedMeter, command: MeterCommand, now: dt.datetime) -> CommandResult | LinkError:
        now_s = int(now.timestamp())
        if len(self.deliveries) < MAX_TRACKED_COMMANDS or command.command_id in self.deliveries:
            self.deliveries[command.command_id] = self.deliveries.get(command.command_id, 0) + 1
        kind = command.kind
        if kind in _RELAY_ACTION_NAMES:
            until_s = int(command.valid_until.timestamp())
            return _refused_or_ok(meter.relay_command(_relay_action(meter, kind), now_s, until_s))
        if now > command.valid_until:
            return LinkError(FailureKind.REJECTED, "valid_until: the command expired before it arrived")
        if kind is CommandKind.RECHARGE:
            return _recharge(meter, command, now_s)
        if kind is CommandKind.SET_ALARMS:
            if command.alarm1_micros is None or command.alarm2_micros is None:
                return LinkError(FailureKind.REJECTED, "alarm1_micros, alarm2_micros: both are required")
            changes = {"alarm1_micros": command.alarm1_micros, "alarm2_micros": command.alarm2_micros}
            return _refused_or_ok(meter.update_settings(now_s, **changes))
        if kind is CommandKind.SET_POWER_LIMIT:
            if command.power_limit_w is None:
                return LinkError(FailureKind.REJECTED, "power_limit_w: required")
            return _refused_or_ok(meter.update_settings(now_s, power_limit_w=command.power_limit_w))
        if kind is CommandKind.SET_PRICES:
            if command.prices_micros is None or len(command.prices_micros) != 4:
                return LinkError(FailureKind.REJECTED, "prices_micros: four prices (sharp, peak, flat, valley)")
            return _refused_or_ok(meter.update_settings(now_s, prices_micros=tuple(command.prices_micros)))
        if kind is CommandKind.SET_TOU:
            if command.tou is None:
                return LinkError(FailureKind.REJECTED, "tou: a TOU push needs the tables")
            return _refused_or_ok(meter.update_settings(now_s, tou_year=command.tou))
        assert kind is CommandKind.TIME_SYNC, kind
        meter.set_clock(int((command.at or now).timestamp()), now_s)
        return CommandResult(ok=True)


def _refused_or_ok(refusal: _Refusal | None) -> CommandResult | LinkError:
    if refusal is None:
        return CommandResult(ok=True)
    return LinkError(FailureKind.REJECTED, refusal.message)


def _recharge(meter: SimulatedMeter, command: MeterCommand, now_s: int) -> CommandResult | LinkError:
    if command.amount_micros is None or command.purchase_count is None:
        return LinkError(FailureKind.REJECTED, "amount_micros, purchase_count: both are required for a recharge")
    result = meter.recharge(command.purchase_count, command.amount_micros, now_s)
    if result.outcome.name == "APPLIED":
        return CommandResult(ok=True, reason=result.message)
    if result.outcome.name == "ALREADY_APPLIED":
        return CommandResult(ok=True, already_applied=True, reason=result.message)
    return LinkError(FailureKind.REJECTED, result.message)
