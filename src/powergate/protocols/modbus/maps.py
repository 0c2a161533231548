"""Built-in Modbus register maps: an Acrel-style single-phase prepaid meter and a generic three-phase meter.

Names are shared across maps so the head-end and the simulator need no per-model code: every map that can
switch its relay has ``relay_state`` (read, 0 = closed, 1 = tripped) and ``relay_command`` (write, with the
choices ``trip`` and ``close``); prepaid maps have ``remaining_amount_micros``, ``purchase_count`` and the
``recharge`` write group (amount + purchase count in one FC16, so a retried recharge carries its count).

Provenance, so nobody mistakes our layout for a vendor's: in ``ACREL_SINGLE_PHASE`` the addresses 0000H-0010H
(total and four band energies, voltage, current, powers, power factor) follow the Acrel DDSY1352 manual (T1.0,
section 8.1); everything from 0011H (frequency, prepaid, relay, alarms, prices, recharge) is PowerGate's own
layout in the same style. Real meters of other models and firmware differ: add a map per model after
checking its manual, never edit a built-in map in place (meters in the field depend on it).
"""

from __future__ import annotations

from powergate.protocols.modbus.registers import Access, DataType, Register, RegisterMap, Table

R, W, RW = Access.READ, Access.WRITE, Access.READ_WRITE
H, INP, C, D = Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE_INPUT

RELAY_STATE_CHOICES = ((0, "closed"), (1, "tripped"))
EVENT_FLAG_BITS = (
    "cover_open",
    "terminal_cover_open",
    "reverse_current",
    "abnormal_current",
    "voltage_loss",
    "current_loss",
    "magnetic_interference",
    "overload_trip",
    "power_fail",
)
"""Bits of ``event_flags`` (bit 0 first): the anti-theft and safety events of DESIGN section 1."""

CENTS = 10_000
"""micros per 0.01 yuan: money registers count fen."""
DECAWATT_HOURS = 10
"""Wh per 0.01 kWh: energy registers count hundredths of a kWh."""
PRICE_STEP = 100
"""micros per 0.0001 yuan: price registers carry 4 decimals (yuan/kWh), as meters do."""


def _energy(name: str, address: int, table: Table, description: str) -> Register:
    return Register(
        name, address, DataType.U32, table, R, multiplier=DECAWATT_HOURS, unit="Wh", description=description
    )


def _money(name: str, address: int, access: Access, description: str, data_type: DataType = DataType.U32) -> Register:
    return Register(name, address, data_type, H, access, multiplier=CENTS, unit="micros", description=description)


def _price(band: str, address: int) -> Register:
    return Register(
        f"{band}_price_micros_per_kwh",
        address,
        DataType.U32,
        H,
        RW,
        multiplier=PRICE_STEP,
        unit="micros/kWh",
        description=f"{band} band price, 0.0001 yuan/kWh",
    )


ACREL_SINGLE_PHASE = RegisterMap(
    model="acrel-single-phase",
    description="Acrel-style single-phase prepaid meter (DDSY1352 layout for measurements, PowerGate layout "
    "for prepaid registers); holding registers, high word first",
    registers=(
        _energy("total_energy_wh", 0x0000, H, "combined active energy, 0.01 kWh"),
        _energy("sharp_energy_wh", 0x0002, H, "sharp band (rate 1), 0.01 kWh"),
        _energy("peak_energy_wh", 0x0004, H, "peak band (rate 2), 0.01 kWh"),
        _energy("flat_energy_wh", 0x0006, H, "flat band (rate 3), 0.01 kWh"),
        _energy("valley_energy_wh", 0x0008, H, "valley band (rate 4), 0.01 kWh"),
        Register("device_code", 0x000A, DataType.U16, H, R, unit="code", description="vendor code, 0-9999"),
        Register("voltage_dv", 0x000B, DataType.U16, H, R, unit="0.1 V", description="voltage, 0.1 V"),
        Register("current_ma", 0x000C, DataType.U16, H, R, multiplier=10, unit="mA", description="current, 0.01 A"),
        Register("active_power_w", 0x000D, DataType.S16, H, R, unit="W", description="active power, 0.001 kW"),
        Register("reactive_power_var", 0x000E, DataType.S16, H, R, unit="var", description="reactive, 0.001 kvar"),
        Register("apparent_power_va", 0x000F, DataType.U16, H, R, unit="VA", description="apparent, 0.001 kVA"),
        Register("power_factor_permille", 0x0010, DataType.S16, H, R, unit="x1000", description="-1000..1000"),
        Register("frequency_centihz", 0x0011, DataType.U16, H, R, unit="0.01 Hz", description="frequency, 0.01 Hz"),
        _money(
            "remaining_amount_micros",
            0x0012,
            R,
            "remaining amount, 0.01 yuan; negative in overdraft",
            DataType.S32,
        ),
        _money("overdraft_amount_micros", 0x0014, R, "overdraft amount used, 0.01 yuan"),
        Register("purchase_count", 0x0016, DataType.U16, H, R, unit="count", description="purchase count"),
        Register("relay_state", 0x0017, DataType.U16, H, R, unit="state", choices=RELAY_STATE_CHOICES),
        Register(
            "event_flags",
            0x0018,
            DataType.U16,
            H,
            R,
            unit="flags",
            description="active events",
            bits=EVENT_FLAG_BITS,
        ),
        _money("alarm_amount_1_micros", 0x0019, RW, "alarm amount 1 (first warning), 0.01 yuan"),
        _money("alarm_amount_2_micros", 0x001B, RW, "alarm amount 2 (second warning), 0.01 yuan"),
        _money("overdraft_limit_micros", 0x001D, RW, "overdraft limit, 0.01 yuan"),
        _money("hoarding_limit_micros", 0x001F, RW, "hoarding limit (max balance), 0.01 yuan"),
        Register("power_limit_w", 0x0021, DataType.U16, H, RW, unit="W", description="overload trip above"),
        _price("sharp", 0x0022),
        _price("peak", 0x0024),
        _price("flat", 0x0026),
        _price("valley", 0x0028),
        Register(
            "relay_command",
            0x0030,
            DataType.U16,
            H,
            W,
            unit="code",
            description="relay command",
            choices=((0x1A, "trip"), (0x1B, "close_allowed"), (0x1C, "close")),
        ),
        _money("recharge_amount_micros", 0x0031, W, "recharge amount, 0.01 yuan"),
        Register(
            "recharge_purchase_count",
            0x0033,
            DataType.U16,
            H,
            W,
            unit="count",
            description="purchase count of this recharge: last + 1, else the meter refuses it",
        ),
    ),
    write_groups={
        "recharge": ("recharge_amount_micros", "recharge_purchase_count"),
        "alarm_amounts": ("alarm_amount_1_micros", "alarm_amount_2_micros"),
        "prices": (
            "sharp_price_micros_per_kwh",
            "peak_price_micros_per_kwh",
            "flat_price_micros_per_kwh",
            "valley_price_micros_per_kwh",
        ),
    },
)


def _phase_registers() -> tuple[Register, ...]:
    registers: list[Register] = []
    for index, phase in enumerate("abc"):
        registers += [
            Register(f"voltage_{phase}_dv", index, DataType.U16, INP, R, unit="0.1 V", description="0.1 V"),
            Register(f"current_{phase}_ma", 0x0003 + 2 * index, DataType.U32, INP, R, unit="mA", description="mA"),
            Register(f"active_power_{phase}_w", 0x000B + 2 * index, DataType.S32, INP, R, unit="W", description="W"),
        ]
    return tuple(registers)


GENERIC_THREE_PHASE = RegisterMap(
    model="generic-three-phase",
    description="Generic three-phase meter: measurements in input registers, settings in holding registers, "
    "relay as a coil; 32-bit values high word first",
    registers=(
        *_phase_registers(),
        Register("active_power_w", 0x0009, DataType.S32, INP, R, unit="W", description="total active power, W"),
        Register("power_factor_permille", 0x0011, DataType.S16, INP, R, unit="x1000", description="total"),
        Register("frequency_centihz", 0x0012, DataType.U16, INP, R, unit="0.01 Hz", description="0.01 Hz"),
        _energy("total_energy_wh", 0x0013, INP, "forward active energy, 0.01 kWh"),
        _energy("reverse_energy_wh", 0x0015, INP, "reverse active energy, 0.01 kWh"),
        _energy("sharp_energy_wh", 0x0017, INP, "sharp band, 0.01 kWh"),
        _energy("peak_energy_wh", 0x0019, INP, "peak band, 0.01 kWh"),
        _energy("flat_energy_wh", 0x001B, INP, "flat band, 0.01 kWh"),
        _energy("valley_energy_wh", 0x001D, INP, "valley band, 0.01 kWh"),
        Register("serial_number", 0x0100, DataType.BCD32, H, R, unit="digits", description="8 BCD digits"),
        Register("power_limit_w", 0x0102, DataType.U32, H, RW, unit="W", description="overload trip above"),
        Register(
            "relay_command",
            0x0000,
            DataType.BIT,
            C,
            RW,
            unit="state",
            description="write 1 to trip",
            choices=((0, "close"), (1, "trip")),
        ),
        Register("relay_state", 0x0000, DataType.BIT, D, R, unit="state", choices=RELAY_STATE_CHOICES),
        Register("cover_open", 0x0001, DataType.BIT, D, R, unit="state", description="1 while the cover is open"),
    ),
)

BUILT_IN_MAPS: dict[str, RegisterMap] = {m.model: m for m in (ACREL_SINGLE_PHASE, GENERIC_THREE_PHASE)}


def register_map(model: str) -> RegisterMap:
    """The built-in map of a meter model; ``KeyError`` listing the known models."""
    try:
        return BUILT_IN_MAPS[model]
    except KeyError:
        raise KeyError(f"no built-in Modbus map {model!r}; known: {', '.join(sorted(BUILT_IN_MAPS))}") from None
