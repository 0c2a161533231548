"""``Dlt645Link``: the ``MeterLink`` for DL/T 645-2007 meters on RS485 buses behind DTUs (``headend.dtu``).

Reads map ``ReadItem``s to DI reads (11H), using the FF blocks where the standard has them, so one request
brings the total and the four band registers::

    ENERGY      0001FF00 forward active energy block (total, sharp, peak, flat, valley)
    INSTANT     0201FF00 voltage, 0202FF00 current, 0203FF00 power, 0206FF00 power factor (blocks; phase A
                or the total is used: single-phase meters), 02800002 frequency
    RELAY       04000503 running status word 3 (bit 4: relay open)
    PREPAID     00900200 remaining amount, 00900201 overdraft amount, 03330201 purchase count
    CLOCK       04000101 date + 04000102 time (meter-local; converted with the site's time zone)
    FROZEN_DAY  05060001 time of the last daily freeze + 05060101 its energy block (a meter without a freeze
                yet answers "no data": the frozen fields stay None); ``read_frozen(endpoint, n)`` reads the
                n-th last one alone (050600nn + 050601nn, n = 1..62), for the scheduler's backfill

Commands: relay control 1CH (trip 1A, close allowed 1B, close now 1C, power-protect 3A / 3B) with the command's
valid-until in meter-local time; recharge 14H in the meter model's ``RechargeLayout``, made idempotent by the
purchase count: the meter's count is read first (03330201); a count already reached is ``already_applied``,
a count that skips ahead is refused, and after the write the count is read again to confirm; alarm amounts
(04001001 / 04001002); prices (04050101..04); time sync by broadcast 08H on the meter's bus.

An error reply becomes ``LinkError(REJECTED, ...)`` naming the meter, the DI and the decoded ERR bits; a reply
that does not decode is GARBLED. Values are integers in ``model``'s units (energy Wh, money micros).

There is no power-limit DI in the registry (vendors put it in their own 04xxxxxx range), so SET_POWER_LIMIT is
refused with that reason rather than written to a guessed DI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from powergate.headend.dtu import DtuServer
from powergate.headend.model import (
    CommandKind,
    CommandResult,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterSnapshot,
    ReadItem,
)
from powergate.protocols.dlt645 import (
    DEFAULT_RECHARGE_LAYOUT,
    Credentials,
    DecodeError,
    ErrorFlags,
    Frame,
    Recharge,
    RechargeLayout,
    RelayAction,
    RunningStatus3,
    Value,
    broadcast_time_request,
    decode_data,
    describe_errors,
    encode_data,
    format_di,
    read_request,
    recharge_request,
    relay_command,
    write_request,
)
from powergate.protocols.dlt645.messages import tou_writes

DI_ENERGY_BLOCK = 0x0001FF00
DI_VOLTAGE_BLOCK = 0x0201FF00
DI_CURRENT_BLOCK = 0x0202FF00
DI_POWER_BLOCK = 0x0203FF00
DI_POWER_FACTOR_BLOCK = 0x0206FF00
DI_FREQUENCY = 0x02800002
DI_STATUS_3 = 0x04000503
DI_REMAINING = 0x00900200
DI_OVERDRAFT = 0x00900201
DI_PURCHASE_COUNT = 0x03330201
DI_DATE = 0x04000101
DI_TIME = 0x04000102
DI_FREEZE_TIME_LAST = 0x05060001
DI_FREEZE_ENERGY_LAST = 0x05060101
"""+ (n - 1): the n-th last daily freeze, n = 1..``DAILY_FREEZES``."""
DAILY_FREEZES = 62
DI_ALARM_1 = 0x04001001
DI_ALARM_2 = 0x04001002
DI_PRICE_SET_1 = 0x04050100
"""+1..4: price set 1, rates 1..4 (sharp, peak, flat, valley)."""

RELAY_ACTIONS = {
    CommandKind.TRIP: RelayAction.TRIP,
    CommandKind.CLOSE: RelayAction.CLOSE_NOW,
    CommandKind.CLOSE_ALLOWED: RelayAction.CLOSE_ALLOWED,
    CommandKind.PROTECT_ON: RelayAction.PROTECT,
    CommandKind.PROTECT_OFF: RelayAction.PROTECT_OFF,
}
SITE_TZ = ZoneInfo("Asia/Shanghai")
Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _energy(value: Value) -> tuple[int, tuple[int, int, int, int]] | None:
    if not isinstance(value, tuple) or len(value) < 5 or not all(isinstance(v, int) for v in value[:5]):
        return None
    total, sharp, peak, flat, valley = (v for v in value[:5] if isinstance(v, int))
    return total, (sharp, peak, flat, valley)


def _first_int(value: Value) -> int | None:
    first = value[0] if isinstance(value, tuple) and value else value
    return first if isinstance(first, int) else None


class Dlt645Link:
    """A ``MeterLink`` over a ``DtuServer``. Meter-local times use ``tz`` (one site time zone per link)."""

    def __init__(
        self,
        server: DtuServer,
        *,
        credentials: Credentials | None = None,
        layouts: Mapping[str, RechargeLayout] | None = None,
        tz: dt.tzinfo = SITE_TZ,
        clock: Clock = _utc_now,
    ) -> None:
        self.server = server
        self.credentials = credentials or Credentials()
        self.layouts = dict(layouts or {})
        self.tz = tz
        self.clock = clock

    def online(self, endpoint: MeterEndpoint) -> bool:
        return self.server.online(endpoint.link_id)

    # -- one DI ---------------------------------------------------------------------------------------------

    async def _exchange(self, endpoint: MeterEndpoint, request: Frame, what: str) -> Frame | LinkError:
        reply = await self.server.request(endpoint.link_id, request)
        if isinstance(reply, LinkError):
            return reply
        if reply.error:
            flags = reply.error_flags or 0
            errors = "; ".join(describe_errors(flags)) or "no error bits"
            return LinkError(FailureKind.REJECTED, f"meter {endpoint.address}: {what}: {errors} (ERR {flags:02X})")
        return reply

    async def _read_di(self, endpoint: MeterEndpoint, di: int) -> Value | LinkError:
        reply = await self._exchange(endpoint, read_request(endpoint.address, di), f"read {format_di(di)}")
        if isinstance(reply, LinkError):
            return reply
        value = decode_data(di, reply.data[4:])
        if isinstance(value, DecodeError):
            return LinkError(FailureKind.GARBLED, f"meter {endpoint.address}: {format_di(di)}: {value}")
        return value

    async def _read_optional(self, endpoint: MeterEndpoint, di: int) -> Value | LinkError:
        """A DI the meter may not have yet (a freeze): "no data" is ``None``, other errors stay errors."""
        value = await self._read_di(endpoint, di)
        if isinstance(value, LinkError) and value.kind is FailureKind.REJECTED:
            flags = error_flags_of(value.reason)
            if flags is not None and flags & ErrorFlags.NO_DATA_REQUESTED:
                return None
        return value

    # -- reads ----------------------------------------------------------------------------------------------

    async def read(self, endpoint: MeterEndpoint, items: frozenset[ReadItem]) -> MeterSnapshot | LinkError:
        values: dict[str, Any] = {}
        for item in sorted(items):
            failed = await self._read_item(endpoint, item, values)
            if failed is not None:
                return failed
        return MeterSnapshot(endpoint.meter_id, self.clock(), **values)

    async def _read_item(self, endpoint: MeterEndpoint, item: ReadItem, values: dict[str, Any]) -> LinkError | None:
        readers = {
            ReadItem.ENERGY: self._read_energy,
            ReadItem.INSTANT: self._read_instant,
            ReadItem.RELAY: self._read_relay,
            ReadItem.PREPAID: self._read_prepaid,
            ReadItem.CLOCK: self._read_clock,
            ReadItem.FROZEN_DAY: self._read_frozen,
        }
        return await readers[item](endpoint, values)

    def _garbled(self, endpoint: MeterEndpoint, di: int, value: Value) -> LinkError:
        return LinkError(FailureKind.GARBLED, f"meter {endpoint.address}: {format_di(di)}: unexpected value {value!r}")

    async def _read_energy(self, endpoint: MeterEndpoint, values: dict[str, Any]) -> LinkError | None:
        block = await self._read_di(endpoint, DI_ENERGY_BLOCK)
        if isinstance(block, LinkError):
            return block
        energy = _energy(block)
        if energy is None:
            return self._garbled(endpoint, DI_ENERGY_BLOCK, block)
        values["total_wh"], values["bands_wh"] = energy
        return None

    async def _read_instant(self, endpoint: MeterEndpoint, values: dict[str, Any]) -> LinkError | None:
        fields = (
            (DI_VOLTAGE_BLOCK, "voltage_dv"),
            (DI_CURRENT_BLOCK, "current_ma"),
            (DI_POWER_BLOCK, "power_dw"),
            (DI_POWER_FACTOR_BLOCK, "power_factor_milli"),
            (DI_FREQUENCY, "frequency_chz"),
        )
        for di, name in fields:
            value = await self._read_di(endpoint, di)
            if isinstance(value, LinkError):
                return value
            number = _first_int(value)
            if number is None:
                return self._garbled(endpoint, di, value)
            values[name] = number
        return None

    async def _read_relay(self, endpoint: MeterEndpoint, values: dict[str, Any]) -> LinkError | None:
        status = await self._read_di(endpoint, DI_STATUS_3)
        if isinstance(status, LinkError):
            return status
        if not isinstance(status, RunningStatus3):
            return self._garbled(endpoint, DI_STATUS_3, status)
        values["relay_open"] = status.relay_open
        return None

    async def _read_prepaid(self, endpoint: MeterEndpoint, values: dict[str, Any]) -> LinkError | None:
        for di, name in (
            (DI_REMAINING, "remaining_micros"),
            (DI_OVERDRAFT, "overdraft_micros"),
            (DI_PURCHASE_COUNT, "purchase_count"),
        ):
            value = await self._read_di(endpoint, di)
            if isinstance(value, LinkError):
                return value
            if not isinstance(value, int):
                return self._garbled(endpoint, di, value)
            values[name] = value
        return None

    async def _read_clock(self, endpoint: MeterEndpoint, values: dict[str, Any]) -> LinkError | None:
        day = await self._read_di(endpoint, DI_DATE)
        if isinstance(day, LinkError):
            return day
        clock = await self._read_di(endpoint, DI_TIME)
        if isinstance(clock, LinkError):
            return clock
        if not isinstance(day, dt.date) or isinstance(day, dt.datetime) or not isinstance(clock, dt.time):
            return self._garbled(endpoint, DI_DATE, (day, clock))
        values["meter_time"] = self._to_utc(dt.datetime.combine(day, clock))
        return None

    async def read_frozen(self, endpoint: MeterEndpoint, last: int) -> MeterSnapshot | LinkError:
        """The ``last``-th most recent daily freeze alone (1 = the newest): a snapshot with only the frozen
        fields, which stay None when the meter has no such freeze."""
        assert 1 <= last <= DAILY_FREEZES, last
        values: dict[str, Any] = {}
        failed = await self._read_frozen(endpoint, values, last)
        return failed if failed is not None else MeterSnapshot(endpoint.meter_id, self.clock(), **values)

    async def _read_frozen(self, endpoint: MeterEndpoint, values: dict[str, Any], last: int = 1) -> LinkError | None:
        time_di, energy_di = DI_FREEZE_TIME_LAST + last - 1, DI_FREEZE_ENERGY_LAST + last - 1
        at = await self._read_optional(endpoint, time_di)
        if isinstance(at, LinkError) or at is None:
            return at
        block = await self._read_optional(endpoint, energy_di)
        if isinstance(block, LinkError) or block is None:
            return block
        energy = _energy(block)
        if not isinstance(at, dt.datetime) or energy is None:
            return self._garbled(endpoint, energy_di, block)
        values["frozen_at"] = self._to_utc(at)
        values["frozen_total_wh"], values["frozen_bands_wh"] = energy
        return None

    def _to_utc(self, local: dt.datetime) -> dt.datetime:
        return local.replace(tzinfo=self.tz).astimezone(dt.UTC)

    def _to_local(self, at: dt.datetime) -> dt.datetime:
        assert at.tzinfo is not None, at
        return at.astimezone(self.tz).replace(tzinfo=None, microsecond=0)

    # -- commands -------------------------------------------------------------------------------------------

    async def execute(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        kind = command.kind
        if kind in RELAY_ACTIONS:
            # the meter itself refuses the command after valid-until (meter-local time)
            request = relay_command(
                endpoint.address, RELAY_ACTIONS[kind], self._to_local(command.valid_until), self.credentials
            )
            return self._acknowledged(await self._exchange(endpoint, request, f"relay {kind.value}"))
        if self.clock() > command.valid_until:
            return LinkError(FailureKind.REJECTED, f"valid_until: command {command.command_id} expired before sending")
        if kind is CommandKind.RECHARGE:
            return await self._recharge(endpoint, command)
        if kind is CommandKind.SET_ALARMS:
            return await self._set_alarms(endpoint, command)
        if kind is CommandKind.SET_PRICES:
            return await self._set_prices(endpoint, command)
        if kind is CommandKind.SET_TOU:
            return await self._set_tou(endpoint, command)
        if kind is CommandKind.TIME_SYNC:
            at = self._to_local(command.at or self.clock())
            failed = await self.server.broadcast(endpoint.link_id, broadcast_time_request(at))
            return failed if failed is not None else CommandResult(ok=True, reason="broadcast on the meter's bus")
        assert kind is CommandKind.SET_POWER_LIMIT, kind
        return LinkError(FailureKind.REJECTED, "power_limit_w: no DL/T 645-2007 DI for a power limit in the registry")

    @staticmethod
    def _acknowledged(reply: Frame | LinkError) -> CommandResult | LinkError:
        return reply if isinstance(reply, LinkError) else CommandResult(ok=True)

    async def _write(self, endpoint: MeterEndpoint, di: int, value: Value) -> CommandResult | LinkError:
        try:
            payload = encode_data(di, value)
        except ValueError as error:
            return LinkError(FailureKind.REJECTED, str(error))
        request = write_request(endpoint.address, di, payload, self.credentials)
        return self._acknowledged(await self._exchange(endpoint, request, f"write {format_di(di)}"))

    async def _recharge(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        count, amount = command.purchase_count, command.amount_micros
        if count is None or amount is None:
            return LinkError(FailureKind.REJECTED, "amount_micros, purchase_count: both are required for a recharge")
        before = await self._read_di(endpoint, DI_PURCHASE_COUNT)
        if isinstance(before, LinkError):
            return before
        if not isinstance(before, int):
            return self._garbled(endpoint, DI_PURCHASE_COUNT, before)
        if before >= count:
            # the meter counts purchases one by one: a count reached means this purchase is in its balance
            return CommandResult(ok=True, already_applied=True, reason=f"meter purchase count is {before}")
        if count != before + 1:
            return LinkError(FailureKind.REJECTED, f"purchase_count: {count} skips ahead of the meter's {before}")
        layout = self.layouts.get(endpoint.model, DEFAULT_RECHARGE_LAYOUT)
        try:
            request = recharge_request(endpoint.address, Recharge(amount, count), self.credentials, layout)
        except ValueError as error:
            return LinkError(FailureKind.REJECTED, str(error))
        written = await self._exchange(endpoint, request, "recharge")
        if isinstance(written, LinkError):
            return written
        after = await self._read_di(endpoint, DI_PURCHASE_COUNT)
        if isinstance(after, LinkError):
            return after
        if after != count:
            return LinkError(FailureKind.REJECTED, f"purchase_count: meter acknowledged but reports {after}")
        return CommandResult(ok=True, reason=f"purchase count {count} applied")

    async def _set_alarms(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        alarm1, alarm2 = command.alarm1_micros, command.alarm2_micros
        if alarm1 is None or alarm2 is None:
            return LinkError(FailureKind.REJECTED, "alarm1_micros, alarm2_micros: both are required")
        # meters keep alarm 2 <= alarm 1 at every step: raising, write alarm 1 first; lowering, alarm 2 first
        first = await self._write(endpoint, DI_ALARM_1, alarm1)
        if isinstance(first, LinkError) and first.kind is FailureKind.REJECTED:
            second = await self._write(endpoint, DI_ALARM_2, alarm2)
            return second if isinstance(second, LinkError) else await self._write(endpoint, DI_ALARM_1, alarm1)
        if isinstance(first, LinkError):
            return first
        return await self._write(endpoint, DI_ALARM_2, alarm2)

    async def _set_prices(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        prices = command.prices_micros
        if prices is None or len(prices) != 4:
            return LinkError(FailureKind.REJECTED, "prices_micros: four prices (sharp, peak, flat, valley)")
        for rate, price in enumerate(prices, start=1):
            written = await self._write(endpoint, DI_PRICE_SET_1 + rate, price)
            if isinstance(written, LinkError):
                return written
        return CommandResult(ok=True)

    async def _set_tou(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        """Write the TOU tables DI by DI (``tou_writes``): the first write the meter refuses stops the push
        with its reason; a repeat of the whole push writes the same values again, so it is harmless."""
        if command.tou is None:
            return LinkError(FailureKind.REJECTED, "tou: a TOU push needs the tables")
        try:
            writes = tou_writes(command.tou)
        except ValueError as error:
            return LinkError(FailureKind.REJECTED, str(error))
        for di, value in writes:
            written = await self._write(endpoint, di, value)
            if isinstance(written, LinkError):
                return written
        return CommandResult(ok=True, reason=f"{len(writes)} TOU writes")


def error_flags_of(reason: str) -> ErrorFlags | None:
    """The ERR byte a REJECTED reason carries (``... (ERR 04)``), for callers that branch on it."""
    marker = reason.rfind("(ERR ")
    if marker < 0:
        return None
    try:
        return ErrorFlags(int(reason[marker + 5 : marker + 7], 16) & 0x7F)
    except ValueError:
        return None
