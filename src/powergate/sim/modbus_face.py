"""Virtual meters as a Modbus TCP server: several meters per server, one per unit id.

The server is pymodbus 3.16's ``ModbusTcpServer`` with a custom server context (``MeterContext``) that holds
no registers of its own: every read advances the addressed meter to now and encodes its current values through
the meter model's register map (``powergate.protocols.modbus``); every write is decoded through the same map
and applied to the meter (relay command, recharge with its purchase count, alarm amounts, limits, prices).
So a Modbus master sees exactly what the DL/T 645 and MQTT faces of the same meter show.

Invariants:
- addresses outside the map answer "illegal data address" (02), like a real meter; a read or write that
  covers part of a multi-word register is refused the same way;
- a write the meter refuses (stale purchase count, above the hoarding limit, bad value, trip during
  power-protect) answers "illegal data value" (03) and changes nothing; a recharge repeated with the same
  purchase count is acknowledged and credits nothing (the meter's "already applied");
- money shows in the map's 0.01 yuan: the remaining amount is the balance rounded down to the fen (a meter
  never displays credit it does not hold), the overdraft amount the rest;
- a limit on everything: at most ``MAX_UNITS`` meters per server (Modbus unit ids 1..247).

pymodbus 3.16 calls a ``ModbusServerContext`` whose ``old_simulator`` flag is set directly with
``async_getValues`` / ``async_setValues``; that is the hook used here
(``tests/integration/test_sim_modbus.py`` pins it with a real ``mbpoll`` and the pymodbus client).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer

from powergate.protocols.modbus.codec import CodecError, decode_write, encode_block
from powergate.protocols.modbus.maps import ACREL_SINGLE_PHASE, EVENT_FLAG_BITS
from powergate.protocols.modbus.registers import RegisterMap, Table
from powergate.sim.meter import (
    Band,
    EventKind,
    MeterError,
    RechargeOutcome,
    RelayAction,
    TripReason,
    VirtualMeter,
)

MAX_UNITS = 247
FEN_MICROS = 10_000

_TABLE_OF_FUNCTION = {
    0x01: Table.COIL,
    0x05: Table.COIL,
    0x0F: Table.COIL,
    0x02: Table.DISCRETE_INPUT,
    0x03: Table.HOLDING,
    0x06: Table.HOLDING,
    0x10: Table.HOLDING,
    0x17: Table.HOLDING,
    0x04: Table.INPUT,
}
_EVENT_FLAG_OF_KIND = {
    EventKind.COVER_OPEN: "cover_open",
    EventKind.TERMINAL_COVER_OPEN: "terminal_cover_open",
    EventKind.REVERSE_CURRENT: "reverse_current",
    EventKind.VOLTAGE_LOSS: "voltage_loss",
    EventKind.CURRENT_LOSS: "current_loss",
    EventKind.MAGNETIC_INTERFERENCE: "magnetic_interference",
    EventKind.POWER_FAIL: "power_fail",
}
_SETTING_OF_REGISTER = {
    "alarm_amount_1_micros": "alarm1_micros",
    "alarm_amount_2_micros": "alarm2_micros",
    "overdraft_limit_micros": "overdraft_limit_micros",
    "hoarding_limit_micros": "hoarding_limit_micros",
    "power_limit_w": "power_limit_w",
}
_RELAY_ACTIONS = {0x1A: RelayAction.TRIP, 0x1B: RelayAction.CLOSE_ALLOWED, 0x1C: RelayAction.CLOSE_NOW}
_BANDS = ("sharp", "peak", "flat", "valley")


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def meter_values(meter: VirtualMeter) -> dict[str, int]:
    """Every readable value a register map may ask for, in the maps' units (see ``registers.UNIT_SUFFIXES``).

    Values are clamped to what 16-bit registers hold (a meter's display saturates rather than wraps).
    """
    balance_fen = meter.balance_micros // FEN_MICROS * FEN_MICROS
    power_w = meter.signed_power_w()
    pf = meter.power_factor_milli()
    apparent_va = abs(power_w) * 1000 // pf
    reactive_var = abs(power_w) * math.isqrt(1_000_000 - pf * pf) // pf
    events = 0
    for kind, name in _EVENT_FLAG_OF_KIND.items():
        if meter.event_in_progress(kind):
            events |= 1 << EVENT_FLAG_BITS.index(name)
    if meter.flags & TripReason.OVERLOAD:
        events |= 1 << EVENT_FLAG_BITS.index("overload_trip")
    values = {
        "total_energy_wh": meter.total_ticks() * 10,
        "reverse_energy_wh": 0,
        "device_code": 1352,
        "voltage_dv": meter.voltage_dv(),
        "current_ma": _clamp(abs(meter.current_ma()) // 10 * 10, 0, 655_350),
        "active_power_w": _clamp(power_w, -32_768, 32_767),
        "reactive_power_var": _clamp(reactive_var, 0, 32_767),
        "apparent_power_va": _clamp(apparent_va, 0, 65_535),
        "power_factor_permille": pf,
        "frequency_centihz": meter.frequency_chz(),
        "remaining_amount_micros": balance_fen,
        "overdraft_amount_micros": max(-balance_fen, 0),
        "purchase_count": _clamp(meter.purchase_count, 0, 65_535),
        "relay_state": 1 if meter.relay_open() else 0,
        "relay_command": 1 if meter.flags & TripReason.REMOTE else 0,
        "event_flags": events,
        "cover_open": 1 if meter.event_in_progress(EventKind.COVER_OPEN) else 0,
        "serial_number": int(meter.address[-8:]),
        "alarm_amount_1_micros": meter.settings.alarm1_micros,
        "alarm_amount_2_micros": meter.settings.alarm2_micros,
        "overdraft_limit_micros": meter.settings.overdraft_limit_micros,
        "hoarding_limit_micros": meter.settings.hoarding_limit_micros,
        "power_limit_w": _clamp(meter.settings.power_limit_w, 0, 65_535),
    }
    for band in Band:
        values[f"{_BANDS[band]}_energy_wh"] = meter.band_ticks(band) * 10
        values[f"{_BANDS[band]}_price_micros_per_kwh"] = meter.settings.prices_micros[band]
    for phase in "abc":
        values[f"voltage_{phase}_dv"] = values["voltage_dv"]
        values[f"current_{phase}_ma"] = abs(meter.current_ma())
        values[f"active_power_{phase}_w"] = power_w
    return values


def apply_write(
    meter: VirtualMeter, register_map: RegisterMap, written: Mapping[str, int], now_s: int
) -> MeterError | RechargeOutcome | None:
    """Carry out a decoded write on the meter; ``None`` (or ``ALREADY_APPLIED``) when it is accepted."""
    if "recharge_amount_micros" in written:
        result = meter.recharge(written["recharge_purchase_count"], written["recharge_amount_micros"], now_s)
        return None if result.outcome is RechargeOutcome.APPLIED else result.outcome
    if "relay_command" in written:
        command = register_map.register("relay_command")
        value = written["relay_command"]
        if command.table is Table.COIL:
            action = RelayAction.TRIP if value else RelayAction.CLOSE_NOW
        else:
            action = _RELAY_ACTIONS[value]  # the codec has already refused values outside the choices
        return meter.relay_command(action, now_s)
    changes: dict[str, object] = {}
    prices = list(meter.settings.prices_micros)
    for name, value in written.items():
        if name.endswith("_price_micros_per_kwh"):
            prices[_BANDS.index(name.removesuffix("_price_micros_per_kwh"))] = value
            changes["prices_micros"] = tuple(prices)
        elif name in _SETTING_OF_REGISTER:
            changes[_SETTING_OF_REGISTER[name]] = value
    return meter.update_settings(now_s, **changes)


@dataclass(slots=True)
class ModbusCounters:
    reads: int = 0
    writes: int = 0
    refused: int = 0


class MeterContext(ModbusServerContext):
    """A pymodbus server context backed by virtual meters (unit id -> meter), not by register arrays."""

    def __init__(
        self,
        meters: Mapping[int, VirtualMeter],
        register_map: RegisterMap = ACREL_SINGLE_PHASE,
        clock: Callable[[], int] = lambda: int(time.time()),
    ) -> None:
        # Deliberately not calling super().__init__: it builds register arrays we do not use.
        assert 0 < len(meters) <= MAX_UNITS and all(1 <= unit <= MAX_UNITS for unit in meters), sorted(meters)
        self.old_simulator = True
        self.simdevices = []
        self.meters = dict(meters)
        self.register_map = register_map
        self.clock = clock
        self.counters = ModbusCounters()
        self._echo: tuple[int, int, int, list[int] | list[bool]] | None = None

    def device_ids(self) -> list[int]:
        return list(self.meters)

    def _meter(self, device_id: int) -> VirtualMeter | None:
        meter = self.meters.get(device_id)
        if meter is None or meter.event_in_progress(EventKind.POWER_FAIL):
            return None
        return meter

    async def async_getValues(  # noqa: N802 (pymodbus's name)
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        meter = self._meter(device_id)
        table = _TABLE_OF_FUNCTION.get(func_code)
        if meter is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if self._echo is not None and self._echo[:3] == (device_id, func_code, address):
            # FC05 / FC06 answer with the value written, even for a write-only command register
            echoed = self._echo[3]
            self._echo = None
            return echoed
        now_s = self.clock()
        meter.advance(now_s)
        words = encode_block(self.register_map, table, address, count, meter_values(meter))
        if isinstance(words, CodecError):
            self.counters.refused += 1
            return ExcCodes.ILLEGAL_ADDRESS
        self.counters.reads += 1
        return [bool(w) for w in words] if table.is_bits else words

    async def async_setValues(  # noqa: N802 (pymodbus's name)
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        meter = self._meter(device_id)
        table = _TABLE_OF_FUNCTION.get(func_code)
        if meter is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        if table is None or not table.writable:
            return ExcCodes.ILLEGAL_FUNCTION
        words = [int(v) for v in values]
        written = decode_write(self.register_map, table, address, words)
        if isinstance(written, CodecError):
            self.counters.refused += 1
            return ExcCodes.ILLEGAL_ADDRESS if written.field == "address" else ExcCodes.ILLEGAL_VALUE
        outcome = apply_write(meter, self.register_map, written, self.clock())
        if isinstance(outcome, MeterError) or (
            isinstance(outcome, RechargeOutcome) and outcome is not RechargeOutcome.ALREADY_APPLIED
        ):
            self.counters.refused += 1
            return ExcCodes.ILLEGAL_VALUE
        self.counters.writes += 1
        if func_code in (0x05, 0x06):
            echo: list[int] | list[bool] = [bool(words[0])] if table.is_bits else [words[0]]
            self._echo = (device_id, func_code, address, echo)
        return None


async def start_modbus_server(
    meters: Sequence[VirtualMeter],
    host: str,
    port: int,
    *,
    register_map: RegisterMap = ACREL_SINGLE_PHASE,
    clock: Callable[[], int] = lambda: int(time.time()),
) -> tuple[ModbusTcpServer, MeterContext]:
    """Serve ``meters`` as unit ids 1..N on ``host:port``; returns once the server is listening.

    Stop it with ``await server.shutdown()``. ``port`` 0 picks a free port: read it from
    ``bound_port(server)``.
    """
    context = MeterContext({unit: meter for unit, meter in enumerate(meters, start=1)}, register_map, clock)
    server = ModbusTcpServer(context, address=(host, port))
    await server.serve_forever(background=True)
    await asyncio.sleep(0)
    return server, context


def bound_port(server: ModbusTcpServer) -> int:
    """The TCP port a started server listens on (useful after asking for port 0)."""
    transport = server.transport
    assert transport is not None, "server not started"
    sockets = transport.sockets  # type: ignore[attr-defined]
    return int(sockets[0].getsockname()[1])
