"""The DL/T 645-2007 data identifiers (DI) PowerGate reads and writes, as data.

Each ``DataItem`` names one DI (DI3 DI2 DI1 DI0, written most significant first as ``00010000`` and sent
least significant first), its English and Chinese names, its value format (which fixes length and unit) and
where the definition comes from. Families (rates 1..4, phases A..C, "last n" freezes) are expanded from small
tables below, so the registry stays a lookup table rather than a code path per DI.

Invariants: DIs are unique; every entry's format decodes what it encodes; ``registry_markdown()`` is the DI
table in docs/protocols/dlt645.md (a test keeps them identical).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from powergate.protocols.dlt645.datatypes import (
    ADDRESS_DIGITS,
    CLOCK,
    COUNT_4,
    COUNT_6,
    CURRENT,
    DATE_WEEK,
    ENERGY,
    ENERGY_SIGNED,
    FREQUENCY,
    MINUTE_STAMP,
    MONEY,
    POWER,
    POWER_FACTOR,
    PRICE,
    SECOND_STAMP,
    STATUS_3,
    VOLTAGE,
    DecodeError,
    Digits,
    Number,
    Record,
    Repeated,
    Value,
    ValueFormat,
    bcd_digits,
    digits_to_bcd,
)

STANDARD = "DL/T 645-2007"
SUPPLEMENT = "DL/T 645-2007 smart-meter supplement (备案文件)"
"""DIs added for State Grid smart prepaid meters; widely implemented but not in the 2007 base text."""

MAX_BLOCK_VALUES = 49
"""A read reply carries at most 200 data bytes: DI (4) + 49 four-byte values."""

REACTIVE_ENERGY = Number("XXXXXX.XX", "kvarh", "varh", 10)
COUNT_2 = Number("XX", "", "count", 1)


@dataclass(frozen=True, slots=True)
class BcdFields(ValueFormat):
    """Two-digit BCD fields packed in one value, written most significant first (``MMDDNN``: month, day,
    day-table number) and sent least significant byte first, decoded to ``{name: int}``. Each field is checked
    against its range on both encode and decode."""

    fields_pattern: str
    names: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        assert len(self.fields_pattern) == 2 * len(self.names) == 2 * len(self.ranges), self

    @property
    def pattern(self) -> str:
        return self.fields_pattern

    @property
    def min_length(self) -> int:
        return len(self.names)

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        wrong = self.check_length(data, field)
        if wrong is not None:
            return wrong
        digits = bcd_digits(data, field)
        if isinstance(digits, DecodeError):
            return digits
        values: dict[str, Value] = {}
        for index, (name, (low, high)) in enumerate(zip(self.names, self.ranges, strict=True)):
            number = int(digits[2 * index : 2 * index + 2])
            if not low <= number <= high:
                return DecodeError(f"{field}.{name}", f"{number} is outside {low}..{high} ({self.pattern})")
            values[name] = number
        return values

    def encode(self, value: Value, field: str) -> bytes:
        if not isinstance(value, dict) or set(value) != set(self.names):
            raise ValueError(f"{field}: expected the fields {list(self.names)}, got {value!r}")
        digits = []
        for name, (low, high) in zip(self.names, self.ranges, strict=True):
            number = value[name]
            if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
                raise ValueError(f"{field}.{name}: {number!r} is outside {low}..{high} ({self.pattern})")
            digits.append(f"{number:02d}")
        return digits_to_bcd("".join(digits))

    def parse_text(self, text: str, field: str) -> Value:
        cleaned = text.strip()
        if len(cleaned) != len(self.fields_pattern) or not cleaned.isdigit():
            raise ValueError(f"{field}: {text!r} is not {len(self.fields_pattern)} digits ({self.pattern})")
        value: Value = {name: int(cleaned[2 * i : 2 * i + 2]) for i, name in enumerate(self.names)}
        self.encode(value, field)
        return value


@dataclass(frozen=True, slots=True)
class Bits8(ValueFormat):
    """One byte of flags (not BCD), e.g. the rest-day pattern 周休日特征字: bit 0 Sunday .. bit 6 Saturday."""

    @property
    def pattern(self) -> str:
        return "XX (bits)"

    @property
    def min_length(self) -> int:
        return 1

    def decode(self, data: bytes, field: str) -> Value | DecodeError:
        wrong = self.check_length(data, field)
        return wrong if wrong is not None else data[0]

    def encode(self, value: Value, field: str) -> bytes:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFF:
            raise ValueError(f"{field}: expected a byte 0..255, got {value!r}")
        return bytes([value])

    def parse_text(self, text: str, field: str) -> Value:
        try:
            value = int(text.strip(), 16)
        except ValueError:
            raise ValueError(f"{field}: {text!r} is not a 2-digit hex byte") from None
        self.encode(value, field)
        return value


MAX_TOU_ENTRIES = 14
"""DL/T 645-2007: at most 14 time zones a year and 14 periods a day."""
DAY_TABLES = 8
SPECIAL_DAYS = 254
ZONE_ENTRY = BcdFields("MMDDNN", ("month", "day", "table"), ((1, 12), (1, 31), (1, DAY_TABLES)))
PERIOD_ENTRY = BcdFields("hhmmNN", ("hour", "minute", "rate"), ((0, 23), (0, 59), (1, 63)))
SPECIAL_DAY_ENTRY = BcdFields(
    "YYMMDDNN", ("year", "month", "day", "table"), ((0, 99), (1, 12), (1, 31), (1, DAY_TABLES))
)
ZONE_TABLE = Repeated(ZONE_ENTRY, 1, MAX_TOU_ENTRIES)
DAY_TABLE = Repeated(PERIOD_ENTRY, 1, MAX_TOU_ENTRIES)
DI_TOU_ZONE_TABLE = {1: 0x04010000, 2: 0x04020000}
"""Time-zone table of the first / second set (第一套 / 第二套时区表数据); day table n is this DI + n."""
DI_SPECIAL_DAY = 0x04030000
"""Special day n (第n公共假日日期及日时段表号) is this DI + n, n = 1..254."""


@dataclass(frozen=True, slots=True)
class DataItem:
    """One data identifier: what it is called, how its value is laid out, who defines it."""

    di: int
    name: str
    name_zh: str
    format: ValueFormat
    writable: bool = False
    source: str = STANDARD

    def __post_init__(self) -> None:
        assert 0 <= self.di <= 0xFFFFFFFF, self.di

    @property
    def di_text(self) -> str:
        return format_di(self.di)


def format_di(di: int) -> str:
    """``0x00010000`` as ``"00010000"`` (DI3 first, as the standard writes it)."""
    return f"{di:08X}"


_DI_TEXT = re.compile(r"^[0-9A-Fa-f]{8}$")


def parse_di(text: str) -> int:
    """``"00010000"`` (DI3 first) as an integer; ``ValueError`` naming the field if it is not 8 hex digits."""
    cleaned = text.strip().replace(" ", "").removeprefix("0x")
    if not _DI_TEXT.match(cleaned):
        raise ValueError(f"di: {text!r} is not 8 hex digits such as 00010000")
    return int(cleaned, 16)


_RATES: tuple[tuple[int, str, str], ...] = (
    (0, "total", "总"),
    (1, "rate 1 (sharp)", "费率1"),
    (2, "rate 2 (peak)", "费率2"),
    (3, "rate 3 (flat)", "费率3"),
    (4, "rate 4 (valley)", "费率4"),
)
_ENERGY_KINDS = (
    (0x00, "combined active", "组合有功", ENERGY_SIGNED),
    (0x01, "forward active", "正向有功", ENERGY),
    (0x02, "reverse active", "反向有功", ENERGY),
)
_PHASES = ((1, "phase A", "A相"), (2, "phase B", "B相"), (3, "phase C", "C相"))
_INSTANT = (
    (0x01, "voltage", "电压", VOLTAGE, False),
    (0x02, "current", "电流", CURRENT, False),
    (0x03, "active power", "有功功率", POWER, True),
    (0x06, "power factor", "功率因数", POWER_FACTOR, True),
)
_PREPAID: tuple[tuple[int, str, str, ValueFormat, bool], ...] = (
    (0x00900100, "remaining energy", "(当前)剩余电量", ENERGY, False),
    (0x00900101, "overdraft energy", "(当前)透支电量", ENERGY, False),
    (0x00900200, "remaining amount", "(当前)剩余金额", MONEY, False),
    (0x00900201, "overdraft amount", "(当前)透支金额", MONEY, False),
    (0x03330101, "last purchase time", "上1次购电日期", MINUTE_STAMP, False),
    (0x03330201, "purchase count after last purchase", "上1次购电后总购电次数", COUNT_4, False),
    (0x03330301, "last purchase amount", "上1次购电金额", MONEY, False),
    (0x03330401, "remaining amount before last purchase", "上1次购电前剩余金额", MONEY, False),
    (0x03330501, "remaining amount after last purchase", "上1次购电后剩余金额", MONEY, False),
    (0x03330601, "cumulative purchase amount after last purchase", "上1次购电后累计购电金额", MONEY, False),
    (0x04001001, "alarm amount 1", "报警金额1限值", MONEY, True),
    (0x04001002, "alarm amount 2", "报警金额2限值", MONEY, True),
    (0x04001003, "overdraft limit", "透支金额限值", MONEY, True),
    (0x04001004, "hoarding limit", "囤积金额限值", MONEY, True),
    (0x04001005, "close-allowed amount", "合闸允许金额限值", MONEY, True),
)
_PARAMETERS: tuple[tuple[int, str, str, ValueFormat, bool, str], ...] = (
    (0x02800002, "grid frequency", "电网频率", FREQUENCY, False, STANDARD),
    (0x02800020, "current price", "当前电价", PRICE, False, SUPPLEMENT),
    (0x04000101, "date and week", "日期及星期(其中0代表星期天)", DATE_WEEK, True, STANDARD),
    (0x04000102, "time", "时间", CLOCK, True, STANDARD),
    (0x04000401, "communication address", "通信地址", ADDRESS_DIGITS, True, STANDARD),
    (0x0400040E, "customer number", "客户编号", Digits(6), True, SUPPLEMENT),
    (0x04000503, "running status word 3", "电表运行状态字3", STATUS_3, False, STANDARD),
    (0x04000106, "switch time to the second time-zone set", "两套时区表切换时间", MINUTE_STAMP, True, STANDARD),
    (0x04000107, "switch time to the second day-table set", "两套日时段表切换时间", MINUTE_STAMP, True, STANDARD),
    (0x04000201, "time zones a year", "年时区数p≤14", COUNT_2, True, STANDARD),
    (0x04000202, "day tables", "日时段表数q≤8", COUNT_2, True, STANDARD),
    (0x04000203, "periods a day", "日时段数(每日切换数)m≤14", COUNT_2, True, STANDARD),
    (0x04000204, "rates", "费率数k≤63", COUNT_2, True, STANDARD),
    (0x04000205, "special days", "公共假日数n≤254", COUNT_4, True, STANDARD),
    (0x04000801, "rest-day pattern", "周休日特征字", Bits8(), True, STANDARD),
    (0x04000802, "rest-day day table", "周休日采用的日时段表号", COUNT_2, True, STANDARD),
)
_EVENT_ENERGIES = (
    ("forward_active", ENERGY),
    ("reverse_active", ENERGY),
    ("q1_reactive", REACTIVE_ENERGY),
    ("q2_reactive", REACTIVE_ENERGY),
    ("q3_reactive", REACTIVE_ENERGY),
    ("q4_reactive", REACTIVE_ENERGY),
)
COVER_RECORD = Record(
    (
        ("start", SECOND_STAMP),
        ("end", SECOND_STAMP),
        *((f"{name}_before", fmt) for name, fmt in _EVENT_ENERGIES),
        *((f"{name}_after", fmt) for name, fmt in _EVENT_ENERGIES),
    )
)
DAILY_FREEZES = 62
"""The meter keeps the last 62 daily freezes (DI0 = 01..3E)."""


def _energy_items() -> Iterator[DataItem]:
    for kind, name, name_zh, fmt in _ENERGY_KINDS:
        for rate, rate_name, rate_zh in _RATES:
            yield DataItem(kind << 16 | rate << 8, f"{name} energy {rate_name}", f"(当前){name_zh}{rate_zh}电能", fmt)
        block = Repeated(fmt, 1, MAX_BLOCK_VALUES)
        yield DataItem(kind << 16 | 0xFF00, f"{name} energy block", f"(当前){name_zh}电能数据块", block)


def _instant_items() -> Iterator[DataItem]:
    for code, name, name_zh, fmt, has_total in _INSTANT:
        phases = (((0, "total", "总"),) if has_total else ()) + _PHASES
        for phase, phase_name, phase_zh in phases:
            yield DataItem(0x02000000 | code << 16 | phase << 8, f"{name} {phase_name}", f"{phase_zh}{name_zh}", fmt)
        block = Repeated(fmt, 1, len(phases))
        yield DataItem(0x02000000 | code << 16 | 0xFF00, f"{name} block", f"{name_zh}数据块", block)


def _price_items() -> Iterator[DataItem]:
    for table, table_zh in ((1, "第一套"), (2, "第二套")):
        for rate, rate_name, _ in _RATES[1:]:
            di = 0x04050000 | table << 8 | rate
            yield DataItem(di, f"price set {table} {rate_name}", f"{table_zh}费率电价{rate}", PRICE, writable=True)


def _tou_items() -> Iterator[DataItem]:
    for table_set, set_zh in ((1, "第一套"), (2, "第二套")):
        zone_di = DI_TOU_ZONE_TABLE[table_set]
        yield DataItem(zone_di, f"set {table_set} time-zone table", f"{set_zh}时区表数据", ZONE_TABLE, writable=True)
        for number in range(1, DAY_TABLES + 1):
            name, name_zh = f"set {table_set} day table (no. {number})", f"{set_zh}第{number}日时段表数据"
            yield DataItem(zone_di + number, name, name_zh, DAY_TABLE, writable=True)
    for number in range(1, SPECIAL_DAYS + 1):
        name, name_zh = f"special day (no. {number})", f"第{number}公共假日日期及日时段表号"
        yield DataItem(DI_SPECIAL_DAY + number, name, name_zh, SPECIAL_DAY_ENTRY, writable=True)


def _freeze_and_event_items() -> Iterator[DataItem]:
    for last in range(1, DAILY_FREEZES + 1):
        yield DataItem(0x05060000 | last, f"daily freeze time (last {last})", f"(上{last}次)日冻结时间", MINUTE_STAMP)
        block = Repeated(ENERGY, 1, MAX_BLOCK_VALUES)
        name = f"daily frozen forward active energy (last {last})"
        yield DataItem(0x05060100 | last, name, f"(上{last}次)日冻结正向有功电能数据", block)
    yield DataItem(0x03300D00, "cover-open count", "开表盖总次数", COUNT_6)
    yield DataItem(0x03300D01, "last cover-open record", "(上1次)开表盖记录", COVER_RECORD)
    yield DataItem(0x03300E00, "terminal-cover-open count", "开端钮盒总次数", COUNT_6)
    yield DataItem(0x03300E01, "last terminal-cover-open record", "(上1次)开端钮盒记录", COVER_RECORD)


def _all_items() -> Iterator[DataItem]:
    yield from _energy_items()
    yield from _instant_items()
    for di, name, name_zh, fmt, writable in _PREPAID:
        yield DataItem(di, name, name_zh, fmt, writable)
    for di, name, name_zh, fmt, writable, source in _PARAMETERS:
        yield DataItem(di, name, name_zh, fmt, writable, source)
    yield from _price_items()
    yield from _tou_items()
    yield from _freeze_and_event_items()


def _build() -> dict[int, DataItem]:
    items: dict[int, DataItem] = {}
    for item in _all_items():
        assert item.di not in items, f"duplicate DI {item.di_text}"
        items[item.di] = item
    return items


REGISTRY: Mapping[int, DataItem] = _build()


def lookup(di: int) -> DataItem | None:
    return REGISTRY.get(di)


def decode_data(di: int, payload: bytes) -> Value | DecodeError:
    """The value of ``payload`` (the data after the DI, +33H removed) for a known DI, or a ``DecodeError``."""
    item = REGISTRY.get(di)
    if item is None:
        return DecodeError("di", f"{format_di(di)} is not in the registry")
    return item.format.decode(payload, item.name)


def encode_data(di: int, value: Value) -> bytes:
    """The payload bytes for ``value`` under a known DI; ``ValueError`` naming the field otherwise."""
    item = REGISTRY.get(di)
    if item is None:
        raise ValueError(f"di: {format_di(di)} is not in the registry")
    return item.format.encode(value, item.name)


_RUN_MARK = re.compile(r" \((last|no\.) \d+\)")
"""A numbered family member: "(last n)" freezes and records, "(no. n)" day tables and special days."""


def _compact(items: list[DataItem]) -> tuple[str, str, str]:
    """Collapse a "last n" / "no. n" run into one row: ``05060101..0506013E``."""
    first, last = items[0], items[-1]
    if len(items) == 1:
        return first.di_text, first.name, first.name_zh
    di = f"{first.di_text}..{last.di_text}"
    name = first.name.replace("last 1", f"last 1..{len(items)}").replace("no. 1)", f"no. 1..{len(items)})")
    if "上1次" in first.name_zh:
        return di, name, first.name_zh.replace("上1次", f"上1..{len(items)}次")
    return di, name, first.name_zh.replace("第1", f"第1..{len(items)}", 1)


def registry_markdown() -> str:
    """The DI table for the docs, generated from the registry ("last n" runs collapsed to one row)."""
    lines = [
        "| DI | Name | 名称 | Format | Meter unit | Our unit | Writable | Source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows: list[list[DataItem]] = []
    for item in sorted(REGISTRY.values(), key=lambda entry: entry.di):
        previous = rows[-1][-1] if rows else None
        same_run = previous is not None and _RUN_MARK.search(item.name) is not None and item.di == previous.di + 1
        if same_run and previous is not None and _RUN_MARK.sub("", previous.name) == _RUN_MARK.sub("", item.name):
            rows[-1].append(item)
        else:
            rows.append([item])
    for run in rows:
        di, name, name_zh = _compact(run)
        item = run[0]
        fmt = item.format
        meter_unit = fmt.meter_unit if isinstance(fmt, Number) else ""
        if isinstance(fmt, Repeated) and isinstance(fmt.element, Number):
            meter_unit = fmt.element.meter_unit
        writable = "yes" if item.writable else ""
        lines.append(
            f"| {di} | {name} | {name_zh} | `{fmt.pattern}` | {meter_unit} | {fmt.unit} | {writable} | {item.source} |"
        )
    return "\n".join(lines) + "\n"
