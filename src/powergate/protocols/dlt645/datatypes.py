"""DL/T 645-2007 value formats: BCD numbers, timestamps, digit strings, status words and blocks.

A format turns the de-obfuscated bytes of one data item (after the +33H is removed and the DI stripped) into a
value in PowerGate's integer units, and back. Invariants:

- Multi-byte values travel least significant byte first; formats are *written* most significant first
  (``XXXXXX.XX``, ``YYMMDDhhmm``) exactly as the standard's tables write them.
- Numbers become integers at our fixed scales (energy Wh, money micros, voltage 0.1 V, current mA,
  power 0.1 W, power factor 0.001, frequency 0.01 Hz); never a float. ``encode(decode(b)) == b`` for
  canonical bytes, and ``decode(encode(v)) == v`` for every value the format can carry.
- Signed formats use the standard's convention: bit 7 of the most significant byte is the sign, the rest BCD.
- ``decode`` never raises: malformed bytes give a ``DecodeError`` naming the field. ``encode`` raises
  ``ValueError`` naming the field for a value the format cannot carry (input validation, like
  ``domain.money.parse_micros``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Bytes that are not what the protocol allows, as a value: which field, and what is wrong with it."""

    field: str
    message: str
    skipped_bytes: int = 0
    """For a stream: how many bytes this report covers (they were skipped as noise)."""

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class RunningStatus3:
    """Meter running status word 3 (电表运行状态字3, DI 04000503): relay and prepaid state bits.

    Kept as the raw 16-bit word so that encoding is exact; the properties name the bits the standard defines.
    """

    word: int

    def __post_init__(self) -> None:
        assert 0 <= self.word <= 0xFFFF, f"status word 3 is 16 bits, got {self.word}"

    def bit(self, index: int) -> bool:
        return bool(self.word >> index & 1)

    @property
    def relay_open(self) -> bool:
        """Bit 4, 继电器状态: the relay is actually open (supply off)."""
        return self.bit(4)

    @property
    def relay_command_open(self) -> bool:
        """Bit 6, 继电器命令状态: the last relay command asks for open (trip)."""
        return self.bit(6)

    @property
    def pre_trip_alarm(self) -> bool:
        """Bit 7, 预跳闸报警状态: the pre-trip alarm is active."""
        return self.bit(7)

    @property
    def power_protect(self) -> bool:
        """Bit 12, 保电状态: power-protect is on (the meter will not trip)."""
        return self.bit(12)

    @property
    def programming_allowed(self) -> bool:
        """Bit 3, 编程允许."""
        return self.bit(3)

    @property
    def supply(self) -> str:
        """Bits 1-2, 供电方式."""
        return ("main", "auxiliary", "battery", "reserved")[self.word >> 1 & 0b11]

    @property
    def meter_type(self) -> str:
        """Bits 8-9, 电能表类型: non-prepaid, energy-prepaid (电量型) or money-prepaid (电费型)."""
        return ("non-prepaid", "energy-prepaid", "money-prepaid", "reserved")[self.word >> 8 & 0b11]

    def describe(self) -> dict[str, object]:
        return {
            "word": f"{self.word:04X}",
            "second_period_set": self.bit(0),
            "supply": self.supply,
            "programming_allowed": self.programming_allowed,
            "relay_open": self.relay_open,
            "second_zone_set": self.bit(5),
            "relay_command_open": self.relay_command_open,
            "pre_trip_alarm": self.pre_trip_alarm,
            "meter_type": self.meter_type,
            "second_rate_price_set": self.bit(10),
            "second_step_set": self.bit(11),
            "power_protect": self.power_protect,
            "identity_authenticated": self.bit(13),
            "local_account_not_open": self.bit(14),
            "remote_account_not_open": self.bit(15),
        }


Value: TypeAlias = "int | str | date | time | datetime | RunningStatus3 | tuple[Value, ...] | dict[str, Value] | None"
"""A decoded data item: integers in our units, timestamps (meter-local, naive), digit strings, a status word,
``None`` for an all-zero timestamp (\"never happened\"), or a block of those."""


# --- BCD ----------------------------------------------------------------------------------------------


def bcd_digits(data: bytes, field: str) -> str | DecodeError:
    """The decimal digits of BCD ``data`` sent least significant byte first, most significant digit first."""
    digits = []
    for byte in reversed(data):
        if byte >> 4 > 9 or byte & 0x0F > 9:
            return DecodeError(field, f"byte {byte:02X} is not BCD")
        digits.append(f"{byte:02X}")
    return "".join(digits)


def digits_to_bcd(digits: str) -> bytes:
    """Even-length decimal ``digits`` (most significant first) as BCD bytes, least significant byte first."""
    assert len(digits) % 2 == 0 and digits.isdigit() and digits.isascii(), digits
    return bytes.fromhex(digits)[::-1]


def int_to_bcd(value: int, length: int) -> bytes:
    assert 0 <= value < 10 ** (2 * length), (value, length)
    return digits_to_bcd(f"{value:0{2 * length}d}")


# --- Formats -------------------------------------------------------------------------------------------


class ValueFormat:
    """How one data item is laid out. Subclasses are small frozen dataclasses."""

    @property
    def pattern(self) -> str:
        raise NotImplementedError

    @property
    def min_length(self) -> int:
        raise NotImplementedError

    @property
    def max_length(self) -> int:
        return self.min_length

    @property
    def unit(self) -> str:
        """Our unit for the decoded integer ("" when the value is not a number)."""
        return ""

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        raise NotImplementedError

    def encode(self, value: Value, field: str) -> bytes:
        raise NotImplementedError

    def parse_text(self, text: str, field: str) -> Value:
        """A value typed by a person, in the meter's unit (``"100.00"`` yuan); ``ValueError`` if it is bad."""
        raise NotImplementedError

    def to_json(self, value: Value) -> object:
        return value

    def check_length(self, data: bytes, field: str) -> DecodeError | None:
        if self.min_length <= len(data) <= self.max_length:
            return None
        want = str(self.min_length) if self.min_length == self.max_length else f"{self.min_length}..{self.max_length}"
        return DecodeError(field, f"expected {want} bytes for {self.pattern}, got {len(data)}")


_NUMBER_PATTERN = re.compile(r"^(X+)(?:\.(X+))?$")
_DECIMAL_TEXT = re.compile(r"^[+-]?\d+(\.\d+)?$")


@dataclass(frozen=True, slots=True)
class Number(ValueFormat):
    """A BCD number such as ``XXXXXX.XX`` kWh, decoded to ``raw * scale`` in our unit.

    ``raw`` is the BCD integer with the decimal point removed (0.01 kWh for ``XXXXXX.XX``); ``scale`` turns it
    into our unit exactly (x10 gives Wh), so no value is ever rounded.
    """

    number_pattern: str
    meter_unit: str
    our_unit: str
    scale: int
    signed: bool = False

    def __post_init__(self) -> None:
        match = _NUMBER_PATTERN.match(self.number_pattern)
        assert match is not None and self.digits % 2 == 0, self.number_pattern
        assert self.scale >= 1

    @property
    def pattern(self) -> str:
        return self.number_pattern

    @property
    def digits(self) -> int:
        return self.number_pattern.count("X")

    @property
    def decimals(self) -> int:
        return len(self.number_pattern.partition(".")[2])

    @property
    def min_length(self) -> int:
        return self.digits // 2

    @property
    def unit(self) -> str:
        return self.our_unit

    @property
    def max_raw(self) -> int:
        # The sign takes bit 7 of the top byte, so its high digit can only be 0..7.
        top: int = 10 ** (self.digits - 1)
        return 8 * top - 1 if self.signed else 10 * top - 1

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        wrong = self.check_length(data, field)
        if wrong is not None:
            return wrong
        negative = self.signed and bool(data[-1] & 0x80)
        if self.signed:
            data = data[:-1] + bytes([data[-1] & 0x7F])
        digits = bcd_digits(data, field)
        if isinstance(digits, DecodeError):
            return digits
        raw = int(digits)
        return (-raw if negative else raw) * self.scale

    def encode(self, value: Value, field: str) -> bytes:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{field}: expected an integer in {self.our_unit}, got {value!r}")
        if value % self.scale:
            raise ValueError(f"{field}: {value} {self.our_unit} is finer than the meter's {self.pattern} resolution")
        raw = value // self.scale
        if raw < 0 and not self.signed:
            raise ValueError(f"{field}: {value} {self.our_unit} is negative; {self.pattern} is unsigned")
        if abs(raw) > self.max_raw:
            raise ValueError(f"{field}: {value} {self.our_unit} does not fit {self.pattern} {self.meter_unit}")
        data = int_to_bcd(abs(raw), self.min_length)
        if raw < 0:
            data = data[:-1] + bytes([data[-1] | 0x80])
        return data

    def parse_text(self, text: str, field: str) -> Value:
        raw_text = text.strip()
        if not _DECIMAL_TEXT.match(raw_text):
            raise ValueError(f"{field}: {text!r} is not a decimal number in {self.meter_unit}")
        try:
            number = Decimal(raw_text)
        except InvalidOperation:
            raise ValueError(f"{field}: {text!r} is not a decimal number") from None
        exponent = number.as_tuple().exponent
        assert isinstance(exponent, int)
        if -exponent > self.decimals:
            raise ValueError(f"{field}: {text!r} has more than {self.decimals} decimals ({self.pattern})")
        raw: int = int(number.scaleb(self.decimals))
        return raw * self.scale

    def to_meter_text(self, value: int) -> str:
        """The value as the meter shows it: ``123.45`` for 123450 Wh in ``XXXXXX.XX`` kWh."""
        raw = value // self.scale
        text = f"{abs(raw):0{self.decimals + 1}d}"
        if self.decimals:
            text = f"{text[: -self.decimals]}.{text[-self.decimals :]}"
        return f"-{text}" if raw < 0 else text


_TIMESTAMP_FIELDS = {"YY", "MM", "DD", "WW", "hh", "mm", "ss"}


@dataclass(frozen=True, slots=True)
class Timestamp(ValueFormat):
    """A BCD date and/or time such as ``YYMMDDhhmm`` (meter-local, years 2000-2099), decoded to
    ``date`` (``YYMMDDWW``; the weekday byte is recomputed on encode), ``time`` (``hhmmss``) or ``datetime``.

    An all-zero date means "never happened" on meters (an empty event record) and decodes to ``None``.
    """

    timestamp_pattern: str

    def __post_init__(self) -> None:
        assert all(part in _TIMESTAMP_FIELDS for part in self.parts), self.timestamp_pattern

    @property
    def parts(self) -> tuple[str, ...]:
        text = self.timestamp_pattern
        return tuple(text[i : i + 2] for i in range(0, len(text), 2))

    @property
    def pattern(self) -> str:
        return self.timestamp_pattern

    @property
    def min_length(self) -> int:
        return len(self.parts)

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        wrong = self.check_length(data, field)
        if wrong is not None:
            return wrong
        digits = bcd_digits(data, field)
        if isinstance(digits, DecodeError):
            return digits
        if set(digits) == {"0"} and "YY" in self.parts:
            return None
        fields = {part: int(digits[2 * i : 2 * i + 2]) for i, part in enumerate(self.parts)}
        try:
            return self._build(fields)
        except ValueError as error:
            return DecodeError(field, f"{digits} is not a valid {self.pattern}: {error}")

    def _build(self, fields: dict[str, int]) -> date | time | datetime:
        clock = time(fields.get("hh", 0), fields.get("mm", 0), fields.get("ss", 0))
        if "YY" not in fields:
            return clock
        day = date(2000 + fields["YY"], fields["MM"], fields["DD"])
        if "hh" not in fields:
            return day
        return datetime.combine(day, clock)

    def encode(self, value: Value, field: str) -> bytes:
        if value is None:
            return bytes(self.min_length)
        values = self._fields_of(value, field)
        return digits_to_bcd("".join(f"{values[part]:02d}" for part in self.parts))

    def _fields_of(self, value: Value, field: str) -> dict[str, int]:
        has_date, has_time = "YY" in self.parts, "hh" in self.parts
        if has_date and has_time and isinstance(value, datetime):
            day, clock = value.date(), value.time()
        elif has_date and not has_time and isinstance(value, date) and not isinstance(value, datetime):
            day, clock = value, time()
        elif has_time and not has_date and isinstance(value, time):
            day, clock = date(2000, 1, 1), value
        else:
            raise ValueError(f"{field}: {value!r} does not fit {self.pattern}")
        if not 2000 <= day.year <= 2099:
            raise ValueError(f"{field}: year {day.year} is outside 2000..2099 ({self.pattern})")
        return {
            "YY": day.year - 2000,
            "MM": day.month,
            "DD": day.day,
            "WW": day.isoweekday() % 7,  # the standard counts 0 = Sunday
            "hh": clock.hour,
            "mm": clock.minute,
            "ss": clock.second,
        }

    def parse_text(self, text: str, field: str) -> Value:
        try:
            if "YY" in self.parts and "hh" in self.parts:
                return datetime.fromisoformat(text.strip()).replace(tzinfo=None, microsecond=0)
            if "YY" in self.parts:
                return date.fromisoformat(text.strip())
            return time.fromisoformat(text.strip()).replace(microsecond=0)
        except ValueError:
            raise ValueError(f"{field}: {text!r} is not an ISO date/time for {self.pattern}") from None

    def to_json(self, value: Value) -> object:
        return value.isoformat() if isinstance(value, date | time) else value


@dataclass(frozen=True, slots=True)
class Digits(ValueFormat):
    """A BCD digit string such as a communication address or customer number (``NNNNNNNNNNNN``)."""

    length: int

    @property
    def pattern(self) -> str:
        return "N" * (2 * self.length)

    @property
    def min_length(self) -> int:
        return self.length

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        wrong = self.check_length(data, field)
        return wrong if wrong is not None else bcd_digits(data, field)

    def encode(self, value: Value, field: str) -> bytes:
        if not isinstance(value, str) or len(value) != 2 * self.length or not (value.isdigit() and value.isascii()):
            raise ValueError(f"{field}: expected {2 * self.length} decimal digits, got {value!r}")
        return digits_to_bcd(value)

    def parse_text(self, text: str, field: str) -> Value:
        return text.strip()


@dataclass(frozen=True, slots=True)
class StatusWord3(ValueFormat):
    """Running status word 3: two bytes, least significant first."""

    @property
    def pattern(self) -> str:
        return "XXXX (bits)"

    @property
    def min_length(self) -> int:
        return 2

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        wrong = self.check_length(data, field)
        return wrong if wrong is not None else RunningStatus3(int.from_bytes(data, "little"))

    def encode(self, value: Value, field: str) -> bytes:
        if not isinstance(value, RunningStatus3):
            raise ValueError(f"{field}: expected a RunningStatus3, got {value!r}")
        return value.word.to_bytes(2, "little")

    def parse_text(self, text: str, field: str) -> Value:
        try:
            word = int(text.strip(), 16)
        except ValueError:
            raise ValueError(f"{field}: {text!r} is not a 4-digit hex status word") from None
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"{field}: {text!r} is not a 4-digit hex status word")
        return RunningStatus3(word)

    def to_json(self, value: Value) -> object:
        return value.describe() if isinstance(value, RunningStatus3) else value


@dataclass(frozen=True, slots=True)
class Repeated(ValueFormat):
    """An FF block: the same element repeated, e.g. total energy then rates 1..N (N varies per meter)."""

    element: ValueFormat
    min_count: int
    max_count: int

    @property
    def pattern(self) -> str:
        return f"{self.element.pattern} x {self.min_count}..{self.max_count}"

    @property
    def min_length(self) -> int:
        return self.element.min_length * self.min_count

    @property
    def max_length(self) -> int:
        return self.element.min_length * self.max_count

    @property
    def unit(self) -> str:
        return self.element.unit

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        size = self.element.min_length
        wrong = self.check_length(data, field)
        if wrong is not None:
            return wrong
        if len(data) % size:
            return DecodeError(field, f"{len(data)} bytes is not a whole number of {size}-byte elements")
        values: list[Value] = []
        for index in range(len(data) // size):
            value = self.element.decode(data[index * size : (index + 1) * size], f"{field}[{index}]")
            if isinstance(value, DecodeError):
                return value
            values.append(value)
        return tuple(values)

    def encode(self, value: Value, field: str) -> bytes:
        if not isinstance(value, tuple) or not self.min_count <= len(value) <= self.max_count:
            raise ValueError(f"{field}: expected {self.min_count}..{self.max_count} values, got {value!r}")
        return b"".join(self.element.encode(item, f"{field}[{i}]") for i, item in enumerate(value))

    def parse_text(self, text: str, field: str) -> Value:
        return tuple(self.element.parse_text(part, field) for part in text.split(","))

    def to_json(self, value: Value) -> object:
        return [self.element.to_json(item) for item in value] if isinstance(value, tuple) else value


@dataclass(frozen=True, slots=True)
class Record(ValueFormat):
    """A fixed block of named fields, e.g. an event record (start, end, registers before and after)."""

    fields: tuple[tuple[str, ValueFormat], ...]

    @property
    def pattern(self) -> str:
        return " + ".join(f"{name}:{fmt.pattern}" for name, fmt in self.fields)

    @property
    def min_length(self) -> int:
        return sum(fmt.min_length for _, fmt in self.fields)

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        wrong = self.check_length(data, field)
        if wrong is not None:
            return wrong
        values: dict[str, Value] = {}
        offset = 0
        for name, fmt in self.fields:
            value = fmt.decode(data[offset : offset + fmt.min_length], f"{field}.{name}")
            if isinstance(value, DecodeError):
                return value
            values[name] = value
            offset += fmt.min_length
        return values

    def encode(self, value: Value, field: str) -> bytes:
        if not isinstance(value, dict) or set(value) != {name for name, _ in self.fields}:
            raise ValueError(f"{field}: expected the fields {[name for name, _ in self.fields]}, got {value!r}")
        return b"".join(fmt.encode(value[name], f"{field}.{name}") for name, fmt in self.fields)

    def parse_text(self, text: str, field: str) -> Value:
        raise ValueError(f"{field}: a {len(self.fields)}-field record cannot be typed as one value")

    def to_json(self, value: Value) -> object:
        if not isinstance(value, dict):
            return value
        return {name: fmt.to_json(value[name]) for name, fmt in self.fields}


# --- The formats the registry uses ---------------------------------------------------------------------

ENERGY = Number("XXXXXX.XX", "kWh", "Wh", 10)
ENERGY_SIGNED = Number("XXXXXX.XX", "kWh", "Wh", 10, signed=True)
MONEY = Number("XXXXXX.XX", "yuan", "micros", 10_000)
PRICE = Number("XXXX.XXXX", "yuan/kWh", "micros/kWh", 100)
VOLTAGE = Number("XXX.X", "V", "0.1 V", 1)
CURRENT = Number("XXX.XXX", "A", "mA", 1, signed=True)
POWER = Number("XX.XXXX", "kW", "0.1 W", 1, signed=True)
POWER_FACTOR = Number("X.XXX", "", "0.001", 1, signed=True)
FREQUENCY = Number("XX.XX", "Hz", "0.01 Hz", 1)
COUNT_4 = Number("XXXX", "", "count", 1)
COUNT_6 = Number("XXXXXX", "", "count", 1)
COUNT_8 = Number("XXXXXXXX", "", "count", 1)
DATE_WEEK = Timestamp("YYMMDDWW")
CLOCK = Timestamp("hhmmss")
MINUTE_STAMP = Timestamp("YYMMDDhhmm")
SECOND_STAMP = Timestamp("YYMMDDhhmmss")
ADDRESS_DIGITS = Digits(6)
STATUS_3 = StatusWord3()
