"""Pure conversion between Modbus register words and named integer values in our units.

The codec is driven entirely by a ``RegisterMap`` (see ``registers.py``): it never knows a meter model.
Words are 16-bit unsigned integers as a Modbus client returns them (coils and discrete inputs are 0 / 1).

Invariants kept:
- every function returns a value or a ``CodecError`` naming the register (or field) at fault; bad data from a
  meter never raises. Assertions guard only programmer errors (a malformed map).
- ``decode_value(r, encode_value(r, v)) == v`` for every value ``encode_value`` accepts: a value that cannot
  be represented exactly (out of range, not a multiple of the register's step, not one of its choices, too
  precise for ``f32``) is refused at encode time rather than silently changed.
- values are integers; ``f32`` registers are converted once, exactly (via ``fractions.Fraction``), rounding
  half to even to our unit. No float is ever handed out.
- a write covers whole registers and whole write groups, so a meter never receives half a value or half a
  recharge.

Standard library only (``protocols`` is a pure layer).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise

from powergate.protocols.modbus.registers import (
    MAX_WRITE_BITS,
    MAX_WRITE_REGISTERS,
    DataType,
    Register,
    RegisterMap,
    Table,
    WordOrder,
)


@dataclass(frozen=True, slots=True)
class CodecError:
    """A value that could not be decoded or encoded: which register (or field) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


_RAW_RANGE: dict[DataType, tuple[int, int]] = {
    DataType.BIT: (0, 1),
    DataType.U16: (0, 0xFFFF),
    DataType.S16: (-(2**15), 2**15 - 1),
    DataType.U32: (0, 2**32 - 1),
    DataType.S32: (-(2**31), 2**31 - 1),
    DataType.U64: (0, 2**64 - 1),
    DataType.S64: (-(2**63), 2**63 - 1),
    DataType.BCD16: (0, 9_999),
    DataType.BCD32: (0, 99_999_999),
}


def raw_range(data_type: DataType) -> tuple[int, int]:
    """Smallest and largest raw integer of an integer or BCD data type."""
    assert data_type is not DataType.F32, "f32 has no integer range"
    return _RAW_RANGE[data_type]


# --- words <-> one unsigned integer --------------------------------------------------------------------


def _join_words(words: Sequence[int], order: WordOrder) -> int:
    ordered = list(words) if order is WordOrder.BIG else list(reversed(words))
    number = 0
    for word in ordered:
        number = (number << 16) | word
    return number


def _split_words(number: int, count: int, order: WordOrder) -> tuple[int, ...]:
    words = [(number >> (16 * (count - 1 - i))) & 0xFFFF for i in range(count)]
    return tuple(words if order is WordOrder.BIG else reversed(words))


def _check_words(register: Register, words: Sequence[int]) -> CodecError | None:
    if len(words) != register.count:
        return CodecError(register.name, f"expected {register.count} word(s), got {len(words)}")
    top = 1 if register.data_type is DataType.BIT else 0xFFFF
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= top:
            return CodecError(register.name, f"word {word!r} is outside 0..{top}")
    return None


# --- raw integer <-> our unit ------------------------------------------------------------------------


def _bcd_to_int(register: Register, number: int) -> int | CodecError:
    digits = register.count * 4
    value = 0
    for shift in range(4 * (digits - 1), -1, -4):
        nibble = (number >> shift) & 0xF
        if nibble > 9:
            return CodecError(register.name, f"0x{number:0{digits}X} is not BCD (nibble {nibble:X})")
        value = value * 10 + nibble
    return value


def _int_to_bcd(raw: int) -> int:
    number = 0
    for shift, digit in enumerate(reversed(str(raw))):
        number |= int(digit) << (4 * shift)
    return number


def _raw_from_number(register: Register, number: int) -> int | Fraction | CodecError:
    data_type = register.data_type
    bits = 16 * register.count
    if data_type in (DataType.BCD16, DataType.BCD32):
        return _bcd_to_int(register, number)
    if data_type is DataType.F32:
        value = struct.unpack(">f", number.to_bytes(4, "big"))[0]
        if not math.isfinite(value):
            return CodecError(register.name, f"f32 value {value} is not a finite number")
        return Fraction(value)
    if data_type.signed and number >= 1 << (bits - 1):
        return number - (1 << bits)
    return number


def _to_unit(register: Register, raw: int | Fraction) -> int:
    if isinstance(raw, int) and register.divisor == 1:
        return raw * register.multiplier  # the common case, exact without Fraction
    scaled = Fraction(raw) * register.multiplier / register.divisor
    # round() on a Fraction rounds half to even and returns an int: one named rule, no float.
    return round(scaled)


def decode_value(register: Register, words: Sequence[int]) -> int | CodecError:
    """The value in our unit held by ``words`` (exactly ``register.count`` of them)."""
    error = _check_words(register, words)
    if error is not None:
        return error
    raw = _raw_from_number(register, _join_words(words, register.word_order))
    if isinstance(raw, CodecError):
        return raw
    return _to_unit(register, raw)


def _raw_for_value(register: Register, value: int) -> int | float | CodecError:
    if register.divisor == 1 and register.data_type is not DataType.F32 and value % register.multiplier == 0:
        raw = value // register.multiplier  # the common case, exact without Fraction
        low, high = _RAW_RANGE[register.data_type]
        if low <= raw <= high:
            return raw
        return CodecError(register.name, f"{value} is out of range for {register.data_type.value}")
    scaled = Fraction(value * register.divisor, register.multiplier)
    if register.data_type is DataType.F32:
        try:
            as_float = float(scaled)
            packed = struct.unpack(">f", struct.pack(">f", as_float))[0]
        except OverflowError:
            return CodecError(register.name, f"{value} does not fit in an f32 register")
        if _to_unit(register, Fraction(packed)) != value:
            return CodecError(register.name, f"{value} is not exactly representable in an f32 register")
        return as_float
    if scaled.denominator != 1:
        step = Fraction(register.multiplier, register.divisor)
        return CodecError(register.name, f"{value} is not a multiple of the register's step {step}")
    raw = int(scaled)
    low, high = _RAW_RANGE[register.data_type]
    if not low <= raw <= high:
        return CodecError(register.name, f"{value} is out of range for {register.data_type.value}")
    return raw


def encode_value(register: Register, value: int) -> tuple[int, ...] | CodecError:
    """The words that hold ``value`` (in our unit); a ``CodecError`` when it cannot be held exactly."""
    if isinstance(value, bool) or not isinstance(value, int):
        return CodecError(register.name, f"expected an integer, got {value!r}")
    if register.choices and register.choice_name(value) is None:
        legal = ", ".join(f"{v}={name}" for v, name in register.choices)
        return CodecError(register.name, f"{value} is not one of {legal}")
    raw = _raw_for_value(register, value)
    if isinstance(raw, CodecError):
        return raw
    data_type = register.data_type
    if isinstance(raw, float):
        number = int.from_bytes(struct.pack(">f", raw), "big")
    elif data_type in (DataType.BCD16, DataType.BCD32):
        number = _int_to_bcd(raw)
    else:
        number = raw & ((1 << (16 * register.count)) - 1)
    return _split_words(number, register.count, register.word_order)


# --- flags -------------------------------------------------------------------------------------------


def decode_flags(register: Register, value: int) -> tuple[str, ...]:
    """Names of the bits set in a flags register's value, bit 0 first; unnamed bits as ``bit<n>``."""
    assert register.bits, f"{register.name} is not a flags register"
    return tuple(
        register.bits[i] if i < len(register.bits) else f"bit{i}" for i in range(16 * register.count) if value >> i & 1
    )


def encode_flags(register: Register, names: Sequence[str]) -> int | CodecError:
    """The value with the named bits set."""
    value = 0
    for name in names:
        if name not in register.bits:
            return CodecError(register.name, f"unknown flag {name!r}")
        value |= 1 << register.bits.index(name)
    return value


# --- blocks ------------------------------------------------------------------------------------------


def decode_block(
    register_map: RegisterMap, table: Table, address: int, words: Sequence[int]
) -> tuple[dict[str, int], list[CodecError]]:
    """Named values of every readable register that lies wholly inside a block read from ``address``.

    Errors are collected per register (one bad register does not hide the others); registers the block
    covers only in part are left out, as are write-only registers.
    """
    end = address + len(words)
    values: dict[str, int] = {}
    errors: list[CodecError] = []
    for register in register_map.in_table(table):
        if not register.access.readable or register.address < address or register.end > end:
            continue
        offset = register.address - address
        decoded = decode_value(register, words[offset : offset + register.count])
        if isinstance(decoded, CodecError):
            errors.append(decoded)
        else:
            values[register.name] = decoded
    return values, errors


def encode_block(
    register_map: RegisterMap, table: Table, address: int, count: int, values: Mapping[str, int]
) -> list[int] | CodecError:
    """The words a meter answers for a read of ``count`` words (bits) of ``table`` from ``address``.

    Every address read must belong to a register of the map (a real meter answers "illegal data address"
    otherwise, and so should a simulator). Readable registers take their value from ``values``; write-only
    registers read as zero, as most meters do.
    """
    words: dict[int, int] = {}
    for register in register_map.in_table(table):
        if register.end <= address or register.address >= address + count:
            continue
        if register.access.readable and register.name not in values:
            return CodecError(register.name, "no value to encode")
        encoded = encode_value(register, values[register.name]) if register.access.readable else None
        if isinstance(encoded, CodecError):
            return encoded
        for offset in range(register.count):
            words[register.address + offset] = encoded[offset] if encoded is not None else 0
    for position in range(address, address + count):
        if position not in words:
            return CodecError("address", f"{position} (0x{position:04X}) is not a {table.value} register")
    return [words[position] for position in range(address, address + count)]


# --- writes ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One write to a meter: words (or coil bits) for consecutive addresses of one writable table."""

    table: Table
    address: int
    words: tuple[int, ...]

    @property
    def function(self) -> int:
        # Holding registers always go with FC16 even for one word: a lone FC06 could write half of a
        # 32-bit value, and several prepaid meters accept writes only through FC16.
        if self.table is Table.COIL:
            return 0x05 if len(self.words) == 1 else 0x0F
        return 0x10


def encode_write(register_map: RegisterMap, values: Mapping[str, int]) -> WriteRequest | CodecError:
    """One request writing ``values`` (register name -> value in our unit).

    The registers must be writable, of one table, and consecutive (no unnamed address between them),
    and every write group they touch must be written whole.
    """
    if not values:
        return CodecError("values", "nothing to write")
    registers: list[Register] = []
    for name in values:
        register = register_map.get(name)
        if register is None:
            return CodecError(name, f"meter model {register_map.model} has no such register")
        if not register.access.writable:
            return CodecError(name, "register is read-only")
        registers.append(register)
    registers.sort(key=lambda r: r.address)
    error = _check_contiguous(register_map, registers)
    if error is not None:
        return error
    words: list[int] = []
    for register in registers:
        encoded = encode_value(register, values[register.name])
        if isinstance(encoded, CodecError):
            return encoded
        words.extend(encoded)
    return WriteRequest(registers[0].table, registers[0].address, tuple(words))


def encode_group(register_map: RegisterMap, group: str, values: Mapping[str, int]) -> WriteRequest | CodecError:
    """A write of one named write group (e.g. ``recharge``); every member needs a value, nothing else."""
    names = register_map.write_groups.get(group)
    if names is None:
        return CodecError("group", f"meter model {register_map.model} has no write group {group!r}")
    if set(values) != set(names):
        return CodecError(group, f"needs exactly {', '.join(names)}; got {', '.join(sorted(values)) or 'nothing'}")
    return encode_write(register_map, values)


def _check_contiguous(register_map: RegisterMap, registers: list[Register]) -> CodecError | None:
    table = registers[0].table
    if any(r.table is not table for r in registers):
        return CodecError("values", "registers of one write must be in one table")
    for previous, current in pairwise(registers):
        if previous.end != current.address:
            return CodecError(current.name, f"not adjacent to {previous.name}; write them in separate requests")
    total = registers[-1].end - registers[0].address
    limit = MAX_WRITE_BITS if table.is_bits else MAX_WRITE_REGISTERS
    if total > limit:
        return CodecError("values", f"{total} words exceed the Modbus write limit of {limit}")
    return _check_groups(register_map, {r.name for r in registers})


def _check_groups(register_map: RegisterMap, names: set[str]) -> CodecError | None:
    for group, members in register_map.write_groups.items():
        touched = names.intersection(members)
        if touched and touched != set(members):
            missing = ", ".join(m for m in members if m not in names)
            return CodecError(group, f"must be written whole; missing {missing}")
    return None


def decode_write(
    register_map: RegisterMap, table: Table, address: int, words: Sequence[int]
) -> dict[str, int] | CodecError:
    """The named values of a write a meter received (server side): whole writable registers only."""
    if not table.writable:
        return CodecError("table", f"{table.value} is read-only")
    if not words:
        return CodecError("words", "empty write")
    end = address + len(words)
    position = address
    values: dict[str, int] = {}
    for register in register_map.in_table(table):
        if register.end <= address or register.address >= end:
            continue
        if register.address != position or register.end > end:
            return CodecError(register.name, "write does not cover the whole register")
        if not register.access.writable:
            return CodecError(register.name, "register is read-only")
        decoded = decode_value(register, words[position - address : register.end - address])
        if isinstance(decoded, CodecError):
            return decoded
        values[register.name] = decoded
        position = register.end
    if position != end:
        return CodecError("address", f"{position} (0x{position:04X}) is not a writable {table.value} register")
    error = _check_groups(register_map, set(values))
    return error if error is not None else values
