"""``powergate frame``: the field engineer decodes and encodes frames from the command line."""

from __future__ import annotations

import json

import pytest

from powergate.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["frame", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_decode_prints_the_design_example_with_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "decode", "FE FE FE FE 68 01 00 00 00 00 00 68 11 04 33 33 33 33 B2 16")
    assert code == 0
    decoded = json.loads(out)
    assert decoded["address"] == "000000000001" and decoded["function"] == "read data"
    assert decoded["message"]["di"] == "00000000"
    assert decoded["message"]["name_zh"] == "(当前)组合有功总电能"


def test_decode_shows_a_remaining_amount_reply_in_yuan_and_micros(capsys: pytest.CaptureFixture[str]) -> None:
    wire = "68 01 00 00 00 00 00 68 91 08 33 35 C3 33 78 56 43 33 0C 16"
    code, out, _ = run(capsys, "decode", wire)
    assert code == 0
    message = json.loads(out)["message"]
    assert message["di"] == "00900200" and message["name"] == "remaining amount"
    assert message["value"] == 1_023_450_000 and message["unit"] == "micros"
    assert message["meter_value"] == "1023.45" and message["meter_unit"] == "yuan"


def test_decode_refuses_a_wrong_checksum_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "decode", "68 01 00 00 00 00 00 68 91 08 33 35 C3 33 78 56 43 33", "0D 16")
    assert code == 1
    assert json.loads(out)["dlt645"].startswith("checksum:")


def test_decode_falls_back_to_modbus(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "decode", "01 03 00 00 00 02 C4 0B")
    assert code == 0
    assert json.loads(out)["protocol"] == "modbus-rtu"


def test_decode_of_neither_protocol_exits_1_with_both_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "decode", "00 11")
    assert code == 1
    assert set(json.loads(out)) == {"error", "dlt645", "modbus"}


def test_decode_of_non_hex_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "decode", "XYZ")
    assert code == 1 and "hex" in json.loads(out)["error"]


ENCODE = [
    (("read", "--address", "000000000001", "--di", "00000000"),
     "FE FE FE FE 68 01 00 00 00 00 00 68 11 04 33 33 33 33 B2 16"),
    (("read-address",), "FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16"),
    (("read-address", "--preamble", "0"), "68 AA AA AA AA AA AA 68 13 00 DF 16"),
    (("broadcast-time", "--at", "2026-11-22T10:30:15"),
     "FE FE FE FE 68 99 99 99 99 99 99 68 08 06 48 63 43 55 44 59 54 16"),
    (("write", "--address", "1", "--di", "04001001", "--value", "50.00", "--password", "123456",
      "--operator", "12345678"),
     "FE FE FE FE 68 01 00 00 00 00 00 68 14 10 34 43 33 37 35 89 67 45 AB 89 67 45 33 83 33 33 3C 16"),
    (("relay", "--address", "1", "--action", "trip", "--valid-until", "2026-12-01T00:00"),
     "FE FE FE FE 68 01 00 00 00 00 00 68 1C 10 35 33 33 33 33 33 33 33 4D 33 33 33 33 34 45 59 82 16"),
    (("recharge", "--address", "1", "--amount", "100.00", "--count", "3", "--customer-number", "000000123456"),
     "FE FE FE FE 68 01 00 00 00 00 00 68 14 1A 32 35 34 3A 35 33 33 33 33 33 33 33"
     " 33 33 34 33 36 33 33 33 89 67 45 33 33 33 D8 16"),
    (("recharge", "--address", "1", "--amount", "100", "--count", "3", "--layout", "count-first-07010201"),
     "FE FE FE FE 68 01 00 00 00 00 00 68 14 12 34 35 34 3A 37 33 33 33 33 33 33 33 36 33 33 33 34 33 A0 16"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "wire"), ENCODE, ids=[case[0][0] + str(i) for i, case in enumerate(ENCODE)])
def test_encode_prints_the_frame_in_hex(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], wire: str) -> None:
    code, out, _ = run(capsys, "encode", *argv)
    assert code == 0
    assert out.strip() == wire


def test_every_relay_action_has_a_command_line_name(capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("trip", "close-allowed", "close-now", "alarm", "alarm-off", "protect", "protect-off"):
        code, out, _ = run(capsys, "encode", "relay", "--action", action, "--valid-until", "2026-12-01T00:00")
        assert code == 0 and out.startswith("FE FE FE FE 68 AA")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("read", "--di", "123"), "di"),
        (("read", "--di", "00010000", "--address", "12x"), "address"),
        (("write", "--di", "00900200", "--value", "1.00"), "read-only"),
        (("write", "--di", "04001001", "--value", "1.001"), "decimals"),
        (("write", "--di", "12345678", "--value", "1"), "not in the registry"),
        (("recharge", "--amount", "0.001", "--count", "1"), "amount"),
        (("relay", "--action", "trip", "--valid-until", "soon"), "valid_until"),
        (("relay", "--action", "trip", "--valid-until", "2026-12-01", "--password", "1"), "password"),
    ],
)
def test_bad_input_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], words: str
) -> None:
    code, out, err = run(capsys, "encode", *argv)
    assert code == 2 and out == ""
    assert words in err
