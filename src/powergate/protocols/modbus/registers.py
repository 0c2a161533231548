"""Modbus register maps as data: what lives at which address of a meter model, and in which units.

A meter model's Modbus face is a table, not code: each ``Register`` names one value (``total_energy_wh``),
where it lives (table and address), how it is laid out on the wire (data type, word order) and how a raw
register count becomes one of our integer units (``multiplier`` / ``divisor``). The codec
(``powergate.protocols.modbus.codec``) reads these tables; nothing else about a model is hard-coded.

Our units (the value a codec hands out, named last in the register name): energy Wh, money micros, voltage
0.1 V (``_dv``), current mA, power W / var / VA, power factor x1000 (``_permille``), frequency 0.01 Hz
(``_centihz``), prices micros per kWh.

Invariants kept (checked when a map is built, so a bad map never reaches a meter):
- names are unique in a map and end in a known unit suffix or are dimensionless (counts, states, flags);
- registers of one table never overlap, and every address fits the 16-bit Modbus address space;
- bit registers (``BIT``) live only in the coil and discrete-input tables, word registers only in the
  holding and input tables;
- a register that can be written lives in a writable table (coils or holding registers);
- scales are positive integers: a raw count times ``multiplier`` divided by ``divisor`` is the value in our
  unit, and only encodes back when it divides exactly (so a round trip never drifts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise

MAX_ADDRESS = 0xFFFF
MAX_READ_REGISTERS = 125
"""Modbus limit on registers in one read (FC03/FC04: 250 data bytes)."""
MAX_READ_BITS = 2000
"""Modbus limit on coils / discrete inputs in one read (FC01/FC02)."""
MAX_WRITE_REGISTERS = 123
"""Modbus limit on registers in one write (FC16: 246 data bytes)."""
MAX_WRITE_BITS = 1968
"""Modbus limit on coils in one write (FC15)."""
MAX_REGISTERS_PER_MAP = 512
"""A limit on everything: a meter map with more entries than this is a mistake."""


class Table(StrEnum):
    """The four Modbus data tables; which function codes read and write each."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING)

    @property
    def read_function(self) -> int:
        return _READ_FUNCTION[self]

    @property
    def max_read(self) -> int:
        return MAX_READ_BITS if self.is_bits else MAX_READ_REGISTERS


_READ_FUNCTION = {Table.COIL: 0x01, Table.DISCRETE_INPUT: 0x02, Table.HOLDING: 0x03, Table.INPUT: 0x04}


class DataType(StrEnum):
    """How a value is laid out in 16-bit words.

    ``BCD16`` / ``BCD32`` hold 4 / 8 decimal digits, most significant digit first inside the value (the word
    order still applies to ``BCD32``). ``F32`` is IEEE 754 single precision, which some meters use for
    instantaneous values: it is converted to our integer unit once, at the edge, rounding half to even.
    """

    BIT = "bit"
    U16 = "u16"
    S16 = "s16"
    U32 = "u32"
    S32 = "s32"
    U64 = "u64"
    S64 = "s64"
    BCD16 = "bcd16"
    BCD32 = "bcd32"
    F32 = "f32"

    @property
    def word_count(self) -> int:
        return _WORD_COUNT[self]

    @property
    def signed(self) -> bool:
        return self in (DataType.S16, DataType.S32, DataType.S64, DataType.F32)


_WORD_COUNT = {
    DataType.BIT: 1,
    DataType.U16: 1,
    DataType.S16: 1,
    DataType.U32: 2,
    DataType.S32: 2,
    DataType.U64: 4,
    DataType.S64: 4,
    DataType.BCD16: 1,
    DataType.BCD32: 2,
    DataType.F32: 2,
}


class WordOrder(StrEnum):
    """Order of the 16-bit words of a multi-word value. Bytes inside a word are always big-endian.

    ``BIG`` (high word first, "ABCD") is the Modbus convention; ``LITTLE`` (low word first, "CDAB") is
    common on meters whose firmware stores 32-bit values little-endian.
    """

    BIG = "big"
    LITTLE = "little"


class Access(StrEnum):
    READ = "r"
    WRITE = "w"
    READ_WRITE = "rw"

    @property
    def readable(self) -> bool:
        return self is not Access.WRITE

    @property
    def writable(self) -> bool:
        return self is not Access.READ


UNIT_SUFFIXES: dict[str, str] = {
    "_wh": "Wh",
    "_micros": "micros",
    "_micros_per_kwh": "micros/kWh",
    "_dv": "0.1 V",
    "_ma": "mA",
    "_w": "W",
    "_var": "var",
    "_va": "VA",
    "_permille": "x1000",
    "_centihz": "0.01 Hz",
}
"""Name suffix -> our unit. A register name ending in one of these carries that unit."""

DIMENSIONLESS_UNITS = {"count", "state", "flags", "digits", "code"}


@dataclass(frozen=True, slots=True)
class Register:
    """One named value of a meter model.

    ``value = raw * multiplier // divisor`` (exact when the division is exact; rounded half to even
    otherwise) and ``raw = value * divisor / multiplier`` (must be exact). Example: an energy register in
    0.01 kWh has ``multiplier=10`` (10 Wh per count); a power register in 0.1 W has ``divisor=10``.
    ``choices`` names the legal values of a state or command register; ``bits`` names the bits of a flags
    register, bit 0 first.
    """

    name: str
    address: int
    data_type: DataType
    table: Table = Table.HOLDING
    access: Access = Access.READ
    word_order: WordOrder = WordOrder.BIG
    multiplier: int = 1
    divisor: int = 1
    unit: str = ""
    description: str = ""
    choices: tuple[tuple[int, str], ...] = ()
    bits: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """Words (or bits) the register occupies."""
        return self.data_type.word_count

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.address + self.count

    def check(self) -> None:
        """Assert the register is well formed (a broken map is a programmer error)."""
        assert self.name.isidentifier(), f"register name {self.name!r} is not an identifier"
        assert self.address >= 0 and self.end - 1 <= MAX_ADDRESS, f"{self.name}: address out of range"
        assert self.multiplier > 0 and self.divisor > 0, f"{self.name}: scale must be positive"
        bit_type = self.data_type is DataType.BIT
        assert bit_type == self.table.is_bits, f"{self.name}: {self.data_type.value} not in {self.table.value}"
        assert not self.access.writable or self.table.writable, f"{self.name}: {self.table.value} is read-only"
        assert self.unit, f"{self.name}: unit is required"
        suffix_unit = unit_for_name(self.name)
        assert suffix_unit in (None, self.unit), f"{self.name}: unit {self.unit!r} but name says {suffix_unit!r}"
        assert suffix_unit is not None or self.unit in DIMENSIONLESS_UNITS, f"{self.name}: name lacks a unit"
        assert len(self.bits) <= 16 * self.count, f"{self.name}: more bit names than bits"
        assert len({value for value, _ in self.choices}) == len(self.choices), f"{self.name}: duplicate choice"

    def choice_name(self, value: int) -> str | None:
        """The name of a state or command value, or ``None`` when it is not one of the ``choices``."""
        return next((name for choice, name in self.choices if choice == value), None)

    def choice_value(self, name: str) -> int:
        """The value of a named choice; ``KeyError`` naming the register when there is none."""
        for value, choice in self.choices:
            if choice == name:
                return value
        raise KeyError(f"register {self.name} has no choice {name!r}")


def unit_for_name(name: str) -> str | None:
    """The unit a register name declares by its suffix (longest suffix wins), or ``None``."""
    matches = [suffix for suffix in UNIT_SUFFIXES if name.endswith(suffix)]
    return UNIT_SUFFIXES[max(matches, key=len)] if matches else None


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` words or bits of ``table`` from ``address``; the registers it covers."""

    table: Table
    address: int
    count: int
    registers: tuple[Register, ...]


@dataclass(frozen=True, slots=True, eq=False)
class RegisterMap:
    """The Modbus face of one meter model.

    ``write_groups`` name sets of registers that must be written together in one request (for example a
    recharge: amount and purchase count in one FC16, so a meter never sees half a recharge).
    """

    model: str
    description: str
    registers: tuple[Register, ...]
    write_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _by_name: dict[str, Register] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert 0 < len(self.registers) <= MAX_REGISTERS_PER_MAP, f"{self.model}: register count out of range"
        by_name: dict[str, Register] = {}
        for register in self.registers:
            register.check()
            assert register.name not in by_name, f"{self.model}: duplicate register {register.name}"
            by_name[register.name] = register
        object.__setattr__(self, "_by_name", by_name)
        for table in Table:
            _assert_no_overlap(self.model, [r for r in self.registers if r.table is table])
        for group, names in self.write_groups.items():
            assert names and all(n in by_name for n in names), f"{self.model}: write group {group} is unknown"
            assert all(by_name[n].access.writable for n in names), f"{self.model}: {group} is not writable"

    def register(self, name: str) -> Register:
        """The register called ``name``; ``KeyError`` naming the model when it has none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"meter model {self.model} has no register {name!r}") from None

    def get(self, name: str) -> Register | None:
        return self._by_name.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.registers)

    def in_table(self, table: Table) -> list[Register]:
        """Registers of one table, by address."""
        return sorted((r for r in self.registers if r.table is table), key=lambda r: r.address)

    def readable(self) -> list[Register]:
        return [r for r in self.registers if r.access.readable]


def _assert_no_overlap(model: str, registers: list[Register]) -> None:
    ordered = sorted(registers, key=lambda r: r.address)
    for previous, current in pairwise(ordered):
        assert previous.end <= current.address, f"{model}: {previous.name} overlaps {current.name}"


def read_plan(
    register_map: RegisterMap,
    names: Iterable[str] | None = None,
    *,
    max_gap: int = 0,
    max_count: int | None = None,
) -> list[ReadBlock]:
    """Group the registers to read into as few requests as the Modbus limits allow.

    Registers of one table are merged into one block when the unused addresses between them are at most
    ``max_gap`` (0 by default: many meters answer an exception for an undefined address inside a read) and
    the block stays within ``max_count`` (the table's Modbus limit by default). Write-only registers are
    never read. Blocks come out ordered by table, then address.
    """
    assert max_gap >= 0
    wanted = register_map.readable() if names is None else [register_map.register(n) for n in names]
    blocks: list[ReadBlock] = []
    for table in Table:
        limit = min(max_count or table.max_read, table.max_read)
        chosen = sorted((r for r in wanted if r.table is table and r.access.readable), key=lambda r: r.address)
        blocks.extend(_blocks_of_table(table, chosen, max_gap, limit))
    return blocks


def _blocks_of_table(table: Table, registers: list[Register], max_gap: int, limit: int) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    current: list[Register] = []
    for register in registers:
        assert register.count <= limit, f"{register.name} is larger than one read"
        if current and (register.address - current[-1].end > max_gap or register.end - current[0].address > limit):
            blocks.append(_block(table, current))
            current = []
        current.append(register)
    if current:
        blocks.append(_block(table, current))
    return blocks


def _block(table: Table, registers: list[Register]) -> ReadBlock:
    start = registers[0].address
    return ReadBlock(table, start, registers[-1].end - start, tuple(registers))


def render_markdown(register_map: RegisterMap) -> str:
    """The map as a Markdown table (the docs embed it, and a test checks the docs against the map)."""
    lines = [
        "| Name | Table | Address | Words | Type | Order | Scale | Unit | Access | Notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(register_map.registers, key=lambda r: (list(Table).index(r.table), r.address)):
        scale = f"x{r.multiplier}" + (f" /{r.divisor}" if r.divisor != 1 else "")
        notes = r.description
        if r.choices:
            notes += " (" + ", ".join(f"{k}={v}" for k, v in r.choices) + ")"
        if r.bits:
            notes += " (bits: " + ", ".join(f"{i}={b}" for i, b in enumerate(r.bits)) + ")"
        order = r.word_order.value if r.count > 1 and not r.table.is_bits else ""
        lines.append(
            f"| `{r.name}` | {r.table.value} | {r.address:04X}H | {r.count} | {r.data_type.value} | {order} "
            f"| {scale} | {r.unit} | {r.access.value} | {notes.strip()} |"
        )
    return "\n".join(lines) + "\n"
