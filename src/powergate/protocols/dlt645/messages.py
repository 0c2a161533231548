"""DL/T 645-2007 application messages: request and reply builders for every function, and a description of any
frame as plain data (what the field engineer's ``powergate frame decode`` prints).

Data layouts (before +33H; multi-byte fields least significant byte first)::

    11H read            DI0..DI3                          reply 91H: DI + value (B1H: more follows)
    12H read follow-up  DI0..DI3 SEQ                      reply 92H: DI + value + SEQ
    13H read address    (none; address AAAAAAAAAAAA)      reply 93H: A0..A5
    14H write           DI + PA P0P1P2 + C0..C3 + value   reply 94H: (none)
    15H write address   A0..A5 (address AAAAAAAAAAAA)     reply 95H: (none)
    08H broadcast time  ss mm hh DD MM YY (address 99..9) no reply
    16H freeze          mm hh DD MM (99 = every)          reply 96H: (none)
    17H change baud     Z (bit 1..6 = 600..19200 bd)      reply 97H: Z
    18H change password DI(04000C01+level) + PA0 P0..P2 (old) + PAn P0..P2 (new)   reply 98H: PAn P0..P2
    19H/1AH clear max demand / meter   PA P0P1P2 + C0..C3                          reply 99H/9AH
    1BH clear events    PA P0P1P2 + C0..C3 + DI (FFFFFFFF = all)                   reply 9BH
    1CH relay control   see ``control``                                            reply 9CH
    error reply         C | C0H, one ERR byte (see ``frame.ErrorFlags``)

Invariant: ``describe`` never raises and returns only JSON-friendly values.
"""

from __future__ import annotations

from datetime import datetime

from powergate.protocols.dlt645.control import (
    CREDENTIAL_BYTES,
    RELAY_ACTION_NAMES,
    VALID_UNTIL,
    Credentials,
    RelayAction,
    parse_relay_command,
)
from powergate.protocols.dlt645.datatypes import DecodeError, Number, Repeated, Value, bcd_digits
from powergate.protocols.dlt645.frame import (
    BROADCAST_ADDRESS,
    FUNCTION_NAMES,
    WILDCARD_ADDRESS,
    ErrorFlags,
    Frame,
    Function,
    address_to_bytes,
    describe_errors,
)
from powergate.protocols.dlt645.registry import DataItem, format_di, lookup

BAUD_BITS = {600: 0x02, 1200: 0x04, 2400: 0x08, 4800: 0x10, 9600: 0x20, 19200: 0x40}
PASSWORD_DI_BASE = 0x04000C01
"""DI 04000C01..04000C0A: the password of level 0..9."""
EVERY = None


def _di_bytes(di: int) -> bytes:
    assert 0 <= di <= 0xFFFFFFFF, di
    return di.to_bytes(4, "little")


def read_request(address: str, di: int) -> Frame:
    return Frame(address, Function.READ, _di_bytes(di))


def read_follow_up_request(address: str, di: int, sequence: int) -> Frame:
    assert 0 <= sequence <= 0xFF
    return Frame(address, Function.READ_FOLLOW_UP, _di_bytes(di) + bytes([sequence]))


def read_address_request() -> Frame:
    return Frame(WILDCARD_ADDRESS, Function.READ_ADDRESS)


def write_address_request(new_address: str) -> Frame:
    return Frame(WILDCARD_ADDRESS, Function.WRITE_ADDRESS, address_to_bytes(new_address))


def broadcast_time_request(at: datetime) -> Frame:
    """Set every meter's clock to ``at`` (meter-local, naive); meters do not answer."""
    return Frame(BROADCAST_ADDRESS, Function.BROADCAST_TIME, VALID_UNTIL.encode(at, "at"))


def freeze_request(
    address: str,
    *,
    minute: int | None = EVERY,
    hour: int | None = EVERY,
    day: int | None = EVERY,
    month: int | None = EVERY,
) -> Frame:
    """Freeze at mm hh DD MM; ``None`` (99 on the wire) means every minute / hour / day / month.

    All four ``None`` (99999999) asks for an instant freeze.
    """
    fields = (minute, hour, day, month)
    limits = (59, 23, 31, 12)
    assert all(value is None or 0 <= value <= limit for value, limit in zip(fields, limits, strict=True)), fields
    return Frame(address, Function.FREEZE, bytes(int(f"{99 if v is None else v:02d}", 16) for v in fields))


def change_baud_request(address: str, baud_bps: int) -> Frame:
    if baud_bps not in BAUD_BITS:
        raise ValueError(f"baud: {baud_bps} is not one of {sorted(BAUD_BITS)}")
    return Frame(address, Function.CHANGE_BAUD, bytes([BAUD_BITS[baud_bps]]))


def change_password_request(address: str, old: Credentials, new_level: int, new_password: str) -> Frame:
    """Set the password of ``new_level`` (0..9), authorised by ``old``."""
    assert 0 <= new_level <= 9, new_level
    new = Credentials(new_level, new_password, "00000000").encode()[:4]
    return Frame(address, Function.CHANGE_PASSWORD, _di_bytes(PASSWORD_DI_BASE + new_level) + old.encode()[:4] + new)


def clear_request(address: str, function: Function, credentials: Credentials, event_di: int = 0xFFFFFFFF) -> Frame:
    """19H (max demand), 1AH (meter) or 1BH (events; ``event_di`` FFFFFFFF clears them all)."""
    assert function in (Function.CLEAR_MAX_DEMAND, Function.CLEAR_METER, Function.CLEAR_EVENTS), function
    extra = _di_bytes(event_di) if function is Function.CLEAR_EVENTS else b""
    return Frame(address, function, credentials.encode() + extra)


def read_reply(address: str, di: int, payload: bytes, *, more: bool = False, sequence: int | None = None) -> Frame:
    """A meter's answer to 11H (or to 12H when ``sequence`` is given); ``more`` sets the follow-up bit."""
    function = Function.READ if sequence is None else Function.READ_FOLLOW_UP
    tail = b"" if sequence is None else bytes([sequence])
    return Frame(address, function, _di_bytes(di) + payload + tail, reply=True, follow_up=more)


def ack_reply(address: str, function: Function, data: bytes = b"") -> Frame:
    return Frame(address, function, data, reply=True)


def error_reply(address: str, function: Function, flags: ErrorFlags) -> Frame:
    return Frame(address, function, bytes([int(flags)]), reply=True, error=True)


def split_di(frame: Frame) -> tuple[int, bytes] | DecodeError:
    """The DI and what follows it, for functions whose data starts with a DI."""
    if len(frame.data) < 4:
        return DecodeError("di", f"needs 4 bytes, the data has {len(frame.data)}")
    return int.from_bytes(frame.data[:4], "little"), frame.data[4:]


# --- Description -------------------------------------------------------------------------------------------


def describe_value(item: DataItem, payload: bytes) -> dict[str, object]:
    """A data item's value as JSON-friendly fields: our integer and unit, and the meter's own reading."""
    value = item.format.decode(payload, item.name)
    if isinstance(value, DecodeError):
        return {"error": str(value), "data_hex": payload.hex().upper()}
    described: dict[str, object] = {"value": item.format.to_json(value)}
    if item.format.unit:
        described["unit"] = item.format.unit
    element = item.format.element if isinstance(item.format, Repeated) else item.format
    if isinstance(element, Number):
        described["meter_value"] = _meter_text(element, value)
        described["meter_unit"] = element.meter_unit
    return described


def _meter_text(fmt: Number, value: Value) -> object:
    if isinstance(value, tuple):
        return [fmt.to_meter_text(item) for item in value if isinstance(item, int)]
    return fmt.to_meter_text(value) if isinstance(value, int) else None


def _describe_di(di: int, payload: bytes | None) -> dict[str, object]:
    item = lookup(di)
    described: dict[str, object] = {"di": format_di(di)}
    if item is None:
        described["name"] = "unknown DI (not in the registry)"
    else:
        described.update(name=item.name, name_zh=item.name_zh, format=item.format.pattern)
    if payload is not None:
        described.update(describe_value(item, payload) if item is not None else {"data_hex": payload.hex().upper()})
    return described


def _credentials(data: bytes) -> dict[str, object]:
    credentials = Credentials.decode(data[:CREDENTIAL_BYTES])
    return {
        "password_level": credentials.password_level,
        "password": "******",
        "operator_code": credentials.operator_code,
    }


def _describe_read(frame: Frame) -> dict[str, object]:
    split = split_di(frame)
    if isinstance(split, DecodeError):
        return {"error": str(split)}
    di, rest = split
    sequence = None
    if frame.function is Function.READ_FOLLOW_UP and rest:
        sequence, rest = rest[-1], rest[:-1]
    described = _describe_di(di, rest if frame.reply else None)
    if not frame.reply and rest:
        described["extra_hex"] = rest.hex().upper()
    if sequence is not None:
        described["sequence"] = sequence
    return described


def _describe_write(frame: Frame) -> dict[str, object]:
    if frame.reply:
        return {"result": "acknowledged"}
    if len(frame.data) < 4 + CREDENTIAL_BYTES:
        return {"error": f"data: a write carries at least 12 bytes, got {len(frame.data)}"}
    di = int.from_bytes(frame.data[:4], "little")
    return _describe_di(di, frame.data[4 + CREDENTIAL_BYTES :]) | _credentials(frame.data[4:])


def _describe_relay(frame: Frame) -> dict[str, object]:
    if frame.reply:
        return {"result": "acknowledged"}
    command = parse_relay_command(frame)
    if isinstance(command, DecodeError):
        return {"error": str(command)}
    return {
        "action": RELAY_ACTION_NAMES[RelayAction(command.action)],
        "n1": f"{int(command.action):02X}",
        "valid_until": command.valid_until.isoformat(),
    } | _credentials(frame.data)


def _describe_address_bytes(data: bytes, field: str) -> dict[str, object]:
    if len(data) != 6:
        return {"error": f"{field}: expected 6 bytes, got {len(data)}"}
    digits = bcd_digits(data, field)
    return {field: digits if isinstance(digits, str) else data[::-1].hex().upper()}


def _describe_other(frame: Frame) -> dict[str, object]:
    data, function = frame.data, frame.function
    if function in (Function.READ_ADDRESS, Function.WRITE_ADDRESS) and data:
        return _describe_address_bytes(data, "address")
    if function is Function.BROADCAST_TIME:
        at = VALID_UNTIL.decode(data, "time")
        return {"time": at.isoformat()} if isinstance(at, datetime) else {"error": str(at)}
    if function is Function.FREEZE and not frame.reply:
        return {"freeze_at_mmhhDDMM": data[::-1].hex().upper()}
    if function is Function.CHANGE_BAUD and len(data) == 1:
        bauds = [baud for baud, bit in BAUD_BITS.items() if data[0] & bit]
        return {"baud_bps": bauds}
    if function is Function.CHANGE_PASSWORD and not frame.reply and len(data) == 12:
        return {"di": format_di(int.from_bytes(data[:4], "little")), "new_password_level": data[8]}
    if function in (Function.CLEAR_MAX_DEMAND, Function.CLEAR_METER, Function.CLEAR_EVENTS) and len(data) >= 8:
        described = _credentials(data)
        if function is Function.CLEAR_EVENTS and len(data) == 12:
            described["event_di"] = format_di(int.from_bytes(data[8:], "little"))
        return described
    return {"result": "acknowledged"} if frame.reply and not data else {"data_hex": data.hex().upper()}


def describe(frame: Frame) -> dict[str, object]:
    """Everything a field engineer wants to see in one frame, as JSON-friendly data."""
    described: dict[str, object] = {
        "protocol": "DL/T 645-2007",
        "address": frame.address,
        "control": f"{frame.control:02X}",
        "function": FUNCTION_NAMES[frame.function],
        "direction": "reply" if frame.reply else "request",
        "error": frame.error,
        "follow_up": frame.follow_up,
        "length": len(frame.data),
        "data_hex": frame.data.hex().upper(),
    }
    if frame.error:
        flags = frame.data[0] if frame.data else 0
        described["message"] = {"err": f"{flags:02X}", "errors": describe_errors(flags)}
    elif frame.function in (Function.READ, Function.READ_FOLLOW_UP):
        described["message"] = _describe_read(frame)
    elif frame.function is Function.WRITE:
        described["message"] = _describe_write(frame)
    elif frame.function is Function.RELAY_CONTROL:
        described["message"] = _describe_relay(frame)
    else:
        described["message"] = _describe_other(frame)
    return described
