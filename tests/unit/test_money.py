"""Money is exact: parsing, rounding to the minor unit by the one rule, and display."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.domain.money import (
    CNY,
    MICROS_PER_UNIT,
    currency,
    format_decimal,
    format_money,
    micros_to_minor,
    minor_to_micros,
    parse_micros,
    round_to_minor,
)


@pytest.mark.parametrize(
    ("text", "micros"),
    [("1", 1_000_000), ("0.01", 10_000), ("145.00", 145_000_000), ("-2.5", -2_500_000), ("0.000001", 1)],
)
def test_parse_decimal_amounts_exactly(text: str, micros: int) -> None:
    assert parse_micros(text) == micros


@pytest.mark.parametrize("bad", ["", "1.2.3", "abc", "1e5", "0.0000001", " ", "--1"])
def test_bad_amounts_are_rejected_with_the_field_name(bad: str) -> None:
    with pytest.raises(ValueError, match="price"):
        parse_micros(bad, field="price")


def test_floats_are_refused_for_money() -> None:
    with pytest.raises(ValueError, match="floats are not accepted"):
        parse_micros(0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micros", "fen"), [(5_000, 1), (4_999, 0), (-5_000, -1), (-4_999, 0), (15_000, 2), (25_000, 3)]
)
def test_rounding_to_fen_is_half_up_away_from_zero(micros: int, fen: int) -> None:
    assert micros_to_minor(micros) == fen


def test_display_uses_symbol_grouping_and_two_decimals() -> None:
    assert format_money(1_234_500_000) == "¥1,234.50"
    assert format_money(-10_000) == "-¥0.01"
    assert format_decimal(145_000_000) == "145.00"
    assert format_money(1_000_000, currency("JPY")) == "¥1"


def test_unknown_currency_names_the_code() -> None:
    with pytest.raises(ValueError, match="XYZ"):
        currency("XYZ")


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_round_trip_through_minor_units(fen: int) -> None:
    assert micros_to_minor(minor_to_micros(fen)) == fen


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_rounding_moves_less_than_half_a_fen(micros: int) -> None:
    rounded = round_to_minor(micros, CNY)
    assert abs(rounded - micros) <= CNY.micros_per_minor // 2
    assert rounded % CNY.micros_per_minor == 0


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=6, allow_nan=False, allow_infinity=False))
def test_parse_is_exact_for_six_decimals(value: Decimal) -> None:
    assert parse_micros(str(value)) == int(value * MICROS_PER_UNIT)
