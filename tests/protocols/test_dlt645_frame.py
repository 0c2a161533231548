"""DL/T 645-2007 frames: byte-exact golden frames for every function, error bits, and decoding that never raises."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.protocols.dlt645 import (
    MAX_DATA_LENGTH,
    Credentials,
    DecodeError,
    ErrorFlags,
    Frame,
    Function,
    RelayAction,
    ack_reply,
    broadcast_time_request,
    change_baud_request,
    change_password_request,
    clear_request,
    decode_frame,
    describe,
    describe_errors,
    encode_data,
    encode_frame,
    error_reply,
    freeze_request,
    parse_address,
    read_address_request,
    read_follow_up_request,
    read_reply,
    read_request,
    relay_command,
    split_di,
    write_address_request,
    write_request,
)

METER = "000000000001"
CREDENTIALS = Credentials(2, "123456", "12345678")

GOLDEN = [
    (
        "broadcast time",
        broadcast_time_request(datetime(2026, 11, 22, 10, 30, 15)),
        "FE FE FE FE 68 99 99 99 99 99 99 68 08 06 48 63 43 55 44 59 54 16",
    ),
    (
        "read total energy (DESIGN example)",
        read_request(METER, 0x00000000),
        "FE FE FE FE 68 01 00 00 00 00 00 68 11 04 33 33 33 33 B2 16",
    ),
    (
        "read reply 1234.56 kWh",
        read_reply(METER, 0x00000000, encode_data(0x00000000, 1_234_560)),
        "FE FE FE FE 68 01 00 00 00 00 00 68 91 08 33 33 33 33 89 67 45 33 9E 16",
    ),
    (
        "read reply with follow-up bit",
        read_reply(METER, 0x0001FF00, encode_data(0x0001FF00, (10, 20)), more=True),
        "FE FE FE FE 68 01 00 00 00 00 00 68 B1 0C 33 32 34 33 34 33 33 33 35 33 33 33 F5 16",
    ),
    (
        "read follow-up request",
        read_follow_up_request(METER, 0x0001FF00, 1),
        "FE FE FE FE 68 01 00 00 00 00 00 68 12 05 33 32 34 33 34 E8 16",
    ),
    (
        "read follow-up reply",
        read_reply(METER, 0x0001FF00, encode_data(0x0001FF00, (30,)), sequence=1),
        "FE FE FE FE 68 01 00 00 00 00 00 68 92 09 33 32 34 33 36 33 33 33 34 3B 16",
    ),
    ("read address", read_address_request(), "FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16"),
    (
        "read address reply",
        ack_reply(METER, Function.READ_ADDRESS, bytes.fromhex("010000000000")),
        "FE FE FE FE 68 01 00 00 00 00 00 68 93 06 34 33 33 33 33 33 9D 16",
    ),
    (
        "write alarm amount 1 = 50.00 yuan",
        write_request(METER, 0x04001001, encode_data(0x04001001, 50_000_000), CREDENTIALS),
        "FE FE FE FE 68 01 00 00 00 00 00 68 14 10 34 43 33 37 35 89 67 45 AB 89 67 45 33 83 33 33 3C 16",
    ),
    ("write reply", ack_reply(METER, Function.WRITE), "FE FE FE FE 68 01 00 00 00 00 00 68 94 00 65 16"),
    (
        "write address",
        write_address_request("123456789012"),
        "FE FE FE FE 68 AA AA AA AA AA AA 68 15 06 45 C3 AB 89 67 45 CF 16",
    ),
    ("freeze instantly", freeze_request(METER), "FE FE FE FE 68 01 00 00 00 00 00 68 16 04 CC CC CC CC 1B 16"),
    (
        "freeze daily at 00:00",
        freeze_request(METER, minute=0, hour=0),
        "FE FE FE FE 68 01 00 00 00 00 00 68 16 04 33 33 CC CC E9 16",
    ),
    ("change baud to 9600", change_baud_request(METER, 9600), "FE FE FE FE 68 01 00 00 00 00 00 68 17 01 53 3C 16"),
    (
        "change the level 2 password",
        change_password_request(METER, Credentials(4, "000000"), 2, "123456"),
        "FE FE FE FE 68 01 00 00 00 00 00 68 18 0C 36 3F 33 37 37 33 33 33 35 89 67 45 0E 16",
    ),
    (
        "clear max demand",
        clear_request(METER, Function.CLEAR_MAX_DEMAND, CREDENTIALS),
        "FE FE FE FE 68 01 00 00 00 00 00 68 19 08 35 89 67 45 AB 89 67 45 3C 16",
    ),
    (
        "clear meter",
        clear_request(METER, Function.CLEAR_METER, CREDENTIALS),
        "FE FE FE FE 68 01 00 00 00 00 00 68 1A 08 35 89 67 45 AB 89 67 45 3D 16",
    ),
    (
        "clear all events",
        clear_request(METER, Function.CLEAR_EVENTS, CREDENTIALS),
        "FE FE FE FE 68 01 00 00 00 00 00 68 1B 0C 35 89 67 45 AB 89 67 45 32 32 32 32 0A 16",
    ),
    (
        "relay trip until 2026-12-01",
        relay_command(METER, RelayAction.TRIP, datetime(2026, 12, 1), CREDENTIALS),
        "FE FE FE FE 68 01 00 00 00 00 00 68 1C 10 35 89 67 45 AB 89 67 45 4D 33 33 33 33 34 45 59 32 16",
    ),
    ("relay reply", ack_reply(METER, Function.RELAY_CONTROL), "FE FE FE FE 68 01 00 00 00 00 00 68 9C 00 6D 16"),
    (
        "error reply: no data requested",
        error_reply(METER, Function.READ, ErrorFlags.NO_DATA_REQUESTED),
        "FE FE FE FE 68 01 00 00 00 00 00 68 D1 01 35 D8 16",
    ),
    (
        "error reply: unauthorised",
        error_reply(METER, Function.WRITE, ErrorFlags.UNAUTHORISED),
        "FE FE FE FE 68 01 00 00 00 00 00 68 D4 01 37 DD 16",
    ),
    (
        "error reply: relay other error",
        error_reply(METER, Function.RELAY_CONTROL, ErrorFlags.OTHER),
        "FE FE FE FE 68 01 00 00 00 00 00 68 DC 01 34 E2 16",
    ),
]


@pytest.mark.parametrize(("name", "frame", "wire"), GOLDEN, ids=[case[0] for case in GOLDEN])
def test_every_function_encodes_byte_exact_and_decodes_back(name: str, frame: Frame, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert encode_frame(frame).hex(" ").upper() == wire
    assert decode_frame(data) == frame
    # independent of the codec: the checksum is the byte sum from the first 68, and the end byte is 16
    body = data[4:-2]
    assert data[-2] == sum(body) & 0xFF and data[-1] == 0x16
    assert describe(frame)["control"] == f"{frame.control:02X}"


def test_every_function_code_of_the_standard_is_covered_by_a_golden_frame() -> None:
    assert {frame.function for _, frame, _ in GOLDEN} == set(Function)


@pytest.mark.parametrize("preamble", [0, 1, 2, 3, 4])
def test_zero_to_four_wake_up_bytes_are_accepted(preamble: int) -> None:
    frame = read_request(METER, 0x00010000)
    assert decode_frame(encode_frame(frame, preamble)) == frame


@pytest.mark.parametrize(
    ("control", "reply", "error", "follow_up"),
    [(0x11, False, False, False), (0x91, True, False, False), (0xB1, True, False, True), (0xD1, True, True, False)],
)
def test_the_control_byte_carries_reply_error_and_follow_up_bits(
    control: int, reply: bool, error: bool, follow_up: bool
) -> None:
    data = b"\x01" if error else b""
    frame = Frame(METER, Function.READ, data, reply=reply, error=error, follow_up=follow_up)
    assert frame.control == control
    assert decode_frame(encode_frame(frame)) == frame


def test_error_bits_are_decoded_each_by_name() -> None:
    frame = error_reply(METER, Function.WRITE, ErrorFlags.UNAUTHORISED | ErrorFlags.TOO_MANY_RATES)
    decoded = decode_frame(encode_frame(frame))
    assert isinstance(decoded, Frame)
    assert decoded.error_flags == ErrorFlags.UNAUTHORISED | ErrorFlags.TOO_MANY_RATES
    message = describe(decoded)["message"]
    assert isinstance(message, dict)
    assert message["errors"] == ["password error or unauthorised (密码错/未授权)", "rate count exceeded (费率数超)"]


def test_all_seven_error_bits_have_a_description() -> None:
    assert len(describe_errors(0x7F)) == 7
    assert describe_errors(0x80) == ["reserved bit 7 set"]


GOOD = encode_frame(read_request(METER, 0x00010000))


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (GOOD[:-2] + bytes([GOOD[-2] ^ 1]) + GOOD[-1:], "checksum", "sum to"),
        (GOOD[:-1] + b"\x17", "end", "expected 16"),
        (b"\xfe" * 5 + GOOD[4:], "preamble", "at most 4"),
        (GOOD + b"\x00", "frame", "follow the end byte"),
        (GOOD[:-3], "frame", "end before the frame does"),
        (b"", "frame", "end before"),
        (GOOD[:4] + b"\x69" + GOOD[5:], "start", "expected 68"),
        (GOOD[:5] + b"\x1a" + GOOD[6:], "address", "neither BCD"),
        (GOOD[:11] + b"\x67" + GOOD[12:], "start", "second 68"),
        (GOOD[:12] + b"\x03" + GOOD[13:], "control", "not a DL/T 645-2007 function"),
        (GOOD[:12] + b"\x51" + GOOD[13:], "control", "error bit is set on a request"),
        (GOOD[:13] + b"\xc9" + GOOD[14:], "length", "exceeds"),
    ],
    ids=[
        "checksum",
        "end",
        "preamble",
        "trailing",
        "short",
        "empty",
        "start",
        "address",
        "second-68",
        "function",
        "error-request",
        "length",
    ],
)
def test_malformed_frames_are_decode_errors_naming_the_field(data: bytes, field: str, words: str) -> None:
    result = decode_frame(data)
    assert isinstance(result, DecodeError)
    assert result.field == field and words in result.message


def test_an_error_reply_must_carry_exactly_one_err_byte() -> None:
    frame = Frame(METER, Function.READ, b"\x01\x02", reply=True)
    wire = bytearray(encode_frame(frame))
    wire[12] |= 0x40
    wire[-2] = sum(wire[4:-2]) & 0xFF
    result = decode_frame(bytes(wire))
    assert isinstance(result, DecodeError) and result.field == "data"


@pytest.mark.parametrize(
    ("text", "address"), [("1", METER), ("AAAAAAAAAAAA", "AAAAAAAAAAAA"), (" 12 34 ", "000000001234")]
)
def test_addresses_typed_by_a_person_are_normalised(text: str, address: str) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("bad", ["", "0000000000001", "00000000000G", "A0000000000B"])
def test_bad_addresses_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_address(bad)


def test_split_di_needs_four_bytes() -> None:
    assert split_di(read_request(METER, 0x04000503)) == (0x04000503, b"")
    assert isinstance(split_di(Frame(METER, Function.READ, b"\x01")), DecodeError)


addresses = st.lists(st.one_of(st.integers(0, 99).map(lambda n: f"{n:02d}"), st.just("AA")), min_size=6, max_size=6)
frames = st.builds(
    lambda address, function, data, reply, error, follow_up: Frame(
        "".join(address), function, data[:1] if (reply and error) else data, reply, reply and error, follow_up
    ),
    addresses,
    st.sampled_from(Function),
    st.binary(min_size=1, max_size=MAX_DATA_LENGTH),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@given(frames, st.integers(0, 4))
def test_any_frame_round_trips_through_the_wire(frame: Frame, preamble: int) -> None:
    assert decode_frame(encode_frame(frame, preamble)) == frame


@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_raises(data: bytes) -> None:
    result = decode_frame(data)
    assert isinstance(result, Frame | DecodeError)
    if isinstance(result, Frame):
        describe(result)


@given(frames, st.integers(4, 4 + 12 + MAX_DATA_LENGTH), st.integers(0, 255))
def test_decoding_a_corrupted_frame_never_raises(frame: Frame, index: int, byte: int) -> None:
    wire = bytearray(encode_frame(frame))
    if index < len(wire):
        wire[index] = byte
    result = decode_frame(bytes(wire))
    assert isinstance(result, Frame | DecodeError)
    if isinstance(result, Frame):
        assert isinstance(describe(result), dict)


def test_the_atheris_fuzz_target_runs_on_golden_inputs_without_atheris() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_dlt645.py"
    spec = importlib.util.spec_from_file_location("fuzz_dlt645", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for _, frame, wire in GOLDEN:
        module.fuzz_one_input(bytes.fromhex(wire))
        module.fuzz_one_input(encode_frame(frame, 0) + b"HB" + b"\x00\x68")
    module.fuzz_one_input(b"")
