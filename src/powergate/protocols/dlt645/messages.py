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

from collections.abc import Mapping
from datetime import date, datetime

from powergate.domain.tou_table import MeterTou, Period, SpecialDay, Zone, parts_problems, structure_problems
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
from powergate.protocols.dlt645.registry import (
    DI_SPECIAL_DAY,
    DI_TOU_ZONE_TABLE,
    MAX_TOU_ENTRIES,
    DataItem,
    format_di,
    lookup,
)

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


# --- TOU tables (time zones, day tables, rest days, special days) ----------------------------------------------

DI_ZONE_COUNT = 0x04000201
DI_DAY_TABLE_COUNT = 0x04000202
DI_PERIOD_COUNT = 0x04000203
DI_RATE_COUNT = 0x04000204
DI_SPECIAL_DAY_COUNT = 0x04000205
DI_REST_DAYS = 0x04000801
DI_REST_TABLE = 0x04000802
TOU_RATES = 4


def tou_writes(tou: MeterTou, table_set: int = 1) -> list[tuple[int, Value]]:
    """The 14H writes (DI, value) that load ``tou`` into a meter's first or second table set, in order: the
    counts, the time-zone table, the day tables, the rest days, the special days.

    Every day table is sent with the same number of periods (04000203, the largest table's), a shorter one
    padded with its last period repeated, as meters expect; ``tou_from_values`` drops the repeats again.
    """
    assert table_set in DI_TOU_ZONE_TABLE, table_set
    assert not structure_problems(tou), structure_problems(tou)
    periods = max(len(table) for table in tou.day_tables)
    zone_di = DI_TOU_ZONE_TABLE[table_set]
    writes: list[tuple[int, Value]] = [
        (DI_ZONE_COUNT, len(tou.zones)),
        (DI_DAY_TABLE_COUNT, len(tou.day_tables)),
        (DI_PERIOD_COUNT, periods),
        (DI_RATE_COUNT, TOU_RATES),
        (DI_SPECIAL_DAY_COUNT, len(tou.special_days)),
        (zone_di, tuple({"month": z.month, "day": z.day, "table": z.table} for z in tou.zones)),
    ]
    for number, table in enumerate(tou.day_tables, start=1):
        padded = list(table) + [table[-1]] * (periods - len(table))
        entries: Value = tuple(
            {"hour": p.start_minute // 60, "minute": p.start_minute % 60, "rate": p.rate} for p in padded
        )
        writes.append((zone_di + number, entries))
    writes += [(DI_REST_DAYS, tou.rest_days), (DI_REST_TABLE, tou.rest_table)]
    for number, special in enumerate(tou.special_days, start=1):
        day = special.day
        if not 2000 <= day.year <= 2099:
            raise ValueError(f"special_days: {day.isoformat()} is outside 2000..2099 (YYMMDDNN)")
        value: Value = {"year": day.year - 2000, "month": day.month, "day": day.day, "table": special.table}
        writes.append((DI_SPECIAL_DAY + number, value))
    return writes


def tou_from_values(values: Mapping[int, Value], table_set: int = 1) -> MeterTou | DecodeError:
    """The tables a meter holds, from its values by DI (as ``tou_writes`` wrote them or a read returned them)."""
    zone_di = DI_TOU_ZONE_TABLE[table_set]
    counts = [values.get(di) for di in (DI_ZONE_COUNT, DI_DAY_TABLE_COUNT, DI_PERIOD_COUNT, DI_SPECIAL_DAY_COUNT)]
    if not all(isinstance(count, int) for count in counts):
        return DecodeError("tou", "the time-zone, day-table, period and special-day counts are all needed")
    zone_count, table_count, period_count, special_count = (int(c) for c in counts if isinstance(c, int))
    if not (1 <= zone_count <= MAX_TOU_ENTRIES and 1 <= table_count <= 8 and 1 <= period_count <= MAX_TOU_ENTRIES):
        return DecodeError("tou", f"counts {zone_count} zones, {table_count} tables, {period_count} periods: too many")
    try:
        zones = tuple(
            Zone(_int(e, "month"), _int(e, "day"), _int(e, "table")) for e in _entries(values, zone_di, zone_count)
        )
        tables = tuple(_day_table(values, zone_di + n, period_count) for n in range(1, table_count + 1))
        specials = tuple(_special_day(values.get(DI_SPECIAL_DAY + n)) for n in range(1, special_count + 1))
        rest_days, rest_table = values.get(DI_REST_DAYS), values.get(DI_REST_TABLE)
        if not isinstance(rest_days, int) or not isinstance(rest_table, int):
            raise ValueError("the rest-day pattern and rest-day table are needed")
    except (ValueError, KeyError) as error:
        return DecodeError("tou", str(error))
    found = parts_problems(zones, tables, rest_days, rest_table, specials)
    if found:
        return DecodeError("tou", "; ".join(str(p) for p in found))
    return MeterTou(zones, tables, rest_days, rest_table, specials)


def _entries(values: Mapping[int, Value], di: int, count: int) -> tuple[Mapping[str, Value], ...]:
    block = values.get(di)
    if not isinstance(block, tuple) or len(block) < count:
        raise ValueError(f"{format_di(di)}: {count} entries are needed")
    entries = block[:count]
    if not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(f"{format_di(di)}: not a table")
    return tuple(entry for entry in entries if isinstance(entry, dict))


def _int(entry: Mapping[str, Value], name: str) -> int:
    value = entry[name]
    if not isinstance(value, int):
        raise ValueError(f"{name}: not a number")
    return value


def _day_table(values: Mapping[int, Value], di: int, count: int) -> tuple[Period, ...]:
    periods: list[Period] = []
    for entry in _entries(values, di, count):
        period = Period(_int(entry, "hour") * 60 + _int(entry, "minute"), _int(entry, "rate"))
        if not periods or period != periods[-1]:  # a repeat of the previous period is padding
            periods.append(period)
    return tuple(periods)


def _special_day(value: Value) -> SpecialDay:
    if not isinstance(value, dict):
        raise ValueError("a special day within the count is missing")
    day = date(2000 + _int(value, "year"), _int(value, "month"), _int(value, "day"))
    return SpecialDay(day, _int(value, "table"))


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
