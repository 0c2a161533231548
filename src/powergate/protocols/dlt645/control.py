"""Commands that change a meter: credentials, relay control (1CH) and the prepaid recharge write (14H).

Relay control data (16 bytes, before +33H)::

    PA P0 P1 P2 | C0 C1 C2 C3 | N1 | N2 | N3..N8
    password     operator code  action reserved valid-until ss mm hh DD MM YY (BCD, seconds first)

Write data (14H)::

    DI0..DI3 | PA P0 P1 P2 | C0 C1 C2 C3 | value bytes

Recharge layouts differ between vendors (the national remote recharge needs an ESAM and MACs, which plain
RS485 prepaid meters do not have), so the layout is a per-meter-model setting: ``RechargeLayout`` names the
DI, the order of the fields and the password level. ``DEFAULT_RECHARGE_LAYOUT`` and ``COUNT_FIRST_LAYOUT``
are the two we ship; both are documented in docs/protocols/dlt645.md.

Invariants: passwords are 6 hex digits and operator codes 8, sent least significant byte first; a purchase
count and an amount always travel together so a meter can refuse a replayed recharge; parsing a command frame
gives back exactly what was encoded, or a ``DecodeError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, IntEnum

from powergate.protocols.dlt645.datatypes import MONEY, DecodeError, Digits, Number, Timestamp, Value
from powergate.protocols.dlt645.frame import Frame, Function

_HEX = re.compile(r"^[0-9A-F]+$")
VALID_UNTIL = Timestamp("YYMMDDhhmmss")
CREDENTIAL_BYTES = 8
CUSTOMER_NUMBER = Digits(6)


class RelayAction(IntEnum):
    """N1 of a relay control command."""

    TRIP = 0x1A
    CLOSE_ALLOWED = 0x1B
    CLOSE_NOW = 0x1C
    ALARM = 0x2A
    ALARM_OFF = 0x2B
    PROTECT = 0x3A
    PROTECT_OFF = 0x3B


RELAY_ACTION_NAMES = {
    RelayAction.TRIP: "trip (跳闸)",
    RelayAction.CLOSE_ALLOWED: "close allowed (合闸允许)",
    RelayAction.CLOSE_NOW: "close now (直接合闸)",
    RelayAction.ALARM: "alarm (报警)",
    RelayAction.ALARM_OFF: "alarm release (报警解除)",
    RelayAction.PROTECT: "power-protect (保电)",
    RelayAction.PROTECT_OFF: "power-protect release (保电解除)",
}


def _hex_digits(text: str, count: int, field: str) -> str:
    cleaned = text.strip().upper()
    if len(cleaned) != count or not _HEX.match(cleaned):
        raise ValueError(f"{field}: {text!r} is not {count} hex digits")
    return cleaned


@dataclass(frozen=True, slots=True)
class Credentials:
    """Password level (PA), password (P0..P2, 6 hex digits) and operator code (C0..C3, 8 hex digits)."""

    password_level: int = 2
    password: str = "000000"
    operator_code: str = "00000000"

    def __post_init__(self) -> None:
        assert 0 <= self.password_level <= 0xFF, self.password_level
        assert len(self.password) == 6 and _HEX.match(self.password), self.password
        assert len(self.operator_code) == 8 and _HEX.match(self.operator_code), self.operator_code

    @classmethod
    def parse(cls, password_level: int, password: str, operator_code: str) -> Credentials:
        """From text typed by a person; ``ValueError`` naming the field."""
        if not 0 <= password_level <= 0xFF:
            raise ValueError(f"password_level: {password_level} is not 0..255")
        return cls(password_level, _hex_digits(password, 6, "password"), _hex_digits(operator_code, 8, "operator"))

    def encode(self) -> bytes:
        return (
            bytes([self.password_level]) + bytes.fromhex(self.password)[::-1] + bytes.fromhex(self.operator_code)[::-1]
        )

    @classmethod
    def decode(cls, data: bytes) -> Credentials:
        assert len(data) == CREDENTIAL_BYTES
        return cls(data[0], data[1:4][::-1].hex().upper(), data[4:8][::-1].hex().upper())


@dataclass(frozen=True, slots=True)
class RelayCommand:
    action: RelayAction
    valid_until: datetime
    credentials: Credentials


def relay_command(address: str, action: RelayAction, valid_until: datetime, credentials: Credentials) -> Frame:
    """A 1CH relay control request; the meter ignores it after ``valid_until`` (meter-local time)."""
    payload = credentials.encode() + bytes([int(action), 0]) + VALID_UNTIL.encode(valid_until, "valid_until")
    return Frame(address, Function.RELAY_CONTROL, payload)


def parse_relay_command(frame: Frame) -> RelayCommand | DecodeError:
    """The command a 1CH request carries (a meter simulator's view)."""
    if frame.function is not Function.RELAY_CONTROL or frame.reply:
        return DecodeError("control", "not a relay control request")
    if len(frame.data) != CREDENTIAL_BYTES + 8:
        return DecodeError("data", f"relay control carries 16 bytes, got {len(frame.data)}")
    code = frame.data[CREDENTIAL_BYTES]
    if code not in RelayAction._value2member_map_:
        return DecodeError("N1", f"{code:02X} is not a relay action")
    until = VALID_UNTIL.decode(frame.data[CREDENTIAL_BYTES + 2 :], "valid_until")
    if not isinstance(until, datetime):
        return until if isinstance(until, DecodeError) else DecodeError("valid_until", "is all zeros")
    return RelayCommand(RelayAction(code), until, Credentials.decode(frame.data[:CREDENTIAL_BYTES]))


def write_request(address: str, di: int, payload: bytes, credentials: Credentials) -> Frame:
    """A 14H write: DI (low byte first), credentials, then the value bytes."""
    assert 0 <= di <= 0xFFFFFFFF
    return Frame(address, Function.WRITE, di.to_bytes(4, "little") + credentials.encode() + payload)


# --- Recharge --------------------------------------------------------------------------------------------


class RechargeField(Enum):
    AMOUNT = "amount"
    PURCHASE_COUNT = "purchase_count"
    CUSTOMER_NUMBER = "customer_number"


@dataclass(frozen=True, slots=True)
class RechargeLayout:
    """How one meter model takes a recharge: which DI, which fields in which order, which password level."""

    name: str
    di: int
    fields: tuple[RechargeField, ...]
    password_level: int
    count_format: Number
    amount_format: Number = MONEY
    customer_number_format: Digits = CUSTOMER_NUMBER

    def __post_init__(self) -> None:
        assert RechargeField.AMOUNT in self.fields and RechargeField.PURCHASE_COUNT in self.fields, self.fields
        assert len(set(self.fields)) == len(self.fields), self.fields

    def format_of(self, field: RechargeField) -> Number | Digits:
        if field is RechargeField.AMOUNT:
            return self.amount_format
        if field is RechargeField.PURCHASE_COUNT:
            return self.count_format
        return self.customer_number_format

    @property
    def payload_length(self) -> int:
        return sum(self.format_of(field).min_length for field in self.fields)


DEFAULT_RECHARGE_LAYOUT = RechargeLayout(
    name="plain-070102FF",
    di=0x070102FF,
    fields=(RechargeField.AMOUNT, RechargeField.PURCHASE_COUNT, RechargeField.CUSTOMER_NUMBER),
    password_level=2,
    count_format=Number("XXXXXXXX", "", "count", 1),
)
"""The national remote-recharge field order (amount, purchase count, customer number) without the ESAM MACs,
written in plain text with 14H at password level 02."""

COUNT_FIRST_LAYOUT = RechargeLayout(
    name="count-first-07010201",
    di=0x07010201,
    fields=(RechargeField.PURCHASE_COUNT, RechargeField.AMOUNT),
    password_level=4,
    count_format=Number("XXXX", "", "count", 1),
)
"""An alternative seen on vendor meters: a 2-byte purchase count, then the amount, no customer number,
password level 04."""

RECHARGE_LAYOUTS = {layout.name: layout for layout in (DEFAULT_RECHARGE_LAYOUT, COUNT_FIRST_LAYOUT)}


@dataclass(frozen=True, slots=True)
class Recharge:
    amount_micros: int
    purchase_count: int
    customer_number: str = "000000000000"


def recharge_request(
    address: str,
    recharge: Recharge,
    credentials: Credentials,
    layout: RechargeLayout = DEFAULT_RECHARGE_LAYOUT,
) -> Frame:
    """A recharge write for ``layout``; the layout's password level replaces the credentials' own.

    ``ValueError`` naming the field if the amount, count or customer number does not fit the layout.
    """
    values: dict[RechargeField, Value] = {
        RechargeField.AMOUNT: recharge.amount_micros,
        RechargeField.PURCHASE_COUNT: recharge.purchase_count,
        RechargeField.CUSTOMER_NUMBER: recharge.customer_number,
    }
    if recharge.amount_micros <= 0:
        raise ValueError(f"amount: a recharge must be positive, got {recharge.amount_micros} micros")
    payload = b"".join(layout.format_of(field).encode(values[field], field.value) for field in layout.fields)
    leveled = Credentials(layout.password_level, credentials.password, credentials.operator_code)
    return write_request(address, layout.di, payload, leveled)


def parse_recharge(frame: Frame, layout: RechargeLayout = DEFAULT_RECHARGE_LAYOUT) -> Recharge | DecodeError:
    """The recharge a write request carries under ``layout`` (a meter simulator's view)."""
    header = 4 + CREDENTIAL_BYTES
    if frame.function is not Function.WRITE or frame.reply or len(frame.data) < header:
        return DecodeError("control", "not a write request")
    if int.from_bytes(frame.data[:4], "little") != layout.di:
        return DecodeError("di", f"{int.from_bytes(frame.data[:4], 'little'):08X} is not {layout.di:08X}")
    payload = frame.data[header:]
    if len(payload) != layout.payload_length:
        return DecodeError("data", f"{layout.name} carries {layout.payload_length} bytes, got {len(payload)}")
    values: dict[RechargeField, Value] = {}
    offset = 0
    for field in layout.fields:
        fmt = layout.format_of(field)
        value = fmt.decode(payload[offset : offset + fmt.min_length], field.value)
        if isinstance(value, DecodeError):
            return value
        values[field] = value
        offset += fmt.min_length
    amount, count = values[RechargeField.AMOUNT], values[RechargeField.PURCHASE_COUNT]
    customer = values.get(RechargeField.CUSTOMER_NUMBER, "000000000000")
    assert isinstance(amount, int) and isinstance(count, int) and isinstance(customer, str)
    return Recharge(amount, count, customer)
