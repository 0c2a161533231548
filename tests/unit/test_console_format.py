"""The console's display formatters agree with the domain's: money exactly as ``format_money`` (property-based,
every currency the domain knows), energy in kWh rounded half-up."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from powergate.domain import money
from powergate.web.console._render import fast_money, format_kwh

CURRENCIES = sorted(money.CURRENCIES)


@given(st.integers(min_value=-(10**18), max_value=10**18), st.sampled_from(CURRENCIES))
def test_fast_money_writes_exactly_what_format_money_writes(amount_micros: int, code: str) -> None:
    assert fast_money(amount_micros, code) == money.format_money(amount_micros, money.currency(code))


def test_fast_money_rounds_half_up_at_the_minor_unit_and_signs_only_what_is_left() -> None:
    assert fast_money(12_345_000) == "¥12.35"
    assert fast_money(12_344_999) == "¥12.34"
    assert fast_money(-4_999) == "¥0.00"
    assert fast_money(-5_000) == "-¥0.01"
    assert fast_money(1_234_567_890_000) == "¥1,234,567.89"


def test_energy_is_shown_in_kwh_with_two_decimals_rounded_half_up() -> None:
    assert [format_kwh(wh) for wh in (None, 0, 4, 5, 12_345, 1_234_567, -15)] == [
        "—",
        "0.00",
        "0.00",
        "0.01",
        "12.35",
        "1,234.57",
        "-0.02",
    ]
