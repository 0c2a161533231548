"""Rules for rooms, accounts and site payment policies: worked examples, and properties of the area parser."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.domain.calendar import DayType
from powergate.domain.structure import (
    MAX_AREA_CENTI_M2,
    FieldError,
    PaymentChannel,
    PaymentPolicy,
    RoomUse,
    account_wallet,
    format_area,
    parse_area,
    parse_calendar_overrides,
    parse_channels,
    parse_code,
    parse_email,
    parse_phone,
    parse_room_use,
    purchase_problem,
)


@pytest.mark.parametrize(
    ("text", "area_centi_m2"),
    [("35.5", 3550), ("35.50", 3550), ("120", 12000), (120, 12000), ("0", 0), ("0.01", 1), (Decimal("7.25"), 725)],
)
def test_an_area_in_square_metres_becomes_an_integer_in_hundredths(text: str | int, area_centi_m2: int) -> None:
    assert parse_area(text) == area_centi_m2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12.345", "'12.345' has more than 2 decimals (the unit is 0.01 m²)"),
        ("-3", "'-3' is not an area in m² (a non-negative number such as 35.5)"),
        ("", "'' is not an area in m² (a non-negative number such as 35.5)"),
        ("35,5", "'35,5' is not an area in m² (a non-negative number such as 35.5)"),
        ("1e3", "'1e3' is not an area in m² (a non-negative number such as 35.5)"),
        ("1000001", "1000001 m² is more than 1000000 m²"),
    ],
)
def test_a_wrong_area_is_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(FieldError) as error:
        parse_area(text, "area_m2")
    assert (error.value.field, error.value.message) == ("area_m2", message)


@given(st.integers(min_value=0, max_value=MAX_AREA_CENTI_M2))
def test_formatting_and_parsing_an_area_round_trips_exactly(area_centi_m2: int) -> None:
    assert parse_area(format_area(area_centi_m2)) == area_centi_m2


@given(st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False, allow_infinity=False))
def test_any_two_decimal_area_parses_to_exactly_a_hundred_times_its_value(value: Decimal) -> None:
    assert parse_area(str(value)) == int(value * 100)


@pytest.mark.parametrize(
    ("text", "use"),
    [
        ("apartment", RoomUse.APARTMENT),
        ("Shop", RoomUse.SHOP),
        ("宿舍", RoomUse.DORMITORY),
        ("public area", RoomUse.PUBLIC_AREA),
    ],
)
def test_room_uses_accept_english_and_chinese_names(text: str, use: RoomUse) -> None:
    assert parse_room_use(text) == use


def test_an_unknown_room_use_lists_the_known_ones() -> None:
    with pytest.raises(FieldError, match="expected one of apartment, shop, office, dormitory, public_area"):
        parse_room_use("garage")


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("13800138000", "13800138000"),
        (13800138000, "13800138000"),
        ("+86 138 0013 8000", "13800138000"),
        ("010-12345678", "01012345678"),
        ("0755-1234567", "07551234567"),
        ("", None),
        (None, None),
    ],
)
def test_phone_numbers_are_stored_without_separators(text: object, phone: str | None) -> None:
    assert parse_phone(text) == phone


@pytest.mark.parametrize("text", ["12345", "23800138000", "1380013800", "phone"])
def test_a_wrong_phone_number_is_refused(text: str) -> None:
    with pytest.raises(FieldError, match=r"^phone: "):
        parse_phone(text)


@pytest.mark.parametrize(
    ("text", "email"),
    [("Zhang.San@Example.COM", "Zhang.San@example.com"), ("", None), ("a@b.cn", "a@b.cn")],
)
def test_emails_keep_their_local_part_and_lower_case_their_domain(text: str, email: str | None) -> None:
    assert parse_email(text) == email


@pytest.mark.parametrize("text", ["no-at-sign", "a@b", "a b@c.cn", "a@@b.cn", "a@b."])
def test_a_wrong_email_is_refused(text: str) -> None:
    with pytest.raises(FieldError, match="is not an e-mail address"):
        parse_email(text)


@pytest.mark.parametrize("text", ["A-1001", "1001", "b2_1203", "X" * 32])
def test_account_numbers_are_short_codes(text: str) -> None:
    assert parse_code(text, "account_no") == text


@pytest.mark.parametrize("text", ["", "-A", "A 1", "A/1", "X" * 33, "户1"])
def test_a_wrong_account_number_is_refused(text: str) -> None:
    with pytest.raises(FieldError, match=r"^account_no: "):
        parse_code(text, "account_no")


def test_a_wallet_is_unique_across_organisations() -> None:
    assert account_wallet("PARK", "A-1") == "wallet:PARK/A-1"
    assert account_wallet("PARK", "A-1") != account_wallet("MALL", "A-1")


def test_calendar_overrides_become_day_types_and_bad_ones_name_the_date() -> None:
    assert parse_calendar_overrides({"2027-10-09": "workday"}) == {dt.date(2027, 10, 9): DayType.WORKDAY}
    with pytest.raises(FieldError, match="2027-10-09: 'rest' is not a day type"):
        parse_calendar_overrides({"2027-10-09": "rest"})
    with pytest.raises(FieldError, match="'10/09/2027' is not a date"):
        parse_calendar_overrides({"10/09/2027": "holiday"})


def test_channels_parse_from_a_list_or_a_comma_separated_string() -> None:
    assert parse_channels("wechat, cashier") == {PaymentChannel.WECHAT, PaymentChannel.CASHIER}
    assert parse_channels(["bank"]) == {PaymentChannel.BANK}
    with pytest.raises(FieldError, match="'paypal' is not a payment channel"):
        parse_channels("paypal")


POLICY = PaymentPolicy(1, "CNY", 10_000_000, 500_000_000, frozenset({PaymentChannel.WECHAT}))


@pytest.mark.parametrize(
    ("channel", "amount_micros", "balance_micros", "problem"),
    [
        ("wechat", 10_000_000, 0, None),
        ("wechat", 20_000_000, 480_000_000, None),
        ("alipay", 50_000_000, 0, "channel: 'alipay' is not enabled at this site (enabled: wechat)"),
        ("wechat", 9_990_000, 0, "amount: ¥9.99 is below the minimum purchase of ¥10.00"),
        ("wechat", 0, 0, "amount: must be positive"),
        (
            "wechat",
            20_010_000,
            480_000_000,
            "amount: ¥20.01 would lift the balance to ¥500.01, above the hoarding limit of ¥500.00; "
            "at most ¥20.00 can be bought now",
        ),
        (
            "wechat",
            10_000_000,
            600_000_000,
            "amount: ¥10.00 would lift the balance to ¥610.00, above the hoarding limit of ¥500.00; "
            "at most ¥0.00 can be bought now",
        ),
    ],
)
def test_a_purchase_respects_the_channels_the_minimum_and_the_hoarding_limit(
    channel: str, amount_micros: int, balance_micros: int, problem: str | None
) -> None:
    found = purchase_problem(POLICY, channel, amount_micros, balance_micros)
    assert (None if found is None else str(found)) == problem


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=-(10**9), max_value=10**9))
def test_an_allowed_purchase_never_lifts_the_balance_above_the_hoarding_limit(amount: int, balance: int) -> None:
    if purchase_problem(POLICY, "wechat", amount, balance) is None:
        assert POLICY.hoarding_limit_micros is not None
        assert balance + amount <= POLICY.hoarding_limit_micros
        assert amount >= POLICY.min_purchase_micros
