"""Relay control (1CH) and prepaid recharge writes: byte-exact frames, both recharge layouts, round trips."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.protocols.dlt645 import (
    COUNT_FIRST_LAYOUT,
    DEFAULT_RECHARGE_LAYOUT,
    Credentials,
    DecodeError,
    Frame,
    Function,
    Recharge,
    RechargeLayout,
    RelayAction,
    RelayCommand,
    decode_frame,
    describe,
    encode_frame,
    parse_recharge,
    parse_relay_command,
    read_request,
    recharge_request,
    relay_command,
)

METER = "000000000001"
UNTIL = datetime(2026, 12, 1, 0, 0)
CREDENTIALS = Credentials(2, "000000", "00000000")

# N1 byte (+33H) for each action, on top of a fixed frame: 02 000000 / 00000000 / N2 00 / 2026-12-01 00:00:00
RELAY_GOLDEN = [
    (RelayAction.TRIP, "4D", "82"),
    (RelayAction.CLOSE_ALLOWED, "4E", "83"),
    (RelayAction.CLOSE_NOW, "4F", "84"),
    (RelayAction.ALARM, "5D", "92"),
    (RelayAction.ALARM_OFF, "5E", "93"),
    (RelayAction.PROTECT, "6D", "A2"),
    (RelayAction.PROTECT_OFF, "6E", "A3"),
]


@pytest.mark.parametrize(("action", "n1", "checksum"), RELAY_GOLDEN, ids=[a.name for a, _, _ in RELAY_GOLDEN])
def test_each_relay_action_encodes_byte_exact(action: RelayAction, n1: str, checksum: str) -> None:
    wire = f"68 01 00 00 00 00 00 68 1C 10 35 33 33 33 33 33 33 33 {n1} 33 33 33 33 34 45 59 {checksum} 16"
    frame = relay_command(METER, action, UNTIL, CREDENTIALS)
    assert encode_frame(frame, 0).hex(" ").upper() == wire
    assert parse_relay_command(frame) == RelayCommand(action, UNTIL, CREDENTIALS)


def test_the_relay_command_shows_action_and_expiry_but_masks_the_password() -> None:
    frame = relay_command(METER, RelayAction.CLOSE_NOW, UNTIL, Credentials(4, "123456", "00000001"))
    message = describe(frame)["message"]
    assert message == {
        "action": "close now (直接合闸)",
        "n1": "1C",
        "valid_until": "2026-12-01T00:00:00",
        "password_level": 4,
        "password": "******",
        "operator_code": "00000001",
    }


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (read_request(METER, 0), "control"),
        (Frame(METER, Function.RELAY_CONTROL, bytes(15)), "data"),
        (Frame(METER, Function.RELAY_CONTROL, bytes(8) + b"\x99" + bytes(7)), "N1"),
        (Frame(METER, Function.RELAY_CONTROL, bytes(8) + b"\x1a\x00" + bytes(6)), "valid_until"),
    ],
)
def test_malformed_relay_commands_are_decode_errors(frame: Frame, field: str) -> None:
    result = parse_relay_command(frame)
    assert isinstance(result, DecodeError) and result.field == field


RECHARGE_GOLDEN = [
    (
        DEFAULT_RECHARGE_LAYOUT,
        Recharge(100_000_000, 3, "000000123456"),
        # DI 070102FF, PA 02, password, operator, amount 100.00, count 00000003, customer 000000123456
        "68 01 00 00 00 00 00 68 14 1A 32 35 34 3A 35 33 33 33 33 33 33 33"
        " 33 33 34 33 36 33 33 33 89 67 45 33 33 33 D8 16",
    ),
    (
        COUNT_FIRST_LAYOUT,
        Recharge(100_000_000, 3),
        # DI 07010201, PA 04, password, operator, count 0003, amount 100.00
        "68 01 00 00 00 00 00 68 14 12 34 35 34 3A 37 33 33 33 33 33 33 33 36 33 33 33 34 33 A0 16",
    ),
]


@pytest.mark.parametrize(("layout", "recharge", "wire"), RECHARGE_GOLDEN, ids=["default", "count-first"])
def test_a_recharge_encodes_byte_exact_in_each_layout(layout: RechargeLayout, recharge: Recharge, wire: str) -> None:
    frame = recharge_request(METER, recharge, CREDENTIALS, layout)
    assert encode_frame(frame, 0).hex(" ").upper() == wire
    assert parse_recharge(frame, layout) == recharge


def test_a_recharge_for_one_layout_is_refused_by_the_other() -> None:
    frame = recharge_request(METER, Recharge(1_000_000, 1), CREDENTIALS)
    result = parse_recharge(frame, COUNT_FIRST_LAYOUT)
    assert isinstance(result, DecodeError) and result.field == "di"


@pytest.mark.parametrize(
    ("recharge", "words"),
    [
        (Recharge(0, 1), "positive"),
        (Recharge(1_000_001, 1), "finer than"),
        (Recharge(10**12, 1), "does not fit"),
        (Recharge(1_000_000, 10**8), "does not fit"),
        (Recharge(1_000_000, 1, "12"), "12 decimal digits"),
    ],
)
def test_recharges_that_do_not_fit_are_refused_naming_the_field(recharge: Recharge, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        recharge_request(METER, recharge, CREDENTIALS)


@given(
    amount_fen=st.integers(1, 99_999_999),
    count=st.integers(0, 9999),
    customer=st.text("0123456789", min_size=12, max_size=12),
    layout=st.sampled_from([DEFAULT_RECHARGE_LAYOUT, COUNT_FIRST_LAYOUT]),
)
def test_any_recharge_round_trips_through_the_wire(
    amount_fen: int, count: int, customer: str, layout: RechargeLayout
) -> None:
    carried = customer if layout is DEFAULT_RECHARGE_LAYOUT else "000000000000"
    recharge = Recharge(amount_fen * 10_000, count, carried)
    decoded = decode_frame(encode_frame(recharge_request(METER, recharge, CREDENTIALS, layout)))
    assert isinstance(decoded, Frame)
    assert parse_recharge(decoded, layout) == recharge


@given(
    action=st.sampled_from(RelayAction),
    until=st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(lambda m: m.replace(microsecond=0)),
    level=st.integers(0, 255),
    password=st.text("0123456789ABCDEF", min_size=6, max_size=6),
    operator=st.text("0123456789ABCDEF", min_size=8, max_size=8),
)
def test_any_relay_command_round_trips(
    action: RelayAction, until: datetime, level: int, password: str, operator: str
) -> None:
    credentials = Credentials(level, password, operator)
    decoded = decode_frame(encode_frame(relay_command(METER, action, until, credentials)))
    assert isinstance(decoded, Frame)
    assert parse_relay_command(decoded) == RelayCommand(action, until, credentials)


@pytest.mark.parametrize(
    ("level", "password", "operator", "field"),
    [(300, "0", "0", "password_level"), (2, "12345", "00000000", "password"), (2, "123456", "0000000G", "operator")],
)
def test_credentials_typed_by_a_person_are_checked(level: int, password: str, operator: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Credentials.parse(level, password, operator)
