"""DL/T 645-2007 link frames: encode, decode, and the control byte.

Frame layout (the standard's figure; ``FE`` wake-up bytes are optional, 0..4 of them)::

    FE..FE  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA(L bytes)  CS  16
            |   address, BCD,       |  |  |  each byte +33H   |
            |   A0 = lowest byte    |  |  |  on the wire      |
            +-- CS = sum of these bytes mod 256 --------------+

    C:  D7 reply (slave -> master)   D6 error reply   D5 follow-up frame   D4..D0 function

Invariants kept here:

- ``Frame.data`` is always the de-obfuscated application data (the +33H is removed on decode, added on
  encode); ``decode_frame(encode_frame(f)) == f`` for every valid frame.
- Decoding never raises: any byte string yields a ``Frame`` or a ``DecodeError`` saying which field is wrong.
- ``L`` is at most 200 (the standard's limit for reads; writes are at most 50), so a frame is at most
  ``MAX_FRAME_BYTES`` long without its preamble; the stream decoder relies on that bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from powergate.protocols.dlt645.datatypes import DecodeError

START = 0x68
END = 0x16
PREAMBLE_BYTE = 0xFE
MAX_PREAMBLE = 4
MAX_DATA_LENGTH = 200
HEADER_BYTES = 10
"""68, six address bytes, 68, C, L."""
MAX_FRAME_BYTES = HEADER_BYTES + MAX_DATA_LENGTH + 2
OBFUSCATION = 0x33

REPLY_BIT = 0x80
ERROR_BIT = 0x40
FOLLOW_UP_BIT = 0x20
FUNCTION_MASK = 0x1F

BROADCAST_ADDRESS = "999999999999"
WILDCARD_ADDRESS = "AAAAAAAAAAAA"


class Function(IntEnum):
    """The function code (control byte D4..D0)."""

    BROADCAST_TIME = 0x08
    READ = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    CLEAR_MAX_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B
    RELAY_CONTROL = 0x1C


FUNCTION_NAMES = {
    Function.BROADCAST_TIME: "broadcast time",
    Function.READ: "read data",
    Function.READ_FOLLOW_UP: "read follow-up data",
    Function.READ_ADDRESS: "read communication address",
    Function.WRITE: "write data",
    Function.WRITE_ADDRESS: "write communication address",
    Function.FREEZE: "freeze",
    Function.CHANGE_BAUD: "change baud rate",
    Function.CHANGE_PASSWORD: "change password",
    Function.CLEAR_MAX_DEMAND: "clear maximum demand",
    Function.CLEAR_METER: "clear meter",
    Function.CLEAR_EVENTS: "clear events",
    Function.RELAY_CONTROL: "relay control",
}


class ErrorFlags(IntFlag):
    """The ERR byte of an error reply: which errors the meter reports (bit 7 is reserved)."""

    OTHER = 0x01
    NO_DATA_REQUESTED = 0x02
    UNAUTHORISED = 0x04
    BAUD_NOT_CHANGEABLE = 0x08
    TOO_MANY_YEAR_ZONES = 0x10
    TOO_MANY_DAY_PERIODS = 0x20
    TOO_MANY_RATES = 0x40


ERROR_DESCRIPTIONS = {
    ErrorFlags.OTHER: "other error (其他错误)",
    ErrorFlags.NO_DATA_REQUESTED: "no data requested / unknown DI (无请求数据)",
    ErrorFlags.UNAUTHORISED: "password error or unauthorised (密码错/未授权)",
    ErrorFlags.BAUD_NOT_CHANGEABLE: "baud rate cannot be changed (通信速率不能更改)",
    ErrorFlags.TOO_MANY_YEAR_ZONES: "annual time zones exceeded (年时区数超)",
    ErrorFlags.TOO_MANY_DAY_PERIODS: "daily periods exceeded (日时段数超)",
    ErrorFlags.TOO_MANY_RATES: "rate count exceeded (费率数超)",
}


def describe_errors(flags: int) -> list[str]:
    """Every error bit set in an ERR byte, described; an unknown bit 7 is reported as reserved."""
    described = [text for flag, text in ERROR_DESCRIPTIONS.items() if flags & flag]
    if flags & 0x80:
        described.append("reserved bit 7 set")
    return described


_ADDRESS = re.compile(r"^(?:[0-9]{2}|AA)+$")


def parse_address(text: str) -> str:
    """A meter address typed by a person: 12 digits (most significant first), or ``AA`` wildcard bytes.

    Shorter addresses are left-padded with zeros (``1`` -> ``000000000001``). ``ValueError`` names the field.
    """
    cleaned = text.strip().upper().replace(" ", "")
    if cleaned.isdigit() and len(cleaned) < 12:
        cleaned = cleaned.zfill(12)
    if len(cleaned) != 12 or not _ADDRESS.match(cleaned):
        raise ValueError(f"address: {text!r} is not 12 BCD digits (AA allowed per byte as a wildcard)")
    return cleaned


def address_to_bytes(address: str) -> bytes:
    return bytes.fromhex(address)[::-1]


@dataclass(frozen=True, slots=True)
class Frame:
    """One DL/T 645 frame: address (12 characters, most significant first), function, flags and data.

    ``data`` is the application data *without* the +33H obfuscation.
    """

    address: str
    function: Function
    data: bytes = b""
    reply: bool = False
    error: bool = False
    follow_up: bool = False

    def __post_init__(self) -> None:
        assert len(self.address) == 12 and _ADDRESS.match(self.address), self.address
        assert len(self.data) <= MAX_DATA_LENGTH, len(self.data)
        assert self.reply or not self.error, "only a reply can be an error reply"

    @property
    def control(self) -> int:
        flags = (REPLY_BIT if self.reply else 0) | (ERROR_BIT if self.error else 0)
        return flags | (FOLLOW_UP_BIT if self.follow_up else 0) | int(self.function)

    @property
    def error_flags(self) -> ErrorFlags | None:
        """The ERR byte of an error reply (``None`` for any other frame)."""
        return ErrorFlags(self.data[0] & 0x7F) if self.error and self.data else None


def encode_frame(frame: Frame, preamble: int = MAX_PREAMBLE) -> bytes:
    """The bytes on the wire for ``frame``, with ``preamble`` FE wake-up bytes (0..4)."""
    assert 0 <= preamble <= MAX_PREAMBLE, preamble
    wire_data = bytes((byte + OBFUSCATION) & 0xFF for byte in frame.data)
    body = bytes([START]) + address_to_bytes(frame.address) + bytes([START, frame.control, len(wire_data)])
    body += wire_data
    return bytes([PREAMBLE_BYTE]) * preamble + body + bytes([sum(body) & 0xFF, END])


def _check_address(raw: bytes) -> str | DecodeError:
    for index, byte in enumerate(raw):
        if byte != 0xAA and (byte >> 4 > 9 or byte & 0x0F > 9):
            return DecodeError("address", f"byte A{index} = {byte:02X} is neither BCD nor the AA wildcard")
    return raw[::-1].hex().upper()


def _check_control(control: int) -> Function | DecodeError:
    code = control & FUNCTION_MASK
    if code not in Function._value2member_map_:
        return DecodeError("control", f"{control:02X}: function {code:02X} is not a DL/T 645-2007 function")
    if control & ERROR_BIT and not control & REPLY_BIT:
        return DecodeError("control", f"{control:02X}: the error bit is set on a request")
    return Function(code)


def frame_length_at(buffer: bytes, start: int) -> int | DecodeError | None:
    """The length of the frame whose first 68 is at ``start``, checking the header as far as it is there.

    ``None`` means the header is incomplete; a ``DecodeError`` means these bytes cannot start a frame.
    """
    available = len(buffer) - start
    if available < 1:
        return None
    if buffer[start] != START:
        return DecodeError("start", f"expected 68, got {buffer[start]:02X}")
    if available >= 7:
        address = _check_address(buffer[start + 1 : start + 7])
        if isinstance(address, DecodeError):
            return address
    if available >= 8 and buffer[start + 7] != START:
        return DecodeError("start", f"expected the second 68 after the address, got {buffer[start + 7]:02X}")
    if available >= 9:
        function = _check_control(buffer[start + 8])
        if isinstance(function, DecodeError):
            return function
    if available < HEADER_BYTES:
        return None
    length = buffer[start + 9]
    if length > MAX_DATA_LENGTH:
        return DecodeError("length", f"L = {length} exceeds the standard's {MAX_DATA_LENGTH} bytes")
    return HEADER_BYTES + length + 2


def decode_at(buffer: bytes, start: int) -> tuple[int, Frame | DecodeError | None]:
    """Decode the frame whose first 68 is at ``start``: ``(bytes used, frame)``.

    ``(0, None)``: more bytes are needed; ``(0, DecodeError)``: no frame starts here (skip a byte).
    """
    total = frame_length_at(buffer, start)
    if total is None or isinstance(total, DecodeError):
        return 0, total
    if len(buffer) - start < total:
        return 0, None
    frame = buffer[start : start + total]
    checksum = sum(frame[:-2]) & 0xFF
    if frame[-2] != checksum:
        return 0, DecodeError("checksum", f"CS is {frame[-2]:02X}, the bytes sum to {checksum:02X}")
    if frame[-1] != END:
        return 0, DecodeError("end", f"expected 16, got {frame[-1]:02X}")
    control = frame[8]
    data = bytes((byte - OBFUSCATION) & 0xFF for byte in frame[HEADER_BYTES:-2])
    if control & ERROR_BIT and len(data) != 1:
        return 0, DecodeError("data", f"an error reply carries one ERR byte, this one carries {len(data)}")
    address = _check_address(frame[1:7])
    assert isinstance(address, str)
    decoded = Frame(
        address=address,
        function=Function(control & FUNCTION_MASK),
        data=data,
        reply=bool(control & REPLY_BIT),
        error=bool(control & ERROR_BIT),
        follow_up=bool(control & FOLLOW_UP_BIT),
    )
    return total, decoded


def count_preamble(buffer: bytes) -> int:
    count = 0
    while count < len(buffer) and buffer[count] == PREAMBLE_BYTE:
        count += 1
    return count


def decode_frame(data: bytes) -> Frame | DecodeError:
    """Decode exactly one frame (0..4 FE bytes, the frame, nothing after it); never raises."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return DecodeError("frame", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    preamble = count_preamble(data)
    if preamble > MAX_PREAMBLE:
        return DecodeError("preamble", f"{preamble} FE bytes; the standard allows at most {MAX_PREAMBLE}")
    used, frame = decode_at(data, preamble)
    if frame is None:
        return DecodeError("frame", f"{len(data)} bytes end before the frame does")
    if isinstance(frame, DecodeError):
        return frame
    trailing = len(data) - preamble - used
    if trailing:
        return DecodeError("frame", f"{trailing} bytes follow the end byte 16")
    return frame
