"""The Modbus value codec: golden words per data type, round trips, pymodbus agreement, built-in maps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from powergate.protocols.modbus import (
    ACREL_SINGLE_PHASE,
    BUILT_IN_MAPS,
    GENERIC_THREE_PHASE,
    CodecError,
    DataType,
    Register,
    Table,
    WordOrder,
    decode_block,
    decode_flags,
    decode_value,
    decode_write,
    encode_block,
    encode_flags,
    encode_group,
    encode_value,
    encode_write,
    read_plan,
    register_map,
)
from powergate.protocols.modbus.codec import raw_range
from powergate.protocols.modbus.registers import Access, render_markdown

BIG, LITTLE = WordOrder.BIG, WordOrder.LITTLE


def reg(data_type: DataType, order: WordOrder = BIG, multiplier: int = 1, divisor: int = 1) -> Register:
    table = Table.COIL if data_type is DataType.BIT else Table.HOLDING
    return Register(
        "value", 0, data_type, table, word_order=order, multiplier=multiplier, divisor=divisor, unit="count"
    )


GOLDEN = [
    # data type, word order, multiplier, divisor, value in our unit, words on the wire
    (DataType.BIT, BIG, 1, 1, 1, (1,)),
    (DataType.U16, BIG, 1, 1, 0xBEEF, (0xBEEF,)),
    (DataType.S16, BIG, 1, 1, -2, (0xFFFE,)),
    (DataType.S16, BIG, 1, 1, -32768, (0x8000,)),
    (DataType.U32, BIG, 1, 1, 0x12345678, (0x1234, 0x5678)),
    (DataType.U32, LITTLE, 1, 1, 0x12345678, (0x5678, 0x1234)),
    (DataType.S32, BIG, 1, 1, -1, (0xFFFF, 0xFFFF)),
    (DataType.S32, LITTLE, 1, 1, -65536, (0x0000, 0xFFFF)),
    (DataType.U64, BIG, 1, 1, 0x0102030405060708, (0x0102, 0x0304, 0x0506, 0x0708)),
    (DataType.S64, LITTLE, 1, 1, -2, (0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF)),
    (DataType.BCD16, BIG, 1, 1, 1234, (0x1234,)),
    (DataType.BCD32, BIG, 1, 1, 12345678, (0x1234, 0x5678)),
    (DataType.BCD32, LITTLE, 1, 1, 12345678, (0x5678, 0x1234)),
    (DataType.F32, BIG, 1, 1, 1, (0x3F80, 0x0000)),
    (DataType.F32, BIG, 1000, 1, 12345, (0x4145, 0x851F)),  # 12.345 kWh -> 12345 Wh
    (DataType.F32, LITTLE, 1, 1, -2, (0x0000, 0xC000)),
    # 0.01 kWh register: 123.45 kWh = 12345 counts = 123450 Wh
    (DataType.U32, BIG, 10, 1, 123_450, (0x0000, 0x3039)),
    # 0.01 yuan register: -5.00 yuan = -500 counts = -5,000,000 micros
    (DataType.S32, BIG, 10_000, 1, -5_000_000, (0xFFFF, 0xFE0C)),
    # 0.1 W register read into W: 2205 counts = 220.5 W -> our W only when it divides; here 2200 counts
    (DataType.U16, BIG, 1, 10, 220, (2200,)),
]


@pytest.mark.parametrize(("data_type", "order", "multiplier", "divisor", "value", "words"), GOLDEN)
def test_a_golden_value_encodes_to_its_words_and_decodes_back(
    data_type: DataType, order: WordOrder, multiplier: int, divisor: int, value: int, words: tuple[int, ...]
) -> None:
    register = reg(data_type, order, multiplier, divisor)
    assert encode_value(register, value) == words
    assert decode_value(register, words) == value


@pytest.mark.parametrize(
    ("data_type", "value", "message"),
    [
        (DataType.U16, 65536, "out of range"),
        (DataType.U16, -1, "out of range"),
        (DataType.S16, 32768, "out of range"),
        (DataType.BCD16, 10_000, "out of range"),
        (DataType.BIT, 2, "out of range"),
        (DataType.F32, 2**24 + 1, "not exactly representable"),
        (DataType.F32, 10**40, "does not fit"),
    ],
)
def test_a_value_the_register_cannot_hold_exactly_is_an_error_naming_the_register(
    data_type: DataType, value: int, message: str
) -> None:
    error = encode_value(reg(data_type), value)
    assert isinstance(error, CodecError) and error.field == "value" and message in error.message


def test_a_value_finer_than_the_register_step_is_refused_rather_than_rounded() -> None:
    energy = reg(DataType.U32, multiplier=10)  # 0.01 kWh = 10 Wh per count
    error = encode_value(energy, 12_345)
    assert isinstance(error, CodecError) and "multiple of the register's step 10" in error.message


def test_bad_bcd_nan_and_wrong_word_counts_decode_to_errors_not_exceptions() -> None:
    assert "not BCD" in str(decode_value(reg(DataType.BCD16), [0x12A4]))
    assert "finite" in str(decode_value(reg(DataType.F32), [0x7FC0, 0x0000]))
    assert "expected 2 word(s)" in str(decode_value(reg(DataType.U32), [1]))
    assert "outside 0..65535" in str(decode_value(reg(DataType.U16), [70_000]))
    assert "outside 0..1" in str(decode_value(reg(DataType.BIT), [2]))


def test_a_value_of_a_choice_register_must_be_one_of_its_choices() -> None:
    relay = ACREL_SINGLE_PHASE.register("relay_command")
    assert encode_value(relay, relay.choice_value("trip")) == (0x1A,)
    error = encode_value(relay, 0x55)
    assert isinstance(error, CodecError) and "26=trip" in error.message


def test_booleans_and_floats_are_not_integers() -> None:
    assert isinstance(encode_value(reg(DataType.U16), True), CodecError)
    assert isinstance(encode_value(reg(DataType.U16), 1.0), CodecError)  # type: ignore[arg-type]


# --- property tests: one per data type, both word orders ------------------------------------------------

INTEGER_TYPES = [t for t in DataType if t is not DataType.F32]


@pytest.mark.parametrize("data_type", INTEGER_TYPES)
@pytest.mark.parametrize("order", list(WordOrder))
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_every_integer_type_round_trips_every_value_it_can_hold(
    data_type: DataType, order: WordOrder, data: st.DataObject
) -> None:
    multiplier = data.draw(st.sampled_from([1, 10, 10_000]))
    register = reg(data_type, order, multiplier=1 if data_type is DataType.BIT else multiplier)
    low, high = raw_range(data_type)
    value = data.draw(st.integers(low, high)) * register.multiplier
    words = encode_value(register, value)
    assert not isinstance(words, CodecError)
    assert len(words) == register.count and all(0 <= w <= 0xFFFF for w in words)
    assert decode_value(register, words) == value


@pytest.mark.parametrize("order", list(WordOrder))
@given(value=st.integers(-(2**24), 2**24), multiplier=st.sampled_from([1, 10, 1000]))
@settings(max_examples=200, deadline=None)
def test_f32_round_trips_every_integer_within_its_24_bit_mantissa(
    order: WordOrder, value: int, multiplier: int
) -> None:
    register = reg(DataType.F32, order, multiplier=multiplier)
    words = encode_value(register, value)
    # scaled values need not be exact floats; the codec either round-trips or refuses, never drifts
    if isinstance(words, CodecError):
        assert "not exactly representable" in words.message
    else:
        assert decode_value(register, words) == value


@pytest.mark.parametrize("data_type", list(DataType))
@given(words=st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=5))
@settings(max_examples=100, deadline=None)
def test_decoding_any_words_gives_an_integer_or_a_codec_error(data_type: DataType, words: list[int]) -> None:
    for order in WordOrder:
        result = decode_value(reg(data_type, order), words)
        assert isinstance(result, int | CodecError) and not isinstance(result, bool)


PYMODBUS_TYPES = {
    DataType.U16: ModbusClientMixin.DATATYPE.UINT16,
    DataType.S16: ModbusClientMixin.DATATYPE.INT16,
    DataType.U32: ModbusClientMixin.DATATYPE.UINT32,
    DataType.S32: ModbusClientMixin.DATATYPE.INT32,
    DataType.U64: ModbusClientMixin.DATATYPE.UINT64,
    DataType.S64: ModbusClientMixin.DATATYPE.INT64,
}


@pytest.mark.parametrize("data_type", list(PYMODBUS_TYPES))
@pytest.mark.parametrize("order", list(WordOrder))
@given(data=st.data())
@settings(max_examples=50, deadline=None)
def test_our_words_are_the_words_pymodbus_produces_for_the_same_value(
    data_type: DataType, order: WordOrder, data: st.DataObject
) -> None:
    value = data.draw(st.integers(*raw_range(data_type)))
    ours = encode_value(reg(data_type, order), value)
    theirs = ModbusClientMixin.convert_to_registers(value, PYMODBUS_TYPES[data_type], word_order=order.value)
    assert list(ours) == theirs  # type: ignore[arg-type]
    assert ModbusClientMixin.convert_from_registers(theirs, PYMODBUS_TYPES[data_type], word_order=order.value) == (
        decode_value(reg(data_type, order), theirs)
    )


@pytest.mark.parametrize("order", list(WordOrder))
@given(value=st.integers(-(2**24), 2**24))
@settings(max_examples=50, deadline=None)
def test_our_f32_words_are_the_words_pymodbus_produces(order: WordOrder, value: int) -> None:
    theirs = ModbusClientMixin.convert_to_registers(float(value), ModbusClientMixin.DATATYPE.FLOAT32, order.value)
    assert list(encode_value(reg(DataType.F32, order), value)) == theirs  # type: ignore[arg-type]


# --- flags ----------------------------------------------------------------------------------------------


def test_event_flags_name_the_bits_that_are_set() -> None:
    flags = ACREL_SINGLE_PHASE.register("event_flags")
    value = encode_flags(flags, ["cover_open", "overload_trip"])
    assert value == 0b1000_0001
    assert decode_flags(flags, value) == ("cover_open", "overload_trip")  # type: ignore[arg-type]
    assert decode_flags(flags, 1 << 12) == ("bit12",)
    assert isinstance(encode_flags(flags, ["smoke"]), CodecError)


# --- blocks and writes ----------------------------------------------------------------------------------

ACREL_VALUES = {
    "total_energy_wh": 1_234_560,
    "sharp_energy_wh": 100_000,
    "peak_energy_wh": 300_000,
    "flat_energy_wh": 500_000,
    "valley_energy_wh": 334_560,
    "device_code": 1,
    "voltage_dv": 2_203,
    "current_ma": 5_120,
    "active_power_w": 1_128,
    "reactive_power_var": -40,
    "apparent_power_va": 1_130,
    "power_factor_permille": 998,
    "frequency_centihz": 5_001,
    "remaining_amount_micros": -2_500_000,
    "overdraft_amount_micros": 2_500_000,
    "purchase_count": 7,
    "relay_state": 1,
    "event_flags": 0,
    "alarm_amount_1_micros": 50_000_000,
    "alarm_amount_2_micros": 20_000_000,
    "overdraft_limit_micros": 10_000_000,
    "hoarding_limit_micros": 5_000_000_000,
    "power_limit_w": 4_400,
    "sharp_price_micros_per_kwh": 1_234_500,
    "peak_price_micros_per_kwh": 987_600,
    "flat_price_micros_per_kwh": 650_000,
    "valley_price_micros_per_kwh": 312_300,
}


def test_a_whole_acrel_read_plan_encodes_and_decodes_back_to_the_same_values() -> None:
    plan = read_plan(ACREL_SINGLE_PHASE)
    assert [(b.table, b.address, b.count) for b in plan] == [(Table.HOLDING, 0x0000, 0x2A)]
    words = encode_block(ACREL_SINGLE_PHASE, Table.HOLDING, 0, 0x2A, ACREL_VALUES)
    assert not isinstance(words, CodecError)
    assert words[:4] == [0x0001, 0xE240, 0x0000, 0x2710]  # 123456 and 10000 counts of 0.01 kWh
    values, errors = decode_block(ACREL_SINGLE_PHASE, Table.HOLDING, 0, words)
    assert errors == [] and values == ACREL_VALUES


def test_one_bad_register_in_a_block_is_reported_and_the_others_still_decode() -> None:
    register = GENERIC_THREE_PHASE.register("serial_number")
    words = [0x12F4, 0x5678, 0x0000, 0x1000]  # serial number not BCD, power limit 4096 W
    values, errors = decode_block(GENERIC_THREE_PHASE, Table.HOLDING, register.address, words)
    assert values == {"power_limit_w": 4096}
    assert [e.field for e in errors] == ["serial_number"]


def test_a_register_the_block_covers_only_in_part_is_left_out() -> None:
    values, errors = decode_block(ACREL_SINGLE_PHASE, Table.HOLDING, 1, [0, 0, 0])
    assert values == {"sharp_energy_wh": 0} and errors == []


def test_reading_an_address_no_register_defines_is_an_illegal_address_for_a_simulator() -> None:
    error = encode_block(ACREL_SINGLE_PHASE, Table.HOLDING, 0x002A, 2, ACREL_VALUES)
    assert isinstance(error, CodecError) and "42 (0x002A) is not a holding register" in str(error)
    assert "no value" in str(encode_block(ACREL_SINGLE_PHASE, Table.HOLDING, 0, 2, {}))


def test_write_only_registers_read_as_zero() -> None:
    words = encode_block(ACREL_SINGLE_PHASE, Table.HOLDING, 0x0030, 4, {})
    assert words == [0, 0, 0, 0]


def test_a_recharge_is_one_fc16_write_of_amount_and_purchase_count() -> None:
    request = encode_group(
        ACREL_SINGLE_PHASE, "recharge", {"recharge_amount_micros": 100_000_000, "recharge_purchase_count": 8}
    )
    assert not isinstance(request, CodecError)
    assert (request.table, request.address, request.words, request.function) == (
        Table.HOLDING,
        0x0031,
        (0x0000, 0x2710, 0x0008),
        0x10,
    )
    decoded = decode_write(ACREL_SINGLE_PHASE, request.table, request.address, request.words)
    assert decoded == {"recharge_amount_micros": 100_000_000, "recharge_purchase_count": 8}


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({}, "values", "nothing to write"),
        ({"voltage_dv": 1}, "voltage_dv", "read-only"),
        ({"no_such": 1}, "no_such", "no such register"),
        ({"recharge_amount_micros": 10_000}, "recharge", "must be written whole"),
        ({"alarm_amount_1_micros": 0, "power_limit_w": 1}, "power_limit_w", "not adjacent"),
        ({"power_limit_w": 70_000}, "power_limit_w", "out of range"),
    ],
)
def test_a_write_that_would_leave_a_meter_half_updated_is_refused(
    values: dict[str, int], field: str, message: str
) -> None:
    error = encode_write(ACREL_SINGLE_PHASE, values)
    assert isinstance(error, CodecError) and error.field == field and message in error.message


def test_a_group_write_needs_exactly_the_group() -> None:
    assert "needs exactly" in str(encode_group(ACREL_SINGLE_PHASE, "recharge", {"recharge_amount_micros": 1}))
    assert "no write group" in str(encode_group(GENERIC_THREE_PHASE, "recharge", {}))


@pytest.mark.parametrize(
    ("address", "words", "message"),
    [
        (0x0032, [0x2710, 8], "does not cover the whole register"),
        (0x0031, [0, 0x2710], "must be written whole"),
        (0x000B, [2200], "read-only"),
        (0x0029, [0, 0, 0], "does not cover the whole register"),
        (0x0034, [1], "is not a writable holding register"),
    ],
)
def test_a_meter_refuses_a_received_write_that_splits_a_register_or_a_group(
    address: int, words: list[int], message: str
) -> None:
    error = decode_write(ACREL_SINGLE_PHASE, Table.HOLDING, address, words)
    assert isinstance(error, CodecError) and message in str(error)


def test_the_generic_meter_trips_with_a_single_coil_write() -> None:
    request = encode_write(GENERIC_THREE_PHASE, {"relay_command": 1})
    assert not isinstance(request, CodecError)
    assert (request.table, request.address, request.words, request.function) == (Table.COIL, 0, (1,), 0x05)
    assert decode_write(GENERIC_THREE_PHASE, Table.COIL, 0, [1]) == {"relay_command": 1}
    assert "read-only" in str(decode_write(GENERIC_THREE_PHASE, Table.DISCRETE_INPUT, 0, [1]))


@given(
    table=st.sampled_from(list(Table)),
    address=st.integers(0, 0x120),
    words=st.lists(st.integers(0, 0xFFFF), max_size=40),
)
@settings(max_examples=300, deadline=None)
def test_block_and_write_decoders_never_raise_on_any_words(table: Table, address: int, words: list[int]) -> None:
    for a_map in BUILT_IN_MAPS.values():
        values, errors = decode_block(a_map, table, address, words)
        assert all(isinstance(v, int) for v in values.values()) and all(isinstance(e, CodecError) for e in errors)
        assert isinstance(decode_write(a_map, table, address, words), dict | CodecError)


# --- maps -----------------------------------------------------------------------------------------------


def test_the_read_plan_respects_gaps_and_limits() -> None:
    generic = read_plan(GENERIC_THREE_PHASE)
    assert [(b.table, b.address, b.count) for b in generic] == [
        (Table.COIL, 0, 1),
        (Table.DISCRETE_INPUT, 0, 2),
        (Table.HOLDING, 0x0100, 4),
        (Table.INPUT, 0, 0x1F),
    ]
    split = read_plan(ACREL_SINGLE_PHASE, max_count=10)
    assert all(block.count <= 10 for block in split) and sum(len(b.registers) for b in split) == 27
    chosen = read_plan(ACREL_SINGLE_PHASE, ["total_energy_wh", "purchase_count"], max_gap=0)
    assert [(b.address, b.count) for b in chosen] == [(0x0000, 2), (0x0016, 1)]
    merged = read_plan(ACREL_SINGLE_PHASE, ["total_energy_wh", "purchase_count"], max_gap=20)
    assert [(b.address, b.count) for b in merged] == [(0x0000, 0x17)]


def test_every_built_in_map_names_relay_registers_the_same_way() -> None:
    for a_map in BUILT_IN_MAPS.values():
        state, command = a_map.register("relay_state"), a_map.register("relay_command")
        assert state.choice_name(0) == "closed" and state.choice_name(1) == "tripped"
        assert command.access.writable and {"trip"} <= {name for _, name in command.choices}


def test_a_map_with_overlapping_registers_is_a_programmer_error() -> None:
    from powergate.protocols.modbus import RegisterMap

    one = Register("a_wh", 0, DataType.U32, unit="Wh")
    two = Register("b_wh", 1, DataType.U16, unit="Wh")
    with pytest.raises(AssertionError, match="overlaps"):
        RegisterMap("bad", "overlap", (one, two))
    with pytest.raises(AssertionError, match="name says"):
        RegisterMap("bad", "unit", (Register("a_wh", 0, DataType.U16, unit="W"),))
    with pytest.raises(AssertionError, match="read-only"):
        RegisterMap("bad", "table", (Register("a_w", 0, DataType.U16, Table.INPUT, Access.WRITE, unit="W"),))


def test_an_unknown_model_lists_the_known_ones() -> None:
    assert register_map("acrel-single-phase") is ACREL_SINGLE_PHASE
    with pytest.raises(KeyError, match="generic-three-phase"):
        register_map("nope")


def test_the_docs_show_every_built_in_map_as_it_is() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocols" / "modbus.md").read_text(encoding="utf-8")
    for a_map in BUILT_IN_MAPS.values():
        assert render_markdown(a_map) in doc, f"docs/protocols/modbus.md is stale for {a_map.model}"
