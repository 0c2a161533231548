"""A virtual meter's DL/T 645-2007 face: answer a request as a real single-phase prepaid meter would.

``answer(meter, request, now_s)`` takes a decoded request ``Frame`` (``protocols.dlt645``) and returns the
meter's reply frame, or ``None`` when the meter stays silent; ``Bus`` routes a request to the meters on one
RS485 line by address (including the AA wildcard and the 99..99 broadcast), as the line itself would.

What the meter answers:
- 11H read by DI: every DI of ``protocols.dlt645.registry`` the meter has a value for, including the FF
  blocks (total + rates 1..4, phase blocks) and the daily freezes (050600nn freeze time, 050601nn forward
  active block, "last nn" = 1..62); an unknown DI, or a freeze the meter has not made yet, answers D1H with
  "no requested data" (02H);
- 13H read address (to AAAAAAAAAAAA), 08H broadcast time (no reply), 14H write with the level + 3-byte
  password and operator code checked (D4H + 04H on a wrong password), 1CH relay control (trip, close allowed,
  close now, alarm, power-protect) with its valid-until time, and a recharge in the meter model's
  ``RechargeLayout`` (a repeated purchase count is acknowledged like the first time and credits nothing, so a
  retried recharge is harmless; the head-end confirms by reading 03330201);
- 14H writes of the TOU tables (counts 040002xx, rest days 0400080x, time-zone and day tables 0401xxxx /
  0402xxxx, special days 0403xxxx); once the first set is whole, the meter's bands follow it (a count beyond
  the model's limits answers the standard's error bit: 10H zones, 20H periods, 40H rates);
- other functions answer their error reply with "other error" (01H); a meter whose supply has failed does not
  answer at all.

Invariants: a reply is produced only for a request addressed to this meter (or its wildcard form for 13H);
money leaves in 0.01 yuan rounded down (remaining) and up (overdraft), so the two never disagree with the
balance; energy in whole 0.01 kWh; the meter's own clock and local time are used for every timestamp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta

from powergate.protocols.dlt645 import (
    BROADCAST_ADDRESS,
    DEFAULT_RECHARGE_LAYOUT,
    Credentials,
    DecodeError,
    ErrorFlags,
    Frame,
    Function,
    RechargeLayout,
    RunningStatus3,
    Value,
    ack_reply,
    error_reply,
    parse_recharge,
    parse_relay_command,
    read_reply,
)
from powergate.protocols.dlt645.control import VALID_UNTIL
from powergate.protocols.dlt645.messages import tou_from_values
from powergate.protocols.dlt645.registry import MAX_TOU_ENTRIES, REGISTRY, DataItem
from powergate.sim.meter import (
    Band,
    EventKind,
    MeterError,
    MeterErrorCode,
    RechargeOutcome,
    RelayAction,
    VirtualMeter,
)

FEN_MICROS = 10_000
MAX_METERS_PER_BUS = 1024
_RELAY_ACTIONS = {action.value: action for action in RelayAction}


def _local_naive(meter: VirtualMeter, meter_time_s: int) -> datetime:
    """The meter's local wall-clock time for its own clock reading (DL/T 645 timestamps carry no zone)."""
    offset_s = meter.settings.utc_offset_minutes * 60
    return datetime.fromtimestamp(meter_time_s + offset_s, tz=UTC).replace(tzinfo=None)


def _stamp(meter: VirtualMeter, meter_time_s: int) -> datetime | None:
    if meter_time_s == 0:
        return None
    offset_s = meter.settings.utc_offset_minutes * 60
    return datetime.fromtimestamp(meter_time_s + offset_s, tz=UTC).replace(tzinfo=None)


def _fen_floor(micros: int) -> int:
    return micros // FEN_MICROS * FEN_MICROS


def _event_record(meter: VirtualMeter, kind: EventKind) -> Value:
    start, end = meter.last_event(kind) or (0, 0)
    record: dict[str, Value] = {"start": _stamp(meter, start), "end": _stamp(meter, end)}
    # the meter keeps no register snapshot with its event records: the energies read as zero
    for name in (
        "forward_active",
        "reverse_active",
        "q1_reactive",
        "q2_reactive",
        "q3_reactive",
        "q4_reactive",
    ):
        record[f"{name}_before"] = 0
        record[f"{name}_after"] = 0
    return record


def _energy_value(meter: VirtualMeter, di: int) -> Value | None:
    kind, rate = di >> 16 & 0xFF, di >> 8 & 0xFF
    if kind not in (0x00, 0x01, 0x02) or di & 0xFF:
        return None
    # reverse active energy (kind 02) stays zero: the simulated loads never export
    forward = [meter.total_ticks() * 10] + [meter.band_ticks(band) * 10 for band in Band]
    registers = [0] * 5 if kind == 0x02 else forward
    if rate == 0xFF:
        return tuple(registers)
    return registers[rate] if rate <= 4 else None


def _instant_value(meter: VirtualMeter, di: int) -> Value | None:
    quantity, phase = di >> 16 & 0xFF, di >> 8 & 0xFF
    values = {
        0x01: meter.voltage_dv(),
        0x02: meter.current_ma(),
        0x03: meter.signed_power_w() * 10,
        0x06: meter.power_factor_milli() if meter.signed_power_w() >= 0 else -meter.power_factor_milli(),
    }
    if quantity not in values:
        return None
    value = values[quantity]
    # a single-phase meter: phase A carries everything; totals exist for power and power factor
    has_total = quantity in (0x03, 0x06)
    per_phase = ([value] if has_total else []) + [value, 0, 0]
    if phase == 0xFF:
        return tuple(per_phase)
    index = phase if has_total else phase - 1
    return per_phase[index] if 0 <= index < len(per_phase) else None


def _purchase_value(meter: VirtualMeter, di: int) -> Value | None:
    last = meter.last_purchase
    at_s, amount, before = last if last is not None else (0, 0, 0)
    values: dict[int, Value] = {
        0x03330101: _stamp(meter, at_s),
        0x03330201: meter.purchase_count,
        0x03330301: _fen_floor(amount),
        0x03330401: _fen_floor(before),
        0x03330501: _fen_floor(before + amount),
        0x03330601: _fen_floor(meter.purchased_micros),
    }
    return values.get(di)


def _frozen_value(meter: VirtualMeter, di: int) -> Value | None:
    """050600nn: the time of the nn-th last daily freeze; 050601nn: its forward active block (Wh)."""
    kind, last = di >> 8 & 0xFF, di & 0xFF
    if di >> 16 != 0x0506 or kind not in (0x00, 0x01) or last == 0:
        return None
    freeze = meter.frozen_day(last)
    if freeze is None:
        return None
    if kind == 0x00:
        return _local_naive(meter, freeze.meter_time_s)
    return (freeze.total_ticks * 10, *(ticks * 10 for ticks in freeze.band_ticks))


def value_of(meter: VirtualMeter, di: int, now_s: int) -> Value | None:
    """The meter's value for ``di`` in the registry's units, or ``None`` when this meter has none."""
    family = di >> 24
    if family == 0x05:
        return _frozen_value(meter, di)
    if family == 0x00 and di >> 16 & 0xFF != 0x90:
        return _energy_value(meter, di)
    if family == 0x02 and di >> 16 & 0xFF != 0x80:
        return _instant_value(meter, di)
    balance = _fen_floor(meter.balance_micros)
    settings = meter.settings
    local = _local_naive(meter, meter.meter_time_s(now_s))
    band = meter.band_at_local_minute((meter.meter_time_s(now_s) + settings.utc_offset_minutes * 60) // 60)
    fixed: dict[int, Value] = {
        0x00900100: 0,
        0x00900101: 0,
        0x00900200: max(balance, 0),
        0x00900201: max(-balance, 0),
        0x02800002: meter.frequency_chz(),
        0x02800020: settings.prices_micros[band],
        0x04001001: _fen_floor(settings.alarm1_micros),
        0x04001002: _fen_floor(settings.alarm2_micros),
        0x04001003: _fen_floor(settings.overdraft_limit_micros),
        0x04001004: _fen_floor(settings.hoarding_limit_micros),
        0x04001005: _fen_floor(settings.close_allowed_micros),
        0x04000101: local.date(),
        0x04000102: local.time().replace(microsecond=0),
        0x04000401: meter.address,
        0x0400040E: meter.address,
        0x04000503: RunningStatus3(meter.status_word3()),
        0x03300D00: meter.event_count(EventKind.COVER_OPEN),
        0x03300D01: _event_record(meter, EventKind.COVER_OPEN),
        0x03300E00: meter.event_count(EventKind.TERMINAL_COVER_OPEN),
        0x03300E01: _event_record(meter, EventKind.TERMINAL_COVER_OPEN),
    }
    if di in fixed:
        return fixed[di]
    if _is_tou(di):
        return dict(settings.tou_writes).get(di)  # type: ignore[return-value]
    if di >> 16 == 0x0405 and di >> 8 & 0xFF in (1, 2) and 1 <= di & 0xFF <= 4:
        return settings.prices_micros[(di & 0xFF) - 1]
    return _purchase_value(meter, di)


def read(meter: VirtualMeter, request: Frame, now_s: int) -> Frame:
    if len(request.data) < 4:
        return error_reply(meter.address, Function.READ, ErrorFlags.OTHER)
    di = int.from_bytes(request.data[:4], "little")
    item = REGISTRY.get(di)
    value = value_of(meter, di, now_s) if item is not None else None
    if item is None or (value is None and di not in _NULLABLE):
        return error_reply(meter.address, Function.READ, ErrorFlags.NO_DATA_REQUESTED)
    try:
        payload = item.format.encode(value, item.name)
    except ValueError:
        # the value does not fit the format (e.g. an overdraft beyond 999999.99): a meter reports an error
        return error_reply(meter.address, Function.READ, ErrorFlags.OTHER)
    return read_reply(meter.address, di, payload)


_NULLABLE = frozenset({0x03330101})
"""DIs whose value may legitimately be "never" (an all-zero timestamp)."""


def _credentials_ok(meter: VirtualMeter, credentials: Credentials) -> bool:
    return meter.check_password(credentials.password_level, int(credentials.password, 16)) and (
        meter.check_operator(int(credentials.operator_code, 16))
    )


_WRITABLE_SETTINGS = {
    0x04001001: "alarm1_micros",
    0x04001002: "alarm2_micros",
    0x04001003: "overdraft_limit_micros",
    0x04001004: "hoarding_limit_micros",
    0x04001005: "close_allowed_micros",
}


def write(meter: VirtualMeter, request: Frame, now_s: int, layout: RechargeLayout) -> Frame:
    """14H: DI, PA P0 P1 P2 (level + password), C0..C3 (operator), value; or a recharge in ``layout``."""
    if len(request.data) < 12:
        return error_reply(meter.address, Function.WRITE, ErrorFlags.OTHER)
    if not _credentials_ok(meter, Credentials.decode(request.data[4:12])):
        return error_reply(meter.address, Function.WRITE, ErrorFlags.UNAUTHORISED)
    di = int.from_bytes(request.data[:4], "little")
    if di == layout.di:
        return _recharge(meter, request, now_s, layout)
    item = REGISTRY.get(di)
    if item is None or not item.writable:
        return error_reply(meter.address, Function.WRITE, ErrorFlags.NO_DATA_REQUESTED)
    value = item.format.decode(request.data[12:], item.name)
    if _is_tou(di):
        return _write_tou(meter, di, value, now_s)
    error = _apply_write(meter, item, value, now_s)
    if error is not None:
        return error_reply(meter.address, Function.WRITE, ErrorFlags.OTHER)
    return ack_reply(meter.address, Function.WRITE)


_TOU_COUNT_LIMITS = {
    0x04000201: (MAX_TOU_ENTRIES, ErrorFlags.TOO_MANY_YEAR_ZONES),
    0x04000202: (8, ErrorFlags.OTHER),
    0x04000203: (MAX_TOU_ENTRIES, ErrorFlags.TOO_MANY_DAY_PERIODS),
    0x04000204: (4, ErrorFlags.TOO_MANY_RATES),
    0x04000205: (254, ErrorFlags.OTHER),
}
"""What this meter model holds; a count beyond it is refused with the standard's own error bit."""


def _is_tou(di: int) -> bool:
    return di >> 8 in (0x040002, 0x040008) or di >> 16 in (0x0401, 0x0402, 0x0403)


def _write_tou(meter: VirtualMeter, di: int, value: Value | DecodeError, now_s: int) -> Frame:
    """Store one TOU value; once the written values make a whole first table set, the meter switches bands by
    it from this instant (the second set is stored but never switched to: this model has no switch time)."""
    if isinstance(value, DecodeError):
        return error_reply(meter.address, Function.WRITE, ErrorFlags.OTHER)
    limit = _TOU_COUNT_LIMITS.get(di)
    if limit is not None and isinstance(value, int) and not 0 <= value <= limit[0]:
        return error_reply(meter.address, Function.WRITE, limit[1])
    written = dict(meter.settings.tou_writes)
    written[di] = value
    year = tou_from_values(written)  # type: ignore[arg-type]
    changes: dict[str, object] = {"tou_writes": tuple(sorted(written.items()))}
    if not isinstance(year, DecodeError):
        changes["tou_year"] = year
    error = meter.update_settings(now_s, **changes)
    if error is not None:
        return error_reply(meter.address, Function.WRITE, ErrorFlags.OTHER)
    return ack_reply(meter.address, Function.WRITE)


def _recharge(meter: VirtualMeter, request: Frame, now_s: int, layout: RechargeLayout) -> Frame:
    if request.data[4] != layout.password_level:
        return error_reply(meter.address, Function.WRITE, ErrorFlags.UNAUTHORISED)
    recharge = parse_recharge(request, layout)
    if isinstance(recharge, DecodeError):
        return error_reply(meter.address, Function.WRITE, ErrorFlags.OTHER)
    result = meter.recharge(recharge.purchase_count, recharge.amount_micros, now_s)
    if result.outcome in (RechargeOutcome.APPLIED, RechargeOutcome.ALREADY_APPLIED):
        return ack_reply(meter.address, Function.WRITE)
    return error_reply(meter.address, Function.WRITE, ErrorFlags.OTHER)


def _apply_write(meter: VirtualMeter, item: DataItem, value: object, now_s: int) -> MeterError | None:
    bad = MeterError(MeterErrorCode.OUT_OF_RANGE, f"{item.name}: {value!r} cannot be written")
    di = item.di
    if di in _WRITABLE_SETTINGS and isinstance(value, int):
        return meter.update_settings(now_s, **{_WRITABLE_SETTINGS[di]: value})
    if di >> 16 == 0x0405 and isinstance(value, int):
        prices = list(meter.settings.prices_micros)
        prices[(di & 0xFF) - 1] = value
        return meter.update_settings(now_s, prices_micros=tuple(prices))
    local = _local_naive(meter, meter.meter_time_s(now_s))
    if di == 0x04000101 and isinstance(value, date):
        _set_local_clock(meter, datetime.combine(value, local.time()), now_s)
        return None
    if di == 0x04000102 and isinstance(value, time):
        _set_local_clock(meter, datetime.combine(local.date(), value), now_s)
        return None
    return bad


def _utc_s(meter: VirtualMeter, local: datetime) -> int:
    utc = local - timedelta(minutes=meter.settings.utc_offset_minutes)
    return int(utc.replace(tzinfo=UTC).timestamp())


def _set_local_clock(meter: VirtualMeter, local: datetime, now_s: int) -> None:
    meter.set_clock(_utc_s(meter, local), now_s)


def relay(meter: VirtualMeter, request: Frame, now_s: int) -> Frame:
    """1CH: credentials, N1 (action), N2, valid-until; refused after valid-until or during power-protect."""
    command = parse_relay_command(request)
    if isinstance(command, DecodeError):
        return error_reply(meter.address, Function.RELAY_CONTROL, ErrorFlags.OTHER)
    if not _credentials_ok(meter, command.credentials):
        return error_reply(meter.address, Function.RELAY_CONTROL, ErrorFlags.UNAUTHORISED)
    action = _RELAY_ACTIONS[int(command.action)]
    error = meter.relay_command(action, now_s, _utc_s(meter, command.valid_until))
    if error is not None:
        return error_reply(meter.address, Function.RELAY_CONTROL, ErrorFlags.OTHER)
    return ack_reply(meter.address, Function.RELAY_CONTROL)


def broadcast_time(meter: VirtualMeter, request: Frame, now_s: int) -> None:
    """08H: set the clock from ``ss mm hh DD MM YY``; broadcasts are never answered."""
    local = VALID_UNTIL.decode(request.data, "at")
    if isinstance(local, datetime):
        _set_local_clock(meter, local, now_s)


def answer(
    meter: VirtualMeter, request: Frame, now_s: int, layout: RechargeLayout = DEFAULT_RECHARGE_LAYOUT
) -> Frame | None:
    """The reply of ``meter`` to one request addressed to it; ``None`` when it stays silent."""
    if request.reply or meter.event_in_progress(EventKind.POWER_FAIL):
        return None
    meter.advance(now_s)
    function = request.function
    if function is Function.BROADCAST_TIME:
        broadcast_time(meter, request, now_s)
        return None
    if function is Function.READ_ADDRESS:
        return ack_reply(meter.address, Function.READ_ADDRESS, bytes.fromhex(meter.address)[::-1])
    if function is Function.READ:
        return read(meter, request, now_s)
    if function is Function.WRITE:
        return write(meter, request, now_s, layout)
    if function is Function.RELAY_CONTROL:
        return relay(meter, request, now_s)
    if function is Function.READ_FOLLOW_UP:
        # replies here always fit one frame, so there is never a follow-up to give
        return error_reply(meter.address, function, ErrorFlags.NO_DATA_REQUESTED)
    return error_reply(meter.address, function, ErrorFlags.OTHER)


def _matches(pattern: str, address: str) -> bool:
    """Whether ``address`` answers ``pattern``: byte by byte, ``AA`` matches any byte (abbreviated address)."""
    return all(pattern[i : i + 2] in ("AA", address[i : i + 2]) for i in range(0, 12, 2))


class Bus:
    """The meters on one RS485 line: a request reaches every meter, the addressed one answers."""

    def __init__(
        self,
        meters: Sequence[VirtualMeter],
        clock: Callable[[], int],
        layout: RechargeLayout = DEFAULT_RECHARGE_LAYOUT,
    ) -> None:
        assert 0 < len(meters) <= MAX_METERS_PER_BUS, len(meters)
        self.meters = {meter.address: meter for meter in meters}
        self.clock = clock
        self.layout = layout

    def answer(self, request: Frame) -> Frame | None:
        """The one reply the line carries back, or ``None`` (broadcast, nobody there, or a collision)."""
        now_s = self.clock()
        if request.address == BROADCAST_ADDRESS:
            for listener in self.meters.values():
                answer(listener, request, now_s, self.layout)
            return None
        meter = self.meters.get(request.address)
        if meter is not None:
            return answer(meter, request, now_s, self.layout)
        if "AA" not in request.address:
            return None
        matching = [m for address, m in self.meters.items() if _matches(request.address, address)]
        # several meters answering at once garble each other on a real line: nothing readable arrives
        return answer(matching[0], request, now_s, self.layout) if len(matching) == 1 else None
