"""DL/T 645 values and the DI registry: golden payloads per DI family, exact round trips for every format,
and the docs' DI table generated from the registry."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.protocols.dlt645 import REGISTRY, DecodeError, RunningStatus3, Value, decode_data, encode_data
from powergate.protocols.dlt645.datatypes import (
    MONEY,
    Digits,
    Number,
    Record,
    Repeated,
    StatusWord3,
    Timestamp,
    ValueFormat,
)
from powergate.protocols.dlt645.messages import describe_value
from powergate.protocols.dlt645.registry import BcdFields, Bits8, format_di, lookup, parse_di, registry_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocols" / "dlt645.md"

ZERO_RECORD: dict[str, Value] = {"start": None, "end": None}
for _name in ("forward_active", "reverse_active", "q1_reactive", "q2_reactive", "q3_reactive", "q4_reactive"):
    ZERO_RECORD[f"{_name}_before"] = 0
    ZERO_RECORD[f"{_name}_after"] = 0

# (DI, payload as sent after removing +33H, value in our units)
GOLDEN: list[tuple[int, str, Value]] = [
    (0x00000000, "56341200", 1_234_560),
    (0x00000000, "56341280", -1_234_560),
    (0x00000300, "01000000", 10),
    (0x00010000, "56341200", 1_234_560),
    (0x00010400, "99999999", 999_999_990),
    (0x0000FF00, "0001000000010000", (1000, 1000)),
    (0x0001FF00, "5634120000100000000500000001000000000100", (1_234_560, 10_000, 5000, 1000, 100_000)),
    (0x00020000, "00000000", 0),
    (0x02010100, "0222", 2202),
    (0x0201FF00, "022201220022", (2202, 2201, 2200)),
    (0x02020100, "001500", 1500),
    (0x02020200, "001580", -1500),
    (0x0202FF00, "001500000000000000", (1500, 0, 0)),
    (0x02030000, "452301", 12345),
    (0x02030100, "452381", -12345),
    (0x02060000, "8709", 987),
    (0x02060300, "0090", -1000),
    (0x02800002, "0050", 5000),
    (0x02800020, "80580000", 588_000),
    (0x00900100, "00500000", 50_000),
    (0x00900200, "45230100", 123_450_000),
    (0x00900201, "00100000", 10_000_000),
    (0x03330101, "3015221126", datetime(2026, 11, 22, 15, 30)),
    (0x03330201, "0300", 3),
    (0x03330601, "00000100", 100_000_000),
    (0x04001001, "00500000", 50_000_000),
    (0x04001002, "00200000", 20_000_000),
    (0x04001003, "00100000", 10_000_000),
    (0x04001004, "00009900", 9_900_000_000),
    (0x04001005, "00000000", 0),
    (0x04000101, "00221126", date(2026, 11, 22)),
    (0x04000102, "153010", time(10, 30, 15)),
    (0x04000102, "000000", time(0, 0)),
    (0x04000401, "010000000000", "000000000001"),
    (0x0400040E, "563412000000", "000000123456"),
    (0x04000503, "1002", RunningStatus3(0x0210)),
    (0x04050101, "80580000", 588_000),
    (0x04050204, "00300000", 300_000),
    (0x05060001, "0000221126", datetime(2026, 11, 22, 0, 0)),
    (0x0506003E, "0000000000", None),
    (0x05060101, "0010000000050000", (10_000, 5_000)),
    (0x03300D00, "050000", 5),
    (0x03300D01, "00" * 60, ZERO_RECORD),
]


@pytest.mark.parametrize(("di", "payload", "value"), GOLDEN, ids=[f"{g[0]:08X}-{g[1][:8]}" for g in GOLDEN])
def test_each_di_family_decodes_and_encodes_byte_exact(di: int, payload: str, value: Value) -> None:
    assert decode_data(di, bytes.fromhex(payload)) == value
    assert encode_data(di, value).hex().upper() == payload.upper()


def test_status_word_3_names_the_relay_and_prepaid_bits() -> None:
    status = RunningStatus3(0b0001_0010_1101_0000)
    assert status.relay_open and status.relay_command_open and status.pre_trip_alarm
    assert status.power_protect and status.meter_type == "money-prepaid" and status.supply == "main"
    assert not RunningStatus3(0).relay_open
    assert RunningStatus3(0x0100).meter_type == "energy-prepaid"


@pytest.mark.parametrize(
    ("di", "payload", "field", "words"),
    [
        (0x00010000, "563412", "forward active energy total", "expected 4 bytes"),
        (0x00010000, "FFFFFFFF", "forward active energy total", "not BCD"),
        (0x04000101, "00221326", "date and week", "not a valid YYMMDDWW"),
        (0x0001FF00, "0000000000", "forward active energy block", "whole number of 4-byte"),
        (0x0001FF00, "", "forward active energy block", "expected 4..196"),
        (0x12345678, "00", "di", "not in the registry"),
        (0x03300D01, "00" * 59 + "AA", "last cover-open record.q4_reactive_after", "not BCD"),
    ],
)
def test_malformed_values_are_decode_errors_naming_the_field(di: int, payload: str, field: str, words: str) -> None:
    result = decode_data(di, bytes.fromhex(payload))
    assert isinstance(result, DecodeError)
    assert result.field == field and words in result.message


@pytest.mark.parametrize(
    ("di", "value", "words"),
    [
        (0x00010000, 1_234_565, "finer than"),
        (0x00010000, -10, "negative"),
        (0x00010000, 10**10, "does not fit"),
        (0x02020100, 800_000, "does not fit"),
        (0x04001001, "50", "expected an integer"),
        (0x04000101, datetime(2026, 1, 1), "does not fit"),
        (0x04000101, date(2100, 1, 1), "outside 2000..2099"),
        (0x04000401, "12345", "12 decimal digits"),
        (0x0001FF00, (), "1..49 values"),
        (0x12345678, 1, "not in the registry"),
    ],
)
def test_values_that_do_not_fit_are_refused_naming_the_field(di: int, value: Value, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        encode_data(di, value)


@pytest.mark.parametrize(
    ("fmt", "text", "value"),
    [
        (MONEY, "100.00", 100_000_000),
        (MONEY, "0.5", 500_000),
        (Number("XXX.XXX", "A", "mA", 1, signed=True), "-1.5", -1500),
        (Timestamp("YYMMDDWW"), "2026-11-22", date(2026, 11, 22)),
        (Timestamp("YYMMDDhhmm"), "2026-11-22T10:30", datetime(2026, 11, 22, 10, 30)),
        (Timestamp("hhmmss"), "10:30:15", time(10, 30, 15)),
        (StatusWord3(), "0210", RunningStatus3(0x0210)),
    ],
)
def test_values_typed_in_the_meters_unit_are_parsed_exactly(fmt: ValueFormat, text: str, value: Value) -> None:
    assert fmt.parse_text(text, "value") == value


@pytest.mark.parametrize("text", ["1.234", "abc", "1e3", ""])
def test_bad_typed_money_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="value"):
        MONEY.parse_text(text, "value")


def values_for(fmt: ValueFormat) -> st.SearchStrategy[Value]:
    if isinstance(fmt, Number):
        low = -fmt.max_raw if fmt.signed else 0
        return st.integers(low, fmt.max_raw).map(lambda raw: raw * fmt.scale)
    if isinstance(fmt, Timestamp):
        has_date, has_time = "YY" in fmt.parts, "hh" in fmt.parts
        stamps = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31, 23, 59, 59))
        if not has_date:
            return st.times().map(lambda t: t.replace(microsecond=0))
        if not has_time:
            return st.one_of(st.none(), stamps.map(lambda moment: moment.date()))
        seconds = "ss" in fmt.parts
        return st.one_of(
            st.none(), stamps.map(lambda m: m.replace(microsecond=0) if seconds else m.replace(second=0, microsecond=0))
        )
    if isinstance(fmt, Digits):
        return st.text("0123456789", min_size=2 * fmt.length, max_size=2 * fmt.length)
    if isinstance(fmt, StatusWord3):
        return st.integers(0, 0xFFFF).map(RunningStatus3)
    if isinstance(fmt, Repeated):
        return st.lists(values_for(fmt.element), min_size=fmt.min_count, max_size=fmt.max_count).map(tuple)
    if isinstance(fmt, BcdFields):  # TOU entries (prepaid-b): each two-digit field within its range
        return st.fixed_dictionaries(
            {n: st.integers(lo, hi) for n, (lo, hi) in zip(fmt.names, fmt.ranges, strict=True)}
        )
    if isinstance(fmt, Bits8):
        return st.integers(0, 0xFF)
    assert isinstance(fmt, Record)
    return st.fixed_dictionaries({name: values_for(field) for name, field in fmt.fields})


@given(st.data())
def test_every_registered_format_round_trips_exactly(data: st.DataObject) -> None:
    item = data.draw(st.sampled_from(sorted(REGISTRY.values(), key=lambda entry: entry.di)))
    value = data.draw(values_for(item.format))
    payload = encode_data(item.di, value)
    assert item.format.min_length <= len(payload) <= item.format.max_length
    assert decode_data(item.di, payload) == value


@given(st.data())
def test_decoding_any_payload_never_raises(data: st.DataObject) -> None:
    item = data.draw(st.sampled_from(sorted(REGISTRY.values(), key=lambda entry: entry.di)))
    payload = data.draw(st.binary(max_size=item.format.max_length + 2))
    result = decode_data(item.di, payload)
    if not isinstance(result, DecodeError):
        assert encode_data(item.di, result) is not None
    assert isinstance(describe_value(item, payload), dict)


REQUIRED = [
    0x00000000, 0x00000100, 0x00000400, 0x0000FF00, 0x00010000, 0x00010400, 0x0001FF00,
    0x02010100, 0x02010300, 0x0201FF00, 0x02020100, 0x02020300, 0x02030000, 0x02030300, 0x02060000,
    0x02800002, 0x02800020, 0x04000101, 0x04000102, 0x04000401, 0x04000503,
    0x00900200, 0x00900201, 0x00900100, 0x03330201, 0x03330601,
    0x04001001, 0x04001002, 0x04001003, 0x04001004, 0x04001005,
    0x04050101, 0x04050104, 0x04050201, 0x04050204,
    0x05060001, 0x0506003E, 0x05060101, 0x0506013E, 0x03300D00, 0x03300D01,
]  # fmt: skip


@pytest.mark.parametrize("di", REQUIRED, ids=[format_di(di) for di in REQUIRED])
def test_the_registry_knows_every_di_the_platform_needs_with_both_names(di: int) -> None:
    item = lookup(di)
    assert item is not None
    assert item.name and item.name_zh and item.format.pattern


def test_prepaid_limits_are_writable_and_readings_are_not() -> None:
    assert all(REGISTRY[di].writable for di in range(0x04001001, 0x04001006))
    assert not REGISTRY[0x00900200].writable


def test_the_reading_shows_our_unit_and_the_meters_own_figure() -> None:
    described = describe_value(REGISTRY[0x00900200], bytes.fromhex("45230100"))
    assert described == {"value": 123_450_000, "unit": "micros", "meter_value": "123.45", "meter_unit": "yuan"}


def test_di_text_parses_and_prints_most_significant_first() -> None:
    assert parse_di("00010000") == 0x00010000 == parse_di("0x00010000")
    assert format_di(0x04000503) == "04000503"
    with pytest.raises(ValueError, match="di"):
        parse_di("123")


def test_the_docs_di_table_is_the_registry() -> None:
    assert registry_markdown() in DOCS.read_text(encoding="utf-8")
