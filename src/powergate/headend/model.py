"""The head-end's protocol-independent vocabulary: where a meter is, what we read, what we command.

Every transport (DTU + DL/T 645, Modbus TCP, MQTT) implements ``MeterLink``: ``read`` returns a
``MeterSnapshot`` in our integer units, ``execute`` a ``CommandResult``; failures are values (``LinkError``)
with a reason, never exceptions across this boundary. The scheduler, the command queue and the services see only
this module, so a meter can change transport without anything above the head-end noticing.

Units: energy Wh, money micros, voltage 0.1 V, current mA, power 0.1 W, power factor x1000, frequency 0.01 Hz.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from powergate.domain.tou_table import MeterTou


class Transport(StrEnum):
    DLT645 = "dlt645"
    """DL/T 645-2007 on an RS485 bus behind a DTU that dials in over TCP."""
    MODBUS = "modbus"
    """Modbus TCP or RTU-over-TCP to a gateway."""
    MQTT = "mqtt"
    """A 4G / NB-IoT meter publishing JSON (or raw DL/T 645) through the broker."""


@dataclass(frozen=True, slots=True)
class MeterEndpoint:
    """How to reach one meter."""

    meter_id: str
    transport: Transport
    address: str
    """DL/T 645: 12-digit address; Modbus: unit id; MQTT: the meter's name in its topics."""
    link_id: str
    """DL/T 645: DTU id; Modbus: gateway host:port; MQTT: site name in its topics."""
    model: str = "default"
    """Meter model: selects the register map or the recharge layout."""


class ReadItem(StrEnum):
    ENERGY = "energy"
    """Total and per-band (sharp, peak, flat, valley) forward active energy registers."""
    INSTANT = "instant"
    """Voltage, current, active power, power factor, frequency."""
    RELAY = "relay"
    """Relay state (status word 3)."""
    PREPAID = "prepaid"
    """Remaining amount, overdraft amount, purchase count (meter-side billing)."""
    CLOCK = "clock"
    """The meter's date and time."""
    FROZEN_DAY = "frozen_day"
    """The last daily frozen energy block (for backfill after an outage)."""


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """What one read returned; fields not read are None."""

    meter_id: str
    at: dt.datetime
    """When the values were read (UTC, head-end clock)."""
    total_wh: int | None = None
    bands_wh: tuple[int, int, int, int] | None = None
    voltage_dv: int | None = None
    current_ma: int | None = None
    power_dw: int | None = None
    power_factor_milli: int | None = None
    frequency_chz: int | None = None
    relay_open: bool | None = None
    remaining_micros: int | None = None
    overdraft_micros: int | None = None
    purchase_count: int | None = None
    meter_time: dt.datetime | None = None
    frozen_at: dt.datetime | None = None
    frozen_total_wh: int | None = None
    frozen_bands_wh: tuple[int, int, int, int] | None = None


class FailureKind(StrEnum):
    OFFLINE = "offline"
    """No live session to the meter's DTU, gateway or broker client."""
    TIMEOUT = "timeout"
    """The meter did not answer in time."""
    REJECTED = "rejected"
    """The meter answered with an error (wrong password, unknown DI, ...)."""
    GARBLED = "garbled"
    """The answer could not be decoded."""
    BUSY = "busy"
    """A bounded queue was full: backpressure; try again later."""


@dataclass(frozen=True, slots=True)
class LinkError:
    kind: FailureKind
    reason: str

    @property
    def retryable(self) -> bool:
        return self.kind is not FailureKind.REJECTED


class CommandKind(StrEnum):
    TRIP = "trip"
    CLOSE = "close"
    """Close now (supply restored at once)."""
    CLOSE_ALLOWED = "close_allowed"
    """Allow the tenant to close the relay by the meter's button."""
    PROTECT_ON = "protect_on"
    PROTECT_OFF = "protect_off"
    RECHARGE = "recharge"
    SET_ALARMS = "set_alarms"
    SET_POWER_LIMIT = "set_power_limit"
    SET_PRICES = "set_prices"
    SET_TOU = "set_tou"
    """Load the TOU tables (time zones, day tables, rest days, special days)."""
    TIME_SYNC = "time_sync"


@dataclass(frozen=True, slots=True)
class MeterCommand:
    command_id: str
    """Idempotency key of the command, unique in the database."""
    kind: CommandKind
    valid_until: dt.datetime
    amount_micros: int | None = None
    purchase_count: int | None = None
    """RECHARGE: the meter applies each purchase count once; a repeat is reported as already applied."""
    alarm1_micros: int | None = None
    alarm2_micros: int | None = None
    power_limit_w: int | None = None
    prices_micros: tuple[int, ...] | None = None
    at: dt.datetime | None = None
    """TIME_SYNC: the time to set."""
    tou: MeterTou | None = None
    """SET_TOU: the tables to load."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    ok: bool
    already_applied: bool = False
    """The meter had already applied this (e.g. the same purchase count): success, never a second credit."""
    reason: str = ""


class MeterLink(Protocol):
    """A transport that can reach meters. Implementations bound their queues and time out every request."""

    async def read(self, endpoint: MeterEndpoint, items: frozenset[ReadItem]) -> MeterSnapshot | LinkError: ...

    async def execute(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError: ...

    def online(self, endpoint: MeterEndpoint) -> bool: ...
